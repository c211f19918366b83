//! `path/same`: are two paths the same rollout file? By identity, never by spelling.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ErrorReason, Queries, QueryError};
use crate::identity::{self, FileId, FileKind, Stamp};

/// What one side of a comparison is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathIdentity {
    pub path: PathBuf,
    pub exists: bool,
    pub canonical_path: Option<PathBuf>,
    pub kind: Option<FileKind>,
    pub file_id: Option<FileId>,
    /// The rollout's thread, when the path is a readable rollout inside a home.
    pub thread_id: Option<String>,
    /// Why the path is not a rollout, when it is not.
    pub reason: Option<ErrorReason>,
}

/// The answer to `path/same`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SameAnswer {
    pub same: bool,
    pub a: PathIdentity,
    pub b: PathIdentity,
}

impl Queries<'_> {
    /// Two paths are the same rollout when they are one file (device and inode, confirmed
    /// through open handles) and that file's head names one thread.
    pub fn same(&self, a: &Path, b: &Path) -> Result<SameAnswer, QueryError> {
        super::check_request_path(a)?;
        super::check_request_path(b)?;
        let ia = self.identify(a)?;
        let ib = self.identify(b)?;
        let same = ia.thread_id.is_some()
            && ia.thread_id == ib.thread_id
            && ia.file_id.is_some()
            && ia.file_id == ib.file_id
            && matches!(
                (&ia.canonical_path, &ib.canonical_path),
                (Some(ca), Some(cb)) if same_file::is_same_file(ca, cb).unwrap_or(false)
            );
        Ok(SameAnswer { same, a: ia, b: ib })
    }

    fn identify(&self, path: &Path) -> Result<PathIdentity, QueryError> {
        // A stale or aliased spelling, or a bind mount of a home, is looked at through the
        // home's own spelling.
        let given = identity::normalize_lexically(path);
        let roots = crate::crawl::allowed_roots(self.homes);
        let normalized = self.existing_spelling(&given, &roots).unwrap_or(given);
        let stamp = Stamp::of(&normalized).ok();
        let mut id = PathIdentity {
            path: path.to_owned(),
            exists: stamp.is_some(),
            canonical_path: identity::canonicalize(&normalized).ok(),
            kind: stamp.map(|s| s.kind),
            file_id: stamp.map(|s| s.id),
            thread_id: None,
            reason: None,
        };
        match self.path_file(&normalized) {
            Ok(file) => id.thread_id = Some(file.head.thread_id),
            Err(QueryError::Index(e)) => return Err(QueryError::Index(e)),
            Err(e) => id.reason = Some(e.reason()),
        }
        Ok(id)
    }
}
