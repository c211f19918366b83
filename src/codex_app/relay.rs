//! The two pumps. Lines are relayed as the bytes they arrived as, in order, and a read's
//! worth of complete lines goes out in one write; the shim only ever inserts whole lines
//! (its own error responses), so output is cut at line ends and never mid-line.
//!
//! Server → client is never held back: lines are written as soon as they are read, in
//! pipefuls. Only a line that has a `"thread"` key is parsed first (to learn the rollout
//! path Codex holds for a thread it announced), so a client that resumes right after
//! `thread/start` is already checked against it.
//!
//! Client → server is sequential: a checked request is decided (bounded by the materialize
//! timeout) before the lines after it are relayed, so order is kept.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::ask::{self, Rolloutd};
use super::decide::{self, Decision};
use super::line::{self, Client, PathRequest};

/// Bytes asked of the OS per read of the client's input.
const CHUNK: usize = 64 * 1024;

/// Rollout paths of the threads one app-server announced, by lowercase thread id.
pub type Active = Arc<Mutex<HashMap<String, String>>>;

/// The writer toward Codex; `None` once closed (so the other pump can close it too).
pub type Upstream<W> = Arc<Mutex<Option<W>>>;

/// Closes the upstream writer: Codex sees end of input.
pub fn close<W>(upstream: &Upstream<W>) {
    if let Ok(mut w) = upstream.lock() {
        w.take();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes to the upstream; false once it is closed or failed.
fn send<W: Write>(upstream: &Upstream<W>, bytes: &[u8]) -> bool {
    if bytes.is_empty() {
        return true;
    }
    let mut guard = lock(upstream);
    let Some(w) = guard.as_mut() else {
        return false;
    };
    if w.write_all(bytes).and_then(|_| w.flush()).is_err() {
        guard.take();
        return false;
    }
    true
}

fn reply<W: Write>(client: &Mutex<W>, bytes: &[u8]) -> bool {
    let mut w = lock(client);
    w.write_all(bytes).and_then(|_| w.flush()).is_ok()
}

/// Decides checked requests. Without rolloutd (`ask` is `None`) everything is forwarded.
pub struct Checker {
    pub ask: Option<Box<dyn Rolloutd>>,
    pub active: Active,
    pub materialize_timeout: Duration,
    /// Relative paths are taken against this (Codex's cwd: the shim starts it in its own).
    pub cwd: PathBuf,
}

/// What the client pump does with a checked request.
pub enum Outcome {
    Forward,
    Send(Vec<u8>),
    Reply(Vec<u8>),
}

impl Checker {
    pub fn check(&mut self, req: &PathRequest, line: &[u8]) -> Outcome {
        let Some(ask) = self.ask.as_mut() else {
            return Outcome::Forward;
        };
        let path = absolute(&self.cwd, Path::new(&req.path));
        let mut waited = None;
        // At most two passes: the second follows a wait for materialization.
        for _ in 0..2 {
            let check = match check_with_sibling(ask.as_mut(), &req.thread_id, &path) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(method = %req.method, thread_id = %req.thread_id, error = %e, "rolloutd could not check the path; forwarding unchanged");
                    return Outcome::Forward;
                }
            };
            let active = lock(&self.active)
                .get(&req.thread_id.to_ascii_lowercase())
                .cloned();
            let homes = ask.homes();
            // Codex's state DB is read only when the active path does not settle it.
            let db = match (&check.record, check.ok) {
                (Some(r), true)
                    if decide::codex_spelling(homes, &r.canonical_path, &[active.as_deref()])
                        .is_none() =>
                {
                    ask::codex_rollout_path(homes, &req.thread_id)
                }
                _ => None,
            };
            let held = [active.as_deref(), db.as_deref()];
            match decide::decide(req, &check, &held, homes, waited) {
                Decision::Forward => return Outcome::Forward,
                Decision::Rewrite(to) => {
                    tracing::info!(method = %req.method, thread_id = %req.thread_id, from = %req.path, to = %to, "rewrote the rollout path to the spelling Codex holds");
                    return match line::rewrite_path(line, &to) {
                        Some(bytes) => Outcome::Send(bytes),
                        None => Outcome::Forward,
                    };
                }
                Decision::Refuse { message, data } => {
                    tracing::info!(method = %req.method, thread_id = %req.thread_id, path = %req.path, reason = %data["reason"], "refused before reaching Codex");
                    return Outcome::Reply(line::error_response(&req.id, &message, data));
                }
                Decision::Wait => {
                    tracing::info!(method = %req.method, thread_id = %req.thread_id, path = %req.path, timeout_ms = self.materialize_timeout.as_millis() as u64, "waiting for the thread's rollout to materialize");
                    let started = Instant::now();
                    ask.wait(&req.thread_id, &path, self.materialize_timeout);
                    waited = Some(started.elapsed());
                }
            }
        }
        Outcome::Forward
    }
}

