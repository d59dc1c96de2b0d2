//! Parsing the target list of `mesh serve`: `all`, or names separated by commas.

use mesh_runtime::config::{ConfigError, Problem};
use mesh_runtime::{MeshConfig, Module, RuntimeArgs, ServiceSpec};

use crate::modules::{MODULES, find};

/// The validated configuration and the modules named by `spec`; one error lists every problem
/// of both (bad settings and unknown targets alike).
pub(crate) fn validate(
    spec: &str,
    args: &RuntimeArgs,
) -> Result<(MeshConfig, Vec<&'static Module>), ConfigError> {
    validate_with(spec, args, |k| std::env::var(k).ok())
}

/// [`validate`] with the environment read through `env` (the benchmarks override ports).
pub(crate) fn validate_with(
    spec: &str,
    args: &RuntimeArgs,
    env: impl Fn(&str) -> Option<String>,
) -> Result<(MeshConfig, Vec<&'static Module>), ConfigError> {
    let specs: Vec<ServiceSpec> = MODULES
        .iter()
        .map(|m| ServiceSpec {
            name: m.name,
            default_port: m.default_port,
        })
        .collect();
    let config = MeshConfig::from_args(args, &specs, env);
    match (config, parse(spec)) {
        (Ok(config), Ok(targets)) => Ok((config, targets)),
        (config, targets) => {
            let mut problems: Vec<Problem> = targets.err().into_iter().collect();
            if let Err(e) = config {
                problems.extend(e.problems);
            }
            Err(ConfigError { problems })
        }
    }
}

/// The modules named by `spec`, in module-table order, or the problem with it.
pub(crate) fn parse(spec: &str) -> Result<Vec<&'static Module>, Problem> {
    let problem = |reason: String| Problem {
        setting: "TARGETS (mesh serve <TARGETS>)".into(),
        value: spec.into(),
        reason,
    };
    let names: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if names.is_empty() {
        return Err(problem("name at least one target, or `all`".into()));
    }
    if names.contains(&"all") {
        return Ok(MODULES.iter().collect());
    }
    let unknown: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| find(n).is_none())
        .collect();
    if !unknown.is_empty() {
        let known: Vec<&str> = MODULES.iter().map(|m| m.name).collect();
        return Err(problem(format!(
            "unknown target{} {}; expected `all` or some of: {}",
            if unknown.len() == 1 { "" } else { "s" },
            unknown.join(", "),
            known.join(", ")
        )));
    }
    Ok(MODULES.iter().filter(|m| names.contains(&m.name)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_and_subsets() {
        assert_eq!(parse("all").unwrap().len(), MODULES.len());
        let two: Vec<_> = parse("payment, order")
            .unwrap()
            .iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(two, ["order", "payment"]);
    }

    #[test]
    fn unknown_targets_are_named() {
        let err = parse("order,ordr,pay").unwrap_err();
        assert!(err.reason.contains("ordr, pay"), "{}", err.reason);
        assert!(err.reason.contains("inventory"), "lists the known targets");
        assert!(parse(" , ").is_err());
    }
}
