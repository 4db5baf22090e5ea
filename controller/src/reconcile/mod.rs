//! The controller loop (`palisade run`), as DESIGN names it: `reconcile`.
//!
//! One task follows the Git source and decides which revision is enforced: every new
//! revision goes through the source's fixed order (fetch the tracked ref → resolve
//! exactly → verify the signature → check ancestry → load from the Git tree) and is then
//! validated as a whole before it replaces the enforced one; a bad, unsigned, rolled-back
//! or empty revision is rejected and the last good one stays. The last good commit is
//! persisted and enforced again at start-up, before the first fetch. Fetches are bounded
//! (deadline, bytes, libgit2 socket timeouts) and abandoned on shutdown. One worker per
//! target reconciles (observe → plan → apply) on every trigger — new revision, periodic
//! jittered resync, webhook, retry — with bounded concurrency across targets. Triggers
//! are logged and counted, never used in decisions: each reconcile compares the whole
//! desired state with the whole observed state.
//!
//! Modules: this one owns the shared context ([`Shared`]: settings, providers, the
//! history store, the status sink, metrics, the clock), the source loop and history
//! retention; `worker` scheduling, backoff and error policy per target; `target` one
//! reconcile of one target and what it records; `status` what the status endpoints
//! show; `evidence` what a reconcile writes to the history.

mod events;
mod evidence;
mod status;
mod target;
#[cfg(test)]
mod tests;
mod worker;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use events::QueueStatus;
pub use status::{ReconcileRecord, ReconcileResult, Rejection, Status, TargetStatus, Trigger};
pub use target::{ReconcileError, Reconciled, TargetState, reconcile_once};

use crate::history::{
    EventData, HistoryRewritten, NewEvent, RevisionEnforced, RevisionRejected, Store,
};
use crate::metrics::{Metrics, ReasonL, TriggerOnlyL};
use crate::plan::Settings;
use crate::planning::Providers;
use crate::policy::{Diagnostic, PolicySet};
use crate::source::{Abort, Examined, GitSource, Refusal, RejectReason, Revision, SourceError};

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
    /// Delete history rows older than this, at start and daily (see
    /// [`Store::retain`] for what is always kept). `None`: keep everything.
    pub history_retention: Option<Duration>,
    /// Set when the history store could not be opened at all at start-up (the reason):
    /// without its ownership record Palisade cannot prove what it owns, so every target
    /// is observed and planned but nothing is written to the cloud (fail closed), and
    /// every reconcile says why. A store that opens read-only keeps enforcement going.
    pub observe_only: Option<String>,
    /// The history store was opened read-only at start-up: its record is read, nothing
    /// can be written to it, so failed writes are counted but not kept for a retry.
    pub history_read_only: bool,
    /// A target woken by a change event reconciles no sooner than this after its
    /// previous reconcile started: an event storm costs at most one observation per
    /// interval (what arrives meanwhile is coalesced).
    pub event_min_interval: Duration,
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
            history_retention: None,
            observe_only: None,
            history_read_only: false,
            event_min_interval: Duration::from_secs(1),
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
    /// Its targets' cloud scopes, resolved once when it was accepted (validation
    /// guarantees each names exactly one cloud).
    pub targets: BTreeMap<String, palisade_providers::Target>,
}

impl Enforced {
    /// A validated revision.
    pub fn new(revision: Revision, set: PolicySet) -> Enforced {
        let targets = set
            .targets
            .iter()
            .filter_map(|t| t.to_target().map(|x| (t.name().to_string(), x)))
            .collect();
        Enforced {
            revision,
            set: Arc::new(set),
            targets,
        }
    }
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
    /// Wall-clock time of the reconciles (evidence, loop state, flap history).
    pub clock: Arc<dyn Clock>,
    /// When the poll now running on a blocking thread started (Unix seconds; 0: none).
    /// An abandoned poll still running long after its deadline means a fetch stuck
    /// inside libgit2: `/healthz` fails, so that a restart clears it.
    fetch_running_since: Arc<AtomicU64>,
    /// Writes that failed, oldest first, written before anything else by the next write
    /// (at most [`UNWRITTEN_MAX`] events; beyond that the oldest are dropped and counted).
    unwritten: std::sync::Mutex<std::collections::VecDeque<Unwritten>>,
    /// Each target's inbox of change events (see `events`).
    inboxes: std::sync::Mutex<std::collections::HashMap<String, Arc<events::Inbox>>>,
    /// The acknowledgement of each message some inbox holds (see `events`).
    acks: events::Acks,
    /// The change-event queues `run` reads.
    queues: std::sync::Mutex<Vec<Arc<dyn palisade_providers::events::EventQueue>>>,
}

