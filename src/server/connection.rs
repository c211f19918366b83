//! A connection's framing: request lines in (bounded), response and notification lines out.
//! The connection's own task writes every line: answers it computed at once directly, and
//! lines queued by other tasks (answers that waited, notifications) from one queue, in queue
//! order, so lines never interleave and an answer never overtakes what was queued before it.

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
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
    reader: &mut BufReader<OwnedReadHalf>,
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

pub struct Connection {
    reader: BufReader<OwnedReadHalf>,
    buf: Vec<u8>,
    /// True once `buf` holds a whole line; the next read starts a new one. A read cancelled
    /// mid-line (by a queued line to write) keeps what it took, so no byte is lost.
    complete: bool,
    writer: OwnedWriteHalf,
    out: mpsc::Sender<String>,
    queued: mpsc::Receiver<String>,
}

impl Connection {
    pub fn new(stream: UnixStream) -> Connection {
        let (read, writer) = stream.into_split();
        let (out, queued) = mpsc::channel::<String>(OUT_QUEUE);
        Connection {
            reader: BufReader::new(read),
            buf: Vec::new(),
            complete: false,
            writer,
            out,
            queued,
        }
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
        let written = self.writer.write_all(out).await;
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
            mut writer,
            ..
        } = self;
        // Our own sender first: the queue then ends when the last task holding one is done.
        drop(out);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(300), async {
            while let Some(mut line) = queued.recv().await {
                line.push('\n');
                if writer.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        })
        .await;
        let _ = writer.shutdown().await;
    }
}
