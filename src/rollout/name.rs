//! Rollout file names: `rollout-<YYYY-MM-DDThh-mm-ss>-<uuid>.jsonl[.zst]` and the newer
//! `rollout-<ts>-<thread_id>_<rollout_id>.jsonl` of reverted threads.
//!
//! The name is only a hint. The thread id of record is the first `session_meta.payload.id`
//! (see [`super::head`]); the name's uuid is a cross-check.

use uuid::Uuid;

/// How a rollout's bytes are stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// A plain `.jsonl` file.
    None,
    /// A zstd stream in a `.jsonl.zst` file.
    Zstd,
}

impl Compression {
    /// The protocol spelling: `"none"` or `"zstd"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
        }
    }

    /// Inverse of [`Compression::as_str`]; unknown spellings are `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Compression::None),
            "zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }
}

/// What a rollout file name says about its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutName {
    /// The `YYYY-MM-DDThh-mm-ss` part, in the writer's local time (Codex's choice).
    pub timestamp: String,
    /// The thread id the name claims.
    pub thread_id: Uuid,
    /// The id part as the name spells it (Codex writes it in lower case).
    pub thread_id_as_written: String,
    /// The rollout generation id of `<thread_id>_<rollout_id>` names.
    pub rollout_id: Option<Uuid>,
    pub compression: Compression,
}

const PREFIX: &str = "rollout-";
const PLAIN: &str = ".jsonl";
const ZST: &str = ".jsonl.zst";

/// True when a file name that is not UTF-8 still has a rollout's shape: such a file is
/// reported, never skipped in silence.
pub fn looks_like_rollout_bytes(file_name: &[u8]) -> bool {
    file_name.starts_with(PREFIX.as_bytes())
        || file_name.ends_with(PLAIN.as_bytes())
        || file_name.ends_with(ZST.as_bytes())
}

/// True when `file_name` has the shape of a rollout (`rollout-*.jsonl` or `rollout-*.jsonl.zst`),
/// whether or not its uuid part parses. Crawls use this to pick candidates, so a file with a
/// damaged name is still looked at and reported rather than silently skipped.
pub fn looks_like_rollout(file_name: &str) -> bool {
    file_name.starts_with(PREFIX) && (file_name.ends_with(PLAIN) || file_name.ends_with(ZST))
}

/// The other spelling Codex accepts for a rollout path: `….jsonl` ↔ `….jsonl.zst` (Codex
/// stores the plain name of a compressed rollout and opens whichever exists).
pub fn sibling(path: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let text = path.as_os_str().as_bytes();
    if let Some(plain) = text
        .strip_suffix(b".zst")
        .filter(|p| p.ends_with(PLAIN.as_bytes()))
    {
        return Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(plain)));
    }
    if text.ends_with(PLAIN.as_bytes()) {
        let mut s = path.as_os_str().to_owned();
        s.push(".zst");
        return Some(std::path::PathBuf::from(s));
    }
    None
}

/// The compression a rollout-shaped name implies, from its extension alone.
pub fn compression_of(file_name: &str) -> Compression {
    if file_name.ends_with(ZST) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Parses a rollout file name. Returns `None` for anything that is not exactly one of the
/// recognised shapes.
pub fn parse(file_name: &str) -> Option<RolloutName> {
    let (stem, compression) = if let Some(s) = file_name.strip_suffix(ZST) {
        (s, Compression::Zstd)
    } else {
        (file_name.strip_suffix(PLAIN)?, Compression::None)
    };
    let rest = stem.strip_prefix(PREFIX)?;
    // `YYYY-MM-DDThh-mm-ss` is 19 bytes, then `-`, then the id part.
    if rest.len() < 21 || !rest.is_char_boundary(19) || rest.as_bytes()[19] != b'-' {
        return None;
    }
    let (timestamp, ids) = (&rest[..19], &rest[20..]);
    if !is_name_timestamp(timestamp) {
        return None;
    }
    let (thread_text, rollout_id) = match ids.split_once('_') {
        Some((thread, rollout)) => (thread, Some(Uuid::try_parse(rollout).ok()?)),
        None => (ids, None),
    };
    let thread_id = Uuid::try_parse(thread_text).ok()?;
    Some(RolloutName {
        timestamp: timestamp.to_owned(),
        thread_id,
        thread_id_as_written: thread_text.to_owned(),
        rollout_id,
        compression,
    })
}

fn is_name_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 | 13 | 16 => *c == b'-',
            10 => *c == b'T',
            _ => c.is_ascii_digit(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "01a1ff7d-4aab-7f60-bd31-0e4a5bf4615c";
    const RID: &str = "01a1ff7e-0000-7000-8000-000000000001";

    #[test]
    fn plain_compressed_and_generation_names() {
        let plain = parse(&format!("rollout-2026-11-21T19-02-43-{ID}.jsonl")).unwrap();
        assert_eq!(plain.thread_id.to_string(), ID);
        assert_eq!(plain.timestamp, "2026-11-21T19-02-43");
        assert_eq!(plain.compression, Compression::None);
        assert_eq!(plain.rollout_id, None);

        let zst = parse(&format!("rollout-2026-11-21T19-02-43-{ID}.jsonl.zst")).unwrap();
        assert_eq!(zst.compression, Compression::Zstd);

        let generation = parse(&format!("rollout-2026-11-21T19-02-43-{ID}_{RID}.jsonl")).unwrap();
        assert_eq!(generation.thread_id.to_string(), ID);
        assert_eq!(generation.rollout_id.unwrap().to_string(), RID);
    }

    #[test]
    fn siblings_both_ways() {
        use std::path::{Path, PathBuf};
        let plain = format!("/h/sessions/rollout-2026-11-21T19-02-43-{ID}.jsonl");
        let zst = format!("{plain}.zst");
        assert_eq!(sibling(Path::new(&plain)), Some(PathBuf::from(&zst)));
        assert_eq!(sibling(Path::new(&zst)), Some(PathBuf::from(&plain)));
        assert_eq!(sibling(Path::new("/h/sessions/notes.txt")), None);
        assert_eq!(sibling(Path::new("/h/x.zst")), None);
    }

    #[test]
    fn rejects_other_shapes() {
        for name in [
            format!("rollout-2026-11-21T19-02-43-{ID}.json"),
            format!("rollout-2026-11-21T19-02-43-{ID}.jsonl.tmp"),
            format!("rollout-2026-11-21-19-02-43-{ID}.jsonl"),
            "rollout-2026-11-21T19-02-43-not-a-uuid.jsonl".to_owned(),
            format!("session-2026-11-21T19-02-43-{ID}.jsonl"),
            "rollout-.jsonl".to_owned(),
            format!("rollout-2026-11-21T19-02-43-{ID}_garbage.jsonl"),
        ] {
            assert!(parse(&name).is_none(), "{name} should not parse");
        }
        assert!(looks_like_rollout("rollout-whatever.jsonl"));
        assert!(!looks_like_rollout("rollout-compress-1.tmp"));
    }
}
