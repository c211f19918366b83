//! Server → client on stdio without copying Codex's output through the shim, when both ends
//! are pipes (as when a client spawns the shim). `tee(2)` lends the shim a copy of what
//! is in Codex's pipe without consuming it, to find the line ends and the lines that
//! announce a thread; `splice(2)` then moves the complete lines into the client's pipe as
//! page references. The bytes, their order and the cut at line ends are those of
//! [`relay::pump_server`], which takes over for a partial line (`tee` would hand the same
//! bytes back at once instead of waiting for more) and for anything that is not a pipe.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

use super::relay::{self, Active, ServerRelay, Upstream};

/// Like [`relay::pump_server`], zero-copy while both `input` and the client are pipes.
pub fn pump_server<R: Read + AsRawFd, W, C: Write + AsRawFd>(
    mut input: R,
    client: &Mutex<C>,
    upstream: &Upstream<W>,
    active: &Active,
) {
    let from = input.as_raw_fd();
    let to = relay::lock(client).as_raw_fd();
    let scratch = match (is_pipe(from) && is_pipe(to)).then(pipe).flatten() {
        Some(p) => p,
        None => return relay::pump_server(input, client, upstream, active),
    };
    relay::widen_pipe(&scratch.1);
    let mut relay = ServerRelay::new(client, upstream, active);
    loop {
        if relay.held > 0 || !relay.client_open {
            // A partial line being completed, or the output only drained: read and copy.
            if !relay.copy_once(&mut input) {
                break;
            }
            continue;
        }
        // Blocks until Codex has written something (0: its output ended).
        let n = match tee(from, scratch.1.as_raw_fd(), relay::SERVER_CHUNK) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let seen = &mut relay.scratch()[..n];
        if read_exact(scratch.0.as_raw_fd(), seen).is_err() {
            // The scratch pipe is in an unknown state: copy from here on.
            while relay.copy_once(&mut input) {}
            break;
        }
        let Some(last) = memchr::memrchr(b'\n', seen) else {
            // No line end yet: the copying pump reads the partial line out and waits.
            if !relay.copy_once(&mut input) {
                break;
            }
            continue;
        };
        relay::learn(&seen[..=last], active);
        let moved = {
            let _order = relay::lock(client); // no reply of the client pump in between
            move_all(from, to, last + 1)
        };
        match moved {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::BrokenPipe => relay.client_gone(),
            // Lines may be lost in the client's pipe; nothing else can be done with it.
            Err(_) => relay.client_gone(),
        }
    }
    relay.finish();
}

fn is_pipe(fd: RawFd) -> bool {
    // SAFETY: fstat writes one `stat` for a descriptor we hold.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFIFO
    }
}

/// A new pipe: (read end, write end).
fn pipe() -> Option<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors, owned from here on.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Some(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn tee(from: RawFd, to: RawFd, len: usize) -> std::io::Result<usize> {
    // SAFETY: tee takes two descriptors we hold and copies no memory of ours.
    let n = unsafe { libc::tee(from, to, len, 0) };
    usize::try_from(n).map_err(|_| std::io::Error::last_os_error())
}

fn read_exact(fd: RawFd, buf: &mut [u8]) -> std::io::Result<()> {
    let mut at = 0;
    while at < buf.len() {
        // SAFETY: reads at most the rest of `buf` into it.
        let n = unsafe { libc::read(fd, buf[at..].as_mut_ptr().cast(), buf.len() - at) };
        match n {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            n if n > 0 => at += n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// Moves `len` bytes (already in `from`) into `to`, waiting while `to` is full.
fn move_all(from: RawFd, to: RawFd, mut len: usize) -> std::io::Result<()> {
    while len > 0 {
        // SAFETY: splice between two descriptors we hold; no memory of ours is touched.
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE,
            )
        };
        match n {
            0 => return Err(ErrorKind::UnexpectedEof.into()),
            n if n > 0 => len -= n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::sync::Arc;

    /// Codex's output and the client's input as real pipes, written in awkward pieces by a
    /// thread: every byte arrives, in order, and every announced thread is learned.
    #[test]
    fn pipes_are_relayed_byte_for_byte_with_partial_and_long_lines() {
        let mut input = Vec::new();
        input.extend_from_slice(
            b"{\"id\":1,\"result\":{\"thread\":{\"id\":\"AB\",\"path\":\"/h/r.jsonl\"}}}\n",
        );
        input.extend_from_slice(b"{\"method\":\"x\",\"params\":{\"t\":\"");
        input.resize(input.len() + 3 * relay::SERVER_CHUNK, b'a');
        input.extend_from_slice(b"\"}}\r\n\xff\xfe not utf-8\n");
        for i in 0..20_000 {
            input.extend_from_slice(
                format!("{{\"method\":\"d\",\"params\":{{\"delta\":\"{i}\"}}}}\n").as_bytes(),
            );
        }
        input.extend_from_slice(b"{\"method\":\"thread/started\",\"params\":{\"thread\":{\"id\":\"CD\",\"path\":\"/h/c.jsonl\"}}}\n");
        input.extend_from_slice(b"a trailing partial line");

        let (codex_r, mut codex_w) = os_pipe();
        let (client_r, client_w) = os_pipe();
        let writer = {
            let input = input.clone();
            std::thread::spawn(move || {
                // Pieces that cut lines anywhere, some tiny, some larger than a pipe.
                let mut at = 0;
                let mut size = 1;
                while at < input.len() {
                    let end = (at + size).min(input.len());
                    codex_w.write_all(&input[at..end]).unwrap();
                    at = end;
                    size = (size * 7 + 3) % 200_000 + 1;
                }
            })
        };
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut r = client_r;
            r.read_to_end(&mut got).unwrap();
            got
        });
        let client = Mutex::new(client_w);
        let (up, _keep) = UnixStream::pair().unwrap();
        let upstream: Upstream<UnixStream> = Arc::new(Mutex::new(Some(up)));
        let active = Active::default();
        pump_server(codex_r, &client, &upstream, &active);
        writer.join().unwrap();
        drop(client);
        let got = reader.join().unwrap();
        assert!(
            got == input,
            "bytes changed ({} vs {})",
            got.len(),
            input.len()
        );
        let active = relay::lock(&active);
        assert_eq!(active.get("ab").map(String::as_str), Some("/h/r.jsonl"));
        assert_eq!(active.get("cd").map(String::as_str), Some("/h/c.jsonl"));
    }

    fn os_pipe() -> (std::fs::File, std::fs::File) {
        let (r, w) = pipe().unwrap();
        (std::fs::File::from(r), std::fs::File::from(w))
    }
}
