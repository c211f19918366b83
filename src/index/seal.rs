//! The seal a writer leaves beside the index when it closes cleanly, so the next open can
//! skip `PRAGMA quick_check`, which reads every page (60 ms at 50,000 threads, ten times
//! that at 500,000) on every start.
//!
//! The seal holds the index file's stamp (identity, size, mtime, ctime) after a full
//! checkpoint. It counts only while the file still has exactly that stamp and no WAL
//! content waits to be replayed; anything else (a crash, another writer, a truncation, a
//! file zeroed or replaced) means a full check. The seal is written only once the clock has
//! moved past the file's ctime, so a later write, even within the kernel's coarse clock tick,
//! cannot leave the ctime as sealed. Every writer removes the seal when it opens.

use std::path::{Path, PathBuf};

use crate::identity::Stamp;

const FORMAT: &str = "rolloutd-index-seal-1";

fn seal_path(index: &Path) -> PathBuf {
    let mut p = index.as_os_str().to_owned();
    p.push(".sealed");
    PathBuf::from(p)
}

fn text(s: &Stamp) -> String {
    format!(
        "{FORMAT} {} {} {} {} {}\n",
        s.id.dev, s.id.ino, s.size, s.mtime_ns, s.ctime_ns
    )
}

/// Removes the seal and tells whether it vouches for `index` as it is now.
pub(super) fn take(index: &Path) -> bool {
    let path = seal_path(index);
    let sealed = std::fs::read_to_string(&path);
    if sealed.is_err() {
        return false;
    }
    // Removed before the writer may change the file: a crash from here on leaves no seal.
    if std::fs::remove_file(&path).is_err() {
        return false;
    }
    // WAL frames or a rollback journal would change the file once replayed.
    let pending = ["-wal", "-journal"].iter().any(|suffix| {
        let mut p = index.as_os_str().to_owned();
        p.push(suffix);
        std::fs::metadata(PathBuf::from(p)).is_ok_and(|m| m.len() > 0)
    });
    match (sealed, Stamp::of(index)) {
        (Ok(sealed), Ok(now)) => !pending && sealed == text(&now),
        _ => false,
    }
}

/// Leaves a seal for `index`, whose every change is in the main file (checkpointed). No
/// seal when that cannot be made sure of.
pub(super) fn leave(index: &Path) {
    let path = seal_path(index);
    let Ok(before) = Stamp::of(index) else { return };
    let sealed = text(&before);
    // Bounded: the coarse clock ticks every few milliseconds.
    for _ in 0..10 {
        if std::fs::write(&path, &sealed).is_err() {
            break;
        }
        let seal_ctime = Stamp::of(&path).map(|s| s.ctime_ns);
        let after = Stamp::of(index);
        match (seal_ctime, after) {
            // Sealed after the clock moved past the file's last change, which is unchanged.
            (Ok(t), Ok(after)) if t > before.ctime_ns && text(&after) == sealed => return,
            (Ok(t), Ok(after)) if t <= before.ctime_ns && text(&after) == sealed => {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            _ => break,
        }
    }
    let _ = std::fs::remove_file(&path);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index_file(dir: &Path) -> PathBuf {
        let p = dir.join("index.sqlite");
        std::fs::write(&p, b"stand-in for an index").unwrap();
        p
    }

    #[test]
    fn a_seal_vouches_once_for_the_file_it_was_left_for() {
        let dir = tempfile::tempdir().unwrap();
        let index = index_file(dir.path());
        leave(&index);
        assert!(seal_path(&index).exists());
        assert!(take(&index));
        assert!(!seal_path(&index).exists(), "a seal is used once");
        assert!(!take(&index));
    }

    #[test]
    fn a_write_right_after_the_seal_voids_it_even_at_the_same_size() {
        let dir = tempfile::tempdir().unwrap();
        let index = index_file(dir.path());
        leave(&index);
        // Same length, at once: only the ctime can tell, and the seal waited for the tick.
        std::fs::write(&index, b"STAND-IN FOR AN INDEX").unwrap();
        assert!(!take(&index));
    }

    #[test]
    fn pending_wal_content_voids_the_seal() {
        let dir = tempfile::tempdir().unwrap();
        let index = index_file(dir.path());
        leave(&index);
        std::fs::write(dir.path().join("index.sqlite-wal"), b"frames").unwrap();
        assert!(!take(&index));
    }

    #[test]
    fn a_replaced_or_truncated_file_voids_the_seal() {
        let dir = tempfile::tempdir().unwrap();
        let index = index_file(dir.path());
        leave(&index);
        let other = dir.path().join("other");
        std::fs::write(&other, b"stand-in for an index").unwrap();
        std::fs::rename(&other, &index).unwrap();
        assert!(!take(&index));

        leave(&index);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&index)
            .unwrap()
            .set_len(3)
            .unwrap();
        assert!(!take(&index));
    }
}
