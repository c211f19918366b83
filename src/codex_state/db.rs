//! Opening Codex's state database and reading what the audit needs.
//!
//! Reading never creates a file in the Codex home. SQLite's own read-only mode does not
//! promise that: a read-only connection to a WAL database whose `-wal` is absent creates
//! `-wal` and `-shm` and, being read-only, leaves them behind. So reads go:
//!
//! - rollback-journal database (`DELETE`, which `codex migrate-nfs-db` switches NFS homes
//!   to): `file:…?mode=ro`, which needs no companion files and works in a read-only directory;
//! - WAL database with a `-wal` file (Codex has it open, or left changes in it):
//!   `file:…?mode=ro`, sharing the existing `-wal`/`-shm` like any reader. When the `-shm`
//!   cannot be created or written (a read-only directory, another user's file), the read
//!   falls back to `immutable=1` and says so: changes still in the `-wal` are then not seen;
//! - WAL database without a `-wal` (nobody has it open, everything is checkpointed):
//!   `file:…?immutable=1`, which takes no locks and creates nothing. Since immutable reads
//!   are not protected against a writer, the file's identity, size and mtime are compared
//!   before and after the read (and the `-wal` must still be absent); a change retries, then
//!   falls back to `mode=ro`.
//!
//! Writing (repair, restore, auto-repair) opens read-write without `CREATE`, with a busy
//! timeout, and never changes the journal mode.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use super::{locate::Located, CodexStateError, KNOWN_GENERATIONS};
use crate::identity::Stamp;

/// How long a read waits for a lock before giving up.
pub const READ_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The columns rolloutd reads or writes, per table.
pub const REQUIRED: &[(&str, &[&str])] = &[
    (
        "threads",
        &["id", "rollout_path", "archived", "archived_at"],
    ),
    ("backfill_state", &["status", "updated_at"]),
];

/// The database's journal mode, from its header (bytes 18–19).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum JournalMode {
    Wal,
    /// A rollback journal (`DELETE`, `TRUNCATE` or `PERSIST`).
    Delete,
}

impl JournalMode {
    /// `"WAL"` or `"DELETE"`, as `PRAGMA journal_mode` spells them (upper case).
    pub fn as_str(self) -> &'static str {
        match self {
            JournalMode::Wal => "WAL",
            JournalMode::Delete => "DELETE",
        }
    }
}

/// How the database was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Access {
    /// `mode=ro`, with normal locking.
    ReadOnly,
    /// `immutable=1`: no locks, no companion files, the `-wal` not read.
    Immutable,
    ReadWrite,
}

/// What was opened, and how.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DbInfo {
    pub path: PathBuf,
    pub generation: u32,
    pub journal_mode: JournalMode,
    pub access: Access,
    /// Rows in `threads`.
    pub rows: usize,
    /// Sentences about how it was read (fallbacks and what they miss).
    pub notes: Vec<String>,
}

/// The part of a `threads` row rolloutd compares and may change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RowState {
    pub rollout_path: String,
    pub archived: i64,
    pub archived_at: Option<i64>,
}

/// One `threads` row as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThreadRow {
    pub thread_id: String,
    #[serde(flatten)]
    pub state: RowState,
}

/// The `backfill_state` singleton.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Backfill {
    pub status: String,
    pub last_watermark: Option<String>,
    pub updated_at: Option<i64>,
}

impl Backfill {
    /// True while a `running` backfill's lease is younger than [`super::BACKFILL_LEASE`].
    pub fn lease_fresh(&self, now: i64) -> bool {
        self.status == "running"
            && self
                .updated_at
                .is_some_and(|t| now.saturating_sub(t) < super::BACKFILL_LEASE.as_secs() as i64)
    }
}

/// Everything the audit reads, from one read transaction.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub info: DbInfo,
    pub rows: Vec<ThreadRow>,
    /// `None` when the singleton row is absent.
    pub backfill: Option<Backfill>,
}

/// Refuses a generation this build does not know.
pub fn check_generation(located: &Located) -> Result<(), CodexStateError> {
    if KNOWN_GENERATIONS.contains(&located.generation) {
        Ok(())
    } else {
        Err(CodexStateError::UnknownGeneration {
            path: located.db.clone(),
            generation: located.generation,
        })
    }
}

