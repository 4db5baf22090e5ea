//! A policy's network resolved against what is observed: the VPC/VNet by id or tags,
//! its subnets (at most 16 on AWS), and conflicts reported where they come from.

use super::*;

pub(super) fn resolve_network(cx: &mut Ctx<'_>, p: &PolicyDoc) -> ResolvedNetwork {
    let Some(inv) = cx.inv else {
        return ResolvedNetwork::default();
    };
    let net = &p.spec.network;
    let mut out = ResolvedNetwork::default();
    match cx.cloud {
        Cloud::Aws => {
            let Some(vpc) = &net.vpc else { return out };
            let matches: Vec<&str> = inv
                .networks
                .iter()
                .filter(|n| match &vpc.id {
                    Some(id) => n.id == *id,
                    None => !vpc.tags.is_empty() && tags_match(&vpc.tags, &n.tags),
                })
                .map(|n| n.id.as_str())
                .collect();
            match matches.as_slice() {
                [one] => out.network = Some((*one).to_string()),
                [] => {
                    cx.diags.push(Diagnostic::error(
                        K::EmptySelection,
                        Some(p.at(vpc)),
                        "`network.vpc` matches no observed VPC",
                    ));
                    return out;
                }
                many => {
                    cx.diags.push(Diagnostic::error(
                        K::AmbiguousSelection,
                        Some(p.at(vpc)),
                        format!(
                            "`network.vpc` matches {} VPCs ({}); it must match exactly one",
                            many.len(),
                            many.join(", ")
                        ),
                    ));
                    return out;
                }
            }
            let vpc_id = out.network.clone().unwrap_or_default();
            let Some(sel) = &net.subnets else { return out };
            let subnets: Vec<&Subnet> = if sel.ids.is_empty() {
                inv.subnets
                    .iter()
                    .filter(|s| {
                        s.network == vpc_id
                            && !sel.tags.is_empty()
                            && tags_match(&sel.tags, &s.tags)
                    })
                    .collect()
            } else {
                let mut found = Vec::new();
                for id in &sel.ids {
                    match inv.subnets.iter().find(|s| s.id == *id) {
                        Some(s) if s.network == vpc_id => found.push(s),
                        Some(s) => cx.diags.push(Diagnostic::error(
                            K::InvalidValue,
                            Some(p.at(sel)),
                            format!(
                                "subnet {id} is in {}, not in the policy's VPC {vpc_id}",
                                s.network
                            ),
                        )),
                        None => cx.diags.push(Diagnostic::error(
                            K::EmptySelection,
                            Some(p.at(sel)),
                            format!("subnet {id} is not observed in the target"),
                        )),
                    }
                }
                found
            };
            if subnets.is_empty() {
                cx.diags.push(Diagnostic::error(
                    K::EmptySelection,
                    Some(p.at(sel)),
                    format!("`network.subnets` matches no subnet of {vpc_id}"),
                ));
            } else if subnets.len() > LAMBDA_MAX_SUBNETS {
                cx.diags.push(Diagnostic::error(
                    K::LambdaQuota,
                    Some(p.at(sel)),
                    format!("`network.subnets` matches {} subnets; Lambda allows at most {LAMBDA_MAX_SUBNETS} per function", subnets.len()),
                ));
            } else {
                out.subnets = subnets.iter().map(|s| s.id.clone()).collect();
                out.subnets.sort();
            }
        }
        Cloud::Azure => {
            let (Some(vnet), Some(subnet)) = (&net.vnet, &net.subnet) else {
                return out;
            };
            let Some(n) = inv
                .networks
                .iter()
                .find(|n| n.name.eq_ignore_ascii_case(vnet))
            else {
                cx.diags.push(Diagnostic::error(
                    K::EmptySelection,
                    Some(p.at(vnet)),
                    format!(
                        "VNet {:?} is not observed in the target's resource group",
                        vnet.value
                    ),
                ));
                return out;
            };
            out.network = Some(n.id.clone());
            match find_azure_subnet(inv, &n.id, subnet) {
                // VNet integration needs the subnet delegated to the app's platform; ARM
                // refuses it otherwise. Reported, never attempted (the apps keep their
                // placement; the subnet still resolves for peers and its NSG) — and
                // Palisade does not delegate subnets itself.
                Some(s)
                    if !s.delegations.iter().any(|d| {
                        INTEGRATION_DELEGATIONS
                            .iter()
                            .any(|x| d.eq_ignore_ascii_case(x))
                    }) =>
                {
                    out.subnets = vec![s.id.clone()];
                    out.undelegated = Some(Diagnostic::error(
                        K::EmptySelection,
                        Some(p.at(subnet)),
                        format!(
                            "subnet {:?} of VNet {:?} is not delegated to {} (what function-app VNet integration needs; delegations: [{}]); ARM would refuse the integration, so none is attempted until the subnet is delegated",
                            subnet.value,
                            vnet.value,
                            INTEGRATION_DELEGATIONS.join(" or "),
                            s.delegations.join(", ")
                        ),
                    ));
                }
                Some(s) => out.subnets = vec![s.id.clone()],
                None => cx.diags.push(Diagnostic::error(
                    K::EmptySelection,
                    Some(p.at(subnet)),
                    format!(
                        "subnet {:?} is not observed in VNet {:?}",
                        subnet.value, vnet.value
                    ),
                )),
            }
        }
    }
    out
}

/// Subnet delegations that let a function app integrate: App Service plans (Premium,
/// Dedicated) and Flex Consumption.
const INTEGRATION_DELEGATIONS: [&str; 2] =
    ["Microsoft.Web/serverFarms", "Microsoft.App/environments"];

pub(super) fn find_azure_subnet<'a>(
    inv: &'a Inventory,
    network: &str,
    name: &str,
) -> Option<&'a Subnet> {
    inv.subnets
        .iter()
        .find(|s| s.network.eq_ignore_ascii_case(network) && s.name.eq_ignore_ascii_case(name))
}
