//! Trace propagation and span export.
//!
//! Incoming context is read from W3C `traceparent`/`tracestate` or B3 (single `b3` header or
//! multi `x-b3-*` headers). Without one, keel starts a trace, sampled by `sample_ratio`; an
//! incoming sampled flag is respected (parent-based). keel makes a span per hop (`SERVER` on
//! inbound listeners, `CLIENT` on outbound ones) and a child `CLIENT` span per upstream attempt,
//! and injects the attempt's context onward in the format the request arrived with plus the
//! configured `propagation` formats, with `tracestate` carried unchanged.
//!
//! Export never blocks a request: finished spans go into a bounded queue with `try_send`; when
//! it is full, or the collector fails, spans are dropped and counted in
//! `keel_spans_dropped_total`. Shutdown flushes for a bounded time only.

use std::borrow::Cow;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, SpanData, SpanExporter as _, SpanProcessor, Tracer,
};
use opentelemetry_sdk::Resource;
use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};

use crate::config::model::{Direction, Propagation, TracingConfig};

/// Spans held for export at most; more are dropped and counted.
const QUEUE: usize = 2048;
/// Spans per export call.
const BATCH: usize = 512;
/// How long spans may wait in the queue before a partial batch is sent.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// Longest export call; a slow collector costs spans, never requests.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest flush at shutdown.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static B3: HeaderName = HeaderName::from_static("b3");
static X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
static X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
static X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Every header a trace context travels in; replaced on the way to the upstream.
static TRACE_HEADERS: [&HeaderName; 8] = [
    &TRACEPARENT,
    &TRACESTATE,
    &B3,
    &X_B3_TRACEID,
    &X_B3_SPANID,
    &X_B3_PARENTSPANID,
    &X_B3_SAMPLED,
    &X_B3_FLAGS,
];

/// Which formats to inject, as a small bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Formats(u8);

impl Formats {
    const W3C: u8 = 1;
    const B3_MULTI: u8 = 2;
    const B3_SINGLE: u8 = 4;

    fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    fn from_config(list: &[Propagation]) -> Self {
        Formats(list.iter().fold(0, |acc, p| {
            acc | match p {
                Propagation::TraceContext => Self::W3C,
                Propagation::B3 => Self::B3_MULTI,
                Propagation::B3Single => Self::B3_SINGLE,
            }
        }))
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

enum Message {
    Span(Box<SpanData>),
    Flush(oneshot::Sender<()>),
}

/// Hands finished spans to the export task without ever waiting.
#[derive(Debug)]
struct QueueProcessor {
    tx: mpsc::Sender<Message>,
    dropped: IntCounter,
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.tx.try_send(Message::Span(Box::new(span))).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

async fn export_loop(
    mut rx: mpsc::Receiver<Message>,
    exporter: opentelemetry_otlp::SpanExporter,
    dropped: IntCounter,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(BATCH);
    loop {
        let message = if batch.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(BATCH_DELAY, rx.recv()).await {
                Ok(message) => message,
                Err(_) => {
                    send(&exporter, &mut batch, &dropped).await;
                    continue;
                }
            }
        };
        match message {
            Some(Message::Span(span)) => {
                batch.push(*span);
                if batch.len() >= BATCH {
                    send(&exporter, &mut batch, &dropped).await;
                }
            }
            Some(Message::Flush(done)) => {
                send(&exporter, &mut batch, &dropped).await;
                let _ = done.send(());
            }
            None => {
                send(&exporter, &mut batch, &dropped).await;
                return;
            }
        }
    }
}

async fn send(
    exporter: &opentelemetry_otlp::SpanExporter,
    batch: &mut Vec<SpanData>,
    dropped: &IntCounter,
) {
    if batch.is_empty() {
        return;
    }
    let spans = std::mem::take(batch);
    let count = spans.len() as u64;
    match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            dropped.inc_by(count);
            tracing::debug!(error = %err, spans = count, "span export failed");
        }
        Err(_) => {
            dropped.inc_by(count);
            tracing::debug!(spans = count, "span export timed out");
        }
    }
}