/// Reads the journal mode from the 100-byte header, checking the magic string.
pub fn journal_mode(path: &Path) -> Result<JournalMode, CodexStateError> {
    use std::io::Read;
    let mut header = [0u8; 100];
    let mut f = std::fs::File::open(path)
        .map_err(|e| CodexStateError::io(path, "opening to read its header", e))?;
    f.read_exact(&mut header)
        .map_err(|e| CodexStateError::NotSqlite {
            path: path.to_owned(),
            detail: format!("no 100-byte header: {e}"),
        })?;
    if &header[..16] != b"SQLite format 3\0" {
        return Err(CodexStateError::NotSqlite {
            path: path.to_owned(),
            detail: "bad magic string".into(),
        });
    }
    Ok(if header[18] == 2 && header[19] == 2 {
        JournalMode::Wal
    } else {
        JournalMode::Delete
    })
}

/// `path` with a suffix appended (`-wal`, `-shm`, `-journal`).
pub fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Reads the rows and the backfill state without creating anything beside the database.
pub fn read_snapshot(located: &Located) -> Result<Snapshot, CodexStateError> {
    let read = read_with(located, read_all)?;
    let (rows, backfill) = read.value;
    let info = DbInfo {
        path: located.db.clone(),
        generation: located.generation,
        journal_mode: read.journal,
        access: read.access,
        rows: 0,
        notes: read.notes,
    };
    Ok(snapshot(info, rows, backfill))
}

/// `rollout_path` of the row of `thread_id`, read as [`read_snapshot`] reads (nothing
/// created beside the database) but through the `threads` primary key, so its cost does
/// not grow with the number of threads. Codex writes ids as lowercase UUIDs; the id is
/// looked up as given and lowercased. `None` when there is no such row.
pub fn read_rollout_path(
    located: &Located,
    thread_id: &str,
) -> Result<Option<String>, CodexStateError> {
    let lower = thread_id.to_ascii_lowercase();
    read_with(located, |conn| {
        let missing = missing_columns(conn)?;
        if !missing.is_empty() {
            return Err(ReadError::Missing(missing));
        }
        Ok(conn
            .query_row(
                // The exact spelling first, should both exist.
                "SELECT rollout_path FROM threads WHERE id IN (?1, ?2) ORDER BY id = ?1 DESC LIMIT 1",
                [thread_id, lower.as_str()],
                |r| r.get(0),
            )
            .optional()?)
    })
    .map(|read| read.value)
}

/// What one read got, and how the database was opened for it.
struct Read<T> {
    value: T,
    journal: JournalMode,
    access: Access,
    notes: Vec<String>,
}

/// Runs `read` on a read-only connection opened as the module's doc says (immutable when
/// that creates nothing and the file did not change across the read, else `mode=ro`, else
/// immutable again when the companions cannot be made).
fn read_with<T>(
    located: &Located,
    read: impl Fn(&Connection) -> Result<T, ReadError>,
) -> Result<Read<T>, CodexStateError> {
    check_generation(located)?;
    let path = &located.db;
    let journal = journal_mode(path)?;
    let wal = companion(path, "-wal");
    let done = |value, access, notes| Read {
        value,
        journal,
        access,
        notes,
    };
    let mut notes = Vec::new();
    if journal == JournalMode::Wal && !wal.exists() {
        for _ in 0..3 {
            let before = stamp(path)?;
            let value = open_uri(path, "immutable=1").and_then(|c| read(&c));
            let after = stamp(path)?;
            if before != after || wal.exists() {
                continue;
            }
            let value = value.map_err(|e| classify(path, e))?;
            notes.push(
                "WAL database with no -wal file (nobody has it open): read with immutable=1, \
                 which creates no -wal/-shm in the Codex home; the file was unchanged across the read"
                    .to_owned(),
            );
            return Ok(done(value, Access::Immutable, notes));
        }
        notes.push(
            "the file changed during an immutable read (Codex started?); read again with mode=ro"
                .to_owned(),
        );
    }
    match open_uri(path, "mode=ro").and_then(|c| read(&c)) {
        Ok(value) => Ok(done(value, Access::ReadOnly, notes)),
        Err(e) if journal == JournalMode::Wal && may_fall_back(&e) => {
            let wal_bytes = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
            notes.push(format!(
                "mode=ro failed ({e}): the -shm/-wal cannot be created or written (read-only \
                 directory?); read with immutable=1 instead{}",
                if wal_bytes > 0 {
                    format!(", so the {wal_bytes} bytes in the -wal file (changes Codex has not checkpointed) were not seen")
                } else {
                    String::new()
                }
            ));
            let value = open_uri(path, "immutable=1")
                .and_then(|c| read(&c))
                .map_err(|e| classify(path, e))?;
            Ok(done(value, Access::Immutable, notes))
        }
        Err(e) => Err(classify(path, e)),
    }
}

