//! The socket methods, one file per group. Each parses its own params and applies itself
//! against the shared state; `subscribe` / `unsubscribe` live with the connection handler
//! because they change the connection.

mod codex;
mod index;
mod path;
mod thread;

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::frame::{self, RpcError};
use crate::live::Shared;
use crate::query::{Queries, QueryError};

/// Runs one method. Unknown methods get -32601.
pub async fn apply(shared: &Arc<Shared>, method: &str, params: Value) -> Result<Value, RpcError> {
    match method {
        "thread/resolve" => thread::resolve(shared, params).await,
        "thread/checkResume" => thread::check_resume(shared, params).await,
        "thread/list" => thread::list(shared, params).await,
        "thread/wait" => thread::wait(shared, params).await,
        "path/resolve" => path::resolve(shared, params).await,
        "path/same" => path::same(shared, params).await,
        "index/status" => index::status(shared).await,
        "index/rescan" => index::rescan(shared).await,
        "index/problems" => index::problems(shared).await,
        "codex/audit" => codex::audit(shared).await,
        "codex/repair" => codex::repair(shared, params).await,
        other => Err(RpcError::new(
            frame::METHOD_NOT_FOUND,
            format!("unknown method {other:?}"),
        )),
    }
}

/// Deserializes params, turning a mismatch into -32602 with serde's sentence.
pub fn params<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    serde_json::from_value(params).map_err(|e| RpcError::invalid_params(format!("bad params: {e}")))
}

/// Runs a query: first on a reader connection, in place (index reads and stats only, a few
/// microseconds); when the answer needs a repair or a walk of the homes, again on the
/// writer, on a blocking thread (queries may read files).
pub async fn query<T: serde::Serialize + Send + 'static>(
    shared: &Arc<Shared>,
    f: impl Fn(&Queries<'_>) -> Result<T, QueryError> + Send + 'static,
) -> Result<Value, RpcError> {
    let answer = match shared.read_query(&f) {
        Some(answer) => answer,
        None => {
            let shared = Arc::clone(shared);
            tokio::task::spawn_blocking(move || shared.query(f))
                .await
                .map_err(|e| RpcError::new(frame::INDEX_ERROR, format!("query task failed: {e}")))?
        }
    };
    match answer {
        Ok(v) => {
            serde_json::to_value(v).map_err(|e| RpcError::new(frame::INDEX_ERROR, e.to_string()))
        }
        Err(e) => Err(query_error(&e)),
    }
}

/// The JSON-RPC form of a query error: a code, the sentence, and `data.reason`.
pub fn query_error(e: &QueryError) -> RpcError {
    let code = match e {
        QueryError::NotFound { .. } | QueryError::Path { .. } => frame::NOT_FOUND,
        QueryError::Ambiguous { .. } => frame::AMBIGUOUS,
        QueryError::BadId { .. } | QueryError::BadPath { .. } | QueryError::BadParams(_) => {
            frame::INVALID_PARAMS
        }
        QueryError::Index(_) | QueryError::Degraded { .. } => frame::INDEX_ERROR,
    };
    let mut data = json!({ "reason": e.reason() });
    match e {
        QueryError::Path { path, would_be, .. } => {
            data["path"] = json!(path);
            if let Some(w) = would_be {
                data["wouldBe"] = json!(w);
            }
        }
        QueryError::Ambiguous { matches, count, .. } => {
            data["matches"] = json!(matches);
            data["count"] = json!(count);
        }
        QueryError::BadPath { path, .. } => data["path"] = json!(path),
        QueryError::NotFound { thread_id } => data["threadId"] = json!(thread_id),
        _ => {}
    }
    RpcError {
        code,
        message: e.to_string(),
        data: Some(data),
    }
}
