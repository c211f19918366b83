//! Keeps the index live: raw notify events settled for ~20 ms ([`policy::Settle`]), a full
//! reconcile when events were lost, polling on filesystems that send no events, and
//! re-established watches when a home is deleted, recreated or its symlink retargeted.
//!
//! Each home is watched non-recursively (to see `sessions/` and `archived_sessions/`
//! appear), `sessions/` recursively and `archived_sessions/` flat. Never the whole home
//! recursively: Codex's SQLite WAL files there churn constantly. The loop sleeps until the
//! next thing is due (an event, a settled batch, a delayed path, the root check), so an
//! idle home costs about one wake-up a second.

pub mod apply;
pub mod policy;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use notify::{PollWatcher, RecommendedWatcher, RecursiveMode, Watcher};

use crate::crawl;
use crate::identity::{canonicalize, FileId, Homes, Stamp};
use crate::live::{Shared, WatchInfo};
use policy::{Delayed, LossBurst, RescanBackoff, Settle};

pub use crate::config::WatchMode;

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

/// How often the watched roots are checked for deletion or a retargeted symlink (which
/// sends no event to any watch). An event at a root itself brings the check forward, so
/// this bounds only the silent cases, and sets the idle agent's wake-ups (one per check).
const ROOT_CHECK: Duration = Duration::from_secs(2);
/// How long a vanished path waits before it counts as deleted (see [`policy::Delayed`]).
const GONE_GRACE: Duration = Duration::from_millis(100);
/// How long after a directory was walked its rows are checked against the disk again.
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

type Events = mpsc::Receiver<notify::Result<notify::Event>>;

/// Starts the watcher thread; it runs the first reconcile, marks the agent ready, then
/// applies changes until the shutdown token fires.
pub fn spawn(
    shared: Arc<Shared>,
    opts: WatchOptions,
    on_ready: Box<dyn FnOnce() + Send>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("rolloutd-watch".into())
        .spawn(move || Watch::new(shared, opts).run(on_ready))
}

struct Watch {
    shared: Arc<Shared>,
    opts: WatchOptions,
    /// Forced to polling after the kernel refused more watches.
    force_poll: Option<String>,
    backoff: RescanBackoff,
    rescan_pending: bool,
    losses: LossBurst,
    /// Vanished paths wait out the rename grace before they count as deleted.
    vanished: Delayed,
    /// Directories walked: their rows are checked against the disk again a little later.
    recheck: Delayed,
}

impl Watch {
    fn new(shared: Arc<Shared>, opts: WatchOptions) -> Self {
        Watch {
            shared,
            opts,
            force_poll: None,
            backoff: RescanBackoff::new(RESCAN_BACKOFF_MIN, RESCAN_BACKOFF_MAX),
            rescan_pending: false,
            losses: LossBurst::new(BURST_QUIET),
            vanished: Delayed::new(GONE_GRACE),
            recheck: Delayed::new(RECHECK_DELAY),
        }
    }

    fn run(mut self, on_ready: Box<dyn FnOnce() + Send>) {
        let mut on_ready = Some(on_ready);
        while !self.shared.shutdown.is_cancelled() {
            let homes = self.shared.homes();
            let print = fingerprint(&homes);
            let (tx, rx) = mpsc::channel();
            let forced_before = self.force_poll.is_some();
            let watcher = self.start(&homes, tx);
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
            drop(watcher);
        }
    }

