//! The agent end to end: a real `rolloutd run` spawned from the built binary, real inotify
//! events in a temp home, and real clients on its Unix socket.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::agent::{eventually, request, Agent, Raw, EVENT_DEADLINE};
use common::sys::{as_nobody, root_or_skip, NOBODY};
use common::{jpath, tid, Fixture, Rollout};
use rolloutd::client::ClientError;
use serde_json::{json, Value};

fn rollout(n: u32) -> Rollout {
    Rollout::new(
        &tid(n),
        &format!("2026-11-{:02}T10:{:02}:00.000Z", 1 + n % 28, n % 60),
        &format!("/src/p{n}"),
        &format!("prompt {n}"),
    )
    .base_len(2000)
}

fn rpc_error(r: Result<Value, ClientError>) -> rolloutd::server::frame::RpcError {
    match r {
        Err(ClientError::Rpc(e)) => e,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// `index/status`'s count of full reconciles after the first.
fn rescans(agent: &Agent) -> u64 {
    agent.status()["rescans"].as_u64().expect("rescans")
}

/// A one-connection proxy in front of the agent's socket that reports when the agent
/// confirmed a subscription (`"subscribed":true` went back to the client).
struct Tap {
    front: PathBuf,
    subscribed: mpsc::Receiver<()>,
    /// Both ends, once connected, to shut down at the end.
    ends: Arc<std::sync::Mutex<Vec<UnixStream>>>,
    proxy: std::thread::JoinHandle<()>,
}

impl Tap {
    fn start(front: &Path, agent: &Path) -> Tap {
        let listener = UnixListener::bind(front).unwrap();
        listener.set_nonblocking(true).unwrap();
        let (tx, subscribed) = mpsc::channel();
        let ends = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (agent, held) = (agent.to_owned(), Arc::clone(&ends));
        let accept = std::thread::spawn(move || {
            use std::io::{BufRead, Write};
            let started = Instant::now();
            let down = loop {
                match listener.accept() {
                    Ok((s, _)) => break s,
                    Err(_) if started.elapsed() < EVENT_DEADLINE => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(_) => return,
                }
            };
            down.set_nonblocking(false).unwrap();
            let up = UnixStream::connect(&agent).unwrap();
            held.lock()
                .unwrap()
                .extend([down.try_clone().unwrap(), up.try_clone().unwrap()]);
            let (mut down_r, mut up_w) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            let forward = std::thread::spawn(move || {
                let _ = std::io::copy(&mut down_r, &mut up_w);
                let _ = up_w.shutdown(std::net::Shutdown::Write);
            });
            let (mut up_r, mut down_w) = (std::io::BufReader::new(up), down);
            let mut line = Vec::new();
            // Ends when either side closes (the test shuts both down at the end).
            while up_r.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                if line.windows(17).any(|w| w == b"\"subscribed\":true") {
                    let _ = tx.send(());
                }
                if down_w.write_all(&line).is_err() {
                    break;
                }
                line.clear();
            }
            let _ = forward.join();
        });
        Tap {
            front: front.to_owned(),
            subscribed,
            ends,
            proxy: accept,
        }
    }

    /// Shuts both connections down and joins the proxy.
    fn close(self) {
        for s in self.ends.lock().unwrap().iter() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        self.proxy.join().unwrap();
    }
}

#[test]
fn every_change_in_the_home_becomes_a_notification_and_the_answers_follow() {
    let fx = Fixture::new();
    let agent = Agent::start(&fx);
    let mut sub = agent.subscribe(None);
    let r = rollout(1);
    let id = r.id.as_str();

    // Create: materialized once, and resolvable.
    let active = fx.place_active(&r);
    let n = sub.expect("thread/materialized", id);
    assert_eq!(jpath(&n["record"]["path"]), active);
    let rec = agent
        .call("thread/resolve", json!({"threadId": id}))
        .unwrap();
    assert_eq!(jpath(&rec["path"]), active);
    assert_eq!(rec["title"], "prompt 1");

    // Append: updated, with the new size.
    let before = std::fs::metadata(&active).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&active)
            .unwrap();
        f.write_all(
            b"{\"timestamp\":\"2026-11-02T10:01:00.000Z\",\"type\":\"event_msg\",\"payload\":{}}\n",
        )
        .unwrap();
    }
    let after = std::fs::metadata(&active).unwrap().len();
    assert!(after > before);
    let n = sub.expect("thread/updated", id);
    assert_eq!(n["record"]["sizeBytes"], after);

    // Archive by rename: the same file, so archived (not removed plus materialized).
    let archived = fx.home.join("archived_sessions").join(r.file_name());
    std::fs::rename(&active, &archived).unwrap();
    let n = sub.expect("thread/archived", id);
    assert_eq!(jpath(&n["record"]["path"]), archived);
    assert_eq!(jpath(&n["previousPath"]), active);
    let rec = agent
        .call("thread/resolve", json!({"threadId": id}))
        .unwrap();
    assert_eq!(rec["archived"], true);
    assert_eq!(jpath(&rec["path"]), archived);

    // Unarchive.
    std::fs::rename(&archived, &active).unwrap();
    let n = sub.expect("thread/unarchived", id);
    assert_eq!(jpath(&n["record"]["path"]), active);

    // Compress: the .zst copy appears, then the plain file goes.
    let zst = active.with_file_name(format!("{}.zst", r.file_name()));
    fx.place(&common::zstd_bytes(&std::fs::read(&active).unwrap()), &zst);
    std::fs::remove_file(&active).unwrap();
    let n = sub.expect("thread/compressed", id);
    assert_eq!(n["record"]["compression"], "zstd");
    assert_eq!(jpath(&n["record"]["path"]), zst);

    // Delete: removed; the thread is gone, and its old path is `missing`, not
    // `notMaterialized` (the thread existed).
    std::fs::remove_file(&zst).unwrap();
    sub.expect("thread/removed", id);
    let e = rpc_error(agent.call("thread/resolve", json!({"threadId": id})));
    assert_eq!(e.reason().map(|r| r.as_str()), Some("notFound"), "{e:?}");
    let check = agent
        .call("thread/checkResume", json!({"threadId": id, "path": zst}))
        .unwrap();
    assert_eq!(check["ok"], false);
    assert_eq!(check["reason"], "missing", "{check}");

    // A thread Codex has named but not written yet.
    let unborn = rollout(2);
    let unborn_path = fx.home.join(unborn.day_dir()).join(unborn.file_name());
    let check = agent
        .call(
            "thread/checkResume",
            json!({"threadId": unborn.id, "path": unborn_path}),
        )
        .unwrap();
    assert_eq!(check["reason"], "notMaterialized", "{check}");
    // ... and once it is written, the same question is answered `ok`.
    fx.place_active(&unborn);
    sub.expect("thread/materialized", &unborn.id);
    let check = agent
        .call(
            "thread/checkResume",
            json!({"threadId": unborn.id, "path": unborn_path}),
        )
        .unwrap();
    assert_eq!(check["ok"], true, "{check}");
}

