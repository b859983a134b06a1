//! Micro-benchmarks of the parts every request touches. Run with `cargo bench`.
#![allow(missing_docs)] // criterion_group! and criterion_main! generate undocumented items

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use keel::config;
use keel::upstream::breaker::{Admission, Breaker, CallResult};
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

/// The fast-fail path: an Open breaker answering `circuit-open` without a socket or a slot.
fn breaker_open_rejection(c: &mut Criterion) {
    let config = config::from_str(
        &format!(
            "[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\n[[listeners.routes]]\nupstream = \"u\"\n\
             [upstreams.u]\nendpoints = [\"127.0.0.1:{}\"]\n[upstreams.u.breaker]\nconsecutive_failures = 1\nopen_for = \"60s\"\nmax_open_for = \"60s\"\n",
            refused_port()
        ),
        "bench",
    )
    .expect("valid config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let upstream = rt.block_on(Upstream::new(
        config.upstreams[0].clone(),
        keel::telemetry::metrics::UpstreamMetrics::detached("u"),
    ));
    // The first call fails to connect and opens the breaker.
    let first = rt.block_on(call(&upstream));
    assert!(first.is_err());
    c.bench_function("upstream_call_circuit_open", |b| {
        b.iter(|| {
            let result = rt.block_on(call(&upstream));
            assert!(result.is_err());
        })
    });

    let breaker_config = config.upstreams[0].breaker.clone();
    let mut breaker = Breaker::new(breaker_config, Instant::now());
    breaker.record(Instant::now(), CallResult::Failure, false, 0.5);
    c.bench_function("breaker_admit_open", |b| {
        b.iter(|| {
            let (admission, _) = breaker.admit(Instant::now());
            assert!(matches!(admission, Admission::Rejected { .. }));
        })
    });
    let mut closed = Breaker::new(config.upstreams[0].breaker.clone(), Instant::now());
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
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = breaker_open_rejection
}
criterion_main!(benches);
