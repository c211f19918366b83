//! `codex_state.auto_repair`: when the agent sees a rollout archived or unarchived by
//! another tool (a rename between `sessions/` and `archived_sessions/`), it points the
//! thread's row at the new place with one compare-and-swap update, as Codex's own
//! `mark_archived` / `mark_unarchived` would have.
//!
//! Only a row still naming the old file (in any spelling of the home) is changed; a row
//! already naming the new file (Codex did the move itself) or something else is left
//! alone. `archived_at` becomes now on archive (as `mark_archived` sets it) and `NULL` on
//! unarchive. The database is opened read-write only if it exists, and a busy database is
//! given up on after a short wait: the next audit finds what was not done.

use std::path::PathBuf;
use std::time::Duration;

use rusqlite::{params, TransactionBehavior};
use serde::Serialize;

use super::db::{self, RowState};
use super::{locate, spelling, CodexStateError};
use crate::identity::Homes;

/// How long a followed move waits for a busy database.
pub const FOLLOW_BUSY: Duration = Duration::from_secs(2);

/// A rollout the agent saw move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub thread_id: String,
    /// Canonical path before (gone).
    pub from: PathBuf,
    /// Canonical path now.
    pub to: PathBuf,
    /// True when `to` is under `archived_sessions/`.
    pub archived: bool,
}

/// What following a move did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "outcome",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum MoveOutcome {
    Updated {
        before: RowState,
        after: RowState,
    },
    /// The row already names the new file.
    AlreadyCurrent,
    /// No row for the thread (Codex adds one when it needs it).
    NoRow,
    /// The row names neither the old nor the new file: not ours to change.
    RowElsewhere {
        rollout_path: String,
    },
    /// The file is in no configured home, or that home has no state DB.
    NoStateDb,
}

/// Applies the update for one move, reading the environment for `CODEX_SQLITE_HOME`.
pub fn follow_move(
    homes: &Homes,
    mv: &Move,
    busy: Duration,
) -> Result<MoveOutcome, CodexStateError> {
    let Some((home, _)) = homes.locate(&mv.to) else {
        return Ok(MoveOutcome::NoStateDb);
    };
    let located = match locate::locate(home, &locate::process_env) {
        Ok(l) => l,
        Err(CodexStateError::NotFound { .. }) => return Ok(MoveOutcome::NoStateDb),
        Err(e) => return Err(e),
    };
    db::check_generation(&located)?;
    let path = &located.db;
    let mut conn = db::open_write(path, busy)?;
    db::check_schema(&conn, path)?;
    let sql = |e| CodexStateError::sqlite(path, "following a move", e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql)?;
    let Some(before) = db::read_row(&tx, &mv.thread_id).map_err(sql)? else {
        return Ok(MoveOutcome::NoRow);
    };
    let archived = i64::from(mv.archived);
    if spelling::names(home, &before.rollout_path, &mv.to) && before.archived == archived {
        return Ok(MoveOutcome::AlreadyCurrent);
    }
    if !spelling::names(home, &before.rollout_path, &mv.from)
        && !spelling::names(home, &before.rollout_path, &mv.to)
    {
        return Ok(MoveOutcome::RowElsewhere {
            rollout_path: before.rollout_path,
        });
    }
    let after = RowState {
        rollout_path: spelling::respell(home, &before.rollout_path, &mv.to)
            .to_string_lossy()
            .into_owned(),
        archived,
        archived_at: mv.archived.then(super::now_secs),
    };
    let n = tx
        .execute(
            "UPDATE threads SET rollout_path = ?1, archived = ?2, archived_at = ?3 \
             WHERE id = ?4 AND rollout_path = ?5 AND archived = ?6 AND archived_at IS ?7",
            params![
                after.rollout_path,
                after.archived,
                after.archived_at,
                mv.thread_id,
                before.rollout_path,
                before.archived,
                before.archived_at
            ],
        )
        .map_err(sql)?;
    tx.commit().map_err(sql)?;
    Ok(if n > 0 {
        MoveOutcome::Updated { before, after }
    } else {
        MoveOutcome::AlreadyCurrent
    })
}

/// Follows `moves` on a background thread (bounded: each waits at most [`FOLLOW_BUSY`]),
/// logging what happened; the agent's watcher is never held up by Codex's database.
pub fn follow_in_background(homes: Homes, moves: Vec<Move>) {
    if moves.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("codex-state-follow".into())
        .spawn(move || {
            for mv in &moves {
                match follow_move(&homes, mv, FOLLOW_BUSY) {
                    Ok(MoveOutcome::Updated { before, after }) => tracing::info!(
                        thread = %mv.thread_id,
                        from = %before.rollout_path,
                        to = %after.rollout_path,
                        "codex state: row follows the moved rollout"
                    ),
                    Ok(outcome) => {
                        tracing::debug!(thread = %mv.thread_id, ?outcome, "codex state: nothing to follow")
                    }
                    Err(e) => tracing::warn!(thread = %mv.thread_id, error = %e, "codex state: could not follow a move"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "codex state: could not start the follow thread");
    }
}
