//! `attribute`: who made a drift, from CloudTrail `LookupEvents` (management events, 90
//! days): one lookup per drifted resource (`ResourceName` = its id; a function by its
//! ARN, then its name), the window from the previous observation to now, paced by the
//! `cloudtrail` budget (the service allows 2 calls per second per account and region).
//! Palisade's own writes are recognised by the request ids AWS answered them with.

use aws_sdk_cloudtrail::types::{LookupAttribute, LookupAttributeKey};
use serde_json::Value;

use super::*;
use crate::model::{Actor, ActorKind, AttributionQuery, audit_text};

/// Most pages of one lookup (50 events each).
const MAX_PAGES: usize = 2;

fn text(v: &Value) -> Option<String> {
    v.as_str().map(audit_text).filter(|s| !s.trim().is_empty())
}

/// The normalised actor of a CloudTrail event (`userIdentity`, `sourceIPAddress`,
/// `userAgent`, `eventID`, `eventTime`, `eventName`).
pub fn actor_of(e: &Value) -> Option<Actor> {
    let who = &e["userIdentity"];
    let arn = text(&who["arn"]);
    let invoked_by = text(&who["invokedBy"]);
    let (kind, id, name, issuer) = match who["type"].as_str().unwrap_or_default() {
        "IAMUser" => (ActorKind::User, arn.clone()?, text(&who["userName"]), None),
        "Root" => (ActorKind::User, arn.clone()?, Some("root".into()), None),
        "AssumedRole" => {
            let session = arn
                .as_deref()
                .and_then(|a| a.rsplit('/').next())
                .map(audit_text);
            (
                ActorKind::AssumedRole,
                arn.clone()?,
                session,
                text(&who["sessionContext"]["sessionIssuer"]["arn"]),
            )
        }
        "FederatedUser" | "SAMLUser" | "WebIdentityUser" | "IdentityCenterUser" => (
            ActorKind::Federated,
            arn.clone()
                .or_else(|| text(&who["principalId"]))
                .or_else(|| text(&who["userName"]))?,
            text(&who["userName"]),
            text(&who["sessionContext"]["sessionIssuer"]["arn"]),
        ),
        "AWSService" => (ActorKind::Service, invoked_by.clone()?, None, None),
        _ => (
            ActorKind::Unknown,
            arn.clone()
                .or_else(|| text(&who["principalId"]))
                .or_else(|| text(&who["accountId"]))?,
            None,
            None,
        ),
    };
    Some(Actor {
        kind,
        id,
        name,
        issuer,
        source_ip: text(&e["sourceIPAddress"]),
        // A service acting with the caller's credentials (CloudFormation) says so here.
        user_agent: invoked_by.or_else(|| text(&e["userAgent"])),
        event_id: text(&e["eventID"]),
        event_time: text(&e["eventTime"]),
        correlation_id: text(&e["requestID"]),
        operation: text(&e["eventName"]),
    })
}

/// The newest successful write among `events` (CloudTrail answers newest first) that
/// Palisade did not make.
pub fn newest_foreign_write<'a>(
    events: impl IntoIterator<Item = &'a Value>,
    own: &OwnRequests,
) -> Option<Actor> {
    events
        .into_iter()
        .filter(|e| {
            let write =
                e["readOnly"].as_bool() == Some(false) || e["readOnly"].as_str() == Some("false");
            let failed = e["errorCode"].as_str().is_some_and(|c| !c.is_empty());
            let ours = e["requestID"].as_str().is_some_and(|id| own.contains(id));
            write && !failed && !ours
        })
        .max_by(|a, b| {
            a["eventTime"]
                .as_str()
                .unwrap_or_default()
                .cmp(b["eventTime"].as_str().unwrap_or_default())
        })
        .and_then(actor_of)
}

/// The request ids of Palisade's own writes (the last 100,000).
#[derive(Debug, Default)]
pub struct OwnRequests {
    order: std::collections::VecDeque<String>,
    ids: std::collections::HashSet<String>,
}

impl OwnRequests {
    const MAX: usize = 100_000;

    pub fn insert(&mut self, id: &str) {
        if self.ids.contains(id) {
            return;
        }
        if self.order.len() >= Self::MAX
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.order.push_back(id.to_string());
        self.ids.insert(id.to_string());
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }
}

fn time(ms: i64) -> aws_smithy_types::DateTime {
    aws_smithy_types::DateTime::from_millis(ms)
}

impl AwsProvider {
    pub(super) async fn attribute_with(
        &self,
        s: &Session,
        queries: &[AttributionQuery],
    ) -> Result<Vec<Option<Actor>>, ProviderError> {
        let mut out = Vec::with_capacity(queries.len());
        for q in queries {
            // A function is known to CloudTrail by its ARN or by its name.
            let mut names = vec![q.resource.clone()];
            if let Some(name) = q.resource.split(":function:").nth(1) {
                names.push(name.split(':').next().unwrap_or(name).to_string());
            }
            let mut found = None;
            for name in names {
                let events = self.lookup(s, &name, q.since_ms, q.until_ms).await?;
                let own = self.own.lock().unwrap_or_else(|e| e.into_inner());
                found = newest_foreign_write(events.iter(), &own);
                if found.is_some() {
                    break;
                }
            }
            out.push(found);
        }
        Ok(out)
    }

