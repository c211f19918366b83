//! `thread/resolve` and `path/resolve`: from an id (or unique prefix) or a path to a verified
//! thread record.

use std::path::{Path, PathBuf};

use super::{PathReason, Queries, QueryError, ThreadRecord};
use crate::crawl::{self, Candidate};
use crate::identity::{self, FileKind, Stamp};
use crate::index::IndexedFile;
use crate::rollout::{self, name, BadFile, ProblemKind};

/// Shortest id prefix accepted: 8 hex digits single out one thread among millions.
pub const MIN_PREFIX: usize = 8;

impl Queries<'_> {
    /// Resolves a full thread id or a unique prefix of at least [`MIN_PREFIX`] characters.
    pub fn resolve_thread(&self, given: &str) -> Result<ThreadRecord, QueryError> {
        let file = self.thread_file(given)?;
        Ok(ThreadRecord::new(&file, self.homes))
    }

    /// The verified, preferred file of a thread given by id or prefix.
    pub(super) fn thread_file(&self, given: &str) -> Result<IndexedFile, QueryError> {
        let id = normalize_id(given)?;
        if uuid::Uuid::try_parse(&id).is_ok() {
            return self.verified_thread(&id);
        }
        let mut matches = self.index.thread_ids_with_prefix(&id, 2)?;
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
            _ => Err(QueryError::Ambiguous {
                prefix: id,
                matches,
            }),
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
        let mut found = self.first_verified(rows, thread_id, &mut gone)?;
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
            found = self.first_verified(rows, thread_id, &mut gone)?;
        }
        if !gone.is_empty() {
            self.index
                .require_writer("dropping rows of files that are gone")?;
            if let Err(e) = self.index.remove_paths(&gone) {
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
        rows: Vec<IndexedFile>,
        thread_id: &str,
        gone: &mut Vec<PathBuf>,
    ) -> Result<Option<IndexedFile>, QueryError> {
        for row in rows {
            if let Some(file) = self.verify(row, gone)? {
                if file.head.thread_id == thread_id {
                    return Ok(Some(file));
                }
            }
        }
        Ok(None)
    }

    /// Checks a row against its file: unchanged stamp → the row; changed → re-read and
    /// rewritten; bad → recorded, `None`; gone → its path added to `gone` for the caller
    /// to drop, `None`.
    fn verify(
        &self,
        row: IndexedFile,
        gone: &mut Vec<PathBuf>,
    ) -> Result<Option<IndexedFile>, QueryError> {
        match Stamp::of(&row.path) {
            Ok(now) if now.unchanged(&row.stamp) => return Ok(Some(row)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                gone.push(row.path);
                return Ok(None);
            }
            _ => {}
        }
        let candidate = Candidate {
            path: row.path.clone(),
            home: row.home.clone(),
            archived: row.archived,
        };
        Ok(crawl::refresh(self.index, &candidate, &self.limits)?.ok())
    }

    /// Codex's fallback: walk the homes for rollout names containing `needle`, read and
    /// index what is found, preferred files first.
    fn walk_for(&self, needle: &str) -> Result<Vec<IndexedFile>, QueryError> {
        self.index.require_writer("walking the homes")?;
        let roots = crawl::allowed_roots(self.homes);
        let mut found = Vec::new();
        for home in &self.homes.homes {
            let (candidates, _) = crawl::discover(home, &roots, &|n| n.contains(needle));
            for c in candidates {
                if let Ok(file) = crawl::refresh(self.index, &c, &self.limits)? {
                    found.push(file);
                }
            }
        }
        found.sort_by_key(|f| (f.archived, f.compression != rollout::Compression::None));
        Ok(found)
    }

    /// Resolves a path (any spelling) to the thread whose rollout it is.
    pub fn resolve_path(&self, path: &Path) -> Result<ThreadRecord, QueryError> {
        let file = self.path_file(path)?;
        Ok(ThreadRecord::new(&file, self.homes))
    }

    /// Classifies `path` and returns its verified rollout.
    ///
    /// Never opens a file outside the configured homes: the path is normalized (`..`
    /// folded, symlinks resolved) and checked against the homes' realpaths first.
    pub(super) fn path_file(&self, path: &Path) -> Result<IndexedFile, QueryError> {
        let given = identity::normalize_lexically(path);
        let existing = self
            .homes
            .lexical_alternatives(&given)
            .into_iter()
            .find(|p| std::fs::symlink_metadata(p).is_ok());
        let Some(existing) = existing else {
            return Err(self.missing(&given));
        };
        let canonical = identity::canonicalize(&existing).map_err(|e| path_error(&given, &e))?;
        let roots = crawl::allowed_roots(self.homes);
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
                return Ok(row);
            }
        }
        match crawl::refresh(self.index, &candidate, &self.limits)? {
            Ok(file) => Ok(file),
            Err(bad) => Err(bad_file_error(&given, bad)),
        }
    }

    /// The error for a path that exists under no spelling, with where the file is now when
    /// its name carries a thread id that still resolves.
    fn missing(&self, given: &Path) -> QueryError {
        let mut would_be = self
            .homes
            .locate(given)
            .map(|(home, rest)| home.real.join(rest));
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
                    detail = format!(
                        "no such file; thread {id} is now at {}",
                        file.path.display()
                    );
                    would_be = Some(file.path);
                }
                Err(QueryError::NotFound { .. }) => match self.index.removed_thread(&id) {
                    Ok(Some((last, _))) => {
                        detail = format!(
                            "no such file; thread {id} had a rollout at {} that was removed",
                            last.display()
                        );
                    }
                    // A thread Codex has named but not written yet: it writes the rollout
                    // lazily, after the first turn.
                    Ok(None) if self.homes.locate(given).is_some() => {
                        reason = PathReason::NotMaterialized;
                        detail = format!(
                            "thread {id} has no rollout on disk yet (Codex writes it after the \
                             first turn); thread/wait returns once it exists"
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
