//! The response body keel sends to clients: either the upstream's body streamed through, or a
//! small body keel wrote itself.
//!
//! The streamed variant carries the guards whose lifetime is the response's: the bulkhead slot
//! and the connection's request marker. They drop when the body ends or the client goes away.
//! An upstream body error is passed on as an error, which makes hyper abort the client
//! connection, so a truncated body is never presented as complete.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::fault::Throttle;
use crate::server::conn::RequestMark;
use crate::telemetry::access_log::PendingRecord;
use crate::upstream::bulkhead::BulkheadPermit;
use crate::upstream::GrpcVerdict;

/// A response body.
#[derive(Debug)]
pub enum ProxyBody {
    /// Streamed from the upstream.
    Upstream {
        /// The upstream's body.
        inner: Incoming,
        /// The bulkhead slot held until the body is done.
        permit: Option<BulkheadPermit>,
        /// Marks the client connection busy until the body is done.
        mark: Option<RequestMark>,
        /// The access log record, sent when the body is done.
        log: Option<PendingRecord>,
        /// Paces the body when a `slow_body` fault applies.
        throttle: Option<Throttle>,
        /// The breaker verdict of a gRPC call, given when the trailers arrive.
        grpc: Option<Box<GrpcVerdict>>,
    },
    /// Written by keel (errors, admin); `None` once sent.
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// A body from a static string.
    pub fn text(text: &'static str) -> Self {
        ProxyBody::Full(Some(Bytes::from_static(text.as_bytes())))
    }

    /// A body from owned bytes.
    pub fn bytes(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(bytes.into()))
    }

    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream {
                inner,
                permit,
                mark,
                log,
                throttle,
                grpc,
            } => {
                if let Some(t) = throttle.as_mut().filter(|t| t.has_leftover()) {
                    match t.poll_slice(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Some(frame)) => {
                            if let (Some(log), Some(data)) = (log.as_mut(), frame.data_ref()) {
                                log.bytes_out += data.len() as u64;
                            }
                            return Poll::Ready(Some(Ok(frame)));
                        }
                        Poll::Ready(None) => {}
                    }
                }
                let mut polled = Pin::new(inner).poll_frame(cx);
                if let (Some(t), Poll::Ready(Some(Ok(frame)))) = (throttle.as_mut(), &mut polled) {
                    if let Some(data) = frame.data_mut() {
                        t.push(std::mem::take(data));
                        polled = match t.poll_slice(cx) {
                            Poll::Ready(Some(frame)) => Poll::Ready(Some(Ok(frame))),
                            Poll::Ready(None) => Poll::Ready(Some(Ok(Frame::data(Bytes::new())))),
                            Poll::Pending => return Poll::Pending,
                        };
                    }
                }
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(log), Some(data)) = (log.as_mut(), frame.data_ref()) {
                            log.bytes_out += data.len() as u64;
                        }
                        if let Some(trailers) = frame.trailers_ref() {
                            let code = crate::upstream::grpc_status(trailers);
                            if let Some(verdict) = grpc.take() {
                                verdict.finish(code);
                            }
                            if let Some(log) = log.as_mut() {
                                log.set_grpc_status(code);
                            }
                        }
                    }
                    Poll::Ready(None | Some(Err(_))) => {
                        // A gRPC body that ended without trailers: no status to judge by.
                        grpc.take();
                        // Free the slot as soon as the upstream is done, not when hyper drops us.
                        permit.take();
                        mark.take();
                        log.take();
                    }
                    Poll::Pending => {}
                }
                polled
            }
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            // Data held back by a throttle is still to come after the upstream finished.
            ProxyBody::Upstream {
                inner, throttle, ..
            } => inner.is_end_stream() && !throttle.as_ref().is_some_and(Throttle::has_leftover),
            ProxyBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}
