//! AWS SDK types → the shared model, and model rules → `IpPermission`s. Pure functions,
//! tested table-wise; the only place that knows both vocabularies.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_ec2::types as ec2;
use aws_sdk_lambda::types as lambda;
use ipnet::IpNet;

use crate::model::{
    Direction, Endpoint, EndpointKind, Function, GroupRef, GroupReference, IcmpType, Inventory,
    Network, OwnedKind, Ownership, Peer, Placement, PortRange, Ports, PrefixList, Protocol, Rule,
    SecurityGroup, Subnet, Tags, owner_of,
};
use crate::provider::ProviderError;

/// Everything one observation read, before translation.
#[derive(Debug, Default)]
pub struct Raw {
    pub vpcs: Vec<ec2::Vpc>,
    pub subnets: Vec<ec2::Subnet>,
    pub route_tables: Vec<ec2::RouteTable>,
    pub groups: Vec<ec2::SecurityGroup>,
    pub rules: Vec<ec2::SecurityGroupRule>,
    pub endpoints: Vec<ec2::VpcEndpoint>,
    pub prefix_lists: Vec<ec2::PrefixList>,
    pub functions: Vec<lambda::FunctionConfiguration>,
    /// Function ARN → tags, from the Resource Groups Tagging API.
    pub function_tags: HashMap<String, Tags>,
    /// Group id → the network interfaces other than Lambda's that use it, for the
    /// groups whose users were read (see [`crate::Ownership::candidates`]).
    pub attached: HashMap<String, Vec<String>>,
}

pub fn tags(list: &[ec2::Tag]) -> Tags {
    list.iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect()
}

/// How observed group ids are named in the model: the managed group of an owner (lowest
/// id when two carry the same owner tag) as [`GroupRef::Managed`], everything else by id.
#[derive(Debug, Default)]
pub struct GroupRefs {
    managed: HashMap<String, String>,
}

impl GroupRefs {
    pub fn new<'a>(groups: impl IntoIterator<Item = (&'a str, &'a Tags)>) -> GroupRefs {
        let mut by_owner: BTreeMap<&str, &str> = BTreeMap::new();
        for (id, tags) in groups {
            if let Some(owner) = owner_of(tags) {
                let e = by_owner.entry(owner).or_insert(id);
                if id < *e {
                    *e = id;
                }
            }
        }
        GroupRefs {
            managed: by_owner
                .into_iter()
                .map(|(o, id)| (id.to_string(), o.to_string()))
                .collect(),
        }
    }

    pub fn of(&self, id: &str) -> GroupRef {
        match self.managed.get(id) {
            Some(owner) => GroupRef::Managed(owner.clone()),
            None => GroupRef::Id(id.to_string()),
        }
    }

    /// Owner → id of every managed group.
    pub fn owners(&self) -> HashMap<String, String> {
        self.managed
            .iter()
            .map(|(id, o)| (o.clone(), id.clone()))
            .collect()
    }
}

/// `IpProtocol` as AWS spells it (`tcp`, `6`, `-1`, …).
pub fn protocol(p: &str) -> Protocol {
    match p.to_ascii_lowercase().as_str() {
        "-1" | "all" => Protocol::All,
        "tcp" | "6" => Protocol::Tcp,
        "udp" | "17" => Protocol::Udp,
        "icmp" | "1" => Protocol::Icmp,
        "icmpv6" | "58" => Protocol::Icmpv6,
        other => other.parse().map(Protocol::Number).unwrap_or(Protocol::All),
    }
}

fn ports(proto: Protocol, from: Option<i32>, to: Option<i32>) -> Ports {
    let range = match proto {
        Protocol::Tcp | Protocol::Udp => {
            let port = |p: Option<i32>, d: u16| {
                p.filter(|p| *p >= 0)
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(d)
            };
            Some(PortRange {
                from: port(from, 0),
                to: port(to, 65535),
            })
        }
        _ => None,
    };
    // ICMP: FromPort is the type, ToPort the code; -1 means every type / every code. A
    // type or code AWS cannot send (beyond 255) is read as "every type" — wider, never
    // narrower, so that a guardrail judges the worst case.
    let icmp = match (proto.is_icmp(), from) {
        (true, Some(t)) if t >= 0 => u8::try_from(t).ok().map(|kind| IcmpType {
            kind,
            code: to.filter(|c| *c >= 0).and_then(|c| u8::try_from(c).ok()),
        }),
        _ => None,
    };
    Ports {
        protocol: proto,
        range,
        icmp,
    }
}

