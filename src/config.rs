//! Configuration: flags, then environment, then the config file, then defaults.
//!
//! The file is `$XDG_CONFIG_HOME/rolloutd/config.toml` (`~/.config/rolloutd/config.toml`)
//! unless `--config` names another. `config/rolloutd.toml` documents every key. Unknown keys
//! and bad values are errors that name the key and the file, so a typo never silently does
//! nothing. Every value remembers where it came from, for `rolloutd config show`.
//!
//! Adding a table: a `File*` struct (with `deny_unknown_fields`) as a field of
//! [`FileConfig`], a `*Config` struct as a field of [`Config`], and one [`Layers::pick`]
//! per key in [`Config::load_with`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Codex homes to index, in search order.
    pub homes: Vec<PathBuf>,
    /// Pairs of prefixes that name the same directory (`/home/u` ↔ `/mnt/users/u`).
    pub aliases: Vec<(PathBuf, PathBuf)>,
    /// The index database file.
    pub index: PathBuf,
    pub watch: WatchConfig,
    pub server: ServerConfig,
    pub log: LogConfig,
    /// `[codex_state]`: what the agent may do to Codex's own state database.
    pub codex_state: CodexStateConfig,
    /// The config file that was read, if one was.
    pub file: Option<PathBuf>,
    /// Where each key's value came from, in the order of `config/rolloutd.toml`.
    pub origins: Vec<(&'static str, Origin)>,
}

/// `[watch]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchConfig {
    pub mode: WatchMode,
    pub poll_interval: Duration,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub first_request_timeout: Duration,
    /// How long a query on a FUSE or network home may take before it is answered
    /// `filesystemUnresponsive` (the filesystem may hang).
    pub fs_timeout: Duration,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A tracing `EnvFilter` directive: `info`, `debug`, `rolloutd=debug,warn`, ...
    pub level: String,
}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "source", content = "name", rename_all = "lowercase")]
pub enum Origin {
    /// A command-line flag, by name.
    Flag(&'static str),
    /// An environment variable, by name.
    Env(&'static str),
    File,
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Flag(name) => write!(f, "flag {name}"),
            Origin::Env(name) => write!(f, "env {name}"),
            Origin::File => f.write_str("file"),
            Origin::Default => f.write_str("default"),
        }
    }
}
/// `[codex_state]` keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodexStateConfig {
    /// When true, the agent points a thread's row in Codex's state DB at a rollout it saw
    /// archived or unarchived by another tool (one compare-and-swap update). Default false.
    #[serde(default)]
    pub auto_repair: bool,
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub homes: Vec<PathBuf>,
    pub index: Option<PathBuf>,
    pub watch_mode: Option<WatchMode>,
    pub poll_interval: Option<Duration>,
}

/// A configuration error, naming the file or variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("config file {}: key `{key}`: {message}", path.display())]
    Value {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
    #[error("environment variable {var}: {message}")]
    Env { var: &'static str, message: String },
    #[error(
        "{0} is not set, so the default {1} cannot be found; set it or pass the path explicitly"
    )]
    NoHome(&'static str, &'static str),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    codex_homes: Option<Vec<String>>,
    aliases: Option<Vec<[String; 2]>>,
    index: Option<String>,
    codex_state: Option<CodexStateConfig>,
    #[serde(default)]
    watch: FileWatch,
    #[serde(default)]
    server: FileServer,
    #[serde(default)]
    log: FileLog,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWatch {
    mode: Option<String>,
    poll_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    max_connections: Option<i64>,
    idle_timeout: Option<String>,
    first_request_timeout: Option<String>,
    fs_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    level: Option<String>,
}

pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// `server.fs_timeout`: long enough for a slow network round trip, short enough that a
/// client sees why it got no answer before it gives up itself.
pub const DEFAULT_FS_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_LOG_LEVEL: &str = "info";

type Env<'a> = &'a dyn Fn(&str) -> Option<std::ffi::OsString>;

