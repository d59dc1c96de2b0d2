//! A test CA generated per test (rcgen, ring): a server certificate for `127.0.0.1` and
//! `localhost` signed by it, as a rustls server configuration, and the CA as a PEM file for the
//! sender's CA-file setting.

use std::io::Write as _;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempPath;

/// A CA and one server certificate it signed.
pub(crate) struct Pki {
    /// The CA certificate, PEM.
    pub ca_pem: String,
    /// A TLS server configuration presenting the server certificate.
    pub server: Arc<rustls::ServerConfig>,
}

impl Pki {
    /// A new CA named `name` and a server certificate for `127.0.0.1` and `localhost`.
    pub(crate) fn new(name: &str) -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.distinguished_name.push(DnType::CommonName, name);
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
        Self {
            ca_pem: ca.pem(),
            server: Arc::new(server),
        }
    }

    /// The CA written to a temporary file (removed when the path is dropped).
    pub(crate) fn ca_file(&self) -> TempPath {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(self.ca_pem.as_bytes()).unwrap();
        file.into_temp_path()
    }
}
