//! Policies + inventory → the desired state of one target.
//!
//! Selectors are resolved against the observed functions, VPCs and subnets; each policy
//! gets one managed security group / NSG; each interface endpoint gets a managed group
//! that admits every policy using it; rules are expanded into atomic tuples with
//! canonical CIDRs. The AWS default allow-all egress is absent unless a policy declares
//! it (default deny).
//!
//! Without an inventory (`palisade validate`), selectors resolve to nothing and peers
//! that need the cloud's ids stay symbolic; the rules are otherwise the same, so
//! guardrails can be checked on them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use palisade_providers::{
    Access, Cloud, Direction, EndpointKind, Function, GroupRef, Inventory, Peer, Placement, Rule,
    Subnet, Tags, model::ownership_tags,
};
use serde::{Deserialize, Serialize};

use crate::policy::validate::{
    AWS_MAX_RULES_PER_DIRECTION, AZURE_MAX_RULES, LAMBDA_MAX_SUBNETS, NSG_PRIORITY,
    default_allow_priority, default_deny_priority,
};
use crate::policy::{
    Diagnostic, DiagnosticKind as K, EndpointType, Located, Mode, PeerSpec, PolicyDoc, PolicySet,
    PortSpec, SourceLocation, TargetDoc,
};

/// Where a desired rule comes from, for findings and reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleOrigin {
    /// Policy name (or endpoint owner key for endpoint groups).
    pub policy: String,
    /// Rule name.
    pub rule: String,
    /// Where it is written.
    pub location: Option<SourceLocation>,
}

/// A managed security group / NSG as it should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredGroup {
    /// Owner key: the policy name, or `endpoint.SERVICE.VPC` for an endpoint's group.
    pub owner: String,
    /// Cloud name of the group.
    pub name: String,
    /// VPC id (AWS); empty on Azure.
    pub network: String,
    /// Group description.
    pub description: String,
    /// Enforce or audit.
    pub mode: Mode,
    /// The rules, each with where it was declared.
    #[serde(with = "rule_pairs")]
    pub rules: BTreeMap<Rule, RuleOrigin>,
}

/// A selected function's placement as it should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredPlacement {
    /// Function id.
    pub function: String,
    /// Function name.
    pub name: String,
    /// The policy that selects it.
    pub policy: String,
    /// Enforce or audit.
    pub mode: Mode,
    /// Where it should run.
    pub placement: Placement,
}

/// A managed endpoint as it should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredEndpoint {
    /// Owner key.
    pub owner: String,
    /// Service (AWS full name; Azure `resourceId#groupId`).
    pub service: String,
    /// Interface, gateway or private.
    pub kind: EndpointKind,
    /// VPC / VNet id.
    pub network: String,
    /// Subnets, sorted.
    pub subnets: Vec<String>,
    /// Groups, sorted.
    pub groups: Vec<GroupRef>,
    /// Route tables, sorted.
    pub route_tables: Vec<String>,
    /// Private DNS.
    pub private_dns: bool,
    /// Enforce if any policy that declares it enforces.
    pub mode: Mode,
    /// Policies that declare it.
    pub policies: Vec<String>,
}

/// An Azure subnet's NSG association as it should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredSubnetGroup {
    /// Subnet id.
    pub subnet: String,
    /// The managed NSG.
    pub group: GroupRef,
    /// The policy whose integration subnet this is.
    pub policy: String,
    /// Enforce or audit.
    pub mode: Mode,
}

/// The desired state of one target.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DesiredState {
    /// Target name.
    pub target: String,
    /// Managed groups by owner key.
    pub groups: BTreeMap<String, DesiredGroup>,
    /// Placements by function id.
    pub placements: BTreeMap<String, DesiredPlacement>,
    /// Endpoints by owner key.
    pub endpoints: BTreeMap<String, DesiredEndpoint>,
    /// Azure subnet associations by subnet id (lower-cased).
    pub subnet_groups: BTreeMap<String, DesiredSubnetGroup>,
    /// Function ids selected by each policy.
    pub selected: BTreeMap<String, Vec<String>>,
    /// Policies whose network could not be resolved against what is observed: their
    /// group and the functions they select are left as they are.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub frozen: BTreeSet<String>,
    /// Functions in conflict (selected by two policies through their tags): left as
    /// they are.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub conflicted: BTreeSet<String>,
}

