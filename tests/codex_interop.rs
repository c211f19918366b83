//! rolloutd against the real Codex CLI (`@openai/codex@0.169.0`), offline against a local
//! mock model provider that this file serves itself.
//!
//! Runs only when `ROLLOUTD_CODEX_BIN` names a Codex binary; `scripts/codex-interop.sh`
//! installs one and runs this file. Otherwise every test prints why it skipped.
//!
//! Each test builds a world where `HOME` is a symlink (`home/dev` → `mnt/users/dev`) and
//! `CODEX_HOME` is unset, so Codex records rollout paths in the symlinked spelling, as it
//! does on machines whose home directories live on a mounted filesystem.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::agent::{Agent, EVENT_DEADLINE};
use common::jpath;
use rolloutd::client::{Client, ClientError};
use serde_json::{json, Value};

fn codex_bin() -> Option<PathBuf> {
    match std::env::var_os("ROLLOUTD_CODEX_BIN") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            common::sys::prerequisite_missing(
                "ROLLOUTD_CODEX_BIN is not set (scripts/codex-interop.sh installs Codex and sets it)",
            );
            None
        }
    }
}

/// A model provider answering every `POST /v1/responses` with one short assistant message
/// as a server-sent event stream, which is all `codex exec` and a turn need.
struct MockProvider {
    port: u16,
}

impl MockProvider {
    fn start() -> MockProvider {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve(stream));
            }
        });
        MockProvider { port }
    }
}

/// One keep-alive connection: requests until the client closes it.
fn serve(stream: TcpStream) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    for n in 0..10_000u32 {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (content_type, payload) = if request_line.starts_with("POST") {
            let id = format!("resp_{n}");
            let events = [
                json!({"type": "response.created", "response": {"id": id}}),
                json!({"type": "response.output_item.done", "item": {"type": "message", "role": "assistant", "id": format!("msg_{n}"), "content": [{"type": "output_text", "text": "Done"}]}}),
                json!({"type": "response.completed", "response": {"id": id, "usage": {"input_tokens": 10, "input_tokens_details": null, "output_tokens": 1, "output_tokens_details": null, "total_tokens": 11}}}),
            ];
            let sse: String = events
                .iter()
                .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap()))
                .collect();
            ("text/event-stream", sse)
        } else {
            ("application/json", json!({"models": []}).to_string())
        };
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            payload.len()
        );
        if writer.write_all(head.as_bytes()).is_err()
            || writer.write_all(payload.as_bytes()).is_err()
        {
            return;
        }
    }
}

/// A temp world: a symlinked user home with a Codex home in it, a running rolloutd agent on
/// that Codex home (spelled through the symlink), and a mock provider.
struct World {
    _dir: tempfile::TempDir,
    root: PathBuf,
    codex: PathBuf,
    /// `$HOME` as Codex sees it: `root/home/dev`, a symlink.
    user_home: PathBuf,
    /// The Codex home in the symlinked spelling, as configured for rolloutd.
    home: PathBuf,
    /// Its realpath.
    real_home: PathBuf,
    work: PathBuf,
    agent: Agent,
    _provider: MockProvider,
}

