//! The AWS provider against the SDK's own mocks, for what moto cannot produce: results
//! over many pages, throttling, `ResourceConflictException`, `InProgress` updates,
//! `DependencyViolation`, duplicate and missing rules, groups that are not Palisade's.
#![cfg(feature = "aws")]

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::error::ErrorMetadata;
use aws_sdk_ec2::operation as ec2op;
use aws_sdk_ec2::types as ec2;
use aws_sdk_lambda::operation as lop;
use aws_sdk_lambda::types as lambda;
use aws_sdk_resourcegroupstagging::operation::get_resources::GetResourcesOutput;
use aws_sdk_resourcegroupstagging::types::{ResourceTagMapping, Tag as TagT};
use aws_sdk_sts::operation::get_caller_identity::GetCallerIdentityOutput;
use aws_smithy_mocks::{Rule as MockRule, RuleMode, mock, mock_client};
use palisade_providers::aws::{AwsProvider, AwsSettings, Clients};
use palisade_providers::{
    CallKind, CallOutcome, Change, Direction, GroupRef, OutcomeStatus, Peer, Placement, PortRange,
    Ports, Protocol, Provider, ProviderError, Rule, Target, TargetScope, total_calls,
};

const ACCOUNT: &str = "123456789012";

fn target() -> Target {
    Target {
        name: "prod".into(),
        scope: TargetScope::Aws {
            region: "us-east-1".into(),
            account_id: ACCOUNT.into(),
            assume_role_arn: None,
        },
    }
}

fn fast() -> AwsSettings {
    AwsSettings {
        rates: "ec2-read=10000/10000,ec2-write=10000/10000,lambda-read=10000/10000,lambda-write=10000/10000,tagging=10000/10000,sts=10000/10000,cloudtrail=10000/10000"
            .parse()
            .unwrap(),
        poll_interval: Duration::from_millis(1),
        conflict_delay: Duration::from_millis(1),
        update_wait: Duration::from_secs(5),
        retry_delay: Duration::from_millis(1),
        max_attempts: 3,
        ..AwsSettings::default()
    }
}

/// As in production: the SDK does not retry; Palisade's call layer does.
fn no_sdk_retries(c: aws_sdk_ec2::config::Builder) -> aws_sdk_ec2::config::Builder {
    c.retry_config(aws_sdk_ec2::config::retry::RetryConfig::disabled())
}

fn sts(account: &'static str) -> MockRule {
    mock!(aws_sdk_sts::Client::get_caller_identity).then_output(move || {
        GetCallerIdentityOutput::builder()
            .account(account)
            .arn(format!("arn:aws:iam::{account}:user/ci"))
            .build()
    })
}

async fn provider(
    ec2_rules: &[&MockRule],
    lambda_rules: &[&MockRule],
    tagging_rules: &[&MockRule],
) -> AwsProvider {
    provider_with_trail(ec2_rules, lambda_rules, tagging_rules, &[]).await
}

async fn provider_with_trail(
    ec2_rules: &[&MockRule],
    lambda_rules: &[&MockRule],
    tagging_rules: &[&MockRule],
    cloudtrail_rules: &[&MockRule],
) -> AwsProvider {
    let sts_rule = sts(ACCOUNT);
    let clients = Clients {
        ec2: mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            ec2_rules.iter().copied(),
            no_sdk_retries
        ),
        lambda: mock_client!(
            aws_sdk_lambda,
            RuleMode::MatchAny,
            lambda_rules.iter().copied()
        ),
        tagging: mock_client!(
            aws_sdk_resourcegroupstagging,
            RuleMode::MatchAny,
            tagging_rules.iter().copied()
        ),
        sts: mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&sts_rule]),
        cloudtrail: mock_client!(
            aws_sdk_cloudtrail,
            RuleMode::MatchAny,
            cloudtrail_rules.iter().copied()
        ),
    };
    let p = AwsProvider::new(fast());
    p.connect(&target(), clients)
        .await
        .expect("identity verified");
    p
}

fn code(c: &str, message: &str) -> ErrorMetadata {
    ErrorMetadata::builder().code(c).message(message).build()
}

fn tag(k: &str, v: &str) -> ec2::Tag {
    ec2::Tag::builder().key(k).value(v).build()
}

fn owned(owner: &str) -> Vec<ec2::Tag> {
    vec![
        tag("palisade:managed-by", "palisade"),
        tag("palisade:policy", owner),
    ]
}

