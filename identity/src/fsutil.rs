//! Small filesystem helpers: atomic writes with explicit modes, and a cross-process lock file.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// File mode for private keys.
pub(crate) const KEY_MODE: u32 = 0o600;
/// File mode for certificates and other public files.
pub(crate) const PUBLIC_MODE: u32 = 0o644;

/// Writes `contents` to `path` atomically: a temporary file in the same directory, written,
/// synced and renamed over `path`. The file gets `mode` (umask aside) from its creation on, so a
/// key is never readable by others, not even briefly.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut nonce = [0u8; 6];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| io::Error::other("random source failed"))?;
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let tmp_name = format!(".{}.tmp.{nonce}", file_name.to_string_lossy());
    let tmp = match dir {
        Some(d) => d.join(tmp_name),
        None => PathBuf::from(tmp_name),
    };
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        // The umask may have narrowed the mode; widen it to exactly `mode` for public files.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    if let Some(d) = dir
        && let Ok(d) = fs::File::open(d)
    {
        // Persist the rename; best effort (not every filesystem supports syncing a directory).
        let _ = d.sync_all();
    }
    Ok(())
}

/// A lock held by creating `<path>` exclusively; removed on drop.
///
/// Used to serialise read-modify-write cycles of state files between processes (the control
/// plane and a `revoke` command run beside it). A lock file older than `stale_after` is taken to
/// be left over from a crashed process and is broken.
#[derive(Debug)]
pub(crate) struct LockFile {
    path: PathBuf,
}

impl LockFile {
    /// Waits up to `timeout` for the lock.
    pub(crate) fn acquire(
        path: &Path,
        timeout: Duration,
        stale_after: Duration,
    ) -> io::Result<Self> {
        let start = Instant::now();
        loop {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                    return Ok(Self {
                        path: path.to_owned(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let stale = fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age >= stale_after);
                    if stale {
                        let _ = fs::remove_file(path);
                        continue;
                    }
                    if start.elapsed() >= timeout {
                        return Err(io::Error::new(
                            io::ErrorKind::WouldBlock,
                            format!("lock file is held by another process (waited {timeout:?})"),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_write_sets_mode_and_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_atomic(&p, b"one", KEY_MODE).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_atomic(&p, b"two", PUBLIC_MODE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn lock_excludes_and_breaks_stale_locks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.lock");
        let held = LockFile::acquire(&p, Duration::ZERO, Duration::from_secs(60)).unwrap();
        let err =
            LockFile::acquire(&p, Duration::from_millis(20), Duration::from_secs(60)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // A lock considered stale right away is broken.
        let broken = LockFile::acquire(&p, Duration::ZERO, Duration::ZERO);
        assert!(broken.is_ok());
        drop(broken);
        std::mem::forget(held);
        assert!(!p.exists());
    }
}
