//! One reconcile of one target, and what it leaves behind: the ownership record and
//! the loop state read (once per worker, then kept), observe → plan (conflicts and
//! flapping as findings) → record intents → apply (failure-isolated, stopping between
//! changes at the deadline or on shutdown) → record outcomes; then metrics, evidence and
//! status. Its collaborators come from [`Shared`]: the providers, the history store
//! (ownership record, loop state, evidence), the status sink, the metrics and the clock
//! — so that it is unit-tested with the fake provider and an in-memory store.

use std::time::Instant;

use palisade_providers::{Change, GroupRef, OutcomeStatus, Ownership};

use super::evidence::{Evidence, describe, managed_resources, write_evidence};
use super::status::{ReconcileRecord, ReconcileResult, Trigger};
use super::{Enforced, Shared};
use crate::apply::{ApplyError, ChangeOutcome, apply_until};
use crate::check::Finding;
use crate::compile::DesiredState;
use crate::flaps::Flaps;
use crate::history::{ChangeRecord, ChangeStatus, DriftDetected, EventData, NewEvent};
use crate::metrics::{KindL, ResultL, TargetL, TriggerL};
use crate::ownership::{self, OwnershipStore};
use crate::plan::{Cause, PlannedChange};
use crate::planning::{PlanError, PlanTarget, observe_and_plan};
use crate::policy::Diagnostic;
use crate::state::{PendingAttribution, StateStore};

/// What a worker keeps between the reconciles of its target (and the store keeps
/// between runs): the desired state last enforced and the flap history.
#[derive(Debug, Default)]
pub struct TargetState {
    /// Read from the store on the first reconcile.
    loaded: bool,
    /// The desired state last enforced: drift vs intended change.
    previous: Option<DesiredState>,
    /// Recent drift reverts per exact field.
    flaps: Flaps,
    /// When the last observation was made (Unix ms): where the window of an
    /// attribution starts.
    last_observed: Option<i64>,
    /// Drift whose author the audit log did not show yet (it lags by minutes): asked
    /// again on later reconciles, then given up as unknown.
    pending_attributions: Vec<PendingAttribution>,
}

/// Longest look back for who made a drift when no earlier observation bounds it.
const ATTRIBUTION_LOOKBACK_MS: i64 = 60 * 60 * 1000;
/// Slack at both ends of the window, for clocks that disagree (no more: a wider window
/// takes in writes the previous observation accepted, or writes made after the drift
/// was seen).
const ATTRIBUTION_SLACK_MS: i64 = 60 * 1000;
/// Most audit-log queries in one reconcile (fresh drift first): CloudTrail allows 2
/// lookups per second; the rest wait for the next reconcile.
const ATTRIBUTION_QUERIES_MAX: usize = 16;
/// How long an unattributed drift is asked about again (the Activity Log shows most
/// events within 15 minutes; CloudTrail within 15).
const ATTRIBUTION_GIVE_UP_MS: i64 = 30 * 60 * 1000;
/// Most drift waiting for its author per target; the oldest is given up beyond.
const ATTRIBUTION_PENDING_MAX: usize = 1000;
/// Longest wait for the audit log in one reconcile.
const ATTRIBUTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The cloud id the audit log knows a drifted resource by.
fn drift_cloud_id(change: &Change, inventory: &palisade_providers::Inventory) -> Option<String> {
    let group = |g: &GroupRef| match g {
        GroupRef::Id(id) => Some(id.clone()),
        GroupRef::Managed(owner) => inventory
            .groups
            .iter()
            .find(|x| x.owner() == Some(owner.as_str()))
            .map(|x| x.id.clone()),
    };
    match change {
        Change::AddRules { group: g, .. } | Change::RemoveRules { group: g, .. } => group(g),
        Change::SetPlacement { function, .. } | Change::SetInbound { function, .. } => {
            Some(function.clone())
        }
        Change::SetSubnetGroup { subnet, .. } => Some(subnet.clone()),
        Change::SetOwnershipTags { id, .. }
        | Change::UpdateEndpoint { id, .. }
        | Change::DeleteEndpoint { id, .. }
        | Change::DeleteGroup { id, .. } => Some(id.clone()),
        Change::CreateGroup { .. } | Change::CreateEndpoint { .. } => None,
    }
}

