//! Notices when the ledger file is deleted or replaced under a running gateway. SQLite keeps writing to the
//! inode it opened, so without this the spend recorded from then on would be in no file, and a restart would
//! silently forget it. The guard remembers the file's identity (device, inode) at open; a check that finds the
//! path gone or pointing at another file marks the ledger lost, for good: an ERROR log (once), `/readyz` 503
//! naming the path, and admission per `state.on_unavailable`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

fn file_id(path: &Path) -> std::io::Result<FileId> {
    let m = std::fs::metadata(path)?;
    Ok(FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

pub struct FileGuard {
    path: PathBuf,
    id: FileId,
    lost: OnceLock<String>,
}

impl FileGuard {
    /// Remembers the identity of the file at `path` (which must exist).
    pub fn new(path: &Path) -> std::io::Result<Self> {
        let path = std::path::absolute(path)?;
        let id = file_id(&path)?;
        Ok(Self {
            path,
            id,
            lost: OnceLock::new(),
        })
    }

    /// Looks at the path again (one `stat`); `Err` with why the ledger is lost, now or earlier.
    pub fn check(&self) -> Result<(), String> {
        if let Some(why) = self.lost.get() {
            return Err(why.clone());
        }
        let what = match file_id(&self.path) {
            Ok(id) if id == self.id => return Ok(()),
            Ok(_) => "was replaced by another file",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "was deleted",
            // Not readable right now (e.g. a folder's permissions changed): not proof of loss; retried.
            Err(_) => return Ok(()),
        };
        let why = format!(
            "the ledger file {} {what} while the gateway was running: spend recorded from then on is in no \
             file and a restart would forget it. Restore the file and restart the gateway (state.ledger_path)",
            self.path.display()
        );
        if self.lost.set(why.clone()).is_ok() {
            tracing::error!(path = %self.path.display(), "{why}");
        }
        Err(why)
    }

    /// Why the ledger is lost, if a check has found it so (no system call).
    pub fn lost(&self) -> Option<&str> {
        self.lost.get().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_in_place_passes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite3");
        std::fs::write(&path, b"x").unwrap();
        let guard = FileGuard::new(&path).unwrap();
        std::fs::write(&path, b"rewritten in place").unwrap();
        assert_eq!(guard.check(), Ok(()));
        assert_eq!(guard.lost(), None);
    }

    #[test]
    fn a_deleted_file_is_lost_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite3");
        std::fs::write(&path, b"x").unwrap();
        let guard = FileGuard::new(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let why = guard.check().unwrap_err();
        assert!(why.contains("was deleted"), "{why}");
        assert!(why.contains(&path.display().to_string()), "{why}");
        // A new file at the path does not make the lost spend come back.
        std::fs::write(&path, b"new").unwrap();
        assert!(guard.check().is_err());
        assert!(guard.lost().is_some());
    }

    #[test]
    fn a_replaced_file_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite3");
        let other = dir.path().join("other.sqlite3");
        std::fs::write(&path, b"x").unwrap();
        std::fs::write(&other, b"y").unwrap();
        let guard = FileGuard::new(&path).unwrap();
        std::fs::rename(&other, &path).unwrap();
        let why = guard.check().unwrap_err();
        assert!(why.contains("was replaced by another file"), "{why}");
    }
}