/// A map keyed by [`Rule`] as a list of pairs (JSON keys must be strings).
mod rule_pairs {
    use std::collections::BTreeMap;

    use palisade_providers::Rule;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, V: Serialize>(
        m: &BTreeMap<Rule, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>, V: Deserialize<'de>>(
        d: D,
    ) -> Result<BTreeMap<Rule, V>, D::Error> {
        Ok(Vec::<(Rule, V)>::deserialize(d)?.into_iter().collect())
    }
}

/// The result of compiling one target.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// What should be.
    pub desired: DesiredState,
    /// Problems found while resolving against the inventory.
    pub diagnostics: Vec<Diagnostic>,
    /// Errors that come from what is observed, not from Git alone (a function tagged
    /// into two policies, a network that matches twice or not at all, a 17th subnet).
    /// The affected function or policy is left alone ([`DesiredState::frozen`],
    /// [`DesiredState::conflicted`]); `validate --inventory` shows them as errors, the
    /// controller as findings, and enforces the rest of the target.
    pub conflicts: Vec<Diagnostic>,
}

/// Functions indexed by name and by tag, so selection does not scan every function for
/// every policy.
struct FunctionIndex<'a> {
    functions: &'a [Function],
    by_name: HashMap<&'a str, Vec<usize>>,
    by_tag: HashMap<(&'a str, &'a str), Vec<usize>>,
}

impl<'a> FunctionIndex<'a> {
    fn new(functions: &'a [Function]) -> Self {
        let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut by_tag: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (i, f) in functions.iter().enumerate() {
            by_name.entry(f.name.as_str()).or_default().push(i);
            for (k, v) in &f.tags {
                by_tag.entry((k.as_str(), v.as_str())).or_default().push(i);
            }
        }
        FunctionIndex {
            functions,
            by_name,
            by_tag,
        }
    }

