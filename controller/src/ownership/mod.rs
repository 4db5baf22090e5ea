//! The ownership record: every cloud resource Palisade created or adopted, per target,
//! with the installation id that goes on its tags. A resource is Palisade's only when
//! its id is recorded here (tags alone are a claim: whoever can tag could hijack).
//!
//! The record is kept in the history database (one transaction per update, each entry
//! added or removed also written as an event, so the audit trail says when and why).
//! This module owns the rules — what an observation, a plan and an apply report mean
//! for the record ([`observed`], [`intents`], [`applied`]) — and the narrow
//! [`OwnershipStore`] interface the controller and the CLI use; the SQL is below it.
//!
//! # Bootstrap
//! A target that has never been recorded (an estate converged by a version without the
//! record) adopts, once, what carries Palisade's tags and no other target's or
//! installation's stamp; the adoption is an `ownership-bootstrapped` event listing every
//! id. From then on, nothing is adopted silently.
//!
//! # Crash between create and record
//! Before a plan with creations is applied, each creation is recorded as *pending*. A
//! resource that appears with that owner and exactly this target's and installation's
//! stamp while the creation is pending is recovered (event); the pending mark is cleared
//! once the creation's outcome is recorded.

use palisade_providers::{
    Change, Inventory, OutcomeStatus, OwnedKind, Ownership, OwnershipBasis, OwnershipVerdict,
};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::addr::ResourceAddr;
use crate::apply::{ApplyReport, ChangeOutcome};
use crate::history::event::{OwnershipBootstrapped, OwnershipReleased};
use crate::history::{EventData, HistoryError, NewEvent, Store};
use crate::plan::Plan;

/// How a resource came into the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum How {
    /// Palisade created it.
    Created,
    /// The bootstrap of a target adopted it (tags of an earlier version).
    Adopted,
    /// A creation whose id was never recorded (crash), recognised by its stamp.
    Recovered,
    /// An existing group a policy names as its `managedGroup`, taken over in place.
    Taken,
}

impl How {
    fn as_str(self) -> &'static str {
        match self {
            How::Created => "created",
            How::Adopted => "adopted",
            How::Recovered => "recovered",
            How::Taken => "taken",
        }
    }
}

/// Why a resource left the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Removed {
    /// Palisade deleted it.
    Deleted,
    /// It is gone from the cloud (deleted by someone else).
    Vanished,
}

/// One record entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// Kind.
    pub kind: OwnedKind,
    /// Cloud id.
    pub id: String,
    /// Owner key (policy name or endpoint key).
    pub owner: String,
    /// How it came in.
    pub how: How,
}

/// A change to one target's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordUpdate {
    /// Entries to add.
    pub add: Vec<Entry>,
    /// Entries to remove: (kind, id, owner, why).
    pub remove: Vec<(OwnedKind, String, String, Removed)>,
    /// Creations about to start: (kind, owner).
    pub pending: Vec<(OwnedKind, String)>,
    /// Creations whose outcome is known: (kind, owner).
    pub settled: Vec<(OwnedKind, String)>,
    /// The target's bootstrap happened with this observation.
    pub bootstrapped: bool,
}

impl RecordUpdate {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty()
            && self.remove.is_empty()
            && self.pending.is_empty()
            && self.settled.is_empty()
            && !self.bootstrapped
    }

    fn extend(&mut self, other: RecordUpdate) {
        self.add.extend(other.add);
        self.remove.extend(other.remove);
        self.pending.extend(other.pending);
        self.settled.extend(other.settled);
        self.bootstrapped |= other.bootstrapped;
    }
}

/// What an observation made under `ownership` means for the record: adoptions (bootstrap)
/// and recoveries are added, recorded resources no longer observed are removed.
pub fn observed(ownership: &Ownership, inv: &Inventory) -> RecordUpdate {
    let mut u = RecordUpdate {
        bootstrapped: ownership.basis == OwnershipBasis::Record && ownership.adopt_tagged,
        ..RecordUpdate::default()
    };
    if ownership.basis != OwnershipBasis::Record {
        return u;
    }
    for n in &inv.ownership {
        let how = match n.verdict {
            OwnershipVerdict::Adopted => How::Adopted,
            OwnershipVerdict::Taken => How::Taken,
            OwnershipVerdict::Recovered => {
                u.settled.push((n.kind, n.owner.clone()));
                How::Recovered
            }
            _ => continue,
        };
        u.add.push(Entry {
            kind: n.kind,
            id: n.id.clone(),
            owner: n.owner.clone(),
            how,
        });
    }
    for (kind, id, owner) in ownership.entries() {
        let seen = match kind {
            OwnedKind::Group => inv.groups.iter().any(|g| g.id.eq_ignore_ascii_case(id)),
            OwnedKind::Endpoint => inv.endpoints.iter().any(|e| e.id.eq_ignore_ascii_case(id)),
        };
        if !seen {
            u.remove
                .push((kind, id.to_string(), owner.to_string(), Removed::Vanished));
        }
    }
    u
}

