//! Micro-benchmarks of the parts every request touches. Run with `cargo bench`.
//!
//! Each benchmark measures one stage of `proxy::handle` in isolation: routing, header
//! sanitation, trace-context extraction and injection, the bulkhead, the breaker, metrics, and
//! the two fast-fail paths (breaker open, bulkhead full) through `Upstream::call`. The whole
//! request through TCP is measured by `bench/run.py`, which also reports keel's CPU per
//! rejected request next to a forwarded one.
#![allow(missing_docs)] // criterion_group! and criterion_main! generate undocumented items

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method, Request};
use keel::config::{self, model::Direction};
use keel::upstream::breaker::{Admission, Breaker, CallResult};
use keel::upstream::bulkhead::Bulkhead;
use keel::upstream::retry::UpstreamBody;
use keel::upstream::{CallOptions, Upstream};
use tokio::time::Instant;

fn refused_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

async fn call(
    upstream: &std::sync::Arc<Upstream>,
) -> Result<keel::upstream::CallSuccess, keel::error::ProxyError> {
    let request = Request::get("/")
        .body(UpstreamBody::Buffered(None))
        .expect("request");
    let options = CallOptions {
        deadline: Instant::now() + Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        retry: None,
        idempotent: true,
        hash_key: None,
        trace: None,
        report: None,
    };
    upstream.call(request, options).await
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A config like a sidecar's: several host and path routes before the one that matches.
const ROUTES: &str = r#"
[[listeners]]
name = "outbound"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  match = { host = "inventory", header = { name = "x-request-class", value = "batch" } }
  upstream = "inventory"
  [[listeners.routes]]
  name = "inventory-all"
  match = { host = "inventory" }
  upstream = "inventory"
  [[listeners.routes]]
  match = { host = "*.payments.internal" }
  upstream = "payments"
  [[listeners.routes]]
  name = "payments-api"
  match = { host = "payments", path_prefix = "/api/" }
  upstream = "payments"
  [[listeners.routes]]
  name = "rest"
  upstream = "payments"
[upstreams.inventory]
endpoints = ["127.0.0.1:1"]
[upstreams.payments]
endpoints = ["127.0.0.1:2"]
"#;

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "payments"),
        ("user-agent", "orders/1.4 (hyper)"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip"),
        ("content-type", "application/json"),
        ("x-request-id", "5f0c9c1e6a1b4d7f9e2a3b4c5d6e7f80"),
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("authorization", "Bearer abcdefghijklmnopqrstuvwxyz"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn response_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("server", "nginx/1.22.1"),
        ("date", "Thu, 03 Dec 2026 21:00:00 GMT"),
        ("content-type", "application/json"),
        ("content-length", "2"),
        ("connection", "keep-alive"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn routing(c: &mut Criterion) {
    let config = config::from_str(ROUTES, "bench").expect("valid config");
    let routes = &config.listeners[0].routes;
    let headers = request_headers();
    c.bench_function("route_fifth_of_five", |b| {
        b.iter(|| {
            let host = keel::router::strip_port(black_box("payments:8080"));
            let found = keel::router::route(routes, host, black_box("/charges/42"), &headers);
            assert_eq!(found.map(|(i, _)| i), Some(4));
        })
    });
    c.bench_function("route_first_host", |b| {
        b.iter(|| {
            let found = keel::router::route(routes, black_box("inventory"), "/items", &headers);
            assert_eq!(found.map(|(i, _)| i), Some(1));
        })
    });
}

fn headers(c: &mut Criterion) {
    let request = request_headers();
    c.bench_function("strip_hop_by_hop_request_without_any", |b| {
        b.iter_batched_ref(
            || request.clone(),
            keel::proxy::strip_hop_by_hop,
            criterion::BatchSize::SmallInput,
        )
    });
    let response = response_headers();
    c.bench_function("strip_hop_by_hop_response_keep_alive", |b| {
        b.iter_batched_ref(
            || response.clone(),
            keel::proxy::strip_hop_by_hop,
            criterion::BatchSize::SmallInput,
        )
    });
}

fn trace_propagation(c: &mut Criterion) {
    let rt = runtime();
    let config = config::from_str(ROUTES, "bench").expect("valid config");
    let _guard = rt.enter();
    let tracing = keel::telemetry::trace::Tracing::new(
        &config.tracing,
        prometheus::IntCounter::new("dropped", "dropped").expect("counter"),
    )
    .expect("tracing");
    let incoming = request_headers();
    let mut fresh = incoming.clone();
    fresh.remove("traceparent");
    for (name, headers) in [("incoming_w3c", &incoming), ("new_trace", &fresh)] {
        c.bench_function(&format!("trace_extract_inject_{name}"), |b| {
            b.iter_batched_ref(
                || headers.clone(),
                |h| {
                    let trace = tracing.start(h, &Method::GET, Direction::Outbound);
                    let attempt = tracing.attempt(&trace, 1);
                    trace.inject(&attempt, h);
                    keel::telemetry::trace::finish_attempt(
                        attempt,
                        "127.0.0.1:8080".parse().expect("addr"),
                        Some(200),
                        None,
                    );
                    trace.finish(200, None);
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
}

fn bulkhead(c: &mut Criterion) {
    let rt = runtime();
    let config = config::from_str(ROUTES, "bench").expect("valid config");
    let bulkhead = Bulkhead::new(&config.upstreams[0].pool);
    c.bench_function("bulkhead_acquire_release", |b| {
        b.iter(|| {
            let permit = rt.block_on(bulkhead.acquire()).expect("slot");
            drop(black_box(permit));
        })
    });
}

fn metrics(c: &mut Criterion) {
    let metrics = keel::telemetry::metrics::Metrics::new();
    let route = metrics.route("outbound", "payments-api", "payments");
    c.bench_function("metrics_observe_request", |b| {
        b.iter(|| route.observe(black_box(200), black_box(0.00042)))
    });
}

/// The fast-fail paths: an Open breaker answering `circuit-open` without a socket or a slot,
/// and a full bulkhead answering `bulkhead-full` without waiting.
fn rejections(c: &mut Criterion) {
    let config = config::from_str(
        &format!(
            "[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\n[[listeners.routes]]\nupstream = \"u\"\n\
             [upstreams.u]\nendpoints = [\"127.0.0.1:{}\"]\n[upstreams.u.breaker]\nconsecutive_failures = 1\nopen_for = \"60s\"\nmax_open_for = \"60s\"\n\
             [upstreams.full]\nendpoints = [\"127.0.0.1:{}\"]\n[upstreams.full.pool]\nmax_requests = 1\nmax_pending = 0\n",
            refused_port(),
            refused_port()
        ),
        "bench",
    )
    .expect("valid config");
    let rt = runtime();
    let by_name = |name: &str| {
        config
            .upstreams
            .iter()
            .find(|u| &*u.name == name)
            .expect("upstream")
            .clone()
    };
    let upstream = rt.block_on(Upstream::new(
        by_name("u"),
        keel::telemetry::metrics::UpstreamMetrics::detached("u"),
    ));
    // The first call fails to connect and opens the breaker.
    let first = rt.block_on(call(&upstream));
    assert!(first.is_err());
    c.bench_function("upstream_call_circuit_open", |b| {
        b.iter(|| {
            let result = rt.block_on(call(&upstream));
            assert!(matches!(
                result,
                Err(keel::error::ProxyError::CircuitOpen { .. })
            ));
        })
    });

    let full = rt.block_on(Upstream::new(
        by_name("full"),
        keel::telemetry::metrics::UpstreamMetrics::detached("full"),
    ));
    let held = rt.block_on(full.bulkhead.acquire()).expect("the only slot");
    c.bench_function("upstream_call_bulkhead_full", |b| {
        b.iter(|| {
            let result = rt.block_on(call(&full));
            assert!(matches!(
                result,
                Err(keel::error::ProxyError::BulkheadFull(_))
            ));
        })
    });
    drop(held);

    let breaker_config = by_name("u").breaker;
    let mut breaker = Breaker::new(breaker_config.clone(), Instant::now());
    breaker.record(Instant::now(), CallResult::Failure, false, 0.5);
    c.bench_function("breaker_admit_open", |b| {
        b.iter(|| {
            let (admission, _) = breaker.admit(Instant::now());
            assert!(matches!(admission, Admission::Rejected { .. }));
        })
    });
    let mut closed = Breaker::new(breaker_config, Instant::now());
    c.bench_function("breaker_record_success", |b| {
        b.iter(|| {
            closed.record(
                Instant::now(),
                CallResult::Success { slow: false },
                false,
                0.5,
            )
        })
    });
    c.bench_function("breaker_admit_closed", |b| {
        b.iter(|| {
            let (admission, _) = closed.admit(Instant::now());
            assert!(matches!(admission, Admission::Allowed));
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = routing, headers, trace_propagation, bulkhead, metrics, rejections
}
criterion_main!(benches);
