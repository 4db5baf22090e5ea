//! One HTTP stack for every ARM call: `azure_mgmt_network`'s request builders and
//! Palisade's own typed calls (sites, subnets, operation polling) share the credential
//! and a pipeline whose per-try policy counts each call, honours `429 Retry-After` and
//! retries `RetryableErrorDueToAnotherOperation` — visibly, in the call counts.
//!
//! The SDK's own retry policy is switched off: it would hide retries from the counts.
//! Long-running operations are never awaited through the SDK (it waits 30 s between polls
//! when `Retry-After` is missing and drops the failed operation's error code); see
//! [`Arm::wait`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_core::headers::{HeaderName, Headers};
use azure_core::{
    BytesStream, ClientOptions, Context, Method, Pipeline, Policy, PolicyResult, Request, Response,
    RetryOptions, StatusCode, Url,
};
use governor::DefaultDirectRateLimiter;
use serde_json::Value;

use crate::provider::{CallCounter, CallOutcome, OwnRequests, ProviderError};

use super::AzureSettings;

const RETRY_AFTER: HeaderName = HeaderName::from_static("retry-after");
const ASYNC_OPERATION: HeaderName = HeaderName::from_static("azure-asyncoperation");
const LOCATION: HeaderName = HeaderName::from_static("location");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");

/// The ARM error code of a write refused because another operation on the resource runs.
pub const ANOTHER_OPERATION: &str = "RetryableErrorDueToAnotherOperation";

/// Client-side budget, counts, throttling and conflict retries, once per HTTP try.
pub(crate) struct ArmPolicy {
    pub counter: Arc<CallCounter>,
    pub settings: AzureSettings,
    /// (subscription, write) → limiter.
    limiters: std::sync::Mutex<HashMap<(String, bool), Arc<DefaultDirectRateLimiter>>>,
    /// The client request ids of Palisade's writes.
    own: Arc<Mutex<OwnRequests>>,
}

impl std::fmt::Debug for ArmPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArmPolicy")
            .field("rates", &self.settings.rates)
            .finish_non_exhaustive()
    }
}

/// The counted name of an ARM call: method and the last resource type in the path.
pub(crate) fn operation_name(method: &Method, path: &str) -> &'static str {
    let lower = path.to_ascii_lowercase();
    let segments: Vec<&str> = lower.split('/').filter(|s| !s.is_empty()).collect();
    let types = [
        "networksecuritygroups",
        "securityrules",
        "virtualnetworks",
        "subnets",
        "privateendpoints",
        "sites",
        "config",
        "eventtypes",
        "operations",
        "operationresults",
    ];
    // The last known type in the path, and whether the path ends at it (a list).
    let found = segments
        .iter()
        .enumerate()
        .rev()
        .find(|(_, s)| types.contains(s));
    let (ty, list) = match found {
        Some((i, s)) => (*s, i + 1 == segments.len()),
        None => ("other", false),
    };
    match (method.as_ref(), ty, list) {
        ("GET", "networksecuritygroups", true) => "GET networkSecurityGroups (list)",
        ("GET", "networksecuritygroups", false) => "GET networkSecurityGroups",
        ("PUT", "networksecuritygroups", _) => "PUT networkSecurityGroups",
        ("PATCH", "networksecuritygroups", _) => "PATCH networkSecurityGroups",
        ("DELETE", "networksecuritygroups", _) => "DELETE networkSecurityGroups",
        ("GET", "securityrules", true) => "GET securityRules (list)",
        ("GET", "securityrules", false) => "GET securityRules",
        ("PUT", "securityrules", _) => "PUT securityRules",
        ("DELETE", "securityrules", _) => "DELETE securityRules",
        ("GET", "virtualnetworks", true) => "GET virtualNetworks (list)",
        ("GET", "virtualnetworks", false) => "GET virtualNetworks",
        ("GET", "subnets", true) => "GET subnets (list)",
        ("GET", "subnets", false) => "GET subnets",
        ("PUT", "subnets", _) => "PUT subnets",
        ("GET", "privateendpoints", true) => "GET privateEndpoints (list)",
        ("GET", "privateendpoints", false) => "GET privateEndpoints",
        ("PUT", "privateendpoints", _) => "PUT privateEndpoints",
        ("PATCH", "privateendpoints", _) => "PATCH privateEndpoints",
        ("DELETE", "privateendpoints", _) => "DELETE privateEndpoints",
        ("GET", "sites", true) => "GET sites (list)",
        ("GET", "sites", false) => "GET sites",
        ("PUT", "sites", _) => "PUT sites",
        ("PATCH", "sites", _) => "PATCH sites",
        ("GET", "config", _) => "GET sites/config",
        ("GET", "eventtypes", _) => "GET activityLog",
        ("PATCH", "config", _) => "PATCH sites/config",
        ("PUT", "config", _) => "PUT sites/config",
        ("GET", "operations", _) => "GET operations (poll)",
        ("GET", "operationresults", _) => "GET operationResults (poll)",
        ("GET", _, _) => "GET other",
        _ => "WRITE other",
    }
}

