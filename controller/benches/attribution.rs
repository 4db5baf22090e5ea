//! What pull attribution costs: a burst of drifts looked up in CloudTrail `LookupEvents`
//! through the AWS provider on the SDK's mocks (moto has no `LookupEvents`), at the
//! default `cloudtrail` budget of 2 calls per second (CloudTrail's own limit per account
//! and region). Half the drifts are on groups (one lookup each), half on functions (by
//! ARN, then by name: two). Prints calls per drift, wall time and the achieved rate.
//! Run: `cargo bench -p palisade --no-default-features --features aws --bench attribution`
//! (100 drifts, about 75 s at 2/s); without `--bench` (as `cargo test` runs it) 4 drifts.
use std::time::Instant;

use aws_sdk_cloudtrail::operation::lookup_events::LookupEventsOutput;
use aws_sdk_cloudtrail::types::Event as TrailEvent;
use aws_sdk_sts::operation::get_caller_identity::GetCallerIdentityOutput;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use palisade_providers::aws::{AwsProvider, AwsSettings, Clients};
use palisade_providers::{AttributionQuery, Provider, Target, TargetScope};

const ACCOUNT: &str = "123456789012";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let drifts = if full { 100 } else { 4 };
    let sts = mock!(aws_sdk_sts::Client::get_caller_identity).then_output(|| {
        GetCallerIdentityOutput::builder()
            .account(ACCOUNT)
            .arn(format!(
                "arn:aws:sts::{ACCOUNT}:assumed-role/palisade/palisade"
            ))
            .build()
    });
    // Every lookup finds one write by a pipeline's role.
    let trail = mock!(aws_sdk_cloudtrail::Client::lookup_events).then_output(|| {
        let e = serde_json::json!({
            "eventID": "e-1", "eventTime": "2026-12-02T08:00:00Z", "eventName": "AuthorizeSecurityGroupIngress",
            "requestID": "r-1", "readOnly": false,
            "userIdentity": {"type": "AssumedRole", "arn": format!("arn:aws:sts::{ACCOUNT}:assumed-role/terraform-ci/run-1"),
                "sessionContext": {"sessionIssuer": {"arn": format!("arn:aws:iam::{ACCOUNT}:role/terraform-ci")}}}
        });
        LookupEventsOutput::builder()
            .events(TrailEvent::builder().event_id("e-1").cloud_trail_event(e.to_string()).build())
            .build()
    });
    let none = || Vec::<&aws_smithy_mocks::Rule>::new();
    let clients = Clients {
        ec2: mock_client!(aws_sdk_ec2, RuleMode::MatchAny, none()),
        lambda: mock_client!(aws_sdk_lambda, RuleMode::MatchAny, none()),
        tagging: mock_client!(aws_sdk_resourcegroupstagging, RuleMode::MatchAny, none()),
        sts: mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&sts]),
        cloudtrail: mock_client!(aws_sdk_cloudtrail, RuleMode::MatchAny, [&trail]),
    };
    let target = Target {
        name: "prod-aws".into(),
        scope: TargetScope::Aws {
            region: "us-east-1".into(),
            account_id: ACCOUNT.into(),
            assume_role_arn: None,
        },
    };
    // The default budgets: cloudtrail=2/2.
    let provider = AwsProvider::new(AwsSettings::default());
    provider.connect(&target, clients).await.expect("connect");
    let queries: Vec<AttributionQuery> = (0..drifts)
        .map(|i| AttributionQuery {
            resource: if i % 2 == 0 {
                format!("sg-{i:017x}")
            } else {
                format!("arn:aws:lambda:us-east-1:{ACCOUNT}:function:f{i:04}")
            },
            since_ms: 1_796_200_000_000,
            until_ms: 1_796_203_600_000,
        })
        .collect();
    let started = Instant::now();
    let actors = provider
        .attribute(&target, &queries)
        .await
        .expect("attribute");
    let elapsed = started.elapsed().as_secs_f64();
    let found = actors.iter().filter(|a| a.is_some()).count();
    let calls: u64 = provider
        .api_calls()
        .iter()
        .filter(|c| c.operation == "LookupEvents")
        .map(|c| c.count)
        .sum();
    assert_eq!(found, drifts, "every drift attributed");
    println!(
        "attribution: {drifts} drifts ({} groups, {} functions) -> {calls} LookupEvents calls ({:.2} per drift), {elapsed:.1} s, {:.2} calls/s (budget 2/s, burst 2)",
        drifts.div_ceil(2),
        drifts / 2,
        calls as f64 / drifts as f64,
        if elapsed > 0.0 {
            calls as f64 / elapsed
        } else {
            0.0
        }
    );
}