    fn select(&self, sel: &crate::policy::FunctionSelector) -> Vec<usize> {
        let candidates: Vec<usize> = if !sel.names.is_empty() {
            sel.names
                .iter()
                .flat_map(|n| self.by_name.get(n.as_str()).into_iter().flatten().copied())
                .collect()
        } else {
            let smallest = sel
                .tags
                .iter()
                .map(|(k, v)| self.by_tag.get(&(k.as_str(), v.as_str())))
                .min_by_key(|p| p.map_or(0, Vec::len));
            match smallest {
                Some(Some(p)) => p.clone(),
                _ => Vec::new(),
            }
        };
        let mut out: Vec<usize> = candidates
            .into_iter()
            .filter(|&i| sel.matches(&self.functions[i].name, &self.functions[i].tags))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

fn tags_match(want: &BTreeMap<String, String>, have: &Tags) -> bool {
    want.iter().all(|(k, v)| have.get(k) == Some(v))
}

/// What one policy's `network` resolved to.
#[derive(Debug, Clone, Default)]
struct ResolvedNetwork {
    network: Option<String>,
    subnets: Vec<String>,
}

struct Ctx<'a> {
    cloud: Cloud,
    region: String,
    inv: Option<&'a Inventory>,
    nets: BTreeMap<String, ResolvedNetwork>,
    diags: Vec<Diagnostic>,
}

/// Compile the policies of `target` against `inventory` (or symbolically, without one).
pub fn compile(set: &PolicySet, target: &TargetDoc, inventory: Option<&Inventory>) -> Compiled {
    let Some(t) = target.to_target() else {
        return Compiled {
            desired: DesiredState::default(),
            diagnostics: vec![Diagnostic::error(
                K::InvalidValue,
                Some(target.here()),
                "a Target's spec needs exactly one of `aws` or `azure`",
            )],
            conflicts: Vec::new(),
        };
    };
    let region = match &t.scope {
        palisade_providers::TargetScope::Aws { region, .. } => region.clone(),
        palisade_providers::TargetScope::Azure { location, .. } => location.clone(),
    };
    let mut cx = Ctx {
        cloud: t.scope.cloud(),
        region,
        inv: inventory,
        nets: BTreeMap::new(),
        diags: Vec::new(),
    };
    let policies: Vec<&PolicyDoc> = set.policies_of(target.name()).collect();
    let mut desired = DesiredState {
        target: target.name().to_string(),
        ..DesiredState::default()
    };
    let mut conflicts = Vec::new();
    for p in &policies {
        let before = cx.diags.len();
        let net = resolve_network(&mut cx, p);
        // Against an inventory, a network that does not resolve is a conflict of this
        // policy with what is observed: the policy is left alone.
        if inventory.is_some() && cx.diags[before..].iter().any(Diagnostic::is_error) {
            desired.frozen.insert(p.name().to_string());
            let (errors, rest): (Vec<_>, Vec<_>) =
                cx.diags.drain(before..).partition(Diagnostic::is_error);
            conflicts.extend(errors);
            cx.diags.extend(rest);
        }
        cx.nets.insert(p.name().to_string(), net);
    }
    // Functions and placements.
    if let Some(inv) = inventory {
        let index = FunctionIndex::new(&inv.functions);
        let mut owner_of: HashMap<usize, &PolicyDoc> = HashMap::new();
        for p in &policies {
            let picked = index.select(&p.spec.functions);
            if picked.is_empty() {
                cx.diags.push(Diagnostic::warning(
                    K::EmptySelection,
                    Some(p.at(&p.spec.functions)),
                    format!(
                        "policy {:?} selects no function in target {:?}",
                        p.name(),
                        target.name()
                    ),
                ));
            }
            let net = cx.nets.get(p.name()).cloned().unwrap_or_default();
            let mut ids = Vec::with_capacity(picked.len());
            for i in picked {
                let f = &inv.functions[i];
                if let Some(first) = owner_of.insert(i, p) {
                    desired.conflicted.insert(f.id.clone());
                    conflicts.push(Diagnostic::error(
                        K::OverlappingSelection,
                        Some(p.at(&p.spec.functions)),
                        format!(
                            "function {:?} is selected by both {:?} ({}) and {:?}; a function may be governed by one policy",
                            f.name,
                            first.name(),
                            first.at(&first.spec.functions),
                            p.name()
                        ),
                    ));
                    continue;
                }
                ids.push(f.id.clone());
                let Some(network) = net.network.clone() else {
                    continue;
                };
                if net.subnets.is_empty() {
                    continue;
                }
                let mut groups = Vec::new();
                if cx.cloud == Cloud::Aws {
                    groups.push(GroupRef::Managed(p.name().to_string()));
                    groups.extend(
                        p.spec
                            .network
                            .security_groups
                            .iter()
                            .map(|g| GroupRef::Id(g.value.clone())),
                    );
                }
                desired.placements.insert(
                    f.id.clone(),
                    DesiredPlacement {
                        function: f.id.clone(),
                        name: f.name.clone(),
                        policy: p.name().to_string(),
                        mode: p.spec.mode,
                        placement: Placement {
                            network,
                            subnets: net.subnets.clone(),
                            groups,
                        }
                        .normalised(),
                    },
                );
            }
            desired.selected.insert(p.name().to_string(), ids);
        }
    }
    // Endpoints (before rules: rules may point at them).
    let endpoints = compile_endpoints(&mut cx, &policies);
    // Groups and rules.
    for p in &policies {
        let group = compile_group(&mut cx, p, &endpoints);
        desired.groups.insert(group.owner.clone(), group);
        if cx.cloud == Cloud::Azure
            && let Some(subnet) = cx
                .nets
                .get(p.name())
                .and_then(|n| n.subnets.first().cloned())
        {
            let key = subnet.to_ascii_lowercase();
            if let Some(other) = desired.subnet_groups.get(&key) {
                cx.diags.push(Diagnostic::error(
                    K::OverlappingSelection,
                    p.spec.network.subnet.as_ref().map(|s| p.at(s)),
                    format!(
                        "subnet {subnet} is the integration subnet of both {:?} and {:?}; a subnet has one NSG, so one policy per subnet",
                        other.policy,
                        p.name()
                    ),
                ));
            } else {
                desired.subnet_groups.insert(
                    key,
                    DesiredSubnetGroup {
                        subnet,
                        group: GroupRef::Managed(p.name().to_string()),
                        policy: p.name().to_string(),
                        mode: p.spec.mode,
                    },
                );
            }
        }
    }
    for (owner, ep) in endpoints {
        // An endpoint whose network does not resolve (its policies are frozen) is not
        // desired, and neither is its group.
        if inventory.is_some() && ep.network.is_empty() {
            continue;
        }
        if ep.kind == EndpointKind::Interface {
            let group = endpoint_group(&ep, &policies);
            desired.groups.insert(group.owner.clone(), group);
        }
        if inventory.is_some() && !ep.network.is_empty() {
            desired.endpoints.insert(owner, ep);
        }
    }
    for f in &desired.conflicted {
        desired.placements.remove(f);
    }
    Compiled {
        desired,
        diagnostics: cx.diags,
        conflicts,
    }
}

fn resolve_network(cx: &mut Ctx<'_>, p: &PolicyDoc) -> ResolvedNetwork {
    let Some(inv) = cx.inv else {
        return ResolvedNetwork::default();
    };
    let net = &p.spec.network;
    let mut out = ResolvedNetwork::default();
    match cx.cloud {
        Cloud::Aws => {
            let Some(vpc) = &net.vpc else { return out };
            let matches: Vec<&str> = inv
                .networks
                .iter()
                .filter(|n| match &vpc.id {
                    Some(id) => n.id == *id,
                    None => !vpc.tags.is_empty() && tags_match(&vpc.tags, &n.tags),
                })
                .map(|n| n.id.as_str())
                .collect();
            match matches.as_slice() {
                [one] => out.network = Some((*one).to_string()),
                [] => {
                    cx.diags.push(Diagnostic::error(
                        K::EmptySelection,
                        Some(p.at(vpc)),
                        "`network.vpc` matches no observed VPC",
                    ));
                    return out;
                }
                many => {
                    cx.diags.push(Diagnostic::error(
                        K::AmbiguousSelection,
                        Some(p.at(vpc)),
                        format!(
                            "`network.vpc` matches {} VPCs ({}); it must match exactly one",
                            many.len(),
                            many.join(", ")
                        ),
                    ));
                    return out;
                }
            }
            let vpc_id = out.network.clone().unwrap_or_default();
            let Some(sel) = &net.subnets else { return out };
            let subnets: Vec<&Subnet> = if sel.ids.is_empty() {
                inv.subnets
                    .iter()
                    .filter(|s| {
                        s.network == vpc_id
                            && !sel.tags.is_empty()
                            && tags_match(&sel.tags, &s.tags)
                    })
                    .collect()
            } else {
                let mut found = Vec::new();
                for id in &sel.ids {
                    match inv.subnets.iter().find(|s| s.id == *id) {
                        Some(s) if s.network == vpc_id => found.push(s),
                        Some(s) => cx.diags.push(Diagnostic::error(
                            K::InvalidValue,
                            Some(p.at(sel)),
                            format!(
                                "subnet {id} is in {}, not in the policy's VPC {vpc_id}",
                                s.network
                            ),
                        )),
                        None => cx.diags.push(Diagnostic::error(
                            K::EmptySelection,
                            Some(p.at(sel)),
                            format!("subnet {id} is not observed in the target"),
                        )),
                    }
                }
                found
            };
            if subnets.is_empty() {
                cx.diags.push(Diagnostic::error(
                    K::EmptySelection,
                    Some(p.at(sel)),
                    format!("`network.subnets` matches no subnet of {vpc_id}"),
                ));
            } else if subnets.len() > LAMBDA_MAX_SUBNETS {
                cx.diags.push(Diagnostic::error(
                    K::LambdaQuota,
                    Some(p.at(sel)),
                    format!("`network.subnets` matches {} subnets; Lambda allows at most {LAMBDA_MAX_SUBNETS} per function", subnets.len()),
                ));
            } else {
                out.subnets = subnets.iter().map(|s| s.id.clone()).collect();
                out.subnets.sort();
            }
        }
        Cloud::Azure => {
            let (Some(vnet), Some(subnet)) = (&net.vnet, &net.subnet) else {
                return out;
            };
            let Some(n) = inv
                .networks
                .iter()
                .find(|n| n.name.eq_ignore_ascii_case(vnet))
            else {
                cx.diags.push(Diagnostic::error(
                    K::EmptySelection,
                    Some(p.at(vnet)),
                    format!(
                        "VNet {:?} is not observed in the target's resource group",
                        vnet.value
                    ),
                ));
                return out;
            };
            out.network = Some(n.id.clone());
            match find_azure_subnet(inv, &n.id, subnet) {
                Some(s) => out.subnets = vec![s.id.clone()],
                None => cx.diags.push(Diagnostic::error(
                    K::EmptySelection,
                    Some(p.at(subnet)),
                    format!(
                        "subnet {:?} is not observed in VNet {:?}",
                        subnet.value, vnet.value
                    ),
                )),
            }
        }
    }
    out
}

fn find_azure_subnet<'a>(inv: &'a Inventory, network: &str, name: &str) -> Option<&'a Subnet> {
    inv.subnets
        .iter()
        .find(|s| s.network.eq_ignore_ascii_case(network) && s.name.eq_ignore_ascii_case(name))
}

