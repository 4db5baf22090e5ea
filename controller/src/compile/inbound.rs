//! Azure: a policy's ingress as the function app's access restrictions, the app's own
//! front door. VNet integration is outbound only, so the integration subnet's NSG never
//! sees a request to the app; these rules do.
//!
//! - Only rules that reach the front door count: ports that include tcp/443 or tcp/80
//!   (`all`, `tcp`, a tcp range over either). A rule on other ports is the NSG's alone.
//! - Peers: CIDRs as they are, a `policy` peer as that policy's integration subnet
//!   (`vnetSubnetResourceId`: requests that come through a `Microsoft.Web` service
//!   endpoint of that subnet), service tags by name, `Internet` and `*` as any address.
//!   `VirtualNetwork` and `AzureLoadBalancer` name nothing the front door can match: a
//!   warning, and they admit nothing there (fail closed).
//! - Priorities are the ones the NSG rules get (explicit, else from rule order), so that
//!   denies and allows keep the order the policy gives them.
//! - The default action is always `Deny`: only declared peers reach the app.

use palisade_providers::{Inbound, InboundPeer, InboundRule, PortRange, Protocol};

use super::*;

/// Whether `ports` include the front door's (tcp/443 or tcp/80).
fn reaches_front_door(ports: &[Located<PortSpec>]) -> bool {
    let hits = |r: &Option<PortRange>| {
        r.is_none_or(|r| [80, 443].iter().any(|p| (r.from..=r.to).contains(p)))
    };
    ports.iter().any(|p| match p.value.0.protocol {
        Protocol::All => true,
        Protocol::Tcp => hits(&p.value.0.range),
        _ => false,
    })
}

/// A peer the front door cannot name: an allow of it admits nothing there (a warning);
/// a deny of it cannot be written, and leaving it out would let a later allow admit
/// what it blocks — an error, so the policy is not enforced until it is fixed.
fn not_expressible(access: Access, at: SourceLocation, what: String) -> Diagnostic {
    match access {
        Access::Allow => Diagnostic::warning(
            K::NotExpressible,
            Some(at),
            format!(
                "{what}; it admits nothing to the app's front door (reach the app from the VNet through a private endpoint, or name the caller's policy or address range)"
            ),
        ),
        Access::Deny => Diagnostic::error(
            K::NotExpressible,
            Some(at),
            format!(
                "{what}; this deny cannot be written to the app's front door, and without it a later allow would admit what it blocks: deny an address range instead"
            ),
        ),
    }
}

