//! Shared mode: one long-running app-server, many clients. The shim listens on a Unix
//! socket; each client connection speaks line-delimited JSON-RPC (as over stdio), or
//! WebSocket as Codex's own sockets do when it opens with `GET`, and is relayed, with the
//! same checks, over its own WebSocket connection to the upstream socket:
//! either `codex app-server --listen unix://…` that the shim starts, or a socket that is
//! already served (`--upstream`, such as the daemon's `app-server-control.sock`).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::relay::{self, Active, Checker, Upstream};
use super::{open_rolloutd, signals, ws, AppServerArgs, CANNOT_RUN};
use crate::config::Overrides;

/// How long Codex gets to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// `unix://PATH` → PATH.
pub fn unix_path(url: &str) -> Result<PathBuf, String> {
    match url.strip_prefix("unix://") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(format!(
            "{url}: only unix://PATH is supported (Codex's ws:// transport needs no shim to share it)"
        )),
    }
}

/// Serves `listen` until Codex exits (or, with `--upstream`, until a signal).
pub fn serve(args: AppServerArgs, overrides: Overrides, socket: PathBuf, listen: &str) -> ExitCode {
    let blocked = signals::block();
    let listen = match unix_path(listen) {
        Ok(p) => p,
        Err(e) => return usage(&e),
    };
    let (upstream, mut child) = match args.upstream.as_deref().map(unix_path) {
        Some(Ok(p)) => (p, None),
        Some(Err(e)) => return usage(&e),
        None => {
            let private = private_socket(&socket);
            let bin = args
                .codex_bin
                .clone()
                .unwrap_or_else(|| PathBuf::from("codex"));
            let mut cmd = Command::new(&bin);
            signals::unblock_in_child(&mut cmd);
            let spawned = cmd
                .arg("app-server")
                .arg("--listen")
                .arg(format!("unix://{}", private.display()))
                .args(&args.args)
                .stdin(Stdio::null())
                .process_group(0)
                .spawn();
            match spawned {
                Ok(c) => (private, Some(c)),
                Err(e) => {
                    eprintln!("rolloutd: cannot start {} app-server: {e}", bin.display());
                    return ExitCode::from(CANNOT_RUN);
                }
            }
        }
    };
    if let Some(c) = &mut child {
        signals::forward(blocked, c.id());
        // Bounded: Codex creates the socket within START_TIMEOUT or has exited.
        let until = Instant::now() + START_TIMEOUT;
        while UnixStream::connect(&upstream).is_err() {
            if let Ok(Some(status)) = c.try_wait() {
                eprintln!(
                    "rolloutd: codex app-server exited before serving {}",
                    upstream.display()
                );
                return signals::exit_like(status);
            }
            if Instant::now() > until {
                eprintln!(
                    "rolloutd: codex app-server did not serve {} within {START_TIMEOUT:?}",
                    upstream.display()
                );
                let _ = c.kill();
                return ExitCode::from(CANNOT_RUN);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let listener = match bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("rolloutd: cannot listen on {}: {e}", listen.display());
            if let Some(c) = &mut child {
                let _ = c.kill();
            }
            return ExitCode::from(2);
        }
    };
    tracing::info!(listen = %listen.display(), upstream = %upstream.display(), "relaying app-server clients");
    let timeout = args.materialize_timeout;
    // One app-server holds one active path per thread, whichever client announced it.
    let active = Active::default();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let (overrides, socket, upstream, active) = (
                overrides.clone(),
                socket.clone(),
                upstream.clone(),
                active.clone(),
            );
            std::thread::spawn(move || {
                connection(client, &upstream, &overrides, &socket, timeout, active)
            });
        }
    });
    let code = match &mut child {
        Some(c) => match c.wait() {
            Ok(status) => Some(status),
            Err(e) => {
                eprintln!("rolloutd: waiting for codex app-server: {e}");
                None
            }
        },
        None => {
            let sig = signals::wait(blocked);
            tracing::info!(signal = sig, "stopping");
            None
        }
    };
    let _ = std::fs::remove_file(&listen);
    code.map(signals::exit_like).unwrap_or(ExitCode::SUCCESS)
}

fn usage(e: &str) -> ExitCode {
    eprintln!("rolloutd: {e}");
    ExitCode::from(2)
}

/// Codex's socket beside rolloutd's own, private to this shim.
fn private_socket(socket: &Path) -> PathBuf {
    let dir = socket.parent().unwrap_or(Path::new("/tmp"));
    let _ = std::fs::create_dir_all(dir);
    dir.join(format!("codex-app-server-{}.sock", std::process::id()))
}

/// Binds `path` (0600). A socket file nobody answers on is replaced; a live one is not.
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "another process serves this socket",
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// One client, relayed until either side closes.
fn connection(
    client: UnixStream,
    upstream: &Path,
    overrides: &Overrides,
    socket: &Path,
    materialize_timeout: Duration,
    active: Active,
) {
    let (reader, writer) = match ws::connect(upstream) {
        Ok(halves) => halves,
        Err(e) => {
            tracing::warn!(upstream = %upstream.display(), error = %e, "cannot reach the app-server; closing the client");
            return;
        }
    };
    let Ok(raw) = client.try_clone() else {
        return;
    };
    let Some((client_in, client_out)) = client_halves(client) else {
        return;
    };
    let mut checker = Checker {
        ask: open_rolloutd(overrides, socket),
        active,
        materialize_timeout,
        cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
    };
    let out = Arc::new(Mutex::new(client_out));
    let up: Upstream<ws::LineWriter> = Arc::new(Mutex::new(Some(writer)));
    let server = {
        let (out, up, active) = (out.clone(), up.clone(), checker.active.clone());
        std::thread::spawn(move || {
            relay::pump_server(reader, &out, &up, &active);
            // Codex closed this connection: so does the client (a WebSocket client gets its
            // close frame when `out` drops).
            drop(out);
            let _ = raw.shutdown(std::net::Shutdown::Both);
        })
    };
    relay::pump_client(client_in, &up, &out, &mut checker);
    drop(out);
    let _ = server.join();
}

type Halves = (Box<dyn Read + Send>, Box<dyn Write + Send>);

/// The client's input and output as lines. A client that opens with `GET ` is one written
/// for Codex's own sockets: it gets the same WebSocket framing; any other speaks lines.
fn client_halves(mut client: UnixStream) -> Option<Halves> {
    let mut first = [0u8; 1];
    // The first byte tells; it is read (not peeked, which std does not offer on Unix
    // sockets), so a line client gets it back in front of the rest.
    if client.read_exact(&mut first).is_err() {
        return None;
    }
    if first[0] == b'G' {
        // The request line is not needed, only the headers after it.
        return match ws::accept(client) {
            Ok((r, w)) => Some((Box::new(r), Box::new(w))),
            Err(e) => {
                tracing::warn!(error = %e, "a client's WebSocket upgrade failed");
                None
            }
        };
    }
    let out = client.try_clone().ok()?;
    Some((
        Box::new(std::io::Cursor::new(first).chain(client)),
        Box::new(out),
    ))
}
