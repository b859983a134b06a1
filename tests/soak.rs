//! The chaos soak: continuous load through a `keel run` process on two upstreams while one of
//! them is killed and restarted at random, made slow, and made to reset connections.
//!
//! What must hold: keel never crashes; every response is a success or one of the documented
//! `keel-error` responses; no request waits past its route timeout; calls to the healthy
//! upstream all succeed (the bulkhead and breaker of the broken one keep it apart); and keel's
//! RSS comes back near its baseline once the load stops.
//!
//! `chaos_soak_briefly` runs for a few seconds in every test run. The long run is ignored by
//! default: `KEEL_SOAK_SECS=180 cargo test --test soak -- --ignored --nocapture`.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The route timeout keel is given; a request taking longer than this plus a margin hangs.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(2);
const HANG_MARGIN: Duration = Duration::from_secs(1);

/// What the chaos upstream does right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Mode {
    Healthy = 0,
    /// Answers after 300 ms.
    Slow = 1,
    /// Reads the head, then closes without a byte.
    Reset = 2,
    /// Killed: its listener and every connection are gone (connections are refused).
    Down = 3,
}

impl Mode {
    fn from_u8(n: u8) -> Mode {
        match n % 4 {
            0 => Mode::Healthy,
            1 => Mode::Slow,
            2 => Mode::Reset,
            _ => Mode::Down,
        }
    }
}

/// An upstream that misbehaves as [`Mode`] says, on one address it keeps across restarts.
struct ChaosUpstream {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
}

impl ChaosUpstream {
    async fn start() -> ChaosUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(Mode::Healthy as u8));
        let stop = Arc::new(AtomicBool::new(false));
        tokio::spawn(run_chaos_upstream(
            Some(listener),
            addr,
            mode.clone(),
            stop.clone(),
        ));
        ChaosUpstream { addr, mode, stop }
    }

    fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Release);
    }
}

