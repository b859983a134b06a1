//! The request path, and nothing else.
//!
//! [`handle`] is the outer half: it runs [`forward`] and turns any [`ProxyError`] into a response
//! exactly once, with the status and `keel-error` reason of `error.rs`. [`forward`] is the inner
//! half, a straight `?` chain: authority → route → prepare headers → `upstream.call` → response.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::config::model::Config;
use crate::config::model::Direction;
use crate::config::model::{FaultAction, RouteConfig};
use crate::error::ProxyError;
use crate::fault::{self, Chaos};
use crate::mirror;
use crate::router;
use crate::server::conn::{ConnWatch, RequestMark};
use crate::telemetry::access_log::{self, AccessLog, AccessRecord, Flags, PendingRecord};
use crate::telemetry::metrics::{Metrics, RouteMetrics, NO_ROUTE};
use crate::telemetry::trace::{RequestTrace, Tracing};
use crate::upstream::balancer::{random_u64, random_unit};
use crate::upstream::bulkhead::BulkheadPermit;
use crate::upstream::retry::{self, RetryBudget, StreamLimits, UpstreamBody};
use crate::upstream::CallReport;
use crate::upstream::{CallOptions, CallSuccess, Upstream};
use opentelemetry::KeyValue;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::SystemTime;

/// Everything a request needs that can change on reload: the config and the upstreams built
/// from it, swapped together.
#[derive(Debug)]
pub struct Runtime {
    /// The validated config.
    pub config: Arc<Config>,
    /// One per `config.upstreams` entry, same order.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Per listener, per route: state that lives as long as the route (its retry budget).
    pub routes: Vec<Vec<RouteState>>,
    /// Per listener: metric handles for requests that matched no route.
    pub no_route: Vec<RouteMetrics>,
}

/// Runtime state of one route.
#[derive(Debug)]
pub struct RouteState {
    /// The retry budget, when the route retries.
    pub budget: Option<RetryBudget>,
    /// Request counters and histogram per target (listener, route, upstream).
    pub metrics: Vec<RouteMetrics>,
    /// Current weight per target; `POST /routes/NAME/split` changes them without a reload.
    pub weights: Vec<AtomicU32>,
}

impl RouteState {
    /// Picks a target by weight: sticky by the route's header when the request has it.
    pub fn pick_target(&self, route: &RouteConfig, headers: &HeaderMap) -> usize {
        if self.weights.len() < 2 {
            return 0;
        }
        let weights: [u64; 16] = std::array::from_fn(|i| {
            self.weights
                .get(i)
                .map_or(0, |w| u64::from(w.load(Ordering::Relaxed)))
        });
        let total: u64 = weights.iter().take(self.weights.len()).sum();
        if total == 0 {
            return 0;
        }
        let ticket = match route.sticky_header.as_ref().and_then(|h| headers.get(h)) {
            Some(value) => stable_hash(value.as_bytes()) % total,
            None => (random_unit() * total as f64) as u64 % total,
        };
        let mut left = ticket;
        for (i, w) in weights.iter().take(self.weights.len()).enumerate() {
            if left < *w {
                return i;
            }
            left -= w;
        }
        0
    }

    /// Sets the weights (same order as the route's targets).
    pub fn set_weights(&self, weights: &[u32]) {
        for (slot, w) in self.weights.iter().zip(weights) {
            slot.store(*w, Ordering::Relaxed);
        }
    }
}

/// FNV-1a then a final mix: the same header value always lands on the same target.
fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

impl Runtime {
    /// Builds route state (budgets, metric handles) for `config` around built upstreams.
    pub fn new(config: Arc<Config>, upstreams: Vec<Arc<Upstream>>, metrics: &Metrics) -> Self {
        let routes = config
            .listeners
            .iter()
            .map(|l| {
                l.routes
                    .iter()
                    .map(|r| RouteState {
                        budget: r.retry.as_ref().map(RetryBudget::new),
                        metrics: r
                            .targets
                            .iter()
                            .map(|t| {
                                let upstream = upstreams.get(t.upstream).map_or("", |u| &*u.name);
                                metrics.route(&l.name, &r.name, upstream)
                            })
                            .collect(),
                        weights: r.targets.iter().map(|t| AtomicU32::new(t.weight)).collect(),
                    })
                    .collect()
            })
            .collect();
        let no_route = config
            .listeners
            .iter()
            .map(|l| metrics.route(&l.name, NO_ROUTE, NO_ROUTE))
            .collect();
        Runtime {
            config,
            upstreams,
            routes,
            no_route,
        }
    }