/// `thread/checkResume`, except that a `missing` `.jsonl` whose `.jsonl.zst` is this
/// thread's rollout counts as that file (Codex opens the compressed sibling itself), and a
/// `missing` `.jsonl.zst` whose plain `.jsonl` is (Codex decompressed it on resume) too.
fn check_with_sibling(
    ask: &mut dyn Rolloutd,
    thread_id: &str,
    path: &Path,
) -> Result<crate::query::CheckResume, String> {
    use crate::codex_state::spelling;
    let check = ask.check_resume(thread_id, path)?;
    if check.reason != Some(crate::protocol::PathReason::Missing) {
        return Ok(check);
    }
    let plain = spelling::plain(path);
    let sibling = if plain != path {
        plain
    } else if path.extension().is_some_and(|e| e == "jsonl") {
        spelling::with_zst(path)
    } else {
        return Ok(check);
    };
    match ask.check_resume(thread_id, &sibling) {
        Ok(other) if other.ok => Ok(other),
        _ => Ok(check),
    }
}

fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        cwd.join(p)
    }
}

/// Client → server until the client's input ends (then Codex's input is closed) or Codex's
/// input fails. A trailing partial line is forwarded as it is.
pub fn pump_client<R: Read, W: Write, C: Write>(
    mut input: R,
    upstream: &Upstream<W>,
    client: &Mutex<C>,
    checker: &mut Checker,
) {
    let mut buf = vec![0u8; CHUNK];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0; // first byte of the next line
        let mut flushed = 0; // bytes of `pending` already relayed
        while let Some(nl) = memchr::memchr(b'\n', &pending[start..]) {
            let end = start + nl + 1;
            if let Client::Check(req) = line::classify(&pending[start..end - 1]) {
                if !send(upstream, &pending[flushed..start]) {
                    return;
                }
                let sent = match checker.check(&req, &pending[start..end - 1]) {
                    Outcome::Forward => send(upstream, &pending[start..end]),
                    Outcome::Send(bytes) => send(upstream, &bytes),
                    // A client that is gone is the other pump's to notice.
                    Outcome::Reply(bytes) => {
                        reply(client, &bytes);
                        true
                    }
                };
                if !sent {
                    return;
                }
                flushed = end;
            }
            start = end;
        }
        if !send(upstream, &pending[flushed..start]) {
            return;
        }
        pending.drain(..start);
    }
    send(upstream, &pending);
    close(upstream);
}

/// Bytes asked of the OS per read of Codex's output: as much as its pipe holds (see
/// [`widen_pipe`]), so a burst of notifications costs one read and one write per pipeful.
pub const SERVER_CHUNK: usize = 1 << 20;

/// Asks the kernel to make the pipe at `fd` hold [`SERVER_CHUNK`] bytes (64 KiB by
/// default), so a fast writer and the shim each wake once per pipeful, not per 64 KiB.
/// Best effort: a pipe that cannot grow (a per-user limit, not a pipe) stays as it is.
pub fn widen_pipe(fd: &impl std::os::fd::AsRawFd) {
    // SAFETY: F_SETPIPE_SZ takes an int and touches only the pipe's capacity; on a
    // descriptor that is not a pipe it fails with EBADF/EINVAL, which is ignored.
    unsafe {
        libc::fcntl(
            fd.as_raw_fd(),
            libc::F_SETPIPE_SZ,
            SERVER_CHUNK as libc::c_int,
        );
    }
}

