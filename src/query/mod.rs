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

use serde::Serialize;

use crate::identity::Homes;
use crate::index::{Index, IndexError};
use crate::rollout::HeadLimits;

pub use check_resume::CheckResume;
pub use list::{ListPage, ListParams};
pub use problems::{DuplicateEntry, ProblemEntry, ProblemsReport};
pub use record::ThreadRecord;
pub use same::{PathIdentity, SameAnswer};

/// The query context: the homes, the index connection, and the head bounds.
pub struct Queries<'a> {
    pub homes: &'a Homes,
    pub index: &'a Index,
    pub limits: HeadLimits,
}

/// Why a path is not the rollout a caller hoped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PathReason {
    Directory,
    NotRegularFile,
    Missing,
    NotRollout,
    OtherThread,
    /// A rollout path of a thread that never had a file yet (Codex writes lazily).
    NotMaterialized,
    OutsideHome,
    PermissionDenied,
}

impl PathReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PathReason::Directory => "directory",
            PathReason::NotRegularFile => "notRegularFile",
            PathReason::Missing => "missing",
            PathReason::NotRollout => "notRollout",
            PathReason::OtherThread => "otherThread",
            PathReason::NotMaterialized => "notMaterialized",
            PathReason::OutsideHome => "outsideHome",
            PathReason::PermissionDenied => "permissionDenied",
        }
    }
}

/// A query failure. Each variant names what was asked and why it has no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no rollout found for thread {thread_id}")]
    NotFound { thread_id: String },
    #[error("id prefix {prefix} matches {} threads: {}", matches.len(), matches.join(", "))]
    Ambiguous {
        prefix: String,
        matches: Vec<String>,
    },
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
    #[error(transparent)]
    Index(#[from] IndexError),
}

impl QueryError {
    /// The machine-readable reason (`notFound`, `ambiguous`, `directory`, …).
    pub fn reason(&self) -> &'static str {
        match self {
            QueryError::NotFound { .. } => "notFound",
            QueryError::Ambiguous { .. } => "ambiguous",
            QueryError::BadId { .. } => "badId",
            QueryError::Path { reason, .. } => reason.as_str(),
            QueryError::Index(_) => "indexError",
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
