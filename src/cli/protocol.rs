//! `rolloutd protocol schema | ts`: the socket protocol for client authors, generated from
//! the Rust types the agent itself uses (see [`crate::protocol`]).

use std::io::Write;

use clap::Subcommand;

use super::{failure, Answer, Failure};

#[derive(Debug, Subcommand)]
pub enum ProtocolFormat {
    /// JSON Schema (draft 2020-12) of every request's params and result, every
    /// notification and the error object
    Schema,
    /// TypeScript declarations of the same types
    Ts,
}

pub fn print(format: ProtocolFormat) -> Result<Answer, Failure> {
    let text = match format {
        ProtocolFormat::Schema => serde_json::to_string_pretty(&crate::protocol::schema::schema())
            .map_err(|e| failure("io", e))?,
        ProtocolFormat::Ts => crate::protocol::schema::typescript(),
    };
    let mut out = std::io::stdout().lock();
    // A reader that went away wanted no more.
    let _ = writeln!(out, "{}", text.trim_end()).and_then(|_| out.flush());
    Ok(Answer {
        json: serde_json::Value::Null,
        human: String::new(),
        positive: true,
    })
}
