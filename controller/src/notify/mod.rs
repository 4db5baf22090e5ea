//! Notifications: the history's events delivered to CloudEvents 1.0 HTTP sinks and
//! Slack-compatible incoming webhooks.
//!
//! - **What.** Drift detected / reverted, revisions enforced / rejected, findings opened /
//!   closed (flapping ones as `flapping`), changes failed: the typed history event, with
//!   its id (receivers de-duplicate by it).
//! - **Routing.** Per sink: event types, targets, a minimum severity.
//! - **Noise.** Events of one kind that say the same thing within the sink's window are one
//!   message with a count (a resync finding the same 500 findings says one thing); on chat
//!   sinks a drift and its revert in the same batch are one message.
//! - **Delivery.** The outbox is the history itself ([`outbox`]): a sink's cursor moves only
//!   after a 2xx, so nothing is lost across restarts (at least once). Attempts back off
//!   with jitter; after the last one the message goes to the dead-letter table and the
//!   sink moves on. Each sink runs on its own task: a slow or dead receiver never slows
//!   reconciliation or another sink.
//!
//! Modules: this one the settings, the messages and the delivery loop; `render` the wire
//! formats; `outbox` the store.

pub mod outbox;
pub mod render;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use serde::{Deserialize, Serialize};

use crate::check::FindingKind;
use crate::history::{ChangeStatus, Event, EventData};
use crate::metrics::SinkL;
use crate::plan::Cause;
use crate::reconcile::Shared;
use outbox::{DeadLetter, Outbox};

/// How much a notification matters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Things went as they should (a revert, a revision enforced, a finding closed).
    #[default]
    Info,
    /// Something needs a look (drift, a finding, flapping).
    Warning,
    /// Something failed (a rejected revision, a failed change).
    Error,
}

/// The settings file of `--notify-config` (YAML or JSON). Secrets are read from files or
/// the environment it names, never written in it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NotifyConfig {
    /// The sinks.
    pub sinks: Vec<SinkConfig>,
}

/// One sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SinkConfig {
    /// Its name (metrics, status, the cursor in the store): letters, digits, `-`, `_`.
    pub name: String,
    /// A CloudEvents 1.0 HTTP sink.
    #[serde(default)]
    pub cloud_events: Option<CloudEventsConfig>,
    /// A Slack-compatible incoming webhook (also Mattermost, and Teams-style `text`).
    #[serde(default)]
    pub slack: Option<SlackConfig>,
    /// Event types to send (`drift.detected`, … or `dev.palisade.drift.detected`); all
    /// when empty.
    #[serde(default)]
    pub events: Vec<String>,
    /// Targets to send; all when empty.
    #[serde(default)]
    pub targets: Vec<String>,
    /// Nothing below this.
    #[serde(default)]
    pub min_severity: Severity,
    /// Consecutive events alike within this many seconds are one message. Default: 10
    /// on chat sinks, 0 (every event its own CloudEvent) on CloudEvents sinks.
    #[serde(default)]
    pub aggregate_seconds: Option<u64>,
    /// Refusals (non-2xx answers other than an outage's) before a message is
    /// dead-lettered (default 8).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First wait between attempts, in milliseconds (default 1000; doubles, with
    /// jitter, up to 5 minutes).
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
}

fn default_attempts() -> u32 {
    8
}
fn default_backoff() -> u64 {
    1000
}

/// Where a secret comes from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretRef {
    /// A file holding it (trailing white space is dropped).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// An environment variable holding it.
    #[serde(default)]
    pub env: Option<String>,
}

/// A CloudEvents sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CloudEventsConfig {
    /// The receiver (http or https).
    pub url: String,
    /// `binary` (default: attributes in `ce-` headers, the data as the body) or
    /// `structured` (one `application/cloudevents+json` document).
    #[serde(default)]
    pub mode: ContentMode,
    /// The HMAC-SHA256 key of the `palisade-signature` header; unsigned without one.
    #[serde(default)]
    pub secret: Option<SecretRef>,
}

/// CloudEvents content mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// Attributes in headers.
    #[default]
    Binary,
    /// One JSON document.
    Structured,
}