    /// The metric handles for a request on `listener` that matched `route` (or none).
    pub fn route_metrics(
        &self,
        listener: usize,
        route: Option<usize>,
        target: usize,
    ) -> Option<&RouteMetrics> {
        match route {
            Some(i) => self.routes.get(listener)?.get(i)?.metrics.get(target),
            None => self.no_route.get(listener),
        }
    }
}

/// Per-connection context, built once when a connection is accepted.
#[derive(Debug)]
pub struct ConnContext {
    /// The listener's name; its settings and routes are looked up in the current config, so a
    /// reload that adds or removes other listeners does not confuse them.
    pub listener: Arc<str>,
    /// The current runtime; one atomic load per request.
    pub runtime: Arc<ArcSwap<Runtime>>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The client's IP, formatted once for `X-Forwarded-For`.
    pub peer_ip: HeaderValue,
    /// The connection's watchdog state.
    pub watch: Arc<ConnWatch>,
    /// The listener connection slot: freed when the connection and any tunnel made from it end.
    pub slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Tracing and access log of this keel instance.
    pub telemetry: Arc<Telemetry>,
    /// Requests in flight on the listeners of this direction (the drain waits on it).
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// What the TLS handshake established, on TLS listeners.
    pub tls: Option<crate::server::tls::TlsInfo>,
}

/// The instance-wide telemetry sinks the request path writes to.
#[derive(Debug)]
pub struct Telemetry {
    /// Trace propagation and span export.
    pub tracing: Tracing,
    /// The access log writer, when any listener logs.
    pub access_log: Option<AccessLog>,
    /// Injected faults.
    pub chaos: Chaos,
}

/// `keel-error`, set on every response keel produced itself.
pub const KEEL_ERROR: HeaderName = HeaderName::from_static("keel-error");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// What the request path learned about a request, for metrics, the span and the access log.
#[derive(Debug, Default)]
struct RequestInfo {
    route: Option<usize>,
    target: usize,
    fault: Option<&'static str>,
    upstream: Option<Arc<str>>,
    request_id: Option<HeaderValue>,
    upstream_time: Option<std::time::Duration>,
    report: CallReport,
}