impl World {
    fn new(codex: PathBuf) -> World {
        let dir = tempfile::tempdir().unwrap();
        let root = dunce::canonicalize(dir.path()).unwrap();
        let real_user = root.join("mnt/users/dev");
        let real_home = real_user.join(".codex");
        std::fs::create_dir_all(&real_home).unwrap();
        std::fs::create_dir_all(root.join("home")).unwrap();
        std::os::unix::fs::symlink("../mnt/users/dev", root.join("home/dev")).unwrap();
        let user_home = root.join("home/dev");
        let home = user_home.join(".codex");
        let provider = MockProvider::start();
        std::fs::write(
            real_home.join("config.toml"),
            format!(
                "model = \"mock-model\"\napproval_policy = \"never\"\nsandbox_mode = \"read-only\"\n\
                 model_provider = \"mock_provider\"\n\n[model_providers.mock_provider]\n\
                 name = \"Mock provider\"\nbase_url = \"http://127.0.0.1:{}/v1\"\n\
                 wire_api = \"responses\"\nrequest_max_retries = 0\nstream_max_retries = 0\n",
                provider.port
            ),
        )
        .unwrap();
        let work = root.join("work/project");
        std::fs::create_dir_all(&work).unwrap();
        for d in ["user", "run", "state"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let mut c = rolloutd_cmd(&root, &home);
        c.arg("run");
        if let Some(level) = std::env::var_os("ROLLOUTD_TEST_LOG") {
            c.env("RUST_LOG", level);
        }
        let mut agent = Agent::spawn_command(
            c,
            root.join("run/rolloutd/rolloutd.sock"),
            root.join("agent.log"),
        );
        agent.wait_ready();
        World {
            _dir: dir,
            root,
            codex,
            user_home,
            home,
            real_home,
            work,
            agent,
            _provider: provider,
        }
    }

    /// Runs the Codex CLI as the user would: `HOME` the symlink, `CODEX_HOME` unset.
    fn codex(&self, args: &[&str]) -> std::process::Output {
        let mut c = Command::new(&self.codex);
        c.args(args)
            .current_dir(&self.work)
            .env_remove("CODEX_HOME")
            .env_remove("CODEX_SQLITE_HOME")
            .env("HOME", &self.user_home)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        let out = run_bounded(c, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "codex {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `codex exec PROMPT`; the new thread's id and the moment the command finished.
    fn exec(&self, prompt: &str) -> (String, Instant) {
        let before: Vec<String> = self.rows().into_iter().map(|r| r.id).collect();
        self.codex(&["exec", "--skip-git-repo-check", prompt]);
        let done = Instant::now();
        let new: Vec<String> = self
            .rows()
            .into_iter()
            .map(|r| r.id)
            .filter(|id| !before.contains(id))
            .collect();
        assert_eq!(new.len(), 1, "one new thread per exec: {new:?}");
        (new.into_iter().next().unwrap(), done)
    }

    /// Codex's `threads` rows, read from its own `state_5.sqlite`.
    fn rows(&self) -> Vec<Row> {
        let db = self.real_home.join("state_5.sqlite");
        if !db.exists() {
            return Vec::new();
        }
        let conn =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT id, rollout_path, cwd, cli_version, first_user_message, originator, archived \
                 FROM threads ORDER BY created_at_ms, id",
            )
            .unwrap();
        stmt.query_map([], |r| {
            Ok(Row {
                id: r.get(0)?,
                rollout_path: PathBuf::from(r.get::<_, String>(1)?),
                cwd: r.get(2)?,
                cli_version: r.get(3)?,
                first_user_message: r.get(4)?,
                originator: r.get(5)?,
                archived: r.get::<_, i64>(6)? != 0,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn row(&self, id: &str) -> Row {
        self.rows()
            .into_iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no threads row for {id}"))
    }

    fn call(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        self.agent.call(method, params)
    }

    /// The rolloutd CLI on this world's home and index.
    fn rolloutd(&self, args: &[&str]) -> (i32, Value) {
        let mut c = rolloutd_cmd(&self.root, &self.home);
        c.arg("--json").args(args);
        let out = run_bounded(c, Duration::from_secs(60));
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code().unwrap_or(-1), json)
    }
}

fn rolloutd_cmd(root: &Path, home: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rolloutd"));
    c.env_remove("CODEX_HOME")
        .env_remove("CODEX_SQLITE_HOME")
        .env_remove("ROLLOUTD_INDEX")
        .env_remove("RUST_LOG")
        .env("HOME", root.join("user"))
        .env("XDG_CONFIG_HOME", root.join("user/.config"))
        .env("XDG_RUNTIME_DIR", root.join("run"))
        .arg("--codex-home")
        .arg(home)
        .arg("--index")
        .arg(root.join("state/index.sqlite"))
        .stdin(Stdio::null());
    c
}

/// Runs `c` to completion, killing it past `limit`.
fn run_bounded(mut c: Command, limit: Duration) -> std::process::Output {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawning");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{c:?} ran past {limit:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[derive(Debug, Clone)]
struct Row {
    id: String,
    rollout_path: PathBuf,
    cwd: String,
    cli_version: String,
    first_user_message: String,
    originator: Option<String>,
    archived: bool,
}

#[test]
fn threads_from_codex_exec_are_resolvable_within_a_second_and_agree_with_codex() {
    let Some(codex) = codex_bin() else { return };
    let w = World::new(codex);
    for i in 0..5 {
        let (id, done) = w.exec(&format!("interop thread {i}"));
        let rec = w
            .call("thread/wait", json!({"threadId": id, "timeoutMs": 1000}))
            .unwrap_or_else(|e| panic!("thread {id} not resolvable within 1 s: {e}"));
        println!(
            "thread {i}: resolvable {:?} after codex exec finished",
            done.elapsed()
        );
        let row = w.row(&id);
        assert_eq!(rec["threadId"], id.as_str());
        assert_eq!(rec["cwd"], row.cwd.as_str());
        assert_eq!(rec["cliVersion"], row.cli_version.as_str());
        assert_eq!(
            jpath(&rec["path"]),
            row.rollout_path,
            "the path Codex recorded"
        );
        assert!(
            row.rollout_path.starts_with(&w.home),
            "Codex recorded {:?}",
            row.rollout_path
        );
    }
}

#[test]
fn both_spellings_of_a_symlinked_home_are_one_rollout_and_wrong_paths_are_refused() {
    let Some(codex) = codex_bin() else { return };
    let w = World::new(codex);
    let (a, _) = w.exec("first");
    let (b, _) = w.exec("second");
    let recorded = w.row(&a).rollout_path;
    let real = dunce::canonicalize(&recorded).unwrap();
    assert!(recorded.starts_with(&w.home) && real.starts_with(&w.real_home));
    assert_ne!(recorded, real, "the two spellings differ as strings");
    for path in [&recorded, &real] {
        let check = w
            .call("thread/checkResume", json!({"threadId": a, "path": path}))
            .unwrap();
        assert_eq!(check["ok"], true, "{path:?}: {check}");
    }
    let same = w
        .call("path/same", json!({"a": recorded, "b": real}))
        .unwrap();
    assert_eq!(same["same"], true, "{same}");
    let other = w.row(&b).rollout_path;
    let check = w
        .call("thread/checkResume", json!({"threadId": a, "path": other}))
        .unwrap();
    assert_eq!(check["reason"], "otherThread", "{check}");
    let check = w
        .call("thread/checkResume", json!({"threadId": a, "path": w.home}))
        .unwrap();
    assert_eq!(check["reason"], "directory", "{check}");
}

#[test]
fn codex_archive_unarchive_and_delete_reach_a_subscriber_and_resolve_follows() {
    let Some(codex) = codex_bin() else { return };
    let w = World::new(codex);
    let (id, _) = w.exec("to be archived");
    w.call("thread/wait", json!({"threadId": id, "timeoutMs": 5000}))
        .unwrap();
    let mut sub = w.agent.subscribe(Some(&[id.as_str()]));

    w.codex(&["archive", &id]);
    sub.expect("thread/archived", &id);
    let rec = w.call("thread/resolve", json!({"threadId": id})).unwrap();
    assert_eq!(rec["archived"], true);
    assert_eq!(jpath(&rec["path"]), w.row(&id).rollout_path);

    w.codex(&["unarchive", &id]);
    sub.expect("thread/unarchived", &id);
    let rec = w.call("thread/resolve", json!({"threadId": id})).unwrap();
    assert_eq!(rec["archived"], false);
    assert_eq!(jpath(&rec["path"]), w.row(&id).rollout_path);

    w.codex(&["delete", "--force", &id]);
    sub.expect("thread/removed", &id);
    match w.call("thread/resolve", json!({"threadId": id})) {
        Err(ClientError::Rpc(e)) => assert_eq!(e.reason().map(|r| r.as_str()), Some("notFound")),
        other => panic!("a deleted thread still resolves: {other:?}"),
    }
}

/// `codex app-server` on stdio.
struct AppServer {
    child: Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<Value>,
    next_id: u64,
}

impl AppServer {
    fn start(w: &World) -> AppServer {
        let mut child = Command::new(&w.codex)
            .arg("app-server")
            .current_dir(&w.work)
            .env_remove("CODEX_HOME")
            .env("HOME", &w.user_home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        return;
                    }
                }
            }
        });
        let mut server = AppServer {
            child,
            stdin,
            lines,
            next_id: 1,
        };
        // `thread/resume` with a path is behind the experimental API.
        server.request("initialize", json!({"clientInfo": {"name": "rolloutd-interop", "version": "0"}, "capabilities": {"experimentalApi": true}}));
        writeln!(
            server.stdin,
            "{}",
            json!({"jsonrpc": "2.0", "method": "initialized"})
        )
        .unwrap();
        server
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        writeln!(
            self.stdin,
            "{}",
            json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
        )
        .unwrap();
        let msg = self.until(|m| m["id"] == id);
        assert!(msg.get("error").is_none(), "{method}: {msg}");
        msg["result"].clone()
    }

    fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(m) if pred(&m) => return m,
                Ok(_) => {}
                Err(e) => panic!("app-server: {e}"),
            }
        }
    }
}

