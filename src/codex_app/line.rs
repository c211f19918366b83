//! Pure work on single JSON-RPC lines: which client lines the shim must look at, what it
//! learns from server lines, and the lines it writes itself.
//!
//! Only requests that name a rollout path are parsed for a decision; every other line goes
//! through as the bytes it arrived as.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

/// Requests of Codex 0.169's app-server protocol that take a rollout path (`params.path`),
/// from `codex app-server generate-json-schema --experimental`. Both require `threadId`.
pub const PATH_METHODS: &[&str] = &["thread/resume", "thread/fork"];

/// A client request the shim checks before Codex sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PathRequest {
    pub id: Value,
    pub method: String,
    pub thread_id: String,
    pub path: String,
}

/// What to do with one client line.
#[derive(Debug, Clone, PartialEq)]
pub enum Client {
    /// Relay the bytes unchanged.
    Pass,
    /// A `thread/resume` or `thread/fork` with a non-empty `path`.
    Check(PathRequest),
}

#[derive(Deserialize)]
struct Request<'a> {
    id: Option<Value>,
    #[serde(borrow)]
    method: Option<Cow<'a, str>>,
    params: Option<Params>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params {
    thread_id: Option<Value>,
    path: Option<Value>,
}

/// Classifies a client line (without its `\n`). Anything the shim cannot read as a path
/// request (not JSON, a notification, a response, an empty or absent `path`, which Codex
/// treats as absent) passes: Codex answers it as it would without the shim.
pub fn classify(line: &[u8]) -> Client {
    // Cheap filter first: a line without these bytes has no `path` key to check.
    if memchr::memmem::find(line, b"path").is_none() {
        return Client::Pass;
    }
    let Ok(req) = serde_json::from_slice::<Request<'_>>(line) else {
        return Client::Pass;
    };
    let (Some(id), Some(method), Some(params)) = (req.id, req.method, req.params) else {
        return Client::Pass;
    };
    if !PATH_METHODS.contains(&method.as_ref()) {
        return Client::Pass;
    }
    let (Some(Value::String(thread_id)), Some(Value::String(path))) =
        (params.thread_id, params.path)
    else {
        return Client::Pass;
    };
    if path.is_empty() || thread_id.is_empty() {
        return Client::Pass;
    }
    Client::Check(PathRequest {
        id,
        method: method.into_owned(),
        thread_id,
        path,
    })
}

/// `line` with `params.path` set to `path`, re-encoded (key order kept), with its `\n`.
/// `None` when the line is not an object with an object `params` (classify would not
/// have picked it).
pub fn rewrite_path(line: &[u8], path: &str) -> Option<Vec<u8>> {
    let mut msg: Value = serde_json::from_slice(line).ok()?;
    let params = msg.get_mut("params")?.as_object_mut()?;
    params.insert("path".to_owned(), Value::String(path.to_owned()));
    let mut out = serde_json::to_vec(&msg).ok()?;
    out.push(b'\n');
    Some(out)
}

/// Codex's application error code for a request it refuses (an unusable rollout path is
/// an invalid request there too), so clients handle the shim's refusals as Codex's.
pub const INVALID_REQUEST: i64 = -32600;

/// An error response in Codex's own shape (`{"error", "id"}`, no `jsonrpc` member), with
/// its `\n`.
pub fn error_response(id: &Value, message: &str, data: Value) -> Vec<u8> {
    // Codex writes `error` before `id`; so does the shim.
    let msg = serde_json::json!({
        "error": {"code": INVALID_REQUEST, "message": message, "data": data},
        "id": id,
    });
    let mut out = serde_json::to_vec(&msg).unwrap_or_default();
    out.push(b'\n');
    out
}

#[derive(Deserialize)]
struct ServerMsg {
    result: Option<Holder>,
    params: Option<Holder>,
}

#[derive(Deserialize)]
struct Holder {
    thread: Option<ThreadInfo>,
}

#[derive(Deserialize)]
struct ThreadInfo {
    id: String,
    path: Option<String>,
}

/// The key every line that announces a thread has (as Codex writes it: compact, unescaped).
pub const THREAD_KEY: &[u8] = b"\"thread\"";

