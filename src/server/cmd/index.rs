//! `index/status`, `index/rescan` and `index/problems`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{answer, query, Answer, Context};
use crate::protocol::error::INDEX_ERROR;
use crate::protocol::{AgentStatus, Rescan, RpcError, WatcherStatus};

pub async fn status(cx: &Context) -> Answer {
    let shared = &cx.shared;
    // Read before the counts: `ready: true` then promises counts that include the first
    // reconcile.
    let ready = shared.is_ready();
    // Off the runtime's threads, on a reader of its own: counting distinct threads scans an
    // index (10 ms at 50,000 threads, 70 ms and more at 500,000), which the requests on the
    // runtime must not wait for; and the writer may be held by a query blocked on a hung
    // home's filesystem, while the counts are index reads only.
    let read = |q: &crate::query::Queries<'_>| {
        (
            q.index.counts(),
            q.index.path().to_owned(),
            q.index.degraded(),
        )
    };
    let s = Arc::clone(shared);
    let (counts, index, degraded) = tokio::task::spawn_blocking(move || s.offloaded_query(read))
        .await
        .map_err(|e| RpcError::new(INDEX_ERROR, e.to_string()))?;
    let counts = counts.map_err(|e| RpcError::new(INDEX_ERROR, e.to_string()))?;
    let mut watch = shared
        .watch
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    for h in &mut watch.homes {
        h.unresponsive_ms = shared.hang.stuck_for(&h.home).map(|d| d.as_millis() as u64);
    }
    answer(&AgentStatus {
        ready,
        degraded: degraded.is_some(),
        degraded_reason: degraded,
        counts: counts.into(),
        watcher: WatcherStatus {
            backend: watch.backend,
            mode: watch.mode,
            reason: watch.reason,
            homes: watch.homes,
        },
        rescans: shared.rescans.load(Ordering::Relaxed),
        requests: shared.requests.load(Ordering::Relaxed),
        lag_ms: shared.last_lag_ms.load(Ordering::Relaxed),
        uptime_secs: shared.started.elapsed().as_secs(),
        homes: shared
            .homes()
            .homes
            .iter()
            .map(|h| h.configured.clone())
            .collect(),
        index,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
    })
}

pub async fn rescan(cx: &Context) -> Answer {
    // A walk of every home holds the writer throughout: not started while a home that may
    // hang does not answer (the watcher would wait behind it). It is not bounded by
    // `server.fs_timeout` itself, as a large home takes longer.
    if cx.shared.hang.any() {
        let s = Arc::clone(&cx.shared);
        let started = std::time::Instant::now();
        let silent = tokio::task::spawn_blocking(move || {
            s.hang.all().into_iter().find(|h| !s.hang.answers(h))
        })
        .await
        .map_err(|e| RpcError::new(INDEX_ERROR, e.to_string()))?;
        if let Some(home) = silent {
            return Err(super::unresponsive(
                &home.configured,
                started.elapsed(),
                format!(
                    "index/rescan: the {} filesystem of home {} does not answer; not rescanning until it does",
                    home.filesystem.unwrap_or("network"),
                    home.configured.display()
                ),
            ));
        }
    }
    let s = Arc::clone(&cx.shared);
    let summary = tokio::task::spawn_blocking(move || s.rescan())
        .await
        .map_err(|e| RpcError::new(INDEX_ERROR, e.to_string()))?
        .map_err(|e| RpcError::new(INDEX_ERROR, e.to_string()))?;
    answer(&Rescan { summary })
}

pub async fn problems(cx: &Context) -> Answer {
    answer(&query(&cx.shared, |q| q.problems()).await?)
}
