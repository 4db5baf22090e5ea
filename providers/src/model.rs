//! The cloud-neutral model: what a provider observes in one target and what the engine
//! wants there.
//!
//! Providers translate their SDK types into these values at the edge ("normalise, then
//! diff"): one [`Rule`] per atomic tuple, canonical CIDRs, AWS default rules explicit,
//! references to Palisade-managed groups as [`GroupRef::Managed`]. The planner compares
//! these values and never sees an SDK type.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Tag key that marks a resource as created and owned by Palisade.
pub const TAG_MANAGED_BY: &str = "palisade:managed-by";
/// Value of [`TAG_MANAGED_BY`] on everything Palisade owns.
pub const MANAGED_BY_VALUE: &str = "palisade";
/// Tag key naming the owner key (policy name or endpoint key) of a managed resource.
pub const TAG_OWNER: &str = "palisade:policy";
/// Tag key naming the target a managed resource belongs to.
pub const TAG_TARGET: &str = "palisade:target";
/// Tag key naming the installation (the ownership record) a managed resource belongs to.
pub const TAG_INSTALLATION: &str = "palisade:installation";

/// Which cloud a target lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Cloud {
    /// Amazon Web Services: Lambda, EC2 security groups, VPC endpoints.
    Aws,
    /// Microsoft Azure: function apps, NSGs, private endpoints.
    Azure,
}

impl fmt::Display for Cloud {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cloud::Aws => "aws",
            Cloud::Azure => "azure",
        })
    }
}

/// The cloud scope of a target, as declared in a `Target` policy document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TargetScope {
    /// An AWS account and region.
    Aws {
        /// Region, e.g. `us-east-1`.
        region: String,
        /// The 12-digit account the caller identity must belong to.
        account_id: String,
        /// Role to assume before any call, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        assume_role_arn: Option<String>,
    },
    /// An Azure subscription and resource group.
    Azure {
        /// Subscription id (GUID).
        subscription_id: String,
        /// Resource group that holds the managed NSGs and private endpoints.
        resource_group: String,
        /// Location of created resources, e.g. `westeurope`.
        location: String,
    },
}

impl TargetScope {
    /// The cloud this scope belongs to.
    pub fn cloud(&self) -> Cloud {
        match self {
            TargetScope::Aws { .. } => Cloud::Aws,
            TargetScope::Azure { .. } => Cloud::Azure,
        }
    }
}

/// A named target: what `observe` is called with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The `metadata.name` of the `Target` document.
    pub name: String,
    /// Where it is.
    pub scope: TargetScope,
}

/// Tags (AWS) or tags (Azure): an ordered map so output and comparisons are deterministic.
pub type Tags = BTreeMap<String, String>;

/// Everything observed in one target at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// Name of the target this was observed in.
    pub target: String,
    /// VPCs (AWS) or VNets (Azure).
    #[serde(default)]
    pub networks: Vec<Network>,
    /// Subnets of those networks.
    #[serde(default)]
    pub subnets: Vec<Subnet>,
    /// Functions (Lambda functions, function apps).
    #[serde(default)]
    pub functions: Vec<Function>,
    /// Security groups (AWS) or NSGs (Azure): every managed one and every one referenced.
    #[serde(default)]
    pub groups: Vec<SecurityGroup>,
    /// VPC endpoints (AWS) or private endpoints (Azure). Deleted ones are not listed.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// AWS-managed prefix lists (gateway endpoint services), by name.
    #[serde(default)]
    pub prefix_lists: Vec<PrefixList>,
    /// Ownership decisions that need attention (restored tags, claims, adoptions), made
    /// while observing; see [`Ownership::vet`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ownership: Vec<OwnershipNote>,
    /// Tags that make a resource Palisade's in this target (ownership, target and
    /// installation), without the owner key: what creations carry.
    #[serde(default, skip_serializing_if = "Tags::is_empty")]
    pub stamp: Tags,
}

impl Inventory {
    /// The managed group owned by `owner`, if observed. Should two groups carry the same
    /// owner tag, the one with the lowest id is the group; the others are drift.
    pub fn managed_group(&self, owner: &str) -> Option<&SecurityGroup> {
        self.groups
            .iter()
            .filter(|g| g.owner() == Some(owner))
            .min_by(|a, b| a.id.cmp(&b.id))
    }

    /// A group by its cloud id (case-insensitive, as Azure ids are).
    pub fn group_by_id(&self, id: &str) -> Option<&SecurityGroup> {
        self.groups.iter().find(|g| g.id.eq_ignore_ascii_case(id))
    }
}

/// A VPC or VNet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    /// `vpc-…` or the VNet's ARM id.
    pub id: String,
    /// Name (Azure name, or AWS `Name` tag when present).
    #[serde(default)]
    pub name: String,
    /// Address space.
    #[serde(default)]
    pub cidrs: Vec<IpNet>,
    /// Tags.
    #[serde(default)]
    pub tags: Tags,
}

/// A subnet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subnet {
    /// `subnet-…` or the subnet's ARM id.
    pub id: String,
    /// Name (Azure name, or AWS `Name` tag when present).
    #[serde(default)]
    pub name: String,
    /// Id of the network it belongs to.
    pub network: String,
    /// Address prefixes.
    #[serde(default)]
    pub cidrs: Vec<IpNet>,
    /// Tags.
    #[serde(default)]
    pub tags: Tags,
    /// Availability zone (AWS), used to place one interface-endpoint ENI per zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Route table associated with the subnet (AWS), for gateway endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_table: Option<String>,
    /// Azure only: the NSG associated with this subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupRef>,
    /// Azure only: the services the subnet is delegated to (`Microsoft.Web/serverFarms`
    /// for function-app VNet integration, `Microsoft.App/environments` for Flex
    /// Consumption).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub delegations: Vec<String>,
}

/// A function and where it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Function {
    /// ARN (AWS) or site ARM id (Azure).
    pub id: String,
    /// Function name / site name.
    pub name: String,
    /// Tags.
    #[serde(default)]
    pub tags: Tags,
    /// Network placement; `None` when the function is not in a VPC / has no VNet integration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Azure: who may reach the app's own front door (its access restrictions). `None`
    /// when not observed: always on AWS (a Lambda function has no network ingress), and
    /// on Azure for apps no policy selects or whose read is not due (see
    /// [`crate::Provider::observe_inbound`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inbound: Option<Inbound>,
}

