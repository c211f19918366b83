//! Keeps the index live: raw notify events settled for ~20 ms ([`policy::Settle`]), a full
//! reconcile when events were lost, polling on filesystems that send no events, and
//! re-established watches when a home is deleted, recreated or its symlink retargeted.
//!
//! Each home's mode is decided alone: a home on NFS, SMB, FUSE… (or every home under
//! `watch.mode = "poll"` or after the inotify watch limit) is polled by directory stamps
//! ([`poll`]), whose changed paths go through the same settle and apply as events; the
//! others keep their events.
//!
//! Each home is watched non-recursively (to see `sessions/` and `archived_sessions/`
//! appear), `sessions/` recursively and `archived_sessions/` flat. Never the whole home
//! recursively: Codex's SQLite WAL files there churn constantly. The loop sleeps until the
//! next thing is due (an event, a settled batch, a delayed path, the root check), so an
//! idle home costs about one wake-up a second.

pub mod apply;
pub mod policy;
pub mod poll;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

use crate::crawl;
use crate::identity::{canonicalize, FileId, Home, Homes, Stamp};
use crate::index::PathTable;
use crate::live::{GuardedHome, HangGuard, Shared, WatchInfo};
use crate::protocol::result::HomeWatcher;
use policy::{Delayed, LossBurst, RescanBackoff, Settle};
use poll::DirPoller;

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

/// The network or FUSE filesystem a home's rollouts are on, and where: the home's own, else
/// that of its `sessions/` or `archived_sessions/` (a mount there, or a symlink onto one:
/// archives kept on a NAS). Such a home is polled, and its queries bounded, like a home on
/// one: a write behind that mount sends no event, and the mount can hang.
pub fn rollouts_network_filesystem(home: &Home) -> Option<(PathBuf, &'static str)> {
    [home.real.clone(), home.sessions_dir(), home.archived_dir()]
        .into_iter()
        .find_map(|dir| network_filesystem(&dir).map(|fs| (dir, fs)))
}

