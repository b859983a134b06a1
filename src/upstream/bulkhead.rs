//! The bulkhead: hard limits on requests in flight and waiting, per upstream.
//!
//! A request takes an owned slot permit that travels with its response body and is released when
//! the body ends or is dropped, on every path. When all slots are taken a request may wait, but
//! only if fewer than `max_pending` others already wait, and only for `queue_timeout`. Excess load
//! is shed at once with 503 instead of piling up behind a slow upstream.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::model::PoolConfig;
use crate::error::Rejection;

/// In-flight and queue limits of one upstream.
#[derive(Debug)]
pub struct Bulkhead {
    slots: Arc<Semaphore>,
    max_requests: usize,
    pending: AtomicUsize,
    max_pending: usize,
    queue_timeout: Duration,
}

/// One in-flight slot; dropping it frees the slot.
#[derive(Debug)]
pub struct BulkheadPermit {
    _slot: OwnedSemaphorePermit,
}

/// Decrements the pending count when a queued request stops waiting, however it stops.
struct PendingGuard<'a>(&'a AtomicUsize);

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Bulkhead {
    /// A bulkhead with the pool's limits.
    pub fn new(pool: &PoolConfig) -> Self {
        Bulkhead {
            slots: Arc::new(Semaphore::new(pool.max_requests.get())),
            max_requests: pool.max_requests.get(),
            pending: AtomicUsize::new(0),
            max_pending: pool.max_pending,
            queue_timeout: pool.queue_timeout,
        }
    }

    /// Takes a slot, waiting in the bounded queue if needed.
    pub async fn acquire(&self) -> Result<BulkheadPermit, Rejection> {
        if let Ok(slot) = self.slots.clone().try_acquire_owned() {
            return Ok(BulkheadPermit { _slot: slot });
        }
        let already_waiting = self.pending.fetch_add(1, Ordering::AcqRel);
        let _pending = PendingGuard(&self.pending);
        if already_waiting >= self.max_pending {
            return Err(Rejection::QueueFull);
        }
        match tokio::time::timeout(self.queue_timeout, self.slots.clone().acquire_owned()).await {
            Ok(Ok(slot)) => Ok(BulkheadPermit { _slot: slot }),
            // The semaphore is never closed; treat it as full should that ever change.
            Ok(Err(_closed)) => Err(Rejection::QueueFull),
            Err(_elapsed) => Err(Rejection::QueueTimeout),
        }
    }

    /// Requests holding a slot now.
    pub fn active(&self) -> usize {
        self.max_requests - self.slots.available_permits()
    }

    /// Requests waiting for a slot now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroUsize;

    fn bulkhead(max_requests: usize, max_pending: usize) -> Bulkhead {
        Bulkhead::new(&PoolConfig {
            max_connections: NonZeroUsize::new(1).unwrap(),
            max_requests: NonZeroUsize::new(max_requests).unwrap(),
            max_pending,
            queue_timeout: Duration::from_millis(100),
            idle_timeout: Duration::from_secs(5),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_rejects_at_once_and_waiters_time_out() {
        let b = Arc::new(bulkhead(1, 1));
        let held = b.acquire().await.unwrap();
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.acquire().await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(b.pending(), 1);
        assert_eq!(b.acquire().await.unwrap_err(), Rejection::QueueFull);
        assert_eq!(waiter.await.unwrap().unwrap_err(), Rejection::QueueTimeout);
        assert_eq!(b.pending(), 0);
        drop(held);
        assert_eq!(b.active(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiter_gets_slot_when_freed() {
        let b = Arc::new(bulkhead(1, 4));
        let held = b.acquire().await.unwrap();
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.acquire().await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        drop(held);
        assert!(waiter.await.unwrap().is_ok());
    }
}
