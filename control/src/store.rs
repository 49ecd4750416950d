//! The config store: Istio YAML from a directory plus a MeshConfig file, watched for changes,
//! published as immutable versioned [`Snapshot`]s.
//!
//! - Every `.yaml`/`.yml` file under the directory (recursively, hidden entries skipped, so the
//!   `..data` links of a Kubernetes ConfigMap mount are not read twice) is read and validated on
//!   its own. A file with any error is reported with the exact error and **the last good version
//!   of that file's resources stays in force**; other files are unaffected.
//! - A resource defined by two files is an error of the later file (path order).
//! - Changes are found by polling with content hashes (default every 200 ms). Polling needs no
//!   platform support and handles editors that write a temporary file and rename it into place,
//!   ConfigMap symlink swaps, and network file systems. A change is applied only once two reads
//!   50 ms apart agree (debounce: a file being written is not read half-way).
//! - A new snapshot is built completely, then swapped in atomically (`watch` channel); its version
//!   increases by one for every change of the effective config, never for a rejected edit.
//! - Versions start from the store's start time (see [`version_base`]), so a restarted control
//!   plane never reuses a version an earlier run gave to different content: a proxy that compares
//!   versions always sees the restarted control plane's snapshots as newer.
//!
//! [`ConfigSource`] is what the push server consumes, so a Kubernetes source (see
//! `docs/config.md`) can replace [`FileStore`] without touching the push code.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use warden_policy::config::parse_config_file;
use warden_policy::document::parse_documents;
use warden_policy::mesh::MeshConfig;
use warden_policy::networking::{NetworkingResource, interpret_networking};
use warden_policy::resource::{Interpreted, interpret};
use warden_policy::{Resource, ResourceId};

/// Bits of a version left for the changes of one run (about a million; more carry into the time
/// part, which keeps versions increasing).
const CHANGE_BITS: u32 = 20;

/// The version base of a store started at `now`: its Unix time in milliseconds shifted left by 20
/// bits. Versions of a later run (started at least a millisecond later, with a clock that did not
/// step back) are therefore higher than every version of an earlier run, so a restarted control
/// plane's snapshots are never mistaken for old ones.
pub fn version_base(now: SystemTime) -> u64 {
    let ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    u64::try_from(ms).unwrap_or(u64::MAX >> CHANGE_BITS) << CHANGE_BITS
}

/// A source of config snapshots: the file store, or (later) Kubernetes.
pub trait ConfigSource: Send + Sync + 'static {
    /// The current snapshot, and every later one.
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>>;
}

/// One resource in a snapshot, with its YAML as pushed to proxies.
#[derive(Debug, Clone)]
pub struct Entry<T> {
    /// The parsed resource.
    pub resource: T,
    /// `kind`.
    pub kind: &'static str,
    /// The original document as YAML.
    pub yaml: Arc<str>,
}

/// An immutable, complete, validated view of the mesh configuration.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Increases by one on every change of the effective config. The first snapshot of a store
    /// is [`version_base`] of its start time, plus 1.
    pub version: u64,
    /// MeshConfig.
    pub mesh: MeshConfig,
    /// MeshConfig as YAML (the file's text; empty for the defaults).
    pub mesh_yaml: Arc<str>,
    /// Security resources.
    pub security: Vec<Entry<Resource>>,
    /// Indices into `security` by namespace.
    pub security_by_namespace: HashMap<String, Vec<usize>>,
    /// Networking resources.
    pub networking: Vec<Entry<NetworkingResource>>,
    /// Current validation errors: files (or the mesh file) kept at their last good version, or
    /// never loaded.
    pub errors: Vec<String>,
}

impl Snapshot {
    /// The security resources of `namespace`.
    pub fn security_in(&self, namespace: &str) -> impl Iterator<Item = &Entry<Resource>> {
        self.security_by_namespace
            .get(namespace)
            .into_iter()
            .flatten()
            .map(|&i| &self.security[i])
    }

