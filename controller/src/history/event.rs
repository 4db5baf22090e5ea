//! The evidence, typed: one enum of events ([`EventData`], serde-tagged by kind) and the
//! records they carry, written and read by the same types. The store keeps the kind in
//! its own column and the data as JSON; a row this version does not understand (written
//! by a newer one, or damaged) reads back as [`Body::Unrecognized`] with its raw data,
//! never as a silent gap.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::addr::ResourceAddr;
use crate::check::Finding;
use crate::ownership::{Entry, Removed};
use crate::plan::Cause;
use crate::source::{RejectReason, Revision, SignatureStatus};
use palisade_providers::{Change, OutcomeStatus, OwnedKind};

/// Kinds of events, as the store's `kind` column (and filters) name them.
pub mod kind {
    /// A revision became the enforced one.
    pub const REVISION_ENFORCED: &str = "revision-enforced";
    /// A revision was refused.
    pub const REVISION_REJECTED: &str = "revision-rejected";
    /// An accepted revision does not descend from the one enforced before (force-push).
    pub const HISTORY_REWRITTEN: &str = "history-rewritten";
    /// An out-of-band change was found.
    pub const DRIFT_DETECTED: &str = "drift-detected";
    /// Who made an earlier drift, found later in the cloud's audit log (which lags).
    pub const DRIFT_ATTRIBUTED: &str = "drift-attributed";
    /// A change was applied (or found already done / pending).
    pub const CHANGE_APPLIED: &str = "change-applied";
    /// A change failed (or was blocked by one that failed).
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

/// What woke a reconcile (or a fetch). Logged and counted, never used in decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The controller started (the source loop's first fetch).
    Start,
    /// The source's poll interval.
    Poll,
    /// A webhook.
    Webhook,
    /// A new revision was enforced.
    Revision,
    /// The periodic resync.
    Resync,
    /// A retry after a failed reconcile (with backoff).
    Retry,
    /// A cloud change event (EventBridge → SQS) named the target.
    Event,
}

impl Trigger {
    /// The metrics label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Poll => "poll",
            Trigger::Webhook => "webhook",
            Trigger::Revision => "revision",
            Trigger::Resync => "resync",
            Trigger::Retry => "retry",
            Trigger::Event => "event",
        }
    }
}

/// How a reconcile ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReconcileResult {
    /// Everything planned was applied (or is pending in the cloud).
    Ok,
    /// Something failed (observe, plan, a change, the record).
    Error,
    /// The plan was refused (blast radius, empty source).
    Refused,
    /// The deadline came first (between changes).
    Timeout,
}

impl ReconcileResult {
    /// The metrics label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            ReconcileResult::Ok => "ok",
            ReconcileResult::Error => "error",
            ReconcileResult::Refused => "refused",
            ReconcileResult::Timeout => "timeout",
        }
    }
}

/// How one change of a reconcile ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ChangeStatus {
    /// The cloud did it.
    Applied,
    /// It was already so.
    AlreadyDone,
    /// The cloud cannot do it yet.
    Pending,
    /// The cloud (or Palisade) refused it.
    Failed,
    /// Not attempted: a change it needs failed.
    Blocked,
}

impl From<OutcomeStatus> for ChangeStatus {
    fn from(s: OutcomeStatus) -> Self {
        match s {
            OutcomeStatus::Applied => ChangeStatus::Applied,
            OutcomeStatus::AlreadyDone => ChangeStatus::AlreadyDone,
            OutcomeStatus::Pending => ChangeStatus::Pending,
        }
    }
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
    /// A change was planned, but the reconcile stopped before it (deadline, shutdown,
    /// the outer timeout): not known to be as declared.
    NotReached,
}

/// One managed resource in a [`Report`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// `group payments-api`, `function pay-1`, `endpoint …`, `subnet …` (no id).
    pub resource: ResourceAddr,
    /// Its status.
    pub status: ResourceState,
}

