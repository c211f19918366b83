//! The SQLite index: a cache of what every rollout file's head says, keyed by canonical path
//! and carrying each file's identity stamp. The only module that speaks SQL.
//!
//! One writer connection per process ([`Index::open`]); readers open their own connections
//! ([`Index::open_reader`]). A corrupt or unreadable index is moved aside and rebuilt: the
//! filesystem is the truth, so nothing is lost.

mod change;
mod fresh;
mod schema;
mod seal;

pub use change::{
    problem_change, thread_change, thread_changes, Change, ChangeSink, ProblemChange, ThreadChange,
};
pub use fresh::FreshBuild;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use crate::identity::{FileId, FileKind, Stamp};
use crate::rollout::{Compression, ProblemKind, RolloutHead};

/// An index failure, with the index path and what was being done.
#[derive(Debug, thiserror::Error)]
#[error("index {}: {action}: {source}", path.display())]
pub struct IndexError {
    pub path: PathBuf,
    pub action: &'static str,
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// One indexed rollout file: its identity stamp and what its head says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedFile {
    /// Canonical path (symlinks resolved).
    pub path: PathBuf,
    /// Realpath of the home the file belongs to.
    pub home: PathBuf,
    pub stamp: Stamp,
    /// True when the file lies under `archived_sessions/`.
    pub archived: bool,
    pub compression: Compression,
    pub head: RolloutHead,
}

impl IndexedFile {
    pub fn thread_id(&self) -> &str {
        &self.head.thread_id
    }

    /// The thread's start in ms since the epoch, from `session_meta.timestamp`.
    pub fn created_at_ms(&self) -> Option<i64> {
        let ts = self.head.timestamp.as_deref()?;
        let t = humantime::parse_rfc3339_weak(ts.trim_end_matches('Z')).ok()?;
        let ms = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
        i64::try_from(ms).ok()
    }
}

/// A recorded problem with a path in a home.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProblemRow {
    pub path: PathBuf,
    pub home: PathBuf,
    pub kind: ProblemKind,
    pub detail: String,
    /// The thread involved, when known (name mismatches, duplicates).
    pub thread_id: Option<String>,
}

/// Which archive state a listing wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchivedFilter {
    Active,
    Archived,
    All,
}

/// A page request for [`Index::list`].
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub archived: ArchivedFilter,
    /// Exact `session_meta.cwd` values to match (the caller passes every spelling).
    pub cwd: Vec<String>,
    /// Case-insensitive substring of the title or cwd.
    pub search: Option<String>,
    pub limit: usize,
    /// Continue after this (created_at_ms, thread_id).
    pub after: Option<(i64, String)>,
}

/// Row counts for status lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub files: u64,
    pub threads: u64,
    pub archived: u64,
    pub problems: u64,
}

/// Journal mode. WAL needs shared memory that network filesystems do not provide, so the
/// agent asks for `Delete` when the index must live on one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Journal {
    Wal,
    Delete,
}

/// Access to the process's one writer connection: directly, or shared behind a mutex by
/// the agent so that a long crawl yields to queries between batches.
pub trait IndexAccess {
    fn with<R>(&self, f: impl FnOnce(&Index) -> R) -> R;
}

impl IndexAccess for Index {
    fn with<R>(&self, f: impl FnOnce(&Index) -> R) -> R {
        f(self)
    }
}

impl IndexAccess for std::sync::Mutex<Index> {
    fn with<R>(&self, f: impl FnOnce(&Index) -> R) -> R {
        // A panic mid-query leaves no half-state in SQLite (transactions roll back).
        let guard = self
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&guard)
    }
}

/// One transaction's worth of writes (see [`Index::apply`]).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub files: Vec<IndexedFile>,
    pub problems: Vec<ProblemRow>,
    pub removed: Vec<PathBuf>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.problems.is_empty() && self.removed.is_empty()
    }
}

/// What a connection may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The process's one writer.
    Writer,
    /// [`Index::open_reader`]: every write is refused (and remembered, see
    /// [`Index::take_refused_write`]) so the caller can run the query on the writer.
    Reader,
    /// [`Index::open_guest`]: another process (the agent) owns the index; reads work, work
    /// that ends in a write is done, and the write itself is skipped, so answers are still
    /// verified against the files but nothing is cached and the owner misses no change.
    Guest,
}

/// The tables keyed by path, for [`Index::paths_page_at_or_under`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathTable {
    Files,
    Problems,
}

