//! `cargo bench`: rolloutd's figures beside the design targets and the anchors, on a
//! generated corpus (see `corpus.rs`), in one run.
//!
//! ```sh
//! cargo bench --bench rolloutd                          # 50,000 threads, 3 runs
//! cargo bench --bench rolloutd -- --threads 2000 --runs 1
//! ROLLOUTD_BENCH_THREADS=10000 cargo bench --bench rolloutd
//! cargo bench --bench rolloutd -- --generate-only DIR   # just write a corpus to DIR/codex
//! cargo bench --bench rolloutd -- --shim-only           # just the app-server shim's figures
//! cargo bench --bench rolloutd -- --fuse-poll --threads 5000   # a polled FUSE home (root)
//! cargo bench --bench rolloutd -- --threads 500000 --small-base --runs 1   # the scale run
//! ```
//!
//! `--small-base` (or `ROLLOUTD_BENCH_SMALL_BASE=1`) writes a 512-byte `base_instructions`
//! instead of 0.169's ~21 KB, so 500,000 threads take ~3.6 GB; the output names the mode.
//!
//! The agent under test is the `rolloutd` binary cargo builds beside the bench (its path
//! comes from `CARGO_BIN_EXE_rolloutd`, or `ROLLOUTD_BENCH_BIN` for an A/B), spawned on a temporary home with a sealed
//! environment; readiness comes from its sd_notify `READY=1` on a socket of ours. Every
//! agent is stopped and reaped, and the temporary directory is removed, on every exit path
//! but a signal.

mod anchors;
mod client;
mod corpus;
mod fuse;
mod proc;
mod shim;
mod stats;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use client::Conn;
use proc::{Agent, Usage, World};
use stats::{fmt, mb, median, median_f64, median_u64, percentile};

/// How long the agent may take to become ready, and a one-shot run to finish.
const DEADLINE: Duration = Duration::from_secs(600);
/// How long one event may take to become resolvable before it counts as lost.
const EVENT_DEADLINE: Duration = Duration::from_secs(10);
/// How long after a first start's READY=1 its RSS is read.
const FIRST_START_SETTLE: Duration = Duration::from_secs(2);

struct Options {
    threads: u32,
    runs: usize,
    generate_only: Option<PathBuf>,
    shim_only: bool,
    /// Only the polled-FUSE-home figures (`fuse.rs`).
    fuse_poll: bool,
    /// `--small-base`: the corpus carries a short `base_instructions` (see `corpus::Shape`).
    shape: corpus::Shape,
}

fn options() -> Result<Options, String> {
    let env_num = |k: &str| std::env::var(k).ok().map(|v| v.trim().replace('_', ""));
    let mut o = Options {
        threads: env_num("ROLLOUTD_BENCH_THREADS")
            .map(|v| v.parse().map_err(|_| format!("ROLLOUTD_BENCH_THREADS={v}")))
            .transpose()?
            .unwrap_or(50_000),
        runs: env_num("ROLLOUTD_BENCH_RUNS")
            .map(|v| v.parse().map_err(|_| format!("ROLLOUTD_BENCH_RUNS={v}")))
            .transpose()?
            .unwrap_or(3),
        generate_only: None,
        shim_only: false,
        fuse_poll: false,
        shape: if env_num("ROLLOUTD_BENCH_SMALL_BASE").is_some_and(|v| v == "1") {
            corpus::Shape::SmallBase
        } else {
            corpus::Shape::Full
        },
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--threads" => {
                let v = value("--threads")?.replace('_', "");
                o.threads = v.parse().map_err(|_| format!("--threads {v}"))?;
            }
            "--runs" => {
                let v = value("--runs")?;
                o.runs = v.parse().map_err(|_| format!("--runs {v}"))?;
            }
            "--generate-only" => o.generate_only = Some(PathBuf::from(value("--generate-only")?)),
            "--shim-only" => o.shim_only = true,
            "--fuse-poll" => o.fuse_poll = true,
            "--small-base" => o.shape = corpus::Shape::SmallBase,
            // cargo bench passes --bench; cargo test passes nothing for harness = false.
            "--bench" | "--nocapture" => {}
            other => {
                return Err(format!(
                "unknown argument {other:?} (known: --threads N, --runs N, --generate-only DIR, --small-base, --shim-only, --fuse-poll)"
            ))
            }
        }
    }
    if o.threads < 100 {
        return Err("--threads must be at least 100".into());
    }
    o.runs = o.runs.clamp(1, 20);
    Ok(o)
}

