//! The framing of Codex's app-server sockets (`codex app-server --listen unix://PATH`, and
//! the daemon's `app-server-control.sock`): an HTTP/1.1 WebSocket upgrade, then one
//! JSON-RPC message per text frame (RFC 6455): the client side toward Codex, and the server
//! side for clients of the shim's own socket that speak it.
//!
//! [`LineReader`] and [`LineWriter`] turn the socket into the line streams the pumps relay:
//! each message becomes one line, each line one text frame, its bytes unchanged.

use std::io::{self, BufRead, BufReader, ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

/// Largest message accepted from Codex (it announces 16 MiB unfragmented).
const MAX_MESSAGE: usize = 256 << 20;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Connects and upgrades; the two halves.
pub fn connect(path: &std::path::Path) -> io::Result<(LineReader, LineWriter)> {
    let stream = UnixStream::connect(path)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let key = "cm9sbG91dGQtY29kZXgtYXBw"; // any 16 bytes, base64: no proof is needed locally
    write!(
        writer,
        "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )?;
    let mut status = String::new();
    reader.read_line(&mut status)?;
    if !status.starts_with("HTTP/1.1 101") {
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            format!(
                "the app-server socket refused the upgrade: {}",
                status.trim()
            ),
        ));
    }
    // Headers end at an empty line; bounded by the socket closing.
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        if header == "\r\n" || header == "\n" {
            break;
        }
    }
    Ok(halves(reader, writer, true))
}

/// Serves the upgrade of a client that sent `GET` (the shim's own socket, for clients
/// written for Codex's): the two halves, server side.
pub fn accept(stream: UnixStream) -> io::Result<(LineReader, LineWriter)> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut key = None;
    // The request line and headers, up to the empty line; bounded by the stream closing.
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        if header == "\r\n" || header == "\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.trim().eq_ignore_ascii_case("sec-websocket-key") {
                key = Some(value.trim().to_owned());
            }
        }
    }
    let Some(key) = key else {
        writer.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")?;
        return Err(io::Error::new(
            ErrorKind::InvalidData,
            "no Sec-WebSocket-Key",
        ));
    };
    write!(
        writer,
        "HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\
         sec-websocket-accept: {}\r\n\r\n",
        accept_key(&key)
    )?;
    Ok(halves(reader, writer, false))
}

fn halves(
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    client: bool,
) -> (LineReader, LineWriter) {
    let shared = Arc::new(Mutex::new(writer));
    (
        LineReader {
            inner: reader,
            frames: shared.clone(),
            client,
            pending: Vec::new(),
            at: 0,
            closed: false,
        },
        LineWriter {
            frames: shared,
            client,
            partial: Vec::new(),
        },
    )
}

/// `Sec-WebSocket-Accept` for a key: base64(SHA-1(key + the RFC 6455 GUID)).
pub fn accept_key(key: &str) -> String {
    let digest = sha1(format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes());
    base64(&digest)
}

