//! `palisade adopt` on Azure, against the ARM fake through the real binary: NSGs with
//! hand-named rules and priorities on function apps' integration subnets become
//! policies that keep those names and priorities and plan empty; a re-run writes the
//! same bytes; a rule the language cannot express (several prefixes in one rule) is
//! reported, commented, and keeps its policy in audit.
mod support;

use std::path::Path;

use palisade_armfake::{EXAMPLE_RESOURCE_GROUP as RG, EXAMPLE_SUBSCRIPTION as SUB};
use serde_json::{Value, json};
use support::{ArmFake, json as out_json, text};

const TARGET: &str = "prod-azure";

fn net() -> String {
    format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Network")
}

/// One NSG rule: `(protocol, port)`, `(source, destination)` prefixes.
fn rule(
    name: &str,
    dir: &str,
    access: &str,
    prio: u32,
    (proto, port): (&str, &str),
    (src, dst): (&str, &str),
) -> Value {
    json!({ "name": name, "properties": {
        "protocol": proto, "sourcePortRange": "*", "destinationPortRange": port,
        "sourceAddressPrefix": src, "destinationAddressPrefix": dst,
        "access": access, "priority": prio, "direction": dir } })
}

/// An NSG made by hand with `rules`, associated with `subnet` (delegated, as the
/// example estate's), and `site` integrated into that subnet.
fn hand_nsg(arm: &ArmFake, nsg: &str, subnet: &str, prefix: &str, site: &str, rules: Vec<Value>) {
    let nsg_id = format!("{}/networkSecurityGroups/{nsg}", net());
    arm.fake
        .put(
            json!({ "id": nsg_id, "location": "westeurope", "tags": { "team": "network" },
                     "properties": { "securityRules": [] } }),
        )
        .unwrap();
    for r in rules {
        let name = r["name"].as_str().unwrap().to_string();
        let mut r = r;
        r["id"] = json!(format!("{nsg_id}/securityRules/{name}"));
        arm.fake.put(r).unwrap();
    }
    let vnet = format!("{}/virtualNetworks/vnet-prod", net());
    arm.fake
        .put(json!({ "id": format!("{vnet}/subnets/{subnet}"), "properties": {
            "addressPrefix": prefix,
            "delegations": [{ "name": "webapp", "properties": { "serviceName": "Microsoft.Web/serverFarms" } }],
            "networkSecurityGroup": { "id": nsg_id } } }))
        .unwrap();
    let site_id =
        format!("/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Web/sites/{site}");
    let mut s = arm.fake.get(&site_id).expect("the site exists");
    s["properties"]["virtualNetworkSubnetId"] = json!(format!("{vnet}/subnets/{subnet}"));
    arm.fake.put(s).unwrap();
}

/// A repository holding only the Target, as adoption starts.
fn repo_with_target() -> tempfile::TempDir {
    let input = tempfile::tempdir().unwrap();
    std::fs::write(
        input.path().join("target.yaml"),
        format!("apiVersion: palisade.dev/v1alpha1\nkind: Target\nmetadata: {{ name: {TARGET} }}\nspec:\n  azure: {{ subscriptionId: {SUB}, resourceGroup: {RG}, location: westeurope }}\n"),
    )
    .unwrap();
    input
}

fn adopt(arm: &ArmFake, policies: &Path, out: &Path) -> (Option<i32>, Value) {
    let o = arm
        .palisade()
        .args([
            "adopt",
            "--target",
            TARGET,
            "--format",
            "json",
            "--verify",
            "--policies",
        ])
        .arg(policies)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(
        matches!(o.status.code(), Some(0 | 2)),
        "adopt failed: {}",
        text(&o)
    );
    (o.status.code(), out_json(&o))
}

