//! The tables of a keel config file, as `arbitrary` structs rendered to TOML text.
//!
//! Field names and nesting follow `src/config/raw.rs`; the value types come from
//! [`crate::grammar`]. Collections are cut short when rendered (at most 4 listeners, 4 routes per
//! listener, 5 upstreams, 3 faults) so documents stay small and quick to check.

use arbitrary::Arbitrary;

use crate::grammar::*;

/// The one unknown key a table may carry (rarely: see [`Rare`]).
type Extra = Rare<(Unknown, Any)>;

/// A whole config file.
#[derive(Debug, Arbitrary)]
pub struct Doc {
    admin: Option<ListenOnly>,
    metrics: Option<ListenOnly>,
    tracing: Option<Tracing>,
    shutdown: Option<Shutdown>,
    log: Option<Log>,
    access_log: Option<AccessLog>,
    listeners: Vec<Listener>,
    upstreams: Vec<Upstream>,
    faults: Vec<Fault>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct ListenOnly {
    listen: Option<V<Addr>>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct Tracing {
    service_name: Option<V<Name>>,
    propagation: Option<V<Vec<Propagation>>>,
    otlp_endpoint: Option<V<Url>>,
    sample_ratio: Option<V<Float>>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct Shutdown {
    drain_delay: Option<V<Dur>>,
    grace_period: Option<V<Dur>>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct Log {
    format: Option<V<LogWord>>,
    level: Option<V<LogWord>>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct AccessLog {
    output: Option<V<LogWord>>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct Listener {
    name: Option<V<Name>>,
    direction: Option<V<Direction>>,
    listen: Option<V<Addr>>,
    max_connections: Option<V<Int>>,
    header_read_timeout: Option<V<Dur>>,
    idle_timeout: Option<V<Dur>>,
    max_header_bytes: Option<V<Int>>,
    max_headers: Option<V<Int>>,
    access_log: Option<V<bool>>,
    routes: Vec<Route>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct Route {
    name: Option<V<Name>>,
    matcher: Option<Match>,
    upstream: Option<V<Name>>,
    split: Option<Vec<Split>>,
    sticky_header: Option<V<HeaderName>>,
    mirror: Option<Mirror>,
    timeout: Option<V<Dur>>,
    retry: Option<Retry>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct Match {
    host: Option<V<Host>>,
    path_prefix: Option<V<PathPrefix>>,
    header: Option<HeaderMatch>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct HeaderMatch {
    name: Option<V<HeaderName>>,
    value: Option<V<HeaderValue>>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct Split {
    upstream: Option<V<Name>>,
    weight: Option<V<Int>>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct Mirror {
    upstream: Option<V<Name>>,
    percent: Option<V<Float>>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct Retry {
    attempts: Option<V<Int>>,
    per_try_timeout: Option<V<Dur>>,
    on: Option<V<Vec<RetryOn>>>,
    backoff: Option<V<Dur>>,
    max_backoff: Option<V<Dur>>,
    budget_ratio: Option<V<Float>>,
    min_retries_per_second: Option<V<Int>>,
    max_body: Option<V<Size>>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct Upstream {
    name: Name,
    endpoints: Option<V<Vec<Endpoint>>>,
    connect_timeout: Option<V<Dur>>,
    dns_refresh: Option<V<Dur>>,
    balancer: Option<V<Balancer>>,
    hash_header: Option<V<HeaderName>>,
    weights: Option<Vec<(Endpoint, V<Int>)>>,
    pool: Option<Pool>,
    breaker: Option<Breaker>,
    outlier: Option<Outlier>,
    health: Option<Health>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct Pool {
    max_connections: Option<V<Int>>,
    max_requests: Option<V<Int>>,
    max_pending: Option<V<Int>>,
    queue_timeout: Option<V<Dur>>,
    idle_timeout: Option<V<Dur>>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct Breaker {
    enabled: Option<V<bool>>,
    consecutive_failures: Option<V<Int>>,
    failure_rate: Option<V<Float>>,
    window: Option<V<Dur>>,
    min_requests: Option<V<Int>>,
    slow_call_threshold: Option<V<Dur>>,
    slow_call_rate: Option<V<Float>>,
    open_for: Option<V<Dur>>,
    max_open_for: Option<V<Dur>>,
    half_open_probes: Option<V<Int>>,
    failure_statuses: Option<V<Vec<Int>>>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct Outlier {
    enabled: Option<V<bool>>,
    consecutive_failures: Option<V<Int>>,
    base_ejection: Option<V<Dur>>,
    max_ejection: Option<V<Dur>>,
    max_ejected_percent: Option<V<Int>>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct Health {
    path: Option<V<PathPrefix>>,
    interval: Option<V<Dur>>,
    timeout: Option<V<Dur>>,
    unhealthy_after: Option<V<Int>>,
    healthy_after: Option<V<Int>>,
    extra: Extra,
}

#[derive(Debug, Arbitrary)]
struct Fault {
    name: Option<V<Name>>,
    route: Option<V<Name>>,
    upstream: Option<V<Name>>,
    header: Option<HeaderMatch>,
    percent: Option<V<Float>>,
    delay: Option<V<Dur>>,
    jitter: Option<V<Dur>>,
    abort: Option<V<Int>>,
    grpc_abort: Option<V<Int>>,
    reset: Option<V<bool>>,
    slow_body: Option<V<Int>>,
    expires_in: Option<V<Dur>>,
    until: Option<V<Until>>,
    count_for_breaker: Option<V<bool>>,
    extra: Extra,
}

impl Doc {
    /// The document as TOML text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let mut top = Fields::default();
        top.unknown(&self.extra);
        out.push_str(&top.lines());
        if let Some(a) = &self.admin {
            table(&mut out, "[admin]", &a.fields());
        }
        if let Some(m) = &self.metrics {
            table(&mut out, "[metrics]", &m.fields());
        }
        if let Some(t) = &self.tracing {
            let mut f = Fields::default();
            f.opt("service_name", &t.service_name);
            f.opt("propagation", &t.propagation);
            f.opt("otlp_endpoint", &t.otlp_endpoint);
            f.opt("sample_ratio", &t.sample_ratio);
            f.unknown(&t.extra);
            table(&mut out, "[tracing]", &f);
        }
        if let Some(s) = &self.shutdown {
            let mut f = Fields::default();
            f.opt("drain_delay", &s.drain_delay);
            f.opt("grace_period", &s.grace_period);
            f.unknown(&s.extra);
            table(&mut out, "[shutdown]", &f);
        }
        if let Some(l) = &self.log {
            let mut f = Fields::default();
            f.opt("format", &l.format);
            f.opt("level", &l.level);
            f.unknown(&l.extra);
            table(&mut out, "[log]", &f);
        }
        if let Some(a) = &self.access_log {
            let mut f = Fields::default();
            f.opt("output", &a.output);
            f.unknown(&a.extra);
            table(&mut out, "[access_log]", &f);
        }
        for l in self.listeners.iter().take(4) {
            l.render(&mut out);
        }
        // Two `[upstreams.NAME]` tables with one name would be a TOML syntax error.
        let mut names = Vec::new();
        for u in self.upstreams.iter().take(5) {
            if !names.contains(&&u.name.0) {
                names.push(&u.name.0);
                u.render(&mut out);
            }
        }
        for fault in self.faults.iter().take(3) {
            table(&mut out, "[[faults]]", &fault.fields());
        }
        out
    }
}

fn table(out: &mut String, header: &str, fields: &Fields) {
    out.push('\n');
    out.push_str(header);
    out.push('\n');
    out.push_str(&fields.lines());
}

impl ListenOnly {
    fn fields(&self) -> Fields {
        let mut f = Fields::default();
        f.opt("listen", &self.listen);
        f.unknown(&self.extra);
        f
    }
}

impl Listener {
    fn render(&self, out: &mut String) {
        let mut f = Fields::default();
        f.opt("name", &self.name);
        f.opt("direction", &self.direction);
        f.opt("listen", &self.listen);
        f.opt("max_connections", &self.max_connections);
        f.opt("header_read_timeout", &self.header_read_timeout);
        f.opt("idle_timeout", &self.idle_timeout);
        f.opt("max_header_bytes", &self.max_header_bytes);
        f.opt("max_headers", &self.max_headers);
        f.opt("access_log", &self.access_log);
        f.unknown(&self.extra);
        table(out, "[[listeners]]", &f);
        for r in self.routes.iter().take(4) {
            table(out, "[[listeners.routes]]", &r.fields());
        }
    }
}

impl Route {
    fn fields(&self) -> Fields {
        let mut f = Fields::default();
        f.opt("name", &self.name);
        if let Some(m) = &self.matcher {
            let mut mf = Fields::default();
            mf.opt("host", &m.host);
            mf.opt("path_prefix", &m.path_prefix);
            if let Some(h) = &m.header {
                mf.push("header", h.fields().inline());
            }
            mf.unknown(&m.extra);
            f.push("match", mf.inline());
        }
        f.opt("upstream", &self.upstream);
        if let Some(split) = &self.split {
            let items: Vec<String> = split
                .iter()
                .take(18)
                .map(|s| {
                    let mut sf = Fields::default();
                    sf.opt("upstream", &s.upstream);
                    sf.opt("weight", &s.weight);
                    sf.unknown(&s.extra);
                    sf.inline()
                })
                .collect();
            f.push("split", format!("[{}]", items.join(", ")));
        }
        f.opt("sticky_header", &self.sticky_header);
        if let Some(m) = &self.mirror {
            let mut mf = Fields::default();
            mf.opt("upstream", &m.upstream);
            mf.opt("percent", &m.percent);
            mf.unknown(&m.extra);
            f.push("mirror", mf.inline());
        }
        f.opt("timeout", &self.timeout);
        if let Some(r) = &self.retry {
            let mut rf = Fields::default();
            rf.opt("attempts", &r.attempts);
            rf.opt("per_try_timeout", &r.per_try_timeout);
            rf.opt("on", &r.on);
            rf.opt("backoff", &r.backoff);
            rf.opt("max_backoff", &r.max_backoff);
            rf.opt("budget_ratio", &r.budget_ratio);
            rf.opt("min_retries_per_second", &r.min_retries_per_second);
            rf.opt("max_body", &r.max_body);
            rf.unknown(&r.extra);
            f.push("retry", rf.inline());
        }
        f.unknown(&self.extra);
        f
    }
}

impl HeaderMatch {
    fn fields(&self) -> Fields {
        let mut f = Fields::default();
        f.opt("name", &self.name);
        f.opt("value", &self.value);
        f.unknown(&self.extra);
        f
    }
}

impl Upstream {
    fn render(&self, out: &mut String) {
        let key = format!("upstreams.{}", toml_key(&self.name.0));
        let mut f = Fields::default();
        f.opt("endpoints", &self.endpoints);
        f.opt("connect_timeout", &self.connect_timeout);
        f.opt("dns_refresh", &self.dns_refresh);
        f.opt("balancer", &self.balancer);
        f.opt("hash_header", &self.hash_header);
        if let Some(weights) = &self.weights {
            let mut wf = Fields::default();
            for (endpoint, weight) in weights.iter().take(4) {
                wf.push(&endpoint.0, weight.render());
            }
            f.push("weights", wf.inline());
        }
        if let Some(h) = &self.health {
            let mut hf = Fields::default();
            hf.opt("path", &h.path);
            hf.opt("interval", &h.interval);
            hf.opt("timeout", &h.timeout);
            hf.opt("unhealthy_after", &h.unhealthy_after);
            hf.opt("healthy_after", &h.healthy_after);
            hf.unknown(&h.extra);
            f.push("health", hf.inline());
        }
        f.unknown(&self.extra);
        table(out, &format!("[{key}]"), &f);
        if let Some(p) = &self.pool {
            let mut pf = Fields::default();
            pf.opt("max_connections", &p.max_connections);
            pf.opt("max_requests", &p.max_requests);
            pf.opt("max_pending", &p.max_pending);
            pf.opt("queue_timeout", &p.queue_timeout);
            pf.opt("idle_timeout", &p.idle_timeout);
            pf.unknown(&p.extra);
            table(out, &format!("[{key}.pool]"), &pf);
        }
        if let Some(b) = &self.breaker {
            let mut bf = Fields::default();
            bf.opt("enabled", &b.enabled);
            bf.opt("consecutive_failures", &b.consecutive_failures);
            bf.opt("failure_rate", &b.failure_rate);
            bf.opt("window", &b.window);
            bf.opt("min_requests", &b.min_requests);
            bf.opt("slow_call_threshold", &b.slow_call_threshold);
            bf.opt("slow_call_rate", &b.slow_call_rate);
            bf.opt("open_for", &b.open_for);
            bf.opt("max_open_for", &b.max_open_for);
            bf.opt("half_open_probes", &b.half_open_probes);
            bf.opt("failure_statuses", &b.failure_statuses);
            bf.unknown(&b.extra);
            table(out, &format!("[{key}.breaker]"), &bf);
        }
        if let Some(o) = &self.outlier {
            let mut of = Fields::default();
            of.opt("enabled", &o.enabled);
            of.opt("consecutive_failures", &o.consecutive_failures);
            of.opt("base_ejection", &o.base_ejection);
            of.opt("max_ejection", &o.max_ejection);
            of.opt("max_ejected_percent", &o.max_ejected_percent);
            of.unknown(&o.extra);
            table(out, &format!("[{key}.outlier]"), &of);
        }
    }
}

impl Fault {
    fn fields(&self) -> Fields {
        let mut f = Fields::default();
        f.opt("name", &self.name);
        f.opt("route", &self.route);
        f.opt("upstream", &self.upstream);
        if let Some(h) = &self.header {
            f.push("header", h.fields().inline());
        }
        f.opt("percent", &self.percent);
        f.opt("delay", &self.delay);
        f.opt("jitter", &self.jitter);
        f.opt("abort", &self.abort);
        f.opt("grpc_abort", &self.grpc_abort);
        f.opt("reset", &self.reset);
        f.opt("slow_body", &self.slow_body);
        f.opt("expires_in", &self.expires_in);
        f.opt("until", &self.until);
        f.opt("count_for_breaker", &self.count_for_breaker);
        f.unknown(&self.extra);
        f
    }
}