/// Endpoints declared by the policies, merged per (service, network), keyed by owner key.
fn compile_endpoints(
    cx: &mut Ctx<'_>,
    policies: &[&PolicyDoc],
) -> BTreeMap<String, DesiredEndpoint> {
    let mut out: BTreeMap<String, DesiredEndpoint> = BTreeMap::new();
    for p in policies {
        let net = cx.nets.get(p.name()).cloned().unwrap_or_default();
        for e in &p.spec.endpoints {
            let Some(key) = endpoint_key(cx, p, e) else {
                continue;
            };
            let network = net.network.clone().unwrap_or_default();
            let entry = out.entry(key.clone()).or_insert_with(|| {
                let (service, kind, private_dns) = match cx.cloud {
                    Cloud::Aws => (
                        full_service(&cx.region, e.service.as_deref().unwrap_or_default()),
                        match e.endpoint_type.unwrap_or_default() {
                            EndpointType::Interface => EndpointKind::Interface,
                            EndpointType::Gateway => EndpointKind::Gateway,
                        },
                        e.endpoint_type.unwrap_or_default() == EndpointType::Interface
                            && e.private_dns.unwrap_or(true),
                    ),
                    Cloud::Azure => (
                        format!(
                            "{}#{}",
                            e.resource_id
                                .as_deref()
                                .unwrap_or_default()
                                .to_ascii_lowercase(),
                            e.group_id.as_deref().unwrap_or_default()
                        ),
                        EndpointKind::Private,
                        false,
                    ),
                };
                DesiredEndpoint {
                    owner: key.clone(),
                    service,
                    kind,
                    network: network.clone(),
                    subnets: Vec::new(),
                    groups: Vec::new(),
                    route_tables: Vec::new(),
                    private_dns,
                    mode: Mode::Audit,
                    policies: Vec::new(),
                }
            });
            if p.spec.mode == Mode::Enforce {
                entry.mode = Mode::Enforce;
            }
            entry.policies.push(p.name().to_string());
            let Some(inv) = cx.inv else { continue };
            match entry.kind {
                EndpointKind::Interface => {
                    entry.groups = vec![GroupRef::Managed(key.clone())];
                    entry.subnets.extend(net.subnets.iter().cloned());
                }
                EndpointKind::Gateway => {
                    for s in &net.subnets {
                        if let Some(rt) = inv
                            .subnets
                            .iter()
                            .find(|x| x.id == *s)
                            .and_then(|x| x.route_table.clone())
                        {
                            entry.route_tables.push(rt);
                        }
                    }
                }
                EndpointKind::Private => {
                    let sub = e.subnet.as_deref().unwrap_or_default();
                    match find_azure_subnet(inv, &network, sub) {
                        Some(s) => entry.subnets.push(s.id.clone()),
                        None if !network.is_empty() => cx.diags.push(Diagnostic::error(
                            K::EmptySelection,
                            Some(p.at(e)),
                            format!("endpoint subnet {sub:?} is not observed in the policy's VNet"),
                        )),
                        None => {}
                    }
                }
            }
        }
    }
    for ep in out.values_mut() {
        ep.policies.sort();
        ep.policies.dedup();
        ep.route_tables.sort();
        ep.route_tables.dedup();
        ep.subnets.sort();
        ep.subnets.dedup();
        if ep.kind == EndpointKind::Interface
            && let Some(inv) = cx.inv
        {
            // AWS allows one interface-endpoint subnet per availability zone.
            let mut by_zone: BTreeMap<String, String> = BTreeMap::new();
            for s in &ep.subnets {
                let zone = inv
                    .subnets
                    .iter()
                    .find(|x| x.id == *s)
                    .and_then(|x| x.zone.clone())
                    .unwrap_or_else(|| s.clone());
                by_zone.entry(zone).or_insert_with(|| s.clone());
            }
            ep.subnets = by_zone.into_values().collect();
            ep.subnets.sort();
        }
    }
    out
}

