//! The bounded head read: the first `session_meta` line and the first real user prompt.
//!
//! Rollouts reach many GB, so this never reads past [`HeadLimits`]. Codex writes each line
//! with one `write_all`, so lines are whole in practice, but a trailing partial line and
//! unparsable lines are tolerated after the first.

use std::borrow::Cow;
use std::io::{self, BufRead, Read};

use serde::Deserialize;
use serde_json::value::RawValue;

use super::problem::ProblemKind;

/// Bounds on one head read.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Longest first line accepted. Codex 0.169 writes ~21 KB; forks and large base
    /// instructions make it bigger.
    pub meta_line_max: usize,
    /// Total (decompressed) bytes looked at before giving up on finding a title.
    pub max_bytes: usize,
    /// Lines looked at before giving up on finding a title.
    pub max_lines: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        HeadLimits {
            meta_line_max: 4 << 20,
            max_bytes: 8 << 20,
            max_lines: 256,
        }
    }
}

/// What the head of a rollout says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutHead {
    /// `session_meta.payload.id`: the thread id of record, in its canonical lower-case
    /// form (ids are compared case-insensitively, as Codex parses them as UUIDs).
    pub thread_id: String,
    /// `session_meta.payload.id` as the file spells it, when that is not `thread_id`.
    pub thread_id_as_written: Option<String>,
    /// `session_meta.payload.timestamp` (UTC, `…Z`), the thread's start.
    pub timestamp: Option<String>,
    pub cwd: Option<String>,
    pub originator: Option<String>,
    pub cli_version: Option<String>,
    /// `"cli"`, `"exec"`, … or compact JSON for structured sources (`{"subagent":…}`).
    pub source: Option<String>,
    pub model_provider: Option<String>,
    pub forked_from_id: Option<String>,
    pub git_branch: Option<String>,
    /// The first real user prompt.
    pub title: Option<String>,
}

/// Why a head could not be read.
#[derive(Debug)]
pub enum HeadError {
    /// The content is not a rollout head; carries the kind and a detail fragment.
    Bad(ProblemKind, String),
    /// Reading failed.
    Io(io::Error),
}

impl From<io::Error> for HeadError {
    fn from(e: io::Error) -> Self {
        HeadError::Io(e)
    }
}

/// Reads the head from `reader` (already decompressed if needed).
pub fn read_head<R: BufRead>(
    reader: &mut R,
    limits: &HeadLimits,
) -> Result<RolloutHead, HeadError> {
    read_head_into(reader, limits, &mut Vec::with_capacity(32 << 10))
}

/// As [`read_head`], with the caller's line buffer (reused across files).
pub fn read_head_into<R: BufRead>(
    reader: &mut R,
    limits: &HeadLimits,
    line: &mut Vec<u8>,
) -> Result<RolloutHead, HeadError> {
    let mut budget = limits.max_bytes;
    match read_line_capped(reader, line, limits.meta_line_max)? {
        LineRead::Eof => return Err(HeadError::Bad(ProblemKind::Empty, "no bytes".into())),
        LineRead::TooLong => {
            return Err(HeadError::Bad(
                ProblemKind::HeadTooLarge,
                format!("first line exceeds {} bytes", limits.meta_line_max),
            ))
        }
        LineRead::Complete | LineRead::Partial => {}
    }
    budget = budget.saturating_sub(line.len() + 1);
    let mut head = parse_session_meta(line)?;

    for _ in 1..limits.max_lines {
        if budget == 0 {
            break;
        }
        match read_line_capped(reader, line, budget)? {
            LineRead::Eof | LineRead::TooLong => break,
            LineRead::Complete | LineRead::Partial => {}
        }
        budget = budget.saturating_sub(line.len() + 1);
        if let Some(title) = user_prompt(line) {
            head.title = Some(title);
            break;
        }
    }
    Ok(head)
}