/// Who made a change, as the cloud's audit log names them (CloudTrail's
/// `userIdentity`, the Activity Log's `caller` and `claims`), normalised across clouds.
/// Every string is cut short and free of control characters: it comes from the cloud.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Actor {
    /// What kind of principal.
    pub kind: ActorKind,
    /// Its id: an ARN, a user principal name, an object or application id.
    pub id: String,
    /// A display name, or the session name of an assumed role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The role an assumed-role session was issued by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Where the call came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// The caller's user agent (as the caller says: not proof of anything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The AWS service that made the call with the principal's credentials
    /// (`invokedBy`: `cloudformation.amazonaws.com`), as the cloud says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoked_by: Option<String>,
    /// The audit log's id of the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// When the cloud says it happened (as it spells it, RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
    /// The correlation id of the request (Azure), for the cloud's own logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The operation (`Microsoft.Network/networkSecurityGroups/securityRules/write`,
    /// `AuthorizeSecurityGroupIngress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

impl Actor {
    /// An actor known by kind and id alone (the other fields unknown).
    pub fn named(kind: ActorKind, id: impl Into<String>) -> Actor {
        Actor {
            kind,
            id: id.into(),
            name: None,
            issuer: None,
            source_ip: None,
            user_agent: None,
            invoked_by: None,
            event_id: None,
            event_time: None,
            correlation_id: None,
            operation: None,
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ActorKind::User => "user",
            ActorKind::AssumedRole => "assumed role",
            ActorKind::Federated => "federated user",
            ActorKind::Service => "service",
            ActorKind::ServicePrincipal => "service principal",
            ActorKind::Unknown => "principal",
        };
        write!(f, "{kind} {}", self.id)?;
        if let Some(n) = self.name.as_deref().filter(|n| *n != self.id) {
            write!(f, " ({n})")?;
        }
        Ok(())
    }
}

/// See [`Actor::kind`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActorKind {
    /// A person: an IAM user, an Entra ID user.
    User,
    /// An assumed IAM role session.
    AssumedRole,
    /// A federated or SSO session.
    Federated,
    /// A cloud service acting on its own (`cloudformation.amazonaws.com`).
    Service,
    /// An application: an Entra ID service principal or managed identity.
    ServicePrincipal,
    /// The log did not say (or a kind this version does not know).
    #[serde(other)]
    Unknown,
}

/// Characters that have no place in a name shown to people: control characters, line
/// separators, and Unicode format characters (bidi overrides and isolates, zero-width
/// joiners, soft hyphens…) that can make a name read as something else.
pub fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{00ad}' | '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206f}' | '\u{feff}')
}

/// Cloud text for an [`Actor`] field: hidden characters dropped, at most 256 characters.
pub fn audit_text(s: &str) -> String {
    s.chars().filter(|c| !is_hidden(*c)).take(256).collect()
}

/// What [`crate::Provider::attribute`] is asked: who changed `resource` (a cloud id; its
/// sub-resources count, e.g. an NSG's rules) between `since` and `until` (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttributionQuery {
    /// The cloud id.
    pub resource: String,
    /// Window start (the last observation that found it as declared).
    pub since_ms: i64,
    /// Window end (the observation that found the drift).
    pub until_ms: i64,
}

/// The inbound access restrictions of an Azure function app
/// (`siteConfig.ipSecurityRestrictions` and `ipSecurityRestrictionsDefaultAction`): the
/// rules in priority order, the first that matches decides, the default action the rest.
///
/// VNet integration is outbound only; this, not the integration subnet's NSG, decides
/// who reaches the app over its public endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inbound {
    /// What happens to a request no rule matches.
    pub default_action: Access,
    /// The rules, in priority order (see [`Inbound::normalised`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<InboundRule>,
}

impl Inbound {
    /// Sort the rules, so that equal restrictions compare equal.
    pub fn normalised(mut self) -> Self {
        self.rules.sort();
        self.rules.dedup();
        self
    }
}

/// Equality ignores rule names (the cloud's handle, for people): two restrictions that
/// admit the same requests in the same order are the same.
impl PartialEq for Inbound {
    fn eq(&self, other: &Self) -> bool {
        self.default_action == other.default_action && self.rules == other.rules
    }
}
impl Eq for Inbound {}

/// One access restriction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InboundRule {
    /// Its name (at most 32 characters on ARM). Not part of its identity.
    #[serde(default)]
    pub name: String,
    /// Priority: lower first.
    pub priority: u32,
    /// Allow or deny.
    #[serde(default, skip_serializing_if = "is_allow")]
    pub access: Access,
    /// Who it matches.
    pub peer: InboundPeer,
    /// It also matches on HTTP headers (`X-Forwarded-Host`, `X-Azure-FDID`…), which
    /// Palisade never writes: a rule with headers is never a declared one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub headers: bool,
}

impl PartialEq for InboundRule {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for InboundRule {}
impl PartialOrd for InboundRule {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InboundRule {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.priority, self.peer.key(), self.access, self.headers).cmp(&(
            other.priority,
            other.peer.key(),
            other.access,
            other.headers,
        ))
    }
}

impl fmt::Display for InboundRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access = match self.access {
            Access::Allow => "allow",
            Access::Deny => "deny",
        };
        write!(f, "{access} {} at {}", self.peer, self.priority)?;
        if self.headers {
            f.write_str(" (with header filters)")?;
        }
        Ok(())
    }
}

/// Whom an access restriction matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum InboundPeer {
    /// Any address (`"ipAddress": "Any"`).
    Any,
    /// An address range, host bits cleared.
    Cidr(IpNet),
    /// A service tag (`AzureFrontDoor.Backend`, `AzureCloud`).
    ServiceTag(String),
    /// A subnet, by ARM id (`vnetSubnetResourceId`, traffic through a service endpoint).
    Subnet(String),
    /// What could not be read, as the cloud sent it. Guardrails take it for the world:
    /// fail closed.
    Unreadable(String),
}

impl InboundPeer {
    /// What identifies it: ARM ids and service tag names are case-insensitive.
    fn key(&self) -> (u8, std::borrow::Cow<'_, str>) {
        use std::borrow::Cow;
        match self {
            InboundPeer::Any => (0, Cow::Borrowed("")),
            InboundPeer::Cidr(n) => (1, Cow::Owned(n.to_string())),
            InboundPeer::ServiceTag(t) => (2, Cow::Owned(t.to_ascii_lowercase())),
            InboundPeer::Subnet(s) => (3, Cow::Owned(s.to_ascii_lowercase())),
            InboundPeer::Unreadable(r) => (4, Cow::Borrowed(r.as_str())),
        }
    }
}

