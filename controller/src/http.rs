//! The controller's HTTP server: probes, metrics, webhooks, status.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::report::xml as esc;
use crate::run::{Shared, Status};

/// Webhook secrets.
#[derive(Debug, Clone, Default)]
pub struct WebhookSecrets {
    /// GitHub: the HMAC-SHA256 key of `X-Hub-Signature-256`.
    pub github: Option<String>,
    /// GitLab: the `X-Gitlab-Token` value.
    pub gitlab: Option<String>,
}

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    secrets: Arc<WebhookSecrets>,
}

/// The router, for tests and for [`serve`].
pub fn router(shared: Arc<Shared>, secrets: WebhookSecrets) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/", get(page))
        .route("/webhook/github", post(github))
        .route("/webhook/gitlab", post(gitlab))
        .with_state(App {
            shared,
            secrets: Arc::new(secrets),
        })
}

/// Serve on `listener` until the controller is cancelled.
///
/// # Errors
/// The server failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    secrets: WebhookSecrets,
) -> std::io::Result<()> {
    let cancel = shared.cancel.clone();
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(address = ?addr, "HTTP server listening");
    axum::serve(listener, router(shared, secrets))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

async fn readyz(State(app): State<App>) -> Response {
    let s = app.shared.status();
    let body = serde_json::json!({
        "ready": s.ready,
        "revision": s.revision.as_ref().map(|r| r.commit.clone()),
        "targets": s.targets.iter().map(|(n, t)| (n.clone(), t.last_reconcile.as_ref().map(|r| format!("{} at {}", r.result, r.revision)))).collect::<std::collections::BTreeMap<_, _>>(),
    });
    let code = if s.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    app.shared
        .metrics
        .sync_api_calls(&app.shared.providers.api_calls());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.shared.metrics.encode(),
    )
        .into_response()
}

async fn status(State(app): State<App>) -> axum::Json<Status> {
    axum::Json(app.shared.status_with_history())
}

