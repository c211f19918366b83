//! The index schema and its forward migrations, versioned by `PRAGMA user_version`.
//!
//! Migration `n` takes the schema from version `n` to `n + 1`. The index is a cache of the
//! filesystem, so a version newer than this build knows is refused rather than guessed at
//! (the caller moves the file aside and rebuilds).

use rusqlite::Connection;

/// Each entry upgrades from its index to the next version.
const MIGRATIONS: &[&str] = &[
    // 0 -> 1
    r#"
    CREATE TABLE files (
        path            TEXT PRIMARY KEY,   -- canonical path of the rollout file
        home            TEXT NOT NULL,      -- realpath of the home it was found under
        dev             INTEGER NOT NULL,
        ino             INTEGER NOT NULL,
        size            INTEGER NOT NULL,
        mtime_ns        INTEGER NOT NULL,
        thread_id       TEXT NOT NULL,      -- session_meta.payload.id
        archived        INTEGER NOT NULL,
        compression     TEXT NOT NULL,
        created_at_ms   INTEGER,
        cwd             TEXT,
        source          TEXT,
        originator      TEXT,
        cli_version     TEXT,
        model_provider  TEXT,
        forked_from_id  TEXT,
        git_branch      TEXT,
        title           TEXT
    ) WITHOUT ROWID;
    CREATE INDEX files_thread ON files(thread_id);
    CREATE INDEX files_identity ON files(dev, ino);
    CREATE INDEX files_newest ON files(archived, created_at_ms DESC, thread_id);
    CREATE INDEX files_cwd_newest ON files(cwd, archived, created_at_ms DESC, thread_id);
    CREATE TABLE problems (
        path        TEXT PRIMARY KEY,
        home        TEXT NOT NULL,
        kind        TEXT NOT NULL,
        detail      TEXT NOT NULL,
        thread_id   TEXT
    ) WITHOUT ROWID;
    "#,
    // 1 -> 2: remember threads whose last file went, so that a missing rollout of a thread
    // that once existed is `missing`, not `notMaterialized`.
    r#"
    CREATE TABLE removed_threads (
        thread_id       TEXT PRIMARY KEY,
        path            TEXT NOT NULL,      -- the last file the thread had
        removed_at_ms   INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 2 -> 3: the listing orders by `coalesce(created_at_ms, 0)`; index that expression so
    // "newest 50" walks an index instead of sorting every row.
    r#"
    DROP INDEX files_newest;
    DROP INDEX files_cwd_newest;
    CREATE INDEX files_newest ON files(archived, coalesce(created_at_ms, 0) DESC, thread_id);
    CREATE INDEX files_cwd_newest ON files(cwd, archived, coalesce(created_at_ms, 0) DESC, thread_id);
    "#,
    // 3 -> 4: the stamp carries ctime, which user space cannot set: a rewrite that keeps
    // inode, size and mtime (`touch -r`, a tar restore) is re-read. Old rows get 0, so each
    // is re-read once.
    r#"
    ALTER TABLE files ADD COLUMN ctime_ns INTEGER NOT NULL DEFAULT 0;
    "#,
    // 4 -> 5: thread ids are stored in canonical lower case, the file's own spelling beside
    // it; rows with another spelling get an impossible size so their heads are read again.
    r#"
    ALTER TABLE files ADD COLUMN thread_id_as_written TEXT;
    UPDATE files SET thread_id_as_written = thread_id, thread_id = lower(thread_id), size = -1
        WHERE thread_id <> lower(thread_id);
    UPDATE problems SET thread_id = lower(thread_id) WHERE thread_id <> lower(thread_id);
    UPDATE OR REPLACE removed_threads SET thread_id = lower(thread_id)
        WHERE thread_id <> lower(thread_id);
    "#,
    // 5 -> 6: the stamp carries the birth time, so a file moved is told from a new file that
    // got a freed inode number again. Old rows get 0 and are re-read once.
    r#"
    ALTER TABLE files ADD COLUMN btime_ns INTEGER NOT NULL DEFAULT 0;
    "#,
];

/// The secondary indexes of `files` that a bulk load into an empty index drops and builds
/// once after the rows (see `Index::begin_bulk_load`), as the migrations above define them.
/// `files_thread` is not among them: each write's change computation reads it.
pub const DEFERRED_INDEXES: &[(&str, &str)] = &[
    (
        "files_identity",
        "CREATE INDEX IF NOT EXISTS files_identity ON files(dev, ino)",
    ),
    (
        "files_newest",
        "CREATE INDEX IF NOT EXISTS files_newest \
         ON files(archived, coalesce(created_at_ms, 0) DESC, thread_id)",
    ),
    (
        "files_cwd_newest",
        "CREATE INDEX IF NOT EXISTS files_cwd_newest \
         ON files(cwd, archived, coalesce(created_at_ms, 0) DESC, thread_id)",
    ),
];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Why the schema could not be brought up to date.
#[derive(Debug)]
pub enum SchemaError {
    /// Written by a newer rolloutd.
    TooNew(i64),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for SchemaError {
    fn from(e: rusqlite::Error) -> Self {
        SchemaError::Sql(e)
    }
}

/// Applies every missing migration, each in its own `BEGIN IMMEDIATE` transaction that
/// re-reads the version under the write lock, so two processes creating one index at once
/// cannot both run a migration.
pub fn migrate(conn: &mut Connection) -> Result<(), SchemaError> {
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let current: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current > VERSION {
            return Err(SchemaError::TooNew(current));
        }
        let Some(sql) = MIGRATIONS.get(current as usize) else {
            // A bulk load that stopped before it built them again (see `DEFERRED_INDEXES`).
            for (_, create) in DEFERRED_INDEXES {
                tx.execute_batch(create)?;
            }
            tx.commit()?;
            return Ok(());
        };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", current + 1)?;
        tx.commit()?;
    }
}
