//! Polling for homes that send no change events (NFS, SMB, FUSE, or `watch.mode = "poll"`),
//! by directory stamps rather than file stats.
//!
//! Adding, removing or renaming a rollout changes its directory's mtime (and ctime), so
//! each round stats only the directories: `sessions/` and its `YYYY/MM/DD` tree, and
//! `archived_sessions/`. A directory is listed only when its stamp changed, and what its
//! listing adds or drops against the index (by name) goes into the same settle/apply path
//! as events. Appends change no directory: they are left to the verify-on-answer path,
//! which re-reads a head whose stamp changed. A 50,000-thread home costs a few hundred
//! directory stats a round instead of 50,000 file stats.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::rollout::name;

/// A directory stamp at this resolution or closer to the clock may hide a change made in
/// the same timestamp tick (coarse kernel clocks, 1-2 s on some network filesystems): such
/// a directory is listed again next round even when its stamp looks unchanged ("racy git").
const RACY_NS: i64 = 2_000_000_000;

/// Directories below `sessions/` tracked at most this deep (`YYYY/MM/DD` is 3).
const MAX_DEPTH: usize = 4;

/// What identifies a directory's contents between two looks: a new entry, a removal or a
/// rename moves mtime and ctime; a directory deleted and recreated has another inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirStamp {
    pub dev: u64,
    pub ino: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl DirStamp {
    pub fn of(dir: &Path) -> Option<DirStamp> {
        let m = std::fs::metadata(dir).ok()?;
        m.is_dir().then(|| DirStamp {
            dev: m.dev(),
            ino: m.ino(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000) + m.ctime_nsec(),
        })
    }
}

#[derive(Debug, Clone)]
struct Seen {
    stamp: Option<DirStamp>,
    /// Its stamp was too recent to trust: list it next round whatever it says.
    racy: bool,
    /// Under `sessions/` (subdirectories are tracked); `archived_sessions/` is flat.
    nested: bool,
}

/// The polling policy: which directories are tracked, their last stamps, when the next
/// round is due and which directories it looks at, in what order. Pure: callers pass the
/// stamps and the clocks.
///
/// Every directory is looked at once per interval; the hot ones (the two newest day
/// directories, where new rollouts land, and the tree and `archived_sessions/`, where new
/// day directories and archives appear) four times as often, which costs a few dozen
/// stats and brings a new or archived rollout to well inside one interval.
#[derive(Debug)]
pub struct DirPoller {
    interval: Duration,
    next_full: Instant,
    next_hot: Instant,
    dirs: BTreeMap<PathBuf, Seen>,
}

