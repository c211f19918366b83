//! Full scan and incremental reconcile of the configured homes into the index.
//!
//! A crawl lists `sessions/` and `archived_sessions/` of every home, each recursively: Codex
//! archives flat, but its lookup by id walks the whole `archived_sessions/` tree, so a rollout
//! another tool filed in a subdirectory there is found by Codex and must be by us too.
//! skips files whose stamp (dev, ino, size, mtime) matches their row, head-reads the rest on
//! all cores, and writes in batched transactions. Rows of files that are gone are removed.
//!
//! Symlink policy: a file symlink is followed when its target lies inside a configured home
//! (the index records the target, its real location); a target outside every home is
//! reported as `outsideHome` and never opened. Directory symlinks are never followed, so a
//! link loop cannot trap the walk.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use walkdir::WalkDir;

use crate::identity::{canonicalize, Area, Home, Homes, Stamp};
use crate::index::{Batch, Change, Index, IndexAccess, IndexError, IndexedFile, ProblemRow};
use crate::rollout::{self, name, BadFile, HeadLimits, Inspected, ProblemKind};

/// A rollout-named path found in a home, resolved to its real location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Canonical path of the file (the symlink target for a followed file symlink).
    pub path: PathBuf,
    /// Realpath of the home it belongs to.
    pub home: PathBuf,
    pub archived: bool,
}

/// What a reconcile did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileSummary {
    /// Rollout-named entries listed.
    pub seen: u64,
    /// Heads read because a file was new or changed.
    pub read: u64,
    /// Files whose stamp matched their row.
    pub unchanged: u64,
    /// Rows removed because their file is gone.
    pub removed: u64,
    /// Bad files found in this pass.
    pub problems: u64,
    #[serde(serialize_with = "as_millis", deserialize_with = "from_millis")]
    #[schemars(with = "u64")]
    pub elapsed: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

fn from_millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    <u64 as serde::Deserialize>::deserialize(d).map(Duration::from_millis)
}

/// Receives crawl progress (a progress bar, or nothing).
pub trait Progress: Sync {
    fn found(&self, _total: u64) {}
    fn advanced(&self, _n: u64) {}
}

impl Progress for () {}

/// Told of each directory a reconcile's walk is about to list, before it lists it (the
/// watcher watches it there: a file made in it meanwhile is then either listed or reported
/// by the watch), and of each rollout-named directory it does not descend into.
pub trait DirObserver: Sync {
    fn before_listing(&self, _dir: &Path) {}
    fn not_descending(&self, _dir: &Path) {}
    /// Whether the walk must leave `home` alone: its filesystem does not answer, and a call
    /// there may never return. Its rows are kept, as an unavailable home's are.
    fn leaves_alone(&self, _home: &Home) -> bool {
        false
    }
}

impl DirObserver for () {}

/// Brings the index in line with every configured home.
pub fn reconcile<A: IndexAccess>(
    homes: &Homes,
    index: &A,
    limits: &HeadLimits,
    progress: &dyn Progress,
) -> Result<ReconcileSummary, IndexError> {
    reconcile_observed(homes, index, limits, progress, &())
}

/// As [`reconcile`], telling `dirs` of each directory the walk lists, before it lists it.
pub fn reconcile_observed<A: IndexAccess>(
    homes: &Homes,
    index: &A,
    limits: &HeadLimits,
    progress: &dyn Progress,
    dirs: &dyn DirObserver,
) -> Result<ReconcileSummary, IndexError> {
    index.with(|i| i.require_writer("reconciling"))?;
    let started = Instant::now();
    let mut summary = ReconcileSummary::default();
    let roots = allowed_roots(homes);
    index.with(|i| i.size_cache_for_reconcile(true))?;
    let bulk = index.with(Index::begin_bulk_load)?;
    // A home left out: its realpath may be unknown, so no row counts as an orphan this time.
    let mut left_out = false;
    let walked = (|| {
        for home in &homes.homes {
            if dirs.leaves_alone(home) {
                tracing::warn!(home = %home.configured.display(), "a home's filesystem does not answer: not reconciled until it does, its rows are kept");
                left_out = true;
                continue;
            }
            if let Some((dir, e)) = crate::identity::unavailable(home) {
                tracing::warn!(home = %home.configured.display(), dir = %dir.display(), error = %e, "a home cannot be read (its filesystem fails, the directory is not missing): not reconciled, its rows are kept until it can be");
                left_out = true;
                continue;
            }
            reconcile_home(
                homes,
                home,
                (&roots, dirs),
                (index, bulk),
                limits,
                progress,
                &mut summary,
            )?;
        }
        Ok::<(), IndexError>(())
    })();
    // Built whether or not the walk failed.
    let built = if bulk {
        index.with(Index::end_bulk_load)
    } else {
        Ok(())
    };
    let shrunk = index.with(|i| i.size_cache_for_reconcile(false));
    walked.and(built).and(shrunk)?;
    // Rows of homes no longer configured (or no longer where the home's symlink points).
    let reals: Vec<PathBuf> = homes.homes.iter().map(|h| h.real.clone()).collect();
    let orphans = if left_out {
        Vec::new()
    } else {
        index.with(|i| i.paths_outside_homes(&reals))?
    };
    if !orphans.is_empty() {
        summary.removed += orphans.len() as u64;
        index.with(|i| i.remove_paths(&orphans))?;
    }
    summary.elapsed = started.elapsed();
    release_freed_memory();
    Ok(summary)
}

/// Hands the heap pages the walk's maps and batches used back to the OS: glibc keeps freed
/// memory otherwise, and a long-running agent would carry a crawl's peak forever.
pub(crate) fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Heads read, walk entries paired with their rows, and rows fetched, per step: the
/// reconcile's memory is a few of these, whatever the size of the home.
const PAGE: usize = 1024;

