//! The compliance report behind `palisade report`: controls, per-target activity,
//! finding lifetimes, the drift timeline and compliance over time, rebuilt from the
//! typed events of the history in one pass.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use super::event::{EventData, ReconcileResult};
use super::{Filter, HistoryError, Store, finding_key};
use crate::check::Finding;
use crate::plan::Cause;

/// Status of a control over a period.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlStatus {
    /// Control id.
    pub control: String,
    /// `compliant` when no finding naming it was open at any time in the period.
    pub status: String,
    /// Resources with a finding open during the period.
    pub resources: Vec<String>,
    /// Findings open at the end of the period.
    pub open_at_end: usize,
}

/// Per target activity over a period.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TargetSummary {
    /// Target.
    pub target: String,
    /// Reconciles.
    pub reconciles: usize,
    /// Failed reconciles.
    pub failed_reconciles: usize,
    /// Drift found.
    pub drift_detected: usize,
    /// Drift put back.
    pub drift_reverted: usize,
    /// Changes applied.
    pub changes_applied: usize,
    /// Changes failed.
    pub changes_failed: usize,
    /// Findings open at the end of the period.
    pub open_findings: usize,
}

/// A finding with its lifetime.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FindingSpan {
    /// Target.
    pub target: String,
    /// The finding.
    pub finding: Finding,
    /// Opened (Unix ms).
    pub opened_at: i64,
    /// Closed (Unix ms), if it was.
    pub closed_at: Option<i64>,
}

/// One line of the drift timeline.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DriftItem {
    /// When (Unix ms).
    pub at: i64,
    /// Target.
    pub target: String,
    /// Resource.
    pub resource: String,
    /// What changed out of band.
    pub detail: String,
    /// Who changed it, from the cloud's audit log.
    pub actor: Option<palisade_providers::Actor>,
    /// When it was put back (Unix ms).
    pub reverted_at: Option<i64>,
    /// Request ids of the revert.
    pub request_ids: Vec<String>,
    /// The cloud id of the resource, when the revert named it (findings on groups name
    /// them by id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A revision event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionItem {
    /// When (Unix ms).
    pub at: i64,
    /// Commit.
    pub commit: String,
    /// `enforced` or `rejected`.
    pub outcome: String,
    /// Author, reason.
    pub detail: String,
}

/// One point of the compliance-over-time series.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Point {
    /// Start of the bucket (Unix ms).
    pub at: i64,
    /// Controls without an open finding in the bucket.
    pub compliant: usize,
    /// Controls known.
    pub total: usize,
    /// Whether the history covers the bucket: a bucket that ends before the first event
    /// read is "no data", not compliant.
    pub has_data: bool,
}

/// The period in a few numbers, for the top of a report.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Controls without a finding in the period.
    pub controls_compliant: usize,
    /// Controls with one.
    pub controls_non_compliant: usize,
    /// Findings opened in the period.
    pub findings_opened: usize,
    /// Findings closed in the period.
    pub findings_closed: usize,
    /// Findings open at the end.
    pub findings_open: usize,
    /// Drift detected in the period.
    pub drift_detected: usize,
    /// Of which reverted.
    pub drift_reverted: usize,
    /// Median time from detection to revert (ms), when any was reverted.
    pub revert_median_ms: Option<i64>,
    /// 95th percentile of it (ms).
    pub revert_p95_ms: Option<i64>,
    /// Revisions enforced in the period.
    pub revisions_enforced: usize,
    /// Revisions rejected in the period.
    pub revisions_rejected: usize,
}

/// What `palisade report` prints.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ComplianceReport {
    /// Period start (Unix ms).
    pub since: i64,
    /// Period end (Unix ms).
    pub until: i64,
    /// Target filter.
    pub target: Option<String>,
    /// Control filter.
    pub control: Option<String>,
    /// Per control.
    pub controls: Vec<ControlStatus>,
    /// Per target.
    pub targets: Vec<TargetSummary>,
    /// Findings open at some time in the period.
    pub findings: Vec<FindingSpan>,
    /// Drift in the period and when it was reverted.
    pub drift: Vec<DriftItem>,
    /// Revisions enforced or rejected in the period.
    pub revisions: Vec<RevisionItem>,
    /// Compliance over time.
    pub series: Vec<Point>,
    /// The period in a few numbers.
    pub summary: Summary,
    /// Events read.
    pub events_read: usize,
}