impl DirPoller {
    pub fn new(interval: Duration, now: Instant) -> DirPoller {
        DirPoller {
            interval,
            next_full: now + interval,
            next_hot: now + interval / 4,
            dirs: BTreeMap::new(),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// When the next round is due.
    pub fn due(&self) -> Instant {
        self.next_full.min(self.next_hot)
    }

    /// The directories due at `now`, in order (see [`DirPoller::order`]): all of them once
    /// per interval, the hot ones in between; none before [`DirPoller::due`].
    pub fn take_due(&mut self, now: Instant) -> Vec<PathBuf> {
        if now >= self.next_full {
            self.next_full = now + self.interval;
            self.next_hot = now + self.interval / 4;
            return self.order();
        }
        if now >= self.next_hot {
            self.next_hot = now + self.interval / 4;
            let hot = self.hot_days();
            return self
                .order()
                .into_iter()
                .filter(|d| day_of(d).is_none_or(|day| hot.contains(&day)))
                .collect();
        }
        Vec::new()
    }

    /// The two newest day directories' dates.
    fn hot_days(&self) -> Vec<&str> {
        let mut days: Vec<&str> = self.dirs.keys().filter_map(|d| day_of(d)).collect();
        days.sort_unstable_by(|a, b| b.cmp(a));
        days.dedup();
        days.truncate(2);
        days
    }

    pub fn len(&self) -> usize {
        self.dirs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty()
    }

    pub fn is_tracked(&self, dir: &Path) -> bool {
        self.dirs.contains_key(dir)
    }

    /// Tracks `dir` as last seen with `stamp` (`None`: not seen yet, listed next round).
    pub fn track(&mut self, dir: PathBuf, nested: bool, stamp: Option<DirStamp>) {
        let racy = stamp.is_none();
        self.dirs.insert(
            dir,
            Seen {
                stamp,
                racy,
                nested,
            },
        );
    }

    /// Tracks a root that does not exist (now): nothing to list until it appears.
    pub fn track_absent(&mut self, dir: PathBuf, nested: bool) {
        self.dirs.insert(
            dir,
            Seen {
                stamp: None,
                racy: false,
                nested,
            },
        );
    }

    /// Stops tracking `dir` and everything below it.
    pub fn forget_under(&mut self, dir: &Path) {
        self.dirs.retain(|d, _| !d.starts_with(dir));
    }

    /// Tracked directories directly below `dir`.
    pub fn children(&self, dir: &Path) -> Vec<PathBuf> {
        self.dirs
            .keys()
            .filter(|d| d.parent() == Some(dir))
            .cloned()
            .collect()
    }

    pub fn nested(&self, dir: &Path) -> bool {
        self.dirs.get(dir).is_some_and(|s| s.nested)
    }

    /// Every tracked directory, the ones a new rollout most likely lands in first: the two
    /// newest `YYYY/MM/DD` day directories (today's and yesterday's, whatever the time
    /// zone Codex named them in), then the rest newest first (`archived_sessions/` and the
    /// `sessions/` tree among them).
    pub fn order(&self) -> Vec<PathBuf> {
        let hot_days = self.hot_days();
        let mut days: Vec<(&str, &PathBuf)> = self
            .dirs
            .keys()
            .filter_map(|d| day_of(d).map(|day| (day, d)))
            .collect();
        days.sort_by(|a, b| b.cmp(a));
        let mut first: Vec<PathBuf> = days
            .iter()
            .filter(|(day, _)| hot_days.contains(day))
            .map(|(_, d)| (*d).clone())
            .collect();
        let mut rest: Vec<PathBuf> = self
            .dirs
            .keys()
            .filter(|d| !first.contains(d))
            .cloned()
            .collect();
        rest.reverse();
        first.append(&mut rest);
        first
    }

    /// Records `dir`'s stamp, taken at wall-clock `now_ns` (ns since the epoch); true when
    /// it must be listed: new, changed, gone, or its last stamp was too recent to trust.
    pub fn observe(&mut self, dir: &Path, stamp: Option<DirStamp>, now_ns: i64) -> bool {
        let Some(seen) = self.dirs.get_mut(dir) else {
            return false;
        };
        let changed = seen.racy || seen.stamp != stamp;
        seen.racy = stamp.is_some_and(|s| s.mtime_ns.max(s.ctime_ns) > now_ns - RACY_NS);
        seen.stamp = stamp;
        changed
    }
}

/// `YYYY/MM/DD` when `dir` ends in a day directory.
fn day_of(dir: &Path) -> Option<&str> {
    let text = dir.to_str()?;
    let day = text.get(text.len().checked_sub(10)?..)?;
    let b = day.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    (digits(0..4) && b[4] == b'/' && digits(5..7) && b[7] == b'/' && digits(8..10)).then_some(day)
}

/// Starts tracking the tree at `root` (a home's `sessions/` or `archived_sessions/`; its
/// subdirectories too when `nested`) with the stamps it has now. Done before the reconcile that
/// follows, so a change made meanwhile shows as a changed stamp next round.
pub fn track_tree(poller: &mut DirPoller, root: &Path, nested: bool) {
    track_below(poller, root, nested, 0);
}

fn track_below(poller: &mut DirPoller, dir: &Path, nested: bool, depth: usize) {
    let stamp = DirStamp::of(dir);
    match stamp {
        Some(_) => poller.track(dir.to_owned(), nested, stamp),
        None => poller.track_absent(dir.to_owned(), nested),
    }
    if !nested || depth >= MAX_DEPTH || stamp.is_none() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            track_below(poller, &entry.path(), true, depth + 1);
        }
    }
}