/// One change in a [`Report`], and the data of `change-applied` / `change-failed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeRecord {
    /// Resource (its key: no id).
    pub resource: ResourceAddr,
    /// Intended or drift.
    pub cause: Cause,
    /// `addRules`, `setPlacement`, …
    pub action: String,
    /// How it ended.
    pub status: ChangeStatus,
    /// The cloud's request ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_ids: Vec<String>,
    /// Error, pending reason, or what blocked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What a revision's signature check said, without the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SignatureState {
    /// Verification is off.
    NotChecked,
    /// No signature.
    Unsigned,
    /// Signed, not by a trusted key.
    Untrusted,
    /// Signed by a trusted key.
    Verified,
}

impl From<&SignatureStatus> for SignatureState {
    fn from(s: &SignatureStatus) -> Self {
        match s {
            SignatureStatus::NotChecked => SignatureState::NotChecked,
            SignatureStatus::Unsigned => SignatureState::Unsigned,
            SignatureStatus::Untrusted { .. } => SignatureState::Untrusted,
            SignatureStatus::Verified { .. } => SignatureState::Verified,
        }
    }
}

/// The enforced revision as a report names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRef {
    /// Commit id.
    pub commit: String,
    /// Author.
    pub author: String,
    /// The signature check.
    pub signature: SignatureState,
}

impl From<&Revision> for RevisionRef {
    fn from(r: &Revision) -> Self {
        RevisionRef {
            commit: r.commit.clone(),
            author: r.author.clone(),
            signature: (&r.signature).into(),
        }
    }
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
    /// How the reconcile ended.
    pub result: ReconcileResult,
    /// Every managed resource.
    pub resources: Vec<ResourceStatus>,
    /// Every change attempted.
    pub changes: Vec<ChangeRecord>,
    /// Guardrail findings on everything observed, managed or not; audit drift; flapping.
    pub findings: Vec<Finding>,
}

/// `revision-enforced`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionEnforced {
    /// Commit author.
    pub author: String,
    /// First line of the message.
    #[serde(default)]
    pub summary: String,
    /// The signature check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureStatus>,
    /// Commit time (Unix seconds).
    #[serde(default)]
    pub time: i64,
    /// Control ids the revision's guardrails name.
    #[serde(default)]
    pub controls: Vec<String>,
    /// Number of policies.
    #[serde(default)]
    pub policies: usize,
}

/// `revision-rejected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRejected {
    /// Why, in short.
    pub reason: RejectReason,
    /// What is wrong, with `file:line` where it applies.
    #[serde(default)]
    pub details: Vec<String>,
    /// Commit author.
    #[serde(default)]
    pub author: String,
    /// First line of the message.
    #[serde(default)]
    pub summary: String,
    /// The signature check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureStatus>,
}

/// `history-rewritten`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRewritten {
    /// The commit enforced before.
    pub previous: String,
    /// Author of the new one.
    #[serde(default)]
    pub author: String,
    /// First line of its message.
    #[serde(default)]
    pub summary: String,
    /// The signature check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<SignatureStatus>,
}

/// `drift-detected`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftDetected {
    /// What changed out of band, for people.
    pub change: String,
    /// Who changed it, from the cloud's audit log (`null`: not known). A bare string, as
    /// earlier versions' schema allowed, reads as an actor of unknown kind.
    #[serde(default, deserialize_with = "actor_or_name")]
    pub actor: Option<Box<palisade_providers::Actor>>,
    /// The change planned to put it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correction: Option<Change>,
}

fn actor_or_name<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Box<palisade_providers::Actor>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Actor(Box<palisade_providers::Actor>),
        Name(String),
    }
    Ok(match Option::<Either>::deserialize(d)? {
        None => None,
        Some(Either::Actor(a)) => Some(a),
        Some(Either::Name(id)) => Some(Box::new(palisade_providers::Actor::named(
            palisade_providers::ActorKind::Unknown,
            palisade_providers::model::audit_text(&id),
        ))),
    })
}

/// `drift-attributed`: the drift of the same target and resource detected at
/// `detected_at` was made by `actor` (the audit log had not shown it then).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftAttributed {
    /// When the drift was detected (Unix ms): the `at` of its `drift-detected` event.
    pub detected_at: i64,
    /// Who made it.
    pub actor: Box<palisade_providers::Actor>,
}