/// A reconcile is a merge of two sorted streams, the walk (both rollout directories, in path
/// byte order) and the index's rows under the home (paged in key order, which is the same
/// order): a row the walk passes without listing is gone, a file the walk lists without a
/// row is new, and only what changed is held, never a map of every path.
fn reconcile_home<A: IndexAccess>(
    homes: &Homes,
    home: &Home,
    (roots, dirs): (&[PathBuf], &dyn DirObserver),
    (index, bulk): (&A, bool),
    limits: &HeadLimits,
    progress: &dyn Progress,
    summary: &mut ReconcileSummary,
) -> Result<(), IndexError> {
    let mut rows = RowCursor::new(&home.real);
    let old_problems = index.with(|i| i.problem_paths_under(&home.real))?;
    let mut old_problem_seen = vec![false; old_problems.len()];
    let mut walk_problems: Vec<ProblemRow> = Vec::new();
    let mut problem_paths: HashSet<PathBuf> = HashSet::new();
    // Rollout-named symlinks: their targets are out of the walk's order, so they are taken
    // after it (there are few).
    let mut linked: Vec<Candidate> = Vec::new();
    // Rows the walk passed without listing their paths as files.
    let mut unmatched: Vec<(PathBuf, Stamp)> = Vec::new();
    let mut bad: Vec<Candidate> = Vec::new();
    let mut vanished: Vec<PathBuf> = Vec::new();
    let mut recorded = 0; // walk problems written so far

    // Heads are read on all cores while this thread walks, merges and writes: it hands
    // batches to a reader thread and writes what comes back, at most a few batches behind.
    std::thread::scope(|scope| -> Result<(), IndexError> {
        let (jobs, job_rx) = std::sync::mpsc::channel::<Vec<ToRead>>();
        let (done_tx, done) = std::sync::mpsc::channel::<ReadBatch>();
        // What the writer is done with is freed on another thread: the writer is the
        // pipeline's bottleneck, and freeing a batch's rows and changes cost it ~5 %.
        let (trash, trash_rx) = std::sync::mpsc::channel::<(Batch, Vec<Change>)>();
        scope.spawn(move || trash_rx.into_iter().for_each(drop));
        scope.spawn(move || {
            for chunk in job_rx {
                let outcomes: Outcomes = chunk
                    .into_par_iter()
                    .map(|(c, listed_file)| {
                        let o = if listed_file {
                            rollout::inspect_listed_file(&c.path, limits)
                        } else {
                            rollout::inspect(&c.path, limits)
                        };
                        (c, o)
                    })
                    .collect();
                // Split here rather than on the writer, for the same reason.
                let bad: Vec<Candidate> = outcomes
                    .iter()
                    .filter(|(_, o)| o.as_ref().is_err_and(|b| b.kind != ProblemKind::Vanished))
                    .map(|(c, _)| c.clone())
                    .collect();
                let n = outcomes.len() as u64;
                let (files, problems, gone) = split_outcomes(outcomes);
                let read = ReadBatch {
                    n,
                    bad,
                    files,
                    problems,
                    gone,
                };
                if done_tx.send(read).is_err() {
                    return; // the writer failed and stopped listening
                }
            }
        });
        let mut write = |read: ReadBatch, walk_problems: &[ProblemRow]| {
            let ReadBatch {
                n,
                bad: read_bad,
                files,
                mut problems,
                gone,
            } = read;
            bad.extend(read_bad);
            summary.read += files.len() as u64;
            summary.problems += problems.iter().filter(|p| !p.kind.is_warning()).count() as u64;
            problems.extend_from_slice(walk_problems);
            let batch = Batch {
                files,
                problems,
                removed: Vec::new(),
            };
            let (changes, batch) = index.with(|i| write_read(homes, i, limits, bulk, batch))?;
            let _ = trash.send((batch, changes));
            vanished.extend(gone);
            progress.advanced(n);
            Ok::<(), IndexError>(())
        };
        // The walk runs on a thread of its own, a few pages ahead (listing, sorting and a
        // path per file were about half of this thread's work), while this thread pages
        // through the rows (the index is this thread's alone) and merges.
        let (found_tx, found_rx) = std::sync::mpsc::sync_channel::<Vec<Found>>(2);
        scope.spawn(move || {
            let mut walk = SortedWalk::new(home, roots, dirs);
            loop {
                let page: Vec<Found> = walk.by_ref().take(PAGE).collect();
                let last = page.len() < PAGE;
                if found_tx.send(page).is_err() || last {
                    return; // walked, or the merge failed and stopped listening
                }
            }
        });
        let mut walk = found_rx.into_iter().flatten();
        // Stamps are compared on all cores while this thread merges on, rather than waiting
        // for each page's stats. Results come back in order, a few pages behind.
        let (stats, stat_rx) = std::sync::mpsc::channel::<Vec<Paired>>();
        let (compared_tx, compared_rx) = std::sync::mpsc::channel::<Vec<Compared>>();
        scope.spawn(move || {
            for paired in stat_rx {
                if compared_tx.send(compare_stamps(paired)).is_err() {
                    return; // the writer failed and stopped listening
                }
            }
        });
        let mut in_flight = 0usize;
        let mut stats_in_flight = 0usize;
        let mut walked = false;
        let mut to_read: Vec<ToRead> = Vec::with_capacity(PAGE);
        let mut chunk: Vec<(Candidate, Option<std::fs::DirEntry>)> = Vec::with_capacity(PAGE);
        loop {
            while !walked && chunk.len() < PAGE {
                match walk.next() {
                    None => break,
                    Some(Found::Plain(c, entry)) if !problem_paths.contains(&c.path) => {
                        chunk.push((c, entry))
                    }
                    Some(Found::Plain(..)) => {}
                    Some(Found::Linked(c)) => linked.push(c),
                    Some(Found::Problem(p)) => {
                        problem_paths.insert(p.path.clone());
                        walk_problems.push(p);
                    }
                }
            }
            walked |= chunk.len() < PAGE;
            if !chunk.is_empty() {
                summary.seen += chunk.len() as u64;
                progress.found(chunk.len() as u64);
                let mut paired = Vec::with_capacity(chunk.len());
                for (c, entry) in chunk.drain(..) {
                    while let Some((row, _)) = rows.peek(index)? {
                        if bytes(row) >= bytes(&c.path) {
                            break;
                        }
                        unmatched.extend(rows.pop());
                    }
                    let before = match rows.peek(index)? {
                        Some((row, _)) if row == &c.path => rows.pop().map(|(_, s)| s),
                        _ => None,
                    };
                    if let Ok(i) = old_problems.binary_search_by(|p| bytes(p).cmp(bytes(&c.path))) {
                        old_problem_seen[i] = true;
                    }
                    paired.push((c, entry, before));
                }
                let _ = stats.send(paired);
                stats_in_flight += 1;
            }
            if stats_in_flight == 0 {
                break; // walked, and every page compared
            }
            if !walked && stats_in_flight <= 2 {
                continue;
            }
            let Ok(compared) = compared_rx.recv() else {
                break; // the comparing thread panicked: the scope passes it on
            };
            stats_in_flight -= 1;
            let mut unchanged = 0;
            for Compared {
                candidate,
                unchanged: same,
                listed_file,
            } in compared
            {
                if same {
                    unchanged += 1;
                } else {
                    to_read.push((candidate, listed_file));
                }
            }
            summary.unchanged += unchanged;
            progress.advanced(unchanged);
            if to_read.len() >= PAGE {
                // `to_read` is in path order, so each batch goes into the path-keyed table
                // in key order.
                let _ = jobs.send(std::mem::take(&mut to_read));
                in_flight += 1;
                while in_flight > 2 {
                    let Ok(outcomes) = done.recv() else { break };
                    in_flight -= 1;
                    write(outcomes, &walk_problems[recorded..])?;
                    recorded = walk_problems.len();
                }
            }
        }
        drop(stats);
        if !to_read.is_empty() {
            let _ = jobs.send(to_read);
        }
        drop(jobs);
        for outcomes in done {
            write(outcomes, &walk_problems[recorded..])?;
            recorded = walk_problems.len();
        }
        Ok(())
    })?;
    while rows.peek(index)?.is_some() {
        unmatched.extend(rows.pop());
    }
    summary.seen += (linked.len() + walk_problems.len()) as u64;
    summary.problems += walk_problems.len() as u64;
    unmatched.retain(|(p, _)| !problem_paths.contains(p));

    // A symlink and its target inside the home are one file: a target the walk listed
    // itself stands as listed; of links to one target, the first found stands (the sort is
    // stable).
    linked.sort_by(|a, b| bytes(&a.path).cmp(bytes(&b.path)));
    linked.dedup_by(|later, first| later.path == first.path);
    linked.retain(|c| !problem_paths.contains(&c.path));
    let mut link_reads = Vec::new();
    for c in linked {
        if let Ok(i) = old_problems.binary_search_by(|p| bytes(p).cmp(bytes(&c.path))) {
            old_problem_seen[i] = true;
        }
        match unmatched.binary_search_by(|(p, _)| bytes(p).cmp(bytes(&c.path))) {
            Ok(i) => {
                let (_, before) = unmatched.remove(i);
                if Stamp::of(&c.path).is_ok_and(|now| now.unchanged(&before)) {
                    summary.unchanged += 1;
                } else {
                    link_reads.push(c);
                }
            }
            // A row now is one the walk matched or wrote: the target was listed itself.
            Err(_) if index.with(|i| i.file_at(&c.path))?.is_some() => {}
            Err(_) => link_reads.push(c),
        }
    }

    // Files that were bad when read may have been half-written then (a `.zst` being made
    // while its `.jsonl` still stood): read them again and write them with the removals, so
    // a thread whose old file went is never left without the new one it had by then.
    // Linked files are read here for the first time.
    let inspect_all = |cs: Vec<Candidate>| -> Outcomes {
        cs.into_iter()
            .map(|c| {
                let o = rollout::inspect(&c.path, limits);
                (c, o)
            })
            .collect()
    };
    let (mut files, mut problems, vanished_again) = split_outcomes(inspect_all(bad));
    let (linked_files, linked_problems, linked_vanished) = split_outcomes(inspect_all(link_reads));
    summary.read += linked_files.len() as u64;
    summary.problems += linked_problems
        .iter()
        .filter(|p| !p.kind.is_warning())
        .count() as u64;
    files.extend(linked_files);
    problems.extend(linked_problems);
    problems.extend_from_slice(&walk_problems[recorded..]);

    // Only what is still gone: a file made again since the walk may be indexed already.
    let still_gone = |p: &Path| crate::identity::is_gone(p);
    let mut gone: Vec<PathBuf> = unmatched
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| still_gone(p))
        .collect();
    summary.removed += gone.len() as u64;
    gone.extend(
        old_problems
            .into_iter()
            .zip(old_problem_seen)
            .filter(|(p, seen)| !seen && !problem_paths.contains(p))
            .map(|(p, _)| p),
    );
    gone.extend(vanished);
    gone.extend(vanished_again);
    gone.extend(linked_vanished);
    // What is still gone, and where its threads went, is decided by the write (see
    // [`write_seen`]): a file made again since the walk may be indexed already, and one
    // archived, unarchived or moved with its day directory while the walk ran was seen at
    // neither place.
    index
        .with(|i| {
            write_seen(
                homes,
                i,
                limits,
                "reconciling",
                Batch {
                    files,
                    problems,
                    removed: gone,
                },
            )
        })
        .map(drop)
}

