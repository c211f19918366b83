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
//! Then the current content is saved beside the index (a restore can be undone), the backup
//! is copied in with SQLite's backup API (a transaction, so a failure leaves the old
//! content), the database's journal mode is kept as it was, and `quick_check` must pass.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::db::{self, JournalMode};
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
}

/// Restores `backup` over the database at `located`; the replaced content goes to
/// `backup_dir` (never one of `forbidden`).
pub fn restore(
    located: &Located,
    backup: &Path,
    backup_dir: &Path,
    forbidden: &[PathBuf],
) -> Result<RestoreReport, CodexStateError> {
    let path = &located.db;
    db::check_generation(located)?;
    let src = open_backup(backup)?;
    let journal = db::journal_mode(path)?;
    let mut conn = db::open_write(path, Duration::from_millis(100))?;
    lock_exclusively(&conn, path)?;
    db::check_schema(&conn, path)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let previous = super::backup::create(&conn, path, backup_dir, forbidden, deadline)?;
    copy_into(&src, &mut conn, path)?;
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
