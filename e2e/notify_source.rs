//! Notifications end to end: the real binary (`palisade run`, no cloud: `--target none`,
//! so the events are the revisions it enforces), real HTTP receivers on loopback, the
//! history as the outbox — a receiver down, `kill -9` with a backlog, a receiver that
//! keeps answering 500.

mod support;

use palisade::history::{Filter, Store};
use support::{Controller, GitRepo, Receiver};

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

/// The documented signature, computed apart from Palisade: HMAC-SHA256 over "<t>.<body>".
fn verify(sig: &str, key: &[u8], body: &[u8]) -> bool {
    use hmac::Mac as _;
    let Some((t, v1)) = sig.strip_prefix("t=").and_then(|r| r.split_once(",v1=")) else {
        return false;
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes()) == v1
}

fn ids(got: &[support::Received]) -> Vec<i64> {
    got.iter()
        .map(|m| m.header("ce-id").unwrap().parse().unwrap())
        .collect()
}

#[test]
fn notifications_survive_a_receiver_down_and_kill_9_and_arrive_signed_in_order() {
    let repo = GitRepo::with_example();
    let data = tempfile::tempdir().unwrap();
    let r = Receiver::start();
    let file = config(data.path(), r.port, 3);
    // The Slack URL is a secret: it comes from the environment the settings file names.
    let env = [(
        "PALISADE_TEST_SLACK_URL",
        format!("http://127.0.0.1:{}/chat", r.port),
    )];
    let args = [
        "--git-path",
        "policies",
        "--notify-config",
        file.to_str().unwrap(),
    ];
    let c =
        Controller::source_only_with_env(&repo.url(), &args, Some(data.path().to_path_buf()), &env);
    let first = repo.git(&["rev-parse", "HEAD"]);
    c.wait(60, "the first revision delivered", |c| {
        c.enforced().as_deref() == Some(first.as_str()) && r.at("/bus", true).len() == 1
    });
    // The receiver goes down (connections closed unanswered): not held against the
    // messages however long it lasts (maxAttempts is 3 here).
    r.set_status(0);
    // Two more revisions, each enforced (one poll could otherwise see only the last).
    for n in ["second", "third"] {
        let commit = repo.commit(&format!("{n} revision"), &[]);
        c.wait(60, "enforced", |c| {
            c.enforced().as_deref() == Some(commit.as_str())
        });
    }
    c.wait(30, "attempts fail and the backlog shows both", |c| {
        c.metric("palisade_notifications_failed_total{sink=\"bus\"}") >= 4.0
            && c.metric("palisade_notifications_backlog{sink=\"bus\"}") >= 2.0
    });
    assert_eq!(
        c.metric("palisade_notifications_dead_lettered_total{sink=\"bus\"}"),
        0.0,
        "an outage is not a refusal"
    );
    assert!(c.status()["notifications"]["bus"]["lastError"].is_string());
    let logs = c.logs();
    assert!(
        !logs.contains("/chat"),
        "the chat webhook's URL (a secret) is never logged"
    );
    // kill -9 with the backlog.
    c.kill_9();

    // The receiver comes back; the controller restarts on the same data directory.
    r.set_status(200);
    let c =
        Controller::source_only_with_env(&repo.url(), &args, Some(data.path().to_path_buf()), &env);
    let db = data.path().join("history.db");
    c.wait(60, "every revision-enforced event delivered", |_| {
        let want = enforced_ids(&db);
        want.len() >= 3 && ids(&r.at("/bus", true)).ends_with(&want[want.len() - 1..])
    });
    let want = enforced_ids(&db);
    let bus = r.at("/bus", true);
    assert_eq!(
        ids(&bus),
        want,
        "each once, in order, the history's ids (the first not again)"
    );
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
        assert!(
            verify(
                m.header("palisade-signature").expect("signed"),
                b"hmac-key",
                &m.body
            ),
            "HMAC verifies"
        );
        let body: serde_json::Value = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(body["event"]["kind"], "revision-enforced");
        assert_eq!(body["eventIds"][0].to_string(), m.header("ce-id").unwrap());
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
    let (_, page) = c.http("GET", "/", &[], "");
    assert!(
        page.contains("id=\"notifications\"") && page.contains("HTTP 500"),
        "the status page shows the sink and its last error"
    );
    // The sink moved on: the next event is delivered once the receiver is fine.
    r.set_status(200);
    let next = repo.commit("after the outage", &[]);
    c.wait(60, "next delivered", |c| {
        c.enforced().as_deref() == Some(next.as_str()) && !r.at("/bus", true).is_empty()
    });
    drop(c);
    let want = enforced_ids(&data.path().join("history.db"));
    assert_eq!(
        ids(&r.at("/bus", true)),
        want[1..],
        "the next event, not the dead one again"
    );
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
