//! Shared fixtures for the integration tests: a temporary Codex home laid out like the one
//! Codex CLI 0.169 writes, rollout JSONL in the shape of its files, and a runner for the
//! built `rolloutd` binary that never sees the real `~/.codex`.
//!
//! Everything lives under one `TempDir`, dropped (and deleted) with the fixture.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod agent;
pub mod rel;
pub mod sys;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Length of the `base_instructions.text` placeholder in the 0.169 samples; it makes the
/// `session_meta` line about 21 KB, as Codex writes it.
pub const BASE_INSTRUCTIONS_LEN: usize = 20_751;

/// Every request method the agent answers (`docs/protocol.md`), `subscribe` and
/// `unsubscribe` aside.
pub const METHODS: &[&str] = &[
    "thread/resolve",
    "thread/checkResume",
    "thread/list",
    "thread/wait",
    "path/resolve",
    "path/same",
    "index/status",
    "index/rescan",
    "index/problems",
    "codex/audit",
    "codex/repair",
];

/// The methods that change what a connection receives rather than ask a question.
pub const SUBSCRIPTION_METHODS: &[&str] = &["subscribe", "unsubscribe"];

/// A thread id in the UUIDv7 shape Codex 0.169 uses, distinct per `n`, with a distinct
/// first 8 characters per `n` (so 8-char prefixes are unique).
pub fn tid(n: u32) -> String {
    format!("01a2{n:04x}-4aab-7f60-bd31-{n:012x}")
}

/// Where the user prompt of a rollout comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TitleShape {
    /// `history_mode: "paginated"` (0.169): a `response_item` user message with
    /// `content_item_kinds: ["user.text"]`, then `item_completed` `UserMessage`.
    Paginated,
    /// `legacy` files: an `event_msg` `user_message`.
    LegacyEvent,
    /// Only an `item_completed` `UserMessage` carries the prompt.
    ItemCompletedOnly,
    /// No user prompt at all in the head.
    None,
}

/// What to write into one rollout file.
#[derive(Debug, Clone)]
pub struct Rollout {
    /// `session_meta.payload.id`.
    pub id: String,
    /// `session_meta.payload.timestamp`, `YYYY-MM-DDThh:mm:ss.mmmZ`.
    pub created: String,
    pub cwd: String,
    pub title: String,
    pub title_shape: TitleShape,
    pub source: Value,
    pub originator: String,
    pub git_branch: Option<String>,
    /// Length of the `base_instructions.text` padding.
    pub base_len: usize,
}

impl Rollout {
    pub fn new(id: &str, created: &str, cwd: &str, title: &str) -> Self {
        Rollout {
            id: id.to_owned(),
            created: created.to_owned(),
            cwd: cwd.to_owned(),
            title: title.to_owned(),
            title_shape: TitleShape::Paginated,
            source: json!("exec"),
            originator: "codex_exec".to_owned(),
            git_branch: None,
            base_len: BASE_INSTRUCTIONS_LEN,
        }
    }

    pub fn shape(mut self, shape: TitleShape) -> Self {
        self.title_shape = shape;
        self
    }

    pub fn base_len(mut self, len: usize) -> Self {
        self.base_len = len;
        self
    }

    pub fn branch(mut self, branch: &str) -> Self {
        self.git_branch = Some(branch.to_owned());
        self
    }

    /// `YYYY-MM-DDThh-mm-ss` as in the file name (Codex uses local time; the tests run in
    /// UTC-agnostic fashion by deriving it from `created`).
    pub fn name_timestamp(&self) -> String {
        self.created[..19].replace(':', "-")
    }

    /// `rollout-<ts>-<id>.jsonl`.
    pub fn file_name(&self) -> String {
        format!("rollout-{}-{}.jsonl", self.name_timestamp(), self.id)
    }

    /// `sessions/YYYY/MM/DD` relative to the home.
    pub fn day_dir(&self) -> PathBuf {
        let c = &self.created;
        Path::new("sessions")
            .join(&c[0..4])
            .join(&c[5..7])
            .join(&c[8..10])
    }

