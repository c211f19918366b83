//! Issue 13, "every answer right": each test is one finding's reproduction, against real
//! files, the built binary and (where the finding is about the agent) a real agent.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::agent::Agent;
use common::{tid, Fixture, Lib, Rollout};
use rolloutd::client::ClientError;
use rolloutd::query::QueryError;
use serde_json::{json, Value};

fn rollout(id: &str, day: u32) -> Rollout {
    Rollout::new(
        id,
        &format!("2026-11-{day:02}T10:00:00.000Z"),
        "/w",
        "a prompt",
    )
    .base_len(300)
}

/// The error of an agent call that must fail.
fn rpc_error(r: Result<Value, ClientError>) -> rolloutd::server::frame::RpcError {
    match r {
        Err(ClientError::Rpc(e)) => e,
        other => panic!("expected an error answer, got {other:?}"),
    }
}

/// An agent started from `/` (as a service manager does), so a relative path resolved
/// against its working directory would name something under `/`.
fn agent_in_root_dir(fx: &Fixture) -> Agent {
    let mut c = fx.cmd();
    c.current_dir("/").arg("run");
    let mut agent = Agent::spawn_command(c, fx.socket(), fx.root.join("agent.log"));
    agent.wait_ready();
    agent
}

// Item 2: a relative, empty or NUL-holding path is a typed error, never resolved against
// the agent's working directory.
#[test]
fn request_paths_that_are_relative_empty_or_hold_a_nul_are_refused() {
    let fx = Fixture::new();
    let r = rollout(&tid(1), 21);
    let abs = fx.write_active(&r);
    let rel = abs.strip_prefix(&fx.home).unwrap().to_owned();
    let agent = agent_in_root_dir(&fx);

    for bad in [
        json!(rel),
        json!(""),
        json!(format!("{}\u{0}x", abs.display())),
    ] {
        for (method, params) in [
            ("path/resolve", json!({ "path": bad })),
            (
                "thread/checkResume",
                json!({ "threadId": r.id, "path": bad }),
            ),
            ("path/same", json!({ "a": bad, "b": abs })),
            ("path/same", json!({ "a": abs, "b": bad })),
            ("thread/list", json!({ "cwd": bad })),
        ] {
            let e = rpc_error(agent.call(method, params.clone()));
            // One reason whichever layer refuses it (the params check or the query).
            assert_eq!(
                e.reason().map(|r| r.as_str()),
                Some("badPath"),
                "{method} {params}: {e:?}"
            );
            assert_eq!(e.code, -32602, "{method} {params}: {e:?}");
        }
    }
    // The absolute spelling still answers.
    let ok = agent
        .call(
            "thread/checkResume",
            json!({ "threadId": r.id, "path": abs }),
        )
        .unwrap();
    assert_eq!(ok["ok"], true, "{ok}");

    // The library refuses it too, whatever the process's working directory.
    let lib = Lib::open(&fx);
    let q = lib.queries();
    let reason = |r: Result<(), QueryError>| r.err().map(|e| e.reason().as_str());
    assert_eq!(
        reason(q.check_resume(&r.id, &rel).map(|_| ())),
        Some("badPath")
    );
    assert_eq!(
        reason(q.resolve_path(Path::new("")).map(|_| ())),
        Some("badPath")
    );
}

/// A bind mount, unmounted (lazily if busy) on drop.
struct BindMount(PathBuf);

