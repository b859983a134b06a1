//! Per-upstream connection pool: reuse, the connection cap, idle expiry, round robin, DNS names,
//! and upstreams that close idle connections.

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::*;

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&single_route(up.addr, "", "")).await;
    for _ in 0..20 {
        assert_eq!(get(keel.addr("main"), "svc", "/").await.status, 200);
    }
    assert_eq!(up.requests(), 20);
    assert_eq!(
        up.connections(),
        1,
        "keel should reuse its pooled connection"
    );
}

#[tokio::test]
async fn max_connections_caps_open_connections() {
    let up = upstream(Behaviour::Delay(Duration::from_millis(100))).await;
    let keel = spawn_keel(&single_route(
        up.addr,
        "[upstreams.up.pool]\nmax_connections = 2\nmax_requests = 8\nmax_pending = 8\nqueue_timeout = \"10s\"",
        "",
    ))
    .await;
    let addr = keel.addr("main");
    let tasks: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { get(addr, "svc", "/").await.status }))
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(up.requests(), 8);
    assert!(
        up.peak_open() <= 2,
        "peak open connections {} > max_connections 2",
        up.peak_open()
    );
    assert!(up.peak_in_flight() <= 2);
}

#[tokio::test]
async fn idle_pooled_connections_close_after_idle_timeout() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&single_route(
        up.addr,
        "[upstreams.up.pool]\nidle_timeout = \"200ms\"",
        "",
    ))
    .await;
    assert_eq!(get(keel.addr("main"), "svc", "/").await.status, 200);
    assert_eq!(up.open(), 1);
    eventually(
        Duration::from_secs(5),
        "keel closes the idle pooled connection",
        || async { up.open() == 0 },
    )
    .await;
    assert_eq!(get(keel.addr("main"), "svc", "/").await.status, 200);
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn upstream_closing_idle_connections_does_not_fail_requests() {
    let up = upstream(Behaviour::CloseIdleAfter(Duration::from_millis(50))).await;
    let keel = spawn_keel(&single_route(up.addr, "", "")).await;
    for round in 1..=3 {
        assert_eq!(
            get(keel.addr("main"), "svc", "/").await.status,
            200,
            "round {round}"
        );
        eventually(
            Duration::from_secs(5),
            "upstream closes its idle connection",
            || async { up.open() == 0 },
        )
        .await;
    }
    assert_eq!(up.requests(), 3);
}

#[tokio::test]
async fn round_robin_across_endpoints() {
    let a = upstream(Behaviour::Respond).await;
    let b = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&format!(
        "[[listeners]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\n[[listeners.routes]]\nupstream = \"up\"\n\
         [upstreams.up]\nbalancer = \"round_robin\"\nendpoints = [\"{}\", \"{}\"]\n",
        a.addr, b.addr
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(get(keel.addr("main"), "svc", "/").await.status, 200);
    }
    assert_eq!((a.requests(), b.requests()), (5, 5));
}

#[tokio::test]
async fn endpoint_names_are_resolved() {
    // Serve on every address "localhost" resolves to, with one port and shared counters.
    let counters = Arc::new(support::Counters::default());
    let mut addrs: Vec<_> = tokio::net::lookup_host("localhost:0")
        .await
        .unwrap()
        .collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    let first = upstream_at(addrs[0], counters.clone(), Behaviour::Respond)
        .await
        .unwrap();
    for other in &addrs[1..] {
        let mut other = *other;
        other.set_port(first.addr.port());
        // An address family the machine lacks is skipped; keel then gets connect errors there.
        let _ = upstream_at(other, counters.clone(), Behaviour::Respond).await;
    }
    let keel = spawn_keel(&format!(
        "[[listeners]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\n[[listeners.routes]]\nupstream = \"up\"\n\
         [upstreams.up]\nendpoints = [\"localhost:{}\"]\ndns_refresh = \"100ms\"\n",
        first.addr.port()
    ))
    .await;
    assert!(!keel.upstream("up").endpoints().is_empty());
    for _ in 0..4 {
        assert_eq!(get(keel.addr("main"), "svc", "/").await.status, 200);
    }
    assert_eq!(first.requests(), 4);
}
