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
            println!("skipped: ROLLOUTD_CODEX_BIN is not set (scripts/codex-interop.sh installs Codex and sets it)");
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
