//! The controller's HTTP server: probes, metrics, webhooks, status.
//!
//! Hardened for an untrusted network: request headers must arrive within a timeout
//! (slowloris), each request has a deadline, connections and in-flight requests are
//! bounded, bodies are capped, every response carries `Content-Security-Policy`,
//! `X-Content-Type-Options` and `X-Frame-Options`, and history reads run off the async
//! workers. Webhooks are authenticated first (HMAC / token, constant time), then act
//! only on a push to the tracked ref, once per delivery id; refusals are counted and
//! logged at most once a minute.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::metrics::ReasonL;
use crate::reconcile::{Shared, Status};
use crate::report::xml as esc;
use crate::secret::Secret;

/// Webhook secrets (never empty: [`Secret`] refuses that).
#[derive(Debug, Clone, Default)]
pub struct WebhookSecrets {
    /// GitHub: the HMAC-SHA256 key of `X-Hub-Signature-256`.
    pub github: Option<Secret>,
    /// GitLab: the `X-Gitlab-Token` value.
    pub gitlab: Option<Secret>,
}

/// Bounds of the HTTP server.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Time a client has to send the request line and headers.
    pub header_read_timeout: Duration,
    /// Time one request may take.
    pub request_timeout: Duration,
    /// Open connections at most.
    pub max_connections: usize,
    /// Requests handled at the same time at most.
    pub max_in_flight: usize,
    /// Largest request body (webhook payloads).
    pub max_body_bytes: usize,
    /// Longest a connection may stay open (keep-alive included): a client that stops
    /// reading its responses cannot hold a connection slot for ever.
    pub max_connection_age: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_connections: 256,
            max_in_flight: 64,
            max_body_bytes: 1024 * 1024,
            max_connection_age: Duration::from_secs(120),
        }
    }
}

/// Delivery ids seen recently (bounded), to act once per delivery.
#[derive(Debug, Default)]
struct Deliveries {
    order: VecDeque<String>,
    seen: HashSet<String>,
}

impl Deliveries {
    const KEEP: usize = 4096;

    /// True the first time `id` is offered.
    fn first(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        self.seen.insert(id.to_string());
        self.order.push_back(id.to_string());
        if self.order.len() > Self::KEEP
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

/// A warning logged at most once per minute, with the count of those suppressed.
#[derive(Debug, Default)]
struct Throttled {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    fn warn(&self, why: &str) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if st
            .0
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            tracing::warn!(
                why,
                suppressed = st.1,
                "webhook refused (further refusals are logged at most once a minute; all are counted in palisade_webhooks_refused_total)"
            );
            *st = (Some(now), 0);
        } else {
            st.1 += 1;
        }
    }
}

#[derive(Clone)]
struct App {
    shared: Arc<Shared>,
    secrets: Arc<WebhookSecrets>,
    /// The full ref the source tracks (`refs/heads/main`, `refs/tags/v3`).
    tracked_ref: Arc<str>,
    deliveries: Arc<Mutex<Deliveries>>,
    refusals: Arc<Throttled>,
}

/// The router, for tests and for [`serve`].
pub fn router(
    shared: Arc<Shared>,
    secrets: WebhookSecrets,
    tracked_ref: &str,
    limits: &ServerLimits,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/status", get(status))
        .route("/", get(page))
        .route("/webhook/github", post(github))
        .route("/webhook/gitlab", post(gitlab))
        .with_state(App {
            shared,
            secrets: Arc::new(secrets),
            tracked_ref: Arc::from(tracked_ref),
            deliveries: Arc::default(),
            refusals: Arc::default(),
        })
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        // Global: `Router::layer` applies a layer per route, and a plain
        // ConcurrencyLimitLayer would get a semaphore of its own in each.
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            limits.max_in_flight.max(1),
        ))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
}

/// Serve on `listener` until the controller is cancelled: HTTP/1.1 with a header-read
/// timeout, at most `limits.max_connections` connections, graceful shutdown.
///
/// # Errors
/// The listener failed.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    secrets: WebhookSecrets,
    tracked_ref: String,
    limits: ServerLimits,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let cancel = shared.cancel.clone();
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(address = ?addr, "HTTP server listening");
    let app = router(shared, secrets, &tracked_ref, &limits);
    let max = limits.max_connections.clamp(1, u32::MAX as usize);
    let connections = Arc::new(tokio::sync::Semaphore::new(max));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(64 * 1024);
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break,
            p = connections.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let http = http.clone();
        let cancel = cancel.clone();
        let age = limits.max_connection_age;
        tokio::spawn(async move {
            let conn = http.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            // Past its age, or on shutdown, the connection finishes the request in flight
            // and closes; a client that does not read gets 5 s more, then is dropped.
            let ended = tokio::select! {
                _ = conn.as_mut() => true,
                _ = tokio::time::sleep(age) => false,
                _ = cancel.cancelled() => false,
            };
            if !ended {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(Duration::from_secs(5), conn.as_mut()).await;
            }
            drop(permit);
        });
    }
    // Connections close gracefully (see above); wait for them, at most 6 s.
    let _ =
        tokio::time::timeout(Duration::from_secs(6), connections.acquire_many(max as u32)).await;
    Ok(())
}

