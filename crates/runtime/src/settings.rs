//! Reading a service's own `MESH_<SERVICE>_*` settings: durations and bounded numbers from an
//! environment lookup, each refusal a [`SettingError`] naming the variable, its value and why.
//!
//! Services read their settings when they are built, through a lookup function (the process
//! environment in `mesh serve`, a map in tests), so one bad value fails the start with a message
//! an operator can act on.

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// A setting a service refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?}: {reason}")]
pub struct SettingError {
    /// The variable.
    pub variable: &'static str,
    /// Its value.
    pub value: String,
    /// Why it is refused.
    pub reason: String,
}

impl SettingError {
    /// `variable`'s `value` is refused for `reason`.
    pub fn new(
        variable: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            variable,
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// The process environment as a lookup: unset and empty variables are both absent.
pub fn process_env(variable: &str) -> Option<String> {
    std::env::var(variable).ok().filter(|v| !v.is_empty())
}

/// A lookup over fixed `(variable, value)` pairs, as [`process_env`] is over the environment:
/// for tests and tools that build settings without touching the process environment.
pub fn lookup_in<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |variable| {
        pairs
            .iter()
            .find(|(name, _)| *name == variable)
            .map(|(_, value)| (*value).to_string())
    }
}

/// Settings read through an environment lookup.
pub struct Settings<F> {
    env: F,
}

impl<F: Fn(&str) -> Option<String>> Settings<F> {
    /// Settings read through `env`.
    pub fn new(env: F) -> Self {
        Self { env }
    }

    /// The raw value of `variable`, if set.
    pub fn raw(&self, variable: &str) -> Option<String> {
        (self.env)(variable)
    }

    /// `variable` as a duration (`500ms`, `10s`, `2m`), `default` when unset; zero is refused
    /// unless `zero_ok`, or when `zero_ok` the plain `0` means zero.
    pub fn duration(
        &self,
        variable: &'static str,
        default: Duration,
        zero_ok: bool,
    ) -> Result<Duration, SettingError> {
        let Some(value) = self.raw(variable) else {
            return Ok(default);
        };
        if zero_ok && value.trim() == "0" {
            return Ok(Duration::ZERO);
        }
        match humantime::parse_duration(value.trim()) {
            Ok(d) if zero_ok || !d.is_zero() => Ok(d),
            Ok(_) => Err(SettingError::new(
                variable,
                value,
                "must be longer than zero",
            )),
            Err(e) => Err(SettingError::new(
                variable,
                value,
                format!("not a duration such as 500ms or 10s: {e}"),
            )),
        }
    }

    /// `variable` as a number from `min` to `max`, `default` when unset.
    pub fn number<T>(
        &self,
        variable: &'static str,
        default: T,
        min: T,
        max: T,
    ) -> Result<T, SettingError>
    where
        T: FromStr + PartialOrd + Display + Copy,
    {
        let Some(value) = self.raw(variable) else {
            return Ok(default);
        };
        match value.trim().parse::<T>() {
            Ok(n) if n >= min && n <= max => Ok(n),
            _ => Err(SettingError::new(
                variable,
                value,
                format!("expected a whole number from {min} to {max}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(
        pairs: &'static [(&'static str, &'static str)],
    ) -> Settings<impl Fn(&str) -> Option<String>> {
        Settings::new(move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_string())
        })
    }

    #[test]
    fn durations_default_parse_and_refuse_with_the_variable_named() {
        let s = settings(&[
            ("A", "250ms"),
            ("ZERO", "0s"),
            ("BAD", "soon"),
            ("OFF", "0"),
        ]);
        let d = Duration::from_secs(1);
        assert_eq!(s.duration("UNSET", d, false), Ok(d));
        assert_eq!(s.duration("A", d, false), Ok(Duration::from_millis(250)));
        assert_eq!(s.duration("OFF", d, true), Ok(Duration::ZERO));
        assert_eq!(s.duration("ZERO", d, true), Ok(Duration::ZERO));
        let e = s.duration("ZERO", d, false).unwrap_err();
        assert_eq!((e.variable, e.value.as_str()), ("ZERO", "0s"));
        let e = s.duration("BAD", d, false).unwrap_err();
        assert!(
            e.to_string().starts_with("BAD=\"soon\": not a duration"),
            "{e}"
        );
    }

    #[test]
    fn numbers_are_bounded() {
        let s = settings(&[("N", "5"), ("BIG", "101"), ("WORD", "five")]);
        assert_eq!(s.number("UNSET", 3u32, 1, 100), Ok(3));
        assert_eq!(s.number("N", 3u32, 1, 100), Ok(5));
        assert_eq!(s.number("BIG", 3u32, 1, 100).unwrap_err().variable, "BIG");
        let e = s.number("WORD", 3u64, 0, 10).unwrap_err();
        assert_eq!(e.reason, "expected a whole number from 0 to 10");
    }
}
