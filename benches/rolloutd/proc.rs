//! Processes the bench runs: the built `rolloutd` binary, one-shot (with its CPU time and
//! peak RSS from `wait4`) or as an agent that is always stopped and reaped, and readings of
//! a live process from `/proc`.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test: `cargo bench` and `cargo test --bench` build it beside the bench;
/// `ROLLOUTD_BENCH_BIN` names another (an A/B against a saved build of main).
pub fn bin() -> PathBuf {
    std::env::var_os("ROLLOUTD_BENCH_BIN")
        .filter(|v| !v.is_empty())
        .map_or_else(
            || PathBuf::from(env!("CARGO_BIN_EXE_rolloutd")),
            PathBuf::from,
        )
}

/// Where one bench world lives: the home, the index, a sealed `HOME`/`XDG_*`.
#[derive(Debug, Clone)]
pub struct World {
    pub root: PathBuf,
    pub home: PathBuf,
    pub index: PathBuf,
    pub socket: PathBuf,
}

impl World {
    pub fn new(root: &Path) -> World {
        World {
            root: root.to_owned(),
            home: root.join("codex"),
            index: root.join("state/index.sqlite"),
            socket: root.join("run/rolloutd.sock"),
        }
    }

    /// `rolloutd --codex-home … --index … --socket …` with an environment that never
    /// reaches the real `~/.codex` or config.
    pub fn cmd(&self) -> Command {
        let user = self.root.join("user");
        let mut c = Command::new(bin());
        c.env_remove("CODEX_HOME")
            .env_remove("ROLLOUTD_INDEX")
            .env_remove("ROLLOUTD_SOCKET")
            .env_remove("CODEX_SQLITE_HOME")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env("RUST_LOG", "warn")
            .env("HOME", &user)
            .env("XDG_CONFIG_HOME", user.join(".config"))
            .env("XDG_STATE_HOME", user.join(".local/state"))
            .env("XDG_CACHE_HOME", user.join(".cache"))
            .env("XDG_RUNTIME_DIR", user.join("run"))
            .arg("--codex-home")
            .arg(&self.home)
            .arg("--index")
            .arg(&self.index)
            .arg("--socket")
            .arg(&self.socket)
            .stdin(Stdio::null());
        c
    }

    /// Removes the index and its companions (a cold start).
    pub fn drop_index(&self) {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut p = self.index.as_os_str().to_owned();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }

    /// Bytes of the index on disk (main file and WAL).
    pub fn index_bytes(&self) -> u64 {
        ["", "-wal"]
            .iter()
            .map(|s| {
                let mut p = self.index.as_os_str().to_owned();
                p.push(s);
                std::fs::metadata(PathBuf::from(p)).map_or(0, |m| m.len())
            })
            .sum()
    }
}

/// What one finished process cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub wall: Duration,
    pub cpu: Duration,
    pub max_rss_kb: u64,
}

/// Runs `c` to completion (at most `deadline`) and reports wall time and user+system CPU
/// from `wait4`, and peak RSS from the child's `VmHWM`, read every 5 ms while it runs (a high
/// water mark, so only growth in its last few ms could be missed). Not `wait4`'s `ru_maxrss`:
/// Linux folds the parent's RSS at the fork into it across the `exec`, so it read as this
/// bench's own size (hundreds of MB with a 500,000-thread corpus in memory).
/// stdout is returned; stderr goes to `log`.
pub fn run_measured(
    mut c: Command,
    deadline: Duration,
    log: &Path,
) -> Result<(Usage, String), String> {
    let out_path = log.with_extension("out");
    let out = std::fs::File::create(&out_path).map_err(|e| e.to_string())?;
    let err = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    c.stdout(out).stderr(err);
    let started = Instant::now();
    let mut child = c
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", bin().display()))?;
    let pid = child.id() as libc::pid_t;
    let mut hwm_kb = 0;
    let mut polls = 0u64;
    loop {
        if polls % 10 == 0 {
            hwm_kb = hwm_kb.max(proc_status_kb(pid as u32, "VmHWM:").unwrap_or(0));
        }
        polls += 1;
        let mut status = 0;
        // SAFETY: a zeroed rusage is a valid out-parameter.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our child, not yet reaped; both pointers are valid.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            let wall = started.elapsed();
            let cpu = timeval(ru.ru_utime) + timeval(ru.ru_stime);
            let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
            if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                return Err(format!(
                    "rolloutd exited with status {status}; see {}",
                    log.display()
                ));
            }
            return Ok((
                Usage {
                    wall,
                    cpu,
                    max_rss_kb: hwm_kb,
                },
                stdout,
            ));
        }
        if r < 0 {
            return Err(format!("wait4: {}", std::io::Error::last_os_error()));
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("rolloutd did not finish within {deadline:?}"));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
}