/// Server → client until Codex's output ends. When the client stops reading (its end is
/// closed), Codex's input is closed and its output drained, so Codex is never left blocked
/// on a full pipe.
///
/// Each read's complete lines go out in one write, straight from the read buffer; only the
/// partial line at its end stays (moved to the front) until its end arrives. The bytes are
/// only scanned, never split or parsed, unless they may announce a thread (see [`learn`]).
pub fn pump_server<R: Read, W, C: Write>(
    mut input: R,
    client: &Mutex<C>,
    upstream: &Upstream<W>,
    active: &Active,
) {
    let mut buf = vec![0u8; SERVER_CHUNK];
    let mut held = 0; // bytes of a partial line at the front of `buf`
    let mut client_open = true;
    loop {
        if held == buf.len() {
            // One line longer than the buffer: it is held whole until its end.
            buf.resize(buf.len() * 2, 0);
        }
        let n = match input.read(&mut buf[held..]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        if !client_open {
            continue;
        }
        let filled = held + n;
        // Only the new bytes can hold the first line end: the held ones had none.
        let Some(last) = memchr::memrchr(b'\n', &buf[held..filled]).map(|i| held + i) else {
            held = filled;
            continue;
        };
        let lines = &buf[..=last];
        learn(lines, active);
        if !reply(client, lines) {
            client_open = false;
            close(upstream);
        }
        buf.copy_within(last + 1..filled, 0);
        held = filled - (last + 1);
        if buf.len() > SERVER_CHUNK && held < SERVER_CHUNK {
            // A long line has gone: give its memory back.
            buf.truncate(SERVER_CHUNK);
            buf.shrink_to_fit();
        }
    }
    if client_open && held > 0 {
        reply(client, &buf[..held]);
    }
}

/// Records the rollout paths announced in `lines` (complete lines). A line announces a
/// thread only with a `"thread"` key (a `thread/start|resume|fork` response or a
/// `thread/started` notification); streaming turn events carry `"threadId"` instead, so
/// they are passed over by one vectorised scan, with no split and no parse.
fn learn(lines: &[u8], active: &Active) {
    let finder = memchr::memmem::Finder::new(line::THREAD_KEY);
    let mut at = 0;
    while let Some(i) = finder.find(&lines[at..]) {
        let hit = at + i;
        let start = memchr::memrchr(b'\n', &lines[..hit]).map_or(0, |s| s + 1);
        let end = memchr::memchr(b'\n', &lines[hit..]).map_or(lines.len(), |e| hit + e);
        if let Some((id, path)) = line::announced_thread(&lines[start..end]) {
            lock(active).insert(id.to_ascii_lowercase(), path);
        }
        at = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader handing out fixed chunks, to cut lines at awkward places.
    struct Chunks(Vec<Vec<u8>>);
    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            // At most what `buf` holds; the rest is the next read's.
            let c = self.0.remove(0);
            let n = c.len().min(buf.len());
            buf[..n].copy_from_slice(&c[..n]);
            if n < c.len() {
                self.0.insert(0, c[n..].to_vec());
            }
            Ok(n)
        }
    }

    fn checker() -> Checker {
        Checker {
            ask: None,
            active: Active::default(),
            materialize_timeout: Duration::ZERO,
            cwd: PathBuf::from("/"),
        }
    }

    /// Writes through to a shared buffer, so the bytes survive the pump dropping its writer.
    struct Spy(Arc<Mutex<Vec<u8>>>);
    impl Write for Spy {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn client_bytes_pass_unchanged_across_chunk_boundaries() {
        let input = b"{\"id\":1,\"method\":\"a\"}\n\n  {\"id\":2,\"method\":\"thread/resume\",\"params\":{\"threadId\":\"T\",\"path\":\"/p\"}}\r\nnot json\ntail";
        for cut in 1..input.len() {
            let chunks = Chunks(vec![input[..cut].to_vec(), input[cut..].to_vec()]);
            let seen = Arc::new(Mutex::new(Vec::new()));
            let up: Upstream<Spy> = Arc::new(Mutex::new(Some(Spy(seen.clone()))));
            let client = Mutex::new(Vec::new());
            pump_client(chunks, &up, &client, &mut checker());
            assert_eq!(lock(&seen).as_slice(), &input[..], "cut at {cut}");
            assert!(
                lock(&up).is_none(),
                "Codex's input was not closed at the end"
            );
            assert!(lock(&client).is_empty());
        }
    }

    #[test]
    fn server_bytes_pass_unchanged_and_announced_paths_are_learned() {
        let input = b"{\"id\":1,\"result\":{\"thread\":{\"id\":\"AB\",\"path\":\"/h/r.jsonl\"}}}\n{\"method\":\"x\"}\npartial";
        for cut in 1..input.len() {
            let chunks = Chunks(vec![input[..cut].to_vec(), input[cut..].to_vec()]);
            let client = Mutex::new(Vec::new());
            let up: Upstream<Vec<u8>> = Arc::new(Mutex::new(Some(Vec::new())));
            let active = Active::default();
            pump_server(chunks, &client, &up, &active);
            assert_eq!(lock(&client).as_slice(), &input[..], "cut at {cut}");
            assert_eq!(
                lock(&active).get("ab").map(String::as_str),
                Some("/h/r.jsonl")
            );
        }
    }

    #[test]
    fn lines_longer_than_the_buffer_pass_whole_and_every_announcement_is_learned() {
        let mut input = Vec::new();
        input.extend_from_slice(b"{\"method\":\"x\",\"params\":{\"t\":\"");
        input.resize(input.len() + 3 * SERVER_CHUNK, b'a');
        input.extend_from_slice(b"\"}}\n");
        for (id, path) in [("A", "/a"), ("B", "/b"), ("C", "/c")] {
            input.extend_from_slice(
                format!("{{\"method\":\"thread/started\",\"params\":{{\"thread\":{{\"id\":\"{id}\",\"path\":\"{path}\"}}}}}}\n")
                    .as_bytes(),
            );
            // A `"thread"` that announces nothing, between them.
            input.extend_from_slice(
                b"{\"method\":\"y\",\"params\":{\"text\":\"\\\"thread\\\"\"}}\n",
            );
        }
        // Cut into reads of every size class, so the long line spans many of them.
        let cuts: Vec<Vec<u8>> = input
            .chunks(SERVER_CHUNK / 3 + 7)
            .map(<[u8]>::to_vec)
            .collect();
        let client = Mutex::new(Vec::new());
        let up: Upstream<Vec<u8>> = Arc::new(Mutex::new(Some(Vec::new())));
        let active = Active::default();
        pump_server(Chunks(cuts), &client, &up, &active);
        assert!(
            lock(&client).as_slice() == input.as_slice(),
            "bytes changed"
        );
        let active = lock(&active);
        assert_eq!(active.len(), 3);
        for (id, path) in [("a", "/a"), ("b", "/b"), ("c", "/c")] {
            assert_eq!(active.get(id).map(String::as_str), Some(path));
        }
    }

    /// A client whose end is closed.
    struct Closed;
    impl Write for Closed {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_client_closes_codexs_input_and_output_is_drained() {
        let chunks = Chunks(vec![b"{}\n".to_vec(), b"{}\n".to_vec(), b"{}\n".to_vec()]);
        let up: Upstream<Vec<u8>> = Arc::new(Mutex::new(Some(Vec::new())));
        pump_server(chunks, &Mutex::new(Closed), &up, &Active::default());
        assert!(lock(&up).is_none(), "Codex's input was not closed");
    }
}
