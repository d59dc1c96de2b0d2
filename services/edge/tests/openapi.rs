//! The generated OpenAPI document validates against the OpenAPI 3.0 schema, checked with the
//! PyPI `openapi-spec-validator` (an independent implementation). Needs `python3` with that
//! package (`pip install openapi-spec-validator`); CI installs it.

#[test]
fn contracts_document_validates() {
    let doc = mesh_edge::openapi::contracts_document().unwrap();
    let path = std::env::temp_dir().join(format!("mesh-edge-openapi-{}.json", std::process::id()));
    std::fs::write(&path, &doc).unwrap();
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json,sys; from openapi_spec_validator import validate; validate(json.load(open(sys.argv[1]))); print('ok')",
        ])
        .arg(&path)
        .output()
        .expect("python3 runs");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "openapi-spec-validator rejected the document: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// OpenAPI forbids paths that differ only in their parameters' names; the document had
/// `/v1/products/{id}` (get, delete) beside `/v1/products/{product.id}` (patch), which
/// Schemathesis could not load (tests/schemathesis.sh). Each shape is one path now, and the
/// update's parameter takes the path's name.
#[test]
fn no_two_paths_differ_only_in_parameter_names() {
    let doc: serde_json::Value =
        serde_json::from_str(&mesh_edge::openapi::contracts_document().unwrap()).unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut shapes = std::collections::BTreeMap::new();
    for path in paths.keys() {
        let mut shape = String::new();
        let mut in_name = false;
        for c in path.chars() {
            match c {
                '{' => in_name = true,
                '}' => in_name = false,
                _ if in_name => continue,
                _ => {}
            }
            shape.push(c);
        }
        if let Some(other) = shapes.insert(shape, path.clone()) {
            panic!("{path} and {other} differ only in parameter names");
        }
    }
    let update = &paths["/v1/products/{id}"]["patch"];
    assert_eq!(update["parameters"][0]["name"], "id", "{update}");
    assert_eq!(update["parameters"][0]["in"], "path");
    assert!(paths["/v1/products/{id}"].get("get").is_some());
    assert!(!paths.contains_key("/v1/products/{product.id}"));
}