/// Tracing for one keel instance.
#[derive(Debug)]
pub struct Tracing {
    tracer: Tracer,
    provider: SdkTracerProvider,
    configured: Formats,
    queue: Option<mpsc::Sender<Message>>,
}

impl Tracing {
    /// Builds the tracer; with an `otlp_endpoint`, also the exporter and its task. Must run
    /// inside the tokio runtime.
    pub fn new(config: &TracingConfig, dropped: IntCounter) -> Result<Self, String> {
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .build();
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
        let mut builder = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_resource(resource.clone());
        let mut queue = None;
        if let Some(endpoint) = &config.otlp_endpoint {
            use opentelemetry_otlp::WithExportConfig;
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|e| format!("cannot build the OTLP exporter for {endpoint}: {e}"))?;
            exporter.set_resource(&resource);
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(export_loop(rx, exporter, dropped.clone()));
            builder = builder.with_span_processor(QueueProcessor {
                tx: tx.clone(),
                dropped,
            });
            queue = Some(tx);
        }
        let provider = builder.build();
        let tracer = provider.tracer("keel");
        Ok(Tracing {
            tracer,
            provider,
            configured: Formats::from_config(&config.propagation),
            queue,
        })
    }

    /// Reads the incoming context and starts this hop's span.
    pub fn start(
        &self,
        headers: &HeaderMap,
        method: &Method,
        direction: Direction,
    ) -> RequestTrace {
        let (parent, arrived) = extract(headers);
        let kind = match direction {
            Direction::Inbound => SpanKind::Server,
            Direction::Outbound => SpanKind::Client,
        };
        let span = self
            .tracer
            .span_builder(span_name(method))
            .with_kind(kind)
            .start_with_context(&self.tracer, &parent);
        let cx = parent.with_span(span);
        RequestTrace {
            cx,
            formats: Formats(arrived.0 | self.configured.0),
        }
    }

    /// Starts a child span for one upstream attempt.
    pub fn attempt(&self, request: &RequestTrace, attempt: u32) -> Context {
        let span = self
            .tracer
            .span_builder(if attempt == 1 {
                "upstream"
            } else {
                "upstream retry"
            })
            .with_kind(SpanKind::Client)
            .start_with_context(&self.tracer, &request.cx);
        request.cx.with_span(span)
    }

    /// Sends every queued span, waiting at most `SHUTDOWN_FLUSH`.
    pub async fn flush(&self) {
        if let Some(queue) = &self.queue {
            let (done, wait) = oneshot::channel();
            if queue.send(Message::Flush(done)).await.is_ok() {
                let _ = tokio::time::timeout(SHUTDOWN_FLUSH, wait).await;
            }
        }
    }

    /// Flushes (bounded) and stops the tracer.
    pub async fn shutdown(&self) {
        self.flush().await;
        let _ = self
            .provider
            .shutdown_with_timeout(Duration::from_millis(100));
    }
}

fn span_name(method: &Method) -> Cow<'static, str> {
    Cow::Borrowed(match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "HTTP",
    })
}

/// The incoming context and the format it came in.
fn extract(headers: &HeaderMap) -> (Context, Formats) {
    let extractor = HeaderExtractor(headers);
    let parent = Context::new();
    if headers.contains_key(&TRACEPARENT) {
        let cx = TraceContextPropagator::new().extract_with_context(&parent, &extractor);
        if cx.span().span_context().is_valid() {
            return (cx, Formats(Formats::W3C));
        }
    }
    if let Some(sc) = b3::extract_single(headers) {
        return (
            parent.with_remote_span_context(sc),
            Formats(Formats::B3_SINGLE),
        );
    }
    if let Some(sc) = b3::extract_multi(headers) {
        return (
            parent.with_remote_span_context(sc),
            Formats(Formats::B3_MULTI),
        );
    }
    (parent, Formats::default())
}

/// This hop's trace: the span and the formats to inject onward.
#[derive(Debug)]
pub struct RequestTrace {
    cx: Context,
    formats: Formats,
}

impl RequestTrace {
    /// The trace id (for logs).
    pub fn trace_id(&self) -> TraceId {
        self.cx.span().span_context().trace_id()
    }

    /// This hop's span context.
    pub fn span_context(&self) -> SpanContext {
        self.cx.span().span_context().clone()
    }

