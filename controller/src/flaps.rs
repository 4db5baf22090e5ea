//! Flap detection: a drift revert of the same exact field — the rule tuple, the
//! placement, the association — that keeps coming back is reported, and, when reverting
//! it again would only *restore* access (re-adding a rule someone keeps revoking), no
//! longer reverted for the window. A revert that *removes* access nobody declared
//! (revoking an out-of-band rule, putting a function back into its VPC, re-attaching an
//! NSG) is never suppressed: it is reported as flapping with its count, and reverted.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use palisade_providers::{Change, Rule};
use tokio::time::Instant;

use crate::check::{Finding, FindingKind};
use crate::plan::{Cause, PlannedChange};

/// Recent reverts per exact field.
#[derive(Debug, Default)]
pub struct Flaps {
    reverts: HashMap<String, VecDeque<Instant>>,
}

impl Flaps {
    fn recent(&mut self, key: &str, window: Duration) -> usize {
        let q = self.reverts.entry(key.to_string()).or_default();
        while q.front().is_some_and(|t| t.elapsed() > window) {
            q.pop_front();
        }
        q.len()
    }

    /// A drift revert of `c` was applied.
    pub fn record(&mut self, c: &PlannedChange) {
        for key in fields(c) {
            self.reverts
                .entry(key)
                .or_default()
                .push_back(Instant::now());
        }
    }

    /// Split out of `changes` the drift reverts that flap: those that may be suppressed
    /// are removed; every flapping one gets a finding with its count.
    pub fn filter(
        &mut self,
        target: &str,
        changes: &mut Vec<PlannedChange>,
        threshold: usize,
        window: Duration,
    ) -> Vec<Finding> {
        let mut findings = Vec::new();
        changes.retain(|c| {
            if c.cause != Cause::Drift {
                return true;
            }
            let count = fields(c)
                .iter()
                .map(|k| self.recent(k, window))
                .max()
                .unwrap_or(0);
            if count < threshold {
                return true;
            }
            let keep = removes_access(&c.change);
            let tail = if keep {
                "still reverted each time, because the revert removes access no policy declares"
            } else {
                "no longer reverted until it stops changing"
            };
            findings.push(Finding {
                kind: FindingKind::Flapping,
                target: target.to_string(),
                resource: c.resource.clone(),
                message: format!(
                    "{}: reverted {count} times within {window:?} and changed back each time; {tail}",
                    describe(c)
                ),
                guardrail: None,
                controls: Vec::new(),
                location: None,
            });
            keep
        });
        findings
    }
}

/// A revert that takes away access (never suppressed).
fn removes_access(c: &Change) -> bool {
    match c {
        Change::RemoveRules { .. } => true,
        Change::SetPlacement { before, after, .. } => before.is_none() && after.is_some(),
        Change::SetSubnetGroup { after, .. } => after.is_some(),
        _ => false,
    }
}

fn rule_key(r: &Rule) -> String {
    let mut r = r.clone();
    // Rule ids change each time a rule is re-added: the tuple is the field.
    r.id = None;
    r.description = None;
    r.to_string()
}

/// The exact fields a change touches.
fn fields(c: &PlannedChange) -> Vec<String> {
    let base = format!("{}#{}", c.resource, c.change.action());
    match &c.change {
        Change::AddRules { rules, .. } | Change::RemoveRules { rules, .. } => rules
            .iter()
            .map(|r| format!("{base}#{}", rule_key(r)))
            .collect(),
        Change::SetPlacement { after, .. } => vec![format!("{base}#{after:?}")],
        Change::SetSubnetGroup { after, .. } => vec![format!("{base}#{after:?}")],
        _ => vec![base],
    }
}

fn describe(c: &PlannedChange) -> String {
    match &c.change {
        Change::AddRules { rules, .. } | Change::RemoveRules { rules, .. } => format!(
            "{} {}",
            c.change.action(),
            rules.iter().map(rule_key).collect::<Vec<_>>().join(", ")
        ),
        other => other.action().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Phase;
    use palisade_providers::{Direction, GroupRef, Peer, PortRange, Ports, Protocol};

    fn rule(port: u16, cidr: &str) -> Rule {
        Rule::allow(
            Direction::Ingress,
            Ports {
                protocol: Protocol::Tcp,
                range: Some(PortRange {
                    from: port,
                    to: port,
                }),
            },
            Peer::cidr(cidr.parse().unwrap()),
        )
    }

    fn change(add: bool, r: Rule) -> PlannedChange {
        let group = GroupRef::Managed("api".into());
        PlannedChange {
            phase: if add {
                Phase::AddRules
            } else {
                Phase::RemoveRules
            },
            cause: Cause::Drift,
            resource: "group api (sg-1)".parse().unwrap(),
            change: if add {
                Change::AddRules {
                    group,
                    rules: vec![r],
                }
            } else {
                Change::RemoveRules {
                    group,
                    rules: vec![r],
                }
            },
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flapping_field_is_suppressed_only_for_itself_and_only_when_it_restores_access() {
        let mut flaps = Flaps::default();
        let window = Duration::from_secs(3600);
        // Someone keeps revoking a declared rule: re-adding it flaps.
        let harmless = change(true, rule(443, "10.0.0.0/16"));
        for _ in 0..5 {
            flaps.record(&harmless);
        }
        let world = change(false, rule(22, "0.0.0.0/0"));
        let other = change(true, rule(8443, "10.0.0.0/16"));
        let mut changes = vec![harmless.clone(), world.clone(), other.clone()];
        let findings = flaps.filter("t", &mut changes, 5, window);
        assert_eq!(
            changes,
            vec![world.clone(), other],
            "only the flapping field is held"
        );
        assert_eq!(findings.len(), 1);
        assert!(
            findings[0].message.contains("reverted 5 times"),
            "{}",
            findings[0].message
        );

        // A world-open rule that keeps coming back is revoked every time, and reported.
        for _ in 0..7 {
            flaps.record(&world);
        }
        let mut changes = vec![world.clone()];
        let findings = flaps.filter("t", &mut changes, 5, window);
        assert_eq!(changes, vec![world]);
        assert!(findings[0].message.contains("reverted 7 times"));
        assert!(findings[0].message.contains("still reverted"));

        // After the window, the held field is reverted again.
        tokio::time::advance(window + Duration::from_secs(1)).await;
        let mut changes = vec![harmless.clone()];
        assert!(flaps.filter("t", &mut changes, 5, window).is_empty());
        assert_eq!(changes, vec![harmless]);
    }

    #[test]
    fn intended_changes_are_never_held() {
        let mut flaps = Flaps::default();
        let mut c = change(true, rule(443, "10.0.0.0/16"));
        for _ in 0..9 {
            flaps.record(&c);
        }
        c.cause = Cause::Intended;
        let mut changes = vec![c];
        assert!(
            flaps
                .filter("t", &mut changes, 5, Duration::from_secs(60))
                .is_empty()
        );
        assert_eq!(changes.len(), 1);
    }
}
