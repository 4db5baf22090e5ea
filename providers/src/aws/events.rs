//! The SQS queue an EventBridge rule delivers CloudTrail management events to
//! (`palisade events setup` prints the rule, the queue policy and the permissions).
//!
//! Long polls of up to 20 s, at most 10 messages each, with `SentTimestamp` (the lag
//! metric starts there); deletes in batches of 10. Every call goes through the
//! provider's [`Budget`] (family `sqs`), so that it is paced and counted with the rest.
//! The queue is read with the controller's own credentials (the standard chain, not a
//! target's `assumeRoleArn`), in the region its URL names: when Palisade runs in another
//! account than the queue, the queue policy must also let its principal receive and
//! delete (README, "Drift in seconds").

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};

use super::call::{Budget, Family, Scope};
use crate::events::{ChangeEvent, EventQueue, QueueMessage, Unusable, parse_cloudtrail};
use crate::provider::{ProviderError, RefusalKind};

/// Where a queue URL says the queue is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueUrl {
    /// The URL, as given.
    pub url: String,
    /// The account in its path.
    pub account: String,
    /// The region its host names (`sqs.<region>.amazonaws.com`,
    /// `<region>.queue.amazonaws.com`); `None` for an endpoint override (an emulator).
    pub region: Option<String>,
}

fn invalid(url: &str, why: &str) -> ProviderError {
    ProviderError::refused(
        RefusalKind::Invalid,
        "events",
        format!(
            "{url:?} is not an SQS queue URL ({why}); expected https://sqs.<region>.amazonaws.com/<account>/<queue>"
        ),
    )
}

/// Read an SQS queue URL: `http(s)://host/<12-digit account>/<queue name>`.
///
/// # Errors
/// Anything else, with what was expected.
pub fn parse_queue_url(url: &str) -> Result<QueueUrl, ProviderError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| invalid(url, "not http(s)"))?;
    let mut parts = rest.split('/');
    let host = parts.next().unwrap_or_default();
    let account = parts.next().unwrap_or_default();
    let name = parts.next().unwrap_or_default();
    if parts.next().is_some() {
        return Err(invalid(url, "more than two path segments"));
    }
    if host.is_empty() || host.contains(['@', '?', '#']) {
        return Err(invalid(url, "no plain host"));
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(
            url,
            "the first path segment is not a 12-digit account",
        ));
    }
    if !crate::events::is_queue_name(name) {
        return Err(invalid(
            url,
            "the queue name is not 1–80 letters, digits, - or _",
        ));
    }
    let host = host.split(':').next().unwrap_or(host);
    let region = host
        .strip_prefix("sqs.")
        .and_then(|h| h.strip_suffix(".amazonaws.com"))
        .or_else(|| host.strip_suffix(".queue.amazonaws.com"))
        .map(str::to_string);
    Ok(QueueUrl {
        url: url.to_string(),
        account: account.to_string(),
        region,
    })
}

/// An SQS queue of CloudTrail events.
#[derive(Debug)]
pub struct SqsQueue {
    url: QueueUrl,
    scope: Scope,
    client: aws_sdk_sqs::Client,
    budget: Arc<Budget>,
    /// How long a received message stays hidden (seconds).
    visibility: i32,
}

impl SqsQueue {
    /// The queue at `url`, with `client` (tests, embedding).
    ///
    /// # Errors
    /// The URL is not a queue URL.
    pub fn new(
        url: &str,
        region: &str,
        client: aws_sdk_sqs::Client,
        budget: Arc<Budget>,
    ) -> Result<SqsQueue, ProviderError> {
        let url = parse_queue_url(url)?;
        Ok(SqsQueue {
            scope: Scope {
                account: url.account.clone(),
                region: region.to_string(),
            },
            url,
            client,
            budget,
            visibility: 20 * 60,
        })
    }

