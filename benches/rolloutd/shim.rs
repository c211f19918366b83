//! `rolloutd codex app-server`'s cost: the latency it adds per relayed line and the
//! throughput of a relayed stream of server notifications, each against a direct pipe to
//! the same stand-in upstream (`/bin/sh` running `cat` or `cat FILE`), so only the shim
//! differs. The shim has no agent and checks nothing on these lines: this is the relay.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::stats::percentile;

/// Round trips timed for the latency figure (after a warm-up).
const ROUND_TRIPS: usize = 5_000;
/// Notifications in the throughput stream.
const NOTIFICATIONS: usize = 100_000;
/// Streams timed per way (interleaved, medians reported): one stream takes milliseconds,
/// so one run is at the mercy of whatever else the machine schedules then.
const STREAM_RUNS: usize = 15;

pub struct Figures {
    /// Added per relayed line: (round trip through the shim − direct) ÷ 2, at p50 and p99.
    pub added_p50: Duration,
    pub added_p99: Duration,
    pub direct_rtt_p50: Duration,
    pub shim_rtt_p50: Duration,
    /// Lines per second through the shim, through a direct pipe, and through a direct pipe
    /// with `cat` relaying in the middle (the cost of any extra process on the way): medians.
    pub shim_lines_per_s: f64,
    pub direct_lines_per_s: f64,
    pub cat_relay_lines_per_s: f64,
    /// The shim's share of the direct pipe in each interleaved run: (min, median, max).
    pub share_spread: (f64, f64, f64),
}

fn write_script(path: &Path, body: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).map_err(|e| e.to_string())?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())
}

/// The upstream alone (`sh SCRIPT app-server`), or behind the shim.
fn spawn(root: &Path, script: &Path, shim: bool) -> Result<Child, String> {
    let mut c = if shim {
        let mut c = Command::new(crate::proc::bin());
        c.arg("--codex-home")
            .arg(root.join("codex"))
            .arg("--index")
            .arg(root.join("shim-index.sqlite"))
            .args(["codex", "app-server", "--codex-bin"])
            .arg(script)
            .env("XDG_RUNTIME_DIR", root.join("shim-run"))
            .env("XDG_CONFIG_HOME", root.join("shim-config"))
            .env("RUST_LOG", "warn");
        c
    } else {
        let mut c = Command::new(script);
        c.arg("app-server");
        c
    };
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning: {e}"))
}

/// Round-trip times of one line through `cat`, one at a time.
fn round_trips(root: &Path, script: &Path, shim: bool) -> Result<Vec<Duration>, String> {
    let mut child = spawn(root, script, shim)?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
    let line = br#"{"method":"item/agentMessage/delta","params":{"threadId":"01a1ff7d-4aab-7f60-bd31-0e4a5bf4615c","turnId":"1","itemId":"m","delta":"Hello"}}"#;
    let mut got = Vec::with_capacity(line.len() + 1);
    let mut out = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS + 500 {
        let t = Instant::now();
        stdin.write_all(line).map_err(|e| e.to_string())?;
        stdin.write_all(b"\n").map_err(|e| e.to_string())?;
        got.clear();
        if stdout
            .read_until(b'\n', &mut got)
            .map_err(|e| e.to_string())?
            == 0
        {
            return Err("the upstream closed early".into());
        }
        if i >= 500 {
            out.push(t.elapsed());
        }
    }
    drop(stdin);
    let _ = child.wait();
    Ok(out)
}

/// Lines per second of a stream of `NOTIFICATIONS` lines, from the first byte to the last.
fn stream(root: &Path, script: &Path, shim: bool, bytes: usize) -> Result<f64, String> {
    let mut child = spawn(root, script, shim)?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    // The upstream streams once it reads this line, which the shim relays only once it has
    // opened rolloutd's index: its start-up work is not timed as relaying.
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    stdin
        .write_all(b"{\"method\":\"initialized\"}\n")
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 1 << 16];
    let mut seen = 0usize;
    let mut first = None;
    while seen < bytes {
        let n = stdout.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("stream ended after {seen} of {bytes} bytes"));
        }
        first.get_or_insert_with(Instant::now);
        seen += n;
    }
    let elapsed = first.map(|f| f.elapsed()).unwrap_or_default();
    drop(stdin);
    let _ = child.wait();
    Ok(NOTIFICATIONS as f64 / elapsed.as_secs_f64().max(1e-9))
}

pub fn figures(root: &Path) -> Result<Figures, String> {
    std::fs::create_dir_all(root.join("codex")).map_err(|e| e.to_string())?;
    let echo = root.join("upstream-echo");
    write_script(&echo, "exec cat")?;
    let stream_file = root.join("notifications.jsonl");
    let mut text = Vec::new();
    for i in 0..NOTIFICATIONS {
        writeln!(
            text,
            r#"{{"method":"item/agentMessage/delta","params":{{"threadId":"01a1ff7d-4aab-7f60-bd31-0e4a5bf4615c","turnId":"1","itemId":"m","delta":"token {i}"}}}}"#
        )
        .map_err(|e| e.to_string())?;
    }
    std::fs::write(&stream_file, &text).map_err(|e| e.to_string())?;
    let streamer = root.join("upstream-stream");
    write_script(
        &streamer,
        &format!(
            "read -r go; cat '{}'; cat >/dev/null",
            stream_file.display()
        ),
    )?;
    let cat_relay = root.join("upstream-stream-via-cat");
    write_script(
        &cat_relay,
        &format!(
            "read -r go; cat '{}' | cat; cat >/dev/null",
            stream_file.display()
        ),
    )?;

    let mut direct = round_trips(root, &echo, false)?;
    let mut shim = round_trips(root, &echo, true)?;
    let (d50, d99) = (percentile(&mut direct, 50.0), percentile(&mut direct, 99.0));
    let (s50, s99) = (percentile(&mut shim, 50.0), percentile(&mut shim, 99.0));
    let (mut direct, mut shim, mut cat, mut shares) = (vec![], vec![], vec![], vec![]);
    for _ in 0..STREAM_RUNS {
        let d = stream(root, &streamer, false, text.len())?;
        let s = stream(root, &streamer, true, text.len())?;
        cat.push(stream(root, &cat_relay, false, text.len())?);
        shares.push(s / d.max(1e-9));
        direct.push(d);
        shim.push(s);
    }
    let shim_lines_per_s = median(&mut shim);
    let direct_lines_per_s = median(&mut direct);
    let cat_relay_lines_per_s = median(&mut cat);
    let share_median = median(&mut shares);
    let share_spread = (shares[0], share_median, shares[shares.len() - 1]);
    Ok(Figures {
        added_p50: s50.saturating_sub(d50) / 2,
        added_p99: s99.saturating_sub(d99) / 2,
        direct_rtt_p50: d50,
        shim_rtt_p50: s50,
        shim_lines_per_s,
        direct_lines_per_s,
        cat_relay_lines_per_s,
        share_spread,
    })
}

/// Sorts `v` and returns its median.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
