//! keel: a sidecar reverse proxy that keeps one slow or dead dependency from taking its callers
//! down.
//!
//! # Layout
//! - [`config`]: the TOML schema, validation with line/column errors, the runtime model.
//! - [`server`]: listeners, connection limits and watchdog, graceful drain.
//! - [`proxy`]: the request path.
//! - [`router`]: route matching.
//! - [`upstream`]: per-upstream pool and bulkhead.
//! - [`admin`]: `/live`, `/ready`, `/upstreams`, and the `/metrics` listener.
//! - [`telemetry`]: Prometheus metrics.
//! - [`reload`]: validate-and-swap config reloads (file watch, SIGHUP, `POST /reload`).
//! - [`fault`]: time-boxed fault injection.
//! - [`demo`]: built-in upstreams for `keel demo`.
//! - [`x509`]: the few certificate fields keel reports (SANs, subject, validity).
//!
//! # One request, one direction
//! ```text
//! accept (listener permit; TLS: handshake slot) → [TLS handshake, timeout, ALPN, client identity]
//!   → WatchedStream + hyper (HTTP/1.1 or h2 as ALPN chose, else detected; head limits, 408 watchdog)
//!   → proxy::handle                 outer: error → response exactly once
//!     → forward                     inner: `?` chain
//!        request_authority          absolute-form / :authority / single Host, else 400
//!        runtime.load()             one atomic load of the config snapshot
//!        router::route              host, path prefix, header → Route (else 404 no-route)
//!        prepare_request            hop-by-hop out, Host + X-Forwarded-* + client identity in
//!        upstream.call              breaker admission (503 circuit-open)
//!                                   → bulkhead.acquire (503 bulkhead-full)
//!                                   → pick endpoint (P2C) → pool: TCP [+ TLS, ALPN] (502
//!                                     upstream-connect / upstream-tls), HTTP/1.1 or h2
//!                                   → send before the deadline (502/504), record outcome
//!                                     (gRPC with trailers: when the trailers arrive)
//!   ← response streamed back        hop-by-hop out; slot freed when the body ends
//! ```

pub mod admin;
pub mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod fault;
pub mod mirror;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod server;
pub mod telemetry;
pub mod upstream;
pub mod x509;
