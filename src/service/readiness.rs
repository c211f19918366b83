//! Telling the service manager how the agent is doing (sd_notify): `STATUS=` while it
//! starts, `READY=1` with the counts once the first reconcile is done, `WATCHDOG=1` at half
//! of `WatchdogSec`, and `STOPPING=1` on the way out. Outside systemd (no `NOTIFY_SOCKET`)
//! every call is a no-op.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::live::Shared;

/// The least time between two refreshes of the `STATUS=` line after the agent is ready.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// How long `READY=1` is retried while the manager's queue is full.
const READY_PATIENCE: Duration = Duration::from_secs(2);
/// The pause between two tries.
const RETRY: Duration = Duration::from_millis(20);

/// The agent's connection to the service manager.
#[derive(Debug)]
pub struct Notifier {
    enabled: bool,
    /// Half of `WATCHDOG_USEC`, when systemd asked for pings.
    watchdog: Option<Duration>,
    warned: AtomicBool,
}

impl Notifier {
    pub fn from_env() -> Arc<Notifier> {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some_and(|v| !v.is_empty());
        Arc::new(Notifier {
            enabled,
            watchdog: sd_notify::watchdog_enabled()
                .filter(|d| !d.is_zero())
                .map(|d| d / 2),
            warned: AtomicBool::new(false),
        })
    }

    /// How often `WATCHDOG=1` is sent, if at all.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.enabled)
    }

    /// Sends `states` in one datagram, never blocking: a manager that does not read (a
    /// stalled one, or a `NOTIFY_SOCKET` leaked from another service) must not stall the
    /// thread that reports. While its queue is full (10 datagrams by default) the line is
    /// retried for up to `patience`, then dropped.
    fn send(&self, states: &[NotifyState<'_>], patience: Duration) {
        if !self.enabled {
            return;
        }
        let mut msg = String::new();
        for s in states {
            msg.push_str(&s.to_string());
            msg.push('\n');
        }
        let started = std::time::Instant::now();
        let sent = loop {
            match send_now(&msg) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && started.elapsed() < patience => {
                    std::thread::sleep(RETRY);
                }
                other => break other,
            }
        };
        if let Err(e) = sent {
            // Once: a manager that went away would otherwise flood the log.
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot notify the service manager");
            }
        }
    }

    /// Before the first reconcile.
    pub fn starting(&self, homes: usize) {
        self.send(
            &[NotifyState::Status(&format!(
                "indexing {homes} Codex home(s)"
            ))],
            Duration::ZERO,
        );
    }

    /// After the first reconcile: `READY=1` and the counts in one datagram.
    pub fn ready(&self, shared: &Shared) {
        // The one line the manager waits for: worth a short wait (this is the watcher's
        // thread, not the runtime's).
        self.send(
            &[
                NotifyState::Ready,
                NotifyState::Status(&status_line(shared)),
            ],
            READY_PATIENCE,
        );
    }

    pub fn stopping(&self) {
        self.send(
            &[NotifyState::Stopping, NotifyState::Status("stopping")],
            Duration::ZERO,
        );
    }

    /// Pings the watchdog from the runtime, so a wedged runtime stops the pings and systemd
    /// restarts the agent. Runs until the task is dropped.
    pub async fn watchdog(self: Arc<Self>) {
        let Some(every) = self.watchdog_interval() else {
            return;
        };
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.send(&[NotifyState::Watchdog], Duration::ZERO);
        }
    }

    /// Keeps `STATUS=` current once the agent is ready: refreshed after the index changes,
    /// at most every [`STATUS_EVERY`], so an agent with nothing to do never wakes for it.
    pub async fn status_updates(self: Arc<Self>, shared: Arc<Shared>) {
        if !self.enabled {
            return;
        }
        let mut last = String::new();
        loop {
            // Every committed write signals it, so no signal means unchanged counts.
            shared.changed.notified().await;
            tokio::time::sleep(STATUS_EVERY).await;
            if !shared.is_ready() {
                continue;
            }
            let s = Arc::clone(&shared);
            let Ok(line) = tokio::task::spawn_blocking(move || status_line(&s)).await else {
                continue;
            };
            if line != last {
                self.send(&[NotifyState::Status(&line)], Duration::ZERO);
                last = line;
            }
        }
    }
}

/// `1234 threads (1300 files, 120 archived), 3 problems; watching with inotify`, and the
/// homes whose filesystem does not answer.
pub fn status_line(shared: &Shared) -> String {
    let watch = shared
        .watch
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .backend
        .clone();
    // A reader of its own, when there is one: the writer may be busy with a crawl batch, and
    // the runtime's readers are for requests.
    let counts = shared.offloaded_query(|q| q.index.counts());
    let silent: Vec<String> = shared
        .hang
        .all()
        .iter()
        .filter(|h| shared.hang.stuck_for(&h.configured).is_some())
        .map(|h| h.configured.display().to_string())
        .collect();
    let silent = if silent.is_empty() {
        String::new()
    } else {
        format!("; not answering: {}", silent.join(", "))
    };
    match counts {
        Ok(c) => format!(
            "{} threads ({} files, {} archived), {} problems; watching with {watch}{silent}",
            c.threads, c.files, c.archived, c.problems
        ),
        Err(e) => format!("ready; counts unavailable: {e}"),
    }
}

/// One datagram to `$NOTIFY_SOCKET`, without blocking (`sd_notify::notify` blocks while the
/// manager's queue is full).
fn send_now(msg: &str) -> io::Result<()> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(());
    };
    let addr = notify_addr(&path)?;
    let sock = UnixDatagram::unbound()?;
    sock.set_nonblocking(true)?;
    let sent = sock.send_to_addr(msg.as_bytes(), &addr)?;
    if sent != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "incomplete datagram",
        ));
    }
    Ok(())
}

/// A path, or `@name` for a Linux abstract socket, as systemd writes it.
fn notify_addr(path: &std::ffi::OsStr) -> io::Result<SocketAddr> {
    #[cfg(target_os = "linux")]
    {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::ffi::OsStrExt;
        if let Some(name) = path.as_bytes().strip_prefix(b"@") {
            return SocketAddr::from_abstract_name(name);
        }
    }
    SocketAddr::from_pathname(std::path::Path::new(path))
}