enum LineRead {
    Complete,
    /// Bytes then EOF without a newline.
    Partial,
    /// The line would exceed the cap; nothing past the cap was consumed.
    TooLong,
    Eof,
}

/// Reads one line (without its `\n`) into `buf`, never holding more than `cap` bytes.
fn read_line_capped<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, cap: usize) -> io::Result<LineRead> {
    buf.clear();
    loop {
        let available = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Partial
            });
        }
        let newline = memchr::memchr(b'\n', available);
        let take = newline.unwrap_or(available.len());
        if buf.len() + take > cap {
            return Ok(LineRead::TooLong);
        }
        buf.extend_from_slice(&available[..take]);
        r.consume(take + usize::from(newline.is_some()));
        if newline.is_some() {
            return Ok(LineRead::Complete);
        }
    }
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MetaPayload {
    id: Option<String>,
    timestamp: Option<String>,
    cwd: Option<String>,
    originator: Option<String>,
    cli_version: Option<String>,
    source: Option<Box<RawValue>>,
    model_provider: Option<String>,
    forked_from_id: Option<String>,
    git: Option<Git>,
}

#[derive(Deserialize)]
struct Git {
    branch: Option<String>,
}

/// The envelope and its `session_meta` payload in one pass: the common case, which scans
/// the ~21 KB line once instead of twice.
#[derive(Deserialize)]
struct MetaEnvelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    payload: Option<MetaPayload>,
}

fn parse_session_meta(line: &[u8]) -> Result<RolloutHead, HeadError> {
    let text = std::str::from_utf8(line).map_err(|e| {
        HeadError::Bad(
            ProblemKind::InvalidUtf8,
            format!("first line is not UTF-8 ({e})"),
        )
    })?;
    if let Some(head) = session_meta_cut(text) {
        return Ok(head);
    }
    parse_session_meta_full(text)
}

/// Strings at least this long (content bytes) are cut by [`cut_long_strings`]: longer than
/// any field name, so a cut key is never one serde knows.
const CUT_MIN: usize = 256;

/// What a cut string holds instead: a head value containing it came from a cut string.
const CUT_MARK: &str = "rolloutd:cut-string";

/// The common case of [`parse_session_meta`] without serde scanning the ~21 KB of
/// `base_instructions` byte by byte: the line's long strings are cut to [`CUT_MARK`] first
/// (a memchr scan), then the short line is parsed. `None` when the full parse must decide.
///
/// Exact: the cut line has the same tokens as the line, only the content of some strings
/// differs, and each cut string is one serde accepts in every mode (no control character,
/// only valid escapes, no surrogate `\u` escape), so serde accepts one line where it accepts
/// the other. A string's content only reaches the head as a value, which then holds the mark:
/// such a head is not used. Cut keys are longer than any known field, so unknown either way.
fn session_meta_cut(text: &str) -> Option<RolloutHead> {
    let cut = cut_long_strings(text)?;
    let MetaEnvelope {
        kind,
        payload: Some(meta),
    } = serde_json::from_str::<MetaEnvelope>(&cut).ok()?
    else {
        return None;
    };
    if kind != "session_meta" {
        return None;
    }
    let head = head_from_meta(meta)?;
    let marked = [
        Some(&head.thread_id),
        head.thread_id_as_written.as_ref(),
        head.timestamp.as_ref(),
        head.cwd.as_ref(),
        head.originator.as_ref(),
        head.cli_version.as_ref(),
        head.source.as_ref(),
        head.model_provider.as_ref(),
        head.forked_from_id.as_ref(),
        head.git_branch.as_ref(),
    ]
    .into_iter()
    .flatten()
    .any(|v| v.contains(CUT_MARK));
    (!marked).then_some(head)
}

