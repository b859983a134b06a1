//! Load balancing and endpoint health across several endpoints: outlier ejection with a retry,
//! the `max_ejected_percent` cap, panic mode, P2C against a slow endpoint, weighted round robin,
//! hash stickiness, active health checks, and health checks never closing an open breaker.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keel::upstream::breaker::BreakerState;
use tokio::net::TcpListener;
use tokio::time::Instant;

use support::*;

/// Longest a single request through keel may take before the test fails instead of hanging.
const REQUEST_LIMIT: Duration = Duration::from_secs(10);

/// A test upstream whose `/healthz` answer can be flipped, and whose other answers carry its own
/// address in the body, so a test can tell which endpoint served a request.
#[derive(Clone)]
struct Backend {
    addr: SocketAddr,
    /// What `/healthz` says: 200 when true, 503 when false.
    healthy: Arc<AtomicBool>,
    /// Status of every other request.
    status: u16,
    /// Requests other than health checks.
    requests: Arc<AtomicUsize>,
    /// `/healthz` requests.
    health_checks: Arc<AtomicUsize>,
}

impl Backend {
    /// Binds `127.0.0.1:0`, then serves; the port accepts before this returns.
    async fn start(status: u16) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = Backend {
            addr: listener.local_addr().unwrap(),
            healthy: Arc::new(AtomicBool::new(true)),
            status,
            requests: Arc::new(AtomicUsize::new(0)),
            health_checks: Arc::new(AtomicUsize::new(0)),
        };
        let server = backend.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let response = server.answer(req.uri().path());
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        backend
    }

    fn answer(&self, path: &str) -> Response<Full<Bytes>> {
        let (status, body) = if path == "/healthz" {
            self.health_checks.fetch_add(1, Ordering::SeqCst);
            if self.healthy.load(Ordering::SeqCst) {
                (200, "ok".to_owned())
            } else {
                (503, "unhealthy".to_owned())
            }
        } else {
            self.requests.fetch_add(1, Ordering::SeqCst);
            (self.status, self.addr.to_string())
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        response
    }

    fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn health_checks(&self) -> usize {
        self.health_checks.load(Ordering::SeqCst)
    }
}

/// One listener routing everything to upstream `up` with these endpoints. `upstream_extra` goes
/// right after `endpoints` (plain keys first, then any `[upstreams.up.*]` tables);
/// `route_extra` goes into the route table.
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

/// `GET /` through keel, optionally with an `x-user` header, bounded by [`REQUEST_LIMIT`].
async fn fetch(addr: SocketAddr, user: Option<&str>) -> Reply {
    let mut req = Request::get("/").header("host", "svc");
    if let Some(user) = user {
        req = req.header("x-user", user);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    tokio::time::timeout(REQUEST_LIMIT, send(addr, req))
        .await
        .expect("keel did not answer within the request limit")
}

/// Sends `total` requests from `concurrency` client tasks; returns each (status, keel-error)
/// in completion order per task.
async fn fire(addr: SocketAddr, total: usize, concurrency: usize) -> Vec<(u16, Option<String>)> {
    let remaining = Arc::new(AtomicUsize::new(total));
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let remaining = remaining.clone();
            tokio::spawn(async move {
                let mut replies = Vec::new();
                // Bounded: each turn takes one of `total` tickets.
                while remaining
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let reply = fetch(addr, None).await;
                    replies.push((reply.status, reply.keel_error().map(str::to_owned)));
                }
                replies
            })
        })
        .collect();
    let mut all = Vec::with_capacity(total);
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all
}

/// Endpoints of `up` ejected right now.
fn ejected(keel: &Keel) -> Vec<SocketAddr> {
    let up = keel.upstream("up");
    let now = Instant::now();
    up.endpoints()
        .iter()
        .filter(|e| up.balancer.is_ejected(e, now))
        .map(|e| e.addr)
        .collect()
}

