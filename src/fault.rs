//! Fault injection: time-boxed delays, aborts, resets and slow bodies, scoped by route, upstream
//! and header, from the config file or the admin API.
//!
//! Requests read one atomic snapshot of the active faults; with none active that is the whole
//! cost. Every fault has an expiry and is skipped once it passes; `DELETE /faults` removes all of
//! them at once. Injected failures are keel's own: they carry `keel-error: fault-injected` and do
//! not count against the breaker or the retry budget unless a fault says `count_for_breaker`.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::HeaderMap;
use http_body::Frame;
use prometheus::IntCounterVec;
use serde_json::{json, Value};

use crate::config::model::{FaultAction, FaultConfig};
use crate::upstream::balancer::random_unit;

/// A fault with the id the admin API shows.
#[derive(Debug)]
pub struct ActiveFault {
    /// Stable id for this run.
    pub id: u64,
    /// `config` or `api`.
    pub source: &'static str,
    /// What, where, how often and until when.
    pub config: FaultConfig,
}

/// The set of faults of one keel instance.
#[derive(Debug)]
pub struct Chaos {
    from_config: Mutex<Vec<Arc<ActiveFault>>>,
    from_api: Mutex<Vec<Arc<ActiveFault>>>,
    active: ArcSwap<Vec<Arc<ActiveFault>>>,
    next_id: AtomicU64,
    injected: IntCounterVec,
}

impl Chaos {
    /// An empty set; `injected` is `keel_faults_injected_total`.
    pub fn new(injected: IntCounterVec) -> Self {
        Chaos {
            from_config: Mutex::new(Vec::new()),
            from_api: Mutex::new(Vec::new()),
            active: ArcSwap::from_pointee(Vec::new()),
            next_id: AtomicU64::new(1),
            injected,
        }
    }

    fn wrap(&self, faults: Vec<FaultConfig>, source: &'static str) -> Vec<Arc<ActiveFault>> {
        faults
            .into_iter()
            .map(|config| {
                Arc::new(ActiveFault {
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    source,
                    config,
                })
            })
            .collect()
    }

    fn publish(&self) {
        let mut all = Vec::new();
        if let Ok(config) = self.from_config.lock() {
            all.extend(config.iter().cloned());
        }
        if let Ok(api) = self.from_api.lock() {
            all.extend(api.iter().cloned());
        }
        self.active.store(Arc::new(all));
    }

    /// Replaces the faults that came from the config file (at start and on reload).
    pub fn set_config_faults(&self, faults: Vec<FaultConfig>) {
        let wrapped = self.wrap(faults, "config");
        if let Ok(mut config) = self.from_config.lock() {
            *config = wrapped;
        }
        self.publish();
    }

    /// Adds faults from the admin API; returns their ids.
    pub fn add(&self, faults: Vec<FaultConfig>) -> Vec<u64> {
        let wrapped = self.wrap(faults, "api");
        let ids = wrapped.iter().map(|f| f.id).collect();
        if let Ok(mut api) = self.from_api.lock() {
            api.extend(wrapped);
        }
        self.publish();
        ids
    }

    /// The kill switch: removes every fault at once. Returns how many there were.
    pub fn clear(&self) -> usize {
        let mut removed = 0;
        if let Ok(mut config) = self.from_config.lock() {
            removed += config.len();
            config.clear();
        }
        if let Ok(mut api) = self.from_api.lock() {
            removed += api.len();
            api.clear();
        }
        self.publish();
        removed
    }

    /// Active (unexpired) faults with time left, for `GET /faults`.
    pub fn list(&self, now: SystemTime) -> Value {
        let active = self.active.load();
        Value::Array(
            active
                .iter()
                .filter_map(|f| {
                    let left = f.config.expires_at.duration_since(now).ok()?;
                    Some(json!({
                        "id": f.id,
                        "name": &*f.config.name,
                        "source": f.source,
                        "kind": f.config.action.kind(),
                        "route": f.config.route.as_deref(),
                        "upstream": f.config.upstream.as_deref(),
                        "header": f.config.header.as_ref().map(|(n, v)| json!({"name": n.as_str(), "value": v.to_str().unwrap_or("")})),
                        "percent": f.config.percent,
                        "count_for_breaker": f.config.count_for_breaker,
                        "seconds_left": left.as_secs_f64(),
                    }))
                })
                .collect(),
        )
    }

    /// The first active fault that matches this request and whose dice roll hits, if any.
    pub fn pick(
        &self,
        route: &str,
        upstream: &str,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Option<Arc<ActiveFault>> {
        let active = self.active.load();
        if active.is_empty() {
            return None;
        }
        let hit = active.iter().find(|f| {
            let c = &f.config;
            c.expires_at > now
                && c.route.as_deref().is_none_or(|r| r == route)
                && c.upstream.as_deref().is_none_or(|u| u == upstream)
                && c.header
                    .as_ref()
                    .is_none_or(|(n, v)| headers.get_all(n).iter().any(|x| x == v))
                && random_unit() * 100.0 < c.percent
        })?;
        self.injected
            .with_label_values(&[hit.config.action.kind()])
            .inc();
        Some(hit.clone())
    }
}

/// How long a delay fault holds a request.
pub fn delay_of(action: &FaultAction) -> Option<Duration> {
    match action {
        FaultAction::Delay { delay, jitter } => Some(*delay + jitter.mul_f64(random_unit())),
        _ => None,
    }
}

/// Paces a response body to `rate` bytes per second, in slices of a tenth of a second.
#[derive(Debug)]
pub struct Throttle {
    rate: u64,
    leftover: Option<Bytes>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Throttle {
    /// A throttle at `rate` bytes per second.
    pub fn new(rate: u64) -> Self {
        Throttle {
            rate: rate.max(1),
            leftover: None,
            sleep: None,
        }
    }

    /// Waits for the pace, then hands out the next slice of buffered data, if any.
    pub fn poll_slice(&mut self, cx: &mut Context<'_>) -> Poll<Option<Frame<Bytes>>> {
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        let Some(mut data) = self.leftover.take() else {
            return Poll::Ready(None);
        };
        let slice = usize::try_from((self.rate / 10).max(1)).unwrap_or(usize::MAX);
        let chunk = if data.len() > slice {
            let head = data.split_to(slice);
            self.leftover = Some(data);
            head
        } else {
            data
        };
        let pause = Duration::from_secs_f64(chunk.len() as f64 / self.rate as f64);
        self.sleep = Some(Box::pin(tokio::time::sleep(pause)));
        Poll::Ready(Some(Frame::data(chunk)))
    }

    /// Whether data is waiting to be sent.
    pub fn has_leftover(&self) -> bool {
        self.leftover.is_some() || self.sleep.is_some()
    }

    /// Queues data from the upstream.
    pub fn push(&mut self, data: Bytes) {
        self.leftover = Some(data);
    }
}
