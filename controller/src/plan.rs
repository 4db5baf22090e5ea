//! Desired vs observed → a [`Plan`] value. `plan()` is a pure function: no I/O, no
//! clock, no randomness; a converged target yields an empty plan, every time.
//!
//! # Guarantees
//! - Only resources Palisade owns (as vetted at observation) are changed, plus the network
//!   placement of functions a policy selects (and the release of managed groups from
//!   functions a policy let go of).
//! - Changes are ordered make-before-break: create groups → authorise new rules →
//!   create/update endpoints → move functions → revoke old rules → delete endpoints →
//!   delete groups.
//! - `audit`-mode resources yield findings, never changes.
//! - A plan deleting more than the blast-radius budget, or one made from a source that
//!   defines nothing while managed resources exist, is refused (`refusal` is set).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use palisade_providers::model::TAG_OWNER;
use palisade_providers::{
    Change, Function, GroupRef, Inventory, OwnedKind, OwnershipVerdict, Peer, Placement, Rule,
    SecurityGroup,
};
use serde::{Deserialize, Serialize};

use crate::addr::ResourceAddr;
use crate::check::{Finding, FindingKind};
use crate::compile::{DesiredState, create_tags};
use crate::policy::Mode;

/// Knobs of the planner. Defaults are conservative.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    /// Most deletions (rules, groups, endpoints, releases) one plan may make.
    pub max_deletes: usize,
    /// Most deletions as a percentage of the managed rules and resources…
    pub max_delete_percent: u32,
    /// …once a plan deletes at least this many (small estates are not blocked by percent).
    pub delete_percent_floor: usize,
    /// Delete managed resources no policy wants any more (otherwise: `orphaned` findings).
    pub prune: bool,
    /// Let a source that defines nothing for a target delete everything managed there.
    pub allow_empty: bool,
    /// Release managed groups from functions no policy selects any more. Off by default
    /// (fail closed): such a function keeps its placement and groups, and a group it
    /// still holds is retained and reported. Even when on, a release never leaves a
    /// function without a group (which would take it out of its VPC).
    #[serde(default)]
    pub release_unselected: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_deletes: 500,
            max_delete_percent: 30,
            delete_percent_floor: 5,
            prune: true,
            allow_empty: false,
            release_unselected: false,
        }
    }
}

/// Order of execution. Sorting by phase is make-before-break.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Ownership tags put back on recorded resources (every later write checks them).
    Ownership,
    /// New managed groups.
    CreateGroups,
    /// New rules (and, on Azure, removal of a rule whose priority a new rule takes).
    AddRules,
    /// New endpoints.
    CreateEndpoints,
    /// Endpoint subnets / groups / route tables.
    UpdateEndpoints,
    /// Azure: NSGs attached to subnets — before any function joins the subnet, so that
    /// no function runs in a subnet whose NSG is missing.
    SubnetGroups,
    /// Function placement, and NSGs detached from subnets.
    Placement,
    /// Rules no longer wanted.
    RemoveRules,
    /// Endpoints no longer wanted.
    DeleteEndpoints,
    /// Groups no longer wanted.
    DeleteGroups,
}

/// Why a change is in the plan. Shown in plans and reports; it also decides two things:
/// revoking a rule added out of band (drift) is outside the blast-radius budget, and only
/// drift reverts are subject to flap detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// The policies changed (or this is the first enforcement).
    Intended,
    /// The cloud changed under an unchanged policy: revert.
    Drift,
}

/// One change with its place in the order and its cause.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlannedChange {
    /// When it runs.
    pub phase: Phase,
    /// Why.
    pub cause: Cause,
    /// What it is about: `group payments-api (sg-1)`, `function pay-1`.
    pub resource: ResourceAddr,
    /// The change itself.
    pub change: Change,
}

/// Why a plan is not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Refusal {
    /// What was exceeded, and how to proceed.
    pub reason: String,
    /// Deletions in the plan.
    pub deletes: usize,
    /// Managed rules and resources observed.
    pub managed: usize,
}

/// Counts, like `terraform plan`'s last line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Groups, endpoints and rules to create.
    pub add: usize,
    /// Placements, associations and endpoints to change.
    pub change: usize,
    /// Rules, groups and endpoints to delete, functions to release.
    pub destroy: usize,
}

/// The plan for one target: a value, rendered as text or JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Target name.
    pub target: String,
    /// The Git revision (or other source id) the desired state came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Changes in execution order.
    pub changes: Vec<PlannedChange>,
    /// Audit-mode differences and other findings (nothing is changed for them).
    pub findings: Vec<Finding>,
    /// Set when the plan must not be applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
    /// Counts.
    pub summary: Summary,
}

