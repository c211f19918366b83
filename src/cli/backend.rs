//! Where a query command gets its answer: the running agent when one serves the same homes
//! and index over the socket, else the index directly. Both run the same query code, so
//! the answers (and the exit statuses) are the same either way. An agent that accepts but
//! does not answer in time (stopped, or every slot busy) is treated as absent, with a note.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{failure, Failure};
use crate::client::{Client, ClientError, ANSWER_TIMEOUT, CONNECT_TIMEOUT};
use crate::config::Config;
use crate::crawl::{self, Progress, ReconcileSummary};
use crate::identity::Homes;
use crate::index::{Counts, Index, Journal};
use crate::protocol::request::{
    NoParams, PathResolveParams, PathSameParams, ThreadCheckResumeParams, ThreadListParams,
    ThreadResolveParams,
};
use crate::protocol::{methods, AgentStatus, Method, RpcError};
use crate::query::{
    CheckResume, ListPage, ListParams, ProblemsReport, Queries, SameAnswer, ThreadRecord,
};
use crate::rollout::HeadLimits;

/// How long `index` waits for the agent's rescan.
const RESCAN_TIMEOUT: Duration = Duration::from_secs(120);

/// The answer source for one CLI run.
pub enum Backend {
    /// A running agent that indexes the same homes into the same index.
    Agent { client: Client, config: Config },
    /// No agent (or one serving other homes): the index file, read and repaired in process.
    Direct { homes: Homes, index: Index },
    /// As `Direct`, before there is any index: a first reconcile (`index`, `list`) builds it
    /// fresh, where no other process waits on it (see [`Index::begin_fresh`]); any other
    /// first use opens it as usual.
    Unbuilt {
        socket: PathBuf,
        config: Config,
        index_path: PathBuf,
    },
}

impl Backend {
    /// Uses the agent at `socket` when it answers and serves `config`'s homes and index;
    /// otherwise opens the index itself.
    pub fn open(socket: &Path, config: &Config) -> Result<Backend, Failure> {
        Backend::open_as(socket, config, true)
    }

    /// [`Backend::open`]; `Unbuilt` only when `may_be_unbuilt`.
    fn open_as(socket: &Path, config: &Config, may_be_unbuilt: bool) -> Result<Backend, Failure> {
        let (index_path, journal) = crate::agent::index_location(&config.index);
        if let Some(client) = matching_agent(socket, config, &index_path) {
            return Ok(Backend::Agent {
                client,
                config: config.clone(),
            });
        }
        let unbuilt =
            may_be_unbuilt && journal == Journal::Wal && index_path.symlink_metadata().is_err();
        if unbuilt && crate::server::socket::index_owner(&index_path).is_none() {
            return Ok(Backend::Unbuilt {
                socket: socket.to_owned(),
                config: config.clone(),
                index_path,
            });
        }
        let (homes, index) = open_at(config, &index_path, journal)?;
        Ok(Backend::Direct { homes, index })
    }

