//! The set of running proxy listeners, which a reload may change.
//!
//! Each listener has its own accept task, its own stop signal and its own graceful-shutdown
//! watcher, and belongs to a direction (the drain closes inbound first, outbound later). A
//! reload binds new addresses before anything changes (a bind failure refuses the reload whole),
//! hands a kept socket from the old accept loop to a new one when only its settings changed (no
//! connection is refused meanwhile), and drains removed listeners: they stop accepting, idle
//! connections close, requests in flight finish within the grace period.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::listener::{self, Shared};
use super::shutdown::Shutdown;
use crate::config::model::{Direction, ListenerConfig};
use crate::proxy::{Runtime, Telemetry};

/// Pending connections the kernel queues for a proxy listener before keel accepts them. The
/// usual default (128, Rust's and tokio's) overflows when a caller opens hundreds of
/// connections at once, and overflowing handshakes stall for a SYN retransmit (a second).
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a proxy listener with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as tokio's `bind` does).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// One running listener.
#[derive(Debug)]
struct Running {
    config: ListenerConfig,
    addr: SocketAddr,
    stop: Shutdown,
    task: JoinHandle<TcpListener>,
    graceful: Arc<GracefulShutdown>,
}

impl Running {
    /// Stops accepting; returns the socket (for a successor) and the connections' watcher.
    async fn stop_accepting(self) -> (Option<TcpListener>, Arc<GracefulShutdown>) {
        self.stop.trigger();
        (self.task.await.ok(), self.graceful)
    }
}

/// Lets the connections of a listener that stopped accepting finish until `deadline`: idle
/// keep-alive connections close, HTTP/2 gets GOAWAY. Returns whether all finished in time.
async fn finish_connections(graceful: Arc<GracefulShutdown>, deadline: Instant) -> bool {
    match Arc::try_unwrap(graceful) {
        Ok(graceful) => tokio::time::timeout_at(deadline, graceful.shutdown())
            .await
            .is_ok(),
        // Only the accept loop held clones and it has ended; be safe anyway.
        Err(_) => false,
    }
}

/// Whether two versions of a listener accept and serve connections alike. Routes and the
/// per-request limits (`max_uri_bytes`, `max_request_body`, `access_log`) are read from the
/// current config on every request, so changing them needs no new accept loop.
fn same_accept_settings(a: &ListenerConfig, b: &ListenerConfig) -> bool {
    a.listen == b.listen
        && a.direction == b.direction
        && a.max_connections == b.max_connections
        && a.header_read_timeout == b.header_read_timeout
        && a.idle_timeout == b.idle_timeout
        && a.max_header_bytes == b.max_header_bytes
        && a.max_headers == b.max_headers
        && a.tls.as_ref().map(|t| t.max_handshakes) == b.tls.as_ref().map(|t| t.max_handshakes)
}

/// A listener to start: its settings and a bound socket.
#[derive(Debug)]
pub struct Bound {
    /// The listener's settings.
    pub config: ListenerConfig,
    /// The bound socket.
    pub socket: TcpListener,
}

/// What a reload changes in the listener set, prepared before the config swap.
#[derive(Debug, Default)]
pub struct Plan {
    /// New listeners, and kept names whose address changed, already bound.
    start: Vec<Bound>,
    /// Kept names whose address is the same but whose settings changed.
    restart: Vec<ListenerConfig>,
    /// Names no longer in the config.
    remove: Vec<Arc<str>>,
}

impl Plan {
    /// Whether the plan changes nothing.
    pub fn is_empty(&self) -> bool {
        self.start.is_empty() && self.restart.is_empty() && self.remove.is_empty()
    }
}

/// The proxy listeners of one keel instance.
#[derive(Debug)]
pub struct ListenerSet {
    running: Mutex<Vec<Running>>,
    runtime: Arc<ArcSwap<Runtime>>,
    telemetry: Arc<Telemetry>,
    inbound_in_flight: Arc<AtomicUsize>,
    outbound_in_flight: Arc<AtomicUsize>,
    grace_period: Duration,
}

impl ListenerSet {
    /// An empty set whose listeners will serve `runtime`.
    pub fn new(
        runtime: Arc<ArcSwap<Runtime>>,
        telemetry: Arc<Telemetry>,
        grace_period: Duration,
    ) -> Self {
        ListenerSet {
            running: Mutex::new(Vec::new()),
            runtime,
            telemetry,
            inbound_in_flight: Arc::new(AtomicUsize::new(0)),
            outbound_in_flight: Arc::new(AtomicUsize::new(0)),
            grace_period,
        }
    }

    /// Requests in flight on the listeners of `direction`.
    pub fn in_flight(&self, direction: Direction) -> &Arc<AtomicUsize> {
        match direction {
            Direction::Inbound => &self.inbound_in_flight,
            Direction::Outbound => &self.outbound_in_flight,
        }
    }

