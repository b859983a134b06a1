//! The connection pool of one upstream: hyper-util's pooled client over a connector that caps
//! connections.
//!
//! hyper-util's client keeps idle connections (bounded, closed after `idle_timeout`) but has no
//! cap on open connections, so the [`Connector`] takes an owned permit from a per-upstream
//! semaphore before dialing and moves it into the connection: the permit is freed when the
//! connection closes. The client's `retry_canceled_requests` is on by decision: it resends a
//! request once, on a fresh connection, only when a reused connection failed before any byte of
//! it was written, which is the one retry that is always safe and that keel's own retry policy
//! (idempotent requests only) does not cover.
//!
//! With `[upstreams.NAME.tls]` the connector runs the TLS handshake after the TCP connect
//! (both within `connect_timeout` each), sending SNI and verifying the endpoint's name, and
//! tells the client when ALPN chose `h2`. With `protocol = "http2"` the client speaks HTTP/2
//! only (h2c prior knowledge without TLS). An HTTP/2 connection carries many requests at once:
//! the pool then holds one multiplexed connection per endpoint instead of one per request in
//! flight, the connection cap counts connections, and the bulkhead (which admits requests, not
//! connections) still bounds the requests in flight.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::client::TlsStream;

use super::balancer::Endpoint;
use crate::config::model::{UpstreamConfig, UpstreamProtocol};
use crate::server::tls::ALPN_H2;

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP handshake took longer than `connect_timeout`.
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout {
        /// Endpoint dialed.
        addr: SocketAddr,
        /// The configured limit.
        timeout: Duration,
    },
    /// The handshake failed (refused, unreachable).
    #[error("connect to {addr} failed")]
    Io {
        /// Endpoint dialed.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The request URI did not carry an endpoint address (a bug in keel).
    #[error("request has no endpoint address")]
    NoAddress,
    /// The TLS handshake with the endpoint failed (untrusted or wrong-name certificate, no
    /// shared protocol, the endpoint does not speak TLS) or took longer than `connect_timeout`.
    #[error("TLS handshake with {addr} ({server_name}) failed")]
    Tls {
        /// Endpoint dialed.
        addr: SocketAddr,
        /// The name sent as SNI and verified.
        server_name: String,
        /// What rustls reported.
        #[source]
        source: io::Error,
    },
}

/// What the connector needs for TLS to an upstream.
#[derive(Clone)]
struct TlsConnect {
    connector: tokio_rustls::TlsConnector,
    /// `server_name` from the config; `None`: each endpoint's configured host.
    server_name: Option<String>,
    /// The configured host of each `endpoints` entry, by index (`Endpoint::source`).
    hosts: Arc<Vec<String>>,
    /// The resolved endpoints, to map a dialed address back to its configured host.
    endpoints: Arc<ArcSwap<Vec<Endpoint>>>,
}

impl std::fmt::Debug for TlsConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnect")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsConnect {
    fn name_for(&self, addr: SocketAddr) -> String {
        if let Some(name) = &self.server_name {
            return name.clone();
        }
        let endpoints = self.endpoints.load();
        endpoints
            .iter()
            .find(|e| e.addr == addr)
            .and_then(|e| self.hosts.get(e.source))
            .cloned()
            .unwrap_or_else(|| addr.ip().to_string())
    }
}

/// Counters of the pool, for admin and metrics.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Connections opened since start.
    pub opened: AtomicU64,
}