impl BindMount {
    fn new(from: &Path, at: &Path) -> BindMount {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .arg("--bind")
            .arg(from)
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mount --bind {} {}", from.display(), at.display());
        BindMount(at.to_owned())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

// Item 3: a bind mount of the home is the home, by a configured alias or by identity
// (same device and inode), whether the path exists or not.
#[test]
fn a_bind_mount_of_the_home_is_recognised_with_or_without_an_alias() {
    if !common::sys::root_or_skip("mount --bind of the home") {
        return;
    }
    let mut fx = Fixture::new();
    let r = rollout(&tid(1), 21);
    let in_home = fx.write_active(&r);
    let bm = fx.root.join("bm");
    let _mount = BindMount::new(&fx.home, &bm);
    let rel = in_home.strip_prefix(&fx.home).unwrap();
    let through_mount = bm.join(rel);
    assert!(through_mount.exists());
    // A thread Codex has named but not written yet, spelled through the mount.
    let later = rollout(&tid(2), 21);
    let unwritten = bm.join(later.day_dir()).join(later.file_name());
    fx.index();

    let check = |fx: &Fixture, what: &str| {
        let out = fx.run_os(&[
            "check-resume".as_ref(),
            r.id.as_ref(),
            through_mount.as_os_str(),
        ]);
        assert_eq!(
            out.code, 0,
            "{what}: check-resume through the mount: {out:?}"
        );
        assert_eq!(out.json["ok"], true, "{what}: {out:?}");
        let same = fx.run_os(&[
            "same".as_ref(),
            in_home.as_os_str(),
            through_mount.as_os_str(),
        ]);
        assert_eq!(same.code, 0, "{what}: same: {same:?}");
        assert_eq!(same.json["same"], true, "{what}: {same:?}");
        let out = fx.run_os(&[
            "check-resume".as_ref(),
            later.id.as_ref(),
            unwritten.as_os_str(),
        ]);
        assert_eq!(
            out.json["reason"], "notMaterialized",
            "{what}: a missing path through the mount is inside the home: {out:?}"
        );
    };
    // Without any alias: the mount is recognised by identity.
    check(&fx, "no alias");
    // With the alias configured, as the reproduction has it.
    let config = fx.root.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "aliases = [[{:?}, {:?}]]\n",
            fx.home.display().to_string(),
            bm.display().to_string()
        ),
    )
    .unwrap();
    fx.config = Some(config);
    check(&fx, "alias");
    let record = fx.resolve(&r.id).json;
    assert!(
        record["aliases"]
            .as_array()
            .unwrap()
            .contains(&json!(through_mount)),
        "{record}"
    );
    // And through a running agent.
    let agent = Agent::start(&fx);
    let answer = agent
        .call(
            "thread/checkResume",
            json!({ "threadId": r.id, "path": through_mount }),
        )
        .unwrap();
    assert_eq!(answer["ok"], true, "{answer}");
}

