//! rolloutd: a per-user agent that indexes OpenAI Codex rollout files by file identity and
//! answers resolve / check / repair queries.
//!
//! Data flows one way: filesystem → [`crawl`] / [`watch`] → [`index`] (which alone speaks
//! SQL and alone decides what changed) → [`query`] → [`server`] / [`cli`].
//! [`rollout`] is the only module that knows the JSONL format, [`codex_state`] the only one
//! that touches Codex's own state database, [`identity`] owns what "the same file" means,
//! and [`protocol`] is the only place the wire's method names and reasons are strings.
//!
//! Layers, bottom to top; a module imports only modules below it:
//! [`identity`], [`logging`], [`protocol::reason`] (the reasons as types: a leaf that imports
//! nothing of the crate, so queries answer with them) → [`config`] → [`rollout`] →
//! [`index`] → [`crawl`] → [`query`] →
//! [`codex_state`] → [`protocol`] → [`client`] → [`live`] (state shared by the watcher, the
//! server and readiness; the change publisher; the shutdown token) → [`watch`] → [`server`]
//! → [`service`] → [`agent`] (wiring only) → [`codex_app`] (the app-server shim) → [`cli`].

pub mod agent;
pub mod cli;
pub mod client;
pub mod codex_app;
pub mod codex_state;
pub mod config;
pub mod crawl;
pub mod identity;
pub mod index;
pub mod live;
pub mod logging;
pub mod protocol;
pub mod query;
pub mod rollout;
pub mod server;
pub mod service;
pub mod watch;
