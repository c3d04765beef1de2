//! Client retries that cannot turn into a retry storm.
//!
//! Only RESOURCE_EXHAUSTED and UNAVAILABLE are retried (the server refused or could not take
//! the request, so it did no work). Each retry waits a jittered exponential backoff, a request
//! is sent at most `max_attempts` times, and a [`RetryBudget`] caps retries at a fraction of
//! first attempts (as Finagle's and gRPC's retry throttling do): a server that sheds half its
//! load sees at most `1 + ratio` times the offered load, not three times. A server's
//! `grpc-retry-pushback-ms` is honoured ([`crate::wire::grpc::Pushback`]): the retry waits at
//! least that long, and a negative or unreadable pushback means no retry at all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tonic::Code;

/// How requests are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per request, first one included (1 disables retries).
    pub max_attempts: u32,
    /// Retries allowed per first attempt, on average (0.1 = 10%).
    pub budget_ratio: f64,
    /// Backoff before the first retry (before jitter).
    pub base_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            budget_ratio: 0.1,
            base_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    /// Whether an answer with this code may be retried.
    pub fn retryable(code: Code) -> bool {
        matches!(code, Code::ResourceExhausted | Code::Unavailable)
    }

    /// Backoff before retry number `retry` (1-based): full jitter over an exponential cap.
    pub fn backoff(&self, retry: u32, rng: &mut impl Rng) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16));
        let cap = exp.min(self.max_backoff);
        cap.mul_f64(rng.random_range(0.0..=1.0))
    }
}

/// A token bucket of retries: each first attempt deposits `ratio` tokens, each retry spends one.
///
/// Every request of every sending thread deposits, so the tokens are an atomic (an `f64`'s
/// bits, updated by compare-and-swap) rather than a mutex on the request path.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    max_tokens: f64,
    tokens: AtomicU64,
}

impl RetryBudget {
    /// Tokens available at the start, so the first failures of a run can be retried.
    const INITIAL_TOKENS: f64 = 10.0;

    /// A budget allowing `ratio` retries per first attempt.
    pub fn new(ratio: f64) -> Self {
        let ratio = ratio.max(0.0);
        Self {
            ratio,
            max_tokens: (Self::INITIAL_TOKENS).max(ratio * 100.0),
            tokens: AtomicU64::new(
                if ratio > 0.0 {
                    Self::INITIAL_TOKENS
                } else {
                    0.0
                }
                .to_bits(),
            ),
        }
    }

    /// Records a first attempt.
    pub fn deposit(&self) {
        if self.ratio == 0.0 {
            return;
        }
        // A full bucket is left alone, so a healthy run does not write the shared line at all.
        let _ = self
            .tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let tokens = f64::from_bits(bits);
                (tokens < self.max_tokens)
                    .then(|| (tokens + self.ratio).min(self.max_tokens).to_bits())
            });
    }

    /// Takes a token for a retry; false when the budget is spent.
    pub fn try_withdraw(&self) -> bool {
        self.tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                let tokens = f64::from_bits(bits);
                (tokens >= 1.0).then(|| (tokens - 1.0).to_bits())
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_about_ratio_retries() {
        let budget = RetryBudget::new(0.1);
        let mut retries = 0;
        for _ in 0..10_000 {
            budget.deposit();
            // Every request fails and wants a retry.
            if budget.try_withdraw() {
                retries += 1;
            }
        }
        assert!((1000..=1011).contains(&retries), "{retries}");
        let none = RetryBudget::new(0.0);
        none.deposit();
        assert!(!none.try_withdraw());
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let policy = RetryPolicy::default();
        let mut rng = rand::rng();
        for retry in 1..20 {
            let b = policy.backoff(retry, &mut rng);
            assert!(b <= policy.max_backoff);
            assert!(b <= policy.base_backoff * (1 << (retry - 1).min(16)));
        }
        assert!(RetryPolicy::retryable(Code::ResourceExhausted));
        assert!(RetryPolicy::retryable(Code::Unavailable));
        assert!(!RetryPolicy::retryable(Code::InvalidArgument));
        assert!(!RetryPolicy::retryable(Code::DeadlineExceeded));
    }
}
