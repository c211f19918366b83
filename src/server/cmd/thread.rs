//! `thread/resolve`, `thread/checkResume`, `thread/list` and `thread/wait`.

use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::{answer, query_at, Answer, At, Context};
use crate::protocol::error::TIMEOUT;
use crate::protocol::request::{
    ThreadCheckResumeParams, ThreadListParams, ThreadResolveParams, ThreadWaitParams,
};
use crate::protocol::{ErrorData, ErrorReason, RpcError};
use crate::query::{ListParams, QueryError};

pub async fn resolve(cx: &Context, at: At, p: ThreadResolveParams) -> Answer {
    at.answer(cx, move |q| q.resolve_thread(&p.thread_id)).await
}

pub async fn check_resume(cx: &Context, at: At, p: ThreadCheckResumeParams) -> Answer {
    at.answer(cx, move |q| q.check_resume(&p.thread_id, &p.path))
        .await
}

pub async fn list(cx: &Context, at: At, p: ThreadListParams) -> Answer {
    let params = ListParams {
        archived: p.archived.into(),
        cwd: p.cwd,
        search: p.search,
        limit: p.limit,
        cursor: p.cursor,
    };
    at.answer(cx, move |q| q.list(&params)).await
}

/// Longest wait granted; a client wanting longer calls again.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Re-check the disk this often even without events (polling homes, missed events).
const RECHECK: Duration = Duration::from_millis(1000);

/// Returns the record as soon as the thread's rollout is indexed, or times out with
/// `data.reason = "notMaterialized"`.
pub async fn wait(cx: &Context, at: At, p: ThreadWaitParams) -> Answer {
    let shared = &cx.shared;
    let started = Instant::now();
    let deadline = started + Duration::from_millis(p.timeout_ms).min(MAX_WAIT);
    // Subscribe before the first check, so a rollout appearing in between is not missed.
    let mut events = shared.events.subscribe();
    let wanted = p.thread_id.to_ascii_lowercase();
    let mut first = Some(at.exposure);
    // A home that does not answer: the thread may be there, so the wait goes on (the other
    // homes' changes still arrive) and, if it ends empty, this is the answer.
    let mut unresponsive;
    loop {
        let id = p.thread_id.clone();
        // Re-worked out each round: the thread's file may have moved to another home.
        let exposure = match first.take() {
            Some(e) => e,
            None => super::thread_exposure(shared, &p.thread_id),
        };
        match query_at(shared, at.method, exposure, move |q| q.resolve_thread(&id)).await {
            Ok(record) => return answer(&record),
            Err(e) if e.reason() == Some(ErrorReason::NotFound) => unresponsive = None,
            Err(e) if e.reason() == Some(ErrorReason::FilesystemUnresponsive) => {
                unresponsive = Some(e);
            }
            Err(e) => return Err(e),
        }
        let next_check = (Instant::now() + RECHECK).min(deadline);
        loop {
            if Instant::now() >= deadline {
                if let Some(e) = unresponsive {
                    return Err(e);
                }
                let lookup = RpcError::from(&QueryError::NotFound {
                    thread_id: p.thread_id.clone(),
                });
                return Err(RpcError {
                    code: TIMEOUT,
                    message: format!(
                        "thread {} has no rollout after waiting {} ms: it has not materialized ({})",
                        p.thread_id,
                        deadline.duration_since(started).as_millis(),
                        crate::query::MATERIALIZES_WHEN
                    ),
                    data: Some(Box::new(ErrorData {
                        thread_id: Some(p.thread_id.clone()),
                        waited_ms: Some(started.elapsed().as_millis() as u64),
                        lookup: lookup.data,
                        ..ErrorData::new(ErrorReason::NotMaterialized)
                    })),
                });
            }
            let event = tokio::select! {
                e = tokio::time::timeout_at(next_check, events.recv()) => e,
                _ = shared.shutdown.cancelled() => Ok(Err(RecvError::Closed)),
            };
            match event {
                Err(_) => break, // periodic re-check
                Ok(Ok(n)) if n.thread_id().is_some_and(|t| t.starts_with(&wanted)) => break,
                Ok(Ok(_)) => continue,
                Ok(Err(RecvError::Lagged(_))) => break,
                Ok(Err(RecvError::Closed)) => return Err(RpcError::shutting_down()),
            }
        }
    }
}
