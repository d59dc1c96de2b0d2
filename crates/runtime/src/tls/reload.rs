//! [`MeshTls`]: the process's current TLS configurations, and the task that reads the files
//! again every `MESH_TLS_RELOAD`. Kubernetes replaces a mounted Secret's files (through a symlink
//! swap) when cert-manager renews a certificate; the files' bytes are compared, not their times,
//! so every way of replacing them is seen. A set that does not load (say the certificate is new
//! and the key not yet) is logged and the last good one stays, and the next read tries again.
//! A new set applies to connections opened after it; open connections keep theirs, so no call in
//! flight is dropped.

use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;

use super::material::{Material, MaterialError, fingerprint, read_files};
use super::settings::TlsSettings;

/// The current TLS material of the process. Cheap to clone; clones share it.
#[derive(Debug, Clone)]
pub struct MeshTls {
    settings: Arc<TlsSettings>,
    current: Arc<RwLock<Material>>,
}

impl MeshTls {
    /// Loads the files `settings` names; the error names the file at fault. Nothing re-reads
    /// them until [`watch`](Self::watch) runs.
    pub fn load(settings: TlsSettings) -> Result<Self, MaterialError> {
        let material = Material::load(&settings)?;
        Ok(Self {
            settings: Arc::new(settings),
            current: Arc::new(RwLock::new(material)),
        })
    }

    /// The settings the material comes from.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// The material new connections use now.
    pub fn current(&self) -> Material {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the files once: `Ok(true)` when they changed and the new set is in use,
    /// `Ok(false)` when they are unchanged, the error when the changed set does not load (the
    /// last good one stays).
    pub fn reload(&self) -> Result<bool, MaterialError> {
        let files = read_files(&self.settings)?;
        if fingerprint(&files) == self.current().fingerprint {
            return Ok(false);
        }
        let material = Material::from_pem(&self.settings, &files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = material;
        Ok(true)
    }

    /// Re-reads the files every `MESH_TLS_RELOAD` until `stop` is cancelled, logging each
    /// change and each failure (a failure once until it changes).
    pub async fn watch(self, stop: CancellationToken) {
        let mut last_error: Option<String> = None;
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.settings.reload) => {}
            }
            match self.reload() {
                Ok(true) => {
                    last_error = None;
                    tracing::info!(cert = %self.settings.cert.display(), "TLS files changed; new connections use the new certificate");
                }
                Ok(false) => last_error = None,
                Err(e) => {
                    let text = e.to_string();
                    if last_error.as_deref() != Some(&text) {
                        tracing::warn!(error = %text, "TLS files do not load; keeping the last good certificate");
                        last_error = Some(text);
                    }
                }
            }
        }
    }
}
