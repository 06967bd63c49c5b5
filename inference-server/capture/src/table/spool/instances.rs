//! The spool root (`--spool-dir`): one folder per sidecar instance, `<root>/<instance>/`,
//! each held with an exclusive `flock` on `<root>/<instance>/lock` for as long as its sidecar
//! lives. A folder whose lock is free belongs to a sidecar that is gone (its container
//! restarted, or its pod was deleted while it shared the root with its siblings on a
//! persistent claim): the next sidecar to start takes one such folder as its own, and running
//! sidecars adopt the others, write their rows under the original instance id, and remove
//! them.
//!
//! The folder name is the instance id that names the part files (`part-<instance>-<seq>`), so
//! a folder written by two processes in turn never produces two copies of a segment.
//!
//! Locks are advisory `flock`s: local disks, `emptyDir`, NFSv4 and CephFS honour them across
//! processes and nodes; a shared volume that ignores them is not safe for several sidecars.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{LEGACY_SEALED_EXT, NEXT_SEQ_FILE, OPEN_EXT, SEALED_EXT, SpoolError, io};

/// The lock file of an instance folder.
const LOCK_FILE: &str = "lock";
/// Where the spool kept its id before instance folders existed (`<root>/instance-id`, the
/// segments beside it); such a root is moved into `<root>/<id>/` once.
const LEGACY_INSTANCE_FILE: &str = "instance-id";

/// The spool root, holding one folder per sidecar instance.
#[derive(Debug)]
pub struct SpoolRoot {
    dir: PathBuf,
}

/// An instance folder whose lock this process holds; the lock is released when it is dropped
/// (and by the kernel when the process dies, however it dies).
#[derive(Debug)]
pub struct InstanceFolder {
    id: String,
    path: PathBuf,
    _lock: File,
}

impl InstanceFolder {
    /// The instance id: the folder's name.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the folder, which must hold nothing the table still needs: every file but the
    /// lock, then the lock file, then the folder. A sidecar that locked a fresh lock file in
    /// between keeps the (empty) folder.
    pub fn remove(&self) -> Result<(), SpoolError> {
        for entry in fs::read_dir(&self.path).map_err(io("listing", &self.path))? {
            let path = entry.map_err(io("listing", &self.path))?.path();
            if path.file_name().is_some_and(|n| n == LOCK_FILE) {
                continue;
            }
            remove_file(&path)?;
        }
        remove_file(&self.path.join(LOCK_FILE))?;
        if let Err(error) = fs::remove_dir(&self.path) {
            tracing::debug!(%error, folder = %self.path.display(), "spool folder kept");
        }
        Ok(())
    }
}

fn remove_file(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            Err(io("removing", path)(error))
        }
        _ => Ok(()),
    }
}

