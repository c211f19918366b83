//! What a rollout file is: its name ([`name`]), its bounded head ([`head`]), and the typed
//! reasons a file is bad ([`problem`]). This is the only module that knows the JSONL format.

pub mod head;
pub mod name;
pub mod problem;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::identity::{FileKind, Stamp};
pub use head::{HeadLimits, RolloutHead};
pub use name::{Compression, RolloutName};
pub use problem::{BadFile, ProblemKind};

/// A rollout file that was read: its stamp at read time, its head, and what its name said.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// The stamp of the file that was actually read (from the open descriptor).
    pub stamp: Stamp,
    pub head: RolloutHead,
    pub compression: Compression,
    /// The parsed file name, when it has a recognised shape.
    pub name: Option<RolloutName>,
    /// Bytes taken from the file (compressed bytes for `.zst`), to prove the bound.
    pub bytes_read: u64,
}

impl Inspected {
    /// A warning when the file name's thread id is missing or differs from `session_meta.id`,
    /// or either spells it in upper case: Codex finds a rollout by a name ending in the
    /// lower-case id, so such a file is invisible to Codex's lookup by id.
    pub fn name_mismatch(&self) -> Option<String> {
        let written = self
            .head
            .thread_id_as_written
            .as_deref()
            .unwrap_or(&self.head.thread_id);
        match &self.name {
            Some(name)
                if name.thread_id.to_string() == self.head.thread_id
                    && (name.thread_id_as_written != self.head.thread_id
                        || written != self.head.thread_id) =>
            {
                Some(format!(
                    "the id is not in lower case (file name {}, session_meta.id {written}); \
                     rolloutd compares ids case-insensitively and answers with {}, but \
                     Codex looks rollouts up by the lower-case id and may not find this file",
                    name.thread_id_as_written, self.head.thread_id
                ))
            }
            Some(name) if name.thread_id.to_string() == self.head.thread_id => None,
            Some(name) => Some(format!(
                "file name says {} but session_meta.id is {written}",
                name.thread_id_as_written
            )),
            None => Some(format!(
                "file name has no thread id; session_meta.id is {written}"
            )),
        }
    }
}

/// Stats, classifies and head-reads `path` (symlinks followed).
///
/// Never opens anything but a regular file, so a FIFO named like a rollout cannot block.
/// The descriptor is opened non-blocking and re-checked against the stat, so a file swapped
/// in between is reported as [`ProblemKind::Replaced`] rather than read.
pub fn inspect(path: &Path, limits: &HeadLimits) -> Result<Inspected, BadFile> {
    let before = Stamp::of(path).map_err(|e| BadFile::from_io(path, &e))?;
    match before.kind {
        FileKind::File => {}
        FileKind::Directory => {
            return Err(BadFile::new(path, ProblemKind::Directory, "is a directory"))
        }
        other => {
            return Err(BadFile::new(
                path,
                ProblemKind::NotRegularFile,
                format!("is a {other:?}, not a regular file").to_lowercase(),
            ))
        }
    }
    if before.size == 0 {
        return Err(BadFile::new(path, ProblemKind::Empty, "file is empty"));
    }
    let file = open(path, 0).map_err(|e| BadFile::from_io(path, &e))?;
    let opened = stamp_of(&file, path)?;
    if opened.id != before.id || opened.kind != FileKind::File {
        return Err(BadFile::new(
            path,
            ProblemKind::Replaced,
            "a different file took the path between stat and open",
        ));
    }
    read_opened(path, file, opened, limits)
}

/// [`inspect`] of a path a directory listing gave as a regular file (its `d_type`, not a
/// symlink): opened without a stat of the path first, which saves a lookup of the whole
/// path per file when a walk reads every file. Whatever took the path since (a symlink, a
/// FIFO, a directory) is refused by the open or the descriptor's stat and goes through
/// [`inspect`], so the answer is the same.
pub fn inspect_listed_file(path: &Path, limits: &HeadLimits) -> Result<Inspected, BadFile> {
    let Ok(file) = open(path, libc::O_NOFOLLOW) else {
        return inspect(path, limits);
    };
    let opened = stamp_of(&file, path)?;
    if opened.kind != FileKind::File || opened.size == 0 {
        return inspect(path, limits);
    }
    read_opened(path, file, opened, limits)
}