/// Give every drift event of `resource` in this reconcile its actor; how many.
fn set_actor(
    evidence: &mut Evidence,
    resource: &crate::addr::ResourceAddr,
    actor: &palisade_providers::Actor,
) -> usize {
    let mut n = 0;
    for (i, _, r) in &evidence.drift {
        if r != resource {
            continue;
        }
        if let Some((_, ev)) = evidence.events.get_mut(*i)
            && let crate::history::Body::Typed(EventData::DriftDetected(d)) = &mut ev.body
        {
            d.actor = Some(Box::new(actor.clone()));
            n += 1;
        }
    }
    n
}

/// The flap-history fields of this reconcile's drift of `resource`, and of each drift
/// event that names its actor, that actor.
fn drift_fields(
    evidence: &Evidence,
    resource: Option<&crate::addr::ResourceAddr>,
) -> Vec<(Vec<String>, Option<palisade_providers::Actor>)> {
    evidence
        .drift
        .iter()
        .filter(|(_, _, r)| resource.is_none_or(|x| x == r))
        .filter_map(
            |(i, _, r)| match evidence.events.get(*i).map(|(_, e)| &e.body) {
                Some(crate::history::Body::Typed(EventData::DriftDetected(d))) => Some((
                    crate::flaps::fields_of(r, d.correction.as_ref()?),
                    d.actor.as_deref().cloned(),
                )),
                _ => None,
            },
        )
        .collect()
}

