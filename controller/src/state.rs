//! Durable loop state: the desired state last enforced per target, so that the next
//! reconcile — after a restart, or a one-shot `palisade apply` — tells drift (the cloud
//! changed under an unchanged policy) from intended change (the policy changed). Without
//! it every difference would be "intended" after a restart: drift made while the
//! controller was down would be classified wrongly and counted against the
//! blast-radius budget. The flap history (recent reverts per exact field) is kept
//! too, so that a restart does not reset what keeps coming back, and so is the drift
//! still waiting for its author in the cloud's audit log (which lags by minutes), so
//! that a restart does not leave it unknown.
//!
//! Kept in the history database beside the ownership record, behind the narrow
//! [`StateStore`] interface. Unlike events, a target's row is replaced: it is state,
//! not evidence (the evidence is the `revision-enforced` and `change-applied` events).

use rusqlite::{OptionalExtension, params};

use serde::{Deserialize, Serialize};

use crate::addr::ResourceAddr;
use crate::compile::DesiredState;
use crate::flaps::Flaps;
use crate::history::{HistoryError, Store};

/// A drift whose author the audit log did not show yet: asked again (with backoff)
/// until it is found or given up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingAttribution {
    /// What the audit log is asked.
    pub query: palisade_providers::AttributionQuery,
    /// The drift's resource: what the `drift-attributed` event names.
    pub resource: ResourceAddr,
    /// The flap-history fields of the drift: who made it is kept there once known.
    #[serde(default)]
    pub fields: Vec<String>,
    /// When the drift was detected (Unix ms).
    pub detected_at: i64,
    /// Times asked so far.
    pub attempts: u32,
    /// When to ask next (Unix ms).
    pub next_try: i64,
}

/// Where the loop keeps its state between runs.
pub trait StateStore: Send + Sync {
    /// The desired state last enforced on `target`, if any (an unreadable one — written
    /// by another version — is treated as none and logged).
    ///
    /// # Errors
    /// The store failed.
    fn enforced_desired(&self, target: &str) -> Result<Option<DesiredState>, HistoryError>;

    /// Remember `desired` as enforced on `target` at `revision`.
    ///
    /// # Errors
    /// The store failed; nothing was written.
    fn save_enforced_desired(
        &self,
        target: &str,
        revision: Option<&str>,
        at: i64,
        desired: &DesiredState,
    ) -> Result<(), HistoryError>;

    /// The flap history of `target` (empty when none, or unreadable — logged).
    ///
    /// # Errors
    /// The store failed.
    fn flaps(&self, target: &str) -> Result<Flaps, HistoryError>;

    /// Replace the flap history of `target`.
    ///
    /// # Errors
    /// The store failed; nothing was written.
    fn save_flaps(&self, target: &str, at: i64, flaps: &Flaps) -> Result<(), HistoryError>;

    /// The drift of `target` still waiting for its author (none when unreadable — logged).
    ///
    /// # Errors
    /// The store failed.
    fn pending_attributions(&self, target: &str) -> Result<Vec<PendingAttribution>, HistoryError>;

    /// Replace the drift of `target` waiting for its author.
    ///
    /// # Errors
    /// The store failed; nothing was written.
    fn save_pending_attributions(
        &self,
        target: &str,
        at: i64,
        pending: &[PendingAttribution],
    ) -> Result<(), HistoryError>;
}

/// One target's JSON column; a read-only database of an older schema has no such
/// table: no state.
fn read_json(store: &Store, sql: &str, target: &str) -> Result<Option<String>, HistoryError> {
    match store
        .conn()
        .query_row(sql, params![target], |r| r.get(0))
        .optional()
    {
        Ok(t) => Ok(t),
        Err(rusqlite::Error::SqliteFailure(_, Some(m))) if m.contains("no such table") => Ok(None),
        Err(e) => Err(store.err(e)),
    }
}

