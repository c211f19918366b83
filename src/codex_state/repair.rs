//! Repair: the audit's proposed updates, printed (dry run) or applied.
//!
//! Applying refuses an unknown generation or schema and a running backfill (a fresh lease),
//! backs the database up first ([`super::backup`]), then runs one `BEGIN IMMEDIATE`
//! transaction of compare-and-swap updates:
//!
//! ```sql
//! UPDATE threads SET rollout_path = ?, archived = ?, archived_at = ?
//!  WHERE id = ? AND rollout_path = ? AND archived = ? AND archived_at IS ?
//! ```
//!
//! so a row Codex changed after the audit is left alone and reported as skipped. A busy
//! database is retried with bounded backoff within a time budget; when the budget runs out
//! nothing has been changed (the transaction never started) and the backup is removed. The
//! run ends with `PRAGMA quick_check`. Rows are never inserted or deleted and no other table
//! is written.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, TransactionBehavior};
use serde::Serialize;

use super::audit::{AuditReport, AuditSummary, Update};
use super::db::{self, DbInfo, RowState};
use super::locate::Located;
use super::{is_busy, CodexStateError};

/// Longest single wait inside SQLite's busy handler before rolloutd backs off and retries.
const SLICE: Duration = Duration::from_millis(500);
/// Most attempts at the transaction.
const MAX_ATTEMPTS: u32 = 64;

/// How to apply.
#[derive(Debug, Clone)]
pub struct RepairOptions {
    /// Total time to wait for a busy database.
    pub busy_budget: Duration,
    /// Where backups go (the directory of rolloutd's index).
    pub backup_dir: PathBuf,
    /// Directories no backup may be written into (the Codex home, the SQLite home).
    pub forbidden: Vec<PathBuf>,
}

/// Default busy budget: twice Codex's own 5 s busy timeout.
pub const DEFAULT_BUSY_BUDGET: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum ChangeStatus {
    /// Dry run: would be made.
    Planned,
    Applied,
    /// The row changed after the audit (or is gone): left alone.
    Skipped,
}

/// One update and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChangeOutcome {
    #[serde(flatten)]
    pub update: Update,
    pub status: ChangeStatus,
    /// For a skipped change: the row as it is now (`None` when it was deleted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What `apply` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Applied {
    /// The backup made first; `None` when there was nothing to change.
    pub backup: Option<PathBuf>,
    pub changes: Vec<ChangeOutcome>,
    /// `PRAGMA quick_check` after the transaction (`"ok"`).
    pub quick_check: Option<String>,
    /// Transaction attempts (1 unless the database was busy).
    pub attempts: u32,
    pub waited_ms: u64,
}

/// A repair run: the audit summary, and the changes planned or made.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepairReport {
    pub codex_home: PathBuf,
    pub db: DbInfo,
    pub audit: AuditSummary,
    pub applied: bool,
    pub backup: Option<PathBuf>,
    pub changes: Vec<ChangeOutcome>,
    pub quick_check: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

impl RepairReport {
    /// True when some planned change was not made.
    pub fn skipped_any(&self) -> bool {
        self.changes
            .iter()
            .any(|c| c.status == ChangeStatus::Skipped)
    }

    /// The dry-run report of an audit.
    pub fn planned(audit: &AuditReport) -> RepairReport {
        RepairReport {
            codex_home: audit.codex_home.clone(),
            db: audit.db.clone(),
            audit: audit.summary,
            applied: false,
            backup: None,
            changes: plan(audit)
                .into_iter()
                .map(|update| ChangeOutcome {
                    update,
                    status: ChangeStatus::Planned,
                    reason: None,
                })
                .collect(),
            quick_check: None,
            attempts: None,
        }
    }

    /// The report of an applied repair.
    pub fn from_applied(audit: &AuditReport, applied: Applied) -> RepairReport {
        RepairReport {
            codex_home: audit.codex_home.clone(),
            db: DbInfo {
                access: db::Access::ReadWrite,
                ..audit.db.clone()
            },
            audit: audit.summary,
            applied: true,
            backup: applied.backup,
            changes: applied.changes,
            quick_check: applied.quick_check,
            attempts: Some(applied.attempts),
        }
    }
}

/// The updates an audit proposes, one per row.
pub fn plan(audit: &AuditReport) -> Vec<Update> {
    audit.updates()
}

