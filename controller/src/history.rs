//! The embedded history: an append-only event log in SQLite (WAL, `synchronous=FULL`,
//! schema migrations by `user_version`), the per-reconcile [`Report`]s, and the queries
//! behind `palisade report`.
//!
//! Every write is one transaction that is durable when `append` returns; the controller
//! writes before it reports, so a crash loses nothing that was reported. Rows are never
//! updated (a trigger refuses it); retention deletes old rows explicitly and records how
//! many, so nothing disappears silently.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::check::Finding;

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
];

/// Kinds of events.
pub mod kind {
    /// A revision became the enforced one.
    pub const REVISION_ENFORCED: &str = "revision-enforced";
    /// A revision was refused.
    pub const REVISION_REJECTED: &str = "revision-rejected";
    /// An accepted revision does not descend from the one enforced before (force-push).
    pub const HISTORY_REWRITTEN: &str = "history-rewritten";
    /// An out-of-band change was found.
    pub const DRIFT_DETECTED: &str = "drift-detected";
    /// A change was applied (or found already done / pending).
    pub const CHANGE_APPLIED: &str = "change-applied";
    /// A change failed.
    pub const CHANGE_FAILED: &str = "change-failed";
    /// A finding appeared.
    pub const FINDING_OPENED: &str = "finding-opened";
    /// A finding went away.
    pub const FINDING_CLOSED: &str = "finding-closed";
    /// A reconcile ended.
    pub const RECONCILED: &str = "reconciled";
    /// Old rows were deleted by the retention setting.
    pub const RETENTION: &str = "retention";
    /// A resource entered the ownership record (created, adopted or recovered).
    pub const OWNERSHIP_RECORDED: &str = "ownership-recorded";
    /// A resource left the ownership record (deleted by Palisade, or vanished).
    pub const OWNERSHIP_RELEASED: &str = "ownership-released";
    /// A target's record was started from the tags of an earlier version (once).
    pub const OWNERSHIP_BOOTSTRAPPED: &str = "ownership-bootstrapped";
}

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

/// An event to append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewEvent {
    /// One of [`kind`].
    pub kind: String,
    /// Target, if the event is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Revision (commit id) in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Resource (`group payments-api`, `function pay-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Control ids (from guardrails).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controls: Vec<String>,
    /// Details.
    pub data: serde_json::Value,
}

impl NewEvent {
    /// An event of `kind` with `data`.
    pub fn new(kind: &str, data: serde_json::Value) -> NewEvent {
        NewEvent {
            kind: kind.to_string(),
            target: None,
            revision: None,
            resource: None,
            controls: Vec::new(),
            data,
        }
    }

    /// With a target.
    pub fn target(mut self, t: &str) -> Self {
        self.target = Some(t.to_string());
        self
    }

    /// With a revision.
    pub fn revision(mut self, r: Option<&str>) -> Self {
        self.revision = r.map(str::to_string);
        self
    }

    /// With a resource.
    pub fn resource(mut self, r: &str) -> Self {
        self.resource = Some(r.to_string());
        self
    }
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Sequence number.
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// The rest.
    #[serde(flatten)]
    pub event: NewEvent,
}

/// Status of one managed resource in a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceState {
    /// As declared.
    Compliant,
    /// Drifted and put back.
    DriftReverted,
    /// Differs, reported only (audit mode).
    DriftReported,
    /// A change to it failed.
    Failed,
    /// The cloud cannot do it yet.
    Pending,
    /// Being changed to a new declaration.
    Changed,
}

/// One managed resource in a [`Report`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// `group payments-api`, `function pay-1`, `endpoint …`, `subnet …`.
    pub resource: String,
    /// Its status.
    pub status: ResourceState,
}

/// One change in a [`Report`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRecord {
    /// Resource.
    pub resource: String,
    /// `intended` or `drift`.
    pub cause: String,
    /// `addRules`, `setPlacement`, …
    pub action: String,
    /// `applied`, `alreadyDone`, `pending`, `failed`, `skipped`.
    pub status: String,
    /// The cloud's request ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_ids: Vec<String>,
    /// Error or pending reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The enforced revision as a report names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRef {
    /// Commit id.
    pub commit: String,
    /// Author.
    pub author: String,
    /// `verified`, `unsigned`, `notChecked`, `untrusted`.
    pub signature: String,
}