impl fmt::Display for InboundPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InboundPeer::Any => f.write_str("any address"),
            InboundPeer::Cidr(n) => write!(f, "{n}"),
            InboundPeer::ServiceTag(t) => write!(f, "service-tag {t}"),
            InboundPeer::Subnet(s) => write!(f, "subnet {s}"),
            InboundPeer::Unreadable(raw) => write!(f, "unreadable {raw:?}"),
        }
    }
}

/// Where a function runs: its subnets and security groups.
///
/// On Azure a function app has one integration subnet and no groups of its own (the NSG
/// belongs to the subnet).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Network the subnets belong to (derived from the subnets, never trusted from Lambda).
    pub network: String,
    /// Subnet ids, sorted.
    pub subnets: Vec<String>,
    /// Security groups, sorted.
    #[serde(default)]
    pub groups: Vec<GroupRef>,
    /// Azure: all outbound traffic goes through the VNet (route-all:
    /// `vnetRouteAllEnabled`), not only RFC 1918 traffic — without it egress rules do not
    /// apply to internet-bound traffic. Always `false` on AWS, where a function in a VPC
    /// sends everything through it anyway.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub route_all: bool,
}

impl Placement {
    /// Sort and de-duplicate, so that equal placements compare equal.
    pub fn normalised(mut self) -> Self {
        self.subnets.sort();
        self.subnets.dedup();
        self.groups.sort();
        self.groups.dedup();
        self
    }
}

/// A reference to a security group / NSG.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum GroupRef {
    /// A Palisade-managed group, by owner key (policy name or endpoint key). Providers
    /// resolve it through the ownership tags; it exists before the group's cloud id does.
    Managed(String),
    /// A group Palisade does not own, by cloud id.
    Id(String),
}

impl fmt::Display for GroupRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupRef::Managed(owner) => write!(f, "managed:{owner}"),
            GroupRef::Id(id) => f.write_str(id),
        }
    }
}

/// A security group (AWS) or network security group (Azure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecurityGroup {
    /// `sg-…` or the NSG's ARM id.
    pub id: String,
    /// Group name.
    pub name: String,
    /// Network (VPC id); empty for Azure NSGs, which are not bound to a VNet.
    #[serde(default)]
    pub network: String,
    /// Tags, including the ownership tags on managed groups.
    #[serde(default)]
    pub tags: Tags,
    /// Rules as atomic tuples.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Azure's default rules of an NSG (`AllowVnetInBound` … `DenyAllOutBound`, 65000
    /// and up): they cannot be changed, are never planned, and count when guardrails
    /// judge what the NSG lets through.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_rules: Vec<Rule>,
    /// What uses the group besides functions, when read: network interfaces of
    /// instances, databases and load balancers (AWS; read only for groups a policy is
    /// about to take over, see [`Ownership::candidates`]), subnets and NICs the NSG is
    /// associated with (Azure). `None`: not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached: Option<Vec<String>>,
}

impl SecurityGroup {
    /// The owner key if Palisade manages this group, `None` otherwise.
    pub fn owner(&self) -> Option<&str> {
        owner_of(&self.tags)
    }
}

/// The owner key from a resource's tags, if Palisade manages it.
pub fn owner_of(tags: &Tags) -> Option<&str> {
    match tags.get(TAG_MANAGED_BY) {
        Some(v) if v == MANAGED_BY_VALUE => tags.get(TAG_OWNER).map(String::as_str),
        _ => None,
    }
}

/// The ownership tags Palisade puts on what it creates (without the target and
/// installation stamp; see [`Ownership::tags`]).
pub fn ownership_tags(owner: &str) -> Tags {
    Tags::from([
        (TAG_MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        (TAG_OWNER.to_string(), owner.to_string()),
    ])
}

/// What kind of resource an ownership record entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OwnedKind {
    /// A security group (AWS) or NSG (Azure).
    Group,
    /// A VPC endpoint (AWS) or private endpoint (Azure).
    Endpoint,
}

impl OwnedKind {
    /// `group` or `endpoint`, as the record and the resource names spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            OwnedKind::Group => "group",
            OwnedKind::Endpoint => "endpoint",
        }
    }
}

impl fmt::Display for OwnedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// On what a provider decides that a resource is Palisade's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OwnershipBasis {
    /// Tags alone (a read-only plan without the record, unit tests): *unverified*.
    #[default]
    Tags,
    /// The ownership record: a resource is Palisade's when its id is recorded; tags
    /// without a record entry are a claim, never obeyed.
    Record,
}

/// What Palisade knows it owns in one target; handed to `observe`, which normalises
/// every resource's ownership tags through [`Ownership::vet`] before anything else
/// reads them ("normalise, then diff": the planner sees recorded resources as managed
/// whatever their tags say, and claimed ones as not managed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// Decision basis.
    pub basis: OwnershipBasis,
    /// The target's name (`palisade:target`); empty: not checked.
    pub target: String,
    /// This installation's id (`palisade:installation`); empty: not checked.
    pub installation: String,
    /// Recorded resources: (kind, lower-cased cloud id) → owner key.
    recorded: BTreeMap<(OwnedKind, String), String>,
    /// Bootstrap: adopt what carries Palisade's tags and no other target or installation
    /// (an estate converged by a version without the record). Set once per target.
    pub adopt_tagged: bool,
    /// Creations that were started but whose ids were never recorded (a crash between
    /// the cloud's answer and the record): a resource with this owner and exactly this
    /// target's and installation's stamp is recovered.
    pending: BTreeSet<(OwnedKind, String)>,
    /// Groups that policies name as their managed group (`managedGroup`), by lower-cased
    /// id: taken over in place by [`Ownership::apply_declared`].
    declared: BTreeMap<String, Declared>,
}

/// A group a policy names as its managed group (`managedGroup: { id }`), in the spirit
/// of Crossplane's external name: taken over in place (enforce) or compared (audit),
/// never re-created, and only when nothing the policy does not govern uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    /// The policy.
    pub owner: String,
    /// Enforce mode: taken over (recorded, tagged). Audit: compared only.
    pub enforce: bool,
    /// The policy's function selector (names): functions outside it that use the group
    /// make it shared.
    pub names: Vec<String>,
    /// The policy's function selector (tags).
    pub tags: Tags,
    /// Azure: the integration subnet (VNet name, subnet name), the one association the
    /// NSG may have.
    pub subnet: Option<(String, String)>,
}

