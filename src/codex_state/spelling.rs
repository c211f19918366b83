//! Which spelling of a path goes into a rewritten `rollout_path`.
//!
//! Codex writes the home as it found it: the symlinked spelling without `CODEX_HOME`, the
//! realpath with it. A rewritten row keeps the spelling its old path used when that spelling
//! still reaches the file, else uses the home as configured. A `.jsonl.zst` file is written
//! by its plain name, because Codex stores the plain name and finds the `.zst` itself.

use std::path::{Path, PathBuf};

use crate::identity::{Home, Stamp};

const ZST: &str = ".zst";

/// The `rollout_path` value for the file at `canonical` (under `home.real`), spelled like
/// `like`.
pub fn respell(home: &Home, like: &str, canonical: &Path) -> PathBuf {
    let Ok(rest) = canonical.strip_prefix(&home.real) else {
        return plain(canonical);
    };
    let rest = plain(rest);
    let target = Stamp::of(canonical).ok().map(|s| s.id);
    let reaches = |p: &Path| {
        let on_disk = [p.to_owned(), with_zst(p)];
        on_disk
            .iter()
            .any(|c| Stamp::of(c).ok().map(|s| s.id) == target && target.is_some())
    };
    let like = Path::new(like);
    let mut prefixes: Vec<&PathBuf> = home
        .spellings
        .iter()
        .filter(|s| like.starts_with(s))
        .collect();
    prefixes.sort_by_key(|s| std::cmp::Reverse(s.as_os_str().len()));
    for prefix in prefixes.into_iter().chain([&home.configured, &home.real]) {
        let candidate = prefix.join(&rest);
        if reaches(&candidate) {
            return candidate;
        }
    }
    home.configured.join(rest)
}

/// True when `row_path` names `canonical` through some spelling of `home` (lexically, so it
/// works for a file that is gone), counting the plain and `.zst` names as one.
pub fn names(home: &Home, row_path: &str, canonical: &Path) -> bool {
    let want = plain(canonical);
    home.spellings_of(Path::new(row_path))
        .iter()
        .any(|s| plain(s) == want)
}

/// The plain name of a `.jsonl.zst` path; other paths unchanged.
pub fn plain(p: &Path) -> PathBuf {
    match p.to_str().and_then(|s| s.strip_suffix(ZST)) {
        Some(stripped) if stripped.ends_with(".jsonl") => PathBuf::from(stripped),
        _ => p.to_owned(),
    }
}

/// `p` with `.zst` appended.
pub fn with_zst(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(ZST);
    PathBuf::from(s)
}