async fn healthz(State(app): State<App>) -> Response {
    if app.shared.live() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the source loop has not finished an iteration in time\n",
        )
            .into_response()
    }
}

async fn readyz(State(app): State<App>) -> Response {
    let s = app.shared.status();
    let body = serde_json::json!({
        "ready": s.ready,
        "converged": s.converged,
        "revision": s.revision.as_ref().map(|r| r.commit.clone()),
        "targets": s.targets.iter().map(|(n, t)| (n.clone(), t.last_reconcile.as_ref().map(|r| format!("{} at {}", r.result.as_str(), r.revision)))).collect::<std::collections::BTreeMap<_, _>>(),
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

/// The status with the newest history, read on a blocking thread (SQLite).
async fn status_with_history(shared: &Arc<Shared>) -> Status {
    let s = shared.clone();
    match tokio::task::spawn_blocking(move || s.status_with_history()).await {
        Ok(status) => status,
        Err(_) => shared.status(),
    }
}

async fn status(State(app): State<App>) -> axum::Json<Status> {
    axum::Json(status_with_history(&app.shared).await)
}

impl App {
    fn refuse(&self, reason: &'static str, why: &str) -> Response {
        self.shared
            .metrics
            .webhooks_refused
            .get_or_create(&ReasonL {
                reason: reason.into(),
            })
            .inc();
        self.refusals.warn(why);
        (StatusCode::UNAUTHORIZED, format!("{why}\n")).into_response()
    }

    fn ignore(&self, reason: &'static str, why: &str) -> Response {
        self.shared
            .metrics
            .webhooks_ignored
            .get_or_create(&ReasonL {
                reason: reason.into(),
            })
            .inc();
        tracing::debug!(reason, why, "webhook ignored");
        (StatusCode::OK, format!("ignored: {why}\n")).into_response()
    }

    /// After authentication: act on a push to the tracked ref, once per delivery.
    fn push(&self, delivery: Option<&str>, body: &[u8], source: &'static str) -> Response {
        #[derive(serde::Deserialize)]
        struct Push {
            #[serde(rename = "ref")]
            reference: Option<String>,
        }
        let Ok(push) = serde_json::from_slice::<Push>(body) else {
            return self.ignore("bad-body", "the body is not a JSON push event");
        };
        let Some(reference) = push.reference else {
            return self.ignore("bad-body", "the push event names no ref");
        };
        if reference != *self.tracked_ref {
            return self.ignore(
                "other-ref",
                "a push to a ref this controller does not track",
            );
        }
        if let Some(id) = delivery {
            let id: String = id.chars().take(128).collect();
            let first = self
                .deliveries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .first(&id);
            if !first {
                return self.ignore("duplicate", "this delivery was handled already");
            }
        }
        tracing::info!(source, "webhook: fetching the source");
        self.shared.kick();
        (StatusCode::ACCEPTED, "fetching\n").into_response()
    }
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

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn github(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = &app.secrets.github else {
        return app.refuse("not-configured", "no GitHub webhook secret is configured");
    };
    let Some(sig) = header_str(&headers, "x-hub-signature-256") else {
        return app.refuse("missing-signature", "missing X-Hub-Signature-256");
    };
    if !github_signature_ok(secret.expose(), sig, &body) {
        return app.refuse("bad-signature", "bad X-Hub-Signature-256");
    }
    match header_str(&headers, "x-github-event") {
        Some("ping") => (StatusCode::OK, "pong\n").into_response(),
        Some("push") => app.push(header_str(&headers, "x-github-delivery"), &body, "github"),
        _ => app.ignore("other-event", "only push events trigger a fetch"),
    }
}

async fn gitlab(State(app): State<App>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(secret) = &app.secrets.gitlab else {
        return app.refuse("not-configured", "no GitLab webhook token is configured");
    };
    let Some(token) = headers.get("x-gitlab-token").map(|v| v.as_bytes()) else {
        return app.refuse("missing-token", "missing X-Gitlab-Token");
    };
    if !bool::from(token.ct_eq(secret.expose().as_bytes())) {
        return app.refuse("bad-token", "bad X-Gitlab-Token");
    }
    match header_str(&headers, "x-gitlab-event") {
        Some("Push Hook" | "Tag Push Hook") => {
            app.push(header_str(&headers, "x-gitlab-event-uuid"), &body, "gitlab")
        }
        _ => app.ignore("other-event", "only push events trigger a fetch"),
    }
}

async fn page(State(app): State<App>) -> Html<String> {
    Html(render_page(&status_with_history(&app.shared).await))
}

/// An RFC 3339 date of Unix seconds, for the page.
fn date_secs(t: u64) -> String {
    crate::report::time(
        i64::try_from(t)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000),
    )
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
    let failing = s.targets.values().filter(|t| !t.healthy).count();
    let converged = if s.converged {
        "<span class=ok>every target converged on the enforced revision</span>".to_string()
    } else {
        format!("<span class=bad>{failing} target(s) not converged on the enforced revision</span>")
    };
    h.push_str(&format!("<p>Status: {ready}; {converged}</p>"));
    match &s.revision {
        Some(r) => h.push_str(&format!(
            "<p>Enforced revision <code>{}</code> — {} — by {}; signature: {}</p>",
            esc(&r.commit),
            esc(&r.summary),
            esc(&r.author),
            esc(
                &serde_json::to_value(crate::history::SignatureState::from(&r.signature))
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )
        )),
        None => h.push_str("<p class=bad>No revision enforced yet.</p>"),
    }
    if let Some(e) = &s.source_error {
        h.push_str(&format!("<p class=bad>Source error: {}</p>", esc(e)));
    }
    if let Some(e) = &s.history_error {
        h.push_str(&format!(
            "<p class=bad>History store problem: {}</p>",
            esc(e)
        ));
    }
    h.push_str(&format!(
        "<p>Source last fetched successfully {} s ago.</p>",
        s.source_stale_seconds
    ));
    h.push_str("<h2>Targets</h2><table><tr><th>target</th><th>cloud</th><th>last reconcile</th><th>applied</th><th>drift reverted</th><th>pending deletions</th><th>findings</th></tr>");
    for (name, t) in &s.targets {
        let last = t.last_reconcile.as_ref().map_or("never".to_string(), |r| {
            let class = if r.result == crate::reconcile::ReconcileResult::Ok {
                "ok"
            } else {
                "bad"
            };
            format!(
                "<span class={class}>{}</span> at {} ({} ms, trigger {}){}",
                esc(r.result.as_str()),
                date_secs(r.at),
                r.duration_ms,
                esc(r.trigger.as_str()),
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
    if !s.notifications.is_empty() {
        h.push_str("<h2>Notifications</h2><table id=\"notifications\"><tr><th>sink</th><th>kind</th><th>last delivered</th><th>backlog</th><th>sent</th><th>dead-lettered</th><th>last error</th></tr>");
        for (name, n) in &s.notifications {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td></tr>",
                esc(name),
                esc(&n.kind),
                n.last_success_at
                    .map(date_secs)
                    .unwrap_or_else(|| "never".into()),
                n.backlog,
                n.sent,
                n.dead_lettered,
                if n.last_error.is_some() { " class=bad" } else { "" },
                esc(n.last_error.as_deref().unwrap_or("")),
            ));
        }
        h.push_str("</table>");
    }
    if !s.event_queues.is_empty() {
        h.push_str("<h2>Change events</h2><table id=\"event-queues\"><tr><th>queue</th><th>received</th><th>last receive</th><th>last error</th></tr>");
        for (url, q) in &s.event_queues {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td></tr>",
                esc(url),
                q.received,
                q.last_receive_at
                    .map(date_secs)
                    .unwrap_or_else(|| "never".into()),
                if q.last_error.is_some() {
                    " class=bad"
                } else {
                    ""
                },
                esc(q.last_error.as_deref().unwrap_or("")),
            ));
        }
        h.push_str("</table>");
    }
    if !s.rejected.is_empty() {
        h.push_str("<h2>Rejected revisions</h2><table><tr><th>commit</th><th>reason</th><th>details</th></tr>");
        for r in s.rejected.iter().rev() {
            h.push_str(&format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(&r.commit),
                esc(&r.reason.to_string()),
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
                esc(&f.resource.to_string()),
                esc(&f.message)
            ));
        }
        h.push_str("</ul>");
    }
    if !s.recent_events.is_empty() {
        h.push_str("<h2>Recent history</h2><table><tr><th>when</th><th>event</th><th>target</th><th>resource</th><th>what, and who</th><th>revision</th></tr>");
        for e in &s.recent_events {
            let what = match &e.event.body {
                crate::history::Body::Typed(crate::history::EventData::DriftDetected(d)) => {
                    format!(
                        "{} — by {}",
                        d.change,
                        d.actor
                            .as_ref()
                            .map_or_else(|| "unknown".to_string(), ToString::to_string)
                    )
                }
                _ => String::new(),
            };
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
                crate::report::time(e.at),
                esc(e.event.kind()),
                esc(e.event.target.as_deref().unwrap_or("")),
                esc(e.event.resource.as_deref().unwrap_or("")),
                esc(&what),
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