/// Serves one request: forwards it, or answers with keel's own error response; then records
/// metrics, ends the span and (on logging listeners) queues the access log line.
pub async fn handle(
    ctx: Arc<ConnContext>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ResetConnection> {
    let started = Instant::now();
    let mark = ctx
        .watch
        .request_started(req.version() == Version::HTTP_2, &ctx.in_flight);
    // One atomic load per request; the Arc keeps this config alive while the request runs.
    let runtime = ctx.runtime.load_full();
    let listener_index = runtime
        .config
        .listeners
        .iter()
        .position(|l| l.name == ctx.listener);
    let listener = listener_index.and_then(|i| runtime.config.listeners.get(i));
    let direction = listener.map_or(Direction::Outbound, |l| l.direction);
    let trace = ctx
        .telemetry
        .tracing
        .start(req.headers(), req.method(), direction);
    let access_log = ctx
        .telemetry
        .access_log
        .as_ref()
        .filter(|_| listener.is_some_and(|l| l.access_log));
    let describe = access_log.is_some() || trace.is_recording();
    let method = req.method().clone();
    let path = describe.then(|| req.uri().path().to_owned());
    let authority = describe.then(|| {
        request_authority(&req)
            .map(|a| a.to_string())
            .unwrap_or_default()
    });
    let bytes_in = access_log.map(|_| Arc::new(AtomicU64::new(0)));
    let grpc_request = crate::upstream::is_grpc(req.headers());

    let mut info = RequestInfo::default();
    let result = forward(
        &ctx,
        &runtime,
        listener_index,
        req,
        mark,
        &mut info,
        started,
        &trace,
        bytes_in.clone(),
    )
    .await;
    let (mut response, error) = match result {
        Ok(response) => (response, None),
        Err(err) => {
            if err.is_upstream_failure() {
                tracing::warn!(peer = %ctx.peer, error = %err, cause = ?std::error::Error::source(&err), trace_id = %trace.trace_id(), "upstream request failed");
            } else {
                tracing::debug!(peer = %ctx.peer, error = %err, "request rejected");
            }
            let mut response = error_response(&err);
            if grpc_request {
                grpc_error_response(&err, &mut response);
            }
            (response, Some(err))
        }
    };
    // keel's own answers count with their HTTP status, also when a gRPC client got them as
    // a trailers-only 200 (so dashboards see a circuit-open as a 503 whatever the protocol).
    let status = error
        .as_ref()
        .map_or(response.status().as_u16(), |e| e.status().as_u16());
    if let Some(metrics) =
        listener_index.and_then(|i| runtime.route_metrics(i, info.route, info.target))
    {
        metrics.observe(status, started.elapsed().as_secs_f64());
    }
    let route = info
        .route
        .and_then(|i| listener.and_then(|l| l.routes.get(i)))
        .map(|r| r.name.clone());
    let reason = error.as_ref().map(ProxyError::reason);
    if trace.is_recording() {
        let mut attributes = vec![
            KeyValue::new("http.request.method", method.to_string()),
            KeyValue::new("url.path", path.clone().unwrap_or_default()),
            KeyValue::new("server.address", authority.clone().unwrap_or_default()),
        ];
        if let Some(route) = &route {
            attributes.push(KeyValue::new("keel.route", route.to_string()));
        }
        if let Some(upstream) = &info.upstream {
            attributes.push(KeyValue::new("keel.upstream", upstream.to_string()));
        }
        if let Some(endpoint) = info.report.endpoint() {
            attributes.push(KeyValue::new("keel.endpoint", endpoint.to_string()));
        }
        if let Some(kind) = info.fault {
            attributes.push(KeyValue::new("keel.fault", kind));
        }
        trace.set(attributes);
    }
    if let Some(log) = access_log {
        let span = trace.span_context();
        let record = Box::new(AccessRecord {
            timestamp: access_log::timestamp(),
            listener: listener.map(|l| l.name.to_string()).unwrap_or_default(),
            route: route.map(|r| r.to_string()).unwrap_or_default(),
            upstream: info.upstream.as_deref().unwrap_or_default().to_owned(),
            endpoint: info.report.endpoint().map(|e| e.to_string()),
            method: method.to_string(),
            authority: authority.unwrap_or_default(),
            path: path.unwrap_or_default(),
            status,
            keel_error: reason,
            flags: Flags {
                retried: info.report.attempts() > 1,
                breaker_open: matches!(error, Some(ProxyError::CircuitOpen { .. })),
                bulkhead_full: matches!(error, Some(ProxyError::BulkheadFull(_))),
                timed_out: matches!(error, Some(ProxyError::UpstreamTimeout(_))),
                fault: info.fault,
            },
            attempts: info.report.attempts(),
            duration_ms: 0.0,
            upstream_duration_ms: info.upstream_time.map(|d| d.as_secs_f64() * 1000.0),
            bytes_in: 0,
            bytes_out: 0,
            trace_id: span.trace_id().to_string(),
            span_id: span.span_id().to_string(),
            request_id: info
                .request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            // Trailers-only gRPC responses carry it in the head; otherwise the body sets it
            // when the trailers arrive.
            grpc_status: crate::upstream::grpc_status(response.headers()),
            client_identity: ctx
                .tls
                .as_ref()
                .and_then(|t| t.identity.as_deref())
                .map(str::to_owned),
        });
        let mut pending = PendingRecord::new(record, started, bytes_in, log.clone());
        match response.body_mut() {
            ProxyBody::Upstream { log, .. } => *log = Some(pending),
            ProxyBody::Full(bytes) => {
                pending.bytes_out = bytes.as_ref().map_or(0, |b| b.len() as u64);
                drop(pending);
            }
        }
    }
    trace.finish(status, reason);
    if matches!(error, Some(ProxyError::FaultReset)) {
        return Err(ResetConnection);
    }
    Ok(response)
}

/// Returned to hyper to close the client connection without a response (a `reset` fault).
#[derive(Debug, thiserror::Error)]
#[error("connection reset by an injected fault")]
pub struct ResetConnection;

/// Turns keel's error response into a gRPC trailers-only response for a gRPC request: HTTP 200,
/// `content-type: application/grpc`, `grpc-status` mapped from the error (UNAVAILABLE for shed,
/// open and broken upstreams, DEADLINE_EXCEEDED for timeouts, UNIMPLEMENTED for no route, as
/// gRPC's HTTP mapping does) and `grpc-message` naming the reason; `keel-error` stays.
/// gRPC clients then report the real cause instead of failing to parse a text body.
fn grpc_error_response(err: &ProxyError, response: &mut Response<ProxyBody>) {
    if response.headers().contains_key("grpc-status") {
        return; // an injected gRPC abort is already one
    }
    let code: u16 = match err {
        ProxyError::UpstreamTimeout(_) => 4,
        ProxyError::BodyTooLarge => 8,
        ProxyError::NoRoute => 12,
        ProxyError::BadRequest(_) | ProxyError::UriTooLong => 13,
        ProxyError::BulkheadFull(_)
        | ProxyError::CircuitOpen { .. }
        | ProxyError::NoEndpoint
        | ProxyError::UpstreamConnect(_)
        | ProxyError::UpstreamTls(_)
        | ProxyError::UpstreamReset(_)
        | ProxyError::FaultReset => 14,
        ProxyError::FaultInjected { status, .. } => match status.as_u16() {
            400 => 13,
            401 => 16,
            403 => 7,
            404 => 12,
            429 | 502..=504 => 14,
            _ => 2,
        },
    };
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        HeaderName::from_static("grpc-status"),
        HeaderValue::from(code),
    );
    let message = format!("keel: {}", err.reason());
    if let Ok(value) = HeaderValue::from_str(&message) {
        headers.insert(HeaderName::from_static("grpc-message"), value);
    }
    *response.body_mut() = ProxyBody::empty();
}

