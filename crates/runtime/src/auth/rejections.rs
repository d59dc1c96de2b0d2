//! [`AuthRejections`]: the `mesh_auth_rejected_total{service, reason}` counter of calls turned
//! away for their token, so a flood of forged, expired or foreign tokens shows on a dashboard.
//!
//! Counted where a call is refused (the guard of every service, the edge), not where a token
//! is merely checked: a bad token on a public call is ignored, not refused, and is not counted.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::auth::verify::AuthError;
use crate::metrics::Metrics;

/// The metric's name (`_total` is added by the exposition format).
pub const METRIC: &str = "mesh_auth_rejected";

/// Labels of one series: who refused, and why ([`AuthError::reason`]).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectionLabels {
    /// The module that refused the call (`edge`, `order`, ...).
    pub service: String,
    /// The refusal's reason, e.g. `expired`, `algorithm`, `unknown_key`.
    pub reason: String,
}

/// The family shared by every module of a process (registered once per registry).
pub(crate) type RejectionFamily = Family<RejectionLabels, Counter>;

/// One module's handle on the counter. Cheap to clone.
#[derive(Clone, Debug)]
pub struct AuthRejections {
    family: RejectionFamily,
    service: Arc<str>,
}

impl AuthRejections {
    /// The counter of `service` in the process's `metrics`, registered on first use.
    pub fn of(metrics: &Metrics, service: &str) -> Self {
        let family = metrics.once(|metrics| {
            let family = RejectionFamily::default();
            metrics.register(
                METRIC,
                "Calls refused for their access token, by refusing module and reason",
                family.clone(),
            );
            family
        });
        Self {
            family,
            service: service.into(),
        }
    }

    /// Counts one refusal for `error`.
    pub fn record(&self, error: &AuthError) {
        self.family
            .get_or_create(&RejectionLabels {
                service: self.service.to_string(),
                reason: error.reason().to_string(),
            })
            .inc();
    }
}
