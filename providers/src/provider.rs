//! The seam to the outside world: bulk observation and idempotent changes.
//!
//! Modelled on Crossplane's external client: `observe` never mutates; `apply` of a
//! create on something that already exists, or of a delete on something already gone,
//! succeeds with [`OutcomeStatus::AlreadyDone`]. Results are structs so that fields can
//! be added without breaking callers.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::model::{
    EndpointKind, GroupRef, Inbound, Inventory, OwnedKind, Ownership, Placement, Rule, Tags, Target,
};

/// One idempotent change to the cloud, as planned by the engine.
///
/// Managed groups are named by [`GroupRef::Managed`]; the provider resolves them through
/// the ownership tags, so a plan can refer to a group it creates earlier in the same plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Change {
    /// Create a managed security group / NSG, tagged with its owner key. No rules: on AWS
    /// the default egress rule that comes with it is revoked by a later `RemoveRules`.
    #[serde(rename_all = "camelCase")]
    CreateGroup {
        /// Owner key (policy name or endpoint key).
        owner: String,
        /// Group name.
        name: String,
        /// VPC id (AWS); empty on Azure.
        network: String,
        /// Description.
        description: String,
        /// All tags, ownership tags included.
        tags: Tags,
    },
    /// Delete a managed group.
    #[serde(rename_all = "camelCase")]
    DeleteGroup {
        /// Owner key.
        owner: String,
        /// Cloud id.
        id: String,
    },
    /// Authorise rules in a managed group (one batched call where the cloud allows).
    #[serde(rename_all = "camelCase")]
    AddRules {
        /// The group.
        group: GroupRef,
        /// Rules to add.
        rules: Vec<Rule>,
    },
    /// Revoke rules from a managed group, by their observed ids.
    #[serde(rename_all = "camelCase")]
    RemoveRules {
        /// The group.
        group: GroupRef,
        /// Rules to remove (observed, so `id` is set where the cloud has one).
        rules: Vec<Rule>,
    },
    /// Set a function's network placement (`None` takes it out of any VPC / VNet).
    #[serde(rename_all = "camelCase")]
    SetPlacement {
        /// Function id.
        function: String,
        /// Function name (for display and for SDK calls that take a name).
        name: String,
        /// Placement before (for display and conflict checks).
        before: Option<Placement>,
        /// Placement after.
        after: Option<Placement>,
    },
    /// Set an Azure function app's inbound access restrictions (and their default
    /// action): a read-modify-write of `config/web` that changes nothing else.
    #[serde(rename_all = "camelCase")]
    SetInbound {
        /// Function (site) id.
        function: String,
        /// Function name.
        name: String,
        /// Restrictions before (`None`: not observed).
        before: Option<Inbound>,
        /// Restrictions after.
        after: Inbound,
    },
    /// Associate (or dissociate, with `None`) an NSG with an Azure subnet.
    #[serde(rename_all = "camelCase")]
    SetSubnetGroup {
        /// Subnet id.
        subnet: String,
        /// Group before.
        before: Option<GroupRef>,
        /// Group after.
        after: Option<GroupRef>,
    },
    /// Create a managed endpoint.
    #[serde(rename_all = "camelCase")]
    CreateEndpoint {
        /// Owner key.
        owner: String,
        /// Service (see [`crate::model::Endpoint::service`]).
        service: String,
        /// Kind.
        kind: EndpointKind,
        /// Network.
        network: String,
        /// Subnets.
        subnets: Vec<String>,
        /// Security groups.
        groups: Vec<GroupRef>,
        /// Route tables.
        route_tables: Vec<String>,
        /// Private DNS.
        private_dns: bool,
        /// All tags, ownership tags included.
        tags: Tags,
    },
    /// Change a managed endpoint's subnets, groups or route tables in place.
    #[serde(rename_all = "camelCase")]
    UpdateEndpoint {
        /// Owner key.
        owner: String,
        /// Cloud id.
        id: String,
        /// Subnets after.
        subnets: Vec<String>,
        /// Groups after.
        groups: Vec<GroupRef>,
        /// Route tables after.
        route_tables: Vec<String>,
        /// Private DNS after.
        private_dns: bool,
    },
    /// Delete a managed endpoint.
    #[serde(rename_all = "camelCase")]
    DeleteEndpoint {
        /// Owner key.
        owner: String,
        /// Cloud id.
        id: String,
    },
    /// Put the ownership tags back on a recorded resource whose tags were stripped or
    /// changed (recognised by its id, which the ownership record holds).
    #[serde(rename_all = "camelCase")]
    SetOwnershipTags {
        /// Group or endpoint.
        kind: OwnedKind,
        /// Cloud id.
        id: String,
        /// Owner key (the recorded one).
        owner: String,
        /// The full ownership tags to set.
        tags: Tags,
        /// Taking over a group a policy names as its `managedGroup` (first tagging),
        /// rather than restoring the tags of a recorded one.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        takeover: bool,
    },
}

