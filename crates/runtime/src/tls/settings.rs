//! The TLS settings of a process (`MESH_TLS_*`), declared once like every other setting, and
//! their check: all three files or none, each readable and well-formed, the key matching the
//! certificate.

use std::path::PathBuf;
use std::time::Duration;

use crate::settings::{Problem, Setting, Settings};

/// The workload certificate chain (PEM).
pub const TLS_CERT: Setting = Setting::text(
    "MESH_TLS_CERT",
    "",
    "A PEM file with the workload certificate (chain) every gRPC port presents and every call to a peer presents as client certificate; with MESH_TLS_KEY and MESH_TLS_CA it turns mTLS on (all three or none). Unset: plaintext gRPC. Re-read every MESH_TLS_RELOAD; see docs/security.md.",
);

/// The workload private key (PEM).
pub const TLS_KEY: Setting = Setting::text(
    "MESH_TLS_KEY",
    "",
    "A PEM file with the private key of MESH_TLS_CERT (PKCS#8, SEC1 or PKCS#1).",
);

/// The CA bundle peers' certificates must chain to (PEM).
pub const TLS_CA: Setting = Setting::text(
    "MESH_TLS_CA",
    "",
    "A PEM file with the CA certificate(s) a peer's certificate must be issued by, client and server alike.",
);

/// The namespace in the identities peers are checked against.
pub const TLS_NAMESPACE: Setting = Setting::text(
    "MESH_TLS_NAMESPACE",
    "default",
    "The namespace of the identity a peer's certificate must name: `<service>.<namespace>.svc` (the chart sets the pod's namespace).",
);

/// How often the files are read again.
pub const TLS_RELOAD: Setting = Setting::duration(
    "MESH_TLS_RELOAD",
    "5s",
    "How often the three TLS files are read again; a changed set that loads applies to new connections (open ones keep theirs), one that does not is logged and the last good one kept.",
);

/// Every TLS setting, for the settings listing.
pub const SETTINGS: [Setting; 5] = [TLS_CERT, TLS_KEY, TLS_CA, TLS_NAMESPACE, TLS_RELOAD];

/// The identity (DNS SAN) the certificate of `service` must carry in `namespace`.
pub fn service_identity(service: &str, namespace: &str) -> String {
    format!("{service}.{namespace}.svc")
}

/// Where the TLS files are, and how peers are named and the files watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `MESH_TLS_CERT`.
    pub cert: PathBuf,
    /// `MESH_TLS_KEY`.
    pub key: PathBuf,
    /// `MESH_TLS_CA`.
    pub ca: PathBuf,
    /// `MESH_TLS_NAMESPACE`.
    pub namespace: String,
    /// `MESH_TLS_RELOAD`.
    pub reload: Duration,
}

impl TlsSettings {
    /// The settings read through `env`: `Ok(None)` when mTLS is off (none of the three files
    /// set). Every problem is returned together; the files are read and checked too (the
    /// refusal names the variable of the file at fault).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, Vec<Problem>> {
        let mut settings = Settings::new(&env);
        let reload = settings.duration(&TLS_RELOAD);
        let namespace = settings.text(&TLS_NAMESPACE).unwrap_or_default();
        if !is_dns_label(&namespace) {
            settings.refuse(
                &TLS_NAMESPACE,
                &namespace,
                "expected a Kubernetes namespace name (lower-case letters, digits and '-', at most 63)",
            );
        }
        let files = [&TLS_CERT, &TLS_KEY, &TLS_CA].map(|s| settings.raw(s));
        let set = files.iter().filter(|f| f.is_some()).count();
        if set > 0 && set < 3 {
            let missing: Vec<&str> = [&TLS_CERT, &TLS_KEY, &TLS_CA]
                .iter()
                .zip(&files)
                .filter(|(_, f)| f.is_none())
                .map(|(s, _)| s.name)
                .collect();
            for (s, f) in [&TLS_CERT, &TLS_KEY, &TLS_CA].iter().zip(&files) {
                if let Some(f) = f {
                    settings.refuse(
                        s,
                        f,
                        format!(
                            "mTLS needs MESH_TLS_CERT, MESH_TLS_KEY and MESH_TLS_CA together; {} unset",
                            missing.join(" and ")
                        ),
                    );
                }
            }
        }
        let mut problems: Vec<Problem> = match settings.finish(()) {
            Ok(()) => Vec::new(),
            Err(errors) => errors.0.into_iter().map(Problem::from).collect(),
        };
        let [Some(cert), Some(key), Some(ca)] = files else {
            return if problems.is_empty() {
                Ok(None)
            } else {
                Err(problems)
            };
        };
        let tls = Self {
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
            namespace,
            reload,
        };
        if let Err(e) = super::Material::load(&tls) {
            problems.push(e.problem());
        }
        if problems.is_empty() {
            Ok(Some(tls))
        } else {
            Err(problems)
        }
    }

    /// The identity `service`'s certificate must carry under these settings.
    pub fn identity(&self, service: &str) -> String {
        service_identity(service, &self.namespace)
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::lookup_in;

    #[test]
    fn off_when_no_file_is_set() {
        assert_eq!(TlsSettings::from_env(lookup_in(&[])), Ok(None));
    }

    #[test]
    fn one_file_alone_is_refused_naming_the_missing_ones() {
        let problems =
            TlsSettings::from_env(lookup_in(&[("MESH_TLS_CERT", "/x.pem")])).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].setting, "MESH_TLS_CERT");
        assert!(
            problems[0]
                .reason
                .contains("MESH_TLS_KEY and MESH_TLS_CA unset"),
            "{}",
            problems[0].reason
        );
    }

    #[test]
    fn unreadable_files_and_a_bad_namespace_are_named() {
        let problems = TlsSettings::from_env(lookup_in(&[
            ("MESH_TLS_CERT", "/nonexistent/c.pem"),
            ("MESH_TLS_KEY", "/nonexistent/k.pem"),
            ("MESH_TLS_CA", "/nonexistent/ca.pem"),
            ("MESH_TLS_NAMESPACE", "Not_A_Namespace"),
            ("MESH_TLS_RELOAD", "often"),
        ]))
        .unwrap_err();
        let named: Vec<&str> = problems.iter().map(|p| p.setting.as_str()).collect();
        assert!(named.contains(&"MESH_TLS_NAMESPACE"), "{problems:?}");
        assert!(named.contains(&"MESH_TLS_RELOAD"), "{problems:?}");
        // The first file that cannot be read is named.
        assert!(named.contains(&"MESH_TLS_CERT"), "{problems:?}");
    }
}
