//! What keel changes on the way through, and what it must not: hop-by-hop headers stripped both
//! ways, `X-Forwarded-*` set, path and query untouched, upgrades tunnelled, trailers and request
//! bodies carried whole.

mod support;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bound for any single network step of these tests.
const STEP: Duration = Duration::from_secs(5);

/// keel with one route to an upstream that answers with `Behaviour::Respond`.
async fn echo_keel() -> (Keel, TestUpstream) {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&single_route(up.addr, "", "")).await;
    (keel, up)
}

/// The `name: value` lines the echoing upstream reported (names are lower case).
fn echoed_headers(body: &str) -> Vec<(String, String)> {
    body.lines()
        .skip(1)
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

fn values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    let (keel, up) = echo_keel().await;
    let req = Request::get("/hop")
        .header("host", "orders")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-connection", "keep-alive")
        .header("proxy-authorization", "Basic eA==")
        .header("te", "trailers, deflate")
        // Without an `upgrade` token in `Connection` this is no upgrade request, just a
        // hop-by-hop header that must not reach the upstream.
        .header("upgrade", "websocket")
        .header("x-kept", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send(keel.addr("main"), req).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.keel_error(), None);
    let seen = echoed_headers(&reply.body);
    for name in [
        "connection",
        "x-private",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "upgrade",
    ] {
        assert!(
            values(&seen, name).is_empty(),
            "{name} reached the upstream:\n{}",
            reply.body
        );
    }
    assert_eq!(
        values(&seen, "te"),
        ["trailers"],
        "only the trailers token of TE is forwarded:\n{}",
        reply.body
    );
    assert_eq!(values(&seen, "x-kept"), ["1"], "{}", reply.body);
    assert_eq!(up.requests(), 1);
}

