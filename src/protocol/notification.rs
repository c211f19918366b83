//! Notifications pushed to subscribers.

use std::path::PathBuf;

use serde::{Serialize, Serializer};

use crate::crawl::ReconcileSummary;
use crate::query::ThreadRecord;
use crate::rollout::ProblemKind;

/// A change pushed to subscribers; `params` on the wire is the inner struct.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Notification {
    Materialized(ThreadChanged),
    Updated(ThreadChanged),
    Archived(ThreadChanged),
    Unarchived(ThreadChanged),
    Compressed(ThreadChanged),
    Removed(ThreadRemoved),
    ProblemAdded(ProblemNotice),
    ProblemCleared(ProblemNotice),
    Rescanned(Rescanned),
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadChanged {
    pub thread_id: String,
    pub record: ThreadRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadRemoved {
    pub thread_id: String,
    /// The last file, in the home's configured spelling.
    pub path: PathBuf,
    pub canonical_path: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProblemNotice {
    pub path: PathBuf,
    #[serde(serialize_with = "kind_str")]
    pub reason: ProblemKind,
    pub detail: String,
    pub thread_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rescanned {
    pub summary: ReconcileSummary,
}

fn kind_str<S: Serializer>(k: &ProblemKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.as_str())
}

impl Notification {
    pub fn method(&self) -> &'static str {
        match self {
            Notification::Materialized(_) => "thread/materialized",
            Notification::Updated(_) => "thread/updated",
            Notification::Archived(_) => "thread/archived",
            Notification::Unarchived(_) => "thread/unarchived",
            Notification::Compressed(_) => "thread/compressed",
            Notification::Removed(_) => "thread/removed",
            Notification::ProblemAdded(_) => "problem/added",
            Notification::ProblemCleared(_) => "problem/cleared",
            Notification::Rescanned(_) => "index/rescanned",
        }
    }

    /// The thread concerned, for subscription filters; `None` for index-wide notices.
    pub fn thread_id(&self) -> Option<&str> {
        match self {
            Notification::Materialized(t)
            | Notification::Updated(t)
            | Notification::Archived(t)
            | Notification::Unarchived(t)
            | Notification::Compressed(t) => Some(&t.thread_id),
            Notification::Removed(r) => Some(&r.thread_id),
            Notification::ProblemAdded(p) | Notification::ProblemCleared(p) => {
                p.thread_id.as_deref()
            }
            Notification::Rescanned(_) => None,
        }
    }
}
