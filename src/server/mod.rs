//! Starting and stopping keel: bind every listener, serve, drain.
//!
//! [`start`] binds the proxy listeners and the admin listener (errors name the listener and the
//! address), builds the upstreams, spawns the accept loops and only then marks keel ready.
//! [`Running::drain`] is the stop sequence of DESIGN.md: `/ready` goes 503 at once, listeners
//! close after `drain_delay`, in-flight requests get up to `grace_period`, and it returns as soon
//! as nothing is in flight.

pub mod conn;
pub mod framing;
pub mod listener;
pub mod listeners;
pub mod shutdown;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admin::{self, Health};
use crate::config::model::Config;
use crate::config::model::Direction;
use crate::fault::Chaos;
use crate::proxy::{Runtime, Telemetry};
use crate::reload::Reloader;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::Tracing;
use crate::upstream::Upstream;
use listeners::ListenerSet;
use shutdown::Shutdown;
use std::sync::atomic::Ordering;

/// Why keel could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The config has `[[faults]]` but keel was not started with `--allow-faults`.
    #[error("the config has {0} [[faults]] entr(y/ies); start with --allow-faults to inject them, or remove them")]
    FaultsNotAllowed(usize),
    /// The OTLP exporter could not be built.
    #[error("tracing: {0}")]
    Tracing(String),
    /// The access log output could not be opened.
    #[error("cannot open the access log: {0}")]
    AccessLog(#[source] std::io::Error),
    /// A listen address could not be bound.
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: String,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// A running keel.
#[derive(Debug)]
pub struct Running {
    listeners: Arc<ListenerSet>,
    admin_addr: SocketAddr,
    metrics_addr: SocketAddr,
    metrics: Arc<Metrics>,
    metrics_task: JoinHandle<()>,
    telemetry: Arc<Telemetry>,
    reloader: Arc<Reloader>,
    health: Arc<Health>,
    runtime: Arc<ArcSwap<Runtime>>,
    stop_admin: Shutdown,
    admin_task: JoinHandle<()>,
    stop_requested: Arc<tokio::sync::Notify>,
    drain_delay: Duration,
    grace_period: Duration,
}

/// How long outbound listeners must have had nothing in flight before they close in a drain:
/// an app that is shutting down may still make calls between quiet moments.
const OUTBOUND_QUIET: Duration = Duration::from_secs(1);

/// Builds the upstreams for a config, in config order, with their metric handles.
pub async fn build_runtime(config: Config, metrics: &Metrics) -> Runtime {
    let mut upstreams = Vec::with_capacity(config.upstreams.len());
    for upstream in &config.upstreams {
        upstreams.push(Upstream::new(upstream.clone(), metrics.upstream(&upstream.name)).await);
    }
    Runtime::new(Arc::new(config), upstreams, metrics)
}

/// Binds everything and starts serving, with reloads refused (no file to reload from).
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, None, false).await
}

