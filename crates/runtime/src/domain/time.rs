//! The one timestamp unit of every service: **microseconds since the Unix epoch, UTC, as `i64`**
//! (`BIGINT` columns; new ones are named `*_us`), with the conversions to and
//! from `google.protobuf.Timestamp`. Microseconds keep the order of events written within one
//! second (seconds did not), fit Postgres' own precision, and an `i64` of them spans ±292,000
//! years, so every valid protobuf timestamp (years 1 to 9999) converts without loss of range.

use prost_types::Timestamp;

use super::ServiceError;

/// Microseconds in a second.
pub const MICROS_PER_SECOND: i64 = 1_000_000;

/// Seconds of 0001-01-01T00:00:00Z, the earliest valid protobuf `Timestamp`.
pub const MIN_SECONDS: i64 = -62_135_596_800;
/// Seconds of 9999-12-31T23:59:59Z, the latest valid protobuf `Timestamp`.
pub const MAX_SECONDS: i64 = 253_402_300_799;

/// Now, in microseconds since the epoch (0 if the clock is before 1970).
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Microseconds as a protobuf `Timestamp` (sub-microsecond digits are zero).
pub fn to_timestamp(us: i64) -> Timestamp {
    Timestamp {
        seconds: us.div_euclid(MICROS_PER_SECOND),
        // rem_euclid is in 0..1_000_000, so the product fits an i32.
        nanos: (us.rem_euclid(MICROS_PER_SECOND) * 1000) as i32,
    }
}

/// Microseconds as an optional `Timestamp`: `None` for 0 (the unit's "not set").
pub fn to_optional_timestamp(us: i64) -> Option<Timestamp> {
    (us != 0).then(|| to_timestamp(us))
}

/// A request's `Timestamp` in microseconds (nanoseconds below a microsecond are dropped,
/// rounding toward the past). Refused, naming `field`, when outside 0001-01-01..=9999-12-31 or
/// when `nanos` is not in `0..1_000_000_000`, as the protobuf type defines it.
pub fn from_timestamp(field: &str, t: &Timestamp) -> Result<i64, ServiceError> {
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(ServiceError::invalid(
            field,
            "nanos must be in 0..1000000000",
        ));
    }
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) {
        return Err(ServiceError::invalid(
            field,
            "must be between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z",
        ));
    }
    Ok(t.seconds * MICROS_PER_SECOND + i64::from(t.nanos / 1000))
}

/// An optional request `Timestamp` in microseconds (`None` when absent).
pub fn from_optional_timestamp(
    field: &str,
    t: Option<&Timestamp>,
) -> Result<Option<i64>, ServiceError> {
    t.map(|t| from_timestamp(field, t)).transpose()
}

/// A `std::time::Duration` in microseconds (saturating at `i64::MAX`).
pub fn duration_us(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_before_and_after_the_epoch() {
        for us in [
            0,
            1,
            999_999,
            1_000_000,
            1_767_225_600_123_456,
            -1,
            -1_500_000,
        ] {
            assert_eq!(from_timestamp("t", &to_timestamp(us)).unwrap(), us, "{us}");
        }
        assert_eq!(
            to_timestamp(-1),
            Timestamp {
                seconds: -1,
                nanos: 999_999_000
            }
        );
    }

    #[test]
    fn sub_microsecond_digits_are_dropped() {
        let t = Timestamp {
            seconds: 10,
            nanos: 1_999,
        };
        assert_eq!(from_timestamp("t", &t).unwrap(), 10_000_001);
    }

    #[test]
    fn out_of_range_input_is_refused_naming_the_field() {
        for t in [
            Timestamp {
                seconds: MAX_SECONDS + 1,
                nanos: 0,
            },
            Timestamp {
                seconds: MIN_SECONDS - 1,
                nanos: 0,
            },
            Timestamp {
                seconds: i64::MAX,
                nanos: 0,
            },
            Timestamp {
                seconds: 0,
                nanos: -1,
            },
            Timestamp {
                seconds: 0,
                nanos: 1_000_000_000,
            },
        ] {
            let e = from_timestamp("start_time", &t).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.to_string().starts_with("start_time: "), "{e}");
        }
        let edge = Timestamp {
            seconds: MAX_SECONDS,
            nanos: 999_999_999,
        };
        assert_eq!(
            from_timestamp("t", &edge).unwrap(),
            MAX_SECONDS * 1_000_000 + 999_999
        );
    }

    #[test]
    fn optional_forms() {
        assert_eq!(to_optional_timestamp(0), None);
        assert_eq!(from_optional_timestamp("t", None).unwrap(), None);
        assert_eq!(
            duration_us(std::time::Duration::from_millis(1500)),
            1_500_000
        );
        assert!(now_us() > 1_600_000_000_000_000);
    }
}
