//! Input checks of report's requests; each refusal names the field.

use mesh_runtime::domain::ids;

use crate::dates;
use crate::error::ReportError;
use crate::models::Model;

type Result<T> = std::result::Result<T, ReportError>;

/// Longest day range a query may span.
pub const MAX_RANGE_DAYS: i64 = 366;

/// A required `YYYY-MM-DD` date; its day number.
pub fn date(field: &str, text: &str) -> Result<i64> {
    if text.is_empty() {
        return Err(ReportError::invalid(field, "required"));
    }
    dates::parse_day(text).map_err(|reason| ReportError::invalid(field, reason))
}

/// `start_date` and `end_date` of a request: both dates, end not before start, at most
/// [`MAX_RANGE_DAYS`] apart.
pub fn range(start: &str, end: &str) -> Result<(String, String)> {
    let (s, e) = (date("start_date", start)?, date("end_date", end)?);
    if e < s {
        return Err(ReportError::invalid(
            "end_date",
            "must not be before start_date",
        ));
    }
    if e - s > MAX_RANGE_DAYS {
        return Err(ReportError::invalid(
            "end_date",
            format!("at most {MAX_RANGE_DAYS} days after start_date"),
        ));
    }
    Ok((dates::format_day(s), dates::format_day(e)))
}

/// An optional id filter: empty, or a reference (up to 128 characters without spaces).
pub fn optional_id(field: &str, id: &str) -> Result<String> {
    Ok(ids::REFERENCE.optional(field, id)?.unwrap_or_default())
}

/// A required id: a reference (up to 128 characters without spaces).
pub fn required_id(field: &str, id: &str) -> Result<String> {
    Ok(ids::REFERENCE.check(field, id)?)
}

/// A count with a default for 0, refused when negative or above `max`.
pub fn bounded(field: &str, value: i64, default: i64, max: i64) -> Result<i64> {
    match value {
        0 => Ok(default),
        v if v < 0 => Err(ReportError::invalid(field, "must not be negative")),
        v if v > max => Err(ReportError::invalid(field, format!("at most {max}"))),
        v => Ok(v),
    }
}

/// The read models named in a rebuild request (every model when none is named).
pub fn models(names: &[String]) -> Result<Vec<Model>> {
    if names.is_empty() {
        return Ok(Model::ALL.to_vec());
    }
    let mut out = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let model = Model::parse(name).ok_or_else(|| {
            let known: Vec<&str> = Model::ALL.iter().map(|m| m.name()).collect();
            ReportError::invalid(
                format!("read_models[{i}]"),
                format!("unknown read model `{name}`; known: {}", known.join(", ")),
            )
        })?;
        if !out.contains(&model) {
            out.push(model);
        }
    }
    out.sort();
    Ok(out)
}
