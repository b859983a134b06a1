//! An upstream: a named service with its endpoints, pool, bulkhead, breaker, balancer, health
//! checks and retries.
//!
//! [`Upstream::call`] is the one entry point, in this order: breaker admission (Open → 503
//! `circuit-open`, no socket, no slot) → bulkhead slot → for each attempt: pick an endpoint
//! (P2C, skipping ejected and unhealthy ones, avoiding the last one on a retry) → send before
//! the per-try deadline → record the outcome in breaker, balancer and ejection → retry if the
//! policy, the method, the replayable body, the budget and the deadline all allow it.
//! Failures come back as typed [`ProxyError`]s; this module never builds HTTP responses.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod balancer;
pub mod breaker;
pub mod bulkhead;
pub mod health;
pub mod pool;
pub mod retry;
pub mod tls;

use std::error::Error as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::config::model::{EndpointAddr, RetryConfig, UpstreamConfig};
use crate::error::ProxyError;
use crate::telemetry::metrics::UpstreamMetrics;
use crate::telemetry::trace::{self, RequestTrace, Tracing};
use balancer::{random_unit, Balancer, Endpoint, EndpointResult, EndpointState};
use breaker::{Admission, Breaker, BreakerState, CallResult, Transition};
use bulkhead::{Bulkhead, BulkheadPermit};
use pool::{ConnectError, Pool};
use retry::{AttemptOutcome, RetryBudget, UpstreamBody};

/// Longest wait for one DNS answer; a slow resolver must not hold up start or refresh.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters of what the upstream's protections did, for admin output and metrics.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    /// Requests rejected because the breaker was open.
    pub rejected_circuit_open: AtomicU64,
    /// Requests rejected by the bulkhead.
    pub rejected_bulkhead_full: AtomicU64,
    /// Retries sent.
    pub retries: AtomicU64,
    /// Retries wanted but refused by the budget.
    pub retries_budget_exhausted: AtomicU64,
    /// Endpoint ejections.
    pub ejections: AtomicU64,
    /// Breaker transitions.
    pub breaker_transitions: AtomicU64,
}

/// One upstream service.
#[derive(Debug)]
pub struct Upstream {
    /// Configured name.
    pub name: Arc<str>,
    /// Settings it was built from.
    pub config: UpstreamConfig,
    /// In-flight and queue limits.
    pub bulkhead: Bulkhead,
    /// Connections.
    pub pool: Pool,
    /// Endpoint choice and per-endpoint state.
    pub balancer: Balancer,
    /// Protection counters.
    pub stats: UpstreamStats,
    /// Prometheus handles.
    pub metrics: UpstreamMetrics,
    // Held for a few field updates per call; never across an await.
    breaker: Mutex<Breaker>,
    // Shared with the pool's connector, which maps dialed addresses back to host names.
    endpoints: Arc<ArcSwap<Vec<Endpoint>>>,
}

/// What a call needs from its route and request.
#[derive(Debug)]
pub struct CallOptions<'a> {
    /// The route deadline (covers every attempt).
    pub deadline: Instant,
    /// The route timeout, for the error message.
    pub timeout: Duration,
    /// Retry policy and budget, when the route retries.
    pub retry: Option<(&'a RetryConfig, &'a RetryBudget)>,
    /// Whether the method (or `Idempotency-Key`) allows resending a request that was sent.
    pub idempotent: bool,
    /// Key for the hash balancer.
    pub hash_key: Option<&'a [u8]>,
    /// The request's trace: each attempt gets a child span and injects its context.
    pub trace: Option<(&'a Tracing, &'a RequestTrace)>,
    /// Where the call reports attempts and the last endpoint, whatever the outcome.
    pub report: Option<&'a CallReport>,
}

/// What a call did, readable after it ended (also when it failed).
#[derive(Debug, Default)]
pub struct CallReport {
    attempts: AtomicU32,
    endpoint: Mutex<Option<SocketAddr>>,
}

impl CallReport {
    /// Attempts made.
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// The endpoint of the last attempt.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.endpoint.lock().ok().and_then(|e| *e)
    }

    fn attempt(&self, endpoint: SocketAddr) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.endpoint.lock() {
            *last = Some(endpoint);
        }
    }
}

