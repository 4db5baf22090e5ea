//! The Rust types of the language. They are the single source of truth: the loader
//! deserializes into them and `palisade schema` generates the JSON Schema from them.
//! Kept in one file (about 800 lines, most of it field docs that become the schema's
//! descriptions) so that the whole language reads in one place.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use ipnet::IpNet;
use palisade_providers::{PortRange, Ports, Protocol};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize};

use super::SourceLocation;

/// A value with the line and column it was written at (1-based; 0 when built in code).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// Line in the file.
    #[serde(skip)]
    pub line: u32,
    /// Column in the line.
    #[serde(skip)]
    pub column: u32,
}

impl<T> Located<T> {
    /// A value with no position (built in code, not read from a file).
    pub fn new(value: T) -> Self {
        Located {
            value,
            line: 0,
            column: 0,
        }
    }
}

impl<T> std::ops::Deref for Located<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = serde_saphyr::Spanned::<T>::deserialize(d)?;
        Ok(Located {
            value: s.value,
            line: u32::try_from(s.referenced.line()).unwrap_or(u32::MAX),
            column: u32::try_from(s.referenced.column()).unwrap_or(u32::MAX),
        })
    }
}

impl<T: JsonSchema> JsonSchema for Located<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// `metadata` of every document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Unique name among documents of the same kind: lower-case letters, digits and `-`.
    pub name: Located<String>,
    /// Free-form labels, for people and tooling.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

// ---------------------------------------------------------------- Target

/// `kind: Target`: a cloud scope that policies point at. Exactly one of `aws`, `azure`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// An AWS account and region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsTarget>,
    /// An Azure subscription and resource group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureTarget>,
}

/// `spec.aws` of a Target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AwsTarget {
    /// Region, e.g. `us-east-1`.
    pub region: String,
    /// The 12-digit account id; checked against the caller identity (mismatch = refuse).
    pub account_id: Located<String>,
    /// Role to assume before any call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub assume_role_arn: Option<String>,
}

/// `spec.azure` of a Target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AzureTarget {
    /// Subscription id (GUID).
    pub subscription_id: String,
    /// Resource group holding the VNets, NSGs and private endpoints.
    pub resource_group: String,
    /// Location of created resources, e.g. `westeurope`.
    pub location: String,
}

// ---------------------------------------------------------------- FunctionPolicy

/// `enforce` (default) or `audit` (observe and report, never write).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Differences are changed back.
    #[default]
    Enforce,
    /// Differences are reported as findings; nothing is written.
    Audit,
}

/// `kind: FunctionPolicy`: where selected functions run and what they may talk to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FunctionPolicySpec {
    /// Name of the `Target` these functions live in.
    pub target: Located<String>,
    /// `enforce` (default) or `audit`.
    #[serde(default)]
    pub mode: Mode,
    /// Which functions this policy governs.
    pub functions: Located<FunctionSelector>,
    /// Where they run.
    pub network: Located<NetworkSpec>,
    /// An existing security group (AWS) or NSG (Azure) to take over as this policy's
    /// managed group, in place: recorded and tagged, never re-created, no function
    /// moved. Absent: Palisade creates `palisade-NAME`. Only a group that nothing
    /// outside this policy uses is taken over; otherwise it is left as it is and a
    /// finding says why. `palisade adopt` writes this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_group: Option<Located<ManagedGroupSpec>>,
    /// Azure: whether the managed NSG ends each direction with a deny-all at priority
    /// 4096 (default `true`), so that only declared rules admit traffic. `false` leaves
    /// Azure's default rules in force (they admit the VNet, its peers and, outbound, the
    /// Internet): what an adopted NSG without a deny-all says. Not for AWS, where a
    /// security group admits only what its rules say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_deny: Option<Located<bool>>,
    /// Azure: `managed` (default): the function apps' own access restrictions (their
    /// front door) admit exactly what `ingress` declares on tcp/443 and tcp/80.
    /// `unmanaged`: they are left as they are (observed and judged by guardrails, never
    /// written) — what `palisade adopt` writes, since an estate's restrictions are not
    /// derived from its NSG. Not for AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub front_door: Option<Located<FrontDoor>>,
    /// Allowed inbound traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Located<IngressRule>>,
    /// Allowed outbound traffic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Located<EgressRule>>,
    /// Denied traffic (Azure only: AWS security groups cannot deny).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<Located<DenyRule>>,
    /// Private endpoints these functions need.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Located<EndpointSpec>>,
}

