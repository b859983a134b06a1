//! One client connection (plain TCP, or TLS after its handshake): hyper's HTTP/1.1 + h2 server
//! plus keel's own watchdog.
//!
//! hyper's `header_read_timeout` closes the connection without a word and also runs while a
//! keep-alive connection is idle. keel wants two different clocks: an idle keep-alive connection
//! closes quietly after `idle_timeout`; a request head whose first byte arrived must be complete
//! within `header_read_timeout` (total, not reset by trickled bytes), or the client gets
//! `408 Request Timeout` and the connection closes. The [`WatchedStream`] notices the first byte
//! of a head, the proxy marks the head complete ([`RequestMark`]), and [`supervise`] checks the
//! deadline of the current phase.
//!
//! Phase changes cost a request two atomic stores and no wake-up: the supervisor never sleeps
//! longer than the shorter of the two timeouts ([`ConnWatch::next_check`]), so any deadline a
//! phase change creates lies after its next check, which then sleeps until that deadline
//! exactly. An idle or busy connection costs one timer wake-up per that interval instead.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::framing::Framing;

/// Waiting for a request; no byte of the next head yet.
const IDLE: u8 = 0;
/// Bytes of a request head arrived; the head is not complete yet.
const READING_HEAD: u8 = 1;
/// Requests are being served (count kept separately).
const IN_REQUEST: u8 = 2;
/// HTTP/2: hyper's h2 settings govern the connection.
const H2: u8 = 3;

/// Shared state of one connection between its stream, its requests and its watchdog.
#[derive(Debug)]
pub struct ConnWatch {
    phase: AtomicU8,
    in_flight: AtomicU64,
    since_ms: AtomicU64,
    epoch: Instant,
    head_timed_out: AtomicBool,
    /// The request stream broke HTTP/1 framing rules; answer 400 when the stream drops.
    framing_refused: AtomicBool,
}

