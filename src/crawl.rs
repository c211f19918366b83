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

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use walkdir::WalkDir;

use crate::identity::{canonicalize, Area, Home, Homes, Stamp};
use crate::index::{Batch, Change, Index, IndexAccess, IndexError, IndexedFile, ProblemRow};
use crate::rollout::{self, name, BadFile, HeadLimits, Inspected, ProblemKind};

/// How many heads are read between two index transactions.
const BATCH: usize = 1024;

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

/// Brings the index in line with every configured home.
pub fn reconcile<A: IndexAccess>(
    homes: &Homes,
    index: &A,
    limits: &HeadLimits,
    progress: &dyn Progress,
) -> Result<ReconcileSummary, IndexError> {
    index.with(|i| i.require_writer("reconciling"))?;
    let started = Instant::now();
    let mut summary = ReconcileSummary::default();
    let roots = allowed_roots(homes);
    for home in &homes.homes {
        reconcile_home(homes, home, &roots, index, limits, progress, &mut summary)?;
    }
    // Rows of homes no longer configured (or no longer where the home's symlink points).
    let reals: Vec<PathBuf> = homes.homes.iter().map(|h| h.real.clone()).collect();
    let orphans = index.with(|i| i.paths_outside_homes(&reals))?;
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

fn reconcile_home<A: IndexAccess>(
    homes: &Homes,
    home: &Home,
    roots: &[PathBuf],
    index: &A,
    limits: &HeadLimits,
    progress: &dyn Progress,
    summary: &mut ReconcileSummary,
) -> Result<(), IndexError> {
    // Rows are taken out of `known` as their paths are seen, so what is left at the end is
    // gone, without a second set of every path seen.
    let mut known: HashMap<PathBuf, Stamp> = index
        .with(|i| i.stamps_under(&home.real))?
        .into_iter()
        .collect();
    let mut old_problems = index.with(|i| i.problem_paths_under(&home.real))?;
    let (mut candidates, walk_problems) = discover(home, roots, &|_| true);
    summary.seen += (candidates.len() + walk_problems.len()) as u64;
    progress.found(candidates.len() as u64);

    // A symlink and its target inside the home are one file: the first found stands (the
    // sort is stable). A path recorded as a problem by the walk is not read.
    let problem_paths: HashSet<&Path> = walk_problems.iter().map(|p| p.path.as_path()).collect();
    candidates.sort_by(|a, b| a.path.cmp(&b.path));
    candidates.dedup_by(|later, first| later.path == first.path);
    candidates.retain(|c| !problem_paths.contains(c.path.as_path()));
    for p in &problem_paths {
        known.remove(*p);
    }
    old_problems.retain(|p| {
        !problem_paths.contains(p.as_path())
            && candidates.binary_search_by(|c| c.path.cmp(p)).is_err()
    });
    let mut to_read = Vec::new();
    for c in candidates {
        match (Stamp::of(&c.path), known.remove(&c.path)) {
            (Ok(now), Some(before)) if now.unchanged(&before) => summary.unchanged += 1,
            _ => to_read.push(c),
        }
    }
    // `to_read` is in path order, so each batch goes into the path-keyed table in key order.
    progress.advanced(summary.unchanged);
    // Before the head reads, an empty write would succeed even on a full disk and clear the
    // degraded state for a moment, letting a listing through as if the index were complete
    // (the last write of the pass, after them, still clears it once writes succeed).
    if !walk_problems.is_empty() {
        index.with(|i| i.record_problems(&walk_problems))?;
    }
    summary.problems += walk_problems.len() as u64;

    // Heads are read on all cores while the previous batch is written: a reader thread
    // hands batches to this one through a small queue, so SQLite's single writer and the
    // head reads overlap.
    let mut vanished = Vec::new();
    let mut bad: Vec<&Candidate> = Vec::new();
    std::thread::scope(|scope| -> Result<(), IndexError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, Outcomes<'_>)>(2);
        let to_read = &to_read;
        scope.spawn(move || {
            for chunk in to_read.chunks(BATCH) {
                let outcomes: Vec<_> = chunk
                    .par_iter()
                    .map(|c| (c, rollout::inspect(&c.path, limits)))
                    .collect();
                if tx.send((chunk.len(), outcomes)).is_err() {
                    return; // the writer failed and stopped listening
                }
            }
        });
        for (n, outcomes) in rx {
            bad.extend(
                outcomes
                    .iter()
                    .filter(|(_, o)| o.as_ref().is_err_and(|b| b.kind != ProblemKind::Vanished))
                    .map(|(c, _)| *c),
            );
            let (files, problems, gone) = split_outcomes(outcomes);
            summary.read += files.len() as u64;
            summary.problems += problems.iter().filter(|p| !p.kind.is_warning()).count() as u64;
            let batch = Batch {
                files,
                problems,
                removed: Vec::new(),
            };
            index.with(|i| write_seen(homes, i, limits, "reconciling", batch))?;
            vanished.extend(gone);
            progress.advanced(n as u64);
        }
        Ok(())
    })?;

    let mut gone: Vec<PathBuf> = known.into_keys().collect();
    summary.removed += gone.len() as u64;
    gone.extend(old_problems);
    gone.extend(vanished);
    // Files that were bad when read may have been half-written then (a `.zst` being made
    // while its `.jsonl` still stood): read them again and write them with the removals, so
    // a thread whose old file went is never left without the new one it had by then.
    let again: Vec<_> = bad
        .into_iter()
        .map(|c| (c, rollout::inspect(&c.path, limits)))
        .collect();
    let (files, problems, vanished) = split_outcomes(again);
    gone.extend(vanished);
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
    mut batch: Batch,
) -> Result<Vec<Change>, IndexError> {
    index.require_writer(action)?;
    if index.is_guest() {
        return Ok(Vec::new());
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
        return Ok(Vec::new());
    }
    index.apply(action, &batch)
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
    let roots = allowed_roots(homes);
    let written: HashSet<&Path> = batch.files.iter().map(|f| f.path.as_path()).collect();
    let mut candidates = Vec::new();
    for home in &homes.homes {
        candidates.extend(discover(home, &roots, &|_| true).0);
    }
    let outcomes: Vec<_> = candidates
        .iter()
        .filter(|c| !removed.contains(c.path.as_path()) && !written.contains(c.path.as_path()))
        .filter(|c| {
            siblings.contains(&c.path)
                || Stamp::of(&c.path).is_ok_and(|now| stamps.iter().any(|s| s.same_file(&now)))
        })
        .map(|c| (c, rollout::inspect(&c.path, limits)))
        .collect();
    let (files, problems, _) = split_outcomes(outcomes);
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

pub(crate) type Outcomes<'a> = Vec<(&'a Candidate, Result<Inspected, BadFile>)>;

