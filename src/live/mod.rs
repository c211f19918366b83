//! What the watcher, the server and readiness share, below all three: the homes, the index
//! connections, the change publisher, the status counters and the one shutdown token.

mod hang;
mod publish;
mod shutdown;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::crawl::{self, ReconcileSummary};
use crate::identity::Homes;
use crate::index::{Index, IndexError, ReaderOpener};
use crate::protocol::{Notification, Rescanned};
use crate::query::{Queries, Walked, Walks};
use crate::rollout::HeadLimits;

pub use hang::{reach, Exposure, GuardedHome, HangGuard, Probe};
pub use publish::{ChangeObserver, Publisher};
pub use shutdown::Shutdown;

/// Notifications buffered per subscriber before it is told it lagged.
pub const SUBSCRIBER_QUEUE: usize = 4096;

/// How the homes are being watched, for `index/status`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WatchInfo {
    /// `"inotify"`, `"kqueue"`, `"fsevents"` or `"poll"`.
    pub backend: String,
    /// `"events"` or `"poll"`, after `watch.mode = "auto"` was applied.
    pub mode: String,
    /// Why polling was chosen, when it was.
    pub reason: Option<String>,
    /// Each home's filesystem and watch mode.
    pub homes: Vec<crate::protocol::result::HomeWatcher>,
}

/// The configured homes, replaced on SIGHUP or when a home's symlink is retargeted; shared
/// with the publisher, which spells records in them.
pub type HomesCell = Arc<RwLock<Arc<Homes>>>;

/// State shared by the watcher, the server and readiness.
pub struct Shared {
    homes: HomesCell,
    /// Read-only connections that answer queries first (see [`Shared::read_query`]); empty
    /// when none could be opened, and then every query uses the writer. Declared before
    /// the writer so they close first: only a writer closing last checkpoints and removes
    /// the WAL file, leaving the index one self-contained file after a clean stop.
    readers: Arc<Readers>,
    /// Read-only connections for queries off the runtime's threads (walks, counts, queries on
    /// homes that may hang), apart from the runtime's: one stuck in a hung filesystem must
    /// not take a connection the runtime's threads wait for. Before the writer too.
    offload_readers: Mutex<Vec<Index>>,
    opener: Option<ReaderOpener>,
    next_reader: AtomicUsize,
    /// The writer's count of write transactions (odd while one runs): a reader keeps its
    /// snapshot across requests only while this has not moved (see
    /// [`Index::begin_read_batch`]).
    writes: Arc<AtomicU64>,
    /// Readers keep a read transaction between requests, until [`Shared::end_read_batches`]
    /// (the agent's runtime calls it before a worker waits).
    batched: bool,
    /// The process's one writer connection. Every write it commits goes through the
    /// publisher (its change sink), whoever made it.
    pub index: Mutex<Index>,
    pub limits: HeadLimits,
    pub events: broadcast::Sender<Arc<Notification>>,
    pub shutdown: Shutdown,
    /// Set once the first reconcile finished; until then a miss falls back to the disk.
    pub ready: AtomicBool,
    /// Full reconciles after the first (lost events, rescans on request, home changes).
    pub rescans: AtomicU64,
    /// Requests answered since start, for `index/status` (and to tell agent answers apart).
    pub requests: AtomicU64,
    /// Milliseconds from the last change seen to it being indexed.
    pub last_lag_ms: AtomicU64,
    pub watch: Mutex<WatchInfo>,
    pub started: Instant,
    /// Notified (one stored permit) after every committed write's changes: cheaper than a
    /// subscription for those who only refresh a summary.
    pub changed: Arc<tokio::sync::Notify>,
    /// Homes whose filesystem may hang, and those with a query stuck.
    pub hang: Arc<HangGuard>,
    /// Threads queries on such homes may hold at once, stuck or not.
    pub offload: Arc<tokio::sync::Semaphore>,
    /// One walk of the homes at a time (see [`Deferred::Walk`]).
    pub walking: Arc<tokio::sync::Semaphore>,
}

