//! The long-running agent, wiring only: it builds the shared state ([`crate::live`]),
//! starts the watcher and the server, and runs until SIGTERM or SIGINT fire the one
//! shutdown token. SIGHUP reloads the config.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::config::{Config, ConfigError, Overrides};
use crate::identity::Homes;
use crate::index::{Change, Index, IndexError, Journal, ThreadChange};
use crate::live::{ChangeObserver, HangGuard, Shared};
use crate::server::{self, socket};
use crate::watch::{self, WatchOptions};

/// How to run the agent.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub overrides: Overrides,
    pub socket: PathBuf,
    pub watch: WatchOptions,
    pub server: server::Limits,
}

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Start(#[from] socket::StartError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Activation(#[from] crate::service::activation::ActivationError),
}

/// Where the index goes: as configured, unless that is on a network or FUSE filesystem,
/// where SQLite's WAL (shared memory, byte-range locks) is unsafe; then a private directory
/// on local disk. WAL is used only where the index lands on a local filesystem; should the
/// fallback be remote too, the index keeps a rollback journal.
///
/// The mount table is asked first, so an index directory on a mount that hangs (a stopped
/// FUSE daemon) is left alone rather than stat'ed; only a spelling the table cannot place
/// (through a symlink) is stat'ed.
pub fn index_location(configured: &Path) -> (PathBuf, Journal) {
    match network_dir_of(configured) {
        Some(fs) => {
            let local = local_index();
            tracing::warn!(configured = %configured.display(), fs, local = %local.0.display(), "index directory is on a network filesystem; keeping the index on local disk");
            local
        }
        None => (configured.to_owned(), Journal::Wal),
    }
}

/// The network or FUSE filesystem the directory of `file` is on (the mount table first, then
/// `statfs` of its nearest existing ancestor); `None` for a local one.
fn network_dir_of(file: &Path) -> Option<&'static str> {
    let dir = file.parent().unwrap_or(Path::new("/"));
    watch::network_filesystem_as_spelled(&crate::identity::normalize_lexically(dir)).or_else(|| {
        std::iter::successors(Some(dir), |d| d.parent())
            .find(|d| d.exists())
            .and_then(watch::network_filesystem)
    })
}

/// The index on local disk, beside the socket, for when the configured place is not fit.
fn local_index() -> (PathBuf, Journal) {
    let local = socket::default_path().with_file_name("index.sqlite");
    match network_dir_of(&local) {
        Some(fs) => {
            tracing::warn!(local = %local.display(), fs, "the local index directory is on a network filesystem too; using a rollback journal, not WAL");
            (local, Journal::Delete)
        }
        None => (local, Journal::Wal),
    }
}

/// [`index_location`] on the hang guard's threads, within `timeout`: an index directory
/// whose filesystem does not answer (reached through a symlink onto a hung mount, which the
/// mount table cannot place) is taken as a network one, and the index kept on local disk.
fn index_location_within(
    hang: &Arc<HangGuard>,
    configured: &Path,
    timeout: Duration,
) -> (PathBuf, Journal) {
    let dir = configured.parent().unwrap_or(Path::new("/"));
    let asked = configured.to_owned();
    let key = watch::unresolved_guard(dir);
    hang.bounded_within(&key, timeout, move || index_location(&asked))
        .unwrap_or_else(|| {
            let local = local_index();
            tracing::warn!(configured = %configured.display(), timeout = ?timeout, local = %local.0.display(), "the index directory's filesystem does not answer; keeping the index on local disk");
            local
        })
}

/// The runtime's workers, where requests are read, answered from a reader and written:
/// one on a machine of two CPUs or fewer, else two. On two vCPUs a second worker only added
/// wake-ups across the cores that the clients (and the watcher) need: with one, the agent's
/// CPU per `thread/resolve` under 8 clients fell from 27.5 to 21.2 µs at 50,000 threads,
/// with the same throughput and a lower `thread/list` p99 (BENCHMARKS.md, round 6).
fn runtime_workers() -> usize {
    match std::thread::available_parallelism().map_or(1, |n| n.get()) {
        0..=2 => 1,
        _ => 2,
    }
}

