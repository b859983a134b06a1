//! gRPC end to end: a tonic client → keel (h2c in, h2c prior knowledge out) → a tonic server.
//! Unary and server-streaming calls, trailers carried, failing statuses (trailers-only and in
//! trailers after messages) counted by the breaker for the configured codes only, and
//! `grpc_status` in the access log.
//!
//! The service is written by hand (no protoc): a codec that passes message bytes through, and
//! `tonic::server::Grpc` for the unary and server-streaming handlers.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http::uri::PathAndQuery;
use support::*;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::{Code, Status};

/// Messages are raw bytes.
#[derive(Debug, Clone, Default)]
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;
    fn encoder(&mut self) -> BytesCodec {
        BytesCodec
    }
    fn decoder(&mut self) -> BytesCodec {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The status a request body asks for (`fail:CODE` → that code).
fn asked_status(message: &[u8]) -> Option<Status> {
    let text = std::str::from_utf8(message).ok()?;
    let code: i32 = text.strip_prefix("fail:")?.parse().ok()?;
    Some(Status::new(Code::from(code), "asked to fail"))
}

struct Unary;
impl tonic::server::UnaryService<Bytes> for Unary {
    type Response = Bytes;
    type Future = BoxFuture<Result<tonic::Response<Bytes>, Status>>;
    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let message = request.into_inner();
            match asked_status(&message) {
                // A trailers-only response: grpc-status in the response head.
                Some(status) => Err(status),
                None => Ok(tonic::Response::new(message)),
            }
        })
    }
}

type MessageStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Bytes, Status>> + Send>>;

struct Streaming;
impl tonic::server::ServerStreamingService<Bytes> for Streaming {
    type Response = Bytes;
    type ResponseStream = MessageStream;
    type Future = BoxFuture<Result<tonic::Response<MessageStream>, Status>>;
    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        Box::pin(async move {
            let message = request.into_inner();
            let mut items: Vec<Result<Bytes, Status>> = (0..3)
                .map(|i| Ok(Bytes::from(format!("part {i}"))))
                .collect();
            // After the messages, a failure: grpc-status in the trailers.
            if let Some(status) = asked_status(&message) {
                items.push(Err(status));
            }
            let stream: MessageStream = Box::pin(tokio_stream::iter(items));
            Ok(tonic::Response::new(stream))
        })
    }
}

/// The hand-written service: `/test.Echo/Unary` and `/test.Echo/Stream`.
#[derive(Debug, Clone)]
struct Echo;

impl tonic::server::NamedService for Echo {
    const NAME: &'static str = "test.Echo";
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Echo {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(BytesCodec);
            Ok(match req.uri().path() {
                "/test.Echo/Unary" => grpc.unary(Unary, req).await,
                "/test.Echo/Stream" => grpc.server_streaming(Streaming, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            })
        })
    }
}

/// A tonic server on `127.0.0.1:0`.
async fn grpc_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(Echo)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    addr
}

fn keel_toml(server: std::net::SocketAddr, breaker: &str, access_log: Option<&str>) -> String {
    let (log_table, log_flag) = match access_log {
        Some(path) => (
            format!("[access_log]\noutput = \"{path}\"\n"),
            "access_log = true",
        ),
        None => (String::new(), ""),
    };
    format!(
        r#"{log_table}
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
{log_flag}
  [[listeners.routes]]
  upstream = "echo"
[upstreams.echo]
endpoints = ["{server}"]
protocol = "http2"
[upstreams.echo.breaker]
open_for = "60s"
max_open_for = "60s"
{breaker}
"#
    )
}

async fn client(addr: std::net::SocketAddr) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

async fn unary(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    message: &'static str,
) -> Result<Bytes, Status> {
    grpc.ready().await.unwrap();
    grpc.unary(
        tonic::Request::new(Bytes::from_static(message.as_bytes())),
        PathAndQuery::from_static("/test.Echo/Unary"),
        BytesCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The messages of a server-streaming call and how it ended.
async fn stream(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    message: &'static str,
) -> (Vec<String>, Result<(), Status>) {
    grpc.ready().await.unwrap();
    let response = grpc
        .server_streaming(
            tonic::Request::new(Bytes::from_static(message.as_bytes())),
            PathAndQuery::from_static("/test.Echo/Stream"),
            BytesCodec,
        )
        .await;
    let mut stream = match response {
        Ok(r) => r.into_inner(),
        Err(status) => return (Vec::new(), Err(status)),
    };
    let mut parts = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(m)) => parts.push(String::from_utf8_lossy(&m).into_owned()),
            Ok(None) => return (parts, Ok(())),
            Err(status) => return (parts, Err(status)),
        }
    }
}

#[tokio::test]
async fn unary_and_server_streaming_calls_pass_through_keel() {
    let server = grpc_server().await;
    let keel = spawn_keel(&keel_toml(server, "", None)).await;
    let mut grpc = client(keel.addr("main")).await;
    assert_eq!(unary(&mut grpc, "hello").await.unwrap(), "hello");
    let (parts, end) = stream(&mut grpc, "go").await;
    assert_eq!(parts, vec!["part 0", "part 1", "part 2"]);
    end.unwrap();
    // Many calls share keel's one multiplexed connection to the server.
    for _ in 0..5 {
        assert_eq!(unary(&mut grpc, "again").await.unwrap(), "again");
    }
    assert_eq!(keel.upstream("echo").pool.open_connections(), 1);
}

