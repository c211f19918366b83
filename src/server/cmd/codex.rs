//! `codex/audit` and `codex/repair {apply}`: Codex's own state database checked against the
//! files the agent keeps indexed (see [`crate::codex_state`]). Both run on a blocking
//! thread; the index is locked per row, so other requests keep being answered.

use std::time::Duration;

use super::{answer, Answer, Context};
use crate::codex_state::{self, repair::DEFAULT_BUSY_BUDGET, CodexStateError};
use crate::protocol::error::INDEX_ERROR;
use crate::protocol::request::CodexRepairParams;
use crate::protocol::RpcError;

pub async fn audit(cx: &Context) -> Answer {
    let s = std::sync::Arc::clone(&cx.shared);
    run(move || {
        let homes = s.homes();
        codex_state::run_audit(&homes, &s.index, s.limits).map(|(_, report)| answer(&report))
    })
    .await
}

pub async fn repair(cx: &Context, p: CodexRepairParams) -> Answer {
    let s = std::sync::Arc::clone(&cx.shared);
    run(move || {
        let homes = s.homes();
        let backup_dir = codex_state::backup_dir(
            s.index
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .path(),
        );
        let budget = p
            .busy_timeout_ms
            .map_or(DEFAULT_BUSY_BUDGET, Duration::from_millis);
        let apply = p.apply.then_some((budget, backup_dir));
        codex_state::run_repair(&homes, &s.index, s.limits, apply).map(|r| answer(&r))
    })
    .await
}

async fn run(f: impl FnOnce() -> Result<Answer, CodexStateError> + Send + 'static) -> Answer {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RpcError::new(INDEX_ERROR, format!("codex state task failed: {e}")))?
        .map_err(|e| RpcError::from(&e))?
}