/// Opened for reading non-blocking (a FIFO that took the path cannot block the open), never
/// as the controlling terminal.
fn open(path: &Path, flags: i32) -> std::io::Result<std::fs::File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | flags)
        .open(path)
}

fn stamp_of(file: &std::fs::File, path: &Path) -> Result<Stamp, BadFile> {
    file.metadata()
        .map(|m| Stamp::from_metadata(&m))
        .map_err(|e| BadFile::from_io(path, &e))
}

/// The head of `file`, a regular file opened at `path` whose descriptor's stamp is `opened`.
fn read_opened(
    path: &Path,
    file: std::fs::File,
    opened: Stamp,
    limits: &HeadLimits,
) -> Result<Inspected, BadFile> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let compression = name::compression_of(file_name);
    let mut counting = head::CountingReader::new(file);
    let result = match compression {
        Compression::None => with_buffers(|buf, line| {
            let mut reader = head::ReusedBufReader::new(&mut counting, buf, 64 << 10);
            head::read_head_into(&mut reader, limits, line)
        }),
        Compression::Zstd => with_dctx(|dctx, inbuf| {
            let input =
                head::ReusedBufReader::new(&mut counting, inbuf, zstd::zstd_safe::DCtx::in_size());
            let decoder = zstd::stream::read::Decoder::with_context(input, dctx);
            with_buffers(|buf, line| {
                let mut reader = head::ReusedBufReader::new(decoder, buf, 64 << 10);
                head::read_head_into(&mut reader, limits, line)
            })
        }),
    };
    let head = result.map_err(|e| match e {
        head::HeadError::Bad(kind, detail) => BadFile::new(path, kind, detail),
        head::HeadError::Io(e) if compression == Compression::Zstd && is_decode_error(&e) => {
            BadFile::new(path, ProblemKind::CorruptCompression, e.to_string())
        }
        head::HeadError::Io(e) => BadFile::from_io(path, &e),
    })?;
    Ok(Inspected {
        stamp: opened,
        head,
        compression,
        name: name::parse(file_name),
        bytes_read: counting.count,
    })
}

thread_local! {
    /// Each reading thread's read buffer and line buffer, kept between files.
    static BUFFERS: std::cell::RefCell<(Vec<u8>, Vec<u8>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs `f` with this thread's buffers (fresh ones if they are in use).
fn with_buffers<T>(f: impl FnOnce(&mut Vec<u8>, &mut Vec<u8>) -> T) -> T {
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let (buf, line) = &mut *bufs;
            let out = f(buf, line);
            // A rare multi-MB first line is not kept for the thread's lifetime.
            if line.capacity() > 256 << 10 {
                *line = Vec::new();
            }
            out
        }
        Err(_) => f(&mut Vec::new(), &mut Vec::new()),
    })
}

type Dctx = zstd::zstd_safe::DCtx<'static>;

thread_local! {
    /// Each reading thread's zstd decompression context and compressed-input buffer:
    /// creating them per file (~100 KB of tables, a 128 KB buffer) cost more than decoding
    /// the head.
    static ZSTD: std::cell::RefCell<(Option<Dctx>, Vec<u8>)> =
        const { std::cell::RefCell::new((None, Vec::new())) };
}

/// Runs `f` with this thread's zstd context and input buffer (fresh ones if they are in
/// use). The decoder resets its session first, so nothing of an earlier file is carried over.
fn with_dctx(
    f: impl FnOnce(&mut Dctx, &mut Vec<u8>) -> Result<RolloutHead, head::HeadError>,
) -> Result<RolloutHead, head::HeadError> {
    let fresh = || {
        Dctx::try_create().ok_or_else(|| {
            head::HeadError::Io(std::io::Error::other("cannot create a zstd context"))
        })
    };
    ZSTD.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => {
            let (dctx, inbuf) = &mut *slot;
            let dctx = match dctx {
                Some(dctx) => dctx,
                None => dctx.insert(fresh()?),
            };
            f(dctx, inbuf)
        }
        Err(_) => f(&mut fresh()?, &mut Vec::new()),
    })
}

fn is_decode_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::Other
            | std::io::ErrorKind::InvalidData
            | std::io::ErrorKind::UnexpectedEof
    )
}