/// Dials endpoints with a connection cap and a connect timeout.
#[derive(Clone, Debug)]
pub struct Connector {
    slots: Arc<Semaphore>,
    connect_timeout: Duration,
    stats: Arc<PoolStats>,
    tls: Option<TlsConnect>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = PooledIo;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<PooledIo, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let addr = endpoint_of(&uri).ok_or(ConnectError::NoAddress)?;
            // Waits for a connection slot; the caller's route deadline bounds the wait.
            let slot = this
                .slots
                .acquire_owned()
                .await
                .map_err(|_| ConnectError::NoAddress)?;
            let stream =
                match tokio::time::timeout(this.connect_timeout, TcpStream::connect(addr)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(source)) => return Err(ConnectError::Io { addr, source }),
                    Err(_) => {
                        return Err(ConnectError::Timeout {
                            addr,
                            timeout: this.connect_timeout,
                        })
                    }
                };
            // Small request and response heads should not wait for Nagle.
            let _ = stream.set_nodelay(true);
            let (transport, h2) = match &this.tls {
                None => (Transport::Plain(stream), false),
                Some(tls) => {
                    let name = tls.name_for(addr);
                    let fail = |source: io::Error| ConnectError::Tls {
                        addr,
                        server_name: name.clone(),
                        source,
                    };
                    let server_name = super::tls::server_name(None, &name).ok_or_else(|| {
                        fail(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "not a valid DNS name or IP address",
                        ))
                    })?;
                    let handshake = tls.connector.connect(server_name, stream);
                    let stream = match tokio::time::timeout(this.connect_timeout, handshake).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(source)) => return Err(fail(source)),
                        Err(_) => {
                            return Err(fail(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("no handshake within {:?}", this.connect_timeout),
                            )))
                        }
                    };
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(ALPN_H2);
                    (Transport::Tls(Box::new(stream)), h2)
                }
            };
            this.stats.opened.fetch_add(1, Ordering::Relaxed);
            Ok(PooledIo {
                io: TokioIo::new(transport),
                h2,
                _slot: slot,
            })
        })
    }
}

fn endpoint_of(uri: &Uri) -> Option<SocketAddr> {
    uri.authority()?.as_str().parse().ok()
}

/// The byte stream of an upstream connection: plain TCP or TLS over TCP.
#[derive(Debug)]
pub enum Transport {
    /// Cleartext (HTTP/1.1 or h2c).
    Plain(TcpStream),
    /// TLS (boxed: the TLS state is large and most upstreams are cleartext).
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Transport::Plain(s) => s.is_write_vectored(),
            Transport::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// A pooled connection holding its connection slot.
#[derive(Debug)]
pub struct PooledIo {
    io: TokioIo<Transport>,
    h2: bool,
    _slot: OwnedSemaphorePermit,
}

impl Connection for PooledIo {
    fn connected(&self) -> Connected {
        if self.h2 {
            // ALPN chose h2: the client runs HTTP/2 and shares this connection.
            Connected::new().negotiated_h2()
        } else {
            Connected::new()
        }
    }
}

impl Read for PooledIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for PooledIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

/// The upstream's pool: a client plus its connection cap.
#[derive(Debug)]
pub struct Pool {
    /// The pooled client; requests carry `http://IP:port` URIs chosen by the balancer.
    pub client: Client<Connector, super::retry::UpstreamBody>,
    slots: Arc<Semaphore>,
    max_connections: usize,
    /// Counters.
    pub stats: Arc<PoolStats>,
}

impl Pool {
    /// A pool with the upstream's limits; `endpoints` maps dialed addresses back to configured
    /// host names (the TLS server name when `server_name` is not set).
    pub fn new(config: &UpstreamConfig, endpoints: Arc<ArcSwap<Vec<Endpoint>>>) -> Self {
        let max_connections = config.pool.max_connections.get();
        let slots = Arc::new(Semaphore::new(max_connections));
        let stats = Arc::new(PoolStats::default());
        let tls = config.tls.as_ref().map(|tls| TlsConnect {
            connector: tokio_rustls::TlsConnector::from(tls.loaded.config.clone()),
            server_name: tls.server_name.clone(),
            hosts: Arc::new(config.endpoints.iter().map(|e| e.host.clone()).collect()),
            endpoints,
        });
        let connector = Connector {
            slots: slots.clone(),
            connect_timeout: config.connect_timeout,
            stats: stats.clone(),
            tls,
        };
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool.idle_timeout)
            .pool_max_idle_per_host(max_connections)
            .retry_canceled_requests(true)
            .set_host(false);
        if config.protocol == UpstreamProtocol::Http2 {
            // h2 by ALPN over TLS; h2c with prior knowledge (gRPC services) without.
            builder.http2_only(true);
        }
        let client = builder.build(connector);
        Pool {
            client,
            slots,
            max_connections,
            stats,
        }
    }

    /// Connections open now (busy or idle).
    pub fn open_connections(&self) -> usize {
        self.max_connections - self.slots.available_permits()
    }
}
