//! What the fuzz targets share: the contracts' descriptor pool and route table (built once per
//! process), a path renderer for template round trips, and a runtime for async entry points.

use std::sync::OnceLock;

use mesh_edge::path_template::{PathTemplate, Segment};
use mesh_edge::routes::RouteTable;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use prost_reflect::DescriptorPool;

/// The contracts' descriptor pool (options intact, so `google.api.http` rules are there).
pub fn pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        DescriptorPool::decode(mesh_contracts::FILE_DESCRIPTOR_SET).expect("the contracts decode")
    })
}

/// The edge's route table over every service of the contracts, as `mesh serve all` builds it.
pub fn routes() -> &'static RouteTable {
    static ROUTES: OnceLock<RouteTable> = OnceLock::new();
    ROUTES.get_or_init(|| RouteTable::build(pool(), |_| true).expect("the contracts' routes"))
}

/// A current-thread runtime for the async entry points (one per process).
pub fn block_on<F: Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a runtime")
        })
        .block_on(future)
}

/// Everything but RFC 3986's unreserved characters is percent-encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A request path that `template` matches with `values` as its variables' values (in the
/// order of [`PathTemplate::variables`]): literals as written, `*` outside a variable as `x`,
/// `**` outside a variable as nothing (or as `x` when nothing else precedes a verb: a verb must
/// follow a segment, so `/**:v` matches `/x:v` but not `/:v`), a single-segment value
/// percent-encoded whole (its `/` included), a multi-segment value split at `/` and each part
/// percent-encoded (an empty one as nothing).
pub fn render(template: &PathTemplate, values: &[String]) -> String {
    let mut out = String::new();
    let mut k = 0;
    while k < template.segments.len() {
        if let Some((n, variable)) = template
            .variables
            .iter()
            .enumerate()
            .find(|(_, v)| v.start == k)
        {
            let value = values.get(n).map(String::as_str).unwrap_or_default();
            let single =
                variable.end - variable.start == 1 && template.segments[k] != Segment::Multi;
            if single {
                out.push('/');
                out.extend(utf8_percent_encode(value, SEGMENT));
            } else if value.is_empty() {
                // A multi-segment variable that bound nothing (`{name=**}` over zero segments)
                // adds nothing, as a bare `**` does: `/v1/{name=**}:get` matched `/v1:get`.
            } else {
                out.push('/');
                let parts: Vec<String> = value
                    .split('/')
                    .map(|p| utf8_percent_encode(p, SEGMENT).to_string())
                    .collect();
                out.push_str(&parts.join("/"));
            }
            k = variable.end.max(k + 1);
            continue;
        }
        match &template.segments[k] {
            Segment::Literal(text) => {
                out.push('/');
                out.push_str(text);
            }
            Segment::Single => out.push_str("/x"),
            Segment::Multi if out.is_empty() && template.verb.is_some() => out.push_str("/x"),
            Segment::Multi => {}
        }
        k += 1;
    }
    if out.is_empty() {
        out.push('/');
    }
    if let Some(verb) = &template.verb {
        out.push(':');
        out.push_str(verb);
    }
    out
}
