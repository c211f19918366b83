//! Where Codex keeps its state database.
//!
//! The SQLite home is `$CODEX_SQLITE_HOME` when set and non-empty, else the `sqlite_home` key
//! of the Codex home's `config.toml`, else the Codex home itself. In it, the state database
//! is the `state_<N>.sqlite` with the highest `N` (Codex deletes older generations on start,
//! so more than one means an older and a newer binary share the home).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::CodexStateError;
use crate::identity::Home;

/// The state database found for a Codex home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Located {
    /// The `state_<N>.sqlite` file.
    pub db: PathBuf,
    /// Its `N`.
    pub generation: u32,
    /// The directory it was found in.
    pub sqlite_home: PathBuf,
    /// Where that directory came from: `CODEX_SQLITE_HOME`, `config.toml`, or `codexHome`.
    pub from: &'static str,
    /// Lower generations lying beside it, not used.
    pub older: Vec<PathBuf>,
}

/// Finds the state database of `home`, reading the environment through `env`.
pub fn locate(
    home: &Home,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Located, CodexStateError> {
    let (dir, from) = sqlite_home(home, env)?;
    let mut found = state_dbs(&dir)?;
    found.sort();
    let Some((generation, db)) = found.pop() else {
        return Err(CodexStateError::NotFound {
            dir,
            source_of_dir: from,
        });
    };
    Ok(Located {
        db,
        generation,
        sqlite_home: dir,
        from,
        older: found.into_iter().map(|(_, p)| p).collect(),
    })
}

/// The process environment, as [`locate`] wants it (empty values count as unset).
pub fn process_env(key: &str) -> Option<OsString> {
    std::env::var_os(key).filter(|v| !v.is_empty())
}

/// The SQLite home and where it came from.
pub fn sqlite_home(
    home: &Home,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<(PathBuf, &'static str), CodexStateError> {
    if let Some(dir) = env("CODEX_SQLITE_HOME") {
        return Ok((PathBuf::from(dir), "CODEX_SQLITE_HOME"));
    }
    let config = home.configured.join("config.toml");
    let text = match std::fs::read_to_string(&config) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(CodexStateError::io(&config, "reading Codex's config", e)),
    };
    if let Some(text) = text {
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| CodexStateError::CodexConfig {
                path: config.clone(),
                message: format!("not valid TOML: {}", e.message()),
            })?;
        match table.get("sqlite_home") {
            None => {}
            Some(toml::Value::String(s)) if !s.is_empty() => {
                let user_home = env("HOME").map(PathBuf::from);
                return Ok((
                    expand(s, &home.configured, user_home.as_deref()),
                    "config.toml",
                ));
            }
            Some(other) => {
                return Err(CodexStateError::CodexConfig {
                    path: config,
                    message: format!("sqlite_home must be a non-empty string, not {other}"),
                })
            }
        }
    }
    Ok((home.configured.clone(), "codexHome"))
}

/// `~/x` against the user's home; a relative path against the Codex home.
fn expand(s: &str, codex_home: &Path, user_home: Option<&Path>) -> PathBuf {
    if let (Some(rest), Some(h)) = (s.strip_prefix("~/"), user_home) {
        return h.join(rest);
    }
    let p = PathBuf::from(s);
    if p.is_absolute() {
        p
    } else {
        codex_home.join(p)
    }
}

/// Every `state_<N>.sqlite` in `dir` (not the `-wal`, `-shm` or `-journal` companions).
fn state_dbs(dir: &Path) -> Result<Vec<(u32, PathBuf)>, CodexStateError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CodexStateError::io(dir, "listing the SQLite home", e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| CodexStateError::io(dir, "listing the SQLite home", e))?;
        let name = entry.file_name();
        let Some(n) = name.to_str().and_then(generation_of) else {
            continue;
        };
        out.push((n, entry.path()));
    }
    Ok(out)
}

/// `N` of a `state_<N>.sqlite` file name.
pub fn generation_of(file_name: &str) -> Option<u32> {
    let digits = file_name.strip_prefix("state_")?.strip_suffix(".sqlite")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::write(p, b"").unwrap();
    }

    #[test]
    fn highest_generation_in_the_sqlite_home_from_env_config_or_home() {
        let dir = tempfile::tempdir().unwrap();
        let home_dir = dir.path().join("codex");
        std::fs::create_dir_all(&home_dir).unwrap();
        let home = Home::new(&home_dir, &[]);
        let none = |_: &str| None;
        assert!(matches!(
            locate(&home, &none),
            Err(CodexStateError::NotFound { .. })
        ));
        for name in [
            "state_4.sqlite",
            "state_5.sqlite",
            "state_5.sqlite-wal",
            "state_10.sqlite-shm",
            "state.sqlite",
            "state_x.sqlite",
        ] {
            touch(&home_dir.join(name));
        }
        let found = locate(&home, &none).unwrap();
        assert_eq!(found.db, home.configured.join("state_5.sqlite"));
        assert_eq!((found.generation, found.from), (5, "codexHome"));
        assert_eq!(found.older, vec![home.configured.join("state_4.sqlite")]);

        let other = dir.path().join("db");
        std::fs::create_dir_all(&other).unwrap();
        touch(&other.join("state_5.sqlite"));
        touch(&other.join("state_12.sqlite"));
        std::fs::write(home_dir.join("config.toml"), "sqlite_home = \"../db\"\n").unwrap();
        let found = locate(&home, &none).unwrap();
        assert_eq!(found.generation, 12);
        assert_eq!(found.from, "config.toml");
        assert_eq!(found.db, home.configured.join("../db/state_12.sqlite"));

        let env_dir = dir.path().join("env");
        std::fs::create_dir_all(&env_dir).unwrap();
        touch(&env_dir.join("state_7.sqlite"));
        let env_dir2 = env_dir.clone();
        let env = move |k: &str| (k == "CODEX_SQLITE_HOME").then(|| env_dir2.clone().into());
        let found = locate(&home, &env).unwrap();
        assert_eq!((found.generation, found.from), (7, "CODEX_SQLITE_HOME"));

        std::fs::write(home_dir.join("config.toml"), "sqlite_home = 3\n").unwrap();
        let e = locate(&home, &none).unwrap_err().to_string();
        assert!(
            e.contains("config.toml") && e.contains("sqlite_home"),
            "{e}"
        );
    }

    #[test]
    fn generation_names() {
        assert_eq!(generation_of("state_5.sqlite"), Some(5));
        assert_eq!(generation_of("state_5.sqlite-wal"), None);
        assert_eq!(generation_of("state_.sqlite"), None);
        assert_eq!(generation_of("state_+5.sqlite"), None);
        assert_eq!(generation_of("logs_2.sqlite"), None);
    }
}
