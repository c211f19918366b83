//! The watcher's timing policies as small pure types: each takes `now` and is unit tested
//! without sleeping (after watchman's `RecrawlBackoff`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Events settle before they are applied: a batch is due once no event came for `quiet`,
/// or `max` after its first event however busy the home is (a rollout being appended to
/// all the time must not starve its own updates).
#[derive(Debug)]
pub struct Settle {
    quiet: Duration,
    max: Duration,
    first: Option<Instant>,
    last: Option<Instant>,
    paths: Vec<PathBuf>,
}

impl Settle {
    pub fn new(quiet: Duration) -> Settle {
        Settle {
            quiet,
            max: (quiet * 5).max(Duration::from_millis(50)),
            first: None,
            last: None,
            paths: Vec::new(),
        }
    }

    pub fn push(&mut self, now: Instant, paths: impl IntoIterator<Item = PathBuf>) {
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.paths.extend(paths);
    }

    /// When the pending batch falls due; `None` when nothing is pending.
    pub fn deadline(&self) -> Option<Instant> {
        Some((self.last? + self.quiet).min(self.first? + self.max))
    }

    /// The batch, with when its first event came, once it is due.
    pub fn take_due(&mut self, now: Instant) -> Option<(Instant, Vec<PathBuf>)> {
        if self.deadline()? > now {
            return None;
        }
        let first = self.first.take()?;
        self.last = None;
        Some((first, std::mem::take(&mut self.paths)))
    }
}

/// Paths that are acted on a fixed delay after they were queued: the vanish grace (the two
/// halves of a rename may arrive in different batches; by the time a vanished path counts
/// as deleted, its destination is indexed) and the recheck after a walk (a file created and
/// deleted within one settle window sends nothing, yet a walk in between may have indexed
/// it).
#[derive(Debug)]
pub struct Delayed {
    delay: Duration,
    queue: Vec<(Instant, PathBuf)>,
}

impl Delayed {
    pub fn new(delay: Duration) -> Delayed {
        Delayed {
            delay,
            queue: Vec::new(),
        }
    }

    pub fn push(&mut self, now: Instant, path: PathBuf) {
        self.queue.push((now, path));
    }

    /// Drops what is queued for `path`: a vanished path seen again must not be taken for
    /// gone by an older entry when it vanishes anew (its new removal waits a full delay).
    pub fn forget(&mut self, path: &std::path::Path) {
        self.queue.retain(|(_, p)| p != path);
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.queue.iter().map(|(t, _)| *t + self.delay).min()
    }

    /// The paths due at `now`, removed from the queue (sorted, without repeats).
    pub fn take_due(&mut self, now: Instant) -> Vec<PathBuf> {
        let delay = self.delay;
        let mut due = Vec::new();
        self.queue.retain(|(t, p)| {
            let keep = *t + delay > now;
            if !keep {
                due.push(p.clone());
            }
            keep
        });
        due.sort();
        due.dedup();
        due
    }
}

/// Full rescans after lost events: back-to-back rescans double the window up to `max`; a
/// quiet period (four windows) resets it to `min`. Events lost after the last rescan are
/// caught up sooner once the losses stop: a quarter of the window after the last loss (at
/// least `min`), so a storm that outlasts a few rescans is not followed by up to a whole
/// window (a minute) of changes unseen, while a storm still losing events stays held to the
/// window.
#[derive(Debug)]
pub struct RescanBackoff {
    min: Duration,
    max: Duration,
    window: Duration,
    last: Option<Instant>,
    /// The last loss of events.
    lost: Option<Instant>,
}

impl RescanBackoff {
    pub fn new(min: Duration, max: Duration) -> RescanBackoff {
        RescanBackoff {
            min,
            max,
            window: min,
            last: None,
            lost: None,
        }
    }

    /// Events were lost at `now` (a rescan is pending).
    pub fn lost(&mut self, now: Instant) {
        self.lost = Some(now);
    }

    /// When the next rescan may run.
    pub fn next_allowed(&self) -> Option<Instant> {
        let last = self.last?;
        let windowed = last + self.window;
        let catch_up = self
            .lost
            .filter(|&lost| lost > last)
            .map(|lost| lost + (self.window / 4).max(self.min));
        Some(catch_up.map_or(windowed, |c| c.min(windowed)))
    }

    pub fn allowed(&self, now: Instant) -> bool {
        self.next_allowed().is_none_or(|t| now >= t)
    }

    /// A rescan runs at `now`.
    pub fn ran(&mut self, now: Instant) {
        self.window = match self.last {
            Some(t) if now.saturating_duration_since(t) < self.window * 4 => {
                (self.window * 2).min(self.max)
            }
            _ => self.min,
        };
        self.last = Some(now);
    }
}

/// Lost events come in bursts: the first loss of a burst is worth a warning, the rest are
/// not. A burst ends after `quiet` without a loss.
#[derive(Debug)]
pub struct LossBurst {
    quiet: Duration,
    last: Option<Instant>,
    /// Losses in the current burst after its first.
    pub repeats: u64,
}

