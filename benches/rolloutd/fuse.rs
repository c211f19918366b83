//! `--fuse-poll`: a home reached only through a bindfs (FUSE) mount, written behind it
//! through the backing directory, so the agent must poll. Figures: ready time, idle CPU of
//! the agent and of the FUSE daemon together, and new rollout → resolvable. Needs root and
//! bindfs; otherwise it says why and measures nothing.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Conn;
use crate::corpus;
use crate::proc::{Agent, World};
use crate::stats::{fmt, percentile};
use crate::{DEADLINE, EVENT_DEADLINE};

/// How long idle CPU is sampled.
const IDLE_WINDOW: Duration = Duration::from_secs(30);
/// Events measured.
const SAMPLES: u32 = 30;

/// bindfs in the foreground, as our child; unmounted and reaped on drop.
struct Bindfs {
    child: Child,
    point: std::path::PathBuf,
}

impl Drop for Bindfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.point)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
        // The daemon exits once unmounted; bounded, then killed.
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cpu_of(pid: u32) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return Duration::ZERO;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

pub fn run(threads: u32, root: &Path) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("fuse-poll: skipped: mounting bindfs needs root");
        return Ok(());
    }
    if Command::new("bindfs").arg("--version").output().is_err() {
        println!("fuse-poll: skipped: bindfs is not installed");
        return Ok(());
    }
    let backing = root.join("backing");
    let backing_home = backing.join("codex");
    let c = corpus::generate(&backing_home, threads, corpus::Shape::Full)
        .map_err(|e| format!("corpus: {e}"))?;
    println!(
        "fuse-poll: {} threads written behind the mount in {}",
        c.threads.len(),
        fmt(c.elapsed)
    );
    let point = root.join("fuse");
    std::fs::create_dir_all(&point).map_err(|e| e.to_string())?;
    let child = Command::new("bindfs")
        .arg("-f")
        .arg(&backing)
        .arg(&point)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("bindfs: {e}"))?;
    let fuse = Bindfs {
        child,
        point: point.clone(),
    };
    let started = Instant::now();
    while !point.join("codex").exists() {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("bindfs did not mount within 10 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut world = World::new(root);
    world.home = point.join("codex");
    let mut agent = Agent::start(&world, DEADLINE)?;
    println!(
        "fuse-poll: agent ready after {} (polling every 2 s)",
        fmt(agent.ready_after)
    );
    let mut conn = Conn::connect(&world.socket).map_err(|e| e.to_string())?;
    let status = conn.call("index/status", "{}")?.to_owned();
    if !status.contains(r#""mode":"poll""#) {
        return Err(format!("the agent does not poll the FUSE home: {status}"));
    }

    // Idle: nothing changes; one poll round every 2 s.
    std::thread::sleep(Duration::from_secs(3));
    let (a0, f0, t0) = (agent.cpu(), cpu_of(fuse.child.id()), Instant::now());
    std::thread::sleep(IDLE_WINDOW);
    let (a1, f1, wall) = (agent.cpu(), cpu_of(fuse.child.id()), t0.elapsed());
    let pct = |d: Duration| 100.0 * d.as_secs_f64() / wall.as_secs_f64();
    println!(
        "fuse-poll: idle over {}: agent {:.2} % of a core, bindfs {:.2} %, together {:.2} % (target ≤ 1 %)",
        fmt(wall),
        pct(a1 - a0),
        pct(f1 - f0),
        pct(a1 - a0 + f1 - f0)
    );

    // New rollout (written behind the mount) → resolvable through it.
    let mut sub = Conn::connect(&world.socket).map_err(|e| e.to_string())?;
    sub.call("subscribe", "{}")?;
    sub.set_read_timeout(Duration::from_millis(200))
        .map_err(|e| e.to_string())?;
    let mut times = Vec::new();
    for i in 0..SAMPLES {
        let t = Instant::now();
        let (id, _) = corpus::write_new(&backing_home, 2_000_000 + i, None, corpus::Shape::Full)
            .map_err(|e| format!("writing: {e}"))?;
        loop {
            if t.elapsed() > EVENT_DEADLINE {
                return Err(format!("{id} not announced within {EVENT_DEADLINE:?}"));
            }
            match sub.read_line() {
                Ok(line) if line.contains("thread/materialized") && line.contains(id.as_str()) => {
                    break
                }
                Ok(_) => {}
                Err(e)
                    if e.contains("timed out")
                        || e.contains("would block")
                        || e.contains("Resource temporarily") => {}
                Err(e) => return Err(e),
            }
        }
        conn.resolve(&id)?;
        times.push(t.elapsed());
        // Out of step with the poll rounds, so the samples cover the whole interval.
        std::thread::sleep(Duration::from_millis(137 * u64::from(i % 7)));
    }
    println!(
        "fuse-poll: new rollout behind the mount → resolvable: p50 {}, p99 {}, max {} over {} events (target p99 ≤ 2 s)",
        fmt(percentile(&mut times, 50.0)),
        fmt(percentile(&mut times, 99.0)),
        fmt(percentile(&mut times, 100.0)),
        SAMPLES
    );
    agent.stop();
    drop(fuse);
    Ok(())
}