    /// The JSONL text, one compact record per line, `ordinal` on each (paginated mode).
    pub fn jsonl(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 << 10);
        for (ordinal, (ts_ms, kind, payload)) in self.records().into_iter().enumerate() {
            let line = json!({
                "timestamp": self.line_timestamp(ts_ms),
                "ordinal": ordinal,
                "type": kind,
                "payload": payload,
            });
            serde_json::to_writer(&mut out, &line).unwrap();
            out.push(b'\n');
        }
        out
    }

    /// The first (`session_meta`) line alone, with its newline.
    pub fn meta_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(&json!({
            "timestamp": self.line_timestamp(28),
            "ordinal": 0,
            "type": "session_meta",
            "payload": self.meta_payload(),
        }))
        .unwrap();
        line.push(b'\n');
        line
    }

    fn line_timestamp(&self, plus_ms: u32) -> String {
        // `created` ends in `.mmmZ`; keep the second and vary the milliseconds.
        let ms: u32 = self.created[20..23].parse().unwrap_or(0);
        format!("{}.{:03}Z", &self.created[..19], (ms + plus_ms).min(999))
    }

    fn turn_id(&self) -> String {
        format!("{}-turn", &self.id[..23])
    }

    fn meta_payload(&self) -> Value {
        let mut git = json!({});
        if let Some(b) = &self.git_branch {
            git = json!({"branch": b, "commit_hash": "0123456789abcdef0123456789abcdef01234567"});
        }
        json!({
            "account_scoped": true,
            "session_id": self.id,
            "id": self.id,
            "timestamp": self.created,
            "cwd": self.cwd,
            "runtime_workspace_roots": [self.cwd],
            "originator": self.originator,
            "cli_version": "0.169.0",
            "source": self.source,
            "thread_source": "user",
            "model_provider": "mock_provider",
            "base_instructions": {
                "text": padding("[text elided] ", self.base_len),
                "provenance": {"type": "model", "model": "mock-model"}
            },
            "history_mode": "paginated",
            "context_window": {"window_id": format!("{}-window", &self.id[..23])},
            "git": git,
        })
    }

    fn records(&self) -> Vec<(u32, &'static str, Value)> {
        let turn = self.turn_id();
        let id = &self.id;
        let mut r: Vec<(u32, &'static str, Value)> = vec![
            (28, "session_meta", self.meta_payload()),
            (
                31,
                "event_msg",
                json!({
                    "type": "task_started",
                    "turn_id": turn,
                    "root_turn_id": turn,
                    "started_at": 1_795_287_763u64,
                    "model_context_window": 258_400,
                    "collaboration_mode_kind": "default"
                }),
            ),
            (
                50,
                "response_item",
                json!({
                    "type": "message",
                    "id": format!("msg_{id}-dev"),
                    "role": "developer",
                    "content": [
                        {"type": "input_text", "text": padding("<permissions instructions>", 2_122)},
                        {"type": "input_text", "text": padding("<skills>", 341)}
                    ],
                    "internal_chat_message_metadata_passthrough": {
                        "turn_id": turn,
                        "content_item_kinds": ["host_skills.instructions", "permissions.instructions"]
                    }
                }),
            ),
            (
                51,
                "response_item",
                json!({
                    "type": "message",
                    "id": format!("msg_{id}-env"),
                    "role": "user",
                    "content": [{
                        "type": "input_text",
                        "text": format!(
                            "<environment_context>\n  <cwd>{}</cwd>\n  <shell>bash</shell>\n  <current_date>{}</current_date>\n  <timezone>Etc/UTC</timezone>\n</environment_context>",
                            self.cwd, &self.created[..10]
                        )
                    }],
                    "internal_chat_message_metadata_passthrough": {
                        "turn_id": turn,
                        "content_item_kinds": ["environments.environment_context"],
                        "content_item_metadata": [{"provenance": {"type": "harness", "hook": false}}]
                    }
                }),
            ),
            (
                52,
                "world_state",
                json!({"full": true, "state": {"model": "mock-model", "environments": {"environments": {"local": {"cwd": self.cwd, "status": "available", "shell": "bash"}}}}}),
            ),
            (
                53,
                "turn_context",
                json!({
                    "turn_id": turn,
                    "cwd": self.cwd,
                    "approval_policy": "never",
                    "model": "mock-model",
                    "summary": "none",
                    "sandbox_policy": {"type": "read-only"}
                }),
            ),
            (
                54,
                "event_msg",
                json!({"type": "thread_settings_applied", "thread_id": id, "thread_settings": {"model": "mock-model", "cwd": self.cwd}}),
            ),
        ];
        let user_item = json!({
            "type": "message",
            "id": format!("msg_{id}-user"),
            "role": "user",
            "content": [{"type": "input_text", "text": self.title}],
            "internal_chat_message_metadata_passthrough": {
                "turn_id": turn,
                "content_item_kinds": ["user.text"],
                "content_item_metadata": [{"provenance": {"type": "user"}}]
            }
        });
        let completed = json!({
            "type": "item_completed",
            "thread_id": id,
            "turn_id": turn,
            "item": {
                "type": "UserMessage",
                "id": format!("{id}-item"),
                "content": [{"type": "text", "text": self.title, "text_elements": []}]
            }
        });
        match self.title_shape {
            TitleShape::Paginated => {
                r.push((60, "response_item", user_item));
                r.push((61, "event_msg", completed));
            }
            TitleShape::LegacyEvent => {
                r.push((
                    60,
                    "event_msg",
                    json!({"type": "user_message", "message": self.title, "images": [], "local_images": [], "text_elements": []}),
                ));
            }
            TitleShape::ItemCompletedOnly => r.push((61, "event_msg", completed)),
            TitleShape::None => {}
        }
        r.push((
            100,
            "event_msg",
            json!({"type": "item_completed", "thread_id": id, "turn_id": turn, "item": {"type": "AgentMessage", "id": "msg_1", "content": [{"type": "Text", "text": "Done"}]}}),
        ));
        r.push((
            101,
            "response_item",
            json!({"type": "message", "id": "msg_1", "role": "assistant", "content": [{"type": "output_text", "text": "Done"}]}),
        ));
        r.push((
            102,
            "event_msg",
            json!({"type": "token_count", "info": {"total_token_usage": {"input_tokens": 10, "output_tokens": 1, "total_tokens": 11}, "model_context_window": 258_400}}),
        ));
        r.push((
            103,
            "event_msg",
            json!({"type": "task_complete", "turn_id": turn, "last_agent_message": "Done", "duration_ms": 121}),
        ));
        r
    }
}

