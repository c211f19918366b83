//! Results that belong to the protocol itself (the rest are the query layer's types).

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crawl::ReconcileSummary;
use crate::index::Counts;

/// `subscribe` / `unsubscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Subscribed {
    pub subscribed: bool,
}

/// `index/rescan`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Rescan {
    pub summary: ReconcileSummary,
}

/// `index/status`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    /// The first crawl finished.
    pub ready: bool,
    /// The index cannot take writes; answers come from verified file reads.
    pub degraded: bool,
    pub degraded_reason: Option<String>,
    pub counts: IndexCounts,
    pub watcher: WatcherStatus,
    /// Full reconciles after the first.
    pub rescans: u64,
    /// Requests served.
    pub requests: u64,
    /// From the last change seen to it being indexed.
    pub lag_ms: u64,
    pub uptime_secs: u64,
    /// The homes as configured.
    pub homes: Vec<PathBuf>,
    pub index: PathBuf,
    pub version: String,
    pub pid: u32,
}

/// Row counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IndexCounts {
    pub files: u64,
    pub threads: u64,
    pub archived: u64,
    pub problems: u64,
}

impl From<Counts> for IndexCounts {
    fn from(c: Counts) -> Self {
        IndexCounts {
            files: c.files,
            threads: c.threads,
            archived: c.archived,
            problems: c.problems,
        }
    }
}

impl From<IndexCounts> for Counts {
    fn from(c: IndexCounts) -> Self {
        Counts {
            files: c.files,
            threads: c.threads,
            archived: c.archived,
            problems: c.problems,
        }
    }
}

/// How the homes are watched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct WatcherStatus {
    /// `inotify`, `fsevents`, `kqueue` or `poll`.
    pub backend: String,
    /// `events` or `poll`.
    pub mode: String,
    /// Why polling was chosen, when it was.
    pub reason: Option<String>,
    /// Each home: its filesystem, how it is watched and why.
    #[serde(default)]
    pub homes: Vec<HomeWatcher>,
}

/// How one home is watched.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HomeWatcher {
    /// The home as configured.
    pub home: PathBuf,
    /// The filesystem its realpath is on, as the mount table names it (`ext4`, `btrfs`,
    /// `overlay`, `tmpfs`, `fuse.bindfs`, `nfs4`…).
    pub filesystem: String,
    /// `events` or `poll`.
    pub mode: String,
    /// Why it is polled, when it is.
    pub reason: Option<String>,
    /// How often its directories are polled, when they are.
    pub poll_interval_ms: Option<u64>,
    /// How long its filesystem has not answered (a call on it is still blocked), while it
    /// does not: it is left out of the watches and the reconcile meanwhile, and requests
    /// that need it get `filesystemUnresponsive`. `null` while it answers.
    pub unresponsive_ms: Option<u64>,
}
