use super::*;
use crate::addr::ResourceAddr;
use crate::check::Finding;
use crate::history::{ChangeRecord, DriftDetected, NewEvent, RevisionEnforced};

fn sink(kind: SinkKind) -> Sink {
    Sink {
        config: SinkConfig {
            name: "t".into(),
            cloud_events: None,
            slack: None,
            events: Vec::new(),
            targets: Vec::new(),
            min_severity: Severity::Info,
            aggregate_seconds: Some(10),
            max_attempts: 3,
            backoff_ms: 10,
        },
        url: "http://127.0.0.1:9/".into(),
        kind,
        secret: None,
    }
}

fn at(id: i64, at: i64, e: NewEvent) -> Event {
    Event { id, at, event: e }
}

fn finding(resource: &str) -> Finding {
    Finding {
        kind: FindingKind::GuardrailViolation,
        target: "prod-aws".into(),
        resource: ResourceAddr::group(resource),
        message: "rule allows ingress tcp/22 from 0.0.0.0/0".into(),
        guardrail: Some("no-world-ingress".into()),
        controls: vec!["CIS-AWS-5.2".into()],
        location: None,
    }
}

fn drift(id: i64, t: i64, group: &str) -> Event {
    at(
        id,
        t,
        NewEvent::new(EventData::DriftDetected(DriftDetected {
            change: "added out of band: ingress tcp/22 from 0.0.0.0/0".into(),
            actor: Some(Box::new(palisade_providers::Actor::named(
                palisade_providers::ActorKind::User,
                "arn:aws:iam::123456789012:user/mallory",
            ))),
            correction: None,
        }))
        .target("prod-aws")
        .revision(Some("0a1b2c3d4e5f60718293"))
        .resource(&ResourceAddr::group(group)),
    )
}

fn revert(id: i64, t: i64, group: &str) -> Event {
    let resource = ResourceAddr::group(group).with_id("sg-0123");
    at(
        id,
        t,
        NewEvent::new(EventData::ChangeApplied(ChangeRecord {
            resource: resource.clone(),
            cause: Cause::Drift,
            action: "removeRules".into(),
            status: ChangeStatus::Applied,
            request_ids: vec!["req-1".into()],
            detail: None,
        }))
        .target("prod-aws")
        .revision(Some("0a1b2c3d4e5f60718293"))
        .resource(&resource),
    )
}

#[test]
fn a_burst_of_a_thousand_identical_findings_is_one_message() {
    let events: Vec<Event> = (0..1000)
        .map(|i| {
            let f = finding(&format!("sg-{i:04}"));
            at(
                i + 1,
                1_000 + i,
                NewEvent::new(EventData::FindingOpened(f.clone()))
                    .target("prod-aws")
                    .resource(&f.resource),
            )
        })
        .collect();
    let m = messages(&sink(SinkKind::CloudEvents(ContentMode::Binary)), &events);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].count(), 1000);
    assert_eq!(m[0].event_ids[0], 1, "the message id is the first event's");
    assert_eq!(m[0].resources.len(), LISTED);
    assert_eq!(m[0].subject, None, "about many resources");
    assert!(m[0].text.contains("×1000"), "{}", m[0].text);
    // Outside the window they are two messages.
    let mut late = events[..2].to_vec();
    late[1].at += 11_000;
    assert_eq!(messages(&sink(SinkKind::Slack), &late).len(), 2);
}

#[test]
fn routing_by_type_target_and_severity() {
    let events = vec![drift(1, 1, "payments-api"), revert(2, 2, "payments-api")];
    let mut s = sink(SinkKind::CloudEvents(ContentMode::Binary));
    assert_eq!(messages(&s, &events).len(), 2, "CloudEvents keeps both");
    s.config.min_severity = Severity::Warning;
    let m = messages(&s, &events);
    assert_eq!(
        m.iter().map(|m| m.ty).collect::<Vec<_>>(),
        ["drift.detected"]
    );
    s.config.min_severity = Severity::Info;
    s.config.events = vec!["dev.palisade.drift.reverted".into()];
    assert_eq!(messages(&s, &events)[0].ty, "drift.reverted");
    s.config.events.clear();
    s.config.targets = vec!["prod-azure".into()];
    assert!(messages(&s, &events).is_empty());
}

