//! `path/resolve` and `path/same`.

use super::{answer, query, Answer, Context};
use crate::protocol::request::{PathResolveParams, PathSameParams};

pub async fn resolve(cx: &Context, p: PathResolveParams) -> Answer {
    answer(&query(&cx.shared, move |q| q.resolve_path(&p.path)).await?)
}

pub async fn same(cx: &Context, p: PathSameParams) -> Answer {
    answer(&query(&cx.shared, move |q| q.same(&p.a, &p.b)).await?)
}
