//! Client resilience settings from the environment, per upstream.
//!
//! `MESH_CLIENT_<SETTING>` sets every upstream's default; `MESH_<UPSTREAM>_CLIENT_<SETTING>`
//! (e.g. `MESH_PAYMENT_CLIENT_BREAKER_K`) overrides it for calls to that one service. Settings:
//!
//! | setting | default | meaning |
//! |---|---|---|
//! | `RETRY_MAX_ATTEMPTS` | 3 | attempts of an idempotent call, the first included (1: no retries) |
//! | `RETRY_INITIAL_BACKOFF` | 25ms | backoff before the first retry (doubles, full jitter) |
//! | `RETRY_MAX_BACKOFF` | 1s | cap of the backoff |
//! | `RETRY_BUDGET_RATIO` | 0.1 | retries allowed per request, over time (0.1: at most 10% extra load) |
//! | `BREAKER_K` | 2.0 | adaptive throttling's `k`: rejects once requests exceed `k` × accepts |
//! | `BREAKER_WINDOW` | 10s | the sliding window of requests and accepts |
//! | `BREAKER_MIN_REQUESTS` | 20 | requests in the window before the breaker may reject |
//! | `IDEMPOTENT` | (none) | extra request paths (`/pkg.Service/Method`, comma-separated) to retry |
//!
//! Methods the contracts declare `idempotency_level = IDEMPOTENT` or `NO_SIDE_EFFECTS` are
//! retried without being listed.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::resilience::ResilienceOptions;
use crate::settings::{Problem, env_prefix};

/// The client settings of one process: a default and per-upstream overrides.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientSettings {
    default: ResilienceOptions,
    upstreams: BTreeMap<&'static str, ResilienceOptions>,
}

impl ClientSettings {
    /// The settings of calls to every upstream in `upstreams`, read through `env`; every
    /// refused value is a problem naming its variable.
    pub fn from_env(
        upstreams: &[&'static str],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, Vec<Problem>> {
        let mut problems = Vec::new();
        let default = read(
            "MESH_CLIENT",
            &ResilienceOptions::default(),
            &env,
            &mut problems,
        );
        let mut settings = Self {
            default: default.clone(),
            upstreams: BTreeMap::new(),
        };
        for upstream in upstreams {
            let prefix = format!("{}_CLIENT", env_prefix(upstream));
            let options = read(&prefix, &default, &env, &mut problems);
            if options != default {
                settings.upstreams.insert(upstream, options);
            }
        }
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(problems)
        }
    }

    /// The options of calls to `upstream`.
    pub fn for_upstream(&self, upstream: &str) -> ResilienceOptions {
        self.upstreams
            .get(upstream)
            .unwrap_or(&self.default)
            .clone()
    }
}

/// `base` with every `<prefix>_<SETTING>` found in `env` applied.
fn read(
    prefix: &str,
    base: &ResilienceOptions,
    env: &impl Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) -> ResilienceOptions {
    let mut o = base.clone();
    let mut setting = |name: &str, apply: &mut dyn FnMut(&str) -> Result<(), String>| {
        let variable = format!("{prefix}_{name}");
        if let Some(value) = env(&variable).filter(|v| !v.trim().is_empty())
            && let Err(reason) = apply(value.trim())
        {
            problems.push(Problem {
                setting: variable,
                value,
                reason,
            });
        }
    };
    setting("RETRY_MAX_ATTEMPTS", &mut |v| {
        o.retry.max_attempts = whole(v, 1, 10)?;
        Ok(())
    });
    setting("RETRY_INITIAL_BACKOFF", &mut |v| {
        o.retry.initial_backoff = duration(v)?;
        Ok(())
    });
    setting("RETRY_MAX_BACKOFF", &mut |v| {
        o.retry.max_backoff = duration(v)?;
        Ok(())
    });
    setting("RETRY_BUDGET_RATIO", &mut |v| {
        o.budget.ratio = fraction(v, 0.0, 1.0)?;
        Ok(())
    });
    setting("BREAKER_K", &mut |v| {
        o.breaker.k = fraction(v, 1.0, 100.0)?;
        Ok(())
    });
    setting("BREAKER_WINDOW", &mut |v| {
        o.breaker.window = duration(v)?;
        Ok(())
    });
    setting("BREAKER_MIN_REQUESTS", &mut |v| {
        o.breaker.min_requests = u64::from(whole(v, 0, 1_000_000)?);
        Ok(())
    });
    setting("IDEMPOTENT", &mut |v| {
        for path in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let parts: Vec<&str> = path.split('/').collect();
            match parts.as_slice() {
                ["", service, method] if service.contains('.') && !method.is_empty() => {
                    o.idempotent.insert(path.to_string());
                }
                _ => {
                    return Err(format!(
                        "`{path}` is not a request path such as /inventory.v1.InventoryService/GetStock"
                    ));
                }
            }
        }
        Ok(())
    });
    if o.retry.max_backoff < o.retry.initial_backoff {
        problems.push(Problem {
            setting: format!("{prefix}_RETRY_MAX_BACKOFF"),
            value: humantime::format_duration(o.retry.max_backoff).to_string(),
            reason: format!(
                "shorter than the initial backoff ({})",
                humantime::format_duration(o.retry.initial_backoff)
            ),
        });
    }
    o
}