impl Plan {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

struct Builder<'a> {
    target: &'a str,
    previous: Option<&'a DesiredState>,
    changes: BTreeMap<Phase, Vec<PlannedChange>>,
    findings: Vec<Finding>,
    /// Owners whose managed group cannot be created (its name is taken): (owner, name,
    /// id of the resource holding the name).
    name_taken: Vec<(String, String, String)>,
}

impl Builder<'_> {
    fn push(&mut self, phase: Phase, cause: Cause, resource: &ResourceAddr, change: Change) {
        self.changes.entry(phase).or_default().push(PlannedChange {
            phase,
            cause,
            resource: resource.clone(),
            change,
        });
    }

    fn finding(&mut self, kind: FindingKind, resource: &ResourceAddr, message: String) {
        self.findings.push(Finding {
            kind,
            target: self.target.to_string(),
            resource: resource.clone(),
            message,
            guardrail: None,
            controls: Vec::new(),
            location: None,
        });
    }
}

fn cause(drift: bool) -> Cause {
    if drift { Cause::Drift } else { Cause::Intended }
}

/// Plan `desired` against `observed`.
///
/// `previous` is the desired state of the revision enforced before (if any): a
/// difference that the new revision did not introduce is drift.
pub fn plan(
    desired: &DesiredState,
    observed: &Inventory,
    previous: Option<&DesiredState>,
    settings: &Settings,
    revision: Option<&str>,
) -> Plan {
    // While policies are in conflict with what is observed, what they would have wanted
    // is unknown: nothing unwanted is deleted (kept as `orphaned` findings) until the
    // conflict is resolved.
    let held_settings;
    let settings = if desired.frozen.is_empty() {
        settings
    } else {
        held_settings = Settings {
            prune: false,
            ..settings.clone()
        };
        &held_settings
    };
    let mut b = Builder {
        target: &desired.target,
        previous,
        changes: BTreeMap::new(),
        findings: Vec::new(),
        name_taken: Vec::new(),
    };
    plan_ownership(&mut b, observed);
    let mut observed_groups: BTreeMap<&str, Vec<&SecurityGroup>> = BTreeMap::new();
    for g in &observed.groups {
        if let Some(owner) = g.owner() {
            observed_groups.entry(owner).or_default().push(g);
        }
    }
    for gs in observed_groups.values_mut() {
        gs.sort_by(|a, b| a.id.cmp(&b.id));
    }
    plan_placements(&mut b, desired, observed, settings);
    // Managed groups that functions will still hold once this plan's placement changes
    // are done (functions no policy selects, audit-mode ones, releases refused), and
    // managed NSGs kept on subnets that host functions: never deleted from under them.
    let mut moved: BTreeMap<&str, Option<&Placement>> = BTreeMap::new();
    for c in b.changes.values().flatten() {
        if let Change::SetPlacement {
            function, after, ..
        } = &c.change
        {
            moved.insert(function.as_str(), after.as_ref());
        }
    }
    let mut held: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for f in &observed.functions {
        let placement = moved
            .get(f.id.as_str())
            .copied()
            .unwrap_or(f.placement.as_ref());
        for g in placement.iter().flat_map(|p| &p.groups) {
            if let GroupRef::Managed(owner) = g {
                held.entry(owner.clone()).or_default().push(f.name.as_str());
            }
        }
    }
    for (_, owner, functions) in unwanted_subnet_groups(desired, observed) {
        if !functions.is_empty() {
            held.entry(owner.to_string()).or_default().extend(functions);
        }
    }
    plan_groups(&mut b, desired, observed, &observed_groups, &held, settings);
    plan_endpoints(&mut b, desired, observed, settings);
    hold_back_name_taken(&mut b);

    let changes: Vec<PlannedChange> = b.changes.into_values().flatten().collect();
    let mut findings = b.findings;
    findings.sort();
    let summary = summarise(&changes);
    let refusal = refuse(desired, observed, &changes, settings);
    Plan {
        target: desired.target.clone(),
        revision: revision.map(str::to_owned),
        changes,
        findings,
        refusal,
        summary,
    }
}

