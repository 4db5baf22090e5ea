//! Unit tests of adoption: clustering, selectors, names, what is shared, determinism,
//! and that the generated policies plan empty against the inventory they came from.

use super::*;
use palisade_providers::{Declared, Network, Ownership, OwnershipVerdict, Placement, Subnet, Tags};

fn tags(kv: &[(&str, &str)]) -> Tags {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn function(name: &str, t: &[(&str, &str)], groups: &[&str]) -> Function {
    Function {
        id: format!("arn:aws:lambda:us-east-1:123456789012:function:{name}"),
        name: name.into(),
        tags: tags(t),
        placement: Some(
            Placement {
                network: "vpc-1".into(),
                subnets: vec!["subnet-a".into(), "subnet-b".into()],
                groups: groups.iter().map(|g| GroupRef::Id(g.to_string())).collect(),
                route_all: false,
            }
            .normalised(),
        ),
        inbound: None,
    }
}

fn rule(direction: Direction, ports: &str, peer: Peer, description: &str) -> Rule {
    Rule {
        direction,
        ports: ports.parse::<crate::policy::PortSpec>().unwrap().0,
        peer,
        access: Access::Allow,
        priority: None,
        description: Some(description.into()),
        id: None,
        reference: None,
        narrowing: None,
    }
}

fn group(id: &str, name: &str, rules: Vec<Rule>, attached: Option<Vec<String>>) -> SecurityGroup {
    SecurityGroup {
        id: id.into(),
        name: name.into(),
        network: "vpc-1".into(),
        tags: Tags::new(),
        rules,
        default_rules: Vec::new(),
        attached,
    }
}

fn estate() -> Inventory {
    let cidr = |s: &str| Peer::cidr(s.parse().unwrap());
    Inventory {
        target: "estate".into(),
        networks: vec![Network {
            id: "vpc-1".into(),
            name: "estate".into(),
            cidrs: Vec::new(),
            tags: Tags::new(),
        }],
        subnets: ["subnet-a", "subnet-b"]
            .iter()
            .map(|s| Subnet {
                id: s.to_string(),
                name: s.to_string(),
                network: "vpc-1".into(),
                cidrs: Vec::new(),
                tags: Tags::new(),
                zone: None,
                route_table: None,
                group: None,
                delegations: Vec::new(),
            })
            .collect(),
        functions: vec![
            function(
                "api-1",
                &[("app", "shop"), ("tier", "api")],
                &["sg-0000000a", "sg-0000000c"],
            ),
            function(
                "api-2",
                &[("app", "shop"), ("tier", "api")],
                &["sg-0000000a", "sg-0000000c"],
            ),
            function(
                "db-1",
                &[("app", "shop"), ("tier", "db")],
                &["sg-0000000b", "sg-0000000c"],
            ),
            // Shares every group with an instance: nothing to own.
            function("jump", &[("app", "ops")], &["sg-0000000d"]),
        ],
        groups: vec![
            group(
                "sg-0000000a",
                "shop-api",
                vec![
                    rule(Direction::Ingress, "tcp/443", cidr("10.0.0.0/16"), "web"),
                    rule(Direction::Ingress, "tcp/443", cidr("10.1.0.0/16"), "web"),
                    rule(
                        Direction::Egress,
                        "tcp/5432",
                        Peer::Group(GroupRef::Id("sg-0000000b".into())),
                        "db",
                    ),
                ],
                Some(Vec::new()),
            ),
            group(
                "sg-0000000b",
                "shop-db",
                vec![rule(
                    Direction::Ingress,
                    "tcp/5432",
                    Peer::Group(GroupRef::Id("sg-0000000a".into())),
                    "from api",
                )],
                Some(Vec::new()),
            ),
            group("sg-0000000c", "monitoring", Vec::new(), Some(Vec::new())),
            group(
                "sg-0000000d",
                "bastion",
                Vec::new(),
                Some(vec!["eni-1 (bastion)".into()]),
            ),
        ],
        ..Inventory::default()
    }
}

fn repo() -> PolicySet {
    let (set, d) = crate::policy::load_text(
        "t.yaml",
        "apiVersion: palisade.dev/v1alpha1\nkind: Target\nmetadata: { name: estate }\nspec:\n  aws: { region: us-east-1, accountId: \"123456789012\" }\n",
    );
    assert!(d.is_empty(), "{d:?}");
    set
}

fn load(files: &BTreeMap<String, String>) -> PolicySet {
    let text: Vec<&str> = files
        .iter()
        .filter(|(k, _)| k.ends_with(".yaml"))
        .map(|(_, v)| v.as_str())
        .collect();
    let (set, d) = crate::policy::load_text("adopted.yaml", &text.join("---\n"));
    assert!(
        !d.iter().any(crate::policy::Diagnostic::is_error),
        "{d:?}\n{}",
        text.join("---\n")
    );
    set
}

#[test]
fn clusters_own_the_one_group_nothing_else_uses_and_plan_empty() {
    let set = repo();
    let inv = estate();
    let a = adopt(&set, &set.targets[0], &inv, &Options::default());
    let names: Vec<&str> = a
        .report
        .clusters
        .iter()
        .map(|c| c.policy.as_str())
        .collect();
    assert_eq!(names, ["shop-api", "shop-db"]);
    let api = &a.files["policies/shop-api.yaml"];
    assert!(
        api.contains("functions: { tags: { app: shop, tier: api } }"),
        "{api}"
    );
    assert!(api.contains("managedGroup: { id: sg-0000000a }"), "{api}");
    assert!(
        api.contains("securityGroups: [ sg-0000000c ]"),
        "shared group referenced: {api}"
    );
    assert!(
        api.contains("from: [ { cidr: \"10.0.0.0/16\" }, { cidr: \"10.1.0.0/16\" } ]"),
        "peers with the same ports share an entry: {api}"
    );
    assert!(api.contains("to: [ { policy: shop-db } ]"), "{api}");
    let jump = a.report.left.iter().find(|l| l.function == "jump").unwrap();
    assert!(jump.why.contains("eni-1"), "{}", jump.why);
    // Deterministic.
    assert_eq!(
        adopt(&set, &set.targets[0], &inv, &Options::default()).files,
        a.files
    );
    // Zero diff, in audit and in enforce (where the takeover is the only write).
    let v = verify(
        &load(&a.files),
        "estate",
        &inv,
        &crate::plan::Settings::default(),
    );
    assert!(v.empty, "{:?}", v.differences);
    let enforce = Options {
        mode: Mode::Enforce,
        ..Options::default()
    };
    let e = adopt(&set, &set.targets[0], &inv, &enforce);
    let v = verify(
        &load(&e.files),
        "estate",
        &inv,
        &crate::plan::Settings::default(),
    );
    assert!(v.empty, "{:?}", v.differences);
    assert_eq!(v.takes_over.len(), 2, "{:?}", v.takes_over);
}

#[test]
fn a_tightened_rule_is_a_difference_and_a_missing_group_is_never_created() {
    let set = repo();
    let inv = estate();
    let a = adopt(&set, &set.targets[0], &inv, &Options::default());
    let mut files = a.files.clone();
    let api = files.get_mut("policies/shop-api.yaml").unwrap();
    *api = api.replace(", { cidr: \"10.1.0.0/16\" }", "");
    let v = verify(
        &load(&files),
        "estate",
        &inv,
        &crate::plan::Settings::default(),
    );
    assert!(!v.empty);
    assert_eq!(v.differences.len(), 1, "{:?}", v.differences);
    assert!(
        v.differences[0].contains("unexpected rule"),
        "{:?}",
        v.differences
    );
    // The group is gone from the estate: nothing is created in its place.
    let mut gone = inv.clone();
    gone.groups.retain(|g| g.id != "sg-0000000a");
    let enforce = Options {
        mode: Mode::Enforce,
        ..Options::default()
    };
    let e = adopt(&set, &set.targets[0], &inv, &enforce);
    let v = verify(
        &load(&e.files),
        "estate",
        &gone,
        &crate::plan::Settings::default(),
    );
    assert!(
        v.differences
            .iter()
            .any(|d| d.contains("NotAdopted") && d.contains("does not exist")),
        "{:?}",
        v.differences
    );
    assert!(
        !v.differences
            .iter()
            .any(|d| d.starts_with("change") && d.contains("+ create")),
        "{:?}",
        v.differences
    );
}

#[test]
fn a_declared_group_is_taken_only_when_nothing_outside_the_policy_uses_it() {
    let declared = |enforce| Declared {
        owner: "shop-api".into(),
        enforce,
        names: Vec::new(),
        tags: tags(&[("tier", "api")]),
        subnet: None,
    };
    // Enforce: taken, tagged, and every reference renamed.
    let mut own = Ownership::unverified("estate");
    own.declare("SG-0000000A", declared(true));
    let mut inv = estate();
    own.apply_declared(&mut inv);
    let note = inv
        .ownership
        .iter()
        .find(|n| n.id == "sg-0000000a")
        .unwrap();
    assert_eq!(note.verdict, OwnershipVerdict::Taken);
    assert_eq!(inv.groups[0].owner(), Some("shop-api"));
    assert!(
        matches!(&inv.groups[1].rules[0].peer, Peer::Group(GroupRef::Managed(o)) if o == "shop-api")
    );
    // A function outside the selector holds it: refused, nothing renamed.
    let mut own = Ownership::unverified("estate");
    own.declare(
        "sg-0000000c",
        Declared {
            owner: "shop-api".into(),
            ..declared(true)
        },
    );
    let mut inv = estate();
    own.apply_declared(&mut inv);
    let note = inv
        .ownership
        .iter()
        .find(|n| n.id == "sg-0000000c")
        .unwrap();
    assert_eq!(note.verdict, OwnershipVerdict::Refused);
    assert!(note.detail.as_deref().unwrap().contains("db-1"), "{note:?}");
    assert_eq!(inv.groups[2].owner(), None);
    // Unread users: refused in enforce, compared in audit (nothing is written there).
    for (enforce, verdict) in [
        (true, OwnershipVerdict::Refused),
        (false, OwnershipVerdict::Compared),
    ] {
        let mut own = Ownership::unverified("estate");
        own.declare("sg-0000000a", declared(enforce));
        let mut inv = estate();
        inv.groups[0].attached = None;
        own.apply_declared(&mut inv);
        assert_eq!(inv.ownership[0].verdict, verdict, "enforce={enforce}");
        assert!(!inv.ownership[0].owned());
    }
}

#[test]
fn select_terms_parse_or_say_what_was_expected() {
    assert_eq!(
        "tag:app=shop".parse::<Select>(),
        Ok(Select::Tag("app".into(), "shop".into()))
    );
    assert_eq!(
        "name:api-".parse::<Select>(),
        Ok(Select::NamePrefix("api-".into()))
    );
    assert_eq!(
        "vpc:vpc-1".parse::<Select>(),
        Ok(Select::Network("vpc-1".into()))
    );
    for bad in ["tag:app", "colour:red", "name:", "nothing"] {
        let e = bad.parse::<Select>().unwrap_err();
        assert!(e.contains(bad), "{e}");
    }
    let set = repo();
    let opts = Options {
        select: vec![Select::Tag("tier".into(), "db".into())],
        ..Options::default()
    };
    let a = adopt(&set, &set.targets[0], &estate(), &opts);
    assert_eq!(a.report.counts.functions_in_scope, 1);
    assert_eq!(a.report.clusters.len(), 1);
    // db-1 alone: its peer group sg-0000000a is not adopted here, so it stays an id.
    let db = &a.files["policies/shop-db.yaml"];
    assert!(db.contains("{ securityGroup: sg-0000000a }"), "{db}");
}

#[test]
fn what_the_language_refuses_is_reported_and_keeps_the_policy_in_audit() {
    let set = repo();
    let mut inv = estate();
    // shop-api sends everything to shop-db, which admits only tcp/5432 from it: as a
    // `policy:` peer that is a one-sided rule the loader refuses.
    inv.groups[0].rules.push(rule(
        Direction::Egress,
        "all",
        Peer::Group(GroupRef::Id("sg-0000000b".into())),
        "anything to the db",
    ));
    // An IP protocol number (GRE) the language cannot name.
    let mut gre = rule(
        Direction::Ingress,
        "all",
        Peer::cidr("10.9.0.0/16".parse().unwrap()),
        "gre",
    );
    gre.ports = Ports::any(palisade_providers::Protocol::Number(47));
    inv.groups[1].rules.push(gre);
    let enforce = Options {
        mode: Mode::Enforce,
        ..Options::default()
    };
    let a = adopt(&set, &set.targets[0], &inv, &enforce);
    let api = a
        .report
        .clusters
        .iter()
        .find(|c| c.policy == "shop-api")
        .unwrap();
    assert_eq!(api.mode, Mode::Audit);
    assert!(
        api.inexpressible
            .iter()
            .any(|i| i.contains("does not admit")),
        "{:?}",
        api.inexpressible
    );
    let db = a
        .report
        .clusters
        .iter()
        .find(|c| c.policy == "shop-db")
        .unwrap();
    assert_eq!(db.mode, Mode::Audit);
    assert!(
        db.inexpressible
            .iter()
            .any(|i| i.contains("protocol numbers")),
        "{:?}",
        db.inexpressible
    );
    assert!(a.files["policies/shop-db.yaml"].contains("# NOT EXPRESSIBLE"));
    // The files load (nothing one-sided left in them) and verify names the two rules.
    let v = verify(
        &load(&a.files),
        "estate",
        &inv,
        &crate::plan::Settings::default(),
    );
    assert_eq!(v.differences.len(), 2, "{:?}", v.differences);
    assert!(
        v.differences.iter().all(|d| d.contains("unexpected rule")),
        "{:?}",
        v.differences
    );
}

#[test]
fn a_repository_with_policies_is_not_a_starting_point() {
    let (set, d) = crate::policy::load_text(
        "t.yaml",
        "apiVersion: palisade.dev/v1alpha1\nkind: Target\nmetadata: { name: estate }\nspec:\n  aws: { region: us-east-1, accountId: \"123456789012\" }\n---\napiVersion: palisade.dev/v1alpha1\nkind: FunctionPolicy\nmetadata: { name: old }\nspec:\n  target: estate\n  functions: { names: [ f ] }\n  network: { vpc: { id: vpc-1 }, subnets: { ids: [ subnet-a ] } }\n",
    );
    assert!(!d.iter().any(crate::policy::Diagnostic::is_error), "{d:?}");
    let e = check_input(&set).unwrap_err();
    assert!(e.contains("old"), "{e}");
    assert!(check_input(&repo()).is_ok());
}

#[test]
fn an_nsg_on_a_subnet_shared_with_apps_the_policy_does_not_select_is_not_taken() {
    let subnet = "/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/virtualNetworks/v/subnets/snet";
    let nsg =
        "/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/networkSecurityGroups/nsg";
    let app = |name: &str, t: &[(&str, &str)]| Function {
        id: format!("/subscriptions/s/resourceGroups/r/providers/Microsoft.Web/sites/{name}"),
        name: name.into(),
        tags: tags(t),
        placement: Some(Placement {
            network:
                "/subscriptions/s/resourceGroups/r/providers/Microsoft.Network/virtualNetworks/v"
                    .into(),
            subnets: vec![subnet.into()],
            groups: Vec::new(),
            route_all: true,
        }),
        inbound: None,
    };
    let inv = || Inventory {
        target: "az".into(),
        functions: vec![
            app("func-a", &[("app", "a")]),
            app("func-b", &[("app", "b")]),
        ],
        groups: vec![SecurityGroup {
            network: String::new(),
            ..group(nsg, "nsg", Vec::new(), Some(vec![subnet.into()]))
        }],
        ..Inventory::default()
    };
    let mut own = Ownership::unverified("az");
    own.declare(
        nsg,
        Declared {
            owner: "a".into(),
            enforce: true,
            names: Vec::new(),
            tags: tags(&[("app", "a")]),
            subnet: Some(("v".into(), "snet".into())),
        },
    );
    let mut i = inv();
    own.apply_declared(&mut i);
    assert_eq!(i.ownership[0].verdict, OwnershipVerdict::Refused);
    assert!(
        i.ownership[0].detail.as_deref().unwrap().contains("func-b"),
        "{:?}",
        i.ownership
    );
}

#[test]
fn what_palisade_already_manages_is_listed_never_planned_for_deletion() {
    let set = repo();
    let mut inv = estate();
    inv.groups.push(SecurityGroup {
        tags: palisade_providers::model::ownership_tags("elsewhere"),
        ..group(
            "sg-0000000e",
            "palisade-elsewhere",
            Vec::new(),
            Some(Vec::new()),
        )
    });
    let a = adopt(&set, &set.targets[0], &inv, &Options::default());
    let v = verify(
        &load(&a.files),
        "estate",
        &inv,
        &crate::plan::Settings::default(),
    );
    assert!(v.empty, "{:?}", v.differences);
    assert_eq!(v.already_managed.len(), 1, "{:?}", v.already_managed);
    assert!(
        v.already_managed[0].contains("elsewhere"),
        "{:?}",
        v.already_managed
    );
}