#[tokio::test]
async fn outlier_ejection_and_one_retry_hide_a_failing_endpoint() {
    let good_a = upstream(Behaviour::Respond).await;
    let good_b = upstream(Behaviour::Respond).await;
    let bad = upstream(Behaviour::Status(503)).await;
    let keel = spawn_keel(&config(
        &[good_a.addr, bad.addr, good_b.addr],
        "[upstreams.up.outlier]\nconsecutive_failures = 3\nbase_ejection = \"30s\"\n\
         [upstreams.up.breaker]\nenabled = false\n",
        r#"retry = { attempts = 2, on = ["503"], budget_ratio = 1.0, min_retries_per_second = 100 }"#,
    ))
    .await;
    let addr = keel.addr("main");

    // Four clients at a time: with requests outstanding on the good endpoints, P2C keeps
    // offering traffic to every endpoint it may use, so "no traffic to the bad one" below means
    // it is ejected, not merely out of favour. (Sequential requests on loopback stick to
    // whichever endpoints were measured first, and may never reach the bad one at all.)
    let first_100 = fire(addr, 100, 4).await;
    let bad_after_100 = bad.requests();
    let last_200 = fire(addr, 200, 4).await;
    let errors: Vec<_> = first_100
        .iter()
        .chain(&last_200)
        .enumerate()
        .filter(|(_, (status, _))| *status != 200)
        .collect();
    let bad_last_200 = bad.requests() - bad_after_100;
    let up = keel.upstream("up");
    let ejections = up.stats.ejections.load(Ordering::Relaxed);
    let retries = up.stats.retries.load(Ordering::Relaxed);
    println!(
        "requests: good_a {} good_b {} bad {} (bad in last 200: {bad_last_200}); \
         ejections {ejections}, retries {retries}, client errors {errors:?}",
        good_a.requests(),
        good_b.requests(),
        bad.requests()
    );
    assert!(
        errors.is_empty(),
        "with one retry on 503 every client request should succeed; failed (index, status, keel-error): {errors:?}"
    );
    assert!(
        (3..=10).contains(&bad.requests()),
        "the bad endpoint should see its 3 failures (plus a few at most) before ejection, saw {}",
        bad.requests()
    );
    assert_eq!(
        bad_last_200, 0,
        "the bad endpoint is ejected for 30 s and must get none of the last 200 requests"
    );
    assert!(ejections >= 1, "stats.ejections = {ejections}");
    assert_eq!(
        ejected(&keel),
        vec![bad.addr],
        "only the bad endpoint is ejected"
    );
    assert!(
        (1..=bad.requests() as u64).contains(&retries),
        "each request that hit the bad endpoint is retried once: retries {retries}, bad {}",
        bad.requests()
    );
    assert_eq!(
        good_a.requests() + good_b.requests(),
        300,
        "every client request is answered by a good endpoint exactly once"
    );
}

#[tokio::test]
async fn max_ejected_percent_caps_ejections_at_once() {
    let good = upstream(Behaviour::Respond).await;
    let bad: Vec<TestUpstream> = vec![
        upstream(Behaviour::Status(503)).await,
        upstream(Behaviour::Status(503)).await,
        upstream(Behaviour::Status(503)).await,
    ];
    let keel = spawn_keel(&config(
        &[bad[0].addr, good.addr, bad[1].addr, bad[2].addr],
        // Round robin, so every failing endpoint keeps getting its share of the traffic.
        "balancer = \"round_robin\"\n\
         [upstreams.up.outlier]\nconsecutive_failures = 3\nbase_ejection = \"30s\"\nmax_ejected_percent = 50\n\
         [upstreams.up.breaker]\nenabled = false\n",
        "",
    ))
    .await;
    let addr = keel.addr("main");

    // Send until the cap is reached (bounded), checking the cap after every request.
    let mut sent = 0;
    while ejected(&keel).len() < 2 && sent < 400 {
        fetch(addr, None).await;
        sent += 1;
        let now_ejected = ejected(&keel);
        assert!(
            now_ejected.len() <= 2,
            "50 % of 4 endpoints: at most 2 ejected, found {now_ejected:?} after {sent} requests"
        );
    }
    assert_eq!(
        ejected(&keel).len(),
        2,
        "two of the three failing endpoints should be ejected within {sent} requests"
    );
    // The third failing endpoint keeps failing; it must still not be ejected.
    let third = bad
        .iter()
        .find(|b| !ejected(&keel).contains(&b.addr))
        .unwrap();
    let third_before = third.requests();
    for i in 0..100 {
        fetch(addr, None).await;
        let now_ejected = ejected(&keel);
        assert!(
            now_ejected.len() <= 2,
            "at most 2 ejected, found {now_ejected:?} at request {i} after the cap was reached"
        );
    }
    let ejections = keel.upstream("up").stats.ejections.load(Ordering::Relaxed);
    println!(
        "cap reached after {sent} requests; third failing endpoint got {} more requests; ejections {ejections}",
        third.requests() - third_before
    );
    assert!(
        third.requests() - third_before >= 3,
        "the third failing endpoint still gets traffic (enough to have been ejected without the cap)"
    );
    assert_eq!(ejections, 2, "no ejection beyond the cap is counted");
    assert!(!ejected(&keel).contains(&good.addr));
}

