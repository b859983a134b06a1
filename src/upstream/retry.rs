//! Retries: which requests may be sent again, the retry budget, and the backoff.
//!
//! Safe by default. A request that never reached the upstream (the connection could not be
//! opened) may be retried whatever its method. Otherwise only idempotent methods, or requests
//! carrying `Idempotency-Key`, are retried. Either way the body must have been kept in memory
//! (at most `max_body` bytes) so it can be replayed; a streamed body is never retried.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::config::model::{RetryConfig, RetryOn};

/// Counting and the size limit of a streamed request body.
#[derive(Debug, Default)]
pub struct StreamLimits {
    /// Bytes forwarded, for the access log.
    pub counter: Option<Arc<AtomicU64>>,
    /// The listener's `max_request_body`.
    pub limit: Option<u64>,
    /// Bytes seen so far.
    pub seen: u64,
}

/// The request body grew past the listener's `max_request_body` (keel answers 413).
#[derive(Debug, thiserror::Error)]
#[error("request body larger than max_request_body")]
pub struct BodyTooLarge;

/// The client's request body broke off or was malformed while it was being forwarded: the
/// client's fault, never the upstream's (keel answers 400 and the breaker does not count it).
#[derive(Debug, thiserror::Error)]
#[error("request body from the client failed")]
pub struct ClientBodyError(#[source] pub hyper::Error);

/// The body sent upstream: streamed from the client, or kept in memory for replay.
#[derive(Debug)]
pub enum UpstreamBody {
    /// The client's body, passed through as it arrives, counted and size-limited.
    Stream(Incoming, StreamLimits),
    /// A body held in memory (possibly empty); `None` once sent.
    Buffered(Option<Bytes>),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = crate::error::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            UpstreamBody::Stream(inner, limits) => {
                let polled = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    if let Some(data) = frame.data_ref() {
                        let len = data.len() as u64;
                        limits.seen += len;
                        if let Some(counter) = &limits.counter {
                            counter.fetch_add(len, Ordering::Relaxed);
                        }
                        if limits.limit.is_some_and(|max| limits.seen > max) {
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                        }
                    }
                }
                polled.map(|frame| {
                    frame.map(|r| r.map_err(|err| Box::new(ClientBodyError(err)) as _))
                })
            }
            UpstreamBody::Buffered(bytes) => Poll::Ready(
                bytes
                    .take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Stream(inner, _) => inner.is_end_stream(),
            UpstreamBody::Buffered(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Stream(inner, _) => inner.size_hint(),
            UpstreamBody::Buffered(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// Reads the client's body into memory when it is known to fit `max_body`; otherwise leaves it
/// streaming. Returns the body and whether it can be replayed.
pub async fn buffer_for_replay(
    body: Incoming,
    max_body: usize,
) -> Result<(UpstreamBody, bool), hyper::Error> {
    if body.is_end_stream() {
        return Ok((UpstreamBody::Buffered(Some(Bytes::new())), true));
    }
    match body.size_hint().exact() {
        Some(len) if len <= max_body as u64 => {
            let bytes = body.collect().await?.to_bytes();
            Ok((UpstreamBody::Buffered(Some(bytes)), true))
        }
        _ => Ok((UpstreamBody::Stream(body, StreamLimits::default()), false)),
    }
}

/// Methods that may be sent twice without changing the outcome (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    ) || headers.contains_key("idempotency-key")
}

/// How an attempt ended, as far as retries care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Never sent: the connection could not be opened.
    ConnectFailure,
    /// Sent; the connection broke before a response head.
    Reset,
    /// Sent; no head within `per_try_timeout`.
    Timeout,
    /// A response with this status.
    Status(u16),
}

/// Whether `outcome` may be retried under `policy` for this request.
pub fn should_retry(policy: &RetryConfig, outcome: AttemptOutcome, idempotent: bool) -> bool {
    let listed = |wanted: RetryOn| policy.on.contains(&wanted);
    match outcome {
        AttemptOutcome::ConnectFailure => listed(RetryOn::ConnectFailure),
        AttemptOutcome::Reset => idempotent && listed(RetryOn::Reset),
        AttemptOutcome::Timeout => idempotent && listed(RetryOn::Timeout),
        AttemptOutcome::Status(code) => {
            idempotent
                && (listed(RetryOn::Status(code)) || (code >= 500 && listed(RetryOn::ServerErrors)))
        }
    }
}

/// Full-jitter exponential backoff before retry number `retry` (1 for the first retry).
pub fn backoff(policy: &RetryConfig, retry: u32, unit_random: f64) -> Duration {
    let exp = retry.saturating_sub(1).min(16);
    let cap = policy
        .backoff
        .saturating_mul(1u32 << exp)
        .min(policy.max_backoff);
    cap.mul_f64(unit_random.clamp(0.0, 1.0))
}

/// `Retry-After` in seconds (the date form is not honoured).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Number of one-second buckets the budget remembers.
const BUDGET_SECONDS: usize = 10;

#[derive(Debug, Default, Clone, Copy)]
struct Second {
    epoch: u64,
    requests: u32,
    retries: u32,
}

/// The retry budget of a route: retries over the last ten seconds may not exceed
/// `budget_ratio` × requests plus `min_retries_per_second` × ten. Whatever the failure rate, the
/// upstream sees at most about `1 + budget_ratio` times the client's requests.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    started: Instant,
    // A short critical section per request on routes with retries; never held across await.
    seconds: Mutex<[Second; BUDGET_SECONDS]>,
}

impl RetryBudget {
    /// A budget with the policy's ratio and floor.
    pub fn new(policy: &RetryConfig) -> Self {
        RetryBudget {
            ratio: policy.budget_ratio,
            min_per_second: policy.min_retries_per_second,
            started: Instant::now(),
            seconds: Mutex::new([Second::default(); BUDGET_SECONDS]),
        }
    }

    fn epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.started).as_secs()
    }

    /// Counts a request (first attempt).
    pub fn deposit(&self, now: Instant) {
        let epoch = self.epoch(now);
        if let Ok(mut seconds) = self.seconds.lock() {
            current(&mut seconds, epoch).requests += 1;
        }
    }

    /// Takes one retry from the budget, if there is one left.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let epoch = self.epoch(now);
        let Ok(mut seconds) = self.seconds.lock() else {
            return false;
        };
        let (requests, retries) = seconds
            .iter()
            .filter(|s| epoch.saturating_sub(s.epoch) < BUDGET_SECONDS as u64)
            .fold((0u64, 0u64), |(q, r), s| {
                (q + u64::from(s.requests), r + u64::from(s.retries))
            });
        let allowed =
            self.ratio * requests as f64 + f64::from(self.min_per_second) * BUDGET_SECONDS as f64;
        if (retries as f64) < allowed {
            current(&mut seconds, epoch).retries += 1;
            true
        } else {
            false
        }
    }
}