/// A Slack-compatible webhook: its URL is the secret.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SlackConfig {
    /// Where the webhook URL is.
    pub url: SecretRef,
}

/// A sink ready to run: settings checked, secrets read.
#[derive(Clone)]
pub struct Sink {
    /// Settings.
    pub config: SinkConfig,
    /// Where to send (a secret itself for chat webhooks: never logged or shown).
    pub url: String,
    /// What it speaks.
    pub kind: SinkKind,
    /// HMAC key.
    pub secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink")
            .field("name", &self.config.name)
            .field("kind", &self.kind)
            .field("url", &"***")
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The wire format of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// CloudEvents 1.0.
    CloudEvents(ContentMode),
    /// Slack-compatible `{"text": …}`.
    Slack,
}

fn read_secret(r: &SecretRef, what: &str) -> Result<String, String> {
    match (&r.file, &r.env) {
        (Some(f), None) => std::fs::read_to_string(f)
            .map(|s| s.trim_end().to_string())
            .map_err(|e| format!("{what}: cannot read {}: {e}", f.display())),
        (None, Some(v)) => std::env::var(v)
            .map(|s| s.trim_end().to_string())
            .map_err(|_| format!("{what}: environment variable {v} is not set")),
        _ => Err(format!("{what}: give exactly one of `file` or `env`")),
    }
}

fn check_url(url: &str, what: &str) -> Result<(), String> {
    // The URL may be the secret (chat webhooks): errors never repeat it.
    let u = url::Url::parse(url).map_err(|e| format!("{what}: the URL does not parse: {e}"))?;
    if !matches!(u.scheme(), "http" | "https") || u.host().is_none() {
        return Err(format!("{what}: expected an http(s) URL with a host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(format!(
            "{what}: credentials in the URL are refused; use the secret"
        ));
    }
    Ok(())
}

/// Read and check `--notify-config`: every problem at once, naming the sink.
///
/// # Errors
/// What is wrong, one line each.
pub fn load(path: &Path) -> Result<Vec<Sink>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let config: NotifyConfig =
        serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut errors = Vec::new();
    let mut sinks = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    for c in config.sinks {
        let what = format!("{}: sink {:?}", path.display(), c.name);
        if c.name.is_empty()
            || !c
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
        {
            errors.push(format!(
                "{what}: the name takes letters, digits, `-` and `_`"
            ));
        }
        if !names.insert(c.name.clone()) {
            errors.push(format!("{what}: the name is used twice"));
        }
        for t in &c.events {
            if event_type(t).is_none() {
                errors.push(format!(
                    "{what}: unknown event type {t:?}; expected one of {}",
                    TYPES.join(", ")
                ));
            }
        }
        if c.max_attempts == 0 {
            errors.push(format!("{what}: maxAttempts must be at least 1"));
        }
        if c.backoff_ms < 10 {
            errors.push(format!("{what}: backoffMs must be at least 10"));
        }
        let built = match (&c.cloud_events, &c.slack) {
            (Some(ce), None) => check_url(&ce.url, &what).and_then(|()| {
                let secret = ce
                    .secret
                    .as_ref()
                    .map(|s| {
                        let v = read_secret(s, &what)?;
                        crate::secret::Secret::new(&format!("{what}: the secret"), &v)
                            .map(|v| v.expose().as_bytes().to_vec())
                            .map_err(|e| e.to_string())
                    })
                    .transpose()?;
                Ok((ce.url.clone(), SinkKind::CloudEvents(ce.mode), secret))
            }),
            (None, Some(sl)) => read_secret(&sl.url, &what).and_then(|url| {
                check_url(&url, &what)?;
                Ok((url, SinkKind::Slack, None))
            }),
            _ => Err(format!(
                "{what}: give exactly one of `cloudEvents` or `slack`"
            )),
        };
        match built {
            Ok((url, kind, secret)) => sinks.push(Sink {
                config: c,
                url,
                kind,
                secret,
            }),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(sinks)
    } else {
        Err(errors.join("\n"))
    }
}

