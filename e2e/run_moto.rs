//! `palisade run` end to end: the real binary following a real Git repository (a bare
//! repository over file://), enforcing on moto, with its HTTP server.

mod support;

use palisade::history::{ChangeStatus, EventData};
use serde_json::{Value, json};
use support::{Controller, GitRepo, Moto, text};

/// Whether a live plan of prod-aws (the real binary, read-only) has nothing to do.
fn converged(moto: &Moto, repo: &GitRepo) -> bool {
    let out = moto
        .palisade()
        .args([
            "plan",
            "--target",
            "prod-aws",
            "--detailed-exitcode",
            "--policies",
        ])
        .arg(repo.work().join("policies"))
        .output()
        .unwrap();
    out.status.code() == Some(0)
}

fn group(moto: &Moto, name: &str) -> Option<Value> {
    let out = moto.call(
        "ec2",
        "describe_security_groups",
        json!({ "Filters": [{ "Name": "group-name", "Values": [name] }] }),
    );
    out["SecurityGroups"]
        .as_array()
        .and_then(|g| g.first().cloned())
}

fn ingress_ports(moto: &Moto, group_id: &str) -> Vec<i64> {
    let out = moto.call(
        "ec2",
        "describe_security_group_rules",
        json!({ "Filters": [{ "Name": "group-id", "Values": [group_id] }] }),
    );
    let mut ports: Vec<i64> = out["SecurityGroupRules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["IsEgress"] == false)
        .filter_map(|r| r["FromPort"].as_i64())
        .collect();
    ports.sort();
    ports
}

#[test]
fn enforces_pushes_reverts_drift_and_keeps_the_last_good_revision() {
    let Some(moto) = Moto::start() else { return };
    moto.seed(60);
    let repo = GitRepo::with_example();
    let first = repo.git(&["rev-parse", "HEAD"]);
    let c = Controller::start(&moto, &repo, &[]);
    c.wait(120, "first revision enforced and reconciled", |c| {
        c.ready_at(&first)
    });
    assert_eq!(c.http("GET", "/readyz", &[], "").0, 200);
    assert_eq!(c.http("GET", "/healthz", &[], "").0, 200);
    assert!(
        converged(&moto, &repo),
        "the first reconcile converged the estate"
    );
    let api = group(&moto, "palisade-payments-api").expect("managed group created");
    let api_id = api["GroupId"].as_str().unwrap().to_string();
    assert_eq!(ingress_ports(&moto, &api_id), vec![8443]);

    // A pushed commit is enforced without a restart.
    repo.edit(
        "policies/aws/payments.yaml",
        "ports: [ tcp/8443 ]",
        "ports: [ tcp/9443 ]",
    );
    let second = repo.commit("payments-api: edge moves to 9443", &[]);
    c.wait(60, "second revision enforced", |c| c.ready_at(&second));
    assert_eq!(ingress_ports(&moto, &api_id), vec![9443]);

    // Out-of-band drift is reverted within a resync or two.
    moto.call("ec2", "authorize_security_group_ingress", json!({
        "GroupId": api_id,
        "IpPermissions": [{ "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{ "CidrIp": "0.0.0.0/0" }] }]
    }));
    moto.call("lambda", "update_function_configuration", json!({
        "FunctionName": "payments-api-0000", "VpcConfig": { "SubnetIds": [], "SecurityGroupIds": [] }
    }));
    let endpoints = moto.call("ec2", "describe_vpc_endpoints", json!({}));
    let interface = endpoints["VpcEndpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["VpcEndpointType"] == "Interface" && e["State"] != "deleted")
        .unwrap()["VpcEndpointId"]
        .clone();
    moto.call(
        "ec2",
        "delete_vpc_endpoints",
        json!({ "VpcEndpointIds": [interface] }),
    );
    // (Not asserted "not converged" here: with a 2 s resync the controller may already
    // have put it back; the drift metrics below prove it saw and reverted it.)
    c.wait(60, "drift reverted", |_| converged(&moto, &repo));
    assert_eq!(ingress_ports(&moto, &api_id), vec![9443]);
    c.wait(10, "drift metrics", |c| {
        c.metric("palisade_drift_reverted_total") >= 3.0
    });

    // An invalid revision is rejected; the previous one stays enforced.
    std::fs::write(
        repo.work().join("policies/aws/broken.yaml"),
        "apiVersion: palisade.dev/v1alpha1\nkind: FunctionPolicy\nmetadata: { name: broken }\nspec:\n  target: prod-aws\n  functions: { names: [x] }\n  egres: []\n",
    )
    .unwrap();
    let bad = repo.commit("a typo", &[]);
    c.wait(30, "bad revision rejected", |c| {
        c.status()["rejected"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["commit"] == bad.as_str()))
    });
    let s = c.status();
    let rejection = s["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["commit"] == bad.as_str())
        .unwrap();
    assert_eq!(rejection["reason"], "invalid");
    let details = rejection["details"].to_string();
    assert!(details.contains("aws/broken.yaml:7"), "{details}");
    assert_eq!(
        s["revision"]["commit"],
        second.as_str(),
        "the last good revision stays"
    );
    assert_eq!(
        c.http("GET", "/readyz", &[], "").0,
        200,
        "still ready on the enforced revision"
    );
    assert!(c.metric("palisade_revisions_rejected_total{reason=\"invalid\"}") >= 1.0);
    let (_, metrics) = c.http("GET", "/metrics", &[], "");
    assert!(
        metrics.contains(&format!(
            "palisade_enforced_revision_info{{revision=\"{second}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("palisade_cloud_api_calls_total{service=\"ec2\",operation=\"DescribeSecurityGroups\",outcome=\"ok\"}"));
    let (code, page) = c.http("GET", "/", &[], "");
    assert_eq!(code, 200);
    assert!(
        page.contains(&bad) && page.contains("invalid"),
        "the status page lists the rejection"
    );

    // Emptying the policy path deletes nothing.
    repo.git(&["rm", "-r", "-q", "policies"]);
    let empty = repo.commit("remove every policy", &[]);
    c.wait(30, "empty revision rejected", |c| {
        c.status()["rejected"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["commit"] == empty.as_str() && r["reason"] == "path-missing")
        })
    });
    // Let several resyncs pass: the managed groups are all still there.
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert!(group(&moto, "palisade-payments-api").is_some());
    assert!(group(&moto, "palisade-payments-db").is_some());
    assert_eq!(c.enforced().as_deref(), Some(second.as_str()));
}

#[test]
fn webhooks_fetch_at_once_and_bad_signatures_trigger_nothing() {
    let Some(moto) = Moto::start() else { return };
    moto.seed(8);
    let repo = GitRepo::with_example();
    let first = repo.git(&["rev-parse", "HEAD"]);
    // Polling every hour: only a webhook can bring the next commit in.
    let c = Controller::start(&moto, &repo, &["--poll-interval", "1h"]);
    c.wait(120, "first revision", |c| c.ready_at(&first));
    repo.edit(
        "policies/aws/payments.yaml",
        "ports: [ tcp/8443 ]",
        "ports: [ tcp/8444 ]",
    );
    let second = repo.commit("8444", &[]);
    let body = r#"{"ref":"refs/heads/main"}"#;

    let bad = [
        (
            "X-Hub-Signature-256",
            "sha256=0000000000000000000000000000000000000000000000000000000000000000",
        ),
        ("X-GitHub-Event", "push"),
    ];
    assert_eq!(c.http("POST", "/webhook/github", &bad, body).0, 401);
    assert_eq!(
        c.http("POST", "/webhook/github", &[], body).0,
        401,
        "missing signature"
    );
    assert_eq!(
        c.http(
            "POST",
            "/webhook/gitlab",
            &[("X-Gitlab-Token", "wrong")],
            body
        )
        .0,
        401
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(
        c.status()["fetched"],
        first.as_str(),
        "a refused webhook fetched nothing"
    );

    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cr3t").unwrap();
    mac.update(body.as_bytes());
    let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    let good = [
        ("X-Hub-Signature-256", sig.as_str()),
        ("X-GitHub-Event", "push"),
    ];
    assert_eq!(c.http("POST", "/webhook/github", &good, body).0, 202);
    c.wait(60, "webhook-triggered revision", |c| c.ready_at(&second));

    repo.edit(
        "policies/aws/payments.yaml",
        "ports: [ tcp/8444 ]",
        "ports: [ tcp/8445 ]",
    );
    let third = repo.commit("8445", &[]);
    assert_eq!(
        c.http(
            "POST",
            "/webhook/gitlab",
            &[("X-Gitlab-Token", "t0ken"), ("X-Gitlab-Event", "Push Hook")],
            body
        )
        .0,
        202
    );
    c.wait(60, "GitLab-triggered revision", |c| c.ready_at(&third));
}

#[test]
fn with_signatures_required_only_signed_commits_are_enforced() {
    let Some(moto) = Moto::start() else { return };
    moto.seed(8);
    let (repo, signers) = GitRepo::with_signing();
    let signed = repo.commit("signed", &["-S"]);

    let c = Controller::start(
        &moto,
        &repo,
        &["--allowed-signers", signers.to_str().unwrap()],
    );
    c.wait(120, "signed revision enforced", |c| c.ready_at(&signed));
    assert_eq!(c.status()["revision"]["signature"]["status"], "verified");

    repo.edit(
        "policies/aws/payments.yaml",
        "ports: [ tcp/8443 ]",
        "ports: [ tcp/7443 ]",
    );
    let unsigned = repo.commit("unsigned change", &["--no-gpg-sign"]);
    c.wait(30, "unsigned revision rejected", |c| {
        c.status()["rejected"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["commit"] == unsigned.as_str() && r["reason"] == "unsigned")
        })
    });
    assert_eq!(c.enforced().as_deref(), Some(signed.as_str()));

    let signed_again = repo.commit("signed change", &["-S"]);
    c.wait(60, "signed revision enforced", |c| {
        c.ready_at(&signed_again)
    });
}

/// A reconcile that reaches its deadline stops between two changes, never inside one:
/// it reports the timeout with what is left, and the next reconciles carry on until the
/// target converges — nothing half-done, nothing applied twice.
#[test]
fn a_reconcile_deadline_stops_between_changes_and_the_next_one_carries_on() {
    let Some(moto) = Moto::start() else { return };
    moto.seed(40);
    let repo = GitRepo::with_example();
    let head = repo.git(&["rev-parse", "HEAD"]);
    let c = Controller::start(
        &moto,
        &repo,
        &[
            "--reconcile-timeout",
            "2s",
            "--aws-rate-limits",
            "lambda-write=2/1",
        ],
    );
    c.wait(90, "a reconcile stopped at its deadline", |c| {
        let last = &c.status()["targets"]["prod-aws"]["lastReconcile"];
        last["result"] == "timeout"
            && last["error"]
                .as_str()
                .is_some_and(|e| e.contains("between changes"))
    });
    c.wait(240, "converged by the following reconciles", |c| {
        c.ready_at(&head)
    });
    assert!(converged(&moto, &repo));
    // No change was cut in the middle: none failed, and none ran twice.
    let store = palisade::history::Store::open(&moto.state.path().join("history.db")).unwrap();
    let events = store.events(&palisade::history::Filter::default()).unwrap();
    let failed = events
        .iter()
        .filter(|e| e.event.kind() == "change-failed")
        .count();
    assert_eq!(failed, 0, "{}", c.logs());
    let mut applied = std::collections::BTreeSet::new();
    for e in &events {
        let Some(EventData::ChangeApplied(c)) = e.event.data() else {
            continue;
        };
        if c.status == ChangeStatus::Applied {
            let key = format!("{} {}", c.action, c.resource);
            if c.action == "setPlacement" {
                assert!(applied.insert(key.clone()), "applied twice: {key}");
            }
        }
    }
    assert!(!applied.is_empty());
}

#[test]
fn sigterm_mid_reconcile_exits_cleanly_and_a_restart_finishes_the_job() {
    let Some(moto) = Moto::start() else { return };
    moto.seed(200);
    let repo = GitRepo::with_example();
    let head = repo.git(&["rev-parse", "HEAD"]);
    let plan = moto
        .palisade()
        .args([
            "plan",
            "--target",
            "prod-aws",
            "--format",
            "json",
            "--policies",
        ])
        .arg(repo.work().join("policies"))
        .output()
        .unwrap();
    let total = support::json(&plan)["changes"].as_array().unwrap().len();
    assert!(total > 100, "{}", text(&plan));

    // Slow Lambda writes so that the reconcile is surely in flight when SIGTERM comes.
    let mut c = Controller::start(&moto, &repo, &["--aws-rate-limits", "lambda-write=10/1"]);
    c.wait(60, "the first reconcile is writing", |_| {
        group(&moto, "palisade-payments-api").is_some()
    });
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(c.terminate(), Some(0), "exit 0 on SIGTERM\n{}", c.logs());
    let logs = c.logs();
    assert!(
        logs.contains("finishing in-flight work") && logs.contains("stopped cleanly"),
        "{logs}"
    );
    drop(c);

    let after_stop = moto
        .palisade()
        .args([
            "plan",
            "--target",
            "prod-aws",
            "--format",
            "json",
            "--policies",
        ])
        .arg(repo.work().join("policies"))
        .output()
        .unwrap();
    let left = support::json(&after_stop)["changes"]
        .as_array()
        .unwrap()
        .len();
    assert!(
        left > 0 && left < total,
        "stopped mid-way: {left} of {total} changes left"
    );

    // Restart (no periodic resync to blur the count): it applies exactly what was left.
    let c = Controller::start(&moto, &repo, &["--resync", "1h"]);
    c.wait(120, "converged after restart", |c| c.ready_at(&head));
    assert!(converged(&moto, &repo));
    let applied = c.status()["targets"]["prod-aws"]["lastReconcile"]["applied"]
        .as_u64()
        .unwrap() as usize;
    assert_eq!(applied, left, "nothing applied twice");
}

/// End to end: the source loop spaces webhook fetches (and the reconcile kicks that
/// follow an unchanged commit) by --webhook-min-interval, so a burst of deliveries
/// reconciles each target once per interval.
#[test]
fn a_burst_of_webhooks_reconciles_each_target_once_per_interval() {
    let Some(moto) = Moto::start() else { return };
    moto.seed(8);
    let repo = GitRepo::with_example();
    let first = repo.git(&["rev-parse", "HEAD"]);
    let c = Controller::start(
        &moto,
        &repo,
        &[
            "--poll-interval",
            "1h",
            "--resync",
            "1h",
            "--webhook-min-interval",
            "5s",
        ],
    );
    c.wait(120, "first revision", |c| c.ready_at(&first));
    let kicked = |c: &Controller| {
        c.metric("palisade_reconcile_triggers_total{target=\"prod-aws\",trigger=\"webhook\"}")
    };
    for i in 0..100 {
        assert_eq!(c.github_push(&format!("a-{i}"), "refs/heads/main"), 202);
    }
    c.wait(10, "one webhook reconcile", |c| kicked(c) == 1.0);
    std::thread::sleep(std::time::Duration::from_secs(2));
    for i in 0..100 {
        assert_eq!(c.github_push(&format!("b-{i}"), "refs/heads/main"), 202);
    }
    // The second burst came within the interval: one more reconcile, when it allows.
    c.wait(15, "the second burst's reconcile", |c| kicked(c) == 2.0);
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert_eq!(kicked(&c), 2.0, "bursts coalesced");
    assert_eq!(
        c.metric("palisade_source_fetches_total{trigger=\"webhook\"}"),
        2.0,
        "one fetch per burst"
    );
}

/// A revision that moves a target to another account gets its caller identity verified
/// again before any call: the session is not carried over by the target's name.
#[test]
fn a_changed_account_is_verified_again_and_refused_before_any_write() {
    let Some(moto) = Moto::start() else { return };
    moto.seed(8);
    let repo = GitRepo::with_example();
    let first = repo.git(&["rev-parse", "HEAD"]);
    let c = Controller::start(&moto, &repo, &[]);
    c.wait(120, "first revision", |c| c.ready_at(&first));
    let writes = |c: &Controller| {
        let (_, body) = c.http("GET", "/metrics", &[], "");
        body.lines()
            .filter(|l| l.starts_with("palisade_cloud_api_calls_total"))
            .filter(|l| {
                [
                    "Authorize",
                    "Revoke",
                    "Create",
                    "Delete",
                    "Update",
                    "Modify",
                ]
                .iter()
                .any(|w| l.contains(&format!("operation=\"{w}")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let before = writes(&c);
    repo.edit(
        "policies/targets/targets.yaml",
        "accountId: \"123456789012\"",
        "accountId: \"210987654321\"",
    );
    let moved = repo.commit("prod-aws is another account now", &[]);
    c.wait(60, "the new account refused", |c| {
        let s = c.status();
        s["revision"]["commit"] == moved.as_str()
            && s["targets"]["prod-aws"]["lastReconcile"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("210987654321") && e.contains("refusing"))
    });
    assert_eq!(writes(&c), before, "nothing written with the old session");
    // A failing target is a per-target matter: the pod stays ready (webhooks keep
    // reaching it), the target is unhealthy in the status and the metrics.
    assert_eq!(c.http("GET", "/readyz", &[], "").0, 200);
    let s = c.status();
    assert_eq!(s["converged"], false);
    assert_eq!(s["targets"]["prod-aws"]["healthy"], false);
    assert_eq!(
        c.metric("palisade_target_healthy{target=\"prod-aws\"}"),
        0.0
    );

    // The target removed from the source (its Target and its policies): its worker
    // stops, nothing more is tried there, and it leaves the status.
    std::fs::remove_dir_all(repo.work().join("policies/aws")).unwrap();
    let targets = repo.work().join("policies/targets/targets.yaml");
    let text = std::fs::read_to_string(&targets).unwrap();
    let azure_only = text.split("\n---\n").nth(1).unwrap().to_string();
    std::fs::write(&targets, azure_only).unwrap();
    let removed = repo.commit("prod-aws moves to another controller", &[]);
    c.wait(60, "the target left the status", |c| {
        let s = c.status();
        s["revision"]["commit"] == removed.as_str() && s["targets"].get("prod-aws").is_none()
    });
    assert!(c.logs().contains("no longer defines this target"));
    assert_eq!(c.http("GET", "/readyz", &[], "").0, 200);
}

/// The loop's state is durable: drift made while the controller is down is reported
/// and reverted as drift after the restart (not taken for an intended change), because
/// the previous desired state comes from the store.
#[test]
fn drift_made_while_the_controller_is_down_is_drift_after_restart() {
    let Some(moto) = Moto::start() else { return };
    moto.seed(24);
    let repo = GitRepo::with_example();
    let head = repo.git(&["rev-parse", "HEAD"]);
    let mut c = Controller::start(&moto, &repo, &["--resync", "1h"]);
    c.wait(120, "converged", |c| c.ready_at(&head));
    assert_eq!(c.terminate(), Some(0));
    drop(c);

    let api = group(&moto, "palisade-payments-api").unwrap();
    let id = api["GroupId"].as_str().unwrap();
    moto.call("ec2", "authorize_security_group_ingress", json!({
        "GroupId": id,
        "IpPermissions": [{ "IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{ "CidrIp": "0.0.0.0/0" }] }]
    }));

    let c = Controller::start(&moto, &repo, &["--resync", "1h"]);
    c.wait(120, "reverted after restart", |_| {
        !ingress_ports(&moto, id).contains(&22)
    });
    // The evidence is written once the reconcile (and its audit-log lookup) is done.
    let drift_events = || -> Vec<_> {
        palisade::history::Store::open(&moto.state.path().join("history.db"))
            .unwrap()
            .events(&palisade::history::Filter::default())
            .unwrap()
            .into_iter()
            .filter(|e| e.event.kind() == "drift-detected")
            .collect()
    };
    c.wait(30, "the drift recorded", |_| !drift_events().is_empty());
    let drift = drift_events();
    assert!(
        drift.iter().any(|e| e
            .event
            .resource
            .as_deref()
            .is_some_and(|r| r.contains("payments-api"))),
        "the revert is recorded as drift: {drift:?}\n{}",
        c.logs()
    );
}
