//! Raw schema → runtime model, collecting every error.
//!
//! Each check pushes a [`ConfigError`] and carries on with a default, so one run reports every
//! problem in the file. The caller discards the model when any error was pushed.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use toml::Spanned;

use super::model::{self, defaults, *};
use super::raw::{self, Int, RawConfig, Str};
use super::{did_you_mean, ConfigError};

pub(super) type Errors = Vec<ConfigError>;

/// Turns the raw file into the runtime model; `None` never happens today but keeps room for
/// checks that cannot produce a model at all.
pub(super) fn validate(raw: RawConfig, errors: &mut Errors) -> Option<Config> {
    let admin = raw.admin.unwrap_or_default();
    let admin = AdminConfig {
        listen: socket_addr(admin.listen.as_ref(), defaults::ADMIN_LISTEN, errors),
    };
    let metrics = MetricsConfig {
        listen: socket_addr(
            raw.metrics.as_ref().and_then(|m| m.listen.as_ref()),
            defaults::METRICS_LISTEN,
            errors,
        ),
    };
    if let Some(listen) = raw.metrics.as_ref().and_then(|m| m.listen.as_ref()) {
        if metrics.listen.port() != 0 && metrics.listen.port() == admin.listen.port() {
            errors.push(
                ConfigError::new(
                    listen.span(),
                    "the metrics listener uses the admin listener's port",
                )
                .with_hint("give [metrics] listen and [admin] listen different ports"),
            );
        }
    }
    let tracing = super::resilience::tracing(raw.tracing.unwrap_or_default(), errors);
    let access_log = AccessLogConfig {
        output: match raw.access_log.and_then(|a| a.output) {
            None => AccessLogOutput::Stdout,
            Some(o) if o.get_ref() == "stdout" => AccessLogOutput::Stdout,
            Some(o) if o.get_ref().is_empty() => {
                errors.push(
                    ConfigError::new(o.span(), "empty access log output")
                        .with_hint("use \"stdout\" or a file path"),
                );
                AccessLogOutput::Stdout
            }
            Some(o) => AccessLogOutput::File(o.into_inner().into()),
        },
    };
    let shutdown = raw.shutdown.unwrap_or_default();
    let shutdown = ShutdownConfig {
        drain_delay: duration_or_zero(shutdown.drain_delay.as_ref(), defaults::DRAIN_DELAY, errors),
        grace_period: duration(
            shutdown.grace_period.as_ref(),
            defaults::GRACE_PERIOD,
            errors,
        ),
    };
    let log = validate_log(raw.log.unwrap_or_default(), errors);
    let runtime = RuntimeConfig {
        worker_threads: raw
            .runtime
            .and_then(|r| r.worker_threads)
            .map(|n| non_zero(Some(&n), 1, errors)),
    };

    let upstreams = validate_upstreams(raw.upstreams, errors);
    let names: HashMap<&str, usize> = upstreams
        .iter()
        .enumerate()
        .map(|(i, u)| (&*u.name, i))
        .collect();
    let mut listeners = Vec::with_capacity(raw.listeners.len());
    let mut seen_names: HashMap<String, Range<usize>> = HashMap::new();
    let mut seen_addrs: HashMap<SocketAddr, Range<usize>> = HashMap::new();
    for listener in raw.listeners {
        let span = listener.span();
        let listener = listener.into_inner();
        if let Some(name) = &listener.name {
            if seen_names
                .insert(name.get_ref().clone(), name.span())
                .is_some()
            {
                errors.push(
                    ConfigError::new(
                        name.span(),
                        format!("duplicate listener name `{}`", name.get_ref()),
                    )
                    .with_hint("give every [[listeners]] entry its own name"),
                );
            }
        }
        if let Some(addr) = &listener.listen {
            if let Ok(parsed) = addr.get_ref().parse::<SocketAddr>() {
                // 0.0.0.0:P also takes P on every other address.
                let clash = parsed.port() != 0
                    && seen_addrs.keys().any(|seen| {
                        seen.port() == parsed.port()
                            && (seen.ip() == parsed.ip()
                                || seen.ip().is_unspecified()
                                || parsed.ip().is_unspecified())
                    });
                seen_addrs.insert(parsed, addr.span());
                if clash {
                    errors.push(
                        ConfigError::new(
                            addr.span(),
                            format!("duplicate listen address `{parsed}`"),
                        )
                        .with_hint("two listeners cannot bind the same address"),
                    );
                }
                let admin_clash = parsed.port() == admin.listen.port()
                    && (parsed.ip() == admin.listen.ip()
                        || parsed.ip().is_unspecified()
                        || admin.listen.ip().is_unspecified());
                if parsed.port() != 0 && admin_clash {
                    errors.push(
                        ConfigError::new(
                            addr.span(),
                            format!("listen address `{parsed}` is also the admin address"),
                        )
                        .with_hint("change [admin] listen or this listener's listen"),
                    );
                }
            }
        }
        listeners.push(validate_listener(
            listener, span, &names, &upstreams, errors,
        ));
    }
    let faults = super::faults::validate(
        raw.faults,
        &config_route_names(&listeners),
        &upstreams,
        std::time::SystemTime::now(),
        errors,
    );
    Some(Config {
        faults,
        admin,
        metrics,
        tracing,
        access_log,
        shutdown,
        log,
        runtime,
        listeners,
        upstreams,
    })
}

