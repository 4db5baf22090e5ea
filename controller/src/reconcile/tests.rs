//! The reconcile, one test per branch, with its collaborators injected: the fake
//! provider, an in-memory history store (ownership record, loop state, evidence), the
//! status sink and metrics of a `Shared`, and a clock the test moves.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use palisade_providers::fake::FakeProvider;
use palisade_providers::{
    Change, Cloud, Direction, Inventory, Peer, PortRange, Ports, Protocol, ProviderError, Rule,
};

use super::worker::worker;
use super::*;
use crate::check::FindingKind;
use crate::history::{ChangeStatus, EventData, NewEvent, ResourceState};
use crate::plan::Cause;
use crate::policy::{Limits, Mode, load_dir};
use crate::source::SignatureStatus;

const TARGET: &str = "prod-aws";
const T0: i64 = 1_780_000_000_000;

#[derive(Debug)]
struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl ManualClock {
    fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::Relaxed);
    }
}

struct Fixture {
    shared: Arc<Shared>,
    fake: Arc<FakeProvider>,
    clock: Arc<ManualClock>,
    enforced: Enforced,
}

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn enforced(set: PolicySet) -> Enforced {
    Enforced::new(
        Revision {
            commit: "c1".into(),
            author: "A <a@example.com>".into(),
            committer: "a@example.com".into(),
            time: 0,
            summary: "policies".into(),
            signature: SignatureStatus::NotChecked,
        },
        set,
    )
}

fn fixture(settings: RunSettings) -> Fixture {
    let (set, diags) = load_dir(&root().join("policies-example"), &Limits::default());
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    let text = std::fs::read_to_string(root().join("tests/fixtures/inventory-prod-aws.json"))
        .expect("fixture");
    let inventory: Inventory = serde_json::from_str(&text).expect("fixture json");
    let fake = Arc::new(FakeProvider::new(inventory));
    let providers = Providers::new(Default::default());
    providers.insert(Cloud::Aws, fake.clone());
    let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
    let shared = Shared::with_clock(
        settings,
        providers,
        Some(Store::in_memory().expect("store")),
        clock.clone(),
    );
    let enforced = enforced(set);
    shared.update(|s| s.revision = Some(enforced.revision.clone()));
    Fixture {
        shared,
        fake,
        clock,
        enforced,
    }
}

impl Fixture {
    async fn once(&self, state: &mut TargetState) -> ReconcileRecord {
        reconcile_once(&self.shared, TARGET, &self.enforced, Trigger::Resync, state).await
    }

    fn history(&self) -> &Store {
        self.shared.history.as_ref().expect("store")
    }

    fn events(&self) -> Vec<EventData> {
        self.history()
            .events(&Default::default())
            .expect("events")
            .into_iter()
            .filter_map(|e| e.event.data().cloned())
            .collect()
    }

    /// The managed group of the `payments-api` policy (enforced) in the fake cloud.
    fn managed_group(&self) -> String {
        self.fake
            .inventory(TARGET)
            .groups
            .iter()
            .find(|g| g.owner() == Some("payments-api"))
            .expect("a managed group")
            .id
            .clone()
    }

    fn rules_of(&self, id: &str) -> Vec<Rule> {
        self.fake
            .inventory(TARGET)
            .groups
            .iter()
            .find(|g| g.id == id)
            .map(|g| g.rules.clone())
            .unwrap_or_default()
    }

    fn mutate_group(&self, id: &str, f: impl FnOnce(&mut Vec<Rule>)) {
        self.fake.mutate(TARGET, |inv| {
            let g = inv.groups.iter_mut().find(|g| g.id == id).expect("group");
            f(&mut g.rules);
        });
    }

    async fn converged(&self) -> TargetState {
        let mut state = TargetState::default();
        let first = self.once(&mut state).await;
        assert_eq!(first.result, ReconcileResult::Ok, "{:?}", first.error);
        assert!(first.applied > 0);
        state
    }
}

fn world_ssh() -> Rule {
    Rule::allow(
        Direction::Ingress,
        Ports {
            protocol: Protocol::Tcp,
            range: Some(PortRange { from: 22, to: 22 }),
            icmp: None,
        },
        Peer::cidr("0.0.0.0/0".parse().expect("cidr")),
    )
}

#[tokio::test]
async fn converged_after_one_apply_and_healthy() {
    let f = fixture(RunSettings::default());
    let mut state = f.converged().await;
    let again = f.once(&mut state).await;
    assert_eq!(again.result, ReconcileResult::Ok);
    assert_eq!((again.applied, again.drift_reverted), (0, 0));
    let status = f.shared.status();
    assert!(status.targets[TARGET].healthy);
    assert!(status.converged);
    let report = f.history().last_report(TARGET).unwrap().expect("report");
    assert!(!report.resources.is_empty());
    // Everything is as declared, except what the example's audit policy
    // (report-export) only reports.
    assert!(
        report.resources.iter().all(|r| {
            r.status == ResourceState::Compliant
                || (r.status == ResourceState::DriftReported
                    && r.resource.name.starts_with("report-export"))
        }),
        "{:?}",
        report.resources
    );
    assert_eq!(report.at, T0, "evidence times come from the injected clock");
}