/// A response head and what must live as long as its body.
#[derive(Debug)]
pub struct CallSuccess {
    /// The upstream's response.
    pub response: Response<Incoming>,
    /// The bulkhead slot, released when the body is done.
    pub permit: BulkheadPermit,
    /// The endpoint that answered.
    pub endpoint: SocketAddr,
    /// Attempts made (1 without retries).
    pub attempts: u32,
    /// For a gRPC response whose `grpc-status` comes in the trailers: the breaker and balancer
    /// verdict, given when the trailers arrive (see [`GrpcVerdict`]).
    pub grpc: Option<GrpcVerdict>,
}

/// The outcome of a gRPC call that is only known at its end: the response head is HTTP 200
/// and `grpc-status` arrives in the trailers. The response body calls [`GrpcVerdict::finish`]
/// with that status; the breaker and the endpoint's record are updated then, once. Dropped
/// without a verdict (the client went away first), it records nothing and gives back a
/// half-open probe slot it held.
#[derive(Debug)]
pub struct GrpcVerdict {
    upstream: Arc<Upstream>,
    endpoints: Arc<Vec<Endpoint>>,
    endpoint: Endpoint,
    latency: Duration,
    probe: bool,
    done: bool,
}

impl GrpcVerdict {
    /// Records the call with its final `grpc-status` (a missing one counts as success: the
    /// HTTP exchange completed and gRPC treats a missing status as an error of the client).
    pub fn finish(mut self, grpc_status: Option<u16>) {
        self.done = true;
        let failed = grpc_status.is_some_and(|code| self.upstream.is_failure_grpc(code));
        self.upstream.record(
            &self.endpoints,
            &self.endpoint,
            failed,
            self.latency,
            self.probe,
        );
    }
}

impl Drop for GrpcVerdict {
    fn drop(&mut self) {
        if !self.done && self.probe {
            if let Ok(mut breaker) = self.upstream.breaker.lock() {
                breaker.cancel_probe();
            }
        }
    }
}

/// The `grpc-status` of a header block (response head of a trailers-only response, or
/// trailers), when present and numeric.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Whether a response is gRPC (`content-type: application/grpc[+proto|...]`).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// Cancels a half-open probe that ends without a verdict (client gone, bulkhead full).
struct ProbeGuard<'a> {
    upstream: &'a Upstream,
    armed: bool,
}

impl ProbeGuard<'_> {
    fn take(&mut self) -> bool {
        std::mem::replace(&mut self.armed, false)
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Ok(mut breaker) = self.upstream.breaker.lock() {
                breaker.cancel_probe();
            }
        }
    }
}

impl Upstream {
    /// Builds the upstream, resolves its endpoints once and starts DNS refresh and health
    /// checks when they apply. Names that do not resolve yet are retried by the refresh task;
    /// requests get 503 while none resolves.
    pub async fn new(config: UpstreamConfig, metrics: UpstreamMetrics) -> Arc<Self> {
        let endpoints = resolve_all(&config.name, &config.endpoints, &config.weights, &[]).await;
        let endpoints = Arc::new(ArcSwap::from_pointee(endpoints));
        let upstream = Arc::new(Upstream {
            name: config.name.clone(),
            bulkhead: Bulkhead::new(&config.pool),
            pool: Pool::new(&config, endpoints.clone()),
            balancer: Balancer::new(config.balancer.clone(), config.outlier.clone()),
            stats: UpstreamStats::default(),
            metrics,
            breaker: Mutex::new(Breaker::new(config.breaker.clone(), Instant::now())),
            endpoints,
            config,
        });
        if upstream
            .config
            .endpoints
            .iter()
            .any(|e| e.host.parse::<IpAddr>().is_err())
        {
            tokio::spawn(refresh_dns(Arc::downgrade(&upstream)));
        }
        if let Some(health) = upstream.config.health.clone() {
            tokio::spawn(health::run(Arc::downgrade(&upstream), health));
        }
        upstream
    }

    /// The endpoints resolved now.
    pub fn endpoints(&self) -> Arc<Vec<Endpoint>> {
        self.endpoints.load_full()
    }

    /// The breaker's state, since when, and why.
    pub fn breaker_state(&self) -> (BreakerState, Instant, &'static str) {
        match self.breaker.lock() {
            Ok(b) => (b.state(), b.since(), b.reason()),
            Err(_) => (BreakerState::Closed, Instant::now(), "unknown"),
        }
    }

