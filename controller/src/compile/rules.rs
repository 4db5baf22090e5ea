//! A policy's `from`/`to` entries flattened into atomic rules, their peers resolved
//! (policies, groups, prefix lists, CIDRs, Azure service tags), and the managed group
//! compiled from them.

use super::*;

/// One rule spec, flattened: direction, access, peers, ports, explicit priority.
pub(super) struct FlatRule<'a> {
    pub(super) name: &'a str,
    pub(super) direction: Direction,
    pub(super) access: Access,
    pub(super) peers: &'a [Located<PeerSpec>],
    pub(super) ports: &'a [Located<PortSpec>],
    pub(super) priority: Option<u16>,
    pub(super) location: SourceLocation,
}

pub(super) fn flat_rules(p: &PolicyDoc) -> Vec<FlatRule<'_>> {
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

pub(super) fn compile_group(
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
                    reference: None,
                    narrowing: None,
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
            // Default deny: Azure's default rules admit the whole VNet (and every peered
            // one) inbound and outbound, and the Internet outbound. A deny-all at the
            // lowest custom priority ends each direction, so only declared rules admit
            // traffic; declaring `VirtualNetwork` or `AzureLoadBalancer` opts back in.
            let directions = if p.spec.default_deny.as_ref().is_none_or(|d| d.value) {
                &[Direction::Ingress, Direction::Egress][..]
            } else {
                &[]
            };
            for &direction in directions {
                let rule = Rule {
                    direction,
                    ports: palisade_providers::Ports::ALL,
                    peer: Peer::Any,
                    access: Access::Deny,
                    priority: Some(NSG_DEFAULT_DENY_PRIORITY),
                    description: Some(format!("{}/default-deny", p.name())),
                    id: None,
                    reference: None,
                    narrowing: None,
                };
                rules.entry(rule).or_insert_with(|| RuleOrigin {
                    policy: p.name().to_string(),
                    rule: "default-deny".to_string(),
                    location: Some(p.here()),
                });
            }
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
    let adopt = p
        .spec
        .managed_group
        .as_ref()
        .map(|m| m.id.trim().to_string());
    // A group taken over keeps its name (the cloud cannot rename it anyway).
    let name = adopt
        .as_deref()
        .map(|id| {
            cx.inv
                .and_then(|inv| inv.groups.iter().find(|g| g.id.eq_ignore_ascii_case(id)))
                .map_or_else(|| id.to_string(), |g| g.name.clone())
        })
        .unwrap_or_else(|| format!("palisade-{}", p.name()));
    DesiredGroup {
        owner: p.name().to_string(),
        name,
        adopt,
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

pub(super) fn resolve_peer(
    cx: &mut Ctx<'_>,
    p: &PolicyDoc,
    peer: &Located<PeerSpec>,
    endpoints: &BTreeMap<String, DesiredEndpoint>,
) -> Vec<Peer> {
    match &peer.value {
        PeerSpec::Cidr(c) => vec![Peer::cidr(c.0)],
        PeerSpec::SecurityGroup(id) => vec![Peer::Group(GroupRef::Id(id.clone()))],
        PeerSpec::PrefixList(id) => vec![Peer::PrefixList(id.clone())],
        // Azure's `*` is any address, as the NSG reads it back.
        PeerSpec::ServiceTag(t) if t == "*" => vec![Peer::Any],
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
