//! The command line: argument parsing (clap) and dispatch onto the query layer.
//!
//! Every command prints a human answer, or with `--json` exactly one JSON document on
//! stdout. Exit status: 0 a positive answer, 1 a negative one (not found, not the same,
//! check failed), 2 an error or bad usage. Errors go to stderr as one sentence. A closed
//! stdout (`| head -0`) ends the output quietly; the exit status stays the answer's.
//! Path arguments are made absolute against the CLI's own working directory.

mod backend;
mod codex;
mod deadline;
mod docs;
mod protocol;
mod render;
mod service;

use std::borrow::Cow;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::config::{Config, Overrides};
use crate::crawl::ReconcileSummary;
use crate::index::ArchivedFilter;
use crate::index::Counts;
use crate::protocol::request::{SubscribeParams, ThreadWaitParams};
use crate::protocol::{methods, IndexCounts};
use crate::query::{ListParams, QueryError};
use backend::{Backend, NoAgent};

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
    /// Print the socket protocol as JSON Schema or TypeScript, for client authors
    Protocol {
        #[command(subcommand)]
        format: protocol::ProtocolFormat,
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
    let mut cli = Cli::parse();
    if let Err(e) = absolutize(&mut cli) {
        note(&format!("cannot read the working directory: {e}"));
        return ExitCode::from(2);
    }
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
    // `run` sets up logging once its config (log.level) is known (the shim, above, its own).
    if !matches!(cli.command, Command::Run { .. }) {
        crate::logging::init("warn");
    }
    let json = cli.global.json;
    if cli.command.is_query() {
        match deadline::from_env() {
            Ok(limit) => deadline::arm(limit, json),
            Err(e) => {
                note(&e);
                return ExitCode::from(2);
            }
        }
    }
    let (text, code) = match run(cli) {
        Ok(answer) => {
            let text = if json {
                answer.json.to_string()
            } else {
                answer.human.trim_end().to_owned()
            };
            (text, if answer.positive { 0 } else { 1 })
        }
        Err(failure) => {
            note(&failure.message);
            let text = if json {
                let doc = ErrorDoc {
                    error: ErrorBody {
                        reason: &failure.reason,
                        message: &failure.message,
                    },
                };
                serde_json::to_string(&doc).unwrap_or_default()
            } else {
                String::new()
            };
            (text, if failure.negative { 1 } else { 2 })
        }
    };
    if !text.is_empty() {
        // A reader that went away (EPIPE) wanted no more: not an error.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{text}").and_then(|_| out.flush());
    }
    ExitCode::from(code)
}

/// `--json` on failure: `{"error": {"reason", "message"}}`.
#[derive(Serialize)]
struct ErrorDoc<'a> {
    error: ErrorBody<'a>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    reason: &'a str,
    message: &'a str,
}

/// One line on stderr, prefixed with the program's name (never a panic on a closed stderr).
pub fn note(message: &str) {
    let _ = writeln!(std::io::stderr().lock(), "rolloutd: {message}");
}

/// Makes every path argument absolute against this process's working directory, so the
/// agent never resolves a path against its own.
fn absolutize(cli: &mut Cli) -> std::io::Result<()> {
    let abs = |p: &mut PathBuf| -> std::io::Result<()> {
        if !p.as_os_str().is_empty() && p.is_relative() {
            *p = std::path::absolute(&*p)?;
        }
        Ok(())
    };
    let g = &mut cli.global;
    for p in g
        .codex_home
        .iter_mut()
        .chain(&mut g.index)
        .chain(&mut g.config)
        .chain(&mut g.socket)
    {
        abs(p)?;
    }
    match &mut cli.command {
        Command::Resolve { target } if !looks_like_id(target) => {
            let mut p = PathBuf::from(&*target);
            abs(&mut p)?;
            *target = p.to_string_lossy().into_owned();
        }
        Command::Same { a, b } => {
            abs(a)?;
            abs(b)?;
        }
        Command::CheckResume { path, .. } => abs(path)?,
        Command::List(args) => {
            if let Some(cwd) = &mut args.cwd {
                let mut p = PathBuf::from(&*cwd);
                abs(&mut p)?;
                *cwd = p.to_string_lossy().into_owned();
            }
        }
        _ => {}
    }
    Ok(())
}

