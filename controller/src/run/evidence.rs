//! The compliance evidence of one reconcile: its events, the per-resource status of the
//! report and the findings, written to the history in one transaction.

use crate::check::{Finding, FindingKind};
use crate::compile::DesiredState;
use crate::history::{
    ChangeRecord, NewEvent, Report, ResourceState, ResourceStatus, RevisionRef, kind as ev,
};
use crate::source::Revision;

use super::{Shared, now_ms};

/// What one reconcile leaves for the history.
#[derive(Debug, Default)]
pub(super) struct Evidence {
    /// Whether the target was observed (findings are only opened/closed then).
    pub(super) observed: bool,
    pub(super) resources: Vec<String>,
    pub(super) changes: Vec<ChangeRecord>,
    pub(super) findings: Vec<Finding>,
    /// Events with their times: drift when it was observed, changes when applied.
    pub(super) events: Vec<(i64, NewEvent)>,
}

/// `group payments-api (sg-1)` → `group payments-api`.
pub(super) fn resource_key(resource: &str) -> String {
    resource.split(" (").next().unwrap_or(resource).to_string()
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

/// Every managed resource of a desired state, named as plans name them.
pub(super) fn managed_resources(d: &DesiredState) -> Vec<String> {
    let mut v: Vec<String> = d.groups.keys().map(|o| format!("group {o}")).collect();
    v.extend(
        d.placements
            .values()
            .map(|p| format!("function {}", p.name)),
    );
    v.extend(d.endpoints.keys().map(|o| format!("endpoint {o}")));
    v.extend(d.subnet_groups.values().map(|s| {
        format!(
            "subnet {}",
            s.subnet.rsplit('/').next().unwrap_or(&s.subnet)
        )
    }));
    v.sort();
    v.dedup();
    v
}

pub(super) fn write_evidence(
    shared: &Shared,
    target: &str,
    revision: &Revision,
    label: &str,
    error: Option<&str>,
    trigger: &str,
    mut evidence: Evidence,
) {
    let Some(history) = &shared.history else {
        return;
    };
    let at = now_ms();
    evidence.events.push((
        at,
        NewEvent::new(
            ev::RECONCILED,
            serde_json::json!({ "result": label, "error": error, "trigger": trigger, "changes": evidence.changes.len() }),
        )
        .target(target)
        .revision(Some(&revision.commit)),
    ));
    let result = if evidence.observed {
        let audit: std::collections::BTreeSet<String> = evidence
            .findings
            .iter()
            .filter(|f| f.kind == FindingKind::AuditDrift)
            .map(|f| resource_key(&f.resource))
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
                let status = if mine.iter().any(|c| c.status == "failed") {
                    ResourceState::Failed
                } else if mine.iter().any(|c| c.status == "pending") {
                    ResourceState::Pending
                } else if mine.iter().any(|c| c.cause == "drift") {
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
            revision: Some(RevisionRef {
                commit: revision.commit.clone(),
                author: revision.author.clone(),
                signature: serde_json::to_value(&revision.signature)
                    .ok()
                    .and_then(|v| v["status"].as_str().map(str::to_string))
                    .unwrap_or_default(),
            }),
            result: label.to_string(),
            resources,
            changes: evidence.changes,
            findings: evidence.findings,
        };
        history
            .record_reconcile(&report, &evidence.events)
            .map(|_| ())
    } else {
        history.append_many(&evidence.events)
    };
    if let Err(e) = result {
        tracing::error!(error = %e, target, "could not write the reconcile to the history");
    }
}
