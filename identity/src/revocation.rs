//! Revocation state kept beside the CA: the revocation store (`revoked.json`) and the log of
//! issued certificates (`issued.jsonl`).
//!
//! - [`RevocationStore`]: revoked serials and revoked identities, written atomically (temporary
//!   file + rename) under a lock file, re-read before every change so a `revoke` command run
//!   beside a live control plane loses nothing, and re-read by the CA whenever the file changed.
//! - [`IssuedLog`]: one JSON line per issued certificate (serial, identity, notAfter), appended
//!   by the CA, compacted (expired entries dropped) on open and as it grows. Revoking an
//!   identity revokes every unexpired serial the log holds for it.
//!
//! Both work without a directory too (in memory), for tests and for offline signing.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::ca::CaError;
use crate::fsutil::{LockFile, PUBLIC_MODE, write_atomic};
use crate::spiffe::SpiffeId;
use crate::x509::Serial;

/// File name of the revocation store in the CA state directory.
pub const REVOKED_FILE: &str = "revoked.json";
/// File name of the issued-certificate log in the CA state directory.
pub const ISSUED_FILE: &str = "issued.jsonl";

const LOCK_TIMEOUT: Duration = Duration::from_secs(5);
const LOCK_STALE: Duration = Duration::from_secs(30);

/// A revoked certificate serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedSerial {
    /// The serial.
    pub serial: Serial,
    /// When it was revoked (Unix seconds).
    pub revoked_at: i64,
    /// The certificate's notAfter (Unix seconds) when known; the entry is dropped after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
    /// The certificate's identity when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<SpiffeId>,
}

/// A revoked identity: nothing is issued to it until it is un-revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedIdentity {
    /// The identity.
    pub identity: SpiffeId,
    /// When it was revoked (Unix seconds).
    pub revoked_at: i64,
}

/// The content of `revoked.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// Format version (1).
    #[serde(default = "version_one")]
    pub version: u32,
    /// The number of the last CRL generated from this store (CRL numbers only grow).
    #[serde(default)]
    pub crl_number: u64,
    /// Revoked serials.
    #[serde(default)]
    pub serials: Vec<RevokedSerial>,
    /// Revoked identities.
    #[serde(default)]
    pub identities: Vec<RevokedIdentity>,
}

fn version_one() -> u32 {
    1
}

impl RevocationList {
    /// Whether the serial is revoked.
    pub fn is_serial_revoked(&self, serial: &Serial) -> bool {
        self.serials.iter().any(|s| &s.serial == serial)
    }

    /// Whether the identity is revoked.
    pub fn is_identity_revoked(&self, id: &SpiffeId) -> bool {
        self.identities.iter().any(|i| &i.identity == id)
    }

