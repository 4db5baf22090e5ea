//! Cloud change events into the loop: one pump per queue (`--aws-events-queue`) long-polls
//! it, reads each message ([`palisade_providers::events`]), and routes it to the inbox of
//! every target it concerns; the target's worker wakes (`Trigger::Event`) and reconciles
//! the whole target (level-triggered: the event only says *when*, never *what*). What
//! arrives while a reconcile runs is coalesced into the next one. A message is deleted
//! only once the reconcile that consumed it has recorded its evidence: a reconcile whose
//! evidence could not be written leaves its messages to come back after the queue's
//! visibility timeout. The periodic resync stays the safety net.
//!
//! A message is dropped (deleted, counted by reason, never fatal) when it is malformed
//! or not a change Palisade manages (`malformed`, `irrelevant`), when no target of the
//! enforced revision is in its account and region (`foreign`), when it is Palisade's own
//! write (`own`: by the request id the cloud answered, or its verified principal), when
//! it names nothing the target's last observation knew and cannot bring in anything new
//! (`unrelated`), or when no revision is enforced yet or no worker of its targets runs
//! (`no-revision`: their first reconcile observes everything anyway).
//!
//! A message routed to several targets has one [`Ack`]; a redelivery joins it, and it
//! is deleted, with its newest receipt, once every delivery was settled by a recorded
//! reconcile.
//!
//! The events also say who made a change: a drift of a resource an event of the
//! reconcile *acted on* (not merely referred to), at a time within the drift's
//! observation window, takes that event's actor, without asking the audit log.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_providers::events::{ChangeEvent, EventQueue, QueueMessage};
use palisade_providers::{Actor, Cloud, Inventory, TargetScope};
use serde::Serialize;

use super::Shared;
use crate::metrics::{ReasonL, TargetL};

/// Most deliveries waiting in one target's inbox; beyond, a message is left in the
/// queue (not deleted) and comes back.
pub const INBOX_MAX: usize = 10_000;
/// Longest long poll (SQS's maximum).
const RECEIVE_WAIT: Duration = Duration::from_secs(20);
/// A receive that has not answered this long after its long poll ended is abandoned.
const RECEIVE_SLACK: Duration = Duration::from_secs(10);
/// Longest wait for a delete (the worker waits for it).
const DELETE_TIMEOUT: Duration = Duration::from_secs(15);

/// What a queue shows in `/api/status`.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// Messages received.
    pub received: u64,
    /// When a receive last succeeded (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_receive_at: Option<u64>,
    /// The last receive or delete error, cleared by the next success.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// One message, owed a delete once every delivery of it to a target has been settled
/// by a recorded reconcile. One per message while any delivery of it is held (see
/// [`Acks`]): a message that comes back joins it, with its newest receipt.
#[derive(Debug)]
pub(crate) struct Ack {
    queue: Arc<dyn EventQueue>,
    id: String,
    /// The receipt of the newest delivery (only it deletes the message).
    receipt: Mutex<String>,
    sent_ms: Option<i64>,
    /// Deliveries held and not settled.
    remaining: AtomicUsize,
    /// A holder could not record its reconcile: the message must come back.
    failed: AtomicBool,
}

/// The live [`Ack`] of each message (queue, message id).
pub(crate) type Acks = Mutex<HashMap<(String, String), std::sync::Weak<Ack>>>;

/// A message routed to a target.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub(crate) event: Arc<ChangeEvent>,
    ack: Arc<Ack>,
}

/// A target's inbox: the deliveries its next reconcile consumes, and the ids its last
/// observation knew (for routing).
#[derive(Debug, Default)]
pub(crate) struct Inbox {
    pending: Mutex<Vec<Delivery>>,
    pub(crate) notify: tokio::sync::Notify,
    known: Mutex<Known>,
}

/// The ids a target's events are routed by.
#[derive(Debug, Default)]
struct Known {
    /// From the last observation, plus what was created or announced since (`None`:
    /// never observed, so everything is routed).
    ids: Option<HashSet<String>>,
    /// Ids added while an observation runs: it may have read the cloud before they
    /// existed, so they survive its [`Inbox::set_known`].
    during: Option<HashSet<String>>,
}

