//! Times are microseconds since the Unix epoch (`i64`), stored as BIGINT; conversions to and
//! from `google.protobuf.Timestamp`, refusing out-of-range input with the field's name.

use prost_types::Timestamp;

use crate::error::CampaignError;

/// Now, in microseconds since the epoch.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// `t` in microseconds; years 1 to 9999 and nanos 0 to 999,999,999, else INVALID_ARGUMENT
/// naming `field`.
pub fn micros(field: &str, t: &Timestamp) -> Result<i64, CampaignError> {
    // 0001-01-01 and 9999-12-31 in seconds since the epoch.
    const MIN: i64 = -62_135_596_800;
    const MAX: i64 = 253_402_300_799;
    if !(MIN..=MAX).contains(&t.seconds) || !(0..1_000_000_000).contains(&t.nanos) {
        return Err(CampaignError::invalid(
            field,
            "not a valid timestamp (years 1 to 9999)",
        ));
    }
    Ok(t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
}

/// `us` as a timestamp.
pub fn timestamp(us: i64) -> Timestamp {
    Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: i32::try_from(us.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    }
}

/// `us` as a timestamp, `None` for 0 (not set).
pub fn optional(us: i64) -> Option<Timestamp> {
    (us != 0).then(|| timestamp(us))
}
