//! Validation of the resilience settings: retries, balancer, breaker, outlier ejection and
//! health checks. Same rules as `validate`: push every error, carry on with the default.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use http::HeaderName;
use toml::Spanned;

use super::model::{
    defaults, BalancerKind, BreakerConfig, EndpointAddr, HealthConfig, OutlierConfig, Propagation,
    RetryConfig, RetryOn, TracingConfig,
};
use super::raw::{self, Int, Str};
use super::validate::{duration, limit, Errors};
use super::ConfigError;

/// `retry = { ... }` of a route whose total timeout is `timeout`.
pub(super) fn retry(
    r: Spanned<raw::RawRetry>,
    timeout: Duration,
    errors: &mut Errors,
) -> RetryConfig {
    let r_span = r.span();
    let r = r.into_inner();
    let attempts = limit(
        r.attempts.as_ref(),
        defaults::RETRY_ATTEMPTS as usize,
        1,
        errors,
    );
    let per_try_timeout = duration(r.per_try_timeout.as_ref(), timeout, errors);
    if per_try_timeout >= timeout && r.per_try_timeout.is_some() {
        let at = r.per_try_timeout.as_ref().map_or(r_span, Spanned::span);
        errors.push(
            ConfigError::new(
                at,
                "per_try_timeout must be shorter than the route's timeout",
            )
            .with_hint(format!(
                "the route timeout ({}) spans every try; lower per_try_timeout or raise timeout",
                humantime::format_duration(timeout)
            )),
        );
    }
    let on = match &r.on {
        None => vec![
            RetryOn::ConnectFailure,
            RetryOn::Reset,
            RetryOn::Status(503),
        ],
        Some(list) => list
            .get_ref()
            .iter()
            .filter_map(|c| retry_on(c, errors))
            .collect(),
    };
    let backoff = duration(r.backoff.as_ref(), defaults::RETRY_BACKOFF, errors);
    let max_backoff = duration(r.max_backoff.as_ref(), defaults::RETRY_MAX_BACKOFF, errors);
    if max_backoff < backoff {
        if let Some(m) = &r.max_backoff {
            errors.push(
                ConfigError::new(m.span(), "max_backoff is shorter than backoff")
                    .with_hint("backoff doubles per retry up to max_backoff; make max_backoff at least backoff"),
            );
        }
    }
    RetryConfig {
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        per_try_timeout,
        on,
        backoff,
        max_backoff: max_backoff.max(backoff),
        budget_ratio: ratio(
            r.budget_ratio.as_ref(),
            defaults::RETRY_BUDGET_RATIO,
            "0.2 allows one retry for every five requests",
            errors,
        ),
        min_retries_per_second: count(
            r.min_retries_per_second.as_ref(),
            defaults::RETRY_MIN_PER_SECOND,
            0,
            errors,
        ),
        max_body: r
            .max_body
            .as_ref()
            .map_or(defaults::RETRY_MAX_BODY, |b| byte_size(b, errors)),
    }
}

fn retry_on(condition: &Str, errors: &mut Errors) -> Option<RetryOn> {
    let text = condition.get_ref().as_str();
    let parsed = match text {
        "connect-failure" => Some(RetryOn::ConnectFailure),
        "reset" => Some(RetryOn::Reset),
        "timeout" => Some(RetryOn::Timeout),
        "5xx" => Some(RetryOn::ServerErrors),
        code => code
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .map(RetryOn::Status),
    };
    if parsed.is_none() {
        errors.push(
            ConfigError::new(condition.span(), format!("unknown retry condition `{text}`"))
                .with_hint("use \"connect-failure\", \"reset\", \"timeout\", \"5xx\" or a status code such as \"503\""),
        );
    }
    parsed
}

/// A size such as `"64KiB"`, `"1MiB"` or `"512"` (bytes).
pub(super) fn size(value: &Str, errors: &mut Errors) -> usize {
    byte_size(value, errors)
}

fn byte_size(value: &Str, errors: &mut Errors) -> usize {
    let text = value.get_ref().trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor = match unit.trim() {
        "" | "B" => Some(1),
        "KiB" => Some(1024),
        "MiB" => Some(1024 * 1024),
        "GiB" => Some(1024 * 1024 * 1024),
        "KB" | "kB" => Some(1000),
        "MB" => Some(1_000_000),
        _ => None,
    };
    match (number.parse::<usize>().ok(), factor) {
        (Some(n), Some(f)) => n.saturating_mul(f),
        _ => {
            errors.push(
                ConfigError::new(value.span(), format!("invalid size `{text}`")).with_hint(
                    "write a number of bytes with an optional unit: \"65536\", \"64KiB\", \"1MiB\"",
                ),
            );
            defaults::RETRY_MAX_BODY
        }
    }
}