/// A connection to the index.
pub struct Index {
    conn: Connection,
    path: PathBuf,
    /// Why the last write failed for lack of resources (disk full, I/O error, read-only);
    /// cleared by the next write that succeeds. See [`Index::degraded`].
    /// Shared with the readers opened beside it ([`Index::open_reader_beside`]).
    degraded: Arc<std::sync::Mutex<Option<String>>>,
    mode: Mode,
    refused_write: std::cell::Cell<bool>,
    /// Where committed changes go (the agent's publisher); none in a CLI run.
    sink: Option<Arc<dyn ChangeSink>>,
    /// On the writer: bumped to odd before each write transaction and to even after it
    /// ends, so readers can tell whether their open snapshot may lack a commit (see
    /// [`Index::begin_read_batch`]).
    writes: Option<Arc<AtomicU64>>,
    /// On a reader in WAL mode: the `writes` value read before its open read transaction
    /// began, while it holds one.
    batch: std::cell::Cell<Option<u64>>,
    /// On the writer: called before each write transaction begins (see
    /// [`Index::set_before_write`]).
    before_write: Option<Arc<dyn Fn() + Send + Sync>>,
    /// The journal is a WAL (a reader's open snapshot then blocks no writer).
    wal: bool,
    /// On the writer: opened on a seal, without the full check (see `seal`).
    sealed_at_open: bool,
    /// A write failed for want of resources since the open (even if later ones succeeded):
    /// what this connection wrote may be incomplete.
    write_failed: std::cell::Cell<bool>,
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the closing checkpoint waits for other processes' reads.
const CLOSE_BUSY_TIMEOUT: Duration = Duration::from_millis(200);

/// The writer's page cache between reconciles, in KiB: its writes are a few rows at a time,
/// and a larger cache would stay resident for the agent's whole life.
const IDLE_CACHE_KIB: u32 = 512;
/// The writer's page cache while a reconcile runs (SQLite's default), in KiB: a cold bulk
/// load inserts into `files_thread` in random order.
const RECONCILE_CACHE_KIB: u32 = 2000;

/// SQLite's default WAL auto-checkpoint interval, in pages.
const DEFAULT_AUTOCHECKPOINT: u32 = 1000;
/// The interval during a bulk load (see [`Index::begin_bulk_load`]): 64 MB of WAL.
const BULK_AUTOCHECKPOINT: u32 = 16384;
/// What a WAL grown by a bulk load is cut back to once checkpointed, in bytes.
const WAL_SIZE_LIMIT: u32 = 4 << 20;

const FILE_COLUMNS: &str = "path, home, dev, ino, size, mtime_ns, thread_id, archived, \
     compression, created_at_ms, cwd, source, originator, cli_version, model_provider, \
     forked_from_id, git_branch, title, ctime_ns, thread_id_as_written, btime_ns";

/// [`FILE_COLUMNS`] of the table aliased `f`, for joins.
const FILE_COLUMNS_OF_F: &str = "f.path, f.home, f.dev, f.ino, f.size, f.mtime_ns, f.thread_id, \
     f.archived, f.compression, f.created_at_ms, f.cwd, f.source, f.originator, f.cli_version, \
     f.model_provider, f.forked_from_id, f.git_branch, f.title, f.ctime_ns, f.thread_id_as_written, \
     f.btime_ns";

impl Index {
    /// Opens (creating if needed) the writer connection. A corrupt, unreadable or
    /// newer-than-known index is moved aside to `<name>.corrupt-<unix secs>` and rebuilt.
    pub fn open(path: &Path, journal: Journal) -> Result<Index, IndexError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_private_dir(parent).map_err(|e| err(path, "creating its directory", e))?;
        }
        fresh::remove_abandoned_builds(path);
        // A busy or locked database is another process at work (a concurrent CLI run, the
        // agent): wait for it, boundedly. Only real damage moves the file aside.
        let mut attempts = 0;
        loop {
            match Index::try_open(path, journal) {
                Ok(index) => return Ok(index),
                Err(e) if is_transient(&*e) && attempts < 50 => {
                    attempts += 1;
                    std::thread::sleep(Duration::from_millis(20 * attempts.min(10)));
                }
                Err(e) if is_transient(&*e) => {
                    return Err(err(path, "opening (the index stayed locked)", e))
                }
                // A full disk or a read-only directory is not damage: moving the index
                // aside would not help, and would lose a good index.
                Err(e) if is_out_of_space(&*e) => return Err(err(path, "opening", e)),
                Err(reason) => {
                    let aside = move_aside(path)
                        .map_err(|e| err(path, "moving a corrupt index aside", e))?;
                    tracing::warn!(
                        index = %path.display(),
                        moved_to = %aside.display(),
                        %reason,
                        "index unusable; moved aside and rebuilding from the filesystem"
                    );
                    return Index::try_open(path, journal).map_err(|e| err(path, "rebuilding", e));
                }
            }
        }
    }

    fn try_open(
        path: &Path,
        journal: Journal,
    ) -> Result<Index, Box<dyn std::error::Error + Send + Sync>> {
        // Left by the last writer's clean close for the file as it still is: the full
        // check can be skipped (see `seal`).
        let sealed = seal::take(path);
        if sealed {
            tracing::debug!(index = %path.display(), "index unchanged since a clean close; quick_check skipped");
        }
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode = match journal {
            Journal::Wal => "WAL",
            Journal::Delete => "DELETE",
        };
        conn.query_row(&format!("PRAGMA journal_mode={mode}"), [], |_| Ok(()))?;
        conn.execute_batch(&format!(
            "PRAGMA synchronous=NORMAL; PRAGMA temp_store=MEMORY; PRAGMA cache_size=-{IDLE_CACHE_KIB};"
        ))?;
        if !sealed {
            let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
            if check != "ok" {
                return Err(format!("quick_check: {check}").into());
            }
        }
        match schema::migrate(&mut conn) {
            Ok(()) => {}
            Err(schema::SchemaError::TooNew(v)) => {
                return Err(format!(
                    "schema version {v} is newer than this build's {}",
                    schema::VERSION
                )
                .into())
            }
            Err(schema::SchemaError::Sql(e)) => return Err(e.into()),
        }
        Ok(Index::writer(conn, path, journal == Journal::Wal, sealed))
    }

    /// The writer over `conn`, open on `path` with its schema up to date.
    fn writer(conn: Connection, path: &Path, wal: bool, sealed_at_open: bool) -> Index {
        Index {
            conn,
            path: path.to_owned(),
            degraded: Default::default(),
            mode: Mode::Writer,
            refused_write: std::cell::Cell::new(false),
            sink: None,
            writes: None,
            batch: std::cell::Cell::new(None),
            before_write: None,
            wal,
            sealed_at_open,
            write_failed: std::cell::Cell::new(false),
        }
    }

    /// Sends every committed write's changes to `sink`, in commit order.
    pub fn set_sink(&mut self, sink: Arc<dyn ChangeSink>) {
        self.sink = Some(sink);
    }

    /// Counts this writer's write transactions into `writes` (odd while one runs), for
    /// readers that keep a read transaction across requests ([`Index::begin_read_batch`]).
    pub fn set_write_counter(&mut self, writes: Arc<AtomicU64>) {
        self.writes = Some(writes);
    }

    /// Calls `f` before each write transaction begins, once `writes` is odd (the agent
    /// ends its readers' kept snapshots there, so the write can restart the WAL).
    pub fn set_before_write(&mut self, f: Arc<dyn Fn() + Send + Sync>) {
        self.before_write = Some(f);
    }

    /// On a reader: reads from here on share one read transaction (one snapshot, and none
    /// of SQLite's per-transaction file locking and change checks) as long as `writes`,
    /// the writer's counter, has not moved since that transaction began; when it has, the
    /// snapshot is renewed. A read therefore sees every commit that ended before it was
    /// asked for: a commit bumps `writes` before it begins, and a snapshot is kept only
    /// while `writes` has stayed the same even value since before the snapshot was taken.
    /// This holds because the writer is the process's only one (the instance lock; other
    /// processes open the index as guests, which never write).
    ///
    /// The caller ends the batch with [`Index::end_read_batch`] before it waits for
    /// anything: an open snapshot keeps checkpoints from reclaiming the WAL. Without WAL
    /// (a read lock would block the writer) this does nothing.
    pub fn begin_read_batch(&self, writes: &AtomicU64) {
        if self.mode != Mode::Reader || !self.wal {
            return;
        }
        let now = writes.load(AtomicOrdering::SeqCst);
        match self.batch.get() {
            // An error inside the transaction may have ended it (autocommit again).
            Some(began) if began == now && !self.conn.is_autocommit() => return,
            Some(_) => self.end_read_batch(),
            None => {}
        }
        // While a write runs, each read takes its own snapshot, as without batches.
        if now % 2 == 0 && self.conn.execute_batch("BEGIN").is_ok() {
            self.batch.set(Some(now));
        }
    }

    /// Ends the read transaction [`Index::begin_read_batch`] left open, if any.
    pub fn end_read_batch(&self) {
        if self.batch.take().is_some() && !self.conn.is_autocommit() {
            // A read transaction has nothing to lose; ROLLBACK cannot fail for want of a
            // lock, and if it fails the connection still ends it before its next BEGIN.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Opens a read-only connection to an index a writer already created.
    ///
    /// A reader answers the read-only part of a query. Anything that would write (a
    /// read-repair, a walk of the homes, a reconcile) is refused with an error and flagged,
    /// so the caller can run the whole query again on the writer, even where the query
    /// itself turned that error into an answer.
    pub fn open_reader(path: &Path) -> Result<Index, IndexError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| err(path, "opening for reading", e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| err(path, "setting the busy timeout", e))?;
        // The OS caches the file; a small private page cache keeps each reader lean.
        conn.execute_batch("PRAGMA cache_size=-512;")
            .map_err(|e| err(path, "sizing the page cache", e))?;
        let journal: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(|e| err(path, "reading the journal mode", e))?;
        Ok(Index {
            conn,
            path: path.to_owned(),
            degraded: Default::default(),
            mode: Mode::Reader,
            refused_write: std::cell::Cell::new(false),
            sink: None,
            writes: None,
            batch: std::cell::Cell::new(None),
            before_write: None,
            wal: journal.eq_ignore_ascii_case("wal"),
            sealed_at_open: false,
            write_failed: std::cell::Cell::new(false),
        })
    }

    /// A reader on this index's file that shares its degraded state: a query answered on
    /// the reader refuses an incomplete listing exactly as the writer would.
    pub fn open_reader_beside(&self) -> Result<Index, IndexError> {
        self.reader_opener().open()
    }

    /// What opens more readers like [`Index::open_reader_beside`], without this connection.
    pub fn reader_opener(&self) -> ReaderOpener {
        ReaderOpener {
            path: self.path.clone(),
            degraded: Arc::clone(&self.degraded),
        }
    }
}

/// Opens read-only connections on one index, sharing its degraded state.
#[derive(Clone)]
pub struct ReaderOpener {
    path: PathBuf,
    degraded: Arc<std::sync::Mutex<Option<String>>>,
}

impl ReaderOpener {
    pub fn open(&self) -> Result<Index, IndexError> {
        let mut reader = Index::open_reader(&self.path)?;
        reader.degraded = Arc::clone(&self.degraded);
        Ok(reader)
    }
}

