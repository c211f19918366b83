//! Hostile requests against a live agent: thousands of random and mutated request lines,
//! invalid UTF-8, a last line with no newline, a 1 GiB line, 10,000 pipelined requests,
//! and clients that never read their responses. The agent must answer every request with
//! a valid JSON-RPC response carrying the right id, stay up, keep its memory bounded, and
//! keep answering other clients.
//!
//! `ROLLOUTD_FUZZ_REQUESTS` sets the number of random requests (default 12,000). Seeded:
//! `ROLLOUTD_SEED` replays a run.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::agent::{request, Agent, Raw};
use common::rel::{self, Latencies, Rng};
use common::{tid, Fixture, Rollout};
use rolloutd::server::frame;
use serde_json::{json, Value};

fn world(n: u32) -> (Fixture, Agent) {
    let fx = Fixture::new();
    for i in 0..n {
        fx.write_active(&rel::churn_rollout(i));
    }
    let agent = Agent::start(&fx);
    (fx, agent)
}

/// A request line (no newline): a valid template, often mutated.
fn random_line(rng: &mut Rng, id: u64, fx: &Fixture) -> Vec<u8> {
    let home = fx.home.display().to_string();
    let thread = tid(rng.below(40) as u32);
    let params = [
        json!({"threadId": thread}),
        json!({"threadId": &thread[..8 + rng.below(10) as usize]}),
        json!({"threadId": 12}),
        json!({"path": format!("{home}/sessions/../sessions/2026/01/02/x.jsonl")}),
        json!({"path": "/etc/shadow"}),
        json!({"path": "../../../../etc/passwd"}),
        json!({"a": home, "b": format!("{home}/.")}),
        json!({"limit": rng.below(100), "archived": "all", "search": "%_\\"}),
        json!({"limit": -1}),
        json!({"threadId": thread, "path": home}),
        json!({"threadId": thread, "timeoutMs": rng.below(5)}),
        json!({"threadIds": [thread]}),
        json!({"apply": false}),
        json!({"unknown": true}),
        json!([1, 2]),
        json!(null),
        json!("x"),
    ];
    let methods = [
        "thread/resolve",
        "thread/checkResume",
        "thread/list",
        "thread/wait",
        "path/resolve",
        "path/same",
        "index/status",
        "index/problems",
        "codex/audit",
        "codex/repair",
        "subscribe",
        "unsubscribe",
        "nope/nope",
        "",
    ];
    let method = methods[rng.below(methods.len() as u64) as usize];
    let p = params[rng.below(params.len() as u64) as usize].clone();
    let id = match rng.below(6) {
        0 => json!(format!("s{id}")),
        1 => json!(id as f64 + 0.5),
        _ => json!(id),
    };
    let mut v = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": p});
    match rng.below(12) {
        0 => {
            v.as_object_mut().unwrap().remove("id"); // a notification
        }
        1 => v["jsonrpc"] = json!("1.0"),
        2 => v["id"] = json!({"nested": [id]}),
        3 => v["method"] = json!(7),
        _ => {}
    }
    let mut line = serde_json::to_vec(&v).unwrap();
    // Byte-level mutations on a third of the lines.
    if rng.below(3) == 0 {
        for _ in 0..1 + rng.below(4) {
            let i = rng.below(line.len() as u64) as usize;
            match rng.below(4) {
                0 => line[i] = rng.next() as u8,
                1 => {
                    line.truncate(i.max(1));
                }
                2 => line.insert(i, b"{[\"\\\xff\xc3"[rng.below(6) as usize]),
                _ => {
                    let dup = line[i..].to_vec();
                    line.extend_from_slice(&dup[..dup.len().min(64)]);
                }
            }
        }
    }
    for b in &mut line {
        if *b == b'\n' {
            *b = b' ';
        }
    }
    line
}

/// The id a response must carry, or `None` when none may come (a notification, a blank
/// line).
fn expected_id(line: &[u8]) -> Option<Value> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    match frame::parse(line) {
        Ok(r) => r.id,
        Err(bad) => Some(bad.id),
    }
}

