//! Checks that need nothing but the policy files: references, cloud fit, quotas that can
//! be counted from the text, NSG priorities, overlapping selectors, one-sided rules.
//! One file (about 650 lines) because it is a flat list of independent checks, each a
//! function, and the quotas they share are its public constants.

use std::collections::{BTreeMap, HashSet};

use palisade_providers::{Cloud, Ports};

use super::types::{Located, PeerSpec, PolicyDoc, PolicySet, PortSpec, RuleDirection, TargetDoc};
use super::{Diagnostic, DiagnosticKind as K};

/// Lambda: at most this many security groups per function.
pub const LAMBDA_MAX_GROUPS: usize = 5;
/// Lambda: at most this many subnets per function.
pub const LAMBDA_MAX_SUBNETS: usize = 16;
/// AWS: default quota of inbound (and, separately, outbound) rules per security group.
pub const AWS_MAX_RULES_PER_DIRECTION: usize = 60;
/// Azure: rules per NSG.
pub const AZURE_MAX_RULES: usize = 1000;
/// Azure NSG priority range.
pub const NSG_PRIORITY: std::ops::RangeInclusive<u16> = 100..=4095;

/// The priority of the deny-all rules that end every managed NSG (inbound and outbound),
/// the lowest custom priority: only declared rules admit traffic, Azure's default rules
/// (`AllowVnetInBound`, `AllowInternetOutBound`, …) never get to.
pub const NSG_DEFAULT_DENY_PRIORITY: u16 = 4096;

/// Default NSG priority of the `index`-th allow rule of a direction: 100, 110, 120, …
/// Each atomic rule it expands into takes the next number, so a rule may expand into at
/// most 10 NSG rules before it needs an explicit `priority`.
pub fn default_allow_priority(index: usize) -> u32 {
    100 + 10 * index as u32
}

/// Default NSG priority of the `index`-th deny rule of a direction: 3000, 3010, … —
/// after every allow rule, so that allows carve exceptions out of denies.
pub fn default_deny_priority(index: usize) -> u32 {
    3000 + 10 * index as u32
}

/// Run every file-only check on a loaded set.
pub fn validate(set: &PolicySet) -> Vec<Diagnostic> {
    let mut d = Vec::new();
    for t in &set.targets {
        check_name(&t.metadata.name, t, "Target", &mut d);
        check_target(t, &mut d);
    }
    for g in &set.guardrails {
        check_name(&g.metadata.name, g, "Guardrail", &mut d);
        if g.spec.controls.is_empty() {
            d.push(Diagnostic::error(
                K::MissingField,
                Some(g.here()),
                "a guardrail needs at least one control id in `controls` (e.g. CIS-AWS-5.2)",
            ));
        }
        for t in &g.spec.scope.targets {
            if set.target(t).is_none() {
                d.push(Diagnostic::error(
                    K::UnknownTarget,
                    Some(g.at(t)),
                    format!(
                        "guardrail scope names target {:?}, which is not defined",
                        t.value
                    ),
                ));
            }
        }
        for f in &g.spec.forbid {
            if matches!(f.peer, Some(PeerSpec::Policy(_) | PeerSpec::Endpoint(_))) {
                d.push(Diagnostic::error(
                    K::InvalidValue,
                    Some(g.at(f)),
                    "a forbidden peer must be a cidr, serviceTag, securityGroup or prefixList",
                ));
            }
        }
    }
    for p in &set.policies {
        check_name(&p.metadata.name, p, "FunctionPolicy", &mut d);
        check_policy(set, p, &mut d);
    }
    check_colliding_targets(set, &mut d);
    check_managed_groups(set, &mut d);
    check_overlaps(set, &mut d);
    check_one_sided(set, &mut d);
    d
}

