//! Route retries, end to end: the budget caps what a total outage costs the upstream; a request
//! that reached the upstream is resent only when it is idempotent; a request that was never
//! sent is always retried, with its body intact; a retry prefers another endpoint; per-try
//! timeouts move on and the route timeout bounds everything.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// Bound for any single network step of these tests.
const STEP: Duration = Duration::from_secs(10);

/// Keeps the breaker out of tests about retries alone.
const BREAKER_OFF: &str = "[upstreams.up.breaker]\nenabled = false";

async fn bounded<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, work)
        .await
        .expect("step finished in time")
}

fn retries(keel: &Keel) -> u64 {
    keel.upstream("up").stats.retries.load(Ordering::SeqCst)
}

/// One listener, one route with `route_extra`, upstream `up` over `endpoints` in this order.
fn config(endpoints: &[SocketAddr], upstream_extra: &str, route_extra: &str) -> String {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    format!(
        r#"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  upstream = "up"
  {route_extra}
[upstreams.up]
endpoints = [{}]
{upstream_extra}
"#,
        list.join(", ")
    )
}

/// An address nothing listens on: connecting to it is refused.
fn refused_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// A raw upstream that reads a whole request (head and `Content-Length` body), then closes the
/// connection without a byte of answer: the request reached it, the response never comes.
struct ResetAfterBody {
    addr: SocketAddr,
    /// Body length of every complete request received.
    bodies: Arc<Mutex<Vec<usize>>>,
}

impl ResetAfterBody {
    async fn start() -> ResetAfterBody {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    if let Ok(Some(len)) = tokio::time::timeout(STEP, read_request(stream)).await {
                        seen.lock().unwrap().push(len);
                    }
                });
            }
        });
        ResetAfterBody { addr, bodies }
    }

    fn requests(&self) -> usize {
        self.bodies.lock().unwrap().len()
    }

    fn bodies(&self) -> Vec<usize> {
        self.bodies.lock().unwrap().clone()
    }
}

/// Reads one request and returns its body length; the stream is dropped (closed) on return.
async fn read_request(mut stream: TcpStream) -> Option<usize> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_end + len {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some(buf.len() - head_end)
}

fn post(path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("host", "svc")
        .header("content-type", "application/octet-stream")
        .body(Full::new(body))
        .unwrap()
}

#[tokio::test]
async fn retry_budget_caps_upstream_load_under_total_failure() {
    const N: usize = 200;
    let failing = upstream(Behaviour::Status(503)).await;
    let keel = spawn_keel(&config(
        &[failing.addr],
        BREAKER_OFF,
        r#"retry = { attempts = 3, on = ["503"], budget_ratio = 0.2, min_retries_per_second = 1, backoff = "1ms", max_backoff = "2ms" }"#,
    ))
    .await;
    let addr = keel.addr("main");
    let started = std::time::Instant::now();
    for _ in 0..N {
        let reply = bounded(get(addr, "svc", "/")).await;
        assert_eq!(reply.status, 503, "{reply:?}");
        assert_eq!(reply.keel_error(), None, "the upstream's own 503");
    }
    let elapsed = started.elapsed();
    let received = failing.requests();
    // budget_ratio × requests, plus the floor of 1 retry/s over the budget's 10 s window (once
    // per window the run spanned), plus a little slack.
    let windows = elapsed.as_secs() / 10 + 1;
    let bound = N + N / 5 + 10 * windows as usize + 5;
    println!(
        "retry budget: {N} client requests, upstream received {received} ({:.2}x), {} retries, {} refused by the budget, bound {bound}, in {elapsed:?}",
        received as f64 / N as f64,
        retries(&keel),
        keel.upstream("up")
            .stats
            .retries_budget_exhausted
            .load(Ordering::SeqCst),
    );
    assert!(
        received <= bound,
        "upstream received {received} requests for {N} client requests (bound {bound}, 3x would be {})",
        3 * N
    );
    assert!(
        received >= N + 10,
        "the budget's floor allows at least 10 retries; got {received} upstream requests"
    );
    assert_eq!(received as u64, N as u64 + retries(&keel));
}

async fn reset_fixture() -> (ResetAfterBody, Keel) {
    let reset = ResetAfterBody::start().await;
    let keel = spawn_keel(&config(
        &[reset.addr],
        BREAKER_OFF,
        r#"retry = { attempts = 2, on = ["reset", "connect-failure", "503"], backoff = "1ms", max_backoff = "2ms" }"#,
    ))
    .await;
    (reset, keel)
}

fn assert_upstream_reset(reply: &Reply) {
    assert_eq!(reply.status, 502, "{reply:?}");
    assert_eq!(reply.keel_error(), Some("upstream-reset"), "{reply:?}");
}

#[tokio::test]
async fn post_reset_after_its_body_is_not_retried() {
    let (reset, keel) = reset_fixture().await;
    let addr = keel.addr("main");
    for i in 1..=3 {
        let reply = bounded(send(addr, post("/orders", Bytes::from(vec![b'p'; 100])))).await;
        assert_upstream_reset(&reply);
        assert_eq!(
            reset.requests(),
            i,
            "a POST that reached the upstream is sent once"
        );
    }
    assert_eq!(reset.bodies(), vec![100; 3]);
    assert_eq!(retries(&keel), 0);
}

#[tokio::test]
async fn get_reset_after_the_request_is_retried() {
    let (reset, keel) = reset_fixture().await;
    let reply = bounded(get(keel.addr("main"), "svc", "/orders")).await;
    assert_upstream_reset(&reply);
    assert_eq!(reset.requests(), 2, "attempts = 2: the GET was sent twice");
    assert_eq!(retries(&keel), 1);
}

