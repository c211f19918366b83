//! Helpers for the reliability tests: a seeded RNG, latency percentiles, the agent's RSS,
//! an oracle (a fresh crawl of the home into another index through the library), and a
//! churn generator (create, append, archive-rename, delete, compress).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rolloutd::identity::Homes;
use rolloutd::index::{ArchivedFilter, Index, Journal, ListQuery};
use rolloutd::rollout::HeadLimits;

use super::{tid, Fixture, Rollout};

/// xorshift64*: small, seeded, reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The seed for `test`: `ROLLOUTD_SEED` when set, else the clock; printed so a failure can
/// be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("ROLLOUTD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: seed {seed} (replay with ROLLOUTD_SEED={seed})");
    seed
}

/// A count knob: `ROLLOUTD_<NAME>` when set, else `ci`.
pub fn knob(name: &str, ci: u64) -> u64 {
    std::env::var(format!("ROLLOUTD_{name}"))
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ci)
}

/// Resident set size of `pid` in KiB, from /proc.
pub fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Latency samples.
#[derive(Default)]
pub struct Latencies(pub Vec<Duration>);

impl Latencies {
    pub fn pct(&mut self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        self.0.sort();
        let i = ((self.0.len() as f64 - 1.0) * p / 100.0).round() as usize;
        self.0[i.min(self.0.len() - 1)]
    }

    pub fn summary(&mut self) -> String {
        format!(
            "n={} p50={:?} p99={:?} max={:?}",
            self.0.len(),
            self.pct(50.0),
            self.pct(99.0),
            self.pct(100.0)
        )
    }
}

/// One file row as compared between the agent's index and the oracle.
pub type Row = (PathBuf, String, bool, String, u64, i64, u64);

/// Every file row of the index at `path` (read-only; the agent may be running).
pub fn rows_of(index: &Index) -> Vec<Row> {
    let mut rows: Vec<Row> = index
        .list(&ListQuery {
            archived: ArchivedFilter::All,
            cwd: Vec::new(),
            search: None,
            limit: 10_000_000,
            after: None,
        })
        .expect("listing the index")
        .into_iter()
        .map(|f| {
            (
                f.path.clone(),
                f.head.thread_id.clone(),
                f.archived,
                f.compression.as_str().to_owned(),
                f.stamp.size,
                f.stamp.mtime_ns,
                f.stamp.id.ino,
            )
        })
        .collect();
    rows.sort();
    rows
}

/// The problem rows (path, kind) of an index.
pub fn problems_of(index: &Index) -> Vec<(PathBuf, String)> {
    let mut p: Vec<_> = index
        .problems()
        .expect("listing problems")
        .into_iter()
        .map(|p| (p.path, p.kind.as_str().to_owned()))
        .collect();
    p.sort();
    p
}

