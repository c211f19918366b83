//! The audit: every `threads` row checked against the files, through the query layer.
//!
//! A row's file is what Codex would open for it: the `rollout_path` as written, else its
//! `.zst` sibling, whichever is a regular file first (Codex's `existing_rollout_path`). The
//! file's thread is its verified `session_meta.id` ([`Queries::resolve_path`]); where a
//! thread's file really is comes from the index, kept current by the caller (a reconcile in
//! the CLI, the watcher in the agent) and each answer re-verified against the file.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::db::{Backfill, DbInfo, Snapshot, ThreadRow};
use super::spelling::{self, plain, with_zst};
use super::CodexStateError;
use crate::identity::{self, Home, Homes, Stamp};
use crate::index::{ArchivedFilter, IndexAccess, IndexedFile, ListQuery};
use crate::query::{Queries, QueryError, ThreadRecord};
use crate::rollout::HeadLimits;

pub use super::db::RowState;

/// How much a finding matters. `error` findings make `codex audit` exit 1.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "camelCase")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// The file of a thread as found in the home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FoundFile {
    /// Canonical path.
    pub path: PathBuf,
    /// The same file under the home as configured: the spelling messages use.
    pub shown_path: PathBuf,
    pub archived: bool,
    /// mtime in seconds (what Codex's backfill uses for `archived_at`).
    pub mtime: i64,
    pub compression: &'static str,
}

/// One disagreement between Codex's state DB and the files. The variant is the `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum Finding {
    /// `rollout_path` (and its `.zst` sibling) do not exist.
    RowMissingFile {
        row: ThreadRow,
        found: Option<FoundFile>,
    },
    /// The file's `session_meta.id` is another thread.
    RowPointsToOtherThread {
        row: ThreadRow,
        file_thread_id: String,
        found: Option<FoundFile>,
    },
    RowIsDirectory {
        row: ThreadRow,
        found: Option<FoundFile>,
    },
    /// A FIFO, socket or device.
    RowNotRegularFile {
        row: ThreadRow,
        file_kind: String,
        found: Option<FoundFile>,
    },
    /// `archived` / `archived_at` disagree with where the file lies.
    RowArchivedMismatch { row: ThreadRow, file: FoundFile },
    /// The path reaches the right file, but not by the spelling Codex writes now (the
    /// realpath after a resume through it, an alias, a home spelling from before
    /// `CODEX_HOME` was set). Information only: Codex opens it.
    RowAliasSpelling {
        row: ThreadRow,
        canonical_path: PathBuf,
        /// The home spelling the row uses, when it is one of the home's known spellings.
        used_spelling: Option<PathBuf>,
        /// The home as Codex spells it in the rows it writes.
        codex_spelling: PathBuf,
        /// Whether `CODEX_HOME` names this home (then Codex writes its realpath).
        codex_home_set: bool,
    },
    /// The path does not exist, but its `.jsonl` / `.jsonl.zst` sibling does and is this
    /// thread's file: Codex stores the plain name of a rollout it compressed and opens the
    /// sibling itself. Information only.
    RowCompressedSibling { row: ThreadRow, file: PathBuf },
    /// The path exists but cannot be checked: not a rollout, unreadable, outside the home.
    RowUnverifiable {
        row: ThreadRow,
        reason: String,
        detail: String,
        found: Option<FoundFile>,
    },
    /// A rollout whose thread has no row.
    FileWithoutRow {
        thread_id: String,
        path: PathBuf,
        archived: bool,
    },
    /// Several files hold one thread id (preferred first).
    DuplicateFiles {
        thread_id: String,
        paths: Vec<PathBuf>,
        row: Option<ThreadRow>,
    },
    /// `backfill_state` is not `complete`: Codex ignores the DB until it is.
    BackfillIncomplete {
        status: Option<String>,
        last_watermark: Option<String>,
        updated_at: Option<i64>,
        lease_fresh: bool,
    },
}

