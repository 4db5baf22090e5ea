//! Managed groups and their rules: create what is missing (unless the name is taken),
//! add missing rules, revoke rules nobody declared, delete groups no policy wants (when
//! pruning), and report what is retained.

use super::*;

pub(super) fn plan_groups(
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
            if let Some(id) = &dg.adopt {
                // Taken over in place or not at all: never created.
                let why = match inventory
                    .ownership
                    .iter()
                    .find(|n| n.kind == OwnedKind::Group && n.id.eq_ignore_ascii_case(id))
                {
                    Some(n) if n.verdict == OwnershipVerdict::Refused => format!(
                        "{} {id} is not taken over as the managed group of {owner}: {}",
                        dg.name,
                        n.detail.as_deref().unwrap_or("refused")
                    ),
                    _ if inventory.group_by_id(id).is_some() => format!(
                        "{} {id} is not taken over as the managed group of {owner}: it is managed for another owner",
                        dg.name
                    ),
                    _ => format!("managedGroup {id} of {owner} does not exist in the target"),
                };
                b.not_adopted.push((owner.clone(), why));
                continue;
            }
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