/// `text` with the content of each string of [`CUT_MIN`] or more bytes replaced by
/// [`CUT_MARK`]. `None` when nothing was cut, or when a string is not certainly valid for
/// serde (a control character or a surrogate escape in a long string, a bad escape
/// anywhere) or never ends: the full parse decides those.
fn cut_long_strings(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0; // bytes of `text` before this are in `out`
    let mut at = 0;
    while let Some(open) = memchr::memchr(b'"', &bytes[at..]).map(|i| at + i) {
        let start = open + 1;
        let end = string_end(bytes, start)?;
        if end - start >= CUT_MIN {
            if has_control_byte(&bytes[start..end]) {
                return None;
            }
            let o = out.get_or_insert_with(|| String::with_capacity(1024));
            o.push_str(&text[copied..start]);
            o.push_str(CUT_MARK);
            copied = end;
        }
        at = end + 1;
    }
    let mut o = out?;
    o.push_str(&text[copied..]);
    Some(o)
}

/// Whether `b` holds a byte below 0x20 (serde rejects those raw in a string). Folded a
/// chunk at a time, without an early exit per byte, so that it vectorizes.
fn has_control_byte(b: &[u8]) -> bool {
    let mut chunks = b.chunks_exact(64);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |any, &x| any | (x < 0x20)) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&x| x < 0x20)
}

/// The index of the `"` closing the string whose content starts at `start`; `None` if it
/// does not close or holds an escape that is not certainly valid in every serde mode.
fn string_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    loop {
        let i = at + memchr::memchr2(b'"', b'\\', &bytes[at..])?;
        if bytes[i] == b'"' {
            return Some(i);
        }
        match *bytes.get(i + 1)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => at = i + 2,
            b'u' => {
                let hex = std::str::from_utf8(bytes.get(i + 2..i + 6)?).ok()?;
                if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                let unit = u16::from_str_radix(hex, 16).ok()?;
                // A surrogate is valid or not depending on its pair and on the mode.
                if (0xD800..=0xDFFF).contains(&unit) {
                    return None;
                }
                at = i + 6;
            }
            _ => return None,
        }
    }
}

/// The `session_meta` parse that names exactly what is wrong with a line.
fn parse_session_meta_full(text: &str) -> Result<RolloutHead, HeadError> {
    if let Ok(MetaEnvelope {
        kind,
        payload: Some(meta),
    }) = serde_json::from_str::<MetaEnvelope>(text)
    {
        if kind == "session_meta" {
            if let Some(head) = head_from_meta(meta) {
                return Ok(head);
            }
        }
    }
    // Anything else takes the two-step path, which names exactly what is wrong.
    let envelope: Envelope = serde_json::from_str(text).map_err(|e| {
        HeadError::Bad(
            ProblemKind::InvalidJson,
            format!("first line is not a JSON record ({e})"),
        )
    })?;
    if envelope.kind != "session_meta" {
        return Err(HeadError::Bad(
            ProblemKind::NotSessionMeta,
            format!("first record is {:?}, not session_meta", envelope.kind),
        ));
    }
    let payload = envelope.payload.ok_or_else(|| {
        HeadError::Bad(
            ProblemKind::NotSessionMeta,
            "session_meta has no payload".into(),
        )
    })?;
    let meta: MetaPayload = serde_json::from_str(payload.get()).map_err(|e| {
        HeadError::Bad(
            ProblemKind::NotSessionMeta,
            format!("session_meta payload does not parse ({e})"),
        )
    })?;
    head_from_meta(meta)
        .ok_or_else(|| HeadError::Bad(ProblemKind::NotSessionMeta, "session_meta has no id".into()))
}

/// The head a parsed `session_meta` payload gives; `None` without an id.
fn head_from_meta(meta: MetaPayload) -> Option<RolloutHead> {
    let written = meta
        .id
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())?;
    let thread_id = written.to_ascii_lowercase();
    let thread_id_as_written = (written != thread_id).then_some(written);
    let source = meta.source.map(|raw| {
        serde_json::from_str::<String>(raw.get()).unwrap_or_else(|_| raw.get().to_owned())
    });
    Some(RolloutHead {
        thread_id,
        thread_id_as_written,
        timestamp: meta.timestamp,
        cwd: meta.cwd,
        originator: meta.originator,
        cli_version: meta.cli_version,
        source,
        model_provider: meta.model_provider,
        forked_from_id: meta.forked_from_id,
        git_branch: meta.git.and_then(|g| g.branch),
        title: None,
    })
}

