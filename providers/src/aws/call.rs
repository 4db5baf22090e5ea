//! Every AWS call goes through [`Budget::call`]: each *attempt* waits for the rate limiter
//! of its API family and is counted by service, operation and outcome, and the SDK's
//! error becomes a [`ProviderError`] that keeps the AWS error code, message and request
//! id.
//!
//! Retries of transient failures (throttling, 5xx, timeouts and connection errors) are
//! made here, not by the SDK (whose retries are off): so that every retry is paced by
//! the same budget and visible in `api_calls`, like Azure's. Up to
//! [`super::AwsSettings::max_attempts`] attempts, waiting `Retry-After` when AWS sends
//! one, else the shared backoff ([`crate::rate::backoff`]).

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::operation::RequestId;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use governor::DefaultDirectRateLimiter;

use crate::provider::{CallCounter, CallOutcome, ProviderError};

/// The request buckets AWS throttles separately, per account and region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// EC2 `Describe*` (the "non-mutating actions" bucket).
    Ec2Read,
    /// EC2 mutating actions.
    Ec2Write,
    /// Lambda `List*` / `Get*`.
    LambdaRead,
    /// Lambda `Update*` (shared with every other writer of the account's functions).
    LambdaWrite,
    /// Resource Groups Tagging API.
    Tagging,
    /// STS.
    Sts,
    /// CloudTrail `LookupEvents` (2 per second per account and region, AWS's limit).
    CloudTrail,
    /// SQS: the change-event queue (long polls and deletes).
    Sqs,
}

impl Family {
    /// Every family, in display order.
    pub const ALL: [Family; 8] = [
        Family::Ec2Read,
        Family::Ec2Write,
        Family::LambdaRead,
        Family::LambdaWrite,
        Family::Tagging,
        Family::Sts,
        Family::CloudTrail,
        Family::Sqs,
    ];

    /// The name used in settings (`ec2-read=20/50`).
    pub fn name(self) -> &'static str {
        match self {
            Family::Ec2Read => "ec2-read",
            Family::Ec2Write => "ec2-write",
            Family::LambdaRead => "lambda-read",
            Family::LambdaWrite => "lambda-write",
            Family::Tagging => "tagging",
            Family::Sts => "sts",
            Family::CloudTrail => "cloudtrail",
            Family::Sqs => "sqs",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub use crate::rate::Rate;

/// Client-side rate limits, one per [`Family`]. The defaults stay well below AWS's
/// documented account-wide buckets (EC2 non-mutating: 20/s refill; mutating: 5/s;
/// Lambda control plane: 15/s), so that a reconcile leaves room for everyone else.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits(pub HashMap<Family, Rate>);

impl Default for RateLimits {
    fn default() -> Self {
        let r = |per_second, burst| Rate { per_second, burst };
        RateLimits(HashMap::from([
            (Family::Ec2Read, r(10.0, 20)),
            (Family::Ec2Write, r(3.0, 10)),
            (Family::LambdaRead, r(8.0, 15)),
            (Family::LambdaWrite, r(5.0, 10)),
            (Family::Tagging, r(5.0, 10)),
            (Family::Sts, r(2.0, 5)),
            (Family::CloudTrail, r(2.0, 2)),
            (Family::Sqs, r(20.0, 20)),
        ]))
    }
}

impl RateLimits {
    /// The limit of `family`.
    pub fn get(&self, family: Family) -> Rate {
        self.0.get(&family).copied().unwrap_or(Rate {
            per_second: 1.0,
            burst: 1,
        })
    }
}

impl FromStr for RateLimits {
    type Err = String;

    /// `ec2-read=20/50,lambda-write=2/4`: the families named are changed, the rest keep
    /// their defaults.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut limits = RateLimits::default();
        let names = Family::ALL.map(Family::name);
        for (name, rate) in crate::rate::parse_rates(s, &names)? {
            if let Some(family) = Family::ALL.into_iter().find(|f| f.name() == name) {
                limits.0.insert(family, rate);
            }
        }
        Ok(limits)
    }
}

type Key = (String, String, Family);

/// Rate limiters per (account, region, family), shared by every target in the same
/// account and region, and the call counter.
pub struct Budget {
    limits: RateLimits,
    /// Attempts per call (1: no retries).
    max_attempts: u32,
    /// First delay between attempts.
    retry_delay: std::time::Duration,
    limiters: Mutex<HashMap<Key, Arc<DefaultDirectRateLimiter>>>,
    pub(crate) counter: CallCounter,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("limits", &self.limits)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

/// Where a call is made: the account and region whose buckets it drains.
#[derive(Debug, Clone)]
pub struct Scope {
    pub account: String,
    pub region: String,
}

impl Budget {
    pub fn new(limits: RateLimits, max_attempts: u32, retry_delay: std::time::Duration) -> Budget {
        Budget {
            limits,
            max_attempts: max_attempts.max(1),
            retry_delay,
            limiters: Mutex::new(HashMap::new()),
            counter: CallCounter::default(),
        }
    }