fn main() {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rolloutd bench: {e}");
            std::process::exit(2);
        }
    };
    if let Some(dir) = &o.generate_only {
        match corpus::generate(&dir.join("codex"), o.threads, o.shape) {
            Ok(c) => println!(
                "wrote {} threads, {} ({:.1} MB), to {} in {}",
                c.threads.len(),
                o.shape.label(),
                c.bytes_written as f64 / 1e6,
                c.home.display(),
                fmt(c.elapsed)
            ),
            Err(e) => {
                eprintln!("rolloutd bench: generating: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    let tmp = match tempfile::Builder::new().prefix("rolloutd-bench-").tempdir() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("rolloutd bench: temp dir: {e}");
            std::process::exit(1);
        }
    };
    let result = match dunce::canonicalize(tmp.path()) {
        Ok(root) if o.shim_only => {
            let mut report = Report::default();
            shim_rows(&mut report, &root);
            report.print(&o, 0);
            Ok(())
        }
        Ok(root) if o.fuse_poll => fuse::run(o.threads, &root),
        Ok(root) => run(&o, &root),
        Err(e) => Err(e.to_string()),
    };
    // The TempDir is removed when it drops, after every agent has been reaped.
    drop(tmp);
    if let Err(e) = result {
        eprintln!("rolloutd bench: {e}");
        std::process::exit(1);
    }
}

/// One row of the report.
struct Row {
    figure: String,
    value: String,
    cpu: String,
    rss: String,
    target: String,
    verdict: &'static str,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    anchors: Vec<(String, String, String)>,
    notes: Vec<String>,
}

impl Report {
    fn row(
        &mut self,
        figure: &str,
        value: String,
        cpu: String,
        rss: String,
        target: &str,
        met: Option<bool>,
    ) {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "",
        };
        println!("  {figure}: {value}  (cpu {cpu}, peak rss {rss})  target {target} {verdict}");
        self.rows.push(Row {
            figure: figure.into(),
            value,
            cpu,
            rss,
            target: target.into(),
            verdict,
        });
    }

    fn anchor(&mut self, name: &str, value: String, ratio: String) {
        println!("  {name}: {value}  {ratio}");
        self.anchors.push((name.into(), value, ratio));
    }

    fn note(&mut self, s: String) {
        println!("  note: {s}");
        self.notes.push(s);
    }

    fn print(&self, o: &Options, threads: usize) {
        println!();
        println!(
            "## rolloutd bench: {threads} threads, {}, median of {} run(s)",
            o.shape.label(),
            o.runs
        );
        println!();
        println!("| figure | rolloutd | CPU | peak RSS | target | |");
        println!("|---|---|---|---|---|---|");
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                r.figure, r.value, r.cpu, r.rss, r.target, r.verdict
            );
        }
        println!();
        println!("| anchor (same corpus, same run) | time | rolloutd ÷ anchor |");
        println!("|---|---|---|");
        for (name, value, ratio) in &self.anchors {
            println!("| {name} | {value} | {ratio} |");
        }
        for n in &self.notes {
            println!();
            println!("note: {n}");
        }
    }
}

fn ratio(ours: Duration, anchor: Duration) -> String {
    if anchor.is_zero() {
        return "n/a".into();
    }
    let r = ours.as_secs_f64() / anchor.as_secs_f64();
    if r < 0.01 {
        format!("{r:.5} (1/{:.0})", 1.0 / r)
    } else {
        format!("{r:.3}")
    }
}

/// A deterministic sample of `count` corpus ids, spread over the whole corpus.
fn sample_ids(c: &corpus::Corpus, count: usize) -> Vec<String> {
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.threads[(x % c.threads.len() as u64) as usize].id.clone()
        })
        .collect()
}