/// Two Targets in one cloud scope see each other's `palisade-*` resources as unwanted,
/// prune them and release each other's functions, for ever: refused. (Partitioning one
/// scope between targets, e.g. by VPC, is not in the language yet.)
fn check_colliding_targets(set: &PolicySet, d: &mut Vec<Diagnostic>) {
    let scope = |t: &TargetDoc| -> Option<String> {
        match (&t.spec.aws, &t.spec.azure) {
            (Some(a), None) => Some(format!(
                "the AWS account {} in region {}",
                a.account_id.value,
                a.region.to_ascii_lowercase()
            )),
            (None, Some(z)) => Some(format!(
                "the Azure subscription {} and resource group {}",
                z.subscription_id.to_ascii_lowercase(),
                z.resource_group.to_ascii_lowercase()
            )),
            _ => None,
        }
    };
    let mut seen: BTreeMap<String, &TargetDoc> = BTreeMap::new();
    for t in &set.targets {
        let Some(key) = scope(t) else { continue };
        match seen.get(&key) {
            Some(first) => d.push(Diagnostic::error(
                K::OverlappingTargets,
                Some(t.here()),
                format!(
                    "Target {:?} covers {key}, as Target {:?} at {} does; two targets in one scope would delete each other's managed groups and release each other's functions — use one target",
                    t.name(),
                    first.name(),
                    first.here()
                ),
            )),
            None => {
                seen.insert(key, t);
            }
        }
    }
}

fn check_name<S>(name: &Located<String>, doc: &super::Doc<S>, kind: &str, d: &mut Vec<Diagnostic>) {
    let n = name.value.as_str();
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-');
    if !ok {
        d.push(Diagnostic::error(
            K::InvalidValue,
            Some(doc.at(name)),
            format!(
                "{kind} name {n:?} is invalid; expected 1-63 lower-case letters, digits and '-', not starting or ending with '-'"
            ),
        ));
    }
}

fn check_target(t: &TargetDoc, d: &mut Vec<Diagnostic>) {
    match (&t.spec.aws, &t.spec.azure) {
        (Some(aws), None) => {
            let id = &aws.account_id;
            if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit()) {
                d.push(Diagnostic::error(
                    K::InvalidValue,
                    Some(t.at(id)),
                    format!(
                        "accountId {:?} is invalid; expected 12 digits, quoted (\"123456789012\")",
                        id.value
                    ),
                ));
            }
        }
        (None, Some(_)) => {}
        _ => d.push(Diagnostic::error(
            K::InvalidValue,
            Some(t.here()),
            "a Target's spec needs exactly one of `aws` or `azure`",
        )),
    }
}

fn cloud_of(set: &PolicySet, p: &PolicyDoc) -> Option<Cloud> {
    set.target(&p.spec.target)
        .and_then(TargetDoc::to_target)
        .map(|t| t.scope.cloud())
}