/// A line that may carry a user prompt, read in one pass: the fields of every shape are
/// kept as raw JSON, and only the one the shape needs is parsed further.
#[derive(Deserialize)]
struct PromptLine<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    payload: Option<PromptPayload<'a>>,
}

#[derive(Deserialize)]
struct PromptPayload<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    /// `event_msg` / `user_message`.
    #[serde(borrow)]
    message: Option<&'a RawValue>,
    /// `event_msg` / `item_completed`.
    #[serde(borrow)]
    item: Option<&'a RawValue>,
    /// `response_item` / `message`: these three.
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    internal_chat_message_metadata_passthrough: Option<&'a RawValue>,
}

/// Parses a field kept raw; absent is `T::default()` (as `#[serde(default)]` would give).
fn field<'a, T: Deserialize<'a> + Default>(raw: Option<&'a RawValue>) -> Option<T> {
    match raw {
        Some(raw) => serde_json::from_str(raw.get()).ok(),
        None => Some(T::default()),
    }
}

// Strings borrow from the line where they hold no escape: these are parsed for every
// candidate line, and allocating each cost more than the parse.
#[derive(Deserialize)]
struct CompletedItem<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow)]
    content: Vec<ContentPart<'a>>,
}

#[derive(Deserialize)]
struct Passthrough<'a> {
    #[serde(borrow)]
    content_item_kinds: Option<Vec<Cow<'a, str>>>,
}

#[derive(Deserialize)]
struct ContentPart<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    text: Option<Cow<'a, str>>,
}

/// Codex puts injected context before this marker in a user message; the prompt follows it.
const USER_MESSAGE_BEGIN: &str = "## My request for Codex:";

/// Openings of user-role messages that Codex injects rather than the user typing them.
const INJECTED_PREFIXES: &[&str] = &[
    "<environment_context>",
    "<user_instructions>",
    "<user_shell_command>",
    "<permissions instructions>",
    "<INSTRUCTIONS>",
    "<turn_aborted>",
    "<subagent_notification>",
    "<skill>",
    "# AGENTS.md instructions",
];