/// A running `rolloutd run`; stopped (SIGTERM, then SIGKILL) and reaped on drop.
pub struct Agent {
    child: Option<Child>,
    pub pid: u32,
    /// From spawn to `READY=1` on the notify socket.
    pub ready_after: Duration,
    pub log: PathBuf,
}

impl Agent {
    /// Spawns the agent with `NOTIFY_SOCKET` pointing at a socket of ours, and waits (at most
    /// `deadline`) for `READY=1`: the first reconcile is done.
    pub fn start(world: &World, deadline: Duration) -> Result<Agent, String> {
        let notify_path = world.root.join("run/notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        std::fs::create_dir_all(world.root.join("run")).map_err(|e| e.to_string())?;
        let notify = UnixDatagram::bind(&notify_path).map_err(|e| e.to_string())?;
        notify
            .set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let log = world.root.join("agent.log");
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| e.to_string())?;
        let mut c = world.cmd();
        c.env("NOTIFY_SOCKET", &notify_path)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(log_file);
        let started = Instant::now();
        let child = c
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin().display()))?;
        let mut agent = Agent {
            pid: child.id(),
            child: Some(child),
            ready_after: Duration::ZERO,
            log,
        };
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = notify.recv(&mut buf) {
                if String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .any(|l| l == "READY=1")
                {
                    agent.ready_after = started.elapsed();
                    break;
                }
            }
            if let Some(Ok(Some(status))) = agent.child.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "agent exited ({status}) before ready; see {}",
                    agent.log.display()
                ));
            }
            if started.elapsed() > deadline {
                return Err(format!("agent not ready within {deadline:?}"));
            }
        }
        let _ = std::fs::remove_file(&notify_path);
        // The socket is bound before the first reconcile; it must answer now.
        Ok(agent)
    }

    /// user+system CPU so far, from `/proc/PID/stat`.
    pub fn cpu(&self) -> Duration {
        proc_cpu(self.pid).unwrap_or_default()
    }

    /// Peak RSS (`VmHWM`) in kB.
    pub fn peak_rss_kb(&self) -> u64 {
        proc_status_kb(self.pid, "VmHWM:").unwrap_or(0)
    }

    /// Current RSS (`VmRSS`) in kB.
    pub fn rss_kb(&self) -> u64 {
        proc_status_kb(self.pid, "VmRSS:").unwrap_or(0)
    }

    /// Resets the peak RSS to the current RSS (`clear_refs` 5), so a phase's peak is its own.
    /// Returns false where the kernel does not allow it.
    pub fn reset_peak(&self) -> bool {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5").is_ok()
    }

    /// SIGTERM, up to 5 s for a graceful exit, then SIGKILL; always reaps.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SAFETY: signalling our own child, not yet reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn proc_cpu(pid: u32) -> Option<Duration> {
    stat_cpu(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// user+system CPU of the threads of `pid` named `comm` (`/proc/PID/task/*/stat`).
pub fn threads_cpu(pid: u32, comm: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Duration::ZERO;
    };
    let want = format!("({comm})");
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .filter(|stat| stat.contains(&want))
        .filter_map(|stat| stat_cpu(&stat))
        .sum()
}

/// utime + stime of one `stat` line.
fn stat_cpu(stat: &str) -> Option<Duration> {
    // Fields after the `(comm)`, which may contain spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_micros((utime + stime) * 1_000_000 / tick))
}

fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Voluntary + involuntary context switches of every thread of `pid`, from
/// `/proc/PID/task/*/status`: each is one time a thread ran after sleeping or being preempted.
pub fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut total = 0;
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        for line in status.lines() {
            if let Some(v) = line
                .strip_prefix("voluntary_ctxt_switches:")
                .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
            {
                total += v.trim().parse::<u64>().unwrap_or(0);
            }
        }
    }
    total
}

/// user+system CPU of `pid` in clock ticks' precision (see [`Agent::cpu`]).
pub fn cpu_of(pid: u32) -> Duration {
    proc_cpu(pid).unwrap_or_default()
}
