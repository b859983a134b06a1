//! Test harness: scriptable upstreams on `127.0.0.1:0`, keel in-process or as a child process,
//! a small HTTP client, and `eventually` for bounded waiting.
#![allow(dead_code, missing_docs)]

pub mod tls;

use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How a test upstream answers.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// 200; the body lists the request line and headers; `/sink` checksums the body,
    /// `/source/N` streams N bytes, an `Upgrade` request is echoed as a raw tunnel.
    Respond,
    /// Answers with this status.
    Status(u16),
    /// Answers 200 after a delay.
    Delay(Duration),
    /// Answers 503 to the first n requests, then 200.
    FailFirst(usize),
    /// Reads the request and never answers.
    Hang,
    /// Reads the request head, then closes the connection without a byte.
    CloseBeforeHead,
    /// Sends a head announcing 1000 bytes, sends 10, then closes.
    TruncateBody,
    /// Sends a chunked head and one 10-byte chunk, then closes without the last chunk.
    TruncateChunked,
    /// 200 with hop-by-hop headers in the response.
    HopByHopResponse,
    /// Answers 200, then closes a keep-alive connection left idle this long.
    CloseIdleAfter(Duration),
}

/// Counters a test can assert on.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicUsize,
    pub open: AtomicUsize,
    pub peak_open: AtomicUsize,
    pub requests: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub peak_in_flight: AtomicUsize,
}

/// A running test upstream.
#[derive(Debug, Clone)]
pub struct TestUpstream {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
}

impl TestUpstream {
    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }
    pub fn open(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }
    pub fn peak_open(&self) -> usize {
        self.counters.peak_open.load(Ordering::SeqCst)
    }
    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }
    pub fn peak_in_flight(&self) -> usize {
        self.counters.peak_in_flight.load(Ordering::SeqCst)
    }
}

fn bump_peak(current: usize, peak: &AtomicUsize) {
    peak.fetch_max(current, Ordering::SeqCst);
}

struct OpenGuard(Arc<Counters>);
impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

struct InFlightGuard(Arc<Counters>);
impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts an upstream with a behaviour; the port is bound before this returns.
pub async fn upstream(behaviour: Behaviour) -> TestUpstream {
    upstream_at(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Counters::default()),
        behaviour,
    )
    .await
    .unwrap()
}

/// Starts an upstream on a given address, sharing `counters` (several addresses, one server).
pub async fn upstream_at(
    addr: SocketAddr,
    counters: Arc<Counters>,
    behaviour: Behaviour,
) -> std::io::Result<TestUpstream> {
    // A deep accept queue, as a real server has: tests open hundreds of connections at once.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(addr)?;
    let listener = socket.listen(1024)?;
    let addr = listener.local_addr()?;
    let c = counters.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            c.connections.fetch_add(1, Ordering::SeqCst);
            let now_open = c.open.fetch_add(1, Ordering::SeqCst) + 1;
            bump_peak(now_open, &c.peak_open);
            let guard = OpenGuard(c.clone());
            let c = c.clone();
            tokio::spawn(async move {
                let _guard = guard;
                match behaviour {
                    Behaviour::CloseBeforeHead => raw_close_before_head(stream, &c).await,
                    Behaviour::TruncateBody => raw_truncate(stream, &c).await,
                    Behaviour::TruncateChunked => raw_truncate_chunked(stream, &c).await,
                    _ => serve_hyper(stream, behaviour, c).await,
                }
            });
        }
    });
    Ok(TestUpstream { addr, counters })
}

