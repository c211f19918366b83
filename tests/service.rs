//! Running as a service: the unit files (systemd-analyze, plist), `service install` (dry run
//! and against stand-in systemctl/loginctl), readiness over a real NOTIFY_SOCKET, socket
//! activation with a pre-bound fd 3, completions and the man page.

mod common;

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::agent::{Agent, READY_DEADLINE};
use common::sys::{prerequisite_missing, which};
use common::{tid, Fixture, Rollout};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_rolloutd");
/// Longest the agent may take to go down in these tests.
const AGENT_DEADLINE: Duration = Duration::from_secs(30);

/// SIGTERM, then the exit status (waited for at most [`AGENT_DEADLINE`]).
fn terminate(agent: &mut Agent) -> ExitStatus {
    agent.signal(libc::SIGTERM);
    agent
        .wait_exit(AGENT_DEADLINE)
        .unwrap_or_else(|| panic!("agent did not stop after SIGTERM; log:\n{}", agent.log()))
}

/// A fixture home holding `n` small rollouts.
fn fixture_with(n: u32) -> Fixture {
    let fx = Fixture::new();
    for i in 0..n {
        let r = Rollout::new(&tid(i), "2026-11-21T19:02:43.635Z", "/w", "title").base_len(64);
        fx.write_active(&r);
    }
    fx
}

/// `rolloutd <args>` with HOME (and nothing else of the user's) inside `home`.
fn in_home(home: &Path, args: &[&str]) -> common::Run {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .args(args)
        .stdin(Stdio::null());
    common::Run::spawn(c, args)
}

