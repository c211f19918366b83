//! Codex's own state DB (`state_5.sqlite`): audit, repair, restore and auto-repair, against
//! real SQLite files made with the 0.169 `threads` / `backfill_state` DDL and real rollout
//! files in temporary homes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::agent::{eventually, Agent};
use common::sys::{as_nobody, hand_state_to_nobody, is_root, mkfifo, prerequisite_missing};
use common::{jpath, tid, Fixture, Lib, Rollout};
use rolloutd::codex_state::{self, ChangeStatus, Move, MoveOutcome, RepairOptions};
use rolloutd::rollout::HeadLimits;
use rusqlite::{params, Connection};
use serde_json::Value;

/// The `threads` and `backfill_state` schema of a Codex CLI 0.169 `state_5.sqlite`
/// (columns, indexes and triggers as that CLI wrote them). `thread_sections` and `projects`
/// are stand-ins for the tables `threads` references (their columns are not in the sample);
/// they must exist because SQLite enforces the foreign keys, as Codex's own pool does.
const DDL_0169: &str = r#"
CREATE TABLE thread_sections (id TEXT PRIMARY KEY);
CREATE TABLE projects (id TEXT PRIMARY KEY);
CREATE TABLE threads (
    id TEXT PRIMARY KEY,
    rollout_path TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    source TEXT NOT NULL,
    model_provider TEXT NOT NULL,
    cwd TEXT NOT NULL,
    title TEXT NOT NULL,
    sandbox_policy TEXT NOT NULL,
    approval_mode TEXT NOT NULL,
    tokens_used INTEGER NOT NULL DEFAULT 0,
    has_user_event INTEGER NOT NULL DEFAULT 0,
    archived INTEGER NOT NULL DEFAULT 0,
    archived_at INTEGER,
    git_sha TEXT,
    git_branch TEXT,
    git_origin_url TEXT
, cli_version TEXT NOT NULL DEFAULT '', first_user_message TEXT NOT NULL DEFAULT '', agent_nickname TEXT, agent_role TEXT, memory_mode TEXT NOT NULL DEFAULT 'enabled', model TEXT, reasoning_effort TEXT, agent_path TEXT, created_at_ms INTEGER, updated_at_ms INTEGER, thread_source TEXT, preview TEXT NOT NULL DEFAULT '', recency_at INTEGER NOT NULL DEFAULT 0, recency_at_ms INTEGER NOT NULL DEFAULT 0, history_mode TEXT NOT NULL DEFAULT 'legacy', name TEXT, is_pinned INTEGER NOT NULL DEFAULT 0, thread_section_id TEXT
    REFERENCES thread_sections(id) ON DELETE SET NULL, section_position INTEGER, section_entered_at_ms INTEGER, project_id TEXT
    REFERENCES projects(id) ON DELETE SET NULL, originator TEXT, daybreak_enabled BOOLEAN, creator_user_id TEXT, creator_account_id TEXT, attached_thread_parent_id TEXT);
CREATE INDEX idx_threads_created_at ON threads(created_at DESC, id DESC);
CREATE INDEX idx_threads_updated_at ON threads(updated_at DESC, id DESC);
CREATE INDEX idx_threads_archived ON threads(archived);
CREATE TRIGGER threads_created_at_ms_after_insert
AFTER INSERT ON threads
WHEN NEW.created_at_ms IS NULL
BEGIN
    UPDATE threads
    SET created_at_ms = NEW.created_at * 1000
    WHERE id = NEW.id;
END;
CREATE TRIGGER threads_updated_at_ms_after_insert
AFTER INSERT ON threads
WHEN NEW.updated_at_ms IS NULL
BEGIN
    UPDATE threads
    SET updated_at_ms = NEW.updated_at * 1000
    WHERE id = NEW.id;
END;
CREATE TRIGGER threads_updated_at_ms_after_update
AFTER UPDATE OF updated_at ON threads
WHEN NEW.updated_at != OLD.updated_at
 AND NEW.updated_at_ms IS OLD.updated_at_ms
BEGIN
    UPDATE threads
    SET updated_at_ms = NEW.updated_at * 1000
    WHERE id = NEW.id;
END;
CREATE INDEX idx_threads_archived_cwd_updated_at_ms ON threads(archived, cwd, updated_at_ms DESC, id DESC);
CREATE TRIGGER threads_recency_at_after_insert
AFTER INSERT ON threads
WHEN NEW.recency_at_ms = 0
BEGIN
    UPDATE threads
    SET recency_at = NEW.updated_at,
        recency_at_ms = COALESCE(NEW.updated_at_ms, NEW.updated_at * 1000)
    WHERE id = NEW.id;
END;
CREATE INDEX idx_threads_archive_recency_at_ms
    ON threads(archived, recency_at_ms DESC, id DESC)
    WHERE archived = 1;
