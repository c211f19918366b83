//! Where a query command gets its answer: the running agent when one serves the same homes
//! and index over the socket, else the index directly. Both run the same query code, so
//! the answers (and the exit statuses) are the same either way.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::{failure, Failure};
use crate::client::{Client, ClientError};
use crate::config::Config;
use crate::crawl::{self, Progress, ReconcileSummary};
use crate::identity::Homes;
use crate::index::{ArchivedFilter, Counts, Index};
use crate::query::{
    CheckResume, ListPage, ListParams, ProblemsReport, Queries, SameAnswer, ThreadRecord,
};
use crate::rollout::HeadLimits;
use crate::server::frame;

/// The answer source for one CLI run.
pub enum Backend {
    /// A running agent that indexes the same homes into the same index.
    Agent(Client),
    /// No agent (or one serving other homes): the index file, read and repaired in process.
    Direct { homes: Homes, index: Index },
}

impl Backend {
    /// Uses the agent at `socket` when it answers and serves `config`'s homes and index;
    /// otherwise opens the index itself.
    pub fn open(socket: &Path, config: &Config) -> Result<Backend, Failure> {
        let (index_path, journal) = crate::agent::index_location(&config.index);
        if let Some(client) = matching_agent(socket, config, &index_path) {
            return Ok(Backend::Agent(client));
        }
        let (homes, index) = open_at(config, &index_path, journal)?;
        Ok(Backend::Direct { homes, index })
    }

    /// The homes and the index file, without asking any agent.
    pub fn open_direct(config: &Config) -> Result<(Homes, Index), Failure> {
        let (index_path, journal) = crate::agent::index_location(&config.index);
        open_at(config, &index_path, journal)
    }

    /// `index`: reconcile now; the counts afterwards.
    pub fn reconcile(
        &mut self,
        progress: &dyn Progress,
    ) -> Result<(ReconcileSummary, Counts), Failure> {
        match self {
            Backend::Agent(client) => {
                let rescan: Value = call(client, "index/rescan", json!({}))?;
                let summary = decode(rescan.get("summary").cloned().unwrap_or(Value::Null))?;
                let status: Value = call(client, "index/status", json!({}))?;
                let counts = decode(status.get("counts").cloned().unwrap_or(Value::Null))?;
                Ok((summary, counts))
            }
            Backend::Direct { index, .. } if index.is_guest() => Err(failure(
                "agentOwnsIndex",
                format!(
                    "an agent owns {} and keeps it current, but did not answer on its socket; \
                     nothing was written (it alone writes the index, so it misses no change)",
                    index.path().display()
                ),
            )),
            Backend::Direct { homes, index } => {
                let limits = HeadLimits::default();
                let summary = crawl::reconcile(homes, &*index, &limits, progress)
                    .map_err(|e| failure("indexError", e))?;
                let counts = index.counts().map_err(|e| failure("indexError", e))?;
                Ok((summary, counts))
            }
        }
    }

    pub fn resolve_thread(&mut self, id: &str) -> Result<ThreadRecord, Failure> {
        self.ask("thread/resolve", json!({ "threadId": id }), |q| {
            q.resolve_thread(id)
        })
    }

    pub fn resolve_path(&mut self, path: &Path) -> Result<ThreadRecord, Failure> {
        self.ask("path/resolve", json!({ "path": path }), |q| {
            q.resolve_path(path)
        })
    }

    pub fn same(&mut self, a: &Path, b: &Path) -> Result<SameAnswer, Failure> {
        self.ask("path/same", json!({ "a": a, "b": b }), |q| q.same(a, b))
    }

    pub fn check_resume(&mut self, id: &str, path: &Path) -> Result<CheckResume, Failure> {
        let params = json!({ "threadId": id, "path": path });
        self.ask("thread/checkResume", params, |q| q.check_resume(id, path))
    }

