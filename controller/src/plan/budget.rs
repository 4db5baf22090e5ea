//! The blast-radius budget: what counts as a deletion, the managed denominator, and the
//! refusal of a plan that deletes too much (or everything, from an empty source).

use super::*;

/// Managed rules and resources observed: the denominator of the percentage budget.
pub(super) fn managed_count(observed: &Inventory) -> usize {
    let groups: usize = observed
        .groups
        .iter()
        .filter(|g| g.owner().is_some())
        .map(|g| 1 + g.rules.len())
        .sum();
    let endpoints = observed
        .endpoints
        .iter()
        .filter(|e| e.owner().is_some())
        .count();
    let placements = observed
        .functions
        .iter()
        .filter(|f| {
            f.placement
                .as_ref()
                .is_some_and(|p| p.groups.iter().any(|g| matches!(g, GroupRef::Managed(_))))
        })
        .count();
    let subnets = observed
        .subnets
        .iter()
        .filter(|s| matches!(s.group, Some(GroupRef::Managed(_))))
        .count();
    groups + endpoints + placements + subnets
}

/// What counts against the blast-radius budget: every change that removes access —
/// deleted groups and endpoints, revoked rules, releases, detached NSGs, allow rules
/// taken off a front door — except the revocation of rules added out of band (drift).
/// Reverting those restores what the policies declare; refusing it would keep access
/// nobody declared (fail open).
pub fn budgeted_deletes(changes: &[PlannedChange]) -> usize {
    changes
        .iter()
        .filter(|c| {
            !(c.cause == Cause::Drift
                && matches!(
                    c.change,
                    Change::RemoveRules { .. } | Change::SetInbound { .. }
                ))
        })
        .map(|c| c.change.deletes())
        .sum()
}

pub(super) fn refuse(
    desired: &DesiredState,
    observed: &Inventory,
    changes: &[PlannedChange],
    settings: &Settings,
) -> Option<Refusal> {
    let deletes = budgeted_deletes(changes);
    let managed = managed_count(observed);
    let nothing_desired =
        desired.groups.is_empty() && desired.placements.is_empty() && desired.endpoints.is_empty();
    if nothing_desired && managed > 0 && !settings.allow_empty {
        return Some(Refusal {
            reason: format!(
                "the policy source defines nothing for target {}, but {managed} managed rules and resources exist; refusing to delete them all (an empty or broken source never means \"delete everything\"; set allowEmpty to override)",
                desired.target
            ),
            deletes,
            managed,
        });
    }
    if deletes > settings.max_deletes {
        return Some(Refusal {
            reason: format!(
                "the plan deletes {deletes} rules and resources; the budget is {} per plan",
                settings.max_deletes
            ),
            deletes,
            managed,
        });
    }
    if deletes >= settings.delete_percent_floor
        && managed > 0
        && deletes * 100 > managed * settings.max_delete_percent as usize
    {
        return Some(Refusal {
            reason: format!(
                "the plan deletes {deletes} of {managed} managed rules and resources ({}%); the budget is {}%",
                deletes * 100 / managed,
                settings.max_delete_percent
            ),
            deletes,
            managed,
        });
    }
    None
}
