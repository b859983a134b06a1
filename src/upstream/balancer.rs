//! Endpoint choice and per-endpoint state: P2C on peak-EWMA cost (default), weighted round robin,
//! or a rendezvous hash of a header; outlier ejection; health flags.
//!
//! Every pick skips ejected and unhealthy endpoints (and, for a retry, the endpoint that just
//! failed). If that leaves nothing, the pick falls back to every endpoint ("panic mode"): better a
//! request to a maybe-bad endpoint than a guaranteed failure. Picks allocate nothing.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::Authority;
use tokio::time::Instant;

use crate::config::model::{BalancerKind, OutlierConfig};

/// Decay time of the latency average: old observations fade over about this long, so an endpoint
/// that has been idle (new, back from ejection, healthy again) looks cheap and gets tried.
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// Latency assumed for an endpoint never measured.
const EWMA_INITIAL_NANOS: f64 = 0.0;
/// Added to every latency estimate so outstanding requests always count, even for an endpoint
/// whose estimate decayed to zero: an unmeasured endpoint is tried, but not flooded.
const COST_FLOOR_NANOS: f64 = 50_000.0;

/// Mutable state of one endpoint address, kept across DNS refreshes.
#[derive(Debug)]
pub struct EndpointState {
    /// Requests sent and not answered yet.
    pub outstanding: AtomicU32,
    ewma_bits: AtomicU64,
    ewma_at_ms: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Milliseconds since the balancer's epoch until which the endpoint is ejected (0: never).
    ejected_until_ms: AtomicU64,
    /// Times ejected so far; the next ejection lasts `base_ejection` × this.
    pub times_ejected: AtomicU32,
    /// Health-check verdict; true until checks say otherwise.
    pub healthy: AtomicBool,
    /// Health-check streak: positive passes or negative failures in a row.
    pub health_streak: AtomicI32,
}

impl Default for EndpointState {
    fn default() -> Self {
        EndpointState {
            outstanding: AtomicU32::new(0),
            ewma_bits: AtomicU64::new(EWMA_INITIAL_NANOS.to_bits()),
            ewma_at_ms: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            times_ejected: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            health_streak: AtomicI32::new(0),
        }
    }
}

/// A resolved endpoint address with its state.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Socket address dialed.
    pub addr: SocketAddr,
    /// Index of the configured `host:port` entry it came from.
    pub source: usize,
    /// Relative weight.
    pub weight: u32,
    /// `IP:port`, prebuilt for request URIs.
    pub authority: Authority,
    /// Shared mutable state.
    pub state: Arc<EndpointState>,
}

impl Endpoint {
    /// An endpoint with fresh or carried-over state.
    pub fn new(
        addr: SocketAddr,
        source: usize,
        weight: u32,
        state: Arc<EndpointState>,
    ) -> Option<Self> {
        let authority = Authority::try_from(addr.to_string().as_str()).ok()?;
        Some(Endpoint {
            addr,
            source,
            weight: weight.max(1),
            authority,
            state,
        })
    }
}

/// Marks an endpoint busy while a request to it is outstanding.
#[derive(Debug)]
pub struct Outstanding(Arc<EndpointState>);

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Chooses endpoints and tracks their health for one upstream.
#[derive(Debug)]
pub struct Balancer {
    kind: BalancerKind,
    outlier: OutlierConfig,
    next: AtomicUsize,
    epoch: Instant,
    /// Picks made with every endpoint ejected or unhealthy.
    pub panic_picks: AtomicU64,
    // Serialises the rare count-then-eject step so `max_ejected_percent` holds under races.
    ejecting: std::sync::Mutex<()>,
}

/// Whether an outcome was good or bad for an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointResult {
    /// A response that is not a failure status.
    Success,
    /// Connect error, reset, timeout or failure status.
    Failure,
}

impl Balancer {
    /// A balancer of the given kind with the upstream's outlier settings.
    pub fn new(kind: BalancerKind, outlier: OutlierConfig) -> Self {
        Balancer {
            kind,
            outlier,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
            panic_picks: AtomicU64::new(0),
            ejecting: std::sync::Mutex::new(()),
        }
    }