/// A page of `items` starting after `token`, of at most `min(asked, max)` items.
fn page<T: Clone>(
    items: &[T],
    token: Option<&str>,
    asked: Option<i32>,
    max: usize,
) -> (Vec<T>, Option<String>) {
    let start: usize = token.map_or(0, |t| t.parse().unwrap());
    let size = asked.map_or(max, |a| (a as usize).min(max));
    let end = (start + size).min(items.len());
    let next = (end < items.len()).then(|| end.to_string());
    (items[start..end].to_vec(), next)
}

#[tokio::test]
async fn observe_reads_every_page_at_real_page_sizes() {
    let (reads, minimal) = observe_estate(1000, 200).await;
    assert_eq!(reads, minimal);
}

/// Read calls of one observation vs estate size: they grow with pages, not resources.
#[tokio::test]
async fn read_calls_grow_with_pages_not_resources() {
    for functions in [100, 1000, 10_000] {
        let (reads, minimal) = observe_estate(functions, functions / 5).await;
        eprintln!(
            "{functions} functions, {} groups: {reads} read calls (minimal {minimal})",
            functions / 5
        );
        assert_eq!(reads, minimal);
    }
}

/// Observe a mocked estate of `FUNCTIONS` functions and `GROUPS` groups (6 rules each)
/// served at AWS's page sizes; returns (read calls made, minimal pages).
#[allow(non_snake_case)]
async fn observe_estate(FUNCTIONS: usize, GROUPS: usize) -> (usize, usize) {
    const RULES_PER_GROUP: usize = 6;
    let functions: Arc<Vec<lambda::FunctionConfiguration>> = Arc::new(
        (0..FUNCTIONS)
            .map(|i| {
                lambda::FunctionConfiguration::builder()
                    .function_name(format!("f{i}"))
                    .function_arn(format!("arn:aws:lambda:us-east-1:{ACCOUNT}:function:f{i}"))
                    .vpc_config(
                        lambda::VpcConfigResponse::builder()
                            .subnet_ids("subnet-a")
                            .security_group_ids(format!("sg-{:04}", i % GROUPS))
                            .vpc_id("vpc-123abc")
                            .build(),
                    )
                    .build()
            })
            .collect(),
    );
    let tags: Arc<Vec<ResourceTagMapping>> = Arc::new(
        functions
            .iter()
            .map(|f| {
                ResourceTagMapping::builder()
                    .resource_arn(f.function_arn().unwrap())
                    .tags(
                        TagT::builder()
                            .key("app")
                            .value("payments")
                            .build()
                            .unwrap(),
                    )
                    .build()
            })
            .collect(),
    );
    let groups: Arc<Vec<ec2::SecurityGroup>> = Arc::new(
        (0..GROUPS)
            .map(|i| {
                ec2::SecurityGroup::builder()
                    .group_id(format!("sg-{i:04}"))
                    .group_name(format!("g{i}"))
                    .vpc_id("vpc-1")
                    .set_tags(Some(if i % 2 == 0 {
                        owned(&format!("p{i}"))
                    } else {
                        vec![]
                    }))
                    .build()
            })
            .collect(),
    );
    let rules: Arc<Vec<ec2::SecurityGroupRule>> = Arc::new(
        (0..GROUPS * RULES_PER_GROUP)
            .map(|i| {
                ec2::SecurityGroupRule::builder()
                    .security_group_rule_id(format!("sgr-{i}"))
                    .group_id(format!("sg-{:04}", i / RULES_PER_GROUP))
                    .is_egress(false)
                    .ip_protocol("tcp")
                    .from_port(1000 + (i % RULES_PER_GROUP) as i32)
                    .to_port(1000 + (i % RULES_PER_GROUP) as i32)
                    .cidr_ipv4("10.0.0.0/8")
                    .build()
            })
            .collect(),
    );

    let (f, t, g, r) = (
        functions.clone(),
        tags.clone(),
        groups.clone(),
        rules.clone(),
    );
    let list_functions =
        mock!(aws_sdk_lambda::Client::list_functions).then_compute_output(move |req| {
            // ListFunctions: at most 50 per page.
            let (items, next) = page(&f, req.marker(), req.max_items(), 50);
            lop::list_functions::ListFunctionsOutput::builder()
                .set_functions(Some(items))
                .set_next_marker(next)
                .build()
        });
    let get_resources = mock!(aws_sdk_resourcegroupstagging::Client::get_resources)
        .then_compute_output(move |req| {
            // GetResources: at most 100 resources per page; the last page has an empty token.
            let (items, next) = page(
                &t,
                req.pagination_token().filter(|t| !t.is_empty()),
                req.resources_per_page(),
                100,
            );
            GetResourcesOutput::builder()
                .set_resource_tag_mapping_list(Some(items))
                .pagination_token(next.unwrap_or_default())
                .build()
        });
    let describe_groups =
        mock!(aws_sdk_ec2::Client::describe_security_groups).then_compute_output(move |req| {
            let (items, next) = page(&g, req.next_token(), req.max_results(), 1000);
            ec2op::describe_security_groups::DescribeSecurityGroupsOutput::builder()
                .set_security_groups(Some(items))
                .set_next_token(next)
                .build()
        });
    let describe_rules = mock!(aws_sdk_ec2::Client::describe_security_group_rules)
        .then_compute_output(move |req| {
            let (items, next) = page(&r, req.next_token(), req.max_results(), 1000);
            ec2op::describe_security_group_rules::DescribeSecurityGroupRulesOutput::builder()
                .set_security_group_rules(Some(items))
                .set_next_token(next)
                .build()
        });
    let vpcs = mock!(aws_sdk_ec2::Client::describe_vpcs).then_output(|| {
        ec2op::describe_vpcs::DescribeVpcsOutput::builder()
            .vpcs(
                ec2::Vpc::builder()
                    .vpc_id("vpc-1")
                    .cidr_block("10.0.0.0/16")
                    .build(),
            )
            .build()
    });
    let subnets = mock!(aws_sdk_ec2::Client::describe_subnets).then_output(|| {
        ec2op::describe_subnets::DescribeSubnetsOutput::builder()
            .subnets(
                ec2::Subnet::builder()
                    .subnet_id("subnet-a")
                    .vpc_id("vpc-1")
                    .cidr_block("10.0.1.0/24")
                    .build(),
            )
            .build()
    });
    let route_tables = mock!(aws_sdk_ec2::Client::describe_route_tables)
        .then_output(|| ec2op::describe_route_tables::DescribeRouteTablesOutput::builder().build());
    let endpoints = mock!(aws_sdk_ec2::Client::describe_vpc_endpoints).then_output(|| {
        ec2op::describe_vpc_endpoints::DescribeVpcEndpointsOutput::builder().build()
    });
    let prefix_lists = mock!(aws_sdk_ec2::Client::describe_prefix_lists)
        .then_output(|| ec2op::describe_prefix_lists::DescribePrefixListsOutput::builder().build());

    let p = provider(
        &[
            &describe_groups,
            &describe_rules,
            &vpcs,
            &subnets,
            &route_tables,
            &endpoints,
            &prefix_lists,
        ],
        &[&list_functions],
        &[&get_resources],
    )
    .await;
    let inv = p
        .observe(&target(), &palisade_providers::Ownership::default())
        .await
        .unwrap();

    assert_eq!(inv.functions.len(), FUNCTIONS);
    assert!(
        inv.functions
            .iter()
            .all(|f| f.tags.get("app").map(String::as_str) == Some("payments"))
    );
    assert_eq!(
        inv.functions[0].placement.as_ref().unwrap().network,
        "vpc-1"
    );
    assert_eq!(inv.groups.len(), GROUPS);
    assert!(inv.groups.iter().all(|g| g.rules.len() == RULES_PER_GROUP));
    assert_eq!(
        inv.functions[2].placement.as_ref().unwrap().groups,
        vec![GroupRef::Managed("p2".into())]
    );

    // The fewest pages AWS can serve this in: 20 + 10 + 1 + 2 + one each for VPCs,
    // subnets, route tables, endpoints and prefix lists; plus the identity check.
    let minimal = FUNCTIONS.div_ceil(50)
        + FUNCTIONS.div_ceil(100)
        + GROUPS.div_ceil(1000)
        + (GROUPS * RULES_PER_GROUP).div_ceil(1000)
        + 5
        + 1;
    let calls = p.api_calls();
    let reads = total_calls(&calls, CallKind::Read) as usize;
    eprintln!(
        "observe of {FUNCTIONS} functions / {GROUPS} groups: {reads} read calls (minimal {minimal}): {calls:?}"
    );
    assert_eq!(list_functions.num_calls(), FUNCTIONS.div_ceil(50));
    assert_eq!(get_resources.num_calls(), FUNCTIONS.div_ceil(100));
    assert_eq!(
        describe_rules.num_calls(),
        (GROUPS * RULES_PER_GROUP).div_ceil(1000)
    );
    assert_eq!(total_calls(&calls, CallKind::Write), 0);
    (reads, minimal)
}