#[test]
fn wait_returns_when_the_rollout_appears_and_times_out_cleanly() {
    let fx = Fixture::new();
    let agent = Agent::start(&fx);
    let r = rollout(3);

    // The wait, then a status request, pipelined on one connection: requests are read in
    // order, so the status answer coming back first shows the agent holds the wait.
    let mut raw = Raw::connect(&agent.socket);
    let mut batch = request(
        1,
        "thread/wait",
        json!({"threadId": r.id, "timeoutMs": 10_000}),
    );
    batch.push_str(&request(2, "index/status", json!({})));
    raw.send(batch.as_bytes()).unwrap();
    let first: Value = serde_json::from_str(&raw.line().unwrap()).unwrap();
    assert_eq!(first["id"], 2, "returned before the file existed: {first}");
    let written = Instant::now();
    let path = fx.place_active(&r);
    let reply: Value = serde_json::from_str(&raw.line().unwrap()).unwrap();
    assert_eq!(reply["id"], 1, "{reply}");
    let rec = &reply["result"];
    assert_eq!(rec["threadId"], r.id.as_str(), "thread/wait: {reply}");
    assert_eq!(jpath(&rec["path"]), path);
    println!(
        "thread/wait returned {:?} after the file appeared",
        written.elapsed()
    );

    // Never written: a timeout error with the reason and what is known.
    let ghost = rollout(4);
    let started = Instant::now();
    let e = rpc_error(agent.call(
        "thread/wait",
        json!({"threadId": ghost.id, "timeoutMs": 300}),
    ));
    assert_eq!(e.code, rolloutd::server::frame::TIMEOUT);
    assert_eq!(e.reason().map(|r| r.as_str()), Some("notMaterialized"));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        e.data.as_ref().unwrap().thread_id.as_deref(),
        Some(ghost.id.as_str())
    );

    // The CLI form: exit 1 (a "no"), with the reason.
    let out = fx.run(&["wait", &ghost.id, "--timeout", "200ms"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.error_reason(), "notMaterialized", "{out:?}");
    let out = fx.run(&["wait", &r.id, "--timeout", "1s"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["threadId"], r.id.as_str());
}

#[test]
fn a_line_over_one_mebibyte_is_refused_and_the_connection_closed() {
    let fx = Fixture::new();
    let agent = Agent::start(&fx);
    let mut raw = Raw::connect(&agent.socket);
    let mut writer = raw.writer.try_clone().unwrap();
    // Written from another thread: the agent closes mid-line, so the write may fail.
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        let big = format!(
            "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":\"{}\"}}\n",
            "a".repeat(1 << 20)
        );
        let _ = writer.write_all(big.as_bytes());
    });
    let line = raw.line().unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["error"]["code"], -32600, "{v}");
    assert_eq!(v["id"], Value::Null);
    assert_eq!(
        raw.line().unwrap(),
        "",
        "the connection should close after the error"
    );
    sender.join().unwrap();
    // The agent is fine.
    assert_eq!(agent.status()["ready"], true);
}

