//! Flap detection: a drift revert of the same exact field — the rule tuple, the
//! placement, the association — that keeps coming back is reported, and, when reverting
//! it again would only *restore* access (re-adding a rule someone keeps revoking), no
//! longer reverted for the window. A revert that *removes* access nobody declared
//! (revoking an out-of-band rule, putting a function back into its VPC, re-attaching an
//! NSG) is never suppressed: it is reported as flapping with its count, and reverted.
//!
//! Who made each drift, once known (from a change event or the audit log), is kept per
//! field too: when one principal accounts for most of the flapping, the finding names it
//! — a CloudFormation stack's role, a Terraform pipeline, another controller fighting
//! Palisade over the same field ("fighting `arn:aws:iam::…:role/terraform-ci` (7 times
//! in 1h)").
//!
//! Times are wall-clock milliseconds given by the caller (the loop's injected clock), so
//! that the history can be kept with the loop state and survive a restart.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use palisade_providers::{Access, Actor, ActorKind, Change, Rule};
use serde::{Deserialize, Serialize};

use crate::check::{Finding, FindingKind};
use crate::plan::{Cause, PlannedChange};

/// Recent reverts per exact field (Unix ms).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flaps {
    reverts: BTreeMap<String, VecDeque<i64>>,
    /// Who made the drift reverted, per field: (when, principal, whether a person).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    authors: BTreeMap<String, VecDeque<(i64, String, bool)>>,
}

/// The principal an actor stands for, stable across its sessions: an assumed role's
/// role (each run of a pipeline is a new session), with the service that acted
/// through it.
pub fn principal(a: &Actor) -> String {
    let who = match a.kind {
        ActorKind::AssumedRole | ActorKind::Federated => a.issuer.as_deref().unwrap_or(&a.id),
        _ => &a.id,
    };
    match &a.invoked_by {
        Some(via) if via != who => format!("{who} via {via}"),
        _ => who.to_string(),
    }
}

/// Whether an actor is a person: a user, or a federated / SSO session (IAM Identity
/// Center's roles are `AWSReservedSSO_…`).
fn is_person(a: &Actor) -> bool {
    match a.kind {
        ActorKind::User | ActorKind::Federated => a.invoked_by.is_none(),
        ActorKind::AssumedRole => {
            a.invoked_by.is_none()
                && a.issuer
                    .as_deref()
                    .and_then(|i| i.rsplit('/').next())
                    .is_some_and(|r| r.starts_with("AWSReservedSSO_"))
        }
        _ => false,
    }
}

impl Flaps {
    fn recent(&mut self, key: &str, window: Duration, now: i64) -> usize {
        let Some(q) = self.reverts.get_mut(key) else {
            return 0;
        };
        let since = now - window.as_millis() as i64;
        while q.front().is_some_and(|t| *t < since) {
            q.pop_front();
        }
        q.len()
    }

    /// A drift revert of `c` was applied at `now` (Unix ms).
    pub fn record(&mut self, c: &PlannedChange, now: i64) {
        for key in fields(c) {
            self.reverts.entry(key).or_default().push_back(now);
        }
    }

    /// The drift of `fields` (see [`fields_of`]) was made by `actor` (known at `at`).
    pub fn attribute(&mut self, fields: &[String], actor: &Actor, at: i64) {
        let who = principal(actor);
        let person = is_person(actor);
        for key in fields {
            let q = self.authors.entry(key.clone()).or_default();
            q.push_back((at, who.clone(), person));
            // Bounded: only the recent ones matter.
            while q.len() > 64 {
                q.pop_front();
            }
        }
    }

    /// The principal behind most drift of one of `keys` within the window, with its
    /// count (per field, as the reverts are counted: a change of three rules at once is
    /// one time, not three).
    fn top_author(
        &self,
        keys: &[String],
        window: Duration,
        now: i64,
    ) -> Option<(String, bool, usize)> {
        let since = now - window.as_millis() as i64;
        let mut best: Option<(String, bool, usize)> = None;
        for k in keys {
            let mut counts: BTreeMap<(&str, bool), usize> = BTreeMap::new();
            for (t, who, person) in self.authors.get(k).into_iter().flatten() {
                if *t >= since {
                    *counts.entry((who.as_str(), *person)).or_default() += 1;
                }
            }
            for ((who, person), n) in counts {
                if best.as_ref().is_none_or(|b| n > b.2) {
                    best = Some((who.to_string(), person, n));
                }
            }
        }
        best.filter(|b| b.2 >= 2)
    }