#[test]
fn on_chat_a_drift_and_its_revert_are_one_message_matching_the_golden_payload() {
    let events = vec![drift(41, 1, "payments-api"), revert(42, 2, "payments-api")];
    let m = messages(&sink(SinkKind::Slack), &events);
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].event_ids, [41, 42]);
    let got = serde_json::to_string_pretty(&render::slack(&m[0])).unwrap() + "\n";
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/slack-drift-reverted.json");
    if std::env::var_os("PALISADE_BLESS").is_some() {
        std::fs::write(&golden, &got).unwrap();
    }
    assert_eq!(got, std::fs::read_to_string(&golden).unwrap());
    // Slack's control characters in cloud names are escaped.
    let mut hostile = drift(1, 1, "<!channel> & co");
    hostile.event.resource = Some("group <!channel> & co".into());
    let text = render::slack(&messages(&sink(SinkKind::Slack), &[hostile])[0]).to_string();
    assert!(
        text.contains("&lt;!channel&gt; &amp; co") && !text.contains("<!channel>"),
        "{text}"
    );
}

/// The CloudEvents 1.0 HTTP binding, checked as the spec says: required attributes,
/// `specversion` 1.0, extension names lower-case alphanumeric, printable ASCII header
/// values, RFC 3339 `time`.
#[test]
fn cloud_events_follow_the_http_binding_in_both_modes_and_are_signed() {
    let m = &messages(
        &sink(SinkKind::CloudEvents(ContentMode::Binary)),
        &[drift(7, 1_772_323_200_000, "pay\u{e9}ments")],
    )[0];
    let mut s = sink(SinkKind::CloudEvents(ContentMode::Binary));
    s.secret = Some(b"k3y".to_vec());
    let r = render::request(&s, m, "inst-1");
    let h = |k: &str| {
        r.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k}: {:?}", r.headers))
    };
    assert_eq!(h("ce-specversion"), "1.0");
    assert_eq!(h("ce-id"), "7");
    assert_eq!(h("ce-type"), "dev.palisade.drift.detected");
    assert_eq!(h("ce-source"), "/palisade/inst-1/prod-aws");
    assert_eq!(h("ce-time"), "2026-03-01T00:00:00Z");
    assert_eq!(
        h("ce-subject"),
        "group%20pay%C3%A9ments",
        "space and UTF-8 percent-encoded"
    );
    for (name, value) in &r.headers {
        if let Some(attr) = name.strip_prefix("ce-") {
            assert!(
                attr.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                    && attr.len() <= 20,
                "{attr}"
            );
        }
        if name.starts_with("ce-") {
            assert!(
                value
                    .bytes()
                    .all(|b| (0x21..0x7f).contains(&b) && b != b'"'),
                "{name}: {value}"
            );
        }
    }
    let data: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(data["event"]["kind"], "drift-detected");
    assert_eq!(
        data["event"]["data"]["actor"]["id"],
        "arn:aws:iam::123456789012:user/mallory"
    );
    assert_eq!(data["eventIds"][0], 7);
    assert!(
        r.headers.iter().all(|(n, _)| n != "palisade-signature"),
        "signed per attempt, not here"
    );
    // The documented scheme, computed apart from the code: HMAC-SHA256 over "<t>.<body>".
    use hmac::Mac as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"k3y").unwrap();
    mac.update(b"1700000000.");
    mac.update(&r.body);
    assert_eq!(
        render::signature(b"k3y", 1_700_000_000, &r.body),
        format!(
            "t=1700000000,v1={}",
            hex::encode(mac.finalize().into_bytes())
        )
    );

    let s = sink(SinkKind::CloudEvents(ContentMode::Structured));
    let r = render::request(&s, m, "inst-1");
    assert_eq!(
        r.headers,
        [(
            "content-type".to_string(),
            "application/cloudevents+json".to_string()
        )]
    );
    let doc: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    for attr in ["id", "source", "specversion", "type"] {
        assert!(doc[attr].is_string(), "required {attr}");
    }
    assert_eq!(doc["subject"], "group pay\u{e9}ments");
    assert!(
        doc["time"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok()
    );
}

