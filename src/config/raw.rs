//! The TOML schema exactly as users write it.
//!
//! Everything here is plain serde with `deny_unknown_fields`: one shape per key, no `untagged` or
//! `flatten`, so every error keeps its line and column. Values that need checking later (names,
//! durations, limits) are wrapped in [`Spanned`] so `validate` can point at them. Every field is
//! optional here; defaults and required keys are decided in `validate`, which reports all problems
//! at once instead of stopping at the first missing key.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// A string value with its location in the file.
pub type Str = Spanned<String>;
/// An integer value with its location in the file (signed, so `-1` gets our message, not serde's).
pub type Int = Spanned<i64>;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[admin]`: the loopback admin listener.
    pub admin: Option<RawAdmin>,
    /// `[metrics]`: the Prometheus scrape listener.
    pub metrics: Option<RawMetrics>,
    /// `[tracing]`: propagation and span export.
    pub tracing: Option<RawTracing>,
    /// `[access_log]`: where access log lines go.
    pub access_log: Option<RawAccessLog>,
    /// `[shutdown]`: drain timing.
    pub shutdown: Option<RawShutdown>,
    /// `[log]`: log format and filter.
    pub log: Option<RawLog>,
    /// `[runtime]`: the async runtime's threads.
    pub runtime: Option<RawRuntime>,
    /// `[[listeners]]`.
    #[serde(default)]
    pub listeners: Vec<Spanned<RawListener>>,
    /// `[upstreams.NAME]`.
    #[serde(default)]
    pub upstreams: BTreeMap<Str, Spanned<RawUpstream>>,
    /// `[[faults]]`: time-boxed fault injection.
    #[serde(default)]
    pub faults: Vec<Spanned<RawFault>>,
}

/// A document of faults only, as `POST /faults` takes it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFaults {
    /// `[[faults]]`.
    #[serde(default)]
    pub faults: Vec<Spanned<RawFault>>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Socket address of the admin listener.
    pub listen: Option<Str>,
}

/// `[metrics]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    /// Socket address of the metrics listener.
    pub listen: Option<Str>,
}

/// `[tracing]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracing {
    /// `service.name` of keel's spans.
    pub service_name: Option<Str>,
    /// Formats injected onward: `tracecontext`, `b3`, `b3single`.
    pub propagation: Option<Spanned<Vec<Str>>>,
    /// OTLP/gRPC collector URL; no export when absent.
    pub otlp_endpoint: Option<Str>,
    /// Share of new traces sampled.
    pub sample_ratio: Option<Spanned<f64>>,
}

/// `[access_log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// `stdout` or a file path.
    pub output: Option<Str>,
}

/// `[shutdown]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShutdown {
    /// Time between the stop signal and closing the listeners.
    pub drain_delay: Option<Str>,
    /// Longest time in-flight requests get to finish.
    pub grace_period: Option<Str>,
}

/// `[runtime]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    /// Worker threads of the async runtime that serves every listener.
    pub worker_threads: Option<Int>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `text` or `json`.
    pub format: Option<Str>,
    /// A `RUST_LOG`-style filter such as `info` or `keel=debug`.
    pub level: Option<Str>,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    /// Unique name, used in metrics and logs.
    pub name: Option<Str>,
    /// `inbound` or `outbound`.
    pub direction: Option<Str>,
    /// Socket address to bind.
    pub listen: Option<Str>,
    /// Most client connections open at once.
    pub max_connections: Option<Int>,
    /// Time allowed to receive a whole request head.
    pub header_read_timeout: Option<Str>,
    /// Idle keep-alive connections close after this.
    pub idle_timeout: Option<Str>,
    /// Largest request head in bytes.
    pub max_header_bytes: Option<Int>,
    /// Most header fields in one request.
    pub max_headers: Option<Int>,
    /// Longest request target (path and query) in bytes.
    pub max_uri_bytes: Option<Int>,
    /// Largest request body in bytes, such as "10MiB" (no limit when absent).
    pub max_request_body: Option<Str>,
    /// Write an access log line per request.
    pub access_log: Option<bool>,
    /// `tls = { cert = "...", key = "..." }`: terminate TLS on this listener.
    pub tls: Option<Spanned<RawListenerTls>>,
    /// `[[listeners.routes]]`, matched in order.
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
}

/// `tls = { ... }` of a listener: TLS termination, optionally with client certificates.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListenerTls {
    /// PEM certificate chain, leaf first.
    pub cert: Option<Str>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<Str>,
    /// PEM bundle of the CAs that client certificates must chain to (mTLS).
    pub client_ca: Option<Str>,
    /// Refuse the handshake of a client without a valid certificate.
    pub require_client_cert: Option<Spanned<bool>>,
    /// Header that carries the verified client identity to the app.
    pub client_identity_header: Option<Str>,
    /// Time a client gets to complete the TLS handshake.
    pub handshake_timeout: Option<Str>,
    /// Most TLS handshakes in progress at once.
    pub max_handshakes: Option<Int>,
    /// Refuse an expired certificate instead of warning about it.
    pub reject_expired: Option<bool>,
}

