//! Issue 13 against Codex's state DB: the audit's spelling findings fit the case (items 6
//! and 7), and restoring an older backup never silently reverts Codex's changes (item 14).

mod common;

use std::path::{Path, PathBuf};

use common::{tid, Fixture, Rollout};
use rusqlite::{params, Connection};
use serde_json::Value;

/// The columns of Codex 0.169's `threads` that rolloutd reads or Codex requires on insert,
/// and `backfill_state`, complete.
const DDL: &str = r#"
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
    archived INTEGER NOT NULL DEFAULT 0,
    archived_at INTEGER,
    cli_version TEXT NOT NULL DEFAULT ''
);
CREATE TABLE backfill_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    status TEXT NOT NULL,
    last_watermark TEXT,
    last_success_at INTEGER,
    updated_at INTEGER NOT NULL
);
INSERT INTO backfill_state VALUES (1, 'complete', NULL, 1795287722, 1795287722);
"#;

fn create_db(dir: &Path) -> PathBuf {
    let path = dir.join("state_5.sqlite");
    let conn = Connection::open(&path).unwrap();
    conn.query_row("PRAGMA journal_mode=wal", [], |_| Ok(()))
        .unwrap();
    conn.execute_batch(DDL).unwrap();
    path
}

fn insert(db: &Path, id: &str, path: &Path, archived: i64, archived_at: Option<i64>) {
    let conn = Connection::open(db).unwrap();
    conn.execute(
        "INSERT INTO threads (id, rollout_path, created_at, updated_at, source, model_provider, \
         cwd, title, sandbox_policy, approval_mode, archived, archived_at) \
         VALUES (?1, ?2, 1795287722, 1795287722, 'exec', 'p', '/w', 't', '{}', 'never', ?3, ?4)",
        params![id, path.to_str().unwrap(), archived, archived_at],
    )
    .unwrap();
}

fn rollout(n: u32) -> Rollout {
    Rollout::new(&tid(n), "2026-11-21T10:00:00.000Z", "/w", "t").base_len(300)
}

fn findings<'a>(v: &'a Value, thread: &str) -> Vec<&'a Value> {
    v["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("no findings in {v}"))
        .iter()
        .filter(|f| f["row"]["threadId"] == thread || f["threadId"] == thread)
        .collect()
}

// Item 7: a row in Codex's own spelling of a symlinked home (CODEX_HOME unset) is healthy;
// the row Codex rewrote to the realpath (after a resume through it) is information, with
// advice that fits (no "set CODEX_HOME" when it is unset).
#[test]
fn audit_spelling_findings_fit_the_case() {
    let fx = Fixture::symlinked();
    let real = fx.real_home();
    let db = create_db(&real);
    let a = rollout(1);
    let a_path = fx.write_active(&a); // configured (symlinked) spelling
    insert(&db, &a.id, &a_path, 0, None);
    let b = rollout(2);
    let b_path = dunce::canonicalize(fx.write_active(&b)).unwrap();
    insert(&db, &b.id, &b_path, 0, None); // realpath, as Codex rewrites it

    let out = fx.run(&["codex", "audit"]);
    assert_eq!(out.code, 0, "no error: {out:?}");
    assert!(
        findings(&out.json, &a.id).is_empty(),
        "Codex's own spelling is healthy: {:#}",
        out.json
    );
    let fb = findings(&out.json, &b.id);
    assert_eq!(fb.len(), 1, "{:#}", out.json);
    assert_eq!(fb[0]["kind"], "rowAliasSpelling");
    assert_eq!(fb[0]["severity"], "info");
    assert_eq!(fb[0]["codexHomeSet"], false);
    assert_eq!(fb[0]["codexSpelling"], serde_json::json!(fx.home));
    let why = fb[0]["fix"]["why"].as_str().unwrap();
    assert!(
        !why.contains("CODEX_HOME"),
        "advice fits an unset CODEX_HOME: {why}"
    );
    assert!(fb[0]["evidence"]
        .as_str()
        .unwrap()
        .contains("CODEX_HOME is unset"));
    let repair = fx.run(&["codex", "repair"]);
    assert_eq!(
        repair.json["changes"].as_array().unwrap().len(),
        0,
        "{repair:?}"
    );
}

