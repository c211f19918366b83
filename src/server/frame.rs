//! JSON-RPC 2.0 framing: one UTF-8 JSON object per `\n`-terminated line.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Longest request line accepted; a longer one gets -32600 and the connection closes.
pub const MAX_LINE: usize = 1 << 20;

pub use crate::protocol::error::{
    AMBIGUOUS, INDEX_ERROR, INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, NOT_FOUND,
    PARSE_ERROR, SHUTTING_DOWN, TIMEOUT,
};
use crate::protocol::ClientRequest;
pub use crate::protocol::RpcError;

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `None` for a notification (no response is sent).
    pub id: Option<Value>,
    pub method: String,
    pub params: Value,
}

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

/// The well-formed request's one pass: the envelope read with borrowed fields, the params
/// read from their text straight into the method's type. `None` whenever anything is
/// unusual (not an object, a duplicate or missing member, an id that is not a string or a
/// 64-bit integer, params that do not fit): [`parse`] and [`ClientRequest::parse`] then
/// read the line again and give the error the wire promises, so every answer is the one
/// the two-step path gives.
pub fn parse_command(line: &[u8]) -> Option<(Option<Value>, Result<ClientRequest, RpcError>)> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow)]
        jsonrpc: &'a str,
        // `Some` for a JSON null too: a null id is answered (with a null id).
        #[serde(borrow, default, deserialize_with = "present")]
        id: Option<&'a RawValue>,
        #[serde(borrow)]
        method: &'a str,
        #[serde(borrow, default)]
        params: Option<&'a RawValue>,
    }
    fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
        <&RawValue>::deserialize(d).map(Some)
    }
    let text = std::str::from_utf8(line).ok()?;
    let envelope: Envelope<'_> = serde_json::from_str(text).ok()?;
    if envelope.jsonrpc != crate::protocol::JSONRPC {
        return None;
    }
    let id = match envelope.id {
        None => None,
        Some(raw) => {
            let id: Value = serde_json::from_str(raw.get()).ok()?;
            let usable = match &id {
                Value::String(_) | Value::Null => true,
                Value::Number(n) => n.is_i64() || n.is_u64(),
                _ => false,
            };
            if !usable {
                return None;
            }
            Some(id)
        }
    };
    let params = match envelope.params.map(RawValue::get) {
        None | Some("null") => "{}",
        Some(p) if p.starts_with('{') => p,
        Some(_) => return None,
    };
    let command = ClientRequest::parse_text(envelope.method, params)?;
    Some((id, command))
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
    result: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a RpcError>,
}

#[derive(Serialize)]
struct Message<'a, T> {
    jsonrpc: &'static str,
    #[serde(flatten)]
    body: &'a T,
}

/// A response line (without the newline, with room for it).
pub fn response(id: &Value, result: &Result<Box<RawValue>, RpcError>) -> String {
    let (result, error) = match result {
        Ok(r) => (Some(&**r), None),
        Err(e) => (None, Some(e)),
    };
    if let (Some(result), Value::Number(_) | Value::String(_) | Value::Null) = (result, id) {
        // The common answer, assembled once: the result is already JSON text.
        let mut line = Vec::with_capacity(64 + result.get().len());
        line.extend_from_slice(br#"{"jsonrpc":""#);
        line.extend_from_slice(crate::protocol::JSONRPC.as_bytes());
        line.extend_from_slice(br#"","id":"#);
        if serde_json::to_writer(&mut line, id).is_ok() {
            line.extend_from_slice(br#","result":"#);
            line.extend_from_slice(result.get().as_bytes());
            line.push(b'}');
            // Only JSON text went in.
            if let Ok(line) = String::from_utf8(line) {
                return line;
            }
        }
    }
    to_line(&Response {
        jsonrpc: crate::protocol::JSONRPC,
        id,
        result,
        error,
    })
}

/// Appends the response line for a successful `result` and its newline to `out`: the
/// envelope and the result serialized in place. `answer`'s error line instead when the
/// result does not serialize.
pub fn push_response<T: Serialize>(out: &mut Vec<u8>, id: &Value, result: &T) {
    let start = out.len();
    if matches!(id, Value::Number(_) | Value::String(_) | Value::Null) {
        out.extend_from_slice(br#"{"jsonrpc":""#);
        out.extend_from_slice(crate::protocol::JSONRPC.as_bytes());
        out.extend_from_slice(br#"","id":"#);
        if serde_json::to_writer(&mut *out, id).is_ok() {
            out.extend_from_slice(br#","result":"#);
            if serde_json::to_writer(&mut *out, result).is_ok() {
                out.extend_from_slice(b"}\n");
                return;
            }
        }
        out.truncate(start);
    }
    let answer = serde_json::value::to_raw_value(result)
        .map_err(|e| RpcError::new(INDEX_ERROR, e.to_string()));
    push_line(out, &response(id, &answer));
}

/// Appends `line` and its newline to `out`.
pub fn push_line(out: &mut Vec<u8>, line: &str) {
    out.extend_from_slice(line.as_bytes());
    out.push(b'\n');
}

/// An error response line (without the newline).
pub fn error(id: &Value, e: RpcError) -> String {
    response(id, &Err(e))
}

/// A notification line (without the newline): `body` serializes as `{method, params}`.
pub fn notification<T: Serialize>(body: &T) -> String {
    to_line(&Message {
        jsonrpc: crate::protocol::JSONRPC,
        body,
    })
}

fn to_line(message: &impl Serialize) -> String {
    // Serializing plain data (no maps with non-string keys) into a string cannot fail.
    serde_json::to_string(message).unwrap_or_default()
}

/// What reading one line gave.
pub enum Line {
    Complete,
    /// The line passed [`MAX_LINE`]; the rest was not buffered.
    TooLong,
    Eof,
}

/// Reads the rest of one line onto `buf` (without `\n`), never buffering more than
/// [`MAX_LINE`] bytes. A final line without a newline is returned as complete. Cancel-safe:
/// what was consumed is in `buf`, so the caller clears it only after a complete line.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Line> {
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
        use serde_json::json;
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