    fn admit(&self, now: Instant) -> Result<ProbeGuard<'_>, ProxyError> {
        let (admission, transition) = match self.breaker.lock() {
            Ok(mut breaker) => breaker.admit(now),
            Err(_) => (Admission::Allowed, None),
        };
        if let Some(t) = transition {
            self.log_transition(t);
        }
        match admission {
            Admission::Allowed => Ok(ProbeGuard {
                upstream: self,
                armed: false,
            }),
            Admission::Probe => Ok(ProbeGuard {
                upstream: self,
                armed: true,
            }),
            Admission::Rejected { retry_after } => {
                self.stats
                    .rejected_circuit_open
                    .fetch_add(1, Ordering::Relaxed);
                self.metrics.rejected_circuit_open.inc();
                Err(ProxyError::CircuitOpen { retry_after })
            }
        }
    }

    fn log_transition(&self, t: Transition) {
        self.stats
            .breaker_transitions
            .fetch_add(1, Ordering::Relaxed);
        self.metrics
            .transition(t.from.as_str(), t.to.as_str(), t.reason);
        if t.to == BreakerState::Open {
            tracing::warn!(upstream = %self.name, from = t.from.as_str(), to = t.to.as_str(), reason = t.reason, "circuit breaker opened");
        } else {
            tracing::info!(upstream = %self.name, from = t.from.as_str(), to = t.to.as_str(), reason = t.reason, "circuit breaker changed state");
        }
    }

    /// Records an attempt's outcome in the breaker and the balancer.
    fn record(
        &self,
        endpoints: &[Endpoint],
        endpoint: &Endpoint,
        failed: bool,
        latency: Duration,
        probe: bool,
    ) {
        let now = Instant::now();
        let transition = match self.breaker.lock() {
            Ok(mut breaker) => {
                let result = if failed {
                    CallResult::Failure
                } else {
                    let slow = breaker.slow_call_threshold().is_some_and(|t| latency > t);
                    CallResult::Success { slow }
                };
                breaker.record(now, result, probe, random_unit())
            }
            Err(_) => None,
        };
        if let Some(t) = transition {
            self.log_transition(t);
        }
        let result = if failed {
            EndpointResult::Failure
        } else {
            EndpointResult::Success
        };
        if self
            .balancer
            .record(endpoints, endpoint, result, latency, now)
        {
            self.stats.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(upstream = %self.name, endpoint = %endpoint.addr, "endpoint ejected after consecutive failures");
        }
    }

    /// Counts an injected fault as an upstream failure in the breaker (faults with
    /// `count_for_breaker = true`, to exercise the breaker for real).
    pub fn record_injected_failure(&self) {
        let transition = match self.breaker.lock() {
            Ok(mut breaker) => {
                breaker.record(Instant::now(), CallResult::Failure, false, random_unit())
            }
            Err(_) => None,
        };
        if let Some(t) = transition {
            self.log_transition(t);
        }
    }

    fn is_failure_status(&self, status: u16) -> bool {
        self.breaker
            .lock()
            .map(|b| b.is_failure_status(status))
            .unwrap_or(false)
    }

    fn is_failure_grpc(&self, code: u16) -> bool {
        self.breaker
            .lock()
            .map(|b| b.is_failure_grpc(code))
            .unwrap_or(false)
    }

    /// The URI scheme of requests to this upstream (`https` with TLS).
    fn scheme(&self) -> Scheme {
        if self.config.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }

    /// Sends a request (origin-form URI, headers prepared) with the upstream's protections and
    /// the route's retry policy.
    pub async fn call(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        options: CallOptions<'_>,
    ) -> Result<CallSuccess, ProxyError> {
        let mut probe = self.admit(Instant::now())?;
        let permit = self.bulkhead.acquire().await.map_err(|rejection| {
            self.stats
                .rejected_bulkhead_full
                .fetch_add(1, Ordering::Relaxed);
            self.metrics.rejected_bulkhead_full.inc();
            ProxyError::BulkheadFull(rejection)
        })?;
        if let Some((_, budget)) = options.retry {
            budget.deposit(Instant::now());
        }
        let (mut parts, body) = req.into_parts();
        // Only a body held in memory can be sent twice.
        let replay: Option<Bytes> = match (&body, options.retry) {
            (UpstreamBody::Buffered(Some(bytes)), Some(_)) => Some(bytes.clone()),
            _ => None,
        };
        let mut body = Some(body);
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut exclude = None;
        let mut attempt = 1u32;
        loop {
            let endpoints = self.endpoints.load_full();
            let (endpoint, outstanding) = self
                .balancer
                .pick(&endpoints, Instant::now(), exclude, options.hash_key)
                .ok_or(ProxyError::NoEndpoint)?;
            let attempt_body = match body.take() {
                Some(b) => b,
                None => UpstreamBody::Buffered(replay.clone()),
            };
            let mut request = Request::new(attempt_body);
            *request.method_mut() = parts.method.clone();
            *request.version_mut() = parts.version;
            // Without a replayable body there is exactly one attempt: move the headers.
            *request.headers_mut() = if replay.is_some() {
                parts.headers.clone()
            } else {
                std::mem::take(&mut parts.headers)
            };
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(self.scheme());
            uri.authority = Some(endpoint.authority.clone());
            uri.path_and_query = Some(path.clone());
            *request.uri_mut() =
                Uri::from_parts(uri).map_err(|e| ProxyError::UpstreamConnect(e.into()))?;
            if let Some(report) = options.report {
                report.attempt(endpoint.addr);
            }
            let attempt_span = options.trace.map(|(tracing, trace)| {
                let cx = tracing.attempt(trace, attempt);
                trace.inject(&cx, request.headers_mut());
                cx
            });

            let started = Instant::now();
            let try_deadline = match options.retry {
                Some((policy, _)) => options.deadline.min(started + policy.per_try_timeout),
                None => options.deadline,
            };
            let sent =
                tokio::time::timeout_at(try_deadline, self.pool.client.request(request)).await;
            let latency = started.elapsed();
            drop(outstanding);
            let outcome: Result<Response<Incoming>, (ProxyError, AttemptOutcome)> = match sent {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(err)) => Err(classify(err)),
                Err(_elapsed) => {
                    let limit = if try_deadline < options.deadline {
                        try_deadline.saturating_duration_since(started)
                    } else {
                        options.timeout
                    };
                    Err((ProxyError::UpstreamTimeout(limit), AttemptOutcome::Timeout))
                }
            };
            // gRPC: a trailers-only error carries grpc-status in the head; otherwise it comes
            // in the trailers and the verdict waits for them.
            let mut grpc = None;
            let failed = match &outcome {
                Ok(response) if self.is_failure_status(response.status().as_u16()) => true,
                Ok(response) if is_grpc(response.headers()) => {
                    match grpc_status(response.headers()) {
                        Some(code) => self.is_failure_grpc(code),
                        None => {
                            grpc = Some(GrpcVerdict {
                                upstream: self.clone(),
                                endpoints: endpoints.clone(),
                                endpoint: endpoint.clone(),
                                latency,
                                probe: probe.take(),
                                done: false,
                            });
                            false
                        }
                    }
                }
                Ok(_) => false,
                Err(_) => true,
            };
            if grpc.is_none() {
                self.record(&endpoints, endpoint, failed, latency, probe.take());
            }
            if let Some(cx) = attempt_span {
                let (status, error) = match &outcome {
                    Ok(response) => (Some(response.status().as_u16()), None),
                    Err((err, _)) => (None, Some(err.reason())),
                };
                trace::finish_attempt(cx, endpoint.addr, status, error);
            }

            let attempt_outcome = match &outcome {
                Ok(response) => AttemptOutcome::Status(response.status().as_u16()),
                Err((_, o)) => *o,
            };
            if let (Some((policy, budget)), Some(_)) = (options.retry, replay.as_ref()) {
                let wanted = attempt < policy.attempts
                    && retry::should_retry(policy, attempt_outcome, options.idempotent);
                if wanted {
                    let now = Instant::now();
                    let left = options.deadline.saturating_duration_since(now);
                    let wait = match outcome
                        .as_ref()
                        .ok()
                        .and_then(|r| retry::retry_after(r.headers()))
                    {
                        Some(after) => after,
                        None => retry::backoff(policy, attempt, random_unit()),
                    };
                    if wait < left {
                        if budget.try_withdraw(now) {
                            if let Ok(next_probe) = self.admit(now) {
                                probe = next_probe;
                                drop(outcome);
                                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                                self.metrics.retries_sent.inc();
                                tracing::debug!(upstream = %self.name, attempt, endpoint = %endpoint.addr, "retrying");
                                exclude = Some(endpoint.addr);
                                attempt += 1;
                                tokio::time::sleep(wait).await;
                                continue;
                            }
                        } else {
                            self.stats
                                .retries_budget_exhausted
                                .fetch_add(1, Ordering::Relaxed);
                            self.metrics.retries_budget_exhausted.inc();
                        }
                    }
                }
            }
            return match outcome {
                Ok(response) => Ok(CallSuccess {
                    response,
                    permit,
                    endpoint: endpoint.addr,
                    attempts: attempt,
                    grpc,
                }),
                Err((err, _)) => Err(err),
            };
        }
    }
}

