//! The benchmark corpus: a Codex home in the shape Codex CLI 0.169 writes.
//!
//! Every thread gets one rollout with a ~21 KB `session_meta` line (the `base_instructions`
//! text pads it, as in the 0.169 samples), paginated `ordinal` keys, a developer message,
//! an environment-context message, a `world_state`, a `turn_context`, the user prompt (as a
//! `response_item` and an `item_completed`), an assistant reply, a token count and a
//! `task_complete`. Threads start over one year and live in `sessions/YYYY/MM/DD/`; one in
//! ten is archived (flat `archived_sessions/`), one in fifty is a `.jsonl.zst` (zstd level
//! 3, as Codex compresses), and a few are multi-GB sparse files (a real head, then a hole).
//!
//! Files are written in parallel without fsync; the content is deterministic in `n`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// `base_instructions.text` length in the 0.169 samples: the line comes to ~21 KB.
pub const BASE_INSTRUCTIONS_LEN: usize = 20_751;
/// The same with `--small-base`: the 0.169 shape, with a short text, so that a 500,000-thread
/// corpus fits the disk and the page cache (~6 KB a file instead of ~27 KB).
pub const SMALL_BASE_INSTRUCTIONS_LEN: usize = 512;

/// Which `base_instructions` the corpus carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// As Codex 0.169 writes it (~21 KB `session_meta` line).
    Full,
    /// `--small-base`: a 512-byte text.
    SmallBase,
}

impl Shape {
    pub fn base_len(self) -> usize {
        match self {
            Shape::Full => BASE_INSTRUCTIONS_LEN,
            Shape::SmallBase => SMALL_BASE_INSTRUCTIONS_LEN,
        }
    }

    /// How a figure names the corpus it was measured on.
    pub fn label(self) -> String {
        match self {
            Shape::Full => format!("full corpus (base_instructions {BASE_INSTRUCTIONS_LEN} B)"),
            Shape::SmallBase => {
                format!("small-base corpus (base_instructions {SMALL_BASE_INSTRUCTIONS_LEN} B)")
            }
        }
    }
}
/// Distinct working directories threads are started in.
pub const CWDS: u32 = 40;
/// 2025-07-01T00:00:00Z: the corpus covers the year after it.
const START_MS: u64 = 1_751_328_000_000;
const YEAR_MS: u64 = 365 * 24 * 3600 * 1000;

/// One generated thread.
#[derive(Debug, Clone)]
pub struct Thread {
    pub id: String,
    pub path: PathBuf,
    pub archived: bool,
    pub zstd: bool,
    /// Apparent size of a sparse multi-GB file.
    pub sparse_bytes: Option<u64>,
    pub cwd: String,
}

/// What was generated.
pub struct Corpus {
    pub home: PathBuf,
    pub threads: Vec<Thread>,
    pub bytes_written: u64,
    pub elapsed: Duration,
}

impl Corpus {
    /// The cwd of the newest active thread (the one a cwd-filtered list is asked for).
    pub fn busy_cwd(&self) -> String {
        self.threads
            .iter()
            .rev()
            .find(|t| !t.archived)
            .map(|t| t.cwd.clone())
            .unwrap_or_else(|| cwd_of(0))
    }
}

/// The spec of thread `n` of `total`; newer threads have larger `n`.
pub fn spec(home: &Path, n: u32, total: u32) -> (Spec, Thread) {
    let created_ms =
        START_MS + (u64::from(n) * YEAR_MS) / u64::from(total.max(1)) + u64::from(n % 997);
    let spec = Spec::new(n, created_ms);
    let archived = n % 10 == 3;
    let zstd = n % 50 == 7;
    // Three sparse giants at any size ≥ 1,000 threads (2, 3 and 5 GiB).
    let sparse_bytes = match n {
        101 => Some(2u64 << 30),
        502 => Some(3u64 << 30),
        905 => Some(5u64 << 30),
        _ => None,
    }
    .filter(|_| !zstd && total >= 1000);
    let name = spec.file_name(zstd);
    let path = if archived {
        home.join("archived_sessions").join(name)
    } else {
        home.join(spec.day_dir()).join(name)
    };
    let thread = Thread {
        id: spec.id.clone(),
        path,
        archived,
        zstd,
        sparse_bytes,
        cwd: spec.cwd.clone(),
    };
    (spec, thread)
}

