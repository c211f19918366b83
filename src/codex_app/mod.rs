//! `rolloutd codex app-server`: a drop-in for `codex app-server` that starts it as a child
//! and relays stdio JSON-RPC both ways, checking every request that names a rollout path
//! (`thread/resume`, `thread/fork`) with rolloutd first.
//!
//! - [`line`]: which lines are checked, what server lines announce, the lines the shim writes;
//! - [`decide`]: forward, rewrite to the spelling Codex holds, refuse, or wait (pure);
//! - [`ask`]: the one adapter to rolloutd's answers (agent or index) and to Codex's state DB;
//! - [`relay`]: the two pumps;
//! - [`signals`]: signals passed on to Codex, and its exit status made the shim's;
//! - [`shared`] and [`ws`]: `--listen unix://PATH`, many clients relayed to one app-server
//!   over the WebSocket framing of Codex's own sockets.

pub mod ask;
pub mod decide;
pub mod line;
pub mod relay;
pub mod shared;
mod signals;
pub mod ws;

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::{Config, Overrides};
use relay::{Active, Checker, Upstream};

/// `rolloutd codex app-server [--codex-bin PATH] [--materialize-timeout D] [-- ARGS…]`
#[derive(Debug, clap::Args)]
pub struct AppServerArgs {
    /// The Codex binary [default: $ROLLOUTD_CODEX_BIN, else `codex` on PATH]
    #[arg(long, value_name = "PATH", env = "ROLLOUTD_CODEX_BIN")]
    pub codex_bin: Option<PathBuf>,
    /// How long a resume of a thread whose rollout is not written yet waits for it
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = humantime::parse_duration)]
    pub materialize_timeout: Duration,
    /// Shared mode: accept clients on `unix://PATH` (line-delimited JSON-RPC as on stdio, or
    /// the WebSocket framing of Codex's own sockets), each relayed to one app-server
    #[arg(long, value_name = "URL")]
    pub listen: Option<String>,
    /// Shared mode: relay to this running app-server socket (`unix://PATH`, e.g. the daemon's
    /// app-server-control.sock) instead of starting `codex app-server --listen`
    #[arg(long, value_name = "URL", requires = "listen")]
    pub upstream: Option<String>,
    /// Arguments passed to `codex app-server`
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<OsString>,
}

/// Exit status when Codex cannot be started (as a shell reports a command not run).
const CANNOT_RUN: u8 = 127;

/// Runs the shim until Codex exits; its exit status (or signal) becomes the shim's.
pub fn main(args: AppServerArgs, overrides: Overrides, socket: PathBuf) -> ExitCode {
    crate::logging::init("info");
    if let Some(listen) = args.listen.clone() {
        return shared::serve(args, overrides, socket, &listen);
    }
    // Before any thread exists, so every thread inherits the mask (the child's is cleared).
    let signals = signals::block();
    let bin = args
        .codex_bin
        .clone()
        .unwrap_or_else(|| PathBuf::from("codex"));
    let mut cmd = Command::new(&bin);
    signals::unblock_in_child(&mut cmd);
    let mut child = match cmd
        .arg("app-server")
        .args(&args.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // Its own process group: a terminal's Ctrl-C reaches the shim, which passes it on
        // once, instead of Codex getting it twice.
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "rolloutd: cannot start {} app-server: {e} (set --codex-bin or ROLLOUTD_CODEX_BIN)",
                bin.display()
            );
            return ExitCode::from(CANNOT_RUN);
        }
    };
    signals::forward(signals, child.id());

    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return ExitCode::from(CANNOT_RUN);
    };
    relay::widen_pipe(&stdout);
    let active = Active::default();
    let upstream: Upstream<std::process::ChildStdin> = Arc::new(Mutex::new(Some(stdin)));
    let client = Arc::new(Mutex::new(std::io::stdout()));

    let server_done = {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let client = client.clone();
        let upstream = upstream.clone();
        let active = active.clone();
        std::thread::spawn(move || {
            relay::pump_server(stdout, &client, &upstream, &active);
            let _ = tx.send(());
        });
        rx
    };
    {
        let client = client.clone();
        let upstream = upstream.clone();
        // Opened in the client pump's thread: Codex's first lines are relayed meanwhile.
        let materialize_timeout = args.materialize_timeout;
        std::thread::spawn(move || {
            let mut checker = Checker {
                ask: open_rolloutd(&overrides, &socket),
                active,
                materialize_timeout,
                cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
            };
            relay::pump_client(std::io::stdin(), &upstream, &client, &mut checker);
        });
    }

    let status = match child.wait() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rolloutd: waiting for codex app-server: {e}");
            return ExitCode::from(2);
        }
    };
    // Codex's last lines are relayed before the shim goes; a grandchild still holding the
    // pipe open does not keep the shim alive past this bound.
    let _ = server_done.recv_timeout(Duration::from_secs(2));
    signals::exit_like(status)
}

/// rolloutd's answers for the configured homes; without them every line is relayed
/// unchanged (the shim never makes Codex unusable), and a warning says why.
fn open_rolloutd(
    overrides: &Overrides,
    socket: &std::path::Path,
) -> Option<Box<dyn ask::Rolloutd>> {
    let opened = Config::load(overrides)
        .map_err(|e| e.to_string())
        .and_then(|config| ask::open(socket, &config));
    match opened {
        Ok(a) => match codex_home() {
            // rolloutd's answers are about its homes: for another one, every path would look
            // `outsideHome`, so nothing is checked rather than everything refused.
            Some(home) if a.homes().locate(&home).is_none() => {
                tracing::warn!(codex_home = %home.display(), "Codex's home is not one rolloutd serves (see --codex-home); relaying every request unchanged");
                None
            }
            _ => Some(a),
        },
        Err(e) => {
            tracing::warn!(error = %e, "rolloutd cannot check rollout paths; relaying every request unchanged");
            None
        }
    }
}

/// The home Codex will use, found as Codex finds it: `$CODEX_HOME` when set and not empty,
/// else `$HOME/.codex`.
fn codex_home() -> Option<PathBuf> {
    let home = match std::env::var_os("CODEX_HOME").filter(|v| !v.is_empty()) {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".codex"),
    };
    Some(crate::identity::normalize_lexically(&home))
}