impl Command {
    /// The query commands (and `config`), which answer under one deadline ([`deadline`]): not the agent
    /// (`run`), `index` (a crawl takes as long as it takes), `wait` (its own `--timeout`),
    /// `watch` (a stream) or the tools.
    fn is_query(&self) -> bool {
        matches!(
            self,
            Command::Status
                | Command::Resolve { .. }
                | Command::Same { .. }
                | Command::CheckResume { .. }
                | Command::List(_)
                | Command::Problems
                // `config show` loads the config, which stats every home.
                | Command::Config(_)
        )
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
        // The same typed reason the agent would send.
        let reason = crate::protocol::RpcError::from(&e).reason();
        Failure {
            reason: reason.map_or("indexError", |r| r.as_str()).into(),
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
    // The homes the deadline names, before the config (whose loading may already stat
    // them) gives its own list: the flags', else `$CODEX_HOME`, else `~/.codex`.
    let env_home = std::env::var_os("CODEX_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".codex")));
    match env_home {
        Some(home) if overrides.homes.is_empty() => deadline::homes(&[home]),
        _ => deadline::homes(&overrides.homes),
    }
    if let Some(index) = &overrides.index {
        deadline::index(index);
    }
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
        Command::Protocol { format } => return protocol::print(format),
        Command::Wait { thread_id, timeout } => return wait(&socket, thread_id, timeout),
        Command::Watch { thread_ids } => return watch(&socket, thread_ids),
        _ => {}
    }
    let config = Config::load(&overrides).map_err(|e| failure("config", e))?;
    deadline::homes(&config.homes);
    deadline::index(&config.index);
    if let Command::Status = cli.command {
        return status(&socket, &config);
    }
    if let Command::Codex { command } = cli.command {
        // Codex's state DB is read (and repaired) in process, against a fresh index.
        let (homes, index) = Backend::open_direct(&config)?;
        let q = crate::query::Queries::new(&homes, &index, crate::rollout::HeadLimits::default());
        return codex::run(command, &q);
    }
    // Said before any answer drawn from the homes: "no threads" from a home that is a
    // file, or a dangling symlink, would otherwise read as an empty home.
    for home in &config.homes {
        if let Some(why) = crate::identity::home_problem(home) {
            eprintln!(
                "rolloutd: warning: Codex home {} {why}; nothing to index there",
                home.display()
            );
        }
    }
    let mut backend = Backend::open(&socket, &config)?;
    match cli.command {
        Command::Index => {
            let bar = render::ProgressBar::new(cli.global.json);
            let (summary, counts) = backend.reconcile(&bar)?;
            bar.finish();
            let value = IndexAnswer {
                counts: counts.into(),
                summary: &summary,
                homes: &config.homes,
                index: &config.index,
            };
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
                backend.resolve_path(&absolute(&PathBuf::from(&target)))?
            };
            Ok(Answer::new(&record, render::record(&record), true))
        }
        Command::Same { a, b } => {
            let answer = backend.same(&absolute(&a), &absolute(&b))?;
            let positive = answer.same;
            Ok(Answer::new(&answer, render::same(&answer), positive))
        }
        Command::CheckResume { thread_id, path } => {
            let answer = backend.check_resume(&thread_id, &absolute(&path))?;
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
                cwd: args.cwd.map(|c| {
                    absolute(std::path::Path::new(&c))
                        .to_string_lossy()
                        .into_owned()
                }),
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
        | Command::Protocol { .. }
        | Command::Codex { .. } => Err(failure("usage", "agent command reached the index path")),
    }
}

/// `rolloutd index --json`.
#[derive(Serialize)]
struct IndexAnswer<'a> {
    counts: IndexCounts,
    summary: &'a ReconcileSummary,
    homes: &'a [PathBuf],
    index: &'a Path,
}

/// `status` without an agent answering: what the index holds.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexOnlyStatus<'a> {
    agent: bool,
    counts: IndexCounts,
    homes: &'a [PathBuf],
    index: &'a Path,
}

