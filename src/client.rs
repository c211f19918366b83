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
        writeln!(self.writer, "{line}")?;
        loop {
            let msg = self.read_message()?;
            if msg.get("id") != Some(&json!(id)) {
                continue;
            }
            if let Some(err) = msg.get("error") {
                let err: RpcError = serde_json::from_value(err.clone())
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                return Err(ClientError::Rpc(err));
            }
            return msg
                .get("result")
                .cloned()
                .ok_or_else(|| ClientError::Protocol(msg.to_string()));
        }
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
