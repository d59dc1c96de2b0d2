//! `mesh certs`: a development CA and a certificate per service for trying mTLS on one machine
//! (`docs/security.md`). Writes `ca.pem`/`ca.key` (an existing pair in the folder is reused, so
//! running it again issues fresh service certificates from the same CA: a rotation), then for
//! every module `<service>.pem`/`<service>.key` naming `<service>.<namespace>.svc`, and
//! `all.pem`/`all.key` naming every service (what `mesh serve all` presents, since one process
//! serves every identity). Each also names `localhost`, `127.0.0.1` and `::1`, so grpcurl and
//! other tools can call a port on this host by address. Not for production: there the
//! certificates come from cert-manager or the platform's CA (the chart).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use mesh_runtime::tls::dev_ca::{DevCa, Issued};
use mesh_runtime::tls::service_identity;

use crate::modules::MODULES;

/// `mesh certs`'s arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct CertsArgs {
    /// The folder to write into (created if missing).
    #[arg(long, value_name = "DIR", default_value = "certs")]
    out: PathBuf,
    /// The namespace in the identities (`<service>.<namespace>.svc`); use the value of
    /// MESH_TLS_NAMESPACE.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// How long the service certificates are valid.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    validity: Duration,
}

/// Names every certificate carries besides its identities: this host, for local tools.
const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// Writes the CA (or reuses it) and every service's certificate; prints what to export.
pub(crate) fn run(args: &CertsArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let ca_cert = args.out.join("ca.pem");
    let ca_key = args.out.join("ca.key");
    let ca = if ca_cert.exists() && ca_key.exists() {
        let cert = read(&ca_cert)?;
        let key = read(&ca_key)?;
        println!("reusing the CA in {}", ca_cert.display());
        DevCa::from_pem(cert, &key).with_context(|| format!("loading {}", ca_key.display()))?
    } else {
        let ca = DevCa::generate().context("generating the CA")?;
        write(&ca_cert, ca.cert_pem(), false)?;
        write(&ca_key, &ca.key_pem(), true)?;
        println!("wrote a new CA: {}", ca_cert.display());
        ca
    };
    let with_local = |mut names: Vec<String>| {
        names.extend(LOCAL_NAMES.iter().map(|n| n.to_string()));
        names
    };
    for module in MODULES {
        let names = with_local(vec![service_identity(module.name, &args.namespace)]);
        let issued = ca
            .issue(&names, args.validity)
            .with_context(|| format!("issuing {}'s certificate", module.name))?;
        save(&args.out, module.name, &issued)?;
    }
    let every = with_local(
        MODULES
            .iter()
            .map(|m| service_identity(m.name, &args.namespace))
            .collect(),
    );
    save(
        &args.out,
        "all",
        &ca.issue(&every, args.validity)
            .context("issuing the all-services certificate")?,
    )?;
    let dir = args.out.display();
    println!(
        "wrote <service>.pem/.key for every service and all.pem/.key (every identity) in {dir}\n\
         mTLS for `mesh serve all`:\n  \
         export MESH_TLS_CERT={dir}/all.pem MESH_TLS_KEY={dir}/all.key MESH_TLS_CA={dir}/ca.pem MESH_TLS_NAMESPACE={ns}\n\
         grpcurl against a port:\n  \
         grpcurl -cacert {dir}/ca.pem -cert {dir}/all.pem -key {dir}/all.key localhost:50053 list",
        ns = args.namespace
    );
    Ok(())
}

fn save(dir: &Path, name: &str, issued: &Issued) -> anyhow::Result<()> {
    write(&dir.join(format!("{name}.pem")), &issued.cert_pem, false)?;
    write(&dir.join(format!("{name}.key")), &issued.key_pem, true)
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes `text` to `path` through a temporary file renamed into place (a server re-reading
/// the files never sees half of one); `private` files are readable by the owner only.
fn write(path: &Path, text: &str, private: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    if private {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
