//! rolloutd: a per-user agent that indexes OpenAI Codex rollout files by file identity and
//! answers resolve / check / repair queries.
//!
//! Data flows one way: filesystem → [`crawl`] → [`index`] → [`query`] → [`cli`].
//! [`rollout`] is the only module that knows the JSONL format, [`index`] the only one that
//! speaks SQL to rolloutd's index, [`codex_state`] the only one that touches Codex's own
//! state database, and [`identity`] owns what "the same file" means. [`service`] is how the
//! agent lives under systemd and launchd.
//! [`codex_app`] puts rolloutd in front of Codex's app-server.

pub mod agent;
pub mod cli;
pub mod client;
pub mod codex_app;
pub mod codex_state;
pub mod config;
pub mod crawl;
pub mod identity;
pub mod index;
pub mod logging;
pub mod query;
pub mod rollout;
pub mod server;
pub mod service;
pub mod watch;
