//! Loading certificates and mesh config from local files, and re-loading them when they change.
//! A bad new version is reported and the last good one stays in force.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use warden_identity::TrustDomain;
use warden_identity::tls::{TrustBundle, WorkloadCredentials};
use warden_policy::{LastGoodConfig, PolicySet, PolicySetOptions, WorkloadRef};

use crate::registry::ServiceRegistry;
use crate::state::{PolicyState, Shared};

/// A certificate directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CertLoadError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The files do not make valid credentials.
    #[error("{dir}: {source}")]
    Invalid {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: warden_identity::tls::CredentialsError,
    },
    /// The certificate is not for this workload.
    #[error("{dir}: the certificate is for {found}, this workload is {expected}")]
    WrongIdentity {
        /// The directory.
        dir: PathBuf,
        /// The identity in the certificate.
        found: String,
        /// The workload's identity.
        expected: String,
    },
}

/// Reads `cert-chain.pem`, `key.pem` and `root-cert.pem` from `dir` (the layout
/// `warden certs workload` writes). Interim: replaced by the agent's static source.
pub fn load_static_certs(
    dir: &Path,
    trust_domain: &TrustDomain,
) -> Result<WorkloadCredentials, CertLoadError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| CertLoadError::Read { path, source })
    };
    let chain = read("cert-chain.pem")?;
    let key = read("key.pem")?;
    let root = read("root-cert.pem")?;
    let invalid = |source| CertLoadError::Invalid {
        dir: dir.to_owned(),
        source,
    };
    let trust =
        TrustBundle::from_pem(trust_domain.clone(), &root, "root-cert.pem").map_err(invalid)?;
    WorkloadCredentials::from_pem(&chain, &key, trust, &dir.display().to_string()).map_err(invalid)
}

