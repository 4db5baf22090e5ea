//! The Azure provider against the stateful ARM fake over real HTTP: the token comes from
//! the fake's token endpoint through `azure_identity`'s client-secret credential, every
//! call goes through `azure_mgmt_network` or the provider's typed calls.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use azure_core::Url;
use azure_mgmt_network::package_2024_03::models as m;
use palisade_armfake::{Config, EXAMPLE_RESOURCE_GROUP, EXAMPLE_SUBSCRIPTION, Fake, Running};
use palisade_providers::azure::{AzureProvider, AzureSettings};
use palisade_providers::{
    Access, CallKind, CallOutcome, Change, Direction, GroupRef, OutcomeStatus, Peer, Placement,
    PortRange, Ports, Protocol, Provider, ProviderError, Rule, Target, TargetScope,
    model::ownership_tags, total_calls,
};
use serde_json::{Value, json};

const VNET: &str = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-prod/providers/Microsoft.Network/virtualNetworks/vnet-prod";
const RG: &str = "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-prod";

fn target() -> Target {
    Target {
        name: "prod-azure".into(),
        scope: TargetScope::Azure {
            subscription_id: EXAMPLE_SUBSCRIPTION.into(),
            resource_group: EXAMPLE_RESOURCE_GROUP.into(),
            location: "westeurope".into(),
        },
    }
}

async fn start(config: Config, functions: usize) -> (Running, AzureProvider) {
    start_with(config, functions, AzureSettings::default()).await
}

/// The fake seeded with `functions` apps, and a provider on it with `settings` (its
/// endpoint and short waits filled in).
async fn start_with(
    config: Config,
    functions: usize,
    settings: AzureSettings,
) -> (Running, AzureProvider) {
    let fake = Fake::new(Config {
        static_token: Some("test-token".into()),
        ..config
    });
    fake.seed(&palisade_armfake::example_estate(functions))
        .unwrap();
    let running = fake.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let credential = azure_identity::ClientSecretCredential::new(
        azure_core::new_http_client(),
        Url::parse(&running.endpoint).unwrap(),
        "tenant".into(),
        "client".into(),
        "secret".into(),
    );
    let provider = AzureProvider::with_credential(
        AzureSettings {
            arm_endpoint: running.endpoint.clone(),
            poll_interval: Duration::from_millis(10),
            conflict_delay: Duration::from_millis(10),
            ..settings
        },
        Arc::new(credential),
    );
    (running, provider)
}

