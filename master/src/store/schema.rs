//! The database's schema version (`PRAGMA user_version`) and the
//! migrations that bring an older database up to it.
//!
//! Version 1 is the schema the master has always created with `CREATE
//! TABLE IF NOT EXISTS` (`devices`, `tasks`, `device_keys`); a database
//! without a version (0, a first start or a master from before versions)
//! gets those tables and counts as version 1. Every later change is a
//! [`Migration`] in [`MIGRATIONS`], from version N to N + 1, run in order
//! when the store opens. A step that can run in a transaction runs in one
//! with the new `user_version` written in the same transaction, so a crash
//! leaves the database at N or at N + 1, never half way. A step that
//! cannot (SQLite refuses `VACUUM` inside a transaction) is written so that
//! running it again is harmless, and the version is raised after it.
//!
//! A database written by a newer master is refused (the store's
//! `TooNew`): this master cannot know what that schema means.
//! `master/tests/fixtures/schema-v1.db`, written by the master of version
//! 1, must keep opening with its tasks and devices after every change
//! (`tests/master/schema.rs`).

use super::{finished_condition, live_condition};
use rusqlite::Connection;

/// The version of the tables `CREATE TABLE IF NOT EXISTS` makes.
pub(crate) const BASE_VERSION: i64 = 1;

/// The version this master writes: the base plus one per migration.
pub(crate) const VERSION: i64 = BASE_VERSION + MIGRATIONS.len() as i64;

/// One step from a version to the next.
pub(crate) struct Migration {
    /// What it changes, for the log.
    what: &'static str,
    /// Whether it runs inside a transaction (with the version raised in
    /// it); when not, running it twice must be harmless.
    in_transaction: bool,
    /// The change itself.
    run: fn(&Connection) -> rusqlite::Result<()>,
}

/// Every migration, in order: the one at index `i` takes a database from
/// version `BASE_VERSION + i` to `BASE_VERSION + i + 1`.
pub(crate) const MIGRATIONS: &[Migration] = &[
    // 1 → 2.
    Migration {
        what: "incremental auto-vacuum, so the file shrinks after pruning",
        // `auto_vacuum` changes on an existing database only through a
        // `VACUUM`, which cannot run in a transaction; both are harmless
        // to run again.
        in_transaction: false,
        run: |connection| connection.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;"),
    },
    // 2 → 3.
    Migration {
        what:
            "the history indexes: finished tasks are read from the store, live ones loaded at start",
        // The indexes the master reads its history through: finished tasks
        // live in the store only (see `core/history.rs`). Each is partial, so
        // a task moving between live states touches only `tasks_live`, and a
        // finished one enters the other two once. `tasks_live` loads the live
        // tasks at start without reading the history; `tasks_finished` serves
        // listings of every state by `seq`, and `tasks_finished_by_state`
        // those of one state (and the counts per state at start). On an older
        // database of many tasks this step takes one pass over it, once. The
        // conditions are `OR` chains, not `IN` lists (see `live_condition`).
        in_transaction: true,
        run: |connection| {
            connection.execute_batch(concat!(
                "CREATE INDEX IF NOT EXISTS tasks_live ON tasks(seq) WHERE ",
                live_condition!(),
                "; CREATE INDEX IF NOT EXISTS tasks_finished ON tasks(seq) WHERE ",
                finished_condition!(),
                "; CREATE INDEX IF NOT EXISTS tasks_finished_by_state ON tasks(state, seq) WHERE ",
                finished_condition!(),
                ";"
            ))
        },
    },
    // 3 → 4.
    Migration {
        what: "the finish time of finished tasks, indexed, so retention deletes by age",
        // Retention (`store/retention.rs`) deletes finished tasks older
        // than an age, per state: the column holds when a task finished
        // (its submission time for a finished record without one), written
        // with every finished task, and the partial index on (state, finish
        // time) lets a pruning batch find its oldest rows of the states it
        // prunes without reading a record. Filled here from the records
        // once; live tasks keep NULL (never pruned).
        in_transaction: true,
        run: |connection| {
            connection.execute_batch(concat!(
                "ALTER TABLE tasks ADD COLUMN finished_unix_ms INTEGER;
                 UPDATE tasks SET finished_unix_ms = coalesce(
                         json_extract(record, '$.finished_unix_ms'),
                         json_extract(record, '$.submitted_unix_ms'), 0)
                     WHERE ",
                finished_condition!(),
                "; CREATE INDEX IF NOT EXISTS tasks_finished_at ON tasks(state, finished_unix_ms) WHERE ",
                finished_condition!(),
                ";"
            ))
        },
    },
    // 4 → 5.
    Migration {
        what: "the highest task number ever used, kept when pruning deletes its task",
        // A task id the master generates holds a number above every one it
        // has used (`records::generated_seq`); the number must survive the
        // pruning of the tasks that held it, or a restart would generate
        // an id again that a finished task in the store has. `meta` keeps
        // it (`max_seq`), raised with every commit (`Store::commit`);
        // filled here from the tasks there are.
        in_transaction: true,
        run: |connection| {
            connection.execute_batch(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 INSERT OR IGNORE INTO meta (key, value)
                     SELECT 'max_seq', coalesce(max(seq), 0) FROM tasks;",
            )
        },
    },
    // 5 → 6.
    Migration {
        what: "the settings table, for settings changed at run time (the placement strategy)",
        // One row per setting the master changes at run time and must keep
        // across restarts (`retire strategy`), as text; the core writes
        // them like any other record (`StoreOp::PutSetting`).
        in_transaction: true,
        run: |connection| {
            connection.execute_batch(
                "CREATE TABLE IF NOT EXISTS settings (
                     key TEXT PRIMARY KEY,
                     value TEXT NOT NULL
                 );",
            )
        },
    },
];