fn snapshot(mut info: DbInfo, rows: Vec<ThreadRow>, backfill: Option<Backfill>) -> Snapshot {
    info.rows = rows.len();
    Snapshot {
        info,
        rows,
        backfill,
    }
}

/// A read failure: a missing-columns schema keeps its own error.
enum ReadError {
    Sql(rusqlite::Error),
    Missing(Vec<String>),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Sql(e) => e.fmt(f),
            ReadError::Missing(m) => write!(f, "missing {}", m.join(", ")),
        }
    }
}

impl From<rusqlite::Error> for ReadError {
    fn from(e: rusqlite::Error) -> Self {
        ReadError::Sql(e)
    }
}

fn classify(path: &Path, e: ReadError) -> CodexStateError {
    match e {
        ReadError::Missing(missing) => CodexStateError::Schema {
            path: path.to_owned(),
            missing,
        },
        ReadError::Sql(e) => CodexStateError::sqlite(path, "reading threads", e),
    }
}

/// Errors that mean "the companion files cannot be made or used", not damage or a lock.
fn may_fall_back(e: &ReadError) -> bool {
    let ReadError::Sql(e) = e else { return false };
    e.sqlite_error_code().is_some_and(|c| {
        matches!(
            c,
            rusqlite::ErrorCode::CannotOpen
                | rusqlite::ErrorCode::ReadOnly
                | rusqlite::ErrorCode::PermissionDenied
                | rusqlite::ErrorCode::SystemIoFailure
        )
    })
}

fn stamp(path: &Path) -> Result<Stamp, CodexStateError> {
    Stamp::of(path).map_err(|e| CodexStateError::io(path, "stat", e))
}

/// Opens `file:<path>?<query>` read-only.
fn open_uri(path: &Path, query: &str) -> Result<Connection, ReadError> {
    let uri = format!("file:{}?{query}", uri_path(path));
    let conn = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_URI
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(READ_BUSY_TIMEOUT)?;
    Ok(conn)
}

/// Percent-encodes a path for a `file:` URI (`?`, `#`, `%` and anything unusual).
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let absolute = crate::identity::normalize_lexically(path);
    let mut out = String::new();
    for &b in absolute.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/._-~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The schema check, then every row and the backfill state, in one read transaction.
fn read_all(conn: &Connection) -> Result<(Vec<ThreadRow>, Option<Backfill>), ReadError> {
    let tx = conn.unchecked_transaction()?;
    let missing = missing_columns(&tx)?;
    if !missing.is_empty() {
        return Err(ReadError::Missing(missing));
    }
    let rows = read_rows(&tx)?;
    let backfill = read_backfill(&tx)?;
    tx.finish()?;
    Ok((rows, backfill))
}

/// `table.column` (or `table`) for each required piece the schema lacks.
pub fn missing_columns(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut missing = Vec::new();
    for (table, columns) in REQUIRED {
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1)")?;
        let have: Vec<String> = stmt
            .query_map([table], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if have.is_empty() {
            missing.push(format!("table {table}"));
            continue;
        }
        for c in *columns {
            if !have.iter().any(|h| h.eq_ignore_ascii_case(c)) {
                missing.push(format!("column {table}.{c}"));
            }
        }
    }
    Ok(missing)
}

/// Refuses a connection whose schema lacks a required piece.
pub fn check_schema(conn: &Connection, path: &Path) -> Result<(), CodexStateError> {
    let missing = missing_columns(conn)
        .map_err(|e| CodexStateError::sqlite(path, "reading the schema", e))?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CodexStateError::Schema {
            path: path.to_owned(),
            missing,
        })
    }
}

pub fn read_rows(conn: &Connection) -> rusqlite::Result<Vec<ThreadRow>> {
    let mut stmt =
        conn.prepare("SELECT id, rollout_path, archived, archived_at FROM threads ORDER BY id")?;
    let rows = stmt.query_map([], |r| {
        Ok(ThreadRow {
            thread_id: r.get(0)?,
            state: RowState {
                rollout_path: r.get(1)?,
                archived: r.get(2)?,
                archived_at: r.get(3)?,
            },
        })
    })?;
    rows.collect()
}

/// The current state of one row, `None` when it is gone.
pub fn read_row(conn: &Connection, thread_id: &str) -> rusqlite::Result<Option<RowState>> {
    conn.query_row(
        "SELECT rollout_path, archived, archived_at FROM threads WHERE id = ?1",
        [thread_id],
        |r| {
            Ok(RowState {
                rollout_path: r.get(0)?,
                archived: r.get(1)?,
                archived_at: r.get(2)?,
            })
        },
    )
    .optional()
}

