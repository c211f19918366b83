//! The bounded head read on real files: huge sparse rollouts, title shapes, forks, and the
//! file-name shapes Codex writes.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{jpath, tid, Fixture, Rollout, TitleShape};
use rolloutd::rollout::{inspect, Compression, HeadLimits};
use serde_json::json;

const FOUR_GB: u64 = 4 << 30;
const SLACK: u64 = 64 << 10;

/// Writes `r`'s head, then extends the file to 4 GiB without writing (a sparse hole).
fn sparse_rollout(fx: &Fixture, r: &Rollout) -> std::path::PathBuf {
    let p = fx.write_active(r);
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(FOUR_GB).unwrap();
    drop(f);
    p
}

#[test]
fn a_4gb_sparse_rollout_is_read_from_its_head_alone() {
    let fx = Fixture::new();
    let limits = HeadLimits::default();

    // Realistic: the prompt is in the head, so the read stops right after it.
    let titled = Rollout::new(&tid(1), "2026-11-21T10:00:00.000Z", "/w", "huge session");
    let p1 = sparse_rollout(&fx, &titled);
    // Worst case: no prompt in the head, so the reader runs into the hole (NUL bytes, no
    // newline) until its byte budget is spent.
    let untitled =
        Rollout::new(&tid(2), "2026-11-21T11:00:00.000Z", "/w", "").shape(TitleShape::None);
    let p2 = sparse_rollout(&fx, &untitled);
    assert_eq!(std::fs::metadata(&p1).unwrap().len(), FOUR_GB);

    let started = Instant::now();
    let a = inspect(&p1, &limits).unwrap();
    assert_eq!(a.head.thread_id, titled.id);
    assert_eq!(a.head.title.as_deref(), Some("huge session"));
    assert_eq!(a.stamp.size, FOUR_GB);
    assert!(
        a.bytes_read < titled.jsonl().len() as u64 + SLACK,
        "read {} bytes for a {} byte head",
        a.bytes_read,
        titled.jsonl().len()
    );

    let b = inspect(&p2, &limits).unwrap();
    assert_eq!(b.head.thread_id, untitled.id);
    assert_eq!(b.head.title, None);
    // The reader may hold one 64 KiB buffer beyond the bytes it looked at; it reaches that
    // bound exactly when the budget ends mid-buffer, and never passes it.
    assert!(
        b.bytes_read <= limits.max_bytes as u64 + SLACK,
        "read {} bytes, bound {}",
        b.bytes_read,
        limits.max_bytes as u64 + SLACK
    );
    assert!(started.elapsed() < Duration::from_secs(10));

    // A tighter budget is honoured as well.
    let tight = HeadLimits {
        max_bytes: 256 << 10,
        ..limits
    };
    let c = inspect(&p2, &tight).unwrap();
    assert!(c.bytes_read <= (256 << 10) + SLACK, "read {}", c.bytes_read);

    // End to end: indexed, resolvable, with the real size.
    let out = fx.run(&["index"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["counts"]["threads"], 2, "{out:?}");
    assert!(out.elapsed < Duration::from_secs(15), "{:?}", out.elapsed);
    for (r, p) in [(&titled, &p1), (&untitled, &p2)] {
        let out = fx.resolve(&r.id);
        assert_eq!(out.code, 0, "{out:?}");
        assert_eq!(out.json["sizeBytes"].as_u64(), Some(FOUR_GB));
        assert_eq!(jpath(&out.json["canonicalPath"]), *p);
    }
    // The hole stayed a hole: nothing wrote the file.
    use std::os::unix::fs::MetadataExt;
    assert!(std::fs::metadata(&p1).unwrap().blocks() * 512 < 16 << 20);
}

#[test]
fn title_comes_from_each_prompt_shape_and_never_from_injected_context() {
    let fx = Fixture::new();
    let limits = HeadLimits::default();
    for (n, shape, want) in [
        (0x10, TitleShape::Paginated, Some("paginated prompt")),
        (0x11, TitleShape::LegacyEvent, Some("legacy prompt")),
        (0x12, TitleShape::ItemCompletedOnly, Some("item prompt")),
        (0x13, TitleShape::None, None),
    ] {
        let r = Rollout::new(
            &tid(n),
            "2026-11-21T10:00:00.000Z",
            "/home/dev/work",
            want.unwrap_or(""),
        )
        .shape(shape)
        .branch("main");
        let p = fx.write_active(&r);
        let i = inspect(&p, &limits).unwrap();
        assert_eq!(i.head.title.as_deref(), want, "{shape:?}");
        assert_eq!(i.head.thread_id, r.id);
        assert_eq!(i.head.cwd.as_deref(), Some("/home/dev/work"));
        assert_eq!(
            i.head.timestamp.as_deref(),
            Some("2026-11-21T10:00:00.000Z")
        );
        assert_eq!(i.head.originator.as_deref(), Some("codex_exec"));
        assert_eq!(i.head.cli_version.as_deref(), Some("0.169.0"));
        assert_eq!(i.head.source.as_deref(), Some("exec"));
        assert_eq!(i.head.model_provider.as_deref(), Some("mock_provider"));
        assert_eq!(i.head.git_branch.as_deref(), Some("main"));
        assert_eq!(i.compression, Compression::None);
        assert!(i.name_mismatch().is_none());
    }
}

#[test]
fn a_fork_with_copied_parent_items_is_the_child_thread() {
    // Forks copy the parent's items, including its session_meta, after their own header.
    let fx = Fixture::new();
    let parent = Rollout::new(
        &tid(0x20),
        "2026-11-20T10:00:00.000Z",
        "/w",
        "parent prompt",
    );
    let child =
        Rollout::new(&tid(0x21), "2026-11-21T10:00:00.000Z", "/w", "").shape(TitleShape::None);
    let mut bytes = child.meta_line();
    bytes.extend_from_slice(&parent.jsonl());
    let p = fx.write_bytes(&child.day_dir().join(child.file_name()), &bytes);
    let i = inspect(&p, &HeadLimits::default()).unwrap();
    assert_eq!(i.head.thread_id, child.id);
    assert!(i.name_mismatch().is_none());
}

#[test]
fn generation_names_and_legacy_heads_are_indexed_by_session_meta_id() {
    let fx = Fixture::new();
    // `rollout-<ts>-<thread_id>_<rollout_id>.jsonl` of a reverted thread.
    let r = Rollout::new(&tid(0x30), "2026-11-21T10:00:00.000Z", "/w", "reverted");
    let generation = fx.write_bytes(
        &r.day_dir().join(format!(
            "rollout-{}-{}_{}.jsonl",
            r.name_timestamp(),
            r.id,
            "01a2ffff-0000-7000-8000-000000000030"
        )),
        &r.jsonl(),
    );
    // A 2025-era legacy file: no ordinal, minimal session_meta, event_msg prompt.
    let legacy_id = "5973b6c0-94b8-487b-a530-2aeb6098ae0e";
    let mut legacy = serde_json::to_vec(&json!({
        "timestamp": "2025-09-01T08:00:00.000Z",
        "type": "session_meta",
        "payload": {
            "id": legacy_id,
            "timestamp": "2025-09-01T08:00:00.000Z",
            "cwd": "/w/old",
            "originator": "codex_cli_rs",
            "cli_version": "0.30.0",
            "instructions": null
        }
    }))
    .unwrap();
    legacy.push(b'\n');
    legacy.extend_from_slice(
        br#"{"timestamp":"2025-09-01T08:00:01.000Z","type":"event_msg","payload":{"type":"user_message","message":"legacy question","images":[]}}"#,
    );
    // No trailing newline: a partial last line is tolerated.
    let legacy_path = fx.write_bytes(
        &Path::new("sessions/2025/09/01")
            .join(format!("rollout-2025-09-01T08-00-00-{legacy_id}.jsonl")),
        &legacy,
    );

    fx.index();
    let out = fx.run(&["problems"]);
    assert!(
        out.json["problems"].as_array().unwrap().is_empty(),
        "{out:?}"
    );
    let out = fx.resolve(&r.id);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(jpath(&out.json["canonicalPath"]), generation);
    let out = fx.resolve(legacy_id);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(jpath(&out.json["canonicalPath"]), legacy_path);
    assert_eq!(out.json["title"], "legacy question");
    assert_eq!(out.json["cliVersion"], "0.30.0");
    assert!(out.json["source"].is_null(), "{out:?}");
}

#[test]
fn structured_sources_are_kept_as_json() {
    let fx = Fixture::new();
    let mut r = Rollout::new(&tid(0x40), "2026-11-21T10:00:00.000Z", "/w", "review this");
    r.source = json!({"subagent": {"thread_spawn": {"parent_thread_id": tid(0x41), "depth": 1}}});
    let p = fx.write_active(&r);
    let i = inspect(&p, &HeadLimits::default()).unwrap();
    let source: serde_json::Value =
        serde_json::from_str(i.head.source.as_deref().unwrap()).unwrap();
    assert_eq!(source, r.source);
}

#[test]
fn a_compressed_head_is_bounded_after_decompression() {
    // 5 MiB of first line compresses to a few KB; the bound applies to what is decoded.
    let fx = Fixture::new();
    let big = Rollout::new(&tid(0x50), "2026-11-21T10:00:00.000Z", "/w", "x").base_len(5 << 20);
    let p = fx.write_active_zst(&big);
    assert!(std::fs::metadata(&p).unwrap().len() < 1 << 20);
    let err = inspect(&p, &HeadLimits::default()).unwrap_err();
    assert_eq!(
        err.kind,
        rolloutd::rollout::ProblemKind::HeadTooLarge,
        "{err}"
    );

    let ok = Rollout::new(&tid(0x51), "2026-11-21T11:00:00.000Z", "/w", "small zst");
    let p = fx.write_active_zst(&ok);
    let i = inspect(&p, &HeadLimits::default()).unwrap();
    assert_eq!(i.compression, Compression::Zstd);
    assert_eq!(i.head.title.as_deref(), Some("small zst"));
    assert!(i.bytes_read <= std::fs::metadata(&p).unwrap().len());
}

/// Each reading thread keeps one zstd context: a file left mid-frame (truncated, corrupt, or
/// a head that stopped early) must not leak into the next file read on that thread.
#[test]
fn a_zstd_context_is_reused_afresh_after_a_bad_or_unfinished_frame() {
    let fx = Fixture::new();
    let limits = HeadLimits::default();
    let good = Rollout::new(
        &tid(0x60),
        "2026-11-21T12:00:00.000Z",
        "/w",
        "after the bad ones",
    );
    let good_path = fx.write_active_zst(&good);
    let whole = std::fs::read(&good_path).unwrap();
    let cut = Rollout::new(&tid(0x61), "2026-11-21T12:00:01.000Z", "/w", "cut");
    let cut_path = fx.write_active_zst(&cut);
    std::fs::write(&cut_path, &whole[..whole.len() / 3]).unwrap();
    let junk = Rollout::new(&tid(0x62), "2026-11-21T12:00:02.000Z", "/w", "junk");
    let junk_path = fx.write_active_zst(&junk);
    let mut garbled = whole.clone();
    for b in garbled.iter_mut().skip(20).take(40) {
        *b ^= 0x5a;
    }
    std::fs::write(&junk_path, &garbled).unwrap();

    for bad in [&cut_path, &junk_path] {
        let err = inspect(bad, &limits).unwrap_err();
        assert_eq!(
            err.kind,
            rolloutd::rollout::ProblemKind::CorruptCompression,
            "{err}"
        );
        let i = inspect(&good_path, &limits).unwrap();
        assert_eq!(i.head.title.as_deref(), Some("after the bad ones"));
        assert_eq!(i.head.thread_id, tid(0x60).to_string());
    }
}

/// A walk reads files its listing gave as regular without a stat of the path first; what
/// took such a path since (a FIFO, a directory, a symlink, an empty or missing file) gets
/// the answer a stat-first read gives, and a FIFO never blocks the read.
#[test]
fn a_listed_file_replaced_by_anything_is_answered_as_a_stat_first_read_would() {
    use rolloutd::rollout::inspect_listed_file;
    let fx = Fixture::new();
    let limits = HeadLimits::default();
    let kept = Rollout::new(&tid(0x70), "2026-11-21T13:00:00.000Z", "/w", "kept");
    let target = fx.write_active(&kept);
    let mut paths = Vec::new();
    for (n, make) in [
        "fifo", "dir", "symlink", "empty", "missing", "dangling", "plain",
    ]
    .iter()
    .enumerate()
    {
        let r = Rollout::new(
            &tid(0x71 + n as u32),
            "2026-11-21T13:00:00.000Z",
            "/w",
            make,
        );
        let p = fx.write_active(&r);
        std::fs::remove_file(&p).unwrap();
        match *make {
            "fifo" => common::sys::mkfifo(&p, 0o644),
            "dir" => std::fs::create_dir(&p).unwrap(),
            "symlink" => std::os::unix::fs::symlink(&target, &p).unwrap(),
            "empty" => std::fs::write(&p, b"").unwrap(),
            "missing" => {}
            "dangling" => std::os::unix::fs::symlink(p.with_extension("gone"), &p).unwrap(),
            _ => {
                fx.write_active(&r);
            }
        }
        paths.push(p);
    }
    for p in &paths {
        let started = Instant::now();
        let listed = inspect_listed_file(p, &limits);
        assert!(started.elapsed() < Duration::from_secs(5), "{p:?} blocked");
        let stat_first = inspect(p, &limits);
        match (&listed, &stat_first) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.head.thread_id, b.head.thread_id, "{p:?}");
                assert_eq!(a.stamp, b.stamp, "{p:?}");
            }
            (Err(a), Err(b)) => assert_eq!(a.kind, b.kind, "{p:?}: {a} / {b}"),
            _ => panic!("{p:?}: listed {listed:?}, stat first {stat_first:?}"),
        }
    }
    // The symlink is followed by both (as a walk's linked files are), the plain one read.
    assert_eq!(
        inspect_listed_file(&paths[2], &limits)
            .unwrap()
            .head
            .thread_id,
        tid(0x70).to_string()
    );
    assert!(inspect_listed_file(&paths[6], &limits).is_ok());
}
