//! The accept loop of one proxy listener.
//!
//! A connection takes an owned permit of the listener's connection limit before it is accepted,
//! so excess clients wait in the kernel backlog instead of costing keel memory. Each connection
//! runs in its own task under the watchdog of `conn.rs` and is watched for graceful shutdown.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::conn;
use super::shutdown::ShutdownSignal;
use crate::config::model::ListenerConfig;
use crate::proxy::{self, ConnContext, Runtime, Telemetry};

/// Most HTTP/2 streams a client may open at once on one connection.
const H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Most streams a client may reset before keel answers them (rapid-reset defence).
const H2_MAX_PENDING_ACCEPT_RESETS: usize = 50;

/// hyper's HTTP/1 header count limit when none is set (`DEFAULT_MAX_HEADERS` in hyper).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// hyper's server settings for a listener.
fn http_builder(config: &ListenerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    http1
        .keep_alive(true)
        // keel's watchdog enforces the head deadline (with a 408); hyper's would close silently.
        .header_read_timeout(None)
        .max_buf_size(config.max_header_bytes.max(8192));
    // hyper's own limit is 100 headers, parsed into a stack array; an explicit limit, even the
    // same 100, makes it zero a heap buffer of that size for every request head.
    if config.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        http1.max_headers(config.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    builder
}

/// What every connection of a listener shares.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    /// The current config and upstreams.
    pub runtime: Arc<ArcSwap<Runtime>>,
    /// Tracing, access log, faults.
    pub telemetry: Arc<Telemetry>,
    /// Graceful shutdown of this listener's direction.
    pub graceful: Arc<GracefulShutdown>,
    /// Requests in flight on this listener's direction.
    pub in_flight: Arc<AtomicUsize>,
}

/// Accepts connections until `stop` fires, then returns (dropping the socket).
pub(crate) async fn accept_loop(
    listener: TcpListener,
    index: usize,
    config: ListenerConfig,
    shared: Shared,
    mut stop: ShutdownSignal,
) {
    let Shared {
        runtime,
        telemetry,
        graceful,
        in_flight,
    } = shared;
    let builder = http_builder(&config);
    let slots = Arc::new(Semaphore::new(config.max_connections.get()));
    loop {
        let permit = tokio::select! {
            // A connection slot is free.
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            // Draining: stop accepting.
            () = stop.triggered() => return,
        };
        let (stream, peer) = tokio::select! {
            // A client connected (or accept failed, for example out of file descriptors).
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    tracing::warn!(listener = %config.name, error = %err, "accept failed");
                    // Back off briefly so a persistent error (EMFILE) does not spin a core.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            // Draining: stop accepting.
            () = stop.triggered() => return,
        };
        let _ = stream.set_nodelay(true);
        let (io, watch) = conn::watch(stream);
        let ctx = Arc::new(ConnContext {
            listener: index,
            runtime: runtime.clone(),
            peer,
            peer_ip: peer_ip_header(peer),
            watch: watch.clone(),
            slot: Some(permit),
            telemetry: telemetry.clone(),
            in_flight: in_flight.clone(),
        });
        // hyper keeps room for one request future per connection for the connection's whole
        // life; boxed, that room is a pointer, and an idle keep-alive connection does not hold
        // the request path's state (about 4 KiB) while it waits.
        let service = service_fn(move |req| Box::pin(proxy::handle(ctx.clone(), req)));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let connection = graceful.watch(connection);
        let (header_read_timeout, idle_timeout) = (config.header_read_timeout, config.idle_timeout);
        tokio::spawn(conn::supervise(
            connection,
            watch,
            header_read_timeout,
            idle_timeout,
        ));
    }
}

fn peer_ip_header(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}