    fn fingerprint(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.mesh_yaml.hash(&mut h);
        for e in &self.security {
            e.yaml.hash(&mut h);
        }
        for e in &self.networking {
            e.yaml.hash(&mut h);
        }
        h.finish()
    }
}

/// Why the store cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The config directory cannot be read.
    #[error("cannot read config directory {path}: {source}")]
    Directory {
        /// The directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The last good contents of one file.
#[derive(Debug, Clone, Default)]
struct GoodFile {
    security: Vec<Entry<Resource>>,
    networking: Vec<Entry<NetworkingResource>>,
}

#[derive(Debug, Default)]
struct State {
    /// Content hash per file as last applied.
    hashes: BTreeMap<PathBuf, u64>,
    mesh_hash: Option<u64>,
    good: BTreeMap<PathBuf, GoodFile>,
    /// Current errors per file.
    file_errors: BTreeMap<PathBuf, Vec<String>>,
    mesh: Option<(MeshConfig, Arc<str>)>,
    mesh_error: Option<String>,
    fingerprint: u64,
    /// Snapshots published so far.
    published: u64,
    /// The version of the next snapshot is `base + published + 1`.
    base: u64,
    /// The current version.
    version: u64,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    /// Whether a new snapshot was published.
    pub published: bool,
    /// The current version.
    pub version: u64,
    /// The current errors.
    pub errors: Vec<String>,
}

/// A directory of Istio YAML and a MeshConfig file.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
    mesh_file: Option<PathBuf>,
    state: Mutex<State>,
    tx: watch::Sender<Arc<Snapshot>>,
}

impl ConfigSource for FileStore {
    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }
}

impl FileStore {
    /// Loads `dir` (and `mesh_file`, if given; Istio's defaults otherwise) and publishes the
    /// first snapshot, version [`version_base`]`(now) + 1`. Invalid files are reported in
    /// [`Snapshot::errors`] and left out.
    pub fn open(dir: impl Into<PathBuf>, mesh_file: Option<PathBuf>) -> Result<Self, StoreError> {
        Self::open_at(dir, mesh_file, version_base(SystemTime::now()))
    }

    /// [`FileStore::open`] with versions counted from `base` (tests; a source that keeps its
    /// counter elsewhere).
    pub fn open_at(
        dir: impl Into<PathBuf>,
        mesh_file: Option<PathBuf>,
        base: u64,
    ) -> Result<Self, StoreError> {
        let dir = dir.into();
        std::fs::read_dir(&dir).map_err(|source| StoreError::Directory {
            path: dir.clone(),
            source,
        })?;
        let store = FileStore {
            dir,
            mesh_file,
            state: Mutex::new(State {
                base,
                version: base,
                ..State::default()
            }),
            tx: watch::Sender::new(Arc::new(Snapshot::default())),
        };
        store.reload();
        Ok(store)
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    /// Reads what changed since the last reload and publishes a new snapshot if the effective
    /// config changed.
    pub fn reload(&self) -> ReloadOutcome {
        let files = match self.read_files() {
            Ok(f) => f,
            Err(e) => {
                // The directory vanished or is unreadable: keep everything in force.
                let st = self.lock();
                let mut errors = all_errors(&st);
                errors.push(e);
                return ReloadOutcome {
                    published: false,
                    version: st.version,
                    errors,
                };
            }
        };
        let mesh_text = self.mesh_file.as_ref().map(|p| {
            std::fs::read_to_string(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))
        });
        let mut st = self.lock();
        self.apply(&mut st, files, mesh_text)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Path -> (hash, text) for every YAML file.
    fn read_files(&self) -> Result<BTreeMap<PathBuf, (u64, String)>, String> {
        let mut paths = Vec::new();
        collect(&self.dir, &mut paths)
            .map_err(|e| format!("{}: cannot list: {e}", self.dir.display()))?;
        let mut out = BTreeMap::new();
        for p in paths {
            // A file removed between listing and reading is simply gone.
            if let Ok(text) = std::fs::read_to_string(&p) {
                out.insert(p, (hash(&text), text));
            }
        }
        Ok(out)
    }

    /// Whether the files on disk differ from what was last applied (cheap check for the poller).
    fn changed_on_disk(&self) -> Option<u64> {
        let files = self.read_files().ok()?;
        let mesh = self
            .mesh_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| hash(&t));
        let st = self.lock();
        let same = files.len() == st.hashes.len()
            && files.iter().all(|(p, (h, _))| st.hashes.get(p) == Some(h))
            && mesh == st.mesh_hash;
        if same {
            None
        } else {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for (p, (fh, _)) in &files {
                p.hash(&mut h);
                fh.hash(&mut h);
            }
            mesh.hash(&mut h);
            Some(h.finish())
        }
    }

