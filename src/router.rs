//! Route matching: pure functions over the config model, no I/O.
//!
//! Routes are tried in file order; the first whose every condition holds wins. The host comes
//! from the request's authority (absolute-form or HTTP/2 `:authority`) or its single `Host`
//! header, with the port removed and compared case-insensitively.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use http::request::Parts;
use http::HeaderMap;

use crate::config::model::{HostMatch, RouteConfig, RouteMatch};

/// The host name without port, lowercase as given (callers lowercase once).
pub fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        // IPv6 literal: keep the brackets' content.
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.split(':').next().unwrap_or(authority)
}

/// Picks the first matching route and its index; `host` is without port, any case.
pub fn route<'a>(
    routes: &'a [RouteConfig],
    host: &str,
    path: &str,
    headers: &HeaderMap,
) -> Option<(usize, &'a RouteConfig)> {
    routes
        .iter()
        .enumerate()
        .find(|(_, r)| matches(&r.matcher, host, path, headers))
}

/// Routes a request head (convenience for callers holding `Parts`).
pub fn route_parts<'a>(
    routes: &'a [RouteConfig],
    host: &str,
    parts: &Parts,
) -> Option<(usize, &'a RouteConfig)> {
    route(routes, host, parts.uri.path(), &parts.headers)
}

fn matches(m: &RouteMatch, host: &str, path: &str, headers: &HeaderMap) -> bool {
    let host_ok = match &m.host {
        None => true,
        Some(HostMatch::Exact(h)) => host.eq_ignore_ascii_case(h),
        Some(HostMatch::Suffix(suffix)) => {
            host.len() > suffix.len()
                && host
                    .get(host.len() - suffix.len()..)
                    .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
        }
    };
    let path_ok = m.path_prefix.as_deref().is_none_or(|p| path.starts_with(p));
    let header_ok = m
        .header
        .as_ref()
        .is_none_or(|(name, value)| headers.get_all(name).iter().any(|v| v == value));
    host_ok && path_ok && header_ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn routes() -> Vec<RouteConfig> {
        let text = r#"
            [[listeners]]
            name = "out"
            listen = "127.0.0.1:0"
            [[listeners.routes]]
            name = "canary"
            match = { host = "payments", header = { name = "x-canary", value = "1" } }
            upstream = "b"
            [[listeners.routes]]
            name = "payments"
            match = { host = "payments" }
            upstream = "a"
            [[listeners.routes]]
            name = "wild"
            match = { host = "*.svc.local", path_prefix = "/api/" }
            upstream = "a"
            [upstreams.a]
            endpoints = ["127.0.0.1:1"]
            [upstreams.b]
            endpoints = ["127.0.0.1:2"]
        "#;
        config::from_str(text, "t")
            .unwrap()
            .listeners
            .remove(0)
            .routes
    }

    fn name(r: Option<(usize, &RouteConfig)>) -> Option<&str> {
        r.map(|(_, r)| &*r.name)
    }

    #[test]
    fn host_prefix_and_header() {
        let routes = routes();
        let mut canary = HeaderMap::new();
        canary.insert("x-canary", "1".parse().unwrap());
        assert_eq!(
            name(route(&routes, "payments", "/", &HeaderMap::new())),
            Some("payments")
        );
        assert_eq!(
            name(route(&routes, "PAYMENTS", "/", &canary)),
            Some("canary")
        );
        assert_eq!(
            name(route(&routes, "x.svc.local", "/api/v1", &HeaderMap::new())),
            Some("wild")
        );
        assert_eq!(
            name(route(&routes, "x.svc.local", "/other", &HeaderMap::new())),
            None
        );
        assert_eq!(
            name(route(&routes, "svc.local", "/api/", &HeaderMap::new())),
            None
        );
    }

    #[test]
    fn ports_are_ignored() {
        assert_eq!(strip_port("payments:8080"), "payments");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("payments"), "payments");
    }
}