/// keel's response for an error: status, `keel-error` reason, short text body.
pub fn error_response(err: &ProxyError) -> Response<ProxyBody> {
    let reason = err.reason();
    let mut response = Response::new(ProxyBody::text(error_body(reason)));
    *response.status_mut() = err.status();
    let headers = response.headers_mut();
    headers.insert(KEEL_ERROR, HeaderValue::from_static(reason));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    match err {
        // The rest of the request cannot be trusted or was not read: close after answering.
        ProxyError::BadRequest(_) | ProxyError::UriTooLong | ProxyError::BodyTooLarge => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        ProxyError::CircuitOpen { retry_after } => {
            // Whole seconds, rounded up, at least 1: when the next probe may pass.
            let secs = retry_after.as_millis().div_ceil(1000).max(1);
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(u64::try_from(secs).unwrap_or(u64::MAX)),
            );
        }
        ProxyError::FaultInjected {
            grpc: Some(code), ..
        } => {
            // A trailers-only gRPC error: status 200, grpc-status in the head.
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert(
                HeaderName::from_static("grpc-status"),
                HeaderValue::from(*code),
            );
            headers.insert(
                HeaderName::from_static("grpc-message"),
                HeaderValue::from_static("fault%20injected%20by%20keel"),
            );
            *response.body_mut() = ProxyBody::empty();
        }
        _ => {}
    }
    response
}

