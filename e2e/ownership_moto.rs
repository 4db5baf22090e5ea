//! Ownership you can prove, against moto through the real binary: tags alone are a
//! claim that is never obeyed, a recorded group is recognised by id when its tags are
//! stripped, a squatted name holds back one policy only, a function no policy selects
//! keeps what it has, and an estate converged by a version without the record is
//! adopted once by the bootstrap.
mod support;

use palisade::history::{Filter, Store};
use serde_json::{Value, json};
use support::{Moto, function};

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

fn groups_named<'a>(inv: &'a Value, name: &str) -> Vec<&'a Value> {
    inv["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["name"] == name)
        .collect()
}

fn group<'a>(inv: &'a Value, name: &str) -> &'a Value {
    let found = groups_named(inv, name);
    assert_eq!(found.len(), 1, "groups named {name}: {found:?}");
    found[0]
}

fn findings<'a>(plan: &'a Value, kind: &str) -> Vec<&'a Value> {
    plan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == kind)
        .collect()
}

fn actions(plan: &Value) -> Vec<String> {
    plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                c["change"]["action"].as_str().unwrap(),
                c["resource"].as_str().unwrap()
            )
        })
        .collect()
}

fn writes(v: &Value) -> u64 {
    v["apiCalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["kind"] == "write")
        .map(|c| c["count"].as_u64().unwrap())
        .sum()
}

/// A security group made by hand in `vpc` with `tags`, open to the world on 443.
fn hand_group(moto: &Moto, vpc: &str, name: &str, tags: &[(&str, &str)]) -> String {
    let tags: Vec<Value> = tags
        .iter()
        .map(|(k, v)| json!({"Key": k, "Value": v}))
        .collect();
    let mut params = json!({"GroupName": name, "Description": "made by hand", "VpcId": vpc});
    if !tags.is_empty() {
        params["TagSpecifications"] = json!([{"ResourceType": "security-group", "Tags": tags}]);
    }
    let id = moto.call("ec2", "create_security_group", params)["GroupId"]
        .as_str()
        .unwrap()
        .to_string();
    moto.call("ec2", "authorize_security_group_ingress", json!({
        "GroupId": id,
        "IpPermissions": [{ "IpProtocol": "tcp", "FromPort": 443, "ToPort": 443, "IpRanges": [{ "CidrIp": "0.0.0.0/0" }] }]
    }));
    id
}

fn events(moto: &Moto, kind: &str) -> Vec<Value> {
    let store = Store::open(&moto.state.path().join("history.db")).unwrap();
    store
        .events(&Filter::default())
        .unwrap()
        .into_iter()
        .filter(|e| e.event.kind() == kind)
        .map(|e| serde_json::to_value(&e.event).unwrap()["data"].take())
        .collect()
}

#[test]
fn palisade_tags_alone_are_a_claim_and_a_recorded_group_is_known_by_its_id() {
    let Some(moto) = Moto::start() else { return };
    let seeded = moto.seed(24);
    let prod = seeded["vpcs"]["prod"].as_str().unwrap();
    let first = apply(&moto);
    assert!(first["error"].is_null(), "{}", first["error"]);
    assert_eq!(plan(&moto).0, Some(0));
    let before = observe(&moto);
    let real = group(&before, "palisade-payments-api").clone();
    assert_eq!(real["tags"]["palisade:installation"], "e2e");
    assert_eq!(real["tags"]["palisade:target"], TARGET);

    // Someone with ec2:CreateTags claims two groups: one for a policy that does not
    // exist, one for an existing policy, and puts a function no policy selects behind
    // the first.
    let ghost = hand_group(
        &moto,
        prod,
        "prod-db-admin",
        &[
            ("palisade:managed-by", "palisade"),
            ("palisade:policy", "ghost"),
        ],
    );
    let shadow = hand_group(
        &moto,
        prod,
        "shadow",
        &[
            ("palisade:managed-by", "palisade"),
            ("palisade:policy", "payments-api"),
        ],
    );
    let misc = seeded["functions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"].as_str().unwrap().starts_with("misc-"))
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    moto.call("lambda", "update_function_configuration", json!({
        "FunctionName": misc,
        "VpcConfig": { "SubnetIds": [seeded["subnets"]["private-a"]], "SecurityGroupIds": [ghost] }
    }));

    let claimed_before = observe(&moto);
    let (code, p) = plan(&moto);
    assert_eq!(
        code,
        Some(0),
        "nothing to do for claimed groups: {:?}",
        actions(&p)
    );
    let claims = findings(&p, "claimed-ownership");
    let text = serde_json::to_string(&claims).unwrap();
    assert!(text.contains(&ghost) && text.contains(&shadow), "{text}");
    let after = apply(&moto);
    assert_eq!(writes(&after), 0, "{}", after["apiCalls"]);
    let inv = observe(&moto);
    for name in ["prod-db-admin", "shadow"] {
        assert_eq!(
            group(&inv, name),
            group(&claimed_before, name),
            "{name} untouched"
        );
    }
    assert_eq!(
        group(&inv, "palisade-payments-api"),
        &real,
        "the real managed group is untouched"
    );
    assert_eq!(
        function(&inv, &misc)["placement"],
        function(&claimed_before, &misc)["placement"],
        "never released from a claimed group"
    );

    // Strip palisade:managed-by from the real group: recognised by id, tag restored,
    // no twin created, the rest converges.
    let real_id = real["id"].as_str().unwrap();
    moto.call(
        "ec2",
        "delete_tags",
        json!({"Resources": [real_id], "Tags": [{"Key": "palisade:managed-by"}]}),
    );
    moto.call("ec2", "authorize_security_group_ingress", json!({
        "GroupId": real_id,
        "IpPermissions": [{ "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{ "CidrIp": "0.0.0.0/0" }] }]
    }));
    let (code, p) = plan(&moto);
    assert_eq!(code, Some(2));
    let planned = actions(&p);
    assert!(
        planned
            .iter()
            .any(|a| a.starts_with("setOwnershipTags group payments-api")),
        "{planned:?}"
    );
    assert!(
        planned
            .iter()
            .any(|a| a.starts_with("removeRules group payments-api")),
        "{planned:?}"
    );
    assert!(
        !planned.iter().any(|a| a.starts_with("createGroup")),
        "{planned:?}"
    );
    let fixed = apply(&moto);
    assert!(fixed["error"].is_null(), "{}", fixed["error"]);
    let inv = observe(&moto);
    let restored = group(&inv, "palisade-payments-api");
    assert_eq!(restored["id"], real_id);
    assert_eq!(restored["tags"]["palisade:managed-by"], "palisade");
    assert_eq!(restored["rules"], real["rules"]);
    assert_eq!(plan(&moto).0, Some(0));
}

#[test]
fn a_squatted_name_holds_back_that_policy_only() {
    let Some(moto) = Moto::start() else { return };
    let seeded = moto.seed(24);
    let prod = seeded["vpcs"]["prod"].as_str().unwrap();
    let squat = hand_group(&moto, prod, "palisade-payments-db", &[]);

    let (_, p) = plan(&moto);
    let taken = findings(&p, "name-taken");
    assert_eq!(taken.len(), 1, "{taken:?}");
    assert_eq!(taken[0]["resource"], "group payments-db");
    assert!(taken[0]["message"].as_str().unwrap().contains(&squat));
    let planned = actions(&p);
    assert!(
        !planned.iter().any(|a| a.contains("payments-db")),
        "{planned:?}"
    );

    let applied = apply(&moto);
    assert!(
        applied["error"].is_null(),
        "the rest applies: {}",
        applied["error"]
    );
    let inv = observe(&moto);
    assert_eq!(
        group(&inv, "palisade-payments-db")["id"],
        squat.as_str(),
        "never taken over"
    );
    assert!(
        group(&inv, "palisade-payments-db")["tags"]
            .as_object()
            .is_none_or(|t| t.is_empty())
    );
    assert_eq!(
        function(&inv, "payments-api-0000")["placement"]["groups"],
        json!([{ "managed": "payments-api" }]),
        "the other policies converge"
    );
    // Converged except for what waits on the name.
    let (code, p) = plan(&moto);
    assert_eq!(code, Some(0), "{:?}", actions(&p));
    assert_eq!(findings(&p, "name-taken").len(), 1);
}

#[test]
fn a_function_no_policy_selects_keeps_its_group_and_placement() {
    let Some(moto) = Moto::start() else { return };
    let seeded = moto.seed(24);
    let name = seeded["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .find(|n| n.starts_with("payments-api-"))
        .unwrap()
        .to_string();
    apply(&moto);
    let inv = observe(&moto);
    let f = function(&inv, &name).clone();
    let arn = f["id"].as_str().unwrap();
    moto.call(
        "lambda",
        "tag_resource",
        json!({"Resource": arn, "Tags": {"app": "retired"}}),
    );

    let (code, p) = plan(&moto);
    assert_eq!(
        code,
        Some(0),
        "fail closed: nothing released: {:?}",
        actions(&p)
    );
    let foreign = findings(&p, "foreign-attachment");
    assert!(
        foreign
            .iter()
            .any(|x| x["resource"].as_str().unwrap().contains(&name)),
        "{foreign:?}"
    );
    let after = apply(&moto);
    assert_eq!(writes(&after), 0);
    assert_eq!(
        function(&observe(&moto), &name)["placement"],
        f["placement"]
    );

    moto.call(
        "lambda",
        "tag_resource",
        json!({"Resource": arn, "Tags": {"app": "payments"}}),
    );
    let (code, p) = plan(&moto);
    assert_eq!(code, Some(0), "{:?}", actions(&p));
    assert!(findings(&p, "foreign-attachment").is_empty());
}

#[test]
fn an_estate_of_an_earlier_version_is_adopted_once() {
    let Some(moto) = Moto::start() else { return };
    let seeded = moto.seed(24);
    apply(&moto);
    let inv = observe(&moto);
    // What the previous version left: ownership tags without the stamp, and no record.
    let managed: Vec<String> = inv["groups"]
        .as_array()
        .unwrap()
        .iter()
        .chain(inv["endpoints"].as_array().unwrap())
        .filter(|r| r["tags"]["palisade:managed-by"] == "palisade")
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert!(managed.len() >= 4, "{managed:?}");
    moto.call(
        "ec2",
        "delete_tags",
        json!({
            "Resources": managed,
            "Tags": [{"Key": "palisade:target"}, {"Key": "palisade:installation"}]
        }),
    );
    for f in std::fs::read_dir(moto.state.path()).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }

    // The first start of this version records them once and stamps them.
    let (code, p) = plan(&moto);
    assert_eq!(
        code,
        Some(0),
        "a plan without the record trusts tags: {:?}",
        actions(&p)
    );
    let upgraded = apply(&moto);
    assert!(upgraded["error"].is_null(), "{}", upgraded["error"]);
    let boot = events(&moto, "ownership-bootstrapped");
    assert_eq!(boot.len(), 1);
    assert_eq!(boot[0]["count"], managed.len());
    let stamped = actions(&upgraded["plan"]);
    assert_eq!(
        stamped
            .iter()
            .filter(|a| a.starts_with("setOwnershipTags"))
            .count(),
        managed.len(),
        "{stamped:?}"
    );
    let inv = observe(&moto);
    assert_eq!(
        group(&inv, "palisade-payments-api")["tags"]["palisade:installation"],
        "e2e"
    );

    // Never again: a group tagged now is a claim.
    let prod = seeded["vpcs"]["prod"].as_str().unwrap();
    let late = hand_group(
        &moto,
        prod,
        "late",
        &[
            ("palisade:managed-by", "palisade"),
            ("palisade:policy", "ghost"),
        ],
    );
    let again = apply(&moto);
    assert_eq!(writes(&again), 0);
    assert_eq!(events(&moto, "ownership-bootstrapped").len(), 1);
    let claims = findings(&again["plan"], "claimed-ownership");
    assert!(serde_json::to_string(&claims).unwrap().contains(&late));
}