impl Change {
    /// The change's kind, as its JSON `action` tag spells it (`addRules`, `setPlacement`…).
    pub fn action(&self) -> &'static str {
        match self {
            Change::CreateGroup { .. } => "createGroup",
            Change::DeleteGroup { .. } => "deleteGroup",
            Change::AddRules { .. } => "addRules",
            Change::RemoveRules { .. } => "removeRules",
            Change::SetPlacement { .. } => "setPlacement",
            Change::SetInbound { .. } => "setInbound",
            Change::SetSubnetGroup { .. } => "setSubnetGroup",
            Change::CreateEndpoint { .. } => "createEndpoint",
            Change::UpdateEndpoint { .. } => "updateEndpoint",
            Change::DeleteEndpoint { .. } => "deleteEndpoint",
            Change::SetOwnershipTags { .. } => "setOwnershipTags",
        }
    }

    /// Whether this change removes something (counted against the blast-radius budget).
    pub fn deletes(&self) -> usize {
        match self {
            Change::DeleteGroup { .. } | Change::DeleteEndpoint { .. } => 1,
            Change::RemoveRules { rules, .. } => rules.len(),
            Change::SetPlacement { after: None, .. } => 1,
            // A release: every managed group taken away from the function removes access.
            Change::SetPlacement {
                before: Some(b),
                after: Some(a),
                ..
            } => b
                .groups
                .iter()
                .filter(|g| matches!(g, GroupRef::Managed(_)) && !a.groups.contains(g))
                .count(),
            Change::SetSubnetGroup { after: None, .. } => 1,
            // Allow rules taken away from an app's front door.
            Change::SetInbound {
                before: Some(b),
                after,
                ..
            } => b
                .rules
                .iter()
                .filter(|r| r.access == crate::model::Access::Allow && !after.rules.contains(r))
                .count(),
            _ => 0,
        }
    }
}

/// How a change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum OutcomeStatus {
    /// The cloud did it.
    Applied,
    /// It was already so (duplicate create, delete of a missing thing).
    AlreadyDone,
    /// The cloud cannot do it yet (e.g. a group still held by Lambda ENIs); retry later.
    Pending,
}

/// The result of one [`Provider::apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// Applied, already done or pending.
    pub status: OutcomeStatus,
    /// Id of a created resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_id: Option<String>,
    /// Request ids the cloud returned, for the audit trail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_ids: Vec<String>,
    /// Why it is pending, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Outcome {
    /// An `Applied` outcome with nothing else to say.
    pub fn applied() -> Outcome {
        Outcome {
            status: OutcomeStatus::Applied,
            created_id: None,
            request_ids: Vec::new(),
            detail: None,
        }
    }

    /// An `AlreadyDone` outcome.
    pub fn already_done() -> Outcome {
        Outcome {
            status: OutcomeStatus::AlreadyDone,
            ..Outcome::applied()
        }
    }

    /// A `Pending` outcome with its reason.
    pub fn pending(detail: impl Into<String>) -> Outcome {
        Outcome {
            status: OutcomeStatus::Pending,
            detail: Some(detail.into()),
            ..Outcome::applied()
        }
    }
}

