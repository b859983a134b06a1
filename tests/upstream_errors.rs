//! Upstream failures become keel's own answers with the right status and `keel-error` reason,
//! the upstream's own answers pass through untouched, a broken body is never presented as
//! complete, and the same listener serves the next request normally afterwards.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Bound for any single network step of these tests.
const STEP: Duration = Duration::from_secs(10);

/// A keel listener with two routes: `/bad…` goes to the upstream under test, everything else to
/// a healthy one. The bad upstream allows one request in flight with one waiting for a second,
/// so a slot leaked by a failure shows up as `bulkhead-full` on the next try.
struct Fixture {
    keel: Keel,
    good: TestUpstream,
}

impl Fixture {
    async fn new(bad: SocketAddr, bad_extra: &str, route_extra: &str) -> Fixture {
        let good = upstream(Behaviour::Respond).await;
        let keel = spawn_keel(&format!(
            r#"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  match = {{ path_prefix = "/bad" }}
  upstream = "bad"
  {route_extra}
  [[listeners.routes]]
  upstream = "good"
[upstreams.bad]
endpoints = ["{bad}"]
{bad_extra}
[upstreams.bad.pool]
max_requests = 1
max_pending = 1
queue_timeout = "1s"
[upstreams.good]
endpoints = ["{}"]
"#,
            good.addr
        ))
        .await;
        Fixture { keel, good }
    }

    fn addr(&self) -> SocketAddr {
        self.keel.addr("main")
    }

    /// A request to the healthy upstream succeeds, on a fresh connection and on `conn` (the
    /// connection that just carried the failure), when given.
    async fn assert_healthy(&self, conn: Option<&mut KeepAliveConn>) {
        let before = self.good.requests();
        let reply = bounded(get(self.addr(), "orders", "/ok")).await;
        assert_eq!(
            reply.status, 200,
            "fresh connection after a failure: {reply:?}"
        );
        assert_eq!(reply.keel_error(), None);
        assert!(reply.body.starts_with("GET /ok HTTP/1.1"), "{}", reply.body);
        let mut expected = before + 1;
        if let Some(conn) = conn {
            let reply = conn.get("/ok").await;
            assert_eq!(
                reply.status, 200,
                "same connection after a failure: {reply:?}"
            );
            assert_eq!(reply.keel_error(), None);
            expected += 1;
        }
        assert_eq!(self.good.requests(), expected);
    }
}

async fn bounded<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, work)
        .await
        .expect("step finished in time")
}

fn assert_keel_error(reply: &Reply, status: u16, reason: &str) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.keel_error(), Some(reason), "{reply:?}");
}

#[tokio::test]
async fn connect_refused_is_502_upstream_connect_at_once() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = closed.local_addr().unwrap();
    drop(closed);
    // A long connect timeout: a refusal must not wait for it.
    let fx = Fixture::new(bad, r#"connect_timeout = "5s""#, "").await;
    let mut conn = KeepAliveConn::open(fx.addr(), "orders").await;
    for _ in 0..2 {
        let reply = conn.get("/bad").await;
        assert_keel_error(&reply, 502, "upstream-connect");
        assert!(
            reply.elapsed < Duration::from_secs(2),
            "refused took {:?}",
            reply.elapsed
        );
    }
    fx.assert_healthy(Some(&mut conn)).await;
}

/// A listening socket whose accept queue is full, so that Linux drops further SYNs and a
/// connect to it hangs. The returned streams keep the queue full and must be kept alive.
async fn unresponsive_endpoint() -> (SocketAddr, tokio::net::TcpListener, Vec<TcpStream>) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    // Linux queues backlog + 1 connections; a few more attempts are enough to see one hang.
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => fillers.push(stream),
            Ok(Err(err)) => panic!("filling the accept queue failed: {err}"),
            Err(_hung) => return (addr, listener, fillers),
        }
    }
    panic!(
        "the backlog trick did not make connect hang on this machine ({} connections accepted into a listen(1) queue)",
        fillers.len()
    );
}

