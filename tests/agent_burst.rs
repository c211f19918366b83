//! Bursts of files: after 20,000 rollouts appear at once, the agent's index equals a fresh
//! crawl, with and without a kernel event-queue overflow.
//!
//! A test binary of its own, with one test at a time: the overflow case lowers the
//! system-wide `fs.inotify.max_queued_events`, which would reach agents of other tests.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::agent::Agent;
use common::{tid, Fixture, Rollout};
use rolloutd::identity::Stamp;
use rolloutd::index::{Index, Journal};

const BURST: u32 = 20_000;
const MAX_QUEUED: &str = "/proc/sys/fs/inotify/max_queued_events";

static SERIAL: Mutex<()> = Mutex::new(());

/// Writes `BURST` small rollouts over 40 day directories, as fast as possible.
fn burst(fx: &Fixture) {
    for n in 0..BURST {
        let r = Rollout::new(
            &tid(n),
            &format!("2026-{:02}-{:02}T10:00:00.000Z", 1 + n % 10, 1 + n % 4),
            "/w",
            "p",
        )
        .base_len(200);
        let path = fx.home.join(r.day_dir()).join(r.file_name());
        if n < 40 {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        }
        std::fs::write(path, r.jsonl()).unwrap();
    }
}

/// Every (path, stamp, thread) the index holds for the home.
fn snapshot(index: &Path, home: &Path) -> Vec<(PathBuf, Stamp, String)> {
    let index = Index::open(index, Journal::Wal).unwrap();
    let mut rows: Vec<_> = index
        .stamps_under(home)
        .unwrap()
        .into_iter()
        .map(|(path, stamp)| {
            let thread = index.file_at(&path).unwrap().unwrap().head.thread_id;
            (path, stamp, thread)
        })
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

/// Waits until the agent has indexed every file of the burst, then compares its index with
/// a fresh crawl into another index file.
fn settle_and_compare(fx: &Fixture, agent: &Agent) {
    let started = Instant::now();
    loop {
        let s = agent.status();
        if s["counts"]["files"] == BURST {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "agent stuck at {} after {:?}; log:\n{}",
            s["counts"],
            started.elapsed(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "indexed {BURST} files {:?} after the burst",
        started.elapsed()
    );
    // Let the last events (if any) land.
    std::thread::sleep(Duration::from_millis(300));
    let fresh = fx.root.join("fresh.sqlite");
    {
        let homes = rolloutd::identity::Homes::new(std::slice::from_ref(&fx.home), &[]);
        let index = Index::open(&fresh, Journal::Wal).unwrap();
        rolloutd::crawl::reconcile(&homes, &index, &Default::default(), &()).unwrap();
    }
    let live = snapshot(&fx.index, &fx.real_home());
    let crawled = snapshot(&fresh, &fx.real_home());
    assert_eq!(live.len(), BURST as usize);
    assert!(live == crawled, "the live index differs from a fresh crawl");
}

#[test]
fn a_burst_of_20000_files_ends_equal_to_a_fresh_crawl() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fx = Fixture::new();
    let agent = Agent::start(&fx);
    let started = Instant::now();
    burst(&fx);
    println!("wrote {BURST} files in {:?}", started.elapsed());
    settle_and_compare(&fx, &agent);
}

/// Restores the kernel setting however the test ends.
struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(MAX_QUEUED, &self.0);
    }
}

/// Resumes a stopped agent however the test ends.
struct Continue(u32);

impl Drop for Continue {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGCONT) };
    }
}

#[test]
fn an_event_queue_overflow_triggers_a_full_reconcile_and_loses_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: lowering fs.inotify.max_queued_events needs root");
        return;
    }
    let Ok(original) = std::fs::read_to_string(MAX_QUEUED) else {
        println!("skipped: {MAX_QUEUED} is not readable here");
        return;
    };
    let fx = Fixture::new();
    let agent = {
        let restore = Restore(original.trim().to_owned());
        if std::fs::write(MAX_QUEUED, "64").is_err() {
            println!("skipped: {MAX_QUEUED} is read-only here (a container without sysctl rights)");
            return;
        }
        // The queue size is fixed when the agent creates its inotify instance, so the
        // setting is restored as soon as it is ready.
        let agent = Agent::start(&fx);
        drop(restore);
        agent
    };
    assert_eq!(
        std::fs::read_to_string(MAX_QUEUED).unwrap().trim(),
        original.trim()
    );
    let rescans_before = agent.status()["rescans"].as_u64().unwrap();
    // Stopped, the agent reads nothing, so the burst overflows its 64-event queue for sure.
    agent.signal(libc::SIGSTOP);
    let cont = Continue(agent.pid());
    burst(&fx);
    drop(cont);
    settle_and_compare(&fx, &agent);
    let rescans = agent.status()["rescans"].as_u64().unwrap() - rescans_before;
    assert!(
        rescans >= 1,
        "no full reconcile after the overflow; log:\n{}",
        agent.log()
    );
    let warnings = agent.log().matches("events were lost").count();
    println!("overflow: {rescans} full reconciles, {warnings} warnings in the log");
    assert_eq!(
        warnings, 1,
        "the lost-events warning should come once per burst"
    );
}
