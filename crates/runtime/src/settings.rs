//! A module's own settings: each one declared once ([`Setting`]: its variable, [`Kind`], default
//! and what it does), read through an environment lookup with [`Settings`], which keeps every
//! refusal ([`SettingError`], naming the variable) so that one error ([`SettingErrors`]) lists
//! all of them.
//!
//! A module row ([`crate::Module`]) carries its [`ModuleSettings`]: the declarations (for
//! `mesh modules --settings` and `docs/settings.md`) and a check that reads them all, which the
//! binary runs for every served module with the process configuration, before anything binds.
//! Services read the same settings again when they are built (through the same lookup code), so
//! what was checked is what runs.

use std::fmt;
use std::time::Duration;

/// How a setting's value is written and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A duration longer than zero: `500ms`, `10s`, `2m`.
    Duration,
    /// A duration; `0` turns the feature off.
    DurationOrOff,
    /// A whole number from `min` to `max`.
    Number {
        /// The smallest value accepted.
        min: u64,
        /// The largest value accepted.
        max: u64,
    },
    /// Text in the format the setting's doc describes (checked by the module that reads it).
    Text,
    /// A secret: read like text, never printed back in an error.
    Secret,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Duration => f.write_str("duration"),
            Self::DurationOrOff => f.write_str("duration, 0 = off"),
            Self::Number { min, max: u64::MAX } => write!(f, "number >= {min}"),
            Self::Number { min, max } => write!(f, "number {min}..={max}"),
            Self::Text => f.write_str("text"),
            Self::Secret => f.write_str("secret"),
        }
    }
}

/// One setting of a module, declared once: [`Settings`] reads it by this declaration, and the
/// binary lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The environment variable, e.g. `MESH_PAYMENT_PROVIDER_TIMEOUT`.
    pub name: &'static str,
    /// How its value is written and checked.
    pub kind: Kind,
    /// The value used when it is unset, written as it would be set; empty: unset means off or
    /// none (the doc says which).
    pub default: &'static str,
    /// What it does, in one or two sentences.
    pub doc: &'static str,
}

impl Setting {
    /// A [`Kind::Duration`] setting.
    pub const fn duration(name: &'static str, default: &'static str, doc: &'static str) -> Self {
        Self::new(name, Kind::Duration, default, doc)
    }

    /// A [`Kind::DurationOrOff`] setting (`0` turns it off).
    pub const fn duration_or_off(
        name: &'static str,
        default: &'static str,
        doc: &'static str,
    ) -> Self {
        Self::new(name, Kind::DurationOrOff, default, doc)
    }

    /// A [`Kind::Number`] setting within `bounds`.
    pub const fn number(
        name: &'static str,
        bounds: std::ops::RangeInclusive<u64>,
        default: &'static str,
        doc: &'static str,
    ) -> Self {
        let (min, max) = (*bounds.start(), *bounds.end());
        Self::new(name, Kind::Number { min, max }, default, doc)
    }

    /// A [`Kind::Text`] setting.
    pub const fn text(name: &'static str, default: &'static str, doc: &'static str) -> Self {
        Self::new(name, Kind::Text, default, doc)
    }

    /// A [`Kind::Secret`] setting (no default: unset means off, as its doc says).
    pub const fn secret(name: &'static str, doc: &'static str) -> Self {
        Self::new(name, Kind::Secret, "", doc)
    }

    /// A setting of any kind.
    pub const fn new(
        name: &'static str,
        kind: Kind,
        default: &'static str,
        doc: &'static str,
    ) -> Self {
        Self {
            name,
            kind,
            default,
            doc,
        }
    }
}

/// A setting a service refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}={value:?}: {reason}")]
pub struct SettingError {
    /// The variable.
    pub variable: &'static str,
    /// Its value (`<redacted>` for a secret).
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

/// Every setting a module refused, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingErrors(pub Vec<SettingError>);

impl fmt::Display for SettingErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SettingErrors {}

impl From<SettingError> for SettingErrors {
    fn from(e: SettingError) -> Self {
        Self(vec![e])
    }
}

/// One setting that failed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The setting's names, e.g. `--admin-port / MESH_ADMIN_PORT`.
    pub setting: String,
    /// The value given.
    pub value: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {:?}: {}", self.setting, self.value, self.reason)
    }
}

