//! `attribute`: who made a drift, from the Activity Log
//! (`Microsoft.Insights/eventtypes/management/values`, api-version 2015-04-01): one paged
//! query per target and pass over the resource group and the window, matched to each
//! drifted resource by id (its sub-resources included: an NSG's rules, a site's
//! `config/web`). Palisade's own writes are dropped by the client request ids it sent.

use super::*;
use crate::model::{Actor, ActorKind, AttributionQuery, audit_text};

/// Activity Log API version.
pub const ACTIVITY_LOG_API_VERSION: &str = "2015-04-01";
/// Most pages of one Activity Log query (1,000 events at its page size): past that, the
/// rest of the window is not attributed.
const MAX_PAGES: usize = 10;

fn text(v: &Value) -> Option<String> {
    v.as_str().map(audit_text).filter(|s| !s.trim().is_empty())
}

/// Whether `event_id` is `resource` or one of its own sub-resources (an NSG's rules, a
/// site's `config/web`) — not an extension resource on it (`…/providers/Microsoft.
/// Insights/diagnosticSettings/…`, locks, role assignments), which changes nothing
/// Palisade enforces.
fn covers(resource: &str, event_id: &str) -> bool {
    event_id.len() >= resource.len()
        && event_id.is_char_boundary(resource.len())
        && event_id[..resource.len()].eq_ignore_ascii_case(resource)
        && (event_id.len() == resource.len()
            || (event_id.as_bytes()[resource.len()] == b'/'
                && !event_id[resource.len()..]
                    .to_ascii_lowercase()
                    .contains("/providers/")))
}

/// The normalised actor of one Activity Log event.
pub fn actor_of(e: &Value) -> Option<Actor> {
    let caller = text(&e["caller"])?;
    let claims = &e["claims"];
    let kind = match claims["idtyp"].as_str() {
        Some("app") => ActorKind::ServicePrincipal,
        Some("user") => ActorKind::User,
        // No `idtyp`: an application id without a user principal name is an app.
        _ if claims["appid"].is_string()
            && !claims["http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn"].is_string() =>
        {
            ActorKind::ServicePrincipal
        }
        _ if caller.contains('@') => ActorKind::User,
        _ => ActorKind::Unknown,
    };
    Some(Actor {
        kind,
        id: caller,
        name: text(&claims["name"]),
        issuer: None,
        source_ip: text(&e["httpRequest"]["clientIpAddress"]).or_else(|| text(&claims["ipaddr"])),
        user_agent: None,
        invoked_by: None,
        event_id: text(&e["eventDataId"]),
        event_time: text(&e["eventTimestamp"]),
        correlation_id: text(&e["correlationId"]),
        operation: text(&e["operationName"]["value"]),
    })
}

/// A successful write (`…/write`, `…/delete`: actions such as `listkeys` or `restart`
/// change nothing Palisade enforces) that Palisade did not make. When Palisade knows
/// its own client id (`me`), its events are those of that caller, whatever request id
/// they carry (a request id is the caller's to choose, so one seen in the log could be
/// borrowed); otherwise they are recognised by the request ids it sent.
fn foreign_write(e: &Value, own: &crate::provider::OwnRequests, me: Option<&str>) -> bool {
    let done = e["status"]["value"]
        .as_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("Succeeded"));
    let write = e["operationName"]["value"].as_str().is_some_and(|o| {
        let o = o.to_ascii_lowercase();
        o.ends_with("/write") || o.ends_with("/delete")
    });
    let ours = match me {
        Some(me) => [&e["caller"], &e["claims"]["appid"]]
            .iter()
            .any(|v| v.as_str().is_some_and(|c| c.eq_ignore_ascii_case(me))),
        None => e["httpRequest"]["clientRequestId"]
            .as_str()
            .is_some_and(|id| own.contains(id)),
    };
    done && write && !ours
}