/// Maps a client error once, by type: TLS handshake failures are `upstream-tls`, other connect
/// failures (refused, timed out: never sent) are `upstream-connect`, everything after the
/// connection was up is `upstream-reset`.
fn classify(err: hyper_util::client::legacy::Error) -> (ProxyError, AttemptOutcome) {
    let mut cause = err.source();
    while let Some(c) = cause {
        if c.is::<retry::BodyTooLarge>() {
            // The client's body broke the listener's limit: its fault, not the upstream's.
            return (ProxyError::BodyTooLarge, AttemptOutcome::Status(413));
        }
        if c.is::<retry::ClientBodyError>() {
            // The client's body broke off or broke the framing rules: not the upstream's fault.
            return (
                ProxyError::BadRequest("request body ended abnormally"),
                AttemptOutcome::Status(400),
            );
        }
        cause = c.source();
    }
    let mut connect_error = None;
    let mut source = err.source();
    while let Some(s) = source {
        if let Some(c) = s.downcast_ref::<ConnectError>() {
            connect_error = Some(c);
            break;
        }
        source = s.source();
    }
    if matches!(connect_error, Some(ConnectError::Tls { .. })) {
        // Never sent: retryable like a connect failure, reported as its own reason.
        return (
            ProxyError::UpstreamTls(Box::new(err)),
            AttemptOutcome::ConnectFailure,
        );
    }
    let connect = err.is_connect() || connect_error.is_some();
    if connect {
        (
            ProxyError::UpstreamConnect(Box::new(err)),
            AttemptOutcome::ConnectFailure,
        )
    } else {
        (
            ProxyError::UpstreamReset(Box::new(err)),
            AttemptOutcome::Reset,
        )
    }
}

