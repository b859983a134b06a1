//! The runtime model: what the rest of keel sees after validation.
//!
//! No strings with units, no optional limits: durations are [`Duration`], addresses are parsed,
//! limits are non-zero and route targets are indexes into [`Config::upstreams`].

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The admin listener.
    pub admin: AdminConfig,
    /// The metrics listener.
    pub metrics: MetricsConfig,
    /// Trace propagation and export.
    pub tracing: TracingConfig,
    /// Access log output.
    pub access_log: AccessLogConfig,
    /// Drain timing.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
    /// The async runtime.
    pub runtime: RuntimeConfig,
    /// Listeners in file order.
    pub listeners: Vec<ListenerConfig>,
    /// Upstreams sorted by name.
    pub upstreams: Vec<UpstreamConfig>,
    /// Faults to inject (refused at start unless allowed).
    pub faults: Vec<FaultConfig>,
    /// `FILE:LINE:COL: message` lines worth showing that do not make the config invalid
    /// (expired certificates, `insecure_skip_verify`); logged at load, printed by `keel check`.
    pub warnings: Vec<String>,
}

impl Config {
    /// The number of routes over all listeners, for `keel check`'s summary.
    pub fn route_count(&self) -> usize {
        self.listeners.iter().map(|l| l.routes.len()).sum()
    }
}

/// `[admin]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// Where `/live` and `/ready` are served.
    pub listen: SocketAddr,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsConfig {
    /// Where `/metrics` is served.
    pub listen: SocketAddr,
}

/// A trace context format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// W3C `traceparent` / `tracestate`.
    TraceContext,
    /// B3 multi-header (`x-b3-*`).
    B3,
    /// B3 single header (`b3`).
    B3Single,
}

/// `[tracing]`.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// `service.name` of keel's spans.
    pub service_name: String,
    /// Formats injected onward, besides the one the request came with.
    pub propagation: Vec<Propagation>,
    /// OTLP/gRPC collector; no export when `None`.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces sampled (incoming sampled flags are respected).
    pub sample_ratio: f64,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogOutput {
    /// Standard output.
    Stdout,
    /// Appended to this file.
    File(std::path::PathBuf),
}

/// `[access_log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessLogConfig {
    /// Output of the listeners with `access_log = true`.
    pub output: AccessLogOutput,
}

/// `[shutdown]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShutdownConfig {
    /// Wait between the stop signal and closing listeners, so load balancers notice `/ready`.
    pub drain_delay: Duration,
    /// Longest time in-flight requests get to finish after listeners close.
    pub grace_period: Duration,
}

/// `[runtime]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuntimeConfig {
    /// Worker threads as configured; `None` means [`defaults::worker_threads`].
    pub worker_threads: Option<NonZeroUsize>,
}

impl RuntimeConfig {
    /// The worker thread count to start the runtime with.
    pub fn worker_threads(&self) -> NonZeroUsize {
        self.worker_threads.unwrap_or_else(defaults::worker_threads)
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// Line format.
    pub format: LogFormat,
    /// Filter directive; `RUST_LOG` overrides it.
    pub level: String,
}

/// Which way traffic flows through a listener; decides drain order and span kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Callers reaching the local app.
    Inbound,
    /// The local app calling other services.
    Outbound,
}

impl Direction {
    /// The name used in config and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// One listener with its routes.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    /// Unique name.
    pub name: Arc<str>,
    /// Traffic direction.
    pub direction: Direction,
    /// Address to bind (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Most client connections at once; more wait in the kernel backlog.
    pub max_connections: NonZeroUsize,
    /// Time to receive a whole request head once its first byte arrived (408 after).
    pub header_read_timeout: Duration,
    /// Idle keep-alive connections close after this.
    pub idle_timeout: Duration,
    /// Largest request head (431 above).
    pub max_header_bytes: usize,
    /// Most header fields in a request (431 above).
    pub max_headers: usize,
    /// Longest request target in bytes (414 above).
    pub max_uri_bytes: usize,
    /// Largest request body in bytes (413 above); `None`: no limit.
    pub max_request_body: Option<u64>,
    /// Whether requests on this listener are written to the access log.
    pub access_log: bool,
    /// TLS termination, when configured.
    pub tls: Option<ListenerTls>,
    /// Routes in match order.
    pub routes: Vec<RouteConfig>,
}

