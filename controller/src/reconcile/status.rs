//! What `/api/status`, `/readyz` and the status page show: the enforced revision, the
//! rejected ones, and per target the last reconcile (with typed trigger and result).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::check::Finding;
pub use crate::history::{ReconcileResult, Trigger};
use crate::source::{RejectReason, Revision};

/// A revision that was refused.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    /// Commit id.
    pub commit: String,
    /// Short reason (`invalid`, `empty`, `unsigned`, `path-missing`).
    pub reason: RejectReason,
    /// What is wrong, with `file:line` where it applies.
    pub details: Vec<String>,
    /// When (Unix seconds).
    pub at: u64,
}

/// The last reconcile of a target.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileRecord {
    /// When it ended (Unix seconds).
    pub at: u64,
    /// What woke it.
    pub trigger: Trigger,
    /// Revision reconciled against.
    pub revision: String,
    /// How it ended.
    pub result: ReconcileResult,
    /// Error text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds.
    pub duration_ms: u64,
    /// Changes applied (or already so).
    pub applied: usize,
    /// Of which drift reverted.
    pub drift_reverted: usize,
}

/// What `/api/status` shows for a target.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    /// Cloud.
    pub cloud: String,
    /// Last reconcile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reconcile: Option<ReconcileRecord>,
    /// Last successful reconcile (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<u64>,
    /// Deletions the cloud could not do yet.
    pub pending_deletions: Vec<String>,
    /// Findings of the last reconcile (guardrails, audit drift, flapping…).
    pub findings: Vec<Finding>,
    /// The last reconcile succeeded on the enforced revision.
    pub healthy: bool,
}

/// Everything `/api/status` and the status page show.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The enforced revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<Revision>,
    /// The newest commit fetched (may be a rejected one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched: Option<String>,
    /// The last fetch error, cleared by the next good fetch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_error: Option<String>,
    /// The last history write that failed (evidence lost for that reconcile), cleared
    /// by the next write that succeeds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_error: Option<String>,
    /// When the source was last fetched successfully (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_fetch_success_at: Option<u64>,
    /// Seconds since the last successful fetch (since start-up when there was none):
    /// how stale the enforced revision may be.
    pub source_stale_seconds: u64,
    /// Rejected revisions, newest last (at most 20).
    pub rejected: Vec<Rejection>,
    /// Targets by name.
    pub targets: BTreeMap<String, TargetStatus>,
    /// Ready to serve: a good revision is enforced and the source loop is alive
    /// (`/readyz`). A failing target does not make the pod unready.
    pub ready: bool,
    /// Every target has reconciled the enforced revision successfully.
    pub converged: bool,
    /// Notification sinks by name: last delivery, last error, backlog.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub notifications: BTreeMap<String, crate::notify::SinkStatus>,
    /// Change-event queues by URL: messages received, last receive, last error.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub event_queues: BTreeMap<String, super::events::QueueStatus>,
    /// The newest events of the history (newest first), read from the store.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recent_events: Vec<crate::history::Event>,
}