/// A failure talking to the cloud. The cloud's error code and message are kept, never
/// flattened into a string, so that retry and reporting decisions stay possible.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The cloud throttled us; retry after backing off.
    #[error("throttled by {service} ({code})")]
    Throttled {
        /// Service (`ec2`, `lambda`, `arm`).
        service: String,
        /// Error code (`RequestLimitExceeded`, `TooManyRequestsException`, `429`).
        code: String,
        /// Seconds the cloud asked us to wait, if it said.
        retry_after_secs: Option<u64>,
    },
    /// The cloud refused the request.
    #[error("{service} {operation} failed: {code}: {message}")]
    Api {
        /// Service.
        service: String,
        /// Operation (`AuthorizeSecurityGroupEgress`, `PUT networkSecurityGroups`).
        operation: String,
        /// The cloud's error code.
        code: String,
        /// The cloud's message.
        message: String,
        /// Request id, if the cloud returned one.
        request_id: Option<String>,
        /// Whether retrying the same request later may succeed.
        retryable: bool,
    },
    /// Palisade itself refused the change, or gave up on it: no cloud error is behind it.
    #[error("{operation} failed: {kind}: {message}")]
    Refused {
        /// Why, as a kind to match on.
        kind: RefusalKind,
        /// The operation that was not sent (or whose result was not waited for).
        operation: String,
        /// What was wrong, for people.
        message: String,
    },
    /// A managed group the change refers to does not exist (and was not created first).
    #[error("managed group {owner:?} not found")]
    UnresolvedGroup {
        /// Owner key.
        owner: String,
    },
    /// The caller identity or credentials do not fit the target (e.g. wrong account).
    #[error("target {target}: {message}")]
    Identity {
        /// Target name.
        target: String,
        /// What is wrong.
        message: String,
    },
    /// Transport-level failure (connection refused, timeout) after the SDK's own retries.
    #[error("transport error talking to {service}")]
    Transport {
        /// Service.
        service: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why Palisade refused a change on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalKind {
    /// The resource is not Palisade's (not in the ownership record, or its tags say
    /// another owner): never changed.
    NotOwned,
    /// The name Palisade needs is held by a resource it does not own.
    NameTaken,
    /// The cloud cannot express the change (e.g. a service tag on AWS).
    Unsupported,
    /// The resource changed between Palisade's read and its write: re-plan.
    Conflict,
    /// The cloud did not finish in time: re-plan.
    Timeout,
    /// The change or the cloud's answer makes no sense (a bug, or a hostile answer).
    Invalid,
}

impl fmt::Display for RefusalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RefusalKind::NotOwned => "Palisade.NotOwned",
            RefusalKind::NameTaken => "Palisade.NameTaken",
            RefusalKind::Unsupported => "Palisade.Unsupported",
            RefusalKind::Conflict => "Palisade.Conflict",
            RefusalKind::Timeout => "Palisade.Timeout",
            RefusalKind::Invalid => "Palisade.Invalid",
        })
    }
}

impl ProviderError {
    /// A refusal of Palisade's own.
    pub fn refused(kind: RefusalKind, operation: &str, message: impl Into<String>) -> Self {
        ProviderError::Refused {
            kind,
            operation: operation.to_string(),
            message: message.into(),
        }
    }

    /// The kind of refusal, when Palisade refused on its own.
    pub fn refusal(&self) -> Option<RefusalKind> {
        match self {
            ProviderError::Refused { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    /// Whether a later attempt may succeed (throttling, conflicts, transport errors).
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Throttled { .. } | ProviderError::Transport { .. } => true,
            ProviderError::Api { retryable, .. } => *retryable,
            ProviderError::Refused { kind, .. } => {
                matches!(kind, RefusalKind::Conflict | RefusalKind::Timeout)
            }
            ProviderError::UnresolvedGroup { .. } | ProviderError::Identity { .. } => false,
        }
    }
}

/// A cloud behind Palisade.
///
/// # Guarantees
/// - `observe` makes only read calls, in bulk (paged list calls, never one call per
///   resource), and returns the target's state translated into the shared model.
///   `observe_inbound` is the one per-resource read, for what no list returns, bounded
///   by the functions policies select and a re-read budget.
/// - `apply` is idempotent: applying a change that is already in effect succeeds with
///   [`OutcomeStatus::AlreadyDone`]. It never touches a resource the last observation
///   did not find to be Palisade's (recorded, or on [`crate::OwnershipBasis::Tags`]
///   tagged), nor one that carries another owner's tags, except a function's network
///   placement.
#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Observe everything in `target` that the engine needs. Every group's and endpoint's
    /// tags go through [`Ownership::vet`] before anything reads them, and the notes it
    /// returns are in [`Inventory::ownership`].
    ///
    /// # Errors
    /// Any [`ProviderError`]; nothing has been changed.
    async fn observe(
        &self,
        target: &Target,
        ownership: &Ownership,
    ) -> Result<Inventory, ProviderError>;