/// `frontDoor`: whether a policy governs its Azure function apps' access restrictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FrontDoor {
    /// They admit exactly what `ingress` declares.
    Managed,
    /// They are left as they are.
    Unmanaged,
}

/// `managedGroup`: the existing group a policy takes over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManagedGroupSpec {
    /// AWS: the security group id (`sg-…`) in the policy's VPC. Azure: the NSG's ARM id
    /// in the target's resource group.
    pub id: String,
}

/// Selects functions by name and/or tags. Both given: a function must match both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionSelector {
    /// Function (AWS) or function app (Azure) names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// Tags that must all be present with these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

impl FunctionSelector {
    /// Whether a function with this name and these tags is selected.
    pub fn matches(&self, name: &str, tags: &BTreeMap<String, String>) -> bool {
        (self.names.is_empty() || self.names.iter().any(|n| n == name))
            && self.tags.iter().all(|(k, v)| tags.get(k) == Some(v))
    }

    /// Whether the selector selects nothing by construction.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.tags.is_empty()
    }
}

/// Where the functions run. AWS: `vpc` + `subnets` (+ extra `securityGroups`);
/// Azure: `vnet` + `subnet` (the function app's integration subnet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkSpec {
    /// AWS: the VPC, by id or tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc: Option<Located<VpcSelector>>,
    /// AWS: the subnets, by ids or tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnets: Option<Located<SubnetSelector>>,
    /// AWS: security groups Palisade does not own to attach as well (ids). Counted
    /// against Lambda's limit of 5 groups per function, with the managed group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<Located<String>>,
    /// Azure: VNet name in the target's resource group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vnet: Option<Located<String>>,
    /// Azure: integration subnet name in that VNet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Located<String>>,
}

/// A VPC by id or by tags (exactly one VPC must match).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VpcSelector {
    /// `vpc-…`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Tags that must all match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// Subnets by ids or by tags (within the selected VPC).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SubnetSelector {
    /// `subnet-…` ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// Tags that must all match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
}

/// An inbound allow rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IngressRule {
    /// Rule name, unique within the policy's ingress rules; becomes the rule description.
    pub name: String,
    /// Where traffic may come from.
    pub from: Vec<Located<PeerSpec>>,
    /// Ports, e.g. `tcp/443`, `tcp/8000-8100`, `udp/53`, `icmp`, `all`.
    pub ports: Vec<Located<PortSpec>>,
    /// Azure: NSG priority of the first atomic rule (100–4095; 4096 is the deny-all that
    /// ends every managed NSG). Default: from rule order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Located<u16>>,
}

/// An outbound allow rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    /// Rule name, unique within the policy's egress rules; becomes the rule description.
    pub name: String,
    /// Where traffic may go.
    pub to: Vec<Located<PeerSpec>>,
    /// Ports, e.g. `tcp/443`.
    pub ports: Vec<Located<PortSpec>>,
    /// Azure: NSG priority of the first atomic rule (100–4095; 4096 is the deny-all that
    /// ends every managed NSG). Default: from rule order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Located<u16>>,
}

/// A deny rule (Azure only). Egress uses `to`, ingress uses `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyRule {
    /// Rule name.
    pub name: String,
    /// `egress` (default) or `ingress`.
    #[serde(default = "default_egress")]
    pub direction: RuleDirection,
    /// Denied destinations (egress).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Located<PeerSpec>>,
    /// Denied sources (ingress).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Located<PeerSpec>>,
    /// Ports.
    pub ports: Vec<Located<PortSpec>>,
    /// NSG priority of the first atomic rule. Default: after every allow rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Located<u16>>,
}

fn default_egress() -> RuleDirection {
    RuleDirection::Egress
}

/// Direction in the language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RuleDirection {
    /// Inbound.
    Ingress,
    /// Outbound.
    Egress,
}

