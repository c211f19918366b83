//! A real agent for integration tests: `rolloutd run` spawned from the built binary on a
//! fixture's home, ready when it says `READY=1` over sd_notify, its log captured in the
//! fixture, and killed and reaped on drop. This is the one way the tests start an agent.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rolloutd::client::{Client, ClientError};
use serde_json::{json, Value};

use super::{Fixture, Rollout};

/// How long a test waits for the agent to become ready before failing.
pub const READY_DEADLINE: Duration = Duration::from_secs(120);
/// How long a test waits for one notification or state change before failing.
pub const EVENT_DEADLINE: Duration = Duration::from_secs(15);

impl Fixture {
    /// The socket the agent binds by default in this fixture (`$XDG_RUNTIME_DIR` is inside
    /// the temp dir).
    pub fn socket(&self) -> PathBuf {
        self.root.join("user/run/rolloutd/rolloutd.sock")
    }

    /// Writes `r` into its day directory atomically (written beside the home, then renamed
    /// in), so the agent sees one create, as when Codex's file appears.
    pub fn place_active(&self, r: &Rollout) -> PathBuf {
        let dest = self.home.join(r.day_dir()).join(r.file_name());
        self.place(&r.jsonl(), &dest)
    }

    /// Writes `bytes` at `dest` atomically through a staging file outside the home.
    pub fn place(&self, bytes: &[u8], dest: &Path) -> PathBuf {
        let staging = self.root.join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        let tmp = staging.join(dest.file_name().unwrap());
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::rename(&tmp, dest).unwrap();
        dest.to_owned()
    }
}

/// A running `rolloutd run`, killed and reaped on drop.
///
/// It is spawned with `NOTIFY_SOCKET` naming a datagram socket of the test's, as systemd
/// would, and is ready when it sends `READY=1` there (after its first reconcile); no test
/// polls the agent's socket to find out.
pub struct Agent {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
    notify: UnixDatagram,
    /// Every sd_notify datagram received so far, in order.
    pub notes: Vec<String>,
    // Removed after the agent is reaped (fields drop after `Drop::drop`).
    _notify_dir: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent on `fx` and waits until it reports ready.
    pub fn start(fx: &Fixture) -> Agent {
        Agent::start_with(fx, &[])
    }

    /// As [`Agent::start`], with extra `run` arguments.
    pub fn start_with(fx: &Fixture, args: &[&str]) -> Agent {
        let mut agent = Agent::spawn(fx, args);
        agent.wait_ready();
        agent
    }

    /// Spawns `rolloutd run` without waiting for anything.
    pub fn spawn(fx: &Fixture, args: &[&str]) -> Agent {
        let mut c = fx.cmd();
        // `ROLLOUTD_TEST_LOG=debug` turns up the agents' logs (shown when a test fails).
        if let Some(level) = std::env::var_os("ROLLOUTD_TEST_LOG") {
            c.env("RUST_LOG", level);
        }
        c.arg("run").args(args);
        Agent::spawn_command(c, fx.socket(), fx.root.join("agent.log"))
    }

    /// As [`Agent::spawn_command`], for a service manager that has stopped reading: the
    /// notify socket's queue is full before the agent starts, so no datagram of the
    /// agent's can be delivered.
    pub fn spawn_stalled(c: std::process::Command, socket: PathBuf, log: PathBuf) -> Agent {
        Agent::spawn_inner(c, socket, log, true)
    }

    /// Spawns a prepared `run` command serving `socket`, its stderr appended to `log`, its
    /// `NOTIFY_SOCKET` set to a socket of ours.
    pub fn spawn_command(c: std::process::Command, socket: PathBuf, log: PathBuf) -> Agent {
        Agent::spawn_inner(c, socket, log, false)
    }