#[test]
fn sixty_four_clients_pipelining_each_get_their_own_answers() {
    let fx = Fixture::new();
    for n in 0..20 {
        fx.write_active(&rollout(100 + n));
    }
    let agent = Agent::start(&fx);
    let socket = agent.socket.clone();
    let clients: Vec<_> = (0..64u64)
        .map(|c| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut raw = Raw::connect(&socket);
                // Every request first, then every response: a pipelined connection.
                let mut batch = String::new();
                for i in 0..100u64 {
                    let n = ((c + i) % 25) as u32;
                    batch.push_str(&request(
                        i,
                        "thread/resolve",
                        json!({"threadId": tid(100 + n)}),
                    ));
                }
                raw.send(batch.as_bytes()).unwrap();
                let mut answered = std::collections::HashSet::new();
                for _ in 0..100 {
                    let line = raw.line().unwrap();
                    assert!(line.ends_with('\n'), "torn line {line:?}");
                    let v: Value = serde_json::from_str(&line).unwrap();
                    let i = v["id"].as_u64().unwrap();
                    assert!(answered.insert(i), "id {i} answered twice");
                    let n = ((c + i) % 25) as u32;
                    if n < 20 {
                        assert_eq!(v["result"]["threadId"], tid(100 + n), "{v}");
                    } else {
                        assert_eq!(v["error"]["data"]["reason"], "notFound", "{v}");
                    }
                }
                answered.len()
            })
        })
        .collect();
    let total: usize = clients.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(total, 6400);
}