    fn apply(
        &self,
        st: &mut State,
        files: BTreeMap<PathBuf, (u64, String)>,
        mesh_text: Option<Result<String, String>>,
    ) -> ReloadOutcome {
        // Mesh config.
        match mesh_text {
            None => {
                st.mesh_hash = None;
                if st.mesh.is_none() {
                    st.mesh = Some((MeshConfig::default(), Arc::from("")));
                }
            }
            Some(Err(e)) => {
                st.mesh_hash = None;
                st.mesh_error = Some(e);
            }
            Some(Ok(text)) => {
                let h = hash(&text);
                if st.mesh_hash != Some(h) || st.mesh.is_none() {
                    st.mesh_hash = Some(h);
                    let path = self.mesh_file.as_deref().unwrap_or(Path::new("mesh"));
                    match MeshConfig::parse(path, &text) {
                        Ok((mesh, ignored)) => {
                            for f in ignored {
                                tracing::warn!(file = %path.display(), field = %f, "MeshConfig field ignored (not used by Warden)");
                            }
                            st.mesh = Some((mesh, Arc::from(text.as_str())));
                            st.mesh_error = None;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "invalid MeshConfig; keeping the last good one");
                            st.mesh_error = Some(e.to_string());
                        }
                    }
                }
            }
        }
        if st.mesh.is_none() {
            // The mesh file never loaded: Istio's defaults until it does.
            st.mesh = Some((MeshConfig::default(), Arc::from("")));
        }

        // Files: removed ones go, changed ones are re-parsed.
        st.hashes.retain(|p, _| files.contains_key(p));
        st.good.retain(|p, _| files.contains_key(p));
        st.file_errors.retain(|p, _| files.contains_key(p));
        for (path, (h, text)) in &files {
            if st.hashes.get(path) == Some(h) {
                continue;
            }
            st.hashes.insert(path.clone(), *h);
            let (good, errors) = parse_one(path, text);
            if errors.is_empty() {
                st.good.insert(path.clone(), good);
                st.file_errors.remove(path);
            } else {
                for e in &errors {
                    tracing::error!(error = %e, "invalid config; the file's last good version stays in force");
                }
                st.file_errors.insert(path.clone(), errors);
            }
        }

        // Duplicates across files: the later file is in error and contributes nothing new.
        let mut seen: HashMap<ResourceId, PathBuf> = HashMap::new();
        let mut dup_files: HashSet<PathBuf> = HashSet::new();
        let mut dup_errors: Vec<String> = Vec::new();
        for (path, good) in &st.good {
            let ids: Vec<ResourceId> = good
                .security
                .iter()
                .map(|e| e.resource.id())
                .chain(good.networking.iter().map(|e| e.resource.id()))
                .collect();
            let mut clash = None;
            for id in &ids {
                if let Some(first) = seen.get(id) {
                    clash = Some(format!(
                        "{}: {} {} is already defined in {}; this file is ignored",
                        path.display(),
                        id.kind,
                        id,
                        first.display()
                    ));
                    break;
                }
            }
            match clash {
                Some(e) => {
                    dup_files.insert(path.clone());
                    dup_errors.push(e);
                }
                None => {
                    for id in ids {
                        seen.insert(id, path.clone());
                    }
                }
            }
        }

