//! The circuit breaker of an upstream, end to end: it opens on consecutive failures, on a failure
//! rate and (only when enabled) on a slow-call rate; while Open it answers 503 `circuit-open`
//! with `Retry-After` without touching the upstream; after `open_for` probes decide between
//! Closed and Open again. Keel's own rejections, client cancellations and 4xx never trip it.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keel::upstream::breaker::BreakerState;
use keel::upstream::Upstream;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Bound for any single network step of these tests.
const STEP: Duration = Duration::from_secs(10);

/// Longest `Retry-After` for `open_for = "30s"`: open times get ±20 % jitter.
const OPEN_30S_MAX_SECS: u64 = 36;

async fn bounded<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, work)
        .await
        .expect("step finished in time")
}

/// A test upstream whose status is decided per request by `answer(n)`, `n` counting requests
/// from 1. The closure may read shared state, so a test can switch the upstream from failing to
/// healthy while keel runs.
struct Scripted {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl Scripted {
    /// Request heads received so far.
    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn scripted<F>(answer: F) -> Scripted
where
    F: Fn(usize) -> u16 + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(answer);
    let counter = requests.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (answer, counter) = (answer.clone(), counter.clone());
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<Incoming>| {
                    let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                    let status = (*answer)(n);
                    async move {
                        let mut r = Response::new(Full::new(Bytes::from(format!(
                            "upstream answer {n}: {status}\n"
                        ))));
                        *r.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Scripted { addr, requests }
}

fn state(up: &Upstream) -> (BreakerState, &'static str) {
    let (state, _, reason) = up.breaker_state();
    (state, reason)
}

fn with_breaker(addr: SocketAddr, breaker: &str) -> String {
    single_route(addr, &format!("[upstreams.up.breaker]\n{breaker}"), "")
}

/// A 503 `circuit-open` from keel with a `Retry-After` of whole seconds in `1..=max_secs`.
fn assert_circuit_open(reply: &Reply, max_secs: u64) {
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.keel_error(), Some("circuit-open"), "{reply:?}");
    let retry_after: u64 = reply
        .headers
        .get("retry-after")
        .unwrap_or_else(|| panic!("circuit-open without retry-after: {reply:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("retry-after is not whole seconds: {reply:?}"));
    assert!(
        (1..=max_secs).contains(&retry_after),
        "retry-after {retry_after}s, expected 1..={max_secs}s"
    );
}

/// Sends GETs until one is not rejected by the breaker, checking that no rejected request
/// reached the upstream. Returns that reply and when it arrived.
async fn first_admitted(addr: SocketAddr, up: &Scripted, max_secs: u64) -> (Reply, Instant) {
    let deadline = Instant::now() + STEP;
    loop {
        let before = up.requests();
        let reply = bounded(get(addr, "svc", "/")).await;
        if reply.keel_error() != Some("circuit-open") {
            return (reply, Instant::now());
        }
        assert_circuit_open(&reply, max_secs);
        assert_eq!(
            up.requests(),
            before,
            "a rejected request reached the upstream"
        );
        assert!(Instant::now() < deadline, "no probe was let through");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn opens_after_consecutive_failures_probes_after_open_for_and_closes_on_recovery() {
    let healthy = Arc::new(AtomicBool::new(false));
    let switch = healthy.clone();
    let up = scripted(move |_| {
        if switch.load(Ordering::SeqCst) {
            200
        } else {
            503
        }
    })
    .await;
    let open_for = Duration::from_millis(500);
    let keel = spawn_keel(&with_breaker(
        up.addr,
        "consecutive_failures = 5\nopen_for = \"500ms\"\nmax_open_for = \"2s\"\nhalf_open_probes = 2",
    ))
    .await;
    let addr = keel.addr("main");
    let breaker = keel.upstream("up");

    // Exactly five failures reach the upstream and come back as its own 503.
    for i in 1..=5 {
        assert_eq!(
            state(&breaker).0,
            BreakerState::Closed,
            "before failure {i}"
        );
        let reply = bounded(get(addr, "svc", "/")).await;
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(
            reply.keel_error(),
            None,
            "failure {i} is the upstream's 503"
        );
        assert_eq!(up.requests(), i);
    }
    let (s, opened_at, reason) = breaker.breaker_state();
    assert_eq!((s, reason), (BreakerState::Open, "consecutive_failures"));

    // Open: fail fast, the upstream sees nothing. (Jitter keeps it open for at least 0.8 × 500ms.)
    for _ in 0..3 {
        assert!(
            Instant::now() < opened_at + open_for.mul_f64(0.8),
            "the machine is too slow to observe the open breaker"
        );
        let reply = bounded(get(addr, "svc", "/")).await;
        assert_circuit_open(&reply, 2);
        assert_eq!(up.requests(), 5, "an open breaker let a request through");
    }
    assert_eq!(
        breaker.stats.rejected_circuit_open.load(Ordering::SeqCst),
        3
    );

    // After open_for a probe goes through; the upstream still fails, so the breaker re-opens.
    let (probe, at) = first_admitted(addr, &up, 2).await;
    assert!(
        at - opened_at >= open_for.mul_f64(0.8),
        "probe admitted {:?} after opening, before open_for",
        at - opened_at
    );
    assert_eq!(probe.status, 503, "{probe:?}");
    assert_eq!(
        probe.keel_error(),
        None,
        "the probe reached the upstream: {probe:?}"
    );
    assert_eq!(up.requests(), 6, "one probe");
    let (s, reopened_at, reason) = breaker.breaker_state();
    assert_eq!((s, reason), (BreakerState::Open, "probe_failed"));
    let reply = bounded(get(addr, "svc", "/")).await;
    assert_circuit_open(&reply, 2);
    assert_eq!(up.requests(), 6);

    // The upstream recovers. The re-open lasts twice as long (1s ± 20 %); then two probes
    // succeed and the breaker closes.
    healthy.store(true, Ordering::SeqCst);
    let (probe, at) = first_admitted(addr, &up, 2).await;
    assert!(
        at - reopened_at >= (open_for * 2).mul_f64(0.8),
        "re-open lasted {:?}, expected the doubled open time",
        at - reopened_at
    );
    assert_eq!(probe.status, 200, "{probe:?}");
    assert_eq!(
        state(&breaker).0,
        BreakerState::HalfOpen,
        "one of two probes succeeded"
    );
    let reply = bounded(get(addr, "svc", "/")).await;
    assert_eq!(reply.status, 200, "second probe: {reply:?}");
    assert_eq!(state(&breaker), (BreakerState::Closed, "probes_succeeded"));

    // Traffic flows again.
    let before = up.requests();
    for _ in 0..10 {
        let reply = bounded(get(addr, "svc", "/")).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.keel_error(), None);
    }
    assert_eq!(up.requests(), before + 10);
    assert_eq!(state(&breaker).0, BreakerState::Closed);
}

#[tokio::test]
async fn failure_rate_trips_with_interleaved_successes() {
    // Odd requests fail, even ones succeed: never two failures in a row.
    let up = scripted(|n| if n % 2 == 1 { 503 } else { 200 }).await;
    let keel = spawn_keel(&with_breaker(
        up.addr,
        "consecutive_failures = 0\nfailure_rate = 0.5\nmin_requests = 10\nopen_for = \"30s\"",
    ))
    .await;
    let addr = keel.addr("main");
    let breaker = keel.upstream("up");
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let reply = bounded(get(addr, "svc", "/")).await;
        if reply.keel_error() == Some("circuit-open") {
            assert_circuit_open(&reply, OPEN_30S_MAX_SECS);
            break;
        }
        assert_eq!(reply.keel_error(), None, "{reply:?}");
        statuses.push(reply.status);
    }
    let expected: Vec<u16> = (1..=10)
        .map(|n| if n % 2 == 1 { 503 } else { 200 })
        .collect();
    assert_eq!(
        statuses, expected,
        "5 failures in 10 calls reach 0.5 once min_requests = 10 were seen"
    );
    assert_eq!(up.requests(), 10);
    assert_eq!(state(&breaker), (BreakerState::Open, "failure_rate"));
}

#[tokio::test]
async fn slow_calls_trip_only_when_slow_call_rate_is_set() {
    let slow = upstream(Behaviour::Delay(Duration::from_millis(100))).await;
    let breaker = "slow_call_threshold = \"50ms\"\nmin_requests = 5\nopen_for = \"30s\"";
    let on = spawn_keel(&with_breaker(
        slow.addr,
        &format!("{breaker}\nslow_call_rate = 0.5"),
    ))
    .await;
    let addr = on.addr("main");
    let mut ok = 0;
    for _ in 0..15 {
        let reply = bounded(get(addr, "svc", "/")).await;
        if reply.keel_error() == Some("circuit-open") {
            assert_circuit_open(&reply, OPEN_30S_MAX_SECS);
            break;
        }
        assert_eq!(reply.status, 200, "{reply:?}");
        ok += 1;
    }
    assert_eq!(ok, 5, "five slow calls of five reach slow_call_rate 0.5");
    assert_eq!(slow.requests(), 5);
    assert_eq!(
        state(&on.upstream("up")),
        (BreakerState::Open, "slow_call_rate")
    );

    // The same load with slow_call_rate unset: latency alone never opens the breaker.
    let slow = upstream(Behaviour::Delay(Duration::from_millis(100))).await;
    let off = spawn_keel(&with_breaker(slow.addr, breaker)).await;
    let addr = off.addr("main");
    for _ in 0..12 {
        let reply = bounded(get(addr, "svc", "/")).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        assert_eq!(reply.keel_error(), None);
    }
    assert_eq!(slow.requests(), 12);
    let up = off.upstream("up");
    assert_eq!(state(&up).0, BreakerState::Closed);
    assert_eq!(up.stats.breaker_transitions.load(Ordering::SeqCst), 0);
}

/// A breaker that opens on the first recorded failure. `/control` has a 200ms timeout, the
/// default route 30s, so a test can produce one real failure (a timeout) on demand.
fn hair_trigger(addr: SocketAddr, upstream_extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  match = {{ path_prefix = "/control" }}
  upstream = "up"
  timeout = "200ms"
  [[listeners.routes]]
  upstream = "up"
  timeout = "30s"
[upstreams.up]
endpoints = ["{addr}"]
[upstreams.up.breaker]
consecutive_failures = 1
failure_rate = 0.01
min_requests = 1
open_for = "30s"
{upstream_extra}
"#
    )
}

/// Writes `GET /` on a new connection and leaves it waiting; dropping the stream is the client
/// giving up.
async fn send_raw_get(addr: SocketAddr) -> TcpStream {
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
        .await
        .unwrap();
    client
}

/// Proves the hair-trigger breaker was live all along: one upstream timeout opens it.
async fn assert_one_real_failure_opens(addr: SocketAddr, up: &Upstream) {
    assert_eq!(
        up.stats.breaker_transitions.load(Ordering::SeqCst),
        0,
        "the breaker never moved before the control"
    );
    let reply = bounded(get(addr, "svc", "/control")).await;
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.keel_error(), Some("upstream-timeout"));
    assert_eq!(state(up), (BreakerState::Open, "consecutive_failures"));
}

#[tokio::test]
async fn bulkhead_rejections_never_trip_the_breaker() {
    let hang = upstream(Behaviour::Hang).await;
    let keel = spawn_keel(&hair_trigger(
        hang.addr,
        "[upstreams.up.pool]\nmax_requests = 1\nmax_pending = 0",
    ))
    .await;
    let addr = keel.addr("main");
    let up = keel.upstream("up");
    let held = send_raw_get(addr).await;
    eventually(STEP, "one request in flight", || async {
        hang.requests() == 1
    })
    .await;
    for _ in 0..20 {
        let reply = bounded(get(addr, "svc", "/")).await;
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(reply.keel_error(), Some("bulkhead-full"), "{reply:?}");
    }
    assert_eq!(up.stats.rejected_bulkhead_full.load(Ordering::SeqCst), 20);
    assert_eq!(state(&up).0, BreakerState::Closed);
    assert_eq!(hang.requests(), 1, "rejections never reached the upstream");

    drop(held);
    eventually(STEP, "the held slot is freed", || {
        let up = up.clone();
        async move { up.bulkhead.active() == 0 }
    })
    .await;
    assert_eq!(state(&up).0, BreakerState::Closed);
    assert_one_real_failure_opens(addr, &up).await;
}

#[tokio::test]
async fn client_cancellations_never_trip_the_breaker() {
    let hang = upstream(Behaviour::Hang).await;
    let keel = spawn_keel(&hair_trigger(hang.addr, "")).await;
    let addr = keel.addr("main");
    let up = keel.upstream("up");
    for i in 1..=20 {
        let client = send_raw_get(addr).await;
        eventually(STEP, "the request reached the upstream", || async {
            hang.requests() == i
        })
        .await;
        // The client gives up: its connection closes with the request in flight.
        drop(client);
        eventually(STEP, "keel dropped the cancelled request", || {
            let up = up.clone();
            async move { up.bulkhead.active() == 0 }
        })
        .await;
        assert_eq!(state(&up).0, BreakerState::Closed, "after cancellation {i}");
    }
    assert_one_real_failure_opens(addr, &up).await;
}

#[tokio::test]
async fn client_errors_never_trip_the_breaker() {
    let status = Arc::new(AtomicU16::new(404));
    let current = status.clone();
    let script = scripted(move |_| current.load(Ordering::SeqCst)).await;
    let keel = spawn_keel(&hair_trigger(script.addr, "")).await;
    let addr = keel.addr("main");
    let up = keel.upstream("up");
    for code in [404, 429, 400, 409] {
        status.store(code, Ordering::SeqCst);
        for _ in 0..5 {
            let reply = bounded(get(addr, "svc", "/")).await;
            assert_eq!(reply.status, code, "{reply:?}");
            assert_eq!(reply.keel_error(), None);
        }
    }
    assert_eq!(script.requests(), 20);
    assert_eq!(state(&up).0, BreakerState::Closed);
    assert_eq!(up.stats.breaker_transitions.load(Ordering::SeqCst), 0);

    // Control: the same breaker opens on the first 503.
    status.store(503, Ordering::SeqCst);
    let reply = bounded(get(addr, "svc", "/")).await;
    assert_eq!((reply.status, reply.keel_error()), (503, None));
    assert_eq!(state(&up), (BreakerState::Open, "consecutive_failures"));
    let reply = bounded(get(addr, "svc", "/")).await;
    assert_circuit_open(&reply, OPEN_30S_MAX_SECS);
    assert_eq!(script.requests(), 21);
}

#[tokio::test]
async fn disabled_breaker_never_opens() {
    let failing = upstream(Behaviour::Status(503)).await;
    let keel = spawn_keel(&with_breaker(
        failing.addr,
        "enabled = false\nconsecutive_failures = 1\nfailure_rate = 0.01\nmin_requests = 1",
    ))
    .await;
    let addr = keel.addr("main");
    for _ in 0..30 {
        let reply = bounded(get(addr, "svc", "/")).await;
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(
            reply.keel_error(),
            None,
            "every request reached the upstream"
        );
    }
    assert_eq!(failing.requests(), 30);
    let up = keel.upstream("up");
    assert_eq!(state(&up).0, BreakerState::Closed);
    assert_eq!(up.stats.rejected_circuit_open.load(Ordering::SeqCst), 0);
    assert_eq!(up.stats.breaker_transitions.load(Ordering::SeqCst), 0);
}
