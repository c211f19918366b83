//! The Unix-socket JSON-RPC server, as small named parts (after tokio-rs/mini-redis): a
//! [`Listener`] accepts under a semaphore bound; each connection's `Handler` reads a
//! frame from its [`Connection`], parses it into a typed command and applies it through
//! its [`Session`]; one [`CancellationToken`] stops them all.

pub mod cmd;
pub mod connection;
pub mod frame;
pub mod socket;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::live::Shared;
use crate::protocol::error::INVALID_REQUEST;
use crate::protocol::{ClientRequest, ErrorReason, RpcError};
use cmd::Context;
use connection::{Connection, Event, Frame};

/// Server limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `server.max_connections`.
    pub max_connections: usize,
    /// A connection with no subscription and nothing in flight closes after this long idle.
    pub idle_timeout: Duration,
    /// A connection that has sent no request closes after this long (it holds a slot).
    pub first_request_timeout: Duration,
    /// `server.fs_timeout`: the deadline of a query on a home that may hang.
    pub fs_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            idle_timeout: Duration::from_secs(300),
            first_request_timeout: Duration::from_secs(10),
            fs_timeout: crate::config::DEFAULT_FS_TIMEOUT,
        }
    }
}

/// Requests one connection may have in flight; beyond it reading pauses (backpressure).
const IN_FLIGHT: usize = 64;

/// Accepts connections until shutdown.
pub struct Listener {
    pub listener: UnixListener,
    pub shared: Arc<Shared>,
    pub limits: Limits,
    pub shutdown: CancellationToken,
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
                _ = self.shutdown.cancelled() => return,
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
                _ = self.shutdown.cancelled() => return,
            };
            let shared = Arc::clone(&self.shared);
            let (limits, shutdown) = (self.limits, self.shutdown.clone());
            let done = self.shutdown_complete.clone();
            tokio::spawn(async move {
                if let Some(stream) = refuse_other_users(stream).await {
                    Handler::new(shared, stream, limits, shutdown).run().await;
                }
                drop((permit, done));
            });
        }
    }
}