/// Seconds from a `Retry-After` header (ARM sends delta-seconds).
pub(crate) fn retry_after(headers: &Headers) -> Option<Duration> {
    headers
        .get_optional_str(&RETRY_AFTER)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[async_trait::async_trait]
impl Policy for ArmPolicy {
    async fn send(
        &self,
        ctx: &Context,
        request: &mut Request,
        next: &[Arc<dyn Policy>],
    ) -> PolicyResult {
        let op = operation_name(request.method(), request.url().path());
        let limiter = self.limiter(request.method(), request.url().path());
        let mut attempt = 0usize;
        let mut delays = crate::rate::backoff(self.settings.conflict_delay, usize::MAX);
        let mut backoff = move || delays.next().unwrap_or(Duration::from_secs(30));
        loop {
            limiter.until_ready().await;
            if *request.method() != Method::Get {
                // Every try of every write (SDK or raw) names itself, so that the Activity
                // Log tells Palisade's own changes from anyone else's.
                let id = self.own.lock().unwrap_or_else(|e| e.into_inner()).issue();
                request.insert_header(azure_core::headers::CLIENT_REQUEST_ID, id);
            }
            let result = next[0].send(ctx, request, &next[1..]).await;
            let response = match result {
                Ok(r) => r,
                Err(e) => {
                    self.counter.record("arm", op, CallOutcome::Error);
                    if *e.kind() == azure_core::error::ErrorKind::Io
                        && attempt < self.settings.transport_retries
                    {
                        attempt += 1;
                        tokio::time::sleep(backoff()).await;
                        continue;
                    }
                    return Err(e);
                }
            };
            let status = response.status();
            if status == StatusCode::TooManyRequests {
                self.counter.record("arm", op, CallOutcome::Throttled);
                if attempt < self.settings.throttle_retries {
                    attempt += 1;
                    let wait = retry_after(response.headers())
                        .unwrap_or(self.settings.poll_interval)
                        .min(self.settings.max_retry_after);
                    tracing::debug!(
                        operation = op,
                        wait_ms = wait.as_millis() as u64,
                        "ARM throttled the call; waiting as told"
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Ok(response);
            }
            if status == StatusCode::Conflict {
                let (status, headers, body) = response.deconstruct();
                let bytes = body.collect().await?;
                let code = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
                self.counter.record("arm", op, CallOutcome::Error);
                if code.as_deref() == Some(ANOTHER_OPERATION)
                    && attempt < self.settings.conflict_retries
                {
                    attempt += 1;
                    let wait = retry_after(&headers).unwrap_or_else(&mut backoff);
                    tracing::debug!(
                        operation = op,
                        "another operation runs on the resource; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
                return Ok(Response::new(
                    status,
                    headers,
                    Box::pin(BytesStream::new(bytes)),
                ));
            }
            if matches!(status as u16, 500..=599) && attempt < self.settings.transport_retries {
                self.counter.record("arm", op, CallOutcome::Error);
                attempt += 1;
                tokio::time::sleep(backoff()).await;
                continue;
            }
            let outcome = if (status as u16) < 400 {
                CallOutcome::Ok
            } else {
                CallOutcome::Error
            };
            self.counter.record("arm", op, outcome);
            return Ok(response);
        }
    }
}

impl ArmPolicy {
    pub fn new(
        counter: Arc<CallCounter>,
        settings: AzureSettings,
        own: Arc<Mutex<OwnRequests>>,
    ) -> ArmPolicy {
        ArmPolicy {
            counter,
            settings,
            limiters: Default::default(),
            own,
        }
    }

    /// The bucket a call drains: its subscription's reads or writes.
    fn limiter(&self, method: &Method, path: &str) -> Arc<DefaultDirectRateLimiter> {
        let subscription = path
            .split('/')
            .nth(2)
            .unwrap_or_default()
            .to_ascii_lowercase();
        let write = *method != Method::Get;
        let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        map.entry((subscription, write))
            .or_insert_with(|| {
                let rates = self.settings.rates;
                Arc::new(if write { rates.write } else { rates.read }.limiter())
            })
            .clone()
    }
}

/// Client options for both the SDK client and Palisade's own calls: no SDK retries, the
/// counting policy per try.
pub(crate) fn client_options(policy: Arc<ArmPolicy>) -> ClientOptions {
    let mut options = ClientOptions::default().retry(RetryOptions::none());
    options.per_retry_policies_mut().push(policy);
    options
}

/// What an ARM answer carried that Palisade keeps.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: Headers,
    pub body: Value,
}

impl Answer {
    pub fn request_id(&self) -> Option<String> {
        self.headers.get_optional_string(&REQUEST_ID)
    }
}

/// The request id of an SDK response.
pub(crate) fn request_id_of(headers: &Headers) -> Option<String> {
    headers.get_optional_string(&REQUEST_ID)
}

/// The ARM connection of one provider: SDK client, raw pipeline, credential.
#[derive(Clone)]
pub(crate) struct Arm {
    pub network: azure_mgmt_network::package_2024_03::Client,
    pipeline: Pipeline,
    credential: Arc<dyn azure_core::auth::TokenCredential>,
    pub endpoint: Url,
    scopes: Vec<String>,
    settings: AzureSettings,
    pub own: Arc<Mutex<OwnRequests>>,
}

impl std::fmt::Debug for Arm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arm")
            .field("endpoint", &self.endpoint.as_str())
            .finish()
    }
}

impl Arm {
    pub fn new(
        endpoint: Url,
        credential: Arc<dyn azure_core::auth::TokenCredential>,
        counter: Arc<CallCounter>,
        settings: AzureSettings,
    ) -> Result<Arm, ProviderError> {
        let scope = endpoint
            .join(azure_core::auth::DEFAULT_SCOPE_SUFFIX)
            .map_err(|e| ProviderError::Identity {
                target: "azure".into(),
                message: format!("ARM endpoint {endpoint}: {e}"),
            })?
            .to_string();
        let own: Arc<Mutex<OwnRequests>> = Arc::default();
        let policy = Arc::new(ArmPolicy::new(counter, settings.clone(), own.clone()));
        let network = azure_mgmt_network::package_2024_03::Client::new(
            endpoint.clone(),
            credential.clone(),
            vec![scope.clone()],
            client_options(policy.clone()),
        );
        let pipeline = Pipeline::new(
            option_env!("CARGO_PKG_NAME"),
            option_env!("CARGO_PKG_VERSION"),
            client_options(policy),
            Vec::new(),
            Vec::new(),
        );
        Ok(Arm {
            network,
            pipeline,
            credential,
            endpoint,
            scopes: vec![scope],
            settings,
            own,
        })
    }

    /// The URL of an ARM path with its api-version.
    pub fn url(&self, path: &str, api_version: &str) -> Result<Url, ProviderError> {
        let mut url = self.endpoint.clone();
        url.set_path(path);
        url.query_pairs_mut()
            .append_pair("api-version", api_version);
        Ok(url)
    }

    /// One raw call on the shared stack. Error statuses come back as errors carrying the
    /// ARM code and message.
    pub async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Answer, ProviderError> {
        self.send(method, url, body, None).await
    }

    /// The PUT of a read-modify-write: `If-Match` the etag that was read, so that a
    /// change made in between by someone else is not overwritten (ARM answers 412).
    pub async fn put_if_match(
        &self,
        url: Url,
        body: &Value,
        etag: Option<&str>,
    ) -> Result<Answer, ProviderError> {
        self.send(Method::Put, url, Some(body), etag).await
    }

    /// A PATCH `If-Match` the etag read (see [`Arm::put_if_match`]); without an etag,
    /// unconditional.
    pub async fn patch_if_match(
        &self,
        url: Url,
        body: &Value,
        etag: Option<&str>,
    ) -> Result<Answer, ProviderError> {
        self.send(Method::Patch, url, Some(body), etag).await
    }

    async fn send(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Answer, ProviderError> {
        let op = operation_name(&method, url.path());
        let token = self
            .credential
            .get_token(&self.scopes.iter().map(String::as_str).collect::<Vec<_>>())
            .await
            .map_err(|e| map_error(op, e))?;
        let mut req = Request::new(url, method);
        req.insert_header(
            azure_core::headers::AUTHORIZATION,
            format!("Bearer {}", token.token.secret()),
        );
        if let Some(etag) = if_match {
            req.insert_header(azure_core::headers::IF_MATCH, etag.to_string());
        }

        match body {
            Some(b) => {
                req.insert_header(azure_core::headers::CONTENT_TYPE, "application/json");
                req.set_body(serde_json::to_vec(b).map_err(|e| ProviderError::Api {
                    service: "arm".into(),
                    operation: op.into(),
                    code: "SerializationError".into(),
                    message: e.to_string(),
                    request_id: None,
                    retryable: false,
                })?);
            }
            None => req.set_body(azure_core::EMPTY_BODY),
        }
        let response = self
            .pipeline
            .send(&Context::default(), &mut req)
            .await
            .map_err(|e| map_error(op, e))?;
        let (status, headers, body) = response.deconstruct();
        let bytes = body.collect().await.map_err(|e| map_error(op, e))?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| ProviderError::Api {
                service: "arm".into(),
                operation: op.into(),
                code: "InvalidResponse".into(),
                message: format!("not JSON: {e}"),
                request_id: headers.get_optional_string(&REQUEST_ID),
                retryable: true,
            })?
        };
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    /// Every item of a paged ARM list, following absolute `nextLink`s.
    pub async fn list_all(&self, first: Url) -> Result<Vec<Value>, ProviderError> {
        let mut items = Vec::new();
        let mut next = Some(first);
        while let Some(url) = next.take() {
            let answer = self.call(Method::Get, url, None).await?;
            if let Some(v) = answer.body["value"].as_array() {
                items.extend(v.iter().cloned());
            }
            if let Some(link) = answer.body["nextLink"].as_str().filter(|l| !l.is_empty()) {
                next = Some(Url::parse(link).map_err(|e| ProviderError::Api {
                    service: "arm".into(),
                    operation: "nextLink".into(),
                    code: "InvalidNextLink".into(),
                    message: format!("{link}: {e}"),
                    request_id: None,
                    retryable: false,
                })?);
            }
        }
        Ok(items)
    }

    /// Follow the long-running operation a write started (see [`Arm::wait`]) and return
    /// the write's request id, for the audit trail.
    pub async fn settle(
        &self,
        operation: &str,
        headers: &Headers,
    ) -> Result<Option<String>, ProviderError> {
        self.wait(operation, headers).await?;
        Ok(request_id_of(headers))
    }

    /// Follow a long-running operation to its end: `Azure-AsyncOperation` when given
    /// (status body), else `Location` (202 until done). Waits what `Retry-After` says, or
    /// the configured poll interval — never the SDK's 30 s. A failed operation keeps its
    /// ARM error code and message.
    pub async fn wait(&self, operation: &str, headers: &Headers) -> Result<(), ProviderError> {
        let (url, by_status) = if let Some(u) = headers.get_optional_str(&ASYNC_OPERATION) {
            (u.to_string(), true)
        } else if let Some(u) = headers.get_optional_str(&LOCATION) {
            (u.to_string(), false)
        } else {
            return Ok(());
        };
        let url = Url::parse(&url).map_err(|e| ProviderError::Api {
            service: "arm".into(),
            operation: operation.into(),
            code: "InvalidOperationUrl".into(),
            message: format!("{url}: {e}"),
            request_id: None,
            retryable: false,
        })?;
        let started = Instant::now();
        let mut delay = retry_after(headers).unwrap_or(self.settings.poll_interval);
        loop {
            if started.elapsed() > self.settings.operation_timeout {
                return Err(ProviderError::Api {
                    service: "arm".into(),
                    operation: operation.into(),
                    code: "OperationTimedOut".into(),
                    message: format!(
                        "the operation did not finish within {:?}; it may still complete",
                        self.settings.operation_timeout
                    ),
                    request_id: None,
                    retryable: true,
                });
            }
            tokio::time::sleep(delay.min(self.settings.max_retry_after)).await;
            let answer = self.call(Method::Get, url.clone(), None).await?;
            delay = retry_after(&answer.headers).unwrap_or(self.settings.poll_interval);
            if by_status {
                let status = answer.body["status"].as_str().unwrap_or("InProgress");
                match status {
                    "Succeeded" => return Ok(()),
                    "Failed" | "Canceled" => {
                        let err = &answer.body["error"];
                        return Err(ProviderError::Api {
                            service: "arm".into(),
                            operation: operation.into(),
                            code: err["code"].as_str().unwrap_or(status).to_string(),
                            message: err["message"]
                                .as_str()
                                .unwrap_or("the long-running operation ended without a message")
                                .to_string(),
                            request_id: answer.request_id(),
                            retryable: err["code"].as_str() == Some(ANOTHER_OPERATION),
                        });
                    }
                    _ => continue,
                }
            } else if answer.status != StatusCode::Accepted {
                return Ok(());
            }
        }
    }
}

/// An `azure_core` error as a [`ProviderError`], keeping ARM's code and message.
pub(crate) fn map_error(operation: &str, e: azure_core::Error) -> ProviderError {
    use azure_core::error::ErrorKind;
    if let Some(http) = e.as_http_error() {
        let status = http.status();
        let code = http
            .error_code()
            .map(str::to_string)
            .unwrap_or_else(|| (status as u16).to_string());
        if status == StatusCode::TooManyRequests {
            return ProviderError::Throttled {
                service: "arm".into(),
                code,
                retry_after_secs: None,
            };
        }
        let retryable = matches!(status as u16, 500..=599)
            || matches!(
                code.as_str(),
                ANOTHER_OPERATION | "AnotherOperationInProgress" | "OperationTimedOut"
            );
        return ProviderError::Api {
            service: "arm".into(),
            operation: operation.into(),
            code,
            message: http
                .error_message()
                .map(str::to_string)
                .unwrap_or_else(|| format!("HTTP {}", status as u16)),
            request_id: None,
            retryable,
        };
    }
    match e.kind() {
        ErrorKind::Io => ProviderError::Transport {
            service: "arm".into(),
            source: Box::new(e),
        },
        ErrorKind::Credential => ProviderError::Identity {
            target: "azure".into(),
            message: format!("no Azure credential: {e}"),
        },
        kind => ProviderError::Api {
            service: "arm".into(),
            operation: operation.into(),
            code: format!("{kind:?}"),
            message: e.to_string(),
            request_id: None,
            retryable: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names() {
        let cases = [
            (
                Method::Get,
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups",
                "GET networkSecurityGroups (list)",
            ),
            (
                Method::Put,
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/networkSecurityGroups/n/securityRules/r",
                "PUT securityRules",
            ),
            (
                Method::Get,
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Network/virtualNetworks/v/subnets/x",
                "GET subnets",
            ),
            (
                Method::Get,
                "/subscriptions/s/providers/Microsoft.Network/locations/w/operations/1",
                "GET operations (poll)",
            ),
            (
                Method::Put,
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/f",
                "PUT sites",
            ),
            (
                Method::Get,
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/f/config/web",
                "GET sites/config",
            ),
            (
                Method::Patch,
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/f/config/web",
                "PATCH sites/config",
            ),
        ];
        for (m, p, want) in cases {
            assert_eq!(operation_name(&m, p), want, "{p}");
        }
    }
}