// Item 6: a row naming `.jsonl` when Codex compressed the file to `.jsonl.zst` is not "both
// spellings name the same file" (the path does not exist): it says the sibling is the file.
#[test]
fn a_row_whose_file_was_compressed_is_a_sibling_not_an_alias() {
    let fx = Fixture::symlinked();
    let real = fx.real_home();
    let db = create_db(&real);
    let r = rollout(3);
    let zst = fx.write_active_zst(&r);
    let plain = fx.home.join(r.day_dir()).join(r.file_name());
    insert(&db, &r.id, &plain, 0, None);

    let out = fx.run(&["codex", "audit"]);
    assert_eq!(out.code, 0, "{out:?}");
    let f = findings(&out.json, &r.id);
    assert_eq!(f.len(), 1, "{:#}", out.json);
    assert_eq!(f[0]["kind"], "rowCompressedSibling", "{:#}", out.json);
    assert_eq!(f[0]["severity"], "info");
    assert_eq!(f[0]["file"], serde_json::json!(zst));
    assert!(f[0]["evidence"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
}

fn row(db: &Path, id: &str) -> (String, i64, Option<i64>) {
    let conn = Connection::open(db).unwrap();
    conn.query_row(
        "SELECT rollout_path, archived, archived_at FROM threads WHERE id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .unwrap()
}

/// Two threads in Codex's DB, 1's row naming a day directory it was never in and 2
/// healthy; `codex repair --apply` has fixed 1's row after taking `backup`.
struct Repaired {
    fx: Fixture,
    db: PathBuf,
    r1: Rollout,
    stale: PathBuf,
    r2: Rollout,
    p2: PathBuf,
    backup: PathBuf,
}

fn repaired() -> Repaired {
    let fx = Fixture::new();
    let db = create_db(&fx.home);
    let r1 = rollout(1);
    let p1 = fx.write_active(&r1);
    let stale = fx.home.join("sessions/2026/11/20").join(r1.file_name());
    insert(&db, &r1.id, &stale, 0, None);
    let r2 = rollout(2);
    let p2 = fx.write_active(&r2);
    insert(&db, &r2.id, &p2, 0, None);
    let repair = fx.run(&["codex", "repair", "--apply"]);
    assert_eq!(repair.code, 0, "{repair:?}");
    let backup = PathBuf::from(repair.json["backup"].as_str().unwrap());
    assert_eq!(row(&db, &r1.id).0, p1.to_str().unwrap());
    Repaired {
        fx,
        db,
        r1,
        stale,
        r2,
        p2,
        backup,
    }
}

/// A turn Codex ran after the backup changes columns rolloutd never writes (`title`,
/// `updated_at`) and other tables: a restore would silently put those back, so it is
/// refused without --force and names them.
#[test]
fn restoring_over_codex_changes_to_other_columns_or_tables_needs_force() {
    let Repaired {
        fx,
        db,
        r1,
        stale,
        r2,
        backup,
        ..
    } = repaired();

    // Codex renames thread 2 and runs a turn on thread 1 (which rolloutd repaired).
    let conn = Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE threads SET title = 'renamed', updated_at = 1795300000 WHERE id = ?1",
        params![r2.id],
    )
    .unwrap();
    conn.execute(
        "UPDATE threads SET updated_at = 1795300001 WHERE id = ?1",
        params![r1.id],
    )
    .unwrap();
    drop(conn);
    let restore = |force: bool| {
        let mut args = vec!["codex".as_ref(), "restore".as_ref(), backup.as_os_str()];
        if force {
            args.push("--force".as_ref());
        }
        fx.run_os(&args)
    };
    let out = restore(false);
    assert_eq!(out.code, 2, "refused: {out:?}");
    assert_eq!(out.error_reason(), "changedSinceBackup", "{out:?}");
    let message = out.error_message();
    assert!(
        message.contains(&r2.id) && message.contains("title"),
        "{out:?}"
    );
    assert!(
        message.contains(&r1.id) && message.contains("updated_at"),
        "{out:?}"
    );

    // Another table changed only: refused too, naming the table.
    let conn = Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE threads SET title = 't', updated_at = 1795287722 WHERE id = ?1",
        params![r2.id],
    )
    .unwrap();
    conn.execute(
        "UPDATE threads SET updated_at = 1795287722 WHERE id = ?1",
        params![r1.id],
    )
    .unwrap();
    conn.execute("UPDATE backfill_state SET updated_at = 1795300002", [])
        .unwrap();
    drop(conn);
    let out = restore(false);
    assert_eq!(out.code, 2, "refused: {out:?}");
    assert!(out.error_message().contains("backfill_state"), "{out:?}");

    let out = restore(true);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["forced"], true, "{out:?}");
    assert_eq!(
        out.json["revertedTables"],
        serde_json::json!(["backfill_state"])
    );
    assert_eq!(row(&db, &r1.id).0, stale.to_str().unwrap());
}

