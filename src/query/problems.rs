//! `index/problems`: bad files and duplicate threads, with reasons.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Queries, QueryError};
use crate::rollout::ProblemKind;

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProblemEntry {
    /// The path under the home as configured (the spelling records use).
    pub path: PathBuf,
    /// The realpath.
    #[serde(default)]
    pub canonical_path: PathBuf,
    pub reason: ProblemKind,
    pub detail: String,
    pub thread_id: Option<String>,
}

/// One thread id held by several files, preferred file first (see [`super::preference`]:
/// the file every answer for this thread gives).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DuplicateEntry {
    pub thread_id: String,
    pub reason: ProblemKind,
    /// Under the home as configured.
    pub paths: Vec<PathBuf>,
    /// The same files' realpaths, in the same order.
    #[serde(default)]
    pub canonical_paths: Vec<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProblemsReport {
    pub problems: Vec<ProblemEntry>,
    pub duplicates: Vec<DuplicateEntry>,
}

impl ProblemsReport {
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty() && self.duplicates.is_empty()
    }
}

impl Queries<'_> {
    pub fn problems(&self) -> Result<ProblemsReport, QueryError> {
        let problems = self
            .index
            .problems()?
            .into_iter()
            .map(|p| ProblemEntry {
                path: self.homes.display(&p.path),
                canonical_path: p.path,
                reason: p.kind,
                detail: p.detail,
                thread_id: p.thread_id,
            })
            .collect();
        let duplicates = self
            .index
            .duplicates()?
            .into_iter()
            .map(|(thread_id, canonical_paths)| DuplicateEntry {
                thread_id,
                reason: ProblemKind::Duplicate,
                paths: canonical_paths
                    .iter()
                    .map(|p| self.homes.display(p))
                    .collect(),
                canonical_paths,
            })
            .collect();
        Ok(ProblemsReport {
            problems,
            duplicates,
        })
    }
}
