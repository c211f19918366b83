//! Applying a batch of changed paths to the index as one write.
//!
//! Changes are handled by state, not by event kind: for each changed path the watcher looks
//! at what is on disk now and writes that; the index decides, inside the transaction, what
//! changed for each thread (a rename into `archived_sessions/` is one `Archived`, a file
//! replaced by another thread's is `Removed` plus `Materialized`) and its publisher
//! announces it.

use std::path::PathBuf;

use rayon::prelude::*;

use crate::crawl;
use crate::identity::{self, Stamp};
use crate::index::{Batch, IndexError, ProblemRow};
use crate::live::Shared;
use crate::rollout::{self, name, ProblemKind};

/// Applies changed paths: `present` ones (files or directories) as they are now, and the
/// rows at or under `gone` ones whose files are still missing.
///
/// Only `gone` paths remove rows: they have waited out the rename grace. A present path
/// that vanished since it was seen is skipped, since its own removal event follows with
/// that grace; removing it now could leave a thread's stale row (the other half of a
/// rename not yet dropped) standing as its file for a moment.
pub fn apply_paths(
    shared: &Shared,
    mut present: Vec<PathBuf>,
    gone: Vec<PathBuf>,
) -> Result<(), IndexError> {
    let homes = shared.homes();
    let roots = crawl::allowed_roots(&homes);
    present.sort();
    present.dedup();
    let mut candidates = Vec::new();
    let mut batch = Batch::default();
    for path in present {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let rollout_named = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(name::looks_like_rollout);
        if meta.is_dir() {
            // A directory that appeared: what it holds, and itself when it carries a
            // rollout name (a directory is never a rollout, and says so in `problems`).
            for home in homes.homes.iter().filter(|h| path.starts_with(&h.real)) {
                let (found, problems) = crawl::discover_under(home, &roots, &path);
                candidates.extend(found);
                batch.problems.extend(problems);
            }
            if let Some(c) = rollout_named
                .then(|| crawl::candidate_for(&homes, &path))
                .flatten()
            {
                batch.problems.push(ProblemRow {
                    path: c.path,
                    home: c.home,
                    kind: ProblemKind::Directory,
                    detail: "is a directory".into(),
                    thread_id: None,
                });
            }
            continue;
        }
        if !rollout_named {
            if path.file_name().is_some_and(|n| n.to_str().is_none()) {
                let canonical = identity::canonicalize(&path).unwrap_or(path);
                batch.problems.extend(
                    crawl::candidate_for(&homes, &canonical)
                        .and_then(|c| crawl::unreadable_name(&c.home, &c.path)),
                );
            }
            continue;
        }
        let canonical = identity::canonicalize(&path).unwrap_or(path);
        candidates.extend(crawl::candidate_for(&homes, &canonical));
    }
    // Heads are read before the writer is taken, so queries keep going meanwhile.
    let outcomes: Vec<_> = candidates
        .par_iter()
        .map(|c| (c.clone(), rollout::inspect(&c.path, &shared.limits)))
        .collect();
    let (files, problems, _vanished) = crawl::split_outcomes(outcomes);
    batch.files = files;
    batch.problems.extend(problems);

    let index = shared.writer();
    // A file that changed again since its head was read is left to the event that change
    // sent: writing the older read now would undo what a query may have written since.
    let (fresh, stale): (Vec<_>, Vec<_>) = std::mem::take(&mut batch.files)
        .into_iter()
        .partition(|f| Stamp::of(&f.path).is_ok_and(|now| now.unchanged(&f.stamp)));
    batch.files = fresh;
    batch
        .problems
        .retain(|p| !(p.kind.is_warning() && stale.iter().any(|f| f.path == p.path)));
    for path in gone {
        let mut under = index.paths_at_or_under(&path)?;
        under.retain(|p| identity::is_gone(p));
        batch.removed.extend(under);
    }
    batch.removed.sort();
    batch.removed.dedup();
    tracing::debug!(files = ?batch.files.iter().map(|f| &f.path).collect::<Vec<_>>(), removed = ?batch.removed, "watcher batch");
    crawl::write_seen(&homes, &index, &shared.limits, "applying changes", batch)?;
    Ok(())
}