#[test]
fn sigterm_under_load_tears_no_response_and_removes_the_socket() {
    let fx = Fixture::new();
    for n in 0..10 {
        fx.write_active(&rollout(200 + n));
    }
    let mut agent = Agent::start(&fx);
    let socket = agent.socket.clone();
    // Clients that have had a batch answered: the load is on once all 8 have.
    let loaded = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8u64)
        .map(|c| {
            let socket = socket.clone();
            let loaded = Arc::clone(&loaded);
            std::thread::spawn(move || {
                let mut raw = Raw::connect(&socket);
                let mut next = 0u64;
                let mut complete = 0u64;
                'outer: for _ in 0..100_000 {
                    let mut batch = String::new();
                    for _ in 0..16 {
                        batch.push_str(&request(
                            next,
                            "thread/resolve",
                            json!({"threadId": tid(200 + ((c + next) % 10) as u32)}),
                        ));
                        next += 1;
                    }
                    if raw.send(batch.as_bytes()).is_err() {
                        break;
                    }
                    for _ in 0..16 {
                        let line = match raw.line() {
                            Ok(l) => l,
                            Err(_) => break 'outer,
                        };
                        if line.is_empty() {
                            break 'outer; // closed by the agent
                        }
                        assert!(line.ends_with('\n'), "torn response {line:?}");
                        let v: Value = serde_json::from_str(&line)
                            .unwrap_or_else(|e| panic!("torn response {line:?}: {e}"));
                        assert!(v["id"].as_u64().is_some_and(|i| i < next), "{v}");
                        if v.get("result").is_some() {
                            complete += 1;
                        }
                    }
                    if next == 16 {
                        loaded.fetch_add(1, Ordering::Relaxed);
                    }
                }
                complete
            })
        })
        .collect();
    eventually("every client under load", || {
        (loaded.load(Ordering::Relaxed) == 8).then_some(())
    });
    let (status, took) = agent.stop();
    let answered: u64 = clients.into_iter().map(|h| h.join().unwrap()).sum();
    println!("SIGTERM under load: exit {status} after {took:?}, {answered} answers before it");
    assert!(status.success(), "{status}; log:\n{}", agent.log());
    assert!(answered > 0);
    assert!(!socket.exists(), "the socket file is left behind");
}

#[test]
fn a_second_instance_is_refused_naming_the_first_ones_pid() {
    let fx = Fixture::new();
    let agent = Agent::start(&fx);
    let out = common::Run::spawn(
        {
            let mut c = fx.cmd();
            c.arg("run");
            c
        },
        &["run"],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains(&agent.pid().to_string()), "{out:?}");
    // The first one is unaffected.
    assert_eq!(agent.status()["pid"], agent.pid());
}

#[test]
fn a_stale_socket_from_a_crashed_instance_is_replaced() {
    let fx = Fixture::new();
    let socket = fx.socket();
    let dir = socket.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Bound and dropped: the file stays, nobody listens (what a SIGKILL leaves).
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let agent = Agent::start(&fx);
    assert_eq!(agent.status()["ready"], true);
}

#[test]
fn another_uid_is_refused_by_the_peer_check() {
    if !root_or_skip("to run a client as another uid") {
        return;
    }
    let fx = Fixture::new();
    let agent = Agent::start(&fx);
    // Open the path to the socket for everyone, so only the peer-uid check stands in the way.
    let mut p = agent.socket.clone();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
    while p.pop() && p.starts_with(&fx.root) {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_rolloutd"));
    c.args(["--json", "--socket"])
        .arg(&agent.socket)
        .arg("status");
    c.env_clear().env("HOME", "/");
    as_nobody(&mut c);
    let out = common::Run::spawn(c, &["status", "(as uid 65534)"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains(&format!("peer uid {NOBODY}")),
        "{out:?}"
    );
    // And the owner still gets in.
    assert_eq!(agent.status()["ready"], true);
}

#[test]
fn query_commands_use_a_matching_agent_and_answer_the_same_without_one() {
    let fx = Fixture::new();
    let r = rollout(5);
    let path = fx.write_active(&r);
    let mut agent = Agent::start(&fx);
    let served_before = agent.status()["requests"].as_u64().unwrap();
    let with_agent: Vec<_> = [
        vec!["resolve", r.id.as_str()],
        vec!["resolve", &r.id[..8]],
        vec!["resolve", path.to_str().unwrap()],
        vec!["check-resume", r.id.as_str(), path.to_str().unwrap()],
        vec!["same", path.to_str().unwrap(), path.to_str().unwrap()],
        vec!["list"],
        vec!["problems"],
        vec!["resolve", "0000ffff"],
    ]
    .into_iter()
    .map(|args| (args.clone(), fx.run(&args)))
    .collect();
    let served = agent.status()["requests"].as_u64().unwrap() - served_before;
    // One status check per command plus its query (and this status call).
    assert!(
        served >= 2 * with_agent.len() as u64,
        "the CLI did not go through the agent ({served} requests)"
    );
    agent.stop();
    for (args, via_agent) in with_agent {
        let direct = fx.run(&args);
        assert_eq!(
            via_agent.code, direct.code,
            "{args:?}\n{via_agent:?}\n{direct:?}"
        );
        assert_eq!(via_agent.json, direct.json, "{args:?}");
    }
}

#[test]
fn query_commands_ignore_an_agent_serving_other_homes() {
    let fx = Fixture::new();
    let r = rollout(6);
    fx.write_active(&r);
    // An agent on the same socket but another home and index.
    let other = Fixture::new();
    let mut c = other.cmd();
    c.arg("--socket").arg(fx.socket()).arg("run");
    let agent = Agent::spawn_command(c, fx.socket(), other.root.join("agent.log"));
    let mut agent = agent;
    agent.wait_ready();
    let out = fx.resolve(&r.id);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["threadId"], r.id.as_str());
}

#[test]
fn the_watch_command_prints_notifications_as_json_lines() {
    let fx = Fixture::new();
    let agent = Agent::start(&fx);
    // The command talks to the agent through a tap that says when the agent confirmed the
    // subscription: only changes after that reach the command.
    let tap = Tap::start(&fx.root.join("tap.sock"), &agent.socket);
    let mut c = fx.cmd();
    c.arg("--socket")
        .arg(&tap.front)
        .arg("watch")
        .stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let r = rollout(7);
    if let Err(e) = tap.subscribed.recv_timeout(EVENT_DEADLINE) {
        child.kill().ok();
        child.wait().ok();
        panic!("the watch command did not subscribe: {e}");
    }
    fx.place_active(&r);
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(stdout).lines();
        lines.next().map(|l| l.unwrap())
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().ok();
    child.wait().ok();
    tap.close();
    let line = reader.join().unwrap().expect("a notification line");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["method"], "thread/materialized", "{v}");
    assert_eq!(v["params"]["threadId"], r.id.as_str());
}

