//! `thread/checkResume`: may this path be used to resume this thread?

use std::borrow::Cow;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{PathReason, Queries, QueryError, ThreadRecord};

/// The answer: `ok`, or the reason it is not, with a sentence and what is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResume {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'static, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The rollout at `path`, when it is one (also for `otherThread`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<ThreadRecord>,
}

impl Queries<'_> {
    /// `ok` when `path`, under any spelling, is a rollout whose `session_meta.id` is
    /// `thread_id`. Otherwise one of `directory`, `notRegularFile`, `missing`, `notRollout`,
    /// `otherThread`, `notMaterialized` (the path names this thread, which has no rollout yet),
    /// `outsideHome`, `permissionDenied`.
    pub fn check_resume(&self, thread_id: &str, path: &Path) -> Result<CheckResume, QueryError> {
        let wanted = thread_id.trim().to_ascii_lowercase();
        match self.path_file(path) {
            Ok(file) if file.head.thread_id.to_ascii_lowercase() == wanted => Ok(CheckResume {
                ok: true,
                reason: None,
                detail: None,
                record: Some(ThreadRecord::new(&file, self.homes)),
            }),
            Ok(file) => Ok(CheckResume {
                ok: false,
                reason: Some(Cow::Borrowed(PathReason::OtherThread.as_str())),
                detail: Some(format!(
                    "{} is the rollout of thread {}, not {wanted}",
                    path.display(),
                    file.head.thread_id
                )),
                record: Some(ThreadRecord::new(&file, self.homes)),
            }),
            Err(QueryError::Index(e)) => Err(QueryError::Index(e)),
            Err(e) => Ok(CheckResume {
                ok: false,
                reason: Some(Cow::Borrowed(match e.reason() {
                    // The path names a thread not written yet, but not the one asked about.
                    "notMaterialized" if !names_thread(path, &wanted) => "missing",
                    reason => reason,
                })),
                detail: Some(e.to_string()),
                record: None,
            }),
        }
    }
}

/// True when `path`'s file name is a rollout name for `thread_id`.
fn names_thread(path: &Path, thread_id: &str) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .and_then(crate::rollout::name::parse)
        .is_some_and(|n| n.thread_id.to_string() == thread_id)
}
