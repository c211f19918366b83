//! `rolloutd service install | uninstall | status`: a [`Plan`] of files and commands, which
//! `--dry-run` prints and otherwise is carried out in order.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde::Serialize;

use super::{launchd, systemd, RenderError};

/// Which service manager to set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    Systemd,
    Launchd,
}

impl Manager {
    /// launchd on macOS, systemd elsewhere.
    pub fn native() -> Manager {
        if cfg!(target_os = "macos") {
            Manager::Launchd
        } else {
            Manager::Systemd
        }
    }
}

/// Why an install, uninstall or status failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("HOME is not set, so the unit directory cannot be found")]
    NoHome,
    #[error("cannot find the path of the binary to run: {0}")]
    OwnPath(std::io::Error),
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("{}: {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {why}")]
    Command { command: String, why: String },
}

/// What the plans are made from: the user's directories and the binary to run.
#[derive(Debug, Clone)]
pub struct Context {
    pub home: PathBuf,
    /// `$XDG_CONFIG_HOME`, else `~/.config`.
    pub config_home: PathBuf,
    pub uid: u32,
    /// The binary the units run: the one running now.
    pub bin: PathBuf,
}

impl Context {
    /// The process's HOME and uid; `bin`, else the running program.
    pub fn from_process(bin: Option<&Path>) -> Result<Context, ServiceError> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let home = PathBuf::from(var("HOME").ok_or(ServiceError::NoHome)?);
        let config_home = var("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".config"));
        let bin = match bin {
            Some(b) => std::path::absolute(b).map_err(ServiceError::OwnPath)?,
            None => std::env::current_exe().map_err(ServiceError::OwnPath)?,
        };
        Ok(Context {
            home,
            config_home,
            uid: crate::server::socket::unsafe_uid(),
            bin,
        })
    }

    /// Where the units go.
    pub fn unit_dir(&self, manager: Manager) -> PathBuf {
        match manager {
            Manager::Systemd => self.config_home.join("systemd").join("user"),
            Manager::Launchd => self.home.join("Library").join("LaunchAgents"),
        }
    }

    fn unit_files(&self, manager: Manager) -> Vec<PathBuf> {
        let dir = self.unit_dir(manager);
        match manager {
            Manager::Systemd => vec![
                dir.join(systemd::SERVICE_UNIT),
                dir.join(systemd::SOCKET_UNIT),
            ],
            Manager::Launchd => vec![dir.join(format!("{}.plist", launchd::LABEL))],
        }
    }

    fn launchd_target(&self) -> String {
        format!("gui/{}/{}", self.uid, launchd::LABEL)
    }
}

/// A file to write.
#[derive(Debug, Clone, Serialize)]
pub struct FileWrite {
    pub path: PathBuf,
    pub contents: String,
}

/// A command to run; `mayFail` ones are tidying (stopping what may not be running).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub argv: Vec<String>,
    pub may_fail: bool,
}

impl Step {
    fn new(argv: &[&str]) -> Step {
        Step {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            may_fail: false,
        }
    }

    fn may_fail(mut self) -> Step {
        self.may_fail = true;
        self
    }

    pub fn shell(&self) -> String {
        self.argv.join(" ")
    }
}

/// Everything an action does, in order: commands before the files (`before`), the files
/// written and removed, then the commands after.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub manager: Manager,
    pub before: Vec<Step>,
    pub write: Vec<FileWrite>,
    pub remove: Vec<PathBuf>,
    pub after: Vec<Step>,
}

impl Plan {
    /// Every file and command, for `--dry-run`.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for s in &self.before {
            out.push_str(&format!("would run: {}\n", s.shell()));
        }
        for f in &self.write {
            out.push_str(&format!("would write {}:\n", f.path.display()));
            for line in f.contents.lines() {
                out.push_str(&format!("    {line}\n"));
            }
        }
        for p in &self.remove {
            out.push_str(&format!("would remove {}\n", p.display()));
        }
        for s in &self.after {
            out.push_str(&format!("would run: {}\n", s.shell()));
        }
        out
    }
}

