//! What the agent's parts share: the homes, the one writer connection, the notification
//! channel and the status counters.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::broadcast;

use crate::identity::Homes;
use crate::index::Index;
use crate::query::Queries;
use crate::rollout::HeadLimits;

/// Notifications buffered per subscriber before it is told it lagged.
pub const SUBSCRIBER_QUEUE: usize = 4096;

/// A change pushed to subscribers (the protocol's type, published as is).
pub use crate::protocol::Notification;

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
}

/// State shared by the watcher, the server and the initial crawl.
pub struct Shared {
    /// Replaced on SIGHUP when the configured homes change.
    pub homes: RwLock<Arc<Homes>>,
    /// Read-only connections that answer queries first (see [`Shared::read_query`]); empty
    /// when none could be opened, and then every query uses the writer. Declared before
    /// the writer so they close first: only a writer closing last checkpoints and removes
    /// the WAL file, leaving the index one self-contained file after a clean stop.
    readers: Vec<Mutex<Index>>,
    next_reader: AtomicUsize,
    /// The process's one writer connection.
    pub index: Mutex<Index>,
    pub limits: HeadLimits,
    pub events: broadcast::Sender<Notification>,
    /// Set to `true` at shutdown, so that long waits answer "shutting down" at once
    /// instead of being cut off.
    pub stopping: tokio::sync::watch::Sender<bool>,
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
    /// `codex_state.auto_repair`: follow archive/unarchive moves in Codex's state DB.
    pub codex_auto_repair: AtomicBool,
}

impl Shared {
    pub fn new(homes: Homes, index: Index) -> Shared {
        let (events, _) = broadcast::channel(SUBSCRIBER_QUEUE);
        Shared {
            homes: RwLock::new(Arc::new(homes)),
            index: Mutex::new(index),
            readers: Vec::new(),
            next_reader: AtomicUsize::new(0),
            limits: HeadLimits::default(),
            events,
            stopping: tokio::sync::watch::Sender::new(false),
            ready: AtomicBool::new(false),
            rescans: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            last_lag_ms: AtomicU64::new(0),
            watch: Mutex::new(WatchInfo::default()),
            started: Instant::now(),
            codex_auto_repair: AtomicBool::new(false),
        }
    }

    /// Adds read-only connections for queries.
    pub fn with_readers(mut self, readers: Vec<Index>) -> Self {
        self.readers = readers.into_iter().map(Mutex::new).collect();
        self
    }

    /// Runs `f` on a reader connection. `None` when there is no reader, or when `f` needed
    /// a write (a read-repair, a walk of the homes): then its answer may lack that repair,
    /// and the caller runs the query on the writer with [`Shared::query`]. Reads and stats
    /// only, so it is quick enough to run on the runtime's threads.
    pub fn read_query<R>(&self, f: impl FnOnce(&Queries<'_>) -> R) -> Option<R> {
        let n = self.readers.len();
        if n == 0 {
            return None;
        }
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        let guard = (0..n)
            .find_map(|k| self.readers[(start + k) % n].try_lock().ok())
            .unwrap_or_else(|| {
                self.readers[start % n]
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            });
        let homes = self.homes();
        let answer = f(&Queries {
            homes: &homes,
            index: &guard,
            limits: self.limits,
        });
        if guard.take_refused_write() {
            return None;
        }
        Some(answer)
    }

    /// Runs `f` with query access: the current homes and the writer connection.
    pub fn query<R>(&self, f: impl FnOnce(&Queries<'_>) -> R) -> R {
        let homes = self.homes();
        let index = self
            .index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&Queries {
            homes: &homes,
            index: &index,
            limits: self.limits,
        })
    }

    /// A snapshot of the configured homes (shared, not copied: this runs per request).
    pub fn homes(&self) -> Arc<Homes> {
        self.homes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn notify(&self, n: Notification) {
        // No receivers is fine: nobody subscribed.
        let _ = self.events.send(n);
    }

    /// Why the index cannot take writes (disk full, I/O error), if it cannot: answers then
    /// come from verified file reads, and the watcher retries until writes succeed.
    pub fn degraded(&self) -> Option<String> {
        self.index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .degraded()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