/// What one reconcile of one target found and did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Unix milliseconds.
    pub at: i64,
    /// Target.
    pub target: String,
    /// Revision.
    pub revision: Option<RevisionRef>,
    /// `ok`, `error`, `refused`.
    pub result: String,
    /// Every managed resource.
    pub resources: Vec<ResourceStatus>,
    /// Every change attempted.
    pub changes: Vec<ChangeRecord>,
    /// Guardrail findings on everything observed, managed or not; audit drift; flapping.
    pub findings: Vec<Finding>,
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
        let mut conn = Connection::open(path).map_err(e)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(e)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(e)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(e)?;
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
        for (at, e) in events {
            insert_events(&tx, *at, std::slice::from_ref(e)).map_err(|e| self.err(e))?;
        }
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
                let json = serde_json::to_string(f).unwrap_or_default();
                tx.execute(
                    "INSERT INTO open_findings (target, key, finding, opened_at) VALUES (?1, ?2, ?3, ?4)",
                    params![report.target, key, json, report.at],
                )
                .map_err(|e| self.err(e))?;
                let mut ev = NewEvent::new(
                    kind::FINDING_OPENED,
                    serde_json::to_value(f).unwrap_or_default(),
                )
                .target(&report.target)
                .revision(revision)
                .resource(&f.resource);
                ev.controls = f.controls.clone();
                finding_events.push(ev);
            }
        }
        for (key, json) in open {
            tx.execute(
                "DELETE FROM open_findings WHERE target = ?1 AND key = ?2",
                params![report.target, key],
            )
            .map_err(|e| self.err(e))?;
            let f: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
            let controls = f["controls"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|c| c.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let resource = f["resource"].as_str().unwrap_or_default().to_string();
            let mut ev = NewEvent::new(kind::FINDING_CLOSED, f)
                .target(&report.target)
                .revision(revision)
                .resource(&resource);
            ev.controls = controls;
            finding_events.push(ev);
        }
        for (at, e) in events {
            insert_events(&tx, *at, std::slice::from_ref(e)).map_err(|e| self.err(e))?;
        }
        insert_events(&tx, report.at, &finding_events).map_err(|e| self.err(e))?;
        tx.execute(
            "INSERT INTO reports (at, target, revision, report) VALUES (?1, ?2, ?3, ?4)",
            params![
                report.at,
                report.target,
                revision,
                serde_json::to_string(report).unwrap_or_default()
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
    /// # Errors
    /// SQLite failed; nothing was deleted.
    pub fn retain(&self, before: i64, now: i64) -> Result<usize, HistoryError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let events = tx
            .execute("DELETE FROM events WHERE at < ?1", params![before])
            .map_err(|e| self.err(e))?;
        let reports = tx
            .execute("DELETE FROM reports WHERE at < ?1", params![before])
            .map_err(|e| self.err(e))?;
        if events + reports > 0 {
            insert_events(
                &tx,
                now,
                &[NewEvent::new(
                    kind::RETENTION,
                    serde_json::json!({ "before": before, "eventsDeleted": events, "reportsDeleted": reports }),
                )],
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
            kind: r.get(2)?,
            target: r.get(3)?,
            revision: r.get(4)?,
            resource: r.get(5)?,
            controls: controls
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
            data: serde_json::from_str(&data).unwrap_or(serde_json::Value::Null),
        },
    })
}

pub(crate) fn insert_events(
    tx: &rusqlite::Transaction<'_>,
    at: i64,
    events: &[NewEvent],
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO events (at, kind, target, revision, resource, controls, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for e in events {
        stmt.execute(params![
            at,
            e.kind,
            e.target,
            e.revision,
            e.resource,
            controls_column(&e.controls),
            e.data.to_string()
        ])?;
    }
    Ok(())
}

// ------------------------------------------------------------------ compliance report

/// Status of a control over a period.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlStatus {
    /// Control id.
    pub control: String,
    /// `compliant` when no finding naming it was open at any time in the period.
    pub status: String,
    /// Resources with a finding open during the period.
    pub resources: Vec<String>,
    /// Findings open at the end of the period.
    pub open_at_end: usize,
}

/// Per target activity over a period.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetSummary {
    /// Target.
    pub target: String,
    /// Reconciles.
    pub reconciles: usize,
    /// Failed reconciles.
    pub failed_reconciles: usize,
    /// Drift found.
    pub drift_detected: usize,
    /// Drift put back.
    pub drift_reverted: usize,
    /// Changes applied.
    pub changes_applied: usize,
    /// Changes failed.
    pub changes_failed: usize,
    /// Findings open at the end of the period.
    pub open_findings: usize,
}

/// A finding with its lifetime.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FindingSpan {
    /// Target.
    pub target: String,
    /// The finding.
    pub finding: Finding,
    /// Opened (Unix ms).
    pub opened_at: i64,
    /// Closed (Unix ms), if it was.
    pub closed_at: Option<i64>,
}

