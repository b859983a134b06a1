//! The bulkhead: in-flight and queue limits per upstream, and isolation between upstreams.

mod support;

use std::time::Duration;

use support::*;

fn hanging_and_healthy(
    hanging: std::net::SocketAddr,
    healthy: std::net::SocketAddr,
    pool: &str,
) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  match = {{ host = "a" }}
  upstream = "a"
  timeout = "60s"
  [[listeners.routes]]
  match = {{ host = "b" }}
  upstream = "b"
[upstreams.a]
endpoints = ["{hanging}"]
  [upstreams.a.pool]
  {pool}
[upstreams.b]
endpoints = ["{healthy}"]
"#
    )
}

#[tokio::test]
async fn full_queue_rejects_at_once() {
    let hang = upstream(Behaviour::Hang).await;
    let ok = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&hanging_and_healthy(
        hang.addr,
        ok.addr,
        "max_requests = 2\nmax_pending = 1\nqueue_timeout = \"30s\"",
    ))
    .await;
    let addr = keel.addr("main");
    let _held: Vec<_> = (0..3)
        .map(|_| tokio::spawn(async move { get(addr, "a", "/").await }))
        .collect();
    let a = keel.upstream("a");
    eventually(Duration::from_secs(5), "2 in flight and 1 queued", || {
        let a = a.clone();
        async move { a.bulkhead.active() == 2 && a.bulkhead.pending() == 1 }
    })
    .await;
    let reply = get(addr, "a", "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.keel_error(), Some("bulkhead-full"));
    assert!(
        reply.elapsed < Duration::from_secs(2),
        "rejected at once, took {:?}",
        reply.elapsed
    );
    assert_eq!(
        hang.requests(),
        2,
        "the rejected request never reached the upstream"
    );
}

#[tokio::test]
async fn queued_request_gives_up_after_queue_timeout() {
    let hang = upstream(Behaviour::Hang).await;
    let ok = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&hanging_and_healthy(
        hang.addr,
        ok.addr,
        "max_requests = 1\nmax_pending = 4\nqueue_timeout = \"200ms\"",
    ))
    .await;
    let addr = keel.addr("main");
    let _held = tokio::spawn(async move { get(addr, "a", "/").await });
    eventually(Duration::from_secs(5), "one request in flight", || async {
        hang.requests() == 1
    })
    .await;
    let reply = get(addr, "a", "/").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.keel_error(), Some("bulkhead-full"));
    assert!(
        reply.elapsed >= Duration::from_millis(180),
        "waited {:?}",
        reply.elapsed
    );
    assert!(
        reply.elapsed < Duration::from_secs(3),
        "waited {:?}",
        reply.elapsed
    );
}

#[tokio::test]
async fn queued_requests_run_when_slots_free() {
    let slow = upstream(Behaviour::Delay(Duration::from_millis(30))).await;
    let keel = spawn_keel(&single_route(
        slow.addr,
        "[upstreams.up.pool]\nmax_requests = 1\nmax_pending = 8\nqueue_timeout = \"10s\"",
        "",
    ))
    .await;
    let addr = keel.addr("main");
    let tasks: Vec<_> = (0..6)
        .map(|_| tokio::spawn(async move { get(addr, "svc", "/").await.status }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        slow.peak_in_flight(),
        1,
        "max_requests = 1 means one at a time"
    );
    let up = keel.upstream("up");
    assert_eq!(
        (up.bulkhead.active(), up.bulkhead.pending()),
        (0, 0),
        "every slot was released"
    );
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn latencies(addr: std::net::SocketAddr, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let reply = get(addr, "b", "/").await;
        assert_eq!(reply.status, 200, "upstream b must keep answering");
        out.push(reply.elapsed);
    }
    out.sort();
    out
}

/// Upstream A hangs with every slot and queue place taken; B, behind the same listener, is
/// untouched: every request succeeds and its latency stays within a few ms of the unloaded case.
#[tokio::test]
async fn saturated_upstream_does_not_slow_others() {
    let hang = upstream(Behaviour::Hang).await;
    let ok = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&hanging_and_healthy(
        hang.addr,
        ok.addr,
        "max_requests = 16\nmax_pending = 16\nqueue_timeout = \"60s\"",
    ))
    .await;
    let addr = keel.addr("main");
    let _ = latencies(addr, 20).await; // warm up the pool and the code paths
    let base = latencies(addr, 200).await;

    let held: Vec<_> = (0..32)
        .map(|_| tokio::spawn(async move { get(addr, "a", "/").await }))
        .collect();
    let a = keel.upstream("a");
    eventually(Duration::from_secs(10), "upstream a saturated", || {
        let a = a.clone();
        async move { a.bulkhead.active() == 16 && a.bulkhead.pending() == 16 }
    })
    .await;
    let rejected = get(addr, "a", "/").await;
    assert_eq!(rejected.keel_error(), Some("bulkhead-full"));

    let loaded = latencies(addr, 200).await;
    let (b50, b99) = (percentile(&base, 0.5), percentile(&base, 0.99));
    let (l50, l99) = (percentile(&loaded, 0.5), percentile(&loaded, 0.99));
    println!("isolation: upstream b latency unloaded p50 {b50:?} p99 {b99:?}; with a saturated p50 {l50:?} p99 {l99:?}");
    assert!(
        l50 <= b50 + Duration::from_millis(3),
        "p50 rose from {b50:?} to {l50:?} while another upstream was saturated"
    );
    assert_eq!(hang.requests(), 16);
    drop(held);
}
