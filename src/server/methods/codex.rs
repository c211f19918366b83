//! `codex/audit` and `codex/repair {apply}`: Codex's own state database checked against the
//! files the agent keeps indexed (see [`crate::codex_state`]). Both run on a blocking
//! thread; the index is locked per row, so other requests keep being answered.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::params;
use crate::codex_state::{self, repair::DEFAULT_BUSY_BUDGET, CodexStateError};
use crate::live::Shared;
use crate::server::frame::{self, RpcError};

/// Application error code for a refusal or failure on Codex's state DB (`data.reason` says
/// which: `busy`, `unknownSchema`, `backfillRunning`, `noStateDb`, …).
pub const CODEX_STATE_ERROR: i64 = -32020;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RepairParams {
    #[serde(default)]
    apply: bool,
    /// How long to wait for a busy database, in ms (default 10 s).
    busy_timeout_ms: Option<u64>,
}

pub async fn audit(shared: &Arc<Shared>) -> Result<Value, RpcError> {
    let s = Arc::clone(shared);
    run(move || {
        let homes = s.homes();
        codex_state::run_audit(&homes, &s.index, s.limits).and_then(|(_, report)| to_value(&report))
    })
    .await
}

pub async fn repair(shared: &Arc<Shared>, p: Value) -> Result<Value, RpcError> {
    let p: RepairParams = params(p)?;
    let s = Arc::clone(shared);
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
        codex_state::run_repair(&homes, &s.index, s.limits, apply).and_then(|r| to_value(&r))
    })
    .await
}

fn to_value(v: &impl serde::Serialize) -> Result<Value, CodexStateError> {
    Ok(serde_json::to_value(v).unwrap_or(Value::Null))
}

async fn run(
    f: impl FnOnce() -> Result<Value, CodexStateError> + Send + 'static,
) -> Result<Value, RpcError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RpcError::new(frame::INDEX_ERROR, format!("codex state task failed: {e}")))?
        .map_err(|e| RpcError {
            code: CODEX_STATE_ERROR,
            message: e.to_string(),
            data: Some(json!({ "reason": e.reason() })),
        })
}