/// One line of the drift timeline.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftItem {
    /// When (Unix ms).
    pub at: i64,
    /// Target.
    pub target: String,
    /// Resource.
    pub resource: String,
    /// What changed out of band.
    pub detail: String,
    /// Who changed it, when the cloud said.
    pub actor: Option<String>,
    /// When it was put back (Unix ms).
    pub reverted_at: Option<i64>,
    /// Request ids of the revert.
    pub request_ids: Vec<String>,
}

/// A revision event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionItem {
    /// When (Unix ms).
    pub at: i64,
    /// Commit.
    pub commit: String,
    /// `enforced` or `rejected`.
    pub outcome: String,
    /// Author, reason.
    pub detail: String,
}

/// One point of the compliance-over-time series.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Start of the bucket (Unix ms).
    pub at: i64,
    /// Controls without an open finding in the bucket.
    pub compliant: usize,
    /// Controls known.
    pub total: usize,
}

/// What `palisade report` prints.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ComplianceReport {
    /// Period start (Unix ms).
    pub since: i64,
    /// Period end (Unix ms).
    pub until: i64,
    /// Target filter.
    pub target: Option<String>,
    /// Control filter.
    pub control: Option<String>,
    /// Per control.
    pub controls: Vec<ControlStatus>,
    /// Per target.
    pub targets: Vec<TargetSummary>,
    /// Findings open at some time in the period.
    pub findings: Vec<FindingSpan>,
    /// Drift in the period and when it was reverted.
    pub drift: Vec<DriftItem>,
    /// Revisions enforced or rejected in the period.
    pub revisions: Vec<RevisionItem>,
    /// Compliance over time.
    pub series: Vec<Point>,
    /// Events read.
    pub events_read: usize,
}

