//! A blocking JSON-RPC client for the agent's socket, used by the CLI and by library users.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::server::frame::RpcError;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("agent socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("agent answered with something that is not JSON-RPC: {0}")]
    Protocol(String),
    #[error("{0}")]
    Rpc(RpcError),
}

/// One connection to the agent.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    /// Connects; fails fast when nothing serves the socket.
    pub fn connect(socket: &Path) -> std::io::Result<Client> {
        let stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(3600)))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            next_id: 1,
        })
    }

    /// Sends one request and waits for its response (notifications in between are skipped).
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        // One write: `Value`'s Display writes token by token, one syscall each.
        if let Err(e) = self.writer.write_all(&bytes) {
            // The agent may have refused the connection and closed it before we wrote; its
            // reason is still waiting to be read.
            return match self.read_message() {
                Ok(msg) if msg.get("error").is_some() => Err(rpc_error(&msg)?),
                _ => Err(ClientError::Io(e)),
            };
        }
        loop {
            let msg = self.read_message()?;
            // An error with a null id is about the connection itself (refused peer, a line
            // too long): it answers every outstanding call.
            let connection_error =
                msg.get("id") == Some(&Value::Null) && msg.get("error").is_some();
            if msg.get("id") != Some(&json!(id)) && !connection_error {
                continue;
            }
            if msg.get("error").is_some() {
                return Err(rpc_error(&msg)?);
            }
            return msg
                .get("result")
                .cloned()
                .ok_or_else(|| ClientError::Protocol(msg.to_string()));
        }
    }

    /// Bounds each wait for a message; `None` waits indefinitely. A read that times out
    /// fails with an `Io` error of kind `WouldBlock` or `TimedOut`.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.reader.get_ref().set_read_timeout(timeout)
    }

    /// Reads the next message (response or notification).
    pub fn read_message(&mut self) -> Result<Value, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "agent closed the connection",
            )));
        }
        serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("{e}: {line}")))
    }
}

/// The `error` member of a response as a [`ClientError::Rpc`].
fn rpc_error(msg: &Value) -> Result<ClientError, ClientError> {
    let err: RpcError = serde_json::from_value(msg["error"].clone())
        .map_err(|e| ClientError::Protocol(format!("{e}: {msg}")))?;
    Ok(ClientError::Rpc(err))
}