#[test]
fn readiness_after_first_reconcile_then_watchdog_and_stopping() {
    let fx = fixture_with(5);
    let mut c = fx.cmd();
    c.env("WATCHDOG_USEC", "400000")
        .env("JOURNAL_STREAM", "8:12345")
        .arg("run");
    let mut agent = Agent::spawn_command(c, fx.socket(), fx.root.join("agent.log"));

    agent.expect_note("READY=1", READY_DEADLINE);
    let seen = &agent.notes;
    let ready_at = seen
        .iter()
        .position(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap();
    let ready_msg = seen[ready_at].clone();
    // The index did not exist before this run, so counts of the fixture in the READY
    // datagram mean the first reconcile had finished when READY=1 was sent.
    assert!(
        ready_msg.contains("STATUS=5 threads (5 files, 0 archived), 0 problems"),
        "{ready_msg:?}"
    );
    assert!(
        seen[..ready_at]
            .iter()
            .any(|m| m.contains("STATUS=indexing")),
        "a STATUS line precedes READY: {seen:?}"
    );
    // The agent agrees it is ready and indexed, as soon as READY=1 arrived.
    let status = agent.status();
    assert_eq!(status["ready"], json!(true));
    assert_eq!(status["counts"]["threads"], json!(5));

    // WATCHDOG_USEC=400ms: pings every ~200ms, counted over a window (the pings are what
    // is measured, so this wait is part of the test).
    let before = agent.notes.len();
    agent.collect_notes(Duration::from_millis(1500));
    let pings = agent.notes[before..]
        .iter()
        .filter(|m| m.contains("WATCHDOG=1"))
        .count();
    assert!((3..=12).contains(&pings), "{pings} watchdog pings in 1.5 s");

    let status = terminate(&mut agent);
    assert!(status.success(), "{status}; stderr:\n{}", agent.log());
    agent.drain_notes();
    assert!(
        agent.notes.iter().any(|m| m.contains("STOPPING=1")),
        "{:?}",
        agent.notes
    );

    // JOURNAL_STREAM: no timestamps, no colour (journald adds its own).
    let log = agent.log();
    let first = log.lines().next().unwrap_or_default();
    assert!(first.trim_start().starts_with("INFO"), "{log}");
    assert!(!log.contains('\u{1b}'), "{log}");
}

/// A manager that stops reading its notify socket (stalled, or a `NOTIFY_SOCKET` leaked
/// from another service) must stall nothing: the agent starts, serves, pings and stops as
/// usual, and says once that it cannot notify.
#[test]
fn a_manager_that_never_reads_its_notify_socket_stalls_nothing() {
    let fx = fixture_with(3);
    let mut c = fx.cmd();
    // Pings every 100 ms, from the runtime: a blocking send would take a worker at once.
    c.env("WATCHDOG_USEC", "200000").arg("run");
    let mut agent = Agent::spawn_stalled(c, fx.socket(), fx.root.join("agent.log"));
    common::agent::eventually_within("the agent is ready and answers", READY_DEADLINE, || {
        agent
            .call("index/status", json!({}))
            .ok()
            .filter(|s| s["ready"] == json!(true))
    });
    // A change, and many requests on two connections while the pings keep failing.
    fx.write_active(&Rollout::new(&tid(7), "2026-11-21T19:02:43.635Z", "/w", "t").base_len(64));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let mut client = agent.client();
            std::thread::spawn(move || {
                (0..200)
                    .filter(|i| {
                        client
                            .call("thread/resolve", json!({"threadId": tid(i % 3)}))
                            .is_ok()
                    })
                    .count()
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 200, "every request answered");
    }
    common::agent::eventually("the change is indexed", || {
        agent
            .call("thread/resolve", json!({"threadId": tid(7)}))
            .ok()
    });
    let status = terminate(&mut agent);
    assert!(status.success(), "{status}; stderr:\n{}", agent.log());
    let log = agent.log();
    assert_eq!(
        log.matches("cannot notify the service manager").count(),
        1,
        "{log}"
    );
}

#[test]
fn socket_activation_serves_the_passed_socket_and_keeps_it() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    let fx = fixture_with(3);
    std::fs::create_dir_all(fx.root.join("act")).unwrap();
    let activated = fx.root.join("act/activated.sock");
    let listener = UnixListener::bind(&activated).unwrap();
    let own = fx.root.join("own/rolloutd.sock");

    // LISTEN_PID must be the agent's own pid: a shell sets it to its $$ and execs the agent
    // (same pid), with the listener dup'ed onto fd 3.
    let base = fx.cmd();
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg("LISTEN_PID=$$; export LISTEN_PID; exec \"$0\" \"$@\"")
        .arg(base.get_program())
        .args(base.get_args())
        .arg("--socket")
        .arg(&own)
        .arg("run");
    for (k, v) in base.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c.env("LISTEN_FDS", "1").env_remove("LISTEN_PID");
    let fd = listener.as_raw_fd();
    // SAFETY: dup2 and fcntl are async-signal-safe; `fd` stays open in the parent.
    unsafe {
        c.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut agent = Agent::spawn_command(c, activated.clone(), fx.root.join("agent.log"));
    agent.wait_ready();
    let status = agent.status();
    assert_eq!(status["counts"]["threads"], json!(3));
    assert_eq!(status["pid"], json!(agent.pid()));
    let record = agent
        .call("thread/resolve", json!({"threadId": tid(1)}))
        .unwrap();
    assert_eq!(record["threadId"], json!(tid(1)));
    // The CLI reaches it too.
    let out = fx.run_os(&[
        "--socket".as_ref(),
        activated.as_os_str(),
        "status".as_ref(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        !own.exists() && !own.parent().unwrap().exists(),
        "the agent made its own socket"
    );

    let exit = terminate(&mut agent);
    assert!(exit.success(), "{exit}; stderr:\n{}", agent.log());
    assert!(
        std::fs::symlink_metadata(&activated).is_ok(),
        "the passed socket was unlinked at exit"
    );
    assert!(!own.parent().unwrap().exists());
    assert!(agent.log().contains("service manager passed"));
}

#[test]
fn install_dry_run_prints_files_and_commands_and_changes_nothing() {
    let home = tempfile::tempdir().unwrap();
    let home = dunce::canonicalize(home.path()).unwrap();
    let uid = unsafe { libc::getuid() };

    let out = in_home(
        &home,
        &["service", "install", "--dry-run", "--manager", "systemd"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let unit_dir = home.join(".config/systemd/user");
    for file in ["rolloutd.service", "rolloutd.socket"] {
        let line = format!("would write {}:", unit_dir.join(file).display());
        assert!(out.stdout.contains(&line), "{line} in {}", out.stdout);
    }
    for cmd in [
        "would run: systemctl --user daemon-reload",
        "would run: systemctl --user enable --now rolloutd.socket",
        "would run: systemctl --user enable rolloutd.service",
        "would run: systemctl --user restart rolloutd.service",
    ] {
        assert!(out.stdout.contains(cmd), "{cmd} in {}", out.stdout);
    }
    assert!(out.stdout.contains(&format!("    ExecStart={BIN} run")));
    assert!(out.stdout.contains("    Type=notify"));
    let reload = out.stdout.find("daemon-reload").unwrap();
    assert!(out.stdout.find("would write").unwrap() < reload);
    assert!(!home.join(".config").exists(), "dry run wrote something");

    let out = in_home(
        &home,
        &["service", "install", "--dry-run", "--manager", "launchd"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let plist = home.join("Library/LaunchAgents/rolloutd.plist");
    assert!(out
        .stdout
        .contains(&format!("would write {}:", plist.display())));
    assert!(out.stdout.contains(&format!(
        "would run: launchctl bootstrap gui/{uid} {}",
        plist.display()
    )));
    assert!(!home.join("Library").exists());

    let out = in_home(
        &home,
        &["service", "uninstall", "--dry-run", "--manager", "systemd"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out
        .stdout
        .contains("would run: systemctl --user disable --now rolloutd.service rolloutd.socket"));
    assert!(out.stdout.contains(&format!(
        "would remove {}",
        unit_dir.join("rolloutd.service").display()
    )));
    let out = in_home(
        &home,
        &["service", "status", "--dry-run", "--manager", "systemd"],
    );
    assert!(out.stdout.contains(&format!(
        "would run: loginctl show-user {uid} --property=Linger --value"
    )));

    // --json carries the same plan.
    let out = in_home(
        &home,
        &[
            "--json",
            "service",
            "install",
            "--dry-run",
            "--manager",
            "systemd",
        ],
    );
    assert_eq!(out.json["dryRun"], json!(true));
    assert_eq!(out.json["plan"]["write"].as_array().unwrap().len(), 2);
    assert!(!home.join(".config").exists());
}

/// Stand-ins for systemctl and loginctl that log their arguments.
fn fake_tools(dir: &Path, linger: &str) -> PathBuf {
    let bin = dir.join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("commands.log");
    let systemctl = format!(
        "#!/bin/sh\necho \"systemctl $*\" >> '{}'\ncase \"$2\" in is-active) echo active;; is-enabled) echo enabled;; esac\nexit 0\n",
        log.display()
    );
    let loginctl = format!(
        "#!/bin/sh\necho \"loginctl $*\" >> '{}'\necho {linger}\n",
        log.display()
    );
    for (name, text) in [("systemctl", systemctl), ("loginctl", loginctl)] {
        let p = bin.join(name);
        std::fs::write(&p, text).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

#[test]
fn install_status_uninstall_against_stand_in_systemctl() {
    let dir = tempfile::tempdir().unwrap();
    let home = dunce::canonicalize(dir.path()).unwrap();
    let fake = fake_tools(&home, "no");
    let path = format!(
        "{}:{}",
        fake.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", &path)
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", home.join("run"))
            .args(args);
        common::Run::spawn(c, args)
    };
    let log = || std::fs::read_to_string(home.join("commands.log")).unwrap_or_default();

    let out = run(&["service", "install", "--manager", "systemd"]);
    assert_eq!(out.code, 0, "{out:?}");
    let unit = home.join(".config/systemd/user/rolloutd.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(text.contains(&format!("ExecStart={BIN} run")));
    assert!(home.join(".config/systemd/user/rolloutd.socket").exists());
    assert_eq!(
        log().lines().collect::<Vec<_>>(),
        [
            "systemctl --user daemon-reload",
            "systemctl --user enable --now rolloutd.socket",
            "systemctl --user enable rolloutd.service",
            "systemctl --user restart rolloutd.service",
        ]
    );

    // Lingering off: status says what that means and how to turn it on.
    let out = run(&["service", "status", "--manager", "systemd"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("stop when you log out"), "{out:?}");
    assert!(out.stdout.contains("loginctl enable-linger"), "{out:?}");
    assert!(out.stdout.contains("no agent answers"), "{out:?}");

    let out = run(&["service", "uninstall", "--manager", "systemd"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!unit.exists());
    assert!(log().contains("systemctl --user disable --now rolloutd.service rolloutd.socket"));

    // Lingering on: no such note.
    std::fs::remove_file(home.join("commands.log")).unwrap();
    fake_tools(&home, "yes");
    let out = run(&["--json", "service", "status", "--manager", "systemd"]);
    assert_eq!(out.json["linger"], json!(true), "{out:?}");
    assert_eq!(out.json["notes"], json!([]));
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let Some(analyze) = which("systemd-analyze") else {
        return prerequisite_missing(
            "systemd-analyze is not installed (.ci/run installs Debian's systemd)",
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let home = dunce::canonicalize(dir.path()).unwrap();
    let runtime = home.join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    // The shipped template runs %h/.local/bin/rolloutd; make that exist under HOME.
    std::fs::create_dir_all(home.join(".local/bin")).unwrap();
    std::os::unix::fs::symlink(BIN, home.join(".local/bin/rolloutd")).unwrap();

    let verify = |units: &[PathBuf]| {
        let out = Command::new(&analyze)
            .arg("verify")
            .arg("--user")
            .args(units)
            .env("HOME", &home)
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("SYSTEMD_LOG_COLOR", "0")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };

    // The units install writes (ExecStart = this test's binary).
    let out = in_home(
        &home,
        &[
            "--json",
            "service",
            "install",
            "--dry-run",
            "--manager",
            "systemd",
        ],
    );
    let rendered = home.join("rendered");
    std::fs::create_dir_all(&rendered).unwrap();
    let mut units = Vec::new();
    for f in out.json["plan"]["write"].as_array().unwrap() {
        let name = Path::new(f["path"].as_str().unwrap()).file_name().unwrap();
        let p = rendered.join(name);
        std::fs::write(&p, f["contents"].as_str().unwrap()).unwrap();
        units.push(p);
    }
    let (ok, text) = verify(&units);
    if text.contains("Failed to initialize manager")
        || text.contains("Failed to lookup RuntimeDirectory")
    {
        return prerequisite_missing(&format!(
            "systemd-analyze cannot start a user manager here: {text}"
        ));
    }
    // verify exits 0 on some warnings (a bad key is "ignoring"), so any mention of our
    // units fails the test too.
    assert!(
        ok && !text.contains("rolloutd"),
        "systemd-analyze verify: {text}"
    );

    // The templates exactly as shipped in config/systemd/.
    let shipped = home.join("shipped");
    std::fs::create_dir_all(&shipped).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/systemd");
    let mut units = Vec::new();
    for name in ["rolloutd.service", "rolloutd.socket"] {
        std::fs::copy(repo.join(name), shipped.join(name)).unwrap();
        units.push(shipped.join(name));
    }
    let (ok, text) = verify(&units);
    assert!(
        ok && !text.contains("rolloutd"),
        "systemd-analyze verify: {text}"
    );

    let service = std::fs::read_to_string(repo.join("rolloutd.service")).unwrap();
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "RestartSec=2s",
        "WatchdogSec=30s",
        "Requires=rolloutd.socket",
    ] {
        assert!(service.lines().any(|l| l == line), "{line}");
    }
    let socket = std::fs::read_to_string(repo.join("rolloutd.socket")).unwrap();
    assert!(socket.contains("ListenStream=%t/rolloutd/rolloutd.sock"));
}

#[test]
fn plist_parses_with_the_expected_keys() {
    let home = tempfile::tempdir().unwrap();
    let home = dunce::canonicalize(home.path()).unwrap();
    let out = in_home(
        &home,
        &[
            "--json",
            "service",
            "install",
            "--dry-run",
            "--manager",
            "launchd",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let contents = out.json["plan"]["write"][0]["contents"].as_str().unwrap();
    let value = plist::Value::from_reader_xml(contents.as_bytes()).unwrap();
    let dict = value.as_dictionary().expect("a dict at the top");

    assert_eq!(dict["Label"].as_string(), Some("rolloutd"));
    let args: Vec<&str> = dict["ProgramArguments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_string().unwrap())
        .collect();
    assert_eq!(args, [BIN, "run"]);
    assert_eq!(dict["RunAtLoad"].as_boolean(), Some(true));
    let keep = dict["KeepAlive"].as_dictionary().unwrap();
    assert_eq!(keep["Crashed"].as_boolean(), Some(true));
    assert_eq!(keep["SuccessfulExit"].as_boolean(), Some(false));
    let throttle = dict["ThrottleInterval"].as_signed_integer().unwrap();
    assert!((5..=60).contains(&throttle), "{throttle}");
    let log = dict["StandardErrorPath"].as_string().unwrap();
    assert!(log.starts_with(home.to_str().unwrap()), "{log}");
    assert!(!contents.contains("@ROLLOUTD_BIN@") && !contents.contains("@HOME@"));

    // The shipped template parses as it is, and documents the Sockets key.
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/launchd/rolloutd.plist");
    plist::Value::from_file(&template).unwrap();
    let text = std::fs::read_to_string(&template).unwrap();
    assert!(text.contains("<key>Sockets</key>") && text.contains("launch_activate_socket"));
}

#[test]
fn completions_and_man_page() {
    let home = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = in_home(home.path(), &["completions", shell]);
        assert_eq!(out.code, 0, "{out:?}");
        assert!(out.stdout.contains("rolloutd") && out.stdout.contains("check-resume"));
        assert!(out.stdout.contains("service"), "{shell}");
    }
    let out = in_home(home.path(), &["completions", "tcsh"]);
    assert_eq!(out.code, 2);
    let out = in_home(home.path(), &["man"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains(".TH rolloutd 1"), "{}", out.stdout);
    assert!(out.stdout.contains("check\\-resume"));
}
