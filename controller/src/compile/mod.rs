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
//!
//! Modules: this one owns the desired-state types and [`compile`]; `network` resolves a
//! policy's network; `rules` flattens and resolves its rules into a managed group;
//! `endpoints` the endpoints and their groups.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use palisade_providers::{
    Access, Cloud, Direction, EndpointKind, Function, GroupRef, Inventory, Peer, Placement, Rule,
    Subnet, Tags, model::ownership_tags,
};
use serde::{Deserialize, Serialize};

use crate::policy::validate::{
    AWS_MAX_RULES_PER_DIRECTION, AZURE_MAX_RULES, LAMBDA_MAX_SUBNETS, NSG_DEFAULT_DENY_PRIORITY,
    NSG_PRIORITY, default_allow_priority, default_deny_priority,
};
use crate::policy::{
    Diagnostic, DiagnosticKind as K, EndpointType, Located, Mode, PeerSpec, PolicyDoc, PolicySet,
    PortSpec, SourceLocation, TargetDoc,
};

mod endpoints;
mod inbound;
mod network;
mod rules;

use endpoints::*;
use inbound::*;
use network::*;
use rules::*;

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
    /// The existing group the policy takes over (`managedGroup`), by id: never created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<String>,
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

/// An Azure function app's access restrictions as they should be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredInbound {
    /// Function (site) id.
    pub function: String,
    /// Function name.
    pub name: String,
    /// The policy that selects it.
    pub policy: String,
    /// Enforce or audit.
    pub mode: Mode,
    /// The restrictions.
    pub inbound: palisade_providers::Inbound,
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
    /// Azure function apps' access restrictions by function id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inbound: BTreeMap<String, DesiredInbound>,
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
    /// Azure: why the subnet cannot take the policy's function apps (no delegation):
    /// the subnet still resolves (for peers and its NSG), the apps are left as they are.
    undelegated: Option<Diagnostic>,
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
    let mut undelegated: BTreeSet<String> = BTreeSet::new();
    for p in &policies {
        let before = cx.diags.len();
        let mut net = resolve_network(&mut cx, p);
        if let Some(d) = net.undelegated.take() {
            undelegated.insert(p.name().to_string());
            conflicts.push(d);
        }
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
            let front_door = p.spec.front_door.as_ref().map(|f| f.value);
            let inbound = (cx.cloud == Cloud::Azure
                && front_door != Some(crate::policy::FrontDoor::Unmanaged))
            .then(|| compile_inbound(&mut cx, p));
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
                if let Some(inbound) = &inbound {
                    // The front door does not depend on the network resolving.
                    desired.inbound.insert(
                        f.id.clone(),
                        DesiredInbound {
                            function: f.id.clone(),
                            name: f.name.clone(),
                            policy: p.name().to_string(),
                            mode: p.spec.mode,
                            inbound: inbound.clone(),
                        },
                    );
                }
                if undelegated.contains(p.name()) {
                    // Integration would be refused by ARM: the app keeps its placement.
                    desired.conflicted.insert(f.id.clone());
                    continue;
                }
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
                            // Azure: all outbound traffic through the VNet, so that the
                            // policy's egress rules also hold for internet-bound traffic.
                            route_all: cx.cloud == Cloud::Azure,
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
        desired.inbound.remove(f);
    }
    // A policy whose network does not resolve leaves its functions as they are, front
    // door included.
    desired
        .inbound
        .retain(|_, i| !desired.frozen.contains(&i.policy));
    Compiled {
        desired,
        diagnostics: cx.diags,
        conflicts,
    }
}

/// The ids of the functions some policy of `target` selects, in inventory order: what
/// the planner needs per-resource reads for.
pub fn selected_functions(set: &PolicySet, target: &str, inventory: &Inventory) -> Vec<String> {
    let index = FunctionIndex::new(&inventory.functions);
    let mut picked: BTreeSet<usize> = BTreeSet::new();
    for p in set.policies_of(target) {
        picked.extend(index.select(&p.spec.functions));
    }
    picked
        .into_iter()
        .map(|i| inventory.functions[i].id.clone())
        .collect()
}

/// Tell `ownership` which existing groups the policies of `target` name as their
/// managed group (`managedGroup`), so that observing takes them over in place (enforce)
/// or compares them (audit); see [`palisade_providers::Ownership::apply_declared`].
pub fn declare_groups(
    set: &PolicySet,
    target: &str,
    ownership: &mut palisade_providers::Ownership,
) {
    for p in set.policies_of(target) {
        let Some(m) = &p.spec.managed_group else {
            continue;
        };
        let net = &p.spec.network;
        ownership.declare(
            m.id.trim(),
            palisade_providers::Declared {
                owner: p.name().to_string(),
                enforce: p.spec.mode == Mode::Enforce,
                names: p.spec.functions.names.clone(),
                tags: p.spec.functions.tags.clone().into_iter().collect(),
                subnet: net
                    .vnet
                    .as_ref()
                    .zip(net.subnet.as_ref())
                    .map(|(v, s)| (v.value.clone(), s.value.clone())),
            },
        );
    }
}

/// The Palisade ownership tags plus a Name, for what compile asks providers to create.
pub fn create_tags(owner: &str, name: &str, stamp: &Tags) -> Tags {
    let mut t = stamp.clone();
    t.extend(ownership_tags(owner));
    t.insert("Name".into(), name.into());
    t
}