/// The event types, without the `dev.palisade.` prefix.
pub const TYPES: &[&str] = &[
    "drift.detected",
    "drift.reverted",
    "drift.attributed",
    "revision.enforced",
    "revision.rejected",
    "flapping",
    "finding.opened",
    "finding.closed",
    "change.failed",
];

/// The full CloudEvents type of a short or full name.
fn event_type(name: &str) -> Option<&'static str> {
    let short = name.strip_prefix("dev.palisade.").unwrap_or(name);
    TYPES.iter().find(|t| **t == short).copied()
}

/// One message: one history event, or several alike.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Short type (`drift.detected`).
    #[serde(rename = "type")]
    pub ty: &'static str,
    /// Severity.
    pub severity: Severity,
    /// Target.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The typed resource address, when the events are about one resource.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Revision in force.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// When the first event happened (Unix ms).
    pub at: i64,
    /// The history ids carried (the first is the message id).
    pub event_ids: Vec<i64>,
    /// Resources the events were about (aggregated messages).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// One line for people.
    pub text: String,
    /// The first history event, typed: `{"kind": "drift-detected", "data": {…}}`.
    pub event: serde_json::Value,
    /// Chat sinks: the revert of this drift, when it came in the same batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverted: Option<String>,
    /// What makes two events alike.
    #[serde(skip)]
    key: String,
}

impl Message {
    /// How many events it carries.
    pub fn count(&self) -> usize {
        self.event_ids.len()
    }

    /// Its id: the history event's id, or `<first>-<last>` for several (a message sent
    /// again after a restart may carry more events, and then has another id).
    pub fn id(&self) -> String {
        match (self.event_ids.first(), self.event_ids.iter().max()) {
            (Some(first), Some(last)) if self.count() > 1 => format!("{first}-{last}"),
            (Some(first), _) => first.to_string(),
            _ => String::new(),
        }
    }
}

/// The message an event makes, if it makes one.
pub fn message(e: &Event) -> Option<Message> {
    let data = e.event.data()?;
    let resource = e.event.resource.clone();
    let (ty, severity, text, key) = match data {
        EventData::DriftDetected(d) => (
            "drift.detected",
            Severity::Warning,
            format!(
                "drift on {}: {}{}",
                resource.as_deref().unwrap_or("?"),
                d.change,
                d.actor
                    .as_ref()
                    .map(|a| format!(" (by {a})"))
                    .unwrap_or_default()
            ),
            resource.clone().unwrap_or_default(),
        ),
        // Who made a drift, found after it was reported (the audit log lags).
        EventData::DriftAttributed(a) => (
            "drift.attributed",
            Severity::Warning,
            format!(
                "drift on {} detected at {} was made by {}",
                resource.as_deref().unwrap_or("?"),
                crate::report::time(a.detected_at),
                a.actor
            ),
            resource.clone().unwrap_or_default(),
        ),
        // Only a revert the cloud applied: one found already done, or pending, is not.
        EventData::ChangeApplied(c)
            if c.cause == Cause::Drift && c.status == ChangeStatus::Applied =>
        {
            (
                "drift.reverted",
                Severity::Info,
                format!("drift on {} reverted: {}", c.resource, c.action),
                c.resource.key(),
            )
        }
        EventData::ChangeFailed(c) if c.status == ChangeStatus::Failed => (
            "change.failed",
            Severity::Error,
            format!(
                "change failed on {}: {} — {}",
                c.resource,
                c.action,
                c.detail.as_deref().unwrap_or("")
            ),
            format!(
                "{}|{}|{}",
                c.resource.key(),
                c.action,
                c.detail.as_deref().unwrap_or("")
            ),
        ),
        EventData::RevisionEnforced(_) => (
            "revision.enforced",
            Severity::Info,
            format!(
                "revision {} enforced",
                e.event.revision.as_deref().unwrap_or("?")
            ),
            e.event.revision.clone().unwrap_or_default(),
        ),
        EventData::RevisionRejected(r) => (
            "revision.rejected",
            Severity::Error,
            format!(
                "revision {} rejected: {}",
                e.event.revision.as_deref().unwrap_or("?"),
                r.reason
            ),
            e.event.revision.clone().unwrap_or_default(),
        ),
        EventData::FindingOpened(f) => {
            let flapping = f.kind == FindingKind::Flapping;
            (
                if flapping {
                    "flapping"
                } else {
                    "finding.opened"
                },
                Severity::Warning,
                format!("{}: {}", f.resource, f.message),
                // Alike: the same guardrail (or kind) saying it of other resources.
                format!("{:?}|{}", f.kind, f.guardrail.as_deref().unwrap_or("")),
            )
        }
        EventData::FindingClosed(f) => (
            "finding.closed",
            Severity::Info,
            format!("{}: closed — {}", f.resource, f.message),
            format!("{:?}|{}", f.kind, f.guardrail.as_deref().unwrap_or("")),
        ),
        _ => return None,
    };
    Some(Message {
        ty,
        severity,
        target: e.event.target.clone(),
        subject: resource.clone(),
        revision: e.event.revision.clone(),
        at: e.at,
        event_ids: vec![e.id],
        resources: resource.into_iter().collect(),
        text,
        event: serde_json::to_value(data).unwrap_or_default(),
        reverted: None,
        key,
    })
}

