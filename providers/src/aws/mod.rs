//! The AWS provider: Lambda VPC placement, EC2 security groups and their rules, VPC
//! endpoints.
//!
//! Credentials come from the standard AWS chain (`aws-config`: environment, profile, web
//! identity / IRSA, container and instance metadata), optionally followed by a role per
//! target (`assumeRoleArn`). Endpoint overrides (`AWS_ENDPOINT_URL`,
//! `AWS_ENDPOINT_URL_EC2`, …) are honoured by the SDK and logged when a target's clients
//! are built. Before anything else the caller's account is compared with the target's
//! `accountId`; a mismatch refuses every call for that target.
//!
//! Every call goes through [`call::Budget`]: a rate limiter per (account, region, API
//! family) and a counter by service, operation and outcome. Transient failures are
//! retried by the SDK in standard mode; this module adds only what the SDK cannot know:
//! `ResourceConflictException` on a function that is being updated, and waiting for a
//! VPC update to finish.

mod apply;
pub mod attribute;
pub mod call;
pub mod events;
mod observe;
pub mod translate;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_sdk_ec2::config::SharedCredentialsProvider;

pub use call::{Family, Rate, RateLimits};

use crate::model::{Target, TargetScope};
use crate::provider::{ApiCallCount, Change, Outcome, Provider, ProviderError};
use call::{Budget, Family as F, Scope};

/// Settings of the AWS provider.
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// Attempts per request (1 = no retries) of a transient failure, each one paced and
    /// counted by Palisade's call layer (the SDK's own retries are off).
    pub max_attempts: u32,
    /// First delay between those attempts (exponential with jitter, at most 30 s).
    pub retry_delay: Duration,
    /// Client-side rate limits per API family.
    pub rates: RateLimits,
    /// How long to wait for a function's VPC update to leave `InProgress`.
    pub update_wait: Duration,
    /// First delay between polls of a function's `LastUpdateStatus` (doubles, max 10 s).
    pub poll_interval: Duration,
    /// Retries of `ResourceConflictException` (another update of the function is running).
    pub conflict_retries: usize,
    /// First delay before such a retry (exponential with jitter).
    pub conflict_delay: Duration,
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            max_attempts: 5,
            retry_delay: Duration::from_millis(500),
            rates: RateLimits::default(),
            update_wait: Duration::from_secs(300),
            poll_interval: Duration::from_secs(1),
            conflict_retries: 8,
            conflict_delay: Duration::from_secs(1),
        }
    }
}

/// The SDK clients of one target.
#[derive(Debug, Clone)]
pub struct Clients {
    /// EC2: security groups, rules, VPCs, subnets, endpoints.
    pub ec2: aws_sdk_ec2::Client,
    /// Lambda: functions and their `VpcConfig`.
    pub lambda: aws_sdk_lambda::Client,
    /// Resource Groups Tagging API: every function's tags in a few pages.
    pub tagging: aws_sdk_resourcegroupstagging::Client,
    /// STS: the caller identity.
    pub sts: aws_sdk_sts::Client,
    /// CloudTrail: who made a drift (`LookupEvents`).
    pub cloudtrail: aws_sdk_cloudtrail::Client,
}

/// The endpoint override variables the SDK reads, for the start-up log.
const ENDPOINT_VARS: [&str; 6] = [
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_EC2",
    "AWS_ENDPOINT_URL_LAMBDA",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL_RESOURCE_GROUPS_TAGGING_API",
    "AWS_ENDPOINT_URL_CLOUDTRAIL",
];

