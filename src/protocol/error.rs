//! JSON-RPC errors: codes, and the typed `data.reason` a client can act on.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::codex_state::CodexStateError;
use crate::query::QueryError;

pub use super::reason::ErrorReason;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
/// The thread or path has no answer (`data.reason`: notFound, missing, directory, …).
pub const NOT_FOUND: i64 = -32001;
/// An id prefix matched several threads.
pub const AMBIGUOUS: i64 = -32002;
/// `thread/wait` ran out of time before the rollout appeared.
pub const TIMEOUT: i64 = -32003;
/// The index failed; answers may still come from the disk.
pub const INDEX_ERROR: i64 = -32010;
/// The agent is shutting down.
pub const SHUTTING_DOWN: i64 = -32011;
/// A refusal or failure on Codex's state DB.
pub const CODEX_STATE_ERROR: i64 = -32020;

/// `error.data`: the reason, and what is known about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorData {
    pub reason: ErrorReason,
    /// The path asked about (path reasons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// For `missing`: where the thread's file is now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_be: Option<PathBuf>,
    /// For `ambiguous`: every thread the prefix matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<Vec<String>>,
    /// How many threads an ambiguous prefix matches (`matches` shows the first few).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// For a `thread/wait` that timed out: how long it waited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<u64>,
    /// For a `thread/wait` that timed out: what the last lookup said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup: Option<Box<ErrorData>>,
}

impl ErrorData {
    pub fn new(reason: ErrorReason) -> Self {
        ErrorData {
            reason,
            path: None,
            would_be: None,
            matches: None,
            count: None,
            thread_id: None,
            waited_ms: None,
            lookup: None,
        }
    }
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Box<ErrorData>>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_reason(code: i64, reason: ErrorReason, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: Some(Box::new(ErrorData::new(reason))),
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        RpcError::new(INVALID_PARAMS, message)
    }

    pub fn shutting_down() -> Self {
        RpcError::new(SHUTTING_DOWN, "the agent is shutting down")
    }

    /// The machine-readable `data.reason`, if any.
    pub fn reason(&self) -> Option<ErrorReason> {
        self.data.as_ref().map(|d| d.reason)
    }

    /// "No" answers (not found, a failed path check, a wait that timed out), as opposed to
    /// failures to answer.
    pub fn is_negative_answer(&self) -> bool {
        self.code == NOT_FOUND || self.code == TIMEOUT
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RpcError {}

impl From<&QueryError> for RpcError {
    fn from(e: &QueryError) -> Self {
        let (code, mut data) = match e {
            QueryError::NotFound { thread_id } => (
                NOT_FOUND,
                ErrorData {
                    thread_id: Some(thread_id.clone()),
                    ..ErrorData::new(ErrorReason::NotFound)
                },
            ),
            QueryError::Ambiguous { matches, count, .. } => (
                AMBIGUOUS,
                ErrorData {
                    matches: Some(matches.clone()),
                    count: Some(*count),
                    ..ErrorData::new(ErrorReason::Ambiguous)
                },
            ),
            QueryError::BadId { .. } => (INVALID_PARAMS, ErrorData::new(ErrorReason::BadId)),
            QueryError::BadPath { path, .. } => (
                INVALID_PARAMS,
                ErrorData {
                    path: Some(path.clone()),
                    ..ErrorData::new(ErrorReason::BadPath)
                },
            ),
            QueryError::BadParams(_) => (INVALID_PARAMS, ErrorData::new(ErrorReason::BadParams)),
            QueryError::Degraded { .. } => (INDEX_ERROR, ErrorData::new(ErrorReason::Degraded)),
            QueryError::Path { .. } => (NOT_FOUND, ErrorData::new(ErrorReason::Missing)),
            QueryError::Unavailable { path, .. } => (
                TIMEOUT,
                ErrorData {
                    path: Some(path.clone()),
                    ..ErrorData::new(ErrorReason::FilesystemUnresponsive)
                },
            ),
            QueryError::Index(_) => (INDEX_ERROR, ErrorData::new(ErrorReason::IndexError)),
        };
        if let QueryError::Path {
            path,
            reason,
            would_be,
            ..
        } = e
        {
            data.reason = (*reason).into();
            data.path = Some(path.clone());
            data.would_be = would_be.clone();
        }
        RpcError {
            code,
            message: e.to_string(),
            data: Some(Box::new(data)),
        }
    }
}

impl From<&CodexStateError> for RpcError {
    fn from(e: &CodexStateError) -> Self {
        let reason = match e {
            CodexStateError::Sqlite { .. } => ErrorReason::SqliteError,
            CodexStateError::Io { .. } => ErrorReason::IoError,
            CodexStateError::Busy { .. } => ErrorReason::Busy,
            CodexStateError::Schema { .. } => ErrorReason::UnknownSchema,
            CodexStateError::UnknownGeneration { .. } => ErrorReason::UnknownGeneration,
            CodexStateError::NotSqlite { .. } => ErrorReason::NotSqlite,
            CodexStateError::NotFound { .. } => ErrorReason::NoStateDb,
            CodexStateError::CodexConfig { .. } => ErrorReason::CodexConfig,
            CodexStateError::BackfillRunning { .. } => ErrorReason::BackfillRunning,
            CodexStateError::InUse { .. } => ErrorReason::InUse,
            CodexStateError::Unstable { .. } => ErrorReason::Unstable,
            CodexStateError::Refused { .. } => ErrorReason::Refused,
            CodexStateError::NoHome => ErrorReason::NoHome,
            CodexStateError::ChangedSinceBackup { .. } => ErrorReason::ChangedSinceBackup,
            CodexStateError::Index(_) => ErrorReason::IndexError,
        };
        RpcError::with_reason(CODEX_STATE_ERROR, reason, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_serialize_as_their_wire_spelling() {
        for r in [
            ErrorReason::NotFound,
            ErrorReason::NotRegularFile,
            ErrorReason::NoStateDb,
            ErrorReason::BackfillRunning,
        ] {
            assert_eq!(
                serde_json::to_value(r).unwrap(),
                serde_json::Value::from(r.as_str())
            );
        }
    }
}
