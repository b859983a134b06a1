//! Chaos and canaries, end to end: time-boxed faults (delay, abort, gRPC abort, reset, slow
//! body) scoped by route and header, their expiry, the admin kill switch and `POST /faults`,
//! the `--allow-faults` gate of `keel run`, injected failures kept out of the breaker unless
//! asked, weighted splits that follow reloads and `POST /routes/NAME/split`, sticky splits,
//! and mirroring that never slows the real request.
//!
//! Percentages are checked over thousands of requests with bounds of several standard
//! deviations, so the tests are not flaky: 10 % ± 3 % over 2,000 is about ±4.5 σ.

mod support;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Bound for any single network step.
const STEP: Duration = Duration::from_secs(10);

/// Bound for a whole batch of load.
const LOAD_LIMIT: Duration = Duration::from_secs(60);

async fn bounded<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, work)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {STEP:?}"))
}

// ---------------------------------------------------------------------------------------------
// Requests, a keep-alive load client, metrics and the admin API.

/// `GET path` with `Host: svc` and extra headers.
fn req(path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut builder = Request::get(path).header("host", "svc");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Full::new(Bytes::new())).unwrap()
}

/// What the load client saw of one response.
#[derive(Debug, Clone)]
struct Seen {
    /// The request's index in the batch.
    index: usize,
    status: u16,
    keel_error: Option<String>,
    elapsed: Duration,
}

impl Seen {
    fn injected(&self) -> bool {
        self.keel_error.as_deref() == Some("fault-injected")
    }
}

async fn connect(addr: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = bounded("connect", TcpStream::connect(addr)).await.unwrap();
    let (sender, conn) = bounded(
        "handshake",
        hyper::client::conn::http1::handshake(TokioIo::new(stream)),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends `total` requests over `workers` keep-alive connections in parallel; `build(i)` makes
/// request `i`. Returns what was seen, in request order.
async fn load<F>(addr: SocketAddr, total: usize, workers: usize, build: F) -> Vec<Seen>
where
    F: Fn(usize) -> Request<Full<Bytes>> + Send + Sync + 'static,
{
    let build = Arc::new(build);
    let mut tasks = Vec::with_capacity(workers);
    for worker in 0..workers {
        let build = build.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut sender: Option<SendRequest<Full<Bytes>>> = None;
            for index in (worker..total).step_by(workers) {
                // Reuse the connection while keel keeps it open.
                if let Some(s) = sender.as_mut() {
                    if s.ready().await.is_err() {
                        sender = None;
                    }
                }
                let s = match sender.as_mut() {
                    Some(s) => s,
                    None => sender.insert(connect(addr).await),
                };
                let started = Instant::now();
                let response = s
                    .send_request(build(index))
                    .await
                    .unwrap_or_else(|e| panic!("request {index} failed: {e}"));
                let status = response.status().as_u16();
                let keel_error = response
                    .headers()
                    .get("keel-error")
                    .map(|v| v.to_str().unwrap().to_owned());
                response
                    .into_body()
                    .collect()
                    .await
                    .unwrap_or_else(|e| panic!("body of request {index}: {e}"));
                seen.push(Seen {
                    index,
                    status,
                    keel_error,
                    elapsed: started.elapsed(),
                });
            }
            seen
        }));
    }
    let mut all = tokio::time::timeout(LOAD_LIMIT, async {
        let mut all = Vec::with_capacity(total);
        for task in tasks {
            all.extend(task.await.unwrap());
        }
        all
    })
    .await
    .unwrap_or_else(|_| panic!("{total} requests did not finish within {LOAD_LIMIT:?}"));
    all.sort_by_key(|s| s.index);
    assert_eq!(all.len(), total);
    all
}

/// Asserts `count / total` is `expected` ± `tolerance` percent.
fn assert_share(count: usize, total: usize, expected: f64, tolerance: f64, what: &str) {
    let share = count as f64 * 100.0 / total as f64;
    assert!(
        (share - expected).abs() <= tolerance,
        "{what}: {count} of {total} = {share:.2} %, expected {expected} % ± {tolerance} %"
    );
}

/// The sum of the samples of `name` whose labels include all of `labels` (Prometheus text).
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if metric_name != name {
                return None;
            }
            let pairs: Vec<(&str, &str)> = label_text
                .split(',')
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k.trim(), v.trim_matches('"')))
                })
                .collect();
            let matches = labels
                .iter()
                .all(|(k, v)| pairs.iter().any(|(pk, pv)| pk == k && pv == v));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

