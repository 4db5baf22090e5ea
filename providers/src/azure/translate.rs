//! ARM shapes ↔ the cloud-neutral model. Pure functions, table-tested.
//!
//! - ARM ids are compared case-insensitively; references (a subnet's NSG, a site's
//!   integration subnet, an endpoint's subnet) are rewritten to the id as the listing of
//!   the referenced resource spelled it, so that the engine compares equal strings.
//! - A security rule becomes one [`Rule`] per (prefix × port range), peer on the far side
//!   (source for inbound, destination for outbound). Rules of the shape Palisade writes
//!   (near side `*`, source port `*`, one prefix, one port range) keep their priority; any
//!   other shape is observed without one, so it never equals a desired rule and is
//!   reverted as drift.

use std::collections::HashMap;

use azure_mgmt_network::package_2024_03::models as m;
use ipnet::IpNet;
use serde_json::{Value, json};

use crate::model::{
    Access, Direction, Endpoint, EndpointKind, Function, GroupRef, Inbound, InboundPeer,
    InboundRule, Narrowing, Network, Peer, Placement, PortRange, Ports, Protocol, Rule,
    SecurityGroup, Subnet, Tags, owner_of,
};

/// Tags from ARM's `tags` object.
pub fn tags(v: Option<&Value>) -> Tags {
    v.and_then(Value::as_object)
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Lower-cased id → id as listed.
#[derive(Debug, Default)]
pub struct Ids(HashMap<String, String>);

impl Ids {
    pub fn add(&mut self, id: &str) {
        self.0.insert(id.to_ascii_lowercase(), id.to_string());
    }
    /// The listed spelling of `id`, or `id` itself when it was not listed.
    pub fn canonical(&self, id: &str) -> String {
        self.0
            .get(&id.to_ascii_lowercase())
            .cloned()
            .unwrap_or_else(|| id.to_string())
    }
}

/// The parent VNet id of a subnet id.
pub fn vnet_of(subnet: &str) -> String {
    match subnet.to_ascii_lowercase().rfind("/subnets/") {
        Some(i) => subnet[..i].to_string(),
        None => subnet.to_string(),
    }
}

/// The last segment of an ARM id.
pub fn name_of(id: &str) -> &str {
    id.rsplit('/').next().unwrap_or(id)
}

fn prefixes(single: Option<&str>, many: &[String]) -> Vec<IpNet> {
    single
        .into_iter()
        .chain(many.iter().map(String::as_str))
        .filter_map(|p| p.parse::<IpNet>().ok())
        .map(|n| n.trunc())
        .collect()
}

/// VNets and their subnets. `groups` maps NSG ids to their owner for managed NSGs.
pub fn networks(
    vnets: &[m::VirtualNetwork],
    owners: &HashMap<String, String>,
    ids: &Ids,
) -> (Vec<Network>, Vec<Subnet>) {
    let mut networks = Vec::new();
    let mut subnets = Vec::new();
    for v in vnets {
        let Some(id) = v.resource.id.clone() else {
            continue;
        };
        let props = v.properties.as_ref();
        networks.push(Network {
            id: id.clone(),
            name: v
                .resource
                .name
                .clone()
                .unwrap_or_else(|| name_of(&id).into()),
            cidrs: props
                .and_then(|p| p.address_space.as_ref())
                .map(|a| prefixes(None, &a.address_prefixes))
                .unwrap_or_default(),
            tags: tags(v.resource.tags.as_ref()),
        });
        for s in props.map(|p| p.subnets.as_slice()).unwrap_or_default() {
            let Some(sid) = s.sub_resource.id.clone() else {
                continue;
            };
            let sp = s.properties.as_ref();
            let group = sp
                .and_then(|p| p.network_security_group.as_ref())
                .and_then(|g| g.resource.id.as_deref())
                .map(|g| group_ref(g, owners, ids));
            subnets.push(Subnet {
                id: sid.clone(),
                name: s.name.clone().unwrap_or_else(|| name_of(&sid).into()),
                network: id.clone(),
                cidrs: sp
                    .map(|p| prefixes(p.address_prefix.as_deref(), &p.address_prefixes))
                    .unwrap_or_default(),
                tags: Tags::new(),
                zone: None,
                route_table: None,
                group,
                delegations: sp
                    .map(|p| {
                        p.delegations
                            .iter()
                            .filter_map(|d| d.properties.as_ref()?.service_name.clone())
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
    }
    (networks, subnets)
}

/// A reference to an NSG: managed ones by owner, others by (canonical) id.
pub fn group_ref(id: &str, owners: &HashMap<String, String>, ids: &Ids) -> GroupRef {
    match owners.get(&id.to_ascii_lowercase()) {
        Some(owner) => GroupRef::Managed(owner.clone()),
        None => GroupRef::Id(ids.canonical(id)),
    }
}

/// NSGs with their rules, and Azure's default rules apart (never planned; judged by
/// the guardrails).
pub fn groups(nsgs: &[m::NetworkSecurityGroup]) -> Vec<SecurityGroup> {
    nsgs.iter()
        .filter_map(|g| {
            let id = g.resource.id.clone()?;
            let rules = g
                .properties
                .as_ref()
                .map(|p| p.security_rules.iter().flat_map(rules_of).collect())
                .unwrap_or_default();
            let default_rules = g
                .properties
                .as_ref()
                .map(|p| p.default_security_rules.iter().flat_map(rules_of).collect())
                .unwrap_or_default();
            Some(SecurityGroup {
                name: g
                    .resource
                    .name
                    .clone()
                    .unwrap_or_else(|| name_of(&id).into()),
                id,
                network: String::new(),
                tags: tags(g.resource.tags.as_ref()),
                rules,
                default_rules,
                attached: g.properties.as_ref().map(|p| {
                    p.subnets
                        .iter()
                        .filter_map(|sn| sn.sub_resource.id.clone())
                        .chain(
                            p.network_interfaces
                                .iter()
                                .filter_map(|n| n.resource.id.clone()),
                        )
                        .collect()
                }),
            })
        })
        .collect()
}

/// Lower-cased NSG id → owner key, for managed NSGs.
pub fn owners(groups: &[SecurityGroup]) -> HashMap<String, String> {
    groups
        .iter()
        .filter_map(|g| Some((g.id.to_ascii_lowercase(), owner_of(&g.tags)?.to_string())))
        .collect()
}

fn peer(p: &str) -> Peer {
    if p == "*" {
        return Peer::Any;
    }
    if let Ok(net) = p.parse::<IpNet>() {
        return Peer::cidr(net);
    }
    if let Ok(ip) = p.parse::<std::net::IpAddr>() {
        return Peer::cidr(IpNet::from(ip));
    }
    Peer::ServiceTag(p.to_string())
}

fn protocol(p: &m::security_rule_properties_format::Protocol) -> Protocol {
    use m::security_rule_properties_format::Protocol as P;
    match p {
        P::Tcp => Protocol::Tcp,
        P::Udp => Protocol::Udp,
        P::Icmp => Protocol::Icmp,
        P::Esp => Protocol::Number(50),
        P::Ah => Protocol::Number(51),
        P::U2a => Protocol::All,
        P::UnknownValue(s) => match s.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "icmp" => Protocol::Icmp,
            "esp" => Protocol::Number(50),
            "ah" => Protocol::Number(51),
            _ => Protocol::All,
        },
    }
}

fn port_range(s: &str) -> Option<PortRange> {
    if s == "*" {
        return Some(PortRange::ALL);
    }
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    Some(PortRange {
        from: a.trim().parse().ok()?,
        to: b.trim().parse().ok()?,
    })
}

fn ports(protocol: Protocol, range: &str) -> Ports {
    let range = port_range(range);
    let range = match protocol {
        Protocol::Tcp | Protocol::Udp => Some(range.unwrap_or(PortRange::ALL)),
        Protocol::Icmp | Protocol::Icmpv6 | Protocol::Number(_) => None,
        Protocol::All => range.filter(|r| *r != PortRange::ALL),
    };
    Ports {
        protocol,
        range,
        icmp: None,
    }
}

/// One ARM security rule as atomic model rules.
pub fn rules_of(r: &m::SecurityRule) -> Vec<Rule> {
    let Some(p) = r.properties.as_ref() else {
        return Vec::new();
    };
    let direction = match &p.direction {
        m::SecurityRuleDirection::Outbound => Direction::Egress,
        m::SecurityRuleDirection::UnknownValue(s) if s.eq_ignore_ascii_case("outbound") => {
            Direction::Egress
        }
        _ => Direction::Ingress,
    };
    let access = match &p.access {
        m::SecurityRuleAccess::Deny => Access::Deny,
        m::SecurityRuleAccess::UnknownValue(s) if s.eq_ignore_ascii_case("deny") => Access::Deny,
        _ => Access::Allow,
    };
    let (far, far_many, far_asgs, near, near_many, near_asgs) = match direction {
        Direction::Ingress => (
            &p.source_address_prefix,
            &p.source_address_prefixes,
            &p.source_application_security_groups,
            &p.destination_address_prefix,
            &p.destination_address_prefixes,
            &p.destination_application_security_groups,
        ),
        Direction::Egress => (
            &p.destination_address_prefix,
            &p.destination_address_prefixes,
            &p.destination_application_security_groups,
            &p.source_address_prefix,
            &p.source_address_prefixes,
            &p.source_application_security_groups,
        ),
    };
    // Empty prefix strings (ARM returns `""` beside a list) name nothing.
    let mut peers: Vec<Peer> = far
        .iter()
        .chain(far_many.iter())
        .filter(|s| !s.trim().is_empty())
        .map(|s| peer(s))
        .collect();
    peers.extend(
        far_asgs
            .iter()
            .filter_map(|a| a.resource.id.as_deref())
            .map(|id| Peer::Asg(id.to_string())),
    );
    let port_specs: Vec<&String> = p
        .destination_port_range
        .iter()
        .chain(p.destination_port_ranges.iter())
        .collect();
    let proto = protocol(&p.protocol);
    // The near side (what the NSG protects) and source ports: `*` or absent is "any";
    // anything else narrows the rule, and is kept so that it is judged as it is.
    let mut near_list: Vec<String> = near
        .iter()
        .chain(near_many.iter())
        .filter(|s| !s.trim().is_empty() && s.as_str() != "*")
        .cloned()
        .collect();
    near_list.extend(
        near_asgs
            .iter()
            .filter_map(|a| a.resource.id.clone())
            .map(|id| format!("asg:{id}")),
    );
    let source_ports: Vec<String> = p
        .source_port_range
        .iter()
        .chain(p.source_port_ranges.iter())
        .filter(|s| !s.trim().is_empty() && s.as_str() != "*")
        .cloned()
        .collect();
    let canonical = near_list.is_empty()
        && source_ports.is_empty()
        && peers.len() == 1
        && port_specs.len() <= 1
        && far_asgs.is_empty();
    let observed_priority = u16::try_from(p.priority).ok();
    let priority = observed_priority.filter(|_| canonical);
    let narrowing = (!canonical).then_some(Narrowing {
        priority: observed_priority,
        near: near_list,
        source_ports,
    });
    let name = r.name.clone();
    let mut out = Vec::new();
    let all = "*".to_string();
    let port_specs = if port_specs.is_empty() {
        vec![&all]
    } else {
        port_specs
    };
    for peer in &peers {
        for spec in &port_specs {
            out.push(Rule {
                direction,
                ports: ports(proto, spec),
                peer: peer.clone(),
                access,
                priority,
                description: p.description.clone(),
                id: name.clone(),
                reference: None,
                narrowing: narrowing.clone(),
            });
        }
    }
    out
}

/// The ARM name Palisade gives the rule in a slot: one rule per direction and priority,
/// so that a changed rule is replaced in place and unchanged policies never renumber.
pub fn rule_name(rule: &Rule) -> Result<String, String> {
    let prio = rule
        .priority
        .ok_or_else(|| format!("rule {rule} has no NSG priority"))?;
    let dir = match rule.direction {
        Direction::Ingress => "in",
        Direction::Egress => "out",
    };
    Ok(format!("palisade-{dir}-{prio}"))
}

/// A model rule as the body of `SecurityRules_CreateOrUpdate`.
pub fn rule_body(rule: &Rule) -> Result<Value, String> {
    let prio = rule
        .priority
        .ok_or_else(|| format!("rule {rule} has no NSG priority"))?;
    let far = match &rule.peer {
        Peer::Any => "*".to_string(),
        Peer::Cidr(n) => n.to_string(),
        Peer::ServiceTag(t) => t.clone(),
        Peer::Group(g) => {
            return Err(format!(
                "an NSG rule cannot name a security group ({g}); function apps cannot join application security groups"
            ));
        }
        Peer::PrefixList(p) => {
            return Err(format!("an NSG rule cannot name an AWS prefix list ({p})"));
        }
        Peer::Asg(id) => {
            return Err(format!(
                "Palisade never writes application security groups ({id}); function apps cannot join them"
            ));
        }
    };
    let protocol = match rule.ports.protocol {
        Protocol::Tcp => "Tcp",
        Protocol::Udp => "Udp",
        // NSG rules cannot restrict ICMP types (validation refuses policies that ask).
        Protocol::Icmp if rule.ports.icmp.is_none() => "Icmp",
        Protocol::Icmp | Protocol::Icmpv6 => {
            return Err(format!(
                "NSG rules cannot carry {}: Azure's Icmp protocol admits every ICMP type",
                rule.ports
            ));
        }
        Protocol::All => "*",
        Protocol::Number(50) => "Esp",
        Protocol::Number(51) => "Ah",
        Protocol::Number(n) => return Err(format!("NSG rules cannot carry IP protocol {n}")),
    };
    let port = match rule.ports.range {
        None => "*".to_string(),
        Some(r) if r == PortRange::ALL => "*".to_string(),
        Some(r) => r.to_string(),
    };
    let (source, destination, direction) = match rule.direction {
        Direction::Ingress => (far, "*".to_string(), "Inbound"),
        Direction::Egress => ("*".to_string(), far, "Outbound"),
    };
    let mut props = json!({
        "protocol": protocol,
        "sourcePortRange": "*",
        "destinationPortRange": port,
        "sourceAddressPrefix": source,
        "destinationAddressPrefix": destination,
        "access": match rule.access { Access::Allow => "Allow", Access::Deny => "Deny" },
        "priority": prio,
        "direction": direction,
    });
    if let Some(d) = &rule.description {
        props["description"] = json!(d);
    }
    Ok(json!({ "properties": props }))
}

/// Private endpoints. `service` is `<lower-cased resource id>#<group id>`.
pub fn endpoints(pes: &[m::PrivateEndpoint], ids: &Ids) -> Vec<Endpoint> {
    pes.iter()
        .filter_map(|pe| {
            let id = pe.resource.id.clone()?;
            let p = pe.properties.as_ref();
            let conn = p.and_then(|p| {
                p.private_link_service_connections
                    .first()
                    .or(p.manual_private_link_service_connections.first())
            });
            let (target, group, state) = conn
                .and_then(|c| c.properties.as_ref())
                .map(|c| {
                    (
                        c.private_link_service_id.clone().unwrap_or_default(),
                        c.group_ids.first().cloned().unwrap_or_default(),
                        c.private_link_service_connection_state
                            .as_ref()
                            .and_then(|s| s.status.clone()),
                    )
                })
                .unwrap_or_default();
            // A custom Private Link Service has no group id: its service is its id.
            let service = if group.is_empty() {
                target.to_ascii_lowercase()
            } else {
                format!("{}#{group}", target.to_ascii_lowercase())
            };
            let subnet = p
                .and_then(|p| p.subnet.as_ref())
                .and_then(|s| s.sub_resource.id.as_deref())
                .map(|s| ids.canonical(s));
            Some(Endpoint {
                id,
                service,
                kind: EndpointKind::Private,
                network: subnet
                    .as_deref()
                    .map(|s| ids.canonical(&vnet_of(s)))
                    .unwrap_or_default(),
                subnets: subnet.into_iter().collect(),
                groups: Vec::new(),
                route_tables: Vec::new(),
                private_dns: false,
                tags: tags(pe.resource.tags.as_ref()),
                connection: state,
            })
        })
        .collect()
}

/// Whether a site sends all outbound traffic through its VNet: `vnetRouteAllEnabled`
/// (on the site, else in `siteConfig`), else the newer
/// `outboundVnetRouting.applicationTraffic` / `allTraffic`. Absent everywhere: off.
pub fn route_all(props: &Value) -> bool {
    if let Some(b) = props["vnetRouteAllEnabled"].as_bool() {
        return b;
    }
    if let Some(b) = props["siteConfig"]["vnetRouteAllEnabled"].as_bool() {
        return b;
    }
    let routing = &props["outboundVnetRouting"];
    routing["applicationTraffic"].as_bool().unwrap_or(false)
        || routing["allTraffic"].as_bool().unwrap_or(false)
}

/// Function apps (sites whose `kind` names `functionapp`) and their VNet integration.
pub fn functions(sites: &[Value], ids: &Ids) -> Vec<Function> {
    sites
        .iter()
        .filter(|s| {
            s["kind"]
                .as_str()
                .is_some_and(|k| k.to_ascii_lowercase().contains("functionapp"))
        })
        .filter_map(|s| {
            let id = s["id"].as_str()?.to_string();
            let placement = s["properties"]["virtualNetworkSubnetId"]
                .as_str()
                .filter(|v| !v.is_empty())
                .map(|subnet| {
                    let subnet = ids.canonical(subnet);
                    Placement {
                        network: ids.canonical(&vnet_of(&subnet)),
                        subnets: vec![subnet],
                        groups: Vec::new(),
                        route_all: route_all(&s["properties"]),
                    }
                });
            Some(Function {
                inbound: None,
                name: s["name"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| name_of(&id).into()),
                id,
                tags: tags(s.get("tags")),
                placement,
            })
        })
        .collect()
}

/// The priority ARM gives the entry it adds to show the default action (`Allow all` /
/// `Deny all`); it is not a rule of its own.
pub const DEFAULT_ACTION_PRIORITY: u64 = 2_147_483_647;
/// At most this many access restrictions are read from one app (ARM allows 512); more is
/// a hostile or broken answer, and what is past the cap is read as one allow of anything.
pub const MAX_RESTRICTIONS: usize = 1024;
/// App Service's limit on the sources of one access restriction.
pub const MAX_SOURCES_PER_RESTRICTION: usize = 8;
/// At most this many rules are read from one app (sources counted one by one); past it,
/// one allow of anything (the guardrails' work grows with the square of it).
pub const MAX_INBOUND_RULES: usize = 2048;
/// ARM's limit on an access restriction's name.
pub const MAX_RESTRICTION_NAME: usize = 32;

fn access_of(v: &Value) -> Option<Access> {
    match v.as_str()?.to_ascii_lowercase().as_str() {
        "allow" => Some(Access::Allow),
        "deny" => Some(Access::Deny),
        _ => None,
    }
}

/// What the cloud sent that could not be read, cut short and with control characters
/// dropped, for findings.
fn unreadable(v: &Value) -> InboundPeer {
    let raw = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    InboundPeer::Unreadable(raw.chars().filter(|c| !c.is_control()).take(80).collect())
}

/// One address of an `ipAddress` list: a CIDR, or a bare address as its /32 or /128.
fn address(item: &str) -> Option<IpNet> {
    let item = item.trim();
    item.parse::<IpNet>()
        .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
        .ok()
        .map(|n| n.trunc())
}

/// A function app's inbound access restrictions, from the `properties` of its
/// `config/web` (`ipSecurityRestrictions`, `ipSecurityRestrictionsDefaultAction`).
///
/// - An entry with several sources (`"ipAddress": "10.0.0.0/8,192.168.0.0/16"`, or several
///   service tags) is one rule per source, same name and priority.
/// - The entry ARM adds at priority 2147483647 (`Allow all` / `Deny all`, `Any`) is the
///   default action, not a rule.
/// - Without `ipSecurityRestrictionsDefaultAction` (older API versions) the default is
///   deny as soon as one allow rule exists, as App Service did then; else allow.
/// - What cannot be read fails closed: an unknown action is an allow, a source that does
///   not parse is [`InboundPeer::Unreadable`] (the world, to guardrails), a missing
///   priority puts an allow first and a deny last.
pub fn inbound(props: &Value) -> Inbound {
    let mut rules = Vec::new();
    let property = &props["ipSecurityRestrictionsDefaultAction"];
    let declared_default = access_of(property);
    let mut shown_default = None;
    let list = &props["ipSecurityRestrictions"];
    let entries = list.as_array().map(Vec::as_slice).unwrap_or_default();
    let fail_closed = |why: String| InboundRule {
        name: String::new(),
        priority: 0,
        access: Access::Allow,
        peer: InboundPeer::Unreadable(why),
        headers: false,
    };
    if !(list.is_array() || list.is_null()) {
        rules.push(fail_closed(
            format!("ipSecurityRestrictions is {list}")
                .chars()
                .take(80)
                .collect(),
        ));
    }
    for e in entries.iter().take(MAX_RESTRICTIONS) {
        if rules.len() >= MAX_INBOUND_RULES {
            rules.push(fail_closed(format!(
                "more than {MAX_INBOUND_RULES} sources in the access restrictions"
            )));
            break;
        }
        let access = access_of(&e["action"]).unwrap_or(Access::Allow);
        let name: String = e["name"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .take(80)
            .collect();
        let ip = e["ipAddress"].as_str().map(str::trim);
        let subnet = e["vnetSubnetResourceId"].as_str().filter(|s| !s.is_empty());
        let tag = e["tag"].as_str().unwrap_or("Default");
        let service_tag = tag.eq_ignore_ascii_case("ServiceTag");
        // Anything but a plain source or a service tag (`XffProxy` matches on
        // X-Forwarded-For, which the client writes) is a header filter.
        let headers = e["headers"].as_object().is_some_and(|h| !h.is_empty())
            || !(service_tag || tag.eq_ignore_ascii_case("Default"));
        let priority = match e["priority"].as_u64() {
            Some(p) if p >= DEFAULT_ACTION_PRIORITY => {
                // The entry ARM shows for the default action: only when it says what the
                // property says (or there is no property), and filters nothing else.
                let shown = ip.is_some_and(|i| i.eq_ignore_ascii_case("any"))
                    && subnet.is_none()
                    && !headers
                    && declared_default.is_none_or(|d| d == access)
                    && (property.is_null() || declared_default.is_some());
                if shown {
                    shown_default = Some(access);
                    continue;
                }
                u32::MAX
            }
            Some(p) => p as u32,
            None if access == Access::Allow => 0,
            None => u32::MAX,
        };
        let rule = |peer| InboundRule {
            name: name.clone(),
            priority,
            access,
            peer,
            headers,
        };
        if let Some(id) = subnet {
            rules.push(rule(InboundPeer::Subnet(id.to_string())));
            continue;
        }
        let Some(ip) = ip.filter(|i| !i.is_empty()) else {
            rules.push(rule(unreadable(&e["ipAddress"])));
            continue;
        };
        let items: Vec<&str> = ip.split(',').map(str::trim).collect();
        if items.len() > MAX_SOURCES_PER_RESTRICTION {
            // App Service takes at most 8: a longer list is not what it enforces.
            rules.push(rule(InboundPeer::Unreadable(format!(
                "{} sources in one restriction",
                items.len()
            ))));
            continue;
        }
        for item in items {
            let peer = if item.eq_ignore_ascii_case("any") {
                InboundPeer::Any
            } else if service_tag {
                if item.is_empty() || item.chars().any(|c| c.is_control() || c.is_whitespace()) {
                    unreadable(&json!(item))
                } else {
                    InboundPeer::ServiceTag(item.to_string())
                }
            } else {
                address(item).map_or_else(|| unreadable(&json!(item)), InboundPeer::Cidr)
            };
            rules.push(rule(peer));
        }
    }
    if entries.len() > MAX_RESTRICTIONS {
        rules.push(fail_closed(format!(
            "{} access restrictions, more than the {MAX_RESTRICTIONS} read",
            entries.len()
        )));
    }
    let default_action = match (declared_default, property.is_null()) {
        (Some(d), _) => d,
        // Present but not Allow or Deny: read as open.
        (None, false) => Access::Allow,
        (None, true) => {
            shown_default.unwrap_or(if rules.iter().any(|r| r.access == Access::Allow) {
                Access::Deny
            } else {
                Access::Allow
            })
        }
    };
    Inbound {
        default_action,
        rules,
    }
    .normalised()
}

/// ARM's spelling of `inbound`: the `ipSecurityRestrictions` entries and the default
/// action.
///
/// # Errors
/// A rule Palisade cannot write (an unreadable source: only ever observed).
pub fn restrictions(inbound: &Inbound) -> Result<(Vec<Value>, &'static str), String> {
    let mut out = Vec::with_capacity(inbound.rules.len());
    for r in &inbound.rules {
        let name: String = r.name.chars().take(MAX_RESTRICTION_NAME).collect();
        let action = match r.access {
            Access::Allow => "Allow",
            Access::Deny => "Deny",
        };
        let mut e = json!({ "name": name, "priority": r.priority, "action": action });
        match &r.peer {
            InboundPeer::Any => e["ipAddress"] = json!("Any"),
            InboundPeer::Cidr(n) => {
                e["ipAddress"] = json!(n.to_string());
                e["tag"] = json!("Default");
            }
            InboundPeer::ServiceTag(t) => {
                e["ipAddress"] = json!(t);
                e["tag"] = json!("ServiceTag");
            }
            InboundPeer::Subnet(id) => e["vnetSubnetResourceId"] = json!(id),
            InboundPeer::Unreadable(raw) => {
                return Err(format!(
                    "access restriction {name:?} has a source Palisade cannot write ({raw:?})"
                ));
            }
        }
        out.push(e);
    }
    let default = match inbound.default_action {
        Access::Allow => "Allow",
        Access::Deny => "Deny",
    };
    Ok((out, default))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(props: Value) -> m::SecurityRule {
        serde_json::from_value(json!({ "name": "r1", "properties": props })).unwrap()
    }

    fn tcp(from: u16, to: u16) -> Ports {
        Ports {
            protocol: Protocol::Tcp,
            range: Some(PortRange { from, to }),
            icmp: None,
        }
    }

    #[test]
    fn rules_translate_both_ways() {
        // What Palisade writes reads back equal, priority and all.
        let cases = [
            Rule {
                priority: Some(100),
                ..Rule::allow(
                    Direction::Ingress,
                    tcp(443, 443),
                    Peer::cidr("10.20.0.0/24".parse().unwrap()),
                )
            },
            Rule {
                priority: Some(4000),
                access: Access::Deny,
                ..Rule::allow(
                    Direction::Egress,
                    Ports::ALL,
                    Peer::ServiceTag("Internet".into()),
                )
            },
            Rule {
                priority: Some(110),
                ..Rule::allow(Direction::Egress, tcp(8000, 8100), Peer::Any)
            },
            Rule {
                priority: Some(120),
                ..Rule::allow(
                    Direction::Egress,
                    Ports {
                        protocol: Protocol::Icmp,
                        range: None,
                        icmp: None,
                    },
                    Peer::ServiceTag("Sql.WestEurope".into()),
                )
            },
        ];
        for want in cases {
            let body = rule_body(&want).unwrap();
            let back = rules_of(&rule(body["properties"].clone()));
            assert_eq!(back, vec![want.clone()], "{want}");
            assert_eq!(back[0].id.as_deref(), Some("r1"));
        }
    }

    #[test]
    fn odd_shapes_lose_their_priority_and_expand() {
        // Near side not `*`: observed, but never equal to what a policy asks for.
        let r = rules_of(&rule(json!({
            "protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "22",
            "sourceAddressPrefix": "0.0.0.0/0", "destinationAddressPrefix": "10.0.0.4",
            "access": "Allow", "priority": 100, "direction": "Inbound"
        })));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].priority, None);
        assert_eq!(r[0].peer, Peer::cidr("0.0.0.0/0".parse().unwrap()));
        // Several prefixes and ports: one atomic rule each.
        let r = rules_of(&rule(json!({
            "protocol": "*", "sourcePortRange": "*", "destinationPortRanges": ["80", "443"],
            "sourceAddressPrefixes": ["10.0.0.5/8", "192.168.1.1"], "destinationAddressPrefix": "*",
            "access": "Deny", "priority": 200, "direction": "Inbound"
        })));
        assert_eq!(r.len(), 4);
        assert!(
            r.iter()
                .all(|x| x.priority.is_none() && x.access == Access::Deny)
        );
        assert!(
            r.iter()
                .any(|x| x.peer == Peer::cidr("10.0.0.0/8".parse().unwrap()))
        );
        assert!(
            r.iter()
                .any(|x| x.peer == Peer::cidr("192.168.1.1/32".parse().unwrap()))
        );
        // Protocol spelled in lower case (older API versions) still parses.
        let r = rules_of(&rule(json!({
            "protocol": "tcp", "sourcePortRange": "*", "destinationPortRange": "*",
            "sourceAddressPrefix": "*", "destinationAddressPrefix": "Internet",
            "access": "Allow", "priority": 300, "direction": "Outbound"
        })));
        assert_eq!(r[0].ports, tcp(0, 65535));
        assert_eq!(r[0].peer, Peer::ServiceTag("Internet".into()));
    }

    #[test]
    fn what_narrows_a_rule_is_kept_with_its_priority() {
        let asg = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/applicationSecurityGroups/asg-web";
        // Near side, source ports and the priority of a rule Palisade could not have
        // written are kept (and make it differ from anything declared).
        let r = rules_of(&rule(json!({
            "protocol": "Tcp", "sourcePortRanges": ["88-90"], "destinationPortRange": "8086",
            "sourceAddressPrefix": "*", "destinationAddressPrefixes": ["10.0.0.4", "10.0.0.5"],
            "access": "Deny", "priority": 290, "direction": "Inbound"
        })));
        assert_eq!(r.len(), 1);
        let n = r[0].narrowing.clone().expect("narrowed");
        assert_eq!(n.priority, Some(290));
        assert_eq!(n.near, vec!["10.0.0.4".to_string(), "10.0.0.5".to_string()]);
        assert_eq!(n.source_ports, vec!["88-90".to_string()]);
        assert!(!r[0].is_full());
        assert_eq!(r[0].effective_priority(), Some(290));
        // ASGs are their own peer kind; empty prefix strings name nothing.
        let r = rules_of(&rule(json!({
            "protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "443",
            "sourceAddressPrefix": "", "sourceApplicationSecurityGroups": [ { "id": asg } ],
            "destinationAddressPrefix": "*",
            "access": "Allow", "priority": 310, "direction": "Inbound"
        })));
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].peer, Peer::Asg(asg.into()));
        assert_eq!(r[0].effective_priority(), Some(310));
        // A canonical rule keeps its priority as part of its identity, and nothing else.
        let r = rules_of(&rule(json!({
            "protocol": "*", "sourcePortRange": "*", "destinationPortRange": "*",
            "sourceAddressPrefix": "*", "destinationAddressPrefix": "*",
            "access": "Deny", "priority": 4096, "direction": "Outbound"
        })));
        assert_eq!((r[0].priority, r[0].narrowing.clone()), (Some(4096), None));
        assert!(r[0].is_full());
    }

    #[test]
    fn private_endpoints_keep_their_connection_state_and_custom_services_their_id() {
        let pe = |conn: serde_json::Value| -> m::PrivateEndpoint {
            serde_json::from_value(json!({
                "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/privateEndpoints/pe",
                "name": "pe",
                "properties": {
                    "subnet": { "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/a" },
                    "manualPrivateLinkServiceConnections": [ { "name": "c", "properties": conn } ]
                }
            }))
            .unwrap()
        };
        let pls =
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/privateLinkServices/x";
        let e = &endpoints(
            &[pe(json!({
                "privateLinkServiceId": pls,
                "privateLinkServiceConnectionState": { "status": "Pending" }
            }))],
            &Ids::default(),
        )[0];
        assert_eq!(
            e.service,
            pls.to_ascii_lowercase(),
            "no `#` without a group id"
        );
        assert_eq!(e.connection.as_deref(), Some("Pending"));
        assert!(!e.connected());
        let e = &endpoints(
            &[pe(json!({
                "privateLinkServiceId": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv",
                "groupIds": ["vault"],
                "privateLinkServiceConnectionState": { "status": "Approved" }
            }))],
            &Ids::default(),
        )[0];
        assert!(e.service.ends_with("/vaults/kv#vault"));
        assert!(e.connected());
    }

    #[test]
    fn default_rules_are_kept_apart() {
        let nsg: m::NetworkSecurityGroup = serde_json::from_value(json!({
            "id": "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/n",
            "name": "n",
            "properties": {
                "securityRules": [],
                "defaultSecurityRules": [
                    { "name": "AllowInternetOutBound", "properties": {
                        "protocol": "*", "sourcePortRange": "*", "destinationPortRange": "*",
                        "sourceAddressPrefix": "*", "destinationAddressPrefix": "Internet",
                        "access": "Allow", "priority": 65001, "direction": "Outbound" } },
                    { "name": "AllowVnetInBound", "properties": {
                        "protocol": "*", "sourcePortRange": "*", "destinationPortRange": "*",
                        "sourceAddressPrefix": "VirtualNetwork", "destinationAddressPrefix": "VirtualNetwork",
                        "access": "Allow", "priority": 65000, "direction": "Inbound" } }
                ]
            }
        }))
        .unwrap();
        let g = &groups(&[nsg])[0];
        assert!(g.rules.is_empty(), "never planned");
        assert_eq!(g.default_rules.len(), 2);
        let internet = &g.default_rules[0];
        assert_eq!(internet.peer, Peer::ServiceTag("Internet".into()));
        assert_eq!(internet.effective_priority(), Some(65001));
        assert_eq!(internet.id.as_deref(), Some("AllowInternetOutBound"));
        assert_eq!(g.default_rules[1].effective_priority(), Some(65000));
    }

    #[test]
    fn names_are_slots() {
        let r = Rule {
            priority: Some(130),
            ..Rule::allow(Direction::Egress, tcp(1, 1), Peer::Any)
        };
        assert_eq!(rule_name(&r).unwrap(), "palisade-out-130");
        assert!(
            rule_body(&Rule::allow(
                Direction::Egress,
                tcp(1, 1),
                Peer::Group(GroupRef::Id("x".into()))
            ))
            .is_err()
        );
    }

    #[test]
    fn references_take_the_listed_spelling() {
        let mut ids = Ids::default();
        ids.add("/subscriptions/S/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/vnet/subnets/a");
        ids.add(
            "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/vnet",
        );
        let sites = vec![
            json!({
                "id": "/subscriptions/s/resourcegroups/rg/providers/Microsoft.Web/sites/f",
                "name": "f", "kind": "functionapp,linux", "tags": { "app": "x" },
                "properties": { "virtualNetworkSubnetId": "/subscriptions/s/resourcegroups/rg/providers/microsoft.network/virtualnetworks/VNET/subnets/A" }
            }),
            json!({ "id": "/x/sites/web", "name": "web", "kind": "app", "properties": {} }),
        ];
        let f = functions(&sites, &ids);
        assert_eq!(f.len(), 1, "web apps are not function apps");
        let p = f[0].placement.as_ref().unwrap();
        assert_eq!(
            p.subnets[0],
            "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/vnet/subnets/a"
        );
        assert_eq!(
            p.network,
            "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/vnet"
        );
    }

    fn cidr(s: &str) -> InboundPeer {
        InboundPeer::Cidr(s.parse().unwrap())
    }

    #[test]
    fn access_restrictions_translate_to_the_model() {
        let allow = |priority, peer| InboundRule {
            name: String::new(),
            priority,
            access: Access::Allow,
            peer,
            headers: false,
        };
        let cases: Vec<(&str, Value, Access, Vec<InboundRule>)> = vec![
            (
                "as App Service creates an app: the shown default only",
                json!({ "ipSecurityRestrictions": [
                    { "ipAddress": "Any", "action": "Allow", "priority": 2147483647u64, "name": "Allow all" }
                ]}),
                Access::Allow,
                vec![],
            ),
            (
                "an entry at the top that contradicts the property is a rule of its own",
                json!({ "ipSecurityRestrictionsDefaultAction": "Deny", "ipSecurityRestrictions": [
                    { "ipAddress": "Any", "action": "Allow", "priority": 2147483647u64, "name": "Allow all" }
                ]}),
                Access::Deny,
                vec![allow(u32::MAX, InboundPeer::Any)],
            ),
            (
                "the shown entry agrees with the property",
                json!({ "ipSecurityRestrictionsDefaultAction": "Deny", "ipSecurityRestrictions": [
                    { "ipAddress": "Any", "action": "Deny", "priority": 2147483647u64, "name": "Deny all" }
                ]}),
                Access::Deny,
                vec![],
            ),
            (
                "null restrictions, no default: open",
                json!({ "ipSecurityRestrictions": null }),
                Access::Allow,
                vec![],
            ),
            (
                "several sources in one rule; a bare address is its /32; host bits cleared",
                json!({ "ipSecurityRestrictions": [
                    { "ipAddress": "10.0.0.5/8, 192.0.2.7", "action": "Allow", "priority": 200, "name": "multi" }
                ]}),
                Access::Deny,
                vec![
                    allow(200, cidr("10.0.0.0/8")),
                    allow(200, cidr("192.0.2.7/32")),
                ],
            ),
            (
                "service tags, one rule each",
                json!({ "ipSecurityRestrictionsDefaultAction": "Deny", "ipSecurityRestrictions": [
                    { "ipAddress": "AzureFrontDoor.Backend,AzureCloud", "tag": "ServiceTag", "action": "Allow", "priority": 300 }
                ]}),
                Access::Deny,
                vec![
                    allow(300, InboundPeer::ServiceTag("AzureCloud".into())),
                    allow(
                        300,
                        InboundPeer::ServiceTag("AzureFrontDoor.Backend".into()),
                    ),
                ],
            ),
            (
                "a subnet rule",
                json!({ "ipSecurityRestrictionsDefaultAction": "Deny", "ipSecurityRestrictions": [
                    { "vnetSubnetResourceId": "/s/x/subnets/a", "action": "Allow", "priority": 100 }
                ]}),
                Access::Deny,
                vec![allow(100, InboundPeer::Subnet("/s/x/subnets/a".into()))],
            ),
            (
                "unreadable sources, unknown actions and missing priorities fail closed",
                json!({ "ipSecurityRestrictionsDefaultAction": "Deny", "ipSecurityRestrictions": [
                    { "ipAddress": "not-an-ip", "action": "Maybe", "priority": 10 },
                    { "ipAddress": "", "action": "Allow" }
                ]}),
                Access::Deny,
                vec![
                    allow(0, InboundPeer::Unreadable(String::new())),
                    allow(10, InboundPeer::Unreadable("not-an-ip".into())),
                ],
            ),
        ];
        for (what, props, default, rules) in cases {
            let got = inbound(&props);
            assert_eq!(got.default_action, default, "{what}");
            assert_eq!(got.rules, rules, "{what}: {got:?}");
        }
    }

    #[test]
    fn a_deny_without_priority_goes_last_and_headers_are_kept() {
        let got = inbound(&json!({ "ipSecurityRestrictions": [
            { "ipAddress": "Any", "action": "Deny" },
            { "ipAddress": "Any", "action": "Allow", "priority": 5, "headers": { "x-azure-fdid": ["abc"] } }
        ]}));
        assert_eq!(got.rules.len(), 2);
        assert_eq!(got.rules[0].priority, 5);
        assert!(got.rules[0].headers);
        assert_eq!(
            (got.rules[1].priority, got.rules[1].access),
            (u32::MAX, Access::Deny)
        );
        assert_eq!(
            got.default_action,
            Access::Deny,
            "an allow exists: the old implicit deny"
        );
    }

    #[test]
    fn too_many_restrictions_are_read_as_an_allow_of_anything() {
        let many: Vec<Value> = (0..MAX_RESTRICTIONS + 3)
            .map(|i| json!({ "ipAddress": "10.0.0.1", "action": "Deny", "priority": 100 + i }))
            .collect();
        let got = inbound(&json!({ "ipSecurityRestrictions": many }));
        let first = &got.rules[0];
        assert_eq!((first.priority, first.access), (0, Access::Allow));
        assert!(matches!(first.peer, InboundPeer::Unreadable(_)));
    }

    #[test]
    fn what_palisade_writes_reads_back_equal() {
        let want = Inbound {
            default_action: Access::Deny,
            rules: vec![
                InboundRule {
                    name: "a-very-long-rule-name-that-is-more-than-32".into(),
                    priority: 90,
                    access: Access::Deny,
                    peer: cidr("203.0.113.0/24"),
                    headers: false,
                },
                InboundRule {
                    name: "tag".into(),
                    priority: 100,
                    access: Access::Allow,
                    peer: InboundPeer::ServiceTag("AzureFrontDoor.Backend".into()),
                    headers: false,
                },
                InboundRule {
                    name: "sub".into(),
                    priority: 110,
                    access: Access::Allow,
                    peer: InboundPeer::Subnet("/s/v/subnets/x".into()),
                    headers: false,
                },
            ],
        }
        .normalised();
        let (rules, default) = restrictions(&want).unwrap();
        assert!(rules[0]["name"].as_str().unwrap().chars().count() <= MAX_RESTRICTION_NAME);
        let back = inbound(&json!({
            "ipSecurityRestrictions": rules,
            "ipSecurityRestrictionsDefaultAction": default,
        }));
        assert_eq!(back, want);
        let unreadable = Inbound {
            default_action: Access::Deny,
            rules: vec![InboundRule {
                name: "x".into(),
                priority: 1,
                access: Access::Allow,
                peer: InboundPeer::Unreadable("?".into()),
                headers: false,
            }],
        };
        assert!(restrictions(&unreadable).is_err());
    }

    #[test]
    fn what_hides_behind_the_shown_default_or_headers_is_not_lost() {
        // "Allow Any" at the top priority while the property says Deny: a real rule.
        let open = inbound(
            &json!({ "ipSecurityRestrictionsDefaultAction": "Deny", "ipSecurityRestrictions": [
                { "ipAddress": "Any", "action": "Allow", "priority": 2147483647u64, "name": "sneaky" }
            ]}),
        );
        assert_eq!(open.rules.len(), 1, "{open:?}");
        assert_eq!(
            (open.rules[0].access, open.rules[0].peer.clone()),
            (Access::Allow, InboundPeer::Any)
        );
        // XffProxy matches on a header the client writes.
        let xff = inbound(&json!({ "ipSecurityRestrictions": [
            { "ipAddress": "10.0.0.0/8", "tag": "XffProxy", "action": "Allow", "priority": 100 }
        ]}));
        assert!(xff.rules[0].headers);
        // A default action that is neither Allow nor Deny, or a list that is not one: open.
        assert_eq!(
            inbound(&json!({ "ipSecurityRestrictionsDefaultAction": 3 })).default_action,
            Access::Allow
        );
        let broken = inbound(
            &json!({ "ipSecurityRestrictionsDefaultAction": "Deny", "ipSecurityRestrictions": { "a": 1 } }),
        );
        assert!(matches!(broken.rules[0].peer, InboundPeer::Unreadable(_)));
        // More sources in one restriction than App Service takes: unreadable, not 10⁵ rules.
        let many = vec!["10.0.0.1"; 100_000].join(",");
        let huge = inbound(&json!({ "ipSecurityRestrictions": [
            { "ipAddress": many, "action": "Allow", "priority": 100 }
        ]}));
        assert_eq!(huge.rules.len(), 1);
        assert!(matches!(huge.rules[0].peer, InboundPeer::Unreadable(_)));
    }

    #[test]
    fn ids_and_tags_compare_without_case() {
        let a = inbound(&json!({ "ipSecurityRestrictions": [
            { "vnetSubnetResourceId": "/S/RG/subnets/A", "action": "Allow", "priority": 100 },
            { "ipAddress": "azurefrontdoor.backend", "tag": "ServiceTag", "action": "Allow", "priority": 110 }
        ]}));
        let b = inbound(&json!({ "ipSecurityRestrictions": [
            { "vnetSubnetResourceId": "/s/rg/subnets/a", "action": "Allow", "priority": 100 },
            { "ipAddress": "AzureFrontDoor.Backend", "tag": "ServiceTag", "action": "Allow", "priority": 110 }
        ]}));
        assert_eq!(a, b);
    }
}