fn error_body(reason: &'static str) -> &'static str {
    match reason {
        "bad-request" => "keel: bad request\n",
        "no-route" => "keel: no route matches this request\n",
        "bulkhead-full" => "keel: upstream is at its concurrency limit\n",
        "circuit-open" => "keel: upstream is failing; circuit breaker open\n",
        "fault-injected" => "keel: fault injected on purpose\n",
        "upstream-connect" => "keel: could not connect to upstream\n",
        "upstream-tls" => "keel: TLS handshake with upstream failed\n",
        "upstream-reset" => "keel: upstream connection failed\n",
        "upstream-timeout" => "keel: upstream did not answer in time\n",
        _ => "keel: error\n",
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    ctx: &Arc<ConnContext>,
    runtime: &Runtime,
    listener_index: Option<usize>,
    mut req: Request<Incoming>,
    mark: RequestMark,
    info: &mut RequestInfo,
    started: Instant,
    trace: &RequestTrace,
    bytes_in: Option<Arc<AtomicU64>>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let authority = request_authority(&req)?;
    // A listener removed by a reload serves no new requests while its connections drain.
    let listener_index = listener_index.ok_or(ProxyError::NoRoute)?;
    let listener = runtime
        .config
        .listeners
        .get(listener_index)
        .ok_or(ProxyError::NoRoute)?;
    let target_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > listener.max_uri_bytes {
        return Err(ProxyError::UriTooLong);
    }
    if let Some(max) = listener.max_request_body {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max) {
            return Err(ProxyError::BodyTooLarge);
        }
    }
    let host = router::strip_port(authority.as_str());
    let (route_index, route) =
        router::route(&listener.routes, host, req.uri().path(), req.headers())
            .ok_or(ProxyError::NoRoute)?;
    info.route = Some(route_index);
    let state = runtime
        .routes
        .get(listener_index)
        .and_then(|routes| routes.get(route_index))
        .ok_or(ProxyError::NoRoute)?;
    let target = state.pick_target(route, req.headers());
    info.target = target;
    let upstream = route
        .targets
        .get(target)
        .and_then(|t| runtime.upstreams.get(t.upstream))
        .ok_or(ProxyError::NoRoute)?
        .clone();
    info.upstream = Some(upstream.name.clone());
    let budget = state.budget.as_ref();
    let timeout = route.timeout;
    let deadline = started + timeout;

    // Faults come after routing (they are scoped by route and upstream) and before the bulkhead:
    // an injected failure never touches the upstream or its slots.
    let mut throttle = None;
    if let Some(fault) = ctx.telemetry.chaos.pick(
        &route.name,
        &upstream.name,
        req.headers(),
        SystemTime::now(),
    ) {
        info.fault = Some(fault.config.action.kind());
        let counts = fault.config.count_for_breaker;
        match &fault.config.action {
            FaultAction::Delay { .. } => {
                if let Some(delay) = fault::delay_of(&fault.config.action) {
                    tokio::time::sleep_until(deadline.min(Instant::now() + delay)).await;
                }
            }
            FaultAction::Abort(status) => {
                if counts {
                    upstream.record_injected_failure();
                }
                return Err(ProxyError::FaultInjected {
                    status: *status,
                    grpc: None,
                });
            }
            FaultAction::GrpcAbort(code) => {
                if counts {
                    upstream.record_injected_failure();
                }
                return Err(ProxyError::FaultInjected {
                    status: StatusCode::OK,
                    grpc: Some(*code),
                });
            }
            FaultAction::Reset => {
                if counts {
                    upstream.record_injected_failure();
                }
                return Err(ProxyError::FaultReset);
            }
            FaultAction::SlowBody(rate) => throttle = Some(fault::Throttle::new(*rate)),
        }
    }

    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
    info.request_id = Some(prepare_request(ctx, &mut req, &authority, upgrade)?);

    let idempotent = retry::is_idempotent(req.method(), req.headers());
    let hash_key = upstream
        .balancer
        .hash_header()
        .and_then(|name| req.headers().get(name))
        .cloned();
    let (parts, body) = req.into_parts();
    let limits = StreamLimits {
        counter: bytes_in.clone(),
        limit: listener.max_request_body,
        seen: 0,
    };
    let retry = route.retry.as_ref().zip(budget);
    let mirror = route
        .mirror
        .as_ref()
        .filter(|m| random_unit() * 100.0 < m.percent)
        .and_then(|m| runtime.upstreams.get(m.upstream).cloned());
    let keep_in_memory = match (retry, &mirror) {
        (Some((policy, _)), _) => Some(policy.max_body),
        (None, Some(_)) => Some(crate::config::model::defaults::RETRY_MAX_BODY),
        (None, None) => None,
    };
    let body = match keep_in_memory {
        // Keep small bodies in memory so a retry (or the mirror) can send them again.
        Some(max_body) => {
            let (body, _) = retry::buffer_for_replay(body, max_body)
                .await
                .map_err(|_| ProxyError::BadRequest("request body could not be read"))?;
            match body {
                UpstreamBody::Buffered(Some(bytes)) => {
                    if let Some(counter) = &bytes_in {
                        counter.store(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    }
                    UpstreamBody::Buffered(Some(bytes))
                }
                UpstreamBody::Stream(inner, _) => UpstreamBody::Stream(inner, limits),
                other => other,
            }
        }
        None => UpstreamBody::Stream(body, limits),
    };
    let options = CallOptions {
        deadline,
        timeout,
        retry,
        idempotent,
        hash_key: hash_key.as_ref().map(HeaderValue::as_bytes),
        trace: Some((&ctx.telemetry.tracing, trace)),
        report: Some(&info.report),
    };
    if let (Some(shadow), UpstreamBody::Buffered(Some(bytes))) = (mirror, &body) {
        tokio::spawn(mirror::send(
            shadow,
            mirror::copy_head(&parts),
            bytes.clone(),
            timeout,
        ));
    }
    let call_started = Instant::now();
    let result = upstream
        .call(Request::from_parts(parts, body), options)
        .await;
    info.upstream_time = Some(call_started.elapsed());
    let CallSuccess {
        mut response,
        permit,
        grpc,
        ..
    } = result?;

    if let Some(on_client) = client_upgrade {
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let on_upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(tunnel(
                on_client,
                on_upstream,
                permit,
                upstream,
                ctx.clone(),
            ));
            let upgrade_value = response.headers().get(header::UPGRADE).cloned();
            strip_hop_by_hop(response.headers_mut());
            if let Some(value) = upgrade_value {
                response.headers_mut().insert(header::UPGRADE, value);
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            return Ok(response.map(|_| ProxyBody::empty()));
        }
    }
    strip_hop_by_hop(response.headers_mut());
    Ok(response.map(|inner| ProxyBody::Upstream {
        inner,
        permit: Some(permit),
        mark: Some(mark),
        log: None,
        throttle,
        grpc: grpc.map(Box::new),
    }))
}

/// The request's target authority: the absolute-form or HTTP/2 `:authority`, else the single
/// `Host` header. Several `Host` headers, or none where one is required, are a 400.
fn request_authority(req: &Request<Incoming>) -> Result<Authority, ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest("several Host headers"));
    }
    let authority = match (req.uri().authority(), host) {
        (Some(authority), _) => authority.clone(),
        (None, Some(value)) => Authority::try_from(value.as_bytes())
            .map_err(|_| ProxyError::BadRequest("invalid Host header"))?,
        (None, None) => return Err(ProxyError::BadRequest("missing Host header")),
    };
    if req.version() == Version::HTTP_11 && host.is_none() {
        return Err(ProxyError::BadRequest("missing Host header"));
    }
    if authority.host().is_empty() || authority.as_str().contains('@') {
        return Err(ProxyError::BadRequest("invalid Host"));
    }
    Ok(authority)
}