pub fn install_plan(manager: Manager, ctx: &Context) -> Result<Plan, ServiceError> {
    let files = ctx.unit_files(manager);
    Ok(match manager {
        Manager::Systemd => Plan {
            manager,
            before: Vec::new(),
            write: vec![
                FileWrite {
                    path: files[0].clone(),
                    contents: systemd::render_service(&ctx.bin, Some(&ctx.home))?,
                },
                FileWrite {
                    path: files[1].clone(),
                    contents: systemd::render_socket(),
                },
            ],
            remove: Vec::new(),
            after: vec![
                Step::new(&["systemctl", "--user", "daemon-reload"]),
                Step::new(&[
                    "systemctl",
                    "--user",
                    "enable",
                    "--now",
                    systemd::SOCKET_UNIT,
                ]),
                Step::new(&["systemctl", "--user", "enable", systemd::SERVICE_UNIT]),
                // restart, not start: a reinstall must run the new binary.
                Step::new(&["systemctl", "--user", "restart", systemd::SERVICE_UNIT]),
            ],
        },
        Manager::Launchd => {
            let plist = files[0].to_string_lossy().into_owned();
            let domain = format!("gui/{}", ctx.uid);
            Plan {
                manager,
                // A loaded older copy must go first, or bootstrap refuses.
                before: vec![Step::new(&["launchctl", "bootout", &ctx.launchd_target()]).may_fail()],
                write: vec![FileWrite {
                    path: files[0].clone(),
                    contents: launchd::render(&ctx.bin, &ctx.home)?,
                }],
                remove: Vec::new(),
                after: vec![Step::new(&["launchctl", "bootstrap", &domain, &plist])],
            }
        }
    })
}

pub fn uninstall_plan(manager: Manager, ctx: &Context) -> Plan {
    let files = ctx.unit_files(manager);
    match manager {
        Manager::Systemd => Plan {
            manager,
            before: vec![Step::new(&[
                "systemctl",
                "--user",
                "disable",
                "--now",
                systemd::SERVICE_UNIT,
                systemd::SOCKET_UNIT,
            ])
            .may_fail()],
            write: Vec::new(),
            remove: files,
            after: vec![Step::new(&["systemctl", "--user", "daemon-reload"])],
        },
        Manager::Launchd => Plan {
            manager,
            before: vec![Step::new(&["launchctl", "bootout", &ctx.launchd_target()]).may_fail()],
            write: Vec::new(),
            remove: files,
            after: Vec::new(),
        },
    }
}

/// The read-only commands `status` runs.
pub fn status_plan(manager: Manager, ctx: &Context) -> Plan {
    let after = match manager {
        Manager::Systemd => vec![
            Step::new(&["systemctl", "--user", "is-enabled", systemd::SERVICE_UNIT]).may_fail(),
            Step::new(&["systemctl", "--user", "is-active", systemd::SERVICE_UNIT]).may_fail(),
            Step::new(&["systemctl", "--user", "is-active", systemd::SOCKET_UNIT]).may_fail(),
            Step::new(&[
                "loginctl",
                "show-user",
                &ctx.uid.to_string(),
                "--property=Linger",
                "--value",
            ])
            .may_fail(),
        ],
        Manager::Launchd => {
            vec![Step::new(&["launchctl", "print", &ctx.launchd_target()]).may_fail()]
        }
    };
    Plan {
        manager,
        before: Vec::new(),
        write: Vec::new(),
        remove: Vec::new(),
        after,
    }
}

/// What one command printed.
#[derive(Debug, Clone, Serialize)]
pub struct Ran {
    pub command: String,
    pub ok: bool,
    pub output: String,
}

/// Carries out `plan`; stops at the first required command that fails.
pub fn execute(plan: &Plan) -> Result<Vec<Ran>, ServiceError> {
    let mut ran = Vec::new();
    for s in &plan.before {
        ran.push(run_step(s)?);
    }
    for f in &plan.write {
        write_file(&f.path, &f.contents)?;
    }
    for p in &plan.remove {
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(ServiceError::Io {
                    path: p.clone(),
                    action: "removing",
                    source: e,
                })
            }
            _ => {}
        }
    }
    for s in &plan.after {
        ran.push(run_step(s)?);
    }
    Ok(ran)
}

fn write_file(path: &Path, contents: &str) -> Result<(), ServiceError> {
    let io = |action| {
        move |source| ServiceError::Io {
            path: path.to_owned(),
            action,
            source,
        }
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("creating the directory"))?;
    }
    // Write beside it, then rename, so the manager never reads half a unit.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, contents).map_err(io("writing"))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
        .map_err(io("setting permissions"))?;
    std::fs::rename(&tmp, path).map_err(io("replacing"))
}

/// Longest a service-manager command may take.
const COMMAND_DEADLINE: Duration = Duration::from_secs(60);