CREATE TABLE backfill_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    status TEXT NOT NULL,
    last_watermark TEXT,
    last_success_at INTEGER,
    updated_at INTEGER NOT NULL
);
"#;

const CREATED: i64 = 1_795_287_722;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Creates `state_5.sqlite` in `dir` with the 0.169 DDL, a complete backfill and no rows.
fn create_db(dir: &Path, journal: &str) -> PathBuf {
    let path = dir.join("state_5.sqlite");
    let conn = Connection::open(&path).unwrap();
    conn.query_row(&format!("PRAGMA journal_mode={journal}"), [], |_| Ok(()))
        .unwrap();
    conn.execute_batch(DDL_0169).unwrap();
    conn.execute(
        "INSERT INTO backfill_state (id, status, last_watermark, last_success_at, updated_at) \
         VALUES (1, 'complete', 'sessions/2026/11/21/x.jsonl', ?1, ?1)",
        [CREATED],
    )
    .unwrap();
    path
}

fn insert(db: &Path, id: &str, path: &Path, archived: i64, archived_at: Option<i64>) {
    let conn = Connection::open(db).unwrap();
    conn.execute(
        "INSERT INTO threads (id, rollout_path, created_at, updated_at, source, model_provider, \
         cwd, title, sandbox_policy, approval_mode, archived, archived_at, cli_version, \
         first_user_message, preview, history_mode) \
         VALUES (?1, ?2, ?3, ?3, 'exec', 'mock_provider', '/w', 't', '{}', 'never', ?4, ?5, \
         '0.169.0', 't', 't', 'paginated')",
        params![id, path.to_str().unwrap(), CREATED, archived, archived_at],
    )
    .unwrap();
}

type Row = (String, i64, Option<i64>);

fn row(db: &Path, id: &str) -> Option<Row> {
    let conn = Connection::open(db).unwrap();
    conn.query_row(
        "SELECT rollout_path, archived, archived_at FROM threads WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .ok()
}

/// Every row of every table, in a fixed order: the database's content as text.
fn dump(db: &Path) -> String {
    let conn = Connection::open(db).unwrap();
    let mut out = String::new();
    let tables: Vec<(String, String)> = conn
        .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (name, sql) in tables {
        out.push_str(&sql);
        out.push('\n');
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM \"{name}\" ORDER BY rowid"))
            .unwrap();
        let n = stmt.column_count();
        let rows = stmt
            .query_map([], |r| {
                let vals: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect();
                Ok(vals.join("|"))
            })
            .unwrap();
        for r in rows {
            out.push_str(&r.unwrap());
            out.push('\n');
        }
    }
    out
}

/// File names directly in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn mtime_secs(p: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().mtime()
}

fn kinds(v: &Value) -> Vec<(String, String, String)> {
    v["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("no findings in {v}"))
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_owned(),
                f["severity"].as_str().unwrap().to_owned(),
                f["row"]["threadId"]
                    .as_str()
                    .or(f["threadId"].as_str())
                    .unwrap_or("-")
                    .to_owned(),
            )
        })
        .collect()
}

fn finding<'a>(v: &'a Value, kind: &str, thread: &str) -> &'a Value {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == kind && (f["row"]["threadId"] == thread || f["threadId"] == thread))
        .unwrap_or_else(|| panic!("no {kind} for {thread} in {v:#}"))
}

fn rollout(n: u32, day: u32) -> Rollout {
    Rollout::new(
        &tid(n),
        &format!("2026-11-{day:02}T10:00:{:02}.000Z", n % 60),
        "/w",
        &format!("thread {n}"),
    )
}

/// A symlinked home (configured `<root>/home/u/.codex`, real `<root>/mnt/users/u/.codex`)
/// holding one instance of every finding class.
struct World {
    fx: Fixture,
    db: PathBuf,
    real: PathBuf,
    /// The files of threads that have one, by thread number.
    files: std::collections::HashMap<u32, PathBuf>,
}

