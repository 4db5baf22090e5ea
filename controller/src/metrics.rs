//! Prometheus metrics of the controller (OpenMetrics text on `/metrics`).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use palisade_providers::ApiCallCount;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetL {
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultL {
    pub target: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerL {
    pub target: String,
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindL {
    pub target: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeL {
    pub target: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallL {
    pub service: String,
    pub operation: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RevisionL {
    pub revision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerOnlyL {
    pub trigger: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonL {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkL {
    pub sink: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every metric the controller exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub reconcile_duration: Family<TargetL, Histogram>,
    pub reconciles: Family<ResultL, Counter>,
    pub triggers: Family<TriggerL, Counter>,
    pub drift_detected: Family<KindL, Counter>,
    pub drift_reverted: Family<KindL, Counter>,
    pub attributions: Family<OutcomeL, Counter>,
    pub attributions_pending: Family<TargetL, Gauge>,
    pub flapping: Family<TargetL, Gauge>,
    pub target_healthy: Family<TargetL, Gauge>,
    pub pending_deletions: Family<TargetL, Gauge>,
    pub api_calls: Family<CallL, Counter>,
    pub revision_info: Family<RevisionL, Gauge>,
    pub last_success: Family<TargetL, FloatGauge>,
    pub revisions_rejected: Family<ReasonL, Counter>,
    pub fetch_errors: Family<ReasonL, Counter>,
    pub fetches: Family<TriggerOnlyL, Counter>,
    pub last_fetch_success: FloatGauge,
    pub webhooks_refused: Family<ReasonL, Counter>,
    pub webhooks_ignored: Family<ReasonL, Counter>,
    pub history_rewrites: Counter,
    pub history_write_errors: Counter,
    /// Events dropped from the in-memory retry backlog while the history stayed
    /// unwritable (the oldest first).
    pub history_events_dropped: Counter,
    /// Notifications delivered (2xx), per sink.
    pub notifications_sent: Family<SinkL, Counter>,
    /// Delivery attempts that failed (not 2xx, or no answer), per sink.
    pub notifications_failed: Family<SinkL, Counter>,
    /// Notifications given up after the last attempt and kept in the dead-letter table.
    pub notifications_dead_lettered: Family<SinkL, Counter>,
    /// History events not yet delivered (or skipped by the sink's routing), per sink.
    pub notifications_backlog: Family<SinkL, Gauge>,
    /// Change-event messages received from the queues.
    pub events_received: Counter,
    /// Change events routed, per target.
    pub events_matched: Family<TargetL, Counter>,
    /// Change-event messages dropped, by reason.
    pub events_dropped: Family<ReasonL, Counter>,
    /// Change-event messages deleted from their queue.
    pub events_deleted: Counter,
    /// Receives from a change-event queue that failed.
    pub events_receive_errors: Counter,
    /// From the queue's receipt of a change event to the end of the recorded reconcile
    /// that consumed it.
    pub event_lag: Histogram,
    seen_calls: Mutex<BTreeMap<(String, String, String), u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("palisade");
        let m = Metrics {
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.05, 2.0, 12))
            }),
            reconciles: Family::default(),
            triggers: Family::default(),
            drift_detected: Family::default(),
            attributions: Family::default(),
            attributions_pending: Family::default(),
            drift_reverted: Family::default(),
            flapping: Family::default(),
            target_healthy: Family::default(),
            pending_deletions: Family::default(),
            api_calls: Family::default(),
            revision_info: Family::default(),
            last_success: Family::default(),
            revisions_rejected: Family::default(),
            fetch_errors: Family::default(),
            fetches: Family::default(),
            last_fetch_success: FloatGauge::default(),
            webhooks_refused: Family::default(),
            webhooks_ignored: Family::default(),
            history_rewrites: Counter::default(),
            history_write_errors: Counter::default(),
            history_events_dropped: Counter::default(),
            notifications_sent: Family::default(),
            notifications_failed: Family::default(),
            notifications_dead_lettered: Family::default(),
            notifications_backlog: Family::default(),
            events_received: Counter::default(),
            events_matched: Family::default(),
            events_dropped: Family::default(),
            events_deleted: Counter::default(),
            events_receive_errors: Counter::default(),
            event_lag: Histogram::new(exponential_buckets(0.05, 2.0, 14)),
            seen_calls: Mutex::new(BTreeMap::new()),
            registry: Registry::default(),
        };
        registry.register(
            "events_received",
            "Change-event messages received from the queues (--aws-events-queue)",
            m.events_received.clone(),
        );
        registry.register(
            "events_matched",
            "Change events routed to a target, which then reconciles (coalesced)",
            m.events_matched.clone(),
        );
        registry.register(
            "events_dropped",
            "Change-event messages dropped, by reason (malformed, irrelevant, foreign, own, unrelated, no-revision, inbox-full)",
            m.events_dropped.clone(),
        );
        registry.register(
            "events_deleted",
            "Change-event messages deleted from their queue (after the reconcile that consumed them was recorded, or when dropped)",
            m.events_deleted.clone(),
        );
        registry.register(
            "events_receive_errors",
            "Receives from a change-event queue that failed (retried with backoff; the resync goes on)",
            m.events_receive_errors.clone(),
        );
        registry.register(
            "event_reconcile_lag_seconds",
            "From the queue's receipt of a change event to the end of the recorded reconcile that consumed it",
            m.event_lag.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of one reconcile (observe, plan, apply) of a target",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles by target and result (ok, error, refused, timeout)",
            m.reconciles.clone(),
        );
        registry.register(
            "reconcile_triggers",
            "What woke a target's worker (revision, resync, webhook, retry); logged and counted, never used in decisions",
            m.triggers.clone(),
        );
        registry.register(
            "drift_detected",
            "Out-of-band changes found, by target and resource kind",
            m.drift_detected.clone(),
        );
        registry.register(
            "drift_attributions",
            "Who made a drift, by target and outcome: found (at once or later), pending (not in the audit log yet, asked again), unknown (given up after 30 minutes), error (the log could not be read)",
            m.attributions.clone(),
        );
        registry.register(
            "drift_attributions_pending",
            "Drift whose author the audit log has not shown yet, by target",
            m.attributions_pending.clone(),
        );
        registry.register(
            "drift_reverted",
            "Out-of-band changes reverted, by target and resource kind",
            m.drift_reverted.clone(),
        );
        registry.register(
            "flapping_resources",
            "Resources whose drift is no longer reverted because it keeps coming back",
            m.flapping.clone(),
        );
        registry.register(
            "target_healthy",
            "1 when the target's last reconcile succeeded on the enforced revision",
            m.target_healthy.clone(),
        );
        registry.register(
            "pending_deletions",
            "Deletions the cloud cannot do yet (e.g. a group held by Lambda ENIs)",
            m.pending_deletions.clone(),
        );
        registry.register(
            "cloud_api_calls",
            "Cloud API calls by service, operation and outcome (ok, throttled, error)",
            m.api_calls.clone(),
        );
        registry.register(
            "enforced_revision_info",
            "The Git revision being enforced (value 1)",
            m.revision_info.clone(),
        );
        registry.register(
            "last_successful_reconcile_timestamp_seconds",
            "When each target last reconciled successfully (Unix time)",
            m.last_success.clone(),
        );
        registry.register(
            "revisions_rejected",
            "Revisions refused (invalid, empty, unsigned), by reason",
            m.revisions_rejected.clone(),
        );
        registry.register(
            "source_fetch_errors",
            "Failed fetches of the Git source, by reason (network, auth, certificate, reference, too-large, timeout, git, io, settings)",
            m.fetch_errors.clone(),
        );
        registry.register(
            "source_fetches",
            "Fetches of the Git source started, by trigger (start, poll, webhook)",
            m.fetches.clone(),
        );
        registry.register(
            "source_last_fetch_success_timestamp_seconds",
            "When the Git source was last fetched successfully (Unix time); 0 = never",
            m.last_fetch_success.clone(),
        );
        registry.register(
            "webhooks_refused",
            "Webhook requests refused (401), by reason",
            m.webhooks_refused.clone(),
        );
        registry.register(
            "webhooks_ignored",
            "Authentic webhook requests that triggered nothing (duplicate delivery, other event, other ref), by reason",
            m.webhooks_ignored.clone(),
        );
        registry.register(
            "source_history_rewrites",
            "Accepted revisions that do not descend from the previously enforced commit (force-pushes)",
            m.history_rewrites.clone(),
        );
        registry.register(
            "history_write_errors",
            "Writes to the history (evidence, events) that failed; enforcement goes on, the events are retried with the next write, and the last error is in /api/status",
            m.history_write_errors.clone(),
        );
        registry.register(
            "notifications_sent",
            "Notifications delivered (answered 2xx), per sink",
            m.notifications_sent.clone(),
        );
        registry.register(
            "notifications_failed",
            "Notification delivery attempts that failed (not 2xx, or no answer), per sink",
            m.notifications_failed.clone(),
        );
        registry.register(
            "notifications_dead_lettered",
            "Notifications given up after their last attempt (kept in the history's dead-letter table), per sink",
            m.notifications_dead_lettered.clone(),
        );
        registry.register(
            "notifications_backlog",
            "History events after the sink's cursor: not yet delivered, per sink",
            m.notifications_backlog.clone(),
        );
        registry.register(
            "history_events_dropped",
            "Events dropped from the in-memory retry backlog (the oldest, beyond 100,000) while the history could not be written",
            m.history_events_dropped.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Bring the API call counters up to the providers' counts.
    pub fn sync_api_calls(&self, calls: &[ApiCallCount]) {
        let mut seen = self.seen_calls.lock().unwrap_or_else(|e| e.into_inner());
        for c in calls {
            let outcome = format!("{:?}", c.outcome).to_lowercase();
            let key = (c.service.clone(), c.operation.clone(), outcome.clone());
            let before = seen.insert(key, c.count).unwrap_or(0);
            if c.count > before {
                self.api_calls
                    .get_or_create(&CallL {
                        service: c.service.clone(),
                        operation: c.operation.clone(),
                        outcome,
                    })
                    .inc_by(c.count - before);
            }
        }
    }

    /// Mark `revision` as the enforced one.
    pub fn set_revision(&self, revision: &str) {
        self.revision_info.clear();
        self.revision_info
            .get_or_create(&RevisionL {
                revision: revision.to_string(),
            })
            .set(1);
    }

    /// The OpenMetrics text.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
