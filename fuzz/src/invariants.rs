//! What must hold for every result of `keel::config::from_str`.
//!
//! For an accepted config these are the promises `keel check` makes to `keel run`: route targets
//! index real upstreams, limits are in range, names are unique, and every duration can be used
//! in the `Instant + Duration` arithmetic of the request path without overflowing. For a refused
//! config: at least one error, each located inside the text.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use keel::config::model::{Config, HostMatch, ListenerConfig, RouteConfig, UpstreamConfig};
use keel::config::ConfigErrors;

/// Gives libFuzzer a gradient towards accepted documents. A refused document with `n` errors
/// (up to 8; a syntax error counts as 9) calls a function of its own, so the first document with fewer errors than any
/// before is new coverage, kept in the corpus and mutated further. Without it nothing tells
/// the fuzzer that a document with one error is closer to acceptance than one with ten, and
/// documents with listeners and routes were never accepted (see README.md).
pub fn error_count_feedback(result: &Result<Config, ConfigErrors>) {
    #[inline(never)]
    fn errors<const N: usize>() {
        std::hint::black_box(N);
    }
    // A syntax error is reported alone; it is as far from acceptance as a document gets.
    let count = match result {
        Ok(_) => 0,
        Err(e)
            if e.errors
                .iter()
                .any(|e| e.message.starts_with("invalid TOML")) =>
        {
            9
        }
        Err(e) => e.errors.len(),
    };
    match count {
        0 => errors::<0>(),
        1 => errors::<1>(),
        2 => errors::<2>(),
        3 => errors::<3>(),
        4 => errors::<4>(),
        5 => errors::<5>(),
        6 => errors::<6>(),
        7 => errors::<7>(),
        8 => errors::<8>(),
        _ => errors::<9>(),
    }
}

/// Checks either outcome of `from_str(text, ..)`.
pub fn check_result(text: &str, result: &Result<Config, ConfigErrors>) {
    match result {
        Ok(config) => check_config(config),
        Err(errors) => check_errors(text, errors),
    }
}

/// A refused config names at least one problem, each at a line and column inside `text`.
pub fn check_errors(text: &str, errors: &ConfigErrors) {
    assert!(!errors.errors.is_empty(), "Err with an empty error list");
    let lines: Vec<&str> = text.split('\n').collect();
    for e in &errors.errors {
        assert!(
            e.line >= 1 && e.line <= lines.len(),
            "error line {} outside 1..={}: {}",
            e.line,
            lines.len(),
            e.message
        );
        let width = lines[e.line - 1].chars().count();
        assert!(
            e.column >= 1 && e.column <= width + 1,
            "error column {} outside 1..={} on line {}: {}",
            e.column,
            width + 1,
            e.line,
            e.message
        );
        assert!(!e.message.is_empty(), "error without a message");
    }
    // Rendering (what `keel check` and `POST /reload` print) must not panic either.
    let rendered = errors.to_string();
    assert!(rendered.lines().count() >= errors.errors.len());
}

/// Every duration keel adds to `Instant::now()` on the request path (proxy.rs `started +
/// timeout`, upstream/mod.rs `started + per_try_timeout`, server/conn.rs `since + idle_timeout`,
/// breaker.rs `now + open_for`, the latter after ±20 % jitter) must fit.
fn usable(what: &str, d: Duration) {
    let now = Instant::now();
    let stretched = Duration::try_from_secs_f64(d.as_secs_f64() * 1.2).unwrap_or(Duration::MAX);
    assert!(
        now.checked_add(stretched).is_some(),
        "accepted config has {what} = {d:?}, which overflows `Instant::now() + {what}` on the request path"
    );
}

fn positive(what: &str, d: Duration) {
    assert!(!d.is_zero(), "accepted config has {what} = 0");
    usable(what, d);
}

/// The promises of an accepted config.
pub fn check_config(c: &Config) {
    assert!((0.0..=1.0).contains(&c.tracing.sample_ratio));
    usable("shutdown.drain_delay", c.shutdown.drain_delay);
    positive("shutdown.grace_period", c.shutdown.grace_period);

    let mut names = HashSet::new();
    for w in c.upstreams.windows(2) {
        assert!(w[0].name < w[1].name, "upstreams not sorted by name");
    }
    for u in &c.upstreams {
        assert!(
            names.insert(u.name.clone()),
            "duplicate upstream {}",
            u.name
        );
        check_upstream(u);
    }

    let mut listener_names = HashSet::new();
    for l in &c.listeners {
        assert!(
            listener_names.insert(l.name.clone()),
            "duplicate listener {}",
            l.name
        );
        check_listener(l, c.upstreams.len());
    }
    let pairs = c.listeners.iter().map(|l| l.listen);
    let bound: Vec<_> = pairs.filter(|a| a.port() != 0).collect();
    for (i, a) in bound.iter().enumerate() {
        for b in &bound[i + 1..] {
            let clash = a.port() == b.port()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified());
            assert!(!clash, "two listeners bind {a} and {b}");
        }
    }

    let route_names: HashSet<&str> = c
        .listeners
        .iter()
        .flat_map(|l| l.routes.iter().map(|r| &*r.name))
        .collect();
    for f in &c.faults {
        assert!((0.0..=100.0).contains(&f.percent), "fault percent");
        if let Some(r) = &f.route {
            assert!(route_names.contains(&**r), "fault names missing route {r}");
        }
        if let Some(u) = &f.upstream {
            assert!(names.contains(u), "fault names missing upstream {u}");
        }
    }
}