/// Writes `total` threads under `home` (which must not exist or be empty).
pub fn generate(home: &Path, total: u32, shape: Shape) -> std::io::Result<Corpus> {
    let started = Instant::now();
    std::fs::create_dir_all(home.join("sessions"))?;
    std::fs::create_dir_all(home.join("archived_sessions"))?;
    let made: Vec<(Spec, Thread)> = (0..total).map(|n| spec(home, n, total)).collect();
    let mut dirs: Vec<&Path> = made.iter().filter_map(|(_, t)| t.path.parent()).collect();
    dirs.sort();
    dirs.dedup();
    for d in dirs {
        std::fs::create_dir_all(d)?;
    }
    let base = padding("[text elided] ", shape.base_len());
    let written: std::io::Result<Vec<u64>> = made
        .par_iter()
        .map(|(spec, t)| write_thread(spec, t, &base))
        .collect();
    let bytes_written = written?.into_iter().sum();
    Ok(Corpus {
        home: home.to_owned(),
        threads: made.into_iter().map(|(_, t)| t).collect(),
        bytes_written,
        elapsed: started.elapsed(),
    })
}

fn write_thread(spec: &Spec, t: &Thread, base: &str) -> std::io::Result<u64> {
    let plain = spec.jsonl(base);
    let bytes = if t.zstd {
        zstd::stream::encode_all(plain.as_slice(), 3)?
    } else {
        plain
    };
    let mut f = std::fs::File::create(&t.path)?;
    f.write_all(&bytes)?;
    if let Some(len) = t.sparse_bytes {
        // A hole after the head: the file is as big as Codex's largest, and costs no disk.
        f.set_len(len)?;
    }
    Ok(bytes.len() as u64)
}

/// Writes one new thread created `now` into today's directory, as Codex does (create, write,
/// close), and returns its id and path. `sparse` makes it that many bytes long.
pub fn write_new(
    home: &Path,
    n: u32,
    sparse: Option<u64>,
    shape: Shape,
) -> std::io::Result<(String, PathBuf)> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(START_MS + YEAR_MS, |d| d.as_millis() as u64);
    let spec = Spec::new(n, now_ms);
    let dir = home.join(spec.day_dir());
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(spec.file_name(false));
    let base = padding("[text elided] ", shape.base_len());
    let mut f = std::fs::File::create(&path)?;
    f.write_all(&spec.jsonl(&base))?;
    if let Some(len) = sparse {
        f.set_len(len)?;
    }
    Ok((spec.id, path))
}

/// The values one rollout is made of.
pub struct Spec {
    pub id: String,
    created: String,
    pub cwd: String,
    title: String,
}

