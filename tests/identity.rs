//! Identity, not spelling: a symlinked home, `same`, and `check-resume`.

mod common;

use std::path::{Path, PathBuf};

use common::{jpath, tid, Fixture, Rollout};

/// `home/u/.codex/...` and `mnt/users/u/.codex/...`, the two spellings of one rollout path.
fn spellings(fx: &Fixture, written: &Path) -> (PathBuf, PathBuf) {
    let rel = written.strip_prefix(&fx.home).unwrap();
    (
        fx.home.join(rel),
        fx.root.join("mnt/users/u/.codex").join(rel),
    )
}

#[test]
fn symlinked_home_resolves_by_both_spellings_to_one_canonical_path() {
    let fx = Fixture::symlinked();
    let a = Rollout::new(
        &tid(1),
        "2026-11-21T19:02:43.635Z",
        "/home/dev/work",
        "fix the cart",
    );
    let written = fx.write_active(&a);
    let (via_link, via_real) = spellings(&fx, &written);
    assert_ne!(via_link, via_real);
    let canonical = dunce::canonicalize(&via_real).unwrap();
    assert_eq!(canonical, via_real, "mnt spelling is the realpath");

    let summary = fx.index();
    assert_eq!(summary["counts"]["threads"], 1, "{summary}");

    let by_link = fx.resolve(&via_link);
    let by_real = fx.resolve(&via_real);
    let by_id = fx.resolve(&a.id);
    for r in [&by_link, &by_real, &by_id] {
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(r.json["threadId"], a.id.as_str(), "{r:?}");
        assert_eq!(jpath(&r.json["canonicalPath"]), canonical, "{r:?}");
        // `path` is the spelling under the home as configured: what Codex writes.
        assert_eq!(jpath(&r.json["path"]), via_link, "{r:?}");
        let aliases: Vec<PathBuf> = r.json["aliases"]
            .as_array()
            .unwrap()
            .iter()
            .map(jpath)
            .collect();
        assert!(aliases.contains(&via_real), "{r:?}");
        assert_eq!(r.json["title"], "fix the cart", "{r:?}");
        assert_eq!(r.json["cwd"], "/home/dev/work");
        assert_eq!(r.json["archived"], false);
        assert_eq!(r.json["compression"], "none");
    }
    assert_eq!(by_link.json, by_real.json);
}

#[test]
fn symlinked_home_resolves_without_an_index_run_first() {
    // No `index` command: the first query must find the file by walking the home.
    let fx = Fixture::symlinked();
    let a = Rollout::new(&tid(2), "2026-11-21T19:02:43.635Z", "/w", "hello");
    let written = fx.write_active(&a);
    let (via_link, via_real) = spellings(&fx, &written);
    let r = fx.resolve(&a.id);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(jpath(&r.json["canonicalPath"]), via_real);
    let r = fx.resolve(&via_link);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(jpath(&r.json["canonicalPath"]), via_real);
}

