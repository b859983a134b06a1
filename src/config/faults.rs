//! Validation of `[[faults]]` entries, shared by the config file and `POST /faults`.
//!
//! A fault must say what it does (exactly one of `delay`, `abort`, `grpc_abort`, `reset`,
//! `slow_body`) and when it ends (`expires_in` or `until`): keel refuses a fault that would
//! never stop.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderName, HeaderValue, StatusCode};
use toml::Spanned;

use super::did_you_mean;
use super::model::{FaultAction, FaultConfig, UpstreamConfig};
use super::raw::RawFault;
use super::validate::{duration, Errors};
use super::ConfigError;

/// Longest life a fault may be given, so a typo cannot leave one running for a year.
const MAX_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Checks every fault; `routes` and `upstreams` are the names a scope may use.
pub(super) fn validate(
    raw: Vec<Spanned<RawFault>>,
    routes: &[Arc<str>],
    upstreams: &[UpstreamConfig],
    now: SystemTime,
    errors: &mut Errors,
) -> Vec<FaultConfig> {
    raw.into_iter()
        .enumerate()
        .filter_map(|(i, f)| fault(i, f, routes, upstreams, now, errors))
        .collect()
}

fn fault(
    index: usize,
    f: Spanned<RawFault>,
    routes: &[Arc<str>],
    upstreams: &[UpstreamConfig],
    now: SystemTime,
    errors: &mut Errors,
) -> Option<FaultConfig> {
    let span = f.span();
    let f = f.into_inner();
    let before = errors.len();
    let route = f.route.as_ref().map(|r| {
        if !routes.iter().any(|n| **n == *r.get_ref()) {
            let known: Vec<&str> = routes.iter().map(|r| &**r).collect();
            let mut hint = format!("routes: {}", known.join(", "));
            if let Some(close) = did_you_mean(r.get_ref(), &known) {
                hint = format!("did you mean `{close}`? {hint}");
            }
            errors.push(
                ConfigError::new(
                    r.span(),
                    format!("fault names route `{}`, which does not exist", r.get_ref()),
                )
                .with_hint(hint),
            );
        }
        Arc::<str>::from(r.get_ref().as_str())
    });
    let upstream = f.upstream.as_ref().map(|u| {
        if !upstreams.iter().any(|x| *x.name == *u.get_ref()) {
            let known: Vec<&str> = upstreams.iter().map(|u| &*u.name).collect();
            errors.push(
                ConfigError::new(
                    u.span(),
                    format!(
                        "fault names upstream `{}`, which does not exist",
                        u.get_ref()
                    ),
                )
                .with_hint(format!("upstreams: {}", known.join(", "))),
            );
        }
        Arc::<str>::from(u.get_ref().as_str())
    });
    let header = f.header.as_ref().and_then(|h| {
        let raw = h.get_ref();
        let name = raw.name.as_ref().and_then(|n| HeaderName::from_bytes(n.get_ref().as_bytes()).ok());
        let value = raw.value.as_ref().and_then(|v| HeaderValue::from_str(v.get_ref()).ok());
        match (name, value) {
            (Some(n), Some(v)) => Some((n, v)),
            _ => {
                errors.push(
                    ConfigError::new(h.span(), "invalid header scope")
                        .with_hint("write header = { name = \"x-chaos\", value = \"1\" } with a valid name and value"),
                );
                None
            }
        }
    });
    let percent = match &f.percent {
        None => 100.0,
        Some(p) if (0.0..=100.0).contains(p.get_ref()) => *p.get_ref(),
        Some(p) => {
            errors.push(
                ConfigError::new(p.span(), "percent must be between 0 and 100")
                    .with_hint("10.0 affects one matching request in ten"),
            );
            100.0
        }
    };
    let mut actions = Vec::new();
    if let Some(d) = &f.delay {
        let jitter = f.jitter.as_ref().map_or(Duration::ZERO, |j| {
            duration(Some(j), Duration::ZERO, errors)
        });
        actions.push(FaultAction::Delay {
            delay: duration(Some(d), Duration::from_millis(1), errors),
            jitter,
        });
    }
    if let Some(code) = &f.abort {
        match u16::try_from(*code.get_ref())
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .filter(|c| c.as_u16() >= 200)
        {
            Some(status) => actions.push(FaultAction::Abort(status)),
            None => errors.push(
                ConfigError::new(code.span(), "abort must be an HTTP status from 200 to 599")
                    .with_hint("for example abort = 503"),
            ),
        }
    }
    if let Some(code) = &f.grpc_abort {
        match u16::try_from(*code.get_ref())
            .ok()
            .filter(|c| (1..=16).contains(c))
        {
            Some(status) => actions.push(FaultAction::GrpcAbort(status)),
            None => errors.push(
                ConfigError::new(
                    code.span(),
                    "grpc_abort must be a gRPC status code from 1 to 16",
                )
                .with_hint("14 is UNAVAILABLE, 4 DEADLINE_EXCEEDED"),
            ),
        }
    }
    if let Some(reset) = &f.reset {
        if *reset.get_ref() {
            actions.push(FaultAction::Reset);
        }
    }
    if let Some(rate) = &f.slow_body {
        match u64::try_from(*rate.get_ref()).ok().filter(|r| *r > 0) {
            Some(rate) => actions.push(FaultAction::SlowBody(rate)),
            None => errors.push(
                ConfigError::new(
                    rate.span(),
                    "slow_body is a positive number of bytes per second",
                )
                .with_hint("for example slow_body = 1024"),
            ),
        }
    }
    let expires_at = match (&f.expires_in, &f.until) {
        (Some(d), None) => {
            let life = duration(Some(d), Duration::from_secs(60), errors);
            let at = Some(life)
                .filter(|life| *life <= MAX_LIFETIME)
                .and_then(|life| now.checked_add(life));
            if at.is_none() {
                errors.push(
                    ConfigError::new(d.span(), "a fault may live at most 7 days")
                        .with_hint("faults are for experiments; use a shorter expires_in"),
                );
            }
            at
        }
        (None, Some(u)) => match humantime::parse_rfc3339_weak(u.get_ref()) {
            Ok(at) if at > now => Some(at),
            Ok(_) => {
                errors.push(
                    ConfigError::new(u.span(), "`until` is in the past")
                        .with_hint("give a future UTC time, or use expires_in = \"10m\""),
                );
                None
            }
            Err(e) => {
                errors.push(
                    ConfigError::new(u.span(), format!("invalid time `{}`: {e}", u.get_ref()))
                        .with_hint("write RFC 3339 UTC, for example \"2026-12-03T18:00:00Z\""),
                );
                None
            }
        },
        (Some(d), Some(_)) => {
            errors.push(
                ConfigError::new(d.span(), "give either `expires_in` or `until`, not both")
                    .with_hint("remove one of them"),
            );
            None
        }
        (None, None) => {
            errors.push(
                ConfigError::missing(span.clone(), "fault has no expiry")
                    .with_hint("every fault must end: add expires_in = \"10m\" or until = \"2026-12-03T18:00:00Z\""),
            );
            None
        }
    };
    if actions.len() != 1 {
        errors.push(
            ConfigError::missing(span, "a fault needs exactly one of `delay`, `abort`, `grpc_abort`, `reset = true`, `slow_body`")
                .with_hint("split different faults into separate [[faults]] entries"),
        );
    }
    if errors.len() > before {
        return None;
    }
    Some(FaultConfig {
        name: f.name.map_or_else(
            || Arc::from(format!("fault-{}", index + 1)),
            |n| Arc::from(n.into_inner()),
        ),
        route,
        upstream,
        header,
        percent,
        action: actions.pop()?,
        expires_at: expires_at?,
        count_for_breaker: f.count_for_breaker.unwrap_or(false),
    })
}