impl Clients {
    /// Clients from the standard credential chain for `region`, then `assume_role_arn`.
    pub async fn from_env(region: &str, assume_role_arn: Option<&str>) -> Clients {
        let loader = || {
            aws_config::defaults(BehaviorVersion::latest())
                .region(aws_config::Region::new(region.to_string()))
        };
        // Retries are Palisade's (`call::Budget`), so that each attempt is paced and
        // counted — except for the credential chain's own STS calls (AssumeRole), which
        // never go through it and keep the SDK's standard retries.
        let credentials_conf = loader().retry_config(RetryConfig::standard()).load().await;
        let base = loader().retry_config(RetryConfig::disabled()).load().await;
        let conf = match assume_role_arn {
            Some(arn) => {
                let role = aws_config::sts::AssumeRoleProvider::builder(arn)
                    .session_name("palisade")
                    .configure(&credentials_conf)
                    .build()
                    .await;
                base.into_builder()
                    .credentials_provider(SharedCredentialsProvider::new(role))
                    .build()
            }
            None => base,
        };
        let overrides: Vec<String> = ENDPOINT_VARS
            .iter()
            .filter_map(|v| std::env::var(v).ok().map(|u| format!("{v}={u}")))
            .collect();
        tracing::info!(
            region,
            assume_role = assume_role_arn.unwrap_or("-"),
            endpoint = conf.endpoint_url().unwrap_or("default"),
            overrides = %overrides.join(" "),
            "AWS clients configured"
        );
        Clients {
            ec2: aws_sdk_ec2::Client::new(&conf),
            lambda: aws_sdk_lambda::Client::new(&conf),
            tagging: aws_sdk_resourcegroupstagging::Client::new(&conf),
            sts: aws_sdk_sts::Client::new(&conf),
            cloudtrail: aws_sdk_cloudtrail::Client::new(&conf),
        }
    }
}

/// What the provider remembers between calls for one target: which groups and endpoints
/// it owns (filled by `observe`, kept up to date by `apply`). Used to resolve
/// [`crate::GroupRef::Managed`] and to refuse changes to anything not owned.
#[derive(Debug, Default)]
struct Owned {
    /// Owner key → group id.
    groups: HashMap<String, String>,
    /// Every owned group id (also stray duplicates of an owner).
    group_ids: BTreeSet<String>,
    /// Endpoint id → what it looked like.
    endpoints: BTreeMap<String, EndpointState>,
    /// Ids that carry Palisade's tags but that the ownership record does not hold
    /// (claimed, or another target's): never resolved or written, whatever a later
    /// lookup by tag says.
    rejected: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct EndpointState {
    subnets: BTreeSet<String>,
    groups: BTreeSet<String>,
    route_tables: BTreeSet<String>,
    private_dns: bool,
}

#[derive(Debug)]
struct Session {
    scope: Scope,
    /// The target's scope as declared when the caller identity was verified: a revision
    /// that changes the account, region or role gets a new, re-verified session.
    declared: TargetScope,
    clients: Clients,
    owned: Mutex<Owned>,
    /// The caller identity verified (an ARN): its own events are never drift.
    caller: Option<String>,
}

impl Session {
    fn owned(&self) -> std::sync::MutexGuard<'_, Owned> {
        self.owned.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The AWS [`Provider`].
#[derive(Debug)]
pub struct AwsProvider {
    settings: AwsSettings,
    budget: Arc<Budget>,
    sessions: tokio::sync::Mutex<HashMap<String, Arc<Session>>>,
    /// Request ids of Palisade's own writes: never taken for someone else's drift.
    own: Mutex<crate::provider::OwnRequests>,
}

impl AwsProvider {
    /// A provider that builds each target's clients from the environment on first use.
    pub fn new(settings: AwsSettings) -> AwsProvider {
        AwsProvider {
            budget: Arc::new(Budget::new(
                settings.rates.clone(),
                settings.max_attempts,
                settings.retry_delay,
            )),
            settings,
            sessions: tokio::sync::Mutex::new(HashMap::new()),
            own: Mutex::default(),
        }
    }

    /// Use `clients` for `target` (tests, embedding). The caller identity is checked
    /// against the target's account now.
    ///
    /// # Errors
    /// [`ProviderError::Identity`] on an account mismatch; any STS failure.
    pub async fn connect(&self, target: &Target, clients: Clients) -> Result<(), ProviderError> {
        let session = self.verify(target, clients).await?;
        self.sessions
            .lock()
            .await
            .insert(target.name.clone(), Arc::new(session));
        Ok(())
    }