/// The `Upgrade` header value when the request asks for a protocol upgrade (HTTP/1.1 only).
fn is_upgrade(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let upgrade = req.headers().get(header::UPGRADE)?;
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asks.then(|| upgrade.clone())
}

/// Headers keel may add to a request: `Host`, three `X-Forwarded-*`, `X-Request-Id`, `TE`,
/// `Upgrade`, `Connection`, and up to five trace headers.
const ADDED_HEADERS: usize = 14;

/// Rewrites the request head for the upstream: hop-by-hop headers out, `Host` and the
/// `X-Forwarded-*` headers in, HTTP/1.1 on the wire.
fn prepare_request(
    ctx: &ConnContext,
    req: &mut Request<Incoming>,
    authority: &Authority,
    upgrade: Option<HeaderValue>,
) -> Result<HeaderValue, ProxyError> {
    let host_value = HeaderValue::from_str(authority.as_str())
        .map_err(|_| ProxyError::BadRequest("invalid Host"))?;
    let headers = req.headers_mut();
    // Room for the forwarding, request-id and trace headers added below and on each attempt:
    // one growth of the map instead of several.
    headers.reserve(ADDED_HEADERS);
    let wants_trailers = headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("trailers"));
    strip_hop_by_hop(headers);
    if wants_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(value) = upgrade {
        headers.insert(header::UPGRADE, value);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    headers.insert(header::HOST, host_value.clone());
    headers.insert(X_FORWARDED_HOST.clone(), host_value);
    let proto = if ctx.tls.is_some() { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if let Some(tls) = &ctx.tls {
        // Only keel vouches for client identities: a client's own value never reaches the app.
        headers.remove(&tls.identity_header);
        if let Some(identity) = &tls.identity_value {
            headers.insert(tls.identity_header.clone(), identity.clone());
        }
    }
    append_forwarded_for(headers, &ctx.peer_ip);
    let request_id = match headers.get(&X_REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let id = new_request_id();
            headers.insert(X_REQUEST_ID.clone(), id.clone());
            id
        }
    };
    *req.version_mut() = Version::HTTP_11;
    Ok(request_id)
}