/// A cheap change marker for a set of files: (path, modified time, length).
fn stamp(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    paths
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok();
            (
                p.clone(),
                m.as_ref().and_then(|m| m.modified().ok()),
                m.map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect()
}

fn describe_chain(creds: &WorkloadCredentials) -> Vec<serde_json::Value> {
    let fmt = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    creds
        .chain()
        .iter()
        .map(|der| match x509_parser::parse_x509_certificate(der) {
            Ok((_, c)) => serde_json::json!({
                "subject": c.subject().to_string(),
                "issuer": c.issuer().to_string(),
                "serial": c.raw_serial_as_string(),
                "not_before": fmt(c.validity().not_before.to_datetime()),
                "not_after": fmt(c.validity().not_after.to_datetime()),
            }),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        })
        .collect()
}

/// Installs credentials for this workload (checked against its identity).
pub fn install_credentials(
    shared: &Shared,
    creds: &WorkloadCredentials,
    dir: &Path,
) -> Result<(), CertLoadError> {
    let expected = shared.config.identity.spiffe_id();
    if creds.identity() != &expected {
        return Err(CertLoadError::WrongIdentity {
            dir: dir.to_owned(),
            found: creds.identity().to_string(),
            expected: expected.to_string(),
        });
    }
    shared
        .tls
        .install(creds)
        .map_err(|source| CertLoadError::Invalid {
            dir: dir.to_owned(),
            source,
        })?;
    *shared.chain.lock().unwrap_or_else(|p| p.into_inner()) = describe_chain(creds);
    *shared
        .cert_problem
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = None;
    Ok(())
}

/// Loads the static cert dir now, then re-loads it every `reload_interval` when it changed.
/// Errors keep the installed credentials (and are reported by readiness before the first).
pub async fn watch_static_certs(shared: Arc<Shared>, dir: PathBuf) {
    let files: Vec<PathBuf> = ["cert-chain.pem", "key.pem", "root-cert.pem"]
        .iter()
        .map(|f| dir.join(f))
        .collect();
    let mut last = None;
    let mut tick = tokio::time::interval(shared.config.reload_interval);
    loop {
        tick.tick().await;
        let now = stamp(&files);
        if last.as_ref() == Some(&now) {
            continue;
        }
        let td = shared.config.identity.trust_domain.clone();
        let result =
            load_static_certs(&dir, &td).and_then(|c| install_credentials(&shared, &c, &dir));
        match result {
            Ok(()) => last = Some(now),
            Err(e) => {
                tracing::error!(error = %e, "certificates: cannot load; keeping the current ones");
                if !shared.tls.has_credentials() {
                    *shared
                        .cert_problem
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                }
                // Retry next tick even if unchanged (files may be mid-write).
                last = None;
            }
        }
    }
}

/// The mesh config of a local directory, compiled for this workload.
pub struct LocalConfig {
    last_good: LastGoodConfig,
    generation: u64,
    registry_problems: Vec<String>,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalConfig {
    /// Nothing loaded yet.
    pub fn new() -> Self {
        Self {
            last_good: LastGoodConfig::default(),
            generation: 0,
            registry_problems: Vec::new(),
        }
    }

    /// Loads `path` and publishes the compiled policy and registry. Files with errors keep
    /// their last good version. Returns the problems reported.
    pub fn reload(
        &mut self,
        shared: &Shared,
        path: &Path,
    ) -> Result<Vec<String>, warden_policy::LoadError> {
        let report = warden_policy::load_path(path)?;
        let mut problems: Vec<String> = report.errors().map(|e| e.to_string()).collect();
        let kept = self.last_good.update(&report);
        for k in kept {
            problems.push(format!("{}: kept the last good version", k.display()));
        }
        let cfg = &shared.config;
        let set = PolicySet::new(
            self.last_good.resources(),
            &PolicySetOptions {
                root_namespace: cfg.root_namespace.clone(),
            },
        );
        let compiled = set.compile_for(&WorkloadRef {
            namespace: &cfg.identity.namespace,
            labels: &cfg.identity.labels,
        });
        // Registry: rebuilt from the files that parsed; when some failed, the previous one stays.
        if !report.has_errors() {
            let mut networking = Vec::new();
            let mut reg_problems = Vec::new();
            for doc in report.others() {
                if let Some(parsed) = warden_policy::networking::interpret_networking(doc) {
                    match parsed.result {
                        Ok(r) => networking.push(r),
                        Err(errors) => reg_problems.extend(errors.iter().map(|e| e.to_string())),
                    }
                }
            }
            let reg = ServiceRegistry::new(warden_policy::registry::Registry::build(
                &networking,
                cfg.identity.trust_domain.as_str(),
            ));
            reg_problems.extend(reg.problems().iter().cloned());
            self.registry_problems = reg_problems;
            shared.registry.store(Arc::new(reg));
        }
        problems.extend(self.registry_problems.iter().cloned());
        self.generation += 1;
        shared.policy.store(Some(Arc::new(PolicyState {
            compiled,
            generation: self.generation,
            problems: problems.clone(),
        })));
        Ok(problems)
    }
}

/// Loads the config directory now, then whenever a file in it changes.
pub async fn watch_config_dir(shared: Arc<Shared>, path: PathBuf) {
    let mut local = LocalConfig::new();
    let mut last: Option<Vec<(PathBuf, Option<SystemTime>, u64)>> = None;
    let mut tick = tokio::time::interval(shared.config.reload_interval);
    loop {
        tick.tick().await;
        let now = stamp(&list_files(&path));
        if last.as_ref() == Some(&now) {
            continue;
        }
        match local.reload(&shared, &path) {
            Ok(problems) => {
                for p in &problems {
                    tracing::error!(problem = %p, "config: problem (last good version kept)");
                }
                tracing::info!(path = %path.display(), generation = local.generation, "config: loaded");
                last = Some(now);
            }
            Err(e) => {
                tracing::error!(error = %e, "config: cannot read; keeping the current config");
                last = None;
            }
        }
    }
}

fn list_files(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_owned()];
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&p) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    out
}
