//! Cloud change events: what a queue delivers, read into one shape the controller can
//! route, and the seam to the queue ([`EventQueue`]).
//!
//! AWS: an EventBridge rule on CloudTrail management events (`detail-type: AWS API Call
//! via CloudTrail`) targets an SQS queue; each message body is the EventBridge envelope
//! with the CloudTrail record in `detail`. [`parse_cloudtrail`] reads it: account, region,
//! the API, the resource ids it names (anywhere in `requestParameters` and
//! `responseElements`: a CloudFormation-issued `AuthorizeSecurityGroupIngress` has its
//! group id only in `responseElements.securityGroupRuleSet.items[].groupId`), and the
//! actor from `userIdentity`. A queue body is hostile input: it is bounded in size,
//! depth and ids, and anything that is not a successful write to what Palisade manages is
//! refused with the reason, never guessed at.

use std::time::Duration;

use serde_json::Value;

use crate::model::{Actor, ActorKind, Cloud, audit_text};
use crate::provider::ProviderError;

/// One message as the queue delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueMessage {
    /// The queue's id of the message (stable across deliveries).
    pub id: String,
    /// What deletes this delivery of it (a new one per delivery).
    pub receipt: String,
    /// The body, as sent.
    pub body: String,
    /// When the queue received it (Unix ms), if it says.
    pub sent_ms: Option<i64>,
}

/// A change the cloud reported, read from a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeEvent {
    /// The cloud.
    pub cloud: Cloud,
    /// The account (AWS) it happened in.
    pub account: String,
    /// The region.
    pub region: String,
    /// The API (`AuthorizeSecurityGroupIngress`, `UpdateFunctionConfiguration20150331v2`).
    pub operation: String,
    /// The cloud ids it names: security groups, endpoints, functions (ARN or name) —
    /// what it changed and what it merely refers to (a group a rule admits, the groups
    /// of a function's `vpcConfig`). Routing goes by these.
    pub resources: Vec<String>,
    /// Of `resources`, those the call acted on (not those it refers to): only a drift of
    /// one of these takes the event's actor.
    pub subjects: Vec<String>,
    /// Whether it may bring in something no earlier observation knew (a new function or
    /// group, new tags that may select a function): routed to every target in scope.
    pub creates: bool,
    /// The cloud's request id (CloudTrail `requestID`): how Palisade knows its own writes.
    pub request_id: Option<String>,
    /// Who made it.
    pub actor: Option<Actor>,
}

/// Why a message is not a change to route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    /// Not an event of the expected shape (what was wrong).
    Malformed(String),
    /// A well-formed event that changes nothing Palisade manages: another API, a call
    /// that failed, a read.
    Irrelevant(String),
}

impl Unusable {
    /// The metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            Unusable::Malformed(_) => "malformed",
            Unusable::Irrelevant(_) => "irrelevant",
        }
    }
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Malformed(m) => write!(f, "malformed: {m}"),
            Unusable::Irrelevant(m) => write!(f, "irrelevant: {m}"),
        }
    }
}

/// A queue of cloud change events (AWS: SQS fed by EventBridge). Receiving hides a
/// message for the queue's visibility timeout; a message not deleted comes back.
#[async_trait::async_trait]
pub trait EventQueue: Send + Sync + std::fmt::Debug {
    /// The queue, for logs and status.
    fn name(&self) -> &str;

    /// Wait up to `wait` for messages (at most 10).
    ///
    /// # Errors
    /// The queue could not be read.
    async fn receive(&self, wait: Duration) -> Result<Vec<QueueMessage>, ProviderError>;

    /// Delete these deliveries (`(id, receipt)`); returns how many the queue refused.
    ///
    /// # Errors
    /// The queue could not be reached; nothing is known to be deleted.
    async fn delete(&self, messages: &[(String, String)]) -> Result<usize, ProviderError>;

    /// Read a message body.
    ///
    /// # Errors
    /// [`Unusable`] with why.
    fn parse(&self, body: &str) -> Result<ChangeEvent, Unusable>;
}