#[tokio::test]
async fn connect_timeout_is_502_upstream_connect_after_connect_timeout() {
    let (bad, _listener, _fillers) = unresponsive_endpoint().await;
    let fx = Fixture::new(bad, r#"connect_timeout = "200ms""#, r#"timeout = "10s""#).await;
    let mut conn = KeepAliveConn::open(fx.addr(), "orders").await;
    for _ in 0..2 {
        let reply = conn.get("/bad").await;
        assert_keel_error(&reply, 502, "upstream-connect");
        assert!(
            reply.elapsed >= Duration::from_millis(150),
            "answered before connect_timeout: {:?}",
            reply.elapsed
        );
        assert!(
            reply.elapsed < Duration::from_secs(3),
            "connect_timeout did not bound the connect: {:?}",
            reply.elapsed
        );
    }
    fx.assert_healthy(Some(&mut conn)).await;
}

#[tokio::test]
async fn route_timeout_is_504_upstream_timeout() {
    let bad = upstream(Behaviour::Hang).await;
    let fx = Fixture::new(bad.addr, "", r#"timeout = "300ms""#).await;
    let mut conn = KeepAliveConn::open(fx.addr(), "orders").await;
    for _ in 0..2 {
        let reply = conn.get("/bad").await;
        assert_keel_error(&reply, 504, "upstream-timeout");
        assert!(
            reply.elapsed >= Duration::from_millis(250),
            "answered before the route timeout: {:?}",
            reply.elapsed
        );
        assert!(
            reply.elapsed < Duration::from_secs(3),
            "route timeout did not fire: {:?}",
            reply.elapsed
        );
    }
    assert_eq!(bad.requests(), 2);
    fx.assert_healthy(Some(&mut conn)).await;
}

#[tokio::test]
async fn close_before_head_is_502_upstream_reset() {
    let bad = upstream(Behaviour::CloseBeforeHead).await;
    let fx = Fixture::new(bad.addr, "", "").await;
    let mut conn = KeepAliveConn::open(fx.addr(), "orders").await;
    for _ in 0..2 {
        let reply = conn.get("/bad").await;
        assert_keel_error(&reply, 502, "upstream-reset");
    }
    assert!(bad.requests() >= 2);
    fx.assert_healthy(Some(&mut conn)).await;
}

#[tokio::test]
async fn upstream_status_passes_through_without_keel_error() {
    for status in [404, 500, 502, 503, 504] {
        let bad = upstream(Behaviour::Status(status)).await;
        let fx = Fixture::new(bad.addr, "", "").await;
        let mut conn = KeepAliveConn::open(fx.addr(), "orders").await;
        let reply = conn.get("/bad/status").await;
        assert_eq!(reply.status, status, "{reply:?}");
        assert_eq!(
            reply.keel_error(),
            None,
            "the upstream's {status} is not keel's error: {reply:?}"
        );
        assert!(
            reply.body.starts_with("GET /bad/status HTTP/1.1"),
            "the upstream's body is passed on: {}",
            reply.body
        );
        assert_eq!(bad.requests(), 1);
        fx.assert_healthy(Some(&mut conn)).await;
    }
}

/// A body cut off by the upstream must reach an HTTP/1.1 client as an error, never as `Ok`.
async fn truncated_body_ends_in_an_error_for_an_http1_client(behaviour: Behaviour) {
    let bad = upstream(behaviour).await;
    let fx = Fixture::new(bad.addr, "", "").await;
    for _ in 0..2 {
        let stream = TcpStream::connect(fx.addr()).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("/bad/truncated")
            .header("host", "orders")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = bounded(sender.send_request(req)).await.unwrap();
        assert_eq!(response.status(), 200, "the head arrived before the break");
        let body = bounded(response.into_body().collect()).await;
        if let Ok(collected) = body {
            panic!(
                "{behaviour:?}: a truncated body was presented as complete: {:?}",
                collected.to_bytes()
            );
        }
    }
    fx.assert_healthy(None).await;
}

#[tokio::test]
async fn truncated_length_body_ends_in_an_error_for_an_http1_client() {
    truncated_body_ends_in_an_error_for_an_http1_client(Behaviour::TruncateBody).await;
}

#[tokio::test]
async fn truncated_chunked_body_ends_in_an_error_for_an_http1_client() {
    truncated_body_ends_in_an_error_for_an_http1_client(Behaviour::TruncateChunked).await;
}

/// Reads until the peer closes (EOF or reset); panics if it stays open past `STEP`.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(STEP, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "keel kept the connection open after sending {:?}",
        String::from_utf8_lossy(&out)
    );
    out
}

/// The same over raw TCP: the head, part of the body, then the connection closes, with no
/// framing that would mark the body complete.
async fn truncated_body_ends_in_a_close_for_a_raw_client(behaviour: Behaviour) {
    let bad = upstream(behaviour).await;
    let fx = Fixture::new(bad.addr, "", "").await;
    for _ in 0..2 {
        let mut stream = TcpStream::connect(fx.addr()).await.unwrap();
        // Keep-alive on purpose: the close must come from keel noticing the break.
        stream
            .write_all(b"GET /bad/truncated HTTP/1.1\r\nhost: orders\r\n\r\n")
            .await
            .unwrap();
        let received = read_to_close(&mut stream).await;
        let end = received
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| {
                panic!("no complete head: {:?}", String::from_utf8_lossy(&received))
            });
        let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
        let body = &received[end + 4..];
        assert!(head.starts_with("http/1.1 200"), "{head}");
        if head.contains("transfer-encoding: chunked") {
            assert!(
                !body.ends_with(b"0\r\n\r\n"),
                "{behaviour:?}: a cut-off chunked body must not be terminated: {:?}",
                String::from_utf8_lossy(body)
            );
        } else {
            assert!(
                head.contains("content-length: 1000"),
                "{behaviour:?}: a cut-off body needs framing that shows it: {head}"
            );
            assert!(
                body.len() < 1000,
                "got {} body bytes of a 1000-byte body that was cut at 10",
                body.len()
            );
        }
    }
    fx.assert_healthy(None).await;
}

#[tokio::test]
async fn truncated_length_body_ends_in_a_close_for_a_raw_client() {
    truncated_body_ends_in_a_close_for_a_raw_client(Behaviour::TruncateBody).await;
}

#[tokio::test]
async fn truncated_chunked_body_ends_in_a_close_for_a_raw_client() {
    truncated_body_ends_in_a_close_for_a_raw_client(Behaviour::TruncateChunked).await;
}