impl Drop for AppServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_client_waiting_on_an_app_server_thread_gets_a_path_the_app_server_resumes() {
    let Some(codex) = codex_bin() else { return };
    let w = World::new(codex);
    let mut app = AppServer::start(&w);
    let started = app.request("thread/start", json!({}));
    let id = started["thread"]["id"].as_str().unwrap().to_owned();

    // A sibling client blocks until the rollout exists (Codex writes it with the turn).
    let waiter = {
        let socket = w.agent.socket.clone();
        let id = id.clone();
        std::thread::spawn(move || {
            let mut client = Client::connect(&socket).unwrap();
            client.set_read_timeout(Some(EVENT_DEADLINE * 4)).unwrap();
            client.call("thread/wait", json!({"threadId": id, "timeoutMs": 50_000}))
        })
    };
    app.request(
        "turn/start",
        json!({"threadId": id, "input": [{"type": "text", "text": "hello from the app-server"}]}),
    );
    app.until(|m| m["method"] == "turn/completed");
    let rec = waiter
        .join()
        .unwrap()
        .expect("thread/wait for the app-server thread");
    assert_eq!(rec["threadId"], id.as_str());

    let resumed = app.request(
        "thread/resume",
        json!({"threadId": id, "path": rec["path"]}),
    );
    assert_eq!(resumed["thread"]["id"], id.as_str(), "{resumed}");
}

