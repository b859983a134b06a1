//! Active health checks: `GET path` to every endpoint every `interval`; 2xx is a pass.
//! Checks go through the upstream's pool, so TLS and HTTP/2 upstreams are checked as they are
//! called.
//!
//! An endpoint turns unhealthy after `unhealthy_after` failed checks in a row and healthy again
//! after `healthy_after` passes; the balancer skips unhealthy endpoints. Checks never touch the
//! breaker: only real traffic (its half-open probes) closes a tripped breaker.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Weak;

use http::uri::Scheme;
use http::{header, Request, Uri};
use hyper_util::client::legacy::Client;

use super::balancer::EndpointState;
use super::pool::Connector;
use super::retry::UpstreamBody;
use super::Upstream;
use crate::config::model::HealthConfig;

/// Checks the upstream's endpoints until the upstream is dropped.
pub async fn run(upstream: Weak<Upstream>, config: HealthConfig) {
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(up) = upstream.upgrade() else { return };
        let endpoints = up.endpoints();
        let name = up.name.clone();
        let hosts: Vec<String> = up.config.endpoints.iter().map(|e| e.to_string()).collect();
        let client = up.pool.client.clone();
        let scheme = up.scheme();
        drop(up);
        for endpoint in endpoints.iter() {
            let host = hosts
                .get(endpoint.source)
                .map_or("localhost", String::as_str);
            let passed = check(&client, &scheme, endpoint.addr, host, &config).await;
            if let Some(healthy) = apply(&endpoint.state, passed, &config) {
                if healthy {
                    tracing::info!(upstream = %name, endpoint = %endpoint.addr, "endpoint passed its health checks");
                } else {
                    tracing::warn!(upstream = %name, endpoint = %endpoint.addr, "endpoint failed its health checks");
                }
            }
        }
    }
}

/// Updates the streak and the verdict; returns the new verdict when it changed.
pub fn apply(state: &EndpointState, passed: bool, config: &HealthConfig) -> Option<bool> {
    let streak = state.health_streak.load(Ordering::Acquire);
    let streak = if passed {
        streak.max(0).saturating_add(1)
    } else {
        streak.min(0).saturating_sub(1)
    };
    state.health_streak.store(streak, Ordering::Release);
    let healthy = state.healthy.load(Ordering::Acquire);
    let unhealthy_after = i32::try_from(config.unhealthy_after).unwrap_or(i32::MAX);
    let healthy_after = i32::try_from(config.healthy_after).unwrap_or(i32::MAX);
    if healthy && streak <= -unhealthy_after {
        state.healthy.store(false, Ordering::Release);
        return Some(false);
    }
    if !healthy && streak >= healthy_after {
        state.healthy.store(true, Ordering::Release);
        return Some(true);
    }
    None
}

/// One check through the upstream's pool (so it speaks the upstream's TLS and HTTP version,
/// and an HTTP/2 check shares the multiplexed connection), bounded by `timeout`.
async fn check(
    client: &Client<Connector, UpstreamBody>,
    scheme: &Scheme,
    addr: SocketAddr,
    host: &str,
    config: &HealthConfig,
) -> bool {
    let attempt = async {
        let uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(addr.to_string())
            .path_and_query(config.path.clone())
            .build()
            .ok()?;
        let request = Request::get(uri)
            .header(header::HOST, host)
            .header(header::USER_AGENT, "keel-health-check")
            .body(UpstreamBody::Buffered(None))
            .ok()?;
        let response = client.request(request).await.ok()?;
        let healthy = response.status().is_success();
        // Read the (small) body so the pooled connection can be reused.
        let _ = http_body_util::BodyExt::collect(response.into_body()).await;
        Some(healthy)
    };
    matches!(
        tokio::time::timeout(config.timeout, attempt).await,
        Ok(Some(true))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn verdict_needs_streaks() {
        let config = HealthConfig {
            path: http::uri::PathAndQuery::from_static("/healthz"),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            unhealthy_after: 3,
            healthy_after: 2,
        };
        let state = EndpointState::default();
        assert_eq!(apply(&state, false, &config), None);
        assert_eq!(apply(&state, false, &config), None);
        assert_eq!(
            apply(&state, true, &config),
            None,
            "a pass resets the failure streak"
        );
        for _ in 0..2 {
            assert_eq!(apply(&state, false, &config), None);
        }
        assert_eq!(apply(&state, false, &config), Some(false));
        assert_eq!(apply(&state, true, &config), None);
        assert_eq!(apply(&state, true, &config), Some(true));
    }
}