fn run(o: &Options, root: &Path) -> Result<(), String> {
    let world = World::new(root);
    let small = o.threads < 10_000;
    println!(
        "rolloutd bench: {} threads, {}, {} run(s) per figure",
        o.threads,
        o.shape.label(),
        o.runs
    );
    println!("machine: {}", machine());
    println!(
        "binary: {} (the bench's profile: {})",
        proc::bin().display(),
        if cfg!(debug_assertions) {
            "debug profile: figures are not representative"
        } else {
            "release profile"
        }
    );

    // 1. The corpus.
    let c = corpus::generate(&world.home, o.threads, o.shape)
        .map_err(|e| format!("generating the corpus: {e}"))?;
    let expected_files = c.threads.len() as u64;
    println!(
        "corpus: {} threads, {:.0} MB written ({} archived, {} .zst, {} sparse of {} GiB total) in {}",
        c.threads.len(),
        c.bytes_written as f64 / 1e6,
        c.threads.iter().filter(|t| t.archived).count(),
        c.threads.iter().filter(|t| t.zstd).count(),
        c.threads.iter().filter(|t| t.sparse_bytes.is_some()).count(),
        c.threads.iter().filter_map(|t| t.sparse_bytes).sum::<u64>() >> 30,
        fmt(c.elapsed)
    );
    let mut report = Report::default();

    // 2. Cold index: an empty index each run; the first, unmeasured run warms the page cache.
    println!("cold index…");
    let log = root.join("cli.log");
    let mut cold: Vec<Usage> = Vec::new();
    for run in 0..=o.runs {
        world.drop_index();
        let mut cmd = world.cmd();
        cmd.arg("--json").arg("index");
        let (usage, out) = proc::run_measured(cmd, DEADLINE, &log)?;
        check_index_output(&out, expected_files, None)?;
        if run > 0 {
            cold.push(usage);
        }
    }
    let (wall, cpu, rss) = usage_medians(&mut cold);
    report.row(
        &format!(
            "cold index of {} threads (`rolloutd index`, empty index, warm cache)",
            o.threads
        ),
        format!(
            "{} ({:.0} files/s)",
            fmt(wall),
            o.threads as f64 / wall.as_secs_f64()
        ),
        fmt(cpu),
        mb(rss),
        "≤ 2 s at 50,000 (≥ 25,000 files/s)",
        Some(o.threads as f64 / wall.as_secs_f64() >= 25_000.0),
    );
    let index_bytes = world.index_bytes();
    report.row(
        "index size",
        format!(
            "{:.1} MB, {} bytes/thread",
            index_bytes as f64 / 1e6,
            index_bytes / o.threads as u64
        ),
        "".into(),
        "".into(),
        "",
        None,
    );

    // The parse limit: the head bytes the cold index reads, read with no parsing.
    println!("parse limit (head bytes, no parsing)…");
    let limits = rolloutd::rollout::HeadLimits::default();
    let head_files: Vec<(PathBuf, u64)> = c
        .threads
        .iter()
        .filter_map(|t| {
            let i = rolloutd::rollout::inspect(&t.path, &limits).ok()?;
            Some((t.path.clone(), i.bytes_read))
        })
        .collect();
    let head_bytes: u64 = head_files.iter().map(|h| h.1).sum();
    let mut reads = Vec::new();
    for _ in 0..=o.runs {
        reads.push(anchors::read_heads(&head_files)?);
    }
    reads.remove(0); // the warm-up
    let parse_limit = median(&mut reads);
    let cold_wall = wall_of(&cold);

    // 3. Restart: a reconcile with nothing changed, from the CLI and as the agent's start.
    println!("restart…");
    let mut again: Vec<Usage> = Vec::new();
    for _ in 0..o.runs {
        let mut cmd = world.cmd();
        cmd.arg("--json").arg("index");
        let (usage, out) = proc::run_measured(cmd, DEADLINE, &log)?;
        check_index_output(&out, expected_files, Some(0))?;
        again.push(usage);
    }
    let (wall, cpu, rss) = usage_medians(&mut again);
    report.row(
        "reconcile, nothing changed (`rolloutd index` again)",
        fmt(wall),
        fmt(cpu),
        mb(rss),
        "≤ 1 s",
        Some(wall <= Duration::from_secs(1)),
    );
    let mut ready = Vec::new();
    let mut ready_cpu = Vec::new();
    let mut ready_rss = Vec::new();
    for _ in 0..o.runs {
        let mut agent = Agent::start(&world, DEADLINE)?;
        ready.push(agent.ready_after);
        ready_cpu.push(agent.cpu());
        ready_rss.push(agent.peak_rss_kb());
        agent.stop();
    }
    let ready_wall = median(&mut ready);
    report.row(
        "agent restart → READY=1 (unchanged index)",
        fmt(ready_wall),
        fmt(median(&mut ready_cpu)),
        mb(median_u64(&mut ready_rss)),
        "≤ 1 s",
        Some(ready_wall <= Duration::from_secs(1)),
    );

    // The agent's first start: an empty index, so READY=1 waits for the cold index, and the
    // watcher's queue takes every directory of the home while the crawl runs. The index it
    // builds (sealed at its stop) is the one the query figures below run on.
    println!("first start…");
    let mut first = Vec::new();
    let mut first_cpu = Vec::new();
    let mut first_peak = Vec::new();
    let mut first_after = Vec::new();
    for _ in 0..o.runs {
        world.drop_index();
        let mut agent = Agent::start(&world, DEADLINE)?;
        first.push(agent.ready_after);
        first_cpu.push(agent.cpu());
        std::thread::sleep(FIRST_START_SETTLE);
        // Read after the wait, so the peak covers what the watcher does after READY=1 too.
        first_peak.push(agent.peak_rss_kb());
        first_after.push(agent.rss_kb());
        agent.stop();
    }
    let first_wall = median(&mut first);
    let first_peak = median_u64(&mut first_peak);
    report.row(
        "agent first start → READY=1 (empty index; CPU to READY=1)",
        format!(
            "{}, RSS {:?} after READY=1: {}",
            fmt(first_wall),
            FIRST_START_SETTLE,
            mb(median_u64(&mut first_after))
        ),
        fmt(median(&mut first_cpu)),
        mb(first_peak),
        "peak ≤ 30 MB (≤ 40 MB at 500,000)",
        Some(
            first_peak
                <= if o.threads > 100_000 {
                    40 << 10
                } else {
                    30 << 10
                },
        ),
    );

    // 4. The agent, for the query figures.
    let agent = Agent::start(&world, DEADLINE)?;
    let resets = agent.reset_peak();
    if !resets {
        report.note(
            "the kernel refused clear_refs: per-phase peak RSS is the peak since start".into(),
        );
    }
    let mut phase_peaks = vec![agent.peak_rss_kb()];

    let per_run = if small { 5_000 } else { 20_000 };
    let ids = sample_ids(&c, per_run);
    let window = if small {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(2)
    };

    // The socket's own limit: an echo server driven by the same client, same requests.
    println!("socket echo anchor…");
    let echo = anchors::Echo::start(&root.join("echo.sock"))?;
    let (echo_p50, echo_p99) = {
        let mut conn = Conn::connect(&echo.socket).map_err(|e| format!("echo: {e}"))?;
        for id in ids.iter().take(2_000) {
            conn.call_echo(id)?;
        }
        let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
        for _ in 0..o.runs {
            let mut times = Vec::with_capacity(ids.len());
            for id in &ids {
                let t = Instant::now();
                conn.call_echo(id)?;
                times.push(t.elapsed());
            }
            p50s.push(percentile(&mut times, 50.0));
            p99s.push(percentile(&mut times, 99.0));
        }
        (median(&mut p50s), median(&mut p99s))
    };
    let mut echo_rates = Vec::new();
    // The echo server's own CPU per request at 8 connections: what the socket and the
    // runtime cost, the anchor for the agent's CPU per resolve.
    let mut echo_cpu_8 = Duration::ZERO;
    for clients in [1usize, 8] {
        let (mut rates, mut cpus) = (Vec::new(), Vec::new());
        for _ in 0..o.runs {
            let cpu0 = echo.cpu();
            let (done, took) = throughput(&echo.socket, &ids, clients, window, true)?;
            cpus.push((echo.cpu() - cpu0) / done.max(1) as u32);
            rates.push(done as f64 / took.as_secs_f64());
        }
        echo_rates.push(median_f64(&mut rates));
        if clients == 8 {
            echo_cpu_8 = median(&mut cpus);
        }
    }
    drop(echo);

    // thread/resolve on one persistent connection.
    println!("thread/resolve latency…");
    let mut conn = Conn::connect(&world.socket).map_err(|e| format!("connecting: {e}"))?;
    for id in ids.iter().take(2_000) {
        conn.resolve(id)?;
    }
    let (mut p50s, mut p99s, mut cpus) = (Vec::new(), Vec::new(), Vec::new());
    agent.reset_peak();
    for _ in 0..o.runs {
        let mut times = Vec::with_capacity(ids.len());
        let cpu0 = agent.cpu();
        for id in &ids {
            let t = Instant::now();
            conn.resolve(id)?;
            times.push(t.elapsed());
        }
        cpus.push((agent.cpu() - cpu0) / ids.len() as u32);
        p50s.push(percentile(&mut times, 50.0));
        p99s.push(percentile(&mut times, 99.0));
    }
    phase_peaks.push(agent.peak_rss_kb());
    let resolve_p50 = median(&mut p50s);
    let resolve_p99 = median(&mut p99s);
    let resolve_cpu = median(&mut cpus);
    report.row(
        "`thread/resolve` p50, one persistent connection",
        fmt(resolve_p50),
        format!("{}/req (agent)", fmt(resolve_cpu)),
        mb(agent.peak_rss_kb()),
        "≤ 30 µs",
        Some(resolve_p50 <= Duration::from_micros(30)),
    );
    report.row(
        "`thread/resolve` p99, one persistent connection",
        fmt(resolve_p99),
        "".into(),
        "".into(),
        "≤ 150 µs",
        Some(resolve_p99 <= Duration::from_micros(150)),
    );

    // Throughput: closed loop, one request in flight per client.
    let mut our_rates = Vec::new();
    let mut our_cpu_8 = Duration::ZERO;
    for clients in [1usize, 8, 64] {
        println!("throughput, {clients} client(s)…");
        let (mut rates, mut cpus) = (Vec::new(), Vec::new());
        agent.reset_peak();
        for _ in 0..o.runs {
            let cpu0 = agent.cpu();
            let (done, took) = throughput(&world.socket, &ids, clients, window, false)?;
            cpus.push((agent.cpu() - cpu0) / done.max(1) as u32);
            rates.push(done as f64 / took.as_secs_f64());
        }
        phase_peaks.push(agent.peak_rss_kb());
        let rate = median_f64(&mut rates);
        our_rates.push(rate);
        let cpu = median(&mut cpus);
        if clients == 8 {
            our_cpu_8 = cpu;
        }
        let (target, met) = if clients == 8 {
            ("≥ 50,000 req/s", Some(rate >= 50_000.0))
        } else {
            ("", None)
        };
        report.row(
            &format!("throughput, {clients} client(s) (`thread/resolve`)"),
            format!("{rate:.0} req/s"),
            format!("{}/req (agent)", fmt(cpu)),
            mb(agent.peak_rss_kb()),
            target,
            met,
        );
    }

    // thread/list, newest 50.
    let busy_cwd = c.busy_cwd();
    let list_calls = if small { 50 } else { 200 };
    let active = |cwd: Option<&str>| {
        c.threads
            .iter()
            .filter(|t| !t.archived && cwd.is_none_or(|w| t.cwd == w))
            .count()
            .min(50)
    };
    for (label, params, expected) in [
        (
            "`thread/list` newest 50",
            r#"{"limit":50}"#.to_owned(),
            active(None),
        ),
        (
            "`thread/list` newest 50, cwd filter",
            format!(r#"{{"limit":50,"cwd":"{busy_cwd}"}}"#),
            active(Some(&busy_cwd)),
        ),
        (
            // The busy cwd's last component (`project-NN`) is in no title: the same threads.
            "`thread/list` newest 50, search",
            format!(
                r#"{{"limit":50,"search":"{}"}}"#,
                busy_cwd.rsplit('/').next().unwrap_or_default()
            ),
            active(Some(&busy_cwd)),
        ),
    ] {
        println!("{label}…");
        let (mut p50s, mut p99s, mut cpus) = (Vec::new(), Vec::new(), Vec::new());
        agent.reset_peak();
        for _ in 0..o.runs {
            let mut times = Vec::new();
            let cpu0 = agent.cpu();
            for _ in 0..list_calls {
                let t = Instant::now();
                let line = conn.call("thread/list", &params)?;
                times.push(t.elapsed());
                let n = line.matches(r#""threadId""#).count();
                if n != expected {
                    return Err(format!("thread/list gave {n} threads, not {expected}"));
                }
            }
            cpus.push((agent.cpu() - cpu0) / list_calls);
            p50s.push(percentile(&mut times, 50.0));
            p99s.push(percentile(&mut times, 99.0));
        }
        phase_peaks.push(agent.peak_rss_kb());
        let p50 = median(&mut p50s);
        report.row(
            label,
            format!("p50 {}, p99 {}", fmt(p50), fmt(median(&mut p99s))),
            format!("{}/req (agent)", fmt(median(&mut cpus))),
            mb(agent.peak_rss_kb()),
            "≤ 2 ms",
            Some(p50 <= Duration::from_millis(2)),
        );
    }

    // Event → resolvable.
    println!("new rollout → resolvable…");
    let samples = if small { 20 } else { 100 };
    let (mut p50s, mut p99s, mut cpus) = (Vec::new(), Vec::new(), Vec::new());
    let mut sub = Conn::connect(&world.socket).map_err(|e| format!("connecting: {e}"))?;
    sub.call("subscribe", "{}")?;
    sub.set_read_timeout(Duration::from_millis(200))
        .map_err(|e| e.to_string())?;
    let mut serial = 1_000_000u32;
    agent.reset_peak();
    for _ in 0..o.runs {
        let mut times = Vec::new();
        let cpu0 = agent.cpu();
        for _ in 0..samples {
            serial += 1;
            times.push(event_to_resolvable(
                o.shape,
                &world.home,
                serial,
                None,
                &mut sub,
                &mut conn,
            )?);
            std::thread::sleep(Duration::from_millis(10));
        }
        cpus.push((agent.cpu() - cpu0) / samples);
        p50s.push(percentile(&mut times, 50.0));
        p99s.push(percentile(&mut times, 99.0));
    }
    phase_peaks.push(agent.peak_rss_kb());
    let (p50, p99) = (median(&mut p50s), median(&mut p99s));
    report.row(
        "new rollout on disk → `thread/resolve` answers",
        format!("p50 {}, p99 {}", fmt(p50), fmt(p99)),
        format!("{}/event (agent)", fmt(median(&mut cpus))),
        mb(agent.peak_rss_kb()),
        "p50 ≤ 50 ms, p99 ≤ 200 ms",
        Some(p50 <= Duration::from_millis(50) && p99 <= Duration::from_millis(200)),
    );

    // The same while other clients resolve ids nobody has: each such resolve walks every
    // home (Codex's fallback, the "directory walk" anchor), and the watcher must not wait for
    // those walks.
    println!("new rollout → resolvable, beside a flood of unknown ids…");
    let (flood, floods) = (4u32, unknown_id_flood(&world.socket, 4));
    let started = Instant::now();
    let mut times = Vec::new();
    let mut failed = None;
    for _ in 0..samples.min(20) as usize * o.runs {
        serial += 1;
        match event_to_resolvable(o.shape, &world.home, serial, None, &mut sub, &mut conn) {
            Ok(t) => times.push(t),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let answered = floods.stop()? as f64 / started.elapsed().as_secs_f64();
    if let Some(e) = failed {
        return Err(e);
    }
    let (p50, p99) = (percentile(&mut times, 50.0), percentile(&mut times, 99.0));
    report.row(
        &format!("new rollout on disk → `thread/resolve` answers, while {flood} clients resolve unknown ids (a walk each)"),
        format!(
            "p50 {}, p99 {}; {answered:.0} unknown ids answered/s",
            fmt(p50),
            fmt(p99)
        ),
        "".into(),
        "".into(),
        "p99 ≤ 200 ms",
        Some(p99 <= Duration::from_millis(200)),
    );

    // A 10 GiB rollout: the head read alone, in process, and its event → resolvable.
    println!("a 10 GiB rollout…");
    let mut heads = Vec::new();
    let mut giants = Vec::new();
    for _ in 0..o.runs {
        serial += 1;
        giants.push(event_to_resolvable(
            o.shape,
            &world.home,
            serial,
            Some(10 << 30),
            &mut sub,
            &mut conn,
        )?);
    }
    let giant_path = corpus::write_new(&root.join("giant"), serial + 1, Some(10 << 30), o.shape)
        .map_err(|e| e.to_string())?
        .1;
    for _ in 0..(o.runs * 5) {
        let t = Instant::now();
        rolloutd::rollout::inspect(&giant_path, &rolloutd::rollout::HeadLimits::default())
            .map_err(|e| format!("inspecting the 10 GiB file: {e:?}"))?;
        heads.push(t.elapsed());
    }
    let head = median(&mut heads);
    report.row(
        "a 10 GiB rollout: head read (in process)",
        fmt(head),
        "".into(),
        "".into(),
        "≤ 10 ms",
        Some(head <= Duration::from_millis(10)),
    );
    report.row(
        "a 10 GiB rollout: on disk → resolvable (agent)",
        fmt(median(&mut giants)),
        "".into(),
        "".into(),
        "",
        None,
    );

    // Memory with the corpus indexed.
    let peak = phase_peaks.iter().copied().max().unwrap_or(0);
    report.row(
        "agent RSS with the corpus indexed: now / peak over the query phases",
        format!("{} / {}", mb(agent.rss_kb()), mb(peak)),
        fmt(agent.cpu()),
        mb(peak),
        "≤ 40 MB",
        Some(peak <= 40 * 1024),
    );

    // The CLI, through the agent, for a like-for-like with watchman's CLI.
    println!("anchors…");
    let mut cli_times = Vec::new();
    for id in ids.iter().take(5 * o.runs) {
        let mut cmd = world.cmd();
        cmd.arg("--json").arg("resolve").arg(id);
        let (usage, out) = proc::run_measured(cmd, DEADLINE, &log)?;
        if !out.contains(id.as_str()) {
            return Err(format!("rolloutd resolve {id} printed {out}"));
        }
        cli_times.push(usage.wall);
    }
    let resolve_cli = median(&mut cli_times);
    drop(conn);
    drop(sub);
    drop(agent);

    // Anchors.
    let walk_ids: Vec<String> = ids
        .iter()
        .take(if small { 5 } else { 10 })
        .cloned()
        .collect();
    report.anchor(
        "socket echo (tokio, same socket kind and client), one connection p50 / p99",
        format!("{} / {}", fmt(echo_p50), fmt(echo_p99)),
        format!(
            "resolve p50 ÷ echo p50 = {}, p99 ÷ echo p99 = {}",
            ratio(resolve_p50, echo_p50),
            ratio(resolve_p99, echo_p99)
        ),
    );
    for (k, clients) in [1usize, 8].into_iter().enumerate() {
        let ours = our_rates.get(k).copied().unwrap_or(0.0);
        report.anchor(
            &format!("socket echo, {clients} connection(s)"),
            format!("{:.0} req/s", echo_rates[k]),
            format!(
                "rolloutd {clients}-client throughput ÷ echo = {:.3}",
                ours / echo_rates[k].max(1.0)
            ),
        );
    }
    report.anchor(
        "socket echo, 8 connections: the echo server's CPU per request (its threads)",
        fmt(echo_cpu_8),
        format!(
            "rolloutd CPU per resolve, 8 clients ({}) ÷ echo CPU per request = {}",
            fmt(our_cpu_8),
            ratio(our_cpu_8, echo_cpu_8)
        ),
    );
    report.anchor(
        &format!(
            "parse limit: read the head bytes the cold index reads ({:.0} MB, {:.1} KB/file), no parsing, warm cache, all cores",
            head_bytes as f64 / 1e6,
            head_bytes as f64 / 1e3 / head_files.len().max(1) as f64
        ),
        fmt(parse_limit),
        format!("cold index ÷ parse limit = {}", ratio(cold_wall, parse_limit)),
    );
    let walk = anchors::walk(&world.home, &walk_ids)?;
    report.anchor(
        "directory walk lookup by id (Codex's fallback), median",
        fmt(walk),
        format!("resolve p50 ÷ walk = {}", ratio(resolve_p50, walk)),
    );
    let lookups: Vec<String> = ids.iter().take(2_000).cloned().collect();
    match anchors::sqlite_cli(&world.index, &lookups, root)? {
        Some(per) => report.anchor(
            "`sqlite3` CLI point lookup on our index (per lookup, 2,000 in one process)",
            fmt(per),
            format!("resolve p50 ÷ sqlite3 = {}", ratio(resolve_p50, per)),
        ),
        None => report
            .note("the sqlite3 CLI is not installed; only the in-process floor is given".into()),
    }
    let floor = anchors::sqlite_inprocess(&world.index, &lookups)?;
    report.anchor(
        "SQLite point lookup in process (rusqlite, prepared; the floor)",
        fmt(floor),
        format!("resolve p50 ÷ floor = {}", ratio(resolve_p50, floor)),
    );
    let wm_ids: Vec<String> = ids.iter().take(5).cloned().collect();
    match anchors::watchman(&world.home, &wm_ids, o.runs, root) {
        anchors::Watchman::Measured {
            crawl,
            query_cli,
            query_server,
        } => {
            report.anchor(
                "watchman crawl of the home (watch → first query)",
                fmt(crawl),
                format!("cold index ÷ crawl = {}", ratio(wall_of(&cold), crawl)),
            );
            report.anchor(
                "watchman name query for one id, through its CLI",
                fmt(query_cli),
                format!(
                    "`rolloutd resolve` CLI ({}) ÷ watchman CLI = {}",
                    fmt(resolve_cli),
                    ratio(resolve_cli, query_cli)
                ),
            );
            report.anchor(
                "watchman name query, server side (CLI minus `watchman version`)",
                fmt(query_server),
                format!(
                    "resolve p50 ÷ watchman = {}",
                    ratio(resolve_p50, query_server)
                ),
            );
        }
        anchors::Watchman::Skipped(why) => report.note(format!("watchman skipped: {why}")),
    }
    shim_rows(&mut report, &root.join("shim"));
    idle(o, root, &mut report)?;
    report.print(o, c.threads.len());
    Ok(())
}

/// The app-server shim's figures (see `shim.rs`), or a note saying why they are missing.
fn shim_rows(report: &mut Report, root: &Path) {
    println!("== app-server shim: relay latency and throughput against a direct pipe");
    match shim::figures(root) {
        Ok(f) => {
            report.row(
                "`codex app-server` shim: added per relayed line, p50 (p99)",
                format!(
                    "{} ({}); round trip {} direct, {} through the shim",
                    fmt(f.added_p50),
                    fmt(f.added_p99),
                    fmt(f.direct_rtt_p50),
                    fmt(f.shim_rtt_p50)
                ),
                "-".into(),
                "-".into(),
                "≤ 50 µs (p50)",
                Some(f.added_p50 <= Duration::from_micros(50)),
            );
            let share = f.shim_lines_per_s / f.direct_lines_per_s.max(1e-9);
            let (lo, mid, hi) = f.share_spread;
            report.row(
                "`codex app-server` shim: 100,000 notifications relayed (medians of 15)",
                format!(
                    "{:.0} lines/s = {:.0} % of a direct pipe ({:.0} lines/s; per run {:.0}–{:.0} %, median {:.0} %)",
                    f.shim_lines_per_s,
                    share * 100.0,
                    f.direct_lines_per_s,
                    lo * 100.0,
                    hi * 100.0,
                    mid * 100.0
                ),
                "-".into(),
                "-".into(),
                "≥ 80 % of a direct pipe",
                Some(share >= 0.8),
            );
            report.anchor(
                "the same stream through `cat` relaying in the middle (any extra process)",
                format!("{:.0} lines/s", f.cat_relay_lines_per_s),
                format!(
                    "{:.0} % of the direct pipe; the shim = {:.0} % of it",
                    f.cat_relay_lines_per_s / f.direct_lines_per_s.max(1e-9) * 100.0,
                    f.shim_lines_per_s / f.cat_relay_lines_per_s.max(1e-9) * 100.0
                ),
            );
        }
        Err(e) => report.note(format!("app-server shim figures skipped: {e}")),
    }
}

/// The idle agent on a 200-thread home: context switches of all its threads (each a
/// wake-up) and CPU over a window in which nothing changes and no client is connected.
fn idle(o: &Options, root: &Path, report: &mut Report) -> Result<(), String> {
    println!("idle agent…");
    let world = World::new(&root.join("idle"));
    corpus::generate(&world.home, 200, o.shape).map_err(|e| format!("idle corpus: {e}"))?;
    let agent = Agent::start(&world, DEADLINE)?;
    // Let start-up work (the first reconcile's tail, the first status line) finish.
    std::thread::sleep(Duration::from_secs(2));
    let window = if o.threads < 10_000 {
        Duration::from_secs(3)
    } else {
        Duration::from_secs(20)
    };
    let (w0, c0, t) = (
        proc::context_switches(agent.pid),
        proc::cpu_of(agent.pid),
        Instant::now(),
    );
    std::thread::sleep(window);
    let (w1, c1, took) = (
        proc::context_switches(agent.pid),
        proc::cpu_of(agent.pid),
        t.elapsed(),
    );
    let per_s = w1.saturating_sub(w0) as f64 / took.as_secs_f64();
    let cpu = (c1.saturating_sub(c0)).as_secs_f64() / took.as_secs_f64();
    report.row(
        &format!(
            "idle agent, 200-thread home, no client ({} s window): wake-ups (context switches, all threads) / CPU",
            window.as_secs()
        ),
        format!("{per_s:.2} wake-ups/s / {:.2} % CPU", cpu * 100.0),
        "".into(),
        mb(agent.rss_kb()),
        "≤ 1 wake-up/s, 0 % CPU",
        Some(per_s <= 1.0 && cpu == 0.0),
    );
    Ok(())
}

fn wall_of(v: &[Usage]) -> Duration {
    let mut w: Vec<Duration> = v.iter().map(|u| u.wall).collect();
    median(&mut w)
}

fn usage_medians(v: &mut [Usage]) -> (Duration, Duration, u64) {
    let mut wall: Vec<Duration> = v.iter().map(|u| u.wall).collect();
    let mut cpu: Vec<Duration> = v.iter().map(|u| u.cpu).collect();
    let mut rss: Vec<u64> = v.iter().map(|u| u.max_rss_kb).collect();
    (median(&mut wall), median(&mut cpu), median_u64(&mut rss))
}

/// Checks `rolloutd --json index` indexed every file (and read `read` heads, when given).
fn check_index_output(out: &str, files: u64, read: Option<u64>) -> Result<(), String> {
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).map_err(|e| format!("index output {e}: {out}"))?;
    let got = v["counts"]["files"].as_u64().unwrap_or(0);
    if got != files {
        return Err(format!("index holds {got} files, not {files}: {out}"));
    }
    if let Some(want) = read {
        let did = v["summary"]["read"].as_u64().unwrap_or(u64::MAX);
        if did != want {
            return Err(format!("reconcile read {did} heads, not {want}: {out}"));
        }
    }
    Ok(())
}

/// `clients` threads, each on its own connection, resolving in a closed loop for `window`.
fn throughput(
    socket: &Path,
    ids: &[String],
    clients: usize,
    window: Duration,
    echo: bool,
) -> Result<(u64, Duration), String> {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let ids = Arc::new(ids.to_vec());
    let mut handles = Vec::new();
    for k in 0..clients {
        let (barrier, ids, socket) = (Arc::clone(&barrier), Arc::clone(&ids), socket.to_owned());
        handles.push(std::thread::spawn(move || -> Result<u64, String> {
            let conn = Conn::connect(&socket).map_err(|e| format!("connecting: {e}"));
            barrier.wait();
            let mut conn = conn?;
            barrier.wait();
            let started = Instant::now();
            let mut done = 0u64;
            let mut i = k * 7919;
            while started.elapsed() < window {
                if echo {
                    conn.call_echo(&ids[i % ids.len()])?;
                } else {
                    conn.resolve(&ids[i % ids.len()])?;
                }
                i += 1;
                done += 1;
            }
            Ok(done)
        }));
    }
    barrier.wait();
    barrier.wait();
    let started = Instant::now();
    let mut total = 0;
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(n)) => total += n,
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(_) => first_err = first_err.or(Some("a client thread panicked".into())),
        }
    }
    let took = started.elapsed();
    match first_err {
        Some(e) => Err(e),
        None => Ok((total, took)),
    }
}

