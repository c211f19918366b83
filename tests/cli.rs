//! The query CLI end to end: resolve by id, prefix and path; `.zst` and archived rollouts;
//! list paging and filters; incremental `index`; exit codes.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::{jpath, tid, Fixture, Rollout, TitleShape};
use serde_json::Value;

#[test]
fn zst_and_archived_rollouts_resolve_with_their_compression_and_archive_state() {
    let fx = Fixture::new();
    let plain = Rollout::new(&tid(1), "2026-11-20T08:00:00.000Z", "/w/a", "plain one");
    let zst = Rollout::new(
        &tid(2),
        "2026-11-20T09:00:00.000Z",
        "/w/b",
        "compressed one",
    );
    let arch = Rollout::new(&tid(3), "2026-11-19T10:00:00.000Z", "/w/c", "archived one");
    let arch_zst = Rollout::new(&tid(4), "2026-11-18T10:00:00.000Z", "/w/d", "archived zst");
    let p_plain = fx.write_active(&plain);
    let p_zst = fx.write_active_zst(&zst);
    let p_arch = fx.write_archived(&arch);
    let p_arch_zst = fx.write_bytes(
        &Path::new("archived_sessions").join(format!("{}.zst", arch_zst.file_name())),
        &common::zstd_bytes(&arch_zst.jsonl()),
    );

    let summary = fx.index();
    assert_eq!(summary["counts"]["threads"], 4, "{summary}");
    assert_eq!(summary["counts"]["archived"], 2, "{summary}");
    assert_eq!(summary["counts"]["problems"], 0, "{summary}");

    for (r, path, archived, compression) in [
        (&plain, &p_plain, false, "none"),
        (&zst, &p_zst, false, "zstd"),
        (&arch, &p_arch, true, "none"),
        (&arch_zst, &p_arch_zst, true, "zstd"),
    ] {
        for target in [r.id.as_ref(), path.as_os_str()] {
            let out = fx.resolve(target);
            assert_eq!(out.code, 0, "{out:?}");
            assert_eq!(out.json["threadId"], r.id.as_str(), "{out:?}");
            assert_eq!(jpath(&out.json["canonicalPath"]), *path, "{out:?}");
            assert_eq!(out.json["archived"], archived, "{out:?}");
            assert_eq!(out.json["compression"], compression, "{out:?}");
            assert_eq!(out.json["title"], r.title.as_str(), "{out:?}");
            assert_eq!(out.json["cwd"], r.cwd.as_str(), "{out:?}");
            assert_eq!(
                out.json["sizeBytes"].as_u64().unwrap(),
                std::fs::metadata(path).unwrap().len()
            );
            assert_eq!(out.json["cliVersion"], "0.169.0");
            assert_eq!(out.json["originator"], "codex_exec");
            assert_eq!(out.json["source"], "exec");
            assert_eq!(out.json["createdAt"], r.created.as_str(), "{out:?}");
        }
    }
    // The compressed file is really compressed: its head is not plain text on disk.
    let raw = std::fs::read(&p_zst).unwrap();
    assert!(!raw.windows(12).any(|w| w == b"session_meta"));
}

#[test]
fn resolve_by_unique_prefix_and_refuse_ambiguous_or_short_prefixes() {
    let fx = Fixture::new();
    let a = Rollout::new(&tid(0x11), "2026-11-20T08:00:00.000Z", "/w", "a");
    // Two ids sharing their first 13 characters.
    let b = Rollout::new(
        "01a2aaaa-0001-7000-8000-000000000001",
        "2026-11-20T09:00:00.000Z",
        "/w",
        "b",
    );
    let c = Rollout::new(
        "01a2aaaa-0002-7000-8000-000000000002",
        "2026-11-20T10:00:00.000Z",
        "/w",
        "c",
    );
    for r in [&a, &b, &c] {
        fx.write_active(r);
    }
    fx.index();

    let out = fx.resolve(&a.id[..8]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["threadId"], a.id.as_str());
    // Case does not matter for hex.
    let out = fx.resolve(a.id[..10].to_ascii_uppercase());
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["threadId"], a.id.as_str());

    let out = fx.resolve("01a2aaaa-0002");
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["threadId"], c.id.as_str());

    let out = fx.resolve("01a2aaaa");
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.error_reason(), "ambiguous", "{out:?}");
    assert!(out.error_message().contains(&b.id), "{out:?}");
    assert!(out.error_message().contains(&c.id), "{out:?}");
    assert!(!out.stderr.trim().is_empty() && out.stderr.trim().lines().count() == 1);

    let out = fx.resolve("01a2aaa");
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.error_reason(), "badId", "{out:?}");

    let out = fx.resolve("01a2ffff");
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_reason(), "notFound", "{out:?}");
    let out = fx.resolve(tid(0x99));
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_reason(), "notFound", "{out:?}");
}

