//! `index/status`, `index/rescan` and `index/problems`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::{json, Value};

use super::query;
use crate::live::Shared;
use crate::server::frame::{self, RpcError};

pub async fn status(shared: &Arc<Shared>) -> Result<Value, RpcError> {
    // Read before the counts: `ready: true` then promises counts that include the first
    // reconcile.
    let ready = shared.is_ready();
    let s = Arc::clone(shared);
    let (counts, index, degraded) = tokio::task::spawn_blocking(move || {
        s.query(|q| {
            (
                q.index.counts(),
                q.index.path().to_owned(),
                q.index.degraded(),
            )
        })
    })
    .await
    .map_err(|e| RpcError::new(frame::INDEX_ERROR, e.to_string()))?;
    let counts = counts.map_err(|e| RpcError::new(frame::INDEX_ERROR, e.to_string()))?;
    let watch = shared
        .watch
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let homes: Vec<_> = shared
        .homes()
        .homes
        .iter()
        .map(|h| h.configured.clone())
        .collect();
    Ok(json!({
        "ready": ready,
        "degraded": degraded.is_some(),
        "degradedReason": degraded,
        "counts": counts,
        "watcher": watch,
        "rescans": shared.rescans.load(Ordering::Relaxed),
        "requests": shared.requests.load(Ordering::Relaxed),
        "lagMs": shared.last_lag_ms.load(Ordering::Relaxed),
        "uptimeSecs": shared.started.elapsed().as_secs(),
        "homes": homes,
        "index": index,
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
    }))
}

pub async fn rescan(shared: &Arc<Shared>) -> Result<Value, RpcError> {
    let s = Arc::clone(shared);
    let summary = tokio::task::spawn_blocking(move || s.rescan())
        .await
        .map_err(|e| RpcError::new(frame::INDEX_ERROR, e.to_string()))?
        .map_err(|e| RpcError::new(frame::INDEX_ERROR, e.to_string()))?;
    Ok(json!({ "summary": summary }))
}

pub async fn problems(shared: &Arc<Shared>) -> Result<Value, RpcError> {
    query(shared, |q| q.problems()).await
}
