//! The accept loop of one proxy listener.
//!
//! A connection takes an owned permit of the listener's connection limit before it is accepted,
//! so excess clients wait in the kernel backlog instead of costing keel memory. Each connection
//! runs in its own task (TLS handshake first, on TLS listeners) under the watchdog of `conn.rs`
//! and is watched for graceful shutdown.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

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
use hyper_util::server::graceful::Watcher;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::conn::{self, ClientStream};
use super::shutdown::ShutdownSignal;
use super::tls::{Negotiated, TlsInfo};
use crate::config::model::{defaults, ListenerConfig};
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
    /// Graceful shutdown of this listener's connections.
    pub graceful: Arc<GracefulShutdown>,
    /// Requests in flight on this listener's direction.
    pub in_flight: Arc<AtomicUsize>,
}

/// Accepts connections until `stop` fires, then returns the socket: dropping it refuses new
/// connections, or a reload hands it to the accept loop of the listener's new settings.
///
/// On a TLS listener each connection also takes a handshake slot before it is accepted (so a
/// flood of half-open handshakes waits in the kernel backlog instead of costing keel memory
/// and CPU), and the handshake runs in the connection's own task, bounded by
/// `handshake_timeout`: a slow client never holds up the accept loop. The TLS settings are read
/// from the current config snapshot per connection, so a reload (or a rotated certificate file)
/// changes them for new handshakes while established connections keep theirs.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    config: ListenerConfig,
    shared: Shared,
    mut stop: ShutdownSignal,
) -> TcpListener {
    let builders = Builders {
        auto: Arc::new(http_builder(&config)),
        h2: Arc::new(http_builder(&config).http2_only()),
    };
    let slots = Arc::new(Semaphore::new(config.max_connections.get()));
    let max_handshakes = config
        .tls
        .as_ref()
        .map_or(defaults::TLS_MAX_HANDSHAKES, |t| t.max_handshakes.get());
    let handshakes = Arc::new(Semaphore::new(max_handshakes));
    loop {
        let permit = tokio::select! {
            // A connection slot is free.
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return listener,
            },
            // Draining, or the listener was removed or changed: stop accepting.
            () = stop.triggered() => return listener,
        };
        let tls = shared
            .runtime
            .load()
            .config
            .listeners
            .iter()
            .find(|l| l.name == config.name)
            .and_then(|l| l.tls.clone());
        let handshake_slot = match &tls {
            None => None,
            Some(_) => tokio::select! {
                // A handshake slot is free.
                slot = handshakes.clone().acquire_owned() => match slot {
                    Ok(slot) => Some(slot),
                    Err(_) => return listener,
                },
                // Draining, or the listener was removed or changed: stop accepting.
                () = stop.triggered() => return listener,
            },
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
            // Draining, or the listener was removed or changed: stop accepting.
            () = stop.triggered() => return listener,
        };
        let _ = stream.set_nodelay(true);
        let conn = NewConn {
            listener: config.name.clone(),
            max_header_bytes: config.max_header_bytes,
            peer,
            slot: permit,
            runtime: shared.runtime.clone(),
            telemetry: shared.telemetry.clone(),
            in_flight: shared.in_flight.clone(),
            watcher: shared.graceful.watcher(),
            builders: builders.clone(),
            header_read_timeout: config.header_read_timeout,
            idle_timeout: config.idle_timeout,
        };
        match tls {
            None => {
                tokio::spawn(serve(stream, Negotiated::None, None, conn));
            }
            Some(tls) => {
                let listener_name = config.name.clone();
                tokio::spawn(async move {
                    let handshake = super::tls::accept(stream, &tls).await;
                    drop(handshake_slot);
                    match handshake {
                        Ok((stream, negotiated, info)) => {
                            if let Some(identity) = &info.identity {
                                tracing::debug!(listener = %listener_name, %peer, client = %identity, "client certificate verified");
                            }
                            serve(stream, negotiated, Some(info), conn).await;
                        }
                        Err(err) => {
                            tracing::debug!(listener = %listener_name, %peer, error = %err, "TLS handshake failed");
                        }
                    }
                });
            }
        }
    }
}

/// The HTTP server settings of a listener: auto-detecting (HTTP/1.1 with upgrades, or h2 by
/// its preface), and h2 only for connections whose ALPN chose `h2`.
#[derive(Clone)]
struct Builders {
    auto: Arc<auto::Builder<TokioExecutor>>,
    h2: Arc<auto::Builder<TokioExecutor>>,
}

/// An accepted connection and what serving it needs.
struct NewConn {
    /// The listener's name (its settings are looked up in the current config by name).
    listener: Arc<str>,
    max_header_bytes: usize,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
    // Not the `GracefulShutdown` itself: the drain unwraps its Arc once the accept loop ends.
    runtime: Arc<ArcSwap<Runtime>>,
    telemetry: Arc<Telemetry>,
    in_flight: Arc<AtomicUsize>,
    watcher: Watcher,
    builders: Builders,
    header_read_timeout: Duration,
    idle_timeout: Duration,
}

/// Serves HTTP on one connection (after its TLS handshake, if any) under the watchdog.
async fn serve<S: ClientStream>(
    stream: S,
    negotiated: Negotiated,
    tls: Option<TlsInfo>,
    conn: NewConn,
) {
    let NewConn {
        listener,
        max_header_bytes,
        peer,
        slot,
        runtime,
        telemetry,
        in_flight,
        watcher,
        builders,
        header_read_timeout,
        idle_timeout,
    } = conn;
    let (io, watch) = conn::watch(stream, max_header_bytes);
    let ctx = Arc::new(ConnContext {
        listener,
        runtime,
        peer,
        peer_ip: peer_ip_header(peer),
        watch: watch.clone(),
        slot: Some(slot),
        telemetry,
        in_flight,
        tls,
    });
    // hyper keeps room for one request future per connection for the connection's whole
    // life; boxed, that room is a pointer, and an idle keep-alive connection does not hold the
    // request path's state (about 4 KiB) while it waits.
    let service = service_fn(move |req| Box::pin(proxy::handle(ctx.clone(), req)));
    match negotiated {
        // ALPN chose h2: serve HTTP/2 only (no upgrades exist in h2).
        Negotiated::H2 => {
            let connection = builders.h2.serve_connection(TokioIo::new(io), service);
            let connection = watcher.watch(connection);
            conn::supervise(connection, watch, header_read_timeout, idle_timeout).await;
        }
        // ALPN chose http/1.1, or the client offered none: detect from the first bytes.
        Negotiated::Http1 | Negotiated::None => {
            let connection = builders
                .auto
                .serve_connection_with_upgrades(TokioIo::new(io), service);
            let connection = watcher.watch(connection);
            conn::supervise(connection, watch, header_read_timeout, idle_timeout).await;
        }
    }
}

fn peer_ip_header(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}
