//! The command line: argument parsing (clap) and dispatch onto the query layer.
//!
//! Every command prints a human answer, or with `--json` exactly one JSON document on
//! stdout. Exit status: 0 a positive answer, 1 a negative one (not found, not the same,
//! check failed), 2 an error or bad usage. Errors go to stderr as one sentence.

mod backend;
mod codex;
mod docs;
mod render;
mod service;

use std::borrow::Cow;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use serde_json::json;

use crate::config::{Config, Overrides};
use crate::index::ArchivedFilter;
use crate::query::{ListParams, QueryError};
use backend::Backend;

/// rolloutd: find, check and repair OpenAI Codex rollout files by identity.
#[derive(Debug, Parser)]
#[command(name = "rolloutd", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// A Codex home to index (repeatable) [default: $CODEX_HOME, else ~/.codex]
    #[arg(long = "codex-home", value_name = "DIR", global = true)]
    pub codex_home: Vec<PathBuf>,
    /// The index database [default: $XDG_STATE_HOME/rolloutd/index.sqlite]
    #[arg(long, value_name = "FILE", global = true)]
    pub index: Option<PathBuf>,
    /// The config file [default: $XDG_CONFIG_HOME/rolloutd/config.toml]
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Print exactly one JSON document on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// The agent's socket [default: $ROLLOUTD_SOCKET, else $XDG_RUNTIME_DIR/rolloutd/rolloutd.sock]
    #[arg(long, value_name = "PATH", global = true)]
    pub socket: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Crawl the homes (or reconcile an existing index) and print counts
    Index,
    /// Print the thread record for a thread id, a unique id prefix (8+ chars), or a path
    Resolve {
        /// THREAD_ID, id prefix, or PATH
        target: String,
    },
    /// Answer whether two paths are the same rollout file
    Same { a: PathBuf, b: PathBuf },
    /// Check that PATH may be used to resume THREAD_ID
    CheckResume { thread_id: String, path: PathBuf },
    /// List threads, newest first
    List(ListArgs),
    /// List bad files and duplicate threads, with reasons
    Problems,
    /// Run the agent in the foreground: reconcile, watch, and serve the socket
    Run {
        /// How changes are noticed: auto (events; polling on network filesystems), events, poll [default: watch.mode, else auto]
        #[arg(long, value_name = "MODE")]
        watch_mode: Option<crate::watch::WatchMode>,
        /// Polling interval when polling [default: watch.poll_interval, else 2s]
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        poll_interval: Option<std::time::Duration>,
    },
    /// Install, remove or inspect the systemd user service / launchd agent
    Service(service::ServiceArgs),
    /// Inspect the configuration
    #[command(subcommand)]
    Config(service::ConfigAction),
    /// Print a shell completion script
    Completions { shell: docs::Shell },
    /// Print the man page (roff)
    Man,
    /// Show the running agent's status
    Status,
    /// Wait until a thread's rollout exists, then print its record
    Wait {
        thread_id: String,
        /// Give up after this long
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Print the agent's notifications as JSON lines
    Watch {
        /// Only these threads
        thread_ids: Vec<String>,
    },
    /// Audit, repair and restore Codex's own state database (state_<N>.sqlite)
    Codex {
        #[command(subcommand)]
        command: codex::CodexCommand,
    },
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only archived threads
    #[arg(long, conflicts_with = "all")]
    pub archived: bool,
    /// Active and archived threads
    #[arg(long)]
    pub all: bool,
    /// Only threads started in this directory
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Only threads whose title or cwd contains TEXT (case-insensitive)
    #[arg(long, value_name = "TEXT")]
    pub search: Option<String>,
    /// At most N threads
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub limit: usize,
    /// Continue from the nextCursor of an earlier page
    #[arg(long)]
    pub cursor: Option<String>,
}

/// What a command produced: the JSON document, the human text, and the exit status.
pub struct Answer {
    pub json: serde_json::Value,
    pub human: String,
    pub positive: bool,
}

