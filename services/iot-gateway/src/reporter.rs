//! Status reports to shop (`shop.v1.ShopService/ReportMachineStatus`). Connection tasks only
//! mark a device dirty (a set insert, never a call); one reporter task drains the set, reads
//! each device's current status from the [`Registry`] and reports it, a few calls at a time. A
//! device marked many times before the drain is reported once, with its latest status, so a
//! burst of frames (or of thousands of reconnects) never turns into a burst of calls per frame.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use mesh_contracts::shop::v1::shop_service_client::ShopServiceClient;
use mesh_runtime::auth::ServiceTokenChannel;
use mesh_runtime::client::MeshChannel;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::registry::Registry;

/// Concurrent report calls.
const CONCURRENCY: usize = 8;

/// The set of devices whose status shop has not seen yet.
#[derive(Debug, Default)]
pub struct Dirty {
    set: Mutex<HashSet<Arc<str>>>,
    notify: Notify,
}

impl Dirty {
    /// Marks `id` to be reported.
    pub fn mark(&self, id: &Arc<str>) {
        let inserted = self
            .set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.clone());
        if inserted {
            self.notify.notify_one();
        }
    }

    fn take(&self) -> Vec<Arc<str>> {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect()
    }
}

/// The shop client the reporter calls.
pub type ShopClient = ShopServiceClient<ServiceTokenChannel<MeshChannel>>;

/// Runs the reporter until `shutdown`: waits for marks, waits `coalesce` more so a burst is
/// reported once, then reports every marked device. Failed reports are marked again and retried
/// after a backoff; a machine shop does not know (`NOT_FOUND`) is logged and not retried.
pub async fn run(
    dirty: Arc<Dirty>,
    registry: Arc<Registry>,
    shop: ShopClient,
    coalesce: Duration,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        tokio::select! {
            () = dirty.notify.notified() => {}
            () = shutdown.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(coalesce) => {}
            () = shutdown.cancelled() => return,
        }
        let ids = dirty.take();
        let failed = futures::stream::iter(ids)
            .map(|id| {
                let mut shop = shop.clone();
                let registry = registry.clone();
                async move {
                    let device = registry.get(&id)?;
                    if registry.unknown_to_shop(&device) {
                        return None;
                    }
                    let report = registry.report(&device);
                    match shop.report_machine_status(report).await {
                        Ok(_) => None,
                        Err(s) if s.code() == tonic::Code::NotFound => {
                            registry.set_unknown_to_shop(&device);
                            tracing::debug!(machine = %id, "shop does not know this machine; status not recorded");
                            None
                        }
                        Err(s) => Some((id, s)),
                    }
                }
            })
            .buffer_unordered(CONCURRENCY)
            .filter_map(|r| async move { r })
            .collect::<Vec<_>>()
            .await;
        if let Some((_, status)) = failed.first() {
            tracing::warn!(failed = failed.len(), error = %status, "reporting machine status to shop failed; retrying");
            for (id, _) in &failed {
                dirty.mark(id);
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        } else {
            backoff = Duration::from_millis(200);
        }
    }
}
