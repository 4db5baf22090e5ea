//! The Azure provider: NSGs and their rules, subnet ↔ NSG association, private endpoints
//! and function-app VNet integration, in one subscription and resource group per target.
//!
//! Network resources go through `azure_mgmt_network` 0.21 (`package-2024-03`), whose
//! traps are wrapped here rather than inherited:
//! - its long-running-operation polling waits 30 s when `Retry-After` is missing and drops
//!   a failed operation's error code, and its deletes never poll: every write is sent with
//!   `send()` and followed by [`call::Arm::wait`] (`Azure-AsyncOperation`, else `Location`);
//! - its models never serialise empty lists and drop unknown properties: a subnet is
//!   changed by GET-modify-PUT of the raw JSON, and an existing NSG is never PUT (a PUT
//!   without `securityRules` would delete its rules) — rules are written one by one;
//! - its retry policy would hide throttling: it is off, and [`call::ArmPolicy`] retries
//!   `429` after `Retry-After` and `RetryableErrorDueToAnotherOperation`, counting each try.
//!
//! Function-app VNet integration (`Microsoft.Web/sites`, api-version 2024-04-01) is a
//! small typed call on the same credential and pipeline: `azure_mgmt_web` 0.21 cannot
//! deserialise real site responses. The site is read and written back whole, with only
//! `properties.virtualNetworkSubnetId` changed.
//!
//! Credentials come from `azure_identity`'s chain (environment client secret or
//! certificate, workload identity, managed identity, Azure CLI; `AZURE_CREDENTIAL_KIND`
//! picks one), scoped to the ARM endpoint, which is configurable for sovereign clouds and
//! tests and logged when the provider starts.

mod call;
pub mod translate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::{Method, StatusCode, Url};
use azure_mgmt_network::package_2024_03::models as m;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::model::{
    EndpointKind, GroupRef, Inventory, OwnedKind, Ownership, Rule, Target, TargetScope, owner_of,
};
use crate::provider::{
    ApiCallCount, CallCounter, Change, Outcome, OutcomeStatus, Provider, ProviderError, RefusalKind,
};

pub use call::ANOTHER_OPERATION;
use call::{Arm, map_error};

/// Public-cloud ARM endpoint.
pub const PUBLIC_ARM_ENDPOINT: &str = "https://management.azure.com/";
/// API version of `Microsoft.Web/sites` calls.
pub const WEB_API_VERSION: &str = "2024-04-01";
/// API version of `Microsoft.Network` calls (the one `azure_mgmt_network` hard-codes).
pub const NETWORK_API_VERSION: &str = "2024-03-01";

/// Settings of the Azure provider.
#[derive(Debug, Clone)]
pub struct AzureSettings {
    /// ARM endpoint (`https://management.azure.com/`, a sovereign cloud, or a test fake).
    pub arm_endpoint: String,
    /// Wait between polls of a long-running operation when ARM gives no `Retry-After`.
    pub poll_interval: Duration,
    /// Longest wait for one long-running operation.
    pub operation_timeout: Duration,
    /// Cap on any `Retry-After` honoured.
    pub max_retry_after: Duration,
    /// Retries of a throttled (429) call.
    pub throttle_retries: usize,
    /// Retries of `RetryableErrorDueToAnotherOperation`.
    pub conflict_retries: usize,
    /// First delay before such a retry (doubles).
    pub conflict_delay: Duration,
    /// Retries of transport errors and 5xx answers.
    pub transport_retries: usize,
    /// Client-side budget per subscription.
    pub rates: ArmRates,
}

/// Client-side rate limits per subscription, below ARM's own buckets (per subscription
/// and principal: reads 250 burst / 25 per s, writes 200 / 10 per s) so that a reconcile
/// leaves room for the deploy pipelines beside it. Long-running-operation polls are reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArmRates {
    /// GETs.
    pub read: crate::rate::Rate,
    /// PUT, PATCH, DELETE.
    pub write: crate::rate::Rate,
}

