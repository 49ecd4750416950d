//! Certificates from files: `cert-chain.pem`, `key.pem`, `root-cert.pem` (and an optional
//! `crl.pem`) in a directory, reloaded when they change. For certificates managed by SPIRE,
//! cert-manager or a VM provisioning step.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::CertificateRevocationListDer;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;

use super::error::AgentError;
use super::{IdentityHandle, Publisher};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::tls::{TlsProvider, TrustBundle, WorkloadCredentials};

/// The certificate chain file (leaf first).
pub const CERT_CHAIN: &str = "cert-chain.pem";
/// The private key file.
pub const KEY: &str = "key.pem";
/// The root bundle file.
pub const ROOT_CERT: &str = "root-cert.pem";
/// The optional CRL file (PEM `X509 CRL` blocks).
pub const CRL: &str = "crl.pem";

/// Where the files are and how often to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticSourceConfig {
    /// The directory (e.g. a mounted secret; Kubernetes' `..data` symlink swaps are followed).
    pub dir: PathBuf,
    /// Our trust domain.
    pub trust_domain: TrustDomain,
    /// Trust domain aliases.
    pub trust_domain_aliases: Vec<TrustDomain>,
    /// How often the files are compared with what is installed (content digest).
    pub poll: Duration,
    /// When set, a certificate for another identity is refused (the previous one stays):
    /// a sidecar serves exactly one workload.
    pub expected_identity: Option<SpiffeId>,
}

impl StaticSourceConfig {
    /// Defaults: poll every 5 seconds, no aliases.
    pub fn new(dir: impl Into<PathBuf>, trust_domain: TrustDomain) -> Self {
        Self {
            dir: dir.into(),
            trust_domain,
            trust_domain_aliases: Vec::new(),
            poll: Duration::from_secs(5),
            expected_identity: None,
        }
    }
}

/// Starts a static certificate source. See the [module documentation](super).
#[derive(Debug)]
pub struct StaticSource;

/// The files as read at one moment.
#[derive(PartialEq, Eq)]
struct Snapshot {
    chain: Vec<u8>,
    key: Vec<u8>,
    roots: Vec<u8>,
    crl: Option<Vec<u8>>,
}

fn read_snapshot(dir: &Path) -> Result<Snapshot, String> {
    let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let crl = match std::fs::read(dir.join(CRL)) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{CRL}: {e}")),
    };
    Ok(Snapshot {
        chain: read(CERT_CHAIN)?,
        key: read(KEY)?,
        roots: read(ROOT_CERT)?,
        crl,
    })
}

/// Reads the files twice and keeps them only if both reads agree, so a swap in progress is not
/// taken for a mismatched set (it is picked up on the next poll).
fn consistent_snapshot(dir: &Path) -> Result<Option<Snapshot>, String> {
    let a = read_snapshot(dir)?;
    let b = read_snapshot(dir)?;
    Ok((a == b).then_some(a))
}

fn build(config: &StaticSourceConfig, snap: &Snapshot) -> Result<WorkloadCredentials, String> {
    let dir = config.dir.display();
    let mut trust = TrustBundle::from_pem(
        config.trust_domain.clone(),
        &snap.roots,
        &format!("{dir}/{ROOT_CERT}"),
    )
    .map_err(|e| e.to_string())?
    .with_aliases(config.trust_domain_aliases.clone());
    if let Some(crl) = &snap.crl {
        let crls = CertificateRevocationListDer::pem_slice_iter(crl)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{dir}/{CRL}: malformed PEM: {e}"))?;
        trust = trust
            .with_crls(crls, &format!("{dir}/{CRL}"))
            .map_err(|e| e.to_string())?;
    }
    let creds = WorkloadCredentials::from_pem(
        &snap.chain,
        &snap.key,
        trust,
        &format!("{dir}/{CERT_CHAIN}"),
    )
    .map_err(|e| e.to_string())?;
    match &config.expected_identity {
        Some(want) if creds.identity() != want => Err(format!(
            "{dir}/{CERT_CHAIN}: the certificate is for {}, this workload is {want}",
            creds.identity()
        )),
        _ => Ok(creds),
    }
}

impl StaticSource {
    /// Starts polling `config.dir` on the current tokio runtime; publishes to `provider`.
    pub fn start(config: StaticSourceConfig, provider: TlsProvider) -> IdentityHandle {
        let what = format!("{}", config.dir.display());
        let (mut publisher, status) = Publisher::new(provider, &what);
        let task = tokio::spawn(async move {
            let mut last: Option<Snapshot> = None;
            loop {
                let err = |reason: String| AgentError::StaticFiles {
                    dir: config.dir.clone(),
                    reason,
                };
                match consistent_snapshot(&config.dir) {
                    Ok(Some(snap)) if last.as_ref() != Some(&snap) => {
                        match build(&config, &snap).map_err(err) {
                            Ok(creds) => {
                                tracing::info!(
                                    dir = %config.dir.display(),
                                    identity = %creds.identity(),
                                    "loaded workload certificate files"
                                );
                                let result = publisher.install(creds);
                                publisher.publish(|s| {
                                    s.certificates_installed += 1;
                                    s.consecutive_failures = 0;
                                    s.last_error = result.err();
                                });
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "certificate files unusable; keeping the previous ones");
                                publisher.publish(|s| {
                                    s.consecutive_failures += 1;
                                    s.last_error = Some(e);
                                });
                            }
                        }
                        last = Some(snap);
                    }
                    Ok(_) => {}
                    Err(reason) => {
                        let e = err(reason);
                        publisher.publish(|s| {
                            s.consecutive_failures += 1;
                            s.last_error = Some(e);
                        });
                    }
                }
                publisher.expire_if_due(OffsetDateTime::now_utc());
                publisher.publish(|_| {});
                let mut sleep = config.poll;
                if let Some(c) = &publisher.installed {
                    let left = c.not_after() - OffsetDateTime::now_utc();
                    if left.is_positive() {
                        sleep = sleep.min(Duration::from_secs_f64(left.as_seconds_f64()));
                    }
                }
                tokio::time::sleep(sleep.max(Duration::from_millis(10))).await;
            }
        });
        IdentityHandle {
            status,
            task: Some(task),
        }
    }
}
