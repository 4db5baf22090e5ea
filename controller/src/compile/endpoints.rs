//! Endpoints a policy asks for, keyed per network and service, with the managed group
//! each one gets.

use super::*;

/// Endpoints declared by the policies, merged per (service, network), keyed by owner key.
pub(super) fn compile_endpoints(
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

pub(super) fn full_service(region: &str, service: &str) -> String {
    if service.contains('.') {
        service.to_string()
    } else {
        format!("com.amazonaws.{region}.{service}")
    }
}

/// Owner key of an endpoint a policy declares.
pub(super) fn endpoint_key(
    cx: &Ctx<'_>,
    p: &PolicyDoc,
    e: &crate::policy::EndpointSpec,
) -> Option<String> {
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

pub(super) fn endpoint_group(ep: &DesiredEndpoint, policies: &[&PolicyDoc]) -> DesiredGroup {
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
                    icmp: None,
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
        adopt: None,
    }
}
