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
use crate::config::model::{
    AccessLogOutput, BalancerKind, Config, HostMatch, ListenerConfig, LogFormat, Propagation,
    RetryConfig, RetryOn, UpstreamConfig,
};
use crate::fault::Chaos;
use crate::proxy::Runtime;
use crate::proxy::Telemetry;
use crate::reload::{ReloadOutcome, Reloader};
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

fn secs(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn retry_json(p: &RetryConfig) -> Value {
    json!({
        "attempts": p.attempts,
        "per_try_timeout": secs(p.per_try_timeout),
        "on": p.on.iter().map(|o| match o {
            RetryOn::ConnectFailure => "connect-failure".to_owned(),
            RetryOn::Reset => "reset".to_owned(),
            RetryOn::Timeout => "timeout".to_owned(),
            RetryOn::ServerErrors => "5xx".to_owned(),
            RetryOn::Status(code) => code.to_string(),
        }).collect::<Vec<_>>(),
        "backoff": secs(p.backoff),
        "max_backoff": secs(p.max_backoff),
        "budget_ratio": p.budget_ratio,
        "min_retries_per_second": p.min_retries_per_second,
        "max_body": p.max_body,
    })
}

fn listener_json(config: &Config, l: &ListenerConfig) -> Value {
    let routes: Vec<Value> = l
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": &*r.name,
                "match": {
                    "host": r.matcher.host.as_ref().map(|h| match h {
                        HostMatch::Exact(h) => h.clone(),
                        HostMatch::Suffix(s) => format!("*{s}"),
                    }),
                    "path_prefix": r.matcher.path_prefix,
                    "header": r.matcher.header.as_ref().map(|(n, v)| json!({
                        "name": n.as_str(),
                        "value": v.to_str().unwrap_or("<binary>"),
                    })),
                },
                "upstream": config.upstreams.get(r.upstream).map(|u| &*u.name),
                "timeout": secs(r.timeout),
                "retry": r.retry.as_ref().map(retry_json),
            })
        })
        .collect();
    json!({
        "name": &*l.name,
        "direction": l.direction.as_str(),
        "listen": l.listen.to_string(),
        "max_connections": l.max_connections.get(),
        "header_read_timeout": secs(l.header_read_timeout),
        "idle_timeout": secs(l.idle_timeout),
        "max_header_bytes": l.max_header_bytes,
        "max_headers": l.max_headers,
        "access_log": l.access_log,
        "tls": l.tls.as_ref().map(|t| json!({
            "cert": t.cert.display().to_string(),
            // Private key material never leaves keel; not even its path is shown.
            "key": REDACTED,
            "client_ca": t.client_ca.as_ref().map(|p| p.display().to_string()),
            "require_client_cert": t.require_client_cert,
            "client_identity_header": t.identity_header.as_str(),
            "handshake_timeout": secs(t.handshake_timeout),
            "max_handshakes": t.max_handshakes.get(),
            "reject_expired": t.reject_expired,
            "certificate": t.loaded.cert.as_ref().map(cert_json),
        })),
        "routes": routes,
    })
}

/// What `/config` shows instead of a secret.
const REDACTED: &str = "REDACTED";

fn cert_json(c: &crate::x509::CertInfo) -> Value {
    json!({
        "subject": c.subject,
        "dns_names": c.dns_names,
        "uris": c.uris,
        "not_before": crate::x509::rfc3339(c.not_before),
        "not_after": crate::x509::rfc3339(c.not_after),
        "expired": c.not_after < crate::x509::now_unix(),
    })
}

fn upstream_tls_json(t: &crate::config::model::UpstreamTls) -> Value {
    let mut doc = json!({
        "server_name": t.server_name,
        "ca": t.ca.as_ref().map_or_else(|| "webpki-roots (bundled web PKI)".to_owned(), |p| p.display().to_string()),
        "client_cert": t.client_cert.as_ref().map(|p| p.display().to_string()),
        "client_key": t.client_key.as_ref().map(|_| REDACTED),
        "client_certificate": t.loaded.cert.as_ref().map(cert_json),
        "insecure_skip_verify": t.insecure_skip_verify,
    });
    if t.insecure_skip_verify {
        doc["WARNING"] = json!(
            "INSECURE: insecure_skip_verify = true; this upstream's certificates are NOT verified"
        );
    }
    doc
}