impl Drop for ChaosUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Serves while not `Down`; on `Down` drops the listener and aborts every connection (a
/// killed process), and binds the same address again when the mode changes back.
async fn run_chaos_upstream(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
) {
    let mut connections = JoinSet::new();
    while !stop.load(Ordering::Acquire) {
        let current = Mode::from_u8(mode.load(Ordering::Acquire));
        if current == Mode::Down {
            listener = None;
            connections.abort_all();
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        if listener.is_none() {
            match TcpListener::bind(addr).await {
                Ok(l) => listener = Some(l),
                Err(_) => {
                    // The address is briefly unavailable after the kill; try again.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(l) = listener.as_ref() else { continue };
        // Re-check the mode at least every 10 ms while no client connects.
        let Ok(Ok((stream, _))) = tokio::time::timeout(Duration::from_millis(10), l.accept()).await
        else {
            while connections.try_join_next().is_some() {}
            continue;
        };
        let mode = mode.clone();
        connections.spawn(serve_chaos_connection(stream, mode));
    }
    connections.abort_all();
}

async fn serve_chaos_connection(stream: TcpStream, mode: Arc<AtomicU8>) {
    if Mode::from_u8(mode.load(Ordering::Acquire)) == Mode::Reset {
        // Read a little of the head, then close without answering.
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(1), stream.readable()).await;
        let _ = stream.try_read(&mut buf);
        return;
    }
    let service = service_fn(move |req: Request<Incoming>| {
        let mode = mode.clone();
        async move {
            let _ = req.into_body().collect().await;
            match Mode::from_u8(mode.load(Ordering::Acquire)) {
                Mode::Slow => tokio::time::sleep(Duration::from_millis(300)).await,
                Mode::Reset | Mode::Down => {
                    // Turned bad while this request was read: answer nothing.
                    std::future::pending::<()>().await;
                }
                Mode::Healthy => {}
            }
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"chaos ok\n"))))
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// What the load saw, by route and outcome.
#[derive(Debug, Default)]
struct Tally {
    /// (route, outcome) → count; outcome is `200`, `STATUS keel-error`, `aborted` or `hang`.
    outcomes: BTreeMap<(String, String), u64>,
    slowest: Duration,
}

impl Tally {
    fn count(&self, route: &str, outcome: &str) -> u64 {
        self.outcomes
            .get(&(route.to_owned(), outcome.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    fn total(&self, route: &str) -> u64 {
        self.outcomes
            .iter()
            .filter(|((r, _), _)| r == route)
            .map(|(_, n)| n)
            .sum()
    }
}

/// One keep-alive client sending `/chaos` and `/steady` in turn until `stop`.
async fn client(addr: SocketAddr, stop: Arc<AtomicBool>, tally: Arc<Mutex<Tally>>) {
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    let mut turn = 0u64;
    // Bounded: the caller's stop flag, or at most a million requests.
    for _ in 0..1_000_000 {
        if stop.load(Ordering::Acquire) {
            return;
        }
        turn += 1;
        let route = if turn.is_multiple_of(2) {
            "steady"
        } else {
            "chaos"
        };
        if let Some(s) = sender.as_mut() {
            if s.ready().await.is_err() {
                sender = None;
            }
        }
        let s = match sender.as_mut() {
            Some(s) => s,
            None => {
                let Ok(stream) = TcpStream::connect(addr).await else {
                    panic!("keel refused a connection: has it crashed?");
                };
                let (s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                sender.insert(s)
            }
        };
        let req = Request::get(format!("/{route}"))
            .header("host", "svc")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let started = Instant::now();
        let exchange = async {
            let response = s.send_request(req).await?;
            let status = response.status().as_u16();
            let reason = response
                .headers()
                .get("keel-error")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>((status, reason))
        };
        let outcome = match tokio::time::timeout(ROUTE_TIMEOUT + HANG_MARGIN, exchange).await {
            Err(_) => {
                sender = None;
                "hang".to_owned()
            }
            Ok(Err(_)) => {
                sender = None;
                "aborted".to_owned()
            }
            Ok(Ok((status, None))) => status.to_string(),
            Ok(Ok((status, Some(reason)))) => format!("{status} {reason}"),
        };
        let took = started.elapsed();
        let mut tally = tally.lock().unwrap();
        tally.slowest = tally.slowest.max(took);
        *tally
            .outcomes
            .entry((route.to_owned(), outcome))
            .or_default() += 1;
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A tiny deterministic generator (xorshift), so a failing run can be repeated by its seed.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn soak(duration: Duration) {
    let chaos = ChaosUpstream::start().await;
    let steady = upstream(Behaviour::Status(200)).await;
    let mut keel = KeelProcess::start(&format!(
        r#"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  match = {{ path_prefix = "/chaos" }}
  upstream = "chaos"
  timeout = "{}ms"
  retry = {{ attempts = 2, on = ["connect-failure", "reset"], per_try_timeout = "1s" }}
  [[listeners.routes]]
  upstream = "steady"
  timeout = "{}ms"
[upstreams.chaos]
endpoints = ["{}"]
connect_timeout = "200ms"
[upstreams.chaos.pool]
max_requests = 16
max_pending = 8
queue_timeout = "100ms"
[upstreams.chaos.breaker]
consecutive_failures = 5
open_for = "300ms"
max_open_for = "1s"
[upstreams.steady]
endpoints = ["{}"]
"#,
        ROUTE_TIMEOUT.as_millis(),
        ROUTE_TIMEOUT.as_millis(),
        chaos.addr,
        steady.addr,
    ));
    let addr = keel.addr("main");
    let pid = keel.pid();

    // Warm up, then take the baseline.
    for _ in 0..50 {
        assert_eq!(get(addr, "svc", "/steady").await.status, 200);
    }
    let baseline = rss_kib(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(tokio::spawn(client(addr, stop.clone(), tally.clone())));
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64 | 1);
    eprintln!("soak seed {seed:#x}, {duration:?}");
    let mut dice = Dice(seed);
    let mut modes = BTreeMap::<&str, u32>::new();
    let until = Instant::now() + duration;
    while Instant::now() < until {
        let mode = Mode::from_u8((dice.next() % 4) as u8);
        chaos.set(mode);
        *modes.entry(format!("{mode:?}").leak()).or_default() += 1;
        let hold = Duration::from_millis(100 + dice.next() % 500);
        tokio::time::sleep(hold.min(until.saturating_duration_since(Instant::now()))).await;
    }
    chaos.set(Mode::Healthy);
    stop.store(true, Ordering::Release);
    for c in clients {
        tokio::time::timeout(ROUTE_TIMEOUT * 3, c)
            .await
            .expect("a client hung")
            .expect("a client panicked");
    }
    let peak = keel.peak_rss_kib();
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    eprintln!("modes {modes:?}");
    eprintln!("outcomes {:#?}", tally.outcomes);
    eprintln!(
        "slowest {:?}; RSS baseline {baseline} KiB, peak {peak} KiB",
        tally.slowest
    );

    assert!(
        keel.child_running(),
        "keel exited during the soak: {:?}",
        keel.log_tail(20)
    );
    assert!(tally.total("chaos") > 0 && tally.total("steady") > 0);
    // The steady upstream is untouched by the chaos next to it.
    assert_eq!(
        tally.count("steady", "200"),
        tally.total("steady"),
        "every call to the steady upstream succeeded"
    );
    let documented = [
        "200",
        "502 upstream-connect",
        "502 upstream-reset",
        "503 circuit-open",
        "503 bulkhead-full",
        "504 upstream-timeout",
        // The upstream was killed while its response body was on the way: keel aborts the
        // client connection rather than present a truncated body as complete.
        "aborted",
    ];
    for ((route, outcome), n) in &tally.outcomes {
        assert!(
            documented.contains(&outcome.as_str()),
            "{n} `{outcome}` on /{route}: not a documented outcome"
        );
    }
    assert_eq!(
        tally.count("chaos", "hang"),
        0,
        "no request hung past its timeout"
    );
    assert!(
        tally.slowest <= ROUTE_TIMEOUT + HANG_MARGIN,
        "slowest {:?}",
        tally.slowest
    );

    // Idle again, keel gives back what the load took (allocator caches aside).
    let bound = baseline + (baseline / 2).max(8 * 1024);
    eventually(
        Duration::from_secs(15),
        "RSS back near its baseline",
        || async move { rss_kib(pid) <= bound },
    )
    .await;
    eprintln!(
        "RSS after the soak {} KiB (bound {bound} KiB)",
        rss_kib(pid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_briefly() {
    soak(Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of minutes: KEEL_SOAK_SECS=180 cargo test --test soak -- --ignored --nocapture"]
async fn chaos_soak() {
    let secs = std::env::var("KEEL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(180);
    soak(Duration::from_secs(secs)).await;
}