/// A rustls config built from PEM files at load, with the bytes it was built from: two loads
/// are equal when the files are, so a reload can tell that a certificate rotated.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    /// The built config, shared by every handshake that uses it.
    pub config: Arc<T>,
    /// The file contents it came from (certificates, key, CA bundle).
    pub source: Arc<Vec<u8>>,
    /// What the leaf certificate says (for `/config` and the expiry warning), if there is one.
    pub cert: Option<crate::x509::CertInfo>,
}

impl<T> PartialEq for Loaded<T> {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// `tls = { ... }` of a listener: TLS termination with optional client certificates.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// CA bundle client certificates must chain to; `None`: no client certificates asked for.
    pub client_ca: Option<PathBuf>,
    /// Whether a client without a valid certificate fails the handshake.
    pub require_client_cert: bool,
    /// Header carrying the verified client identity to the app (stripped from requests).
    pub identity_header: HeaderName,
    /// Time a client gets to finish the handshake.
    pub handshake_timeout: Duration,
    /// Most handshakes in progress at once; more connections wait in the kernel backlog.
    pub max_handshakes: NonZeroUsize,
    /// Whether an expired certificate is an error (else a warning).
    pub reject_expired: bool,
    /// The server config built from the files.
    pub loaded: Loaded<rustls::ServerConfig>,
}

/// Which HTTP version keel speaks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: h2 by ALPN over TLS, h2c with prior knowledge without TLS.
    Http2,
    /// Over TLS, whatever ALPN picks (h2 preferred); without TLS, HTTP/1.1.
    Auto,
}

impl UpstreamProtocol {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::Http2 => "http2",
            UpstreamProtocol::Auto => "auto",
        }
    }
}

/// `[upstreams.NAME.tls]`: TLS to an upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// SNI and verification name; `None`: each endpoint's configured host.
    pub server_name: Option<String>,
    /// CA bundle; `None`: the bundled web PKI roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain for mTLS.
    pub client_cert: Option<PathBuf>,
    /// Its private key.
    pub client_key: Option<PathBuf>,
    /// Server certificates are not verified (a loud warning at load and in `/config`).
    pub insecure_skip_verify: bool,
    /// The client config built from the files (ALPN set from the upstream's protocol).
    pub loaded: Loaded<rustls::ClientConfig>,
}

/// How a route matches a host name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// The whole host, lowercase.
    Exact(String),
    /// `*.example.com` stored as `.example.com`: any host ending in it.
    Suffix(String),
}

/// The conditions of a route; all given ones must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteMatch {
    /// Host condition.
    pub host: Option<HostMatch>,
    /// Path prefix condition.
    pub path_prefix: Option<String>,
    /// Header equality condition.
    pub header: Option<(HeaderName, HeaderValue)>,
}

/// An outcome a route may retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// The connection could not be opened: the request was never sent.
    ConnectFailure,
    /// The connection broke before a response head.
    Reset,
    /// A try took longer than `per_try_timeout`.
    Timeout,
    /// Any 5xx response.
    ServerErrors,
    /// This response status.
    Status(u16),
}

/// Retry policy of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Total tries including the first (at least 1).
    pub attempts: u32,
    /// Time allowed per try (never more than what is left of the route timeout).
    pub per_try_timeout: Duration,
    /// Outcomes that are retried.
    pub on: Vec<RetryOn>,
    /// First backoff; doubles per retry up to `max_backoff`, full jitter.
    pub backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
    /// Retries allowed as a share of recent requests to the upstream.
    pub budget_ratio: f64,
    /// Retries always allowed per second on top of the ratio.
    pub min_retries_per_second: u32,
    /// Largest request body buffered so it can be replayed; larger bodies stream, unretried.
    pub max_body: usize,
}