/// One round: stats the directories due at `now` and lists the changed ones. Returns the
/// paths to apply: new entries (a new directory whole: applying it discovers what it holds)
/// and entries gone since (`known` gives the index's paths at or under a directory).
/// `now_ns` is the wall clock, to tell a stamp too recent to trust. Directories `skip`
/// names are not looked at this round (their home's filesystem does not answer).
pub fn round(
    poller: &mut DirPoller,
    now: Instant,
    now_ns: i64,
    known: &mut dyn FnMut(&Path) -> Vec<PathBuf>,
    skip: &dyn Fn(&Path) -> bool,
) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in poller.take_due(now) {
        if skip(&dir) {
            continue;
        }
        // Forgotten earlier in this round, with a parent that vanished.
        if !poller.is_tracked(&dir) {
            continue;
        }
        let stamp = DirStamp::of(&dir);
        if !poller.observe(&dir, stamp, now_ns) {
            continue;
        }
        if stamp.is_none() {
            // Gone (or no longer a directory): applying the path removes what it held.
            let nested = poller.nested(&dir);
            poller.forget_under(&dir);
            if !dir.parent().is_some_and(|p| poller.is_tracked(p)) {
                // A root: kept, so its reappearance is noticed (the root check also
                // rebuilds the watch when a root changes identity).
                poller.track_absent(dir.clone(), nested);
            }
            out.push(dir);
            continue;
        }
        out.extend(diff_listing(poller, &dir, known));
    }
    out
}

/// What `dir`'s listing adds and drops against the index and the tracked subdirectories.
fn diff_listing(
    poller: &mut DirPoller,
    dir: &Path,
    known: &mut dyn FnMut(&Path) -> Vec<PathBuf>,
) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let nested = poller.nested(dir);
    let depth_ok = nested && poller_depth(poller, dir) < MAX_DEPTH;
    let mut names: HashSet<OsString> = HashSet::new();
    let mut new_dirs = Vec::new();
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let path = entry.path();
        if is_dir && depth_ok {
            if !poller.is_tracked(&path) {
                new_dirs.push(path);
            }
        } else if match name.to_str() {
            Some(text) => name::looks_like_rollout(text),
            // Reported as a problem by the watcher's apply, like the crawl does.
            None => name::looks_like_rollout_bytes(name.as_bytes()),
        } {
            files.push(path);
        }
        if name.to_str().is_none() {
            // The index holds such a name in its lossy spelling: that spelling is listed too.
            names.insert(OsString::from(name.to_string_lossy().into_owned()));
        }
        names.insert(name);
    }
    let mut out = Vec::new();
    // Gone: tracked subdirectories and indexed entries whose names are no longer listed.
    for child in poller.children(dir) {
        if !child.file_name().is_some_and(|n| names.contains(n)) {
            poller.forget_under(&child);
            out.push(child);
        }
    }
    let indexed: Vec<PathBuf> = known(dir)
        .into_iter()
        .filter(|p| p.parent() == Some(dir))
        .collect();
    let indexed_names: HashSet<&std::ffi::OsStr> =
        indexed.iter().filter_map(|p| p.file_name()).collect();
    for p in &indexed {
        if !p.file_name().is_some_and(|n| names.contains(n)) {
            out.push(p.clone());
        }
    }
    // New: rollout-named entries the index does not hold, and new directories whole.
    out.extend(files.into_iter().filter(|p| {
        !p.file_name().is_some_and(|n| {
            indexed_names.contains(n)
                || indexed_names.contains(std::ffi::OsStr::new(&*n.to_string_lossy()))
        })
    }));
    for d in new_dirs {
        track_below(poller, &d, true, poller_depth(poller, dir) + 1);
        out.push(d);
    }
    out
}

