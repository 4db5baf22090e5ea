//! The embedded history: an append-only event log in SQLite (WAL, `synchronous=FULL`,
//! schema migrations by `user_version`), the per-reconcile [`Report`]s, and the queries
//! behind `palisade report`.
//!
//! Every write is one transaction that is durable when `append` returns; the controller
//! writes before it reports, so a crash loses nothing that was reported. Rows are never
//! updated (a trigger refuses it); retention deletes old rows explicitly and records how
//! many, so nothing disappears silently.
//!
//! Modules: this one owns the database (schema, writes, queries); `event` the typed
//! events and records; `compliance` the report built from them.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::check::Finding;

pub mod chain;
mod compliance;
pub mod event;

pub use compliance::{
    ComplianceReport, ControlStatus, DriftItem, FindingSpan, Point, RevisionItem, Summary,
    TargetSummary, compliance,
};
pub use event::{
    Body, ChangeRecord, ChangeStatus, DriftAttributed, DriftDetected, Event, EventData,
    HistoryRewritten, NewEvent, ReconcileResult, Reconciled, Report, ResourceState, ResourceStatus,
    Retention, RevisionEnforced, RevisionRef, RevisionRejected, SignatureState, Trigger, kind,
};

/// Schema migrations, applied in order; `PRAGMA user_version` counts the applied ones.
const MIGRATIONS: &[&str] = &[
    // 1: events, open findings, reports.
    "CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        target TEXT,
        revision TEXT,
        resource TEXT,
        controls TEXT NOT NULL DEFAULT '',
        data TEXT NOT NULL
     );
     CREATE INDEX events_at ON events(at);
     CREATE INDEX events_kind_at ON events(kind, at);
     CREATE TRIGGER events_append_only BEFORE UPDATE ON events
        BEGIN SELECT RAISE(ABORT, 'the history is append-only'); END;
     CREATE TABLE open_findings (
        target TEXT NOT NULL,
        key TEXT NOT NULL,
        finding TEXT NOT NULL,
        opened_at INTEGER NOT NULL,
        PRIMARY KEY (target, key)
     );
     CREATE TABLE reports (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        target TEXT NOT NULL,
        revision TEXT,
        report TEXT NOT NULL
     );
     CREATE INDEX reports_target_at ON reports(target, at);",
    // 2: the ownership record (see `crate::ownership`).
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE owned (
        target TEXT NOT NULL,
        kind TEXT NOT NULL,
        id TEXT NOT NULL,
        owner TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revision TEXT,
        how TEXT NOT NULL,
        PRIMARY KEY (target, kind, id)
     );
     CREATE TABLE owned_pending (
        target TEXT NOT NULL,
        kind TEXT NOT NULL,
        owner TEXT NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (target, kind, owner)
     );
     CREATE TABLE ownership_bootstrap (target TEXT PRIMARY KEY, at INTEGER NOT NULL);",
    // 3: durable loop state (see `crate::state`).
    "CREATE TABLE target_state (
        target TEXT PRIMARY KEY,
        revision TEXT,
        desired TEXT NOT NULL,
        at INTEGER NOT NULL
     );",
    // 4: flap history per target (see `crate::state`).
    "CREATE TABLE flap_state (
        target TEXT PRIMARY KEY,
        flaps TEXT NOT NULL,
        at INTEGER NOT NULL
     );",
    // 5: the hash chain over events (see `chain`); reports and open findings are never
    // rewritten either.
    "ALTER TABLE events ADD COLUMN prev TEXT;
     ALTER TABLE events ADD COLUMN hash TEXT;
     CREATE TRIGGER reports_append_only BEFORE UPDATE ON reports
        BEGIN SELECT RAISE(ABORT, 'the history is append-only'); END;
     CREATE TRIGGER open_findings_no_rewrite BEFORE UPDATE ON open_findings
        BEGIN SELECT RAISE(ABORT, 'the history is append-only'); END;",
    // 6: the notification outbox (see `crate::notify`): the events themselves are the
    // outbox; each sink keeps the id of the last event it has dealt with, and what it
    // gave up on.
    "CREATE TABLE notify_cursor (
        sink TEXT PRIMARY KEY,
        event_id INTEGER NOT NULL,
        at INTEGER NOT NULL
     );
     CREATE TABLE notify_dead_letter (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        sink TEXT NOT NULL,
        first_event INTEGER NOT NULL,
        last_event INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT NOT NULL,
        body TEXT NOT NULL,
        at INTEGER NOT NULL
     );",
    // 7: drift still waiting for its author in the audit log, per target (see
    // `crate::state`): asked again after a restart.
    "CREATE TABLE attribution_state (
        target TEXT PRIMARY KEY,
        pending TEXT NOT NULL,
        at INTEGER NOT NULL
     );",
];