/// Whether `m` is for `sink`.
fn routed(sink: &SinkConfig, m: &Message) -> bool {
    m.severity >= sink.min_severity
        && (sink.events.is_empty() || sink.events.iter().any(|t| event_type(t) == Some(m.ty)))
        && (sink.targets.is_empty() || m.target.as_ref().is_none_or(|t| sink.targets.contains(t)))
}

/// Resources listed in one aggregated message at most (the count says the rest).
const LISTED: usize = 20;

/// The types whose messages undo this one's, for aggregation: an aggregate stops taking
/// events once its opposite about the same thing came after it (a flapping finding
/// closes as `finding.closed` too).
fn opposites(ty: &str) -> &'static [&'static str] {
    match ty {
        "finding.opened" | "flapping" => &["finding.closed"],
        "finding.closed" => &["finding.opened", "flapping"],
        "drift.detected" => &["drift.reverted"],
        "drift.reverted" => &["drift.detected"],
        _ => &[],
    }
}

impl Sink {
    /// The aggregation window in seconds (0: none).
    pub fn aggregate_seconds(&self) -> u64 {
        self.config.aggregate_seconds.unwrap_or(match self.kind {
            SinkKind::Slack => 10,
            SinkKind::CloudEvents(_) => 0,
        })
    }
}

/// The messages of a batch of events for `sink`, in the order of their first event: on
/// chat sinks each drift joined with its revert, then routed, then alike ones within
/// the window merged — never across their opposite (an opening, its closing and a new
/// opening stay three messages, in that order).
pub fn messages(sink: &Sink, events: &[Event]) -> Vec<Message> {
    let seconds = sink.aggregate_seconds();
    let window = i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX);
    let mut all: Vec<Message> = events.iter().filter_map(message).collect();
    if sink.kind == SinkKind::Slack {
        all = join_reverts(all, &sink.config);
    }
    all.retain(|m| routed(&sink.config, m));
    let mut out: Vec<Message> = Vec::new();
    // (type, target, key) → index in `out` of the message still open for merging.
    let mut open: BTreeMap<(&'static str, Option<String>, String), usize> = BTreeMap::new();
    for m in all {
        for o in opposites(m.ty) {
            open.remove(&(*o, m.target.clone(), m.key.clone()));
        }
        let k = (m.ty, m.target.clone(), m.key.clone());
        if seconds > 0
            && m.reverted.is_none()
            && let Some(&i) = open.get(&k)
            && m.at - out[i].at <= window
        {
            let agg = &mut out[i];
            agg.event_ids.extend(m.event_ids);
            if let Some(r) = m.subject
                && !agg.resources.contains(&r)
                && agg.resources.len() < LISTED
            {
                agg.resources.push(r);
            }
            if agg.resources.len() > 1 {
                agg.subject = None;
            }
            continue;
        }
        if m.reverted.is_none() {
            open.insert(k, out.len());
        }
        out.push(m);
    }
    for m in &mut out {
        if m.count() > 1 && m.reverted.is_none() {
            m.text = format!("{} (×{} within {seconds} s)", m.text, m.count());
        }
    }
    out
}

