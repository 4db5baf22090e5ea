//! The outbox behind the notifications, in the history store: the history's events are
//! the messages; each sink keeps a cursor (the id of the last event it has dealt with)
//! and a dead-letter table of what it gave up on. A cursor only moves after the receiver
//! answered 2xx (or the message was dead-lettered), so a restart — even after `kill -9`
//! — delivers what was not delivered (at least once; receivers de-duplicate by id).

use rusqlite::{OptionalExtension, params};

use crate::history::{HistoryError, Store};

/// What the notifier needs from the store. Kept narrow so that a server database can
/// back it later.
pub trait Outbox: Send + Sync {
    /// The sink's cursor; `None` for a sink never seen.
    ///
    /// # Errors
    /// The store failed.
    fn cursor(&self, sink: &str) -> Result<Option<i64>, HistoryError>;

    /// Move the sink's cursor to `event_id`.
    ///
    /// # Errors
    /// The store failed.
    fn advance(&self, sink: &str, event_id: i64, at: i64) -> Result<(), HistoryError>;

    /// Keep a message the sink gave up on.
    ///
    /// # Errors
    /// The store failed.
    fn dead_letter(&self, sink: &str, letter: &DeadLetter) -> Result<(), HistoryError>;

    /// Messages the sink gave up on, oldest first.
    ///
    /// # Errors
    /// The store failed.
    fn dead_letters(&self, sink: &str) -> Result<Vec<DeadLetter>, HistoryError>;

    /// Events after `cursor`.
    ///
    /// # Errors
    /// The store failed.
    fn backlog(&self, cursor: i64) -> Result<u64, HistoryError>;

    /// Drop the cursors of every sink not in `keep`; returns their names.
    ///
    /// # Errors
    /// The store failed.
    fn forget_other_cursors(&self, keep: &[&str]) -> Result<Vec<String>, HistoryError>;
}

/// A message a sink gave up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The first history event it carried.
    pub first_event: i64,
    /// The last one.
    pub last_event: i64,
    /// Attempts made.
    pub attempts: u32,
    /// The last error.
    pub error: String,
    /// The request body.
    pub body: String,
    /// When it was given up (Unix ms).
    pub at: i64,
}

impl Outbox for Store {
    fn cursor(&self, sink: &str) -> Result<Option<i64>, HistoryError> {
        self.conn()
            .query_row(
                "SELECT event_id FROM notify_cursor WHERE sink = ?1",
                params![sink],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    fn advance(&self, sink: &str, event_id: i64, at: i64) -> Result<(), HistoryError> {
        self.conn()
            .execute(
                "INSERT INTO notify_cursor (sink, event_id, at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(sink) DO UPDATE SET event_id = max(event_id, excluded.event_id), at = excluded.at",
                params![sink, event_id, at],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn dead_letter(&self, sink: &str, l: &DeadLetter) -> Result<(), HistoryError> {
        self.conn()
            .execute(
                "INSERT INTO notify_dead_letter (sink, first_event, last_event, attempts, error, body, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![sink, l.first_event, l.last_event, l.attempts, l.error, l.body, l.at],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    fn dead_letters(&self, sink: &str) -> Result<Vec<DeadLetter>, HistoryError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT first_event, last_event, attempts, error, body, at FROM notify_dead_letter
                 WHERE sink = ?1 ORDER BY id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![sink], |r| {
                Ok(DeadLetter {
                    first_event: r.get(0)?,
                    last_event: r.get(1)?,
                    attempts: r.get(2)?,
                    error: r.get(3)?,
                    body: r.get(4)?,
                    at: r.get(5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.err(e))
    }

    fn forget_other_cursors(&self, keep: &[&str]) -> Result<Vec<String>, HistoryError> {
        let conn = self.conn();
        let names: Vec<String> = conn
            .prepare("SELECT sink FROM notify_cursor ORDER BY sink")
            .and_then(|mut st| {
                st.query_map([], |r| r.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| self.err(e))?;
        let gone: Vec<String> = names
            .into_iter()
            .filter(|n| !keep.contains(&n.as_str()))
            .collect();
        for n in &gone {
            conn.execute("DELETE FROM notify_cursor WHERE sink = ?1", params![n])
                .map_err(|e| self.err(e))?;
        }
        Ok(gone)
    }

    fn backlog(&self, cursor: i64) -> Result<u64, HistoryError> {
        self.conn()
            .query_row(
                "SELECT count(*) FROM events WHERE id > ?1",
                params![cursor],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(|e| self.err(e))
    }
}