fn full_service(region: &str, service: &str) -> String {
    if service.contains('.') {
        service.to_string()
    } else {
        format!("com.amazonaws.{region}.{service}")
    }
}

/// Owner key of an endpoint a policy declares.
fn endpoint_key(cx: &Ctx<'_>, p: &PolicyDoc, e: &crate::policy::EndpointSpec) -> Option<String> {
    let name = e.peer_name()?;
    match cx.cloud {
        Cloud::Aws => {
            let net = cx.nets.get(p.name()).and_then(|n| n.network.clone());
            Some(match net {
                Some(vpc) => format!("endpoint.{name}.{vpc}"),
                None => format!("endpoint.{name}"),
            })
        }
        Cloud::Azure => Some(format!(
            "endpoint.{name}.{}",
            e.group_id.as_deref().unwrap_or_default()
        )),
    }
}

fn endpoint_group(ep: &DesiredEndpoint, policies: &[&PolicyDoc]) -> DesiredGroup {
    let short = ep
        .service
        .rsplit('.')
        .next()
        .unwrap_or(&ep.service)
        .to_string();
    let mut rules = BTreeMap::new();
    // Every policy that declares the endpoint or sends to it may reach it on HTTPS.
    let users: BTreeSet<&str> = policies
        .iter()
        .filter(|p| {
            ep.policies.iter().any(|n| n == p.name())
                || p.spec.egress.iter().any(|r| {
                    r.to.iter()
                        .any(|t| t.value == PeerSpec::Endpoint(short.clone()))
                })
        })
        .map(|p| p.name())
        .collect();
    for user in users {
        let rule = Rule {
            description: Some(format!("{user}/endpoint")),
            ..Rule::allow(
                Direction::Ingress,
                palisade_providers::Ports {
                    protocol: palisade_providers::Protocol::Tcp,
                    range: Some(palisade_providers::PortRange { from: 443, to: 443 }),
                },
                Peer::Group(GroupRef::Managed(user.to_string())),
            )
        };
        rules.insert(
            rule,
            RuleOrigin {
                policy: user.to_string(),
                rule: format!("endpoint {short}"),
                location: None,
            },
        );
    }
    DesiredGroup {
        owner: ep.owner.clone(),
        name: format!("palisade-{}", ep.owner.replace('.', "-")),
        network: ep.network.clone(),
        description: format!("Palisade: interface endpoint {}", ep.service),
        mode: ep.mode,
        rules,
    }
}