/// The oracle: a fresh crawl of the fixture's homes into a new index beside it.
pub fn oracle(fx: &Fixture, name: &str) -> (Vec<Row>, Vec<(PathBuf, String)>) {
    let path = fx.root.join(format!("oracle-{name}.sqlite"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let index = Index::open(&path, Journal::Wal).expect("oracle index");
    let homes = Homes::new(std::slice::from_ref(&fx.home), &[]);
    rolloutd::crawl::reconcile(&homes, &index, &HeadLimits::default(), &()).expect("oracle crawl");
    (rows_of(&index), problems_of(&index))
}

/// The rows in one list and not the other, both ways, for a failure message (at most 10).
pub fn diff<T: Ord + Clone + std::fmt::Debug>(agent: &[T], oracle: &[T]) -> Vec<String> {
    let a: std::collections::BTreeSet<_> = agent.iter().cloned().collect();
    let o: std::collections::BTreeSet<_> = oracle.iter().cloned().collect();
    let mut out: Vec<String> = a
        .difference(&o)
        .map(|r| format!("only in agent: {r:?}"))
        .chain(o.difference(&a).map(|r| format!("only in oracle: {r:?}")))
        .collect();
    out.truncate(10);
    out
}

/// A rollout for churn number `n`.
pub fn churn_rollout(n: u32) -> Rollout {
    Rollout::new(
        &tid(n),
        &format!("2026-{:02}-{:02}T10:00:00.000Z", 1 + n % 6, 1 + n % 20),
        "/w",
        &format!("prompt {n}"),
    )
    .base_len(300)
}

/// What one churn run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChurnCounts {
    pub ops: u64,
}

/// A thread changing the home at about `rate` operations per second: create (atomic, or
/// written in two parts), append, archive (rename into `archived_sessions/`), delete and
/// compress (write `.jsonl.zst`, then remove the `.jsonl`).
pub struct Churn {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Churn {
    /// Starts churning `home`, numbering new threads from `first`.
    pub fn start(home: &Path, staging: &Path, first: u32, rate: u32, seed: u64) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let (home, staging) = (home.to_owned(), staging.to_owned());
        let (s, o) = (Arc::clone(&stop), Arc::clone(&ops));
        let handle = std::thread::spawn(move || churn(&home, &staging, first, rate, seed, &s, &o));
        Churn {
            stop,
            ops,
            handle: Some(handle),
        }
    }

    /// Stops after the operation in progress; returns the count of operations.
    pub fn finish(mut self) -> ChurnCounts {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            h.join().expect("churn thread");
        }
        ChurnCounts {
            ops: self.ops.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn churn(
    home: &Path,
    staging: &Path,
    first: u32,
    rate: u32,
    seed: u64,
    stop: &AtomicBool,
    ops: &AtomicU64,
) {
    use std::io::Write;
    let mut rng = Rng::new(seed);
    std::fs::create_dir_all(staging).expect("staging dir");
    std::fs::create_dir_all(home.join("archived_sessions")).expect("archived dir");
    // Live active plain files this thread made: (n, path).
    let mut live: Vec<(u32, PathBuf)> = Vec::new();
    let mut next = first;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    // Bounded: at most 10 minutes of churn whatever the caller does.
    while !stop.load(Ordering::Acquire) && started.elapsed() < Duration::from_secs(600) {
        let done = ops.load(Ordering::Relaxed);
        let due = started + interval * (done as u32);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            // Pacing the churn at `rate`, not synchronisation.
            std::thread::sleep(wait);
        }
        let op = if live.len() < 10 { 0 } else { rng.below(10) };
        match op {
            // create (40 %)
            0..=3 => {
                let r = churn_rollout(next);
                let dest = home.join(r.day_dir()).join(r.file_name());
                std::fs::create_dir_all(dest.parent().expect("parent")).expect("day dir");
                if rng.below(2) == 0 {
                    let tmp = staging.join(r.file_name());
                    std::fs::write(&tmp, r.jsonl()).expect("staging write");
                    std::fs::rename(&tmp, &dest).expect("rename in");
                } else {
                    // Written in place in two parts, as a writer that is slow would.
                    let bytes = r.jsonl();
                    let cut = bytes.len() / 2;
                    let mut f = std::fs::File::create(&dest).expect("create");
                    f.write_all(&bytes[..cut]).expect("write");
                    f.write_all(&bytes[cut..]).expect("write");
                }
                live.push((next, dest));
                next += 1;
            }
            // append (30 %)
            4..=6 => {
                let (_, path) = &live[rng.below(live.len() as u64) as usize];
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(path)
                    .expect("append");
                f.write_all(b"{\"timestamp\":\"2026-01-01T00:00:00.000Z\",\"type\":\"event_msg\",\"payload\":{\"type\":\"token_count\"}}\n")
                    .expect("append write");
            }
            // archive (10 %)
            7 => {
                let (_, path) = live.swap_remove(rng.below(live.len() as u64) as usize);
                let dest = home
                    .join("archived_sessions")
                    .join(path.file_name().expect("name"));
                std::fs::rename(&path, &dest).expect("archive");
            }
            // delete (10 %)
            8 => {
                let (_, path) = live.swap_remove(rng.below(live.len() as u64) as usize);
                std::fs::remove_file(&path).expect("delete");
            }
            // compress (10 %)
            _ => {
                let (_, path) = live.swap_remove(rng.below(live.len() as u64) as usize);
                let bytes = std::fs::read(&path).expect("read for compress");
                let mut zst = path.as_os_str().to_owned();
                zst.push(".zst");
                std::fs::write(&zst, super::zstd_bytes(&bytes)).expect("write zst");
                std::fs::remove_file(&path).expect("remove plain");
            }
        }
        ops.fetch_add(1, Ordering::Relaxed);
    }
}
