//! Backups of Codex's state database with SQLite's online backup API.
//!
//! A backup is a consistent copy taken through a connection (so a concurrent Codex writer is
//! honoured), written to a new timestamped file `codex-state_<N>-<UTC time>.sqlite` beside
//! rolloutd's index and never inside the Codex home or the SQLite home. The copy is switched
//! to the `DELETE` journal so it is one self-contained file, and checked with `quick_check`.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::Connection;

use super::CodexStateError;
use crate::identity;

/// Copies the database open on `src` (whose file is `src_path`) into a new file in `dir`.
///
/// `forbidden` are directories the backup must not be written into (the Codex home and the
/// SQLite home). A busy source is retried until `deadline`.
pub fn create(
    src: &Connection,
    src_path: &Path,
    dir: &Path,
    forbidden: &[PathBuf],
    deadline: Instant,
) -> Result<PathBuf, CodexStateError> {
    create_dir(dir)?;
    let real_dir = identity::canonicalize(dir)
        .map_err(|e| CodexStateError::io(dir, "resolving the backup directory", e))?;
    for f in forbidden {
        let real = identity::canonicalize(f).unwrap_or_else(|_| f.clone());
        if real_dir.starts_with(&real) {
            return Err(CodexStateError::Refused {
                path: dir.to_owned(),
                what: format!(
                    "backups must not go inside {} (a Codex directory); move rolloutd's index elsewhere",
                    f.display()
                ),
            });
        }
    }
    let target = new_file(dir, src_path)?;
    match copy(src, src_path, &target, deadline) {
        Ok(()) => Ok(target),
        Err(e) => {
            let _ = std::fs::remove_file(&target);
            Err(e)
        }
    }
}

fn copy(
    src: &Connection,
    src_path: &Path,
    target: &Path,
    deadline: Instant,
) -> Result<(), CodexStateError> {
    let started = Instant::now();
    let mut dst = Connection::open(target)
        .map_err(|e| CodexStateError::sqlite(target, "opening the backup file", e))?;
    {
        let backup = Backup::new(src, &mut dst)
            .map_err(|e| CodexStateError::sqlite(target, "starting the backup", e))?;
        // Bounded in count and time: each busy step waits 50 ms.
        let mut steps = 0u32;
        loop {
            steps += 1;
            match backup
                .step(-1)
                .map_err(|e| CodexStateError::sqlite(src_path, "backing up", e))?
            {
                StepResult::Done => break,
                StepResult::More => {}
                _ if Instant::now() >= deadline || steps >= 10_000 => {
                    return Err(CodexStateError::Busy {
                        path: src_path.to_owned(),
                        op: "backing up",
                        waited: started.elapsed(),
                    })
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
    dst.query_row("PRAGMA journal_mode=DELETE", [], |_| Ok(()))
        .map_err(|e| CodexStateError::sqlite(target, "setting the backup's journal mode", e))?;
    let check = super::db::quick_check(&dst, target)?;
    if check != "ok" {
        return Err(CodexStateError::Refused {
            path: target.to_owned(),
            what: format!("the backup failed quick_check: {check}"),
        });
    }
    Ok(())
}

fn create_dir(dir: &Path) -> Result<(), CodexStateError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CodexStateError::io(dir, "creating the backup directory", e))
}

/// A new, empty, private file `codex-<stem>-<UTC time>[-n].sqlite` in `dir`.
fn new_file(dir: &Path, src_path: &Path) -> Result<PathBuf, CodexStateError> {
    let stem = src_path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("state");
    let stamp: String = humantime::format_rfc3339_millis(std::time::SystemTime::now())
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    for n in 0..100 {
        let name = if n == 0 {
            format!("codex-{stem}-{stamp}.sqlite")
        } else {
            format!("codex-{stem}-{stamp}-{n}.sqlite")
        };
        let path = dir.join(name);
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(_) => return Ok(path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(CodexStateError::io(&path, "creating the backup file", e)),
        }
    }
    Err(CodexStateError::Refused {
        path: dir.to_owned(),
        what: "100 backups in the same millisecond".into(),
    })
}