    /// Whether the span is sampled and recorded (attributes are set only then).
    pub fn is_recording(&self) -> bool {
        self.cx.span().is_recording()
    }

    /// Sets attributes on this hop's span.
    pub fn set(&self, attributes: impl IntoIterator<Item = KeyValue>) {
        let span = self.cx.span();
        if span.is_recording() {
            for kv in attributes {
                span.set_attribute(kv);
            }
        }
    }

    /// Replaces the request's trace headers with `attempt`'s context.
    ///
    /// Writes what opentelemetry's W3C propagator and the B3 formats would write (W3C: only the
    /// sampled flag; `tracestate` only when it is not empty), formatted by hand into one buffer
    /// that every header value shares: no string formatting, one allocation.
    pub fn inject(&self, attempt: &Context, headers: &mut HeaderMap) {
        if headers.keys().any(|name| TRACE_HEADERS.contains(&name)) {
            for name in TRACE_HEADERS {
                headers.remove(name);
            }
        }
        let span = attempt.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        let w3c = self.formats.has(Formats::W3C);
        let multi = self.formats.has(Formats::B3_MULTI);
        let single = self.formats.has(Formats::B3_SINGLE);
        if !(w3c || multi || single) {
            return;
        }
        // "00-{trace}-{span}-{flags}" (55 bytes), then "{trace}-{span}-{sampled}" (51 bytes) for
        // the single B3 header. The multi B3 values are slices of the first part.
        let sampled = sc.is_sampled();
        let mut buf = BytesMut::with_capacity(TRACEPARENT_LEN + B3_SINGLE_LEN);
        buf.put_slice(b"00-");
        put_hex(&mut buf, &sc.trace_id().to_bytes());
        buf.put_u8(b'-');
        put_hex(&mut buf, &sc.span_id().to_bytes());
        buf.put_slice(if sampled { b"-01" } else { b"-00" });
        if single {
            put_hex(&mut buf, &sc.trace_id().to_bytes());
            buf.put_u8(b'-');
            put_hex(&mut buf, &sc.span_id().to_bytes());
            buf.put_slice(if sampled { b"-1" } else { b"-0" });
        }
        let buf = buf.freeze();
        let value =
            |range: std::ops::Range<usize>| HeaderValue::from_maybe_shared(buf.slice(range)).ok();
        if w3c {
            if let Some(v) = value(0..TRACEPARENT_LEN) {
                headers.insert(TRACEPARENT.clone(), v);
            }
            let state = sc.trace_state().header();
            if !state.is_empty() {
                if let Ok(v) = HeaderValue::from_str(&state) {
                    headers.insert(TRACESTATE.clone(), v);
                }
            }
        }
        if multi {
            if let Some(v) = value(3..35) {
                headers.insert(X_B3_TRACEID.clone(), v);
            }
            if let Some(v) = value(36..52) {
                headers.insert(X_B3_SPANID.clone(), v);
            }
            headers.insert(
                X_B3_SAMPLED.clone(),
                HeaderValue::from_static(if sampled { "1" } else { "0" }),
            );
        }
        if single {
            if let Some(v) = value(TRACEPARENT_LEN..TRACEPARENT_LEN + B3_SINGLE_LEN) {
                headers.insert(B3.clone(), v);
            }
        }
    }

    /// Ends this hop's span with the response status and keel's error reason, if any.
    pub fn finish(self, status: u16, error: Option<&'static str>) {
        let span = self.cx.span();
        if span.is_recording() {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if let Some(reason) = error {
                span.set_attribute(KeyValue::new("error.type", reason));
                span.set_attribute(KeyValue::new("keel.error", reason));
            }
            if status >= 500 {
                span.set_status(Status::error(error.unwrap_or("server error")));
            }
        }
        span.end();
    }
}

/// Length of a `traceparent` value: `00-` + 32 + `-` + 16 + `-` + 2.
const TRACEPARENT_LEN: usize = 55;
/// Length of a single `b3` value as keel writes it: 32 + `-` + 16 + `-` + 1.
const B3_SINGLE_LEN: usize = 51;