impl From<RuleDirection> for palisade_providers::Direction {
    fn from(d: RuleDirection) -> Self {
        match d {
            RuleDirection::Ingress => palisade_providers::Direction::Ingress,
            RuleDirection::Egress => palisade_providers::Direction::Egress,
        }
    }
}

/// The other end of a rule: exactly one of these keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum PeerSpec {
    /// An address range, e.g. `10.0.0.0/8` or `::/0`.
    Cidr(Cidr),
    /// Another FunctionPolicy of the same target (its managed group / subnets).
    Policy(String),
    /// A security group Palisade does not own, by id (AWS).
    SecurityGroup(String),
    /// A prefix list id, `pl-…` (AWS).
    PrefixList(String),
    /// A private endpoint declared by a policy of the same target, by service
    /// (AWS, e.g. `secretsmanager`) or by the connected resource name (Azure).
    Endpoint(String),
    /// An Azure service tag, e.g. `Sql.WestEurope`, `Internet`, `VirtualNetwork`.
    ServiceTag(String),
}

impl fmt::Display for PeerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerSpec::Cidr(c) => write!(f, "cidr {}", c.0),
            PeerSpec::Policy(p) => write!(f, "policy {p}"),
            PeerSpec::SecurityGroup(g) => write!(f, "securityGroup {g}"),
            PeerSpec::PrefixList(p) => write!(f, "prefixList {p}"),
            PeerSpec::Endpoint(e) => write!(f, "endpoint {e}"),
            PeerSpec::ServiceTag(t) => write!(f, "serviceTag {t}"),
        }
    }
}

/// An IPv4 or IPv6 CIDR, e.g. `10.0.0.0/16` or `::/0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr(pub IpNet);

impl JsonSchema for Cidr {
    fn schema_name() -> Cow<'static, str> {
        "Cidr".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "IPv4 or IPv6 CIDR",
            "examples": ["10.0.0.0/16", "0.0.0.0/0", "::/0"]
        })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse::<IpNet>().map(Cidr).map_err(|_| {
            format!("invalid CIDR {s:?}: expected an address and prefix length such as 10.0.0.0/16 or ::/0")
        })
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.0.to_string()
    }
}

/// A port specification: `tcp/443`, `tcp/8000-8100`, `udp/53`, `icmp` (every type),
/// `icmp/8` (type 8, every code), `icmp/3/4` (type 3, code 4), `icmpv6`, `icmpv6/128`,
/// `all`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortSpec(pub Ports);

impl JsonSchema for PortSpec {
    fn schema_name() -> Cow<'static, str> {
        "PortSpec".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "tcp/PORT, tcp/FROM-TO, udp/PORT, udp/FROM-TO, icmp, icmp/TYPE, icmp/TYPE/CODE, icmpv6, icmpv6/TYPE, icmpv6/TYPE/CODE or all (ICMP types and codes 0-255)",
            "pattern": "^((tcp|udp)/[0-9]{1,5}(-[0-9]{1,5})?|icmp(v6)?(/[0-9]{1,3}(/[0-9]{1,3})?)?|all)$",
            "examples": ["tcp/443", "tcp/8000-8100", "udp/53", "icmp", "icmp/3/4", "icmpv6/128", "all"]
        })
    }
}

impl FromStr for PortSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "expected tcp/PORT, tcp/FROM-TO, udp/PORT, udp/FROM-TO, icmp, icmp/TYPE, icmp/TYPE/CODE, icmpv6[/TYPE[/CODE]] or all";
        if s == "all" {
            return Ok(PortSpec(Ports::ALL));
        }
        let mut parts = s.splitn(2, '/');
        let head = parts.next().unwrap_or_default();
        if head == "icmp" || head == "icmpv6" {
            let protocol = if head == "icmp" {
                Protocol::Icmp
            } else {
                Protocol::Icmpv6
            };
            let mut ports = Ports::any(protocol);
            if let Some(rest) = parts.next() {
                let number = |what: &str, v: &str| {
                    v.parse::<u8>().map_err(|_| {
                        format!(
                            "invalid ICMP {what} {v:?} in {s:?}: ICMP types and codes are 0-255"
                        )
                    })
                };
                let (kind, code) = match rest.split_once('/') {
                    Some((t, c)) => (number("type", t)?, Some(number("code", c)?)),
                    None => (number("type", rest)?, None),
                };
                ports.icmp = Some(palisade_providers::IcmpType { kind, code });
            }
            return Ok(PortSpec(ports));
        }
        let (proto, range) = s
            .split_once('/')
            .ok_or_else(|| format!("invalid ports {s:?}: {expected}"))?;
        let protocol = match proto {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return Err(format!("invalid protocol {proto:?} in {s:?}: {expected}")),
        };
        let port = |p: &str| {
            p.parse::<u16>()
                .map_err(|_| format!("invalid port {p:?} in {s:?}: ports are 0-65535"))
        };
        let (from, to) = match range.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(range)?;
                (p, p)
            }
        };
        if from > to {
            return Err(format!(
                "invalid port range {s:?}: {from} is greater than {to}"
            ));
        }
        Ok(PortSpec(Ports {
            protocol,
            range: Some(PortRange { from, to }),
            icmp: None,
        }))
    }
}

