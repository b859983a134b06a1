//! Every metric keel exports, defined once: name, help, labels, buckets.
//!
//! Each keel instance owns a private [`Registry`] (parallel tests never collide). Label values
//! come only from configured names (listener, route, upstream), resolved endpoint addresses and
//! status classes, never from anything a client sends, so cardinality is bounded by the config.
//! The request path uses handles resolved when the config is loaded ([`RouteMetrics`],
//! [`UpstreamMetrics`]): no label lookup or string formatting per request. Gauges that describe
//! state (slots in use, queue length, connections, breaker state, ejections) are read from the
//! upstreams when `/metrics` is scraped, so they cost the request path nothing.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::proxy::Runtime;

/// Request duration buckets in seconds: 0.5 ms to 30 s, dense between 1 and 100 ms.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.04, 0.05, 0.075, 0.1, 0.15,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Label value for requests that matched no route.
pub const NO_ROUTE: &str = "";

/// All metric families of one keel instance.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_active: IntGaugeVec,
    upstream_pending: IntGaugeVec,
    upstream_connections: IntGaugeVec,
    rejected: IntCounterVec,
    breaker_state: IntGaugeVec,
    breaker_transitions: IntCounterVec,
    retries: IntCounterVec,
    endpoint_ejected: IntGaugeVec,
    panic_picks: IntCounterVec,
    /// `keel_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `keel_spans_dropped_total`.
    pub spans_dropped: IntCounter,
    /// `keel_faults_injected_total{kind}`.
    pub faults_injected: IntCounterVec,
    /// `keel_access_log_dropped_total`.
    pub access_log_dropped: IntCounter,
}

/// Handles for one (listener, route, upstream): a counter per status class and the histogram.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    by_class: [IntCounter; 5],
    duration: Histogram,
}

impl RouteMetrics {
    /// Records a finished request (duration to the response head).
    pub fn observe(&self, status: u16, seconds: f64) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        if let Some(counter) = self.by_class.get(class) {
            counter.inc();
        }
        self.duration.observe(seconds);
    }
}

/// Handles for one upstream's event counters.
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    name: String,
    transitions: IntCounterVec,
    /// `keel_upstream_rejected_total{reason="circuit_open"}`.
    pub rejected_circuit_open: IntCounter,
    /// `keel_upstream_rejected_total{reason="bulkhead_full"}`.
    pub rejected_bulkhead_full: IntCounter,
    /// `keel_retries_total{outcome="sent"}`.
    pub retries_sent: IntCounter,
    /// `keel_retries_total{outcome="budget_exhausted"}`.
    pub retries_budget_exhausted: IntCounter,
    /// `keel_upstream_panic_picks_total`.
    pub panic_picks: IntCounter,
}

impl UpstreamMetrics {
    /// Counts a breaker transition (rare: label lookup is fine here).
    pub fn transition(&self, from: &str, to: &str, reason: &str) {
        self.transitions
            .with_label_values(&[&self.name, from, to, reason])
            .inc();
    }