fn check_policy(set: &PolicySet, p: &PolicyDoc, d: &mut Vec<Diagnostic>) {
    let spec = &p.spec;
    if set.target(&spec.target).is_none() {
        d.push(Diagnostic::error(
            K::UnknownTarget,
            Some(p.at(&spec.target)),
            format!(
                "target {:?} is not defined; expected the name of a Target document",
                spec.target.value
            ),
        ));
    }
    if spec.functions.is_empty() {
        d.push(Diagnostic::error(
            K::EmptySelection,
            Some(p.at(&spec.functions)),
            "`functions` selects nothing; give `names` and/or `tags`",
        ));
    }
    let mut seen = HashSet::new();
    for r in &spec.ingress {
        if !seen.insert(("ingress", r.name.as_str())) {
            d.push(Diagnostic::error(
                K::DuplicateName,
                Some(p.at(r)),
                format!(
                    "ingress rule name {:?} is used twice in this policy",
                    r.name
                ),
            ));
        }
    }
    for r in &spec.egress {
        if !seen.insert(("egress", r.name.as_str())) {
            d.push(Diagnostic::error(
                K::DuplicateName,
                Some(p.at(r)),
                format!("egress rule name {:?} is used twice in this policy", r.name),
            ));
        }
    }
    for r in &spec.deny {
        if !seen.insert(("deny", r.name.as_str())) {
            d.push(Diagnostic::error(
                K::DuplicateName,
                Some(p.at(r)),
                format!("deny rule name {:?} is used twice in this policy", r.name),
            ));
        }
        let (used, unused) = match r.direction {
            RuleDirection::Egress => (&r.to, &r.from),
            RuleDirection::Ingress => (&r.from, &r.to),
        };
        if used.is_empty() || !unused.is_empty() {
            d.push(Diagnostic::error(
                K::InvalidValue,
                Some(p.at(r)),
                "a deny rule lists its peers in `to` for egress (the default) or `from` for ingress",
            ));
        }
    }
    for peer in all_peers(p) {
        check_peer(set, p, peer, d);
    }
    let Some(cloud) = cloud_of(set, p) else {
        return;
    };
    let net = &spec.network;
    match cloud {
        Cloud::Aws => {
            for (present, field) in [
                (net.vnet.is_some(), "network.vnet"),
                (net.subnet.is_some(), "network.subnet"),
            ] {
                if present {
                    d.push(wrong_cloud(
                        p,
                        &spec.network,
                        format!("`{field}` is for Azure targets; on AWS use `vpc` and `subnets`"),
                    ));
                }
            }
            if net.vpc.is_none() || net.subnets.is_none() {
                d.push(Diagnostic::error(
                    K::MissingField,
                    Some(p.at(&spec.network)),
                    "an AWS policy's `network` needs `vpc` (id or tags) and `subnets` (ids or tags)",
                ));
            }
            if let Some(s) = &net.subnets
                && s.ids.len() > LAMBDA_MAX_SUBNETS
            {
                d.push(Diagnostic::error(
                    K::LambdaQuota,
                    Some(p.at(s)),
                    format!("{} subnets listed; Lambda allows at most {LAMBDA_MAX_SUBNETS} per function", s.ids.len()),
                ));
            }
            if 1 + net.security_groups.len() > LAMBDA_MAX_GROUPS {
                d.push(Diagnostic::error(
                    K::LambdaQuota,
                    Some(p.at(&net.security_groups[0])),
                    format!(
                        "functions would get {} security groups (the managed one plus {} listed); Lambda allows at most {LAMBDA_MAX_GROUPS}",
                        1 + net.security_groups.len(),
                        net.security_groups.len()
                    ),
                ));
            }
            if let Some(f) = &spec.front_door {
                d.push(wrong_cloud(
                    p,
                    f,
                    "`frontDoor` is for Azure function apps' access restrictions; a Lambda function has no network ingress".to_string(),
                ));
            }
            if let Some(dd) = &spec.default_deny {
                d.push(wrong_cloud(
                    p,
                    dd,
                    "`defaultDeny` is for Azure NSGs; an AWS security group admits only what its rules say".to_string(),
                ));
            }
            for r in &spec.deny {
                d.push(wrong_cloud(
                    p,
                    r,
                    "`deny` rules need an Azure target: AWS security groups can only allow, and everything not allowed is already denied".to_string(),
                ));
            }
            for (dir, count) in [
                (
                    "ingress",
                    atomic_count(spec.ingress.iter().map(|r| (&r.from, &r.ports))),
                ),
                (
                    "egress",
                    atomic_count(spec.egress.iter().map(|r| (&r.to, &r.ports))),
                ),
            ] {
                if count > AWS_MAX_RULES_PER_DIRECTION {
                    d.push(Diagnostic::error(
                        K::RuleQuota,
                        Some(p.here()),
                        format!("{count} {dir} rules after expansion; a security group holds at most {AWS_MAX_RULES_PER_DIRECTION} per direction by default"),
                    ));
                }
            }
            for e in &spec.endpoints {
                if e.service.is_none()
                    || e.resource_id.is_some()
                    || e.group_id.is_some()
                    || e.subnet.is_some()
                {
                    d.push(wrong_cloud(p, e, "an AWS endpoint takes `service` (and optionally `type`, `privateDns`), not `resourceId`/`groupId`/`subnet`".to_string()));
                }
            }
        }
        Cloud::Azure => {
            for (present, field) in [
                (net.vpc.is_some(), "network.vpc"),
                (net.subnets.is_some(), "network.subnets"),
                (!net.security_groups.is_empty(), "network.securityGroups"),
            ] {
                if present {
                    d.push(wrong_cloud(
                        p,
                        &spec.network,
                        format!("`{field}` is for AWS targets; on Azure use `vnet` and `subnet`"),
                    ));
                }
            }
            if net.vnet.is_none() || net.subnet.is_none() {
                d.push(Diagnostic::error(
                    K::MissingField,
                    Some(p.at(&spec.network)),
                    "an Azure policy's `network` needs `vnet` and `subnet` (the function app's integration subnet)",
                ));
            }
            for e in &spec.endpoints {
                if e.resource_id.is_none()
                    || e.group_id.is_none()
                    || e.subnet.is_none()
                    || e.service.is_some()
                    || e.endpoint_type.is_some()
                {
                    d.push(wrong_cloud(p, e, "an Azure endpoint takes `resourceId`, `groupId` and `subnet`, not `service`/`type`".to_string()));
                }
            }
            for port in all_ports(p) {
                let v = port.value.0;
                if v.icmp.is_some() || v.protocol == palisade_providers::Protocol::Icmpv6 {
                    d.push(wrong_cloud(
                        p,
                        port,
                        format!("`{v}`: NSG rules cannot restrict ICMP types or codes, nor name ICMPv6 (Azure's `Icmp` admits every ICMP type); use `icmp`"),
                    ));
                }
            }
            check_priorities(p, d);
        }
    }
}

