//! `path/resolve` and `path/same`.

use super::{Answer, At, Context};
use crate::protocol::request::{PathResolveParams, PathSameParams};

pub async fn resolve(cx: &Context, at: At, p: PathResolveParams) -> Answer {
    at.answer(cx, move |q| q.resolve_path(&p.path)).await
}

pub async fn same(cx: &Context, at: At, p: PathSameParams) -> Answer {
    at.answer(cx, move |q| q.same(&p.a, &p.b)).await
}
