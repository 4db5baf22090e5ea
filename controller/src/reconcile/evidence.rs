//! The compliance evidence of one reconcile: its events, the per-resource status of the
//! report and the findings, written to the history in one transaction.

use crate::addr::ResourceAddr;
use crate::check::{Finding, FindingKind};
use crate::compile::DesiredState;
use crate::history::{
    ChangeRecord, ChangeStatus, EventData, NewEvent, ReconcileResult, Reconciled, Report,
    ResourceState, ResourceStatus, Trigger,
};
use crate::plan::Cause;
use crate::source::Revision;

use super::Shared;

/// What one reconcile leaves for the history.
#[derive(Debug, Default)]
pub(super) struct Evidence {
    /// Whether the target was observed (findings are only opened/closed then).
    pub(super) observed: bool,
    pub(super) resources: Vec<ResourceAddr>,
    /// How many changes the plan had per resource (keys): a resource with fewer change
    /// records was not reached (entirely).
    pub(super) planned: std::collections::BTreeMap<ResourceAddr, usize>,
    pub(super) changes: Vec<ChangeRecord>,
    pub(super) findings: Vec<Finding>,
    /// Events with their times: drift when it was observed, changes when applied.
    pub(super) events: Vec<(i64, NewEvent)>,
    /// The drift events of `events` to ask the audit log about once the reconcile is
    /// done (reverts never wait for it): index, cloud id, resource.
    pub(super) drift: Vec<(usize, Option<String>, ResourceAddr)>,
    /// When this reconcile observed, and when the one before did (the window).
    pub(super) observed_at: i64,
    pub(super) since: Option<i64>,
}

pub(super) fn describe(c: &crate::plan::PlannedChange) -> String {
    let action = c.change.action();
    let detail = match &c.change {
        palisade_providers::Change::AddRules { rules, .. } => format!(
            "missing: {}",
            rules
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ),
        palisade_providers::Change::RemoveRules { rules, .. } => format!(
            "added out of band: {}",
            rules
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        ),
        palisade_providers::Change::SetPlacement { before, .. } => match before {
            Some(p) => format!("moved to {} subnets {:?}", p.network, p.subnets),
            None => "taken out of its network".into(),
        },
        palisade_providers::Change::CreateEndpoint { .. } => "deleted out of band".into(),
        // What was done out of band: from the declared restrictions to what was found.
        palisade_providers::Change::SetInbound { before, after, .. } => match before {
            Some(found) => {
                let mut parts = Vec::new();
                if found.default_action != after.default_action {
                    parts.push(format!("default action set to {:?}", found.default_action));
                }
                for r in found.rules.iter().filter(|r| !after.rules.contains(r)) {
                    parts.push(format!("added {r} ({:?})", r.name));
                }
                for r in after.rules.iter().filter(|r| !found.rules.contains(r)) {
                    parts.push(format!("removed {r}"));
                }
                format!("front door changed out of band: {}", parts.join("; "))
            }
            None => "front door changed out of band".into(),
        },
        palisade_providers::Change::SetSubnetGroup { before, .. } => format!(
            "NSG association changed to {}",
            before
                .as_ref()
                .map_or("none".to_string(), |g| g.to_string())
        ),
        _ => String::new(),
    };
    format!("{action}: {detail}")
}

/// Every managed resource of a desired state, by key (no ids), as plans name them.
pub(super) fn managed_resources(d: &DesiredState) -> Vec<ResourceAddr> {
    let mut v: Vec<ResourceAddr> = d.groups.keys().map(ResourceAddr::group).collect();
    v.extend(
        d.placements
            .values()
            .map(|p| ResourceAddr::function(p.name.as_str())),
    );
    v.extend(d.endpoints.keys().map(ResourceAddr::endpoint));
    v.extend(
        d.subnet_groups
            .values()
            .map(|s| ResourceAddr::subnet(s.subnet.rsplit('/').next().unwrap_or(&s.subnet))),
    );
    v.sort();
    v.dedup();
    v
}

pub(super) fn write_evidence(
    shared: &Shared,
    target: &str,
    revision: &Revision,
    result: ReconcileResult,
    error: Option<&str>,
    trigger: Trigger,
    mut evidence: Evidence,
) -> bool {
    if shared.history.is_none() {
        return true;
    }
    let at = shared.clock.now_ms();
    evidence.events.push((
        at,
        NewEvent::new(EventData::Reconciled(Reconciled {
            result,
            error: error.map(str::to_string),
            trigger: Some(trigger),
            changes: evidence.changes.len(),
        }))
        .target(target)
        .revision(Some(&revision.commit)),
    ));
    let what = format!("the evidence of a reconcile of {target}");
    if evidence.observed {
        let audit: std::collections::BTreeSet<ResourceAddr> = evidence
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::AuditDrift)
            .map(|f| f.resource.without_id())
            .collect();
        let resources = evidence
            .resources
            .iter()
            .map(|r| {
                let mine: Vec<&ChangeRecord> = evidence
                    .changes
                    .iter()
                    .filter(|c| &c.resource == r)
                    .collect();
                let status = if mine
                    .iter()
                    .any(|c| matches!(c.status, ChangeStatus::Failed | ChangeStatus::Blocked))
                {
                    ResourceState::Failed
                } else if mine.iter().any(|c| c.status == ChangeStatus::Pending) {
                    ResourceState::Pending
                } else if mine.len() < evidence.planned.get(r).copied().unwrap_or(0) {
                    ResourceState::NotReached
                } else if mine.iter().any(|c| c.cause == Cause::Drift) {
                    ResourceState::DriftReverted
                } else if !mine.is_empty() {
                    ResourceState::Changed
                } else if audit.contains(r) {
                    ResourceState::DriftReported
                } else {
                    ResourceState::Compliant
                };
                ResourceStatus {
                    resource: r.clone(),
                    status,
                }
            })
            .collect();
        let report = Report {
            at,
            target: target.to_string(),
            revision: Some(revision.into()),
            result,
            resources,
            changes: evidence.changes,
            findings: evidence.findings,
        };
        shared.write_history(
            super::Unwritten::Reconcile(Box::new(report), evidence.events),
            &what,
        )
    } else {
        shared.write_history(super::Unwritten::Events(evidence.events), &what)
    }
}
