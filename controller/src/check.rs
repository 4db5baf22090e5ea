//! Guardrails, evaluated on a compiled desired state (so a violating policy fails
//! `validate`) or on an observed inventory (everything in the target, managed or not).

use std::collections::{BTreeMap, BTreeSet};

use palisade_providers::{
    Access, Direction, Inbound, InboundPeer, Inventory, Peer, Ports, Protocol, Rule,
};
use serde::{Deserialize, Serialize};

use crate::addr::ResourceAddr;
use crate::compile::DesiredState;
use crate::policy::{
    Diagnostic, DiagnosticKind, ForbidSpec, GuardrailDoc, Located, PeerSpec, PolicySet,
    SourceLocation,
};

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// A guardrail is violated.
    GuardrailViolation,
    /// An `audit`-mode policy differs from what is observed (reported, not changed).
    AuditDrift,
    /// A managed resource no policy wants any more, kept because pruning is off.
    Orphaned,
    /// A managed group is attached to a function no policy selects.
    ForeignAttachment,
    /// The same drift came back too often; the controller stopped reverting it.
    Flapping,
    /// A resource carries Palisade's ownership tags but is not in the ownership record:
    /// someone claimed it (Palisade never writes it).
    ClaimedOwnership,
    /// The name a policy's managed group needs is taken by a resource Palisade does not
    /// own; that policy's group is not created (and nothing that needs it is planned).
    NameTaken,
    /// What is observed conflicts with the policies (a function tagged into two
    /// policies, a network that matches twice or not at all): the function or policy is
    /// left as it is, the rest of the target is enforced.
    InventoryConflict,
    /// A rule references a group across a VPC peering connection that is no longer
    /// active (AWS's stale security group reference): left as it is, reported.
    StaleReference,
    /// An Azure private endpoint whose connection is not approved (pending the target
    /// owner's approval, rejected, disconnected): it exists, but no traffic flows.
    EndpointNotApproved,
    /// One resource could not be read this pass (an Azure app's access restrictions):
    /// it is left as it is, and read again on the next.
    Unread,
    /// The group a policy names as its `managedGroup` is not taken over (missing,
    /// shared, another owner's): it is left as it is, and nothing that needs the
    /// policy's group is planned.
    NotAdopted,
}

/// One finding: deterministic text, no timestamps, so reports never flap.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// What kind of finding.
    pub kind: FindingKind,
    /// Target name.
    pub target: String,
    /// The resource (group id or owner, function name, endpoint).
    pub resource: ResourceAddr,
    /// What is wrong.
    pub message: String,
    /// The guardrail, for violations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrail: Option<String>,
    /// Its control ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controls: Vec<String>,
    /// Where in the policy source, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<SourceLocation>,
}

impl Finding {
    /// The finding as a `validate` error.
    pub fn to_diagnostic(&self) -> Diagnostic {
        let mut d = Diagnostic::error(
            DiagnosticKind::GuardrailViolation,
            self.location.clone(),
            format!("[{}] {}: {}", self.target, self.resource, self.message),
        );
        d.controls = self.controls.clone();
        d
    }
}

fn in_scope(g: &GuardrailDoc, target: &str) -> bool {
    g.spec.scope.targets.is_empty() || g.spec.scope.targets.iter().any(|t| t.value == target)
}

/// Whether a rule's peer lets through traffic from/to everything `forbidden` names.
fn peer_covers(rule: &Peer, forbidden: &PeerSpec) -> bool {
    match (forbidden, rule) {
        (_, Peer::Any) => true,
        (PeerSpec::Cidr(f), Peer::Cidr(r)) => {
            let f = f.0.trunc();
            r.prefix_len() <= f.prefix_len() && r.contains(&f.network())
        }
        // Azure's `Internet` tag is the public address space: the same exposure as a
        // world-open CIDR.
        (PeerSpec::Cidr(f), Peer::ServiceTag(t)) => {
            f.0.prefix_len() == 0 && t.eq_ignore_ascii_case("Internet")
        }
        (PeerSpec::ServiceTag(f), Peer::ServiceTag(t)) => f.eq_ignore_ascii_case(t),
        (PeerSpec::SecurityGroup(f), Peer::Group(palisade_providers::GroupRef::Id(id))) => {
            f.eq_ignore_ascii_case(id)
        }
        (PeerSpec::PrefixList(f), Peer::PrefixList(id)) => f == id,
        _ => false,
    }
}

/// Whether a rule's peer lets through everything `forbid` names (every peer, when the
/// clause names none).
fn covers_forbidden(rule: &Peer, forbid: &ForbidSpec) -> bool {
    forbid.peer.as_ref().is_none_or(|p| peer_covers(rule, p))
}

/// Whether some of `ports` is forbidden by `forbid` and not all of it excepted.
fn ports_in_scope(forbid: &ForbidSpec, ports: &Ports) -> bool {
    (forbid.ports.is_empty() || forbid.ports.iter().any(|p| p.0.overlaps(ports)))
        && !forbid.except_ports.iter().any(|p| p.0.contains(ports))
}

/// Whether one packet class (`point`: one port, or one protocol's class) is forbidden.
fn point_forbidden(forbid: &ForbidSpec, point: &Ports) -> bool {
    (forbid.ports.is_empty() || forbid.ports.iter().any(|p| p.0.contains(point)))
        && !forbid.except_ports.iter().any(|p| p.0.contains(point))
}

/// Whether `rule` allows traffic that `forbid` forbids, on its own.
pub fn violates(rule: &Rule, forbid: &ForbidSpec) -> bool {
    rule.access == Access::Allow
        && rule.direction == forbid.direction.into()
        && covers_forbidden(&rule.peer, forbid)
        && ports_in_scope(forbid, &rule.ports)
}

