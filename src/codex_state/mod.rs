//! Codex's own state database (`state_<N>.sqlite`): find it, read it, audit its `threads`
//! rows against the files, and repair them. The only module that touches Codex's database.
//!
//! One job per file:
//! - [`locate`]: the SQLite home (`CODEX_SQLITE_HOME`, else `sqlite_home` in the home's
//!   `config.toml`, else the home) and the highest `state_<N>.sqlite` in it;
//! - [`db`]: opening (read-only without creating anything in the Codex home; read-write only
//!   to repair), the schema check, and reading the rows;
//! - [`audit`]: the typed findings, checked through the query layer;
//! - [`repair`]: the plan, and applying it (backup, one `BEGIN IMMEDIATE` transaction of
//!   compare-and-swap updates, bounded busy retry, `PRAGMA quick_check`);
//! - [`backup`]: SQLite's online backup API into a timestamped file beside rolloutd's index;
//! - [`restore`]: putting a backup back while nobody else has the database open;
//! - [`follow`]: `codex_state.auto_repair`, one compare-and-swap update for a file the agent
//!   saw archived or unarchived by another tool;
//! - [`spelling`]: which spelling of a home a rewritten `rollout_path` uses.
//!
//! Codex's rows are never inserted or deleted, and no other table is written.

pub mod audit;
pub mod backup;
pub mod db;
pub mod follow;
pub mod locate;
pub mod repair;
pub mod restore;
pub mod spelling;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use audit::{AuditReport, Finding, FindingEntry, Fix, RowState, Severity, Update};
pub use db::{Access, DbInfo, JournalMode};
pub use follow::{follow_move, Move, MoveOutcome};
pub use locate::{locate, Located};
pub use repair::{apply, plan, Applied, ChangeOutcome, ChangeStatus, RepairOptions, RepairReport};
pub use restore::{restore, RestoreReport, RowRevert};

/// The schema generations (`state_<N>.sqlite`) this build knows. Codex rebuilds rather than
/// migrates across generations, so another `N` may mean another shape.
pub const KNOWN_GENERATIONS: &[u32] = &[5];

/// Codex's backfill lease (`try_claim_backfill(900 s)`): a `running` backfill whose
/// `updated_at` is younger than this is alive, and repair must not run beside it.
pub const BACKFILL_LEASE: Duration = Duration::from_secs(900);

/// A failure touching Codex's state database, naming the file and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum CodexStateError {
    #[error("{}: {op}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{}: {op}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {op}: the database stayed busy for {} ms (another connection holds its write lock); nothing was changed", path.display(), waited.as_millis())]
    Busy {
        path: PathBuf,
        op: &'static str,
        waited: Duration,
    },
    #[error("{}: unknown schema: missing {}; refusing to use it", path.display(), missing.join(", "))]
    Schema { path: PathBuf, missing: Vec<String> },
    #[error("{}: schema generation {generation} is unknown (this rolloutd knows generation {}); refusing to use it", path.display(), known_generations())]
    UnknownGeneration { path: PathBuf, generation: u32 },
    #[error("{}: not a SQLite database ({detail})", path.display())]
    NotSqlite { path: PathBuf, detail: String },
    #[error("no state_<N>.sqlite in {} (the SQLite home, from {source_of_dir}); has Codex run with this home?", dir.display())]
    NotFound {
        dir: PathBuf,
        source_of_dir: &'static str,
    },
    #[error("{}: {}", path.display(), message)]
    CodexConfig { path: PathBuf, message: String },
    #[error("{}: Codex's backfill is running (lease renewed {age_secs} s ago, held for {} s); retry when it finishes", path.display(), BACKFILL_LEASE.as_secs())]
    BackfillRunning { path: PathBuf, age_secs: i64 },
    #[error("{}: in use: {detail}; quit Codex (every process using this home) and retry", path.display())]
    InUse { path: PathBuf, detail: String },
    #[error("{}: the database changed while it was being read without locks (immutable); retry", path.display())]
    Unstable { path: PathBuf },
    #[error("{}: {what}", path.display())]
    Refused { path: PathBuf, what: String },
    #[error("{}: restoring {} would revert {} changed since that backup by someone other than rolloutd (Codex, most likely): {}; add --force to restore anyway", path.display(), backup.display(), what_reverts(rows, tables), describe_reverts(rows, tables))]
    ChangedSinceBackup {
        path: PathBuf,
        backup: PathBuf,
        rows: Vec<restore::RowRevert>,
        /// Other tables whose content differs.
        tables: Vec<String>,
    },
    #[error("no Codex home is configured")]
    NoHome,
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
}

impl CodexStateError {
    /// The machine-readable reason, camelCase.
    pub fn reason(&self) -> &'static str {
        match self {
            CodexStateError::Sqlite { .. } => "sqliteError",
            CodexStateError::Io { .. } => "ioError",
            CodexStateError::Busy { .. } => "busy",
            CodexStateError::Schema { .. } => "unknownSchema",
            CodexStateError::UnknownGeneration { .. } => "unknownGeneration",
            CodexStateError::NotSqlite { .. } => "notSqlite",
            CodexStateError::NotFound { .. } => "noStateDb",
            CodexStateError::CodexConfig { .. } => "codexConfig",
            CodexStateError::BackfillRunning { .. } => "backfillRunning",
            CodexStateError::InUse { .. } => "inUse",
            CodexStateError::Unstable { .. } => "unstable",
            CodexStateError::Refused { .. } => "refused",
            CodexStateError::ChangedSinceBackup { .. } => "changedSinceBackup",
            CodexStateError::NoHome => "noHome",
            CodexStateError::Index(_) => "indexError",
        }
    }

    pub(crate) fn sqlite(path: &Path, op: &'static str, source: rusqlite::Error) -> Self {
        if is_busy(&source) {
            return CodexStateError::Busy {
                path: path.to_owned(),
                op,
                waited: Duration::ZERO,
            };
        }
        CodexStateError::Sqlite {
            path: path.to_owned(),
            op,
            source,
        }
    }

    pub(crate) fn io(path: &Path, op: &'static str, source: std::io::Error) -> Self {
        CodexStateError::Io {
            path: path.to_owned(),
            op,
            source,
        }
    }
}