    async fn lookup(
        &self,
        s: &Session,
        resource: &str,
        since: i64,
        until: i64,
    ) -> Result<Vec<Value>, ProviderError> {
        let attribute = LookupAttribute::builder()
            .attribute_key(LookupAttributeKey::ResourceName)
            .attribute_value(resource)
            .build()
            .map_err(|e| {
                ProviderError::refused(
                    crate::provider::RefusalKind::Invalid,
                    "LookupEvents",
                    e.to_string(),
                )
            })?;
        let mut events = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let out = self
                .budget
                // One try: drift not attributed now is asked about again later.
                .call_tries(
                    1,
                    &s.scope,
                    F::CloudTrail,
                    "cloudtrail",
                    "LookupEvents",
                    || {
                        s.clients
                            .cloudtrail
                            .lookup_events()
                            .lookup_attributes(attribute.clone())
                            .start_time(time(since))
                            .end_time(time(until))
                            .max_results(50)
                            .set_next_token(token.clone())
                            .send()
                    },
                )
                .await?;
            for e in out.events() {
                if let Some(raw) = e.cloud_trail_event()
                    && raw.len() <= 256 * 1024
                    && let Ok(v) = serde_json::from_str::<Value>(raw)
                {
                    events.push(v);
                }
            }
            token = out
                .next_token()
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn identities_are_normalised_from_real_shapes() {
        let assumed = actor_of(&json!({
            "eventName": "AuthorizeSecurityGroupIngress", "eventTime": "2026-12-01T10:00:00Z",
            "eventID": "e-1", "requestID": "r-1", "sourceIPAddress": "203.0.113.5",
            "userAgent": "aws-cli/2.15",
            "userIdentity": {
                "type": "AssumedRole",
                "arn": "arn:aws:sts::123456789012:assumed-role/terraform-ci/gha-run-42",
                "sessionContext": { "sessionIssuer": { "type": "Role", "arn": "arn:aws:iam::123456789012:role/terraform-ci" } }
            }
        }))
        .unwrap();
        assert_eq!(assumed.kind, ActorKind::AssumedRole);
        assert_eq!(assumed.name.as_deref(), Some("gha-run-42"));
        assert_eq!(
            assumed.issuer.as_deref(),
            Some("arn:aws:iam::123456789012:role/terraform-ci")
        );
        assert_eq!(
            assumed.operation.as_deref(),
            Some("AuthorizeSecurityGroupIngress")
        );
        // CloudFormation acting with a role: the role, and who invoked it.
        let cfn = actor_of(&json!({
            "userIdentity": {
                "type": "AssumedRole",
                "arn": "arn:aws:sts::123456789012:assumed-role/cfn-exec/AWSCloudFormation",
                "invokedBy": "cloudformation.amazonaws.com"
            },
            "userAgent": "cloudformation.amazonaws.com"
        }))
        .unwrap();
        assert_eq!(
            cfn.user_agent.as_deref(),
            Some("cloudformation.amazonaws.com")
        );
        let user = actor_of(&json!({ "userIdentity": { "type": "IAMUser", "arn": "arn:aws:iam::1:user/mallory", "userName": "mallory" } })).unwrap();
        assert_eq!(
            (user.kind, user.name.as_deref()),
            (ActorKind::User, Some("mallory"))
        );
        let service = actor_of(&json!({ "userIdentity": { "type": "AWSService", "invokedBy": "lambda.amazonaws.com" } })).unwrap();
        assert_eq!(
            (service.kind, service.id.as_str()),
            (ActorKind::Service, "lambda.amazonaws.com")
        );
        assert!(actor_of(&json!({ "userIdentity": { "type": "IAMUser" } })).is_none());
    }

    #[test]
    fn the_newest_successful_foreign_write_is_the_author() {
        let mut own = OwnRequests::default();
        own.insert("palisade-req");
        let ev = |t: &str, req: &str, ro: Value, err: Option<&str>, who: &str| {
            let mut e = json!({
                "eventTime": t, "requestID": req, "readOnly": ro,
                "userIdentity": { "type": "IAMUser", "arn": who }
            });
            if let Some(c) = err {
                e["errorCode"] = json!(c);
            }
            e
        };
        let events = [
            ev(
                "2026-12-01T10:05:00Z",
                "palisade-req",
                json!(false),
                None,
                "arn:palisade",
            ),
            ev(
                "2026-12-01T10:04:00Z",
                "r2",
                json!(false),
                Some("UnauthorizedOperation"),
                "arn:denied",
            ),
            ev(
                "2026-12-01T10:03:00Z",
                "r3",
                json!(true),
                None,
                "arn:reader",
            ),
            ev(
                "2026-12-01T10:02:00Z",
                "r4",
                json!("false"),
                None,
                "arn:mallory",
            ),
            ev(
                "2026-12-01T10:01:00Z",
                "r5",
                json!(false),
                None,
                "arn:earlier",
            ),
        ];
        let who = newest_foreign_write(events.iter(), &own).unwrap();
        assert_eq!(who.id, "arn:mallory");
        assert!(newest_foreign_write(events[..3].iter(), &own).is_none());
    }
}