#[test]
fn a_rollout_moved_by_hand_is_audited_repaired_and_codex_archive_then_works() {
    let Some(codex) = codex_bin() else { return };
    let w = World::new(codex);
    let (id, _) = w.exec("will be moved");
    let old = w.row(&id).rollout_path;
    let new_dir = w.home.join("sessions/2025/01/02");
    std::fs::create_dir_all(&new_dir).unwrap();
    let new = new_dir.join(old.file_name().unwrap());
    std::fs::rename(&old, &new).unwrap();

    let (code, audit) = w.rolloutd(&["codex", "audit"]);
    assert_eq!(code, 1, "{audit:#}");
    let finding = audit["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "rowMissingFile" && f["row"]["threadId"] == id.as_str())
        .unwrap_or_else(|| panic!("no rowMissingFile for {id}: {audit:#}"))
        .clone();
    let proposed = jpath(&finding["fix"]["after"]["rolloutPath"]);
    assert_eq!(
        dunce::canonicalize(&proposed).unwrap(),
        dunce::canonicalize(&new).unwrap()
    );

    let (code, repair) = w.rolloutd(&["codex", "repair", "--apply"]);
    assert_eq!(code, 0, "{repair:#}");
    assert_eq!(
        dunce::canonicalize(w.row(&id).rollout_path).unwrap(),
        dunce::canonicalize(&new).unwrap()
    );

    w.codex(&["archive", &id]);
    let row = w.row(&id);
    assert!(row.archived, "{row:?}");
    assert!(
        dunce::canonicalize(&row.rollout_path)
            .unwrap()
            .starts_with(w.real_home.join("archived_sessions")),
        "{row:?}"
    );
}

#[test]
fn rolloutds_head_parse_agrees_with_codexs_rows_for_every_kind_of_rollout() {
    let Some(codex) = codex_bin() else { return };
    let w = World::new(codex);
    let (plain, _) = w.exec("an exec thread");
    let (archived, _) = w.exec("an archived thread");
    let (unarchived, _) = w.exec("an unarchived thread");
    w.codex(&["archive", &archived]);
    w.codex(&["archive", &unarchived]);
    w.codex(&["unarchive", &unarchived]);
    let app_thread = {
        let mut app = AppServer::start(&w);
        let started = app.request("thread/start", json!({}));
        let id = started["thread"]["id"].as_str().unwrap().to_owned();
        app.request(
            "turn/start",
            json!({"threadId": id, "input": [{"type": "text", "text": "an app-server thread"}]}),
        );
        app.until(|m| m["method"] == "turn/completed");
        id
    };
    let rows = w.rows();
    assert_eq!(rows.len(), 4, "{rows:#?}");
    for id in [&plain, &archived, &unarchived, &app_thread] {
        let row = w.row(id);
        let rec = w
            .call("thread/wait", json!({"threadId": id, "timeoutMs": 5000}))
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(rec["threadId"], row.id.as_str());
        assert_eq!(rec["cwd"], row.cwd.as_str(), "{id}");
        assert_eq!(rec["cliVersion"], row.cli_version.as_str(), "{id}");
        assert_eq!(
            rec["originator"].as_str(),
            row.originator.as_deref(),
            "{id}"
        );
        assert_eq!(rec["title"], row.first_user_message.as_str(), "{id}");
        assert_eq!(rec["archived"], row.archived, "{id}");
    }
}

// ---- `rolloutd codex app-server` in front of the real Codex (issue cases 1–5) ----
//
// Each case first shows what Codex 0.169 does on its own, then the same request through the
// shim. The shim runs with the world's agent (it serves the same home and index).

/// An app-server client keeping every byte it received, in order.
struct Rpc {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    msgs: std::sync::mpsc::Receiver<Value>,
    raw: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    next_id: u64,
}

impl Rpc {
    /// Spawns `c` (Codex's app-server, or the shim) and initializes it.
    fn spawn(mut c: Command) -> Rpc {
        let mut child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let raw = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, msgs) = std::sync::mpsc::channel();
        let reader = {
            let raw = raw.clone();
            std::thread::spawn(move || loop {
                let mut line = Vec::new();
                match stdout.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                raw.lock().unwrap().extend_from_slice(&line);
                if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                    let _ = tx.send(v);
                }
            })
        };
        let mut rpc = Rpc {
            child,
            stdin,
            msgs,
            raw,
            reader: Some(reader),
            next_id: 1,
        };
        let init = rpc.call("initialize", json!({"clientInfo": {"name": "rolloutd-interop", "version": "0"}, "capabilities": {"experimentalApi": true}}));
        assert!(init.get("result").is_some(), "initialize: {init}");
        rpc.send(&json!({"method": "initialized"}));
        rpc
    }

    fn send(&mut self, v: &Value) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(format!("{v}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Sends a request; its id.
    fn request(&mut self, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"id": id, "method": method, "params": params}));
        id
    }

    /// The whole response (result or error) to a request.
    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.request(method, params);
        self.until(|m| m["id"] == id && m.get("method").is_none())
    }

    fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.msgs.recv_timeout(left) {
                Ok(m) if pred(&m) => return m,
                Ok(_) => {}
                Err(e) => panic!("app-server: {e}"),
            }
        }
    }

    /// Closes the client's input; the exit status and every byte received.
    fn finish(mut self) -> (std::process::ExitStatus, Vec<u8>) {
        self.stdin.take();
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < deadline, "the app-server did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        let raw = std::mem::take(&mut *self.raw.lock().unwrap());
        (status, raw)
    }
}

impl Drop for Rpc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `codex app-server ARGS` as the user runs it.
fn direct(w: &World, args: &[&str]) -> Command {
    let mut c = Command::new(&w.codex);
    c.arg("app-server")
        .args(args)
        .current_dir(&w.work)
        .env_remove("CODEX_HOME")
        .env_remove("CODEX_SQLITE_HOME")
        .env("HOME", &w.user_home)
        .stderr(Stdio::null());
    c
}

/// `rolloutd codex app-server --codex-bin BIN SHIM_ARGS -- ARGS` on the world's home, index
/// and agent; Codex under it sees the same environment as [`direct`].
fn shimmed(w: &World, bin: &Path, shim_args: &[&str], args: &[&str]) -> Command {
    let mut c = rolloutd_cmd(&w.root, &w.home);
    c.args(["codex", "app-server", "--codex-bin"])
        .arg(bin)
        .args(shim_args)
        .arg("--")
        .args(args)
        .current_dir(&w.work)
        .env("HOME", &w.user_home)
        .stderr(Stdio::inherit());
    c
}

fn error_message(msg: &Value) -> &str {
    msg["error"]["message"].as_str().unwrap_or("")
}

fn set_old(path: &Path) {
    let old = std::time::SystemTime::now() - Duration::from_secs(10 * 86_400);
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(old)
        .unwrap();
}

/// Waits until `path` exists (Codex's compression worker runs at app-server start).
fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{path:?} never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn zst_of(p: &Path) -> PathBuf {
    PathBuf::from(format!("{}.zst", p.display()))
}