pub fn read_backfill(conn: &Connection) -> rusqlite::Result<Option<Backfill>> {
    // `last_watermark` is optional in the check; read it only when present.
    let has_watermark: bool = conn.query_row(
        "SELECT count(*) FROM pragma_table_info('backfill_state') WHERE name = 'last_watermark'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    let sql = if has_watermark {
        "SELECT status, last_watermark, updated_at FROM backfill_state ORDER BY rowid LIMIT 1"
    } else {
        "SELECT status, NULL, updated_at FROM backfill_state ORDER BY rowid LIMIT 1"
    };
    conn.query_row(sql, [], |r| {
        Ok(Backfill {
            status: r.get(0)?,
            last_watermark: r.get(1)?,
            updated_at: r.get(2)?,
        })
    })
    .optional()
}

/// Opens the database read-write (never creating it), with the given busy timeout.
pub fn open_write(path: &Path, busy: Duration) -> Result<Connection, CodexStateError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| CodexStateError::sqlite(path, "opening read-write", e))?;
    conn.busy_timeout(busy)
        .map_err(|e| CodexStateError::sqlite(path, "setting the busy timeout", e))?;
    Ok(conn)
}

/// `PRAGMA quick_check`: `"ok"` or the problems it lists.
pub fn quick_check(conn: &Connection, path: &Path) -> Result<String, CodexStateError> {
    let mut stmt = conn
        .prepare("PRAGMA quick_check")
        .map_err(|e| CodexStateError::sqlite(path, "running quick_check", e))?;
    let lines: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| CodexStateError::sqlite(path, "running quick_check", e))?;
    Ok(lines.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A WAL database of `n` threads, closed (so no `-wal` is left), and where it is.
    fn threads(dir: &Path, n: usize) -> Located {
        let db = dir.join("state_5.sqlite");
        let conn = Connection::open(&db).unwrap();
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
        conn.execute_batch(
            "CREATE TABLE threads (id TEXT PRIMARY KEY, rollout_path TEXT NOT NULL,
                 archived INTEGER NOT NULL DEFAULT 0, archived_at INTEGER);
             CREATE TABLE backfill_state (status TEXT, updated_at INTEGER);",
        )
        .unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for i in 0..n {
            tx.execute(
                "INSERT INTO threads (id, rollout_path) VALUES (?1, ?2)",
                [format!("0000{i:04x}-aaaa"), format!("/h/r-{i}.jsonl")],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        drop(conn);
        Located {
            db,
            generation: 5,
            sqlite_home: dir.to_owned(),
            from: "codexHome",
            older: vec![],
        }
    }

    #[test]
    fn one_row_is_read_by_its_id_through_the_primary_key() {
        let dir = tempfile::tempdir().unwrap();
        let located = threads(dir.path(), 1000);
        assert_eq!(
            read_rollout_path(&located, "000003e7-aaaa")
                .unwrap()
                .as_deref(),
            Some("/h/r-999.jsonl")
        );
        // Ids are compared as Codex writes them (lowercase), whatever the client's case.
        assert_eq!(
            read_rollout_path(&located, "000003E7-AAAA")
                .unwrap()
                .as_deref(),
            Some("/h/r-999.jsonl")
        );
        assert_eq!(read_rollout_path(&located, "00000fff-aaaa").unwrap(), None);
        // The lookup is the index's, not a scan of the table.
        let conn = Connection::open(&located.db).unwrap();
        let plan: String = conn
            .query_row(
                "EXPLAIN QUERY PLAN SELECT rollout_path FROM threads WHERE id IN (?1, ?2) ORDER BY id = ?1 DESC LIMIT 1",
                ["a", "b"],
                |r| r.get(3),
            )
            .unwrap();
        assert!(plan.contains("USING INDEX"), "{plan}");
        drop(conn);
        // Nothing was created beside the database by the reads.
        for suffix in ["-wal", "-shm"] {
            assert!(!companion(&located.db, suffix).exists(), "{suffix} left");
        }
    }

    #[test]
    fn a_lookup_in_a_database_without_the_columns_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state_5.sqlite");
        Connection::open(&db)
            .unwrap()
            .execute_batch("CREATE TABLE threads (id TEXT PRIMARY KEY);")
            .unwrap();
        let located = Located {
            db,
            generation: 5,
            sqlite_home: dir.path().to_owned(),
            from: "codexHome",
            older: vec![],
        };
        let err = read_rollout_path(&located, "x").unwrap_err().to_string();
        assert!(err.contains("rollout_path"), "{err}");
    }
}