/// Whether `name` can be an instance id: what [`SpoolRoot::take_own`] makes (hex digits) or an
/// earlier id (letters, digits, `-`). Anything else under the root (`lost+found`, hidden
/// folders being created) is left alone.
fn is_instance(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

impl SpoolRoot {
    /// The root at `dir`, created if missing; a spool of the earlier layout (segments
    /// directly in `dir`) is moved into its instance folder first.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let root = Self {
            dir: dir.to_path_buf(),
        };
        root.migrate()?;
        Ok(root)
    }

    fn migrate(&self) -> Result<(), SpoolError> {
        let legacy = self.dir.join(LEGACY_INSTANCE_FILE);
        let Ok(id) = fs::read_to_string(&legacy) else {
            return Ok(());
        };
        let id = id.trim().to_string();
        if is_instance(&id) {
            let folder = self.dir.join(&id);
            fs::create_dir_all(&folder).map_err(io("creating", &folder))?;
            for entry in fs::read_dir(&self.dir).map_err(io("listing", &self.dir))? {
                let path = entry.map_err(io("listing", &self.dir))?.path();
                let ext = path.extension().and_then(|e| e.to_str());
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if matches!(ext, Some(OPEN_EXT | SEALED_EXT | LEGACY_SEALED_EXT))
                    || name == NEXT_SEQ_FILE
                {
                    let to = folder.join(name);
                    fs::rename(&path, &to).map_err(io("moving", &path))?;
                }
            }
            tracing::info!(instance = %id, "spool moved into its instance folder");
        }
        remove_file(&legacy)
    }

    /// Instance folders under the root, by name.
    fn folders(&self) -> Result<Vec<String>, SpoolError> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io("listing", &self.dir))? {
            let entry = entry.map_err(io("listing", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_instance(&name) && entry.file_type().is_ok_and(|t| t.is_dir()) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Locks the folder `id` if nobody holds it. The lock is taken on the file the folder
    /// holds at that moment: a lock file removed (by a sidecar finishing its adoption of the
    /// folder) between opening and locking it does not count.
    fn hold(&self, id: &str) -> Result<Option<InstanceFolder>, SpoolError> {
        let path = self.dir.join(id);
        let lock_path = path.join(LOCK_FILE);
        let file = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        {
            Ok(file) => file,
            // The folder went away meanwhile.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io("opening", &lock_path)(error)),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(error)) => return Err(io("locking", &lock_path)(error)),
        }
        let held = file.metadata().map_err(io("reading", &lock_path))?;
        let same = fs::metadata(&lock_path)
            .is_ok_and(|now| now.dev() == held.dev() && now.ino() == held.ino());
        Ok(same.then(|| InstanceFolder {
            id: id.to_string(),
            path,
            _lock: file,
        }))
    }

    /// This process's own folder: one whose sidecar is gone (the same container, restarted),
    /// else a new one. A new folder is made under a hidden name and locked before it gets its
    /// real name, so no other sidecar ever sees it unlocked.
    pub fn take_own(&self) -> Result<InstanceFolder, SpoolError> {
        for id in self.folders()? {
            if let Some(folder) = self.hold(&id)? {
                return Ok(folder);
            }
        }
        loop {
            let id = format!("{:016x}", fastrand::u64(..));
            let hidden = self.dir.join(format!(".{id}.new"));
            fs::create_dir(&hidden).map_err(io("creating", &hidden))?;
            let lock_path = hidden.join(LOCK_FILE);
            let file = File::create(&lock_path).map_err(io("creating", &lock_path))?;
            file.try_lock().map_err(|e| {
                io("locking", &lock_path)(match e {
                    fs::TryLockError::Error(error) => error,
                    fs::TryLockError::WouldBlock => std::io::ErrorKind::WouldBlock.into(),
                })
            })?;
            let path = self.dir.join(&id);
            if path.exists() {
                // A 64-bit collision: try another id.
                let _ = fs::remove_dir_all(&hidden);
                continue;
            }
            fs::rename(&hidden, &path).map_err(io("naming", &hidden))?;
            return Ok(InstanceFolder {
                id,
                path,
                _lock: file,
            });
        }
    }

    /// The folders nobody holds (their sidecars are gone), each now locked by this process.
    /// Folders this process holds already are not among them.
    pub fn orphans(&self) -> Result<Vec<InstanceFolder>, SpoolError> {
        let mut found = Vec::new();
        for id in self.folders()? {
            if let Some(folder) = self.hold(&id)? {
                found.push(folder);
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "sluice-spool-root-{label}-{}-{}",
            std::process::id(),
            fastrand::u32(..)
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_held_folder_is_nobodys_orphan_and_a_released_one_is_taken_back() {
        let dir = temp("hold");
        let root = SpoolRoot::open(&dir).unwrap();
        let first = root.take_own().unwrap();
        let second = root.take_own().unwrap();
        assert_ne!(first.id(), second.id(), "a held folder is not taken twice");
        assert!(root.orphans().unwrap().is_empty(), "both are held");
        let id = first.id().to_string();
        drop(first);
        let orphans = root.orphans().unwrap();
        assert_eq!(
            orphans.iter().map(InstanceFolder::id).collect::<Vec<_>>(),
            [id.as_str()]
        );
        drop(orphans);
        assert_eq!(
            root.take_own().unwrap().id(),
            id,
            "a restart takes its folder back"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_removed_folder_is_not_held_through_its_old_lock_file() {
        let dir = temp("remove");
        let root = SpoolRoot::open(&dir).unwrap();
        let folder = root.take_own().unwrap();
        let id = folder.id().to_string();
        fs::write(folder.path().join("next-seq"), "3").unwrap();
        // Someone opens the lock file before the folder goes...
        let stale = File::open(folder.path().join(LOCK_FILE)).unwrap();
        folder.remove().unwrap();
        drop(folder);
        assert!(!dir.join(&id).exists());
        // ...and gets its lock afterwards: it is not the folder's any more.
        stale.try_lock().unwrap();
        assert!(root.hold(&id).unwrap().is_none(), "the folder is gone");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_spool_of_the_earlier_layout_moves_into_its_folder() {
        let dir = temp("legacy");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(LEGACY_INSTANCE_FILE), "abc123").unwrap();
        fs::write(dir.join("00000000000000000004.jsonl"), "{}\n").unwrap();
        fs::write(dir.join(NEXT_SEQ_FILE), "5").unwrap();
        fs::create_dir_all(dir.join("lost+found")).unwrap();
        let root = SpoolRoot::open(&dir).unwrap();
        let own = root.take_own().unwrap();
        assert_eq!(own.id(), "abc123");
        assert!(own.path().join("00000000000000000004.jsonl").exists());
        assert!(own.path().join(NEXT_SEQ_FILE).exists());
        assert!(!dir.join(LEGACY_INSTANCE_FILE).exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