/// Writes a new rollout (as Codex does: create, write, close), waits for the agent's
/// `thread/materialized` for it, then resolves it; the time from before the create to the
/// answer.
fn event_to_resolvable(
    shape: corpus::Shape,
    home: &Path,
    serial: u32,
    sparse: Option<u64>,
    sub: &mut Conn,
    conn: &mut Conn,
) -> Result<Duration, String> {
    let t = Instant::now();
    let (id, _) = corpus::write_new(home, serial, sparse, shape)
        .map_err(|e| format!("writing a rollout: {e}"))?;
    loop {
        if t.elapsed() > EVENT_DEADLINE {
            return Err(format!(
                "no thread/materialized for {id} within {EVENT_DEADLINE:?}"
            ));
        }
        match sub.read_line() {
            Ok(line) if line.contains("thread/materialized") && line.contains(id.as_str()) => break,
            Ok(_) => {}
            Err(e)
                if e.contains("timed out")
                    || e.contains("would block")
                    || e.contains("Resource temporarily") => {}
            Err(e) => return Err(e),
        }
    }
    conn.resolve(&id)?;
    Ok(t.elapsed())
}

/// Clients resolving ids that no rollout has, one after another, until stopped.
struct Flood {
    stop: Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<std::thread::JoinHandle<Result<u64, String>>>,
}

