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
/// Re-check the index this often even without events (an event missed, or lagged).
const RECHECK: Duration = Duration::from_millis(1000);

/// When a waiting `thread/wait` walks the homes again for a thread the index still does not
/// know, with no event about it. The watcher (or the poller) announces a rollout as it
/// appears, so such a walk only guards against a change it missed; yet it lists every day
/// directory (about 50 ms at 50,000 threads, 0.4 s at 500,000), so a client waiting long
/// must not repeat it every second. After the first walk: 1 s, then twice as long each
/// time, up to a minute.
#[derive(Debug)]
struct Rewalk {
    interval: Duration,
    next: Instant,
}

impl Rewalk {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(60);

    /// The first walk was made at `now`.
    fn new(now: Instant) -> Self {
        Rewalk {
            interval: Self::FIRST,
            next: now + Self::FIRST,
        }
    }

    /// True when a walk is due at `now`; the next is then set twice as far off.
    fn due(&mut self, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.interval = (self.interval * 2).min(Self::MAX);
        self.next = now + self.interval;
        true
    }
}

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
    let mut unresponsive = None;
    let mut rewalk = Rewalk::new(started);
    // Whether this round was started by the clock alone (no event about the thread).
    let mut periodic = false;
    loop {
        let id = p.thread_id.clone();
        let skip = periodic
            && !rewalk.due(Instant::now())
            && shared
                .read_query(|q| q.indexed_paths(&id))
                .flatten()
                .is_none();
        if !skip {
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
            periodic = false;
            match event {
                Err(_) => {
                    periodic = true;
                    break;
                }
                Ok(Ok(n)) if n.thread_id().is_some_and(|t| t.starts_with(&wanted)) => break,
                Ok(Ok(_)) => continue,
                Ok(Err(RecvError::Lagged(_))) => break,
                Ok(Err(RecvError::Closed)) => return Err(RpcError::shutting_down()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewalk_backs_off_from_a_second_to_a_minute() {
        let t0 = Instant::now();
        let mut rewalk = Rewalk::new(t0);
        assert!(!rewalk.due(t0));
        assert!(!rewalk.due(t0 + Duration::from_millis(999)));
        let mut at = t0;
        let mut gaps = Vec::new();
        for _ in 0..10 {
            let mut probe = at;
            while !rewalk.due(probe) {
                probe += Duration::from_millis(250);
            }
            gaps.push((probe - at).as_secs());
            at = probe;
        }
        assert_eq!(gaps, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
    }
}
