//! The index is a cache: stale rows never give a wrong answer and are repaired, and a
//! corrupt index file is moved aside and rebuilt.

mod common;

use std::path::{Path, PathBuf};

use common::{jpath, tid, Fixture, Lib, Rollout};
use rolloutd::index::Index;

fn reader(fx: &Fixture) -> Index {
    Index::open_reader(&fx.index).unwrap()
}

/// Thread ids of the rows at `path`.
fn row_thread(index: &Index, path: &Path) -> Option<String> {
    index
        .file_at(path)
        .unwrap()
        .map(|f| f.head.thread_id.clone())
}

#[test]
fn a_row_stale_after_a_hand_move_still_answers_right_and_is_repaired() {
    let fx = Fixture::new();
    let a = Rollout::new(&tid(1), "2026-11-21T10:00:00.000Z", "/w", "moved by hand");
    let b = Rollout::new(&tid(2), "2026-11-21T11:00:00.000Z", "/w", "stays");
    let old = fx.write_active(&a);
    fx.write_active(&b);
    fx.index();
    assert_eq!(
        row_thread(&reader(&fx), &old).as_deref(),
        Some(a.id.as_str())
    );

    // Moved into another day directory behind the index's back.
    let new_dir = fx.home.join("sessions/2026/11/22");
    std::fs::create_dir_all(&new_dir).unwrap();
    let new = new_dir.join(a.file_name());
    std::fs::rename(&old, &new).unwrap();

    let r = fx.resolve(&a.id);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(jpath(&r.json["canonicalPath"]), new, "{r:?}");
    assert_eq!(r.json["title"], "moved by hand");

    // Repaired: the row now sits at the new path, the old one is gone.
    let idx = reader(&fx);
    assert_eq!(row_thread(&idx, &new).as_deref(), Some(a.id.as_str()));
    assert_eq!(row_thread(&idx, &old), None);
    assert_eq!(idx.files_for_thread(&a.id).unwrap().len(), 1);
    drop(idx);

    // A second answer agrees, and so do the other queries.
    let r = fx.resolve(&a.id);
    assert_eq!(jpath(&r.json["canonicalPath"]), new, "{r:?}");
    let r = fx.run_os(&["check-resume".as_ref(), a.id.as_ref(), new.as_ref()]);
    assert_eq!(r.code, 0, "{r:?}");
    let r = fx.resolve(&a.id[..8]);
    assert_eq!(jpath(&r.json["canonicalPath"]), new, "{r:?}");
}

/// Two threads indexed, then their files swapped by hand: A's content now sits under B's
/// name and the other way round. Returns (fixture, a, b, a's old path, b's old path).
fn swapped() -> (Fixture, Rollout, Rollout, PathBuf, PathBuf) {
    let fx = Fixture::new();
    let a = Rollout::new(&tid(3), "2026-11-21T10:00:00.000Z", "/w", "thread a");
    let b = Rollout::new(&tid(4), "2026-11-21T11:00:00.000Z", "/w", "thread b");
    let pa = fx.write_active(&a);
    let pb = fx.write_active(&b);
    fx.index();
    let tmp = fx.home.join("sessions/swap.tmp");
    std::fs::rename(&pa, &tmp).unwrap();
    std::fs::rename(&pb, &pa).unwrap();
    std::fs::rename(&tmp, &pb).unwrap();
    (fx, a, b, pa, pb)
}

#[test]
fn swapped_files_never_answer_with_the_other_threads_rollout() {
    // The bug Codex hit: a stale row pointing at another thread's JSONL.
    let (fx, a, b, pa, pb) = swapped();

    // A's row points at `pa`, which now holds B: that must not be the answer for A.
    let r = fx.resolve(&a.id);
    if r.code == 0 {
        assert_eq!(r.json["threadId"], a.id.as_str(), "{r:?}");
        assert_eq!(jpath(&r.json["canonicalPath"]), pb, "{r:?}");
    } else {
        assert_eq!(r.error_reason(), "notFound", "{r:?}");
    }
    // Path answers follow the content, not the name.
    let r = fx.run_os(&["check-resume".as_ref(), a.id.as_ref(), pa.as_ref()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.json["reason"], "otherThread", "{r:?}");
    assert_eq!(r.json["record"]["threadId"], b.id.as_str(), "{r:?}");
    let r = fx.resolve(&pb);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json["threadId"], a.id.as_str(), "{r:?}");

    // After a reconcile both threads are found where their content is.
    fx.index();
    for (t, p) in [(&a, &pb), (&b, &pa)] {
        let r = fx.resolve(&t.id);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(jpath(&r.json["canonicalPath"]), *p, "{r:?}");
        assert_eq!(r.json["title"], t.title.as_str());
    }
    let idx = reader(&fx);
    assert_eq!(row_thread(&idx, &pa).as_deref(), Some(b.id.as_str()));
    assert_eq!(row_thread(&idx, &pb).as_deref(), Some(a.id.as_str()));
}