/// Opens the query readers, one per runtime worker (which is where they run); without them
/// (a failure is logged) queries use the writer.
fn open_readers(writer: &Index) -> Vec<Index> {
    (0..runtime_workers())
        .map_while(|_| match writer.open_reader_beside() {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(error = %e, "no read-only index connection; queries share the writer");
                None
            }
        })
        .collect()
}

/// The config as the agent loads it at start: each home's realpath is asked under the
/// config's `server.fs_timeout` on `hang`'s threads, as a home's filesystem may hang; one
/// that does not answer is taken as configured.
pub fn load_config(overrides: &Overrides, hang: &Arc<HangGuard>) -> Result<Config, ConfigError> {
    Config::load_resolving(overrides, &|path, fs_timeout| {
        watch::realpath_within(hang, path, fs_timeout)
    })
}

/// Runs the agent in the foreground until a stop signal, with `config` as [`load_config`]
/// loaded it on `hang` (which keeps the homes that did not answer then).
pub fn run(opts: AgentOptions, config: Config, hang: Arc<HangGuard>) -> Result<(), AgentError> {
    // A file-size limit (RLIMIT_FSIZE) must make an index write fail with EFBIG, which the
    // index reports as degraded, rather than kill the agent with SIGXFSZ.
    // SAFETY: setting a signal to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let (index_path, journal) = index_location_within(&hang, &config.index, opts.server.fs_timeout);
    let _lock = socket::lock_instance(&index_path)?;
    // A socket handed over by systemd/launchd is served as is; ours is never made.
    let activated = crate::service::activation::take()?;
    if activated.is_none() {
        socket::prepare_dir(&opts.socket)?;
    }
    let index = Index::open(&index_path, journal)?;
    hang.set_timeout(opts.server.fs_timeout);
    let (homes, guarded) = watch::resolve_homes(&hang, &config.homes, &config.aliases, None);
    hang.set_homes(guarded);
    let auto_repair = Arc::new(AtomicBool::new(config.codex_state.auto_repair));
    let observer = follow_moves(Arc::clone(&auto_repair));
    let readers = open_readers(&index);
    let mut shared = Shared::new(homes, index, Some(observer))
        .with_readers(readers)
        .with_read_batches();
    shared.hang = hang;
    let shared = Arc::new(shared);
    let parking = Arc::clone(&shared);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_workers())
        // The requests a worker answers share a reader's snapshot until a write passes it;
        // one a write passed ends before the worker waits (and on the writer's commit).
        .on_thread_park(move || parking.end_outdated_read_batches())
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    let served = runtime.block_on(serve(shared, opts, index_path, activated, auto_repair));
    // Dropping a runtime waits for its blocking tasks without limit (a query's reconcile, the
    // watcher's join): a stop must not hang on one, so they get a bounded grace instead.
    runtime.shutdown_timeout(Duration::from_millis(500));
    served
}

/// `codex_state.auto_repair`: every archive or unarchive the index commits, whoever wrote
/// it, is followed in Codex's state DB (off the writer's thread).
fn follow_moves(enabled: Arc<AtomicBool>) -> ChangeObserver {
    Box::new(move |homes: &Homes, changes: &[Change]| {
        if !enabled.load(Ordering::Relaxed) {
            return;
        }
        let moves: Vec<crate::codex_state::Move> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Thread {
                    kind: kind @ (ThreadChange::Archived | ThreadChange::Unarchived),
                    file,
                    previous_path: Some(from),
                } => Some(crate::codex_state::Move {
                    thread_id: file.head.thread_id.clone(),
                    from: from.clone(),
                    to: file.path.clone(),
                    archived: *kind == ThreadChange::Archived,
                }),
                _ => None,
            })
            .collect();
        crate::codex_state::follow::follow_in_background(homes.clone(), moves);
    })
}