fn world() -> World {
    let fx = Fixture::symlinked();
    let real = fx.real_home();
    let db = create_db(&real, "wal");
    let mut files = std::collections::HashMap::new();
    let canon = |p: PathBuf| dunce::canonicalize(p).unwrap();
    // 1: moved by hand from the 20th to the 21st; the row still names the 20th.
    let r1 = rollout(1, 21);
    files.insert(1, canon(fx.write_active(&r1)));
    let stale = real.join("sessions/2026/11/20").join(r1.file_name());
    insert(&db, &r1.id, &stale, 0, None);
    // 2: no file anywhere.
    insert(
        &db,
        &tid(2),
        &real
            .join("sessions/2026/11/21")
            .join(rollout(2, 21).file_name()),
        0,
        None,
    );
    // 3 points at 4's file; 4 is right.
    let r3 = rollout(3, 21);
    let r4 = rollout(4, 21);
    files.insert(3, canon(fx.write_active(&r3)));
    files.insert(4, canon(fx.write_active(&r4)));
    insert(&db, &r3.id, &files[&4], 0, None);
    insert(&db, &r4.id, &files[&4], 0, None);
    // 5 points at the home directory itself.
    let r5 = rollout(5, 21);
    files.insert(5, canon(fx.write_active(&r5)));
    insert(&db, &r5.id, &real, 0, None);
    // 6 points at a FIFO named like its rollout; it has no file.
    let fifo = real
        .join("sessions/2026/11/21")
        .join(rollout(6, 21).file_name());
    mkfifo(&fifo, 0o644);
    insert(&db, &tid(6), &fifo, 0, None);
    // 7 is archived on disk but not in its row; 8 the other way round.
    let r7 = rollout(7, 19);
    files.insert(7, canon(fx.write_archived(&r7)));
    insert(&db, &r7.id, &files[&7], 0, None);
    let r8 = rollout(8, 19);
    files.insert(8, canon(fx.write_active(&r8)));
    insert(&db, &r8.id, &files[&8], 1, Some(CREATED + 5));
    // 9's row spells the path through the symlinked home (as Codex does without CODEX_HOME).
    let r9 = rollout(9, 18);
    let p9 = fx.write_active(&r9);
    files.insert(9, canon(p9.clone()));
    insert(&db, &r9.id, &p9, 0, None);
    // 10 has a file and no row.
    files.insert(10, canon(fx.write_active(&rollout(10, 17))));
    // 11 has an active file and an archived copy; its row names the active one.
    let r11 = rollout(11, 16);
    files.insert(11, canon(fx.write_active(&r11)));
    fx.write_archived(&r11);
    insert(&db, &r11.id, &files[&11], 0, None);
    // An interrupted backfill (its lease long expired).
    let conn = Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE backfill_state SET status = 'running', updated_at = ?1",
        [now() - 3600],
    )
    .unwrap();
    drop(conn);
    World {
        fx,
        db,
        real,
        files,
    }
}

#[test]
fn audit_reports_every_finding_class_with_row_evidence_and_fix() {
    let w = world();
    let before_home = listing(&w.real);
    let before = std::fs::read(&w.db).unwrap();
    let out = w.fx.run(&["codex", "audit"]);
    assert_eq!(out.code, 1, "errors exist, so exit 1: {out:?}");
    let v = &out.json;
    let got = kinds(v);
    let expect = [
        ("rowMissingFile", "error", tid(1)),
        ("rowMissingFile", "error", tid(2)),
        ("rowPointsToOtherThread", "error", tid(3)),
        ("rowIsDirectory", "error", tid(5)),
        ("rowNotRegularFile", "error", tid(6)),
        ("rowArchivedMismatch", "error", tid(7)),
        ("rowArchivedMismatch", "error", tid(8)),
        // Rows spelled through the realpath while Codex (no CODEX_HOME) writes the symlinked
        // home are information; 9's row uses Codex's own spelling and is healthy.
        ("rowAliasSpelling", "info", tid(4)),
        ("rowAliasSpelling", "info", tid(7)),
        ("rowAliasSpelling", "info", tid(8)),
        ("rowAliasSpelling", "info", tid(11)),
        ("fileWithoutRow", "info", tid(10)),
        ("duplicateFiles", "warning", tid(11)),
        ("backfillIncomplete", "warning", "-".to_owned()),
    ];
    for (kind, severity, thread) in &expect {
        assert!(
            got.iter()
                .any(|(k, s, t)| k == kind && s == severity && t == thread),
            "missing {kind}/{severity} for {thread}: {got:?}"
        );
    }
    assert_eq!(got.len(), expect.len(), "{got:#?}");
    assert_eq!(v["summary"]["errors"], 7);
    assert_eq!(v["summary"]["rows"], 10);

    // Evidence and fixes.
    let f1 = finding(v, "rowMissingFile", &tid(1));
    assert_eq!(f1["fix"]["action"], "update", "{f1:#}");
    assert_eq!(jpath(&f1["fix"]["after"]["rolloutPath"]), w.files[&1]);
    assert_eq!(jpath(&f1["found"]["path"]), w.files[&1]);
    assert!(f1["evidence"].as_str().unwrap().contains("does not exist"));
    let f2 = finding(v, "rowMissingFile", &tid(2));
    assert_eq!(f2["fix"]["action"], "leave");
    assert!(f2["found"].is_null());
    let f3 = finding(v, "rowPointsToOtherThread", &tid(3));
    assert_eq!(f3["fileThreadId"], tid(4));
    assert_eq!(jpath(&f3["fix"]["after"]["rolloutPath"]), w.files[&3]);
    let f5 = finding(v, "rowIsDirectory", &tid(5));
    assert_eq!(jpath(&f5["fix"]["after"]["rolloutPath"]), w.files[&5]);
    let f6 = finding(v, "rowNotRegularFile", &tid(6));
    assert_eq!(f6["fileKind"], "fifo");
    assert_eq!(f6["fix"]["action"], "leave");
    let f7 = finding(v, "rowArchivedMismatch", &tid(7));
    assert_eq!(f7["fix"]["after"]["archived"], 1);
    assert_eq!(f7["fix"]["after"]["archivedAt"], mtime_secs(&w.files[&7]));
    assert_eq!(jpath(&f7["fix"]["after"]["rolloutPath"]), w.files[&7]);
    let f8 = finding(v, "rowArchivedMismatch", &tid(8));
    assert_eq!(f8["fix"]["after"]["archived"], 0);
    assert!(f8["fix"]["after"]["archivedAt"].is_null());
    let f4 = finding(v, "rowAliasSpelling", &tid(4));
    assert_eq!(jpath(&f4["canonicalPath"]), w.files[&4]);
    assert_eq!(f4["fix"]["action"], "leave");
    let f11 = finding(v, "duplicateFiles", &tid(11));
    assert_eq!(f11["paths"].as_array().unwrap().len(), 2);
    let fb = &v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "backfillIncomplete")
        .unwrap();
    assert_eq!(fb["status"], "running");
    assert_eq!(fb["leaseFresh"], false);

    // Reading created nothing in the home and changed nothing.
    assert_eq!(listing(&w.real), before_home);
    assert_eq!(std::fs::read(&w.db).unwrap(), before);
    assert_eq!(v["db"]["access"], "immutable", "{:#}", v["db"]);

    // The human form names each kind and exits 1 too.
    let human = w.fx.cmd().args(["codex", "audit"]).output().unwrap();
    assert_eq!(human.status.code(), Some(1));
    let text = String::from_utf8_lossy(&human.stdout);
    for (kind, _, _) in &expect {
        assert!(text.contains(kind), "{kind} not in:\n{text}");
    }
}