/// One route.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// Name for metrics and logs.
    pub name: Arc<str>,
    /// Match conditions.
    pub matcher: RouteMatch,
    /// Index into [`Config::upstreams`] of the first target (the only one without a split).
    pub upstream: usize,
    /// Targets with weights; one entry for a plain `upstream = ...` route.
    pub targets: Vec<SplitTarget>,
    /// Header whose value keeps a client on one target of a split.
    pub sticky_header: Option<HeaderName>,
    /// Shadow traffic, when configured.
    pub mirror: Option<MirrorConfig>,
    /// Time for the response head, retries included (504 after).
    pub timeout: Duration,
    /// Retry policy, when enabled.
    pub retry: Option<RetryConfig>,
}

/// One weighted target of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitTarget {
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Relative weight (0: no traffic).
    pub weight: u32,
}

/// Shadow traffic of a route.
#[derive(Debug, Clone, PartialEq)]
pub struct MirrorConfig {
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Share of requests copied, 0 to 100.
    pub percent: f64,
}

/// What an injected fault does.
#[derive(Debug, Clone, PartialEq)]
pub enum FaultAction {
    /// Hold the request `delay` plus up to `jitter` before sending it.
    Delay {
        /// Fixed delay.
        delay: Duration,
        /// Random extra, up to this.
        jitter: Duration,
    },
    /// Answer with this status without calling the upstream.
    Abort(http::StatusCode),
    /// Answer 200 with `grpc-status: N` (trailers-only gRPC error).
    GrpcAbort(u16),
    /// Close the client connection without a response.
    Reset,
    /// Throttle the response body to this many bytes per second.
    SlowBody(u64),
}

impl FaultAction {
    /// Label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FaultAction::Delay { .. } => "delay",
            FaultAction::Abort(_) => "abort",
            FaultAction::GrpcAbort(_) => "grpc_abort",
            FaultAction::Reset => "reset",
            FaultAction::SlowBody(_) => "slow_body",
        }
    }
}

/// One fault to inject, until it expires.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Name.
    pub name: Arc<str>,
    /// Route scope (name).
    pub route: Option<Arc<str>>,
    /// Upstream scope (name).
    pub upstream: Option<Arc<str>>,
    /// Header scope.
    pub header: Option<(HeaderName, HeaderValue)>,
    /// Share of matching requests affected, 0 to 100.
    pub percent: f64,
    /// What it does.
    pub action: FaultAction,
    /// When it stops (wall clock).
    pub expires_at: std::time::SystemTime,
    /// Whether injected aborts and resets count as breaker failures.
    pub count_for_breaker: bool,
}

/// An endpoint as written: a host (IP literal or DNS name) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointAddr {
    /// IP literal or DNS name.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl std::fmt::Display for EndpointAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// `[upstreams.NAME.pool]`: the bulkhead limits.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Most connections open to the upstream.
    pub max_connections: NonZeroUsize,
    /// Most requests in flight.
    pub max_requests: NonZeroUsize,
    /// Most requests waiting for a slot (0: fail at once when full).
    pub max_pending: usize,
    /// Longest wait for a slot.
    pub queue_timeout: Duration,
    /// Idle pooled connections close after this.
    pub idle_timeout: Duration,
}

/// How an upstream picks an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BalancerKind {
    /// Power of two choices on outstanding requests × peak-EWMA latency.
    P2c,
    /// Weighted round robin.
    RoundRobin,
    /// Rendezvous hash of a header's value, for stickiness.
    Hash(http::HeaderName),
}