    /// The header whose value keys the hash balancer.
    pub fn hash_header(&self) -> Option<&http::HeaderName> {
        match &self.kind {
            BalancerKind::Hash(name) => Some(name),
            BalancerKind::P2c | BalancerKind::RoundRobin => None,
        }
    }

    fn now_ms(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the endpoint is ejected at `now`.
    pub fn is_ejected(&self, endpoint: &Endpoint, now: Instant) -> bool {
        endpoint.state.ejected_until_ms.load(Ordering::Acquire) > self.now_ms(now)
    }

    /// Time left in the endpoint's ejection.
    pub fn ejected_for(&self, endpoint: &Endpoint, now: Instant) -> Duration {
        let until = endpoint.state.ejected_until_ms.load(Ordering::Acquire);
        Duration::from_millis(until.saturating_sub(self.now_ms(now)))
    }

    fn usable(&self, e: &Endpoint, now_ms: u64, exclude: Option<SocketAddr>) -> bool {
        Some(e.addr) != exclude
            && e.state.healthy.load(Ordering::Acquire)
            && e.state.ejected_until_ms.load(Ordering::Acquire) <= now_ms
    }

    /// Picks an endpoint; `exclude` is avoided when others are usable, `key` feeds the hash
    /// balancer. Returns the endpoint and its outstanding marker.
    pub fn pick<'a>(
        &self,
        endpoints: &'a [Endpoint],
        now: Instant,
        exclude: Option<SocketAddr>,
        key: Option<&[u8]>,
    ) -> Option<(&'a Endpoint, Outstanding)> {
        let now_ms = self.now_ms(now);
        let mut filter: Option<SocketAddr> = exclude;
        let mut usable = endpoints
            .iter()
            .filter(|e| self.usable(e, now_ms, filter))
            .count();
        if usable == 0 && exclude.is_some() {
            filter = None;
            usable = endpoints
                .iter()
                .filter(|e| self.usable(e, now_ms, None))
                .count();
        }
        let panic = usable == 0;
        if panic {
            if endpoints.is_empty() {
                return None;
            }
            self.panic_picks.fetch_add(1, Ordering::Relaxed);
        }
        let candidates = || {
            endpoints
                .iter()
                .filter(move |e| panic || self.usable(e, now_ms, filter))
        };
        let count = if panic { endpoints.len() } else { usable };
        let chosen = match (&self.kind, key) {
            (BalancerKind::Hash(_), Some(key)) => rendezvous(candidates(), key),
            (BalancerKind::RoundRobin, _) | (BalancerKind::Hash(_), None) => {
                let total: u64 = candidates().map(|e| u64::from(e.weight)).sum();
                let mut ticket = (self.next.fetch_add(1, Ordering::Relaxed) as u64) % total.max(1);
                candidates().find(|e| {
                    let w = u64::from(e.weight);
                    if ticket < w {
                        true
                    } else {
                        ticket -= w;
                        false
                    }
                })
            }
            (BalancerKind::P2c, _) => {
                if count == 1 {
                    candidates().next()
                } else {
                    let a = random_below(count);
                    let mut b = random_below(count - 1);
                    if b >= a {
                        b += 1;
                    }
                    let first = candidates().nth(a);
                    let second = candidates().nth(b);
                    match (first, second) {
                        (Some(x), Some(y)) => {
                            Some(if self.cost(y, now_ms) < self.cost(x, now_ms) {
                                y
                            } else {
                                x
                            })
                        }
                        (x, y) => x.or(y),
                    }
                }
            }
        }?;
        chosen.state.outstanding.fetch_add(1, Ordering::AcqRel);
        Some((chosen, Outstanding(chosen.state.clone())))
    }

    /// Load estimate: (outstanding + 1) × decayed latency / weight.
    fn cost(&self, e: &Endpoint, now_ms: u64) -> f64 {
        let outstanding = f64::from(e.state.outstanding.load(Ordering::Acquire)) + 1.0;
        outstanding * (self.ewma(e, now_ms) + COST_FLOOR_NANOS) / f64::from(e.weight)
    }

