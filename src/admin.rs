//! The admin listener (loopback by default): `/live` and `/ready` for orchestrator probes, and
//! `/upstreams` for operators.
//!
//! `/ready` answers 503 until every listener is bound and again from the moment a drain starts,
//! so load balancers stop sending before keel stops accepting. `/upstreams` shows, per upstream,
//! the breaker state (since when and why), bulkhead and pool gauges, protection counters, and
//! each endpoint's address, load, health and ejection.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use arc_swap::ArcSwap;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::proxy::Runtime;
use crate::server::shutdown::ShutdownSignal;
use crate::telemetry::metrics::Metrics;
use crate::upstream::Upstream;

/// Process-wide health flags read by the probes.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Marks keel ready (listeners bound) or not (starting, draining).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether `/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

/// The `/upstreams` document.
pub fn upstreams_json(runtime: &Runtime) -> Value {
    let now = Instant::now();
    Value::Array(
        runtime
            .upstreams
            .iter()
            .map(|u| upstream_json(u, now))
            .collect(),
    )
}

fn upstream_json(u: &Upstream, now: Instant) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let (state, since, reason) = u.breaker_state();
    let endpoints: Vec<Value> = u
        .endpoints()
        .iter()
        .map(|e| {
            let ejected = u.balancer.is_ejected(e, now);
            json!({
                "address": e.addr.to_string(),
                "configured": u.config.endpoints.get(e.source).map(ToString::to_string),
                "weight": e.weight,
                "outstanding": e.state.outstanding.load(Relaxed),
                "healthy": e.state.healthy.load(Relaxed),
                "ejected": ejected,
                "ejected_for_seconds": if ejected { u.balancer.ejected_for(e, now).as_secs_f64() } else { 0.0 },
                "times_ejected": e.state.times_ejected.load(Relaxed),
            })
        })
        .collect();
    json!({
        "name": &*u.name,
        "breaker": {
            "state": state.as_str(),
            "since_seconds": now.saturating_duration_since(since).as_secs_f64(),
            "reason": reason,
        },
        "bulkhead": {
            "active": u.bulkhead.active(),
            "pending": u.bulkhead.pending(),
            "max_requests": u.config.pool.max_requests.get(),
            "max_pending": u.config.pool.max_pending,
        },
        "pool": {
            "open_connections": u.pool.open_connections(),
            "max_connections": u.config.pool.max_connections.get(),
        },
        "counters": {
            "rejected_circuit_open": u.stats.rejected_circuit_open.load(Relaxed),
            "rejected_bulkhead_full": u.stats.rejected_bulkhead_full.load(Relaxed),
            "retries": u.stats.retries.load(Relaxed),
            "retries_budget_exhausted": u.stats.retries_budget_exhausted.load(Relaxed),
            "ejections": u.stats.ejections.load(Relaxed),
            "breaker_transitions": u.stats.breaker_transitions.load(Relaxed),
            "panic_picks": u.balancer.panic_picks.load(Relaxed),
        },
        "endpoints": endpoints,
    })
}

fn json_response(value: &Value) -> Response<ProxyBody> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut response = Response::new(ProxyBody::bytes(body));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn respond(
    health: &Health,
    runtime: &ArcSwap<Runtime>,
    req: &Request<Incoming>,
) -> Response<ProxyBody> {
    if matches!(req.method(), &Method::GET) && req.uri().path() == "/upstreams" {
        return json_response(&upstreams_json(&runtime.load()));
    }
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/live") => (StatusCode::OK, "live\n"),
        (&Method::GET | &Method::HEAD, "/ready") if health.is_ready() => {
            (StatusCode::OK, "ready\n")
        }
        (&Method::GET | &Method::HEAD, "/ready") => {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
        }
        (_, "/live" | "/ready") => (StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
        _ => (
            StatusCode::NOT_FOUND,
            "keel admin: /live, /ready, /upstreams\n",
        ),
    };
    let mut response = Response::new(ProxyBody::text(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Serves `GET /metrics` (Prometheus text format) until `stop` fires.
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    runtime: Arc<ArcSwap<Runtime>>,
    stop: ShutdownSignal,
) {
    let content_type = HeaderValue::from_str(&metrics.content_type())
        .unwrap_or_else(|_| HeaderValue::from_static("text/plain; version=0.0.4"));
    serve_with(listener, stop, move |req: &Request<Incoming>| {
        if req.uri().path() != "/metrics" {
            let mut response = Response::new(ProxyBody::text("keel metrics: GET /metrics\n"));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return response;
        }
        let mut response = Response::new(ProxyBody::bytes(metrics.render(&runtime.load())));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type.clone());
        response
    })
    .await;
}

/// Serves admin requests until `stop` fires.
pub(crate) async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    runtime: Arc<ArcSwap<Runtime>>,
    stop: ShutdownSignal,
) {
    serve_with(listener, stop, move |req: &Request<Incoming>| {
        respond(&health, &runtime, req)
    })
    .await;
}

/// A small HTTP server answering every request with `respond`, until `stop` fires.
async fn serve_with<F>(listener: TcpListener, mut stop: ShutdownSignal, respond: F)
where
    F: Fn(&Request<Incoming>) -> Response<ProxyBody> + Send + Sync + 'static,
{
    let respond = Arc::new(respond);
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            // An operator or a probe connected.
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    continue;
                }
            },
            // keel is exiting.
            () = stop.triggered() => return,
        };
        let respond = respond.clone();
        let service = service_fn(move |req| {
            let response = respond(&req);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                // The probe finished.
                _ = connection.as_mut() => {}
                // keel is exiting: close after the current response.
                () = stop.triggered() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
}
