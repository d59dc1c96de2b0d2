//! The JWK Set as a plain HTTP document, `GET /.well-known/jwks.json`, for verifiers that do
//! not speak gRPC (an API gateway, Envoy's `jwt_authn`). Served on the process's admin port
//! (`ServiceRoutes::admin_routes`), while the gRPC `GetJwks` is on the auth port.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::json;

use crate::keys::KeyRing;

/// The path of the document.
pub const PATH: &str = "/.well-known/jwks.json";

/// The router serving [`PATH`].
pub fn router(keys: Arc<KeyRing>) -> Router {
    Router::new().route(PATH, get(jwks)).with_state(keys)
}

async fn jwks(State(keys): State<Arc<KeyRing>>) -> impl IntoResponse {
    match keys.jwks().await {
        Ok(keys) => {
            let keys: Vec<_> = keys
                .iter()
                .map(|k| json!({"kty": k.kty, "kid": k.kid, "alg": k.alg, "use": k.r#use, "crv": k.crv, "x": k.x}))
                .collect();
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/jwk-set+json"),
                    (header::CACHE_CONTROL, "public, max-age=60"),
                ],
                json!({ "keys": keys }).to_string(),
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "serving the JWKS failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                json!({"error": "the signing keys are unavailable, retry later"}).to_string(),
            )
        }
    }
}