/// Splits head reads into rows to write, problems to record, and paths that vanished.
pub(crate) fn split_outcomes(
    outcomes: Outcomes<'_>,
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
                files.push(indexed(c, inspected));
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
    let mut roots = Vec::new();
    for h in &homes.homes {
        roots.push(h.real.clone());
        for dir in [h.sessions_dir(), h.archived_dir()] {
            if let Ok(real) = canonicalize(&dir) {
                roots.push(real);
            }
        }
    }
    roots
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
    for (area, dir) in [
        (Area::Sessions, home.sessions_dir()),
        (Area::Archived, home.archived_dir()),
    ] {
        // A missing directory is normal: Codex makes these on first use.
        if let Ok(root) = canonicalize(&dir) {
            walk(home, roots, area, &root, wanted, &mut found);
        }
    }
    found
}

/// As [`discover`], for one directory inside a home (a directory that just appeared).
pub fn discover_under(
    home: &Home,
    roots: &[PathBuf],
    dir: &Path,
) -> (Vec<Candidate>, Vec<ProblemRow>) {
    let mut found = (Vec::new(), Vec::new());
    for (area, area_dir) in [
        (Area::Sessions, home.sessions_dir()),
        (Area::Archived, home.archived_dir()),
    ] {
        let Ok(root) = canonicalize(&area_dir) else {
            continue;
        };
        if root.starts_with(dir) {
            walk(home, roots, area, &root, &|_| true, &mut found);
        } else if dir.starts_with(&root) {
            walk(home, roots, area, dir, &|_| true, &mut found);
        }
    }
    found
}

fn walk(
    home: &Home,
    roots: &[PathBuf],
    area: Area,
    dir: &Path,
    wanted: &dyn Fn(&str) -> bool,
    (candidates, problems): &mut (Vec<Candidate>, Vec<ProblemRow>),
) {
    let archived = area == Area::Archived;
    let mut entries = WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .into_iter();
    while let Some(entry) = entries.next() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                if let Some(path) = e.path() {
                    let io = e.io_error().map(|io| BadFile::from_io(path, io));
                    let bad = io.unwrap_or_else(|| {
                        BadFile::new(path, ProblemKind::Unreadable, e.to_string())
                    });
                    problems.push(problem_row(&home.real, bad));
                }
                continue;
            }
        };
        let Some(file_name) = entry.file_name().to_str() else {
            problems.extend(unreadable_name(&home.real, entry.path()));
            continue;
        };
        let named = name::looks_like_rollout(file_name) && wanted(file_name);
        let ft = entry.file_type();
        if ft.is_dir() {
            if named {
                problems.push(problem_row(
                    &home.real,
                    BadFile::new(entry.path(), ProblemKind::Directory, "is a directory"),
                ));
                entries.skip_current_dir();
            }
            continue;
        }
        if !named {
            continue;
        }
        let path = if ft.is_symlink() {
            match follow_file_symlink(entry.path(), roots) {
                Ok(target) => target,
                Err(bad) => {
                    problems.push(problem_row(&home.real, bad));
                    continue;
                }
            }
        } else {
            entry.into_path()
        };
        candidates.push(Candidate {
            path,
            home: home.real.clone(),
            archived,
        });
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