impl Answer {
    fn new(value: &impl Serialize, human: String, positive: bool) -> Answer {
        Answer {
            json: serde_json::to_value(value).unwrap_or(serde_json::Value::Null),
            human,
            positive,
        }
    }
}

/// Parses the process arguments, runs the command, prints, and returns the exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Codex {
        command: codex::CodexCommand::AppServer(args),
    } = cli.command
    {
        // A relay, not a query: its exit status is Codex's.
        let overrides = Overrides {
            config_file: cli.global.config,
            homes: cli.global.codex_home,
            index: cli.global.index,
            ..Overrides::default()
        };
        let socket = crate::server::socket::effective_path(cli.global.socket.as_deref());
        return crate::codex_app::main(args, overrides, socket);
    }
    // `run` sets up logging once its config (log.level) is known.
    if !matches!(cli.command, Command::Run { .. }) {
        crate::logging::init("warn");
    }
    let json = cli.global.json;
    match run(cli) {
        Ok(answer) => {
            if json {
                println!("{}", answer.json);
            } else if !answer.human.is_empty() {
                println!("{}", answer.human.trim_end());
            }
            ExitCode::from(if answer.positive { 0 } else { 1 })
        }
        Err(failure) => {
            eprintln!("rolloutd: {}", failure.message);
            if json {
                println!(
                    "{}",
                    json!({"error": {"reason": failure.reason, "message": failure.message}})
                );
            }
            ExitCode::from(if failure.negative { 1 } else { 2 })
        }
    }
}

/// A command that could not give an answer.
pub struct Failure {
    pub reason: Cow<'static, str>,
    pub message: String,
    /// A "no" (exit 1) rather than an error (exit 2).
    pub negative: bool,
}

impl From<QueryError> for Failure {
    fn from(e: QueryError) -> Self {
        Failure {
            reason: e.reason().into(),
            negative: e.is_negative_answer(),
            message: e.to_string(),
        }
    }
}

fn failure(reason: &'static str, e: impl std::fmt::Display) -> Failure {
    Failure {
        reason: reason.into(),
        message: e.to_string(),
        negative: false,
    }
}