#[tokio::test]
async fn panic_mode_balances_across_all_endpoints_when_none_is_healthy() {
    let a = Backend::start(200).await;
    let b = Backend::start(200).await;
    a.set_healthy(false);
    b.set_healthy(false);
    let keel = spawn_keel(&config(
        &[a.addr, b.addr],
        "balancer = \"round_robin\"\n\
         health = { path = \"/healthz\", interval = \"100ms\", timeout = \"200ms\", unhealthy_after = 2, healthy_after = 2 }\n",
        "",
    ))
    .await;
    let up = keel.upstream("up");
    eventually(
        Duration::from_secs(5),
        "both endpoints are marked unhealthy",
        || {
            let up = up.clone();
            async move {
                up.endpoints()
                    .iter()
                    .all(|e| !e.state.healthy.load(Ordering::SeqCst))
            }
        },
    )
    .await;

    let panic_before = up.balancer.panic_picks.load(Ordering::Relaxed);
    let (a_before, b_before) = (a.requests(), b.requests());
    for i in 0..20 {
        let reply = fetch(keel.addr("main"), None).await;
        assert_eq!(
            reply.status, 200,
            "request {i}: panic mode still sends requests"
        );
    }
    let panic_picks = up.balancer.panic_picks.load(Ordering::Relaxed) - panic_before;
    let split = (a.requests() - a_before, b.requests() - b_before);
    println!("panic picks {panic_picks}, split {split:?}");
    assert!(
        panic_picks >= 20,
        "every pick was a panic pick: {panic_picks}"
    );
    assert_eq!(split, (10, 10), "panic mode balances across all endpoints");
}

#[tokio::test]
async fn p2c_sends_fewer_requests_to_a_slow_endpoint() {
    let fast_a = upstream(Behaviour::Respond).await;
    let slow = upstream(Behaviour::Delay(Duration::from_millis(50))).await;
    let fast_b = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&config(&[fast_a.addr, slow.addr, fast_b.addr], "", "")).await;
    let addr = keel.addr("main");

    let replies = fire(addr, 150, 8).await;
    assert_eq!(replies.len(), 150);
    assert!(
        replies.iter().all(|(status, _)| *status == 200),
        "replies {replies:?}"
    );
    let (a, s, b) = (fast_a.requests(), slow.requests(), fast_b.requests());
    println!("p2c split: fast_a {a}, slow {s}, fast_b {b}");
    assert_eq!(a + s + b, 150);
    assert!(
        s < a / 2 && s < b / 2,
        "the slow endpoint should get less than half of each fast one's requests: fast_a {a}, slow {s}, fast_b {b}"
    );
}

#[tokio::test]
async fn weighted_round_robin_follows_the_weights() {
    let a = upstream(Behaviour::Respond).await;
    let b = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&config(
        &[a.addr, b.addr],
        &format!(
            "balancer = \"round_robin\"\nweights = {{ \"127.0.0.1:{}\" = 3 }}\n",
            a.addr.port()
        ),
        "",
    ))
    .await;
    for i in 0..40 {
        assert_eq!(
            fetch(keel.addr("main"), None).await.status,
            200,
            "request {i}"
        );
    }
    println!("weighted split: a {} b {}", a.requests(), b.requests());
    assert_eq!(
        (a.requests(), b.requests()),
        (30, 10),
        "weight 3 against 1 gives A three times B's share"
    );
}

#[tokio::test]
async fn hash_balancer_keeps_each_user_on_one_endpoint() {
    let backends = [
        Backend::start(200).await,
        Backend::start(200).await,
        Backend::start(200).await,
    ];
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let keel = spawn_keel(&config(
        &addrs,
        "balancer = \"hash\"\nhash_header = \"x-user\"\n",
        "",
    ))
    .await;
    let addr = keel.addr("main");

    let users: Vec<String> = (0..16).map(|i| format!("user-{i}")).collect();
    let mut placement: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    // Interleave users so stickiness does not depend on request order.
    for round in 0..4 {
        for user in &users {
            let reply = fetch(addr, Some(user)).await;
            assert_eq!(reply.status, 200, "{user} round {round}");
            placement
                .entry(user.as_str())
                .or_default()
                .insert(reply.body);
        }
    }
    for (user, served_by) in &placement {
        assert_eq!(
            served_by.len(),
            1,
            "{user} must always land on the same endpoint, was served by {served_by:?}"
        );
    }
    let used: BTreeSet<&String> = placement.values().flatten().collect();
    println!("hash placement: {placement:?}");
    assert!(
        used.len() > 1,
        "16 users should spread over more than one of 3 endpoints, all went to {used:?}"
    );
}

