//! Executes a [`Plan`] through a [`Provider`], in order, isolating failures: a failed
//! change blocks only the changes that need it (a failed `CreateGroup` blocks that
//! group's rules and every placement, association and endpoint that references it; a
//! failed endpoint creation blocks the deletion of the endpoint it replaces; a group is
//! deleted only when everything moving away from it succeeded). Everything independent
//! proceeds, make-before-break holds within each chain, and revoking rules added out of
//! band (drift) needs only the group to be Palisade's — it runs even when adding a
//! declared rule to the same group failed.

use std::collections::BTreeMap;

use palisade_providers::{
    Change, GroupRef, Outcome, OutcomeStatus, OwnedKind, Peer, Provider, ProviderError, Target,
};
use serde::Serialize;

use crate::addr::ResourceAddr;
use crate::plan::{Cause, Plan, PlannedChange};

/// How one planned change ended.
#[derive(Debug, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum ChangeOutcome {
    /// The provider answered: applied, already so, or pending.
    Done {
        /// The provider's outcome.
        outcome: Outcome,
    },
    /// The provider failed; the cloud's error is in the text (and, for the first
    /// failure, typed in [`ApplyError::Change`]).
    Failed {
        /// The error.
        error: String,
    },
    /// Not attempted: a change it needs failed (or was itself blocked).
    Blocked {
        /// Position in the plan of the change that failed first in the chain.
        by: usize,
        /// That change's resource.
        by_resource: ResourceAddr,
    },
}

/// What happened to one planned change.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeResult {
    /// The change.
    pub planned: PlannedChange,
    /// How it ended.
    #[serde(flatten)]
    pub result: ChangeOutcome,
}

impl ChangeResult {
    /// The provider's outcome, when it answered.
    pub fn outcome(&self) -> Option<&Outcome> {
        match &self.result {
            ChangeOutcome::Done { outcome } => Some(outcome),
            _ => None,
        }
    }
}

/// What `apply` did.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    /// One entry per change reached, in plan order (attempted or blocked).
    pub results: Vec<ChangeResult>,
    /// Changes not reached because the apply was told to stop (shutdown, deadline).
    pub skipped: usize,
    /// Changes the cloud could not do yet (retried on a later reconcile).
    pub pending: usize,
    /// Changes that failed.
    pub failed: usize,
    /// Changes blocked by a failed change they need.
    pub blocked: usize,
}

/// Why a plan was not (fully) applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The plan was refused by the blast-radius budget or the empty-source rule.
    #[error("plan refused: {reason}")]
    Refused {
        /// Why.
        reason: String,
    },
    /// At least one change failed; everything that did not need it was still applied.
    #[error("change {index} ({resource}) failed{}", if report.failed > 1 { format!(" (and {} more)", report.failed - 1) } else { String::new() })]
    Change {
        /// Position in the plan of the first failure.
        index: usize,
        /// Its resource.
        resource: ResourceAddr,
        /// Everything that was done, failed or blocked.
        report: Box<ApplyReport>,
        /// The provider's error of the first failure.
        #[source]
        source: ProviderError,
    },
}

/// What a change establishes for later changes, and what it relies on.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    /// The managed group of an owner exists and is Palisade's (created, or its tags back).
    Group(String),
    /// …and carries the rules this plan adds.
    GroupRules(String),
    /// The managed endpoint of an owner exists and is Palisade's.
    Endpoint(String),
    /// Everything this plan moves away from the group of an owner has moved.
    Left(String),
}

fn managed(g: &GroupRef) -> Option<&str> {
    match g {
        GroupRef::Managed(o) => Some(o),
        GroupRef::Id(_) => None,
    }
}