/// The filesystem type `path` is on, as the mount table names it (`ext4`, `overlay`,
/// `fuse.bindfs`, `nfs4`…), else from the `statfs` magic; `unknown` when neither says.
pub fn filesystem_name(path: &Path) -> String {
    mount_type(path)
        .or_else(|| network_filesystem(path).map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// A home as the hang guard sees it: queries on one on a FUSE or network filesystem (the
/// ones the watcher polls) run under `server.fs_timeout`.
fn guarded_home(h: &Home, filesystem: Option<&'static str>) -> GuardedHome {
    let mut spellings = h.spellings.clone();
    spellings.extend([h.configured.clone(), h.real.clone()]);
    GuardedHome {
        configured: h.configured.clone(),
        spellings,
        filesystem,
    }
}

/// The configured homes resolved (realpaths, spellings, filesystem), each on a thread of its
/// own under the guard's deadline: resolving stats the home, and a hung FUSE or network
/// filesystem never answers. A home that does not answer keeps its `previous` resolution
/// (else its configured spelling) and counts as one that may hang, so that it is probed,
/// and left alone, until it answers; a home holds at most one blocked thread.
pub fn resolve_homes(
    guard: &Arc<HangGuard>,
    configured: &[PathBuf],
    aliases: &[(PathBuf, PathBuf)],
    previous: Option<&Homes>,
) -> (Homes, Vec<GuardedHome>) {
    let mut kinds: Vec<(PathBuf, Option<&'static str>)> = Vec::new();
    let mut resolved: Vec<Home> = Vec::with_capacity(configured.len());
    for path in configured {
        let key = unresolved_guard(path);
        let was_stuck = guard.stuck_for(&key.configured).is_some();
        let (p, a) = (path.clone(), aliases.to_vec());
        let answered = guard.bounded(&key, move || {
            let home = Home::new(&p, &a);
            let filesystem = rollouts_network_filesystem(&home).map(|(_, fs)| fs);
            (home, filesystem)
        });
        let (home, filesystem) = answered.unwrap_or_else(|| {
            if was_stuck {
                tracing::debug!(home = %key.configured.display(), "a home's filesystem still does not answer");
            } else {
                tracing::warn!(home = %key.configured.display(), timeout = ?guard.timeout(), "a home's filesystem does not answer; it is left alone until it does");
            }
            let home = previous
                .and_then(|p| p.homes.iter().find(|h| h.configured == key.configured))
                .cloned()
                .unwrap_or_else(|| Home::unresolved(path, aliases));
            (home, key.filesystem)
        });
        kinds.push((home.configured.clone(), filesystem));
        resolved.push(home);
    }
    let homes = Homes::of(resolved, aliases);
    let guarded = homes
        .homes
        .iter()
        .map(|h| {
            let kind = kinds
                .iter()
                .find(|(c, _)| *c == h.configured)
                .and_then(|(_, k)| *k);
            guarded_home(h, kind)
        })
        .collect();
    (homes, guarded)
}

/// `path`'s realpath, asked on the guard's threads within `timeout` (see
/// [`resolve_homes`]); `None` when it does not exist or its filesystem does not answer.
pub fn realpath_within(guard: &Arc<HangGuard>, path: &Path, timeout: Duration) -> Option<PathBuf> {
    let p = path.to_owned();
    guard
        .bounded_within(&unresolved_guard(path), timeout, move || {
            canonicalize(&p).ok()
        })
        .flatten()
}

/// A home (or the index's directory) before it is resolved, as the guard knows it (by its configured spelling). Should
/// it not answer, its filesystem is named from the mount table, lexically: it may hang
/// whatever the table says (a local symlink onto a hung mount), so it is never `None`.
pub fn unresolved_guard(path: &Path) -> GuardedHome {
    let configured = crate::identity::normalize_lexically(path);
    let filesystem = mount_type_as_spelled(&configured)
        .and_then(|t| network_kind(&t))
        .unwrap_or("unknown");
    GuardedHome {
        spellings: vec![configured.clone()],
        configured,
        filesystem: Some(filesystem),
    }
}

/// The [`network_filesystem`] name of the mount `path` is on as spelled (the mount table
/// read, `path` never touched: it may be on a mount that hangs). `None` when it is local,
/// or when its spelling goes through a symlink onto another mount.
pub fn network_filesystem_as_spelled(path: &Path) -> Option<&'static str> {
    mount_type_as_spelled(path).and_then(|t| network_kind(&t))
}

/// The [`network_filesystem`] name of a mount table type (`fuse.sshfs`, `nfs4`…).
fn network_kind(fstype: &str) -> Option<&'static str> {
    match fstype.split('.').next().unwrap_or(fstype) {
        "fuse" | "fuseblk" => Some("fuse"),
        "nfs" | "nfs4" => Some("nfs"),
        "smb3" | "smbfs" => Some("smb"),
        "cifs" => Some("cifs"),
        "9p" => Some("9p"),
        "afs" => Some("afs"),
        "ceph" => Some("ceph"),
        "lustre" => Some("lustre"),
        "gpfs" => Some("gpfs"),
        _ => None,
    }
}

/// The type of the mount holding `path` (the longest mount point above it) from
/// `/proc/self/mountinfo`; `None` off Linux.
fn mount_type(path: &Path) -> Option<String> {
    mount_type_as_spelled(&canonicalize(path).unwrap_or_else(|_| path.to_owned()))
}

/// [`mount_type`] of `path` as spelled (nothing on its filesystem is touched, so it answers
/// for a hung mount too): the longest mount point lexically above it.
pub fn mount_type_as_spelled(path: &Path) -> Option<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for m in table.lines().filter_map(crate::identity::MountLine::parse) {
        let point = unescape_mount(m.mount_point);
        if path.starts_with(&point) && best.as_ref().is_none_or(|(len, _)| point.len() >= *len) {
            best = Some((point.len(), m.fstype.to_owned()));
        }
    }
    best.map(|(_, t)| t)
}