impl Default for ArmRates {
    fn default() -> Self {
        use crate::rate::Rate;
        ArmRates {
            read: Rate {
                per_second: 20.0,
                burst: 200,
            },
            write: Rate {
                per_second: 8.0,
                burst: 160,
            },
        }
    }
}

impl std::str::FromStr for ArmRates {
    type Err = String;

    /// `arm-read=20/200,arm-write=8/160`: the buckets named are changed, the other keeps
    /// its default.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut rates = ArmRates::default();
        for (name, rate) in crate::rate::parse_rates(s, &["arm-read", "arm-write"])? {
            match name {
                "arm-read" => rates.read = rate,
                _ => rates.write = rate,
            }
        }
        Ok(rates)
    }
}

impl Default for AzureSettings {
    fn default() -> Self {
        AzureSettings {
            arm_endpoint: PUBLIC_ARM_ENDPOINT.to_string(),
            poll_interval: Duration::from_secs(1),
            operation_timeout: Duration::from_secs(600),
            max_retry_after: Duration::from_secs(60),
            throttle_retries: 8,
            conflict_retries: 6,
            conflict_delay: Duration::from_millis(500),
            transport_retries: 3,
            rates: ArmRates::default(),
        }
    }
}

/// Where a target lives.
struct Scope<'a> {
    subscription: &'a str,
    resource_group: &'a str,
    location: &'a str,
}

fn scope(target: &Target) -> Result<Scope<'_>, ProviderError> {
    match &target.scope {
        TargetScope::Azure {
            subscription_id,
            resource_group,
            location,
        } => Ok(Scope {
            subscription: subscription_id,
            resource_group,
            location,
        }),
        TargetScope::Aws { .. } => Err(ProviderError::Identity {
            target: target.name.clone(),
            message: "the Azure provider was asked to handle an AWS target".into(),
        }),
    }
}

/// The Azure provider. Cheap to create; the credential is built on first use.
pub struct AzureProvider {
    settings: AzureSettings,
    counter: Arc<CallCounter>,
    arm: Mutex<Option<Arm>>,
    /// (target, owner) → NSG id of managed NSGs, from the last observe and from creates.
    owners: Mutex<HashMap<(String, String), String>>,
    /// Target → what its last observation decided: lower-cased ids Palisade owns, and
    /// ids that carry its tags without being owned (never resolved or written).
    vetted: Mutex<HashMap<String, Vetted>>,
    credential: Mutex<Option<Arc<dyn azure_core::auth::TokenCredential>>>,
}

#[derive(Debug, Default)]
struct Vetted {
    owned: std::collections::BTreeSet<String>,
    rejected: std::collections::BTreeSet<String>,
}

impl std::fmt::Debug for AzureProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureProvider")
            .field("settings", &self.settings)
            .finish()
    }
}

fn not_owned(what: &str, id: &str) -> ProviderError {
    ProviderError::refused(
        RefusalKind::NotOwned,
        what,
        format!(
            "{id} is not Palisade's (not recorded, or its ownership tags name another owner); refusing to change it"
        ),
    )
}

fn internal(what: &str, message: String) -> ProviderError {
    ProviderError::refused(RefusalKind::Invalid, what, message)
}

/// A read-modify-write lost the race: retry on the next reconcile, with a fresh read.
fn changed_since_read(e: ProviderError, id: &str) -> ProviderError {
    match e {
        ProviderError::Api {
            code,
            message,
            request_id,
            operation,
            ..
        } if code == "PreconditionFailed" => ProviderError::Api {
            service: "arm".into(),
            operation,
            code,
            message: format!(
                "{id} changed between Palisade's read and its write; nothing was overwritten ({message})"
            ),
            request_id,
            retryable: true,
        },
        other => other,
    }
}

fn is_not_found(e: &azure_core::Error) -> bool {
    e.as_http_error()
        .is_some_and(|h| h.status() == StatusCode::NotFound)
}

fn error_code(e: &ProviderError) -> Option<&str> {
    match e {
        ProviderError::Api { code, .. } => Some(code),
        _ => None,
    }
}