#[tokio::test]
async fn post_with_idempotency_key_is_retried_with_its_body() {
    let (reset, keel) = reset_fixture().await;
    let mut req = post("/orders", Bytes::from(vec![b'k'; 100]));
    req.headers_mut()
        .insert("idempotency-key", "order-42".parse().unwrap());
    let reply = bounded(send(keel.addr("main"), req)).await;
    assert_upstream_reset(&reply);
    assert_eq!(
        reset.bodies(),
        vec![100, 100],
        "sent twice, whole body each time"
    );
    assert_eq!(retries(&keel), 1);
}

#[tokio::test]
async fn post_that_failed_to_connect_is_retried_with_its_body() {
    let refused = refused_addr();
    let good = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&config(
        &[refused, good.addr],
        "balancer = \"round_robin\"",
        r#"retry = { attempts = 2, on = ["connect-failure"], backoff = "1ms", max_backoff = "2ms" }"#,
    ))
    .await;
    let addr = keel.addr("main");
    let block = block();
    for i in 0..10 {
        let len = 1000 + 37 * i;
        let reply = bounded(send(addr, post("/sink", block.slice(..len)))).await;
        assert_eq!(reply.status, 200, "POST {i}: {reply:?}");
        assert_eq!(
            reply.body,
            format!("{len} {}", RepeatBody::checksum(len as u64)),
            "the healthy endpoint received the body intact"
        );
    }
    assert_eq!(good.requests(), 10);
    assert!(
        retries(&keel) >= 1,
        "round robin sent the first POST to the refusing endpoint, and it was retried"
    );
}

#[tokio::test]
async fn retry_goes_to_a_different_endpoint() {
    for balancer in ["round_robin", "p2c"] {
        let bad = upstream(Behaviour::Status(503)).await;
        let good = upstream(Behaviour::Respond).await;
        let keel = spawn_keel(&config(
            &[bad.addr, good.addr],
            &format!("balancer = \"{balancer}\""),
            r#"retry = { attempts = 2, on = ["503"], backoff = "1ms", max_backoff = "2ms" }"#,
        ))
        .await;
        let addr = keel.addr("main");
        for i in 0..20 {
            let reply = bounded(get(addr, "svc", "/")).await;
            assert_eq!(reply.status, 200, "{balancer}, request {i}: {reply:?}");
        }
        assert_eq!(good.requests(), 20, "{balancer}");
        assert_eq!(
            retries(&keel),
            bad.requests() as u64,
            "{balancer}: every 503 was retried, on the other endpoint"
        );
        if balancer == "round_robin" {
            assert!(
                bad.requests() >= 1,
                "round robin starts with the bad endpoint"
            );
        }
    }
}

#[tokio::test]
async fn per_try_timeout_moves_on_to_a_healthy_endpoint() {
    let hang = upstream(Behaviour::Hang).await;
    let good = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&config(
        &[hang.addr, good.addr],
        "balancer = \"round_robin\"",
        r#"timeout = "2s"
  retry = { attempts = 2, per_try_timeout = "100ms", on = ["timeout"], backoff = "1ms", max_backoff = "2ms" }"#,
    ))
    .await;
    let addr = keel.addr("main");
    let mut slowest = Duration::ZERO;
    for i in 0..4 {
        let reply = bounded(get(addr, "svc", "/")).await;
        assert_eq!(reply.status, 200, "request {i}: {reply:?}");
        assert!(
            reply.elapsed < Duration::from_secs(1),
            "request {i} took {:?}; the per-try timeout is 100ms",
            reply.elapsed
        );
        slowest = slowest.max(reply.elapsed);
    }
    assert!(
        hang.requests() >= 1,
        "round robin starts with the hanging endpoint"
    );
    assert!(
        slowest >= Duration::from_millis(100),
        "a request that hit the hanging endpoint waited its per-try timeout: {slowest:?}"
    );
    assert_eq!(good.requests(), 4);
}

#[tokio::test]
async fn no_retry_without_a_policy() {
    let failing = upstream(Behaviour::Status(503)).await;
    let keel = spawn_keel(&config(&[failing.addr], BREAKER_OFF, "")).await;
    let addr = keel.addr("main");
    for i in 1..=5 {
        let reply = bounded(get(addr, "svc", "/")).await;
        assert_eq!((reply.status, reply.keel_error()), (503, None), "{reply:?}");
        assert_eq!(
            failing.requests(),
            i,
            "one upstream request per client request"
        );
    }
    assert_eq!(retries(&keel), 0);
}

#[tokio::test]
async fn route_timeout_bounds_every_attempt() {
    let hang = upstream(Behaviour::Hang).await;
    let keel = spawn_keel(&config(
        &[hang.addr],
        BREAKER_OFF,
        r#"timeout = "500ms"
  retry = { attempts = 5, per_try_timeout = "200ms", on = ["timeout"] }"#,
    ))
    .await;
    let reply = bounded(get(keel.addr("main"), "svc", "/")).await;
    assert_eq!(reply.status, 504, "{reply:?}");
    assert_eq!(reply.keel_error(), Some("upstream-timeout"));
    assert!(
        reply.elapsed >= Duration::from_millis(400) && reply.elapsed <= Duration::from_millis(1500),
        "answered after {:?}; the route timeout is 500ms",
        reply.elapsed
    );
    let tries = hang.requests();
    assert!(
        (2..=3).contains(&tries),
        "200ms tries in a 500ms route timeout: expected 2 or 3, the upstream saw {tries}"
    );
}
