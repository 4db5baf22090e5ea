//! Change events end to end on moto: the EventBridge rule `palisade events setup` prints,
//! targeting an SQS queue, with `palisade run --aws-events-queue` and a ten-minute resync.
//! moto emits no CloudTrail events for its own EC2 and Lambda calls, so each test makes
//! the change with boto3 *and* puts the CloudTrail-shaped event a real account would
//! deliver (real shapes: an assumed role with its session issuer, a CloudFormation-issued
//! call whose group id is only in `responseElements`, Lambda's version-suffixed
//! `UpdateFunctionConfiguration20150331v2`). Palisade reverts from the event alone, and
//! the drift records the event's actor.

mod support;

use palisade::history::EventData;
use serde_json::{Value, json};
use support::{Controller, GitRepo, Moto, text};

const ACCOUNT: &str = "123456789012";

fn group_id(moto: &Moto, name: &str) -> String {
    let out = moto.call(
        "ec2",
        "describe_security_groups",
        json!({ "Filters": [{ "Name": "group-name", "Values": [name] }] }),
    );
    out["SecurityGroups"][0]["GroupId"]
        .as_str()
        .expect("group")
        .to_string()
}

fn ingress(moto: &Moto, group: &str) -> Vec<(i64, String)> {
    let out = moto.call(
        "ec2",
        "describe_security_group_rules",
        json!({ "Filters": [{ "Name": "group-id", "Values": [group] }] }),
    );
    let mut v: Vec<(i64, String)> = out["SecurityGroupRules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["IsEgress"] == false)
        .map(|r| {
            (
                r["FromPort"].as_i64().unwrap_or(-1),
                r["CidrIpv4"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A CloudTrail record as EventBridge carries it in `detail`.
fn record(source: &str, name: &str, who: Value, request: Value, response: Value, n: u32) -> Value {
    json!({
        // Now: a drift takes an event's actor only within its observation window.
        "eventVersion": "1.09", "userIdentity": who,
        "eventTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        "eventSource": source, "eventName": name, "awsRegion": "us-east-1",
        "sourceIPAddress": "198.51.100.20", "userAgent": "aws-cli/2.15.0",
        "requestParameters": request, "responseElements": response,
        "requestID": format!("0f1e2d3c-0000-4000-8000-{n:012}"), "eventID": format!("6b1c0000-0000-4000-8000-{n:012}"),
        "readOnly": false, "eventType": "AwsApiCall", "managementEvent": true,
        "recipientAccountId": ACCOUNT, "eventCategory": "Management"
    })
}

fn assumed(role: &str, session: &str) -> Value {
    json!({
        "type": "AssumedRole", "principalId": format!("AROAEXAMPLE:{session}"),
        "arn": format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role}/{session}"),
        "accountId": ACCOUNT, "accessKeyId": "ASIAEXAMPLE",
        "sessionContext": {
            "sessionIssuer": {"type": "Role", "principalId": "AROAEXAMPLE",
                "arn": format!("arn:aws:iam::{ACCOUNT}:role/{role}"), "accountId": ACCOUNT, "userName": role},
            "attributes": {"creationDate": "2026-12-02T07:59:00Z", "mfaAuthenticated": "false"}
        }
    })
}

/// PutEvents, as CloudTrail's delivery to the default bus would.
fn put(moto: &Moto, source: &str, detail: &Value) {
    let out = moto.call(
        "events",
        "put_events",
        json!({ "Entries": [{ "Source": source, "DetailType": "AWS API Call via CloudTrail", "Detail": detail.to_string() }] }),
    );
    assert_eq!(out["FailedEntryCount"], 0, "{out}");
}

fn drift_events(moto: &Moto) -> Vec<palisade::history::Event> {
    palisade::history::Store::open(&moto.state.path().join("history.db"))
        .unwrap()
        .events(&palisade::history::Filter::default())
        .unwrap()
        .into_iter()
        .filter(|e| e.event.kind() == "drift-detected")
        .collect()
}

fn actor_of(e: &palisade::history::Event) -> Option<palisade_providers::Actor> {
    match e.event.data() {
        Some(EventData::DriftDetected(d)) => d.actor.as_deref().cloned(),
        _ => None,
    }
}

#[test]
fn events_revert_drift_in_seconds_without_a_resync_and_name_who() {
    let Some(moto) = Moto::start() else { return };
    moto.seed(20);
    let repo = GitRepo::with_example();

    // What `events setup` prints is what is deployed: the rule's pattern, to a queue.
    let out = moto
        .palisade()
        .args([
            "events",
            "setup",
            "--target",
            "prod-aws",
            "--format",
            "json",
            "--policies",
        ])
        .arg(repo.work().join("policies"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let setup: Value = serde_json::from_slice(&out.stdout).unwrap();
    let queue = moto.call(
        "sqs",
        "create_queue",
        json!({ "QueueName": "palisade-events" }),
    );
    let url = queue["QueueUrl"].as_str().unwrap().to_string();
    let arn = moto.call(
        "sqs",
        "get_queue_attributes",
        json!({ "QueueUrl": url, "AttributeNames": ["QueueArn"] }),
    )["Attributes"]["QueueArn"]
        .as_str()
        .unwrap()
        .to_string();
    moto.call(
        "events",
        "put_rule",
        json!({ "Name": "palisade-prod-aws-changes", "EventPattern": setup["eventPattern"].to_string() }),
    );
    moto.call(
        "events",
        "put_targets",
        json!({ "Rule": "palisade-prod-aws-changes", "Targets": [{ "Id": "palisade", "Arn": arn }] }),
    );

    let c = Controller::start(
        &moto,
        &repo,
        &["--resync", "10m", "--aws-events-queue", &url],
    );
    let head = repo.git(&["rev-parse", "HEAD"]);
    c.wait(120, "first revision enforced and reconciled", |c| {
        c.ready_at(&head)
    });
    let resyncs =
        || c.metric("palisade_reconcile_triggers_total{target=\"prod-aws\",trigger=\"resync\"}");
    let api = group_id(&moto, "palisade-payments-api");
    let declared = ingress(&moto, &api);

    // 1. An assumed role (a person through SSO) opens SSH to the world.
    moto.call("ec2", "authorize_security_group_ingress", json!({
        "GroupId": api,
        "IpPermissions": [{ "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{ "CidrIp": "0.0.0.0/0" }] }]
    }));
    put(
        &moto,
        "aws.ec2",
        &record(
            "ec2.amazonaws.com",
            "AuthorizeSecurityGroupIngress",
            assumed(
                "AWSReservedSSO_Admin_0123456789abcdef",
                "mallory@example.com",
            ),
            json!({ "groupId": api, "ipPermissions": { "items": [{ "ipProtocol": "tcp", "fromPort": 22, "toPort": 22, "ipRanges": { "items": [{ "cidrIp": "0.0.0.0/0" }] } }] } }),
            json!({ "_return": true, "securityGroupRuleSet": { "items": [{ "groupId": api, "securityGroupRuleId": "sgr-0123456789abcdef0" }] } }),
            1,
        ),
    );
    c.wait(60, "the SSH rule reverted from the event", |_| {
        ingress(&moto, &api) == declared
    });

    // 2. CloudFormation, through its execution role, adds RDP: the group id is only in
    //    the response (`securityGroupRuleSet`).
    moto.call("ec2", "authorize_security_group_ingress", json!({
        "GroupId": api,
        "IpPermissions": [{ "IpProtocol": "tcp", "FromPort": 3389, "ToPort": 3389, "IpRanges": [{ "CidrIp": "10.0.0.0/8" }] }]
    }));
    let mut cfn = assumed("cfn-exec", "AWSCloudFormation");
    cfn["invokedBy"] = json!("cloudformation.amazonaws.com");
    put(
        &moto,
        "aws.ec2",
        &record(
            "ec2.amazonaws.com",
            "AuthorizeSecurityGroupIngress",
            cfn,
            json!({ "ipPermissions": { "items": [{ "ipProtocol": "tcp", "fromPort": 3389, "toPort": 3389 }] } }),
            json!({ "requestId": "r", "_return": true, "securityGroupRuleSet": { "items": [{ "groupId": api, "securityGroupRuleId": "sgr-0fedcba9876543210", "isEgress": false }] } }),
            2,
        ),
    );
    c.wait(60, "the RDP rule reverted from the event", |_| {
        ingress(&moto, &api) == declared
    });

    // 3. Lambda's versioned API name: a function taken out of its VPC.
    moto.call("lambda", "update_function_configuration", json!({
        "FunctionName": "payments-api-0000", "VpcConfig": { "SubnetIds": [], "SecurityGroupIds": [] }
    }));
    put(
        &moto,
        "aws.lambda",
        &record(
            "lambda.amazonaws.com",
            "UpdateFunctionConfiguration20150331v2",
            json!({ "type": "IAMUser", "principalId": "AIDAEXAMPLE", "arn": format!("arn:aws:iam::{ACCOUNT}:user/deploy-bot"), "accountId": ACCOUNT, "userName": "deploy-bot" }),
            json!({ "functionName": "payments-api-0000", "vpcConfig": { "subnetIds": [], "securityGroupIds": [] } }),
            json!({ "functionName": "payments-api-0000", "functionArn": format!("arn:aws:lambda:us-east-1:{ACCOUNT}:function:payments-api-0000") }),
            3,
        ),
    );
    c.wait(60, "the function back in its VPC from the event", |_| {
        let f = moto.call(
            "lambda",
            "get_function_configuration",
            json!({ "FunctionName": "payments-api-0000" }),
        );
        f["VpcConfig"]["SubnetIds"]
            .as_array()
            .is_some_and(|s| !s.is_empty())
    });

    // 4. What must never crash or trigger anything: a malformed body and an event of
    //    another account (sent to the queue directly), and Palisade's own write (the
    //    request id moto answered its revert with).
    moto.call(
        "sqs",
        "send_message",
        json!({ "QueueUrl": url, "MessageBody": "{ not json" }),
    );
    let foreign: Value = json!({
        "version": "0", "id": "x", "detail-type": "AWS API Call via CloudTrail", "source": "aws.ec2",
        "account": "999999999999", "time": jiff::Timestamp::now().to_string(), "region": "us-east-1", "resources": [],
        "detail": record("ec2.amazonaws.com", "RevokeSecurityGroupIngress", assumed("x", "y"), json!({ "groupId": api }), json!({}), 9)
    });
    moto.call(
        "sqs",
        "send_message",
        json!({ "QueueUrl": url, "MessageBody": foreign.to_string() }),
    );
    c.wait(30, "malformed and foreign counted", |c| {
        c.metric("palisade_events_dropped_total{reason=\"malformed\"}") >= 1.0
            && c.metric("palisade_events_dropped_total{reason=\"foreign\"}") >= 1.0
    });
    let own_request = palisade::history::Store::open(&moto.state.path().join("history.db"))
        .unwrap()
        .events(&palisade::history::Filter::default())
        .unwrap()
        .into_iter()
        .find_map(|e| match e.event.data() {
            Some(EventData::ChangeApplied(r)) => r.request_ids.first().cloned(),
            _ => None,
        })
        .expect("a change with the request id AWS answered");
    let mut own = record(
        "ec2.amazonaws.com",
        "RevokeSecurityGroupIngress",
        assumed("x", "y"),
        json!({ "groupId": api }),
        json!({ "_return": true }),
        10,
    );
    own["requestID"] = json!(own_request);
    put(&moto, "aws.ec2", &own);
    c.wait(30, "Palisade's own write dropped", |c| {
        c.metric("palisade_events_dropped_total{reason=\"own\"}") >= 1.0
    });

    // Every revert came from an event: no resync ran (it is ten minutes away).
    assert_eq!(resyncs(), 0.0, "{}", c.logs());
    assert!(
        c.metric("palisade_reconcile_triggers_total{target=\"prod-aws\",trigger=\"event\"}") >= 3.0
    );
    assert!(c.metric("palisade_event_reconcile_lag_seconds_count") >= 3.0);
    // Every message was deleted: nothing waits in the queue.
    c.wait(30, "the queue drained", |_| {
        let a = moto.call("sqs", "get_queue_attributes", json!({ "QueueUrl": url, "AttributeNames": ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"] }));
        a["Attributes"]["ApproximateNumberOfMessages"] == "0"
            && a["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0"
    });

    // Who did it, from the events.
    c.wait(30, "the drift recorded", |_| drift_events(&moto).len() >= 3);
    let drift = drift_events(&moto);
    let actors: Vec<palisade_providers::Actor> = drift.iter().filter_map(actor_of).collect();
    let by_issuer = |issuer: &str| actors.iter().find(|a| a.issuer.as_deref() == Some(issuer));
    let sso = by_issuer(&format!(
        "arn:aws:iam::{ACCOUNT}:role/AWSReservedSSO_Admin_0123456789abcdef"
    ))
    .unwrap_or_else(|| panic!("the SSH drift names the SSO session: {drift:?}"));
    assert_eq!(sso.name.as_deref(), Some("mallory@example.com"));
    assert_eq!(sso.source_ip.as_deref(), Some("198.51.100.20"));
    let cfn = by_issuer(&format!("arn:aws:iam::{ACCOUNT}:role/cfn-exec"))
        .expect("the RDP drift names CloudFormation's role");
    assert_eq!(
        cfn.invoked_by.as_deref(),
        Some("cloudformation.amazonaws.com")
    );
    assert!(
        actors.iter().any(
            |a| a.id == format!("arn:aws:iam::{ACCOUNT}:user/deploy-bot")
                && a.operation.as_deref() == Some("UpdateFunctionConfiguration20150331v2")
        ),
        "the placement drift names the IAM user: {actors:?}"
    );
    assert_eq!(c.http("GET", "/healthz", &[], "").0, 200);
    let (_, page) = c.http("GET", "/", &[], "");
    assert!(
        page.contains("id=\"event-queues\"") && page.contains("palisade-events"),
        "the status page shows the queue"
    );
    assert!(
        c.status()["eventQueues"][&url]["lastError"].is_null(),
        "{}",
        c.status()
    );
}
