//! Parsing the target list of `mesh serve`: `all`, or names separated by commas; and validating
//! everything the targets will read before anything binds: the process configuration
//! ([`MeshConfig`]), each target's own declared settings ([`Module::settings`]), its server
//! protection, its fault switches and the process's mTLS files, all problems in one error.

use std::collections::BTreeSet;

use mesh_runtime::config::{ConfigError, Problem, admin_port_following};
use mesh_runtime::settings::{Lookup, process_env};
use mesh_runtime::shed::ProtectOptions;
use mesh_runtime::{MeshConfig, Module, RuntimeArgs, ServiceSpec, faults};

use crate::modules::{MODULES, find};

/// The validated configuration and the modules named by `spec`; one error lists every problem
/// of both (bad settings and unknown targets alike).
pub(crate) fn validate(
    spec: &str,
    args: &RuntimeArgs,
) -> Result<(MeshConfig, Vec<&'static Module>), ConfigError> {
    validate_with(spec, args, process_env)
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
    let config = MeshConfig::from_args(args, &specs, &env);
    let targets = parse(spec);
    let mut problems: Vec<Problem> = targets.as_ref().err().cloned().into_iter().collect();
    if let Err(e) = &config {
        problems.extend(e.problems.iter().cloned());
    }
    if let Ok(targets) = &targets {
        problems.extend(module_problems(targets, &env));
    }
    if let Err(tls) = mesh_runtime::tls::TlsSettings::from_env(&env) {
        problems.extend(tls);
    }
    match (config, targets) {
        (Ok(mut config), Ok(targets)) if problems.is_empty() => {
            if args.admin_port.is_none() && targets.len() < MODULES.len() {
                config.admin_port = admin_port_following(config.services[targets[0].name].port);
            }
            Ok((config, targets))
        }
        _ => Err(ConfigError { problems }),
    }
}

/// Every problem with what `targets` read themselves: their declared settings, server
/// protection (`MESH_<SERVICE>_MAX_CONCURRENCY`, `MESH_SHED*`) and fault switches
/// (`MESH_FAULT_<SERVICE>`); a setting shared by several targets is named once.
fn module_problems(targets: &[&'static Module], env: &Lookup<'_>) -> Vec<Problem> {
    let mut problems = Vec::new();
    for module in targets {
        if let Err(errors) = (module.settings.check)(env) {
            problems.extend(errors.0.into_iter().map(Problem::from));
        }
        if let Err(bad) = ProtectOptions::from_env(module.name, env) {
            problems.extend(bad);
        }
        let var = faults::env_var(module.name);
        if let Some(spec) = env(&var)
            && let Err(reason) = faults::parse(&spec)
        {
            problems.push(Problem {
                setting: var,
                value: spec,
                reason,
            });
        }
    }
    let mut seen = BTreeSet::new();
    problems.retain(|p| seen.insert((p.setting.clone(), p.value.clone(), p.reason.clone())));
    problems
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