fn whole(v: &str, min: u32, max: u32) -> Result<u32, String> {
    v.parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("expected a whole number from {min} to {max}"))
}

fn fraction(v: &str, min: f64, max: f64) -> Result<f64, String> {
    v.parse::<f64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("expected a number from {min} to {max}"))
}

fn duration(v: &str) -> Result<Duration, String> {
    humantime::parse_duration(v)
        .map_err(|e| format!("not a duration such as 25ms or 1s: {e}"))
        .and_then(|d| {
            if d.is_zero() {
                Err("must be longer than zero".to_string())
            } else {
                Ok(d)
            }
        })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<ClientSettings, Vec<Problem>> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        ClientSettings::from_env(&["payment", "iot-gateway"], |k| vars.get(k).cloned())
    }

    #[test]
    fn defaults_without_variables() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.for_upstream("payment"), ResilienceOptions::default());
        assert_eq!(s.for_upstream("unknown"), ResilienceOptions::default());
    }

    #[test]
    fn global_then_per_upstream_overrides() {
        let s = settings(&[
            ("MESH_CLIENT_RETRY_MAX_ATTEMPTS", "2"),
            ("MESH_CLIENT_BREAKER_K", "1.5"),
            ("MESH_PAYMENT_CLIENT_BREAKER_K", "3"),
            ("MESH_IOT_GATEWAY_CLIENT_RETRY_BUDGET_RATIO", "0.2"),
            (
                "MESH_IOT_GATEWAY_CLIENT_IDEMPOTENT",
                "/iot.v1.GatewayService/SendCommand",
            ),
        ])
        .unwrap();
        let payment = s.for_upstream("payment");
        assert_eq!(payment.retry.max_attempts, 2, "inherits the global value");
        assert!((payment.breaker.k - 3.0).abs() < f64::EPSILON);
        let gateway = s.for_upstream("iot-gateway");
        assert!((gateway.breaker.k - 1.5).abs() < f64::EPSILON);
        assert!((gateway.budget.ratio - 0.2).abs() < f64::EPSILON);
        assert!(
            gateway
                .idempotent
                .contains("/iot.v1.GatewayService/SendCommand")
        );
        let other = s.for_upstream("inventory");
        assert_eq!(other.retry.max_attempts, 2);
        assert!((other.breaker.k - 1.5).abs() < f64::EPSILON);
    }

    #[test]
    fn every_bad_value_is_named() {
        let problems = settings(&[
            ("MESH_CLIENT_RETRY_MAX_ATTEMPTS", "0"),
            ("MESH_CLIENT_BREAKER_K", "0.5"),
            ("MESH_PAYMENT_CLIENT_RETRY_INITIAL_BACKOFF", "soon"),
            ("MESH_PAYMENT_CLIENT_IDEMPOTENT", "GetStock"),
            ("MESH_IOT_GATEWAY_CLIENT_RETRY_MAX_BACKOFF", "1ms"),
        ])
        .unwrap_err();
        let named: Vec<&str> = problems.iter().map(|p| p.setting.as_str()).collect();
        assert!(
            named.contains(&"MESH_CLIENT_RETRY_MAX_ATTEMPTS"),
            "{named:?}"
        );
        assert!(named.contains(&"MESH_CLIENT_BREAKER_K"), "{named:?}");
        assert!(
            named.contains(&"MESH_PAYMENT_CLIENT_RETRY_INITIAL_BACKOFF"),
            "{named:?}"
        );
        assert!(
            named.contains(&"MESH_PAYMENT_CLIENT_IDEMPOTENT"),
            "{named:?}"
        );
        assert!(
            named.contains(&"MESH_IOT_GATEWAY_CLIENT_RETRY_MAX_BACKOFF"),
            "{named:?}"
        );
    }
}
