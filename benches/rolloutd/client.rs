//! A lean blocking client for the measurements: pre-built request lines, one response line
//! read per request, and a check that it is the answer asked for. Keeping the client cheap
//! keeps the figures about the agent.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// No read may hang the bench.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Conn {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    line: String,
    next_id: u64,
    timeout: Duration,
}

impl Conn {
    pub fn connect(socket: &Path) -> std::io::Result<Conn> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(READ_TIMEOUT))?;
        Ok(Conn {
            reader: BufReader::with_capacity(64 << 10, stream.try_clone()?),
            writer: stream,
            line: String::with_capacity(4096),
            next_id: 1,
            timeout: READ_TIMEOUT,
        })
    }

    /// Sends `method` with `params` (a JSON object text) and returns the response line.
    pub fn call(&mut self, method: &str, params: &str) -> Result<&str, String> {
        let id = self.next_id;
        self.next_id += 1;
        let req = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"{method}","params":{params}}}"#);
        self.send_line(&req)?;
        self.read_response(id)
    }

    pub fn send_line(&mut self, req: &str) -> Result<(), String> {
        let mut bytes = Vec::with_capacity(req.len() + 1);
        bytes.extend_from_slice(req.as_bytes());
        bytes.push(b'\n');
        self.writer
            .write_all(&bytes)
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads lines until the response with `id` (notifications are skipped).
    pub fn read_response(&mut self, id: u64) -> Result<&str, String> {
        let want = format!(r#""id":{id},"#);
        let want_last = format!(r#""id":{id}}}"#);
        for _ in 0..100_000 {
            let line = self.read_line()?;
            if line.contains(&want) || line.contains(&want_last) {
                if line.contains(r#""error""#) && !line.contains(r#""result""#) {
                    return Err(format!("agent error: {}", line.trim()));
                }
                return Ok(self.line.as_str());
            }
        }
        Err("no response".into())
    }

    /// The next line (a response or a notification).
    pub fn read_line(&mut self) -> Result<&str, String> {
        self.line.clear();
        if self.reader.buffer().is_empty() {
            self.wait_readable()?;
        }
        match self.reader.read_line(&mut self.line) {
            Ok(0) => Err("agent closed the connection".into()),
            Ok(_) => Ok(self.line.as_str()),
            Err(e) => Err(format!("read: {e}")),
        }
    }

    pub fn set_read_timeout(&mut self, t: Duration) -> std::io::Result<()> {
        self.timeout = t;
        self.reader.get_ref().set_read_timeout(Some(t))
    }

    /// Waits in `poll` until the answer is there, as an event-loop client waits, not in a
    /// blocking `read`: a reader blocked on the socket is woken a second time, for nothing,
    /// when the server takes the request off the socket (the freed space wakes every
    /// sleeper on it), and that wake-up would be billed to the server's CPU.
    fn wait_readable(&self) -> Result<(), String> {
        let mut fd = libc::pollfd {
            fd: self.reader.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = self.timeout.as_millis().min(i32::MAX as u128) as i32;
        for _ in 0..100 {
            // SAFETY: one valid pollfd, for the socket this connection owns.
            match unsafe { libc::poll(&mut fd, 1, ms) } {
                0 => return Err("read: timed out".into()),
                n if n > 0 => return Ok(()),
                _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
                _ => return Err(format!("poll: {}", std::io::Error::last_os_error())),
            }
        }
        Err("poll: interrupted 100 times".into())
    }

    /// The request `resolve` sends, answered by anything that answers with its id (the echo
    /// anchor sends the line back).
    pub fn call_echo(&mut self, thread_id: &str) -> Result<(), String> {
        let params = format!(r#"{{"threadId":"{thread_id}"}}"#);
        self.call("thread/resolve", &params).map(drop)
    }

    /// `thread/resolve` of a full id; checks that the answer is that thread's record.
    pub fn resolve(&mut self, thread_id: &str) -> Result<(), String> {
        let params = format!(r#"{{"threadId":"{thread_id}"}}"#);
        let line = self.call("thread/resolve", &params)?;
        if !line.contains(thread_id) || !line.contains(r#""result""#) {
            return Err(format!("unexpected answer: {}", line.trim()));
        }
        Ok(())
    }
}
