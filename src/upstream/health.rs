//! Active health checks: `GET path` to every endpoint every `interval`; 2xx is a pass.
//!
//! An endpoint turns unhealthy after `unhealthy_after` failed checks in a row and healthy again
//! after `healthy_after` passes; the balancer skips unhealthy endpoints. Checks never touch the
//! breaker: only real traffic (its half-open probes) closes a tripped breaker.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Weak;

use bytes::Bytes;
use http::{header, Request};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::balancer::EndpointState;
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
        drop(up);
        for endpoint in endpoints.iter() {
            let host = hosts
                .get(endpoint.source)
                .map_or("localhost", String::as_str);
            let passed = check(endpoint.addr, host, &config).await;
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

/// One check on a fresh connection, bounded by `timeout`.
async fn check(addr: SocketAddr, host: &str, config: &HealthConfig) -> bool {
    let attempt = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        let driver = tokio::spawn(conn);
        let request = Request::get(config.path.as_str())
            .header(header::HOST, host)
            .header(header::USER_AGENT, "keel-health-check")
            .body(Empty::<Bytes>::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        driver.abort();
        Some(response.status().is_success())
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