impl Index {
    /// Opens an index another process owns (a running agent) without ever writing to it:
    /// queries verify against the files as usual and their cache writes are skipped. The
    /// owner alone writes, so it alone announces changes and none goes unannounced.
    pub fn open_guest(path: &Path) -> Result<Index, IndexError> {
        let mut index = Index::open_reader(path)?;
        index.mode = Mode::Guest;
        Ok(index)
    }

    /// Fails on a reader connection (and flags it, see [`Index::take_refused_write`]); a
    /// caller about to do work that ends in a write (a head read to repair a row, a walk)
    /// checks first, so a reader never does that work for nothing.
    pub fn require_writer(&self, action: &'static str) -> Result<(), IndexError> {
        if self.mode == Mode::Reader {
            self.refused_write.set(true);
            return Err(err(&self.path, action, "needs the writer connection"));
        }
        Ok(())
    }

    /// True (once) when this reader refused a write since the last call: the answer it
    /// gave may lack a repair, and the query must run again on the writer.
    pub fn take_refused_write(&self) -> bool {
        self.refused_write.replace(false)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The writer was opened on the seal of a clean close, so `PRAGMA quick_check` did not
    /// run (the file is as the last writer left it).
    pub fn sealed_at_open(&self) -> bool {
        self.sealed_at_open
    }

    /// Opened with [`Index::open_guest`]: nothing is written.
    pub fn is_guest(&self) -> bool {
        self.mode == Mode::Guest
    }

    /// Why the index cannot take writes right now (the disk is full, an I/O error, it was
    /// made read-only), or `None` when the last write succeeded. Reads still work while it
    /// is degraded; answers are verified against the files as always.
    pub fn degraded(&self) -> Option<String> {
        self.degraded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_degraded(&self, reason: Option<String>) {
        if reason.is_some() {
            self.write_failed.set(true);
        }
        let mut slot = self
            .degraded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (&*slot, &reason) {
            (None, Some(why)) => {
                tracing::warn!(index = %self.path.display(), reason = %why, "index writes failing; degraded: answering from verified file reads")
            }
            (Some(_), None) => {
                tracing::info!(index = %self.path.display(), "index writes succeed again; no longer degraded")
            }
            _ => {}
        }
        *slot = reason;
    }

    /// Inserts or replaces files (forgetting any problem recorded at their paths), then
    /// records `problems`, in one transaction, so a crash never leaves a file's row without
    /// the warnings read with it (a row whose stamp is unchanged is never read again).
    pub fn upsert_files_with_problems(
        &self,
        files: &[IndexedFile],
        problems: &[ProblemRow],
    ) -> Result<Vec<Change>, IndexError> {
        self.apply(
            "upserting files and problems",
            &Batch {
                files: files.to_vec(),
                problems: problems.to_vec(),
                removed: Vec::new(),
            },
        )
    }

    /// Removes the rows (and problems) of paths that are gone.
    pub fn remove_paths(&self, paths: &[PathBuf]) -> Result<Vec<Change>, IndexError> {
        self.apply(
            "removing files",
            &Batch {
                removed: paths.to_vec(),
                ..Batch::default()
            },
        )
    }

    /// Records problems, replacing any earlier problem at the same path. A problem that makes
    /// a file unusable also drops that path's file row.
    pub fn record_problems(&self, problems: &[ProblemRow]) -> Result<Vec<Change>, IndexError> {
        self.apply(
            "recording problems",
            &Batch {
                problems: problems.to_vec(),
                ..Batch::default()
            },
        )
    }

    /// The one write path: applies `batch` in one transaction and returns what it changed,
    /// decided from each touched thread's and path's rows before and after, inside that
    /// transaction. The changes also go to the sink (see [`Index::set_sink`]) after the
    /// commit, so whoever writes, each change is announced once, in commit order.
    ///
    /// Order inside the batch: files are upserted (forgetting problems at their paths),
    /// then problems recorded (an unusable file's row is dropped), then paths removed. A
    /// thread left with no file gets a tombstone (see [`Index::removed_thread`]).
    pub fn apply(&self, action: &'static str, batch: &Batch) -> Result<Vec<Change>, IndexError> {
        self.require_writer(action)?;
        if self.mode == Mode::Guest {
            return Ok(Vec::new());
        }
        // Odd while the transaction runs, even again when it ended (committed or not), on
        // every path out: readers' open snapshots are renewed across it.
        struct Counting<'a>(Option<&'a AtomicU64>);
        impl Drop for Counting<'_> {
            fn drop(&mut self) {
                if let Some(w) = self.0 {
                    w.fetch_add(1, AtomicOrdering::SeqCst);
                }
            }
        }
        let counting = Counting(self.writes.as_deref());
        if let Some(w) = counting.0 {
            w.fetch_add(1, AtomicOrdering::SeqCst);
        }
        if let Some(before) = &self.before_write {
            before();
        }
        let run = || -> rusqlite::Result<Vec<Change>> {
            // IMMEDIATE: the transaction reads before it writes, and a deferred one could
            // not upgrade its read lock while another process writes (SQLITE_BUSY at once,
            // whatever the busy timeout).
            let tx = rusqlite::Transaction::new_unchecked(
                &self.conn,
                rusqlite::TransactionBehavior::Immediate,
            )?;
            let changes = apply_in(&tx, batch)?;
            tx.commit()?;
            Ok(changes)
        };
        let result = run();
        drop(counting);
        match result {
            Ok(changes) => {
                self.set_degraded(None);
                if let (Some(sink), false) = (&self.sink, changes.is_empty()) {
                    sink.publish(&changes);
                }
                Ok(changes)
            }
            Err(e) => {
                if let Some(why) = resource_failure(&e) {
                    self.set_degraded(Some(format!("{action}: {why}")));
                }
                Err(err(&self.path, action, e))
            }
        }
    }

    /// Sizes the writer's page cache for a reconcile (`true`) or for the writes between
    /// reconciles (`false`); shrinking it frees the pages beyond the new size at once.
    pub fn size_cache_for_reconcile(&self, reconciling: bool) -> Result<(), IndexError> {
        let kib = if reconciling {
            RECONCILE_CACHE_KIB
        } else {
            IDLE_CACHE_KIB
        };
        self.conn
            .execute_batch(&format!("PRAGMA cache_size=-{kib}"))
            .map_err(|e| err(&self.path, "sizing the page cache", e))
    }

    /// Prepares a reconcile's writes: when the index holds no row at all (a cold index), the
    /// secondary indexes that no write reads ([`schema::DEFERRED_INDEXES`]) are dropped, to
    /// be built once from the sorted rows by [`Index::end_bulk_load`] instead of growing by
    /// one random insert per row and being rewritten to the WAL by every batch. Queries meanwhile
    /// stay correct (they scan). Returns whether it did; an index left without them (a crash)
    /// gets them back when it is next opened.
    pub fn begin_bulk_load(&self) -> Result<bool, IndexError> {
        self.require_writer("starting a bulk load")?;
        if self.mode == Mode::Guest {
            return Ok(false);
        }
        let run = || -> rusqlite::Result<bool> {
            let tx = rusqlite::Transaction::new_unchecked(
                &self.conn,
                rusqlite::TransactionBehavior::Immediate,
            )?;
            let empty: bool = tx.query_row(
                "SELECT NOT EXISTS (SELECT 1 FROM files) AND NOT EXISTS (SELECT 1 FROM problems)",
                [],
                |r| r.get(0),
            )?;
            if empty {
                for (name, _) in schema::DEFERRED_INDEXES {
                    tx.execute_batch(&format!("DROP INDEX IF EXISTS {name}"))?;
                }
            }
            tx.commit()?;
            if empty {
                // Fewer checkpoints: each copies back every page the batches since the last
                // one rewrote.
                self.conn
                    .execute_batch(&format!("PRAGMA wal_autocheckpoint={BULK_AUTOCHECKPOINT}"))?;
            }
            Ok(empty)
        };
        run().map_err(|e| err(&self.path, "starting a bulk load", e))
    }

