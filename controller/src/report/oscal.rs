//! The compliance report as an OSCAL **assessment-results** document (JSON), for the GRC
//! tools auditors use.
//!
//! - The period is one `result` (`start`/`end`); every control a guardrail names is a
//!   `finding` whose target status is `satisfied` when no finding naming it was open at
//!   any time in the period, else `not-satisfied`.
//! - The evidence is in `observations`: each guardrail finding with its lifetime, each
//!   drift with who made it (when known) and the request ids of its revert, each
//!   revision enforced or rejected (the commit), and each target's activity. A control's
//!   finding relates to its findings, to the drift of the resources those findings are
//!   about, and to the revisions and activity that show it was checked.
//! - UUIDs are name-based (v5) on what they describe and the period, so the same period
//!   of the same history gives a byte-identical document.
//! - OSCAL tokens are stricter than Palisade's control ids (`NIST-800-53:SC-7` has a
//!   colon): a control id becomes a token by replacing what a token cannot hold with `_`,
//!   and the id as written is kept in a `control-id` property.
//! - OSCAL forbids empty arrays and blank property values: both are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::time;
use crate::addr::ResourceAddr;
use crate::history::ComplianceReport;

/// The OSCAL version the document is written for (and validated against in the tests).
pub const OSCAL_VERSION: &str = "1.2.1";

/// The namespace of Palisade's own properties.
pub const NS: &str = "https://palisade.dev/ns/oscal";

fn name_uuid(parts: &[&str]) -> String {
    let ns = Uuid::new_v5(&Uuid::NAMESPACE_URL, NS.as_bytes());
    // Each part length-prefixed, so that ("a", "bc") and ("ab", "c") differ whatever
    // the parts contain.
    let mut name = Vec::new();
    for p in parts {
        name.extend_from_slice(format!("{}:", p.len()).as_bytes());
        name.extend_from_slice(p.as_bytes());
    }
    Uuid::new_v5(&ns, &name).to_string()
}

/// An OSCAL token: starts with a letter or `_`, then letters, digits, `_`, `-`, `.`.
pub fn token(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        out.insert(0, '_');
    }
    out
}

/// One line of text with no control characters, trimmed; `None` when nothing is left
/// (OSCAL's string values may not be blank or start or end with white space).
fn line(s: &str) -> Option<String> {
    let t: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let t = t.trim();
    (!t.is_empty()).then(|| t.to_string())
}

fn prop(name: &str, value: &str) -> Option<Value> {
    line(value).map(|v| json!({ "name": name, "ns": NS, "value": v }))
}

/// Insert `key` only when `list` has something in it.
fn put(obj: &mut Map<String, Value>, key: &str, list: Vec<Value>) {
    if !list.is_empty() {
        obj.insert(key.to_string(), Value::Array(list));
    }
}