fn empty_observe_rules() -> Vec<MockRule> {
    vec![
        mock!(aws_sdk_ec2::Client::describe_security_groups).then_output(|| {
            ec2op::describe_security_groups::DescribeSecurityGroupsOutput::builder().build()
        }),
        mock!(aws_sdk_ec2::Client::describe_security_group_rules).then_output(|| {
            ec2op::describe_security_group_rules::DescribeSecurityGroupRulesOutput::builder()
                .build()
        }),
        mock!(aws_sdk_ec2::Client::describe_subnets)
            .then_output(|| ec2op::describe_subnets::DescribeSubnetsOutput::builder().build()),
        mock!(aws_sdk_ec2::Client::describe_route_tables).then_output(|| {
            ec2op::describe_route_tables::DescribeRouteTablesOutput::builder().build()
        }),
        mock!(aws_sdk_ec2::Client::describe_vpc_endpoints).then_output(|| {
            ec2op::describe_vpc_endpoints::DescribeVpcEndpointsOutput::builder().build()
        }),
        mock!(aws_sdk_ec2::Client::describe_prefix_lists).then_output(|| {
            ec2op::describe_prefix_lists::DescribePrefixListsOutput::builder().build()
        }),
    ]
}

#[tokio::test]
async fn throttling_is_retried_by_the_sdk_then_reported_and_counted() {
    let throttled = || {
        ec2op::describe_vpcs::DescribeVpcsError::generic(code(
            "RequestLimitExceeded",
            "Request limit exceeded.",
        ))
    };
    // Twice throttled, then served: Palisade's retries absorb it, and every attempt is
    // counted (the SDK's own retries used to be invisible here).
    let vpcs = mock!(aws_sdk_ec2::Client::describe_vpcs)
        .sequence()
        .error(throttled)
        .times(2)
        .output(|| ec2op::describe_vpcs::DescribeVpcsOutput::builder().build())
        .build();
    let rest = empty_observe_rules();
    let mut ec2_rules: Vec<&MockRule> = rest.iter().collect();
    ec2_rules.push(&vpcs);
    let functions = mock!(aws_sdk_lambda::Client::list_functions)
        .then_output(|| lop::list_functions::ListFunctionsOutput::builder().build());
    let tags = mock!(aws_sdk_resourcegroupstagging::Client::get_resources)
        .then_output(|| GetResourcesOutput::builder().build());
    let p = provider(&ec2_rules, &[&functions], &[&tags]).await;
    p.observe(&target(), &palisade_providers::Ownership::default())
        .await
        .expect("retries absorb two throttles");
    assert_eq!(vpcs.num_calls(), 3);
    let vpc_calls: Vec<(CallOutcome, u64)> = p
        .api_calls()
        .iter()
        .filter(|c| c.operation == "DescribeVpcs")
        .map(|c| (c.outcome, c.count))
        .collect();
    assert!(
        vpc_calls.contains(&(CallOutcome::Throttled, 2))
            && vpc_calls.contains(&(CallOutcome::Ok, 1)),
        "{vpc_calls:?}"
    );

    // Throttled beyond the attempts: a Throttled error, each attempt counted as such.
    let always = mock!(aws_sdk_ec2::Client::describe_vpcs).then_error(throttled);
    let mut ec2_rules: Vec<&MockRule> = rest.iter().collect();
    ec2_rules.push(&always);
    let lambda_throttle = mock!(aws_sdk_lambda::Client::list_functions).then_error(|| {
        lop::list_functions::ListFunctionsError::TooManyRequestsException(
            lambda::error::TooManyRequestsException::builder()
                .message("Rate exceeded")
                .meta(code("TooManyRequestsException", "Rate exceeded"))
                .build(),
        )
    });
    let p = provider(&ec2_rules, &[&lambda_throttle], &[&tags]).await;
    let err = p
        .observe(&target(), &palisade_providers::Ownership::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Throttled { .. }), "{err:?}");
    assert!(err.is_retryable());
    let throttles: u64 = p
        .api_calls()
        .iter()
        .filter(|c| c.outcome == CallOutcome::Throttled)
        .map(|c| c.count)
        .sum();
    assert!(throttles >= 3, "{:?}", p.api_calls());
    assert_eq!(always.num_calls(), 3, "max_attempts bounds the retries");
}