/// Ownership decided while observing: recorded resources whose tags were stripped or
/// changed get them back (the first thing done); claims are findings, nothing more.
fn plan_ownership(b: &mut Builder<'_>, observed: &Inventory) {
    for n in &observed.ownership {
        let resource = ResourceAddr::new(n.kind.into(), n.owner.as_str()).with_id(n.id.as_str());
        match n.verdict {
            OwnershipVerdict::Claimed => {
                let name = match n.kind {
                    OwnedKind::Group => observed.group_by_id(&n.id).map(|g| g.name.as_str()),
                    OwnedKind::Endpoint => None,
                };
                b.finding(
                    FindingKind::ClaimedOwnership,
                    &ResourceAddr::new(n.kind.into(), name.unwrap_or(&n.id)),
                    format!(
                        "{} {} carries Palisade's ownership tags (palisade:policy={}) but Palisade never created or adopted it; it is never changed or deleted. Whoever can write palisade:* tags could hijack resources: deny it to everyone but Palisade (README: ownership)",
                        n.kind, n.id, n.owner
                    ),
                );
            }
            OwnershipVerdict::Foreign => {}
            OwnershipVerdict::TagsChanged
            | OwnershipVerdict::Adopted
            | OwnershipVerdict::Recovered => {
                let mut want = observed.stamp.clone();
                want.insert(TAG_OWNER.into(), n.owner.clone());
                if n.found == want {
                    continue;
                }
                let cause = cause(n.verdict == OwnershipVerdict::TagsChanged);
                b.push(
                    Phase::Ownership,
                    cause,
                    &resource,
                    Change::SetOwnershipTags {
                        kind: n.kind,
                        id: n.id.clone(),
                        owner: n.owner.clone(),
                        tags: want,
                    },
                );
            }
        }
    }
}

/// Whether `change` needs the managed group of `owner` to exist.
fn needs_group(change: &Change, owner: &str) -> bool {
    let is = |g: &GroupRef| matches!(g, GroupRef::Managed(o) if o == owner);
    let peer = |r: &Rule| matches!(&r.peer, Peer::Group(g) if is(g));
    match change {
        Change::CreateGroup { owner: o, .. } => o == owner,
        Change::AddRules { group, rules } => is(group) || rules.iter().any(peer),
        Change::SetPlacement { after, .. } => after.iter().flat_map(|p| &p.groups).any(is),
        Change::SetSubnetGroup { after, .. } => after.as_ref().is_some_and(is),
        Change::CreateEndpoint { groups, .. } | Change::UpdateEndpoint { groups, .. } => {
            groups.iter().any(is)
        }
        _ => false,
    }
}

/// A group that cannot be created blocks only what needs it: those changes are left out
/// of the plan (the functions keep what they have), and one finding per policy says so.
fn hold_back_name_taken(b: &mut Builder<'_>) {
    for (owner, name, holder) in std::mem::take(&mut b.name_taken) {
        let mut held = 0;
        for changes in b.changes.values_mut() {
            let before = changes.len();
            changes.retain(|c| !needs_group(&c.change, &owner));
            held += before - changes.len();
        }
        b.finding(
            FindingKind::NameTaken,
            &ResourceAddr::group(owner.as_str()),
            format!(
                "the name {name} is taken by {holder}, which Palisade does not own; the managed group of {owner} is not created and {held} change(s) that need it are held back (functions keep their current placement). Rename or delete {holder}, or tag nothing: Palisade never takes over a resource by name"
            ),
        );
    }
}