impl Finding {
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::RowMissingFile { .. } => "rowMissingFile",
            Finding::RowPointsToOtherThread { .. } => "rowPointsToOtherThread",
            Finding::RowIsDirectory { .. } => "rowIsDirectory",
            Finding::RowNotRegularFile { .. } => "rowNotRegularFile",
            Finding::RowArchivedMismatch { .. } => "rowArchivedMismatch",
            Finding::RowAliasSpelling { .. } => "rowAliasSpelling",
            Finding::RowCompressedSibling { .. } => "rowCompressedSibling",
            Finding::RowUnverifiable { .. } => "rowUnverifiable",
            Finding::FileWithoutRow { .. } => "fileWithoutRow",
            Finding::DuplicateFiles { .. } => "duplicateFiles",
            Finding::BackfillIncomplete { .. } => "backfillIncomplete",
        }
    }

    pub fn severity(&self) -> Severity {
        match self {
            Finding::RowMissingFile { .. }
            | Finding::RowPointsToOtherThread { .. }
            | Finding::RowIsDirectory { .. }
            | Finding::RowNotRegularFile { .. }
            | Finding::RowArchivedMismatch { .. } => Severity::Error,
            Finding::RowUnverifiable { .. }
            | Finding::DuplicateFiles { .. }
            | Finding::BackfillIncomplete { .. } => Severity::Warning,
            Finding::RowAliasSpelling { .. }
            | Finding::RowCompressedSibling { .. }
            | Finding::FileWithoutRow { .. } => Severity::Info,
        }
    }

    /// The row concerned, if any.
    pub fn row(&self) -> Option<&ThreadRow> {
        match self {
            Finding::RowMissingFile { row, .. }
            | Finding::RowPointsToOtherThread { row, .. }
            | Finding::RowIsDirectory { row, .. }
            | Finding::RowNotRegularFile { row, .. }
            | Finding::RowArchivedMismatch { row, .. }
            | Finding::RowAliasSpelling { row, .. }
            | Finding::RowCompressedSibling { row, .. }
            | Finding::RowUnverifiable { row, .. } => Some(row),
            Finding::DuplicateFiles { row, .. } => row.as_ref(),
            Finding::FileWithoutRow { .. } | Finding::BackfillIncomplete { .. } => None,
        }
    }

    /// The thread concerned, if any.
    pub fn thread_id(&self) -> Option<&str> {
        match self {
            Finding::FileWithoutRow { thread_id, .. }
            | Finding::DuplicateFiles { thread_id, .. } => Some(thread_id),
            _ => self.row().map(|r| r.thread_id.as_str()),
        }
    }

    /// One sentence: what was seen.
    pub fn evidence(&self) -> String {
        let elsewhere = |found: &Option<FoundFile>| match found {
            Some(f) => format!("; the thread's file is {}", f.shown_path.display()),
            None => "; no file of this thread is in the home".to_owned(),
        };
        match self {
            Finding::RowMissingFile { found, .. } => {
                format!("rollout_path does not exist{}", elsewhere(found))
            }
            Finding::RowPointsToOtherThread {
                file_thread_id,
                found,
                ..
            } => format!(
                "the file's session_meta.id is {file_thread_id}{}",
                elsewhere(found)
            ),
            Finding::RowIsDirectory { found, .. } => {
                format!("rollout_path is a directory{}", elsewhere(found))
            }
            Finding::RowNotRegularFile {
                file_kind, found, ..
            } => format!(
                "rollout_path is a {file_kind}, not a regular file{}",
                elsewhere(found)
            ),
            Finding::RowArchivedMismatch { row, file } => format!(
                "row says archived={} archived_at={}, but the file is {} (mtime {})",
                row.state.archived,
                row.state
                    .archived_at
                    .map_or_else(|| "NULL".to_owned(), |t| t.to_string()),
                if file.archived {
                    "in archived_sessions/"
                } else {
                    "in sessions/"
                },
                file.mtime
            ),
            Finding::RowAliasSpelling {
                used_spelling,
                codex_spelling,
                codex_home_set,
                ..
            } => {
                let codex = if *codex_home_set {
                    format!(
                        "Codex, with CODEX_HOME set, resolves the home and writes {}",
                        codex_spelling.display()
                    )
                } else {
                    format!(
                        "Codex writes {} (the home as configured; CODEX_HOME is unset)",
                        codex_spelling.display()
                    )
                };
                let used = match used_spelling {
                    Some(u) => format!("the home spelling {}", u.display()),
                    None => "a spelling outside the home's known ones".to_owned(),
                };
                format!(
                    "rollout_path reaches this thread's file through {used}, while {codex}; \
                     Codex rewrites a row this way after a resume through that spelling"
                )
            }
            Finding::RowCompressedSibling { row, file } => format!(
                "rollout_path {} does not exist; its sibling {} is this thread's file (Codex \
                 stores the plain name of a rollout it compressed and opens the sibling)",
                row.state.rollout_path,
                file.display()
            ),
            Finding::RowUnverifiable {
                reason,
                detail,
                found,
                ..
            } => format!("{reason}: {detail}{}", elsewhere(found)),
            Finding::FileWithoutRow { path, .. } => {
                format!("{} has no row", path.display())
            }
            Finding::DuplicateFiles { paths, .. } => {
                let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                format!("{} files hold this id: {}", paths.len(), shown.join(", "))
            }
            Finding::BackfillIncomplete {
                status,
                last_watermark,
                lease_fresh,
                ..
            } => format!(
                "backfill_state.status is {}{}{}; Codex ignores this DB until the backfill completes",
                status.as_deref().unwrap_or("absent (no row)"),
                last_watermark
                    .as_deref()
                    .map(|w| format!(", last watermark {w}"))
                    .unwrap_or_default(),
                if *lease_fresh {
                    ", a backfill is running now"
                } else {
                    ""
                }
            ),
        }
    }
}