fn validate_log(log: raw::RawLog, errors: &mut Errors) -> LogConfig {
    let format = match log
        .format
        .as_ref()
        .map(|f| (f.get_ref().as_str(), f.span()))
    {
        None | Some(("text", _)) => LogFormat::Text,
        Some(("json", _)) => LogFormat::Json,
        Some((other, span)) => {
            errors.push(
                ConfigError::new(span, format!("unknown log format `{other}`"))
                    .with_hint("use \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };
    let level = log
        .level
        .map_or_else(|| "info".to_owned(), Spanned::into_inner);
    LogConfig { format, level }
}

fn validate_listener(
    listener: raw::RawListener,
    span: Range<usize>,
    names: &HashMap<&str, usize>,
    upstreams: &[UpstreamConfig],
    errors: &mut Errors,
) -> ListenerConfig {
    let name = required_name(listener.name.as_ref(), &span, "listener", errors);
    let direction = match listener
        .direction
        .as_ref()
        .map(|d| (d.get_ref().as_str(), d.span()))
    {
        None | Some(("outbound", _)) => Direction::Outbound,
        Some(("inbound", _)) => Direction::Inbound,
        Some((other, span)) => {
            errors.push(
                ConfigError::new(span, format!("unknown direction `{other}`")).with_hint(
                    "use \"inbound\" (callers to the local app) or \"outbound\" (the app's calls)",
                ),
            );
            Direction::Outbound
        }
    };
    let listen = match &listener.listen {
        Some(addr) => socket_addr(Some(addr), "127.0.0.1:0", errors),
        None => {
            errors.push(
                ConfigError::missing(
                    span.clone(),
                    format!("listener `{name}` has no `listen` address"),
                )
                .with_hint("add listen = \"127.0.0.1:15001\""),
            );
            ([127, 0, 0, 1], 0).into()
        }
    };
    let max_headers = limit(
        listener.max_headers.as_ref(),
        defaults::MAX_HEADERS,
        1,
        errors,
    );
    let max_header_bytes = limit(
        listener.max_header_bytes.as_ref(),
        defaults::MAX_HEADER_BYTES,
        1,
        errors,
    );
    if let Some(bytes) = &listener.max_header_bytes {
        if (0..8192).contains(bytes.get_ref()) {
            errors.push(
                ConfigError::new(bytes.span(), "max_header_bytes must be at least 8192").with_hint(
                    "the HTTP/1 read buffer cannot be smaller than 8 KiB; the default is 65536",
                ),
            );
        }
    }
    let mut route_names: HashMap<String, Range<usize>> = HashMap::new();
    let mut routes = Vec::with_capacity(listener.routes.len());
    for route in listener.routes {
        let route_span = route.span();
        let route = route.into_inner();
        if let Some(n) = &route.name {
            if route_names.insert(n.get_ref().clone(), n.span()).is_some() {
                errors.push(
                    ConfigError::new(
                        n.span(),
                        format!(
                            "duplicate route name `{}` in listener `{name}`",
                            n.get_ref()
                        ),
                    )
                    .with_hint("route names label metrics; make each unique within its listener"),
                );
            }
        }
        routes.push(validate_route(route, route_span, names, upstreams, errors));
    }
    if routes.is_empty() {
        errors.push(
            ConfigError::new(span, format!("listener `{name}` has no routes"))
                .with_hint("add a [[listeners.routes]] entry with upstream = \"NAME\""),
        );
    }
    ListenerConfig {
        name,
        direction,
        listen,
        max_connections: non_zero(
            listener.max_connections.as_ref(),
            defaults::LISTENER_MAX_CONNECTIONS,
            errors,
        ),
        header_read_timeout: duration(
            listener.header_read_timeout.as_ref(),
            defaults::HEADER_READ_TIMEOUT,
            errors,
        ),
        idle_timeout: duration(
            listener.idle_timeout.as_ref(),
            defaults::LISTENER_IDLE_TIMEOUT,
            errors,
        ),
        max_header_bytes,
        max_headers,
        max_uri_bytes: limit(
            listener.max_uri_bytes.as_ref(),
            defaults::MAX_URI_BYTES,
            16,
            errors,
        ),
        max_request_body: listener
            .max_request_body
            .as_ref()
            .map(|b| super::resilience::size(b, errors) as u64),
        access_log: listener.access_log.unwrap_or(false),
        routes,
    }
}

fn validate_route(
    route: raw::RawRoute,
    span: Range<usize>,
    names: &HashMap<&str, usize>,
    upstreams: &[UpstreamConfig],
    errors: &mut Errors,
) -> RouteConfig {
    let lookup = |u: &Str, errors: &mut Errors| -> usize {
        match names.get(u.get_ref().as_str()) {
            Some(&i) => i,
            None => {
                let known: Vec<&str> = upstreams.iter().map(|u| &*u.name).collect();
                let mut hint = if known.is_empty() {
                    "define it as [upstreams.NAME] with endpoints = [\"host:port\"]".to_owned()
                } else {
                    format!("defined upstreams: {}", known.join(", "))
                };
                if let Some(close) = did_you_mean(u.get_ref(), &known) {
                    hint = format!("did you mean `{close}`? {hint}");
                }
                errors.push(
                    ConfigError::new(
                        u.span(),
                        format!(
                            "route names upstream `{}`, which is not defined",
                            u.get_ref()
                        ),
                    )
                    .with_hint(hint),
                );
                0
            }
        }
    };
    let targets: Vec<SplitTarget> = match (&route.upstream, &route.split) {
        (Some(u), None) => vec![SplitTarget {
            upstream: lookup(u, errors),
            weight: 1,
        }],
        (None, Some(split)) => {
            let targets: Vec<SplitTarget> = split
                .get_ref()
                .iter()
                .filter_map(|entry| {
                    let e = entry.get_ref();
                    let Some(u) = &e.upstream else {
                        errors.push(
                            ConfigError::missing(entry.span(), "split entry has no `upstream`")
                                .with_hint("write { upstream = \"NAME\", weight = 5 }"),
                        );
                        return None;
                    };
                    let weight = limit(e.weight.as_ref(), 1, 0, errors);
                    Some(SplitTarget {
                        upstream: lookup(u, errors),
                        weight: u32::try_from(weight).unwrap_or(u32::MAX),
                    })
                })
                .collect();
            if targets.len() > 16 {
                errors.push(
                    ConfigError::new(split.span(), "a split has at most 16 targets").with_hint(
                        "canaries need two or three; route the rest with separate routes",
                    ),
                );
            }
            if targets.iter().all(|t| t.weight == 0) {
                errors.push(
                    ConfigError::new(split.span(), "a split needs at least one target with a weight above 0")
                        .with_hint("for example split = [{ upstream = \"v1\", weight = 95 }, { upstream = \"v2\", weight = 5 }]"),
                );
            }
            targets
        }
        (Some(u), Some(_)) => {
            errors.push(
                ConfigError::new(
                    u.span(),
                    "a route has either `upstream` or `split`, not both",
                )
                .with_hint("remove `upstream`, or remove `split`"),
            );
            Vec::new()
        }
        (None, None) => {
            errors.push(
                ConfigError::missing(span.clone(), "route has no `upstream`").with_hint(
                    "add upstream = \"NAME\" naming an [upstreams.NAME] table, or a `split`",
                ),
            );
            Vec::new()
        }
    };
    let targets = if targets.is_empty() {
        vec![SplitTarget {
            upstream: 0,
            weight: 1,
        }]
    } else {
        targets
    };
    let upstream = targets[0].upstream;
    let sticky_header = route.sticky_header.as_ref().and_then(|h| {
        match HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(name) => Some(name),
            Err(_) => {
                errors.push(
                    ConfigError::new(h.span(), format!("invalid header name `{}`", h.get_ref()))
                        .with_hint("header names are tokens such as \"x-user-id\""),
                );
                None
            }
        }
    });
    let mirror = route.mirror.as_ref().and_then(|m| {
        let raw = m.get_ref();
        let Some(u) = &raw.upstream else {
            errors.push(
                ConfigError::missing(m.span(), "mirror has no `upstream`")
                    .with_hint("write mirror = { upstream = \"shadow\", percent = 10.0 }"),
            );
            return None;
        };
        let percent = match &raw.percent {
            None => 100.0,
            Some(p) if (0.0..=100.0).contains(p.get_ref()) => *p.get_ref(),
            Some(p) => {
                errors.push(
                    ConfigError::new(p.span(), "percent must be between 0 and 100")
                        .with_hint("10.0 copies one request in ten"),
                );
                100.0
            }
        };
        Some(MirrorConfig {
            upstream: lookup(u, errors),
            percent,
        })
    });
    let name: Arc<str> = match (&route.name, &route.upstream) {
        (Some(n), _) => n.get_ref().as_str().into(),
        (None, Some(u)) => u.get_ref().as_str().into(),
        (None, None) => upstreams
            .get(upstream)
            .map_or_else(|| "unnamed".into(), |u| u.name.clone()),
    };
    let timeout = duration(route.timeout.as_ref(), defaults::ROUTE_TIMEOUT, errors);
    let retry = route
        .retry
        .map(|r| super::resilience::retry(r, timeout, errors));
    let matcher = route
        .matcher
        .map(|m| validate_match(m.into_inner(), errors))
        .unwrap_or_default();
    RouteConfig {
        name,
        matcher,
        upstream,
        targets,
        sticky_header,
        mirror,
        timeout,
        retry,
    }
}

fn validate_match(m: raw::RawMatch, errors: &mut Errors) -> RouteMatch {
    let host = m.host.and_then(|h| {
        let span = h.span();
        let text = h.into_inner().to_ascii_lowercase();
        let (pattern, wildcard) = match text.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (text.as_str(), false),
        };
        let ok = !pattern.is_empty()
            && pattern
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !ok {
            errors.push(
                ConfigError::new(span, format!("invalid host pattern `{text}`"))
                    .with_hint("use a host name such as \"payments\" or \"*.svc.cluster.local\", without port or scheme"),
            );
            return None;
        }
        Some(if wildcard {
            HostMatch::Suffix(format!(".{pattern}"))
        } else {
            HostMatch::Exact(pattern.to_owned())
        })
    });
    let path_prefix = m.path_prefix.and_then(|p| {
        if p.get_ref().starts_with('/') {
            Some(p.into_inner())
        } else {
            errors.push(
                ConfigError::new(
                    p.span(),
                    format!("path_prefix `{}` does not start with `/`", p.get_ref()),
                )
                .with_hint("write it as it appears in the request path, for example \"/api/\""),
            );
            None
        }
    });
    let header = m.header.and_then(|h| {
        let span = h.span();
        let h = h.into_inner();
        let name = match &h.name {
            Some(n) => match HeaderName::from_bytes(n.get_ref().as_bytes()) {
                Ok(name) => Some(name),
                Err(_) => {
                    errors.push(
                        ConfigError::new(
                            n.span(),
                            format!("invalid header name `{}`", n.get_ref()),
                        )
                        .with_hint("header names are tokens such as \"x-canary\""),
                    );
                    None
                }
            },
            None => {
                errors.push(
                    ConfigError::missing(span.clone(), "header match has no `name`")
                        .with_hint("write header = { name = \"x-canary\", value = \"1\" }"),
                );
                None
            }
        };
        let value = match &h.value {
            Some(v) => match HeaderValue::from_str(v.get_ref()) {
                Ok(value) => Some(value),
                Err(_) => {
                    errors.push(
                        ConfigError::new(v.span(), "invalid header value").with_hint(
                            "header values are visible ASCII without control characters",
                        ),
                    );
                    None
                }
            },
            None => {
                errors.push(
                    ConfigError::missing(span, "header match has no `value`")
                        .with_hint("write header = { name = \"x-canary\", value = \"1\" }"),
                );
                None
            }
        };
        Some((name?, value?))
    });
    RouteMatch {
        host,
        path_prefix,
        header,
    }
}

fn validate_upstreams(
    raw: BTreeMap<Str, Spanned<raw::RawUpstream>>,
    errors: &mut Errors,
) -> Vec<UpstreamConfig> {
    raw.into_iter()
        .map(|(name, upstream)| {
            let span = upstream.span();
            let upstream = upstream.into_inner();
            if name.get_ref().is_empty()
                || name
                    .get_ref()
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control())
            {
                errors.push(
                    ConfigError::new(
                        name.span(),
                        format!("invalid upstream name `{}`", name.get_ref()),
                    )
                    .with_hint("use letters, digits, `-` and `_`"),
                );
            }
            let endpoints = match &upstream.endpoints {
                Some(list) if !list.get_ref().is_empty() => list
                    .get_ref()
                    .iter()
                    .filter_map(|e| endpoint(e, errors))
                    .collect(),
                Some(list) => {
                    errors.push(
                        ConfigError::new(
                            list.span(),
                            format!("upstream `{}` has an empty endpoint list", name.get_ref()),
                        )
                        .with_hint("list at least one \"host:port\""),
                    );
                    Vec::new()
                }
                None => {
                    errors.push(
                        ConfigError::missing(
                            span.clone(),
                            format!("upstream `{}` has no `endpoints`", name.get_ref()),
                        )
                        .with_hint("add endpoints = [\"host:port\"]"),
                    );
                    Vec::new()
                }
            };
            let pool = upstream.pool.unwrap_or_default();
            let weights = super::resilience::weights(upstream.weights, &endpoints, errors);
            let balancer = super::resilience::balancer(
                upstream.balancer.as_ref(),
                upstream.hash_header.as_ref(),
                &span,
                errors,
            );
            UpstreamConfig {
                balancer,
                weights,
                breaker: super::resilience::breaker(upstream.breaker, errors),
                outlier: super::resilience::outlier(upstream.outlier.unwrap_or_default(), errors),
                health: upstream
                    .health
                    .map(|h| super::resilience::health(h, errors)),
                name: name.into_inner().into(),
                endpoints,
                connect_timeout: duration(
                    upstream.connect_timeout.as_ref(),
                    defaults::CONNECT_TIMEOUT,
                    errors,
                ),
                dns_refresh: duration(upstream.dns_refresh.as_ref(), defaults::DNS_REFRESH, errors),
                pool: PoolConfig {
                    max_connections: non_zero(
                        pool.max_connections.as_ref(),
                        defaults::POOL_MAX_CONNECTIONS,
                        errors,
                    ),
                    max_requests: non_zero(
                        pool.max_requests.as_ref(),
                        defaults::POOL_MAX_REQUESTS,
                        errors,
                    ),
                    max_pending: limit(
                        pool.max_pending.as_ref(),
                        defaults::POOL_MAX_PENDING,
                        0,
                        errors,
                    ),
                    queue_timeout: duration(
                        pool.queue_timeout.as_ref(),
                        defaults::QUEUE_TIMEOUT,
                        errors,
                    ),
                    idle_timeout: duration(
                        pool.idle_timeout.as_ref(),
                        defaults::POOL_IDLE_TIMEOUT,
                        errors,
                    ),
                },
            }
        })
        .collect()
}

fn endpoint(e: &Str, errors: &mut Errors) -> Option<model::EndpointAddr> {
    let text = e.get_ref();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() != 0 {
            return Some(EndpointAddr {
                host: addr.ip().to_string(),
                port: addr.port(),
            });
        }
    }
    let parsed = text.rsplit_once(':').and_then(|(host, port)| {
        let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        host_ok.then(|| EndpointAddr {
            host: host.to_owned(),
            port,
        })
    });
    if parsed.is_none() {
        errors.push(
            ConfigError::new(e.span(), format!("invalid endpoint `{text}`"))
                .with_hint("write \"IP:port\" or \"name:port\", for example \"127.0.0.1:8080\" or \"payments.svc:8080\""),
        );
    }
    parsed
}