fn object(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn observation(
    id: &str,
    title: &str,
    description: &str,
    kind: &str,
    collected: i64,
    props: Vec<Option<Value>>,
    evidence: Vec<String>,
) -> Value {
    let mut o = object(json!({
        "uuid": id,
        "title": line(title).unwrap_or_else(|| "observation".into()),
        "description": line(description).unwrap_or_else(|| "(no description)".into()),
        "methods": ["TEST"],
        "types": [kind],
        "collected": time(collected),
    }));
    put(&mut o, "props", props.into_iter().flatten().collect());
    put(
        &mut o,
        "relevant-evidence",
        evidence
            .iter()
            .filter_map(|e| line(e))
            .map(|d| json!({ "description": d }))
            .collect(),
    );
    Value::Object(o)
}

/// The history key (`kind name`) of a display address, for matching drift to findings.
fn key_of(display: &str) -> String {
    ResourceAddr::from_str(display).map_or_else(|_| display.to_string(), |a| a.key())
}

/// Render `r` as an OSCAL assessment-results document.
pub fn oscal(r: &ComplianceReport) -> String {
    let since = time(r.since);
    let until = time(r.until);
    let filter_target = r.target.clone().unwrap_or_default();
    let filter_control = r.control.clone().unwrap_or_default();
    let period: [&str; 4] = [&since, &until, &filter_target, &filter_control];
    let scoped = |parts: &[&str]| -> String {
        let mut all: Vec<&str> = period.to_vec();
        all.extend_from_slice(parts);
        name_uuid(&all)
    };

    let mut observations = Vec::new();
    // Observations by what they support.
    let mut context: Vec<String> = Vec::new();
    let mut by_control: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut finding_keys: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();

    for rev in &r.revisions {
        let id = scoped(&["revision", &rev.commit, &rev.outcome, &rev.at.to_string()]);
        observations.push(observation(
            &id,
            &format!("Revision {} {}", rev.commit, rev.outcome),
            &format!(
                "Policy revision {} was {} at {}. {}",
                rev.commit,
                rev.outcome,
                time(rev.at),
                rev.detail
            ),
            "historic",
            rev.at,
            vec![prop("commit", &rev.commit), prop("outcome", &rev.outcome)],
            vec![format!("Git commit {}", rev.commit)],
        ));
        context.push(id);
    }
    for t in &r.targets {
        let id = scoped(&["target", &t.target]);
        observations.push(observation(
            &id,
            &format!("Target {}: {} reconciles", t.target, t.reconciles),
            &format!(
                "Target {} was reconciled {} times in the period ({} failed): {} drifts detected, {} reverted, {} changes applied, {} failed; {} findings open at the end.",
                t.target,
                t.reconciles,
                t.failed_reconciles,
                t.drift_detected,
                t.drift_reverted,
                t.changes_applied,
                t.changes_failed,
                t.open_findings
            ),
            "historic",
            r.until,
            vec![
                prop("target", &t.target),
                prop("reconciles", &t.reconciles.to_string()),
                prop("drift-detected", &t.drift_detected.to_string()),
                prop("drift-reverted", &t.drift_reverted.to_string()),
                prop("changes-applied", &t.changes_applied.to_string()),
                prop("changes-failed", &t.changes_failed.to_string()),
                prop("open-findings", &t.open_findings.to_string()),
            ],
            Vec::new(),
        ));
        context.push(id);
    }
    for s in &r.findings {
        let f = &s.finding;
        let resource = f.resource.to_string();
        let guardrail = f.guardrail.clone().unwrap_or_default();
        let id = scoped(&[
            "finding",
            &s.target,
            &crate::history::finding_key(f),
            &s.opened_at.to_string(),
        ]);
        let lifetime = match s.closed_at {
            Some(c) => format!("opened {}, closed {}", time(s.opened_at), time(c)),
            None => format!(
                "opened {}, still open at the end of the period",
                time(s.opened_at)
            ),
        };
        let mut props = vec![
            prop("target", &s.target),
            prop("resource", &resource),
            prop("guardrail", &guardrail),
            prop("opened", &time(s.opened_at)),
            prop("closed", &s.closed_at.map(time).unwrap_or_default()),
            prop(
                "source",
                &f.location
                    .as_ref()
                    .map(|l| format!("{}:{}", l.file.display(), l.line))
                    .unwrap_or_default(),
            ),
        ];
        props.extend(f.controls.iter().map(|c| prop("control-id", c)));
        observations.push(observation(
            &id,
            &format!(
                "{}: {}",
                if guardrail.is_empty() {
                    "finding"
                } else {
                    &guardrail
                },
                resource
            ),
            &format!("{} ({lifetime})", f.message),
            "finding",
            s.opened_at,
            props,
            vec![format!(
                "Palisade finding on {resource} in target {}, {lifetime}",
                s.target
            )],
        ));
        for c in &f.controls {
            by_control.entry(c).or_default().push(id.clone());
            finding_keys.entry(c).or_default().insert(format!(
                "{}\u{1f}{}",
                s.target,
                f.resource.key()
            ));
        }
    }
    let mut drift_by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for d in &r.drift {
        let id = scoped(&[
            "drift",
            &d.target,
            &d.resource,
            &d.detail,
            &d.at.to_string(),
        ]);
        let actor = d
            .actor
            .as_ref()
            .map_or_else(|| "unknown".to_string(), ToString::to_string);
        let outcome = match d.reverted_at {
            Some(t) => format!("reverted {}", time(t)),
            None => "not reverted in the period".into(),
        };
        let mut evidence: Vec<String> = d
            .request_ids
            .iter()
            .map(|id| format!("request id {id} of the revert"))
            .collect();
        evidence.push(format!("changed by {actor}"));
        observations.push(observation(
            &id,
            &format!("Drift on {}", d.resource),
            &format!(
                "{} changed out of band at {} ({}), {outcome}.",
                d.resource,
                time(d.at),
                d.detail
            ),
            "discovery",
            d.at,
            vec![
                prop("target", &d.target),
                prop("resource", &d.resource),
                prop("actor", &actor),
                prop("reverted", &d.reverted_at.map(time).unwrap_or_default()),
            ],
            evidence,
        ));
        // Findings on groups name them by id, drift by owner: both keys lead here.
        let mut keys = vec![key_of(&d.resource)];
        if let (Ok(a), Some(cloud_id)) = (ResourceAddr::from_str(&d.resource), &d.id) {
            keys.push(ResourceAddr::new(a.kind, cloud_id.as_str()).key());
        }
        for k in keys {
            drift_by_key
                .entry(format!("{}\u{1f}{k}", d.target))
                .or_default()
                .push(id.clone());
        }
    }

    let mut findings = Vec::new();
    let mut selected = Vec::new();
    for c in &r.controls {
        let satisfied = c.status == "compliant";
        let mut related: Vec<String> = by_control
            .get(c.control.as_str())
            .cloned()
            .unwrap_or_default();
        for k in finding_keys.get(c.control.as_str()).into_iter().flatten() {
            related.extend(drift_by_key.get(k).into_iter().flatten().cloned());
        }
        related.extend(context.iter().cloned());
        let mut seen = BTreeSet::new();
        related.retain(|u| seen.insert(u.clone()));
        let tok = token(&c.control);
        let mut f = object(json!({
            "uuid": scoped(&["control", &c.control]),
            "title": format!("{}: {}", line(&c.control).unwrap_or_else(|| tok.clone()), if satisfied { "satisfied" } else { "not satisfied" }),
            "description": if satisfied {
                format!("No finding naming {} was open at any time between {since} and {until}.", c.control)
            } else {
                format!(
                    "{} resource(s) had a finding naming {} open during the period; {} still open at {until}.",
                    c.resources.len(), c.control, c.open_at_end
                )
            },
            "target": {
                "type": "objective-id",
                "target-id": format!("{tok}_obj"),
                "status": {
                    "state": if satisfied { "satisfied" } else { "not-satisfied" },
                    "reason": if satisfied { "pass" } else { "fail" },
                },
            },
        }));
        put(
            &mut f,
            "props",
            [prop("control-id", &c.control)]
                .into_iter()
                .flatten()
                .collect(),
        );
        put(
            &mut f,
            "related-observations",
            related
                .into_iter()
                .map(|u| json!({ "observation-uuid": u }))
                .collect(),
        );
        findings.push(Value::Object(f));
        selected.push(json!({ "control-id": tok }));
    }

    let plan_resource = name_uuid(&["assessment-plan", "palisade guardrails"]);
    let mut result = object(json!({
        "uuid": scoped(&["result"]),
        "title": format!("Palisade continuous assessment {since} to {until}"),
        "description": "Every reconcile of the period evaluated the guardrails of the enforced policy revision against everything observed in each target, managed or not. A control is satisfied for the period when no finding naming it was open at any time in it. Reconstructed from Palisade's hash-chained history (palisade report --verify checks it).",
        "start": since,
        "end": until,
        "reviewed-controls": {
            "control-selections": [
                if selected.is_empty() { json!({ "include-all": {} }) } else { json!({ "include-controls": selected }) }
            ],
        },
    }));
    put(
        &mut result,
        "props",
        [
            prop("target", &filter_target),
            prop("control", &filter_control),
            prop("events-read", &r.events_read.to_string()),
        ]
        .into_iter()
        .flatten()
        .collect(),
    );
    put(&mut result, "observations", observations);
    put(&mut result, "findings", findings);

    let doc = json!({
        "assessment-results": {
            "uuid": scoped(&["assessment-results"]),
            "metadata": {
                "title": "Palisade network perimeter assessment results",
                "last-modified": until,
                "version": env!("CARGO_PKG_VERSION"),
                "oscal-version": OSCAL_VERSION,
                "props": [{ "name": "generator", "ns": NS, "value": concat!("palisade ", env!("CARGO_PKG_VERSION")) }],
            },
            "import-ap": {
                "href": format!("#{plan_resource}"),
                "remarks": "Palisade's assessment plan is the set of Guardrail documents in the enforced policy revisions (see the revision observations).",
            },
            "results": [Value::Object(result)],
            "back-matter": {
                "resources": [{
                    "uuid": plan_resource,
                    "title": "Palisade guardrails",
                    "description": "The Guardrail documents of the policy repository: each names the controls it implements (spec.controls) and is evaluated at validate time and on every reconcile.",
                }],
            },
        }
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_ids_become_tokens() {
        for (id, want) in [
            ("CIS-AWS-5.2", "CIS-AWS-5.2"),
            ("NIST-800-53:SC-7", "NIST-800-53_SC-7"),
            ("8.1", "_8.1"),
            ("-x", "_-x"),
            ("sc-7 (3)", "sc-7__3_"),
        ] {
            assert_eq!(token(id), want, "{id}");
        }
    }

    #[test]
    fn blank_and_multi_line_values_are_made_valid_or_left_out() {
        assert_eq!(prop("x", "  \n "), None);
        assert_eq!(line(" a\nb\t"), Some("a b".into()));
    }

    #[test]
    fn uuids_are_name_based_and_separate_their_parts() {
        assert_eq!(name_uuid(&["a", "bc"]), name_uuid(&["a", "bc"]));
        assert_ne!(name_uuid(&["a", "bc"]), name_uuid(&["ab", "c"]));
        assert_eq!(&name_uuid(&["x"])[14..15], "5");
    }
}
