//! `observe`: the four lists of a target's resource group (VNets with subnets, NSGs with
//! rules, private endpoints, function apps) read concurrently at ARM's page size, every
//! NSG and endpoint vetted against the ownership record before anything else reads it.

use super::*;
use crate::model::Inbound;

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
        ownership.apply_declared(&mut inv);
        let rejected: std::collections::BTreeSet<String> = inv
            .ownership
            .iter()
            .filter(|n| !n.owned())
            .map(|n| n.id.to_ascii_lowercase())
            .collect();
        {
            let mut cache = self.owners.lock().unwrap_or_else(|e| e.into_inner());
            cache.retain(|(t, _), _| *t != target.name);
            for g in inv
                .groups
                .iter()
                .filter(|g| !rejected.contains(&g.id.to_ascii_lowercase()))
            {
                if let Some(owner) = g.owner() {
                    let key = (target.name.clone(), owner.to_string());
                    let keep = cache.get(&key).is_some_and(|id| *id <= g.id);
                    if !keep {
                        cache.insert(key, g.id.clone());
                    }
                }
            }
        }
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
                .filter(|id| !rejected.contains(id))
                .collect(),
            rejected,
        };
        self.vetted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(target.name.clone(), vetted);
        Ok(inv)
    }

    /// See [`Provider::observe_inbound`]: a GET of `config/web` for every app never
    /// read, and at most `inbound_reads` re-reads of the others, least recently read
    /// first; eight at a time, on the shared read budget.
    pub(super) async fn observe_inbound_inner(
        &self,
        target: &Target,
        functions: &[String],
    ) -> Result<crate::provider::InboundRead, ProviderError> {
        let mut read = crate::provider::InboundRead::default();
        if functions.is_empty() {
            return Ok(read);
        }
        let arm = self.arm()?;
        let pass = self
            .inbound_pass
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let key = |id: &str| (target.name.clone(), id.to_ascii_lowercase());
        // Never read first, then the least recently read; ties by id, so the order
        // does not depend on the caller's.
        let mut order: Vec<(u64, &String)> = {
            let cache = self.inbound.lock().unwrap_or_else(|e| e.into_inner());
            functions
                .iter()
                .map(|id| (cache.get(&key(id)).map_or(0, |(p, _)| *p), id))
                .collect()
        };
        order.sort();
        order.dedup_by(|a, b| a.1.eq_ignore_ascii_case(b.1));
        let (order, outside): (Vec<_>, Vec<_>) = order
            .into_iter()
            .partition(|(_, id)| site_in_scope(target, id));
        for (_, id) in outside {
            read.failed.push((
                id.clone(),
                "not a site of the target's resource group; not read".into(),
            ));
        }
        // Apps never read are always read (once: their first enforcement needs it);
        // re-reads are budgeted.
        let fresh = order.iter().take_while(|(pass, _)| *pass == 0).count();
        let due: Vec<String> = order
            .iter()
            .take(fresh.saturating_add(self.settings.inbound_reads))
            .map(|(_, id)| (*id).clone())
            .collect();
        let reads: Vec<(String, Result<Inbound, ProviderError>)> =
            futures::stream::iter(due.into_iter().map(|id| {
                let arm = arm.clone();
                async move {
                    let r = async {
                        let url = arm.url(&format!("{id}/config/web"), WEB_API_VERSION)?;
                        let answer = arm.call(Method::Get, url, None).await?;
                        Ok(translate::inbound(&answer.body["properties"]))
                    }
                    .await;
                    (id, r)
                }
            }))
            .buffer_unordered(8)
            .collect()
            .await;
        let mut cache = self.inbound.lock().unwrap_or_else(|e| e.into_inner());
        let mut failed = std::collections::HashSet::new();
        for (id, r) in reads {
            match r {
                Ok(inbound) => {
                    cache.insert(key(&id), (pass, inbound));
                }
                // Not answered from an older read: what is judged is what is there now
                // (an app deleted since the list is one pass of `unread`).
                Err(e) => {
                    failed.insert(key(&id));
                    read.failed.push((id, e.to_string()));
                }
            }
        }
        // Only what was asked for stays remembered (apps deleted or no longer selected
        // are forgotten); the answer is every app with a read, fresh or last.
        let asked: std::collections::HashSet<(String, String)> =
            functions.iter().map(|id| key(id)).collect();
        cache.retain(|k, _| k.0 != target.name || asked.contains(k));
        for id in functions {
            if failed.contains(&key(id)) {
                continue;
            }
            if let Some((_, inbound)) = cache.get(&key(id)) {
                read.inbound.insert(id.clone(), inbound.clone());
            }
        }
        read.failed.sort();
        Ok(read)
    }

    /// What a successful write of `inbound` left on the app, until its next read.
    pub(super) fn remember_inbound(&self, target: &str, id: &str, inbound: &Inbound) {
        let mut cache = self.inbound.lock().unwrap_or_else(|e| e.into_inner());
        let k = (target.to_string(), id.to_ascii_lowercase());
        let pass = cache.get(&k).map_or(0, |(p, _)| *p);
        cache.insert(k, (pass, inbound.clone()));
    }

    pub(super) fn rejected(&self, target: &str, id: &str) -> bool {
        self.vetted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(target)
            .is_some_and(|v| v.rejected.contains(&id.to_ascii_lowercase()))
    }
}
