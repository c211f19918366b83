//! A deadline for query commands. A Codex home on a hung FUSE or network filesystem blocks
//! any `stat` under it (loading the config canonicalizes every home; answering from the
//! index stats the files) and such a call cannot be cancelled, so a watchdog thread ends the
//! process instead: one line naming the home (or the index's directory) that does not
//! answer, exit 2.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

/// The default deadline: more than the agent's 1 s to accept plus 5 s to answer, so the
/// fallback to the index after a silent agent still fits.
pub const DEFAULT: Duration = Duration::from_secs(10);

/// The variable that changes it (a duration: `3s`, `500ms`).
pub const ENV: &str = "ROLLOUTD_CLI_TIMEOUT";

/// The homes the command looks at, for the message.
static HOMES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// The directory of the index the command opens, when known.
static INDEX_DIR: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Names the homes the command will look at (as configured), for the message at expiry.
pub fn homes(homes: &[PathBuf]) {
    *HOMES.lock().unwrap_or_else(PoisonError::into_inner) = homes.to_vec();
}

/// Names the index the command opens: its directory may be on a mount that hangs too. One
/// configured on a mount the table names as FUSE or network is kept on local disk instead
/// ([`crate::agent::index_location`]), so that directory is never opened or probed.
pub fn index(index: &Path) {
    let dir = index
        .parent()
        .map(crate::identity::normalize_lexically)
        .filter(|d| crate::watch::network_filesystem_as_spelled(d).is_none());
    *INDEX_DIR.lock().unwrap_or_else(PoisonError::into_inner) = dir;
}

/// The deadline from the environment, else [`DEFAULT`].
pub fn from_env() -> Result<Duration, String> {
    match std::env::var(ENV) {
        Ok(v) if !v.trim().is_empty() => humantime::parse_duration(v.trim())
            .map_err(|e| format!("{ENV}={v:?} is not a duration: {e}"))
            .and_then(|d| {
                if d.is_zero() {
                    Err(format!("{ENV} must be more than 0"))
                } else {
                    Ok(d)
                }
            }),
        _ => Ok(DEFAULT),
    }
}

/// Starts the watchdog: each time `limit` passes with the command still running, it looks
/// at the homes, and when one does not respond it prints why and exits 2 (with `json`, the
/// error document on stdout too). A command that is only slow (a first index of a large
/// home, without the agent) is left to finish.
pub fn arm(limit: Duration, json: bool) {
    let spawned = std::thread::Builder::new()
        .name("deadline".into())
        .spawn(move || loop {
            std::thread::sleep(limit);
            let homes = HOMES.lock().unwrap_or_else(PoisonError::into_inner).clone();
            let index = INDEX_DIR.lock().unwrap_or_else(PoisonError::into_inner).clone();
            // A home's rollout directories too: one may be a mount of its own (archives kept
            // on a NAS), which a listing of the home does not reach.
            let mut paths: Vec<(&str, PathBuf)> = Vec::new();
            for h in homes {
                let dirs = [crate::identity::SESSIONS_DIR, crate::identity::ARCHIVED_DIR];
                let dirs = dirs.map(|d| ("Codex rollout directory", h.join(d)));
                paths.push(("Codex home", h));
                paths.extend(dirs);
            }
            paths.extend(index.map(|i| ("the index's directory", i)));
            let hung = unresponsive(paths);
            if hung.is_empty() {
                continue;
            }
            let message = format!(
                "gave up after {}: the filesystem of {} does not respond (a stopped FUSE daemon or a lost network mount?)",
                humantime::format_duration(limit),
                hung.join(", ")
            );
            super::note(&message);
            if json {
                let doc = serde_json::json!({
                    "error": {
                        "reason": crate::protocol::ErrorReason::FilesystemUnresponsive.as_str(),
                        "message": message,
                    }
                });
                let _ = std::io::Write::write_all(
                    &mut std::io::stdout(),
                    format!("{doc}\n").as_bytes(),
                );
            }
            // The main thread may be blocked in the kernel on the hung mount: exit without
            // waiting for it (a FUSE or NFS wait ends on the process's exit).
            std::process::exit(2);
        });
    if let Err(e) = spawned {
        super::note(&format!("warning: no deadline for this command: {e}"));
    }
}

/// The paths (what each is, and where) that do not respond, each with its filesystem from
/// the mount table: each is listed on a thread of its own ([`crate::live::reach`]), and
/// those still blocked after a moment are named.
fn unresponsive(paths: Vec<(&str, PathBuf)>) -> Vec<String> {
    let probes: Vec<_> = paths
        .into_iter()
        .map(|(what, home)| {
            let (tx, rx) = std::sync::mpsc::channel();
            let probe = home.clone();
            let _ = std::thread::Builder::new().spawn(move || {
                crate::live::reach(&probe);
                let _ = tx.send(());
            });
            (what, home, rx)
        })
        .collect();
    let wait_until = std::time::Instant::now() + Duration::from_millis(300);
    let hung: Vec<(&str, PathBuf)> = probes
        .into_iter()
        .filter(|(_, _, rx)| {
            rx.recv_timeout(wait_until.saturating_duration_since(std::time::Instant::now()))
                .is_err()
        })
        .map(|(what, path, _)| (what, path))
        .collect();
    // A directory inside a hung one is not named again.
    let named: Vec<(&str, PathBuf)> = hung
        .iter()
        .filter(|(_, p)| {
            !hung
                .iter()
                .any(|(_, above)| above != p && p.starts_with(above))
        })
        .cloned()
        .collect();
    named
        .into_iter()
        .map(|(what, path)| {
            let fs = crate::watch::mount_type_as_spelled(&path)
                .unwrap_or_else(|| "unknown filesystem".to_owned());
            format!("{what} {} ({fs})", path.display())
        })
        .collect()
}