/// One `SecurityGroupRule` (already atomic: one CIDR, group or prefix list) as a [`Rule`].
/// `None` for a rule whose peer cannot be read (a malformed CIDR).
pub fn rule(r: &ec2::SecurityGroupRule, refs: &GroupRefs) -> Option<Rule> {
    let direction = if r.is_egress().unwrap_or(false) {
        Direction::Egress
    } else {
        Direction::Ingress
    };
    let proto = protocol(r.ip_protocol().unwrap_or("-1"));
    let peer = if let Some(c) = r.cidr_ipv4().or(r.cidr_ipv6()) {
        Peer::cidr(c.parse::<IpNet>().ok()?)
    } else if let Some(pl) = r.prefix_list_id() {
        Peer::PrefixList(pl.to_string())
    } else if let Some(g) = r.referenced_group_info().and_then(|g| g.group_id()) {
        Peer::Group(refs.of(g))
    } else {
        return None;
    };
    let mut rule = Rule::allow(direction, ports(proto, r.from_port(), r.to_port()), peer);
    rule.description = r
        .description()
        .filter(|d| !d.is_empty())
        .map(str::to_string);
    rule.id = r.security_group_rule_id().map(str::to_string);
    rule.reference = r.referenced_group_info().and_then(|g| {
        let reference = GroupReference {
            account: g.user_id().map(str::to_string),
            vpc: g.vpc_id().map(str::to_string),
            peering_connection: g.vpc_peering_connection_id().map(str::to_string),
            peering_status: g.peering_status().map(str::to_string),
        };
        (reference != GroupReference::default()).then_some(reference)
    });
    Some(rule)
}

/// A model rule as one `IpPermission`; `resolve` turns a group reference into an id.
pub fn ip_permission(
    rule: &Rule,
    resolve: impl Fn(&GroupRef) -> Result<String, ProviderError>,
) -> Result<ec2::IpPermission, ProviderError> {
    let mut p = ec2::IpPermission::builder();
    p = match rule.ports.protocol {
        Protocol::All => p.ip_protocol("-1"),
        Protocol::Tcp | Protocol::Udp => {
            let r = rule.ports.range.unwrap_or(PortRange::ALL);
            p.ip_protocol(rule.ports.protocol.to_string())
                .from_port(i32::from(r.from))
                .to_port(i32::from(r.to))
        }
        Protocol::Icmp | Protocol::Icmpv6 => {
            let (kind, code) = match rule.ports.icmp {
                Some(t) => (i32::from(t.kind), t.code.map_or(-1, i32::from)),
                None => (-1, -1),
            };
            let name = if rule.ports.protocol == Protocol::Icmp {
                "icmp"
            } else {
                "icmpv6"
            };
            p.ip_protocol(name).from_port(kind).to_port(code)
        }
        Protocol::Number(n) => p.ip_protocol(n.to_string()),
    };
    let desc = rule.description.clone();
    p = match &rule.peer {
        Peer::Cidr(IpNet::V4(n)) => p.ip_ranges(
            ec2::IpRange::builder()
                .cidr_ip(n.to_string())
                .set_description(desc)
                .build(),
        ),
        Peer::Cidr(IpNet::V6(n)) => p.ipv6_ranges(
            ec2::Ipv6Range::builder()
                .cidr_ipv6(n.to_string())
                .set_description(desc)
                .build(),
        ),
        Peer::Group(g) => p.user_id_group_pairs(
            ec2::UserIdGroupPair::builder()
                .group_id(resolve(g)?)
                .set_description(desc)
                .build(),
        ),
        Peer::PrefixList(id) => p.prefix_list_ids(
            ec2::PrefixListId::builder()
                .prefix_list_id(id)
                .set_description(desc)
                .build(),
        ),
        Peer::ServiceTag(_) | Peer::Any | Peer::Asg(_) => {
            return Err(ProviderError::refused(
                crate::RefusalKind::Unsupported,
                "AuthorizeSecurityGroupRules",
                format!(
                    "{rule}: AWS security groups have no service tags, application security groups or `*` peer"
                ),
            ));
        }
    };
    Ok(p.build())
}

