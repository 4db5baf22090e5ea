//! `observe`: the four lists of a target's resource group (VNets with subnets, NSGs with
//! rules, private endpoints, function apps) read concurrently at ARM's page size, every
//! NSG and endpoint vetted against the ownership record before anything else reads it.

use super::*;

impl AzureProvider {
    pub(super) async fn observe_inner(
        &self,
        target: &Target,
        ownership: &Ownership,
    ) -> Result<Inventory, ProviderError> {
        let s = scope(target)?;
        let arm = self.arm()?;
        let (rg, sub) = (s.resource_group, s.subscription);
        let sites_url = arm.url(
            &format!("/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Web/sites"),
            WEB_API_VERSION,
        )?;
        let (vnets, nsgs, pes, sites) = tokio::try_join!(
            collect(
                "GET virtualNetworks (list)",
                arm.network
                    .virtual_networks_client()
                    .list(rg, sub)
                    .into_stream(),
                |p: m::VirtualNetworkListResult| p.value,
            ),
            collect(
                "GET networkSecurityGroups (list)",
                arm.network
                    .network_security_groups_client()
                    .list(rg, sub)
                    .into_stream(),
                |p: m::NetworkSecurityGroupListResult| p.value,
            ),
            collect(
                "GET privateEndpoints (list)",
                arm.network
                    .private_endpoints_client()
                    .list(rg, sub)
                    .into_stream(),
                |p: m::PrivateEndpointListResult| p.value,
            ),
            arm.list_all(sites_url),
        )?;
        let mut groups = translate::groups(&nsgs);
        // Ownership first: every later step (owners, subnet references, the cache)
        // sees recorded NSGs as managed and claimed ones as not.
        let mut notes = Vec::new();
        for g in &mut groups {
            notes.extend(ownership.vet(OwnedKind::Group, &g.id, &mut g.tags));
        }
        let owners = translate::owners(&groups);
        let mut ids = translate::Ids::default();
        for v in &vnets {
            if let Some(id) = &v.resource.id {
                ids.add(id);
            }
            for sn in v.properties.iter().flat_map(|p| p.subnets.iter()) {
                if let Some(id) = &sn.sub_resource.id {
                    ids.add(id);
                }
            }
        }
        for g in &groups {
            ids.add(&g.id);
        }
        let (networks, subnets) = translate::networks(&vnets, &owners, &ids);
        {
            let mut cache = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            cache.retain(|(t, _), _| *t != target.name);
            for g in &groups {
                if let Some(owner) = g.owner() {
                    let key = (target.name.clone(), owner.to_string());
                    let keep = cache.get(&key).is_some_and(|id| *id <= g.id);
                    if !keep {
                        cache.insert(key, g.id.clone());
                    }
                }
            }
        }
        let mut inv = Inventory {
            target: target.name.clone(),
            networks,
            subnets,
            functions: translate::functions(&sites, &ids),
            groups,
            endpoints: translate::endpoints(&pes, &ids),
            ownership: notes,
            ..Inventory::default()
        };
        ownership.vet_endpoints(&mut inv);
        let vetted = Vetted {
            owned: inv
                .groups
                .iter()
                .filter(|g| g.owner().is_some())
                .map(|g| g.id.to_ascii_lowercase())
                .chain(
                    inv.endpoints
                        .iter()
                        .filter(|e| e.owner().is_some())
                        .map(|e| e.id.to_ascii_lowercase()),
                )
                .collect(),
            rejected: inv
                .ownership
                .iter()
                .filter(|n| !n.owned())
                .map(|n| n.id.to_ascii_lowercase())
                .collect(),
        };
        self.vetted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(target.name.clone(), vetted);
        Ok(inv)
    }

    pub(super) fn rejected(&self, target: &str, id: &str) -> bool {
        self.vetted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(target)
            .is_some_and(|v| v.rejected.contains(&id.to_ascii_lowercase()))
    }
}