/// A listed file, its directory entry, and its row's stamp if it has a row.
type Paired = (Candidate, Option<std::fs::DirEntry>, Option<Stamp>);

/// A file to read, and whether its listing said it is a regular file (see
/// [`rollout::inspect_listed_file`]).
type ToRead = (Candidate, bool);

/// A listed file compared with its row.
struct Compared {
    candidate: Candidate,
    /// It has a row and its stamp is the row's: nothing to read.
    unchanged: bool,
    /// Its directory entry's type says a regular file.
    listed_file: bool,
}

/// Which files are unchanged, on all cores. Only files with a row are compared (a new file
/// is read whatever its stamp).
fn compare_stamps(paired: Vec<Paired>) -> Vec<Compared> {
    paired
        .into_par_iter()
        .map(|(c, entry, before)| {
            let listed_file = entry
                .as_ref()
                .and_then(|e| e.file_type().ok())
                .is_some_and(|t| t.is_file());
            let unchanged = before.is_some_and(|b| {
                // Listed as a file, not a symlink: its own stat is the one to compare.
                let now = match entry {
                    Some(e) => e.metadata().map(|m| Stamp::from_metadata(&m)),
                    None => Stamp::of(&c.path),
                };
                now.is_ok_and(|now| now.unchanged(&b))
            });
            Compared {
                candidate: c,
                unchanged,
                listed_file,
            }
        })
        .collect()
}

