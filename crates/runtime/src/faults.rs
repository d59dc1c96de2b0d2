//! Fault injection switches, per service, at runtime: added latency and an error rate for chosen
//! RPCs, for demos and chaos tests (like the OpenTelemetry demo's feature flags).
//!
//! Syntax (env `MESH_FAULT_<SERVICE>` at start, or the body of `PUT /faults/<service>` on the
//! admin port): rules separated by `;`, each `<method>:<setting>,<setting>...` where `<method>` is
//! a method name (`GetProduct`), a full path (`/product.v1.ProductService/GetProduct`) or `*`, and
//! the settings are `delay=<duration>` (e.g. `50ms`), `error=<rate>` (0..1) and `code=<gRPC code
//! name>` (default `UNAVAILABLE`). Example: `GetProduct:delay=20ms,error=0.1;*:delay=1ms`. The
//! first matching rule applies. `GET /faults` lists the switches, `DELETE /faults/<service>` clears
//! them. Health checks and reflection are never faulted. A rule for `task/<name>` with an error
//! rate makes the service's background task `<name>` fail instead (see [`crate::lifecycle`]).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::{get, put};

/// One rule.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// `*`, a method name or a full path.
    pub method: String,
    /// Added before the handler runs.
    pub delay: Duration,
    /// Probability of failing the call (after the delay) instead of running the handler.
    pub error_rate: f64,
    /// The code of injected errors.
    pub code: tonic::Code,
}

impl FaultRule {
    fn matches(&self, path: &str) -> bool {
        self.method == "*"
            || self.method == path
            || path.rsplit('/').next() == Some(self.method.as_str())
    }
}

impl std::fmt::Display for FaultRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:delay={},error={},code={}",
            self.method,
            humantime::format_duration(self.delay),
            self.error_rate,
            crate::metrics::code_name(self.code)
        )
    }
}

/// Parses the switch syntax (see the module docs); an empty string is no rules.
pub fn parse(spec: &str) -> Result<Vec<FaultRule>, String> {
    let mut rules = Vec::new();
    for rule in spec.split(';').map(str::trim).filter(|r| !r.is_empty()) {
        let (method, settings) = rule
            .split_once(':')
            .ok_or_else(|| format!("`{rule}`: expected `<method>:<setting>,...`, e.g. `GetProduct:delay=20ms,error=0.1`"))?;
        let mut r = FaultRule {
            method: method.trim().to_string(),
            delay: Duration::ZERO,
            error_rate: 0.0,
            code: tonic::Code::Unavailable,
        };
        if r.method.is_empty() {
            return Err(format!("`{rule}`: no method (use `*` for every method)"));
        }
        for setting in settings.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (key, value) = setting
                .split_once('=')
                .ok_or_else(|| format!("`{setting}`: expected `key=value`"))?;
            match key.trim() {
                "delay" => {
                    r.delay = humantime::parse_duration(value.trim())
                        .map_err(|e| format!("`{setting}`: {e}"))?
                }
                "error" => {
                    r.error_rate = value
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|v| (0.0..=1.0).contains(v))
                        .ok_or_else(|| format!("`{setting}`: expected a rate between 0 and 1"))?
                }
                "code" => {
                    r.code = code_by_name(value.trim())
                        .ok_or_else(|| format!("`{setting}`: unknown gRPC code"))?
                }
                other => {
                    return Err(format!(
                        "`{setting}`: unknown setting `{other}` (delay, error, code)"
                    ));
                }
            }
        }
        rules.push(r);
    }
    Ok(rules)
}

fn code_by_name(name: &str) -> Option<tonic::Code> {
    (0..=16)
        .map(tonic::Code::from_i32)
        .find(|c| crate::metrics::code_name(*c).eq_ignore_ascii_case(name))
}

/// The fault switches of every service of the process.
#[derive(Debug, Default)]
pub struct Faults {
    by_service: RwLock<BTreeMap<String, Arc<[FaultRule]>>>,
}