/// Resource group and name from an ARM id (`…/resourceGroups/{rg}/…/{name}`).
fn rg_and_name(id: &str) -> (String, String) {
    let parts: Vec<&str> = id.split('/').collect();
    let rg = parts
        .iter()
        .position(|p| p.eq_ignore_ascii_case("resourceGroups"))
        .and_then(|i| parts.get(i + 1))
        .map(|s| s.to_string())
        .unwrap_or_default();
    (rg, translate::name_of(id).to_string())
}

/// The ARM name of a managed private endpoint.
pub fn endpoint_name(owner: &str) -> String {
    format!("palisade-{}", owner.replace('.', "-"))
}

async fn collect<T, I>(
    what: &str,
    mut stream: azure_core::Pageable<T, azure_core::Error>,
    items: impl Fn(T) -> Vec<I>,
) -> Result<Vec<I>, ProviderError>
where
    T: Send + 'static,
{
    let mut out = Vec::new();
    while let Some(page) = stream.next().await {
        out.extend(items(page.map_err(|e| map_error(what, e))?));
    }
    Ok(out)
}

impl AzureProvider {
    /// A provider with `settings`.
    pub fn new(settings: AzureSettings) -> AzureProvider {
        AzureProvider {
            settings,
            counter: Arc::new(CallCounter::default()),
            arm: Mutex::new(None),
            owners: Mutex::new(HashMap::new()),
            vetted: Mutex::new(HashMap::new()),
            credential: Mutex::new(None),
        }
    }

    /// A provider with an explicit credential (tests, embedding).
    pub fn with_credential(
        settings: AzureSettings,
        credential: Arc<dyn azure_core::auth::TokenCredential>,
    ) -> AzureProvider {
        let p = AzureProvider::new(settings);
        *p.credential.lock().unwrap_or_else(|e| e.into_inner()) = Some(credential);
        p
    }

    fn arm(&self) -> Result<Arm, ProviderError> {
        let mut slot = self.arm.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let endpoint =
            Url::parse(&self.settings.arm_endpoint).map_err(|e| ProviderError::Identity {
                target: "azure".into(),
                message: format!("ARM endpoint {:?}: {e}", self.settings.arm_endpoint),
            })?;
        let given = self
            .credential
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let credential = match given {
            Some(c) => c,
            None => azure_identity::create_credential().map_err(|e| ProviderError::Identity {
                target: "azure".into(),
                message: format!("no Azure credential could be set up: {e}"),
            })?,
        };
        tracing::info!(
            arm_endpoint = %endpoint,
            credential = if std::env::var_os("AZURE_CREDENTIAL_KIND").is_some() { "AZURE_CREDENTIAL_KIND" } else { "default chain (environment, workload identity, managed identity, Azure CLI)" },
            "azure provider: using ARM endpoint"
        );
        let arm = Arm::new(
            endpoint,
            credential,
            self.counter.clone(),
            self.settings.clone(),
        )?;
        *slot = Some(arm.clone());
        Ok(arm)
    }

    fn remember(&self, target: &str, owner: &str, id: &str) {
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((target.to_string(), owner.to_string()), id.to_string());
    }