fn update_output(
    status: lambda::LastUpdateStatus,
) -> lop::update_function_configuration::UpdateFunctionConfigurationOutput {
    lop::update_function_configuration::UpdateFunctionConfigurationOutput::builder()
        .function_name("pay-1")
        .last_update_status(status)
        .build()
}

fn placement() -> Placement {
    Placement {
        network: "vpc-1".into(),
        subnets: vec!["subnet-a".into(), "subnet-b".into()],
        groups: vec![GroupRef::Id("sg-1".into())],
        route_all: false,
    }
}

fn set_placement() -> Change {
    Change::SetPlacement {
        function: "arn:pay-1".into(),
        name: "pay-1".into(),
        before: None,
        after: Some(placement()),
    }
}

#[tokio::test]
async fn busy_function_is_retried_and_the_update_is_waited_for() {
    let conflict = || {
        lop::update_function_configuration::UpdateFunctionConfigurationError::ResourceConflictException(
            lambda::error::ResourceConflictException::builder()
                .message("The operation cannot be performed at this time. An update is in progress for resource: pay-1")
                .meta(code("ResourceConflictException", "An update is in progress"))
                .build(),
        )
    };
    let update = mock!(aws_sdk_lambda::Client::update_function_configuration)
        .match_requests(|req| {
            // Both keys, always.
            let v = req.vpc_config().unwrap();
            v.subnet_ids() == ["subnet-a", "subnet-b"] && v.security_group_ids() == ["sg-1"]
        })
        .sequence()
        .error(conflict)
        .times(2)
        .output(|| update_output(lambda::LastUpdateStatus::InProgress))
        .build();
    let get = mock!(aws_sdk_lambda::Client::get_function_configuration)
        .sequence()
        .output(|| {
            lop::get_function_configuration::GetFunctionConfigurationOutput::builder()
                .last_update_status(lambda::LastUpdateStatus::InProgress)
                .build()
        })
        .times(2)
        .output(|| {
            lop::get_function_configuration::GetFunctionConfigurationOutput::builder()
                .last_update_status(lambda::LastUpdateStatus::Successful)
                .build()
        })
        .build();
    let p = provider(&[], &[&update, &get], &[]).await;
    let out = p.apply(&target(), &set_placement()).await.unwrap();
    assert_eq!(out.status, OutcomeStatus::Applied);
    assert_eq!(update.num_calls(), 3, "two conflicts, then accepted");
    assert_eq!(get.num_calls(), 3, "polled until Successful");

    // Taking a function out of its VPC sends two empty lists, never a missing key.
    let clear = mock!(aws_sdk_lambda::Client::update_function_configuration)
        .match_requests(|req| {
            let v = req.vpc_config().unwrap();
            v.subnet_ids.as_ref().is_some_and(Vec::is_empty)
                && v.security_group_ids.as_ref().is_some_and(Vec::is_empty)
        })
        .then_output(|| update_output(lambda::LastUpdateStatus::Successful));
    let p = provider(&[], &[&clear], &[]).await;
    let change = Change::SetPlacement {
        function: "arn:pay-1".into(),
        name: "pay-1".into(),
        before: Some(placement()),
        after: None,
    };
    assert_eq!(
        p.apply(&target(), &change).await.unwrap().status,
        OutcomeStatus::Applied
    );
    assert_eq!(clear.num_calls(), 1);
}