    /// Ends what [`Index::begin_bulk_load`] began: builds the secondary indexes it dropped
    /// (each from one sorted pass over the rows) and restores the checkpoint interval.
    pub fn end_bulk_load(&self) -> Result<(), IndexError> {
        self.require_writer("ending a bulk load")?;
        if self.mode == Mode::Guest {
            return Ok(());
        }
        let run = || -> rusqlite::Result<()> {
            // The sort behind each index spills to a temporary file beyond the page cache,
            // rather than holding every key in memory (tens of MB at 500,000 threads).
            self.conn.execute_batch("PRAGMA temp_store=FILE")?;
            // The rows are still in the WAL; copying them back overlaps the index builds
            // instead of following them in the closing checkpoint.
            // Without a WAL (a fresh build) the rows are in the main file: their writeback
            // starts now, beside the builds, rather than all in the closing sync.
            let copying = if self.wal {
                checkpoint_beside(&self.path)
            } else {
                sync_beside(&self.path)
            };
            let built = (|| {
                let tx = rusqlite::Transaction::new_unchecked(
                    &self.conn,
                    rusqlite::TransactionBehavior::Immediate,
                )?;
                for (_, create) in schema::DEFERRED_INDEXES {
                    tx.execute_batch(create)?;
                }
                tx.commit()
            })();
            if let Some(Err(e)) = copying.map(std::thread::JoinHandle::join) {
                tracing::debug!(panic = ?e, "the bulk load's background checkpoint panicked");
            }
            self.conn.execute_batch(&format!(
                "PRAGMA temp_store=MEMORY; \
                 PRAGMA wal_autocheckpoint={DEFAULT_AUTOCHECKPOINT}; \
                 PRAGMA journal_size_limit={WAL_SIZE_LIMIT};"
            ))?;
            built
        };
        run().map_err(|e| err(&self.path, "building the indexes after a bulk load", e))
    }

