//! One `apply` per command, grouped by file. A command is a parsed
//! [`ClientRequest`]; applying it gives the response's result or error. `subscribe` is a
//! command like the others: it changes the connection through [`Context::subscription`].

mod codex;
mod index;
mod path;
mod subscribe;
mod thread;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::live::{Deferred, Exposure, Shared};
use crate::protocol::error::{INDEX_ERROR, TIMEOUT};
use crate::protocol::{ClientRequest, ErrorData, ErrorReason, RpcError};
use crate::query::{Queries, QueryError};

pub use subscribe::Subscription;

/// A command's answer: the serialized result, or an error.
pub type Answer = Result<Box<RawValue>, RpcError>;

/// What a command may use: the agent's state, and its connection.
#[derive(Clone)]
pub struct Context {
    pub shared: Arc<Shared>,
    /// The connection's outgoing lines (responses and notifications).
    pub out: mpsc::Sender<String>,
    /// The connection's subscription, if any.
    pub subscription: Arc<Mutex<Option<Subscription>>>,
}

impl Context {
    pub fn subscribed(&self) -> bool {
        self.subscription
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some()
    }
}

impl ClientRequest {
    /// Runs the command.
    pub async fn apply(self, cx: &Context) -> Answer {
        let at = At {
            method: self.method(),
            exposure: exposure(&cx.shared, &self),
        };
        match self {
            ClientRequest::ThreadResolve(p) => thread::resolve(cx, at, p).await,
            ClientRequest::ThreadCheckResume(p) => thread::check_resume(cx, at, p).await,
            ClientRequest::ThreadList(p) => thread::list(cx, at, p).await,
            ClientRequest::ThreadWait(p) => thread::wait(cx, at, p).await,
            ClientRequest::PathResolve(p) => path::resolve(cx, at, p).await,
            ClientRequest::PathSame(p) => path::same(cx, at, p).await,
            ClientRequest::Subscribe(p) => subscribe::subscribe(cx, p),
            ClientRequest::Unsubscribe(_) => subscribe::unsubscribe(cx),
            ClientRequest::IndexStatus(_) => index::status(cx).await,
            ClientRequest::IndexRescan(_) => index::rescan(cx).await,
            ClientRequest::IndexProblems(_) => index::problems(cx).await,
            ClientRequest::CodexAudit(_) => codex::audit(cx).await,
            ClientRequest::CodexRepair(p) => codex::repair(cx, p).await,
        }
    }
}

impl ClientRequest {
    /// The answer of a command that is index reads and stats only, when a reader gives it
    /// at once: no future, task or permit for the commonest requests. The response line
    /// (and its newline) for `id` is serialized straight onto `out`, with no intermediate
    /// result text. False, with nothing written, when the command is another kind, or the
    /// reader could not answer it alone (a repair, a walk): [`ClientRequest::apply`] then
    /// answers it, exactly as it would have.
    pub fn answer_at_once_into(
        &self,
        shared: &Shared,
        id: Option<&serde_json::Value>,
        out: &mut Vec<u8>,
    ) -> bool {
        fn done<T: Serialize>(
            r: Option<Result<T, QueryError>>,
            id: Option<&serde_json::Value>,
            out: &mut Vec<u8>,
        ) -> bool {
            let Some(r) = r else { return false };
            if let Some(id) = id {
                match r {
                    Ok(v) => crate::server::frame::push_response(out, id, &v),
                    Err(e) => crate::server::frame::push_line(
                        out,
                        &crate::server::frame::error(id, RpcError::from(&e)),
                    ),
                }
            }
            true
        }
        if shared.hang.any() {
            // Some home's filesystem can hang: [`ClientRequest::apply`] works out once which
            // homes the request touches, and answers off the runtime's threads when needed.
            return false;
        }
        match self {
            ClientRequest::ThreadResolve(p) => done(
                shared.read_query(|q| q.resolve_thread(&p.thread_id)),
                id,
                out,
            ),
            ClientRequest::ThreadCheckResume(p) => done(
                shared.read_query(|q| q.check_resume(&p.thread_id, &p.path)),
                id,
                out,
            ),
            ClientRequest::PathResolve(p) => {
                done(shared.read_query(|q| q.resolve_path(&p.path)), id, out)
            }
            ClientRequest::PathSame(p) => done(shared.read_query(|q| q.same(&p.a, &p.b)), id, out),
            _ => false,
        }
    }
}

/// The method being applied and the homes that can hang it may touch.
pub struct At {
    pub method: &'static str,
    pub exposure: Exposure,
}

