//! Every rule AWS can express is seen exactly, through the real binary against moto:
//! ICMP types and codes (declared, observed, drift reverted, changed with one revoke and
//! one authorize), and group references across a peering connection that is gone.
mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::{Moto, apply_in, copy_dir, group, observe, plan_in, root};

const TARGET: &str = "prod-aws";

/// policies-example with `payments-api` also admitting `ports` from the VPC.
fn policies_with_icmp(dir: &Path, ports: &str) {
    copy_dir(&root().join("policies-example"), dir);
    let file = dir.join("aws/payments.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let anchor = "      ports: [ tcp/8443 ]\n";
    assert!(text.contains(anchor));
    let text = text.replacen(
        anchor,
        &format!(
            "{anchor}    - name: path-mtu\n      from: [ {{ cidr: 10.0.0.0/16 }} ]\n      ports: [ {ports} ]\n"
        ),
        1,
    );
    std::fs::write(&file, text).unwrap();
}

/// The ICMP rules of a group in an inventory snapshot: (protocol, ICMP type/code).
fn icmp_rules(group: &Value) -> Vec<(String, Value)> {
    group["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["ports"]["protocol"] == "icmp" || r["ports"]["protocol"] == "icmpv6")
        .map(|r| {
            (
                r["ports"]["protocol"].as_str().unwrap().to_string(),
                r["ports"]["icmp"].clone(),
            )
        })
        .collect()
}

fn changes_of<'a>(plan: &'a Value, group: &str) -> Vec<&'a Value> {
    plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| {
            c["resource"]
                .as_str()
                .is_some_and(|r| r.starts_with(&format!("group {group}")))
        })
        .collect()
}

#[test]
fn icmp_types_and_codes_are_enforced_exactly() {
    let Some(moto) = Moto::start() else { return };
    moto.seed(8);
    let dir = tempfile::tempdir().unwrap();
    policies_with_icmp(dir.path(), "icmp/3/4");
    let first = apply_in(moto.palisade(), dir.path(), TARGET);
    assert!(first["error"].is_null(), "{}", first["error"]);

    // Exactly that permission, and no churn on a re-plan.
    let inv = observe(moto.palisade(), TARGET);
    let api = group(&inv, "palisade-payments-api");
    let sg = api["id"].as_str().unwrap().to_string();
    assert_eq!(
        icmp_rules(api),
        vec![("icmp".to_string(), json!({ "type": 3, "code": 4 }))]
    );
    let (code, again) = plan_in(moto.palisade(), dir.path(), TARGET);
    assert_eq!(code, Some(0), "{}", again["changes"]);

    // Widened by hand to every code of type 3: drift, reverted.
    let perm = |from: i64, to: i64| json!({ "GroupId": sg, "IpPermissions": [ { "IpProtocol": "icmp", "FromPort": from, "ToPort": to, "IpRanges": [ { "CidrIp": "10.0.0.0/16" } ] } ] });
    moto.call("ec2", "revoke_security_group_ingress", perm(3, 4));
    moto.call("ec2", "authorize_security_group_ingress", perm(3, -1));
    let (code, drift) = plan_in(moto.palisade(), dir.path(), TARGET);
    assert_eq!(code, Some(2), "the widened rule is drift");
    let mine = changes_of(&drift, "payments-api");
    assert!(mine.iter().all(|c| c["cause"] == "drift"), "{mine:#?}");
    assert_eq!(mine.len(), 2, "one add, one remove: {mine:#?}");
    let fixed = apply_in(moto.palisade(), dir.path(), TARGET);
    assert!(fixed["error"].is_null(), "{}", fixed["error"]);
    let inv = observe(moto.palisade(), TARGET);
    assert_eq!(
        icmp_rules(group(&inv, "palisade-payments-api")),
        vec![("icmp".to_string(), json!({ "type": 3, "code": 4 }))]
    );

    // The policy now admits echo instead: one authorize, one revoke.
    policies_with_icmp_in_place(dir.path(), "icmp/3/4", "icmp/8");
    let (code, change) = plan_in(moto.palisade(), dir.path(), TARGET);
    assert_eq!(code, Some(2));
    let mine = changes_of(&change, "payments-api");
    let actions: Vec<(&str, usize)> = mine
        .iter()
        .map(|c| {
            (
                c["change"]["action"].as_str().unwrap(),
                c["change"]["rules"].as_array().map_or(0, Vec::len),
            )
        })
        .collect();
    assert_eq!(
        actions,
        vec![("addRules", 1), ("removeRules", 1)],
        "{mine:#?}"
    );
    let done = apply_in(moto.palisade(), dir.path(), TARGET);
    assert!(done["error"].is_null(), "{}", done["error"]);
    let inv = observe(moto.palisade(), TARGET);
    assert_eq!(
        icmp_rules(group(&inv, "palisade-payments-api")),
        vec![("icmp".to_string(), json!({ "type": 8 }))]
    );
    let (code, _) = plan_in(moto.palisade(), dir.path(), TARGET);
    assert_eq!(code, Some(0));
}

fn policies_with_icmp_in_place(dir: &Path, from: &str, to: &str) {
    let file = dir.join("aws/payments.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.replace(from, to)).unwrap();
}

#[test]
fn a_reference_across_a_deleted_peering_is_a_finding_and_left_alone() {
    let Some(moto) = Moto::start() else { return };
    let seeded = moto.seed(4);
    let legacy = seeded["groups"]["legacy-admin"].as_str().unwrap();
    let impostor = seeded["groups"]["impostor"].as_str().unwrap();
    // A rule pointing at a group in another account across a peering connection that
    // was deleted since (AWS reports the reference as stale).
    moto.call(
        "ec2",
        "authorize_security_group_ingress",
        json!({ "GroupId": legacy, "IpPermissions": [ {
            "IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
            "UserIdGroupPairs": [ {
                "GroupId": impostor, "UserId": "210987654321", "VpcId": "vpc-0peer",
                "VpcPeeringConnectionId": "pcx-0dead", "PeeringStatus": "deleted"
            } ]
        } ] }),
    );
    let before = observe(moto.palisade(), TARGET);
    let rules_before = group(&before, "legacy-admin")["rules"].clone();
    let peered: Vec<&Value> = rules_before
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["reference"].is_object())
        .collect();
    assert_eq!(peered.len(), 1, "{rules_before:#}");
    assert_eq!(peered[0]["reference"]["peeringConnection"], "pcx-0dead");
    assert_eq!(peered[0]["reference"]["account"], "210987654321");

    let (_, plan) = plan_in(moto.palisade(), &root().join("policies-example"), TARGET);
    let stale: Vec<&Value> = plan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "stale-reference")
        .collect();
    assert_eq!(stale.len(), 1, "{:#}", plan["findings"]);
    assert!(stale[0]["message"].as_str().unwrap().contains("pcx-0dead"));
    assert!(changes_of(&plan, legacy).is_empty());

    let applied = support::apply(moto.palisade(), TARGET);
    assert!(applied["error"].is_null(), "{}", applied["error"]);
    let after = observe(moto.palisade(), TARGET);
    assert_eq!(
        group(&after, "legacy-admin")["rules"],
        rules_before,
        "the unmanaged group is left as it is"
    );
}