/// The access restrictions of policy `p`'s apps.
pub(super) fn compile_inbound(cx: &mut Ctx<'_>, p: &PolicyDoc) -> Inbound {
    let mut rules = Vec::new();
    let (mut allows, mut denies) = (0usize, 0usize);
    for r in flat_rules(p)
        .into_iter()
        .filter(|r| r.direction == Direction::Ingress)
    {
        let index = match r.access {
            Access::Allow => {
                allows += 1;
                allows - 1
            }
            Access::Deny => {
                denies += 1;
                denies - 1
            }
        };
        if !reaches_front_door(r.ports) {
            continue;
        }
        let priority = r.priority.map(u32::from).unwrap_or(match r.access {
            Access::Allow => default_allow_priority(index),
            Access::Deny => default_deny_priority(index),
        });
        for peer in r.peers {
            let mapped = match &peer.value {
                PeerSpec::Cidr(c) => vec![InboundPeer::Cidr(c.0.trunc())],
                PeerSpec::ServiceTag(t) if t == "*" || t.eq_ignore_ascii_case("Internet") => {
                    vec![InboundPeer::Any]
                }
                PeerSpec::ServiceTag(t)
                    if t.eq_ignore_ascii_case("VirtualNetwork")
                        || t.eq_ignore_ascii_case("AzureLoadBalancer") =>
                {
                    cx.diags.push(not_expressible(
                        r.access,
                        p.at(peer),
                        format!(
                            "rule {:?}: service tag {t} names nothing a function app's access restrictions can match",
                            r.name
                        ),
                    ));
                    Vec::new()
                }
                PeerSpec::ServiceTag(t) => vec![InboundPeer::ServiceTag(t.clone())],
                PeerSpec::Policy(other) => match cx.nets.get(other).and_then(|n| n.subnets.first())
                {
                    Some(subnet) => vec![InboundPeer::Subnet(subnet.clone())],
                    None => {
                        if cx.inv.is_some() {
                            cx.diags.push(not_expressible(
                                r.access,
                                p.at(peer),
                                format!(
                                    "rule {:?}: policy {other:?} has no integration subnet in this target",
                                    r.name
                                ),
                            ));
                        }
                        Vec::new()
                    }
                },
                // AWS-only peers: validation reports them on an Azure target.
                PeerSpec::SecurityGroup(_) | PeerSpec::PrefixList(_) | PeerSpec::Endpoint(_) => {
                    Vec::new()
                }
            };
            for peer in mapped {
                rules.push(InboundRule {
                    name: r.name.to_string(),
                    priority,
                    access: r.access,
                    peer,
                    headers: false,
                });
            }
        }
    }
    Inbound {
        default_action: Access::Deny,
        rules,
    }
    .normalised()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml_rules: &str) -> PolicySet {
        let text = format!(
            r#"
apiVersion: palisade.dev/v1alpha1
kind: Target
metadata: {{ name: az }}
spec: {{ azure: {{ subscriptionId: 00000000-0000-0000-0000-000000000001, resourceGroup: rg, location: westeurope }} }}
---
apiVersion: palisade.dev/v1alpha1
kind: FunctionPolicy
metadata: {{ name: api }}
spec:
  target: az
  functions: {{ names: [api] }}
  network: {{ vnet: v, subnet: s }}
{yaml_rules}
"#
        );
        let (set, diags) = crate::policy::load_text("p.yaml", &text);
        assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
        set
    }

    fn compiled(yaml_rules: &str) -> (Inbound, Vec<Diagnostic>) {
        let set = policy(yaml_rules);
        let mut cx = Ctx {
            cloud: Cloud::Azure,
            region: String::new(),
            inv: None,
            nets: BTreeMap::new(),
            diags: Vec::new(),
        };
        let p = set.policies.first().expect("a policy");
        let i = compile_inbound(&mut cx, p);
        (i, cx.diags)
    }

    #[test]
    fn ingress_becomes_the_front_door_with_a_default_deny() {
        let (i, diags) = compiled(
            r#"  ingress:
    - name: office
      from: [ { cidr: 203.0.113.7/24 }, { serviceTag: AzureFrontDoor.Backend } ]
      ports: [ tcp/443 ]
    - name: db-only
      from: [ { cidr: 10.9.0.0/16 } ]
      ports: [ tcp/5432 ]
    - name: web
      from: [ { serviceTag: Internet } ]
      ports: [ tcp/80-8080 ]
      priority: 900
  deny:
    - name: bad
      direction: ingress
      from: [ { cidr: 203.0.113.66/32 } ]
      ports: [ all ]
      priority: 90
"#,
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(i.default_action, Access::Deny);
        let got: Vec<(u32, Access, String)> = i
            .rules
            .iter()
            .map(|r| (r.priority, r.access, r.peer.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                (90, Access::Deny, "203.0.113.66/32".to_string()),
                (100, Access::Allow, "203.0.113.0/24".to_string()),
                (
                    100,
                    Access::Allow,
                    "service-tag AzureFrontDoor.Backend".to_string()
                ),
                (900, Access::Allow, "any address".to_string()),
            ],
            "tcp/5432 never reaches the front door; host bits are cleared; Internet is any address"
        );
    }

    #[test]
    fn tags_the_front_door_cannot_match_admit_nothing_and_say_so() {
        let (i, diags) = compiled(
            r#"  ingress:
    - name: vnet
      from: [ { serviceTag: VirtualNetwork } ]
      ports: [ all ]
"#,
        );
        assert!(i.rules.is_empty());
        assert_eq!(i.default_action, Access::Deny);
        assert_eq!(diags.len(), 1);
        assert_eq!(diags[0].kind, K::NotExpressible);
    }
}