fn subnet(name: &str) -> String {
    format!("{VNET}/subnets/{name}")
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

fn rule(direction: Direction, prio: u16, ports: Ports, peer: Peer) -> Rule {
    Rule {
        priority: Some(prio),
        description: Some("reports-func/test".into()),
        ..Rule::allow(direction, ports, peer)
    }
}

fn count(p: &AzureProvider, op: &str, outcome: CallOutcome) -> u64 {
    p.api_calls()
        .iter()
        .filter(|c| c.operation == op && c.outcome == outcome)
        .map(|c| c.count)
        .sum()
}

async fn create_nsg(p: &AzureProvider, owner: &str) -> String {
    let out = p
        .apply(
            &target(),
            &Change::CreateGroup {
                owner: owner.into(),
                name: format!("palisade-{owner}"),
                network: String::new(),
                description: String::new(),
                tags: ownership_tags(owner),
            },
        )
        .await
        .unwrap();
    out.created_id.unwrap()
}

#[tokio::test]
async fn observe_reads_one_list_per_collection_page() {
    let (fake, p) = start(Config::default(), 250).await;
    let inv = p
        .observe(&target(), &palisade_providers::Ownership::default())
        .await
        .unwrap();
    assert_eq!(inv.functions.len(), 250);
    assert_eq!(inv.networks.len(), 1);
    assert_eq!(inv.subnets.len(), 4);
    assert_eq!(inv.groups.len(), 1, "nsg-legacy");
    let legacy = inv
        .subnets
        .iter()
        .find(|s| s.name == "snet-legacy")
        .unwrap();
    assert_eq!(
        legacy.group,
        Some(GroupRef::Id(format!(
            "{RG}/providers/Microsoft.Network/networkSecurityGroups/nsg-legacy"
        )))
    );
    let orders = inv
        .functions
        .iter()
        .find(|f| f.name == "func-orders")
        .unwrap();
    assert_eq!(
        orders.placement.as_ref().unwrap().subnets,
        vec![subnet("snet-orders")]
    );
    assert_eq!(inv.groups[0].rules.len(), 1);
    // 250 sites at 100 per page = 3 pages; VNets, NSGs, private endpoints one page each.
    let reads = total_calls(&p.api_calls(), CallKind::Read);
    assert_eq!(reads, 6, "{:#?}", p.api_calls());
    assert_eq!(count(&p, "GET sites (list)", CallOutcome::Ok), 3);
    assert_eq!(fake.fake.calls(), 6);
}

#[tokio::test]
async fn the_full_lifecycle_polls_each_operation_and_preserves_the_subnet() {
    let (fake, p) = start(
        Config {
            in_progress_polls: 2,
            ..Config::default()
        },
        4,
    )
    .await;
    let t = target();
    let nsg = create_nsg(&p, "reports-func").await;
    assert!(nsg.ends_with("/networkSecurityGroups/palisade-reports-func"));
    // Each PUT was followed to its end: 2 × InProgress + 1 × Succeeded.
    assert_eq!(count(&p, "GET operations (poll)", CallOutcome::Ok), 3);

    let rules = vec![
        rule(
            Direction::Ingress,
            100,
            tcp(443),
            Peer::cidr("10.20.2.0/24".parse().unwrap()),
        ),
        rule(
            Direction::Egress,
            100,
            tcp(1433),
            Peer::ServiceTag("Sql.WestEurope".into()),
        ),
        Rule {
            access: Access::Deny,
            ..rule(
                Direction::Egress,
                4000,
                Ports::ALL,
                Peer::ServiceTag("Internet".into()),
            )
        },
    ];
    let group = GroupRef::Managed("reports-func".into());
    p.apply(
        &t,
        &Change::AddRules {
            group: group.clone(),
            rules: rules.clone(),
        },
    )
    .await
    .unwrap();

    let before = fake.fake.get(&subnet("snet-reports")).unwrap();
    let out = p
        .apply(
            &t,
            &Change::SetSubnetGroup {
                subnet: subnet("snet-reports"),
                before: None,
                after: Some(group.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!(out.status, OutcomeStatus::Applied);
    assert_eq!(out.request_ids.len(), 1);
    let after = fake.fake.get(&subnet("snet-reports")).unwrap();
    for key in [
        "delegations",
        "serviceEndpoints",
        "routeTable",
        "privateEndpointNetworkPolicies",
        "privateLinkServiceNetworkPolicies",
        "addressPrefix",
    ] {
        assert_eq!(
            before["properties"][key], after["properties"][key],
            "{key} survives the association"
        );
    }
    assert!(
        after["properties"]["networkSecurityGroup"]["id"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(&nsg)
    );

    let site = format!("{RG}/providers/Microsoft.Web/sites/func-reports");
    let site_before = fake.fake.get(&site).unwrap();
    let placement = Placement {
        network: VNET.into(),
        subnets: vec![subnet("snet-reports")],
        groups: vec![],
        route_all: true,
    };
    p.apply(
        &t,
        &Change::SetPlacement {
            function: site.clone(),
            name: "func-reports".into(),
            before: None,
            after: Some(placement.clone()),
        },
    )
    .await
    .unwrap();
    let site_after = fake.fake.get(&site).unwrap();
    let mut expected = site_before.clone();
    expected["properties"]["virtualNetworkSubnetId"] = json!(subnet("snet-reports"));
    expected["etag"] = site_after["etag"].clone();
    assert_eq!(site_after, expected, "only virtualNetworkSubnetId changed");

    // Route-all switched off by hand: the same placement puts it back, and only it.
    let mut off = site_after.clone();
    off["properties"]["vnetRouteAllEnabled"] = json!(false);
    fake.fake.put(off.clone()).unwrap();
    let seen = p
        .observe(&t, &palisade_providers::Ownership::default())
        .await
        .unwrap();
    let reports = seen
        .functions
        .iter()
        .find(|f| f.name == "func-reports")
        .unwrap();
    assert!(
        !reports.placement.as_ref().unwrap().route_all,
        "observed off"
    );
    let again = p
        .apply(
            &t,
            &Change::SetPlacement {
                function: site.clone(),
                name: "func-reports".into(),
                before: reports.placement.clone(),
                after: Some(placement.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!(again.status, OutcomeStatus::Applied);
    let restored = fake.fake.get(&site).unwrap();
    let mut expected = off.clone();
    expected["properties"]["vnetRouteAllEnabled"] = json!(true);
    expected["etag"] = restored["etag"].clone();
    assert_eq!(restored, expected, "only route-all changed");

    let kv = "/subscriptions/00000000-0000-0000-0000-000000000001/resourcegroups/rg-prod/providers/microsoft.keyvault/vaults/kv-reports";
    let owner = "endpoint.kv-reports.vault";
    let mut tags = ownership_tags(owner);
    tags.insert("Name".into(), "x".into());
    p.apply(
        &t,
        &Change::CreateEndpoint {
            owner: owner.into(),
            service: format!("{kv}#vault"),
            kind: palisade_providers::EndpointKind::Private,
            network: VNET.into(),
            subnets: vec![subnet("snet-endpoints")],
            groups: vec![],
            route_tables: vec![],
            private_dns: false,
            tags,
        },
    )
    .await
    .unwrap();

    // Everything reads back as asked.
    let inv = p
        .observe(&t, &palisade_providers::Ownership::default())
        .await
        .unwrap();
    let g = inv.managed_group("reports-func").unwrap();
    let got: BTreeSet<Rule> = g.rules.iter().cloned().collect();
    let want: BTreeSet<Rule> = rules.iter().cloned().collect();
    assert_eq!(got, want);
    assert_eq!(
        inv.subnets
            .iter()
            .find(|s| s.name == "snet-reports")
            .unwrap()
            .group,
        Some(group.clone())
    );
    let f = inv
        .functions
        .iter()
        .find(|f| f.name == "func-reports")
        .unwrap();
    assert_eq!(f.placement.as_ref(), Some(&placement));
    let ep = inv
        .endpoints
        .iter()
        .find(|e| e.owner() == Some(owner))
        .unwrap();
    assert_eq!(ep.service, format!("{kv}#vault"));
    assert_eq!(ep.subnets, vec![subnet("snet-endpoints")]);

    // Re-applying is idempotent.
    let again = p
        .apply(
            &t,
            &Change::SetSubnetGroup {
                subnet: subnet("snet-reports"),
                before: None,
                after: Some(group.clone()),
            },
        )
        .await
        .unwrap();
    assert_eq!(again.status, OutcomeStatus::AlreadyDone);

    // An NSG still associated is not deleted: pending, like AWS's DependencyViolation.
    let out = p
        .apply(
            &t,
            &Change::DeleteGroup {
                owner: "reports-func".into(),
                id: nsg.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(out.status, OutcomeStatus::Pending, "{out:?}");
    assert!(fake.fake.get(&nsg).is_some());

    // Detach, then delete: the delete's Location is followed to its 204.
    p.apply(
        &t,
        &Change::SetSubnetGroup {
            subnet: subnet("snet-reports"),
            before: Some(group.clone()),
            after: None,
        },
    )
    .await
    .unwrap();
    let after = fake.fake.get(&subnet("snet-reports")).unwrap();
    assert!(after["properties"].get("networkSecurityGroup").is_none());
    assert_eq!(
        before["properties"]["delegations"],
        after["properties"]["delegations"]
    );
    let polls_before = count(&p, "GET operations (poll)", CallOutcome::Ok);
    let out = p
        .apply(
            &t,
            &Change::DeleteGroup {
                owner: "reports-func".into(),
                id: nsg.clone(),
            },
        )
        .await
        .unwrap();
    assert_eq!(out.status, OutcomeStatus::Applied);
    assert!(fake.fake.get(&nsg).is_none());
    assert_eq!(
        count(&p, "GET operations (poll)", CallOutcome::Ok),
        polls_before + 3
    );
    let gone = p
        .apply(
            &t,
            &Change::DeleteGroup {
                owner: "reports-func".into(),
                id: nsg,
            },
        )
        .await
        .unwrap();
    assert_eq!(gone.status, OutcomeStatus::AlreadyDone);
}

#[tokio::test]
async fn a_failed_operation_keeps_its_code_and_message() {
    let (fake, p) = start(Config::default(), 2).await;
    fake.fake.configure(|c| {
        c.fail_next = Some((
            "NetworkSecurityGroupQuotaExceeded".into(),
            "Quota of 5000 NSGs reached.".into(),
        ));
    });
    let err = p
        .apply(
            &target(),
            &Change::CreateGroup {
                owner: "a".into(),
                name: "palisade-a".into(),
                network: String::new(),
                description: String::new(),
                tags: ownership_tags("a"),
            },
        )
        .await
        .unwrap_err();
    match err {
        ProviderError::Api { code, message, .. } => {
            assert_eq!(code, "NetworkSecurityGroupQuotaExceeded");
            assert_eq!(message, "Quota of 5000 NSGs reached.");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn throttling_and_busy_resources_are_retried_and_counted() {
    let (fake, p) = start(
        Config {
            throttle_every: 3,
            retry_after_secs: 0,
            ..Config::default()
        },
        20,
    )
    .await;
    let inv = p
        .observe(&target(), &palisade_providers::Ownership::default())
        .await
        .unwrap();
    assert_eq!(inv.functions.len(), 20);
    create_nsg(&p, "orders-func").await;
    fake.fake.configure(|c| c.busy_writes = 2);
    p.apply(
        &target(),
        &Change::AddRules {
            group: GroupRef::Managed("orders-func".into()),
            rules: vec![rule(Direction::Ingress, 100, tcp(443), Peer::Any)],
        },
    )
    .await
    .unwrap();
    let calls = p.api_calls();
    let throttled: u64 = calls
        .iter()
        .filter(|c| c.outcome == CallOutcome::Throttled)
        .map(|c| c.count)
        .sum();
    assert!(throttled >= 3, "{calls:#?}");
    assert_eq!(
        count(&p, "PUT securityRules", CallOutcome::Error),
        2,
        "{calls:#?}"
    );
    assert!(count(&p, "PUT securityRules", CallOutcome::Ok) >= 1);
}

#[tokio::test]
async fn ownership_is_checked_before_any_write() {
    let (fake, p) = start(Config::default(), 2).await;
    // An NSG with Palisade's name but not its tags.
    fake.fake
        .seed(&json!({ "resources": [{ "id": format!("{RG}/providers/Microsoft.Network/networkSecurityGroups/palisade-x"), "location": "westeurope", "tags": { "owner": "someone" } }] }))
        .unwrap();
    let err = p
        .apply(
            &target(),
            &Change::CreateGroup {
                owner: "x".into(),
                name: "palisade-x".into(),
                network: String::new(),
                description: String::new(),
                tags: ownership_tags("x"),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.refusal(),
        Some(palisade_providers::RefusalKind::NotOwned),
        "{err}"
    );
    let legacy = format!("{RG}/providers/Microsoft.Network/networkSecurityGroups/nsg-legacy");
    let err = p
        .apply(
            &target(),
            &Change::DeleteGroup {
                owner: "x".into(),
                id: legacy.clone(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.refusal(),
        Some(palisade_providers::RefusalKind::NotOwned),
        "{err}"
    );
    let err = p
        .apply(
            &target(),
            &Change::AddRules {
                group: GroupRef::Id(legacy.clone()),
                rules: vec![rule(Direction::Ingress, 200, tcp(22), Peer::Any)],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.refusal(),
        Some(palisade_providers::RefusalKind::NotOwned),
        "{err}"
    );
    assert_eq!(
        fake.fake.get(&legacy).unwrap()["properties"]["securityRules"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let writes = total_calls(&p.api_calls(), CallKind::Write);
    assert_eq!(writes, 0);
}

#[tokio::test]
async fn a_rule_replaced_since_it_was_observed_is_not_deleted_and_hand_made_rules_leave_their_slot()
{
    let (fake, p) = start(Config::default(), 2).await;
    let t = target();
    let nsg = create_nsg(&p, "orders-func").await;
    let group = GroupRef::Managed("orders-func".into());
    // Someone adds a rule by hand at priority 100 inbound.
    let hand = json!({ "resources": [{ "id": format!("{nsg}/securityRules/ssh-debug"), "properties": {
        "protocol": "Tcp", "sourcePortRange": "*", "destinationPortRange": "22", "sourceAddressPrefix": "0.0.0.0/0",
        "destinationAddressPrefix": "*", "access": "Allow", "priority": 100, "direction": "Inbound" } }] });
    fake.fake.seed(&hand).unwrap();
    let observed = p
        .observe(&t, &palisade_providers::Ownership::default())
        .await
        .unwrap();
    let drift = observed.managed_group("orders-func").unwrap().rules.clone();
    assert_eq!(drift.len(), 1);
    // The desired rule takes slot 100: the hand-made rule holding it goes first.
    let desired = rule(
        Direction::Ingress,
        100,
        tcp(443),
        Peer::cidr("10.20.0.0/24".parse().unwrap()),
    );
    p.apply(
        &t,
        &Change::AddRules {
            group: group.clone(),
            rules: vec![desired.clone()],
        },
    )
    .await
    .unwrap();
    // Removing the observed hand-made rule now removes nothing (it is gone), and a rule
    // observed in slot palisade-in-100 with other content is not deleted either.
    let out = p
        .apply(
            &t,
            &Change::RemoveRules {
                group: group.clone(),
                rules: drift,
            },
        )
        .await
        .unwrap();
    assert_eq!(out.status, OutcomeStatus::AlreadyDone);
    let stale = Rule {
        id: Some("palisade-in-100".into()),
        ..rule(Direction::Ingress, 100, tcp(8443), Peer::Any)
    };
    let out = p
        .apply(
            &t,
            &Change::RemoveRules {
                group: group.clone(),
                rules: vec![stale],
            },
        )
        .await
        .unwrap();
    assert_eq!(out.status, OutcomeStatus::AlreadyDone);
    let inv = p
        .observe(&t, &palisade_providers::Ownership::default())
        .await
        .unwrap();
    assert_eq!(
        inv.managed_group("orders-func").unwrap().rules,
        vec![Rule {
            id: Some("palisade-in-100".into()),
            ..desired
        }]
    );
}

/// Which SDK model an example's response body is.
fn parse_as(file: &str, body: &Value) -> Result<(), String> {
    let b = body.clone();
    let list = file.ends_with("List.json") || file.ends_with("ListAll.json");
    let r = if file.starts_with("NetworkSecurityGroupRule") {
        if list {
            serde_json::from_value::<m::SecurityRuleListResult>(b).map(|_| ())
        } else {
            serde_json::from_value::<m::SecurityRule>(b).map(|_| ())
        }
    } else if file.starts_with("NetworkSecurityGroup") {
        if list {
            serde_json::from_value::<m::NetworkSecurityGroupListResult>(b).map(|_| ())
        } else {
            serde_json::from_value::<m::NetworkSecurityGroup>(b).map(|_| ())
        }
    } else if file.starts_with("Subnet") {
        if list {
            serde_json::from_value::<m::SubnetListResult>(b).map(|_| ())
        } else {
            serde_json::from_value::<m::Subnet>(b).map(|_| ())
        }
    } else if file.starts_with("PrivateEndpoint") {
        if list {
            serde_json::from_value::<m::PrivateEndpointListResult>(b).map(|_| ())
        } else {
            serde_json::from_value::<m::PrivateEndpoint>(b).map(|_| ())
        }
    } else {
        return Err(format!("{file}: no model"));
    };
    r.map_err(|e| format!("{file}: {e}"))
}

fn rg_of(id: &str) -> Option<String> {
    let parts: Vec<&str> = id.split('/').collect();
    let i = parts
        .iter()
        .position(|p| p.eq_ignore_ascii_case("resourceGroups"))?;
    Some(parts[..=i + 1].join("/"))
}

/// Every official 2024-03-01 example replays against the fake: the request is sent as
/// the example gives it (parents and, for reads, the example's own response seeded
/// first), the answer's status is one the example lists, and both the example's and the
/// fake's bodies deserialise into `azure_mgmt_network`'s models.
#[tokio::test]
async fn every_official_example_replays_against_the_fake() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../armfake/fixtures/azure-examples/2024-03-01");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 20);
    let http = azure_core::new_http_client();
    for path in files {
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        let ex: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let fake = Fake::new(Config {
            static_token: Some("t".into()),
            in_progress_polls: 0,
            ..Config::default()
        });
        let running = fake
            .clone()
            .serve("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let p = &ex["parameters"];
        let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
        let sub = s("subscriptionId");
        let rg = s("resourceGroupName");
        let scope = if rg.is_empty() {
            format!("/subscriptions/{sub}")
        } else {
            format!("/subscriptions/{sub}/resourceGroups/{rg}")
        };
        let net = format!("{scope}/providers/Microsoft.Network");
        let stem = file.trim_end_matches(".json");
        let (collection, body_key, name_key) = if stem.starts_with("NetworkSecurityGroupRule") {
            (
                format!(
                    "{net}/networkSecurityGroups/{}/securityRules",
                    s("networkSecurityGroupName")
                ),
                "securityRuleParameters",
                "securityRuleName",
            )
        } else if stem.starts_with("NetworkSecurityGroup") {
            (
                format!("{net}/networkSecurityGroups"),
                "parameters",
                "networkSecurityGroupName",
            )
        } else if stem.starts_with("Subnet") {
            (
                format!("{net}/virtualNetworks/{}/subnets", s("virtualNetworkName")),
                "subnetParameters",
                "subnetName",
            )
        } else {
            (
                format!("{net}/privateEndpoints"),
                "parameters",
                "privateEndpointName",
            )
        };
        let name = Some(s(name_key))
            .filter(|n| !n.is_empty() && !stem.ends_with("List") && !stem.ends_with("ListAll"));
        let url_path = match &name {
            Some(n) => format!("{collection}/{n}"),
            None => collection.clone(),
        };
        let method = if stem.ends_with("Create") || stem.ends_with("CreateWithRule") {
            "PUT"
        } else if stem.ends_with("Delete") {
            "DELETE"
        } else if stem.ends_with("UpdateTags") {
            "PATCH"
        } else {
            "GET"
        };
        // Parents, and for reads the example's own answer, as state.
        let mut seed: Vec<Value> = Vec::new();
        if stem.starts_with("NetworkSecurityGroupRule") {
            seed.push(json!({ "id": format!("{net}/networkSecurityGroups/{}", s("networkSecurityGroupName")), "location": "westus" }));
        }
        if stem.starts_with("Subnet") {
            seed.push(json!({ "id": format!("{net}/virtualNetworks/{}", s("virtualNetworkName")), "location": "westus", "properties": { "addressSpace": { "addressPrefixes": ["10.0.0.0/8"] } } }));
        }
        if let Some(sn) = ex["parameters"][body_key]["properties"]["subnet"]["id"].as_str() {
            let vnet = &sn[..sn.to_ascii_lowercase().rfind("/subnets/").unwrap()];
            seed.push(json!({ "id": vnet, "location": "westus", "properties": { "subnets": [{ "name": sn.rsplit('/').next().unwrap(), "properties": { "addressPrefix": "192.168.0.0/24" } }] } }));
        }
        if method != "PUT" {
            let ok = &ex["responses"]["200"]["body"];
            let items: Vec<Value> = match ok["value"].as_array() {
                Some(v) => v.clone(),
                None if ok.is_object() => vec![ok.clone()],
                None => vec![],
            };
            if items.is_empty() && name.is_some() {
                seed.push(json!({ "id": url_path, "location": "westus" }));
            }
            seed.extend(items);
        }
        let mut groups: BTreeSet<String> = seed
            .iter()
            .filter_map(|r| rg_of(r["id"].as_str()?))
            .collect();
        if !rg.is_empty() {
            groups.insert(scope.clone());
        }
        fake.seed(&json!({ "resourceGroups": groups, "resources": seed }))
            .unwrap_or_else(|e| panic!("{file}: {e}"));

        let url = Url::parse(&format!(
            "{}{url_path}?api-version=2024-03-01",
            running.endpoint
        ))
        .unwrap();
        let method_ = match method {
            "PUT" => azure_core::Method::Put,
            "DELETE" => azure_core::Method::Delete,
            "PATCH" => azure_core::Method::Patch,
            _ => azure_core::Method::Get,
        };
        let mut req = azure_core::Request::new(url, method_);
        req.insert_header("authorization", "Bearer t");
        if matches!(method, "PUT" | "PATCH") {
            req.insert_header("content-type", "application/json");
            req.set_body(serde_json::to_vec(&ex["parameters"][body_key]).unwrap());
        }
        let rsp = http.execute_request(&req).await.unwrap();
        let (status, _headers, body) = rsp.deconstruct();
        let status = status as u16;
        let bytes = body.collect().await.unwrap();
        let responses = ex["responses"].as_object().unwrap();
        assert!(
            responses.contains_key(&status.to_string()),
            "{file}: {method} {url_path} answered {status} ({}), the example lists {:?}",
            String::from_utf8_lossy(&bytes),
            responses.keys().collect::<Vec<_>>()
        );
        let example_body = &ex["responses"][status.to_string()]["body"];
        if example_body.is_object() {
            parse_as(&file, example_body).unwrap();
            let got: Value =
                serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
            parse_as(&file, &got).unwrap();
            // The fake answers with the example's shape: every top-level field the
            // example shows is there (paging links only when there is a next page).
            for key in example_body.as_object().unwrap().keys() {
                if key == "nextLink" || key == "etag" || key == "type" {
                    continue;
                }
                assert!(
                    got.get(key).is_some(),
                    "{file}: the fake's answer lacks {key:?}: {got}"
                );
            }
            if let (Some(want), Some(have)) =
                (example_body["value"].as_array(), got["value"].as_array())
            {
                assert_eq!(want.len(), have.len(), "{file}: listed items");
            }
        } else {
            assert!(bytes.is_empty() || status != 204, "{file}: 204 with a body");
        }
    }
}

/// Read-modify-writes are conditional: the fake, like ARM, refuses a PUT whose
/// `If-Match` names an etag that is no longer current, and Palisade's subnet and site
/// writes send the etag they read (a concurrent change is never overwritten).
#[tokio::test]
async fn a_stale_etag_is_refused_and_a_fresh_one_accepted() {
    let (fake, p) = start(Config::default(), 2).await;
    let http = azure_core::new_http_client();
    let id = subnet("snet-reports");
    let current = fake.fake.get(&id).unwrap();
    let etag = current["etag"].as_str().unwrap().to_string();
    let put = |tag: &str| {
        let url = Url::parse(&format!("{}{id}?api-version=2024-03-01", fake.endpoint)).unwrap();
        let mut req = azure_core::Request::new(url, azure_core::Method::Put);
        req.insert_header("authorization", "Bearer test-token");
        req.insert_header("content-type", "application/json");
        req.insert_header("if-match", tag.to_string());
        req.set_body(serde_json::to_vec(&current).unwrap());
        req
    };
    let stale = http.execute_request(&put("W/\"stale\"")).await.unwrap();
    assert_eq!(stale.status() as u16, 412);
    let fresh = http.execute_request(&put(&etag)).await.unwrap();
    assert_eq!(fresh.status() as u16, 200);
    // The provider's own association still works (it reads, then writes with that etag).
    create_nsg(&p, "reports-func").await;
    let out = p
        .apply(
            &target(),
            &Change::SetSubnetGroup {
                subnet: id.clone(),
                before: None,
                after: Some(GroupRef::Managed("reports-func".into())),
            },
        )
        .await
        .unwrap();
    assert_eq!(out.status, OutcomeStatus::Applied);
}

/// A private endpoint whose subnet changes is replaced make-before-break: one GET, the
/// new endpoint created under a new name and settled, then the old one deleted — and
/// the new one sits in the new subnet with the same service and tags.
#[tokio::test]
async fn an_endpoint_moving_subnet_is_replaced_make_before_break() {
    let (fake, p) = start(Config::default(), 2).await;
    let t = target();
    let (owner, id) = endpoint_in_snet_endpoints(&p).await;
    let gets = count(&p, "GET privateEndpoints", CallOutcome::Ok);
    let puts = count(&p, "PUT privateEndpoints", CallOutcome::Ok);
    let out = p.apply(&t, &move_to_reports(owner, &id)).await.unwrap();
    assert_eq!(out.status, OutcomeStatus::Applied);
    assert_eq!(out.request_ids.len(), 2, "the create's and the delete's");
    assert_eq!(count(&p, "GET privateEndpoints", CallOutcome::Ok), gets + 1);
    assert_eq!(count(&p, "PUT privateEndpoints", CallOutcome::Ok), puts + 1);
    let new_id = out.created_id.expect("the replacement's id");
    assert!(!new_id.eq_ignore_ascii_case(&id), "a new name: {new_id}");
    assert!(fake.fake.get(&id).is_none(), "the old endpoint is gone");
    let pe = fake.fake.get(&new_id).unwrap();
    assert!(
        pe["properties"]["subnet"]["id"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(&subnet("snet-reports"))
    );
    let inv = p
        .observe(&t, &palisade_providers::Ownership::default())
        .await
        .unwrap();
    let eps: Vec<_> = inv
        .endpoints
        .iter()
        .filter(|e| e.owner() == Some(owner))
        .collect();
    assert_eq!(eps.len(), 1);
    assert_eq!(eps[0].service, format!("{KV}#vault"));
}

/// The ARM fake fails the delete of the old endpoint: the new one is in place and
/// recorded as created, the outcome is pending, and the old one is still there for the
/// next plan to delete — at no moment is there no endpoint.
#[tokio::test]
async fn a_replacement_whose_delete_fails_keeps_the_new_endpoint() {
    let (fake, p) = start(Config::default(), 2).await;
    let t = target();
    let (owner, id) = endpoint_in_snet_endpoints(&p).await;
    fake.fake.configure(|c| {
        c.fail_next_delete = Some(("InternalServerError".into(), "delete failed".into()));
    });
    let out = p.apply(&t, &move_to_reports(owner, &id)).await.unwrap();
    assert_eq!(out.status, OutcomeStatus::Pending, "{out:?}");
    let new_id = out.created_id.expect("the replacement's id");
    assert!(fake.fake.get(&id).is_some(), "the old endpoint stays");
    assert!(fake.fake.get(&new_id).is_some(), "the new endpoint exists");
    assert!(out.detail.unwrap().contains("not deleted yet"));
}

const KV: &str = "/subscriptions/00000000-0000-0000-0000-000000000001/resourcegroups/rg-prod/providers/microsoft.keyvault/vaults/kv-reports";

async fn endpoint_in_snet_endpoints(p: &AzureProvider) -> (&'static str, String) {
    let owner = "endpoint.kv-reports.vault";
    let created = p
        .apply(
            &target(),
            &Change::CreateEndpoint {
                owner: owner.into(),
                service: format!("{KV}#vault"),
                kind: palisade_providers::EndpointKind::Private,
                network: VNET.into(),
                subnets: vec![subnet("snet-endpoints")],
                groups: vec![],
                route_tables: vec![],
                private_dns: false,
                tags: ownership_tags(owner),
            },
        )
        .await
        .unwrap();
    (owner, created.created_id.unwrap())
}

fn move_to_reports(owner: &str, id: &str) -> Change {
    Change::UpdateEndpoint {
        owner: owner.into(),
        id: id.to_string(),
        subnets: vec![subnet("snet-reports")],
        groups: vec![],
        route_tables: vec![],
        private_dns: false,
    }
}

/// A private endpoint named as Palisade would name it and tagged as Palisade's, but not
/// in the ownership record, is a claim: creating the owner's endpoint refuses it
/// instead of taking it over as "already done".
#[tokio::test]
async fn a_claimed_endpoint_of_the_same_name_is_never_taken_over() {
    let (_fake, p) = start(Config::default(), 2).await;
    let t = target();
    let (owner, id) = endpoint_in_snet_endpoints(&p).await;
    // Observed under a record that does not hold it.
    let record = palisade_providers::Ownership::recorded("prod-azure", "inst");
    let inv = p.observe(&t, &record).await.unwrap();
    assert!(inv.ownership.iter().any(|n| n.id.eq_ignore_ascii_case(&id)
        && n.verdict == palisade_providers::OwnershipVerdict::Claimed));
    let err = p
        .apply(
            &t,
            &Change::CreateEndpoint {
                owner: owner.into(),
                service: format!("{KV}#vault"),
                kind: palisade_providers::EndpointKind::Private,
                network: VNET.into(),
                subnets: vec![subnet("snet-endpoints")],
                groups: vec![],
                route_tables: vec![],
                private_dns: false,
                tags: ownership_tags(owner),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        err.refusal(),
        Some(palisade_providers::RefusalKind::NotOwned),
        "{err}"
    );
}

#[tokio::test]
async fn access_restrictions_are_read_and_written_only_on_the_targets_sites() {
    let (_running, p) = start(Config::default(), 5).await;
    let t = target();
    let inv = p
        .observe(&t, &palisade_providers::Ownership::default())
        .await
        .unwrap();
    let mut ids: Vec<String> = inv.functions.iter().map(|f| f.id.clone()).collect();
    ids.sort();
    assert_eq!(ids.len(), 5);
    // A hostile id outside the target's resource group is never read or written.
    let mut asked = ids.clone();
    asked.push("/subscriptions/other/resourceGroups/x/providers/Microsoft.Web/sites/y".into());
    asked.push(format!(
        "{RG}/providers/Microsoft.Web/sites/a/../../../../x"
    ));
    let reads = |p: &AzureProvider| count(p, "GET sites/config", CallOutcome::Ok);
    let first = p.observe_inbound(&t, &asked).await.unwrap();
    assert_eq!(first.failed.len(), 2, "{:?}", first.failed);
    assert_eq!(first.inbound.len(), 5);
    assert_eq!(reads(&p), 5);
    let open = &first.inbound[&ids[0]];
    assert_eq!(open.default_action, Access::Allow, "Allow all: {open:?}");
    assert!(open.rules.is_empty());
    // Palisade's write reads back as written, and nothing else of the config changes.
    let want = palisade_providers::Inbound {
        default_action: Access::Deny,
        rules: vec![palisade_providers::InboundRule {
            name: "office".into(),
            priority: 100,
            access: Access::Allow,
            peer: palisade_providers::InboundPeer::Cidr("203.0.113.0/24".parse().unwrap()),
            headers: false,
        }],
    };
    let change = Change::SetInbound {
        function: ids[0].clone(),
        name: "x".into(),
        before: Some(open.clone()),
        after: want.clone(),
    };
    assert_eq!(
        p.apply(&t, &change).await.unwrap().status,
        OutcomeStatus::Applied
    );
    assert_eq!(
        p.apply(&t, &change).await.unwrap().status,
        OutcomeStatus::AlreadyDone
    );
    let again = p.observe_inbound(&t, &ids).await.unwrap();
    assert_eq!(again.inbound[&ids[0]], want);
    // Outside the target: refused, nothing written.
    let outside = Change::SetInbound {
        function: "/subscriptions/other/resourceGroups/x/providers/Microsoft.Web/sites/y".into(),
        name: "y".into(),
        before: None,
        after: want,
    };
    assert!(p.apply(&t, &outside).await.is_err());
}

#[tokio::test]
async fn a_pass_rereads_at_most_its_budget_and_answers_the_rest_from_the_last_read() {
    let (running, p) = start_with(
        Config::default(),
        5,
        AzureSettings {
            inbound_reads: 2,
            ..AzureSettings::default()
        },
    )
    .await;
    let t = target();
    let inv = p
        .observe(&t, &palisade_providers::Ownership::default())
        .await
        .unwrap();
    let ids: Vec<String> = inv.functions.iter().map(|f| f.id.clone()).collect();
    let reads = |p: &AzureProvider| count(p, "GET sites/config", CallOutcome::Ok);
    // Apps never read are all read, once.
    assert_eq!(p.observe_inbound(&t, &ids).await.unwrap().inbound.len(), 5);
    assert_eq!(reads(&p), 5);
    // Every app changes behind Palisade's back; two re-reads a pass, the least recently
    // read first: the changes show two by two, and every pass answers for all.
    for id in &ids {
        running
            .fake
            .put(json!({
                "id": format!("{id}/config/web"),
                "properties": { "ipSecurityRestrictionsDefaultAction": "Deny" }
            }))
            .unwrap();
    }
    let mut closed = Vec::new();
    for _ in 0..3 {
        let read = p.observe_inbound(&t, &ids).await.unwrap();
        assert_eq!(read.inbound.len(), 5);
        closed.push(
            read.inbound
                .values()
                .filter(|i| i.default_action == Access::Deny)
                .count(),
        );
    }
    assert_eq!(
        closed,
        vec![2, 4, 5],
        "each app re-read within ⌈5 / 2⌉ passes"
    );
    assert_eq!(reads(&p), 11);
    // A new app is read at once, beside the two re-reads.
    let mut more = ids.clone();
    more.truncate(4);
    let _ = p.observe_inbound(&t, &more).await.unwrap();
    assert_eq!(reads(&p), 13, "forgotten when not asked for");
    assert_eq!(p.observe_inbound(&t, &ids).await.unwrap().inbound.len(), 5);
    assert_eq!(reads(&p), 16, "the forgotten one is new again: 1 + 2");
}