    fn ewma(&self, e: &Endpoint, now_ms: u64) -> f64 {
        let value = f64::from_bits(e.state.ewma_bits.load(Ordering::Acquire));
        let age = now_ms.saturating_sub(e.state.ewma_at_ms.load(Ordering::Acquire));
        // Idle endpoints drift toward zero so they are tried again.
        let w = (-(age as f64) / EWMA_DECAY.as_millis() as f64).exp();
        value * w
    }

    /// Records a finished attempt: latency into the peak-EWMA, failures into outlier ejection.
    /// `endpoints` is the current list, to hold `max_ejected_percent`. Returns true when this
    /// call ejected the endpoint.
    pub fn record(
        &self,
        endpoints: &[Endpoint],
        endpoint: &Endpoint,
        result: EndpointResult,
        latency: Duration,
        now: Instant,
    ) -> bool {
        let now_ms = self.now_ms(now);
        let state = &endpoint.state;
        let rtt = latency.as_nanos() as f64;
        let current = self.ewma(endpoint, now_ms);
        // Peak-sensitive: a slow response counts at once, fast ones bring the average down slowly.
        let next = if rtt > current {
            rtt
        } else {
            let age = now_ms.saturating_sub(state.ewma_at_ms.load(Ordering::Acquire));
            let w = (-(age.max(1) as f64) / EWMA_DECAY.as_millis() as f64).exp();
            current * w + rtt * (1.0 - w)
        };
        state.ewma_bits.store(next.to_bits(), Ordering::Release);
        state.ewma_at_ms.store(now_ms, Ordering::Release);

        match result {
            EndpointResult::Success => {
                state.consecutive_failures.store(0, Ordering::Release);
                false
            }
            EndpointResult::Failure => {
                let failures = state.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
                if !self.outlier.enabled
                    || failures < self.outlier.consecutive_failures
                    || self.is_ejected(endpoint, now)
                {
                    return false;
                }
                let Ok(_serial) = self.ejecting.lock() else {
                    return false;
                };
                if self.is_ejected(endpoint, now) {
                    return false;
                }
                let ejected = endpoints.iter().filter(|e| self.is_ejected(e, now)).count();
                let allowed = endpoints.len() * self.outlier.max_ejected_percent as usize / 100;
                if ejected >= allowed {
                    return false;
                }
                let times = state.times_ejected.fetch_add(1, Ordering::AcqRel) + 1;
                let length = self
                    .outlier
                    .base_ejection
                    .saturating_mul(times)
                    .min(self.outlier.max_ejection);
                let until =
                    now_ms.saturating_add(u64::try_from(length.as_millis()).unwrap_or(u64::MAX));
                state.ejected_until_ms.store(until, Ordering::Release);
                state.consecutive_failures.store(0, Ordering::Release);
                true
            }
        }
    }
}

/// Highest weighted rendezvous score wins: stable for a key while the endpoint set is stable,
/// and only the keys of a removed endpoint move.
fn rendezvous<'a>(
    candidates: impl Iterator<Item = &'a Endpoint>,
    key: &[u8],
) -> Option<&'a Endpoint> {
    let key_hash = fnv1a(key, 0xcbf2_9ce4_8422_2325);
    candidates
        .map(|e| {
            let mut h = key_hash;
            match e.addr {
                SocketAddr::V4(a) => h = fnv1a(&a.ip().octets(), h),
                SocketAddr::V6(a) => h = fnv1a(&a.ip().octets(), h),
            }
            h = fnv1a(&e.addr.port().to_be_bytes(), h);
            h = mix(h);
            // Map to (0, 1) and weight it: score = -w / ln(u).
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            (-(f64::from(e.weight)) / u.ln(), e)
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, e)| e)
}

fn fnv1a(bytes: &[u8], mut hash: u64) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn mix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let stack = 0u8;
    let addr = std::ptr::addr_of!(stack) as u64;
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    mix(addr ^ time) | 1
}