fn current(seconds: &mut [Second; BUDGET_SECONDS], epoch: u64) -> &mut Second {
    let slot = &mut seconds[(epoch % BUDGET_SECONDS as u64) as usize];
    if slot.epoch != epoch {
        *slot = Second {
            epoch,
            ..Second::default()
        };
    }
    slot
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryConfig {
        RetryConfig {
            attempts: 3,
            per_try_timeout: Duration::from_secs(1),
            on: vec![
                RetryOn::ConnectFailure,
                RetryOn::Reset,
                RetryOn::Status(503),
            ],
            backoff: Duration::from_millis(25),
            max_backoff: Duration::from_millis(250),
            budget_ratio: 0.2,
            min_retries_per_second: 0,
            max_body: 1024,
        }
    }

    #[test]
    fn never_sent_is_always_retryable_sent_only_when_idempotent() {
        let p = policy();
        assert!(should_retry(&p, AttemptOutcome::ConnectFailure, false));
        assert!(!should_retry(&p, AttemptOutcome::Reset, false));
        assert!(should_retry(&p, AttemptOutcome::Reset, true));
        assert!(should_retry(&p, AttemptOutcome::Status(503), true));
        assert!(!should_retry(&p, AttemptOutcome::Status(500), true));
        assert!(
            !should_retry(&p, AttemptOutcome::Timeout, true),
            "timeout not listed"
        );
        let mut h = HeaderMap::new();
        assert!(!is_idempotent(&Method::POST, &h));
        h.insert("idempotency-key", "k1".parse().unwrap());
        assert!(is_idempotent(&Method::POST, &h));
    }

    #[test]
    fn backoff_is_capped_full_jitter() {
        let p = policy();
        assert_eq!(backoff(&p, 1, 1.0), Duration::from_millis(25));
        assert_eq!(backoff(&p, 3, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(&p, 10, 1.0), Duration::from_millis(250));
        assert_eq!(backoff(&p, 2, 0.0), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_ratio_of_requests_plus_floor() {
        let budget = RetryBudget::new(&policy());
        for _ in 0..100 {
            budget.deposit(Instant::now());
        }
        let granted = (0..100)
            .filter(|_| budget.try_withdraw(Instant::now()))
            .count();
        assert_eq!(granted, 20);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(
            !budget.try_withdraw(Instant::now()),
            "old requests no longer fund retries"
        );
        let floor = RetryBudget::new(&RetryConfig {
            min_retries_per_second: 1,
            ..policy()
        });
        assert_eq!(
            (0..50)
                .filter(|_| floor.try_withdraw(Instant::now()))
                .count(),
            10
        );
    }
}
