//! Crash consistency: the agent is SIGKILLed at random moments, during its first crawl and
//! while the home churns at about 500 operations a second; after each kill it is restarted
//! and, once ready, its index must equal a fresh crawl of the home (the oracle) row for row.
//! And an index file truncated, zeroed or replaced by garbage while the agent is stopped is
//! moved aside, rebuilt and answers correctly, with the reason in the log.
//!
//! Seeded: the seed is printed; `ROLLOUTD_SEED=<n>` replays a run. `ROLLOUTD_CRASH_ITERATIONS`
//! sets the number of kills (default 24).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::agent::Agent;
use common::rel::{self, Churn, Rng};
use common::Fixture;
use rolloutd::index::Index;
use serde_json::json;

/// Files in the home before the first start: enough that the first crawl takes a while.
const CORPUS: u32 = 3000;
/// Churn rate, operations per second.
const RATE: u32 = 500;
/// Whole-test bound.
const BUDGET: Duration = Duration::from_secs(300);

fn corpus(fx: &Fixture, n: u32) {
    for i in 0..n {
        let r = rel::churn_rollout(i);
        let path = fx.home.join(r.day_dir()).join(r.file_name());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, r.jsonl()).unwrap();
    }
}

fn remove_index(index: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", index.display()));
    }
}

/// Compares the running agent's index with the oracle, and spot-checks answers; returns
/// the number of mismatching rows.
fn compare(fx: &Fixture, agent: &Agent, rng: &mut Rng, label: &str) -> usize {
    let (oracle_rows, oracle_problems) = rel::oracle(fx, "crash");
    let reader = Index::open_reader(&fx.index).unwrap();
    let rows = rel::rows_of(&reader);
    let problems = rel::problems_of(&reader);
    let mut bad = rel::diff(&rows, &oracle_rows);
    bad.extend(rel::diff(&problems, &oracle_problems));
    // Answers: a sample of threads resolves to the oracle's file.
    let mut client = agent.client();
    for _ in 0..20.min(oracle_rows.len()) {
        let row = &oracle_rows[rng.below(oracle_rows.len() as u64) as usize];
        match client.call("thread/resolve", json!({"threadId": row.1})) {
            Ok(r) if r["canonicalPath"] == json!(row.0) => {}
            other => bad.push(format!(
                "resolve {} gave {other:?}, want {:?}",
                row.1, row.0
            )),
        }
    }
    if !bad.is_empty() {
        eprintln!("{label}: {} mismatches:\n{}", bad.len(), bad.join("\n"));
    }
    bad.len()
}

#[test]
fn sigkill_during_first_crawl_and_churn_loses_nothing() {
    let seed = rel::seed("sigkill");
    let mut rng = Rng::new(seed);
    let iterations = rel::knob("CRASH_ITERATIONS", 24);
    let fx = Fixture::new();
    corpus(&fx, CORPUS);
    let started = Instant::now();
    let (mut mismatches, mut churn_ops, mut during_crawl, mut done) = (0, 0, 0, 0);
    // Thread numbers stay below 65,536 so `tid` keeps the UUID shape.
    let mut next = CORPUS + 1000;
    let mut ready_after_kill = rel::Latencies::default();
    for i in 0..iterations {
        assert!(
            started.elapsed() < BUDGET,
            "only {done} iterations within {BUDGET:?}"
        );
        let first_crawl = i % 2 == 0;
        let log_before = std::fs::read_to_string(fx.root.join("agent.log"))
            .unwrap_or_default()
            .len();
        let (mut agent, churn) = if first_crawl {
            remove_index(&fx.index);
            (Agent::spawn(&fx, &[]), None)
        } else {
            let agent = Agent::start(&fx);
            let churn = Churn::start(&fx.home, &fx.root.join("staging"), next, RATE, rng.next());
            next += 1000;
            (agent, Some(churn))
        };
        let delay = if first_crawl {
            rng.below(1500)
        } else {
            50 + rng.below(1000)
        };
        // Not synchronisation: the kill lands at a random moment, which is the test.
        std::thread::sleep(Duration::from_millis(delay));
        agent.signal(libc::SIGKILL);
        agent
            .wait_exit(Duration::from_secs(10))
            .expect("the agent survived SIGKILL");
        if let Some(c) = churn {
            churn_ops += c.finish().ops;
        }
        let log = agent.log();
        if first_crawl && !log[log_before.min(log.len())..].contains("first reconcile done") {
            during_crawl += 1;
        }
        drop(agent);
        let restart = Instant::now();
        let mut agent = Agent::start(&fx);
        ready_after_kill.0.push(restart.elapsed());
        mismatches += compare(
            &fx,
            &agent,
            &mut rng,
            &format!("iteration {i} (first crawl: {first_crawl}, kill after {delay} ms)"),
        );
        agent.stop();
        done += 1;
    }
    let files = rel::rows_of(&Index::open_reader(&fx.index).unwrap()).len();
    eprintln!(
        "sigkill: {done} kills ({during_crawl} during a first crawl, {} during churn; {churn_ops} churn ops), \
         {files} files at the end, {mismatches} mismatches, restart to ready {}, {:?} in all",
        done - done / 2,
        ready_after_kill.summary(),
        started.elapsed()
    );
    assert!(done >= 20, "{done} iterations");
    assert!(
        during_crawl >= 1,
        "no kill landed during a first crawl; raise CORPUS"
    );
    assert_eq!(mismatches, 0, "seed {seed}");
}

#[test]
fn a_damaged_index_is_moved_aside_rebuilt_and_named_in_the_log() {
    let fx = Fixture::new();
    corpus(&fx, 300);
    let mut agent = Agent::start(&fx);
    agent.stop();
    drop(agent);
    type Damage = (&'static str, fn(&Path));
    let damages: [Damage; 3] = [
        ("truncated", |p| {
            let len = std::fs::metadata(p).unwrap().len();
            let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
            f.set_len(len / 3).unwrap();
        }),
        ("zeroed", |p| {
            let len = std::fs::metadata(p).unwrap().len();
            std::fs::write(p, vec![0u8; len as usize]).unwrap();
        }),
        ("garbage", |p| {
            let len = std::fs::metadata(p).unwrap().len();
            std::fs::write(p, Rng::new(7).bytes(len as usize)).unwrap();
        }),
    ];
    let mut rng = Rng::new(11);
    for (what, damage) in damages {
        // The agent stopped cleanly: no WAL is left, the main file is the whole index.
        assert!(!Path::new(&format!("{}-wal", fx.index.display())).exists());
        damage(&fx.index);
        let log_before = std::fs::read_to_string(fx.root.join("agent.log"))
            .unwrap_or_default()
            .len();
        let started = Instant::now();
        let mut agent = Agent::start(&fx);
        let ready = started.elapsed();
        let log = agent.log()[log_before..].to_owned();
        let line = log
            .lines()
            .find(|l| l.contains("moved aside"))
            .unwrap_or_else(|| panic!("{what}: no move-aside in the log:\n{log}"));
        assert!(
            line.contains("reason=") || line.contains("reason:"),
            "{what}: the log line names no reason: {line}"
        );
        eprintln!("{what}: ready in {ready:?}; log: {line}");
        assert_eq!(compare(&fx, &agent, &mut rng, what), 0, "{what}");
        agent.stop();
    }
    let aside = std::fs::read_dir(fx.index.parent().unwrap())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".corrupt-")
        })
        .count();
    assert!(aside >= 1, "no .corrupt- file kept beside the index");
}