#[test]
fn a_rollout_written_after_indexing_resolves_by_prefix_and_id() {
    let fx = Fixture::new();
    fx.write_active(&Rollout::new(
        &tid(0x21),
        "2026-11-20T08:00:00.000Z",
        "/w",
        "a",
    ));
    fx.index();
    let late = Rollout::new(&tid(0x22), "2026-11-21T08:00:00.000Z", "/w", "late");
    let p = fx.write_active(&late);
    let out = fx.resolve(&late.id[..8]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(jpath(&out.json["canonicalPath"]), p);
    // Read-repair wrote the row.
    let idx = rolloutd::index::Index::open_reader(&fx.index).unwrap();
    let row = idx.file_at(&p).unwrap().expect("row written by the query");
    assert_eq!(row.head.thread_id, late.id);
    drop(idx);
    let list = fx.run(&["list"]);
    assert!(ids(&list.json).contains(&late.id), "{list:?}");
}

#[test]
fn resolve_outside_the_home_is_refused_without_reading() {
    let fx = Fixture::new();
    let out = fx.resolve("/etc/passwd");
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_reason(), "outsideHome", "{out:?}");
    assert!(out.stderr.contains("/etc/passwd"), "{out:?}");

    // `..` cannot climb out of the home either.
    let sneaky = fx.home.join("sessions/../../../../../../../../etc/passwd");
    let out = fx.resolve(&sneaky);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_reason(), "outsideHome", "{out:?}");

    // A file inside the home but outside the rollout directories is not a rollout.
    let cfg = fx.write_bytes(Path::new("config.toml"), b"model = \"x\"\n");
    let out = fx.resolve(&cfg);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_reason(), "notRollout", "{out:?}");
}

