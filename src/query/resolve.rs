//! `thread/resolve` and `path/resolve`: from an id (or unique prefix) or a path to a verified
//! thread record.

use std::path::{Path, PathBuf};

use super::{PathReason, Queries, QueryError, ThreadRecord, Walks};
use crate::crawl::{self, Candidate};
use crate::identity::{self, FileKind, Stamp};
use crate::index::IndexedFile;
use crate::rollout::{name, BadFile, ProblemKind};

/// Shortest id prefix accepted: 8 hex digits single out one thread among millions.
pub const MIN_PREFIX: usize = 8;

/// Ids read to count an ambiguous prefix; an 8-digit prefix matches far fewer in practice.
const PREFIX_COUNT_MAX: usize = 100_000;

impl Queries<'_> {
    /// Resolves a full thread id or a unique prefix of at least [`MIN_PREFIX`] characters.
    pub fn resolve_thread(&self, given: &str) -> Result<ThreadRecord, QueryError> {
        let file = self.thread_file(given)?;
        Ok(ThreadRecord::from_file(file, self.homes))
    }

    /// Where the index has the files of a thread given by id or prefix, from the index alone
    /// (nothing is stat'ed): what answering about it will look at first. `None` when the
    /// answer needs a walk of the homes (nothing indexed matches); empty when it needs no
    /// file at all (a bad id, an ambiguous prefix).
    pub fn indexed_paths(&self, given: &str) -> Option<Vec<PathBuf>> {
        let Ok(id) = normalize_id(given) else {
            return Some(Vec::new());
        };
        let thread = if uuid::Uuid::try_parse(&id).is_ok() {
            id
        } else {
            let mut matches = self.index.thread_ids_with_prefix(&id, 2).ok()?;
            match matches.len() {
                0 => return None,
                1 => matches.remove(0),
                _ => return Some(Vec::new()),
            }
        };
        let rows = self.index.files_for_thread(&thread).ok()?;
        (!rows.is_empty()).then(|| rows.into_iter().map(|r| r.path).collect())
    }

    /// The verified, preferred file of a thread given by id or prefix.
    pub(super) fn thread_file(&self, given: &str) -> Result<IndexedFile, QueryError> {
        let id = normalize_id(given)?;
        if uuid::Uuid::try_parse(&id).is_ok() {
            return self.verified_thread(&id);
        }
        let mut matches = self.index.thread_ids_with_prefix(&id, PREFIX_COUNT_MAX)?;
        if matches.is_empty() {
            // Not indexed (yet): look for names carrying the prefix, as Codex would.
            let mut found: Vec<String> = self
                .walk_for(&id)?
                .into_iter()
                .map(|f| f.head.thread_id)
                .filter(|t| t.starts_with(&id))
                .collect();
            found.sort();
            found.dedup();
            matches = found;
        }
        match matches.len() {
            0 => Err(QueryError::NotFound { thread_id: id }),
            1 => self.verified_thread(&matches[0]),
            count => {
                matches.truncate(super::AMBIGUOUS_SHOWN);
                Err(QueryError::Ambiguous {
                    prefix: id,
                    matches,
                    count,
                })
            }
        }
    }

    /// The preferred file of `thread_id`, each row checked against its file; rows that went
    /// stale are repaired, and a miss falls back to a walk of the homes.
    ///
    /// Rows whose file is gone are dropped last, after the walk: a file another tool moved
    /// (an archive) is then indexed at its new place while the old row still stands, and
    /// the index sees one move, never a removal and a new thread.
    fn verified_thread(&self, thread_id: &str) -> Result<IndexedFile, QueryError> {
        let rows = self.index.files_for_thread(thread_id)?;
        let had_rows = !rows.is_empty();
        let mut gone = Vec::new();
        let mut unavailable = None;
        let mut found = self.first_verified(rows, thread_id, &mut gone, &mut unavailable)?;
        if let (None, Some(e)) = (&found, unavailable.take()) {
            // Its file is where the filesystem cannot be read: said so, and the row kept.
            return Err(e);
        }
        if found.is_none() {
            found = self
                .walk_for(thread_id)?
                .into_iter()
                .find(|f| f.head.thread_id == thread_id);
        }
        if found.is_none() && had_rows {
            // The thread's file was renamed to a name without its id (or swapped with
            // another thread's): only a full reconcile can find it by content. It also
            // drops the rows of files that are gone, after indexing where they went.
            // A degraded index cannot take the reconcile's writes; the walk above already
            // looked on disk, so the answer stands.
            if let Err(e) = crawl::reconcile(self.homes, self.index, &self.limits, &()) {
                if !crate::index::is_resource_failure(&e) {
                    return Err(e.into());
                }
            }
            let rows = self.index.files_for_thread(thread_id)?;
            found = self.first_verified(rows, thread_id, &mut gone, &mut unavailable)?;
        }
        if !gone.is_empty() {
            self.index
                .require_writer("dropping rows of files that are gone")?;
            let batch = crate::index::Batch {
                removed: gone,
                ..Default::default()
            };
            let dropped = crawl::write_seen(
                self.homes,
                self.index,
                &self.limits,
                "dropping rows of files that are gone",
                batch,
            );
            if let Err(e) = dropped {
                if !crate::index::is_resource_failure(&e) {
                    return Err(e.into());
                }
            }
        }
        if let Some(file) = found {
            return Ok(file);
        }
        Err(QueryError::NotFound {
            thread_id: thread_id.to_owned(),
        })
    }

    fn first_verified(
        &self,
        mut rows: Vec<IndexedFile>,
        thread_id: &str,
        gone: &mut Vec<PathBuf>,
        unavailable: &mut Option<QueryError>,
    ) -> Result<Option<IndexedFile>, QueryError> {
        rows.sort_by(super::preference);
        for row in rows {
            if let Some(file) = self.verify(row, gone, unavailable)? {
                if file.head.thread_id == thread_id {
                    return Ok(Some(file));
                }
            }
        }
        Ok(None)
    }

    /// Checks a row against its file: unchanged stamp → the row; changed → re-read and
    /// rewritten; bad → recorded, `None`; gone → its path added to `gone` for the caller
    /// to drop, `None`; on a filesystem that fails (not absence: a dead FUSE mount's
    /// `ENOTCONN`, `EIO`) → kept as it is, the error in `unavailable` (the first), `None`.
    fn verify(
        &self,
        row: IndexedFile,
        gone: &mut Vec<PathBuf>,
        unavailable: &mut Option<QueryError>,
    ) -> Result<Option<IndexedFile>, QueryError> {
        match Stamp::of(&row.path) {
            Ok(now) if now.unchanged(&row.stamp) => return Ok(Some(row)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                gone.push(row.path);
                return Ok(None);
            }
            Err(e) if identity::is_filesystem_failure(&e) => {
                unavailable.get_or_insert(QueryError::Unavailable {
                    path: self.homes.display(&row.path),
                    error: e.to_string(),
                });
                return Ok(None);
            }
            _ => {}
        }
        let candidate = Candidate {
            path: row.path.clone(),
            home: row.home.clone(),
            archived: row.archived,
        };
        Ok(crawl::refresh(self.homes, self.index, &candidate, &self.limits)?.ok())
    }

    /// Codex's fallback: walk the homes for rollout names containing `needle`, read and
    /// index what is found, preferred files first. Where a walk may run, and whether the
    /// writer is needed (only when it finds something), is [`Walks`]'s to say.
    fn walk_for(&self, needle: &str) -> Result<Vec<IndexedFile>, QueryError> {
        let discover = || {
            let roots = crawl::allowed_roots(self.homes);
            // Ids are compared case-insensitively, so names are too (`needle` is lower case).
            let wanted = |n: &str| n.to_ascii_lowercase().contains(needle);
            let homes = self.homes.homes.iter();
            homes
                .flat_map(|home| crawl::discover(home, &roots, &wanted).0)
                .collect::<Vec<_>>()
        };
        let candidates = match self.walks {
            Walks::Elsewhere(asked) => {
                asked.set(true);
                self.index.require_writer("walking the homes")?;
                discover()
            }
            Walks::Here => discover(),
            Walks::Sharing(walked) => walked.get_or(needle, discover),
        };
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        self.index
            .require_writer("indexing what a walk of the homes found")?;
        let mut found = Vec::new();
        for c in candidates {
            if let Ok(file) = crawl::refresh(self.homes, self.index, &c, &self.limits)? {
                found.push(file);
            }
        }
        // The walk's order is the directory's; the answer must not depend on it.
        found.sort_by(super::preference);
        Ok(found)
    }

    /// Resolves a path (any spelling) to the thread whose rollout it is.
    pub fn resolve_path(&self, path: &Path) -> Result<ThreadRecord, QueryError> {
        let file = self.path_file(path)?;
        Ok(ThreadRecord::from_file(file, self.homes))
    }

    /// Classifies `path` and returns its verified rollout.
    pub(super) fn path_file(&self, path: &Path) -> Result<IndexedFile, QueryError> {
        self.path_file_noting(path).map(|(file, _)| file)
    }

    /// As [`Queries::path_file`], also saying when `path` does not exist and its sibling
    /// spelling (`….jsonl` ↔ `….jsonl.zst`) was taken instead, as Codex does.
    ///
    /// Never opens a file outside the configured homes: the path is normalized (`..`
    /// folded, symlinks resolved) and checked against the homes' realpaths first. A path
    /// under another spelling of a home (a configured alias, a bind mount or another mount
    /// of the same filesystem, a symlink) is looked at under the home's own spelling.
    pub(super) fn path_file_noting(
        &self,
        path: &Path,
    ) -> Result<(IndexedFile, Option<PathBuf>), QueryError> {
        super::check_request_path(path)?;
        let given = identity::normalize_lexically(path);
        let roots = crawl::allowed_roots(self.homes);
        let (existing, sibling) = match self.existing_spelling(&given, &roots) {
            Some(p) => (p, None),
            None => {
                let other = name::sibling(&given)
                    .and_then(|s| self.existing_spelling(&s, &roots).map(|p| (p, s)));
                match other {
                    Some((p, s)) => (p, Some(s)),
                    None => return Err(self.missing(&given)),
                }
            }
        };
        let canonical = identity::canonicalize(&existing).map_err(|e| path_error(&given, &e))?;
        if !roots.iter().any(|r| canonical.starts_with(r)) {
            return Err(QueryError::path(
                &given,
                PathReason::OutsideHome,
                format!(
                    "resolves to {}, outside every configured Codex home",
                    canonical.display()
                ),
            ));
        }
        let stamp = Stamp::of(&canonical).map_err(|e| path_error(&given, &e))?;
        match stamp.kind {
            FileKind::File => {}
            FileKind::Directory => {
                return Err(QueryError::path(
                    &given,
                    PathReason::Directory,
                    "is a directory, not a rollout file",
                ))
            }
            kind => {
                return Err(QueryError::path(
                    &given,
                    PathReason::NotRegularFile,
                    format!("is a {kind:?} (not a regular file)").to_lowercase(),
                ))
            }
        }
        let Some(candidate) = crawl::candidate_for(self.homes, &canonical) else {
            return Err(QueryError::path(
                &given,
                PathReason::NotRollout,
                "is not under sessions/ or archived_sessions/ of a Codex home",
            ));
        };
        if let Some(row) = self.index.file_at(&canonical)? {
            if row.stamp.unchanged(&stamp) {
                return Ok((row, sibling));
            }
        }
        match crawl::refresh(self.homes, self.index, &candidate, &self.limits)? {
            Ok(file) => Ok((file, sibling)),
            Err(bad) => Err(bad_file_error(&given, bad)),
        }
    }

    /// The spelling of `given` to look at, `None` when it exists under none.
    ///
    /// `given` itself when it exists inside a home. Otherwise the same file under a home's
    /// spelling (an alias, a bind mount of the home: same device and inode), so such a path
    /// is inside the home whether or not it exists; else `given` as it is (which the caller
    /// then finds outside every home).
    pub(super) fn existing_spelling(&self, given: &Path, roots: &[PathBuf]) -> Option<PathBuf> {
        let inside = |p: &Path| {
            identity::canonicalize(p).is_ok_and(|c| roots.iter().any(|r| c.starts_with(r)))
        };
        let mut alternatives = self.homes.lexical_alternatives(given);
        match Stamp::of(given) {
            Ok(stamp) => {
                if inside(given) {
                    return Some(given.to_owned());
                }
                alternatives.extend(self.homes.through_mount(given));
                let same_file = alternatives
                    .into_iter()
                    .skip(1)
                    .find(|p| Stamp::of(p).is_ok_and(|s| s.id == stamp.id) && inside(p));
                Some(same_file.unwrap_or_else(|| given.to_owned()))
            }
            // A dangling symlink or a path that cannot be statted: reported as it is.
            Err(_) if std::fs::symlink_metadata(given).is_ok() => Some(given.to_owned()),
            // Its filesystem fails (not absence): looked at as it is, so the answer says so.
            Err(e) if identity::is_filesystem_failure(&e) => Some(given.to_owned()),
            Err(_) => {
                alternatives.extend(self.homes.through_mount(given));
                alternatives
                    .into_iter()
                    .find(|p| std::fs::symlink_metadata(p).is_ok())
            }
        }
    }

    /// The error for a path that exists under no spelling. `wouldBe` names the thread's
    /// file when the name carries the id of a thread whose file is elsewhere, and nothing
    /// otherwise (never a file that does not exist). Paths are shown as configured.
    fn missing(&self, given: &Path) -> QueryError {
        let mut would_be = None;
        let mut detail = "no such file".to_owned();
        let mut reason = PathReason::Missing;
        let id = given
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(name::parse)
            .map(|n| n.thread_id.to_string());
        if let Some(id) = id {
            match self.verified_thread(&id) {
                Ok(file) => {
                    let shown = self.homes.display(&file.path);
                    detail = format!("no such file; thread {id} is now at {}", shown.display());
                    would_be = Some(shown);
                }
                Err(QueryError::NotFound { .. }) => match self.index.removed_thread(&id) {
                    Ok(Some((last, _))) => {
                        detail = format!(
                            "no such file; thread {id} had a rollout at {} that was removed",
                            self.homes.display(&last).display()
                        );
                    }
                    // A thread Codex has named but not written yet.
                    Ok(None)
                        if self.homes.locate(given).is_some()
                            || self.homes.through_mount(given).is_some() =>
                    {
                        reason = PathReason::NotMaterialized;
                        detail = format!(
                            "thread {id} has no rollout on disk yet ({}); thread/wait returns \
                             once it exists",
                            super::MATERIALIZES_WHEN
                        );
                    }
                    _ => {}
                },
                Err(_) => {}
            }
        }
        QueryError::Path {
            path: given.to_owned(),
            reason,
            detail,
            would_be: would_be.filter(|p| p != given),
        }
    }
}