#[tokio::test]
async fn failed_update_keeps_lambdas_reason() {
    let update = mock!(aws_sdk_lambda::Client::update_function_configuration)
        .then_output(|| update_output(lambda::LastUpdateStatus::InProgress));
    let get = mock!(aws_sdk_lambda::Client::get_function_configuration).then_output(|| {
        lop::get_function_configuration::GetFunctionConfigurationOutput::builder()
            .last_update_status(lambda::LastUpdateStatus::Failed)
            .last_update_status_reason_code(
                lambda::LastUpdateStatusReasonCode::SubnetOutOfIpAddresses,
            )
            .last_update_status_reason("subnet-a has no free addresses")
            .build()
    });
    let p = provider(&[], &[&update, &get], &[]).await;
    match p.apply(&target(), &set_placement()).await.unwrap_err() {
        ProviderError::Api { code, message, .. } => {
            assert_eq!(code, "SubnetOutOfIPAddresses");
            assert_eq!(message, "subnet-a has no free addresses");
        }
        other => panic!("{other:?}"),
    }
}

fn describe_owned(id: &'static str, owner: &'static str) -> MockRule {
    mock!(aws_sdk_ec2::Client::describe_security_groups)
        .match_requests(move |req| req.group_ids() == [id])
        .then_output(move || {
            ec2op::describe_security_groups::DescribeSecurityGroupsOutput::builder()
                .security_groups(
                    ec2::SecurityGroup::builder()
                        .group_id(id)
                        .set_tags(Some(if owner.is_empty() {
                            vec![]
                        } else {
                            owned(owner)
                        }))
                        .build(),
                )
                .build()
        })
}

