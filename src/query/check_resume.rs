//! `thread/checkResume`: may this path be used to resume this thread?

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{PathReason, Queries, QueryError, ThreadRecord};

/// The answer: `ok`, or the reason it is not, with a sentence and what is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResume {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<PathReason>,
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
        match self.path_file_noting(path) {
            Ok((file, sibling)) if file.head.thread_id == wanted => {
                let record = ThreadRecord::new(&file, self.homes);
                // Codex stores the plain name of a compressed rollout and opens whichever
                // exists, so the other spelling is accepted; the answer says which file.
                let mut notes = Vec::new();
                if sibling.is_some() {
                    notes.push(format!(
                        "{} does not exist; the rollout is its sibling {} (Codex opens \
                         whichever of `.jsonl` and `.jsonl.zst` exists)",
                        path.display(),
                        record.path.display()
                    ));
                }
                if let Some(written) = &record.thread_id_as_written {
                    notes.push(format!(
                        "the file spells the id {written}; ids compare case-insensitively, but \
                         Codex looks a rollout up by a name with the lower-case id"
                    ));
                }
                let detail = (!notes.is_empty()).then(|| notes.join("; "));
                Ok(CheckResume {
                    ok: true,
                    reason: None,
                    detail,
                    record: Some(record),
                })
            }
            Ok((file, _)) => Ok(CheckResume {
                ok: false,
                reason: Some(PathReason::OtherThread),
                detail: Some(format!(
                    "{} is the rollout of thread {}, not {wanted}",
                    path.display(),
                    file.head.thread_id
                )),
                record: Some(ThreadRecord::new(&file, self.homes)),
            }),
            Err(e @ QueryError::Path { reason, .. }) => Ok(CheckResume {
                ok: false,
                reason: Some(match reason {
                    // The path names a thread not written yet, but not the one asked about.
                    PathReason::NotMaterialized if !names_thread(path, &wanted) => {
                        PathReason::Missing
                    }
                    reason => reason,
                }),
                detail: Some(e.to_string()),
                record: None,
            }),
            // A bad request (a relative path), a degraded or failing index: not an answer.
            Err(e) => Err(e),
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