fn required_name(
    name: Option<&Str>,
    span: &Range<usize>,
    what: &str,
    errors: &mut Errors,
) -> Arc<str> {
    match name {
        Some(n) if !n.get_ref().is_empty() => n.get_ref().as_str().into(),
        _ => {
            errors.push(
                ConfigError::missing(span.clone(), format!("{what} has no `name`"))
                    .with_hint("add name = \"...\"; it labels metrics and logs"),
            );
            "unnamed".into()
        }
    }
}

fn socket_addr(value: Option<&Str>, default: &str, errors: &mut Errors) -> SocketAddr {
    let fallback = || {
        default
            .parse()
            .unwrap_or_else(|_| ([127, 0, 0, 1], 0).into())
    };
    let Some(value) = value else {
        return fallback();
    };
    match value.get_ref().parse() {
        Ok(addr) => addr,
        Err(_) => {
            errors.push(
                ConfigError::new(
                    value.span(),
                    format!("invalid socket address `{}`", value.get_ref()),
                )
                .with_hint("write IP:port, for example \"127.0.0.1:15001\" or \"0.0.0.0:9901\""),
            );
            fallback()
        }
    }
}

pub(super) fn parse_duration(value: &Str, errors: &mut Errors) -> Option<Duration> {
    match humantime::parse_duration(value.get_ref()) {
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(
                ConfigError::new(
                    value.span(),
                    format!("invalid duration `{}`: {e}", value.get_ref()),
                )
                .with_hint("write a number with a unit, for example \"250ms\", \"5s\" or \"1m\""),
            );
            None
        }
    }
}

