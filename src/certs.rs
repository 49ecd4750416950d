//! `warden certs`: make a root CA, per-cluster intermediates (Istio plugin CA files), workload
//! certificates, and inspect certificate files. Thin: flags in, `warden_identity::tools` does the work.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use warden_identity::keys::KeyAlgorithm;
use warden_identity::tools::{
    self, IntermediateRequest, RootCaRequest, Verification, WorkloadRequest,
};
use warden_identity::{SpiffeId, TrustDomain};

/// `warden certs` subcommands.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Make a self-signed root CA: root-cert.pem and root-key.pem (mode 0600).
    RootCa(RootCaArgs),
    /// Make a per-cluster intermediate CA signed by a root: the plugin CA files ca-cert.pem,
    /// ca-key.pem, cert-chain.pem and root-cert.pem.
    Intermediate(IntermediateArgs),
    /// Issue a workload certificate (for a VM or a test): cert-chain.pem, key.pem, root-cert.pem.
    Workload(WorkloadArgs),
    /// Show a certificate file (SPIFFE ID, issuer, validity, key, EKU) and verify its chain.
    Inspect(InspectArgs),
}

fn parse_key(s: &str) -> Result<KeyAlgorithm, String> {
    s.parse()
        .map_err(|e: warden_identity::keys::KeyError| e.to_string())
}

/// Flags of `warden certs root-ca`.
#[derive(Debug, Args)]
pub struct RootCaArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Key algorithm: ec-p256, rsa-2048, rsa-3072, rsa-4096.
    #[arg(long, default_value = "rsa-4096", value_parser = parse_key)]
    key: KeyAlgorithm,
    /// Validity in days.
    #[arg(long, default_value_t = 3650)]
    days: u32,
    /// Organization (O=).
    #[arg(long, default_value = "Istio")]
    org: String,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

/// Flags of `warden certs intermediate`.
#[derive(Debug, Args)]
pub struct IntermediateArgs {
    /// Directory holding root-cert.pem and root-key.pem.
    #[arg(long)]
    root: PathBuf,
    /// Cluster name (the certificate's L= attribute).
    #[arg(long)]
    cluster: String,
    /// Output directory (the plugin CA directory, Istio's `cacerts` secret content).
    #[arg(long)]
    out: PathBuf,
    /// Key algorithm: ec-p256, rsa-2048, rsa-3072, rsa-4096.
    #[arg(long, default_value = "rsa-4096", value_parser = parse_key)]
    key: KeyAlgorithm,
    /// Validity in days.
    #[arg(long, default_value_t = 730)]
    days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

/// Flags of `warden certs workload`.
#[derive(Debug, Args)]
pub struct WorkloadArgs {
    /// CA directory: plugin CA files (ca-cert.pem, ...) or a root (root-cert.pem, root-key.pem).
    #[arg(long)]
    ca: PathBuf,
    /// Kubernetes namespace of the workload.
    #[arg(long)]
    namespace: String,
    /// Service account of the workload.
    #[arg(long)]
    service_account: String,
    /// Trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Certificate lifetime, e.g. 24h, 90d, 3600s.
    #[arg(long, default_value = "24h", value_parser = tools::parse_duration)]
    ttl: std::time::Duration,
    /// Key algorithm: ec-p256, rsa-2048, rsa-3072, rsa-4096.
    #[arg(long, default_value = "ec-p256", value_parser = parse_key)]
    key: KeyAlgorithm,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

/// Flags of `warden certs inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// PEM file: a certificate, or a chain with the leaf first.
    file: PathBuf,
    /// Root bundle to verify against (default: root-cert.pem next to FILE).
    #[arg(long)]
    root: Option<PathBuf>,
}

fn list(paths: &[PathBuf]) {
    for p in paths {
        println!("wrote {}", p.display());
    }
}

/// Runs a `warden certs` subcommand. Exit status is non-zero when an inspected chain does not
/// verify.
pub fn run(cmd: CertsCommand) -> anyhow::Result<()> {
    match cmd {
        CertsCommand::RootCa(a) => {
            let req = RootCaRequest {
                key: a.key,
                days: a.days,
                organization: a.org,
                force: a.force,
                ..RootCaRequest::default()
            };
            list(&tools::root_ca(&a.out, &req).context("warden certs root-ca")?);
        }
        CertsCommand::Intermediate(a) => {
            let req = IntermediateRequest {
                key: a.key,
                days: a.days,
                force: a.force,
                ..IntermediateRequest::new(&a.cluster)
            };
            list(&tools::intermediate(&a.root, &a.out, &req).context("warden certs intermediate")?);
        }
        CertsCommand::Workload(a) => {
            let td = TrustDomain::new(&a.trust_domain).context("--trust-domain")?;
            let identity = SpiffeId::istio(&td, &a.namespace, &a.service_account)
                .context("--namespace/--service-account")?;
            let req = WorkloadRequest {
                identity,
                ttl: a.ttl,
                key: a.key,
                force: a.force,
            };
            let issued = tools::workload(&a.ca, &a.out, &req).context("warden certs workload")?;
            println!(
                "issued {} serial {} valid until {}",
                issued.identity,
                issued.serial,
                tools::fmt_time(issued.not_after)
            );
            for n in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
                println!("wrote {}", a.out.join(n).display());
            }
        }
        CertsCommand::Inspect(a) => {
            let report =
                tools::inspect(&a.file, a.root.as_deref(), time::OffsetDateTime::now_utc())
                    .context("warden certs inspect")?;
            print!("{report}");
            if let Verification::Failed(_) = report.verification {
                anyhow::bail!("the chain of {} does not verify", a.file.display());
            }
        }
    }
    Ok(())
}