    fn limiter(&self, scope: &Scope, family: Family) -> Arc<DefaultDirectRateLimiter> {
        let key = (scope.account.clone(), scope.region.clone(), family);
        let mut map = self.limiters.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key)
            .or_insert_with(|| Arc::new(self.limits.get(family).limiter()))
            .clone()
    }

    /// Make the call `attempt` builds: each attempt waits for the family's budget and
    /// is counted; transient failures are retried (see the module doc).
    pub async fn call<T, E, F>(
        &self,
        scope: &Scope,
        family: Family,
        service: &'static str,
        operation: &'static str,
        attempt: impl Fn() -> F,
    ) -> Result<T, ProviderError>
    where
        F: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        self.call_tries(
            self.max_attempts,
            scope,
            family,
            service,
            operation,
            attempt,
        )
        .await
    }

    /// [`Budget::call`] with at most `tries` attempts (1: a call whose caller asks
    /// again later anyway, such as a CloudTrail lookup).
    pub async fn call_tries<T, E, F>(
        &self,
        tries: u32,
        scope: &Scope,
        family: Family,
        service: &'static str,
        operation: &'static str,
        attempt: impl Fn() -> F,
    ) -> Result<T, ProviderError>
    where
        F: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let max_attempts = tries.clamp(1, self.max_attempts);
        let limiter = self.limiter(scope, family);
        let mut delays = crate::rate::backoff(self.retry_delay, usize::MAX);
        let mut attempts = 0;
        loop {
            attempts += 1;
            limiter.until_ready().await;
            let e = match attempt().await {
                Ok(out) => {
                    self.counter.record(service, operation, CallOutcome::Ok);
                    return Ok(out);
                }
                Err(e) => e,
            };
            let again = transient(&e) && attempts < max_attempts;
            let err = map_error(service, operation, e);
            let outcome = if matches!(err, ProviderError::Throttled { .. }) {
                CallOutcome::Throttled
            } else {
                CallOutcome::Error
            };
            self.counter.record(service, operation, outcome);
            if !again {
                tracing::debug!(service, operation, attempts, error = %err, "AWS call failed");
                return Err(err);
            }
            let wait = match &err {
                ProviderError::Throttled {
                    retry_after_secs: Some(s),
                    ..
                } => std::time::Duration::from_secs(*s).min(std::time::Duration::from_secs(30)),
                _ => delays.next().unwrap_or(std::time::Duration::from_secs(30)),
            };
            tracing::debug!(service, operation, attempts, error = %err, wait_ms = wait.as_millis() as u64, "AWS call failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

/// Whether the same request may succeed if sent again soon: throttling, a 5xx, a
/// timeout or a connection that failed (what the SDK's standard mode retries).
fn transient<E>(err: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(_) => {
            let status = err.raw_response().map(|r| r.status().as_u16());
            status.is_some_and(|s| s == 429 || s >= 500)
                || err.code().is_some_and(|c| THROTTLING.contains(&c))
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::DispatchFailure(d) => d.is_io() || d.is_timeout(),
        _ => false,
    }
}

/// AWS error codes that mean "slow down".
const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "SlowDown",
];

/// AWS error codes after which the same request may succeed later.
const RETRYABLE: &[&str] = &[
    "ResourceConflictException",
    "DependencyViolation",
    "IncorrectState",
    "ServiceUnavailable",
    "ServiceException",
    "InternalError",
    "InternalFailure",
    "Unavailable",
];

/// Turn an SDK error into a [`ProviderError`], keeping code, message and request id.
pub fn map_error<E>(
    service: &'static str,
    operation: &'static str,
    err: SdkError<E, HttpResponse>,
) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(_) => {
            let code = err.code().unwrap_or("Unknown").to_string();
            let status = err.raw_response().map(|r| r.status().as_u16());
            let retry_after_secs = err
                .raw_response()
                .and_then(|r| r.headers().get("retry-after"))
                .and_then(|v| v.trim().parse().ok());
            if THROTTLING.contains(&code.as_str()) || status == Some(429) {
                return ProviderError::Throttled {
                    service: service.to_string(),
                    code,
                    retry_after_secs,
                };
            }
            let message = err.message().unwrap_or_default().to_string();
            ProviderError::Api {
                service: service.to_string(),
                operation: operation.to_string(),
                retryable: RETRYABLE.contains(&code.as_str()) || status.is_some_and(|s| s >= 500),
                message: if message.is_empty() {
                    status.map(|s| format!("HTTP {s}")).unwrap_or_default()
                } else {
                    message
                },
                request_id: err.request_id().map(str::to_string),
                code,
            }
        }
        _ => ProviderError::Transport {
            service: service.to_string(),
            source: Box::new(err),
        },
    }
}