async fn read_head(stream: &mut TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

async fn raw_close_before_head(mut stream: TcpStream, c: &Counters) {
    if read_head(&mut stream).await {
        c.requests.fetch_add(1, Ordering::SeqCst);
    }
}

async fn raw_truncate(mut stream: TcpStream, c: &Counters) {
    if read_head(&mut stream).await {
        c.requests.fetch_add(1, Ordering::SeqCst);
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
            .await;
        let _ = stream.flush().await;
    }
}

async fn raw_truncate_chunked(mut stream: TcpStream, c: &Counters) {
    if read_head(&mut stream).await {
        c.requests.fetch_add(1, Ordering::SeqCst);
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\na\r\n0123456789\r\n")
            .await;
        let _ = stream.flush().await;
    }
}

async fn serve_hyper(stream: TcpStream, behaviour: Behaviour, c: Arc<Counters>) {
    let service = service_fn(move |req: Request<Incoming>| {
        let c = c.clone();
        async move {
            let n = c.requests.fetch_add(1, Ordering::SeqCst) + 1;
            let now = c.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            bump_peak(now, &c.peak_in_flight);
            let _in_flight = InFlightGuard(c.clone());
            Ok::<_, Infallible>(answer(behaviour, n, req).await)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // keel adds X-Forwarded-* headers: leave room above keel's own limit of 100.
    builder.http1().max_headers(200);
    if let Behaviour::CloseIdleAfter(idle) = behaviour {
        // hyper's head timer runs while a keep-alive connection waits: it closes idle ones.
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(idle);
    }
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(status: u16, body: impl Into<Bytes>) -> Response<TestBody> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

/// The request line and headers, one per line, as the upstream saw them.
fn describe(req: &Request<Incoming>) -> String {
    let mut out = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
    for (name, value) in req.headers() {
        out.push_str(&format!(
            "{}: {}\n",
            name,
            value.to_str().unwrap_or("<binary>")
        ));
    }
    out
}

async fn answer(behaviour: Behaviour, n: usize, mut req: Request<Incoming>) -> Response<TestBody> {
    match behaviour {
        Behaviour::Status(s) => return full(s, describe(&req)),
        Behaviour::Delay(d) => {
            tokio::time::sleep(d).await;
            return full(200, describe(&req));
        }
        Behaviour::FailFirst(k) if n <= k => return full(503, "failing\n"),
        Behaviour::Hang => std::future::pending::<()>().await,
        Behaviour::HopByHopResponse => {
            let mut r = full(200, "hop\n");
            let h = r.headers_mut();
            h.insert("connection", "x-upstream-private".parse().unwrap());
            h.insert("x-upstream-private", "secret".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("proxy-authenticate", "Basic".parse().unwrap());
            h.insert("upgrade", "h2c".parse().unwrap());
            h.insert("x-end-to-end", "kept".parse().unwrap());
            return r;
        }
        _ => {}
    }
    let path = req.uri().path().to_owned();
    if req.headers().contains_key("upgrade") {
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut r = full(101, "");
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        return r;
    }
    if path == "/sink" {
        let mut hasher = crc32fast::Hasher::new();
        let mut len = 0u64;
        let mut body = req.into_body();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Some(data) = frame.data_ref() {
                        hasher.update(data);
                        len += data.len() as u64;
                    }
                }
                Err(_) => return full(400, "body error\n"),
            }
        }
        return full(200, format!("{len} {:08x}", hasher.finalize()));
    }
    if let Some(n) = path.strip_prefix("/source/") {
        let len: u64 = n.parse().unwrap_or(0);
        let mut r = Response::new(
            RepeatBody::new(len)
                .map_err(|never: Infallible| match never {})
                .boxed(),
        );
        *r.status_mut() = StatusCode::OK;
        return r;
    }
    if path == "/trailers" {
        return Response::new(TrailerBody { step: 0 }.boxed());
    }
    if path == "/trailers-declared" {
        // hyper's HTTP/1.1 server only writes trailer fields that the response head declares
        // in `Trailer` (and only when the request said `TE: trailers`); `/trailers` above
        // declares none, so over HTTP/1.1 its trailer is silently dropped at the upstream.
        let mut r = Response::new(TrailerBody { step: 0 }.boxed());
        r.headers_mut()
            .insert("trailer", "x-checksum".parse().unwrap());
        return r;
    }
    full(200, describe(&req))
}

/// A body of one data frame and one trailers frame (`x-checksum: abc`).
pub struct TrailerBody {
    step: u8,
}

impl Body for TrailerBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.step += 1;
        Poll::Ready(match self.step {
            1 => Some(Ok(Frame::data(Bytes::from_static(b"with trailers\n")))),
            2 => {
                let mut t = HeaderMap::new();
                t.insert("x-checksum", "abc".parse().unwrap());
                Some(Ok(Frame::trailers(t)))
            }
            _ => None,
        })
    }
}

/// Streams `len` bytes of a fixed 64 KiB block, repeated; [`RepeatBody::checksum`] gives the
/// CRC of what it sends.
pub struct RepeatBody {
    block: Bytes,
    remaining: u64,
}

pub const BLOCK: usize = 64 * 1024;

pub fn block() -> Bytes {
    let mut v = Vec::with_capacity(BLOCK);
    let mut x: u32 = 0x9E37_79B9;
    for _ in 0..BLOCK {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        v.push(x as u8);
    }
    Bytes::from(v)
}

impl RepeatBody {
    pub fn new(len: u64) -> Self {
        RepeatBody {
            block: block(),
            remaining: len,
        }
    }

    /// The CRC32 of `len` bytes of this body.
    pub fn checksum(len: u64) -> String {
        let block = block();
        let mut hasher = crc32fast::Hasher::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(BLOCK as u64) as usize;
            hasher.update(&block[..n]);
            left -= n as u64;
        }
        format!("{:08x}", hasher.finalize())
    }
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(BLOCK as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.block.slice(..n)))))
    }
    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// keel running in this process.
pub struct Keel {
    pub running: Option<keel::server::Running>,
}

impl Keel {
    /// The bound address of the named listener.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.running
            .as_ref()
            .unwrap()
            .listener_addr(listener)
            .unwrap()
    }
    pub fn admin(&self) -> SocketAddr {
        self.running.as_ref().unwrap().admin_addr()
    }
    pub fn metrics(&self) -> SocketAddr {
        self.running.as_ref().unwrap().metrics_addr()
    }
    /// The named upstream of the current runtime (for bulkhead and pool gauges).
    pub fn upstream(&self, name: &str) -> Arc<keel::upstream::Upstream> {
        let runtime = self.running.as_ref().unwrap().runtime();
        runtime
            .upstreams
            .iter()
            .find(|u| &*u.name == name)
            .unwrap()
            .clone()
    }
    pub async fn drain(mut self) -> bool {
        self.running.take().unwrap().drain().await
    }
}

