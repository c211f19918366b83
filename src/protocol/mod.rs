//! The socket protocol as Rust types: every request with its params and result, the errors
//! with their typed reasons, and the notifications. The server, the CLI and [`crate::client`]
//! all use these types; this is the only module where method names and reasons are
//! strings. `rolloutd protocol schema` / `ts` print it as JSON Schema and TypeScript.

pub mod error;
pub mod notification;
pub mod reason;
pub mod request;
pub mod result;
pub mod schema;

pub use error::{ErrorData, ErrorReason, RpcError};
pub use notification::{
    Lagged, LaggedMessage, Notification, ProblemNotice, Rescanned, ServerNotification,
    ThreadChanged, ThreadRemoved,
};
pub use reason::PathReason;
pub use request::{methods, ClientRequest, Method};
pub use result::{AgentStatus, IndexCounts, Rescan, Subscribed, WatcherStatus};

/// The `jsonrpc` member of every message.
pub const JSONRPC: &str = "2.0";
