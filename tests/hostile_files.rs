//! Hostile files appearing in the home while the agent runs: a FIFO named like a rollout, a
//! symlink loop, directory symlinks, a symlink leaving the home, a 100 MB first line, binary
//! garbage, invalid UTF-8, JSON nested 100,000 deep, a file swapped between a rollout and a
//! FIFO as fast as possible, a directory of 100,000 entries, and (as uid 65534, when root)
//! an unreadable file and directory. Each is classified in `index/problems`, and a client
//! resolving threads the whole time keeps being answered; its latencies are printed.
//! The same classes at the CLI level, without an agent, are in `tests/bad_files.rs`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::agent::{eventually, request, Agent};
use common::rel::{Latencies, Rng};
use common::sys::{as_nobody, chown_tree, mkfifo, root_or_skip, NOBODY};
use common::{tid, Fixture, Rollout};
use serde_json::{json, Value};

const DAY: &str = "sessions/2026/07/08";

fn name(n: u32) -> String {
    format!("rollout-2026-07-08T10-00-00-{}.jsonl", tid(n))
}

/// path → reason, from `index/problems`.
fn problems(agent: &Agent) -> HashMap<PathBuf, String> {
    let v = agent
        .call("index/problems", json!({}))
        .expect("index/problems");
    v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                PathBuf::from(p["path"].as_str().unwrap()),
                p["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A client resolving the good threads in a loop until stopped; every answer must be
/// the right record.
struct Resolver {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Latencies>,
}

impl Resolver {
    fn start(agent: &Agent, good: u32) -> Resolver {
        let stop = Arc::new(AtomicBool::new(false));
        let mut client = agent.client();
        let s = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut lat = Latencies::default();
            let mut i = 0;
            while !s.load(Ordering::Acquire) && lat.0.len() < 2_000_000 {
                let t = Instant::now();
                let r = client
                    .call("thread/resolve", json!({ "threadId": tid(i % good) }))
                    .expect("resolve during hostile files");
                lat.0.push(t.elapsed());
                assert_eq!(r["threadId"], tid(i % good));
                i += 1;
                // Pacing, not synchronisation: a steady client beside the file storms.
                std::thread::sleep(Duration::from_millis(1));
            }
            lat
        });
        Resolver { stop, handle }
    }

    fn finish(self) -> Latencies {
        self.stop.store(true, Ordering::Release);
        self.handle.join().expect("resolver")
    }
}

fn report(what: &str, mut lat: Latencies) {
    let within = lat
        .0
        .iter()
        .filter(|d| **d <= Duration::from_millis(10))
        .count();
    eprintln!(
        "{what}: concurrent thread/resolve {}; {:.2} % within 10 ms",
        lat.summary(),
        100.0 * within as f64 / lat.0.len().max(1) as f64
    );
    assert!(!lat.0.is_empty());
    assert!(
        lat.pct(50.0) <= Duration::from_millis(10),
        "median over 10 ms"
    );
}

