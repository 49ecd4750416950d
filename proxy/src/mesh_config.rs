//! Mesh configuration (policy and registry) for this workload, from either source:
//!
//! - the control plane's push API ([`subscribe`]): every snapshot it sends;
//! - a local directory of Istio YAML ([`watch_directory`]), re-read when a file changes.
//!
//! Both go through the same path: YAML documents -> [`ConfigBundle::from_yaml`] (validated as a
//! whole) -> [`compile`] (policy for this workload, registry) -> [`apply`] (one swap of each into
//! [`Shared`]). Connections already established keep running with what they started with; new
//! connections and requests see the new config. A config that fails is refused (a snapshot is
//! NACKed with the error; a local file keeps its last good version) and the last good config
//! stays in force, also while the control plane is unreachable.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use warden_identity::config_client::{ConfigSubscriber, SubscriberOptions};
use warden_identity::proto::config::ConfigSnapshot;
use warden_policy::config::{BundleError, ConfigBundle, parse_config_file};
use warden_policy::{CompiledPolicies, WorkloadRef};

use crate::config::{ControlPlaneSource, SidecarConfig};
use crate::registry::ServiceRegistry;
use crate::state::{PolicyState, Shared};

/// A configuration compiled for this workload, ready to be applied.
#[derive(Debug)]
pub struct CompiledConfig {
    /// Authorization and PeerAuthentication for this workload.
    pub policy: CompiledPolicies,
    /// The service registry.
    pub registry: ServiceRegistry,
}

/// Validates `documents` (`(label, yaml)`; the label names the document in errors) as one
/// bundle with `mesh_yaml` as MeshConfig, and compiles it for the workload of `config`.
pub fn compile<'a>(
    config: &SidecarConfig,
    mesh_yaml: &str,
    documents: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<CompiledConfig, BundleError> {
    let bundle = ConfigBundle::from_yaml(mesh_yaml, documents)?;
    let policy = bundle.policy_set().compile_for(&WorkloadRef {
        namespace: &config.identity.namespace,
        labels: &config.identity.labels,
    });
    Ok(CompiledConfig {
        policy,
        registry: ServiceRegistry::new(bundle.registry),
    })
}

/// Makes `compiled` the config in force (`version` and `origin` are shown on `/config_dump`).
/// The registry is swapped first, so a new policy never runs with an older registry.
pub fn apply(
    shared: &Shared,
    compiled: CompiledConfig,
    version: u64,
    origin: String,
    mut problems: Vec<String>,
) {
    problems.extend(compiled.registry.problems().iter().cloned());
    for p in &problems {
        tracing::warn!(problem = %p, %origin, "config: problem");
    }
    shared.registry.store(Arc::new(compiled.registry));
    shared.policy.store(Some(Arc::new(PolicyState {
        compiled: compiled.policy,
        generation: version,
        origin,
        problems,
    })));
    tracing::info!(version, "config: applied");
}

/// Compiles and applies one pushed snapshot; the error is what the NACK carries.
pub fn apply_snapshot(shared: &Shared, snapshot: &ConfigSnapshot) -> Result<(), String> {
    let all = || snapshot.resources.iter().chain(&snapshot.registry);
    let labels: Vec<String> = all()
        .map(|r| format!("{}/{}/{}", r.kind, r.namespace, r.name))
        .collect();
    let compiled = compile(
        &shared.config,
        &snapshot.mesh_config,
        labels
            .iter()
            .map(String::as_str)
            .zip(all().map(|r| r.yaml.as_str())),
    )
    .map_err(|e| format!("snapshot version {}: {e}", snapshot.version))?;
    apply(
        shared,
        compiled,
        snapshot.version,
        "control plane".to_owned(),
        Vec::new(),
    );
    Ok(())
}

/// Subscribes to the control plane once the workload has a certificate (the stream is mTLS
/// with it), and applies every snapshot until the sidecar stops. Reconnects with backoff; the
/// last good config stays in force meanwhile.
pub async fn subscribe(shared: Arc<Shared>, source: ControlPlaneSource) {
    let mut certs = shared.tls.subscribe();
    while !shared.tls.has_credentials() {
        if certs.changed().await.is_err() {
            return;
        }
    }
    let cfg = &shared.config;
    let mut options = SubscriberOptions::new(
        source.address.clone(),
        source.identities.clone(),
        cfg.identity.namespace.clone(),
    );
    options.pod_name = cfg.identity.pod_name.clone();
    options.labels = cfg
        .identity
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<HashMap<_, _>>();
    options.connect_timeout = cfg.connect_timeout;
    options.backoff_max = options.backoff_max.min(cfg.reload_interval * 4);
    tracing::info!(address = %source.address, "config: subscribing to the control plane");
    let for_validate = shared.clone();
    let subscriber = ConfigSubscriber::spawn(shared.tls.clone(), options, move |snapshot| {
        apply_snapshot(&for_validate, snapshot)
    });
    shared.set_config_status(subscriber.status());
    // The subscriber runs until dropped, i.e. until this task is aborted.
    std::future::pending::<()>().await;
    drop(subscriber);
}