#[test]
fn repair_prints_then_applies_compare_and_swap_updates_with_a_backup() {
    let w = world();
    let before = dump(&w.db);
    let dry = w.fx.run(&["codex", "repair"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    assert_eq!(dry.json["applied"], false);
    let planned: Vec<&str> = dry.json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["threadId"].as_str().unwrap())
        .collect();
    let mut want = vec![tid(1), tid(3), tid(5), tid(7), tid(8)];
    want.sort();
    let mut planned_sorted: Vec<String> = planned.iter().map(|s| s.to_string()).collect();
    planned_sorted.sort();
    assert_eq!(planned_sorted, want, "{dry:?}");
    assert_eq!(dump(&w.db), before, "a dry run touches nothing");

    let out = w.fx.run(&["codex", "repair", "--apply"]);
    assert_eq!(out.code, 0, "{out:?}");
    let backup = jpath(&out.json["backup"]);
    assert_eq!(backup.parent(), w.fx.index.parent(), "beside the index");
    assert!(!backup.starts_with(&w.real) && !backup.starts_with(&w.fx.home));
    assert_eq!(out.json["quickCheck"], "ok");
    assert!(out.json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["status"] == "applied"));
    let path_of = |n: u32| row(&w.db, &tid(n)).unwrap();
    assert_eq!(PathBuf::from(path_of(1).0), w.files[&1]);
    assert_eq!(PathBuf::from(path_of(3).0), w.files[&3]);
    assert_eq!(PathBuf::from(path_of(5).0), w.files[&5]);
    assert_eq!(path_of(7).1, 1);
    assert_eq!(path_of(7).2, Some(mtime_secs(&w.files[&7])));
    assert_eq!(
        path_of(8),
        (w.files[&8].to_str().unwrap().to_owned(), 0, None)
    );
    // Untouched: the alias spelling, the correct row, the rows without a file.
    assert_eq!(
        PathBuf::from(path_of(9).0),
        w.fx.home
            .join("sessions/2026/11/18")
            .join(rollout(9, 18).file_name())
    );
    assert_eq!(PathBuf::from(path_of(4).0), w.files[&4]);
    assert!(path_of(2).0.ends_with(&rollout(2, 21).file_name()));
    // No other table was written; no row added or removed.
    let conn = Connection::open(&w.db).unwrap();
    let (status, n): (String, i64) = conn
        .query_row(
            "SELECT (SELECT status FROM backfill_state), (SELECT count(*) FROM threads)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((status.as_str(), n), ("running", 10));
    // The backup holds the content from before.
    assert_eq!(dump(&backup), before);

    // Audited again, only the errors without a fix remain.
    let again = w.fx.run(&["codex", "audit"]);
    assert_eq!(again.code, 1);
    let errors: Vec<_> = kinds(&again.json)
        .into_iter()
        .filter(|(_, s, _)| s == "error")
        .collect();
    assert_eq!(
        errors,
        vec![
            ("rowMissingFile".to_owned(), "error".to_owned(), tid(2)),
            ("rowNotRegularFile".to_owned(), "error".to_owned(), tid(6)),
        ]
    );
}

/// A home with one archived-mismatch row (thread 1) and one moved row (thread 2).
fn small_world(journal: &str) -> (Fixture, PathBuf) {
    let fx = Fixture::new();
    let db = create_db(&fx.home, journal);
    let r1 = rollout(1, 21);
    let p1 = fx.write_archived(&r1);
    insert(&db, &r1.id, &p1, 0, None);
    let r2 = rollout(2, 21);
    fx.write_active(&r2);
    insert(
        &db,
        &r2.id,
        &fx.home.join("sessions/2026/01/01").join(r2.file_name()),
        0,
        None,
    );
    (fx, db)
}

/// Holds the write lock of `db` (an open `BEGIN IMMEDIATE` with a write) on a thread until
/// `hold` passed or it is told to let go; returns once the lock is held.
fn hold_write_lock(db: &Path, hold: Duration) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (held_tx, held_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let db = db.to_owned();
    let t = std::thread::spawn(move || {
        let mut conn = Connection::open(&db).unwrap();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        tx.execute(
            "UPDATE backfill_state SET last_success_at = last_success_at",
            [],
        )
        .unwrap();
        held_tx.send(()).unwrap();
        let _ = stop_rx.recv_timeout(hold);
        tx.commit().unwrap();
    });
    held_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    (stop_tx, t)
}

#[test]
fn repair_waits_for_a_writer_holding_the_lock_for_two_seconds() {
    let (fx, db) = small_world("wal");
    let (_stop, writer) = hold_write_lock(&db, Duration::from_secs(2));
    let started = Instant::now();
    let out = fx.run(&["codex", "repair", "--apply"]);
    let waited = started.elapsed();
    writer.join().unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        waited >= Duration::from_millis(1500),
        "did not wait: {waited:?}"
    );
    assert_eq!(out.json["changes"].as_array().unwrap().len(), 2);
    assert_eq!(row(&db, &tid(1)).unwrap().1, 1);
    assert!(row(&db, &tid(2)).unwrap().0.contains("2026/11/21"));
    eprintln!(
        "repair waited {waited:?} for a 2 s write lock ({} attempts)",
        out.json["attempts"]
    );
}