/// 128 random bits as 32 hex digits.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let bits = (u128::from(random_u64()) << 64) | u128::from(random_u64());
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

fn append_forwarded_for(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    let existing: Vec<&[u8]> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if existing.is_empty() {
        headers.insert(X_FORWARDED_FOR.clone(), peer_ip.clone());
        return;
    }
    let mut joined = existing.join(&b", "[..]);
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(peer_ip.as_bytes());
    match HeaderValue::from_bytes(&joined) {
        Ok(value) => {
            headers.insert(X_FORWARDED_FOR.clone(), value);
        }
        Err(_) => {
            headers.insert(X_FORWARDED_FOR.clone(), peer_ip.clone());
        }
    }
}

/// Removes hop-by-hop headers: `Connection` and every header it names, plus the fixed list of
/// RFC 9110 §7.6.1 and the de-facto ones (`Keep-Alive`, `Proxy-Connection`).
///
/// The `Connection` values are split on the raw bytes: a value that is not visible ASCII (an
/// obs-text byte in one token) still names the other tokens in it, and they are removed too.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names is cheaper than eight lookups.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        // `keep-alive`, the token upstreams send on every response, goes with the fixed list
        // below: skip parsing it into a name.
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.eq_ignore_ascii_case(b"keep-alive"))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        headers.remove(header::CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
    ] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

/// Whether `name` is one of the fixed hop-by-hop headers (or `Connection`, which names more).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
}

/// Splices an upgraded client connection to the upgraded upstream connection until either side
/// closes. The bulkhead slot and the listener's connection slot (in `conn`) are held for the
/// tunnel's life: a tunnel is a request in flight on a client connection.
async fn tunnel(
    on_client: hyper::upgrade::OnUpgrade,
    on_upstream: hyper::upgrade::OnUpgrade,
    permit: BulkheadPermit,
    upstream: Arc<Upstream>,
    conn: Arc<ConnContext>,
) {
    let _held = (permit, conn);
    let (client, server) = match tokio::try_join!(on_client, on_upstream) {
        Ok(pair) => pair,
        Err(err) => {
            tracing::debug!(upstream = %upstream.name, error = %err, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut server = TokioIo::new(server);
    if let Err(err) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
        tracing::debug!(upstream = %upstream.name, error = %err, "upgraded tunnel ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_and_fixed_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    /// Found by the `head` fuzz target (minimized: `Connection: \xe1,xa` then `xa:`): a
    /// `Connection` value with an obs-text byte failed `to_str`, so none of its tokens were
    /// removed and the field it named was forwarded.
    #[test]
    fn connection_value_with_obs_text_still_names_fields() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_bytes(b"keep-\xe1live, x-a").unwrap(),
        );
        h.append("connection", HeaderValue::from_bytes(b"\xe1,xa").unwrap());
        h.insert("x-a", "1".parse().unwrap());
        h.insert("xa", HeaderValue::from_static(""));
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn request_ids_are_32_lowercase_hex_digits() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 32);
            assert!(id
                .as_bytes()
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)));
        }
    }

    #[test]
    fn headers_without_hop_by_hop_ones_are_untouched() {
        let mut h = HeaderMap::new();
        h.insert("host", "a".parse().unwrap());
        h.insert("x-one", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        h.insert("te", "trailers".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
        assert!(!h.contains_key("te"));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        append_forwarded_for(&mut h, &HeaderValue::from_static("127.0.0.1"));
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    }
}
