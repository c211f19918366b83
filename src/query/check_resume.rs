//! `thread/checkResume`: may this path be used to resume this thread?

use std::path::Path;

use serde::Serialize;

use super::{PathReason, Queries, QueryError, ThreadRecord};

/// The answer: `ok`, or the reason it is not, with a sentence and what is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckResume {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The rollout at `path`, when it is one (also for `otherThread`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<ThreadRecord>,
}

impl Queries<'_> {
    /// `ok` when `path`, under any spelling, is a rollout whose `session_meta.id` is
    /// `thread_id`. Otherwise one of `directory`, `notRegularFile`, `missing`, `notRollout`,
    /// `otherThread`, `outsideHome`, `permissionDenied`.
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
                reason: Some(PathReason::OtherThread.as_str()),
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
                reason: Some(e.reason()),
                detail: Some(e.to_string()),
                record: None,
            }),
        }
    }
}