fn run_step(step: &Step) -> Result<Ran, ServiceError> {
    let command = step.shell();
    let failed = |why: String| ServiceError::Command {
        command: command.clone(),
        why,
    };
    let outcome = run_bounded(&step.argv);
    let (ok, output) = match outcome {
        Ok(r) => r,
        Err(why) if step.may_fail => (false, why),
        Err(why) => return Err(failed(why)),
    };
    if !ok && !step.may_fail {
        return Err(failed(if output.is_empty() {
            "it exited with an error".into()
        } else {
            output
        }));
    }
    Ok(Ran {
        command: command.clone(),
        ok,
        output,
    })
}

/// Runs `argv`, returning (success, stdout+stderr trimmed); never waits past the deadline.
fn run_bounded(argv: &[String]) -> Result<(bool, String), String> {
    let (program, args) = argv.split_first().ok_or("empty command")?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > COMMAND_DEADLINE => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} did not finish within {COMMAND_DEADLINE:?}"
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    };
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    Ok((status.success(), text.trim().to_owned()))
}

/// `rolloutd service status`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub manager: Manager,
    pub unit_files: Vec<(PathBuf, bool)>,
    /// The manager's own words (`enabled`, `active`, `inactive`, ...), by query.
    pub states: Vec<Ran>,
    /// Whether the agent is running (from the manager's point of view).
    pub running: bool,
    /// `Some(false)` when lingering is off: user services stop at logout.
    pub linger: Option<bool>,
    /// What `index/status` on the socket answered, if anything did.
    pub agent: Option<crate::protocol::AgentStatus>,
    pub agent_error: Option<String>,
    pub notes: Vec<String>,
}

pub fn status(manager: Manager, ctx: &Context, socket: &Path) -> Status {
    let plan = status_plan(manager, ctx);
    let states: Vec<Ran> = plan.after.iter().filter_map(|s| run_step(s).ok()).collect();
    let unit_files = ctx
        .unit_files(manager)
        .into_iter()
        .map(|p| {
            let present = p.exists();
            (p, present)
        })
        .collect();
    let mut notes = Vec::new();
    let (running, linger) = match manager {
        Manager::Systemd => {
            let active = states
                .iter()
                .find(|r| r.command.contains("is-active") && r.command.contains(".service"))
                .is_some_and(|r| r.ok && r.output == "active");
            let linger = states
                .iter()
                .find(|r| r.command.starts_with("loginctl"))
                .filter(|r| r.ok)
                .and_then(|r| match r.output.as_str() {
                    "yes" => Some(true),
                    "no" => Some(false),
                    _ => None,
                })
                .or_else(linger_file);
            match linger {
                Some(false) => notes.push(
                    "lingering is off: your user services, rolloutd included, stop when you log \
                     out and start again at your next login; to keep rolloutd running, run \
                     `loginctl enable-linger` (or `sudo loginctl enable-linger $USER`)"
                        .into(),
                ),
                None => notes.push(
                    "cannot tell whether lingering is on (`loginctl show-user` did not answer); \
                     without it user services stop at logout (`loginctl enable-linger`)"
                        .into(),
                ),
                Some(true) => {}
            }
            (active, linger)
        }
        Manager::Launchd => {
            let running = states
                .first()
                .is_some_and(|r| r.ok && r.output.contains("state = running"));
            (running, None)
        }
    };
    let (agent, agent_error) = match agent_status(socket) {
        Ok(v) => (Some(v), None),
        Err(e) => (None, Some(e)),
    };
    Status {
        manager,
        unit_files,
        states,
        running,
        linger,
        agent,
        agent_error,
        notes,
    }
}

/// `/var/lib/systemd/linger/$USER` exists exactly when lingering is on.
fn linger_file() -> Option<bool> {
    let user = std::env::var_os("USER").or_else(|| std::env::var_os("LOGNAME"))?;
    let dir = Path::new("/var/lib/systemd/linger");
    dir.is_dir().then(|| dir.join(user).exists())
}

/// One `index/status` call with a short deadline, so `status` never hangs on a stuck agent.
fn agent_status(socket: &Path) -> Result<crate::protocol::AgentStatus, String> {
    let shown = socket.display();
    let mut client = crate::client::Client::connect_within(
        socket,
        crate::client::CONNECT_TIMEOUT,
        Some(Duration::from_secs(3)),
    )
    .map_err(|e| format!("no agent answers on {shown}: {e}"))?;
    client
        .request::<crate::protocol::methods::IndexStatus>(&crate::protocol::request::NoParams {})
        .map_err(|e| format!("{shown}: {e}"))
}