/// `[upstreams.NAME.tls]`: TLS to the upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// Whether connections to the upstream use TLS (default true when the table is present).
    pub enabled: Option<bool>,
    /// SNI and verification name; default: the endpoint's host name.
    pub server_name: Option<Str>,
    /// PEM bundle of trusted CAs; default: the bundled web PKI roots.
    pub ca: Option<Str>,
    /// PEM client certificate chain for mTLS to the upstream.
    pub client_cert: Option<Str>,
    /// PEM private key of `client_cert`.
    pub client_key: Option<Str>,
    /// Accept any server certificate. For debugging only.
    pub insecure_skip_verify: Option<Spanned<bool>>,
    /// Refuse an expired client certificate instead of warning about it.
    pub reject_expired: Option<bool>,
}

/// One `[[listeners.routes]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Name used in metrics and logs; defaults to the upstream's name.
    pub name: Option<Str>,
    /// What a request must look like to take this route; absent matches everything.
    #[serde(rename = "match")]
    pub matcher: Option<Spanned<RawMatch>>,
    /// Name of the upstream that serves this route (or `split`).
    pub upstream: Option<Str>,
    /// Several upstreams by weight, for canaries: `[{ upstream = "v1", weight = 95 }, ...]`.
    pub split: Option<Spanned<Vec<Spanned<RawSplit>>>>,
    /// Header whose value keeps a client on one split target.
    pub sticky_header: Option<Str>,
    /// Copy a share of requests to a shadow upstream.
    pub mirror: Option<Spanned<RawMirror>>,
    /// Total time for the response head, retries included.
    pub timeout: Option<Str>,
    /// Retry policy.
    pub retry: Option<Spanned<RawRetry>>,
}

/// One `split` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSplit {
    /// Upstream name.
    pub upstream: Option<Str>,
    /// Relative weight (0 allowed: no traffic).
    pub weight: Option<Int>,
}

/// `mirror = { upstream = "...", percent = 10.0 }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    /// Shadow upstream name.
    pub upstream: Option<Str>,
    /// Share of requests copied, 0 to 100.
    pub percent: Option<Spanned<f64>>,
}

/// One `[[faults]]` entry: exactly one of `delay`, `abort`, `grpc_abort`, `reset`, `slow_body`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    /// Name shown in `/faults`, logs and the access log.
    pub name: Option<Str>,
    /// Only requests on this route.
    pub route: Option<Str>,
    /// Only requests to this upstream.
    pub upstream: Option<Str>,
    /// Only requests with this header value.
    pub header: Option<Spanned<RawHeaderMatch>>,
    /// Share of matching requests affected, 0 to 100.
    pub percent: Option<Spanned<f64>>,
    /// Hold the request this long before sending it.
    pub delay: Option<Str>,
    /// Random extra delay, up to this much.
    pub jitter: Option<Str>,
    /// Answer with this HTTP status instead of calling the upstream.
    pub abort: Option<Int>,
    /// Answer 200 with this `grpc-status` trailer-only response instead.
    pub grpc_abort: Option<Int>,
    /// Close the client connection without a response.
    pub reset: Option<Spanned<bool>>,
    /// Throttle the response body to this many bytes per second.
    pub slow_body: Option<Int>,
    /// How long the fault lives from when it is loaded.
    pub expires_in: Option<Str>,
    /// When the fault ends (RFC 3339, UTC).
    pub until: Option<Str>,
    /// Count injected aborts and resets as upstream failures in the breaker.
    pub count_for_breaker: Option<bool>,
}

/// `match = { ... }` of a route; every given condition must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Exact host, `*.suffix` or an IP address (IPv6 bare or in brackets), port ignored.
    pub host: Option<Str>,
    /// Path prefix such as `/api/`.
    pub path_prefix: Option<Str>,
    /// A header that must be present with exactly this value.
    pub header: Option<Spanned<RawHeaderMatch>>,
}

/// `header = { name = "...", value = "..." }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatch {
    /// Header name, case-insensitive.
    pub name: Option<Str>,
    /// Exact header value.
    pub value: Option<Str>,
}

