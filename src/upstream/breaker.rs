//! The circuit breaker of one upstream: a pure state machine.
//!
//! Time is passed in and transitions are returned; the caller holds it behind a short-lived lock
//! and emits the log line and metrics for each [`Transition`]. States use the standard names:
//! `Closed` (traffic flows), `Open` (requests fail fast with 503 `circuit-open`) and `HalfOpen`
//! (a few probe requests decide between the two).
//!
//! Only upstream failures are recorded here (connect errors, resets, timeouts, failure statuses):
//! keel's own rejections and client cancellations never reach the breaker.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::time::Duration;

use tokio::time::Instant;

use crate::config::model::BreakerConfig;

/// Number of buckets the rolling window is cut into.
const BUCKETS: usize = 10;

/// The three states, as exposed in `keel_breaker_state` (0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Traffic flows; failures are counted.
    Closed,
    /// Probes decide whether to close again.
    HalfOpen,
    /// Requests are rejected without touching the upstream.
    Open,
}

impl BreakerState {
    /// Name used in logs, admin output and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "Closed",
            BreakerState::HalfOpen => "HalfOpen",
            BreakerState::Open => "Open",
        }
    }

    /// Gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// A state change and why it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// State before.
    pub from: BreakerState,
    /// State after.
    pub to: BreakerState,
    /// `consecutive_failures`, `failure_rate`, `slow_call_rate`, `open_elapsed`,
    /// `probe_failed` or `probes_succeeded`.
    pub reason: &'static str,
}

/// What the breaker says about a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed: go ahead.
    Allowed,
    /// HalfOpen: go ahead as one of the probes; report its result with `probe = true`.
    Probe,
    /// Open (or HalfOpen with every probe slot taken): fail fast.
    Rejected {
        /// Time until the next probe may go through.
        retry_after: Duration,
    },
}

/// How a call to the upstream ended, as far as the breaker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    /// A response that is not a failure status.
    Success {
        /// Slower than `slow_call_threshold`.
        slow: bool,
    },
    /// Connect error, reset, timeout or failure status.
    Failure,
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    epoch: u64,
    calls: u32,
    failures: u32,
    slow: u32,
}