/// Every port specification a policy names, with its position.
fn all_ports(p: &PolicyDoc) -> impl Iterator<Item = &Located<PortSpec>> {
    let s = &p.spec;
    s.ingress
        .iter()
        .flat_map(|r| r.ports.iter())
        .chain(s.egress.iter().flat_map(|r| r.ports.iter()))
        .chain(s.deny.iter().flat_map(|r| r.ports.iter()))
}

fn wrong_cloud<T>(p: &PolicyDoc, at: &Located<T>, msg: String) -> Diagnostic {
    Diagnostic::error(K::WrongCloud, Some(p.at(at)), msg)
}

fn atomic_count<'a>(
    rules: impl Iterator<Item = (&'a Vec<Located<PeerSpec>>, &'a Vec<Located<PortSpec>>)>,
) -> usize {
    rules.map(|(peers, ports)| peers.len() * ports.len()).sum()
}

/// Every peer a policy names, with its position.
pub(crate) fn all_peers(p: &PolicyDoc) -> impl Iterator<Item = &Located<PeerSpec>> {
    let s = &p.spec;
    s.ingress
        .iter()
        .flat_map(|r| r.from.iter())
        .chain(s.egress.iter().flat_map(|r| r.to.iter()))
        .chain(s.deny.iter().flat_map(|r| r.to.iter().chain(r.from.iter())))
}