/// `reconciled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reconciled {
    /// How it ended.
    pub result: ReconcileResult,
    /// Why it did not end `ok`.
    #[serde(default)]
    pub error: Option<String>,
    /// What woke it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Trigger>,
    /// Changes attempted.
    #[serde(default)]
    pub changes: usize,
}

/// `retention`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Rows older than this (Unix ms) went.
    pub before: i64,
    /// Events deleted.
    pub events_deleted: usize,
    /// Reports deleted.
    pub reports_deleted: usize,
}

/// `ownership-released`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnershipReleased {
    /// Kind.
    pub kind: OwnedKind,
    /// Cloud id.
    pub id: String,
    /// Owner key.
    pub owner: String,
    /// Why.
    pub why: Removed,
}

/// `ownership-bootstrapped`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnershipBootstrapped {
    /// Every resource adopted.
    pub adopted: Vec<Entry>,
    /// How many.
    pub count: usize,
}

/// What an event says: one variant per kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "kebab-case")]
pub enum EventData {
    /// See [`kind::REVISION_ENFORCED`].
    RevisionEnforced(RevisionEnforced),
    /// See [`kind::REVISION_REJECTED`].
    RevisionRejected(RevisionRejected),
    /// See [`kind::HISTORY_REWRITTEN`].
    HistoryRewritten(HistoryRewritten),
    /// See [`kind::DRIFT_DETECTED`].
    DriftDetected(DriftDetected),
    /// See [`kind::DRIFT_ATTRIBUTED`].
    DriftAttributed(DriftAttributed),
    /// See [`kind::CHANGE_APPLIED`].
    ChangeApplied(ChangeRecord),
    /// See [`kind::CHANGE_FAILED`].
    ChangeFailed(ChangeRecord),
    /// See [`kind::FINDING_OPENED`].
    FindingOpened(Finding),
    /// See [`kind::FINDING_CLOSED`].
    FindingClosed(Finding),
    /// See [`kind::RECONCILED`].
    Reconciled(Reconciled),
    /// See [`kind::RETENTION`].
    Retention(Retention),
    /// See [`kind::OWNERSHIP_RECORDED`].
    OwnershipRecorded(Entry),
    /// See [`kind::OWNERSHIP_RELEASED`].
    OwnershipReleased(OwnershipReleased),
    /// See [`kind::OWNERSHIP_BOOTSTRAPPED`].
    OwnershipBootstrapped(OwnershipBootstrapped),
}

impl EventData {
    /// The kind, as the store names it.
    pub fn kind(&self) -> &'static str {
        match self {
            EventData::RevisionEnforced(_) => kind::REVISION_ENFORCED,
            EventData::RevisionRejected(_) => kind::REVISION_REJECTED,
            EventData::HistoryRewritten(_) => kind::HISTORY_REWRITTEN,
            EventData::DriftDetected(_) => kind::DRIFT_DETECTED,
            EventData::DriftAttributed(_) => kind::DRIFT_ATTRIBUTED,
            EventData::ChangeApplied(_) => kind::CHANGE_APPLIED,
            EventData::ChangeFailed(_) => kind::CHANGE_FAILED,
            EventData::FindingOpened(_) => kind::FINDING_OPENED,
            EventData::FindingClosed(_) => kind::FINDING_CLOSED,
            EventData::Reconciled(_) => kind::RECONCILED,
            EventData::Retention(_) => kind::RETENTION,
            EventData::OwnershipRecorded(_) => kind::OWNERSHIP_RECORDED,
            EventData::OwnershipReleased(_) => kind::OWNERSHIP_RELEASED,
            EventData::OwnershipBootstrapped(_) => kind::OWNERSHIP_BOOTSTRAPPED,
        }
    }

    /// The data alone, as the store's `data` column keeps it.
    pub fn data_json(&self) -> String {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut m)) => m.remove("data").unwrap_or(Value::Null).to_string(),
            // Every variant is a struct or a record: always an object with `data`.
            _ => "null".into(),
        }
    }
}

