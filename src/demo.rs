//! Built-in demo upstreams for `keel demo`: one healthy, one slow, one flaky.
//!
//! They let a new user see keel's behaviour (routing, the bulkhead shedding load, upstream errors
//! turned into `keel-error` responses) with no other software installed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::body::ProxyBody;

/// How a demo upstream behaves.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    /// Answers 200 at once.
    Healthy,
    /// Answers 200 after a delay.
    Slow(Duration),
    /// Answers 503 to one request in `n`.
    Flaky(u64),
}

/// The addresses of the three demo upstreams.
#[derive(Debug, Clone, Copy)]
pub struct DemoUpstreams {
    /// Always fine.
    pub healthy: SocketAddr,
    /// Two seconds per request.
    pub slow: SocketAddr,
    /// Fails one request in three.
    pub flaky: SocketAddr,
}

/// Binds and serves the three demo upstreams on `ip` (ports chosen by the OS unless given).
pub async fn spawn_upstreams(
    ip: std::net::IpAddr,
    ports: [u16; 3],
) -> std::io::Result<DemoUpstreams> {
    let healthy = spawn(SocketAddr::new(ip, ports[0]), "healthy", Behaviour::Healthy).await?;
    let slow = spawn(
        SocketAddr::new(ip, ports[1]),
        "slow",
        Behaviour::Slow(Duration::from_secs(2)),
    )
    .await?;
    let flaky = spawn(SocketAddr::new(ip, ports[2]), "flaky", Behaviour::Flaky(3)).await?;
    Ok(DemoUpstreams {
        healthy,
        slow,
        flaky,
    })
}

/// Serves one demo upstream; returns its bound address.
pub async fn spawn(
    addr: SocketAddr,
    name: &'static str,
    behaviour: Behaviour,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let counter = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            let service = service_fn(move |req: Request<Incoming>| {
                let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
                answer(name, behaviour, n, req)
            });
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            tokio::spawn(connection);
        }
    });
    Ok(bound)
}

async fn answer(
    name: &'static str,
    behaviour: Behaviour,
    n: u64,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let status = match behaviour {
        Behaviour::Healthy => StatusCode::OK,
        Behaviour::Slow(delay) => {
            tokio::time::sleep(delay).await;
            StatusCode::OK
        }
        Behaviour::Flaky(every) if n.is_multiple_of(every) => StatusCode::SERVICE_UNAVAILABLE,
        Behaviour::Flaky(_) => StatusCode::OK,
    };
    let body = format!(
        "{name} upstream: {} {} -> {} (request {n})\n",
        req.method(),
        req.uri().path(),
        status.as_u16()
    );
    let mut response = Response::new(ProxyBody::bytes(body));
    *response.status_mut() = status;
    Ok(response)
}

/// The config `keel demo` runs: one listener routing by path to the three upstreams.
pub fn config(
    upstreams: &DemoUpstreams,
    listen: SocketAddr,
    admin: SocketAddr,
    metrics: SocketAddr,
) -> String {
    format!(
        r#"[admin]
listen = "{admin}"

[metrics]
listen = "{metrics}"

[shutdown]
grace_period = "5s"

[[listeners]]
name = "demo"
direction = "outbound"
listen = "{listen}"

  [[listeners.routes]]
  name = "healthy"
  match = {{ path_prefix = "/healthy" }}
  upstream = "healthy"

  [[listeners.routes]]
  name = "slow"
  match = {{ path_prefix = "/slow" }}
  upstream = "slow"
  timeout = "3s"

  [[listeners.routes]]
  name = "flaky"
  match = {{ path_prefix = "/flaky" }}
  upstream = "flaky"

[upstreams.healthy]
endpoints = ["{healthy}"]

[upstreams.slow]
endpoints = ["{slow}"]
  [upstreams.slow.pool]
  max_requests = 2
  max_pending = 2
  queue_timeout = "500ms"

[upstreams.flaky]
endpoints = ["{flaky}"]
"#,
        healthy = upstreams.healthy,
        slow = upstreams.slow,
        flaky = upstreams.flaky,
    )
}