    /// Every listener's name and bound address, in start order.
    pub fn addresses(&self) -> Vec<(Arc<str>, SocketAddr)> {
        self.lock()
            .iter()
            .map(|r| (r.config.name.clone(), r.addr))
            .collect()
    }

    /// Whether a listener of `direction` runs.
    pub fn has(&self, direction: Direction) -> bool {
        self.lock().iter().any(|r| r.config.direction == direction)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Running>> {
        // A panic while holding this lock leaves a consistent list (pushes and removals only).
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts an accept loop for a bound socket.
    pub fn start(&self, bound: Bound) {
        let Bound { config, socket } = bound;
        let addr = socket.local_addr().unwrap_or(config.listen);
        tracing::info!(listener = %config.name, direction = config.direction.as_str(), %addr, "listening");
        let graceful = Arc::new(GracefulShutdown::new());
        let (stop, signal) = Shutdown::new();
        let task = tokio::spawn(listener::accept_loop(
            socket,
            config.clone(),
            Shared {
                runtime: self.runtime.clone(),
                telemetry: self.telemetry.clone(),
                graceful: graceful.clone(),
                in_flight: self.in_flight(config.direction).clone(),
            },
            signal,
        ));
        self.lock().push(Running {
            config,
            addr,
            stop,
            task,
            graceful,
        });
    }

    /// Works out (and binds) what `wanted` changes; nothing running changes yet. A bind error
    /// names the listener and the address.
    pub fn plan(&self, wanted: &[ListenerConfig]) -> Result<Plan, String> {
        let running: Vec<ListenerConfig> = self.lock().iter().map(|r| r.config.clone()).collect();
        let mut plan = Plan::default();
        for config in wanted {
            match running.iter().find(|r| r.name == config.name) {
                Some(old) if same_accept_settings(old, config) => {}
                Some(old) if old.listen == config.listen => plan.restart.push(config.clone()),
                _ => {
                    let socket = bind(config.listen).map_err(|e| {
                        format!(
                            "cannot bind listener `{}` on {}: {e}",
                            config.name, config.listen
                        )
                    })?;
                    plan.start.push(Bound {
                        config: config.clone(),
                        socket,
                    });
                }
            }
        }
        for old in &running {
            if !wanted.iter().any(|w| w.name == old.name) {
                plan.remove.push(old.name.clone());
            }
        }
        Ok(plan)
    }

    /// Carries out a plan, after the new config was swapped in.
    pub async fn apply(&self, plan: Plan) {
        let Plan {
            start,
            restart,
            remove,
        } = plan;
        let deadline = Instant::now() + self.grace_period;
        // A kept name with a new address: the old socket goes, the new one was bound already.
        let moved: Vec<Arc<str>> = start.iter().map(|b| b.config.name.clone()).collect();
        for name in moved.iter().chain(&remove) {
            if let Some(old) = self.take(name) {
                tracing::info!(listener = %name, addr = %old.addr, "listener closing");
                let (_, graceful) = old.stop_accepting().await;
                tokio::spawn(finish_connections(graceful, deadline));
            }
        }
        for bound in start {
            self.start(bound);
        }
        for config in restart {
            let Some(old) = self.take(&config.name) else {
                continue;
            };
            let addr = old.addr;
            let (socket, graceful) = old.stop_accepting().await;
            // Connections accepted under the old settings finish under them.
            tokio::spawn(finish_connections(graceful, deadline));
            match socket {
                Some(socket) => self.start(Bound { config, socket }),
                None => match bind(addr) {
                    Ok(socket) => self.start(Bound { config, socket }),
                    Err(e) => {
                        tracing::error!(listener = %config.name, %addr, error = %e, "listener lost its socket and cannot bind again");
                    }
                },
            }
        }
    }

    fn take(&self, name: &str) -> Option<Running> {
        let mut running = self.lock();
        let at = running.iter().position(|r| &*r.config.name == name)?;
        Some(running.remove(at))
    }

    /// Stops every listener of `direction` from accepting and lets their connections finish
    /// until `deadline`; returns whether they all did.
    pub async fn close(&self, direction: Direction, deadline: Instant) -> bool {
        let closing: Vec<Running> = {
            let mut running = self.lock();
            let (closing, staying) = running
                .drain(..)
                .partition(|r| r.config.direction == direction);
            *running = staying;
            closing
        };
        let mut watchers = Vec::with_capacity(closing.len());
        for listener in closing {
            watchers.push(listener.stop_accepting().await.1);
        }
        let mut all_done = true;
        for graceful in watchers {
            all_done &= finish_connections(graceful, deadline).await;
        }
        all_done
    }
}