impl From<SettingError> for Problem {
    fn from(e: SettingError) -> Self {
        Self {
            setting: e.variable.to_string(),
            value: e.value,
            reason: e.reason,
        }
    }
}

/// Every problem found in the configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in the order the settings were checked.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

/// The environment variable prefix of a service's settings: `iot-gateway` -> `MESH_IOT_GATEWAY`.
pub fn env_prefix(service: &str) -> String {
    format!("MESH_{}", service.to_ascii_uppercase().replace('-', "_"))
}

/// An environment lookup: unset (and empty) variables are `None`.
pub type Lookup<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// What a module row declares about its own settings.
#[derive(Clone, Copy)]
pub struct ModuleSettings {
    /// Every `MESH_<SERVICE>_*` (or other) variable the module reads itself.
    pub declared: &'static [Setting],
    /// Reads them all through the lookup, as the module's constructor will, and returns every
    /// refusal; run before anything binds.
    pub check: fn(&Lookup<'_>) -> Result<(), SettingErrors>,
}

impl ModuleSettings {
    /// A module with no settings of its own.
    pub const NONE: Self = Self {
        declared: &[],
        check: |_| Ok(()),
    };
}

impl fmt::Debug for ModuleSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModuleSettings")
            .field("declared", &self.declared)
            .finish_non_exhaustive()
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

/// Declared settings read through an environment lookup, every refusal kept until
/// [`finish`](Self::finish). A refused setting reads as its default, so reading goes on.
pub struct Settings<F> {
    env: F,
    errors: Vec<SettingError>,
}

impl<F: Fn(&str) -> Option<String>> Settings<F> {
    /// Settings read through `env`.
    pub fn new(env: F) -> Self {
        Self {
            env,
            errors: Vec::new(),
        }
    }

    /// The raw value of `setting`, if set (not its default).
    pub fn raw(&self, setting: &Setting) -> Option<String> {
        (self.env)(setting.name)
    }

    /// The raw value of a variable no module declares as its own (e.g. another module's
    /// setting that this one must agree with).
    pub fn raw_variable(&self, variable: &str) -> Option<String> {
        (self.env)(variable)
    }

    /// Records that `setting`'s `value` is refused for `reason`.
    pub fn refuse(&mut self, setting: &Setting, value: &str, reason: impl Into<String>) {
        let value = if setting.kind == Kind::Secret {
            "<redacted>".to_string()
        } else {
            value.to_string()
        };
        self.errors
            .push(SettingError::new(setting.name, value, reason.into()));
    }

    /// `setting` (a [`Kind::Duration`] or [`Kind::DurationOrOff`]) as a duration; its default
    /// when unset or refused.
    pub fn duration(&mut self, setting: &Setting) -> Duration {
        let zero_ok = setting.kind == Kind::DurationOrOff;
        let default = match parse_duration(setting.default, zero_ok) {
            Ok(d) => d,
            Err(reason) => {
                self.refuse(
                    setting,
                    setting.default,
                    format!("the declared default is not valid: {reason}"),
                );
                Duration::ZERO
            }
        };
        let Some(value) = self.raw(setting) else {
            return default;
        };
        match parse_duration(&value, zero_ok) {
            Ok(d) => d,
            Err(reason) => {
                self.refuse(setting, &value, reason);
                default
            }
        }
    }

    /// `setting` (a [`Kind::Number`]) as a number within its bounds; its default when unset or
    /// refused.
    pub fn number<T>(&mut self, setting: &Setting) -> T
    where
        T: TryFrom<u64> + Default,
    {
        let Kind::Number { min, max } = setting.kind else {
            self.refuse(setting, "", "declared as a number without bounds");
            return T::default();
        };
        let parse = |raw: &str| {
            raw.trim()
                .parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .and_then(|n| T::try_from(n).ok())
                .ok_or_else(|| format!("expected a whole number from {min} to {max}"))
        };
        let default = match parse(setting.default) {
            Ok(n) => n,
            Err(reason) => {
                self.refuse(
                    setting,
                    setting.default,
                    format!("the declared default is not valid: {reason}"),
                );
                T::default()
            }
        };
        let Some(value) = self.raw(setting) else {
            return default;
        };
        match parse(&value) {
            Ok(n) => n,
            Err(reason) => {
                self.refuse(setting, &value, reason);
                default
            }
        }
    }