/// One rule spec, flattened: direction, access, peers, ports, explicit priority.
struct FlatRule<'a> {
    name: &'a str,
    direction: Direction,
    access: Access,
    peers: &'a [Located<PeerSpec>],
    ports: &'a [Located<PortSpec>],
    priority: Option<u16>,
    location: SourceLocation,
}

fn flat_rules(p: &PolicyDoc) -> Vec<FlatRule<'_>> {
    let s = &p.spec;
    let mut out = Vec::new();
    for r in &s.ingress {
        out.push(FlatRule {
            name: &r.name,
            direction: Direction::Ingress,
            access: Access::Allow,
            peers: &r.from,
            ports: &r.ports,
            priority: r.priority.as_ref().map(|x| x.value),
            location: p.at(r),
        });
    }
    for r in &s.egress {
        out.push(FlatRule {
            name: &r.name,
            direction: Direction::Egress,
            access: Access::Allow,
            peers: &r.to,
            ports: &r.ports,
            priority: r.priority.as_ref().map(|x| x.value),
            location: p.at(r),
        });
    }
    for r in &s.deny {
        let peers = if r.to.is_empty() { &r.from } else { &r.to };
        out.push(FlatRule {
            name: &r.name,
            direction: r.direction.into(),
            access: Access::Deny,
            peers,
            ports: &r.ports,
            priority: r.priority.as_ref().map(|x| x.value),
            location: p.at(r),
        });
    }
    out
}