/// The creations a plan is about to start, marked pending before the first call.
pub fn intents(plan: &Plan) -> RecordUpdate {
    let mut u = RecordUpdate::default();
    for c in &plan.changes {
        match &c.change {
            Change::CreateGroup { owner, .. } => u.pending.push((OwnedKind::Group, owner.clone())),
            // An update may be a replacement that creates (Azure private endpoints).
            Change::CreateEndpoint { owner, .. } | Change::UpdateEndpoint { owner, .. } => {
                u.pending.push((OwnedKind::Endpoint, owner.clone()))
            }
            _ => {}
        }
    }
    u
}

/// What an apply did to the record: created ids added, deleted ones removed, and every
/// creation that was attempted settled (done or failed; a creation never attempted
/// stays pending until the next plan's intents replace it).
pub fn applied(report: &ApplyReport) -> RecordUpdate {
    let mut u = RecordUpdate::default();
    for r in &report.results {
        let done = r.outcome().filter(|o| o.status != OutcomeStatus::Pending);
        match &r.planned.change {
            Change::CreateGroup { owner, .. } | Change::CreateEndpoint { owner, .. } => {
                let kind = if matches!(r.planned.change, Change::CreateGroup { .. }) {
                    OwnedKind::Group
                } else {
                    OwnedKind::Endpoint
                };
                if let Some(id) = done.and_then(|o| o.created_id.clone()) {
                    u.add.push(Entry {
                        kind,
                        id,
                        owner: owner.clone(),
                        how: How::Created,
                    });
                }
                u.settled.push((kind, owner.clone()));
            }
            // A replacement (Azure private endpoint moving subnet): the new endpoint is
            // recorded even when the old one's delete is still pending.
            Change::UpdateEndpoint { owner, id, .. } => {
                let new_id = r.outcome().and_then(|o| o.created_id.clone());
                if let Some(new_id) = new_id.filter(|n| !n.eq_ignore_ascii_case(id)) {
                    u.add.push(Entry {
                        kind: OwnedKind::Endpoint,
                        id: new_id,
                        owner: owner.clone(),
                        how: How::Created,
                    });
                    if done.is_some() {
                        u.remove.push((
                            OwnedKind::Endpoint,
                            id.clone(),
                            owner.clone(),
                            Removed::Deleted,
                        ));
                    }
                }
                if !matches!(r.result, ChangeOutcome::Blocked { .. }) {
                    u.settled.push((OwnedKind::Endpoint, owner.clone()));
                }
            }
            Change::DeleteGroup { owner, id } if done.is_some() => {
                u.remove.push((
                    OwnedKind::Group,
                    id.clone(),
                    owner.clone(),
                    Removed::Deleted,
                ));
            }
            Change::DeleteEndpoint { owner, id } if done.is_some() => u.remove.push((
                OwnedKind::Endpoint,
                id.clone(),
                owner.clone(),
                Removed::Deleted,
            )),
            _ => {}
        }
    }
    u
}

/// Where the record lives. The SQLite history implements it; a server database will
/// later, when several replicas share one record.
pub trait OwnershipStore: Send + Sync {
    /// This installation's id, generated once (random, 128 bits) and kept.
    ///
    /// # Errors
    /// The store failed.
    fn installation(&self) -> Result<String, HistoryError>;

    /// Use `id` as this installation's id: kept when the store has none yet (a new or
    /// lost data directory), an error when the store holds another.
    ///
    /// # Errors
    /// [`HistoryError::Installation`] on a mismatch; the store failed.
    fn pin_installation(&self, id: &str) -> Result<(), HistoryError>;

    /// The record of `target` as an [`Ownership`] for `observe` (bootstrap on when the
    /// target was never recorded).
    ///
    /// # Errors
    /// The store failed.
    fn ownership(&self, target: &str) -> Result<Ownership, HistoryError>;

    /// Write `update` for `target` and its events, in one durable transaction.
    ///
    /// # Errors
    /// The store failed; nothing was written.
    fn update_ownership(
        &self,
        target: &str,
        revision: Option<&str>,
        at: i64,
        update: &RecordUpdate,
    ) -> Result<(), HistoryError>;
}

/// Apply several updates in order (observation, then apply) as one.
pub fn merge(updates: impl IntoIterator<Item = RecordUpdate>) -> RecordUpdate {
    let mut all = RecordUpdate::default();
    for u in updates {
        all.extend(u);
    }
    all
}

fn parse_kind(s: &str) -> Option<OwnedKind> {
    match s {
        "group" => Some(OwnedKind::Group),
        "endpoint" => Some(OwnedKind::Endpoint),
        _ => None,
    }
}