/// A peer of another uid gets `forbidden` and the connection closes.
async fn refuse_other_users(mut stream: UnixStream) -> Option<UnixStream> {
    let uid = match stream.peer_cred() {
        Ok(cred) if cred.uid() == socket::unsafe_uid() => return Some(stream),
        Ok(cred) => cred.uid().to_string(),
        Err(_) => "unknown".to_owned(),
    };
    let e = RpcError::with_reason(
        INVALID_REQUEST,
        ErrorReason::Forbidden,
        format!("peer uid {uid} may not use this agent"),
    );
    let line = frame::error(&Value::Null, e);
    let _ = stream.write_all(format!("{line}\n").as_bytes()).await;
    // Closing with the peer's first request unread would reset the connection, and the
    // peer could lose the refusal: read to the end of that request (bounded), then close.
    let _ = tokio::time::timeout(Duration::from_millis(200), async {
        let mut sink = [0u8; 4096];
        let mut left = frame::MAX_LINE;
        while left > 0 {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) if sink[..n].contains(&b'\n') => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    None
}

/// One connection: read a frame, apply it, until the peer leaves, idles or we stop.
struct Handler {
    conn: Connection,
    session: Session,
    limits: Limits,
    shutdown: CancellationToken,
}

impl Handler {
    fn new(
        shared: Arc<Shared>,
        stream: UnixStream,
        limits: Limits,
        shutdown: CancellationToken,
    ) -> Self {
        let conn = Connection::new(stream);
        let session = Session::new(shared, conn.sender());
        Handler {
            conn,
            session,
            limits,
            shutdown,
        }
    }

    async fn run(mut self) {
        let mut timeout = self.limits.first_request_timeout;
        // One timer for the connection, re-armed only when it fires early: resetting it on
        // every request would cost a timer-wheel update per request.
        let mut last_request = Instant::now();
        let idle = tokio::time::sleep_until(deadline(last_request, timeout));
        tokio::pin!(idle);
        // One waiter for the connection's life, not one registered and dropped per request.
        let stop = self.shutdown.clone().cancelled_owned();
        tokio::pin!(stop);
        // Lines to write, in order: the answers of the requests already read (pipelined
        // requests are answered together, in one write) and lines other tasks queued.
        let mut out: Vec<u8> = Vec::with_capacity(OUT_BUFFER);
        loop {
            // Written once no complete request is left unread in the buffer: reading a
            // buffered line never waits, so no answer waits on the peer.
            if !out.is_empty()
                && !self.conn.has_buffered_request()
                && self.conn.write_out(&mut out).await.is_err()
            {
                break;
            }
            let frame = tokio::select! {
                biased;
                () = &mut stop => break,
                e = self.conn.next() => match e {
                    Event::Frame(f) => f,
                    Event::Queued(line) => {
                        frame::push_line(&mut out, &line);
                        continue;
                    }
                },
                () = &mut idle => {
                    let (now, due) = (Instant::now(), deadline(last_request, timeout));
                    if now >= due && !self.session.busy() {
                        break;
                    }
                    // Armed before the last request, or something is still in flight.
                    idle.as_mut().reset(if now < due { due } else { deadline(now, timeout) });
                    continue;
                }
            };
            match frame {
                Frame::Request => {
                    last_request = Instant::now();
                    // What other tasks queued before this answer goes before it.
                    self.conn.take_queued(&mut out);
                    if let Dispatched::Later(id, command) =
                        self.session.dispatch_now(self.conn.line(), &mut out)
                    {
                        let Some(permit) = self.reserve(&mut out).await else {
                            break;
                        };
                        if let Some(answer) = self.session.apply_reserved(permit, id, command) {
                            // After what other tasks queued before it.
                            self.conn.take_queued(&mut out);
                            frame::push_line(&mut out, &answer);
                        }
                    }
                }
                Frame::Closed => break,
                Frame::TooLong => {
                    let e = RpcError::new(
                        INVALID_REQUEST,
                        format!("request line exceeds {} bytes", frame::MAX_LINE),
                    );
                    frame::push_line(&mut out, &frame::error(&Value::Null, e));
                    break;
                }
            }
            timeout = if self.session.cx.subscribed() {
                FAR
            } else {
                self.limits.idle_timeout
            };
        }
        // Answers already made are still sent (a stop answers what was read).
        if !out.is_empty() {
            let _ = self.conn.write_out(&mut out).await;
        }
        self.session.finish().await;
        self.conn.close().await;
    }
}

impl Handler {
    /// An in-flight slot for a command to apply (`None`: stop, or the peer is gone). What
    /// is answered goes out first, and lines queued meanwhile are written while waiting:
    /// the tasks in flight hold their slots until their answers are queued, so a queue
    /// left full would keep every slot taken and this wait would never end.
    async fn reserve(&mut self, out: &mut Vec<u8>) -> Option<OwnedSemaphorePermit> {
        self.conn.write_out(out).await.ok()?;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                permit = self.session.reserve() => return permit,
                Some(line) = self.conn.next_queued() => {
                    frame::push_line(out, &line);
                    self.conn.write_out(out).await.ok()?;
                }
            }
        }
    }
}

/// The output buffer a connection keeps between writes (see [`Connection::write_out`]).
const OUT_BUFFER: usize = connection::OUT_BUFFER;

/// Longer than any connection lives: the idle timer of a subscribed connection.
const FAR: Duration = Duration::from_secs(10 * 365 * 86_400);

fn deadline(from: Instant, after: Duration) -> Instant {
    from.checked_add(after.min(FAR))
        .unwrap_or_else(|| Instant::now() + FAR)
}

/// What [`Session::dispatch_now`] left to do.
pub enum Dispatched {
    /// Answered onto the output, or nothing to answer.
    Done,
    /// A command to run with [`Session::apply`], and the request's id.
    Later(Option<Value>, ClientRequest),
}

/// What one connection's commands share, and the one dispatch path every request takes
/// (also the fuzz target's and the property tests').
pub struct Session {
    cx: Context,
    in_flight: Arc<Semaphore>,
}

impl Session {
    /// A session answering into `out`.
    pub fn new(shared: Arc<Shared>, out: mpsc::Sender<String>) -> Session {
        Session {
            cx: Context {
                shared,
                out,
                subscription: Arc::new(Mutex::new(None)),
            },
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
        }
    }

