//! A connection's framing: request lines in (bounded), response and notification lines out.
//! The connection's own task writes every line: answers it computed at once directly, and
//! lines queued by other tasks (answers that waited, notifications) from one queue, in queue
//! order, so lines never interleave and an answer never overtakes what was queued before it.

use std::io::{Read, Write};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, BufReader, Interest, ReadBuf};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::frame::{self, Line};

/// Lines queued for a connection by other tasks.
const OUT_QUEUE: usize = 256;

/// The output buffer a connection keeps between writes.
pub const OUT_BUFFER: usize = 4096;

/// What reading gave.
pub enum Frame {
    /// One line (without `\n`), not blank: in [`Connection::line`].
    Request,
    /// The line passed [`frame::MAX_LINE`]: answer and close.
    TooLong,
    /// The peer closed (or the read failed).
    Closed,
}

/// What [`Connection::next`] gave.
pub enum Event {
    Frame(Frame),
    /// A line queued by another task, to write.
    Queued(String),
}

async fn read_frame(
    reader: &mut BufReader<Socket>,
    buf: &mut Vec<u8>,
    complete: &mut bool,
) -> Frame {
    loop {
        if std::mem::take(complete) {
            buf.clear();
        }
        match frame::read_line(reader, buf).await {
            Err(_) | Ok(Line::Eof) => return Frame::Closed,
            Ok(Line::TooLong) => return Frame::TooLong,
            Ok(Line::Complete) => {
                *complete = true;
                if !buf.iter().all(u8::is_ascii_whitespace) {
                    return Frame::Request;
                }
            }
        }
    }
}

/// A connection's socket, registered with the runtime for reading only. tokio's
/// `UnixStream` asks epoll for both directions, so each time the peer reads an answer the
/// socket turns writable again and wakes a runtime thread for nothing: a second wake-up
/// per request. Writability is asked for only while a write waits on a peer that is not
/// reading. Reads and writes never overlap (the connection's one task does both in turn).
struct Socket {
    /// `None` only if re-registering failed: the connection is then closed.
    fd: Option<AsyncFd<std::os::unix::net::UnixStream>>,
    /// Registered for writability too (a write is waiting on the peer).
    writable: bool,
}

impl Socket {
    fn new(stream: UnixStream) -> std::io::Result<Socket> {
        // Non-blocking already, as tokio left it.
        Ok(Socket {
            fd: Some(register(stream.into_std()?, Interest::READABLE)?),
            writable: false,
        })
    }

    fn fd(&self) -> std::io::Result<&AsyncFd<std::os::unix::net::UnixStream>> {
        self.fd
            .as_ref()
            .ok_or_else(|| std::io::ErrorKind::NotConnected.into())
    }

    /// Registers the socket again, for writability too or not.
    fn register(&mut self, writable: bool) -> std::io::Result<()> {
        if self.writable == writable {
            return Ok(());
        }
        let stream = self.fd.take().ok_or(std::io::ErrorKind::NotConnected)?;
        let interest = if writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        // A fresh registration reports what is ready now, so no edge is lost.
        self.fd = Some(register(stream.into_inner(), interest)?);
        self.writable = writable;
        Ok(())
    }