fn compile_group(
    cx: &mut Ctx<'_>,
    p: &PolicyDoc,
    endpoints: &BTreeMap<String, DesiredEndpoint>,
) -> DesiredGroup {
    let net = cx.nets.get(p.name()).cloned().unwrap_or_default();
    let mut rules = BTreeMap::new();
    let mut index: HashMap<(Direction, Access), usize> = HashMap::new();
    for fr in flat_rules(p) {
        let peers: Vec<Peer> = fr
            .peers
            .iter()
            .flat_map(|peer| resolve_peer(cx, p, peer, endpoints))
            .collect();
        let i = index.entry((fr.direction, fr.access)).or_default();
        let base = match (cx.cloud, fr.priority, fr.access) {
            (Cloud::Aws, _, _) => None,
            (Cloud::Azure, Some(prio), _) => Some(u32::from(prio)),
            (Cloud::Azure, None, Access::Allow) => Some(default_allow_priority(*i)),
            (Cloud::Azure, None, Access::Deny) => Some(default_deny_priority(*i)),
        };
        *i += 1;
        let mut n = 0u32;
        for peer in &peers {
            for port in fr.ports {
                let priority = match base {
                    Some(b) => {
                        let prio = b + n;
                        if !NSG_PRIORITY.contains(&u16::try_from(prio).unwrap_or(u16::MAX))
                            || (fr.priority.is_none() && n >= 10)
                        {
                            cx.diags.push(Diagnostic::error(
                                K::NsgPriority,
                                Some(fr.location.clone()),
                                format!("rule {:?} expands into more NSG rules than its priorities allow (needs {prio}); set `priority` explicitly or split it", fr.name),
                            ));
                            break;
                        }
                        Some(u16::try_from(prio).unwrap_or(u16::MAX))
                    }
                    None => None,
                };
                n += 1;
                let rule = Rule {
                    direction: fr.direction,
                    ports: port.0,
                    peer: peer.clone(),
                    access: fr.access,
                    priority,
                    description: Some(format!("{}/{}", p.name(), fr.name)),
                    id: None,
                };
                rules.entry(rule).or_insert_with(|| RuleOrigin {
                    policy: p.name().to_string(),
                    rule: fr.name.to_string(),
                    location: Some(SourceLocation::new(p.file.clone(), port.line, port.column)),
                });
            }
        }
    }
    let count = |d: Direction| rules.keys().filter(|r: &&Rule| r.direction == d).count();
    match cx.cloud {
        Cloud::Aws => {
            for d in [Direction::Ingress, Direction::Egress] {
                if count(d) > AWS_MAX_RULES_PER_DIRECTION {
                    cx.diags.push(Diagnostic::error(
                        K::RuleQuota,
                        Some(p.here()),
                        format!("{} {d} rules after expansion; a security group holds at most {AWS_MAX_RULES_PER_DIRECTION} per direction by default", count(d)),
                    ));
                }
            }
        }
        Cloud::Azure => {
            if rules.len() > AZURE_MAX_RULES {
                cx.diags.push(Diagnostic::error(
                    K::RuleQuota,
                    Some(p.here()),
                    format!(
                        "{} NSG rules after expansion; an NSG holds at most {AZURE_MAX_RULES}",
                        rules.len()
                    ),
                ));
            }
        }
    }
    DesiredGroup {
        owner: p.name().to_string(),
        name: format!("palisade-{}", p.name()),
        network: if cx.cloud == Cloud::Aws {
            net.network.unwrap_or_default()
        } else {
            String::new()
        },
        description: format!("Palisade: function policy {}", p.name()),
        mode: p.spec.mode,
        rules,
    }
}