/// A path's bytes, the order of the walk and of the index's keys (SQLite's BINARY order).
fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_encoded_bytes()
}

/// The index's rows under one home, in key order, a page at a time.
///
/// A page is fetched only when the last is used up. The rows this reconcile writes are at
/// paths the merge has passed, or (a thread's file found moved, see `write_seen`) at paths
/// the walk will list: a later page holding one pairs it with its listing, like any row.
struct RowCursor<'a> {
    home: &'a Path,
    page: std::collections::VecDeque<(PathBuf, Stamp)>,
    last: Option<PathBuf>,
    done: bool,
}

impl<'a> RowCursor<'a> {
    fn new(home: &'a Path) -> Self {
        RowCursor {
            home,
            page: Default::default(),
            last: None,
            done: false,
        }
    }

    fn peek<A: IndexAccess>(&mut self, index: &A) -> Result<Option<&(PathBuf, Stamp)>, IndexError> {
        if self.page.is_empty() && !self.done {
            let page = index.with(|i| i.stamps_page(self.home, self.last.as_deref(), PAGE))?;
            self.done = page.len() < PAGE;
            if let Some((p, _)) = page.last() {
                self.last = Some(p.clone());
            }
            self.page.extend(page);
        }
        Ok(self.page.front())
    }

    fn pop(&mut self) -> Option<(PathBuf, Stamp)> {
        self.page.pop_front()
    }
}

/// Writes what a crawl, the watcher or a query saw, as one transaction: the one way file
/// rows are written and dropped, so that no writer announces a move as a removal.
///
/// Under the writer (so that any later change to these files sends events applied after
/// this write):
/// - a file read earlier that is gone now is not written back (its stale row would bring
///   back a path that no longer exists, announcing the thread moved back); its path is
///   treated as gone instead;
/// - a gone path that exists again is kept;
/// - a thread whose every file is about to go is looked for elsewhere (see
///   `relocated`), and what is found is written in the same transaction, so a file
///   archived, unarchived, compressed or moved while its old path was seen gone is one
///   move, never `Removed` then `Materialized`.
pub fn write_seen(
    homes: &Homes,
    index: &Index,
    limits: &HeadLimits,
    action: &'static str,
    batch: Batch,
) -> Result<Vec<Change>, IndexError> {
    write_seen_keeping(homes, index, limits, action, batch).map(|(changes, _)| changes)
}

/// A reconcile's batch of files just read, written as [`write_seen_keeping`] writes it; in a
/// bulk load (the index held no row when the reconcile began) without its checks for files
/// gone since they were read: their threads have no older rows to move or drop, and a file
/// gone in those few milliseconds is dropped by the watcher's event for it, or by the first
/// answer about it (every answer checks its file). Those checks were a fifth of the
/// writer's work in a cold index.
fn write_read(
    homes: &Homes,
    index: &Index,
    limits: &HeadLimits,
    bulk: bool,
    batch: Batch,
) -> Result<(Vec<Change>, Batch), IndexError> {
    const ACTION: &str = "reconciling";
    if !bulk {
        return write_seen_keeping(homes, index, limits, ACTION, batch);
    }
    index.require_writer(ACTION)?;
    if index.is_guest() || batch.is_empty() {
        return Ok((Vec::new(), batch));
    }
    let changes = index.apply(ACTION, &batch)?;
    Ok((changes, batch))
}

/// [`write_seen`], handing the batch (as written) back to the caller to free.
fn write_seen_keeping(
    homes: &Homes,
    index: &Index,
    limits: &HeadLimits,
    action: &'static str,
    mut batch: Batch,
) -> Result<(Vec<Change>, Batch), IndexError> {
    index.require_writer(action)?;
    if index.is_guest() {
        return Ok((Vec::new(), batch));
    }
    let exists = |p: &Path| std::fs::symlink_metadata(p).is_ok();
    let (files, moved): (Vec<_>, Vec<_>) = std::mem::take(&mut batch.files)
        .into_iter()
        .partition(|f| exists(&f.path));
    batch.files = files;
    // The warnings read with a file that went go with it.
    batch
        .problems
        .retain(|p| !(p.kind.is_warning() && moved.iter().any(|f| f.path == p.path)));
    batch.removed.extend(moved.into_iter().map(|f| f.path));
    // A thread written here whose other rows are of files that are gone: those go in the
    // same transaction, so a file made anew after the old one went is told from a move
    // (see [`crate::index::thread_changes`]), however late the old one was seen to go.
    let written: HashSet<&Path> = batch.files.iter().map(|f| f.path.as_path()).collect();
    let stale: Vec<PathBuf> = index
        .files_for_threads(batch.files.iter().map(IndexedFile::thread_id))?
        .into_iter()
        .filter(|f| !written.contains(f.path.as_path()) && !exists(&f.path))
        .map(|f| f.path)
        .collect();
    batch.removed.extend(stale);
    // `is_gone`, not `!exists`: a problem row of a name that is not UTF-8 is kept under a
    // lossy spelling no file has.
    batch.removed.retain(|p| crate::identity::is_gone(p));
    batch.removed.sort();
    batch.removed.dedup();
    let (found, warnings) = relocated(homes, index, limits, &batch)?;
    batch.files.extend(found);
    batch.problems.extend(warnings);
    if batch.is_empty() {
        return Ok((Vec::new(), batch));
    }
    let changes = index.apply(action, &batch)?;
    Ok((changes, batch))
}