/// An event's kind and data as read back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Body {
    /// Understood.
    Typed(EventData),
    /// Written by a newer version, or damaged: kept as it is.
    Unrecognized {
        /// The `kind` column.
        kind: String,
        /// The `data` column, parsed if it is JSON.
        data: Value,
    },
}

impl Body {
    /// Read a stored row's kind and data (one parse, straight into the kind's type).
    pub fn read(kind: String, data: &str) -> Body {
        match typed(&kind, data) {
            Some(d) => Body::Typed(d),
            None => Body::Unrecognized {
                data: serde_json::from_str(data).unwrap_or(Value::String(data.to_string())),
                kind,
            },
        }
    }

    /// The kind.
    pub fn kind(&self) -> &str {
        match self {
            Body::Typed(d) => d.kind(),
            Body::Unrecognized { kind, .. } => kind,
        }
    }
}

/// The data of a row of `kind`, when this version knows the kind and the data fits.
fn typed(kind: &str, data: &str) -> Option<EventData> {
    fn of<T: serde::de::DeserializeOwned>(data: &str) -> Option<T> {
        serde_json::from_str(data).ok()
    }
    Some(match kind {
        kind::REVISION_ENFORCED => EventData::RevisionEnforced(of(data)?),
        kind::REVISION_REJECTED => EventData::RevisionRejected(of(data)?),
        kind::HISTORY_REWRITTEN => EventData::HistoryRewritten(of(data)?),
        kind::DRIFT_DETECTED => EventData::DriftDetected(of(data)?),
        kind::DRIFT_ATTRIBUTED => EventData::DriftAttributed(of(data)?),
        kind::CHANGE_APPLIED => EventData::ChangeApplied(of(data)?),
        kind::CHANGE_FAILED => EventData::ChangeFailed(of(data)?),
        kind::FINDING_OPENED => EventData::FindingOpened(of(data)?),
        kind::FINDING_CLOSED => EventData::FindingClosed(of(data)?),
        kind::RECONCILED => EventData::Reconciled(of(data)?),
        kind::RETENTION => EventData::Retention(of(data)?),
        kind::OWNERSHIP_RECORDED => EventData::OwnershipRecorded(of(data)?),
        kind::OWNERSHIP_RELEASED => EventData::OwnershipReleased(of(data)?),
        kind::OWNERSHIP_BOOTSTRAPPED => EventData::OwnershipBootstrapped(of(data)?),
        _ => return None,
    })
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewEvent {
    /// Target, if the event is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Revision (commit id) in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Resource key (`group payments-api`, `function pay-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Control ids (from guardrails).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controls: Vec<String>,
    /// Kind and data.
    #[serde(flatten)]
    pub body: Body,
}

impl NewEvent {
    /// An event saying `data`.
    pub fn new(data: EventData) -> NewEvent {
        NewEvent {
            target: None,
            revision: None,
            resource: None,
            controls: Vec::new(),
            body: Body::Typed(data),
        }
    }

    /// The kind.
    pub fn kind(&self) -> &str {
        self.body.kind()
    }

    /// The typed data, when this version understands it.
    pub fn data(&self) -> Option<&EventData> {
        match &self.body {
            Body::Typed(d) => Some(d),
            Body::Unrecognized { .. } => None,
        }
    }

    /// With a target.
    #[must_use]
    pub fn target(mut self, t: &str) -> Self {
        self.target = Some(t.to_string());
        self
    }

    /// With a revision.
    #[must_use]
    pub fn revision(mut self, r: Option<&str>) -> Self {
        self.revision = r.map(str::to_string);
        self
    }

    /// About a resource (kept by its key: kind and name).
    #[must_use]
    pub fn resource(mut self, r: &ResourceAddr) -> Self {
        self.resource = Some(r.key());
        self
    }

    /// With control ids.
    #[must_use]
    pub fn controls(mut self, c: &[String]) -> Self {
        self.controls = c.to_vec();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_written_and_read_by_the_same_type() {
        let mut seen = std::collections::BTreeSet::new();
        let finding = Finding {
            kind: crate::check::FindingKind::GuardrailViolation,
            target: "t".into(),
            resource: ResourceAddr::group("sg-1"),
            message: "m".into(),
            guardrail: Some("g".into()),
            controls: vec!["C-1".into()],
            location: None,
        };
        let entry = Entry {
            kind: OwnedKind::Endpoint,
            id: "vpce-1".into(),
            owner: "endpoint.s3".into(),
            how: crate::ownership::How::Created,
        };
        let record = ChangeRecord {
            resource: ResourceAddr::group("payments-api"),
            cause: Cause::Drift,
            action: "removeRules".into(),
            status: ChangeStatus::Applied,
            request_ids: vec!["r-1".into()],
            detail: None,
        };
        for data in [
            EventData::ChangeApplied(record.clone()),
            EventData::ChangeFailed(ChangeRecord {
                status: ChangeStatus::Blocked,
                ..record
            }),
            EventData::DriftDetected(DriftDetected {
                change: "added out of band".into(),
                actor: None,
                correction: None,
            }),
            EventData::DriftAttributed(DriftAttributed {
                detected_at: 1,
                actor: Box::new(palisade_providers::Actor::named(
                    palisade_providers::ActorKind::ServicePrincipal,
                    "app",
                )),
            }),
            EventData::Reconciled(Reconciled {
                result: ReconcileResult::Timeout,
                error: Some("deadline".into()),
                trigger: Some(Trigger::Resync),
                changes: 3,
            }),
            EventData::RevisionEnforced(RevisionEnforced {
                author: "A".into(),
                summary: "s".into(),
                signature: Some(SignatureStatus::Unsigned),
                time: 1,
                controls: vec!["C-1".into()],
                policies: 2,
            }),
            EventData::RevisionRejected(RevisionRejected {
                reason: RejectReason::Invalid,
                details: vec!["x.yaml:1:1: bad".into()],
                author: "A".into(),
                summary: "s".into(),
                signature: None,
            }),
            EventData::HistoryRewritten(HistoryRewritten {
                previous: "c0".into(),
                author: "A".into(),
                summary: "s".into(),
                signature: Some(SignatureStatus::Verified {
                    signer: "ops".into(),
                }),
            }),
            EventData::FindingOpened(finding.clone()),
            EventData::FindingClosed(finding),
            EventData::Retention(Retention {
                before: 5,
                events_deleted: 6,
                reports_deleted: 7,
            }),
            EventData::OwnershipRecorded(entry.clone()),
            EventData::OwnershipReleased(OwnershipReleased {
                kind: OwnedKind::Group,
                id: "sg-1".into(),
                owner: "api".into(),
                why: Removed::Deleted,
            }),
            EventData::OwnershipBootstrapped(OwnershipBootstrapped {
                adopted: vec![entry],
                count: 1,
            }),
        ] {
            let kind = data.kind().to_string();
            seen.insert(kind.clone());
            let back = Body::read(kind.clone(), &data.data_json());
            assert_eq!(back, Body::Typed(data), "{kind}");
        }
        assert_eq!(seen.len(), 14, "one sample of every kind: {seen:?}");
    }

    #[test]
    fn a_row_this_version_does_not_know_reads_back_as_it_is() {
        let b = Body::read("from-the-future".into(), r#"{"x":1}"#);
        assert_eq!(
            b,
            Body::Unrecognized {
                kind: "from-the-future".into(),
                data: serde_json::json!({"x": 1})
            }
        );
        // A known kind with damaged data is kept too, not dropped.
        let b = Body::read(kind::CHANGE_APPLIED.into(), "not json");
        assert_eq!(b.kind(), kind::CHANGE_APPLIED);
        assert!(matches!(b, Body::Unrecognized { .. }));
    }

    #[test]
    fn api_json_keeps_its_shape() {
        let e = NewEvent::new(EventData::Reconciled(Reconciled {
            result: ReconcileResult::Ok,
            error: None,
            trigger: Some(Trigger::Webhook),
            changes: 0,
        }))
        .target("prod");
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "reconciled");
        assert_eq!(v["data"]["result"], "ok");
        assert_eq!(v["target"], "prod");
        let back: NewEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }
}
