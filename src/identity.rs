//! File identity and the spellings of a Codex home.
//!
//! A file is (st_dev, st_ino): [`FileId`]. Inode numbers get reused, so an id alone is never
//! trusted; a [`Stamp`] adds the validation tuple (size, mtime and ctime in ns), and callers confirm the
//! thread id from the head before calling two spellings one file.
//!
//! A Codex home is known by every spelling a tool may use for it ([`Home`]): as configured,
//! its realpath, and configured aliases (`/home/u` ↔ `/mnt/users/u`). A path that no longer
//! exists can still be mapped between spellings lexically.

use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The identity of a file on this machine: device and inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// What kind of filesystem object a path names, after following symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum FileKind {
    File,
    Directory,
    Fifo,
    Socket,
    Device,
    Other,
}

/// `FileId` plus the validation tuple. Two stamps equal means "unchanged since last read".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stamp {
    pub id: FileId,
    pub kind: FileKind,
    pub size: u64,
    /// Modification time in nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status-change time in nanoseconds. User space can set mtime (`touch -r`, `tar`,
    /// `cp -p`) but not ctime: a rewrite that keeps inode, size and mtime still moves it.
    pub ctime_ns: i64,
    /// Birth time in nanoseconds, 0 where the filesystem does not say. A rename keeps it and
    /// a new file gets its own, so with the inode it tells a moved file from a new one that
    /// was given a freed inode number again (see [`Stamp::same_file`]).
    pub btime_ns: i64,
}

impl Stamp {
    pub fn from_metadata(meta: &Metadata) -> Self {
        let ft = meta.file_type();
        let kind = if ft.is_file() {
            FileKind::File
        } else if ft.is_dir() {
            FileKind::Directory
        } else if ft.is_fifo() {
            FileKind::Fifo
        } else if ft.is_socket() {
            FileKind::Socket
        } else if ft.is_block_device() || ft.is_char_device() {
            FileKind::Device
        } else {
            FileKind::Other
        };
        Stamp {
            id: FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            kind,
            size: meta.size(),
            mtime_ns: meta.mtime().saturating_mul(1_000_000_000) + meta.mtime_nsec(),
            ctime_ns: meta.ctime().saturating_mul(1_000_000_000) + meta.ctime_nsec(),
            btime_ns: meta
                .created()
                .ok()
                .filter(|_| birth_time_is_the_files(meta.dev()))
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(0)),
        }
    }

    /// True when both stamps are of one file (moved, renamed or written to since), not of
    /// two files that had the same inode number one after the other. Without a birth time
    /// on either side, the inode alone decides.
    pub fn same_file(&self, other: &Stamp) -> bool {
        self.id == other.id
            && (self.btime_ns == 0 || other.btime_ns == 0 || self.btime_ns == other.btime_ns)
    }

    /// Stats `path`, following symlinks. Never opens the file.
    pub fn of(path: &Path) -> std::io::Result<Self> {
        std::fs::metadata(path).map(|m| Stamp::from_metadata(&m))
    }

    /// True when identity, size, mtime and ctime all agree: the head read earlier still holds.
    pub fn unchanged(&self, other: &Stamp) -> bool {
        self == other
    }
}

/// One line of `/proc/self/mountinfo`:
/// `id parent major:minor root mountpoint options [optional…] - fstype source super`.
pub struct MountLine<'a> {
    /// `major:minor`.
    pub device: &'a str,
    /// As the table spells it (space, tab, newline and backslash escaped as `\ooo`).
    pub mount_point: &'a str,
    pub fstype: &'a str,
}

impl<'a> MountLine<'a> {
    pub fn parse(line: &'a str) -> Option<Self> {
        let mut fields = line.split(' ');
        let device = fields.nth(2)?;
        let mount_point = fields.nth(1)?;
        let fstype = line.split(" - ").nth(1)?.split(' ').next()?;
        Some(MountLine {
            device,
            mount_point,
            fstype,
        })
    }
}

/// False on a filesystem whose birth time is not the file's own: overlayfs reports its upper
/// copy's, which a copy-up (the first write to a file of a lower layer) makes anew under the
/// same inode number, so the birth time there would take one file for two. Decided once per
/// device from `/proc/self/mountinfo`; true when the device is not found there.
fn birth_time_is_the_files(dev: u64) -> bool {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, PoisonError};
    static KNOWN: OnceLock<Mutex<HashMap<u64, bool>>> = OnceLock::new();
    let known = KNOWN.get_or_init(Default::default);
    if let Some(&kept) = known
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&dev)
    {
        return kept;
    }
    let wanted = format!("{}:{}", libc::major(dev), libc::minor(dev));
    let fstype = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|table| {
            table
                .lines()
                .filter_map(MountLine::parse)
                .find(|m| m.device == wanted)
                .map(|m| m.fstype.to_owned())
        });
    let kept = fstype.as_deref() != Some("overlay");
    known
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(dev, kept);
    kept
}