/// Mount points escape space, tab, newline and backslash as `\ooo`.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|o| o.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(o)) => {
                out.push((o[0] - b'0') * 64 + (o[1] - b'0') * 8 + (o[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The identity of every watched root; a change means the watches must be rebuilt. The
/// birth time is part of it: a root deleted and made again while nothing watched it (its
/// watch was being set up as it went) can get its old inode number back.
///
/// A home in `hung` is not looked at (its entries are `None`): once it answers, its
/// fingerprint changes, and the watches and a reconcile take it in.
fn fingerprint(homes: &Homes, hung: &[PathBuf]) -> Vec<Option<(PathBuf, FileId, i64)>> {
    homes
        .homes
        .iter()
        .flat_map(|h| {
            [
                h.configured.clone(),
                h.configured.join(crate::identity::SESSIONS_DIR),
                h.configured.join(crate::identity::ARCHIVED_DIR),
            ]
            .map(|p| (!is_hung(h, hung)).then_some(p))
        })
        .map(|p| {
            let real = canonicalize(&p?).ok()?;
            let stamp = Stamp::of(&real).ok()?;
            Some((real, stamp.id, stamp.btime_ns))
        })
        .collect()
}

/// True when a home resolves elsewhere than its recorded realpath: it was missing when the
/// homes were resolved (and its configured spelling stood in), or its symlink moved. The
/// fingerprint alone can miss this when the watches were set up after the home came back.
fn stale_realpath(homes: &Homes) -> bool {
    homes
        .homes
        .iter()
        .any(|h| canonicalize(&h.configured).is_ok_and(|real| real != h.real))
}

/// True when `home` is among the spellings of the homes that do not answer.
fn is_hung(home: &Home, hung: &[PathBuf]) -> bool {
    hung.iter()
        .any(|h| *h == home.configured || *h == home.real)
}

/// What wakes the watcher thread.
enum Wake {
    Fs(notify::Result<notify::Event>),
    /// The shutdown token fired: stop now, not at the next timer (up to [`ROOT_CHECK`]
    /// away), so the agent's bounded wait for this thread sees it end and the index is
    /// closed cleanly.
    Stop,
}

type Events = mpsc::Receiver<Wake>;

/// Events held for the watcher thread. It takes none while a reconcile runs (seconds on a
/// large home), so the queue is bounded, as the kernel's is: past it a burst counts as lost
/// events, and a full reconcile follows. The channel allocates as events come and frees
/// as they are taken, so an empty queue costs nothing; a full one holds ~10 MB.
const EVENT_QUEUE: usize = 65_536;

/// The sender of the watcher's current event channel, for the stop signal.
type Stopper = Arc<std::sync::Mutex<Option<mpsc::Sender<Wake>>>>;

/// Starts the watcher thread; it runs the first reconcile, marks the agent ready, then
/// applies changes until the shutdown token fires. Called inside a tokio runtime, a task
/// wakes the thread the moment the token fires.
pub fn spawn(
    shared: Arc<Shared>,
    opts: WatchOptions,
    on_ready: Box<dyn FnOnce() + Send>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let stopper: Stopper = Arc::default();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let (token, stopper) = (shared.shutdown.clone(), Arc::clone(&stopper));
        runtime.spawn(async move {
            token.cancelled().await;
            let sender = stopper
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(tx) = sender {
                let _ = tx.send(Wake::Stop);
            }
        });
    }
    std::thread::Builder::new()
        .name("rolloutd-watch".into())
        .spawn(move || Watch::new(shared, opts, stopper).run(on_ready))
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
    /// Directory stamps of the polled homes, when any home is polled.
    poller: Option<DirPoller>,
    stopper: Stopper,
    /// Events in the queue, counted by notify's thread and this one.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Set by notify's thread when an event found the queue full.
    overflowed: Arc<AtomicBool>,
    /// Spellings of the homes whose filesystem did not answer this turn's probe: nothing
    /// under them is touched (a call there may never return) until they answer again.
    hung: Vec<PathBuf>,
    /// What this thread would have done under those homes meanwhile.
    held: Held,
}

/// Work under a home whose filesystem does not answer, put off until it does.
#[derive(Default)]
struct Held {
    settled: Vec<PathBuf>,
    recheck: Vec<PathBuf>,
    vanished: Vec<PathBuf>,
}

/// Moves the paths under a spelling in `hung` to `held`; returns the rest.
fn hold_back(hung: &[PathBuf], paths: Vec<PathBuf>, held: &mut Vec<PathBuf>) -> Vec<PathBuf> {
    if hung.is_empty() {
        return paths;
    }
    let (back, rest): (Vec<PathBuf>, Vec<PathBuf>) = paths
        .into_iter()
        .partition(|p| hung.iter().any(|h| p.starts_with(h)));
    held.extend(back);
    rest
}

impl Watch {
    fn new(shared: Arc<Shared>, opts: WatchOptions, stopper: Stopper) -> Self {
        Watch {
            stopper,
            shared,
            opts,
            force_poll: None,
            backoff: RescanBackoff::new(RESCAN_BACKOFF_MIN, RESCAN_BACKOFF_MAX),
            rescan_pending: false,
            losses: LossBurst::new(BURST_QUIET),
            vanished: Delayed::new(GONE_GRACE),
            recheck: Delayed::new(RECHECK_DELAY),
            poller: None,
            queued: Arc::default(),
            overflowed: Arc::default(),
            hung: Vec::new(),
            held: Held::default(),
        }
    }

    fn run(mut self, on_ready: Box<dyn FnOnce() + Send>) {
        let mut on_ready = Some(on_ready);
        while !self.shared.shutdown.is_cancelled() {
            // A home missing when the homes were last resolved has its configured spelling
            // as its realpath; resolved again here, so a home made again since is watched,
            // and its events matched, where it really is.
            self.refresh_homes();
            // A home whose filesystem does not answer is left out of the watches, the poller
            // and the reconcile: once it answers, the root check sees its fingerprint change
            // and starts this over, taking it in.
            self.hung = self.silent_homes();
            if self.hung.is_empty() {
                // The reconcile below covers whatever was held back.
                self.held = Held::default();
            }
            let homes = self.shared.homes();
            let print = fingerprint(&homes, &self.hung);
            let (tx, rx) = mpsc::channel();
            // Events of the previous channel are gone with it.
            self.queued.store(0, Ordering::Release);
            // Set before the token is checked again (the loop's condition, the pump's), so
            // a stop is never missed between the two.
            *self
                .stopper
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(tx.clone());
            let forced_before = self.force_poll.is_some();
            let mut watches = self.start(&homes, tx);
            if self.force_poll.is_some() && !forced_before {
                continue; // the watch limit was hit: start over in poll mode
            }
            // Events queue while the (re)crawl runs, so nothing between the two is lost;
            // each directory of the trees is watched as the walk is about to list it.
            if !self.reconcile_watching(on_ready.is_none(), watches.as_mut()) {
                continue; // the watch limit was hit: start over in poll mode
            }
            if let Some(ready) = on_ready.take() {
                self.shared.ready.store(true, Ordering::Release);
                ready();
            }
            self.pump(&rx, &print, watches.as_mut());
            drop(watches);
        }
    }

    /// Creates the watcher and adds the watches (event homes), or the directory poller
    /// (polled homes); failures are logged and leave polling or the periodic root check to
    /// catch up.
    fn start(&mut self, homes: &Homes, tx: mpsc::Sender<Wake>) -> Option<Watches> {
        let interval = self.opts.poll_interval;
        let mut per_home = Vec::with_capacity(homes.homes.len());
        let guarded = self.shared.hang.all();
        for home in &homes.homes {
            let silent = is_hung(home, &self.hung);
            // Nothing on a home that does not answer is looked at: the mount table, lexically,
            // names its filesystem, and the guard's view whether it is a network one.
            let (filesystem, network) = if silent {
                let kind = guarded
                    .iter()
                    .find(|g| g.configured == home.configured)
                    .and_then(|g| g.filesystem);
                let name = mount_type_as_spelled(&home.real).unwrap_or_else(|| "unknown".into());
                (name, kind.map(|fs| (home.real.clone(), fs)))
            } else {
                (
                    filesystem_name(&home.real),
                    rollouts_network_filesystem(home),
                )
            };
            let reason = match (self.opts.mode, &self.force_poll) {
                (WatchMode::Poll, _) => Some("watch.mode = \"poll\"".to_owned()),
                (_, Some(reason)) => Some(reason.clone()),
                (WatchMode::Auto, None) => network.map(|(dir, fs)| {
                    // Named without touching a silent home (its own `filesystem` is known).
                    let on = if dir == home.real {
                        filesystem.clone()
                    } else {
                        filesystem_name(&dir)
                    };
                    format!(
                        "{} is on {on} ({fs}), which sends no change events for writes made outside this mount",
                        dir.display()
                    )
                }),
                (WatchMode::Events, None) => None,
            };
            per_home.push(HomeWatcher {
                home: home.configured.clone(),
                filesystem,
                mode: if reason.is_some() { "poll" } else { "events" }.into(),
                poll_interval_ms: reason.is_some().then_some(interval.as_millis() as u64),
                reason,
                // Filled in per status request, from the hang guard.
                unresponsive_ms: None,
            });
        }
        let polled = per_home.iter().filter(|h| h.reason.is_some()).count();
        let (backend, mode) = match polled {
            0 => (native_backend().to_owned(), "events"),
            n if n == per_home.len() => ("poll".to_owned(), "poll"),
            _ => (format!("{}+poll", native_backend()), "mixed"),
        };
        let first_reason = per_home.iter().find_map(|h| h.reason.clone());
        for (home, w) in homes.homes.iter().zip(&per_home) {
            if let Some(reason) = &w.reason {
                tracing::info!(home = %home.configured.display(), filesystem = %w.filesystem, interval_ms = interval.as_millis() as u64, reason = %reason, "polling this home's directories");
            }
        }
        *self
            .shared
            .watch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = WatchInfo {
            backend,
            mode: mode.into(),
            reason: first_reason,
            homes: per_home.clone(),
        };
        // Polled homes: their directory stamps are taken now, before the reconcile that
        // follows, so a change made meanwhile shows as a changed stamp in the first round.
        self.poller = (polled > 0).then(|| {
            let mut poller = DirPoller::new(interval, Instant::now());
            for (home, _) in homes
                .homes
                .iter()
                .zip(&per_home)
                .filter(|(h, w)| w.reason.is_some() && !is_hung(h, &self.hung))
            {
                for dir in [home.sessions_dir(), home.archived_dir()] {
                    let dir = canonicalize(&dir).unwrap_or(dir);
                    poll::track_tree(&mut poller, &dir, true);
                }
            }
            poller
        });
        if polled == per_home.len() {
            return None;
        }
        let overflowed = Arc::clone(&self.overflowed);
        let queued = Arc::clone(&self.queued);
        let handler = move |r: notify::Result<notify::Event>| {
            // notify always asks the kernel for opens too: the agent's own reads (a head
            // per file while a reconcile runs) would fill the queue with events that change
            // nothing.
            if let Ok(e) = &r {
                if !e.need_rescan() && !changes_content(&e.kind) {
                    return;
                }
            }
            if queued.fetch_add(1, Ordering::AcqRel) >= EVENT_QUEUE {
                queued.fetch_sub(1, Ordering::AcqRel);
                overflowed.store(true, Ordering::Release);
            } else if tx.send(Wake::Fs(r)).is_err() {
                queued.fetch_sub(1, Ordering::AcqRel);
            }
        };
        let watcher: Box<dyn Watcher + Send> = match RecommendedWatcher::new(
            handler,
            notify::Config::default(),
        ) {
            Ok(w) => Box::new(w),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the file watcher; answers stay correct through disk lookups");
                return None;
            }
        };
        let mut watches = Watches {
            watcher,
            trees: Vec::new(),
        };
        for (home, _) in homes
            .homes
            .iter()
            .zip(&per_home)
            .filter(|(h, w)| w.reason.is_none() && !is_hung(h, &self.hung))
        {
            let targets = [
                (home.real.clone(), false),
                (home.sessions_dir(), true),
                // The whole tree too: Codex's lookup by id walks the whole archive tree.
                (home.archived_dir(), true),
            ];
            for (path, tree) in targets {
                let Ok(real) = canonicalize(&path) else {
                    continue;
                };
                if tree {
                    // The directories below are watched by the reconcile that follows.
                    watches.trees.push(real.clone());
                }
                let watched = watches.watcher.watch(&real, RecursiveMode::NonRecursive);
                if let Err(e) = watched {
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
        Some(watches)
    }

    /// One polling round over the polled homes' directories; what changed goes into the
    /// settle batch as event paths would.
    fn poll_round(&mut self, settle: &mut Settle) {
        let Some(poller) = self.poller.as_mut() else {
            return;
        };
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as i64);
        let shared = &self.shared;
        let mut known = |dir: &Path| match shared.writer().paths_at_or_under(dir) {
            Ok(paths) => paths,
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "could not list indexed paths");
                Vec::new()
            }
        };
        let hung = &self.hung;
        let skip = |dir: &Path| hung.iter().any(|h| dir.starts_with(h));
        let changed = poll::round(poller, Instant::now(), now_ns, &mut known, &skip);
        if !changed.is_empty() {
            tracing::debug!(paths = changed.len(), "polling found changes");
            settle.push(Instant::now(), changed);
        }
    }

    /// Applies events until the roots change or the agent stops; sleeps until the next
    /// thing falls due.
    fn pump(
        &mut self,
        rx: &Events,
        print: &[Option<(PathBuf, FileId, i64)>],
        mut watches: Option<&mut Watches>,
    ) {
        let mut settle = Settle::new(self.opts.settle);
        let mut next_root_check = Instant::now() + ROOT_CHECK;
        let mut next_degraded_try = Instant::now() + DEGRADED_RETRY;
        let mut rewatch = false;
        let mut root_event = false;
        // A root appearing, going or moving (Codex makes `sessions/` and `archived_sessions/`
        // on first use) is checked at once: until it is watched, what happens in it is seen
        // only by the reconcile that follows.
        let roots = root_paths(&self.shared.homes(), &self.hung);
        while !self.shared.shutdown.is_cancelled() {
            let rescan_at = (self.rescan_pending && self.hung.is_empty())
                .then(|| self.backoff.next_allowed())
                .flatten();
            let wake = [
                settle.deadline(),
                self.vanished.next_due(),
                self.recheck.next_due(),
                rescan_at,
                self.poller.as_ref().map(DirPoller::due),
                Some(next_root_check),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_root_check);
            let woke = rx.recv_timeout(wake.saturating_duration_since(Instant::now()));
            self.probe_homes(&mut settle);
            if self.overflowed.swap(false, Ordering::AcqRel) {
                self.request_rescan("the watcher's event queue overflowed");
            }
            if let Ok(Wake::Fs(_)) = &woke {
                self.queued.fetch_sub(1, Ordering::AcqRel);
            }
            match woke {
                Ok(Wake::Stop) => return,
                Ok(Wake::Fs(Ok(event))) => {
                    if event.need_rescan() {
                        self.request_rescan("the kernel event queue overflowed");
                    } else if changes_content(&event.kind) {
                        if event.paths.iter().any(|p| roots.contains(p)) {
                            // Re-watched even when the identities look the same: a root
                            // deleted and made again may get its old inode number back.
                            next_root_check = Instant::now();
                            root_event = true;
                        }
                        rewatch |= moved_directory(&event);
                        if let (Some(w), true) = (watches.as_deref_mut(), made_directory(&event)) {
                            // Watched before the settled batch walks it, so what is made
                            // in it from here on is seen either way.
                            if let Err(e) = w.add_new_dirs(&event.paths) {
                                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                                    self.force_poll =
                                        Some("the inotify watch limit was reached".into());
                                    return;
                                }
                            }
                        }
                        settle.push(Instant::now(), event.paths);
                    }
                }
                Ok(Wake::Fs(Err(e))) => {
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
            if self
                .poller
                .as_ref()
                .is_some_and(|p| p.due() <= Instant::now())
            {
                self.poll_round(&mut settle);
            }
            let now = Instant::now();
            if let Some((first, paths)) = settle.take_due(now) {
                let paths = hold_back(&self.hung, paths, &mut self.held.settled);
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
            let due = hold_back(&self.hung, due, &mut self.held.recheck);
            if !due.is_empty() {
                // Rows whose file is gone take the same path as a removal event.
                for p in self.missing_under(due) {
                    self.vanished.push(now, p);
                }
            }
            let due = self.vanished.take_due(now);
            let due = hold_back(&self.hung, due, &mut self.held.vanished);
            self.apply(Vec::new(), due);
            // A reconcile walks every home, and the root check stats them: both wait for
            // every home to answer.
            let all_answer = self.hung.is_empty();
            if all_answer && self.rescan_pending && self.backoff.allowed(now) {
                // Lost events may include directories made meanwhile: every directory is
                // watched again before the reconcile walks it.
                if let Some(w) = watches.as_deref_mut() {
                    if let Err(e) = w.add_trees() {
                        if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                            self.force_poll = Some("the inotify watch limit was reached".into());
                            return;
                        }
                    }
                }
                self.reconcile(true, &());
            }
            if now >= next_degraded_try {
                next_degraded_try = now + DEGRADED_RETRY;
                if all_answer && self.shared.degraded().is_some() {
                    self.reconcile(true, &());
                }
            }
            if all_answer && now >= next_root_check {
                next_root_check = now + ROOT_CHECK;
                let homes = self.shared.homes();
                if std::mem::take(&mut root_event)
                    || fingerprint(&homes, &[]) != print
                    || stale_realpath(&homes)
                {
                    tracing::info!("a home or its rollout directories changed identity; re-establishing watches");
                    self.refresh_homes();
                    return;
                }
            }
        }
    }

    /// Probes the homes that may hang (FUSE, network: see [`crate::live::HangGuard`]) before
    /// the turn touches them. The first time one does not answer, this waits out
    /// `server.fs_timeout`; after that, until the stuck probe returns, not at all. When every
    /// home answers again, what was held back is queued again.
    fn probe_homes(&mut self, settle: &mut Settle) {
        let hung = self.silent_homes();
        match (self.hung.is_empty(), hung.is_empty()) {
            (true, false) => {
                tracing::warn!(homes = ?hung, "a home's filesystem does not answer; its changes wait until it does, and the other homes' go on");
            }
            (false, true) => {
                let held = std::mem::take(&mut self.held);
                tracing::info!(
                    paths = held.settled.len() + held.recheck.len() + held.vanished.len(),
                    "every home's filesystem answers again; applying what waited"
                );
                let now = Instant::now();
                settle.push(now, held.settled);
                for p in held.recheck {
                    self.recheck.push(now, p);
                }
                for p in held.vanished {
                    self.vanished.push(now, p);
                }
            }
            _ => {}
        }
        self.hung = hung;
    }

    /// The spellings of the homes that may hang and do not answer now (see
    /// [`Watch::probe_homes`] for the wait).
    fn silent_homes(&self) -> Vec<PathBuf> {
        let guard = &self.shared.hang;
        if !guard.any() {
            return Vec::new();
        }
        guard
            .all()
            .into_iter()
            .filter(|h| !guard.answers(h))
            .flat_map(|h| h.spellings)
            .collect()
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
                    self.vanished.forget(&p);
                    present.push(p);
                }
                Err(_) => self.vanished.push(now, p),
            }
        }
        self.apply(present, Vec::new());
    }

    /// Paths of rows at or under `dirs` whose file no longer exists.
    fn missing_under(&self, dirs: Vec<PathBuf>) -> Vec<PathBuf> {
        /// Paths held at once: a recheck of a whole home pages through its rows, and the
        /// writer is taken per page, never across the stats.
        const PAGE: usize = 1024;
        let mut missing = Vec::new();
        let tables = [PathTable::Files, PathTable::Problems];
        for (dir, table) in dirs.iter().flat_map(|d| tables.map(|t| (d, t))) {
            let mut after: Option<PathBuf> = None;
            loop {
                let page =
                    self.shared
                        .writer()
                        .paths_page_at_or_under(table, dir, after.as_deref(), PAGE);
                match page {
                    Ok(paths) => {
                        let full = paths.len() == PAGE;
                        after = paths.last().cloned();
                        missing.extend(paths.into_iter().filter(|p| crate::identity::is_gone(p)));
                        if !full {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not recheck a directory");
                        break;
                    }
                }
            }
        }
        missing
    }

    fn apply(&mut self, present: Vec<PathBuf>, gone: Vec<PathBuf>) {
        if present.is_empty() && gone.is_empty() {
            return;
        }
        if let Err(e) = apply::apply_paths(&self.shared, present, gone) {
            tracing::warn!(error = %e, "could not apply changes; rescanning");
            self.request_rescan("the index rejected a change");
        }
    }

    /// Re-resolves the homes' realpaths (a retargeted symlink moves a home); the restarted
    /// watch loop then watches, and reconciles, the new location.
    fn refresh_homes(&self) {
        let old = self.shared.homes();
        let (fresh, guarded) = resolve_homes(
            &self.shared.hang,
            &old.configured(),
            old.aliases(),
            Some(&old),
        );
        for (old, new) in old.homes.iter().zip(&fresh.homes) {
            if old.real != new.real {
                tracing::info!(home = %new.configured.display(), from = %old.real.display(), to = %new.real.display(), "home moved");
            }
        }
        // A home retargeted onto (or off) a FUSE or network filesystem changes how its
        // queries are guarded.
        self.shared.hang.set_homes(guarded);
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
        self.backoff.lost(now);
        if self.hung.is_empty() && self.backoff.allowed(now) {
            self.reconcile(true, &());
        }
    }

    /// The reconcile that follows [`Watch::start`]: it watches each directory of the trees
    /// just before its walk lists it, so every directory is listed once per start, not also
    /// by a walk of its own (at 500,000 threads, ~0.4 s of `getdents` on days of ~37,000
    /// files). Falls back to that walk when the reconcile failed (it may have stopped
    /// before listing every directory). False when the kernel refused more watches: the
    /// caller starts over in poll mode.
    fn reconcile_watching(&mut self, is_rescan: bool, watches: Option<&mut Watches>) -> bool {
        let Some(watches) = watches else {
            self.reconcile(is_rescan, &());
            return true;
        };
        let watching = WatchAsListed {
            watches: std::sync::Mutex::new(watches),
            limit: Default::default(),
        };
        let walked = self.reconcile(is_rescan, &watching);
        let mut limit = watching.limit.load(Ordering::Relaxed);
        if !walked && !limit {
            let w = watching
                .watches
                .into_inner()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            limit = w
                .add_trees()
                .is_err_and(|e| matches!(e.kind, notify::ErrorKind::MaxFilesWatch));
        }
        if limit {
            tracing::warn!("inotify watch limit reached; polling instead");
            self.force_poll = Some("the inotify watch limit was reached".into());
        }
        !limit
    }

    /// Runs a full reconcile, telling `dirs` of each directory it lists; after the first,
    /// it counts as a rescan and is announced. False when it failed.
    fn reconcile(&mut self, is_rescan: bool, dirs: &dyn crawl::DirObserver) -> bool {
        let now = Instant::now();
        if is_rescan {
            self.backoff.ran(now);
            self.rescan_pending = false;
        }
        let homes = self.shared.homes();
        for root in crawl::allowed_roots(&homes) {
            self.recheck.push(now, root);
        }
        let dirs = LeavingAlone {
            dirs,
            hung: &self.hung,
        };
        let result = if is_rescan {
            self.shared.rescan_observed(&dirs)
        } else {
            crawl::reconcile_observed(&homes, &self.shared.index, &self.shared.limits, &(), &dirs)
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
                true
            }
            Err(e) if crate::index::is_resource_failure(&e) => {
                // Logged once by the index when it became degraded; retried every second.
                tracing::debug!(error = %e, "reconcile failed: the index is degraded");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "reconcile failed; answers fall back to disk lookups");
                false
            }
        }
    }
}

