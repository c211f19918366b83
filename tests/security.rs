//! Security: the socket's directory and file modes and owner, refusal to start on an unsafe
//! runtime directory or socket path (with a message naming the path), path queries that
//! never open a file outside the configured homes (checked with inotify `IN_OPEN` on the
//! files, not by trusting the code), and requests that write nowhere but the index and the
//! socket. A peer of another uid being refused is tested in `tests/agent.rs`
//! (`another_uid_is_refused_by_the_peer_check`).

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::agent::Agent;
use common::sys::{chown_tree, is_root, mkfifo, prerequisite_missing, NOBODY};
use common::{tid, Fixture, Rollout, Run};
use serde_json::json;

fn rollout(fx: &Fixture, n: u32) -> PathBuf {
    fx.write_active(&Rollout::new(
        &tid(n),
        "2026-02-03T04:05:06.000Z",
        "/w",
        "p",
    ))
}

#[test]
fn socket_directory_is_0700_and_socket_0600_owned_by_the_user() {
    let fx = Fixture::new();
    let agent = Agent::start(&fx);
    let uid = unsafe { libc::getuid() };
    let dir = std::fs::symlink_metadata(agent.socket.parent().unwrap()).unwrap();
    let sock = std::fs::symlink_metadata(&agent.socket).unwrap();
    assert!(dir.is_dir());
    assert_eq!(
        (dir.mode() & 0o777, dir.uid()),
        (0o700, uid),
        "socket directory"
    );
    assert_eq!(
        (sock.mode() & 0o777, sock.uid()),
        (0o600, uid),
        "socket file"
    );
}

/// Runs the agent on `socket`; it must exit non-zero at once, naming `path` and refusing.
fn refused(fx: &Fixture, socket: &Path, path: &Path, why: &str) {
    let mut c = fx.cmd();
    c.arg("--socket").arg(socket).arg("run");
    let out = Run::spawn(c, &["run", why]);
    assert_ne!(out.code, 0, "{why}: started anyway: {out:?}");
    assert!(
        out.stderr.contains(&path.display().to_string()) && out.stderr.contains("refusing"),
        "{why}: the message does not name {} : {out:?}",
        path.display()
    );
    eprintln!("{why}: {}", out.stderr.trim().lines().last().unwrap_or(""));
}

#[test]
fn unsafe_runtime_directories_and_socket_paths_are_refused_by_name() {
    let fx = Fixture::new();
    let run = fx.root.join("rt");
    let make = |name: &str, mode: u32| {
        let d = run.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
        d
    };
    // Another user's directory (when root can make one).
    if is_root() {
        let d = make("other", 0o700);
        chown_tree(&d, NOBODY);
        refused(
            &fx,
            &d.join("s.sock"),
            &d,
            "directory owned by another user",
        );
    } else {
        prerequisite_missing("needs root: a directory owned by another user");
    }
    let d = make("world", 0o777);
    refused(&fx, &d.join("s.sock"), &d, "world-writable directory");
    let d = make("group", 0o770);
    refused(&fx, &d.join("s.sock"), &d, "group-writable directory");
    let target = make("target", 0o700);
    let link = run.join("link");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    refused(
        &fx,
        &link.join("s.sock"),
        &link,
        "directory that is a symlink",
    );
    let d = make("sockdir", 0o700);
    let sock = d.join("s.sock");
    std::os::unix::fs::symlink(fx.root.join("elsewhere.sock"), &sock).unwrap();
    refused(&fx, &sock, &sock, "socket path that is a symlink");
    assert!(
        !fx.root.join("elsewhere.sock").exists(),
        "the symlink's target was created"
    );
    // A regular file at the socket path is not removed.
    let d = make("file", 0o700);
    let f = d.join("s.sock");
    std::fs::write(&f, b"precious").unwrap();
    refused(&fx, &f, &f, "a regular file at the socket path");
    assert_eq!(std::fs::read(&f).unwrap(), b"precious");
}

/// An inotify instance reporting opens and reads of the watched paths.
struct Opens {
    fd: i32,
}

impl Opens {
    fn new() -> Opens {
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0);
        Opens { fd }
    }

    fn watch(&self, path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        let wd = unsafe {
            libc::inotify_add_watch(self.fd, c.as_ptr(), libc::IN_OPEN | libc::IN_ACCESS)
        };
        assert!(wd >= 0, "watching {}", path.display());
    }

    /// Bytes of events queued (0 means nothing was opened or read).
    fn pending(&self) -> usize {
        let mut buf = [0u8; 4096];
        let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
        n.max(0) as usize
    }
}

impl Drop for Opens {
    fn drop(&mut self) {
        unsafe { libc::close(self.fd) };
    }
}