/// `prefix` followed by `x` up to exactly `len` bytes.
pub fn padding(prefix: &str, len: usize) -> String {
    let mut s = String::with_capacity(len.max(prefix.len()));
    s.push_str(prefix);
    while s.len() < len {
        s.push('x');
    }
    s
}

/// Compresses `bytes` as Codex does (zstd level 3).
pub fn zstd_bytes(bytes: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(bytes, 3).unwrap()
}

/// A temporary world: `root` (canonical) holding a Codex home, an index and the
/// `HOME`/`XDG_*` directories the spawned binary is given.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    /// Canonical path of the temp dir.
    pub root: PathBuf,
    /// The Codex home as passed with `--codex-home`.
    pub home: PathBuf,
    /// The index database file.
    pub index: PathBuf,
    /// An optional `--config` file.
    pub config: Option<PathBuf>,
    /// Extra `--codex-home` values.
    pub extra_homes: Vec<PathBuf>,
}

impl Fixture {
    /// A plain (non-symlinked) home at `<root>/codex`.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dunce::canonicalize(dir.path()).unwrap();
        let home = root.join("codex");
        std::fs::create_dir_all(home.join("sessions")).unwrap();
        std::fs::create_dir_all(home.join("archived_sessions")).unwrap();
        Self::with(dir, root, home)
    }

    /// A home reached through a symlinked user directory: `<root>/home/u` → `<root>/mnt/users/u`,
    /// configured as `<root>/home/u/.codex` (the spelling Codex writes without `CODEX_HOME`).
    pub fn symlinked() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dunce::canonicalize(dir.path()).unwrap();
        let real_user = root.join("mnt/users/u");
        std::fs::create_dir_all(real_user.join(".codex/sessions")).unwrap();
        std::fs::create_dir_all(real_user.join(".codex/archived_sessions")).unwrap();
        std::fs::create_dir_all(root.join("home")).unwrap();
        // A relative link, as an admin would make inside one tree.
        std::os::unix::fs::symlink("../mnt/users/u", root.join("home/u")).unwrap();
        let home = root.join("home/u/.codex");
        Self::with(dir, root, home)
    }

    fn with(dir: tempfile::TempDir, root: PathBuf, home: PathBuf) -> Self {
        for d in ["user", "user/.config", "user/.local/state", "user/run"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let index = root.join("state/index.sqlite");
        Fixture {
            dir,
            root,
            home,
            index,
            config: None,
            extra_homes: Vec::new(),
        }
    }

    /// The home's realpath.
    pub fn real_home(&self) -> PathBuf {
        dunce::canonicalize(&self.home).unwrap()
    }

    /// Writes `r` as an active rollout under `sessions/YYYY/MM/DD/`; returns the path under
    /// the configured home spelling.
    pub fn write_active(&self, r: &Rollout) -> PathBuf {
        self.write_bytes(&r.day_dir().join(r.file_name()), &r.jsonl())
    }

    /// Writes `r` as a `.jsonl.zst` active rollout.
    pub fn write_active_zst(&self, r: &Rollout) -> PathBuf {
        let rel = r.day_dir().join(format!("{}.zst", r.file_name()));
        self.write_bytes(&rel, &zstd_bytes(&r.jsonl()))
    }

    /// Writes `r` into the flat `archived_sessions/`.
    pub fn write_archived(&self, r: &Rollout) -> PathBuf {
        self.write_bytes(
            &Path::new("archived_sessions").join(r.file_name()),
            &r.jsonl(),
        )
    }

    /// Writes `bytes` at `rel` under the home, creating directories.
    pub fn write_bytes(&self, rel: &Path, bytes: &[u8]) -> PathBuf {
        let path = self.home.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(bytes).unwrap();
        f.sync_all().ok();
        path
    }

    /// A command for the built binary with this fixture's homes, index and a sealed
    /// environment (no `CODEX_HOME`, `HOME`/`XDG_*` inside the temp dir).
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rolloutd"));
        let user = self.root.join("user");
        c.env_remove("CODEX_HOME")
            .env_remove("ROLLOUTD_INDEX")
            .env_remove("CODEX_SQLITE_HOME")
            .env_remove("RUST_LOG")
            .env_remove("ROLLOUTD_SOCKET")
            // A test run under a service manager must not hand its sockets and watchdog to
            // the binary; tests that want them set them again.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("JOURNAL_STREAM")
            .env("HOME", &user)
            .env("XDG_CONFIG_HOME", user.join(".config"))
            .env("XDG_STATE_HOME", user.join(".local/state"))
            .env("XDG_CACHE_HOME", user.join(".cache"))
            .env("XDG_DATA_HOME", user.join(".local/share"))
            .env("XDG_RUNTIME_DIR", user.join("run"))
            .arg("--codex-home")
            .arg(&self.home);
        for h in &self.extra_homes {
            c.arg("--codex-home").arg(h);
        }
        c.arg("--index").arg(&self.index);
        if let Some(config) = &self.config {
            c.arg("--config").arg(config);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Runs the binary with `args` and `--json`, bounded by a deadline.
    pub fn run(&self, args: &[&str]) -> Run {
        let mut c = self.cmd();
        c.arg("--json").args(args);
        Run::spawn(c, args)
    }

    /// As [`Fixture::run`], with path arguments.
    pub fn run_os(&self, args: &[&std::ffi::OsStr]) -> Run {
        let mut c = self.cmd();
        c.arg("--json").args(args);
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let shown: Vec<&str> = shown.iter().map(String::as_str).collect();
        Run::spawn(c, &shown)
    }

    /// `rolloutd index`, asserted to succeed.
    pub fn index(&self) -> Value {
        let r = self.run(&["index"]);
        assert_eq!(r.code, 0, "index failed: {r:?}");
        r.json
    }

    /// `rolloutd resolve <target>`.
    pub fn resolve(&self, target: impl AsRef<std::ffi::OsStr>) -> Run {
        self.run_os(&["resolve".as_ref(), target.as_ref()])
    }
}

/// Upper bound on one CLI run; a blocked reader (a FIFO opened for reading) fails the test
/// instead of hanging the suite.
pub const RUN_DEADLINE: Duration = Duration::from_secs(30);

/// The outcome of one CLI run.
pub struct Run {
    pub args: Vec<String>,
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as one JSON document (`Null` when it is not one).
    pub json: Value,
    pub elapsed: Duration,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rolloutd {:?} -> exit {}\nstdout: {}\nstderr: {}",
            self.args, self.code, self.stdout, self.stderr
        )
    }
}

