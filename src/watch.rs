//! Keeps the index live: notify + notify-debouncer-full at a ~20 ms settle, a full
//! reconcile when events were lost, polling on filesystems that send no events, and
//! re-established watches when a home is deleted, recreated or its symlink retargeted.
//!
//! Each home is watched non-recursively (to see `sessions/` and `archived_sessions/`
//! appear), `sessions/` recursively and `archived_sessions/` flat. Never the whole home
//! recursively: Codex's SQLite WAL files there churn constantly.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use notify::{PollWatcher, RecommendedWatcher, RecursiveMode};
use notify_debouncer_full::{
    new_debouncer_opt, DebounceEventResult, Debouncer, NoCache, RecommendedCache,
};

use crate::agent::apply;
use crate::agent::state::{Shared, WatchInfo};
use crate::crawl;
use crate::identity::{canonicalize, FileId, Homes, Stamp};

/// `watch.mode`: how changes are noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// Events, except polling on network and FUSE filesystems.
    Auto,
    Events,
    Poll,
}

impl WatchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchMode::Auto => "auto",
            WatchMode::Events => "events",
            WatchMode::Poll => "poll",
        }
    }
}

impl std::str::FromStr for WatchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(WatchMode::Auto),
            "events" => Ok(WatchMode::Events),
            "poll" => Ok(WatchMode::Poll),
            other => Err(format!("{other:?} is not one of auto, events, poll")),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WatchOptions {
    pub mode: WatchMode,
    pub poll_interval: Duration,
    /// Debounce settle time; watchman uses about 20 ms.
    pub settle: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            mode: WatchMode::Auto,
            poll_interval: Duration::from_secs(2),
            settle: Duration::from_millis(20),
        }
    }
}

/// How often the watched roots are checked for deletion or a retargeted symlink.
const ROOT_CHECK: Duration = Duration::from_millis(500);
/// How long a vanished path waits before it counts as deleted. The two halves of a rename
/// (an archive) can arrive in different batches; by then the destination is indexed and
/// the file is seen to have moved rather than gone.
const GONE_GRACE: Duration = Duration::from_millis(100);
/// How long after a directory was walked (a new directory, a reconcile) its rows are
/// checked against the disk again. A file created and deleted within one debounce window
/// produces no event at all (the debouncer drops the pair), yet a walk in between may have
/// indexed it; this second look removes such rows.
const RECHECK_DELAY: Duration = Duration::from_millis(300);
/// Rescans after lost events back off from this...
const RESCAN_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// ...up to this.
const RESCAN_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// While the index is degraded (its writes fail), a full reconcile is retried this often,
/// so the index catches up on its own once space returns.
const DEGRADED_RETRY: Duration = Duration::from_secs(1);
/// Event losses closer together than this are one burst, warned about once.
const BURST_QUIET: Duration = Duration::from_secs(10);

/// The network and FUSE filesystem a path is on, by `statfs` magic, if any.
pub fn network_filesystem(path: &Path) -> Option<&'static str> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `buf` a writable statfs.
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)]
    let magic = buf.f_type as i64 as u32;
    match magic {
        0x6969 => Some("nfs"),
        0x517B => Some("smb"),
        0xFF53_4D42 => Some("cifs"),
        0xFE53_4D42 => Some("smb2"),
        0x6573_5546 => Some("fuse"),
        0x0102_1997 => Some("9p"),
        0x5346_414F => Some("afs"),
        0x00C3_6400 => Some("ceph"),
        0x0BD0_0BD0 => Some("lustre"),
        0x4741_5346 => Some("gpfs"),
        _ => None,
    }
}

/// The identity of every watched root; a change means the watches must be rebuilt.
fn fingerprint(homes: &Homes) -> Vec<Option<(PathBuf, FileId)>> {
    homes
        .homes
        .iter()
        .flat_map(|h| {
            [
                h.configured.clone(),
                h.configured.join(crate::identity::SESSIONS_DIR),
                h.configured.join(crate::identity::ARCHIVED_DIR),
            ]
        })
        .map(|p| {
            let real = canonicalize(&p).ok()?;
            let id = Stamp::of(&real).ok()?.id;
            Some((real, id))
        })
        .collect()
}

enum AnyDebouncer {
    Events(Debouncer<RecommendedWatcher, RecommendedCache>),
    Poll(Debouncer<PollWatcher, NoCache>),
}