fn plan_groups(
    b: &mut Builder<'_>,
    desired: &DesiredState,
    inventory: &Inventory,
    observed: &BTreeMap<&str, Vec<&SecurityGroup>>,
    held: &BTreeMap<String, Vec<&str>>,
    settings: &Settings,
) {
    for (owner, dg) in &desired.groups {
        if desired.frozen.contains(owner) {
            continue;
        }
        let resource = ResourceAddr::group(owner.as_str());
        let prev = b.previous.and_then(|p| p.groups.get(owner));
        let found = observed
            .get(owner.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Some((primary, extras)) = found.split_first() else {
            if dg.mode == Mode::Audit {
                b.finding(
                    FindingKind::AuditDrift,
                    &resource,
                    format!(
                        "managed group {} does not exist (audit mode: not created)",
                        dg.name
                    ),
                );
                continue;
            }
            let squatter = inventory.groups.iter().find(|g| {
                g.owner().is_none()
                    && g.network.eq_ignore_ascii_case(&dg.network)
                    && g.name.eq_ignore_ascii_case(&dg.name)
            });
            if let Some(s) = squatter {
                b.name_taken
                    .push((owner.clone(), dg.name.clone(), s.id.clone()));
                continue;
            }
            let c = cause(prev.is_some());
            b.push(
                Phase::CreateGroups,
                c,
                &resource,
                Change::CreateGroup {
                    owner: owner.clone(),
                    name: dg.name.clone(),
                    network: dg.network.clone(),
                    description: dg.description.clone(),
                    tags: create_tags(owner, &dg.name, &inventory.stamp),
                },
            );
            if !dg.rules.is_empty() {
                b.push(
                    Phase::AddRules,
                    c,
                    &resource,
                    Change::AddRules {
                        group: GroupRef::Managed(owner.clone()),
                        rules: dg.rules.keys().cloned().collect(),
                    },
                );
            }
            continue;
        };
        // Two groups claiming the same owner: keep the first, the others are drift.
        for extra in extras {
            if dg.mode == Mode::Enforce {
                b.push(
                    Phase::DeleteGroups,
                    Cause::Drift,
                    &ResourceAddr::group(owner.as_str()).with_id(extra.id.as_str()),
                    Change::DeleteGroup {
                        owner: owner.clone(),
                        id: extra.id.clone(),
                    },
                );
            }
        }
        let have: BTreeSet<&Rule> = primary.rules.iter().collect();
        let to_add: Vec<&Rule> = dg.rules.keys().filter(|r| !have.contains(r)).collect();
        let mut seen = BTreeSet::new();
        let to_remove: Vec<&Rule> = primary
            .rules
            .iter()
            .filter(|r| !dg.rules.contains_key(r) && seen.insert(*r))
            .collect();
        let resource = ResourceAddr::group(owner.as_str()).with_id(primary.id.as_str());
        if dg.mode == Mode::Audit {
            for r in &to_add {
                b.finding(
                    FindingKind::AuditDrift,
                    &resource,
                    format!("missing rule: {r}"),
                );
            }
            for r in &to_remove {
                b.finding(
                    FindingKind::AuditDrift,
                    &resource,
                    format!("unexpected rule: {r}"),
                );
            }
            continue;
        }
        let gref = GroupRef::Managed(owner.clone());
        // Azure: a new rule that takes an old rule's priority replaces it in place; the
        // old one goes first (priorities are unique per direction).
        let taken: BTreeSet<_> = to_add
            .iter()
            .filter_map(|r| r.priority.map(|p| (r.direction, p)))
            .collect();
        let (conflicting, rest): (Vec<&Rule>, Vec<&Rule>) = to_remove.iter().partition(|r| {
            r.priority
                .is_some_and(|p| taken.contains(&(r.direction, p)))
        });
        let add_cause = |r: &Rule| cause(prev.is_some_and(|pg| pg.rules.contains_key(r)));
        let remove_cause = |r: &Rule| cause(prev.is_some_and(|pg| !pg.rules.contains_key(r)));
        for (phase, rules) in [(Phase::AddRules, &conflicting), (Phase::RemoveRules, &rest)] {
            for c in [Cause::Intended, Cause::Drift] {
                let batch: Vec<Rule> = rules
                    .iter()
                    .filter(|r| remove_cause(r) == c)
                    .map(|r| (*r).clone())
                    .collect();
                if !batch.is_empty() {
                    b.push(
                        phase,
                        c,
                        &resource,
                        Change::RemoveRules {
                            group: gref.clone(),
                            rules: batch,
                        },
                    );
                }
            }
        }
        for c in [Cause::Intended, Cause::Drift] {
            let batch: Vec<Rule> = to_add
                .iter()
                .filter(|r| add_cause(r) == c)
                .map(|r| (*r).clone())
                .collect();
            if !batch.is_empty() {
                b.push(
                    Phase::AddRules,
                    c,
                    &resource,
                    Change::AddRules {
                        group: gref.clone(),
                        rules: batch,
                    },
                );
            }
        }
    }
    for (owner, gs) in observed {
        if desired.groups.contains_key(*owner) || desired.frozen.contains(*owner) {
            continue;
        }
        for g in gs {
            let resource = ResourceAddr::group(*owner).with_id(g.id.as_str());
            if let Some(functions) = held.get(*owner) {
                b.finding(
                    FindingKind::Orphaned,
                    &resource,
                    format!(
                        "no policy wants this managed group any more, but {} still hold it (no policy moves them); retained (rules unchanged) until they are selected again or moved",
                        functions.join(", ")
                    ),
                );
                continue;
            }
            if settings.prune {
                let drift = b.previous.is_some_and(|p| !p.groups.contains_key(*owner));
                b.push(
                    Phase::DeleteGroups,
                    cause(drift),
                    &resource,
                    Change::DeleteGroup {
                        owner: (*owner).to_string(),
                        id: g.id.clone(),
                    },
                );
            } else {
                b.finding(
                    FindingKind::Orphaned,
                    &resource,
                    "no policy wants this managed group any more (prune is off)".into(),
                );
            }
        }
    }
}

fn plan_placements(
    b: &mut Builder<'_>,
    desired: &DesiredState,
    observed: &Inventory,
    settings: &Settings,
) {
    let functions: BTreeMap<&str, &Function> = observed
        .functions
        .iter()
        .map(|f| (f.id.as_str(), f))
        .collect();
    for (id, dp) in &desired.placements {
        let Some(f) = functions.get(id.as_str()) else {
            continue;
        };
        let have = f.placement.clone().map(Placement::normalised);
        if have.as_ref() == Some(&dp.placement) {
            continue;
        }
        let resource = ResourceAddr::function(f.name.as_str());
        if dp.mode == Mode::Audit {
            b.finding(
                FindingKind::AuditDrift,
                &resource,
                format!(
                    "placement is {}, policy {} wants {}",
                    show_placement(have.as_ref()),
                    dp.policy,
                    show_placement(Some(&dp.placement))
                ),
            );
            continue;
        }
        let drift = b
            .previous
            .and_then(|p| p.placements.get(id))
            .is_some_and(|pp| pp.placement == dp.placement);
        b.push(
            Phase::Placement,
            cause(drift),
            &resource,
            Change::SetPlacement {
                function: id.clone(),
                name: f.name.clone(),
                before: have,
                after: Some(dp.placement.clone()),
            },
        );
    }
    // Functions in conflict with what is observed, or selected by a policy whose
    // network does not resolve: left exactly as they are (the finding says why).
    let left_alone: BTreeSet<&str> = desired
        .conflicted
        .iter()
        .map(String::as_str)
        .chain(
            desired
                .frozen
                .iter()
                .filter_map(|p| desired.selected.get(p))
                .flatten()
                .map(String::as_str),
        )
        .collect();
    // Functions no policy selects that still hold managed groups.
    for f in &observed.functions {
        if desired.placements.contains_key(&f.id) || left_alone.contains(f.id.as_str()) {
            continue;
        }
        let Some(p) = &f.placement else { continue };
        let was_ours = b
            .previous
            .is_some_and(|prev| prev.placements.contains_key(&f.id));
        let managed: Vec<&GroupRef> = p
            .groups
            .iter()
            .filter(|g| matches!(g, GroupRef::Managed(_)))
            .collect();
        if managed.is_empty() {
            continue;
        }
        let mut release: Vec<&GroupRef> = if settings.release_unselected {
            managed
                .iter()
                .copied()
                .filter(|g| was_ours || matches!(g, GroupRef::Managed(o) if !desired.groups.contains_key(o) && settings.prune))
                .collect()
        } else {
            Vec::new()
        };
        let groups: Vec<GroupRef> = p
            .groups
            .iter()
            .filter(|g| !release.contains(g))
            .cloned()
            .collect();
        let resource = ResourceAddr::function(f.name.as_str());
        if groups.is_empty() && !release.is_empty() {
            // Releasing every group would take the function out of its VPC: never.
            b.finding(
                FindingKind::ForeignAttachment,
                &resource,
                "no policy selects this function; its managed groups are not released, because that would leave it without any group (out of its VPC)".into(),
            );
            release.clear();
        }
        for g in managed.iter().filter(|g| !release.contains(g)) {
            b.finding(
                FindingKind::ForeignAttachment,
                &resource,
                format!("holds {g}, but no policy selects this function; it keeps its placement and groups"),
            );
        }
        if release.is_empty() {
            continue;
        }
        let after = Some(
            Placement {
                groups,
                ..p.clone()
            }
            .normalised(),
        );
        b.push(
            Phase::Placement,
            Cause::Intended,
            &resource,
            Change::SetPlacement {
                function: f.id.clone(),
                name: f.name.clone(),
                before: Some(p.clone().normalised()),
                after,
            },
        );
    }
    // Azure subnet ↔ NSG associations.
    for sg in desired.subnet_groups.values() {
        let Some(s) = observed
            .subnets
            .iter()
            .find(|s| s.id.eq_ignore_ascii_case(&sg.subnet))
        else {
            continue;
        };
        if s.group.as_ref() == Some(&sg.group) {
            continue;
        }
        let resource = ResourceAddr::subnet(s.name.as_str());
        if sg.mode == Mode::Audit {
            b.finding(
                FindingKind::AuditDrift,
                &resource,
                format!(
                    "NSG is {}, policy {} wants {}",
                    s.group.as_ref().map_or("none".into(), ToString::to_string),
                    sg.policy,
                    sg.group
                ),
            );
            continue;
        }
        let drift = b
            .previous
            .and_then(|p| p.subnet_groups.get(&sg.subnet.to_ascii_lowercase()))
            .is_some_and(|x| x.group == sg.group);
        b.push(
            Phase::SubnetGroups,
            cause(drift),
            &resource,
            Change::SetSubnetGroup {
                subnet: s.id.clone(),
                before: s.group.clone(),
                after: Some(sg.group.clone()),
            },
        );
    }
    for (s, owner, functions) in unwanted_subnet_groups(desired, observed) {
        let resource = ResourceAddr::subnet(s.name.as_str());
        if !functions.is_empty() {
            // Detaching would leave functions in a subnet without any NSG.
            b.finding(
                FindingKind::Orphaned,
                &resource,
                format!(
                    "no policy wants {} on this subnet any more, but functions run in it; the NSG stays attached until they leave",
                    GroupRef::Managed(owner.to_string())
                ),
            );
            continue;
        }
        if settings.prune || !desired.groups.contains_key(owner) {
            b.push(
                Phase::Placement,
                Cause::Intended,
                &resource,
                Change::SetSubnetGroup {
                    subnet: s.id.clone(),
                    before: s.group.clone(),
                    after: None,
                },
            );
        }
    }
}

/// Subnets holding a managed NSG no policy wants there any more: (subnet, the NSG's
/// owner, the functions running in the subnet). While functions run in it the NSG stays
/// (fail closed).
fn unwanted_subnet_groups<'a>(
    desired: &DesiredState,
    observed: &'a Inventory,
) -> Vec<(&'a palisade_providers::Subnet, &'a str, Vec<&'a str>)> {
    let mut out = Vec::new();
    for s in &observed.subnets {
        let Some(GroupRef::Managed(owner)) = &s.group else {
            continue;
        };
        if desired
            .subnet_groups
            .contains_key(&s.id.to_ascii_lowercase())
            || desired.frozen.contains(owner)
        {
            continue;
        }
        let functions: Vec<&str> = observed
            .functions
            .iter()
            .filter(|f| {
                f.placement
                    .as_ref()
                    .is_some_and(|p| p.subnets.iter().any(|x| x.eq_ignore_ascii_case(&s.id)))
            })
            .map(|f| f.name.as_str())
            .collect();
        out.push((s, owner.as_str(), functions));
    }
    out
}