    /// Paths of file and problem rows recorded under none of `homes` (realpaths).
    pub fn paths_outside_homes(&self, homes: &[PathBuf]) -> Result<Vec<PathBuf>, IndexError> {
        let homes: std::collections::HashSet<String> = homes.iter().map(|h| path_text(h)).collect();
        self.read("finding rows of other homes", |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT home FROM files UNION SELECT DISTINCT home FROM problems",
            )?;
            let known: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            let mut out = Vec::new();
            for home in known.into_iter().filter(|h| !homes.contains(h)) {
                let mut rows = conn.prepare_cached(
                    "SELECT path FROM files WHERE home = ?1 UNION SELECT path FROM problems WHERE home = ?1",
                )?;
                for p in rows.query_map([&home], |r| r.get::<_, String>(0))? {
                    out.push(PathBuf::from(p?));
                }
            }
            Ok(out)
        })
    }

    /// The last file of a thread that had one and lost it, with when (ms since the epoch).
    /// `None` for a thread never seen, or one that has a file again.
    pub fn removed_thread(&self, thread_id: &str) -> Result<Option<(PathBuf, i64)>, IndexError> {
        self.read("looking up a removed thread", |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT path, removed_at_ms FROM removed_threads WHERE thread_id = ?1",
            )?;
            stmt.query_row([thread_id], |r| {
                Ok((PathBuf::from(r.get::<_, String>(0)?), r.get(1)?))
            })
            .optional()
        })
    }

    /// Every file row's stamp under `home`, for incremental reconcile.
    pub fn stamps_under(&self, home: &Path) -> Result<Vec<(PathBuf, Stamp)>, IndexError> {
        self.stamps_page(home, None, usize::MAX)
    }

    /// Up to `limit` file rows' stamps under `home` whose paths sort after `after`, in path
    /// (byte) order: a reconcile pages through them beside its sorted walk, so it never holds
    /// every row.
    pub fn stamps_page(
        &self,
        home: &Path,
        after: Option<&Path>,
        limit: usize,
    ) -> Result<Vec<(PathBuf, Stamp)>, IndexError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("listing stamps", |conn| {
            // `path > ''` holds for every row: one statement for the first page and the rest.
            let mut stmt = conn.prepare_cached(
                "SELECT path, dev, ino, size, mtime_ns, ctime_ns, btime_ns FROM files \
                 WHERE path > ?2 AND home = ?1 ORDER BY path LIMIT ?3",
            )?;
            let after = after.map(path_text).unwrap_or_default();
            let rows = stmt.query_map(params![path_text(home), after, limit], |r| {
                Ok((
                    PathBuf::from(r.get::<_, String>(0)?),
                    Stamp {
                        id: FileId {
                            dev: r.get::<_, i64>(1)? as u64,
                            ino: r.get::<_, i64>(2)? as u64,
                        },
                        kind: FileKind::File,
                        size: r.get::<_, i64>(3)? as u64,
                        mtime_ns: r.get(4)?,
                        ctime_ns: r.get(5)?,
                        btime_ns: r.get(6)?,
                    },
                ))
            })?;
            rows.collect()
        })
    }

    /// File rows at `path` or below it (a directory that went away).
    pub fn files_at_or_under(&self, path: &Path) -> Result<Vec<IndexedFile>, IndexError> {
        let exact = path_text(path);
        let below = format!("{}/", exact.trim_end_matches('/'));
        self.read("looking up a directory", |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {FILE_COLUMNS} FROM files WHERE path = ?1 OR (path >= ?2 AND path < ?3)"
            ))?;
            let rows = stmt.query_map(params![exact, below, prefix_end(&below)], file_from_row)?;
            rows.collect()
        })
    }

    /// Paths of problems recorded at `path` or below it.
    pub fn problem_paths_at_or_under(&self, path: &Path) -> Result<Vec<PathBuf>, IndexError> {
        let exact = path_text(path);
        let below = format!("{}/", exact.trim_end_matches('/'));
        self.read("looking up problems under a directory", |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT path FROM problems WHERE path = ?1 OR (path >= ?2 AND path < ?3)",
            )?;
            let rows = stmt.query_map(params![exact, below, prefix_end(&below)], |r| {
                Ok(PathBuf::from(r.get::<_, String>(0)?))
            })?;
            rows.collect()
        })
    }

    /// Paths of file rows and problems at `path` or below it: only the paths, so a recheck
    /// of a whole home does not load every row.
    pub fn paths_at_or_under(&self, path: &Path) -> Result<Vec<PathBuf>, IndexError> {
        let exact = path_text(path);
        let below = format!("{}/", exact.trim_end_matches('/'));
        self.read("listing paths under a directory", |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT path FROM files WHERE path = ?1 OR (path >= ?2 AND path < ?3) \
                 UNION ALL SELECT path FROM problems WHERE path = ?1 OR (path >= ?2 AND path < ?3)",
            )?;
            let rows = stmt.query_map(params![exact, below, prefix_end(&below)], |r| {
                Ok(PathBuf::from(r.get::<_, String>(0)?))
            })?;
            rows.collect()
        })
    }

    /// Up to `limit` paths of `table` rows at or under `path`, those after `after`, in key
    /// order: a recheck of a whole home pages through them instead of holding every path.
    /// Each page is a range scan of the primary key (no sort, whatever the home's size).
    pub fn paths_page_at_or_under(
        &self,
        table: PathTable,
        path: &Path,
        after: Option<&Path>,
        limit: usize,
    ) -> Result<Vec<PathBuf>, IndexError> {
        let exact = path_text(path);
        let below = format!("{}/", exact.trim_end_matches('/'));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let table = match table {
            PathTable::Files => "files",
            PathTable::Problems => "problems",
        };
        // The first page starts at `path` itself, later ones after the last path given.
        let (op, from) = match after {
            Some(a) => (">", path_text(a)),
            None => (">=", exact.clone()),
        };
        let sql = format!(
            "SELECT path FROM {table} WHERE path {op} ?4 AND path < ?3 \
             AND (path = ?1 OR path >= ?2) ORDER BY path LIMIT ?5"
        );
        self.read("listing paths under a directory", |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![exact, below, prefix_end(&below), from, limit],
                |r| Ok(PathBuf::from(r.get::<_, String>(0)?)),
            )?;
            rows.collect()
        })
    }

    /// Paths of every problem recorded under `home`, in path (byte) order.
    pub fn problem_paths_under(&self, home: &Path) -> Result<Vec<PathBuf>, IndexError> {
        self.read("listing problem paths", |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT path FROM problems WHERE home = ?1 ORDER BY path")?;
            let rows = stmt.query_map([path_text(home)], |r| {
                Ok(PathBuf::from(r.get::<_, String>(0)?))
            })?;
            rows.collect()
        })
    }

    /// Every file whose `session_meta.id` is `thread_id`, preferred first (see [`prefer`]).
    pub fn files_for_thread(&self, thread_id: &str) -> Result<Vec<IndexedFile>, IndexError> {
        self.read("looking up a thread", |conn| {
            files_for_thread_in(conn, thread_id)
        })
    }

    /// Every file of the threads `thread_ids`, in one statement.
    pub fn files_for_threads<'a>(
        &self,
        thread_ids: impl Iterator<Item = &'a str>,
    ) -> Result<Vec<IndexedFile>, IndexError> {
        let keys = json_keys(thread_ids.map(std::borrow::Cow::from));
        if keys == "[]" {
            return Ok(Vec::new());
        }
        self.read("looking up threads", |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {FILE_COLUMNS_OF_F} FROM json_each(?1) AS j \
                 CROSS JOIN files AS f ON f.thread_id = j.value"
            ))?;
            let rows = stmt.query_map([&keys], file_from_row)?;
            rows.collect()
        })
    }

    /// Every thread id that has a file.
    pub fn thread_ids(&self) -> Result<std::collections::HashSet<String>, IndexError> {
        self.read("listing thread ids", |conn| {
            let mut stmt = conn.prepare_cached("SELECT DISTINCT thread_id FROM files")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Distinct thread ids starting with `prefix`, at most `limit` of them.
    pub fn thread_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, IndexError> {
        self.read("looking up an id prefix", |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT DISTINCT thread_id FROM files WHERE thread_id >= ?1 AND thread_id < ?2 \
                 ORDER BY thread_id LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![prefix, prefix_end(prefix), limit as i64], |r| {
                r.get(0)
            })?;
            rows.collect()
        })
    }

    /// The file row at a canonical path.
    pub fn file_at(&self, path: &Path) -> Result<Option<IndexedFile>, IndexError> {
        self.read("looking up a path", |conn| file_at_in(conn, path))
    }

    /// File rows with the given identity (a moved or hard-linked file).
    pub fn files_with_id(&self, id: FileId) -> Result<Vec<IndexedFile>, IndexError> {
        self.read("looking up a file id", |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {FILE_COLUMNS} FROM files WHERE dev = ?1 AND ino = ?2"
            ))?;
            let rows = stmt.query_map(params![id.dev as i64, id.ino as i64], file_from_row)?;
            rows.collect()
        })
    }

    /// One page of files, newest thread first. A thread with duplicate files may appear once
    /// per file; callers fold duplicates.
    pub fn list(&self, q: &ListQuery) -> Result<Vec<IndexedFile>, IndexError> {
        let mut sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        match q.archived {
            ArchivedFilter::Active => sql.push_str(" AND archived = 0"),
            ArchivedFilter::Archived => sql.push_str(" AND archived = 1"),
            ArchivedFilter::All => {}
        }
        if !q.cwd.is_empty() {
            let marks = vec!["?"; q.cwd.len()].join(", ");
            sql.push_str(&format!(" AND cwd IN ({marks})"));
            args.extend(q.cwd.iter().cloned().map(Into::into));
        }
        if let Some(search) = &q.search {
            sql.push_str(" AND (title LIKE ? ESCAPE '\\' OR cwd LIKE ? ESCAPE '\\')");
            let pattern = format!("%{}%", escape_like(search));
            args.push(pattern.clone().into());
            args.push(pattern.into());
        }
        if let Some((ms, id)) = &q.after {
            sql.push_str(" AND (coalesce(created_at_ms, 0) < ? OR (coalesce(created_at_ms, 0) = ? AND thread_id > ?))");
            args.push((*ms).into());
            args.push((*ms).into());
            args.push(id.clone().into());
        }
        sql.push_str(" ORDER BY coalesce(created_at_ms, 0) DESC, thread_id LIMIT ?");
        args.push((q.limit as i64).into());
        self.read("listing threads", |conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), file_from_row)?;
            rows.collect()
        })
    }

    /// Every recorded problem, by path.
    pub fn problems(&self) -> Result<Vec<ProblemRow>, IndexError> {
        self.read("listing problems", |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT path, home, kind, detail, thread_id FROM problems ORDER BY path",
            )?;
            let rows = stmt.query_map([], problem_from_row)?;
            rows.collect()
        })
    }

    /// Thread ids held by more than one file, with those files' paths.
    pub fn duplicates(&self) -> Result<Vec<(String, Vec<PathBuf>)>, IndexError> {
        self.read("listing duplicates", |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT thread_id, path FROM files WHERE thread_id IN \
                 (SELECT thread_id FROM files GROUP BY thread_id HAVING count(*) > 1) \
                 ORDER BY thread_id, archived, compression <> 'none', path",
            )?;
            let mut out: Vec<(String, Vec<PathBuf>)> = Vec::new();
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    PathBuf::from(r.get::<_, String>(1)?),
                ))
            })?;
            for row in rows {
                let (id, path) = row?;
                match out.last_mut() {
                    Some((last, paths)) if *last == id => paths.push(path),
                    _ => out.push((id, vec![path])),
                }
            }
            Ok(out)
        })
    }

    pub fn counts(&self) -> Result<Counts, IndexError> {
        self.read("counting", |conn| {
            conn.query_row(
                "SELECT (SELECT count(*) FROM files), (SELECT count(DISTINCT thread_id) FROM files), \
                 (SELECT count(*) FROM files WHERE archived = 1), (SELECT count(*) FROM problems)",
                [],
                |r| {
                    Ok(Counts {
                        files: r.get::<_, i64>(0)? as u64,
                        threads: r.get::<_, i64>(1)? as u64,
                        archived: r.get::<_, i64>(2)? as u64,
                        problems: r.get::<_, i64>(3)? as u64,
                    })
                },
            )
        })
    }

    fn read<T>(
        &self,
        action: &'static str,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, IndexError> {
        f(&self.conn).map_err(|e| err(&self.path, action, e))
    }
}

impl Drop for Index {
    /// A writer that closes with every change in the main file leaves a seal, so the next
    /// open can skip the full check (see `seal`).
    fn drop(&mut self) {
        if self.mode != Mode::Writer || self.degraded().is_some() {
            return;
        }
        if self.wal {
            // Another process's open read (a CLI, an sqlite3 shell) would hold the stop for
            // the whole busy timeout; without the seal the next open only checks the file.
            let _ = self.conn.busy_timeout(CLOSE_BUSY_TIMEOUT);
            // (busy, frames in the log, frames checkpointed): all of it, and none left.
            let done = self
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })
                .is_ok_and(|(busy, log, done)| busy == 0 && log == done);
            if !done {
                return;
            }
        }
        seal::leave(&self.path);
    }
}

/// Starts a passive checkpoint of the index at `path` on a thread of its own, over a
/// connection of its own: it copies the frames committed so far from the WAL into the main
/// file while the writer goes on (a passive checkpoint takes no lock a writer needs and never
/// waits). Its failure is only logged: the writer's own checkpoints copy whatever it left.
/// `None` when no thread could be started.
fn checkpoint_beside(path: &Path) -> Option<std::thread::JoinHandle<()>> {
    let path = path.to_owned();
    let spawned = std::thread::Builder::new()
        .name("rolloutd-ckpt".into())
        .spawn(move || {
            let run = || -> rusqlite::Result<(i64, i64)> {
                let conn = Connection::open_with_flags(
                    &path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.execute_batch("PRAGMA synchronous=NORMAL")?;
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((r.get(1)?, r.get(2)?))
                })
            };
            match run() {
                Ok((log, copied)) => tracing::debug!(log, copied, "background checkpoint"),
                Err(e) => tracing::debug!(error = %e, "background checkpoint failed"),
            }
        });
    spawned
        .map_err(|e| tracing::debug!(error = %e, "no thread for the background checkpoint"))
        .ok()
}

