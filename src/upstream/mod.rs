//! An upstream: a named service with its endpoints, connection pool and bulkhead.
//!
//! `call` is the one entry point: bulkhead slot → endpoint (round robin) → pool send under the
//! route deadline. Failures come back as typed [`ProxyError`]s; this module never builds HTTP
//! responses and never logs request errors.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod breaker;
pub mod bulkhead;
pub mod pool;

use std::error::Error as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};

use arc_swap::ArcSwap;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use tokio::time::Instant;

use crate::config::model::{EndpointAddr, UpstreamConfig};
use crate::error::ProxyError;
use bulkhead::{Bulkhead, BulkheadPermit};
use pool::{ConnectError, Pool};

/// One upstream service.
#[derive(Debug)]
pub struct Upstream {
    /// Configured name.
    pub name: Arc<str>,
    /// Settings it was built from.
    pub config: UpstreamConfig,
    /// In-flight and queue limits.
    pub bulkhead: Bulkhead,
    /// Connections.
    pub pool: Pool,
    /// Resolved endpoint addresses, with their pool authorities prebuilt; swapped whole on refresh.
    endpoints: ArcSwap<Vec<Endpoint>>,
    next: AtomicUsize,
}

/// A resolved endpoint address.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Socket address dialed.
    pub addr: SocketAddr,
    /// Index of the configured endpoint (`host:port` entry) it was resolved from.
    pub source: usize,
    authority: Authority,
}

impl Endpoint {
    fn new(addr: SocketAddr, source: usize) -> Option<Self> {
        let authority = Authority::try_from(addr.to_string().as_str()).ok()?;
        Some(Endpoint {
            addr,
            source,
            authority,
        })
    }
}

/// Longest wait for one DNS answer; a slow resolver must not hold up start or refresh.
const DNS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl Upstream {
    /// Builds the upstream and resolves its endpoints once. Names that do not resolve yet are
    /// logged and retried by the refresh task; requests get 503 while none resolves.
    pub async fn new(config: UpstreamConfig) -> Arc<Self> {
        let endpoints = resolve_all(&config.name, &config.endpoints, &[]).await;
        let upstream = Arc::new(Upstream {
            name: config.name.clone(),
            bulkhead: Bulkhead::new(&config.pool),
            pool: Pool::new(&config),
            endpoints: ArcSwap::from_pointee(endpoints),
            next: AtomicUsize::new(0),
            config,
        });
        if upstream
            .config
            .endpoints
            .iter()
            .any(|e| e.host.parse::<IpAddr>().is_err())
        {
            tokio::spawn(refresh_dns(Arc::downgrade(&upstream)));
        }
        upstream
    }

    /// The endpoints resolved now.
    pub fn endpoints(&self) -> Arc<Vec<Endpoint>> {
        self.endpoints.load_full()
    }

    /// Sends a request (URI in origin form, headers already prepared) and returns the response
    /// head with the bulkhead slot, which the caller keeps until the body is done.
    pub async fn call(
        &self,
        mut req: Request<Incoming>,
        deadline: Instant,
        timeout: std::time::Duration,
    ) -> Result<(Response<Incoming>, BulkheadPermit), ProxyError> {
        let permit = self
            .bulkhead
            .acquire()
            .await
            .map_err(ProxyError::BulkheadFull)?;
        let endpoint = self.pick().ok_or(ProxyError::NoEndpoint)?;
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(endpoint.authority);
        parts.path_and_query = Some(path);
        *req.uri_mut() =
            Uri::from_parts(parts).map_err(|e| ProxyError::UpstreamConnect(e.into()))?;
        match tokio::time::timeout_at(deadline, self.pool.client.request(req)).await {
            Ok(Ok(response)) => Ok((response, permit)),
            Ok(Err(err)) => Err(classify(err)),
            Err(_elapsed) => Err(ProxyError::UpstreamTimeout(timeout)),
        }
    }

    fn pick(&self) -> Option<Endpoint> {
        let endpoints = self.endpoints.load();
        if endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
        endpoints.get(i).cloned()
    }
}

/// Maps a client error once, by type: connect failures (refused, timed out) are
/// `upstream-connect`, everything after the connection was up is `upstream-reset`.
fn classify(err: hyper_util::client::legacy::Error) -> ProxyError {
    let connect = err.is_connect() || {
        let mut source = err.source();
        let mut found = false;
        while let Some(s) = source {
            if s.is::<ConnectError>() {
                found = true;
                break;
            }
            source = s.source();
        }
        found
    };
    if connect {
        ProxyError::UpstreamConnect(Box::new(err))
    } else {
        ProxyError::UpstreamReset(Box::new(err))
    }
}

/// Resolves every endpoint; a name that fails keeps its `previous` addresses.
async fn resolve_all(
    upstream: &str,
    endpoints: &[EndpointAddr],
    previous: &[Endpoint],
) -> Vec<Endpoint> {
    let mut out = Vec::with_capacity(endpoints.len());
    for (source, endpoint) in endpoints.iter().enumerate() {
        if let Ok(ip) = endpoint.host.parse::<IpAddr>() {
            out.extend(Endpoint::new(SocketAddr::new(ip, endpoint.port), source));
            continue;
        }
        let lookup = tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port));
        let error = match tokio::time::timeout(DNS_TIMEOUT, lookup).await {
            Ok(Ok(addrs)) => {
                let mut addrs: Vec<SocketAddr> = addrs.collect();
                addrs.sort();
                addrs.dedup();
                out.extend(addrs.into_iter().filter_map(|a| Endpoint::new(a, source)));
                continue;
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => format!("no answer within {DNS_TIMEOUT:?}"),
        };
        tracing::warn!(upstream, endpoint = %endpoint, error, "endpoint name did not resolve; keeping its previous addresses");
        out.extend(previous.iter().filter(|p| p.source == source).cloned());
    }
    out
}

/// Re-resolves DNS names every `dns_refresh` while the upstream exists. In-flight requests keep
/// the connection they have; only new picks see the new list.
async fn refresh_dns(upstream: Weak<Upstream>) {
    let Some(interval) = upstream.upgrade().map(|u| u.config.dns_refresh) else {
        return;
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let Some(up) = upstream.upgrade() else { return };
        let previous = up.endpoints.load_full();
        let fresh = resolve_all(&up.name, &up.config.endpoints, &previous).await;
        let changed = fresh.len() != previous.len()
            || fresh
                .iter()
                .zip(previous.iter())
                .any(|(a, b)| a.addr != b.addr);
        if changed {
            tracing::info!(upstream = %up.name, endpoints = fresh.len(), "endpoint addresses changed");
            up.endpoints.store(Arc::new(fresh));
        }
    }
}
