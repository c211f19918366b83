//! What a write changed, decided inside its transaction from the rows before and after.
//!
//! A thread's state is its preferred file (see [`super::prefer`]) or nothing. Comparing that
//! state before and after one transaction gives at most one change per thread, whatever mix
//! of inserts, replacements and removals the transaction made: an archive rename applied as
//! "insert the new path, drop the old" is one `Archived`, a file replaced by another
//! thread's is `Removed` for one and `Materialized` for the other.

use std::path::PathBuf;

use super::{IndexedFile, ProblemRow};

/// How a thread's state changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadChange {
    /// It had no file and now has one.
    Materialized,
    /// Its preferred file changed (appended to, moved within its area, re-read).
    Updated,
    /// Its preferred file moved into `archived_sessions/`.
    Archived,
    /// Its preferred file moved out of `archived_sessions/`.
    Unarchived,
    /// Its preferred file changed representation (`.jsonl` → `.jsonl.zst`, or back).
    Compressed,
    /// It had a file and now has none.
    Removed,
}

/// How a problem row changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemChange {
    /// New at its path, or a different problem than before.
    Added,
    /// Gone from its path.
    Cleared,
}

/// One change a committed write made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Thread {
        kind: ThreadChange,
        /// The preferred file now; for `Removed`, the last file the thread had.
        file: Box<IndexedFile>,
        /// The preferred file's path before, when it was another path.
        previous_path: Option<PathBuf>,
    },
    Problem {
        kind: ProblemChange,
        /// The problem now; for `Cleared`, the problem that went.
        row: ProblemRow,
    },
}

impl Change {
    /// What [`thread_change`] gives for a thread that had no file and now has `file`.
    pub fn materialized(file: IndexedFile) -> Change {
        Change::Thread {
            kind: ThreadChange::Materialized,
            file: Box::new(file),
            previous_path: None,
        }
    }

    /// The thread concerned, if any.
    pub fn thread_id(&self) -> Option<&str> {
        match self {
            Change::Thread { file, .. } => Some(&file.head.thread_id),
            Change::Problem { row, .. } => row.thread_id.as_deref(),
        }
    }
}

/// The change from one thread state to another, if any.
pub fn thread_change(before: Option<&IndexedFile>, after: Option<&IndexedFile>) -> Option<Change> {
    let (kind, file, previous) = match (before, after) {
        (None, None) => return None,
        (None, Some(a)) => (ThreadChange::Materialized, a, None),
        (Some(b), None) => (ThreadChange::Removed, b, None),
        (Some(b), Some(a)) => {
            let kind = if b.archived != a.archived {
                if a.archived {
                    ThreadChange::Archived
                } else {
                    ThreadChange::Unarchived
                }
            } else if b.compression != a.compression {
                ThreadChange::Compressed
            } else if b != a {
                ThreadChange::Updated
            } else {
                return None;
            };
            (kind, a, Some(&b.path).filter(|p| **p != a.path))
        }
    };
    Some(Change::Thread {
        kind,
        file: Box::new(file.clone()),
        previous_path: previous.cloned(),
    })
}

/// The changes from one thread state to another, knowing whether the file it had before is
/// still indexed (`before_kept`).
///
/// One change at most, as [`thread_change`] decides, except where the thread's file went
/// and a *different* file of the thread took its place elsewhere: neither the same file
/// moved (see [`Stamp::same_file`](crate::identity::Stamp::same_file)) nor its compressed
/// or decompressed copy beside it. That is a thread removed and then made again, however
/// late a writer saw the removal (a walk that saw neither), and it is announced so:
/// `Removed`, then `Materialized`. A different file at the *same* path is an update (a
/// rename over it leaves the path empty at no moment); a delete seen on its own is
/// announced on its own, before the file made again.
pub fn thread_changes(
    before: Option<&IndexedFile>,
    after: Option<&IndexedFile>,
    before_kept: bool,
) -> Vec<Change> {
    if let (Some(b), Some(a)) = (before, after) {
        // At the same path a different file of the same thread is an update: a rename over
        // it (a sync tool, an editor, an overlay copy-up) never leaves the path empty, and a
        // delete and rewrite inside one settle window cannot be told from that.
        let replaced = !b.stamp.same_file(&a.stamp)
            && b.path != a.path
            && !before_kept
            && crate::rollout::name::sibling(&b.path).as_ref() != Some(&a.path);
        if replaced {
            return [thread_change(Some(b), None), thread_change(None, Some(a))]
                .into_iter()
                .flatten()
                .collect();
        }
    }
    thread_change(before, after).into_iter().collect()
}