/// Build the compliance report of `[since, until]` from the history (every event up to
/// `until` is read once, so that findings opened before the period count).
///
/// # Errors
/// SQLite failed.
pub fn compliance(
    store: &Store,
    since: i64,
    until: i64,
    target: Option<&str>,
    control: Option<&str>,
) -> Result<ComplianceReport, HistoryError> {
    let filter = Filter {
        until: Some(until),
        target: target.map(str::to_string),
        ..Filter::default()
    };
    let mut known_controls: BTreeSet<String> = BTreeSet::new();
    let mut open: HashMap<(String, String), FindingSpan> = HashMap::new();
    let mut spans: Vec<FindingSpan> = Vec::new();
    let mut targets: BTreeMap<String, TargetSummary> = BTreeMap::new();
    let mut drift: Vec<DriftItem> = Vec::new();
    let mut drift_open: HashMap<(String, String), usize> = HashMap::new();
    let mut revisions = Vec::new();
    let mut read = 0usize;
    let mut first: Option<i64> = None; // the oldest event read
    store.for_each(&filter, |e| {
        read += 1;
        first = Some(first.map_or(e.at, |f| f.min(e.at)));
        let ev = &e.event;
        let in_period = e.at >= since;
        let t = ev.target.clone().unwrap_or_default();
        let Some(data) = ev.data() else {
            return;
        };
        match data {
            EventData::RevisionEnforced(r) => {
                known_controls.extend(r.controls.iter().cloned());
                if in_period {
                    revisions.push(RevisionItem {
                        at: e.at,
                        commit: ev.revision.clone().unwrap_or_default(),
                        outcome: "enforced".into(),
                        detail: r.author.clone(),
                    });
                }
            }
            EventData::RevisionRejected(r) if in_period => {
                revisions.push(RevisionItem {
                    at: e.at,
                    commit: ev.revision.clone().unwrap_or_default(),
                    outcome: "rejected".into(),
                    detail: format!("{}: {}", r.reason, r.details.join("; ")),
                });
            }
            EventData::FindingOpened(f) => {
                known_controls.extend(ev.controls.iter().cloned());
                open.insert(
                    (t.clone(), finding_key(f)),
                    FindingSpan {
                        target: t.clone(),
                        finding: f.clone(),
                        opened_at: e.at,
                        closed_at: None,
                    },
                );
            }
            EventData::FindingClosed(f) => {
                if let Some(mut span) = open.remove(&(t.clone(), finding_key(f))) {
                    span.closed_at = Some(e.at);
                    if e.at >= since {
                        spans.push(span);
                    }
                }
            }
            _ if !in_period => {}
            EventData::Reconciled(r) => {
                let s = summary(&mut targets, &t);
                s.reconciles += 1;
                if r.result != ReconcileResult::Ok {
                    s.failed_reconciles += 1;
                }
            }
            EventData::DriftDetected(d) => {
                summary(&mut targets, &t).drift_detected += 1;
                let resource = ev.resource.clone().unwrap_or_default();
                drift_open.insert((t.clone(), resource.clone()), drift.len());
                drift.push(DriftItem {
                    at: e.at,
                    target: t.clone(),
                    resource,
                    detail: d.change.clone(),
                    actor: d.actor.as_deref().cloned(),
                    reverted_at: None,
                    request_ids: Vec::new(),
                    id: None,
                });
            }
            EventData::DriftAttributed(a) => {
                let resource = ev.resource.as_deref().unwrap_or_default();
                // Every drift of that resource found at that time (a removed rule and an
                // added one are one change by one author).
                for d in drift
                    .iter_mut()
                    .filter(|d| d.at == a.detected_at && d.target == t && d.resource == resource)
                {
                    d.actor.get_or_insert_with(|| (*a.actor).clone());
                }
            }
            EventData::ChangeApplied(c) => {
                let s = summary(&mut targets, &t);
                s.changes_applied += 1;
                if c.cause == Cause::Drift {
                    s.drift_reverted += 1;
                    if let Some(i) =
                        drift_open.remove(&(t.clone(), ev.resource.clone().unwrap_or_default()))
                    {
                        drift[i].reverted_at = Some(e.at);
                        drift[i].request_ids = c.request_ids.clone();
                        drift[i].id = c.resource.id.clone();
                    }
                }
            }
            EventData::ChangeFailed(_) => summary(&mut targets, &t).changes_failed += 1,
            _ => {}
        }
    })?;
    // Findings still open at the end of the period.
    let still_open: Vec<FindingSpan> = open.into_values().collect();
    for span in &still_open {
        summary(&mut targets, &span.target).open_findings += 1;
    }
    spans.extend(still_open);
    // A total order (open findings come out of a hash map): the same period gives the
    // same report, byte for byte.
    spans.sort_by_cached_key(|s| (s.opened_at, s.target.clone(), finding_key(&s.finding)));
    if let Some(c) = control {
        known_controls.retain(|k| k == c);
        known_controls.insert(c.to_string());
        spans.retain(|s| s.finding.controls.iter().any(|x| x == c));
    }
    let controls: Vec<ControlStatus> = known_controls
        .iter()
        .map(|c| {
            let mine: Vec<&FindingSpan> = spans
                .iter()
                .filter(|s| s.finding.controls.contains(c))
                .collect();
            let resources: BTreeSet<String> = mine
                .iter()
                .map(|s| format!("{}: {}", s.target, s.finding.resource))
                .collect();
            ControlStatus {
                control: c.clone(),
                status: if mine.is_empty() {
                    "compliant".into()
                } else {
                    "non-compliant".into()
                },
                resources: resources.into_iter().collect(),
                open_at_end: mine.iter().filter(|s| s.closed_at.is_none()).count(),
            }
        })
        .collect();
    let buckets = 24i64;
    let width = ((until - since) / buckets).max(1);
    let series = (0..buckets)
        .map(|i| {
            let (from, to) = (since + i * width, since + (i + 1) * width);
            let bad = known_controls
                .iter()
                .filter(|c| {
                    spans.iter().any(|s| {
                        s.finding.controls.contains(c)
                            && s.opened_at < to
                            && s.closed_at.is_none_or(|x| x >= from)
                    })
                })
                .count();
            Point {
                at: from,
                compliant: known_controls.len() - bad,
                total: known_controls.len(),
                // The state holds until the next event says otherwise: only what lies
                // before the history began is unknown.
                has_data: first.is_some_and(|f| to > f),
            }
        })
        .collect();
    let summary = summarise(&controls, &spans, &drift, &revisions, since, until);
    Ok(ComplianceReport {
        since,
        until,
        target: target.map(str::to_string),
        control: control.map(str::to_string),
        controls,
        targets: targets.into_values().collect(),
        findings: spans,
        drift,
        revisions,
        series,
        summary,
        events_read: read,
    })
}