fn unknown_id_flood(socket: &Path, clients: u32) -> Flood {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = (0..clients)
        .map(|k| {
            let (socket, stop) = (socket.to_owned(), Arc::clone(&stop));
            std::thread::spawn(move || -> Result<u64, String> {
                let mut c = Conn::connect(&socket).map_err(|e| format!("connecting: {e}"))?;
                c.set_read_timeout(EVENT_DEADLINE)
                    .map_err(|e| e.to_string())?;
                let mut answered = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = format!("fee1dead-{k:04x}-7000-8000-{answered:012x}");
                    match c.call("thread/resolve", &format!(r#"{{"threadId":"{id}"}}"#)) {
                        Err(e) if e.contains("notFound") => answered += 1,
                        Ok(line) => return Err(format!("an unknown id resolved: {line}")),
                        Err(e) => return Err(e),
                    }
                }
                Ok(answered)
            })
        })
        .collect();
    Flood { stop, clients }
}

impl Flood {
    /// Stops the clients; how many unknown ids they had answered.
    fn stop(self) -> Result<u64, String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut answered = 0;
        for c in self.clients {
            answered += c
                .join()
                .map_err(|_| "a flood client panicked".to_owned())??;
        }
        Ok(answered)
    }
}

/// The CPU model and count, from /proc/cpuinfo (no host names).
fn machine() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    format!(
        "{model}, {cpus} CPUs, {:.0} GB RAM, {}",
        mem_kb as f64 / 1048576.0,
        std::env::consts::OS
    )
}