/// Brings a database at version `found` (at most [`VERSION`]) up to
/// [`VERSION`] with [`MIGRATIONS`].
pub(crate) fn migrate(connection: &Connection, found: i64) -> rusqlite::Result<()> {
    migrate_with(connection, found, MIGRATIONS)
}

/// Runs `steps` (the first one from [`BASE_VERSION`]) on a database at
/// version `found`, each from its version to the next, and records each
/// version reached.
fn migrate_with(connection: &Connection, found: i64, steps: &[Migration]) -> rusqlite::Result<()> {
    let mut version = found.max(BASE_VERSION);
    if found < BASE_VERSION {
        set_version(connection, version)?;
    }
    let start = usize::try_from(version - BASE_VERSION).unwrap_or(usize::MAX);
    for step in steps.iter().skip(start) {
        let next = version + 1;
        log::info!("database schema {version} → {next}: {}", step.what);
        if step.in_transaction {
            let transaction = connection.unchecked_transaction()?;
            (step.run)(&transaction)?;
            set_version(&transaction, next)?;
            transaction.commit()?;
        } else {
            (step.run)(connection)?;
            set_version(connection, next)?;
        }
        version = next;
    }
    Ok(())
}

fn set_version(connection: &Connection, version: i64) -> rusqlite::Result<()> {
    connection.pragma_update(None, "user_version", version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(connection: &Connection) -> i64 {
        connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("user_version")
    }

    fn names(connection: &Connection) -> Vec<String> {
        let mut statement = connection
            .prepare("SELECT name FROM t ORDER BY rowid")
            .expect("prepare");
        let rows = statement
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<Result<Vec<String>, _>>();
        rows.expect("rows")
    }

    const STEPS: &[Migration] = &[
        Migration {
            what: "2",
            in_transaction: true,
            run: |c| c.execute_batch("INSERT INTO t VALUES ('to 2')"),
        },
        Migration {
            what: "3",
            in_transaction: true,
            run: |c| c.execute_batch("INSERT INTO t VALUES ('to 3')"),
        },
        Migration {
            what: "4 fails half way",
            in_transaction: true,
            run: |c| c.execute_batch("INSERT INTO t VALUES ('to 4'); SELECT no_such_function();"),
        },
    ];

    /// Steps run in order from the version found, each once; a step that
    /// fails leaves its changes and the version as they were before it.
    #[test]
    fn migrations_run_in_order_from_the_version_found_and_a_failed_one_changes_nothing() {
        for (found, ran) in [
            (0, vec!["to 2", "to 3"]),
            (1, vec!["to 2", "to 3"]),
            (2, vec!["to 3"]),
            (3, vec![]),
        ] {
            let connection = Connection::open_in_memory().expect("open");
            connection
                .execute_batch("CREATE TABLE t (name TEXT)")
                .expect("table");
            set_version(&connection, found).expect("version");
            migrate_with(&connection, found, &STEPS[..2]).expect("migrate");
            assert_eq!(names(&connection), ran, "from {found}");
            assert_eq!(version(&connection), 3, "from {found}");

            let failed = migrate_with(&connection, 3, STEPS);
            assert!(failed.is_err());
            assert_eq!(names(&connection), ran, "the failed step left nothing");
            assert_eq!(version(&connection), 3);
        }
    }

    #[test]
    fn the_version_is_the_base_plus_one_per_migration() {
        assert_eq!(VERSION, BASE_VERSION + MIGRATIONS.len() as i64);
        assert_eq!(VERSION, 6);
    }
}