fn unauthorized(why: &str) -> Response {
    tracing::warn!(why, "webhook refused");
    (StatusCode::UNAUTHORIZED, format!("{why}\n")).into_response()
}

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` under `secret`.
pub fn github_signature_ok(secret: &str, header: &str, body: &[u8]) -> bool {
    let Some(hex_sig) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(sig) = hex::decode(hex_sig.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

async fn github(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = &app.secrets.github else {
        return unauthorized("no GitHub webhook secret is configured");
    };
    let Some(sig) = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
    else {
        return unauthorized("missing X-Hub-Signature-256");
    };
    if !github_signature_ok(secret, sig, &body) {
        return unauthorized("bad X-Hub-Signature-256");
    }
    let event = headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("push");
    if event == "ping" {
        return (StatusCode::OK, "pong\n").into_response();
    }
    tracing::info!(event, "GitHub webhook: fetching now");
    app.shared.kick();
    (StatusCode::ACCEPTED, "fetching\n").into_response()
}

async fn gitlab(State(app): State<App>, headers: HeaderMap) -> Response {
    let Some(secret) = &app.secrets.gitlab else {
        return unauthorized("no GitLab webhook token is configured");
    };
    let Some(token) = headers.get("x-gitlab-token").map(|v| v.as_bytes()) else {
        return unauthorized("missing X-Gitlab-Token");
    };
    if !bool::from(token.ct_eq(secret.as_bytes())) {
        return unauthorized("bad X-Gitlab-Token");
    }
    tracing::info!("GitLab webhook: fetching now");
    app.shared.kick();
    (StatusCode::ACCEPTED, "fetching\n").into_response()
}

async fn page(State(app): State<App>) -> Html<String> {
    Html(render_page(&app.shared.status_with_history()))
}

/// The status page: plain HTML, no script, no external resource.
pub fn render_page(s: &Status) -> String {
    let mut h = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Palisade status</title>\
         <meta http-equiv=\"refresh\" content=\"10\"><style>body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}\
         table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}\
         .ok{color:#080}.bad{color:#b00}code{font-size:90%}</style></head><body><h1>Palisade</h1>",
    );
    let ready = if s.ready {
        "<span class=ok>ready</span>"
    } else {
        "<span class=bad>not ready</span>"
    };
    h.push_str(&format!("<p>Status: {ready}</p>"));
    match &s.revision {
        Some(r) => h.push_str(&format!(
            "<p>Enforced revision <code>{}</code> — {} — by {}; signature: {}</p>",
            esc(&r.commit),
            esc(&r.summary),
            esc(&r.author),
            esc(&serde_json::to_value(&r.signature)
                .ok()
                .and_then(|v| v["status"].as_str().map(str::to_string))
                .unwrap_or_default())
        )),
        None => h.push_str("<p class=bad>No revision enforced yet.</p>"),
    }
    if let Some(e) = &s.source_error {
        h.push_str(&format!("<p class=bad>Source error: {}</p>", esc(e)));
    }
    h.push_str("<h2>Targets</h2><table><tr><th>target</th><th>cloud</th><th>last reconcile</th><th>applied</th><th>drift reverted</th><th>pending deletions</th><th>findings</th></tr>");
    for (name, t) in &s.targets {
        let last = t.last_reconcile.as_ref().map_or("never".to_string(), |r| {
            let class = if r.result == "ok" { "ok" } else { "bad" };
            format!(
                "<span class={class}>{}</span> at {} ({} ms, trigger {}){}",
                esc(&r.result),
                r.at,
                r.duration_ms,
                esc(&r.trigger),
                r.error
                    .as_ref()
                    .map(|e| format!("<br>{}", esc(e)))
                    .unwrap_or_default()
            )
        });
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{last}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            esc(&t.cloud),
            t.last_reconcile.as_ref().map_or(0, |r| r.applied),
            t.last_reconcile.as_ref().map_or(0, |r| r.drift_reverted),
            t.pending_deletions.len(),
            t.findings.len()
        ));
    }
    h.push_str("</table>");
    if !s.rejected.is_empty() {
        h.push_str("<h2>Rejected revisions</h2><table><tr><th>commit</th><th>reason</th><th>details</th></tr>");
        for r in s.rejected.iter().rev() {
            h.push_str(&format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(&r.commit),
                esc(&r.reason),
                r.details
                    .iter()
                    .map(|d| esc(d))
                    .collect::<Vec<_>>()
                    .join("<br>")
            ));
        }
        h.push_str("</table>");
    }
    for (name, t) in &s.targets {
        if t.findings.is_empty() {
            continue;
        }
        h.push_str(&format!("<h2>Findings in {}</h2><ul>", esc(name)));
        for f in &t.findings {
            h.push_str(&format!(
                "<li>{}: {}</li>",
                esc(&f.resource),
                esc(&f.message)
            ));
        }
        h.push_str("</ul>");
    }
    if !s.recent_events.is_empty() {
        h.push_str("<h2>Recent history</h2><table><tr><th>when</th><th>event</th><th>target</th><th>resource</th><th>revision</th></tr>");
        for e in &s.recent_events {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                crate::report::time(e.at),
                esc(&e.event.kind),
                esc(e.event.target.as_deref().unwrap_or("")),
                esc(e.event.resource.as_deref().unwrap_or("")),
                esc(e
                    .event
                    .revision
                    .as_deref()
                    .map(|r| &r[..r.len().min(12)])
                    .unwrap_or(""))
            ));
        }
        h.push_str("</table>");
    }
    h.push_str("<p><a href=\"/api/status\">/api/status</a> · <a href=\"/metrics\">/metrics</a></p></body></html>");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_signatures() {
        // The example from GitHub's documentation.
        let secret = "It's a Secret to Everybody";
        let body = b"Hello, World!";
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(github_signature_ok(secret, good, body));
        assert!(!github_signature_ok(secret, good, b"Hello, World?"));
        assert!(!github_signature_ok("other", good, body));
        assert!(!github_signature_ok(secret, "sha1=757107ea", body));
        assert!(!github_signature_ok(secret, "sha256=zz", body));
    }

    #[test]
    fn page_escapes_what_it_shows() {
        let s = Status {
            source_error: Some("<script>alert(1)</script>".into()),
            ..Status::default()
        };
        let html = render_page(&s);
        assert!(!html.contains("<script>"));
        assert!(html.contains("&lt;script&gt;"));
    }
}