/// The (thread id, rollout path) a server line announces: the `thread` of a
/// `thread/start`/`resume`/`fork` response or of a `thread/started` notification. That is
/// the path Codex holds for a loaded thread, the one its running-thread check compares to.
pub fn announced_thread(line: &[u8]) -> Option<(String, String)> {
    memchr::memmem::find(line, THREAD_KEY)?;
    let msg: ServerMsg = serde_json::from_slice(line).ok()?;
    let thread = msg.result.or(msg.params)?.thread?;
    Some((thread.id, thread.path?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(line: &str) -> Option<PathRequest> {
        match classify(line.as_bytes()) {
            Client::Check(r) => Some(r),
            Client::Pass => None,
        }
    }

    #[test]
    fn resume_and_fork_with_a_path_are_checked() {
        let r = check(
            r#"{"id":7,"method":"thread/resume","params":{"threadId":"T","path":"/h/r.jsonl"}}"#,
        )
        .unwrap();
        assert_eq!(r.id, json!(7));
        assert_eq!(r.method, "thread/resume");
        assert_eq!(r.thread_id, "T");
        assert_eq!(r.path, "/h/r.jsonl");
        let r = check(r#"{"jsonrpc":"2.0","id":"a","method":"thread/fork","params":{"path":"/p","threadId":"T"}}"#)
            .unwrap();
        assert_eq!(r.id, json!("a"));
        assert_eq!(r.method, "thread/fork");
    }

    #[test]
    fn everything_else_passes() {
        for line in [
            // by thread id alone
            r#"{"id":1,"method":"thread/resume","params":{"threadId":"T"}}"#,
            // empty and null paths are "absent" to Codex
            r#"{"id":1,"method":"thread/resume","params":{"threadId":"T","path":""}}"#,
            r#"{"id":1,"method":"thread/resume","params":{"threadId":"T","path":null}}"#,
            // not a string: Codex refuses it itself
            r#"{"id":1,"method":"thread/resume","params":{"threadId":"T","path":3}}"#,
            // a notification, another method, a response, not JSON
            r#"{"method":"thread/resume","params":{"threadId":"T","path":"/p"}}"#,
            r#"{"id":1,"method":"fs/readFile","params":{"path":"/p"}}"#,
            r#"{"id":1,"result":{"path":"/p"}}"#,
            r#"{"id":1,"method":"thread/resume","params":{"threadId":"T","path":"/p""#,
            r#"{"id":1,"method":"turn/start","params":{"threadId":"T","input":[{"type":"text","text":"thread/resume path"}]}}"#,
            "",
        ] {
            assert_eq!(classify(line.as_bytes()), Client::Pass, "{line}");
        }
    }

    #[test]
    fn an_escaped_method_name_is_still_recognised() {
        assert!(check(
            r#"{"id":1,"method":"thread\/resume","params":{"threadId":"T","path":"/p"}}"#
        )
        .is_some());
    }

    #[test]
    fn a_rewrite_changes_only_the_path_and_keeps_key_order() {
        let line = br#"{"id":1,"method":"thread/resume","params":{"threadId":"T","path":"/a.jsonl.zst","cwd":"/w"}}"#;
        let out = rewrite_path(line, "/b.jsonl").unwrap();
        assert_eq!(
            out,
            b"{\"id\":1,\"method\":\"thread/resume\",\"params\":{\"threadId\":\"T\",\"path\":\"/b.jsonl\",\"cwd\":\"/w\"}}\n"
        );
        assert_eq!(rewrite_path(b"[1]", "/b"), None);
    }

    #[test]
    fn error_responses_keep_the_id_and_carry_the_reason() {
        let out = error_response(&json!("x-1"), "no", json!({"reason": "directory"}));
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "x-1");
        assert_eq!(v["error"]["code"], INVALID_REQUEST);
        assert_eq!(v["error"]["data"]["reason"], "directory");
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
    }

    #[test]
    fn threads_announced_by_responses_and_notifications_are_learned() {
        let resp = br#"{"id":2,"result":{"thread":{"id":"T","path":"/h/r.jsonl","turns":[]},"model":"m"}}"#;
        assert_eq!(
            announced_thread(resp),
            Some(("T".to_owned(), "/h/r.jsonl".to_owned()))
        );
        let note =
            br#"{"method":"thread/started","params":{"thread":{"id":"U","path":"/h/u.jsonl"}}}"#;
        assert_eq!(
            announced_thread(note),
            Some(("U".to_owned(), "/h/u.jsonl".to_owned()))
        );
        for other in [
            &br#"{"method":"item/completed","params":{"item":{"path":"/x"}}}"#[..],
            br#"{"id":2,"result":{"thread":{"id":"T","path":null}}}"#,
            br#"{"method":"turn/started","params":{"threadId":"T"}}"#,
            b"not json \"path\"",
        ] {
            assert_eq!(announced_thread(other), None);
        }
    }
}