    /// Creates the watcher and adds the watches; failures are logged and leave polling or
    /// the periodic root check to catch up.
    fn start(
        &mut self,
        homes: &Homes,
        tx: mpsc::Sender<notify::Result<notify::Event>>,
    ) -> Option<Box<dyn Watcher + Send>> {
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
        let handler = move |r: notify::Result<notify::Event>| {
            let _ = tx.send(r);
        };
        let made: notify::Result<Box<dyn Watcher + Send>> = match &poll_reason {
            Some(_) => PollWatcher::new(
                handler,
                notify::Config::default().with_poll_interval(self.opts.poll_interval),
            )
            .map(|w| Box::new(w) as Box<dyn Watcher + Send>),
            None => RecommendedWatcher::new(handler, notify::Config::default())
                .map(|w| Box::new(w) as Box<dyn Watcher + Send>),
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
        let mut watcher = match made {
            Ok(w) => w,
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
                if let Err(e) = watcher.watch(&real, mode) {
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
        Some(watcher)
    }

    /// Applies events until the roots change or the agent stops; sleeps until the next
    /// thing falls due.
    fn pump(&mut self, rx: &Events, print: &[Option<(PathBuf, FileId)>]) {
        let mut settle = Settle::new(self.opts.settle);
        let mut next_root_check = Instant::now() + ROOT_CHECK;
        let mut next_degraded_try = Instant::now() + DEGRADED_RETRY;
        let mut rewatch = false;
        while !self.shared.shutdown.is_cancelled() {
            let rescan_at = self
                .rescan_pending
                .then(|| self.backoff.next_allowed())
                .flatten();
            let wake = [
                settle.deadline(),
                self.vanished.next_due(),
                self.recheck.next_due(),
                rescan_at,
                Some(next_root_check),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_root_check);
            match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Ok(event)) => {
                    if event.need_rescan() {
                        self.request_rescan("the kernel event queue overflowed");
                    } else if changes_content(&event.kind) {
                        let at_root = event
                            .paths
                            .iter()
                            .any(|p| print.iter().flatten().any(|(root, _)| root == p));
                        if at_root {
                            next_root_check = Instant::now();
                        }
                        rewatch |= moved_directory(&event);
                        settle.push(Instant::now(), event.paths);
                    }
                }
                Ok(Err(e)) => {
                    if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                        self.force_poll = Some("the inotify watch limit was reached".into());
                        return;
                    }
                    self.request_rescan(&format!("watcher error: {e}"));
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // No watcher: fall back to the periodic root check and rescans.
                    std::thread::sleep(wake.saturating_duration_since(Instant::now()));
                }
            }
            let now = Instant::now();
            if let Some((first, paths)) = settle.take_due(now) {
                self.settled(paths);
                self.shared
                    .last_lag_ms
                    .store(first.elapsed().as_millis() as u64, Ordering::Relaxed);
                if rewatch {
                    // inotify's watches follow a moved directory's inode but report its
                    // old path: watch afresh (and reconcile what moved meanwhile).
                    tracing::info!("a directory was moved inside a home; re-establishing watches");
                    return;
                }
            }
            let due = self.recheck.take_due(now);
            if !due.is_empty() {
                // Rows whose file is gone take the same path as a removal event.
                for p in self.missing_under(due) {
                    self.vanished.push(now, p);
                }
            }
            let due = self.vanished.take_due(now);
            self.apply(due);
            if self.rescan_pending && self.backoff.allowed(now) {
                self.reconcile(true);
            }
            if now >= next_degraded_try {
                next_degraded_try = now + DEGRADED_RETRY;
                if self.shared.degraded().is_some() {
                    self.reconcile(true);
                }
            }
            if now >= next_root_check {
                next_root_check = now + ROOT_CHECK;
                if fingerprint(&self.shared.homes()) != print {
                    tracing::info!("a home or its rollout directories changed identity; re-establishing watches");
                    self.refresh_homes();
                    return;
                }
            }
        }
    }

    /// A settled batch: present paths now; vanished ones after the rename grace; new
    /// directories are rechecked after their walk.
    fn settled(&mut self, paths: Vec<PathBuf>) {
        let now = Instant::now();
        let mut present = Vec::with_capacity(paths.len());
        for p in paths {
            match std::fs::symlink_metadata(&p) {
                Ok(meta) => {
                    if meta.is_dir() {
                        self.recheck.push(now, p.clone());
                    }
                    present.push(p);
                }
                Err(_) => self.vanished.push(now, p),
            }
        }
        self.apply(present);
    }

    /// Paths of rows at or under `dirs` whose file no longer exists.
    fn missing_under(&self, dirs: Vec<PathBuf>) -> Vec<PathBuf> {
        let mut missing = Vec::new();
        for dir in dirs {
            match self.shared.writer().paths_at_or_under(&dir) {
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
        let old = self.shared.homes();
        let fresh = old.refreshed();
        for (old, new) in old.homes.iter().zip(&fresh.homes) {
            if old.real != new.real {
                tracing::info!(home = %new.configured.display(), from = %old.real.display(), to = %new.real.display(), "home moved");
            }
        }
        self.shared.set_homes(fresh);
    }

    /// Asks for a full reconcile, at most once per backoff window; warns once per burst.
    fn request_rescan(&mut self, why: &str) {
        let now = Instant::now();
        let repeats = self.losses.repeats;
        if self.losses.lost(now) {
            if repeats > 0 {
                tracing::info!(
                    losses = repeats + 1,
                    "the previous burst of lost events is over"
                );
            }
            tracing::warn!(reason = why, "events were lost; a full reconcile follows (further losses in this burst are logged at debug)");
        } else {
            tracing::debug!(
                reason = why,
                losses = self.losses.repeats + 1,
                "events lost again in this burst"
            );
        }
        self.rescan_pending = true;
        if self.backoff.allowed(now) {
            self.reconcile(true);
        }
    }

    /// Runs a full reconcile; after the first, it counts as a rescan and is announced.
    fn reconcile(&mut self, is_rescan: bool) {
        let now = Instant::now();
        if is_rescan {
            self.backoff.ran(now);
            self.rescan_pending = false;
        }
        let homes = self.shared.homes();
        for root in crawl::allowed_roots(&homes) {
            self.recheck.push(now, root);
        }
        let result = if is_rescan {
            self.shared.rescan()
        } else {
            crawl::reconcile(&homes, &self.shared.index, &self.shared.limits, &())
        };
        match result {
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

/// True for the arriving half of a rename whose path is a directory now.
fn moved_directory(event: &notify::Event) -> bool {
    use notify::event::{ModifyKind, RenameMode};
    matches!(
        event.kind,
        notify::EventKind::Modify(ModifyKind::Name(RenameMode::To | RenameMode::Both))
    ) && event.paths.last().is_some_and(|p| p.is_dir())
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
