//! Every class of bad file is classified with its reason, never blocks or crashes a crawl,
//! and leaves the good files resolvable.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::sys::{as_nobody, hand_state_to_nobody, is_root, mkfifo};
use common::{jpath, padding, tid, Fixture, Lib, Rollout};
use rolloutd::rollout::{BadFile, HeadLimits, ProblemKind};
use serde_json::Value;

const DAY: &str = "sessions/2026/11/21";

/// A rollout name for thread `n` in the fixture day directory.
fn bad_name(n: u32) -> PathBuf {
    Path::new(DAY).join(format!("rollout-2026-11-21T10-00-00-{}.jsonl", tid(n)))
}

/// `problems --json` as path → (reason, entry).
fn problems_by_path(fx: &Fixture) -> (HashMap<PathBuf, (String, Value)>, Vec<Value>) {
    let out = fx.run(&["problems"]);
    assert_eq!(out.code, 0, "{out:?}");
    let problems = out.json["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("{out:?}"))
        .iter()
        .map(|p| {
            (
                jpath(&p["path"]),
                (p["reason"].as_str().unwrap().to_owned(), p.clone()),
            )
        })
        .collect();
    let duplicates = out.json["duplicates"].as_array().unwrap().clone();
    (problems, duplicates)
}

struct BadHome {
    fx: Fixture,
    good: Vec<(Rollout, PathBuf)>,
    /// path → expected `problems` reason.
    expected: Vec<(PathBuf, &'static str)>,
    /// The file whose name says one id and whose head says another.
    mismatch: (PathBuf, String, String),
    /// (thread id, preferred path, other path) for plain+zst and active+archived.
    duplicates: Vec<(String, PathBuf, PathBuf)>,
}

fn bad_home() -> BadHome {
    let fx = Fixture::new();
    let mut good = Vec::new();
    for (n, created, title) in [
        (1, "2026-11-20T08:00:00.000Z", "good one"),
        (2, "2026-11-21T09:00:00.000Z", "good two"),
    ] {
        let r = Rollout::new(&tid(n), created, "/w", title);
        let p = fx.write_active(&r);
        good.push((r, p));
    }
    let mut expected = Vec::new();

    // A directory named like a rollout.
    let dir = fx.home.join(bad_name(0x10));
    std::fs::create_dir_all(&dir).unwrap();
    expected.push((dir, "directory"));

    // A FIFO named like a rollout: opening it for reading would block forever.
    let fifo = fx.home.join(bad_name(0x11));
    mkfifo(&fifo, 0o644);
    expected.push((fifo, "notRegularFile"));

    // Empty: Codex materializes a file with its first line, so zero bytes is broken.
    expected.push((fx.write_bytes(&bad_name(0x12), b""), "empty"));

    // First line is a record, but not session_meta.
    let r = Rollout::new(&tid(0x13), "2026-11-21T10:00:00.000Z", "/w", "x");
    let jsonl = r.jsonl();
    let rest = &jsonl[jsonl.iter().position(|&b| b == b'\n').unwrap() + 1..];
    expected.push((fx.write_bytes(&bad_name(0x13), rest), "notSessionMeta"));

    // Invalid JSON: a session_meta line cut in the middle, then a valid line.
    let meta = r.meta_line();
    let mut cut = meta[..meta.len() / 2].to_vec();
    cut.push(b'\n');
    cut.extend_from_slice(rest);
    expected.push((fx.write_bytes(&bad_name(0x14), &cut), "invalidJson"));

    // Invalid UTF-8 inside the base instructions of an otherwise fine session_meta.
    let r15 = Rollout::new(&tid(0x15), "2026-11-21T10:00:00.000Z", "/w", "x");
    let mut bytes = r15.jsonl();
    let at = bytes
        .windows(13)
        .position(|w| w == b"[text elided]")
        .unwrap();
    bytes[at + 1] = 0xff;
    bytes[at + 2] = 0xfe;
    expected.push((fx.write_bytes(&bad_name(0x15), &bytes), "invalidUtf8"));

    // A first line over the 4 MiB bound (5 MiB of base instructions).
    let big = Rollout::new(&tid(0x16), "2026-11-21T10:00:00.000Z", "/w", "x").base_len(5 << 20);
    expected.push((
        fx.write_bytes(&bad_name(0x16), &big.jsonl()),
        "headTooLarge",
    ));

    // A `.zst` that is not a zstd stream.
    let zst_rel = Path::new(DAY).join(format!(
        "rollout-2026-11-21T10-00-00-{}.jsonl.zst",
        tid(0x17)
    ));
    expected.push((
        fx.write_bytes(&zst_rel, &padding("not zstd at all ", 4096).into_bytes()),
        "corruptCompression",
    ));

    // A rollout-named symlink to a file outside the home is never followed.
    let outside = fx.root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let target = outside.join("secret.jsonl");
    std::fs::write(&target, r.jsonl()).unwrap();
    let link = fx.home.join(bad_name(0x1a));
    std::os::unix::fs::symlink(&target, &link).unwrap();
    expected.push((link, "outsideHome"));

    // A dangling rollout-named symlink.
    let dangling = fx.home.join(bad_name(0x1b));
    std::os::unix::fs::symlink(fx.home.join("sessions/nowhere.jsonl"), &dangling).unwrap();
    expected.push((dangling, "unreadable"));

    // The name says 0x18, the head says 0x19.
    let inner = Rollout::new(&tid(0x19), "2026-11-21T11:00:00.000Z", "/w", "mismatched");
    let mismatch_path = fx.write_bytes(&bad_name(0x18), &inner.jsonl());
    let mismatch = (mismatch_path, tid(0x18), tid(0x19));

    // Duplicates: plain + .zst of one id; active + archived of another.
    let d1 = Rollout::new(&tid(0x20), "2026-11-21T12:00:00.000Z", "/w", "dup zst");
    let d1_plain = fx.write_active(&d1);
    let d1_zst = fx.write_active_zst(&d1);
    let d2 = Rollout::new(&tid(0x21), "2026-11-21T13:00:00.000Z", "/w", "dup archived");
    let d2_active = fx.write_active(&d2);
    let d2_archived = fx.write_archived(&d2);
    let duplicates = vec![
        (d1.id.clone(), d1_plain, d1_zst),
        (d2.id.clone(), d2_active, d2_archived),
    ];

    BadHome {
        fx,
        good,
        expected,
        mismatch,
        duplicates,
    }
}

#[test]
fn every_bad_file_class_is_reported_and_good_files_still_resolve() {
    let h = bad_home();
    let fx = &h.fx;

    let out = fx.run(&["index"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.elapsed < Duration::from_secs(10),
        "index took {:?}",
        out.elapsed
    );
    assert_eq!(
        out.json["counts"]["problems"].as_u64().unwrap(),
        h.expected.len() as u64 + 1, // + the name mismatch
        "{out:?}"
    );

    let (problems, duplicates) = problems_by_path(fx);
    for (path, reason) in &h.expected {
        let got = problems.get(path).map(|(r, _)| r.as_str());
        assert_eq!(got, Some(*reason), "{}: {problems:#?}", path.display());
    }
    let (mpath, name_id, head_id) = &h.mismatch;
    let (reason, entry) = problems
        .get(mpath)
        .unwrap_or_else(|| panic!("{problems:#?}"));
    assert_eq!(reason, "nameMismatch");
    assert_eq!(entry["threadId"], head_id.as_str());
    let detail = entry["detail"].as_str().unwrap();
    assert!(
        detail.contains(name_id) && detail.contains(head_id),
        "{detail}"
    );
    assert_eq!(
        problems.len(),
        h.expected.len() + 1,
        "unexpected problems: {problems:#?}"
    );

    assert_eq!(duplicates.len(), 2, "{duplicates:#?}");
    for (id, preferred, other) in &h.duplicates {
        let d = duplicates
            .iter()
            .find(|d| d["threadId"] == id.as_str())
            .unwrap_or_else(|| panic!("no duplicate entry for {id}: {duplicates:#?}"));
        assert_eq!(d["reason"], "duplicate");
        let paths: Vec<PathBuf> = d["paths"].as_array().unwrap().iter().map(jpath).collect();
        assert_eq!(paths, vec![preferred.clone(), other.clone()]);
        // The preferred file (active, plain) is the one resolve answers with.
        let r = fx.resolve(id);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(jpath(&r.json["canonicalPath"]), *preferred, "{r:?}");
        assert_eq!(r.json["archived"], false);
        assert_eq!(r.json["compression"], "none");
        // Both paths are that thread's rollout.
        for p in [preferred, other] {
            let r = fx.run_os(&["check-resume".as_ref(), id.as_ref(), p.as_ref()]);
            assert_eq!(r.code, 0, "{r:?}");
        }
    }

    // Good files are untouched by their neighbours.
    for (r, p) in &h.good {
        let out = fx.resolve(&r.id);
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(jpath(&out.json["canonicalPath"]), *p);
        assert_eq!(out.json["title"], r.title.as_str());
        let out = fx.resolve(p);
        assert_eq!(out.code, 0, "{out:?}");
    }

    // The mismatched file is the rollout of the id inside it, never of the id in its name.
    let r = fx.resolve(head_id);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(jpath(&r.json["canonicalPath"]), *mpath);
    let r = fx.resolve(name_id);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.error_reason(), "notFound", "{r:?}");
    let r = fx.run_os(&["check-resume".as_ref(), name_id.as_ref(), mpath.as_ref()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.json["reason"], "otherThread", "{r:?}");
}

#[test]
fn bad_paths_get_typed_reasons_from_resolve_and_check_resume() {
    let h = bad_home();
    let fx = &h.fx;
    fx.index();
    for (path, kind) in &h.expected {
        let want = match *kind {
            "directory" => "directory",
            "notRegularFile" => "notRegularFile",
            "outsideHome" => "outsideHome",
            // The dangling symlink: its target is missing.
            "unreadable" => "missing",
            _ => "notRollout",
        };
        let r = fx.resolve(path);
        assert_eq!(r.code, 1, "{r:?}");
        assert_eq!(r.error_reason(), want, "{r:?}");
        assert!(r.error_message().contains(path.to_str().unwrap()), "{r:?}");
        if want == "notRollout" {
            assert!(r.error_message().contains(kind), "{r:?}");
        }
        let r = fx.run_os(&["check-resume".as_ref(), tid(1).as_ref(), path.as_ref()]);
        assert_eq!(r.code, 1, "{r:?}");
        assert_eq!(r.json["reason"], want, "{r:?}");
        let r = fx.run_os(&["same".as_ref(), path.as_ref(), path.as_ref()]);
        assert_eq!(r.code, 1, "{r:?}");
        assert_eq!(r.json["same"], false, "{r:?}");
    }
}

#[test]
fn bad_files_are_reported_without_an_index_run() {
    // A query on a fresh index walks the home; bad files met on the way must not stop it.
    let h = bad_home();
    let r = h.fx.resolve(&h.good[1].0.id);
    assert_eq!(r.code, 0, "{r:?}");
    let r = h.fx.resolve(&h.good[0].0.id[..8]);
    assert_eq!(r.code, 0, "{r:?}");
}

#[test]
fn fixed_and_deleted_bad_files_leave_the_problem_list() {
    let h = bad_home();
    let fx = &h.fx;
    fx.index();
    let (empty, _) = h.expected.iter().find(|(_, k)| *k == "empty").unwrap();
    let (fifo, _) = h
        .expected
        .iter()
        .find(|(_, k)| *k == "notRegularFile")
        .unwrap();
    // Codex finished writing the empty file; the FIFO was removed.
    let r = Rollout::new(&tid(0x12), "2026-11-21T10:00:00.000Z", "/w", "now complete");
    std::fs::write(empty, r.jsonl()).unwrap();
    std::fs::remove_file(fifo).unwrap();
    let out = fx.index();
    assert_eq!(
        out["counts"]["problems"].as_u64().unwrap(),
        h.expected.len() as u64 - 1,
        "{out}"
    );
    let (problems, _) = problems_by_path(fx);
    assert!(!problems.contains_key(empty), "{problems:#?}");
    assert!(!problems.contains_key(fifo), "{problems:#?}");
    let out = fx.resolve(&r.id);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["title"], "now complete");
}

#[test]
fn head_bound_is_configurable_and_a_line_at_the_bound_is_read() {
    // The 5 MiB first line is refused under the default 4 MiB bound and read under a bigger
    // one: the bound is about reading, not about what a rollout may be.
    let fx = Fixture::new();
    let big = Rollout::new(&tid(0x30), "2026-11-21T10:00:00.000Z", "/w", "big").base_len(5 << 20);
    let p = fx.write_active(&big);
    let err = rolloutd::rollout::inspect(&p, &HeadLimits::default()).unwrap_err();
    assert_eq!(err.kind, ProblemKind::HeadTooLarge);
    let roomy = HeadLimits {
        meta_line_max: 6 << 20,
        ..HeadLimits::default()
    };
    let ok = rolloutd::rollout::inspect(&p, &roomy).unwrap();
    assert_eq!(ok.head.thread_id, big.id);
    assert_eq!(ok.head.title.as_deref(), Some("big"));

    // Codex 0.169's ~21 KB line is far inside the default bound.
    let normal = Rollout::new(&tid(0x31), "2026-11-21T10:00:00.000Z", "/w", "normal");
    assert!(normal.meta_line().len() > 20_000 && normal.meta_line().len() < 23_000);
    let p = fx.write_active(&normal);
    assert!(rolloutd::rollout::inspect(&p, &HeadLimits::default()).is_ok());
}

#[test]
fn a_file_that_vanishes_between_discovery_and_read_is_dropped_not_reported() {
    let fx = Fixture::new();
    let a = Rollout::new(&tid(0x40), "2026-11-21T10:00:00.000Z", "/w", "going");
    let b = Rollout::new(&tid(0x41), "2026-11-21T11:00:00.000Z", "/w", "staying");
    let pa = fx.write_active(&a);
    fx.write_active(&b);
    let lib = Lib::open(&fx);
    rolloutd::crawl::reconcile(&lib.homes, &lib.index, &HeadLimits::default(), &()).unwrap();
    assert!(lib.index.file_at(&pa).unwrap().is_some());

    // Discover lists the file, then it disappears before its head is read.
    let roots = rolloutd::crawl::allowed_roots(&lib.homes);
    let (candidates, problems) =
        rolloutd::crawl::discover(&lib.homes.homes[0], &roots, &|n| n.contains(&a.id));
    assert!(problems.is_empty());
    assert_eq!(candidates.len(), 1);
    std::fs::remove_file(&pa).unwrap();
    let outcome = rolloutd::crawl::refresh(
        &lib.homes,
        &lib.index,
        &candidates[0],
        &HeadLimits::default(),
    )
    .unwrap()
    .unwrap_err();
    assert_eq!(outcome.kind, ProblemKind::Vanished, "{outcome}");
    // The row is gone and no problem was recorded: a vanished file is not a bad file.
    assert!(lib.index.file_at(&pa).unwrap().is_none());
    assert!(lib.index.problems().unwrap().is_empty());
    assert_eq!(lib.index.counts().unwrap().threads, 1);

    // The classification of the OS errors a mid-read disappearance produces.
    for err in [
        std::io::Error::from(std::io::ErrorKind::NotFound),
        std::io::Error::from_raw_os_error(libc::ENOENT),
        std::io::Error::from_raw_os_error(libc::ESTALE),
    ] {
        assert_eq!(BadFile::from_io(&pa, &err).kind, ProblemKind::Vanished);
    }
    assert_eq!(
        BadFile::from_io(&pa, &std::io::Error::from_raw_os_error(libc::EACCES)).kind,
        ProblemKind::PermissionDenied
    );
    assert_eq!(
        rolloutd::rollout::inspect(&pa, &HeadLimits::default())
            .unwrap_err()
            .kind,
        ProblemKind::Vanished
    );

    // The CLI agrees: the deleted thread is not found, the other one is.
    let r = fx.resolve(&a.id);
    assert_eq!(r.code, 1, "{r:?}");
    let r = fx.resolve(&b.id);
    assert_eq!(r.code, 0, "{r:?}");
}

/// Makes `path` and everything under it owned by `uid`.
#[test]
fn permission_denied_is_reported_and_the_rest_still_resolves() {
    let fx = Fixture::new();
    let good = Rollout::new(&tid(0x50), "2026-11-21T10:00:00.000Z", "/w", "readable");
    let good_path = fx.write_active(&good);
    let secret = Rollout::new(&tid(0x51), "2026-11-21T11:00:00.000Z", "/w", "secret");
    let secret_path = fx.write_active(&secret);
    std::fs::set_permissions(&secret_path, std::fs::Permissions::from_mode(0o000)).unwrap();

    let as_root = is_root();
    let run = |args: &[&std::ffi::OsStr]| {
        let mut c = fx.cmd();
        c.arg("--json").args(args);
        if as_root {
            // Root reads mode-000 files; run the binary as `nobody` so only that file is denied.
            as_nobody(&mut c);
        }
        let shown: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
        let shown: Vec<&str> = shown.iter().map(String::as_str).collect();
        common::Run::spawn(c, &shown)
    };
    if as_root {
        hand_state_to_nobody(&fx);
    }

    let out = run(&["index".as_ref()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["counts"]["threads"], 1, "{out:?}");
    let out = run(&["problems".as_ref()]);
    assert_eq!(out.code, 0, "{out:?}");
    let problems = out.json["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{out:?}");
    assert_eq!(jpath(&problems[0]["path"]), secret_path);
    assert_eq!(problems[0]["reason"], "permissionDenied", "{out:?}");

    let out = run(&["resolve".as_ref(), good.id.as_ref()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(jpath(&out.json["canonicalPath"]), good_path);
    let out = run(&["resolve".as_ref(), secret_path.as_ref()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_reason(), "permissionDenied", "{out:?}");
    assert!(
        out.stderr.contains(secret_path.to_str().unwrap()),
        "{out:?}"
    );
}
