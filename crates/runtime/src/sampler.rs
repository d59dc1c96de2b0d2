//! Which traces are exported: the standard `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`
//! variables, declared as settings ([`TRACES_SAMPLER`], [`TRACES_SAMPLER_ARG`]) and checked with
//! the rest of the configuration, so a typo is a start-up error naming the variable instead of
//! a silent fallback.
//!
//! Values as the OpenTelemetry specification defines them: `always_on`, `always_off`,
//! `traceidratio` (the fraction in `OTEL_TRACES_SAMPLER_ARG`, 0 to 1, default 1), and the
//! `parentbased_` form of each (a span with a parent follows the parent's decision, which comes
//! with the `traceparent` of a call or an event). Default: `parentbased_always_on`.

use opentelemetry_sdk::trace::Sampler;

use crate::settings::{Setting, SettingErrors, Settings};

/// `OTEL_TRACES_SAMPLER`.
pub const TRACES_SAMPLER: Setting = Setting::text(
    "OTEL_TRACES_SAMPLER",
    "parentbased_always_on",
    "Which traces are exported (with `OTEL_EXPORTER_OTLP_ENDPOINT`): `always_on`, `always_off`, `traceidratio`, or `parentbased_` + one of them (a span with a parent follows its parent's decision). See docs/observability.md.",
);

/// `OTEL_TRACES_SAMPLER_ARG`.
pub const TRACES_SAMPLER_ARG: Setting = Setting::text(
    "OTEL_TRACES_SAMPLER_ARG",
    "1.0",
    "The fraction of traces a `traceidratio` sampler keeps, from 0 to 1; ignored by the other samplers.",
);

/// What a sampler decides for a trace it starts (a span without a parent).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RootSampling {
    /// Every trace.
    AlwaysOn,
    /// None.
    AlwaysOff,
    /// This fraction of traces, chosen by trace id (so every process keeps the same ones).
    Ratio(f64),
}

/// The configured sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceSampler {
    /// Whether a span with a parent follows the parent's decision.
    pub parent_based: bool,
    /// The decision otherwise.
    pub root: RootSampling,
}

// The ratio is a checked number from 0 to 1 (never NaN), so equality is total.
impl Eq for TraceSampler {}

impl Default for TraceSampler {
    /// `parentbased_always_on`.
    fn default() -> Self {
        Self {
            parent_based: true,
            root: RootSampling::AlwaysOn,
        }
    }
}

impl TraceSampler {
    /// Reads [`TRACES_SAMPLER`] and [`TRACES_SAMPLER_ARG`] through `settings`; a refused value
    /// is recorded there and reads as the default.
    pub fn read<F: Fn(&str) -> Option<String>>(settings: &mut Settings<F>) -> Self {
        let Some(name) = settings.raw(&TRACES_SAMPLER) else {
            return Self::default();
        };
        let (parent_based, root) = match name.strip_prefix("parentbased_") {
            Some(root) => (true, root),
            None => (false, name.as_str()),
        };
        let root = match root {
            "always_on" => RootSampling::AlwaysOn,
            "always_off" => RootSampling::AlwaysOff,
            "traceidratio" => RootSampling::Ratio(ratio(settings)),
            _ => {
                settings.refuse(
                    &TRACES_SAMPLER,
                    &name,
                    "expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio",
                );
                return Self::default();
            }
        };
        Self { parent_based, root }
    }

    /// Reads the sampler from `env` alone (every refusal in the error).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, SettingErrors> {
        let mut settings = Settings::new(env);
        let sampler = Self::read(&mut settings);
        settings.finish(sampler)
    }

    /// The OpenTelemetry SDK's sampler.
    pub fn sdk(&self) -> Sampler {
        let root = match self.root {
            RootSampling::AlwaysOn => Sampler::AlwaysOn,
            RootSampling::AlwaysOff => Sampler::AlwaysOff,
            RootSampling::Ratio(r) => Sampler::TraceIdRatioBased(r),
        };
        if self.parent_based {
            Sampler::ParentBased(Box::new(root))
        } else {
            root
        }
    }
}

/// `OTEL_TRACES_SAMPLER_ARG` as a fraction; 1 when unset or refused.
fn ratio<F: Fn(&str) -> Option<String>>(settings: &mut Settings<F>) -> f64 {
    let Some(raw) = settings.raw(&TRACES_SAMPLER_ARG) else {
        return 1.0;
    };
    match raw.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => r,
        _ => {
            settings.refuse(
                &TRACES_SAMPLER_ARG,
                &raw,
                "expected a fraction from 0 to 1, e.g. 0.25",
            );
            1.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::lookup_in;

    fn read(pairs: &[(&str, &str)]) -> Result<TraceSampler, SettingErrors> {
        TraceSampler::from_env(lookup_in(pairs))
    }

    #[test]
    fn unset_is_parent_based_always_on() {
        assert_eq!(read(&[]).unwrap(), TraceSampler::default());
        assert!(matches!(
            TraceSampler::default().sdk(),
            Sampler::ParentBased(_)
        ));
    }

    #[test]
    fn every_standard_value_is_read() {
        let cases = [
            ("always_on", false, RootSampling::AlwaysOn),
            ("always_off", false, RootSampling::AlwaysOff),
            ("traceidratio", false, RootSampling::Ratio(0.25)),
            ("parentbased_always_on", true, RootSampling::AlwaysOn),
            ("parentbased_always_off", true, RootSampling::AlwaysOff),
            ("parentbased_traceidratio", true, RootSampling::Ratio(0.25)),
        ];
        for (name, parent_based, root) in cases {
            let got = read(&[
                ("OTEL_TRACES_SAMPLER", name),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(got, TraceSampler { parent_based, root }, "{name}");
        }
        assert!(matches!(
            read(&[("OTEL_TRACES_SAMPLER", "always_off")])
                .unwrap()
                .sdk(),
            Sampler::AlwaysOff
        ));
    }

    #[test]
    fn a_ratio_without_its_argument_keeps_every_trace() {
        assert_eq!(
            read(&[("OTEL_TRACES_SAMPLER", "traceidratio")])
                .unwrap()
                .root,
            RootSampling::Ratio(1.0)
        );
    }

    #[test]
    fn an_unknown_sampler_is_refused_by_name() {
        let err = read(&[("OTEL_TRACES_SAMPLER", "sometimes")]).unwrap_err();
        assert_eq!(err.0.len(), 1);
        assert_eq!(err.0[0].variable, "OTEL_TRACES_SAMPLER");
        assert_eq!(err.0[0].value, "sometimes");
        assert!(
            err.0[0].reason.contains("parentbased_traceidratio"),
            "{err}"
        );
    }

    #[test]
    fn a_ratio_outside_zero_to_one_is_refused() {
        for bad in ["1.5", "-0.1", "half", "NaN"] {
            let err = read(&[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", bad),
            ])
            .unwrap_err();
            assert_eq!(err.0[0].variable, "OTEL_TRACES_SAMPLER_ARG", "{bad}");
            assert_eq!(err.0[0].value, bad);
        }
        // The argument of another sampler is not read, so it cannot be wrong.
        assert!(
            read(&[
                ("OTEL_TRACES_SAMPLER", "always_on"),
                ("OTEL_TRACES_SAMPLER_ARG", "junk")
            ])
            .is_ok()
        );
    }
}
