//! The bus on the admin port: what `mesh events --admin URL` asks, so that the in-process bus of
//! `mesh serve all` (which nothing outside the process can reach) is inspected and its dead
//! letters replayed like Redis's. The documents are [`crate::bus::inspect_json`]'s, the same
//! `mesh events --redis-url` prints.
//!
//! | route | answer |
//! |---|---|
//! | `GET /bus/streams` | every stream, its length, each group's lag |
//! | `GET /bus/groups/{group}/dead` | the group's dead letters, envelopes decoded |
//! | `POST /bus/groups/{group}/replay` with `{"id": D}`, `{"type": T}` or `{"all": true}` | `{"group", "replayed": [ids]}`; 404 for an unknown `id` |
//! | `GET /bus/streams/{domain}/entries?from=start\|new\|ID&count=N&wait_ms=MS` | `{"entries": [...]}`, waiting up to `wait_ms` (at most 30 s) for the first |
//!
//! Dead letters carry payloads with personal data, and replaying changes what services do, so
//! every route needs a bearer token of a caller who may read the whole audit trail (auditor,
//! admin or service: [`crate::audit_access::AuditScope`]): 401 without a valid one, 403 for
//! other roles.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit_access::AuditScope;
use crate::auth::Verifier;
use crate::bus::inspect::{BusInspect, ReadFrom};
use crate::bus::inspect_json::{self, ReplayError, ReplaySelection};

/// The longest a `GET .../entries` waits for a first entry.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone)]
struct BusState {
    bus: Arc<dyn BusInspect>,
    verifier: Arc<Verifier>,
}

/// The `/bus` routes over `bus`, each call's token checked by `verifier`.
pub fn router(bus: Arc<dyn BusInspect>, verifier: Verifier) -> Router {
    let state = BusState {
        bus,
        verifier: Arc::new(verifier),
    };
    Router::new()
        .route("/bus/streams", get(streams))
        .route("/bus/groups/{group}/dead", get(dead))
        .route("/bus/groups/{group}/replay", post(replay))
        .route("/bus/streams/{domain}/entries", get(entries))
        .route_layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state)
}

fn error(code: StatusCode, message: impl std::fmt::Display) -> Response {
    (code, Json(json!({ "error": message.to_string() }))).into_response()
}

fn bus_error(e: impl std::fmt::Display) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, format!("the bus: {e}"))
}

/// Lets through only callers who may read the whole audit trail.
async fn guard(State(state): State<BusState>, request: Request, next: Next) -> Response {
    let Some(token) = crate::auth::layer::bearer(request.headers()) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "the bus routes need an access token (authorization: Bearer <jwt>) of an auditor, admin or service",
        );
    };
    let identity = match state.verifier.verify(token).await {
        Ok(identity) => identity,
        Err(e) => return error(StatusCode::UNAUTHORIZED, e),
    };
    match AuditScope::of(Some(&identity)) {
        Ok(AuditScope::Everything) => next.run(request).await,
        _ => error(
            StatusCode::FORBIDDEN,
            "the bus routes are for the auditor, admin and service roles",
        ),
    }
}

async fn streams(State(state): State<BusState>) -> Response {
    match state.bus.streams().await {
        Ok(streams) => Json(inspect_json::streams_json(&streams)).into_response(),
        Err(e) => bus_error(e),
    }
}

async fn dead(State(state): State<BusState>, Path(group): Path<String>) -> Response {
    match inspect_json::dead_letters_json(state.bus.as_ref(), &group).await {
        Ok(letters) => Json(letters).into_response(),
        Err(e) => bus_error(e),
    }
}

/// The body of a replay: exactly one of its fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    id: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    #[serde(default)]
    all: bool,
}

async fn replay(
    State(state): State<BusState>,
    Path(group): Path<String>,
    body: Result<Json<ReplayBody>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(body) => body,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("replay body: {e}")),
    };
    let selection = match (body.id, body.event_type, body.all) {
        (Some(id), None, false) => ReplaySelection::One(id),
        (None, Some(t), false) => ReplaySelection::OfType(t),
        (None, None, true) => ReplaySelection::All,
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                r#"replay body: say which dead letters with exactly one of {"id": ...}, {"type": ...} or {"all": true}"#,
            );
        }
    };
    match inspect_json::replay_json(state.bus.as_ref(), &group, &selection).await {
        Ok(answer) => Json(answer).into_response(),
        Err(e @ ReplayError::NoSuchDeadLetter { .. }) => error(StatusCode::NOT_FOUND, e),
        Err(ReplayError::Bus(e)) => bus_error(e),
    }
}

/// The query of `GET .../entries`.
#[derive(Debug, Deserialize)]
struct EntriesQuery {
    #[serde(default)]
    from: String,
    count: Option<usize>,
    #[serde(default)]
    wait_ms: u64,
}

async fn entries(
    State(state): State<BusState>,
    Path(domain): Path<String>,
    Query(query): Query<EntriesQuery>,
) -> Response {
    let from = ReadFrom::parse(&query.from);
    let count = query.count.unwrap_or(100).clamp(1, 1000);
    let wait = Duration::from_millis(query.wait_ms).min(MAX_WAIT);
    match state.bus.read_stream(&domain, &from, count, wait).await {
        Ok(found) => {
            let entries: Vec<Value> = found
                .iter()
                .map(|e| inspect_json::entry_json(&domain, e))
                .collect();
            Json(json!({ "entries": entries })).into_response()
        }
        Err(e) => bus_error(e),
    }
}