impl TryFrom<String> for PortSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<PortSpec> for String {
    fn from(p: PortSpec) -> String {
        p.0.to_string()
    }
}

/// AWS VPC endpoint type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EndpointType {
    /// Interface endpoint: ENIs in the policy's subnets behind a managed security group.
    #[default]
    Interface,
    /// Gateway endpoint (S3, DynamoDB): routes in the subnets' route tables.
    Gateway,
}

/// A private endpoint the functions need. AWS: `service` (+ `type`, `privateDns`);
/// Azure: `resourceId` + `groupId` + `subnet`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSpec {
    /// AWS: service short name (`secretsmanager`) or full name (`com.amazonaws.…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// AWS: `interface` (default) or `gateway`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub endpoint_type: Option<EndpointType>,
    /// AWS interface endpoints: private DNS (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_dns: Option<bool>,
    /// Azure: ARM id of the resource to connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// Azure: the sub-resource (`vault`, `sqlServer`, `blob`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Azure: subnet (in the policy's VNet) for the endpoint's interface.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<String>,
}

impl EndpointSpec {
    /// The name a peer `{ endpoint: NAME }` uses: the AWS service's short name, or the
    /// last segment of the Azure resource id.
    pub fn peer_name(&self) -> Option<&str> {
        if let Some(s) = &self.service {
            return Some(s.rsplit('.').next().unwrap_or(s));
        }
        self.resource_id
            .as_deref()
            .map(|id| id.trim_end_matches('/').rsplit('/').next().unwrap_or(id))
    }
}

// ---------------------------------------------------------------- Guardrail

/// `kind: Guardrail`: organisation-wide constraints, checked at `validate` time against
/// the compiled desired state and at run time against everything observed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GuardrailSpec {
    /// What it is for, in one sentence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Control ids this guardrail evidences, e.g. `CIS-AWS-5.2`, `NIST-800-53:SC-7`.
    pub controls: Vec<String>,
    /// Where it applies. Default: every target, every function.
    #[serde(default)]
    pub scope: GuardrailScope,
    /// Traffic no rule may allow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forbid: Vec<Located<ForbidSpec>>,
    /// What every function in scope must have.
    #[serde(default)]
    pub require: RequireSpec,
}

/// Scope of a guardrail.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GuardrailScope {
    /// Target names. Empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<Located<String>>,
    /// Functions in scope (for `require`). Empty: all.
    #[serde(default)]
    pub functions: FunctionSelector,
}

/// Forbidden traffic: a group breaks it if, on some port of `ports` (default: any) that
/// is not in `exceptPorts`, what it admits in `direction` covers `peer` — one rule open to
/// `0.0.0.0/0`, or several whose CIDRs together cover it (`0.0.0.0/1` + `128.0.0.0/1`).
/// Without `peer`, any peer: `{ direction: ingress, ports: [ tcp/22 ] }` is "no SSH from
/// anywhere".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ForbidSpec {
    /// `ingress` or `egress`.
    pub direction: RuleDirection,
    /// The peer that must not be allowed; absent: every peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<PeerSpec>,
    /// Forbidden ports; empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// Ports that stay allowed (e.g. egress to the internet only on `tcp/443`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except_ports: Vec<PortSpec>,
}

