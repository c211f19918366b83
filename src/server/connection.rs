//! A connection's framing: request lines in (bounded), response and notification lines out
//! through one queue, so lines from concurrent commands never interleave.

use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedReadHalf;
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::frame::{self, Line};

/// Lines queued for a connection's writer.
const OUT_QUEUE: usize = 256;

/// What reading gave.
pub enum Frame<'a> {
    /// One line (without `\n`), not blank.
    Request(&'a [u8]),
    /// The line passed [`frame::MAX_LINE`]: answer and close.
    TooLong,
    /// Nothing arrived within the timeout.
    Idle,
    /// The peer closed (or the read failed).
    Closed,
}

pub struct Connection {
    reader: BufReader<OwnedReadHalf>,
    buf: Vec<u8>,
    out: mpsc::Sender<String>,
    writer: tokio::task::JoinHandle<()>,
}

impl Connection {
    pub fn new(stream: UnixStream) -> Connection {
        let (read, mut write) = stream.into_split();
        let (out, mut out_rx) = mpsc::channel::<String>(OUT_QUEUE);
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
        Connection {
            reader: BufReader::new(read),
            buf: Vec::new(),
            out,
            writer,
        }
    }

    /// The next non-blank line, waiting at most `timeout`.
    pub async fn read_frame(&mut self, timeout: Duration) -> Frame<'_> {
        loop {
            let read =
                tokio::time::timeout(timeout, frame::read_line(&mut self.reader, &mut self.buf));
            match read.await {
                Err(_) => return Frame::Idle,
                Ok(Err(_)) | Ok(Ok(Line::Eof)) => return Frame::Closed,
                Ok(Ok(Line::TooLong)) => return Frame::TooLong,
                Ok(Ok(Line::Complete)) if self.buf.iter().all(u8::is_ascii_whitespace) => {}
                Ok(Ok(Line::Complete)) => return Frame::Request(&self.buf),
            }
        }
    }

    /// The queue of outgoing lines (for commands answering later, and subscriptions).
    pub fn sender(&self) -> mpsc::Sender<String> {
        self.out.clone()
    }

    /// Flushes what is queued (bounded) and closes.
    pub async fn close(self) {
        drop(self.out);
        let _ = tokio::time::timeout(Duration::from_millis(300), self.writer).await;
    }
}
