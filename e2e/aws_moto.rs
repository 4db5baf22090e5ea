//! The AWS provider against moto's server, through the real binary: converge a drifted
//! estate of 240 functions, make zero writes when converged, revert drift, never touch a
//! group Palisade does not own, refuse the wrong account.
mod support;

use serde_json::{Value, json};
use support::{Moto, function, group, root, text};

const TARGET: &str = "prod-aws";

fn apply(moto: &Moto) -> Value {
    support::apply(moto.palisade(), TARGET)
}

fn plan(moto: &Moto) -> (Option<i32>, Value) {
    support::plan(moto.palisade(), TARGET)
}

fn observe(moto: &Moto) -> Value {
    support::observe(moto.palisade(), TARGET)
}

fn calls(v: &Value, kind: &str) -> u64 {
    v["apiCalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == kind)
        .map(|c| c["count"].as_u64().unwrap())
        .sum()
}

fn causes(plan: &Value) -> Vec<(String, String)> {
    plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["cause"].as_str().unwrap().to_string(),
                c["resource"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn converges_stays_converged_reverts_drift_and_spares_unowned_groups() {
    let Some(moto) = Moto::start() else { return };
    let seeded = moto.seed(240);
    let impostor = seeded["groups"]["impostor"].as_str().unwrap().to_string();
    let legacy = seeded["groups"]["legacy-admin"]
        .as_str()
        .unwrap()
        .to_string();
    let before = observe(&moto);
    let impostor_before = group(&before, "impostor").clone();
    assert_eq!(impostor_before["id"], impostor.as_str());

    // A drifted estate: the plan has work to do.
    let (code, p) = plan(&moto);
    assert_eq!(code, Some(2), "{p}");
    assert!(
        p["changes"].as_array().unwrap().len() > 150,
        "{}",
        p["summary"]
    );

    // One apply converges it.
    let first = apply(&moto);
    assert!(first["error"].is_null(), "{}", first["error"]);
    let results = first["apply"]["results"].as_array().unwrap();
    assert!(
        results.iter().all(|r| r["outcome"]["status"] == "applied"),
        "every change applied"
    );
    assert!(
        results.iter().all(|r| !r["outcome"]["requestIds"]
            .as_array()
            .is_none_or(Vec::is_empty)),
        "every change carries the AWS request id"
    );
    let (code, p) = plan(&moto);
    assert_eq!(code, Some(0), "plan after apply: {}", p["changes"]);

    // A second apply makes no write call at all.
    let second = apply(&moto);
    assert_eq!(calls(&second, "write"), 0, "{}", second["apiCalls"]);
    assert!(calls(&second, "read") > 0);

    let inv = observe(&moto);
    let api = group(&inv, "palisade-payments-api");
    assert_eq!(api["tags"]["palisade:managed-by"], "palisade");
    let f = function(&inv, "payments-api-0000");
    assert_eq!(
        f["placement"]["groups"],
        json!([{ "managed": "payments-api" }])
    );
    assert_eq!(f["placement"]["subnets"].as_array().unwrap().len(), 3);
    // Functions left the hand-made group; the group itself was not touched.
    assert_eq!(
        group(&inv, "legacy-admin")["rules"],
        group(&before, "legacy-admin")["rules"]
    );
    // The impostor carries a palisade:policy tag but not palisade:managed-by: untouched,
    // although its rule is exactly the payments-api ingress rule.
    assert_eq!(group(&inv, "impostor"), &impostor_before);

    // Drift, four kinds at once.
    let api_id = api["id"].as_str().unwrap().to_string();
    moto.call("ec2", "authorize_security_group_ingress", json!({
        "GroupId": api_id,
        "IpPermissions": [{ "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{ "CidrIp": "0.0.0.0/0" }] }]
    }));
    moto.call(
        "lambda",
        "update_function_configuration",
        json!({
            "FunctionName": "payments-api-0000",
            "VpcConfig": { "SubnetIds": [], "SecurityGroupIds": [] }
        }),
    );
    let interface = inv["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "interface")
        .unwrap();
    moto.call(
        "ec2",
        "delete_vpc_endpoints",
        json!({ "VpcEndpointIds": [interface["id"]] }),
    );
    let db = group(&inv, "palisade-payments-db");
    let db_rule = db["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["direction"] == "ingress")
        .unwrap();
    moto.call("ec2", "modify_security_group_rules", json!({
        "GroupId": db["id"],
        "SecurityGroupRules": [{
            "SecurityGroupRuleId": db_rule["id"],
            "SecurityGroupRule": { "IpProtocol": "tcp", "FromPort": 5433, "ToPort": 5433, "ReferencedGroupId": api_id }
        }]
    }));
    // Also move a function behind the hand-made group.
    moto.call("lambda", "update_function_configuration", json!({
        "FunctionName": "ledger-worker-0002",
        "VpcConfig": { "SubnetIds": [seeded["subnets"]["public-a"]], "SecurityGroupIds": [legacy] }
    }));

    let (code, p) = plan(&moto);
    assert_eq!(code, Some(2));
    let resources: Vec<String> = causes(&p).into_iter().map(|(_, r)| r).collect();
    for expected in [
        "function payments-api-0000",
        "function ledger-worker-0002",
        "group payments-api",
        "group payments-db",
    ] {
        assert!(
            resources.iter().any(|r| r.starts_with(expected)),
            "{expected} not in {resources:?}"
        );
    }
    assert!(
        resources
            .iter()
            .any(|r| r.starts_with("endpoint endpoint.secretsmanager")),
        "{resources:?}"
    );

    let third = apply(&moto);
    assert!(third["error"].is_null(), "{}", third["error"]);
    let (code, p) = plan(&moto);
    assert_eq!(code, Some(0), "drift not reverted: {}", p["changes"]);
    let inv = observe(&moto);
    let api = group(&inv, "palisade-payments-api");
    assert!(
        !api["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["ports"]["range"]["from"] == 22),
        "0.0.0.0/0:22 revoked: {}",
        api["rules"]
    );
    let db = group(&inv, "palisade-payments-db");
    assert!(
        db["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["ports"]["range"]["from"] == 5432)
    );
    assert!(
        !db["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["ports"]["range"]["from"] == 5433)
    );
    assert!(function(&inv, "payments-api-0000")["placement"].is_object());
    assert_eq!(group(&inv, "impostor"), &impostor_before);
}

#[test]
fn wrong_account_is_refused_before_any_change() {
    let Some(moto) = Moto::start() else { return };
    moto.seed(4);
    let dir = tempfile::tempdir().unwrap();
    let src = root().join("policies-example");
    for sub in ["aws", "targets", "guardrails"] {
        std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        for e in std::fs::read_dir(src.join(sub)).unwrap() {
            let e = e.unwrap();
            let body = std::fs::read_to_string(e.path())
                .unwrap()
                .replace("123456789012", "210987654321");
            std::fs::write(dir.path().join(sub).join(e.file_name()), body).unwrap();
        }
    }
    let out = moto
        .palisade()
        .args(["apply", "--auto-approve", "--target", TARGET, "--policies"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("account \"123456789012\"")
            && stderr.contains("accountId \"210987654321\""),
        "{stderr}"
    );
    // Nothing was created.
    let groups = moto.call("ec2", "describe_security_groups", json!({}));
    assert!(
        !groups["SecurityGroups"]
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["GroupName"].as_str().unwrap().starts_with("palisade-")),
        "{groups}"
    );
}

/// Failure isolation through the binary: a managed group filled by hand to its rule
/// quota (moto enforces AWS's 60 ingress rules), with one declared rule revoked and
/// 0.0.0.0/0:22 added. Adding the declared rule back fails on the quota, yet the world
/// rule and the other hand-made rules are revoked in the same apply (drift-reducing
/// steps never wait for a constructive one); the next apply adds the rule and converges.
#[test]
fn a_group_at_its_quota_still_loses_the_world_open_rule() {
    let Some(moto) = Moto::start() else { return };
    moto.seed(24);
    assert!(apply(&moto)["error"].is_null());
    let inv = observe(&moto);
    let api = group(&inv, "palisade-payments-api");
    let id = api["id"].as_str().unwrap().to_string();
    let ingress: Vec<&Value> = api["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["direction"] == "ingress")
        .collect();
    assert!(!ingress.is_empty());
    let declared = ingress[0]["id"].as_str().unwrap();
    moto.call(
        "ec2",
        "revoke_security_group_ingress",
        json!({"GroupId": id, "SecurityGroupRuleIds": [declared]}),
    );
    let free = 60 - (ingress.len() - 1);
    let mut ranges = vec![json!({"CidrIp": "0.0.0.0/0"})];
    ranges.extend((1..free).map(|i| json!({"CidrIp": format!("10.99.{i}.0/24")})));
    moto.call("ec2", "authorize_security_group_ingress", json!({
        "GroupId": id,
        "IpPermissions": [{ "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": ranges }]
    }));

    let out = moto
        .palisade()
        .args([
            "apply",
            "--target",
            TARGET,
            "--auto-approve",
            "--format",
            "json",
            "--policies",
        ])
        .arg(root().join("policies-example"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "the add fails: {}", text(&out));
    let report = support::json(&out);
    let results = report["apply"]["results"].as_array().unwrap();
    let failed: Vec<&Value> = results.iter().filter(|r| r["result"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{results:?}");
    assert_eq!(failed[0]["planned"]["change"]["action"], "addRules");
    let revoked = results
        .iter()
        .find(|r| {
            r["planned"]["change"]["action"] == "removeRules" && r["planned"]["cause"] == "drift"
        })
        .expect("the drift revoke ran");
    assert_eq!(revoked["result"], "done", "{revoked}");
    let after = observe(&moto);
    let world = group(&after, "palisade-payments-api")["rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["peer"]["cidr"] == "0.0.0.0/0" && r["direction"] == "ingress");
    assert!(!world, "0.0.0.0/0:22 is revoked although the add failed");

    assert!(
        apply(&moto)["error"].is_null(),
        "the next apply adds the rule"
    );
    assert_eq!(plan(&moto).0, Some(0));
}

/// An inventory conflict is a finding, not a halt: tagging a function so that two
/// policies select it leaves that function as it is (with an `inventory-conflict`
/// finding), and drift elsewhere in the target is still reverted.
#[test]
fn a_function_tagged_into_two_policies_is_left_alone_and_the_rest_is_enforced() {
    let Some(moto) = Moto::start() else { return };
    moto.seed(24);
    assert!(apply(&moto)["error"].is_null());
    let inv = observe(&moto);
    let report = function(&inv, "report-export-daily").clone();
    // Selected by name by report-export, and now by tags by ledger-worker too.
    moto.call(
        "lambda",
        "tag_resource",
        json!({"Resource": report["id"], "Tags": {"app": "ledger", "tier": "worker"}}),
    );
    // Drift elsewhere: a world-open rule on payments-api.
    let api_id = group(&inv, "palisade-payments-api")["id"]
        .as_str()
        .unwrap()
        .to_string();
    moto.call("ec2", "authorize_security_group_ingress", json!({
        "GroupId": api_id,
        "IpPermissions": [{ "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{ "CidrIp": "0.0.0.0/0" }] }]
    }));

    let (code, p) = plan(&moto);
    assert_eq!(code, Some(2), "planned, not invalid: {p}");
    let conflicts: Vec<&Value> = p["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "inventory-conflict")
        .collect();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert!(
        conflicts[0]["message"]
            .as_str()
            .unwrap()
            .contains("report-export-daily")
    );
    let touched: Vec<&str> = p["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["resource"].as_str().unwrap())
        .collect();
    assert!(
        !touched.iter().any(|r| r.contains("report-export-daily")),
        "{touched:?}"
    );
    assert!(apply(&moto)["error"].is_null());
    let after = observe(&moto);
    assert_eq!(
        function(&after, "report-export-daily")["placement"],
        report["placement"]
    );
    let world = group(&after, "palisade-payments-api")["rules"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["peer"]["cidr"] == "0.0.0.0/0" && r["direction"] == "ingress");
    assert!(!world, "drift elsewhere reverted");
}