/// Whether an error from looking up a path says that nothing is there: not found, a
/// component that is no longer a directory, a symlink loop on the way, or NFS's stale handle
/// (deleted on the server).
/// Other errors (`ENOTCONN` from a FUSE mount whose daemon died, `EIO`, `EACCES`) say the
/// filesystem could not answer, not that the file is gone.
pub fn is_absence(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
        || matches!(
            e.raw_os_error(),
            Some(libc::ENOTDIR | libc::ESTALE | libc::ELOOP)
        )
}

/// Whether an error says the filesystem itself fails (a FUSE mount whose daemon died, a
/// lost network mount, a failing disk), so nothing can be said about the file.
pub fn is_filesystem_failure(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENOTCONN
                | libc::EIO
                | libc::ETIMEDOUT
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::ENXIO
                | libc::ENODEV
                | libc::ESHUTDOWN
                | libc::EREMOTEIO
                | libc::ENOLINK
        )
    )
}

/// The first of a home's directories (itself, `sessions/`, `archived_sessions/`) that its
/// filesystem fails to look up for another reason than absence ([`is_absence`]), with the
/// error: such a home cannot be walked, and what is indexed under it is kept meanwhile.
pub fn unavailable(home: &Home) -> Option<(PathBuf, std::io::Error)> {
    [home.real.clone(), home.sessions_dir(), home.archived_dir()]
        .into_iter()
        .find_map(|dir| match std::fs::metadata(&dir) {
            Err(e) if !is_absence(&e) => Some((dir, e)),
            _ => None,
        })
}

/// True when nothing answers to `path` as the index spells it. The index keeps a name that
/// is not UTF-8 in its lossy spelling (`U+FFFD` for each bad byte), which no file has: such a
/// spelling stands while its directory still lists a name that reads that way.
pub fn is_gone(path: &Path) -> bool {
    match std::fs::symlink_metadata(path) {
        Ok(_) => return false,
        // The filesystem failed (a FUSE daemon that died, a lost network mount, an I/O
        // error): that says nothing about the file, which is kept until it can be seen.
        Err(e) if !is_absence(&e) => return false,
        Err(_) => {}
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return true;
    };
    let Some(name) = name.to_str().filter(|n| n.contains('\u{FFFD}')) else {
        return true;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return true;
    };
    !entries.flatten().take(1_000_000).any(|e| {
        let listed = e.file_name();
        listed.to_str().is_none() && listed.to_string_lossy() == name
    })
}

/// Canonical form of an existing path: symlinks resolved, no `\\?\` prefixes (dunce).
pub fn canonicalize(path: &Path) -> std::io::Result<PathBuf> {
    dunce::canonicalize(path)
}

