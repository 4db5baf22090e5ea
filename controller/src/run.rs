//! `palisade run`: the long-running controller.
//!
//! One task follows the Git source and decides which revision is enforced: every new
//! revision goes through the source's fixed order (fetch the tracked ref → resolve
//! exactly → verify the signature → check ancestry → load from the Git tree) and is then
//! validated as a whole before it replaces the enforced one; a bad, unsigned, rolled-back
//! or empty revision is rejected and the last good one stays. The last good commit is
//! persisted and enforced again at start-up, before the first fetch. Fetches are bounded
//! (deadline, bytes, libgit2 socket timeouts) and abandoned on shutdown. One worker per
//! target reconciles (observe → plan → apply) on every trigger — new revision, periodic
//! jittered resync, webhook, retry — with bounded concurrency across targets. Triggers are logged and counted, never used in decisions:
//! each reconcile compares the whole desired state with the whole observed state.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backon::{BackoffBuilder, ExponentialBuilder};
use palisade_providers::{OutcomeStatus, Ownership};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::apply::{ApplyError, ChangeOutcome, apply_until};
use crate::check::{Finding, FindingKind};
use crate::compile::DesiredState;
use crate::flaps::Flaps;
use crate::history::{
    ChangeRecord, NewEvent, Report, ResourceState, ResourceStatus, RevisionRef, Store, kind as ev,
};
use crate::metrics::{KindL, Metrics, ReasonL, ResultL, TargetL, TriggerL, TriggerOnlyL};
use crate::ownership::{self, OwnershipStore};
use crate::plan::{Cause, Settings};
use crate::policy::{Diagnostic, PolicySet};
use crate::reconcile::{PlanError, Providers, observe_and_plan};
use crate::source::{Abort, Examined, GitSource, Refusal, RejectReason, Revision, SourceError};
use crate::state::StateStore;

/// Settings of `palisade run`.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// How often the source is fetched without a webhook.
    pub poll_interval: Duration,
    /// How often every target is reconciled without a trigger (jittered ±10 %).
    pub resync: Duration,
    /// Longest a single reconcile may take.
    pub reconcile_timeout: Duration,
    /// Targets reconciled at the same time.
    pub max_concurrent: usize,
    /// Plan settings (blast radius, pruning, empty source).
    pub plan: Settings,
    /// Only these targets (all when empty).
    pub targets: Vec<String>,
    /// Reverts of the same field of the same resource within `flap_window` after which
    /// Palisade stops reverting it and reports it as flapping.
    pub flap_threshold: usize,
    /// See `flap_threshold`.
    pub flap_window: Duration,
    /// First and longest delay between retries of a failing target.
    pub retry_min: Duration,
    /// See `retry_min`.
    pub retry_max: Duration,
    /// Longest one fetch of the source may take before it is abandoned.
    pub fetch_timeout: Duration,
    /// Webhooks trigger at most one fetch, and one reconcile per target, per this
    /// interval; extra deliveries are coalesced into the next one.
    pub webhook_min_interval: Duration,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            poll_interval: Duration::from_secs(30),
            resync: Duration::from_secs(300),
            reconcile_timeout: Duration::from_secs(600),
            max_concurrent: 4,
            plan: Settings::default(),
            targets: Vec::new(),
            flap_threshold: 5,
            flap_window: Duration::from_secs(3600),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            fetch_timeout: Duration::from_secs(60),
            webhook_min_interval: Duration::from_secs(5),
        }
    }
}

/// The revision being enforced.
#[derive(Debug)]
pub struct Enforced {
    /// Where it came from.
    pub revision: Revision,
    /// What it says.
    pub set: Arc<PolicySet>,
}

/// A revision that was refused.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rejection {
    /// Commit id.
    pub commit: String,
    /// Short reason (`invalid`, `empty`, `unsigned`, `path-missing`).
    pub reason: String,
    /// What is wrong, with `file:line` where it applies.
    pub details: Vec<String>,
    /// When (Unix seconds).
    pub at: u64,
}

/// What woke a reconcile (or a fetch). Logged and counted, never used in decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
        }
    }
}