/// Who made the drift this reconcile found (filled into its `drift-detected` events),
/// and who made earlier drift the log did not show yet (`drift-attributed` events):
/// drift not found is kept in `pending` and asked about again (with backoff) until
/// [`ATTRIBUTION_GIVE_UP_MS`]; never guessed. Runs after the reconcile, so that no revert
/// waits for the audit log. A change event of this reconcile that names a drifted
/// resource says who at once (no query).
///
/// Returns whether an author was added to `flaps` (who made drift that was reverted:
/// the flap finding names a principal that keeps changing a field back).
async fn attribute(
    shared: &Shared,
    name: &str,
    enforced: &Enforced,
    pending: &mut Vec<PendingAttribution>,
    pushed: &[super::events::Delivery],
    flaps: &mut crate::flaps::Flaps,
    evidence: &mut Evidence,
) -> bool {
    let now = evidence.observed_at;
    // Nothing was observed (the reconcile failed before): nothing to ask.
    if !evidence.observed
        || (evidence.drift.is_empty() && !pending.iter().any(|p| p.next_try <= now))
    {
        return false;
    }
    let Some(scope) = enforced.targets.get(name) else {
        return false;
    };
    let Ok(provider) = shared.providers.get(scope.scope.cloud()) else {
        return false;
    };
    let mut authored = false;
    let outcome = |o: &str, n: usize| {
        if n > 0 {
            shared
                .metrics
                .attributions
                .get_or_create(&crate::metrics::OutcomeL {
                    target: name.to_string(),
                    outcome: o.into(),
                })
                .inc_by(n as u64);
        }
    };
    let start = evidence
        .since
        .unwrap_or(now - ATTRIBUTION_LOOKBACK_MS)
        .max(now - ATTRIBUTION_LOOKBACK_MS)
        - ATTRIBUTION_SLACK_MS;
    let fresh: Vec<(
        usize,
        palisade_providers::AttributionQuery,
        crate::addr::ResourceAddr,
    )> = evidence
        .drift
        .iter()
        .filter_map(|(i, id, resource)| {
            Some((
                *i,
                palisade_providers::AttributionQuery {
                    resource: id.clone()?,
                    since_ms: start,
                    until_ms: now + ATTRIBUTION_SLACK_MS,
                },
                resource.clone(),
            ))
        })
        .collect();
    // Several drifts of one resource (a rule removed and another added) are one query.
    let mut fresh = fresh;
    let mut found_now = 0;
    {
        let mut seen = std::collections::HashSet::new();
        fresh.retain(|(_, q, _)| seen.insert(q.resource.to_ascii_lowercase()));
        // A change event of this reconcile that names the resource says who: the audit
        // log is not asked.
        fresh.retain(|(_, q, resource)| {
            match super::events::pushed_actor(pushed, &q.resource, q.since_ms, q.until_ms) {
                Some(a) => {
                    found_now += set_actor(evidence, resource, &a);
                    false
                }
                None => true,
            }
        });
        fresh.truncate(ATTRIBUTION_QUERIES_MAX);
    }
    let due: Vec<usize> = (0..pending.len())
        .filter(|&i| pending[i].next_try <= now)
        .take(ATTRIBUTION_QUERIES_MAX.saturating_sub(fresh.len()))
        .collect();
    let queries: Vec<_> = fresh
        .iter()
        .map(|(_, q, _)| q.clone())
        .chain(due.iter().map(|&i| pending[i].query.clone()))
        .collect();
    let mut found_later = 0;
    if !queries.is_empty() {
        let answer =
            tokio::time::timeout(ATTRIBUTION_TIMEOUT, provider.attribute(scope, &queries)).await;
        let actors = match answer {
            Ok(Ok(actors)) if actors.len() == queries.len() => actors,
            Ok(Ok(_)) => {
                tracing::warn!(target = %name, "the audit log answered for other drift than asked; ignored");
                outcome("error", queries.len());
                vec![None; queries.len()]
            }
            Ok(Err(e)) => {
                tracing::warn!(target = %name, error = %e, "the audit log could not be read; asked again later");
                outcome("error", queries.len());
                vec![None; queries.len()]
            }
            Err(_) => {
                tracing::warn!(target = %name, "the audit log did not answer in time; asked again later");
                outcome("error", queries.len());
                vec![None; queries.len()]
            }
        };
        let (now_answers, later) = actors.split_at(fresh.len());
        for ((_, q, resource), actor) in fresh.iter().zip(now_answers) {
            match actor {
                // Every drift event of this resource in this reconcile.
                Some(a) => found_now += set_actor(evidence, resource, a),
                None => pending.push(PendingAttribution {
                    query: q.clone(),
                    resource: resource.clone(),
                    fields: drift_fields(evidence, Some(resource))
                        .into_iter()
                        .flat_map(|(f, _)| f)
                        .collect(),
                    detected_at: now,
                    attempts: 0,
                    next_try: now,
                }),
            }
        }
        let mut resolved = std::collections::BTreeSet::new();
        for (&i, actor) in due.iter().zip(later) {
            let p = &mut pending[i];
            p.attempts += 1;
            match actor {
                Some(a) => {
                    flaps.attribute(&p.fields, a, now);
                    authored = true;
                    evidence.events.push((
                        now,
                        NewEvent::new(EventData::DriftAttributed(
                            crate::history::DriftAttributed {
                                detected_at: p.detected_at,
                                actor: Box::new(a.clone()),
                            },
                        ))
                        .target(name)
                        .revision(Some(&enforced.revision.commit))
                        .resource(&p.resource),
                    ));
                    found_later += 1;
                    resolved.insert(i);
                }
                None => {
                    // 15 s, 30 s, 1 min … at most 5 min between tries.
                    let wait = (15_000i64 << (p.attempts - 1).min(5)).min(300_000);
                    p.next_try = now + wait;
                }
            }
        }
        let mut i = 0;
        pending.retain(|_| {
            let keep = !resolved.contains(&i);
            i += 1;
            keep
        });
    }
    let before = pending.len();
    pending.retain(|p| now - p.detected_at < ATTRIBUTION_GIVE_UP_MS);
    let mut given_up = before - pending.len();
    if pending.len() > ATTRIBUTION_PENDING_MAX {
        given_up += pending.len() - ATTRIBUTION_PENDING_MAX;
        pending.drain(..pending.len() - ATTRIBUTION_PENDING_MAX);
    }
    for (fields, actor) in drift_fields(evidence, None) {
        if let Some(a) = actor {
            flaps.attribute(&fields, &a, now);
            authored = true;
        }
    }
    outcome("found", found_now + found_later);
    outcome("pending", evidence.drift.len() - found_now);
    outcome("unknown", given_up);
    shared
        .metrics
        .attributions_pending
        .get_or_create(&TargetL {
            target: name.to_string(),
        })
        .set(pending.len() as i64);
    authored
}

/// A reconcile that ended `ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    /// Changes the provider answered.
    pub applied: usize,
    /// Of those, drift put back.
    pub reverted: usize,
}

