//! The request-path error type and its one mapping to a status and a `keel-error` reason.
//!
//! Lower layers return a [`ProxyError`]; `proxy.rs` turns it into a response exactly once, through
//! [`ProxyError::status`] and [`ProxyError::reason`], which are exhaustive matches so a new
//! variant cannot ship without a status.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::time::Duration;

use http::StatusCode;

/// Why a bulkhead turned a request away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Every slot and every queue place was taken.
    QueueFull,
    /// The request waited `queue_timeout` without getting a slot.
    QueueTimeout,
}

impl Rejection {
    /// Label value for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::QueueFull => "queue_full",
            Rejection::QueueTimeout => "queue_timeout",
        }
    }
}

/// Everything that can go wrong between accepting a request and receiving the upstream's
/// response head.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request is malformed or ambiguous (for example no or several `Host` headers).
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The request target is longer than the listener's `max_uri_bytes`.
    #[error("request target too long")]
    UriTooLong,
    /// The request body is larger than the listener's `max_request_body`.
    #[error("request body too large")]
    BodyTooLarge,
    /// No route of the listener matches.
    #[error("no route matches")]
    NoRoute,
    /// The upstream's bulkhead is full.
    #[error("bulkhead of upstream rejected the request ({})", .0.as_str())]
    BulkheadFull(Rejection),
    /// The upstream's circuit breaker is open: fail fast without touching the upstream.
    #[error("circuit breaker of upstream is open")]
    CircuitOpen {
        /// Time until the breaker lets a probe through.
        retry_after: Duration,
    },
    /// A fault injected on purpose answered instead of the upstream.
    #[error("fault injected: {status}")]
    FaultInjected {
        /// The status the fault answers with (200 for a gRPC abort).
        status: StatusCode,
        /// The `grpc-status` of a gRPC abort.
        grpc: Option<u16>,
    },
    /// A fault injected on purpose closes the client connection without a response.
    #[error("fault injected: connection reset")]
    FaultReset,
    /// The upstream has no endpoint address (DNS gave nothing).
    #[error("upstream has no resolved endpoint")]
    NoEndpoint,
    /// Opening a connection failed or took longer than `connect_timeout`.
    #[error("connecting to upstream failed")]
    UpstreamConnect(#[source] BoxError),
    /// The TLS handshake with the upstream failed (untrusted or wrong-name certificate, refused
    /// client certificate, no shared protocol).
    #[error("TLS handshake with upstream failed")]
    UpstreamTls(#[source] BoxError),
    /// The connection broke before a complete response head arrived.
    #[error("upstream connection failed before the response head")]
    UpstreamReset(#[source] BoxError),
    /// No response head within the route timeout.
    #[error("no response head from upstream within {0:?}")]
    UpstreamTimeout(Duration),
}

/// A boxed error source, to keep the cause chain without naming every library type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl ProxyError {
    /// The status keel answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::BulkheadFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::CircuitOpen { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::FaultInjected { status, .. } => *status,
            // Never sent (the connection is closed); 502 is what metrics and logs record.
            ProxyError::FaultReset => StatusCode::BAD_GATEWAY,
            ProxyError::NoEndpoint => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamConnect(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTls(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamReset(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The `keel-error` header value (DESIGN.md's list).
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::BadRequest(_) | ProxyError::UriTooLong | ProxyError::BodyTooLarge => {
                "bad-request"
            }
            ProxyError::NoRoute => "no-route",
            ProxyError::BulkheadFull(_) => "bulkhead-full",
            ProxyError::CircuitOpen { .. } => "circuit-open",
            ProxyError::FaultInjected { .. } | ProxyError::FaultReset => "fault-injected",
            ProxyError::NoEndpoint => "upstream-connect",
            ProxyError::UpstreamConnect(_) => "upstream-connect",
            ProxyError::UpstreamTls(_) => "upstream-tls",
            ProxyError::UpstreamReset(_) => "upstream-reset",
            ProxyError::UpstreamTimeout(_) => "upstream-timeout",
        }
    }

    /// Whether the failure says something about the upstream's health (for breakers later):
    /// keel's own rejections and client mistakes never do.
    pub fn is_upstream_failure(&self) -> bool {
        match self {
            ProxyError::BadRequest(_)
            | ProxyError::UriTooLong
            | ProxyError::BodyTooLarge
            | ProxyError::NoRoute
            | ProxyError::BulkheadFull(_)
            | ProxyError::CircuitOpen { .. }
            | ProxyError::FaultInjected { .. }
            | ProxyError::FaultReset => false,
            ProxyError::NoEndpoint
            | ProxyError::UpstreamConnect(_)
            | ProxyError::UpstreamTls(_)
            | ProxyError::UpstreamReset(_)
            | ProxyError::UpstreamTimeout(_) => true,
        }
    }
}
