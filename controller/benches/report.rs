//! Report generation over a history of 1,000,000 events.
//!
//!     cargo bench -p palisade --bench report
//!
//! Fills a fresh SQLite history with a year of events (reconciles, drift, changes,
//! findings opening and closing, revisions) for 5 targets and 12 controls, then times
//! `compliance()` for the whole year and for one month, the HTML rendering, and the
//! verification of the hash chain.

use std::time::Instant;

use palisade::addr::ResourceAddr;
use palisade::check::{Finding, FindingKind};
use palisade::history::{
    ChangeRecord, ChangeStatus, DriftDetected, EventData, NewEvent, ReconcileResult, Reconciled,
    RevisionEnforced, Store, compliance,
};
use palisade::plan::Cause;

const YEAR_MS: i64 = 365 * 86_400_000;
const T0: i64 = 1_767_225_600_000; // 2026-01-01

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this as a smoke test.
    let full = std::env::args().any(|a| a == "--bench");
    let events: usize = if full { 1_000_000 } else { 10_000 };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("history.db");
    let store = Store::open(&path).expect("open");
    let controls: Vec<String> = (0..12).map(|i| format!("CTRL-{i}")).collect();
    let fill = Instant::now();
    let per_batch = 10_000;
    let mut n = 0usize;
    let mut batch = Vec::with_capacity(per_batch);
    while n < events {
        let at = T0 + (n as i64) * (YEAR_MS / events as i64);
        let target = format!("target-{}", n % 5);
        let group = |i: usize| ResourceAddr::group(format!("g{}", i % 300));
        let change = |cause, status| ChangeRecord {
            resource: group(n - 1),
            cause,
            action: "removeRules".into(),
            status,
            request_ids: vec!["r".into()],
            detail: None,
        };
        let ev = match n % 10 {
            0 if n.is_multiple_of(1000) => {
                NewEvent::new(EventData::RevisionEnforced(RevisionEnforced {
                    author: "A".into(),
                    summary: String::new(),
                    signature: None,
                    time: 0,
                    controls: controls.clone(),
                    policies: 1,
                }))
                .revision(Some("c"))
            }
            0..=3 => NewEvent::new(EventData::Reconciled(Reconciled {
                result: if n.is_multiple_of(97) {
                    ReconcileResult::Error
                } else {
                    ReconcileResult::Ok
                },
                error: None,
                trigger: None,
                changes: 0,
            }))
            .target(&target),
            4 => NewEvent::new(EventData::DriftDetected(DriftDetected {
                change: "added out of band: ingress tcp/22 from 0.0.0.0/0".into(),
                actor: None,
                correction: None,
            }))
            .target(&target)
            .resource(&group(n)),
            5 | 6 => {
                let cause = if n % 10 == 5 {
                    Cause::Drift
                } else {
                    Cause::Intended
                };
                NewEvent::new(EventData::ChangeApplied(change(
                    cause,
                    ChangeStatus::Applied,
                )))
                .target(&target)
                .resource(&group(n - 1))
            }
            7 | 8 => {
                let f = Finding {
                    kind: FindingKind::GuardrailViolation,
                    target: target.clone(),
                    resource: group(n),
                    message: "rule allows ingress tcp/22 from 0.0.0.0/0".into(),
                    guardrail: Some("no-world-ingress".into()),
                    controls: vec![controls[n % 12].clone()],
                    location: None,
                };
                let (resource, controls) = (f.resource.clone(), f.controls.clone());
                let data = if n % 10 == 7 {
                    EventData::FindingOpened(f)
                } else {
                    EventData::FindingClosed(f)
                };
                NewEvent::new(data)
                    .target(&target)
                    .resource(&resource)
                    .controls(&controls)
            }
            _ => NewEvent::new(EventData::ChangeFailed(ChangeRecord {
                detail: Some("throttled".into()),
                ..change(Cause::Intended, ChangeStatus::Failed)
            }))
            .target(&target),
        };
        batch.push((at, ev));
        n += 1;
        if batch.len() == per_batch || n == events {
            store.append_many(&batch).expect("append");
            batch.clear();
        }
    }
    let filled = fill.elapsed();
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "filled {events} events in {filled:.1?} ({} MB on disk)",
        size / 1_000_000
    );
    for (label, since, until) in [
        ("whole year", T0, T0 + YEAR_MS),
        (
            "one month (Nov)",
            T0 + 304 * 86_400_000,
            T0 + 334 * 86_400_000,
        ),
    ] {
        let mut times = Vec::new();
        let mut html_times = Vec::new();
        let mut oscal_times = Vec::new();
        let mut oscal_size = 0;
        for _ in 0..5 {
            let t = Instant::now();
            let r = compliance(&store, since, until, None, None).expect("report");
            times.push(t.elapsed());
            let t = Instant::now();
            let html = palisade::report::html(&r);
            html_times.push(t.elapsed());
            assert!(html.len() > 1000);
            assert!(r.events_read > 0);
            let t = Instant::now();
            let oscal = palisade::report::oscal::oscal(&r);
            oscal_times.push(t.elapsed());
            oscal_size = oscal.len();
        }
        times.sort();
        html_times.sort();
        oscal_times.sort();
        println!(
            "{label}: compliance() min {:.2?} median {:.2?} max {:.2?}; html min {:.1?} median {:.1?} max {:.1?}; oscal min {:.1?} median {:.1?} max {:.1?} ({} kB)",
            times[0],
            times[2],
            times[4],
            html_times[0],
            html_times[2],
            html_times[4],
            oscal_times[0],
            oscal_times[2],
            oscal_times[4],
            oscal_size / 1000
        );
    }
    // The hash chain over every event (`palisade report --verify`).
    let mut times = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let v = palisade::history::chain::verify(&store).expect("verify");
        times.push(t.elapsed());
        assert_eq!(v.broken, None);
        assert_eq!(v.rows as usize, events);
    }
    times.sort();
    println!(
        "verify the chain of {events} events: min {:.2?} median {:.2?} max {:.2?}",
        times[0], times[1], times[2]
    );
}