/// The files of threads that `batch` would leave with no file, found elsewhere in the
/// homes: the same file moved (same identity, see [`Stamp::same_file`]: an archive,
/// unarchive or day-directory move, whatever the name says), or its compressed or
/// decompressed copy beside it. A different file of the thread elsewhere is not looked
/// for: it is the thread made anew, not moved. Returned with the warnings read with them
/// (a name that carries another id).
fn relocated(
    homes: &Homes,
    index: &Index,
    limits: &HeadLimits,
    batch: &Batch,
) -> Result<(Vec<IndexedFile>, Vec<ProblemRow>), IndexError> {
    if batch.removed.is_empty() {
        return Ok(Default::default());
    }
    let removed: HashSet<&Path> = batch.removed.iter().map(PathBuf::as_path).collect();
    let kept: HashSet<&str> = batch.files.iter().map(IndexedFile::thread_id).collect();
    let mut threads = HashSet::new();
    let mut stamps = Vec::new();
    let mut siblings = HashSet::new();
    for p in &batch.removed {
        let Some(row) = index.file_at(p)? else {
            continue;
        };
        if kept.contains(row.thread_id()) {
            continue;
        }
        let rows = index.files_for_thread(row.thread_id())?;
        if rows.iter().all(|r| removed.contains(r.path.as_path())) {
            stamps.push(row.stamp);
            siblings.extend(name::sibling(p));
            threads.insert(row.head.thread_id);
        }
    }
    if threads.is_empty() {
        return Ok(Default::default());
    }
    let written: HashSet<&Path> = batch.files.iter().map(|f| f.path.as_path()).collect();
    let fits = |path: &Path| {
        !removed.contains(path)
            && !written.contains(path)
            && (siblings.contains(path)
                || Stamp::of(path).is_ok_and(|now| stamps.iter().any(|s| s.same_file(&now))))
    };
    let inspect = |c: Candidate| {
        let o = rollout::inspect(&c.path, limits);
        (c, o)
    };
    // Where Codex moves a file first (its compressed copy beside it, the archive, back to
    // its day directory): a stat each. The homes are walked only when that finds nothing
    // for some thread, streaming, so the cost of a true removal is a walk, never a list of
    // every file.
    let mut probes: Vec<PathBuf> = siblings.iter().cloned().collect();
    for p in batch.removed.iter().filter(|p| !siblings.contains(*p)) {
        let Some(file_name) = p.file_name() else {
            continue;
        };
        let day = file_name.to_str().and_then(name::parse).map(|n| {
            let t = n.timestamp;
            PathBuf::from(t.get(0..4).unwrap_or_default())
                .join(t.get(5..7).unwrap_or_default())
                .join(t.get(8..10).unwrap_or_default())
        });
        for home in &homes.homes {
            probes.push(home.archived_dir().join(file_name));
            probes.extend(
                day.as_ref()
                    .map(|d| home.sessions_dir().join(d).join(file_name)),
            );
        }
    }
    let mut owned: Outcomes = probes
        .iter()
        .filter_map(|p| canonicalize(p).ok())
        .filter(|p| fits(p))
        .filter_map(|p| candidate_for(homes, &p))
        .map(inspect)
        .collect();
    let found: HashSet<String> = owned
        .iter()
        .filter_map(|(_, o)| o.as_ref().ok().map(|i| i.head.thread_id.clone()))
        .collect();
    if threads.iter().any(|t| !found.contains(t)) {
        let roots = allowed_roots(homes);
        let probed: HashSet<PathBuf> = owned.iter().map(|(c, _)| c.path.clone()).collect();
        for home in &homes.homes {
            walk_each(home, &roots, &|_| true, false, &mut |f| {
                let (Found::Plain(c, _) | Found::Linked(c)) = f else {
                    return;
                };
                if !probed.contains(&c.path) && fits(&c.path) {
                    owned.push(inspect(c));
                }
            });
        }
    }
    let (files, problems, _) = split_outcomes(owned);
    let files: Vec<IndexedFile> = files
        .into_iter()
        .filter(|f| threads.contains(&f.head.thread_id))
        .collect();
    let warnings = problems
        .into_iter()
        .filter(|p| p.kind.is_warning() && files.iter().any(|f| f.path == p.path))
        .collect();
    if !files.is_empty() {
        tracing::debug!(found = ?files.iter().map(|f| &f.path).collect::<Vec<_>>(), "threads whose files went were found elsewhere");
    }
    Ok((files, warnings))
}

pub(crate) type Outcomes = Vec<(Candidate, Result<Inspected, BadFile>)>;

/// A reconcile's batch of head reads, split by the reading thread: how many were read, the
/// candidates that were bad (read again at the end), and [`split_outcomes`]' three parts.
struct ReadBatch {
    n: u64,
    bad: Vec<Candidate>,
    files: Vec<IndexedFile>,
    problems: Vec<ProblemRow>,
    gone: Vec<PathBuf>,
}

/// Splits head reads into rows to write, problems to record, and paths that vanished.
pub(crate) fn split_outcomes(
    outcomes: Outcomes,
) -> (Vec<IndexedFile>, Vec<ProblemRow>, Vec<PathBuf>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    let mut gone = Vec::new();
    for (c, outcome) in outcomes {
        match outcome {
            Ok(inspected) => {
                if let Some(detail) = inspected.name_mismatch() {
                    problems.push(ProblemRow {
                        path: c.path.clone(),
                        home: c.home.clone(),
                        kind: ProblemKind::NameMismatch,
                        detail,
                        thread_id: Some(inspected.head.thread_id.clone()),
                    });
                }
                files.push(indexed(&c, inspected));
            }
            Err(bad) if bad.kind == ProblemKind::Vanished => gone.push(c.path.clone()),
            Err(bad) => problems.push(problem_row(&c.home, bad)),
        }
    }
    (files, problems, gone)
}

