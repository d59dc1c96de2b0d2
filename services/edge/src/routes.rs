//! The route table: every `google.api.http` binding of every served RPC, checked against the
//! message types at start, and looked up per request.
//!
//! Lookup tries the routes of the request's method from the most specific template to the least
//! (a literal segment beats `*`, which beats `**`; a verb beats none), so `GET /v1/stores/x` and
//! `GET /v1/{name=**}` can coexist. Two bindings with the same method, segments and verb are a
//! conflict and fail the start, naming both RPCs.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use http::Method;
use prost_reflect::{
    Cardinality, DescriptorPool, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
};

use crate::http_rule::{self, HTTP_EXTENSION, HttpBinding, RuleError};
use crate::path_template::{Binding, PathTemplate};

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

/// Every route, by method.
#[derive(Debug, Default)]
pub struct RouteTable {
    by_method: HashMap<Method, Vec<Arc<Route>>>,
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
                            by_method
                                .entry(route.method.clone())
                                .or_default()
                                .push(Arc::new(route));
                        }
                        Err(e) => problems.push(e),
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(RoutesError(problems));
        }
        for routes in by_method.values_mut() {
            routes.sort_by_key(|r| r.template.specificity());
        }
        Ok(Self { by_method })
    }

    /// Every route, in no particular order.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.by_method.values().flatten()
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.by_method.values().map(Vec::len).sum()
    }

    /// Whether there are no routes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Finds the route for `method` and the raw request `path`.
    pub fn lookup(&self, method: &Method, path: &str) -> Lookup<'_> {
        if let Some(routes) = self.by_method.get(method) {
            for route in routes {
                if let Some(bindings) = route.template.matches(path) {
                    return Lookup::Found(route, bindings);
                }
            }
        }
        let allowed: BTreeSet<String> = self
            .by_method
            .iter()
            .filter(|(m, routes)| {
                *m != method && routes.iter().any(|r| r.template.matches(path).is_some())
            })
            .map(|(m, _)| m.to_string())
            .collect();
        if allowed.is_empty() {
            Lookup::NotFound
        } else {
            Lookup::MethodNotAllowed(
                allowed
                    .into_iter()
                    .filter_map(|m| Method::from_bytes(m.as_bytes()).ok())
                    .collect(),
            )
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
}
