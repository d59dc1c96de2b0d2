//! The layering invariant of `ARCHITECTURE.md`, checked: the runtime's and every service's
//! modules import each other without a cycle (each layer imports only the layers below it), and a
//! service crate depends (outside its tests) on the contracts and the runtime, never on another
//! service; only the binary depends on the services.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The top-level modules of the crate whose sources are under `src`, each with the top-level
/// modules it names through `crate::` (in code, not in comments).
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read the source folder") {
                files.push(entry.expect("folder entry").path());
            }
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let relative = path.strip_prefix(src).expect("under src");
        if relative == Path::new("lib.rs") || relative == Path::new("main.rs") {
            continue; // the crate root declares and re-exports every module
        }
        let first = relative
            .components()
            .next()
            .expect("a path")
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        let text = std::fs::read_to_string(&path).expect("read a source file");
        let imports = graph.entry(module.clone()).or_default();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for named in crate_paths(line) {
                if named != module {
                    imports.insert(named);
                }
            }
        }
    }
    // Only edges between the crate's own modules (not `crate::SomeReexport`).
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for imports in graph.values_mut() {
        imports.retain(|m| modules.contains(m));
    }
    graph
}

/// The first segments after each `crate::` on `line`, `crate::{a, b::c}` giving `a` and `b`.
fn crate_paths(line: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (i, _) in line.match_indices("crate::") {
        if line[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue; // `mesh_crate::` and the like
        }
        let rest = &line[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or_default();
            out.extend(group.split(',').map(|p| ident(p.trim())));
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

/// A cycle in `graph`, if there is one, as the modules along it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, done, path) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn the_runtime_and_every_service_import_without_cycles() {
    let mut crates = vec!["crates/runtime/src".to_string()];
    for entry in std::fs::read_dir(workspace().join("services")).expect("read services/") {
        let name = entry.expect("services/ entry").file_name();
        crates.push(format!("services/{}/src", name.to_string_lossy()));
    }
    assert!(crates.len() > 10, "service crates found: {crates:?}");
    for crate_src in &crates {
        let graph = module_graph(&workspace().join(crate_src));
        assert!(graph.len() > 2, "{crate_src}: modules found: {graph:?}");
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "{crate_src}: modules import each other in a cycle: {}; a module imports only \
                 the layers below it (ARCHITECTURE.md, Invariants)",
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn the_cycle_check_sees_a_cycle() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec![]),
    ]
    .into_iter()
    .map(|(m, i)| (m.to_string(), i.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(find_cycle(&graph).expect("a cycle"), ["a", "b", "c", "a"]);
    assert_eq!(
        crate_paths("use crate::{bus::EventBus, storage};  x = crate::outbox::Tx; mesh_crate::no"),
        ["bus", "storage", "outbox"]
    );
}

#[test]
fn services_depend_on_the_contracts_and_the_runtime_never_on_each_other() {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace())
        .output()
        .expect("cargo metadata");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    let services_dir = workspace()
        .join("services")
        .canonicalize()
        .expect("services/");
    let packages = metadata["packages"].as_array().expect("packages");
    let is_service = |p: &serde_json::Value| {
        Path::new(p["manifest_path"].as_str().unwrap_or_default())
            .canonicalize()
            .is_ok_and(|m| m.starts_with(&services_dir))
    };
    let services: BTreeSet<&str> = packages
        .iter()
        .filter(|p| is_service(p))
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert!(services.len() >= 10, "service crates: {services:?}");
    let workspace_crates: BTreeSet<&str> =
        packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut wrong = Vec::new();
    for package in packages.iter().filter(|p| is_service(p)) {
        let name = package["name"].as_str().unwrap_or_default();
        for dep in package["dependencies"].as_array().into_iter().flatten() {
            let dep_name = dep["name"].as_str().unwrap_or_default();
            // Tests may start other services (a dev-dependency); production code may not.
            if dep["kind"].as_str() == Some("dev") || !workspace_crates.contains(dep_name) {
                continue;
            }
            if !["mesh-contracts", "mesh-runtime"].contains(&dep_name) {
                wrong.push(format!("{name} -> {dep_name}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "service crates depend only on mesh-contracts and mesh-runtime (they talk over gRPC \
         and events), never on another workspace crate: {wrong:?}"
    );
}
