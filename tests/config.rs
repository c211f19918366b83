//! The config file through the built binary: precedence (flags > env > file > defaults) as
//! `config show` reports it, errors that name the key and the file, and `rolloutd run`
//! taking its settings from the file unless a flag overrides them.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::agent::Agent;
use common::Fixture;
use serde_json::json;

/// `rolloutd <args>` with only HOME/XDG dirs inside `home` and the given extra env.
fn run(home: &Path, env: &[(&str, &str)], args: &[&str]) -> common::Run {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rolloutd"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::null());
    common::Run::spawn(c, args)
}

fn write_config(home: &Path, text: &str) -> std::path::PathBuf {
    let p = home.join(".config/rolloutd/config.toml");
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn precedence_flags_env_file_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let home = dunce::canonicalize(dir.path()).unwrap();
    let file = write_config(
        &home,
        "index = \"/from/file.sqlite\"\ncodex_homes = [\"~/file-home\"]\n\
         [watch]\nmode = \"poll\"\npoll_interval = \"1s\"\n[log]\nlevel = \"debug\"\n",
    );
    let env = [
        ("ROLLOUTD_INDEX", "/from/env.sqlite"),
        ("ROLLOUTD_POLL_INTERVAL", "3s"),
    ];
    let out = run(
        &home,
        &env,
        &["--json", "--index", "/from/flag.sqlite", "config", "show"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let v = &out.json["values"];
    assert_eq!(out.json["file"], json!(file));
    // flag over env over file
    assert_eq!(
        v["index"],
        json!({"value": "/from/flag.sqlite", "source": "flag", "name": "--index"})
    );
    // env over file
    assert_eq!(
        v["watch.poll_interval"],
        json!({"value": "3s", "source": "env", "name": "ROLLOUTD_POLL_INTERVAL"})
    );
    // file over default, with ~ expanded
    assert_eq!(v["watch.mode"], json!({"value": "poll", "source": "file"}));
    assert_eq!(
        v["codex_homes"],
        json!({"value": [home.join("file-home")], "source": "file"})
    );
    assert_eq!(v["log.level"], json!({"value": "debug", "source": "file"}));
    // defaults
    assert_eq!(
        v["server.max_connections"],
        json!({"value": 256, "source": "default"})
    );
    assert_eq!(
        v["server.idle_timeout"],
        json!({"value": "5m", "source": "default"})
    );

    // The human form names each origin too.
    let out = run(&home, &env, &["config", "show"]);
    assert!(out
        .stdout
        .contains(&format!("config file: {}", file.display())));
    assert!(out
        .stdout
        .lines()
        .any(|l| l.starts_with("watch.mode") && l.ends_with("(file)")));
    assert!(out
        .stdout
        .lines()
        .any(|l| l.starts_with("index") && l.ends_with("(env ROLLOUTD_INDEX)")));
}

#[test]
fn unknown_keys_and_bad_values_name_the_key_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let home = dunce::canonicalize(dir.path()).unwrap();
    for (text, key) in [
        ("index_path = \"/x\"\n", "index_path"),
        ("[server]\nmax_connection = 3\n", "max_connection"),
        ("[watcher]\nmode = \"poll\"\n", "watcher"),
        (
            "[server]\nmax_connections = \"lots\"\n",
            "server.max_connections",
        ),
        ("[server]\nmax_connections = -1\n", "server.max_connections"),
        (
            "[server]\nidle_timeout = \"forever\"\n",
            "server.idle_timeout",
        ),
        ("[watch]\nmode = \"inotify\"\n", "watch.mode"),
        ("[log]\nlevel = \"=\"\n", "log.level"),
    ] {
        let file = write_config(&home, text);
        for args in [
            &["config", "show"][..],
            &["--codex-home", "/nonexistent", "run"][..],
        ] {
            let out = run(&home, &[], args);
            assert_eq!(out.code, 2, "{text}: {out:?}");
            assert!(
                out.stderr.contains(key) && out.stderr.contains(&file.display().to_string()),
                "{text}: {}",
                out.stderr
            );
        }
    }
    // A bad value in the environment names the variable.
    write_config(&home, "");
    let out = run(
        &home,
        &[("ROLLOUTD_WATCH_MODE", "sometimes")],
        &["config", "show"],
    );
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("ROLLOUTD_WATCH_MODE"), "{}", out.stderr);
}

/// `rolloutd run` with the fixture until it is ready; returns the watcher `status` reports.
/// The agent is killed and reaped on the way out, however the test ends.
fn run_agent_watcher(fx: &Fixture, extra: &[&str]) -> serde_json::Value {
    let _agent = Agent::start_with(fx, extra);
    let out = fx.run(&["status"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["ready"], json!(true), "{out:?}");
    out.json["watcher"].clone()
}

#[test]
fn run_takes_watch_settings_from_the_file_and_flags_override_them() {
    let mut fx = Fixture::new();
    let config = fx.root.join("config.toml");
    std::fs::write(
        &config,
        "[watch]\nmode = \"poll\"\npoll_interval = \"250ms\"\n",
    )
    .unwrap();
    fx.config = Some(config);
    let watcher = run_agent_watcher(&fx, &[]);
    assert_eq!(watcher["mode"], json!("poll"), "{watcher}");
    assert!(watcher["reason"]
        .as_str()
        .unwrap_or("")
        .contains("watch.mode"));

    let watcher = run_agent_watcher(&fx, &["--watch-mode", "events"]);
    assert_eq!(watcher["mode"], json!("events"), "{watcher}");
}