async fn scrape(keel: &Keel) -> String {
    let reply = bounded("scrape", get(keel.metrics(), "metrics", "/metrics")).await;
    assert_eq!(reply.status, 200);
    reply.body
}

/// An admin request with a text body.
async fn admin(keel: &Keel, method: Method, path: &str, body: &str) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "admin")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    bounded(path, send(keel.admin(), request)).await
}

async fn list_faults(keel: &Keel) -> Vec<Value> {
    let reply = admin(keel, Method::GET, "/faults", "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let doc: Value = serde_json::from_str(&reply.body).unwrap();
    doc.as_array()
        .unwrap_or_else(|| panic!("GET /faults is not a list: {doc}"))
        .clone()
}

/// One listener `main` with one route `api` to upstream `up`, followed by `faults`.
fn api_with_faults(up: SocketAddr, upstream_extra: &str, faults: &str) -> String {
    format!(
        "{}\n{faults}",
        single_route(up, upstream_extra, "name = \"api\"")
    )
}

fn assert_passed(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 200, "{what}: {reply:?}");
    assert_eq!(reply.keel_error(), None, "{what}: {reply:?}");
}

fn assert_injected(reply: &Reply, status: u16, what: &str) {
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    assert_eq!(
        reply.keel_error(),
        Some("fault-injected"),
        "{what}: {reply:?}"
    );
}

/// Whether `text` has `SOURCE:LINE:COL: ` somewhere, with LINE and COL numbers.
fn located(text: &str, source: &str) -> Option<(usize, usize)> {
    text.match_indices(&format!("{source}:"))
        .find_map(|(at, m)| {
            let rest = &text[at + m.len()..];
            let (line, rest) = rest.split_once(':')?;
            let (col, _) = rest.split_once(':')?;
            Some((line.parse().ok()?, col.parse().ok()?))
        })
}

// ---------------------------------------------------------------------------------------------
// Percentages.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_percentage_holds_over_2000_requests() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&api_with_faults(
        up.addr,
        "",
        r#"
[[faults]]
name = "abort-tenth"
route = "api"
abort = 503
percent = 10
expires_in = "10m"
"#,
    ))
    .await;
    let seen = load(keel.addr("main"), 2000, 8, |_| req("/", &[])).await;
    let aborted = seen
        .iter()
        .filter(|s| s.status == 503 && s.injected())
        .count();
    let passed = seen
        .iter()
        .filter(|s| s.status == 200 && s.keel_error.is_none())
        .count();
    let other: Vec<&Seen> = seen
        .iter()
        .filter(|s| !(s.status == 503 && s.injected()) && s.status != 200)
        .collect();
    assert!(
        other.is_empty(),
        "every reply is an injected abort or a 200: {other:?}"
    );
    assert_share(aborted, 2000, 10.0, 3.0, "injected aborts");
    assert_eq!(
        up.requests(),
        passed,
        "the upstream received exactly the requests that were not aborted"
    );
    let metrics = scrape(&keel).await;
    assert_eq!(
        metric(&metrics, "keel_faults_injected_total", &[("kind", "abort")]),
        aborted as f64,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "keel_requests_total",
            &[("route", "api"), ("code_class", "5xx")]
        ),
        aborted as f64,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_percentage_holds_over_2000_requests() {
    // Long enough that an undelayed request on a busy 2-core machine rarely takes as long.
    const DELAY: Duration = Duration::from_millis(100);
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&api_with_faults(
        up.addr,
        "",
        r#"
[[faults]]
name = "delay-tenth"
route = "api"
delay = "100ms"
percent = 10
expires_in = "10m"
"#,
    ))
    .await;
    let total = 2000;
    let seen = load(keel.addr("main"), total, 16, |_| req("/", &[])).await;
    assert!(
        seen.iter()
            .all(|s| s.status == 200 && s.keel_error.is_none()),
        "a delay fault still answers from the upstream"
    );
    assert_eq!(up.requests(), total, "delayed requests reach the upstream");
    let injected = metric(
        &scrape(&keel).await,
        "keel_faults_injected_total",
        &[("kind", "delay")],
    ) as usize;
    assert_share(injected, total, 10.0, 3.0, "delays injected");
    let slow = seen.iter().filter(|s| s.elapsed >= DELAY).count();
    assert!(
        slow >= injected,
        "every delayed request took at least {DELAY:?}: only {slow} slow, {injected} delayed"
    );
    // The upstream answers at once: nearly all the slow requests are the delayed ones (a
    // scheduling stall on a loaded machine may slow a few others).
    assert!(
        slow <= injected + total / 20,
        "{slow} requests took {DELAY:?} or more but only {injected} were delayed"
    );
    assert_share(slow, total, 10.0, 3.0 + 5.0, "slow requests");
}

