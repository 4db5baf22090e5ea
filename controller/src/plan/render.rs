//! Rendering a plan like `terraform plan`: changes grouped per resource with `+ ~ -`,
//! drift apart, findings last.

use super::*;

pub(super) fn show_placement(p: Option<&Placement>) -> String {
    match p {
        None => "outside any network".into(),
        Some(p) => {
            let groups: Vec<String> = p.groups.iter().map(ToString::to_string).collect();
            format!(
                "{} subnets [{}] groups [{}]{}",
                p.network,
                p.subnets.join(", "),
                groups.join(", "),
                if p.route_all { " route-all" } else { "" }
            )
        }
    }
}

/// The lines of an access-restriction change: the default action, then the rules
/// taken away and added.
pub fn inbound_lines(before: Option<&Inbound>, after: &Inbound) -> Vec<String> {
    let action = |a: Access| match a {
        Access::Allow => "allow",
        Access::Deny => "deny",
    };
    let mut out = Vec::new();
    match before {
        None => out.push(format!(
            "~ inbound (not read yet): default {}, {} rule(s)",
            action(after.default_action),
            after.rules.len()
        )),
        Some(b) if b.default_action != after.default_action => out.push(format!(
            "~ inbound default: {} -> {}",
            action(b.default_action),
            action(after.default_action)
        )),
        Some(_) => {}
    }
    let was = before.map(|b| b.rules.as_slice()).unwrap_or_default();
    for r in was.iter().filter(|r| !after.rules.contains(r)) {
        out.push(format!("- inbound {r} ({:?})", r.name));
    }
    for r in after.rules.iter().filter(|r| !was.contains(r)) {
        out.push(format!("+ inbound {r}"));
    }
    out
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

/// One line per thing a change does, as the text plan shows it.
pub fn change_lines(c: &Change) -> Vec<String> {
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
        Change::SetInbound { before, after, .. } => inbound_lines(before.as_ref(), after),
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
        Change::SetOwnershipTags {
            kind,
            id,
            owner,
            takeover: true,
            ..
        } => vec![format!(
            "~ take over {kind} {id} in place as the managed group of {owner} (record and tag it; nothing else changes)"
        )],
        Change::SetOwnershipTags { kind, id, .. } => {
            vec![format!(
                "~ restore the ownership tags of {kind} {id} (recorded by id)"
            )]
        }
    }
}
