//! The thread record every query answers with (field names as in the protocol).

use std::borrow::Cow;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::identity::Homes;
use crate::index::IndexedFile;

/// One thread's rollout file, as verified against the filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThreadRecord {
    /// The thread id in canonical lower case.
    pub thread_id: String,
    /// `session_meta.id` as the file spells it, when that is not `thread_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id_as_written: Option<String>,
    /// The path under the home as configured (the spelling Codex writes for it).
    pub path: PathBuf,
    /// The realpath.
    pub canonical_path: PathBuf,
    /// Every other spelling through the home's realpath and configured aliases.
    pub aliases: Vec<PathBuf>,
    pub archived: bool,
    /// `"none"` or `"zstd"`.
    pub compression: Cow<'static, str>,
    pub size_bytes: u64,
    /// File mtime, RFC 3339 UTC.
    pub modified_at: String,
    /// `session_meta.timestamp`: when the thread started.
    pub created_at: Option<String>,
    pub cwd: Option<String>,
    pub source: Option<String>,
    pub originator: Option<String>,
    pub cli_version: Option<String>,
    /// The first real user prompt.
    pub title: Option<String>,
    pub model_provider: Option<String>,
    pub forked_from_id: Option<String>,
    pub git_branch: Option<String>,
}

impl ThreadRecord {
    pub fn new(file: &IndexedFile, homes: &Homes) -> Self {
        ThreadRecord::from_file(file.clone(), homes)
    }

    /// [`ThreadRecord::new`], taking the row's strings instead of copying them (the answer
    /// to every resolve).
    pub fn from_file(file: IndexedFile, homes: &Homes) -> Self {
        // The path relative to its home, found once: the shown spelling and the aliases
        // are that home's spellings joined to it.
        let under = homes
            .homes
            .iter()
            .find(|h| h.real == file.home)
            .and_then(|h| h.relative(&file.path).map(|rest| (h, rest)));
        let (path, aliases) = match under {
            Some((home, rest)) => {
                let path = home.configured.join(rest);
                let aliases = home
                    .spellings
                    .iter()
                    .map(|s| s.join(rest))
                    .filter(|s| *s != path)
                    .collect();
                (path, aliases)
            }
            None => (file.path.clone(), Vec::new()),
        };
        let mtime =
            UNIX_EPOCH + Duration::from_nanos(u64::try_from(file.stamp.mtime_ns).unwrap_or(0));
        let head = file.head;
        ThreadRecord {
            thread_id: head.thread_id,
            thread_id_as_written: head.thread_id_as_written,
            path,
            canonical_path: file.path,
            aliases,
            archived: file.archived,
            compression: Cow::Borrowed(file.compression.as_str()),
            size_bytes: file.stamp.size,
            modified_at: humantime::format_rfc3339_millis(mtime).to_string(),
            created_at: head.timestamp,
            cwd: head.cwd,
            source: head.source,
            originator: head.originator,
            cli_version: head.cli_version,
            title: head.title,
            model_provider: head.model_provider,
            forked_from_id: head.forked_from_id,
            git_branch: head.git_branch,
        }
    }
}