    async fn verify(&self, target: &Target, clients: Clients) -> Result<Session, ProviderError> {
        let TargetScope::Aws {
            region, account_id, ..
        } = &target.scope
        else {
            return Err(not_aws(target));
        };
        let scope = Scope {
            account: account_id.clone(),
            region: region.clone(),
        };
        let who = self
            .budget
            .call(&scope, F::Sts, "sts", "GetCallerIdentity", || {
                clients.sts.get_caller_identity().send()
            })
            .await?;
        let actual = who.account().unwrap_or_default();
        if actual != account_id {
            return Err(ProviderError::Identity {
                target: target.name.clone(),
                message: format!(
                    "the credentials belong to account {actual:?} ({}), but the target declares accountId {account_id:?}; refusing to read or change anything",
                    who.arn().unwrap_or("unknown identity")
                ),
            });
        }
        tracing::info!(target = %target.name, account = actual, identity = who.arn().unwrap_or("-"), "AWS caller identity verified");
        Ok(Session {
            scope,
            declared: target.scope.clone(),
            clients,
            owned: Mutex::new(Owned::default()),
            caller: who.arn().map(str::to_string),
        })
    }

    async fn session(&self, target: &Target) -> Result<Arc<Session>, ProviderError> {
        let mut sessions = self.sessions.lock().await;
        match sessions.get(&target.name) {
            Some(s) if s.declared == target.scope => return Ok(s.clone()),
            Some(_) => {
                // Never carry a verified identity over to another account, region or role.
                tracing::info!(target = %target.name, "the target's account, region or role changed; verifying the caller identity again");
                sessions.remove(&target.name);
            }
            None => {}
        }
        let TargetScope::Aws {
            region,
            assume_role_arn,
            ..
        } = &target.scope
        else {
            return Err(not_aws(target));
        };
        let clients = Clients::from_env(region, assume_role_arn.as_deref()).await;
        let session = Arc::new(self.verify(target, clients).await?);
        sessions.insert(target.name.clone(), session.clone());
        Ok(session)
    }
}

fn not_aws(target: &Target) -> ProviderError {
    ProviderError::Identity {
        target: target.name.clone(),
        message: "not an AWS target".into(),
    }
}

#[async_trait::async_trait]
impl Provider for AwsProvider {
    async fn observe(
        &self,
        target: &Target,
        ownership: &crate::Ownership,
    ) -> Result<crate::Inventory, ProviderError> {
        let s = self.session(target).await?;
        self.observe_with(&s, &target.name, ownership).await
    }

    async fn read_attachments(
        &self,
        target: &Target,
        inventory: &mut crate::Inventory,
        groups: &[String],
    ) -> Result<(), ProviderError> {
        let s = self.session(target).await?;
        let mut found = self.attachments(&s, groups).await?;
        for g in &mut inventory.groups {
            if let Some(users) = found.remove(&g.id) {
                g.attached = Some(users);
            }
        }
        Ok(())
    }

    async fn apply(&self, target: &Target, change: &Change) -> Result<Outcome, ProviderError> {
        let s = self.session(target).await?;
        let out = self.apply_with(&s, change).await?;
        let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        for id in &out.request_ids {
            own.insert(id);
        }
        Ok(out)
    }

    async fn attribute(
        &self,
        target: &Target,
        queries: &[crate::model::AttributionQuery],
    ) -> Result<Vec<Option<crate::model::Actor>>, ProviderError> {
        let s = self.session(target).await?;
        self.attribute_with(&s, queries).await
    }

    async fn event_queue(
        &self,
        url: &str,
        visibility: Duration,
    ) -> Result<Arc<dyn crate::events::EventQueue>, ProviderError> {
        Ok(Arc::new(
            events::SqsQueue::from_env(url, self.budget.clone())
                .await?
                .with_visibility(visibility),
        ))
    }

    async fn is_own_change(&self, target: &Target, event: &crate::events::ChangeEvent) -> bool {
        let by_request = event.request_id.as_deref().is_some_and(|id| {
            self.own
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(id)
        });
        if by_request {
            return true;
        }
        let caller = self
            .sessions
            .lock()
            .await
            .get(&target.name)
            .and_then(|s| s.caller.clone());
        match (caller, &event.actor) {
            (Some(me), Some(a)) => attribute::same_principal(Some(&a.id), a.issuer.as_deref(), &me),
            _ => false,
        }
    }

    fn api_calls(&self) -> Vec<ApiCallCount> {
        self.budget.counter.snapshot()
    }
}
