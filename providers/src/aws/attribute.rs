//! `attribute`: who made a drift, from CloudTrail `LookupEvents` (management events, 90
//! days): one lookup per drifted resource (`ResourceName` = its id; a function by its
//! ARN, then its name), the window from the previous observation to now, paced by the
//! `cloudtrail` budget (the service allows 2 calls per second per account and region).
//! Palisade's own writes are recognised by the request ids AWS answered them with.

use aws_sdk_cloudtrail::types::{LookupAttribute, LookupAttributeKey};
use serde_json::Value;

use super::*;
pub use crate::events::actor_of;
use crate::model::{Actor, AttributionQuery};
use crate::provider::OwnRequests;

/// Most pages of one lookup (50 events each).
const MAX_PAGES: usize = 2;

/// Whether a principal (`arn`, and for an assumed role the `issuer` of its session) is
/// Palisade's own: the caller identity it verified (`me`), or, for an assumed role, a
/// session of the same role (whoever assumes Palisade's role is Palisade).
pub fn same_principal(arn: Option<&str>, issuer: Option<&str>, me: &str) -> bool {
    let role_of = |arn: &str| -> Option<String> {
        let rest = arn.split(":assumed-role/").nth(1)?;
        Some(rest.split('/').next()?.to_string())
    };
    match (role_of(me), issuer) {
        (Some(role), Some(issuer)) => issuer.rsplit('/').next() == Some(role.as_str()),
        _ => arn == Some(me),
    }
}

/// Whether `e` was made by Palisade's own principal `me` (see [`same_principal`]).
fn by_palisade(e: &Value, me: Option<&str>) -> bool {
    let Some(me) = me else { return false };
    let who = &e["userIdentity"];
    same_principal(
        who["arn"].as_str(),
        who["sessionContext"]["sessionIssuer"]["arn"].as_str(),
        me,
    )
}

/// The newest successful write among `events` that Palisade did not make: not one of
/// the request ids it was answered, not its own principal (`me`). An event that cannot
/// be read (a null) makes the answer unknown: an older one must not win in its place.
pub fn newest_foreign_write<'a>(
    events: impl IntoIterator<Item = &'a Value>,
    own: &OwnRequests,
    me: Option<&str>,
) -> Option<Actor> {
    let events: Vec<&Value> = events.into_iter().collect();
    if events.iter().any(|e| e.is_null()) {
        return None;
    }
    events
        .into_iter()
        .filter(|e| {
            let write =
                e["readOnly"].as_bool() == Some(false) || e["readOnly"].as_str() == Some("false");
            let failed = e["errorCode"].as_str().is_some_and(|c| !c.is_empty());
            let ours =
                e["requestID"].as_str().is_some_and(|id| own.contains(id)) || by_palisade(e, me);
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
        let mut throttled = false;
        for q in queries {
            if throttled {
                // The budget is spent: the rest are asked again later.
                out.push(None);
                continue;
            }
            // A function is known to CloudTrail by its ARN or by its name: both are read
            // and the newest write of either wins.
            let mut names = vec![q.resource.clone()];
            if let Some(name) = q.resource.split(":function:").nth(1) {
                names.push(name.split(':').next().unwrap_or(name).to_string());
            }
            let mut events: Vec<Value> = Vec::new();
            let mut failed = false;
            for name in names {
                match self.lookup(s, &name, q.since_ms, q.until_ms).await {
                    Ok(found) => events.extend(found),
                    Err(e) => {
                        throttled = matches!(e, ProviderError::Throttled { .. });
                        tracing::debug!(resource = %name, error = %e, "CloudTrail lookup failed");
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                out.push(None);
                continue;
            }
            let mut seen = std::collections::HashSet::new();
            events.retain(|e| {
                e["eventID"]
                    .as_str()
                    .is_none_or(|id| seen.insert(id.to_string()))
            });
            let own = self.own.lock().unwrap_or_else(|e| e.into_inner());
            out.push(newest_foreign_write(
                events.iter(),
                &own,
                s.caller.as_deref(),
            ));
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
                // Unreadable: a null, so that the answer is unknown rather than older.
                let v = e
                    .cloud_trail_event()
                    .filter(|raw| raw.len() <= 256 * 1024)
                    .and_then(|raw| serde_json::from_str::<Value>(raw).ok())
                    .filter(Value::is_object)
                    .unwrap_or(Value::Null);
                events.push(v);
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
    use crate::model::ActorKind;

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
            "userAgent": "aws-sdk-java/2.0 (spoofable)"
        }))
        .unwrap();
        assert_eq!(
            cfn.invoked_by.as_deref(),
            Some("cloudformation.amazonaws.com")
        );
        assert_eq!(
            cfn.user_agent.as_deref(),
            Some("aws-sdk-java/2.0 (spoofable)")
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
        let who = newest_foreign_write(events.iter(), &own, None).unwrap();
        assert_eq!(who.id, "arn:mallory");
        assert!(newest_foreign_write(events[..3].iter(), &own, None).is_none());
        // Palisade's principal, even with a request id it does not remember (a restart).
        let mine = json!({ "eventTime": "2026-12-01T10:09:00Z", "requestID": "forgotten", "readOnly": false,
            "userIdentity": { "type": "AssumedRole", "arn": "arn:aws:sts::1:assumed-role/palisade-role/botocore-9",
                "sessionContext": { "sessionIssuer": { "arn": "arn:aws:iam::1:role/palisade-role" } } } });
        let with_mine = [mine.clone(), events[3].clone()];
        let me = Some("arn:aws:sts::1:assumed-role/palisade-role/palisade");
        assert_eq!(
            newest_foreign_write(with_mine.iter(), &own, me).unwrap().id,
            "arn:mallory"
        );
        assert_eq!(
            newest_foreign_write(with_mine.iter(), &own, None)
                .unwrap()
                .id,
            "arn:aws:sts::1:assumed-role/palisade-role/botocore-9"
        );
        // An event that cannot be read: unknown, not the older one.
        let with_unreadable = [Value::Null, events[3].clone()];
        assert!(newest_foreign_write(with_unreadable.iter(), &own, None).is_none());
    }
}