fn ipnets<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<IpNet> {
    let mut v: Vec<IpNet> = items
        .into_iter()
        .filter_map(|c| c.parse::<IpNet>().ok().map(|n| n.trunc()))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Whether a network interface is one Lambda made for a function (its own users are
/// the functions, which the inventory already knows).
/// Only the interface type counts: a description is anyone's to write.
pub fn is_lambda_eni(eni: &ec2::NetworkInterface) -> bool {
    eni.interface_type()
        .is_some_and(|t| t.as_str().eq_ignore_ascii_case("lambda"))
}

/// How a network interface is named in a report: its id and, cut short and stripped of
/// hidden characters (it is the cloud's text), its description.
pub fn eni_label(eni: &ec2::NetworkInterface) -> String {
    let id = eni.network_interface_id().unwrap_or("eni-?");
    match eni.description().map(crate::model::audit_text) {
        Some(d) if !d.is_empty() => format!("{id} ({d})"),
        _ => id.to_string(),
    }
}

/// Whether an endpoint in this state still exists. AWS answers in lower case
/// (`available`, `deleted`) although the SDK's enum is capitalised; moto keeps deleted
/// endpoints listed as `deleted`.
pub fn endpoint_is_live(state: &ec2::State) -> bool {
    const GONE: [&str; 5] = ["deleted", "deleting", "failed", "rejected", "expired"];
    !GONE.iter().any(|g| state.as_str().eq_ignore_ascii_case(g))
}

/// Translate one observation into the model.
pub fn inventory(target: &str, raw: &Raw, ownership: &Ownership) -> Inventory {
    // Ownership first: references name a managed group by owner only when ownership
    // says it is one, and the groups below carry these vetted tags.
    let mut notes = Vec::new();
    let mut group_tags: HashMap<String, Tags> = raw
        .groups
        .iter()
        .filter_map(|g| {
            let id = g.group_id()?;
            let mut t = tags(g.tags());
            notes.extend(ownership.vet(OwnedKind::Group, id, &mut t));
            Some((id.to_string(), t))
        })
        .collect();
    let refs = GroupRefs::new(group_tags.iter().map(|(id, t)| (id.as_str(), t)));

    let networks = raw
        .vpcs
        .iter()
        .filter_map(|v| {
            let tags = tags(v.tags());
            let mut cidrs: Vec<&str> = v
                .cidr_block_association_set()
                .iter()
                .filter(|a| {
                    a.cidr_block_state()
                        .and_then(|s| s.state())
                        .is_none_or(|s| *s == ec2::VpcCidrBlockStateCode::Associated)
                })
                .filter_map(|a| a.cidr_block())
                .collect();
            if cidrs.is_empty() {
                cidrs.extend(v.cidr_block());
            }
            cidrs.extend(
                v.ipv6_cidr_block_association_set()
                    .iter()
                    .filter_map(|a| a.ipv6_cidr_block()),
            );
            Some(Network {
                id: v.vpc_id()?.to_string(),
                name: tags.get("Name").cloned().unwrap_or_default(),
                cidrs: ipnets(cidrs),
                tags,
            })
        })
        .collect();

    // Subnet → route table: the explicit association, else the VPC's main table.
    let mut explicit: HashMap<&str, &str> = HashMap::new();
    let mut main: HashMap<&str, &str> = HashMap::new();
    for rt in &raw.route_tables {
        let (Some(id), Some(vpc)) = (rt.route_table_id(), rt.vpc_id()) else {
            continue;
        };
        for a in rt.associations() {
            if a.main().unwrap_or(false) {
                main.insert(vpc, id);
            } else if let Some(s) = a.subnet_id() {
                explicit.insert(s, id);
            }
        }
    }
    let subnets: Vec<Subnet> = raw
        .subnets
        .iter()
        .filter_map(|s| {
            let id = s.subnet_id()?;
            let network = s.vpc_id()?;
            let tags = tags(s.tags());
            let mut cidrs: Vec<&str> = s.cidr_block().into_iter().collect();
            cidrs.extend(
                s.ipv6_cidr_block_association_set()
                    .iter()
                    .filter_map(|a| a.ipv6_cidr_block()),
            );
            Some(Subnet {
                id: id.to_string(),
                name: tags.get("Name").cloned().unwrap_or_default(),
                network: network.to_string(),
                cidrs: ipnets(cidrs),
                tags,
                zone: s.availability_zone().map(str::to_string),
                route_table: explicit
                    .get(id)
                    .or_else(|| main.get(network))
                    .map(|s| s.to_string()),
                group: None,
                delegations: Vec::new(),
            })
        })
        .collect();
    let subnet_vpc: HashMap<&str, &str> = subnets
        .iter()
        .map(|s| (s.id.as_str(), s.network.as_str()))
        .collect();

    let mut rules: HashMap<&str, Vec<Rule>> = HashMap::new();
    for r in &raw.rules {
        if let (Some(g), Some(rule)) = (r.group_id(), rule(r, &refs)) {
            rules.entry(g).or_default().push(rule);
        }
    }
    let groups = raw
        .groups
        .iter()
        .filter_map(|g| {
            let id = g.group_id()?;
            let mut rules = rules.remove(id).unwrap_or_default();
            rules.sort();
            Some(SecurityGroup {
                id: id.to_string(),
                name: g.group_name().unwrap_or_default().to_string(),
                network: g.vpc_id().unwrap_or_default().to_string(),
                tags: group_tags.remove(id).unwrap_or_default(),
                rules,
                default_rules: Vec::new(),
                attached: raw.attached.get(id).cloned(),
            })
        })
        .collect();

    let functions = raw
        .functions
        .iter()
        .filter_map(|f| {
            let arn = f.function_arn()?;
            let placement = f.vpc_config().and_then(|v| {
                let subnets: Vec<String> = v.subnet_ids().to_vec();
                let first = subnets.first()?;
                // Lambda's own VpcId is not trusted (moto always says vpc-123abc): the
                // VPC is the one the subnets belong to.
                let network = subnet_vpc
                    .get(first.as_str())
                    .map(|s| s.to_string())
                    .or_else(|| v.vpc_id().map(str::to_string))
                    .unwrap_or_default();
                Some(
                    Placement {
                        network,
                        subnets,
                        groups: v.security_group_ids().iter().map(|g| refs.of(g)).collect(),
                        route_all: false,
                    }
                    .normalised(),
                )
            });
            Some(Function {
                inbound: None,
                id: arn.to_string(),
                name: f.function_name().unwrap_or_default().to_string(),
                tags: raw.function_tags.get(arn).cloned().unwrap_or_default(),
                placement,
            })
        })
        .collect();

    let endpoints = raw
        .endpoints
        .iter()
        .filter(|e| e.state().is_none_or(endpoint_is_live))
        .filter_map(|e| {
            let kind = match e.vpc_endpoint_type()? {
                ec2::VpcEndpointType::Interface => EndpointKind::Interface,
                ec2::VpcEndpointType::Gateway => EndpointKind::Gateway,
                _ => return None,
            };
            let sorted = |v: &[String]| {
                let mut v = v.to_vec();
                v.sort();
                v.dedup();
                v
            };
            let mut groups: Vec<GroupRef> = e
                .groups()
                .iter()
                .filter_map(|g| g.group_id())
                .map(|g| refs.of(g))
                .collect();
            groups.sort();
            groups.dedup();
            Some(Endpoint {
                id: e.vpc_endpoint_id()?.to_string(),
                service: e.service_name()?.to_string(),
                kind,
                network: e.vpc_id().unwrap_or_default().to_string(),
                subnets: sorted(e.subnet_ids()),
                groups,
                route_tables: sorted(e.route_table_ids()),
                // Private DNS means nothing for a gateway endpoint (moto says `true`).
                private_dns: kind == EndpointKind::Interface
                    && e.private_dns_enabled().unwrap_or(false),
                tags: tags(e.tags()),
                connection: None,
            })
        })
        .collect();

    let prefix_lists = raw
        .prefix_lists
        .iter()
        .filter_map(|p| {
            Some(PrefixList {
                id: p.prefix_list_id()?.to_string(),
                name: p.prefix_list_name()?.to_string(),
            })
        })
        .collect();

    let mut inv = Inventory {
        target: target.to_string(),
        networks,
        subnets,
        functions,
        groups,
        endpoints,
        prefix_lists,
        ownership: notes,
        ..Inventory::default()
    };
    ownership.vet_endpoints(&mut inv);
    inv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Access, ownership_tags};

    fn sgr(
        f: impl FnOnce(
            ec2::builders::SecurityGroupRuleBuilder,
        ) -> ec2::builders::SecurityGroupRuleBuilder,
    ) -> ec2::SecurityGroupRule {
        f(ec2::SecurityGroupRule::builder()
            .security_group_rule_id("sgr-1")
            .group_id("sg-1")
            .is_egress(false))
        .build()
    }

    fn tcp(from: u16, to: u16) -> Ports {
        Ports {
            protocol: Protocol::Tcp,
            range: Some(PortRange { from, to }),
            icmp: None,
        }
    }

    #[test]
    fn rules_translate_one_tuple_each() {
        let managed = ownership_tags("payments-db");
        let refs = GroupRefs::new([("sg-db", &managed)]);
        let cidr = |s: &str| Peer::Cidr(s.parse().unwrap());
        let cases: Vec<(ec2::SecurityGroupRule, Direction, Ports, Peer)> = vec![
            (
                sgr(|b| {
                    b.ip_protocol("tcp")
                        .from_port(443)
                        .to_port(443)
                        .cidr_ipv4("10.0.0.7/16")
                }),
                Direction::Ingress,
                tcp(443, 443),
                cidr("10.0.0.0/16"),
            ),
            (
                sgr(|b| {
                    b.is_egress(true)
                        .ip_protocol("-1")
                        .from_port(-1)
                        .to_port(-1)
                        .cidr_ipv4("0.0.0.0/0")
                }),
                Direction::Egress,
                Ports::ALL,
                cidr("0.0.0.0/0"),
            ),
            (
                sgr(|b| {
                    b.ip_protocol("udp")
                        .from_port(53)
                        .to_port(53)
                        .cidr_ipv6("2001:db8::1/64")
                }),
                Direction::Ingress,
                Ports {
                    protocol: Protocol::Udp,
                    range: Some(PortRange { from: 53, to: 53 }),
                    icmp: None,
                },
                cidr("2001:db8::/64"),
            ),
            (
                sgr(|b| {
                    b.ip_protocol("6")
                        .from_port(5432)
                        .to_port(5432)
                        .referenced_group_info(
                            ec2::ReferencedSecurityGroup::builder()
                                .group_id("sg-db")
                                .build(),
                        )
                }),
                Direction::Ingress,
                tcp(5432, 5432),
                Peer::Group(GroupRef::Managed("payments-db".into())),
            ),
            (
                sgr(|b| {
                    b.ip_protocol("tcp")
                        .from_port(22)
                        .to_port(22)
                        .referenced_group_info(
                            ec2::ReferencedSecurityGroup::builder()
                                .group_id("sg-other")
                                .build(),
                        )
                }),
                Direction::Ingress,
                tcp(22, 22),
                Peer::Group(GroupRef::Id("sg-other".into())),
            ),
            (
                sgr(|b| {
                    b.is_egress(true)
                        .ip_protocol("tcp")
                        .from_port(443)
                        .to_port(443)
                        .prefix_list_id("pl-63a5400a")
                }),
                Direction::Egress,
                tcp(443, 443),
                Peer::PrefixList("pl-63a5400a".into()),
            ),
            (
                sgr(|b| {
                    b.ip_protocol("icmp")
                        .from_port(-1)
                        .to_port(-1)
                        .cidr_ipv4("10.0.0.0/8")
                }),
                Direction::Ingress,
                Ports {
                    protocol: Protocol::Icmp,
                    range: None,
                    icmp: None,
                },
                cidr("10.0.0.0/8"),
            ),
            (
                sgr(|b| b.ip_protocol("50").cidr_ipv4("10.0.0.0/8")),
                Direction::Ingress,
                Ports {
                    protocol: Protocol::Number(50),
                    range: None,
                    icmp: None,
                },
                cidr("10.0.0.0/8"),
            ),
            (
                // tcp with no ports means every port.
                sgr(|b| b.ip_protocol("tcp").cidr_ipv4("10.0.0.0/8")),
                Direction::Ingress,
                tcp(0, 65535),
                cidr("10.0.0.0/8"),
            ),
        ];
        for (raw, direction, ports, peer) in cases {
            let r = rule(&raw, &refs).unwrap_or_else(|| panic!("{raw:?} did not translate"));
            assert_eq!(
                (r.direction, r.ports, &r.peer, r.access),
                (direction, ports, &peer, Access::Allow),
                "{raw:?}"
            );
            assert_eq!(r.id.as_deref(), Some("sgr-1"));
        }
        assert!(
            rule(
                &sgr(|b| b.ip_protocol("tcp").cidr_ipv4("not-a-cidr")),
                &refs
            )
            .is_none()
        );
    }

    #[test]
    fn every_icmp_shape_aws_returns_reads_exactly_and_writes_back_the_same() {
        let refs = GroupRefs::default();
        let t = |kind, code| Some(IcmpType { kind, code });
        let cases = [
            ("icmp", -1, -1, Protocol::Icmp, None),
            ("1", -1, -1, Protocol::Icmp, None),
            ("icmp", 15, -1, Protocol::Icmp, t(15, None)),
            ("icmp", 8, 0, Protocol::Icmp, t(8, Some(0))),
            ("icmp", 3, 4, Protocol::Icmp, t(3, Some(4))),
            ("1", 3, 4, Protocol::Icmp, t(3, Some(4))),
            ("icmpv6", -1, -1, Protocol::Icmpv6, None),
            ("58", 128, -1, Protocol::Icmpv6, t(128, None)),
            ("icmpv6", 1, 4, Protocol::Icmpv6, t(1, Some(4))),
            // What AWS cannot send is read wide (every type), never narrow.
            ("icmp", 300, 0, Protocol::Icmp, None),
        ];
        for (proto, from, to, protocol, icmp) in cases {
            let raw = sgr(|b| {
                b.ip_protocol(proto)
                    .from_port(from)
                    .to_port(to)
                    .cidr_ipv4("10.0.0.0/8")
            });
            let r = rule(&raw, &refs).unwrap();
            let want = Ports {
                protocol,
                range: None,
                icmp,
            };
            assert_eq!(r.ports, want, "{proto} {from}/{to}");
            if from <= 255 {
                let p = ip_permission(&r, |_| Ok(String::new())).unwrap();
                let name = if protocol == Protocol::Icmp {
                    "icmp"
                } else {
                    "icmpv6"
                };
                assert_eq!(
                    (p.ip_protocol(), p.from_port(), p.to_port()),
                    (Some(name), Some(from), Some(to)),
                    "{proto} {from}/{to} written back"
                );
            }
        }
    }

    #[test]
    fn a_peered_reference_keeps_its_account_and_peering() {
        let refs = GroupRefs::default();
        let raw = sgr(|b| {
            b.ip_protocol("tcp")
                .from_port(5432)
                .to_port(5432)
                .referenced_group_info(
                    ec2::ReferencedSecurityGroup::builder()
                        .group_id("sg-0peer")
                        .user_id("210987654321")
                        .vpc_id("vpc-0peer")
                        .vpc_peering_connection_id("pcx-0dead")
                        .peering_status("deleted")
                        .build(),
                )
        });
        let r = rule(&raw, &refs).unwrap();
        let reference = r.reference.clone().unwrap();
        assert_eq!(reference.account.as_deref(), Some("210987654321"));
        assert_eq!(reference.peering_connection.as_deref(), Some("pcx-0dead"));
        assert!(reference.is_stale());
        // Not part of the rule's identity.
        let mut plain = r.clone();
        plain.reference = None;
        assert_eq!(r, plain);
    }

    #[test]
    fn descriptions_are_kept_but_do_not_count() {
        let refs = GroupRefs::default();
        let r = rule(
            &sgr(|b| {
                b.ip_protocol("tcp")
                    .from_port(1)
                    .to_port(1)
                    .cidr_ipv4("10.0.0.0/8")
                    .description("hand")
            }),
            &refs,
        )
        .unwrap();
        assert_eq!(r.description.as_deref(), Some("hand"));
        assert_eq!(
            r,
            Rule::allow(
                Direction::Ingress,
                tcp(1, 1),
                Peer::Cidr("10.0.0.0/8".parse().unwrap())
            )
        );
    }

    #[test]
    fn ip_permissions_round_trip_through_rules() {
        let resolve = |g: &GroupRef| match g {
            GroupRef::Managed(o) => Ok(format!("sg-{o}")),
            GroupRef::Id(id) => Ok(id.clone()),
        };
        let rules = [
            Rule::allow(
                Direction::Ingress,
                tcp(8443, 8443),
                Peer::Cidr("10.0.0.0/16".parse().unwrap()),
            ),
            Rule::allow(
                Direction::Egress,
                Ports::ALL,
                Peer::Cidr("::/0".parse().unwrap()),
            ),
            Rule::allow(
                Direction::Egress,
                tcp(5432, 5432),
                Peer::Group(GroupRef::Managed("db".into())),
            ),
            Rule::allow(
                Direction::Egress,
                tcp(443, 443),
                Peer::PrefixList("pl-1".into()),
            ),
            Rule::allow(
                Direction::Ingress,
                Ports {
                    protocol: Protocol::Icmp,
                    range: None,
                    icmp: None,
                },
                Peer::Cidr("10.0.0.0/8".parse().unwrap()),
            ),
        ];
        let refs = GroupRefs::new([("sg-db", &ownership_tags("db"))]);
        for want in rules {
            let p = ip_permission(&want, resolve).unwrap();
            // What AWS would list for this permission.
            let b = ec2::SecurityGroupRule::builder()
                .security_group_rule_id("sgr-x")
                .is_egress(want.direction == Direction::Egress)
                .set_ip_protocol(p.ip_protocol().map(str::to_string))
                .set_from_port(p.from_port())
                .set_to_port(p.to_port())
                .set_cidr_ipv4(
                    p.ip_ranges()
                        .first()
                        .and_then(|r| r.cidr_ip())
                        .map(str::to_string),
                )
                .set_cidr_ipv6(
                    p.ipv6_ranges()
                        .first()
                        .and_then(|r| r.cidr_ipv6())
                        .map(str::to_string),
                )
                .set_prefix_list_id(
                    p.prefix_list_ids()
                        .first()
                        .and_then(|r| r.prefix_list_id())
                        .map(str::to_string),
                )
                .set_referenced_group_info(p.user_id_group_pairs().first().map(|g| {
                    ec2::ReferencedSecurityGroup::builder()
                        .set_group_id(g.group_id().map(str::to_string))
                        .build()
                }));
            assert_eq!(rule(&b.build(), &refs).unwrap(), want);
        }
        let azure_only = Rule::allow(
            Direction::Ingress,
            tcp(1, 1),
            Peer::ServiceTag("Internet".into()),
        );
        assert!(ip_permission(&azure_only, resolve).is_err());
    }

    #[test]
    fn inventory_derives_vpc_from_subnets_and_names_managed_groups() {
        let raw = Raw {
            subnets: vec![
                ec2::Subnet::builder()
                    .subnet_id("subnet-a")
                    .vpc_id("vpc-real")
                    .cidr_block("10.0.1.0/24")
                    .availability_zone("us-east-1a")
                    .build(),
            ],
            route_tables: vec![
                ec2::RouteTable::builder()
                    .route_table_id("rtb-main")
                    .vpc_id("vpc-real")
                    .associations(ec2::RouteTableAssociation::builder().main(true).build())
                    .build(),
            ],
            groups: vec![
                ec2::SecurityGroup::builder()
                    .group_id("sg-b")
                    .group_name("palisade-api")
                    .vpc_id("vpc-real")
                    .set_tags(Some(
                        ownership_tags("api")
                            .into_iter()
                            .map(|(k, v)| ec2::Tag::builder().key(k).value(v).build())
                            .collect(),
                    ))
                    .build(),
                ec2::SecurityGroup::builder()
                    .group_id("sg-a")
                    .group_name("palisade-api-copy")
                    .vpc_id("vpc-real")
                    .set_tags(Some(
                        ownership_tags("api")
                            .into_iter()
                            .map(|(k, v)| ec2::Tag::builder().key(k).value(v).build())
                            .collect(),
                    ))
                    .build(),
            ],
            functions: vec![
                lambda::FunctionConfiguration::builder()
                    .function_name("f")
                    .function_arn("arn:f")
                    .vpc_config(
                        lambda::VpcConfigResponse::builder()
                            .subnet_ids("subnet-a")
                            .security_group_ids("sg-b")
                            .security_group_ids("sg-a")
                            .vpc_id("vpc-123abc")
                            .build(),
                    )
                    .build(),
                lambda::FunctionConfiguration::builder()
                    .function_name("g")
                    .function_arn("arn:g")
                    .vpc_config(lambda::VpcConfigResponse::builder().vpc_id("").build())
                    .build(),
            ],
            function_tags: HashMap::from([(
                "arn:f".to_string(),
                Tags::from([("app".to_string(), "x".to_string())]),
            )]),
            endpoints: vec![
                ec2::VpcEndpoint::builder()
                    .vpc_endpoint_id("vpce-gone")
                    .vpc_endpoint_type(ec2::VpcEndpointType::Gateway)
                    .service_name("s3")
                    .state(ec2::State::Deleted)
                    .build(),
                ec2::VpcEndpoint::builder()
                    .vpc_endpoint_id("vpce-1")
                    .vpc_endpoint_type(ec2::VpcEndpointType::Interface)
                    .service_name("com.amazonaws.us-east-1.sts")
                    .vpc_id("vpc-real")
                    .state(ec2::State::Available)
                    .subnet_ids("subnet-a")
                    .groups(
                        ec2::SecurityGroupIdentifier::builder()
                            .group_id("sg-a")
                            .build(),
                    )
                    .private_dns_enabled(true)
                    .build(),
            ],
            ..Raw::default()
        };
        let inv = inventory("t", &raw, &Ownership::default());
        let f = &inv.functions[0];
        assert_eq!(f.tags.get("app").map(String::as_str), Some("x"));
        let p = f.placement.as_ref().unwrap();
        assert_eq!(p.network, "vpc-real", "never Lambda's VpcId");
        // sg-a is the lowest id, so it is the managed group; sg-b is a stray duplicate.
        assert_eq!(
            p.groups,
            vec![GroupRef::Managed("api".into()), GroupRef::Id("sg-b".into())]
        );
        assert_eq!(
            inv.functions[1].placement, None,
            "empty VpcConfig = not in a VPC"
        );
        assert_eq!(inv.subnets[0].route_table.as_deref(), Some("rtb-main"));
        assert_eq!(inv.endpoints.len(), 1, "deleted endpoints are not listed");
        assert_eq!(
            inv.endpoints[0].groups,
            vec![GroupRef::Managed("api".into())]
        );
        assert_eq!(inv.managed_group("api").unwrap().id, "sg-a");
    }
}
