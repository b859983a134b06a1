//! Tracing and the access log, end to end: W3C and B3 context in and out, spans exported over
//! OTLP/gRPC to a real receiver (a tonic server built from `opentelemetry-proto`), one child
//! span per upstream attempt, unsampled traces not exported, a dead collector neither slowing
//! requests nor holding up shutdown, `x-request-id`, and the JSON access log lines.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use support::*;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bound for any single network step of these tests.
const STEP: Duration = Duration::from_secs(30);
/// How long spans may take to reach the receiver.
const SPANS_WITHIN: Duration = Duration::from_secs(15);

async fn bounded<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(STEP, work)
        .await
        .expect("step finished in time")
}

// ---------------------------------------------------------------------------------------------
// A real OTLP/gRPC trace receiver.

/// The receiving end of the OTLP service: every export request goes into a channel.
struct Receiver(mpsc::UnboundedSender<ExportTraceServiceRequest>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// One exported span, flattened with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Exported {
    service: Option<String>,
    trace_id: String,
    span_id: String,
    /// Empty for a root span.
    parent: String,
    kind: i32,
    name: String,
    start: u64,
    attributes: HashMap<String, Value>,
}

impl Exported {
    fn str_attr(&self, key: &str) -> Option<&str> {
        match self.attributes.get(key) {
            Some(Value::StringValue(s)) => Some(s),
            _ => None,
        }
    }