fn ratio(value: Option<&Spanned<f64>>, default: f64, example: &str, errors: &mut Errors) -> f64 {
    match value {
        None => default,
        Some(v) if (0.0..=1.0).contains(v.get_ref()) => *v.get_ref(),
        Some(v) => {
            errors.push(
                ConfigError::new(
                    v.span(),
                    format!("must be between 0.0 and 1.0, got {}", v.get_ref()),
                )
                .with_hint(example.to_owned()),
            );
            default
        }
    }
}

fn count(value: Option<&Int>, default: u32, min: i64, errors: &mut Errors) -> u32 {
    u32::try_from(limit(value, default as usize, min, errors)).unwrap_or(u32::MAX)
}

/// `balancer` and `hash_header` of an upstream (table at `span`).
pub(super) fn balancer(
    kind: Option<&Str>,
    header: Option<&Str>,
    span: &Range<usize>,
    errors: &mut Errors,
) -> BalancerKind {
    let header_name = header.and_then(|h| match HeaderName::from_bytes(h.get_ref().as_bytes()) {
        Ok(name) => Some(name),
        Err(_) => {
            errors.push(
                ConfigError::new(h.span(), format!("invalid header name `{}`", h.get_ref()))
                    .with_hint("header names are tokens such as \"x-user-id\""),
            );
            None
        }
    });
    match kind.map(|k| (k.get_ref().as_str(), k.span())) {
        None | Some(("p2c", _)) => BalancerKind::P2c,
        Some(("round_robin", _)) => BalancerKind::RoundRobin,
        Some(("hash", at)) => match header_name {
            Some(name) => BalancerKind::Hash(name),
            None => {
                if header.is_none() {
                    errors.push(
                        ConfigError::missing(span.clone(), "balancer = \"hash\" needs `hash_header`")
                            .with_hint("add hash_header = \"x-user-id\": requests with the same value go to the same endpoint"),
                    );
                }
                let _ = at;
                BalancerKind::P2c
            }
        },
        Some((other, at)) => {
            errors.push(
                ConfigError::new(at, format!("unknown balancer `{other}`"))
                    .with_hint("use \"p2c\" (default), \"round_robin\" or \"hash\""),
            );
            BalancerKind::P2c
        }
    }
}

/// `weights = { "host:port" = N }`, aligned with `endpoints`.
pub(super) fn weights(
    raw: Option<Spanned<BTreeMap<Str, Int>>>,
    endpoints: &[EndpointAddr],
    errors: &mut Errors,
) -> Vec<u32> {
    let mut weights = vec![1u32; endpoints.len()];
    let Some(raw) = raw else { return weights };
    for (key, value) in raw.into_inner() {
        let Some(i) = endpoints
            .iter()
            .position(|e| e.to_string() == *key.get_ref())
        else {
            let known: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
            errors.push(
                ConfigError::new(
                    key.span(),
                    format!("weight for `{}`, which is not in endpoints", key.get_ref()),
                )
                .with_hint(format!("endpoints are: {}", known.join(", "))),
            );
            continue;
        };
        weights[i] = count(Some(&value), 1, 1, errors);
    }
    weights
}