#[test]
fn nsgs_with_hand_named_rules_are_adopted_with_their_names_and_priorities() {
    let arm = ArmFake::start(palisade_armfake::Config::default(), 2);
    hand_nsg(
        &arm,
        "nsg-orders-2019",
        "snet-orders",
        "10.20.2.0/24",
        "func-orders",
        vec![
            rule(
                "AllowHttpsFromVnet",
                "Inbound",
                "Allow",
                110,
                ("Tcp", "443"),
                ("10.20.0.0/16", "*"),
            ),
            rule(
                "AllowSqlOut",
                "Outbound",
                "Allow",
                200,
                ("Tcp", "1433"),
                ("*", "Sql.WestEurope"),
            ),
            rule(
                "DenyInternetOut",
                "Outbound",
                "Deny",
                4000,
                ("*", "*"),
                ("*", "Internet"),
            ),
        ],
    );
    let input = repo_with_target();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("adopted");
    let (code, v) = adopt(&arm, input.path(), &dir);
    assert_eq!(code, Some(0), "{:#}", v);
    let clusters = v["report"]["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 1, "{v:#}");
    let file = dir.join(clusters[0]["file"].as_str().unwrap());
    let doc = std::fs::read_to_string(&file).unwrap();
    for want in [
        "managedGroup: { id: \"/subscriptions/",
        "networkSecurityGroups/nsg-orders-2019",
        "vnet: vnet-prod",
        "subnet: snet-orders",
        "defaultDeny: false",
        "frontDoor: unmanaged",
        "- name: AllowHttpsFromVnet",
        "priority: 110",
        "- name: AllowSqlOut",
        "{ serviceTag: Sql.WestEurope }",
        "- name: DenyInternetOut",
        "priority: 4000",
    ] {
        assert!(doc.contains(want), "{want} in\n{doc}");
    }
    let (code, p) = support::plan_in(arm.palisade(), &dir, TARGET);
    assert_eq!(code, Some(0), "{p:#}");
    // Byte-identical on a re-run.
    let before = std::fs::read(&file).unwrap();
    let (code, _) = adopt(&arm, input.path(), &dir);
    assert_eq!(code, Some(0));
    assert_eq!(std::fs::read(&file).unwrap(), before);

    // Enforce: the NSG is taken over (its tags), nothing else is written.
    std::fs::write(&file, doc.replace("mode: audit", "mode: enforce")).unwrap();
    let applied = support::apply_in(arm.palisade(), &dir, TARGET);
    let actions: Vec<&str> = applied["results"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|x| x["change"]["action"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        actions.iter().all(|a| *a == "setOwnershipTags"),
        "{applied:#}"
    );
    let nsg = arm
        .fake
        .get(&format!("{}/networkSecurityGroups/nsg-orders-2019", net()))
        .unwrap();
    assert_eq!(nsg["tags"]["palisade:policy"], clusters[0]["policy"]);
    assert_eq!(nsg["tags"]["team"], "network");
    let names: Vec<&str> = nsg["properties"]["securityRules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "rules untouched: {names:?}");
    let (code, p) = support::plan_in(arm.palisade(), &dir, TARGET);
    assert_eq!(code, Some(0), "{p:#}");
}

#[test]
fn a_rule_the_language_cannot_express_is_reported_and_keeps_its_policy_in_audit() {
    let arm = ArmFake::start(palisade_armfake::Config::default(), 2);
    let mut multi = rule(
        "AllowTwoOffices",
        "Inbound",
        "Allow",
        120,
        ("Tcp", "443"),
        ("", "*"),
    );
    multi["properties"]
        .as_object_mut()
        .unwrap()
        .remove("sourceAddressPrefix");
    multi["properties"]["sourceAddressPrefixes"] = json!(["192.0.2.0/24", "198.51.100.0/24"]);
    hand_nsg(
        &arm,
        "nsg-reports",
        "snet-reports",
        "10.20.1.0/24",
        "func-reports",
        vec![
            multi,
            rule(
                "AllowStorageOut",
                "Outbound",
                "Allow",
                300,
                ("Tcp", "443"),
                ("*", "Storage"),
            ),
        ],
    );
    let input = repo_with_target();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("adopted");
    let o = arm
        .palisade()
        .args([
            "adopt",
            "--target",
            TARGET,
            "--format",
            "json",
            "--verify",
            "--mode",
            "enforce",
            "--policies",
        ])
        .arg(input.path())
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "verify is not empty: {}",
        text(&o)
    );
    let v = out_json(&o);
    let cluster = v["report"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["managedGroup"].as_str().unwrap().contains("nsg-reports"))
        .unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(
        cluster["mode"], "audit",
        "kept in audit despite --mode enforce"
    );
    let inexpressible = serde_json::to_string(&cluster["inexpressible"]).unwrap();
    assert!(
        inexpressible.contains("AllowTwoOffices") || inexpressible.contains("120"),
        "{inexpressible}"
    );
    let doc = std::fs::read_to_string(dir.join(cluster["file"].as_str().unwrap())).unwrap();
    assert!(doc.contains("# NOT EXPRESSIBLE"), "{doc}");
    assert!(
        doc.contains("mode: audit") && doc.contains("AllowStorageOut"),
        "{doc}"
    );
    // The difference verify shows is that rule, as audit drift; nothing is written.
    let diffs = serde_json::to_string(&v["verify"]["differences"]).unwrap();
    assert!(
        diffs.contains("AuditDrift") && diffs.contains("unexpected rule"),
        "{diffs}"
    );
}
