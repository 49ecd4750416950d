//! State-directory file helpers: atomic replacement, and create-once for files two processes may
//! race to create (the control plane and `warden control token` on a fresh state directory).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of private key files.
pub(crate) const KEY_MODE: u32 = 0o600;
/// Mode of public files.
pub(crate) const PUBLIC_MODE: u32 = 0o644;

/// Creates `dir` (and parents) with mode 0700 if it does not exist.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn temp_path(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut nonce = [0u8; 6];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| io::Error::other("random source failed"))?;
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    Ok(path.with_file_name(format!(".{}.tmp.{nonce}", name.to_string_lossy())))
}

/// Writes a temporary file next to `path` with exactly `mode` from its creation on, synced.
fn write_temp(path: &Path, contents: &[u8], mode: u32) -> io::Result<PathBuf> {
    let tmp = temp_path(path)?;
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn sync_parent(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(d) = fs::File::open(dir)
    {
        // Best effort: not every filesystem syncs directories.
        let _ = d.sync_all();
    }
}

/// Replaces `path` atomically (temporary file, fsync, rename): readers see the old or the new
/// content, never a mix.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = write_temp(path, contents, mode)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path);
    Ok(())
}

/// Creates `path` with `contents` unless it exists; never replaces it. Returns whether this call
/// created it. Complete or absent: the content is written to a temporary file first and linked
/// into place, which fails if another process got there first.
pub(crate) fn create_once(path: &Path, contents: &[u8], mode: u32) -> io::Result<bool> {
    let tmp = write_temp(path, contents, mode)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_parent(path);
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_once_never_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key.pem");
        assert!(create_once(&p, b"first", KEY_MODE).unwrap());
        assert!(!create_once(&p, b"second", KEY_MODE).unwrap());
        assert_eq!(fs::read(&p).unwrap(), b"first");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_atomic_replaces_with_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("root-cert.pem");
        write_atomic(&p, b"a", PUBLIC_MODE).unwrap();
        write_atomic(&p, b"b", PUBLIC_MODE).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"b");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