/// Why a reconcile did not end `ok`, and how far it got.
#[derive(Debug)]
pub struct ReconcileError {
    /// Error, refused or timeout.
    pub result: ReconcileResult,
    /// What happened, for people.
    pub message: String,
    /// Changes the provider answered before it stopped.
    pub applied: usize,
}

impl ReconcileError {
    fn error(message: impl Into<String>) -> ReconcileError {
        ReconcileError {
            result: ReconcileResult::Error,
            message: message.into(),
            applied: 0,
        }
    }

    fn applied(mut self, n: usize) -> ReconcileError {
        self.applied = n;
        self
    }
}

/// The kind of resource a planned change is about (`group`, `function`, `endpoint`…).
fn kind(c: &crate::plan::PlannedChange) -> String {
    c.resource.kind.as_str().to_string()
}

/// Reconcile `target` once at `enforced`, within the reconcile deadline, and record
/// the result: metrics, evidence (history), status. Returns what the status shows.
pub async fn reconcile_once(
    shared: &Shared,
    target: &str,
    enforced: &Enforced,
    trigger: Trigger,
    state: &mut TargetState,
) -> ReconcileRecord {
    shared
        .metrics
        .triggers
        .get_or_create(&TriggerL {
            target: target.to_string(),
            trigger: trigger.as_str().into(),
        })
        .inc();
    let started = Instant::now();
    // The change events that woke (or wait for) this target: consumed by this
    // reconcile, whose observation starts after they arrived.
    let deliveries = shared.inbox(target).take();
    let mut evidence = Evidence::default();
    // The deadline stops the reconcile between changes (observing and planning are cut
    // at it; the apply starts no change past it). The outer timeout, at twice the
    // deadline, is only a backstop for a cloud call that never returns.
    let deadline = tokio::time::Instant::now() + shared.settings.reconcile_timeout;
    let result = tokio::time::timeout(
        shared.settings.reconcile_timeout * 2,
        reconcile(shared, target, enforced, deadline, state, &mut evidence),
    )
    .await;
    let elapsed = started.elapsed();
    let pending_before = state.pending_attributions.clone();
    let authored = attribute(
        shared,
        target,
        enforced,
        &mut state.pending_attributions,
        &deliveries,
        &mut state.flaps,
        &mut evidence,
    )
    .await;
    let (outcome, error, applied, reverted) = match result {
        Ok(Ok(r)) => (ReconcileResult::Ok, None, r.applied, r.reverted),
        Ok(Err(f)) => (f.result, Some(f.message), f.applied, 0),
        Err(_) => (
            ReconcileResult::Timeout,
            Some(format!(
                "the reconcile took longer than {:?}",
                shared.settings.reconcile_timeout * 2
            )),
            0,
            0,
        ),
    };
    let label = outcome.as_str();
    let t = TargetL {
        target: target.to_string(),
    };
    shared
        .metrics
        .reconcile_duration
        .get_or_create(&t)
        .observe(elapsed.as_secs_f64());
    shared
        .metrics
        .reconciles
        .get_or_create(&ResultL {
            target: target.to_string(),
            result: label.into(),
        })
        .inc();
    shared.metrics.sync_api_calls(&shared.providers.api_calls());
    match &error {
        None => {
            tracing::info!(target = %target, trigger = trigger.as_str(), revision = %enforced.revision.commit, applied, drift_reverted = reverted, ms = elapsed.as_millis() as u64, "reconciled")
        }
        Some(e) => {
            tracing::warn!(target = %target, trigger = trigger.as_str(), result = label, error = %e, "reconcile failed; retrying with backoff")
        }
    }
    let observed = evidence.observed;
    let committed = write_evidence(
        shared,
        target,
        &enforced.revision,
        outcome,
        error.as_deref(),
        trigger,
        evidence,
    );
    // The loop state after the evidence, which holds the `drift-attributed` events of
    // what is resolved.
    if state.pending_attributions != pending_before
        && let Some(h) = &shared.history
        && let Err(e) =
            h.save_pending_attributions(target, shared.clock.now_ms(), &state.pending_attributions)
    {
        tracing::error!(target = %target, error = %e, "the drift waiting for its author cannot be written; it is asked about from memory until it can");
    }
    if authored
        && let Some(h) = &shared.history
        && let Err(e) = h.save_flaps(target, shared.clock.now_ms(), &state.flaps)
    {
        tracing::error!(target = %target, error = %e, "the flap history cannot be written; it is counted in memory until it can");
    }
    // The events are deleted from their queue only now that their reconcile is
    // recorded; otherwise they come back after the queue's visibility timeout. A
    // reconcile that failed before it observed leaves its events to the next one.
    if observed {
        super::events::settle(shared, deliveries, committed).await;
    } else {
        shared.inbox(target).restore(deliveries);
    }
    let now = (shared.clock.now_ms() / 1000) as u64;
    let record = ReconcileRecord {
        at: now,
        trigger,
        revision: enforced.revision.commit.clone(),
        result: outcome,
        error,
        duration_ms: elapsed.as_millis() as u64,
        applied,
        drift_reverted: reverted,
    };
    shared.update(|s| {
        let t = s.targets.entry(target.to_string()).or_default();
        if record.error.is_none() {
            t.last_success_at = Some(record.at);
        }
        t.last_reconcile = Some(record.clone());
    });
    shared
        .metrics
        .target_healthy
        .get_or_create(&t)
        .set(i64::from(record.error.is_none()));
    if record.error.is_none() {
        shared
            .metrics
            .last_success
            .get_or_create(&t)
            .set(now as f64);
    }
    record
}