impl ConnWatch {
    fn new() -> Arc<Self> {
        Arc::new(ConnWatch {
            phase: AtomicU8::new(IDLE),
            in_flight: AtomicU64::new(0),
            since_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            head_timed_out: AtomicBool::new(false),
            framing_refused: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn set_phase(&self, phase: u8) {
        self.since_ms.store(self.now_ms(), Ordering::Release);
        self.phase.store(phase, Ordering::Release);
    }

    /// Called when a request head was parsed: the head clock stops.
    pub fn request_started(self: &Arc<Self>, http2: bool, group: &Arc<AtomicUsize>) -> RequestMark {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        group.fetch_add(1, Ordering::AcqRel);
        if http2 {
            if self.phase.load(Ordering::Acquire) != H2 {
                self.set_phase(H2);
            }
        } else {
            self.set_phase(IN_REQUEST);
        }
        RequestMark {
            watch: self.clone(),
            group: group.clone(),
        }
    }

    /// When the supervisor looks again: the current phase's deadline, but never later than
    /// `now` plus the shorter timeout, since a phase change after `now` can create a deadline
    /// that early (and no sooner). `None` for HTTP/2, whose clocks are h2's own for good.
    fn next_check(
        &self,
        now: Instant,
        header_read_timeout: Duration,
        idle_timeout: Duration,
    ) -> Option<Instant> {
        if self.phase.load(Ordering::Acquire) == H2 {
            return None;
        }
        let step = now + header_read_timeout.min(idle_timeout);
        Some(match self.deadline(header_read_timeout, idle_timeout) {
            Some(deadline) => deadline.min(step),
            None => step,
        })
    }

    fn deadline(&self, header_read_timeout: Duration, idle_timeout: Duration) -> Option<Instant> {
        let since = self.epoch + Duration::from_millis(self.since_ms.load(Ordering::Acquire));
        match self.phase.load(Ordering::Acquire) {
            IDLE => Some(since + idle_timeout),
            READING_HEAD => Some(since + header_read_timeout),
            _ => None,
        }
    }
}

/// Held by a request until its response body is done; then the connection counts as idle.
#[derive(Debug)]
pub struct RequestMark {
    watch: Arc<ConnWatch>,
    group: Arc<AtomicUsize>,
}

impl Drop for RequestMark {
    fn drop(&mut self) {
        self.group.fetch_sub(1, Ordering::AcqRel);
        let left = self.watch.in_flight.fetch_sub(1, Ordering::AcqRel) - 1;
        if left == 0 && self.watch.phase.load(Ordering::Acquire) == IN_REQUEST {
            self.watch.set_phase(IDLE);
        }
    }
}

/// A client connection keel serves HTTP on: plain TCP, or TLS over TCP.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// Writes `bytes` as the last thing on the connection, without blocking (best effort):
    /// the 408 sent when the watchdog gives up on a request head, or the 400 for refused framing. Over TLS this encrypts
    /// them and adds a `close_notify`.
    fn write_final(&mut self, bytes: &[u8]);
}

impl ClientStream for TcpStream {
    fn write_final(&mut self, bytes: &[u8]) {
        // Nothing was written for this head, so the send buffer has room: a non-blocking
        // write of a few bytes goes through or, if the peer is gone, fails harmlessly.
        let _ = self.try_write(bytes);
    }
}

/// The client's stream (after TLS, if any), noticing the first byte of each request head and
/// following the HTTP/1 framing ([`Framing`]). If the watchdog gave up on a head, dropping the
/// stream writes `408 Request Timeout` before closing; if the framing was refused, `400 Bad
/// Request`.
#[derive(Debug)]
pub struct WatchedStream<S: ClientStream = TcpStream> {
    stream: S,
    watch: Arc<ConnWatch>,
    first_read: bool,
    framing: Framing,
    /// Response bytes were written since the current request's head began.
    wrote_since_head: bool,
}

const REQUEST_TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\nkeel-error: bad-request\r\n\r\n";

const BAD_FRAMING_RESPONSE: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\nkeel-error: bad-request\r\n\r\n";

impl<S: ClientStream> Drop for WatchedStream<S> {
    fn drop(&mut self) {
        if self.watch.head_timed_out.load(Ordering::Acquire) {
            self.stream.write_final(REQUEST_TIMEOUT_RESPONSE);
        } else if self.watch.framing_refused.load(Ordering::Acquire) {
            self.stream.write_final(BAD_FRAMING_RESPONSE);
        }
    }
}

impl<S: ClientStream> WatchedStream<S> {
    /// Follows the bytes just read; on a violation they are taken back from `buf` and the
    /// read fails, so hyper never sees the rest of the offending message.
    fn follow_framing(&mut self, buf: &mut ReadBuf<'_>, before: usize) -> io::Result<()> {
        if !self.framing.active() || self.watch.phase.load(Ordering::Acquire) == H2 {
            return Ok(());
        }
        let started = self.framing.messages_started();
        let result = self.framing.feed(&buf.filled()[before..]);
        if self.framing.messages_started() != started {
            self.wrote_since_head = false;
        }
        let Err(violation) = result else {
            return Ok(());
        };
        buf.set_filled(before);
        // Answer 400 only where it cannot be taken for another request's response: nothing
        // was written since this request began, and no earlier request is still in flight.
        let in_flight = self.watch.in_flight.load(Ordering::Acquire);
        let alone = if self.framing.in_body() {
            in_flight <= 1
        } else {
            in_flight == 0
        };
        if alone && !self.wrote_since_head {
            self.watch.framing_refused.store(true, Ordering::Release);
        }
        tracing::debug!(
            reason = violation.0,
            "request framing refused; closing the connection"
        );
        Err(io::Error::new(io::ErrorKind::InvalidData, violation.0))
    }
}

impl<S: ClientStream> AsyncRead for WatchedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            if this.watch.phase.load(Ordering::Acquire) == IDLE {
                // An h2c connection starts with the HTTP/2 preface; its clocks are h2's own.
                let h2 = this.first_read && buf.filled()[before..].starts_with(b"PRI ");
                this.watch.set_phase(if h2 { H2 } else { READING_HEAD });
            }
            this.first_read = false;
            this.follow_framing(buf, before)?;
        }
        polled
    }
}

impl<S: ClientStream> AsyncWrite for WatchedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wrote_since_head = true;
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wrote_since_head = true;
        Pin::new(&mut this.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Wraps a fresh client stream (TCP, or TLS after its handshake) whose request heads may be
/// up to `max_head_bytes` long.
pub fn watch<S: ClientStream>(
    stream: S,
    max_head_bytes: usize,
) -> (WatchedStream<S>, Arc<ConnWatch>) {
    let watch = ConnWatch::new();
    (
        WatchedStream {
            stream,
            watch: watch.clone(),
            first_read: true,
            framing: Framing::new(max_head_bytes),
            wrote_since_head: false,
        },
        watch,
    )
}

/// Drives `conn` (hyper's connection future, already watched for graceful shutdown) until it
/// ends or a watchdog deadline passes.
pub async fn supervise<F, E>(
    conn: F,
    watch: Arc<ConnWatch>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
) where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    tokio::pin!(conn);
    loop {
        let check = watch.next_check(Instant::now(), header_read_timeout, idle_timeout);
        tokio::select! {
            // The connection ended on its own: client closed, error, or graceful shutdown.
            result = &mut conn => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "client connection ended with an error");
                }
                return;
            }
            // Time to look at the phase: its deadline may have passed.
            () = sleep_until_opt(check) => {
                let now = Instant::now();
                match (watch.phase.load(Ordering::Acquire), watch.deadline(header_read_timeout, idle_timeout)) {
                    (READING_HEAD, Some(d)) if d <= now => {
                        tracing::debug!("request head not complete within header_read_timeout; answering 408");
                        watch.head_timed_out.store(true, Ordering::Release);
                        return;
                    }
                    (IDLE, Some(d)) if d <= now => {
                        tracing::trace!("idle keep-alive connection closed");
                        return;
                    }
                    _ => {}
                }
            }
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