impl LossBurst {
    pub fn new(quiet: Duration) -> LossBurst {
        LossBurst {
            quiet,
            last: None,
            repeats: 0,
        }
    }

    /// Records a loss at `now`; true when it starts a new burst.
    pub fn lost(&mut self, now: Instant) -> bool {
        let new = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= self.quiet);
        self.last = Some(now);
        if new {
            self.repeats = 0;
        } else {
            self.repeats += 1;
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn settle_waits_for_quiet_but_not_forever() {
        let t0 = Instant::now();
        let mut s = Settle::new(20 * MS);
        assert_eq!(s.deadline(), None);
        assert!(s.take_due(t0).is_none());
        s.push(t0, [PathBuf::from("a")]);
        assert_eq!(s.deadline(), Some(t0 + 20 * MS));
        assert!(s.take_due(t0 + 19 * MS).is_none());
        // Events every 10 ms keep it waiting, up to the cap of 100 ms after the first.
        for k in 1..=12 {
            s.push(t0 + k * 10 * MS, [PathBuf::from("b")]);
        }
        assert_eq!(s.deadline(), Some(t0 + 100 * MS));
        let (first, paths) = s.take_due(t0 + 100 * MS).expect("due at the cap");
        assert_eq!(first, t0);
        assert_eq!(paths.len(), 13);
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn delayed_paths_fall_due_in_order() {
        let t0 = Instant::now();
        let mut d = Delayed::new(100 * MS);
        assert_eq!(d.next_due(), None);
        d.push(t0, PathBuf::from("b"));
        d.push(t0 + 50 * MS, PathBuf::from("a"));
        d.push(t0, PathBuf::from("b"));
        assert_eq!(d.next_due(), Some(t0 + 100 * MS));
        assert!(d.take_due(t0 + 99 * MS).is_empty());
        assert_eq!(d.take_due(t0 + 100 * MS), vec![PathBuf::from("b")]);
        assert_eq!(d.next_due(), Some(t0 + 150 * MS));
        assert_eq!(d.take_due(t0 + 200 * MS), vec![PathBuf::from("a")]);
        assert_eq!(d.next_due(), None);
        d.push(t0, PathBuf::from("c"));
        d.push(t0, PathBuf::from("d"));
        d.forget(Path::new("c"));
        assert_eq!(d.take_due(t0 + 200 * MS), vec![PathBuf::from("d")]);
    }

    #[test]
    fn rescans_back_off_and_reset() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut b = RescanBackoff::new(s, 8 * s);
        assert!(b.allowed(t0));
        b.ran(t0);
        assert!(!b.allowed(t0 + s / 2));
        assert!(b.allowed(t0 + s));
        // Back to back: 2 s, 4 s, 8 s, then capped.
        b.ran(t0 + s);
        assert_eq!(b.next_allowed(), Some(t0 + 3 * s));
        b.ran(t0 + 3 * s);
        b.ran(t0 + 7 * s);
        assert_eq!(b.next_allowed(), Some(t0 + 15 * s));
        b.ran(t0 + 15 * s);
        assert_eq!(b.next_allowed(), Some(t0 + 23 * s));
        // Quiet for four windows: back to the minimum.
        b.ran(t0 + 100 * s);
        assert_eq!(b.next_allowed(), Some(t0 + 101 * s));
    }

    /// Losses that stop are caught up a quarter window after the last one; losses that go
    /// on are held to the window.
    #[test]
    fn a_storm_that_stops_is_caught_up_within_a_quarter_window() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut b = RescanBackoff::new(s, 64 * s);
        for at in [0, 1, 3, 7, 15] {
            b.lost(t0 + at * s);
            b.ran(t0 + at * s);
        }
        // The window is now 16 s: without a loss since, the next rescan waits it out.
        assert_eq!(b.next_allowed(), Some(t0 + 31 * s));
        // The storm goes on a little, then stops at 20 s: caught up 4 s later, not at 31 s.
        b.lost(t0 + 16 * s);
        b.lost(t0 + 20 * s);
        assert_eq!(b.next_allowed(), Some(t0 + 24 * s));
        assert!(!b.allowed(t0 + 23 * s));
        assert!(b.allowed(t0 + 24 * s));
        // Losses that go on push it back, never past the window.
        b.lost(t0 + 29 * s);
        assert_eq!(b.next_allowed(), Some(t0 + 31 * s));
        // A loss before the last rescan is already caught up: the (doubled) window again.
        b.ran(t0 + 31 * s);
        assert_eq!(b.next_allowed(), Some(t0 + 63 * s));
    }

    #[test]
    fn losses_warn_once_per_burst() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut l = LossBurst::new(10 * s);
        assert!(l.lost(t0));
        assert!(!l.lost(t0 + s));
        assert!(!l.lost(t0 + 5 * s));
        assert_eq!(l.repeats, 2);
        assert!(l.lost(t0 + 16 * s));
        assert_eq!(l.repeats, 0);
    }
}