/// `status`: the agent's, or (exit 1) the index's counts when no agent answers.
fn status(socket: &Path, config: &Config) -> Result<Answer, Failure> {
    match backend::agent_status(socket) {
        Ok((_, s)) => {
            let human = render::status(&s);
            Ok(Answer::new(&s, human, true))
        }
        Err(NoAgent::Refused(f)) => Err(f),
        Err(why) => {
            // A connect that timed out was noted already.
            if let NoAgent::Absent(e) = why.filter_noted() {
                note(&format!("no agent answers on {} ({e})", socket.display()));
            }
            let (_, index) = Backend::open_direct(config)?;
            let counts: Counts = index.counts().map_err(|e| failure("indexError", e))?;
            let doc = IndexOnlyStatus {
                agent: false,
                counts: counts.into(),
                homes: &config.homes,
                index: index.path(),
            };
            let human = render::index_only_status(&counts, index.path());
            Ok(Answer::new(&doc, human, false))
        }
    }
}

/// Connects to the running agent for `wait` / `watch`; no agent is an error naming the
/// socket.
fn connect(socket: &Path, answer: Option<Duration>) -> Result<crate::client::Client, Failure> {
    let answer = answer.unwrap_or(crate::client::ANSWER_TIMEOUT);
    backend::connect(socket, answer).map_err(|e| {
        failure(
            "noAgent",
            format!(
                "no agent answers on {} ({e}); start one with `rolloutd run`",
                socket.display()
            ),
        )
    })
}

/// How much longer than its own timeout `wait` gives the agent to answer.
const WAIT_MARGIN: Duration = Duration::from_secs(2);

/// `wait`: the record once the thread's rollout exists; the agent times out first, and the
/// CLI `WAIT_MARGIN` after it if the agent never answers.
fn wait(socket: &Path, thread_id: String, timeout: Duration) -> Result<Answer, Failure> {
    let mut client = connect(socket, Some(timeout + WAIT_MARGIN))?;
    let params = ThreadWaitParams {
        thread_id,
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    };
    match client.request::<methods::ThreadWait>(&params) {
        Ok(record) => Ok(Answer::new(&record, render::record(&record), true)),
        Err(e) if e.is_timeout() => Err(failure(
            "agentTimeout",
            format!(
                "the agent did not answer within {:?}",
                timeout + WAIT_MARGIN
            ),
        )),
        Err(e) => Err(backend::agent_failure(e)),
    }
}

/// Prints notifications as JSON lines until the agent goes away.
fn watch(socket: &Path, thread_ids: Vec<String>) -> Result<Answer, Failure> {
    let mut client = connect(socket, None)?;
    let params = SubscribeParams {
        thread_ids: (!thread_ids.is_empty()).then_some(thread_ids),
    };
    client
        .request::<methods::Subscribe>(&params)
        .map_err(backend::agent_failure)?;
    // Notifications come when they come: no deadline once subscribed.
    client
        .set_read_timeout(None)
        .map_err(|e| failure("agentError", e))?;
    let mut out = std::io::stdout().lock();
    loop {
        match client.read_message() {
            Ok(msg) => {
                if writeln!(out, "{msg}").and_then(|_| out.flush()).is_err() {
                    return Ok(Answer::new(&(), String::new(), true));
                }
            }
            Err(e) => return Err(failure("agentError", e)),
        }
    }
}

/// `p` made absolute against this process's working directory: requests carry absolute
/// paths only (an empty path is left for the query to refuse).
fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// A target made only of hex digits and dashes is an id or prefix; anything else a path.
fn looks_like_id(target: &str) -> bool {
    !target.is_empty() && target.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}