// Item 14: restoring a backup taken before Codex archived a thread shows that it would
// revert that row and refuses without --force; the repair's own changes are undone freely.
#[test]
fn restoring_an_older_backup_shows_what_it_reverts_and_needs_force_for_codex_changes() {
    let Repaired {
        fx,
        db,
        r1,
        stale,
        r2,
        p2,
        backup,
    } = repaired();

    // Only rolloutd's own repair since the backup: restore needs no --force and says what
    // it reverts.
    let restore = |force: bool| {
        let mut args = vec!["codex".as_ref(), "restore".as_ref(), backup.as_os_str()];
        if force {
            args.push("--force".as_ref());
        }
        fx.run_os(&args)
    };
    let out = restore(false);
    assert_eq!(out.code, 0, "{out:?}");
    let reverted = out.json["reverted"].as_array().unwrap();
    assert_eq!(reverted.len(), 1, "{out:?}");
    assert_eq!(reverted[0]["threadId"], r1.id);
    assert_eq!(reverted[0]["byRolloutd"], true);
    assert_eq!(row(&db, &r1.id).0, stale.to_str().unwrap());

    // Repair again, then Codex archives thread 2 (moves the file, updates its row).
    let repair = fx.run(&["codex", "repair", "--apply"]);
    assert_eq!(repair.code, 0, "{repair:?}");
    let backup2 = PathBuf::from(repair.json["backup"].as_str().unwrap());
    let archived = fx.home.join("archived_sessions").join(r2.file_name());
    std::fs::rename(&p2, &archived).unwrap();
    let conn = Connection::open(&db).unwrap();
    conn.execute(
        "UPDATE threads SET rollout_path = ?1, archived = 1, archived_at = 1795290000 WHERE id = ?2",
        params![archived.to_str().unwrap(), r2.id],
    )
    .unwrap();
    drop(conn);
    let before = row(&db, &r2.id);

    let mut args = vec!["codex".as_ref(), "restore".as_ref(), backup2.as_os_str()];
    let out = fx.run_os(&args);
    assert_eq!(out.code, 2, "refused: {out:?}");
    assert_eq!(out.error_reason(), "changedSinceBackup", "{out:?}");
    assert!(
        out.error_message().contains(&r2.id),
        "names the row: {out:?}"
    );
    assert!(out.error_message().contains("--force"), "{out:?}");
    assert_eq!(row(&db, &r2.id), before, "nothing restored");

    args.push("--force".as_ref());
    let out = fx.run_os(&args);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json["forced"], true);
    let reverted = out.json["reverted"].as_array().unwrap();
    let r2_revert = reverted
        .iter()
        .find(|r| r["threadId"] == serde_json::json!(r2.id))
        .unwrap_or_else(|| panic!("{out:?}"));
    assert_eq!(r2_revert["byRolloutd"], false);
    assert_eq!(
        row(&db, &r2.id).1,
        0,
        "forced: the archive state was reverted"
    );
}