/// The row for a file that was read.
pub fn indexed(c: &Candidate, inspected: Inspected) -> IndexedFile {
    IndexedFile {
        path: c.path.clone(),
        home: c.home.clone(),
        stamp: inspected.stamp,
        archived: c.archived,
        compression: inspected.compression,
        head: inspected.head,
    }
}

/// The problem of a file whose name has a rollout's shape but is not UTF-8: Codex cannot
/// have written it, so it is reported (crawl and watcher alike), never skipped in silence.
/// None for any other name.
pub fn unreadable_name(home: &Path, path: &Path) -> Option<ProblemRow> {
    use std::os::unix::ffi::OsStrExt;
    let file_name = path.file_name()?;
    if file_name.to_str().is_some() || !name::looks_like_rollout_bytes(file_name.as_bytes()) {
        return None;
    }
    let shown = PathBuf::from(path.to_string_lossy().into_owned());
    Some(problem_row(
        home,
        BadFile::new(
            &shown,
            ProblemKind::InvalidUtf8,
            "the file name is not UTF-8",
        ),
    ))
}

fn problem_row(home: &Path, bad: BadFile) -> ProblemRow {
    ProblemRow {
        path: bad.path,
        home: home.to_owned(),
        kind: bad.kind,
        detail: bad.detail,
        thread_id: None,
    }
}

/// Realpaths a followed symlink may point into: each home, and its rollout directories
/// (which may themselves be symlinks elsewhere).
pub fn allowed_roots(homes: &Homes) -> Vec<PathBuf> {
    homes.homes.iter().flat_map(|h| h.roots.clone()).collect()
}

/// Lists the rollout-named entries of a home whose file name passes `wanted`.
///
/// Returns candidates (files and other non-directories, resolved to canonical paths) and the
/// problems found while walking (rollout-named directories, unreadable directories, symlinks
/// that are broken, loop or leave the homes).
pub fn discover(
    home: &Home,
    roots: &[PathBuf],
    wanted: &dyn Fn(&str) -> bool,
) -> (Vec<Candidate>, Vec<ProblemRow>) {
    let mut found = (Vec::new(), Vec::new());
    walk_each(home, roots, wanted, false, &mut |f| collect(f, &mut found));
    found
}

fn collect(found: Found, (candidates, problems): &mut (Vec<Candidate>, Vec<ProblemRow>)) {
    match found {
        Found::Plain(c, _) | Found::Linked(c) => candidates.push(c),
        Found::Problem(p) => problems.push(p),
    }
}

/// Walks both rollout directories of a home (sessions first), handing each find to `f`.
fn walk_each(
    home: &Home,
    roots: &[PathBuf],
    wanted: &dyn Fn(&str) -> bool,
    sorted: bool,
    f: &mut dyn FnMut(Found),
) {
    for area in [Area::Sessions, Area::Archived] {
        AreaWalk::new(home, roots, area, None, wanted, sorted, &()).for_each(&mut *f);
    }
}

/// As [`discover`], for one directory inside a home (a directory that just appeared).
pub fn discover_under(
    home: &Home,
    roots: &[PathBuf],
    dir: &Path,
) -> (Vec<Candidate>, Vec<ProblemRow>) {
    let mut found = (Vec::new(), Vec::new());
    for area in [Area::Sessions, Area::Archived] {
        let Ok(root) = canonicalize(&area_dir(home, area)) else {
            continue;
        };
        let start = if root.starts_with(dir) {
            root
        } else if dir.starts_with(&root) {
            dir.to_owned()
        } else {
            continue;
        };
        AreaWalk::new(home, roots, area, Some(start), &|_| true, false, &())
            .for_each(|f| collect(f, &mut found));
    }
    found
}

fn area_dir(home: &Home, area: Area) -> PathBuf {
    match area {
        Area::Sessions => home.sessions_dir(),
        Area::Archived => home.archived_dir(),
    }
}

/// One find of a walk.
enum Found {
    /// A rollout-named file, listed at its own path; the sorted walk keeps its directory
    /// entry, which stats it relative to the open directory (no lookup of the whole path).
    Plain(Candidate, Option<std::fs::DirEntry>),
    /// A rollout-named symlink, followed to its target.
    Linked(Candidate),
    Problem(ProblemRow),
}

/// A lazy walk of one rollout directory of a home.
struct AreaWalk<'a> {
    home: &'a Home,
    roots: &'a [PathBuf],
    archived: bool,
    wanted: &'a dyn Fn(&str) -> bool,
    /// `None` when the directory does not exist (normal: Codex makes these on first use).
    entries: Option<Entries>,
    /// Told of the sorted walk's directories (the unsorted walk's are not).
    dirs: &'a dyn DirObserver,
}

/// A walk's directory entries: walkdir's, or sorted in path byte order by [`SortedDirs`].
enum Entries {
    Unsorted(walkdir::IntoIter),
    Sorted(SortedDirs),
}

/// One entry as a walk lists it, or why a directory could not be listed.
enum Listed {
    Entry {
        path: PathBuf,
        file_type: std::fs::FileType,
        /// The sorted walk's own entry (see [`Found::Plain`]).
        entry: Option<std::fs::DirEntry>,
    },
    Failed {
        path: PathBuf,
        error: std::io::Error,
    },
}

impl Entries {
    fn next(&mut self, dirs: &dyn DirObserver) -> Option<Listed> {
        match self {
            Entries::Unsorted(walk) => loop {
                return Some(match walk.next()? {
                    Ok(e) => Listed::Entry {
                        file_type: e.file_type(),
                        path: e.into_path(),
                        entry: None,
                    },
                    Err(e) => {
                        let Some(path) = e.path().map(Path::to_owned) else {
                            continue;
                        };
                        let message = e.to_string();
                        let error = e
                            .into_io_error()
                            .unwrap_or_else(|| std::io::Error::other(message));
                        Listed::Failed { path, error }
                    }
                });
            },
            Entries::Sorted(walk) => walk.next(dirs),
        }
    }

