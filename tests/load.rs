//! Load: 64 clients send requests concurrently while the home churns (creates, appends,
//! archives, deletes, compressions at ~500 operations a second). Every answer about the
//! stable part of the home must equal the oracle (a fresh crawl through the library); there
//! must be no error; after the churn stops the index must equal a fresh crawl. p50/p99 are
//! printed.
//!
//! CI sends 300 requests per client; `ROLLOUTD_LOAD_REQUESTS=10000` is the full run
//! (640,000 requests; see RELIABILITY.md).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::agent::Agent;
use common::rel::{self, Churn, Latencies, Rng};
use common::{tid, Fixture, Rollout};
use rolloutd::index::Index;
use serde_json::json;

const CLIENTS: u64 = 64;
const STABLE: u32 = 500;

#[test]
fn sixty_four_clients_while_the_home_churns() {
    let seed = rel::seed("load");
    let per_client = rel::knob("LOAD_REQUESTS", 300);
    let fx = Fixture::new();
    for n in 0..STABLE {
        fx.write_active(
            &Rollout::new(&tid(n), "2025-12-01T10:00:00.000Z", "/stable", "stable").base_len(500),
        );
    }
    let (oracle, _) = rel::oracle(&fx, "load");
    let expected: HashMap<String, PathBuf> =
        oracle.iter().map(|r| (r.1.clone(), r.0.clone())).collect();
    assert_eq!(expected.len(), STABLE as usize);
    let agent = Agent::start(&fx);
    let churn = Churn::start(&fx.home, &fx.root.join("staging"), 10_000, 500, seed);
    let started = Instant::now();
    let results: Vec<(Latencies, u64, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (agent, expected) = (&agent, &expected);
                s.spawn(move || {
                    let mut rng = Rng::new(seed ^ (c + 1));
                    let mut client = agent.client();
                    let mut lat = Latencies::default();
                    let mut wrong = Vec::new();
                    let mut errors = 0;
                    for _ in 0..per_client {
                        let n = rng.below(u64::from(STABLE)) as u32;
                        let (thread, path) = (tid(n), &expected[&tid(n)]);
                        let t = Instant::now();
                        let (answer, field, want) = match rng.below(3) {
                            0 => (
                                client.call("thread/resolve", json!({ "threadId": thread })),
                                "canonicalPath",
                                json!(path),
                            ),
                            1 => (
                                client.call("path/resolve", json!({ "path": path })),
                                "threadId",
                                json!(thread),
                            ),
                            _ => (
                                client.call(
                                    "thread/checkResume",
                                    json!({ "threadId": thread, "path": path }),
                                ),
                                "ok",
                                json!(true),
                            ),
                        };
                        lat.0.push(t.elapsed());
                        match answer {
                            Ok(v) if v[field] == want => {}
                            Ok(v) => {
                                wrong.push(format!("{thread}: {field} = {} not {want}", v[field]))
                            }
                            Err(e) => {
                                errors += 1;
                                wrong.push(format!("{thread}: error {e}"));
                            }
                        }
                    }
                    (lat, errors, wrong)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = started.elapsed();
    let ops = churn.finish().ops;
    let mut all = Latencies::default();
    let (mut errors, mut wrong) = (0, Vec::new());
    for (lat, e, w) in results {
        all.0.extend(lat.0);
        errors += e;
        wrong.extend(w);
    }
    let total = all.0.len();
    eprintln!(
        "load: {CLIENTS} clients x {per_client} = {total} requests in {elapsed:?} ({:.0}/s) with {ops} churn ops; \
         {errors} errors, {} wrong; latency {}",
        total as f64 / elapsed.as_secs_f64(),
        wrong.len(),
        all.summary()
    );
    assert!(wrong.is_empty(), "{:?}", &wrong[..wrong.len().min(10)]);
    // The churned part too: once quiet, the index equals a fresh crawl.
    let (oracle, oracle_problems) = rel::oracle(&fx, "load-after");
    let settle = Instant::now();
    let mut last = Vec::new();
    while settle.elapsed() < Duration::from_secs(15) {
        let reader = Index::open_reader(&fx.index).unwrap();
        last = rel::diff(&rel::rows_of(&reader), &oracle);
        last.extend(rel::diff(&rel::problems_of(&reader), &oracle_problems));
        if last.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        last.is_empty(),
        "after the churn the index differs from a fresh crawl:\n{}\nlog:\n{}",
        last.join("\n"),
        agent.log()
    );
    assert!(elapsed < Duration::from_secs(600));
}
