//! Replays every example exchange in `docs/protocol.md` against a live agent, so the
//! document cannot drift from the code.
//!
//! In the document, each ```` ```jsonrpc ```` block runs on a fresh connection:
//! - `--> LINE` is sent as is;
//! - consecutive `<-- JSON` lines are the next messages, in any order among themselves
//!   (a response and a notification it causes race). Keys in [`VOLATILE`] (uptime, pid,
//!   timings) are compared by presence only;
//! - `# VERB ID` acts on the home the way Codex does: `write`, `append`, `archive`,
//!   `unarchive`, `compress`, `delete`; `# sigterm` stops the agent.
//!
//! Paths are shown under `/home/me/.codex`; the test maps them onto its temp home.
//! `ROLLOUTD_BLESS=1 cargo test --test protocol_doc` rewrites the `<--` lines from what
//! the agent answered.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::agent::{Agent, Raw};
use common::{Fixture, Rollout};
use serde_json::Value;

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md");
const DOC_HOME: &str = "/home/me/.codex";
const DOC_INDEX: &str = "/home/me/.local/state/rolloutd/index.sqlite";
/// Values that differ from run to run.
const VOLATILE: &[&str] = &[
    "uptimeSecs",
    "pid",
    "requests",
    "lagMs",
    "elapsed",
    "waitedMs",
    "version",
    "fileId",
    // The temp home's filesystem (ext4, tmpfs…) depends on the machine.
    "filesystem",
];

/// The threads of the document's home.
fn threads() -> Vec<(Rollout, Placement)> {
    let r = |id: &str, created: &str, cwd: &str, title: &str| Rollout::new(id, created, cwd, title);
    vec![
        (
            r(
                "01a1ff7d-4aab-7f60-bd31-0e4a5bf4615c",
                "2026-11-21T19:02:43.000Z",
                "/home/me/src/rolloutd",
                "why does resume say the rollout is stale?",
            ),
            Placement::Active,
        ),
        (
            r(
                "01a1ff7c-a9a0-7f03-ae13-d1e6b926726f",
                "2026-11-21T19:02:02.000Z",
                "/home/me/src/rolloutd",
                "list my threads",
            ),
            Placement::Archived,
        ),
        (
            r(
                "01a1f0aa-1111-7222-8333-944455556666",
                "2026-11-20T08:15:00.000Z",
                "/home/me/src/site",
                "update the landing page",
            ),
            Placement::Zstd,
        ),
        (
            r(
                "01a1e5e5-0000-7000-8000-000000000001",
                "2026-11-19T09:00:00.000Z",
                "/home/me/src/site",
                "first of two",
            ),
            Placement::Active,
        ),
        (
            r(
                "01a1e5e5-0000-7000-8000-000000000002",
                "2026-11-19T09:30:00.000Z",
                "/home/me/src/site",
                "second of two",
            ),
            Placement::Active,
        ),
        (
            r(
                "01a1ffa0-5b5b-7c7c-8d8d-9e9e9e9e9e9e",
                "2026-11-21T19:30:00.000Z",
                "/home/me/src/rolloutd",
                "write the protocol doc",
            ),
            Placement::Later,
        ),
    ]
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    Active,
    Archived,
    Zstd,
    /// Written by a `# write` step.
    Later,
}

/// Every file the document's home holds gets this mtime, so `modifiedAt` is stable.
fn doc_mtime() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_290_000)
}

fn set_mtime(path: &Path) {
    let f = std::fs::File::options().append(true).open(path).unwrap();
    f.set_modified(doc_mtime()).unwrap();
}

struct World {
    fx: Fixture,
    agent: Agent,
}