impl AnyDebouncer {
    fn watch(&mut self, path: &Path, mode: RecursiveMode) -> notify::Result<()> {
        match self {
            AnyDebouncer::Events(d) => d.watch(path, mode),
            AnyDebouncer::Poll(d) => d.watch(path, mode),
        }
    }
}

/// Starts the watcher thread; it runs the first reconcile, marks the agent ready, then
/// applies changes until `stop` is set.
pub fn spawn(
    shared: Arc<Shared>,
    opts: WatchOptions,
    stop: Arc<AtomicBool>,
    on_ready: Box<dyn FnOnce() + Send>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("rolloutd-watch".into())
        .spawn(move || Watch::new(shared, opts, stop).run(on_ready))
}

struct Watch {
    shared: Arc<Shared>,
    opts: WatchOptions,
    stop: Arc<AtomicBool>,
    /// Forced to polling after the kernel refused more watches.
    force_poll: Option<String>,
    backoff: Duration,
    last_rescan: Option<Instant>,
    rescan_pending: bool,
    /// When events were last lost, to warn once per burst of losses.
    last_loss: Option<Instant>,
    /// Losses in the current burst after the first (logged at debug).
    losses_in_burst: u64,
    /// Directories walked, with when: their rows are checked again after [`RECHECK_DELAY`].
    recheck: Vec<(Instant, PathBuf)>,
}

impl Watch {
    fn new(shared: Arc<Shared>, opts: WatchOptions, stop: Arc<AtomicBool>) -> Self {
        Watch {
            shared,
            opts,
            stop,
            force_poll: None,
            backoff: RESCAN_BACKOFF_MIN,
            last_rescan: None,
            rescan_pending: false,
            last_loss: None,
            losses_in_burst: 0,
            recheck: Vec::new(),
        }
    }

    fn run(mut self, on_ready: Box<dyn FnOnce() + Send>) {
        let mut on_ready = Some(on_ready);
        while !self.stop.load(Ordering::Acquire) {
            let homes = self.shared.homes();
            let print = fingerprint(&homes);
            let (tx, rx) = mpsc::channel::<DebounceEventResult>();
            let forced_before = self.force_poll.is_some();
            let debouncer = self.start(&homes, tx);
            if self.force_poll.is_some() && !forced_before {
                continue; // the watch limit was hit: start over in poll mode
            }
            // Events queue while the (re)crawl runs, so nothing between the two is lost.
            self.reconcile(on_ready.is_none());
            if let Some(ready) = on_ready.take() {
                self.shared.ready.store(true, Ordering::Release);
                ready();
            }
            self.pump(&rx, &print);
            drop(debouncer);
        }
    }