/// Makes `path` absolute against the current directory and folds `.` and `..` lexically,
/// without touching the filesystem. Used for paths that may not exist.
pub fn normalize_lexically(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_owned()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut out = PathBuf::new();
    for component in absolute.components() {
        match component {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// One configured Codex home and every spelling it is known by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    /// As configured (absolute, lexically normalized). Codex writes this spelling when the
    /// home was not canonicalized (no `CODEX_HOME`, symlinked `$HOME`).
    pub configured: PathBuf,
    /// The realpath, or `configured` when the home does not exist (yet).
    pub real: PathBuf,
    /// Every spelling, `real` first, without repeats.
    pub spellings: Vec<PathBuf>,
    /// `real`, and the realpaths of its rollout directories that exist (either may be a
    /// symlink elsewhere): where a link may point and stay inside the home. Resolved with
    /// the rest, so using them never touches the home's filesystem (which may hang).
    pub roots: Vec<PathBuf>,
}

impl Home {
    /// Builds a home from its configured path and alias pairs (`a` ↔ `b`: a path under one is
    /// the same as the path under the other).
    pub fn new(configured: &Path, aliases: &[(PathBuf, PathBuf)]) -> Self {
        Home::with_realpaths(configured, aliases, &|p| canonicalize(p).ok())
    }

    /// A home whose filesystem did not answer: known by its configured spelling (and the
    /// aliases') only, as one that does not exist yet is. Nothing is looked up.
    pub fn unresolved(configured: &Path, aliases: &[(PathBuf, PathBuf)]) -> Self {
        Home::with_realpaths(configured, aliases, &|_| None)
    }

    fn with_realpaths(
        configured: &Path,
        aliases: &[(PathBuf, PathBuf)],
        realpath: &dyn Fn(&Path) -> Option<PathBuf>,
    ) -> Self {
        let configured = normalize_lexically(configured);
        let real = realpath(&configured).unwrap_or_else(|| configured.clone());
        let mut spellings = vec![real.clone()];
        push_unique(&mut spellings, configured.clone());
        // Close the set over the alias pairs; bounded because each pass only adds new paths
        // and there are finitely many (spelling, pair) combinations.
        let mut i = 0;
        while i < spellings.len() && spellings.len() < 64 {
            let current = spellings[i].clone();
            for (a, b) in aliases {
                for (from, to) in [(a, b), (b, a)] {
                    if let Ok(rest) = current.strip_prefix(from) {
                        push_unique(&mut spellings, to.join(rest));
                    }
                }
            }
            i += 1;
        }
        let mut roots = vec![real.clone()];
        for dir in [SESSIONS_DIR, ARCHIVED_DIR] {
            if let Some(dir) = realpath(&real.join(dir)) {
                roots.push(dir);
            }
        }
        Home {
            configured,
            real,
            spellings,
            roots,
        }
    }

    pub fn sessions_dir(&self) -> PathBuf {
        self.real.join(SESSIONS_DIR)
    }

    pub fn archived_dir(&self) -> PathBuf {
        self.real.join(ARCHIVED_DIR)
    }

    /// The part of `path` below this home, if `path` starts with any of its spellings.
    pub fn relative<'p>(&self, path: &'p Path) -> Option<&'p Path> {
        self.spellings
            .iter()
            .find_map(|spelling| path.strip_prefix(spelling).ok())
    }

    /// Every spelling of `path` (which must lie under this home), `real` first.
    pub fn spellings_of(&self, path: &Path) -> Vec<PathBuf> {
        match self.relative(path) {
            Some(rest) => self.spellings.iter().map(|s| s.join(rest)).collect(),
            None => vec![path.to_owned()],
        }
    }

    /// The spelling a user of this home would recognise: under the configured path.
    pub fn display_spelling(&self, path: &Path) -> PathBuf {
        match self.relative(path) {
            Some(rest) => self.configured.join(rest),
            None => path.to_owned(),
        }
    }
}

/// The directory of active rollouts, nested by `YYYY/MM/DD`.
pub const SESSIONS_DIR: &str = "sessions";
/// The flat directory archived rollouts are moved into.
pub const ARCHIVED_DIR: &str = "archived_sessions";

/// Where under a home a rollout path lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Sessions,
    Archived,
}

impl Area {
    /// Which rollout area `relative` (a path relative to a home) is in, if any.
    pub fn of_relative(relative: &Path) -> Option<Area> {
        match relative.components().next()? {
            Component::Normal(first) if first == SESSIONS_DIR => Some(Area::Sessions),
            Component::Normal(first) if first == ARCHIVED_DIR => Some(Area::Archived),
            _ => None,
        }
    }
}

fn push_unique(v: &mut Vec<PathBuf>, p: PathBuf) {
    if !v.contains(&p) {
        v.push(p);
    }
}

/// The configured homes, searched in order.
#[derive(Debug, Clone, Default)]
pub struct Homes {
    pub homes: Vec<Home>,
    /// The alias pairs the spellings were built from, kept to rebuild them.
    aliases: Vec<(PathBuf, PathBuf)>,
}

impl Homes {
    /// One [`Home`] per directory: a home configured twice, by two spellings (a symlink and
    /// its target), is one home whose spellings include both.
    pub fn new(configured: &[PathBuf], aliases: &[(PathBuf, PathBuf)]) -> Self {
        Homes::of(configured.iter().map(|h| Home::new(h, aliases)), aliases)
    }

    /// As [`Homes::new`], from homes already resolved (the agent resolves each under a
    /// deadline, as its filesystem may hang).
    pub fn of(resolved: impl IntoIterator<Item = Home>, aliases: &[(PathBuf, PathBuf)]) -> Self {
        let mut homes: Vec<Home> = Vec::new();
        for home in resolved {
            match homes.iter_mut().find(|known| known.real == home.real) {
                Some(known) => {
                    for s in home.spellings {
                        if known.spellings.len() < 64 {
                            push_unique(&mut known.spellings, s);
                        }
                    }
                }
                None => homes.push(home),
            }
        }
        Homes {
            homes,
            aliases: aliases.to_vec(),
        }
    }