    /// One request line: parse it into a command, apply it, queue the response (none for a
    /// request without an id). A command not done after one poll gets a task of its own,
    /// so the connection keeps reading; past `IN_FLIGHT` (64) of those, this waits.
    pub async fn dispatch(&self, line: &[u8]) {
        if let Some(answer) = self.dispatch_inline(line).await {
            self.send(answer).await;
        }
    }

    /// [`Session::dispatch`], but an answer ready at once is returned for the caller to
    /// write rather than queued (the connection's own task writes it, with no hop).
    pub async fn dispatch_inline(&self, line: &[u8]) -> Option<String> {
        let mut out = Vec::new();
        match self.dispatch_now(line, &mut out) {
            Dispatched::Done => {
                // Only JSON text went in; drop the newline the caller adds back.
                out.pop();
                String::from_utf8(out).ok().filter(|l| !l.is_empty())
            }
            Dispatched::Later(id, command) => self.apply(id, command).await,
        }
    }

    /// One request line, as far as it goes without waiting: a parse error, or the answer
    /// of a command a reader gives at once, is appended to `out` with its newline (nothing
    /// for a request without an id); any other command is handed back for
    /// [`Session::apply`].
    pub fn dispatch_now(&self, line: &[u8], out: &mut Vec<u8>) -> Dispatched {
        let (id, command) = match frame::parse_command(line) {
            Some(parsed) => parsed,
            None => match frame::parse(line) {
                Ok(r) => (r.id, ClientRequest::parse(&r.method, r.params)),
                Err(bad) => {
                    frame::push_line(out, &frame::error(&bad.id, bad.error));
                    return Dispatched::Done;
                }
            },
        };
        let command = match command {
            Ok(c) => c,
            Err(e) => {
                if let Some(id) = id {
                    frame::push_line(out, &frame::error(&id, e));
                }
                return Dispatched::Done;
            }
        };
        self.cx
            .shared
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if command.answer_at_once_into(&self.cx.shared, id.as_ref(), out) {
            return Dispatched::Done;
        }
        Dispatched::Later(id, command)
    }

    /// Applies a command [`Session::dispatch_now`] handed back. A command not done after
    /// one poll gets a task of its own (its answer is queued), so the connection keeps
    /// reading; past `IN_FLIGHT` (64) of those, this waits.
    pub async fn apply(&self, id: Option<Value>, command: ClientRequest) -> Option<String> {
        let permit = self.reserve().await?;
        self.apply_reserved(permit, id, command)
    }

    /// One of the `IN_FLIGHT` slots (waits while all are taken; `None` once closed). A
    /// slot is held until the command's answer is queued.
    pub async fn reserve(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.in_flight).acquire_owned().await.ok()
    }

    /// [`Session::apply`] with a slot already reserved.
    pub fn apply_reserved(
        &self,
        permit: OwnedSemaphorePermit,
        id: Option<Value>,
        command: ClientRequest,
    ) -> Option<String> {
        let cx = self.cx.clone();
        let mut answer = Box::pin(async move { command.apply(&cx).await });
        // Most answers come from a reader without waiting on anything: answer those here.
        // A spawned task is polled again, so it registers its own waker.
        let polled = answer
            .as_mut()
            .poll(&mut TaskContext::from_waker(Waker::noop()));
        if let Poll::Ready(result) = polled {
            return id.map(|id| frame::response(&id, &result));
        }
        let out = self.cx.out.clone();
        tokio::spawn(async move {
            let result = answer.await;
            if let Some(id) = id {
                let _ = out.send(frame::response(&id, &result)).await;
            }
            drop(permit);
        });
        None
    }

    /// Queues a line for the peer.
    pub async fn send(&self, line: String) {
        // A closed queue means the peer is gone; the read side notices.
        let _ = self.cx.out.send(line).await;
    }

    /// Something keeps the connection open while it reads nothing: a subscription or a
    /// request in flight.
    pub fn busy(&self) -> bool {
        self.in_flight.available_permits() != IN_FLIGHT || self.cx.subscribed()
    }

    /// Waits until every request in flight has answered.
    pub async fn idle(&self) {
        let _ = self.in_flight.acquire_many(IN_FLIGHT as u32).await;
    }

    /// Finishes in-flight requests (bounded) and ends the subscription.
    async fn finish(&self) {
        let _ = tokio::time::timeout(Duration::from_millis(1500), self.idle()).await;
        self.cx
            .subscription
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }
}