    /// Creates the debouncer and adds the watches; failures are logged and leave polling or
    /// the periodic root check to catch up.
    fn start(
        &mut self,
        homes: &Homes,
        tx: mpsc::Sender<DebounceEventResult>,
    ) -> Option<AnyDebouncer> {
        let network = homes
            .homes
            .iter()
            .find_map(|h| network_filesystem(&h.real).map(|fs| (h.real.clone(), fs)));
        let poll_reason = match (self.opts.mode, &self.force_poll, network) {
            (WatchMode::Poll, _, _) => Some("watch.mode = \"poll\"".to_owned()),
            (_, Some(reason), _) => Some(reason.clone()),
            (WatchMode::Auto, None, Some((home, fs))) => Some(format!(
                "{} is on {fs}, which sends no remote change events",
                home.display()
            )),
            _ => None,
        };
        let handler = move |r: DebounceEventResult| {
            let _ = tx.send(r);
        };
        let made = match &poll_reason {
            Some(_) => new_debouncer_opt::<_, PollWatcher, NoCache>(
                self.opts.settle,
                None,
                handler,
                NoCache,
                notify::Config::default().with_poll_interval(self.opts.poll_interval),
            )
            .map(AnyDebouncer::Poll),
            None => new_debouncer_opt::<_, RecommendedWatcher, RecommendedCache>(
                self.opts.settle,
                None,
                handler,
                RecommendedCache::new(),
                notify::Config::default(),
            )
            .map(AnyDebouncer::Events),
        };
        let backend = if poll_reason.is_some() {
            "poll"
        } else {
            native_backend()
        };
        *self
            .shared
            .watch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = WatchInfo {
            backend: backend.into(),
            mode: if poll_reason.is_some() {
                "poll"
            } else {
                "events"
            }
            .into(),
            reason: poll_reason.clone(),
        };
        let mut debouncer = match made {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the file watcher; answers stay correct through disk lookups");
                return None;
            }
        };
        for home in &homes.homes {
            let targets = [
                (home.real.clone(), RecursiveMode::NonRecursive),
                (home.sessions_dir(), RecursiveMode::Recursive),
                (home.archived_dir(), RecursiveMode::NonRecursive),
            ];
            for (path, mode) in targets {
                let Ok(real) = canonicalize(&path) else {
                    continue;
                };
                if let Err(e) = debouncer.watch(&real, mode) {
                    if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                        tracing::warn!(path = %real.display(), "inotify watch limit reached; polling this home instead");
                        self.force_poll = Some(format!(
                            "the inotify watch limit was reached watching {}",
                            real.display()
                        ));
                        return None;
                    }
                    tracing::warn!(path = %real.display(), error = %e, "cannot watch");
                }
            }
        }
        Some(debouncer)
    }

    /// Applies events until the roots change or the agent stops.
    fn pump(
        &mut self,
        rx: &mpsc::Receiver<DebounceEventResult>,
        print: &[Option<(PathBuf, FileId)>],
    ) {
        let mut last_check = Instant::now();
        let mut last_degraded_try = Instant::now();
        let mut vanished: Vec<(Instant, PathBuf)> = Vec::new();
        while !self.stop.load(Ordering::Acquire) {
            let wait = if vanished.is_empty() && self.recheck.is_empty() {
                ROOT_CHECK
            } else {
                GONE_GRACE
            };
            match rx.recv_timeout(wait) {
                Ok(Ok(events)) => {
                    if events.iter().any(|e| e.need_rescan()) {
                        self.request_rescan("the kernel event queue overflowed");
                    } else {
                        let first = events.iter().map(|e| e.time).min();
                        let (present, gone): (Vec<PathBuf>, Vec<PathBuf>) = events
                            .into_iter()
                            .filter(|e| changes_content(&e.event.kind))
                            .flat_map(|e| e.event.paths)
                            .partition(|p| std::fs::symlink_metadata(p).is_ok());
                        let now = Instant::now();
                        vanished.extend(gone.into_iter().map(|p| (now, p)));
                        self.recheck.extend(
                            present
                                .iter()
                                .filter(|p| p.is_dir())
                                .map(|p| (now, p.clone())),
                        );
                        self.apply(present);
                        if let Some(t) = first {
                            self.shared
                                .last_lag_ms
                                .store(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                        }
                    }
                }
                Ok(Err(errors)) => {
                    if errors
                        .iter()
                        .any(|e| matches!(e.kind, notify::ErrorKind::MaxFilesWatch))
                    {
                        self.force_poll = Some("the inotify watch limit was reached".into());
                        return;
                    }
                    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    self.request_rescan(&format!("watcher errors: {}", text.join("; ")));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // No watcher: fall back to the periodic root check and rescans.
                    std::thread::sleep(ROOT_CHECK);
                }
            }
            if !self.recheck.is_empty() {
                let (due, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut self.recheck)
                    .into_iter()
                    .partition(|(t, _)| t.elapsed() >= RECHECK_DELAY);
                self.recheck = wait;
                let now = Instant::now();
                // Rows whose file is gone take the same path as a removal event.
                vanished.extend(self.missing_under(due).into_iter().map(|p| (now, p)));
            }
            if !vanished.is_empty() {
                let (due, wait): (Vec<_>, Vec<_>) = vanished
                    .drain(..)
                    .partition(|(t, _)| t.elapsed() >= GONE_GRACE);
                vanished = wait;
                self.apply(due.into_iter().map(|(_, p)| p).collect());
            }
            if self.rescan_pending && self.rescan_allowed() {
                self.reconcile(true);
            }
            if last_degraded_try.elapsed() >= DEGRADED_RETRY {
                last_degraded_try = Instant::now();
                if self.shared.degraded().is_some() {
                    self.reconcile(true);
                }
            }
            if last_check.elapsed() >= ROOT_CHECK {
                last_check = Instant::now();
                if fingerprint(&self.shared.homes()) != print {
                    tracing::info!("a home or its rollout directories changed identity; re-establishing watches");
                    self.refresh_homes();
                    return;
                }
            }
        }
    }

    /// Paths of rows at or under `dirs` whose file no longer exists.
    fn missing_under(&self, dirs: Vec<(Instant, PathBuf)>) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = dirs.into_iter().map(|(_, d)| d).collect();
        dirs.sort();
        dirs.dedup();
        let mut missing = Vec::new();
        for dir in dirs {
            let paths = self
                .shared
                .index
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .paths_at_or_under(&dir);
            match paths {
                Ok(paths) => missing.extend(
                    paths
                        .into_iter()
                        .filter(|p| std::fs::symlink_metadata(p).is_err()),
                ),
                Err(e) => tracing::warn!(error = %e, "could not recheck a directory"),
            }
        }
        // A whole home's paths were just held; give the pages back, as after a crawl.
        crawl::release_freed_memory();
        missing
    }

    fn apply(&mut self, paths: Vec<PathBuf>) {
        if paths.is_empty() {
            return;
        }
        if let Err(e) = apply::apply_paths(&self.shared, paths) {
            tracing::warn!(error = %e, "could not apply changes; rescanning");
            self.request_rescan("the index rejected a change");
        }
    }

    /// Re-resolves the homes' realpaths (a retargeted symlink moves a home); the restarted
    /// watch loop then watches, and reconciles, the new location.
    fn refresh_homes(&self) {
        let mut homes = self
            .shared
            .homes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let fresh = homes.refreshed();
        for (old, new) in homes.homes.iter().zip(&fresh.homes) {
            if old.real != new.real {
                tracing::info!(home = %new.configured.display(), from = %old.real.display(), to = %new.real.display(), "home moved");
            }
        }
        *homes = Arc::new(fresh);
    }

    /// Asks for a full reconcile, at most once per backoff window; warns once per burst.
    fn request_rescan(&mut self, why: &str) {
        let new_burst = self.last_loss.is_none_or(|t| t.elapsed() >= BURST_QUIET);
        self.last_loss = Some(Instant::now());
        if new_burst {
            if self.losses_in_burst > 0 {
                tracing::info!(
                    losses = self.losses_in_burst + 1,
                    "the previous burst of lost events is over"
                );
            }
            self.losses_in_burst = 0;
            tracing::warn!(reason = why, "events were lost; a full reconcile follows (further losses in this burst are logged at debug)");
        } else {
            self.losses_in_burst += 1;
            tracing::debug!(
                reason = why,
                losses = self.losses_in_burst + 1,
                "events lost again in this burst"
            );
        }
        self.rescan_pending = true;
        if self.rescan_allowed() {
            self.reconcile(true);
        }
    }

    fn rescan_allowed(&self) -> bool {
        self.last_rescan.is_none_or(|t| t.elapsed() >= self.backoff)
    }

    /// Runs a full reconcile; after the first, it counts as a rescan and is announced.
    fn reconcile(&mut self, is_rescan: bool) {
        if is_rescan {
            // Back-to-back rescans double the window; a quiet period resets it.
            self.backoff = match self.last_rescan {
                Some(t) if t.elapsed() < self.backoff * 4 => {
                    (self.backoff * 2).min(RESCAN_BACKOFF_MAX)
                }
                _ => RESCAN_BACKOFF_MIN,
            };
            self.last_rescan = Some(Instant::now());
            self.rescan_pending = false;
        }
        let homes = self.shared.homes();
        let walked = Instant::now();
        self.recheck.extend(
            crawl::allowed_roots(&homes)
                .into_iter()
                .map(|root| (walked, root)),
        );
        match apply::reconcile(&self.shared, &homes, is_rescan) {
            Ok(summary) => {
                tracing::info!(
                    read = summary.read,
                    unchanged = summary.unchanged,
                    removed = summary.removed,
                    ms = summary.elapsed.as_millis() as u64,
                    "reconciled"
                );
            }
            Err(e) if crate::index::is_resource_failure(&e) => {
                // Logged once by the index when it became degraded; retried every second.
                tracing::debug!(error = %e, "reconcile failed: the index is degraded")
            }
            Err(e) => {
                tracing::error!(error = %e, "reconcile failed; answers fall back to disk lookups")
            }
        }
    }
}

/// Opening or reading a file or a directory (a `find`, a backup, our own head reads)
/// changes nothing; only a write that finished does.
fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        notify::EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        notify::EventKind::Access(_) => false,
        _ => true,
    }
}

fn native_backend() -> &'static str {
    if cfg!(target_os = "linux") {
        "inotify"
    } else if cfg!(target_os = "macos") {
        "fsevents"
    } else {
        "kqueue"
    }
}