#[test]
fn swapped_files_resolve_to_their_content_without_a_reindex() {
    // Found as a bug: the fallback walked file names only, so this was notFound.
    let (fx, a, b, pa, pb) = swapped();
    for (t, p) in [(&a, &pb), (&b, &pa)] {
        let r = fx.resolve(&t.id);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(jpath(&r.json["canonicalPath"]), *p, "{r:?}");
    }
}

#[test]
fn library_queries_repair_a_stale_row_in_place() {
    let fx = Fixture::new();
    let a = Rollout::new(&tid(5), "2026-11-21T10:00:00.000Z", "/w", "lib");
    let old = fx.write_active(&a);
    let lib = Lib::open(&fx);
    rolloutd::crawl::reconcile(
        &lib.homes,
        &lib.index,
        &rolloutd::rollout::HeadLimits::default(),
        &(),
    )
    .unwrap();
    let before = lib.index.file_at(&old).unwrap().unwrap();

    let new = fx.home.join("archived_sessions").join(a.file_name());
    std::fs::rename(&old, &new).unwrap();
    let q = lib.queries();
    let rec = q.resolve_thread(&a.id).unwrap();
    assert_eq!(rec.canonical_path, new);
    assert!(rec.archived);
    let after = lib.index.file_at(&new).unwrap().unwrap();
    assert!(after.archived);
    // Same file, new place: the identity followed the rename.
    assert_eq!(after.stamp.id, before.stamp.id);
    assert!(lib.index.file_at(&old).unwrap().is_none());
    assert_eq!(lib.index.counts().unwrap().files, 1);
}

/// The `<index>.corrupt-*` files next to the index.
fn moved_aside(fx: &Fixture) -> Vec<PathBuf> {
    let name = fx.index.file_name().unwrap().to_str().unwrap().to_owned();
    std::fs::read_dir(fx.index.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_str().unwrap();
            n.starts_with(&format!("{name}.corrupt-"))
                && !n.ends_with("-wal")
                && !n.ends_with("-shm")
                && !n.ends_with("-journal")
        })
        .collect()
}

/// Three threads, indexed.
fn indexed_fixture() -> (Fixture, Vec<Rollout>) {
    let fx = Fixture::new();
    let rs: Vec<Rollout> = (0..3)
        .map(|i| {
            Rollout::new(
                &tid(0x10 + i),
                &format!("2026-11-2{i}T10:00:00.000Z"),
                "/w",
                &format!("thread {i}"),
            )
        })
        .collect();
    for r in &rs {
        fx.write_active(r);
    }
    fx.index();
    (fx, rs)
}

/// After a corruption: the file was moved aside (with `original` bytes when given), the
/// queries answer, and a new valid index holds the threads again after `index`.
fn assert_rebuilt(fx: &Fixture, rs: &[Rollout], original: Option<&[u8]>) {
    let r = fx.resolve(&rs[1].id);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json["title"], "thread 1");
    assert!(
        r.stderr.contains("moved aside") || r.stderr.contains("corrupt"),
        "the rebuild is logged: {r:?}"
    );
    let aside = moved_aside(fx);
    assert_eq!(aside.len(), 1, "{aside:?}");
    if let Some(bytes) = original {
        assert_eq!(std::fs::read(&aside[0]).unwrap(), bytes);
    }

    let out = fx.index();
    assert_eq!(out["counts"]["threads"], 3, "{out}");
    let list = fx.run(&["list"]);
    assert_eq!(
        list.json["threads"].as_array().unwrap().len(),
        3,
        "{list:?}"
    );
    let idx = reader(fx);
    assert_eq!(idx.counts().unwrap().threads, 3);
    // Later runs open the rebuilt file without moving anything else aside.
    assert_eq!(moved_aside(fx).len(), 1);
}

#[test]
fn an_index_of_garbage_bytes_is_moved_aside_and_rebuilt() {
    let (fx, rs) = indexed_fixture();
    // Deterministic garbage (xorshift), not a SQLite header.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let garbage: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&fx.index, &garbage).unwrap();
    assert_rebuilt(&fx, &rs, Some(&garbage));
}

#[test]
fn a_zeroed_index_is_moved_aside_and_rebuilt() {
    let (fx, rs) = indexed_fixture();
    let len = std::fs::metadata(&fx.index).unwrap().len() as usize;
    assert!(len > 0);
    let zeros = vec![0u8; len];
    std::fs::write(&fx.index, &zeros).unwrap();
    assert_rebuilt(&fx, &rs, Some(&zeros));
}

#[test]
fn a_truncated_index_is_moved_aside_and_rebuilt() {
    let (fx, rs) = indexed_fixture();
    let bytes = std::fs::read(&fx.index).unwrap();
    assert!(bytes.starts_with(b"SQLite format 3\0"));
    // Keep the header page and lose the rest mid-page.
    let cut = bytes[..4096 + 1000].to_vec();
    std::fs::write(&fx.index, &cut).unwrap();
    assert_rebuilt(&fx, &rs, Some(&cut));
}

#[test]
fn an_index_from_a_newer_build_is_moved_aside_not_guessed_at() {
    let (fx, rs) = indexed_fixture();
    {
        let conn = rusqlite::Connection::open(&fx.index).unwrap();
        conn.pragma_update(None, "user_version", 999).unwrap();
    }
    assert_rebuilt(&fx, &rs, None);
}

