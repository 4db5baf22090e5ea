//! Client-side rate limits shared by the cloud providers: a sustained rate and a burst per
//! API bucket, written `NAME=PER_SECOND/BURST` in settings, enforced with governor's GCRA;
//! and the one backoff both clouds' call layers wait by between attempts.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// A sustained rate and a burst, as `per_second/burst` (`20/50`, `0.5/1`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Calls per second, sustained.
    pub per_second: f64,
    /// Calls allowed at once after a quiet period.
    pub burst: u32,
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.per_second, self.burst)
    }
}

impl Rate {
    /// A limiter that lets this rate through.
    pub fn limiter(self) -> DefaultDirectRateLimiter {
        let period = Duration::from_secs_f64(1.0 / self.per_second);
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        RateLimiter::direct(quota)
    }
}

/// Delays between the attempts of one call: exponential from `first`, at most 30 s,
/// with jitter (backon's), at most `retries` of them. A delay the cloud asked for
/// (`Retry-After`) is used instead when there is one.
pub fn backoff(first: Duration, retries: usize) -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(first)
        .with_max_delay(Duration::from_secs(30).max(first))
        .with_max_times(retries)
        .with_jitter()
        .build()
}

/// Parse `a=20/50,b=2/4` where every name is one of `names`.
///
/// # Errors
/// A message naming the item and what was expected.
pub fn parse_rates(s: &str, names: &[&'static str]) -> Result<Vec<(&'static str, Rate)>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let expected = format!(
            "expected NAME=PER_SECOND/BURST, e.g. {}=20/50",
            names.first().copied().unwrap_or("name")
        );
        let (name, rate) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?}: {expected}"))?;
        let name = names
            .iter()
            .copied()
            .find(|n| *n == name.trim())
            .ok_or_else(|| {
                format!(
                    "{item:?}: unknown API family {name:?}; one of {}",
                    names.join(", ")
                )
            })?;
        let (per_second, burst) = rate
            .split_once('/')
            .ok_or_else(|| format!("{item:?}: {expected}"))?;
        let per_second: f64 = per_second
            .trim()
            .parse()
            .map_err(|_| format!("{item:?}: {expected}"))?;
        let burst: u32 = burst
            .trim()
            .parse()
            .map_err(|_| format!("{item:?}: {expected}"))?;
        if !(per_second.is_finite() && per_second > 0.0) || burst == 0 {
            return Err(format!("{item:?}: the rate and the burst must be positive"));
        }
        out.push((name, Rate { per_second, burst }));
    }
    Ok(out)
}