#[test]
fn sighup_reloads_the_homes_and_a_bad_config_keeps_the_running_one() {
    let fx = Fixture::new();
    let second = fx.root.join("second-home");
    std::fs::create_dir_all(second.join("sessions")).unwrap();
    let r = rollout(8);
    let path = second.join(r.day_dir()).join(r.file_name());
    fx.place(&r.jsonl(), &path);
    let config = fx.root.join("rolloutd.toml");
    let write_config = |homes: &[&Path]| {
        let list: Vec<String> = homes
            .iter()
            .map(|h| format!("{:?}", h.to_str().unwrap()))
            .collect();
        std::fs::write(
            &config,
            format!(
                "codex_homes = [{}]\nindex = {:?}\n",
                list.join(", "),
                fx.index.to_str().unwrap()
            ),
        )
        .unwrap();
    };
    write_config(&[&fx.home]);
    // Homes from the file only (a --codex-home flag would win over it).
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_rolloutd"));
    c.env_clear()
        .env("HOME", fx.root.join("user"))
        .env("XDG_RUNTIME_DIR", fx.root.join("user/run"))
        .arg("--config")
        .arg(&config)
        .arg("run");
    let mut agent = Agent::spawn_command(c, fx.socket(), fx.root.join("agent.log"));
    agent.wait_ready();
    let e = rpc_error(agent.call("thread/resolve", json!({"threadId": r.id})));
    assert_eq!(e.reason().map(|r| r.as_str()), Some("notFound"));

    write_config(&[&fx.home, &second]);
    agent.signal(libc::SIGHUP);
    let rec = eventually("the new home after SIGHUP", || {
        agent.call("thread/resolve", json!({"threadId": r.id})).ok()
    });
    assert_eq!(jpath(&rec["path"]), path);
    assert_eq!(agent.status()["homes"].as_array().unwrap().len(), 2);

    // A broken file: the agent logs it and keeps both homes.
    std::fs::write(&config, "codex_homes = 7\n").unwrap();
    agent.signal(libc::SIGHUP);
    eventually("the reload failure in the log", || {
        agent.log().contains("config reload failed").then_some(())
    });
    assert_eq!(agent.status()["homes"].as_array().unwrap().len(), 2);
    assert!(agent
        .call("thread/resolve", json!({"threadId": r.id}))
        .is_ok());
}