    /// Does not descend into the directory just listed.
    fn skip_current_dir(&mut self) {
        match self {
            Entries::Unsorted(walk) => walk.skip_current_dir(),
            Entries::Sorted(walk) => walk.descend = None,
        }
    }
}

/// A depth-first walk below a directory (not listing it) that lists each directory's
/// entries in the byte order of their full paths: a directory sorts as its name and a `/`,
/// which is where its descendants' paths fall (`a-b` before `a/x`, `a` before `a-b`).
/// Symlinks are not followed. Each directory is read whole and sorted by a key built once
/// per entry, and its entries keep the directory open, so a file is stat'ed relative to it.
struct SortedDirs {
    /// Per depth, the entries not yet listed, in reverse order (the next is last).
    stack: Vec<Vec<(Vec<u8>, std::fs::DirEntry, std::fs::FileType)>>,
    /// The directory listed last, read on the next step unless skipped.
    descend: Option<PathBuf>,
}

impl SortedDirs {
    fn new(root: PathBuf) -> Self {
        SortedDirs {
            stack: Vec::new(),
            descend: Some(root),
        }
    }

    fn read(dir: &Path) -> std::io::Result<Vec<(Vec<u8>, std::fs::DirEntry, std::fs::FileType)>> {
        let mut entries = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            // Without `d_type` this is an lstat: an entry gone since the listing is skipped,
            // as a listing a moment later would not have had it.
            let Ok(file_type) = e.file_type() else {
                continue;
            };
            let mut key = e.file_name().into_encoded_bytes();
            if file_type.is_dir() {
                key.push(b'/');
            }
            entries.push((key, e, file_type));
        }
        // Reverse order: the next entry is popped off the end.
        entries.sort_unstable_by(|a, b| b.0.cmp(&a.0));
        Ok(entries)
    }

    fn next(&mut self, dirs: &dyn DirObserver) -> Option<Listed> {
        if let Some(dir) = self.descend.take() {
            dirs.before_listing(&dir);
            match SortedDirs::read(&dir) {
                Ok(entries) => self.stack.push(entries),
                Err(error) => return Some(Listed::Failed { path: dir, error }),
            }
        }
        loop {
            let top = self.stack.last_mut()?;
            let Some((_, entry, file_type)) = top.pop() else {
                self.stack.pop();
                continue;
            };
            let path = entry.path();
            if file_type.is_dir() {
                self.descend = Some(path.clone());
            }
            return Some(Listed::Entry {
                path,
                file_type,
                entry: Some(entry),
            });
        }
    }
}

impl<'a> AreaWalk<'a> {
    /// Walks `area` of `home`, or `start` inside it. `sorted` lists files in path byte order.
    fn new(
        home: &'a Home,
        roots: &'a [PathBuf],
        area: Area,
        start: Option<PathBuf>,
        wanted: &'a dyn Fn(&str) -> bool,
        sorted: bool,
        dirs: &'a dyn DirObserver,
    ) -> Self {
        let archived = area == Area::Archived;
        let dir = start.or_else(|| canonicalize(&area_dir(home, area)).ok());
        let entries = dir.map(|dir| {
            if sorted {
                Entries::Sorted(SortedDirs::new(dir))
            } else {
                Entries::Unsorted(
                    WalkDir::new(dir)
                        .min_depth(1)
                        .follow_links(false)
                        .into_iter(),
                )
            }
        });
        AreaWalk {
            home,
            roots,
            archived,
            wanted,
            entries,
            dirs,
        }
    }

    fn problem(&self, bad: BadFile) -> Option<Found> {
        Some(Found::Problem(problem_row(&self.home.real, bad)))
    }

    fn candidate(&self, path: PathBuf) -> Candidate {
        Candidate {
            path,
            home: self.home.real.clone(),
            archived: self.archived,
        }
    }
}

impl Iterator for AreaWalk<'_> {
    type Item = Found;

    fn next(&mut self) -> Option<Found> {
        loop {
            let (path, file_type, entry) = match self.entries.as_mut()?.next(self.dirs)? {
                Listed::Entry {
                    path,
                    file_type,
                    entry,
                } => (path, file_type, entry),
                Listed::Failed { path, error } => {
                    return self.problem(BadFile::from_io(&path, &error));
                }
            };
            let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
                if let Some(p) = unreadable_name(&self.home.real, &path) {
                    return Some(Found::Problem(p));
                }
                continue;
            };
            let named = name::looks_like_rollout(file_name) && (self.wanted)(file_name);
            if file_type.is_dir() {
                if named {
                    if let Some(entries) = self.entries.as_mut() {
                        entries.skip_current_dir();
                        if matches!(entries, Entries::Sorted(_)) {
                            self.dirs.not_descending(&path);
                        }
                    }
                    return self.problem(BadFile::new(
                        &path,
                        ProblemKind::Directory,
                        "is a directory",
                    ));
                }
                continue;
            }
            if !named {
                continue;
            }
            if file_type.is_symlink() {
                return match follow_file_symlink(&path, self.roots) {
                    Ok(target) => Some(Found::Linked(self.candidate(target))),
                    Err(bad) => self.problem(bad),
                };
            }
            return Some(Found::Plain(self.candidate(path), entry));
        }
    }
}

/// Both rollout directories of a home, their files merged in path byte order (a path in
/// both, when one directory lies inside the other, is taken once, from `sessions/`, as the
/// unsorted walk finds it first); links and problems as they come.
struct SortedWalk<'a> {
    areas: [std::iter::Peekable<AreaWalk<'a>>; 2],
}

impl<'a> SortedWalk<'a> {
    fn new(home: &'a Home, roots: &'a [PathBuf], dirs: &'a dyn DirObserver) -> Self {
        let area = |a| AreaWalk::new(home, roots, a, None, &|_| true, true, dirs).peekable();
        SortedWalk {
            areas: [area(Area::Sessions), area(Area::Archived)],
        }
    }
}

