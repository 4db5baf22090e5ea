//! Notifications end to end: the real binary (`palisade run`, no cloud: `--target none`,
//! so the events are the revisions it enforces), real HTTP receivers on loopback, the
//! history as the outbox — a receiver down, `kill -9` with a backlog, a receiver that
//! keeps answering 500.

mod support;

use std::process::Command;

use palisade::history::{Filter, Store};
use support::{Controller, GitRepo, Receiver, free_port};

fn config(dir: &std::path::Path, port: u16, attempts: u32) -> std::path::PathBuf {
    let secret = dir.join("ce-secret");
    std::fs::write(&secret, "hmac-key\n").unwrap();
    let file = dir.join("notify.yaml");
    std::fs::write(
        &file,
        format!(
            "sinks:\n  - name: bus\n    cloudEvents: {{ url: 'http://127.0.0.1:{port}/bus', secret: {{ file: '{}' }} }}\n    maxAttempts: {attempts}\n    backoffMs: 100\n  - name: chat\n    slack: {{ url: {{ env: PALISADE_TEST_SLACK_URL }} }}\n    maxAttempts: {attempts}\n    backoffMs: 100\n",
            secret.display()
        ),
    )
    .unwrap();
    file
}

fn enforced_ids(db: &std::path::Path) -> Vec<i64> {
    Store::open_read_only(db)
        .unwrap()
        .events(&Filter {
            kinds: vec!["revision-enforced".into()],
            ..Default::default()
        })
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect()
}

#[test]
fn notifications_survive_a_receiver_down_and_kill_9_and_arrive_signed_in_order() {
    let repo = GitRepo::with_example();
    let data = tempfile::tempdir().unwrap();
    let port = free_port(); // nothing listens yet: the receiver is down
    let file = config(data.path(), port, 100);
    // The Slack URL is a secret: it comes from the environment the settings file names.
    let cmd_env = [(
        "PALISADE_TEST_SLACK_URL",
        format!("http://127.0.0.1:{port}/chat"),
    )];
    let c = Controller::source_only_with_env(
        &repo.url(),
        &[
            "--git-path",
            "policies",
            "--notify-config",
            file.to_str().unwrap(),
        ],
        Some(data.path().to_path_buf()),
        &cmd_env,
    );
    let first = repo.git(&["rev-parse", "HEAD"]);
    c.wait(60, "enforced", |c| {
        c.enforced().as_deref() == Some(first.as_str())
    });
    let second = repo.commit("second revision", &[]);
    c.wait(60, "second enforced", |c| {
        c.enforced().as_deref() == Some(second.as_str())
    });
    c.wait(30, "delivery attempts failed and the backlog shows", |c| {
        c.metric("palisade_notifications_failed_total{sink=\"bus\"}") >= 1.0
            && c.metric("palisade_notifications_backlog{sink=\"bus\"}") >= 1.0
    });
    let s = c.status();
    assert!(s["notifications"]["bus"]["lastError"].is_string(), "{s}");
    // kill -9 with the backlog.
    let pid = c.child.borrow().id();
    assert!(
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let _ = c.child.borrow_mut().wait();
    drop(c);

    // The receiver comes up; the controller restarts on the same data directory.
    let r = Receiver::start_on(port);
    let c = Controller::source_only_with_env(
        &repo.url(),
        &[
            "--git-path",
            "policies",
            "--notify-config",
            file.to_str().unwrap(),
        ],
        Some(data.path().to_path_buf()),
        &cmd_env,
    );
    let db = data.path().join("history.db");
    c.wait(60, "every revision-enforced event delivered", |_| {
        let want = enforced_ids(&db);
        want.len() >= 2 && r.at("/bus", true).len() >= want.len()
    });
    let want = enforced_ids(&db);
    let bus = r.at("/bus", true);
    let ids: Vec<i64> = bus
        .iter()
        .map(|m| m.header("ce-id").unwrap().parse().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "in order, each once");
    assert_eq!(ids, want, "the ids are the history's");
    for m in &bus {
        assert_eq!(m.header("ce-specversion"), Some("1.0"));
        assert_eq!(m.header("ce-type"), Some("dev.palisade.revision.enforced"));
        assert!(m.header("ce-source").unwrap().starts_with("/palisade/"));
        assert!(
            m.header("ce-time")
                .unwrap()
                .parse::<jiff::Timestamp>()
                .is_ok()
        );
        let sig = m.header("palisade-signature").expect("signed");
        let t: u64 = sig.split(',').next().unwrap()[2..].parse().unwrap();
        assert_eq!(
            sig,
            palisade::notify::render::signature(b"hmac-key", t, &m.body),
            "HMAC verifies"
        );
        let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(body["event"]["kind"], "revision-enforced");
    }
    c.wait(30, "chat delivered too", |_| {
        r.at("/chat", true).len() >= want.len()
    });
    let chat: serde_json::Value = serde_json::from_slice(&r.at("/chat", true)[0].body).unwrap();
    assert!(
        chat["text"].as_str().unwrap().contains("revision.enforced"),
        "{chat}"
    );
    c.wait(10, "backlog drained", |c| {
        c.metric("palisade_notifications_backlog{sink=\"bus\"}") == 0.0
    });
}

#[test]
fn a_receiver_answering_500_forever_is_dead_lettered_after_n_attempts() {
    let repo = GitRepo::with_example();
    let data = tempfile::tempdir().unwrap();
    let r = Receiver::start();
    r.set_status(500);
    let file = config(data.path(), r.port, 3);
    let env = [(
        "PALISADE_TEST_SLACK_URL",
        format!("http://127.0.0.1:{}/chat", r.port),
    )];
    let c = Controller::source_only_with_env(
        &repo.url(),
        &[
            "--git-path",
            "policies",
            "--notify-config",
            file.to_str().unwrap(),
        ],
        Some(data.path().to_path_buf()),
        &env,
    );
    c.wait(60, "dead-lettered", |c| {
        c.metric("palisade_notifications_dead_lettered_total{sink=\"bus\"}") == 1.0
    });
    let attempts = r.at("/bus", false);
    assert_eq!(attempts.len(), 3, "exactly maxAttempts");
    assert!(
        attempts
            .iter()
            .all(|a| a.header("ce-id") == attempts[0].header("ce-id"))
    );
    assert_eq!(c.status()["notifications"]["bus"]["deadLettered"], 1);
    // The sink moved on: the next event is delivered once the receiver is fine.
    r.set_status(200);
    let next = repo.commit("after the outage", &[]);
    c.wait(60, "next delivered", |c| {
        c.enforced().as_deref() == Some(next.as_str()) && !r.at("/bus", true).is_empty()
    });
    drop(c);
    let letters = palisade::notify::outbox::Outbox::dead_letters(
        &Store::open_read_only(&data.path().join("history.db")).unwrap(),
        "bus",
    )
    .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (letters[0].attempts, letters[0].error.as_str()),
        (3, "HTTP 500")
    );
}