    fn forget(&self, target: &str, owner: &str) {
        self.owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(target.to_string(), owner.to_string()));
    }

    /// The id of the managed NSG of `owner`: from the last observe, or by listing.
    async fn managed_nsg(
        &self,
        arm: &Arm,
        target: &Target,
        owner: &str,
    ) -> Result<Option<String>, ProviderError> {
        if let Some(id) = self
            .owners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(target.name.clone(), owner.to_string()))
        {
            return Ok(Some(id.clone()));
        }
        let s = scope(target)?;
        let nsgs = collect(
            "GET networkSecurityGroups (list)",
            arm.network
                .network_security_groups_client()
                .list(s.resource_group, s.subscription)
                .into_stream(),
            |p: m::NetworkSecurityGroupListResult| p.value,
        )
        .await?;
        let groups = translate::groups(&nsgs);
        let found = groups
            .iter()
            .filter(|g| g.owner() == Some(owner) && !self.rejected(&target.name, &g.id))
            .map(|g| g.id.clone())
            .min();
        if let Some(id) = &found {
            self.remember(&target.name, owner, id);
        }
        Ok(found)
    }

    async fn resolve(
        &self,
        arm: &Arm,
        target: &Target,
        group: &GroupRef,
    ) -> Result<String, ProviderError> {
        match group {
            GroupRef::Managed(owner) => {
                self.managed_nsg(arm, target, owner).await?.ok_or_else(|| {
                    ProviderError::UnresolvedGroup {
                        owner: owner.clone(),
                    }
                })
            }
            GroupRef::Id(id) => Ok(id.clone()),
        }
    }

    /// The managed NSG `group` names, checked to carry the ownership tags: (rg, name).
    async fn owned_nsg(
        &self,
        arm: &Arm,
        target: &Target,
        group: &GroupRef,
        what: &str,
    ) -> Result<(String, String), ProviderError> {
        let GroupRef::Managed(_) = group else {
            return Err(not_owned(what, &group.to_string()));
        };
        let id = self.resolve(arm, target, group).await?;
        Ok(rg_and_name(&id))
    }

    async fn observe_inner(
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
        ownership.vet_inventory(&mut inv);
        inv.ownership.sort();
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

    fn rejected(&self, target: &str, id: &str) -> bool {
        self.vetted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(target)
            .is_some_and(|v| v.rejected.contains(&id.to_ascii_lowercase()))
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
        if equal {
            return Ok(Outcome::already_done());
        }
        if !current["properties"].is_object() {
            return Err(internal(what, format!("site {site} has no properties")));
        }
        current["properties"]["virtualNetworkSubnetId"] = match subnet {
            Some(s) => json!(s),
            None => Value::Null,
        };
        let etag = current["etag"].as_str().map(str::to_string);
        let answer = arm
            .put_if_match(url, &current, etag.as_deref())
            .await
            .map_err(|e| changed_since_read(e, site))?;
        if answer.status == StatusCode::Accepted {
            arm.wait(what, &answer.headers).await?;
        }
        Ok(Outcome {
            request_ids: answer.request_id().into_iter().collect(),
            ..Outcome::applied()
        })
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

#[async_trait::async_trait]
impl Provider for AzureProvider {
    async fn observe(
        &self,
        target: &Target,
        ownership: &Ownership,
    ) -> Result<Inventory, ProviderError> {
        self.observe_inner(target, ownership)
            .await
            .map_err(|e| named(e, &target.name))
    }

    async fn apply(&self, target: &Target, change: &Change) -> Result<Outcome, ProviderError> {
        self.apply_inner(target, change)
            .await
            .map_err(|e| named(e, &target.name))
    }

    fn api_calls(&self) -> Vec<ApiCallCount> {
        self.counter.snapshot()
    }
}

/// Identity errors raised below the provider know no target; name it.
fn named(e: ProviderError, target: &str) -> ProviderError {
    match e {
        ProviderError::Identity { message, .. } => ProviderError::Identity {
            target: target.to_string(),
            message,
        },
        other => other,
    }
}

impl AzureProvider {
    async fn apply_inner(
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
                self.set_placement(&arm, function, subnet).await
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_by_bucket() {
        let r: ArmRates = "arm-write=2/4".parse().unwrap();
        assert_eq!(r.write.per_second, 2.0);
        assert_eq!(r.write.burst, 4);
        assert_eq!(r.read, ArmRates::default().read);
        let err = "arm-delete=1/1".parse::<ArmRates>().unwrap_err();
        assert!(err.contains("arm-read, arm-write"), "{err}");
        assert!("arm-read=0/1".parse::<ArmRates>().is_err());
        assert!("".parse::<ArmRates>().unwrap() == ArmRates::default());
    }

    #[test]
    fn ids_split() {
        let (rg, name) = rg_and_name(
            "/subscriptions/s/resourceGroups/RG-1/providers/Microsoft.Network/networkSecurityGroups/n",
        );
        assert_eq!((rg.as_str(), name.as_str()), ("RG-1", "n"));
        assert_eq!(
            endpoint_name("endpoint.kv.vault"),
            "palisade-endpoint-kv-vault"
        );
    }
}
