//! Raw schema → runtime model, collecting every error.
//!
//! Each check pushes a [`ConfigError`] and carries on with a default, so one run reports every
//! problem in the file. The caller discards the model when any error was pushed.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv6Addr, SocketAddr};
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
        warnings: Vec::new(),
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
    let mut max_headers = limit(
        listener.max_headers.as_ref(),
        defaults::MAX_HEADERS,
        1,
        errors,
    );
    if let Some(count) = &listener.max_headers {
        if max_headers > MAX_HEADERS_CEILING {
            errors.push(
                ConfigError::new(
                    count.span(),
                    format!("max_headers must be at most {MAX_HEADERS_CEILING}, got {}", count.get_ref()),
                )
                .with_hint("hyper reserves room for this many fields for every request head; the default is 100"),
            );
            max_headers = defaults::MAX_HEADERS;
        }
    }
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
    let tls = listener
        .tls
        .and_then(|t| super::tls::listener(t, &name, errors));
    ListenerConfig {
        tls,
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

/// An IPv6 address written bare (`::1`) or in brackets (`[::1]`).
fn ipv6_literal(text: &str) -> Option<Ipv6Addr> {
    let inner = match text.strip_prefix('[') {
        Some(rest) => rest.strip_suffix(']')?,
        None => text,
    };
    inner.parse().ok()
}

fn validate_match(m: raw::RawMatch, errors: &mut Errors) -> RouteMatch {
    let host = m.host.and_then(|h| {
        let span = h.span();
        let text = h.into_inner().to_ascii_lowercase();
        if let Some(ip) = ipv6_literal(&text) {
            // The router compares the content of an authority's brackets (`[::1]:80` → `::1`);
            // clients write it in the RFC 5952 form, which is how `Ipv6Addr` displays.
            return Some(HostMatch::Exact(ip.to_string()));
        }
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
                    .with_hint("use a host name such as \"payments\" or \"*.svc.cluster.local\", or an IP address, without port or scheme"),
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
            let protocol = super::tls::protocol(upstream.protocol.as_ref(), errors);
            let tls = upstream
                .tls
                .and_then(|t| super::tls::upstream(t, name.get_ref(), protocol, errors));
            UpstreamConfig {
                protocol,
                tls,
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

/// The most header fields a listener may allow. hyper's HTTP/1 server allocates room for
/// `max_headers` fields (64 bytes each) for every request head it parses, so an unbounded value
/// (`max_headers = 5408015502793530758`, accepted before) turns the first request into an
/// allocation failure, which aborts the process.
const MAX_HEADERS_CEILING: usize = 1000;

/// The longest duration any setting takes: one year (humantime's `1y`, 365.25 days).
///
/// Every duration ends up in `Instant + Duration` or `SystemTime + Duration` arithmetic
/// (deadlines, breaker and ejection times with their jitter, fault expiry, the shutdown grace
/// period), which panics on overflow; a year is far beyond any sensible timeout and far below
/// the overflow, and it refuses typos such as `"30000000000s"`.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(31_557_600);

/// Parses a duration setting, refusing one longer than [`MAX_DURATION`].
pub(super) fn parse_duration(value: &Str, errors: &mut Errors) -> Option<Duration> {
    let text = value.get_ref();
    let too_long = |errors: &mut Errors| {
        errors.push(
            ConfigError::new(
                value.span(),
                format!("duration `{text}` is longer than 1 year"),
            )
            .with_hint("durations may be at most \"1y\"; write, for example, \"30s\" or \"10m\""),
        );
    };
    // humantime 2.x panics (`Duration::new` overflow) instead of failing on some texts that add
    // up to `u64::MAX` seconds, such as "18446744073709551615s 1000ms": such a text never
    // reaches it.
    if longer_than(text, MAX_DURATION) {
        too_long(errors);
        return None;
    }
    match humantime::parse_duration(text) {
        Ok(d) if d > MAX_DURATION => {
            too_long(errors);
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            errors.push(
                ConfigError::new(value.span(), format!("invalid duration `{text}`: {e}"))
                    .with_hint(
                        "write a number with a unit, for example \"250ms\", \"5s\" or \"1m\"",
                    ),
            );
            None
        }
    }
}

/// Whether `text`, read span by span the way `humantime::parse_duration` reads it (a number,
/// whitespace allowed between its digits, an optional fraction, a unit), adds up to more than
/// `limit` before the first span humantime would refuse. Sums in `u128` nanoseconds, saturating,
/// so it never overflows; fractions are rounded up, so the sum is never below humantime's.
fn longer_than(text: &str, limit: Duration) -> bool {
    let limit = limit.as_nanos();
    let mut total: u128 = 0;
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut whole: u128 = 0;
        let mut digits = false;
        while let Some(c) = chars.next_if(|c| c.is_ascii_digit() || c.is_whitespace()) {
            if let Some(d) = c.to_digit(10) {
                whole = whole.saturating_mul(10).saturating_add(d.into());
                digits = true;
            }
        }
        if !digits {
            return false;
        }
        let (mut numerator, mut denominator) = (0u128, 1u128);
        if chars.next_if_eq(&'.').is_some() {
            while let Some(c) = chars.next_if(|c| c.is_ascii_digit() || c.is_whitespace()) {
                if let Some(d) = c.to_digit(10) {
                    numerator = numerator.saturating_mul(10).saturating_add(d.into());
                    denominator = denominator.saturating_mul(10);
                }
            }
        }
        let mut unit = String::new();
        while let Some(c) = chars.next_if(|c| c.is_ascii_alphabetic() || *c == 'µ') {
            unit.push(c);
        }
        let Some(unit) = unit_nanos(&unit) else {
            // humantime refuses the text here, having added only the spans before.
            return false;
        };
        total = total
            .saturating_add(whole.saturating_mul(unit))
            .saturating_add(numerator.saturating_mul(unit).div_ceil(denominator));
        if total > limit {
            return true;
        }
    }
}

/// Nanoseconds in one of humantime's duration units.
fn unit_nanos(unit: &str) -> Option<u128> {
    const S: u128 = 1_000_000_000;
    Some(match unit {
        "nanos" | "nsec" | "ns" => 1,
        "usec" | "us" | "µs" => 1_000,
        "millis" | "msec" | "ms" => 1_000_000,
        "seconds" | "second" | "secs" | "sec" | "s" => S,
        "minutes" | "minute" | "min" | "mins" | "m" => 60 * S,
        "hours" | "hour" | "hr" | "hrs" | "h" => 3_600 * S,
        "days" | "day" | "d" => 86_400 * S,
        "weeks" | "week" | "wk" | "wks" | "w" => 604_800 * S,
        "months" | "month" | "M" => 2_630_016 * S,
        "years" | "year" | "yr" | "yrs" | "y" => 31_557_600 * S,
        _ => return None,
    })
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

#[cfg(test)]
mod tests {
    use crate::config::{from_str, model::HostMatch};

    fn host_match(host: &str) -> Result<Option<HostMatch>, String> {
        let text = format!(
            "[[listeners]]\nname = \"out\"\nlisten = \"127.0.0.1:0\"\n[[listeners.routes]]\n\
             match = {{ host = \"{host}\" }}\nupstream = \"a\"\n\
             [upstreams.a]\nendpoints = [\"127.0.0.1:1\"]\n"
        );
        from_str(&text, "t.toml")
            .map(|mut c| c.listeners.remove(0).routes.remove(0).matcher.host)
            .map_err(|e| e.to_string())
    }

    fn minimal_with(extra: &str) -> String {
        format!(
            "{extra}\n[[listeners]]\nname = \"out\"\nlisten = \"127.0.0.1:0\"\n\
             [[listeners.routes]]\nupstream = \"a\"\n\
             [upstreams.a]\nendpoints = [\"127.0.0.1:1\"]\n"
        )
    }

    /// Found by the `config_structured` fuzz target (minimized: `[shutdown]` with
    /// `drain_delay = "18446744073709551615s"` was accepted). Every duration is used in
    /// `Instant`/`SystemTime` arithmetic that panics on overflow, so none may exceed a year.
    #[test]
    fn durations_longer_than_a_year_are_refused() {
        for setting in [
            "[shutdown]\ndrain_delay = \"18446744073709551615s\"",
            "[shutdown]\ngrace_period = \"5000y\"",
            "[shutdown]\ngrace_period = \"1y 1s\"",
        ] {
            let err = from_str(&minimal_with(setting), "t.toml").unwrap_err();
            assert_eq!(err.errors.len(), 1, "{err}");
            assert_eq!(err.errors[0].line, 2, "{err}");
            assert!(err.to_string().contains("longer than 1 year"), "{err}");
        }
        let ok = from_str(&minimal_with("[shutdown]\ngrace_period = \"1y\""), "t.toml").unwrap();
        assert_eq!(ok.shutdown.grace_period, super::MAX_DURATION);
    }

    /// Found by the `config_structured` fuzz target (second run, after the 1-year limit):
    /// `outlier.base_ejection = "18446744073709551615s 1000ms"` panicked inside
    /// `humantime::parse_duration` (`overflow in Duration::new`).
    #[test]
    fn durations_that_overflow_inside_humantime_are_errors_not_panics() {
        for text in [
            "18446744073709551615s 1000ms",
            "18446744073709551615s 999ms 1000000ns",
            "18446744073709551614s 1s 1000000000ns",
        ] {
            let setting = format!("[shutdown]\ngrace_period = \"{text}\"");
            let err = from_str(&minimal_with(&setting), "t.toml").unwrap_err();
            assert_eq!(err.errors.len(), 1, "{err}");
            assert!(err.to_string().contains("longer than 1 year"), "{err}");
        }
    }

    /// `longer_than` agrees with humantime on the limit, whatever the spelling.
    #[test]
    fn the_one_year_limit_follows_humantime_spelling() {
        use super::{longer_than, MAX_DURATION};
        for (text, longer) in [
            ("1y", false),
            ("365d 6h", false),
            ("365.1d", false),
            ("0.5y 0.5y", false),
            ("1y 1ns", true),
            ("365.3d", true),
            ("1 000 000 000 s", true),
            ("12M", true),
            ("31557600000000000ns", false),
            ("31557600000000001ns", true),
            ("9999999999999999999999999y", true),
            ("5xs 99999999999y", false),
            ("", false),
            ("s", false),
        ] {
            assert_eq!(longer_than(text, MAX_DURATION), longer, "{text:?}");
            if let Ok(d) = humantime::parse_duration(text) {
                assert_eq!(d > MAX_DURATION, longer, "{text:?} is {d:?}");
            }
        }
    }

    /// Found by the `config_structured` fuzz target: a `[[faults]]` entry whose `expires_in`
    /// overflowed `SystemTime::now() + expires_in` panicked inside the validator, before the
    /// 7-day limit was reported.
    #[test]
    fn fault_with_an_enormous_expires_in_is_an_error_not_a_panic() {
        for life in ["18446744073709551615s", "300000000000s", "8d"] {
            let text = minimal_with(&format!("[[faults]]\nabort = 503\nexpires_in = \"{life}\""));
            let err = from_str(&text, "t.toml").unwrap_err();
            assert_eq!(err.errors.len(), 1, "{life}: {err}");
            assert_eq!(err.errors[0].line, 3, "{life}: {err}");
        }
    }

    /// Seen in a `config_structured` document accepted after the target learned to reach
    /// valid listeners: `max_headers` had no upper bound.
    #[test]
    fn max_headers_is_bounded() {
        let with = |n: &str| {
            format!(
                "[[listeners]]\nname = \"out\"\nlisten = \"127.0.0.1:0\"\nmax_headers = {n}\n\
                 [[listeners.routes]]\nupstream = \"a\"\n\
                 [upstreams.a]\nendpoints = [\"127.0.0.1:1\"]\n"
            )
        };
        for n in ["1001", "5408015502793530758"] {
            let err = from_str(&with(n), "t.toml").unwrap_err();
            assert_eq!(err.errors.len(), 1, "{err}");
            assert_eq!(err.errors[0].line, 4, "{err}");
        }
        let ok = from_str(&with("1000"), "t.toml").unwrap();
        assert_eq!(ok.listeners[0].max_headers, 1000);
    }

    /// The head fuzz target's fixed config routes `::1`, the host the router derives from a
    /// `[::1]:port` authority; the validator refused every IPv6 pattern, so no route could match
    /// a request to an IPv6 literal.
    #[test]
    fn ipv6_literal_hosts_are_exact_patterns() {
        let loopback = Some(HostMatch::Exact("::1".into()));
        assert_eq!(host_match("::1"), Ok(loopback.clone()));
        assert_eq!(host_match("[::1]"), Ok(loopback));
        assert_eq!(
            host_match("FD00:0:0::A"),
            Ok(Some(HostMatch::Exact("fd00::a".into())))
        );
        for bad in ["[::1", "::1]", "[::1]:80", "*.::1", "::g", "fe80::1%eth0"] {
            assert!(host_match(bad).is_err(), "{bad} accepted");
        }
    }
}