#[test]
fn a_deleted_index_loses_nothing() {
    let (fx, rs) = indexed_fixture();
    for suffix in ["", "-wal", "-shm"] {
        let mut p = fx.index.as_os_str().to_owned();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    let r = fx.resolve(&rs[2].id);
    assert_eq!(r.code, 0, "{r:?}");
    let out = fx.index();
    assert_eq!(out["counts"]["threads"], 3, "{out}");
}

#[test]
fn list_and_problems_on_a_fresh_index_show_what_is_on_disk() {
    // Found as a bug: both answered from the empty index ("no threads", "no problems").
    let fx = Fixture::new();
    let a = Rollout::new(&tid(0x20), "2026-11-21T10:00:00.000Z", "/w", "on disk");
    fx.write_active(&a);
    let empty = fx.write_bytes(
        &a.day_dir()
            .join(format!("rollout-2026-11-21T10-00-00-{}.jsonl", tid(0x21))),
        b"",
    );
    let list = fx.run(&["list"]);
    assert_eq!(list.code, 0, "{list:?}");
    let threads = list.json["threads"].as_array().unwrap();
    assert_eq!(threads.len(), 1, "{list:?}");
    assert_eq!(threads[0]["threadId"], a.id.as_str());

    std::fs::remove_file(&fx.index).unwrap();
    let _ = std::fs::remove_file(fx.index.with_extension("sqlite-wal"));
    let _ = std::fs::remove_file(fx.index.with_extension("sqlite-shm"));
    let problems = fx.run(&["problems"]);
    assert_eq!(problems.code, 0, "{problems:?}");
    let entries = problems.json["problems"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{problems:?}");
    assert_eq!(jpath(&entries[0]["path"]), empty);
    assert_eq!(entries[0]["reason"], "empty");
}

#[test]
fn an_index_closed_cleanly_opens_without_the_full_check_once() {
    let (fx, _rs) = indexed_fixture();
    let open = || Index::open(&fx.index, rolloutd::index::Journal::Wal).unwrap();
    // The CLI's writer closed cleanly: the next writer trusts the file as it left it.
    assert!(open().sealed_at_open());
    // That writer closed cleanly too; a reader opened meanwhile changes nothing.
    drop(reader(&fx));
    assert!(open().sealed_at_open());
    // A writer that dies leaves no seal: the next open checks the whole file.
    std::mem::forget(open());
    assert!(!open().sealed_at_open());
}

#[test]
fn a_page_damaged_after_a_clean_close_is_still_found_and_rebuilt() {
    let (fx, rs) = indexed_fixture();
    let seal = PathBuf::from(format!("{}.sealed", fx.index.display()));
    assert!(seal.exists(), "the CLI's clean close left no seal");
    // Same size, one inner page overwritten at once: only a full check sees it.
    let mut bytes = std::fs::read(&fx.index).unwrap();
    let page = 4096;
    assert!(bytes.len() >= 4 * page, "{} bytes", bytes.len());
    for b in &mut bytes[2 * page..3 * page] {
        *b = 0xA5;
    }
    let original = bytes.clone();
    std::fs::write(&fx.index, &bytes).unwrap();
    assert_rebuilt(&fx, &rs, Some(&original));
}

/// A walk told to leave a home alone (its filesystem does not answer) touches nothing of
/// it: its rows stay, even those its unresolved spelling would make orphans, until a walk
/// that takes it in.
#[test]
fn a_home_left_alone_by_a_reconcile_keeps_its_rows() {
    struct LeaveAlone;
    impl rolloutd::crawl::DirObserver for LeaveAlone {
        fn leaves_alone(&self, _home: &rolloutd::identity::Home) -> bool {
            true
        }
    }
    let fx = Fixture::new();
    let a = Rollout::new(&tid(9), "2026-11-21T10:00:00.000Z", "/w", "left alone");
    let path = fx.write_active(&a);
    let lib = Lib::open(&fx);
    let limits = rolloutd::rollout::HeadLimits::default();
    rolloutd::crawl::reconcile(&lib.homes, &lib.index, &limits, &()).unwrap();
    std::fs::remove_file(&path).unwrap();
    // Known only by a spelling that is not its realpath, as a home that did not answer is.
    let link = fx.root.join("link-to-home");
    std::os::unix::fs::symlink(&fx.home, &link).unwrap();
    let unresolved =
        rolloutd::identity::Homes::of([rolloutd::identity::Home::unresolved(&link, &[])], &[]);
    let summary =
        rolloutd::crawl::reconcile_observed(&unresolved, &lib.index, &limits, &(), &LeaveAlone)
            .unwrap();
    assert_eq!(summary.removed, 0, "{summary:?}");
    assert!(lib.index.file_at(&path).unwrap().is_some());
    // Taken in again: the file is gone.
    let summary = rolloutd::crawl::reconcile(&lib.homes, &lib.index, &limits, &()).unwrap();
    assert_eq!(summary.removed, 1, "{summary:?}");
}