/// A history failure.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// SQLite said no.
    #[error("history database {path}: {source}")]
    Sqlite {
        /// Database file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: rusqlite::Error,
    },
    /// The database belongs to another installation than the one configured.
    #[error(
        "history database {path} belongs to installation {stored}, but --installation-id says {pinned}; refusing to mix two installations' ownership records"
    )]
    Installation {
        /// Database file.
        path: PathBuf,
        /// The id kept in the database.
        stored: String,
        /// The id configured.
        pinned: String,
    },
    /// The database is newer than this binary.
    #[error(
        "history database {path} has schema version {found}; this palisade knows up to {known}"
    )]
    TooNew {
        /// Database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        known: usize,
    },
}

/// The key that identifies a finding across reconciles.
pub fn finding_key(f: &Finding) -> String {
    format!(
        "{:?}|{}|{}|{}",
        f.kind,
        f.guardrail.as_deref().unwrap_or("-"),
        f.resource,
        f.message
    )
}

fn controls_column(c: &[String]) -> String {
    if c.is_empty() {
        String::new()
    } else {
        format!(",{},", c.join(","))
    }
}

/// The history database.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    conn: Mutex<Connection>,
}

/// Which events a query wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// From (Unix ms, inclusive).
    pub since: Option<i64>,
    /// Until (Unix ms, inclusive).
    pub until: Option<i64>,
    /// Only this target.
    pub target: Option<String>,
    /// Only events naming this control.
    pub control: Option<String>,
    /// Only these kinds.
    pub kinds: Vec<String>,
}

impl Store {
    /// Open (creating and migrating) the database at `path`.
    ///
    /// # Errors
    /// The file cannot be opened, or its schema is newer than this binary.
    pub fn open(path: &Path) -> Result<Store, HistoryError> {
        let e = |source| HistoryError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(e)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(e)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(e)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(e)?;
        Store::migrated(conn, path)
    }

    /// A database in memory, migrated like a file (unit tests of the loop; nothing
    /// survives the process).
    ///
    /// # Errors
    /// SQLite failed.
    pub fn in_memory() -> Result<Store, HistoryError> {
        let path = Path::new(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| HistoryError::Sqlite {
            path: path.to_path_buf(),
            source,
        })?;
        Store::migrated(conn, path)
    }