#[test]
fn case1_a_compressed_rollout_resumes_through_the_shim_where_codex_says_stale_path() {
    let Some(codex) = codex_bin() else {
        return;
    };
    let w = World::new(codex);
    let (a, _) = w.exec("old thread for codex alone");
    let (b, _) = w.exec("old thread for the shim");
    let (a_plain, b_plain) = (w.row(&a).rollout_path, w.row(&b).rollout_path);
    set_old(&a_plain);
    set_old(&b_plain);

    // Codex alone, with compression on: the old rollouts become `.jsonl.zst`, the rows keep
    // `.jsonl`. Resuming by the `.zst` a client listed works once (Codex decompresses it);
    // the same request on the now running thread is refused as a stale path.
    let mut app = Rpc::spawn(direct(&w, &["--enable", "local_thread_store_compression"]));
    wait_for_file(&zst_of(&a_plain));
    wait_for_file(&zst_of(&b_plain));
    let a_zst = zst_of(&a_plain);
    let first = app.call("thread/resume", json!({"threadId": a, "path": a_zst}));
    assert_eq!(first["result"]["thread"]["id"], a.as_str(), "{first}");
    let again = app.call("thread/resume", json!({"threadId": a, "path": a_zst}));
    println!(
        "codex alone, .jsonl.zst on the running thread: {}",
        error_message(&again)
    );
    assert!(error_message(&again).contains("stale path"), "{again}");
    drop(app);

    // Through the shim: the `.zst` is rewritten to the `.jsonl` Codex holds (the row, then
    // the active path), both times, and by either spelling of the home.
    let mut shim = Rpc::spawn(shimmed(&w, &w.codex, &[], &[]));
    let b_zst = zst_of(&b_plain);
    let real_zst = zst_of(
        &dunce::canonicalize(b_plain.parent().unwrap())
            .unwrap()
            .join(b_plain.file_name().unwrap()),
    );
    for path in [&b_zst, &b_zst, &real_zst, &b_plain] {
        let r = shim.call("thread/resume", json!({"threadId": b, "path": path}));
        assert_eq!(r["result"]["thread"]["id"], b.as_str(), "{path:?}: {r}");
    }
    let (status, _) = shim.finish();
    assert!(status.success(), "{status}");
    // One writer, one file: the plain rollout, which the row names.
    let real_b = dunce::canonicalize(&w.row(&b).rollout_path).unwrap();
    assert!(real_b.exists() && !zst_of(&real_b).exists(), "{real_b:?}");
    let rec = w
        .call("thread/wait", json!({"threadId": b, "timeoutMs": 5000}))
        .unwrap();
    assert_eq!(jpath(&rec["canonicalPath"]), real_b);
}

#[test]
fn case2_directories_are_refused_by_the_shim_with_a_typed_reason() {
    let Some(codex) = codex_bin() else {
        return;
    };
    let w = World::new(codex);
    let (a, _) = w.exec("a thread");
    let day = w.row(&a).rollout_path.parent().unwrap().to_owned();
    let like = day.join("rollout-2026-01-01T00-00-00-01a1ff7d-0000-7000-8000-000000000000.jsonl");
    std::fs::create_dir_all(&like).unwrap();
    let paths = [w.home.clone(), day, like];

    let mut app = Rpc::spawn(direct(&w, &[]));
    for p in &paths {
        let r = app.call("thread/resume", json!({"threadId": a, "path": p}));
        println!("codex alone, {}: {}", p.display(), error_message(&r));
        // 0.169: "path is a directory"; older releases read it: "Is a directory (os error 21)".
        assert!(
            error_message(&r).to_lowercase().contains("is a directory"),
            "{r}"
        );
    }
    drop(app);

    let mut shim = Rpc::spawn(shimmed(&w, &w.codex, &[], &[]));
    for p in &paths {
        for method in ["thread/resume", "thread/fork"] {
            let r = shim.call(method, json!({"threadId": a, "path": p}));
            assert_eq!(r["error"]["data"]["reason"], "directory", "{r}");
            assert_eq!(r["error"]["data"]["source"], "rolloutd", "{r}");
        }
    }
    // Codex is still there and fine.
    let ok = shim.call("thread/resume", json!({"threadId": a}));
    assert_eq!(ok["result"]["thread"]["id"], a.as_str(), "{ok}");
    assert!(shim.finish().0.success());
}

#[test]
fn case3_another_threads_rollout_is_refused_instead_of_silently_resuming_it() {
    let Some(codex) = codex_bin() else {
        return;
    };
    let w = World::new(codex);
    let (e, _) = w.exec("thread E");
    let (b, _) = w.exec("thread B");
    let b_path = w.row(&b).rollout_path;

    let mut app = Rpc::spawn(direct(&w, &[]));
    let r = app.call("thread/resume", json!({"threadId": e, "path": b_path}));
    println!(
        "codex alone, threadId E with B's rollout: resumed {}",
        r["result"]["thread"]["id"]
    );
    assert_eq!(
        r["result"]["thread"]["id"],
        b.as_str(),
        "Codex 0.169 silently resumes B: {r}"
    );
    drop(app);

    let mut shim = Rpc::spawn(shimmed(&w, &w.codex, &[], &[]));
    let r = shim.call("thread/resume", json!({"threadId": e, "path": b_path}));
    assert_eq!(r["error"]["data"]["reason"], "otherThread", "{r}");
    assert!(error_message(&r).contains(&b), "{r}");
    let r = shim.call(
        "thread/resume",
        json!({"threadId": e, "path": w.row(&e).rollout_path}),
    );
    assert_eq!(r["result"]["thread"]["id"], e.as_str(), "{r}");
    assert!(shim.finish().0.success());
}