#[tokio::test]
async fn group_in_use_is_a_pending_deletion_and_a_gone_one_is_done() {
    let describe = describe_owned("sg-1", "old-policy");
    let delete = mock!(aws_sdk_ec2::Client::delete_security_group)
        .sequence()
        .error(|| {
            ec2op::delete_security_group::DeleteSecurityGroupError::generic(code(
                "DependencyViolation",
                "resource sg-1 has a dependent object",
            ))
        })
        .error(|| {
            ec2op::delete_security_group::DeleteSecurityGroupError::generic(code(
                "InvalidGroup.NotFound",
                "The security group 'sg-1' does not exist",
            ))
        })
        .build();
    let p = provider(&[&describe, &delete], &[], &[]).await;
    let change = Change::DeleteGroup {
        owner: "old-policy".into(),
        id: "sg-1".into(),
    };
    let first = p.apply(&target(), &change).await.unwrap();
    assert_eq!(first.status, OutcomeStatus::Pending);
    assert!(first.detail.unwrap().contains("45 minutes"));
    let second = p.apply(&target(), &change).await.unwrap();
    assert_eq!(second.status, OutcomeStatus::AlreadyDone);
}

fn tcp(port: u16) -> Ports {
    Ports {
        protocol: Protocol::Tcp,
        range: Some(PortRange {
            from: port,
            to: port,
        }),
        icmp: None,
    }
}

#[tokio::test]
async fn duplicate_rules_are_already_there_and_missing_ones_already_gone() {
    let describe = describe_owned("sg-1", "api");
    let dup = || {
        ec2op::authorize_security_group_ingress::AuthorizeSecurityGroupIngressError::generic(code(
            "InvalidPermission.Duplicate",
            "the specified rule already exists",
        ))
    };
    // The batch fails on the duplicate; then one by one: the first exists, the second is new.
    let authorize = mock!(aws_sdk_ec2::Client::authorize_security_group_ingress)
        .sequence()
        .error(dup)
        .error(dup)
        .output(|| {
            ec2op::authorize_security_group_ingress::AuthorizeSecurityGroupIngressOutput::builder()
                .r#return(true)
                .build()
        })
        .build();
    let revoke = mock!(aws_sdk_ec2::Client::revoke_security_group_ingress)
        .match_requests(|req| req.security_group_rule_ids() == ["sgr-gone"])
        .then_error(|| {
            ec2op::revoke_security_group_ingress::RevokeSecurityGroupIngressError::generic(code(
                "InvalidSecurityGroupRuleId.NotFound",
                "not found",
            ))
        });
    let p = provider(&[&describe, &authorize, &revoke], &[], &[]).await;
    let rules = vec![
        Rule::allow(
            Direction::Ingress,
            tcp(443),
            Peer::Cidr("10.0.0.0/16".parse().unwrap()),
        ),
        Rule::allow(
            Direction::Ingress,
            tcp(8443),
            Peer::Cidr("10.0.0.0/16".parse().unwrap()),
        ),
    ];
    let out = p
        .apply(
            &target(),
            &Change::AddRules {
                group: GroupRef::Id("sg-1".into()),
                rules,
            },
        )
        .await
        .unwrap();
    assert_eq!(out.status, OutcomeStatus::Applied);
    assert_eq!(authorize.num_calls(), 3);

    let mut gone = Rule::allow(
        Direction::Ingress,
        tcp(22),
        Peer::Cidr("0.0.0.0/0".parse().unwrap()),
    );
    gone.id = Some("sgr-gone".into());
    let out = p
        .apply(
            &target(),
            &Change::RemoveRules {
                group: GroupRef::Id("sg-1".into()),
                rules: vec![gone],
            },
        )
        .await
        .unwrap();
    assert_eq!(out.status, OutcomeStatus::AlreadyDone);
}