/// What [`Ownership::vet`] decided about one resource that carries or needs ownership tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OwnershipVerdict {
    /// Recorded, but its tags are missing or changed: recognised by id, tags to restore.
    TagsChanged,
    /// Adopted once by the bootstrap of an estate that predates the record.
    Adopted,
    /// A creation of this installation whose id was never recorded (crash), recovered.
    Recovered,
    /// Carries Palisade's tags but is not in the record: never written.
    Claimed,
    /// Carries another target's or installation's stamp: not this target's, left alone.
    Foreign,
    /// Named by an enforce-mode policy as its managed group (`managedGroup`) and taken
    /// over in place: recorded and tagged, no new group.
    Taken,
    /// Named by an audit-mode policy as its managed group: compared as that policy's
    /// group, never recorded, tagged or written.
    Compared,
    /// Named by a policy as its managed group but not taken over (shared with what the
    /// policy does not govern, another owner's, unreadable users): left as it is; see
    /// [`OwnershipNote::detail`].
    Refused,
}

/// One resource whose ownership was not simply "recorded and tagged as recorded".
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnershipNote {
    /// Kind.
    pub kind: OwnedKind,
    /// Cloud id.
    pub id: String,
    /// Owner key: the recorded one, or the one the tags claim.
    pub owner: String,
    /// What was decided.
    pub verdict: OwnershipVerdict,
    /// The `palisade:*` tags as found.
    #[serde(default)]
    pub found: Tags,
    /// Why, when the verdict needs a reason ([`OwnershipVerdict::Refused`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl OwnershipNote {
    /// Whether the resource is Palisade's after this decision.
    pub fn owned(&self) -> bool {
        matches!(
            self.verdict,
            OwnershipVerdict::TagsChanged
                | OwnershipVerdict::Adopted
                | OwnershipVerdict::Recovered
                | OwnershipVerdict::Taken
        )
    }
}