/// Resolves every endpoint; a name that fails keeps its `previous` addresses. Endpoint state
/// (latency, ejection, health) carries over for addresses seen before.
async fn resolve_all(
    upstream: &str,
    endpoints: &[EndpointAddr],
    weights: &[u32],
    previous: &[Endpoint],
) -> Vec<Endpoint> {
    let state_for = |addr: SocketAddr| {
        previous
            .iter()
            .find(|p| p.addr == addr)
            .map_or_else(|| Arc::new(EndpointState::default()), |p| p.state.clone())
    };
    let mut out = Vec::with_capacity(endpoints.len());
    for (source, endpoint) in endpoints.iter().enumerate() {
        let weight = weights.get(source).copied().unwrap_or(1);
        if let Ok(ip) = endpoint.host.parse::<IpAddr>() {
            let addr = SocketAddr::new(ip, endpoint.port);
            out.extend(Endpoint::new(addr, source, weight, state_for(addr)));
            continue;
        }
        let lookup = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port));
        let error = match tokio::time::timeout(DNS_TIMEOUT, lookup).await {
            Ok(Ok(addrs)) => {
                let mut addrs: Vec<SocketAddr> = addrs.collect();
                addrs.sort();
                addrs.dedup();
                out.extend(
                    addrs
                        .into_iter()
                        .filter_map(|a| Endpoint::new(a, source, weight, state_for(a))),
                );
                continue;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {DNS_TIMEOUT:?}"),
        };
        tracing::warn!(upstream, endpoint = %endpoint, error, "endpoint name did not resolve; keeping its previous addresses");
        out.extend(previous.iter().filter(|p| p.source == source).cloned());
    }
    out
}

/// Re-resolves DNS names every `dns_refresh` while the upstream exists. In-flight requests keep
/// the connection they have; only new picks see the new list.
async fn refresh_dns(upstream: Weak<Upstream>) {
    let Some(interval) = upstream.upgrade().map(|u| u.config.dns_refresh) else {
        return;
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(up) = upstream.upgrade() else { return };
        let previous = up.endpoints.load_full();
        let fresh = resolve_all(
            &up.name,
            &up.config.endpoints,
            &up.config.weights,
            &previous,
        )
        .await;
        let changed = fresh.len() != previous.len()
            || fresh
                .iter()
                .zip(previous.iter())
                .any(|(a, b)| a.addr != b.addr);
        if changed {
            tracing::info!(upstream = %up.name, endpoints = fresh.len(), "endpoint addresses changed");
            up.endpoints.store(Arc::new(fresh));
        }
    }
}