/// A change to one row: `before` is what the audit read, and the compare-and-swap condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Update {
    pub thread_id: String,
    pub before: RowState,
    pub after: RowState,
}

/// What repair would do about a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Fix {
    Update(Update),
    /// Nothing: why not.
    Leave {
        why: String,
    },
}

impl Fix {
    fn leave(why: &str) -> Fix {
        Fix::Leave {
            why: why.to_owned(),
        }
    }
}

/// A finding with its severity, evidence sentence and proposed fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FindingEntry {
    #[serde(flatten)]
    pub finding: Finding,
    pub severity: Severity,
    pub evidence: String,
    pub fix: Fix,
}

impl FindingEntry {
    fn new(finding: Finding, fix: Fix) -> Self {
        FindingEntry {
            severity: finding.severity(),
            evidence: finding.evidence(),
            finding,
            fix,
        }
    }
}

/// Counts for the summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditSummary {
    pub rows: usize,
    pub files: usize,
    pub errors: usize,
    pub warnings: usize,
    pub infos: usize,
    /// Findings with a proposed update.
    pub fixable: usize,
}

/// The audit of one state database.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditReport {
    /// The Codex home, as configured.
    pub codex_home: PathBuf,
    pub db: DbInfo,
    pub summary: AuditSummary,
    /// Errors first, then warnings, then information.
    pub findings: Vec<FindingEntry>,
}

impl AuditReport {
    pub fn has_errors(&self) -> bool {
        self.summary.errors > 0
    }

