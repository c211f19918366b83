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
//! rows that differ in any column or exist on one side only), and the other tables whose
//! content differs. rolloutd writes only `rollout_path`, `archived` and `archived_at`: a
//! difference in any other column or table was made by someone else. Each backup rolloutd makes has a manifest beside it (`<backup>.changes.json`) of the
//! changes rolloutd made right after it; a difference the manifest does not explain was made
//! by someone else, Codex most likely (an archive, a resume), and the restore is refused
//! unless forced, so an old backup never silently undoes Codex's work.
//!
//! Then the current content is saved beside the index (a restore can be undone), the backup
//! is copied in with SQLite's backup API (a transaction, so a failure leaves the old
//! content), the database's journal mode is kept as it was, and `quick_check` must pass.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
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
    /// Tables other than `threads` whose content the restore put back (rolloutd never
    /// writes them, so only with `--force`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reverted_tables: Vec<String>,
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
    /// Columns rolloutd never writes (a title, `updated_at`…) that differ: always someone
    /// else's change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_columns: Vec<String>,
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
/// `other_columns` names, per thread, the columns rolloutd never writes that differ.
fn diff(
    current: Vec<db::ThreadRow>,
    backup: Vec<db::ThreadRow>,
    manifest: &[ManifestChange],
    other_columns: &BTreeMap<String, Vec<String>>,
) -> Vec<RowRevert> {
    let mut rows: BTreeMap<String, (Option<RowState>, Option<RowState>)> = BTreeMap::new();
    for r in current {
        rows.entry(r.thread_id).or_default().0 = Some(r.state);
    }
    for r in backup {
        rows.entry(r.thread_id).or_default().1 = Some(r.state);
    }
    rows.into_iter()
        .filter(|(id, (now, then))| now != then || other_columns.contains_key(id))
        .map(|(thread_id, (current, backup))| {
            let other_columns = other_columns.get(&thread_id).cloned().unwrap_or_default();
            let by_rolloutd = other_columns.is_empty()
                && manifest
                    .iter()
                    .any(|m| m.thread_id == thread_id && m.before == backup && m.after == current);
            RowRevert {
                thread_id,
                current,
                backup,
                by_rolloutd,
                other_columns,
            }
        })
        .collect()
}

/// Columns of `threads` rolloutd writes (or keys by); every other column is someone else's.
const OURS: [&str; 4] = ["id", "rollout_path", "archived", "archived_at"];

/// What rolloutd never writes, as digests: the other columns of each `threads` row, and
/// every other table whole. A difference there was made by someone else.
struct Untouched {
    columns: Vec<String>,
    rows: HashMap<String, u64>,
    tables: BTreeMap<String, u64>,
}

fn quoted(columns: &[String]) -> String {
    if columns.is_empty() {
        return "''".to_owned();
    }
    columns
        .iter()
        .map(|c| format!("quote(\"{}\")", c.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join("||char(31)||")
}

fn digest(text: &str) -> u64 {
    // Compared within this process only, never stored: any stable-per-run hash will do.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

fn column_names(conn: &Connection, table: &str) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let names = stmt.query_map([table], |r| r.get(0))?;
    names.collect()
}

fn untouched(conn: &Connection) -> rusqlite::Result<Untouched> {
    let columns: Vec<String> = column_names(conn, "threads")?
        .into_iter()
        .filter(|c| !OURS.iter().any(|o| c.eq_ignore_ascii_case(o)))
        .collect();
    let mut rows = HashMap::new();
    let mut stmt = conn.prepare(&format!("SELECT id, {} FROM threads", quoted(&columns)))?;
    let mut it = stmt.query([])?;
    while let Some(r) = it.next()? {
        rows.insert(r.get::<_, String>(0)?, digest(&r.get::<_, String>(1)?));
    }
    let mut tables = BTreeMap::new();
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name != 'threads' \
             AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for table in names {
        let cols = column_names(conn, &table)?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {} FROM \"{}\"",
            quoted(&cols),
            table.replace('"', "\"\"")
        ))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut it = stmt.query([])?;
        while let Some(r) = it.next()? {
            r.get::<_, String>(0)?.hash(&mut h);
        }
        tables.insert(table, h.finish());
    }
    Ok(Untouched {
        columns,
        rows,
        tables,
    })
}

/// For each thread in both databases whose untouched columns differ, the names of those
/// columns (read one row at a time: only the rows that differ are read whole).
fn other_columns_changed(
    current: (&Connection, &Untouched),
    backup: (&Connection, &Untouched),
) -> rusqlite::Result<BTreeMap<String, Vec<String>>> {
    let mut out = BTreeMap::new();
    // Columns compared are those both sides have; one side's extra column is a schema
    // change, which `copy_into` puts back whole.
    let shared: Vec<String> = current
        .1
        .columns
        .iter()
        .filter(|c| backup.1.columns.contains(c))
        .cloned()
        .collect();
    let values = |conn: &Connection, id: &str| -> rusqlite::Result<Vec<String>> {
        let sql = format!(
            "SELECT {} FROM threads WHERE id = ?1",
            shared
                .iter()
                .map(|c| format!("quote(\"{}\")", c.replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(", ")
        );
        conn.query_row(&sql, [id], |r| {
            (0..shared.len()).map(|i| r.get::<_, String>(i)).collect()
        })
    };
    for (id, now) in &current.1.rows {
        let Some(then) = backup.1.rows.get(id) else {
            continue;
        };
        if now == then || shared.is_empty() {
            continue;
        }
        let (a, b) = (values(current.0, id)?, values(backup.0, id)?);
        let names: Vec<String> = shared
            .iter()
            .zip(a.iter().zip(&b))
            .filter(|(_, (x, y))| x != y)
            .map(|(c, _)| c.clone())
            .collect();
        if !names.is_empty() {
            out.insert(id.clone(), names);
        }
    }
    Ok(out)
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
    let now_untouched =
        untouched(&conn).map_err(|e| CodexStateError::sqlite(path, "reading rows", e))?;
    let then_untouched =
        untouched(&src).map_err(|e| CodexStateError::sqlite(backup, "reading rows", e))?;
    let other_columns = other_columns_changed((&conn, &now_untouched), (&src, &then_untouched))
        .map_err(|e| CodexStateError::sqlite(path, "comparing rows", e))?;
    let reverted = diff(current, then, &read_manifest(backup), &other_columns);
    let mut tables: Vec<String> = now_untouched
        .tables
        .iter()
        .filter(|(t, d)| then_untouched.tables.get(*t) != Some(*d))
        .map(|(t, _)| t.clone())
        .collect();
    tables.extend(
        then_untouched
            .tables
            .keys()
            .filter(|t| !now_untouched.tables.contains_key(*t))
            .cloned(),
    );
    let foreign: Vec<RowRevert> = reverted
        .iter()
        .filter(|r| !r.by_rolloutd)
        .cloned()
        .collect();
    if (!foreign.is_empty() || !tables.is_empty()) && !force {
        return Err(CodexStateError::ChangedSinceBackup {
            path: path.clone(),
            backup: backup.to_owned(),
            rows: foreign,
            tables,
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
        forced: reverted.iter().any(|r| !r.by_rolloutd) || !tables.is_empty(),
        reverted,
        reverted_tables: tables,
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