/// How a reconcile ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// Why a reconcile did not end `ok`, and how far it got.
#[derive(Debug)]
struct Failure {
    result: ReconcileResult,
    message: String,
    /// Changes the provider answered before it stopped.
    applied: usize,
}

impl Failure {
    fn error(message: impl Into<String>) -> Failure {
        Failure {
            result: ReconcileResult::Error,
            message: message.into(),
            applied: 0,
        }
    }

    fn applied(mut self, n: usize) -> Failure {
        self.applied = n;
        self
    }
}

/// The last reconcile of a target.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileRecord {
    /// When it ended (Unix seconds).
    pub at: u64,
    /// What woke it.
    pub trigger: Trigger,
    /// Revision reconciled against.
    pub revision: String,
    /// How it ended.
    pub result: ReconcileResult,
    /// Error text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Milliseconds.
    pub duration_ms: u64,
    /// Changes applied (or already so).
    pub applied: usize,
    /// Of which drift reverted.
    pub drift_reverted: usize,
}

/// What `/api/status` shows for a target.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    /// Cloud.
    pub cloud: String,
    /// Last reconcile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reconcile: Option<ReconcileRecord>,
    /// Last successful reconcile (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<u64>,
    /// Deletions the cloud could not do yet.
    pub pending_deletions: Vec<String>,
    /// Findings of the last reconcile (guardrails, audit drift, flapping…).
    pub findings: Vec<Finding>,
    /// The last reconcile succeeded on the enforced revision.
    pub healthy: bool,
}

/// Everything `/api/status` and the status page show.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// The enforced revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<Revision>,
    /// The newest commit fetched (may be a rejected one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetched: Option<String>,
    /// The last fetch error, cleared by the next good fetch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_error: Option<String>,
    /// When the source was last fetched successfully (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_fetch_success_at: Option<u64>,
    /// Seconds since the last successful fetch (since start-up when there was none):
    /// how stale the enforced revision may be.
    pub source_stale_seconds: u64,
    /// Rejected revisions, newest last (at most 20).
    pub rejected: Vec<Rejection>,
    /// Targets by name.
    pub targets: BTreeMap<String, TargetStatus>,
    /// Ready to serve: a good revision is enforced and the source loop is alive
    /// (`/readyz`). A failing target does not make the pod unready.
    pub ready: bool,
    /// Every target has reconciled the enforced revision successfully.
    pub converged: bool,
    /// The newest events of the history (newest first), read from the store.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recent_events: Vec<crate::history::Event>,
}

