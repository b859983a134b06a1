//! Live reload: re-read the config file, validate it, and swap it in without dropping traffic.
//!
//! Triggers: a change of the file (watched through its directory, so Kubernetes ConfigMap
//! updates, which swap a symlink, are seen), SIGHUP, and `POST /reload` on the admin listener.
//! A file with any error is refused whole and the running config keeps serving; the error
//! (FILE:LINE:COL lines) is logged, shown in `/config` and counted in
//! `keel_config_reloads_total{result="error"}`. A valid file replaces routes and upstreams
//! atomically: requests in flight finish on the config they started with; upstreams whose
//! settings did not change keep their pool, breaker, ejections and health state. New listeners
//! are bound before the swap (a bind error refuses the reload), removed ones stop accepting and
//! drain, changed ones keep their socket (see [`crate::server::listeners`]).
//!
//! The admin and metrics listeners, tracing and the log and access-log outputs are set up at
//! start: a reload that changes them is refused with a message saying a restart is needed,
//! rather than applied halfway.
//!
//! Certificates, keys and CA bundles are read again on every reload, and the directories that
//! hold them are watched too (cert-manager and Kubernetes secrets rotate files in place or swap
//! a symlink), so a rotation is a reload even when the config text is the same. New TLS
//! handshakes use the new files; established connections keep the session they have. A broken
//! new file is refused like any invalid config (FILE:LINE:COL of the setting and the PEM
//! problem), and the previous certificate keeps serving.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, Mutex as AsyncMutex};

use crate::config::{self, model::Config};
use crate::proxy::{Runtime, Telemetry};
use crate::server::listeners::ListenerSet;
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
    listeners: Arc<ListenerSet>,
    allow_faults: bool,
}

impl Reloader {
    /// A reloader for the config at `path` (none: reloads are refused).
    pub fn new(
        path: Option<PathBuf>,
        runtime: Arc<ArcSwap<Runtime>>,
        metrics: Arc<Metrics>,
        telemetry: Arc<Telemetry>,
        listeners: Arc<ListenerSet>,
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
            listeners,
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
            Ok(text) => match config::from_str(&text, &path.display().to_string()) {
                Err(errors) => Err(errors.to_string()),
                Ok(mut config) => {
                    let same_text = last_text.as_deref() == Some(text.as_str());
                    let current = self.runtime.load_full();
                    if same_text && same_tls_files(&current.config, &config) {
                        Ok(ReloadOutcome::Unchanged)
                    } else {
                        if same_text {
                            // Only certificate files changed: keep the faults as they were
                            // loaded (an `expires_in` would otherwise start again).
                            config.faults = current.config.faults.clone();
                        }
                        let warnings = config.warnings.clone();
                        let outcome = self.apply(config).await;
                        if outcome.is_ok() {
                            *last_text = Some(text);
                            for warning in warnings {
                                tracing::warn!(%warning, "config warning");
                            }
                        }
                        outcome
                    }
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
                    .with_label_values(&["error"])
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
        // Bind new listener addresses first: a taken port refuses the reload before anything
        // changed (the sockets bound so far close when the plan is dropped).
        let plan = self.listeners.plan(&config.listeners)?;
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
        if !plan.is_empty() {
            self.listeners.apply(plan).await;
        }
        Ok(ReloadOutcome::Applied { rebuilt, kept })
    }
}

/// Whether two configs were built from the same certificate, key and CA files.
fn same_tls_files(old: &Config, new: &Config) -> bool {
    let listeners = |c: &Config| -> Vec<_> {
        c.listeners
            .iter()
            .map(|l| l.tls.as_ref().map(|t| t.loaded.clone()))
            .collect()
    };
    let upstreams = |c: &Config| -> Vec<_> {
        c.upstreams
            .iter()
            .map(|u| u.tls.as_ref().map(|t| t.loaded.clone()))
            .collect()
    };
    listeners(old) == listeners(new) && upstreams(old) == upstreams(new)
}

/// The directories to watch: the config file's and those of every TLS file it names.
fn watched_dirs(config_path: &Path, config: &Config) -> Vec<PathBuf> {
    let dir_of = |p: &Path| {
        p.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    };
    let mut dirs = vec![dir_of(config_path)];
    for file in config::tls_files(config) {
        let dir = dir_of(&file);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
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
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "reload refused: {}; restart keel to change these (listeners, routes and upstreams reload live)",
            problems.join("; ")
        ))
    }
}

/// Reloads on SIGHUP and when the file (or a certificate file it names) changes, until the
/// reloader is dropped.
pub fn watch(reloader: &Arc<Reloader>) -> Result<(), String> {
    let Some(path) = reloader.path.clone() else {
        return Ok(());
    };
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // A full channel means a reload is already due.
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| format!("cannot watch the config directory: {e}"))?;
    let mut watched = Vec::new();
    for dir in watched_dirs(&path, &reloader.runtime.load().config) {
        notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        watched.push(dir);
    }
    let weak = Arc::downgrade(reloader);
    tokio::spawn(async move {
        let mut watcher = watcher;
        while rx.recv().await.is_some() {
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let Some(reloader) = weak.upgrade() else {
                return;
            };
            let _ = reloader.reload().await;
            // A reload may name certificate files in new directories: watch those too.
            for dir in watched_dirs(&path, &reloader.runtime.load().config) {
                if !watched.contains(&dir) {
                    match notify::Watcher::watch(
                        &mut watcher,
                        &dir,
                        notify::RecursiveMode::NonRecursive,
                    ) {
                        Ok(()) => watched.push(dir),
                        Err(e) => {
                            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a certificate directory; rotations there need a reload")
                        }
                    }
                }
            }
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