impl At {
    /// The answer of `f`, run as [`query_at`] runs it for this request.
    pub async fn answer<T: Serialize + Send + 'static>(
        self,
        cx: &Context,
        f: impl Fn(&Queries<'_>) -> Result<T, QueryError> + Send + 'static,
    ) -> Answer {
        answer(&query_at(&cx.shared, self.method, self.exposure, f).await?)
    }
}

/// A walk of the homes is given `server.fs_timeout` times this (20 s by default), queue
/// included: far beyond a healthy walk (0.4 s at 500,000 threads), so only a directory that
/// stopped answering reaches it.
const WALK_DEADLINE_FACTOR: u32 = 10;

/// Serializes a result.
pub fn answer<T: Serialize>(v: &T) -> Answer {
    serde_json::value::to_raw_value(v).map_err(|e| RpcError::new(INDEX_ERROR, e.to_string()))
}

/// Runs a query: first on a reader connection, in place (index reads and stats only, a few
/// microseconds); when the answer needs a repair or a walk of the homes, again on the
/// writer, on a blocking thread (queries may read files). Homes that may hang are not
/// expected here: see [`query_at`].
pub async fn query<T: Serialize + Send + 'static>(
    shared: &Arc<Shared>,
    f: impl Fn(&Queries<'_>) -> Result<T, QueryError> + Send + 'static,
) -> Result<T, RpcError> {
    query_at(shared, "query", Vec::new(), f).await
}

/// [`query`] for a request that may touch `exposure`, the homes that can hang. With none, as
/// [`query`] always did (inline on a reader; a walk or repair on the writer, which may touch
/// every home and so is bounded when some home can hang). Otherwise off the runtime's
/// threads, under `server.fs_timeout`: see [`offloaded`].
pub async fn query_at<T: Serialize + Send + 'static>(
    shared: &Arc<Shared>,
    method: &'static str,
    exposure: Exposure,
    f: impl Fn(&Queries<'_>) -> Result<T, QueryError> + Send + 'static,
) -> Result<T, RpcError> {
    if exposure.is_empty() {
        match shared.read_query_or(&f) {
            Ok(answer) => return answer.map_err(|e| RpcError::from(&e)),
            Err(Deferred::Write) => {
                let all = shared.hang.all();
                return offloaded(shared, method, all, move |s| s.query(&f)).await;
            }
            // One walk at a time: a flood of unknown ids queues here, as tasks, and leaves
            // the other core to the watcher and to the requests readers answer. The walk
            // holds its slot until it returns, even past its requester's deadline: one
            // blocked in a directory that does not answer (a mount inside a home) then holds
            // up the walks after it, which each give up at their own deadline.
            Err(Deferred::Walk) => {
                let limit = shared.hang.timeout() * WALK_DEADLINE_FACTOR;
                let deadline = tokio::time::Instant::now() + limit;
                let stuck = || {
                    unresponsive(
                        Path::new(""),
                        limit,
                        format!(
                            "{method}: a walk of the homes (for an id the index does not know) has not finished within {} ms; a directory inside a home may not be answering (a mount there)",
                            limit.as_millis()
                        ),
                    )
                };
                let slot = Arc::clone(&shared.walking).acquire_owned();
                let walking = match tokio::time::timeout_at(deadline, slot).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) => return Err(RpcError::shutting_down()),
                    Err(_) => return Err(stuck()),
                };
                let all = shared.hang.all();
                let walked = offloaded(shared, method, all, move |s| {
                    let _walking = walking;
                    s.offloaded_query(&f)
                });
                return tokio::time::timeout_at(deadline, walked)
                    .await
                    .unwrap_or_else(|_| Err(stuck()));
            }
        }
    }
    offloaded(shared, method, exposure, move |s| s.offloaded_query(&f)).await
}