fn upstream_config_json(u: &UpstreamConfig) -> Value {
    json!({
        "name": &*u.name,
        "endpoints": u.endpoints.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "weights": u.weights,
        "connect_timeout": secs(u.connect_timeout),
        "dns_refresh": secs(u.dns_refresh),
        "balancer": match &u.balancer {
            BalancerKind::P2c => "p2c".to_owned(),
            BalancerKind::RoundRobin => "round_robin".to_owned(),
            BalancerKind::Hash(h) => format!("hash({h})"),
        },
        "pool": {
            "max_connections": u.pool.max_connections.get(),
            "max_requests": u.pool.max_requests.get(),
            "max_pending": u.pool.max_pending,
            "queue_timeout": secs(u.pool.queue_timeout),
            "idle_timeout": secs(u.pool.idle_timeout),
        },
        "breaker": {
            "enabled": u.breaker.enabled,
            "consecutive_failures": u.breaker.consecutive_failures,
            "failure_rate": u.breaker.failure_rate,
            "window": secs(u.breaker.window),
            "min_requests": u.breaker.min_requests,
            "slow_call_threshold": secs(u.breaker.slow_call_threshold),
            "slow_call_rate": u.breaker.slow_call_rate,
            "open_for": secs(u.breaker.open_for),
            "max_open_for": secs(u.breaker.max_open_for),
            "half_open_probes": u.breaker.half_open_probes,
            "failure_statuses": u.breaker.failure_statuses,
            "grpc_failure_statuses": u.breaker.grpc_failure_statuses.iter().map(|c| crate::config::grpc_name(*c)).collect::<Vec<_>>(),
        },
        "outlier": {
            "enabled": u.outlier.enabled,
            "consecutive_failures": u.outlier.consecutive_failures,
            "base_ejection": secs(u.outlier.base_ejection),
            "max_ejection": secs(u.outlier.max_ejection),
            "max_ejected_percent": u.outlier.max_ejected_percent,
        },
        "protocol": u.protocol.as_str(),
        "tls": u.tls.as_ref().map(upstream_tls_json),
        "health": u.health.as_ref().map(|h| json!({
            "path": h.path.as_str(),
            "interval": secs(h.interval),
            "timeout": secs(h.timeout),
            "unhealthy_after": h.unhealthy_after,
            "healthy_after": h.healthy_after,
        })),
    })
}

/// The effective config after defaults, as `/config` shows it. Credentials in URLs and private
/// key paths are redacted; `insecure_skip_verify` is flagged with a `WARNING` entry and in
/// `warnings`.
pub fn config_json(config: &Config) -> Value {
    json!({
        "admin": { "listen": config.admin.listen.to_string() },
        "metrics": { "listen": config.metrics.listen.to_string() },
        "tracing": {
            "service_name": config.tracing.service_name,
            "propagation": config.tracing.propagation.iter().map(|p| match p {
                Propagation::TraceContext => "tracecontext",
                Propagation::B3 => "b3",
                Propagation::B3Single => "b3single",
            }).collect::<Vec<_>>(),
            "otlp_endpoint": config.tracing.otlp_endpoint.as_deref().map(redact_url),
            "sample_ratio": config.tracing.sample_ratio,
        },
        "access_log": {
            "output": match &config.access_log.output {
                AccessLogOutput::Stdout => "stdout".to_owned(),
                AccessLogOutput::File(p) => p.display().to_string(),
            },
        },
        "shutdown": {
            "drain_delay": secs(config.shutdown.drain_delay),
            "grace_period": secs(config.shutdown.grace_period),
        },
        "runtime": { "worker_threads": config.runtime.worker_threads().get() },
        "log": {
            "format": match config.log.format { LogFormat::Text => "text", LogFormat::Json => "json" },
            "level": config.log.level,
        },
        "listeners": config.listeners.iter().map(|l| listener_json(config, l)).collect::<Vec<_>>(),
        "upstreams": config.upstreams.iter().map(upstream_config_json).collect::<Vec<_>>(),
        "warnings": config.warnings,
    })
}