    /// Serials still to be listed in a CRL at `now` (unexpired or of unknown expiry).
    pub fn unexpired_serials(&self, now: OffsetDateTime) -> impl Iterator<Item = &RevokedSerial> {
        let now = now.unix_timestamp();
        self.serials
            .iter()
            .filter(move |s| s.not_after.is_none_or(|na| na > now))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    mtime_ns: i128,
    len: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    fs::metadata(path).ok().map(|m| Stamp {
        ino: m.ino(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        len: m.len(),
    })
}

struct StoreInner {
    list: RevocationList,
    revoked_ids: HashSet<SpiffeId>,
    stamp: Option<Stamp>,
    /// Bumped on every change seen (own or from disk): CRL caches key on it.
    generation: u64,
}

impl StoreInner {
    fn set(&mut self, list: RevocationList, stamp: Option<Stamp>) {
        if list.serials != self.list.serials || list.identities != self.list.identities {
            self.generation += 1;
        }
        self.revoked_ids = list.identities.iter().map(|i| i.identity.clone()).collect();
        self.list = list;
        self.stamp = stamp;
    }
}

/// The persisted set of revoked serials and identities.
pub struct RevocationStore {
    path: Option<PathBuf>,
    inner: Mutex<StoreInner>,
}

impl std::fmt::Debug for RevocationStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn read_list(path: &Path) -> Result<(RevocationList, Option<Stamp>), CaError> {
    let st = stamp(path);
    match fs::read(path) {
        Ok(bytes) => {
            let list = serde_json::from_slice(&bytes).map_err(|e| CaError::CorruptState {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
            Ok((list, st))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((RevocationList::default(), None)),
        Err(e) => Err(CaError::io("reading", path, e)),
    }
}

impl RevocationStore {
    /// Opens (or starts) `revoked.json` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, CaError> {
        let path = dir.join(REVOKED_FILE);
        let (list, st) = read_list(&path)?;
        let mut inner = StoreInner {
            list: RevocationList::default(),
            revoked_ids: HashSet::new(),
            stamp: None,
            generation: 0,
        };
        inner.set(list, st);
        Ok(Self {
            path: Some(path),
            inner: Mutex::new(inner),
        })
    }

    /// A store that lives only in memory.
    pub fn in_memory() -> Self {
        Self {
            path: None,
            inner: Mutex::new(StoreInner {
                list: RevocationList::default(),
                revoked_ids: HashSet::new(),
                stamp: None,
                generation: 0,
            }),
        }
    }

    /// The file backing the store, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StoreInner> {
        // A panic while holding the lock cannot leave the list half-updated (it is replaced
        // whole), so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads the file if another process changed it.
    fn refresh(&self, inner: &mut StoreInner) -> Result<(), CaError> {
        if let Some(path) = &self.path {
            let st = stamp(path);
            if st != inner.stamp {
                let (list, st) = read_list(path)?;
                inner.set(list, st);
            }
        }
        Ok(())
    }

    /// Applies `change` under the cross-process lock, on the freshest list, and persists it.
    fn modify<T>(&self, change: impl FnOnce(&mut RevocationList) -> T) -> Result<T, CaError> {
        let mut inner = self.lock();
        let Some(path) = &self.path else {
            let mut list = inner.list.clone();
            let out = change(&mut list);
            inner.set(list, None);
            return Ok(out);
        };
        let lock_path = path.with_extension("json.lock");
        let _guard = LockFile::acquire(&lock_path, LOCK_TIMEOUT, LOCK_STALE)
            .map_err(|e| CaError::io("locking", &lock_path, e))?;
        let (mut list, _) = read_list(path)?;
        let out = change(&mut list);
        let json = serde_json::to_vec_pretty(&list).map_err(|e| CaError::CorruptState {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(path, &json, PUBLIC_MODE).map_err(|e| CaError::io("writing", path, e))?;
        inner.set(list, stamp(path));
        Ok(out)
    }

    /// Revokes one serial. Returns `false` if it was already revoked.
    pub fn revoke_serial(
        &self,
        serial: &Serial,
        not_after: Option<OffsetDateTime>,
        identity: Option<&SpiffeId>,
        now: OffsetDateTime,
    ) -> Result<bool, CaError> {
        self.modify(|list| {
            if list.is_serial_revoked(serial) {
                return false;
            }
            list.serials.push(RevokedSerial {
                serial: serial.clone(),
                revoked_at: now.unix_timestamp(),
                not_after: not_after.map(OffsetDateTime::unix_timestamp),
                identity: identity.cloned(),
            });
            true
        })
    }

    /// Revokes an identity and the given certificates of it. Returns the serials newly revoked.
    pub fn revoke_identity(
        &self,
        identity: &SpiffeId,
        certificates: &[IssuedRecord],
        now: OffsetDateTime,
    ) -> Result<Vec<Serial>, CaError> {
        self.modify(|list| {
            if !list.is_identity_revoked(identity) {
                list.identities.push(RevokedIdentity {
                    identity: identity.clone(),
                    revoked_at: now.unix_timestamp(),
                });
            }
            let mut added = Vec::new();
            for rec in certificates {
                if !list.is_serial_revoked(&rec.serial) {
                    list.serials.push(RevokedSerial {
                        serial: rec.serial.clone(),
                        revoked_at: now.unix_timestamp(),
                        not_after: Some(rec.not_after),
                        identity: Some(rec.identity.clone()),
                    });
                    added.push(rec.serial.clone());
                }
            }
            added
        })
    }

    /// Lifts an identity's revocation (its revoked certificates stay revoked). Returns `false`
    /// if it was not revoked.
    pub fn unrevoke_identity(&self, identity: &SpiffeId) -> Result<bool, CaError> {
        self.modify(|list| {
            let before = list.identities.len();
            list.identities.retain(|i| &i.identity != identity);
            before != list.identities.len()
        })
    }

    /// Drops revoked serials whose certificates have expired.
    pub fn prune(&self, now: OffsetDateTime) -> Result<usize, CaError> {
        let now = now.unix_timestamp();
        {
            let mut inner = self.lock();
            self.refresh(&mut inner)?;
            if !inner
                .list
                .serials
                .iter()
                .any(|s| s.not_after.is_some_and(|na| na <= now))
            {
                return Ok(0);
            }
        }
        self.modify(|list| {
            let before = list.serials.len();
            list.serials
                .retain(|s| s.not_after.is_none_or(|na| na > now));
            before - list.serials.len()
        })
    }

    /// Whether the identity is revoked (re-reading the file if it changed).
    pub fn is_identity_revoked(&self, identity: &SpiffeId) -> Result<bool, CaError> {
        let mut inner = self.lock();
        self.refresh(&mut inner)?;
        Ok(inner.revoked_ids.contains(identity))
    }

    /// Whether the serial is revoked (re-reading the file if it changed).
    pub fn is_serial_revoked(&self, serial: &Serial) -> Result<bool, CaError> {
        let mut inner = self.lock();
        self.refresh(&mut inner)?;
        Ok(inner.list.is_serial_revoked(serial))
    }

    /// A copy of the current list and its generation (bumped on every change).
    pub fn snapshot(&self) -> Result<(RevocationList, u64), CaError> {
        let mut inner = self.lock();
        self.refresh(&mut inner)?;
        Ok((inner.list.clone(), inner.generation))
    }

    /// Takes the next CRL number (persisted, so numbers keep growing across restarts).
    pub(crate) fn next_crl_number(&self) -> Result<u64, CaError> {
        // Taking a number is not a revocation change: the generation stays.
        self.modify(|list| {
            list.crl_number += 1;
            list.crl_number
        })
    }
}

/// One issued certificate, as recorded in `issued.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedRecord {
    /// The serial.
    pub serial: Serial,
    /// The identity in its URI SAN.
    pub identity: SpiffeId,
    /// Its notAfter (Unix seconds).
    pub not_after: i64,
}

/// Appends between two prunings of expired records.
const PRUNE_EVERY: usize = 4096;

struct LogInner {
    records: HashMap<Serial, IssuedRecord>,
    file: Option<File>,
    lines: usize,
    appends_since_prune: usize,
}

/// The log of issued certificates: what revoking an identity needs to find its serials.
pub struct IssuedLog {
    path: Option<PathBuf>,
    inner: Mutex<LogInner>,
}

impl std::fmt::Debug for IssuedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedLog")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Reads `issued.jsonl`, keeping unexpired records. A torn last line (a crash mid-append) is
/// skipped; any other bad line is an error.
fn read_log(path: &Path, now: i64) -> Result<(HashMap<Serial, IssuedRecord>, usize), CaError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((HashMap::new(), 0)),
        Err(e) => return Err(CaError::io("reading", path, e)),
    };
    let complete = text.ends_with('\n');
    let lines: Vec<&str> = text.lines().collect();
    let mut records = HashMap::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<IssuedRecord>(line) {
            Ok(r) => {
                if r.not_after > now {
                    records.insert(r.serial.clone(), r);
                }
            }
            Err(_) if i + 1 == lines.len() && !complete => {
                tracing::warn!(file = %path.display(), "ignoring a torn last line of the issued-certificate log");
            }
            Err(e) => {
                return Err(CaError::CorruptState {
                    path: path.to_owned(),
                    reason: format!("line {}: {e}", i + 1),
                });
            }
        }
    }
    Ok((records, lines.len()))
}

fn render(records: &HashMap<Serial, IssuedRecord>) -> String {
    let mut out = String::with_capacity(records.len() * 128);
    for r in records.values() {
        if let Ok(line) = serde_json::to_string(r) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

fn open_append(path: &Path) -> Result<File, CaError> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(PUBLIC_MODE)
        .open(path)
        .map_err(|e| CaError::io("opening", path, e))
}

impl IssuedLog {
    /// Opens `issued.jsonl` in `dir` for appending, dropping expired records.
    pub fn open(dir: &Path, now: OffsetDateTime) -> Result<Self, CaError> {
        let path = dir.join(ISSUED_FILE);
        let (records, _) = read_log(&path, now.unix_timestamp())?;
        write_atomic(&path, render(&records).as_bytes(), PUBLIC_MODE)
            .map_err(|e| CaError::io("writing", &path, e))?;
        let file = open_append(&path)?;
        Ok(Self {
            inner: Mutex::new(LogInner {
                lines: records.len(),
                records,
                file: Some(file),
                appends_since_prune: 0,
            }),
            path: Some(path),
        })
    }

    /// Reads the log in `dir` without writing to it (for a command run beside the CA).
    pub fn read_only(dir: &Path, now: OffsetDateTime) -> Result<Self, CaError> {
        let path = dir.join(ISSUED_FILE);
        let (records, lines) = read_log(&path, now.unix_timestamp())?;
        Ok(Self {
            inner: Mutex::new(LogInner {
                records,
                file: None,
                lines,
                appends_since_prune: 0,
            }),
            path: Some(path),
        })
    }

    /// A log kept only in memory.
    pub fn in_memory() -> Self {
        Self {
            path: None,
            inner: Mutex::new(LogInner {
                records: HashMap::new(),
                file: None,
                lines: 0,
                appends_since_prune: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records an issued certificate. Fails (and the caller must not hand out the certificate)
    /// if the record cannot be written.
    pub fn record(&self, record: IssuedRecord, now: OffsetDateTime) -> Result<(), CaError> {
        let mut line = serde_json::to_string(&record).map_err(|e| CaError::CorruptState {
            path: self.path.clone().unwrap_or_default(),
            reason: e.to_string(),
        })?;
        line.push('\n');
        let mut inner = self.lock();
        if let (Some(path), Some(file)) = (&self.path, inner.file.as_mut()) {
            file.write_all(line.as_bytes())
                .map_err(|e| CaError::io("appending to", path, e))?;
        } else if self.path.is_some() {
            return Err(CaError::io(
                "appending to",
                self.path.clone().unwrap_or_default(),
                std::io::Error::other("the log was opened read-only"),
            ));
        }
        inner.records.insert(record.serial.clone(), record);
        inner.lines += 1;
        inner.appends_since_prune += 1;
        // Every few thousand appends: forget expired records, and rewrite the file when it holds
        // mostly dead lines.
        if inner.appends_since_prune >= PRUNE_EVERY {
            inner.appends_since_prune = 0;
            let now = now.unix_timestamp();
            inner.records.retain(|_, r| r.not_after > now);
            if inner.lines > 2 * inner.records.len() {
                if let Some(path) = &self.path {
                    write_atomic(path, render(&inner.records).as_bytes(), PUBLIC_MODE)
                        .map_err(|e| CaError::io("compacting", path, e))?;
                    inner.file = Some(open_append(path)?);
                }
                inner.lines = inner.records.len();
            }
        }
        Ok(())
    }

    /// Unexpired certificates issued to `identity`.
    pub fn unexpired_for(&self, identity: &SpiffeId, now: OffsetDateTime) -> Vec<IssuedRecord> {
        let now = now.unix_timestamp();
        let inner = self.lock();
        let mut out: Vec<IssuedRecord> = inner
            .records
            .values()
            .filter(|r| &r.identity == identity && r.not_after > now)
            .cloned()
            .collect();
        out.sort_by_key(|r| r.not_after);
        out
    }

    /// The record of a serial, if the log has it.
    pub fn find(&self, serial: &Serial) -> Option<IssuedRecord> {
        self.lock().records.get(serial).cloned()
    }

    /// Number of records held.
    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    /// Whether the log holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Revokes an identity (and all its unexpired certificates) in a CA state directory, from a
/// process other than the running CA (e.g. `warden control revoke`). The CA sees the change at
/// its next signing or CRL request.
pub fn revoke_identity_in_dir(
    state_dir: &Path,
    identity: &SpiffeId,
    now: OffsetDateTime,
) -> Result<Vec<Serial>, CaError> {
    let log = IssuedLog::read_only(state_dir, now)?;
    let store = RevocationStore::open(state_dir)?;
    store.revoke_identity(identity, &log.unexpired_for(identity, now), now)
}

/// Revokes one serial in a CA state directory, from a process other than the running CA.
pub fn revoke_serial_in_dir(
    state_dir: &Path,
    serial: &Serial,
    now: OffsetDateTime,
) -> Result<bool, CaError> {
    let log = IssuedLog::read_only(state_dir, now)?;
    let store = RevocationStore::open(state_dir)?;
    let rec = log.find(serial);
    store.revoke_serial(
        serial,
        rec.as_ref()
            .and_then(|r| OffsetDateTime::from_unix_timestamp(r.not_after).ok()),
        rec.as_ref().map(|r| &r.identity),
        now,
    )
}

/// Lifts an identity's revocation in a CA state directory, from a process other than the CA.
pub fn unrevoke_identity_in_dir(state_dir: &Path, identity: &SpiffeId) -> Result<bool, CaError> {
    RevocationStore::open(state_dir)?.unrevoke_identity(identity)
}

/// The revocation list of a CA state directory (for listing from a command).
pub fn revocation_list_in_dir(state_dir: &Path) -> Result<RevocationList, CaError> {
    Ok(RevocationStore::open(state_dir)?.snapshot()?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://cluster.local/ns/default/sa/{sa}")).unwrap()
    }

    #[test]
    fn log_forgets_expired_records_and_compacts_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let log = IssuedLog::open(dir.path(), now).unwrap();
        let live = IssuedRecord {
            serial: Serial::random(),
            identity: id("live"),
            not_after: (now + time::Duration::days(1)).unix_timestamp(),
        };
        log.record(live.clone(), now).unwrap();
        let later = now + time::Duration::hours(1);
        // The live record was the first append; this makes PRUNE_EVERY in all.
        for _ in 0..PRUNE_EVERY - 1 {
            let rec = IssuedRecord {
                serial: Serial::random(),
                identity: id("short"),
                not_after: (now + time::Duration::minutes(1)).unix_timestamp(),
            };
            log.record(rec, later).unwrap();
        }
        assert_eq!(log.len(), 1, "expired records forgotten");
        let text = fs::read_to_string(dir.path().join(ISSUED_FILE)).unwrap();
        assert_eq!(text.lines().count(), 1, "file compacted");
        assert_eq!(log.unexpired_for(&id("live"), later), vec![live.clone()]);
        // Appends keep going to the new file.
        log.record(
            IssuedRecord {
                serial: Serial::random(),
                identity: id("after"),
                not_after: (now + time::Duration::days(1)).unix_timestamp(),
            },
            later,
        )
        .unwrap();
        let reread = IssuedLog::read_only(dir.path(), later).unwrap();
        assert_eq!(reread.len(), 2);
        assert_eq!(reread.find(&live.serial), Some(live));
    }

    #[test]
    fn two_stores_on_one_file_lose_no_update() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let a = RevocationStore::open(dir.path()).unwrap();
        let b = RevocationStore::open(dir.path()).unwrap();
        assert!(
            a.revoke_serial(&"01".parse().unwrap(), None, None, now)
                .unwrap()
        );
        assert!(
            b.revoke_serial(&"02".parse().unwrap(), None, None, now)
                .unwrap()
        );
        b.revoke_identity(&id("x"), &[], now).unwrap();
        let (list, _) = a.snapshot().unwrap();
        assert_eq!(list.serials.len(), 2, "b's change kept a's");
        assert!(a.is_identity_revoked(&id("x")).unwrap());
        assert!(b.unrevoke_identity(&id("x")).unwrap());
        assert!(!a.is_identity_revoked(&id("x")).unwrap());
        assert!(!b.unrevoke_identity(&id("x")).unwrap());
        // A corrupt file is an error, not an empty list.
        fs::write(dir.path().join(REVOKED_FILE), "{not json").unwrap();
        assert!(matches!(
            a.is_identity_revoked(&id("x")),
            Err(CaError::CorruptState { .. })
        ));
    }
}
