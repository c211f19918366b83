//! The one shutdown token: set once, seen by the watcher thread (polled), the server's
//! tasks and long waits (awaited).

use std::sync::Arc;

use tokio::sync::watch;

/// Cloned into every part that must stop; [`Shutdown::trigger`] stops them all.
#[derive(Debug, Clone)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown(Arc::new(watch::Sender::new(false)))
    }

    pub fn trigger(&self) {
        self.0.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once triggered (at once if it already was).
    pub async fn triggered(&self) {
        let mut rx = self.0.subscribe();
        // An error means the sender is gone, which only happens at exit: stop too.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_by_every_clone() {
        let a = Shutdown::new();
        let b = a.clone();
        assert!(!b.is_triggered());
        a.trigger();
        assert!(b.is_triggered());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), b.triggered()).await
        })
        .expect("a triggered token resolves at once");
    }
}
