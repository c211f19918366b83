//! Verified answers over the index: every answer is checked against the file before it is
//! given, and a stale or missing row is repaired from the filesystem (read-repair).
//!
//! The CLI calls these directly; the agent's socket methods call the same functions, so the
//! answers are the same either way. One file per query group.

mod check_resume;
mod list;
mod problems;
mod record;
mod resolve;
mod same;

use std::path::PathBuf;

use crate::identity::Homes;
use crate::index::{Index, IndexError};
use crate::rollout::HeadLimits;

pub use check_resume::CheckResume;
pub use list::{ListPage, ListParams};
pub use problems::{DuplicateEntry, ProblemEntry, ProblemsReport};
pub use record::ThreadRecord;
pub use same::{PathIdentity, SameAnswer};

/// Ids listed in an ambiguous-prefix error (the count says how many match in all).
pub const AMBIGUOUS_SHOWN: usize = 20;

/// When Codex writes a thread's rollout: seen with Codex 0.169, the file appears when the
/// first turn starts, well before that turn completes. One sentence for every message.
pub const MATERIALIZES_WHEN: &str =
    "Codex writes a thread's rollout when its first turn starts (turn/start), before the turn completes";

/// Refuses a request path that is empty, relative or carries a NUL byte: the agent must not
/// resolve a caller's relative path against its own working directory.
pub fn check_request_path(path: &std::path::Path) -> Result<(), QueryError> {
    let bytes = path.as_os_str().as_encoded_bytes();
    let why = if bytes.is_empty() {
        "it is empty"
    } else if bytes.contains(&0) {
        "it contains a NUL byte"
    } else if !path.is_absolute() {
        "it is relative; paths in requests must be absolute (make it absolute against the \
         caller's working directory)"
    } else {
        return Ok(());
    };
    Err(QueryError::BadPath {
        path: path.to_owned(),
        why,
    })
}

/// The one order of a thread's files, preferred first, used for every answer and listing
/// and by the index when it decides what changed: active before archived (Codex looks in
/// `sessions/` before `archived_sessions/`), plain before `.zst` (Codex opens the plain name
/// first), then by canonical path in byte order, so equal candidates always give the same
/// answer.
pub use crate::index::prefer as preference;

/// The query context: the homes, the index connection, the head bounds, and where a walk of
/// the homes may run.
pub struct Queries<'a> {
    pub homes: &'a Homes,
    pub index: &'a Index,
    pub limits: HeadLimits,
    pub walks: Walks<'a>,
}

impl<'a> Queries<'a> {
    /// A context that walks the homes where it runs (the writer, the CLI).
    pub fn new(homes: &'a Homes, index: &'a Index, limits: HeadLimits) -> Self {
        Queries {
            homes,
            index,
            limits,
            walks: Walks::Here,
        }
    }
}

/// Whether a query may walk the homes for a thread the index does not know. A walk lists
/// every day directory (tens of milliseconds at 50,000 threads), so it must not run where
/// other requests wait behind it: on the runtime's threads, or holding the writer the
/// watcher needs.
#[derive(Clone, Copy)]
pub enum Walks<'a> {
    /// Walks, and indexes what it finds.
    Here,
    /// Not here (a reader on the runtime's threads): refused as a write is, and noted in the
    /// cell, so the caller runs the query again where it may walk.
    Elsewhere(&'a std::cell::Cell<bool>),
    /// Walks, its finds kept in `Walked` for a later run of the same query: a reader that
    /// finds nothing answers without the writer; one that finds files hands the query to
    /// the writer, which indexes them without walking again.
    Sharing(&'a Walked),
}

/// What the walks of one query found, by what they looked for.
#[derive(Default)]
pub struct Walked(std::cell::RefCell<Vec<(String, Vec<crate::crawl::Candidate>)>>);

impl Walked {
    fn get_or(
        &self,
        needle: &str,
        walk: impl FnOnce() -> Vec<crate::crawl::Candidate>,
    ) -> Vec<crate::crawl::Candidate> {
        if let Some((_, found)) = self.0.borrow().iter().find(|(n, _)| n == needle) {
            return found.clone();
        }
        let found = walk();
        self.0.borrow_mut().push((needle.to_owned(), found.clone()));
        found
    }
}

pub use crate::protocol::reason::{ErrorReason, PathReason};

/// A query failure. Each variant names what was asked and why it has no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no rollout found for thread {thread_id}")]
    NotFound { thread_id: String },
    #[error("id prefix {prefix} matches {count} threads: {}{}", matches.join(", "), if *count > matches.len() { format!(" (the first {} shown)", matches.len()) } else { String::new() })]
    Ambiguous {
        prefix: String,
        /// The first [`AMBIGUOUS_SHOWN`] matching ids, in order.
        matches: Vec<String>,
        /// How many threads match (all of them, not only those shown).
        count: usize,
    },
    /// A `path` in a request that cannot name a file: empty, relative, or with a NUL byte.
    /// Never resolved against the agent's working directory.
    #[error("{path:?} is not a usable path: {why}")]
    BadPath { path: PathBuf, why: &'static str },
    /// A parameter outside what the method accepts.
    #[error("{0}")]
    BadParams(String),
    /// The index cannot be written (disk full, I/O error), so it may lack threads: an answer
    /// that needs the whole index (a listing) is refused rather than given incomplete.
    #[error("the index is degraded ({why}): it may lack threads, so a listing would be incomplete; resolving one thread by id or path still works")]
    Degraded { why: String },
    #[error("{given:?} is not a thread id: {why}")]
    BadId { given: String, why: &'static str },
    #[error("{}: {}{}", path.display(), detail, would_be.as_ref().map(|p| format!("; would be {}", p.display())).unwrap_or_default())]
    Path {
        path: PathBuf,
        reason: PathReason,
        detail: String,
        /// For a missing path: the spelling or location where the file would be.
        would_be: Option<PathBuf>,
    },
    /// The file's filesystem fails for another reason than absence (a FUSE mount whose
    /// daemon died, a lost network mount): its row is kept until it can be read.
    #[error("{}: its filesystem cannot be read ({error}); the thread stays indexed until it can", path.display())]
    Unavailable { path: PathBuf, error: String },
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl QueryError {
    /// The machine-readable reason (`notFound`, `ambiguous`, `directory`, …).
    pub fn reason(&self) -> ErrorReason {
        match self {
            QueryError::NotFound { .. } => ErrorReason::NotFound,
            QueryError::Ambiguous { .. } => ErrorReason::Ambiguous,
            QueryError::BadId { .. } => ErrorReason::BadId,
            QueryError::BadPath { .. } => ErrorReason::BadPath,
            QueryError::BadParams(_) => ErrorReason::BadParams,
            QueryError::Degraded { .. } => ErrorReason::Degraded,
            QueryError::Unavailable { .. } => ErrorReason::FilesystemUnresponsive,
            QueryError::Path { reason, .. } => (*reason).into(),
            QueryError::Index(_) => ErrorReason::IndexError,
        }
    }

    /// True for "the answer is no" (exit 1) as opposed to "could not answer" (exit 2).
    pub fn is_negative_answer(&self) -> bool {
        matches!(self, QueryError::NotFound { .. } | QueryError::Path { .. })
    }

    fn path(path: impl Into<PathBuf>, reason: PathReason, detail: impl Into<String>) -> Self {
        QueryError::Path {
            path: path.into(),
            reason,
            detail: detail.into(),
            would_be: None,
        }
    }
}
