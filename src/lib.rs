//! keel: a sidecar reverse proxy that keeps one slow or dead dependency from taking its callers
//! down.
//!
//! # Layout
//! - [`config`]: the TOML schema, validation with line/column errors, the runtime model.
//! - [`server`]: listeners, connection limits, head watchdog, strict HTTP/1 framing, drain.
//! - [`proxy`]: the request path.
//! - [`router`]: route matching and weighted splits.
//! - [`upstream`]: per-upstream pool, bulkhead, breaker, balancer, health checks, retries.
//! - [`admin`]: `/live`, `/ready`, `/config`, `/upstreams`, `/faults`, reload and shutdown, and
//!   the `/metrics` listener.
//! - [`telemetry`]: Prometheus metrics, trace propagation and OTLP export, the access log.
//! - [`reload`]: validate-and-swap config reloads (file watch, SIGHUP, `POST /reload`).
//! - [`fault`] and [`mirror`]: time-boxed fault injection, traffic mirroring.
//! - [`demo`]: built-in upstreams for `keel demo`.
//! - [`x509`]: the few certificate fields keel reports (SANs, subject, validity).
//!
//! # One request, one direction
//! ```text
//! accept (listener permit; TLS: handshake slot) → [TLS handshake, timeout, ALPN, client identity]
//!   → WatchedStream (server::framing: CL/TE, bare LF, chunk syntax → 400)
//!   → hyper (HTTP/1.1 or h2 as ALPN chose, else detected; head limits, 408 watchdog)
//!   → proxy::handle                 outer: error → response exactly once, metrics, log, span
//!     → forward                     inner: `?` chain
//!        request_authority          absolute-form / :authority / single Host, else 400
//!        runtime.load()             one atomic load of the config snapshot
//!        trace::extract_or_start    W3C / B3 in, new span id for this hop
//!        router::route              host, path prefix, header → Route (else 404 no-route)
//!        split / faults             weighted target; delay, abort, reset (fault-injected)
//!        prepare_request            hop-by-hop out, Host + X-Forwarded-* + client identity in
//!        upstream.call              breaker.allow (503 circuit-open, no socket, no slot)
//!                                   → bulkhead.acquire (503 bulkhead-full)
//!                                   → balancer.pick (P2C peak-EWMA, ejection, health)
//!                                   → pool: TCP [+ TLS, ALPN] (502 upstream-connect /
//!                                     upstream-tls), HTTP/1.1 or h2, before the per-try and
//!                                     route deadlines (502/504)
//!                                   → retry within the budget; record outcome in breaker
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
