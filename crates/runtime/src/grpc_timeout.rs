//! The `grpc-timeout` header: parsing an incoming deadline and writing an outgoing one.
//!
//! Format (gRPC over HTTP/2 spec): at most 8 ASCII digits followed by a unit,
//! `H` hours, `M` minutes, `S` seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds.

use std::time::Duration;

use http::{HeaderName, HeaderValue};

/// The header name.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// [`GRPC_TIMEOUT`] as a header name: a lookup or insert with it parses no name (every outgoing
/// call sets it, and the client layers read it back).
pub const GRPC_TIMEOUT_HEADER: HeaderName = HeaderName::from_static(GRPC_TIMEOUT);

/// The `grpc-timeout` value of a header, if it is one.
pub fn from_header(value: &HeaderValue) -> Option<Duration> {
    std::str::from_utf8(value.as_bytes()).ok().and_then(parse)
}

/// Parses a `grpc-timeout` value; `None` when it is malformed.
pub fn parse(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats a duration as the most precise `grpc-timeout` value that fits in 8 digits, rounding
/// up to the unit so the deadline sent is never shorter than the one given.
pub fn format(timeout: Duration) -> String {
    let (value, unit) = value_and_unit(timeout);
    format!("{value}{}", unit as char)
}

/// [`format`] as a header value, written without `fmt` or an intermediate `String` (every
/// outgoing call carries one).
pub fn header_value(timeout: Duration) -> HeaderValue {
    let (mut value, unit) = value_and_unit(timeout);
    // At most 8 digits and the unit.
    let mut text = [0u8; 9];
    let mut start = 8;
    text[8] = unit;
    loop {
        start -= 1;
        text[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 || start == 0 {
            break;
        }
    }
    HeaderValue::from_bytes(&text[start..]).unwrap_or(HeaderValue::from_static("99999999H"))
}

/// The most precise value of at most 8 digits and its unit, rounded up.
fn value_and_unit(timeout: Duration) -> (u64, u8) {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    for (unit, per) in [
        (b'n', 1u128),
        (b'u', 1_000),
        (b'm', 1_000_000),
        (b'S', 1_000_000_000),
        (b'M', 60_000_000_000),
    ] {
        let value = nanos.div_ceil(per);
        if value <= MAX {
            return (value as u64, unit);
        }
    }
    ((nanos.div_ceil(3_600_000_000_000)).min(MAX) as u64, b'H')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse("99n"), Some(Duration::from_nanos(99)));
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "S", "10", "10s", "123456789S", "-1S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn header_values_are_the_formatted_text() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_nanos(99_999_999),
            Duration::from_nanos(100_000_000),
            Duration::from_micros(1_999_873),
            Duration::from_millis(1500),
            Duration::from_secs(30),
            Duration::from_secs(86_400 * 365),
            Duration::MAX,
        ] {
            let value = header_value(d);
            assert_eq!(value.to_str().unwrap(), format(d), "{d:?}");
            assert_eq!(from_header(&value), parse(&format(d)), "{d:?}");
        }
    }

    #[test]
    fn formats_within_eight_digits_and_round_trips() {
        for d in [
            Duration::from_nanos(1),
            Duration::from_millis(1500),
            Duration::from_secs(30),
            Duration::from_secs(86_400 * 365),
        ] {
            let s = format(d);
            assert!(s.len() <= 9, "{s}");
            let back = parse(&s).expect("parses");
            assert!(back >= d, "{s} must not shorten {d:?}");
        }
    }
}