#[test]
fn path_queries_never_open_files_outside_the_homes() {
    let fx = Fixture::new();
    rollout(&fx, 1);
    let outside = fx.root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let secret = outside.join("shadow");
    std::fs::write(&secret, b"root:x:0:0\n").unwrap();
    let fifo =
        outside.join("rollout-2026-02-03T04-05-06-01a20009-4aab-7f60-bd31-000000000009.jsonl");
    mkfifo(&fifo, 0o600);
    // A rollout-named symlink inside sessions/ pointing at each.
    let day = fx.home.join("sessions/2026/02/03");
    std::os::unix::fs::symlink(
        &secret,
        day.join("rollout-2026-02-03T04-05-06-01a20007-4aab-7f60-bd31-000000000007.jsonl"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        &fifo,
        day.join("rollout-2026-02-03T04-05-06-01a20008-4aab-7f60-bd31-000000000008.jsonl"),
    )
    .unwrap();
    let opens = Opens::new();
    opens.watch(&secret);
    opens.watch(&fifo);
    let shadow = Path::new("/etc/shadow");
    let watch_shadow = shadow.exists();
    let shadow_opens = Opens::new();
    if watch_shadow {
        shadow_opens.watch(shadow);
    }
    let agent = Agent::start(&fx);
    let home = fx.home.display().to_string();
    let tricks = [
        "/etc/shadow".to_owned(),
        "/etc/../etc/./shadow".to_owned(),
        format!("{home}/../../../../../../etc/shadow"),
        format!("{home}/sessions/2026/../../../outside/shadow"),
        secret.display().to_string(),
        fifo.display().to_string(),
        format!("{home}/sessions/2026/02/03/rollout-2026-02-03T04-05-06-01a20007-4aab-7f60-bd31-000000000007.jsonl"),
        format!("{home}/sessions/2026/02/03/rollout-2026-02-03T04-05-06-01a20008-4aab-7f60-bd31-000000000008.jsonl"),
        format!("{home}/sessions/./2026/02/03/../03/rollout-2026-02-03T04-05-06-01a20008-4aab-7f60-bd31-000000000008.jsonl"),
    ];
    let mut client = agent.client();
    for path in &tricks {
        let e = client
            .call("path/resolve", json!({ "path": path }))
            .unwrap_err();
        let reason = match &e {
            rolloutd::client::ClientError::Rpc(r) => {
                r.reason().map_or("", |r| r.as_str()).to_owned()
            }
            other => panic!("{path}: {other}"),
        };
        assert_eq!(reason, "outsideHome", "{path}: {e}");
        let check = client
            .call(
                "thread/checkResume",
                json!({ "threadId": tid(7), "path": path }),
            )
            .unwrap();
        assert_eq!(check["ok"], false, "{path}: {check}");
        assert_eq!(check["reason"], "outsideHome", "{path}: {check}");
        let same = client
            .call("path/same", json!({ "a": path, "b": home }))
            .unwrap();
        assert_eq!(same["same"], false, "{path}: {same}");
        assert_eq!(same["a"]["reason"], "outsideHome", "{path}: {same}");
    }
    // The symlinks to outside are classified too, by the crawl, without being opened.
    let problems = client.call("index/problems", json!({})).unwrap();
    let outside_home = problems["problems"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["reason"] == "outsideHome" || p["kind"] == "outsideHome")
        .count();
    assert_eq!(outside_home, 2, "{problems:#}");
    // No wait needed: IN_OPEN and IN_ACCESS are queued inside open(2) and read(2), so any
    // made for the answers above are queued by now.
    assert_eq!(
        opens.pending(),
        0,
        "a file outside the home was opened or read"
    );
    if watch_shadow {
        assert_eq!(shadow_opens.pending(), 0, "/etc/shadow was opened");
    }
    eprintln!(
        "{} outside-home spellings answered outsideHome; inotify saw no open of any target",
        tricks.len()
    );
}

/// Every file under `dir` with its size and mtime, skipping `skip` (and what is under it).
fn tree(dir: &Path, skip: &[PathBuf]) -> BTreeMap<PathBuf, (u64, i64)> {
    let mut out = BTreeMap::new();
    for e in walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
    {
        if skip.iter().any(|s| e.path().starts_with(s)) {
            continue;
        }
        if let Ok(m) = e.path().symlink_metadata() {
            out.insert(
                e.path().to_owned(),
                (m.size(), m.mtime_nsec() + m.mtime() * 1_000_000_000),
            );
        }
    }
    out
}

#[test]
fn requests_write_nothing_but_the_index_and_the_socket() {
    let fx = Fixture::new();
    for n in 0..5 {
        rollout(&fx, n);
    }
    std::fs::create_dir_all(fx.root.join("outside")).unwrap();
    std::fs::write(fx.root.join("outside/x"), b"x").unwrap();
    let agent = Agent::start(&fx);
    // Everything but the index's directory, the socket's and the agent's own log.
    let skip = [
        fx.index.parent().unwrap().to_owned(),
        agent.socket.parent().unwrap().to_owned(),
        fx.root.join("agent.log"),
    ];
    let before = tree(&fx.root, &skip);
    let home = fx.home.display().to_string();
    let mut client = agent.client();
    let paths = [
        home.clone(),
        format!("{home}/sessions"),
        format!("{home}/sessions/2026/02/03/rollout-new-{}.jsonl", tid(50)),
        fx.root.join("outside/x").display().to_string(),
        fx.root.join("outside/new").display().to_string(),
        "/".into(),
    ];
    let mut calls = 0;
    for method in common::METHODS {
        for p in &paths {
            let params = json!({
                "threadId": tid(1), "path": p, "a": p, "b": home, "timeoutMs": 1,
                "cwd": p, "search": p, "apply": true,
            });
            // Unknown fields are refused by some methods: also send each one's own shape.
            let _ = client.call(method, params);
            let _ = client.call(method, json!({ "path": p }));
            let _ = client.call(method, json!({ "threadId": tid(1), "path": p }));
            let _ = client.call(method, json!({ "apply": true }));
            calls += 4;
        }
    }
    let after = tree(&fx.root, &skip);
    let changed: Vec<_> = after
        .iter()
        .filter(|(p, v)| before.get(*p) != Some(v))
        .map(|(p, _)| p.clone())
        .chain(before.keys().filter(|p| !after.contains_key(*p)).cloned())
        .collect();
    eprintln!(
        "{calls} requests; files changed outside the index and socket directories: {changed:?}"
    );
    assert!(changed.is_empty(), "{changed:#?}");
}