fn check_response(line: &str) -> Value {
    let v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
    assert_eq!(v["jsonrpc"], "2.0", "{line}");
    assert!(
        v.get("result").is_some() != v.get("error").is_some(),
        "neither or both of result and error: {line}"
    );
    if let Some(e) = v.get("error") {
        assert!(e["code"].is_i64() && e["message"].is_string(), "{line}");
    }
    v["id"].clone()
}

#[test]
fn random_and_mutated_requests_get_valid_answers_with_their_ids() {
    let seed = rel::seed("random requests");
    let total = rel::knob("FUZZ_REQUESTS", 12_000);
    let (fx, agent) = world(40);
    let rss_before = rel::rss_kb(agent.pid());
    let connections = 4;
    let started = Instant::now();
    let mut rss_max = rss_before;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..connections)
            .map(|c| {
                let (fx, socket) = (&fx, agent.socket.clone());
                s.spawn(move || {
                    let mut rng = Rng::new(seed ^ (c + 1));
                    let per = total / connections;
                    let lines: Vec<Vec<u8>> = (0..per)
                        .map(|i| random_line(&mut rng, c * 1_000_000 + i, fx))
                        .collect();
                    let mut want: HashMap<String, usize> = HashMap::new();
                    for l in &lines {
                        if let Some(id) = expected_id(l) {
                            *want.entry(id.to_string()).or_default() += 1;
                        }
                    }
                    let expected: usize = want.values().sum();
                    let stream = UnixStream::connect(&socket).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(60)))
                        .unwrap();
                    let mut writer = stream.try_clone().unwrap();
                    let sender = std::thread::spawn(move || {
                        for l in lines {
                            writer.write_all(&l).unwrap();
                            writer.write_all(b"\n").unwrap();
                        }
                    });
                    let mut reader = BufReader::new(stream);
                    let mut got = 0;
                    let mut line = String::new();
                    while got < expected {
                        line.clear();
                        let n = reader.read_line(&mut line).unwrap_or_else(|e| {
                            panic!("connection {c}: after {got}/{expected} responses: {e}")
                        });
                        assert!(n > 0, "connection {c} closed after {got}/{expected}");
                        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
                        if v.get("method").is_some() {
                            continue; // a notification after a mutated `subscribe`
                        }
                        let id = check_response(&line).to_string();
                        match want.get_mut(&id) {
                            Some(n) if *n > 0 => *n -= 1,
                            _ => panic!("connection {c}: unexpected id {id} in {line}"),
                        }
                        got += 1;
                    }
                    sender.join().unwrap();
                    expected
                })
            })
            .collect();
        // Sample the agent's memory meanwhile.
        while handles.iter().any(|h| !h.is_finished()) {
            rss_max = rss_max.max(rel::rss_kb(agent.pid()));
            std::thread::sleep(Duration::from_millis(20));
            assert!(started.elapsed() < Duration::from_secs(300), "too slow");
        }
        let answered: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
        eprintln!(
            "random requests: {total} sent on {connections} connections, {answered} answered, \
             all valid JSON-RPC with the right id, in {:?}; agent RSS {rss_before} kB -> max {rss_max} kB",
            started.elapsed()
        );
    });
    assert!(agent.status()["ready"] == true, "the agent is still up");
    assert!(
        rss_max < rss_before + 64 * 1024,
        "RSS grew from {rss_before} kB to {rss_max} kB"
    );
}