/// How deep `dir` is below its tracked root.
fn poller_depth(poller: &DirPoller, dir: &Path) -> usize {
    dir.ancestors()
        .skip(1)
        .take_while(|a| poller.is_tracked(a))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ino: u64, mtime_s: i64) -> Option<DirStamp> {
        Some(DirStamp {
            dev: 1,
            ino,
            mtime_ns: mtime_s * 1_000_000_000,
            ctime_ns: mtime_s * 1_000_000_000,
        })
    }

    const NOW: i64 = 1_000 * 1_000_000_000;

    #[test]
    fn a_directory_is_listed_only_when_its_stamp_changes() {
        let mut p = DirPoller::new(Duration::from_secs(2), Instant::now());
        let d = PathBuf::from("/h/sessions/2026/11/29");
        p.track(d.clone(), true, stamp(7, 500));
        assert!(!p.observe(&d, stamp(7, 500), NOW), "unchanged");
        assert!(p.observe(&d, stamp(7, 600), NOW), "mtime moved");
        assert!(!p.observe(&d, stamp(7, 600), NOW));
        assert!(p.observe(&d, stamp(8, 600), NOW), "recreated: other inode");
        assert!(p.observe(&d, None, NOW), "gone");
        assert!(!p.observe(Path::new("/untracked"), stamp(1, 1), NOW));
    }

    #[test]
    fn a_stamp_as_recent_as_the_clock_tick_is_listed_again() {
        let mut p = DirPoller::new(Duration::from_secs(2), Instant::now());
        let d = PathBuf::from("/h/archived_sessions");
        p.track(d.clone(), false, stamp(3, 1));
        // Changed within the last tick: a second change in the same tick would keep the
        // stamp, so it is listed again next round, and then no more.
        let recent = stamp(3, 999);
        assert!(p.observe(&d, recent, NOW));
        assert!(p.observe(&d, recent, NOW + 1_000_000_000));
        assert!(!p.observe(&d, recent, NOW + 5_000_000_000));
    }

    #[test]
    fn today_and_yesterday_are_looked_at_first() {
        let mut p = DirPoller::new(Duration::from_secs(2), Instant::now());
        for d in [
            "/h/archived_sessions",
            "/h/sessions",
            "/h/sessions/2026",
            "/h/sessions/2026/10",
            "/h/sessions/2026/10/31",
            "/h/sessions/2026/11",
            "/h/sessions/2026/11/01",
            "/h/sessions/2026/11/28",
            "/h/sessions/2026/11/29",
        ] {
            p.track(PathBuf::from(d), true, None);
        }
        let order = p.order();
        assert_eq!(order.len(), 9);
        assert_eq!(order[0], Path::new("/h/sessions/2026/11/29"));
        assert_eq!(order[1], Path::new("/h/sessions/2026/11/28"));
        assert!(order[2..].contains(&PathBuf::from("/h/archived_sessions")));
    }

    #[test]
    fn every_directory_once_an_interval_the_hot_ones_four_times() {
        let t0 = Instant::now();
        let s = Duration::from_millis;
        let mut p = DirPoller::new(s(2000), t0);
        for d in [
            "/h/archived_sessions",
            "/h/sessions",
            "/h/sessions/2026",
            "/h/sessions/2026/10",
            "/h/sessions/2026/10/30",
            "/h/sessions/2026/10/31",
            "/h/sessions/2026/11",
            "/h/sessions/2026/11/01",
        ] {
            p.track(PathBuf::from(d), true, None);
        }
        assert!(p.take_due(t0).is_empty(), "nothing before it is due");
        assert_eq!(p.due(), t0 + s(500));
        let hot = p.take_due(t0 + s(500));
        assert_eq!(hot.len(), 7, "{hot:?}");
        assert!(!hot.contains(&PathBuf::from("/h/sessions/2026/10/30")));
        assert_eq!(hot[0], Path::new("/h/sessions/2026/11/01"));
        assert_eq!(p.due(), t0 + s(1000));
        assert_eq!(p.take_due(t0 + s(1000)).len(), 7);
        assert_eq!(p.take_due(t0 + s(1500)).len(), 7);
        assert_eq!(p.take_due(t0 + s(2000)).len(), 8, "the full round");
        assert_eq!(p.due(), t0 + s(2500));
    }

    #[test]
    fn forgetting_a_directory_forgets_its_subtree() {
        let mut p = DirPoller::new(Duration::from_secs(2), Instant::now());
        for d in ["/h/s", "/h/s/2026", "/h/s/2026/11", "/h/s2"] {
            p.track(PathBuf::from(d), true, None);
        }
        assert_eq!(
            p.children(Path::new("/h/s")),
            vec![PathBuf::from("/h/s/2026")]
        );
        p.forget_under(Path::new("/h/s/2026"));
        assert_eq!(p.len(), 2);
        assert!(p.is_tracked(Path::new("/h/s2")));
    }

    const NAME: &str = "rollout-2026-11-29T10-00-00-01a2aaaa-4aab-7f60-bd31-00000000aaaa.jsonl";
    const NAME2: &str = "rollout-2026-11-29T10-00-01-01a2bbbb-4aab-7f60-bd31-00000000bbbb.jsonl";

    /// One interval later than the last call: every round is a full one.
    fn step(t: &mut Instant) -> Instant {
        *t += Duration::from_secs(2);
        *t
    }

    /// A `sessions/` tree with one day directory, tracked by a poller: the temporary
    /// directory (kept alive by the caller), `sessions/`, the day, the poller, its clock.
    fn tracked_tree() -> (tempfile::TempDir, PathBuf, PathBuf, DirPoller, Instant) {
        let tmp = tempfile::tempdir().unwrap();
        let sessions = tmp.path().join("sessions");
        let day = sessions.join("2026/11/29");
        std::fs::create_dir_all(&day).unwrap();
        let t = Instant::now();
        let mut p = DirPoller::new(Duration::from_secs(2), t);
        track_tree(&mut p, &sessions, true);
        (tmp, sessions, day, p, t)
    }

    /// A round on a real directory tree: new files and new directories are reported, so are
    /// indexed files that vanished; an unchanged tree reports nothing. The wall clock is
    /// passed far ahead so no stamp counts as racy.
    #[test]
    fn a_round_reports_what_the_listing_adds_and_drops() {
        let (tmp, sessions, day, mut p, mut t) = tracked_tree();
        let later = i64::MAX / 2;
        assert_eq!(p.len(), 4);
        let mut index: Vec<PathBuf> = Vec::new();
        assert!(
            round(&mut p, step(&mut t), later, &mut |_| index.clone(), &|_| {
                false
            })
            .is_empty()
        );

        std::fs::write(day.join(NAME), b"x").unwrap();
        std::fs::write(day.join("notes.txt"), b"x").unwrap();
        // The write may land in the tick the tree was stamped in: forced through the stamp.
        p.track(day.clone(), true, None);
        assert_eq!(
            round(&mut p, step(&mut t), later, &mut |_| index.clone(), &|_| {
                false
            }),
            vec![day.join(NAME)]
        );
        index.push(day.join(NAME));
        assert!(
            round(&mut p, step(&mut t), later, &mut |_| index.clone(), &|_| {
                false
            })
            .is_empty()
        );

        // Renamed away (archived): the indexed name is gone; a second file is new.
        std::fs::rename(day.join(NAME), tmp.path().join(NAME)).unwrap();
        std::fs::write(day.join(NAME2), b"x").unwrap();
        p.track(day.clone(), true, None);
        let mut got = round(&mut p, step(&mut t), later, &mut |_| index.clone(), &|_| {
            false
        });
        got.sort();
        assert_eq!(got, vec![day.join(NAME), day.join(NAME2)]);

        // A new day directory is reported whole and tracked; a deleted one is reported.
        let next = sessions.join("2026/11/30");
        std::fs::create_dir(&next).unwrap();
        p.track(sessions.join("2026/11"), true, None);
        assert_eq!(
            round(&mut p, step(&mut t), later, &mut |_| Vec::new(), &|_| false),
            vec![next.clone()]
        );
        assert!(p.is_tracked(&next));
        std::fs::remove_dir(&next).unwrap();
        let got = round(&mut p, step(&mut t), later, &mut |_| Vec::new(), &|_| false);
        assert_eq!(got, vec![next.clone()]);
        assert!(!p.is_tracked(&next));
    }

    /// A directory the caller skips (its home does not answer) is not looked at, and its
    /// change is reported at the next round that does look.
    #[test]
    fn a_skipped_directory_is_looked_at_by_the_next_round() {
        let (_tmp, sessions, day, mut p, mut t) = tracked_tree();
        let later = i64::MAX / 2;
        std::fs::write(day.join(NAME), b"x").unwrap();
        p.track(day.clone(), true, None);
        let hung = |d: &Path| d.starts_with(&sessions);
        assert!(round(&mut p, step(&mut t), later, &mut |_| Vec::new(), &hung).is_empty());
        assert_eq!(
            round(&mut p, step(&mut t), later, &mut |_| Vec::new(), &|_| false),
            vec![day.join(NAME)]
        );
    }
}
