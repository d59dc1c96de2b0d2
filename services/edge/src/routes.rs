//! The route table: every `google.api.http` binding of every served RPC, checked against the
//! message types at start, and looked up per request.
//!
//! Lookup takes the first route of the request's method, from the most specific template to the
//! least (a literal segment beats `*`, which beats `**`; a verb beats none), that matches, so
//! `GET /v1/stores/x` and `GET /v1/{name=**}` can coexist; only the templates whose leading
//! literal segments fit the path are checked ([`crate::route_index`]). Two bindings with the same
//! method, segments and verb are a conflict and fail the start, naming both RPCs.

use std::collections::HashMap;
use std::sync::Arc;

use http::Method;
use prost_reflect::{
    Cardinality, DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
};

use crate::http_rule::{self, HTTP_EXTENSION, HttpBinding, RuleError};
use crate::path_template::{Binding, PathTemplate};
use crate::route_index::RouteIndex;

/// Where a request's body goes.
#[derive(Debug, Clone)]
pub enum BodySpec {
    /// No body: everything not bound by the path comes from query parameters.
    None,
    /// `body: "*"`: the body is the request message (less path-bound fields).
    All,
    /// `body: "field"`: the body is that top-level field.
    Field(FieldDescriptor),
}

/// One REST route: an HTTP binding of one RPC.
#[derive(Debug, Clone)]
pub struct Route {
    /// The RPC.
    pub rpc: MethodDescriptor,
    /// Its HTTP method.
    pub method: Method,
    /// Its path template.
    pub template: PathTemplate,
    /// The field chain each template variable binds (same order as the variables).
    pub path_fields: Vec<Vec<FieldDescriptor>>,
    /// Where the body goes.
    pub body: BodySpec,
    /// The response field sent as the body, when `response_body` is set.
    pub response_body: Option<FieldDescriptor>,
    /// The gRPC path, `/pkg.Service/Method`.
    pub grpc_path: http::uri::PathAndQuery,
    /// `rule (GET /v1/...)`, for messages.
    pub label: String,
    /// Its position in the table, below [`RouteTable::len`]: what the edge keeps per route
    /// (the upstream) is held in a list by this position.
    pub index: usize,
}

impl Route {
    /// The full name of the RPC's service.
    pub fn service(&self) -> &str {
        self.rpc.parent_service().full_name()
    }
}

/// The result of looking a request up.
#[derive(Debug)]
pub enum Lookup<'a> {
    /// A route owns the request; the path variables' values.
    Found(&'a Arc<Route>, Vec<Binding>),
    /// Routes own the path, but not for this method.
    MethodNotAllowed(Vec<Method>),
    /// No route owns the path.
    NotFound,
}

/// The routes of one HTTP method, most specific first, and their index.
#[derive(Debug)]
struct MethodRoutes {
    method: Method,
    routes: Vec<Arc<Route>>,
    index: RouteIndex,
}

impl MethodRoutes {
    /// The first route that matches `path`.
    fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.index
            .first_match(path, |p, path| self.routes[p].template.is_match(path))
            .map(|p| &self.routes[p])
    }
}

/// Every route, by method (a handful of methods: a short list beats hashing).
#[derive(Debug, Default)]
pub struct RouteTable {
    by_method: Vec<MethodRoutes>,
}

/// Every problem found in the rules, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid google.api.http rules ({} problem(s)):\n  - {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  - "))]
pub struct RoutesError(pub Vec<RuleError>);