/// `retry = { ... }` of a route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    /// Total tries including the first.
    pub attempts: Option<Int>,
    /// Time allowed for each try.
    pub per_try_timeout: Option<Str>,
    /// Which outcomes are retried: `connect-failure`, `reset`, `timeout`, `5xx` or a status code.
    pub on: Option<Spanned<Vec<Str>>>,
    /// First backoff; doubles per retry, with full jitter.
    pub backoff: Option<Str>,
    /// Largest backoff.
    pub max_backoff: Option<Str>,
    /// Retries allowed as a share of recent requests to the upstream.
    pub budget_ratio: Option<Spanned<f64>>,
    /// Retries always allowed per second, on top of the ratio.
    pub min_retries_per_second: Option<Int>,
    /// Largest request body kept in memory so it can be sent again, such as "64KiB".
    pub max_body: Option<Str>,
}

/// `[upstreams.NAME]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `IP:port` or `name:port` entries.
    pub endpoints: Option<Spanned<Vec<Str>>>,
    /// Time allowed to open a TCP connection.
    pub connect_timeout: Option<Str>,
    /// How often host names are resolved again.
    pub dns_refresh: Option<Str>,
    /// `[upstreams.NAME.pool]`: the bulkhead.
    pub pool: Option<RawPool>,
    /// `p2c` (default), `round_robin` or `hash`.
    pub balancer: Option<Str>,
    /// Header whose value picks the endpoint when `balancer = "hash"`.
    pub hash_header: Option<Str>,
    /// Relative weights by endpoint, `{ "host:port" = 3 }`; unlisted endpoints weigh 1.
    pub weights: Option<Spanned<BTreeMap<Str, Int>>>,
    /// `[upstreams.NAME.breaker]`: the circuit breaker.
    pub breaker: Option<Spanned<RawBreaker>>,
    /// `[upstreams.NAME.outlier]`: per-endpoint ejection.
    pub outlier: Option<RawOutlier>,
    /// `health = { ... }`: active health checks.
    pub health: Option<Spanned<RawHealth>>,
    /// `http1` (default), `http2` (h2 by ALPN over TLS, h2c prior knowledge without) or `auto`.
    pub protocol: Option<Str>,
    /// `[upstreams.NAME.tls]`: TLS to the upstream.
    pub tls: Option<Spanned<RawUpstreamTls>>,
}

/// `[upstreams.NAME.breaker]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreaker {
    /// `false` turns the breaker off.
    pub enabled: Option<bool>,
    /// Failures in a row that open the breaker (0: this condition off).
    pub consecutive_failures: Option<Int>,
    /// Failure share over `window` that opens it (0: off).
    pub failure_rate: Option<Spanned<f64>>,
    /// Rolling window of the rate conditions.
    pub window: Option<Str>,
    /// Calls in the window before a rate can trip.
    pub min_requests: Option<Int>,
    /// Calls slower than this count as slow.
    pub slow_call_threshold: Option<Str>,
    /// Slow share over `window` that opens it (off unless set).
    pub slow_call_rate: Option<Spanned<f64>>,
    /// First open time.
    pub open_for: Option<Str>,
    /// Longest open time after repeated opens.
    pub max_open_for: Option<Str>,
    /// Probe requests let through when half-open.
    pub half_open_probes: Option<Int>,
    /// Response statuses that count as failures.
    pub failure_statuses: Option<Spanned<Vec<Int>>>,
    /// gRPC status names (`UNAVAILABLE`, ...) that count as failures.
    pub grpc_failure_statuses: Option<Spanned<Vec<Str>>>,
}

/// `[upstreams.NAME.outlier]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    /// `false` turns ejection off.
    pub enabled: Option<bool>,
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: Option<Int>,
    /// Ejection time, multiplied by the times ejected.
    pub base_ejection: Option<Str>,
    /// Longest ejection.
    pub max_ejection: Option<Str>,
    /// Most endpoints ejected at once, in percent.
    pub max_ejected_percent: Option<Int>,
}

/// `health = { ... }` of an upstream.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Path requested with GET; 2xx is healthy.
    pub path: Option<Str>,
    /// Time between checks.
    pub interval: Option<Str>,
    /// Time allowed per check.
    pub timeout: Option<Str>,
    /// Failed checks in a row that mark an endpoint unhealthy.
    pub unhealthy_after: Option<Int>,
    /// Passed checks in a row that mark it healthy again.
    pub healthy_after: Option<Int>,
}

/// `[upstreams.NAME.pool]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPool {
    /// Most connections open to this upstream.
    pub max_connections: Option<Int>,
    /// Most requests in flight to this upstream.
    pub max_requests: Option<Int>,
    /// Most requests waiting for an in-flight slot.
    pub max_pending: Option<Int>,
    /// Longest wait for a slot.
    pub queue_timeout: Option<Str>,
    /// Idle pooled connections close after this.
    pub idle_timeout: Option<Str>,
}