/// Queries on homes that may hang running at once; past it a query waits for a slot (within
/// its deadline), so a hang cannot take more threads than this.
pub const OFFLOADED_MAX: usize = 16;

/// Why a reader handed a query back (see [`Shared::read_query_or`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferred {
    /// It needs the writer (a read-repair).
    Write,
    /// It needs a walk of the homes, which must not run on the runtime's threads.
    Walk,
}

/// The read-only query connections, shared with the writer's after-write hook.
#[derive(Default)]
struct Readers {
    conns: Vec<Mutex<Index>>,
    /// Per reader: the writer's count read before its snapshot was last taken or kept.
    seen: Vec<AtomicU64>,
}

impl Readers {
    /// Ends the open snapshots of the readers not in use.
    fn end_all(&self) {
        for conn in &self.conns {
            if let Ok(r) = conn.try_lock() {
                r.end_read_batch();
            }
        }
    }

    /// Ends the snapshots taken before the writer's count reached `writes` (a commit may be
    /// missing from them), of the readers not in use. One in use is renewed by its next
    /// query, or ended here when its worker parks.
    fn end_outdated(&self, writes: u64) {
        for (conn, seen) in self.conns.iter().zip(&self.seen) {
            if seen.load(Ordering::SeqCst) != writes {
                if let Ok(r) = conn.try_lock() {
                    r.end_read_batch();
                }
            }
        }
    }
}

