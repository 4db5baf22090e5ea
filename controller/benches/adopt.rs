//! `palisade adopt` of 10,000 functions / 2,000 groups / 12,000 rules through the AWS
//! provider on the SDK's mocks, served at AWS's page sizes (the observe bench's): the
//! read calls (the minimal pages), wall time of observe + attachments + adopt (and of the
//! verify plan), and peak RSS. Run:
//! `cargo bench -p palisade --features aws --bench adopt` (a release build).
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_ec2::operation as ec2op;
use aws_sdk_ec2::types as ec2;
use aws_sdk_lambda::operation as lop;
use aws_sdk_lambda::types as lambda;
use aws_sdk_resourcegroupstagging::operation::get_resources::GetResourcesOutput;
use aws_sdk_resourcegroupstagging::types::{ResourceTagMapping, Tag as TagT};
use aws_sdk_sts::operation::get_caller_identity::GetCallerIdentityOutput;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use palisade::adopt::{self, Options};
use palisade_providers::aws::{AwsProvider, AwsSettings, Clients};
use palisade_providers::{CallKind, Provider, Target, TargetScope, total_calls};
use support::peak_rss;

const ACCOUNT: &str = "123456789012";
const RULES_PER_GROUP: usize = 6;

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

#[allow(non_snake_case)]
fn clients(FUNCTIONS: usize, GROUPS: usize) -> Clients {
    let functions: Arc<Vec<lambda::FunctionConfiguration>> = Arc::new(
        (0..FUNCTIONS)
            .map(|i| {
                lambda::FunctionConfiguration::builder()
                    .function_name(format!("f{i:05}"))
                    .function_arn(format!(
                        "arn:aws:lambda:us-east-1:{ACCOUNT}:function:f{i:05}"
                    ))
                    .vpc_config(
                        lambda::VpcConfigResponse::builder()
                            .subnet_ids("subnet-a")
                            .security_group_ids(format!("sg-{:08x}", i % GROUPS))
                            .vpc_id("vpc-1")
                            .build(),
                    )
                    .build()
            })
            .collect(),
    );
    let tags: Arc<Vec<ResourceTagMapping>> = Arc::new(
        functions
            .iter()
            .enumerate()
            .map(|(i, f)| {
                ResourceTagMapping::builder()
                    .resource_arn(f.function_arn().unwrap())
                    .tags(
                        TagT::builder()
                            .key("app")
                            .value(format!("app{:04}", i % GROUPS))
                            .build()
                            .unwrap(),
                    )
                    .tags(TagT::builder().key("env").value("prod").build().unwrap())
                    .build()
            })
            .collect(),
    );
    let groups: Arc<Vec<ec2::SecurityGroup>> = Arc::new(
        (0..GROUPS)
            .map(|i| {
                ec2::SecurityGroup::builder()
                    .group_id(format!("sg-{i:08x}"))
                    .group_name(format!("legacy-{i}"))
                    .vpc_id("vpc-1")
                    .build()
            })
            .collect(),
    );
    let rules: Arc<Vec<ec2::SecurityGroupRule>> = Arc::new(
        (0..GROUPS * RULES_PER_GROUP)
            .map(|i| {
                let g = i / RULES_PER_GROUP;
                let b = ec2::SecurityGroupRule::builder()
                    .security_group_rule_id(format!("sgr-{i}"))
                    .group_id(format!("sg-{g:08x}"))
                    .is_egress(i % 2 == 1)
                    .ip_protocol("tcp")
                    .from_port(1000 + (i % RULES_PER_GROUP) as i32)
                    .to_port(1000 + (i % RULES_PER_GROUP) as i32)
                    .description(format!("rule {}", i % 3));
                if i % RULES_PER_GROUP == 4 {
                    // Ingress from the next group: a `policy:` peer once adopted.
                    b.referenced_group_info(
                        ec2::ReferencedSecurityGroup::builder()
                            .group_id(format!("sg-{:08x}", (g + 1) % GROUPS))
                            .user_id(ACCOUNT)
                            .build(),
                    )
                    .build()
                } else {
                    b.cidr_ipv4(format!("10.{}.0.0/16", i % 200)).build()
                }
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
            let (items, next) = page(&f, req.marker(), req.max_items(), 50);
            lop::list_functions::ListFunctionsOutput::builder()
                .set_functions(Some(items))
                .set_next_marker(next)
                .build()
        });
    let get_resources = mock!(aws_sdk_resourcegroupstagging::Client::get_resources)
        .then_compute_output(move |req| {
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
    // No instance or database shares a group: every cluster owns its group.
    let enis = mock!(aws_sdk_ec2::Client::describe_network_interfaces).then_output(|| {
        ec2op::describe_network_interfaces::DescribeNetworkInterfacesOutput::builder().build()
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
    let sts = mock!(aws_sdk_sts::Client::get_caller_identity).then_output(|| {
        GetCallerIdentityOutput::builder()
            .account(ACCOUNT)
            .arn(format!("arn:aws:iam::{ACCOUNT}:user/bench"))
            .build()
    });
    Clients {
        ec2: mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            [
                &describe_groups,
                &describe_rules,
                &enis,
                &vpcs,
                &subnets,
                &route_tables,
                &endpoints,
                &prefix_lists
            ]
        ),
        lambda: mock_client!(aws_sdk_lambda, RuleMode::MatchAny, [&list_functions]),
        tagging: mock_client!(
            aws_sdk_resourcegroupstagging,
            RuleMode::MatchAny,
            [&get_resources]
        ),
        sts: mock_client!(aws_sdk_sts, RuleMode::MatchAny, [&sts]),
        cloudtrail: mock_client!(aws_sdk_cloudtrail, RuleMode::MatchAny, []),
    }
}

#[allow(non_snake_case)]
fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs a small smoke run so
    // that the bench cannot rot.
    let full = std::env::args().any(|a| a == "--bench");
    let (FUNCTIONS, GROUPS, RUNS) = if full {
        (10_000, 2_000, 5)
    } else {
        (500, 100, 1)
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let target = Target {
        name: "estate".into(),
        scope: TargetScope::Aws {
            region: "us-east-1".into(),
            account_id: ACCOUNT.into(),
            assume_role_arn: None,
        },
    };
    let (set, diags) = palisade::policy::load_text(
        "t.yaml",
        "apiVersion: palisade.dev/v1alpha1\nkind: Target\nmetadata: { name: estate }\nspec:\n  aws: { region: us-east-1, accountId: \"123456789012\" }\n",
    );
    assert!(diags.is_empty());
    let mut walls: Vec<Duration> = Vec::new();
    let mut verifies: Vec<Duration> = Vec::new();
    let mut reads = 0;
    let mut summary = String::new();
    for _ in 0..RUNS {
        // The clock starts after the mocks are built (building 10,000 SDK values is the
        // test's cost, not adopt's).
        let clients = clients(FUNCTIONS, GROUPS);
        let provider = AwsProvider::new(AwsSettings {
            rates: "ec2-read=100000/100000,lambda-read=100000/100000,tagging=100000/100000,sts=100000/100000"
                .parse()
                .unwrap(),
            ..AwsSettings::default()
        });
        let start = Instant::now();
        let adoption = rt.block_on(async {
            provider.connect(&target, clients).await.unwrap();
            let own = palisade_providers::Ownership::unverified("estate");
            let mut inv = provider.observe(&target, &own).await.unwrap();
            let groups = adopt::groups_to_read(&inv);
            provider
                .read_attachments(&target, &mut inv, &groups)
                .await
                .unwrap();
            let a = adopt::adopt(&set, &set.targets[0], &inv, &Options::default());
            (a, inv)
        });
        walls.push(start.elapsed());
        let (a, inv) = adoption;
        reads = total_calls(&provider.api_calls(), CallKind::Read);
        assert_eq!(a.report.counts.policies, GROUPS, "every cluster adopted");
        assert_eq!(a.report.counts.rules, GROUPS * RULES_PER_GROUP);
        // Verify: load the written YAML back and plan it against the observation.
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in &a.files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let v0 = Instant::now();
        let (generated, d) =
            palisade::policy::load_dir(dir.path(), &palisade::policy::Limits::default());
        assert!(
            !d.iter().any(palisade::policy::Diagnostic::is_error),
            "{:?}",
            &d[..d.len().min(3)]
        );
        let v = adopt::verify(
            &generated,
            "estate",
            &inv,
            &palisade::plan::Settings::default(),
        );
        verifies.push(v0.elapsed());
        assert!(
            v.empty,
            "{:?}",
            &v.differences[..v.differences.len().min(5)]
        );
        summary = format!(
            "{} policies, {} files, {} bytes of YAML",
            a.report.counts.policies,
            a.files.len(),
            a.files.values().map(String::len).sum::<usize>()
        );
    }
    walls.sort();
    verifies.sort();
    // Minimal pages: 200 ListFunctions + 100 GetResources + 2 DescribeSecurityGroups +
    // 12 DescribeSecurityGroupRules + 5 other Describe* + 1 GetCallerIdentity + 10
    // DescribeNetworkInterfaces (2,000 group ids, 200 per call).
    let minimal = FUNCTIONS.div_ceil(50)
        + FUNCTIONS.div_ceil(100)
        + GROUPS.div_ceil(1000)
        + (GROUPS * RULES_PER_GROUP).div_ceil(1000)
        + 5
        + 1
        + GROUPS.div_ceil(200);
    println!(
        "adopt of {FUNCTIONS} functions / {GROUPS} groups / {} rules ({summary})",
        GROUPS * RULES_PER_GROUP
    );
    println!("  read calls per adoption: {reads} (minimal pages {minimal})");
    println!(
        "  observe + attachments + adopt over {RUNS} runs: min {:?} median {:?} max {:?}",
        walls[0],
        walls[RUNS / 2],
        walls[RUNS - 1]
    );
    println!(
        "  verify (load the written directory back + plan) over {RUNS} runs: min {:?} median {:?} max {:?}",
        verifies[0],
        verifies[RUNS / 2],
        verifies[RUNS - 1]
    );
    println!(
        "  peak RSS (VmHWM, whole process incl. the mocks' 10,000 SDK values): {}",
        peak_rss()
    );
    assert_eq!(reads, minimal as u64, "reads are the minimal pages");
}
