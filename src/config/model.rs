//! The runtime model: what the rest of keel sees after validation.
//!
//! No strings with units, no optional limits: durations are [`Duration`], addresses are parsed,
//! limits are non-zero and route targets are indexes into [`Config::upstreams`].

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The admin listener.
    pub admin: AdminConfig,
    /// Drain timing.
    pub shutdown: ShutdownConfig,
    /// Logging.
    pub log: LogConfig,
    /// Listeners in file order.
    pub listeners: Vec<ListenerConfig>,
    /// Upstreams sorted by name.
    pub upstreams: Vec<UpstreamConfig>,
}

impl Config {
    /// The number of routes over all listeners, for `keel check`'s summary.
    pub fn route_count(&self) -> usize {
        self.listeners.iter().map(|l| l.routes.len()).sum()
    }
}

/// `[admin]`.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Where `/live` and `/ready` are served.
    pub listen: SocketAddr,
}

/// `[shutdown]`.
#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    /// Wait between the stop signal and closing listeners, so load balancers notice `/ready`.
    pub drain_delay: Duration,
    /// Longest time in-flight requests get to finish after listeners close.
    pub grace_period: Duration,
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
#[derive(Debug, Clone)]
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
#[derive(Debug, Clone)]
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
    /// Routes in match order.
    pub routes: Vec<RouteConfig>,
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
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// Host condition.
    pub host: Option<HostMatch>,
    /// Path prefix condition.
    pub path_prefix: Option<String>,
    /// Header equality condition.
    pub header: Option<(HeaderName, HeaderValue)>,
}

/// Retry policy of a route.
#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Total tries including the first (at least 1).
    pub attempts: u32,
    /// Time allowed per try.
    pub per_try_timeout: Duration,
    /// Retries allowed as a share of requests.
    pub budget_ratio: f64,
}

/// One route.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Name for metrics and logs.
    pub name: Arc<str>,
    /// Match conditions.
    pub matcher: RouteMatch,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Time for the response head, retries included (504 after).
    pub timeout: Duration,
    /// Retry policy, when enabled.
    pub retry: Option<RetryConfig>,
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
#[derive(Debug, Clone)]
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

/// One upstream.
#[derive(Debug, Clone)]
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
}

/// Defaults of every limit, in one place so docs, validation and tests agree.
pub mod defaults {
    use std::time::Duration;

    /// Admin listener address.
    pub const ADMIN_LISTEN: &str = "127.0.0.1:9900";
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
}