#[test]
fn hostile_files_are_classified_while_resolves_keep_answering() {
    let fx = Fixture::new();
    const GOOD: u32 = 20;
    for n in 0..GOOD {
        fx.write_active(&Rollout::new(
            &tid(n),
            "2026-07-01T10:00:00.000Z",
            "/w",
            "good",
        ));
    }
    let agent = Agent::start(&fx);
    let resolver = Resolver::start(&agent, GOOD);
    let day = fx.home.join(DAY);
    std::fs::create_dir_all(&day).unwrap();
    let mut expected: Vec<(PathBuf, &[&str])> = Vec::new();
    let started = Instant::now();

    let fifo = day.join(name(100));
    mkfifo(&fifo, 0o644);
    expected.push((fifo, &["notRegularFile"]));

    let looped = day.join(name(101));
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    expected.push((looped, &["unreadable"]));

    // A rollout-named symlink to a directory, and a plain directory symlink in sessions/.
    let dirlink = day.join(name(102));
    std::os::unix::fs::symlink(fx.home.join("sessions"), &dirlink).unwrap();
    expected.push((dirlink, &["directory"]));
    std::os::unix::fs::symlink(fx.home.join("sessions"), fx.home.join("sessions/loop")).unwrap();

    let outside = fx.root.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let stranger = Rollout::new(&tid(103), "2026-07-08T10:00:00.000Z", "/w", "outside");
    std::fs::write(outside.join(name(103)), stranger.jsonl()).unwrap();
    let outlink = day.join(name(103));
    std::os::unix::fs::symlink(outside.join(name(103)), &outlink).unwrap();
    expected.push((outlink, &["outsideHome"]));

    // 100 MB first line.
    let huge = day.join(name(104));
    {
        let mut f = std::fs::File::create(&huge).unwrap();
        f.write_all(b"{\"type\":\"session_meta\",\"payload\":{\"id\":\"")
            .unwrap();
        let block = vec![b'a'; 1 << 20];
        for _ in 0..100 {
            f.write_all(&block).unwrap();
        }
        f.write_all(b"\"}}\n").unwrap();
    }
    expected.push((huge, &["headTooLarge"]));

    let garbage = day.join(name(105));
    std::fs::write(&garbage, Rng::new(5).bytes(256 << 10)).unwrap();
    expected.push((garbage, &["invalidJson", "invalidUtf8", "notSessionMeta"]));

    let mut bad_utf8 = b"{\"timestamp\":\"2026-07-08T10:00:00.000Z\",\"type\":\"session_meta\",\"payload\":{\"id\":\"".to_vec();
    bad_utf8.extend_from_slice(tid(106).as_bytes());
    bad_utf8.extend_from_slice(b"\",\"cwd\":\"/w\xff\xfe\"}}\n");
    let utf8 = day.join(name(106));
    std::fs::write(&utf8, bad_utf8).unwrap();
    expected.push((utf8, &["invalidUtf8"]));

    let deep = day.join(name(107));
    let mut nested = "[".repeat(100_000);
    nested.push_str(&"]".repeat(100_000));
    nested.push('\n');
    std::fs::write(&deep, nested).unwrap();
    expected.push((deep, &["invalidJson"]));

    // A path swapped between a good rollout and a FIFO as fast as possible, for 2 s, ending
    // on the rollout: never blocks, and ends resolvable.
    let swapped = day.join(name(108));
    let good = Rollout::new(&tid(108), "2026-07-08T10:00:00.000Z", "/w", "swapped").jsonl();
    let staging = fx.root.join("swap");
    std::fs::create_dir_all(&staging).unwrap();
    let swaps = {
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < Duration::from_secs(2) {
            let file = staging.join("file");
            std::fs::write(&file, &good).unwrap();
            std::fs::rename(&file, &swapped).unwrap();
            let fifo = staging.join("fifo");
            mkfifo(&fifo, 0o644);
            std::fs::rename(&fifo, &swapped).unwrap();
            n += 2;
        }
        let file = staging.join("file");
        std::fs::write(&file, &good).unwrap();
        std::fs::rename(&file, &swapped).unwrap();
        n + 1
    };

    // A directory of 100,000 entries, one of them a real rollout.
    let big = fx.home.join("sessions/2026/07/09");
    std::fs::create_dir_all(&big).unwrap();
    let t = Instant::now();
    for i in 0..100_000 {
        std::fs::File::create(big.join(format!("entry-{i:06}"))).unwrap();
    }
    let among = Rollout::new(&tid(109), "2026-07-09T10:00:00.000Z", "/w", "among many");
    let among_path = big.join(among.file_name());
    std::fs::write(&among_path, among.jsonl()).unwrap();
    eprintln!(
        "hostile files: 100,000 entries written in {:?}",
        t.elapsed()
    );

    let found = eventually("every hostile file is classified", || {
        let p = problems(&agent);
        expected
            .iter()
            .all(|(path, kinds)| p.get(path).is_some_and(|k| kinds.contains(&k.as_str())))
            .then_some(p)
    });
    for (path, _) in &expected {
        eprintln!(
            "  {} -> {}",
            path.file_name().unwrap().to_string_lossy(),
            found[path]
        );
    }
    let r = eventually("the swapped path ends resolvable", || {
        agent
            .call("thread/resolve", json!({ "threadId": tid(108) }))
            .ok()
    });
    assert_eq!(r["canonicalPath"], json!(swapped));
    let r = eventually("the rollout among 100,000 entries is indexed", || {
        agent
            .call("thread/resolve", json!({ "threadId": tid(109) }))
            .ok()
    });
    assert_eq!(r["canonicalPath"], json!(among_path));
    // The outside rollout was never indexed under its own id.
    assert!(agent
        .call("thread/resolve", json!({ "threadId": tid(103) }))
        .is_err());
    eprintln!(
        "hostile files: {swaps} swaps; all classified within {:?}",
        started.elapsed()
    );
    report("hostile files", resolver.finish());
    assert_eq!(agent.status()["ready"], true);
}

