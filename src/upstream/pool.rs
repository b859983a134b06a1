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

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::model::UpstreamConfig;

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
            this.stats.opened.fetch_add(1, Ordering::Relaxed);
            Ok(PooledIo {
                io: TokioIo::new(stream),
                _slot: slot,
            })
        })
    }
}

fn endpoint_of(uri: &Uri) -> Option<SocketAddr> {
    uri.authority()?.as_str().parse().ok()
}

/// A pooled connection holding its connection slot.
#[derive(Debug)]
pub struct PooledIo {
    io: TokioIo<TcpStream>,
    _slot: OwnedSemaphorePermit,
}

impl Connection for PooledIo {
    fn connected(&self) -> Connected {
        Connected::new()
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
    /// A pool with the upstream's limits.
    pub fn new(config: &UpstreamConfig) -> Self {
        let max_connections = config.pool.max_connections.get();
        let slots = Arc::new(Semaphore::new(max_connections));
        let stats = Arc::new(PoolStats::default());
        let connector = Connector {
            slots: slots.clone(),
            connect_timeout: config.connect_timeout,
            stats: stats.clone(),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool.idle_timeout)
            .pool_max_idle_per_host(max_connections)
            .retry_canceled_requests(true)
            .set_host(false)
            .build(connector);
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
