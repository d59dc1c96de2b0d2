//! The three TLS files read and turned into rustls configurations: the server side (present the
//! workload certificate, require a client certificate from the CA) and the client side (present
//! the workload certificate, accept a server certificate from the CA). The *ring* provider.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};

use super::settings::{TLS_CA, TLS_CERT, TLS_KEY, TlsSettings};
use crate::settings::Problem;

/// ALPN of a gRPC port (HTTP/2 only).
const ALPN_H2: &[u8] = b"h2";
/// ALPN a port that also answers HTTP/1.1 adds.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why the TLS files could not be used; names the variable of the file at fault.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{variable}={path:?}: {reason}")]
pub struct MaterialError {
    /// The variable naming the file (`MESH_TLS_CERT`, `MESH_TLS_KEY`, `MESH_TLS_CA`).
    pub variable: &'static str,
    /// The file.
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl MaterialError {
    /// The error as a settings problem.
    pub fn problem(&self) -> Problem {
        Problem {
            setting: self.variable.to_string(),
            value: self.path.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// One loaded set of TLS files and the configurations built from it.
#[derive(Debug, Clone)]
pub struct Material {
    /// SHA-256 over the three files' bytes: a change of any of them changes it.
    pub(crate) fingerprint: [u8; 32],
    server_h2: Arc<ServerConfig>,
    server_any: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    leaf: CertificateDer<'static>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The bytes of the three files, in the order cert, key, CA.
pub(crate) fn read_files(settings: &TlsSettings) -> Result<[Vec<u8>; 3], MaterialError> {
    let read = |variable: &'static str, path: &Path| {
        std::fs::read(path).map_err(|e| MaterialError {
            variable,
            path: path.display().to_string(),
            reason: format!("reading it: {e}"),
        })
    };
    Ok([
        read(TLS_CERT.name, &settings.cert)?,
        read(TLS_KEY.name, &settings.key)?,
        read(TLS_CA.name, &settings.ca)?,
    ])
}

/// The fingerprint of the three files' bytes.
pub(crate) fn fingerprint(files: &[Vec<u8>; 3]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for f in files {
        hash.update((f.len() as u64).to_be_bytes());
        hash.update(f);
    }
    hash.finalize().into()
}

impl Material {
    /// Reads and checks the files `settings` names.
    pub fn load(settings: &TlsSettings) -> Result<Self, MaterialError> {
        let files = read_files(settings)?;
        Self::from_pem(settings, &files)
    }

    /// Builds the configurations from the files' bytes (cert, key, CA); `settings` names them
    /// in errors.
    pub(crate) fn from_pem(
        settings: &TlsSettings,
        files: &[Vec<u8>; 3],
    ) -> Result<Self, MaterialError> {
        let [cert_pem, key_pem, ca_pem] = files;
        let err = |variable: &'static str, path: &Path, reason: String| MaterialError {
            variable,
            path: path.display().to_string(),
            reason,
        };
        let cert_err = |reason: String| err(TLS_CERT.name, &settings.cert, reason);
        let ca_err = |reason: String| err(TLS_CA.name, &settings.ca, reason);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| cert_err(format!("not a PEM certificate chain: {e}")))?;
        let Some(leaf) = certs.first().cloned() else {
            return Err(cert_err("holds no CERTIFICATE block".into()));
        };
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            err(
                TLS_KEY.name,
                &settings.key,
                format!("not a PEM private key (PKCS#8, SEC1 or PKCS#1): {e}"),
            )
        })?;
        let mut roots = RootCertStore::empty();
        let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| ca_err(format!("not PEM certificates: {e}")))?;
        if cas.is_empty() {
            return Err(ca_err("holds no CERTIFICATE block".into()));
        }
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| ca_err(format!("not a usable CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| ca_err(format!("cannot verify clients with it: {e}")))?;
        let key_err = |e: rustls::Error| {
            err(
                TLS_KEY.name,
                &settings.key,
                format!("unusable with the certificate of MESH_TLS_CERT: {e}"),
            )
        };
        let server = |alpn: &[&[u8]]| {
            let mut config = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(key_err)?
                .with_client_cert_verifier(verifier.clone())
                .with_single_cert(certs.clone(), key.clone_key())
                .map_err(key_err)?;
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Ok::<_, MaterialError>(Arc::new(config))
        };
        let server_h2 = server(&[ALPN_H2])?;
        let server_any = server(&[ALPN_H2, ALPN_HTTP1])?;
        let mut client = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(key_err)?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(key_err)?;
        client.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Self {
            fingerprint: fingerprint(files),
            server_h2,
            server_any,
            client: Arc::new(client),
            leaf,
        })
    }

    /// The server configuration: HTTP/2 only, or (`http1`) HTTP/1.1 as well.
    pub fn server_config(&self, http1: bool) -> Arc<ServerConfig> {
        if http1 {
            self.server_any.clone()
        } else {
            self.server_h2.clone()
        }
    }

    /// The client configuration.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client.clone()
    }

    /// The workload certificate presented (DER).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.leaf
    }
}