    /// Read the inbound access restrictions of `functions` (ids from the last
    /// [`Provider::observe`]), the one read that is per resource: ARM has no list of
    /// site configurations. The engine asks only for the functions a policy selects;
    /// a provider may answer some from its last read (a budget of re-reads per pass,
    /// the least recently read first), but reads every function it never read. A function whose read
    /// failed is missing from the answer and its error is in [`InboundRead::failed`]:
    /// one broken app never stops the others.
    ///
    /// # Errors
    /// Only when nothing could be read at all (no credentials, no endpoint).
    async fn observe_inbound(
        &self,
        _target: &Target,
        _functions: &[String],
    ) -> Result<InboundRead, ProviderError> {
        Ok(InboundRead::default())
    }

    /// Who made each change `queries` name, from the cloud's audit log (Azure's Activity
    /// Log, AWS CloudTrail), one answer per query: `None` when the log has no write on
    /// that resource in the window other than Palisade's own (its writes are recognised
    /// by the request ids it sent, never by a name someone could borrow).
    ///
    /// # Errors
    /// The log could not be read; the drift is recorded without an actor.
    async fn attribute(
        &self,
        _target: &Target,
        queries: &[crate::model::AttributionQuery],
    ) -> Result<Vec<Option<crate::model::Actor>>, ProviderError> {
        Ok(vec![None; queries.len()])
    }

    /// Fill [`crate::SecurityGroup::attached`] of the `groups` (ids) of `inventory`
    /// (from the last [`Provider::observe`] of `target`): what uses each besides
    /// functions. `palisade adopt` asks, to tell a group a cluster may own from one it
    /// shares. A provider that reads attachments while observing (Azure: the NSG list
    /// carries its subnets and NICs) has nothing to do; the default leaves them unread
    /// (`None`), which adoption treats as shared.
    ///
    /// # Errors
    /// The attachments could not be read.
    async fn read_attachments(
        &self,
        _target: &Target,
        _inventory: &mut Inventory,
        _groups: &[String],
    ) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Apply one change.
    ///
    /// # Errors
    /// [`ProviderError`] when the cloud refused or could not be reached; the change may be
    /// retried as a whole.
    async fn apply(&self, target: &Target, change: &Change) -> Result<Outcome, ProviderError>;

    /// The queue of cloud change events at `url` (AWS: an SQS queue fed by EventBridge),
    /// read with this provider's credentials and counted in its API calls. A received
    /// message stays hidden for `visibility` (longer than the reconcile that consumes
    /// it may take), then comes back unless deleted.
    ///
    /// # Errors
    /// This cloud has no such queue, or the URL is not one.
    async fn event_queue(
        &self,
        url: &str,
        _visibility: std::time::Duration,
    ) -> Result<std::sync::Arc<dyn crate::events::EventQueue>, ProviderError> {
        Err(ProviderError::refused(
            RefusalKind::Unsupported,
            "events",
            format!("this provider reads no event queue ({url})"),
        ))
    }

    /// Whether `event` is one of Palisade's own writes in `target`: a request id the
    /// cloud answered one of its writes with, or its own verified principal. Such
    /// events are dropped, never drift.
    async fn is_own_change(&self, _target: &Target, _event: &crate::events::ChangeEvent) -> bool {
        false
    }

    /// Every cloud API call made so far, by service, operation and outcome. Providers
    /// that do not count return nothing.
    fn api_calls(&self) -> Vec<ApiCallCount> {
        Vec::new()
    }
}

/// The request ids of Palisade's own writes, the most recent 100,000: how a provider
/// tells its own changes from anyone else's in the cloud's audit log (AWS: the request
/// ids AWS answered; Azure: the `x-ms-client-request-id`s it sent).
#[derive(Debug, Default)]
pub struct OwnRequests {
    order: std::collections::VecDeque<String>,
    ids: std::collections::HashSet<String>,
    next: u64,
}

impl OwnRequests {
    const MAX: usize = 100_000;

