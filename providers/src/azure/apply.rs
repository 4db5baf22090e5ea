//! `apply`: one idempotent change at a time. Every write names a resource Palisade owns
//! (recorded, and checked against its tags on a fresh GET), except a function app's
//! VNet integration, which the policy governs; replacements are make-before-break.

use super::*;

impl AzureProvider {
    pub(super) async fn apply_inner(
        &self,
        target: &Target,
        change: &Change,
    ) -> Result<Outcome, ProviderError> {
        let arm = self.arm()?;
        let s = scope(target)?;
        match change {
            Change::CreateGroup {
                owner, name, tags, ..
            } => self.create_group(&arm, target, owner, name, tags).await,
            Change::DeleteGroup { owner, id } => self.delete_group(&arm, target, owner, id).await,
            Change::AddRules { group, rules } => {
                let (rg, nsg) = self
                    .owned_nsg(&arm, target, group, "PUT securityRules")
                    .await?;
                let mut request_ids = Vec::new();
                for rule in rules {
                    request_ids.extend(self.put_rule(&arm, s.subscription, &rg, &nsg, rule).await?);
                }
                Ok(Outcome {
                    request_ids,
                    ..Outcome::applied()
                })
            }
            Change::RemoveRules { group, rules } => {
                self.remove_rules(&arm, target, group, rules).await
            }
            Change::SetPlacement {
                function, after, ..
            } => {
                let subnet = after
                    .as_ref()
                    .and_then(|p| p.subnets.first())
                    .map(String::as_str);
                let route_all = after.as_ref().is_some_and(|p| p.route_all);
                self.set_placement(&arm, function, subnet, route_all).await
            }
            Change::SetInbound {
                function, after, ..
            } => {
                let out = self.set_inbound(&arm, target, function, after).await?;
                self.remember_inbound(&target.name, function, after);
                Ok(out)
            }
            Change::SetSubnetGroup {
                subnet,
                before,
                after,
            } => {
                self.set_subnet_group(&arm, target, subnet, before.as_ref(), after.as_ref())
                    .await
            }
            Change::CreateEndpoint {
                owner,
                service,
                kind,
                subnets,
                tags,
                ..
            } => {
                if *kind != EndpointKind::Private {
                    return Err(internal(
                        "PUT privateEndpoints",
                        format!("Azure has no {kind:?} endpoints"),
                    ));
                }
                self.create_endpoint(&arm, target, owner, service, subnets, tags)
                    .await
            }
            Change::UpdateEndpoint {
                owner, id, subnets, ..
            } => {
                self.replace_endpoint(&arm, target, owner, id, subnets)
                    .await
            }
            Change::DeleteEndpoint { owner, id } => {
                self.delete_endpoint(&arm, target, owner, id).await
            }
            Change::SetOwnershipTags { id, tags, .. } => {
                self.set_ownership_tags(&arm, target, id, tags).await
            }
        }
    }

