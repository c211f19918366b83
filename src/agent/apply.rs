//! Applying filesystem changes to the index, and the notifications they produce.
//!
//! Changes are handled by state, not by event kind: for each changed path the agent looks at
//! what is on disk now and at what the index holds. A file that reappears elsewhere with the
//! same `FileId` was moved (archive / unarchive), a thread whose remaining file changed
//! representation was compressed, and a thread with no file left was removed.

use std::path::{Path, PathBuf};

use super::state::{Notification, Shared};
use crate::crawl::{self, Candidate};
use crate::identity::{self, Homes, Stamp};
use crate::index::{Index, IndexError, IndexedFile};
use crate::protocol::{Rescanned, ThreadChanged, ThreadRemoved};
use crate::query::ThreadRecord;
use crate::rollout::name;

/// Applies a batch of changed paths; present paths first, so that the destination of a
/// rename is known before its source is seen to be gone.
pub fn apply_paths(shared: &Shared, paths: Vec<PathBuf>) -> Result<(), IndexError> {
    let homes = shared.homes();
    let roots = crawl::allowed_roots(&homes);
    let mut paths = paths;
    paths.sort();
    paths.dedup();
    let (present, gone): (Vec<PathBuf>, Vec<PathBuf>) = paths
        .into_iter()
        .partition(|p| std::fs::symlink_metadata(p).is_ok());
    // The lock is taken per file, so queries interleave with a large batch (a directory of
    // thousands of files appearing at once), and each notice goes out as soon as its file
    // is indexed.
    let index = || {
        shared
            .index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let mut notes = Vec::new();
    let mut moved = Vec::new();
    let mut publish = |notes: &mut Vec<Notification>| {
        moved.extend(moves(notes));
        for n in notes.drain(..) {
            shared.notify(n);
        }
    };
    for path in present {
        let meta = std::fs::symlink_metadata(&path);
        if meta.as_ref().is_ok_and(|m| m.is_dir()) {
            for home in &homes.homes {
                if path.starts_with(&home.real) {
                    let (candidates, problems) = crawl::discover_under(home, &roots, &path);
                    index().record_problems(&problems)?;
                    for c in candidates {
                        apply_file(&index(), &homes, &c, &mut notes)?;
                        publish(&mut notes);
                    }
                }
            }
            continue;
        }
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name::looks_like_rollout(file_name) {
            continue;
        }
        let canonical = identity::canonicalize(&path).unwrap_or(path.clone());
        if let Some(c) = crawl::candidate_for(&homes, &canonical) {
            apply_file(&index(), &homes, &c, &mut notes)?;
            publish(&mut notes);
        }
    }
    for path in gone {
        let index = index();
        for row in index.files_at_or_under(&path)? {
            if !row.path.exists() {
                apply_gone(&index, &homes, row, &mut notes)?;
            }
        }
        // A problem recorded for a path that is gone goes with it (a file read while still
        // empty, then deleted or moved before it was read again).
        let stale: Vec<PathBuf> = index
            .problem_paths_at_or_under(&path)?
            .into_iter()
            .filter(|p| std::fs::symlink_metadata(p).is_err())
            .collect();
        if !stale.is_empty() {
            index.remove_paths(&stale)?;
        }
        drop(index);
        publish(&mut notes);
    }
    if !moved.is_empty()
        && shared
            .codex_auto_repair
            .load(std::sync::atomic::Ordering::Relaxed)
    {
        crate::codex_state::follow::follow_in_background((*homes).clone(), moved);
    }
    Ok(())
}

/// Most threads a rescan announces one by one; past this, `index/rescanned` alone tells
/// subscribers to re-read.
const MAX_ANNOUNCED: usize = 1000;

/// A full reconcile of `homes`. As a rescan (`announce`), it is counted, each thread it
/// finds for the first time gets `thread/materialized` (a subscriber waiting for one must
/// not miss it because events were lost), and subscribers get `index/rescanned`.
pub fn reconcile(
    shared: &Shared,
    homes: &Homes,
    announce: bool,
) -> Result<crate::crawl::ReconcileSummary, IndexError> {
    let known = if announce {
        known_threads(shared)
    } else {
        None
    };
    let summary = crawl::reconcile(homes, &shared.index, &shared.limits, &())?;
    if announce {
        if let Some(known) = known {
            announce_new_threads(shared, homes, &known);
        }
        shared
            .rescans
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        shared.notify(Notification::Rescanned(Rescanned {
            summary: summary.clone(),
        }));
    }
    Ok(summary)
}

/// The thread ids indexed now, before a rescan; `None` when the index cannot say.
fn known_threads(shared: &Shared) -> Option<std::collections::HashSet<String>> {
    let index = shared
        .index
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    index.thread_ids().ok()
}

/// After a rescan: `thread/materialized` for each thread that was not in `known`.
fn announce_new_threads(shared: &Shared, homes: &Homes, known: &std::collections::HashSet<String>) {
    let notes: Vec<Notification> = {
        let index = shared
            .index
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Ok(now) = index.thread_ids() else {
            return;
        };
        let new: Vec<&String> = now.iter().filter(|t| !known.contains(*t)).collect();
        if new.len() > MAX_ANNOUNCED {
            return;
        }
        new.into_iter()
            .filter_map(|t| index.files_for_thread(t).ok()?.into_iter().next())
            .map(|file| record_note(Notification::Materialized, &file, homes, None))
            .collect()
    };
    for n in notes {
        shared.notify(n);
    }
}

/// The archive / unarchive moves among `notes`, for `codex_state.auto_repair`.
fn moves(notes: &[Notification]) -> Vec<crate::codex_state::Move> {
    notes
        .iter()
        .filter_map(|n| {
            let (c, archived) = match n {
                Notification::Archived(c) => (c, true),
                Notification::Unarchived(c) => (c, false),
                _ => return None,
            };
            Some(crate::codex_state::Move {
                thread_id: c.thread_id.clone(),
                from: c.previous_path.clone()?,
                to: c.record.canonical_path.clone(),
                archived,
            })
        })
        .collect()
}

fn apply_file(
    index: &Index,
    homes: &Homes,
    c: &Candidate,
    notes: &mut Vec<Notification>,
) -> Result<(), IndexError> {
    let before = index.file_at(&c.path)?;
    let Ok(stamp) = Stamp::of(&c.path) else {
        // Gone since the batch was sorted: its removal event follows, and is applied after
        // the grace that lets a rename's destination be seen first.
        return Ok(());
    };
    if before.as_ref().is_some_and(|b| b.stamp.unchanged(&stamp)) {
        return Ok(());
    }
    let same_id: Vec<IndexedFile> = index
        .files_with_id(stamp.id)?
        .into_iter()
        .filter(|f| f.path != c.path)
        .collect();
    let file = match crawl::refresh(index, c, &crate::rollout::HeadLimits::default())? {
        Ok(file) => file,
        Err(_) => {
            // It was a good rollout and no longer is (truncated, replaced): the thread lost it.
            if let Some(row) = before {
                notes.push(after_loss(index, homes, &row)?);
            }
            return Ok(());
        }
    };
    let thread = file.head.thread_id.clone();
    let moved_from = same_id
        .into_iter()
        .find(|f| f.head.thread_id == thread && !f.path.exists());
    if let Some(old) = moved_from {
        index.remove_paths(std::slice::from_ref(&old.path))?;
        let method = match (old.archived, file.archived) {
            (false, true) => Notification::Archived,
            (true, false) => Notification::Unarchived,
            _ => Notification::Updated,
        };
        notes.push(record_note(method, &file, homes, Some(&old.path)));
        return Ok(());
    }
    if before.is_some() {
        notes.push(record_note(Notification::Updated, &file, homes, None));
        return Ok(());
    }
    // Rows whose file just went count too: their loss is handled later in this batch.
    let others: Vec<IndexedFile> = index
        .files_for_thread(&thread)?
        .into_iter()
        .filter(|f| f.path != file.path)
        .collect();
    if others.is_empty() {
        notes.push(record_note(Notification::Materialized, &file, homes, None));
    } else if others.iter().all(|o| o.compression == file.compression) {
        notes.push(record_note(Notification::Updated, &file, homes, None));
    }
    // A second copy in another representation is a compression in flight: the notice
    // comes when the old copy goes.
    Ok(())
}

fn apply_gone(
    index: &Index,
    homes: &Homes,
    row: IndexedFile,
    notes: &mut Vec<Notification>,
) -> Result<(), IndexError> {
    index.remove_paths(std::slice::from_ref(&row.path))?;
    notes.push(after_loss(index, homes, &row)?);
    Ok(())
}

/// The notice for a thread that lost the file `row`: removed, compressed, or updated.
fn after_loss(index: &Index, homes: &Homes, row: &IndexedFile) -> Result<Notification, IndexError> {
    let remaining: Vec<IndexedFile> = index
        .files_for_thread(&row.head.thread_id)?
        .into_iter()
        .filter(|f| f.path.exists())
        .collect();
    Ok(match remaining.first() {
        None => Notification::Removed(ThreadRemoved {
            thread_id: row.head.thread_id.clone(),
            path: display_path(homes, row),
            canonical_path: row.path.clone(),
        }),
        Some(next) if next.compression != row.compression => {
            record_note(Notification::Compressed, next, homes, Some(&row.path))
        }
        Some(next) => record_note(Notification::Updated, next, homes, Some(&row.path)),
    })
}

fn display_path(homes: &Homes, row: &IndexedFile) -> PathBuf {
    homes
        .homes
        .iter()
        .find(|h| h.real == row.home)
        .map(|h| h.display_spelling(&row.path))
        .unwrap_or_else(|| row.path.clone())
}

fn record_note(
    kind: fn(ThreadChanged) -> Notification,
    file: &IndexedFile,
    homes: &Homes,
    previous: Option<&Path>,
) -> Notification {
    let record = ThreadRecord::new(file, homes);
    kind(ThreadChanged {
        thread_id: record.thread_id.clone(),
        record,
        previous_path: previous.map(Path::to_owned),
    })
}