/// The home deleted while the watcher re-establishes its watches (so nothing watches it as
/// it goes) and made again at once gets its directories' old inode numbers back: the root
/// check tells them apart by birth time, and a home that was missing when the homes were
/// resolved is resolved again where it really is.
#[test]
fn watches_follow_a_home_deleted_and_recreated_and_a_retargeted_symlink() {
    let fx = Fixture::symlinked();
    let agent = Agent::start(&fx);
    let mut sub = agent.subscribe(None);

    // The home goes away and comes back. Each time the watcher's root check sees the
    // home change identity and re-establishes its watches with a full reconcile, which
    // `rescans` counts.
    let real = fx.real_home();
    let before = rescans(&agent);
    std::fs::remove_dir_all(&real).unwrap();
    eventually("the agent notices the home is gone", || {
        (rescans(&agent) > before).then_some(())
    });
    let before = rescans(&agent);
    std::fs::create_dir_all(real.join("sessions")).unwrap();
    eventually("the agent notices the home is back", || {
        (rescans(&agent) > before).then_some(())
    });
    let r = rollout(9);
    fx.place_active(&r);
    sub.expect("thread/materialized", &r.id);

    // The user directory's symlink now points at another tree.
    let other = fx.root.join("mnt/users/v");
    std::fs::create_dir_all(other.join(".codex/sessions")).unwrap();
    let link = fx.root.join("home/u");
    let tmp = fx.root.join("home/u.new");
    std::os::unix::fs::symlink("../mnt/users/v", &tmp).unwrap();
    let before = rescans(&agent);
    std::fs::rename(&tmp, &link).unwrap();
    eventually("the agent follows the retargeted symlink", || {
        (rescans(&agent) > before).then_some(())
    });
    let r2 = rollout(10);
    let placed = fx.place_active(&r2);
    assert!(placed.starts_with(&fx.home));
    let n = sub.expect("thread/materialized", &r2.id);
    assert!(
        jpath(&n["record"]["canonicalPath"]).starts_with(&other),
        "{n}"
    );
    // The old tree is no longer the home: its thread is gone from the answers and the list.
    let e = rpc_error(agent.call("thread/resolve", json!({"threadId": r.id})));
    assert_eq!(e.reason().map(|r| r.as_str()), Some("notFound"), "{e:?}");
    let page = agent
        .call("thread/list", json!({"archived": "all"}))
        .unwrap();
    let ids: Vec<&str> = page["threads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["threadId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![r2.id.as_str()]);
}

#[test]
fn poll_mode_notices_changes_without_events() {
    let fx = Fixture::new();
    let agent = Agent::start_with(&fx, &["--watch-mode", "poll", "--poll-interval", "200ms"]);
    let status = agent.status();
    assert_eq!(status["watcher"]["mode"], "poll", "{status}");
    let mut sub = agent.subscribe(None);
    let r = rollout(11);
    fx.place_active(&r);
    sub.expect("thread/materialized", &r.id);
}

#[test]
fn queries_during_the_first_crawl_fall_back_to_the_disk() {
    let fx = Fixture::new();
    for n in 0..3000 {
        fx.write_active(&rollout(1000 + n).base_len(20_000));
    }
    let last = rollout(3999);
    let agent = Agent::spawn(&fx, &[]);
    // The first answer the agent gives, ready or not, is the right one.
    let (ready, rec) = eventually("a first answer", || {
        let mut client = rolloutd::client::Client::connect(&agent.socket).ok()?;
        let ready = client.call("index/status", json!({})).ok()?["ready"] == true;
        let rec = client.call("thread/resolve", json!({"threadId": last.id}));
        Some((ready, rec))
    });
    let rec = rec.expect("resolve during the first crawl");
    assert_eq!(rec["threadId"], last.id.as_str());
    println!("first answer given while ready = {ready}");
}

#[test]
fn a_thread_found_by_a_rescan_is_announced_as_materialized() {
    let fx = Fixture::new();
    // Polling once an hour: the new file is seen only by the rescan asked for below.
    let agent = Agent::start_with(&fx, &["--watch-mode", "poll", "--poll-interval", "1h"]);
    let mut sub = agent.subscribe(None);
    let r = rollout(12);
    fx.place_active(&r);
    let summary = agent.call("index/rescan", json!({})).unwrap();
    assert_eq!(summary["summary"]["read"], 1, "{summary}");
    let n = sub.expect("thread/materialized", &r.id);
    assert_eq!(n["record"]["title"], "prompt 12");
    sub.expect_method("index/rescanned");
}

