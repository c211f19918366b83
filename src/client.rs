//! A blocking JSON-RPC client for the agent's socket, used by the CLI and by library users.
//! Requests and results are the [`crate::protocol`] types; every wait is bounded.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::protocol::{Method, RpcError, JSONRPC};

/// How long to wait for the agent to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long to wait for an answer to a query.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

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

impl ClientError {
    /// The agent accepted but did not answer in time (stopped, or busy with other clients).
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Io(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut))
    }
}

/// One connection to the agent.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

#[derive(Serialize)]
struct RequestLine<'a, P> {
    jsonrpc: &'static str,
    id: u64,
    method: &'a str,
    params: &'a P,
}

/// A message as read: a response (with `id`) or a notification (with `method`).
#[derive(Deserialize)]
struct Incoming {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    result: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<RpcError>,
}

impl Client {
    /// Connects within [`CONNECT_TIMEOUT`]; reads wait up to an hour (long `thread/wait`s
    /// and `codex/repair`s); use [`Client::connect_within`] to bound them tighter.
    pub fn connect(socket: &Path) -> std::io::Result<Client> {
        Client::connect_within(socket, CONNECT_TIMEOUT, Some(Duration::from_secs(3600)))
    }

    /// Connects within `connect`, and bounds each wait for a message by `answer`.
    pub fn connect_within(
        socket: &Path,
        connect: Duration,
        answer: Option<Duration>,
    ) -> std::io::Result<Client> {
        // A Unix connect blocks while the agent's backlog is full (a stopped agent); a
        // thread keeps that wait bounded. Abandoned, it ends when the connect does.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = socket.to_owned();
        std::thread::spawn(move || {
            let _ = tx.send(UnixStream::connect(path));
        });
        let stream = rx.recv_timeout(connect).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the agent did not accept within {connect:?}"),
            )
        })??;
        stream.set_read_timeout(answer)?;
        stream.set_write_timeout(answer.or(Some(ANSWER_TIMEOUT)))?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            next_id: 1,
        })
    }

    /// A typed request: `M`'s params in, its result out.
    pub fn request<M: Method>(&mut self, params: &M::Params) -> Result<M::Result, ClientError>
    where
        M::Result: DeserializeOwned,
    {
        let raw = self.call_raw(M::NAME, params)?;
        serde_json::from_str(raw.get()).map_err(|e| ClientError::Protocol(format!("{e}: {raw}")))
    }

    /// An untyped request (for tests and tools that speak raw JSON).
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let raw = self.call_raw(method, &params)?;
        serde_json::from_str(raw.get()).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    fn call_raw<P: Serialize>(
        &mut self,
        method: &str,
        params: &P,
    ) -> Result<Box<RawValue>, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = RequestLine {
            jsonrpc: JSONRPC,
            id,
            method,
            params,
        };
        let mut bytes =
            serde_json::to_vec(&line).map_err(|e| ClientError::Protocol(e.to_string()))?;
        bytes.push(b'\n');
        if let Err(e) = self.writer.write_all(&bytes) {
            // The agent may have refused the connection and closed it before we wrote; its
            // reason is still waiting to be read.
            return match self.read_incoming() {
                Ok((
                    Incoming {
                        error: Some(rpc), ..
                    },
                    _,
                )) => Err(ClientError::Rpc(rpc)),
                _ => Err(ClientError::Io(e)),
            };
        }
        loop {
            let (msg, line) = self.read_incoming()?;
            // An error with a null id is about the connection itself (refused peer, a line
            // too long): it answers every outstanding call.
            let mine = msg.id.as_ref().and_then(Value::as_u64) == Some(id);
            // (serde reads `"id": null` into `None`, so a missing and a null id look alike.)
            let connection_error =
                msg.id.as_ref().is_none_or(Value::is_null) && msg.error.is_some();
            if !mine && !connection_error {
                continue;
            }
            return match (msg.result, msg.error) {
                (_, Some(e)) => Err(ClientError::Rpc(e)),
                (Some(r), None) => Ok(r),
                (None, None) => Err(ClientError::Protocol(line)),
            };
        }
    }

    /// Bounds each wait for a message; `None` waits indefinitely. A read that times out
    /// fails with an `Io` error of kind `WouldBlock` or `TimedOut`.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.reader.get_ref().set_read_timeout(timeout)
    }

    /// Reads the next message (response or notification) as JSON.
    pub fn read_message(&mut self) -> Result<Value, ClientError> {
        let line = self.read_line()?;
        serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("{e}: {line}")))
    }

    fn read_incoming(&mut self) -> Result<(Incoming, String), ClientError> {
        let line = self.read_line()?;
        let msg = serde_json::from_str(&line)
            .map_err(|e| ClientError::Protocol(format!("{e}: {line}")))?;
        Ok((msg, line))
    }

    fn read_line(&mut self) -> Result<String, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "agent closed the connection",
            )));
        }
        Ok(line)
    }
}