    fn int_attr(&self, key: &str) -> Option<i64> {
        match self.attributes.get(key) {
            Some(Value::IntValue(i)) => Some(*i),
            _ => None,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(list: &[KeyValue]) -> HashMap<String, Value> {
    list.iter()
        .filter_map(|kv| {
            let value = kv.value.as_ref()?.value.clone()?;
            Some((kv.key.clone(), value))
        })
        .collect()
}

/// An OTLP/gRPC receiver on `127.0.0.1:0` and the spans it received so far.
struct Collector {
    addr: SocketAddr,
    rx: mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    spans: Vec<Exported>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Collector {
    async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Receiver(tx)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Collector {
            addr,
            rx,
            spans: Vec::new(),
            server,
        }
    }

    /// The `[tracing]` keys that export every span to this receiver.
    fn tracing(&self, service: &str) -> String {
        format!(
            "service_name = \"{service}\"\notlp_endpoint = \"http://{}\"\nsample_ratio = 1.0",
            self.addr
        )
    }

    fn drain_channel(&mut self) {
        while let Ok(request) = self.rx.try_recv() {
            for resource_spans in request.resource_spans {
                let service = resource_spans.resource.as_ref().and_then(|r| {
                    r.attributes
                        .iter()
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            Value::StringValue(s) => Some(s.clone()),
                            _ => None,
                        })
                });
                for scope in resource_spans.scope_spans {
                    for span in scope.spans {
                        self.spans.push(Exported {
                            service: service.clone(),
                            trace_id: hex(&span.trace_id),
                            span_id: hex(&span.span_id),
                            parent: hex(&span.parent_span_id),
                            kind: span.kind,
                            name: span.name.clone(),
                            start: span.start_time_unix_nano,
                            attributes: attributes(&span.attributes),
                        });
                    }
                }
            }
        }
    }

    /// Flushes keel and collects until `done` holds for the spans of `trace_id`; returns them.
    async fn trace(
        &mut self,
        keel: &Keel,
        trace_id: &str,
        done: impl Fn(&[Exported]) -> bool,
    ) -> Vec<Exported> {
        let deadline = Instant::now() + SPANS_WITHIN;
        loop {
            keel.running.as_ref().unwrap().flush_traces().await;
            self.drain_channel();
            let spans: Vec<Exported> = self
                .spans
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "spans of trace {trace_id} did not arrive in time; got {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn kind_count(spans: &[Exported], kind: SpanKind) -> usize {
    spans.iter().filter(|s| s.kind == kind as i32).count()
}

// ---------------------------------------------------------------------------------------------
// Requests and what the upstream saw.

/// One inbound listener `edge`, route `r1` to upstream `up`.
fn traced(upstream: SocketAddr, tracing: &str, route_extra: &str) -> String {
    format!(
        r#"
[tracing]
{tracing}
[[listeners]]
name = "edge"
direction = "inbound"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  name = "r1"
  upstream = "up"
  {route_extra}
[upstreams.up]
endpoints = ["{upstream}"]
"#
    )
}

/// `GET path` with `Host: host` and extra headers.
async fn get_with(addr: SocketAddr, host: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut builder = Request::get(path).header("host", host);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    bounded(send(addr, builder.body(Full::new(Bytes::new())).unwrap())).await
}

/// The request headers the echoing upstream reported (names are lower case).
fn seen(reply: &Reply) -> HashMap<String, String> {
    assert_eq!(reply.status, 200, "upstream answered: {}", reply.body);
    reply
        .body
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// A parsed `traceparent`.
#[derive(Debug)]
struct TraceParent {
    version: String,
    trace_id: String,
    parent_id: String,
    flags: String,
}

fn traceparent(headers: &HashMap<String, String>) -> TraceParent {
    let value = headers
        .get("traceparent")
        .unwrap_or_else(|| panic!("the upstream saw no traceparent: {headers:?}"));
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {value}");
    TraceParent {
        version: parts[0].to_owned(),
        trace_id: parts[1].to_owned(),
        parent_id: parts[2].to_owned(),
        flags: parts[3].to_owned(),
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_valid_id(s: &str, len: usize) -> bool {
    is_hex(s, len) && s.bytes().any(|b| b != b'0')
}

// ---------------------------------------------------------------------------------------------
// W3C in, spans out.

#[tokio::test]
async fn w3c_context_is_continued_and_spans_exported_with_attributes() {
    let mut collector = Collector::start().await;
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&traced(up.addr, &collector.tracing("keel-w3c-test"), "")).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming_span = "00f067aa0ba902b7";
    let reply = get_with(
        keel.addr("edge"),
        "api.test",
        "/orders/42",
        &[
            ("traceparent", &format!("00-{trace_id}-{incoming_span}-01")),
            ("tracestate", "vendor=abc"),
        ],
    )
    .await;
    let headers = seen(&reply);
    let out = traceparent(&headers);
    assert_eq!(out.version, "00");
    assert_eq!(out.trace_id, trace_id, "same trace id onward");
    assert!(is_valid_id(&out.parent_id, 16), "{out:?}");
    assert_ne!(
        out.parent_id, incoming_span,
        "the upstream's parent is keel's span, not the caller's"
    );
    assert_eq!(out.flags, "01");
    assert_eq!(
        headers.get("tracestate").map(String::as_str),
        Some("vendor=abc"),
        "tracestate carried unchanged"
    );

    let spans = collector
        .trace(&keel, trace_id, |s| {
            kind_count(s, SpanKind::Server) >= 1 && kind_count(s, SpanKind::Client) >= 1
        })
        .await;
    assert_eq!(
        spans.len(),
        2,
        "one hop span and one attempt span: {spans:#?}"
    );
    let hop = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .expect("a SERVER span for the inbound hop");
    let attempt = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .expect("a CLIENT span for the attempt");
    assert_eq!(hop.parent, incoming_span, "the hop's parent is the caller");
    assert_eq!(
        attempt.parent, hop.span_id,
        "the attempt is the hop's child"
    );
    assert_eq!(
        attempt.span_id, out.parent_id,
        "the upstream's parent is the exported attempt span"
    );

    let endpoint = up.addr.to_string();
    assert_eq!(hop.str_attr("http.request.method"), Some("GET"), "{hop:#?}");
    assert_eq!(
        hop.int_attr("http.response.status_code"),
        Some(200),
        "{hop:#?}"
    );
    assert_eq!(hop.str_attr("url.path"), Some("/orders/42"), "{hop:#?}");
    assert_eq!(hop.str_attr("server.address"), Some("api.test"), "{hop:#?}");
    assert_eq!(hop.str_attr("keel.route"), Some("r1"), "{hop:#?}");
    assert_eq!(hop.str_attr("keel.upstream"), Some("up"), "{hop:#?}");
    assert_eq!(hop.str_attr("keel.endpoint"), Some(&*endpoint), "{hop:#?}");
    assert_eq!(
        attempt.str_attr("keel.endpoint"),
        Some(&*endpoint),
        "{attempt:#?}"
    );
    assert_eq!(
        attempt.int_attr("http.response.status_code"),
        Some(200),
        "{attempt:#?}"
    );
    for span in &spans {
        assert_eq!(
            span.service.as_deref(),
            Some("keel-w3c-test"),
            "resource service.name of {}",
            span.name
        );
    }
}

#[tokio::test]
async fn each_retry_attempt_is_a_child_span_of_the_hop() {
    let mut collector = Collector::start().await;
    let up = upstream(Behaviour::FailFirst(1)).await;
    let keel = spawn_keel(&traced(
        up.addr,
        &collector.tracing("keel-retry-test"),
        r#"retry = { attempts = 2, on = ["503"], backoff = "1ms", max_backoff = "2ms" }"#,
    ))
    .await;
    let trace_id = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let reply = get_with(
        keel.addr("edge"),
        "api.test",
        "/retry",
        &[("traceparent", &format!("00-{trace_id}-1122334455667788-01"))],
    )
    .await;
    let out = traceparent(&seen(&reply));
    assert_eq!(up.requests(), 2, "one failure, one retry");

    let spans = collector
        .trace(&keel, trace_id, |s| {
            kind_count(s, SpanKind::Server) >= 1 && kind_count(s, SpanKind::Client) >= 2
        })
        .await;
    assert_eq!(
        spans.len(),
        3,
        "one hop span, two attempt spans: {spans:#?}"
    );
    let hop = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(hop.parent, "1122334455667788");
    assert_eq!(hop.int_attr("http.response.status_code"), Some(200));
    let mut attempts: Vec<&Exported> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    attempts.sort_by_key(|s| s.start);
    for attempt in &attempts {
        assert_eq!(
            attempt.parent, hop.span_id,
            "attempt under the hop: {attempt:#?}"
        );
    }
    assert_ne!(attempts[0].span_id, attempts[1].span_id);
    let statuses: Vec<Option<i64>> = attempts
        .iter()
        .map(|a| a.int_attr("http.response.status_code"))
        .collect();
    assert_eq!(statuses, [Some(503), Some(200)]);
    assert_eq!(
        out.parent_id, attempts[1].span_id,
        "the answering upstream request carries the second attempt's span"
    );
}

// ---------------------------------------------------------------------------------------------
// B3 in and out.

#[tokio::test]
async fn b3_single_in_goes_out_as_w3c_and_b3_single() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&traced(up.addr, "", "")).await;
    let trace_id = "80f198ee56343ba864fe8b2a57d3eff7";
    let incoming_span = "e457b5a2e4d86bd1";
    let reply = get_with(
        keel.addr("edge"),
        "api.test",
        "/",
        &[("b3", &format!("{trace_id}-{incoming_span}-1"))],
    )
    .await;
    let headers = seen(&reply);
    let out = traceparent(&headers);
    assert_eq!(out.trace_id, trace_id, "W3C out with the B3 trace id");
    assert_eq!(out.flags, "01", "sampled flag carried");
    assert_ne!(out.parent_id, incoming_span);
    let b3 = headers
        .get("b3")
        .unwrap_or_else(|| panic!("b3 single form out, as it arrived: {headers:?}"));
    let parts: Vec<&str> = b3.split('-').collect();
    assert_eq!(parts.len(), 3, "b3 {b3}");
    assert_eq!(parts[0], trace_id);
    assert_eq!(parts[1], out.parent_id, "one span id in both formats");
    assert_eq!(parts[2], "1");
    // Default propagation is tracecontext + b3 (multi).
    assert_eq!(
        headers.get("x-b3-traceid").map(String::as_str),
        Some(trace_id)
    );
}

#[tokio::test]
async fn b3_multi_in_goes_out_as_b3_multi_and_w3c() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&traced(up.addr, "", "")).await;
    let trace_id = "463ac35c9f6413ad48485a3953bb6124";
    let incoming_span = "a2fb4a1d1a96d312";
    let reply = get_with(
        keel.addr("edge"),
        "api.test",
        "/",
        &[
            ("x-b3-traceid", trace_id),
            ("x-b3-spanid", incoming_span),
            ("x-b3-sampled", "1"),
        ],
    )
    .await;
    let headers = seen(&reply);
    assert_eq!(
        headers.get("x-b3-traceid").map(String::as_str),
        Some(trace_id),
        "{headers:?}"
    );
    let span = headers.get("x-b3-spanid").expect("x-b3-spanid out");
    assert!(is_valid_id(span, 16));
    assert_ne!(span, incoming_span, "keel's span id onward");
    assert_eq!(headers.get("x-b3-sampled").map(String::as_str), Some("1"));
    let out = traceparent(&headers);
    assert_eq!(out.trace_id, trace_id);
    assert_eq!(&out.parent_id, span, "one span id in both formats");
    assert_eq!(out.flags, "01");
}

#[tokio::test]
async fn w3c_in_goes_out_as_b3_when_configured() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&traced(up.addr, r#"propagation = ["b3"]"#, "")).await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let incoming_span = "b7ad6b7169203331";
    let reply = get_with(
        keel.addr("edge"),
        "api.test",
        "/",
        &[("traceparent", &format!("00-{trace_id}-{incoming_span}-01"))],
    )
    .await;
    let headers = seen(&reply);
    assert_eq!(
        headers.get("x-b3-traceid").map(String::as_str),
        Some(trace_id),
        "B3 out as configured: {headers:?}"
    );
    assert_eq!(headers.get("x-b3-sampled").map(String::as_str), Some("1"));
    let out = traceparent(&headers);
    assert_eq!(out.trace_id, trace_id, "and W3C, the format it arrived in");
    assert_eq!(
        headers.get("x-b3-spanid"),
        Some(&out.parent_id),
        "one span id in both formats"
    );
    assert!(
        !headers.contains_key("b3"),
        "b3 single form neither arrived nor configured: {headers:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// New traces and unsampled ones.

#[tokio::test]
async fn no_context_in_starts_a_new_trace() {
    let mut collector = Collector::start().await;
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&traced(up.addr, &collector.tracing("keel-new-trace"), "")).await;
    let reply = get_with(keel.addr("edge"), "api.test", "/fresh", &[]).await;
    let out = traceparent(&seen(&reply));
    assert_eq!(out.version, "00");
    assert!(is_valid_id(&out.trace_id, 32), "{out:?}");
    assert!(is_valid_id(&out.parent_id, 16), "{out:?}");
    assert_eq!(out.flags, "01", "sample_ratio = 1.0 samples it");

    let spans = collector
        .trace(&keel, &out.trace_id, |s| {
            kind_count(s, SpanKind::Server) >= 1 && kind_count(s, SpanKind::Client) >= 1
        })
        .await;
    let hop = spans
        .iter()
        .find(|s| s.kind == SpanKind::Server as i32)
        .unwrap();
    assert_eq!(hop.parent, "", "a new trace's hop span is a root: {hop:#?}");
    let attempt = spans
        .iter()
        .find(|s| s.kind == SpanKind::Client as i32)
        .unwrap();
    assert_eq!(attempt.parent, hop.span_id);
    assert_eq!(attempt.span_id, out.parent_id);
}

#[tokio::test]
async fn unsampled_context_is_propagated_but_not_exported() {
    let mut collector = Collector::start().await;
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&traced(up.addr, &collector.tracing("keel-unsampled"), "")).await;
    let unsampled = "5e1f0c8b2a7d4e3f9a6b1c0d2e3f4a5b";
    let reply = get_with(
        keel.addr("edge"),
        "api.test",
        "/unsampled",
        &[(
            "traceparent",
            &format!("00-{unsampled}-0102030405060708-00"),
        )],
    )
    .await;
    let out = traceparent(&seen(&reply));
    assert_eq!(out.trace_id, unsampled, "context still propagated");
    assert_eq!(out.flags, "00", "and still unsampled");
    assert!(is_valid_id(&out.parent_id, 16));

    // A sampled request after it: once its spans arrived, anything of the first would have too.
    let sentinel = "6f2a1d9c3b8e5f4a0b7c2d1e3f4a5b6c";
    get_with(
        keel.addr("edge"),
        "api.test",
        "/sampled",
        &[("traceparent", &format!("00-{sentinel}-0807060504030201-01"))],
    )
    .await;
    collector
        .trace(&keel, sentinel, |s| {
            kind_count(s, SpanKind::Server) >= 1 && kind_count(s, SpanKind::Client) >= 1
        })
        .await;
    let leaked: Vec<&Exported> = collector
        .spans
        .iter()
        .filter(|s| s.trace_id == unsampled)
        .collect();
    assert!(leaked.is_empty(), "unsampled spans exported: {leaked:#?}");
}

// ---------------------------------------------------------------------------------------------
// x-request-id.

#[tokio::test]
async fn request_id_is_generated_when_absent_and_kept_when_present() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&traced(up.addr, "", "")).await;
    let addr = keel.addr("edge");
    let first = seen(&get_with(addr, "api.test", "/", &[]).await);
    let second = seen(&get_with(addr, "api.test", "/", &[]).await);
    let a = first.get("x-request-id").expect("x-request-id generated");
    let b = second.get("x-request-id").expect("x-request-id generated");
    assert!(is_hex(a, 32), "32 hex digits: {a}");
    assert!(is_hex(b, 32), "32 hex digits: {b}");
    assert_ne!(a, b, "a new id per request");

    let kept = seen(&get_with(addr, "api.test", "/", &[("x-request-id", "req-abc-123")]).await);
    assert_eq!(
        kept.get("x-request-id").map(String::as_str),
        Some("req-abc-123")
    );
}

