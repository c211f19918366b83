//! A cold index built under a name of its own, which no other process opens, then given the
//! index's name in one step once complete.
//!
//! Nothing else reads or writes the file while it is built, so it is written without a
//! WAL, without syncs and under an exclusive lock: each page is written once, not twice
//! (WAL, then checkpoint), and no lock is taken per batch. A process that opens the index
//! meanwhile (an agent starting, another CLI) finds no index, makes its own and never
//! waits on this one; this build, finding the name taken, is then dropped for that index
//! ([`FreshBuild::publish`] says so). A build cut short (a crash, `^C`) leaves only its own
//! file, removed by the next build once its process is gone.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::{create_private_dir, err, schema, seal, Index, IndexError, Mode, IDLE_CACHE_KIB};

/// The files SQLite may keep beside a database.
const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// What a build's name adds to the index's, before the building process's id.
const BUILDING: &str = ".fresh-";

/// An index being built for `dest` (see the module's documentation).
pub struct FreshBuild {
    /// `None` once closed for publishing.
    index: Option<Index>,
    building: PathBuf,
    dest: PathBuf,
}

impl Index {
    /// Starts a fresh build of the index at `dest`; `None` when anything of an index is
    /// there already (the file, or a WAL or journal an earlier one left), which is then
    /// opened as usual.
    pub fn begin_fresh(dest: &Path) -> Result<Option<FreshBuild>, IndexError> {
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_private_dir(parent).map_err(|e| err(dest, "creating its directory", e))?;
        }
        let taken = std::iter::once(dest.to_owned())
            .chain(COMPANIONS.iter().map(|c| suffixed(dest, c)))
            .any(|p| p.symlink_metadata().is_ok());
        // One fresh build at a time: a process that comes second builds into the index as
        // usual (the first then finds the name taken and uses that index).
        if taken || other_live_build(dest) {
            return Ok(None);
        }
        let building = suffixed(dest, &format!("{BUILDING}{}", std::process::id()));
        remove_with_companions(&building);
        let open = || -> Result<Connection, Box<dyn std::error::Error + Send + Sync>> {
            let mut conn = Connection::open(&building)?;
            // A journal in memory, not none: a write that fails still rolls back, and the
            // pages past the file's end (all of a fresh build's) are not journaled at all.
            let journal: String = conn.query_row("PRAGMA journal_mode=MEMORY", [], |r| r.get(0))?;
            if !journal.eq_ignore_ascii_case("memory") {
                return Err(format!("journal mode {journal}, not memory").into());
            }
            conn.execute_batch(&format!(
                "PRAGMA locking_mode=EXCLUSIVE; PRAGMA synchronous=OFF; \
                 PRAGMA temp_store=MEMORY; PRAGMA cache_size=-{IDLE_CACHE_KIB};"
            ))?;
            match schema::migrate(&mut conn) {
                Ok(()) => Ok(conn),
                Err(schema::SchemaError::TooNew(v)) => {
                    Err(format!("schema version {v} in a new file").into())
                }
                Err(schema::SchemaError::Sql(e)) => Err(e.into()),
            }
        };
        match open() {
            Ok(conn) => Ok(Some(FreshBuild {
                index: Some(Index::writer(conn, &building, false, false)),
                building,
                dest: dest.to_owned(),
            })),
            Err(e) => {
                remove_with_companions(&building);
                Err(err(dest, "starting a fresh build", e))
            }
        }
    }
}

impl FreshBuild {
    /// The index being built (the writer: a reconcile fills it).
    pub fn index(&self) -> &Index {
        self.index
            .as_ref()
            .expect("a build is only closed by publish, which consumes it")
    }

    /// Gives the built index its name, as a WAL index (every later open expects one),
    /// synced and sealed so that the next open skips the full check. `false` when another
    /// process made an index there meanwhile: that one stands and this build is dropped.
    pub fn publish(mut self) -> Result<bool, IndexError> {
        let Some(mut index) = self.index.take() else {
            return Ok(false);
        };
        // Closed, however this ends, without a seal of its own name: a published build's seal
        // is left for the index's name.
        index.mode = Mode::Reader;
        if index.write_failed.get() {
            // Rolled back, but incomplete: built as usual instead, it fails as it would.
            return Err(err(
                &self.dest,
                "publishing a fresh build",
                "a write failed while it was built (a full disk?)",
            ));
        }
        let into_wal = || -> rusqlite::Result<String> {
            index
                .conn
                .execute_batch("PRAGMA synchronous=NORMAL; PRAGMA locking_mode=NORMAL;")?;
            index
                .conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        };
        let journal = into_wal().map_err(|e| err(&self.dest, "publishing a fresh build", e))?;
        if !journal.eq_ignore_ascii_case("wal") {
            return Err(err(
                &self.dest,
                "publishing a fresh build",
                format!("journal mode {journal}, not wal"),
            ));
        }
        drop(index);
        let synced = std::fs::File::open(&self.building).and_then(|f| f.sync_all());
        synced.map_err(|e| err(&self.dest, "syncing a fresh build", e))?;
        match std::fs::hard_link(&self.building, &self.dest) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(err(&self.dest, "publishing a fresh build", e)),
        }
        remove_with_companions(&self.building);
        if let Some(parent) = self.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            // The new name survives a crash from here on.
            let _ = std::fs::File::open(parent).and_then(|d| d.sync_all());
        }
        seal::leave(&self.dest);
        Ok(true)
    }
}

