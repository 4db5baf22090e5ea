//! Function placements (VPC/VNet, subnets, groups), Azure function apps' access
//! restrictions, and Azure subnet–NSG associations.

use super::*;

/// Azure: each selected app's access restrictions as its policy builds them. An app
/// whose restrictions were not read (the read failed) is not written blind; an app no
/// policy selects is left as it is (Palisade never widens a front door it lets go of).
pub(super) fn plan_inbound(b: &mut Builder<'_>, desired: &DesiredState, observed: &Inventory) {
    let functions: BTreeMap<&str, &Function> = observed
        .functions
        .iter()
        .map(|f| (f.id.as_str(), f))
        .collect();
    for (id, di) in &desired.inbound {
        let Some(f) = functions.get(id.as_str()) else {
            continue;
        };
        let Some(have) = &f.inbound else { continue };
        if *have == di.inbound {
            continue;
        }
        let resource = ResourceAddr::function(f.name.as_str());
        if di.mode == Mode::Audit {
            b.finding(
                FindingKind::AuditDrift,
                &resource,
                format!(
                    "inbound access restrictions differ from what policy {} declares: {}",
                    di.policy,
                    render::inbound_lines(Some(have), &di.inbound).join("; ")
                ),
            );
            continue;
        }
        let drift = b
            .previous
            .and_then(|p| p.inbound.get(id))
            .is_some_and(|pi| pi.inbound == di.inbound);
        b.push(
            Phase::Placement,
            cause(drift),
            &resource,
            Change::SetInbound {
                function: id.clone(),
                name: f.name.clone(),
                before: Some(have.clone()),
                after: di.inbound.clone(),
            },
        );
    }
}

pub(super) fn plan_placements(
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
pub(super) fn unwanted_subnet_groups<'a>(
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

#[cfg(test)]
mod tests {
    use palisade_providers::{Inbound, InboundPeer, InboundRule};

    use super::*;
    use crate::compile::DesiredInbound;

    fn closed() -> Inbound {
        Inbound {
            default_action: Access::Deny,
            rules: vec![InboundRule {
                name: "office".into(),
                priority: 100,
                access: Access::Allow,
                peer: InboundPeer::Cidr("203.0.113.0/24".parse().unwrap()),
                headers: false,
            }],
        }
    }

    fn open() -> Inbound {
        Inbound {
            default_action: Access::Allow,
            rules: vec![],
        }
    }

    fn setup(mode: Mode, observed: Option<Inbound>) -> (DesiredState, Inventory) {
        let mut desired = DesiredState {
            target: "az".into(),
            ..DesiredState::default()
        };
        desired.inbound.insert(
            "/s/sites/a".into(),
            DesiredInbound {
                function: "/s/sites/a".into(),
                name: "a".into(),
                policy: "api".into(),
                mode,
                inbound: closed(),
            },
        );
        let inv = Inventory {
            target: "az".into(),
            functions: vec![Function {
                id: "/s/sites/a".into(),
                name: "a".into(),
                tags: Default::default(),
                placement: None,
                inbound: observed,
            }],
            ..Inventory::default()
        };
        (desired, inv)
    }

    fn inbound_changes(p: &Plan) -> Vec<&PlannedChange> {
        p.changes
            .iter()
            .filter(|c| matches!(c.change, Change::SetInbound { .. }))
            .collect()
    }

    #[test]
    fn an_opened_front_door_is_closed_again_as_drift() {
        let (desired, inv) = setup(Mode::Enforce, Some(open()));
        let first = plan(&desired, &inv, None, &Settings::default(), None);
        let c = inbound_changes(&first);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].cause, Cause::Intended);
        let again = plan(&desired, &inv, Some(&desired), &Settings::default(), None);
        assert_eq!(inbound_changes(&again)[0].cause, Cause::Drift);
        // As declared: nothing to do. Not read: nothing written blind.
        for observed in [Some(closed()), None] {
            let (desired, inv) = setup(Mode::Enforce, observed);
            assert!(
                inbound_changes(&plan(&desired, &inv, None, &Settings::default(), None)).is_empty()
            );
        }
    }

    #[test]
    fn audit_reports_the_front_door_and_changes_nothing() {
        let (desired, inv) = setup(Mode::Audit, Some(open()));
        let p = plan(&desired, &inv, None, &Settings::default(), None);
        assert!(inbound_changes(&p).is_empty());
        assert!(
            p.findings.iter().any(|f| f.kind == FindingKind::AuditDrift
                && f.message.contains("inbound default: allow -> deny")),
            "{:#?}",
            p.findings
        );
    }

    #[test]
    fn taking_an_undeclared_allow_off_is_a_budgeted_delete_unless_it_is_drift() {
        let mut extra = closed();
        extra.rules.push(InboundRule {
            name: "hand-made".into(),
            priority: 200,
            access: Access::Allow,
            peer: InboundPeer::Any,
            headers: false,
        });
        let (desired, inv) = setup(Mode::Enforce, Some(extra));
        let intended = plan(&desired, &inv, None, &Settings::default(), None);
        assert_eq!(budgeted_deletes(&intended.changes), 1);
        let drift = plan(&desired, &inv, Some(&desired), &Settings::default(), None);
        assert_eq!(budgeted_deletes(&drift.changes), 0);
    }
}
