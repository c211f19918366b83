//! `path/resolve` and `path/same`.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use super::{params, query};
use crate::live::Shared;
use crate::server::frame::RpcError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveParams {
    path: PathBuf,
}

pub async fn resolve(shared: &Arc<Shared>, p: Value) -> Result<Value, RpcError> {
    let p: ResolveParams = params(p)?;
    query(shared, move |q| q.resolve_path(&p.path)).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SameParams {
    a: PathBuf,
    b: PathBuf,
}

pub async fn same(shared: &Arc<Shared>, p: Value) -> Result<Value, RpcError> {
    let p: SameParams = params(p)?;
    query(shared, move |q| q.same(&p.a, &p.b)).await
}
