//! Live reload: re-read the config file, validate it, and swap it in without dropping traffic.
//!
//! Triggers: a change of the file (watched through its directory, so Kubernetes ConfigMap
//! updates, which swap a symlink, are seen), SIGHUP, and `POST /reload` on the admin listener.
//! A file with any error is refused whole and the running config keeps serving; the error
//! (FILE:LINE:COL lines) is logged, shown in `/config` and counted in
//! `keel_config_reloads_total{result="failure"}`. A valid file replaces routes and upstreams
//! atomically: requests in flight finish on the config they started with; upstreams whose
//! settings did not change keep their pool, breaker, ejections and health state.
//!
//! Listener addresses and settings, the admin and metrics listeners, tracing and the access log
//! output are bound at start: a reload that changes them is refused with a message saying a
//! restart is needed, rather than applied halfway.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, Mutex as AsyncMutex};

use crate::config::{self, model::Config};
use crate::proxy::{Runtime, Telemetry};
use crate::telemetry::metrics::Metrics;
use crate::upstream::Upstream;

/// How long file events are collected before one reload (editors write in several steps).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The outcome of a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// The new config serves.
    Applied {
        /// Upstreams rebuilt because their settings changed (or that are new).
        rebuilt: Vec<String>,
        /// Upstreams kept with their state.
        kept: Vec<String>,
    },
    /// The file is the same as the one serving.
    Unchanged,
}

/// Reloads a running keel's config.
#[derive(Debug)]
pub struct Reloader {
    path: Option<PathBuf>,
    runtime: Arc<ArcSwap<Runtime>>,
    metrics: Arc<Metrics>,
    last_text: AsyncMutex<Option<String>>,
    last_error: Mutex<Option<String>>,
    telemetry: Arc<Telemetry>,
    allow_faults: bool,
}

impl Reloader {
    /// A reloader for the config at `path` (none: reloads are refused).
    pub fn new(
        path: Option<PathBuf>,
        runtime: Arc<ArcSwap<Runtime>>,
        metrics: Arc<Metrics>,
        telemetry: Arc<Telemetry>,
        allow_faults: bool,
    ) -> Arc<Self> {
        let last_text = path
            .as_deref()
            .and_then(|p| std::fs::read_to_string(p).ok());
        Arc::new(Reloader {
            path,
            runtime,
            metrics,
            last_text: AsyncMutex::new(last_text),
            last_error: Mutex::new(None),
            telemetry,
            allow_faults,
        })
    }

    /// The error of the last failed reload, cleared by a successful one.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// The file reloads read.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reads, validates and applies the file. On error the running config stays.
    pub async fn reload(&self) -> Result<ReloadOutcome, String> {
        let Some(path) = &self.path else {
            return Err("keel was started without a config file; nothing to reload".into());
        };
        // One reload at a time; the lock also guards `last_text`.
        let mut last_text = self.last_text.lock().await;
        let result = match std::fs::read_to_string(path) {
            Err(e) => Err(format!("{}:1:1: cannot read config: {e}", path.display())),
            Ok(text) if last_text.as_deref() == Some(text.as_str()) => Ok(ReloadOutcome::Unchanged),
            Ok(text) => match config::from_str(&text, &path.display().to_string()) {
                Err(errors) => Err(errors.to_string()),
                Ok(config) => {
                    let outcome = self.apply(config).await;
                    if outcome.is_ok() {
                        *last_text = Some(text);
                    }
                    outcome
                }
            },
        };
        match &result {
            Ok(ReloadOutcome::Unchanged) => {}
            Ok(ReloadOutcome::Applied { rebuilt, kept }) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["success"])
                    .inc();
                if let Ok(mut e) = self.last_error.lock() {
                    *e = None;
                }
                tracing::info!(?rebuilt, ?kept, "config reloaded");
            }
            Err(error) => {
                self.metrics
                    .config_reloads
                    .with_label_values(&["failure"])
                    .inc();
                if let Ok(mut e) = self.last_error.lock() {
                    *e = Some(error.clone());
                }
                tracing::error!(%error, "config reload refused; the previous config keeps serving");
            }
        }
        result
    }

    async fn apply(&self, config: Config) -> Result<ReloadOutcome, String> {
        let current = self.runtime.load_full();
        check_restart_only(&current.config, &config)?;
        if !config.faults.is_empty() && !self.allow_faults {
            return Err(format!(
                "reload refused: the file has {} [[faults]] entr(y/ies) and keel runs without --allow-faults",
                config.faults.len()
            ));
        }
        self.telemetry
            .chaos
            .set_config_faults(config.faults.clone());
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        let (mut rebuilt, mut kept) = (Vec::new(), Vec::new());
        for wanted in &config.upstreams {
            match current.upstreams.iter().find(|u| u.config == *wanted) {
                Some(same) => {
                    kept.push(wanted.name.to_string());
                    upstreams.push(same.clone());
                }
                None => {
                    rebuilt.push(wanted.name.to_string());
                    upstreams.push(
                        Upstream::new(wanted.clone(), self.metrics.upstream(&wanted.name)).await,
                    );
                }
            }
        }
        let runtime = Runtime::new(Arc::new(config), upstreams, &self.metrics);
        self.runtime.store(Arc::new(runtime));
        Ok(ReloadOutcome::Applied { rebuilt, kept })
    }
}

/// Settings bound at start; changing them needs a restart.
fn check_restart_only(old: &Config, new: &Config) -> Result<(), String> {
    let mut problems = Vec::new();
    if old.admin != new.admin || old.metrics != new.metrics {
        problems.push("the admin or metrics listener address changed".to_owned());
    }
    if old.tracing != new.tracing
        || old.access_log != new.access_log
        || old.log != new.log
        || old.runtime != new.runtime
    {
        problems.push("[tracing], [access_log], [log] or [runtime] changed".to_owned());
    }
    if old.listeners.len() != new.listeners.len() {
        problems.push("listeners were added or removed".to_owned());
    }
    for (a, b) in old.listeners.iter().zip(&new.listeners) {
        let same_socket = a.name == b.name
            && a.listen == b.listen
            && a.direction == b.direction
            && a.max_connections == b.max_connections
            && a.header_read_timeout == b.header_read_timeout
            && a.idle_timeout == b.idle_timeout
            && a.max_header_bytes == b.max_header_bytes
            && a.max_headers == b.max_headers
            && a.access_log == b.access_log;
        if !same_socket {
            problems.push(format!(
                "listener `{}` changed more than its routes",
                a.name
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "reload refused: {}; only routes and upstreams reload live, restart keel for the rest",
            problems.join("; ")
        ))
    }
}

/// Reloads on SIGHUP and when the file changes, until the reloader is dropped.
pub fn watch(reloader: &Arc<Reloader>) -> Result<(), String> {
    let Some(path) = reloader.path.clone() else {
        return Ok(());
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // A full channel means a reload is already due.
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    let weak = Arc::downgrade(reloader);
    tokio::spawn(async move {
        let _watcher = watcher;
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let Some(reloader) = weak.upgrade() else {
                return;
            };
            let _ = reloader.reload().await;
        }
    });
    let weak = Arc::downgrade(reloader);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let Some(reloader) = weak.upgrade() else {
                return;
            };
            tracing::info!("SIGHUP received; reloading");
            let _ = reloader.reload().await;
        }
    });
    Ok(())
}
