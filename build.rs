//! Compiles every `.proto` file under `proto/` with protox (no system `protoc`), generates tonic
//! servers and clients with tonic-prost-build, and writes two files to `OUT_DIR`:
//!
//! - `descriptor_set.bin`: the encoded `FileDescriptorSet`, extension options included, so
//!   reflection, the REST edge and OpenAPI generation all read the `google.api.http` rules from one
//!   source of truth;
//! - `packages.rs`: a module tree (`product::v1`, `events::v1`, ...) that includes the generated
//!   code of every package, so a new proto package needs no edit to `src/lib.rs`.

use std::collections::BTreeMap;
use std::error::Error;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const PROTO_ROOT: &str = "proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut files = Vec::new();
    collect_protos(Path::new(PROTO_ROOT), &mut files)?;
    files.sort();
    let relative: Vec<String> = files
        .iter()
        .map(|f| {
            f.strip_prefix(PROTO_ROOT)
                .expect("collected under the proto root")
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();

    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    compiler.include_imports(true);
    compiler.include_source_info(true);
    compiler
        .open_files(&relative)
        .map_err(|e| format!("compiling {PROTO_ROOT}/: {e}"))?;

    // The encoded set keeps extension options (google.api.http); the prost-types set below does
    // not, so it is used for code generation only.
    std::fs::write(
        out_dir.join("descriptor_set.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    let fds = compiler.file_descriptor_set();
    let packages: Vec<String> = fds
        .file
        .iter()
        .filter_map(|f| f.package.clone())
        .filter(|p| !p.starts_with("google.protobuf"))
        .collect();

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    std::fs::write(out_dir.join("packages.rs"), module_tree(&packages))?;
    Ok(())
}

/// Every `.proto` file below `dir`, recursively.
fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Box<dyn Error>> {
    for entry in std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

/// A nested package tree, one leaf per protobuf package.
#[derive(Default)]
struct Node {
    children: BTreeMap<String, Node>,
    package: Option<String>,
}

/// Renders `mod a { mod v1 { include!("a.v1.rs"); } }` for every package, nested the way prost's
/// generated code refers across packages (`super::super::common::v1::Money`).
fn module_tree(packages: &[String]) -> String {
    let mut root = Node::default();
    for package in packages {
        let mut node = &mut root;
        for part in package.split('.') {
            node = node.children.entry(part.to_string()).or_default();
        }
        node.package = Some(package.clone());
    }
    let mut out = String::new();
    render(&root, 0, &mut out);
    out
}

fn render(node: &Node, depth: usize, out: &mut String) {
    let indent = "    ".repeat(depth);
    if let Some(package) = &node.package {
        let _ = writeln!(
            out,
            "{indent}include!(concat!(env!(\"OUT_DIR\"), \"/{package}.rs\"));"
        );
    }
    for (name, child) in &node.children {
        let ident = if is_keyword(name) {
            format!("r#{name}")
        } else {
            name.clone()
        };
        let _ = writeln!(
            out,
            "{indent}#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]"
        );
        let _ = writeln!(out, "{indent}pub mod {ident} {{");
        render(child, depth + 1, out);
        let _ = writeln!(out, "{indent}}}");
    }
}

fn is_keyword(name: &str) -> bool {
    matches!(
        name,
        "as" | "async"
            | "await"
            | "break"
            | "const"
            | "continue"
            | "crate"
            | "dyn"
            | "else"
            | "enum"
            | "extern"
            | "false"
            | "fn"
            | "for"
            | "if"
            | "impl"
            | "in"
            | "let"
            | "loop"
            | "match"
            | "mod"
            | "move"
            | "mut"
            | "pub"
            | "ref"
            | "return"
            | "self"
            | "static"
            | "struct"
            | "super"
            | "trait"
            | "true"
            | "type"
            | "unsafe"
            | "use"
            | "where"
            | "while"
            | "yield"
    )
}