    /// For an [`Backend::Unbuilt`] index, builds it fresh and returns the summary of the
    /// reconcile that did; then (or when the build could not be made the index, because
    /// another process made one meanwhile) opens the index as [`Backend::open`] would.
    /// `None` when nothing was built here.
    fn build_fresh(
        &mut self,
        progress: &dyn Progress,
    ) -> Result<Option<ReconcileSummary>, Failure> {
        let Backend::Unbuilt {
            socket,
            config,
            index_path,
        } = self
        else {
            return Ok(None);
        };
        let homes = Homes::new(&config.homes, &config.aliases);
        let mut built = None;
        match Index::begin_fresh(index_path) {
            Ok(Some(build)) => {
                let summary =
                    crawl::reconcile(&homes, build.index(), &HeadLimits::default(), progress)
                        .map_err(|e| failure("indexError", e))?;
                match build.publish() {
                    Ok(true) => built = Some(summary),
                    Ok(false) => {
                        tracing::debug!("another process made the index meanwhile; using it");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "a fresh build could not be made the index; reconciling into it as usual")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "no fresh build; reconciling as usual"),
        }
        let (socket, config) = (socket.clone(), config.clone());
        *self = Backend::open_as(&socket, &config, false)?;
        Ok(built)
    }

    /// For an [`Backend::Unbuilt`] index, opens it as usual.
    fn open_unbuilt(&mut self) -> Result<(), Failure> {
        if let Backend::Unbuilt {
            config, index_path, ..
        } = self
        {
            let (homes, index) = open_at(config, index_path, Journal::Wal)?;
            *self = Backend::Direct { homes, index };
        }
        Ok(())
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
        if let Some(summary) = self.build_fresh(progress)? {
            if let Backend::Direct { index, .. } = self {
                let counts = index.counts().map_err(|e| failure("indexError", e))?;
                return Ok((summary, counts));
            }
        }
        match self {
            Backend::Agent { client, .. } => {
                // A full reconcile of a large home takes longer than a query.
                client
                    .set_read_timeout(Some(RESCAN_TIMEOUT))
                    .map_err(|e| failure("agentError", e))?;
                let rescan = call::<methods::IndexRescan>(client, &NoParams {})?;
                let status = call::<methods::IndexStatus>(client, &NoParams {})?;
                Ok((rescan.summary, status.counts.into()))
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
                let summary = crawl::reconcile(homes, &*index, &HeadLimits::default(), progress)
                    .map_err(|e| failure("indexError", e))?;
                let counts = index.counts().map_err(|e| failure("indexError", e))?;
                Ok((summary, counts))
            }
            Backend::Unbuilt { .. } => Err(failure("indexError", "the index was not opened")),
        }
    }

    pub fn resolve_thread(&mut self, id: &str) -> Result<ThreadRecord, Failure> {
        let params = ThreadResolveParams {
            thread_id: id.to_owned(),
        };
        self.ask::<methods::ThreadResolve>(&params, |q| q.resolve_thread(id))
    }

    pub fn resolve_path(&mut self, path: &Path) -> Result<ThreadRecord, Failure> {
        let params = PathResolveParams {
            path: path.to_owned(),
        };
        self.ask::<methods::PathResolve>(&params, |q| q.resolve_path(path))
    }

    pub fn same(&mut self, a: &Path, b: &Path) -> Result<SameAnswer, Failure> {
        let params = PathSameParams {
            a: a.to_owned(),
            b: b.to_owned(),
        };
        self.ask::<methods::PathSame>(&params, |q| q.same(a, b))
    }

    pub fn check_resume(&mut self, id: &str, path: &Path) -> Result<CheckResume, Failure> {
        let params = ThreadCheckResumeParams {
            thread_id: id.to_owned(),
            path: path.to_owned(),
        };
        self.ask::<methods::ThreadCheckResume>(&params, |q| q.check_resume(id, path))
    }

    /// A page of threads. Without an agent keeping the index live, it is brought up to date
    /// first; that reconcile only stats files whose rows are current, so it is cheap.
    pub fn list(&mut self, params: &ListParams) -> Result<ListPage, Failure> {
        self.catch_up()?;
        let wire = ThreadListParams {
            archived: params.archived.into(),
            cwd: params.cwd.clone(),
            search: params.search.clone(),
            limit: params.limit,
            cursor: params.cursor.clone(),
        };
        self.ask::<methods::ThreadList>(&wire, |q| q.list(params))
    }

    /// Bad files and duplicates; brought up to date first, as for [`Backend::list`].
    pub fn problems(&mut self) -> Result<ProblemsReport, Failure> {
        self.catch_up()?;
        self.ask::<methods::IndexProblems>(&NoParams {}, |q| q.problems())
    }

    /// Without an agent, brings the index up to date first; a guest leaves that to the
    /// agent that owns the index.
    fn catch_up(&mut self) -> Result<(), Failure> {
        if self.build_fresh(&())?.is_some() {
            return Ok(());
        }
        if let Backend::Direct { homes, index } = self {
            if index.is_guest() {
                return Ok(());
            }
            crawl::reconcile(homes, &*index, &HeadLimits::default(), &())
                .map_err(|e| failure("indexError", e))?;
        }
        Ok(())
    }

    /// One query: over the socket as `M`, or in process through `direct`. An agent that
    /// stops answering mid-run is dropped for the index.
    fn ask<M: Method>(
        &mut self,
        params: &M::Params,
        direct: impl FnOnce(&Queries<'_>) -> Result<M::Result, crate::query::QueryError>,
    ) -> Result<M::Result, Failure>
    where
        M::Result: serde::de::DeserializeOwned,
    {
        if let Backend::Agent { client, config } = self {
            match client.request::<M>(params) {
                Err(e) if e.is_timeout() => {
                    note_fallback(&e);
                    let (homes, index) = Backend::open_direct(config)?;
                    *self = Backend::Direct { homes, index };
                }
                other => return other.map_err(agent_failure),
            }
        }
        self.open_unbuilt()?;
        match self {
            Backend::Direct { homes, index } => {
                Ok(direct(&Queries::new(homes, index, HeadLimits::default()))?)
            }
            Backend::Agent { .. } | Backend::Unbuilt { .. } => {
                Err(failure("agentError", "the agent did not answer"))
            }
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

/// The one-line note for an agent that accepted but did not answer.
pub fn note_fallback(e: &ClientError) {
    super::note(&format!(
        "the agent did not answer ({e}); answering from the index"
    ));
}

/// Connects to the agent and checks, with `index/status`, that it indexes the same homes
/// into the same index; an agent for other homes would give other answers.
fn matching_agent(socket: &Path, config: &Config, index_path: &Path) -> Option<Client> {
    let (client, status) = agent_status(socket).ok()?;
    if status.homes == config.homes && status.index == index_path {
        Some(client)
    } else {
        tracing::debug!(socket = %socket.display(), "the agent serves other homes or another index; reading the index directly");
        None
    }
}

/// Why no agent answered `index/status`.
pub enum NoAgent {
    /// Nothing accepts on the socket.
    Absent(std::io::Error),
    /// It accepted but did not answer in time (already noted on stderr).
    Silent,
    /// It answered with an error (a refused peer, …).
    Refused(Failure),
}

impl NoAgent {
    /// `Silent` for a connect that timed out (its note is on stderr already).
    pub fn filter_noted(self) -> NoAgent {
        match self {
            NoAgent::Absent(e) if e.kind() == std::io::ErrorKind::TimedOut => NoAgent::Silent,
            other => other,
        }
    }
}

/// Connects with the query deadlines and asks `index/status`.
pub fn agent_status(socket: &Path) -> Result<(Client, AgentStatus), NoAgent> {
    let mut client = connect(socket, ANSWER_TIMEOUT).map_err(NoAgent::Absent)?;
    match client.request::<methods::IndexStatus>(&NoParams {}) {
        Ok(status) => Ok((client, status)),
        Err(e) if e.is_timeout() => {
            note_fallback(&e);
            Err(NoAgent::Silent)
        }
        Err(e) => Err(NoAgent::Refused(agent_failure(e))),
    }
}

/// Connects within [`CONNECT_TIMEOUT`]; each answer waits at most `answer`. An agent whose
/// accept queue is full (stopped) counts as not answering.
pub fn connect(socket: &Path, answer: Duration) -> std::io::Result<Client> {
    let c = Client::connect_within(socket, CONNECT_TIMEOUT, Some(answer));
    if let Err(e) = &c {
        if e.kind() == std::io::ErrorKind::TimedOut {
            super::note(&format!(
                "the agent on {} did not accept within {CONNECT_TIMEOUT:?}",
                socket.display()
            ));
        }
    }
    c
}

/// Calls the agent, turning its error into the failure the direct path would give.
pub fn call<M: Method>(client: &mut Client, params: &M::Params) -> Result<M::Result, Failure>
where
    M::Result: serde::de::DeserializeOwned,
{
    client.request::<M>(params).map_err(agent_failure)
}

pub fn agent_failure(e: ClientError) -> Failure {
    match e {
        ClientError::Rpc(rpc) => rpc_failure(rpc),
        other => failure("agentError", other),
    }
}

fn rpc_failure(rpc: RpcError) -> Failure {
    Failure {
        reason: rpc.reason().map_or("agentError", |r| r.as_str()).into(),
        // Not found, a failed path check and a wait that timed out are answers ("no").
        negative: rpc.is_negative_answer(),
        message: rpc.message,
    }
}