        // Build the candidate snapshot completely before publishing anything.
        let (mesh, mesh_yaml) = st.mesh.clone().unwrap_or_default();
        let mut snap = Snapshot {
            version: st.version,
            mesh,
            mesh_yaml,
            ..Snapshot::default()
        };
        for (path, good) in &st.good {
            if dup_files.contains(path) {
                continue;
            }
            for e in &good.security {
                let idx = snap.security.len();
                snap.security_by_namespace
                    .entry(e.resource.metadata().namespace.clone())
                    .or_default()
                    .push(idx);
                snap.security.push(e.clone());
            }
            snap.networking.extend(good.networking.iter().cloned());
        }
        let mut errors: Vec<String> = all_errors(st);
        errors.extend(dup_errors);
        snap.errors = errors.clone();
        let fp = snap.fingerprint();
        let published = st.published == 0 || fp != st.fingerprint;
        if published {
            st.published += 1;
            st.version = st.base + st.published;
            st.fingerprint = fp;
            snap.version = st.version;
            tracing::info!(
                version = st.version,
                security = snap.security.len(),
                networking = snap.networking.len(),
                errors = errors.len(),
                "published config snapshot"
            );
            self.tx.send_replace(Arc::new(snap));
        } else {
            // Same effective config; only the error list may have changed.
            let cur = self.tx.borrow().clone();
            if cur.errors != errors {
                let mut s = clone_snapshot(&cur);
                s.errors = errors.clone();
                self.tx.send_replace(Arc::new(s));
            }
        }
        ReloadOutcome {
            published,
            version: st.version,
            errors,
        }
    }

    /// Polls for changes every `interval` until the returned task is aborted.
    pub fn watch(self: Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let this = self.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    let first = this.changed_on_disk()?;
                    // Debounce: apply only when a second read agrees.
                    std::thread::sleep(Duration::from_millis(50));
                    let second = this.changed_on_disk()?;
                    (first == second).then(|| this.reload())
                })
                .await;
                if let Ok(Some(o)) = outcome
                    && !o.published
                {
                    tracing::debug!(
                        version = o.version,
                        "config files changed; effective config unchanged"
                    );
                }
            }
        })
    }
}

fn clone_snapshot(s: &Snapshot) -> Snapshot {
    Snapshot {
        version: s.version,
        mesh: s.mesh.clone(),
        mesh_yaml: s.mesh_yaml.clone(),
        security: s.security.clone(),
        security_by_namespace: s.security_by_namespace.clone(),
        networking: s.networking.clone(),
        errors: s.errors.clone(),
    }
}

fn all_errors(st: &State) -> Vec<String> {
    st.mesh_error
        .iter()
        .cloned()
        .chain(st.file_errors.values().flatten().cloned())
        .collect()
}

fn hash(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Parses one file; the resources are returned only when the whole file is valid.
fn parse_one(path: &Path, text: &str) -> (GoodFile, Vec<String>) {
    // Errors and warnings exactly as `warden check` reports them.
    let report = parse_config_file(path, text);
    for w in &report.warnings {
        tracing::warn!(warning = %w, "config warning");
    }
    if !report.is_ok() {
        return (
            GoodFile::default(),
            report.errors.iter().map(|e| e.to_string()).collect(),
        );
    }
    // Valid: keep each resource with its original document.
    let mut good = GoodFile::default();
    for doc in parse_documents(path, text).documents {
        let yaml: Arc<str> = Arc::from(serde_yaml::to_string(&doc.raw).unwrap_or_default());
        if let Some(parsed) = interpret_networking(&doc) {
            if let Ok(r) = parsed.result {
                good.networking.push(Entry {
                    kind: r.kind().as_str(),
                    resource: r,
                    yaml,
                });
            }
            continue;
        }
        if let Interpreted::Security { result: Ok(r), .. } = interpret(doc) {
            good.security.push(Entry {
                kind: r.id().kind.as_str(),
                resource: r,
                yaml,
            });
        }
    }
    (good, Vec::new())
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml")
        ) {
            out.push(path);
        }
    }
    Ok(())
}
