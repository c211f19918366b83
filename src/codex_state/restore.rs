//! `rolloutd codex restore <BACKUP>`: puts a backup back over Codex's state database.
//!
//! Refused while anybody else uses the database. The check is a lock, not a process scan:
//! the connection switches to `locking_mode=EXCLUSIVE` and runs `BEGIN EXCLUSIVE`, which
//! needs an exclusive lock on the database file. In WAL mode every open connection (a Codex
//! process, idle or not) holds a shared lock on that file, so any of them makes the restore
//! fail with `inUse`; in rollback-journal mode only a connection inside a transaction holds
//! a lock. Once taken, the lock is kept until the restore is done, so nobody can open the
//! database meanwhile.
//!
//! Before anything is written, the rows the restore would revert are listed (the `threads`
//! rows whose `rollout_path`, `archived` or `archived_at` differ, or that exist on one side
//! only). Each backup rolloutd makes has a manifest beside it (`<backup>.changes.json`) of the
//! changes rolloutd made right after it; a difference the manifest does not explain was made
//! by someone else, Codex most likely (an archive, a resume), and the restore is refused
//! unless forced, so an old backup never silently undoes Codex's work.
//!
//! Then the current content is saved beside the index (a restore can be undone), the backup
//! is copied in with SQLite's backup API (a transaction, so a failure leaves the old
//! content), the database's journal mode is kept as it was, and `quick_check` must pass.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::db::{self, JournalMode, RowState};
use super::locate::Located;
use super::CodexStateError;

/// What a restore did.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreReport {
    pub db: PathBuf,
    pub restored_from: PathBuf,
    /// The content replaced, saved first.
    pub previous_saved_to: PathBuf,
    pub journal_mode: JournalMode,
    pub rows: usize,
    pub quick_check: String,
    /// The rows the restore put back, each with its state before and after.
    pub reverted: Vec<RowRevert>,
    /// True when rows changed by someone other than rolloutd were reverted (`--force`).
    pub forced: bool,
}

/// One row a restore changes: as it is now, and as the backup has it (`None`: no such row).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RowRevert {
    pub thread_id: String,
    pub current: Option<RowState>,
    pub backup: Option<RowState>,
    /// True when rolloutd itself made this change after taking the backup (its manifest says
    /// so); false for a change someone else made, which a restore would silently undo.
    pub by_rolloutd: bool,
}

/// One change rolloutd made to a row right after taking a backup, as kept in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestChange {
    pub thread_id: String,
    pub before: Option<RowState>,
    pub after: Option<RowState>,
}

/// The manifest file of a backup: `<backup>.changes.json`.
pub fn manifest_path(backup: &Path) -> PathBuf {
    let mut s = backup.as_os_str().to_owned();
    s.push(".changes.json");
    PathBuf::from(s)
}

/// Records the changes rolloutd made after taking `backup`. Best effort: without a
/// manifest, restoring that backup asks for `--force` whenever rows differ.
pub fn write_manifest(backup: &Path, changes: &[ManifestChange]) {
    let path = manifest_path(backup);
    let written = serde_json::to_vec_pretty(changes)
        .map_err(std::io::Error::other)
        .and_then(|bytes| {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)?;
            f.write_all(&bytes)
        });
    if let Err(e) = written {
        tracing::warn!(manifest = %path.display(), error = %e, "cannot record the changes made after a backup; restoring it will need --force");
    }
}