/// One reconcile of one target.
async fn reconcile(
    shared: &Shared,
    name: &str,
    enforced: &Enforced,
    deadline: tokio::time::Instant,
    state: &mut TargetState,
    evidence: &mut Evidence,
) -> Result<Reconciled, ReconcileError> {
    let set = &enforced.set;
    let (Some(target), Some(t)) = (set.target(name), enforced.targets.get(name)) else {
        return Err(ReconcileError::error(format!(
            "revision {} no longer defines target {name}; nothing is changed there",
            enforced.revision.commit
        )));
    };
    let provider = shared
        .providers
        .get(t.scope.cloud())
        .map_err(|e| ReconcileError::error(e.to_string()))?;
    // After a restart the previous desired state and the flap history come from the
    // store, so that drift made while the controller was down is still drift and what
    // kept coming back is still counted.
    if !state.loaded {
        if let Some(h) = &shared.history {
            let read = |e| ReconcileError::error(format!("the loop state cannot be read: {e}"));
            state.previous = h.enforced_desired(name).map_err(read)?;
            state.flaps = h.flaps(name).map_err(read)?;
            state.pending_attributions = h.pending_attributions(name).map_err(read)?;
        }
        state.loaded = true;
    }
    let ownership = match &shared.history {
        Some(h) => h.ownership(name).map_err(|e| {
            ReconcileError::error(format!("the ownership record cannot be read: {e}"))
        })?,
        None => Ownership::unverified(name),
    };
    shared.inbox(name).begin_observation();
    let planning = tokio::time::timeout_at(
        deadline,
        observe_and_plan(
            PlanTarget {
                set,
                doc: target,
                scope: t,
            },
            provider.as_ref(),
            &ownership,
            state.previous.as_ref(),
            &shared.settings.plan,
            Some(&enforced.revision.commit),
        ),
    )
    .await
    .map_err(|_| ReconcileError {
        result: ReconcileResult::Timeout,
        message: format!(
            "observing and planning took longer than {:?}; nothing was changed",
            shared.settings.reconcile_timeout
        ),
        applied: 0,
    })?;
    let mut planned = match planning {
        Ok(p) => p,
        Err(PlanError::Invalid(diags)) => {
            let text: Vec<String> = diags
                .iter()
                .filter(|d| d.is_error())
                .map(Diagnostic::to_string)
                .collect();
            return Err(ReconcileError::error(format!(
                "the revision does not fit what is observed: {}",
                text.join("; ")
            )));
        }
        Err(e) => return Err(ReconcileError::error(format!("{e}: {}", source_text(&e)))),
    };

    evidence.observed = true;
    shared.inbox(name).set_known(&planned.inventory);
    evidence.resources = managed_resources(&planned.desired);
    // Drift: count it, ask the cloud's audit log who made it; stop reverting what keeps
    // coming back.
    let settings = &shared.settings;
    let observed_at = shared.clock.now_ms();
    let since = state.last_observed.take();
    state.last_observed = Some(observed_at);
    let drifts: Vec<&PlannedChange> = planned
        .plan
        .changes
        .iter()
        .filter(|c| c.cause == Cause::Drift)
        .collect();
    evidence.observed_at = observed_at;
    evidence.since = since;
    for c in &drifts {
        evidence.drift.push((
            evidence.events.len(),
            drift_cloud_id(&c.change, &planned.inventory),
            c.resource.clone(),
        ));
        evidence.events.push((
            observed_at,
            NewEvent::new(EventData::DriftDetected(DriftDetected {
                change: describe(c),
                // Filled in once the reconcile is done (see `attribute`).
                actor: None,
                correction: Some(c.change.clone()),
            }))
            .target(name)
            .revision(Some(&enforced.revision.commit))
            .resource(&c.resource),
        ));
    }
    for c in planned
        .plan
        .changes
        .iter()
        .filter(|c| c.cause == Cause::Drift)
    {
        shared
            .metrics
            .drift_detected
            .get_or_create(&KindL {
                target: name.into(),
                kind: kind(c),
            })
            .inc();
    }
    let flapping = state.flaps.filter(
        name,
        &mut planned.plan.changes,
        settings.flap_threshold,
        settings.flap_window,
        observed_at,
    );
    shared
        .metrics
        .flapping
        .get_or_create(&TargetL {
            target: name.into(),
        })
        .set(flapping.len() as i64);
    planned.plan.findings.extend(flapping);
    evidence.findings = planned.plan.findings.clone();
    if let Some(why) = &shared.settings.observe_only {
        let n = planned.plan.changes.len();
        tracing::error!(target = %name, changes = n, reason = %why, "NOT ENFORCED: the history store is unavailable, so ownership cannot be proved; nothing is written to the cloud");
        record_findings(shared, name, &planned.plan.findings, &[]);
        return Err(ReconcileError {
            result: ReconcileResult::Refused,
            message: format!(
                "{n} change(s) planned, none applied: the history store is unavailable ({why}); without its ownership record nothing is written — repair or move the database and restart"
            ),
            applied: 0,
        });
    }
    // The record first: what this observation adopted, and the creations about to start
    // (so that a crash between the cloud's answer and the record loses nothing).
    let mut before = ownership::observed(&ownership, &planned.inventory);
    if planned.plan.refusal.is_none() {
        before = ownership::merge([before, ownership::intents(&planned.plan)]);
    }
    record_ownership(shared, name, &enforced.revision.commit, &before)?;
    // Every planned resource, so that one the reconcile never reached (cut at the
    // deadline, on shutdown, behind a failure) is not reported compliant.
    evidence.planned.clear();
    for c in &planned.plan.changes {
        *evidence.planned.entry(c.resource.without_id()).or_default() += 1;
    }
    let revision = enforced.revision.commit.clone();
    let clock = shared.clock.clone();
    let inbox = shared.inbox(name);
    let result = apply_until(
        &planned.plan,
        t,
        provider.as_ref(),
        &|| shared.cancel.is_cancelled() || tokio::time::Instant::now() >= deadline,
        // Each change is evidence as soon as the cloud answered: a reconcile cut short
        // by the outer timeout still records what it did.
        &mut |r| {
            if let Some(id) = r.outcome().and_then(|o| o.created_id.as_deref()) {
                // Change events name it from now on.
                inbox.add_known(id);
            }
            let (record, data) = change_record(r);
            evidence.events.push((
                clock.now_ms(),
                NewEvent::new(data)
                    .target(name)
                    .revision(Some(&revision))
                    .resource(&r.planned.resource),
            ));
            evidence.changes.push(record);
        },
    )
    .await;
    let applied_at = shared.clock.now_ms();
    let (report, failure) = match result {
        Ok(r) => (r, None),
        Err(ApplyError::Change {
            report,
            source,
            resource,
            ..
        }) => (*report, Some(format!("{resource}: {source}"))),
        Err(ApplyError::Refused { reason }) => {
            record_findings(shared, name, &planned.plan.findings, &[]);
            return Err(ReconcileError {
                result: ReconcileResult::Refused,
                message: reason,
                applied: 0,
            });
        }
    };
    record_ownership(
        shared,
        name,
        &enforced.revision.commit,
        &ownership::applied(&report),
    )?;
    let mut reverted = 0;
    let mut pending = Vec::new();
    for r in &report.results {
        let Some(o) = r.outcome() else { continue };
        if o.status == OutcomeStatus::Pending {
            pending.push(format!(
                "{}: {}",
                r.planned.resource,
                o.detail.clone().unwrap_or_default()
            ));
        } else if r.planned.cause == Cause::Drift {
            reverted += 1;
            state.flaps.record(&r.planned, applied_at);
            shared
                .metrics
                .drift_reverted
                .get_or_create(&KindL {
                    target: name.into(),
                    kind: kind(&r.planned),
                })
                .inc();
        }
    }
    if reverted > 0 {
        state.flaps.prune(settings.flap_window, applied_at);
        if let Some(h) = &shared.history
            && let Err(e) = h.save_flaps(name, applied_at, &state.flaps)
        {
            tracing::error!(target = %name, error = %e, "the flap history cannot be written; it is counted in memory until it can");
        }
    }
    record_findings(shared, name, &planned.plan.findings, &pending);
    let applied = report
        .results
        .iter()
        .filter(|r| r.outcome().is_some())
        .count();
    if let Some(f) = failure {
        return Err(ReconcileError::error(f).applied(applied));
    }
    if report.skipped > 0 {
        if shared.cancel.is_cancelled() {
            return Err(ReconcileError::error(format!(
                "shutting down: {} change(s) left for the next start",
                report.skipped
            ))
            .applied(applied));
        }
        return Err(ReconcileError {
            result: ReconcileResult::Timeout,
            message: format!(
                "the reconcile reached its deadline ({:?}) between changes: {} change(s) left for the next reconcile",
                shared.settings.reconcile_timeout, report.skipped
            ),
            applied,
        });
    }
    if state.previous.as_ref() != Some(&planned.desired)
        && let Some(h) = &shared.history
        && let Err(e) = h.save_enforced_desired(
            name,
            Some(&enforced.revision.commit),
            shared.clock.now_ms(),
            &planned.desired,
        )
    {
        tracing::error!(target = %name, error = %e, "the loop state cannot be written; drift and intent are told apart from memory until it can");
    }
    state.previous = Some(planned.desired);
    Ok(Reconciled { applied, reverted })
}