#[tokio::test]
async fn a_group_without_the_ownership_tag_is_never_written() {
    let describe = describe_owned("sg-theirs", "");
    let authorize =
        mock!(aws_sdk_ec2::Client::authorize_security_group_ingress).then_output(|| {
            ec2op::authorize_security_group_ingress::AuthorizeSecurityGroupIngressOutput::builder()
                .build()
        });
    let delete = mock!(aws_sdk_ec2::Client::delete_security_group)
        .then_output(|| ec2op::delete_security_group::DeleteSecurityGroupOutput::builder().build());
    let p = provider(&[&describe, &authorize, &delete], &[], &[]).await;
    let add = Change::AddRules {
        group: GroupRef::Id("sg-theirs".into()),
        rules: vec![Rule::allow(
            Direction::Ingress,
            tcp(443),
            Peer::Cidr("10.0.0.0/16".parse().unwrap()),
        )],
    };
    let err = p.apply(&target(), &add).await.unwrap_err();
    assert_eq!(
        err.refusal(),
        Some(palisade_providers::RefusalKind::NotOwned),
        "{err}"
    );
    let del = Change::DeleteGroup {
        owner: "x".into(),
        id: "sg-theirs".into(),
    };
    assert!(p.apply(&target(), &del).await.is_err());
    assert_eq!(
        authorize.num_calls() + delete.num_calls(),
        0,
        "no write reached AWS"
    );
}

#[tokio::test]
async fn created_group_loses_its_default_egress_and_a_taken_name_is_refused() {
    let create = mock!(aws_sdk_ec2::Client::create_security_group)
        .match_requests(|req| {
            req.tag_specifications()[0]
                .tags()
                .iter()
                .any(|t| t.key() == Some("palisade:managed-by") && t.value() == Some("palisade"))
        })
        .sequence()
        .output(|| {
            ec2op::create_security_group::CreateSecurityGroupOutput::builder()
                .group_id("sg-new")
                .build()
        })
        .error(|| {
            ec2op::create_security_group::CreateSecurityGroupError::generic(code(
                "InvalidGroup.Duplicate",
                "already exists",
            ))
        })
        .build();
    let revoke = mock!(aws_sdk_ec2::Client::revoke_security_group_egress)
        .match_requests(|req| {
            let p = &req.ip_permissions()[0];
            req.group_id() == Some("sg-new")
                && p.ip_protocol() == Some("-1")
                && p.ip_ranges()[0].cidr_ip() == Some("0.0.0.0/0")
        })
        .then_output(|| {
            ec2op::revoke_security_group_egress::RevokeSecurityGroupEgressOutput::builder()
                .r#return(true)
                .build()
        });
    let by_name = mock!(aws_sdk_ec2::Client::describe_security_groups).then_output(|| {
        ec2op::describe_security_groups::DescribeSecurityGroupsOutput::builder()
            .security_groups(
                ec2::SecurityGroup::builder()
                    .group_id("sg-hand")
                    .group_name("palisade-api")
                    .build(),
            )
            .build()
    });
    let p = provider(&[&create, &revoke, &by_name], &[], &[]).await;
    let change = Change::CreateGroup {
        owner: "api".into(),
        name: "palisade-api".into(),
        network: "vpc-1".into(),
        description: "Palisade: api".into(),
        tags: palisade_providers::model::ownership_tags("api"),
    };
    let out = p.apply(&target(), &change).await.unwrap();
    assert_eq!(out.created_id.as_deref(), Some("sg-new"));
    assert_eq!(revoke.num_calls(), 1, "default egress revoked");
    let err = p.apply(&target(), &change).await.unwrap_err();
    assert_eq!(
        err.refusal(),
        Some(palisade_providers::RefusalKind::NameTaken),
        "{err}"
    );
}

#[tokio::test]
async fn the_wrong_account_is_refused() {
    let wrong = sts("999999999999");
    let clients = Clients {
        ec2: mock_client!(aws_sdk_ec2, RuleMode::MatchAny, Vec::<&MockRule>::new()),
        lambda: mock_client!(aws_sdk_lambda, RuleMode::MatchAny, Vec::<&MockRule>::new()),
        tagging: mock_client!(
            aws_sdk_resourcegroupstagging,
            RuleMode::MatchAny,
            Vec::<&MockRule>::new()
        ),
        sts: mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&wrong]),
        cloudtrail: mock_client!(
            aws_sdk_cloudtrail,
            RuleMode::MatchAny,
            Vec::<&MockRule>::new()
        ),
    };
    let err = AwsProvider::new(fast())
        .connect(&target(), clients)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("999999999999") && msg.contains(ACCOUNT) && msg.contains("refusing"),
        "{msg}"
    );
}

