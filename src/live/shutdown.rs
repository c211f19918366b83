//! The one shutdown token: cancelled once, seen by the watcher thread (polled), the
//! server's tasks and long waits (awaited).

/// Cloned into every part that must stop; `cancel()` stops them all.
pub type Shutdown = tokio_util::sync::CancellationToken;