// Item 4: one rule for upper-case ids: compared case-insensitively, answered in lower case,
// the file's own spelling kept in the record, and the file listed as a problem (Codex looks
// rollouts up by the lower-case id).
#[test]
fn upper_case_ids_resolve_list_and_are_reported_under_one_rule() {
    let fx = Fixture::new();
    let upper = tid(7).to_ascii_uppercase();
    let lower = upper.to_ascii_lowercase();
    let path = fx.write_active(&rollout(&upper, 21));
    fx.write_active(&rollout(&tid(8), 20));
    fx.index();

    for given in [
        &upper,
        &lower,
        &upper[..13].to_owned(),
        &lower[..13].to_owned(),
    ] {
        let out = fx.resolve(given);
        assert_eq!(out.code, 0, "resolve {given}: {out:?}");
        assert_eq!(out.json["threadId"], lower, "{out:?}");
        assert_eq!(out.json["threadIdAsWritten"], upper, "{out:?}");
    }
    let list = fx.run(&["list", "--all"]);
    let ids: Vec<&str> = list.json["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["threadId"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&lower.as_str()), "missing from list: {list:?}");
    assert_eq!(ids.len(), 2, "{list:?}");

    let problems = fx.run(&["problems"]);
    let entry = problems.json["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["path"] == json!(path))
        .unwrap_or_else(|| panic!("the upper-case file is listed under no problem: {problems:?}"));
    assert_eq!(entry["reason"], "nameMismatch", "{entry}");
    assert_eq!(entry["threadId"], lower, "{entry}");

    for given in [&upper, &lower] {
        let out = fx.run_os(&["check-resume".as_ref(), given.as_ref(), path.as_os_str()]);
        assert_eq!(out.json["ok"], true, "check-resume {given}: {out:?}");
        assert_eq!(out.json["record"]["threadId"], lower);
    }
    // Another thread's id is still another thread.
    let other = fx.run_os(&["check-resume".as_ref(), tid(8).as_ref(), path.as_os_str()]);
    assert_eq!(other.json["reason"], "otherThread", "{other:?}");

    // The agent answers the same.
    let agent = Agent::start(&fx);
    let rec = agent
        .call("thread/resolve", json!({ "threadId": upper }))
        .unwrap();
    assert_eq!(rec["threadId"], lower);
    let page = agent
        .call("thread/list", json!({ "archived": "all" }))
        .unwrap();
    assert_eq!(page["threads"].as_array().unwrap().len(), 2, "{page}");
}

// Item 5: one id in several files gives the same answer every time, on a fresh index and
// after: active before archived, plain before compressed, then the smallest path.
#[test]
fn duplicates_resolve_to_one_file_whatever_the_directory_order() {
    let fx = Fixture::new();
    let id = tid(5);
    // The same thread in ten day directories: a directory walk meets them in hash order.
    let mut paths: Vec<PathBuf> = (10..20)
        .rev()
        .map(|day| {
            let mut r = rollout(&id, day);
            // One file name, as a copy of the thread into other day directories has.
            r.created = "2026-11-10T10:00:00.000Z".into();
            let rel = Path::new("sessions/2026/11")
                .join(format!("{day}"))
                .join(r.file_name());
            fx.write_bytes(&rel, &r.jsonl())
        })
        .collect();
    fx.write_archived(&rollout(&id, 9));
    paths.sort();
    let expected = &paths[0];

    for round in 0..3 {
        std::fs::remove_file(&fx.index).ok();
        for call in 0..2 {
            let out = fx.resolve(&id);
            assert_eq!(out.code, 0, "{out:?}");
            assert_eq!(
                PathBuf::from(out.json["canonicalPath"].as_str().unwrap()),
                *expected,
                "round {round}, call {call}"
            );
        }
    }
    let problems = fx.run(&["problems"]);
    let dup = problems.json["duplicates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["threadId"] == json!(id))
        .unwrap_or_else(|| panic!("{problems:?}"));
    let listed: Vec<PathBuf> = dup["paths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| PathBuf::from(p.as_str().unwrap()))
        .collect();
    assert_eq!(listed.len(), 11, "every file visible: {dup}");
    assert_eq!(&listed[0], expected, "preferred first: {dup}");
    assert!(
        listed[10].starts_with(fx.home.join("archived_sessions")),
        "{dup}"
    );

    let agent = Agent::start(&fx);
    for _ in 0..3 {
        let rec = agent
            .call("thread/resolve", json!({ "threadId": id }))
            .unwrap();
        assert_eq!(
            PathBuf::from(rec["canonicalPath"].as_str().unwrap()),
            *expected
        );
    }
}

// Item 6: `.jsonl` and `.jsonl.zst` name one rollout both ways, as Codex treats them, and
// the answer says which file it is.
#[test]
fn the_compressed_sibling_spelling_is_accepted_both_ways() {
    let fx = Fixture::new();
    let zr = rollout(&tid(1), 21);
    let zst = fx.write_active_zst(&zr);
    let plain_name = fx.home.join(zr.day_dir()).join(zr.file_name());
    assert!(!plain_name.exists());
    let pr = rollout(&tid(2), 21);
    let plain = fx.write_active(&pr);
    let zst_name = PathBuf::from(format!("{}.zst", plain.display()));
    fx.index();

    let out = fx.run_os(&[
        "check-resume".as_ref(),
        zr.id.as_ref(),
        plain_name.as_os_str(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["ok"], true, "{out:?}");
    assert_eq!(out.json["record"]["path"], json!(zst), "{out:?}");
    assert_eq!(out.json["record"]["compression"], "zstd");
    let detail = out.json["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&zst.display().to_string()),
        "says which file: {out:?}"
    );

    let out = fx.run_os(&[
        "check-resume".as_ref(),
        pr.id.as_ref(),
        zst_name.as_os_str(),
    ]);
    assert_eq!(out.json["ok"], true, "{out:?}");
    assert_eq!(out.json["record"]["path"], json!(plain));

    let rec = fx.resolve(&plain_name);
    assert_eq!(rec.code, 0, "{rec:?}");
    assert_eq!(rec.json["path"], json!(zst));
    // Another thread's sibling is still another thread's.
    let out = fx.run_os(&[
        "check-resume".as_ref(),
        pr.id.as_ref(),
        plain_name.as_os_str(),
    ]);
    assert_eq!(out.json["reason"], "otherThread", "{out:?}");
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs at {}", at.display());
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Fills the filesystem holding `dir` until a write fails for lack of space.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    // Large blocks, then pages, so not even one page is left. Bounded: a tmpfs of a few
    // MB fills in well under this many blocks.
    for size in [64 << 10, 4 << 10, 1] {
        let block = vec![0u8; size];
        let mut filled = false;
        for _ in 0..100_000 {
            if f.write_all(&block).is_err() {
                filled = true;
                break;
            }
        }
        assert!(filled, "{} never filled up", dir.display());
    }
}

/// What a degraded agent answers: listings refused as `degraded` (by every reader), by the
/// CLI too, and a status saying so. `Err` says which answer was not.
fn degraded_answers(fx: &Fixture, agent: &Agent) -> Result<(), String> {
    let refused = |r: &Result<Value, ClientError>| matches!(r, Err(ClientError::Rpc(e)) if e.reason().map(|r| r.as_str()) == Some("degraded"));
    let all = agent.call("thread/list", json!({ "archived": "all" }));
    if !refused(&all) {
        return Err(format!("listing: {all:?}"));
    }
    for _ in 0..4 {
        // Every reader in turn, not only the writer.
        let page = agent.call("thread/list", json!({ "archived": "all", "limit": 1 }));
        if !refused(&page) {
            return Err(format!("full page: {page:?}"));
        }
    }
    let list = fx.run(&["list"]);
    if list.code == 0 || list.error_reason() != "degraded" {
        return Err(format!("a listing must not pass as complete: {list:?}"));
    }
    let mut human = fx.cmd();
    human.arg("list");
    let human = common::Run::spawn(human, &["list"]);
    if human.stdout.contains("no threads") {
        return Err(format!("{human:?}"));
    }
    let mut status = fx.cmd();
    status.arg("status");
    let status = common::Run::spawn(status, &["status"]);
    if !status.stdout.contains("degraded") {
        return Err(format!("{status:?}"));
    }
    Ok(())
}

// Item 9: with the index's disk full from the start, a listing is refused as `degraded`
// instead of answering "no threads", and the human status says degraded.
#[test]
fn a_listing_from_an_index_that_cannot_be_written_is_refused_as_degraded() {
    if !common::sys::root_or_skip("a tmpfs for the index to fill") {
        return;
    }
    let fx = Fixture::new();
    let state = fx.index.parent().unwrap().to_owned();
    let _tmpfs = Tmpfs::mount(&state, "1m");
    // The agent starts on an empty home, then the index's disk fills before any thread is
    // indexed: the index lacks every thread, as after a start on a full disk.
    let agent = Agent::start(&fx);
    // Two threads indexed before the disk fills: a page of one is a full page, the kind a
    // reader connection answers.
    for n in 100..102 {
        fx.write_active(&rollout(&tid(n), 21));
    }
    common::agent::eventually("two threads indexed", || {
        (agent.status()["counts"]["threads"] == 2).then_some(())
    });
    // A read snapshot held to the end pins the WAL: after a checkpoint SQLite would write
    // the next frames over the old ones, needing no new space, and the agent would recover
    // (rightly) in the middle of the test.
    let pin = rusqlite::Connection::open(&fx.index).unwrap();
    pin.execute_batch("BEGIN").unwrap();
    let _: i64 = pin
        .query_row("SELECT count(*) FROM files", [], |r| r.get(0))
        .unwrap();
    fill(&state);
    // The agent may recover, rightly, when SQLite finds room after all: a WAL restarted
    // over old frames, or a file's slack beyond its last frame. An answer that is not
    // `degraded` is a failure only while the agent still says it is degraded; after a
    // recovery, more rollouts use up the room and the checks run again (bounded).
    let mut written = 0;
    let mut recoveries = Vec::new();
    let passed = (0..5).any(|_| {
        for n in written..written + 40 {
            fx.write_active(&Rollout::new(
                &tid(n),
                "2026-11-21T10:00:00.000Z",
                "/w",
                &"p".repeat(2000),
            ));
        }
        written += 40;
        common::agent::eventually("the agent reports degraded", || {
            (agent.status()["degraded"] == true).then_some(())
        });
        match degraded_answers(&fx, &agent) {
            Ok(()) => true,
            Err(e) if agent.status()["degraded"] == false => {
                recoveries.push(e);
                false
            }
            Err(e) => panic!("{e}"),
        }
    });
    assert!(passed, "the agent kept recovering: {recoveries:#?}");
    // One thread by id still resolves, from the file.
    let rec = agent
        .call("thread/resolve", json!({ "threadId": tid(3) }))
        .unwrap();
    assert_eq!(rec["threadId"], tid(3));
    drop(pin);
}

// Item 10: the rough edges.
#[test]
fn a_home_given_twice_by_two_spellings_is_one_home_with_both_spellings() {
    let mut fx = Fixture::new();
    let link = fx.root.join("codex-link");
    std::os::unix::fs::symlink(&fx.home, &link).unwrap();
    fx.extra_homes.push(link.clone());
    let r = rollout(&tid(1), 21);
    fx.write_active(&r);
    let out = fx.index();
    assert_eq!(out["counts"]["files"], 1, "indexed once: {out}");
    assert_eq!(out["summary"]["seen"], 1, "crawled once: {out}");
    assert_eq!(out["homes"].as_array().unwrap().len(), 1, "one home: {out}");
    let rec = fx.resolve(&r.id).json;
    let through_link = link.join(r.day_dir()).join(r.file_name());
    assert!(
        rec["aliases"]
            .as_array()
            .unwrap()
            .contains(&json!(through_link)),
        "{rec}"
    );
}

#[test]
fn an_ambiguous_prefix_counts_every_match_and_says_when_the_list_is_cut() {
    let fx = Fixture::new();
    // 25 ids sharing their first 8 characters.
    for n in 0..25u32 {
        let id = format!("01a2ffff-4aab-7f60-bd31-{n:012x}");
        fx.write_active(&rollout(&id, 21));
    }
    fx.index();
    let out = fx.resolve("01a2ffff");
    assert_eq!(out.error_reason(), "ambiguous", "{out:?}");
    let message = out.error_message();
    assert!(message.contains("matches 25 threads"), "{message}");
    assert!(message.contains("first 20 shown"), "{message}");

    let agent = Agent::start(&fx);
    let e = rpc_error(agent.call("thread/resolve", json!({ "threadId": "01a2ffff" })));
    let data = e.data.clone().unwrap();
    assert_eq!(data.count, Some(25), "{e:?}");
    assert_eq!(data.matches.as_ref().map(Vec::len), Some(20), "{e:?}");
    assert!(e.message.contains("matches 25 threads"), "{e:?}");
}

#[test]
fn limit_zero_is_refused_not_served_as_one() {
    let fx = Fixture::new();
    fx.write_active(&rollout(&tid(1), 21));
    fx.index();
    let agent = Agent::start(&fx);
    let e = rpc_error(agent.call("thread/list", json!({ "limit": 0 })));
    assert_eq!(e.reason().map(|r| r.as_str()), Some("badParams"), "{e:?}");
    assert_eq!(e.code, -32602);
    let page = agent.call("thread/list", json!({ "limit": 1 })).unwrap();
    assert_eq!(page["threads"].as_array().unwrap().len(), 1);
}

#[test]
fn a_rollout_name_that_is_not_utf8_is_a_problem_not_ignored() {
    use std::os::unix::ffi::OsStrExt;
    let fx = Fixture::new();
    let r = rollout(&tid(1), 21);
    let dir = fx.home.join(r.day_dir());
    std::fs::create_dir_all(&dir).unwrap();
    let mut name = b"rollout-2026-11-21T10-00-00-\xff\xfe".to_vec();
    name.extend_from_slice(b".jsonl");
    std::fs::write(dir.join(std::ffi::OsStr::from_bytes(&name)), r.jsonl()).unwrap();
    fx.index();
    let problems = fx.run(&["problems"]);
    let found = problems.json["problems"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| {
            p["reason"] == "invalidUtf8" && p["detail"].as_str().unwrap().contains("file name")
        });
    assert!(found, "{problems:?}");
}

#[test]
fn a_home_that_is_a_symlink_loop_is_named_as_one() {
    let mut fx = Fixture::new();
    let a = fx.root.join("loop-a");
    let b = fx.root.join("loop-b");
    std::os::unix::fs::symlink(&b, &a).unwrap();
    std::os::unix::fs::symlink(&a, &b).unwrap();
    fx.extra_homes.push(a.clone());
    let mut c = fx.cmd();
    c.arg("index");
    let out = common::Run::spawn(c, &["index"]);
    assert!(
        out.stderr.contains("symlink loop"),
        "the warning names the loop: {out:?}"
    );
    assert!(!out.stderr.contains("does not exist"), "{out:?}");
    // A listing says so too: its "no threads" is not an empty home.
    for command in ["list", "problems"] {
        let mut c = fx.cmd();
        c.arg(command);
        let out = common::Run::spawn(c, &[command]);
        assert!(out.stderr.contains("symlink loop"), "{command}: {out:?}");
    }
}

// Item 13: messages name paths as the user configured them, never a file that does not
// exist as where a thread "would be", and check-resume and wait tell one story about when
// Codex writes a rollout.
#[test]
fn messages_use_the_configured_spelling_and_one_materialization_story() {
    let fx = Fixture::symlinked();
    let real = fx.real_home();
    let r = rollout(&tid(1), 21);
    let path = fx.write_active(&r);
    // A bad file, reported by `problems` under the configured spelling.
    let bad = fx.write_bytes(
        &r.day_dir().join(rollout(&tid(2), 21).file_name()),
        b"{\"type\":\"event_msg\"}\n",
    );
    fx.index();
    let problems = fx.run(&["problems"]);
    let entry = &problems.json["problems"][0];
    assert_eq!(entry["path"], json!(bad), "{problems:?}");
    assert!(entry["canonicalPath"]
        .as_str()
        .unwrap()
        .starts_with(real.to_str().unwrap()));

    // A moved file: "now at" and wouldBe name the file in the configured spelling.
    let moved_to = fx.home.join("sessions/2026/11/22").join(r.file_name());
    std::fs::create_dir_all(moved_to.parent().unwrap()).unwrap();
    std::fs::rename(&path, &moved_to).unwrap();
    let out = fx.resolve(&path);
    assert_eq!(out.error_reason(), "missing", "{out:?}");
    assert!(
        out.error_message()
            .contains(&moved_to.display().to_string()),
        "{out:?}"
    );
    assert!(
        !out.error_message().contains(real.to_str().unwrap()),
        "{out:?}"
    );

    // A deleted thread: no "would be" naming a file that does not exist.
    std::fs::remove_file(&moved_to).unwrap();
    fx.index();
    let out = fx.resolve(&path);
    assert_eq!(out.error_reason(), "missing", "{out:?}");
    assert!(!out.error_message().contains("would be"), "{out:?}");
    assert!(out.json["error"]["wouldBe"].is_null(), "{out:?}");

    // When Codex writes a rollout: check-resume and wait say the same.
    let fresh = rollout(&tid(9), 23);
    let unwritten = fx.home.join(fresh.day_dir()).join(fresh.file_name());
    let check = fx.run_os(&[
        "check-resume".as_ref(),
        fresh.id.as_ref(),
        unwritten.as_os_str(),
    ]);
    assert_eq!(check.json["reason"], "notMaterialized", "{check:?}");
    let agent = Agent::start(&fx);
    let e = rpc_error(agent.call(
        "thread/wait",
        json!({ "threadId": fresh.id, "timeoutMs": 50 }),
    ));
    let story = "Codex writes a thread's rollout when its first turn starts (turn/start), \
                 before the turn completes";
    assert!(
        check.json["detail"].as_str().unwrap().contains(story),
        "{check:?}"
    );
    assert!(e.message.contains(story), "{e:?}");
}

// Item 4, for an index written before the rule: its upper-case rows are folded to lower case
// and read again, so an upgrade needs no manual rebuild.
#[test]
fn an_index_from_before_the_case_rule_is_migrated() {
    let fx = Fixture::new();
    let upper = tid(3).to_ascii_uppercase();
    fx.write_active(&rollout(&upper, 21));
    fx.index();
    // Put the row back as the previous schema (version 3) stored it: the id as written.
    let conn = rusqlite::Connection::open(&fx.index).unwrap();
    conn.execute_batch(&format!(
        "UPDATE files SET thread_id = '{upper}'; ALTER TABLE files DROP COLUMN thread_id_as_written; \
         ALTER TABLE files DROP COLUMN btime_ns; \
         PRAGMA user_version = 4;"
    ))
    .unwrap();
    drop(conn);
    let out = fx.resolve(tid(3));
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["threadId"], tid(3));
    assert_eq!(out.json["threadIdAsWritten"], upper, "read again: {out:?}");
}

/// Item 1: a rewrite that keeps inode, size and mtime (`sed` into the same file, then
/// `touch -r`) is still re-read: the stamp carries ctime, which user space cannot set. Both
/// without an agent (the CLI's reconcile) and with one (the watcher and read-repair).
#[test]
fn a_rewrite_keeping_inode_size_and_mtime_is_read_again() {
    for with_agent in [false, true] {
        let fx = Fixture::new();
        let a = tid(0x701);
        let b = tid(0x702);
        assert_eq!(a.len(), b.len());
        let path = fx.write_active(&rollout(&a, 20));
        let agent = with_agent.then(|| Agent::start(&fx));
        if agent.is_none() {
            fx.index();
        }
        assert_eq!(fx.resolve(&a).code, 0);
        let before = std::fs::metadata(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap().replace(&a, &b);
        // Same inode (written in place), same size, and the old mtime put back.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| {
                use std::io::Write;
                f.write_all(text.as_bytes())?;
                f.set_modified(before.modified()?)
            })
            .unwrap();
        let after = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            (after.ino(), after.size(), after.mtime(), after.mtime_nsec()),
            (
                before.ino(),
                before.size(),
                before.mtime(),
                before.mtime_nsec()
            )
        );
        // The old id no longer answers with the file (its row is read again)...
        let old = fx.resolve(&a);
        assert_eq!(old.code, 1, "with_agent={with_agent}: {old:?}");
        // ...and the new one does.
        let r = common::agent::eventually("the rewrite to be seen", || {
            let r = fx.resolve(&b);
            (r.code == 0).then_some(r)
        });
        assert_eq!(
            common::jpath(&r.json["canonicalPath"]),
            dunce::canonicalize(&path).unwrap()
        );
        let check = fx.run_os(&["check-resume".as_ref(), a.as_ref(), path.as_os_str()]);
        assert_eq!(check.json["reason"], "otherThread", "{check:?}");
        drop(agent);
    }
}

/// Codex archives flat, but its lookup by id walks the whole `archived_sessions/` tree: a
/// rollout another tool filed in a subdirectory there is Codex's to find, so it is ours
/// too, by the crawl (CLI) and live (agent), and a move into one is an archive.
#[test]
fn a_rollout_in_a_subdirectory_of_the_archive_is_found_like_codex_finds_it() {
    let fx = Fixture::new();
    let r = rollout(&tid(1), 21);
    let nested = Path::new("archived_sessions/2026/11").join(r.file_name());
    let path = fx.write_bytes(&nested, &r.jsonl());
    let rec = fx.resolve(&r.id).json;
    assert_eq!(rec["archived"], true, "{rec}");
    assert_eq!(rec["path"], json!(path), "{rec}");
    let listed = fx.run(&["list", "--archived"]);
    assert!(listed.stdout.contains(&r.id), "{listed:?}");

    let agent = Agent::start(&fx);
    let mut sub = agent.subscribe(None);
    // Live: a new thread, then archived by a move into another subdirectory.
    let r2 = rollout(&tid(2), 22);
    let active = fx.write_active(&r2);
    sub.expect("thread/materialized", &r2.id);
    let deep = fx.home.join("archived_sessions/by-project/x");
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::rename(&active, deep.join(r2.file_name())).unwrap();
    let archived = sub.expect("thread/archived", &r2.id);
    assert_eq!(
        archived["record"]["path"],
        json!(deep.join(r2.file_name())),
        "{archived}"
    );
    let rec = agent
        .call("thread/resolve", json!({ "threadId": r.id }))
        .unwrap();
    assert_eq!(rec["archived"], true, "{rec}");
}