fn palisade_tags(tags: &Tags) -> Tags {
    tags.iter()
        .filter(|(k, _)| k.starts_with("palisade:"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl Ownership {
    /// Ownership on tags alone, unverified, for `target` (empty: any).
    pub fn unverified(target: &str) -> Ownership {
        Ownership {
            target: target.to_string(),
            ..Ownership::default()
        }
    }

    /// Ownership from the record of `installation` for `target`.
    pub fn recorded(target: &str, installation: &str) -> Ownership {
        Ownership {
            basis: OwnershipBasis::Record,
            target: target.to_string(),
            installation: installation.to_string(),
            ..Ownership::default()
        }
    }

    /// Record `id` (of `kind`) as owned by `owner`.
    pub fn insert(&mut self, kind: OwnedKind, id: &str, owner: &str) {
        self.recorded
            .insert((kind, id.to_ascii_lowercase()), owner.to_string());
    }

    /// Mark a creation of `owner`'s `kind` as started and not recorded.
    pub fn insert_pending(&mut self, kind: OwnedKind, owner: &str) {
        self.pending.insert((kind, owner.to_string()));
    }

    /// The recorded owner of `id`, if any.
    pub fn owner_of(&self, kind: OwnedKind, id: &str) -> Option<&str> {
        self.recorded
            .get(&(kind, id.to_ascii_lowercase()))
            .map(String::as_str)
    }

    /// Number of recorded resources.
    pub fn len(&self) -> usize {
        self.recorded.len()
    }

    /// Whether nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.recorded.is_empty()
    }

    /// Every recorded resource: (kind, lower-cased id, owner).
    pub fn entries(&self) -> impl Iterator<Item = (OwnedKind, &str, &str)> {
        self.recorded
            .iter()
            .map(|((k, id), o)| (*k, id.as_str(), o.as_str()))
    }

    /// The full ownership tags of a resource owned by `owner` in this target.
    pub fn tags(&self, owner: &str) -> Tags {
        let mut t = ownership_tags(owner);
        if !self.target.is_empty() {
            t.insert(TAG_TARGET.into(), self.target.clone());
        }
        if !self.installation.is_empty() {
            t.insert(TAG_INSTALLATION.into(), self.installation.clone());
        }
        t
    }

    /// [`Ownership::vet`] every group and endpoint of `inv`, keep the notes in
    /// [`Inventory::ownership`] and the creation stamp in [`Inventory::stamp`].
    /// Idempotent: vetting a vetted inventory changes nothing and notes nothing new.
    pub fn vet_inventory(&self, inv: &mut Inventory) {
        for g in &mut inv.groups {
            let note = self.vet(OwnedKind::Group, &g.id, &mut g.tags);
            inv.ownership.extend(note);
        }
        self.vet_endpoints(inv);
    }

    /// The rest of [`Ownership::vet_inventory`] for a provider that vetted the groups
    /// itself (before translating rule references) and put their notes in
    /// [`Inventory::ownership`]: the endpoints, the stamp, the notes sorted.
    pub fn vet_endpoints(&self, inv: &mut Inventory) {
        for e in &mut inv.endpoints {
            let note = self.vet(OwnedKind::Endpoint, &e.id, &mut e.tags);
            inv.ownership.extend(note);
        }
        inv.ownership.sort();
        inv.stamp = self.tags("");
        inv.stamp.remove(TAG_OWNER);
    }

    /// Name `id` as the managed group of `d.owner` (see [`Declared`]).
    pub fn declare(&mut self, id: &str, d: Declared) {
        self.declared.insert(id.to_ascii_lowercase(), d);
    }

    /// Groups about to be taken over (declared by an enforce-mode policy, not yet
    /// recorded): the ones whose other users ([`SecurityGroup::attached`]) a provider
    /// must read before [`Ownership::apply_declared`]. Lower-cased ids.
    pub fn candidates(&self) -> Vec<&str> {
        self.declared
            .iter()
            .filter(|(id, d)| d.enforce && self.owner_of(OwnedKind::Group, id).is_none())
            .map(|(id, _)| id.as_str())
            .collect()
    }

    /// Take over, in the observed `inv`, the groups policies name as their managed group
    /// and that are not recorded yet: each becomes its policy's group (tags rewritten
    /// as for a recorded group, every reference by id renamed to
    /// [`GroupRef::Managed`]) with a [`OwnershipVerdict::Taken`] note (enforce; the
    /// record and the tags follow from the note) or [`OwnershipVerdict::Compared`]
    /// (audit). A group that the policy cannot have alone is left as it is with a
    /// [`OwnershipVerdict::Refused`] note saying why: another owner's, another
    /// installation's, used by functions the policy does not select, or (enforce)
    /// attached to anything else or with unread users. Providers call this at the end
    /// of `observe`, after [`Ownership::vet`]; it is pure, so a plan can be repeated on
    /// one observation.
    pub fn apply_declared(&self, inv: &mut Inventory) {
        if self.declared.is_empty() {
            return;
        }
        let mut renamed: HashMap<String, String> = HashMap::new();
        for (lid, d) in &self.declared {
            let Some(gi) = inv
                .groups
                .iter()
                .position(|g| g.id.eq_ignore_ascii_case(lid))
            else {
                continue;
            };
            let id = inv.groups[gi].id.clone();
            if self.owner_of(OwnedKind::Group, &id).is_some() {
                // Recorded: vetted as any recorded group (another owner's recorded group
                // is a validation matter: the record wins, the policy gets nothing).
                continue;
            }
            let found = inv
                .ownership
                .iter()
                .find(|n| n.kind == OwnedKind::Group && n.id.eq_ignore_ascii_case(&id))
                .map(|n| n.found.clone())
                .unwrap_or_else(|| palisade_tags(&inv.groups[gi].tags));
            let refusal = self.refusal(inv, gi, d, &found);
            inv.ownership
                .retain(|n| !(n.kind == OwnedKind::Group && n.id.eq_ignore_ascii_case(&id)));
            let verdict = match (&refusal, d.enforce) {
                (Some(_), _) => OwnershipVerdict::Refused,
                (None, true) => OwnershipVerdict::Taken,
                (None, false) => OwnershipVerdict::Compared,
            };
            inv.ownership.push(OwnershipNote {
                kind: OwnedKind::Group,
                id: id.clone(),
                owner: d.owner.clone(),
                verdict,
                found,
                detail: refusal.clone(),
            });
            if refusal.is_some() {
                continue;
            }
            let tags = &mut inv.groups[gi].tags;
            tags.retain(|k, _| !k.starts_with("palisade:"));
            tags.extend(if d.enforce {
                self.tags(&d.owner)
            } else {
                ownership_tags(&d.owner)
            });
            renamed.insert(id.to_ascii_lowercase(), d.owner.clone());
        }
        inv.ownership.sort();
        if renamed.is_empty() {
            return;
        }
        let rename = |g: &mut GroupRef| {
            if let GroupRef::Id(id) = g
                && let Some(owner) = renamed.get(&id.to_ascii_lowercase())
            {
                *g = GroupRef::Managed(owner.clone());
            }
        };
        for f in &mut inv.functions {
            if let Some(p) = f.placement.take() {
                let mut p = p;
                p.groups.iter_mut().for_each(rename);
                f.placement = Some(p.normalised());
            }
        }
        for g in &mut inv.groups {
            for r in g.rules.iter_mut().chain(g.default_rules.iter_mut()) {
                if let Peer::Group(gr) = &mut r.peer {
                    rename(gr);
                }
            }
        }
        for e in &mut inv.endpoints {
            e.groups.iter_mut().for_each(rename);
            e.groups.sort();
        }
        for s in &mut inv.subnets {
            if let Some(g) = &mut s.group {
                rename(g);
            }
        }
    }

    /// Why the declared group `inv.groups[gi]` cannot be `d.owner`'s, if it cannot.
    fn refusal(&self, inv: &Inventory, gi: usize, d: &Declared, found: &Tags) -> Option<String> {
        let g = &inv.groups[gi];
        if self.foreign(found) {
            return Some(format!(
                "it carries another target's or installation's ownership tags ({})",
                found
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some((other, _, _)) = self
            .entries()
            .find(|(k, _, o)| *k == OwnedKind::Group && *o == d.owner)
        {
            return Some(format!(
                "policy {:?} already has its managed group {other}",
                d.owner
            ));
        }
        // A group this observation already made a policy's (bootstrap, recovery): the
        // policy has a group, or the declared one is another owner's.
        if let Some(other) = inv
            .groups
            .iter()
            .find(|o| o.owner() == Some(d.owner.as_str()) && !o.id.eq_ignore_ascii_case(&g.id))
        {
            return Some(format!(
                "policy {:?} already has its managed group {}",
                d.owner, other.id
            ));
        }
        if let Some(owner) = g.owner().filter(|o| *o != d.owner) {
            return Some(format!("it is the managed group of {owner:?}"));
        }
        let selected = |f: &Function| {
            (d.names.is_empty() || d.names.contains(&f.name))
                && d.tags.iter().all(|(k, v)| f.tags.get(k) == Some(v))
        };
        // Azure: an NSG is held through the subnets it is associated with.
        let on_subnet = |sid: &str| {
            g.attached
                .iter()
                .flatten()
                .any(|a| a.eq_ignore_ascii_case(sid)) || inv.subnets.iter().any(|s| {
                s.id.eq_ignore_ascii_case(sid)
                    && matches!(&s.group, Some(GroupRef::Id(x)) if x.eq_ignore_ascii_case(&g.id))
            })
        };
        let outside: Vec<&str> = inv
            .functions
            .iter()
            .filter(|f| {
                f.placement.as_ref().is_some_and(|p| {
                    p.groups.iter().any(|r| match r {
                        GroupRef::Id(x) => x.eq_ignore_ascii_case(&g.id),
                        GroupRef::Managed(o) => g.owner() == Some(o.as_str()),
                    }) || p.subnets.iter().any(|s| on_subnet(s))
                })
            })
            .filter(|f| !selected(f))
            .map(|f| f.name.as_str())
            .collect();
        if !outside.is_empty() {
            return Some(format!(
                "functions the policy does not select use it too ({})",
                some_of(&outside)
            ));
        }
        let allowed: Vec<&str> = d
            .subnet
            .iter()
            .flat_map(|(vnet, subnet)| {
                inv.subnets.iter().filter(move |s| {
                    s.name.eq_ignore_ascii_case(subnet)
                        && inv.networks.iter().any(|n| {
                            n.id.eq_ignore_ascii_case(&s.network)
                                && n.name.eq_ignore_ascii_case(vnet)
                        })
                })
            })
            .map(|s| s.id.as_str())
            .collect();
        match &g.attached {
            None if d.enforce => {
                Some("what else uses it could not be read, so it is not taken over".to_string())
            }
            None => None,
            Some(users) => {
                let others: Vec<&str> = users
                    .iter()
                    .map(String::as_str)
                    .filter(|u| !allowed.iter().any(|a| a.eq_ignore_ascii_case(u)))
                    .collect();
                (!others.is_empty()).then(|| {
                    format!(
                        "other resources use it too ({}); a group Palisade owns is changed for every member",
                some_of(&others)
                    )
                })
            }
        }
    }

    fn foreign(&self, tags: &Tags) -> bool {
        let other =
            |key: &str, ours: &str| !ours.is_empty() && tags.get(key).is_some_and(|v| v != ours);
        other(TAG_TARGET, &self.target) || other(TAG_INSTALLATION, &self.installation)
    }

    /// Decide whether the resource `id` of `kind` with `tags` is Palisade's, and rewrite
    /// `tags` so that [`owner_of`] answers accordingly: a recorded resource gets its full
    /// ownership tags (whatever was found), anything else that claims ownership without
    /// being owned loses `palisade:managed-by`. Returns a note for everything that is
    /// not plainly "recorded and tagged as recorded" (or, on [`OwnershipBasis::Tags`],
    /// "tagged").
    pub fn vet(&self, kind: OwnedKind, id: &str, tags: &mut Tags) -> Option<OwnershipNote> {
        let found = palisade_tags(tags);
        let note = |owner: &str, verdict| OwnershipNote {
            kind,
            id: id.to_string(),
            owner: owner.to_string(),
            verdict,
            found: found.clone(),
            detail: None,
        };
        if let Some(owner) = self.owner_of(kind, id) {
            let want = self.tags(owner);
            let same = want.iter().all(|(k, v)| tags.get(k) == Some(v))
                && found.keys().all(|k| want.contains_key(k));
            let owner = owner.to_string();
            tags.retain(|k, _| !k.starts_with("palisade:"));
            tags.extend(want);
            return (!same).then(|| note(&owner, OwnershipVerdict::TagsChanged));
        }
        let claimed = owner_of(tags)?.to_string();
        let verdict = if self.foreign(tags) {
            OwnershipVerdict::Foreign
        } else {
            match self.basis {
                OwnershipBasis::Tags => return None,
                OwnershipBasis::Record if self.adopt_tagged => OwnershipVerdict::Adopted,
                OwnershipBasis::Record
                    if self.pending.contains(&(kind, claimed.clone()))
                        && tags.get(TAG_TARGET) == Some(&self.target)
                        && tags.get(TAG_INSTALLATION) == Some(&self.installation) =>
                {
                    OwnershipVerdict::Recovered
                }
                OwnershipBasis::Record => OwnershipVerdict::Claimed,
            }
        };
        let n = note(&claimed, verdict);
        if n.owned() {
            tags.retain(|k, _| !k.starts_with("palisade:"));
            tags.extend(self.tags(&claimed));
        } else {
            tags.remove(TAG_MANAGED_BY);
        }
        Some(n)
    }
}

/// At most five of `items`, comma-separated, and how many more: for findings that name
/// what they are about without growing with the estate.
pub fn some_of(items: &[&str]) -> String {
    let mut s = items.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    if items.len() > 5 {
        s.push_str(&format!(" and {} more", items.len() - 5));
    }
    s
}

/// Traffic direction, seen from the group's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Towards the members.
    Ingress,
    /// From the members.
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// IP protocol of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// ICMP (IPv4); which types is [`Ports::icmp`].
    Icmp,
    /// ICMPv6 (IP protocol 58); which types is [`Ports::icmp`].
    Icmpv6,
    /// Every protocol (AWS `-1`, Azure `*`).
    All,
    /// Any other IP protocol by number (ESP is 50), as AWS allows. Policies cannot ask
    /// for these; providers observe them so that they are seen and revoked.
    Number(u8),
}

impl Protocol {
    /// ICMP or ICMPv6: a rule of it has types and codes, not ports.
    pub fn is_icmp(self) -> bool {
        matches!(self, Protocol::Icmp | Protocol::Icmpv6)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Protocol::Tcp => f.write_str("tcp"),
            Protocol::Udp => f.write_str("udp"),
            Protocol::Icmp => f.write_str("icmp"),
            Protocol::Icmpv6 => f.write_str("icmpv6"),
            Protocol::All => f.write_str("all"),
            Protocol::Number(n) => write!(f, "proto-{n}"),
        }
    }
}

/// An inclusive port range. Absent for `icmp` and `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    /// First port.
    pub from: u16,
    /// Last port (inclusive).
    pub to: u16,
}

impl PortRange {
    /// Every port: 0–65535.
    pub const ALL: PortRange = PortRange { from: 0, to: 65535 };

    /// Whether the two ranges share a port.
    pub fn overlaps(&self, other: &PortRange) -> bool {
        self.from <= other.to && other.from <= self.to
    }

    /// Whether `other` lies entirely within `self`.
    pub fn contains(&self, other: &PortRange) -> bool {
        self.from <= other.from && other.to <= self.to
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from == self.to {
            write!(f, "{}", self.from)
        } else {
            write!(f, "{}-{}", self.from, self.to)
        }
    }
}

/// One ICMP (or ICMPv6) type, with one code or every code: `icmp/8`, `icmp/3/4`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IcmpType {
    /// The type (0–255).
    #[serde(rename = "type")]
    pub kind: u8,
    /// The code (0–255); `None`: every code of the type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
}

impl IcmpType {
    /// Whether some packet matches both.
    fn overlaps(&self, other: &IcmpType) -> bool {
        self.kind == other.kind
            && (self.code.is_none() || other.code.is_none() || self.code == other.code)
    }

    /// Whether every packet `other` matches, `self` matches.
    fn contains(&self, other: &IcmpType) -> bool {
        self.kind == other.kind && (self.code.is_none() || self.code == other.code)
    }
}

impl fmt::Display for IcmpType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(c) => write!(f, "{}/{c}", self.kind),
            None => write!(f, "{}", self.kind),
        }
    }
}