#[tokio::test]
async fn health_checks_take_an_endpoint_out_and_let_it_back_in() {
    let a = Backend::start(200).await;
    let b = Backend::start(200).await;
    let keel = spawn_keel(&config(
        &[a.addr, b.addr],
        // Round robin, so that a healthy endpoint is certain to get its share.
        "balancer = \"round_robin\"\n\
         health = { path = \"/healthz\", interval = \"100ms\", timeout = \"200ms\", unhealthy_after = 2, healthy_after = 2 }\n",
        "",
    ))
    .await;
    let addr = keel.addr("main");
    let a_addr = a.addr.to_string();
    let b_addr = b.addr.to_string();

    // Both healthy: both get traffic.
    for _ in 0..4 {
        assert_eq!(fetch(addr, None).await.status, 200);
    }
    assert_eq!((a.requests(), b.requests()), (2, 2));

    a.set_healthy(false);
    eventually(
        Duration::from_secs(5),
        "all traffic goes to B once A fails its health checks",
        || {
            let b_addr = b_addr.clone();
            async move {
                let mut all_b = true;
                for _ in 0..4 {
                    let reply = fetch(addr, None).await;
                    assert_eq!(reply.status, 200);
                    all_b &= reply.body == b_addr;
                }
                all_b
            }
        },
    )
    .await;
    let a_out = a.requests();
    for i in 0..20 {
        let reply = fetch(addr, None).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, b_addr, "request {i} while A is unhealthy");
    }
    assert_eq!(a.requests(), a_out, "an unhealthy endpoint gets no traffic");
    let up = keel.upstream("up");
    let a_state = up
        .endpoints()
        .iter()
        .find(|e| e.addr == a.addr)
        .map(|e| e.state.clone())
        .unwrap();
    assert!(!a_state.healthy.load(Ordering::SeqCst));

    a.set_healthy(true);
    eventually(
        Duration::from_secs(5),
        "A gets traffic again once it passes its health checks",
        || {
            let a_addr = a_addr.clone();
            async move {
                let mut any_a = false;
                for _ in 0..4 {
                    let reply = fetch(addr, None).await;
                    assert_eq!(reply.status, 200);
                    any_a |= reply.body == a_addr;
                }
                any_a
            }
        },
    )
    .await;
    assert!(a_state.healthy.load(Ordering::SeqCst));
    println!(
        "A: {} requests, {} health checks; B: {} requests, {} health checks",
        a.requests(),
        a.health_checks(),
        b.requests(),
        b.health_checks()
    );
}

#[tokio::test]
async fn passing_health_checks_do_not_close_an_open_breaker() {
    // Real traffic fails (503) while /healthz passes.
    let backend = Backend::start(503).await;
    let keel = spawn_keel(&config(
        &[backend.addr],
        "health = { path = \"/healthz\", interval = \"100ms\", timeout = \"200ms\", unhealthy_after = 2, healthy_after = 2 }\n\
         [upstreams.up.breaker]\nconsecutive_failures = 3\nopen_for = \"10s\"\n",
        "",
    ))
    .await;
    let addr = keel.addr("main");
    let up = keel.upstream("up");
    eventually(
        Duration::from_secs(5),
        "health checks are running",
        || async { backend.health_checks() >= 2 },
    )
    .await;

    for i in 0..3 {
        let reply = fetch(addr, None).await;
        assert_eq!(reply.status, 503, "request {i}");
        assert_eq!(
            reply.keel_error(),
            None,
            "request {i} is the upstream's own 503"
        );
    }
    assert_eq!(up.breaker_state().0, BreakerState::Open);
    let rejected = fetch(addr, None).await;
    assert_eq!(rejected.status, 503);
    assert_eq!(rejected.keel_error(), Some("circuit-open"));
    assert_eq!(
        backend.requests(),
        3,
        "an open breaker does not touch the upstream"
    );

    // Watch for about a second (well inside open_for) while checks keep passing.
    let checks_before = backend.health_checks();
    let watch_until = Instant::now() + Duration::from_secs(1);
    let mut looks = 0;
    while Instant::now() < watch_until && looks < 100 {
        looks += 1;
        let (state, _, reason) = up.breaker_state();
        assert_eq!(
            state,
            BreakerState::Open,
            "health checks must not close the breaker (reason {reason}, after {looks} looks)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let checks = backend.health_checks() - checks_before;
    println!("{checks} passing health checks while the breaker stayed Open");
    assert!(
        checks >= 5,
        "health checks kept passing during the watch: {checks}"
    );
    assert!(up
        .endpoints()
        .iter()
        .all(|e| e.state.healthy.load(Ordering::SeqCst)));
    assert_eq!(up.breaker_state().0, BreakerState::Open);
    let still = fetch(addr, None).await;
    assert_eq!(still.keel_error(), Some("circuit-open"));
    assert_eq!(backend.requests(), 3);
}