/// Replace one target's JSON column `column` of `table` (with its time).
fn write_json<T: Serialize + ?Sized>(
    store: &Store,
    table: &str,
    column: &str,
    target: &str,
    at: i64,
    value: &T,
) -> Result<(), HistoryError> {
    let text = serde_json::to_string(value)
        .map_err(|e| store.err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
    store
        .conn()
        .execute(
            &format!(
                "INSERT INTO {table} (target, {column}, at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(target) DO UPDATE SET {column} = ?2, at = ?3"
            ),
            params![target, text, at],
        )
        .map_err(|e| store.err(e))?;
    Ok(())
}

impl StateStore for Store {
    fn enforced_desired(&self, target: &str) -> Result<Option<DesiredState>, HistoryError> {
        let text = read_json(
            self,
            "SELECT desired FROM target_state WHERE target = ?1",
            target,
        )?;
        Ok(text.and_then(|t| match serde_json::from_str(&t) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(target = %target, error = %e, "the stored desired state is unreadable; every difference counts as intended until the next enforcement");
                None
            }
        }))
    }

    fn save_enforced_desired(
        &self,
        target: &str,
        revision: Option<&str>,
        at: i64,
        desired: &DesiredState,
    ) -> Result<(), HistoryError> {
        let text = serde_json::to_string(desired)
            .map_err(|e| self.err(rusqlite::Error::ToSqlConversionFailure(Box::new(e))))?;
        self.conn()
            .execute(
                "INSERT INTO target_state (target, revision, desired, at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(target) DO UPDATE SET revision = ?2, desired = ?3, at = ?4",
                params![target, revision, text, at],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn flaps(&self, target: &str) -> Result<Flaps, HistoryError> {
        let text = read_json(
            self,
            "SELECT flaps FROM flap_state WHERE target = ?1",
            target,
        )?;
        Ok(text
            .and_then(|t| match serde_json::from_str(&t) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(target = %target, error = %e, "the stored flap history is unreadable; flap counts start again");
                    None
                }
            })
            .unwrap_or_default())
    }

    fn save_flaps(&self, target: &str, at: i64, flaps: &Flaps) -> Result<(), HistoryError> {
        write_json(self, "flap_state", "flaps", target, at, flaps)
    }

    fn pending_attributions(&self, target: &str) -> Result<Vec<PendingAttribution>, HistoryError> {
        let text = read_json(
            self,
            "SELECT pending FROM attribution_state WHERE target = ?1",
            target,
        )?;
        let Some(text) = text else {
            return Ok(Vec::new());
        };
        // One by one: an entry this version cannot read is left out, not the list.
        let entries: Vec<serde_json::Value> = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(target = %target, error = %e, "the stored pending attributions are unreadable; that drift stays without an author");
                return Ok(Vec::new());
            }
        };
        Ok(entries
            .into_iter()
            .filter_map(|v| match serde_json::from_value(v) {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(target = %target, error = %e, "a stored pending attribution is unreadable; that drift stays without an author");
                    None
                }
            })
            .collect())
    }

    fn save_pending_attributions(
        &self,
        target: &str,
        at: i64,
        pending: &[PendingAttribution],
    ) -> Result<(), HistoryError> {
        write_json(self, "attribution_state", "pending", target, at, pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_enforced_desired_state_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let set = crate::policy::load_dir(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies-example"),
            &crate::policy::Limits::default(),
        )
        .0;
        let target = set.target("prod-aws").unwrap();
        let desired = crate::compile::compile(&set, target, None).desired;
        assert!(!desired.groups.is_empty());
        {
            let s = Store::open(&path).unwrap();
            assert_eq!(s.enforced_desired("prod-aws").unwrap(), None);
            s.save_enforced_desired("prod-aws", Some("abc"), 1, &desired)
                .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(
            s.enforced_desired("prod-aws").unwrap(),
            Some(desired.clone())
        );
        let ro = Store::open_read_only(&path).unwrap();
        assert_eq!(ro.enforced_desired("prod-aws").unwrap(), Some(desired));
    }
}