#[test]
fn case4_a_sibling_resume_racing_the_first_turn_waits_for_the_rollout() {
    let Some(codex) = codex_bin() else {
        return;
    };
    let w = World::new(codex);
    // Codex alone: the sibling's resume before the first turn finds no file.
    let mut owner = Rpc::spawn(direct(&w, &[]));
    let started = owner.call("thread/start", json!({}));
    let (id, path) = (
        started["result"]["thread"]["id"]
            .as_str()
            .unwrap()
            .to_owned(),
        started["result"]["thread"]["path"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let mut sibling = Rpc::spawn(direct(&w, &[]));
    let r = sibling.call("thread/resume", json!({"threadId": id, "path": path}));
    println!(
        "codex alone, sibling before the first turn: {}",
        error_message(&r)
    );
    assert!(error_message(&r).contains("does not exist"), "{r}");
    drop(sibling);
    drop(owner);

    // Through the shim: the sibling's request waits while the owner's first turn writes the
    // rollout, and is then forwarded; Codex answers about the thread, not a missing file.
    let mut owner = Rpc::spawn(direct(&w, &[]));
    let started = owner.call("thread/start", json!({}));
    let (id, path) = (
        started["result"]["thread"]["id"]
            .as_str()
            .unwrap()
            .to_owned(),
        started["result"]["thread"]["path"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let mut sibling = Rpc::spawn(shimmed(
        &w,
        &w.codex,
        &["--materialize-timeout", "60s"],
        &[],
    ));
    let waiting = sibling.request("thread/resume", json!({"threadId": id, "path": path}));
    owner.call(
        "turn/start",
        json!({"threadId": id, "input": [{"type": "text", "text": "first turn"}]}),
    );
    let r = sibling.until(|m| m["id"] == waiting);
    println!("through the shim, sibling racing the first turn: {r}");
    assert!(
        r.get("result").is_some() || error_message(&r).contains("active writer"),
        "neither resumed nor Codex's one-writer answer: {r}"
    );
    assert!(!error_message(&r).contains("does not exist"), "{r}");
    // Once the owner is gone, the sibling resumes the thread by the same path.
    owner.until(|m| m["method"] == "turn/completed");
    assert!(owner.finish().0.success());
    let r = sibling.call("thread/resume", json!({"threadId": id, "path": path}));
    assert_eq!(r["result"]["thread"]["id"], id.as_str(), "{r}");
    assert!(sibling.finish().0.success());
}

#[test]
fn case5_a_full_turn_streams_through_the_shim_byte_for_byte_and_in_order() {
    let Some(codex) = codex_bin() else {
        return;
    };
    let w = World::new(codex);
    // Codex under the shim, with both of its streams copied to files by `tee`.
    let tee = w.root.join("codex-tee");
    std::fs::write(
        &tee,
        format!(
            "#!/bin/sh\ntee \"{dir}/to-codex\" | \"{codex}\" \"$@\" | tee \"{dir}/from-codex\"\n",
            dir = w.root.display(),
            codex = w.codex.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tee, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let run = |mut app: Rpc| {
        let started = app.call("thread/start", json!({}));
        let id = started["result"]["thread"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        app.call(
            "turn/start",
            json!({"threadId": id, "input": [{"type": "text", "text": "stream me"}]}),
        );
        app.until(|m| m["method"] == "turn/completed");
        let (status, raw) = app.finish();
        assert!(status.success(), "{status}");
        raw
    };
    let alone = run(Rpc::spawn(direct(&w, &[])));
    let through = run(Rpc::spawn(shimmed(&w, &tee, &[], &[])));
    let from_codex = std::fs::read(w.root.join("from-codex")).unwrap();
    assert!(
        through == from_codex,
        "the client did not get Codex's bytes unchanged and in order"
    );
    // The same messages as without the shim (compared as multisets: notifications of
    // independent tasks may interleave differently from one run to the next).
    let kinds = |raw: &[u8]| -> Vec<String> {
        raw.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                let v: Value = serde_json::from_slice(l).unwrap();
                v["method"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("response {}", v["id"]))
            })
            .collect()
    };
    println!(
        "{} server lines without the shim, {} through it",
        kinds(&alone).len(),
        kinds(&through).len()
    );
    let (mut a, mut t) = (kinds(&alone), kinds(&through));
    a.sort();
    t.sort();
    assert_eq!(a, t, "the same server messages with and without the shim");
}

/// A child killed and reaped when the test ends, also by a panic.
struct Reaped(Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A line-delimited JSON-RPC client of the shim's shared socket.
struct SockRpc {
    stream: std::os::unix::net::UnixStream,
    lines: BufReader<std::os::unix::net::UnixStream>,
    next_id: u64,
}

impl SockRpc {
    fn connect(path: &Path) -> SockRpc {
        let stream = std::os::unix::net::UnixStream::connect(path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut rpc = SockRpc {
            lines: BufReader::new(stream.try_clone().unwrap()),
            stream,
            next_id: 1,
        };
        let init = rpc.call("initialize", json!({"clientInfo": {"name": "rolloutd-interop", "version": "0"}, "capabilities": {"experimentalApi": true}}));
        assert!(init.get("result").is_some(), "{init}");
        writeln!(rpc.stream, "{}", json!({"method": "initialized"})).unwrap();
        rpc
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        writeln!(
            self.stream,
            "{}",
            json!({"id": id, "method": method, "params": params})
        )
        .unwrap();
        self.until(|m| m["id"] == id && m.get("method").is_none())
    }

    fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        // Bounded: each read waits at most the read timeout, and the stream ends.
        loop {
            let mut line = String::new();
            let n = self
                .lines
                .read_line(&mut line)
                .expect("a line from the shim");
            assert!(n > 0, "the shim closed the connection");
            let v: Value = serde_json::from_str(&line).unwrap();
            if pred(&v) {
                return v;
            }
        }
    }
}

#[test]
fn shared_mode_relays_many_clients_to_one_app_server_with_the_same_checks() {
    let Some(codex) = codex_bin() else {
        return;
    };
    let w = World::new(codex);
    let (other, _) = w.exec("another thread");
    let listen = w.root.join("run/app-server.sock");
    let mut c = shimmed(
        &w,
        &w.codex,
        &["--listen", &format!("unix://{}", listen.display())],
        &[],
    );
    let mut shim = Reaped(
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(&listen).is_err() {
        assert!(shim.try_wait().unwrap().is_none(), "the shim exited");
        assert!(Instant::now() < deadline, "the shim never listened");
        std::thread::sleep(Duration::from_millis(20));
    }

    // One client runs a turn; a second one, on the same app-server, resumes that thread by
    // the realpath spelling of its rollout (no second writer: one Codex process).
    let mut first = SockRpc::connect(&listen);
    let started = first.call("thread/start", json!({}));
    let id = started["result"]["thread"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    first.call(
        "turn/start",
        json!({"threadId": id, "input": [{"type": "text", "text": "shared"}]}),
    );
    first.until(|m| m["method"] == "turn/completed");
    let rec = w
        .call("thread/wait", json!({"threadId": id, "timeoutMs": 5000}))
        .unwrap();
    let mut second = SockRpc::connect(&listen);
    let r = second.call(
        "thread/resume",
        json!({"threadId": id, "path": rec["canonicalPath"]}),
    );
    assert_eq!(r["result"]["thread"]["id"], id.as_str(), "{r}");
    // The same checks as on stdio.
    let r = second.call("thread/resume", json!({"threadId": id, "path": w.home}));
    assert_eq!(r["error"]["data"]["reason"], "directory", "{r}");
    let r = second.call(
        "thread/resume",
        json!({"threadId": id, "path": w.row(&other).rollout_path}),
    );
    assert_eq!(r["error"]["data"]["reason"], "otherThread", "{r}");
    drop(first);
    drop(second);

    // SIGTERM to the shim reaches Codex; both exit and the socket is removed.
    // SAFETY: kill has no memory effects; the pid is our live child.
    unsafe { libc::kill(shim.id() as libc::pid_t, libc::SIGTERM) };
    let status = loop {
        if let Some(s) = shim.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(60),
            "the shim did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("shared mode: shim exited with {status} after SIGTERM");
    assert!(!listen.exists(), "the socket was not removed");
}

#[test]
fn a_signal_to_the_stdio_shim_reaches_codex_and_its_exit_becomes_the_shims() {
    let Some(codex) = codex_bin() else {
        return;
    };
    let w = World::new(codex);
    let mut shim = Rpc::spawn(shimmed(&w, &w.codex, &[], &[]));
    shim.call("thread/start", json!({}));
    // SAFETY: kill has no memory effects; the pid is our live child.
    unsafe { libc::kill(shim.child.id() as libc::pid_t, libc::SIGTERM) };
    // The client's input stays open: only the signal can end Codex.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = shim.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "Codex did not stop on the relayed SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("codex app-server behind the shim, SIGTERM: the shim exited with {status}");
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.code().is_some() || status.signal() == Some(libc::SIGTERM),
        "{status}"
    );
}

/// Runs on every release of the matrix; the older one in it (0.124.0) still has two seed
/// bugs: the literal compare of a running thread's path ("mismatched path" for the realpath
/// spelling) and a directory handed to the rollout reader ("Is a directory (os error 21)").
#[test]
fn seed_bugs_of_older_releases_are_fixed_by_the_shim() {
    let Some(codex) = codex_bin() else {
        return;
    };
    let w = World::new(codex);
    // Older state DBs lack columns `World::rows` reads: only id and rollout_path here.
    w.codex(&["exec", "--skip-git-repo-check", "a thread"]);
    let (a, recorded): (String, PathBuf) = {
        let conn = rusqlite::Connection::open_with_flags(
            w.real_home.join("state_5.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        conn.query_row("SELECT id, rollout_path FROM threads", [], |r| {
            Ok((r.get(0)?, PathBuf::from(r.get::<_, String>(1)?)))
        })
        .unwrap()
    };
    let real = dunce::canonicalize(&recorded).unwrap();
    assert_ne!(recorded, real);
    let outcome = |r: &Value| match r.get("result") {
        Some(res) => format!("resumed {}", res["thread"]["id"]),
        None => error_message(r).to_owned(),
    };

    let mut app = Rpc::spawn(direct(&w, &[]));
    let r = app.call("thread/resume", json!({"threadId": a}));
    assert_eq!(r["result"]["thread"]["id"], a.as_str(), "{r}");
    let r = app.call("thread/resume", json!({"threadId": a, "path": real}));
    println!(
        "codex alone, the realpath of a running thread's rollout: {}",
        outcome(&r)
    );
    let r = app.call("thread/resume", json!({"threadId": a, "path": w.home}));
    println!("codex alone, $CODEX_HOME as the path: {}", outcome(&r));
    assert!(r.get("error").is_some(), "{r}");
    drop(app);

    let mut shim = Rpc::spawn(shimmed(&w, &w.codex, &[], &[]));
    let r = shim.call("thread/resume", json!({"threadId": a}));
    assert_eq!(r["result"]["thread"]["id"], a.as_str(), "{r}");
    let r = shim.call("thread/resume", json!({"threadId": a, "path": real}));
    assert_eq!(
        r["result"]["thread"]["id"],
        a.as_str(),
        "through the shim: {r}"
    );
    let r = shim.call("thread/resume", json!({"threadId": a, "path": w.home}));
    assert_eq!(r["error"]["data"]["reason"], "directory", "{r}");
    assert!(shim.finish().0.success());
}

#[test]
fn shared_mode_relays_to_an_app_server_it_did_not_start() {
    let Some(codex) = codex_bin() else {
        return;
    };
    let w = World::new(codex);
    let upstream = w.root.join("run/codex-upstream.sock");
    let mut codex = Reaped(
        direct(&w, &["--listen", &format!("unix://{}", upstream.display())])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let listen = w.root.join("run/shim.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    let wait_for = |p: &Path, child: &mut Reaped| {
        while std::os::unix::net::UnixStream::connect(p).is_err() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "exited before serving {p:?}"
            );
            assert!(Instant::now() < deadline, "{p:?} never served");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for(&upstream, &mut codex);
    let mut shim = Reaped(
        shimmed(
            &w,
            &w.codex,
            &[
                "--listen",
                &format!("unix://{}", listen.display()),
                "--upstream",
                &format!("unix://{}", upstream.display()),
            ],
            &[],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap(),
    );
    wait_for(&listen, &mut shim);

    let mut client = SockRpc::connect(&listen);
    let started = client.call("thread/start", json!({}));
    let id = started["result"]["thread"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = client.call("thread/resume", json!({"threadId": id, "path": w.home}));
    assert_eq!(r["error"]["data"]["reason"], "directory", "{r}");
    drop(client);

    // A client written for Codex's own socket (WebSocket framing) is served the same way.
    let (from, mut to) = rolloutd::codex_app::ws::connect(&listen).unwrap();
    let mut from = BufReader::new(from);
    let init = json!({"clientInfo": {"name": "ws", "version": "0"}, "capabilities": {"experimentalApi": true}});
    writeln!(
        to,
        "{}",
        json!({"id": 0, "method": "initialize", "params": init})
    )
    .unwrap();
    writeln!(
        to,
        "{}",
        json!({"id": 1, "method": "thread/resume", "params": {"threadId": id, "path": w.home}})
    )
    .unwrap();
    let mut answers = Vec::new();
    // Bounded: two answers, or the connection ends (then the asserts below fail).
    while answers.len() < 2 {
        let mut line = String::new();
        if from.read_line(&mut line).unwrap() == 0 {
            break;
        }
        let v: Value = serde_json::from_str(&line).unwrap();
        if v.get("method").is_none() {
            answers.push(v);
        }
    }
    let refusal = answers
        .iter()
        .find(|v| v["id"] == 1)
        .expect("the resume's answer");
    assert_eq!(refusal["error"]["data"]["reason"], "directory", "{refusal}");
    assert!(
        answers
            .iter()
            .any(|v| v["id"] == 0 && v.get("result").is_some()),
        "{answers:?}"
    );
    drop(to);

    // The shim stops on SIGTERM and leaves the app-server it did not start running.
    // SAFETY: kill has no memory effects; the pid is our live child.
    unsafe { libc::kill(shim.id() as libc::pid_t, libc::SIGTERM) };
    let status = loop {
        if let Some(s) = shim.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the shim did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    assert!(!listen.exists());
    assert!(
        codex.try_wait().unwrap().is_none(),
        "the upstream app-server was stopped"
    );
}

/// Issue 13, item 7, against the real Codex: rows in Codex's own (symlinked) spelling are
/// healthy, and the row Codex rewrites to the realpath after a resume through it is only
/// information, with advice that fits an unset `CODEX_HOME`.
#[test]
fn codex_audit_takes_codexs_spelling_as_healthy_and_its_realpath_rewrite_as_information() {
    let Some(codex) = codex_bin() else { return };
    let w = World::new(codex);
    let (kept, _) = w.exec("stays as Codex wrote it");
    let (resumed, _) = w.exec("resumed through the realpath");
    assert!(w.row(&kept).rollout_path.starts_with(&w.home));
    let real_path = dunce::canonicalize(w.row(&resumed).rollout_path).unwrap();
    {
        let mut app = AppServer::start(&w);
        app.request(
            "thread/resume",
            json!({"threadId": resumed, "path": real_path}),
        );
        app.request(
            "turn/start",
            json!({"threadId": resumed, "input": [{"type": "text", "text": "again"}]}),
        );
        app.until(|m| m["method"] == "turn/completed");
    }
    assert_eq!(
        w.row(&resumed).rollout_path,
        real_path,
        "Codex rewrote the row to the spelling it was resumed with"
    );

    let (code, audit) = w.rolloutd(&["codex", "audit"]);
    assert_eq!(code, 0, "no error: {audit:#}");
    let of = |id: &str| -> Vec<Value> {
        audit["findings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["row"]["threadId"] == id || f["threadId"] == id)
            .cloned()
            .collect()
    };
    assert!(of(&kept).is_empty(), "Codex's own spelling: {audit:#}");
    let found = of(&resumed);
    assert_eq!(found.len(), 1, "{audit:#}");
    assert_eq!(found[0]["kind"], "rowAliasSpelling");
    assert_eq!(found[0]["severity"], "info");
    assert!(!found[0]["fix"]["why"]
        .as_str()
        .unwrap()
        .contains("CODEX_HOME"));
}

/// Issue 13, item 13, against the real Codex: a started thread with no turn has no rollout,
/// and `check-resume` says so in the words `wait` uses (Codex writes it at `turn/start`).
#[test]
fn check_resume_and_wait_tell_one_story_about_when_codex_writes_a_rollout() {
    let Some(codex) = codex_bin() else { return };
    let w = World::new(codex);
    let mut app = AppServer::start(&w);
    let started = app.request("thread/start", json!({}));
    let id = started["thread"]["id"].as_str().unwrap().to_owned();
    let path = started["thread"]["path"].as_str().unwrap().to_owned();
    let story = "when its first turn starts (turn/start), before the turn completes";

    let (code, answer) = w.rolloutd(&["check-resume", &id, &path]);
    assert_eq!(code, 1, "{answer:#}");
    assert_eq!(answer["reason"], "notMaterialized", "{answer:#}");
    assert!(
        answer["detail"].as_str().unwrap().contains(story),
        "{answer:#}"
    );
    let waited = w.call("thread/wait", json!({"threadId": id, "timeoutMs": 10}));
    match waited {
        Err(ClientError::Rpc(e)) => assert!(e.message.contains(story), "{e:?}"),
        other => panic!("no rollout yet, so wait times out: {other:?}"),
    }

    app.request(
        "turn/start",
        json!({"threadId": id, "input": [{"type": "text", "text": "now it exists"}]}),
    );
    app.until(|m| m["method"] == "turn/completed");
    let (code, answer) = w.rolloutd(&["check-resume", &id, &path]);
    assert_eq!(code, 0, "{answer:#}");
}