/// Whether `name` is an SQS queue name: 1–80 letters, digits, `-` or `_`, with an
/// optional `.fifo` suffix.
pub fn is_queue_name(name: &str) -> bool {
    let base = name.strip_suffix(".fifo").unwrap_or(name);
    !base.is_empty()
        && name.len() <= 80
        && base
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Largest message body read (SQS's own limit).
pub const MAX_BODY: usize = 256 * 1024;
/// Most resource ids taken from one event.
const MAX_IDS: usize = 256;
/// Deepest nesting walked for ids.
const MAX_DEPTH: usize = 12;

/// The EC2 APIs that change security groups, their rules and tags, and VPC endpoints.
pub const EC2_APIS: [&str; 14] = [
    "AuthorizeSecurityGroupIngress",
    "AuthorizeSecurityGroupEgress",
    "RevokeSecurityGroupIngress",
    "RevokeSecurityGroupEgress",
    "ModifySecurityGroupRules",
    "UpdateSecurityGroupRuleDescriptionsIngress",
    "UpdateSecurityGroupRuleDescriptionsEgress",
    "CreateSecurityGroup",
    "DeleteSecurityGroup",
    "CreateTags",
    "DeleteTags",
    "CreateVpcEndpoint",
    "ModifyVpcEndpoint",
    "DeleteVpcEndpoints",
];

/// The Lambda APIs that change a function's placement or what selects it. CloudTrail
/// names them with a version suffix (`UpdateFunctionConfiguration20150331v2`,
/// `TagResource20170331v2`) that changes with API versions: matched by prefix.
pub const LAMBDA_APIS: [&str; 5] = [
    "UpdateFunctionConfiguration",
    "CreateFunction",
    "DeleteFunction",
    "TagResource",
    "UntagResource",
];

/// The Lambda API `name` is a version of (`UpdateFunctionConfiguration20150331v2` →
/// `UpdateFunctionConfiguration`): the base name followed by nothing or a date.
pub fn lambda_api(name: &str) -> Option<&'static str> {
    LAMBDA_APIS.into_iter().find(|base| {
        name.strip_prefix(base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_digit()))
    })
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(audit_text).filter(|s| !s.trim().is_empty())
}

/// The normalised actor of a CloudTrail record (`userIdentity`, `sourceIPAddress`,
/// `userAgent`, `eventID`, `eventTime`, `eventName`).
pub fn actor_of(e: &Value) -> Option<Actor> {
    let who = &e["userIdentity"];
    let arn = text(&who["arn"]);
    let invoked_by = text(&who["invokedBy"]);
    let (kind, id, name, issuer) = match who["type"].as_str().unwrap_or_default() {
        "IAMUser" => (ActorKind::User, arn.clone()?, text(&who["userName"]), None),
        "Root" => (ActorKind::User, arn.clone()?, Some("root".into()), None),
        "AssumedRole" => {
            let session = arn
                .as_deref()
                .and_then(|a| a.rsplit('/').next())
                .map(audit_text);
            (
                ActorKind::AssumedRole,
                arn.clone()?,
                session,
                text(&who["sessionContext"]["sessionIssuer"]["arn"]),
            )
        }
        "FederatedUser" | "SAMLUser" | "WebIdentityUser" | "IdentityCenterUser" => (
            ActorKind::Federated,
            arn.clone()
                .or_else(|| text(&who["principalId"]))
                .or_else(|| text(&who["userName"]))?,
            text(&who["userName"]),
            text(&who["sessionContext"]["sessionIssuer"]["arn"]),
        ),
        "AWSService" => (ActorKind::Service, invoked_by.clone()?, None, None),
        _ => (
            ActorKind::Unknown,
            arn.clone()
                .or_else(|| text(&who["principalId"]))
                .or_else(|| text(&who["accountId"]))?,
            None,
            None,
        ),
    };
    Some(Actor {
        kind,
        id,
        name,
        issuer,
        source_ip: text(&e["sourceIPAddress"]),
        user_agent: text(&e["userAgent"]),
        // A service acting with the principal's credentials (CloudFormation).
        invoked_by,
        event_id: text(&e["eventID"]),
        event_time: text(&e["eventTime"]),
        correlation_id: text(&e["requestID"]),
        operation: text(&e["eventName"]),
    })
}