fn summarise(
    controls: &[ControlStatus],
    spans: &[FindingSpan],
    drift: &[DriftItem],
    revisions: &[RevisionItem],
    since: i64,
    until: i64,
) -> Summary {
    let within = |t: i64| t >= since && t <= until;
    let mut reverts: Vec<i64> = drift
        .iter()
        .filter_map(|d| d.reverted_at.map(|r| r - d.at))
        .collect();
    reverts.sort_unstable();
    let pick = |q: f64| {
        (!reverts.is_empty()).then(|| {
            let i = ((reverts.len() as f64 - 1.0) * q).round() as usize;
            reverts[i.min(reverts.len() - 1)]
        })
    };
    Summary {
        controls_compliant: controls.iter().filter(|c| c.status == "compliant").count(),
        controls_non_compliant: controls.iter().filter(|c| c.status != "compliant").count(),
        findings_opened: spans.iter().filter(|s| within(s.opened_at)).count(),
        findings_closed: spans
            .iter()
            .filter(|s| s.closed_at.is_some_and(within))
            .count(),
        findings_open: spans.iter().filter(|s| s.closed_at.is_none()).count(),
        drift_detected: drift.len(),
        drift_reverted: drift.iter().filter(|d| d.reverted_at.is_some()).count(),
        revert_median_ms: pick(0.5),
        revert_p95_ms: pick(0.95),
        revisions_enforced: revisions.iter().filter(|r| r.outcome == "enforced").count(),
        revisions_rejected: revisions.iter().filter(|r| r.outcome == "rejected").count(),
    }
}

fn summary<'a>(targets: &'a mut BTreeMap<String, TargetSummary>, t: &str) -> &'a mut TargetSummary {
    targets
        .entry(t.to_string())
        .or_insert_with(|| TargetSummary {
            target: t.to_string(),
            ..Default::default()
        })
}