/// A reconcile's observer that also leaves the homes that do not answer alone.
struct LeavingAlone<'a> {
    dirs: &'a dyn crawl::DirObserver,
    hung: &'a [PathBuf],
}

impl crawl::DirObserver for LeavingAlone<'_> {
    fn before_listing(&self, dir: &Path) {
        self.dirs.before_listing(dir);
    }

    fn not_descending(&self, dir: &Path) {
        self.dirs.not_descending(dir);
    }

    fn leaves_alone(&self, home: &Home) -> bool {
        is_hung(home, self.hung) || self.dirs.leaves_alone(home)
    }
}

/// Every spelling of every watched root (existing or not): the homes, their `sessions/` and
/// `archived_sessions/`; those of a home in `hung` as they are spelled, never resolved.
fn root_paths(homes: &Homes, hung: &[PathBuf]) -> Vec<PathBuf> {
    let mut roots = Vec::new();
    for h in &homes.homes {
        let silent = is_hung(h, hung);
        for p in [h.real.clone(), h.sessions_dir(), h.archived_dir()] {
            if !silent {
                roots.extend(canonicalize(&p).ok().filter(|c| *c != p));
            }
            roots.push(p);
        }
    }
    roots
}

/// A directory was made (in a watched directory).
fn made_directory(event: &notify::Event) -> bool {
    matches!(
        event.kind,
        notify::EventKind::Create(notify::event::CreateKind::Folder)
    )
}