/// Syncs the index file at `path` on a thread of its own (see [`Index::end_bulk_load`]);
/// only logged when it fails: the closing sync writes whatever it left.
fn sync_beside(path: &Path) -> Option<std::thread::JoinHandle<()>> {
    let path = path.to_owned();
    let spawned = std::thread::Builder::new()
        .name("rolloutd-sync".into())
        .spawn(move || {
            if let Err(e) = std::fs::File::open(&path).and_then(|f| f.sync_data()) {
                tracing::debug!(error = %e, "background sync failed");
            }
        });
    spawned
        .map_err(|e| tracing::debug!(error = %e, "no thread for the background sync"))
        .ok()
}

/// [`Index::apply`] inside its transaction.
///
/// The rows before and after are read a batch at a time (one statement over a JSON array of
/// the keys, joined to the table's index), not one statement per key: a cold index writes
/// thousands of new paths per transaction, and per-key lookups of rows that do not exist
/// cost more than the writes.
fn apply_in(conn: &Connection, batch: &Batch) -> rusqlite::Result<Vec<Change>> {
    // Before: every touched path's problem, and every touched thread's preferred file.
    // Paths are ordered and compared as bytes (`Path`'s own order parses components, which
    // cost more than the lookups); a batch's files come in path order already.
    let mut paths: Vec<&Path> =
        Vec::with_capacity(batch.files.len() + batch.problems.len() + batch.removed.len());
    paths.extend(batch.files.iter().map(|f| f.path.as_path()));
    paths.extend(batch.problems.iter().map(|p| p.path.as_path()));
    paths.extend(batch.removed.iter().map(PathBuf::as_path));
    paths.sort_unstable_by(|a, b| path_bytes(a).cmp(path_bytes(b)));
    paths.dedup_by(|a, b| path_bytes(a) == path_bytes(b));
    let path_keys = json_keys(paths.iter().map(|p| p.to_string_lossy()));
    let mut threads: BTreeSet<String> = batch
        .files
        .iter()
        .map(|f| f.head.thread_id.clone())
        .collect();
    // Threads whose file at a touched path may be replaced or dropped.
    let mut stmt = conn.prepare_cached(
        "SELECT f.thread_id FROM json_each(?1) AS j CROSS JOIN files AS f ON f.path = j.value",
    )?;
    for thread in stmt.query_map([&path_keys], |r| r.get::<_, String>(0))? {
        threads.insert(thread?);
    }
    let mut problems_before = problems_at_in(conn, &path_keys)?;
    let threads_before = preferred_files_in(conn, &threads)?;

    write_in(conn, batch, &problems_before)?;

    // After, and the difference.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut tombstone = conn.prepare_cached(
        "INSERT OR REPLACE INTO removed_threads (thread_id, path, removed_at_ms) VALUES (?1, ?2, ?3)",
    )?;
    let (mut threads_after, reread) = new_threads_after(batch, &threads, &threads_before);
    threads_after.extend(preferred_files_in(conn, &reread)?);
    #[cfg(debug_assertions)]
    {
        // What the rows read back would give (the tests run this).
        let read = preferred_files_in(conn, &threads)?;
        debug_assert_eq!(read, threads_after, "a new thread's state after a write");
    }
    let mut revived = Vec::new();
    let mut changes = Vec::new();
    for thread in &threads {
        let before = threads_before.get(thread.as_str());
        let after = threads_after.remove(thread.as_str());
        match (before, &after) {
            (Some(last), None) => {
                tombstone.execute(params![thread, path_text(&last.path), now_ms])?;
            }
            (None, Some(_)) => revived.push(thread.as_str()),
            _ => {}
        }
        let before_kept = match (before, &after) {
            (Some(b), Some(a)) if b.path != a.path => {
                file_at_in(conn, &b.path)?.is_some_and(|f| f.head.thread_id == *thread)
            }
            _ => true,
        };
        match (before, after) {
            // The common case of a cold index: the state moves into its change, uncopied.
            (None, Some(after)) => changes.push(Change::materialized(after)),
            (before, after) => changes.extend(thread_changes(before, after.as_ref(), before_kept)),
        }
    }
    if !revived.is_empty() {
        conn.prepare_cached(
            "DELETE FROM removed_threads WHERE thread_id IN (SELECT value FROM json_each(?1))",
        )?
        .execute([json_keys(revived.into_iter().map(std::borrow::Cow::from))])?;
    }
    // Only this batch's problems are new rows: a path with no problem before and none in
    // the batch has none after. So only those paths can change, and they are few: they are
    // announced in `Path` order, as always.
    let mut maybe: Vec<&Path> = batch.problems.iter().map(|p| p.path.as_path()).collect();
    if !problems_before.is_empty() {
        maybe.extend(
            paths
                .iter()
                .copied()
                .filter(|p| problems_before.contains_key(p.to_string_lossy().as_ref())),
        );
    }
    maybe.sort_unstable();
    maybe.dedup();
    let mut problems_after =
        problems_at_in(conn, &json_keys(maybe.iter().map(|p| p.to_string_lossy())))?;
    for path in maybe {
        let key = path_text(path);
        let before = problems_before.remove(&key);
        let after = problems_after.remove(&key);
        changes.extend(problem_change(before.as_ref(), after.as_ref()));
    }
    Ok(changes)
}

/// A path's bytes: the order of the index's keys (SQLite's BINARY collation).
fn path_bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_encoded_bytes()
}

/// A JSON array of strings, for `json_each(?)`.
fn json_keys<'a>(keys: impl Iterator<Item = std::borrow::Cow<'a, str>>) -> String {
    let keys: Vec<std::borrow::Cow<'a, str>> = keys.collect();
    // Serializing a list of strings cannot fail.
    serde_json::to_string(&keys).unwrap_or_else(|_| "[]".into())
}

/// The problem rows at the paths in `keys` (a JSON array), by path.
fn problems_at_in(
    conn: &Connection,
    keys: &str,
) -> rusqlite::Result<std::collections::HashMap<String, ProblemRow>> {
    if keys == "[]" {
        return Ok(Default::default());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT p.path, p.home, p.kind, p.detail, p.thread_id \
         FROM json_each(?1) AS j CROSS JOIN problems AS p ON p.path = j.value",
    )?;
    let rows = stmt.query_map([keys], problem_from_row)?;
    rows.map(|r| r.map(|p| (path_text(&p.path), p))).collect()
}