#[test]
fn framing_edge_cases_are_answered_and_nothing_is_buffered() {
    let (_fx, agent) = world(5);
    let ok = request(1, "index/status", json!({}));

    // Invalid UTF-8: a parse error with a null id; the connection stays usable.
    let mut raw = Raw::connect(&agent.socket);
    raw.send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\"}\n")
        .unwrap();
    let v: Value = serde_json::from_str(&raw.line().unwrap()).unwrap();
    assert_eq!(
        (v["id"].clone(), v["error"]["code"].clone()),
        (Value::Null, json!(frame::PARSE_ERROR))
    );
    raw.send(ok.as_bytes()).unwrap();
    assert!(raw.line().unwrap().contains("\"ready\":true"));

    // A last line without a newline, then EOF: answered, then closed.
    let mut raw = Raw::connect(&agent.socket);
    raw.send(ok.trim_end().as_bytes()).unwrap();
    raw.writer.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(raw.line().unwrap().contains("\"ready\":true"));
    assert_eq!(raw.line().unwrap(), "", "closed after the answer");

    // A 1 GiB line, streamed: refused after the 1 MiB bound without being buffered.
    let rss_before = rel::rss_kb(agent.pid());
    let mut raw = Raw::connect(&agent.socket);
    raw.writer
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent: u64 = 0;
    let mut rss_max = rss_before;
    while sent < 1 << 30 {
        if raw.writer.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len() as u64;
        rss_max = rss_max.max(rel::rss_kb(agent.pid()));
    }
    let v: Value = serde_json::from_str(&raw.line().unwrap()).unwrap();
    assert_eq!(v["error"]["code"], frame::INVALID_REQUEST, "{v}");
    eprintln!(
        "1 GiB line: the agent closed after {} MiB were written; RSS {rss_before} kB -> max {rss_max} kB",
        sent >> 20
    );
    assert!(sent < 1 << 30, "the agent read the whole GiB");
    assert!(rss_max < rss_before + 16 * 1024, "RSS grew to {rss_max} kB");

    // 10,000 pipelined requests on one connection, all answered with their ids.
    let stream = UnixStream::connect(&agent.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        let mut all = Vec::new();
        for i in 0..10_000u64 {
            all.extend_from_slice(
                request(
                    i,
                    "thread/resolve",
                    json!({"threadId": tid((i % 5) as u32)}),
                )
                .as_bytes(),
            );
        }
        writer.write_all(&all).unwrap();
    });
    let mut seen = vec![false; 10_000];
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    for _ in 0..10_000 {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let id = check_response(&line).as_u64().unwrap() as usize;
        assert!(!seen[id], "id {id} answered twice");
        seen[id] = true;
        assert!(line.contains("\"result\""), "{line}");
    }
    sender.join().unwrap();
    eprintln!(
        "10,000 pipelined resolves answered in {:?}",
        started.elapsed()
    );
    assert!(agent.status()["ready"] == true);
}

/// Files created while the subscriber does not read: more notices than its queue holds.
const BURST: u32 = 8000;

#[test]
fn a_client_that_never_reads_does_not_stall_the_others() {
    let (fx, agent) = world(5);
    // A: floods requests and never reads a byte.
    let hog = UnixStream::connect(&agent.socket).unwrap();
    hog.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut hog_writer = hog.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        let line = request(1, "index/status", json!({}));
        let mut sent = 0u64;
        let mut blocked = false;
        let started = Instant::now();
        // Until the agent stops reading us (backpressure), bounded in time.
        while started.elapsed() < Duration::from_secs(5) {
            match hog_writer.write_all(line.as_bytes()) {
                Ok(()) => sent += 1,
                Err(_) => {
                    blocked = true;
                    break;
                }
            }
        }
        (sent, blocked)
    });
    // C: subscribes, then never reads while thousands of notifications are produced.
    let mut lazy = Raw::connect(&agent.socket);
    lazy.send(request(1, "subscribe", json!({})).as_bytes())
        .unwrap();
    let (sent, blocked) = flood.join().unwrap();
    assert!(
        blocked,
        "the agent kept reading a client that never reads ({sent} requests)"
    );
    // B: keeps being answered while A and C are stuck and the home changes.
    let mut b = agent.client();
    let mut lat = Latencies::default();
    let writer = std::thread::spawn({
        let home = fx.home.clone();
        move || {
            for n in 100..BURST + 100 {
                let r = Rollout::new(&tid(n), "2026-03-04T10:00:00.000Z", "/w", "p").base_len(100);
                let p = home.join(r.day_dir()).join(r.file_name());
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, r.jsonl()).unwrap();
            }
        }
    });
    for i in 0..2000u32 {
        let t = Instant::now();
        let r = b
            .call("thread/resolve", json!({"threadId": tid(i % 5)}))
            .expect("B is answered");
        lat.0.push(t.elapsed());
        assert_eq!(r["threadId"], tid(i % 5));
    }
    writer.join().unwrap();
    eprintln!(
        "non-reading clients: A sent {sent} requests before backpressure stopped it; B: {}",
        lat.summary()
    );
    // C reads at last: its queue overflowed, so it is told it lagged (or, when the burst
    // became a rescan, gets index/rescanned); either way it is told to re-read.
    let started = Instant::now();
    let mut told = None;
    let mut methods: HashMap<String, usize> = HashMap::new();
    while told.is_none() && started.elapsed() < Duration::from_secs(30) {
        let line = match lazy.line() {
            Ok(l) => l,
            // Nothing more: every notice fit in the queues after all.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("C: {e} after {methods:?}"),
        };
        assert!(!line.is_empty(), "C's connection closed");
        let v: Value = serde_json::from_str(&line).unwrap();
        *methods
            .entry(v["method"].as_str().unwrap_or("response").to_owned())
            .or_default() += 1;
        if line.contains("index/lagged") || line.contains("index/rescanned") {
            told = Some(line);
        }
    }
    eprintln!("lazy subscriber was told: {told:?} after {methods:?}");
    assert!(
        told.is_some(),
        "the non-reading subscriber never learned it missed notices"
    );
    drop(hog);
    assert!(agent.status()["ready"] == true);
}