impl World {
    fn new() -> World {
        let fx = Fixture::new();
        for (r, placement) in threads() {
            let path = match placement {
                Placement::Active => fx.write_active(&r),
                Placement::Archived => fx.write_archived(&r),
                Placement::Zstd => fx.write_active_zst(&r),
                Placement::Later => continue,
            };
            set_mtime(&path);
        }
        // Two bad files for `index/problems`.
        let day = fx.home.join("sessions/2026/11/21");
        std::fs::create_dir_all(
            day.join("rollout-2026-11-21T19-10-00-01a1ffc0-0000-7000-8000-000000000000.jsonl"),
        )
        .unwrap();
        std::fs::write(
            day.join("rollout-2026-11-21T19-11-00-01a1ffc1-0000-7000-8000-000000000000.jsonl"),
            b"",
        )
        .unwrap();
        let agent = Agent::start(&fx);
        World { fx, agent }
    }

    fn rollout(&self, id: &str) -> Rollout {
        threads()
            .into_iter()
            .map(|(r, _)| r)
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no thread {id} in the document's home"))
    }

    /// The one file the thread has now.
    fn file_of(&self, id: &str) -> PathBuf {
        let found: Vec<PathBuf> = walkdir::WalkDir::new(&self.fx.home)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file() && e.file_name().to_string_lossy().contains(id))
            .map(|e| e.into_path())
            .collect();
        assert_eq!(found.len(), 1, "thread {id}: {found:?}");
        found.into_iter().next().unwrap()
    }

    fn act(&mut self, verb: &str, id: Option<&str>) {
        let id = id.unwrap_or("");
        match verb {
            "write" => {
                let r = self.rollout(id);
                let dest = self.fx.home.join(r.day_dir()).join(r.file_name());
                self.place(&r.jsonl(), &dest);
            }
            "append" => {
                use std::io::Write;
                let path = self.file_of(id);
                let mut f = std::fs::File::options().append(true).open(&path).unwrap();
                f.write_all(b"{\"timestamp\":\"2026-11-21T19:31:00.000Z\",\"type\":\"event_msg\",\"payload\":{\"type\":\"task_complete\"}}\n").unwrap();
                f.set_modified(doc_mtime()).unwrap();
            }
            "archive" => {
                let path = self.file_of(id);
                let dest = self
                    .fx
                    .home
                    .join("archived_sessions")
                    .join(path.file_name().unwrap());
                std::fs::rename(&path, dest).unwrap();
            }
            "unarchive" => {
                let r = self.rollout(id);
                let path = self.file_of(id);
                let dest = self
                    .fx
                    .home
                    .join(r.day_dir())
                    .join(path.file_name().unwrap());
                std::fs::rename(&path, dest).unwrap();
            }
            "compress" => {
                let path = self.file_of(id);
                let zst = path.with_file_name(format!(
                    "{}.zst",
                    path.file_name().unwrap().to_string_lossy()
                ));
                self.place(&common::zstd_bytes(&std::fs::read(&path).unwrap()), &zst);
                std::fs::remove_file(&path).unwrap();
            }
            "delete" => std::fs::remove_file(self.file_of(id)).unwrap(),
            "sigterm" => {
                // Let the agent read the request just sent, so it is in flight when the
                // signal lands.
                std::thread::sleep(Duration::from_millis(200));
                self.agent.signal(libc::SIGTERM);
            }
            other => panic!("unknown step `# {other}` in {DOC}"),
        }
    }

    /// Writes through a staging file with the document's mtime, then renames into place.
    fn place(&self, bytes: &[u8], dest: &Path) {
        let staging = self.fx.root.join("staging");
        std::fs::create_dir_all(&staging).unwrap();
        let tmp = staging.join("file");
        std::fs::write(&tmp, bytes).unwrap();
        set_mtime(&tmp);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::rename(&tmp, dest).unwrap();
    }

    fn to_live(&self, text: &str) -> String {
        text.replace(DOC_INDEX, self.fx.index.to_str().unwrap())
            .replace(DOC_HOME, self.fx.home.to_str().unwrap())
    }

    fn to_doc(&self, text: &str) -> String {
        text.replace(self.fx.index.to_str().unwrap(), DOC_INDEX)
            .replace(self.fx.home.to_str().unwrap(), DOC_HOME)
    }
}

/// `v` with every volatile key's value replaced by `null`.
fn stable(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let v = if VOLATILE.contains(&k.as_str()) {
                        Value::Null
                    } else {
                        stable(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(stable).collect()),
        other => other.clone(),
    }
}