// ---------------------------------------------------------------------------------------------
// Scope, expiry and the admin API.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_scoped_fault_touches_only_matching_requests() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&api_with_faults(
        up.addr,
        "",
        r#"
[[faults]]
name = "only-test-requests"
header = { name = "x-chaos", value = "1" }
abort = 503
percent = 100
expires_in = "10m"
"#,
    ))
    .await;
    // Thirds: the matching value, no header, another value.
    let seen = load(keel.addr("main"), 300, 4, |i| match i % 3 {
        0 => req("/", &[("x-chaos", "1")]),
        1 => req("/", &[]),
        _ => req("/", &[("x-chaos", "0")]),
    })
    .await;
    for s in &seen {
        if s.index % 3 == 0 {
            assert!(s.status == 503 && s.injected(), "matching request: {s:?}");
        } else {
            assert!(
                s.status == 200 && s.keel_error.is_none(),
                "request without the header value was affected: {s:?}"
            );
        }
    }
    assert_eq!(up.requests(), 200, "only unaffected requests reached it");
}

#[tokio::test]
async fn a_fault_stops_at_its_expiry() {
    const LIFE: Duration = Duration::from_millis(300);
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&api_with_faults(up.addr, "", "")).await;
    let addr = keel.addr("main");
    let added_from = Instant::now();
    let reply = admin(
        &keel,
        Method::POST,
        "/faults",
        "[[faults]]\nname = \"short\"\nabort = 503\nexpires_in = \"300ms\"\n",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let added_by = Instant::now();
    // The fault expires somewhere in [added_from + LIFE, added_by + LIFE].
    let (mut injected, mut first_pass) = (0, None);
    let deadline = added_by + LIFE + STEP;
    for _ in 0..100_000 {
        let sent = Instant::now();
        assert!(
            sent < deadline,
            "the fault was still injecting after {STEP:?}"
        );
        let reply = bounded("request", get(addr, "svc", "/")).await;
        let received = Instant::now();
        if reply.keel_error() == Some("fault-injected") {
            assert_eq!(reply.status, 503, "{reply:?}");
            assert!(
                sent <= added_by + LIFE,
                "injected into a request sent {:?} after the fault was added (life {LIFE:?})",
                sent - added_by
            );
            injected += 1;
        } else {
            assert_passed(&reply, "after expiry");
            // Allow a few ms for SystemTime (keel) against Instant (here).
            assert!(
                received + Duration::from_millis(10) >= added_from + LIFE,
                "the fault stopped {:?} after it was added, before its expiry",
                received - added_from
            );
            first_pass = Some(received);
            break;
        }
    }
    assert!(first_pass.is_some(), "the fault never stopped");
    assert!(injected > 0, "the fault was injected before its expiry");
    for _ in 0..20 {
        assert_passed(
            &bounded("request", get(addr, "svc", "/")).await,
            "never again after expiry",
        );
    }
    assert_eq!(up.requests(), 21);
    assert!(
        list_faults(&keel).await.is_empty(),
        "an expired fault is not listed"
    );
    let metrics = scrape(&keel).await;
    assert_eq!(
        metric(&metrics, "keel_faults_injected_total", &[("kind", "abort")]),
        injected as f64
    );
}