#[test]
fn same_is_true_for_two_spellings_and_a_hardlink_false_for_two_threads() {
    let fx = Fixture::symlinked();
    let a = Rollout::new(&tid(3), "2026-11-21T19:02:43.635Z", "/w", "first");
    let b = Rollout::new(&tid(4), "2026-11-21T19:05:00.000Z", "/w", "second");
    let wa = fx.write_active(&a);
    let wb = fx.write_active(&b);
    fx.index();
    let (a_link, a_real) = spellings(&fx, &wa);

    // Two spellings of one file.
    let r = fx.run_os(&["same".as_ref(), a_link.as_ref(), a_real.as_ref()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json["same"], true, "{r:?}");
    assert_eq!(r.json["a"]["threadId"], a.id.as_str());
    assert_eq!(r.json["b"]["threadId"], a.id.as_str());
    assert_eq!(r.json["a"]["fileId"], r.json["b"]["fileId"]);

    // A hard link (another name, same inode) in the same day directory.
    let link = wa.parent().unwrap().join("hardlink-of-first.jsonl");
    std::fs::hard_link(&wa, &link).unwrap();
    let r = fx.run_os(&["same".as_ref(), link.as_ref(), a_real.as_ref()]);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json["same"], true, "{r:?}");

    // A byte-identical copy is a different file: identity is not content.
    let copy = wa.parent().unwrap().join("copy-of-first.jsonl");
    std::fs::copy(&wa, &copy).unwrap();
    let r = fx.run_os(&["same".as_ref(), copy.as_ref(), a_link.as_ref()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.json["same"], false, "{r:?}");
    assert_eq!(r.json["a"]["threadId"], a.id.as_str(), "{r:?}");

    // Two different threads' files.
    let r = fx.run_os(&["same".as_ref(), a_link.as_ref(), wb.as_ref()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.json["same"], false, "{r:?}");
    assert_eq!(r.json["a"]["threadId"], a.id.as_str());
    assert_eq!(r.json["b"]["threadId"], b.id.as_str());
    assert_ne!(r.json["a"]["fileId"], r.json["b"]["fileId"]);
}

#[test]
fn check_resume_ok_directory_other_thread_and_missing() {
    let fx = Fixture::symlinked();
    let a = Rollout::new(&tid(5), "2026-11-21T19:02:43.635Z", "/w", "first");
    let b = Rollout::new(&tid(6), "2026-11-21T19:05:00.000Z", "/w", "second");
    let wa = fx.write_active(&a);
    let wb = fx.write_active(&b);
    fx.index();
    let (a_link, a_real) = spellings(&fx, &wa);

    // ok: both spellings, the alias (symlinked) one being what Codex sends.
    for p in [&a_link, &a_real] {
        let r = fx.run_os(&["check-resume".as_ref(), a.id.as_ref(), p.as_ref()]);
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(r.json["ok"], true, "{r:?}");
        assert!(r.json.get("reason").is_none(), "{r:?}");
        assert_eq!(r.json["record"]["threadId"], a.id.as_str());
        assert_eq!(jpath(&r.json["record"]["canonicalPath"]), a_real);
    }

    // directory: the Codex home itself (what Desktop once sent as a resume path).
    for home in [fx.home.clone(), fx.real_home()] {
        let r = fx.run_os(&["check-resume".as_ref(), a.id.as_ref(), home.as_ref()]);
        assert_eq!(r.code, 1, "{r:?}");
        assert_eq!(r.json["ok"], false, "{r:?}");
        assert_eq!(r.json["reason"], "directory", "{r:?}");
    }

    // otherThread: B's rollout offered for A.
    let r = fx.run_os(&["check-resume".as_ref(), a.id.as_ref(), wb.as_ref()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.json["reason"], "otherThread", "{r:?}");
    assert_eq!(r.json["record"]["threadId"], b.id.as_str(), "{r:?}");

    // missing: B's file deleted after indexing.
    std::fs::remove_file(&wb).unwrap();
    let r = fx.run_os(&["check-resume".as_ref(), b.id.as_ref(), wb.as_ref()]);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.json["reason"], "missing", "{r:?}");
    let r = fx.resolve(&b.id);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.error_reason(), "notFound", "{r:?}");
}

#[test]
fn lexical_alias_from_config_maps_a_spelling_that_does_not_exist() {
    // `old/u` exists nowhere on disk; the config says it is `mnt/users/u`. Codex rows written
    // before a home moved carry such spellings.
    let (fx, a, old, real) = aliased_home(7);
    assert!(!old.exists());

    let r = fx.resolve(&old);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json["threadId"], a.id.as_str());
    assert_eq!(jpath(&r.json["canonicalPath"]), real);
    let aliases: Vec<PathBuf> = r.json["aliases"]
        .as_array()
        .unwrap()
        .iter()
        .map(jpath)
        .collect();
    assert!(aliases.contains(&old), "{r:?}");

    let r = fx.run_os(&["check-resume".as_ref(), a.id.as_ref(), old.as_ref()]);
    assert_eq!(r.code, 0, "{r:?}");
}