impl Run {
    pub fn spawn(mut c: Command, args: &[&str]) -> Run {
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = c.spawn().expect("spawning rolloutd");
        // Poll so a hang turns into a failure with a message, not a stuck suite.
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if started.elapsed() > RUN_DEADLINE {
                child.kill().ok();
                let out = child.wait_with_output().unwrap();
                panic!(
                    "rolloutd {args:?} did not finish within {RUN_DEADLINE:?}; stderr: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let out: Output = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let json = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
        Run {
            args: args.iter().map(|s| s.to_string()).collect(),
            code: out.status.code().unwrap_or(-1),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            json,
            elapsed: started.elapsed(),
        }
    }

    /// The `error.reason` of a failed `--json` run.
    pub fn error_reason(&self) -> &str {
        self.json["error"]["reason"].as_str().unwrap_or("")
    }

    pub fn error_message(&self) -> &str {
        self.json["error"]["message"].as_str().unwrap_or("")
    }
}

/// A `Path` field of a JSON document as a `PathBuf`.
pub fn jpath(v: &Value) -> PathBuf {
    PathBuf::from(v.as_str().unwrap_or_else(|| panic!("not a path: {v}")))
}

/// Library-level access to the same index and homes the CLI uses.
pub struct Lib {
    pub homes: rolloutd::identity::Homes,
    pub index: rolloutd::index::Index,
}

impl Lib {
    pub fn open(fx: &Fixture) -> Lib {
        let mut configured = vec![fx.home.clone()];
        configured.extend(fx.extra_homes.iter().cloned());
        Lib {
            homes: rolloutd::identity::Homes::new(&configured, &[]),
            index: rolloutd::index::Index::open(&fx.index, rolloutd::index::Journal::Wal).unwrap(),
        }
    }

    pub fn queries(&self) -> rolloutd::query::Queries<'_> {
        rolloutd::query::Queries::new(
            &self.homes,
            &self.index,
            rolloutd::rollout::HeadLimits::default(),
        )
    }
}