impl Spec {
    fn new(n: u32, created_ms: u64) -> Spec {
        // A UUIDv7 whose time field is the creation time; `n` keeps it unique.
        let rand = (u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16) & 0xffff;
        let id = format!(
            "{:08x}-{:04x}-7{:03x}-{:04x}-{:04x}{:08x}",
            created_ms >> 16,
            created_ms & 0xffff,
            rand & 0xfff,
            0x8000 | ((n >> 16) & 0x3fff),
            rand,
            n
        );
        let created = humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(created_ms),
        )
        .to_string();
        Spec {
            id,
            created,
            cwd: cwd_of(n),
            title: format!(
                "fix the flaky integration test in module {} and explain the root cause",
                n % 97
            ),
        }
    }

    fn file_name(&self, zstd: bool) -> String {
        let ts = self.created[..19].replace(':', "-");
        let ext = if zstd { ".jsonl.zst" } else { ".jsonl" };
        format!("rollout-{ts}-{}{ext}", self.id)
    }

    fn day_dir(&self) -> PathBuf {
        let c = &self.created;
        Path::new("sessions")
            .join(&c[0..4])
            .join(&c[5..7])
            .join(&c[8..10])
    }

    fn at(&self, plus_ms: u32) -> String {
        let ms: u32 = self.created[20..23].parse().unwrap_or(0);
        format!("{}.{:03}Z", &self.created[..19], (ms + plus_ms).min(999))
    }

    /// The whole file, one compact JSON record per line with its `ordinal`.
    pub fn jsonl(&self, base: &str) -> Vec<u8> {
        let (id, cwd, title) = (&self.id, &self.cwd, &self.title);
        let turn = format!("{}-turn", &id[..23]);
        let window = format!("{}-window", &id[..23]);
        let day = &self.created[..10];
        let created = &self.created;
        let payloads: [(u32, &str, String); 12] = [
            (28, "session_meta", format!(
                r#"{{"account_scoped":true,"session_id":"{id}","id":"{id}","timestamp":"{created}","cwd":"{cwd}","runtime_workspace_roots":["{cwd}"],"originator":"codex_exec","cli_version":"0.169.0","source":"exec","thread_source":"user","model_provider":"mock_provider","base_instructions":{{"text":"{base}","provenance":{{"type":"model","model":"mock-model"}}}},"history_mode":"paginated","context_window":{{"window_id":"{window}"}},"git":{{"branch":"main","commit_hash":"0123456789abcdef0123456789abcdef01234567"}}}}"#
            )),
            (31, "event_msg", format!(
                r#"{{"type":"task_started","turn_id":"{turn}","root_turn_id":"{turn}","started_at":1795287763,"model_context_window":258400,"collaboration_mode_kind":"default"}}"#
            )),
            (50, "response_item", format!(
                r#"{{"type":"message","id":"msg_{id}-dev","role":"developer","content":[{{"type":"input_text","text":"{}"}},{{"type":"input_text","text":"{}"}}],"internal_chat_message_metadata_passthrough":{{"turn_id":"{turn}","content_item_kinds":["host_skills.instructions","permissions.instructions"]}}}}"#,
                padding("<permissions instructions>", 2_122),
                padding("<skills>", 341)
            )),
            (51, "response_item", format!(
                r#"{{"type":"message","id":"msg_{id}-env","role":"user","content":[{{"type":"input_text","text":"<environment_context>\n  <cwd>{cwd}</cwd>\n  <shell>bash</shell>\n  <current_date>{day}</current_date>\n  <timezone>Etc/UTC</timezone>\n</environment_context>"}}],"internal_chat_message_metadata_passthrough":{{"turn_id":"{turn}","content_item_kinds":["environments.environment_context"],"content_item_metadata":[{{"provenance":{{"type":"harness","hook":false}}}}]}}}}"#
            )),
            (52, "world_state", format!(
                r#"{{"full":true,"state":{{"model":"mock-model","environments":{{"environments":{{"local":{{"cwd":"{cwd}","status":"available","shell":"bash"}}}}}}}}}}"#
            )),
            (53, "turn_context", format!(
                r#"{{"turn_id":"{turn}","cwd":"{cwd}","approval_policy":"never","model":"mock-model","summary":"none","sandbox_policy":{{"type":"read-only"}}}}"#
            )),
            (54, "event_msg", format!(
                r#"{{"type":"thread_settings_applied","thread_id":"{id}","thread_settings":{{"model":"mock-model","cwd":"{cwd}"}}}}"#
            )),
            (60, "response_item", format!(
                r#"{{"type":"message","id":"msg_{id}-user","role":"user","content":[{{"type":"input_text","text":"{title}"}}],"internal_chat_message_metadata_passthrough":{{"turn_id":"{turn}","content_item_kinds":["user.text"],"content_item_metadata":[{{"provenance":{{"type":"user"}}}}]}}}}"#
            )),
            (61, "event_msg", format!(
                r#"{{"type":"item_completed","thread_id":"{id}","turn_id":"{turn}","item":{{"type":"UserMessage","id":"{id}-item","content":[{{"type":"text","text":"{title}","text_elements":[]}}]}}}}"#
            )),
            (100, "response_item", r#"{"type":"message","id":"msg_1","role":"assistant","content":[{"type":"output_text","text":"The test raced the watcher; it now waits for the event."}]}"#.to_owned()),
            (102, "event_msg", r#"{"type":"token_count","info":{"total_token_usage":{"input_tokens":10,"output_tokens":1,"total_tokens":11},"model_context_window":258400}}"#.to_owned()),
            (103, "event_msg", format!(
                r#"{{"type":"task_complete","turn_id":"{turn}","last_agent_message":"Done","duration_ms":121}}"#
            )),
        ];
        let mut out = Vec::with_capacity(32 << 10);
        for (ordinal, (plus, kind, payload)) in payloads.iter().enumerate() {
            let _ = writeln!(
                out,
                r#"{{"timestamp":"{}","ordinal":{ordinal},"type":"{kind}","payload":{payload}}}"#,
                self.at(*plus)
            );
        }
        out
    }
}

pub fn cwd_of(n: u32) -> String {
    format!(
        "/home/dev/src/project-{:02}",
        (n.wrapping_mul(2_654_435_761) >> 8) % CWDS
    )
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
