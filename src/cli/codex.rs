//! `rolloutd codex audit | repair [--apply] | restore <BACKUP>`: Codex's own state database
//! checked against the files (see [`crate::codex_state`]).
//!
//! Exit status: `audit` 1 when an error-severity finding exists; `repair --apply` 1 when a
//! planned change was skipped (the row changed meanwhile) or `quick_check` failed; 2 for a
//! refusal or an error (unknown schema, running backfill, busy database, in use).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;

use super::{Answer, Failure};
use crate::codex_state::{
    self, AuditReport, ChangeStatus, CodexStateError, DbInfo, FindingEntry, Fix, RepairReport,
    RestoreReport, RowState, Severity,
};
use crate::crawl;
use crate::query::Queries;

#[derive(Debug, Subcommand)]
pub enum CodexCommand {
    /// Check every row of Codex's state DB against the rollout files (exit 1 on an error)
    Audit,
    /// Print the updates that bring the rows in line with the files; --apply makes them
    Repair {
        /// Back up the database, then make the changes (compare-and-swap, one transaction)
        #[arg(long)]
        apply: bool,
        /// How long to wait while Codex holds the database's write lock
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
        busy_timeout: Duration,
    },
    /// Put a backup made by `codex repair --apply` back (refused while the DB is in use, and
    /// without --force when rows changed since the backup other than by rolloutd)
    Restore {
        /// The backup file
        backup: PathBuf,
        /// Restore even though it reverts rows Codex changed after the backup
        #[arg(long)]
        force: bool,
    },
    /// Run `codex app-server` behind rolloutd: bad rollout paths refused, spellings fixed
    AppServer(crate::codex_app::AppServerArgs),
}

impl From<CodexStateError> for Failure {
    fn from(e: CodexStateError) -> Self {
        // The same typed reason the agent would send.
        let reason = crate::protocol::RpcError::from(&e).reason();
        Failure {
            reason: reason.map_or("codexStateError", |r| r.as_str()).into(),
            message: e.to_string(),
            negative: false,
        }
    }
}

/// Runs one `codex` command against the configured homes and index.
pub fn run(command: CodexCommand, q: &Queries<'_>) -> Result<Answer, Failure> {
    let backup_dir = codex_state::backup_dir(q.index.path());
    match command {
        CodexCommand::Audit => {
            reconcile(q)?;
            let (_, report) = codex_state::run_audit(q.homes, q.index, q.limits)?;
            let positive = !report.has_errors();
            Ok(Answer::new(&report, render_audit(&report), positive))
        }
        CodexCommand::Repair {
            apply,
            busy_timeout,
        } => {
            reconcile(q)?;
            let apply = apply.then_some((busy_timeout, backup_dir));
            let report = codex_state::run_repair(q.homes, q.index, q.limits, apply)?;
            let positive =
                !report.skipped_any() && report.quick_check.as_deref().is_none_or(|c| c == "ok");
            Ok(Answer::new(&report, render_repair(&report), positive))
        }
        CodexCommand::Restore { backup, force } => {
            let report = codex_state::run_restore(q.homes, &backup, &backup_dir, force)?;
            let positive = report.quick_check == "ok";
            Ok(Answer::new(&report, render_restore(&report), positive))
        }
        CodexCommand::AppServer(_) => Err(super::failure("usage", "app-server is run by main")),
    }
}

fn reconcile(q: &Queries<'_>) -> Result<(), Failure> {
    crawl::reconcile(q.homes, q.index, &q.limits, &())
        .map(|_| ())
        .map_err(|e| super::failure("indexError", e))
}

/// Information findings of one kind shown before the rest are counted.
const INFO_SHOWN: usize = 20;

fn render_db(s: &mut String, db: &DbInfo) {
    let _ = writeln!(
        s,
        "state DB   {} (generation {}, {} journal, read {})",
        db.path.display(),
        db.generation,
        db.journal_mode.as_str(),
        match db.access {
            codex_state::Access::ReadOnly => "with mode=ro",
            codex_state::Access::Immutable => "with immutable=1",
            codex_state::Access::ReadWrite => "and written",
        }
    );
    for n in &db.notes {
        let _ = writeln!(s, "note       {n}");
    }
}