/// The error code of a [`ProviderError::Api`], if it is one.
pub fn code_of(err: &ProviderError) -> Option<&str> {
    match err {
        ProviderError::Api { code, .. } => Some(code),
        _ => None,
    }
}

/// The request id of a successful output.
pub fn request_id<T: RequestId>(out: &T) -> Vec<String> {
    out.request_id().map(str::to_string).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse_and_keep_defaults() {
        let l: RateLimits = "ec2-read=20/50, lambda-write=0.5/1".parse().unwrap();
        assert_eq!(
            l.get(Family::Ec2Read),
            Rate {
                per_second: 20.0,
                burst: 50
            }
        );
        assert_eq!(l.get(Family::LambdaWrite).per_second, 0.5);
        assert_eq!(
            l.get(Family::Tagging),
            RateLimits::default().get(Family::Tagging)
        );
        for bad in [
            "ec2=1/1",
            "ec2-read=fast/1",
            "ec2-read=1",
            "ec2-read=0/1",
            "ec2-read=1/0",
        ] {
            let err = bad.parse::<RateLimits>().unwrap_err();
            assert!(err.contains(bad.split('=').next().unwrap()), "{bad}: {err}");
        }
    }

    #[test]
    fn limiter_is_per_account_region_and_family() {
        let budget = Budget::new(
            "ec2-read=0.01/2".parse().unwrap(),
            1,
            std::time::Duration::ZERO,
        );
        let scope = |a: &str, r: &str| Scope {
            account: a.into(),
            region: r.into(),
        };
        let l = budget.limiter(&scope("1", "r"), Family::Ec2Read);
        assert!(l.check().is_ok());
        assert!(l.check().is_ok());
        assert!(l.check().is_err(), "the burst of 2 is spent");
        // The same key shares the bucket; other keys have their own.
        assert!(
            budget
                .limiter(&scope("1", "r"), Family::Ec2Read)
                .check()
                .is_err()
        );
        assert!(
            budget
                .limiter(&scope("2", "r"), Family::Ec2Read)
                .check()
                .is_ok()
        );
        assert!(
            budget
                .limiter(&scope("1", "q"), Family::Ec2Read)
                .check()
                .is_ok()
        );
        assert!(
            budget
                .limiter(&scope("1", "r"), Family::Ec2Write)
                .check()
                .is_ok()
        );
    }
}
