//! `rolloutd run`, `rolloutd service ...` and `rolloutd config show`: the commands about
//! running the agent rather than asking it.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde::Serialize;

use super::{failure, Answer, Failure};
use crate::config::{Config, Overrides};
use crate::service::install::{self, Context, Manager};

#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    pub action: ServiceAction,
    /// Print every file and command, and do nothing
    #[arg(long, global = true)]
    pub dry_run: bool,
    /// The service manager [default: launchd on macOS, else systemd]
    #[arg(long, value_enum, global = true)]
    pub manager: Option<Manager>,
    /// The binary the units run [default: this program]
    #[arg(long, value_name = "PATH", global = true)]
    pub bin: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ServiceAction {
    /// Write the units for the binary running this command, then enable and start them
    Install,
    /// Stop and disable the agent, and remove its units
    Uninstall,
    /// Whether the units are installed and running, lingering, and what the agent says
    Status,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the effective configuration and where each value came from
    Show,
}

/// `rolloutd run`: the config decides the log level, watch and server settings.
pub fn run_agent(overrides: Overrides, socket: PathBuf) -> Result<Answer, Failure> {
    // Loaded once, on the guard the agent keeps: a home that did not answer here is not
    // waited for again.
    let hang = std::sync::Arc::new(crate::live::HangGuard::default());
    let config = crate::agent::load_config(&overrides, &hang).map_err(|e| failure("config", e))?;
    crate::logging::init(&config.log.level);
    let opts = crate::agent::AgentOptions {
        overrides,
        socket,
        watch: crate::watch::WatchOptions {
            mode: config.watch.mode,
            poll_interval: config.watch.poll_interval,
            ..Default::default()
        },
        server: crate::server::Limits {
            max_connections: config.server.max_connections,
            idle_timeout: config.server.idle_timeout,
            first_request_timeout: config.server.first_request_timeout,
            fs_timeout: config.server.fs_timeout,
        },
    };
    crate::agent::run(opts, config, hang).map_err(|e| failure("agent", e))?;
    Ok(Answer::new(&Stopped { stopped: true }, String::new(), true))
}

#[derive(Serialize)]
struct Stopped {
    stopped: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DryRun<'a, P> {
    dry_run: bool,
    plan: &'a P,
}

#[derive(Serialize)]
struct Done<'a, P, R> {
    plan: &'a P,
    ran: &'a R,
}

/// One `config show --json` value: the value, and where it came from.
#[derive(Serialize)]
struct ShownValue<O> {
    value: serde_json::Value,
    #[serde(flatten)]
    origin: O,
}

#[derive(Serialize)]
struct Shown<'a, F, V> {
    file: &'a F,
    values: V,
}

pub fn service(args: ServiceArgs, socket: &Path) -> Result<Answer, Failure> {
    let manager = args.manager.unwrap_or_else(Manager::native);
    let ctx = Context::from_process(args.bin.as_deref()).map_err(|e| failure("service", e))?;
    let plan = match args.action {
        ServiceAction::Install => {
            install::install_plan(manager, &ctx).map_err(|e| failure("service", e))?
        }
        ServiceAction::Uninstall => install::uninstall_plan(manager, &ctx),
        ServiceAction::Status if args.dry_run => install::status_plan(manager, &ctx),
        ServiceAction::Status => return Ok(status(manager, &ctx, socket)),
    };
    if args.dry_run {
        let human = format!("dry run: nothing is changed\n{}", plan.describe());
        return Ok(Answer::new(
            &DryRun {
                dry_run: true,
                plan: &plan,
            },
            human,
            true,
        ));
    }
    let ran = install::execute(&plan).map_err(|e| failure("service", e))?;
    let mut human = String::new();
    for f in &plan.write {
        human.push_str(&format!("wrote {}\n", f.path.display()));
    }
    for p in &plan.remove {
        human.push_str(&format!("removed {}\n", p.display()));
    }
    for r in &ran {
        let note = if r.ok { "" } else { " (failed; ignored)" };
        human.push_str(&format!("ran {}{note}\n", r.command));
    }
    if matches!(args.action, ServiceAction::Install) && manager == Manager::Systemd {
        human.push_str("check it with `rolloutd service status`\n");
    }
    Ok(Answer::new(
        &Done {
            plan: &plan,
            ran: &ran,
        },
        human,
        true,
    ))
}

fn status(manager: Manager, ctx: &Context, socket: &Path) -> Answer {
    let s = install::status(manager, ctx, socket);
    let mut human = String::new();
    for (path, present) in &s.unit_files {
        let state = if *present { "installed" } else { "missing" };
        human.push_str(&format!("{state:9}  {}\n", path.display()));
    }
    for r in &s.states {
        let first = r.output.lines().next().unwrap_or("");
        human.push_str(&format!("{}: {first}\n", r.command));
    }
    match (&s.agent, &s.agent_error) {
        (Some(a), _) => human.push_str(&format!(
            "agent: {} (pid {}, {} threads)\n",
            if a.ready { "ready" } else { "starting" },
            a.pid,
            a.counts.threads
        )),
        (None, Some(e)) => human.push_str(&format!("agent: {e}\n")),
        (None, None) => {}
    }
    for n in &s.notes {
        human.push_str(&format!("note: {n}\n"));
    }
    let positive = s.running || s.agent.is_some();
    Answer::new(&s, human, positive)
}

pub fn config(action: ConfigAction, overrides: &Overrides) -> Result<Answer, Failure> {
    match action {
        ConfigAction::Show => {
            let config = Config::load(overrides).map_err(|e| failure("config", e))?;
            let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
            let file_line = match (&config.file, crate::config::default_file_path(&env)) {
                (Some(f), _) => format!("config file: {}", f.display()),
                (None, Some(d)) => format!("config file: none ({} does not exist)", d.display()),
                (None, None) => "config file: none".to_owned(),
            };
            let entries = config.entries();
            let width = entries.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
            let mut human = format!("{file_line}\n");
            let mut values = serde_json::Map::new();
            for (key, value, origin) in entries {
                let shown = match &value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                human.push_str(&format!("{key:width$}  {shown}  ({origin})\n"));
                let entry = serde_json::to_value(ShownValue { value, origin })
                    .unwrap_or(serde_json::Value::Null);
                values.insert(key.to_owned(), entry);
            }
            Ok(Answer::new(
                &Shown {
                    file: &config.file,
                    values,
                },
                human,
                true,
            ))
        }
    }
}
