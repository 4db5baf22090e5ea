//! Scheduling and error policy of one target's worker: what wakes a reconcile (a new
//! revision, the jittered resync, a webhook kick, a change event, a retry), the backoff
//! after a failure
//! (exponential with jitter, from `--retry-min` to `--retry-max`), the bounded
//! concurrency across targets, and the end of the worker when the target leaves the
//! source or the controller shuts down. What one reconcile does is in `target`.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::Semaphore;

use super::Shared;
use super::status::Trigger;
use super::target::{TargetState, reconcile_once};
use crate::metrics::TargetL;

fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// Retries of a failing target: exponential with jitter, never giving up.
fn retry_backoff(shared: &Shared) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(shared.settings.retry_min)
        .with_max_delay(shared.settings.retry_max)
        .with_jitter()
        .without_max_times()
        .build()
}

pub(super) async fn worker(shared: Arc<Shared>, target: String, semaphore: Arc<Semaphore>) {
    let mut enforced_rx = shared.enforced.subscribe();
    let mut kick_rx = shared.reconcile_kick.subscribe();
    let inbox = shared.inbox(&target);
    let mut last_started: Option<tokio::time::Instant> = None;
    let mut state = TargetState::default();
    let mut backoff = None;
    let mut delay = Duration::ZERO;
    let mut trigger = Trigger::Revision;
    loop {
        if delay > Duration::ZERO {
            let due = tokio::time::Instant::now() + delay;
            let timer = if backoff.is_some() {
                Trigger::Retry
            } else {
                Trigger::Resync
            };
            let woke = loop {
                tokio::select! {
                    biased;
                    _ = shared.cancel.cancelled() => break None,
                    r = enforced_rx.changed() => break r.is_ok().then_some(Trigger::Revision),
                    // Webhook kicks come at most once per --webhook-min-interval (the
                    // source loop spaces them); a failing target keeps its backoff.
                    _ = kick_rx.changed() => if backoff.is_none() { break Some(Trigger::Webhook) },
                    // A change event: what it names may have drifted. A failing target
                    // keeps its backoff; its retry consumes the events.
                    _ = inbox.notify.notified() => if backoff.is_none() && inbox.has_pending() { break Some(Trigger::Event) },
                    _ = tokio::time::sleep_until(due) => break Some(timer),
                }
            };
            let Some(woke) = woke else { break };
            trigger = woke;
            if trigger == Trigger::Event
                && let Some(last) = last_started
            {
                // At most one event-driven observation per interval; what arrives
                // meanwhile joins this reconcile.
                let ready = last + shared.settings.event_min_interval;
                tokio::select! {
                    _ = shared.cancel.cancelled() => break,
                    _ = tokio::time::sleep_until(ready) => {}
                }
            }
        }
        if shared.cancel.is_cancelled() {
            break;
        }
        let Some(enforced) = enforced_rx.borrow_and_update().clone() else {
            delay = shared.settings.resync;
            continue;
        };
        if enforced.set.target(&target).is_none() {
            // Removed from the source: nothing is changed there any more, and the target
            // leaves the status (and readiness). The source loop starts a new worker if a
            // later revision defines it again.
            tracing::info!(target = %target, revision = %enforced.revision.commit, "the enforced revision no longer defines this target; its worker stops and nothing there is changed");
            shared.update(|s| {
                s.targets.remove(&target);
            });
            // Its waiting events are let go undeleted: they come back and are found
            // foreign.
            let gone = shared
                .inboxes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&target);
            if let Some(inbox) = gone {
                super::events::settle(&shared, inbox.take(), false).await;
            }
            shared
                .metrics
                .target_healthy
                .get_or_create(&TargetL {
                    target: target.clone(),
                })
                .set(0);
            break;
        }
        let Ok(_permit) = semaphore.acquire().await else {
            break;
        };
        last_started = Some(tokio::time::Instant::now());
        let record = reconcile_once(&shared, &target, &enforced, trigger, &mut state).await;
        if record.error.is_none() {
            backoff = None;
            delay = jittered(shared.settings.resync);
        } else {
            let b = backoff.get_or_insert_with(|| retry_backoff(&shared));
            delay = b.next().unwrap_or(shared.settings.retry_max);
        }
    }
    tracing::debug!(target = %target, "worker stopped");
}
