//! The change feed against a live agent: whoever changes the index (the watcher, a query's
//! read-repair, a rescan, a CLI run), each change is announced exactly once.
//!
//! `seeded_churn` runs seeded random churn (`ROLLOUTD_SEED` replays a run,
//! `ROLLOUTD_CHURN_OPS` sets its length) while other clients hammer `thread/resolve`,
//! `path/resolve` and `thread/list` and `rolloutd index` runs now and then, then checks each
//! thread's folded stream of notifications against its true sequence of states. The
//! reproductions of the change-feed issue are named cases below it.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::agent::{request, Agent, Raw, EVENT_DEADLINE};
use common::{tid, zstd_bytes, Fixture, Rollout};
use serde_json::{json, Value};

/// Ops on one thread are at least this far apart, so each is its own state change (past
/// the settle window and the rename grace) and must be announced on its own; and none
/// starts before the thread's previous op was announced (see [`Churn::idle`]).
const SPACING: Duration = Duration::from_millis(300);

/// Records every notification a subscriber receives, on a thread of its own.
struct Feed {
    seen: Arc<Mutex<Vec<Value>>>,
    /// Thread notifications received so far, per thread id.
    counts: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Feed {
    fn start(agent: &Agent) -> Feed {
        let mut sub = agent.subscribe(None);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let counts = Arc::new(Mutex::new(HashMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, c, st) = (Arc::clone(&seen), Arc::clone(&counts), Arc::clone(&stop));
        let reader = std::thread::spawn(move || {
            sub.client
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            while !st.load(Ordering::Acquire) {
                if let Ok(msg) = sub.client.read_message() {
                    let thread = msg["method"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("thread/"))
                        .then(|| msg["params"]["threadId"].as_str().map(str::to_owned))
                        .flatten();
                    if let Some(id) = thread {
                        *c.lock().unwrap().entry(id).or_insert(0) += 1;
                    }
                    s.lock().unwrap().push(msg);
                }
            }
        });
        Feed {
            seen,
            counts,
            stop,
            reader: Some(reader),
        }
    }

    /// How many thread notifications `id` has had.
    fn count(&self, id: &str) -> usize {
        self.counts.lock().unwrap().get(id).copied().unwrap_or(0)
    }

    fn snapshot(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }

    /// The thread notifications' methods for `id`, in order.
    fn methods_for(&self, id: &str) -> Vec<String> {
        self.snapshot()
            .iter()
            .filter(|n| n["params"]["threadId"] == id)
            .filter_map(|n| n["method"].as_str().map(str::to_owned))
            .filter(|m| m.starts_with("thread/"))
            .collect()
    }

    /// Waits until `id` has had a `method` notification.
    fn wait_for(&self, method: &str, id: &str) {
        let started = Instant::now();
        while !self.methods_for(id).iter().any(|m| m == method) {
            assert!(
                started.elapsed() < EVENT_DEADLINE,
                "no {method} for {id}; saw {:#?}",
                self.snapshot()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// What a thread is on disk: its file, archived, compressed; `None` once it has no file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct State {
    path: PathBuf,
    archived: bool,
    zst: bool,
}

/// The state a thread's notifications fold to (`None`: removed or never announced).
fn folded(notes: &[Value], id: &str) -> Option<State> {
    let mut state = None;
    for n in notes.iter().filter(|n| n["params"]["threadId"] == id) {
        match n["method"].as_str().unwrap_or("") {
            "thread/removed" => state = None,
            m if m.starts_with("thread/") => {
                let r = &n["params"]["record"];
                state = Some(State {
                    path: PathBuf::from(r["canonicalPath"].as_str().unwrap_or("")),
                    archived: r["archived"] == true,
                    zst: r["compression"] == "zstd",
                });
            }
            _ => {}
        }
    }
    state
}

fn rollout(n: u32) -> Rollout {
    let day = 10 + n % 8;
    Rollout::new(
        &tid(n),
        &format!("2026-11-{day:02}T10:{:02}:{:02}.000Z", n / 60 % 60, n % 60),
        "/home/dev/churn",
        &format!("churn thread {n}"),
    )
    .base_len(300)
}

/// A xorshift generator: deterministic per seed, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One thread of the churn: what it is now, where it lives when active, what it must
/// have announced.
struct Thread {
    rollout: Rollout,
    state: Option<State>,
    day: PathBuf,
    expected: Vec<&'static str>,
    touched: Option<Instant>,
    /// Its notification count when its last op that must be announced was made: the next
    /// op waits until the count has moved past it.
    announced_past: Option<usize>,
    /// Its notification count just before the op being made (see `announced_past`).
    count_before: usize,
    /// Its id is carried by another thread's file now (replaced by rename): never
    /// recreated, so two threads never claim one path.
    retired: bool,
    /// What was done to it, for a failure's message.
    history: Vec<String>,
}

struct Churn {
    fx: Fixture,
    feed: Feed,
    threads: Vec<Thread>,
    ops: HashMap<&'static str, u32>,
    next_day: u32,
    tmp: u32,
}

impl Churn {
    fn active_path(&self, t: usize) -> PathBuf {
        self.threads[t]
            .day
            .join(self.threads[t].rollout.file_name())
    }

    /// True when thread `t` may be changed again: its last op is [`SPACING`] old and was
    /// announced. The watcher applies the state it finds, so two ops on one file that
    /// both land while it is busy (a loaded machine, a long rescan) are seen as one
    /// change: the test waits for the agent, as a condition, rather than guess its lag.
    /// An op whose notice never comes leaves its thread untouched from then on, and the
    /// final check reports it.
    fn idle(&self, t: usize, now: Instant) -> bool {
        let th = &self.threads[t];
        th.touched
            .is_none_or(|at| now.duration_since(at) >= SPACING)
            && th
                .announced_past
                .is_none_or(|n| self.feed.count(&th.rollout.id) > n)
    }

    fn touch(&mut self, t: usize, op: &'static str, expect: Option<&'static str>) {
        self.threads[t].announced_past = expect.map(|_| self.threads[t].count_before);
        let at = self.threads[t].state.as_ref().map(|s| s.path.clone());
        self.threads[t]
            .history
            .push(format!("{op} -> {at:?} expecting {expect:?}"));
        self.threads[t].touched = Some(Instant::now());
        self.threads[t].expected.extend(expect);
        *self.ops.entry(op).or_default() += 1;
    }

    /// Tries one random op on thread `t`; false when it does not apply to its state.
    fn step(&mut self, rng: &mut Rng, t: usize) -> bool {
        self.threads[t].count_before = self.feed.count(&self.threads[t].rollout.id);
        let state = self.threads[t].state.clone();
        match (rng.below(9), state) {
            (0, None) if !self.threads[t].retired => {
                let path = self.active_path(t);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(&path, self.threads[t].rollout.jsonl()).unwrap();
                self.set(t, path, false, false);
                self.touch(t, "create", Some("thread/materialized"));
            }
            (1, None) if !self.threads[t].retired => {
                // Write in two parts: half a first line, then the rest.
                let path = self.active_path(t);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                let bytes = self.threads[t].rollout.jsonl();
                let mut f = std::fs::File::create(&path).unwrap();
                f.write_all(&bytes[..bytes.len() / 4]).unwrap();
                f.flush().unwrap();
                // Pacing, not synchronisation: give the agent a chance to see the half.
                std::thread::sleep(Duration::from_millis(30));
                f.write_all(&bytes[bytes.len() / 4..]).unwrap();
                drop(f);
                self.set(t, path, false, false);
                self.touch(t, "writeInTwoParts", Some("thread/materialized"));
            }
            (2, Some(s)) if !s.zst => {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&s.path)
                    .unwrap();
                f.write_all(b"{\"timestamp\":\"2026-11-20T10:00:00.000Z\",\"type\":\"event_msg\",\"payload\":{\"type\":\"agent_message\",\"message\":\"more\"}}\n").unwrap();
                self.touch(t, "append", Some("thread/updated"));
            }
            (3, Some(s)) if !s.archived => {
                let name = s.path.file_name().unwrap().to_owned();
                let to = self.fx.home.join("archived_sessions").join(name);
                std::fs::rename(&s.path, &to).unwrap();
                self.set(t, to, true, s.zst);
                self.touch(t, "archive", Some("thread/archived"));
            }
            (4, Some(s)) if s.archived => {
                let to = self.threads[t].day.join(s.path.file_name().unwrap());
                std::fs::create_dir_all(to.parent().unwrap()).unwrap();
                std::fs::rename(&s.path, &to).unwrap();
                self.set(t, to, false, s.zst);
                self.touch(t, "unarchive", Some("thread/unarchived"));
            }
            (5, Some(s)) if !s.zst => {
                let mut to = s.path.clone().into_os_string();
                to.push(".zst");
                let to = PathBuf::from(to);
                std::fs::write(&to, zstd_bytes(&std::fs::read(&s.path).unwrap())).unwrap();
                std::fs::remove_file(&s.path).unwrap();
                self.set(t, to, s.archived, true);
                self.touch(t, "compress", Some("thread/compressed"));
            }
            (6, Some(s)) => {
                std::fs::remove_file(&s.path).unwrap();
                self.threads[t].state = None;
                self.touch(t, "delete", Some("thread/removed"));
            }
            (7, Some(s)) if !s.zst => {
                // Replace by rename: thread B's content written beside A's file, then
                // moved over it. A is gone, B appears at A's path.
                let Some(b) = (0..self.threads.len()).find(|&b| {
                    b != t && self.threads[b].state.is_none() && !self.threads[b].retired
                }) else {
                    return false;
                };
                if !self.idle(b, Instant::now()) {
                    return false;
                }
                self.threads[b].count_before = self.feed.count(&self.threads[b].rollout.id);
                self.tmp += 1;
                let tmp = s.path.with_file_name(format!(".tmp-{}", self.tmp));
                std::fs::write(&tmp, self.threads[b].rollout.jsonl()).unwrap();
                std::fs::rename(&tmp, &s.path).unwrap();
                self.threads[t].state = None;
                self.threads[t].retired = true;
                self.threads[b].retired = true;
                self.threads[b].state = Some(State {
                    path: s.path.clone(),
                    archived: s.archived,
                    zst: false,
                });
                self.threads[b].day = self.threads[t].day.clone();
                self.touch(t, "replaceByRename", Some("thread/removed"));
                self.touch(b, "replaceByRename", Some("thread/materialized"));
            }
            (8, Some(s)) if !s.archived => {
                // Move the whole day directory; every thread in it must be idle.
                let day = self.threads[t].day.clone();
                let now = Instant::now();
                let members: Vec<usize> = (0..self.threads.len())
                    .filter(|&k| self.threads[k].day == day)
                    .collect();
                if members.iter().any(|&k| !self.idle(k, now)) {
                    return false;
                }
                for &k in &members {
                    self.threads[k].count_before = self.feed.count(&self.threads[k].rollout.id);
                }
                self.next_day += 1;
                let to = day.with_file_name(format!("{:02}", self.next_day));
                std::fs::rename(&day, &to).unwrap();
                for k in members {
                    self.threads[k].day = to.clone();
                    let moved = self.threads[k]
                        .state
                        .clone()
                        .filter(|s| !s.archived)
                        .map(|s| to.join(s.path.file_name().unwrap()));
                    let expect = moved.is_some().then_some("thread/updated");
                    if let (Some(p), Some(st)) = (moved, self.threads[k].state.as_mut()) {
                        st.path = p;
                    }
                    self.touch(k, "moveDayDir", expect);
                }
            }
            _ => return false,
        }
        true
    }

    fn set(&mut self, t: usize, path: PathBuf, archived: bool, zst: bool) {
        self.threads[t].state = Some(State {
            path,
            archived,
            zst,
        });
    }
}

/// Random churn against a live agent while other clients query it and `rolloutd index`
/// runs now and then; each thread's notifications must replay its true history.
#[test]
fn seeded_churn() {
    let seed: u64 = env_or(
        "ROLLOUTD_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1,
    );
    // The size (about 24 s here); `ROLLOUTD_CHURN_OPS` shortens or lengthens it.
    let n_ops: usize = env_or("ROLLOUTD_CHURN_OPS", 2000);
    eprintln!("seeded_churn: ROLLOUTD_SEED={seed} ROLLOUTD_CHURN_OPS={n_ops}");
    let fx = Fixture::new();
    let mut agent = Agent::start(&fx);
    let feed = Feed::start(&agent);

    let threads: Vec<Thread> = (0..120)
        .map(|n| {
            let r = rollout(n);
            Thread {
                day: fx.home.join(r.day_dir()),
                rollout: r,
                state: None,
                expected: Vec::new(),
                touched: None,
                announced_past: None,
                count_before: 0,
                retired: false,
                history: Vec::new(),
            }
        })
        .collect();
    let ids: Vec<String> = threads.iter().map(|t| t.rollout.id.clone()).collect();
    let mut churn = Churn {
        fx,
        feed,
        threads,
        ops: HashMap::new(),
        next_day: 20,
        tmp: 0,
    };

    // Clients that race the watcher for every row: their read-repairs write too.
    let stop = Arc::new(AtomicBool::new(false));
    let paths: Arc<Mutex<Vec<PathBuf>>> = Arc::new(Mutex::new(Vec::new()));
    let hammers: Vec<_> = (0..2u64)
        .map(|k| {
            let (stop, paths, ids) = (Arc::clone(&stop), Arc::clone(&paths), ids.clone());
            let client_socket = agent.socket.clone();
            std::thread::spawn(move || {
                let mut client = rolloutd::client::Client::connect(&client_socket).unwrap();
                let mut rng = Rng(seed.wrapping_add(k + 1) | 1);
                let mut calls = 0u64;
                while !stop.load(Ordering::Acquire) && calls < 1_000_000 {
                    calls += 1;
                    let id = &ids[rng.below(ids.len())];
                    let _ = client.call("thread/resolve", json!({ "threadId": id }));
                    let path = {
                        let p = paths.lock().unwrap();
                        p.get(rng.below(p.len())).cloned()
                    };
                    if let Some(path) = path {
                        let _ = client.call("path/resolve", json!({ "path": path }));
                    }
                    if calls % 8 == 0 {
                        let _ =
                            client.call("thread/list", json!({ "archived": "all", "limit": 50 }));
                    }
                }
                calls
            })
        })
        .collect();

    let mut rng = Rng(seed);
    let started = Instant::now();
    let mut done = 0;
    let mut attempts = 0u64;
    while done < n_ops && started.elapsed() < Duration::from_secs(240) {
        attempts += 1;
        let t = rng.below(churn.threads.len());
        if !churn.idle(t, Instant::now()) {
            if attempts % 16 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
            continue;
        }
        if !churn.step(&mut rng, t) {
            continue;
        }
        done += 1;
        {
            let mut p = paths.lock().unwrap();
            *p = churn
                .threads
                .iter()
                .filter_map(|t| t.state.as_ref().map(|s| s.path.clone()))
                .collect();
        }
        if done % 250 == 0 {
            // Through the agent (it rescans), and as a guest that must write nothing.
            let r = churn.fx.run(&["index"]);
            assert_eq!(r.code, 0, "index through the agent: {}", r.stderr);
            let mut c = churn.fx.cmd();
            c.arg("--socket")
                .arg(churn.fx.root.join("no-agent.sock"))
                .args(["--json", "index"]);
            let out = c.output().unwrap();
            assert_eq!(
                out.status.code(),
                Some(2),
                "a direct index run on an index the agent owns must refuse to write: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    stop.store(true, Ordering::Release);
    let calls: u64 = hammers.into_iter().map(|h| h.join().unwrap()).sum();
    eprintln!(
        "seeded_churn: {done} ops in {:?} ({:?}); {calls} queries raced them",
        started.elapsed(),
        churn.ops
    );
    assert_eq!(done, n_ops, "the churn ran out of time");

    // The feed settles on the truth...
    let settled = Instant::now();
    loop {
        let notes = churn.feed.snapshot();
        let wrong: Vec<&str> = churn
            .threads
            .iter()
            .filter(|t| folded(&notes, &t.rollout.id) != t.state)
            .map(|t| t.rollout.id.as_str())
            .collect();
        if wrong.is_empty() {
            break;
        }
        if settled.elapsed() > EVENT_DEADLINE {
            let t = churn
                .threads
                .iter()
                .find(|t| t.rollout.id == wrong[0])
                .unwrap();
            panic!(
                "seed {seed}: {} threads' notifications do not fold to their state; first {}: \
                 folded {:?}, true {:?}; expected {:?}, got {:?}\nagent log:\n{}",
                wrong.len(),
                wrong[0],
                folded(&notes, wrong[0]),
                t.state,
                t.expected,
                churn.feed.methods_for(wrong[0]),
                agent.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...and every change was announced once, in order: no archive, unarchive,
    // compression, delete or materialization missed, none announced twice. (`updated` may
    // come more often than appends: a file read while being written is read again.)
    let notes = churn.feed.snapshot();
    let transitions = |methods: &[&str]| -> Vec<String> {
        methods
            .iter()
            .filter(|m| **m != "thread/updated")
            .map(|m| m.to_string())
            .collect()
    };
    for t in &churn.threads {
        let mine: Vec<String> = notes
            .iter()
            .filter(|n| n["params"]["threadId"] == t.rollout.id.as_str())
            .map(|n| {
                let r = &n["params"]["record"];
                format!(
                    "{} {} size={} prev={}",
                    n["method"], r["canonicalPath"], r["sizeBytes"], n["params"]["previousPath"]
                )
            })
            .collect();
        let got = churn.feed.methods_for(&t.rollout.id);
        let got: Vec<&str> = got.iter().map(String::as_str).collect();
        assert_eq!(
            transitions(&got),
            transitions(&t.expected),
            "seed {seed}: thread {}: {mine:#?}\nwhat was done: {:#?}\nagent log in {}",
            t.rollout.id,
            t.history,
            {
                let keep = std::env::temp_dir().join("rolloutd-churn-agent.log");
                let _ = std::fs::write(&keep, agent.log());
                keep.display().to_string()
            }
        );
    }
    agent.stop();
}

/// A started agent, its fixture and a subscriber, for the named cases.
fn live() -> (Fixture, Agent, Feed) {
    let fx = Fixture::new();
    let agent = Agent::start(&fx);
    let feed = Feed::start(&agent);
    (fx, agent, feed)
}

fn place(fx: &Fixture, n: u32) -> (String, PathBuf) {
    let r = rollout(n);
    let path = fx.write_active(&r);
    (r.id, path)
}

/// `rm A; rolloutd list; rm B`: the list's read-repair removes A's row first; A's removal
/// must still be announced.
#[test]
fn removal_repaired_by_a_list_is_announced() {
    let (fx, _agent, feed) = live();
    let (a, pa) = place(&fx, 1);
    let (b, pb) = place(&fx, 2);
    feed.wait_for("thread/materialized", &a);
    feed.wait_for("thread/materialized", &b);
    std::fs::remove_file(&pa).unwrap();
    let r = fx.run(&["list"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    std::fs::remove_file(&pb).unwrap();
    feed.wait_for("thread/removed", &a);
    feed.wait_for("thread/removed", &b);
    for id in [&a, &b] {
        assert_eq!(
            feed.methods_for(id),
            ["thread/materialized", "thread/removed"],
            "{id}"
        );
    }
}

/// A rollout resolved right after it is written: the resolve indexes it, and that is
/// announced as `thread/materialized` (not `updated`), which also wakes a pending wait.
#[test]
fn rollout_resolved_first_is_materialized() {
    let (fx, agent, feed) = live();
    let r = rollout(3);
    let mut waiter = Raw::connect(&agent.socket);
    waiter
        .send(
            request(
                1,
                "thread/wait",
                json!({ "threadId": r.id, "timeoutMs": 20000 }),
            )
            .as_bytes(),
        )
        .unwrap();
    fx.write_active(&r);
    let resolved = fx.resolve(&r.id);
    assert_eq!(resolved.code, 0, "{}", resolved.stderr);
    feed.wait_for("thread/materialized", &r.id);
    let answer: Value = serde_json::from_str(&waiter.line().unwrap()).unwrap();
    assert_eq!(answer["result"]["threadId"], r.id.as_str(), "{answer}");
    assert_eq!(feed.methods_for(&r.id), ["thread/materialized"]);
}

/// An archive (Codex's own is this rename) resolved at once: the resolve sees the move first,
/// and it is still one `thread/archived`.
#[test]
fn archive_resolved_first_is_archived() {
    let (fx, _agent, feed) = live();
    let (a, pa) = place(&fx, 4);
    feed.wait_for("thread/materialized", &a);
    let to = fx
        .home
        .join("archived_sessions")
        .join(pa.file_name().unwrap());
    std::fs::rename(&pa, &to).unwrap();
    let resolved = fx.resolve(&a);
    assert_eq!(resolved.code, 0, "{}", resolved.stderr);
    assert_eq!(resolved.json["archived"], true);
    feed.wait_for("thread/archived", &a);
    // Past the rename grace, nothing more comes for it.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        feed.methods_for(&a),
        ["thread/materialized", "thread/archived"]
    );
}

/// `rolloutd index` during churn: through the agent it is a rescan whose finds are
/// announced; every materialization arrives.
#[test]
fn index_runs_during_churn_miss_nothing() {
    let (fx, _agent, feed) = live();
    let mut ids = Vec::new();
    for n in 10..40 {
        let (id, _) = place(&fx, n);
        ids.push(id);
        if n % 5 == 0 {
            let r = fx.run(&["index"]);
            assert_eq!(r.code, 0, "{}", r.stderr);
        }
    }
    for id in &ids {
        feed.wait_for("thread/materialized", id);
    }
    for id in &ids {
        assert_eq!(feed.methods_for(id), ["thread/materialized"], "{id}");
    }
}

/// A file replaced by rename with another thread's content: the old thread is removed and
/// the new one materialized at that path.
#[test]
fn replaced_by_rename_is_removed_and_materialized() {
    let (fx, _agent, feed) = live();
    let (a, pa) = place(&fx, 5);
    feed.wait_for("thread/materialized", &a);
    let b = rollout(6);
    let tmp = pa.with_file_name(".tmp-replace");
    std::fs::write(&tmp, b.jsonl()).unwrap();
    std::fs::rename(&tmp, &pa).unwrap();
    feed.wait_for("thread/removed", &a);
    feed.wait_for("thread/materialized", &b.id);
    assert_eq!(
        feed.methods_for(&a),
        ["thread/materialized", "thread/removed"]
    );
    assert_eq!(feed.methods_for(&b.id), ["thread/materialized"]);
    let notes = feed.snapshot();
    assert_eq!(
        folded(&notes, &b.id).map(|s| s.path),
        Some(dunce::canonicalize(&pa).unwrap())
    );
}

/// A directory named like a rollout, made while the agent runs, is a problem at once.
#[test]
fn rollout_named_directory_is_a_problem_live() {
    let (fx, _agent, feed) = live();
    let dir = fx
        .home
        .join("sessions/2026/11/20/rollout-2026-11-20T10-00-00-01a1ff7d-0000-7000-8000-000000000000.jsonl");
    std::fs::create_dir_all(&dir).unwrap();
    let started = Instant::now();
    while !feed
        .snapshot()
        .iter()
        .any(|n| n["method"] == "problem/added" && n["params"]["reason"] == "directory")
    {
        assert!(
            started.elapsed() < EVENT_DEADLINE,
            "no problem/added; saw {:#?}",
            feed.snapshot()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let problems = fx.run(&["problems"]);
    assert!(
        problems.stdout.contains("directory"),
        "problems: {}",
        problems.stdout
    );
    std::fs::remove_dir(&dir).unwrap();
    let started = Instant::now();
    while !feed
        .snapshot()
        .iter()
        .any(|n| n["method"] == "problem/cleared")
    {
        assert!(started.elapsed() < EVENT_DEADLINE, "no problem/cleared");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A rollout-shaped name that is not UTF-8, made while the agent runs, is reported at once
/// (not only by the next crawl), and cleared when it goes.
#[test]
fn a_rollout_name_that_is_not_utf8_is_a_problem_live() {
    let (fx, _agent, feed) = live();
    not_utf8_name_is_reported_and_cleared(&fx, &feed, false, Duration::ZERO);
}

/// The same name in a directory made at that moment: found by the walk of the new directory,
/// and kept by the recheck that follows the walk.
#[test]
fn a_rollout_name_that_is_not_utf8_in_a_new_directory_is_kept() {
    let (fx, _agent, feed) = live();
    not_utf8_name_is_reported_and_cleared(&fx, &feed, true, Duration::from_millis(600));
}

/// The same in poll mode, where no event names the file: the poller lists it, and keeps
/// it over later polls (the lossy spelling the index holds is not taken for a file gone).
#[test]
fn a_rollout_name_that_is_not_utf8_is_a_problem_polled() {
    let fx = Fixture::new();
    let agent = Agent::start_with(&fx, &["--watch-mode", "poll", "--poll-interval", "100ms"]);
    let feed = Feed::start(&agent);
    not_utf8_name_is_reported_and_cleared(&fx, &feed, false, Duration::from_millis(600));
}

/// Writes a rollout under a non-UTF-8 name (next to an indexed one, or in a `fresh_dir`) and
/// waits for its `problem/added`; then, after `kept` (a window in which nothing may clear
/// it), removes it and waits for `problem/cleared`.
fn not_utf8_name_is_reported_and_cleared(
    fx: &Fixture,
    feed: &Feed,
    fresh_dir: bool,
    kept: Duration,
) {
    use std::os::unix::ffi::OsStrExt;
    let dir = if fresh_dir {
        let dir = fx.home.join("sessions/2026/11/25");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    } else {
        // A thread in the day directory first, so the name below is an event of its own
        // and not found by the walk of a new directory.
        let (a, pa) = place(fx, 1);
        feed.wait_for("thread/materialized", &a);
        pa.parent().unwrap().to_owned()
    };
    let path = dir.join(std::ffi::OsStr::from_bytes(
        b"rollout-2026-11-20T10-00-00-\xff\xfe.jsonl",
    ));
    std::fs::write(&path, rollout(3).jsonl()).unwrap();
    let notice = |method: &'static str| {
        move |n: &Value| n["method"] == method && n["params"]["reason"] == "invalidUtf8"
    };
    let started = Instant::now();
    while !feed.snapshot().iter().any(notice("problem/added")) {
        assert!(
            started.elapsed() < EVENT_DEADLINE,
            "no problem/added; saw {:#?}",
            feed.snapshot()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(kept);
    assert!(
        !feed.snapshot().iter().any(notice("problem/cleared")),
        "cleared while the file is there: {:#?}",
        feed.snapshot()
    );
    let problems = fx.run(&["problems"]);
    assert!(problems.stdout.contains("not UTF-8"), "{}", problems.stdout);
    std::fs::remove_file(&path).unwrap();
    let started = Instant::now();
    while !feed.snapshot().iter().any(notice("problem/cleared")) {
        assert!(started.elapsed() < EVENT_DEADLINE, "no problem/cleared");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A compressed rollout archived and unarchived: one notice each, like a plain one.
#[test]
fn compressed_rollout_archived_and_back() {
    let (fx, _agent, feed) = live();
    let (a, pa) = place(&fx, 7);
    feed.wait_for("thread/materialized", &a);
    let mut zst = pa.clone().into_os_string();
    zst.push(".zst");
    let zst = PathBuf::from(zst);
    std::fs::write(&zst, zstd_bytes(&std::fs::read(&pa).unwrap())).unwrap();
    std::fs::remove_file(&pa).unwrap();
    feed.wait_for("thread/compressed", &a);
    let archived = fx
        .home
        .join("archived_sessions")
        .join(zst.file_name().unwrap());
    std::fs::rename(&zst, &archived).unwrap();
    feed.wait_for("thread/archived", &a);
    std::fs::rename(&archived, &zst).unwrap();
    feed.wait_for("thread/unarchived", &a);
    assert_eq!(
        feed.methods_for(&a),
        [
            "thread/materialized",
            "thread/compressed",
            "thread/archived",
            "thread/unarchived"
        ]
    );
}

/// Compressions while a client resolves the same threads: each is one `thread/compressed`.
#[test]
fn compressions_raced_by_resolves_are_compressed() {
    let (fx, agent, feed) = live();
    let rollouts: Vec<(String, PathBuf)> = (100..130).map(|n| place(&fx, n)).collect();
    for (id, _) in &rollouts {
        feed.wait_for("thread/materialized", id);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let (stop, socket) = (Arc::clone(&stop), agent.socket.clone());
        let ids: Vec<String> = rollouts.iter().map(|(id, _)| id.clone()).collect();
        std::thread::spawn(move || {
            let mut c = rolloutd::client::Client::connect(&socket).unwrap();
            let mut k = 0usize;
            while !stop.load(Ordering::Acquire) && k < 1_000_000 {
                let _ = c.call("thread/resolve", json!({ "threadId": ids[k % ids.len()] }));
                k += 1;
            }
        })
    };
    for (_, path) in &rollouts {
        let mut zst = path.clone().into_os_string();
        zst.push(".zst");
        fx.place(
            &zstd_bytes(&std::fs::read(path).unwrap()),
            &PathBuf::from(zst),
        );
        std::fs::remove_file(path).unwrap();
    }
    for (id, _) in &rollouts {
        feed.wait_for("thread/compressed", id);
    }
    stop.store(true, Ordering::Release);
    hammer.join().unwrap();
    for (id, _) in &rollouts {
        let got = feed.methods_for(id);
        assert!(
            !got.iter().any(|m| m == "thread/removed"),
            "{id}: {got:?}\n{}",
            agent.log()
        );
    }
}

/// A rollout deleted, then written again at the same path once its removal was announced:
/// removed, then materialized. (Inside one settle window a delete and rewrite look like a
/// rename over the file, which is an update: see `index::thread_changes`.)
#[test]
fn deleted_then_written_again_is_removed_and_materialized() {
    let (fx, _agent, feed) = live();
    let (a, pa) = place(&fx, 8);
    feed.wait_for("thread/materialized", &a);
    let bytes = std::fs::read(&pa).unwrap();
    std::fs::remove_file(&pa).unwrap();
    feed.wait_for("thread/removed", &a);
    std::fs::write(&pa, &bytes).unwrap();
    let started = Instant::now();
    while feed.methods_for(&a).len() < 3 {
        assert!(
            started.elapsed() < EVENT_DEADLINE,
            "{:?}",
            feed.methods_for(&a)
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        feed.methods_for(&a),
        [
            "thread/materialized",
            "thread/removed",
            "thread/materialized"
        ]
    );
}

/// A day directory moved while a client resolves its threads: the resolve sees the old
/// path gone first, and each thread is one `thread/updated` at its new path, never removed.
#[test]
fn day_directory_moved_while_resolved_is_updated() {
    let (fx, agent, feed) = live();
    // Threads 200, 208, 216… share a day directory.
    let placed: Vec<(String, PathBuf)> = (0..6).map(|k| place(&fx, 200 + 8 * k)).collect();
    let day = placed[0].1.parent().unwrap().to_owned();
    assert!(placed.iter().all(|(_, p)| p.parent() == Some(&day)));
    for (id, _) in &placed {
        feed.wait_for("thread/materialized", id);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let hammer = {
        let (stop, socket) = (Arc::clone(&stop), agent.socket.clone());
        let ids: Vec<String> = placed.iter().map(|(id, _)| id.clone()).collect();
        std::thread::spawn(move || {
            let mut c = rolloutd::client::Client::connect(&socket).unwrap();
            let mut k = 0usize;
            while !stop.load(Ordering::Acquire) && k < 1_000_000 {
                let _ = c.call("thread/resolve", json!({ "threadId": ids[k % ids.len()] }));
                k += 1;
            }
        })
    };
    let to = day.with_file_name("29");
    std::fs::rename(&day, &to).unwrap();
    for (id, _) in &placed {
        feed.wait_for("thread/updated", id);
    }
    stop.store(true, Ordering::Release);
    hammer.join().unwrap();
    let notes = feed.snapshot();
    for (id, p) in &placed {
        assert_eq!(
            feed.methods_for(id),
            ["thread/materialized", "thread/updated"],
            "{id}"
        );
        assert_eq!(
            folded(&notes, id).map(|s| s.path),
            Some(to.join(p.file_name().unwrap()))
        );
    }
}

/// An archive into an `archived_sessions/` made in the same moment (Codex makes it on first
/// use): one `thread/archived`, nothing removed.
#[test]
fn archive_into_a_directory_made_at_once_is_archived() {
    let fx = Fixture::new();
    std::fs::remove_dir(fx.home.join("archived_sessions")).unwrap();
    let agent = Agent::start(&fx);
    let feed = Feed::start(&agent);
    let (a, pa) = place(&fx, 9);
    feed.wait_for("thread/materialized", &a);
    let dir = fx.home.join("archived_sessions");
    std::fs::create_dir(&dir).unwrap();
    let to = dir.join(pa.file_name().unwrap());
    std::fs::rename(&pa, &to).unwrap();
    feed.wait_for("thread/archived", &a);
    assert_eq!(
        feed.methods_for(&a),
        ["thread/materialized", "thread/archived"]
    );
    assert_eq!(folded(&feed.snapshot(), &a).map(|s| s.path), Some(to));
}

/// Directories that existed before the start are watched by the first reconcile's walk
/// (not by a walk of their own): a rollout written in any of them afterwards, at every
/// depth and in a directory the walk found empty, is announced.
#[test]
fn rollouts_in_directories_that_existed_at_the_start_are_announced() {
    let fx = Fixture::new();
    let (_, before) = place(&fx, 40);
    let cases = [
        ("sessions/2031/08/01", 41),
        ("sessions/2031/08/02/deeper", 42),
        ("archived_sessions/by-hand/2031", 43),
    ];
    for (rel, _) in cases {
        std::fs::create_dir_all(fx.home.join(rel)).unwrap();
    }
    let agent = Agent::start(&fx);
    let feed = Feed::start(&agent);
    let day = before.parent().unwrap().to_owned();
    let r = rollout(44);
    std::fs::write(day.join(r.file_name()), r.jsonl()).unwrap();
    feed.wait_for("thread/materialized", &r.id);
    for (rel, n) in cases {
        let r = rollout(n);
        std::fs::write(fx.home.join(rel).join(r.file_name()), r.jsonl()).unwrap();
        feed.wait_for("thread/materialized", &r.id);
        assert_eq!(feed.methods_for(&r.id), ["thread/materialized"], "{rel}");
    }
}

/// Directories made while the agent runs are watched themselves: a rollout written into a
/// new year/month/day tree well after the tree settled (so no walk of the new directory
/// finds it) is announced, at every depth, in `sessions/` and in a new archive subdirectory.
#[test]
fn rollouts_in_directories_made_after_the_start_are_announced() {
    let (fx, _agent, feed) = live();
    let (warm, _) = place(&fx, 30);
    feed.wait_for("thread/materialized", &warm);
    let cases = [
        ("sessions/2031/07/09", 31),
        ("sessions/2031/07/10", 32),
        ("archived_sessions/by-hand/2031", 33),
    ];
    for (rel, n) in cases {
        let dir = fx.home.join(rel);
        std::fs::create_dir_all(&dir).unwrap();
        // Longer than the settle window: the walk of the new directories has run.
        std::thread::sleep(Duration::from_millis(400));
        let r = rollout(n);
        std::fs::write(dir.join(r.file_name()), r.jsonl()).unwrap();
        feed.wait_for("thread/materialized", &r.id);
        assert_eq!(feed.methods_for(&r.id), ["thread/materialized"], "{rel}");
    }
}