/// `[upstreams.NAME.breaker]`.
pub(super) fn breaker(raw: Option<Spanned<raw::RawBreaker>>, errors: &mut Errors) -> BreakerConfig {
    let b = raw.map(Spanned::into_inner).unwrap_or_default();
    let open_for = duration(b.open_for.as_ref(), defaults::BREAKER_OPEN_FOR, errors);
    let max_open_for = duration(
        b.max_open_for.as_ref(),
        defaults::BREAKER_MAX_OPEN_FOR,
        errors,
    );
    if max_open_for < open_for {
        if let Some(m) = &b.max_open_for {
            errors.push(
                ConfigError::new(m.span(), "max_open_for is shorter than open_for")
                    .with_hint("open time starts at open_for and doubles up to max_open_for"),
            );
        }
    }
    let failure_statuses = match &b.failure_statuses {
        None => defaults::BREAKER_FAILURE_STATUSES.to_vec(),
        Some(list) => list
            .get_ref()
            .iter()
            .filter_map(|s| {
                match u16::try_from(*s.get_ref())
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                {
                    Some(code) => Some(code),
                    None => {
                        errors.push(
                            ConfigError::new(
                                s.span(),
                                format!("`{}` is not an HTTP status", s.get_ref()),
                            )
                            .with_hint("use codes such as 502, 503, 504"),
                        );
                        None
                    }
                }
            })
            .collect(),
    };
    let grpc_failure_statuses = match &b.grpc_failure_statuses {
        None => defaults::BREAKER_GRPC_FAILURE_STATUSES.to_vec(),
        Some(list) => list
            .get_ref()
            .iter()
            .filter_map(|s| match grpc_code(s.get_ref()) {
                Some(code) => Some(code),
                None => {
                    let names: Vec<&str> = GRPC_CODES.iter().map(|(n, _)| *n).collect();
                    let mut hint = format!("gRPC status names: {}", names.join(", "));
                    if let Some(close) =
                        super::did_you_mean(&s.get_ref().to_ascii_uppercase(), &names)
                    {
                        hint = format!("did you mean `{close}`? {hint}");
                    }
                    errors.push(
                        ConfigError::new(
                            s.span(),
                            format!("`{}` is not a gRPC status name", s.get_ref()),
                        )
                        .with_hint(hint),
                    );
                    None
                }
            })
            .collect(),
    };
    BreakerConfig {
        grpc_failure_statuses,
        enabled: b.enabled.unwrap_or(true),
        consecutive_failures: count(
            b.consecutive_failures.as_ref(),
            defaults::BREAKER_CONSECUTIVE_FAILURES,
            0,
            errors,
        ),
        failure_rate: ratio(
            b.failure_rate.as_ref(),
            defaults::BREAKER_FAILURE_RATE,
            "0.5 opens the breaker when half the calls fail",
            errors,
        ),
        window: duration(b.window.as_ref(), defaults::BREAKER_WINDOW, errors),
        min_requests: count(
            b.min_requests.as_ref(),
            defaults::BREAKER_MIN_REQUESTS,
            1,
            errors,
        ),
        slow_call_threshold: duration(
            b.slow_call_threshold.as_ref(),
            defaults::BREAKER_SLOW_CALL_THRESHOLD,
            errors,
        ),
        slow_call_rate: b.slow_call_rate.as_ref().map(|r| {
            ratio(
                Some(r),
                1.0,
                "0.5 opens the breaker when half the calls are slow",
                errors,
            )
        }),
        open_for,
        max_open_for: max_open_for.max(open_for),
        half_open_probes: count(
            b.half_open_probes.as_ref(),
            defaults::BREAKER_HALF_OPEN_PROBES,
            1,
            errors,
        ),
        failure_statuses,
    }
}

/// The canonical gRPC status names and codes.
pub const GRPC_CODES: [(&str, u16); 17] = [
    ("OK", 0),
    ("CANCELLED", 1),
    ("UNKNOWN", 2),
    ("INVALID_ARGUMENT", 3),
    ("DEADLINE_EXCEEDED", 4),
    ("NOT_FOUND", 5),
    ("ALREADY_EXISTS", 6),
    ("PERMISSION_DENIED", 7),
    ("RESOURCE_EXHAUSTED", 8),
    ("FAILED_PRECONDITION", 9),
    ("ABORTED", 10),
    ("OUT_OF_RANGE", 11),
    ("UNIMPLEMENTED", 12),
    ("INTERNAL", 13),
    ("UNAVAILABLE", 14),
    ("DATA_LOSS", 15),
    ("UNAUTHENTICATED", 16),
];

/// The code of a gRPC status name (`UNAVAILABLE` → 14).
fn grpc_code(name: &str) -> Option<u16> {
    GRPC_CODES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, code)| *code)
}

/// The name of a gRPC status code, for `/config`.
pub fn grpc_name(code: u16) -> &'static str {
    GRPC_CODES
        .iter()
        .find(|(_, c)| *c == code)
        .map_or("UNKNOWN", |(n, _)| n)
}