/// Every in-flight slot is taken by a `thread/wait`, one more request waits for a slot, and
/// notifications fill the connection's outgoing queue: the waits' answers must still come
/// (they are queued behind the notifications, which the connection has to keep writing
/// while it waits for a slot, or nothing would ever move again).
#[test]
fn waits_filling_every_slot_are_answered_while_notifications_fill_the_queue() {
    const SLOTS: u32 = 64;
    const NOTICES: u32 = 400;
    let (fx, agent) = world(0);
    let waited = |k: u32| tid(10_000 + k);
    let mut c = Raw::connect(&agent.socket);
    c.send(request(0, "subscribe", json!({})).as_bytes())
        .unwrap();
    assert!(c.line().unwrap().contains("\"subscribed\":true"));
    // One more wait than there are slots: the last waits for a slot.
    let mut pipelined = String::new();
    for k in 1..=SLOTS + 1 {
        pipelined.push_str(&request(
            k.into(),
            "thread/wait",
            json!({"threadId": waited(k), "timeoutMs": 120_000}),
        ));
    }
    c.send(pipelined.as_bytes()).unwrap();
    // Notifications of other threads, more than the queue holds, all published.
    for n in 0..NOTICES {
        fx.write_active(
            &Rollout::new(&tid(20_000 + n), "2026-03-04T10:00:00.000Z", "/w", "p").base_len(100),
        );
    }
    let last = tid(20_000 + NOTICES - 1);
    common::agent::eventually("the notifying rollouts are indexed", || {
        agent.call("thread/resolve", json!({"threadId": last})).ok()
    });
    std::thread::sleep(Duration::from_millis(200));
    for k in 1..=SLOTS + 1 {
        fx.write_active(
            &Rollout::new(&waited(k), "2026-03-05T10:00:00.000Z", "/w", "w").base_len(100),
        );
    }
    let mut answered = std::collections::BTreeSet::new();
    let mut notices = 0u32;
    let started = Instant::now();
    while answered.len() < (SLOTS + 1) as usize && started.elapsed() < Duration::from_secs(60) {
        let line = match c.line() {
            Ok(l) => l,
            Err(e) => panic!(
                "{e}: {} of {} waits answered, {notices} notices",
                answered.len(),
                SLOTS + 1
            ),
        };
        assert!(!line.is_empty(), "the connection closed");
        let v: Value = serde_json::from_str(&line).unwrap();
        match v["id"].as_u64() {
            Some(k) => {
                assert_eq!(v["result"]["threadId"], waited(k as u32), "{line}");
                answered.insert(k);
            }
            None => notices += 1,
        }
    }
    assert_eq!(answered.len(), (SLOTS + 1) as usize, "{notices} notices");
    assert!(notices >= 256, "the queue never filled: {notices} notices");
}
