//! Executes a [`Plan`] through a [`Provider`], in order, stopping at the first failure
//! so that nothing destructive runs after a constructive step failed.

use palisade_providers::{Outcome, OutcomeStatus, Provider, ProviderError, Target};
use serde::Serialize;

use crate::plan::{Plan, PlannedChange};

/// What happened to one planned change.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeResult {
    /// The change.
    pub planned: PlannedChange,
    /// Its outcome, or the error text (the typed error is in [`ApplyError`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// Error, if it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What `apply` did.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    /// One entry per attempted change, in order.
    pub results: Vec<ChangeResult>,
    /// Changes not attempted because an earlier one failed.
    pub skipped: usize,
    /// Changes the cloud could not do yet (retried on a later reconcile).
    pub pending: usize,
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
    /// A change failed; the changes after it were not attempted.
    #[error("change {index} ({resource}) failed")]
    Change {
        /// Position in the plan.
        index: usize,
        /// Resource.
        resource: String,
        /// What was done before the failure.
        report: Box<ApplyReport>,
        /// The provider's error.
        #[source]
        source: ProviderError,
    },
}

/// Apply `plan` to `target` through `provider`.
///
/// # Errors
/// [`ApplyError::Refused`] without any call when the plan is refused;
/// [`ApplyError::Change`] at the first failed change, with the report so far.
pub async fn apply(
    plan: &Plan,
    target: &Target,
    provider: &dyn Provider,
) -> Result<ApplyReport, ApplyError> {
    apply_until(plan, target, provider, &|| false).await
}

/// [`apply`], but `stop` is asked before each change; once it says yes, the remaining
/// changes are left (counted in [`ApplyReport::skipped`]) for the next reconcile. Used on
/// shutdown: the change in flight finishes, no new one starts.
///
/// # Errors
/// As [`apply`].
pub async fn apply_until(
    plan: &Plan,
    target: &Target,
    provider: &dyn Provider,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<ApplyReport, ApplyError> {
    if let Some(r) = &plan.refusal {
        return Err(ApplyError::Refused {
            reason: r.reason.clone(),
        });
    }
    let mut report = ApplyReport::default();
    for (index, planned) in plan.changes.iter().enumerate() {
        if stop() {
            report.skipped = plan.changes.len() - index;
            return Ok(report);
        }
        match provider.apply(target, &planned.change).await {
            Ok(outcome) => {
                if outcome.status == OutcomeStatus::Pending {
                    report.pending += 1;
                }
                report.results.push(ChangeResult {
                    planned: planned.clone(),
                    outcome: Some(outcome),
                    error: None,
                });
            }
            Err(source) => {
                report.skipped = plan.changes.len() - index - 1;
                report.results.push(ChangeResult {
                    planned: planned.clone(),
                    outcome: None,
                    error: Some(source.to_string()),
                });
                return Err(ApplyError::Change {
                    index,
                    resource: planned.resource.clone(),
                    report: Box::new(report),
                    source,
                });
            }
        }
    }
    Ok(report)
}
