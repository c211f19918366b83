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
        let home = homes.homes.iter().find(|h| h.real == file.home);
        let (path, spellings) = match home {
            Some(h) => (h.display_spelling(&file.path), h.spellings_of(&file.path)),
            None => (file.path.clone(), vec![file.path.clone()]),
        };
        let aliases = spellings.into_iter().filter(|s| *s != path).collect();
        let mtime =
            UNIX_EPOCH + Duration::from_nanos(u64::try_from(file.stamp.mtime_ns).unwrap_or(0));
        ThreadRecord {
            thread_id: file.head.thread_id.clone(),
            thread_id_as_written: file.head.thread_id_as_written.clone(),
            path,
            canonical_path: file.path.clone(),
            aliases,
            archived: file.archived,
            compression: Cow::Borrowed(file.compression.as_str()),
            size_bytes: file.stamp.size,
            modified_at: humantime::format_rfc3339_millis(mtime).to_string(),
            created_at: file.head.timestamp.clone(),
            cwd: file.head.cwd.clone(),
            source: file.head.source.clone(),
            originator: file.head.originator.clone(),
            cli_version: file.head.cli_version.clone(),
            title: file.head.title.clone(),
            model_provider: file.head.model_provider.clone(),
            forked_from_id: file.head.forked_from_id.clone(),
            git_branch: file.head.git_branch.clone(),
        }
    }
}