/// Requirements on every function in scope.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequireSpec {
    /// The function runs in a VPC / has VNet integration.
    #[serde(default)]
    pub in_network: bool,
    /// The function is selected by a FunctionPolicy.
    #[serde(default)]
    pub covered_by_policy: bool,
}

// ---------------------------------------------------------------- documents

/// A loaded document of one kind: metadata, spec and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc<S> {
    /// Name and labels.
    pub metadata: Metadata,
    /// The kind's spec.
    pub spec: S,
    /// File (relative to the policy root) and line of the document.
    pub file: PathBuf,
    /// Line where the document starts.
    pub line: u32,
}

impl<S> Doc<S> {
    /// The document's name.
    pub fn name(&self) -> &str {
        &self.metadata.name.value
    }

    /// The location of a value read from this document.
    pub fn at<T>(&self, v: &Located<T>) -> SourceLocation {
        SourceLocation::new(self.file.clone(), v.line, v.column)
    }

    /// The location of the document itself.
    pub fn here(&self) -> SourceLocation {
        SourceLocation::new(self.file.clone(), self.line, 1)
    }
}

/// A `Target` document.
pub type TargetDoc = Doc<TargetSpec>;
/// A `FunctionPolicy` document.
pub type PolicyDoc = Doc<FunctionPolicySpec>;
/// A `Guardrail` document.
pub type GuardrailDoc = Doc<GuardrailSpec>;

impl TargetDoc {
    /// The model's view of this target, if its spec names exactly one cloud.
    pub fn to_target(&self) -> Option<palisade_providers::Target> {
        use palisade_providers::{Target, TargetScope};
        let scope = match (&self.spec.aws, &self.spec.azure) {
            (Some(a), None) => TargetScope::Aws {
                region: a.region.clone(),
                account_id: a.account_id.value.clone(),
                assume_role_arn: a.assume_role_arn.clone(),
            },
            (None, Some(z)) => TargetScope::Azure {
                subscription_id: z.subscription_id.clone(),
                resource_group: z.resource_group.clone(),
                location: z.location.clone(),
            },
            _ => return None,
        };
        Some(Target {
            name: self.name().to_string(),
            scope,
        })
    }
}

/// Everything loaded from a policy source, sorted by name within each kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicySet {
    /// Targets.
    pub targets: Vec<TargetDoc>,
    /// Function policies.
    pub policies: Vec<PolicyDoc>,
    /// Guardrails.
    pub guardrails: Vec<GuardrailDoc>,
}

impl PolicySet {
    /// A target by name.
    pub fn target(&self, name: &str) -> Option<&TargetDoc> {
        self.targets.iter().find(|t| t.name() == name)
    }

    /// A policy by name.
    pub fn policy(&self, name: &str) -> Option<&PolicyDoc> {
        self.policies.iter().find(|p| p.name() == name)
    }

    /// The policies of one target.
    pub fn policies_of<'a>(&'a self, target: &'a str) -> impl Iterator<Item = &'a PolicyDoc> {
        self.policies
            .iter()
            .filter(move |p| p.spec.target.value == target)
    }
}

// ---------------------------------------------------------------- schema

/// One document of the language, for the JSON Schema only (the loader reads the header
/// first and then the kind's spec, so that errors keep their positions).
#[derive(JsonSchema)]
#[serde(tag = "kind", deny_unknown_fields)]
#[allow(
    dead_code,
    clippy::large_enum_variant,
    reason = "only its JSON Schema is used"
)]
enum SchemaDocument {
    Target {
        #[serde(rename = "apiVersion")]
        api_version: ApiVersion,
        metadata: Metadata,
        spec: TargetSpec,
    },
    FunctionPolicy {
        #[serde(rename = "apiVersion")]
        api_version: ApiVersion,
        metadata: Metadata,
        spec: FunctionPolicySpec,
    },
    Guardrail {
        #[serde(rename = "apiVersion")]
        api_version: ApiVersion,
        metadata: Metadata,
        spec: GuardrailSpec,
    },
}

#[derive(JsonSchema)]
#[allow(dead_code, reason = "only its JSON Schema is used")]
enum ApiVersion {
    #[serde(rename = "palisade.dev/v1alpha1")]
    V1Alpha1,
}

