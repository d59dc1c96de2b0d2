//! The edge's path templates (`mesh_edge::path_template`) and route lookup (`routes`).
//!
//! Input: `<template>\n<request path>` (without a newline, the text is both). Invariants:
//! - a template that parses starts with `/` and parses again from its own text to the same
//!   template;
//! - a match binds every variable once, in order, and the values re-rendered into a path
//!   ([`mesh_fuzz::render`]) match again with the same values;
//! - on the contracts' route table, a path found for a method is found again, with the same
//!   values, after re-rendering; a "method not allowed" lists only methods that do find it.

#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use mesh_edge::path_template::{Binding, PathTemplate};
use mesh_edge::routes::Lookup;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (template, path) = text.split_once('\n').unwrap_or((text, text));
    if let Ok(parsed) = PathTemplate::parse(template) {
        assert!(template.starts_with('/'), "{template:?} parsed");
        assert_eq!(
            PathTemplate::parse(&parsed.text).as_ref(),
            Ok(&parsed),
            "{template:?} parses again from its text"
        );
        check_match(&parsed, path);
        check_match(&parsed, template);
    }
    check_lookup(path);
});

/// The values of `bindings`, one per variable in order.
fn values(template: &PathTemplate, bindings: &[Binding], path: &str) -> Vec<String> {
    assert_eq!(
        bindings.len(),
        template.variables.len(),
        "{:?} on {path:?}: one binding per variable",
        template.text
    );
    bindings
        .iter()
        .enumerate()
        .map(|(i, b)| {
            assert_eq!(b.variable, i, "{:?} on {path:?}: in order", template.text);
            b.value.clone()
        })
        .collect()
}

fn check_match(template: &PathTemplate, path: &str) {
    let Some(bindings) = template.matches(path) else {
        return;
    };
    let values = values(template, &bindings, path);
    let again = mesh_fuzz::render(template, &values);
    assert_eq!(
        template.matches(&again),
        Some(bindings),
        "{:?} matched {path:?}; its values rendered as {again:?} must match the same",
        template.text
    );
}

fn check_lookup(path: &str) {
    let routes = mesh_fuzz::routes();
    for method in [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ] {
        match routes.lookup(&method, path) {
            Lookup::Found(route, bindings) => {
                let values = values(&route.template, &bindings, path);
                let again = mesh_fuzz::render(&route.template, &values);
                match routes.lookup(&method, &again) {
                    Lookup::Found(other, rebound) => {
                        assert_eq!(
                            other.label, route.label,
                            "{method} {path:?} and its re-rendering {again:?} find one route"
                        );
                        assert_eq!(rebound, bindings, "{method} {path:?} vs {again:?}");
                    }
                    other => panic!(
                        "{method} {path:?} found {}, its re-rendering {again:?} gives {other:?}",
                        route.label
                    ),
                }
            }
            Lookup::MethodNotAllowed(allowed) => {
                assert!(!allowed.is_empty());
                for m in allowed {
                    assert_ne!(m, method);
                    assert!(
                        matches!(routes.lookup(&m, path), Lookup::Found(..)),
                        "{method} {path:?}: {m} is listed as allowed"
                    );
                }
            }
            Lookup::NotFound => {}
        }
    }
}
