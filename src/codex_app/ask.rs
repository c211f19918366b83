//! The shim's only way to rolloutd's answers: [`Rolloutd`]. Today it is the running agent
//! when one serves the same homes and index, else the index read in process, both through
//! the existing query code; re-point [`open`] at another client and nothing else changes.
//!
//! Also what Codex itself holds for a thread, read through [`crate::codex_state`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{Client, ClientError};
use crate::config::Config;
use crate::identity::Homes;
use crate::index::Index;
use crate::query::{CheckResume, Queries};
use crate::rollout::HeadLimits;

/// What the shim asks rolloutd.
pub trait Rolloutd: Send {
    /// The homes rolloutd serves (for spelling decisions).
    fn homes(&self) -> &Homes;
    /// `thread/checkResume`.
    fn check_resume(&mut self, thread_id: &str, path: &Path) -> Result<CheckResume, String>;
    /// Blocks until `thread_id`'s rollout exists or `timeout` passes (`thread/wait`); the
    /// caller checks again either way.
    fn wait(&mut self, thread_id: &str, path: &Path, timeout: Duration);
}

/// The agent on `socket` when it serves `config`'s homes and index, else the index.
pub fn open(socket: &Path, config: &Config) -> Result<Box<dyn Rolloutd>, String> {
    let homes = Homes::new(&config.homes, &config.aliases);
    let (index_path, journal) = crate::agent::index_location(&config.index);
    if let Some(client) = matching_agent(socket, config, &index_path) {
        tracing::debug!(socket = %socket.display(), "checking paths with the agent");
        return Ok(Box::new(Agent {
            client,
            homes,
            socket: socket.to_owned(),
        }));
    }
    // An index an agent owns (serving other homes, or not answering) is only read: its
    // owner alone writes it, so it misses no change.
    let index = match crate::server::socket::index_owner(&index_path) {
        Some(_) => Index::open_guest(&index_path),
        None => Index::open(&index_path, journal),
    }
    .map_err(|e| e.to_string())?;
    tracing::debug!(index = %index_path.display(), "no agent serves these homes; checking paths against the index");
    Ok(Box::new(Direct { homes, index }))
}

/// Connects and checks, with `index/status`, that the agent indexes the same homes into the
/// same index (another agent would answer about other homes).
fn matching_agent(socket: &Path, config: &Config, index_path: &Path) -> Option<Client> {
    let mut client = Client::connect(socket).ok()?;
    let status = client.call("index/status", json!({})).ok()?;
    let homes: Vec<PathBuf> = serde_json::from_value(status.get("homes")?.clone()).ok()?;
    let index: PathBuf = serde_json::from_value(status.get("index")?.clone()).ok()?;
    (homes == config.homes && index == index_path).then_some(client)
}

struct Agent {
    client: Client,
    homes: Homes,
    socket: PathBuf,
}

impl Agent {
    /// One call; a broken connection (the agent restarted) is reopened once.
    fn call(
        &mut self,
        method: &str,
        params: serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        match self.client.call(method, params.clone()) {
            Err(ClientError::Io(_)) => {
                self.client = Client::connect(&self.socket)?;
                self.client.call(method, params)
            }
            other => other,
        }
    }
}

impl Rolloutd for Agent {
    fn homes(&self) -> &Homes {
        &self.homes
    }

    fn check_resume(&mut self, thread_id: &str, path: &Path) -> Result<CheckResume, String> {
        let v = self
            .call(
                "thread/checkResume",
                json!({"threadId": thread_id, "path": path}),
            )
            .map_err(|e| e.to_string())?;
        serde_json::from_value(v).map_err(|e| format!("unexpected checkResume answer: {e}"))
    }

    fn wait(&mut self, thread_id: &str, _path: &Path, timeout: Duration) {
        let params = json!({"threadId": thread_id, "timeoutMs": timeout.as_millis() as u64});
        match self.call("thread/wait", params) {
            Ok(_) | Err(ClientError::Rpc(_)) => {}
            Err(e) => tracing::warn!(error = %e, "thread/wait on the agent failed"),
        }
    }
}

struct Direct {
    homes: Homes,
    index: Index,
}

/// How often the in-process wait stats the path again (no agent, so no change feed).
const RECHECK: Duration = Duration::from_millis(20);

impl Rolloutd for Direct {
    fn homes(&self) -> &Homes {
        &self.homes
    }

    fn check_resume(&mut self, thread_id: &str, path: &Path) -> Result<CheckResume, String> {
        let q = Queries::new(&self.homes, &self.index, HeadLimits::default());
        q.check_resume(thread_id, path).map_err(|e| e.to_string())
    }

    fn wait(&mut self, _thread_id: &str, path: &Path, timeout: Duration) {
        // Codex writes the rollout at the very path it announced, so that file (not a query,
        // whose miss walks the home) tells when it appears: once its head reads as a rollout
        // (a file caught between its creation and its first line is not one yet); the caller
        // checks it then.
        let zst = crate::codex_state::spelling::with_zst(path);
        let readable = |p: &Path| crate::rollout::inspect(p, &HeadLimits::default()).is_ok();
        let deadline = Instant::now() + timeout;
        // Bounded by the deadline: each pass sleeps at least RECHECK or returns.
        while Instant::now() < deadline && !readable(path) && !readable(&zst) {
            std::thread::sleep(RECHECK.min(deadline.saturating_duration_since(Instant::now())));
        }
    }
}

/// `rollout_path` of `thread_id` in Codex's state DB of the first home, if it has a row:
/// one lookup by id, whatever the number of threads. A missing or unreadable DB is no
/// answer (the caller then forwards untouched).
pub fn codex_rollout_path(homes: &Homes, thread_id: &str) -> Option<String> {
    let home = crate::codex_state::primary_home(homes).ok()?;
    let located =
        crate::codex_state::locate(home, &crate::codex_state::locate::process_env).ok()?;
    crate::codex_state::db::read_rollout_path(&located, thread_id)
        .inspect_err(|e| tracing::warn!(error = %e, "reading Codex's state DB"))
        .ok()
        .flatten()
}