impl RouteTable {
    /// Builds the routes of every RPC of the services for which `served` is true.
    pub fn build(
        pool: &DescriptorPool,
        served: impl Fn(&str) -> bool,
    ) -> Result<Self, RoutesError> {
        let extension = pool.get_extension_by_name(HTTP_EXTENSION);
        let mut problems = Vec::new();
        let mut by_method: HashMap<Method, Vec<Arc<Route>>> = HashMap::new();
        let mut shapes: HashMap<
            (Method, Vec<crate::path_template::Segment>, Option<String>),
            String,
        > = HashMap::new();
        for service in pool.services() {
            if !served(service.full_name()) {
                continue;
            }
            for rpc in service.methods() {
                let bindings = match http_rule::bindings(&rpc, extension.as_ref()) {
                    Ok(b) => b,
                    Err(e) => {
                        problems.push(e);
                        continue;
                    }
                };
                for binding in bindings {
                    match route(&rpc, &binding) {
                        Ok(route) => {
                            let (segments, verb) = route.template.shape();
                            let here = format!("{} {}", rpc.full_name(), route.label);
                            if let Some(other) =
                                shapes.insert((route.method.clone(), segments, verb), here.clone())
                            {
                                problems.push(RuleError {
                                    rpc: rpc.full_name().to_string(),
                                    rule: route.label.clone(),
                                    reason: format!(
                                        "conflicts with {other}: same method and path pattern"
                                    ),
                                });
                                continue;
                            }
                            let index = by_method.values().map(Vec::len).sum();
                            by_method
                                .entry(route.method.clone())
                                .or_default()
                                .push(Arc::new(Route { index, ..route }));
                        }
                        Err(e) => problems.push(e),
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(RoutesError(problems));
        }
        let by_method = by_method
            .into_iter()
            .map(|(method, mut routes)| {
                routes.sort_by_key(|r| r.template.specificity());
                let index = RouteIndex::build(routes.iter().map(|r| &r.template));
                MethodRoutes {
                    method,
                    routes,
                    index,
                }
            })
            .collect();
        Ok(Self { by_method })
    }

    /// Every route, in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.by_method.iter().flat_map(|m| &m.routes)
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.by_method.iter().map(|m| m.routes.len()).sum()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Finds the route for `method` and the raw request `path`.
    pub fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        if let Some(routes) = self.by_method.iter().find(|m| m.method == *method)
            && let Some(route) = routes.find(path)
            && let Some(bindings) = route.template.matches(path)
        {
            return Lookup::Found(route, bindings);
        }
        let mut allowed: Vec<Method> = self
            .by_method
            .iter()
            .filter(|m| m.method != *method && m.find(path).is_some())
            .map(|m| m.method.clone())
            .collect();
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            // In the order of their names, as before.
            allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            Lookup::MethodNotAllowed(allowed)
        }
    }
}

fn route(rpc: &MethodDescriptor, binding: &HttpBinding) -> Result<Route, RuleError> {
    let err = |reason: String| RuleError {
        rpc: rpc.full_name().to_string(),
        rule: binding.label.clone(),
        reason,
    };
    if rpc.is_client_streaming() || rpc.is_server_streaming() {
        return Err(err(
            "streaming RPCs cannot be transcoded to REST yet; remove the rule and call it over gRPC"
                .into(),
        ));
    }
    let template = PathTemplate::parse(&binding.path).map_err(|e| err(e.to_string()))?;
    let input = rpc.input();
    let mut path_fields = Vec::new();
    for variable in &template.variables {
        let chain = field_chain(&input, &variable.field_path)
            .map_err(|e| err(format!("path variable {{{}}}: {e}", variable.name())))?;
        path_fields.push(chain);
    }
    let body = match binding.body.as_str() {
        "" => BodySpec::None,
        "*" => BodySpec::All,
        name => {
            let field = input.get_field_by_name(name).ok_or_else(|| {
                err(format!(
                    "body {name:?} is not a top-level field of {}",
                    input.full_name()
                ))
            })?;
            if path_fields.iter().any(|c| c.len() == 1 && c[0] == field) {
                return Err(err(format!(
                    "body field {name:?} is also bound by the path"
                )));
            }
            BodySpec::Field(field)
        }
    };
    let response_body = match binding.response_body.as_str() {
        "" => None,
        name => Some(rpc.output().get_field_by_name(name).ok_or_else(|| {
            err(format!(
                "response_body {name:?} is not a top-level field of {}",
                rpc.output().full_name()
            ))
        })?),
    };
    let grpc_path = format!("/{}/{}", rpc.parent_service().full_name(), rpc.name())
        .parse()
        .map_err(|e| err(format!("the gRPC path is not a valid URI path: {e}")))?;
    Ok(Route {
        rpc: rpc.clone(),
        method: binding.method.clone(),
        template,
        path_fields,
        body,
        response_body,
        grpc_path,
        label: binding.label.clone(),
        index: 0,
    })
}

/// Resolves a dotted path of proto field names to a chain of singular fields ending in a scalar.
fn field_chain(
    message: &MessageDescriptor,
    path: &[String],
) -> Result<Vec<FieldDescriptor>, String> {
    let mut chain = Vec::new();
    let mut current = message.clone();
    for (i, name) in path.iter().enumerate() {
        let field = current
            .get_field_by_name(name)
            .ok_or_else(|| format!("{} has no field {name:?}", current.full_name()))?;
        if field.cardinality() == Cardinality::Repeated {
            return Err(format!("field {name:?} is repeated or a map"));
        }
        let last = i + 1 == path.len();
        match (field.kind(), last) {
            (Kind::Message(m), false) => current = m,
            (Kind::Message(m), true) if !is_scalar_like(&m) => {
                return Err(format!(
                    "field {name:?} is a message ({}); a path variable must bind a scalar",
                    m.full_name()
                ));
            }
            (_, false) => return Err(format!("field {name:?} is not a message")),
            _ => {}
        }
        chain.push(field);
    }
    Ok(chain)
}

/// Messages whose JSON form is a string or number, so one path segment or query value can carry
/// them: wrappers, Timestamp, Duration, FieldMask.
pub fn is_scalar_like(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> RouteTable {
        let pool = DescriptorPool::decode(mesh_contracts::FILE_DESCRIPTOR_SET).unwrap();
        RouteTable::build(&pool, |_| true).unwrap()
    }

    fn rpc_of(t: &RouteTable, method: Method, path: &str) -> Option<String> {
        match t.lookup(&method, path) {
            Lookup::Found(r, _) => Some(r.rpc.name().to_string()),
            _ => None,
        }
    }

    #[test]
    fn every_rule_of_the_contracts_builds() {
        let t = table();
        assert!(t.len() >= 70, "{} routes", t.len());
        assert_eq!(
            rpc_of(&t, Method::GET, "/v1/products/p1").as_deref(),
            Some("GetProduct")
        );
        assert_eq!(
            rpc_of(&t, Method::GET, "/v1/products:batchGet").as_deref(),
            Some("BatchGetProducts")
        );
        assert_eq!(
            rpc_of(&t, Method::GET, "/v1/stores").as_deref(),
            Some("ListStores")
        );
        assert_eq!(
            rpc_of(&t, Method::GET, "/v1/stores/s1").as_deref(),
            Some("GetStore")
        );
        assert_eq!(
            rpc_of(&t, Method::GET, "/v1/stores/s1/machines/m1").as_deref(),
            Some("GetMachine")
        );
        assert_eq!(
            rpc_of(&t, Method::POST, "/v1/orders/o1:cancel").as_deref(),
            Some("CancelOrder")
        );
        assert!(matches!(
            t.lookup(&Method::DELETE, "/v1/orders/o1"),
            Lookup::MethodNotAllowed(_)
        ));
        assert!(matches!(t.lookup(&Method::GET, "/nope"), Lookup::NotFound));
    }

    /// What `lookup` answered before the index: the first route of the method (most specific
    /// first) whose template matches, else the other methods with a route that matches.
    fn scan(t: &RouteTable, method: &Method, path: &str) -> Result<String, Vec<Method>> {
        if let Some(m) = t.by_method.iter().find(|m| m.method == *method)
            && let Some(route) = m.routes.iter().find(|r| r.template.matches(path).is_some())
        {
            return Ok(route.label.clone());
        }
        let mut allowed: Vec<Method> = t
            .by_method
            .iter()
            .filter(|m| {
                m.method != *method && m.routes.iter().any(|r| r.template.matches(path).is_some())
            })
            .map(|m| m.method.clone())
            .collect();
        allowed.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        Err(allowed)
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn the_indexed_lookup_answers_as_a_scan_of_every_route(
                segments in proptest::collection::vec(
                    "v1|products|stores|orders|users|machines|x|p%31|v%31|%2F|a:b|", 0..6),
                verb in "(:(cancel|batchGet|restart|x))?",
            ) {
                static TABLE: std::sync::LazyLock<RouteTable> = std::sync::LazyLock::new(table);
                let t = &*TABLE;
                let path = format!("/{}{verb}", segments.join("/"));
                for method in [Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
                    let indexed = match t.lookup(&method, &path) {
                        Lookup::Found(route, bindings) => {
                            prop_assert_eq!(Some(bindings), route.template.matches(&path));
                            Ok(route.label.clone())
                        }
                        Lookup::MethodNotAllowed(allowed) => Err(allowed),
                        Lookup::NotFound => Err(Vec::new()),
                    };
                    prop_assert_eq!(indexed, scan(t, &method, &path), "{} {}", method, path);
                }
            }
        }
    }
}