/// One key's layers, resolved in precedence order.
struct Key<T> {
    name: &'static str,
    flag: Option<(&'static str, T)>,
    env: Option<&'static str>,
    /// The file's value, already parsed (a parse failure is reported against the file).
    file: Option<Result<T, String>>,
    default: T,
}

/// Resolves keys and records their origins.
struct Layers<'a> {
    env: Env<'a>,
    file_path: Option<&'a Path>,
    origins: Vec<(&'static str, Origin)>,
}

impl Layers<'_> {
    fn pick<T>(
        &mut self,
        key: Key<T>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let (value, origin) = if let Some((flag, v)) = key.flag {
            (v, Origin::Flag(flag))
        } else if let Some((var, raw)) = key.env.and_then(|var| (self.env)(var).map(|v| (var, v))) {
            let text = raw.to_str().ok_or_else(|| ConfigError::Env {
                var,
                message: "is not valid UTF-8".into(),
            })?;
            let v = parse(text).map_err(|message| ConfigError::Env { var, message })?;
            (v, Origin::Env(var))
        } else if let Some(parsed) = key.file {
            let v = parsed.map_err(|message| ConfigError::Value {
                path: self.file_path.map(Path::to_owned).unwrap_or_default(),
                key: key.name,
                message,
            })?;
            (v, Origin::File)
        } else {
            (key.default, Origin::Default)
        };
        self.origins.push((key.name, origin));
        Ok(value)
    }
}