fn millis(e: &Value) -> Option<i64> {
    e["eventTimestamp"]
        .as_str()?
        .parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

impl AzureProvider {
    pub(super) async fn attribute_inner(
        &self,
        target: &Target,
        queries: &[AttributionQuery],
    ) -> Result<Vec<Option<Actor>>, ProviderError> {
        let (Some(since), Some(until)) = (
            queries.iter().map(|q| q.since_ms).min(),
            queries.iter().map(|q| q.until_ms).max(),
        ) else {
            return Ok(Vec::new());
        };
        let s = scope(target)?;
        let arm = self.arm()?;
        let mut url = arm.url(
            &format!(
                "/subscriptions/{}/providers/Microsoft.Insights/eventtypes/management/values",
                s.subscription
            ),
            ACTIVITY_LOG_API_VERSION,
        )?;
        url.query_pairs_mut().append_pair(
            "$filter",
            &format!(
                "eventTimestamp ge '{}' and eventTimestamp le '{}' and resourceGroupName eq '{}'",
                rfc3339(since),
                rfc3339(until),
                s.resource_group
            ),
        );
        let mut events = Vec::new();
        let mut next = Some(url);
        let mut pages = 0;
        let mut truncated = false;
        while let Some(url) = next.take() {
            pages += 1;
            let answer = arm.call(Method::Get, url, None).await?;
            if let Some(v) = answer.body["value"].as_array() {
                events.extend(v.iter().cloned());
            }
            if pages >= MAX_PAGES
                && answer.body["nextLink"]
                    .as_str()
                    .is_some_and(|l| !l.is_empty())
            {
                truncated = true;
                tracing::warn!(
                    target = %target.name,
                    pages,
                    "activity log: more events in the window than Palisade reads; the rest is not attributed"
                );
                break;
            }
            next = answer.body["nextLink"]
                .as_str()
                .filter(|l| !l.is_empty())
                .and_then(|l| Url::parse(l).ok());
        }
        if truncated {
            // The window was not read whole: what is missing could be the author.
            return Ok(vec![None; queries.len()]);
        }
        let own = arm.own.lock().unwrap_or_else(|e| e.into_inner());
        let me = std::env::var("AZURE_CLIENT_ID")
            .ok()
            .filter(|c| !c.is_empty());
        let writes: Vec<(i64, &Value)> = events
            .iter()
            .filter(|e| foreign_write(e, &own, me.as_deref()))
            .filter_map(|e| Some((millis(e)?, e)))
            .collect();
        Ok(queries
            .iter()
            .map(|q| {
                writes
                    .iter()
                    .filter(|(at, e)| {
                        (q.since_ms..=q.until_ms).contains(at)
                            && e["resourceId"]
                                .as_str()
                                .is_some_and(|id| covers(&q.resource, id))
                    })
                    .max_by_key(|(at, _)| *at)
                    .and_then(|(_, e)| actor_of(e))
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_resources_count_and_prefixes_do_not() {
        let nsg = "/s/x/networkSecurityGroups/a";
        assert!(covers(nsg, "/S/X/networkSecurityGroups/A/securityRules/r"));
        assert!(covers(nsg, nsg));
        assert!(!covers(nsg, "/s/x/networkSecurityGroups/ab"));
        assert!(!covers(nsg, "/s/x"));
        assert!(!covers(
            nsg,
            "/s/x/networkSecurityGroups/a/providers/Microsoft.Insights/diagnosticSettings/d"
        ));
    }

    #[test]
    fn actors_are_normalised_and_cut_short() {
        let user = actor_of(&json!({
            "caller": "mallory@contoso.example",
            "claims": { "name": "Mallory\u{202e}", "idtyp": "user", "ipaddr": "203.0.113.9" },
            "eventDataId": "e1", "eventTimestamp": "2026-12-01T10:00:00Z", "correlationId": "c1",
            "operationName": { "value": "Microsoft.Network/networkSecurityGroups/securityRules/write" },
            "httpRequest": { "clientIpAddress": "198.51.100.1" }
        }))
        .unwrap();
        assert_eq!(user.kind, ActorKind::User);
        assert_eq!(user.source_ip.as_deref(), Some("198.51.100.1"));
        assert_eq!(user.name.as_deref(), Some("Mallory"));
        assert_eq!(user.to_string(), "user mallory@contoso.example (Mallory)");
        let app = actor_of(&json!({ "caller": "9f3c", "claims": { "appid": "9f3c" } })).unwrap();
        assert_eq!(app.kind, ActorKind::ServicePrincipal);
        let long = actor_of(&json!({ "caller": "x".repeat(10_000) })).unwrap();
        assert_eq!(long.id.len(), 256);
        assert!(actor_of(&json!({ "caller": "  " })).is_none());
        assert!(actor_of(&json!({ "caller": 7 })).is_none());
    }

    #[test]
    fn only_successful_foreign_writes_count() {
        let mut own = crate::provider::OwnRequests::default();
        let mine = own.issue();
        let ev = |status: &str, op: &str, client: &str| {
            json!({ "status": { "value": status }, "operationName": { "value": op },
                    "httpRequest": { "clientRequestId": client } })
        };
        let w = |e: &Value| foreign_write(e, &own, None);
        assert!(w(&ev("Succeeded", "Microsoft.Web/sites/config/write", "x")));
        assert!(!w(&ev(
            "Succeeded",
            "Microsoft.Web/sites/config/write",
            &mine
        )));
        assert!(!w(&ev("Started", "Microsoft.Web/sites/config/write", "x")));
        assert!(!w(&ev("Succeeded", "Microsoft.Web/sites/read", "x")));
        assert!(!w(&ev(
            "Succeeded",
            "Microsoft.Web/sites/host/listkeys/action",
            "x"
        )));
        // With Palisade's client id known, a borrowed request id proves nothing.
        let mut borrowed = ev("Succeeded", "Microsoft.Web/sites/config/write", &mine);
        borrowed["caller"] = json!("mallory@contoso.example");
        assert!(foreign_write(&borrowed, &own, Some("palisade-app")));
        let mut after_restart = ev("Succeeded", "Microsoft.Web/sites/config/write", "forgotten");
        after_restart["caller"] = json!("palisade-app");
        assert!(!foreign_write(&after_restart, &own, Some("palisade-app")));
    }
}
