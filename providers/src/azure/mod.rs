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
//!
//! Split like the AWS provider: `observe` (the lists, vetted against the ownership
//! record), `apply` (the verbs), `call` (the one HTTP stack that paces, retries and counts
//! every attempt), `translate` (ARM JSON to the model); this module holds the settings,
//! the client and the lookups both sides share.

mod apply;
mod attribute;
mod call;
mod observe;
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
    /// Most `config/web` re-reads (a function app's access restrictions) in one pass
    /// over a target, the least recently read first; the others are answered from their
    /// last read. Apps never read are read whatever this says (once). ARM has no list of
    /// site configurations, so this is what keeps a pass's reads bounded at thousands
    /// of apps.
    pub inbound_reads: usize,
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
            inbound_reads: 1000,
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
    /// (target, lower-cased site id) → the pass it was last read in, and what was read.
    inbound: Mutex<HashMap<(String, String), (u64, crate::model::Inbound)>>,
    /// Passes of `observe_inbound`, for the least-recently-read order.
    inbound_pass: std::sync::atomic::AtomicU64,
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

/// Whether `id` is a site of the target's resource group, spelled as one ARM resource
/// (no further segments, no `.`/`..`, nothing a URL would read as a query): ids come from
/// the cloud's lists and are used as request paths.
fn site_in_scope(target: &Target, id: &str) -> bool {
    let Ok(s) = scope(target) else { return false };
    let prefix = format!(
        "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Web/sites/",
        s.subscription, s.resource_group
    );
    id.len() > prefix.len()
        && id.is_char_boundary(prefix.len())
        && id[..prefix.len()].eq_ignore_ascii_case(&prefix)
        && {
            let name = &id[prefix.len()..];
            name != "."
                && name != ".."
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        }
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
            inbound: Mutex::new(HashMap::new()),
            inbound_pass: std::sync::atomic::AtomicU64::new(0),
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

    async fn observe_inbound(
        &self,
        target: &Target,
        functions: &[String],
    ) -> Result<crate::provider::InboundRead, ProviderError> {
        self.observe_inbound_inner(target, functions)
            .await
            .map_err(|e| named(e, &target.name))
    }

    async fn attribute(
        &self,
        target: &Target,
        queries: &[crate::model::AttributionQuery],
    ) -> Result<Vec<Option<crate::model::Actor>>, ProviderError> {
        self.attribute_inner(target, queries)
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