/// Fold each `drift.reverted` into the `drift.detected` of the same resource before it,
/// when the sink takes that drift (else the revert stays on its own, to be routed).
fn join_reverts(all: Vec<Message>, sink: &SinkConfig) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(all.len());
    // (target, resource key) → index in `out` of the latest drift not yet joined.
    let mut drifts: BTreeMap<(Option<String>, String), usize> = BTreeMap::new();
    for m in all {
        let k = (m.target.clone(), m.key.clone());
        if m.ty == "drift.detected" && m.count() == 1 && routed(sink, &m) {
            drifts.insert(k, out.len());
        } else if m.ty == "drift.reverted"
            && m.count() == 1
            && let Some(j) = drifts.remove(&k)
        {
            let d = &mut out[j];
            d.event_ids.extend(m.event_ids);
            d.reverted = Some(m.text);
            d.text = format!("{} — reverted", d.text);
            continue;
        }
        out.push(m);
    }
    out
}

/// What `/api/status` shows of a sink.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkStatus {
    /// Wire format.
    pub kind: String,
    /// Last delivery (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_success_at: Option<u64>,
    /// Last failed attempt, cleared by the next delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// History events after its cursor.
    pub backlog: u64,
    /// Messages delivered since start.
    pub sent: u64,
    /// Messages dead-lettered since start.
    pub dead_lettered: u64,
}

/// Events read per round: a burst written by one reconcile fits in one.
const BATCH: usize = 10_000;

/// How often an idle sink looks for new events.
const POLL: Duration = Duration::from_millis(500);

/// Give every sink never seen a cursor at the history's head: a new sink tells what
/// happens from now on, not the past. Call before the loops start writing events. Each
/// sink on its own: one that cannot be given a cursor starts at the head anyway (in
/// memory) and says why.
pub fn init_cursors(store: &crate::history::Store, sinks: &[Sink], now_ms: i64) {
    // A sink no longer configured holds back nothing: its cursor goes (retention keeps
    // what the configured ones have not delivered).
    match store.forget_other_cursors(
        &sinks
            .iter()
            .map(|s| s.config.name.as_str())
            .collect::<Vec<_>>(),
    ) {
        Ok(gone) => {
            for name in gone {
                tracing::info!(sink = %name, "notification sink no longer configured: its cursor is dropped");
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot drop the cursors of removed notification sinks")
        }
    }
    for sink in sinks {
        let name = &sink.config.name;
        let done = store.cursor(name).and_then(|c| match c {
            Some(_) => Ok(()),
            None => {
                let head = store.head_id()?;
                store.advance(name, head, now_ms)?;
                tracing::info!(sink = %name, from = head, "notification sink starts at the history's head");
                Ok(())
            }
        });
        if let Err(e) = done {
            tracing::error!(sink = %name, error = %e, "cannot keep the notification cursor; the sink starts at the head in memory");
        }
    }
}

/// Run every sink until shutdown (each on its own task).
pub async fn run(shared: Arc<Shared>, sinks: Vec<Sink>, installation: String) {
    if shared.history.is_none() {
        for sink in &sinks {
            shared.update_sink(&sink.config.name, |s| {
                s.last_error =
                    Some("no history store is open (it is the outbox): nothing is sent".into());
            });
        }
        if !sinks.is_empty() {
            tracing::error!(
                "notifications need the history store (their outbox); none is open, so nothing is sent"
            );
        }
        return;
    }
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("palisade/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e.without_url(), "cannot build the notification HTTP client; nothing is sent");
            return;
        }
    };
    let mut tasks = Vec::new();
    for sink in sinks {
        let name = sink.config.name.clone();
        let task = tokio::spawn(run_sink(
            shared.clone(),
            client.clone(),
            sink,
            installation.clone(),
        ));
        tasks.push((name, task));
    }
    for (name, t) in tasks {
        if let Err(e) = t.await {
            tracing::error!(sink = %name, error = %e, "notification sink stopped");
        }
    }
}