#[test]
fn revisions_and_unrelated_events_map_as_documented() {
    let enforced = at(
        3,
        1,
        NewEvent::new(EventData::RevisionEnforced(
            serde_json::from_value::<RevisionEnforced>(serde_json::json!({ "author": "A" }))
                .unwrap(),
        ))
        .revision(Some("c1")),
    );
    let m = message(&enforced).unwrap();
    assert_eq!((m.ty, m.severity), ("revision.enforced", Severity::Info));
    let reconciled = at(
        4,
        1,
        NewEvent::new(
            serde_json::from_value(serde_json::json!({ "kind": "reconciled", "data": { "result": "ok", "changes": 0 } }))
                .unwrap(),
        ),
    );
    assert!(message(&reconciled).is_none(), "not notified");
}

#[test]
fn the_settings_file_is_checked_whole() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cr3t\n").unwrap();
    let file = dir.path().join("notify.yaml");
    std::fs::write(
        &file,
        format!(
            "sinks:\n  - name: bus\n    cloudEvents: {{ url: 'https://events.example.com/in', secret: {{ file: {} }} }}\n    events: [drift.detected, finding.opened]\n  - name: chat\n    slack: {{ url: {{ env: PALISADE_TEST_UNSET_VAR }} }}\n  - name: bad name\n    cloudEvents: {{ url: 'https://user:pw@x.example.com' }}\n    events: [drift.detectd]\n  - name: both\n    cloudEvents: {{ url: 'https://x.example.com' }}\n    slack: {{ url: {{ env: X }} }}\n",
            secret.display()
        ),
    )
    .unwrap();
    let err = load(&file).unwrap_err();
    for want in [
        "sink \"chat\": environment variable PALISADE_TEST_UNSET_VAR is not set",
        "sink \"bad name\": the name takes letters",
        "unknown event type \"drift.detectd\"",
        "credentials in the URL are refused",
        "sink \"both\": give exactly one of `cloudEvents` or `slack`",
    ] {
        assert!(err.contains(want), "{want}:\n{err}");
    }
    assert!(!err.contains("\"bus\""), "the good sink is fine:\n{err}");
    std::fs::write(
        &file,
        format!("sinks:\n  - name: bus\n    cloudEvents: {{ url: 'https://e.example.com', secret: {{ file: {} }} }}\n", secret.display()),
    )
    .unwrap();
    let sinks = load(&file).unwrap();
    assert_eq!(
        sinks[0].secret.as_deref(),
        Some(&b"s3cr3t"[..]),
        "trailing newline dropped"
    );
    std::fs::write(&file, "sinks:\n  - name: x\n    cloudEvent: {}\n").unwrap();
    assert!(load(&file).unwrap_err().contains("unknown field"));
}

#[test]
fn aggregation_never_reorders_an_opening_and_its_closing() {
    let f = finding("sg-1");
    let ev = |id, data| {
        at(
            id,
            id,
            NewEvent::new(data).target("prod-aws").resource(&f.resource),
        )
    };
    let events = vec![
        ev(1, EventData::FindingOpened(f.clone())),
        ev(2, EventData::FindingClosed(f.clone())),
        ev(3, EventData::FindingOpened(f.clone())),
    ];
    let m = messages(&sink(SinkKind::Slack), &events);
    let got: Vec<(&str, Vec<i64>)> = m.iter().map(|m| (m.ty, m.event_ids.clone())).collect();
    assert_eq!(
        got,
        [
            ("finding.opened", vec![1]),
            ("finding.closed", vec![2]),
            ("finding.opened", vec![3])
        ]
    );
}