#[tokio::test]
async fn drift_is_reverted_and_recorded_as_drift() {
    let f = fixture(RunSettings::default());
    let mut state = f.converged().await;
    let sg = f.managed_group();
    f.mutate_group(&sg, |rules| rules.push(world_ssh()));
    let r = f.once(&mut state).await;
    assert_eq!(r.result, ReconcileResult::Ok, "{:?}", r.error);
    assert_eq!(r.drift_reverted, 1);
    assert!(!f.rules_of(&sg).contains(&world_ssh()));
    let events = f.events();
    assert!(
        events
            .iter()
            .any(|e| matches!(e, EventData::DriftDetected(d) if d.change.contains("0.0.0.0/0")))
    );
    assert!(events.iter().any(|e| matches!(e,
        EventData::ChangeApplied(c) if c.cause == Cause::Drift && c.action == "removeRules")));
    let report = f.history().last_report(TARGET).unwrap().expect("report");
    assert!(
        report
            .resources
            .iter()
            .any(|r| r.status == ResourceState::DriftReverted)
    );
}

#[tokio::test]
async fn after_a_restart_drift_is_still_drift() {
    let f = fixture(RunSettings::default());
    let _before_restart = f.converged().await;
    let sg = f.managed_group();
    f.mutate_group(&sg, |rules| rules.push(world_ssh()));
    // A new worker (a restart): the previous desired state comes from the store.
    let mut fresh = TargetState::default();
    let r = f.once(&mut fresh).await;
    assert_eq!(r.drift_reverted, 1, "{r:?}");
}

#[tokio::test]
async fn audit_mode_reports_and_changes_nothing() {
    let mut f = fixture(RunSettings::default());
    let mut state = f.converged().await;
    let sg = f.managed_group();
    let mut set = (*f.enforced.set).clone();
    for p in set
        .policies
        .iter_mut()
        .filter(|p| p.name() == "payments-api")
    {
        p.spec.mode = Mode::Audit;
    }
    f.enforced = enforced(set);
    f.mutate_group(&sg, |rules| rules.push(world_ssh()));
    let writes = f.fake.writes();
    let r = f.once(&mut state).await;
    assert_eq!(r.result, ReconcileResult::Ok, "{:?}", r.error);
    assert_eq!(
        f.fake.writes(),
        writes,
        "audit writes nothing: {:?}",
        f.history().last_report(TARGET).unwrap().map(|r| r.changes)
    );
    assert!(f.rules_of(&sg).contains(&world_ssh()));
    let status = f.shared.status();
    assert!(
        status.targets[TARGET]
            .findings
            .iter()
            .any(|x| x.kind == FindingKind::AuditDrift)
    );
    let report = f.history().last_report(TARGET).unwrap().expect("report");
    assert!(
        report
            .resources
            .iter()
            .any(|r| r.status == ResourceState::DriftReported)
    );
}

#[tokio::test]
async fn an_empty_source_is_refused_and_nothing_is_deleted() {
    let mut f = fixture(RunSettings::default());
    let mut state = f.converged().await;
    let before = f.fake.inventory(TARGET);
    let mut set = (*f.enforced.set).clone();
    set.policies.retain(|p| p.spec.target.value != TARGET);
    f.enforced = enforced(set);
    let r = f.once(&mut state).await;
    assert_eq!(r.result, ReconcileResult::Refused, "{r:?}");
    assert_eq!(f.fake.inventory(TARGET), before);
    assert!(!f.shared.status().targets[TARGET].healthy);
}

#[tokio::test]
async fn a_failed_change_fails_only_itself_and_what_needs_it() {
    let f = fixture(RunSettings::default());
    f.fake.fail_when(
        |c| matches!(c, Change::SetPlacement { .. }),
        1,
        || ProviderError::Api {
            service: "lambda".into(),
            operation: "UpdateFunctionConfiguration".into(),
            code: "ResourceConflictException".into(),
            message: "an update is in progress".into(),
            request_id: Some("req-1".into()),
            retryable: true,
        },
    );
    let mut state = TargetState::default();
    let r = f.once(&mut state).await;
    assert_eq!(r.result, ReconcileResult::Error);
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains("ResourceConflict")
    );
    assert!(r.applied > 1, "independent changes went ahead: {r:?}");
    let failed: Vec<_> = f
        .events()
        .into_iter()
        .filter_map(|e| match e {
            EventData::ChangeFailed(c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].status, ChangeStatus::Failed);
    // The next reconcile (the retry) converges.
    let r = f.once(&mut state).await;
    assert_eq!(r.result, ReconcileResult::Ok, "{:?}", r.error);
}

