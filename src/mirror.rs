//! Traffic mirroring: a share of a route's requests copied to a shadow upstream.
//!
//! Fire-and-forget: the copy goes through the shadow upstream's own bulkhead and breaker, its
//! response is read and discarded, and nothing about it (latency, errors) reaches the real
//! request. Only requests whose body is held in memory (small, known length) are copied.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request};
use tokio::time::Instant;

use crate::upstream::retry::UpstreamBody;
use crate::upstream::{CallOptions, Upstream};

/// A copy of a request head for the mirror (the original goes upstream).
pub fn copy_head(parts: &http::request::Parts) -> http::request::Parts {
    let (mut copy, ()) = Request::new(()).into_parts();
    copy.method = parts.method.clone();
    copy.uri = parts.uri.clone();
    copy.version = parts.version;
    copy.headers = parts.headers.clone();
    copy
}

/// Sends a copy to the shadow upstream, fire-and-forget: its own bulkhead bounds it, its
/// response is read and thrown away, and nothing about it reaches the real request.
pub async fn send(
    shadow: Arc<Upstream>,
    mut head: http::request::Parts,
    body: bytes::Bytes,
    timeout: std::time::Duration,
) {
    head.headers.insert(
        HeaderName::from_static("x-keel-mirror"),
        HeaderValue::from_static("1"),
    );
    let request = Request::from_parts(head, UpstreamBody::Buffered(Some(body)));
    let options = CallOptions {
        deadline: Instant::now() + timeout,
        timeout,
        retry: None,
        idempotent: false,
        hash_key: None,
        trace: None,
        report: None,
    };
    match shadow.call(request, options).await {
        Ok(success) => {
            let mut body = success.response.into_body();
            // Drain so the pooled connection can be reused; give up at the route timeout.
            let _ = tokio::time::timeout(timeout, async {
                while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut body).await {}
            })
            .await;
        }
        Err(err) => {
            tracing::debug!(upstream = %shadow.name, error = %err, "mirrored request failed")
        }
    }
}
