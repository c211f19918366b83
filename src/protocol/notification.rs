//! What the agent pushes to subscribers. The change feed publishes [`Notification`]s on a
//! broadcast channel; the server serializes each one once per subscriber that wants it.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crawl::ReconcileSummary;
use crate::query::ThreadRecord;
use crate::rollout::ProblemKind;

/// A change to the index, as subscribers receive it (`method` + `params` on the wire).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "method", content = "params")]
pub enum Notification {
    /// A thread's first rollout appeared.
    #[serde(rename = "thread/materialized")]
    Materialized(ThreadChanged),
    /// Its file grew or changed (or moved without changing area).
    #[serde(rename = "thread/updated")]
    Updated(ThreadChanged),
    /// The file moved into `archived_sessions/`.
    #[serde(rename = "thread/archived")]
    Archived(ThreadChanged),
    /// The file moved back into `sessions/`.
    #[serde(rename = "thread/unarchived")]
    Unarchived(ThreadChanged),
    /// The rollout is now `.jsonl.zst` (or back to `.jsonl`).
    #[serde(rename = "thread/compressed")]
    Compressed(ThreadChanged),
    /// The thread has no file left.
    #[serde(rename = "thread/removed")]
    Removed(ThreadRemoved),
    /// A file named like a rollout cannot be used (or is suspect).
    #[serde(rename = "problem/added")]
    ProblemAdded(ProblemNotice),
    /// A problem recorded earlier is gone (the file was fixed or removed).
    #[serde(rename = "problem/cleared")]
    ProblemCleared(ProblemNotice),
    /// A full reconcile ran.
    #[serde(rename = "index/rescanned")]
    Rescanned(Rescanned),
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThreadChanged {
    pub thread_id: String,
    pub record: ThreadRecord,
    /// Where the file was before, when it moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_path: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThreadRemoved {
    pub thread_id: String,
    pub path: PathBuf,
    pub canonical_path: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProblemNotice {
    pub path: PathBuf,
    pub reason: ProblemKind,
    pub detail: String,
    pub thread_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Rescanned {
    pub summary: ReconcileSummary,
}

impl Notification {
    /// The JSON-RPC method it is sent as.
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
            Notification::Materialized(c)
            | Notification::Updated(c)
            | Notification::Archived(c)
            | Notification::Unarchived(c)
            | Notification::Compressed(c) => Some(&c.thread_id),
            Notification::Removed(r) => Some(&r.thread_id),
            Notification::ProblemAdded(p) | Notification::ProblemCleared(p) => {
                p.thread_id.as_deref()
            }
            Notification::Rescanned(_) => None,
        }
    }
}

/// Sent to one subscriber that fell more than the queue behind: some notifications were
/// dropped, so it should re-read what it needs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Lagged {
    pub missed: u64,
}

impl Lagged {
    pub const METHOD: &'static str = "index/lagged";
}

/// Every notification a subscriber can receive: the change feed's, and `index/lagged`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ServerNotification {
    Change(Box<Notification>),
    Lagged(LaggedMessage),
}

/// `index/lagged` with its method tag, as it appears on the wire.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "method", content = "params")]
pub enum LaggedMessage {
    #[serde(rename = "index/lagged")]
    Lagged(Lagged),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_matches_the_serde_tag() {
        let n = Notification::Rescanned(Rescanned {
            summary: ReconcileSummary::default(),
        });
        let v = serde_json::to_value(&n).unwrap();
        assert_eq!(v["method"], n.method());
        assert!(v["params"]["summary"].is_object());
        let lag = serde_json::to_value(LaggedMessage::Lagged(Lagged { missed: 3 })).unwrap();
        assert_eq!(lag["method"], Lagged::METHOD);
    }
}