/// Starts keel from TOML text (listeners and admin on `127.0.0.1:0`).
pub async fn spawn_keel(toml: &str) -> Keel {
    let text = with_loopback_admin(toml);
    let config = keel::config::from_str(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let running = keel::server::start_with(config, None, true).await.unwrap();
    Keel {
        running: Some(running),
    }
}

/// Puts the admin and metrics listeners on `127.0.0.1:0` unless the config places them.
pub fn with_loopback_admin(toml: &str) -> String {
    let mut text = String::new();
    if !toml.contains("[admin]") {
        text.push_str("[admin]\nlisten = \"127.0.0.1:0\"\n");
    }
    if !toml.contains("[metrics]") {
        text.push_str("[metrics]\nlisten = \"127.0.0.1:0\"\n");
    }
    text.push_str(toml);
    text
}

/// Starts keel from a config file (reloads read it again); the text gets loopback admin and
/// metrics listeners unless it places them.
pub async fn spawn_keel_from_file(path: &std::path::Path, toml: &str) -> Keel {
    std::fs::write(path, with_loopback_admin(toml)).unwrap();
    let config = keel::config::load(path).unwrap_or_else(|e| panic!("{e}"));
    let running = keel::server::start_with(config, Some(path.to_owned()), true)
        .await
        .unwrap();
    Keel {
        running: Some(running),
    }
}

/// A one-listener config routing everything to one upstream, with extra upstream settings.
pub fn single_route(upstream: SocketAddr, upstream_extra: &str, route_extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  upstream = "up"
  {route_extra}
[upstreams.up]
endpoints = ["{upstream}"]
{upstream_extra}
"#
    )
}

/// A response as the test client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    pub elapsed: Duration,
}

impl Reply {
    pub fn keel_error(&self) -> Option<&str> {
        self.headers.get("keel-error").and_then(|v| v.to_str().ok())
    }
}

/// Sends one request on a fresh HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(req).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// `GET path` with `Host: host`.
pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Reply {
    let req = Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(addr, req).await
}

/// Writes raw bytes and reads until the peer closes or `limit` passes; returns what was read.
pub async fn raw(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_until_close(&mut stream, limit).await
}

pub async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `condition` until it holds or `limit` passes; panics with `what` on timeout.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A unique temporary file path for this test process.
pub fn temp_path(name: &str) -> std::path::PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    std::env::temp_dir().join(format!("keel-test-{}-{n}-{name}", std::process::id()))
}

/// keel as a child process (`keel run`), with its listener addresses read from its JSON log.
pub struct KeelProcess {
    pub child: Child,
    pub listeners: Vec<(String, SocketAddr)>,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    config_path: std::path::PathBuf,
}

impl KeelProcess {
    pub fn start(toml: &str) -> KeelProcess {
        let text = with_loopback_admin(toml);
        let config_path = temp_path("keel.toml");
        std::fs::write(&config_path, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["run", "--log-format", "json", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let log_writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line.clone());
                log_writer.lock().unwrap().push(line);
            }
        });
        let mut listeners = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let admin = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("keel did not log its admin address in time");
            let Some(addr) = json_field(&line, "addr") else {
                continue;
            };
            let addr: SocketAddr = addr.parse().unwrap();
            if line.contains("\"admin listening\"") {
                break addr;
            }
            if let Some(name) = json_field(&line, "listener") {
                listeners.push((name, addr));
            }
        };
        KeelProcess {
            child,
            listeners,
            admin,
            log,
            config_path,
        }
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
            .unwrap()
    }

    /// The config file keel was started with (rewrite it to test reloads).
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Whether the process still runs.
    pub fn child_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last `n` lines keel logged.
    pub fn log_tail(&self, n: usize) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(n)..].to_vec()
    }

    /// Peak resident set size (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for KeelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

/// The string value of `"key":"value"` in a JSON log line (flat search, enough for keel's logs).
fn json_field(line: &str, key: &str) -> Option<String> {
    let marker = format!("\"{key}\":\"");
    let start = line.find(&marker)? + marker.len();
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
}

/// One kept-alive HTTP/1.1 client connection to keel, sending `GET`s with one `Host`.
pub struct KeepAliveConn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: &'static str,
}

impl KeepAliveConn {
    /// Connects and completes the HTTP/1.1 handshake.
    pub async fn open(addr: SocketAddr, host: &'static str) -> KeepAliveConn {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        KeepAliveConn { sender, host }
    }

    /// `GET path` on this connection; panics if no whole answer arrives within 10 s.
    pub async fn get(&mut self, path: &str) -> Reply {
        let started = Instant::now();
        let req = Request::get(path)
            .header("host", self.host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), async {
            self.sender.ready().await.unwrap();
            let response = self.sender.send_request(req).await.unwrap();
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            Reply {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
                elapsed: started.elapsed(),
            }
        })
        .await
        .expect("answered in time on the kept-alive connection")
    }
}