    /// Forget reverts older than `window` before `now` (what is kept between runs).
    pub fn prune(&mut self, window: Duration, now: i64) {
        let since = now - window.as_millis() as i64;
        self.reverts.retain(|_, q| {
            while q.front().is_some_and(|t| *t < since) {
                q.pop_front();
            }
            !q.is_empty()
        });
        self.authors.retain(|_, q| {
            while q.front().is_some_and(|(t, _, _)| *t < since) {
                q.pop_front();
            }
            !q.is_empty()
        });
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.reverts.is_empty()
    }

    /// Split out of `changes` the drift reverts that flap at `now` (Unix ms): those that
    /// may be suppressed are removed; every flapping one gets a finding with its count.
    pub fn filter(
        &mut self,
        target: &str,
        changes: &mut Vec<PlannedChange>,
        threshold: usize,
        window: Duration,
        now: i64,
    ) -> Vec<Finding> {
        let mut findings = Vec::new();
        changes.retain(|c| {
            if c.cause != Cause::Drift {
                return true;
            }
            let keys = fields(c);
            let count = keys
                .iter()
                .map(|k| self.recent(k, window, now))
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
            let who = match self.top_author(&keys, window, now) {
                Some((who, false, n)) => format!(", fighting `{who}` ({n} times in {})", span(window)),
                Some((who, true, n)) => format!(", changed back by `{who}` ({n} times in {})", span(window)),
                None => String::new(),
            };
            findings.push(Finding {
                kind: FindingKind::Flapping,
                target: target.to_string(),
                resource: c.resource.clone(),
                message: format!(
                    "{}: reverted {count} times within {window:?} and changed back each time{who}; {tail}",
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
        // Putting back a deny (an NSG's default deny-all, a declared deny) takes access away.
        Change::AddRules { rules, .. } => rules.iter().any(|r| r.access == Access::Deny),
        // Into the network, or route-all back on (egress rules hold for internet-bound
        // traffic again).
        Change::SetPlacement { before, after, .. } => match (before, after) {
            (None, Some(_)) => true,
            (Some(b), Some(a)) => a.route_all && !b.route_all,
            _ => false,
        },
        Change::SetSubnetGroup { after, .. } => after.is_some(),
        // A front door closed again: a default of allow back to deny, or an allow rule
        // nobody declared taken off.
        Change::SetInbound { before, after, .. } => before.as_ref().is_none_or(|b| {
            (b.default_action == Access::Allow && after.default_action == Access::Deny)
                || b.rules
                    .iter()
                    .any(|r| r.access == Access::Allow && !after.rules.contains(r))
        }),
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

/// `1h`, `30m`, `90s`: a window for people.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 && s.is_multiple_of(3600) {
        format!("{} h", s / 3600)
    } else if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else {
        format!("{s} s")
    }
}

/// The exact fields a change touches.
fn fields(c: &PlannedChange) -> Vec<String> {
    fields_of(&c.resource, &c.change)
}

/// The exact fields `change` of `resource` touches (the keys of the flap history).
pub fn fields_of(resource: &crate::addr::ResourceAddr, change: &Change) -> Vec<String> {
    let base = format!("{resource}#{}", change.action());
    match change {
        Change::AddRules { rules, .. } | Change::RemoveRules { rules, .. } => rules
            .iter()
            .map(|r| format!("{base}#{}", rule_key(r)))
            .collect(),
        Change::SetPlacement { after, .. } => vec![format!("{base}#{after:?}")],
        Change::SetSubnetGroup { after, .. } => vec![format!("{base}#{after:?}")],
        Change::SetInbound { after, .. } => vec![format!("{base}#{after:?}")],
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
                icmp: None,
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

    const T: i64 = 1_780_000_000_000;

    #[test]
    fn a_flapping_field_is_suppressed_only_for_itself_and_only_when_it_restores_access() {
        let mut flaps = Flaps::default();
        let window = Duration::from_secs(3600);
        // Someone keeps revoking a declared rule: re-adding it flaps.
        let harmless = change(true, rule(443, "10.0.0.0/16"));
        for i in 0..5 {
            flaps.record(&harmless, T + i);
        }
        let world = change(false, rule(22, "0.0.0.0/0"));
        let other = change(true, rule(8443, "10.0.0.0/16"));
        let mut changes = vec![harmless.clone(), world.clone(), other.clone()];
        let findings = flaps.filter("t", &mut changes, 5, window, T + 10);
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
        for i in 0..7 {
            flaps.record(&world, T + i);
        }
        let mut changes = vec![world.clone()];
        let findings = flaps.filter("t", &mut changes, 5, window, T + 10);
        assert_eq!(changes, vec![world]);
        assert!(findings[0].message.contains("reverted 7 times"));
        assert!(findings[0].message.contains("still reverted"));

        // The history survives a round trip through the store's JSON.
        let mut flaps: Flaps =
            serde_json::from_str(&serde_json::to_string(&flaps).unwrap()).unwrap();
        let mut changes = vec![harmless.clone()];
        assert!(
            flaps.filter("t", &mut changes, 5, window, T + 20).len() == 1 && changes.is_empty()
        );

        // After the window, the held field is reverted again, and pruning forgets it.
        let later = T + window.as_millis() as i64 + 1_000;
        let mut changes = vec![harmless.clone()];
        assert!(flaps.filter("t", &mut changes, 5, window, later).is_empty());
        assert_eq!(changes, vec![harmless]);
        flaps.prune(window, later);
        assert!(flaps.is_empty());
    }

    #[test]
    fn intended_changes_are_never_held() {
        let mut flaps = Flaps::default();
        let mut c = change(true, rule(443, "10.0.0.0/16"));
        for i in 0..9 {
            flaps.record(&c, T + i);
        }
        c.cause = Cause::Intended;
        let mut changes = vec![c];
        assert!(
            flaps
                .filter("t", &mut changes, 5, Duration::from_secs(60), T + 10)
                .is_empty()
        );
        assert_eq!(changes.len(), 1);
    }

    #[test]
    fn putting_back_a_deny_or_route_all_is_never_held() {
        use palisade_providers::Placement;
        let mut deny = rule(0, "0.0.0.0/0");
        deny.access = Access::Deny;
        assert!(removes_access(&Change::AddRules {
            group: GroupRef::Managed("api".into()),
            rules: vec![deny],
        }));
        let p = |route_all| Placement {
            network: "vnet".into(),
            subnets: vec!["s".into()],
            groups: vec![],
            route_all,
        };
        let set = |before, after| Change::SetPlacement {
            function: "f".into(),
            name: "f".into(),
            before: Some(p(before)),
            after: Some(p(after)),
        };
        assert!(removes_access(&set(false, true)));
        assert!(!removes_access(&set(true, false)));
    }

    #[test]
    fn the_principal_that_keeps_changing_a_field_back_is_named() {
        use palisade_providers::Actor;
        let window = Duration::from_secs(3600);
        let revoke = change(true, rule(443, "10.0.0.0/16"));
        let fields = fields_of(&revoke.resource, &revoke.change);
        let run = |n: i64| {
            let mut a = Actor::named(
                ActorKind::AssumedRole,
                format!("arn:aws:sts::123456789012:assumed-role/terraform-ci/run-{n}"),
            );
            a.issuer = Some("arn:aws:iam::123456789012:role/terraform-ci".into());
            a
        };
        let mut flaps = Flaps::default();
        for i in 0..7 {
            flaps.record(&revoke, T + i);
            // Each pipeline run is a new session of the same role.
            flaps.attribute(&fields, &run(i), T + i);
        }
        // One person once: not the one named.
        flaps.attribute(
            &fields,
            &Actor::named(ActorKind::User, "arn:aws:iam::123456789012:user/alice"),
            T + 8,
        );
        let mut changes = vec![revoke.clone()];
        let findings = flaps.filter("t", &mut changes, 5, window, T + 10);
        assert!(
            findings[0].message.contains(
                "fighting `arn:aws:iam::123456789012:role/terraform-ci` (7 times in 1 h)"
            ),
            "{}",
            findings[0].message
        );
        // Kept with the loop state, and forgotten with the window.
        let mut flaps: Flaps =
            serde_json::from_str(&serde_json::to_string(&flaps).unwrap()).unwrap();
        flaps.prune(window, T + window.as_millis() as i64 + 100);
        assert!(flaps.is_empty() && flaps.authors.is_empty());
        // A service acting through a role is named with it.
        let mut cfn = run(1);
        cfn.issuer = Some("arn:aws:iam::123456789012:role/cfn-exec".into());
        cfn.invoked_by = Some("cloudformation.amazonaws.com".into());
        assert_eq!(
            principal(&cfn),
            "arn:aws:iam::123456789012:role/cfn-exec via cloudformation.amazonaws.com"
        );
        // Earlier loop state (no authors) still reads.
        let old: Flaps = serde_json::from_str(r#"{"reverts":{}}"#).unwrap();
        assert!(old.is_empty());
    }
}