/// The breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    since: Instant,
    reason: &'static str,
    consecutive_failures: u32,
    buckets: [Bucket; BUCKETS],
    started: Instant,
    opens_in_a_row: u32,
    open_until: Instant,
    probes_admitted: u32,
    probes_succeeded: u32,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig, now: Instant) -> Self {
        Breaker {
            config,
            state: BreakerState::Closed,
            since: now,
            reason: "start",
            consecutive_failures: 0,
            buckets: [Bucket::default(); BUCKETS],
            started: now,
            opens_in_a_row: 0,
            open_until: now,
            probes_admitted: 0,
            probes_succeeded: 0,
        }
    }

    /// Current state.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// When the current state began.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Why the current state began.
    pub fn reason(&self) -> &'static str {
        self.reason
    }

    /// Whether latency matters (slow calls are tracked).
    pub fn slow_call_threshold(&self) -> Option<Duration> {
        self.config
            .slow_call_rate
            .map(|_| self.config.slow_call_threshold)
    }

    /// Whether `status` counts as a failure.
    pub fn is_failure_status(&self, status: u16) -> bool {
        self.config.failure_statuses.contains(&status)
    }

    /// Whether a `grpc-status` code counts as a failure.
    pub fn is_failure_grpc(&self, code: u16) -> bool {
        self.config.grpc_failure_statuses.contains(&code)
    }

    /// Decides on a new request; may move Open → HalfOpen when the open time is over.
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        if !self.config.enabled {
            return (Admission::Allowed, None);
        }
        let mut transition = None;
        if self.state == BreakerState::Open {
            if now < self.open_until {
                return (
                    Admission::Rejected {
                        retry_after: self.open_until - now,
                    },
                    None,
                );
            }
            self.probes_admitted = 0;
            self.probes_succeeded = 0;
            transition = Some(self.move_to(BreakerState::HalfOpen, "open_elapsed", now));
        }
        let admission = match self.state {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::HalfOpen if self.probes_admitted < self.config.half_open_probes => {
                self.probes_admitted += 1;
                Admission::Probe
            }
            // Every probe slot is taken: callers wait for the probes' verdict.
            BreakerState::HalfOpen | BreakerState::Open => Admission::Rejected {
                retry_after: Duration::from_secs(1),
            },
        };
        (admission, transition)
    }

    /// A probe ended without a verdict (client went away, keel rejected it): free its slot.
    pub fn cancel_probe(&mut self) {
        if self.state == BreakerState::HalfOpen {
            self.probes_admitted = self.probes_admitted.saturating_sub(1);
        }
    }

    /// Records a finished call. `probe` says whether it was admitted as a probe; `jitter` is a
    /// random number in `[0, 1)` that spreads open times.
    pub fn record(
        &mut self,
        now: Instant,
        result: CallResult,
        probe: bool,
        jitter: f64,
    ) -> Option<Transition> {
        if !self.config.enabled {
            return None;
        }
        match (self.state, probe) {
            (BreakerState::HalfOpen, true) => match result {
                CallResult::Failure => Some(self.open(now, "probe_failed", jitter)),
                CallResult::Success { .. } => {
                    self.probes_succeeded += 1;
                    if self.probes_succeeded >= self.config.half_open_probes {
                        self.opens_in_a_row = 0;
                        self.consecutive_failures = 0;
                        self.buckets = [Bucket::default(); BUCKETS];
                        Some(self.move_to(BreakerState::Closed, "probes_succeeded", now))
                    } else {
                        None
                    }
                }
            },
            (BreakerState::Closed, _) => self.record_closed(now, result, jitter),
            // Late results of calls admitted before the state changed decide nothing.
            _ => None,
        }
    }

    fn record_closed(
        &mut self,
        now: Instant,
        result: CallResult,
        jitter: f64,
    ) -> Option<Transition> {
        let bucket = self.bucket(now);
        bucket.calls += 1;
        match result {
            CallResult::Failure => {
                bucket.failures += 1;
                self.consecutive_failures += 1;
            }
            CallResult::Success { slow } => {
                if slow {
                    bucket.slow += 1;
                }
                self.consecutive_failures = 0;
            }
        }
        let threshold = self.config.consecutive_failures;
        if threshold > 0 && self.consecutive_failures >= threshold {
            return Some(self.open(now, "consecutive_failures", jitter));
        }
        let (calls, failures, slow) = self.totals(now);
        if calls >= self.config.min_requests && calls > 0 {
            let rate = self.config.failure_rate;
            if rate > 0.0 && f64::from(failures) / f64::from(calls) >= rate {
                return Some(self.open(now, "failure_rate", jitter));
            }
            if let Some(slow_rate) = self.config.slow_call_rate {
                if f64::from(slow) / f64::from(calls) >= slow_rate {
                    return Some(self.open(now, "slow_call_rate", jitter));
                }
            }
        }
        None
    }

    fn open(&mut self, now: Instant, reason: &'static str, jitter: f64) -> Transition {
        self.opens_in_a_row = self.opens_in_a_row.saturating_add(1);
        let doubling = self.opens_in_a_row.saturating_sub(1).min(16);
        let base = self
            .config
            .open_for
            .saturating_mul(1u32 << doubling)
            .min(self.config.max_open_for);
        // ±20 % jitter so breakers of many pods do not probe in lockstep.
        let factor = 0.8 + 0.4 * jitter.clamp(0.0, 1.0);
        let open_for = base.mul_f64(factor).min(self.config.max_open_for);
        self.open_until = now + open_for;
        self.consecutive_failures = 0;
        self.buckets = [Bucket::default(); BUCKETS];
        self.move_to(BreakerState::Open, reason, now)
    }

    fn move_to(&mut self, to: BreakerState, reason: &'static str, now: Instant) -> Transition {
        let from = self.state;
        self.state = to;
        self.since = now;
        self.reason = reason;
        Transition { from, to, reason }
    }

    /// When the breaker will let a probe through (meaningful while Open).
    pub fn open_until(&self) -> Instant {
        self.open_until
    }

    fn epoch(&self, now: Instant) -> u64 {
        let width = (self.config.window / BUCKETS as u32).max(Duration::from_millis(1));
        u64::try_from(now.saturating_duration_since(self.started).as_nanos() / width.as_nanos())
            .unwrap_or(u64::MAX)
    }

    fn bucket(&mut self, now: Instant) -> &mut Bucket {
        let epoch = self.epoch(now);
        let slot = &mut self.buckets[(epoch % BUCKETS as u64) as usize];
        if slot.epoch != epoch {
            *slot = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        slot
    }

    fn totals(&self, now: Instant) -> (u32, u32, u32) {
        let current = self.epoch(now);
        self.buckets
            .iter()
            .filter(|b| b.calls > 0 && current.saturating_sub(b.epoch) < BUCKETS as u64)
            .fold((0, 0, 0), |(c, f, s), b| {
                (c + b.calls, f + b.failures, s + b.slow)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::defaults;

    fn config() -> BreakerConfig {
        BreakerConfig {
            enabled: true,
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Duration::from_secs(10),
            min_requests: 20,
            slow_call_threshold: Duration::from_millis(100),
            slow_call_rate: None,
            open_for: Duration::from_secs(5),
            max_open_for: Duration::from_secs(60),
            half_open_probes: 3,
            failure_statuses: defaults::BREAKER_FAILURE_STATUSES.to_vec(),
            grpc_failure_statuses: defaults::BREAKER_GRPC_FAILURE_STATUSES.to_vec(),
        }
    }

    const OK: CallResult = CallResult::Success { slow: false };

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_closes_after_probes() {
        let mut b = Breaker::new(config(), Instant::now());
        for _ in 0..4 {
            assert_eq!(
                b.record(Instant::now(), CallResult::Failure, false, 0.5),
                None
            );
        }
        let t = b
            .record(Instant::now(), CallResult::Failure, false, 0.5)
            .unwrap();
        assert_eq!(
            (t.from, t.to, t.reason),
            (
                BreakerState::Closed,
                BreakerState::Open,
                "consecutive_failures"
            )
        );
        match b.admit(Instant::now()).0 {
            Admission::Rejected { retry_after } => assert_eq!(retry_after, Duration::from_secs(5)),
            other => panic!("{other:?}"),
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        let (admission, t) = b.admit(Instant::now());
        assert_eq!(admission, Admission::Probe);
        assert_eq!(t.unwrap().reason, "open_elapsed");
        assert_eq!(b.admit(Instant::now()).0, Admission::Probe);
        assert_eq!(b.admit(Instant::now()).0, Admission::Probe);
        assert!(
            matches!(b.admit(Instant::now()).0, Admission::Rejected { .. }),
            "only 3 probes"
        );
        assert_eq!(b.record(Instant::now(), OK, true, 0.5), None);
        assert_eq!(b.record(Instant::now(), OK, true, 0.5), None);
        let t = b.record(Instant::now(), OK, true, 0.5).unwrap();
        assert_eq!((t.to, t.reason), (BreakerState::Closed, "probes_succeeded"));
        assert_eq!(b.admit(Instant::now()).0, Admission::Allowed);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_for_twice_as_long_up_to_the_cap() {
        let mut b = Breaker::new(config(), Instant::now());
        for _ in 0..5 {
            b.record(Instant::now(), CallResult::Failure, false, 0.5);
        }
        let mut expected = Duration::from_secs(5);
        for _ in 0..6 {
            tokio::time::advance(b.open_until() - Instant::now()).await;
            assert_eq!(b.admit(Instant::now()).0, Admission::Probe);
            let t = b
                .record(Instant::now(), CallResult::Failure, true, 0.5)
                .unwrap();
            assert_eq!(t.reason, "probe_failed");
            expected = (expected * 2).min(Duration::from_secs(60));
            assert_eq!(b.open_until() - Instant::now(), expected);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_trips_with_interleaved_successes_after_min_requests() {
        let mut b = Breaker::new(config(), Instant::now());
        // Alternate: never 5 failures in a row; half fail.
        for i in 0..19 {
            let r = if i % 2 == 0 { CallResult::Failure } else { OK };
            assert_eq!(b.record(Instant::now(), r, false, 0.5), None, "call {i}");
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        let t = b
            .record(Instant::now(), CallResult::Failure, false, 0.5)
            .unwrap();
        assert_eq!(t.reason, "failure_rate");
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_leave_the_window() {
        let mut b = Breaker::new(config(), Instant::now());
        for _ in 0..15 {
            b.record(Instant::now(), CallResult::Failure, false, 0.5);
            b.record(Instant::now(), OK, false, 0.5);
        }
        assert_eq!(b.state(), BreakerState::Open, "30 calls at 50 % trip");
        let mut b = Breaker::new(config(), Instant::now());
        for _ in 0..9 {
            b.record(Instant::now(), CallResult::Failure, false, 0.5);
            b.record(Instant::now(), OK, false, 0.5);
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..19 {
            assert_eq!(b.record(Instant::now(), OK, false, 0.5), None);
        }
        b.record(Instant::now(), CallResult::Failure, false, 0.5);
        assert_eq!(
            b.state(),
            BreakerState::Closed,
            "the early failures expired"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_calls_trip_only_when_enabled() {
        let mut off = Breaker::new(config(), Instant::now());
        let mut on = Breaker::new(
            BreakerConfig {
                slow_call_rate: Some(0.5),
                ..config()
            },
            Instant::now(),
        );
        for _ in 0..20 {
            off.record(
                Instant::now(),
                CallResult::Success { slow: true },
                false,
                0.5,
            );
            on.record(
                Instant::now(),
                CallResult::Success { slow: true },
                false,
                0.5,
            );
        }
        assert_eq!(off.state(), BreakerState::Closed);
        assert_eq!(
            (on.state(), on.reason()),
            (BreakerState::Open, "slow_call_rate")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_probe_frees_its_slot_and_disabled_breaker_never_opens() {
        let mut b = Breaker::new(config(), Instant::now());
        for _ in 0..5 {
            b.record(Instant::now(), CallResult::Failure, false, 0.5);
        }
        tokio::time::advance(Duration::from_secs(6)).await;
        for _ in 0..3 {
            assert_eq!(b.admit(Instant::now()).0, Admission::Probe);
        }
        b.cancel_probe();
        assert_eq!(b.admit(Instant::now()).0, Admission::Probe);

        let mut off = Breaker::new(
            BreakerConfig {
                enabled: false,
                ..config()
            },
            Instant::now(),
        );
        for _ in 0..100 {
            assert_eq!(
                off.record(Instant::now(), CallResult::Failure, false, 0.5),
                None
            );
        }
        assert_eq!(off.admit(Instant::now()).0, Admission::Allowed);
    }
}