    /// The queue at `url` on the standard credential chain, in the region of the URL
    /// (or, for an endpoint override, `AWS_REGION` / `AWS_DEFAULT_REGION`).
    ///
    /// # Errors
    /// The URL is not a queue URL, or names no region and none is configured.
    pub async fn from_env(url: &str, budget: Arc<Budget>) -> Result<SqsQueue, ProviderError> {
        let parsed = parse_queue_url(url)?;
        let region = match parsed.region.clone().or_else(|| {
            std::env::var("AWS_REGION")
                .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                .ok()
                .filter(|r| !r.is_empty())
        }) {
            Some(r) => r,
            None => {
                return Err(invalid(
                    url,
                    "its host names no region and neither AWS_REGION nor AWS_DEFAULT_REGION is set",
                ));
            }
        };
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.clone()))
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .load()
            .await;
        tracing::info!(queue = %url, region = %region, endpoint = conf.endpoint_url().unwrap_or("default"), "change-event queue configured");
        SqsQueue::new(url, &region, aws_sdk_sqs::Client::new(&conf), budget)
    }

    /// How long a received message stays hidden before it is delivered again, when its
    /// reconcile did not record it (clamped to SQS's 0 s – 12 h; every receive asks for
    /// it, whatever the queue's default).
    pub fn with_visibility(mut self, d: Duration) -> SqsQueue {
        self.visibility = d.as_secs().min(12 * 3600) as i32;
        self
    }
}

#[async_trait::async_trait]
impl EventQueue for SqsQueue {
    fn name(&self) -> &str {
        &self.url.url
    }

    async fn receive(&self, wait: Duration) -> Result<Vec<QueueMessage>, ProviderError> {
        let wait = wait.as_secs().min(20) as i32;
        let out = self
            .budget
            // One try: the loop polls again.
            .call_tries(1, &self.scope, Family::Sqs, "sqs", "ReceiveMessage", || {
                self.client
                    .receive_message()
                    .queue_url(&self.url.url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(wait)
                    .visibility_timeout(self.visibility)
                    .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                    .send()
            })
            .await?;
        let mut messages = Vec::new();
        for m in out.messages() {
            let (Some(id), Some(receipt)) = (m.message_id(), m.receipt_handle()) else {
                tracing::warn!(queue = %self.url.url, "a message without an id or receipt handle cannot be deleted; skipped");
                continue;
            };
            let sent_ms = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .and_then(|t| t.parse::<i64>().ok());
            messages.push(QueueMessage {
                id: id.to_string(),
                receipt: receipt.to_string(),
                body: m.body().unwrap_or_default().to_string(),
                sent_ms,
            });
        }
        Ok(messages)
    }

    async fn delete(&self, messages: &[(String, String)]) -> Result<usize, ProviderError> {
        let mut refused = 0;
        for chunk in messages.chunks(10) {
            let entries: Vec<DeleteMessageBatchRequestEntry> = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, (_, receipt))| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .build()
                        .ok()
                })
                .collect();
            refused += chunk.len() - entries.len();
            let out = self
                .budget
                .call(
                    &self.scope,
                    Family::Sqs,
                    "sqs",
                    "DeleteMessageBatch",
                    || {
                        self.client
                            .delete_message_batch()
                            .queue_url(&self.url.url)
                            .set_entries(Some(entries.clone()))
                            .send()
                    },
                )
                .await?;
            for f in out.failed() {
                tracing::warn!(queue = %self.url.url, code = f.code(), message = f.message().unwrap_or_default(), "a message could not be deleted; it comes back and is handled again");
            }
            refused += out.failed().len();
        }
        Ok(refused)
    }

    fn parse(&self, body: &str) -> Result<ChangeEvent, Unusable> {
        parse_cloudtrail(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls() {
        let q = parse_queue_url("https://sqs.eu-west-1.amazonaws.com/123456789012/palisade-events")
            .unwrap();
        assert_eq!(q.region.as_deref(), Some("eu-west-1"));
        assert_eq!(q.account, "123456789012");
        let q = parse_queue_url("http://127.0.0.1:5000/123456789012/q.fifo").unwrap();
        assert_eq!(q.region, None);
        assert_eq!(
            parse_queue_url("https://eu-west-1.queue.amazonaws.com/123456789012/q")
                .unwrap()
                .region
                .as_deref(),
            Some("eu-west-1")
        );
        for bad in [
            "sqs.eu-west-1.amazonaws.com/123456789012/q",
            "https://sqs.eu-west-1.amazonaws.com/12345/q",
            "https://sqs.eu-west-1.amazonaws.com/123456789012/",
            "https://sqs.eu-west-1.amazonaws.com/123456789012/q/extra",
            "https://sqs.eu-west-1.amazonaws.com/123456789012/q?x=1",
            "https://user@evil/123456789012/q",
        ] {
            let e = parse_queue_url(bad).unwrap_err().to_string();
            assert!(e.contains("not an SQS queue URL"), "{bad}: {e}");
        }
    }
}
