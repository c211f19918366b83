//! One `apply` per command, grouped by file. A command is a parsed
//! [`ClientRequest`]; applying it gives the response's result or error. `subscribe` is a
//! command like the others: it changes the connection through [`Context::subscription`].

mod codex;
mod index;
mod path;
mod subscribe;
mod thread;

use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::live::Shared;
use crate::protocol::error::INDEX_ERROR;
use crate::protocol::{ClientRequest, RpcError};
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
        match self {
            ClientRequest::ThreadResolve(p) => thread::resolve(cx, p).await,
            ClientRequest::ThreadCheckResume(p) => thread::check_resume(cx, p).await,
            ClientRequest::ThreadList(p) => thread::list(cx, p).await,
            ClientRequest::ThreadWait(p) => thread::wait(cx, p).await,
            ClientRequest::PathResolve(p) => path::resolve(cx, p).await,
            ClientRequest::PathSame(p) => path::same(cx, p).await,
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

/// Serializes a result.
pub fn answer<T: Serialize>(v: &T) -> Answer {
    serde_json::value::to_raw_value(v).map_err(|e| RpcError::new(INDEX_ERROR, e.to_string()))
}

/// Runs a query: first on a reader connection, in place (index reads and stats only, a few
/// microseconds); when the answer needs a repair or a walk of the homes, again on the
/// writer, on a blocking thread (queries may read files).
pub async fn query<T: Serialize + Send + 'static>(
    shared: &Arc<Shared>,
    f: impl Fn(&Queries<'_>) -> Result<T, QueryError> + Send + 'static,
) -> Result<T, RpcError> {
    let answer = match shared.read_query(&f) {
        Some(answer) => answer,
        None => {
            let shared = Arc::clone(shared);
            tokio::task::spawn_blocking(move || shared.query(f))
                .await
                .map_err(|e| RpcError::new(INDEX_ERROR, format!("query task failed: {e}")))?
        }
    };
    answer.map_err(|e| RpcError::from(&e))
}
