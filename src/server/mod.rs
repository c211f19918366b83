//! The Unix-socket JSON-RPC server, as small named parts: a [`Listener`] accepts under a
//! semaphore bound, a per-connection [`Handler`] runs a read-frame / apply loop, and
//! graceful shutdown runs through the agent's one [`Shutdown`] token.

pub mod frame;
mod methods;
pub mod socket;

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, Semaphore};

use crate::live::{Shared, Shutdown};
use crate::protocol::Notification;

use frame::{Line, RpcError};

/// Server limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `server.max_connections`.
    pub max_connections: usize,
    /// A connection with no subscription and nothing in flight closes after this long idle.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Requests one connection may have in flight; beyond it reading pauses (backpressure).
const IN_FLIGHT: usize = 64;
/// Lines queued for a connection's writer.
const OUT_QUEUE: usize = 256;

/// Accepts connections until shutdown.
pub struct Listener {
    pub listener: UnixListener,
    pub shared: Arc<Shared>,
    pub limits: Limits,
    pub shutdown: Shutdown,
    /// Cloned into every handler and never sent on: when the last clone drops, every
    /// connection has finished, which is what graceful shutdown waits for.
    pub shutdown_complete: mpsc::Sender<()>,
}

impl Listener {
    pub async fn run(self) {
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        loop {
            let permit = tokio::select! {
                p = Arc::clone(&permits).acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                _ = self.shutdown.triggered() => return,
            };
            let stream = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = self.shutdown.triggered() => return,
            };
            let handler = Handler {
                shared: Arc::clone(&self.shared),
                limits: self.limits,
                shutdown: self.shutdown.clone(),
                _shutdown_complete: self.shutdown_complete.clone(),
            };
            tokio::spawn(async move {
                handler.run(stream).await;
                drop(permit);
            });
        }
    }
}

/// One connection: reads lines, runs each request as a task, writes responses and
/// notifications through one queue so lines never interleave.
struct Handler {
    shared: Arc<Shared>,
    limits: Limits,
    shutdown: Shutdown,
    /// Dropped with the handler; see [`Listener::shutdown_complete`].
    _shutdown_complete: mpsc::Sender<()>,
}

impl Handler {
    async fn run(self, stream: UnixStream) {
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == socket::unsafe_uid() => {}
            other => {
                let uid = other
                    .map(|c| c.uid().to_string())
                    .unwrap_or_else(|_| "unknown".into());
                let mut stream = stream;
                let line = frame::response(
                    &Value::Null,
                    Err(RpcError::with_reason(
                        frame::INVALID_REQUEST,
                        "forbidden",
                        format!("peer uid {uid} may not use this agent"),
                    )),
                );
                let _ = stream.write_all(format!("{line}\n").as_bytes()).await;
                return;
            }
        }
        let (read, mut write) = stream.into_split();
        let (out_tx, mut out_rx) = mpsc::channel::<String>(OUT_QUEUE);
        let writer = tokio::spawn(async move {
            while let Some(mut line) = out_rx.recv().await {
                // One write per message, so a line is never split around its newline.
                line.push('\n');
                if write.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
            let _ = write.shutdown().await;
        });
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut reader = BufReader::new(read);
        let mut buf = Vec::new();
        let mut subscription: Option<tokio::task::JoinHandle<()>> = None;
        loop {
            let idle = if subscription.is_some() {
                Duration::MAX
            } else {
                self.limits.idle_timeout
            };
            let line = tokio::select! {
                r = tokio::time::timeout(idle, frame::read_line(&mut reader, &mut buf)) => r,
                _ = self.shutdown.triggered() => break,
            };
            match line {
                Err(_) if in_flight.available_permits() == IN_FLIGHT => break, // idle
                Err(_) => continue,
                Ok(Err(_)) | Ok(Ok(Line::Eof)) => break,
                Ok(Ok(Line::TooLong)) => {
                    let e = RpcError::new(
                        frame::INVALID_REQUEST,
                        format!("request line exceeds {} bytes", frame::MAX_LINE),
                    );
                    let _ = out_tx.send(frame::response(&Value::Null, Err(e))).await;
                    break;
                }
                Ok(Ok(Line::Complete)) => {}
            }
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let request = match frame::parse(&buf) {
                Ok(r) => r,
                Err(bad) => {
                    if out_tx
                        .send(frame::response(&bad.id, Err(bad.error)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    continue;
                }
            };
            match request.method.as_str() {
                "subscribe" => {
                    let filter = match subscribe_filter(&request.params) {
                        Ok(f) => f,
                        Err(e) => {
                            let _ = out_tx
                                .send(frame::response(&request.id.unwrap_or(Value::Null), Err(e)))
                                .await;
                            continue;
                        }
                    };
                    if let Some(old) = subscription.take() {
                        old.abort();
                    }
                    subscription = Some(tokio::spawn(forward(
                        self.shared.events.subscribe(),
                        filter,
                        out_tx.clone(),
                    )));
                    if let Some(id) = request.id {
                        let _ = out_tx
                            .send(frame::response(&id, Ok(json!({"subscribed": true}))))
                            .await;
                    }
                }
                "unsubscribe" => {
                    if let Some(old) = subscription.take() {
                        old.abort();
                    }
                    if let Some(id) = request.id {
                        let _ = out_tx
                            .send(frame::response(&id, Ok(json!({"subscribed": false}))))
                            .await;
                    }
                }
                _ => {
                    self.shared
                        .requests
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
                        break;
                    };
                    let shared = Arc::clone(&self.shared);
                    let id = request.id;
                    let mut answer = Box::pin(async move {
                        methods::apply(&shared, &request.method, request.params).await
                    });
                    // Most answers come from a reader without waiting on anything: answer
                    // those here, and give only the rest a task of their own. A task is
                    // always polled once when spawned, so it registers its own waker.
                    let polled = answer
                        .as_mut()
                        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()));
                    if let std::task::Poll::Ready(result) = polled {
                        if let Some(id) = id {
                            let _ = out_tx.send(frame::response(&id, result)).await;
                        }
                        drop(permit);
                        continue;
                    }
                    let out = out_tx.clone();
                    tokio::spawn(async move {
                        let result = answer.await;
                        if let Some(id) = id {
                            let _ = out.send(frame::response(&id, result)).await;
                        }
                        drop(permit);
                    });
                }
            }
        }
        // Finish in-flight requests (bounded), then close.
        let _ = tokio::time::timeout(
            Duration::from_millis(1500),
            in_flight.acquire_many(IN_FLIGHT as u32),
        )
        .await;
        if let Some(s) = subscription {
            s.abort();
        }
        drop(out_tx);
        let _ = tokio::time::timeout(Duration::from_millis(300), writer).await;
    }
}

