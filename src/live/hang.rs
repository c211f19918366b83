//! Homes whose filesystem may hang (FUSE, NFS, SMB…): which a request may touch, and which
//! have a query stuck right now. A blocked `stat` cannot be cancelled, so a query on such a
//! home runs on a thread of its own under a deadline (the server does that); this keeps the
//! bookkeeping that lets later requests for a stuck home fail at once instead of piling up
//! more blocked threads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// One configured home as the guard sees it.
#[derive(Debug, Clone)]
pub struct GuardedHome {
    /// As configured: the name errors give.
    pub configured: PathBuf,
    /// Every spelling of it (realpath, aliases), matched lexically: never stat'ed here.
    pub spellings: Vec<PathBuf>,
    /// The FUSE or network filesystem it is on (`fuse`, `nfs`…); `None` for a local one.
    pub filesystem: Option<&'static str>,
}

/// The homes a request may touch that can hang, by configured path; empty when it touches
/// only local homes (answered inline, as always).
pub type Exposure = Vec<GuardedHome>;

/// Which homes may hang, and which have a stuck query.
pub struct HangGuard {
    homes: RwLock<Arc<Vec<GuardedHome>>>,
    /// Some home can hang (read per request: an atomic, not the lock).
    any: AtomicBool,
    /// Per home (configured path): queries past their deadline not returned yet, and since.
    stuck: Mutex<HashMap<PathBuf, (usize, Instant)>>,
    timeout: RwLock<Duration>,
}

impl Default for HangGuard {
    fn default() -> Self {
        HangGuard {
            homes: RwLock::default(),
            any: AtomicBool::new(false),
            stuck: Mutex::default(),
            timeout: RwLock::new(crate::config::DEFAULT_FS_TIMEOUT),
        }
    }
}

impl HangGuard {
    /// Sets the homes (at start and on reload).
    pub fn set_homes(&self, homes: Vec<GuardedHome>) {
        self.any.store(
            homes.iter().any(|h| h.filesystem.is_some()),
            Ordering::Release,
        );
        *self.homes.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(homes);
    }

    pub fn set_timeout(&self, timeout: Duration) {
        *self.timeout.write().unwrap_or_else(PoisonError::into_inner) = timeout;
    }

