//! Graceful shutdown: SIGTERM lets in-flight requests finish, refuses new connections, and exits
//! as soon as nothing is in flight; `/ready` turns 503 at once.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;
use tokio::net::TcpStream;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_fifty_in_flight_requests_and_exits_early() {
    let up = upstream(Behaviour::Delay(Duration::from_secs(2))).await;
    let mut keel = KeelProcess::start(&format!(
        "[shutdown]\ngrace_period = \"30s\"\n{}",
        single_route(up.addr, "", "").replace(
            "name = \"main\"",
            "name = \"main\"\ndirection = \"inbound\""
        )
    ));
    let addr = keel.addr("main");
    let requests: Vec<_> = (0..50)
        .map(|_| tokio::spawn(async move { get(addr, "svc", "/").await.status }))
        .collect();
    eventually(
        Duration::from_secs(10),
        "50 requests in flight at the upstream",
        || async { up.counters.in_flight.load(Ordering::SeqCst) == 50 },
    )
    .await;

    let stopped_at = Instant::now();
    keel.terminate();
    eventually(
        Duration::from_secs(5),
        "new connections are refused",
        || async { TcpStream::connect(addr).await.is_err() },
    )
    .await;
    assert!(
        up.counters.in_flight.load(Ordering::SeqCst) > 0,
        "listener closed while requests were still in flight"
    );
    for request in requests {
        assert_eq!(request.await.unwrap(), 200, "an in-flight request was cut");
    }
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = keel.child.try_wait().unwrap() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "keel did not exit");
            #[allow(clippy::disallowed_methods)] // a blocking-pool thread, not a runtime worker
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    let took = stopped_at.elapsed();
    println!("shutdown: 50 in-flight requests completed, exit {status} {took:?} after SIGTERM (grace period 30s)");
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_secs(10),
        "exit took {took:?}: keel slept out the grace period"
    );
}

#[tokio::test]
async fn ready_turns_503_at_once_and_listeners_close_after_drain_delay() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&format!(
        "[shutdown]\ndrain_delay = \"400ms\"\ngrace_period = \"5s\"\n{}",
        single_route(up.addr, "", "")
    ))
    .await;
    let (addr, admin) = (keel.addr("main"), keel.admin());
    assert_eq!(get(admin, "admin", "/ready").await.status, 200);
    assert_eq!(get(admin, "admin", "/live").await.status, 200);
    let drain = tokio::spawn(keel.drain());
    eventually(Duration::from_secs(2), "/ready answers 503", || async {
        get(admin, "admin", "/ready").await.status == 503
    })
    .await;
    // During drain_delay the listener still serves, so callers that have not noticed yet succeed.
    assert_eq!(get(addr, "svc", "/").await.status, 200);
    eventually(
        Duration::from_secs(5),
        "listener closed after drain_delay",
        || async { TcpStream::connect(addr).await.is_err() },
    )
    .await;
    assert!(drain.await.unwrap(), "drained within the grace period");
}

/// Inbound listeners stop first; outbound ones keep serving the app's calls while inbound
/// requests finish, and close once idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_is_asymmetric_for_sidecars() {
    let slow = upstream(Behaviour::Delay(Duration::from_millis(800))).await;
    let dependency = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&format!(
        r#"
[shutdown]
grace_period = "20s"
[[listeners]]
name = "in"
direction = "inbound"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  upstream = "app"
[[listeners]]
name = "out"
direction = "outbound"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  upstream = "dependency"
[upstreams.app]
endpoints = ["{}"]
[upstreams.dependency]
endpoints = ["{}"]
"#,
        slow.addr, dependency.addr
    ))
    .await;
    let (inbound, outbound) = (keel.addr("in"), keel.addr("out"));
    let in_flight = tokio::spawn(async move { get(inbound, "app", "/").await.status });
    eventually(
        Duration::from_secs(5),
        "the inbound request reached the app",
        || async { slow.requests() == 1 },
    )
    .await;
    let started = Instant::now();
    let drain = tokio::spawn(keel.drain());
    eventually(
        Duration::from_secs(5),
        "inbound refuses new connections",
        || async { TcpStream::connect(inbound).await.is_err() },
    )
    .await;
    // The app is still finishing the inbound request and calls its dependency: still served.
    assert_eq!(get(outbound, "dependency", "/").await.status, 200);
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the inbound request finished"
    );
    eventually(
        Duration::from_secs(10),
        "outbound closes once idle",
        || async { TcpStream::connect(outbound).await.is_err() },
    )
    .await;
    assert!(drain.await.unwrap(), "drained within the grace period");
    let took = started.elapsed();
    println!("asymmetric drain took {took:?}");
    assert!(took < Duration::from_secs(5), "drain took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_shutdown_stops_keel() {
    let up = upstream(Behaviour::Respond).await;
    let mut keel = KeelProcess::start(&single_route(up.addr, "", ""));
    let req = http::Request::post("/shutdown")
        .header("host", "admin")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let reply = send(keel.admin, req).await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let status = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = keel.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "keel did not exit after POST /shutdown"
            );
            #[allow(clippy::disallowed_methods)] // a blocking-pool thread, not a runtime worker
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}");
}