    /// `setting` as text: its value, else its default, else `None`.
    pub fn text(&self, setting: &Setting) -> Option<String> {
        self.raw(setting)
            .or_else(|| (!setting.default.is_empty()).then(|| setting.default.to_string()))
    }

    /// `setting`'s value through `parse` when it is set (its default is the caller's): `None`
    /// when unset or refused (the refusal kept with `parse`'s reason).
    pub fn parse<T>(
        &mut self,
        setting: &Setting,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let value = self.raw(setting)?;
        match parse(&value) {
            Ok(v) => Some(v),
            Err(reason) => {
                self.refuse(setting, &value, reason);
                None
            }
        }
    }

    /// `value` if nothing was refused, else every refusal.
    pub fn finish<T>(self, value: T) -> Result<T, SettingErrors> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(SettingErrors(self.errors))
        }
    }
}

fn parse_duration(raw: &str, zero_ok: bool) -> Result<Duration, String> {
    let raw = raw.trim();
    if zero_ok && raw == "0" {
        return Ok(Duration::ZERO);
    }
    match humantime::parse_duration(raw) {
        Ok(d) if zero_ok || !d.is_zero() => Ok(d),
        Ok(_) => Err("must be longer than zero".into()),
        Err(e) => Err(format!("not a duration such as 500ms or 10s: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Setting = Setting::duration("A", "1s", "");
    const OFF: Setting = Setting::duration_or_off("OFF", "2s", "");
    const N: Setting = Setting::number("N", 1..=100, "3", "");
    const KEY: Setting = Setting::secret("KEY", "");

    #[test]
    fn defaults_apply_when_unset() {
        let mut s = Settings::new(|_: &str| None);
        assert_eq!(s.duration(&A), Duration::from_secs(1));
        assert_eq!(s.duration(&OFF), Duration::from_secs(2));
        assert_eq!(s.number::<u32>(&N), 3);
        assert_eq!(s.text(&KEY), None);
        assert_eq!(s.finish(()), Ok(()));
    }

    #[test]
    fn values_parse_within_their_kind() {
        let env = lookup_in(&[("A", "250ms"), ("OFF", "0"), ("N", "100")]);
        let mut s = Settings::new(env);
        assert_eq!(s.duration(&A), Duration::from_millis(250));
        assert_eq!(s.duration(&OFF), Duration::ZERO);
        assert_eq!(s.number::<u8>(&N), 100);
        assert!(s.finish(()).is_ok());
    }

    #[test]
    fn every_refusal_is_kept_naming_its_variable_and_secrets_stay_hidden() {
        let env = lookup_in(&[("A", "0s"), ("N", "101"), ("KEY", "hunter2")]);
        let mut s = Settings::new(env);
        assert_eq!(
            s.duration(&A),
            Duration::from_secs(1),
            "refused: the default"
        );
        assert_eq!(s.number::<u32>(&N), 3);
        let key = s.parse(&KEY, |_| Err::<(), _>("too short".to_string()));
        assert_eq!(key, None);
        let errors = s.finish(()).unwrap_err();
        let names: Vec<_> = errors.0.iter().map(|e| e.variable).collect();
        assert_eq!(names, ["A", "N", "KEY"]);
        let text = errors.to_string();
        assert!(
            text.contains("A=\"0s\": must be longer than zero"),
            "{text}"
        );
        assert!(
            text.contains("expected a whole number from 1 to 100"),
            "{text}"
        );
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn a_bad_declared_default_is_reported_not_hidden() {
        const BAD: Setting = Setting::duration("BAD", "soon", "");
        let mut s = Settings::new(|_: &str| None);
        s.duration(&BAD);
        let e = s.finish(()).unwrap_err();
        assert!(e.to_string().contains("declared default"), "{e}");
    }
}