impl Inbox {
    /// Whether a delivery waits.
    pub(crate) fn has_pending(&self) -> bool {
        !self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Everything waiting, for the reconcile about to observe.
    pub(crate) fn take(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Put back what a reconcile took but never observed for (it failed before): the
    /// next reconcile consumes it (and its actors).
    pub(crate) fn restore(&self, deliveries: Vec<Delivery>) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for d in deliveries {
            // A newer delivery of the same message wins; a full inbox leaves it to
            // come back from the queue.
            if p.iter().any(|x| Arc::ptr_eq(&x.ack, &d.ack)) {
                // The waiting delivery of the same message settles it.
                d.ack.remaining.fetch_sub(1, Ordering::SeqCst);
            } else if p.len() < INBOX_MAX {
                p.push(d);
            } else {
                // Let go: it comes back from the queue.
                d.ack.failed.store(true, Ordering::SeqCst);
                d.ack.remaining.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// An observation of the target starts.
    pub(crate) fn begin_observation(&self) {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).during = Some(HashSet::new());
    }

    /// Add `d`, unless a delivery of the same message already waits here (it is the
    /// same [`Ack`], which now has the newest receipt). A delivery not added gives its
    /// count back (under this inbox's lock, so that the waiting one cannot be settled
    /// in between); one that found the inbox full also marks the message to come back.
    fn push(&self, d: Delivery) -> Pushed {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.iter().any(|x| Arc::ptr_eq(&x.ack, &d.ack)) {
            d.ack.remaining.fetch_sub(1, Ordering::SeqCst);
            return Pushed::AlreadyThere;
        }
        if p.len() >= INBOX_MAX {
            d.ack.failed.store(true, Ordering::SeqCst);
            d.ack.remaining.fetch_sub(1, Ordering::SeqCst);
            return Pushed::Full;
        }
        p.push(d);
        Pushed::Added
    }

    /// The ids of `inventory` (lowercased): groups, endpoints, functions by ARN and name,
    /// and what was added while it was read.
    pub(crate) fn set_known(&self, inventory: &Inventory) {
        let mut ids = HashSet::new();
        for g in &inventory.groups {
            ids.insert(g.id.to_ascii_lowercase());
        }
        for e in &inventory.endpoints {
            ids.insert(e.id.to_ascii_lowercase());
        }
        for f in &inventory.functions {
            ids.insert(f.id.to_ascii_lowercase());
            ids.insert(f.name.to_ascii_lowercase());
        }
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        ids.extend(known.during.take().unwrap_or_default());
        known.ids = Some(ids);
    }

    /// `id` exists now: created by this target's reconcile, or announced by a change
    /// event (a new group, endpoint or function).
    pub(crate) fn add_known(&self, id: &str) {
        let id = id.to_ascii_lowercase();
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(during) = known.during.as_mut() {
            during.insert(id.clone());
        }
        if let Some(ids) = known.ids.as_mut() {
            ids.insert(id);
        }
    }

    /// Whether `event` may matter to this target: it may bring in something new, the
    /// target was never observed, or it names something the last observation saw.
    fn concerns(&self, event: &ChangeEvent) -> bool {
        if event.creates {
            return true;
        }
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let Some(known) = known.ids.as_ref() else {
            return true;
        };
        event
            .resources
            .iter()
            .any(|r| known.contains(&r.to_ascii_lowercase()))
    }
}

/// What [`Inbox::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pushed {
    Added,
    AlreadyThere,
    Full,
}

/// The actor of the newest event among `deliveries` that acted on `id` (a group or
/// endpoint id, a function's ARN or name — not merely referred to it) at a time within
/// `[since_ms, until_ms]` (the window the audit log would be asked about). An event
/// without a readable time says nothing: the audit log is asked instead.
pub(crate) fn pushed_actor(
    deliveries: &[Delivery],
    id: &str,
    since_ms: i64,
    until_ms: i64,
) -> Option<Actor> {
    let id = id.to_ascii_lowercase();
    let name = id.split(":function:").nth(1).map(|n| n.to_string());
    let at = |a: &Actor| {
        a.event_time
            .as_deref()?
            .parse::<jiff::Timestamp>()
            .ok()
            .map(|t| t.as_millisecond())
    };
    deliveries
        .iter()
        .filter(|d| {
            d.event.subjects.iter().any(|r| {
                let r = r.to_ascii_lowercase();
                r == id || name.as_deref() == Some(r.as_str())
            })
        })
        .filter_map(|d| {
            let a = d.event.actor.clone()?;
            let t = at(&a)?;
            (since_ms..=until_ms).contains(&t).then_some((t, a))
        })
        .max_by_key(|(t, _)| *t)
        .map(|(_, a)| a)
}

/// The reconcile that consumed `deliveries` has ended; `committed`: its evidence is in
/// the history. Deletes every message no other target still owes, and records the lag
/// from the queue's receipt of each to now.
pub(crate) async fn settle(shared: &Shared, deliveries: Vec<Delivery>, committed: bool) {
    if deliveries.is_empty() {
        return;
    }
    let now = shared.clock.now_ms();
    // Queue name → the queue and the (id, receipt) of each message it is owed.
    type Owed = (Arc<dyn EventQueue>, Vec<(String, String)>);
    let mut by_queue: HashMap<String, Owed> = HashMap::new();
    for d in deliveries {
        // Under the registry's lock, as `route` joins a redelivery to a live Ack: the
        // last holder's decision and a redelivery's joining happen in one order.
        let receipt = {
            let mut acks = shared.acks.lock().unwrap_or_else(|e| e.into_inner());
            if !committed {
                d.ack.failed.store(true, Ordering::SeqCst);
            }
            if d.ack.remaining.fetch_sub(1, Ordering::SeqCst) != 1 {
                continue;
            }
            // The last delivery: the message is no longer held anywhere.
            let key = (d.ack.queue.name().to_string(), d.ack.id.clone());
            if acks
                .get(&key)
                .is_some_and(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&d.ack)))
            {
                acks.remove(&key);
            }
            if d.ack.failed.load(Ordering::SeqCst) {
                continue;
            }
            d.ack
                .receipt
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        };
        if let Some(sent) = d.ack.sent_ms {
            shared
                .metrics
                .event_lag
                .observe(((now - sent).max(0) as f64) / 1000.0);
        }
        by_queue
            .entry(d.ack.queue.name().to_string())
            .or_insert_with(|| (d.ack.queue.clone(), Vec::new()))
            .1
            .push((d.ack.id.clone(), receipt));
    }
    for (name, (queue, messages)) in by_queue {
        delete(shared, &name, queue.as_ref(), &messages).await;
    }
}