    /// Remember `id`.
    pub fn insert(&mut self, id: &str) {
        if self.ids.contains(id) {
            return;
        }
        if self.order.len() >= Self::MAX
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.order.push_back(id.to_string());
        self.ids.insert(id.to_string());
    }

    /// A fresh id for a request Palisade is about to send, remembered.
    pub fn issue(&mut self) -> String {
        self.next += 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id = format!("palisade-{}-{nanos:x}-{}", std::process::id(), self.next);
        self.insert(&id);
        id
    }

    /// Whether `id` is one of Palisade's.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }
}

/// What [`Provider::observe_inbound`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundRead {
    /// Restrictions by function id.
    pub inbound: BTreeMap<String, Inbound>,
    /// Functions whose read failed, with why.
    pub failed: Vec<(String, String)>,
}

/// How one cloud API call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallOutcome {
    /// The cloud answered with success.
    Ok,
    /// The cloud throttled the call (after the SDK's own retries).
    Throttled,
    /// Any other failure, transport included.
    Error,
}

/// Whether an operation reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallKind {
    /// `Describe*`, `List*`, `Get*`, ARM `GET`.
    Read,
    /// Everything else.
    Write,
}

impl CallKind {
    /// Classify an operation by its name: AWS `Describe*`/`List*`/`Get*` and HTTP `GET`
    /// read; everything else writes.
    pub fn of(operation: &str) -> CallKind {
        const READS: [&str; 4] = ["Describe", "List", "Get", "GET"];
        if READS.iter().any(|p| operation.starts_with(p)) {
            CallKind::Read
        } else {
            CallKind::Write
        }
    }
}

/// One line of [`Provider::api_calls`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiCallCount {
    /// `ec2`, `lambda`, `tagging`, `sts`, `arm`.
    pub service: String,
    /// `DescribeSecurityGroups`, `UpdateFunctionConfiguration`, …
    pub operation: String,
    /// Read or write.
    pub kind: CallKind,
    /// How the calls ended.
    pub outcome: CallOutcome,
    /// How many.
    pub count: u64,
}

/// Counts API calls; shared by the providers, read by metrics and reports.
#[derive(Debug, Default)]
pub struct CallCounter {
    counts: Mutex<BTreeMap<(&'static str, &'static str, CallOutcome), u64>>,
}

impl CallCounter {
    /// Count one call.
    pub fn record(&self, service: &'static str, operation: &'static str, outcome: CallOutcome) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry((service, operation, outcome)).or_default() += 1;
    }

    /// Everything counted so far, sorted.
    pub fn snapshot(&self) -> Vec<ApiCallCount> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .map(|(&(service, operation, outcome), &count)| ApiCallCount {
                service: service.to_string(),
                operation: operation.to_string(),
                kind: CallKind::of(operation),
                outcome,
                count,
            })
            .collect()
    }
}

/// Sum of `counts` of the given kind.
pub fn total_calls(counts: &[ApiCallCount], kind: CallKind) -> u64 {
    counts
        .iter()
        .filter(|c| c.kind == kind)
        .map(|c| c.count)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{GroupRef, Placement};

    #[test]
    fn action_is_the_json_tag() {
        let changes = [
            Change::DeleteGroup {
                owner: "o".into(),
                id: "sg-1".into(),
            },
            Change::AddRules {
                group: GroupRef::Id("sg-1".into()),
                rules: vec![],
            },
            Change::RemoveRules {
                group: GroupRef::Id("sg-1".into()),
                rules: vec![],
            },
            Change::SetPlacement {
                function: "f".into(),
                name: "f".into(),
                before: None,
                after: Some(Placement {
                    network: "n".into(),
                    subnets: vec![],
                    groups: vec![],
                    route_all: false,
                }),
            },
            Change::SetSubnetGroup {
                subnet: "s".into(),
                before: None,
                after: None,
            },
            Change::DeleteEndpoint {
                owner: "o".into(),
                id: "vpce-1".into(),
            },
            Change::UpdateEndpoint {
                owner: "o".into(),
                id: "vpce-1".into(),
                subnets: vec![],
                groups: vec![],
                route_tables: vec![],
                private_dns: false,
            },
        ];
        for c in changes {
            let tag = serde_json::to_value(&c).unwrap()["action"]
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(c.action(), tag);
        }
    }
}