#[tokio::test]
async fn a_pending_change_is_reported_and_the_reconcile_succeeds() {
    let f = fixture(RunSettings::default());
    f.fake.pending_when(
        |c| matches!(c, Change::SetPlacement { .. }),
        1,
        "ENIs still attached",
    );
    let mut state = TargetState::default();
    let r = f.once(&mut state).await;
    assert_eq!(r.result, ReconcileResult::Ok, "{:?}", r.error);
    let status = f.shared.status();
    assert_eq!(status.targets[TARGET].pending_deletions.len(), 1);
    assert!(status.targets[TARGET].pending_deletions[0].contains("ENIs still attached"));
    let report = f.history().last_report(TARGET).unwrap().expect("report");
    assert!(
        report
            .changes
            .iter()
            .any(|c| c.status == ChangeStatus::Pending)
    );
    assert!(
        report
            .resources
            .iter()
            .any(|r| r.status == ResourceState::Pending)
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_between_changes() {
    let f = fixture(RunSettings {
        reconcile_timeout: Duration::from_secs(5),
        ..RunSettings::default()
    });
    f.fake.set_apply_latency(Duration::from_secs(2));
    let mut state = TargetState::default();
    let r = f.once(&mut state).await;
    assert_eq!(r.result, ReconcileResult::Timeout, "{r:?}");
    assert!(
        r.error.as_deref().unwrap_or("").contains("between changes"),
        "{r:?}"
    );
    assert!((1..=3).contains(&r.applied), "{r:?}");
    // Nothing was cut in the middle: no change failed.
    assert!(
        !f.events()
            .iter()
            .any(|e| matches!(e, EventData::ChangeFailed(_)))
    );
    // The next reconciles finish the work.
    f.fake.set_apply_latency(Duration::ZERO);
    let r = f.once(&mut state).await;
    assert_eq!(r.result, ReconcileResult::Ok, "{:?}", r.error);
}

#[tokio::test(start_paused = true)]
async fn a_reconcile_cut_by_the_outer_timeout_keeps_what_it_applied() {
    let f = fixture(RunSettings {
        reconcile_timeout: Duration::from_secs(5),
        ..RunSettings::default()
    });
    // Groups and rules are answered; the first function move hangs for ever.
    f.fake
        .stall_when(|c| matches!(c, Change::SetPlacement { .. }));
    let mut state = TargetState::default();
    let r = f.once(&mut state).await;
    assert_eq!(r.result, ReconcileResult::Timeout, "{r:?}");
    let applied = f
        .events()
        .into_iter()
        .filter(|e| matches!(e, EventData::ChangeApplied(_)))
        .count();
    assert!(
        applied > 0,
        "what was applied before the cut is in the history"
    );
    let report = f.history().last_report(TARGET).unwrap().expect("report");
    assert_eq!(report.result, ReconcileResult::Timeout);
    assert!(
        report
            .resources
            .iter()
            .any(|x| x.status == ResourceState::NotReached
                && x.resource.kind == crate::addr::ResourceKind::Function),
        "a function the reconcile never reached is not reported compliant: {:?}",
        report.resources
    );
    assert!(report.changes.len() >= applied);
}

#[test]
fn a_failed_history_write_is_counted_and_shown_and_enforcement_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    drop(Store::open(&path).unwrap());
    // A store that cannot be written.
    let shared = Shared::new(
        RunSettings::default(),
        Providers::new(Default::default()),
        Some(Store::open_read_only(&path).unwrap()),
    );
    let event = NewEvent::new(EventData::Retention(crate::history::Retention {
        before: 0,
        events_deleted: 0,
        reports_deleted: 0,
    }));
    shared.record(std::slice::from_ref(&event));
    assert_eq!(shared.metrics.history_write_errors.get(), 1);
    let error = shared.status().history_error.expect("shown in the status");
    assert!(
        error.contains("readonly") || error.contains("read-only"),
        "{error}"
    );
    // The next write that succeeds clears it.
    shared.history_written(Ok(()));
    assert_eq!(shared.status().history_error, None);
}

#[test]
fn events_of_a_failed_history_write_are_written_by_the_next_one_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.db");
    let shared = Shared::new(
        RunSettings::default(),
        Providers::new(Default::default()),
        Some(Store::open(&path).unwrap()),
    );
    let retention = |before| {
        NewEvent::new(EventData::Retention(crate::history::Retention {
            before,
            events_deleted: 0,
            reports_deleted: 0,
        }))
    };
    // The store refuses inserts for a while (another writer, a full disk…).
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch("CREATE TRIGGER block_inserts BEFORE INSERT ON events BEGIN SELECT RAISE(ABORT, 'disk full'); END;")
        .unwrap();
    shared.record(&[retention(1)]);
    shared.record(&[retention(2)]);
    assert_eq!(shared.metrics.history_write_errors.get(), 2);
    let error = shared.status().history_error.expect("shown");
    assert!(error.contains("2 events kept in memory"), "{error}");
    other.execute_batch("DROP TRIGGER block_inserts").unwrap();
    shared.record(&[retention(3)]);
    assert_eq!(shared.status().history_error, None);
    let kept: Vec<i64> = shared
        .history
        .as_ref()
        .unwrap()
        .events(&crate::history::Filter::default())
        .unwrap()
        .iter()
        .filter_map(|e| match e.event.data() {
            Some(EventData::Retention(r)) => Some(r.before),
            _ => None,
        })
        .collect();
    assert_eq!(
        kept,
        vec![1, 2, 3],
        "nothing lost, in the order it happened"
    );
    assert!(
        crate::history::chain::verify(shared.history.as_ref().unwrap())
            .unwrap()
            .broken
            .is_none()
    );
}