/// The documents of a local directory, each file kept at its last good version.
#[derive(Debug)]
pub struct LocalDirectory {
    path: PathBuf,
    good: BTreeMap<PathBuf, String>,
    generation: u64,
}

/// A cheap change marker for a set of files: (path, modified time, length).
type Stamp = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn stamp(paths: &[PathBuf]) -> Stamp {
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

/// Why a directory load applied nothing.
#[derive(Debug, thiserror::Error)]
pub enum LocalLoadError {
    /// The directory cannot be listed.
    #[error(transparent)]
    List(#[from] warden_policy::LoadError),
    /// The files together do not make a valid config (e.g. one resource defined in two files).
    #[error("{path}: {source}; the config in force is kept")]
    Bundle {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: BundleError,
    },
}

impl LocalDirectory {
    /// Nothing loaded yet from `path` (a directory or a single file).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            good: BTreeMap::new(),
            generation: 0,
        }
    }

    /// The generation of the last config applied (0: none).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The MeshConfig a local directory runs with: the sidecar's trust domain and root
    /// namespace.
    fn mesh_yaml(config: &SidecarConfig) -> String {
        format!(
            "trustDomain: {}\nrootNamespace: {}\n",
            config.identity.trust_domain.as_str(),
            config.root_namespace
        )
    }

    /// Reads the files, keeps each broken one at its last good version, and applies the result.
    /// Returns the problems reported (also shown on `/config_dump`).
    pub fn reload(&mut self, shared: &Shared) -> Result<Vec<String>, LocalLoadError> {
        let files = warden_policy::yaml_files(&self.path)?;
        let mut problems = Vec::new();
        let mut good = BTreeMap::new();
        for file in files {
            let fresh = match std::fs::read_to_string(&file) {
                Ok(text) => {
                    let parsed = parse_config_file(&file, &text);
                    for w in &parsed.warnings {
                        tracing::warn!(warning = %w, "config: warning");
                    }
                    if parsed.is_ok() {
                        Some(text)
                    } else {
                        problems.extend(parsed.errors.iter().map(ToString::to_string));
                        None
                    }
                }
                Err(e) => {
                    problems.push(format!("{}: {e}", file.display()));
                    None
                }
            };
            match fresh {
                Some(text) => {
                    good.insert(file, text);
                }
                None => {
                    if let Some(prev) = self.good.get(&file) {
                        problems.push(format!("{}: kept the last good version", file.display()));
                        good.insert(file, prev.clone());
                    }
                }
            }
        }
        let labels: Vec<String> = good.keys().map(|p| p.display().to_string()).collect();
        let compiled = compile(
            &shared.config,
            &Self::mesh_yaml(&shared.config),
            labels
                .iter()
                .map(String::as_str)
                .zip(good.values().map(String::as_str)),
        )
        .map_err(|source| LocalLoadError::Bundle {
            path: self.path.clone(),
            source,
        })?;
        self.good = good;
        self.generation += 1;
        let origin = format!("directory {}", self.path.display());
        apply(shared, compiled, self.generation, origin, problems.clone());
        Ok(problems)
    }
}

/// Loads `path` now, then again whenever a file under it changes (checked every
/// `reload_interval`).
pub async fn watch_directory(shared: Arc<Shared>, path: PathBuf) {
    let mut local = LocalDirectory::new(&path);
    let mut last: Option<Stamp> = None;
    let mut tick = tokio::time::interval(shared.config.reload_interval);
    loop {
        tick.tick().await;
        let now = stamp(&list(&path));
        if last.as_ref() == Some(&now) {
            continue;
        }
        match local.reload(&shared) {
            Ok(_) => {
                tracing::info!(path = %path.display(), generation = local.generation(), "config: loaded");
                last = Some(now);
            }
            Err(e) => {
                tracing::error!(error = %e, "config: not applied; keeping the current config");
                last = match e {
                    // Unreadable now (permissions, a mount in progress): try again next tick.
                    LocalLoadError::List(_) => None,
                    // The same files fail the same way: wait for a change.
                    LocalLoadError::Bundle { .. } => Some(now),
                };
            }
        }
    }
}