    /// `server.fs_timeout`.
    pub fn timeout(&self) -> Duration {
        *self.timeout.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn snapshot(&self) -> Arc<Vec<GuardedHome>> {
        self.homes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// True when some home may hang: only then is a request's exposure worth working out.
    pub fn any(&self) -> bool {
        self.any.load(Ordering::Acquire)
    }

    /// Every home that may hang (a walk of the homes touches them all).
    pub fn all(&self) -> Exposure {
        self.snapshot()
            .iter()
            .filter(|h| h.filesystem.is_some())
            .cloned()
            .collect()
    }

    /// The homes that may hang that looking at `paths` may touch: the home a path is under
    /// (by spelling, lexically), or every such home for a path under none (resolving it may
    /// reach one through a mount or a symlink).
    pub fn for_paths<'a>(&self, paths: impl IntoIterator<Item = &'a Path>) -> Exposure {
        let homes = self.snapshot();
        if homes.iter().all(|h| h.filesystem.is_none()) {
            return Vec::new();
        }
        let mut out: Exposure = Vec::new();
        for path in paths {
            let home = homes
                .iter()
                .filter(|h| h.spellings.iter().any(|s| path.starts_with(s)))
                .max_by_key(|h| {
                    h.spellings
                        .iter()
                        .filter(|s| path.starts_with(s))
                        .map(|s| s.as_os_str().len())
                        .max()
                });
            let add: Exposure = match home {
                Some(h) if h.filesystem.is_none() => continue,
                Some(h) => vec![h.clone()],
                None => self.all(),
            };
            for h in add {
                if !out.iter().any(|o| o.configured == h.configured) {
                    out.push(h);
                }
            }
        }
        out
    }

    fn stuck(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, (usize, Instant)>> {
        self.stuck.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The first of `exposure` with a query stuck on it, and for how long.
    pub fn stuck_among(&self, exposure: &Exposure) -> Option<(GuardedHome, Duration)> {
        let stuck = self.stuck();
        exposure.iter().find_map(|h| {
            stuck
                .get(&h.configured)
                .map(|(_, since)| (h.clone(), since.elapsed()))
        })
    }

    /// How long `home` (as configured) has had a call stuck on it; `None` while none is.
    pub fn stuck_for(&self, home: &Path) -> Option<Duration> {
        self.stuck().get(home).map(|(_, since)| since.elapsed())
    }

    /// Whether `home`'s filesystem answers a listing of its root within the timeout: on a
    /// thread of its own, as the call may never return. One that did not counts as stuck
    /// until it returns, and meanwhile this answers false at once (no second thread).
    pub fn answers(self: &Arc<Self>, home: &GuardedHome) -> bool {
        let root = home.configured.clone();
        self.bounded(home, move || reach(&root)).is_some()
    }

    /// Runs `call`, which reaches `home`'s filesystem, on a thread of its own and waits for
    /// it at most the timeout. `None` when it did not return by then (the home then counts
    /// as stuck until it does), or at once when an earlier call on the home is still stuck:
    /// a home holds at most one blocked thread. Runs inline when no thread can be made.
    pub fn bounded<T: Send + 'static>(
        self: &Arc<Self>,
        home: &GuardedHome,
        call: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        self.bounded_within(home, self.timeout(), call)
    }

    /// As [`HangGuard::bounded`], waiting `within` (the config's `server.fs_timeout` before
    /// it is applied).
    pub fn bounded_within<T: Send + 'static>(
        self: &Arc<Self>,
        home: &GuardedHome,
        within: Duration,
        call: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let exposure = vec![home.clone()];
        if self.stuck_among(&exposure).is_some() {
            return None;
        }
        let probe = self.probe(exposure);
        let on_thread = Arc::clone(&probe);
        // Taken back to run inline should the thread not start.
        let job = Arc::new(Mutex::new(Some(call)));
        let queued = Arc::clone(&job);
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("fs-probe".into())
            .spawn(move || {
                let call = queued.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(call) = call {
                    // Sent first: a waiter that finds it returned takes the answer.
                    let _ = tx.send(call());
                    on_thread.returned();
                }
            });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "no thread to reach a home's filesystem on; calling inline");
            let call = job.lock().unwrap_or_else(PoisonError::into_inner).take();
            return call.map(|call| call());
        }
        match rx.recv_timeout(within) {
            Ok(out) => Some(out),
            // It may have returned just now: then its answer is there to take.
            Err(_) if !probe.expired() => rx.try_recv().ok(),
            Err(_) => None,
        }
    }

    /// Starts watching a query on `exposure`: see [`Probe`].
    pub fn probe(self: &Arc<Self>, exposure: Exposure) -> Arc<Probe> {
        Arc::new(Probe {
            guard: Arc::clone(self),
            exposure,
            state: Mutex::new(ProbeState::Running),
        })
    }
}

/// Lists the first entry of `root`: a listing reaches the FUSE daemon or the file server
/// every time, where a stat may be answered from the kernel's attribute cache. It blocks
/// as long as the filesystem does not answer.
pub fn reach(root: &Path) {
    let _ = std::fs::read_dir(root).map(|mut d| d.next());
}

#[derive(Debug, PartialEq, Eq)]
enum ProbeState {
    Running,
    /// Past its deadline: its homes count it as stuck until it returns.
    Stuck,
    Returned,
}

/// One query on homes that may hang. The waiter calls [`Probe::expired`] at its deadline,
/// the query's thread [`Probe::returned`] when done, in either order.
pub struct Probe {
    guard: Arc<HangGuard>,
    exposure: Exposure,
    state: Mutex<ProbeState>,
}