/// State shared by the source task, the workers and the HTTP server.
#[derive(Debug)]
pub struct Shared {
    /// Settings.
    pub settings: RunSettings,
    /// Cloud providers.
    pub providers: Providers,
    /// Metrics.
    pub metrics: Metrics,
    status: RwLock<Status>,
    enforced: watch::Sender<Option<Arc<Enforced>>>,
    fetch_kick: watch::Sender<u64>,
    reconcile_kick: watch::Sender<u64>,
    /// Cancelled on shutdown: no new work is taken.
    pub cancel: CancellationToken,
    /// The history store, when configured.
    pub history: Option<Store>,
    started: u64,
    /// When the source loop last finished an iteration (Unix seconds): `/healthz`.
    heartbeat: AtomicU64,
    /// When the poll now running on a blocking thread started (Unix seconds; 0: none).
    /// An abandoned poll still running long after its deadline means a fetch stuck
    /// inside libgit2: `/healthz` fails, so that a restart clears it.
    fetch_running_since: Arc<AtomicU64>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Shared {
    /// New shared state.
    pub fn new(settings: RunSettings, providers: Providers, history: Option<Store>) -> Arc<Shared> {
        Arc::new(Shared {
            settings,
            providers,
            metrics: Metrics::new(),
            status: RwLock::new(Status::default()),
            enforced: watch::channel(None).0,
            fetch_kick: watch::channel(0).0,
            reconcile_kick: watch::channel(0).0,
            cancel: CancellationToken::new(),
            history,
            started: now(),
            heartbeat: AtomicU64::new(now()),
            fetch_running_since: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A snapshot of the status, with readiness computed.
    pub fn status(&self) -> Status {
        let mut s = self
            .status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let enforced = s.revision.as_ref().map(|r| r.commit.clone());
        for t in s.targets.values_mut() {
            t.healthy = t.last_reconcile.as_ref().is_some_and(|r| {
                Some(&r.revision) == enforced.as_ref() && r.result == ReconcileResult::Ok
            });
        }
        s.converged =
            enforced.is_some() && !s.targets.is_empty() && s.targets.values().all(|t| t.healthy);
        // Ready: serving, with a good revision enforced and the source loop alive. A
        // failing target is a per-target matter (status, metrics), not a reason to stop
        // routing webhooks to the pod.
        s.ready = enforced.is_some() && self.live();
        s.source_stale_seconds =
            now().saturating_sub(s.last_fetch_success_at.unwrap_or(self.started));
        s
    }

    /// Whether the source loop is alive: it finished an iteration within one poll
    /// interval plus twice the fetch deadline (plus a minute of slack), and no poll has
    /// been running for longer than twice its deadline plus that minute (a fetch stuck
    /// inside libgit2 that the deadline could not abort).
    pub fn live(&self) -> bool {
        let s = &self.settings;
        let slack = s.fetch_timeout * 2 + Duration::from_secs(60);
        let bound = s.poll_interval.max(s.webhook_min_interval) + slack;
        let now = now();
        let loop_turns =
            now.saturating_sub(self.heartbeat.load(Ordering::Relaxed)) <= bound.as_secs();
        let since = self.fetch_running_since.load(Ordering::Relaxed);
        let not_stuck = since == 0 || now.saturating_sub(since) <= slack.as_secs();
        loop_turns && not_stuck
    }

    /// [`Shared::status`] plus the newest events of the history (one query): for
    /// `/api/status` and the status page, not for probes.
    pub fn status_with_history(&self) -> Status {
        let mut s = self.status();
        if let Some(h) = &self.history {
            match h.recent(50) {
                Ok(events) => s.recent_events = events,
                Err(e) => tracing::warn!(error = %e, "could not read the history for the status"),
            }
        }
        s
    }

    fn update(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.status.write().unwrap_or_else(|e| e.into_inner()));
    }

    /// Fetch the source now and reconcile every target (a webhook said so).
    pub fn kick(&self) {
        self.fetch_kick.send_modify(|n| *n += 1);
    }

    /// Append to the history (durably) before anything is reported; a failure is logged
    /// and counted, and the controller goes on enforcing.
    fn record(&self, events: &[NewEvent]) {
        if let Some(h) = &self.history
            && let Err(e) = h.append(now_ms(), events)
        {
            tracing::error!(error = %e, "could not write to the history");
        }
    }

    fn reject(&self, revision: &Revision, reason: RejectReason, details: Vec<String>) {
        self.record(&[NewEvent::new(
            ev::REVISION_REJECTED,
            serde_json::json!({ "reason": reason, "details": details, "author": revision.author, "summary": revision.summary, "signature": revision.signature }),
        )
        .revision(Some(&revision.commit))]);
        tracing::warn!(commit = %revision.commit, reason = %reason, details = %details.join("; "), "revision rejected; the previous revision stays enforced");
        self.metrics
            .revisions_rejected
            .get_or_create(&ReasonL {
                reason: reason.to_string(),
            })
            .inc();
        self.update(|s| {
            s.rejected.push(Rejection {
                commit: revision.commit.clone(),
                reason: reason.to_string(),
                details,
                at: now(),
            });
            let excess = s.rejected.len().saturating_sub(20);
            s.rejected.drain(..excess);
        });
    }

    /// Decide whether an examined revision replaces the enforced one; true when it does.
    fn evaluate(&self, examined: Examined) -> bool {
        let Examined {
            revision,
            rewritten_from,
            loaded,
        } = examined;
        let (set, mut diags) = match loaded {
            Ok(x) => x,
            Err(Refusal { reason, details }) => {
                self.reject(&revision, reason, details);
                return false;
            }
        };
        diags.extend(crate::validate_set(&set, &BTreeMap::new()));
        let errors: Vec<String> = diags
            .iter()
            .filter(|d| d.is_error())
            .map(Diagnostic::to_string)
            .collect();
        if !errors.is_empty() {
            self.reject(&revision, RejectReason::Invalid, errors);
            return false;
        }
        if set.policies.is_empty() && !self.settings.plan.allow_empty {
            self.reject(
                &revision,
                RejectReason::Empty,
                vec!["the revision defines no FunctionPolicy; refusing to delete everything (--allow-empty to permit)".into()],
            );
            return false;
        }
        let controls: std::collections::BTreeSet<&str> = set
            .guardrails
            .iter()
            .flat_map(|g| g.spec.controls.iter().map(|c| c.as_str()))
            .collect();
        let mut events = Vec::new();
        if let Some(from) = &rewritten_from {
            tracing::warn!(commit = %revision.commit, previous = %from, "history rewritten: the new revision does not descend from the enforced one (force-push)");
            self.metrics.history_rewrites.inc();
            events.push(
                NewEvent::new(
                    ev::HISTORY_REWRITTEN,
                    serde_json::json!({ "previous": from, "author": revision.author, "summary": revision.summary, "signature": revision.signature }),
                )
                .revision(Some(&revision.commit)),
            );
        }
        events.push(
            NewEvent::new(
                ev::REVISION_ENFORCED,
                serde_json::json!({ "author": revision.author, "summary": revision.summary, "signature": revision.signature, "time": revision.time, "controls": controls, "policies": set.policies.len() }),
            )
            .revision(Some(&revision.commit)),
        );
        self.record(&events);
        tracing::info!(commit = %revision.commit, author = %revision.author, summary = %revision.summary, policies = set.policies.len(), "revision enforced");
        self.metrics.set_revision(&revision.commit);
        self.update(|s| s.revision = Some(revision.clone()));
        self.enforced.send_replace(Some(Arc::new(Enforced {
            revision,
            set: Arc::new(set),
        })));
        true
    }
}

/// Fetch (and examine a new commit) on a blocking thread, within `deadline`: `None`
/// when the ref still points at `last_seen`. On shutdown or deadline the fetch is told
/// to abort and is not waited for (libgit2's socket timeouts end it; the next fetch
/// fails fast while it runs).
async fn poll_source(
    shared: &Shared,
    source: &Arc<GitSource>,
    last_seen: Option<String>,
    base: Option<String>,
) -> Result<Option<Box<Examined>>, SourceError> {
    let abort = Arc::new(Abort::default());
    let task = {
        let (source, abort) = (source.clone(), abort.clone());
        let running = shared.fetch_running_since.clone();
        tokio::task::spawn_blocking(move || {
            // Set by the poll that holds the source's lock only: a poll refused as busy
            // must not hide how long the stuck one has been running.
            source
                .poll(&abort, last_seen.as_deref(), base.as_deref(), &running)
                .map(|examined| examined.map(Box::new))
        })
    };
    tokio::select! {
        r = task => r.unwrap_or(Err(SourceError::Aborted("the fetch task panicked"))),
        _ = shared.cancel.cancelled() => {
            abort.abort("shutting down");
            Err(SourceError::Aborted("shutting down"))
        }
        _ = tokio::time::sleep(shared.settings.fetch_timeout) => {
            abort.abort("the fetch deadline passed (--git-fetch-timeout)");
            Err(SourceError::Aborted("the fetch deadline passed (--git-fetch-timeout)"))
        }
    }
}

/// Accept `examined` if it is good, and persist it when accepted.
async fn accept(shared: &Shared, source: &Arc<GitSource>, examined: Examined) -> Option<String> {
    let commit = examined.revision.commit.clone();
    if !shared.evaluate(examined) {
        return None;
    }
    let src = source.clone();
    let c = commit.clone();
    match tokio::task::spawn_blocking(move || src.persist(&c)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not persist the enforced revision; a restart will wait for the first fetch")
        }
        Err(e) => tracing::error!(error = %e, "could not persist the enforced revision"),
    }
    Some(commit)
}

/// Follow the source until cancelled; spawn a worker for each target as revisions name
/// them; on cancellation wait (at most `grace`) for the workers' in-flight reconciles.
pub async fn run(shared: Arc<Shared>, source: GitSource, grace: Duration) {
    let source = Arc::new(source);
    let mut fetch_rx = shared.fetch_kick.subscribe();
    let mut workers: JoinSet<()> = JoinSet::new();
    let mut spawned: BTreeMap<String, ()> = BTreeMap::new();
    let semaphore = Arc::new(Semaphore::new(shared.settings.max_concurrent.max(1)));
    // The commit ancestry is checked against: the enforced one, persisted across restarts.
    let mut base: Option<String> = source.ancestry_base();
    let mut last_seen: Option<String> = None;
    // Start-up: the last good revision is enforced from the mirror before any fetch, so
    // an unreachable remote does not leave the targets unenforced.
    if let Some(commit) = source.persisted() {
        let src = source.clone();
        let c = commit.clone();
        let abort = Abort::default();
        match tokio::task::spawn_blocking(move || src.examine(&c, Some(&c), &abort)).await {
            Ok(Ok(examined)) => {
                tracing::info!(commit = %commit, "enforcing the persisted last good revision before the first fetch");
                if accept(&shared, &source, examined).await.is_some() {
                    last_seen = Some(commit);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, commit = %commit, "the persisted revision cannot be read from the mirror; waiting for the first fetch")
            }
            Err(e) => tracing::error!(error = %e, "reading the persisted revision failed"),
        }
    }
    let mut trigger = Trigger::Start;
    let mut last_webhook_fetch: Option<Instant> = None;
    loop {
        shared
            .metrics
            .fetches
            .get_or_create(&TriggerOnlyL {
                trigger: trigger.as_str().into(),
            })
            .inc();
        let polled = poll_source(&shared, &source, last_seen.clone(), base.clone()).await;
        match polled {
            Err(e) => {
                tracing::warn!(error = %e, trigger = trigger.as_str(), "fetching the policy source failed; the enforced revision stays");
                shared
                    .metrics
                    .fetch_errors
                    .get_or_create(&ReasonL {
                        reason: e.label().to_string(),
                    })
                    .inc();
                shared.update(|s| s.source_error = Some(e.to_string()));
            }
            Ok(polled) => {
                let at = now();
                shared.metrics.last_fetch_success.set(at as f64);
                shared.update(|s| {
                    s.source_error = None;
                    s.last_fetch_success_at = Some(at);
                });
                match polled {
                    None => {
                        if trigger == Trigger::Webhook {
                            // Nothing new to fetch: the webhook still asks for a reconcile
                            // (at most one per interval: this loop spaces webhook fetches).
                            shared.reconcile_kick.send_modify(|n| *n += 1);
                        }
                    }
                    Some(examined) => {
                        let commit = examined.revision.commit.clone();
                        shared.update(|s| s.fetched = Some(commit.clone()));
                        last_seen = Some(commit);
                        if let Some(accepted) = accept(&shared, &source, *examined).await {
                            base = Some(accepted);
                        }
                    }
                }
            }
        }
        shared.heartbeat.store(now(), Ordering::Relaxed);
        // Workers for the targets the enforced revision defines.
        if let Some(e) = shared.enforced.borrow().clone() {
            for t in &e.set.targets {
                let name = t.name().to_string();
                let wanted =
                    shared.settings.targets.is_empty() || shared.settings.targets.contains(&name);
                if wanted && !spawned.contains_key(&name) {
                    spawned.insert(name.clone(), ());
                    let cloud = t
                        .to_target()
                        .map(|t| t.scope.cloud().to_string())
                        .unwrap_or_default();
                    shared.update(|s| {
                        s.targets.entry(name.clone()).or_default().cloud = cloud;
                    });
                    workers.spawn(worker(shared.clone(), name, semaphore.clone()));
                }
            }
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            _ = tokio::time::sleep(shared.settings.poll_interval) => trigger = Trigger::Poll,
            _ = fetch_rx.changed() => trigger = Trigger::Webhook,
        }
        if trigger == Trigger::Webhook {
            // At most one webhook-triggered fetch per interval: deliveries arriving
            // meanwhile are coalesced into this one.
            if let Some(last) = last_webhook_fetch {
                let ready = last + shared.settings.webhook_min_interval;
                tokio::select! {
                    _ = shared.cancel.cancelled() => break,
                    _ = tokio::time::sleep_until(ready.into()) => {}
                }
            }
            fetch_rx.borrow_and_update();
            last_webhook_fetch = Some(Instant::now());
        }
    }
    tracing::info!(grace = ?grace, "shutting down: no new work; waiting for in-flight reconciles");
    let drained = tokio::time::timeout(grace, async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("all workers stopped"),
        Err(_) => tracing::warn!(
            "grace period over; abandoning in-flight work (every change is idempotent and is re-planned at the next start)"
        ),
    }
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(0.9 + fastrand::f64() * 0.2)
}

/// Reverts of the same field of the same resource, for flap detection.
/// The kind of resource a planned change is about (`group`, `function`, `endpoint`…).
fn kind(c: &crate::plan::PlannedChange) -> String {
    c.resource
        .split_whitespace()
        .next()
        .unwrap_or("resource")
        .to_string()
}

async fn worker(shared: Arc<Shared>, target: String, semaphore: Arc<Semaphore>) {
    let mut enforced_rx = shared.enforced.subscribe();
    let mut kick_rx = shared.reconcile_kick.subscribe();
    let mut previous: Option<DesiredState> = None;
    let mut flaps = Flaps::default();
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
                    _ = tokio::time::sleep_until(due) => break Some(timer),
                }
            };
            let Some(woke) = woke else { break };
            trigger = woke;
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
            shared
                .metrics
                .target_healthy
                .get_or_create(&TargetL {
                    target: target.clone(),
                })
                .set(0);
            break;
        }
        shared
            .metrics
            .triggers
            .get_or_create(&TriggerL {
                target: target.clone(),
                trigger: trigger.as_str().into(),
            })
            .inc();
        let Ok(_permit) = semaphore.acquire().await else {
            break;
        };
        let started = Instant::now();
        let mut evidence = Evidence::default();
        // The deadline stops the reconcile between changes (observing and planning are
        // cut at it; the apply starts no change past it). The outer timeout, at twice
        // the deadline, is only a backstop for a cloud call that never returns.
        let deadline = tokio::time::Instant::now() + shared.settings.reconcile_timeout;
        let result = tokio::time::timeout(
            shared.settings.reconcile_timeout * 2,
            reconcile(
                &shared,
                &target,
                &enforced,
                deadline,
                &mut previous,
                &mut flaps,
                &mut evidence,
            ),
        )
        .await;
        let elapsed = started.elapsed();
        let (outcome, error, applied, reverted) = match result {
            Ok(Ok((applied, reverted))) => (ReconcileResult::Ok, None, applied, reverted),
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
        shared
            .metrics
            .reconcile_duration
            .get_or_create(&TargetL {
                target: target.clone(),
            })
            .observe(elapsed.as_secs_f64());
        shared
            .metrics
            .reconciles
            .get_or_create(&ResultL {
                target: target.clone(),
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
        write_evidence(
            &shared,
            &target,
            &enforced.revision,
            label,
            error.as_deref(),
            trigger.as_str(),
            evidence,
        );
        let record = ReconcileRecord {
            at: now(),
            trigger,
            revision: enforced.revision.commit.clone(),
            result: outcome,
            error: error.clone(),
            duration_ms: elapsed.as_millis() as u64,
            applied,
            drift_reverted: reverted,
        };
        shared.update(|s| {
            let t = s.targets.entry(target.clone()).or_default();
            if error.is_none() {
                t.last_success_at = Some(record.at);
            }
            t.last_reconcile = Some(record);
        });
        shared
            .metrics
            .target_healthy
            .get_or_create(&TargetL {
                target: target.clone(),
            })
            .set(i64::from(error.is_none()));
        if error.is_none() {
            shared
                .metrics
                .last_success
                .get_or_create(&TargetL {
                    target: target.clone(),
                })
                .set(now() as f64);
            backoff = None;
            delay = jittered(shared.settings.resync);
        } else {
            let b = backoff.get_or_insert_with(|| {
                ExponentialBuilder::default()
                    .with_min_delay(shared.settings.retry_min)
                    .with_max_delay(shared.settings.retry_max)
                    .with_jitter()
                    .without_max_times()
                    .build()
            });
            delay = b.next().unwrap_or(shared.settings.retry_max);
        }
    }
    tracing::debug!(target = %target, "worker stopped");
}

/// One reconcile of one target. Ok: (changes applied, drift reverted).
async fn reconcile(
    shared: &Shared,
    name: &str,
    enforced: &Enforced,
    deadline: tokio::time::Instant,
    previous: &mut Option<DesiredState>,
    flaps: &mut Flaps,
    evidence: &mut Evidence,
) -> Result<(usize, usize), Failure> {
    let set = &enforced.set;
    let Some(target) = set.target(name) else {
        return Err(Failure::error(format!(
            "revision {} no longer defines target {name}; nothing is changed there",
            enforced.revision.commit
        )));
    };
    let t = target
        .to_target()
        .ok_or(Failure::error(format!("target {name} names no cloud")))?;
    let provider = shared
        .providers
        .get(t.scope.cloud())
        .map_err(|e| Failure::error(e.to_string()))?;
    // After a restart the previous desired state comes from the store, so that drift
    // made while the controller was down is still drift.
    if previous.is_none()
        && let Some(h) = &shared.history
    {
        *previous = h
            .enforced_desired(name)
            .map_err(|e| Failure::error(format!("the loop state cannot be read: {e}")))?;
    }
    let ownership = match &shared.history {
        Some(h) => h
            .ownership(name)
            .map_err(|e| Failure::error(format!("the ownership record cannot be read: {e}")))?,
        None => Ownership::unverified(name),
    };
    let planning = tokio::time::timeout_at(
        deadline,
        observe_and_plan(
            set,
            target,
            provider.as_ref(),
            &ownership,
            previous.as_ref(),
            &shared.settings.plan,
            Some(&enforced.revision.commit),
        ),
    )
    .await
    .map_err(|_| Failure {
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
            return Err(Failure::error(format!(
                "the revision does not fit what is observed: {}",
                text.join("; ")
            )));
        }
        Err(e) => return Err(Failure::error(format!("{e}: {}", source_text(&e)))),
    };

    evidence.observed = true;
    evidence.resources = managed_resources(&planned.desired);
    // Drift: count it; stop reverting what keeps coming back.
    let settings = &shared.settings;
    let observed_at = now_ms();
    for c in planned
        .plan
        .changes
        .iter()
        .filter(|c| c.cause == Cause::Drift)
    {
        evidence.events.push((
            observed_at,
            NewEvent::new(
                ev::DRIFT_DETECTED,
                serde_json::json!({
                    "change": describe(c),
                    // CloudTrail / Activity Log are not queried: who changed it is unknown here.
                    "actor": null,
                    "correction": c.change,
                }),
            )
            .target(name)
            .revision(Some(&enforced.revision.commit))
            .resource(&resource_key(&c.resource)),
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
    let flapping = flaps.filter(
        name,
        &mut planned.plan.changes,
        settings.flap_threshold,
        settings.flap_window,
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
    // The record first: what this observation adopted, and the creations about to start
    // (so that a crash between the cloud's answer and the record loses nothing).
    let mut before = ownership::observed(&ownership, &planned.inventory);
    if planned.plan.refusal.is_none() {
        before = ownership::merge([before, ownership::intents(&planned.plan)]);
    }
    record_ownership(shared, name, &enforced.revision.commit, &before)?;
    let result = apply_until(&planned.plan, &t, provider.as_ref(), &|| {
        shared.cancel.is_cancelled() || tokio::time::Instant::now() >= deadline
    })
    .await;
    let applied_at = now_ms();
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
            return Err(Failure {
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
    for r in &report.results {
        let action = r.planned.change.action().to_string();
        let cause = if r.planned.cause == Cause::Drift {
            "drift"
        } else {
            "intended"
        };
        let (status, request_ids, detail) = match &r.result {
            ChangeOutcome::Done { outcome: o } => (
                serde_json::to_value(o.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                o.request_ids.clone(),
                o.detail.clone(),
            ),
            ChangeOutcome::Failed { error } => {
                ("failed".to_string(), Vec::new(), Some(error.clone()))
            }
            ChangeOutcome::Blocked { by_resource, .. } => (
                "blocked".to_string(),
                Vec::new(),
                Some(format!("blocked by the failed change of {by_resource}")),
            ),
        };
        let key = resource_key(&r.planned.resource);
        let record = ChangeRecord {
            resource: key.clone(),
            cause: cause.into(),
            action,
            status: status.clone(),
            request_ids,
            detail,
        };
        let kind = if status == "failed" || status == "blocked" {
            ev::CHANGE_FAILED
        } else {
            ev::CHANGE_APPLIED
        };
        evidence.events.push((
            applied_at,
            NewEvent::new(kind, serde_json::to_value(&record).unwrap_or_default())
                .target(name)
                .revision(Some(&enforced.revision.commit))
                .resource(&key),
        ));
        evidence.changes.push(record);
    }
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
            flaps.record(&r.planned);
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
    record_findings(shared, name, &planned.plan.findings, &pending);
    let applied = report
        .results
        .iter()
        .filter(|r| r.outcome().is_some())
        .count();
    if let Some(f) = failure {
        return Err(Failure::error(f).applied(applied));
    }
    if report.skipped > 0 {
        if shared.cancel.is_cancelled() {
            return Err(Failure::error(format!(
                "shutting down: {} change(s) left for the next start",
                report.skipped
            ))
            .applied(applied));
        }
        return Err(Failure {
            result: ReconcileResult::Timeout,
            message: format!(
                "the reconcile reached its deadline ({:?}) between changes: {} change(s) left for the next reconcile",
                shared.settings.reconcile_timeout, report.skipped
            ),
            applied,
        });
    }
    if previous.as_ref() != Some(&planned.desired)
        && let Some(h) = &shared.history
        && let Err(e) = h.save_enforced_desired(
            name,
            Some(&enforced.revision.commit),
            now_ms(),
            &planned.desired,
        )
    {
        tracing::error!(target = %name, error = %e, "the loop state cannot be written; drift and intent are told apart from memory until it can");
    }
    *previous = Some(planned.desired);
    Ok((applied, reverted))
}

/// Write an ownership record update; a failure stops the reconcile (fail closed: never
/// change the cloud with a record that cannot keep up).
fn record_ownership(
    shared: &Shared,
    name: &str,
    revision: &str,
    update: &ownership::RecordUpdate,
) -> Result<(), Failure> {
    let Some(h) = &shared.history else {
        return Ok(());
    };
    h.update_ownership(name, Some(revision), now_ms(), update)
        .map_err(|e| Failure::error(format!("the ownership record cannot be written: {e}")))
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

/// What one reconcile leaves for the history.
#[derive(Debug, Default)]
struct Evidence {
    /// Whether the target was observed (findings are only opened/closed then).
    observed: bool,
    resources: Vec<String>,
    changes: Vec<ChangeRecord>,
    findings: Vec<Finding>,
    /// Events with their times: drift when it was observed, changes when applied.
    events: Vec<(i64, NewEvent)>,
}

/// `group payments-api (sg-1)` → `group payments-api`.
fn resource_key(resource: &str) -> String {
    resource.split(" (").next().unwrap_or(resource).to_string()
}

fn describe(c: &crate::plan::PlannedChange) -> String {
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
fn managed_resources(d: &DesiredState) -> Vec<String> {
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

fn write_evidence(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poll_stuck_past_twice_its_deadline_fails_liveness() {
        let settings = RunSettings {
            fetch_timeout: Duration::from_secs(10),
            ..RunSettings::default()
        };
        let shared = Shared::new(settings, Providers::new(Default::default()), None);
        assert!(shared.live());
        // Running, but within twice the deadline plus a minute: alive.
        shared
            .fetch_running_since
            .store(now() - 70, Ordering::Relaxed);
        assert!(shared.live());
        shared
            .fetch_running_since
            .store(now() - 100, Ordering::Relaxed);
        assert!(!shared.live(), "stuck for 100 s > 2 × 10 s + 60 s");
        shared.fetch_running_since.store(0, Ordering::Relaxed);
        assert!(shared.live());
        // The loop itself stopped turning.
        shared.heartbeat.store(now() - 10_000, Ordering::Relaxed);
        assert!(!shared.live());
    }
}