/// The watcher and the directory trees it watches whole.
///
/// Each directory of a tree gets a watch of its own, added at a start by the reconcile's
/// walk (see [`WatchAsListed`]), later from a walk that reads directory entries only:
/// notify's recursive mode stats every entry of the tree, files included (50,000 `statx`
/// calls at 50,000 threads, ~140 ms of every start), to find the directories among them.
struct Watches {
    watcher: Box<dyn Watcher + Send>,
    /// The roots of the trees (`sessions/`, `archived_sessions/` of each event home).
    trees: Vec<PathBuf>,
}

impl Watches {
    /// Watches `root` and every directory under it (symlinks to directories are not
    /// followed, as the crawl does not follow them). A directory that goes meanwhile is
    /// skipped; only the root's failure, or the watch limit, is an error.
    fn add_tree(&mut self, root: &Path) -> notify::Result<()> {
        self.watcher.watch(root, RecursiveMode::NonRecursive)?;
        let dirs = walkdir::WalkDir::new(root)
            .min_depth(1)
            .follow_links(false)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_dir());
        for dir in dirs {
            match self.watcher.watch(dir.path(), RecursiveMode::NonRecursive) {
                Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => return Err(e),
                Err(e) => {
                    tracing::debug!(path = %dir.path().display(), error = %e, "cannot watch")
                }
                Ok(()) => {}
            }
        }
        Ok(())
    }

    /// Watches every directory of every tree again (those already watched keep their
    /// watch).
    fn add_trees(&mut self) -> notify::Result<()> {
        for tree in self.trees.clone() {
            match self.add_tree(&tree) {
                Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => return Err(e),
                // A tree gone: the root check re-establishes the watches.
                _ => {}
            }
        }
        Ok(())
    }

    /// Watches the new directories among `paths` that lie inside a watched tree.
    fn add_new_dirs(&mut self, paths: &[PathBuf]) -> notify::Result<()> {
        for path in paths {
            if self.trees.iter().any(|t| path.starts_with(t) && path != t) {
                match self.add_tree(path) {
                    Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => return Err(e),
                    // Gone again already: nothing to watch, and the settled batch sees that.
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Watches each directory below the trees' roots as a reconcile's walk is about to list it
/// (the roots are watched by [`Watch::start`]): a file made in it from then on is reported
/// by the watch, one made before is listed. A directory the walk does not descend into is
/// watched whole, as [`Watches::add_tree`] would have.
struct WatchAsListed<'w> {
    /// Locked by the walk's thread only.
    watches: std::sync::Mutex<&'w mut Watches>,
    /// The kernel refused more watches; no more are tried.
    limit: AtomicBool,
}

impl WatchAsListed<'_> {
    fn add(&self, dir: &Path, whole: bool) {
        let mut w = self
            .watches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.limit.load(Ordering::Relaxed)
            || !w.trees.iter().any(|t| dir.starts_with(t) && dir != t)
        {
            return;
        }
        let added = if whole {
            w.add_tree(dir)
        } else {
            w.watcher.watch(dir, RecursiveMode::NonRecursive)
        };
        match added {
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                self.limit.store(true, Ordering::Relaxed)
            }
            // Gone meanwhile: the walk finds it gone too.
            Err(e) => tracing::debug!(path = %dir.display(), error = %e, "cannot watch"),
            Ok(()) => {}
        }
    }
}

impl crawl::DirObserver for WatchAsListed<'_> {
    fn before_listing(&self, dir: &Path) {
        self.add(dir, false);
    }

    fn not_descending(&self, dir: &Path) {
        self.add(dir, true);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_under_a_hung_home_are_held_back_and_the_rest_go_on() {
        let hung = [PathBuf::from("/net/home")];
        let mut held = Vec::new();
        let rest = hold_back(
            &hung,
            vec![
                PathBuf::from("/net/home/sessions/a"),
                PathBuf::from("/local/sessions/b"),
                PathBuf::from("/net/home2/c"),
            ],
            &mut held,
        );
        assert_eq!(
            rest,
            [
                PathBuf::from("/local/sessions/b"),
                PathBuf::from("/net/home2/c")
            ]
        );
        assert_eq!(held, [PathBuf::from("/net/home/sessions/a")]);
        let rest = hold_back(&[], vec![PathBuf::from("/net/home/x")], &mut held);
        assert_eq!(rest, [PathBuf::from("/net/home/x")]);
    }

    #[test]
    fn mount_table_types_name_the_network_filesystems_statfs_would() {
        assert_eq!(network_kind("fuse.bindfs"), Some("fuse"));
        assert_eq!(network_kind("fuse.sshfs"), Some("fuse"));
        assert_eq!(network_kind("nfs4"), Some("nfs"));
        assert_eq!(network_kind("cifs"), Some("cifs"));
        assert_eq!(network_kind("ext4"), None);
        assert_eq!(network_kind("overlay"), None);
    }

    #[test]
    fn mount_points_are_unescaped() {
        assert_eq!(unescape_mount(r"/mnt/my\040home"), "/mnt/my home");
        assert_eq!(unescape_mount(r"/a\134b"), r"/a\b");
        assert_eq!(unescape_mount(r"/odd\09"), r"/odd\09");
    }

    #[test]
    fn the_root_filesystem_has_a_name() {
        let name = filesystem_name(Path::new("/"));
        assert!(!name.is_empty());
        if cfg!(target_os = "linux") {
            assert_ne!(name, "unknown");
        }
    }
}