    fn spawn_inner(
        mut c: std::process::Command,
        socket: PathBuf,
        log: PathBuf,
        stalled_manager: bool,
    ) -> Agent {
        let notify_dir = tempfile::Builder::new()
            .prefix("rolloutd-notify-")
            .tempdir()
            .unwrap();
        let notify_path = notify_dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        // An agent run as another uid must be able to send too: the directory can be
        // traversed (not listed), the socket written, by anyone.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(notify_dir.path(), std::fs::Permissions::from_mode(0o711))
            .unwrap();
        std::fs::set_permissions(&notify_path, std::fs::Permissions::from_mode(0o622)).unwrap();
        if stalled_manager {
            let filler = UnixDatagram::unbound().unwrap();
            filler.set_nonblocking(true).unwrap();
            let mut queued = 0;
            while queued < 100_000 && filler.send_to(b"X-FILLER=1\n", &notify_path).is_ok() {
                queued += 1;
            }
            assert!(
                queued > 0 && queued < 100_000,
                "the notify queue did not fill"
            );
        }
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        c.env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = c.spawn().expect("spawning rolloutd run");
        Agent {
            child: Some(child),
            socket,
            log,
            notify,
            notes: Vec::new(),
            _notify_dir: notify_dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits for `READY=1` (the first reconcile is done); panics with the log if the agent
    /// exits or [`READY_DEADLINE`] passes.
    pub fn wait_ready(&mut self) {
        self.expect_note("READY=1", READY_DEADLINE);
    }

    /// Waits until a notify datagram holds the line `line` (or one already did), at most
    /// `limit`; panics with the datagrams and the log if the agent exits first or the
    /// time runs out.
    pub fn expect_note(&mut self, line: &str, limit: Duration) {
        let started = Instant::now();
        loop {
            if self.notes.iter().any(|m| m.lines().any(|l| l == line)) {
                return;
            }
            if started.elapsed() > limit {
                panic!(
                    "no {line} from the agent within {limit:?}; notes {:?}; log:\n{}",
                    self.notes,
                    self.log()
                );
            }
            let exited = self.try_exit();
            // A datagram sent just before the exit is still queued: read it first.
            if !self.recv_note() {
                if let Some(status) = exited {
                    panic!(
                        "agent exited ({status}) before {line}; notes {:?}; log:\n{}",
                        self.notes,
                        self.log()
                    );
                }
            }
        }
    }

    /// Receives one notify datagram into [`Agent::notes`], waiting at most 100 ms; false
    /// when none came.
    pub fn recv_note(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        match self.notify.recv(&mut buf) {
            Ok(n) => {
                self.notes
                    .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                true
            }
            Err(_) => false,
        }
    }

    /// Receives notify datagrams for all of `window` (to count periodic ones).
    pub fn collect_notes(&mut self, window: Duration) {
        let started = Instant::now();
        while started.elapsed() < window {
            self.recv_note();
        }
    }

    /// Receives the notify datagrams already queued (after the agent exited, say).
    pub fn drain_notes(&mut self) {
        // Bounded: a queue holds at most a few hundred datagrams.
        for _ in 0..10_000 {
            if !self.recv_note() {
                break;
            }
        }
    }

    /// A new connection, with reads bounded by [`EVENT_DEADLINE`].
    pub fn client(&self) -> Client {
        let client = Client::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", self.socket.display()));
        client.set_read_timeout(Some(EVENT_DEADLINE)).unwrap();
        client
    }

    /// One call on a fresh connection.
    pub fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let mut client = Client::connect(&self.socket)?;
        client.set_read_timeout(Some(EVENT_DEADLINE))?;
        client.call(method, params)
    }

    /// `index/status`.
    pub fn status(&self) -> Value {
        self.call("index/status", json!({})).expect("index/status")
    }

    /// A connection subscribed to every notification (or to `thread_ids`).
    pub fn subscribe(&self, thread_ids: Option<&[&str]>) -> Subscriber {
        let mut client = self.client();
        let params = match thread_ids {
            Some(ids) => json!({ "threadIds": ids }),
            None => json!({}),
        };
        let r = client.call("subscribe", params).expect("subscribe");
        assert_eq!(r["subscribed"], true);
        Subscriber {
            client,
            seen: Vec::new(),
        }
    }

    /// Sends `signal` to the agent.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: signalling our own child, not yet reaped (it is reaped on drop).
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// The exit status, if the agent has exited.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the agent to exit, at most `limit`; `None` when it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if started.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then the exit status and how long the exit took; panics if it does not exit
    /// within 10 s.
    pub fn stop(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        self.signal(libc::SIGTERM);
        let status = self
            .wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("agent ignored SIGTERM; log:\n{}", self.log()));
        (status, started.elapsed())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A subscribed connection that remembers what it saw.
pub struct Subscriber {
    pub client: Client,
    /// Every notification read so far, for failure messages.
    pub seen: Vec<Value>,
}

impl Subscriber {
    /// Reads notifications until one with `method` for `thread_id` arrives (its params),
    /// failing after [`EVENT_DEADLINE`] with everything seen.
    pub fn expect(&mut self, method: &str, thread_id: &str) -> Value {
        let started = Instant::now();
        loop {
            let remaining = EVENT_DEADLINE.saturating_sub(started.elapsed());
            if remaining.is_zero() {
                panic!(
                    "no {method} for {thread_id} within {EVENT_DEADLINE:?}; saw {:#?}",
                    self.seen
                );
            }
            self.client.set_read_timeout(Some(remaining)).unwrap();
            let msg = match self.client.read_message() {
                Ok(m) => m,
                Err(e) => panic!(
                    "waiting for {method} for {thread_id}: {e}; saw {:#?}",
                    self.seen
                ),
            };
            self.seen.push(msg.clone());
            if msg["method"] == method && msg["params"]["threadId"] == thread_id {
                return msg["params"].clone();
            }
        }
    }

    /// Reads until a notification with `method` arrives, or one already seen had it.
    pub fn expect_method(&mut self, method: &str) -> Value {
        if let Some(n) = self.seen.iter().find(|m| m["method"] == method) {
            return n["params"].clone();
        }
        let started = Instant::now();
        loop {
            let remaining = EVENT_DEADLINE.saturating_sub(started.elapsed());
            assert!(
                !remaining.is_zero(),
                "no {method} within {EVENT_DEADLINE:?}; saw {:#?}",
                self.seen
            );
            self.client.set_read_timeout(Some(remaining)).unwrap();
            let msg = self
                .client
                .read_message()
                .unwrap_or_else(|e| panic!("waiting for {method}: {e}; saw {:#?}", self.seen));
            self.seen.push(msg.clone());
            if msg["method"] == method {
                return msg["params"].clone();
            }
        }
    }
}

/// A raw connection for framing tests: write bytes, read lines exactly as sent.
pub struct Raw {
    pub reader: BufReader<UnixStream>,
    pub writer: UnixStream,
}

impl Raw {
    pub fn connect(socket: &Path) -> Raw {
        let stream = UnixStream::connect(socket).unwrap();
        stream.set_read_timeout(Some(EVENT_DEADLINE)).unwrap();
        Raw {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// The next line, with its newline; empty at EOF.
    pub fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        Ok(line)
    }
}

/// A request line.
pub fn request(id: u64, method: &str, params: Value) -> String {
    format!(
        "{}\n",
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
    )
}

/// Polls `f` until it returns `Some`, at most [`EVENT_DEADLINE`].
pub fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_within(what, EVENT_DEADLINE, f)
}

/// Polls `f` (every 20 ms) until it returns `Some`; panics naming `what` after `limit`.
pub fn eventually_within<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if started.elapsed() > limit {
            panic!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