async fn delete(
    shared: &Shared,
    name: &str,
    queue: &dyn EventQueue,
    messages: &[(String, String)],
) {
    if messages.is_empty() {
        return;
    }
    let answer: Result<usize, String> =
        match tokio::time::timeout(DELETE_TIMEOUT, queue.delete(messages)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {DELETE_TIMEOUT:?}")),
        };
    match answer {
        Ok(refused) => {
            shared
                .metrics
                .events_deleted
                .inc_by((messages.len() - refused.min(messages.len())) as u64);
        }
        Err(e) => {
            tracing::warn!(queue = %name, error = %e, messages = messages.len(), "messages could not be deleted; they come back and are handled again");
            shared.update(|s| {
                s.event_queues
                    .entry(name.to_string())
                    .or_default()
                    .last_error = Some(format!("delete: {e}"));
            });
        }
    }
}

/// Why a message was not routed.
fn dropped(shared: &Shared, reason: &str) {
    shared
        .metrics
        .events_dropped
        .get_or_create(&ReasonL {
            reason: reason.to_string(),
        })
        .inc();
}

/// Route one message: to the inboxes of the targets it concerns (then `None`: it is
/// deleted once they recorded it), or dropped (`Some(reason)`: delete it now).
pub(super) async fn route(
    shared: &Shared,
    queue: &Arc<dyn EventQueue>,
    m: QueueMessage,
) -> Option<&'static str> {
    let event = match queue.parse(&m.body) {
        Ok(e) => e,
        Err(u) => {
            tracing::debug!(queue = %queue.name(), message = %m.id, why = %u, "event dropped");
            return Some(u.reason());
        }
    };
    let Some(enforced) = shared.enforced.borrow().clone() else {
        return Some("no-revision");
    };
    let only = &shared.settings.targets;
    let in_scope: Vec<(&String, &palisade_providers::Target)> = enforced
        .targets
        .iter()
        .filter(|(name, _)| only.is_empty() || only.contains(name))
        .filter(|(_, t)| match (&t.scope, event.cloud) {
            (
                TargetScope::Aws {
                    region, account_id, ..
                },
                Cloud::Aws,
            ) => *account_id == event.account && *region == event.region,
            _ => false,
        })
        .collect();
    if in_scope.is_empty() {
        tracing::debug!(queue = %queue.name(), account = %event.account, region = %event.region, "event for no target of the enforced revision; dropped");
        return Some("foreign");
    }
    // Palisade's own write, by its request id or by the principal of any target here
    // (targets of one account may use different roles).
    if let Ok(provider) = shared.providers.get(event.cloud) {
        for (_, t) in &in_scope {
            if provider.is_own_change(t, &event).await {
                return Some("own");
            }
        }
    }
    // Only targets whose worker runs have an inbox (a removed target's is gone).
    let inboxes: Vec<(&String, Arc<Inbox>)> = in_scope
        .iter()
        .filter_map(|(name, _)| Some((*name, shared.existing_inbox(name)?)))
        .collect();
    if inboxes.is_empty() {
        return Some("no-revision");
    }
    let targets: Vec<(&String, Arc<Inbox>)> = inboxes
        .into_iter()
        .filter(|(_, inbox)| inbox.concerns(&event))
        .collect();
    if targets.is_empty() {
        return Some("unrelated");
    }
    let names: Vec<&String> = targets.iter().map(|(n, _)| *n).collect();
    tracing::info!(queue = %queue.name(), operation = %event.operation, resources = ?event.resources, targets = ?names, "change event");
    // One acknowledgement per message while any delivery of it is held: a message that
    // comes back (its reconcile was not recorded, or it outlived its visibility) joins
    // it with its newest receipt, and is deleted only once every holder has recorded.
    // The count is raised for every target before any of them can settle.
    let ack = {
        let mut acks = shared.acks.lock().unwrap_or_else(|e| e.into_inner());
        if acks.len() > 4 * INBOX_MAX {
            acks.retain(|_, w| w.strong_count() > 0);
        }
        let key = (queue.name().to_string(), m.id.clone());
        let ack = match acks.get(&key).and_then(std::sync::Weak::upgrade) {
            Some(a) => {
                *a.receipt.lock().unwrap_or_else(|e| e.into_inner()) = m.receipt.clone();
                // Delivered again: this round decides.
                a.failed.store(false, Ordering::SeqCst);
                a
            }
            None => {
                let a = Arc::new(Ack {
                    queue: queue.clone(),
                    id: m.id.clone(),
                    receipt: Mutex::new(m.receipt.clone()),
                    sent_ms: m.sent_ms,
                    remaining: AtomicUsize::new(0),
                    failed: AtomicBool::new(false),
                });
                acks.insert(key, Arc::downgrade(&a));
                a
            }
        };
        ack.remaining.fetch_add(targets.len(), Ordering::SeqCst);
        ack
    };
    let event = Arc::new(event);
    for (name, inbox) in targets {
        if event.creates {
            // What it announces routes its later events, even if the reconcile it wakes
            // has already read the cloud.
            for id in &event.resources {
                inbox.add_known(id);
            }
        }
        let pushed = inbox.push(Delivery {
            event: event.clone(),
            ack: ack.clone(),
        });
        match pushed {
            Pushed::Added => {
                shared
                    .metrics
                    .events_matched
                    .get_or_create(&TargetL {
                        target: name.clone(),
                    })
                    .inc();
                inbox.notify.notify_one();
            }
            // Its waiting delivery settles it.
            Pushed::AlreadyThere => {}
            // Left in the queue: it comes back when the inbox has room.
            Pushed::Full => dropped(shared, "inbox-full"),
        }
    }
    None
}