/// Connects as `uid` (effective, on this thread only, through the raw syscall), so the
/// agent's peer check sees that uid.
fn connect_as(socket: &Path, uid: u32) -> std::io::Result<UnixStream> {
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        // SAFETY: raw setresuid changes this thread's credentials only; the thread ends here.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, -1i64, i64::from(uid), -1i64) };
        assert_eq!(rc, 0, "setresuid");
        UnixStream::connect(&socket)
    })
    .join()
    .expect("connect thread")
}

fn call_as(socket: &Path, uid: u32, method: &str, params: Value) -> Option<Value> {
    let s = connect_as(socket, uid).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    (&s).write_all(request(1, method, params).as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).ok()?;
    serde_json::from_str(&line).ok()
}

#[test]
fn unreadable_file_and_directory_are_classified_by_an_unprivileged_agent() {
    if !root_or_skip(&format!("to run the agent as uid {NOBODY}")) {
        return;
    }
    let fx = Fixture::new();
    for n in 0..5 {
        fx.write_active(&Rollout::new(
            &tid(n),
            "2026-07-01T10:00:00.000Z",
            "/w",
            "good",
        ));
    }
    std::fs::create_dir_all(fx.index.parent().unwrap()).unwrap();
    chown_tree(&fx.root, NOBODY);
    let mut c = fx.cmd();
    c.arg("run");
    as_nobody(&mut c);
    let mut agent = Agent::spawn_command(c, fx.socket(), fx.root.join("agent.log"));
    agent.wait_ready();
    let day = fx.home.join(DAY);
    std::fs::create_dir_all(&day).unwrap();
    // Root-owned, 0600: unreadable by the agent.
    let file = day.join(name(200));
    std::fs::write(
        &file,
        Rollout::new(&tid(200), "2026-07-08T10:00:00.000Z", "/w", "x").jsonl(),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let closed = fx.home.join("sessions/2026/07/09");
    std::fs::create_dir_all(&closed).unwrap();
    std::fs::write(
        closed.join(format!("rollout-2026-07-09T10-00-00-{}.jsonl", tid(201))),
        Rollout::new(&tid(201), "2026-07-09T10:00:00.000Z", "/w", "x").jsonl(),
    )
    .unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    let rescan = call_as(&fx.socket(), NOBODY, "index/rescan", json!({})).expect("rescan");
    assert!(rescan.get("result").is_some(), "{rescan}");
    let p = eventually("both are classified", || {
        let v = call_as(&fx.socket(), NOBODY, "index/problems", json!({}))?;
        let p: HashMap<String, String> = v["result"]["problems"]
            .as_array()?
            .iter()
            .map(|p| {
                (
                    p["path"].as_str().unwrap_or("").to_owned(),
                    p["reason"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        (p.get(&file.display().to_string()).map(String::as_str) == Some("permissionDenied")
            && p.get(&closed.display().to_string()).map(String::as_str) == Some("permissionDenied"))
        .then_some(p)
    });
    eprintln!("unreadable: {p:?}");
    for n in 0..5 {
        let v = call_as(
            &fx.socket(),
            NOBODY,
            "thread/resolve",
            json!({ "threadId": tid(n) }),
        )
        .expect("resolve");
        assert_eq!(v["result"]["threadId"], tid(n), "{v}");
    }
    drop(agent);
}