impl Faults {
    /// Replaces `service`'s rules.
    pub fn set(&self, service: &str, rules: Vec<FaultRule>) {
        let mut map = self.by_service.write().unwrap_or_else(|e| e.into_inner());
        if rules.is_empty() {
            map.remove(service);
        } else {
            map.insert(service.to_string(), rules.into());
        }
    }

    /// The rule that applies to a call of `path` on `service`, if any.
    pub fn lookup(&self, service: &str, path: &str) -> Option<FaultRule> {
        let map = self.by_service.read().unwrap_or_else(|e| e.into_inner());
        map.get(service)?.iter().find(|r| r.matches(path)).cloned()
    }

    /// The switch that makes `service`'s background task `task` fail: a rule whose method is
    /// exactly `task/<task>` (e.g. `MESH_FAULT_PAYMENT=task/work-queue:error=1`). `*` never
    /// matches a task. See [`crate::lifecycle`].
    pub fn task_fault(&self, service: &str, task: &str) -> Option<FaultRule> {
        let map = self.by_service.read().unwrap_or_else(|e| e.into_inner());
        map.get(service)?
            .iter()
            .find(|r| r.method.strip_prefix("task/") == Some(task))
            .cloned()
    }

    /// Whether any switch is on (a cheap check on the hot path).
    pub fn any(&self) -> bool {
        !self
            .by_service
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Every service's rules, in the switch syntax.
    pub fn snapshot(&self) -> BTreeMap<String, String> {
        let map = self.by_service.read().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(s, rules)| {
                let text = rules.iter().map(ToString::to_string).collect::<Vec<_>>();
                (s.clone(), text.join(";"))
            })
            .collect()
    }
}

/// The process's fault switches.
pub fn global() -> &'static Faults {
    static FAULTS: OnceLock<Faults> = OnceLock::new();
    FAULTS.get_or_init(Faults::default)
}

/// The environment variable of `service`'s switches.
pub fn env_var(service: &str) -> String {
    format!(
        "MESH_FAULT_{}",
        service.to_ascii_uppercase().replace('-', "_")
    )
}

/// Admin routes: `GET /faults`, `PUT /faults/{service}` (body: the switch syntax) and
/// `DELETE /faults/{service}`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/faults",
            get(|| async { axum::Json(serde_json::json!(global().snapshot())) }),
        )
        .route(
            "/faults/{service}",
            put(|Path(service): Path<String>, body: String| async move {
                match parse(&body) {
                    Ok(rules) => {
                        tracing::warn!(service = %service, faults = %body.trim(), "fault switches set");
                        global().set(&service, rules);
                        (StatusCode::OK, "ok\n".to_string())
                    }
                    Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
                }
            })
            .delete(|Path(service): Path<String>| async move {
                tracing::info!(service = %service, "fault switches cleared");
                global().set(&service, Vec::new());
                "ok\n"
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_syntax_parses_and_names_bad_parts() {
        let rules = parse("GetProduct:delay=20ms,error=0.5,code=internal; *:delay=1ms").unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].delay, Duration::from_millis(20));
        assert_eq!(rules[0].code, tonic::Code::Internal);
        assert!(rules[0].matches("/product.v1.ProductService/GetProduct"));
        assert!(!rules[0].matches("/product.v1.ProductService/ListProducts"));
        assert!(rules[1].matches("/x.Y/Z"));
        assert!(parse("").unwrap().is_empty());
        assert!(parse("GetProduct").unwrap_err().contains("expected"));
        assert!(parse("X:error=2").unwrap_err().contains("between 0 and 1"));
        assert!(
            parse("X:code=NOPE")
                .unwrap_err()
                .contains("unknown gRPC code")
        );
        assert!(parse("X:speed=1").unwrap_err().contains("unknown setting"));
        let faults = Faults::default();
        faults.set("product", rules);
        assert!(faults.lookup("product", "/a.B/GetProduct").is_some());
        assert!(faults.lookup("inventory", "/a.B/GetProduct").is_none());
        assert_eq!(
            faults.snapshot()["product"],
            "GetProduct:delay=20ms,error=0.5,code=INTERNAL;*:delay=1ms,error=0,code=UNAVAILABLE"
        );
    }
}