/// `subscribe {threadIds?}`: no ids means every notification.
fn subscribe_filter(params: &Value) -> Result<Option<HashSet<String>>, RpcError> {
    match params.get("threadIds") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(ids)) => ids
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_ascii_lowercase)
                    .ok_or_else(|| RpcError::invalid_params("threadIds must be strings"))
            })
            .collect::<Result<HashSet<_>, _>>()
            .map(Some),
        Some(_) => Err(RpcError::invalid_params(
            "threadIds must be an array of strings",
        )),
    }
}

/// Forwards notifications to one subscriber. A subscriber too slow for the bounded queue
/// gets `index/lagged` and must re-read; the agent itself never waits for it.
async fn forward(
    mut events: broadcast::Receiver<Notification>,
    filter: Option<HashSet<String>>,
    out: mpsc::Sender<String>,
) {
    loop {
        let line = match events.recv().await {
            Ok(n) => {
                let wanted = match (&filter, n.thread_id()) {
                    (None, _) | (Some(_), None) => true,
                    (Some(ids), Some(t)) => ids.contains(t),
                };
                if !wanted {
                    continue;
                }
                frame::notification(n.method(), &n)
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                frame::notification("index/lagged", &json!({ "missed": missed }))
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        if out.send(line).await.is_err() {
            return;
        }
    }
}

/// The response line (without `\n`) the agent sends for one request line, or `None` for a
/// notification (a request without an id) — parsing, params and dispatch exactly as a
/// connection does, except `subscribe`/`unsubscribe`, which change a connection and are
/// answered here as acknowledged. For fuzzing and property tests of request handling.
pub async fn respond(shared: &Arc<Shared>, line: &[u8]) -> Option<String> {
    let request = match frame::parse(line) {
        Ok(r) => r,
        Err(bad) => return Some(frame::response(&bad.id, Err(bad.error))),
    };
    let result = match request.method.as_str() {
        "subscribe" => subscribe_filter(&request.params).map(|_| json!({"subscribed": true})),
        "unsubscribe" => Ok(json!({"subscribed": false})),
        _ => methods::apply(shared, &request.method, request.params).await,
    };
    request.id.map(|id| frame::response(&id, result))
}
