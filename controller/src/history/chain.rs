//! Tamper evidence: a hash chain over the events. Each row stores the hash of the row
//! written before it (`prev`) and its own (`hash` = SHA-256 of `prev` and every column),
//! so editing a row, or deleting one from the middle, breaks the chain where it
//! happened; [`verify`] walks it and says where.
//!
//! What the chain cannot tell on its own: rows deleted from the *end* (anchor the head
//! hash elsewhere — `palisade report --verify` prints it), and rows deleted by a hand
//! that also wrote a `retention` event after them. Retention itself deletes old rows:
//! a break just after rows it deleted is expected, and accepted only when a `retention`
//! event comes later in the log. Rows written before the chain existed (schema < 5)
//! have no hash and are counted apart.

use rusqlite::params;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{HistoryError, Store, kind};

/// The columns of one event, as hashed.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    /// Unix ms.
    pub at: i64,
    /// Kind.
    pub kind: &'a str,
    /// Target.
    pub target: Option<&'a str>,
    /// Revision.
    pub revision: Option<&'a str>,
    /// Resource key.
    pub resource: Option<&'a str>,
    /// Controls column (`,a,b,`).
    pub controls: &'a str,
    /// Data column (JSON).
    pub data: &'a str,
}

impl Row<'_> {
    /// SHA-256 (hex) of `prev` and every column, each length-prefixed so that no two
    /// different rows hash alike.
    pub fn hash(&self, prev: &str) -> String {
        let mut h = Sha256::new();
        for part in [
            prev,
            &self.at.to_string(),
            self.kind,
            self.target.unwrap_or("\u{0}"),
            self.revision.unwrap_or("\u{0}"),
            self.resource.unwrap_or("\u{0}"),
            self.controls,
            self.data,
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        format!("{:x}", h.finalize())
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// Rows read.
    pub rows: u64,
    /// Rows written before the chain existed (no hash).
    pub unchained: u64,
    /// Breaks after rows deleted by retention (accepted).
    pub retention_gaps: u64,
    /// The hash of the newest row: anchor it elsewhere to detect a cut tail.
    pub head: Option<String>,
    /// The first row where the chain does not hold, and why; `None`: intact.
    pub broken: Option<(i64, String)>,
}

/// Walk the chain from the oldest row to the newest.
///
/// # Errors
/// SQLite failed.
pub fn verify(store: &Store) -> Result<Verification, HistoryError> {
    let conn = store.conn();
    let last_retention: Option<i64> = conn
        .query_row(
            "SELECT max(id) FROM events WHERE kind = ?1",
            params![kind::RETENTION],
            |r| r.get(0),
        )
        .map_err(|e| store.err(e))?;
    let mut stmt = conn
        .prepare(
            "SELECT id, at, kind, target, revision, resource, controls, data, prev, hash FROM events ORDER BY id",
        )
        .map_err(|e| store.err(e))?;
    let mut rows = stmt.query([]).map_err(|e| store.err(e))?;
    let mut out = Verification {
        rows: 0,
        unchained: 0,
        retention_gaps: 0,
        head: None,
        broken: None,
    };
    let mut last: Option<(i64, Option<String>)> = None;
    while let Some(r) = rows.next().map_err(|e| store.err(e))? {
        let get = |r: &rusqlite::Row<'_>| -> rusqlite::Result<_> {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, Option<String>>(8)?,
                r.get::<_, Option<String>>(9)?,
            ))
        };
        let (id, at, kind, target, revision, resource, controls, data, prev, hash) =
            get(r).map_err(|e| store.err(e))?;
        out.rows += 1;
        let Some(hash) = hash else {
            if last.as_ref().is_some_and(|(_, h)| h.is_some()) {
                out.broken = Some((id, "a row without a hash after chained rows".into()));
                break;
            }
            out.unchained += 1;
            last = Some((id, None));
            continue;
        };
        let prev = prev.unwrap_or_default();
        let row = Row {
            at,
            kind: &kind,
            target: target.as_deref(),
            revision: revision.as_deref(),
            resource: resource.as_deref(),
            controls: &controls,
            data: &data,
        };
        if row.hash(&prev) != hash {
            out.broken = Some((
                id,
                "its content does not match its hash: it was changed".into(),
            ));
            break;
        }
        let expected = last.as_ref().map(|(_, h)| h.clone().unwrap_or_default());
        let linked = match &expected {
            None => true, // the oldest row kept
            Some(e) => *e == prev,
        };
        if !linked {
            let gap = last.as_ref().is_some_and(|(l, _)| id > l + 1);
            if gap && last_retention.is_some_and(|r| r > id) {
                out.retention_gaps += 1;
            } else {
                out.broken = Some((
                    id,
                    if gap {
                        format!(
                            "rows {}..{} are missing and no retention later explains it",
                            last.as_ref().map_or(0, |(l, _)| l + 1),
                            id - 1
                        )
                    } else {
                        "it does not link to the row before it".into()
                    },
                ));
                break;
            }
        }
        last = Some((id, Some(hash.clone())));
        out.head = Some(hash);
    }
    Ok(out)
}