/// Protocol plus what of it: a port range (`tcp/5432`) or an ICMP type (`icmp/3/4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ports {
    /// Protocol.
    pub protocol: Protocol,
    /// Port range of tcp/udp; `None` for the other protocols (and means "every port"
    /// for tcp/udp only if written so by a provider; policies always give a range).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
    /// ICMP / ICMPv6 type (and code); `None`: every type. Always `None` for other
    /// protocols.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<IcmpType>,
}

impl Ports {
    /// Every protocol, every port.
    pub const ALL: Ports = Ports {
        protocol: Protocol::All,
        range: None,
        icmp: None,
    };

    /// `protocol` with every port (or type).
    pub const fn any(protocol: Protocol) -> Ports {
        Ports {
            protocol,
            range: None,
            icmp: None,
        }
    }

    /// tcp/udp `from`–`to`.
    pub const fn range(protocol: Protocol, from: u16, to: u16) -> Ports {
        Ports {
            protocol,
            range: Some(PortRange { from, to }),
            icmp: None,
        }
    }

    /// The port range an all-protocols entry is limited to (Azure `*` with ports: only
    /// TCP and UDP traffic on those ports), `None` when it is every packet.
    fn all_limited(&self) -> Option<PortRange> {
        match self.protocol {
            Protocol::All => self.range.filter(|r| *r != PortRange::ALL),
            _ => None,
        }
    }