/// `[upstreams.NAME.breaker]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerConfig {
    /// Whether the breaker acts at all.
    pub enabled: bool,
    /// Failures in a row that open it (0: off).
    pub consecutive_failures: u32,
    /// Failure share over `window` that opens it (0: off).
    pub failure_rate: f64,
    /// Rolling window of the rate conditions.
    pub window: Duration,
    /// Calls in the window before a rate can trip.
    pub min_requests: u32,
    /// Calls slower than this are slow.
    pub slow_call_threshold: Duration,
    /// Slow share that opens it; `None`: latency never trips.
    pub slow_call_rate: Option<f64>,
    /// First open time.
    pub open_for: Duration,
    /// Longest open time.
    pub max_open_for: Duration,
    /// Probes admitted when half-open.
    pub half_open_probes: u32,
    /// Statuses that count as failures.
    pub failure_statuses: Vec<u16>,
    /// gRPC status codes (response header or trailer `grpc-status`) that count as failures.
    pub grpc_failure_statuses: Vec<u16>,
}

/// `[upstreams.NAME.outlier]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierConfig {
    /// Whether endpoints are ever ejected.
    pub enabled: bool,
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// Ejection time × times ejected.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Most endpoints ejected at once, percent.
    pub max_ejected_percent: u32,
}

/// `health = { ... }`.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Path requested with GET.
    pub path: http::uri::PathAndQuery,
    /// Time between checks.
    pub interval: Duration,
    /// Time allowed per check.
    pub timeout: Duration,
    /// Failed checks in a row before unhealthy.
    pub unhealthy_after: u32,
    /// Passed checks in a row before healthy again.
    pub healthy_after: u32,
}

/// One upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// Unique name.
    pub name: Arc<str>,
    /// Endpoints as written.
    pub endpoints: Vec<EndpointAddr>,
    /// Time allowed to open a connection (502 upstream-connect after).
    pub connect_timeout: Duration,
    /// How often DNS names are resolved again.
    pub dns_refresh: Duration,
    /// Bulkhead limits.
    pub pool: PoolConfig,
    /// Endpoint choice.
    pub balancer: BalancerKind,
    /// Weight of each entry of `endpoints` (same order, at least 1).
    pub weights: Vec<u32>,
    /// Circuit breaker.
    pub breaker: BreakerConfig,
    /// Per-endpoint ejection.
    pub outlier: OutlierConfig,
    /// Active health checks, when configured.
    pub health: Option<HealthConfig>,
    /// HTTP version towards the upstream.
    pub protocol: UpstreamProtocol,
    /// TLS towards the upstream, when enabled.
    pub tls: Option<UpstreamTls>,
}

/// Defaults of every limit, in one place so docs, validation and tests agree.
pub mod defaults {
    use std::time::Duration;

    /// Most worker threads keel starts when `[runtime] worker_threads` is not set.
    pub const MAX_DEFAULT_WORKER_THREADS: usize = 2;

    /// `[runtime] worker_threads` when not set: the CPUs keel may use (the cgroup CPU quota
    /// counts), at most [`MAX_DEFAULT_WORKER_THREADS`]. A sidecar shares its pod's CPU with the
    /// app; more threads than that only add context switches.
    pub fn worker_threads() -> std::num::NonZeroUsize {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        std::num::NonZeroUsize::new(cpus.min(MAX_DEFAULT_WORKER_THREADS))
            .unwrap_or(std::num::NonZeroUsize::MIN)
    }