/// A positive duration.
pub(super) fn duration(value: Option<&Str>, default: Duration, errors: &mut Errors) -> Duration {
    let Some(value) = value else { return default };
    match parse_duration(value, errors) {
        Some(d) if d.is_zero() => {
            errors.push(
                ConfigError::new(value.span(), "this duration must be longer than zero").with_hint(
                    format!("the default is \"{}\"", humantime::format_duration(default)),
                ),
            );
            default
        }
        Some(d) => d,
        None => default,
    }
}

/// A duration that may be zero.
pub(super) fn duration_or_zero(
    value: Option<&Str>,
    default: Duration,
    errors: &mut Errors,
) -> Duration {
    value
        .and_then(|v| parse_duration(v, errors))
        .unwrap_or(default)
}

pub(super) fn limit(value: Option<&Int>, default: usize, min: i64, errors: &mut Errors) -> usize {
    let Some(value) = value else { return default };
    match usize::try_from(*value.get_ref()) {
        Ok(n) if *value.get_ref() >= min => n,
        _ => {
            errors.push(
                ConfigError::new(
                    value.span(),
                    format!("limit must be at least {min}, got {}", value.get_ref()),
                )
                .with_hint(format!("the default is {default}")),
            );
            default
        }
    }
}

pub(super) fn non_zero(value: Option<&Int>, default: usize, errors: &mut Errors) -> NonZeroUsize {
    let n = limit(value, default, 1, errors);
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

fn config_route_names(listeners: &[ListenerConfig]) -> Vec<Arc<str>> {
    listeners
        .iter()
        .flat_map(|l| l.routes.iter().map(|r| r.name.clone()))
        .collect()
}
