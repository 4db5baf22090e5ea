//! The Azure provider through the real binary against the stateful ARM fake: the
//! `prod-azure` target of `policies-example` converges, a second plan is empty, drift made
//! by hand through ARM is reverted, subnets keep every unrelated property, and a fake
//! that throttles every third call still converges with the retries counted.
mod support;

use serde_json::{Value, json};
use support::ArmFake;

const TARGET: &str = "prod-azure";
const RG: &str = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-prod";

fn net(path: &str) -> String {
    format!("{RG}/providers/Microsoft.Network/{path}")
}

fn subnet(name: &str) -> String {
    net(&format!("virtualNetworks/vnet-prod/subnets/{name}"))
}

fn apply(arm: &ArmFake) -> Value {
    support::apply(arm.palisade(), TARGET)
}

fn plan(arm: &ArmFake) -> (Option<i32>, Value) {
    support::plan(arm.palisade(), TARGET)
}

fn calls(v: &Value, pred: impl Fn(&Value) -> bool) -> u64 {
    v["apiCalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| pred(c))
        .map(|c| c["count"].as_u64().unwrap())
        .sum()
}

fn nsg_of(arm: &ArmFake, subnet_name: &str) -> Option<String> {
    arm.fake.get(&subnet(subnet_name)).unwrap()["properties"]["networkSecurityGroup"]["id"]
        .as_str()
        .map(str::to_string)
}

fn site_subnet(arm: &ArmFake, site: &str) -> Option<String> {
    arm.fake
        .get(&format!("{RG}/providers/Microsoft.Web/sites/{site}"))
        .unwrap()["properties"]["virtualNetworkSubnetId"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn the_azure_target_converges_and_drift_is_reverted() {
    let arm = ArmFake::start(
        palisade_armfake::Config {
            in_progress_polls: 1,
            ..Default::default()
        },
        40,
    );
    let subnet_before = arm.fake.get(&subnet("snet-orders")).unwrap();

    let first = apply(&arm);
    let results = first["apply"]["results"].as_array().unwrap();
    assert!(results.len() >= 10, "{}", first["apply"]);
    assert!(
        results.iter().all(|r| r["error"].is_null()),
        "{}",
        first["apply"]
    );
    // NSGs are attached before any function joins their subnet.
    let actions: Vec<&str> = results
        .iter()
        .map(|r| r["planned"]["change"]["action"].as_str().unwrap())
        .collect();
    let last_attach = actions
        .iter()
        .rposition(|a| *a == "setSubnetGroup")
        .expect("associations");
    let first_join = actions
        .iter()
        .position(|a| *a == "setPlacement")
        .expect("placements");
    assert!(last_attach < first_join, "{actions:?}");
    let (code, p) = plan(&arm);
    assert_eq!(code, Some(0), "plan after apply: {}", p["changes"]);
    // Guardrails judge what each NSG lets through in effect, Azure's default rules
    // included: the unmanaged NSG sends everything to the internet through
    // AllowInternetOutBound; the managed ones' deny-all takes it back.
    let egress: Vec<&Value> = p["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["guardrail"] == "internet-egress-https-only")
        .collect();
    assert!(
        egress
            .iter()
            .any(|f| f["resource"].as_str().unwrap().ends_with("nsg-legacy")
                && f["message"]
                    .as_str()
                    .unwrap()
                    .contains("AllowInternetOutBound")),
        "{egress:#?}"
    );
    assert!(
        !egress
            .iter()
            .any(|f| f["resource"].as_str().unwrap().contains("palisade-")),
        "a managed NSG's default deny holds: {egress:#?}"
    );

    // What the policies say is what ARM holds.
    let reports_nsg = net("networkSecurityGroups/palisade-reports-func");
    let orders_nsg = net("networkSecurityGroups/palisade-orders-func");
    assert!(
        nsg_of(&arm, "snet-reports")
            .unwrap()
            .eq_ignore_ascii_case(&reports_nsg)
    );
    assert!(
        nsg_of(&arm, "snet-orders")
            .unwrap()
            .eq_ignore_ascii_case(&orders_nsg)
    );
    assert!(
        site_subnet(&arm, "func-reports")
            .unwrap()
            .eq_ignore_ascii_case(&subnet("snet-reports"))
    );
    for i in [3, 5, 39] {
        let s = site_subnet(&arm, &format!("func-orders-{i:03}")).expect("integrated");
        assert!(s.eq_ignore_ascii_case(&subnet("snet-orders")));
    }
    assert_eq!(
        site_subnet(&arm, "func-misc-004"),
        None,
        "a function no policy selects is left alone"
    );
    let pe = net("privateEndpoints/palisade-endpoint-kv-reports-vault");
    assert!(
        arm.fake.get(&pe).is_some(),
        "private endpoint to kv-reports"
    );
    // A private endpoint whose connection waits for approval is a finding, not compliance.
    let approved = arm.fake.get(&pe).unwrap();
    let mut pending = approved.clone();
    pending["properties"]["privateLinkServiceConnections"][0]["properties"]["privateLinkServiceConnectionState"]
        ["status"] = json!("Pending");
    arm.fake.put(pending).unwrap();
    let (_, p) = plan(&arm);
    let waiting: Vec<&Value> = p["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "endpoint-not-approved")
        .collect();
    assert_eq!(waiting.len(), 1, "{:#}", p["findings"]);
    assert!(waiting[0]["message"].as_str().unwrap().contains("Pending"));
    arm.fake.put(approved).unwrap();
    let rules = arm.fake.get(&reports_nsg).unwrap()["properties"]["securityRules"].clone();
    let names: Vec<&str> = rules
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("palisade-in-") || n.starts_with("palisade-out-")),
        "{names:?}"
    );
    // Default deny: each direction ends with a deny-all below every declared rule, so
    // Azure's default rules (AllowVnetInBound, AllowInternetOutBound…) never apply.
    for (name, direction) in [
        ("palisade-in-4096", "Inbound"),
        ("palisade-out-4096", "Outbound"),
    ] {
        let r = rules
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("no {name}: {names:?}"));
        let p = &r["properties"];
        assert_eq!(
            (
                p["access"].as_str(),
                p["direction"].as_str(),
                p["protocol"].as_str()
            ),
            (Some("Deny"), Some(direction), Some("*")),
            "{r}"
        );
        assert_eq!(p["sourceAddressPrefix"], "*");
        assert_eq!(p["destinationAddressPrefix"], "*");
    }
    // Integrated apps send all traffic through the VNet (route-all).
    let (_, st) = arm.call(
        "GET",
        &format!("{RG}/providers/Microsoft.Web/sites/func-orders-003"),
        None,
    );
    assert_eq!(st["properties"]["vnetRouteAllEnabled"], true, "{st}");
    // The NSG Palisade does not own is untouched.
    let legacy = arm
        .fake
        .get(&net("networkSecurityGroups/nsg-legacy"))
        .unwrap();
    assert_eq!(
        legacy["properties"]["securityRules"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(nsg_of(&arm, "snet-legacy").unwrap().ends_with("nsg-legacy"));

    // A second apply writes nothing.
    let second = apply(&arm);
    assert_eq!(
        calls(&second, |c| c["kind"] == "write"),
        0,
        "{}",
        second["apiCalls"]
    );

    // Drift by hand through ARM.
    let (s, _) = arm.call("PUT", &format!("{reports_nsg}/securityRules/debug-ssh"), Some(&json!({ "properties": {
        "protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "22", "sourceAddressPrefix": "0.0.0.0/0",
        "destinationAddressPrefix": "*", "access": "Allow", "priority": 3000, "direction": "Inbound" } })));
    assert_eq!(s, 201);
    let (_, mut sn) = arm.call("GET", &subnet("snet-orders"), None);
    sn["properties"]
        .as_object_mut()
        .unwrap()
        .remove("networkSecurityGroup");
    assert_eq!(arm.call("PUT", &subnet("snet-orders"), Some(&sn)).0, 200);
    assert_eq!(arm.call("DELETE", &pe, None).0, 202);
    let site = format!("{RG}/providers/Microsoft.Web/sites/func-reports");
    let (_, mut st) = arm.call("GET", &site, None);
    st["properties"]["virtualNetworkSubnetId"] = Value::Null;
    assert_eq!(arm.call("PUT", &site, Some(&st)).0, 200);
    // Route-all switched off by hand: egress rules would stop applying to internet-bound
    // traffic.
    let orders3 = format!("{RG}/providers/Microsoft.Web/sites/func-orders-003");
    let (_, mut st) = arm.call("GET", &orders3, None);
    st["properties"]["vnetRouteAllEnabled"] = json!(false);
    assert_eq!(arm.call("PUT", &orders3, Some(&st)).0, 200);

    let (code, p) = plan(&arm);
    assert_eq!(code, Some(2), "drift is planned: {p}");
    let route = p["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["resource"] == "function func-orders-003")
        .expect("route-all off is planned");
    assert_eq!(route["cause"], "drift", "{route}");
    let third = apply(&arm);
    assert!(
        third["apply"]["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["error"].is_null()),
        "{}",
        third["apply"]
    );
    let (code, p) = plan(&arm);
    assert_eq!(code, Some(0), "converged again: {}", p["changes"]);
    assert!(
        arm.fake
            .get(&format!("{reports_nsg}/securityRules/debug-ssh"))
            .is_none(),
        "hand-made rule removed"
    );
    assert!(
        nsg_of(&arm, "snet-orders")
            .unwrap()
            .eq_ignore_ascii_case(&orders_nsg),
        "NSG re-attached"
    );
    assert!(arm.fake.get(&pe).is_some(), "private endpoint re-created");
    assert!(
        site_subnet(&arm, "func-reports")
            .unwrap()
            .eq_ignore_ascii_case(&subnet("snet-reports")),
        "VNet integration restored"
    );
    let (_, st) = arm.call("GET", &orders3, None);
    assert_eq!(
        st["properties"]["vnetRouteAllEnabled"], true,
        "route-all restored"
    );

    // Through every association change the subnet kept what Palisade does not manage.
    let subnet_after = arm.fake.get(&subnet("snet-orders")).unwrap();
    for key in [
        "addressPrefix",
        "delegations",
        "serviceEndpoints",
        "routeTable",
        "privateEndpointNetworkPolicies",
        "privateLinkServiceNetworkPolicies",
    ] {
        assert_eq!(
            subnet_before["properties"][key], subnet_after["properties"][key],
            "{key}"
        );
    }
}

#[test]
fn a_throttling_arm_still_converges_and_the_retries_are_counted() {
    let arm = ArmFake::start(
        palisade_armfake::Config {
            throttle_every: 3,
            retry_after_secs: 1,
            in_progress_polls: 0,
            ..Default::default()
        },
        6,
    );
    let first = apply(&arm);
    assert!(
        first["apply"]["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["error"].is_null()),
        "{}",
        first["apply"]
    );
    let throttled = calls(&first, |c| c["outcome"] == "throttled");
    let total = calls(&first, |_| true);
    assert!(
        throttled > 0 && throttled * 4 >= total,
        "every third call throttled: {throttled} of {total}: {}",
        first["apiCalls"]
    );
    let (code, p) = plan(&arm);
    assert_eq!(code, Some(0), "plan after apply: {}", p["changes"]);
}

/// Ownership on Azure through the binary: an NSG someone tagged as Palisade's is a
/// claim (never detached, changed or deleted); a managed NSG whose tags were stripped
/// is recognised by its id and gets them back (ARM's PATCH of the tag set).
#[test]
fn azure_claims_are_never_obeyed_and_stripped_tags_are_restored() {
    let arm = ArmFake::start(palisade_armfake::Config::default(), 10);
    let first = apply(&arm);
    assert!(first["error"].is_null(), "{}", first["error"]);
    assert_eq!(plan(&arm).0, Some(0));

    let legacy = net("networkSecurityGroups/nsg-legacy");
    let tags = json!({"tags": {"palisade:managed-by": "palisade", "palisade:policy": "ghost"}});
    assert_eq!(arm.call("PATCH", &legacy, Some(&tags)).0, 200);
    let before = arm.fake.get(&legacy).unwrap();
    let (code, p) = plan(&arm);
    assert_eq!(
        code,
        Some(0),
        "nothing planned for a claim: {}",
        p["changes"]
    );
    let claims: Vec<&Value> = p["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "claimed-ownership")
        .collect();
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert!(
        claims[0]["resource"]
            .as_str()
            .unwrap()
            .contains("nsg-legacy")
    );
    let again = apply(&arm);
    assert_eq!(calls(&again, |c| c["kind"] == "write"), 0);
    assert_eq!(arm.fake.get(&legacy).unwrap(), before, "untouched");
    assert!(nsg_of(&arm, "snet-legacy").unwrap().ends_with("nsg-legacy"));

    let reports = net("networkSecurityGroups/palisade-reports-func");
    let rules_before = arm.fake.get(&reports).unwrap()["properties"]["securityRules"].clone();
    assert_eq!(
        arm.call("PATCH", &reports, Some(&json!({"tags": {"team": "x"}})))
            .0,
        200
    );
    let (code, p) = plan(&arm);
    assert_eq!(code, Some(2));
    let actions: Vec<&str> = p["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["change"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["setOwnershipTags"], "no twin, no detach: {p}");
    let fixed = apply(&arm);
    assert!(fixed["error"].is_null(), "{}", fixed["error"]);
    let nsg = arm.fake.get(&reports).unwrap();
    assert_eq!(nsg["tags"]["palisade:managed-by"], "palisade");
    assert_eq!(nsg["tags"]["palisade:policy"], "reports-func");
    assert_eq!(nsg["tags"]["palisade:installation"], "e2e");
    assert_eq!(nsg["tags"]["team"], "x", "other tags are kept");
    assert_eq!(nsg["properties"]["securityRules"], rules_before);
    assert_eq!(plan(&arm).0, Some(0));
}

fn front_door(arm: &ArmFake, site: &str) -> Value {
    let (status, body) = arm.call(
        "GET",
        &format!("{RG}/providers/Microsoft.Web/sites/{site}/config/web"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    body["properties"].clone()
}

fn open_by_hand(arm: &ArmFake, site: &str) {
    let (status, body) = arm.call(
        "PATCH",
        &format!("{RG}/providers/Microsoft.Web/sites/{site}/config/web"),
        Some(&json!({ "properties": {
            "ipSecurityRestrictions": [
                { "ipAddress": "Any", "action": "Allow", "priority": 100, "name": "open", "description": "by hand" }
            ],
            "ipSecurityRestrictionsDefaultAction": "Allow"
        }})),
    );
    assert_eq!(status, 200, "{body}");
}

fn front_door_findings(p: &Value, site: &str) -> Vec<String> {
    p["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| {
            f["guardrail"] == "no-world-ingress"
                && f["resource"].as_str().unwrap().ends_with(site)
                && f["message"].as_str().unwrap().contains("front door")
        })
        .map(|f| f["message"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_front_door_admits_exactly_what_ingress_declares() {
    let arm = ArmFake::start(palisade_armfake::Config::default(), 4);
    // As App Service creates them, apps admit everyone ("Allow all"): the guardrail says
    // so, naming the default action.
    let (_, before) = plan(&arm);
    let open = front_door_findings(&before, "func-reports");
    assert_eq!(open.len(), 1, "{:#}", before["findings"]);
    assert!(open[0].contains("the default action (allow)"), "{open:?}");
    let changes: Vec<&Value> = before["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["change"]["action"] == "setInbound")
        .collect();
    assert_eq!(changes.len(), 4, "one per selected app: {changes:#?}");

    apply(&arm);
    // reports-func admits orders-func's integration subnet on 443, nothing else; the
    // default action is Deny (ARM shows it as the "Deny all" entry).
    let reports = front_door(&arm, "func-reports");
    assert_eq!(reports["ipSecurityRestrictionsDefaultAction"], "Deny");
    let rules = reports["ipSecurityRestrictions"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{rules:#?}");
    assert!(
        rules[0]["vnetSubnetResourceId"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(&subnet("snet-orders")),
        "{rules:#?}"
    );
    assert_eq!(
        (rules[0]["action"].as_str(), rules[0]["priority"].as_u64()),
        (Some("Allow"), Some(100))
    );
    assert_eq!(rules[1]["name"], "Deny all");
    let orders = front_door(&arm, "func-orders-002");
    let rules = orders["ipSecurityRestrictions"].as_array().unwrap();
    assert_eq!(
        (rules[0]["ipAddress"].as_str(), rules[0]["tag"].as_str()),
        (Some("10.20.0.0/24"), Some("Default")),
        "{rules:#?}"
    );
    // Everything else of the configuration is untouched.
    assert_eq!(orders["minTlsVersion"], "1.2");
    let (code, p) = plan(&arm);
    assert_eq!(code, Some(0), "plan after apply: {:#}", p["changes"]);
    assert!(front_door_findings(&p, "func-reports").is_empty());

    // Opened to anyone by hand: a finding and a revert.
    open_by_hand(&arm, "func-reports");
    let (code, p) = plan(&arm);
    assert_eq!(code, Some(2), "{:#}", p["changes"]);
    let found = front_door_findings(&p, "func-reports");
    assert!(
        found.iter().any(|m| m.contains("\"open\"")),
        "the restriction is named: {found:?}"
    );
    apply(&arm);
    assert_eq!(
        front_door(&arm, "func-reports")["ipSecurityRestrictionsDefaultAction"],
        "Deny"
    );
    assert_eq!(plan(&arm).0, Some(0));

    // In audit mode the same change is a finding and nothing is written.
    let dir = tempfile::tempdir().unwrap();
    support::copy_dir(&support::root().join("policies-example"), dir.path());
    let file = dir.path().join("azure/functions.yaml");
    let text = std::fs::read_to_string(&file).unwrap().replacen(
        "  target: prod-azure\n  functions: { names: [ func-reports ] }",
        "  target: prod-azure\n  mode: audit\n  functions: { names: [ func-reports ] }",
        1,
    );
    assert!(text.contains("mode: audit"));
    std::fs::write(&file, text).unwrap();
    open_by_hand(&arm, "func-reports");
    let (_, p) = support::plan_in(arm.palisade(), dir.path(), TARGET);
    assert!(
        !p["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["change"]["action"] == "setInbound"),
        "{:#}",
        p["changes"]
    );
    assert!(
        p["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "audit-drift"
                && f["resource"].as_str().unwrap().ends_with("func-reports")
                && f["message"].as_str().unwrap().contains("inbound")),
        "{:#}",
        p["findings"]
    );
    support::apply_in(arm.palisade(), dir.path(), TARGET);
    assert_eq!(
        front_door(&arm, "func-reports")["ipSecurityRestrictionsDefaultAction"],
        "Allow",
        "audit writes nothing"
    );
}

/// Who made a drift comes from the Activity Log: a change made by hand names its
/// caller; a change the log does not show is unknown — never Palisade, whose own writes
/// to the same resource are in the window and are recognised by the request ids it sent.
#[test]
fn drift_names_who_made_it_and_never_palisade() {
    use support::{Controller, GitRepo};
    let arm = ArmFake::start(palisade_armfake::Config::default(), 4);
    let repo = GitRepo::with_example();
    let head = repo.git(&["rev-parse", "HEAD"]);
    let c = Controller::start_azure(&arm, &repo, &["--resync", "1s"]);
    c.wait(120, "converged", |c| c.ready_at(&head));
    // By hand, through ARM: an RDP rule from the internet.
    let nsg = net("networkSecurityGroups/palisade-reports-func");
    let (status, body) = arm.call(
        "PUT",
        &format!("{nsg}/securityRules/debug-rdp"),
        Some(&json!({ "properties": {
            "protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "3389",
            "sourceAddressPrefix": "Internet", "destinationAddressPrefix": "*",
            "access": "Allow", "priority": 3001, "direction": "Inbound"
        }})),
    );
    assert!(status < 300, "{status} {body}");
    // Behind ARM's back (no Activity Log event): the front door opened. Palisade wrote
    // this resource itself a moment ago.
    arm.fake
        .put(json!({
            "id": format!("{RG}/providers/Microsoft.Web/sites/func-reports/config/web"),
            "properties": { "ipSecurityRestrictionsDefaultAction": "Allow" }
        }))
        .unwrap();
    c.wait(60, "both reverted", |_| {
        arm.fake
            .get(&format!("{nsg}/securityRules/debug-rdp"))
            .is_none()
            && front_door(&arm, "func-reports")["ipSecurityRestrictionsDefaultAction"] == "Deny"
    });
    // The evidence is written once the reconcile (and its audit-log lookup) is done.
    let drift_events = || -> Vec<Value> {
        palisade::history::Store::open(&arm.state.path().join("history.db"))
            .unwrap()
            .events(&palisade::history::Filter::default())
            .unwrap()
            .into_iter()
            .filter(|e| e.event.kind() == "drift-detected")
            .map(|e| serde_json::to_value(&e.event).unwrap())
            .collect()
    };
    c.wait(30, "both drifts recorded", |_| drift_events().len() >= 2);
    let drift = drift_events();
    let on = |what: &str| {
        drift
            .iter()
            .find(|e| e.to_string().contains(what))
            .unwrap_or_else(|| panic!("no drift on {what}: {drift:#?}"))
            .clone()
    };
    let rdp = on("reports-func");
    let actor = &rdp["data"]["actor"];
    assert_eq!(actor["id"], "operator@contoso.example", "{rdp:#}");
    assert_eq!(actor["kind"], "user");
    assert_eq!(actor["sourceIp"], "127.0.0.1");
    assert!(
        actor["operation"]
            .as_str()
            .unwrap()
            .ends_with("securityRules/write"),
        "{actor}"
    );
    assert!(actor["correlationId"].is_string() && actor["eventTime"].is_string());
    let door = on("func-reports");
    assert!(
        door["data"]["actor"].is_null(),
        "not in the log: unknown, and never Palisade itself: {door:#}"
    );
    assert!(
        c.metric("palisade_drift_attributions_total") >= 2.0,
        "{}",
        c.logs()
    );
}

/// The Activity Log lags: a drift whose event is not visible yet is recorded without an
/// author, asked about again, and attributed by a later `drift-attributed` event that
/// the reports join to it.
#[test]
fn a_lagging_activity_log_attributes_the_drift_later() {
    use support::{Controller, GitRepo};
    let arm = ArmFake::start(
        palisade_armfake::Config {
            activity_delay: std::time::Duration::from_secs(4),
            ..Default::default()
        },
        4,
    );
    let repo = GitRepo::with_example();
    let head = repo.git(&["rev-parse", "HEAD"]);
    let c = Controller::start_azure(&arm, &repo, &["--resync", "1s"]);
    c.wait(120, "converged", |c| c.ready_at(&head));
    let nsg = net("networkSecurityGroups/palisade-orders-func");
    let (status, body) = arm.call(
        "PUT",
        &format!("{nsg}/securityRules/debug-ssh"),
        Some(&json!({ "properties": {
            "protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "22",
            "sourceAddressPrefix": "Internet", "destinationAddressPrefix": "*",
            "access": "Allow", "priority": 3002, "direction": "Inbound"
        }})),
    );
    assert!(status < 300, "{status} {body}");
    let events = |kind: &str| -> Vec<Value> {
        palisade::history::Store::open(&arm.state.path().join("history.db"))
            .unwrap()
            .events(&palisade::history::Filter::default())
            .unwrap()
            .into_iter()
            .filter(|e| e.event.kind() == kind)
            .map(|e| serde_json::to_value(&e).unwrap())
            .collect()
    };
    c.wait(60, "drift attributed later", |_| {
        !events("drift-attributed").is_empty()
    });
    let detected = events("drift-detected");
    let drift = detected
        .iter()
        .find(|e| e.to_string().contains("orders-func"))
        .unwrap_or_else(|| panic!("{detected:#?}"));
    assert!(
        drift["data"]["actor"].is_null(),
        "not in the log when it was found: {drift:#}"
    );
    let later = &events("drift-attributed")[0];
    assert_eq!(later["data"]["detectedAt"], drift["at"], "{later:#}");
    assert_eq!(later["data"]["actor"]["id"], "operator@contoso.example");
    // The report joins them.
    let out = arm
        .palisade()
        .args(["report", "--since", "2000-01-01", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let item = report["drift"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["resource"].as_str().unwrap().contains("orders-func"))
        .unwrap_or_else(|| panic!("{:#}", report["drift"]));
    assert_eq!(item["actor"]["id"], "operator@contoso.example", "{item:#}");
}