    /// Handles not registered anywhere, for upstreams built outside a server (benchmarks).
    pub fn detached(name: &str) -> Self {
        Metrics::new().upstream(name)
    }
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    // Names are unique constants in this file; a clash is a bug caught by every test.
    registry
        .register(Box::new(vec.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    vec
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(vec.clone()))
        .unwrap_or_else(|e| panic!("register {name}: {e}"));
    vec
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = counter_vec(
            &registry,
            "keel_requests_total",
            "Requests answered, by listener, route, upstream and status class (1xx to 5xx), keel's own errors included.",
            &["listener", "route", "upstream", "code_class"],
        );
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "keel_request_duration_seconds",
                "Time from the request head being read to the response head being ready, in seconds.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["listener", "route", "upstream"],
        )
        .unwrap_or_else(|e| panic!("histogram: {e}"));
        registry
            .register(Box::new(duration.clone()))
            .unwrap_or_else(|e| panic!("register histogram: {e}"));
        let build_info = gauge_vec(
            &registry,
            "keel_build_info",
            "Always 1; the version label says which keel runs.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let spans_dropped = IntCounter::new(
            "keel_spans_dropped_total",
            "Trace spans dropped because the export queue was full or the collector failed.",
        )
        .unwrap_or_else(|e| panic!("spans_dropped: {e}"));
        registry
            .register(Box::new(spans_dropped.clone()))
            .unwrap_or_else(|e| panic!("register spans_dropped: {e}"));
        let access_log_dropped = IntCounter::new(
            "keel_access_log_dropped_total",
            "Access log lines dropped because the writer could not keep up.",
        )
        .unwrap_or_else(|e| panic!("access_log_dropped: {e}"));
        registry
            .register(Box::new(access_log_dropped.clone()))
            .unwrap_or_else(|e| panic!("register access_log_dropped: {e}"));
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            // Registration fails only if the names clash, which they cannot in a fresh registry.
            let _ = registry.register(Box::new(process));
        }
        Metrics {
            requests,
            duration,
            upstream_active: gauge_vec(
                &registry,
                "keel_upstream_requests_active",
                "Requests holding a bulkhead slot of the upstream now.",
                &["upstream"],
            ),
            upstream_pending: gauge_vec(
                &registry,
                "keel_upstream_requests_pending",
                "Requests waiting for a bulkhead slot of the upstream now (the queue an autoscaler can watch).",
                &["upstream"],
            ),
            upstream_connections: gauge_vec(
                &registry,
                "keel_upstream_connections",
                "Connections open to the upstream, by state (active: carrying a request; idle: pooled).",
                &["upstream", "state"],
            ),
            rejected: counter_vec(
                &registry,
                "keel_upstream_rejected_total",
                "Requests keel turned away before sending them upstream, by reason (circuit_open, bulkhead_full).",
                &["upstream", "reason"],
            ),
            breaker_state: gauge_vec(
                &registry,
                "keel_breaker_state",
                "Circuit breaker state of the upstream: 0 Closed, 1 HalfOpen, 2 Open.",
                &["upstream"],
            ),
            breaker_transitions: counter_vec(
                &registry,
                "keel_breaker_transitions_total",
                "Circuit breaker state changes, by from, to and reason.",
                &["upstream", "from", "to", "reason"],
            ),
            retries: counter_vec(
                &registry,
                "keel_retries_total",
                "Retries by outcome: sent, or budget_exhausted (wanted but refused by the retry budget).",
                &["upstream", "outcome"],
            ),
            endpoint_ejected: gauge_vec(
                &registry,
                "keel_endpoint_ejected",
                "1 while the endpoint is ejected by outlier detection, else 0.",
                &["upstream", "endpoint"],
            ),
            panic_picks: counter_vec(
                &registry,
                "keel_upstream_panic_picks_total",
                "Endpoint picks made with every endpoint ejected or unhealthy (panic mode).",
                &["upstream"],
            ),
            config_reloads: counter_vec(
                &registry,
                "keel_config_reloads_total",
                "Config reloads by result (success, failure).",
                &["result"],
            ),
            faults_injected: counter_vec(
                &registry,
                "keel_faults_injected_total",
                "Faults injected on purpose, by kind (delay, abort, grpc_abort, reset, slow_body).",
                &["kind"],
            ),
            spans_dropped,
            access_log_dropped,
            registry,
        }
    }

    /// Handles for one route, resolved once at config load.
    pub fn route(&self, listener: &str, route: &str, upstream: &str) -> RouteMetrics {
        let class = |c: &str| {
            self.requests
                .with_label_values(&[listener, route, upstream, c])
        };
        RouteMetrics {
            by_class: [
                class("1xx"),
                class("2xx"),
                class("3xx"),
                class("4xx"),
                class("5xx"),
            ],
            duration: self
                .duration
                .with_label_values(&[listener, route, upstream]),
        }
    }

    /// Handles for one upstream, resolved once when it is built.
    pub fn upstream(&self, name: &str) -> UpstreamMetrics {
        UpstreamMetrics {
            name: name.to_owned(),
            transitions: self.breaker_transitions.clone(),
            rejected_circuit_open: self.rejected.with_label_values(&[name, "circuit_open"]),
            rejected_bulkhead_full: self.rejected.with_label_values(&[name, "bulkhead_full"]),
            retries_sent: self.retries.with_label_values(&[name, "sent"]),
            retries_budget_exhausted: self.retries.with_label_values(&[name, "budget_exhausted"]),
            panic_picks: self.panic_picks.with_label_values(&[name]),
        }
    }

    /// Reads the state gauges from the upstreams, then renders the text exposition format.
    pub fn render(&self, runtime: &Runtime) -> Vec<u8> {
        let now = tokio::time::Instant::now();
        for upstream in &runtime.upstreams {
            let name: &str = &upstream.name;
            let active = upstream.bulkhead.active();
            let open = upstream.pool.open_connections();
            self.upstream_active
                .with_label_values(&[name])
                .set(gauge(active));
            self.upstream_pending
                .with_label_values(&[name])
                .set(gauge(upstream.bulkhead.pending()));
            // HTTP/1.1 carries one request per connection: busy connections = requests in flight.
            let busy = active.min(open);
            self.upstream_connections
                .with_label_values(&[name, "active"])
                .set(gauge(busy));
            self.upstream_connections
                .with_label_values(&[name, "idle"])
                .set(gauge(open - busy));
            self.breaker_state
                .with_label_values(&[name])
                .set(upstream.breaker_state().0.gauge());
            // Panic picks are counted by the balancer with a plain atomic; bring the counter level.
            let panic_counter = self.panic_picks.with_label_values(&[name]);
            let seen = upstream
                .balancer
                .panic_picks
                .load(std::sync::atomic::Ordering::Relaxed);
            if seen > panic_counter.get() {
                panic_counter.inc_by(seen - panic_counter.get());
            }
            for endpoint in upstream.endpoints().iter() {
                let addr = endpoint.addr.to_string();
                let ejected = i64::from(upstream.balancer.is_ejected(endpoint, now));
                self.endpoint_ejected
                    .with_label_values(&[name, &addr])
                    .set(ejected);
            }
        }
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }

    /// The content type of [`Metrics::render`]'s output.
    pub fn content_type(&self) -> String {
        TextEncoder::new().format_type().to_owned()
    }
}

fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
