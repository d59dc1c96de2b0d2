//! Calendar days in UTC: the `YYYY-MM-DD` strings the read models are keyed by, from event times
//! (microseconds since the Unix epoch) and from requests. Days are compared as strings, which
//! order like the dates they name (four-digit years).

/// Microseconds in a day.
const DAY_US: i64 = 86_400_000_000;

/// Days since 1970-01-01 of the civil date `y-m-d` (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of `days` since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The day number (since 1970-01-01) of the instant `us` microseconds after the epoch, in UTC.
pub fn day_number(us: i64) -> i64 {
    us.div_euclid(DAY_US)
}

/// `YYYY-MM-DD` of day number `days`.
pub fn format_day(days: i64) -> String {
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DD` of the instant `us` microseconds after the epoch, in UTC.
pub fn day_of(us: i64) -> String {
    format_day(day_number(us))
}

/// The day number of a `YYYY-MM-DD` string, refused (with the reason) unless it is a real date
/// between years 1970 and 9999.
pub fn parse_day(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not a date YYYY-MM-DD");
    let b = text.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> Result<u32, String> {
        let part = &text[r];
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse().map_err(|_| bad())
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if y < 1970 || !(1..=12).contains(&m) || d == 0 {
        return Err(bad());
    }
    let days = days_from_civil(i64::from(y), m, d);
    if civil_from_days(days) != (i64::from(y), m, d) {
        return Err(bad());
    }
    Ok(days)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_and_bad_dates_are_refused() {
        assert_eq!(format_day(0), "1970-01-01");
        assert_eq!(day_of(1_709_251_199_000_000), "2024-02-29");
        assert_eq!(day_of(1_709_251_200_000_000), "2024-03-01");
        for d in [0, 59, 365, 11_016, 19_782, 2_932_896] {
            assert_eq!(parse_day(&format_day(d)), Ok(d));
        }
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-1-01",
            "20240101",
            "1969-12-31",
            "2024-00-10",
            "abcd-01-01",
        ] {
            assert!(parse_day(bad).is_err(), "{bad}");
        }
        assert_eq!(day_of(-1), "1969-12-31");
    }
}