/// Binds everything and starts serving; `source` is the file reloads read, `allow_faults`
/// permits `[[faults]]` in it (the `--allow-faults` flag).
pub async fn start_with(
    config: Config,
    source: Option<std::path::PathBuf>,
    allow_faults: bool,
) -> Result<Running, StartError> {
    let mut bound = Vec::with_capacity(config.listeners.len());
    for listener in &config.listeners {
        let socket = listeners::bind(listener.listen).map_err(|source| StartError::Bind {
            what: format!("listener `{}`", listener.name),
            addr: listener.listen,
            source,
        })?;
        let addr = socket.local_addr().map_err(|source| StartError::Bind {
            what: format!("listener `{}`", listener.name),
            addr: listener.listen,
            source,
        })?;
        let _ = addr;
        bound.push(listeners::Bound {
            config: listener.clone(),
            socket,
        });
    }
    let admin_socket = TcpListener::bind(config.admin.listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "the admin listener".into(),
            addr: config.admin.listen,
            source,
        })?;
    let admin_addr = admin_socket
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "the admin listener".into(),
            addr: config.admin.listen,
            source,
        })?;

    let metrics_socket = TcpListener::bind(config.metrics.listen)
        .await
        .map_err(|source| StartError::Bind {
            what: "the metrics listener".into(),
            addr: config.metrics.listen,
            source,
        })?;
    let metrics_addr = metrics_socket
        .local_addr()
        .map_err(|source| StartError::Bind {
            what: "the metrics listener".into(),
            addr: config.metrics.listen,
            source,
        })?;

    for warning in &config.warnings {
        tracing::warn!(%warning, "config warning");
    }
    let drain_delay = config.shutdown.drain_delay;
    let grace_period = config.shutdown.grace_period;
    let metrics = Arc::new(Metrics::new());
    let tracing = Tracing::new(&config.tracing, metrics.spans_dropped.clone())
        .map_err(StartError::Tracing)?;
    let access_log = if config.listeners.iter().any(|l| l.access_log) {
        Some(
            AccessLog::start(&config.access_log, metrics.access_log_dropped.clone())
                .map_err(StartError::AccessLog)?,
        )
    } else {
        None
    };
    if !config.faults.is_empty() && !allow_faults {
        return Err(StartError::FaultsNotAllowed(config.faults.len()));
    }
    let chaos = Chaos::new(metrics.faults_injected.clone());
    chaos.set_config_faults(config.faults.clone());
    let telemetry = Arc::new(Telemetry {
        tracing,
        access_log,
        chaos,
    });
    let runtime = Arc::new(ArcSwap::from_pointee(build_runtime(config, &metrics).await));
    let health = Arc::new(Health::default());
    let (stop_admin, admin_signal) = Shutdown::new();
    let stop_requested = Arc::new(tokio::sync::Notify::new());
    let listeners = Arc::new(ListenerSet::new(
        runtime.clone(),
        telemetry.clone(),
        grace_period,
    ));
    for bound in bound {
        listeners.start(bound);
    }
    tracing::info!(addr = %admin_addr, "admin listening");
    tracing::info!(addr = %metrics_addr, "metrics listening");
    let metrics_task = tokio::spawn(admin::serve_metrics(
        metrics_socket,
        metrics.clone(),
        runtime.clone(),
        admin_signal.clone(),
    ));
    let reloader = Reloader::new(
        source,
        runtime.clone(),
        metrics.clone(),
        telemetry.clone(),
        listeners.clone(),
        allow_faults,
    );
    let admin_task = tokio::spawn(admin::serve(
        admin_socket,
        health.clone(),
        runtime.clone(),
        reloader.clone(),
        telemetry.clone(),
        stop_requested.clone(),
        admin_signal,
    ));
    health.set_ready(true);
    Ok(Running {
        listeners,
        admin_addr,
        metrics_addr,
        metrics,
        metrics_task,
        telemetry,
        reloader,
        health,
        runtime,
        stop_admin,
        admin_task,
        stop_requested,
        drain_delay,
        grace_period,
    })
}

impl Running {
    /// The bound address of a listener, by name.
    pub fn listener_addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners
            .addresses()
            .into_iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, a)| a)
    }

    /// Every listener's name and bound address (reloads may add and remove listeners).
    pub fn listeners(&self) -> Vec<(Arc<str>, SocketAddr)> {
        self.listeners.addresses()
    }

    /// The admin listener's bound address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// The metrics listener's bound address.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Telemetry and fault injection of this instance.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// The config reloader (file watch and SIGHUP start with [`crate::reload::watch`]).
    pub fn reloader(&self) -> &Arc<Reloader> {
        &self.reloader
    }

    /// Sends every finished span to the collector now (bounded wait).
    pub async fn flush_traces(&self) {
        self.telemetry.tracing.flush().await;
    }

    /// This instance's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The current runtime (config and upstreams).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Resolves when `POST /shutdown` asked keel to stop.
    pub async fn shutdown_requested(&self) {
        self.stop_requested.notified().await;
    }

    /// Stops gracefully, in the order a sidecar needs: `/ready` turns 503 at once; after
    /// `drain_delay` inbound listeners stop accepting and their requests finish; outbound
    /// listeners keep serving the app's calls until they have been idle for a second (the app
    /// may still be finishing its work), then close too. Everything is bounded by
    /// `grace_period`; returns whether everything finished in time, and returns as soon as it
    /// has (it never sleeps out the grace period).
    pub async fn drain(self) -> bool {
        self.health.set_ready(false);
        tracing::info!(drain_delay = ?self.drain_delay, grace_period = ?self.grace_period, "draining");
        if !self.drain_delay.is_zero() {
            tokio::time::sleep(self.drain_delay).await;
        }
        let deadline = tokio::time::Instant::now() + self.grace_period;
        let inbound_done = self.listeners.close(Direction::Inbound, deadline).await;
        if self.listeners.has(Direction::Outbound) {
            let outbound_in_flight = self.listeners.in_flight(Direction::Outbound).clone();
            let mut quiet_since = tokio::time::Instant::now();
            loop {
                let now = tokio::time::Instant::now();
                if outbound_in_flight.load(Ordering::Acquire) > 0 {
                    quiet_since = now;
                }
                if now >= deadline || now.duration_since(quiet_since) >= OUTBOUND_QUIET {
                    break;
                }
                // A drain happens once per process: a coarse poll keeps it simple.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let outbound_done = self.listeners.close(Direction::Outbound, deadline).await;
        let finished = inbound_done && outbound_done;
        if finished {
            tracing::info!("drained");
        } else {
            tracing::warn!("grace period over; closing the remaining connections");
        }
        self.stop_admin.trigger();
        let _ = self.admin_task.await;
        let _ = self.metrics_task.await;
        self.telemetry.tracing.shutdown().await;
        finished
    }
}