fn check_peer(set: &PolicySet, p: &PolicyDoc, peer: &Located<PeerSpec>, d: &mut Vec<Diagnostic>) {
    let cloud = cloud_of(set, p);
    match &peer.value {
        PeerSpec::Policy(name) => match set.policy(name) {
            None => d.push(Diagnostic::error(
                K::UnknownPolicy,
                Some(p.at(peer)),
                format!("peer names policy {name:?}, which is not defined"),
            )),
            Some(other) if other.spec.target.value != p.spec.target.value => d.push(Diagnostic::error(
                K::UnknownPolicy,
                Some(p.at(peer)),
                format!(
                    "peer names policy {name:?} of target {:?}; a policy peer must be in the same target ({:?})",
                    other.spec.target.value, p.spec.target.value
                ),
            )),
            Some(_) => {}
        },
        PeerSpec::Endpoint(name) => {
            let declared = set
                .policies_of(&p.spec.target)
                .flat_map(|q| q.spec.endpoints.iter())
                .any(|e| e.peer_name() == Some(name.as_str()));
            if !declared {
                d.push(Diagnostic::error(
                    K::UnknownEndpoint,
                    Some(p.at(peer)),
                    format!("peer names endpoint {name:?}, but no policy of target {:?} declares it in `endpoints`", p.spec.target.value),
                ));
            }
        }
        PeerSpec::ServiceTag(_) if cloud == Some(Cloud::Aws) => d.push(wrong_cloud(
            p,
            peer,
            "`serviceTag` peers are Azure's; on AWS use `prefixList`, `cidr` or `endpoint`".to_string(),
        )),
        PeerSpec::SecurityGroup(_) | PeerSpec::PrefixList(_) if cloud == Some(Cloud::Azure) => d.push(wrong_cloud(
            p,
            peer,
            "`securityGroup` and `prefixList` peers are AWS's; on Azure use `serviceTag`, `cidr`, `policy` or `endpoint`".to_string(),
        )),
        _ => {}
    }
}

/// `managedGroup`: an id of the target's cloud and scope, named by one policy only,
/// and never also used by id elsewhere (as `securityGroup:` or `network.securityGroups`:
/// once taken over, a group is named by its policy).
fn check_managed_groups(set: &PolicySet, d: &mut Vec<Diagnostic>) {
    let mut named: BTreeMap<String, &PolicyDoc> = BTreeMap::new();
    for p in &set.policies {
        let Some(m) = &p.spec.managed_group else {
            continue;
        };
        let id = m.id.trim();
        let scope = set.target(&p.spec.target).and_then(|t| t.to_target());
        let wrong = match scope.as_ref().map(|t| &t.scope) {
            Some(palisade_providers::TargetScope::Aws { .. }) => {
                let hex = id.strip_prefix("sg-").unwrap_or("");
                (!(8..=17).contains(&hex.len())
                    || !hex.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| format!("managedGroup id {id:?} is not a security group id (sg- and 8 to 17 hex digits)"))
            }
            Some(palisade_providers::TargetScope::Azure {
                subscription_id,
                resource_group,
                ..
            }) => {
                let want = format!(
                    "/subscriptions/{subscription_id}/resourceGroups/{resource_group}/providers/Microsoft.Network/networkSecurityGroups/"
                );
                let name = id
                    .get(..want.len())
                    .filter(|head| head.eq_ignore_ascii_case(&want))
                    .map(|_| &id[want.len()..]);
                match name {
                    Some(n) if !n.is_empty() && !n.contains('/') && n.len() <= 80 => None,
                    _ => Some(format!(
                        "managedGroup id {id:?} is not an NSG of the target's resource group: expected {want}NAME"
                    )),
                }
            }
            None => None,
        };
        if let Some(msg) = wrong {
            d.push(Diagnostic::error(K::InvalidValue, Some(p.at(m)), msg));
            continue;
        }
        if let Some(first) = named.insert(id.to_ascii_lowercase(), p) {
            d.push(Diagnostic::error(
                K::OverlappingSelection,
                Some(p.at(m)),
                format!(
                    "group {id} is the managedGroup of both {:?} ({}) and {:?}; a group has one owner",
                    first.name(),
                    first.at(first.spec.managed_group.as_ref().unwrap_or(m)),
                    p.name()
                ),
            ));
        }
    }
    for p in &set.policies {
        let by_id = p
            .spec
            .network
            .security_groups
            .iter()
            .map(|g| (g.value.as_str(), p.at(g)))
            .chain(all_peers(p).filter_map(|peer| match &peer.value {
                PeerSpec::SecurityGroup(g) => Some((g.as_str(), p.at(peer))),
                _ => None,
            }));
        for (id, at) in by_id {
            if let Some(owner) = named.get(&id.trim().to_ascii_lowercase()) {
                d.push(Diagnostic::error(
                    K::InvalidValue,
                    Some(at),
                    format!(
                        "{id} is the managedGroup of policy {:?}; name it as `policy: {}` (a peer) or let that policy's functions hold it",
                        owner.name(),
                        owner.name()
                    ),
                ));
            }
        }
    }
}

