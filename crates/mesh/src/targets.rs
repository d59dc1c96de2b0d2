//! Parsing the target list of `mesh serve`: `all`, or names separated by commas.

use mesh_runtime::Module;
use mesh_runtime::config::Problem;

use crate::modules::{MODULES, find};

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