impl Shared {
    /// Wires `index` (the writer) to a publisher on a new notification channel; `observer`
    /// also sees every committed change (the agent follows archive moves with it).
    pub fn new(homes: Homes, mut index: Index, observer: Option<ChangeObserver>) -> Shared {
        // The channel allocates and fills every slot when it is made, so a slot holds a
        // pointer: with the notification itself inline, the 4,096 slots were ~1.9 MB resident
        // for the agent's whole life, subscribers or not.
        let (events, _) = broadcast::channel(SUBSCRIBER_QUEUE);
        let homes: HomesCell = Arc::new(RwLock::new(Arc::new(homes)));
        let changed = Arc::new(tokio::sync::Notify::new());
        let writes = Arc::new(AtomicU64::new(0));
        index.set_write_counter(Arc::clone(&writes));
        index.set_sink(Arc::new(Publisher::new(
            events.clone(),
            Arc::clone(&homes),
            observer,
            Arc::clone(&changed),
        )));
        Shared {
            homes,
            index: Mutex::new(index),
            readers: Arc::default(),
            next_reader: AtomicUsize::new(0),
            writes,
            batched: false,
            limits: HeadLimits::default(),
            events,
            shutdown: Shutdown::new(),
            ready: AtomicBool::new(false),
            rescans: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            last_lag_ms: AtomicU64::new(0),
            watch: Mutex::new(WatchInfo::default()),
            started: Instant::now(),
            changed,
            hang: Arc::default(),
            offload: Arc::new(tokio::sync::Semaphore::new(OFFLOADED_MAX)),
            offload_readers: Mutex::default(),
            opener: None,
            walking: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    /// Adds read-only connections for queries.
    pub fn with_readers(mut self, readers: Vec<Index>) -> Self {
        self.opener = readers.first().map(Index::reader_opener);
        self.readers = Arc::new(Readers {
            seen: readers.iter().map(|_| AtomicU64::new(0)).collect(),
            conns: readers.into_iter().map(Mutex::new).collect(),
        });
        if self.batched {
            self.end_kept_before_writes();
        }
        self
    }

    /// Lets readers keep one read transaction across the requests a thread answers in a
    /// row (see [`Index::begin_read_batch`]). Whoever runs [`Shared::read_query`] must then
    /// call [`Shared::end_read_batches`] before it waits for anything: the agent does on
    /// each runtime worker before it parks.
    pub fn with_read_batches(mut self) -> Self {
        self.batched = true;
        self.end_kept_before_writes();
        self
    }

    /// Before each write the writer ends the snapshots the readers keep (those not in use),
    /// as their workers' parking used to: a snapshot held while a write begins keeps it
    /// from restarting the WAL, which would then grow with every write.
    fn end_kept_before_writes(&mut self) {
        // Weak: the readers must close before the writer (see `readers`), not with it.
        let readers = Arc::downgrade(&self.readers);
        let writer = self
            .index
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        writer.set_before_write(Arc::new(move || {
            if let Some(readers) = readers.upgrade() {
                readers.end_all();
            }
        }));
    }

    /// Ends the readers' open read transactions (those not in use right now; a reader in
    /// use is ended by its own thread before that one waits).
    pub fn end_read_batches(&self) {
        self.readers.end_all();
    }

    /// Ends the open read transactions that may lack a commit (of the readers not in use
    /// right now), before a worker waits. A snapshot no write has passed is kept: the next
    /// request then needs none of SQLite's per-transaction locking and checks (the writer
    /// ends it before its next write begins).
    pub fn end_outdated_read_batches(&self) {
        self.readers
            .end_outdated(self.writes.load(Ordering::SeqCst));
    }

    /// Runs `f` on a reader connection. `None` when there is no reader, or when `f` needed
    /// a write or a walk (see [`Shared::read_query_or`]). Reads and stats only, so it is
    /// quick enough to run on the runtime's threads.
    pub fn read_query<R>(&self, f: impl FnOnce(&Queries<'_>) -> R) -> Option<R> {
        self.read_query_or(f).ok()
    }

    /// [`Shared::read_query`], saying why it handed the query back: it needed a write (a
    /// read-repair: its answer may lack it, run it on the writer with [`Shared::query`]), or
    /// a walk of the homes (run it with [`Shared::offloaded_query`]).
    pub fn read_query_or<R>(&self, f: impl FnOnce(&Queries<'_>) -> R) -> Result<R, Deferred> {
        let n = self.readers.conns.len();
        if n == 0 {
            return Err(Deferred::Write);
        }
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let (at, guard) = (0..n)
            .find_map(|k| {
                let at = (start + k) % n;
                self.readers.conns[at].try_lock().ok().map(|g| (at, g))
            })
            .unwrap_or_else(|| {
                let at = start % n;
                let guard = self.readers.conns[at]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                (at, guard)
            });
        if self.batched {
            // Read before the snapshot is taken: never newer than it, so a snapshot that
            // may lack a commit is always seen as outdated.
            let before = self.writes.load(Ordering::SeqCst);
            guard.begin_read_batch(&self.writes);
            self.readers.seen[at].store(before, Ordering::SeqCst);
        }
        let homes = self.homes();
        let walk_asked = std::cell::Cell::new(false);
        let answer = f(&Queries {
            homes: &homes,
            index: &guard,
            limits: self.limits,
            walks: Walks::Elsewhere(&walk_asked),
        });
        match (guard.take_refused_write(), walk_asked.get()) {
            (false, _) => Ok(answer),
            (true, false) => Err(Deferred::Write),
            (true, true) => Err(Deferred::Walk),
        }
    }

    /// Runs `f` off the runtime's threads (it may block for long): first on a reader
    /// connection of its own, which may walk the homes (a walk that finds nothing needs no
    /// writer); when that reader needed a write, on the writer, whose walks reuse what the
    /// reader's found. The watcher waits for the writer only while files found are indexed.
    pub fn offloaded_query<R>(&self, f: impl Fn(&Queries<'_>) -> R) -> R {
        let walked = Walked::default();
        if let Some(answer) = self.offloaded_read_query(&f, Walks::Sharing(&walked)) {
            return answer;
        }
        self.query_walking(f, Walks::Sharing(&walked))
    }

    /// [`Shared::read_query`] on a connection of its own (kept for the next such query, or
    /// opened). `None` as there, or when no reader can be had.
    fn offloaded_read_query<R>(
        &self,
        f: impl FnOnce(&Queries<'_>) -> R,
        walks: Walks<'_>,
    ) -> Option<R> {
        let spare = self
            .offload_readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        let reader = match spare {
            Some(r) => r,
            None => match self.opener.as_ref()?.open() {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "no read-only connection for a query");
                    return None;
                }
            },
        };
        let homes = self.homes();
        let answer = f(&Queries {
            homes: &homes,
            index: &reader,
            limits: self.limits,
            walks,
        });
        let refused = reader.take_refused_write();
        let mut spare = self
            .offload_readers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if spare.len() < OFFLOADED_MAX {
            spare.push(reader);
        }
        (!refused).then_some(answer)
    }

    /// Runs `f` with query access: the current homes and the writer connection.
    pub fn query<R>(&self, f: impl FnOnce(&Queries<'_>) -> R) -> R {
        self.query_walking(f, Walks::Here)
    }

    fn query_walking<R>(&self, f: impl FnOnce(&Queries<'_>) -> R, walks: Walks<'_>) -> R {
        let homes = self.homes();
        let index = self.writer();
        f(&Queries {
            homes: &homes,
            index: &index,
            limits: self.limits,
            walks,
        })
    }

    /// The writer connection.
    pub fn writer(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic mid-query leaves no half-state in SQLite (transactions roll back).
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A snapshot of the configured homes (shared, not copied: this runs per request).
    pub fn homes(&self) -> Arc<Homes> {
        self.homes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the homes (SIGHUP, a retargeted home symlink).
    pub fn set_homes(&self, homes: Homes) {
        *self
            .homes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(homes);
    }

    /// A full reconcile after the first: counted, and announced as `index/rescanned` after
    /// the changes it made (which the publisher announced as it committed them).
    pub fn rescan(&self) -> Result<ReconcileSummary, IndexError> {
        self.rescan_observed(&())
    }

    /// As [`Shared::rescan`], telling `dirs` of each directory the walk lists.
    pub fn rescan_observed(
        &self,
        dirs: &dyn crawl::DirObserver,
    ) -> Result<ReconcileSummary, IndexError> {
        let summary =
            crawl::reconcile_observed(&self.homes(), &self.index, &self.limits, &(), dirs)?;
        self.rescans.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .events
            .send(Arc::new(Notification::Rescanned(Rescanned {
                summary: summary.clone(),
            })));
        Ok(summary)
    }

    /// Why the index cannot take writes (disk full, I/O error), if it cannot: answers then
    /// come from verified file reads, and the watcher retries until writes succeed.
    pub fn degraded(&self) -> Option<String> {
        self.writer().degraded()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::identity::{FileId, FileKind, Stamp};
    use crate::index::{Batch, IndexedFile, Journal};
    use crate::rollout::{Compression, RolloutHead};

    fn file(n: u64) -> IndexedFile {
        IndexedFile {
            path: PathBuf::from(format!("/h/sessions/{n}.jsonl")),
            home: PathBuf::from("/h"),
            stamp: Stamp {
                id: FileId { dev: 1, ino: n },
                kind: FileKind::File,
                size: 1,
                mtime_ns: 0,
                ctime_ns: 0,
                btime_ns: 0,
            },
            archived: false,
            compression: Compression::None,
            head: RolloutHead {
                thread_id: format!("t{n}"),
                ..RolloutHead::default()
            },
        }
    }

    /// The agent's state on a new index at `path`: its writer and one reader, which keeps
    /// its snapshot across queries.
    fn with_one_reader(path: &std::path::Path) -> Shared {
        let writer = Index::open(path, Journal::Wal).unwrap();
        let reader = Index::open_reader(path).unwrap();
        Shared::new(Homes::new(&[PathBuf::from("/h")], &[]), writer, None)
            .with_readers(vec![reader])
            .with_read_batches()
    }

    /// A reader keeps its snapshot between queries until its thread waits; a commit in
    /// between must still be seen by the next query (no `end_read_batches` here, as when a
    /// busy worker answers request after request).
    #[test]
    fn a_kept_snapshot_is_renewed_after_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let shared = with_one_reader(&path);
        let files = || {
            shared
                .read_query(|q| q.index.counts())
                .expect("a reader answers")
                .unwrap()
                .files
        };
        assert_eq!(files(), 0);
        for n in 1..=3 {
            let batch = Batch {
                files: vec![file(n)],
                ..Batch::default()
            };
            shared.writer().apply("test", &batch).unwrap();
            assert_eq!(files(), n, "a query after commit {n} missed it");
            assert_eq!(files(), n);
        }
        // Once the batch ends, the same holds from a fresh snapshot.
        shared.end_read_batches();
        assert_eq!(files(), 3);
    }

    /// A snapshot kept across requests must not be open when a write begins, even with no
    /// query and no worker parking in between: it would keep the WAL from restarting and
    /// being reclaimed.
    #[test]
    fn a_write_ends_the_kept_snapshots_it_passed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let shared = with_one_reader(&path);
        let write = |n: u64| {
            let batch = Batch {
                files: vec![file(n)],
                ..Batch::default()
            };
            shared.writer().apply("test", &batch).unwrap();
        };
        let probe = rusqlite::Connection::open(&path).unwrap();
        let checkpoint_busy = || -> i64 {
            probe
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
                .unwrap()
        };
        write(1);
        let files = shared
            .read_query(|q| q.index.counts())
            .unwrap()
            .unwrap()
            .files;
        assert_eq!(files, 1);
        write(2);
        assert_eq!(checkpoint_busy(), 0, "a kept snapshot was still open");
        let files = shared
            .read_query(|q| q.index.counts())
            .unwrap()
            .unwrap()
            .files;
        assert_eq!(files, 2);
    }

    /// The readers close before the writer, whatever holds them, so the writer closing last
    /// checkpoints and removes the WAL: a clean stop leaves the index one file.
    #[test]
    fn a_dropped_agent_state_leaves_no_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        let shared = with_one_reader(&path);
        let batch = Batch {
            files: vec![file(1)],
            ..Batch::default()
        };
        shared.writer().apply("test", &batch).unwrap();
        assert!(shared.read_query(|q| q.index.counts()).is_some());
        let wal = dir.path().join("index.sqlite-wal");
        assert!(wal.exists());
        drop(shared);
        assert!(!wal.exists(), "the WAL outlived the agent's connections");
    }

    /// Paging through the rows at or under a directory gives exactly what one listing gives,
    /// in order, whatever the page size: the directory itself, what is below it, and never
    /// a sibling whose name merely starts the same (`d-x`, `d.x`).
    #[test]
    fn paths_paged_under_a_directory_are_exactly_those_listed_at_once() {
        use crate::index::PathTable;
        let dir = tempfile::tempdir().unwrap();
        let index = Index::open(&dir.path().join("index.sqlite"), Journal::Wal).unwrap();
        let names = [
            "/h/d", "/h/d-x", "/h/d.x", "/h/d/a", "/h/d/b/c", "/h/d/z", "/h/c", "/h/e",
        ];
        let files: Vec<IndexedFile> = names
            .iter()
            .zip(1u64..)
            .map(|(p, n)| IndexedFile {
                path: PathBuf::from(p),
                ..file(n)
            })
            .collect();
        let batch = Batch {
            files,
            ..Batch::default()
        };
        index.apply("test", &batch).unwrap();
        let d = PathBuf::from("/h/d");
        let mut all = index.paths_at_or_under(&d).unwrap();
        all.sort();
        assert_eq!(all.len(), 4, "{all:?}");
        for page in 1..=5 {
            let mut got = Vec::new();
            let mut after: Option<PathBuf> = None;
            for _ in 0..100 {
                let rows = index
                    .paths_page_at_or_under(PathTable::Files, &d, after.as_deref(), page)
                    .unwrap();
                after = rows.last().cloned();
                let full = rows.len() == page;
                got.extend(rows);
                if !full {
                    break;
                }
            }
            assert_eq!(got, all, "page size {page}");
        }
    }
}