impl Iterator for SortedWalk<'_> {
    type Item = Found;

    fn next(&mut self) -> Option<Found> {
        for area in &mut self.areas {
            if matches!(area.peek(), Some(Found::Linked(_) | Found::Problem(_))) {
                return area.next();
            }
        }
        let [sessions, archived] = &mut self.areas;
        let order = match (sessions.peek(), archived.peek()) {
            (Some(Found::Plain(s, _)), Some(Found::Plain(a, _))) => {
                bytes(&s.path).cmp(bytes(&a.path))
            }
            (Some(_), _) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => sessions.next(),
            std::cmp::Ordering::Greater => archived.next(),
            std::cmp::Ordering::Equal => {
                archived.next();
                sessions.next()
            }
        }
    }
}

/// Resolves a rollout-named symlink under the policy above.
fn follow_file_symlink(link: &Path, roots: &[PathBuf]) -> Result<PathBuf, BadFile> {
    let target = canonicalize(link).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            BadFile::new(link, ProblemKind::Unreadable, "symlink loop")
        } else if e.kind() == std::io::ErrorKind::NotFound {
            BadFile::new(link, ProblemKind::Unreadable, "dangling symlink")
        } else {
            BadFile::from_io(link, &e)
        }
    })?;
    if !roots.iter().any(|r| target.starts_with(r)) {
        return Err(BadFile::new(
            link,
            ProblemKind::OutsideHome,
            format!(
                "symlink to {} outside every configured home; not followed",
                target.display()
            ),
        ));
    }
    if target.is_dir() {
        return Err(BadFile::new(
            link,
            ProblemKind::Directory,
            "symlink to a directory; not followed",
        ));
    }
    Ok(target)
}

/// Head-reads one file and writes the outcome to the index: the read-repair step.
///
/// Returns the row when the file is a good rollout. A file that vanished has its row removed
/// (through [`write_seen`], so a thread whose file moved is seen to move). When the index
/// cannot take the write (disk full, I/O error: see [`Index::degraded`]) the verified
/// outcome is returned anyway and the cache write is skipped; the agent's watcher retries a
/// full reconcile until writes succeed again.
pub fn refresh(
    homes: &Homes,
    index: &Index,
    candidate: &Candidate,
    limits: &HeadLimits,
) -> Result<Result<IndexedFile, BadFile>, IndexError> {
    index.require_writer("repairing a row")?;
    let write = |batch: Batch| tolerate(write_seen(homes, index, limits, "repairing a row", batch));
    match rollout::inspect(&candidate.path, limits) {
        Ok(inspected) => {
            let mismatch = inspected.name_mismatch();
            let file = indexed(candidate, inspected);
            let warnings: Vec<ProblemRow> = mismatch
                .map(|detail| ProblemRow {
                    path: file.path.clone(),
                    home: file.home.clone(),
                    kind: ProblemKind::NameMismatch,
                    detail,
                    thread_id: Some(file.head.thread_id.clone()),
                })
                .into_iter()
                .collect();
            write(Batch {
                files: vec![file.clone()],
                problems: warnings,
                removed: Vec::new(),
            })?;
            Ok(Ok(file))
        }
        Err(bad) if bad.kind == ProblemKind::Vanished => {
            write(Batch {
                removed: vec![candidate.path.clone()],
                ..Batch::default()
            })?;
            Ok(Err(bad))
        }
        Err(bad) => {
            write(Batch {
                problems: vec![problem_row(&candidate.home, bad.clone())],
                ..Batch::default()
            })?;
            Ok(Err(bad))
        }
    }
}

/// A cache write that failed for lack of resources is skipped (the index records that it
/// is degraded); any other failure is returned.
fn tolerate<T>(r: Result<T, IndexError>) -> Result<(), IndexError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if crate::index::is_resource_failure(&e) => {
            tracing::debug!(error = %e, "skipping a cache write: the index is degraded");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Where a canonical path sits among the homes, as a candidate; `None` outside every home's
/// rollout directories.
pub fn candidate_for(homes: &Homes, canonical: &Path) -> Option<Candidate> {
    for home in &homes.homes {
        for (archived, dir) in [(false, home.sessions_dir()), (true, home.archived_dir())] {
            let root = canonicalize(&dir).unwrap_or(dir);
            if canonical.starts_with(&root) {
                return Some(Candidate {
                    path: canonical.to_owned(),
                    home: home.real.clone(),
                    archived,
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The merge with the index's rows depends on it: the sorted walk lists files in the
    /// byte order of their full paths, also where a directory's name is a prefix of a
    /// sibling's (`07` and `07-x`: `07-x/…` sorts before `07/…` as bytes, after it as
    /// components), and across the two rollout directories.
    #[test]
    fn sorted_walk_is_in_path_byte_order() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let home_dir = tmp.path().join("codex");
        let name = |n: u32| {
            format!("rollout-2025-07-01T00-00-00-{n:08x}-0000-7000-8000-000000000000.jsonl")
        };
        let mut n = 0;
        for dir in [
            "sessions/2025/07",
            "sessions/2025/07-x",
            "sessions/2025/07.x",
            "sessions/2025/07/01",
            "sessions/2025/070",
            "sessions/2025-07",
            "archived_sessions",
        ] {
            let dir = home_dir.join(dir);
            std::fs::create_dir_all(&dir).expect("mkdir");
            for _ in 0..3 {
                n += 1;
                std::fs::write(dir.join(name(n)), b"x").expect("write");
            }
        }
        let home = Home::new(&home_dir, &[]);
        let roots = vec![home.real.clone()];
        let listed: Vec<PathBuf> = SortedWalk::new(&home, &roots, &())
            .filter_map(|f| match f {
                Found::Plain(c, _) => Some(c.path),
                _ => None,
            })
            .collect();
        assert_eq!(listed.len(), n as usize);
        let mut sorted = listed.clone();
        sorted.sort_by(|a, b| bytes(a).cmp(bytes(b)));
        assert_eq!(listed, sorted);
    }
}