// ---------------------------------------------------------------------------------------------
// The collector down.

fn p50(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

async fn spans_dropped(keel: &Keel) -> u64 {
    let reply = bounded(get(keel.metrics(), "metrics", "/metrics")).await;
    assert_eq!(reply.status, 200);
    reply
        .body
        .lines()
        .find_map(|l| l.strip_prefix("keel_spans_dropped_total "))
        .unwrap_or_else(|| panic!("no keel_spans_dropped_total in:\n{}", reply.body))
        .trim()
        .parse::<f64>()
        .unwrap() as u64
}

#[tokio::test]
async fn dead_collector_neither_slows_requests_nor_holds_up_shutdown() {
    let up = upstream(Behaviour::Respond).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let dead = spawn_keel(&traced(
        up.addr,
        &format!("otlp_endpoint = \"http://{closed}\"\nsample_ratio = 1.0"),
        "",
    ))
    .await;
    let healthy = spawn_keel(&traced(up.addr, "sample_ratio = 1.0", "")).await;
    let (dead_addr, healthy_addr) = (dead.addr("edge"), healthy.addr("edge"));

    // Warm both (first connections, lazy exporter setup), then alternate so machine load hits
    // both samples alike.
    for _ in 0..5 {
        assert_eq!(get_with(dead_addr, "api.test", "/", &[]).await.status, 200);
        assert_eq!(
            get_with(healthy_addr, "api.test", "/", &[]).await.status,
            200
        );
    }
    let mut with_dead = Vec::with_capacity(100);
    let mut without = Vec::with_capacity(100);
    for _ in 0..100 {
        let reply = get_with(dead_addr, "api.test", "/", &[]).await;
        assert_eq!(reply.status, 200);
        with_dead.push(reply.elapsed);
        let reply = get_with(healthy_addr, "api.test", "/", &[]).await;
        assert_eq!(reply.status, 200);
        without.push(reply.elapsed);
    }
    let (dead_p50, healthy_p50) = (p50(with_dead), p50(without));
    println!("p50 with a dead collector: {dead_p50:?}; without a collector: {healthy_p50:?}");
    assert!(
        dead_p50 <= Duration::from_millis(2) + healthy_p50 * 2,
        "a dead collector slowed requests: p50 {dead_p50:?} vs {healthy_p50:?}"
    );

    // The failed exports are counted as dropped spans.
    let deadline = Instant::now() + SPANS_WITHIN;
    loop {
        bounded(dead.running.as_ref().unwrap().flush_traces()).await;
        let dropped = spans_dropped(&dead).await;
        if dropped > 0 {
            println!("keel_spans_dropped_total = {dropped}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "keel_spans_dropped_total stayed 0 with a dead collector"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Leave spans queued for the shutdown flush, then drain: it must not hang on the collector.
    for _ in 0..5 {
        assert_eq!(get_with(dead_addr, "api.test", "/", &[]).await.status, 200);
    }
    let started = Instant::now();
    let finished = tokio::time::timeout(Duration::from_secs(5), dead.drain())
        .await
        .expect("drain with a dead collector returned within 5 s");
    println!("drain with a dead collector took {:?}", started.elapsed());
    assert!(finished, "nothing was in flight");
    drop(healthy);
}

// ---------------------------------------------------------------------------------------------
// The access log.

fn access_log_config(
    path: &std::path::Path,
    ok: SocketAddr,
    full: SocketAddr,
    slow: SocketAddr,
) -> String {
    format!(
        r#"
[access_log]
output = "{path}"
[[listeners]]
name = "logged"
listen = "127.0.0.1:0"
access_log = true
  [[listeners.routes]]
  name = "ok-route"
  match = {{ host = "ok.test" }}
  upstream = "ok"
  [[listeners.routes]]
  name = "full-route"
  match = {{ host = "full.test" }}
  upstream = "full"
  timeout = "60s"
  [[listeners.routes]]
  name = "slow-route"
  match = {{ host = "slow.test" }}
  upstream = "slow"
  timeout = "200ms"
[[listeners]]
name = "quiet"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  name = "quiet-route"
  upstream = "ok"
[upstreams.ok]
endpoints = ["{ok}"]
[upstreams.full]
endpoints = ["{full}"]
  [upstreams.full.pool]
  max_requests = 1
  max_pending = 0
[upstreams.slow]
endpoints = ["{slow}"]
"#,
        path = path.display()
    )
}

fn read_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn line_for<'a>(lines: &'a [serde_json::Value], path: &str) -> &'a serde_json::Value {
    lines
        .iter()
        .find(|l| l["path"] == path)
        .unwrap_or_else(|| panic!("no access log line for {path}: {lines:#?}"))
}

fn check_ids(line: &serde_json::Value) {
    let trace_id = line["trace_id"].as_str().expect("trace_id");
    let span_id = line["span_id"].as_str().expect("span_id");
    assert!(is_valid_id(trace_id, 32), "trace_id {line}");
    assert!(is_valid_id(span_id, 16), "span_id {line}");
    assert!(
        line["duration_ms"].as_f64().unwrap() > 0.0,
        "duration_ms {line}"
    );
}

#[tokio::test]
async fn access_log_lines_for_success_bulkhead_full_and_timeout() {
    let ok = upstream(Behaviour::Respond).await;
    let full = upstream(Behaviour::Hang).await;
    let slow = upstream(Behaviour::Hang).await;
    let path = temp_path("access.log");
    let keel = spawn_keel(&access_log_config(&path, ok.addr, full.addr, slow.addr)).await;
    let logged = keel.addr("logged");

    // Not logged: its listener has no access_log.
    assert_eq!(
        get_with(keel.addr("quiet"), "ok.test", "/quiet", &[])
            .await
            .status,
        200
    );

    // A success with a body in.
    let trace_id = "9a8b7c6d5e4f30211203f4e5d6c7b8a9";
    let request = Request::post("/sink")
        .header("host", "ok.test")
        .header("x-request-id", "log-req-1")
        .header("traceparent", format!("00-{trace_id}-1a2b3c4d5e6f7081-01"))
        .body(Full::new(Bytes::from_static(b"hello keel")))
        .unwrap();
    let success = bounded(send(logged, request)).await;
    assert_eq!(success.status, 200, "{}", success.body);

    // 503 bulkhead-full: one request held in flight, no queue.
    let held = tokio::spawn(async move { get(logged, "full.test", "/held").await });
    let upstream_full = keel.upstream("full");
    eventually(STEP, "one request in flight to `full`", || {
        let u = upstream_full.clone();
        async move { u.bulkhead.active() == 1 }
    })
    .await;
    let rejected = get_with(logged, "full.test", "/rejected", &[]).await;
    assert_eq!(rejected.status, 503);
    assert_eq!(rejected.keel_error(), Some("bulkhead-full"));

    // 504 after the route timeout.
    let timed_out = get_with(logged, "slow.test", "/slow", &[]).await;
    assert_eq!(timed_out.status, 504);
    assert_eq!(timed_out.keel_error(), Some("upstream-timeout"));

    eventually(STEP, "three access log lines", || {
        let path = path.clone();
        async move {
            let lines = read_lines(&path);
            ["/sink", "/rejected", "/slow"]
                .iter()
                .all(|p| lines.iter().any(|l| l["path"] == *p))
        }
    })
    .await;
    let lines = read_lines(&path);
    let _ = std::fs::remove_file(&path);
    held.abort();

    let line = line_for(&lines, "/sink");
    assert_eq!(line["listener"], "logged", "{line}");
    assert_eq!(line["route"], "ok-route", "{line}");
    assert_eq!(line["upstream"], "ok", "{line}");
    assert_eq!(line["endpoint"], ok.addr.to_string(), "{line}");
    assert_eq!(line["method"], "POST", "{line}");
    assert_eq!(line["authority"], "ok.test", "{line}");
    assert_eq!(line["status"], 200, "{line}");
    assert!(line["keel_error"].is_null(), "{line}");
    for flag in ["retried", "breaker_open", "bulkhead_full", "timed_out"] {
        assert_eq!(line["flags"][flag], false, "{flag}: {line}");
    }
    assert_eq!(line["bytes_in"], 10, "{line}");
    assert_eq!(line["bytes_out"], success.body.len() as u64, "{line}");
    assert_eq!(line["trace_id"], trace_id, "{line}");
    assert_ne!(
        line["span_id"], "1a2b3c4d5e6f7081",
        "keel's own span: {line}"
    );
    assert_eq!(line["request_id"], "log-req-1", "{line}");
    check_ids(line);

    let line = line_for(&lines, "/rejected");
    assert_eq!(line["listener"], "logged", "{line}");
    assert_eq!(line["route"], "full-route", "{line}");
    assert_eq!(line["upstream"], "full", "{line}");
    assert!(line["endpoint"].is_null(), "no endpoint was tried: {line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["authority"], "full.test", "{line}");
    assert_eq!(line["status"], 503, "{line}");
    assert_eq!(line["keel_error"], "bulkhead-full", "{line}");
    assert_eq!(line["flags"]["bulkhead_full"], true, "{line}");
    assert_eq!(line["flags"]["timed_out"], false, "{line}");
    assert_eq!(line["bytes_in"], 0, "{line}");
    assert_eq!(line["bytes_out"], rejected.body.len() as u64, "{line}");
    assert!(is_hex(line["request_id"].as_str().unwrap(), 32), "{line}");
    check_ids(line);

    let line = line_for(&lines, "/slow");
    assert_eq!(line["listener"], "logged", "{line}");
    assert_eq!(line["route"], "slow-route", "{line}");
    assert_eq!(line["upstream"], "slow", "{line}");
    assert_eq!(line["endpoint"], slow.addr.to_string(), "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["authority"], "slow.test", "{line}");
    assert_eq!(line["status"], 504, "{line}");
    assert_eq!(line["keel_error"], "upstream-timeout", "{line}");
    assert_eq!(line["flags"]["timed_out"], true, "{line}");
    assert_eq!(line["flags"]["bulkhead_full"], false, "{line}");
    assert!(
        line["duration_ms"].as_f64().unwrap() >= 190.0,
        "waited for the 200 ms timeout: {line}"
    );
    assert_eq!(line["bytes_out"], timed_out.body.len() as u64, "{line}");
    assert!(is_hex(line["request_id"].as_str().unwrap(), 32), "{line}");
    check_ids(line);

    assert!(
        lines
            .iter()
            .all(|l| l["listener"] == "logged" && l["path"] != "/quiet"),
        "a listener without access_log wrote a line: {lines:#?}"
    );
}
