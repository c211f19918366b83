//! The anchors, measured on the same corpus in the same run: Codex's directory-walk
//! fallback, watchman (crawl and one name query through its CLI), and a point lookup on our
//! own index through the `sqlite3` CLI and through rusqlite in process (the floor).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use walkdir::WalkDir;

use crate::stats;

/// Codex's fallback lookup by id: walk `sessions/` (recursive) and `archived_sessions/`
/// (flat), collecting every rollout file name that carries the id. Returns the matches.
pub fn walk_lookup(home: &Path, id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for (dir, depth) in [
        (home.join("sessions"), usize::MAX),
        (home.join("archived_sessions"), 1),
    ] {
        for entry in WalkDir::new(dir)
            .min_depth(1)
            .max_depth(depth)
            .into_iter()
            .flatten()
        {
            let name = entry.file_name().to_str().unwrap_or("");
            if name.starts_with("rollout-") && name.contains(id) && entry.file_type().is_file() {
                found.push(entry.into_path());
            }
        }
    }
    found
}

/// Median time of `walk_lookup` over `ids`; fails if an id is not found.
pub fn walk(home: &Path, ids: &[String]) -> Result<Duration, String> {
    let mut times = Vec::new();
    for id in ids {
        let t = Instant::now();
        let found = walk_lookup(home, id);
        times.push(t.elapsed());
        if found.is_empty() {
            return Err(format!("walk did not find {id}"));
        }
    }
    Ok(stats::median(&mut times))
}

/// Per-lookup time of `SELECT … WHERE thread_id = ?` through one `sqlite3` CLI process:
/// (time for `ids.len()` lookups − time for none) / `ids.len()`. `None` without the CLI.
pub fn sqlite_cli(
    index: &Path,
    ids: &[String],
    scratch: &Path,
) -> Result<Option<Duration>, String> {
    if Command::new("sqlite3").arg("-version").output().is_err() {
        return Ok(None);
    }
    let script = scratch.join("lookups.sql");
    let empty = scratch.join("empty.sql");
    let mut f = std::fs::File::create(&script).map_err(|e| e.to_string())?;
    for id in ids {
        writeln!(
            f,
            "SELECT path, size, mtime_ns FROM files WHERE thread_id = '{id}';"
        )
        .map_err(|e| e.to_string())?;
    }
    drop(f);
    std::fs::write(&empty, "SELECT 1;\n").map_err(|e| e.to_string())?;
    let run = |sql: &Path| -> Result<Duration, String> {
        let input = std::fs::File::open(sql).map_err(|e| e.to_string())?;
        let t = Instant::now();
        let out = Command::new("sqlite3")
            .arg("-readonly")
            .arg(index)
            .stdin(input)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| e.to_string())?;
        let took = t.elapsed();
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(took)
    };
    let mut with = Vec::new();
    let mut without = Vec::new();
    for _ in 0..3 {
        with.push(run(&script)?);
        without.push(run(&empty)?);
    }
    let per = stats::median(&mut with).saturating_sub(stats::median(&mut without));
    Ok(Some(per / ids.len().max(1) as u32))
}