/// A fast per-thread pseudo-random number (xorshift64*); good enough for load balancing and
/// jitter, not for anything secret.
pub fn random_u64() -> u64 {
    RNG.with(|cell| {
        let mut x = cell.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        cell.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A random number in `[0, 1)`.
pub fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn random_below(n: usize) -> usize {
    ((random_u64() >> 32) as usize * n) >> 32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<Endpoint> {
        (0..n)
            .map(|i| {
                Endpoint::new(
                    SocketAddr::from(([127, 0, 0, 1], 8000 + i as u16)),
                    i,
                    1,
                    Arc::new(EndpointState::default()),
                )
                .unwrap()
            })
            .collect()
    }

    fn outlier() -> OutlierConfig {
        OutlierConfig {
            enabled: true,
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_within_the_percent_cap() {
        let b = Balancer::new(BalancerKind::RoundRobin, outlier());
        let eps = endpoints(4);
        let now = Instant::now();
        for target in [0, 1, 2] {
            for i in 0..3 {
                let ejected = b.record(
                    &eps,
                    &eps[target],
                    EndpointResult::Failure,
                    Duration::from_millis(1),
                    now,
                );
                assert_eq!(
                    ejected,
                    i == 2 && target < 2,
                    "endpoint {target} failure {i}"
                );
            }
        }
        assert!(b.is_ejected(&eps[0], now) && b.is_ejected(&eps[1], now));
        assert!(
            !b.is_ejected(&eps[2], now),
            "50 % of 4 endpoints: at most 2 ejected"
        );
        for _ in 0..20 {
            let (e, _) = b.pick(&eps, now, None, None).unwrap();
            assert!(e.source >= 2, "ejected endpoints are skipped");
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(
            !b.is_ejected(&eps[0], Instant::now()),
            "ejection ends after base_ejection"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn panic_mode_uses_every_endpoint_when_none_is_usable() {
        let b = Balancer::new(BalancerKind::P2c, outlier());
        let eps = endpoints(2);
        for e in &eps {
            e.state.healthy.store(false, Ordering::Release);
        }
        assert!(b.pick(&eps, Instant::now(), None, None).is_some());
        assert_eq!(b.panic_picks.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_prefers_the_fast_endpoint_and_retries_avoid_the_last_one() {
        let b = Balancer::new(BalancerKind::P2c, outlier());
        let eps = endpoints(2);
        let now = Instant::now();
        b.record(
            &eps,
            &eps[0],
            EndpointResult::Success,
            Duration::from_millis(100),
            now,
        );
        b.record(
            &eps,
            &eps[1],
            EndpointResult::Success,
            Duration::from_millis(1),
            now,
        );
        for _ in 0..10 {
            let (e, _) = b.pick(&eps, now, None, None).unwrap();
            assert_eq!(e.source, 1);
            let (e, _) = b.pick(&eps, now, Some(eps[1].addr), None).unwrap();
            assert_eq!(e.source, 0, "a retry prefers another endpoint");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn weighted_round_robin_and_sticky_hash() {
        let rr = Balancer::new(BalancerKind::RoundRobin, outlier());
        let mut eps = endpoints(2);
        eps[0].weight = 3;
        let mut counts = [0; 2];
        for _ in 0..40 {
            counts[rr.pick(&eps, Instant::now(), None, None).unwrap().0.source] += 1;
        }
        assert_eq!(counts, [30, 10]);
        let hash = Balancer::new(
            BalancerKind::Hash(http::HeaderName::from_static("x-user")),
            outlier(),
        );
        let eps = endpoints(5);
        for user in ["alice", "bob", "carol"] {
            let first = hash
                .pick(&eps, Instant::now(), None, Some(user.as_bytes()))
                .unwrap()
                .0
                .source;
            for _ in 0..5 {
                assert_eq!(
                    hash.pick(&eps, Instant::now(), None, Some(user.as_bytes()))
                        .unwrap()
                        .0
                        .source,
                    first
                );
            }
        }
    }
}
