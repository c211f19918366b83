//! `thread/list`: pages of threads, newest first, each row verified before it is shown.

use std::collections::HashSet;
use std::path::Path;

use serde::Serialize;

use super::{Queries, QueryError, ThreadRecord};
use crate::identity;
use crate::index::{ArchivedFilter, ListQuery};

/// Largest page served.
pub const MAX_LIMIT: usize = 1000;

/// What to list.
#[derive(Debug, Clone)]
pub struct ListParams {
    pub archived: ArchivedFilter,
    pub cwd: Option<String>,
    pub search: Option<String>,
    pub limit: usize,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// One page.
#[derive(Debug, Clone, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListPage {
    pub threads: Vec<ThreadRecord>,
    /// Pass back as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl Queries<'_> {
    pub fn list(&self, params: &ListParams) -> Result<ListPage, QueryError> {
        if params.limit == 0 {
            return Err(QueryError::BadParams(format!(
                "limit must be between 1 and {MAX_LIMIT} (larger values are served as {MAX_LIMIT})"
            )));
        }
        let limit = params.limit.min(MAX_LIMIT);
        // A cwd filter is a path too: never resolved against the agent's working directory.
        if let Some(c) = &params.cwd {
            super::check_request_path(Path::new(c))?;
        }
        let after = match &params.cursor {
            Some(c) => Some(parse_cursor(c).ok_or_else(|| QueryError::BadId {
                given: c.clone(),
                why: "not a cursor this server issued",
            })?),
            None => None,
        };
        // Codex stores cwd as it saw it; match that spelling and the realpath.
        let cwd = params
            .cwd
            .iter()
            .flat_map(|c| {
                let lexical = identity::normalize_lexically(Path::new(c));
                let real = identity::canonicalize(&lexical).ok();
                [
                    Some(c.clone()),
                    Some(lexical.to_string_lossy().into_owned()),
                    real.map(|r| r.to_string_lossy().into_owned()),
                ]
            })
            .flatten()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let rows = self.index.list(&ListQuery {
            archived: params.archived,
            cwd,
            search: params.search.clone(),
            limit: limit + 1,
            after,
        })?;
        let more = rows.len() > limit;
        // A degraded index (its writes fail: a full disk at start) may lack threads; a listing
        // from it would pass an incomplete answer off as complete. Readers share the writer's
        // state, so every page is refused, full or last.
        if let Some(why) = self.index.degraded() {
            return Err(QueryError::Degraded { why });
        }
        let mut next_cursor = None;
        let mut seen = HashSet::new();
        let mut threads = Vec::new();
        for row in rows.into_iter().take(limit) {
            next_cursor = Some(format!(
                "{}:{}",
                row.created_at_ms().unwrap_or(0),
                row.head.thread_id
            ));
            if !seen.insert(row.head.thread_id.clone()) {
                continue;
            }
            match self.thread_file(&row.head.thread_id) {
                Ok(file) => threads.push(ThreadRecord::new(&file, self.homes)),
                // Not left out as if gone: the page would pass for complete.
                Err(e @ QueryError::Unavailable { .. }) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(ListPage {
            threads,
            next_cursor: next_cursor.filter(|_| more),
        })
    }
}

fn parse_cursor(c: &str) -> Option<(i64, String)> {
    let (ms, id) = c.split_once(':')?;
    Some((ms.parse().ok()?, id.to_owned()))
}
