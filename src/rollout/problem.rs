//! Typed reasons a file in a Codex home is not (or not only) a good rollout.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Why a rollout-shaped path is bad. Variants before [`ProblemKind::NameMismatch`] mean the
/// file could not be indexed; the rest are warnings about a file that was indexed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum ProblemKind {
    /// A directory carries a rollout name.
    Directory,
    /// A FIFO, socket or device. Never opened: a FIFO would block the reader.
    NotRegularFile,
    /// Zero bytes: Codex materializes a file together with its first line.
    Empty,
    /// The first line is valid JSON but not a `session_meta` record with an id.
    NotSessionMeta,
    /// The first line is not JSON.
    InvalidJson,
    /// The first line is not UTF-8.
    InvalidUtf8,
    /// The first line is longer than the head bound; nothing past the bound was read.
    HeadTooLarge,
    /// The `.zst` stream does not decode.
    CorruptCompression,
    PermissionDenied,
    /// Gone between being listed and being read.
    Vanished,
    /// A different file took the path between stat and read.
    Replaced,
    /// A symlink that resolves outside every configured home; it is not followed.
    OutsideHome,
    /// Any other I/O failure, with the OS error in the detail.
    Unreadable,
    /// The id in the file name disagrees with `session_meta.id` (the file is indexed by the latter).
    NameMismatch,
    /// One thread id at two or more paths.
    Duplicate,
}

impl ProblemKind {
    /// The protocol spelling (camelCase), as stored in the index.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Directory => "directory",
            ProblemKind::NotRegularFile => "notRegularFile",
            ProblemKind::Empty => "empty",
            ProblemKind::NotSessionMeta => "notSessionMeta",
            ProblemKind::InvalidJson => "invalidJson",
            ProblemKind::InvalidUtf8 => "invalidUtf8",
            ProblemKind::HeadTooLarge => "headTooLarge",
            ProblemKind::CorruptCompression => "corruptCompression",
            ProblemKind::PermissionDenied => "permissionDenied",
            ProblemKind::Vanished => "vanished",
            ProblemKind::Replaced => "replaced",
            ProblemKind::OutsideHome => "outsideHome",
            ProblemKind::Unreadable => "unreadable",
            ProblemKind::NameMismatch => "nameMismatch",
            ProblemKind::Duplicate => "duplicate",
        }
    }

    /// Inverse of [`ProblemKind::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// True when a file with this problem is still a usable rollout.
    pub fn is_warning(self) -> bool {
        matches!(self, ProblemKind::NameMismatch | ProblemKind::Duplicate)
    }
}

const ALL: [ProblemKind; 15] = [
    ProblemKind::Directory,
    ProblemKind::NotRegularFile,
    ProblemKind::Empty,
    ProblemKind::NotSessionMeta,
    ProblemKind::InvalidJson,
    ProblemKind::InvalidUtf8,
    ProblemKind::HeadTooLarge,
    ProblemKind::CorruptCompression,
    ProblemKind::PermissionDenied,
    ProblemKind::Vanished,
    ProblemKind::Replaced,
    ProblemKind::OutsideHome,
    ProblemKind::Unreadable,
    ProblemKind::NameMismatch,
    ProblemKind::Duplicate,
];

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file that could not be read as a rollout: where, why, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadFile {
    pub path: PathBuf,
    pub kind: ProblemKind,
    /// One human sentence fragment: the OS error, the bound that was hit, the type seen.
    pub detail: String,
}

impl BadFile {
    pub fn new(path: &Path, kind: ProblemKind, detail: impl Into<String>) -> Self {
        BadFile {
            path: path.to_owned(),
            kind,
            detail: detail.into(),
        }
    }

    /// Classifies an I/O error met while statting or reading `path`.
    pub fn from_io(path: &Path, err: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        let kind = match err.kind() {
            ErrorKind::NotFound => ProblemKind::Vanished,
            ErrorKind::PermissionDenied => ProblemKind::PermissionDenied,
            ErrorKind::IsADirectory => ProblemKind::Directory,
            _ if err.raw_os_error() == Some(libc::ESTALE) => ProblemKind::Vanished,
            _ => ProblemKind::Unreadable,
        };
        BadFile::new(path, kind, err.to_string())
    }
}

impl fmt::Display for BadFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} ({})",
            self.path.display(),
            self.kind,
            self.detail
        )
    }
}

impl std::error::Error for BadFile {}