/// The state after `batch` of each of `threads` that had no row before it (none in
/// `before`): the rows this batch wrote and left, known without reading them back, as they
/// read back ([`as_stored`]). Returned with the threads whose state must be read (those that
/// had rows). A cold index writes only new threads, and reading back each row it just wrote
/// cost as much as writing it.
fn new_threads_after(
    batch: &Batch,
    threads: &BTreeSet<String>,
    before: &std::collections::HashMap<String, IndexedFile>,
) -> (
    std::collections::HashMap<String, IndexedFile>,
    BTreeSet<String>,
) {
    use std::borrow::Cow;
    use std::collections::{HashMap, HashSet};
    let reread: BTreeSet<String> = threads
        .iter()
        .filter(|t| before.contains_key(t.as_str()))
        .cloned()
        .collect();
    let mut out: HashMap<String, IndexedFile> = HashMap::new();
    // The rows as `write_in` leaves them: keyed by the stored path text, the last file
    // written at a path stands, unless an unusable file's problem or a removal drops it.
    let dropped: HashSet<Cow<'_, str>> = batch
        .problems
        .iter()
        .filter(|p| !p.kind.is_warning())
        .map(|p| p.path.to_string_lossy())
        .chain(batch.removed.iter().map(|p| p.to_string_lossy()))
        .collect();
    // The last file at each path: a stable sort by stored path text keeps the batch's order
    // among equal paths (cheaper than a map of every path; a batch is mostly sorted already).
    let mut last: Vec<(Cow<'_, str>, &IndexedFile)> = batch
        .files
        .iter()
        .map(|f| (f.path.to_string_lossy(), f))
        .collect();
    last.sort_by(|a, b| a.0.cmp(&b.0));
    let mut last = last.into_iter().peekable();
    while let Some((key, f)) = last.next() {
        if last.peek().is_some_and(|(next, _)| *next == key) {
            continue;
        }
        if before.contains_key(f.thread_id()) || dropped.contains(&key) {
            continue;
        }
        let stored = as_stored(f);
        match out.get_mut(stored.thread_id()) {
            Some(best) if prefer(&stored, best).is_lt() => *best = stored,
            Some(_) => {}
            None => {
                out.insert(stored.head.thread_id.clone(), stored);
            }
        }
    }
    (out, reread)
}

/// A file as its row reads back ([`file_from_row`] of what [`write_in`] wrote): paths as
/// their stored text, the start time at the millisecond precision of `created_at_ms`.
fn as_stored(f: &IndexedFile) -> IndexedFile {
    let h = &f.head;
    IndexedFile {
        path: PathBuf::from(path_text(&f.path)),
        home: PathBuf::from(path_text(&f.home)),
        stamp: Stamp {
            kind: FileKind::File,
            ..f.stamp
        },
        archived: f.archived,
        compression: f.compression,
        // Built field by field: a clone would copy the paths and timestamp only to drop them.
        head: RolloutHead {
            thread_id: h.thread_id.clone(),
            thread_id_as_written: h.thread_id_as_written.clone(),
            timestamp: f.created_at_ms().and_then(timestamp_of_ms),
            cwd: h.cwd.clone(),
            originator: h.originator.clone(),
            cli_version: h.cli_version.clone(),
            source: h.source.clone(),
            model_provider: h.model_provider.clone(),
            forked_from_id: h.forked_from_id.clone(),
            git_branch: h.git_branch.clone(),
            title: h.title.clone(),
        },
    }
}

/// The `session_meta.timestamp` a row gives back for its `created_at_ms`.
fn timestamp_of_ms(ms: i64) -> Option<String> {
    let ms = u64::try_from(ms).ok()?;
    Some(
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
            .to_string(),
    )
}

/// Each of `threads`' preferred file (see [`prefer`]), for those that have one.
fn preferred_files_in(
    conn: &Connection,
    threads: &BTreeSet<String>,
) -> rusqlite::Result<std::collections::HashMap<String, IndexedFile>> {
    let mut out: std::collections::HashMap<String, IndexedFile> = Default::default();
    if threads.is_empty() {
        return Ok(out);
    }
    let keys = json_keys(threads.iter().map(|t| std::borrow::Cow::from(t.as_str())));
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM json_each(?1) AS j CROSS JOIN files AS f ON f.thread_id = j.value",
        FILE_COLUMNS_OF_F
    ))?;
    for row in stmt.query_map([&keys], file_from_row)? {
        let file = row?;
        match out.get_mut(&file.head.thread_id) {
            Some(best) if prefer(&file, best).is_lt() => *best = file,
            Some(_) => {}
            None => {
                out.insert(file.head.thread_id.clone(), file);
            }
        }
    }
    Ok(out)
}

/// The writes of a [`Batch`], in its documented order. `problems_before` holds the problem
/// rows at the batch's paths as the transaction found them: a file's path without one has
/// none to forget.
fn write_in(
    conn: &Connection,
    batch: &Batch,
    problems_before: &std::collections::HashMap<String, ProblemRow>,
) -> rusqlite::Result<()> {
    let mut insert = conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO files ({FILE_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)"
    ))?;
    let mut forget = conn.prepare_cached("DELETE FROM problems WHERE path = ?1")?;
    for f in &batch.files {
        let path = path_text(&f.path);
        insert.execute(params![
            path,
            path_text(&f.home),
            f.stamp.id.dev as i64,
            f.stamp.id.ino as i64,
            f.stamp.size as i64,
            f.stamp.mtime_ns,
            f.head.thread_id,
            f.archived,
            f.compression.as_str(),
            f.created_at_ms(),
            f.head.cwd,
            f.head.source,
            f.head.originator,
            f.head.cli_version,
            f.head.model_provider,
            f.head.forked_from_id,
            f.head.git_branch,
            f.head.title,
            f.stamp.ctime_ns,
            f.head.thread_id_as_written,
            f.stamp.btime_ns,
        ])?;
        if problems_before.contains_key(&path) {
            forget.execute([&path])?;
        }
    }
    let mut record = conn.prepare_cached(
        "INSERT OR REPLACE INTO problems (path, home, kind, detail, thread_id) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut drop_file = conn.prepare_cached("DELETE FROM files WHERE path = ?1")?;
    for p in &batch.problems {
        let path = path_text(&p.path);
        record.execute(params![
            path,
            path_text(&p.home),
            p.kind.as_str(),
            p.detail,
            p.thread_id
        ])?;
        if !p.kind.is_warning() {
            drop_file.execute([&path])?;
        }
    }
    for p in &batch.removed {
        let p = path_text(p);
        drop_file.execute([&p])?;
        forget.execute([&p])?;
    }
    Ok(())
}

fn file_at_in(conn: &Connection, path: &Path) -> rusqlite::Result<Option<IndexedFile>> {
    // The text is the statement cache's key: built once, not per lookup.
    static SQL: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("SELECT {FILE_COLUMNS} FROM files WHERE path = ?1"));
    let mut stmt = conn.prepare_cached(&SQL)?;
    stmt.query_row([path_text(path)], file_from_row).optional()
}

fn files_for_thread_in(conn: &Connection, thread_id: &str) -> rusqlite::Result<Vec<IndexedFile>> {
    // Ordered here, not in SQL: an ORDER BY with an expression makes SQLite re-prepare
    // the statement whenever ?1 changes, which cost more than the lookup.
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!("SELECT {FILE_COLUMNS} FROM files WHERE thread_id = ?1")
    });
    let mut stmt = conn.prepare_cached(&SQL)?;
    let mut rows = stmt
        .query_map([thread_id], file_from_row)?
        .collect::<rusqlite::Result<Vec<IndexedFile>>>()?;
    rows.sort_by(prefer);
    Ok(rows)
}

/// Which of a thread's files answers for it, first: active before archived, plain before
/// compressed (Codex's own preference), then by path bytes (BINARY collation order).
pub fn prefer(a: &IndexedFile, b: &IndexedFile) -> std::cmp::Ordering {
    let key = |f: &IndexedFile| (f.archived, f.compression != Compression::None);
    key(a).cmp(&key(b)).then_with(|| {
        a.path
            .as_os_str()
            .as_encoded_bytes()
            .cmp(b.path.as_os_str().as_encoded_bytes())
    })
}

fn problem_from_row(r: &Row<'_>) -> rusqlite::Result<ProblemRow> {
    let kind: String = r.get(2)?;
    Ok(ProblemRow {
        path: PathBuf::from(r.get::<_, String>(0)?),
        home: PathBuf::from(r.get::<_, String>(1)?),
        kind: ProblemKind::parse(&kind).unwrap_or(ProblemKind::Unreadable),
        detail: r.get(3)?,
        thread_id: r.get(4)?,
    })
}

/// The sentence for a write that failed because the index's storage gave out (as opposed
/// to a bug or a constraint): disk full, I/O error, read-only, cannot open.
fn resource_failure(e: &rusqlite::Error) -> Option<String> {
    let code = e.sqlite_error_code()?;
    matches!(
        code,
        rusqlite::ErrorCode::DiskFull
            | rusqlite::ErrorCode::SystemIoFailure
            | rusqlite::ErrorCode::ReadOnly
            | rusqlite::ErrorCode::CannotOpen
            | rusqlite::ErrorCode::TooBig
    )
    .then(|| e.to_string())
}