#[test]
fn resolve_a_relative_path_against_the_current_directory() {
    let fx = Fixture::new();
    let a = Rollout::new(&tid(0x31), "2026-11-20T08:00:00.000Z", "/w", "rel");
    let p = fx.write_active(&a);
    let mut c = fx.cmd();
    c.current_dir(&fx.home)
        .arg("--json")
        .arg("resolve")
        .arg(p.strip_prefix(&fx.home).unwrap());
    let out = common::Run::spawn(c, &["resolve", "<relative>"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(jpath(&out.json["canonicalPath"]), p);
}

/// Six threads over three days, two cwds, one archived.
fn list_fixture() -> (Fixture, Vec<Rollout>) {
    let fx = Fixture::new();
    let rs = vec![
        Rollout::new(
            &tid(0x41),
            "2026-11-18T08:00:00.000Z",
            "/w/alpha",
            "Refactor parser",
        ),
        Rollout::new(
            &tid(0x42),
            "2026-11-19T08:00:00.000Z",
            "/w/beta",
            "fix flaky test",
        ),
        Rollout::new(
            &tid(0x43),
            "2026-11-20T08:00:00.000Z",
            "/w/alpha",
            "add CART feature",
        )
        .shape(TitleShape::LegacyEvent),
        Rollout::new(
            &tid(0x44),
            "2026-11-20T09:30:00.000Z",
            "/w/beta",
            "write docs",
        )
        .shape(TitleShape::ItemCompletedOnly),
        Rollout::new(
            &tid(0x45),
            "2026-11-21T08:00:00.000Z",
            "/w/alpha",
            "cart checkout bug",
        ),
        Rollout::new(
            &tid(0x46),
            "2026-11-17T08:00:00.000Z",
            "/w/alpha",
            "old archived cart",
        ),
    ];
    for r in &rs[..5] {
        fx.write_active(r);
    }
    fx.write_archived(&rs[5]);
    fx.index();
    (fx, rs)
}

fn ids(v: &Value) -> Vec<String> {
    v["threads"]
        .as_array()
        .unwrap_or_else(|| panic!("no threads in {v}"))
        .iter()
        .map(|t| t["threadId"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn list_is_newest_first_with_filters() {
    let (fx, rs) = list_fixture();
    let id = |i: usize| rs[i].id.clone();

    let out = fx.run(&["list"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(ids(&out.json), vec![id(4), id(3), id(2), id(1), id(0)]);
    assert!(out.json["nextCursor"].is_null(), "{out:?}");
    let titles: Vec<&str> = out.json["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["title"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        titles,
        vec![
            "cart checkout bug",
            "write docs",
            "add CART feature",
            "fix flaky test",
            "Refactor parser"
        ]
    );

    let out = fx.run(&["list", "--archived"]);
    assert_eq!(ids(&out.json), vec![id(5)], "{out:?}");
    assert_eq!(out.json["threads"][0]["archived"], true);

    let out = fx.run(&["list", "--all"]);
    assert_eq!(
        ids(&out.json),
        vec![id(4), id(3), id(2), id(1), id(0), id(5)],
        "{out:?}"
    );

    let out = fx.run(&["list", "--cwd", "/w/alpha"]);
    assert_eq!(ids(&out.json), vec![id(4), id(2), id(0)], "{out:?}");
    let out = fx.run(&["list", "--cwd", "/w/alpha/", "--all"]);
    assert_eq!(ids(&out.json), vec![id(4), id(2), id(0), id(5)], "{out:?}");
    let out = fx.run(&["list", "--cwd", "/w/gamma"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(ids(&out.json).is_empty());

    // Case-insensitive substring of the title.
    let out = fx.run(&["list", "--search", "cart"]);
    assert_eq!(ids(&out.json), vec![id(4), id(2)], "{out:?}");
    let out = fx.run(&["list", "--search", "CART", "--all"]);
    assert_eq!(ids(&out.json), vec![id(4), id(2), id(5)], "{out:?}");
    let out = fx.run(&["list", "--search", "cart", "--cwd", "/w/beta"]);
    assert!(ids(&out.json).is_empty(), "{out:?}");
    // LIKE wildcards are literal.
    let out = fx.run(&["list", "--search", "%"]);
    assert!(ids(&out.json).is_empty(), "{out:?}");
    // The injected <environment_context> never becomes the title.
    let out = fx.run(&["list", "--search", "environment_context"]);
    assert!(ids(&out.json).is_empty(), "{out:?}");
}

#[test]
fn list_pages_with_a_cursor_without_gaps_or_repeats() {
    let (fx, rs) = list_fixture();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut args = vec!["list", "--all", "--limit", "2"];
        if let Some(c) = &cursor {
            args.push("--cursor");
            args.push(c);
        }
        let out = fx.run(&args);
        assert_eq!(out.code, 0, "{out:?}");
        let page = ids(&out.json);
        assert!(page.len() <= 2, "{out:?}");
        seen.extend(page);
        pages += 1;
        assert!(pages <= 4, "paging does not end: {seen:?}");
        match out.json["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = [4, 3, 2, 1, 0, 5]
        .iter()
        .map(|&i| rs[i].id.clone())
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(pages, 3);

    let out = fx.run(&["list", "--cursor", "garbage"]);
    assert_eq!(out.code, 2, "{out:?}");
}

#[test]
fn index_is_incremental_and_forgets_removed_files() {
    let fx = Fixture::new();
    let rs: Vec<Rollout> = (0..5)
        .map(|i| {
            Rollout::new(
                &tid(0x50 + i),
                &format!("2026-11-2{i}T08:00:00.000Z"),
                "/w",
                "t",
            )
        })
        .collect();
    let paths: Vec<_> = rs.iter().map(|r| fx.write_active(r)).collect();

    let first = fx.index();
    assert_eq!(first["summary"]["read"], 5, "{first}");
    assert_eq!(first["counts"]["threads"], 5, "{first}");
    let second = fx.index();
    assert_eq!(second["summary"]["read"], 0, "{second}");
    assert_eq!(second["summary"]["unchanged"], 5, "{second}");

    std::fs::remove_file(&paths[0]).unwrap();
    // An append changes size and mtime: the head is read again.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&paths[1])
        .unwrap();
    std::io::Write::write_all(&mut f, b"{\"timestamp\":\"2026-11-21T08:00:01.000Z\",\"ordinal\":99,\"type\":\"event_msg\",\"payload\":{\"type\":\"task_started\"}}\n").unwrap();
    drop(f);
    let third = fx.index();
    assert_eq!(third["summary"]["removed"], 1, "{third}");
    assert_eq!(third["summary"]["read"], 1, "{third}");
    assert_eq!(third["summary"]["unchanged"], 3, "{third}");
    assert_eq!(third["counts"]["threads"], 4, "{third}");

    let out = fx.resolve(&rs[0].id);
    assert_eq!(out.code, 1, "{out:?}");
    let out = fx.resolve(&rs[1].id);
    assert_eq!(
        out.json["sizeBytes"].as_u64().unwrap(),
        std::fs::metadata(&paths[1]).unwrap().len()
    );
}

#[test]
fn human_output_and_exit_codes() {
    let fx = Fixture::new();
    let a = Rollout::new(&tid(0x61), "2026-11-20T08:00:00.000Z", "/w", "human");
    let p = fx.write_active(&a);
    let out = common::Run::spawn(
        {
            let mut c = fx.cmd();
            c.arg("resolve").arg(&a.id);
            c
        },
        &["resolve"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(&a.id) && out.stdout.contains(p.to_str().unwrap()));

    // Bad usage is exit 2.
    let out = fx.run(&["no-such-command"]);
    assert_eq!(out.code, 2, "{out:?}");
    let out = fx.run(&["list", "--archived", "--all"]);
    assert_eq!(out.code, 2, "{out:?}");

    // --json prints exactly one JSON document, also for an error.
    let out = fx.resolve(tid(0x62));
    assert_eq!(out.code, 1);
    assert_eq!(out.stdout.trim().lines().count(), 1, "{out:?}");
    assert!(out.json.is_object(), "{out:?}");
    let problems = fx.run(&["problems"]);
    assert_eq!(problems.code, 0, "{problems:?}");
    assert_eq!(problems.stdout.trim().lines().count(), 1);
    let ids_seen: HashSet<String> = ids(&fx.run(&["list"]).json).into_iter().collect();
    assert!(ids_seen.contains(&a.id));
}

/// Starts `index` and `resolve` processes at once against `fx`; asserts each exits 0 and
/// that no index file was moved aside.
fn run_concurrently(fx: &Fixture, rs: &[Rollout]) {
    let children: Vec<_> = (0..9)
        .map(|i| {
            let mut c = fx.cmd();
            c.arg("--json");
            match i % 3 {
                0 => c.arg("index"),
                1 => c.arg("resolve").arg(&rs[i].id),
                _ => c.args(["list", "--limit", "1000"]),
            };
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            (i, c.spawn().unwrap())
        })
        .collect();
    for (i, child) in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "stdout: {stdout} stderr: {stderr}"
        );
        let json: Value = serde_json::from_str(&stdout).unwrap();
        match i % 3 {
            0 => assert_eq!(json["counts"]["threads"], rs.len(), "{json}"),
            1 => assert_eq!(json["threadId"], rs[i].id.as_str(), "{json}"),
            _ => assert_eq!(ids(&json).len(), rs.len(), "{json}"),
        }
    }
    let out = fx.index();
    assert_eq!(out["counts"]["threads"], rs.len(), "{out}");
    let aside: Vec<_> = std::fs::read_dir(fx.index.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("corrupt") || n.contains(".fresh-"))
        .collect();
    assert!(
        aside.is_empty(),
        "a healthy index was moved aside, or a fresh build was left behind: {aside:?}"
    );
}

fn many(fx: &Fixture) -> Vec<Rollout> {
    many_n(fx, 40)
}

fn many_n(fx: &Fixture, n: u32) -> Vec<Rollout> {
    let rs: Vec<Rollout> = (0..n)
        .map(|i| {
            Rollout::new(
                &tid(0x100 + i),
                &format!("2026-11-{:02}T08:00:00.000Z", 1 + i % 28),
                "/w",
                "many",
            )
        })
        .collect();
    for r in &rs {
        fx.write_active(r);
    }
    rs
}

#[test]
fn concurrent_runs_on_one_existing_index_all_answer() {
    // Several CLI processes (a shell loop, an editor plugin, a hook) at once.
    let fx = Fixture::new();
    let rs = many(&fx);
    fx.index();
    // Give every reconcile something to write.
    for r in &rs[..10] {
        let p = fx.home.join(r.day_dir()).join(r.file_name());
        std::fs::remove_file(&p).unwrap();
        fx.write_active(&Rollout::new(&r.id, &r.created, "/w", "rewritten"));
    }
    run_concurrently(&fx, &rs);
}

#[test]
fn concurrent_runs_on_one_fresh_index_all_answer() {
    // Found as a bug: racing schema migrations made one process move the live index aside
    // as "corrupt" and another fail with `disk I/O error`.
    // Enough threads that the fresh builds of several `index` and `list` runs overlap.
    let fx = Fixture::new();
    let rs = many_n(&fx, 400);
    run_concurrently(&fx, &rs);
}

#[test]
fn two_homes_are_searched_and_a_missing_home_is_a_warning() {
    let mut fx = Fixture::new();
    let second = fx.root.join("second-codex");
    std::fs::create_dir_all(second.join("sessions")).unwrap();
    fx.extra_homes.push(second.clone());
    let a = Rollout::new(&tid(0x71), "2026-11-20T08:00:00.000Z", "/w", "first home");
    let b = Rollout::new(&tid(0x72), "2026-11-21T08:00:00.000Z", "/w", "second home");
    fx.write_active(&a);
    let pb = second.join(b.day_dir()).join(b.file_name());
    std::fs::create_dir_all(pb.parent().unwrap()).unwrap();
    std::fs::write(&pb, b.jsonl()).unwrap();
    // A third home that does not exist (yet).
    fx.extra_homes.push(fx.root.join("not-there"));

    let out = fx.run(&["index"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["counts"]["threads"], 2, "{out:?}");
    assert!(out.stderr.contains("not-there"), "{out:?}");
    let r = fx.resolve(&b.id);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(jpath(&r.json["canonicalPath"]), pb);
    let r = fx.resolve(&pb);
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        ids(&fx.run(&["list"]).json),
        vec![b.id.clone(), a.id.clone()]
    );
}

/// A first run builds the index under a name of its own (`index.sqlite.fresh-<pid>`) and
/// then gives it the index's name; one that finds another live process's build answers
/// from the index as usual, and a build whose process is gone is removed.
#[test]
fn a_first_run_beside_another_fresh_build_answers_as_usual_and_abandoned_builds_go() {
    let fx = Fixture::new();
    let rs = many(&fx);
    let dir = fx.index.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let building = |pid: u32| format!("{}.fresh-{pid}", fx.index.display());
    let names = || -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("index.sqlite"))
            .collect();
        n.sort();
        n
    };
    // This test's process is alive: its "build" is in progress.
    let live = building(std::process::id());
    std::fs::write(&live, b"half a build").unwrap();
    let listed = fx.run(&["list", "--limit", "1000"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    assert_eq!(ids(&listed.json).len(), rs.len(), "{listed:?}");
    assert!(Path::new(&live).exists(), "a live build was removed");

    for f in names() {
        std::fs::remove_file(dir.join(f)).unwrap();
    }
    // No process has this id (beyond the kernel's maximum): a build cut short.
    let gone = building(i32::MAX as u32);
    std::fs::write(&gone, b"half a build").unwrap();
    let indexed = fx.index();
    assert_eq!(indexed["counts"]["threads"], rs.len(), "{indexed}");
    assert_eq!(names(), ["index.sqlite", "index.sqlite.sealed"]);
}