/// (needs, provides) of one planned change.
fn keys(c: &PlannedChange) -> (Vec<Key>, Vec<Key>) {
    let ready = |gs: &mut dyn Iterator<Item = &GroupRef>| -> Vec<Key> {
        gs.filter_map(managed)
            .flat_map(|o| [Key::Group(o.into()), Key::GroupRules(o.into())])
            .collect()
    };
    match &c.change {
        Change::CreateGroup { owner, .. } => (vec![], vec![Key::Group(owner.clone())]),
        Change::SetOwnershipTags { kind, owner, .. } => match kind {
            OwnedKind::Group => (vec![], vec![Key::Group(owner.clone())]),
            OwnedKind::Endpoint => (vec![], vec![Key::Endpoint(owner.clone())]),
        },
        Change::AddRules { group, rules } => {
            let mut needs: Vec<Key> = managed(group)
                .map(|o| Key::Group(o.into()))
                .into_iter()
                .collect();
            needs.extend(rules.iter().filter_map(|r| match &r.peer {
                Peer::Group(g) => managed(g).map(|o| Key::Group(o.into())),
                _ => None,
            }));
            let provides = managed(group)
                .map(|o| Key::GroupRules(o.into()))
                .into_iter()
                .collect();
            (needs, provides)
        }
        Change::RemoveRules { group, .. } => {
            let Some(o) = managed(group) else {
                return (vec![], vec![]);
            };
            // Drift-reducing: only the group has to be Palisade's. A policy's own
            // removal waits for the group's new rules (make before break).
            if c.cause == Cause::Drift {
                (vec![Key::Group(o.into())], vec![])
            } else {
                (
                    vec![Key::Group(o.into()), Key::GroupRules(o.into())],
                    vec![],
                )
            }
        }
        Change::SetPlacement { before, after, .. } => {
            let needs = ready(&mut after.iter().flat_map(|p| &p.groups));
            let left = before
                .iter()
                .flat_map(|p| &p.groups)
                .filter(|g| !after.iter().any(|a| a.groups.contains(g)))
                .filter_map(managed)
                .map(|o| Key::Left(o.into()))
                .collect();
            (needs, left)
        }
        // The front door depends on nothing else the plan makes.
        Change::SetInbound { .. } => (vec![], vec![]),
        Change::SetSubnetGroup { before, after, .. } => {
            let needs = ready(&mut after.iter());
            let left = before
                .iter()
                .filter(|g| after.as_ref() != Some(*g))
                .filter_map(managed)
                .map(|o| Key::Left(o.into()))
                .collect();
            (needs, left)
        }
        Change::CreateEndpoint { owner, groups, .. } => (
            ready(&mut groups.iter()),
            vec![Key::Endpoint(owner.clone())],
        ),
        Change::UpdateEndpoint { owner, groups, .. } => {
            let mut needs = ready(&mut groups.iter());
            needs.push(Key::Endpoint(owner.clone()));
            (needs, vec![])
        }
        Change::DeleteEndpoint { owner, .. } => (vec![Key::Endpoint(owner.clone())], vec![]),
        Change::DeleteGroup { owner, .. } => (vec![Key::Left(owner.clone())], vec![]),
    }
}

/// What a change that failed (or was blocked by the failure at `by`) would have
/// provided is not there: everything needing it is blocked by `by`.
fn poison(poisoned: &mut BTreeMap<Key, usize>, provides: Vec<Key>, by: usize) {
    for k in provides {
        poisoned.entry(k).or_insert(by);
    }
}

/// Apply `plan` to `target` through `provider`.
///
/// # Errors
/// [`ApplyError::Refused`] without any call when the plan is refused;
/// [`ApplyError::Change`] when any change failed, with the report of everything.
pub async fn apply(
    plan: &Plan,
    target: &Target,
    provider: &dyn Provider,
) -> Result<ApplyReport, ApplyError> {
    apply_until(plan, target, provider, &|| false, &mut |_| {}).await
}

/// [`apply`], but `stop` is asked before each change; once it says yes, the remaining
/// changes are left (counted in [`ApplyReport::skipped`]) for the next reconcile. Used on
/// shutdown and at the reconcile's deadline: the change in flight finishes, no new one
/// starts. `done` is told each result as soon as it is known, so that what was applied
/// is recorded even if the whole apply is then cut short.
///
/// # Errors
/// As [`apply`].
pub async fn apply_until(
    plan: &Plan,
    target: &Target,
    provider: &dyn Provider,
    stop: &(dyn Fn() -> bool + Sync),
    done: &mut (dyn FnMut(&ChangeResult) + Send),
) -> Result<ApplyReport, ApplyError> {
    if let Some(r) = &plan.refusal {
        return Err(ApplyError::Refused {
            reason: r.reason.clone(),
        });
    }
    let mut report = ApplyReport::default();
    // Key → the failed change (index) that poisoned it.
    let mut poisoned: BTreeMap<Key, usize> = BTreeMap::new();
    let mut first: Option<(usize, ProviderError)> = None;
    for (index, planned) in plan.changes.iter().enumerate() {
        if stop() {
            report.skipped = plan.changes.len() - index;
            break;
        }
        let (needs, provides) = keys(planned);
        if let Some(by) = needs.iter().find_map(|k| poisoned.get(k).copied()) {
            poison(&mut poisoned, provides, by);
            report.blocked += 1;
            report.results.push(ChangeResult {
                planned: planned.clone(),
                result: ChangeOutcome::Blocked {
                    by,
                    by_resource: plan.changes[by].resource.clone(),
                },
            });
            report.results.last().map(&mut *done);
            continue;
        }
        match provider.apply(target, &planned.change).await {
            Ok(outcome) => {
                if outcome.status == OutcomeStatus::Pending {
                    report.pending += 1;
                }
                report.results.push(ChangeResult {
                    planned: planned.clone(),
                    result: ChangeOutcome::Done { outcome },
                });
                report.results.last().map(&mut *done);
            }
            Err(source) => {
                poison(&mut poisoned, provides, index);
                report.failed += 1;
                report.results.push(ChangeResult {
                    planned: planned.clone(),
                    result: ChangeOutcome::Failed {
                        error: source.to_string(),
                    },
                });
                report.results.last().map(&mut *done);
                if first.is_none() {
                    first = Some((index, source));
                }
            }
        }
    }
    match first {
        None => Ok(report),
        Some((index, source)) => Err(ApplyError::Change {
            index,
            resource: plan.changes[index].resource.clone(),
            report: Box::new(report),
            source,
        }),
    }
}