/// Appends `bytes` as lowercase hex.
fn put_hex(buf: &mut BytesMut, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        buf.put_u8(HEX[usize::from(b >> 4)]);
        buf.put_u8(HEX[usize::from(b & 0xf)]);
    }
}

/// Ends an attempt span with its outcome.
pub fn finish_attempt(
    attempt: Context,
    endpoint: std::net::SocketAddr,
    status: Option<u16>,
    error: Option<&'static str>,
) {
    let span = attempt.span();
    if span.is_recording() {
        span.set_attribute(KeyValue::new("keel.endpoint", endpoint.to_string()));
        span.set_attribute(KeyValue::new("server.address", endpoint.ip().to_string()));
        span.set_attribute(KeyValue::new("server.port", i64::from(endpoint.port())));
        if let Some(status) = status {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if let Some(reason) = error {
            span.set_attribute(KeyValue::new("error.type", reason));
            span.set_status(Status::error(reason));
        }
    }
    span.end();
}

/// B3 propagation (openzipkin/b3-propagation), single (`b3`) and multi (`x-b3-*`) header forms.
/// Small enough to keep here rather than depend on the deprecated Zipkin exporter crate.
mod b3 {
    use super::*;

    fn trace_id(hex: &str) -> Option<TraceId> {
        match hex.len() {
            16 | 32 => TraceId::from_hex(hex)
                .ok()
                .filter(|t| *t != TraceId::INVALID),
            _ => None,
        }
    }

    fn span_id(hex: &str) -> Option<SpanId> {
        (hex.len() == 16)
            .then(|| SpanId::from_hex(hex).ok())
            .flatten()
            .filter(|s| *s != SpanId::INVALID)
    }

    /// `1`/`true`/`d` sample; `0`/`false` do not; absent (deferred) is treated as not sampled.
    fn sampled(flag: Option<&str>) -> TraceFlags {
        match flag {
            Some("1" | "true" | "d") => TraceFlags::SAMPLED,
            _ => TraceFlags::default(),
        }
    }

    fn context(trace: TraceId, span: SpanId, flags: TraceFlags) -> SpanContext {
        SpanContext::new(trace, span, flags, true, TraceState::default())
    }

    fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    }

    /// `b3: {trace}-{span}[-{sampled}[-{parent}]]`.
    pub(super) fn extract_single(headers: &HeaderMap) -> Option<SpanContext> {
        let mut parts = header(headers, &B3)?.split('-');
        let trace = trace_id(parts.next()?)?;
        let span = span_id(parts.next()?)?;
        Some(context(trace, span, sampled(parts.next())))
    }

    /// `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags: 1` (debug, implies sampled).
    pub(super) fn extract_multi(headers: &HeaderMap) -> Option<SpanContext> {
        let trace = trace_id(header(headers, &X_B3_TRACEID)?)?;
        let span = span_id(header(headers, &X_B3_SPANID)?)?;
        let flags = if header(headers, &X_B3_FLAGS) == Some("1") {
            TraceFlags::SAMPLED
        } else {
            sampled(header(headers, &X_B3_SAMPLED))
        };
        Some(context(trace, span, flags))
    }

    #[cfg(test)]
    fn set(headers: &mut HeaderMap, name: &'static str, value: String) {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }

    /// The reference form of the multi-header injection (`RequestTrace::inject` writes the same).
    #[cfg(test)]
    pub(super) fn inject_multi(sc: &SpanContext, headers: &mut HeaderMap) {
        set(headers, "x-b3-traceid", sc.trace_id().to_string());
        set(headers, "x-b3-spanid", sc.span_id().to_string());
        let flag = if sc.is_sampled() { "1" } else { "0" };
        headers.insert(
            HeaderName::from_static("x-b3-sampled"),
            HeaderValue::from_static(flag),
        );
    }

    /// The reference form of the single-header injection.
    #[cfg(test)]
    pub(super) fn inject_single(sc: &SpanContext, headers: &mut HeaderMap) {
        let flag = if sc.is_sampled() { 1 } else { 0 };
        set(
            headers,
            "b3",
            format!("{}-{}-{flag}", sc.trace_id(), sc.span_id()),
        );
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn both_forms_round_trip() {
            let mut h = HeaderMap::new();
            h.insert(
                "b3",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90"
                    .parse()
                    .unwrap(),
            );
            let sc = extract_single(&h).unwrap();
            assert_eq!(
                sc.trace_id().to_string(),
                "80f198ee56343ba864fe8b2a57d3eff7"
            );
            assert!(sc.is_sampled());
            let mut out = HeaderMap::new();
            inject_multi(&sc, &mut out);
            let again = extract_multi(&out).unwrap();
            assert_eq!(
                (again.trace_id(), again.span_id(), again.is_sampled()),
                (sc.trace_id(), sc.span_id(), true)
            );
            let mut short = HeaderMap::new();
            short.insert("x-b3-traceid", "64fe8b2a57d3eff7".parse().unwrap());
            short.insert("x-b3-spanid", "e457b5a2e4d86bd1".parse().unwrap());
            short.insert("x-b3-sampled", "0".parse().unwrap());
            let sc = extract_multi(&short).unwrap();
            assert_eq!(
                sc.trace_id().to_string(),
                "000000000000000064fe8b2a57d3eff7"
            );
            assert!(!sc.is_sampled());
            let mut single = HeaderMap::new();
            inject_single(&sc, &mut single);
            assert_eq!(
                single["b3"],
                "000000000000000064fe8b2a57d3eff7-e457b5a2e4d86bd1-0"
            );
            let mut bad = HeaderMap::new();
            bad.insert("b3", "xyz-1".parse().unwrap());
            assert!(extract_single(&bad).is_none());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// What the W3C propagator and the B3 reference functions write for `sc`.
    fn reference(sc: &SpanContext, formats: Formats) -> HashMap<String, String> {
        let cx = Context::new().with_remote_span_context(sc.clone());
        let mut out: HashMap<String, String> = HashMap::new();
        if formats.has(Formats::W3C) {
            TraceContextPropagator::new().inject_context(&cx, &mut out);
            if out.get("tracestate").is_some_and(String::is_empty) {
                out.remove("tracestate");
            }
        }
        let mut headers = HeaderMap::new();
        if formats.has(Formats::B3_MULTI) {
            b3::inject_multi(sc, &mut headers);
        }
        if formats.has(Formats::B3_SINGLE) {
            b3::inject_single(sc, &mut headers);
        }
        for (k, v) in &headers {
            out.insert(k.to_string(), v.to_str().unwrap().to_owned());
        }
        out
    }

    #[test]
    fn hand_written_injection_matches_the_propagators() {
        let state = TraceState::from_key_value([("vendor", "abc"), ("other", "x")]).unwrap();
        for sampled in [false, true] {
            for state in [TraceState::default(), state.clone()] {
                let flags = if sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                };
                let sc = SpanContext::new(
                    TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
                    SpanId::from_hex("00f067aa0ba902b7").unwrap(),
                    flags,
                    true,
                    state,
                );
                for bits in 1..8u8 {
                    let formats = Formats(bits);
                    let request = RequestTrace {
                        cx: Context::new(),
                        formats,
                    };
                    let mut headers = HeaderMap::new();
                    headers.insert("x-b3-parentspanid", "1111111111111111".parse().unwrap());
                    headers.insert("b3", "stale".parse().unwrap());
                    headers.insert("x-kept", "1".parse().unwrap());
                    let attempt = Context::new().with_remote_span_context(sc.clone());
                    request.inject(&attempt, &mut headers);
                    let mut got: HashMap<String, String> = headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                        .collect();
                    assert_eq!(got.remove("x-kept").as_deref(), Some("1"));
                    assert_eq!(
                        got,
                        reference(&sc, formats),
                        "formats {bits:03b}, sampled {sampled}"
                    );
                }
            }
        }
    }

    #[test]
    fn invalid_context_injects_nothing_and_strips_stale_headers() {
        let request = RequestTrace {
            cx: Context::new(),
            formats: Formats(Formats::W3C | Formats::B3_MULTI),
        };
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", "garbage".parse().unwrap());
        headers.insert("x-b3-sampled", "1".parse().unwrap());
        request.inject(&Context::new(), &mut headers);
        assert!(headers.is_empty(), "{headers:?}");
    }
}
