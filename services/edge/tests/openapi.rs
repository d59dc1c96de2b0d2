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