/// A history write that failed, kept to be written again.
#[derive(Debug, Clone)]
pub(crate) enum Unwritten {
    /// Events with their times.
    Events(Vec<(i64, NewEvent)>),
    /// One reconcile: its report and events (written with `record_reconcile`, which also
    /// opens and closes findings).
    Reconcile(Box<crate::history::Report>, Vec<(i64, NewEvent)>),
}

impl Unwritten {
    fn write(&self, h: &Store) -> Result<(), crate::history::HistoryError> {
        match self {
            Unwritten::Events(e) => h.append_many(e),
            Unwritten::Reconcile(r, e) => h.record_reconcile(r, e).map(|_| ()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Unwritten::Events(e) | Unwritten::Reconcile(_, e) => e.len().max(1),
        }
    }
}

/// Events kept in memory for a retry while the history cannot be written (a reconcile's
/// report counts as one).
pub const UNWRITTEN_MAX: usize = 100_000;

/// Wall-clock time for the reconciles: injected, so that tests can move it.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, in Unix milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Shared {
    /// New shared state.
    pub fn new(settings: RunSettings, providers: Providers, history: Option<Store>) -> Arc<Shared> {
        Shared::with_clock(settings, providers, history, Arc::new(SystemClock))
    }

    /// New shared state with its own clock (tests).
    pub fn with_clock(
        settings: RunSettings,
        providers: Providers,
        history: Option<Store>,
        clock: Arc<dyn Clock>,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            clock,
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
            unwritten: std::sync::Mutex::new(std::collections::VecDeque::new()),
            inboxes: Default::default(),
            acks: Default::default(),
            queues: Default::default(),
        })
    }

    /// Read change events from `queue` once [`run`] starts (`--aws-events-queue`).
    pub fn add_event_queue(&self, queue: Arc<dyn palisade_providers::events::EventQueue>) {
        self.queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(queue);
    }

    /// The inbox of `target`'s change events, if its worker made one.
    pub(crate) fn existing_inbox(&self, target: &str) -> Option<Arc<events::Inbox>> {
        self.inboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(target)
            .cloned()
    }

    /// The inbox of `target`'s change events (made on first use).
    pub(crate) fn inbox(&self, target: &str) -> Arc<events::Inbox> {
        self.inboxes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(target.to_string())
            .or_default()
            .clone()
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
    /// and counted, kept for a retry, and the controller goes on enforcing.
    fn record(&self, events: &[NewEvent]) {
        let at = self.clock.now_ms();
        self.write_history(
            Unwritten::Events(events.iter().map(|e| (at, e.clone())).collect()),
            "events",
        );
    }

    /// Write `w` to the history, after first writing, in order, what earlier writes
    /// could not (so the log stays in time order and a reconcile's report and finding
    /// transitions are recorded as they would have been). When it fails, `w` is kept for
    /// the next write; the failure is counted and shown either way.
    /// Whether `w` is in the history now (true without a store: there is nothing to
    /// record it in).
    pub(crate) fn write_history(&self, w: Unwritten, what: &str) -> bool {
        let Some(h) = &self.history else { return true };
        if self.settings.history_read_only {
            let written = w.write(h);
            let ok = written.is_ok();
            self.history_written(written.map_err(|e| {
                format!("{what}: {e} (the history was opened read-only at start-up: this evidence is not recorded)")
            }));
            return ok;
        }
        let mut backlog = self.unwritten.lock().unwrap_or_else(|e| e.into_inner());
        backlog.push_back(w);
        let (before, mut written) = (backlog.len(), 0);
        let mut failure = None;
        while let Some(next) = backlog.front() {
            match next.write(h) {
                Ok(()) => {
                    backlog.pop_front();
                    written += 1;
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if before > 1 && written > 0 {
            tracing::warn!(
                written,
                of = before,
                "history writable again: what was kept in memory is written"
            );
        }
        match failure {
            None => {
                self.history_written(Ok(()));
                true
            }
            Some(e) => {
                let mut events: usize = backlog.iter().map(Unwritten::len).sum();
                while events > UNWRITTEN_MAX
                    && let Some(old) = backlog.pop_front()
                {
                    events -= old.len();
                    self.metrics.history_events_dropped.inc_by(old.len() as u64);
                }
                self.history_written(Err(format!(
                    "{what}: {e} ({events} events kept in memory for a retry)"
                )));
                false
            }
        }
    }

    /// Change what the status shows of notification sink `name`.
    pub(crate) fn update_sink(&self, name: &str, f: impl FnOnce(&mut crate::notify::SinkStatus)) {
        self.update(|s| f(s.notifications.entry(name.to_string()).or_default()));
    }

    /// Count a failed history write and show it in the status (cleared by the next
    /// write that succeeds). Enforcement goes on either way.
    pub fn history_written(&self, result: Result<(), String>) {
        match result {
            Ok(()) => self.update(|s| s.history_error = None),
            Err(e) => {
                tracing::error!(error = %e, "could not write to the history");
                self.metrics.history_write_errors.inc();
                self.update(|s| s.history_error = Some(e));
            }
        }
    }

    fn reject(&self, revision: &Revision, reason: RejectReason, details: Vec<String>) {
        self.record(
            &[NewEvent::new(EventData::RevisionRejected(RevisionRejected {
                reason,
                details: details.clone(),
                author: revision.author.clone(),
                summary: revision.summary.clone(),
                signature: Some(revision.signature.clone()),
            }))
            .revision(Some(&revision.commit))],
        );
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
                reason,
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
                NewEvent::new(EventData::HistoryRewritten(HistoryRewritten {
                    previous: from.clone(),
                    author: revision.author.clone(),
                    summary: revision.summary.clone(),
                    signature: Some(revision.signature.clone()),
                }))
                .revision(Some(&revision.commit)),
            );
        }
        events.push(
            NewEvent::new(EventData::RevisionEnforced(RevisionEnforced {
                author: revision.author.clone(),
                summary: revision.summary.clone(),
                signature: Some(revision.signature.clone()),
                time: revision.time,
                controls: controls.into_iter().map(str::to_string).collect(),
                policies: set.policies.len(),
            }))
            .revision(Some(&revision.commit)),
        );
        self.record(&events);
        tracing::info!(commit = %revision.commit, author = %revision.author, summary = %revision.summary, policies = set.policies.len(), "revision enforced");
        self.metrics.set_revision(&revision.commit);
        self.update(|s| s.revision = Some(revision.clone()));
        self.enforced
            .send_replace(Some(Arc::new(Enforced::new(revision, set))));
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

/// Apply `--history-retention` at start and daily until shutdown.
async fn retention(shared: Arc<Shared>, keep: Duration) {
    loop {
        if let Some(h) = &shared.history {
            let now = shared.clock.now_ms();
            match h.retain(now - keep.as_millis() as i64, now) {
                Ok(n) => tracing::info!(deleted = n, keep = ?keep, "history retention applied"),
                Err(e) => tracing::error!(error = %e, "history retention failed"),
            }
        }
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(86_400)) => {}
        }
    }
}

/// Follow the source until cancelled; spawn a worker for each target as revisions name
/// them; on cancellation wait (at most `grace`) for the workers' in-flight reconciles.
/// History retention runs beside it when configured.
pub async fn run(shared: Arc<Shared>, source: GitSource, grace: Duration) {
    if let Some(keep) = shared.settings.history_retention {
        tokio::spawn(retention(shared.clone(), keep));
    }
    let queues = shared
        .queues
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    for queue in queues {
        tokio::spawn(events::pump(shared.clone(), queue));
    }
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
                    let cloud = e
                        .targets
                        .get(&name)
                        .map(|t| t.scope.cloud().to_string())
                        .unwrap_or_default();
                    shared.update(|s| {
                        s.targets.entry(name.clone()).or_default().cloud = cloud;
                    });
                    workers.spawn(worker::worker(shared.clone(), name, semaphore.clone()));
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