/// Runs `job` on a blocking thread. With homes that can hang exposed: at once
/// `filesystemUnresponsive` when one has a query stuck, else the answer within
/// `server.fs_timeout` or `filesystemUnresponsive` (the thread is left to finish; its homes
/// count as stuck until it does).
async fn offloaded<T: Send + 'static>(
    shared: &Arc<Shared>,
    method: &'static str,
    exposure: Exposure,
    job: impl FnOnce(&Shared) -> Result<T, QueryError> + Send + 'static,
) -> Result<T, RpcError> {
    let failed =
        |e: tokio::task::JoinError| RpcError::new(INDEX_ERROR, format!("query task failed: {e}"));
    if exposure.is_empty() {
        let s = Arc::clone(shared);
        return tokio::task::spawn_blocking(move || job(&s))
            .await
            .map_err(failed)?
            .map_err(|e| RpcError::from(&e));
    }
    if let Some((home, stuck_for)) = shared.hang.stuck_among(&exposure) {
        let fs = home.filesystem.unwrap_or("network");
        return Err(unresponsive(
            &home.configured,
            Duration::ZERO,
            format!(
                "{method}: the {fs} filesystem of home {} has not answered for {} ms (a query on it is still blocked); not trying it again until that one returns",
                home.configured.display(),
                stuck_for.as_millis()
            ),
        ));
    }
    let timeout = shared.hang.timeout();
    let deadline = tokio::time::Instant::now() + timeout;
    let started = std::time::Instant::now();
    let expired = |exposure: &Exposure| {
        let names: Vec<String> = exposure
            .iter()
            .map(|h| {
                format!(
                    "{} ({})",
                    h.configured.display(),
                    h.filesystem.unwrap_or("network")
                )
            })
            .collect();
        let home = exposure.first().map(|h| h.configured.as_path());
        unresponsive(
            home.unwrap_or(Path::new("")),
            started.elapsed(),
            format!(
                "{method}: no answer from the filesystem of home {} within {} ms; it may be hung (a stopped FUSE daemon, a lost network link)",
                names.join(", "),
                timeout.as_millis()
            ),
        )
    };
    let permit = match tokio::time::timeout_at(
        deadline,
        Arc::clone(&shared.offload).acquire_owned(),
    )
    .await
    {
        Ok(Ok(p)) => p,
        Ok(Err(_)) => return Err(RpcError::shutting_down()),
        Err(_) => return Err(expired(&exposure)),
    };
    let probe = shared.hang.probe(exposure);
    let (s, on_thread) = (Arc::clone(shared), Arc::clone(&probe));
    let mut task = tokio::task::spawn_blocking(move || {
        // A hung filesystem is found here, before the job takes a connection (the writer,
        // for a walk) that the watcher and other queries would then wait for. One that hangs
        // later, in the middle of the job, still holds it until it answers.
        for home in on_thread.exposure() {
            crate::live::reach(&home.configured);
        }
        let answer = job(&s);
        on_thread.returned();
        drop(permit);
        answer
    });
    let joined = match tokio::time::timeout_at(deadline, &mut task).await {
        Ok(joined) => joined,
        Err(_) if probe.expired() => {
            tracing::warn!(homes = ?probe.exposure().iter().map(|h| &h.configured).collect::<Vec<_>>(), "a query is blocked on a home's filesystem");
            return Err(expired(probe.exposure()));
        }
        // It returned just now.
        Err(_) => task.await,
    };
    joined.map_err(failed)?.map_err(|e| RpcError::from(&e))
}

/// `filesystemUnresponsive` about `home`.
pub(super) fn unresponsive(home: &Path, waited: Duration, message: String) -> RpcError {
    RpcError {
        code: TIMEOUT,
        message,
        data: Some(Box::new(ErrorData {
            path: (!home.as_os_str().is_empty()).then(|| home.to_owned()),
            waited_ms: Some(waited.as_millis() as u64),
            ..ErrorData::new(ErrorReason::FilesystemUnresponsive)
        })),
    }
}

/// The homes that can hang a request may touch (empty: none, answer it inline).
pub fn exposure(shared: &Shared, request: &ClientRequest) -> Exposure {
    if !shared.hang.any() {
        return Vec::new();
    }
    let mut out = match request {
        ClientRequest::ThreadResolve(p) => thread_exposure(shared, &p.thread_id),
        ClientRequest::ThreadWait(p) => thread_exposure(shared, &p.thread_id),
        ClientRequest::ThreadCheckResume(p) => {
            let mut e = thread_exposure(shared, &p.thread_id);
            e.extend(shared.hang.for_paths([p.path.as_path()]));
            e
        }
        ClientRequest::PathResolve(p) => shared.hang.for_paths([p.path.as_path()]),
        ClientRequest::PathSame(p) => shared.hang.for_paths([p.a.as_path(), p.b.as_path()]),
        // A page checks each thread against its file, wherever it is (and a `cwd` filter
        // is canonicalized).
        ClientRequest::ThreadList(_) => shared.hang.all(),
        _ => Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    out.retain(|h| seen.insert(h.configured.clone()));
    out
}

/// A thread's indexed files decide which homes answering about it touches; nothing indexed
/// means a walk of every home.
pub(super) fn thread_exposure(shared: &Shared, thread_id: &str) -> Exposure {
    if !shared.hang.any() {
        return Vec::new();
    }
    match shared.read_query(|q| q.indexed_paths(thread_id)).flatten() {
        Some(paths) => shared.hang.for_paths(paths.iter().map(|p| p.as_path())),
        None => shared.hang.all(),
    }
}