/// NSG priorities of a policy, as compile will assign them (one peer counted as one
/// prefix; compile checks again with the real expansion).
fn check_priorities(p: &PolicyDoc, d: &mut Vec<Diagnostic>) {
    let s = &p.spec;
    let mut used: BTreeMap<(RuleDirection, u32), String> = BTreeMap::new();
    let mut claim = |dir: RuleDirection,
                     base: u32,
                     n: usize,
                     explicit: bool,
                     name: &str,
                     loc,
                     d: &mut Vec<Diagnostic>| {
        let last = base + n.saturating_sub(1) as u32;
        if base < u32::from(*NSG_PRIORITY.start()) || last > u32::from(*NSG_PRIORITY.end()) {
            d.push(Diagnostic::error(
                K::NsgPriority,
                Some(loc),
                format!("rule {name:?} needs NSG priorities {base}-{last}; declared rules take 100-4095 (4096 is the deny-all that ends every managed NSG)"),
            ));
            return;
        }
        if !explicit && n > 10 {
            d.push(Diagnostic::error(
                K::NsgPriority,
                Some(loc),
                format!("rule {name:?} expands into {n} NSG rules, more than the 10 priorities reserved per rule; set `priority` explicitly or split it"),
            ));
            return;
        }
        for prio in base..=last {
            if let Some(other) = used.insert((dir, prio), name.to_string()) {
                d.push(Diagnostic::error(
                    K::NsgPriority,
                    Some(loc),
                    format!("rule {name:?} and rule {other:?} both need {dir:?} priority {prio}; priorities must be unique per direction"),
                ));
                return;
            }
        }
    };
    for (i, r) in s.ingress.iter().enumerate() {
        let (base, explicit) = r
            .priority
            .as_ref()
            .map_or((default_allow_priority(i), false), |p| {
                (u32::from(p.value), true)
            });
        let loc = r.priority.as_ref().map_or_else(|| p.at(r), |x| p.at(x));
        claim(
            RuleDirection::Ingress,
            base,
            r.from.len() * r.ports.len(),
            explicit,
            &r.name,
            loc,
            d,
        );
    }
    for (i, r) in s.egress.iter().enumerate() {
        let (base, explicit) = r
            .priority
            .as_ref()
            .map_or((default_allow_priority(i), false), |p| {
                (u32::from(p.value), true)
            });
        let loc = r.priority.as_ref().map_or_else(|| p.at(r), |x| p.at(x));
        claim(
            RuleDirection::Egress,
            base,
            r.to.len() * r.ports.len(),
            explicit,
            &r.name,
            loc,
            d,
        );
    }
    let mut deny_index: BTreeMap<RuleDirection, usize> = BTreeMap::new();
    for r in &s.deny {
        let i = deny_index.entry(r.direction).or_default();
        let (base, explicit) = r
            .priority
            .as_ref()
            .map_or((default_deny_priority(*i), false), |p| {
                (u32::from(p.value), true)
            });
        *i += 1;
        let loc = r.priority.as_ref().map_or_else(|| p.at(r), |x| p.at(x));
        let peers = r.to.len() + r.from.len();
        claim(
            r.direction,
            base,
            peers * r.ports.len(),
            explicit,
            &r.name,
            loc,
            d,
        );
    }
}

impl PartialOrd for RuleDirection {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for RuleDirection {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (*self as u8).cmp(&(*other as u8))
    }
}

