//! `thread/resolve`, `thread/checkResume`, `thread/list` and `thread/wait`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::{params, query, query_error};
use crate::index::ArchivedFilter;
use crate::live::Shared;
use crate::query::{ListParams, QueryError};
use crate::server::frame::{self, RpcError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ResolveParams {
    thread_id: String,
}

pub async fn resolve(shared: &Arc<Shared>, p: Value) -> Result<Value, RpcError> {
    let p: ResolveParams = params(p)?;
    query(shared, move |q| q.resolve_thread(&p.thread_id)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CheckResumeParams {
    thread_id: String,
    path: PathBuf,
}

pub async fn check_resume(shared: &Arc<Shared>, p: Value) -> Result<Value, RpcError> {
    let p: CheckResumeParams = params(p)?;
    query(shared, move |q| q.check_resume(&p.thread_id, &p.path)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ListRequest {
    /// `true` archived only, `false` active only, absent: active only; `"all"` both.
    #[serde(default)]
    archived: Option<Value>,
    cwd: Option<String>,
    search: Option<String>,
    #[serde(default = "default_limit")]
    limit: usize,
    cursor: Option<String>,
}

fn default_limit() -> usize {
    50
}

pub async fn list(shared: &Arc<Shared>, p: Value) -> Result<Value, RpcError> {
    let p: ListRequest = params(p)?;
    let archived = match p.archived {
        None | Some(Value::Bool(false)) => ArchivedFilter::Active,
        Some(Value::Bool(true)) => ArchivedFilter::Archived,
        Some(Value::String(s)) if s == "all" => ArchivedFilter::All,
        Some(other) => {
            return Err(RpcError::invalid_params(format!(
                "archived must be true, false or \"all\", not {other}"
            )))
        }
    };
    let params = ListParams {
        archived,
        cwd: p.cwd,
        search: p.search,
        limit: p.limit,
        cursor: p.cursor,
    };
    query(shared, move |q| q.list(&params)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct WaitParams {
    thread_id: String,
    #[serde(default = "default_wait_ms")]
    timeout_ms: u64,
}

fn default_wait_ms() -> u64 {
    30_000
}

/// Longest wait granted; a client wanting longer calls again.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Re-check the disk this often even without events (polling homes, missed events).
const RECHECK: Duration = Duration::from_millis(1000);

/// Returns the record as soon as the thread's rollout is indexed, or times out with
/// `data.reason = "notMaterialized"`.
pub async fn wait(shared: &Arc<Shared>, p: Value) -> Result<Value, RpcError> {
    let p: WaitParams = params(p)?;
    let started = Instant::now();
    let deadline = started + Duration::from_millis(p.timeout_ms).min(MAX_WAIT);
    // Subscribe before the first check, so a rollout appearing in between is not missed.
    let mut events = shared.events.subscribe();
    let wanted = p.thread_id.to_ascii_lowercase();
    loop {
        let id = p.thread_id.clone();
        match query(shared, move |q| q.resolve_thread(&id)).await {
            Ok(record) => return Ok(record),
            Err(e) if e.reason() == Some("notFound") => {}
            Err(e) => return Err(e),
        }
        let next_check = (Instant::now() + RECHECK).min(deadline);
        loop {
            if Instant::now() >= deadline {
                let e = query_error(&QueryError::NotFound {
                    thread_id: p.thread_id.clone(),
                });
                return Err(RpcError {
                    code: frame::TIMEOUT,
                    message: format!(
                        "thread {} has no rollout after waiting {} ms: it has not materialized ({})",
                        p.thread_id,
                        deadline.duration_since(started).as_millis(),
                        crate::query::MATERIALIZES_WHEN
                    ),
                    data: Some(json!({
                        "reason": "notMaterialized",
                        "threadId": p.thread_id,
                        "waitedMs": started.elapsed().as_millis() as u64,
                        "lookup": e.data,
                    })),
                });
            }
            let event = tokio::select! {
                e = tokio::time::timeout_at(next_check, events.recv()) => e,
                _ = shared.shutdown.triggered() => Ok(Err(RecvError::Closed)),
            };
            match event {
                Err(_) => break, // periodic re-check
                Ok(Ok(n)) if n.thread_id().is_some_and(|t| t.starts_with(&wanted)) => break,
                Ok(Ok(_)) => continue,
                Ok(Err(RecvError::Lagged(_))) => break,
                Ok(Err(RecvError::Closed)) => {
                    return Err(RpcError::new(
                        frame::SHUTTING_DOWN,
                        "the agent is shutting down",
                    ));
                }
            }
        }
    }
}
