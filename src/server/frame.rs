//! JSON-RPC 2.0 framing: one UTF-8 JSON object per `\n`-terminated line.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest request line accepted; a longer one gets -32600 and the connection closes.
pub const MAX_LINE: usize = 1 << 20;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
/// The thread or path has no answer (`data.reason`: notFound, missing, directory, …).
pub const NOT_FOUND: i64 = -32001;
/// An id prefix matched several threads.
pub const AMBIGUOUS: i64 = -32002;
/// `thread/wait` ran out of time before the rollout appeared.
pub const TIMEOUT: i64 = -32003;
/// The index failed; answers may still come from the disk.
pub const INDEX_ERROR: i64 = -32010;
/// The agent is shutting down.
pub const SHUTTING_DOWN: i64 = -32011;

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `None` for a notification (no response is sent).
    pub id: Option<Value>,
    pub method: String,
    pub params: Value,
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_reason(code: i64, reason: &str, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: Some(json!({ "reason": reason })),
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        RpcError::new(INVALID_PARAMS, message)
    }

    /// The machine-readable `data.reason`, if any.
    pub fn reason(&self) -> Option<&str> {
        self.data.as_ref()?.get("reason")?.as_str()
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RpcError {}

/// A line that is not a valid request: the error to send, and the id when it was readable.
#[derive(Debug)]
pub struct BadRequest {
    pub id: Value,
    pub error: RpcError,
}

fn bad(id: Value, error: RpcError) -> Box<BadRequest> {
    Box::new(BadRequest { id, error })
}

/// Parses one line into a request, or the error response to send (with the id when known).
pub fn parse(line: &[u8]) -> Result<Request, Box<BadRequest>> {
    let value: Value = match std::str::from_utf8(line) {
        Err(_) => {
            return Err(bad(
                Value::Null,
                RpcError::new(PARSE_ERROR, "request is not UTF-8"),
            ))
        }
        Ok(text) => serde_json::from_str(text).map_err(|e| {
            bad(
                Value::Null,
                RpcError::new(PARSE_ERROR, format!("request is not JSON: {e}")),
            )
        })?,
    };
    let Value::Object(mut obj) = value else {
        return Err(bad(
            Value::Null,
            RpcError::new(INVALID_REQUEST, "a request is a JSON object"),
        ));
    };
    let id = obj.remove("id");
    let id_for_error = id.clone().unwrap_or(Value::Null);
    if let Some(wrong) = id
        .as_ref()
        .filter(|v| !(v.is_string() || v.is_number() || v.is_null()))
    {
        return Err(bad(
            Value::Null,
            RpcError::new(
                INVALID_REQUEST,
                format!("id must be a string or number, not {wrong}"),
            ),
        ));
    }
    if let Some(Value::Number(n)) = &id {
        if n.as_i64().is_none() && n.as_u64().is_none() && !number_round_trips(line, n) {
            // Echoing it back would change it (an integer past 64 bits, an exponent): the
            // client could not match the answer, so say so instead.
            return Err(bad(
                Value::Null,
                RpcError::new(
                    INVALID_REQUEST,
                    "id is a number that cannot be echoed back exactly; use a string or a 64-bit integer",
                ),
            ));
        }
    }
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(bad(
            id_for_error,
            RpcError::new(INVALID_REQUEST, "\"jsonrpc\" must be \"2.0\""),
        ));
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => {
            return Err(bad(
                id_for_error,
                RpcError::new(INVALID_REQUEST, "\"method\" must be a string"),
            ))
        }
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(p @ Value::Object(_)) => p,
        Some(_) => {
            return Err(bad(
                id_for_error,
                RpcError::invalid_params("params must be an object"),
            ))
        }
    };
    Ok(Request { id, method, params })
}

/// True when the request's `id`, as written, is what `n` serializes back to.
fn number_round_trips(line: &[u8], n: &serde_json::Number) -> bool {
    #[derive(Deserialize)]
    struct IdText<'a> {
        #[serde(borrow)]
        id: &'a serde_json::value::RawValue,
    }
    serde_json::from_slice::<IdText<'_>>(line).is_ok_and(|t| t.id.get() == n.to_string())
}

/// A response, serialized from borrows so the result is never copied into a new tree.
#[derive(Serialize)]
struct Response<'a> {
    jsonrpc: &'static str,
    id: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RpcError>,
}

#[derive(Serialize)]
struct Notification<'a, P> {
    jsonrpc: &'static str,
    method: &'a str,
    params: &'a P,
}

/// A response line (without the newline).
pub fn response(id: &Value, result: Result<Value, RpcError>) -> String {
    let (result, error) = match &result {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e)),
    };
    to_line(&Response {
        jsonrpc: "2.0",
        id,
        result,
        error,
    })
}

/// A notification line (without the newline).
pub fn notification<P: Serialize>(method: &str, params: &P) -> String {
    to_line(&Notification {
        jsonrpc: "2.0",
        method,
        params,
    })
}

fn to_line(message: &impl Serialize) -> String {
    // Serializing `Value`s and plain fields into a string cannot fail.
    serde_json::to_string(message).unwrap_or_default()
}

/// What reading one line gave.
pub enum Line {
    Complete,
    /// The line passed [`MAX_LINE`]; the rest was not buffered.
    TooLong,
    Eof,
}

/// Reads one line into `buf` (without `\n`), never buffering more than [`MAX_LINE`] bytes.
/// A final line without a newline is returned as complete.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Line> {
    buf.clear();
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(if buf.is_empty() {
                Line::Eof
            } else {
                Line::Complete
            });
        }
        let newline = available.iter().position(|&b| b == b'\n');
        let take = newline.unwrap_or(available.len());
        if buf.len() + take > MAX_LINE {
            return Ok(Line::TooLong);
        }
        buf.extend_from_slice(&available[..take]);
        r.consume(take + usize::from(newline.is_some()));
        if newline.is_some() {
            return Ok(Line::Complete);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_errors_carry_the_id_when_known() {
        assert_eq!(parse(b"{").unwrap_err().error.code, PARSE_ERROR);
        assert_eq!(parse(b"[1]").unwrap_err().error.code, INVALID_REQUEST);
        let e = parse(br#"{"jsonrpc":"2.0","id":7}"#).unwrap_err();
        assert_eq!((e.id, e.error.code), (json!(7), INVALID_REQUEST));
        let e = parse(br#"{"jsonrpc":"2.0","id":7,"method":"x","params":[1]}"#).unwrap_err();
        assert_eq!(e.error.code, INVALID_PARAMS);
        assert_eq!(parse(b"\xff").unwrap_err().error.code, PARSE_ERROR);
        // Found by fuzzing: an id past 64 bits came back as a different (float) number.
        let e =
            parse(br#"{"jsonrpc":"2.0","id":99999999999999999999999,"method":"x"}"#).unwrap_err();
        assert_eq!((e.id, e.error.code), (Value::Null, INVALID_REQUEST));
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":0.5,"method":"x"}"#)
                .unwrap()
                .id,
            Some(json!(0.5))
        );
        let ok = parse(br#"{"jsonrpc":"2.0","id":"a","method":"index/status"}"#).unwrap();
        assert_eq!(ok.id, Some(json!("a")));
    }
}