    async fn write_all(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let written = if self.writable {
                let mut ready = self.fd()?.writable().await?;
                match ready.try_io(|s| s.get_ref().write(data)) {
                    Ok(r) => r,
                    Err(_would_block) => continue,
                }
            } else {
                self.fd()?.get_ref().write(data)
            };
            match written {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.register(true)?,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.register(false)
    }

    fn shutdown(&self) {
        if let Ok(fd) = self.fd() {
            let _ = fd.get_ref().shutdown(std::net::Shutdown::Write);
        }
    }
}

fn register(
    stream: std::os::unix::net::UnixStream,
    interest: Interest,
) -> std::io::Result<AsyncFd<std::os::unix::net::UnixStream>> {
    // SAFETY: the stream owns its descriptor, which stays open and the same until the
    // `AsyncFd` (which owns the stream) is dropped or gives it back.
    Ok(unsafe { AsyncFd::register_with_interest(stream, interest) }?)
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let fd = self.fd()?;
        loop {
            let mut ready = ready!(fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let wanted = unfilled.len();
            match ready.try_io(|s| s.get_ref().read(unfilled)) {
                Ok(Ok(n)) => {
                    // A stream socket's read takes all it holds: a short one drained it,
                    // so the next read waits for epoll rather than failing with EAGAIN
                    // first (as tokio's own streams do).
                    if n > 0 && n < wanted {
                        ready.clear_ready();
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

pub struct Connection {
    reader: BufReader<Socket>,
    buf: Vec<u8>,
    /// True once `buf` holds a whole line; the next read starts a new one. A read cancelled
    /// mid-line (by a queued line to write) keeps what it took, so no byte is lost.
    complete: bool,
    out: mpsc::Sender<String>,
    queued: mpsc::Receiver<String>,
}

impl Connection {
    pub fn new(stream: UnixStream) -> std::io::Result<Connection> {
        let (out, queued) = mpsc::channel::<String>(OUT_QUEUE);
        Ok(Connection {
            reader: BufReader::new(Socket::new(stream)?),
            buf: Vec::new(),
            complete: false,
            out,
            queued,
        })
    }

    /// The next non-blank line, or the next line another task queued, whichever comes
    /// first (queued lines first when both are ready). Cancel-safe: a partial line stays
    /// buffered.
    pub async fn next(&mut self) -> Event {
        tokio::select! {
            biased;
            Some(line) = self.queued.recv() => Event::Queued(line),
            f = read_frame(&mut self.reader, &mut self.buf, &mut self.complete) => Event::Frame(f),
        }
    }

    /// The next line another task queued (never `None` while the connection lives: it
    /// holds a sender itself).
    pub async fn next_queued(&mut self) -> Option<String> {
        self.queued.recv().await
    }

    /// The line the last [`Frame::Request`] read.
    pub fn line(&self) -> &[u8] {
        &self.buf
    }

    /// True when the read buffer holds a whole non-blank line, which the next read returns
    /// without waiting on the peer.
    pub fn has_buffered_request(&self) -> bool {
        // A line cut short by a cancelled read continues in the buffer.
        let started = !self.complete && !self.buf.iter().all(u8::is_ascii_whitespace);
        let mut blank = !started;
        for &b in self.reader.buffer() {
            if b == b'\n' {
                if !blank {
                    return true;
                }
            } else if !b.is_ascii_whitespace() {
                blank = false;
            }
        }
        false
    }

    /// Moves the lines other tasks queued onto `out`, in queue order.
    pub fn take_queued(&mut self, out: &mut Vec<u8>) {
        while let Ok(line) = self.queued.try_recv() {
            frame::push_line(out, &line);
        }
    }

    /// Writes `out` (whole lines) in one write and empties it, failed or not; a buffer
    /// grown past [`OUT_BUFFER`] by a burst is given back.
    pub async fn write_out(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let written = self.reader.get_mut().write_all(out).await;
        out.clear();
        if out.capacity() > 4 * OUT_BUFFER {
            *out = Vec::with_capacity(OUT_BUFFER);
        }
        written
    }

    /// The queue of outgoing lines (for commands answering later, and subscriptions).
    pub fn sender(&self) -> mpsc::Sender<String> {
        self.out.clone()
    }

    /// Writes what is queued until every sender is gone (bounded), and closes.
    pub async fn close(self) {
        let Connection {
            out,
            mut queued,
            reader,
            ..
        } = self;
        let mut socket = reader.into_inner();
        // Our own sender first: the queue then ends when the last task holding one is done.
        drop(out);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(300), async {
            while let Some(mut line) = queued.recv().await {
                line.push('\n');
                if socket.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        })
        .await;
        socket.shutdown();
    }
}