/// Reads `expected.len()` messages and matches them to the expected ones in any order.
/// Returns the messages in arrival order, as document lines.
fn check_group(world: &World, raw: &mut Raw, expected: &[String], block_at: usize) -> Vec<String> {
    let bless = std::env::var_os("ROLLOUTD_BLESS").is_some();
    let mut got = Vec::new();
    for _ in expected {
        let line = raw
            .line()
            .unwrap_or_else(|e| panic!("{DOC}:{block_at}: reading a message: {e}"));
        assert!(
            !line.is_empty(),
            "{DOC}:{block_at}: the agent closed the connection; expected {expected:#?}"
        );
        got.push(line.trim_end().to_owned());
    }
    if bless {
        return got.iter().map(|l| world.to_doc(l)).collect();
    }
    let mut unmatched: Vec<Value> = got
        .iter()
        .map(|l| {
            stable(
                &serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{DOC}:{block_at}: not JSON ({e}): {l}")),
            )
        })
        .collect();
    for want in expected {
        let want_v: Value = serde_json::from_str(&world.to_live(want)).unwrap_or_else(|e| {
            panic!("{DOC}:{block_at}: the document's line is not JSON ({e}): {want}")
        });
        let want_v = stable(&want_v);
        let Some(i) = unmatched.iter().position(|g| *g == want_v) else {
            panic!(
                "{DOC}:{block_at}: no message matches\n  {want}\ngot\n  {}\nagent log:\n{}",
                got.iter()
                    .map(|l| world.to_doc(l))
                    .collect::<Vec<_>>()
                    .join("\n  "),
                world.agent.log()
            );
        };
        unmatched.remove(i);
    }
    expected.to_vec()
}

#[test]
fn every_example_in_the_protocol_doc_replays_against_a_live_agent() {
    let doc = std::fs::read_to_string(DOC).unwrap();
    let mut world = World::new();
    let mut out: Vec<String> = Vec::new();
    let mut lines = doc.lines().enumerate().peekable();
    let mut blocks = 0;
    while let Some((_, line)) = lines.next() {
        out.push(line.to_owned());
        if line.trim() != "```jsonrpc" {
            continue;
        }
        blocks += 1;
        let mut raw = Raw::connect(&world.agent.socket);
        while let Some((n, line)) = lines.next() {
            let at = n + 1;
            if line.trim() == "```" {
                out.push(line.to_owned());
                break;
            }
            if let Some(req) = line.strip_prefix("--> ") {
                raw.send(format!("{}\n", world.to_live(req)).as_bytes())
                    .unwrap();
                out.push(line.to_owned());
            } else if let Some(first) = line.strip_prefix("<-- ") {
                let mut group = vec![first.to_owned()];
                while let Some((_, next)) = lines.peek() {
                    match next.strip_prefix("<-- ") {
                        Some(more) => {
                            group.push(more.to_owned());
                            lines.next();
                        }
                        None => break,
                    }
                }
                for l in check_group(&world, &mut raw, &group, at) {
                    out.push(format!("<-- {l}"));
                }
            } else if let Some(step) = line.strip_prefix("# ") {
                let mut words = step.split_whitespace();
                let verb = words.next().unwrap_or("");
                world.act(verb, words.next());
                out.push(line.to_owned());
            } else {
                assert!(
                    line.trim().is_empty(),
                    "{DOC}:{at}: not an exchange line: {line}"
                );
                out.push(line.to_owned());
            }
        }
    }
    let sent = out.iter().filter(|l| l.starts_with("--> ")).count();
    assert!(
        blocks >= 14 && sent >= 30,
        "only {blocks} example blocks, {sent} requests in {DOC}"
    );
    if std::env::var_os("ROLLOUTD_BLESS").is_some() {
        let mut text = out.join("\n");
        text.push('\n');
        std::fs::write(DOC, text).unwrap();
    }
    // The last example stops the agent; it must have exited cleanly.
    let status = world.agent.wait_exit(Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}