#[tokio::test]
async fn get_lists_post_adds_and_delete_stops_injection_at_once() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&api_with_faults(
        up.addr,
        "",
        r#"
[[faults]]
name = "from-config"
route = "api"
abort = 503
expires_in = "10m"
"#,
    ))
    .await;
    let addr = keel.addr("main");
    assert_injected(&get(addr, "svc", "/").await, 503, "config fault");

    let listed = list_faults(&keel).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let fault = &listed[0];
    assert_eq!(fault["name"], "from-config", "{fault}");
    assert_eq!(fault["source"], "config", "{fault}");
    assert_eq!(fault["kind"], "abort", "{fault}");
    assert_eq!(fault["route"], "api", "{fault}");
    assert_eq!(fault["percent"], 100.0, "{fault}");
    let left = fault["seconds_left"].as_f64().unwrap();
    assert!(
        (500.0..=600.0).contains(&left),
        "seconds_left {left} of 10m"
    );

    let reply = admin(
        &keel,
        Method::POST,
        "/faults",
        r#"
[[faults]]
name = "from-api"
upstream = "up"
header = { name = "x-team", value = "payments" }
grpc_abort = 14
expires_in = "2m"
"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let added: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(added["added"].as_array().map(Vec::len), Some(1), "{added}");
    let listed = list_faults(&keel).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    let api = listed
        .iter()
        .find(|f| f["name"] == "from-api")
        .unwrap_or_else(|| panic!("{listed:?}"));
    assert_eq!(api["source"], "api", "{api}");
    assert_eq!(api["kind"], "grpc_abort", "{api}");
    assert_eq!(api["id"], added["added"][0], "{api}");
    assert_eq!(api["header"]["name"], "x-team", "{api}");
    let left = api["seconds_left"].as_f64().unwrap();
    assert!((60.0..=120.0).contains(&left), "seconds_left {left} of 2m");

    // The kill switch: everything stops with the DELETE's answer.
    let reply = admin(&keel, Method::DELETE, "/faults", "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let removed: Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(removed["removed"], 2, "{removed}");
    for _ in 0..20 {
        assert_passed(&get(addr, "svc", "/").await, "after DELETE /faults");
        let reply = bounded("request", send(addr, req("/", &[("x-team", "payments")]))).await;
        assert_passed(&reply, "API fault after DELETE /faults");
    }
    assert_eq!(up.requests(), 40);
    assert!(list_faults(&keel).await.is_empty());
}

#[tokio::test]
async fn post_faults_validates_like_the_config_file() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&api_with_faults(up.addr, "", "")).await;
    let addr = keel.addr("main");

    let reply = admin(
        &keel,
        Method::POST,
        "/faults",
        "[[faults]]\nname = \"forever\"\nabort = 503\n",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        located(&reply.body, "POST /faults").is_some(),
        "FILE:LINE:COL naming POST /faults: {}",
        reply.body
    );
    assert!(reply.body.contains("no expiry"), "{}", reply.body);

    let reply = admin(
        &keel,
        Method::POST,
        "/faults",
        "[[faults]]\nabort = 503\nexpires_in = \"1m\"\npercentage = 10\n",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(
        located(&reply.body, "POST /faults").map(|(line, _)| line),
        Some(4),
        "points at the unknown key on line 4: {}",
        reply.body
    );
    assert!(reply.body.contains("percentage"), "{}", reply.body);

    let reply = admin(
        &keel,
        Method::POST,
        "/faults",
        "[[faults]]\nroute = \"nope\"\nabort = 503\nexpires_in = \"1m\"\n",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(
        located(&reply.body, "POST /faults"),
        Some((2, 9)),
        "points at the route name: {}",
        reply.body
    );
    assert!(reply.body.contains("nope"), "{}", reply.body);

    assert!(
        list_faults(&keel).await.is_empty(),
        "refused faults were not added"
    );
    assert_passed(&get(addr, "svc", "/").await, "nothing injected");

    let reply = admin(
        &keel,
        Method::POST,
        "/faults",
        "[[faults]]\nroute = \"api\"\nabort = 418\nexpires_in = \"1m\"\n",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_injected(&get(addr, "svc", "/").await, 418, "added fault");
}

// ---------------------------------------------------------------------------------------------
// The --allow-faults gate of `keel run`.

/// A child `keel` process, killed when dropped.
async fn keel_command(args: &[&str], config: &std::path::Path) -> std::process::Output {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(20), child)
        .await
        .unwrap_or_else(|_| panic!("keel {args:?} did not exit in time"))
        .unwrap()
}

/// The string value of `"key":"value"` in a JSON log line.
fn json_field(line: &str, key: &str) -> Option<String> {
    let marker = format!("\"{key}\":\"");
    let start = line.find(&marker)? + marker.len();
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_run_refuses_faults_without_allow_faults() {
    let up = upstream(Behaviour::Respond).await;
    let path = temp_path("faults.toml");
    std::fs::write(
        &path,
        with_loopback_admin(&api_with_faults(
            up.addr,
            "",
            "[[faults]]\nabort = 503\nexpires_in = \"10m\"\n",
        )),
    )
    .unwrap();

    let check = keel_command(&["check"], &path).await;
    assert_eq!(
        check.status.code(),
        Some(0),
        "keel check accepts the file: {}",
        String::from_utf8_lossy(&check.stdout)
    );

    let refused = keel_command(&["run"], &path).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--allow-faults"), "{stderr}");
    assert_eq!(up.requests(), 0);

    // With the flag it starts and injects.
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["run", "--allow-faults", "--log-format", "json", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let main = tokio::time::timeout(Duration::from_secs(20), async {
        let mut main = None;
        while let Some(line) = lines.next_line().await.unwrap() {
            if json_field(&line, "listener").as_deref() == Some("main") {
                main = json_field(&line, "addr").map(|a| a.parse::<SocketAddr>().unwrap());
            }
            if line.contains("\"admin listening\"") {
                return main;
            }
        }
        panic!("keel --allow-faults exited before listening");
    })
    .await
    .expect("keel --allow-faults logged its addresses in time")
    .expect("the listener address was logged");
    assert_injected(
        &bounded("request", get(main, "svc", "/")).await,
        503,
        "config fault with --allow-faults",
    );
    child.kill().await.unwrap();
    let _ = std::fs::remove_file(&path);
}

// ---------------------------------------------------------------------------------------------
// Injected failures and the breaker.

const BREAKER: &str = r#"
[upstreams.up.breaker]
consecutive_failures = 2
open_for = "60s"
max_open_for = "60s"
"#;

#[tokio::test]
async fn injected_aborts_do_not_trip_the_breaker_unless_configured() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&api_with_faults(
        up.addr,
        BREAKER,
        "[[faults]]\nabort = 503\nexpires_in = \"10m\"\n",
    ))
    .await;
    let addr = keel.addr("main");
    for _ in 0..20 {
        assert_injected(&get(addr, "svc", "/").await, 503, "abort");
    }
    assert_eq!(
        keel.upstream("up").breaker_state().0.as_str(),
        "Closed",
        "20 injected aborts left the breaker alone"
    );
    assert_eq!(up.requests(), 0);
    assert_eq!(
        admin(&keel, Method::DELETE, "/faults", "").await.status,
        200
    );
    assert_passed(&get(addr, "svc", "/").await, "breaker closed");

    // count_for_breaker = true exercises the breaker for real.
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&api_with_faults(
        up.addr,
        BREAKER,
        "[[faults]]\nabort = 503\nexpires_in = \"10m\"\ncount_for_breaker = true\n",
    ))
    .await;
    let addr = keel.addr("main");
    for _ in 0..2 {
        assert_injected(&get(addr, "svc", "/").await, 503, "counted abort");
    }
    assert_eq!(
        keel.upstream("up").breaker_state().0.as_str(),
        "Open",
        "two counted aborts opened the breaker"
    );
    assert_eq!(
        admin(&keel, Method::DELETE, "/faults", "").await.status,
        200
    );
    let reply = get(addr, "svc", "/").await;
    assert_eq!(reply.status, 503, "{reply:?}");
    assert_eq!(reply.keel_error(), Some("circuit-open"), "{reply:?}");
    assert_eq!(up.requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// Reset, slow body, gRPC abort.

#[tokio::test]
async fn reset_closes_the_connection_without_a_response() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&api_with_faults(
        up.addr,
        "",
        "[[faults]]\nreset = true\nexpires_in = \"10m\"\n",
    ))
    .await;
    let addr = keel.addr("main");

    let mut stream = bounded("connect", TcpStream::connect(addr)).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let read = tokio::time::timeout(STEP, stream.read_to_end(&mut received))
        .await
        .expect("keel closed the connection instead of leaving it open");
    assert!(
        received.is_empty(),
        "no byte of a response: {:?}",
        String::from_utf8_lossy(&received)
    );
    if let Err(e) = read {
        // A reset instead of a FIN is a close without a response too.
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
    }

    let mut sender = connect(addr).await;
    let result = bounded("request", sender.send_request(req("/", &[]))).await;
    assert!(
        result.is_err(),
        "a client gets an error, not a response: {result:?}"
    );
    assert_eq!(up.requests(), 0);
    let metrics = scrape(&keel).await;
    assert_eq!(
        metric(&metrics, "keel_faults_injected_total", &[("kind", "reset")]),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_body_throttles_and_delivers_the_whole_body() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&api_with_faults(
        up.addr,
        "",
        "[[faults]]\nslow_body = 2000\nexpires_in = \"10m\"\n",
    ))
    .await;
    let mut sender = connect(keel.addr("main")).await;
    let started = Instant::now();
    let response = bounded("request", sender.send_request(req("/source/1000", &[])))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = bounded("body", response.into_body().collect())
        .await
        .expect("the throttled body arrives complete")
        .to_bytes();
    let elapsed = started.elapsed();
    assert_eq!(body.len(), 1000, "the whole body arrived");
    assert_eq!(body, block().slice(..1000), "byte for byte");
    assert!(
        elapsed >= Duration::from_millis(400),
        "1000 bytes at 2000 bytes/s took {elapsed:?}"
    );
}