/// Found by the `head` fuzz target: a `Connection` value with a byte outside visible ASCII
/// (obs-text, which HTTP/1 parsers accept) still names the fields listed in it.
#[tokio::test]
async fn connection_value_with_obs_text_still_names_hop_by_hop_fields() {
    let (keel, up) = echo_keel().await;
    let req = Request::get("/hop")
        .header("host", "orders")
        .header(
            "connection",
            http::HeaderValue::from_bytes(b"keep-\xe1live, x-private").unwrap(),
        )
        .header("x-private", "1")
        .header("x-kept", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send(keel.addr("main"), req).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = echoed_headers(&reply.body);
    assert!(values(&seen, "connection").is_empty(), "{}", reply.body);
    assert!(
        values(&seen, "x-private").is_empty(),
        "x-private reached the upstream:\n{}",
        reply.body
    );
    assert_eq!(values(&seen, "x-kept"), ["1"], "{}", reply.body);
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_not_returned() {
    let up = upstream(Behaviour::HopByHopResponse).await;
    let keel = spawn_keel(&single_route(up.addr, "", "")).await;
    let reply = get(keel.addr("main"), "orders", "/").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "hop\n");
    for name in [
        "connection",
        "x-upstream-private",
        "keep-alive",
        "proxy-authenticate",
        "upgrade",
    ] {
        assert!(
            !reply.headers.contains_key(name),
            "{name} reached the client: {:?}",
            reply.headers
        );
    }
    assert_eq!(reply.headers["x-end-to-end"], "kept");
}

#[tokio::test]
async fn x_forwarded_headers_are_set_and_appended() {
    let (keel, _up) = echo_keel().await;
    let addr = keel.addr("main");

    let req = Request::get("/xff")
        .header("host", "orders.example:8080")
        .header("x-forwarded-for", "10.1.2.3")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = send(addr, req).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let seen = echoed_headers(&reply.body);
    assert_eq!(
        values(&seen, "x-forwarded-for"),
        ["10.1.2.3, 127.0.0.1"],
        "{}",
        reply.body
    );
    assert_eq!(
        values(&seen, "x-forwarded-proto"),
        ["http"],
        "{}",
        reply.body
    );
    assert_eq!(
        values(&seen, "x-forwarded-host"),
        ["orders.example:8080"],
        "{}",
        reply.body
    );
    assert_eq!(
        values(&seen, "host"),
        ["orders.example:8080"],
        "{}",
        reply.body
    );

    let reply = get(addr, "orders", "/xff").await;
    let seen = echoed_headers(&reply.body);
    assert_eq!(
        values(&seen, "x-forwarded-for"),
        ["127.0.0.1"],
        "{}",
        reply.body
    );
    assert_eq!(
        values(&seen, "x-forwarded-host"),
        ["orders"],
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn path_and_query_are_forwarded_byte_for_byte() {
    let (keel, up) = echo_keel().await;
    let targets = [
        "/a%2Fb/c;d?x=1&y=%20z&y=2",
        "/%7Euser/a+b/!$&'()*,=:@/%25zz?q=a/b?c&e=%3D&&f=",
        "/x//y/./z/../w%2e%2E/?a=%C3%A9&b=~",
        "/?",
    ];
    for target in targets {
        let request = format!("GET {target} HTTP/1.1\r\nhost: orders\r\nconnection: close\r\n\r\n");
        let reply = raw(keel.addr("main"), request.as_bytes(), STEP).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{target}: {reply}");
        let expected = format!("\nGET {target} HTTP/1.1\n");
        assert!(
            reply.contains(&expected),
            "upstream must see {target:?} unchanged: {reply}"
        );
    }
    assert_eq!(up.requests(), targets.len());
}

/// Reads until the end of a response head; returns the head and any bytes after it.
async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(STEP, async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let rest = buf.split_off(end + 4);
                return (String::from_utf8_lossy(&buf).into_owned(), rest);
            }
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "closed before the end of the head: {}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("response head in time")
}

#[tokio::test]
async fn websocket_upgrade_is_tunnelled_both_ways() {
    let (keel, up) = echo_keel().await;
    let mut stream = TcpStream::connect(keel.addr("main")).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let (head, rest) = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(!lower.contains("keel-error"), "{head}");
    assert!(rest.is_empty(), "nothing was sent yet: {rest:?}");

    for round in 0..5usize {
        let message = format!("round {round};")
            .repeat(1 + round * 700)
            .into_bytes();
        stream.write_all(&message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(STEP, stream.read_exact(&mut echoed))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(echoed, message, "round {round}");
    }

    // Closing our side ends the tunnel: the upstream sees EOF and closes, keel closes to us.
    stream.shutdown().await.unwrap();
    let mut tail = Vec::new();
    let n = tokio::time::timeout(STEP, stream.read_to_end(&mut tail))
        .await
        .expect("tunnel closed in time")
        .unwrap();
    assert_eq!(n, 0, "no stray bytes after close: {tail:?}");
    assert_eq!(up.requests(), 1);
}

// The upstream leg is always HTTP/1.1, where hyper's server writes a trailer field only when the
// request said `TE: trailers` and the response head names the field in `Trailer`. keel must
// forward both: `te: trailers` upstream, and the upstream's `Trailer` header back.
// `/trailers-declared` declares `Trailer: x-checksum`; plain `/trailers` does not, so hyper drops
// its trailer at the upstream already and no proxy could deliver it.
async fn assert_trailers(response: http::Response<hyper::body::Incoming>, via: &str) {
    assert_eq!(response.status(), 200, "{via}");
    assert_eq!(response.headers().get("keel-error"), None, "{via}");
    let collected = tokio::time::timeout(STEP, response.into_body().collect())
        .await
        .expect("body in time")
        .unwrap();
    let trailers = collected.trailers().cloned();
    assert_eq!(
        collected.to_bytes(),
        Bytes::from_static(b"with trailers\n"),
        "{via}"
    );
    let trailers = trailers.unwrap_or_else(|| panic!("{via}: the response carried no trailers"));
    assert_eq!(
        trailers.get("x-checksum").map(|v| v.as_bytes()),
        Some(&b"abc"[..]),
        "{via}: {trailers:?}"
    );
}

#[tokio::test]
async fn trailers_reach_an_http1_client_that_accepts_them() {
    let (keel, _up) = echo_keel().await;
    let stream = TcpStream::connect(keel.addr("main")).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get("/trailers-declared")
        .header("host", "orders")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(STEP, sender.send_request(req))
        .await
        .expect("response in time")
        .unwrap();
    assert_trailers(response, "HTTP/1.1").await;
}

#[tokio::test]
async fn trailers_reach_an_h2c_client() {
    let (keel, _up) = echo_keel().await;
    let stream = TcpStream::connect(keel.addr("main")).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://orders/trailers-declared")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(STEP, sender.send_request(req))
        .await
        .expect("response in time")
        .unwrap();
    assert_trailers(response, "h2c").await;
}

/// A body that hides its length, so hyper sends it chunked.
struct Unsized<B>(B);

impl<B: Body + Unpin> Body for Unsized<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.0).poll_frame(cx)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

async fn post_sink<B>(addr: std::net::SocketAddr, body: B) -> (u16, String)
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/sink")
        .header("host", "orders")
        .body(body)
        .unwrap();
    tokio::time::timeout(STEP, async {
        let response = sender.send_request(req).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    })
    .await
    .expect("sink answered in time")
}

#[tokio::test]
async fn request_body_is_forwarded_whole() {
    let (keel, up) = echo_keel().await;
    let addr = keel.addr("main");
    let len: u64 = 100 * 1024;
    let expected = format!("{len} {}", RepeatBody::checksum(len));

    // With Content-Length.
    let (status, body) = post_sink(addr, RepeatBody::new(len)).await;
    assert_eq!((status, body.as_str()), (200, expected.as_str()));

    // Chunked.
    let (status, body) = post_sink(addr, Unsized(RepeatBody::new(len))).await;
    assert_eq!((status, body.as_str()), (200, expected.as_str()));

    assert_eq!(up.requests(), 2);
}