/// The JSON Schema of one policy document, generated from the types above.
pub fn json_schema() -> serde_json::Value {
    let mut schema = schemars::schema_for!(SchemaDocument);
    schema.insert(
        "$id".into(),
        "https://palisade.dev/schema/v1alpha1.json".into(),
    );
    schema.insert("title".into(), "Palisade policy document (v1alpha1)".into());
    schema.to_value()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_parse_or_say_what_was_expected() {
        let ok = [
            ("tcp/443", Protocol::Tcp, Some((443, 443))),
            ("tcp/8000-8100", Protocol::Tcp, Some((8000, 8100))),
            ("udp/53", Protocol::Udp, Some((53, 53))),
            ("icmp", Protocol::Icmp, None),
            ("all", Protocol::All, None),
        ];
        for (s, proto, range) in ok {
            let p: PortSpec = s.parse().unwrap();
            assert_eq!(p.0.protocol, proto, "{s}");
            assert_eq!(p.0.range.map(|r| (r.from, r.to)), range, "{s}");
            assert_eq!(String::from(p), s, "round trip {s}");
        }
        for bad in [
            "tcp",
            "tcp/",
            "tcp/70000",
            "tcp/9-1",
            "sctp/1",
            "TCP/1",
            "tcp/a-b",
            "icmp/",
            "icmp/256",
            "icmp/3/256",
            "icmp/3/4/5",
            "icmp/-1",
            "icmpv6/x",
        ] {
            let err = bad.parse::<PortSpec>().unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn icmp_types_and_codes_parse_round_trip_and_nest() {
        let t = |kind, code| Some(palisade_providers::IcmpType { kind, code });
        for (s, proto, icmp) in [
            ("icmp", Protocol::Icmp, None),
            ("icmp/8", Protocol::Icmp, t(8, None)),
            ("icmp/3/4", Protocol::Icmp, t(3, Some(4))),
            ("icmpv6", Protocol::Icmpv6, None),
            ("icmpv6/128", Protocol::Icmpv6, t(128, None)),
            ("icmpv6/1/4", Protocol::Icmpv6, t(1, Some(4))),
        ] {
            let p: PortSpec = s.parse().unwrap();
            assert_eq!(
                (p.0.protocol, p.0.icmp, p.0.range),
                (proto, icmp, None),
                "{s}"
            );
            assert_eq!(String::from(p), s, "round trip {s}");
        }
        let p = |s: &str| s.parse::<PortSpec>().unwrap().0;
        assert!(p("icmp").contains(&p("icmp/3/4")));
        assert!(p("icmp/3").contains(&p("icmp/3/4")));
        assert!(!p("icmp/3/4").contains(&p("icmp/3")));
        assert!(p("icmp/3/4").overlaps(&p("icmp/3")));
        assert!(!p("icmp/8").overlaps(&p("icmp/3/4")));
        assert!(!p("icmp").overlaps(&p("icmpv6")), "ICMP is not ICMPv6");
        assert!(p("all").contains(&p("icmpv6/128")));
    }

    #[test]
    fn endpoint_peer_name_is_the_short_service_or_resource_name() {
        let aws = EndpointSpec {
            service: Some("com.amazonaws.us-east-1.secretsmanager".into()),
            endpoint_type: None,
            private_dns: None,
            resource_id: None,
            group_id: None,
            subnet: None,
        };
        assert_eq!(aws.peer_name(), Some("secretsmanager"));
        let azure = EndpointSpec {
            service: None,
            resource_id: Some(
                "/subscriptions/s/resourceGroups/r/providers/Microsoft.KeyVault/vaults/kv-reports"
                    .into(),
            ),
            group_id: Some("vault".into()),
            subnet: Some("snet-pe".into()),
            ..aws
        };
        assert_eq!(azure.peer_name(), Some("kv-reports"));
    }

    #[test]
    fn schema_names_every_kind() {
        let s = json_schema().to_string();
        for k in [
            "Target",
            "FunctionPolicy",
            "Guardrail",
            "PortSpec",
            "serviceTag",
            "managedGroup",
            "defaultDeny",
            "frontDoor",
        ] {
            assert!(s.contains(k), "schema lacks {k}");
        }
    }
}
