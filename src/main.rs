//! The `keel` command line: `run`, `check` and `demo`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use keel::config::model::{Config, LogFormat};

/// keel: a sidecar reverse proxy with bulkheads, timeouts and graceful drains, configured from
/// one TOML file.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve traffic with a config file until SIGTERM or SIGINT, then drain gracefully.
    Run {
        /// Path of the TOML config file (see config/keel.toml for every key).
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Log line format; overrides `[log] format`.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
        /// Allow `[[faults]]` entries in the config (refused otherwise, so a stray fault cannot
        /// reach production by accident).
        #[arg(long)]
        allow_faults: bool,
    },
    /// Check a config file and print every problem as FILE:LINE:COL; exit 1 if there is one.
    Check {
        /// Path of the TOML config file.
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run keel in front of three built-in upstreams (healthy, slow, flaky) on loopback.
    Demo {
        /// Address of the demo listener (a free port is used if this one is taken).
        #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
        listen: SocketAddr,
        /// Address of the admin listener (a free port is used if this one is taken).
        #[arg(long, default_value = "127.0.0.1:9900", value_name = "ADDR")]
        admin: SocketAddr,
        /// Address of the metrics listener (a free port is used if this one is taken).
        #[arg(long, default_value = "127.0.0.1:9901", value_name = "ADDR")]
        metrics: SocketAddr,
        /// Only serve the three demo upstreams on these ports (healthy, slow, flaky), without
        /// keel in front; for containers that play an app beside a keel sidecar.
        #[arg(long, num_args = 3, value_names = ["HEALTHY", "SLOW", "FLAKY"])]
        upstreams_only: Option<Vec<u16>>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run {
            config,
            log_format,
            allow_faults,
        } => {
            let path = config;
            let config = match keel::config::load(&path) {
                Ok(config) => config,
                Err(errors) => {
                    eprintln!("{errors}");
                    eprintln!(
                        "keel: {} problem(s) in {}; not starting",
                        errors.errors.len(),
                        errors.file
                    );
                    return ExitCode::FAILURE;
                }
            };
            let format = match log_format {
                Some(LogFormatArg::Json) => LogFormat::Json,
                Some(LogFormatArg::Text) => LogFormat::Text,
                None => config.log.format,
            };
            init_logging(format, &config.log.level);
            let workers = config.runtime.worker_threads();
            report(runtime(workers).and_then(|rt| rt.block_on(run(config, path, allow_faults))))
        }
        Command::Demo {
            listen,
            admin,
            metrics,
            upstreams_only,
        } => {
            init_logging(LogFormat::Text, "info");
            report(
                runtime(keel::config::model::defaults::worker_threads())
                    .and_then(|rt| rt.block_on(demo(listen, admin, metrics, upstreams_only))),
            )
        }
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("keel: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(workers: std::num::NonZeroUsize) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.get())
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn check(path: &Path) -> ExitCode {
    match keel::config::load(path) {
        Ok(config) => {
            for warning in &config.warnings {
                println!("warning: {warning}");
            }
            println!(
                "{}: ok: {} listener(s), {} route(s), {} upstream(s)",
                path.display(),
                config.listeners.len(),
                config.route_count(),
                config.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            println!("{errors}");
            println!("{} problem(s) found", errors.errors.len());
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn run(config: Config, path: PathBuf, allow_faults: bool) -> anyhow::Result<()> {
    let running = keel::server::start_with(config, Some(path), allow_faults).await?;
    keel::reload::watch(running.reloader()).map_err(|e| anyhow::anyhow!(e))?;
    tokio::select! {
        // SIGTERM or SIGINT.
        result = wait_for_signal() => result?,
        // POST /shutdown on the admin listener (a finished batch job stopping its sidecar).
        () = running.shutdown_requested() => {}
    }
    running.drain().await;
    Ok(())
}

/// Waits for SIGTERM (orchestrators) or SIGINT (Ctrl-C).
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    tokio::select! {
        // Orchestrator stop.
        _ = term.recv() => tracing::info!("SIGTERM received"),
        // Ctrl-C.
        result = tokio::signal::ctrl_c() => {
            result.context("cannot listen for SIGINT")?;
            tracing::info!("SIGINT received");
        }
    }
    Ok(())
}

async fn bind_or_any(addr: SocketAddr) -> SocketAddr {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => addr,
        Err(_) => SocketAddr::new(addr.ip(), 0),
    }
}

async fn demo(
    listen: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
    upstreams_only: Option<Vec<u16>>,
) -> anyhow::Result<()> {
    if let Some(ports) = upstreams_only {
        let ports = [ports[0], ports[1], ports[2]];
        let ip = std::net::IpAddr::from([0, 0, 0, 0]);
        let up = keel::demo::spawn_upstreams(ip, ports)
            .await
            .context("cannot bind demo upstreams")?;
        println!(
            "demo upstreams: healthy {}, slow {}, flaky {}",
            up.healthy, up.slow, up.flaky
        );
        wait_for_signal().await?;
        return Ok(());
    }
    let upstreams = keel::demo::spawn_upstreams([127, 0, 0, 1].into(), [0, 0, 0])
        .await
        .context("cannot bind demo upstreams")?;
    let text = keel::demo::config(
        &upstreams,
        bind_or_any(listen).await,
        bind_or_any(admin).await,
        bind_or_any(metrics).await,
    );
    let config = keel::config::from_str(&text, "<demo>").map_err(|e| anyhow::anyhow!("{e}"))?;
    let running = keel::server::start(config).await?;
    let proxy = running
        .listener_addr("demo")
        .context("demo listener missing")?;
    let admin = running.admin_addr();
    let metrics = running.metrics_addr();
    println!(
        r#"
keel demo is running on http://{proxy} (admin on http://{admin})

Try:
  curl -i http://{proxy}/healthy            # forwarded to the healthy upstream
  curl -i http://{proxy}/flaky              # every third request: 503 from the upstream
  curl -i http://{proxy}/nowhere            # 404 with keel-error: no-route
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' http://{proxy}/slow & done; wait; echo
                                            # 2 run at once (2 s each), 2 wait up to 500 ms: 4 get 503 bulkhead-full
  curl -i http://{admin}/ready              # readiness probe
  curl -s http://{admin}/upstreams          # breaker, bulkhead and endpoint state as JSON
  curl -s http://{metrics}/metrics          # Prometheus metrics

Ctrl-C drains in-flight requests and exits.
"#
    );
    wait_for_signal().await?;
    running.drain().await;
    Ok(())
}