    /// Each home as configured.
    pub fn configured(&self) -> Vec<PathBuf> {
        self.homes.iter().map(|h| h.configured.clone()).collect()
    }

    /// The alias pairs the spellings were built from.
    pub fn aliases(&self) -> &[(PathBuf, PathBuf)] {
        &self.aliases
    }

    /// The home `path` lies under (by any spelling), with the path relative to it.
    pub fn locate<'p>(&self, path: &'p Path) -> Option<(&Home, &'p Path)> {
        self.homes
            .iter()
            .find_map(|h| h.relative(path).map(|rest| (h, rest)))
    }

    /// `path` in the spelling its user configured: under the home as configured when it lies
    /// under any spelling of a home, else unchanged. Messages name paths this way.
    pub fn display(&self, path: &Path) -> PathBuf {
        match self.locate(path) {
            Some((home, rest)) => home.configured.join(rest),
            None => path.to_owned(),
        }
    }

    /// Every spelling of a path that may not exist, through the home spellings. The input
    /// itself comes first.
    pub fn lexical_alternatives(&self, path: &Path) -> Vec<PathBuf> {
        let path = normalize_lexically(path);
        let mut out = vec![path.clone()];
        if let Some((home, _)) = self.locate(&path) {
            for p in home.spellings_of(&path) {
                push_unique(&mut out, p);
            }
        }
        out
    }

    /// `path` respelled under a home's realpath when one of its ancestors is a home (or its
    /// `sessions/` or `archived_sessions/`) reached another way: a bind mount or a second
    /// mount of the same filesystem (same st_dev and inode), or a symlink. Works whether or
    /// not `path` itself exists; stats at most one directory per ancestor.
    pub fn through_mount(&self, path: &Path) -> Option<PathBuf> {
        let mut anchors: Vec<(FileId, PathBuf)> = Vec::new();
        for h in &self.homes {
            for dir in [h.real.clone(), h.sessions_dir(), h.archived_dir()] {
                if let (Ok(stamp), Ok(real)) = (Stamp::of(&dir), canonicalize(&dir)) {
                    anchors.push((stamp.id, real));
                }
            }
        }
        if anchors.is_empty() {
            return None;
        }
        for ancestor in path.ancestors().take(MAX_DEPTH) {
            let Ok(stamp) = Stamp::of(ancestor) else {
                continue;
            };
            if stamp.kind != FileKind::Directory {
                continue;
            }
            if let Some((_, real)) = anchors.iter().find(|(id, _)| *id == stamp.id) {
                let rest = path.strip_prefix(ancestor).ok()?;
                return Some(real.join(rest));
            }
        }
        None
    }
}

/// Ancestors looked at by [`Homes::through_mount`]; deeper paths are not rollout paths.
const MAX_DEPTH: usize = 64;

/// Why a configured home cannot be indexed, in words, or `None` when it is a directory.
pub fn home_problem(home: &Path) -> Option<String> {
    match std::fs::metadata(home) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some("is not a directory".into()),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            Some("is a symlink loop (too many levels of symbolic links)".into())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::symlink_metadata(home) {
                Ok(_) => Some("is a dangling symlink".into()),
                Err(_) => Some("does not exist (yet)".into()),
            }
        }
        Err(e) => Some(format!("cannot be read ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_normalization_folds_dots() {
        assert_eq!(
            normalize_lexically(Path::new("/a/b/../c/./d")),
            PathBuf::from("/a/c/d")
        );
        assert_eq!(
            normalize_lexically(Path::new("/../../etc/shadow")),
            PathBuf::from("/etc/shadow")
        );
    }

    #[test]
    fn aliases_give_every_spelling_of_a_missing_home() {
        let home = Home::new(
            Path::new("/nonexistent-rolloutd/home/u/.codex"),
            &[(
                PathBuf::from("/nonexistent-rolloutd/home/u"),
                PathBuf::from("/nonexistent-rolloutd/mnt/users/u"),
            )],
        );
        assert_eq!(home.spellings.len(), 2);
        let stale = Path::new("/nonexistent-rolloutd/mnt/users/u/.codex/sessions/x.jsonl");
        assert_eq!(
            home.spellings_of(stale),
            vec![
                PathBuf::from("/nonexistent-rolloutd/home/u/.codex/sessions/x.jsonl"),
                stale.to_owned()
            ]
        );
        assert_eq!(
            Area::of_relative(home.relative(stale).unwrap()),
            Some(Area::Sessions)
        );
    }
}