/// CloudTrail `LookupEvents` (moto has none): the newest successful write on the
/// resource that Palisade did not make is the author, over pages, one lookup per
/// resource, counted; a function is looked up by its ARN, then by its name.
#[tokio::test]
async fn cloudtrail_names_who_made_a_drift() {
    use aws_sdk_cloudtrail::operation::lookup_events::LookupEventsOutput;
    use aws_sdk_cloudtrail::types::Event as TrailEvent;
    let event = |id: &str, time: &str, who: &str, read_only: &str| {
        TrailEvent::builder()
            .event_id(id)
            .cloud_trail_event(
                serde_json::json!({
                    "eventID": id, "eventTime": time, "eventName": "AuthorizeSecurityGroupIngress",
                    "requestID": format!("req-{id}"), "readOnly": read_only == "true",
                    "sourceIPAddress": "203.0.113.5",
                    "userIdentity": {
                        "type": "AssumedRole",
                        "arn": format!("arn:aws:sts::123456789012:assumed-role/{who}/session-1"),
                        "sessionContext": { "sessionIssuer": { "arn": format!("arn:aws:iam::123456789012:role/{who}") } }
                    }
                })
                .to_string(),
            )
            .build()
    };
    let page1 = mock!(aws_sdk_cloudtrail::Client::lookup_events)
        .match_requests(|r| {
            r.next_token().is_none()
                && r.lookup_attributes()
                    .first()
                    .is_some_and(|a| a.attribute_value() == "sg-0123")
        })
        .then_output(move || {
            LookupEventsOutput::builder()
                .events(event("e3", "2026-12-01T10:03:00Z", "reader", "true"))
                .next_token("more")
                .build()
        });
    let page2 = mock!(aws_sdk_cloudtrail::Client::lookup_events)
        .match_requests(|r| r.next_token() == Some("more"))
        .then_output(move || {
            LookupEventsOutput::builder()
                .events(event("e2", "2026-12-01T10:02:00Z", "terraform-ci", "false"))
                .events(event("e1", "2026-12-01T10:01:00Z", "older", "false"))
                .build()
        });
    let by_name = mock!(aws_sdk_cloudtrail::Client::lookup_events)
        .match_requests(|r| {
            r.lookup_attributes()
                .first()
                .is_some_and(|a| a.attribute_value() == "payments-api")
        })
        .then_output(move || {
            LookupEventsOutput::builder()
                .events(event(
                    "f1",
                    "2026-12-01T10:04:00Z",
                    "console-admin",
                    "false",
                ))
                .build()
        });
    let nothing = mock!(aws_sdk_cloudtrail::Client::lookup_events)
        .then_output(|| LookupEventsOutput::builder().build());
    let p = provider_with_trail(&[], &[], &[], &[&page1, &page2, &by_name, &nothing]).await;
    let q = |resource: &str| palisade_providers::AttributionQuery {
        resource: resource.into(),
        since_ms: 1_796_119_200_000,
        until_ms: 1_796_122_800_000,
    };
    let actors = p
        .attribute(
            &target(),
            &[
                q("sg-0123"),
                q("arn:aws:lambda:us-east-1:123456789012:function:payments-api"),
                q("vpce-none"),
            ],
        )
        .await
        .unwrap();
    let sg = actors[0].as_ref().expect("the group's author");
    assert_eq!(
        sg.id,
        "arn:aws:sts::123456789012:assumed-role/terraform-ci/session-1"
    );
    assert_eq!(
        sg.issuer.as_deref(),
        Some("arn:aws:iam::123456789012:role/terraform-ci")
    );
    assert_eq!(sg.event_id.as_deref(), Some("e2"));
    let f = actors[1].as_ref().expect("the function's author, by name");
    assert!(f.id.contains("console-admin"), "{f:?}");
    assert!(actors[2].is_none());
    let calls: u64 = p
        .api_calls()
        .iter()
        .filter(|c| c.operation == "LookupEvents")
        .map(|c| c.count)
        .sum();
    assert_eq!(
        calls, 5,
        "two pages, the ARN then the name, one for the endpoint"
    );
}