async fn serve(
    shared: Arc<Shared>,
    opts: AgentOptions,
    index_path: PathBuf,
    activated: Option<crate::service::activation::Activated>,
    auto_repair: Arc<AtomicBool>,
) -> Result<(), AgentError> {
    let (listener, _socket_guard) = match activated {
        Some(a) => {
            let listener =
                tokio::net::UnixListener::from_std(a.listener).map_err(AgentError::Runtime)?;
            let path = listener
                .local_addr()
                .ok()
                .and_then(|a| a.as_pathname().map(Path::to_owned));
            tracing::info!(manager = ?a.manager, socket = ?path, index = %index_path.display(), "rolloutd listening on the socket the service manager passed");
            // The manager owns that socket file: no guard removes it.
            (listener, None)
        }
        None => {
            let listener = socket::bind(&opts.socket)?;
            tracing::info!(socket = %opts.socket.display(), index = %index_path.display(), "rolloutd listening");
            // Removes the socket however we leave (drop guard).
            (listener, Some(SocketGuard(opts.socket.clone())))
        }
    };

    let notifier = crate::service::readiness::Notifier::from_env();
    notifier.starting(shared.homes().homes.len());
    let watchdog = tokio::spawn(Arc::clone(&notifier).watchdog());
    let status_updates = tokio::spawn(Arc::clone(&notifier).status_updates(Arc::clone(&shared)));
    let on_ready = {
        let (notifier, shared) = (Arc::clone(&notifier), Arc::clone(&shared));
        Box::new(move || {
            tracing::info!("first reconcile done; ready");
            notifier.ready(&shared);
        })
    };
    let watcher =
        watch::spawn(Arc::clone(&shared), opts.watch, on_ready).map_err(AgentError::Runtime)?;

    let (shutdown_complete, mut all_closed) = mpsc::channel::<()>(1);
    let listener = server::Listener {
        listener,
        shared: Arc::clone(&shared),
        limits: opts.server,
        shutdown: shared.shutdown.clone(),
        shutdown_complete,
    };
    let server = tokio::spawn(listener.run());

    let mut term = signal(SignalKind::terminate()).map_err(AgentError::Runtime)?;
    let mut int = signal(SignalKind::interrupt()).map_err(AgentError::Runtime)?;
    let mut hup = signal(SignalKind::hangup()).map_err(AgentError::Runtime)?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&shared, &opts.overrides, &auto_repair),
        }
    }
    tracing::info!("stopping");
    shared.shutdown.cancel();
    notifier.stopping();
    status_updates.abort();
    // Stop accepting, then wait for every connection to finish its in-flight requests
    // (their handlers hold `shutdown_complete` clones), within the 2 s budget.
    let _ = tokio::time::timeout(Duration::from_millis(1800), async {
        let _ = server.await;
        let _ = all_closed.recv().await;
    })
    .await;
    // The watcher notices `stop` within its check interval; never wait past the budget.
    let joined = tokio::task::spawn_blocking(move || watcher.join());
    let _ = tokio::time::timeout(Duration::from_millis(700), joined).await;
    watchdog.abort();
    Ok(())
}

/// SIGHUP: re-read the config; new homes take effect at once (the watcher sees the
/// change and re-establishes its watches). A home whose filesystem does not answer costs
/// the reload `server.fs_timeout` at most once, and keeps its earlier resolution.
fn reload(shared: &Shared, overrides: &Overrides, auto_repair: &AtomicBool) {
    // Within the running `server.fs_timeout`: a new one takes effect at the next start.
    let hang = &shared.hang;
    let loaded = Config::load_resolving(overrides, &|path, _| {
        watch::realpath_within(hang, path, hang.timeout())
    });
    match loaded {
        Ok(config) => {
            let (homes, guarded) = watch::resolve_homes(
                &shared.hang,
                &config.homes,
                &config.aliases,
                Some(&shared.homes()),
            );
            shared.hang.set_homes(guarded);
            shared.set_homes(homes);
            auto_repair.store(config.codex_state.auto_repair, Ordering::Relaxed);
            tracing::info!(homes = ?config.homes, "config reloaded");
        }
        Err(e) => tracing::error!(error = %e, "config reload failed; keeping the running config"),
    }
}

struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
