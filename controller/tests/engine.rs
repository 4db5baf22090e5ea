//! The engine end to end on the in-memory provider: compile → plan → apply → observe →
//! plan again. Ordering, blast radius, audit mode, drift, ownership, convergence.

use std::path::Path;

use palisade::compile::{DesiredState, compile};
use palisade::plan::{Cause, Phase, Plan, Settings, plan};
use palisade::policy::{Limits, PolicySet, load_dir, load_text};
use palisade_providers::fake::FakeProvider;
use palisade_providers::model::ownership_tags;
use palisade_providers::{
    Change, Direction, GroupRef, Inventory, Peer, PortRange, Ports, Protocol, Provider, Rule,
    SecurityGroup,
};
use proptest::prelude::*;

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

fn example() -> PolicySet {
    let (set, d) = load_dir(&root().join("policies-example"), &Limits::default());
    assert!(d.iter().all(|x| !x.is_error()), "{d:?}");
    set
}

fn fixture(name: &str) -> Inventory {
    let text = std::fs::read_to_string(root().join("tests/fixtures").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn desired(set: &PolicySet, inv: &Inventory) -> DesiredState {
    let t = set.target(&inv.target).unwrap();
    let c = compile(set, t, Some(inv));
    assert!(
        c.diagnostics.iter().all(|d| !d.is_error()),
        "{:?}",
        c.diagnostics
    );
    c.desired
}

fn target(set: &PolicySet, name: &str) -> palisade_providers::Target {
    set.target(name).unwrap().to_target().unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Plan, apply to the fake, observe, plan again: the second plan must be empty.
fn converge(set: &PolicySet, fake: &FakeProvider, name: &str, settings: &Settings) -> (Plan, Plan) {
    let t = target(set, name);
    let rt = rt();
    let inv = rt
        .block_on(fake.observe(&t, &palisade_providers::Ownership::default()))
        .unwrap();
    let want = desired(set, &inv);
    let first = plan(&want, &inv, None, settings, Some("rev1"));
    rt.block_on(palisade::apply::apply(&first, &t, fake))
        .unwrap();
    let inv = rt
        .block_on(fake.observe(&t, &palisade_providers::Ownership::default()))
        .unwrap();
    let want = desired(set, &inv);
    let second = plan(&want, &inv, Some(&want), settings, Some("rev1"));
    (first, second)
}

#[test]
fn example_converges_in_one_apply_on_both_clouds() {
    let set = example();
    for (name, file) in [
        ("prod-aws", "inventory-prod-aws.json"),
        ("prod-azure", "inventory-prod-azure.json"),
    ] {
        let fake = FakeProvider::new(fixture(file));
        let (first, second) = converge(&set, &fake, name, &Settings::default());
        assert!(
            !first.changes.is_empty(),
            "{name}: first plan does something"
        );
        assert!(
            second.changes.is_empty(),
            "{name}: second plan is empty:\n{}",
            palisade::plan::render_text(&second)
        );
        let writes = fake.writes();
        // Re-planning a converged target again and again makes no write.
        let t = target(&set, name);
        for _ in 0..3 {
            let inv = rt()
                .block_on(fake.observe(&t, &palisade_providers::Ownership::default()))
                .unwrap();
            let want = desired(&set, &inv);
            let p = plan(&want, &inv, Some(&want), &Settings::default(), None);
            rt().block_on(palisade::apply::apply(&p, &t, &fake))
                .unwrap();
        }
        assert_eq!(
            fake.writes(),
            writes,
            "{name}: converged target gets no writes"
        );
    }
}

#[test]
fn phases_are_make_before_break() {
    let set = example();
    let inv = fixture("inventory-prod-aws.json");
    let p = plan(&desired(&set, &inv), &inv, None, &Settings::default(), None);
    let phases: Vec<Phase> = p.changes.iter().map(|c| c.phase).collect();
    let mut sorted = phases.clone();
    sorted.sort();
    assert_eq!(phases, sorted, "changes are in phase order");
    let pos = |f: &dyn Fn(&Change) -> bool| p.changes.iter().position(|c| f(&c.change)).unwrap();
    let create = pos(&|c| matches!(c, Change::CreateGroup { owner, .. } if owner == "payments-db"));
    let authorise = pos(
        &|c| matches!(c, Change::AddRules { group: GroupRef::Managed(o), .. } if o == "payments-db"),
    );
    let moved =
        pos(&|c| matches!(c, Change::SetPlacement { name, .. } if name == "payments-db-proxy"));
    assert!(create < authorise && authorise < moved);
}

fn managed_group(owner: &str, id: &str, rules: Vec<Rule>) -> SecurityGroup {
    SecurityGroup {
        id: id.into(),
        name: format!("palisade-{owner}"),
        network: "vpc-0prod".into(),
        tags: ownership_tags(owner),
        rules,
        default_rules: Vec::new(),
        attached: None,
    }
}

fn tcp(p: u16) -> Ports {
    Ports {
        protocol: Protocol::Tcp,
        range: Some(PortRange { from: p, to: p }),
        icmp: None,
    }
}

#[test]
fn moving_a_function_to_a_new_policy_detaches_before_deleting_the_old_group() {
    let set = example();
    let mut inv = fixture("inventory-prod-aws.json");
    // A group of a policy that no longer exists, still attached to a payments function.
    inv.groups.push(managed_group(
        "old-payments",
        "sg-0old",
        vec![Rule::allow(
            Direction::Egress,
            tcp(5432),
            Peer::cidr("10.0.0.0/16".parse().unwrap()),
        )],
    ));
    let f = inv
        .functions
        .iter_mut()
        .find(|f| f.name == "payments-api-1")
        .unwrap();
    f.placement = Some(palisade_providers::Placement {
        network: "vpc-0prod".into(),
        subnets: vec!["subnet-0priva".into()],
        groups: vec![GroupRef::Managed("old-payments".into())],
        route_all: false,
    });
    let p = plan(&desired(&set, &inv), &inv, None, &Settings::default(), None);
    let pos = |f: &dyn Fn(&Change) -> bool| p.changes.iter().position(|c| f(&c.change)).unwrap();
    let create =
        pos(&|c| matches!(c, Change::CreateGroup { owner, .. } if owner == "payments-api"));
    let moved =
        pos(&|c| matches!(c, Change::SetPlacement { name, .. } if name == "payments-api-1"));
    let delete =
        pos(&|c| matches!(c, Change::DeleteGroup { owner, .. } if owner == "old-payments"));
    assert!(create < moved && moved < delete);
    let fake = FakeProvider::new(inv);
    let t = target(&set, "prod-aws");
    let report = rt()
        .block_on(palisade::apply::apply(&p, &t, &fake))
        .unwrap();
    assert_eq!(
        report.pending, 0,
        "the old group is free when it is deleted"
    );
    assert!(
        fake.inventory("prod-aws")
            .managed_group("old-payments")
            .is_none()
    );
}

#[test]
fn blast_radius_refuses_mass_deletion_and_apply_writes_nothing() {
    let set = example();
    let mut inv = fixture("inventory-prod-aws.json");
    let rules: Vec<Rule> = (1000..1100)
        .map(|p| {
            Rule::allow(
                Direction::Ingress,
                tcp(p),
                Peer::cidr("10.0.0.0/8".parse().unwrap()),
            )
        })
        .collect();
    inv.groups
        .push(managed_group("payments-api", "sg-0pay", rules));
    let p = plan(
        &desired(&set, &inv),
        &inv,
        None,
        &Settings {
            max_deletes: 50,
            ..Settings::default()
        },
        None,
    );
    let refusal = p.refusal.as_ref().expect("refused");
    assert_eq!(refusal.deletes, 100);
    let fake = FakeProvider::new(inv);
    let err = rt()
        .block_on(palisade::apply::apply(&p, &target(&set, "prod-aws"), &fake))
        .unwrap_err();
    assert!(matches!(err, palisade::apply::ApplyError::Refused { .. }));
    assert_eq!(fake.writes(), 0);
    // Percentage budget: 100 of ~100 managed rules is far above 30 %.
    let p = plan(
        &desired(&set, &fake.inventory("prod-aws")),
        &fake.inventory("prod-aws"),
        None,
        &Settings::default(),
        None,
    );
    assert!(p.refusal.is_some());
}

/// Rules added out of band are reverted whatever their number (refusing would keep
/// access nobody declared); the same rules dropped by a policy change count, and the
/// percentage applies from 5 removals.
#[test]
fn drift_reverts_are_outside_the_budget_and_intended_removals_inside() {
    let set = example();
    let fake = FakeProvider::new(fixture("inventory-prod-aws.json"));
    converge(&set, &fake, "prod-aws", &Settings::default());
    let added: Vec<Rule> = (2000..2006)
        .map(|p| {
            Rule::allow(
                Direction::Ingress,
                tcp(p),
                Peer::cidr("0.0.0.0/0".parse().unwrap()),
            )
        })
        .collect();
    fake.mutate("prod-aws", |inv| {
        let g = inv
            .groups
            .iter_mut()
            .find(|g| g.owner() == Some("payments-api"))
            .unwrap();
        g.rules.extend(added.iter().cloned());
    });
    let inv = fake.inventory("prod-aws");
    let want = desired(&set, &inv);
    let settings = Settings {
        max_delete_percent: 1,
        ..Settings::default()
    };
    // Drift (the previous desired state is the same): reverted, not refused.
    let drift = plan(&want, &inv, Some(&want), &settings, None);
    assert!(drift.refusal.is_none(), "{:?}", drift.refusal);
    assert_eq!(palisade::plan::budgeted_deletes(&drift.changes), 0);
    // The same six as an intended removal (no previous state: the policy changed).
    let intended = plan(&want, &inv, None, &settings, None);
    assert_eq!(palisade::plan::budgeted_deletes(&intended.changes), 6);
    assert!(
        intended.refusal.is_some(),
        "6 ≥ the floor of 5 and above 1 %"
    );
}

#[test]
fn empty_source_never_means_delete_everything() {
    let set = example();
    let mut inv = fixture("inventory-prod-aws.json");
    inv.groups
        .push(managed_group("payments-api", "sg-0pay", vec![]));
    let empty = DesiredState {
        target: "prod-aws".into(),
        ..DesiredState::default()
    };
    let p = plan(&empty, &inv, None, &Settings::default(), None);
    assert!(p.refusal.is_some(), "refused");
    let p = plan(
        &empty,
        &inv,
        None,
        &Settings {
            allow_empty: true,
            ..Settings::default()
        },
        None,
    );
    assert!(p.refusal.is_none(), "explicitly allowed");
    let _ = set;
}

#[test]
fn audit_mode_yields_findings_not_changes() {
    let set = example();
    let inv = fixture("inventory-prod-aws.json");
    let p = plan(&desired(&set, &inv), &inv, None, &Settings::default(), None);
    assert!(
        !p.changes
            .iter()
            .any(|c| c.resource.to_string().contains("report-export")),
        "audit policy writes nothing"
    );
    assert!(
        p.findings
            .iter()
            .any(|f| f.kind == palisade::check::FindingKind::AuditDrift
                && f.resource.to_string().contains("report-export"))
    );
}

#[test]
fn drift_is_kept_apart_from_intended_change() {
    let set = example();
    let fake = FakeProvider::new(fixture("inventory-prod-aws.json"));
    converge(&set, &fake, "prod-aws", &Settings::default());
    let previous = desired(&set, &fake.inventory("prod-aws"));
    // Out of band: someone opens SSH to the world on a managed group and drops a rule.
    fake.mutate("prod-aws", |inv| {
        let g = inv
            .groups
            .iter_mut()
            .find(|g| g.owner() == Some("payments-db"))
            .unwrap();
        g.rules.clear();
        g.rules.push(Rule::allow(
            Direction::Ingress,
            tcp(22),
            Peer::cidr("0.0.0.0/0".parse().unwrap()),
        ));
    });
    let inv = fake.inventory("prod-aws");
    let p = plan(
        &desired(&set, &inv),
        &inv,
        Some(&previous),
        &Settings::default(),
        None,
    );
    assert!(!p.changes.is_empty());
    assert!(
        p.changes.iter().all(|c| c.cause == Cause::Drift),
        "{}",
        palisade::plan::render_text(&p)
    );
    let text = palisade::plan::render_text(&p);
    assert!(
        text.contains("Drift to revert") && text.contains("- ingress allow tcp/22 from 0.0.0.0/0"),
        "{text}"
    );
    rt().block_on(palisade::apply::apply(&p, &target(&set, "prod-aws"), &fake))
        .unwrap();
    let inv = fake.inventory("prod-aws");
    assert!(
        plan(
            &desired(&set, &inv),
            &inv,
            Some(&previous),
            &Settings::default(),
            None
        )
        .is_empty()
    );
}

#[test]
fn unmanaged_group_is_never_changed_even_when_a_rule_would_match() {
    let set = example();
    let inv = fixture("inventory-prod-aws.json");
    let p = plan(&desired(&set, &inv), &inv, None, &Settings::default(), None);
    // The function leaving sg-0legacy is a placement change (Palisade owns a selected
    // function's placement); the group itself is never written.
    let group_changes: Vec<_> = p
        .changes
        .iter()
        .filter(|c| !matches!(c.change, Change::SetPlacement { .. }))
        .collect();
    let changes = serde_json::to_string(&group_changes).unwrap();
    assert!(
        !changes.contains("sg-0legacy"),
        "no change touches the unmanaged group"
    );
    let findings = palisade::check::check_inventory(&set, &inv);
    assert!(
        findings
            .iter()
            .any(|f| f.resource.to_string() == "group sg-0legacy"
                && f.controls.contains(&"CIS-AWS-5.2".to_string())),
        "but it is reported"
    );
}

#[test]
fn plan_json_round_trips() {
    let set = example();
    let inv = fixture("inventory-prod-azure.json");
    let p = plan(
        &desired(&set, &inv),
        &inv,
        None,
        &Settings::default(),
        Some("abc123"),
    );
    let back: Plan = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}

#[test]
fn pending_group_deletion_is_not_a_failure() {
    let set = example();
    let mut inv = fixture("inventory-prod-aws.json");
    inv.groups.push(managed_group("gone", "sg-0gone", vec![]));
    let mut p = plan(&desired(&set, &inv), &inv, None, &Settings::default(), None);
    // Someone attaches the doomed group to an endpoint between plan and apply.
    inv.endpoints.push(palisade_providers::Endpoint {
        id: "vpce-0x".into(),
        service: "x".into(),
        kind: palisade_providers::EndpointKind::Interface,
        network: "vpc-0prod".into(),
        subnets: vec![],
        groups: vec![GroupRef::Managed("gone".into())],
        route_tables: vec![],
        private_dns: false,
        tags: Default::default(),
        connection: None,
    });
    p.changes
        .retain(|c| matches!(c.change, Change::DeleteGroup { .. }));
    let fake = FakeProvider::new(inv);
    let report = rt()
        .block_on(palisade::apply::apply(&p, &target(&set, "prod-aws"), &fake))
        .unwrap();
    assert_eq!(report.pending, 1);
}

// ---------------------------------------------------------------- property

fn policy_yaml(i: usize, names: &[String], rules: &[(usize, u16, bool)], n: usize) -> String {
    let mut s = format!(
        "apiVersion: palisade.dev/v1alpha1\nkind: FunctionPolicy\nmetadata: {{ name: p{i} }}\nspec:\n  target: t\n  functions: {{ names: [{}] }}\n  network: {{ vpc: {{ id: vpc-1 }}, subnets: {{ ids: [subnet-1, subnet-2] }} }}\n",
        names.join(", ")
    );
    if !rules.is_empty() {
        s.push_str("  egress:\n");
        for (k, (peer, port, to_policy)) in rules.iter().enumerate() {
            let to = if *to_policy {
                format!("{{ policy: p{} }}", peer % n)
            } else {
                format!("{{ cidr: 10.{}.0.7/16 }}", peer % 4)
            };
            s.push_str(&format!(
                "    - {{ name: r{k}, to: [ {to} ], ports: [ tcp/{port} ] }}\n"
            ));
        }
    }
    s
}

fn arb_rule() -> impl Strategy<Value = Rule> {
    (any::<bool>(), 0u16..4, 0usize..4).prop_map(|(ingress, port, peer)| {
        Rule::allow(
            if ingress {
                Direction::Ingress
            } else {
                Direction::Egress
            },
            tcp(80 + port),
            if peer == 3 {
                Peer::Group(GroupRef::Managed("p0".into()))
            } else {
                Peer::cidr(format!("10.{peer}.0.0/16").parse().unwrap())
            },
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    #[allow(clippy::needless_range_loop, reason = "indices name policies and functions")]
    fn applying_the_plan_then_planning_again_yields_an_empty_plan(
        owner in proptest::collection::vec(0usize..4, 6),
        rules in proptest::collection::vec(proptest::collection::vec((0usize..8, 80u16..84, any::<bool>()), 0..4), 3),
        placed in proptest::collection::vec(0usize..5, 6),
        existing in proptest::collection::vec((0usize..5, proptest::collection::vec(arb_rule(), 0..5)), 0..4),
    ) {
        // Policies p0..p2 own the functions whose `owner` is 0..2 (3 = unselected).
        let mut yaml = "apiVersion: palisade.dev/v1alpha1\nkind: Target\nmetadata: { name: t }\nspec: { aws: { region: us-east-1, accountId: \"123456789012\" } }\n".to_string();
        let mut n_policies = 0;
        for i in 0..3 {
            let names: Vec<String> = (0..6).filter(|f| owner[*f] == i).map(|f| format!("f{f}")).collect();
            if names.is_empty() { continue; }
            n_policies += 1;
            yaml.push_str("---\n");
            yaml.push_str(&policy_yaml(i, &names, &rules[i], 3));
        }
        let (set, diags) = load_text("p.yaml", &yaml);
        prop_assert!(diags.iter().all(|d| !d.is_error()), "{:?}", diags);
        // A random estate: functions anywhere, managed groups (wanted or not) with random rules.
        let mut inv = Inventory { target: "t".into(), ..Inventory::default() };
        inv.networks.push(palisade_providers::Network { id: "vpc-1".into(), name: String::new(), cidrs: vec![], tags: Default::default() });
        for s in ["subnet-1", "subnet-2", "subnet-3"] {
            inv.subnets.push(palisade_providers::Subnet { id: s.into(), name: String::new(), network: "vpc-1".into(), cidrs: vec![], tags: Default::default(), zone: None, route_table: None, group: None, delegations: Vec::new() });
        }
        for f in 0..6 {
            let placement = match placed[f] {
                0 => None,
                g => Some(palisade_providers::Placement { network: "vpc-1".into(), subnets: vec!["subnet-3".into()], groups: vec![GroupRef::Managed(format!("p{}", g - 1))], route_all: false }),
            };
            inv.functions.push(palisade_providers::Function { inbound: None, id: format!("arn:f{f}"), name: format!("f{f}"), tags: Default::default(), placement });
        }
        for (k, (g, rules)) in existing.iter().enumerate() {
            inv.groups.push(managed_group(&format!("p{g}"), &format!("sg-{k}"), rules.clone()));
        }
        let _ = n_policies;
        let fake = FakeProvider::new(inv);
        let settings = Settings { max_deletes: usize::MAX, max_delete_percent: 100, allow_empty: true, ..Settings::default() };
        let (_, second) = converge(&set, &fake, "t", &settings);
        prop_assert!(second.changes.is_empty(), "{}", palisade::plan::render_text(&second));
    }
}

/// The example converged on the fake, then `ledger-worker` removed from the policies
/// (with `report-export`, an audit policy that uses its endpoint): the plan for what is
/// left.
fn without_ledger_worker(settings: &Settings) -> Plan {
    let set = example();
    let fake = FakeProvider::new(fixture("inventory-prod-aws.json"));
    let (_, second) = converge(&set, &fake, "prod-aws", settings);
    assert!(second.changes.is_empty());
    let t = target(&set, "prod-aws");
    let inv = rt()
        .block_on(fake.observe(&t, &palisade_providers::Ownership::default()))
        .unwrap();
    let before = desired(&set, &inv);
    let mut smaller = set.clone();
    smaller
        .policies
        .retain(|p| p.name() != "ledger-worker" && p.name() != "report-export");
    let after = desired(&smaller, &inv);
    plan(&after, &inv, Some(&before), settings, None)
}

/// Whether `c` takes anything away from the ledger workers or their group.
fn touches_ledger_workers(c: &Change) -> bool {
    match c {
        Change::SetPlacement { name, .. } => name.starts_with("ledger-worker"),
        Change::DeleteGroup { owner, .. } => owner == "ledger-worker",
        Change::RemoveRules { group, .. } => *group == GroupRef::Managed("ledger-worker".into()),
        _ => false,
    }
}

#[test]
fn a_function_no_policy_selects_keeps_its_placement_and_its_group_is_retained() {
    let p = without_ledger_worker(&Settings::default());
    assert!(
        !p.changes.iter().any(|c| touches_ledger_workers(&c.change)),
        "nothing released, deleted or revoked:\n{}",
        palisade::plan::render_text(&p)
    );
    let orphaned: Vec<&str> = p
        .findings
        .iter()
        .filter(|f| f.resource.to_string().starts_with("group ledger-worker"))
        .map(|f| f.message.as_str())
        .collect();
    assert!(
        !orphaned.is_empty()
            && orphaned
                .iter()
                .all(|m| m.contains("ledger-worker-1, ledger-worker-2 still hold it")),
        "{:?}",
        p.findings
    );
}

#[test]
fn releasing_unselected_functions_never_takes_them_out_of_their_vpc() {
    let settings = Settings {
        release_unselected: true,
        ..Settings::default()
    };
    let p = without_ledger_worker(&settings);
    // The ledger workers hold only the ledger-worker group: releasing it would take them
    // out of their VPC, so nothing is released, and the group they keep is not deleted.
    assert!(
        !p.changes.iter().any(|c| touches_ledger_workers(&c.change)),
        "{}",
        palisade::plan::render_text(&p)
    );
    assert!(
        p.findings.iter().any(
            |f| f.resource.to_string().starts_with("function ledger-worker")
                && f.message.contains("out of its VPC")
        ),
        "{:?}",
        p.findings
    );
}

/// Copy `policies-example` to a temporary directory, editing one file on the way.
fn example_edited(file: &str, edit: impl Fn(&str) -> String) -> (tempfile::TempDir, PolicySet) {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(&root().join("policies-example"), dir.path());
    let path = dir.path().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, edit(&text)).unwrap();
    let (set, d) = load_dir(dir.path(), &Limits::default());
    assert!(d.iter().all(|x| !x.is_error()), "{d:?}");
    (dir, set)
}

#[test]
fn an_nsg_stays_on_a_subnet_functions_run_in_when_its_policy_goes() {
    let set = example();
    let fake = FakeProvider::new(fixture("inventory-prod-azure.json"));
    let (_, second) = converge(&set, &fake, "prod-azure", &Settings::default());
    assert!(second.changes.is_empty());
    let t = target(&set, "prod-azure");
    let inv = rt()
        .block_on(fake.observe(&t, &palisade_providers::Ownership::default()))
        .unwrap();
    let before = desired(&set, &inv);
    // orders-func removed (and the ingress rule of reports-func that names it: `ingress: []`).
    let (_dir, smaller) = example_edited("azure/functions.yaml", |text| {
        text.split("\n---\n")
            .filter(|doc| !doc.contains("name: orders-func"))
            .map(|doc| {
                doc.lines()
                    .map(|l| {
                        if l.contains("from-orders") {
                            "    []".to_string()
                        } else {
                            l.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
    });
    let after = desired(&smaller, &inv);
    let p = plan(&after, &inv, Some(&before), &Settings::default(), None);
    assert!(
        !p.changes.iter().any(
            |c| matches!(&c.change, Change::SetSubnetGroup { after: None, .. })
                || matches!(&c.change, Change::DeleteGroup { owner, .. } if owner == "orders-func")
        ),
        "the orders subnet keeps its NSG and the NSG stays:\n{}",
        palisade::plan::render_text(&p)
    );
    assert!(
        p.findings
            .iter()
            .any(|f| f.resource.to_string().starts_with("subnet")
                && f.message.contains("functions run in it")),
        "{:?}",
        p.findings
    );
    assert!(
        p.findings
            .iter()
            .any(|f| f.resource.to_string().starts_with("group orders-func")
                && f.message.contains("retained")),
        "{:?}",
        p.findings
    );
}

/// An endpoint that must be replaced (its service changed under it) is replaced make
/// before break: the new one is created with the creations, the old one deleted with
/// the deletions. A replacement cut between the two leaves two endpoints of one owner;
/// the next plan keeps the one that fits and deletes the other — never a third.
#[test]
fn an_endpoint_replacement_creates_before_it_deletes_and_survives_a_cut() {
    let set = example();
    let fake = FakeProvider::new(fixture("inventory-prod-aws.json"));
    let (_, second) = converge(&set, &fake, "prod-aws", &Settings::default());
    assert!(second.changes.is_empty());
    let t = target(&set, "prod-aws");
    let own = palisade_providers::Ownership::default();
    // The interface endpoint's service changed by hand (only a replacement fixes that).
    fake.mutate("prod-aws", |inv| {
        let e = inv
            .endpoints
            .iter_mut()
            .find(|e| e.kind == palisade_providers::EndpointKind::Interface && e.owner().is_some())
            .unwrap();
        e.service = "com.amazonaws.us-east-1.something-else".into();
    });
    let inv = rt().block_on(fake.observe(&t, &own)).unwrap();
    let want = desired(&set, &inv);
    let p = plan(&want, &inv, Some(&want), &Settings::default(), None);
    let create = p
        .changes
        .iter()
        .position(|c| matches!(c.change, Change::CreateEndpoint { .. }))
        .expect("a create");
    let delete = p
        .changes
        .iter()
        .position(|c| matches!(c.change, Change::DeleteEndpoint { .. }))
        .expect("a delete");
    assert!(create < delete, "{}", palisade::plan::render_text(&p));
    assert_eq!(p.changes[create].phase, Phase::CreateEndpoints);
    assert_eq!(p.changes[delete].phase, Phase::DeleteEndpoints);

    // Cut after the create: only the creations ran.
    let mut cut = p.clone();
    cut.changes.truncate(create + 1);
    rt().block_on(palisade::apply::apply(&cut, &t, &fake))
        .unwrap();
    let inv = rt().block_on(fake.observe(&t, &own)).unwrap();
    let want = desired(&set, &inv);
    let next = plan(&want, &inv, Some(&want), &Settings::default(), None);
    let kinds: Vec<&str> = next.changes.iter().map(|c| c.change.action()).collect();
    assert_eq!(
        kinds,
        ["deleteEndpoint"],
        "{}",
        palisade::plan::render_text(&next)
    );
    rt().block_on(palisade::apply::apply(&next, &t, &fake))
        .unwrap();
    let inv = rt().block_on(fake.observe(&t, &own)).unwrap();
    let want = desired(&set, &inv);
    assert!(
        plan(&want, &inv, Some(&want), &Settings::default(), None)
            .changes
            .is_empty()
    );
}

/// A second VPC tagged like the one the policies name makes their network ambiguous:
/// that is a conflict with what is observed, not an invalid revision. The policies
/// concerned are left alone (no group deleted, no function moved) with findings.
#[test]
fn an_ambiguous_network_freezes_its_policies_instead_of_halting_the_target() {
    let set = example();
    let fake = FakeProvider::new(fixture("inventory-prod-aws.json"));
    converge(&set, &fake, "prod-aws", &Settings::default());
    fake.mutate("prod-aws", |inv| {
        let mut twin = inv
            .networks
            .iter()
            .find(|n| n.tags.get("Name").map(String::as_str) == Some("prod"))
            .unwrap()
            .clone();
        twin.id = "vpc-0twin".into();
        inv.networks.push(twin);
    });
    let inv = fake.inventory("prod-aws");
    let target = set.target("prod-aws").unwrap();
    let planned =
        palisade::planning::plan_with(&set, target, inv, None, &Settings::default(), None)
            .expect("a conflict with the inventory is not an invalid revision");
    assert!(
        planned
            .plan
            .findings
            .iter()
            .any(|f| f.kind == palisade::check::FindingKind::InventoryConflict),
        "{:?}",
        planned.plan.findings
    );
    assert!(
        !planned.plan.changes.iter().any(|c| matches!(
            c.change,
            Change::DeleteGroup { .. } | Change::SetPlacement { .. } | Change::RemoveRules { .. }
        )),
        "{}",
        palisade::plan::render_text(&planned.plan)
    );
}

#[test]
fn an_integration_subnet_without_the_delegation_is_reported_not_attempted() {
    let set = example();
    let mut inv = fixture("inventory-prod-azure.json");
    for s in inv.subnets.iter_mut().filter(|s| s.name == "snet-orders") {
        s.delegations.clear();
    }
    let target = set.target("prod-azure").unwrap();
    let planned =
        palisade::planning::plan_with(&set, target, inv, None, &Settings::default(), None).expect(
            "a missing delegation is a conflict with what is observed, not an invalid revision",
        );
    let conflict = planned
        .plan
        .findings
        .iter()
        .find(|f| f.kind == palisade::check::FindingKind::InventoryConflict)
        .unwrap_or_else(|| panic!("{:?}", planned.plan.findings));
    assert!(
        conflict.message.contains("Microsoft.Web/serverFarms"),
        "{}",
        conflict.message
    );
    // No function is integrated into the undelegated subnet…
    assert!(
        !planned.plan.changes.iter().any(|c| matches!(
            &c.change,
            Change::SetPlacement { after: Some(p), .. } if p.subnets.iter().any(|s| s.ends_with("snet-orders"))
        )),
        "{}",
        palisade::plan::render_text(&planned.plan)
    );
    // The subnet still resolves: the undelegated policy's NSG is still attached, and
    // the other policy's rules that name it keep their peer.
    assert!(
        planned.plan.changes.iter().any(|c| matches!(
            &c.change,
            Change::SetSubnetGroup { subnet, after: Some(_), .. } if subnet.ends_with("snet-orders")
        )),
        "{}",
        palisade::plan::render_text(&planned.plan)
    );
    assert!(
        planned.desired.groups["reports-func"]
            .rules
            .values()
            .any(|o| o.rule == "from-orders"),
        "reports-func still admits orders-func"
    );
    // …and the other policy is enforced as usual, with route-all.
    assert!(
        planned.plan.changes.iter().any(|c| matches!(
            &c.change,
            Change::SetPlacement { after: Some(p), .. } if p.route_all && p.subnets.iter().any(|s| s.ends_with("snet-reports"))
        )),
        "{}",
        palisade::plan::render_text(&planned.plan)
    );
}