fn read_manifest(backup: &Path) -> Vec<ManifestChange> {
    std::fs::read(manifest_path(backup))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// The rows that differ between the database now and the backup, by thread id.
fn diff(
    current: Vec<db::ThreadRow>,
    backup: Vec<db::ThreadRow>,
    manifest: &[ManifestChange],
) -> Vec<RowRevert> {
    use std::collections::BTreeMap;
    let mut rows: BTreeMap<String, (Option<RowState>, Option<RowState>)> = BTreeMap::new();
    for r in current {
        rows.entry(r.thread_id).or_default().0 = Some(r.state);
    }
    for r in backup {
        rows.entry(r.thread_id).or_default().1 = Some(r.state);
    }
    rows.into_iter()
        .filter(|(_, (now, then))| now != then)
        .map(|(thread_id, (current, backup))| {
            let by_rolloutd = manifest
                .iter()
                .any(|m| m.thread_id == thread_id && m.before == backup && m.after == current);
            RowRevert {
                thread_id,
                current,
                backup,
                by_rolloutd,
            }
        })
        .collect()
}

/// Restores `backup` over the database at `located`; the replaced content goes to
/// `backup_dir` (never one of `forbidden`).
pub fn restore(
    located: &Located,
    backup: &Path,
    backup_dir: &Path,
    forbidden: &[PathBuf],
    force: bool,
) -> Result<RestoreReport, CodexStateError> {
    let path = &located.db;
    db::check_generation(located)?;
    let src = open_backup(backup)?;
    let journal = db::journal_mode(path)?;
    let mut conn = db::open_write(path, Duration::from_millis(100))?;
    lock_exclusively(&conn, path)?;
    db::check_schema(&conn, path)?;
    let current =
        db::read_rows(&conn).map_err(|e| CodexStateError::sqlite(path, "reading rows", e))?;
    let then =
        db::read_rows(&src).map_err(|e| CodexStateError::sqlite(backup, "reading rows", e))?;
    let reverted = diff(current, then, &read_manifest(backup));
    let foreign: Vec<RowRevert> = reverted
        .iter()
        .filter(|r| !r.by_rolloutd)
        .cloned()
        .collect();
    if !foreign.is_empty() && !force {
        return Err(CodexStateError::ChangedSinceBackup {
            path: path.clone(),
            backup: backup.to_owned(),
            rows: foreign,
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let previous = super::backup::create(&conn, path, backup_dir, forbidden, deadline)?;
    copy_into(&src, &mut conn, path)?;
    // The restore's own changes, so that restoring `previous` undoes it without --force.
    let undo: Vec<ManifestChange> = reverted
        .iter()
        .map(|r| ManifestChange {
            thread_id: r.thread_id.clone(),
            before: r.current.clone(),
            after: r.backup.clone(),
        })
        .collect();
    write_manifest(&previous, &undo);
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .map_err(|e| CodexStateError::sqlite(path, "reading the journal mode", e))?;
    let want = journal.as_str();
    if !mode.eq_ignore_ascii_case(want) {
        conn.query_row(&format!("PRAGMA journal_mode={want}"), [], |_| Ok(()))
            .map_err(|e| CodexStateError::sqlite(path, "restoring the journal mode", e))?;
    }
    let quick_check = db::quick_check(&conn, path)?;
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM threads", [], |r| r.get(0))
        .map_err(|e| CodexStateError::sqlite(path, "counting rows", e))?;
    Ok(RestoreReport {
        db: path.clone(),
        restored_from: backup.to_owned(),
        previous_saved_to: previous,
        journal_mode: journal,
        rows: usize::try_from(rows).unwrap_or(0),
        quick_check,
        forced: reverted.iter().any(|r| !r.by_rolloutd),
        reverted,
    })
}

/// Opens and checks the backup: a SQLite file, intact, with the columns rolloutd needs.
fn open_backup(backup: &Path) -> Result<Connection, CodexStateError> {
    db::journal_mode(backup)?;
    let src = Connection::open_with_flags(
        backup,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| CodexStateError::sqlite(backup, "opening the backup", e))?;
    let check = db::quick_check(&src, backup)?;
    if check != "ok" {
        return Err(CodexStateError::Refused {
            path: backup.to_owned(),
            what: format!("the backup fails quick_check ({check}); not restoring it"),
        });
    }
    db::check_schema(&src, backup)?;
    Ok(src)
}

/// Takes and keeps an exclusive lock on the database file, or says who is in the way.
fn lock_exclusively(conn: &Connection, path: &Path) -> Result<(), CodexStateError> {
    let in_use = |e: rusqlite::Error| {
        if super::is_busy(&e) {
            CodexStateError::InUse {
                path: path.to_owned(),
                detail: "another connection has the database open or locked".into(),
            }
        } else {
            CodexStateError::sqlite(path, "locking the database", e)
        }
    };
    conn.query_row("PRAGMA locking_mode=EXCLUSIVE", [], |_| Ok(()))
        .map_err(in_use)?;
    conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;")
        .map_err(in_use)
}

fn copy_into(src: &Connection, dst: &mut Connection, path: &Path) -> Result<(), CodexStateError> {
    let copy = Backup::new(src, dst)
        .map_err(|e| CodexStateError::sqlite(path, "starting the restore", e))?;
    // We hold the lock, so busy is not expected; still bounded.
    for _ in 0..100 {
        match copy
            .step(-1)
            .map_err(|e| CodexStateError::sqlite(path, "restoring", e))?
        {
            StepResult::Done => return Ok(()),
            StepResult::More => {}
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    Err(CodexStateError::Busy {
        path: path.to_owned(),
        op: "restoring",
        waited: Duration::from_secs(2),
    })
}