impl Config {
    /// Builds the effective configuration from `overrides`, the process environment and the
    /// config file.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::load_resolving(overrides, &|p, _| std::fs::canonicalize(p).ok())
    }

    /// As [`Config::load`], with `realpath` telling two spellings of one home apart. It is
    /// given `server.fs_timeout`: the agent bounds the call by it, as a home's filesystem may
    /// hang, and takes `None` (no realpath) for a home that did not answer.
    pub fn load_resolving(
        overrides: &Overrides,
        realpath: &dyn Fn(&Path, Duration) -> Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        Config::load_with_realpath(
            overrides,
            &|k| std::env::var_os(k).filter(|v| !v.is_empty()),
            realpath,
        )
    }

    /// The config file in effect: `--config`, else the default location when it exists.
    pub fn file_path(overrides: &Overrides, env: Env<'_>) -> Option<PathBuf> {
        match &overrides.config_file {
            Some(p) => Some(p.clone()),
            None => default_file_path(env).filter(|p| p.exists()),
        }
    }

    /// As [`Config::load`], reading the environment through `env` (for tests).
    pub fn load_with(overrides: &Overrides, env: Env<'_>) -> Result<Config, ConfigError> {
        Config::load_with_realpath(overrides, env, &|p, _| std::fs::canonicalize(p).ok())
    }

    fn load_with_realpath(
        overrides: &Overrides,
        env: Env<'_>,
        realpath: &dyn Fn(&Path, Duration) -> Option<PathBuf>,
    ) -> Result<Config, ConfigError> {
        let user_home = env("HOME").map(PathBuf::from);
        let file_path = Config::file_path(overrides, env);
        let file = match &file_path {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let expand = |s: &str| expand_tilde(s, user_home.as_deref());
        let mut layers = Layers {
            env,
            file_path: file_path.as_deref(),
            origins: Vec::new(),
        };

        let default_homes = user_home.as_ref().map(|h| vec![h.join(".codex")]);
        let homes = layers.pick(
            Key {
                name: "codex_homes",
                flag: (!overrides.homes.is_empty())
                    .then(|| ("--codex-home", overrides.homes.clone())),
                env: Some("CODEX_HOME"),
                file: file
                    .codex_homes
                    .as_ref()
                    .map(|hs| Ok(hs.iter().map(|h| expand(h)).collect())),
                default: default_homes.clone().unwrap_or_default(),
            },
            |s| Ok(vec![PathBuf::from(s)]),
        )?;
        if homes.is_empty() && default_homes.is_none() {
            return Err(ConfigError::NoHome("HOME", "~/.codex"));
        }
        let aliases = layers.pick(
            Key {
                name: "aliases",
                flag: None,
                env: None,
                file: file
                    .aliases
                    .as_ref()
                    .map(|v| Ok(v.iter().map(|[a, b]| (expand(a), expand(b))).collect())),
                default: Vec::new(),
            },
            |_| Err(String::new()),
        )?;
        let default_index = env("XDG_STATE_HOME")
            .map(PathBuf::from)
            .or_else(|| user_home.as_ref().map(|h| h.join(".local").join("state")))
            .map(|d| d.join("rolloutd").join("index.sqlite"));
        let index = layers.pick(
            Key {
                name: "index",
                flag: overrides.index.clone().map(|p| ("--index", p)),
                env: Some("ROLLOUTD_INDEX"),
                file: file.index.as_deref().map(|p| Ok(expand(p))),
                default: default_index.clone().unwrap_or_default(),
            },
            |s| Ok(PathBuf::from(s)),
        )?;
        if index.as_os_str().is_empty() && default_index.is_none() {
            return Err(ConfigError::NoHome(
                "HOME",
                "~/.local/state/rolloutd/index.sqlite",
            ));
        }

        let watch = WatchConfig {
            mode: layers.pick(
                Key {
                    name: "watch.mode",
                    flag: overrides.watch_mode.map(|m| ("--watch-mode", m)),
                    env: Some("ROLLOUTD_WATCH_MODE"),
                    file: file.watch.mode.as_deref().map(str::parse),
                    default: WatchMode::Auto,
                },
                str::parse,
            )?,
            poll_interval: layers.pick(
                Key {
                    name: "watch.poll_interval",
                    flag: overrides.poll_interval.map(|d| ("--poll-interval", d)),
                    env: Some("ROLLOUTD_POLL_INTERVAL"),
                    file: file.watch.poll_interval.as_deref().map(parse_interval),
                    default: DEFAULT_POLL_INTERVAL,
                },
                parse_interval,
            )?,
        };
        let server = ServerConfig {
            max_connections: layers.pick(
                Key {
                    name: "server.max_connections",
                    flag: None,
                    env: Some("ROLLOUTD_MAX_CONNECTIONS"),
                    file: file.server.max_connections.map(check_connections),
                    default: DEFAULT_MAX_CONNECTIONS,
                },
                |s| {
                    s.trim()
                        .parse::<i64>()
                        .map_err(|_| format!("{s:?} is not a whole number"))
                        .and_then(check_connections)
                },
            )?,
            idle_timeout: layers.pick(
                Key {
                    name: "server.idle_timeout",
                    flag: None,
                    env: Some("ROLLOUTD_IDLE_TIMEOUT"),
                    file: file.server.idle_timeout.as_deref().map(parse_interval),
                    default: DEFAULT_IDLE_TIMEOUT,
                },
                parse_interval,
            )?,
            first_request_timeout: layers.pick(
                Key {
                    name: "server.first_request_timeout",
                    flag: None,
                    env: Some("ROLLOUTD_FIRST_REQUEST_TIMEOUT"),
                    file: file
                        .server
                        .first_request_timeout
                        .as_deref()
                        .map(parse_interval),
                    default: DEFAULT_FIRST_REQUEST_TIMEOUT,
                },
                parse_interval,
            )?,
            fs_timeout: layers.pick(
                Key {
                    name: "server.fs_timeout",
                    flag: None,
                    env: Some("ROLLOUTD_FS_TIMEOUT"),
                    file: file.server.fs_timeout.as_deref().map(parse_interval),
                    default: DEFAULT_FS_TIMEOUT,
                },
                parse_interval,
            )?,
        };
        let log = LogConfig {
            level: layers.pick(
                Key {
                    name: "log.level",
                    flag: None,
                    env: Some("RUST_LOG"),
                    file: file.log.level.as_deref().map(parse_level),
                    default: DEFAULT_LOG_LEVEL.to_owned(),
                },
                parse_level,
            )?,
        };

        // One home per directory: a second spelling of a home (a symlink to it) is kept as
        // an alias of the first, so its paths are still recognised.
        let mut aliases = aliases;
        // Each realpath is asked once: on a hung filesystem every ask may cost the timeout.
        let mut deduped: Vec<(PathBuf, Option<PathBuf>)> = Vec::new();
        for h in homes {
            if deduped.iter().any(|(d, _)| *d == h) {
                continue;
            }
            let real = realpath(&h, server.fs_timeout);
            let twin = deduped.iter().find(|(_, r)| real.is_some() && *r == real);
            match twin {
                Some((d, _)) => aliases.push((d.clone(), h)),
                None => deduped.push((h, real)),
            }
        }
        let deduped: Vec<PathBuf> = deduped.into_iter().map(|(h, _)| h).collect();
        let mut origins = layers.origins;
        origins.push((
            "codex_state.auto_repair",
            if file.codex_state.is_some() {
                Origin::File
            } else {
                Origin::Default
            },
        ));
        Ok(Config {
            homes: deduped,
            aliases,
            index,
            watch,
            server,
            log,
            file: file_path.clone(),
            origins,
            codex_state: file.codex_state.unwrap_or_default(),
        })
    }

    /// Every key with its effective value (as it would be written in the file) and origin.
    pub fn entries(&self) -> Vec<(&'static str, serde_json::Value, Origin)> {
        use serde_json::json;
        let duration = |d: &Duration| json!(humantime::format_duration(*d).to_string());
        self.origins
            .iter()
            .map(|(key, origin)| {
                let value = match *key {
                    "codex_homes" => json!(self.homes),
                    "aliases" => json!(self.aliases),
                    "index" => json!(self.index),
                    "watch.mode" => json!(self.watch.mode.as_str()),
                    "watch.poll_interval" => duration(&self.watch.poll_interval),
                    "server.max_connections" => json!(self.server.max_connections),
                    "server.idle_timeout" => duration(&self.server.idle_timeout),
                    "server.first_request_timeout" => duration(&self.server.first_request_timeout),
                    "server.fs_timeout" => duration(&self.server.fs_timeout),
                    "log.level" => json!(self.log.level),
                    "codex_state.auto_repair" => json!(self.codex_state.auto_repair),
                    _ => serde_json::Value::Null,
                };
                (*key, value, origin.clone())
            })
            .collect()
    }
}

