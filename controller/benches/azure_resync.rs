//! The Azure provider at scale against the ARM fake (in-process HTTP server on
//! 127.0.0.1, real ARM page size of 100): for 100, 1,000 and 10,000 function apps, the
//! first apply of `policies-example`'s `prod-azure` target, then 100 full resyncs of the
//! converged estate (observe → compile → plan → apply) — API calls per resync (the lists
//! grow with pages; the access-restriction reads, one per selected app, are bounded by
//! the re-read budget; writes must be 0), wall and CPU time, peak memory.
//! Run: `cargo bench -p palisade --no-default-features --features azure --bench azure_resync`
//! (the AWS SDK is not needed; `PALISADE_BENCH_RESYNCS` changes the 100).

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade::plan::Settings;
use palisade::planning::{PlanTarget, observe_and_plan};
use palisade::policy::{Limits, load_dir};
use palisade_armfake::{Config, Fake};
use palisade_providers::azure::{AzureProvider, AzureSettings};
use palisade_providers::{CallKind, CallOutcome, Ownership, Provider, total_calls};

mod support;
use support::{cpu_seconds, peak_rss};

fn calls(p: &AzureProvider) -> (u64, u64, u64) {
    let c = p.api_calls();
    let throttled = c
        .iter()
        .filter(|x| x.outcome == CallOutcome::Throttled)
        .map(|x| x.count)
        .sum();
    (
        total_calls(&c, CallKind::Read),
        total_calls(&c, CallKind::Write),
        throttled,
    )
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a smoke test
    // (100 function apps, 3 resyncs) so that it cannot rot.
    let full = std::env::args().any(|a| a == "--bench");
    let resyncs: usize = std::env::var("PALISADE_BENCH_RESYNCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 100 } else { 3 });
    let sizes: &[usize] = if full { &[100, 1_000, 10_000] } else { &[100] };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies-example");
    let (set, diags) = load_dir(&root, &Limits::default());
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    let target = set
        .targets
        .iter()
        .find(|t| t.name() == "prod-azure")
        .expect("prod-azure")
        .clone();
    let t = target.to_target().unwrap();
    let at = PlanTarget {
        set: &set,
        doc: &target,
        scope: &t,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let settings = Settings::default();
    println!(
        "azure_resync: policies-example prod-azure on the ARM fake, {resyncs} converged resyncs per size"
    );
    for &n in sizes {
        let fake = Fake::new(Config {
            in_progress_polls: 1,
            ..Config::default()
        });
        fake.seed(&palisade_armfake::example_estate(n)).unwrap();
        let running = rt
            .block_on(fake.clone().serve("127.0.0.1:0".parse().unwrap()))
            .unwrap();
        let credential = azure_identity::ClientSecretCredential::new(
            azure_core::new_http_client(),
            azure_core::Url::parse(&running.endpoint).unwrap(),
            "tenant".into(),
            "client".into(),
            "secret".into(),
        );
        let provider = AzureProvider::with_credential(
            AzureSettings {
                arm_endpoint: running.endpoint.clone(),
                poll_interval: Duration::from_millis(10),
                // The fake is local: the client-side budget would only measure itself.
                rates: "arm-read=100000/100000,arm-write=100000/100000"
                    .parse()
                    .unwrap(),
                ..AzureSettings::default()
            },
            Arc::new(credential),
        );
        // First enforcement.
        let started = Instant::now();
        // Ownership from a record, as the controller decides it (the vetting is measured).
        let mut own = Ownership::recorded(&t.name, "bench-installation");
        let planned = rt
            .block_on(observe_and_plan(at, &provider, &own, None, &settings, None))
            .unwrap();
        let changes = planned.plan.changes.len();
        let report = rt
            .block_on(palisade::apply::apply(&planned.plan, &t, &provider))
            .expect("first apply");
        for e in palisade::ownership::applied(&report).add {
            own.insert(e.kind, &e.id, &e.owner);
        }
        let first_wall = started.elapsed();
        let (r0, w0, _) = calls(&provider);
        let config_reads = |p: &AzureProvider| -> u64 {
            p.api_calls()
                .iter()
                .filter(|c| c.operation == "GET sites/config")
                .map(|c| c.count)
                .sum()
        };
        let c0 = config_reads(&provider);
        let mut previous = planned.desired;

        let mut walls = Vec::new();
        let mut cpus = Vec::new();
        let mut reads = Vec::new();
        let mut writes = 0;
        let mut config = Vec::new();
        for _ in 0..resyncs {
            let c = config_reads(&provider);
            let (r, w, _) = calls(&provider);
            let (wall, cpu) = (Instant::now(), cpu_seconds());
            let p = rt
                .block_on(observe_and_plan(
                    at,
                    &provider,
                    &own,
                    Some(&previous),
                    &settings,
                    None,
                ))
                .unwrap();
            assert!(
                p.plan.changes.is_empty(),
                "converged: {} changes",
                p.plan.changes.len()
            );
            rt.block_on(palisade::apply::apply(&p.plan, &t, &provider))
                .unwrap();
            walls.push(wall.elapsed());
            cpus.push(cpu_seconds() - cpu);
            let (r2, w2, _) = calls(&provider);
            reads.push(r2 - r);
            config.push(config_reads(&provider) - c);
            writes += w2 - w;
            previous = p.desired;
        }
        // Of which observation alone (HTTP, the fake serving pages, JSON, translation).
        let mut observes: Vec<Duration> = (0..5)
            .map(|_| {
                let w = Instant::now();
                rt.block_on(provider.observe(&t, &own)).unwrap();
                w.elapsed()
            })
            .collect();
        observes.sort();
        walls.sort();
        cpus.sort_by(|a, b| a.total_cmp(b));
        reads.sort();
        config.sort();
        let mid = resyncs / 2;
        println!(
            "  {n:>6} function apps: first apply {changes} changes, {r0} reads ({c0} of access restrictions) + {w0} writes, {first_wall:.2?}; \
             per converged resync: reads min {} median {} max {} (access restrictions median {}), writes total {writes} over {resyncs}; \
             wall min {:.1?} median {:.1?} max {:.1?}; CPU (incl. the in-process fake) min {:.2}s median {:.2}s max {:.2}s; observe alone median {:.1?}; peak RSS so far {}",
            reads[0],
            reads[mid],
            reads[resyncs - 1],
            config[mid],
            walls[0],
            walls[mid],
            walls[resyncs - 1],
            cpus[0],
            cpus[mid],
            cpus[resyncs - 1],
            observes[2],
            peak_rss()
        );
        drop(running);
    }
}