fn plan_endpoints(
    b: &mut Builder<'_>,
    desired: &DesiredState,
    observed: &Inventory,
    settings: &Settings,
) {
    let mut have: BTreeMap<&str, Vec<&palisade_providers::Endpoint>> = BTreeMap::new();
    for e in &observed.endpoints {
        if let Some(o) = e.owner() {
            have.entry(o).or_default().push(e);
        }
    }
    // Of two endpoints of one owner (a replacement cut short), the one closest to what
    // is desired is the endpoint; the others are extras. Closest: same service, kind and
    // network first, then same subnets, then the lowest id.
    for (owner, es) in have.iter_mut() {
        if let Some(de) = desired.endpoints.get(*owner) {
            es.sort_by_key(|e| {
                let mut subnets = e.subnets.clone();
                subnets.sort();
                let shape = e.service == de.service
                    && e.kind == de.kind
                    && e.network.eq_ignore_ascii_case(&de.network);
                (!shape, subnets != de.subnets, e.id.clone())
            });
        }
    }
    for (owner, de) in &desired.endpoints {
        let resource = ResourceAddr::endpoint(owner.as_str());
        let prev = b.previous.and_then(|p| p.endpoints.get(owner));
        let create = Change::CreateEndpoint {
            owner: owner.clone(),
            service: de.service.clone(),
            kind: de.kind,
            network: de.network.clone(),
            subnets: de.subnets.clone(),
            groups: de.groups.clone(),
            route_tables: de.route_tables.clone(),
            private_dns: de.private_dns,
            tags: create_tags(
                owner,
                &format!("palisade-{}", owner.replace('.', "-")),
                &observed.stamp,
            ),
        };
        let Some(found) = have.get(owner.as_str()).and_then(|v| v.first()) else {
            if de.mode == Mode::Audit {
                b.finding(
                    FindingKind::AuditDrift,
                    &resource,
                    format!(
                        "endpoint for {} does not exist (audit mode: not created)",
                        de.service
                    ),
                );
            } else {
                b.push(
                    Phase::CreateEndpoints,
                    cause(prev.is_some()),
                    &resource,
                    create,
                );
            }
            continue;
        };
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        let mut groups = found.groups.clone();
        groups.sort();
        let same_shape = found.service == de.service
            && found.kind == de.kind
            && found.network.eq_ignore_ascii_case(&de.network);
        let same_detail = sorted(&found.subnets) == de.subnets
            && groups == de.groups
            && sorted(&found.route_tables) == de.route_tables
            && found.private_dns == de.private_dns;
        if same_shape && same_detail {
            continue;
        }
        let resource = ResourceAddr::endpoint(owner.as_str()).with_id(found.id.as_str());
        if de.mode == Mode::Audit {
            b.finding(
                FindingKind::AuditDrift,
                &resource,
                format!(
                    "endpoint differs from policy: subnets {:?}, route tables {:?}",
                    found.subnets, found.route_tables
                ),
            );
            continue;
        }
        let drift = prev.is_some_and(|p| p == de);
        if same_shape {
            b.push(
                Phase::UpdateEndpoints,
                cause(drift),
                &resource,
                Change::UpdateEndpoint {
                    owner: owner.clone(),
                    id: found.id.clone(),
                    subnets: de.subnets.clone(),
                    groups: de.groups.clone(),
                    route_tables: de.route_tables.clone(),
                    private_dns: de.private_dns,
                },
            );
        } else {
            // Service, kind or network cannot change in place: replace, make before
            // break — the new one with the creations, the old one with the deletions.
            b.push(Phase::CreateEndpoints, cause(drift), &resource, create);
            b.push(
                Phase::DeleteEndpoints,
                cause(drift),
                &resource,
                Change::DeleteEndpoint {
                    owner: owner.clone(),
                    id: found.id.clone(),
                },
            );
        }
    }
    for (owner, es) in &have {
        let wanted = desired.endpoints.contains_key(*owner);
        for (i, e) in es.iter().enumerate() {
            if wanted && i == 0 {
                continue;
            }
            let resource = ResourceAddr::endpoint(*owner).with_id(e.id.as_str());
            if settings.prune || wanted {
                b.push(
                    Phase::DeleteEndpoints,
                    cause(wanted),
                    &resource,
                    Change::DeleteEndpoint {
                        owner: (*owner).to_string(),
                        id: e.id.clone(),
                    },
                );
            } else {
                b.finding(
                    FindingKind::Orphaned,
                    &resource,
                    "no policy wants this managed endpoint any more (prune is off)".into(),
                );
            }
        }
    }
}