#[test]
fn repair_past_the_busy_limit_fails_clearly_and_changes_nothing() {
    let (fx, db) = small_world("wal");
    let before = dump(&db);
    let (stop, writer) = hold_write_lock(&db, Duration::from_secs(20));
    let out = fx.run(&["codex", "repair", "--apply", "--busy-timeout", "1s"]);
    stop.send(()).unwrap();
    writer.join().unwrap();
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.error_reason(), "busy", "{out:?}");
    assert!(
        out.stderr.contains("busy") && out.stderr.contains("nothing was changed"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("state_5.sqlite"),
        "names the file: {out:?}"
    );
    assert_eq!(dump(&db), before);
    // The backup of a repair that changed nothing is not kept.
    let left: Vec<String> = listing(fx.index.parent().unwrap())
        .into_iter()
        .filter(|n| n.starts_with("codex-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_row_changed_between_audit_and_apply_is_skipped_and_reported() {
    let (fx, db) = small_world("wal");
    let lib = Lib::open(&fx);
    rolloutd::crawl::reconcile(&lib.homes, &lib.index, &HeadLimits::default(), &()).unwrap();
    let (located, report) =
        codex_state::run_audit(&lib.homes, &lib.index, HeadLimits::default()).unwrap();
    let updates = codex_state::plan(&report);
    assert_eq!(updates.len(), 2);
    // Codex repairs thread 2 itself, to a path of its own, after the audit.
    let codex_path = "/elsewhere/rollout.jsonl";
    Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE threads SET rollout_path = ?1 WHERE id = ?2",
            params![codex_path, tid(2)],
        )
        .unwrap();
    let opts = RepairOptions {
        busy_budget: Duration::from_secs(5),
        backup_dir: fx.index.parent().unwrap().to_owned(),
        forbidden: vec![fx.home.clone()],
    };
    let applied = codex_state::apply(&located, &updates, &opts).unwrap();
    let by_id = |id: &str| {
        applied
            .changes
            .iter()
            .find(|c| c.update.thread_id == id)
            .unwrap()
    };
    assert_eq!(by_id(&tid(1)).status, ChangeStatus::Applied);
    let skipped = by_id(&tid(2));
    assert_eq!(skipped.status, ChangeStatus::Skipped);
    assert!(
        skipped.reason.as_deref().unwrap().contains(codex_path),
        "{skipped:?}"
    );
    assert_eq!(
        row(&db, &tid(2)).unwrap().0,
        codex_path,
        "left as Codex wrote it"
    );
    assert_eq!(row(&db, &tid(1)).unwrap().1, 1);
    assert_eq!(applied.quick_check.as_deref(), Some("ok"));
}

/// Bytes 24–27 (change counter), 40–43 (schema cookie) and 92–99 (version-valid-for and the
/// library version) of the header move with every write; everything else must be equal.
fn without_counters(mut bytes: Vec<u8>) -> Vec<u8> {
    for r in [24..28, 40..44, 92..100] {
        bytes[r].fill(0);
    }
    bytes
}

#[test]
fn a_backup_restores_byte_for_byte_equal_content() {
    let (fx, db) = small_world("wal");
    let original = std::fs::read(&db).unwrap();
    let before = dump(&db);
    let out = fx.run(&["codex", "repair", "--apply"]);
    assert_eq!(out.code, 0, "{out:?}");
    let backup = jpath(&out.json["backup"]);
    assert_ne!(dump(&db), before);

    let out = fx.run_os(&["codex".as_ref(), "restore".as_ref(), backup.as_os_str()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["quickCheck"], "ok");
    assert_eq!(out.json["journalMode"], "wal");
    let saved = jpath(&out.json["previousSavedTo"]);
    assert_eq!(saved.parent(), fx.index.parent());
    assert_ne!(
        dump(&saved),
        before,
        "the replaced (repaired) content was saved"
    );
    assert_eq!(dump(&db), before);
    let restored = std::fs::read(&db).unwrap();
    assert_eq!(restored.len(), original.len());
    assert_eq!(restored[18..20], [2, 2], "still a WAL database");
    assert!(
        without_counters(restored) == without_counters(original),
        "every page but the header counters is byte-for-byte equal"
    );
    assert!(!codex_state::db::companion(&db, "-wal").exists());
}

#[test]
fn restore_is_refused_while_another_connection_uses_the_database() {
    let (fx, db) = small_world("wal");
    let out = fx.run(&["codex", "repair", "--apply"]);
    let backup = jpath(&out.json["backup"]);
    let repaired = dump(&db);

    // An idle Codex connection (it has read once, as a pool connection has).
    let codex = Connection::open(&db).unwrap();
    codex
        .query_row("SELECT count(*) FROM threads", [], |r| r.get::<_, i64>(0))
        .unwrap();
    let restore = || fx.run_os(&["codex".as_ref(), "restore".as_ref(), backup.as_os_str()]);
    let out = restore();
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.error_reason(), "inUse", "{out:?}");
    assert!(out.stderr.contains("state_5.sqlite"), "{out:?}");
    drop(codex);
    assert_eq!(dump(&db), repaired, "nothing restored while in use");

    let out = restore();
    assert_eq!(out.code, 0, "{out:?}");
    assert_ne!(dump(&db), repaired);
}

#[test]
fn a_delete_journal_database_is_audited_repaired_and_restored_in_place() {
    let (fx, db) = small_world("delete");
    let companions = || {
        listing(&fx.home)
            .into_iter()
            .filter(|n| n.starts_with("state_5.sqlite-"))
            .collect::<Vec<_>>()
    };
    let audit = fx.run(&["codex", "audit"]);
    assert_eq!(audit.code, 1, "{audit:?}");
    assert_eq!(audit.json["db"]["journalMode"], "delete");
    assert_eq!(audit.json["db"]["access"], "readOnly");
    let before = dump(&db);
    let out = fx.run(&["codex", "repair", "--apply"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(row(&db, &tid(1)).unwrap().1, 1);
    let header = std::fs::read(&db).unwrap();
    assert_eq!(header[18..20], [1, 1], "still a rollback-journal database");
    assert!(companions().is_empty(), "{:?}", companions());

    // A reader inside a transaction holds a lock: restore is refused, then works.
    let backup = jpath(&out.json["backup"]);
    let mut reader = Connection::open(&db).unwrap();
    let tx = reader.transaction().unwrap();
    tx.query_row("SELECT count(*) FROM threads", [], |r| r.get::<_, i64>(0))
        .unwrap();
    let out = fx.run_os(&["codex".as_ref(), "restore".as_ref(), backup.as_os_str()]);
    assert_eq!(out.error_reason(), "inUse", "{out:?}");
    drop(tx);
    let out = fx.run_os(&["codex".as_ref(), "restore".as_ref(), backup.as_os_str()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["journalMode"], "delete");
    assert_eq!(dump(&db), before);
    assert!(companions().is_empty(), "{:?}", companions());
}

/// Runs `rolloutd --json <args>` as `nobody` when we are root (root ignores directory
/// permissions), else as ourselves.
fn run_unprivileged(fx: &Fixture, args: &[&str]) -> common::Run {
    let mut c = fx.cmd();
    c.arg("--json").args(args);
    if is_root() {
        as_nobody(&mut c);
    }
    common::Run::spawn(c, args)
}

#[test]
fn a_wal_database_in_a_read_only_directory_is_still_read() {
    let (fx, db) = small_world("wal");
    let as_root = is_root();
    if as_root {
        hand_state_to_nobody(&fx);
    }
    std::fs::set_permissions(&fx.home, std::fs::Permissions::from_mode(0o555)).unwrap();
    let before = listing(&fx.home);

    // Checkpointed (no -wal): read with immutable=1.
    let out = run_unprivileged(&fx, &["codex", "audit"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(out.json["db"]["access"], "immutable", "{out:?}");
    assert_eq!(out.json["summary"]["rows"], 2);

    // A live writer keeps a -wal with a row not yet checkpointed; the -shm is not ours to
    // write. Still readable: through the existing -shm, or immutable with a note.
    let writer = Connection::open(&db).unwrap();
    writer
        .query_row("PRAGMA wal_autocheckpoint=0", [], |_| Ok(()))
        .ok();
    writer
        .execute(
            "INSERT INTO threads (id, rollout_path, created_at, updated_at, source, \
             model_provider, cwd, title, sandbox_policy, approval_mode) \
             VALUES (?1, '/w/x.jsonl', 1, 1, 'exec', 'p', '/w', 't', '{}', 'never')",
            [tid(3)],
        )
        .unwrap();
    assert!(codex_state::db::companion(&db, "-wal").exists());
    let out = run_unprivileged(&fx, &["codex", "audit"]);
    assert_eq!(out.code, 1, "{out:?}");
    match out.json["db"]["access"].as_str() {
        Some("readOnly") => assert_eq!(out.json["summary"]["rows"], 3, "{out:?}"),
        Some("immutable") => {
            let notes = out.json["db"]["notes"].to_string();
            assert!(notes.contains("-wal"), "{notes}");
        }
        other => panic!("{other:?}: {out:?}"),
    }
    // Codex died with changes in the -wal, and its -shm is gone: the -shm cannot be made
    // in the read-only directory, so the read falls back to immutable=1 and says what it
    // could not see.
    let wal = codex_state::db::companion(&db, "-wal");
    let kept = std::fs::read(&wal).unwrap();
    drop(writer);
    if as_root {
        std::fs::write(&wal, &kept).unwrap();
        let _ = std::fs::remove_file(codex_state::db::companion(&db, "-shm"));
        let out = run_unprivileged(&fx, &["codex", "audit"]);
        assert_eq!(out.code, 1, "{out:?}");
        assert_eq!(out.json["db"]["access"], "immutable", "{out:?}");
        let notes = out.json["db"]["notes"].to_string();
        assert!(
            notes.contains("read-only directory") && notes.contains("were not seen"),
            "{notes}"
        );
        assert!(!codex_state::db::companion(&db, "-shm").exists());
        std::fs::remove_file(&wal).unwrap();
    } else {
        // Only root can put a -wal back into the read-only directory.
        prerequisite_missing("needs root: a -wal without its -shm in a read-only directory");
    }
    assert_eq!(
        listing(&fx.home)
            .into_iter()
            .filter(|n| !n.starts_with("state_5.sqlite-"))
            .collect::<Vec<_>>(),
        before
    );
    std::fs::set_permissions(&fx.home, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn an_unknown_generation_or_missing_columns_are_refused_by_name() {
    let (fx, db) = small_world("wal");
    std::fs::copy(&db, fx.home.join("state_6.sqlite")).unwrap();
    let out = fx.run(&["codex", "audit"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.error_reason(), "unknownGeneration");
    assert!(
        out.stderr.contains("state_6.sqlite") && out.stderr.contains("generation 6"),
        "{out:?}"
    );
    std::fs::remove_file(fx.home.join("state_6.sqlite")).unwrap();

    let conn = Connection::open(&db).unwrap();
    conn.execute_batch("ALTER TABLE threads DROP COLUMN archived_at; DROP TABLE backfill_state;")
        .unwrap();
    drop(conn);
    for args in [&["codex", "audit"][..], &["codex", "repair", "--apply"][..]] {
        let out = fx.run(args);
        assert_eq!(out.code, 2, "{out:?}");
        assert_eq!(out.error_reason(), "unknownSchema", "{out:?}");
        assert!(
            out.stderr.contains("threads.archived_at")
                && out.stderr.contains("table backfill_state"),
            "{out:?}"
        );
    }
}

#[test]
fn a_fresh_backfill_lease_refuses_apply_but_not_audit() {
    let (fx, db) = small_world("wal");
    Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE backfill_state SET status = 'running', updated_at = ?1",
            [now() - 10],
        )
        .unwrap();
    let before = dump(&db);
    let audit = fx.run(&["codex", "audit"]);
    let b = audit.json["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "backfillIncomplete")
        .cloned()
        .unwrap_or_else(|| panic!("{audit:?}"));
    assert_eq!(b["leaseFresh"], true);
    assert_eq!(fx.run(&["codex", "repair"]).code, 0);
    let out = fx.run(&["codex", "repair", "--apply"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert_eq!(out.error_reason(), "backfillRunning");
    assert_eq!(dump(&db), before);
}

#[test]
fn auto_repair_points_a_row_at_a_file_another_tool_archived_or_unarchived() {
    let fx = Fixture::new();
    let db = create_db(&fx.home, "wal");
    let r = rollout(1, 21);
    let active = dunce::canonicalize(fx.write_active(&r)).unwrap();
    insert(&db, &r.id, &active, 0, None);
    let archived = dunce::canonicalize(fx.home.join("archived_sessions"))
        .unwrap()
        .join(r.file_name());
    std::fs::rename(&active, &archived).unwrap();
    let homes = rolloutd::identity::Homes::new(std::slice::from_ref(&fx.home), &[]);
    let mv = Move {
        thread_id: r.id.clone(),
        from: active.clone(),
        to: archived.clone(),
        archived: true,
    };
    let t0 = now();
    let got = codex_state::follow_move(&homes, &mv, Duration::from_secs(1)).unwrap();
    assert!(matches!(got, MoveOutcome::Updated { .. }), "{got:?}");
    let (path, flag, at) = row(&db, &r.id).unwrap();
    assert_eq!((PathBuf::from(path), flag), (archived.clone(), 1));
    assert!(at.unwrap() >= t0);
    // Codex already did it (or we did): nothing more.
    let again = codex_state::follow_move(&homes, &mv, Duration::from_secs(1)).unwrap();
    assert_eq!(again, MoveOutcome::AlreadyCurrent);
    // Unarchive back.
    std::fs::rename(&archived, &active).unwrap();
    let back = Move {
        thread_id: r.id.clone(),
        from: archived.clone(),
        to: active.clone(),
        archived: false,
    };
    let got = codex_state::follow_move(&homes, &back, Duration::from_secs(1)).unwrap();
    assert!(matches!(got, MoveOutcome::Updated { .. }), "{got:?}");
    assert_eq!(
        row(&db, &r.id).unwrap(),
        (active.to_str().unwrap().to_owned(), 0, None)
    );
    // A row naming something else is not ours to change.
    Connection::open(&db)
        .unwrap()
        .execute("UPDATE threads SET rollout_path = '/x/y.jsonl'", [])
        .unwrap();
    let got = codex_state::follow_move(&homes, &mv, Duration::from_secs(1)).unwrap();
    assert!(matches!(got, MoveOutcome::RowElsewhere { .. }), "{got:?}");
    assert_eq!(row(&db, &r.id).unwrap().0, "/x/y.jsonl");
}

#[test]
fn socket_audit_and_repair_and_auto_repair_of_a_move_by_another_tool() {
    let (mut fx, db) = small_world("wal");
    let config = fx.root.join("user/rolloutd.toml");
    std::fs::write(&config, "[codex_state]\nauto_repair = true\n").unwrap();
    fx.config = Some(config);
    let agent = Agent::start(&fx);

    let audit = agent.call("codex/audit", serde_json::json!({})).unwrap();
    assert_eq!(audit["summary"]["errors"], 2, "{audit:#}");
    let dry = agent.call("codex/repair", serde_json::json!({})).unwrap();
    assert_eq!(dry["applied"], false);
    assert_eq!(dry["changes"].as_array().unwrap().len(), 2);
    let done = agent
        .call("codex/repair", serde_json::json!({"apply": true}))
        .unwrap();
    assert_eq!(done["applied"], true, "{done:#}");
    assert_eq!(done["quickCheck"], "ok");
    assert!(jpath(&done["backup"]).starts_with(fx.index.parent().unwrap()));
    assert_eq!(row(&db, &tid(1)).unwrap().1, 1);
    let bad = agent
        .call("codex/repair", serde_json::json!({"apply": "yes"}))
        .unwrap_err();
    assert!(bad.to_string().contains("bad params"), "{bad}");

    // Another tool unarchives thread 1 by hand; the agent moves its row along.
    let r1 = rollout(1, 21);
    let from = dunce::canonicalize(fx.home.join("archived_sessions").join(r1.file_name())).unwrap();
    let to_dir = fx.real_home().join("sessions/2026/11/21");
    std::fs::create_dir_all(&to_dir).unwrap();
    std::fs::rename(&from, to_dir.join(r1.file_name())).unwrap();
    let (path, at) = eventually("the row follows the move", || {
        let (path, archived, at) = row(&db, &tid(1)).unwrap();
        (archived == 0).then_some((path, at))
    });
    assert_eq!(PathBuf::from(path), to_dir.join(r1.file_name()));
    assert_eq!(at, None);
}