/// Rules of one group that *together* admit every address of a forbidden CIDR on one
/// forbidden packet class, when none does alone (`0.0.0.0/1` + `128.0.0.0/1` is the
/// world): the rules admitting that class, merged, cover it. Empty when there is no such
/// combination. The packet classes tried are the boundaries of every port range
/// involved (where the set of admitting rules can change), and for other protocols each
/// rule's own class.
pub fn union_breach<'r>(forbid: &ForbidSpec, group: &[&'r Rule]) -> Vec<&'r Rule> {
    let Some(PeerSpec::Cidr(c)) = &forbid.peer else {
        return Vec::new();
    };
    let f = c.0.trunc();
    let same_family = |n: &ipnet::IpNet| {
        matches!(
            (n, &f),
            (ipnet::IpNet::V4(_), ipnet::IpNet::V4(_)) | (ipnet::IpNet::V6(_), ipnet::IpNet::V6(_))
        )
    };
    let candidates: Vec<&Rule> = group
        .iter()
        .copied()
        .filter(|r| {
            r.access == Access::Allow
                && r.direction == forbid.direction.into()
                && matches!(&r.peer, Peer::Cidr(n) if same_family(n) && (n.contains(&f.network()) || f.contains(&n.network())))
                && ports_in_scope(forbid, &r.ports)
                && !shadowed(r, forbid, group)
        })
        .collect();
    if candidates.len() < 2 {
        return Vec::new();
    }
    let mut points: Vec<Ports> = Vec::new();
    let bounds = |r: Option<palisade_providers::PortRange>| {
        let r = r.unwrap_or(palisade_providers::PortRange::ALL);
        let mut b = vec![r.from];
        if r.to < u16::MAX {
            b.push(r.to + 1);
        }
        b
    };
    let specs = forbid.ports.iter().chain(&forbid.except_ports).map(|p| p.0);
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let mut at: Vec<u16> = vec![0];
        for p in candidates
            .iter()
            .map(|r| r.ports)
            .chain(specs.clone())
            .filter(|p| p.protocol == proto || p.protocol == Protocol::All)
        {
            at.extend(bounds(p.range));
        }
        at.sort_unstable();
        at.dedup();
        points.extend(at.into_iter().map(|port| Ports::range(proto, port, port)));
    }
    // Other protocols: each rule's own class, and each class the clause names (so that
    // `icmp` halves break a forbid of `icmp/8`, and all-traffic halves a forbid of `icmp`).
    points.extend(
        candidates
            .iter()
            .map(|r| r.ports)
            .chain(specs)
            .filter(|p| !matches!(p.protocol, Protocol::Tcp | Protocol::Udp)),
    );
    for point in points.iter().filter(|p| point_forbidden(forbid, p)) {
        // Only rules that protect the same thing combine: an NSG rule narrowed to some
        // destinations or source ports does not add up with one narrowed otherwise.
        let mut by_scope: BTreeMap<Option<palisade_providers::Narrowing>, Vec<&Rule>> =
            BTreeMap::new();
        for r in candidates
            .iter()
            .copied()
            .filter(|r| r.ports.contains(point))
        {
            let scope = r.narrowing.as_ref().filter(|n| !n.is_full()).map(|n| {
                palisade_providers::Narrowing {
                    priority: None,
                    ..n.clone()
                }
            });
            by_scope.entry(scope).or_default().push(r);
        }
        for admitting in by_scope.into_values() {
            if let Some(breach) = covering(&admitting, &f) {
                return breach;
            }
        }
    }
    Vec::new()
}

/// `rules` (two or more) whose CIDRs, merged, cover `f`.
fn covering<'r>(admitting: &[&'r Rule], f: &ipnet::IpNet) -> Option<Vec<&'r Rule>> {
    if admitting.len() < 2 {
        return None;
    }
    let nets: Vec<ipnet::IpNet> = admitting
        .iter()
        .filter_map(|r| match &r.peer {
            Peer::Cidr(n) => Some(*n),
            _ => None,
        })
        .collect();
    ipnet::IpNet::aggregate(&nets)
        .iter()
        .any(|a| a.contains(f))
        .then(|| admitting.to_vec())
}

/// "rules A; B together admit C": the text of a union breach.
fn union_message(rules: &[&Rule], forbid: &ForbidSpec) -> String {
    format!(
        "rules {} together admit {} {}",
        rules
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("; "),
        match forbid.direction {
            crate::policy::RuleDirection::Ingress => "ingress from",
            crate::policy::RuleDirection::Egress => "egress to",
        },
        forbid
            .peer
            .as_ref()
            .map_or("any peer".into(), ToString::to_string)
    )
}

/// Union breaches of `g` in one group: clauses no rule breaks alone, which several do
/// together.
fn union_breaches<'g, 'r>(
    g: &'g GuardrailDoc,
    group: &[&'r Rule],
) -> Vec<(&'g Located<ForbidSpec>, Vec<&'r Rule>)> {
    g.spec
        .forbid
        .iter()
        .filter(|f| {
            !group
                .iter()
                .any(|r| violates(r, f) && !shadowed(r, f, group))
        })
        .filter_map(|f| {
            let rules = union_breach(f, group);
            (!rules.is_empty()).then_some((f, rules))
        })
        .collect()
}

fn violation(
    g: &GuardrailDoc,
    target: &str,
    resource: ResourceAddr,
    message: String,
    location: Option<SourceLocation>,
) -> Finding {
    Finding {
        kind: FindingKind::GuardrailViolation,
        target: target.to_string(),
        resource,
        message: format!("{message} (guardrail {})", g.name()),
        guardrail: Some(g.name().to_string()),
        controls: g.spec.controls.clone(),
        location,
    }
}

/// The clauses of `g` that `rule` breaks in effect: not those a deny of higher priority
/// in the same NSG (`group`, default rules included) takes back entirely.
fn broken_clauses<'g>(
    g: &'g GuardrailDoc,
    rule: &Rule,
    group: &[&Rule],
) -> Vec<&'g Located<ForbidSpec>> {
    g.spec
        .forbid
        .iter()
        .filter(|f| violates(rule, f) && !shadowed(rule, f, group))
        .collect()
}

/// Whether an NSG deny evaluated before `rule` (a lower priority number) drops every
/// packet of `rule` that `forbid` is about: same direction, a peer that covers the
/// forbidden one, every port of the rule, and nothing narrowing the deny (a deny limited
/// to some destinations or source ports takes back only part). One deny must cover it
/// alone; allows carved up by several denies are still reported (fail closed). AWS
/// rules have no priorities and no denies: never shadowed.
fn shadowed(rule: &Rule, forbid: &ForbidSpec, group: &[&Rule]) -> bool {
    let Some(at) = rule.effective_priority() else {
        return false;
    };
    group.iter().any(|d| {
        d.access == Access::Deny
            && d.direction == rule.direction
            && d.is_full()
            && d.effective_priority().is_some_and(|p| p < at)
            && deny_covers(&d.peer, &rule.peer, forbid)
            && d.ports.contains(&rule.ports)
    })
}