    /// A page of threads. Without an agent keeping the index live, it is brought up to date
    /// first; that reconcile only stats files whose rows are current, so it is cheap.
    pub fn list(&mut self, params: &ListParams) -> Result<ListPage, Failure> {
        self.catch_up()?;
        let archived = match params.archived {
            ArchivedFilter::Active => json!(false),
            ArchivedFilter::Archived => json!(true),
            ArchivedFilter::All => json!("all"),
        };
        let wire = json!({
            "archived": archived,
            "cwd": params.cwd,
            "search": params.search,
            "limit": params.limit,
            "cursor": params.cursor,
        });
        self.ask("thread/list", wire, |q| q.list(params))
    }

    /// Bad files and duplicates; brought up to date first, as for [`Backend::list`].
    pub fn problems(&mut self) -> Result<ProblemsReport, Failure> {
        self.catch_up()?;
        self.ask("index/problems", json!({}), |q| q.problems())
    }

    /// Without an agent, brings the index up to date first; a guest leaves that to the
    /// agent that owns the index.
    fn catch_up(&mut self) -> Result<(), Failure> {
        if let Backend::Direct { homes, index } = self {
            if index.is_guest() {
                return Ok(());
            }
            crawl::reconcile(homes, &*index, &HeadLimits::default(), &())
                .map_err(|e| failure("indexError", e))?;
        }
        Ok(())
    }

    /// One query: over the socket as `method`, or in process through `direct`.
    fn ask<T: DeserializeOwned>(
        &mut self,
        method: &str,
        params: Value,
        direct: impl FnOnce(&Queries<'_>) -> Result<T, crate::query::QueryError>,
    ) -> Result<T, Failure> {
        match self {
            Backend::Agent(client) => call(client, method, params),
            Backend::Direct { homes, index } => Ok(direct(&Queries {
                homes,
                index,
                limits: HeadLimits::default(),
            })?),
        }
    }
}

fn open_at(
    config: &Config,
    index_path: &Path,
    journal: crate::index::Journal,
) -> Result<(Homes, Index), Failure> {
    let homes = Homes::new(&config.homes, &config.aliases);
    // An agent holding the index (one that serves other homes, or did not answer) alone
    // writes it: a write from here would be a change it never announces.
    let index = match crate::server::socket::index_owner(index_path) {
        Some(pid) => {
            tracing::debug!(pid, "an agent owns the index; opening it without writing");
            Index::open_guest(index_path)
        }
        None => Index::open(index_path, journal),
    }
    .map_err(|e| failure("indexError", e))?;
    Ok((homes, index))
}

/// Connects to the agent and checks, with `index/status`, that it indexes the same homes
/// into the same index; an agent for other homes would give other answers.
fn matching_agent(socket: &Path, config: &Config, index_path: &Path) -> Option<Client> {
    let mut client = Client::connect(socket).ok()?;
    let status = client.call("index/status", json!({})).ok()?;
    let homes: Vec<PathBuf> = serde_json::from_value(status.get("homes")?.clone()).ok()?;
    let index: PathBuf = serde_json::from_value(status.get("index")?.clone()).ok()?;
    if homes == config.homes && index == index_path {
        Some(client)
    } else {
        tracing::debug!(socket = %socket.display(), "the agent serves other homes or another index; reading the index directly");
        None
    }
}

/// Calls the agent, turning its error into the failure the direct path would give.
pub fn call<T: DeserializeOwned>(
    client: &mut Client,
    method: &str,
    params: Value,
) -> Result<T, Failure> {
    match client.call(method, params) {
        Ok(v) => decode(v),
        Err(ClientError::Rpc(rpc)) => Err(Failure {
            reason: rpc.reason().unwrap_or("agentError").to_owned().into(),
            // Not found, a failed path check and a wait that timed out are answers ("no").
            negative: rpc.code == frame::NOT_FOUND || rpc.code == frame::TIMEOUT,
            message: rpc.message,
        }),
        Err(other) => Err(failure("agentError", other)),
    }
}

fn decode<T: DeserializeOwned>(v: Value) -> Result<T, Failure> {
    serde_json::from_value(v).map_err(|e| {
        failure(
            "agentError",
            format!("unexpected answer from the agent: {e}"),
        )
    })
}