/// The user prompt a line carries, if it is one of the three shapes Codex writes.
fn user_prompt(line: &[u8]) -> Option<String> {
    // Each shape names a user (`user_message`, `UserMessage`, `"role":"user"`); a line
    // without that text, and without an escape that could spell it, is none of them, and
    // is not parsed (most lines before the prompt).
    static USER: std::sync::LazyLock<[memchr::memmem::Finder<'static>; 2]> =
        std::sync::LazyLock::new(|| {
            [
                memchr::memmem::Finder::new(b"user"),
                memchr::memmem::Finder::new(b"User"),
            ]
        });
    let finder = |i: usize| USER[i].find(line).is_some();
    if !finder(0) && !finder(1) && memchr::memchr(b'\\', line).is_none() {
        return None;
    }
    let parsed: PromptLine = serde_json::from_slice(line).ok()?;
    let payload = parsed.payload?;
    let text = match (parsed.kind.as_ref(), payload.kind.as_ref()) {
        ("event_msg", "user_message") => {
            serde_json::from_str::<Cow<str>>(payload.message?.get()).ok()?
        }
        ("event_msg", "item_completed") => {
            let item: CompletedItem = serde_json::from_str(payload.item?.get()).ok()?;
            if item.kind != "UserMessage" {
                return None;
            }
            return clean_prompt(&join_text(&item.content));
        }
        ("response_item", "message") => {
            let role: Option<Cow<str>> = field(payload.role)?;
            if role.as_deref() != Some("user") {
                return None;
            }
            let content: Vec<ContentPart> = field(payload.content)?;
            let passthrough: Option<Passthrough> =
                field(payload.internal_chat_message_metadata_passthrough)?;
            let kinds = passthrough.and_then(|p| p.content_item_kinds);
            if let Some(kinds) = kinds {
                if !kinds.iter().any(|k| k.starts_with("user.")) {
                    return None;
                }
            }
            return clean_prompt(&join_text(&content));
        }
        _ => return None,
    };
    clean_prompt(&text)
}

fn join_text<'a>(parts: &'a [ContentPart<'a>]) -> Cow<'a, str> {
    let mut texts = parts
        .iter()
        .filter(|p| p.kind.ends_with("text"))
        .filter_map(|p| p.text.as_deref());
    match (texts.next(), texts.next()) {
        (None, _) => Cow::Borrowed(""),
        (Some(one), None) => Cow::Borrowed(one),
        (Some(first), Some(second)) => {
            let mut all = vec![first, second];
            all.extend(texts);
            Cow::Owned(all.join("\n"))
        }
    }
}

fn clean_prompt(text: &str) -> Option<String> {
    let text = match text.find(USER_MESSAGE_BEGIN) {
        Some(at) => &text[at + USER_MESSAGE_BEGIN.len()..],
        None => text,
    };
    let text = text.trim();
    if text.is_empty() || INJECTED_PREFIXES.iter().any(|p| text.starts_with(p)) {
        return None;
    }
    Some(text.to_owned())
}

/// A buffered reader over a buffer the caller keeps: a head read per file would otherwise
/// allocate 64 KiB for each file (and the allocator hand it back and fault it in again).
pub struct ReusedBufReader<'b, R> {
    inner: R,
    buf: &'b mut Vec<u8>,
    pos: usize,
    filled: usize,
}

impl<'b, R: Read> ReusedBufReader<'b, R> {
    /// Reads through `buf`, sized to `capacity` (zeroed only when it grows).
    pub fn new(inner: R, buf: &'b mut Vec<u8>, capacity: usize) -> Self {
        buf.resize(capacity.max(1), 0);
        ReusedBufReader {
            inner,
            buf,
            pos: 0,
            filled: 0,
        }
    }
}

impl<R: Read> Read for ReusedBufReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let available = self.fill_buf()?;
            let n = available.len().min(out.len());
            out[..n].copy_from_slice(&available[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for ReusedBufReader<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos >= self.filled {
            self.filled = self.inner.read(self.buf)?;
            self.pos = 0;
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.filled);
    }
}

/// A reader that counts the bytes taken from the file, so callers can prove the bound.
pub struct CountingReader<R> {
    inner: R,
    pub count: u64,
}

impl<R> CountingReader<R> {
    pub fn new(inner: R) -> Self {
        CountingReader { inner, count: 0 }
    }
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head_of(text: &str) -> Result<RolloutHead, HeadError> {
        read_head(
            &mut io::Cursor::new(text.as_bytes()),
            &HeadLimits::default(),
        )
    }

    const META: &str = r#"{"timestamp":"2026-11-21T19:02:43.663Z","ordinal":0,"type":"session_meta","payload":{"id":"01a1ff7d-4aab-7f60-bd31-0e4a5bf4615c","timestamp":"2026-11-21T19:02:43.635Z","cwd":"/w","originator":"codex_exec","cli_version":"0.169.0","source":{"subagent":"review"},"model_provider":"openai","git":{"branch":"main"}}}"#;

    #[test]
    fn title_skips_injected_context() {
        let text = format!(
            "{META}\n{}\n{}\n",
            r#"{"type":"response_item","payload":{"type":"message","role":"user","content":[{"type":"input_text","text":"<environment_context>cwd</environment_context>"}]}}"#,
            r#"{"type":"response_item","payload":{"type":"message","role":"user","content":[{"type":"input_text","text":"fix the cart"}]}}"#
        );
        let head = head_of(&text).unwrap();
        assert_eq!(head.title.as_deref(), Some("fix the cart"));
        assert_eq!(head.source.as_deref(), Some(r#"{"subagent":"review"}"#));
        assert_eq!(head.git_branch.as_deref(), Some("main"));
    }

    #[test]
    fn title_from_each_shape() {
        for line in [
            r#"{"type":"event_msg","payload":{"type":"user_message","message":"one"}}"#,
            r#"{"type":"event_msg","payload":{"type":"item_completed","item":{"type":"UserMessage","content":[{"type":"text","text":"one"}]}}}"#,
            r#"{"type":"response_item","payload":{"type":"message","role":"user","content":[{"type":"input_text","text":"ctx ## My request for Codex: one"}]}}"#,
        ] {
            let head = head_of(&format!("{META}\n{line}")).unwrap();
            assert_eq!(head.title.as_deref(), Some("one"), "{line}");
        }
    }

    /// Each shape's fields are read as their own types: a field of the wrong type makes the
    /// line no prompt, and the next line is tried; fields of other shapes are ignored.
    #[test]
    fn a_prompt_field_of_the_wrong_type_is_no_prompt() {
        for (line, want) in [
            (
                r#"{"type":"event_msg","payload":{"type":"user_message","message":null}}"#,
                None,
            ),
            (
                r#"{"type":"event_msg","payload":{"type":"user_message","message":"one","role":7,"content":{}}}"#,
                Some("one"),
            ),
            (
                r#"{"type":"response_item","payload":{"type":"message","role":null,"content":[{"type":"input_text","text":"one"}]}}"#,
                None,
            ),
            (
                r#"{"type":"response_item","payload":{"type":"message","role":"user","content":null}}"#,
                None,
            ),
            (
                r#"{"type":"response_item","payload":{"type":"message","role":"user","content":[{"type":"input_text","text":"one"}],"internal_chat_message_metadata_passthrough":null,"message":7}}"#,
                Some("one"),
            ),
            (
                r#"{"type":"event_msg","payload":{"type":"item_completed","item":{"type":"AgentMessage","content":[{"type":"text","text":"one"}]}}}"#,
                None,
            ),
            (r#"{"type":"event_msg","payload":"user_message"}"#, None),
        ] {
            let later =
                r#"{"type":"event_msg","payload":{"type":"user_message","message":"later"}}"#;
            let head = head_of(&format!("{META}\n{line}\n{later}\n")).unwrap();
            assert_eq!(
                head.title.as_deref(),
                Some(want.unwrap_or("later")),
                "{line}"
            );
        }
    }

    #[test]
    fn passthrough_kinds_mark_harness_messages() {
        let line = r#"{"type":"response_item","payload":{"type":"message","role":"user","content":[{"type":"input_text","text":"looks real"}],"internal_chat_message_metadata_passthrough":{"content_item_kinds":["environments.environment_context"]}}}"#;
        assert_eq!(head_of(&format!("{META}\n{line}\n")).unwrap().title, None);
    }

    /// `session_meta` lines with a long string (`x` repeated) at `{}`.
    fn meta_with(long_at: &str) -> String {
        let meta = format!(
            r#"{{"timestamp":"2026-11-21T19:02:43.663Z","type":"session_meta","payload":{{"id":"01A1ff7d-4aab-7f60-bd31-0e4a5bf4615c","timestamp":"2026-11-21T19:02:43.635Z","cwd":"/w","originator":"codex_exec","cli_version":"0.169.0","source":{{"subagent":"review"}},"model_provider":"openai","base_instructions":{{"text":"{long_at}","provenance":{{"type":"model"}}}},"git":{{"branch":"main"}}}}}}"#
        );
        meta
    }

    fn long(s: &str) -> String {
        format!("{}{s}{}", "x".repeat(300), "y".repeat(300))
    }

    /// The cut parse gives what the full parse gives, or nothing; returns whether it gave.
    fn cut_agrees(text: &str) -> bool {
        let full = parse_session_meta_full(text);
        let cut = session_meta_cut(text);
        if let Some(head) = &cut {
            assert_eq!(Some(head), full.as_ref().ok(), "{text}");
        }
        assert_eq!(
            format!("{:?}", parse_session_meta(text.as_bytes())),
            format!("{full:?}"),
            "{text}"
        );
        cut.is_some()
    }

    #[test]
    fn long_strings_are_cut_exactly() {
        // Used: what serde accepts in every mode, the long string in no value the head keeps.
        for text in [
            meta_with(&long("")),
            meta_with(&long(r#"\"quoted\""#)),
            meta_with(&long(r"\\")),
            meta_with(&format!("{}\\\\", long(""))),
            meta_with(&long(r"\n\t\r\b\f\/\u0041\u00e9\uFFFF")),
            meta_with(&long("é中😀")),
            // A long key is unknown to serde whether cut or not.
            meta_with(&long("")).replacen(r#""git""#, &format!(r#""{}":1,"git""#, long("")), 1),
            // The key text inside other strings changes nothing.
            meta_with(&long(r#"\",\"base_instructions\":\""#)).replacen(
                r#""cwd":"/w""#,
                r#""cwd":"/w \"base_instructions\":\"x\"""#,
                1,
            ),
        ] {
            assert!(cut_agrees(&text), "{text}");
        }
        // Not used: the full parse decides (and agrees, being the one parse).
        for text in [
            // Raw control characters and bad escapes: serde rejects the line.
            meta_with(&long("\t")),
            meta_with(&long("\u{1}")),
            meta_with(&long(r"\x")),
            meta_with(&long(r"\u12")),
            meta_with(&long(r"\u12g4")),
            meta_with(&long(r"\")),
            // Surrogate escapes: valid or not by mode and pairing.
            meta_with(&long(r"\ud83d\ude00")),
            meta_with(&long(r"\ud83d")),
            meta_with(&long(r"\uDC00")),
            // A long value the head keeps.
            meta_with("").replacen(r#""cwd":"/w""#, &format!(r#""cwd":"{}""#, long("")), 1),
            meta_with("").replacen(
                r#"{"subagent":"review"}"#,
                &format!(r#"{{"subagent":"{}"}}"#, long("")),
                1,
            ),
            meta_with("").replacen(
                r#""branch":"main""#,
                &format!(r#""branch":"{}""#, long("")),
                1,
            ),
            // Duplicate keys: serde rejects a known one twice.
            meta_with(&long("")).replacen(r#""cwd":"/w""#, r#""cwd":"/w","cwd":"/v""#, 1),
            meta_with(&long("")).replacen(
                r#""type":"session_meta""#,
                r#""type":"session_meta","type":"x""#,
                1,
            ),
            // A string that never ends, trailing bytes, not a session_meta.
            meta_with(&long("")).replace(r#""}"#, ""),
            meta_with(&long("")) + "x",
            meta_with(&long("")).replacen("session_meta", "event_msg", 1),
            meta_with(&long("")).replacen(r#""id":"01A1ff7d-4aab-7f60-bd31-0e4a5bf4615c","#, "", 1),
            // Nothing long: nothing to cut.
            meta_with("short"),
        ] {
            assert!(!cut_agrees(&text), "{text}");
        }
        // Unknown duplicate keys are ignored by both.
        let dup = meta_with(&long("")).replacen(
            r#""git""#,
            &format!(r#""base_instructions":"{}","git""#, long("")),
            1,
        );
        assert!(cut_agrees(&dup));
        // A value that holds the mark's text itself is not cut-from, but is left to the full
        // parse (so the mark cannot be mistaken).
        let marked = meta_with(&long("")).replacen("/w", CUT_MARK, 1);
        assert!(!cut_agrees(&marked));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = "[".repeat(100_000);
        match head_of(&deep) {
            Err(HeadError::Bad(ProblemKind::InvalidJson, _)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