#[tokio::test]
async fn on_shutdown_no_change_is_started() {
    let f = fixture(RunSettings::default());
    f.shared.cancel.cancel();
    let mut state = TargetState::default();
    let r = f.once(&mut state).await;
    assert_eq!(r.result, ReconcileResult::Error);
    assert!(r.error.as_deref().unwrap_or("").contains("shutting down"));
    assert_eq!(f.fake.writes(), 0);
}

#[tokio::test]
async fn a_field_that_keeps_flapping_is_held_and_reported_across_a_restart() {
    let f = fixture(RunSettings {
        flap_threshold: 3,
        flap_window: Duration::from_secs(3600),
        ..RunSettings::default()
    });
    let mut state = f.converged().await;
    let sg = f.managed_group();
    let declared = f.rules_of(&sg)[0].clone();
    // Someone keeps revoking a declared rule; Palisade puts it back three times.
    for _ in 0..3 {
        f.mutate_group(&sg, |rules| rules.retain(|r| r != &declared));
        f.clock.advance(Duration::from_secs(60));
        let r = f.once(&mut state).await;
        assert_eq!(r.drift_reverted, 1, "{r:?}");
    }
    // A restart: the flap history comes back from the store.
    let mut state = TargetState::default();
    f.mutate_group(&sg, |rules| rules.retain(|r| r != &declared));
    // And a world-open rule added at the same time is still revoked.
    f.mutate_group(&sg, |rules| rules.push(world_ssh()));
    f.clock.advance(Duration::from_secs(60));
    let r = f.once(&mut state).await;
    assert_eq!(r.result, ReconcileResult::Ok, "{:?}", r.error);
    assert_eq!(r.drift_reverted, 1, "only the world rule: {r:?}");
    assert!(!f.rules_of(&sg).iter().any(|r| r == &declared));
    assert!(!f.rules_of(&sg).contains(&world_ssh()));
    let flapping: Vec<_> = f.shared.status().targets[TARGET]
        .findings
        .iter()
        .filter(|x| x.kind == FindingKind::Flapping)
        .cloned()
        .collect();
    assert_eq!(flapping.len(), 1, "{flapping:?}");
    assert!(flapping[0].message.contains("reverted 3 times"));
    // After the window it is reverted again.
    f.clock.advance(Duration::from_secs(3700));
    let r = f.once(&mut state).await;
    assert_eq!(r.drift_reverted, 1, "{r:?}");
    assert!(f.rules_of(&sg).contains(&declared));
}

#[tokio::test]
async fn the_worker_of_a_removed_target_stops_and_leaves_the_status() {
    let f = fixture(RunSettings::default());
    let _ = f.converged().await;
    assert!(f.shared.status().targets.contains_key(TARGET));
    let mut set = (*f.enforced.set).clone();
    set.targets.retain(|t| t.name() != TARGET);
    set.policies.retain(|p| p.spec.target.value != TARGET);
    f.shared
        .enforced
        .send_replace(Some(Arc::new(enforced(set))));
    let writes = f.fake.writes();
    tokio::time::timeout(
        Duration::from_secs(10),
        worker(
            f.shared.clone(),
            TARGET.into(),
            Arc::new(tokio::sync::Semaphore::new(1)),
        ),
    )
    .await
    .expect("the worker stops");
    assert!(!f.shared.status().targets.contains_key(TARGET));
    assert_eq!(f.fake.writes(), writes, "nothing is changed there");
}