/// One sink's loop: read after the cursor, deliver in order, move the cursor after the
/// whole batch (a restart sends the batch in flight again: at least once).
pub async fn run_sink(
    shared: Arc<Shared>,
    client: reqwest::Client,
    sink: Sink,
    installation: String,
) {
    let Some(store) = shared.history.as_ref() else {
        return;
    };
    let name = sink.config.name.clone();
    let label = SinkL { sink: name.clone() };
    let kind = match sink.kind {
        SinkKind::CloudEvents(_) => "cloudevents",
        SinkKind::Slack => "slack",
    };
    shared.update_sink(&name, |s| s.kind = kind.into());
    let mut cursor = loop {
        match store.cursor(&name) {
            Ok(Some(c)) => break c,
            // No cursor could be kept (init_cursors said why): from the head, never 0.
            Ok(None) => break store.head_id().unwrap_or(i64::MAX),
            Err(e) => {
                let e = format!("cannot read the notification cursor: {e}");
                tracing::error!(sink = %name, "{e}");
                shared.update_sink(&name, |s| s.last_error = Some(e));
                tokio::select! {
                    () = shared.cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    };
    loop {
        if shared.cancel.is_cancelled() {
            return;
        }
        show_backlog(&shared, &label, cursor);
        let events = match store.events_after(cursor, BATCH) {
            Ok(e) => e,
            Err(e) => {
                let e = format!("cannot read the history: {e}");
                tracing::warn!(sink = %name, "{e}");
                shared.update_sink(&name, |s| s.last_error = Some(e));
                Vec::new()
            }
        };
        let Some(last) = events.last().map(|e| e.id) else {
            tokio::select! {
                () = shared.cancel.cancelled() => return,
                () = tokio::time::sleep(POLL) => continue,
            }
        };
        let batch = messages(&sink, &events);
        for (i, m) in batch.iter().enumerate() {
            if shared.cancel.is_cancelled() {
                return; // the cursor stays: what is left is sent after the restart
            }
            let req = render::request(&sink, m, &installation);
            if !deliver(&shared, &client, &sink, &label, m, &req, cursor).await {
                return;
            }
            // Messages are in the order of their first event: everything before the
            // next one's is dealt with (an aggregate's later events may be sent again
            // after a crash; never lost).
            if let Some(next) = batch.get(i + 1) {
                let upto = next.event_ids[0] - 1;
                if upto > cursor {
                    cursor = upto;
                    if let Err(e) = store.advance(&name, cursor, shared.clock.now_ms()) {
                        tracing::error!(sink = %name, error = %e, "cannot move the notification cursor");
                    }
                }
            }
        }
        cursor = last;
        if let Err(e) = store.advance(&name, cursor, shared.clock.now_ms()) {
            tracing::error!(sink = %name, error = %e, "cannot move the notification cursor; the batch may be sent again");
        }
    }
}

/// Events after `cursor`, in the metric and the status.
fn show_backlog(shared: &Shared, label: &SinkL, cursor: i64) {
    let Some(backlog) = shared.history.as_ref().and_then(|h| h.backlog(cursor).ok()) else {
        return;
    };
    shared
        .metrics
        .notifications_backlog
        .get_or_create(label)
        .set(i64::try_from(backlog).unwrap_or(i64::MAX));
    shared.update_sink(&label.sink, |s| s.backlog = backlog);
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// The receiver could not be reached, or asked to wait (timeouts, refused
    /// connections, 408, 429, 502, 503, 504, a `Retry-After`): an outage of the sink, retried until it ends — never held
    /// against the message. The wait it asked for, if any.
    Unreachable(String, Option<Duration>),
    /// The receiver answered and refused: counts towards `maxAttempts`.
    Refused(String),
}

async fn attempt(
    shared: &Shared,
    client: &reqwest::Client,
    sink: &Sink,
    req: &render::Request,
) -> Option<Attempt> {
    let body = req.body.clone();
    let mut r = client.post(&sink.url);
    for (k, v) in &req.headers {
        r = r.header(k.as_str(), v.as_str());
    }
    // Signed per attempt, so that a retry carries a fresh time.
    if let Some(key) = &sink.secret {
        let t = u64::try_from(shared.clock.now_ms() / 1000).unwrap_or(0);
        r = r.header("palisade-signature", render::signature(key, t, &body));
    }
    let sent = tokio::select! {
        () = shared.cancel.cancelled() => return None,
        sent = r.body(body).send() => sent,
    };
    Some(match sent {
        Ok(resp) if resp.status().is_success() => Attempt::Delivered,
        // The receiver's side is down or asks to wait: an outage, not a refusal.
        Ok(resp)
            if matches!(resp.status().as_u16(), 408 | 429 | 502 | 503 | 504)
                || resp.headers().contains_key("retry-after") =>
        {
            let wait = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(300)));
            Attempt::Unreachable(format!("HTTP {}", resp.status().as_u16()), wait)
        }
        Ok(resp) => Attempt::Refused(format!("HTTP {}", resp.status().as_u16())),
        // Never the URL: a chat webhook's URL is its secret.
        Err(e) => Attempt::Unreachable(transport_error(e), None),
    })
}

/// A transport error with its causes (timeout, refused connection, TLS…), never the URL.
fn transport_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "cannot connect".to_string()
    } else {
        e.to_string()
    };
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Deliver one message: until it is delivered, refused `maxAttempts` times (then
/// dead-lettered), or shutdown (`false`).
#[allow(clippy::too_many_arguments)]
async fn deliver(
    shared: &Shared,
    client: &reqwest::Client,
    sink: &Sink,
    label: &SinkL,
    m: &Message,
    req: &render::Request,
    cursor: i64,
) -> bool {
    let name = &sink.config.name;
    let mut waits = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(sink.config.backoff_ms))
        .with_max_delay(Duration::from_secs(300))
        .with_jitter()
        .without_max_times()
        .build();
    let mut refused = 0;
    let last_error = loop {
        let Some(a) = attempt(shared, client, sink, req).await else {
            return false;
        };
        let (error, asked) = match a {
            Attempt::Delivered => {
                shared.metrics.notifications_sent.get_or_create(label).inc();
                shared.update_sink(name, |s| {
                    s.sent += 1;
                    s.last_success_at = u64::try_from(shared.clock.now_ms() / 1000).ok();
                    s.last_error = None;
                });
                return true;
            }
            Attempt::Unreachable(e, wait) => (e, wait),
            Attempt::Refused(e) => {
                refused += 1;
                (e, None)
            }
        };
        shared
            .metrics
            .notifications_failed
            .get_or_create(label)
            .inc();
        tracing::warn!(sink = %name, refused, error = %error, message = %m.id(), "notification not delivered");
        shared.update_sink(name, |s| s.last_error = Some(error.clone()));
        show_backlog(shared, label, cursor);
        if refused >= sink.config.max_attempts {
            break error;
        }
        // The receiver's Retry-After, but never less than the backoff.
        let backoff = waits.next().unwrap_or(Duration::from_secs(300));
        let wait = asked
            .map_or(backoff, |a| a.max(backoff))
            .min(Duration::from_secs(300));
        tokio::select! {
            () = shared.cancel.cancelled() => return false,
            () = tokio::time::sleep(wait) => {}
        }
    };
    let letter = DeadLetter {
        first_event: m.event_ids[0],
        last_event: *m.event_ids.iter().max().unwrap_or(&m.event_ids[0]),
        attempts: refused,
        error: last_error,
        body: String::from_utf8_lossy(&req.body).into_owned(),
        at: shared.clock.now_ms(),
    };
    let kept = shared
        .history
        .as_ref()
        .map(|store| store.dead_letter(name, &letter));
    if let Some(Err(e)) = kept {
        tracing::error!(sink = %name, error = %e, "cannot keep the dead letter; it is only in this log: {}", letter.body);
    }
    tracing::error!(sink = %name, message = %m.id(), attempts = letter.attempts, error = %letter.error, "notification dead-lettered");
    shared
        .metrics
        .notifications_dead_lettered
        .get_or_create(label)
        .inc();
    shared.update_sink(name, |s| s.dead_lettered += 1);
    true
}
