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
//!
//! Modules: this one owns the plan's types and [`plan`] (ownership, name-taken, the
//! order); `groups`, `functions` and `endpoints` plan each kind of resource; `budget`
//! the blast radius; `render` the text form, `markdown` the pull-request comment.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use palisade_providers::model::TAG_OWNER;
use palisade_providers::{
    Access, Change, Function, GroupRef, Inbound, Inventory, OwnedKind, OwnershipVerdict, Peer,
    Placement, Rule, SecurityGroup,
};
use serde::{Deserialize, Serialize};

use crate::addr::ResourceAddr;
use crate::check::{Finding, FindingKind};
use crate::compile::{DesiredState, create_tags};
use crate::policy::Mode;

mod budget;
mod endpoints;
mod functions;
mod groups;
mod markdown;
mod render;

pub use budget::budgeted_deletes;
use budget::*;
use endpoints::*;
use functions::*;
use groups::*;
pub use markdown::{markdown_cell, render_markdown};
pub use render::render_text;
use render::show_placement;
pub use render::{change_lines, inbound_lines};

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
    /// Owners whose `managedGroup` is not taken over: (owner, why).
    not_adopted: Vec<(String, String)>,
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
        not_adopted: Vec::new(),
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
    plan_inbound(&mut b, desired, observed);
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
            // Reported by the group planning, which holds back what needs the group.
            OwnershipVerdict::Foreign | OwnershipVerdict::Compared | OwnershipVerdict::Refused => {}
            OwnershipVerdict::TagsChanged
            | OwnershipVerdict::Adopted
            | OwnershipVerdict::Recovered
            | OwnershipVerdict::Taken => {
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
                        takeover: n.verdict == OwnershipVerdict::Taken,
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

/// Leave out of the plan every change that needs the managed group of `owner`; how many.
fn hold_back(b: &mut Builder<'_>, owner: &str) -> usize {
    let mut held = 0;
    for changes in b.changes.values_mut() {
        let before = changes.len();
        changes.retain(|c| !needs_group(&c.change, owner));
        held += before - changes.len();
    }
    held
}

/// A group that cannot be created blocks only what needs it: those changes are left out
/// of the plan (the functions keep what they have), and one finding per policy says so.
fn hold_back_name_taken(b: &mut Builder<'_>) {
    for (owner, why) in std::mem::take(&mut b.not_adopted) {
        let held = hold_back(b, &owner);
        b.finding(
            FindingKind::NotAdopted,
            &ResourceAddr::group(owner.as_str()),
            format!(
                "{why}; it is left as it is, no group is created in its place, and {held} change(s) that need the group of {owner} are held back"
            ),
        );
    }
    for (owner, name, holder) in std::mem::take(&mut b.name_taken) {
        let held = hold_back(b, &owner);
        b.finding(
            FindingKind::NameTaken,
            &ResourceAddr::group(owner.as_str()),
            format!(
                "the name {name} is taken by {holder}, which Palisade does not own; the managed group of {owner} is not created and {held} change(s) that need it are held back (functions keep their current placement). Rename or delete {holder}, or tag nothing: Palisade never takes over a resource by name"
            ),
        );
    }
}

fn summarise<'a>(changes: impl IntoIterator<Item = &'a PlannedChange>) -> Summary {
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