/// `$XDG_CONFIG_HOME/rolloutd/config.toml`, else `~/.config/rolloutd/config.toml`.
pub fn default_file_path(env: Env<'_>) -> Option<PathBuf> {
    env("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("rolloutd").join("config.toml"))
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like \"2s\" or \"500ms\" ({e})"))?;
    if d < Duration::from_millis(10) {
        return Err(format!("{s:?} is too short; use at least 10ms"));
    }
    Ok(d)
}

fn check_connections(n: i64) -> Result<usize, String> {
    match usize::try_from(n) {
        Ok(n @ 1..=65_536) => Ok(n),
        _ => Err(format!("{n} is out of range; use 1 to 65536")),
    }
}

fn parse_level(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| s.to_owned())
        .map_err(|e| {
            format!("{s:?} is not a log level or filter like \"info\" or \"rolloutd=debug\" ({e})")
        })
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let parse_error = |e: toml::de::Error, key: String| {
        let line = e
            .span()
            .map(|s| {
                format!(
                    " (line {})",
                    text[..s.start.min(text.len())].lines().count().max(1)
                )
            })
            .unwrap_or_default();
        let message = if key.is_empty() || key == "." {
            format!("{}{line}", e.message())
        } else {
            format!("key `{key}`: {}{line}", e.message())
        };
        ConfigError::Parse {
            path: path.to_owned(),
            message,
        }
    };
    let de = toml::Deserializer::parse(&text).map_err(|e| parse_error(e, String::new()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        parse_error(e.into_inner(), key)
    })
}

fn expand_tilde(s: &str, home: Option<&Path>) -> PathBuf {
    match (s.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ if s == "~" => home.map(Path::to_owned).unwrap_or_else(|| PathBuf::from(s)),
        _ => PathBuf::from(s),
    }
}

/// `watch.mode`: how changes are noticed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchMode {
    /// Events, except polling on network and FUSE filesystems.
    Auto,
    Events,
    Poll,
}

impl WatchMode {
    pub fn as_str(self) -> &'static str {
        match self {
            WatchMode::Auto => "auto",
            WatchMode::Events => "events",
            WatchMode::Poll => "poll",
        }
    }
}