/// Replaces user information in a URL (`http://user:secret@host/`) with `REDACTED`.
pub fn redact_url(url: &str) -> String {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return url.to_owned();
    };
    match (uri.scheme_str(), uri.authority()) {
        (Some(scheme), Some(authority)) if authority.as_str().contains('@') => {
            let host = authority.as_str().rsplit('@').next().unwrap_or_default();
            let path = uri.path_and_query().map_or("", |p| p.as_str());
            format!("{scheme}://REDACTED@{host}{path}")
        }
        _ => url.to_owned(),
    }
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
    if matches!(req.method(), &Method::GET) && req.uri().path() == "/config" {
        return json_response(&config_json(&runtime.load().config));
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
            "keel admin: /live, /ready, /upstreams, /config\n",
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
    serve_with(listener, stop, move |req: Request<Incoming>| {
        if req.uri().path() != "/metrics" {
            let mut response = Response::new(ProxyBody::text("keel metrics: GET /metrics\n"));
            *response.status_mut() = StatusCode::NOT_FOUND;
            return std::future::ready(response);
        }
        let mut response = Response::new(ProxyBody::bytes(metrics.render(&runtime.load())));
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type.clone());
        std::future::ready(response)
    })
    .await;
}

/// Serves admin requests until `stop` fires.
pub(crate) async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    runtime: Arc<ArcSwap<Runtime>>,
    reloader: Arc<Reloader>,
    telemetry: Arc<Telemetry>,
    stop_requested: Arc<tokio::sync::Notify>,
    stop: ShutdownSignal,
) {
    serve_with(listener, stop, move |req: Request<Incoming>| {
        let (health, runtime, reloader) = (health.clone(), runtime.clone(), reloader.clone());
        let (telemetry, stop_requested) = (telemetry.clone(), stop_requested.clone());
        async move {
            let mutating = matches!(*req.method(), Method::POST | Method::DELETE | Method::PUT);
            let local = req
                .extensions()
                .get::<Peer>()
                .is_some_and(|p| p.0.ip().is_loopback());
            if mutating && !local {
                // Probes may reach the admin port from the pod network; changes may not.
                return text_response(
                    StatusCode::FORBIDDEN,
                    "admin changes are accepted from loopback only\n".into(),
                );
            }
            if req.uri().path() == "/shutdown" {
                if req.method() != Method::POST {
                    return text_response(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "use POST /shutdown\n".into(),
                    );
                }
                tracing::info!("shutdown requested through the admin API");
                // notify_one stores a permit, so a request that comes before the waiter counts.
                stop_requested.notify_one();
                return text_response(StatusCode::ACCEPTED, "draining\n".into());
            }
            if req.uri().path() == "/reload" {
                return reload(&reloader, &req).await;
            }
            if req.uri().path() == "/faults" {
                return faults(&telemetry.chaos, &runtime, req).await;
            }
            if let Some(route) = req
                .uri()
                .path()
                .strip_prefix("/routes/")
                .and_then(|r| r.strip_suffix("/split"))
            {
                let route = route.to_owned();
                return set_split(&runtime, &route, req).await;
            }
            if req.uri().path() == "/config" && req.method() == Method::GET {
                let mut doc = config_json(&runtime.load().config);
                doc["last_reload_error"] = reloader.last_error().map_or(Value::Null, Value::String);
                return json_response(&doc);
            }
            respond(&health, &runtime, &req)
        }
    })
    .await;
}

fn text_response(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::bytes(text));
    *response.status_mut() = status;
    response
}

/// Reads a small request body as text (admin bodies are config snippets).
async fn body_text(req: Request<Incoming>) -> Result<String, Response<ProxyBody>> {
    let limited = http_body_util::Limited::new(req.into_body(), 64 * 1024);
    let bytes = http_body_util::BodyExt::collect(limited)
        .await
        .map_err(|e| {
            text_response(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}\n"),
            )
        })?
        .to_bytes();
    String::from_utf8(bytes.to_vec())
        .map_err(|_| text_response(StatusCode::BAD_REQUEST, "the body is not UTF-8\n".into()))
}

