//! The CLI against an agent that cannot answer: stopped (SIGSTOP), or every connection slot
//! held by clients that never send anything. Query commands fall back to the index with a
//! note, `wait` gives up after its own timeout, and the agent closes silent connections.
//! Also: a closed stdout is not a crash, relative paths are the CLI's, `wait` prints text.

mod common;

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::Stdio;

use common::agent::{eventually, Agent, EVENT_DEADLINE};
use common::{tid, Fixture, Rollout, Run};

fn fixture() -> (Fixture, Rollout, std::path::PathBuf) {
    let fx = Fixture::new();
    let r = Rollout::new(&tid(1), "2026-11-21T19:02:43.000Z", "/w/a", "first");
    let path = fx.write_active(&r);
    (fx, r, path)
}

/// Runs each command at once (they are independent) and returns their results in order.
fn run_all(fx: &Fixture, commands: &[Vec<String>]) -> Vec<Run> {
    std::thread::scope(|s| {
        let handles: Vec<_> = commands
            .iter()
            .map(|args| {
                s.spawn(move || {
                    let args: Vec<&str> = args.iter().map(String::as_str).collect();
                    fx.run(&args)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// The query commands, each with the exit status its answer has.
fn queries(r: &Rollout, path: &std::path::Path) -> Vec<(Vec<String>, i32)> {
    let p = path.to_string_lossy().into_owned();
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    vec![
        (v(&["resolve", &r.id]), 0),
        (v(&["resolve", &p]), 0),
        (v(&["same", &p, &p]), 0),
        (v(&["check-resume", &r.id, &p]), 0),
        (v(&["list"]), 0),
        (v(&["problems"]), 0),
        // No agent answering is a "no" for status, with the index's counts.
        (v(&["status"]), 1),
    ]
}

fn assert_fell_back(runs: &[Run], expected: &[(Vec<String>, i32)]) {
    for (run, (_, code)) in runs.iter().zip(expected) {
        assert_eq!(run.code, *code, "{run:?}");
        assert!(!run.json.is_null(), "an answer: {run:?}");
        assert!(
            run.stderr.contains("answering from the index")
                || run.stderr.contains("did not accept"),
            "a note on stderr: {run:?}"
        );
        assert!(!run.stderr.contains("panicked"), "{run:?}");
    }
}

#[test]
fn a_stopped_agent_is_answered_around() {
    let (fx, r, path) = fixture();
    let agent = Agent::start(&fx);
    agent.signal(libc::SIGSTOP);
    let expected = queries(&r, &path);
    let commands: Vec<Vec<String>> = expected.iter().map(|(c, _)| c.clone()).collect();
    let runs = run_all(&fx, &commands);
    let status = &runs[runs.len() - 1];
    assert_eq!(status.json["agent"], false, "{status:?}");
    assert_eq!(status.json["counts"]["threads"], 1, "{status:?}");
    assert_fell_back(&runs, &expected);
    // `wait` needs the agent: it gives up after its timeout (plus a margin) with an error.
    let wait = fx.run(&["wait", &tid(7), "--timeout", "1s"]);
    assert_eq!(wait.code, 2, "{wait:?}");
    assert!(wait.stderr.contains("did not answer"), "{wait:?}");
    agent.signal(libc::SIGCONT);
    // Awake again, it answers.
    let out = fx.run(&["status"]);
    assert_eq!(
        (out.code, &out.json["ready"]),
        (0, &serde_json::json!(true)),
        "{out:?}"
    );
}

#[test]
fn silent_clients_holding_every_slot_are_answered_around_then_closed() {
    let (mut fx, r, path) = fixture();
    let config = fx.root.join("config.toml");
    std::fs::write(
        &config,
        // first_request_timeout stays at its 10 s default: longer than the CLI's 5 s wait
        // for an answer, so the CLI meets the slots still held.
        "[server]\nmax_connections = 2\n",
    )
    .unwrap();
    fx.config = Some(config);
    let agent = Agent::start(&fx);
    let mut silent: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&agent.socket).unwrap())
        .collect();
    let expected = queries(&r, &path);
    // One at a time: each would take a slot the moment one frees.
    let (args, code) = &expected[0];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = fx.run(&args);
    assert_fell_back(&[run], &[(Vec::new(), *code)]);
    // The agent closes connections that never sent a request.
    for s in &mut silent {
        s.set_read_timeout(Some(EVENT_DEADLINE)).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).unwrap(), 0, "closed by the agent");
    }
    // Then the slots are free for real clients.
    eventually("the agent answers again", || {
        let out = fx.run(&["status"]);
        (out.code == 0).then_some(())
    });
}

/// A pipe whose read end is already closed: writing to it fails with EPIPE.
fn closed_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe {
        libc::close(fds[0]);
        OwnedFd::from_raw_fd(fds[1])
    }
}

#[test]
fn a_closed_stdout_ends_quietly_with_the_answers_status() {
    let (fx, r, _) = fixture();
    for args in [
        vec!["resolve", r.id.as_str()],
        vec!["--json", "resolve", r.id.as_str()],
        vec!["resolve", "01a2ffff-0000-7000-8000-000000000000"],
        vec!["protocol", "schema"],
        vec!["man"],
    ] {
        let out = fx
            .cmd()
            .args(&args)
            .stdout(Stdio::from(closed_pipe()))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        let expected = if args.contains(&"01a2ffff-0000-7000-8000-000000000000") {
            1
        } else {
            0
        };
        assert_eq!(out.status.code(), Some(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn relative_paths_are_the_clis_and_wait_prints_text() {
    let (fx, r, path) = fixture();
    let agent = Agent::start(&fx);
    let dir = path.parent().unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    let run_in = |args: &[&str]| {
        let mut c = fx.cmd();
        c.current_dir(dir).arg("--json").args(args);
        Run::spawn(c, args)
    };
    let out = run_in(&["resolve", name]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["threadId"], r.id.as_str());
    let out = run_in(&["same", name, &format!("./{name}")]);
    assert_eq!(
        (out.code, &out.json["same"]),
        (0, &serde_json::json!(true)),
        "{out:?}"
    );
    assert_eq!(
        out.json["a"]["path"],
        path.to_string_lossy().as_ref(),
        "sent absolute"
    );
    let out = run_in(&["check-resume", &r.id, name]);
    assert_eq!(out.code, 0, "{out:?}");
    // The agent answered these (it counts requests), not the index.
    assert!(agent.status()["requests"].as_u64().unwrap() > 3);

    let mut c = fx.cmd();
    c.args(["wait", &r.id, "--timeout", "5s"]);
    let out = Run::spawn(c, &["wait"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("threadId "), "human output: {out:?}");
    assert!(out.json.is_null(), "not JSON: {out:?}");
}