    /// Admin listener address.
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9900";
    /// Metrics listener address.
    pub const METRICS_LISTEN: &str = "0.0.0.0:9901";
    /// `[tracing] service_name`.
    pub const SERVICE_NAME: &str = "keel";
    /// `[tracing] sample_ratio`.
    pub const SAMPLE_RATIO: f64 = 0.1;
    /// `[shutdown] drain_delay`.
    pub const DRAIN_DELAY: Duration = Duration::ZERO;
    /// `[shutdown] grace_period`.
    pub const GRACE_PERIOD: Duration = Duration::from_secs(30);
    /// Listener `max_connections`.
    pub const LISTENER_MAX_CONNECTIONS: usize = 10_000;
    /// Listener `header_read_timeout`.
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    /// Listener `idle_timeout`.
    pub const LISTENER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    /// Listener `max_header_bytes`.
    pub const MAX_HEADER_BYTES: usize = 64 * 1024;
    /// Listener `max_headers`.
    pub const MAX_HEADERS: usize = 100;
    /// Listener `max_uri_bytes`.
    pub const MAX_URI_BYTES: usize = 8 * 1024;
    /// Route `timeout`.
    pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
    /// Upstream `connect_timeout`.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    /// Upstream `dns_refresh`.
    pub const DNS_REFRESH: Duration = Duration::from_secs(5);
    /// Pool `max_connections`.
    pub const POOL_MAX_CONNECTIONS: usize = 256;
    /// Pool `max_requests`.
    pub const POOL_MAX_REQUESTS: usize = 256;
    /// Pool `max_pending`.
    pub const POOL_MAX_PENDING: usize = 128;
    /// Pool `queue_timeout`.
    pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
    /// Pool `idle_timeout`.
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
    /// Retry `attempts`.
    pub const RETRY_ATTEMPTS: u32 = 2;
    /// Retry `budget_ratio`.
    pub const RETRY_BUDGET_RATIO: f64 = 0.2;
    /// Retry `min_retries_per_second`.
    pub const RETRY_MIN_PER_SECOND: u32 = 5;
    /// Retry `backoff`.
    pub const RETRY_BACKOFF: Duration = Duration::from_millis(25);
    /// Retry `max_backoff`.
    pub const RETRY_MAX_BACKOFF: Duration = Duration::from_millis(250);
    /// Retry `max_body`.
    pub const RETRY_MAX_BODY: usize = 64 * 1024;
    /// Breaker `consecutive_failures`.
    pub const BREAKER_CONSECUTIVE_FAILURES: u32 = 5;
    /// Breaker `failure_rate`.
    pub const BREAKER_FAILURE_RATE: f64 = 0.5;
    /// Breaker `window`.
    pub const BREAKER_WINDOW: Duration = Duration::from_secs(10);
    /// Breaker `min_requests`.
    pub const BREAKER_MIN_REQUESTS: u32 = 20;
    /// Breaker `slow_call_threshold` (only used when `slow_call_rate` is set).
    pub const BREAKER_SLOW_CALL_THRESHOLD: Duration = Duration::from_secs(1);
    /// Breaker `open_for`.
    pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(5);
    /// Breaker `max_open_for`.
    pub const BREAKER_MAX_OPEN_FOR: Duration = Duration::from_secs(60);
    /// Breaker `half_open_probes`.
    pub const BREAKER_HALF_OPEN_PROBES: u32 = 3;
    /// Breaker `failure_statuses`.
    pub const BREAKER_FAILURE_STATUSES: [u16; 3] = [502, 503, 504];
    /// Breaker `grpc_failure_statuses`: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL,
    /// RESOURCE_EXHAUSTED (the codes that say the server, not the call, is in trouble).
    pub const BREAKER_GRPC_FAILURE_STATUSES: [u16; 4] = [14, 4, 13, 8];
    /// Listener TLS `handshake_timeout`.
    pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Listener TLS `max_handshakes`.
    pub const TLS_MAX_HANDSHAKES: usize = 256;
    /// Listener TLS `client_identity_header`.
    pub const CLIENT_IDENTITY_HEADER: &str = "x-forwarded-client-cert";
    /// Outlier `consecutive_failures`.
    pub const OUTLIER_CONSECUTIVE_FAILURES: u32 = 5;
    /// Outlier `base_ejection`.
    pub const OUTLIER_BASE_EJECTION: Duration = Duration::from_secs(10);
    /// Outlier `max_ejection`.
    pub const OUTLIER_MAX_EJECTION: Duration = Duration::from_secs(300);
    /// Outlier `max_ejected_percent`.
    pub const OUTLIER_MAX_EJECTED_PERCENT: u32 = 50;
    /// Health `interval`.
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(5);
    /// Health `timeout`.
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
    /// Health `unhealthy_after`.
    pub const HEALTH_UNHEALTHY_AFTER: u32 = 3;
    /// Health `healthy_after`.
    pub const HEALTH_HEALTHY_AFTER: u32 = 2;
}