/// The first few reverted rows, in words.
fn what_reverts(rows: &[restore::RowRevert], tables: &[String]) -> String {
    let plural =
        |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    match (rows.len(), tables.len()) {
        (r, 0) => plural(r, "row", "rows"),
        (0, t) => plural(t, "table", "tables"),
        (r, t) => format!(
            "{} and {}",
            plural(r, "row", "rows"),
            plural(t, "table", "tables")
        ),
    }
}

fn describe_reverts(rows: &[restore::RowRevert], tables: &[String]) -> String {
    const SHOWN: usize = 5;
    let state = |s: &Option<RowState>| match s {
        Some(s) => format!(
            "{} archived={} archived_at={}",
            s.rollout_path,
            s.archived,
            s.archived_at
                .map_or_else(|| "NULL".to_owned(), |t| t.to_string())
        ),
        None => "no row".to_owned(),
    };
    let mut parts: Vec<String> = rows
        .iter()
        .take(SHOWN)
        .map(|r| {
            if r.current.is_some() && r.current == r.backup {
                format!(
                    "{} ({} would be put back)",
                    r.thread_id,
                    r.other_columns.join(", ")
                )
            } else if r.other_columns.is_empty() {
                format!(
                    "{} now {} would become {}",
                    r.thread_id,
                    state(&r.current),
                    state(&r.backup)
                )
            } else {
                format!(
                    "{} now {} would become {} ({} too)",
                    r.thread_id,
                    state(&r.current),
                    state(&r.backup),
                    r.other_columns.join(", ")
                )
            }
        })
        .collect();
    if rows.len() > SHOWN {
        parts.push(format!("and {} more", rows.len() - SHOWN));
    }
    if !tables.is_empty() {
        parts.push(format!("the content of table {}", tables.join(", ")));
    }
    parts.join("; ")
}

fn known_generations() -> String {
    KNOWN_GENERATIONS
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// True for "another connection holds a lock" (busy or locked), as opposed to damage.
pub(crate) fn is_busy(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code().is_some_and(|c| {
        matches!(
            c,
            rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
        )
    })
}

/// Seconds since the epoch, now.
pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The home whose state database is used: the first configured one (Codex keeps one
/// database per home; pass `--codex-home` to pick another).
pub fn primary_home(
    homes: &crate::identity::Homes,
) -> Result<&crate::identity::Home, CodexStateError> {
    homes.homes.first().ok_or(CodexStateError::NoHome)
}

/// Finds, reads and audits the primary home's state database.
///
/// The index must be current (the CLI reconciles first; the agent's watcher keeps it live).
pub fn run_audit<A: crate::index::IndexAccess>(
    homes: &crate::identity::Homes,
    index: &A,
    limits: crate::rollout::HeadLimits,
) -> Result<(Located, AuditReport), CodexStateError> {
    let home = primary_home(homes)?;
    let located = locate(home, &locate::process_env)?;
    let snapshot = db::read_snapshot(&located)?;
    let report = audit::audit(&snapshot, home, homes, index, limits)?;
    Ok((located, report))
}

/// Audits, then prints (`apply` = `None`) or applies the proposed updates.
pub fn run_repair<A: crate::index::IndexAccess>(
    homes: &crate::identity::Homes,
    index: &A,
    limits: crate::rollout::HeadLimits,
    apply: Option<(Duration, PathBuf)>,
) -> Result<RepairReport, CodexStateError> {
    let (located, audit) = run_audit(homes, index, limits)?;
    let Some((busy_budget, backup_dir)) = apply else {
        return Ok(RepairReport::planned(&audit));
    };
    let opts = RepairOptions {
        busy_budget,
        backup_dir,
        forbidden: forbidden_dirs(homes, &located),
    };
    let applied = repair::apply(&located, &plan(&audit), &opts)?;
    Ok(RepairReport::from_applied(&audit, applied))
}

/// Restores `backup` over the primary home's state database.
pub fn run_restore(
    homes: &crate::identity::Homes,
    backup: &Path,
    backup_dir: &Path,
    force: bool,
) -> Result<RestoreReport, CodexStateError> {
    let home = primary_home(homes)?;
    let located = locate(home, &locate::process_env)?;
    restore::restore(
        &located,
        backup,
        backup_dir,
        &forbidden_dirs(homes, &located),
        force,
    )
}

/// Directories no backup may go into: every Codex home (each spelling) and the SQLite home.
fn forbidden_dirs(homes: &crate::identity::Homes, located: &Located) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = homes
        .homes
        .iter()
        .flat_map(|h| h.spellings.iter().cloned())
        .collect();
    out.push(located.sqlite_home.clone());
    out
}

/// Backups go beside rolloutd's index.
pub fn backup_dir(index_path: &Path) -> PathBuf {
    index_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."))
}