/// The change from one problem row at a path to another, if any.
pub fn problem_change(before: Option<&ProblemRow>, after: Option<&ProblemRow>) -> Option<Change> {
    match (before, after) {
        (_, Some(a)) if before != after => Some(Change::Problem {
            kind: ProblemChange::Added,
            row: a.clone(),
        }),
        (Some(b), None) => Some(Change::Problem {
            kind: ProblemChange::Cleared,
            row: b.clone(),
        }),
        _ => None,
    }
}

/// Receives every committed write's changes, in commit order (the agent's publisher).
pub trait ChangeSink: Send + Sync {
    fn publish(&self, changes: &[Change]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{FileId, FileKind, Stamp};
    use crate::rollout::{Compression, ProblemKind, RolloutHead};

    fn file(path: &str, archived: bool, compression: Compression, size: u64) -> IndexedFile {
        IndexedFile {
            path: PathBuf::from(path),
            home: PathBuf::from("/h"),
            stamp: Stamp {
                id: FileId { dev: 1, ino: 2 },
                kind: FileKind::File,
                size,
                mtime_ns: 0,
                ctime_ns: 0,
                btime_ns: 0,
            },
            archived,
            compression,
            head: RolloutHead {
                thread_id: "t".into(),
                ..RolloutHead::default()
            },
        }
    }

    fn kind(c: Option<Change>) -> Option<(ThreadChange, Option<PathBuf>)> {
        match c? {
            Change::Thread {
                kind,
                previous_path,
                ..
            } => Some((kind, previous_path)),
            Change::Problem { .. } => None,
        }
    }

    #[test]
    fn thread_states() {
        let a = file("/h/sessions/a", false, Compression::None, 1);
        let grown = file("/h/sessions/a", false, Compression::None, 2);
        let archived = file("/h/archived_sessions/a", true, Compression::None, 1);
        let zst = file("/h/sessions/a.zst", false, Compression::Zstd, 1);
        let moved = file("/h/sessions/b", false, Compression::None, 1);
        assert_eq!(kind(thread_change(None, None)), None);
        assert_eq!(
            kind(thread_change(None, Some(&a))),
            Some((ThreadChange::Materialized, None))
        );
        assert_eq!(
            kind(thread_change(Some(&a), None)),
            Some((ThreadChange::Removed, None))
        );
        assert_eq!(kind(thread_change(Some(&a), Some(&a))), None);
        assert_eq!(
            kind(thread_change(Some(&a), Some(&grown))),
            Some((ThreadChange::Updated, None))
        );
        assert_eq!(
            kind(thread_change(Some(&a), Some(&archived))),
            Some((ThreadChange::Archived, Some(a.path.clone())))
        );
        assert_eq!(
            kind(thread_change(Some(&archived), Some(&a))),
            Some((ThreadChange::Unarchived, Some(archived.path.clone())))
        );
        assert_eq!(
            kind(thread_change(Some(&a), Some(&zst))),
            Some((ThreadChange::Compressed, Some(a.path.clone())))
        );
        assert_eq!(
            kind(thread_change(Some(&a), Some(&moved))),
            Some((ThreadChange::Updated, Some(a.path.clone())))
        );
    }

    #[test]
    fn a_different_file_elsewhere_is_the_thread_made_anew() {
        let kinds = |changes: Vec<Change>| -> Vec<ThreadChange> {
            changes
                .into_iter()
                .filter_map(|c| match c {
                    Change::Thread { kind, .. } => Some(kind),
                    Change::Problem { .. } => None,
                })
                .collect()
        };
        let with = |mut f: IndexedFile, ino: u64, btime_ns: i64| {
            f.stamp.id.ino = ino;
            f.stamp.btime_ns = btime_ns;
            f
        };
        let old = with(
            file("/h/sessions/1/a.jsonl", false, Compression::None, 1),
            7,
            100,
        );
        // Moved (same inode, same birth): one change, whatever the writer saw first.
        let moved = with(
            file("/h/archived_sessions/a.jsonl", true, Compression::None, 1),
            7,
            100,
        );
        assert_eq!(
            kinds(thread_changes(Some(&old), Some(&moved), false)),
            [ThreadChange::Archived]
        );
        // Compressed beside it: a new file, but the thread's own copy.
        let zst = with(
            file("/h/sessions/1/a.jsonl.zst", false, Compression::Zstd, 1),
            9,
            300,
        );
        assert_eq!(
            kinds(thread_changes(Some(&old), Some(&zst), false)),
            [ThreadChange::Compressed]
        );
        // Deleted, then a new file elsewhere, even one given the freed inode number again.
        for anew in [
            with(
                file("/h/sessions/2/a.jsonl", false, Compression::None, 1),
                8,
                200,
            ),
            with(
                file("/h/archived_sessions/b.jsonl", true, Compression::None, 1),
                7,
                200,
            ),
        ] {
            assert_eq!(
                kinds(thread_changes(Some(&old), Some(&anew), false)),
                [ThreadChange::Removed, ThreadChange::Materialized]
            );
            // While the old file stays indexed (a duplicate), the preferred one just changed.
            assert_eq!(
                kinds(thread_changes(Some(&old), Some(&anew), true)).len(),
                1
            );
        }
        // Replaced at the same path by another file of the thread (a rename over it, a
        // copy-up): an update.
        let again = with(
            file("/h/sessions/1/a.jsonl", false, Compression::None, 2),
            8,
            200,
        );
        assert_eq!(
            kinds(thread_changes(Some(&old), Some(&again), true)),
            [ThreadChange::Updated]
        );
        // Appended to in place: the same file.
        let grown = with(
            file("/h/sessions/1/a.jsonl", false, Compression::None, 2),
            7,
            100,
        );
        assert_eq!(
            kinds(thread_changes(Some(&old), Some(&grown), true)),
            [ThreadChange::Updated]
        );
        // No birth time on the filesystem: the inode alone decides.
        let unborn = with(
            file("/h/archived_sessions/a.jsonl", true, Compression::None, 1),
            7,
            0,
        );
        assert_eq!(
            kinds(thread_changes(Some(&old), Some(&unborn), false)),
            [ThreadChange::Archived]
        );
    }

    #[test]
    fn problem_states() {
        let row = |detail: &str| ProblemRow {
            path: PathBuf::from("/h/sessions/x"),
            home: PathBuf::from("/h"),
            kind: ProblemKind::Empty,
            detail: detail.into(),
            thread_id: None,
        };
        let is = |c: Option<Change>| match c {
            Some(Change::Problem { kind, .. }) => Some(kind),
            _ => None,
        };
        assert_eq!(is(problem_change(None, None)), None);
        assert_eq!(
            is(problem_change(None, Some(&row("a")))),
            Some(ProblemChange::Added)
        );
        assert_eq!(is(problem_change(Some(&row("a")), Some(&row("a")))), None);
        assert_eq!(
            is(problem_change(Some(&row("a")), Some(&row("b")))),
            Some(ProblemChange::Added)
        );
        assert_eq!(
            is(problem_change(Some(&row("a")), None)),
            Some(ProblemChange::Cleared)
        );
    }

    #[test]
    fn a_materialized_change_is_what_thread_change_gives() {
        let f = file("/h/sessions/a", false, Compression::None, 7);
        assert_eq!(
            Some(Change::materialized(f.clone())),
            thread_change(None, Some(&f))
        );
    }
}