fn summarise(changes: &[PlannedChange]) -> Summary {
    let mut s = Summary::default();
    for c in changes {
        match &c.change {
            Change::CreateGroup { .. } | Change::CreateEndpoint { .. } => s.add += 1,
            Change::AddRules { rules, .. } => s.add += rules.len(),
            Change::SetPlacement { after: Some(_), .. }
            | Change::SetSubnetGroup { after: Some(_), .. }
            | Change::UpdateEndpoint { .. } => s.change += 1,
            other => s.destroy += other.deletes(),
        }
    }
    s
}

/// Managed rules and resources observed: the denominator of the percentage budget.
fn managed_count(observed: &Inventory) -> usize {
    let groups: usize = observed
        .groups
        .iter()
        .filter(|g| g.owner().is_some())
        .map(|g| 1 + g.rules.len())
        .sum();
    let endpoints = observed
        .endpoints
        .iter()
        .filter(|e| e.owner().is_some())
        .count();
    let placements = observed
        .functions
        .iter()
        .filter(|f| {
            f.placement
                .as_ref()
                .is_some_and(|p| p.groups.iter().any(|g| matches!(g, GroupRef::Managed(_))))
        })
        .count();
    let subnets = observed
        .subnets
        .iter()
        .filter(|s| matches!(s.group, Some(GroupRef::Managed(_))))
        .count();
    groups + endpoints + placements + subnets
}