    fn migrated(mut conn: Connection, path: &Path) -> Result<Store, HistoryError> {
        let e = |source| HistoryError::Sqlite {
            path: path.to_path_buf(),
            source,
        };
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(e)?;
        if version as usize > MIGRATIONS.len() {
            return Err(HistoryError::TooNew {
                path: path.to_path_buf(),
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = conn.transaction().map_err(e)?;
            tx.execute_batch(m).map_err(e)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(e)?;
            tx.commit().map_err(e)?;
        }
        Ok(Store {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    /// Open an existing database read-only (a `plan` that must write nothing). A
    /// database older than this binary is read as it is.
    ///
    /// # Errors
    /// The file does not exist or cannot be opened.
    pub fn open_read_only(path: &Path) -> Result<Store, HistoryError> {
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| HistoryError::Sqlite {
            path: path.to_path_buf(),
            source,
        })?;
        // A newer schema means a newer meaning of the record: refused, as `open` does.
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|source| HistoryError::Sqlite {
                path: path.to_path_buf(),
                source,
            })?;
        if version as usize > MIGRATIONS.len() {
            return Err(HistoryError::TooNew {
                path: path.to_path_buf(),
                found: version,
                known: MIGRATIONS.len(),
            });
        }
        Ok(Store {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn err(&self, source: rusqlite::Error) -> HistoryError {
        HistoryError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    pub(crate) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Append `events` at `at` (Unix ms) in one durable transaction.
    ///
    /// # Errors
    /// SQLite failed; nothing was written.
    pub fn append(&self, at: i64, events: &[NewEvent]) -> Result<(), HistoryError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        insert_events(&tx, at, events).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Append events with their own times in one durable transaction (imports, tests,
    /// benchmarks).
    ///
    /// # Errors
    /// SQLite failed; nothing was written.
    pub fn append_many(&self, events: &[(i64, NewEvent)]) -> Result<(), HistoryError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        insert_rows(&tx, events.iter().map(|(at, e)| (*at, e))).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Record one reconcile: its events (each with its own time), its report, and the findings that opened and
    /// closed since the last one (computed here, against the stored open findings), in
    /// one durable transaction. Returns the finding events written.
    ///
    /// # Errors
    /// SQLite failed; nothing was written.
    pub fn record_reconcile(
        &self,
        report: &Report,
        events: &[(i64, NewEvent)],
    ) -> Result<Vec<NewEvent>, HistoryError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let revision = report.revision.as_ref().map(|r| r.commit.as_str());
        let mut open: HashMap<String, String> = HashMap::new();
        {
            let mut stmt = tx
                .prepare("SELECT key, finding FROM open_findings WHERE target = ?1")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map(params![report.target], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(|e| self.err(e))?;
            for row in rows {
                let (k, v) = row.map_err(|e| self.err(e))?;
                open.insert(k, v);
            }
        }
        let mut finding_events = Vec::new();
        let current: BTreeMap<String, &Finding> = report
            .findings
            .iter()
            .map(|f| (finding_key(f), f))
            .collect();
        for (key, f) in &current {
            if open.remove(key).is_none() {
                let json = json(f).map_err(|e| self.err(e))?;
                tx.execute(
                    "INSERT INTO open_findings (target, key, finding, opened_at) VALUES (?1, ?2, ?3, ?4)",
                    params![report.target, key, json, report.at],
                )
                .map_err(|e| self.err(e))?;
                finding_events.push(
                    NewEvent::new(EventData::FindingOpened((*f).clone()))
                        .target(&report.target)
                        .revision(revision)
                        .resource(&f.resource)
                        .controls(&f.controls),
                );
            }
        }
        for (key, json) in open {
            tx.execute(
                "DELETE FROM open_findings WHERE target = ?1 AND key = ?2",
                params![report.target, key],
            )
            .map_err(|e| self.err(e))?;
            // A finding stored by a version this one cannot read is still closed, and
            // the event keeps its data as it was.
            let ev = match serde_json::from_str::<Finding>(&json) {
                Ok(f) => NewEvent::new(EventData::FindingClosed(f.clone()))
                    .resource(&f.resource)
                    .controls(&f.controls),
                Err(_) => NewEvent {
                    target: None,
                    revision: None,
                    resource: None,
                    controls: Vec::new(),
                    body: Body::read(kind::FINDING_CLOSED.into(), &json),
                },
            };
            finding_events.push(ev.target(&report.target).revision(revision));
        }
        insert_rows(
            &tx,
            events
                .iter()
                .map(|(at, e)| (*at, e))
                .chain(finding_events.iter().map(|e| (report.at, e))),
        )
        .map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO reports (at, target, revision, report) VALUES (?1, ?2, ?3, ?4)",
            params![
                report.at,
                report.target,
                revision,
                json(report).map_err(|e| self.err(e))?
            ],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(finding_events)
    }

    /// Events matching `filter`, oldest first.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn events(&self, filter: &Filter) -> Result<Vec<Event>, HistoryError> {
        let mut out = Vec::new();
        self.for_each(filter, |e| out.push(e))?;
        Ok(out)
    }

    /// Stream the events matching `filter`, oldest first.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn for_each(&self, filter: &Filter, mut f: impl FnMut(Event)) -> Result<(), HistoryError> {
        let mut sql = String::from(
            "SELECT id, at, kind, target, revision, resource, controls, data FROM events WHERE 1=1",
        );
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(s) = filter.since {
            sql.push_str(" AND at >= ?");
            args.push(s.into());
        }
        if let Some(u) = filter.until {
            sql.push_str(" AND at <= ?");
            args.push(u.into());
        }
        if let Some(t) = &filter.target {
            // Revision events belong to every target.
            sql.push_str(" AND (target = ? OR target IS NULL)");
            args.push(t.clone().into());
        }
        if let Some(c) = &filter.control {
            sql.push_str(
                " AND (controls LIKE ? OR kind IN ('revision-enforced', 'revision-rejected'))",
            );
            args.push(format!("%,{c},%").into());
        }
        if !filter.kinds.is_empty() {
            sql.push_str(&format!(
                " AND kind IN ({})",
                vec!["?"; filter.kinds.len()].join(",")
            ));
            args.extend(filter.kinds.iter().map(|k| k.clone().into()));
        }
        sql.push_str(" ORDER BY id");
        let conn = self.conn();
        let mut stmt = conn.prepare(&sql).map_err(|e| self.err(e))?;
        let mut rows = stmt
            .query(rusqlite::params_from_iter(args))
            .map_err(|e| self.err(e))?;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            f(row_event(r).map_err(|e| self.err(e))?);
        }
        Ok(())
    }

    /// Up to `limit` events with an id above `after`, oldest first (the notification
    /// outbox reads the log this way).
    ///
    /// # Errors
    /// SQLite failed.
    pub fn events_after(&self, after: i64, limit: usize) -> Result<Vec<Event>, HistoryError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, at, kind, target, revision, resource, controls, data FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![after, limit as i64], row_event)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    /// The id of the newest event (0 when there is none).
    ///
    /// # Errors
    /// SQLite failed.
    pub fn head_id(&self) -> Result<i64, HistoryError> {
        self.conn()
            .query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// The newest `n` events, newest first.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn recent(&self, n: usize) -> Result<Vec<Event>, HistoryError> {
        let max: Option<i64> = self
            .conn()
            .query_row("SELECT max(id) FROM events", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        let Some(max) = max else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT id, at, kind, target, revision, resource, controls, data FROM events WHERE id > ?1 ORDER BY id DESC")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![max - n as i64], row_event)
            .map_err(|e| self.err(e))?;
        for r in rows {
            out.push(r.map_err(|e| self.err(e))?);
        }
        Ok(out)
    }

    /// The newest report of `target`.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn last_report(&self, target: &str) -> Result<Option<Report>, HistoryError> {
        let conn = self.conn();
        let json: Option<String> = conn
            .query_row(
                "SELECT report FROM reports WHERE target = ?1 ORDER BY id DESC LIMIT 1",
                params![target],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        Ok(json.and_then(|j| serde_json::from_str(&j).ok()))
    }

    /// Delete events and reports older than `before` (Unix ms), and say so in the log
    /// itself. Returns how many events went.
    ///
    /// Never deleted, whatever their age: the `finding-opened` events of findings that
    /// are still open, or that closed within what is kept (reports rebuild a finding's
    /// span from its opening — a violation open longer than the retention must not turn
    /// its control compliant), the newest `revision-enforced` event (it names the
    /// controls the reports list), and events a notification sink has not delivered yet
    /// (after the lowest cursor).
    ///
    /// # Errors
    /// SQLite failed; nothing was deleted.
    pub fn retain(&self, before: i64, now: i64) -> Result<usize, HistoryError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let events = tx
            .execute(
                "DELETE FROM events WHERE at < ?1
                   AND NOT (kind = 'finding-opened' AND EXISTS (
                       SELECT 1 FROM open_findings o
                       WHERE o.target = events.target AND o.opened_at = events.at
                         AND json_extract(o.finding, '$.kind') IS json_extract(events.data, '$.kind')
                         AND json_extract(o.finding, '$.resource') IS json_extract(events.data, '$.resource')
                         AND json_extract(o.finding, '$.guardrail') IS json_extract(events.data, '$.guardrail')
                         AND json_extract(o.finding, '$.message') IS json_extract(events.data, '$.message')))
                   AND NOT (kind = 'finding-opened' AND EXISTS (
                       SELECT 1 FROM events c
                       WHERE c.kind = 'finding-closed' AND c.at >= ?1
                         AND c.target IS events.target AND c.at >= events.at
                         AND json_extract(c.data, '$.kind') IS json_extract(events.data, '$.kind')
                         AND json_extract(c.data, '$.resource') IS json_extract(events.data, '$.resource')
                         AND json_extract(c.data, '$.guardrail') IS json_extract(events.data, '$.guardrail')
                         AND json_extract(c.data, '$.message') IS json_extract(events.data, '$.message')))
                   AND NOT (kind = 'revision-enforced' AND id = (
                       SELECT max(id) FROM events WHERE kind = 'revision-enforced'))
                   AND id <= (SELECT coalesce(min(event_id), 9223372036854775807) FROM notify_cursor)",
                params![before],
            )
            .map_err(|e| self.err(e))?;
        let reports = tx
            .execute("DELETE FROM reports WHERE at < ?1", params![before])
            .map_err(|e| self.err(e))?;
        if events + reports > 0 {
            insert_events(
                &tx,
                now,
                &[NewEvent::new(EventData::Retention(Retention {
                    before,
                    events_deleted: events,
                    reports_deleted: reports,
                }))],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(events)
    }

    /// `PRAGMA integrity_check`: `ok` when the file is sound.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn integrity_check(&self) -> Result<String, HistoryError> {
        self.conn()
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// When the oldest event kept was written (Unix ms), if there is any.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn first_event_at(&self) -> Result<Option<i64>, HistoryError> {
        self.conn()
            .query_row("SELECT min(at) FROM events", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    /// Number of events.
    ///
    /// # Errors
    /// SQLite failed.
    pub fn count(&self) -> Result<i64, HistoryError> {
        self.conn()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .map_err(|e| self.err(e))
    }
}

/// An `events` row (`id, at, kind, target, revision, resource, controls, data`).
fn row_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    let controls: String = r.get(6)?;
    let data: String = r.get(7)?;
    Ok(Event {
        id: r.get(0)?,
        at: r.get(1)?,
        event: NewEvent {
            body: Body::read(r.get(2)?, &data),
            target: r.get(3)?,
            revision: r.get(4)?,
            resource: r.get(5)?,
            controls: controls
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
        },
    })
}

pub(crate) fn insert_events(
    tx: &rusqlite::Transaction<'_>,
    at: i64,
    events: &[NewEvent],
) -> rusqlite::Result<()> {
    insert_rows(tx, events.iter().map(|e| (at, e)))
}

/// Insert events with their own times, in order, linking each to the one before it:
/// the chain's head is read once per call.
fn insert_rows<'e>(
    tx: &rusqlite::Transaction<'_>,
    rows: impl Iterator<Item = (i64, &'e NewEvent)>,
) -> rusqlite::Result<()> {
    // Each row is linked to the one before it (see `chain`).
    let mut prev: String = tx
        .prepare_cached("SELECT hash FROM events ORDER BY id DESC LIMIT 1")?
        .query_row([], |r| r.get::<_, Option<String>>(0))
        .optional()?
        .flatten()
        .unwrap_or_default();
    let mut stmt = tx.prepare_cached(
        "INSERT INTO events (at, kind, target, revision, resource, controls, data, prev, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for (at, e) in rows {
        let data = match &e.body {
            Body::Typed(d) => d.data_json(),
            Body::Unrecognized { data, .. } => data.to_string(),
        };
        let controls = controls_column(&e.controls);
        let row = chain::Row {
            at,
            kind: e.kind(),
            target: e.target.as_deref(),
            revision: e.revision.as_deref(),
            resource: e.resource.as_deref(),
            controls: &controls,
            data: &data,
        };
        let hash = row.hash(&prev);
        stmt.execute(params![
            at,
            e.kind(),
            e.target,
            e.revision,
            e.resource,
            controls,
            data,
            prev,
            hash
        ])?;
        prev = hash;
    }
    Ok(())
}

/// JSON for a column; a value that cannot be encoded is an error, never an empty string.
fn json<T: serde::Serialize>(v: &T) -> rusqlite::Result<String> {
    serde_json::to_string(v).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}