impl std::str::FromStr for WatchMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(WatchMode::Auto),
            "events" => Ok(WatchMode::Events),
            "poll" => Ok(WatchMode::Poll),
            other => Err(format!("{other:?} is not one of auto, events, poll")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::ffi::OsString;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let map: HashMap<String, OsString> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn origin(c: &Config, key: &str) -> Origin {
        c.origins
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, o)| o.clone())
            .unwrap()
    }

    #[test]
    fn defaults_then_env_then_flags() {
        let none = Overrides::default();
        let c = Config::load_with(&none, &env_of(&[("HOME", "/u")])).unwrap();
        assert_eq!(c.homes, vec![PathBuf::from("/u/.codex")]);
        assert_eq!(
            c.index,
            PathBuf::from("/u/.local/state/rolloutd/index.sqlite")
        );
        assert_eq!(c.watch.mode, WatchMode::Auto);
        assert_eq!(c.server.max_connections, 256);
        assert_eq!(origin(&c, "index"), Origin::Default);

        let env = env_of(&[
            ("HOME", "/u"),
            ("CODEX_HOME", "/c"),
            ("XDG_STATE_HOME", "/s"),
            ("ROLLOUTD_WATCH_MODE", "poll"),
        ]);
        let c = Config::load_with(&none, &env).unwrap();
        assert_eq!(c.homes, vec![PathBuf::from("/c")]);
        assert_eq!(c.index, PathBuf::from("/s/rolloutd/index.sqlite"));
        assert_eq!(c.watch.mode, WatchMode::Poll);
        assert_eq!(origin(&c, "codex_homes"), Origin::Env("CODEX_HOME"));

        let flags = Overrides {
            homes: vec![PathBuf::from("/f")],
            index: Some(PathBuf::from("/i.sqlite")),
            watch_mode: Some(WatchMode::Events),
            ..Overrides::default()
        };
        let c = Config::load_with(&flags, &env).unwrap();
        assert_eq!(c.homes, vec![PathBuf::from("/f")]);
        assert_eq!(c.index, PathBuf::from("/i.sqlite"));
        assert_eq!(c.watch.mode, WatchMode::Events);
        assert_eq!(origin(&c, "watch.mode"), Origin::Flag("--watch-mode"));
    }

    #[test]
    fn file_values_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "codex_homes = [\"~/h\"]\naliases = [[\"/home/u\", \"/mnt/users/u\"]]\n\
             [watch]\npoll_interval = \"750ms\"\n[server]\nmax_connections = 8\n",
        )
        .unwrap();
        let flags = Overrides {
            config_file: Some(file.clone()),
            ..Overrides::default()
        };
        let c = Config::load_with(&flags, &env_of(&[("HOME", "/u")])).unwrap();
        assert_eq!(c.homes, vec![PathBuf::from("/u/h")]);
        assert_eq!(
            c.aliases,
            vec![(PathBuf::from("/home/u"), PathBuf::from("/mnt/users/u"))]
        );
        assert_eq!(c.watch.poll_interval, Duration::from_millis(750));
        assert_eq!(c.server.max_connections, 8);
        assert_eq!(origin(&c, "server.max_connections"), Origin::File);

        for (text, key) in [
            ("codex_home = \"/typo\"\n", "codex_home"),
            ("[server]\nmax_conns = 3\n", "max_conns"),
            (
                "[server]\nmax_connections = \"many\"\n",
                "server.max_connections",
            ),
            ("[server]\nmax_connections = 0\n", "server.max_connections"),
            ("[watch]\nmode = \"sometimes\"\n", "watch.mode"),
            ("[watch]\npoll_interval = \"soon\"\n", "watch.poll_interval"),
            ("[log]\nlevel = \"=\"\n", "log.level"),
        ] {
            std::fs::write(&file, text).unwrap();
            let e = Config::load_with(&flags, &env_of(&[("HOME", "/u")]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(key) && e.contains("config.toml"), "{text}: {e}");
        }

        assert!(!c.codex_state.auto_repair);
        std::fs::write(&file, "[codex_state]\nauto_repair = true\n").unwrap();
        let c = Config::load_with(&flags, &env_of(&[("HOME", "/u")])).unwrap();
        assert!(c.codex_state.auto_repair);
        std::fs::write(&file, "[codex_state]\nauto_repiar = true\n").unwrap();
        let e = Config::load_with(&flags, &env_of(&[("HOME", "/u")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("auto_repiar"), "{e}");

        std::fs::write(&file, "codex_home = \"/typo\"\n").unwrap();
        let e = Config::load_with(&flags, &env_of(&[("HOME", "/u")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("codex_home") && e.contains("config.toml"), "{e}");
    }
}
