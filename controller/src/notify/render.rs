//! The wire formats: CloudEvents 1.0 over HTTP (binary or structured content mode) and
//! Slack-compatible `{"text": …}`; the HMAC signature.
//!
//! Signature: `palisade-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`
//! with the sink's secret, computed for each attempt (so a retry carries a fresh `t`). A
//! receiver recomputes it over the raw body, compares in constant time and refuses an
//! old `t` (replay). The body repeats what the headers say (`type`, `eventIds`,
//! `subject`): a receiver acting on a signed request takes them from the body.

use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use super::{ContentMode, Message, Severity, Sink, SinkKind};

/// An HTTP request body and its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Headers (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

/// CloudEvents' HTTP binding (3.1.3.2): space, `"`, `%` and anything outside U+0021 to
/// U+007E are percent-encoded as UTF-8.
pub fn header_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x21..0x7f).contains(&b) && b != b'%' && b != b'"' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The CloudEvents `source` of a target: `/palisade/<installation>/<target>`.
pub fn source(installation: &str, target: Option<&str>) -> String {
    let seg = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    format!(
        "/palisade/{}/{}",
        seg(installation),
        seg(target.unwrap_or("-"))
    )
}

/// The request of `m` for `sink` (unsigned: the signature is added per attempt).
pub fn request(sink: &Sink, m: &Message, installation: &str) -> Request {
    match sink.kind {
        SinkKind::CloudEvents(mode) => cloud_event(mode, m, installation),
        SinkKind::Slack => Request {
            headers: vec![("content-type".into(), "application/json".into())],
            body: slack(m).to_string().into_bytes(),
        },
    }
}

/// `t=<t>,v1=<hex>` over `"<t>.<body>"`.
pub fn signature(key: &[u8], t: u64, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts any key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "error",
    }
}

fn cloud_event(mode: ContentMode, m: &Message, installation: &str) -> Request {
    let id = m.id();
    let ty = format!("dev.palisade.{}", m.ty);
    let source = source(installation, m.target.as_deref());
    let time = crate::report::time(m.at);
    let data = serde_json::to_value(m).unwrap_or_default();
    match mode {
        ContentMode::Binary => {
            let mut headers = vec![
                ("ce-specversion".to_string(), "1.0".to_string()),
                ("ce-id".into(), header_value(&id)),
                ("ce-source".into(), header_value(&source)),
                ("ce-type".into(), header_value(&ty)),
                ("ce-time".into(), header_value(&time)),
                ("content-type".into(), "application/json".into()),
                ("ce-palisadeseverity".into(), severity(m.severity).into()),
                ("ce-palisadecount".into(), m.count().to_string()),
            ];
            if let Some(s) = &m.subject {
                headers.push(("ce-subject".into(), header_value(s)));
            }
            Request {
                headers,
                body: data.to_string().into_bytes(),
            }
        }
        ContentMode::Structured => {
            let mut doc = json!({
                "specversion": "1.0",
                "id": id,
                "source": source,
                "type": ty,
                "time": time,
                "datacontenttype": "application/json",
                "palisadeseverity": severity(m.severity),
                "palisadecount": m.count().to_string(),
                "data": data,
            });
            if let Some(s) = &m.subject {
                doc["subject"] = json!(s);
            }
            Request {
                headers: vec![("content-type".into(), "application/cloudevents+json".into())],
                body: doc.to_string().into_bytes(),
            }
        }
    }
}

/// Text from the cloud or the policies, for chat: Slack's control characters (`&`, `<`,
/// `>`) escaped, mentions (`@channel`, `@here`, `@all` on Mattermost and Teams), Markdown
/// links and bare URLs broken (a zero-width space after `:` and in `www.`), control,
/// line-separator and bidi characters dropped, at most 500 characters.
fn mrkdwn(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars().take(500) {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '@' => out.push_str("@\u{200b}"),
            '[' | ']' | '`' => {
                out.push('\u{200b}');
                out.push(c);
            }
            '\n' | '\r' | '\t' => out.push(' '),
            c if crate::report::is_hidden(c) => {}
            c => out.push(c),
        }
    }
    // `https://…` and `www.` would be linked by the chat itself.
    out.replace("://", ":\u{200b}//")
        .replace("www.", "www\u{200b}.")
}

/// The Slack-compatible payload: one readable message.
pub fn slack(m: &Message) -> serde_json::Value {
    let icon = match m.severity {
        Severity::Info => ":white_check_mark:",
        Severity::Warning => ":warning:",
        Severity::Error => ":x:",
    };
    let mut text = format!("{icon} *{}*", m.ty);
    if let Some(t) = &m.target {
        text.push_str(&format!(" · {}", mrkdwn(t)));
    }
    if let Some(r) = &m.revision {
        let short: String = r.chars().take(12).collect();
        text.push_str(&format!(" · revision {}", mrkdwn(&short)));
    }
    text.push('\n');
    text.push_str(&mrkdwn(&m.text));
    if m.resources.len() > 1 {
        let more = m.count().saturating_sub(m.resources.len());
        text.push_str(&format!(
            "\n> {}{}",
            m.resources
                .iter()
                .map(|r| mrkdwn(r))
                .collect::<Vec<_>>()
                .join(", "),
            if more > 0 {
                format!(" (+{more} more)")
            } else {
                String::new()
            }
        ));
    }
    text.push_str(&format!(
        "\n_history event{} {}_",
        if m.count() == 1 { "" } else { "s" },
        m.event_ids
            .iter()
            .take(5)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
            + if m.count() > 5 { ", …" } else { "" }
    ));
    json!({ "text": text })
}