/// True when an [`IndexError`] means the index storage gave out rather than a bad row:
/// callers with a verified answer in hand give it anyway and skip the cache write.
pub fn is_resource_failure(e: &IndexError) -> bool {
    e.source
        .downcast_ref::<rusqlite::Error>()
        .and_then(resource_failure)
        .is_some()
}

/// True for a full disk, a read-only directory or an index that cannot be created: not
/// damage (a short read, by contrast, is what a truncated index gives).
fn is_out_of_space(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    e.downcast_ref::<rusqlite::Error>()
        .and_then(rusqlite::Error::sqlite_error_code)
        .is_some_and(|c| {
            matches!(
                c,
                rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::ReadOnly
                    | rusqlite::ErrorCode::CannotOpen
            )
        })
}

/// True for "someone else holds a lock", as opposed to damage.
fn is_transient(e: &(dyn std::error::Error + Send + Sync + 'static)) -> bool {
    e.downcast_ref::<rusqlite::Error>()
        .and_then(rusqlite::Error::sqlite_error_code)
        .is_some_and(|c| {
            matches!(
                c,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            )
        })
}

fn file_from_row(r: &Row<'_>) -> rusqlite::Result<IndexedFile> {
    let compression: String = r.get(8)?;
    Ok(IndexedFile {
        path: PathBuf::from(r.get::<_, String>(0)?),
        home: PathBuf::from(r.get::<_, String>(1)?),
        stamp: Stamp {
            id: FileId {
                dev: r.get::<_, i64>(2)? as u64,
                ino: r.get::<_, i64>(3)? as u64,
            },
            kind: FileKind::File,
            size: r.get::<_, i64>(4)? as u64,
            mtime_ns: r.get(5)?,
            ctime_ns: r.get(18)?,
            btime_ns: r.get(20)?,
        },
        archived: r.get(7)?,
        compression: Compression::parse(&compression).unwrap_or(Compression::None),
        head: RolloutHead {
            thread_id: r.get(6)?,
            timestamp: r.get::<_, Option<i64>>(9)?.and_then(timestamp_of_ms),
            cwd: r.get(10)?,
            source: r.get(11)?,
            originator: r.get(12)?,
            cli_version: r.get(13)?,
            model_provider: r.get(14)?,
            forked_from_id: r.get(15)?,
            git_branch: r.get(16)?,
            title: r.get(17)?,
            thread_id_as_written: r.get(19)?,
        },
    })
}

fn err(
    path: &Path,
    action: &'static str,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> IndexError {
    IndexError {
        path: path.to_owned(),
        action,
        source: e.into(),
    }
}

/// Paths are stored as text; rollout paths Codex writes are UTF-8.
fn path_text(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The smallest string greater than every string starting with `prefix`.
fn prefix_end(prefix: &str) -> String {
    let mut s = prefix.to_owned();
    s.push(char::MAX);
    s
}

fn escape_like(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Renames the index and its WAL/SHM companions to `<name>.corrupt-<secs>[-wal|-shm]`.
fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{secs}"));
    let aside = PathBuf::from(aside);
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = aside.as_os_str().to_owned();
        to.push(suffix);
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, thread: &str, timestamp: Option<&str>) -> IndexedFile {
        IndexedFile {
            path: PathBuf::from(path),
            home: PathBuf::from("/h"),
            stamp: Stamp {
                id: FileId {
                    dev: u64::MAX,
                    ino: 7,
                },
                kind: FileKind::File,
                size: u64::MAX - 1,
                mtime_ns: -5,
                ctime_ns: 9,
                btime_ns: 0,
            },
            archived: path.contains("archived"),
            compression: Compression::None,
            head: RolloutHead {
                thread_id: thread.into(),
                timestamp: timestamp.map(str::to_owned),
                cwd: Some("/w\0x".into()),
                title: Some(String::new()),
                ..RolloutHead::default()
            },
        }
    }

    fn sql_of(index: &Index, name: &str) -> Option<String> {
        index
            .conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
            .expect("sqlite_master")
    }

    /// A new thread's state after a write is computed without reading its rows back: it
    /// must be what they read back as, whatever the batch's shape (the debug build checks
    /// this in every write; here the odd cases).
    #[test]
    fn a_new_threads_rows_are_known_as_they_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let index = Index::open(&dir.path().join("i.sqlite"), Journal::Wal).expect("open");
        let mut replaced = file("/h/sessions/b", "t2", None);
        replaced.head.title = Some("first".into());
        let batch = Batch {
            files: vec![
                // Microseconds, an offset, garbage and a date before the epoch.
                file("/h/sessions/a", "t1", Some("2026-11-21T19:02:43.635123Z")),
                file(
                    "/h/archived_sessions/a",
                    "t1",
                    Some("2026-11-21T19:02:43+02:00"),
                ),
                replaced,
                // The last file written at a path stands.
                file("/h/sessions/b", "t3", Some("not a time")),
                file("/h/sessions/c", "t4", Some("1960-01-01T00:00:00Z")),
                // Dropped by its problem and by a removal in the same batch.
                file("/h/sessions/d", "t5", None),
                file("/h/sessions/e", "t6", None),
            ],
            problems: vec![ProblemRow {
                path: PathBuf::from("/h/sessions/d"),
                home: PathBuf::from("/h"),
                kind: ProblemKind::Empty,
                detail: "x".into(),
                thread_id: None,
            }],
            removed: vec![PathBuf::from("/h/sessions/e")],
        };
        let threads: BTreeSet<String> = ["t1", "t2", "t3", "t4", "t5", "t6"]
            .into_iter()
            .map(String::from)
            .collect();
        let (known, reread) = new_threads_after(&batch, &threads, &Default::default());
        assert!(reread.is_empty());
        index.apply("test", &batch).expect("apply");
        let read = preferred_files_in(&index.conn, &threads).expect("read");
        assert_eq!(known, read);
        assert_eq!(read.len(), 3, "{read:?}");
        assert_eq!(read["t1"].path, PathBuf::from("/h/sessions/a"));
    }

    /// A bulk load drops the secondary indexes only on an empty index, and puts back
    /// exactly what the migrations made; an index left without them gets them at open.
    #[test]
    fn a_bulk_load_builds_the_same_indexes_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("i.sqlite");
        let index = Index::open(&path, Journal::Wal).expect("open");
        let made: Vec<Option<String>> = schema::DEFERRED_INDEXES
            .iter()
            .map(|(n, _)| sql_of(&index, n))
            .collect();
        assert!(made.iter().all(Option::is_some));
        assert!(index.begin_bulk_load().expect("begin"));
        assert!(schema::DEFERRED_INDEXES
            .iter()
            .all(|(n, _)| sql_of(&index, n).is_none()));
        let changes = index
            .apply(
                "test",
                &Batch {
                    files: vec![file("/h/sessions/a", "t1", None)],
                    ..Batch::default()
                },
            )
            .expect("apply");
        assert_eq!(changes.len(), 1);
        index.end_bulk_load().expect("end");
        let rebuilt: Vec<Option<String>> = schema::DEFERRED_INDEXES
            .iter()
            .map(|(n, _)| sql_of(&index, n))
            .collect();
        assert_eq!(made, rebuilt);
        // Not empty now: nothing is dropped.
        assert!(!index.begin_bulk_load().expect("begin"));
        // Stopped half-way (a crash): the next open builds them.
        index
            .conn
            .execute_batch("DROP INDEX files_identity; DROP INDEX files_newest;")
            .expect("drop");
        drop(index);
        let index = Index::open(&path, Journal::Wal).expect("reopen");
        let reopened: Vec<Option<String>> = schema::DEFERRED_INDEXES
            .iter()
            .map(|(n, _)| sql_of(&index, n))
            .collect();
        assert_eq!(made, reopened);
        assert_eq!(
            index
                .files_with_id(FileId {
                    dev: u64::MAX,
                    ino: 7
                })
                .expect("id")
                .len(),
            1
        );
    }
}