/// Two policies of one target whose selectors can pick the same function.
fn check_overlaps(set: &PolicySet, d: &mut Vec<Diagnostic>) {
    let ps = &set.policies;
    for (i, a) in ps.iter().enumerate() {
        for b in &ps[i + 1..] {
            if a.spec.target.value != b.spec.target.value {
                continue;
            }
            let (fa, fb) = (&a.spec.functions.value, &b.spec.functions.value);
            let tags_compatible = fa
                .tags
                .iter()
                .all(|(k, v)| fb.tags.get(k).is_none_or(|w| w == v));
            if !tags_compatible || fa.is_empty() || fb.is_empty() {
                continue;
            }
            let common: Vec<&String> = fa.names.iter().filter(|n| fb.names.contains(n)).collect();
            if !fa.names.is_empty() && !fb.names.is_empty() {
                if !common.is_empty() {
                    d.push(Diagnostic::error(
                        K::OverlappingSelection,
                        Some(b.at(&b.spec.functions)),
                        format!(
                            "function(s) {} are selected by both {:?} and {:?} ({}); a function may be governed by one policy",
                            common.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", "),
                            a.name(),
                            b.name(),
                            a.at(&a.spec.functions)
                        ),
                    ));
                }
            } else if fa.names.is_empty() && fb.names.is_empty() {
                d.push(Diagnostic::warning(
                    K::OverlappingSelection,
                    Some(b.at(&b.spec.functions)),
                    format!(
                        "selectors of {:?} and {:?} ({}) can match the same function; `plan` checks this against the inventory",
                        a.name(),
                        b.name(),
                        a.at(&a.spec.functions)
                    ),
                ));
            }
        }
    }
}

fn covers(admitted: &[Located<PortSpec>], wanted: &Ports) -> bool {
    admitted.iter().any(|p| p.0.contains(wanted))
}

/// A may send to B but B does not admit A (error), or B admits A but A may not send
/// (warning: a dead rule).
fn check_one_sided(set: &PolicySet, d: &mut Vec<Diagnostic>) {
    for a in &set.policies {
        for rule in &a.spec.egress {
            for peer in &rule.to {
                let PeerSpec::Policy(bname) = &peer.value else {
                    continue;
                };
                let Some(b) = set.policy(bname) else { continue };
                let admitted: Vec<Located<PortSpec>> = b
                    .spec
                    .ingress
                    .iter()
                    .filter(|r| {
                        r.from
                            .iter()
                            .any(|f| f.value == PeerSpec::Policy(a.name().to_string()))
                    })
                    .flat_map(|r| r.ports.iter().cloned())
                    .collect();
                for port in &rule.ports {
                    if !covers(&admitted, &port.0) {
                        d.push(Diagnostic::error(
                            K::OneSidedRule,
                            Some(a.at(port)),
                            format!(
                                "{:?} may send {} to {:?}, but {:?} does not admit {:?} on {}; add `from: [{{policy: {}}}]` with ports [{}] to its ingress",
                                a.name(), port.0, bname, bname, a.name(), port.0, a.name(), port.0
                            ),
                        ));
                    }
                }
            }
        }
        for rule in &a.spec.ingress {
            for peer in &rule.from {
                let PeerSpec::Policy(bname) = &peer.value else {
                    continue;
                };
                let Some(b) = set.policy(bname) else { continue };
                let allowed: Vec<Located<PortSpec>> = b
                    .spec
                    .egress
                    .iter()
                    .filter(|r| {
                        r.to.iter()
                            .any(|f| f.value == PeerSpec::Policy(a.name().to_string()))
                    })
                    .flat_map(|r| r.ports.iter().cloned())
                    .collect();
                for port in &rule.ports {
                    if !covers(&allowed, &port.0) {
                        d.push(Diagnostic::warning(
                            K::OneSidedRule,
                            Some(a.at(port)),
                            format!(
                                "{:?} admits {:?} on {}, but {:?}'s egress does not allow it; the rule has no effect",
                                a.name(), bname, port.0, bname
                            ),
                        ));
                    }
                }
            }
        }
    }
}