/// Applies `updates` (computed by an earlier audit) to the database at `located`.
pub fn apply(
    located: &Located,
    updates: &[Update],
    opts: &RepairOptions,
) -> Result<Applied, CodexStateError> {
    let path = &located.db;
    db::check_generation(located)?;
    let started = Instant::now();
    let deadline = started + opts.busy_budget;
    let mut conn = db::open_write(path, opts.busy_budget.min(SLICE))?;
    db::check_schema(&conn, path)?;
    let backfill = db::read_backfill(&conn)
        .map_err(|e| CodexStateError::sqlite(path, "reading backfill_state", e))?;
    if let Some(b) = backfill.filter(|b| b.lease_fresh(super::now_secs())) {
        return Err(CodexStateError::BackfillRunning {
            path: path.clone(),
            age_secs: super::now_secs().saturating_sub(b.updated_at.unwrap_or(0)),
        });
    }
    if updates.is_empty() {
        return Ok(Applied {
            backup: None,
            changes: Vec::new(),
            quick_check: None,
            attempts: 0,
            waited_ms: 0,
        });
    }
    let backup = super::backup::create(&conn, path, &opts.backup_dir, &opts.forbidden, deadline)?;
    let (changes, attempts) = match transact(&mut conn, located, updates, started, deadline) {
        Ok(done) => done,
        Err(e) => {
            // Nothing was committed: the backup is not needed.
            let _ = std::fs::remove_file(&backup);
            return Err(e);
        }
    };
    let made: Vec<super::restore::ManifestChange> = changes
        .iter()
        .filter(|c| c.status == ChangeStatus::Applied)
        .map(|c| super::restore::ManifestChange {
            thread_id: c.update.thread_id.clone(),
            before: Some(c.update.before.clone()),
            after: Some(c.update.after.clone()),
        })
        .collect();
    super::restore::write_manifest(&backup, &made);
    let quick_check = db::quick_check(&conn, path)?;
    Ok(Applied {
        backup: Some(backup),
        changes,
        quick_check: Some(quick_check),
        attempts,
        waited_ms: started.elapsed().as_millis() as u64,
    })
}

/// The transaction, retried while busy: bounded by `deadline` and [`MAX_ATTEMPTS`].
fn transact(
    conn: &mut Connection,
    located: &Located,
    updates: &[Update],
    started: Instant,
    deadline: Instant,
) -> Result<(Vec<ChangeOutcome>, u32), CodexStateError> {
    let path = &located.db;
    let mut backoff = Duration::from_millis(20);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        conn.busy_timeout(remaining.min(SLICE))
            .map_err(|e| CodexStateError::sqlite(path, "setting the busy timeout", e))?;
        match try_transact(conn, updates) {
            Ok(changes) => return Ok((changes, attempt)),
            Err(e) if is_busy(&e) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() || attempt >= MAX_ATTEMPTS {
                    return Err(CodexStateError::Busy {
                        path: path.clone(),
                        op: "applying the updates (BEGIN IMMEDIATE)",
                        waited: started.elapsed(),
                    });
                }
                std::thread::sleep(backoff.min(remaining));
                backoff = (backoff * 2).min(Duration::from_millis(400));
            }
            Err(e) => return Err(CodexStateError::sqlite(path, "applying the updates", e)),
        }
    }
}

fn try_transact(conn: &mut Connection, updates: &[Update]) -> rusqlite::Result<Vec<ChangeOutcome>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out = Vec::with_capacity(updates.len());
    {
        let mut stmt = tx.prepare(
            "UPDATE threads SET rollout_path = ?1, archived = ?2, archived_at = ?3 \
             WHERE id = ?4 AND rollout_path = ?5 AND archived = ?6 AND archived_at IS ?7",
        )?;
        for u in updates {
            let n = stmt.execute(params![
                u.after.rollout_path,
                u.after.archived,
                u.after.archived_at,
                u.thread_id,
                u.before.rollout_path,
                u.before.archived,
                u.before.archived_at,
            ])?;
            let (status, reason) = if n > 0 {
                (ChangeStatus::Applied, None)
            } else {
                let reason = match db::read_row(&tx, &u.thread_id)? {
                    Some(now) => changed(&now),
                    None => "the row was deleted after the audit".to_owned(),
                };
                (ChangeStatus::Skipped, Some(reason))
            };
            out.push(ChangeOutcome {
                update: u.clone(),
                status,
                reason,
            });
        }
    }
    tx.commit()?;
    Ok(out)
}

fn changed(now: &RowState) -> String {
    format!(
        "the row changed after the audit (now rollout_path={}, archived={}, archived_at={}); left alone",
        now.rollout_path,
        now.archived,
        now.archived_at
            .map_or_else(|| "NULL".to_owned(), |t| t.to_string())
    )
}