/// The path and its YAML files (a listing error yields the path alone, so it is retried).
fn list(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_owned()];
    out.extend(warden_policy::yaml_files(path).unwrap_or_default());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_identity::proto::config::Resource;
    use warden_identity::tls::{TlsProvider, TlsSettings};

    fn shared() -> Shared {
        let yaml = "identity: {namespace: shop, serviceAccount: web, labels: {app: web}}\n\
                    certificates: {staticDir: /nonexistent}\nconfig: {controlPlane: \"127.0.0.1:15012\"}\n";
        let cfg =
            SidecarConfig::from_parts(Some((Path::new("sidecar.yaml"), yaml)), &|_| None).unwrap();
        Shared::new(
            cfg,
            TlsProvider::new(TlsSettings::default()).unwrap(),
            Arc::new(crate::orig_dst::StaticOriginalDst::new()),
            None,
        )
    }

    fn resource(kind: &str, name: &str, yaml: &str) -> Resource {
        Resource {
            kind: kind.into(),
            namespace: "shop".into(),
            name: name.into(),
            yaml: yaml.into(),
        }
    }

    const DENY_ALL: &str = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny, namespace: shop}\nspec: {action: DENY, rules: [{}]}\n";
    const ENTRY: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: db, namespace: shop}\nspec: {hosts: [db.shop], addresses: [10.0.0.9], location: MESH_INTERNAL, resolution: STATIC, ports: [{number: 5432, name: tcp}], endpoints: [{address: 10.1.0.9, serviceAccount: db}]}\n";

    #[test]
    fn a_snapshot_is_applied_and_a_bad_one_keeps_the_last_good() {
        let shared = shared();
        let good = ConfigSnapshot {
            version: 3,
            nonce: "n3".into(),
            mesh_config: "trustDomain: cluster.local\n".into(),
            resources: vec![resource("AuthorizationPolicy", "deny", DENY_ALL)],
            registry: vec![resource("ServiceEntry", "db", ENTRY)],
        };
        apply_snapshot(&shared, &good).unwrap();
        let p = shared.policy.load_full().unwrap();
        assert_eq!(p.generation, 3);
        assert_eq!(p.origin, "control plane");
        assert_eq!(p.compiled.authz.policies().len(), 1);
        let db = shared
            .registry
            .load()
            .lookup("10.0.0.9:5432".parse().unwrap())
            .unwrap();
        assert_eq!(
            db.identities()[0].as_str(),
            "spiffe://cluster.local/ns/shop/sa/db"
        );

        let bad = ConfigSnapshot {
            version: 4,
            nonce: "n4".into(),
            mesh_config: String::new(),
            resources: vec![resource(
                "AuthorizationPolicy",
                "broken",
                "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: broken, namespace: shop}\nspec: {action: MAYBE}\n",
            )],
            registry: vec![],
        };
        let err = apply_snapshot(&shared, &bad).unwrap_err();
        assert!(
            err.starts_with("snapshot version 4: ")
                && err.contains("AuthorizationPolicy/shop/broken"),
            "{err}"
        );
        // The last good config stays, registry included.
        let p = shared.policy.load_full().unwrap();
        assert_eq!(p.generation, 3);
        assert_eq!(p.compiled.authz.policies().len(), 1);
        assert!(
            shared
                .registry
                .load()
                .lookup("10.0.0.9:5432".parse().unwrap())
                .is_some()
        );
    }

    #[test]
    fn local_directory_keeps_a_broken_file_at_its_last_good_version() {
        let shared = shared();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("deny.yaml"), DENY_ALL).unwrap();
        std::fs::write(dir.path().join("db.yaml"), ENTRY).unwrap();
        let mut local = LocalDirectory::new(dir.path());
        assert!(local.reload(&shared).unwrap().is_empty());
        assert_eq!(shared.policy.load_full().unwrap().generation, 1);

        std::fs::write(dir.path().join("deny.yaml"), "kind: [\n").unwrap();
        let problems = local.reload(&shared).unwrap();
        assert!(
            problems
                .iter()
                .any(|p| p.contains("deny.yaml: kept the last good version")),
            "{problems:?}"
        );
        let p = shared.policy.load_full().unwrap();
        assert_eq!(p.generation, 2);
        assert_eq!(
            p.compiled.authz.policies().len(),
            1,
            "the DENY stays in force"
        );
        assert_eq!(p.problems, problems);

        // The same resource in two files: nothing is applied.
        std::fs::write(dir.path().join("deny.yaml"), DENY_ALL).unwrap();
        std::fs::write(dir.path().join("deny-again.yaml"), DENY_ALL).unwrap();
        let err = local.reload(&shared).unwrap_err();
        assert!(err.to_string().contains("duplicate"), "{err}");
        assert_eq!(shared.policy.load_full().unwrap().generation, 2);
    }
}