fn resolve_peer(
    cx: &mut Ctx<'_>,
    p: &PolicyDoc,
    peer: &Located<PeerSpec>,
    endpoints: &BTreeMap<String, DesiredEndpoint>,
) -> Vec<Peer> {
    match &peer.value {
        PeerSpec::Cidr(c) => vec![Peer::cidr(c.0)],
        PeerSpec::SecurityGroup(id) => vec![Peer::Group(GroupRef::Id(id.clone()))],
        PeerSpec::PrefixList(id) => vec![Peer::PrefixList(id.clone())],
        PeerSpec::ServiceTag(t) => vec![Peer::ServiceTag(t.clone())],
        PeerSpec::Policy(other) => match (cx.cloud, cx.inv) {
            (Cloud::Azure, Some(inv)) => {
                // Function apps cannot join application security groups: the peer is the
                // other policy's integration subnet.
                let subnets = cx
                    .nets
                    .get(other)
                    .map(|n| n.subnets.clone())
                    .unwrap_or_default();
                let cidrs: Vec<Peer> = subnets
                    .iter()
                    .filter_map(|id| inv.subnets.iter().find(|s| s.id.eq_ignore_ascii_case(id)))
                    .flat_map(|s| s.cidrs.iter().map(|c| Peer::cidr(*c)))
                    .collect();
                cidrs
            }
            _ => vec![Peer::Group(GroupRef::Managed(other.clone()))],
        },
        PeerSpec::Endpoint(name) => {
            let ep = endpoints.values().find(|e| {
                let short = match cx.cloud {
                    Cloud::Aws => e.service.rsplit('.').next().unwrap_or(&e.service),
                    Cloud::Azure => e
                        .service
                        .split('#')
                        .next()
                        .unwrap_or_default()
                        .rsplit('/')
                        .next()
                        .unwrap_or_default(),
                };
                short.eq_ignore_ascii_case(name)
                    && (cx.cloud == Cloud::Azure
                        || e.network.is_empty()
                        || Some(&e.network)
                            == cx.nets.get(p.name()).and_then(|n| n.network.as_ref()))
            });
            let Some(ep) = ep else {
                // validate reports unknown endpoints; a policy in another VPC lands here.
                if cx.inv.is_some() {
                    cx.diags.push(Diagnostic::error(
                        K::UnknownEndpoint,
                        Some(p.at(peer)),
                        format!("endpoint {name:?} is not declared for this policy's network"),
                    ));
                }
                return Vec::new();
            };
            match (ep.kind, cx.inv) {
                (EndpointKind::Interface, _) | (_, None) => {
                    vec![Peer::Group(GroupRef::Managed(ep.owner.clone()))]
                }
                (EndpointKind::Gateway, Some(inv)) => {
                    match inv.prefix_lists.iter().find(|pl| pl.name == ep.service) {
                        Some(pl) => vec![Peer::PrefixList(pl.id.clone())],
                        None => {
                            cx.diags.push(Diagnostic::error(
                            K::UnknownEndpoint,
                            Some(p.at(peer)),
                            format!("no prefix list for gateway service {} was observed in the target", ep.service),
                        ));
                            Vec::new()
                        }
                    }
                }
                (EndpointKind::Private, Some(inv)) => ep
                    .subnets
                    .iter()
                    .filter_map(|id| inv.subnets.iter().find(|s| s.id.eq_ignore_ascii_case(id)))
                    .flat_map(|s| s.cidrs.iter().map(|c| Peer::cidr(*c)))
                    .collect(),
            }
        }
    }
}

/// The Palisade ownership tags plus a Name, for what compile asks providers to create.
pub fn create_tags(owner: &str, name: &str, stamp: &Tags) -> Tags {
    let mut t = stamp.clone();
    t.extend(ownership_tags(owner));
    t.insert("Name".into(), name.into());
    t
}