/// `GET /faults` lists active faults; `POST /faults` adds `[[faults]]` (validated like the
/// config file); `DELETE /faults` is the kill switch.
async fn faults(
    chaos: &Chaos,
    runtime: &ArcSwap<Runtime>,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    match *req.method() {
        Method::GET => json_response(&chaos.list(std::time::SystemTime::now())),
        Method::DELETE => {
            let removed = chaos.clear();
            tracing::warn!(removed, "all faults removed through the admin API");
            json_response(&json!({ "removed": removed }))
        }
        Method::POST => {
            let text = match body_text(req).await {
                Ok(text) => text,
                Err(response) => return response,
            };
            let config = runtime.load().config.clone();
            match crate::config::faults_from_str(&text, "POST /faults", &config) {
                Ok(list) => {
                    let ids = chaos.add(list);
                    tracing::warn!(?ids, "faults added through the admin API");
                    json_response(&json!({ "added": ids }))
                }
                Err(errors) => text_response(StatusCode::BAD_REQUEST, format!("{errors}\n")),
            }
        }
        _ => text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "use GET, POST or DELETE /faults\n".into(),
        ),
    }
}

/// `POST /routes/NAME/split` with a body `split = [{ upstream = "v1", weight = 90 }, ...]`:
/// new weights for the route's existing targets, applied at once without a reload.
async fn set_split(
    runtime: &ArcSwap<Runtime>,
    route: &str,
    req: Request<Incoming>,
) -> Response<ProxyBody> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        split: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Entry {
        upstream: String,
        weight: u32,
    }
    if req.method() != Method::POST {
        return text_response(StatusCode::METHOD_NOT_ALLOWED, "use POST\n".into());
    }
    let text = match body_text(req).await {
        Ok(text) => text,
        Err(response) => return response,
    };
    let body: Body = match toml::from_str(&text) {
        Ok(body) => body,
        Err(e) => {
            return text_response(
                StatusCode::BAD_REQUEST,
                format!("POST /routes/{route}/split: {e}\n"),
            )
        }
    };
    let runtime = runtime.load();
    let mut updated = 0;
    for (listener, states) in runtime.config.listeners.iter().zip(&runtime.routes) {
        for (config, state) in listener.routes.iter().zip(states) {
            if &*config.name != route {
                continue;
            }
            let mut weights = vec![0u32; config.targets.len()];
            for entry in &body.split {
                let position = config.targets.iter().position(|t| {
                    runtime
                        .upstreams
                        .get(t.upstream)
                        .is_some_and(|u| *u.name == entry.upstream)
                });
                match position {
                    Some(i) => weights[i] = entry.weight,
                    None => {
                        return text_response(
                            StatusCode::BAD_REQUEST,
                            format!("route `{route}` has no target `{}`; targets are set in the config file\n", entry.upstream),
                        )
                    }
                }
            }
            if weights.iter().all(|w| *w == 0) {
                return text_response(
                    StatusCode::BAD_REQUEST,
                    "at least one weight must be above 0\n".into(),
                );
            }
            state.set_weights(&weights);
            updated += 1;
        }
    }
    if updated == 0 {
        return text_response(StatusCode::NOT_FOUND, format!("no route named `{route}`\n"));
    }
    tracing::info!(route, ?text, "split weights changed through the admin API");
    json_response(&json!({ "route": route, "updated": updated }))
}

/// `POST /reload`: 200 with what changed, or 400 with every config error.
async fn reload(reloader: &Reloader, req: &Request<Incoming>) -> Response<ProxyBody> {
    if req.method() != Method::POST {
        let mut response = Response::new(ProxyBody::text("use POST /reload\n"));
        *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return response;
    }
    match reloader.reload().await {
        Ok(ReloadOutcome::Unchanged) => json_response(&json!({ "result": "unchanged" })),
        Ok(ReloadOutcome::Applied { rebuilt, kept }) => {
            json_response(&json!({ "result": "applied", "rebuilt": rebuilt, "kept": kept }))
        }
        Err(error) => {
            let mut response = Response::new(ProxyBody::bytes(format!("{error}\n")));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            response
        }
    }
}

/// The client address of an admin request.
#[derive(Debug, Clone, Copy)]
struct Peer(std::net::SocketAddr);

/// A small HTTP server answering every request with `respond`, until `stop` fires.
async fn serve_with<F, Fut>(listener: TcpListener, mut stop: ShutdownSignal, respond: F)
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let respond = Arc::new(respond);
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer) = tokio::select! {
            // An operator or a probe connected.
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    continue;
                }
            },
            // keel is exiting.
            () = stop.triggered() => return,
        };
        let respond = respond.clone();
        let service = service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(Peer(peer));
            let response = respond(req);
            async move { Ok::<_, Infallible>(response.await) }
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