#[test]
fn a_revert_joins_its_drift_before_routing_and_only_an_applied_one_counts() {
    let mut s = sink(SinkKind::Slack);
    s.config.min_severity = Severity::Warning;
    let m = messages(
        &s,
        &[drift(1, 1, "payments-api"), revert(2, 2, "payments-api")],
    );
    assert_eq!(m.len(), 1);
    assert!(m[0].text.ends_with("— reverted"), "{}", m[0].text);
    assert_eq!(m[0].id(), "1-2");
    let mut already = revert(3, 3, "payments-api");
    if let crate::history::Body::Typed(EventData::ChangeApplied(c)) = &mut already.event.body {
        c.status = ChangeStatus::AlreadyDone;
    }
    assert!(message(&already).is_none(), "nothing was reverted");
}

#[test]
fn chat_text_from_the_cloud_cannot_mention_link_or_hide() {
    let mut e = drift(1, 1, "x");
    e.event.resource = Some(
        "group @channel [click](https://evil.example) www.evil.example \u{202e}gpj.exe".into(),
    );
    let text = render::slack(&messages(&sink(SinkKind::Slack), &[e])[0]).to_string();
    assert!(
        !text.contains("@channel")
            && !text.contains("[click]")
            && !text.contains("https://")
            && !text.contains("www.evil")
            && !text.contains('\u{202e}'),
        "{text}"
    );
}

#[test]
fn retention_keeps_what_a_sink_has_not_delivered() {
    use outbox::Outbox as _;
    let store = crate::history::Store::in_memory().unwrap();
    let evs: Vec<(i64, NewEvent)> = (1..=5).map(|i| (i, drift(i, i, "g").event)).collect();
    store.append_many(&evs).unwrap();
    store.advance("slow", 2, 10).unwrap();
    store.advance("fast", 5, 10).unwrap();
    store.retain(1_000, 1_000).unwrap();
    let left: Vec<i64> = store
        .events_after(0, 100)
        .unwrap()
        .iter()
        .filter(|e| e.event.kind() == crate::history::kind::DRIFT_DETECTED)
        .map(|e| e.id)
        .collect();
    assert_eq!(
        left,
        [3, 4, 5],
        "after the slowest cursor, whatever their age"
    );
    assert_eq!(
        store.backlog(2).unwrap(),
        4,
        "3, 4, 5 and the retention event"
    );
}

#[test]
fn on_chat_a_revert_whose_drift_the_sink_does_not_take_is_sent_alone() {
    let mut s = sink(SinkKind::Slack);
    s.config.events = vec!["drift.reverted".into()];
    let m = messages(
        &s,
        &[drift(1, 1, "payments-api"), revert(2, 2, "payments-api")],
    );
    assert_eq!(
        m.iter().map(|m| m.ty).collect::<Vec<_>>(),
        ["drift.reverted"]
    );
}

#[test]
fn a_flapping_finding_is_not_aggregated_across_its_closing() {
    let mut f = finding("sg-1");
    f.kind = FindingKind::Flapping;
    let ev = |id, data| {
        at(
            id,
            id,
            NewEvent::new(data).target("prod-aws").resource(&f.resource),
        )
    };
    let m = messages(
        &sink(SinkKind::Slack),
        &[
            ev(1, EventData::FindingOpened(f.clone())),
            ev(2, EventData::FindingClosed(f.clone())),
            ev(3, EventData::FindingOpened(f.clone())),
        ],
    );
    assert_eq!(
        m.iter().map(|m| m.ty).collect::<Vec<_>>(),
        ["flapping", "finding.closed", "flapping"]
    );
}

#[test]
fn cursors_of_sinks_no_longer_configured_are_dropped() {
    use outbox::Outbox as _;
    let store = crate::history::Store::in_memory().unwrap();
    store.advance("old", 0, 1).unwrap();
    init_cursors(&store, &[sink(SinkKind::Slack)], 2);
    assert_eq!(store.cursor("old").unwrap(), None);
    assert_eq!(
        store.cursor("t").unwrap(),
        Some(0),
        "the configured one starts at the head"
    );
}
