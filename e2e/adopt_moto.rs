//! `palisade adopt` against moto through the real binary: an estate Palisade did not
//! make (hand-made groups that reference each other, a shared group, a prefix list, an
//! EC2 instance behind one group, an endpoint) becomes policies that plan empty; a
//! re-run writes the same bytes; enforcing takes the groups over with nothing but their
//! ownership tags; tightening one rule plans exactly that revoke; a shared group named
//! by hand is never taken.
mod support;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;
use support::{Moto, json, text};

const TARGET: &str = "estate";

fn repo_with_target() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("target.yaml"),
        "apiVersion: palisade.dev/v1alpha1\nkind: Target\nmetadata: { name: estate }\nspec:\n  aws: { region: us-east-1, accountId: \"123456789012\" }\n",
    )
    .unwrap();
    dir
}

fn adopt(moto: &Moto, policies: &Path, out: &Path, extra: &[&str]) -> (Option<i32>, Value) {
    let o = moto
        .palisade()
        .args([
            "adopt",
            "--target",
            TARGET,
            "--format",
            "json",
            "--policies",
        ])
        .arg(policies)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        matches!(o.status.code(), Some(0 | 2)),
        "adopt failed: {}",
        text(&o)
    );
    (o.status.code(), json(&o))
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for e in walk(dir) {
        out.insert(
            e.strip_prefix(dir).unwrap().display().to_string(),
            std::fs::read(&e).unwrap(),
        );
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn observe_in(moto: &Moto, policies: &Path) -> Value {
    let o = moto
        .palisade()
        .args(["observe", "--target", TARGET, "--policies"])
        .arg(policies)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    json(&o)
}

fn changes(plan: &Value) -> Vec<&Value> {
    plan["changes"].as_array().unwrap().iter().collect()
}

fn writes(v: &Value) -> Vec<String> {
    v["apiCalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "write")
        .map(|c| format!("{}:{} x{}", c["service"], c["operation"], c["count"]))
        .collect()
}

#[test]
fn an_estate_palisade_did_not_make_is_adopted_with_a_zero_diff() {
    let Some(moto) = Moto::start() else { return };
    let seeded = moto.seed_estate(2);
    let g = |k: &str| seeded["groups"][k].as_str().unwrap().to_string();
    let input = repo_with_target();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("adopted");

    let (code, v) = adopt(&moto, input.path(), &dir, &["--verify"]);
    assert_eq!(code, Some(0), "verify is empty: {:#}", v["verify"]);
    assert_eq!(v["verify"]["empty"], true);
    let report = &v["report"];
    let clusters = report["clusters"].as_array().unwrap();
    let names: Vec<&str> = clusters
        .iter()
        .map(|c| c["policy"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders-api", "orders-db"], "{report:#}");
    assert_eq!(clusters[0]["selector"], "tags app=orders,tier=api");
    assert!(
        clusters[0]["managedGroup"]
            .as_str()
            .unwrap()
            .starts_with(&g("orders-api")),
        "{report:#}"
    );
    let referenced = serde_json::to_string(&clusters[0]["referenced"]).unwrap();
    assert!(referenced.contains(&g("monitoring")), "{referenced}");
    // The batch functions share their group with an EC2 instance: left out, and why.
    let left = serde_json::to_string(&report["left"]).unwrap();
    assert!(
        left.contains("batch-0") && left.contains(&g("batch")) && left.contains("eni-"),
        "{left}"
    );
    let api = std::fs::read_to_string(dir.join("policies/orders-api.yaml")).unwrap();
    for want in [
        format!("managedGroup: {{ id: {} }}", g("orders-api")),
        format!("securityGroups: [ {} ]", g("monitoring")),
        "to: [ { policy: orders-db } ]".to_string(),
        format!("prefixList: {}", seeded["prefixList"].as_str().unwrap()),
        "mode: audit".to_string(),
        format!("# Managed group: security group {}", g("orders-api")),
    ] {
        assert!(api.contains(&want), "{want} in\n{api}");
    }
    let db = std::fs::read_to_string(dir.join("policies/orders-db.yaml")).unwrap();
    assert!(
        db.contains("from: [ { policy: orders-api } ]") && db.contains("icmp/8"),
        "{db}"
    );

    // `plan` on the written directory agrees: empty.
    let (code, p) = support::plan_in(moto.palisade(), &dir, TARGET);
    assert_eq!(code, Some(0), "{p:#}");

    // A re-run on the unchanged estate writes the same bytes.
    let before = files(&dir);
    let (code, _) = adopt(&moto, input.path(), &dir, &[]);
    assert_eq!(code, Some(0));
    assert_eq!(files(&dir), before, "byte-identical on a re-run");

    // Enforce one policy: the plan only takes the group over; applying writes its
    // ownership tags and nothing else; then the plan is empty.
    let api_file = dir.join("policies/orders-api.yaml");
    std::fs::write(&api_file, api.replace("mode: audit", "mode: enforce")).unwrap();
    let (code, p) = support::plan_in(moto.palisade(), &dir, TARGET);
    assert_eq!(code, Some(2));
    let c = changes(&p);
    assert_eq!(c.len(), 1, "{p:#}");
    assert_eq!(c[0]["change"]["action"], "setOwnershipTags");
    assert_eq!(c[0]["change"]["takeover"], true);
    let applied = support::apply_in(moto.palisade(), &dir, TARGET);
    assert_eq!(
        writes(&applied),
        ["\"ec2\":\"CreateTags\" x1"],
        "{applied:#}"
    );
    let inv = observe_in(&moto, &dir);
    let taken = inv["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == g("orders-api").as_str())
        .unwrap();
    assert_eq!(taken["tags"]["palisade:policy"], "orders-api");
    assert_eq!(taken["tags"]["team"], "platform", "its own tags stay");
    let (code, p) = support::plan_in(moto.palisade(), &dir, TARGET);
    assert_eq!(code, Some(0), "{p:#}");

    // Tighten one rule in the YAML: exactly that one revoke.
    let enforced = std::fs::read_to_string(&api_file).unwrap();
    let tightened = enforced.replace(
        "    - name: \"https out\"\n      to: [ { cidr: \"0.0.0.0/0\" } ]\n      ports: [ tcp/443 ]\n",
        "",
    );
    assert_ne!(tightened, enforced, "the rule is in the file:\n{enforced}");
    std::fs::write(&api_file, tightened).unwrap();
    let (code, p) = support::plan_in(moto.palisade(), &dir, TARGET);
    assert_eq!(code, Some(2));
    let c = changes(&p);
    assert_eq!(c.len(), 1, "{p:#}");
    assert_eq!(c[0]["change"]["action"], "removeRules");
    assert_eq!(c[0]["change"]["rules"].as_array().unwrap().len(), 1);
    assert_eq!(p["summary"]["destroy"], 1);
}

#[test]
fn a_group_something_else_uses_is_never_taken_over() {
    let Some(moto) = Moto::start() else { return };
    let seeded = moto.seed_estate(1);
    let batch = seeded["groups"]["batch"].as_str().unwrap();
    let vpc = seeded["vpc"].as_str().unwrap();
    let subnets: Vec<&str> = seeded["subnets"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s.as_str().unwrap())
        .collect();
    let repo = repo_with_target();
    // By hand: the batch policy names the group it shares with an EC2 instance.
    std::fs::write(
        repo.path().join("batch.yaml"),
        format!(
            "apiVersion: palisade.dev/v1alpha1\nkind: FunctionPolicy\nmetadata: {{ name: batch }}\nspec:\n  target: estate\n  functions: {{ tags: {{ app: batch }} }}\n  network:\n    vpc: {{ id: {vpc} }}\n    subnets: {{ ids: [ {} ] }}\n    securityGroups: [ {} ]\n  managedGroup: {{ id: {batch} }}\n  ingress:\n    - {{ name: ssh, from: [ {{ cidr: 10.20.0.0/16 }} ], ports: [ tcp/22 ] }}\n",
            subnets.join(", "),
            seeded["groups"]["monitoring"].as_str().unwrap()
        ),
    )
    .unwrap();
    let (code, p) = support::plan_in(moto.palisade(), repo.path(), TARGET);
    assert_eq!(code, Some(0), "nothing planned: {p:#}");
    let not_adopted: Vec<&Value> = p["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "not-adopted")
        .collect();
    assert_eq!(not_adopted.len(), 1, "{p:#}");
    let msg = not_adopted[0]["message"].as_str().unwrap();
    assert!(msg.contains(batch) && msg.contains("eni-"), "{msg}");
    let applied = support::apply_in(moto.palisade(), repo.path(), TARGET);
    assert!(writes(&applied).is_empty(), "{applied:#}");
    let inv = observe_in(&moto, repo.path());
    let g = inv["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == batch)
        .unwrap();
    assert!(g["tags"].get("palisade:policy").is_none(), "{g:#}");
}