#[test]
fn a_poll_stuck_past_twice_its_deadline_fails_liveness() {
    let settings = RunSettings {
        fetch_timeout: Duration::from_secs(10),
        ..RunSettings::default()
    };
    let shared = Shared::new(settings, Providers::new(Default::default()), None);
    assert!(shared.live());
    // Running, but within twice the deadline plus a minute: alive.
    shared
        .fetch_running_since
        .store(now() - 70, Ordering::Relaxed);
    assert!(shared.live());
    shared
        .fetch_running_since
        .store(now() - 100, Ordering::Relaxed);
    assert!(!shared.live(), "stuck for 100 s > 2 × 10 s + 60 s");
    shared.fetch_running_since.store(0, Ordering::Relaxed);
    assert!(shared.live());
    // The loop itself stopped turning.
    shared.heartbeat.store(now() - 10_000, Ordering::Relaxed);
    assert!(!shared.live());
}

/// A CloudTrail event as EventBridge delivers it to SQS: `operation` on group `sg` by
/// an assumed role of `role`, in `account`, at `at_ms`.
fn cloudtrail_at(
    account: &str,
    operation: &str,
    sg: &str,
    role: &str,
    n: usize,
    at_ms: i64,
) -> String {
    serde_json::json!({
        "version": "0", "id": format!("ev-{n}"), "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.ec2", "account": account, "time": "2026-12-01T10:00:00Z",
        "region": "us-east-1", "resources": [],
        "detail": {
            "eventSource": "ec2.amazonaws.com", "eventName": operation,
            "eventTime": jiff::Timestamp::from_millisecond(at_ms).unwrap().to_string(),
            "eventID": format!("e-{n}"),
            "requestID": format!("req-{n}"), "sourceIPAddress": "198.51.100.7",
            "userIdentity": {
                "type": "AssumedRole",
                "arn": format!("arn:aws:sts::{account}:assumed-role/{role}/run-{n}"),
                "sessionContext": {"sessionIssuer": {"type": "Role", "arn": format!("arn:aws:iam::{account}:role/{role}")}}
            },
            "requestParameters": {"groupId": sg, "ipPermissions": {"items": []}},
            "responseElements": {"_return": true}
        }
    })
    .to_string()
}

/// [`cloudtrail_at`] at the fixture's start.
fn cloudtrail(account: &str, operation: &str, sg: &str, role: &str, n: usize) -> String {
    cloudtrail_at(account, operation, sg, role, n, T0)
}

/// Route everything `queue` delivers now, as the pump would; each must be routed.
async fn route_queued(shared: &Shared, queue: &Arc<dyn palisade_providers::events::EventQueue>) {
    for m in queue.receive(Duration::ZERO).await.unwrap() {
        assert_eq!(super::events::route(shared, queue, m).await, None);
    }
}