impl Probe {
    /// The deadline passed: the homes are stuck until this query returns. False when it
    /// returned meanwhile (its answer is then there to take).
    pub fn expired(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if *state == ProbeState::Returned {
            return false;
        }
        *state = ProbeState::Stuck;
        let mut stuck = self.guard.stuck();
        for h in &self.exposure {
            let e = stuck
                .entry(h.configured.clone())
                .or_insert((0, Instant::now()));
            e.0 += 1;
        }
        true
    }

    /// The query returned: a home it kept stuck is freed (when no other query holds it).
    pub fn returned(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let was_stuck = *state == ProbeState::Stuck;
        *state = ProbeState::Returned;
        if !was_stuck {
            return;
        }
        let mut stuck = self.guard.stuck();
        for h in &self.exposure {
            if let Some(e) = stuck.get_mut(&h.configured) {
                e.0 = e.0.saturating_sub(1);
                if e.0 == 0 {
                    stuck.remove(&h.configured);
                    tracing::info!(home = %h.configured.display(), "the home's filesystem answers again");
                }
            }
        }
    }

    pub fn exposure(&self) -> &Exposure {
        &self.exposure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home(p: &str, fs: Option<&'static str>) -> GuardedHome {
        GuardedHome {
            configured: PathBuf::from(p),
            spellings: vec![PathBuf::from(p)],
            filesystem: fs,
        }
    }

    #[test]
    fn paths_are_exposed_to_the_home_they_are_under_or_to_all_that_may_hang() {
        let g = HangGuard::default();
        g.set_homes(vec![home("/l", None), home("/n", Some("fuse"))]);
        let names = |e: Exposure| e.into_iter().map(|h| h.configured).collect::<Vec<_>>();
        assert!(g.for_paths([Path::new("/l/sessions/x")]).is_empty());
        assert_eq!(
            names(g.for_paths([Path::new("/n/sessions/x")])),
            [PathBuf::from("/n")]
        );
        assert_eq!(
            names(g.for_paths([Path::new("/elsewhere")])),
            [PathBuf::from("/n")]
        );
        g.set_homes(vec![home("/l", None)]);
        assert!(g.for_paths([Path::new("/elsewhere")]).is_empty());
    }

    #[test]
    fn a_bounded_call_that_hangs_holds_one_thread_until_it_returns() {
        let g = Arc::new(HangGuard::default());
        g.set_timeout(Duration::from_millis(50));
        let h = home("/n", Some("fuse"));
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        assert_eq!(g.bounded(&h, move || blocked.recv().is_ok()), None);
        assert!(g.stuck_for(&h.configured).is_some());
        // Stuck: refused at once, without running (no second thread).
        let ran = Arc::new(AtomicBool::new(false));
        let r = Arc::clone(&ran);
        assert_eq!(g.bounded(&h, move || r.store(true, Ordering::SeqCst)), None);
        assert!(!ran.load(Ordering::SeqCst));
        release.send(()).unwrap();
        let started = Instant::now();
        while g.stuck_for(&h.configured).is_some() {
            assert!(started.elapsed() < Duration::from_secs(5), "never returned");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(g.bounded(&h, || 7), Some(7));
    }

    #[test]
    fn a_home_is_stuck_from_a_probe_expiring_until_it_returns() {
        let g = Arc::new(HangGuard::default());
        let exposure = vec![home("/n", Some("fuse"))];
        let early = g.probe(exposure.clone());
        early.returned();
        assert!(!early.expired(), "a probe that returned cannot expire");
        assert!(g.stuck_among(&exposure).is_none());
        let (a, b) = (g.probe(exposure.clone()), g.probe(exposure.clone()));
        assert!(a.expired() && b.expired());
        a.returned();
        assert!(g.stuck_among(&exposure).is_some(), "b still holds it");
        b.returned();
        assert!(g.stuck_among(&exposure).is_none());
    }
}
