//! Configuration: flags, then environment, then the config file, then defaults.
//!
//! The file is `$XDG_CONFIG_HOME/rolloutd/config.toml` (`~/.config/rolloutd/config.toml`)
//! unless `--config` names another. `config/rolloutd.toml` documents every key. Unknown keys
//! are errors that name the key and the file, so a typo never silently does nothing.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The effective configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Codex homes to index, in search order.
    pub homes: Vec<PathBuf>,
    /// Pairs of prefixes that name the same directory (`/home/u` ↔ `/mnt/users/u`).
    pub aliases: Vec<(PathBuf, PathBuf)>,
    /// The index database file.
    pub index: PathBuf,
    /// `[codex_state]`: what the agent may do to Codex's own state database.
    pub codex_state: CodexStateConfig,
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
}

impl Config {
    /// Builds the effective configuration from `overrides`, the process environment and the
    /// config file.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Config::load_with(overrides, &|k| {
            std::env::var_os(k).filter(|v| !v.is_empty())
        })
    }

    /// As [`Config::load`], reading the environment through `env` (for tests).
    pub fn load_with(
        overrides: &Overrides,
        env: &dyn Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Config, ConfigError> {
        let user_home = env("HOME").map(PathBuf::from);
        let file_path = match &overrides.config_file {
            Some(p) => Some(p.clone()),
            None => env("XDG_CONFIG_HOME")
                .map(PathBuf::from)
                .or_else(|| user_home.as_ref().map(|h| h.join(".config")))
                .map(|d| d.join("rolloutd").join("config.toml"))
                .filter(|p| p.exists()),
        };
        let file = match &file_path {
            Some(p) => read_file(p)?,
            None => FileConfig::default(),
        };
        let expand = |s: &str| expand_tilde(s, user_home.as_deref());

        let homes = if !overrides.homes.is_empty() {
            overrides.homes.clone()
        } else if let Some(h) = env("CODEX_HOME") {
            vec![PathBuf::from(h)]
        } else if let Some(hs) = &file.codex_homes {
            hs.iter().map(|h| expand(h)).collect()
        } else {
            let home = user_home
                .as_ref()
                .ok_or(ConfigError::NoHome("HOME", "~/.codex"))?;
            vec![home.join(".codex")]
        };
        let index = match (&overrides.index, env("ROLLOUTD_INDEX"), &file.index) {
            (Some(p), _, _) => p.clone(),
            (None, Some(p), _) => PathBuf::from(p),
            (None, None, Some(p)) => expand(p),
            (None, None, None) => env("XDG_STATE_HOME")
                .map(PathBuf::from)
                .or_else(|| user_home.as_ref().map(|h| h.join(".local").join("state")))
                .ok_or(ConfigError::NoHome(
                    "HOME",
                    "~/.local/state/rolloutd/index.sqlite",
                ))?
                .join("rolloutd")
                .join("index.sqlite"),
        };
        let aliases = file
            .aliases
            .unwrap_or_default()
            .iter()
            .map(|[a, b]| (expand(a), expand(b)))
            .collect();
        let mut deduped: Vec<PathBuf> = Vec::new();
        for h in homes {
            if !deduped.contains(&h) {
                deduped.push(h);
            }
        }
        Ok(Config {
            homes: deduped,
            aliases,
            index,
            codex_state: file.codex_state.unwrap_or_default(),
        })
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })
}

fn expand_tilde(s: &str, home: Option<&Path>) -> PathBuf {
    match (s.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ if s == "~" => home.map(Path::to_owned).unwrap_or_else(|| PathBuf::from(s)),
        _ => PathBuf::from(s),
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

    #[test]
    fn defaults_then_env_then_flags() {
        let none = Overrides::default();
        let c = Config::load_with(&none, &env_of(&[("HOME", "/u")])).unwrap();
        assert_eq!(c.homes, vec![PathBuf::from("/u/.codex")]);
        assert_eq!(
            c.index,
            PathBuf::from("/u/.local/state/rolloutd/index.sqlite")
        );

        let env = env_of(&[
            ("HOME", "/u"),
            ("CODEX_HOME", "/c"),
            ("XDG_STATE_HOME", "/s"),
        ]);
        let c = Config::load_with(&none, &env).unwrap();
        assert_eq!(c.homes, vec![PathBuf::from("/c")]);
        assert_eq!(c.index, PathBuf::from("/s/rolloutd/index.sqlite"));

        let flags = Overrides {
            homes: vec![PathBuf::from("/f")],
            index: Some(PathBuf::from("/i.sqlite")),
            ..Overrides::default()
        };
        let c = Config::load_with(&flags, &env).unwrap();
        assert_eq!(c.homes, vec![PathBuf::from("/f")]);
        assert_eq!(c.index, PathBuf::from("/i.sqlite"));
    }

    #[test]
    fn file_values_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "codex_homes = [\"~/h\"]\naliases = [[\"/home/u\", \"/mnt/users/u\"]]\n",
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
