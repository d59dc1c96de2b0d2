//! Reading the `google.api.http` option of a method into its bindings (the rule itself and its
//! `additional_bindings`), with the rule-level checks that need no message types.

use http::Method;
use mesh_contracts::google::api::HttpRule;
use mesh_contracts::google::api::http_rule::Pattern;
use prost::Message as _;
use prost_reflect::{ExtensionDescriptor, MethodDescriptor};

/// The full name of the extension on `google.protobuf.MethodOptions`.
pub const HTTP_EXTENSION: &str = "google.api.http";

/// One HTTP binding of an RPC: the primary rule or one of its additional bindings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpBinding {
    /// The HTTP method (`custom` kinds included).
    pub method: Method,
    /// The path template, as written.
    pub path: String,
    /// `""` (no body), `"*"`, or a top-level request field.
    pub body: String,
    /// `""` (the whole response) or a top-level response field.
    pub response_body: String,
    /// Which rule this is, for messages: `rule` or `additional_bindings[0]`, ...
    pub label: String,
}

/// A rule that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RPC {rpc}, {rule}: {reason}")]
pub struct RuleError {
    /// The RPC's full name.
    pub rpc: String,
    /// Which rule (`rule`, `additional_bindings[1]`) and its pattern.
    pub rule: String,
    /// What is wrong.
    pub reason: String,
}

/// The bindings of `method`, empty when it has no `google.api.http` option.
pub fn bindings(
    method: &MethodDescriptor,
    extension: Option<&ExtensionDescriptor>,
) -> Result<Vec<HttpBinding>, RuleError> {
    let Some(extension) = extension else {
        return Ok(Vec::new());
    };
    let options = method.options();
    if !options.has_extension(extension) {
        return Ok(Vec::new());
    }
    let value = options.get_extension(extension);
    let rpc = method.full_name().to_string();
    let Some(message) = value.as_message() else {
        return Err(RuleError {
            rpc,
            rule: "rule".into(),
            reason: "the google.api.http option is not a message".into(),
        });
    };
    let rule = HttpRule::decode(message.encode_to_vec().as_slice()).map_err(|e| RuleError {
        rpc: rpc.clone(),
        rule: "rule".into(),
        reason: format!("the google.api.http option does not decode as HttpRule: {e}"),
    })?;
    let mut out = vec![one(&rpc, &rule, "rule".into())?];
    for (i, extra) in rule.additional_bindings.iter().enumerate() {
        let label = format!("additional_bindings[{i}]");
        if !extra.additional_bindings.is_empty() {
            return Err(RuleError {
                rpc,
                rule: label,
                reason: "an additional binding must not have additional_bindings of its own".into(),
            });
        }
        out.push(one(&rpc, extra, label)?);
    }
    Ok(out)
}

fn one(rpc: &str, rule: &HttpRule, label: String) -> Result<HttpBinding, RuleError> {
    let err = |rule: String, reason: String| RuleError {
        rpc: rpc.to_string(),
        rule,
        reason,
    };
    let (method, path) = match &rule.pattern {
        Some(Pattern::Get(p)) => (Method::GET, p.clone()),
        Some(Pattern::Put(p)) => (Method::PUT, p.clone()),
        Some(Pattern::Post(p)) => (Method::POST, p.clone()),
        Some(Pattern::Delete(p)) => (Method::DELETE, p.clone()),
        Some(Pattern::Patch(p)) => (Method::PATCH, p.clone()),
        Some(Pattern::Custom(c)) => {
            let m = Method::from_bytes(c.kind.as_bytes()).map_err(|_| {
                err(
                    label.clone(),
                    format!("custom kind {:?} is not an HTTP method token", c.kind),
                )
            })?;
            (m, c.path.clone())
        }
        None => {
            return Err(err(
                label,
                "no pattern: set one of get, put, post, delete, patch or custom".into(),
            ));
        }
    };
    let label = format!("{label} ({method} {path})");
    if method == Method::GET && !rule.body.is_empty() {
        return Err(err(label, "a GET rule cannot have a body".into()));
    }
    Ok(HttpBinding {
        method,
        path,
        body: rule.body.clone(),
        response_body: rule.response_body.clone(),
        label,
    })
}