/// One change's result as its evidence: the record in the report, and the event.
fn change_record(r: &crate::apply::ChangeResult) -> (ChangeRecord, EventData) {
    let (status, request_ids, detail) = match &r.result {
        ChangeOutcome::Done { outcome: o } => {
            (o.status.into(), o.request_ids.clone(), o.detail.clone())
        }
        ChangeOutcome::Failed { error } => (ChangeStatus::Failed, Vec::new(), Some(error.clone())),
        ChangeOutcome::Blocked { by_resource, .. } => (
            ChangeStatus::Blocked,
            Vec::new(),
            Some(format!("blocked by the failed change of {by_resource}")),
        ),
    };
    let record = ChangeRecord {
        resource: r.planned.resource.without_id(),
        cause: r.planned.cause,
        action: r.planned.change.action().to_string(),
        status,
        request_ids,
        detail,
    };
    let data = if matches!(status, ChangeStatus::Failed | ChangeStatus::Blocked) {
        EventData::ChangeFailed(record.clone())
    } else {
        EventData::ChangeApplied(record.clone())
    };
    (record, data)
}

/// Write an ownership record update; a failure stops the reconcile (fail closed: never
/// change the cloud with a record that cannot keep up).
fn record_ownership(
    shared: &Shared,
    name: &str,
    revision: &str,
    update: &ownership::RecordUpdate,
) -> Result<(), ReconcileError> {
    let Some(h) = &shared.history else {
        return Ok(());
    };
    h.update_ownership(name, Some(revision), shared.clock.now_ms(), update)
        .map_err(|e| ReconcileError::error(format!("the ownership record cannot be written: {e}")))
}

fn source_text(e: &PlanError) -> String {
    use std::error::Error as _;
    let mut parts = Vec::new();
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

fn record_findings(shared: &Shared, name: &str, findings: &[Finding], pending: &[String]) {
    shared
        .metrics
        .pending_deletions
        .get_or_create(&TargetL {
            target: name.into(),
        })
        .set(pending.len() as i64);
    shared.update(|s| {
        let t = s.targets.entry(name.to_string()).or_default();
        t.findings = findings.to_vec();
        t.pending_deletions = pending.to_vec();
    });
}