    /// Whether some traffic matches both.
    pub fn overlaps(&self, other: &Ports) -> bool {
        if let Some(r) = self.all_limited() {
            return match other.protocol {
                Protocol::Tcp | Protocol::Udp | Protocol::All => {
                    r.overlaps(&other.range.unwrap_or(PortRange::ALL))
                }
                _ => false,
            };
        }
        if other.all_limited().is_some() {
            return other.overlaps(self);
        }
        match (self.protocol, other.protocol) {
            (Protocol::All, _) | (_, Protocol::All) => true,
            (a, b) if a != b => false,
            (p, _) if p.is_icmp() => match (self.icmp, other.icmp) {
                (Some(a), Some(b)) => a.overlaps(&b),
                _ => true,
            },
            _ => {
                let a = self.range.unwrap_or(PortRange::ALL);
                let b = other.range.unwrap_or(PortRange::ALL);
                a.overlaps(&b)
            }
        }
    }

    /// Whether every packet matched by `other` is matched by `self`.
    pub fn contains(&self, other: &Ports) -> bool {
        if let Some(r) = self.all_limited() {
            return match other.protocol {
                Protocol::Tcp | Protocol::Udp => r.contains(&other.range.unwrap_or(PortRange::ALL)),
                Protocol::All => other.all_limited().is_some_and(|o| r.contains(&o)),
                _ => false,
            };
        }
        if other.all_limited().is_some() && self.protocol != Protocol::All {
            // TCP and UDP on those ports: no single other protocol holds both.
            return false;
        }
        match (self.protocol, other.protocol) {
            (Protocol::All, _) => true,
            (_, Protocol::All) => false,
            (a, b) if a != b => false,
            (p, _) if p.is_icmp() => match (self.icmp, other.icmp) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(a), Some(b)) => a.contains(&b),
            },
            _ => {
                let a = self.range.unwrap_or(PortRange::ALL);
                let b = other.range.unwrap_or(PortRange::ALL);
                a.contains(&b)
            }
        }
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.range, self.icmp) {
            (Some(r), _) => write!(f, "{}/{}", self.protocol, r),
            (None, Some(t)) => write!(f, "{}/{}", self.protocol, t),
            (None, None) => write!(f, "{}", self.protocol),
        }
    }
}

/// The other end of a rule: exactly one peer per atomic rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Peer {
    /// An address range in canonical form (host bits cleared).
    Cidr(IpNet),
    /// A security group.
    Group(GroupRef),
    /// An AWS managed or customer prefix list, by id (`pl-…`).
    PrefixList(String),
    /// An Azure service tag (`Sql.WestEurope`, `Internet`, `VirtualNetwork`).
    ServiceTag(String),
    /// Azure `*`: any address.
    Any,
    /// An Azure application security group, by ARM id (observed only: function apps
    /// cannot join one, so policies never name them).
    Asg(String),
}

impl Peer {
    /// A CIDR peer with host bits cleared, so `10.0.0.5/16` and `10.0.0.0/16` are equal.
    pub fn cidr(net: IpNet) -> Peer {
        Peer::Cidr(net.trunc())
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Cidr(n) => write!(f, "{n}"),
            Peer::Group(g) => write!(f, "group {g}"),
            Peer::PrefixList(p) => write!(f, "prefix-list {p}"),
            Peer::ServiceTag(t) => write!(f, "service-tag {t}"),
            Peer::Any => f.write_str("*"),
            Peer::Asg(id) => write!(f, "asg {id}"),
        }
    }
}

/// Allow or deny (deny exists on Azure only).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Traffic is allowed.
    #[default]
    Allow,
    /// Traffic is denied (Azure NSGs only).
    Deny,
}

/// One atomic rule: one direction, one protocol and port range, one peer.
///
/// Equality and ordering ignore `id` and `description`: the id is the cloud's handle on an
/// observed rule, the description is for people. Two rules that let the same traffic
/// through are the same rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Direction.
    pub direction: Direction,
    /// Protocol and ports.
    pub ports: Ports,
    /// The other end.
    pub peer: Peer,
    /// Allow (AWS: always) or deny.
    #[serde(default, skip_serializing_if = "is_allow")]
    pub access: Access,
    /// Azure NSG priority; `None` on AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u16>,
    /// Human description (AWS rule description / Azure rule description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The cloud's id of an observed rule (`sgr-…`, Azure rule name). `None` when desired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Where the group a [`Peer::Group`] names lives, as the cloud reports it (another
    /// account, across a VPC peering connection). Not part of the rule's identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<GroupReference>,
    /// What an observed NSG rule says beyond the tuple: its priority when it is not one
    /// Palisade could have written (several prefixes or ports in one rule), and limits
    /// on the near side (destination prefixes inbound, source outbound) or on source
    /// ports. Part of the rule's identity: a narrowed rule is not the declared one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub narrowing: Option<Narrowing>,
}

/// See [`Rule::narrowing`].
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Narrowing {
    /// The NSG priority, when [`Rule::priority`] is not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u16>,
    /// The near side's prefixes, service tags or ASGs, when not `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub near: Vec<String>,
    /// Source port ranges, when not `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ports: Vec<String>,
}

impl Narrowing {
    /// Whether the rule matches every packet its tuple names (nothing narrows it).
    pub fn is_full(&self) -> bool {
        self.near.is_empty() && self.source_ports.is_empty()
    }
}

/// Where a referenced security group lives, as AWS reports it on a rule
/// (`ReferencedGroupInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupReference {
    /// The account that owns the group (`UserId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The group's VPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<String>,
    /// The VPC peering connection the reference crosses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peering_connection: Option<String>,
    /// That connection's status (`active`, `deleted`, `failed`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peering_status: Option<String>,
}

impl GroupReference {
    /// A reference across a peering connection that is not active: it admits nothing
    /// and points at a group that may be gone or reused (AWS calls it stale).
    pub fn is_stale(&self) -> bool {
        self.peering_status
            .as_deref()
            .is_some_and(|s| !s.eq_ignore_ascii_case("active"))
    }
}

fn is_allow(a: &Access) -> bool {
    *a == Access::Allow
}

