//! The reasons a query gives, as types: `data.reason` of errors, `thread/checkResume`'s
//! `reason` and `path/same`'s per-side `reason`. Their wire spellings appear here only.
//!
//! A leaf of [`crate::protocol`] (it imports nothing of the crate), so that [`crate::query`],
//! below the protocol, builds its answers with these types.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Why a path is not the rollout a caller hoped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum PathReason {
    Directory,
    NotRegularFile,
    Missing,
    NotRollout,
    OtherThread,
    /// A rollout path of a thread that never had a file yet (Codex writes lazily).
    NotMaterialized,
    OutsideHome,
    PermissionDenied,
}

impl PathReason {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PathReason::Directory => "directory",
            PathReason::NotRegularFile => "notRegularFile",
            PathReason::Missing => "missing",
            PathReason::NotRollout => "notRollout",
            PathReason::OtherThread => "otherThread",
            PathReason::NotMaterialized => "notMaterialized",
            PathReason::OutsideHome => "outsideHome",
            PathReason::PermissionDenied => "permissionDenied",
        }
    }
}

impl std::fmt::Display for PathReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The machine-readable `data.reason` of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ErrorReason {
    // Lookups.
    NotFound,
    Ambiguous,
    BadId,
    /// A path in a request is empty, relative or holds a NUL.
    BadPath,
    /// A parameter outside what the method accepts.
    BadParams,
    /// The index cannot take writes, so a listing would be incomplete.
    Degraded,
    // Paths (as `thread/checkResume`'s reasons).
    Directory,
    NotRegularFile,
    Missing,
    NotRollout,
    OtherThread,
    NotMaterialized,
    OutsideHome,
    PermissionDenied,
    // The agent.
    IndexError,
    Forbidden,
    /// A home's FUSE or network filesystem did not answer within `server.fs_timeout`.
    FilesystemUnresponsive,
    // Codex's state DB.
    SqliteError,
    IoError,
    Busy,
    UnknownSchema,
    UnknownGeneration,
    NotSqlite,
    NoStateDb,
    CodexConfig,
    BackfillRunning,
    InUse,
    Unstable,
    Refused,
    NoHome,
    /// Codex changed rows since the backup; `--force` restores anyway.
    ChangedSinceBackup,
}

impl ErrorReason {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::NotFound => "notFound",
            ErrorReason::Ambiguous => "ambiguous",
            ErrorReason::BadId => "badId",
            ErrorReason::BadPath => "badPath",
            ErrorReason::BadParams => "badParams",
            ErrorReason::Degraded => "degraded",
            ErrorReason::ChangedSinceBackup => "changedSinceBackup",
            ErrorReason::Directory => "directory",
            ErrorReason::NotRegularFile => "notRegularFile",
            ErrorReason::Missing => "missing",
            ErrorReason::NotRollout => "notRollout",
            ErrorReason::OtherThread => "otherThread",
            ErrorReason::NotMaterialized => "notMaterialized",
            ErrorReason::OutsideHome => "outsideHome",
            ErrorReason::PermissionDenied => "permissionDenied",
            ErrorReason::IndexError => "indexError",
            ErrorReason::Forbidden => "forbidden",
            ErrorReason::FilesystemUnresponsive => "filesystemUnresponsive",
            ErrorReason::SqliteError => "sqliteError",
            ErrorReason::IoError => "ioError",
            ErrorReason::Busy => "busy",
            ErrorReason::UnknownSchema => "unknownSchema",
            ErrorReason::UnknownGeneration => "unknownGeneration",
            ErrorReason::NotSqlite => "notSqlite",
            ErrorReason::NoStateDb => "noStateDb",
            ErrorReason::CodexConfig => "codexConfig",
            ErrorReason::BackfillRunning => "backfillRunning",
            ErrorReason::InUse => "inUse",
            ErrorReason::Unstable => "unstable",
            ErrorReason::Refused => "refused",
            ErrorReason::NoHome => "noHome",
        }
    }
}

impl std::fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<PathReason> for ErrorReason {
    fn from(r: PathReason) -> Self {
        match r {
            PathReason::Directory => ErrorReason::Directory,
            PathReason::NotRegularFile => ErrorReason::NotRegularFile,
            PathReason::Missing => ErrorReason::Missing,
            PathReason::NotRollout => ErrorReason::NotRollout,
            PathReason::OtherThread => ErrorReason::OtherThread,
            PathReason::NotMaterialized => ErrorReason::NotMaterialized,
            PathReason::OutsideHome => ErrorReason::OutsideHome,
            PathReason::PermissionDenied => ErrorReason::PermissionDenied,
        }
    }
}