/// A home with a configured alias `old/u` ↔ `mnt/users/u` where `old/u` does not exist;
/// returns the fixture, the rollout, its `old/u` spelling and its realpath.
fn aliased_home(n: u32) -> (Fixture, Rollout, PathBuf, PathBuf) {
    let mut fx = Fixture::symlinked();
    let config = fx.root.join("user/rolloutd.toml");
    let toml = format!(
        "aliases = [[{:?}, {:?}]]\n",
        fx.root.join("old/u").to_str().unwrap(),
        fx.root.join("mnt/users/u").to_str().unwrap()
    );
    std::fs::write(&config, toml).unwrap();
    fx.config = Some(config);
    let a = Rollout::new(&tid(n), "2026-11-21T19:02:43.635Z", "/w", "first");
    let written = fx.write_active(&a);
    fx.index();
    let (_, real) = spellings(&fx, &written);
    let rel = written.strip_prefix(&fx.home).unwrap();
    let old = fx.root.join("old/u/.codex").join(rel);
    (fx, a, old, real)
}

#[test]
fn same_is_true_for_a_configured_alias_spelling() {
    // Found as a bug: `same` statted only the given spelling (exists:false, same:false).
    let (fx, a, old, real) = aliased_home(10);
    assert!(!old.exists());
    let r = fx.run_os(&["same".as_ref(), old.as_ref(), real.as_ref()]);
    assert_eq!(r.json["a"]["threadId"], a.id.as_str(), "{r:?}");
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json["same"], true, "{r:?}");
}

#[test]
fn missing_stale_spelling_names_the_new_location() {
    let fx = Fixture::symlinked();
    let a = Rollout::new(&tid(8), "2026-11-21T19:02:43.635Z", "/w", "first");
    let written = fx.write_active(&a);
    fx.index();
    let (via_link, _) = spellings(&fx, &written);

    // Archive by hand, as `codex archive` does: a rename into the flat archive.
    let archived = fx.home.join("archived_sessions").join(a.file_name());
    std::fs::rename(&written, &archived).unwrap();
    let archived_real = dunce::canonicalize(&archived).unwrap();

    let r = fx.resolve(&via_link);
    assert_eq!(r.code, 1, "{r:?}");
    assert_eq!(r.error_reason(), "missing", "{r:?}");
    let message = r.error_message();
    // In the spelling the user configured, as records use (issue 13).
    assert!(
        message.contains(archived.to_str().unwrap()),
        "message should name the new location {}: {r:?}",
        archived.display()
    );
    assert!(
        r.stderr.contains(via_link.to_str().unwrap()),
        "stderr names the path: {r:?}"
    );

    let r = fx.resolve(&a.id);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json["archived"], true);
    assert_eq!(jpath(&r.json["canonicalPath"]), archived_real);
}

#[test]
fn file_symlink_is_followed_and_directory_symlink_is_not() {
    let fx = Fixture::new();
    let a = Rollout::new(&tid(9), "2026-11-21T19:02:43.635Z", "/w", "linked");
    // The real file lives in another day dir of the same home; a rollout-named link points at it.
    let target = fx.write_bytes(
        &Path::new("sessions/2026/11/20").join(a.file_name()),
        &a.jsonl(),
    );
    let link_dir = fx.home.join("sessions/2026/11/21");
    std::fs::create_dir_all(&link_dir).unwrap();
    std::os::unix::fs::symlink(&target, link_dir.join(a.file_name())).unwrap();
    // A directory symlink looping back to sessions/ must not be walked into.
    std::os::unix::fs::symlink(fx.home.join("sessions"), link_dir.join("loop")).unwrap();

    let summary = fx.index();
    assert_eq!(summary["counts"]["files"], 1, "{summary}");
    let r = fx.resolve(&a.id);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(jpath(&r.json["canonicalPath"]), target);
    let problems = fx.run(&["problems"]);
    assert_eq!(
        problems.json["duplicates"].as_array().unwrap().len(),
        0,
        "{problems:?}"
    );
}
