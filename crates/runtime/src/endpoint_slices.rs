//! Peer discovery by watching EndpointSlices through the Kubernetes API (`MESH_DISCOVERY=endpoints`):
//! instant updates when pods become ready or go away, instead of waiting for the next DNS
//! re-resolution. The chart grants the ServiceAccount `get/list/watch` on
//! `endpointslices.discovery.k8s.io` in the release namespace when this mode is chosen.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};

use http::Uri;

use crate::balance::{BalanceOptions, Balanced, Source};

/// A Kubernetes API client for discovery (`MESH_DISCOVERY=endpoints`).
#[derive(Clone)]
pub struct KubeClient(pub kube::Client);

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeClient")
    }
}

impl KubeClient {
    /// The in-cluster client (ServiceAccount token and API server from the pod's environment),
    /// or the local kubeconfig outside a cluster.
    pub async fn from_environment() -> Result<Self, kube::Error> {
        kube::Client::try_default().await.map(Self)
    }
}

impl Balanced {
    /// Balances over the ready endpoints of the Kubernetes Service `service` in `namespace`,
    /// watched through the API server with `client`; `port` is used for slices that name none.
    /// Must be called inside a tokio runtime.
    pub fn endpoint_slices(
        origin: Uri,
        client: kube::Client,
        service: &str,
        namespace: &str,
        port: u16,
        options: BalanceOptions,
    ) -> Self {
        let balanced = Self::empty(origin, format!("{service}.{namespace}:{port}"), options);
        let (source, service, namespace) = (
            balanced.source(),
            service.to_string(),
            namespace.to_string(),
        );
        crate::helper_task::spawn("endpoint-slice-watch", move || {
            watch(
                source.clone(),
                client.clone(),
                service.clone(),
                namespace.clone(),
                port,
            )
        });
        balanced
    }
}

/// The label Kubernetes puts on every EndpointSlice of a Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Splits a cluster DNS name `<service>.<namespace>.svc[.<domain>]` into service and namespace.
pub fn service_and_namespace(host: &str) -> Option<(&str, &str)> {
    let mut labels = host.split('.');
    let service = labels.next().filter(|s| !s.is_empty())?;
    let namespace = labels.next().filter(|s| !s.is_empty())?;
    (labels.next() == Some("svc")).then_some((service, namespace))
}

/// The ready addresses of one slice (an endpoint with no `ready` condition counts as ready, as
/// the API defines), with the slice's port when it names exactly one.
pub fn ready_addresses(slice: &EndpointSlice, default_port: u16) -> Vec<SocketAddr> {
    let port = match slice.ports.as_deref() {
        Some([only]) => only
            .port
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(default_port),
        _ => default_port,
    };
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()
}

/// Feeds `source` the union of the ready addresses of `service`'s slices until the pool is
/// dropped. The watcher re-lists after errors with backoff; the last known addresses stay in
/// rotation meanwhile.
pub(crate) async fn watch(
    source: Source,
    client: kube::Client,
    service: String,
    namespace: String,
    port: u16,
) {
    let api: Api<EndpointSlice> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={service}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let mut slices: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    let mut relisting: Option<BTreeMap<String, Vec<SocketAddr>>> = None;
    let name = |s: &EndpointSlice| s.metadata.name.clone().unwrap_or_default();
    while source.alive() {
        let Some(event) = events.next().await else {
            return;
        };
        match event {
            Ok(Event::Init) => relisting = Some(BTreeMap::new()),
            Ok(Event::InitApply(slice)) => {
                if let Some(buffer) = relisting.as_mut() {
                    buffer.insert(name(&slice), ready_addresses(&slice, port));
                }
            }
            Ok(Event::InitDone) => {
                if let Some(buffer) = relisting.take() {
                    slices = buffer;
                }
                source.set(slices.values().flatten().copied().collect());
            }
            Ok(Event::Apply(slice)) => {
                slices.insert(name(&slice), ready_addresses(&slice, port));
                source.set(slices.values().flatten().copied().collect());
            }
            Ok(Event::Delete(slice)) => {
                slices.remove(&name(&slice));
                source.set(slices.values().flatten().copied().collect());
            }
            Err(e) => source.failed(&format!(
                "watching EndpointSlices of {service}.{namespace}: {e}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_names_split_into_service_and_namespace() {
        assert_eq!(
            service_and_namespace("inventory.mesh.svc.cluster.local"),
            Some(("inventory", "mesh"))
        );
        assert_eq!(
            service_and_namespace("inventory.mesh.svc"),
            Some(("inventory", "mesh"))
        );
        assert_eq!(service_and_namespace("inventory"), None);
        assert_eq!(service_and_namespace("example.com"), None);
    }
}