/// Long-poll `queue` until shutdown, routing what arrives. A failing queue is retried
/// with backoff (1 s … 1 min) and shown in the status; it never stops the loop.
pub(super) async fn pump(shared: Arc<Shared>, queue: Arc<dyn EventQueue>) {
    let name = queue.name().to_string();
    tracing::info!(queue = %name, "reading change events");
    let mut wait = Duration::from_secs(1);
    loop {
        let got = tokio::select! {
            biased;
            _ = shared.cancel.cancelled() => break,
            r = tokio::time::timeout(RECEIVE_WAIT + RECEIVE_SLACK, queue.receive(RECEIVE_WAIT)) => match r {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", RECEIVE_WAIT + RECEIVE_SLACK)),
            },
        };
        let messages = match got {
            Ok(m) => {
                wait = Duration::from_secs(1);
                let at = (shared.clock.now_ms() / 1000) as u64;
                shared.update(|s| {
                    let q = s.event_queues.entry(name.clone()).or_default();
                    q.last_receive_at = Some(at);
                    q.last_error = None;
                    q.received += m.len() as u64;
                });
                m
            }
            Err(e) => {
                tracing::warn!(queue = %name, error = %e, retry_in = ?wait, "the change-event queue cannot be read; the periodic resync goes on");
                shared.metrics.events_receive_errors.inc();
                shared.update(|s| {
                    s.event_queues.entry(name.clone()).or_default().last_error =
                        Some(format!("receive: {e}"));
                });
                tokio::select! {
                    _ = shared.cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(60));
                continue;
            }
        };
        let mut now_deleted = Vec::new();
        for m in messages {
            shared.metrics.events_received.inc();
            let key = (m.id.clone(), m.receipt.clone());
            if let Some(reason) = route(&shared, &queue, m).await {
                dropped(&shared, reason);
                now_deleted.push(key);
            }
        }
        delete(&shared, &name, queue.as_ref(), &now_deleted).await;
    }
    tracing::debug!(queue = %name, "change-event pump stopped");
}