/// Build the compliance report of `[since, until]` from the history (every event up to
/// `until` is read once, so that findings opened before the period count).
///
/// # Errors
/// SQLite failed.
pub fn compliance(
    store: &Store,
    since: i64,
    until: i64,
    target: Option<&str>,
    control: Option<&str>,
) -> Result<ComplianceReport, HistoryError> {
    let filter = Filter {
        until: Some(until),
        target: target.map(str::to_string),
        ..Filter::default()
    };
    let mut known_controls: BTreeSet<String> = BTreeSet::new();
    let mut open: HashMap<(String, String), FindingSpan> = HashMap::new();
    let mut spans: Vec<FindingSpan> = Vec::new();
    let mut targets: BTreeMap<String, TargetSummary> = BTreeMap::new();
    let mut drift: Vec<DriftItem> = Vec::new();
    let mut drift_open: HashMap<(String, String), usize> = HashMap::new();
    let mut revisions = Vec::new();
    let mut read = 0usize;
    store.for_each(&filter, |e| {
        read += 1;
        let ev = &e.event;
        let in_period = e.at >= since;
        let t = ev.target.clone().unwrap_or_default();
        match ev.kind.as_str() {
            kind::REVISION_ENFORCED | kind::REVISION_REJECTED => {
                if let Some(cs) = ev.data["controls"].as_array()
                    && ev.kind == kind::REVISION_ENFORCED
                {
                    known_controls.extend(cs.iter().filter_map(|c| c.as_str().map(str::to_string)));
                }
                if in_period {
                    revisions.push(RevisionItem {
                        at: e.at,
                        commit: ev.revision.clone().unwrap_or_default(),
                        outcome: if ev.kind == kind::REVISION_ENFORCED {
                            "enforced".into()
                        } else {
                            "rejected".into()
                        },
                        detail: if ev.kind == kind::REVISION_ENFORCED {
                            ev.data["author"].as_str().unwrap_or_default().to_string()
                        } else {
                            format!(
                                "{}: {}",
                                ev.data["reason"].as_str().unwrap_or_default(),
                                ev.data["details"]
                                    .as_array()
                                    .map(|d| d
                                        .iter()
                                        .filter_map(|x| x.as_str())
                                        .collect::<Vec<_>>()
                                        .join("; "))
                                    .unwrap_or_default()
                            )
                        },
                    });
                }
            }
            kind::FINDING_OPENED => {
                known_controls.extend(ev.controls.iter().cloned());
                if let Ok(f) = serde_json::from_value::<Finding>(ev.data.clone()) {
                    open.insert(
                        (t.clone(), finding_key(&f)),
                        FindingSpan {
                            target: t.clone(),
                            finding: f,
                            opened_at: e.at,
                            closed_at: None,
                        },
                    );
                }
            }
            kind::FINDING_CLOSED => {
                if let Ok(f) = serde_json::from_value::<Finding>(ev.data.clone())
                    && let Some(mut span) = open.remove(&(t.clone(), finding_key(&f)))
                {
                    span.closed_at = Some(e.at);
                    if e.at >= since {
                        spans.push(span);
                    }
                }
            }
            _ if !in_period => {}
            kind::RECONCILED => {
                let s = targets.entry(t.clone()).or_insert_with(|| TargetSummary {
                    target: t.clone(),
                    ..Default::default()
                });
                s.reconciles += 1;
                if ev.data["result"] != "ok" {
                    s.failed_reconciles += 1;
                }
            }
            kind::DRIFT_DETECTED => {
                let s = targets.entry(t.clone()).or_insert_with(|| TargetSummary {
                    target: t.clone(),
                    ..Default::default()
                });
                s.drift_detected += 1;
                let resource = ev.resource.clone().unwrap_or_default();
                drift_open.insert((t.clone(), resource.clone()), drift.len());
                drift.push(DriftItem {
                    at: e.at,
                    target: t.clone(),
                    resource,
                    detail: ev.data["change"].as_str().unwrap_or_default().to_string(),
                    actor: ev.data["actor"].as_str().map(str::to_string),
                    reverted_at: None,
                    request_ids: Vec::new(),
                });
            }
            kind::CHANGE_APPLIED => {
                let s = targets.entry(t.clone()).or_insert_with(|| TargetSummary {
                    target: t.clone(),
                    ..Default::default()
                });
                s.changes_applied += 1;
                if ev.data["cause"] == "drift" {
                    s.drift_reverted += 1;
                    if let Some(i) =
                        drift_open.remove(&(t.clone(), ev.resource.clone().unwrap_or_default()))
                    {
                        drift[i].reverted_at = Some(e.at);
                        drift[i].request_ids = ev.data["requestIds"]
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|x| x.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default();
                    }
                }
            }
            kind::CHANGE_FAILED => {
                let s = targets.entry(t.clone()).or_insert_with(|| TargetSummary {
                    target: t.clone(),
                    ..Default::default()
                });
                s.changes_failed += 1;
            }
            _ => {}
        }
    })?;
    // Findings still open at the end of the period.
    let still_open: Vec<FindingSpan> = open.into_values().collect();
    for span in &still_open {
        let s = targets
            .entry(span.target.clone())
            .or_insert_with(|| TargetSummary {
                target: span.target.clone(),
                ..Default::default()
            });
        s.open_findings += 1;
    }
    spans.extend(still_open);
    spans.sort_by(|a, b| {
        (a.opened_at, &a.target, &a.finding.resource).cmp(&(
            b.opened_at,
            &b.target,
            &b.finding.resource,
        ))
    });
    if let Some(c) = control {
        known_controls.retain(|k| k == c);
        known_controls.insert(c.to_string());
        spans.retain(|s| s.finding.controls.iter().any(|x| x == c));
    }
    let controls: Vec<ControlStatus> = known_controls
        .iter()
        .map(|c| {
            let mine: Vec<&FindingSpan> = spans
                .iter()
                .filter(|s| s.finding.controls.contains(c))
                .collect();
            let resources: BTreeSet<String> = mine
                .iter()
                .map(|s| format!("{}: {}", s.target, s.finding.resource))
                .collect();
            ControlStatus {
                control: c.clone(),
                status: if mine.is_empty() {
                    "compliant".into()
                } else {
                    "non-compliant".into()
                },
                resources: resources.into_iter().collect(),
                open_at_end: mine.iter().filter(|s| s.closed_at.is_none()).count(),
            }
        })
        .collect();
    let buckets = 24i64;
    let width = ((until - since) / buckets).max(1);
    let series = (0..buckets)
        .map(|i| {
            let (from, to) = (since + i * width, since + (i + 1) * width);
            let bad = known_controls
                .iter()
                .filter(|c| {
                    spans.iter().any(|s| {
                        s.finding.controls.contains(c)
                            && s.opened_at < to
                            && s.closed_at.is_none_or(|x| x >= from)
                    })
                })
                .count();
            Point {
                at: from,
                compliant: known_controls.len() - bad,
                total: known_controls.len(),
            }
        })
        .collect();
    Ok(ComplianceReport {
        since,
        until,
        target: target.map(str::to_string),
        control: control.map(str::to_string),
        controls,
        targets: targets.into_values().collect(),
        findings: spans,
        drift,
        revisions,
        series,
        events_read: read,
    })
}