/// `run` with extra environment (the `ROLLOUTD_*` config variables).
fn start_with_env(fx: &Fixture, env: &[(&str, &str)]) -> Agent {
    let mut c = fx.cmd();
    c.envs(env.iter().copied()).arg("run");
    let mut agent = Agent::spawn_command(c, fx.socket(), fx.root.join("agent.log"));
    agent.wait_ready();
    agent
}

#[test]
fn an_idle_connection_is_closed_but_a_subscribed_one_is_kept() {
    let fx = Fixture::new();
    let agent = start_with_env(&fx, &[("ROLLOUTD_IDLE_TIMEOUT", "300ms")]);
    // The subscriber's last request comes before the idle connection opens, so once the
    // idle one is closed (the read below waits for that), the subscriber has been idle
    // past the timeout too.
    let mut sub = agent.subscribe(None);
    let mut idle = Raw::connect(&agent.socket);
    assert_eq!(
        idle.line().unwrap(),
        "",
        "an idle connection should be closed"
    );
    // The subscriber outlived the timeout and still hears changes.
    let r = rollout(13);
    fx.place_active(&r);
    sub.expect("thread/materialized", &r.id);
}

#[test]
fn connections_past_max_connections_wait_for_a_free_slot() {
    let fx = Fixture::new();
    let agent = start_with_env(&fx, &[("ROLLOUTD_MAX_CONNECTIONS", "2")]);
    let first = agent.client();
    let second = agent.client();
    // Both slots are taken: a third connection is queued, not served.
    let mut third = Raw::connect(&agent.socket);
    third
        .reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    third
        .send(request(1, "index/status", json!({})).as_bytes())
        .unwrap();
    assert!(
        third.line().is_err(),
        "a third connection was served past the limit"
    );
    drop(first);
    third
        .reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let v: Value = serde_json::from_str(&third.line().unwrap()).unwrap();
    assert_eq!(v["result"]["ready"], true, "{v}");
    drop(second);
}

/// A stop ends the watcher at once, wherever it sleeps, so the index is closed cleanly:
/// one file, no WAL left, and sealed (the next start skips the full check).
#[test]
fn a_stopped_agent_leaves_its_index_whole_and_sealed() {
    let fx = Fixture::new();
    fx.write_active(&rollout(7));
    for idle_ms in [0, 300, 1100] {
        let mut agent = Agent::start(&fx);
        std::thread::sleep(Duration::from_millis(idle_ms));
        agent.stop();
        let wal = PathBuf::from(format!("{}-wal", fx.index.display()));
        let seal = PathBuf::from(format!("{}.sealed", fx.index.display()));
        assert!(!wal.exists(), "a WAL is left after idling {idle_ms} ms");
        assert!(seal.exists(), "no seal after idling {idle_ms} ms");
    }
}

/// Another process holding a read of the index (a CLI, an `sqlite3` shell) when the agent
/// stops: the closing checkpoint cannot finish, so the agent leaves no seal rather than
/// wait out the index's 5 s busy timeout, and the next start checks the file and serves.
#[test]
fn a_stop_does_not_wait_for_another_processs_read_of_the_index() {
    let fx = Fixture::new();
    fx.write_active(&rollout(7));
    let mut agent = Agent::start(&fx);
    // A write after the reader's snapshot, so the checkpoint has frames it must wait for.
    let reader = rusqlite::Connection::open(&fx.index).unwrap();
    reader
        .execute_batch("BEGIN; SELECT count(*) FROM files;")
        .unwrap();
    fx.write_active(&rollout(8));
    eventually("the new rollout is indexed", || {
        agent
            .call("thread/resolve", json!({"threadId": tid(8)}))
            .ok()
    });
    let (status, took) = agent.stop();
    assert!(status.success(), "{status}");
    assert!(
        took < Duration::from_secs(4),
        "the stop waited {took:?} for another process's read"
    );
    let seal = PathBuf::from(format!("{}.sealed", fx.index.display()));
    assert!(!seal.exists(), "sealed while a reader held frames back");
    drop(reader);
    let agent = Agent::start(&fx);
    assert_eq!(agent.status()["counts"]["threads"], json!(2));
}