    /// Put the ownership tags back on an NSG or private endpoint that the last
    /// observation recognised as recorded (never on anything else). ARM's PATCH replaces
    /// the whole tag set, so the other tags are read and kept.
    async fn set_ownership_tags(
        &self,
        arm: &Arm,
        target: &Target,
        id: &str,
        tags: &crate::Tags,
    ) -> Result<Outcome, ProviderError> {
        let what = "PATCH tags";
        let known = self
            .vetted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&target.name)
            .is_some_and(|v| v.owned.contains(&id.to_ascii_lowercase()));
        if !known {
            return Err(not_owned(what, id));
        }
        let url = arm.url(id, NETWORK_API_VERSION)?;
        let current = arm.call(Method::Get, url.clone(), None).await?.body;
        let mut merged = translate::tags(current.get("tags"));
        if tags.iter().all(|(k, v)| merged.get(k) == Some(v)) {
            return Ok(Outcome::already_done());
        }
        merged.extend(tags.clone());
        let answer = arm
            .call(Method::Patch, url, Some(&json!({ "tags": merged })))
            .await?;
        if answer.status == StatusCode::Accepted {
            arm.wait(what, &answer.headers).await?;
        }
        Ok(Outcome {
            request_ids: answer.request_id().into_iter().collect(),
            ..Outcome::applied()
        })
    }

    async fn create_group(
        &self,
        arm: &Arm,
        target: &Target,
        owner: &str,
        name: &str,
        tags: &crate::model::Tags,
    ) -> Result<Outcome, ProviderError> {
        let s = scope(target)?;
        let client = arm.network.network_security_groups_client();
        match client
            .get(s.resource_group, name, s.subscription)
            .send()
            .await
        {
            Ok(r) => {
                let g = r
                    .into_body()
                    .await
                    .map_err(|e| map_error("GET networkSecurityGroups", e))?;
                let observed = translate::tags(g.resource.tags.as_ref());
                let id = g.resource.id.unwrap_or_default();
                if owner_of(&observed) == Some(owner) && !self.rejected(&target.name, &id) {
                    self.remember(&target.name, owner, &id);
                    return Ok(Outcome {
                        created_id: Some(id),
                        ..Outcome::already_done()
                    });
                }
                return Err(not_owned("PUT networkSecurityGroups", &id));
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(map_error("GET networkSecurityGroups", e)),
        }
        let body: m::NetworkSecurityGroup = serde_json::from_value(
            json!({ "location": s.location, "tags": tags, "properties": {} }),
        )
        .map_err(|e| internal("PUT networkSecurityGroups", e.to_string()))?;
        let r = client
            .create_or_update(s.resource_group, name, body, s.subscription)
            .send()
            .await
            .map_err(|e| map_error("PUT networkSecurityGroups", e))?;
        let headers = r.as_raw_response().headers().clone();
        let created = r
            .into_body()
            .await
            .map_err(|e| map_error("PUT networkSecurityGroups", e))?;
        let request_id = arm.settle("PUT networkSecurityGroups", &headers).await?;
        let id = created.resource.id.unwrap_or_default();
        self.remember(&target.name, owner, &id);
        Ok(Outcome {
            created_id: Some(id),
            request_ids: request_id.into_iter().collect(),
            ..Outcome::applied()
        })
    }

    async fn delete_group(
        &self,
        arm: &Arm,
        target: &Target,
        owner: &str,
        id: &str,
    ) -> Result<Outcome, ProviderError> {
        let s = scope(target)?;
        let (rg, name) = rg_and_name(id);
        let client = arm.network.network_security_groups_client();
        let g = match client.get(&rg, &name, s.subscription).send().await {
            Ok(r) => r
                .into_body()
                .await
                .map_err(|e| map_error("GET networkSecurityGroups", e))?,
            Err(e) if is_not_found(&e) => {
                self.forget(&target.name, owner);
                return Ok(Outcome::already_done());
            }
            Err(e) => return Err(map_error("GET networkSecurityGroups", e)),
        };
        if owner_of(&translate::tags(g.resource.tags.as_ref())) != Some(owner)
            || self.rejected(&target.name, id)
        {
            return Err(not_owned("DELETE networkSecurityGroups", id));
        }
        let users = g.properties.as_ref().map(|p| p.subnets.len()).unwrap_or(0);
        if users > 0 {
            return Ok(Outcome::pending(format!(
                "NSG {name} is still associated with {users} subnet(s); it is deleted once they are detached"
            )));
        }
        let r = match client.delete(&rg, &name, s.subscription).send().await {
            Ok(r) => r,
            Err(e) => {
                let err = map_error("DELETE networkSecurityGroups", e);
                if error_code(&err) == Some("InUseNetworkSecurityGroupCannotBeDeleted") {
                    return Ok(Outcome::pending(err.to_string()));
                }
                return Err(err);
            }
        };
        let request_id = arm
            .settle(
                "DELETE networkSecurityGroups",
                r.as_raw_response().headers(),
            )
            .await?;
        self.forget(&target.name, owner);
        Ok(Outcome {
            request_ids: request_id.into_iter().collect(),
            ..Outcome::applied()
        })
    }

    async fn put_rule(
        &self,
        arm: &Arm,
        sub: &str,
        rg: &str,
        nsg: &str,
        rule: &Rule,
    ) -> Result<Option<String>, ProviderError> {
        let what = "PUT securityRules";
        let name = translate::rule_name(rule).map_err(|e| internal(what, e))?;
        let body: m::SecurityRule = translate::rule_body(rule)
            .and_then(|b| serde_json::from_value(b).map_err(|e| e.to_string()))
            .map_err(|e| internal(what, e))?;
        let client = arm.network.security_rules_client();
        let mut cleared = false;
        loop {
            match client
                .create_or_update(rg, nsg, &name, body.clone(), sub)
                .send()
                .await
            {
                Ok(r) => return arm.settle(what, r.as_raw_response().headers()).await,
                Err(e) => {
                    let err = map_error(what, e);
                    if cleared || error_code(&err) != Some("SecurityRuleConflict") {
                        return Err(err);
                    }
                    // Another rule holds this slot (direction + priority) in a managed NSG:
                    // drift, removed before the rule that belongs there is written.
                    self.clear_slot(arm, sub, rg, nsg, rule, &name).await?;
                    cleared = true;
                }
            }
        }
    }

    async fn clear_slot(
        &self,
        arm: &Arm,
        sub: &str,
        rg: &str,
        nsg: &str,
        rule: &Rule,
        keep: &str,
    ) -> Result<(), ProviderError> {
        let rules = collect(
            "GET securityRules (list)",
            arm.network
                .security_rules_client()
                .list(rg, nsg, sub)
                .into_stream(),
            |p: m::SecurityRuleListResult| p.value,
        )
        .await?;
        for r in rules {
            let Some(p) = &r.properties else { continue };
            let same_dir = matches!(
                (&p.direction, rule.direction),
                (
                    m::SecurityRuleDirection::Inbound,
                    crate::model::Direction::Ingress
                ) | (
                    m::SecurityRuleDirection::Outbound,
                    crate::model::Direction::Egress
                )
            );
            let name = r.name.clone().unwrap_or_default();
            if same_dir
                && Some(p.priority) == rule.priority.map(i32::from)
                && !name.eq_ignore_ascii_case(keep)
            {
                tracing::info!(nsg, rule = %name, "removing a hand-made rule that holds a managed priority slot");
                self.delete_rule(arm, sub, rg, nsg, &name).await?;
            }
        }
        Ok(())
    }

    async fn delete_rule(
        &self,
        arm: &Arm,
        sub: &str,
        rg: &str,
        nsg: &str,
        name: &str,
    ) -> Result<Option<String>, ProviderError> {
        let what = "DELETE securityRules";
        let r = arm
            .network
            .security_rules_client()
            .delete(rg, nsg, name, sub)
            .send()
            .await
            .map_err(|e| map_error(what, e))?;
        arm.settle(what, r.as_raw_response().headers()).await
    }

    async fn remove_rules(
        &self,
        arm: &Arm,
        target: &Target,
        group: &GroupRef,
        rules: &[Rule],
    ) -> Result<Outcome, ProviderError> {
        let s = scope(target)?;
        let (rg, nsg) = self
            .owned_nsg(arm, target, group, "DELETE securityRules")
            .await?;
        let mut by_name: std::collections::BTreeMap<&str, Vec<&Rule>> = Default::default();
        for r in rules {
            let name = r.id.as_deref().ok_or_else(|| {
                internal(
                    "DELETE securityRules",
                    format!("observed rule {r} has no name"),
                )
            })?;
            by_name.entry(name).or_default().push(r);
        }
        let mut request_ids = Vec::new();
        let mut done = 0;
        for (name, doomed) in by_name {
            // Delete only what was observed: a rule replaced in its slot since (for
            // instance by the AddRules of the same plan) stays.
            let current = match arm
                .network
                .security_rules_client()
                .get(&rg, &nsg, name, s.subscription)
                .send()
                .await
            {
                Ok(r) => r
                    .into_body()
                    .await
                    .map_err(|e| map_error("GET securityRules", e))?,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(map_error("GET securityRules", e)),
            };
            let now = translate::rules_of(&current);
            if !doomed.iter().all(|d| now.contains(d)) {
                continue;
            }
            request_ids.extend(
                self.delete_rule(arm, s.subscription, &rg, &nsg, name)
                    .await?,
            );
            done += 1;
        }
        Ok(Outcome {
            status: if done == 0 {
                OutcomeStatus::AlreadyDone
            } else {
                OutcomeStatus::Applied
            },
            request_ids,
            ..Outcome::applied()
        })
    }

    async fn set_subnet_group(
        &self,
        arm: &Arm,
        target: &Target,
        subnet: &str,
        before: Option<&GroupRef>,
        after: Option<&GroupRef>,
    ) -> Result<Outcome, ProviderError> {
        let what = "PUT subnets";
        let want = match after {
            Some(g) => Some(self.resolve(arm, target, g).await?),
            None => None,
        };
        let was = match before {
            Some(GroupRef::Managed(owner)) => self.managed_nsg(arm, target, owner).await?,
            Some(GroupRef::Id(id)) => Some(id.clone()),
            None => None,
        };
        let url = arm.url(subnet, NETWORK_API_VERSION)?;
        let mut current = arm.call(Method::Get, url.clone(), None).await?.body;
        let now = current["properties"]["networkSecurityGroup"]["id"]
            .as_str()
            .map(str::to_string);
        let same = |a: &Option<String>, b: &Option<String>| match (a, b) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            (None, None) => true,
            _ => false,
        };
        if same(&now, &want) {
            return Ok(Outcome::already_done());
        }
        // Change only what was observed; an unresolvable managed `before` (its NSG is
        // gone) cannot be compared.
        if before.is_some() == was.is_some() && !same(&now, &was) {
            return Err(ProviderError::refused(
                RefusalKind::Conflict,
                what,
                format!(
                    "subnet {subnet} changed since it was observed (NSG now {now:?}); re-planning"
                ),
            ));
        }
        let props = current["properties"]
            .as_object_mut()
            .ok_or_else(|| internal(what, format!("subnet {subnet} has no properties")))?;
        match &want {
            Some(id) => {
                props.insert("networkSecurityGroup".into(), json!({ "id": id }));
            }
            None => {
                props.remove("networkSecurityGroup");
            }
        }
        props.remove("provisioningState");
        let etag = current["etag"].as_str().map(str::to_string);
        let answer = arm
            .put_if_match(url, &current, etag.as_deref())
            .await
            .map_err(|e| changed_since_read(e, subnet))?;
        let request_id = arm.settle(what, &answer.headers).await?;
        Ok(Outcome {
            request_ids: request_id.into_iter().collect(),
            ..Outcome::applied()
        })
    }

    async fn set_placement(
        &self,
        arm: &Arm,
        site: &str,
        subnet: Option<&str>,
        route_all: bool,
    ) -> Result<Outcome, ProviderError> {
        let what = "PUT sites";
        let url = arm.url(site, WEB_API_VERSION)?;
        let mut current = arm.call(Method::Get, url.clone(), None).await?.body;
        let now = current["properties"]["virtualNetworkSubnetId"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let equal = match (&now, subnet) {
            (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
            (None, None) => true,
            _ => false,
        };
        if equal
            && (subnet.is_none()
                || route_all == super::translate::route_all(&current["properties"]))
        {
            return Ok(Outcome::already_done());
        }
        let Some(props) = current["properties"].as_object_mut() else {
            return Err(internal(what, format!("site {site} has no properties")));
        };
        props.insert(
            "virtualNetworkSubnetId".into(),
            subnet.map_or(Value::Null, |s| json!(s)),
        );
        if subnet.is_some() {
            // Route-all, on every spelling the site carries, so that egress rules apply
            // to internet-bound traffic too (not only RFC 1918).
            props.insert("vnetRouteAllEnabled".into(), json!(route_all));
            if let Some(sc) = props.get_mut("siteConfig").and_then(Value::as_object_mut)
                && sc.contains_key("vnetRouteAllEnabled")
            {
                sc.insert("vnetRouteAllEnabled".into(), json!(route_all));
            }
            if let Some(r) = props
                .get_mut("outboundVnetRouting")
                .and_then(Value::as_object_mut)
            {
                // Application traffic only: `allTraffic` would also route content
                // share, image pulls and backups, which the policy does not speak for.
                r.insert("applicationTraffic".into(), json!(route_all));
            }
        }
        let etag = current["etag"].as_str().map(str::to_string);
        let answer = arm.put_if_match(url, &current, etag.as_deref()).await;
        finish_write(arm, what, site, answer).await
    }

    /// Read-modify-write of the app's `config/web`: only `ipSecurityRestrictions` and
    /// `ipSecurityRestrictionsDefaultAction` are sent (a PATCH), `If-Match` the etag read
    /// when the configuration has one.
    async fn set_inbound(
        &self,
        arm: &Arm,
        target: &Target,
        site: &str,
        after: &crate::model::Inbound,
    ) -> Result<Outcome, ProviderError> {
        let what = "PATCH sites/config";
        if !site_in_scope(target, site) {
            return Err(internal(
                what,
                format!(
                    "{site} is not a site of the target's resource group; refusing to change it"
                ),
            ));
        }
        let (rules, default) =
            super::translate::restrictions(after).map_err(|e| internal(what, e))?;
        let url = arm.url(&format!("{site}/config/web"), WEB_API_VERSION)?;
        let current = arm.call(Method::Get, url.clone(), None).await?.body;
        if super::translate::inbound(&current["properties"]) == after.clone().normalised()
            && current["properties"]["ipSecurityRestrictionsDefaultAction"]
                .as_str()
                .is_some_and(|d| d.eq_ignore_ascii_case(default))
        {
            return Ok(Outcome::already_done());
        }
        let body = json!({
            "properties": {
                "ipSecurityRestrictions": rules,
                "ipSecurityRestrictionsDefaultAction": default,
            }
        });
        let etag = current["etag"].as_str().map(str::to_string);
        let answer = arm.patch_if_match(url, &body, etag.as_deref()).await;
        finish_write(arm, what, site, answer).await
    }

    async fn get_endpoint(
        &self,
        arm: &Arm,
        sub: &str,
        rg: &str,
        name: &str,
    ) -> Result<Option<m::PrivateEndpoint>, ProviderError> {
        match arm
            .network
            .private_endpoints_client()
            .get(rg, name, sub)
            .send()
            .await
        {
            Ok(r) => Ok(Some(
                r.into_body()
                    .await
                    .map_err(|e| map_error("GET privateEndpoints", e))?,
            )),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(map_error("GET privateEndpoints", e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_endpoint(
        &self,
        arm: &Arm,
        target: &Target,
        owner: &str,
        service: &str,
        subnets: &[String],
        tags: &crate::model::Tags,
    ) -> Result<Outcome, ProviderError> {
        let what = "PUT privateEndpoints";
        let s = scope(target)?;
        let name = endpoint_name(owner);
        if let Some(pe) = self
            .get_endpoint(arm, s.subscription, s.resource_group, &name)
            .await?
        {
            let id = pe.resource.id.clone().unwrap_or_default();
            // Tags alone never make it ours: a claimed endpoint of this name is refused.
            if owner_of(&translate::tags(pe.resource.tags.as_ref())) == Some(owner)
                && !self.rejected(&target.name, &id)
            {
                return Ok(Outcome {
                    created_id: Some(id),
                    ..Outcome::already_done()
                });
            }
            return Err(not_owned(what, &id));
        }
        self.put_endpoint(arm, &s, &name, owner, service, subnets, tags)
            .await
    }

    /// Create the private endpoint `name` of `owner` (known not to exist).
    #[allow(clippy::too_many_arguments)]
    async fn put_endpoint(
        &self,
        arm: &Arm,
        s: &Scope<'_>,
        name: &str,
        owner: &str,
        service: &str,
        subnets: &[String],
        tags: &crate::model::Tags,
    ) -> Result<Outcome, ProviderError> {
        let what = "PUT privateEndpoints";
        let (resource, group) = service.split_once('#').ok_or_else(|| {
            internal(
                what,
                format!("endpoint service {service:?} is not <resource id>#<group id>"),
            )
        })?;
        let subnet = subnets
            .first()
            .ok_or_else(|| internal(what, format!("endpoint {owner} has no subnet")))?;
        let body: m::PrivateEndpoint = serde_json::from_value(json!({
            "location": s.location,
            "tags": tags,
            "properties": {
                "subnet": { "id": subnet },
                "privateLinkServiceConnections": [{
                    "name": name,
                    "properties": { "privateLinkServiceId": resource, "groupIds": [group] }
                }]
            }
        }))
        .map_err(|e| internal(what, e.to_string()))?;
        let r = arm
            .network
            .private_endpoints_client()
            .create_or_update(s.resource_group, name, body, s.subscription)
            .send()
            .await
            .map_err(|e| map_error(what, e))?;
        let headers = r.as_raw_response().headers().clone();
        let created = r.into_body().await.map_err(|e| map_error(what, e))?;
        let request_id = arm.settle(what, &headers).await?;
        Ok(Outcome {
            created_id: created.resource.id,
            request_ids: request_id.into_iter().collect(),
            ..Outcome::applied()
        })
    }

    async fn delete_endpoint(
        &self,
        arm: &Arm,
        target: &Target,
        owner: &str,
        id: &str,
    ) -> Result<Outcome, ProviderError> {
        let what = "DELETE privateEndpoints";
        let s = scope(target)?;
        let (rg, name) = rg_and_name(id);
        let Some(pe) = self.get_endpoint(arm, s.subscription, &rg, &name).await? else {
            return Ok(Outcome::already_done());
        };
        if owner_of(&translate::tags(pe.resource.tags.as_ref())) != Some(owner)
            || self.rejected(&target.name, id)
        {
            return Err(not_owned(what, id));
        }
        let request_id = self
            .send_delete_endpoint(arm, s.subscription, &rg, &name)
            .await?;
        Ok(Outcome {
            request_ids: request_id.into_iter().collect(),
            ..Outcome::applied()
        })
    }

    /// Delete a private endpoint (ownership already checked) and follow it to its end.
    async fn send_delete_endpoint(
        &self,
        arm: &Arm,
        sub: &str,
        rg: &str,
        name: &str,
    ) -> Result<Option<String>, ProviderError> {
        let what = "DELETE privateEndpoints";
        let r = arm
            .network
            .private_endpoints_client()
            .delete(rg, name, sub)
            .send()
            .await
            .map_err(|e| map_error(what, e))?;
        arm.settle(what, r.as_raw_response().headers()).await
    }

    /// A private endpoint's subnet cannot change in place: replace it, make before break
    /// — one GET, the new endpoint created under a new name (in the resource group of
    /// the old one) and settled, then the old one deleted. If the delete fails, the new
    /// endpoint is kept and the outcome is pending: the next plan sees the old one as an
    /// extra and deletes it; no moment passes without an endpoint.
    async fn replace_endpoint(
        &self,
        arm: &Arm,
        target: &Target,
        owner: &str,
        id: &str,
        subnets: &[String],
    ) -> Result<Outcome, ProviderError> {
        let what = "PUT privateEndpoints";
        let s = scope(target)?;
        let (rg, name) = rg_and_name(id);
        let Some(pe) = self.get_endpoint(arm, s.subscription, &rg, &name).await? else {
            return Err(internal(
                what,
                format!("endpoint {id} vanished; re-planning"),
            ));
        };
        let observed = translate::endpoints(std::slice::from_ref(&pe), &translate::Ids::default());
        let Some(ep) = observed.first() else {
            return Err(internal(what, format!("endpoint {id} is unreadable")));
        };
        if ep.owner() != Some(owner) || self.rejected(&target.name, id) {
            return Err(not_owned(what, id));
        }
        let same = ep.subnets.len() == subnets.len()
            && ep
                .subnets
                .iter()
                .zip(subnets)
                .all(|(a, b)| a.eq_ignore_ascii_case(b));
        if same {
            return Ok(Outcome::already_done());
        }
        let new_name = replacement_name(owner, &name, subnets);
        let mut created = self
            .put_endpoint(arm, &s, &new_name, owner, &ep.service, subnets, &ep.tags)
            .await?;
        match self
            .send_delete_endpoint(arm, s.subscription, &rg, &name)
            .await
        {
            Ok(deleted) => created.request_ids.extend(deleted),
            Err(e) => {
                tracing::warn!(endpoint = %id, error = %e, "the replaced private endpoint could not be deleted yet; the new one is in place");
                created.status = OutcomeStatus::Pending;
                created.detail = Some(format!(
                    "replacement {new_name} created; the old endpoint {name} is not deleted yet ({e})"
                ));
            }
        }
        Ok(created)
    }
}

/// The name of a replacement private endpoint: the owner's name with a suffix from the
/// new subnet, never the name being replaced.
fn replacement_name(owner: &str, old: &str, subnets: &[String]) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in subnets.join(",").to_ascii_lowercase().bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let name = format!("{}-{h:08x}", endpoint_name(owner));
    if name.eq_ignore_ascii_case(old) {
        format!("{name}-2")
    } else {
        name
    }
}

/// The end of a read-modify-write of `id`: a lost race is retryable (nothing was
/// overwritten), an accepted write is waited for, the request id is kept.
async fn finish_write(
    arm: &Arm,
    what: &str,
    id: &str,
    answer: Result<call::Answer, ProviderError>,
) -> Result<Outcome, ProviderError> {
    let answer = answer.map_err(|e| changed_since_read(e, id))?;
    if answer.status == StatusCode::Accepted {
        arm.wait(what, &answer.headers).await?;
    }
    Ok(Outcome {
        request_ids: answer.request_id().into_iter().collect(),
        ..Outcome::applied()
    })
}