/// What counts against the blast-radius budget: every change that removes access —
/// deleted groups and endpoints, revoked rules, releases, detached NSGs — except the
/// revocation of rules added out of band (drift). Reverting those restores what the
/// policies declare; refusing it would keep access nobody declared (fail open).
pub fn budgeted_deletes(changes: &[PlannedChange]) -> usize {
    changes
        .iter()
        .filter(|c| !(c.cause == Cause::Drift && matches!(c.change, Change::RemoveRules { .. })))
        .map(|c| c.change.deletes())
        .sum()
}

fn refuse(
    desired: &DesiredState,
    observed: &Inventory,
    changes: &[PlannedChange],
    settings: &Settings,
) -> Option<Refusal> {
    let deletes = budgeted_deletes(changes);
    let managed = managed_count(observed);
    let nothing_desired =
        desired.groups.is_empty() && desired.placements.is_empty() && desired.endpoints.is_empty();
    if nothing_desired && managed > 0 && !settings.allow_empty {
        return Some(Refusal {
            reason: format!(
                "the policy source defines nothing for target {}, but {managed} managed rules and resources exist; refusing to delete them all (an empty or broken source never means \"delete everything\"; set allowEmpty to override)",
                desired.target
            ),
            deletes,
            managed,
        });
    }
    if deletes > settings.max_deletes {
        return Some(Refusal {
            reason: format!(
                "the plan deletes {deletes} rules and resources; the budget is {} per plan",
                settings.max_deletes
            ),
            deletes,
            managed,
        });
    }
    if deletes >= settings.delete_percent_floor
        && managed > 0
        && deletes * 100 > managed * settings.max_delete_percent as usize
    {
        return Some(Refusal {
            reason: format!(
                "the plan deletes {deletes} of {managed} managed rules and resources ({}%); the budget is {}%",
                deletes * 100 / managed,
                settings.max_delete_percent
            ),
            deletes,
            managed,
        });
    }
    None
}