fn check_upstream(u: &UpstreamConfig) {
    assert!(!u.name.is_empty(), "empty upstream name");
    assert!(
        !u.endpoints.is_empty(),
        "upstream {} without endpoints",
        u.name
    );
    assert_eq!(u.weights.len(), u.endpoints.len(), "weights per endpoint");
    assert!(u.weights.iter().all(|w| *w >= 1), "endpoint weight 0");
    for e in &u.endpoints {
        assert!(e.port != 0 && !e.host.is_empty(), "endpoint {e}");
    }
    positive("connect_timeout", u.connect_timeout);
    positive("dns_refresh", u.dns_refresh);
    positive("pool.queue_timeout", u.pool.queue_timeout);
    positive("pool.idle_timeout", u.pool.idle_timeout);
    let b = &u.breaker;
    assert!((0.0..=1.0).contains(&b.failure_rate), "failure_rate");
    assert!(b.slow_call_rate.is_none_or(|r| (0.0..=1.0).contains(&r)));
    assert!(b.min_requests >= 1 && b.half_open_probes >= 1);
    assert!(b.max_open_for >= b.open_for, "max_open_for < open_for");
    assert!(b.failure_statuses.iter().all(|s| (100..=599).contains(s)));
    positive("breaker.window", b.window);
    positive("breaker.slow_call_threshold", b.slow_call_threshold);
    positive("breaker.open_for", b.open_for);
    positive("breaker.max_open_for", b.max_open_for);
    let o = &u.outlier;
    assert!(o.max_ejected_percent <= 100 && o.consecutive_failures >= 1);
    positive("outlier.base_ejection", o.base_ejection);
    positive("outlier.max_ejection", o.max_ejection);
    if let Some(h) = &u.health {
        assert!(h.path.as_str().starts_with('/'));
        assert!(h.unhealthy_after >= 1 && h.healthy_after >= 1);
        positive("health.interval", h.interval);
        positive("health.timeout", h.timeout);
    }
}

fn check_listener(l: &ListenerConfig, upstreams: usize) {
    assert!(!l.name.is_empty(), "empty listener name");
    assert!(!l.routes.is_empty(), "listener {} without routes", l.name);
    assert!(l.max_header_bytes >= 8192);
    assert!(
        (1..=1000).contains(&l.max_headers),
        "max_headers {} (hyper reserves room for that many fields per request)",
        l.max_headers
    );
    positive("header_read_timeout", l.header_read_timeout);
    positive("listener idle_timeout", l.idle_timeout);
    let mut route_names = HashSet::new();
    for r in &l.routes {
        assert!(
            route_names.insert(r.name.clone()),
            "duplicate route {}",
            r.name
        );
        check_route(r, upstreams);
    }
}

fn check_route(r: &RouteConfig, upstreams: usize) {
    assert!(r.upstream < upstreams, "route {} upstream index", r.name);
    assert!(!r.targets.is_empty() && r.targets.len() <= 16, "targets");
    assert_eq!(r.targets[0].upstream, r.upstream, "first target");
    assert!(
        r.targets.iter().all(|t| t.upstream < upstreams),
        "target index"
    );
    assert!(r.targets.iter().any(|t| t.weight > 0), "all weights 0");
    if let Some(m) = &r.mirror {
        assert!(m.upstream < upstreams, "mirror index");
        assert!((0.0..=100.0).contains(&m.percent), "mirror percent");
    }
    positive("route timeout", r.timeout);
    if let Some(retry) = &r.retry {
        assert!(retry.attempts >= 1, "retry attempts");
        assert!(retry.per_try_timeout <= r.timeout, "per_try_timeout");
        assert!(retry.max_backoff >= retry.backoff, "max_backoff");
        assert!((0.0..=1.0).contains(&retry.budget_ratio), "budget_ratio");
        positive("per_try_timeout", retry.per_try_timeout);
    }
    match &r.matcher.host {
        None => {}
        Some(HostMatch::Exact(h)) => {
            assert!(!h.is_empty() && !h.bytes().any(|b| b.is_ascii_uppercase()));
        }
        Some(HostMatch::Suffix(s)) => assert!(s.len() > 1 && s.starts_with('.')),
    }
    if let Some(p) = &r.matcher.path_prefix {
        assert!(p.starts_with('/'), "path_prefix {p:?}");
    }
}
