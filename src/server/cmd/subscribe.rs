//! `subscribe {threadIds?}` and `unsubscribe`: a task per subscribed connection forwards
//! the notifications it wants into the connection's queue.

use std::collections::HashSet;

use tokio::sync::{broadcast, mpsc};

use super::{answer, Answer, Context};
use crate::protocol::request::SubscribeParams;
use crate::protocol::{Lagged, LaggedMessage, Notification, Subscribed};
use crate::server::frame;

/// A running subscription; ends when dropped.
pub struct Subscription(tokio::task::AbortHandle);

impl Drop for Subscription {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Which notifications a subscriber wants: with thread ids, those threads' notices and
/// the index-wide ones (problems naming no thread, rescans); without, everything.
pub struct Filter(Option<HashSet<String>>);

impl Filter {
    pub fn new(thread_ids: Option<Vec<String>>) -> Filter {
        Filter(thread_ids.map(|ids| ids.iter().map(|t| t.to_ascii_lowercase()).collect()))
    }

    pub fn wants(&self, n: &Notification) -> bool {
        match (&self.0, n.thread_id()) {
            (None, _) | (Some(_), None) => true,
            (Some(ids), Some(t)) => ids.contains(t),
        }
    }
}

/// A second `subscribe` replaces the first.
pub fn subscribe(cx: &Context, p: SubscribeParams) -> Answer {
    let task = tokio::spawn(forward(
        cx.shared.events.subscribe(),
        Filter::new(p.thread_ids),
        cx.out.clone(),
    ));
    *cx.subscription
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) =
        Some(Subscription(task.abort_handle()));
    answer(&Subscribed { subscribed: true })
}

pub fn unsubscribe(cx: &Context) -> Answer {
    cx.subscription
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    answer(&Subscribed { subscribed: false })
}

/// Forwards notifications to one subscriber. A subscriber too slow for the bounded queue
/// gets `index/lagged` and must re-read; the agent itself never waits for it.
async fn forward(
    mut events: broadcast::Receiver<std::sync::Arc<Notification>>,
    filter: Filter,
    out: mpsc::Sender<String>,
) {
    loop {
        let line = match events.recv().await {
            Ok(n) if filter.wants(&n) => frame::notification(&*n),
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                frame::notification(&LaggedMessage::Lagged(Lagged { missed }))
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if out.send(line).await.is_err() {
            return;
        }
    }
}