fn show_placement(p: Option<&Placement>) -> String {
    match p {
        None => "outside any network".into(),
        Some(p) => {
            let groups: Vec<String> = p.groups.iter().map(ToString::to_string).collect();
            format!(
                "{} subnets [{}] groups [{}]",
                p.network,
                p.subnets.join(", "),
                groups.join(", ")
            )
        }
    }
}

/// Render like `terraform plan`: changes grouped per resource with `+ ~ -`, drift apart
/// from intended change, findings after, counts last.
pub fn render_text(plan: &Plan) -> String {
    let mut out = String::new();
    let _ = write!(out, "Plan for target {}", plan.target);
    if let Some(rev) = &plan.revision {
        let _ = write!(out, " at revision {rev}");
    }
    out.push_str(":\n");
    if plan.changes.is_empty() {
        out.push_str("\nNo changes. The target matches the policies.\n");
    }
    for (cause, title) in [
        (Cause::Intended, "Changes from the policies"),
        (Cause::Drift, "Drift to revert"),
    ] {
        let mut by_resource: BTreeMap<&ResourceAddr, Vec<&PlannedChange>> = BTreeMap::new();
        let mut order = Vec::new();
        for c in plan.changes.iter().filter(|c| c.cause == cause) {
            if !by_resource.contains_key(&c.resource) {
                order.push(&c.resource);
            }
            by_resource.entry(&c.resource).or_default().push(c);
        }
        if order.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{title}:");
        for resource in order {
            let _ = writeln!(out, "  # {resource}");
            for c in &by_resource[resource] {
                for line in change_lines(&c.change) {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
    }
    if !plan.findings.is_empty() {
        out.push_str("\nFindings (reported, not changed):\n");
        for f in &plan.findings {
            let _ = write!(out, "  ! {}: {}", f.resource, f.message);
            if !f.controls.is_empty() {
                let _ = write!(out, " [{}]", f.controls.join(", "));
            }
            out.push('\n');
        }
    }
    let s = plan.summary;
    let _ = writeln!(
        out,
        "\nPlan: {} to add, {} to change, {} to destroy.",
        s.add, s.change, s.destroy
    );
    if let Some(r) = &plan.refusal {
        let _ = writeln!(out, "\nREFUSED: {}", r.reason);
    }
    out
}

fn change_lines(c: &Change) -> Vec<String> {
    match c {
        Change::CreateGroup { name, network, .. } => vec![format!(
            "+ create group {name}{}",
            if network.is_empty() {
                String::new()
            } else {
                format!(" in {network}")
            }
        )],
        Change::DeleteGroup { id, .. } => vec![format!("- delete group {id}")],
        Change::AddRules { rules, .. } => rules.iter().map(|r| format!("+ {r}")).collect(),
        Change::RemoveRules { rules, .. } => rules
            .iter()
            .map(|r| match &r.id {
                Some(id) => format!("- {r} ({id})"),
                None => format!("- {r}"),
            })
            .collect(),
        Change::SetPlacement { before, after, .. } => vec![format!(
            "~ placement: {} -> {}",
            show_placement(before.as_ref()),
            show_placement(after.as_ref())
        )],
        Change::SetSubnetGroup { before, after, .. } => vec![format!(
            "~ NSG: {} -> {}",
            before.as_ref().map_or("none".into(), ToString::to_string),
            after.as_ref().map_or("none".into(), ToString::to_string)
        )],
        Change::CreateEndpoint {
            service,
            kind,
            subnets,
            route_tables,
            ..
        } => vec![format!(
            "+ create {kind:?} endpoint {service} subnets [{}] route tables [{}]",
            subnets.join(", "),
            route_tables.join(", ")
        )],
        Change::UpdateEndpoint {
            subnets,
            groups,
            route_tables,
            ..
        } => vec![format!(
            "~ endpoint subnets [{}] groups [{}] route tables [{}]",
            subnets.join(", "),
            groups
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            route_tables.join(", ")
        )],
        Change::DeleteEndpoint { id, .. } => vec![format!("- delete endpoint {id}")],
        Change::SetOwnershipTags { kind, id, .. } => {
            vec![format!(
                "~ restore the ownership tags of {kind} {id} (recorded by id)"
            )]
        }
    }
}