fn metric(shared: &Shared, line: &str) -> f64 {
    shared
        .metrics
        .encode()
        .lines()
        .find(|l| l.starts_with(line))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_events_is_counted_coalesced_and_deleted_and_the_drift_reverted_without_a_resync()
 {
    use palisade_providers::fake::FakeQueue;
    let f = fixture(RunSettings {
        resync: Duration::from_secs(3600),
        event_min_interval: Duration::from_millis(100),
        ..RunSettings::default()
    });
    f.shared
        .enforced
        .send_replace(Some(Arc::new(enforced((*f.enforced.set).clone()))));
    let worker = tokio::spawn(worker(
        f.shared.clone(),
        TARGET.into(),
        Arc::new(tokio::sync::Semaphore::new(1)),
    ));
    let wait = |what: &'static str, done: &dyn Fn() -> bool| {
        let start = std::time::Instant::now();
        while !done() {
            assert!(start.elapsed() < Duration::from_secs(30), "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // The first reconcile converges; the worker then sleeps for the hour-long resync.
    wait("first reconcile", &|| {
        f.shared.status().targets.get(TARGET).is_some_and(|t| {
            t.last_reconcile
                .as_ref()
                .is_some_and(|r| r.result == ReconcileResult::Ok)
        })
    });
    let sg = f.managed_group();
    f.mutate_group(&sg, |rules| rules.push(world_ssh()));
    let queue = Arc::new(FakeQueue::new(Duration::from_secs(60)));
    for n in 0..1000 {
        let body = match n % 20 {
            0 => format!("{{\"not\": json {n}"),
            1 => cloudtrail("999999999999", "AuthorizeSecurityGroupIngress", &sg, "x", n),
            // Names a group no observation of the target knew, and creates nothing.
            2 => cloudtrail(
                "123456789012",
                "RevokeSecurityGroupIngress",
                "sg-0fffffffffffffff0",
                "x",
                n,
            ),
            _ => cloudtrail(
                "123456789012",
                "AuthorizeSecurityGroupIngress",
                &sg,
                "terraform-ci",
                n,
            ),
        };
        queue.send(&body, T0);
    }
    f.shared.add_event_queue(queue.clone());
    let pump = tokio::spawn(super::events::pump(f.shared.clone(), queue.clone()));
    wait("every message handled and deleted", &|| queue.is_empty());
    assert!(
        !f.rules_of(&sg).contains(&world_ssh()),
        "reverted: {}\n{:?}",
        f.shared.metrics.encode(),
        f.shared.status().targets.get(TARGET)
    );
    let s = &f.shared;
    assert_eq!(metric(s, "palisade_events_received_total"), 1000.0);
    assert_eq!(
        metric(s, "palisade_events_dropped_total{reason=\"malformed\"}"),
        50.0
    );
    assert_eq!(
        metric(s, "palisade_events_dropped_total{reason=\"foreign\"}"),
        50.0
    );
    assert_eq!(
        metric(s, "palisade_events_dropped_total{reason=\"unrelated\"}"),
        50.0
    );
    assert_eq!(
        metric(
            s,
            &format!("palisade_events_matched_total{{target=\"{TARGET}\"}}")
        ),
        850.0
    );
    assert_eq!(metric(s, "palisade_events_deleted_total"), 1000.0);
    assert_eq!(
        metric(s, "palisade_event_reconcile_lag_seconds_count"),
        850.0
    );
    let event_reconciles = metric(
        s,
        &format!("palisade_reconcile_triggers_total{{target=\"{TARGET}\",trigger=\"event\"}}"),
    );
    assert!(
        (1.0..=10.0).contains(&event_reconciles),
        "coalesced into few reconciles: {event_reconciles}"
    );
    // Who did it comes from the event, not the audit log (the fake has none).
    let actor = f
        .events()
        .into_iter()
        .find_map(|e| match e {
            EventData::DriftDetected(d) if d.change.contains("0.0.0.0/0") => d.actor,
            _ => None,
        })
        .expect("the drift names its actor");
    assert_eq!(
        actor.issuer.as_deref(),
        Some("arn:aws:iam::123456789012:role/terraform-ci")
    );
    f.shared.cancel.cancel();
    pump.await.unwrap();
    worker.await.unwrap();
}

#[tokio::test]
async fn events_whose_reconcile_was_not_recorded_stay_in_the_queue() {
    use palisade_providers::events::EventQueue;
    use palisade_providers::fake::FakeQueue;
    for writable in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        drop(Store::open(&path).unwrap());
        let f = fixture(RunSettings::default());
        let _ = f.converged().await;
        let sg = f.managed_group();
        let store = if writable {
            Store::open(&path).unwrap()
        } else {
            Store::open_read_only(&path).unwrap()
        };
        let providers = Providers::new(Default::default());
        providers.insert(Cloud::Aws, f.fake.clone());
        let settings = RunSettings {
            history_read_only: !writable,
            ..RunSettings::default()
        };
        let shared = Shared::with_clock(settings, providers, Some(store), f.clock.clone());
        shared
            .enforced
            .send_replace(Some(Arc::new(enforced((*f.enforced.set).clone()))));
        // The worker makes the inbox.
        shared.inbox(TARGET);
        let queue = Arc::new(FakeQueue::new(Duration::from_secs(60)));
        queue.send(&cloudtrail("123456789012", "CreateTags", &sg, "ops", 1), T0);
        let dyn_queue: Arc<dyn EventQueue> = queue.clone();
        route_queued(&shared, &dyn_queue).await;
        assert!(shared.inbox(TARGET).has_pending());
        let mut state = TargetState::default();
        let r = reconcile_once(&shared, TARGET, &f.enforced, Trigger::Event, &mut state).await;
        if writable {
            assert!(!shared.inbox(TARGET).has_pending(), "consumed: {r:?}");
            assert_eq!((queue.deleted(), queue.len()), (1, 0));
        } else {
            // Nothing could be recorded (here the reconcile failed before it observed:
            // its event waits for the next one); the message is not deleted and comes
            // back after its visibility timeout.
            assert_eq!(r.result, ReconcileResult::Error);
            assert!(
                shared.inbox(TARGET).has_pending(),
                "kept for the next reconcile"
            );
            assert_eq!((queue.deleted(), queue.len()), (0, 1));
        }
    }
}

#[tokio::test]
async fn a_flap_finding_names_the_pipeline_that_keeps_changing_it_back() {
    use palisade_providers::events::EventQueue;
    use palisade_providers::fake::FakeQueue;
    let f = fixture(RunSettings {
        flap_threshold: 3,
        flap_window: Duration::from_secs(3600),
        ..RunSettings::default()
    });
    f.shared
        .enforced
        .send_replace(Some(Arc::new(enforced((*f.enforced.set).clone()))));
    let mut state = f.converged().await;
    let sg = f.managed_group();
    let declared = f.rules_of(&sg)[0].clone();
    let queue = Arc::new(FakeQueue::new(Duration::from_secs(60)));
    let dyn_queue: Arc<dyn EventQueue> = queue.clone();
    // A pipeline keeps revoking a declared rule; each run is a new session of its role,
    // and its change event says so.
    for n in 0..4 {
        f.mutate_group(&sg, |rules| rules.retain(|r| r != &declared));
        queue.send(
            &cloudtrail_at(
                "123456789012",
                "RevokeSecurityGroupIngress",
                &sg,
                "terraform-ci",
                n,
                f.clock.now_ms(),
            ),
            T0,
        );
        route_queued(&f.shared, &dyn_queue).await;
        f.clock.advance(Duration::from_secs(60));
        let r = reconcile_once(&f.shared, TARGET, &f.enforced, Trigger::Event, &mut state).await;
        assert_eq!(r.result, ReconcileResult::Ok, "{:?}", r.error);
    }
    let flapping: Vec<String> = f.shared.status().targets[TARGET]
        .findings
        .iter()
        .filter(|x| x.kind == FindingKind::Flapping)
        .map(|x| x.message.clone())
        .collect();
    assert_eq!(flapping.len(), 1, "{flapping:?}");
    assert!(
        flapping[0]
            .contains("fighting `arn:aws:iam::123456789012:role/terraform-ci` (3 times in 1 h)"),
        "{}",
        flapping[0]
    );
    assert!(queue.is_empty(), "every event deleted once recorded");
}

#[tokio::test]
async fn an_event_is_deleted_only_when_every_target_it_went_to_recorded_its_reconcile() {
    use palisade_providers::events::EventQueue;
    use palisade_providers::fake::FakeQueue;
    let f = fixture(RunSettings::default());
    f.shared
        .enforced
        .send_replace(Some(Arc::new(enforced((*f.enforced.set).clone()))));
    let _ = f.converged().await;
    let sg = f.managed_group();
    // Hidden for no time: an undeleted message is received again at once.
    let queue = Arc::new(FakeQueue::new(Duration::ZERO));
    let dyn_queue: Arc<dyn EventQueue> = queue.clone();
    queue.send(
        &cloudtrail("123456789012", "RevokeSecurityGroupIngress", &sg, "ops", 1),
        T0,
    );
    route_queued(&f.shared, &dyn_queue).await;
    // Its reconcile's evidence could not be written: not deleted.
    let taken = f.shared.inbox(TARGET).take();
    assert_eq!(taken.len(), 1);
    super::events::settle(&f.shared, taken, false).await;
    assert_eq!((queue.deleted(), queue.len()), (0, 1));
    // It comes back; this time the evidence is written: deleted.
    route_queued(&f.shared, &dyn_queue).await;
    let taken = f.shared.inbox(TARGET).take();
    assert_eq!(taken.len(), 1, "delivered again");
    super::events::settle(&f.shared, taken, true).await;
    assert_eq!((queue.deleted(), queue.len()), (1, 0));
}

#[tokio::test]
async fn an_event_from_before_the_last_observation_names_nobody() {
    use palisade_providers::events::EventQueue;
    use palisade_providers::fake::FakeQueue;
    let f = fixture(RunSettings::default());
    f.shared
        .enforced
        .send_replace(Some(Arc::new(enforced((*f.enforced.set).clone()))));
    let mut state = f.converged().await;
    let sg = f.managed_group();
    f.clock.advance(Duration::from_secs(600));
    f.mutate_group(&sg, |rules| rules.push(world_ssh()));
    let queue = Arc::new(FakeQueue::new(Duration::from_secs(60)));
    let dyn_queue: Arc<dyn EventQueue> = queue.clone();
    // A change of the same group two hours ago (a redelivery, a late event): the drift
    // found now is not its doing.
    queue.send(
        &cloudtrail_at(
            "123456789012",
            "AuthorizeSecurityGroupIngress",
            &sg,
            "old-pipeline",
            1,
            f.clock.now_ms() - 2 * 3600 * 1000,
        ),
        T0,
    );
    route_queued(&f.shared, &dyn_queue).await;
    let r = reconcile_once(&f.shared, TARGET, &f.enforced, Trigger::Event, &mut state).await;
    assert_eq!(r.drift_reverted, 1, "{r:?}");
    let drift: Vec<_> = f
        .events()
        .into_iter()
        .filter_map(|e| match e {
            EventData::DriftDetected(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(drift.len(), 1);
    assert_eq!(
        drift[0].actor, None,
        "never guessed from an event outside the window"
    );
}

#[tokio::test]
async fn drift_the_audit_log_shows_late_is_attributed_later_even_across_a_restart() {
    use crate::state::StateStore;
    use palisade_providers::{Actor, ActorKind};
    let f = fixture(RunSettings::default());
    let mut state = f.converged().await;
    let sg = f.managed_group();
    f.clock.advance(Duration::from_secs(60));
    let made_at = f.clock.now_ms();
    f.mutate_group(&sg, |rules| rules.push(world_ssh()));
    f.clock.advance(Duration::from_secs(5));
    // The audit log does not show it yet: reverted now, its author pending.
    let r = f.once(&mut state).await;
    assert_eq!(r.drift_reverted, 1, "{r:?}");
    let asked = f.fake.attributions_asked();
    assert_eq!(asked, 1, "one query for the drifted group");
    let pending = f.history().pending_attributions(TARGET).unwrap();
    assert_eq!(pending.len(), 1, "kept in the store");
    assert_eq!(pending[0].query.resource, sg);
    // A restart: a new worker state reads it back and asks again; still not shown.
    let mut state = TargetState::default();
    f.clock.advance(Duration::from_secs(5));
    let _ = f.once(&mut state).await;
    assert_eq!(
        f.fake.attributions_asked(),
        asked + 1,
        "asked after the restart"
    );
    // Backoff: the next try is 15 s later.
    f.clock.advance(Duration::from_secs(5));
    let _ = f.once(&mut state).await;
    assert_eq!(f.fake.attributions_asked(), asked + 1, "not due yet");
    // The log now shows the change.
    f.fake.log_change(
        &sg,
        made_at,
        Actor::named(ActorKind::User, "arn:aws:iam::123456789012:user/late"),
    );
    f.clock.advance(Duration::from_secs(15));
    let _ = f.once(&mut state).await;
    assert_eq!(f.fake.attributions_asked(), asked + 2);
    let attributed: Vec<_> = f
        .events()
        .into_iter()
        .filter_map(|e| match e {
            EventData::DriftAttributed(a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(attributed.len(), 1, "{attributed:?}");
    assert_eq!(
        attributed[0].actor.id,
        "arn:aws:iam::123456789012:user/late"
    );
    assert!(f.history().pending_attributions(TARGET).unwrap().is_empty());
}

#[tokio::test]
async fn an_event_for_a_target_without_a_worker_is_not_held() {
    use palisade_providers::events::EventQueue;
    use palisade_providers::fake::FakeQueue;
    let f = fixture(RunSettings::default());
    f.shared
        .enforced
        .send_replace(Some(Arc::new(enforced((*f.enforced.set).clone()))));
    let queue = Arc::new(FakeQueue::new(Duration::from_secs(60)));
    let dyn_queue: Arc<dyn EventQueue> = queue.clone();
    queue.send(
        &cloudtrail(
            "123456789012",
            "CreateSecurityGroup",
            "sg-0123456789abcdef0",
            "ops",
            1,
        ),
        T0,
    );
    let m = dyn_queue.receive(Duration::ZERO).await.unwrap().remove(0);
    // No worker has made the target's inbox (not started yet, or the target was
    // removed): nothing would ever consume it, so it is not held; the first reconcile
    // observes everything anyway.
    assert_eq!(
        super::events::route(&f.shared, &dyn_queue, m).await,
        Some("no-revision")
    );
    assert!(f.shared.existing_inbox(TARGET).is_none());
}

#[tokio::test]
async fn an_event_for_two_targets_is_deleted_once_both_recorded() {
    use palisade_providers::events::EventQueue;
    use palisade_providers::fake::FakeQueue;
    let f = fixture(RunSettings::default());
    // A second target in the same account and region (another team's repository).
    let mut set = (*f.enforced.set).clone();
    let mut second = set.target(TARGET).expect("target").clone();
    second.metadata.name.value = "prod-aws-2".into();
    set.targets.push(second);
    f.shared
        .enforced
        .send_replace(Some(Arc::new(enforced(set))));
    let (a, b) = (f.shared.inbox(TARGET), f.shared.inbox("prod-aws-2"));
    let queue = Arc::new(FakeQueue::new(Duration::ZERO));
    let dyn_queue: Arc<dyn EventQueue> = queue.clone();
    queue.send(
        &cloudtrail(
            "123456789012",
            "CreateSecurityGroup",
            "sg-0123456789abcdef0",
            "ops",
            1,
        ),
        T0,
    );
    route_queued(&f.shared, &dyn_queue).await;
    // The first target records its reconcile: the second still owes it.
    super::events::settle(&f.shared, a.take(), true).await;
    assert_eq!((queue.deleted(), queue.len()), (0, 1));
    // The second target's observation no longer knows the group: a redelivery (its
    // visibility ran out) goes to the first target only — and must still wait for the
    // second's waiting delivery, which it joins with the newest receipt.
    b.set_known(&Inventory::default());
    route_queued(&f.shared, &dyn_queue).await;
    let again = a.take();
    assert_eq!(again.len(), 1);
    super::events::settle(&f.shared, again, true).await;
    assert_eq!(queue.deleted(), 0, "the second has not recorded yet");
    let second = b.take();
    assert_eq!(second.len(), 1);
    super::events::settle(&f.shared, second, true).await;
    // The fake queue, like SQS, deletes only with the newest receipt.
    assert_eq!(
        (queue.deleted(), queue.len()),
        (1, 0),
        "deleted once both recorded, with the newest receipt"
    );
}