/// `[tracing]`.
pub(super) fn tracing(t: raw::RawTracing, errors: &mut Errors) -> TracingConfig {
    let propagation = match &t.propagation {
        None => vec![Propagation::TraceContext, Propagation::B3],
        Some(list) => list
            .get_ref()
            .iter()
            .filter_map(|p| match p.get_ref().as_str() {
                "tracecontext" => Some(Propagation::TraceContext),
                "b3" => Some(Propagation::B3),
                "b3single" => Some(Propagation::B3Single),
                other => {
                    errors.push(
                        ConfigError::new(p.span(), format!("unknown propagation format `{other}`"))
                            .with_hint("use \"tracecontext\" (W3C), \"b3\" (x-b3-* headers) or \"b3single\" (one b3 header)"),
                    );
                    None
                }
            })
            .collect(),
    };
    let otlp_endpoint = t.otlp_endpoint.and_then(|e| {
        let ok = e.get_ref().parse::<http::Uri>().is_ok_and(|u| {
            matches!(u.scheme_str(), Some("http" | "https")) && u.authority().is_some()
        });
        if ok {
            Some(e.into_inner())
        } else {
            errors.push(
                ConfigError::new(e.span(), format!("invalid OTLP endpoint `{}`", e.get_ref()))
                    .with_hint(
                    "write the collector's gRPC URL, for example \"http://otel-collector:4317\"",
                ),
            );
            None
        }
    });
    TracingConfig {
        service_name: t
            .service_name
            .map_or_else(|| defaults::SERVICE_NAME.to_owned(), |s| s.into_inner()),
        propagation,
        otlp_endpoint,
        sample_ratio: ratio(
            t.sample_ratio.as_ref(),
            defaults::SAMPLE_RATIO,
            "0.1 samples one new trace in ten",
            errors,
        ),
    }
}

/// `[upstreams.NAME.outlier]`.
pub(super) fn outlier(o: raw::RawOutlier, errors: &mut Errors) -> OutlierConfig {
    let max_ejected_percent = count(
        o.max_ejected_percent.as_ref(),
        defaults::OUTLIER_MAX_EJECTED_PERCENT,
        0,
        errors,
    );
    if max_ejected_percent > 100 {
        if let Some(p) = &o.max_ejected_percent {
            errors.push(
                ConfigError::new(p.span(), "max_ejected_percent is a percentage")
                    .with_hint("use 0 to 100; the default is 50"),
            );
        }
    }
    OutlierConfig {
        enabled: o.enabled.unwrap_or(true),
        consecutive_failures: count(
            o.consecutive_failures.as_ref(),
            defaults::OUTLIER_CONSECUTIVE_FAILURES,
            1,
            errors,
        ),
        base_ejection: duration(
            o.base_ejection.as_ref(),
            defaults::OUTLIER_BASE_EJECTION,
            errors,
        ),
        max_ejection: duration(
            o.max_ejection.as_ref(),
            defaults::OUTLIER_MAX_EJECTION,
            errors,
        ),
        max_ejected_percent: max_ejected_percent.min(100),
    }
}

/// `health = { ... }`.
pub(super) fn health(h: Spanned<raw::RawHealth>, errors: &mut Errors) -> HealthConfig {
    let span = h.span();
    let h = h.into_inner();
    let path = match &h.path {
        Some(p) if p.get_ref().starts_with('/') => {
            p.get_ref().parse::<http::uri::PathAndQuery>().ok()
        }
        _ => None,
    };
    let path = path.unwrap_or_else(|| {
        let at = h.path.as_ref().map_or(span, Spanned::span);
        let err = if h.path.is_some() {
            ConfigError::new(at, "invalid health check path")
        } else {
            ConfigError::missing(at, "health check has no `path`")
        };
        errors.push(err.with_hint("write path = \"/healthz\""));
        http::uri::PathAndQuery::from_static("/")
    });
    HealthConfig {
        path,
        interval: duration(h.interval.as_ref(), defaults::HEALTH_INTERVAL, errors),
        timeout: duration(h.timeout.as_ref(), defaults::HEALTH_TIMEOUT, errors),
        unhealthy_after: count(
            h.unhealthy_after.as_ref(),
            defaults::HEALTH_UNHEALTHY_AFTER,
            1,
            errors,
        ),
        healthy_after: count(
            h.healthy_after.as_ref(),
            defaults::HEALTH_HEALTHY_AFTER,
            1,
            errors,
        ),
    }
}