#[tokio::test]
async fn grpc_abort_answers_a_trailers_only_grpc_error() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&api_with_faults(
        up.addr,
        "",
        "[[faults]]\ngrpc_abort = 14\nexpires_in = \"10m\"\n",
    ))
    .await;
    let request = Request::post("/pkg.Service/Method")
        .header("host", "svc")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let reply = bounded("request", send(keel.addr("main"), request)).await;
    assert_injected(&reply, 200, "grpc abort");
    assert_eq!(reply.headers["grpc-status"], "14", "{reply:?}");
    assert_eq!(
        reply.headers["content-type"], "application/grpc",
        "{reply:?}"
    );
    assert!(reply.body.is_empty(), "{reply:?}");
    assert_eq!(up.requests(), 0);
}

// ---------------------------------------------------------------------------------------------
// Weighted splits and stickiness.

fn split_config(v1: SocketAddr, v2: SocketAddr, w1: u32, w2: u32, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  name = "orders"
  split = [{{ upstream = "v1", weight = {w1} }}, {{ upstream = "v2", weight = {w2} }}]
  {extra}
[upstreams.v1]
endpoints = ["{v1}"]
[upstreams.v2]
endpoints = ["{v2}"]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_ratios_hold_and_follow_reload_and_the_admin_api() {
    let v1 = upstream(Behaviour::Respond).await;
    let v2 = upstream(Behaviour::Respond).await;
    let path = temp_path("split.toml");
    let keel = spawn_keel_from_file(&path, &split_config(v1.addr, v2.addr, 90, 10, "")).await;
    let addr = keel.addr("main");

    let seen = load(addr, 2000, 8, |_| req("/", &[])).await;
    assert!(seen.iter().all(|s| s.status == 200), "all answered");
    assert_eq!(v1.requests() + v2.requests(), 2000);
    assert_share(v2.requests(), 2000, 10.0, 3.0, "v2 at weight 10 of 100");

    // The file now says 50/50; a reload moves the traffic.
    std::fs::write(
        &path,
        with_loopback_admin(&split_config(v1.addr, v2.addr, 50, 50, "")),
    )
    .unwrap();
    let reply = admin(&keel, Method::POST, "/reload", "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (v1_before, v2_before) = (v1.requests(), v2.requests());
    let seen = load(addr, 2000, 8, |_| req("/", &[])).await;
    assert!(seen.iter().all(|s| s.status == 200), "all answered");
    assert_eq!(v1.requests() - v1_before + v2.requests() - v2_before, 2000);
    assert_share(
        v2.requests() - v2_before,
        2000,
        50.0,
        5.0,
        "v2 after reloading 50/50",
    );

    // The admin API shifts everything to v2 without a reload.
    let reply = admin(
        &keel,
        Method::POST,
        "/routes/orders/split",
        "split = [{ upstream = \"v1\", weight = 0 }, { upstream = \"v2\", weight = 100 }]\n",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (v1_before, v2_before) = (v1.requests(), v2.requests());
    let seen = load(addr, 200, 4, |_| req("/", &[])).await;
    assert!(seen.iter().all(|s| s.status == 200), "all answered");
    assert_eq!(v1.requests(), v1_before, "v1 at weight 0 gets nothing");
    assert_eq!(v2.requests() - v2_before, 200, "v2 gets everything");

    // Unknown targets and all-zero weights are refused; the weights stay.
    let reply = admin(
        &keel,
        Method::POST,
        "/routes/orders/split",
        "split = [{ upstream = \"v3\", weight = 100 }]\n",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let reply = admin(
        &keel,
        Method::POST,
        "/routes/orders/split",
        "split = [{ upstream = \"v1\", weight = 0 }, { upstream = \"v2\", weight = 0 }]\n",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let reply = admin(
        &keel,
        Method::POST,
        "/routes/nope/split",
        "split = [{ upstream = \"v1\", weight = 1 }]\n",
    )
    .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    let v1_before = v1.requests();
    for _ in 0..20 {
        assert_passed(&get(addr, "svc", "/").await, "after refused splits");
    }
    assert_eq!(
        v1.requests(),
        v1_before,
        "the refused splits changed nothing"
    );

    // Error rate per version is one query away: the upstream label splits the route's counts.
    let metrics = scrape(&keel).await;
    for (name, up) in [("v1", &v1), ("v2", &v2)] {
        assert_eq!(
            metric(
                &metrics,
                "keel_requests_total",
                &[("route", "orders"), ("upstream", name)]
            ),
            up.requests() as f64,
            "keel_requests_total{{route=\"orders\",upstream=\"{name}\"}}: {metrics}"
        );
    }
    let _ = std::fs::remove_file(&path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_header_keeps_each_user_on_one_upstream() {
    // The two versions answer with different statuses, so each reply names its upstream.
    let v1 = upstream(Behaviour::Status(200)).await;
    let v2 = upstream(Behaviour::Status(201)).await;
    let keel = spawn_keel(&split_config(
        v1.addr,
        v2.addr,
        50,
        50,
        "sticky_header = \"x-user\"",
    ))
    .await;
    const USERS: usize = 50;
    let seen = load(keel.addr("main"), USERS * 6, 6, |i| {
        let user = format!("user-{}", i % USERS);
        req("/", &[("x-user", &user)])
    })
    .await;
    let mut by_user: HashMap<usize, HashSet<u16>> = HashMap::new();
    for s in &seen {
        assert!(matches!(s.status, 200 | 201), "{s:?}");
        by_user.entry(s.index % USERS).or_default().insert(s.status);
    }
    for (user, statuses) in &by_user {
        assert_eq!(
            statuses.len(),
            1,
            "user-{user} landed on several upstreams: {statuses:?}"
        );
    }
    let on_v2 = by_user.values().filter(|s| s.contains(&201)).count();
    assert!(
        (10..=40).contains(&on_v2),
        "{USERS} users spread over both upstreams, {on_v2} on v2"
    );
}

// ---------------------------------------------------------------------------------------------
// Mirroring.

fn mirror_config(real: SocketAddr, shadow: SocketAddr, shadow_extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  name = "api"
  upstream = "real"
  mirror = {{ upstream = "shadow", percent = 100 }}
[upstreams.real]
endpoints = ["{real}"]
[upstreams.shadow]
endpoints = ["{shadow}"]
{shadow_extra}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_shadow_never_slows_the_real_request() {
    let real = upstream(Behaviour::Respond).await;
    let shadow = upstream(Behaviour::Hang).await;
    let keel = spawn_keel(&mirror_config(
        real.addr,
        shadow.addr,
        "[upstreams.shadow.pool]\nmax_requests = 2\nmax_pending = 0\n",
    ))
    .await;
    let addr = keel.addr("main");
    let mut elapsed = Vec::new();
    for i in 0..30 {
        let reply = bounded("request", get(addr, "svc", &format!("/real/{i}"))).await;
        assert_passed(&reply, "real request with a hanging shadow");
        assert!(
            reply.elapsed < Duration::from_millis(200),
            "request {i} took {:?} with a hanging shadow",
            reply.elapsed
        );
        elapsed.push(reply.elapsed);
    }
    assert_eq!(real.requests(), 30);
    eventually(STEP, "copies reach the hanging shadow", || async {
        shadow.requests() >= 2
    })
    .await;
    assert_eq!(
        shadow.requests(),
        2,
        "the shadow's bulkhead (2 in flight, no queue) bounds the copies"
    );
}

/// One request as a recording upstream saw it.
#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    uri: String,
    headers: HeaderMap,
    body: Bytes,
}

/// An upstream that records every request and answers 204.
async fn recorder() -> (SocketAddr, Arc<Mutex<Vec<Recorded>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes());
                        log.lock().unwrap().push(Recorded {
                            method: parts.method.to_string(),
                            uri: parts.uri.to_string(),
                            headers: parts.headers,
                            body: body.unwrap_or_default(),
                        });
                        let mut response = Response::new(Full::new(Bytes::new()));
                        *response.status_mut() = http::StatusCode::NO_CONTENT;
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn mirrored_copies_carry_path_body_and_the_mirror_header() {
    let real = upstream(Behaviour::Respond).await;
    let (shadow, copies) = recorder().await;
    let keel = spawn_keel(&mirror_config(real.addr, shadow, "")).await;
    let request = Request::post("/orders/42?dry=1")
        .header("host", "svc")
        .header("x-test", "mirror-me")
        .body(Full::new(Bytes::from_static(b"hello mirror")))
        .unwrap();
    let reply = bounded("request", send(keel.addr("main"), request)).await;
    assert_passed(&reply, "real request");
    assert!(
        !reply.body.contains("x-keel-mirror"),
        "the real upstream does not get the mirror header: {}",
        reply.body
    );
    eventually(STEP, "the copy reaches the shadow", || async {
        !copies.lock().unwrap().is_empty()
    })
    .await;
    let copies = copies.lock().unwrap().clone();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let copy = &copies[0];
    assert_eq!(copy.method, "POST", "{copy:?}");
    assert_eq!(copy.uri, "/orders/42?dry=1", "{copy:?}");
    assert_eq!(copy.headers["x-keel-mirror"], "1", "{copy:?}");
    assert_eq!(copy.headers["x-test"], "mirror-me", "{copy:?}");
    assert_eq!(copy.body, Bytes::from_static(b"hello mirror"), "{copy:?}");
}

// ---------------------------------------------------------------------------------------------
// The access log.

fn read_lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn access_log_flags_the_injected_fault_kind() {
    let up = upstream(Behaviour::Respond).await;
    let path = temp_path("chaos-access.log");
    let keel = spawn_keel(&format!(
        r#"
[access_log]
output = "{log}"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
access_log = true
  [[listeners.routes]]
  name = "api"
  upstream = "up"
[upstreams.up]
endpoints = ["{up}"]
[[faults]]
header = {{ name = "x-kind", value = "abort" }}
abort = 503
expires_in = "10m"
[[faults]]
header = {{ name = "x-kind", value = "delay" }}
delay = "5ms"
expires_in = "10m"
[[faults]]
header = {{ name = "x-kind", value = "grpc" }}
grpc_abort = 14
expires_in = "10m"
"#,
        log = path.display(),
        up = up.addr
    ))
    .await;
    let addr = keel.addr("main");
    let send_with = |path: &'static str, kind: Option<&'static str>| async move {
        let headers: Vec<(&str, &str)> = kind.map(|k| ("x-kind", k)).into_iter().collect();
        bounded("request", send(addr, req(path, &headers))).await
    };
    assert_injected(&send_with("/abort", Some("abort")).await, 503, "abort");
    assert_passed(&send_with("/delay", Some("delay")).await, "delay");
    assert_injected(&send_with("/grpc", Some("grpc")).await, 200, "grpc");
    assert_passed(&send_with("/plain", None).await, "no fault");

    let paths = ["/abort", "/delay", "/grpc", "/plain"];
    eventually(STEP, "four access log lines", || {
        let path = path.clone();
        async move {
            let lines = read_lines(&path);
            paths.iter().all(|p| lines.iter().any(|l| l["path"] == *p))
        }
    })
    .await;
    let lines = read_lines(&path);
    let _ = std::fs::remove_file(&path);
    let line = |p: &str| {
        lines
            .iter()
            .find(|l| l["path"] == p)
            .unwrap_or_else(|| panic!("no line for {p}: {lines:#?}"))
            .clone()
    };
    let abort = line("/abort");
    assert_eq!(abort["flags"]["fault"], "abort", "{abort}");
    assert_eq!(abort["keel_error"], "fault-injected", "{abort}");
    assert_eq!(abort["status"], 503, "{abort}");
    let delay = line("/delay");
    assert_eq!(delay["flags"]["fault"], "delay", "{delay}");
    assert!(delay["keel_error"].is_null(), "{delay}");
    assert_eq!(delay["status"], 200, "{delay}");
    let grpc = line("/grpc");
    assert_eq!(grpc["flags"]["fault"], "grpc_abort", "{grpc}");
    assert_eq!(grpc["keel_error"], "fault-injected", "{grpc}");
    let plain = line("/plain");
    assert!(plain["flags"]["fault"].is_null(), "{plain}");
}