/// SHA-1 (FIPS 180-4), only for the handshake above.
fn sha1(data: &[u8]) -> [u8; 20] {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64) * 8).to_be_bytes());
    for block in msg.chunks(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 20];
    for (i, x) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&x.to_be_bytes());
    }
    out
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.len();
        let v = u32::from(chunk[0]) << 16
            | u32::from(*chunk.get(1).unwrap_or(&0)) << 8
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                out.push(char::from(ABC[(v >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A mask when this side is the client (clients must mask; servers must not).
fn mask(client: bool) -> Option<[u8; 4]> {
    client.then(next_mask)
}

/// A frame's header and payload, masked when `mask` is given (clients must mask).
pub fn encode(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xFFFF => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Reads one frame: (fin, opcode, unmasked payload).
pub fn read_frame(r: &mut impl Read) -> io::Result<(bool, u8, Vec<u8>)> {
    let mut head = [0u8; 2];
    r.read_exact(&mut head)?;
    let fin = head[0] & 0x80 != 0;
    let opcode = head[0] & 0x0F;
    let masked = head[1] & 0x80 != 0;
    let len = match head[1] & 0x7F {
        126 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b)?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            r.read_exact(&mut b)?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|n| *n <= MAX_MESSAGE)
        .ok_or_else(|| io::Error::new(ErrorKind::InvalidData, "websocket frame too large"))?;
    let mut key = [0u8; 4];
    if masked {
        r.read_exact(&mut key)?;
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    Ok((fin, opcode, payload))
}

/// A mask for the next client frame. Masking guards browsers against cache poisoning; on a
/// local socket any varying key does.
fn next_mask() -> [u8; 4] {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0x9E37_79B9);
    N.fetch_add(0x6D2B_79F5, Ordering::Relaxed).to_be_bytes()
}

fn lock(m: &Mutex<UnixStream>) -> std::sync::MutexGuard<'_, UnixStream> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Codex's messages as lines: each message's bytes, then `\n`. Pings are answered.
pub struct LineReader {
    inner: BufReader<UnixStream>,
    frames: Arc<Mutex<UnixStream>>,
    /// Client side: frames sent are masked; server side: not.
    client: bool,
    pending: Vec<u8>,
    at: usize,
    closed: bool,
}

impl LineReader {
    /// The next whole message (fragments joined), `None` at close or end of stream.
    fn message(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut message: Vec<u8> = Vec::new();
        let mut started = false;
        loop {
            let (fin, opcode, payload) = match read_frame(&mut self.inner) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(e),
            };
            match opcode {
                PING => {
                    let pong = encode(PONG, &payload, mask(self.client));
                    lock(&self.frames).write_all(&pong)?;
                }
                PONG => {}
                CLOSE => return Ok(None),
                TEXT | BINARY if !started => {
                    started = true;
                    message = payload;
                }
                CONTINUATION if started => message.extend_from_slice(&payload),
                _ => {
                    return Err(io::Error::new(
                        ErrorKind::InvalidData,
                        format!("unexpected websocket opcode {opcode}"),
                    ))
                }
            }
            if started && fin && opcode != PING && opcode != PONG {
                if message.len() > MAX_MESSAGE {
                    return Err(io::Error::new(ErrorKind::InvalidData, "message too large"));
                }
                return Ok(Some(message));
            }
        }
    }
}

impl Read for LineReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at == self.pending.len() {
            if self.closed {
                return Ok(0);
            }
            match self.message()? {
                Some(mut m) => {
                    m.push(b'\n');
                    self.pending = m;
                    self.at = 0;
                }
                None => {
                    self.closed = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.pending.len() - self.at);
        buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Lines to Codex: each line (without its `\n`) as one masked text frame.
pub struct LineWriter {
    frames: Arc<Mutex<UnixStream>>,
    client: bool,
    partial: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while let Some(nl) = memchr::memchr(b'\n', rest) {
            let frame = if self.partial.is_empty() {
                encode(TEXT, &rest[..nl], mask(self.client))
            } else {
                self.partial.extend_from_slice(&rest[..nl]);
                let f = encode(TEXT, &self.partial, mask(self.client));
                self.partial.clear();
                f
            };
            lock(&self.frames).write_all(&frame)?;
            rest = &rest[nl + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    /// A trailing partial line goes as a last message; then a close frame and end of stream.
    fn drop(&mut self) {
        let mut s = lock(&self.frames);
        if !self.partial.is_empty() {
            let _ = s.write_all(&encode(TEXT, &self.partial, mask(self.client)));
        }
        let _ = s.write_all(&encode(CLOSE, &[], mask(self.client)));
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_accept_key_is_rfc_6455s() {
        // The example of RFC 6455 section 1.3.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
    }

    #[test]
    fn a_client_and_a_server_end_talk_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let (mut r, mut w) = accept(stream).unwrap();
            let mut line = Vec::new();
            BufReader::new(&mut r).read_until(b'\n', &mut line).unwrap();
            w.write_all(&line).unwrap();
        });
        let (r, mut w) = connect(&path).unwrap();
        w.write_all(b"{\"id\":1}\n").unwrap();
        let mut back = Vec::new();
        BufReader::new(r).read_until(b'\n', &mut back).unwrap();
        assert_eq!(back, b"{\"id\":1}\n");
        server.join().unwrap();
    }

    #[test]
    fn frames_round_trip_at_every_length_class_masked_or_not() {
        for len in [0usize, 1, 125, 126, 65_535, 65_536, 200_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            for mask in [None, Some([1, 2, 3, 4])] {
                let bytes = encode(TEXT, &payload, mask);
                let (fin, op, back) = read_frame(&mut &bytes[..]).unwrap();
                assert!(fin);
                assert_eq!(op, TEXT);
                assert_eq!(back, payload, "len {len} mask {mask:?}");
            }
        }
    }

    #[test]
    fn fragments_are_joined_and_pings_answered() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut frames = Vec::new();
        let mut first = encode(TEXT, b"{\"id\":", None);
        first[0] &= 0x7F; // not final
        frames.extend(first);
        frames.extend(encode(PING, b"p", None));
        frames.extend(encode(CONTINUATION, b"1}", None));
        frames.extend(encode(TEXT, b"{}", None));
        frames.extend(encode(CLOSE, &[], None));
        b.write_all(&frames).unwrap();
        let mut r = LineReader {
            inner: BufReader::new(a.try_clone().unwrap()),
            frames: Arc::new(Mutex::new(a)),
            client: true,
            pending: Vec::new(),
            at: 0,
            closed: false,
        };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(out, b"{\"id\":1}\n{}\n");
        let (_, op, payload) = read_frame(&mut b).unwrap();
        assert_eq!((op, payload.as_slice()), (PONG, &b"p"[..]));
    }

    #[test]
    fn each_line_becomes_one_frame_even_when_written_in_pieces() {
        let (a, mut b) = UnixStream::pair().unwrap();
        {
            let mut w = LineWriter {
                frames: Arc::new(Mutex::new(a)),
                client: true,
                partial: Vec::new(),
            };
            w.write_all(b"{\"a\":").unwrap();
            w.write_all(b"1}\n{\"b\":2}\n{\"c\"").unwrap();
        }
        let mut got = Vec::new();
        loop {
            let (_, op, payload) = read_frame(&mut b).unwrap();
            if op == CLOSE {
                break;
            }
            got.push(String::from_utf8(payload).unwrap());
        }
        assert_eq!(got, ["{\"a\":1}", "{\"b\":2}", "{\"c\""]);
    }
}