/// Runs one command: the agent commands through the socket, queries against the index.
pub fn run(cli: Cli) -> Result<Answer, Failure> {
    let socket = crate::server::socket::effective_path(cli.global.socket.as_deref());
    let overrides = Overrides {
        config_file: cli.global.config.clone(),
        homes: cli.global.codex_home.clone(),
        index: cli.global.index.clone(),
        ..Overrides::default()
    };
    match cli.command {
        Command::Run {
            watch_mode,
            poll_interval,
        } => {
            let overrides = Overrides {
                watch_mode,
                poll_interval,
                ..overrides
            };
            return service::run_agent(overrides, socket);
        }
        Command::Service(args) => return service::service(args, &socket),
        Command::Config(action) => return service::config(action, &overrides),
        Command::Completions { shell } => return docs::completions(shell),
        Command::Man => return docs::man(),
        Command::Status => {
            let status = agent_call(&socket, "index/status", json!({}))?;
            let human = render::status(&status);
            return Ok(Answer {
                json: status,
                human,
                positive: true,
            });
        }
        Command::Wait { thread_id, timeout } => {
            let params = json!({"threadId": thread_id, "timeoutMs": timeout.as_millis() as u64});
            let record = agent_call(&socket, "thread/wait", params)?;
            let human = serde_json::to_string_pretty(&record).unwrap_or_default();
            return Ok(Answer {
                json: record,
                human,
                positive: true,
            });
        }
        Command::Watch { thread_ids } => return watch(&socket, thread_ids),
        _ => {}
    }
    let config = Config::load(&overrides).map_err(|e| failure("config", e))?;
    if let Command::Codex { command } = cli.command {
        // Codex's state DB is read (and repaired) in process, against a fresh index.
        let (homes, index) = Backend::open_direct(&config)?;
        let q = crate::query::Queries {
            homes: &homes,
            index: &index,
            limits: crate::rollout::HeadLimits::default(),
        };
        return codex::run(command, &q);
    }
    let mut backend = Backend::open(&socket, &config)?;
    match cli.command {
        Command::Index => {
            for home in &config.homes {
                if !home.is_dir() {
                    eprintln!("rolloutd: warning: Codex home {} does not exist (yet); nothing to index there", home.display());
                }
            }
            let bar = render::ProgressBar::new(cli.global.json);
            let (summary, counts) = backend.reconcile(&bar)?;
            bar.finish();
            let value = json!({"counts": counts, "summary": summary, "homes": config.homes, "index": config.index});
            Ok(Answer::new(
                &value,
                render::index(&counts, &summary, config.homes.len()),
                true,
            ))
        }
        Command::Resolve { target } => {
            let record = if looks_like_id(&target) {
                backend.resolve_thread(&target)?
            } else {
                backend.resolve_path(&PathBuf::from(&target))?
            };
            Ok(Answer::new(&record, render::record(&record), true))
        }
        Command::Same { a, b } => {
            let answer = backend.same(&a, &b)?;
            let positive = answer.same;
            Ok(Answer::new(&answer, render::same(&answer), positive))
        }
        Command::CheckResume { thread_id, path } => {
            let answer = backend.check_resume(&thread_id, &path)?;
            let positive = answer.ok;
            Ok(Answer::new(
                &answer,
                render::check_resume(&answer, &path),
                positive,
            ))
        }
        Command::List(args) => {
            let archived = match (args.archived, args.all) {
                (_, true) => ArchivedFilter::All,
                (true, false) => ArchivedFilter::Archived,
                (false, false) => ArchivedFilter::Active,
            };
            let page = backend.list(&ListParams {
                archived,
                cwd: args.cwd,
                search: args.search,
                limit: args.limit,
                cursor: args.cursor,
            })?;
            Ok(Answer::new(&page, render::list(&page), true))
        }
        Command::Problems => {
            let report = backend.problems()?;
            Ok(Answer::new(&report, render::problems(&report), true))
        }
        Command::Run { .. }
        | Command::Status
        | Command::Wait { .. }
        | Command::Watch { .. }
        | Command::Service(_)
        | Command::Config(_)
        | Command::Completions { .. }
        | Command::Man
        | Command::Codex { .. } => Err(failure("usage", "agent command reached the index path")),
    }
}

/// Connects to the running agent; no agent is an error naming the socket.
fn connect(socket: &std::path::Path) -> Result<crate::client::Client, Failure> {
    crate::client::Client::connect(socket).map_err(|e| {
        failure(
            "noAgent",
            format!(
                "no agent answers on {} ({e}); start one with `rolloutd run`",
                socket.display()
            ),
        )
    })
}

/// One call to the running agent.
fn agent_call(
    socket: &std::path::Path,
    method: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, Failure> {
    backend::call(&mut connect(socket)?, method, params)
}

/// Prints notifications as JSON lines until the agent goes away.
fn watch(socket: &std::path::Path, thread_ids: Vec<String>) -> Result<Answer, Failure> {
    let mut client = connect(socket)?;
    let params = if thread_ids.is_empty() {
        json!({})
    } else {
        json!({"threadIds": thread_ids})
    };
    client
        .call("subscribe", params)
        .map_err(|e| failure("agentError", e))?;
    loop {
        match client.read_message() {
            Ok(msg) => {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                if writeln!(out, "{msg}").and_then(|_| out.flush()).is_err() {
                    return Ok(Answer::new(&json!({}), String::new(), true));
                }
            }
            Err(e) => return Err(failure("agentError", e)),
        }
    }
}

/// A target made only of hex digits and dashes is an id or prefix; anything else a path.
fn looks_like_id(target: &str) -> bool {
    !target.is_empty() && target.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}