impl Drop for FreshBuild {
    /// A build that was not published leaves nothing behind.
    fn drop(&mut self) {
        if let Some(mut index) = self.index.take() {
            index.mode = Mode::Reader;
        }
        remove_with_companions(&self.building);
    }
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

fn remove_with_companions(path: &Path) {
    let _ = std::fs::remove_file(path);
    for c in COMPANIONS.iter().chain([&".sealed"]) {
        let _ = std::fs::remove_file(suffixed(path, c));
    }
}

/// Removes the builds of `dest` whose process is gone (cut short by a crash or a signal).
pub(super) fn remove_abandoned_builds(dest: &Path) {
    other_live_build(dest);
}

/// Whether another live process is building `dest`; builds whose process is gone are
/// removed.
fn other_live_build(dest: &Path) -> bool {
    let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) else {
        return false;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    let prefix = format!("{}{BUILDING}", name.to_string_lossy());
    let mut live = false;
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|rest| rest.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        if pid as u32 == std::process::id() {
            continue; // this process's own, left by an earlier attempt: replaced below
        }
        if alive(pid) {
            live = true;
        } else {
            remove_with_companions(&dir.join(&file));
        }
    }
    live
}

fn alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Journal;

    fn files_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_published_build_is_the_index_sealed_in_wal_mode_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("index.sqlite");
        let build = Index::begin_fresh(&dest)
            .unwrap()
            .expect("nothing there yet");
        assert!(
            !dest.exists(),
            "the index's name is taken only when published"
        );
        build
            .index()
            .conn
            .execute_batch("INSERT INTO removed_threads VALUES ('t', '/p', 1)")
            .unwrap();
        assert!(build.publish().unwrap());
        assert_eq!(
            files_in(dir.path()),
            ["index.sqlite", "index.sqlite.sealed"]
        );
        let index = Index::open(&dest, Journal::Wal).unwrap();
        assert!(
            index.sealed_at_open,
            "the seal vouches for the published file"
        );
        let journal: String = index
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        let kept: i64 = index
            .conn
            .query_row("SELECT count(*) FROM removed_threads", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 1);
    }

    #[test]
    fn an_index_made_meanwhile_by_another_process_stands_and_the_build_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("index.sqlite");
        let build = Index::begin_fresh(&dest)
            .unwrap()
            .expect("nothing there yet");
        let other = Index::open(&dest, Journal::Wal).unwrap();
        other
            .conn
            .execute_batch("INSERT INTO removed_threads VALUES ('theirs', '/p', 1)")
            .unwrap();
        build
            .index()
            .conn
            .execute_batch("INSERT INTO removed_threads VALUES ('mine', '/p', 1)")
            .unwrap();
        assert!(!build.publish().unwrap());
        let theirs: String = other
            .conn
            .query_row("SELECT thread_id FROM removed_threads", [], |r| r.get(0))
            .unwrap();
        assert_eq!(theirs, "theirs");
        drop(other);
        assert!(
            files_in(dir.path()).iter().all(|f| !f.contains(BUILDING)),
            "{:?}",
            files_in(dir.path())
        );
    }

    #[test]
    fn no_fresh_build_where_an_index_or_its_wal_is() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("index.sqlite");
        std::fs::write(
            suffixed(&dest, "-wal"),
            b"frames of an index deleted by hand",
        )
        .unwrap();
        assert!(Index::begin_fresh(&dest).unwrap().is_none());
        std::fs::remove_file(suffixed(&dest, "-wal")).unwrap();
        drop(Index::open(&dest, Journal::Wal).unwrap());
        assert!(Index::begin_fresh(&dest).unwrap().is_none());
    }

    #[test]
    fn an_abandoned_build_is_removed_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("index.sqlite");
        // A pid that cannot be a live process (beyond the kernel's maximum).
        let gone = suffixed(&dest, &format!("{BUILDING}{}", i32::MAX));
        std::fs::write(&gone, b"half a build").unwrap();
        std::fs::write(suffixed(&gone, "-journal"), b"").unwrap();
        let build = Index::begin_fresh(&dest)
            .unwrap()
            .expect("nothing there yet");
        assert!(!gone.exists() && !suffixed(&gone, "-journal").exists());
        assert!(build.publish().unwrap());
        assert_eq!(
            files_in(dir.path()),
            ["index.sqlite", "index.sqlite.sealed"]
        );
    }

    #[test]
    fn an_abandoned_build_is_removed_by_any_open_of_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("index.sqlite");
        drop(Index::open(&dest, Journal::Wal).unwrap());
        let gone = suffixed(&dest, &format!("{BUILDING}{}", i32::MAX));
        std::fs::write(&gone, b"half a build").unwrap();
        drop(Index::open(&dest, Journal::Wal).unwrap());
        assert!(!gone.exists());
    }

    #[test]
    fn a_build_in_which_a_write_failed_is_not_published() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("index.sqlite");
        let build = Index::begin_fresh(&dest)
            .unwrap()
            .expect("nothing there yet");
        build.index().set_degraded(Some("no space left".into()));
        build.index().set_degraded(None);
        assert!(build.publish().is_err());
        assert!(
            files_in(dir.path()).is_empty(),
            "{:?}",
            files_in(dir.path())
        );
    }

    #[test]
    fn while_another_process_builds_the_index_it_is_left_alone_and_none_is_started() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("index.sqlite");
        // This process's parent is alive.
        let parent = std::os::unix::process::parent_id();
        let live = suffixed(&dest, &format!("{BUILDING}{parent}"));
        std::fs::write(&live, b"half a build").unwrap();
        assert!(Index::begin_fresh(&dest).unwrap().is_none());
        assert_eq!(
            files_in(dir.path()),
            [live.file_name().unwrap().to_string_lossy()]
        );
    }
}
