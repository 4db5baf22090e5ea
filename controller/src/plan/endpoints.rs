//! VPC endpoints and private endpoints: create, replace (make before break, best fit
//! first), delete what no policy wants.

use super::*;

pub(super) fn plan_endpoints(
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