fn normalize_id(given: &str) -> Result<String, QueryError> {
    let id = given.trim().to_ascii_lowercase();
    if id.len() < MIN_PREFIX {
        return Err(QueryError::BadId {
            given: given.to_owned(),
            why: "an id prefix needs at least 8 characters",
        });
    }
    if !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(QueryError::BadId {
            given: given.to_owned(),
            why: "thread ids are hexadecimal UUIDs",
        });
    }
    Ok(id)
}

fn path_error(given: &Path, e: &std::io::Error) -> QueryError {
    if identity::is_filesystem_failure(e) {
        return QueryError::Unavailable {
            path: given.to_owned(),
            error: e.to_string(),
        };
    }
    bad_file_error(given, BadFile::from_io(given, e))
}

/// Maps a bad-file classification onto the reasons a path query gives.
fn bad_file_error(given: &Path, bad: BadFile) -> QueryError {
    let reason = match bad.kind {
        ProblemKind::Directory => PathReason::Directory,
        ProblemKind::NotRegularFile => PathReason::NotRegularFile,
        ProblemKind::Vanished => PathReason::Missing,
        ProblemKind::PermissionDenied => PathReason::PermissionDenied,
        ProblemKind::OutsideHome => PathReason::OutsideHome,
        _ => PathReason::NotRollout,
    };
    let detail = format!("{} ({})", bad.kind, bad.detail);
    QueryError::path(PathBuf::from(given), reason, detail)
}
