//! `rolloutd codex app-server` as a real process around a fake upstream: a `/bin/sh` script
//! standing in for `codex app-server` (mostly `cat`, which echoes every client line back as
//! a server line). What reaches the fake and what comes back are both visible on the
//! shim's stdout, so relay order, byte exactness, refusals and rewrites are all checked on
//! real pipes. No agent runs: the shim checks paths against the index directly.

mod common;

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::{tid, Fixture, Rollout};
use serde_json::{json, Value};

/// Fails a hung test; never an assertion about speed.
const DEADLINE: Duration = Duration::from_secs(60);

/// Writes an executable `sh` script standing in for the Codex binary.
fn fake(fx: &Fixture, name: &str, body: &str) -> PathBuf {
    let path = fx.root.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A running shim: its stdin, and its stdout and stderr read by threads.
struct Shim {
    child: Child,
    stdin: Option<ChildStdin>,
    out: Receiver<Vec<u8>>,
    err: Receiver<String>,
    /// Bytes read from stdout and not consumed yet.
    buf: Vec<u8>,
    eof: bool,
}

impl Shim {
    fn start(fx: &Fixture, bin: &Path, extra: &[&str]) -> Shim {
        let mut c = fx.cmd();
        c.args(["codex", "app-server", "--codex-bin"])
            .arg(bin)
            .args(extra)
            .env_remove("ROLLOUTD_CODEX_BIN")
            // The home Codex would use is the one rolloutd serves.
            .env("CODEX_HOME", &fx.home)
            .current_dir(&fx.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, out) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0; 1 << 16];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        });
        let (tx, err) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("shim: {line}");
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Shim {
            child,
            stdin,
            out,
            err,
            buf: Vec::new(),
            eof: false,
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).unwrap();
        stdin.flush().unwrap();
    }

    fn send_json(&mut self, v: Value) {
        self.send(format!("{v}\n").as_bytes());
    }

    fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Reads until `n` bytes are buffered (or end of output); returns them.
    fn read_exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n && self.fill() {}
        let rest = self.buf.split_off(n.min(self.buf.len()));
        std::mem::replace(&mut self.buf, rest)
    }

    /// The next line, without its `\n`; `None` at end of output.
    fn line(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let rest = self.buf.split_off(i + 1);
                let mut line = std::mem::replace(&mut self.buf, rest);
                line.pop();
                return Some(line);
            }
            if !self.fill() {
                return None;
            }
        }
    }

    fn json_line(&mut self) -> Value {
        let line = self.line().expect("a line before end of output");
        serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&line)))
    }

    /// Everything up to end of output.
    fn rest(&mut self) -> Vec<u8> {
        while self.fill() {}
        std::mem::take(&mut self.buf)
    }

    /// One more chunk from stdout; false at end of output.
    fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        match self.out.recv_timeout(DEADLINE) {
            Ok(chunk) => {
                self.buf.extend_from_slice(&chunk);
                true
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.eof = true;
                false
            }
            Err(RecvTimeoutError::Timeout) => panic!("no output from the shim within {DEADLINE:?}"),
        }
    }

    /// Waits for a stderr line containing `needle`.
    fn log_line(&mut self, needle: &str) -> String {
        let until = Instant::now() + DEADLINE;
        loop {
            match self
                .err
                .recv_timeout(until.saturating_duration_since(Instant::now()))
            {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(e) => panic!("no log line with {needle:?}: {e}"),
            }
        }
    }

    fn wait(&mut self) -> ExitStatus {
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < until,
                "the shim did not exit within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_client_line_reaches_codex_unchanged_and_in_order_and_every_server_line_comes_back() {
    let fx = Fixture::new();
    let echo = fake(&fx, "fake-codex", "exec cat");
    let mut shim = Shim::start(&fx, &echo, &[]);
    // JSON-RPC of every shape, things that are not JSON, a blank line, CRLF, bytes that are
    // not UTF-8, a 1 MiB line, and a request naming a path under no home's rollout method.
    let mut input = Vec::new();
    for i in 0..2000 {
        input.extend_from_slice(
            format!("{{\"id\":{i},\"method\":\"turn/start\",\"params\":{{\"threadId\":\"t\",\"input\":[{{\"type\":\"text\",\"text\":\"  spaced   {i} \\u00e9\"}}]}}}}\n")
                .as_bytes(),
        );
    }
    input.extend_from_slice(b"not json at all\n\n{\"method\":\"initialized\"}\r\n");
    input.extend_from_slice(b"\xff\xfe raw bytes \x00\n");
    input.extend_from_slice(
        br#"{"id":"fs","method":"fs/readFile","params":{"path":"/etc/hostname"}}"#,
    );
    input.push(b'\n');
    input.extend_from_slice(br#"{ "id" : 9 , "method":"thread/resume","params":{"threadId":"t"}}"#);
    input.push(b'\n');
    input.extend_from_slice(format!("{{\"big\":\"{}\"}}\n", "x".repeat(1 << 20)).as_bytes());
    // Written from another thread: the echo comes back while we still write.
    let writer = {
        let mut stdin = shim.stdin.take().unwrap();
        let input = input.clone();
        std::thread::spawn(move || {
            stdin.write_all(&input).unwrap();
            // `stdin` dropped here: the client closes its end.
        })
    };
    let out = shim.read_exact(input.len());
    writer.join().unwrap();
    assert!(out == input, "the relayed bytes differ from the client's");
    assert_eq!(shim.rest(), b"", "nothing more than the echo");
    assert_eq!(shim.wait().code(), Some(0), "cat exits 0 at end of input");
}

#[test]
fn a_trailing_partial_line_is_relayed_both_ways_at_close() {
    let fx = Fixture::new();
    let echo = fake(&fx, "fake-codex", "exec cat");
    let mut shim = Shim::start(&fx, &echo, &[]);
    shim.send(b"{\"id\":1}\n{\"id\":2,\"no newline\"");
    shim.close_stdin();
    assert_eq!(shim.rest(), b"{\"id\":1}\n{\"id\":2,\"no newline\"");
    assert!(shim.wait().success());
}

#[test]
fn server_lines_are_not_held_back_while_the_client_is_silent() {
    let fx = Fixture::new();
    // Codex speaks first (notifications) while the client writes nothing.
    let chatty = fake(
        &fx,
        "fake-codex",
        r#"i=0; while [ $i -lt 100 ]; do printf '{"method":"item/agentMessage/delta","params":{"delta":"%s"}}\n' $i; i=$((i+1)); done; cat >/dev/null"#,
    );
    let mut shim = Shim::start(&fx, &chatty, &[]);
    for i in 0..100 {
        let v = shim.json_line();
        assert_eq!(v["params"]["delta"], i.to_string());
    }
    // Only now does the client close; the fake was still reading its input.
    shim.close_stdin();
    assert!(shim.wait().success());
}

#[test]
fn codexs_exit_status_becomes_the_shims_and_closes_the_client_side() {
    let fx = Fixture::new();
    // Codex exits by itself while the client's input is still open.
    let quits = fake(&fx, "fake-codex", r#"echo '{"method":"bye"}'; exit 5"#);
    let mut shim = Shim::start(&fx, &quits, &[]);
    assert_eq!(shim.rest(), b"{\"method\":\"bye\"}\n");
    assert_eq!(shim.wait().code(), Some(5));

    // Codex killed by a signal: the shim dies by the same signal.
    let killed = fake(&fx, "fake-codex-killed", "kill -USR1 $$; cat");
    let mut shim = Shim::start(&fx, &killed, &[]);
    assert_eq!(shim.wait().signal(), Some(libc::SIGUSR1));

    // A binary that cannot be started: 127, and a sentence naming it.
    let mut shim = Shim::start(&fx, &fx.root.join("no-such-codex"), &[]);
    assert_eq!(shim.wait().code(), Some(127));
    shim.log_line("cannot start");
}

#[test]
fn arguments_after_the_double_dash_reach_codex_app_server() {
    let fx = Fixture::new();
    let args = fake(&fx, "fake-codex", r#"printf '%s|' "$@"; echo"#);
    let mut shim = Shim::start(
        &fx,
        &args,
        &["--", "--listen", "stdio://", "--enable", "x y"],
    );
    assert_eq!(shim.rest(), b"app-server|--listen|stdio://|--enable|x y|\n");
    assert!(shim.wait().success());
}

#[test]
fn a_signal_to_the_shim_is_passed_on_to_codex() {
    let fx = Fixture::new();
    // The fake says when its trap is set, then exits 42 on SIGTERM. It waits with the `wait`
    // builtin, which a trapped signal interrupts at once: a shell waiting for a *foreground*
    // command runs the trap only once that command ends (POSIX), and a signal that reached
    // the group just before `cat` was forked never reaches `cat`, so the shell waited on it
    // forever. Codex's stdin is read by a background `cat` (given it through fd 3: an
    // asynchronous command's stdin is otherwise /dev/null), so it ends with the shim.
    let trapping = fake(
        &fx,
        "fake-codex",
        r#"trap 'exit 42' TERM; exec 3<&0; cat <&3 >/dev/null & echo '{"method":"ready"}'; wait"#,
    );
    let mut shim = Shim::start(&fx, &trapping, &[]);
    assert_eq!(shim.json_line()["method"], "ready");
    // SAFETY: kill has no memory effects; the pid is our live child.
    unsafe { libc::kill(shim.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(
        shim.wait().code(),
        Some(42),
        "Codex's trap ran and its status came back"
    );
}

#[test]
fn a_client_that_stops_reading_closes_codexs_input() {
    let fx = Fixture::new();
    let echo = fake(&fx, "fake-codex", "cat; exit 3");
    let mut shim = Shim::start(&fx, &echo, &[]);
    shim.send(b"{\"id\":1}\n");
    assert_eq!(shim.line().unwrap(), b"{\"id\":1}");
    // Close the shim's stdout by dropping our reader, keep its stdin open, and send a line
    // whose echo then cannot be delivered: the shim closes Codex's input, Codex exits.
    drop(std::mem::replace(
        &mut shim.out,
        std::sync::mpsc::channel().1,
    ));
    // Lines keep coming until one finds the pipe closed; bounded by the deadline.
    let until = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(s) = shim.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < until,
            "the shim did not exit within {DEADLINE:?}"
        );
        // Fails once the shim is gone; that is the point.
        let _ = shim.stdin.as_mut().unwrap().write_all(b"{\"id\":2}\n");
        std::thread::sleep(Duration::from_millis(1));
    };
    assert_eq!(status.code(), Some(3));
}

/// A symlinked home with two rollouts, for the checked requests.
struct Home {
    fx: Fixture,
    t: String,
    u: String,
    /// T's rollout, spelled through the symlinked home (as Codex records it).
    t_path: PathBuf,
    u_path: PathBuf,
}

fn home() -> Home {
    let fx = Fixture::symlinked();
    let (t, u) = (tid(1), tid(2));
    let t_path = fx.write_active(&Rollout::new(&t, "2026-11-21T19:02:43.635Z", "/w", "one"));
    let u_path = fx.write_active(&Rollout::new(&u, "2026-11-21T19:03:00.000Z", "/w", "two"));
    Home {
        fx,
        t,
        u,
        t_path,
        u_path,
    }
}

fn resume(id: &str, thread: &str, path: &Path) -> Value {
    json!({"id": id, "method": "thread/resume", "params": {"threadId": thread, "path": path}})
}

/// The refusal for request `id`, and then the marker line proving nothing else came back.
fn expect_refusal(shim: &mut Shim, id: &str, reason: &str) -> Value {
    shim.send_json(json!({"id": "marker"}));
    let v = shim.json_line();
    assert_eq!(v["id"], id, "{v}");
    assert_eq!(v["error"]["data"]["reason"], reason, "{v}");
    assert_eq!(v["error"]["code"], -32600, "{v}");
    assert_eq!(
        shim.json_line()["id"],
        "marker",
        "the request reached Codex"
    );
    v
}

#[test]
fn bad_rollout_paths_are_refused_with_the_reason_and_never_reach_codex() {
    let h = home();
    let echo = fake(&h.fx, "fake-codex", "exec cat");
    let mut shim = Shim::start(&h.fx, &echo, &[]);
    let day = h.t_path.parent().unwrap().to_owned();
    let like_rollout = day.join(format!("rollout-2026-11-21T20-00-00-{}.jsonl", tid(3)));
    std::fs::create_dir_all(&like_rollout).unwrap();
    let not_rollout = day.join(format!("rollout-2026-11-21T20-00-01-{}.jsonl", tid(4)));
    std::fs::write(&not_rollout, "{\"type\":\"event_msg\"}\n").unwrap();
    let outside = h.fx.root.join("elsewhere.jsonl");
    std::fs::write(&outside, "x\n").unwrap();
    for (path, reason) in [
        (h.fx.home.clone(), "directory"),
        (day.clone(), "directory"),
        (like_rollout, "directory"),
        (not_rollout, "notRollout"),
        (day.join("rollout-gone.jsonl"), "missing"),
        (outside, "outsideHome"),
        (h.u_path.clone(), "otherThread"),
    ] {
        shim.send_json(resume("r", &h.t, &path));
        let v = expect_refusal(&mut shim, "r", reason);
        assert_eq!(v["error"]["data"]["path"], json!(path));
        assert_eq!(v["error"]["data"]["threadId"], h.t.as_str());
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("threadId alone"), "{message}");
    }
    // thread/fork is checked the same way.
    shim.send_json(
        json!({"id": 8, "method": "thread/fork", "params": {"threadId": h.t, "path": h.u_path}}),
    );
    shim.send_json(json!({"id": "marker"}));
    let v = shim.json_line();
    assert_eq!(
        (v["id"].clone(), v["error"]["data"]["reason"].clone()),
        (json!(8), json!("otherThread"))
    );
    assert_eq!(shim.json_line()["id"], "marker");
    shim.close_stdin();
    assert!(shim.wait().success());
}

#[test]
fn good_paths_and_resumes_by_id_alone_pass_unchanged() {
    let h = home();
    let echo = fake(&h.fx, "fake-codex", "exec cat");
    let mut shim = Shim::start(&h.fx, &echo, &[]);
    let real = dunce::canonicalize(&h.t_path).unwrap();
    // Nothing known about the spelling Codex holds (no announcement, no state DB): both
    // spellings go through as they are.
    let lines = [
        format!("{}", resume("a", &h.t, &h.t_path)),
        format!("{}", resume("b", &h.t, &real)),
        format!(
            "{}",
            json!({"id": "c", "method": "thread/resume", "params": {"threadId": h.u}})
        ),
        format!(
            "{}",
            json!({"id": "d", "method": "thread/resume", "params": {"threadId": h.u, "path": ""}})
        ),
    ];
    for l in &lines {
        shim.send(format!("{l}\n").as_bytes());
        assert_eq!(shim.line().unwrap(), l.as_bytes());
    }
    shim.close_stdin();
    assert!(shim.wait().success());
}

#[test]
fn another_spelling_of_the_file_is_rewritten_to_the_one_codex_announced() {
    let h = home();
    let echo = fake(&h.fx, "fake-codex", "exec cat");
    let mut shim = Shim::start(&h.fx, &echo, &[]);
    let real = dunce::canonicalize(&h.t_path).unwrap();
    // Codex announces the thread with the symlinked spelling (a thread/start response).
    let started = json!({"id": 1, "result": {"thread": {"id": h.t, "path": h.t_path}}});
    shim.send_json(started.clone());
    assert_eq!(shim.json_line(), started);
    shim.send_json(resume("r", &h.t, &real));
    let v = shim.json_line();
    assert_eq!(v["id"], "r");
    assert_eq!(
        v["params"]["path"],
        json!(h.t_path),
        "rewritten to Codex's spelling"
    );
    shim.log_line("rewrote the rollout path");

    // `.jsonl.zst` on disk, `.jsonl` announced: the request names the plain file.
    let w = Rollout::new(&tid(5), "2026-11-21T19:05:00.000Z", "/w", "zst");
    let zst = h.fx.write_active_zst(&w);
    let plain = PathBuf::from(zst.to_str().unwrap().strip_suffix(".zst").unwrap());
    shim.send_json(
        json!({"method": "thread/started", "params": {"thread": {"id": w.id, "path": plain}}}),
    );
    shim.json_line();
    shim.send_json(resume("z", &w.id, &zst));
    let v = shim.json_line();
    assert_eq!(v["params"]["path"], json!(plain), "{v}");

    // The `.jsonl` name of a file that is now `.jsonl.zst` is accepted as it is: Codex
    // opens the compressed sibling itself.
    shim.send_json(resume("p", &w.id, &plain));
    assert_eq!(shim.json_line()["params"]["path"], json!(plain));

    // Codex decompressed it on resume: the `.jsonl.zst` a client still holds is gone, and
    // is rewritten to the `.jsonl` Codex now runs (its "stale path" error otherwise).
    let decompressed = h.fx.write_active(&w);
    std::fs::remove_file(&zst).unwrap();
    assert_eq!(decompressed, plain);
    shim.send_json(resume("g", &w.id, &zst));
    assert_eq!(shim.json_line()["params"]["path"], json!(plain));
    shim.close_stdin();
    assert!(shim.wait().success());
}

#[test]
fn a_resume_of_a_thread_not_materialized_waits_for_its_rollout() {
    let h = home();
    let echo = fake(&h.fx, "fake-codex", "exec cat");
    let w = Rollout::new(&tid(6), "2026-11-21T19:06:00.000Z", "/w", "late");
    let path = h.fx.home.join(w.day_dir()).join(w.file_name());

    // Short bound: refused with notMaterialized and how long it waited.
    let mut shim = Shim::start(&h.fx, &echo, &["--materialize-timeout", "50ms"]);
    shim.send_json(resume("n", &w.id, &path));
    let v = expect_refusal(&mut shim, "n", "notMaterialized");
    assert!(v["error"]["data"]["waitedMs"].as_u64().is_some(), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("first turn"),
        "{v}"
    );
    shim.close_stdin();
    shim.wait();

    // Long bound: the rollout appears while the shim waits; the request then goes through.
    let mut shim = Shim::start(&h.fx, &echo, &["--materialize-timeout", "60s"]);
    shim.send_json(resume("m", &w.id, &path));
    shim.log_line("waiting for the thread's rollout to materialize");
    h.fx.write_active(&w);
    let v = shim.json_line();
    assert_eq!(v["id"], "m");
    assert_eq!(v["params"]["path"], json!(path));
    shim.close_stdin();
    assert!(shim.wait().success());
}

#[test]
fn shared_mode_refuses_other_transports_and_reports_an_upstream_that_never_serves() {
    let fx = Fixture::new();
    let mut shim = Shim::start(
        &fx,
        &fx.root.join("unused"),
        &["--listen", "ws://127.0.0.1:1"],
    );
    assert_eq!(shim.wait().code(), Some(2));
    shim.log_line("only unix://PATH is supported");

    // The app-server the shim starts exits before creating its socket: its status is the
    // shim's, with a sentence, and the shim's own socket is never made.
    let quits = fake(&fx, "fake-codex", "exit 9");
    let listen = fx.root.join("shared.sock");
    let url = format!("unix://{}", listen.display());
    let mut shim = Shim::start(&fx, &quits, &["--listen", &url]);
    assert_eq!(shim.wait().code(), Some(9));
    shim.log_line("exited before serving");
    assert!(!listen.exists());
}

#[test]
fn nothing_is_checked_when_codexs_home_is_not_one_rolloutd_serves() {
    let h = home();
    let echo = fake(&h.fx, "fake-codex", "exec cat");
    let elsewhere = h.fx.root.join("other-codex-home");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let mut c = h.fx.cmd();
    c.args(["codex", "app-server", "--codex-bin"])
        .arg(&echo)
        .env("CODEX_HOME", &elsewhere)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    // A request that would be refused is relayed unchanged, with a warning saying why.
    let line = resume("r", &h.t, &h.fx.home).to_string();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.stdout, format!("{line}\n").into_bytes());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not one rolloutd serves"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