impl Rule {
    /// An allow rule with no priority, description or id.
    pub fn allow(direction: Direction, ports: Ports, peer: Peer) -> Rule {
        Rule {
            direction,
            ports,
            peer,
            access: Access::Allow,
            priority: None,
            description: None,
            id: None,
            reference: None,
            narrowing: None,
        }
    }

    /// The AWS default egress rule every new security group gets: all traffic to 0.0.0.0/0.
    pub fn aws_default_egress() -> Rule {
        Rule::allow(
            Direction::Egress,
            Ports::ALL,
            Peer::Cidr(IpNet::V4(ipnet::Ipv4Net::default())),
        )
    }

    fn key(
        &self,
    ) -> (
        Direction,
        Access,
        Option<u16>,
        Ports,
        &Peer,
        Option<&Narrowing>,
    ) {
        (
            self.direction,
            self.access,
            self.priority,
            self.ports,
            &self.peer,
            self.narrowing.as_ref(),
        )
    }

    /// The NSG priority it is evaluated at (Azure), whether or not Palisade could have
    /// written it.
    pub fn effective_priority(&self) -> Option<u16> {
        self.priority
            .or_else(|| self.narrowing.as_ref().and_then(|n| n.priority))
    }

    /// Whether it matches every packet of its tuple (no near-side or source-port limit).
    pub fn is_full(&self) -> bool {
        self.narrowing.as_ref().is_none_or(Narrowing::is_full)
    }
}

impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Rule {}
impl PartialOrd for Rule {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Rule {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}
impl std::hash::Hash for Rule {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verb = match self.access {
            Access::Allow => "allow",
            Access::Deny => "deny",
        };
        let dir = match self.direction {
            Direction::Ingress => "from",
            Direction::Egress => "to",
        };
        write!(
            f,
            "{} {verb} {} {dir} {}",
            self.direction, self.ports, self.peer
        )?;
        if let Some(p) = self.priority {
            write!(f, " priority {p}")?;
        }
        Ok(())
    }
}

/// Kind of private endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// AWS interface VPC endpoint (ENIs in subnets, security groups).
    Interface,
    /// AWS gateway VPC endpoint (route tables, prefix list).
    Gateway,
    /// Azure private endpoint (a NIC in a subnet connected to a resource).
    Private,
}

/// A VPC endpoint or Azure private endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// `vpce-…` or the private endpoint's ARM id.
    pub id: String,
    /// AWS: full service name (`com.amazonaws.us-east-1.s3`); Azure: the connected
    /// resource id followed by `#` and the group id (`…/vaults/kv#vault`).
    pub service: String,
    /// Interface, gateway or private.
    pub kind: EndpointKind,
    /// Network (VPC id / VNet id).
    pub network: String,
    /// Subnets the endpoint has interfaces in (interface and private), sorted.
    #[serde(default)]
    pub subnets: Vec<String>,
    /// Security groups of an interface endpoint, sorted.
    #[serde(default)]
    pub groups: Vec<GroupRef>,
    /// Route tables of a gateway endpoint, sorted.
    #[serde(default)]
    pub route_tables: Vec<String>,
    /// Private DNS enabled (interface endpoints).
    #[serde(default)]
    pub private_dns: bool,
    /// Tags, including ownership tags when managed.
    #[serde(default)]
    pub tags: Tags,
    /// Azure: the state of the private endpoint's connection as the target resource's
    /// owner decided it (`Approved`, `Pending`, `Rejected`, `Disconnected`); traffic
    /// flows only when `Approved`. `None` on AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
}

impl Endpoint {
    /// Whether traffic can flow: no connection state (AWS) or an approved connection.
    pub fn connected(&self) -> bool {
        self.connection
            .as_deref()
            .is_none_or(|c| c.eq_ignore_ascii_case("Approved"))
    }

    /// The owner key if Palisade manages this endpoint.
    pub fn owner(&self) -> Option<&str> {
        owner_of(&self.tags)
    }
}

/// A prefix list, e.g. the one AWS publishes for a gateway endpoint service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrefixList {
    /// `pl-…`.
    pub id: String,
    /// `com.amazonaws.us-east-1.s3`.
    pub name: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(from: u16, to: u16) -> Ports {
        Ports {
            protocol: Protocol::Tcp,
            range: Some(PortRange { from, to }),
            icmp: None,
        }
    }

    #[test]
    fn rule_equality_ignores_id_and_description() {
        let mut a = Rule::allow(Direction::Ingress, tcp(443, 443), Peer::Any);
        let mut b = a.clone();
        a.id = Some("sgr-1".into());
        b.description = Some("hand-written".into());
        assert_eq!(a, b);
    }

    #[test]
    fn cidr_peer_is_canonical() {
        let p = Peer::cidr("10.1.2.3/16".parse().unwrap());
        assert_eq!(p, Peer::Cidr("10.1.0.0/16".parse().unwrap()));
    }

    #[test]
    fn ports_overlap_and_containment() {
        let cases = [
            (tcp(0, 65535), tcp(22, 22), true, true),
            (tcp(22, 22), tcp(0, 65535), true, false),
            (tcp(80, 90), tcp(91, 100), false, false),
            (Ports::ALL, tcp(443, 443), true, true),
            (tcp(443, 443), Ports::ALL, true, false),
            (
                Ports {
                    protocol: Protocol::Udp,
                    range: Some(PortRange { from: 53, to: 53 }),
                    icmp: None,
                },
                tcp(53, 53),
                false,
                false,
            ),
        ];
        for (a, b, overlaps, contains) in cases {
            assert_eq!(a.overlaps(&b), overlaps, "{a} overlaps {b}");
            assert_eq!(a.contains(&b), contains, "{a} contains {b}");
        }
    }

    #[test]
    fn owner_needs_both_tags() {
        let mut tags = ownership_tags("payments");
        assert_eq!(owner_of(&tags), Some("payments"));
        tags.insert(TAG_MANAGED_BY.into(), "terraform".into());
        assert_eq!(owner_of(&tags), None);
    }

    #[test]
    fn inventory_json_round_trips() {
        let inv = Inventory {
            target: "prod".into(),
            groups: vec![SecurityGroup {
                id: "sg-1".into(),
                name: "palisade-a".into(),
                network: "vpc-1".into(),
                tags: ownership_tags("a"),
                rules: vec![Rule::aws_default_egress()],
                default_rules: Vec::new(),
                attached: None,
            }],
            ..Inventory::default()
        };
        let json = serde_json::to_string(&inv).unwrap();
        let back: Inventory = serde_json::from_str(&json).unwrap();
        assert_eq!(back, inv);
    }
}
