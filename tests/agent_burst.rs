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
use common::sys::{prerequisite_missing, root_or_skip, Sysctl};
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
    // Read-only: polled while the agent writes.
    let index = Index::open_reader(index).unwrap();
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
    let fresh = fx.root.join("fresh.sqlite");
    {
        let homes = rolloutd::identity::Homes::new(std::slice::from_ref(&fx.home), &[]);
        let index = Index::open(&fresh, Journal::Wal).unwrap();
        rolloutd::crawl::reconcile(&homes, &index, &Default::default(), &()).unwrap();
    }
    let crawled = snapshot(&fresh, &fx.real_home());
    // Every file has a row, but the last events (a file's final size) may still be on their
    // way: wait, bounded, for the rows to match, then assert.
    let settled = Instant::now();
    let live = loop {
        let live = snapshot(&fx.index, &fx.real_home());
        if live == crawled || settled.elapsed() > Duration::from_secs(30) {
            break live;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
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
    if !root_or_skip("lowering fs.inotify.max_queued_events") {
        return;
    }
    let fx = Fixture::new();
    let (agent, original) = {
        let queue = match Sysctl::set(MAX_QUEUED, "64") {
            Ok(q) => q,
            // Read-only in a container without sysctl rights.
            Err(why) => return prerequisite_missing(&format!("cannot lower the queue: {why}")),
        };
        // The queue size is fixed when the agent creates its inotify instance, so the
        // setting is restored as soon as it is ready.
        let agent = Agent::start(&fx);
        let original = queue.original().to_owned();
        drop(queue);
        (agent, original)
    };
    assert_eq!(
        std::fs::read_to_string(MAX_QUEUED).unwrap().trim(),
        original.trim()
    );
    let rescans_before = agent.status()["rescans"].as_u64().unwrap();
    // The burst's directories exist and are watched first, so its 20,000 files queue 20,000
    // events. Made during the stop, the directories alone would queue fewer than 64, and the
    // overflow would hang on the agent's own reads after it resumes (it did not always come).
    for n in 0..40 {
        let r = Rollout::new(
            &tid(n),
            &format!("2026-{:02}-{:02}T10:00:00.000Z", 1 + n % 10, 1 + n % 4),
            "/w",
            "p",
        );
        std::fs::create_dir_all(fx.home.join(r.day_dir())).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
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
    // Once per burst (`policy::losses_warn_once_per_burst`); the agent's own head reads
    // after each reconcile (inotify's open events, which notify always asks for) can
    // overflow a 64-event queue again, a later burst.
    assert!(
        warnings >= 1 && warnings as u64 <= rescans,
        "{warnings} lost-events warnings for {rescans} full reconciles"
    );
}