    /// The proposed updates, one per row at most.
    pub fn updates(&self) -> Vec<Update> {
        let mut seen = HashSet::new();
        self.findings
            .iter()
            .filter_map(|f| match &f.fix {
                Fix::Update(u) if seen.insert(u.thread_id.clone()) => Some(u.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Why rolloutd leaves a thread with no file alone.
const NOWHERE: &str = "no file of this thread is in the home: nothing to point the row at \
     (rolloutd never deletes rows; Codex drops such rows when it lists threads)";

/// Audits `snapshot` (read from `home`'s state DB) against the files.
///
/// `homes` are all configured homes (paths in any of them resolve); files are looked for in
/// `home` only. The index is locked per row, so an agent keeps answering meanwhile.
pub fn audit<A: IndexAccess>(
    snapshot: &Snapshot,
    home: &Home,
    homes: &Homes,
    index: &A,
    limits: HeadLimits,
) -> Result<AuditReport, CodexStateError> {
    let files = home_files(home, index)?;
    // Codex canonicalizes the home when CODEX_HOME names it, else writes it as found.
    let codex_home_set = super::locate::process_env("CODEX_HOME")
        .and_then(|h| identity::canonicalize(Path::new(&h)).ok())
        .is_some_and(|h| h == home.real);
    let ctx = Ctx {
        home,
        homes,
        index,
        limits,
        files: &files,
        codex_home_set,
    };
    let mut findings = Vec::new();
    // Ids are compared in lower case, as the index stores them.
    let row_ids: HashSet<String> = snapshot
        .rows
        .iter()
        .map(|r| r.thread_id.to_ascii_lowercase())
        .collect();
    for row in &snapshot.rows {
        findings.extend(ctx.check_row(row)?);
    }
    let rows_by_id: HashMap<String, &ThreadRow> = snapshot
        .rows
        .iter()
        .map(|r| (r.thread_id.to_ascii_lowercase(), r))
        .collect();
    let mut threads: Vec<(&String, &Vec<IndexedFile>)> = files.iter().collect();
    threads.sort_by(|a, b| a.0.cmp(b.0));
    for (thread_id, thread_files) in threads {
        let Some(first) = thread_files.first() else {
            continue;
        };
        if !row_ids.contains(thread_id) {
            findings.push(FindingEntry::new(
                Finding::FileWithoutRow {
                    thread_id: thread_id.clone(),
                    path: homes.display(&first.path),
                    archived: first.archived,
                },
                Fix::leave(
                    "rolloutd never inserts rows; Codex adds one when it looks the thread up \
                     by id (after a completed backfill it does not add files it finds later)",
                ),
            ));
        }
        if thread_files.len() > 1 {
            findings.push(FindingEntry::new(
                Finding::DuplicateFiles {
                    thread_id: thread_id.clone(),
                    paths: thread_files
                        .iter()
                        .map(|f| homes.display(&f.path))
                        .collect(),
                    row: rows_by_id.get(thread_id).map(|r| (*r).clone()),
                },
                Fix::leave(
                    "rolloutd never deletes files; Codex prefers the active, plain file \
                     (the first listed)",
                ),
            ));
        }
    }
    if let Some(f) = backfill_finding(snapshot.backfill.as_ref()) {
        findings.push(f);
    }
    findings.sort_by(|a, b| {
        (a.severity, a.finding.kind(), a.finding.thread_id()).cmp(&(
            b.severity,
            b.finding.kind(),
            b.finding.thread_id(),
        ))
    });
    let mut summary = AuditSummary {
        rows: snapshot.rows.len(),
        files: files.values().map(Vec::len).sum(),
        ..AuditSummary::default()
    };
    for f in &findings {
        match f.severity {
            Severity::Error => summary.errors += 1,
            Severity::Warning => summary.warnings += 1,
            Severity::Info => summary.infos += 1,
        }
        if matches!(f.fix, Fix::Update(_)) {
            summary.fixable += 1;
        }
    }
    Ok(AuditReport {
        codex_home: home.configured.clone(),
        db: snapshot.info.clone(),
        summary,
        findings,
    })
}

fn backfill_finding(backfill: Option<&Backfill>) -> Option<FindingEntry> {
    if backfill.is_some_and(|b| b.status == "complete") {
        return None;
    }
    let lease_fresh = backfill.is_some_and(|b| b.lease_fresh(super::now_secs()));
    Some(FindingEntry::new(
        Finding::BackfillIncomplete {
            status: backfill.map(|b| b.status.clone()),
            last_watermark: backfill.and_then(|b| b.last_watermark.clone()),
            updated_at: backfill.and_then(|b| b.updated_at),
            lease_fresh,
        },
        Fix::leave(
            "Codex resumes its backfill on its next start; rolloutd does not write backfill_state",
        ),
    ))
}

/// The indexed files of `home`, by thread, preferred first (active, then plain).
fn home_files<A: IndexAccess>(
    home: &Home,
    index: &A,
) -> Result<HashMap<String, Vec<IndexedFile>>, CodexStateError> {
    let all = index.with(|i| {
        i.list(&ListQuery {
            archived: ArchivedFilter::All,
            cwd: Vec::new(),
            search: None,
            limit: i64::MAX as usize,
            after: None,
        })
    })?;
    let mut by_thread: HashMap<String, Vec<IndexedFile>> = HashMap::new();
    for f in all.into_iter().filter(|f| f.home == home.real) {
        by_thread
            .entry(f.head.thread_id.clone())
            .or_default()
            .push(f);
    }
    for files in by_thread.values_mut() {
        files.sort_by(crate::query::preference);
    }
    Ok(by_thread)
}

struct Ctx<'a, A> {
    home: &'a Home,
    homes: &'a Homes,
    index: &'a A,
    limits: HeadLimits,
    files: &'a HashMap<String, Vec<IndexedFile>>,
    codex_home_set: bool,
}

impl<A: IndexAccess> Ctx<'_, A> {
    fn resolve_path(&self, path: &Path) -> Result<ThreadRecord, QueryError> {
        self.index
            .with(|index| Queries::new(self.homes, index, self.limits).resolve_path(path))
    }

    /// The thread's verified file in this home, preferred first.
    fn find(&self, thread_id: &str) -> Result<Option<FoundFile>, CodexStateError> {
        let thread_id = thread_id.to_ascii_lowercase();
        for f in self.files.get(&thread_id).into_iter().flatten() {
            match self.resolve_path(&f.path) {
                Ok(rec) if rec.thread_id == thread_id => return Ok(Some(found(&rec))),
                Ok(_) | Err(QueryError::Path { .. }) => {}
                Err(QueryError::Index(e)) => return Err(e.into()),
                Err(_) => {}
            }
        }
        // A guest's index is the running agent's and may not have caught up with a move
        // yet (the caller could not reconcile it): look on disk, as Codex does, by id.
        if !self.index.with(|i| i.is_guest()) {
            return Ok(None);
        }
        let answer = self
            .index
            .with(|index| Queries::new(self.homes, index, self.limits).resolve_thread(&thread_id));
        match answer {
            Ok(rec)
                if rec.thread_id == thread_id
                    && rec.canonical_path.starts_with(&self.home.real) =>
            {
                Ok(Some(found(&rec)))
            }
            Err(QueryError::Index(e)) => Err(e.into()),
            _ => Ok(None),
        }
    }

    /// The fix pointing `row` at `found`, or why there is none.
    fn point_at(&self, row: &ThreadRow, found: &Option<FoundFile>) -> Fix {
        let Some(f) = found else {
            return Fix::leave(NOWHERE);
        };
        let after = RowState {
            rollout_path: spelling::respell(self.home, &row.state.rollout_path, &f.path)
                .to_string_lossy()
                .into_owned(),
            archived: i64::from(f.archived),
            archived_at: archived_at(&row.state, f),
        };
        update(row, after)
    }

    fn check_row(&self, row: &ThreadRow) -> Result<Vec<FindingEntry>, CodexStateError> {
        let given = Path::new(&row.state.rollout_path);
        if !given.is_absolute() {
            let found = self.find(&row.thread_id)?;
            let fix = self.point_at(row, &found);
            return Ok(vec![FindingEntry::new(
                Finding::RowUnverifiable {
                    row: row.clone(),
                    reason: "notAbsolute".into(),
                    detail: "rollout_path is not an absolute path".into(),
                    found,
                },
                fix,
            )]);
        }
        // Codex's rule: the plain name, then its `.zst`, whichever is a regular file.
        let plain_path = plain(given);
        let file = [plain_path.clone(), with_zst(&plain_path)]
            .into_iter()
            .find(|c| std::fs::metadata(c).is_ok_and(|m| m.is_file()));
        let Some(file) = file else {
            return self.check_absent(row, given).map(|f| vec![f]);
        };
        match self.resolve_path(&file) {
            Ok(rec) if rec.thread_id.eq_ignore_ascii_case(&row.thread_id) => {
                Ok(self.check_match(row, &file, &rec))
            }
            Ok(rec) => {
                let found = self.find(&row.thread_id)?;
                let fix = self.point_at(row, &found);
                Ok(vec![FindingEntry::new(
                    Finding::RowPointsToOtherThread {
                        row: row.clone(),
                        file_thread_id: rec.thread_id,
                        found,
                    },
                    fix,
                )])
            }
            Err(QueryError::Index(e)) => Err(e.into()),
            Err(e) => {
                let found = self.find(&row.thread_id)?;
                let fix = self.point_at(row, &found);
                Ok(vec![FindingEntry::new(
                    Finding::RowUnverifiable {
                        row: row.clone(),
                        reason: e.reason().as_str().to_owned(),
                        detail: e.to_string(),
                        found,
                    },
                    fix,
                )])
            }
        }
    }

    /// No regular file under the row's name: gone, a directory, or something else.
    fn check_absent(&self, row: &ThreadRow, given: &Path) -> Result<FindingEntry, CodexStateError> {
        let found = self.find(&row.thread_id)?;
        let fix = self.point_at(row, &found);
        let row = row.clone();
        let finding = match Stamp::of(given) {
            Ok(s) if s.kind == identity::FileKind::Directory => {
                Finding::RowIsDirectory { row, found }
            }
            Ok(s) => Finding::RowNotRegularFile {
                row,
                file_kind: format!("{:?}", s.kind).to_lowercase(),
                found,
            },
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Finding::RowMissingFile { row, found }
            }
            Err(e) => Finding::RowUnverifiable {
                row,
                reason: if e.kind() == std::io::ErrorKind::PermissionDenied {
                    "permissionDenied".into()
                } else {
                    "unreadable".into()
                },
                detail: e.to_string(),
                found,
            },
        };
        Ok(FindingEntry::new(finding, fix))
    }

    /// The row's file is its thread's: check the spelling and the archive state.
    fn check_match(&self, row: &ThreadRow, file: &Path, rec: &ThreadRecord) -> Vec<FindingEntry> {
        let mut out = Vec::new();
        let given = identity::normalize_lexically(Path::new(&row.state.rollout_path));
        if identity::normalize_lexically(file) != given {
            out.push(FindingEntry::new(
                Finding::RowCompressedSibling {
                    row: row.clone(),
                    file: self.homes.display(file),
                },
                Fix::leave("nothing to repair: Codex opens the sibling for this row"),
            ));
        }
        // A row spelled the way Codex writes the home is healthy, whatever its realpath.
        let codex_spelling = if self.codex_home_set {
            self.home.real.clone()
        } else {
            self.home.configured.clone()
        };
        if !given.starts_with(&codex_spelling) {
            let used_spelling = self
                .home
                .spellings
                .iter()
                .filter(|s| given.starts_with(s))
                .max_by_key(|s| s.as_os_str().len())
                .cloned();
            out.push(FindingEntry::new(
                Finding::RowAliasSpelling {
                    row: row.clone(),
                    canonical_path: rec.canonical_path.clone(),
                    used_spelling,
                    codex_spelling,
                    codex_home_set: self.codex_home_set,
                },
                Fix::leave(
                    "nothing to repair: the row opens this thread's file. Only a client that \
                     compares paths as strings may call the other spelling stale; resume by \
                     thread id, or with the path the row holds",
                ),
            ));
        }
        let f = found(rec);
        let wanted = RowState {
            rollout_path: row.state.rollout_path.clone(),
            archived: i64::from(f.archived),
            archived_at: archived_at(&row.state, &f),
        };
        if wanted != row.state {
            out.push(FindingEntry::new(
                Finding::RowArchivedMismatch {
                    row: row.clone(),
                    file: f,
                },
                update(row, wanted),
            ));
        }
        out
    }
}

fn update(row: &ThreadRow, after: RowState) -> Fix {
    if after == row.state {
        return Fix::leave("the row already says this");
    }
    Fix::Update(Update {
        thread_id: row.thread_id.clone(),
        before: row.state.clone(),
        after,
    })
}

/// `archived_at` for a row whose file is `f`: kept when the row already has it right, the
/// file's mtime for a newly archived file (as Codex's backfill does), `NULL` when active.
fn archived_at(row: &RowState, f: &FoundFile) -> Option<i64> {
    if !f.archived {
        return None;
    }
    match row.archived_at {
        Some(t) if row.archived != 0 => Some(t),
        _ => Some(f.mtime),
    }
}

fn found(rec: &ThreadRecord) -> FoundFile {
    let mtime = Stamp::of(&rec.canonical_path)
        .map(|s| s.mtime_ns.div_euclid(1_000_000_000))
        .unwrap_or(0);
    FoundFile {
        path: rec.canonical_path.clone(),
        shown_path: rec.path.clone(),
        archived: rec.archived,
        mtime,
        compression: crate::rollout::Compression::parse(&rec.compression)
            .map_or("none", crate::rollout::Compression::as_str),
    }
}