/// Whether `s` is an id of the given prefix (`sg-`, `vpce-`) followed by 8–17 hex digits.
fn is_id(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| {
        (8..=17).contains(&rest.len()) && rest.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// A Lambda function named by a request (`functionName`, `functionArn`, `resource`):
/// an ARN of a function, or a name Lambda accepts (letters, digits, `-`, `_`).
fn is_function(s: &str) -> bool {
    if s.starts_with("arn:") {
        return s.contains(":function:") && s.len() <= 256;
    }
    !s.is_empty()
        && s.len() <= 140
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Keys under which a request or response *refers to* other resources (the peers of a
/// rule, the groups a function or endpoint uses) rather than naming what it changed.
fn is_reference(key: &str) -> bool {
    matches!(
        key,
        "ipPermissions"
            | "IpPermissions"
            | "SecurityGroupRule"
            | "securityGroupRule"
            | "userIdGroupPairs"
            | "groups"
            | "securityGroupIds"
            | "SecurityGroupIds"
            | "SecurityGroupId"
            | "securityGroupIdSet"
            | "groupSet"
            | "vpcConfig"
            | "VpcConfig"
            | "referencedGroupInfo"
            | "referencedGroupId"
    )
}

/// What [`collect_ids`] gathers.
#[derive(Default)]
struct Ids {
    all: Vec<String>,
    subjects: Vec<String>,
}

/// Every id in `v` worth routing by — EC2 group and endpoint ids wherever they are,
/// functions under the keys Lambda names them by — and, outside the subtrees that
/// refer to other resources, the subjects.
fn collect_ids(v: &Value, key: &str, depth: usize, reference: bool, out: &mut Ids) {
    if depth > MAX_DEPTH || out.all.len() >= MAX_IDS {
        return;
    }
    match v {
        Value::String(s) => {
            let function_key = matches!(
                key,
                "functionName" | "FunctionName" | "functionArn" | "FunctionArn" | "resource"
            );
            if is_id(s, "sg-") || is_id(s, "vpce-") || (function_key && is_function(s)) {
                if !out.all.contains(s) {
                    out.all.push(s.clone());
                }
                if !reference && !out.subjects.contains(s) {
                    out.subjects.push(s.clone());
                }
            }
        }
        Value::Array(items) => {
            for i in items {
                collect_ids(i, key, depth + 1, reference, out);
            }
        }
        Value::Object(m) => {
            for (k, x) in m {
                collect_ids(x, k, depth + 1, reference || is_reference(k), out);
            }
        }
        _ => {}
    }
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a str, Unusable> {
    v[name]
        .as_str()
        .ok_or_else(|| Unusable::Malformed(format!("`{name}` is missing or not a string")))
}

/// Read an EventBridge message carrying a CloudTrail record (`detail-type: AWS API Call
/// via CloudTrail`) into a [`ChangeEvent`].
///
/// # Errors
/// [`Unusable::Malformed`] when it is not such an event (too large, not JSON, a field
/// missing or of the wrong shape); [`Unusable::Irrelevant`] when it is one, but not a
/// successful write by an API that changes what Palisade manages.
pub fn parse_cloudtrail(body: &str) -> Result<ChangeEvent, Unusable> {
    if body.len() > MAX_BODY {
        return Err(Unusable::Malformed(format!(
            "{} bytes, more than {MAX_BODY}",
            body.len()
        )));
    }
    let v: Value =
        serde_json::from_str(body).map_err(|e| Unusable::Malformed(format!("not JSON: {e}")))?;
    if !v.is_object() {
        return Err(Unusable::Malformed("not a JSON object".into()));
    }
    let kind = field(&v, "detail-type")?;
    if kind != "AWS API Call via CloudTrail" {
        return Err(Unusable::Irrelevant(format!(
            "detail-type {:?}, not \"AWS API Call via CloudTrail\"",
            audit_text(kind)
        )));
    }
    let detail = &v["detail"];
    if !detail.is_object() {
        return Err(Unusable::Malformed("`detail` is not an object".into()));
    }
    // The envelope's account and region, else the record's own (`recipientAccountId`,
    // `awsRegion`: moto's delivery to SQS leaves the envelope's `account` out).
    let account = match v["account"].as_str() {
        Some(a) => a,
        None => field(detail, "recipientAccountId").map_err(|_| {
            Unusable::Malformed("`account` (or `detail.recipientAccountId`) is missing".into())
        })?,
    };
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Unusable::Malformed(format!(
            "account {:?} is not 12 digits",
            audit_text(account)
        )));
    }
    let region = match v["region"].as_str() {
        Some(r) => r,
        None => field(detail, "awsRegion").map_err(|_| {
            Unusable::Malformed("`region` (or `detail.awsRegion`) is missing".into())
        })?,
    };
    if region.is_empty()
        || region.len() > 32
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(Unusable::Malformed(format!(
            "region {:?} is not a region name",
            audit_text(region)
        )));
    }
    let name = field(detail, "eventName")?;
    let source = detail["eventSource"].as_str().unwrap_or_default();
    let creates = match source {
        "ec2.amazonaws.com" => match EC2_APIS.iter().find(|a| **a == name) {
            // Tags on a group or endpoint are read from it (it is known); a new one
            // is announced by its create.
            Some(a) => matches!(*a, "CreateSecurityGroup" | "CreateVpcEndpoint"),
            None => {
                return Err(Unusable::Irrelevant(format!(
                    "EC2 API {:?}",
                    audit_text(name)
                )));
            }
        },
        "lambda.amazonaws.com" => match lambda_api(name) {
            Some(a) => matches!(a, "CreateFunction" | "TagResource" | "UntagResource"),
            None => {
                return Err(Unusable::Irrelevant(format!(
                    "Lambda API {:?}",
                    audit_text(name)
                )));
            }
        },
        other => {
            return Err(Unusable::Irrelevant(format!(
                "event source {:?}",
                audit_text(other)
            )));
        }
    };
    if let Some(code) = detail["errorCode"].as_str().filter(|c| !c.is_empty()) {
        return Err(Unusable::Irrelevant(format!(
            "the call failed ({})",
            audit_text(code)
        )));
    }
    if detail["readOnly"].as_bool() == Some(true) {
        return Err(Unusable::Irrelevant("a read-only call".into()));
    }
    let mut ids = Ids::default();
    collect_ids(&detail["requestParameters"], "", 0, false, &mut ids);
    collect_ids(&detail["responseElements"], "", 0, false, &mut ids);
    // Tags are written on anything (instances, volumes, interfaces…): only tags on a
    // group or an endpoint matter.
    if matches!(name, "CreateTags" | "DeleteTags") && ids.all.is_empty() {
        return Err(Unusable::Irrelevant(
            "tags on no security group or VPC endpoint".into(),
        ));
    }
    Ok(ChangeEvent {
        cloud: Cloud::Aws,
        account: account.to_string(),
        region: region.to_string(),
        operation: audit_text(name),
        resources: ids.all,
        subjects: ids.subjects,
        creates,
        request_id: text(&detail["requestID"]),
        actor: actor_of(detail),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn envelope(detail: Value) -> String {
        json!({
            "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
            "detail-type": "AWS API Call via CloudTrail", "source": "aws.ec2",
            "account": "123456789012", "time": "2026-12-01T10:00:00Z", "region": "us-east-1",
            "resources": [], "detail": detail,
        })
        .to_string()
    }

    #[test]
    fn an_assumed_role_revoking_a_rule() {
        let e = parse_cloudtrail(&envelope(json!({
            "eventVersion": "1.09", "eventSource": "ec2.amazonaws.com",
            "eventName": "RevokeSecurityGroupIngress", "awsRegion": "us-east-1",
            "eventTime": "2026-12-01T10:00:00Z", "requestID": "r-1", "eventID": "e-1",
            "eventType": "AwsApiCall", "readOnly": false,
            "userIdentity": {
                "type": "AssumedRole", "arn": "arn:aws:sts::123456789012:assumed-role/ops/alice",
                "sessionContext": {"sessionIssuer": {"type": "Role", "arn": "arn:aws:iam::123456789012:role/ops"}}
            },
            "requestParameters": {"groupId": "sg-0123456789abcdef0", "ipPermissions": {"items": []}},
            "responseElements": {"_return": true}
        })))
        .unwrap();
        assert_eq!(e.account, "123456789012");
        assert_eq!(e.resources, vec!["sg-0123456789abcdef0"]);
        assert!(!e.creates);
        assert_eq!(e.request_id.as_deref(), Some("r-1"));
        let a = e.actor.unwrap();
        assert_eq!(a.kind, ActorKind::AssumedRole);
        assert_eq!(
            a.issuer.as_deref(),
            Some("arn:aws:iam::123456789012:role/ops")
        );
        // Without the envelope's account and region (moto's delivery), the record's own.
        let bare = json!({
            "detail-type": "AWS API Call via CloudTrail",
            "detail": {"eventSource": "ec2.amazonaws.com", "eventName": "DeleteSecurityGroup",
                "recipientAccountId": "210987654321", "awsRegion": "eu-north-1",
                "requestParameters": {"groupId": "sg-0123456789abcdef0"}}
        });
        let e = parse_cloudtrail(&bare.to_string()).unwrap();
        assert_eq!(
            (e.account.as_str(), e.region.as_str()),
            ("210987654321", "eu-north-1")
        );
        let mut none = bare.clone();
        none["detail"]["recipientAccountId"] = Value::Null;
        assert_eq!(
            parse_cloudtrail(&none.to_string()).unwrap_err().reason(),
            "malformed"
        );
    }

    #[test]
    fn a_cloudformation_call_names_its_group_only_in_the_response() {
        let e = parse_cloudtrail(&envelope(json!({
            "eventSource": "ec2.amazonaws.com", "eventName": "AuthorizeSecurityGroupIngress",
            "requestID": "r-2", "eventID": "e-2", "eventTime": "2026-12-01T10:00:01Z",
            "userIdentity": {
                "type": "AssumedRole", "arn": "arn:aws:sts::123456789012:assumed-role/cfn-exec/AWSCloudFormation",
                "invokedBy": "cloudformation.amazonaws.com",
                "sessionContext": {"sessionIssuer": {"arn": "arn:aws:iam::123456789012:role/cfn-exec"}}
            },
            "requestParameters": {"ipPermissions": {"items": [{"ipProtocol": "tcp", "fromPort": 22, "toPort": 22}]}},
            "responseElements": {"securityGroupRuleSet": {"items": [
                {"groupId": "sg-00000000000000abc", "securityGroupRuleId": "sgr-0000000000000000a"}
            ]}}
        })))
        .unwrap();
        assert_eq!(e.resources, vec!["sg-00000000000000abc"]);
        assert_eq!(e.subjects, e.resources, "the group the rule was added to");
        assert_eq!(
            e.actor.unwrap().invoked_by.as_deref(),
            Some("cloudformation.amazonaws.com")
        );
    }

    #[test]
    fn lambda_names_are_matched_by_prefix() {
        let mut v: Value = serde_json::from_str(&envelope(json!({
            "eventSource": "lambda.amazonaws.com",
            "eventName": "UpdateFunctionConfiguration20150331v2", "requestID": "r-3",
            "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::123456789012:user/bob", "userName": "bob"},
            "requestParameters": {"functionName": "orders-api", "vpcConfig": {"subnetIds": [], "securityGroupIds": []}},
            "responseElements": {"functionArn": "arn:aws:lambda:us-east-1:123456789012:function:orders-api"}
        })))
        .unwrap();
        v["source"] = json!("aws.lambda");
        let e = parse_cloudtrail(&v.to_string()).unwrap();
        assert_eq!(e.operation, "UpdateFunctionConfiguration20150331v2");
        assert_eq!(
            e.resources,
            vec![
                "orders-api",
                "arn:aws:lambda:us-east-1:123456789012:function:orders-api"
            ]
        );
        assert_eq!(lambda_api("TagResource20170331v2"), Some("TagResource"));
        assert_eq!(lambda_api("CreateFunction20150331"), Some("CreateFunction"));
        assert_eq!(lambda_api("UpdateFunctionCode20150331v2"), None);
        assert_eq!(lambda_api("TagResourceX"), None);
        assert!(parse_cloudtrail(&v.to_string().replace("20150331v2", "Urlx")).is_err());
    }

    #[test]
    fn hostile_and_unrelated_messages_are_refused_with_why() {
        let cases = [
            ("not json".to_string(), "malformed"),
            ("[]".to_string(), "malformed"),
            (
                json!({"detail-type": "Scheduled Event", "account": "123456789012", "region": "us-east-1"}).to_string(),
                "irrelevant",
            ),
            (
                envelope(json!({"eventSource": "ec2.amazonaws.com", "eventName": "RunInstances"})),
                "irrelevant",
            ),
            (
                envelope(json!({"eventSource": "ec2.amazonaws.com", "eventName": "CreateTags", "errorCode": "Client.UnauthorizedOperation"})),
                "irrelevant",
            ),
            (
                envelope(json!({"eventSource": "s3.amazonaws.com", "eventName": "PutObject"})),
                "irrelevant",
            ),
            (envelope(json!("a string")), "malformed"),
            (
                envelope(json!({"eventSource": "ec2.amazonaws.com"})),
                "malformed",
            ),
            (
                envelope(json!({})).replace("123456789012", "12345678901x"),
                "malformed",
            ),
            (
                envelope(json!({})).replace("us-east-1", "US EAST\n1"),
                "malformed",
            ),
            ("x".repeat(MAX_BODY + 1), "malformed"),
        ];
        for (body, reason) in cases {
            let got = parse_cloudtrail(&body).unwrap_err();
            assert_eq!(got.reason(), reason, "{got} for {:.80}", body);
        }
    }

    #[test]
    fn ids_are_bounded_and_exact() {
        let many: Vec<Value> = (0..1000)
            .map(|i| json!({"groupId": format!("sg-{i:017x}")}))
            .collect();
        let e = parse_cloudtrail(&envelope(json!({
            "eventSource": "ec2.amazonaws.com", "eventName": "CreateTags",
            "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::123456789012:user/x"},
            "requestParameters": {"resourcesSet": {"items": many}, "note": "sg-nothex!", "other": "vpce-0123456789abcdef0"}
        })))
        .unwrap();
        assert_eq!(e.resources.len(), MAX_IDS);
        assert!(!e.creates, "a tag on a known group is read from the group");
        assert!(!e.resources.iter().any(|r| r == "sg-nothex!"));
    }

    #[test]
    fn what_a_call_changed_is_told_from_what_it_refers_to() {
        // A rule on sg-…a that admits sg-…b: both route, only sg-…a is the subject.
        let e = parse_cloudtrail(&envelope(json!({
            "eventSource": "ec2.amazonaws.com", "eventName": "AuthorizeSecurityGroupIngress",
            "requestParameters": {"groupId": "sg-0000000000000000a", "ipPermissions": {"items": [
                {"ipProtocol": "tcp", "fromPort": 5432, "toPort": 5432,
                 "groups": {"items": [{"groupId": "sg-0000000000000000b"}]}}]}}
        })))
        .unwrap();
        assert_eq!(
            e.resources,
            vec!["sg-0000000000000000a", "sg-0000000000000000b"]
        );
        assert_eq!(e.subjects, vec!["sg-0000000000000000a"]);
        // A function's new placement names its groups: the function is the subject.
        let mut v: Value = serde_json::from_str(&envelope(json!({
            "eventSource": "lambda.amazonaws.com", "eventName": "UpdateFunctionConfiguration20150331v2",
            "requestParameters": {"functionName": "orders-api",
                "vpcConfig": {"subnetIds": ["subnet-1"], "securityGroupIds": ["sg-0000000000000000c"]}}
        })))
        .unwrap();
        v["source"] = json!("aws.lambda");
        let e = parse_cloudtrail(&v.to_string()).unwrap();
        assert_eq!(e.subjects, vec!["orders-api"]);
        assert!(e.resources.contains(&"sg-0000000000000000c".to_string()));
        // Tags on an instance are not Palisade's business.
        let tags = envelope(json!({
            "eventSource": "ec2.amazonaws.com", "eventName": "CreateTags",
            "requestParameters": {"resourcesSet": {"items": [{"resourceId": "i-0123456789abcdef0"}]}}
        }));
        assert_eq!(parse_cloudtrail(&tags).unwrap_err().reason(), "irrelevant");
    }
}