#[tokio::test]
async fn failing_statuses_reach_the_client_from_the_head_and_from_trailers() {
    let server = grpc_server().await;
    let keel = spawn_keel(&keel_toml(server, "", None)).await;
    let mut grpc = client(keel.addr("main")).await;
    // Trailers-only error.
    let status = unary(&mut grpc, "fail:5").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "asked to fail");
    // Messages first, then the status in the trailers.
    let (parts, end) = stream(&mut grpc, "fail:14").await;
    assert_eq!(parts.len(), 3);
    let status = end.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "asked to fail");
}

#[tokio::test]
async fn grpc_status_in_trailers_counts_for_the_breaker_for_listed_codes_only() {
    let server = grpc_server().await;
    let keel = spawn_keel(&keel_toml(server, "consecutive_failures = 3", None)).await;
    let mut grpc = client(keel.addr("main")).await;
    // NOT_FOUND is the caller's problem, not the server's: never counted by default.
    for _ in 0..5 {
        assert_eq!(
            unary(&mut grpc, "fail:5").await.unwrap_err().code(),
            Code::NotFound
        );
        let (_, end) = stream(&mut grpc, "fail:5").await;
        assert_eq!(end.unwrap_err().code(), Code::NotFound);
    }
    let upstream = keel.upstream("echo");
    assert_eq!(upstream.breaker_state().0.as_str(), "Closed");
    // UNAVAILABLE in trailers (twice) and INTERNAL trailers-only: three failures in a row.
    for _ in 0..2 {
        let (parts, end) = stream(&mut grpc, "fail:14").await;
        assert_eq!(parts.len(), 3, "the messages before the failure arrive");
        assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    }
    assert_eq!(upstream.breaker_state().0.as_str(), "Closed");
    assert_eq!(
        unary(&mut grpc, "fail:13").await.unwrap_err().code(),
        Code::Internal
    );
    assert_eq!(upstream.breaker_state().0.as_str(), "Open");
    // Open: keel answers 503 circuit-open itself, which gRPC clients see as UNAVAILABLE.
    let status = unary(&mut grpc, "hello").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(status.message(), "keel: circuit-open");
    assert_eq!(status.metadata().get("keel-error").unwrap(), "circuit-open");

    // The list is configurable: here NOT_FOUND counts and UNAVAILABLE does not.
    let keel = spawn_keel(&keel_toml(
        server,
        "consecutive_failures = 2\ngrpc_failure_statuses = [\"NOT_FOUND\"]",
        None,
    ))
    .await;
    let mut grpc = client(keel.addr("main")).await;
    for _ in 0..3 {
        let (_, end) = stream(&mut grpc, "fail:14").await;
        assert_eq!(end.unwrap_err().code(), Code::Unavailable);
    }
    assert_eq!(keel.upstream("echo").breaker_state().0.as_str(), "Closed");
    for _ in 0..2 {
        let (_, end) = stream(&mut grpc, "fail:5").await;
        assert_eq!(end.unwrap_err().code(), Code::NotFound);
    }
    assert_eq!(keel.upstream("echo").breaker_state().0.as_str(), "Open");
}

#[test]
fn unknown_grpc_status_names_are_config_errors() {
    let text = keel_toml(
        "127.0.0.1:1".parse().unwrap(),
        "grpc_failure_statuses = [\"UNAVAILABLE\", \"UNAVAILBLE\"]",
        None,
    );
    let err = keel::config::from_str(&with_loopback_admin(&text), "test.toml").unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("`UNAVAILBLE` is not a gRPC status name"),
        "{text}"
    );
    assert!(text.contains("did you mean `UNAVAILABLE`?"), "{text}");
}

#[tokio::test]
async fn grpc_status_is_in_the_access_log() {
    let server = grpc_server().await;
    let log = temp_path("grpc-access.log");
    let keel = spawn_keel(&keel_toml(server, "", Some(&log.display().to_string()))).await;
    let mut grpc = client(keel.addr("main")).await;
    unary(&mut grpc, "ok").await.unwrap();
    let _ = unary(&mut grpc, "fail:13").await;
    let (_, end) = stream(&mut grpc, "fail:14").await;
    assert!(end.is_err());
    let (_, end) = stream(&mut grpc, "fine").await;
    end.unwrap();
    let mut lines = Vec::new();
    eventually(Duration::from_secs(10), "four access log lines", || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        std::future::ready(lines.len() >= 4)
    })
    .await;
    let by_path = |path: &str| -> Vec<serde_json::Value> {
        lines
            .iter()
            .filter(|l| l["path"] == path)
            .map(|l| l["grpc_status"].clone())
            .collect()
    };
    assert_eq!(
        by_path("/test.Echo/Unary"),
        vec![serde_json::json!(0), serde_json::json!(13)]
    );
    assert_eq!(
        by_path("/test.Echo/Stream"),
        vec![serde_json::json!(14), serde_json::json!(0)]
    );
    assert!(lines.iter().all(|l| l["status"] == 200), "{lines:#?}");
    let _ = std::fs::remove_file(&log);
}
