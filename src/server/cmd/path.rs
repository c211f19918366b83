//! `path/resolve` and `path/same`.

use super::{answer, query_at, Answer, At, Context};
use crate::protocol::request::{PathResolveParams, PathSameParams};

pub async fn resolve(cx: &Context, at: At, p: PathResolveParams) -> Answer {
    answer(
        &query_at(&cx.shared, at.method, at.exposure, move |q| {
            q.resolve_path(&p.path)
        })
        .await?,
    )
}

pub async fn same(cx: &Context, at: At, p: PathSameParams) -> Answer {
    answer(
        &query_at(&cx.shared, at.method, at.exposure, move |q| {
            q.same(&p.a, &p.b)
        })
        .await?,
    )
}
