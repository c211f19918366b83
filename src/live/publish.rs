//! The one publisher: turns every change the index commits into a notification, whoever
//! made the write (the watcher, a crawl, a query's read-repair, a rescan).

use std::sync::Arc;

use tokio::sync::{broadcast, Notify};

use super::HomesCell;
use crate::identity::Homes;
use crate::index::{Change, ChangeSink, IndexedFile, ProblemChange, ThreadChange};
use crate::protocol::{Notification, ProblemNotice, ThreadChanged, ThreadRemoved};
use crate::query::ThreadRecord;

/// Also sees every committed change, after the notifications went out.
pub type ChangeObserver = Box<dyn Fn(&Homes, &[Change]) + Send + Sync>;

/// The index's change sink in the agent.
pub struct Publisher {
    events: broadcast::Sender<Arc<Notification>>,
    homes: HomesCell,
    observer: Option<ChangeObserver>,
    /// Signalled after every publish, for listeners that only need "something changed".
    changed: Arc<Notify>,
}

impl Publisher {
    pub fn new(
        events: broadcast::Sender<Arc<Notification>>,
        homes: HomesCell,
        observer: Option<ChangeObserver>,
        changed: Arc<Notify>,
    ) -> Publisher {
        Publisher {
            events,
            homes,
            observer,
            changed,
        }
    }
}

impl ChangeSink for Publisher {
    fn publish(&self, changes: &[Change]) {
        let homes: Arc<Homes> = self
            .homes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        for change in changes {
            tracing::debug!(?change, "change");
        }
        // Records are built only for someone listening (subscribers, waits).
        if self.events.receiver_count() > 0 {
            for change in changes {
                // No receivers left is fine: nobody subscribed.
                let _ = self.events.send(Arc::new(notification(change, &homes)));
            }
        }
        if let Some(observer) = &self.observer {
            observer(&homes, changes);
        }
        self.changed.notify_one();
    }
}

/// The notification for one change.
pub fn notification(change: &Change, homes: &Homes) -> Notification {
    match change {
        Change::Thread {
            kind: ThreadChange::Removed,
            file,
            ..
        } => Notification::Removed(ThreadRemoved {
            thread_id: file.head.thread_id.clone(),
            path: display_path(homes, file),
            canonical_path: file.path.clone(),
        }),
        Change::Thread {
            kind,
            file,
            previous_path,
        } => {
            let changed = ThreadChanged {
                thread_id: file.head.thread_id.clone(),
                record: ThreadRecord::new(file, homes),
                previous_path: previous_path.clone(),
            };
            match kind {
                ThreadChange::Materialized => Notification::Materialized(changed),
                ThreadChange::Archived => Notification::Archived(changed),
                ThreadChange::Unarchived => Notification::Unarchived(changed),
                ThreadChange::Compressed => Notification::Compressed(changed),
                ThreadChange::Updated | ThreadChange::Removed => Notification::Updated(changed),
            }
        }
        Change::Problem { kind, row } => {
            let notice = ProblemNotice {
                path: homes
                    .homes
                    .iter()
                    .find(|h| h.real == row.home)
                    .map(|h| h.display_spelling(&row.path))
                    .unwrap_or_else(|| row.path.clone()),
                reason: row.kind,
                detail: row.detail.clone(),
                thread_id: row.thread_id.clone(),
            };
            match kind {
                ProblemChange::Added => Notification::ProblemAdded(notice),
                ProblemChange::Cleared => Notification::ProblemCleared(notice),
            }
        }
    }
}

fn display_path(homes: &Homes, file: &IndexedFile) -> std::path::PathBuf {
    homes
        .homes
        .iter()
        .find(|h| h.real == file.home)
        .map(|h| h.display_spelling(&file.path))
        .unwrap_or_else(|| file.path.clone())
}
