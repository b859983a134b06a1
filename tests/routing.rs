//! Routing by host, path prefix, header and absolute-form; no-route; Host validation; h2c.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;

async fn three_upstreams_keel() -> (Keel, TestUpstream, TestUpstream, TestUpstream) {
    let a = upstream(Behaviour::Status(200)).await;
    let b = upstream(Behaviour::Status(201)).await;
    let c = upstream(Behaviour::Status(202)).await;
    let keel = spawn_keel(&format!(
        r#"
[[listeners]]
name = "out"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  name = "canary"
  match = {{ host = "payments", header = {{ name = "x-canary", value = "1" }} }}
  upstream = "b"
  [[listeners.routes]]
  match = {{ host = "payments" }}
  upstream = "a"
  [[listeners.routes]]
  match = {{ host = "*.svc.local", path_prefix = "/api/" }}
  upstream = "c"
[upstreams.a]
endpoints = ["{}"]
[upstreams.b]
endpoints = ["{}"]
[upstreams.c]
endpoints = ["{}"]
"#,
        a.addr, b.addr, c.addr
    ))
    .await;
    (keel, a, b, c)
}

#[tokio::test]
async fn routes_by_host_prefix_and_header() {
    let (keel, a, b, c) = three_upstreams_keel().await;
    let addr = keel.addr("out");
    assert_eq!(get(addr, "payments", "/x").await.status, 200);
    assert_eq!(
        get(addr, "Payments:8080", "/x").await.status,
        200,
        "host is case-insensitive, port ignored"
    );
    let canary = Request::get("/x")
        .header("host", "payments")
        .header("x-canary", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(addr, canary).await.status, 201);
    assert_eq!(
        get(addr, "orders.svc.local", "/api/v1?q=1").await.status,
        202
    );
    assert_eq!((a.requests(), b.requests(), c.requests()), (2, 1, 1));
}

/// An IPv6 literal route (`::1`, also written `[::1]`) matches a `[::1]:port` authority; the
/// validator used to refuse every IPv6 pattern, so such a request could never be routed.
#[tokio::test]
async fn routes_by_ipv6_literal_host() {
    let v6 = upstream(Behaviour::Status(201)).await;
    let other = upstream(Behaviour::Status(200)).await;
    let keel = spawn_keel(&format!(
        r#"
[[listeners]]
name = "out"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  match = {{ host = "[::1]" }}
  upstream = "v6"
  [[listeners.routes]]
  upstream = "other"
[upstreams.v6]
endpoints = ["{}"]
[upstreams.other]
endpoints = ["{}"]
"#,
        v6.addr, other.addr
    ))
    .await;
    let addr = keel.addr("out");
    assert_eq!(get(addr, "[::1]:8080", "/").await.status, 201);
    assert_eq!(get(addr, "[::1]", "/").await.status, 201);
    assert_eq!(get(addr, "[::2]", "/").await.status, 200);
    assert_eq!((v6.requests(), other.requests()), (2, 1));
}

#[tokio::test]
async fn no_route_is_404_with_reason() {
    let (keel, a, ..) = three_upstreams_keel().await;
    let addr = keel.addr("out");
    for (host, path) in [
        ("unknown", "/"),
        ("orders.svc.local", "/other"),
        ("svc.local", "/api/"),
    ] {
        let reply = get(addr, host, path).await;
        assert_eq!(reply.status, 404, "{host}{path}");
        assert_eq!(reply.keel_error(), Some("no-route"));
    }
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn absolute_form_routes_by_authority_and_forwards_origin_form() {
    let (keel, a, ..) = three_upstreams_keel().await;
    let reply = raw(
        keel.addr("out"),
        b"GET http://payments/orders?id=7 HTTP/1.1\r\nhost: payments\r\nconnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains("GET /orders?id=7 HTTP/1.1"),
        "upstream saw origin-form: {reply}"
    );
    assert_eq!(a.requests(), 1);
}

#[tokio::test]
async fn host_must_be_present_once_and_valid() {
    let (keel, a, ..) = three_upstreams_keel().await;
    let addr = keel.addr("out");
    let cases: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: payments\r\nhost: other\r\nconnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: user@payments\r\nconnection: close\r\n\r\n",
    ];
    for case in cases {
        let reply = raw(addr, case, Duration::from_secs(5)).await;
        assert!(
            reply.starts_with("HTTP/1.1 400"),
            "{}: {reply}",
            String::from_utf8_lossy(case)
        );
        assert!(reply.contains("keel-error: bad-request"), "{reply}");
    }
    assert_eq!(a.requests(), 0);
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served_on_the_same_port() {
    let (keel, a, ..) = three_upstreams_keel().await;
    let stream = tokio::net::TcpStream::connect(keel.addr("out"))
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        let req = Request::get("http://payments/h2")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = sender.send_request(req).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(
            body.contains("GET /h2 HTTP/1.1"),
            "h2 was translated to HTTP/1.1 upstream: {body}"
        );
        assert!(body.contains("host: payments"), "{body}");
    }
    assert_eq!(a.requests(), 3);
}