pub fn render_audit(r: &AuditReport) -> String {
    let mut s = String::new();
    render_db(&mut s, &r.db);
    let m = &r.summary;
    let _ = writeln!(
        s,
        "{} rows, {} files: {} errors, {} warnings, {} info; {} fixable{}",
        m.rows,
        m.files,
        m.errors,
        m.warnings,
        m.infos,
        m.fixable,
        if m.fixable > 0 {
            " (see `rolloutd codex repair`)"
        } else {
            ""
        }
    );
    let mut shown: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &r.findings {
        let kind = f.finding.kind();
        let n = shown.entry(kind).or_default();
        *n += 1;
        if f.severity == Severity::Info && *n > INFO_SHOWN {
            continue;
        }
        s.push('\n');
        finding(&mut s, f);
    }
    for (kind, n) in shown {
        if n > INFO_SHOWN {
            let _ = writeln!(
                s,
                "\n… and {} more {kind} (--json lists all)",
                n - INFO_SHOWN
            );
        }
    }
    if r.findings.is_empty() {
        s.push_str("\nno findings: every row matches its file\n");
    }
    s
}

fn finding(s: &mut String, f: &FindingEntry) {
    let _ = writeln!(
        s,
        "{:<8} {:<23} {}",
        f.severity.as_str(),
        f.finding.kind(),
        f.finding.thread_id().unwrap_or("-")
    );
    if let Some(row) = f.finding.row() {
        let _ = writeln!(s, "         row       {}", state(&row.state));
    }
    let _ = writeln!(s, "         evidence  {}", f.evidence);
    match &f.fix {
        Fix::Update(u) => {
            let _ = writeln!(s, "         fix       {}", state(&u.after));
        }
        Fix::Leave { why } => {
            let _ = writeln!(s, "         fix       none: {why}");
        }
    }
}

fn state(r: &RowState) -> String {
    format!(
        "{} (archived={}, archived_at={})",
        r.rollout_path,
        r.archived,
        r.archived_at
            .map_or_else(|| "NULL".to_owned(), |t| t.to_string())
    )
}

pub fn render_repair(r: &RepairReport) -> String {
    let mut s = String::new();
    render_db(&mut s, &r.db);
    if let Some(b) = &r.backup {
        let _ = writeln!(s, "backup     {}", b.display());
    }
    if r.changes.is_empty() {
        let _ = writeln!(
            s,
            "nothing to change ({} errors and {} warnings in the audit, none with a fix)",
            r.audit.errors, r.audit.warnings
        );
    } else if !r.applied {
        let _ = writeln!(
            s,
            "{} change{} (dry run: nothing was written; add --apply to make them):",
            r.changes.len(),
            if r.changes.len() == 1 { "" } else { "s" }
        );
    }
    for c in &r.changes {
        let u = &c.update;
        let status = match c.status {
            ChangeStatus::Planned => "change",
            ChangeStatus::Applied => "applied",
            ChangeStatus::Skipped => "skipped",
        };
        let _ = writeln!(s, "{status:<8} {}", u.thread_id);
        let (b, a) = (&u.before, &u.after);
        if b.rollout_path != a.rollout_path {
            let _ = writeln!(
                s,
                "         rollout_path  {} → {}",
                b.rollout_path, a.rollout_path
            );
        }
        if b.archived != a.archived {
            let _ = writeln!(s, "         archived      {} → {}", b.archived, a.archived);
        }
        if b.archived_at != a.archived_at {
            let t = |v: Option<i64>| v.map_or_else(|| "NULL".to_owned(), |t| t.to_string());
            let _ = writeln!(
                s,
                "         archived_at   {} → {}",
                t(b.archived_at),
                t(a.archived_at)
            );
        }
        if let Some(reason) = &c.reason {
            let _ = writeln!(s, "         {reason}");
        }
    }
    if let Some(check) = &r.quick_check {
        let _ = writeln!(s, "quick_check {check}");
    }
    s
}

pub fn render_restore(r: &RestoreReport) -> String {
    let mut s = format!(
        "restored   {} from {} ({} rows, {} journal)\nprevious   content saved to {}\n",
        r.db.display(),
        r.restored_from.display(),
        r.rows,
        r.journal_mode.as_str(),
        r.previous_saved_to.display(),
    );
    for row in &r.reverted {
        let side = |v: &Option<RowState>| v.as_ref().map_or_else(|| "no row".to_owned(), state);
        let _ = writeln!(
            s,
            "reverted {} {}\n         was   {}\n         now   {}",
            row.thread_id,
            if row.by_rolloutd {
                "(undoes rolloutd's repair)"
            } else {
                "(changed after the backup, not by rolloutd; --force)"
            },
            side(&row.current),
            side(&row.backup)
        );
        if !row.other_columns.is_empty() {
            let _ = writeln!(s, "         and   {}", row.other_columns.join(", "));
        }
    }
    for table in &r.reverted_tables {
        let _ = writeln!(
            s,
            "reverted table {table} (changed after the backup, not by rolloutd; --force)"
        );
    }
    let _ = writeln!(s, "quick_check {}", r.quick_check);
    s
}