impl OwnershipStore for Store {
    fn installation(&self) -> Result<String, HistoryError> {
        let conn = self.conn();
        let read = |conn: &rusqlite::Connection| {
            conn.query_row(
                "SELECT value FROM meta WHERE key = 'installation'",
                [],
                |r| r.get::<_, String>(0),
            )
            .optional()
        };
        if let Some(id) = read(&conn).map_err(|e| self.err(e))? {
            return Ok(id);
        }
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('installation', lower(hex(randomblob(16))))",
            [],
        )
        .map_err(|e| self.err(e))?;
        read(&conn)
            .map_err(|e| self.err(e))?
            .ok_or_else(|| self.err(rusqlite::Error::QueryReturnedNoRows))
    }

    fn pin_installation(&self, id: &str) -> Result<(), HistoryError> {
        let conn = self.conn();
        conn.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('installation', ?1)",
            params![id],
        )
        .map_err(|e| self.err(e))?;
        let stored: String = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'installation'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))?;
        if stored != id {
            return Err(HistoryError::Installation {
                path: self.path().to_path_buf(),
                stored,
                pinned: id.to_string(),
            });
        }
        Ok(())
    }

    fn ownership(&self, target: &str) -> Result<Ownership, HistoryError> {
        let installation = self.installation()?;
        let conn = self.conn();
        let mut o = Ownership::recorded(target, &installation);
        let bootstrapped: Option<i64> = conn
            .query_row(
                "SELECT at FROM ownership_bootstrap WHERE target = ?1",
                params![target],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        o.adopt_tagged = bootstrapped.is_none();
        let mut stmt = conn
            .prepare("SELECT kind, id, owner FROM owned WHERE target = ?1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![target], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (k, id, owner) = row.map_err(|e| self.err(e))?;
            if let Some(k) = parse_kind(&k) {
                o.insert(k, &id, &owner);
            }
        }
        let mut stmt = conn
            .prepare("SELECT kind, owner FROM owned_pending WHERE target = ?1")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![target], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (k, owner) = row.map_err(|e| self.err(e))?;
            if let Some(k) = parse_kind(&k) {
                o.insert_pending(k, &owner);
            }
        }
        Ok(o)
    }

    fn update_ownership(
        &self,
        target: &str,
        revision: Option<&str>,
        at: i64,
        u: &RecordUpdate,
    ) -> Result<(), HistoryError> {
        if u.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let mut events = Vec::new();
        let e = |e| self.err(e);
        for (k, owner) in &u.settled {
            tx.execute(
                "DELETE FROM owned_pending WHERE target = ?1 AND kind = ?2 AND owner = ?3",
                params![target, k.as_str(), owner],
            )
            .map_err(e)?;
        }
        for (k, owner) in &u.pending {
            tx.execute(
                "INSERT OR REPLACE INTO owned_pending (target, kind, owner, at) VALUES (?1, ?2, ?3, ?4)",
                params![target, k.as_str(), owner, at],
            )
            .map_err(e)?;
        }
        for entry in &u.add {
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO owned (target, kind, id, owner, created_at, revision, how) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        target,
                        entry.kind.as_str(),
                        entry.id.to_ascii_lowercase(),
                        entry.owner,
                        at,
                        revision,
                        entry.how.as_str()
                    ],
                )
                .map_err(e)?;
            if n > 0 {
                events.push(
                    NewEvent::new(EventData::OwnershipRecorded(entry.clone()))
                        .target(target)
                        .revision(revision)
                        .resource(&ResourceAddr::new(entry.kind.into(), entry.owner.as_str())),
                );
            }
        }
        for (k, id, owner, why) in &u.remove {
            let n = tx
                .execute(
                    "DELETE FROM owned WHERE target = ?1 AND kind = ?2 AND id = ?3",
                    params![target, k.as_str(), id.to_ascii_lowercase()],
                )
                .map_err(e)?;
            if n > 0 {
                events.push(
                    NewEvent::new(EventData::OwnershipReleased(OwnershipReleased {
                        kind: *k,
                        id: id.clone(),
                        owner: owner.clone(),
                        why: *why,
                    }))
                    .target(target)
                    .revision(revision)
                    .resource(&ResourceAddr::new((*k).into(), owner.as_str())),
                );
            }
        }
        if u.bootstrapped {
            let n = tx
                .execute(
                    "INSERT OR IGNORE INTO ownership_bootstrap (target, at) VALUES (?1, ?2)",
                    params![target, at],
                )
                .map_err(e)?;
            if n > 0 {
                let adopted: Vec<Entry> = u
                    .add
                    .iter()
                    .filter(|a| a.how == How::Adopted)
                    .cloned()
                    .collect();
                events.push(
                    NewEvent::new(EventData::OwnershipBootstrapped(OwnershipBootstrapped {
                        count: adopted.len(),
                        adopted,
                    }))
                    .target(target)
                    .revision(revision),
                );
            }
        }
        crate::history::insert_events(&tx, at, &events).map_err(e)?;
        tx.commit().map_err(e)
    }
}

/// Check an `--installation-id`: it goes on every managed resource as a tag value.
///
/// # Errors
/// A message naming what is wrong.
pub fn check_installation_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "installation id {id:?}: expected 1 to 64 characters of A-Z a-z 0-9 . _ -"
        ))
    }
}

#[cfg(test)]
mod tests;