/// Whether a deny's peer drops all of an allow's traffic that `forbid` is about: with a
/// forbidden peer, the deny must cover it; without one (any peer), the deny must cover
/// the allow's own peer (`*`, or a CIDR containing the allow's). Under-approximated: a
/// deny never counts for more than it surely drops.
fn deny_covers(deny: &Peer, allow: &Peer, forbid: &ForbidSpec) -> bool {
    match &forbid.peer {
        Some(p) => peer_covers(deny, p),
        None => match (deny, allow) {
            (Peer::Any, _) => true,
            (Peer::Cidr(d), Peer::Cidr(a)) => d.contains(a),
            (d, a) => d == a,
        },
    }
}

fn clauses_suffix(broken: &[&Located<ForbidSpec>]) -> String {
    if broken.len() < 2 {
        return String::new();
    }
    let each: Vec<String> = broken
        .iter()
        .map(|f| {
            let dir = match f.direction {
                crate::policy::RuleDirection::Ingress => "ingress from",
                crate::policy::RuleDirection::Egress => "egress to",
            };
            let ports = if f.ports.is_empty() {
                String::new()
            } else {
                format!(
                    " on {}",
                    f.ports
                        .iter()
                        .map(|p| p.0.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            let peer = f
                .peer
                .as_ref()
                .map_or("any peer".into(), ToString::to_string);
            format!("{dir} {peer}{ports}")
        })
        .collect();
    format!("; breaks {} clauses: {}", broken.len(), each.join("; "))
}

/// Guardrails against a compiled desired state. With `inventory`, the `require`
/// clauses are checked on the functions compile selected.
pub fn check_desired(
    set: &PolicySet,
    desired: &DesiredState,
    inventory: Option<&Inventory>,
) -> Vec<Finding> {
    let target = desired.target.as_str();
    let mut out = Vec::new();
    // Every selected function once: a lookup per observed function, not a scan of every
    // policy's selection (that was quadratic: seconds at 10,000 functions).
    let selected: std::collections::HashSet<&str> = desired
        .selected
        .values()
        .flatten()
        .map(String::as_str)
        .collect();
    for g in set.guardrails.iter().filter(|g| in_scope(g, target)) {
        for group in desired.groups.values() {
            let all: Vec<&Rule> = group.rules.keys().collect();
            for (f, rules) in union_breaches(g, &all) {
                let origin = &group.rules[rules[0]];
                out.push(violation(
                    g,
                    target,
                    ResourceAddr::policy(origin.policy.as_str()),
                    union_message(&rules, f),
                    origin.location.clone().or_else(|| Some(g.at(f))),
                ));
            }
            for (rule, origin) in &group.rules {
                let broken = broken_clauses(g, rule, &all);
                if !broken.is_empty() {
                    out.push(violation(
                        g,
                        target,
                        ResourceAddr::policy(origin.policy.as_str()),
                        format!(
                            "rule {:?} allows {rule}{}",
                            origin.rule,
                            clauses_suffix(&broken)
                        ),
                        origin.location.clone(),
                    ));
                }
            }
        }
        // The front doors the policies would write (the same for every app of a
        // policy): a restriction has no ports, so a peer declared on 443 reaches 80 too.
        if let Some(inv) = inventory {
            let mut seen = BTreeSet::new();
            for di in desired.inbound.values() {
                if seen.insert(di.policy.as_str()) {
                    out.extend(front_door_findings(
                        g,
                        inv,
                        &ResourceAddr::policy(di.policy.as_str()),
                        &di.inbound,
                    ));
                }
            }
        }
        // `require` on a desired state: a function a policy selects must end up in a
        // network. Functions no policy selects are the observed world's business
        // (`check_inventory`), not a reason to fail a policy change.
        let Some(inv) = inventory else { continue };
        if !g.spec.require.in_network {
            continue;
        }
        for f in inv
            .functions
            .iter()
            .filter(|f| g.spec.scope.functions.matches(&f.name, &f.tags))
        {
            // Functions in conflict with what is observed (or of a policy whose network
            // does not resolve) are left as they are: `check_inventory` judges them.
            let left_alone = desired.conflicted.contains(&f.id)
                || desired
                    .frozen
                    .iter()
                    .any(|p| desired.selected.get(p).is_some_and(|s| s.contains(&f.id)));
            if selected.contains(f.id.as_str())
                && !desired.placements.contains_key(&f.id)
                && !left_alone
            {
                out.push(violation(
                    g,
                    target,
                    ResourceAddr::function(f.name.as_str()),
                    "would not run in a VPC / VNet".into(),
                    Some(g.here()),
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Guardrails against everything observed in a target, managed or not; and stale group
/// references (whatever the guardrails say).
pub fn check_inventory(set: &PolicySet, inventory: &Inventory) -> Vec<Finding> {
    let target = inventory.target.as_str();
    let mut out = stale_references(inventory);
    out.extend(unapproved_endpoints(inventory));
    for g in set.guardrails.iter().filter(|g| in_scope(g, target)) {
        for group in &inventory.groups {
            // What the NSG lets through in effect: its rules and Azure's default rules,
            // in priority order, denies taking back what they cover.
            let all: Vec<&Rule> = group.rules.iter().chain(&group.default_rules).collect();
            for (f, rules) in union_breaches(g, &all) {
                let owner = match group.owner() {
                    Some(o) => format!(" (managed by policy {o})"),
                    None => " (not managed by Palisade)".to_string(),
                };
                out.push(violation(
                    g,
                    target,
                    ResourceAddr::group(group.id.as_str()),
                    format!("{}{owner}", union_message(&rules, f)),
                    Some(g.at(f)),
                ));
            }
            for rule in &all {
                let broken = broken_clauses(g, rule, &all);
                let Some(first) = broken.first() else {
                    continue;
                };
                let owner = match group.owner() {
                    Some(o) => format!(" (managed by policy {o})"),
                    None => " (not managed by Palisade)".to_string(),
                };
                let default = if group.default_rules.iter().any(|d| std::ptr::eq(d, *rule)) {
                    format!(
                        "; Azure's default rule {} at {}, not taken back by any deny before it",
                        rule.id.as_deref().unwrap_or("?"),
                        rule.effective_priority().unwrap_or_default()
                    )
                } else {
                    String::new()
                };
                out.push(violation(
                    g,
                    target,
                    ResourceAddr::group(group.id.as_str()),
                    format!(
                        "rule allows {rule}{owner}{default}{}",
                        clauses_suffix(&broken)
                    ),
                    Some(g.at(*first)),
                ));
            }
        }
        for f in inventory
            .functions
            .iter()
            .filter(|f| g.spec.scope.functions.matches(&f.name, &f.tags))
        {
            if let Some(inbound) = &f.inbound {
                out.extend(front_door_findings(
                    g,
                    inventory,
                    &ResourceAddr::function(f.name.as_str()),
                    inbound,
                ));
            }
        }
        let req = &g.spec.require;
        for f in inventory
            .functions
            .iter()
            .filter(|f| g.spec.scope.functions.matches(&f.name, &f.tags))
        {
            if req.in_network && f.placement.is_none() {
                out.push(violation(
                    g,
                    target,
                    ResourceAddr::function(f.name.as_str()),
                    "does not run in a VPC / VNet".into(),
                    Some(g.here()),
                ));
            }
            if req.covered_by_policy
                && !set
                    .policies_of(target)
                    .any(|p| p.spec.functions.matches(&f.name, &f.tags))
            {
                out.push(violation(
                    g,
                    target,
                    ResourceAddr::function(f.name.as_str()),
                    "is not selected by any FunctionPolicy".into(),
                    Some(g.here()),
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// An Azure app's access restrictions as ingress rules on the front door's ports
/// (tcp/443 and tcp/80), ordered as App Service evaluates them, the default action last
/// (at 65500, where an NSG's `DenyAllInBound` is): what the guardrails judge. Each rule
/// comes with the index of its restriction (`None`: the default action).
///
/// Fail closed: an unreadable source is any address to an allow and nothing to a deny; a
/// subnet is its address ranges (any address to an allow, when the subnet is not in the
/// target); a deny that also matches on headers takes nothing back.
fn front_door_rules(inventory: &Inventory, inbound: &Inbound) -> Vec<(Rule, Option<usize>)> {
    let ports = |port| Ports {
        protocol: palisade_providers::Protocol::Tcp,
        range: Some(palisade_providers::PortRange {
            from: port,
            to: port,
        }),
        icmp: None,
    };
    let mut out = Vec::new();
    let mut push = |peer: Peer, access: Access, priority: u16, at: Option<usize>| {
        for p in [443, 80] {
            out.push((
                Rule {
                    priority: Some(priority),
                    ..Rule {
                        access,
                        ..Rule::allow(Direction::Ingress, ports(p), peer.clone())
                    }
                },
                at,
            ));
        }
    };
    // In App Service's order (snapshots are read unsorted); equal priorities share a
    // rank, so that nothing at the same priority hides anything.
    let mut order: Vec<usize> = (0..inbound.rules.len()).collect();
    order.sort_by_key(|&i| inbound.rules[i].priority);
    let mut rank = 0u16;
    let mut last = None;
    for i in order {
        let r = &inbound.rules[i];
        if last != Some(r.priority) {
            rank = rank.saturating_add(1).min(65_000);
            last = Some(r.priority);
        }
        let deny = r.access == Access::Deny;
        let peers: Vec<Peer> = match &r.peer {
            // A deny that filters on headers, or whose source cannot be read, takes
            // nothing back for sure.
            _ if deny && r.headers => Vec::new(),
            InboundPeer::Unreadable(_) if deny => Vec::new(),
            InboundPeer::Any | InboundPeer::Unreadable(_) => vec![Peer::Any],
            InboundPeer::Cidr(n) => vec![Peer::cidr(*n)],
            InboundPeer::ServiceTag(t) => vec![Peer::ServiceTag(t.clone())],
            InboundPeer::Subnet(id) => {
                let known: Vec<Peer> = inventory
                    .subnets
                    .iter()
                    .filter(|s| s.id.eq_ignore_ascii_case(id))
                    .flat_map(|s| s.cidrs.iter().map(|c| Peer::cidr(*c)))
                    .collect();
                // An allow from a subnet outside the target may come from anywhere.
                if known.is_empty() && !deny {
                    vec![Peer::Any]
                } else {
                    known
                }
            }
        };
        for peer in peers {
            push(peer, r.access, rank, Some(i));
        }
    }
    push(Peer::Any, inbound.default_action, 65_500, None);
    out
}

/// Guardrail `g` on one app's front door: one finding per access restriction (or the
/// default action) that admits what `g` forbids, and one per set that admits it
/// together.
fn front_door_findings(
    g: &GuardrailDoc,
    inventory: &Inventory,
    resource: &ResourceAddr,
    inbound: &Inbound,
) -> Vec<Finding> {
    let target = inventory.target.as_str();
    let rules = front_door_rules(inventory, inbound);
    let all: Vec<&Rule> = rules.iter().map(|(r, _)| r).collect();
    let name = |at: Option<usize>| match at {
        Some(i) => {
            let r = &inbound.rules[i];
            format!("access restriction {:?} ({r})", r.name)
        }
        None => "the default action (allow)".to_string(),
    };
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for (rule, at) in &rules {
        let broken = broken_clauses(g, rule, &all);
        let Some(first) = broken.first() else {
            continue;
        };
        if !seen.insert(*at) {
            continue;
        }
        out.push(violation(
            g,
            target,
            resource.clone(),
            format!(
                "front door: {} admits {} on the app's public endpoint{}",
                name(*at),
                rule.peer,
                clauses_suffix(&broken)
            ),
            Some(g.at(*first)),
        ));
    }
    for (forbid, together) in union_breaches(g, &all) {
        let mut names: Vec<String> = together
            .iter()
            .filter_map(|r| {
                rules
                    .iter()
                    .find(|(x, _)| std::ptr::eq(x, *r))
                    .map(|(_, at)| name(*at))
            })
            .collect();
        names.dedup();
        out.push(violation(
            g,
            target,
            resource.clone(),
            format!(
                "front door: {} together admit ingress from {}",
                names.join("; "),
                forbid
                    .peer
                    .as_ref()
                    .map_or("any peer".into(), ToString::to_string)
            ),
            Some(g.at(forbid)),
        ));
    }
    out
}

/// Private endpoints whose connection is not approved.
fn unapproved_endpoints(inventory: &Inventory) -> Vec<Finding> {
    inventory
        .endpoints
        .iter()
        .filter(|e| !e.connected())
        .map(|e| {
            let state = e.connection.as_deref().unwrap_or("unknown");
            let what = match state.to_ascii_lowercase().as_str() {
                "pending" => "awaits approval by the owner of the resource it connects to",
                "rejected" => "was rejected by the owner of the resource it connects to",
                "disconnected" => "was disconnected by the owner of the resource it connects to",
                _ => "is not approved",
            };
            Finding {
                kind: FindingKind::EndpointNotApproved,
                target: inventory.target.clone(),
                resource: match e.owner() {
                    Some(o) => ResourceAddr::endpoint(o).with_id(e.id.as_str()),
                    None => ResourceAddr::endpoint(e.id.as_str()),
                },
                message: format!(
                    "private endpoint to {}: its connection is {state} — it {what}; no traffic flows through it until it is Approved",
                    e.service
                ),
                guardrail: None,
                controls: Vec::new(),
                location: None,
            }
        })
        .collect()
}

/// Rules that reference a group across a peering connection that is not active.
fn stale_references(inventory: &Inventory) -> Vec<Finding> {
    let mut out = Vec::new();
    for group in &inventory.groups {
        for rule in &group.rules {
            let Some(r) = rule.reference.as_ref().filter(|r| r.is_stale()) else {
                continue;
            };
            let whose = match group.owner() {
                Some(o) => format!("managed by policy {o}: the rule is revoked unless declared"),
                None => "not managed by Palisade: left as it is".to_string(),
            };
            out.push(Finding {
                kind: FindingKind::StaleReference,
                target: inventory.target.clone(),
                resource: ResourceAddr::group(group.id.as_str()),
                message: format!(
                    "rule {rule} references {}{} across peering connection {} whose status is {}: a stale reference (it admits nothing now, and would admit whatever holds that id if the peering were re-established); group {whose}",
                    rule.peer,
                    r.account
                        .as_deref()
                        .map(|a| format!(" of account {a}"))
                        .unwrap_or_default(),
                    r.peering_connection.as_deref().unwrap_or("(unnamed)"),
                    r.peering_status.as_deref().unwrap_or("unknown"),
                ),
                guardrail: None,
                controls: Vec::new(),
                location: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_providers::{Direction, PortRange};

    fn forbid(direction: &str, peer: PeerSpec, ports: &[&str], except: &[&str]) -> ForbidSpec {
        ForbidSpec {
            direction: if direction == "ingress" {
                crate::policy::RuleDirection::Ingress
            } else {
                crate::policy::RuleDirection::Egress
            },
            peer: Some(peer),
            ports: ports.iter().map(|p| p.parse().unwrap()).collect(),
            except_ports: except.iter().map(|p| p.parse().unwrap()).collect(),
        }
    }

    fn tcp(p: u16) -> Ports {
        Ports {
            protocol: Protocol::Tcp,
            range: Some(PortRange { from: p, to: p }),
            icmp: None,
        }
    }

    #[test]
    fn forbid_matching_table() {
        let world = || PeerSpec::Cidr(crate::policy::Cidr("0.0.0.0/0".parse().unwrap()));
        let cases: Vec<(&str, Rule, ForbidSpec, bool)> = vec![
            (
                "world ssh ingress is forbidden",
                Rule::allow(
                    Direction::Ingress,
                    tcp(22),
                    Peer::cidr("0.0.0.0/0".parse().unwrap()),
                ),
                forbid("ingress", world(), &[], &[]),
                true,
            ),
            (
                "a /8 is not the world",
                Rule::allow(
                    Direction::Ingress,
                    tcp(22),
                    Peer::cidr("10.0.0.0/8".parse().unwrap()),
                ),
                forbid("ingress", world(), &[], &[]),
                false,
            ),
            (
                "egress is not ingress",
                Rule::allow(
                    Direction::Egress,
                    tcp(22),
                    Peer::cidr("0.0.0.0/0".parse().unwrap()),
                ),
                forbid("ingress", world(), &[], &[]),
                false,
            ),
            (
                "https is excepted",
                Rule::allow(
                    Direction::Egress,
                    tcp(443),
                    Peer::cidr("0.0.0.0/0".parse().unwrap()),
                ),
                forbid("egress", world(), &[], &["tcp/443"]),
                false,
            ),
            (
                "all ports are not within the exception",
                Rule::allow(
                    Direction::Egress,
                    Ports::ALL,
                    Peer::cidr("0.0.0.0/0".parse().unwrap()),
                ),
                forbid("egress", world(), &[], &["tcp/443"]),
                true,
            ),
            (
                "port list limits the match",
                Rule::allow(
                    Direction::Ingress,
                    tcp(443),
                    Peer::cidr("0.0.0.0/0".parse().unwrap()),
                ),
                forbid("ingress", world(), &["tcp/22"], &[]),
                false,
            ),
            (
                "azure any covers the world",
                Rule::allow(Direction::Ingress, tcp(22), Peer::Any),
                forbid("ingress", world(), &[], &[]),
                true,
            ),
            (
                "azure Internet tag is the world",
                Rule::allow(
                    Direction::Egress,
                    tcp(80),
                    Peer::ServiceTag("Internet".into()),
                ),
                forbid("egress", world(), &[], &["tcp/443"]),
                true,
            ),
            (
                "a deny rule never violates",
                Rule {
                    access: Access::Deny,
                    ..Rule::allow(Direction::Ingress, tcp(22), Peer::Any)
                },
                forbid("ingress", world(), &[], &[]),
                false,
            ),
            (
                "ipv4 forbid does not match ipv6",
                Rule::allow(
                    Direction::Ingress,
                    tcp(22),
                    Peer::cidr("::/0".parse().unwrap()),
                ),
                forbid("ingress", world(), &[], &[]),
                false,
            ),
        ];
        for (name, rule, f, want) in cases {
            assert_eq!(violates(&rule, &f), want, "{name}");
        }
    }

    #[test]
    fn cidrs_that_together_cover_a_forbidden_peer_are_one_breach() {
        let world4 = || PeerSpec::Cidr(crate::policy::Cidr("0.0.0.0/0".parse().unwrap()));
        let world6 = || PeerSpec::Cidr(crate::policy::Cidr("::/0".parse().unwrap()));
        let r = |cidr: &str, ports: Ports| {
            Rule::allow(Direction::Ingress, ports, Peer::cidr(cidr.parse().unwrap()))
        };
        let range = |from, to| Ports::range(Protocol::Tcp, from, to);
        // (case, rules, forbid, how many rules make the breach; 0 = none)
        let cases: Vec<(&str, Vec<Rule>, ForbidSpec, usize)> = vec![
            (
                "two halves are the world",
                vec![r("0.0.0.0/1", tcp(22)), r("128.0.0.0/1", tcp(22))],
                forbid("ingress", world4(), &[], &[]),
                2,
            ),
            (
                "ipv6 halves are ::/0",
                vec![r("::/1", tcp(22)), r("8000::/1", tcp(22))],
                forbid("ingress", world6(), &[], &[]),
                2,
            ),
            (
                "four quarters",
                vec![
                    r("0.0.0.0/2", tcp(3389)),
                    r("64.0.0.0/2", tcp(3389)),
                    r("128.0.0.0/2", tcp(3389)),
                    r("192.0.0.0/2", tcp(3389)),
                ],
                forbid("ingress", world4(), &[], &[]),
                4,
            ),
            (
                "overlapping port ranges that share port 22",
                vec![
                    r("0.0.0.0/1", range(1, 100)),
                    r("128.0.0.0/1", range(22, 22)),
                ],
                forbid("ingress", world4(), &[], &[]),
                2,
            ),
            (
                "a single /1 alone is not the world",
                vec![r("0.0.0.0/1", tcp(22))],
                forbid("ingress", world4(), &[], &[]),
                0,
            ),
            (
                "halves on different ports never cover one port",
                vec![r("0.0.0.0/1", tcp(22)), r("128.0.0.0/1", tcp(80))],
                forbid("ingress", world4(), &[], &[]),
                0,
            ),
            (
                "halves on an excepted port are allowed",
                vec![r("0.0.0.0/1", tcp(443)), r("128.0.0.0/1", tcp(443))],
                forbid("ingress", world4(), &[], &["tcp/443"]),
                0,
            ),
            (
                "halves outside the forbidden ports are allowed",
                vec![r("0.0.0.0/1", tcp(443)), r("128.0.0.0/1", tcp(443))],
                forbid("ingress", world4(), &["tcp/22"], &[]),
                0,
            ),
            (
                "a forbidden /8 covered by two /9s",
                vec![r("10.0.0.0/9", tcp(5432)), r("10.128.0.0/9", tcp(5432))],
                forbid(
                    "ingress",
                    PeerSpec::Cidr(crate::policy::Cidr("10.0.0.0/8".parse().unwrap())),
                    &[],
                    &[],
                ),
                2,
            ),
        ];
        for (name, rules, f, want) in cases {
            let refs: Vec<&Rule> = rules.iter().collect();
            assert!(
                !refs.iter().any(|r| violates(r, &f)),
                "{name}: no rule breaks it alone"
            );
            assert_eq!(union_breach(&f, &refs).len(), want, "{name}");
        }
    }

    #[test]
    fn a_policy_that_splits_the_world_in_halves_fails_validation() {
        let text = r#"apiVersion: palisade.dev/v1alpha1
kind: Target
metadata: { name: t }
spec:
  aws: { region: us-east-1, accountId: "123456789012" }
---
apiVersion: palisade.dev/v1alpha1
kind: Guardrail
metadata: { name: no-world-ingress }
spec:
  controls: [ C-1 ]
  forbid:
    - { direction: ingress, peer: { cidr: 0.0.0.0/0 } }
---
apiVersion: palisade.dev/v1alpha1
kind: FunctionPolicy
metadata: { name: api }
spec:
  target: t
  functions: { names: [ api ] }
  network: { vpc: { id: vpc-1 }, subnets: { ids: [ subnet-1 ] } }
  ingress:
    - name: low-half
      from: [ { cidr: 0.0.0.0/1 } ]
      ports: [ tcp/22 ]
    - name: high-half
      from: [ { cidr: 128.0.0.0/1 } ]
      ports: [ tcp/22 ]
"#;
        let (set, diags) = crate::policy::load_text("p.yaml", text);
        assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
        let errors: Vec<_> = crate::validate_set(&set, &Default::default())
            .into_iter()
            .filter(|d| d.is_error())
            .collect();
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(
            errors[0].message.contains("together admit"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn review_cases_neither_sidestep_nor_invent() {
        let set = example();
        let world = || PeerSpec::Cidr(crate::policy::Cidr("0.0.0.0/0".parse().unwrap()));
        let star_port = |p: u16| Ports {
            protocol: Protocol::All,
            range: Some(PortRange { from: p, to: p }),
            icmp: None,
        };
        // A deny of one host does not take back an allow from anywhere, for a forbid that
        // names no peer.
        let no_ssh = ForbidSpec {
            peer: None,
            ..forbid("ingress", world(), &["tcp/22"], &[])
        };
        let host_deny = nsg_rule(
            Direction::Ingress,
            Access::Deny,
            100,
            Ports::ALL,
            Peer::cidr("192.0.2.1/32".parse().unwrap()),
        );
        let ssh_any = nsg_rule(Direction::Ingress, Access::Allow, 200, tcp(22), Peer::Any);
        assert!(!shadowed(&ssh_any, &no_ssh, &[&host_deny, &ssh_any]));
        // `*` on port 22 is not every port: it does not take back RDP…
        let deny_22 = nsg_rule(
            Direction::Ingress,
            Access::Deny,
            100,
            star_port(22),
            Peer::Any,
        );
        let rdp = nsg_rule(Direction::Ingress, Access::Allow, 200, tcp(3389), Peer::Any);
        let inv = inventory("prod-azure", vec![deny_22.clone(), rdp]);
        assert_eq!(guardrail_findings(&set, &inv, "no-world-ingress").len(), 1);
        // …and `*` on 8080 does not break a forbid of tcp/22.
        let web = nsg_rule(
            Direction::Ingress,
            Access::Allow,
            300,
            star_port(8080),
            Peer::Any,
        );
        assert!(!violates(
            &web,
            &forbid("ingress", world(), &["tcp/22"], &[])
        ));
        // ICMP halves break a forbid of echo.
        let icmp = |cidr: &str| {
            Rule::allow(
                Direction::Ingress,
                Ports::any(Protocol::Icmp),
                Peer::cidr(cidr.parse().unwrap()),
            )
        };
        let halves = [icmp("0.0.0.0/1"), icmp("128.0.0.0/1")];
        let refs: Vec<&Rule> = halves.iter().collect();
        assert_eq!(
            union_breach(&forbid("ingress", world(), &["icmp/8"], &[]), &refs).len(),
            2
        );
        // Halves that reach different destinations do not add up to the world.
        let mut low = nsg_rule(
            Direction::Ingress,
            Access::Allow,
            300,
            tcp(22),
            Peer::cidr("0.0.0.0/1".parse().unwrap()),
        );
        let mut high = low.clone();
        high.peer = Peer::cidr("128.0.0.0/1".parse().unwrap());
        for (r, to) in [(&mut low, "10.0.0.4"), (&mut high, "10.0.0.5")] {
            r.narrowing = Some(palisade_providers::Narrowing {
                priority: None,
                near: vec![to.into()],
                source_ports: vec![],
            });
        }
        let refs = vec![&low, &high];
        assert!(union_breach(&forbid("ingress", world(), &[], &[]), &refs).is_empty());
    }

    #[test]
    fn a_forbid_without_a_peer_means_any_peer() {
        let (set, diags) = crate::policy::load_text(
            "g.yaml",
            "apiVersion: palisade.dev/v1alpha1\nkind: Guardrail\nmetadata: { name: no-ssh }\nspec:\n  controls: [ C-1 ]\n  forbid:\n    - { direction: ingress, ports: [ tcp/22 ] }\n",
        );
        assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
        let f = &set.guardrails[0].spec.forbid[0];
        assert_eq!(f.peer, None);
        let from = |cidr: &str, p: u16| {
            Rule::allow(
                Direction::Ingress,
                tcp(p),
                Peer::cidr(cidr.parse().unwrap()),
            )
        };
        assert!(violates(&from("10.0.0.0/8", 22), f), "any peer on 22");
        assert!(violates(&from("192.168.1.7/32", 22), f));
        assert!(!violates(&from("10.0.0.0/8", 443), f));
        assert!(violates(
            &Rule::allow(Direction::Ingress, tcp(22), Peer::Any),
            f
        ));
    }

    #[test]
    fn icmp_types_are_judged_exactly() {
        let world = || PeerSpec::Cidr(crate::policy::Cidr("0.0.0.0/0".parse().unwrap()));
        let icmp = |s: &str| -> Ports { s.parse::<crate::policy::PortSpec>().unwrap().0 };
        let rule = |p: &str| {
            Rule::allow(
                Direction::Ingress,
                icmp(p),
                Peer::cidr("0.0.0.0/0".parse().unwrap()),
            )
        };
        let echo = forbid("ingress", world(), &["icmp/8"], &[]);
        assert!(violates(&rule("icmp"), &echo), "every type includes echo");
        assert!(violates(&rule("icmp/8"), &echo));
        assert!(violates(&rule("icmp/8/0"), &echo));
        assert!(!violates(&rule("icmp/3/4"), &echo), "PMTU is not echo");
        assert!(!violates(&rule("icmpv6/128"), &echo), "ICMPv6 is not ICMP");
        let all_but_pmtu = forbid("ingress", world(), &["icmp"], &["icmp/3/4"]);
        assert!(!violates(&rule("icmp/3/4"), &all_but_pmtu));
        assert!(
            violates(&rule("icmp/3"), &all_but_pmtu),
            "every code of 3 is wider"
        );
    }

    fn example() -> PolicySet {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies-example");
        crate::policy::load_dir(&root, &crate::policy::Limits::default()).0
    }

    fn inventory(target: &str, rules: Vec<Rule>) -> Inventory {
        Inventory {
            target: target.into(),
            groups: vec![palisade_providers::SecurityGroup {
                id: "nsg-legacy".into(),
                name: "nsg-legacy".into(),
                network: String::new(),
                tags: Default::default(),
                rules,
                default_rules: Vec::new(),
                attached: None,
            }],
            ..Inventory::default()
        }
    }

    #[test]
    fn one_breach_is_one_finding_per_guardrail_with_its_clauses() {
        let set = example();
        for peer in [Peer::Any, Peer::ServiceTag("Internet".into())] {
            let inv = inventory(
                "prod-azure",
                vec![Rule::allow(Direction::Ingress, tcp(3389), peer.clone())],
            );
            let findings: Vec<Finding> = check_inventory(&set, &inv)
                .into_iter()
                .filter(|f| f.guardrail.as_deref() == Some("no-world-ingress"))
                .collect();
            assert_eq!(findings.len(), 1, "{peer}: {findings:#?}");
            if peer == Peer::Any {
                assert!(
                    findings[0].message.contains("breaks 3 clauses"),
                    "{}",
                    findings[0].message
                );
            }
        }
    }

    fn nsg_rule(direction: Direction, access: Access, prio: u16, ports: Ports, peer: Peer) -> Rule {
        Rule {
            access,
            priority: Some(prio),
            ..Rule::allow(direction, ports, peer)
        }
    }

    fn guardrail_findings(set: &PolicySet, inv: &Inventory, name: &str) -> Vec<Finding> {
        check_inventory(set, inv)
            .into_iter()
            .filter(|f| f.guardrail.as_deref() == Some(name))
            .collect()
    }

    #[test]
    fn azure_default_rules_count_and_higher_priority_denies_take_back_what_they_cover() {
        let set = example();
        let internet = || Peer::ServiceTag("Internet".into());
        let mut allow_internet = nsg_rule(
            Direction::Egress,
            Access::Allow,
            65001,
            Ports::ALL,
            internet(),
        );
        allow_internet.id = Some("AllowInternetOutBound".into());
        let deny_all_out = nsg_rule(
            Direction::Egress,
            Access::Deny,
            65500,
            Ports::ALL,
            Peer::Any,
        );
        let mut inv = inventory("prod-azure", vec![]);
        inv.groups[0].default_rules = vec![allow_internet, deny_all_out];
        let found = guardrail_findings(&set, &inv, "internet-egress-https-only");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].message.contains("AllowInternetOutBound"),
            "{}",
            found[0].message
        );

        // A deny of everything outbound before it: nothing leaves for the internet.
        inv.groups[0].rules = vec![nsg_rule(
            Direction::Egress,
            Access::Deny,
            4000,
            Ports::ALL,
            Peer::Any,
        )];
        assert!(guardrail_findings(&set, &inv, "internet-egress-https-only").is_empty());

        // A deny narrowed to some source ports takes back only part: still a finding.
        let mut narrowed = nsg_rule(Direction::Egress, Access::Deny, 4000, Ports::ALL, Peer::Any);
        narrowed.narrowing = Some(palisade_providers::Narrowing {
            priority: None,
            near: Vec::new(),
            source_ports: vec!["88-90".into()],
        });
        inv.groups[0].rules = vec![narrowed];
        assert_eq!(
            guardrail_findings(&set, &inv, "internet-egress-https-only").len(),
            1
        );
    }

    #[test]
    fn an_allow_shadowed_by_a_deny_before_it_is_not_a_breach() {
        let set = example();
        let range = |from, to| Ports {
            protocol: Protocol::Tcp,
            range: Some(PortRange { from, to }),
            icmp: None,
        };
        // A real NSG: allow 8080-8084 and 8086 from anywhere at 310, behind a deny of 8086
        // at 290.
        let inv = inventory(
            "prod-azure",
            vec![
                nsg_rule(Direction::Ingress, Access::Deny, 290, tcp(8086), Peer::Any),
                nsg_rule(
                    Direction::Ingress,
                    Access::Allow,
                    310,
                    range(8080, 8084),
                    Peer::Any,
                ),
                nsg_rule(Direction::Ingress, Access::Allow, 311, tcp(8086), Peer::Any),
            ],
        );
        let found = guardrail_findings(&set, &inv, "no-world-ingress");
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(
            found[0].message.contains("8080-8084"),
            "{}",
            found[0].message
        );
        // A deny after the allow takes nothing back.
        let inv = inventory(
            "prod-azure",
            vec![
                nsg_rule(Direction::Ingress, Access::Allow, 200, tcp(8086), Peer::Any),
                nsg_rule(Direction::Ingress, Access::Deny, 290, tcp(8086), Peer::Any),
            ],
        );
        assert_eq!(guardrail_findings(&set, &inv, "no-world-ingress").len(), 1);
    }

    #[test]
    fn a_reference_across_a_dead_peering_is_a_stale_reference_finding() {
        let set = example();
        let mut stale = Rule::allow(
            Direction::Ingress,
            tcp(5432),
            Peer::Group(palisade_providers::GroupRef::Id("sg-0peer".into())),
        );
        stale.reference = Some(palisade_providers::GroupReference {
            account: Some("210987654321".into()),
            vpc: Some("vpc-0peer".into()),
            peering_connection: Some("pcx-0dead".into()),
            peering_status: Some("deleted".into()),
        });
        let mut live = stale.clone();
        live.ports = tcp(5433);
        live.reference.as_mut().unwrap().peering_status = Some("active".into());
        let inv = inventory("prod-aws", vec![stale, live]);
        let found: Vec<Finding> = check_inventory(&set, &inv)
            .into_iter()
            .filter(|f| f.kind == FindingKind::StaleReference)
            .collect();
        assert_eq!(found.len(), 1, "{found:#?}");
        assert!(found[0].message.contains("pcx-0dead"));
        assert!(found[0].message.contains("210987654321"));
        assert!(found[0].message.contains("left as it is"));
    }

    fn app_with(inbound: Inbound) -> Inventory {
        use palisade_providers::Function;
        Inventory {
            target: "prod-azure".into(),
            functions: vec![Function {
                id: "/s/sites/func-x".into(),
                name: "func-x".into(),
                tags: Default::default(),
                placement: None,
                inbound: Some(inbound),
            }],
            ..Inventory::default()
        }
    }

    fn restriction(
        priority: u32,
        access: Access,
        peer: InboundPeer,
    ) -> palisade_providers::InboundRule {
        palisade_providers::InboundRule {
            name: format!("r{priority}"),
            priority,
            access,
            peer,
            headers: false,
        }
    }

    #[test]
    fn the_front_door_is_judged_in_order_with_its_default_action() {
        let set = example();
        let world =
            |inbound: Inbound| guardrail_findings(&set, &app_with(inbound), "no-world-ingress");
        let cidr = |s: &str| InboundPeer::Cidr(s.parse().unwrap());
        // App Service's default: open, and the finding names the default action.
        let open = world(Inbound {
            default_action: Access::Allow,
            rules: vec![],
        });
        assert_eq!(open.len(), 1, "{open:#?}");
        assert!(
            open[0].message.contains("default action"),
            "{}",
            open[0].message
        );
        assert_eq!(open[0].resource, ResourceAddr::function("func-x"));
        // Closed by default, a narrow allow: nothing to report.
        assert!(
            world(Inbound {
                default_action: Access::Deny,
                rules: vec![restriction(100, Access::Allow, cidr("203.0.113.0/24"))],
            })
            .is_empty()
        );
        // "Allow all" as a rule is the world; so is what could not be read.
        for peer in [
            InboundPeer::Any,
            InboundPeer::Unreadable("?".into()),
            cidr("0.0.0.0/0"),
        ] {
            let found = world(Inbound {
                default_action: Access::Deny,
                rules: vec![restriction(300, Access::Allow, peer.clone())],
            });
            assert_eq!(found.len(), 1, "{peer}: {found:#?}");
            assert!(
                found[0].message.contains("\"r300\""),
                "{}",
                found[0].message
            );
        }
        // A deny of everything before the allow takes it back; one with header filters,
        // or after it, does not.
        let shadowing = |deny_at: u32, headers: bool| {
            Inbound {
                default_action: Access::Deny,
                rules: vec![
                    palisade_providers::InboundRule {
                        headers,
                        ..restriction(deny_at, Access::Deny, InboundPeer::Any)
                    },
                    restriction(300, Access::Allow, InboundPeer::Any),
                ],
            }
            .normalised()
        };
        assert!(world(shadowing(100, false)).is_empty());
        assert_eq!(world(shadowing(100, true)).len(), 1);
        assert_eq!(world(shadowing(400, false)).len(), 1);
        // Halves of the world together are one breach.
        let halves = world(Inbound {
            default_action: Access::Deny,
            rules: vec![
                restriction(100, Access::Allow, cidr("0.0.0.0/1")),
                restriction(110, Access::Allow, cidr("128.0.0.0/1")),
            ],
        });
        assert_eq!(halves.len(), 1, "{halves:#?}");
        assert!(
            halves[0].message.contains("together"),
            "{}",
            halves[0].message
        );
    }

    #[test]
    fn what_the_front_door_cannot_read_or_place_fails_closed() {
        let set = example();
        let world =
            |inbound: Inbound| guardrail_findings(&set, &app_with(inbound), "no-world-ingress");
        let open_after = |first: palisade_providers::InboundRule| {
            world(Inbound {
                default_action: Access::Deny,
                rules: vec![first, restriction(300, Access::Allow, InboundPeer::Any)],
            })
        };
        // A deny whose source cannot be read hides nothing.
        assert_eq!(
            open_after(restriction(
                10,
                Access::Deny,
                InboundPeer::Unreadable("junk".into())
            ))
            .len(),
            1
        );
        // A deny at the same priority as the allow does not hide it either.
        assert_eq!(
            open_after(restriction(300, Access::Deny, InboundPeer::Any)).len(),
            1
        );
        // An allow from a subnet outside the target may come from anywhere.
        let elsewhere = world(Inbound {
            default_action: Access::Deny,
            rules: vec![restriction(
                100,
                Access::Allow,
                InboundPeer::Subnet("/subscriptions/other/virtualNetworks/v/subnets/s".into()),
            )],
        });
        assert_eq!(elsewhere.len(), 1, "{elsewhere:#?}");
        // Unsorted (a snapshot): judged in priority order all the same.
        let unsorted = Inbound {
            default_action: Access::Deny,
            rules: vec![
                restriction(300, Access::Allow, InboundPeer::Any),
                restriction(10, Access::Deny, InboundPeer::Any),
            ],
        };
        assert!(world(unsorted).is_empty());
    }
}
