//! The audit trail: `audit.v1.AuditService` on every service's port, listing the events the
//! service emitted for one aggregate from its outbox table (which keeps sent rows; see
//! `--outbox-retention`). Guarded ([`guarded`]): any valid token passes the guard, then
//! [`AuditScope`] decides (auditors, admins and services everything, customers their own
//! aggregates).

use mesh_contracts::audit::v1::audit_service_server::{AuditService, AuditServiceServer};
use mesh_contracts::audit::v1::{ListEventsRequest, ListEventsResponse};
use mesh_contracts::events::v1::Envelope;
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::audit_access::AuditScope;
use crate::auth::{
    AuthRejections, Guarded, Identity, JwksClient, Policy, Verifier, VerifierSettings,
};
use crate::domain::{page_token, time};
use crate::module::{BuildError, ServiceContext};
use crate::outbox::with_sequence;
use crate::storage::{Database, DatabaseError};

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1000;
/// How many of an aggregate's first events a customer's ownership check reads (the event naming
/// the customer, e.g. `order.created`, comes first).
const OWNERSHIP_SCAN: i64 = 1000;

/// The audit service's access table: any valid token passes; [`AuditScope`] then decides.
pub fn policy() -> Policy {
    Policy::new("audit.v1.AuditService").authenticated(&["ListEvents"])
}

/// The audit service of `ctx`'s service over `db`, behind [`policy`], verifying tokens with
/// `verifier`, or else with the auth service's JWKS (refusals counted under the service's name).
pub fn guarded(
    ctx: &ServiceContext,
    db: Database,
    verifier: Option<Verifier>,
) -> Result<Guarded<AuditServiceServer<AuditApi>>, BuildError> {
    let verifier = match verifier {
        Some(verifier) => verifier,
        None => {
            let keys = JwksClient::new(ctx.auth_channel()?);
            Verifier::new(std::sync::Arc::new(keys), VerifierSettings::from_env())
        }
    };
    Ok(crate::auth::guard_with(
        verifier,
        policy(),
        AuditApi::new(db).server(ctx.max_message_bytes()),
    )?
    .counted(AuthRejections::of(ctx.metrics(), ctx.name())))
}

/// `audit.v1.AuditService` over one service's outbox.
#[derive(Debug, Clone)]
pub struct AuditApi {
    db: Database,
}

impl AuditApi {
    /// The audit service of the service owning `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// The generated tonic server, ready for [`crate::ServiceRoutes::add`].
    pub fn server(self, max_message_bytes: usize) -> AuditServiceServer<Self> {
        AuditServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    /// Lists the events of `request` for a caller of `scope`: a customer's request for an
    /// aggregate that is not theirs is `PERMISSION_DENIED`.
    pub async fn list_in_scope(
        &self,
        scope: &AuditScope,
        request: &ListEventsRequest,
    ) -> Result<ListEventsResponse, Status> {
        if let AuditScope::OwnAggregates { .. } = scope {
            let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                "SELECT sequence, envelope FROM mesh_outbox WHERE subject = $1 \
                 ORDER BY sequence LIMIT $2",
            )
            .bind(&request.subject)
            .bind(OWNERSHIP_SCAN)
            .fetch_all(self.db.pool())
            .await
            .map_err(DatabaseError::from)?;
            let events: Vec<Envelope> = rows
                .into_iter()
                .filter_map(|(sequence, bytes)| {
                    Envelope::decode(with_sequence(bytes, sequence).as_slice()).ok()
                })
                .collect();
            scope.check(&request.subject, &events)?;
        }
        self.list(request).await
    }

    /// Lists the events of `request` for any caller (the RPC's logic, callable without gRPC;
    /// the RPC first checks the caller's [`AuditScope`]).
    pub async fn list(&self, request: &ListEventsRequest) -> Result<ListEventsResponse, Status> {
        if request.subject.trim().is_empty() {
            return Err(Status::invalid_argument(
                "subject is required: the aggregate id, e.g. an order id",
            ));
        }
        let page = match request.page_size {
            0 => DEFAULT_PAGE,
            n if n < 0 => {
                return Err(Status::invalid_argument("page_size must not be negative"));
            }
            n => i64::from(n).min(MAX_PAGE),
        };
        let since_us = time::from_optional_timestamp("start_time", request.start_time.as_ref())?
            .unwrap_or(i64::MIN);
        let listing = ("audit", &request.subject, since_us, &request.types);
        let after: i64 = page_token::decode(&request.page_token, &listing)?.unwrap_or(0);
        let rows: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(
            "SELECT sequence, event_type, envelope FROM mesh_outbox \
             WHERE subject = $1 AND sequence > $2 AND occurred_at_us >= $3 \
             ORDER BY sequence LIMIT $4",
        )
        .bind(&request.subject)
        .bind(after)
        .bind(since_us)
        .bind(page + 1)
        .fetch_all(self.db.pool())
        .await
        .map_err(DatabaseError::from)?;
        let mut events = Vec::new();
        let mut last = after;
        let mut more = false;
        for (i, (sequence, event_type, bytes)) in rows.into_iter().enumerate() {
            if i64::try_from(i).unwrap_or(i64::MAX) >= page {
                more = true;
                break;
            }
            last = sequence;
            if !request.types.is_empty() && !request.types.contains(&event_type) {
                continue;
            }
            let envelope =
                Envelope::decode(with_sequence(bytes, sequence).as_slice()).map_err(|e| {
                    Status::data_loss(format!("outbox row {sequence} does not decode: {e}"))
                })?;
            events.push(envelope);
        }
        Ok(ListEventsResponse {
            events,
            next_page_token: if more {
                page_token::encode(&last, &listing)
            } else {
                String::new()
            },
        })
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<ListEventsResponse>, Status> {
        let scope = AuditScope::of(Identity::of(&request))?;
        self.list_in_scope(&scope, request.get_ref())
            .await
            .map(Response::new)
    }
}