/// p50 of the lookup `thread/resolve` makes (`files_for_thread`'s query), prepared once on a
/// read-only rusqlite connection in this process: the floor for the query alone.
pub fn sqlite_inprocess(index: &Path, ids: &[String]) -> Result<Duration, String> {
    let conn = rusqlite::Connection::open_with_flags(
        index,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    let mut stmt = conn
        .prepare(
            "SELECT path, home, dev, ino, size, mtime_ns, thread_id, archived, compression, \
             created_at_ms, cwd, source, originator, cli_version, model_provider, \
             forked_from_id, git_branch, title FROM files WHERE thread_id = ?1 \
             ORDER BY archived, compression <> 'none', path",
        )
        .map_err(|e| e.to_string())?;
    let mut times = Vec::with_capacity(ids.len());
    for round in 0..2 {
        for id in ids {
            let t = Instant::now();
            let mut rows = stmt.query([id]).map_err(|e| e.to_string())?;
            let mut n = 0;
            while let Some(row) = rows.next().map_err(|e| e.to_string())? {
                let _path: String = row.get(0).map_err(|e| e.to_string())?;
                n += 1;
            }
            if round == 1 {
                times.push(t.elapsed());
            }
            if n == 0 {
                return Err(format!("no row for {id}"));
            }
        }
    }
    Ok(stats::percentile(&mut times, 50.0))
}

/// watchman's figures, or why there are none.
pub enum Watchman {
    Measured {
        /// From `watch` until the first query (which waits for the crawl) returns.
        crawl: Duration,
        /// One name query for one id through the CLI (process start included), median.
        query_cli: Duration,
        /// The server's own time for that query: the CLI time minus `version`'s.
        query_server: Duration,
    },
    Skipped(String),
}

/// A private watchman server (its own socket, state and log in `scratch`), shut down and
/// killed at the end whatever happens.
struct Server {
    args: Vec<String>,
    pidfile: PathBuf,
}

impl Server {
    fn new(scratch: &Path) -> Server {
        let p = |n: &str| scratch.join(n).to_string_lossy().into_owned();
        Server {
            args: vec![
                format!("--sockname={}", p("watchman.sock")),
                format!("--statefile={}", p("watchman.state")),
                format!("--logfile={}", p("watchman.log")),
                format!("--pidfile={}", p("watchman.pid")),
                "--no-save-state".into(),
                "--no-spawn".into(),
            ],
            pidfile: scratch.join("watchman.pid"),
        }
    }

    /// Starts the server in the background and waits for it to answer.
    fn start(&self) -> Result<(), String> {
        let args: Vec<&String> = self.args.iter().filter(|a| *a != "--no-spawn").collect();
        let out = Command::new("watchman")
            .args(&args)
            .arg("get-pid")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("watchman: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "watchman would not start: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    fn cmd(&self, json: &str) -> Result<String, String> {
        let mut child = Command::new("watchman")
            .args(&self.args)
            .arg("-j")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("watchman: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(json.as_bytes())
                .map_err(|e| e.to_string())?;
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || text.contains("\"error\"") {
            return Err(format!(
                "watchman {json}: {} {}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(text)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.cmd(r#"["shutdown-server"]"#);
        std::thread::sleep(Duration::from_millis(100));
        if let Some(pid) = std::fs::read_to_string(&self.pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<libc::pid_t>().ok())
        {
            // SAFETY: signal 0 probes; SIGKILL only a server this bench started.
            unsafe {
                if libc::kill(pid, 0) == 0 {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// watchman's crawl of `home` (median of `runs`, a fresh server each) and one name query.
pub fn watchman(home: &Path, ids: &[String], runs: usize, scratch: &Path) -> Watchman {
    if Command::new("watchman").arg("--version").output().is_err() {
        return Watchman::Skipped("watchman is not installed (apt-get install watchman)".into());
    }
    match watchman_measure(home, ids, runs, scratch) {
        Ok(w) => w,
        Err(e) => Watchman::Skipped(e),
    }
}

fn watchman_measure(
    home: &Path,
    ids: &[String],
    runs: usize,
    scratch: &Path,
) -> Result<Watchman, String> {
    let home_s = home.to_string_lossy();
    let mut crawls = Vec::new();
    let mut queries = Vec::new();
    let mut versions = Vec::new();
    for run in 0..runs.max(1) {
        let dir = scratch.join(format!("watchman-{run}"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let server = Server::new(&dir);
        server.start()?;
        let t = Instant::now();
        server.cmd(&format!(r#"["watch", "{home_s}"]"#))?;
        // The first query waits for the crawl to settle.
        server.cmd(&format!(
            r#"["query", "{home_s}", {{"expression": ["name", "none"], "fields": ["name"], "sync_timeout": 600000}}]"#
        ))?;
        crawls.push(t.elapsed());
        if run == 0 {
            for id in ids {
                let q = format!(
                    r#"["query", "{home_s}", {{"expression": ["allof", ["type", "f"], ["match", "rollout-*{id}*", "basename"]], "fields": ["name"]}}]"#
                );
                let t = Instant::now();
                let out = server.cmd(&q)?;
                queries.push(t.elapsed());
                if !out.contains(id.as_str()) {
                    return Err(format!("watchman's query did not find {id}: {out}"));
                }
                let t = Instant::now();
                server.cmd(r#"["version"]"#)?;
                versions.push(t.elapsed());
            }
        }
    }
    let query_cli = stats::median(&mut queries);
    let query_server = query_cli.saturating_sub(stats::median(&mut versions));
    Ok(Watchman::Measured {
        crawl: stats::median(&mut crawls),
        query_cli,
        query_server,
    })
}

/// The name of the echo server's runtime threads, by which [`Echo::cpu`] finds them.
const ECHO_THREAD: &str = "rd-bench-echo";

/// A minimal tokio echo server on a Unix socket (the agent's kind of socket and runtime:
/// two workers), for the socket's own limit: every line read is written back. Runs on its
/// own threads in this process until dropped.
pub struct Echo {
    pub socket: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Echo {
    pub fn start(socket: &Path) -> Result<Echo, String> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let _ = std::fs::remove_file(socket);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(ECHO_THREAD)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::UnixListener::bind(socket).map_err(|e| e.to_string())?
        };
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut read = BufReader::new(read);
                    let mut line = Vec::with_capacity(256);
                    loop {
                        line.clear();
                        match read.read_until(b'\n', &mut line).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                        if write.write_all(&line).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Echo {
            socket: socket.to_owned(),
            runtime: Some(runtime),
        })
    }
}

impl Echo {
    /// user+system CPU of the echo server's threads so far (clock ticks' precision, as the
    /// agent's CPU is read): the server's own cost, without the clients in this process.
    pub fn cpu(&self) -> Duration {
        crate::proc::threads_cpu(std::process::id(), ECHO_THREAD)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_millis(500));
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The parse limit: reading every head byte the cold index reads (`bytes` per file, what
/// `rollout::inspect` counted), in 64 KiB reads on all cores as the crawl does, with no
/// parsing and no index. The caller warms the page cache first.
pub fn read_heads(files: &[(PathBuf, u64)]) -> Result<Duration, String> {
    use rayon::prelude::*;
    use std::io::Read;
    let t = Instant::now();
    let total: u64 = files
        .par_iter()
        .map_init(
            || vec![0u8; 64 << 10],
            |buf, (path, want)| -> Result<u64, String> {
                let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
                let mut got = 0u64;
                while got < *want {
                    match f.read(buf) {
                        Ok(0) => break,
                        Ok(n) => got += n as u64,
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok(got)
            },
        )
        .sum::<Result<u64, String>>()?;
    let took = t.elapsed();
    if total == 0 {
        return Err("no head bytes read".into());
    }
    Ok(took)
}
