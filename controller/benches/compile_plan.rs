//! Compile + plan at scale: 10,000 functions, 1,000 policies, 20,000 rules.
//! Prints min / median / max wall time over several runs and the peak resident memory
//! (VmHWM) of the process. Run: `cargo bench -p palisade --features test-util --bench compile_plan`.

use std::time::Instant;

use palisade::compile::compile;
use palisade::plan::{Settings, plan};
use palisade::policy::{Limits, load_dir};
use palisade_providers::fake::FakeProvider;
use palisade_providers::{Function, Inventory, Network, Provider, Subnet};

mod support;
use support::{cpu_seconds, peak_rss};

fn main() {
    const POLICIES: usize = 1_000;
    const FUNCTIONS: usize = 10_000;
    const RULES_PER_POLICY: usize = 20;
    let mut yaml = String::from(
        "apiVersion: palisade.dev/v1alpha1\nkind: Target\nmetadata: { name: t }\nspec: { aws: { region: us-east-1, accountId: \"123456789012\" } }\n",
    );
    for p in 0..POLICIES {
        yaml.push_str(&format!(
            "---\napiVersion: palisade.dev/v1alpha1\nkind: FunctionPolicy\nmetadata: {{ name: p{p} }}\nspec:\n  target: t\n  functions: {{ tags: {{ team: t{p} }} }}\n  network: {{ vpc: {{ id: vpc-1 }}, subnets: {{ tags: {{ tier: private }} }} }}\n  egress:\n"
        ));
        for r in 0..RULES_PER_POLICY {
            yaml.push_str(&format!(
                "    - {{ name: r{r}, to: [ {{ cidr: 10.{}.{}.0/24 }} ], ports: [ tcp/{} ] }}\n",
                p % 250,
                r,
                1000 + r
            ));
        }
    }
    let mut inv = Inventory {
        target: "t".into(),
        ..Inventory::default()
    };
    inv.networks.push(Network {
        id: "vpc-1".into(),
        name: "prod".into(),
        cidrs: vec![],
        tags: Default::default(),
    });
    for s in 0..3 {
        inv.subnets.push(Subnet {
            id: format!("subnet-{s}"),
            name: String::new(),
            network: "vpc-1".into(),
            cidrs: vec![],
            tags: [("tier".to_string(), "private".to_string())].into(),
            zone: Some(format!("z{s}")),
            route_table: None,
            group: None,
            delegations: Vec::new(),
        });
    }
    for f in 0..FUNCTIONS {
        inv.functions.push(Function {
            id: format!("arn:aws:lambda:us-east-1:123456789012:function:f{f}"),
            name: format!("f{f}"),
            tags: [("team".to_string(), format!("t{}", f % POLICIES))].into(),
            placement: None,
            inbound: None,
        });
    }
    // One file per 100 policies, as a real repository would split them (files are capped at 1 MiB).
    let dir = std::env::temp_dir().join(format!("palisade-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let docs: Vec<&str> = yaml.split("---\n").collect();
    for (i, chunk) in docs.chunks(100).enumerate() {
        std::fs::write(dir.join(format!("p{i}.yaml")), chunk.join("---\n")).unwrap();
    }
    let t0 = Instant::now();
    let (set, diags) = load_dir(&dir, &Limits::default());
    std::fs::remove_dir_all(&dir).ok();
    let load = t0.elapsed();
    assert!(
        diags.iter().all(|d| !d.is_error()),
        "{:?}",
        &diags[..diags.len().min(3)]
    );
    let target = set.target("t").unwrap();
    let mut times = Vec::new();
    let mut changes = 0;
    for _ in 0..7 {
        let t = Instant::now();
        let c = compile(&set, target, Some(&inv));
        let p = plan(&c.desired, &inv, None, &Settings::default(), None);
        times.push(t.elapsed());
        changes = p.changes.len();
        std::hint::black_box(p);
    }
    times.sort();

    // A full resync of the converged estate on the in-memory provider: observe, compile,
    // plan, apply (nothing to apply).
    let t = target.to_target().unwrap();
    let fake = FakeProvider::new(inv.clone());
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let first = plan(
        &compile(&set, target, Some(&inv)).desired,
        &inv,
        None,
        &Settings::default(),
        None,
    );
    rt.block_on(palisade::apply::apply(&first, &t, &fake))
        .expect("converge");
    let mut resync = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..7 {
        let (w, c) = (Instant::now(), cpu_seconds());
        let observed = rt
            .block_on(fake.observe(&t, &palisade_providers::Ownership::default()))
            .unwrap();
        let desired = compile(&set, target, Some(&observed)).desired;
        let p = plan(
            &desired,
            &observed,
            Some(&desired),
            &Settings::default(),
            None,
        );
        assert!(
            p.changes.is_empty(),
            "converged: {} changes",
            p.changes.len()
        );
        rt.block_on(palisade::apply::apply(&p, &t, &fake)).unwrap();
        resync.push(w.elapsed());
        cpu.push(cpu_seconds() - c);
    }
    resync.sort();
    cpu.sort_by(|a, b| a.total_cmp(b));
    let peak = peak_rss();
    println!(
        "compile+plan: {FUNCTIONS} functions, {POLICIES} policies, {} rules, {changes} changes",
        POLICIES * RULES_PER_POLICY
    );
    println!(
        "  load+validate YAML ({} KiB): {:?}",
        yaml.len() / 1024,
        load
    );
    println!(
        "  compile+plan over {} runs: min {:?} median {:?} max {:?}",
        times.len(),
        times[0],
        times[times.len() / 2],
        times[times.len() - 1]
    );
    println!(
        "  full converged resync (observe+compile+plan+apply, fake provider) over {} runs: wall min {:?} median {:?} max {:?}; CPU min {:.3}s median {:.3}s max {:.3}s",
        resync.len(),
        resync[0],
        resync[resync.len() / 2],
        resync[resync.len() - 1],
        cpu[0],
        cpu[cpu.len() / 2],
        cpu[cpu.len() - 1]
    );
    println!("  peak RSS (VmHWM, whole process incl. YAML text): {peak}");
}
