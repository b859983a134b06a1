//! The admin listener (loopback by default): `/live` and `/ready` for orchestrator probes.
//!
//! `/ready` answers 503 until every listener is bound and again from the moment a drain starts,
//! so load balancers stop sending before keel stops accepting.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::body::ProxyBody;
use crate::server::shutdown::ShutdownSignal;

/// Process-wide health flags read by the probes.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Marks keel ready (listeners bound) or not (starting, draining).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Whether `/ready` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

fn respond(health: &Health, req: &Request<Incoming>) -> Response<ProxyBody> {
    let (status, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/live") => (StatusCode::OK, "live\n"),
        (&Method::GET | &Method::HEAD, "/ready") if health.is_ready() => {
            (StatusCode::OK, "ready\n")
        }
        (&Method::GET | &Method::HEAD, "/ready") => {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
        }
        (_, "/live" | "/ready") => (StatusCode::METHOD_NOT_ALLOWED, "use GET\n"),
        _ => (StatusCode::NOT_FOUND, "keel admin: /live, /ready\n"),
    };
    let mut response = Response::new(ProxyBody::text(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Serves admin requests until `stop` fires.
pub(crate) async fn serve(listener: TcpListener, health: Arc<Health>, mut stop: ShutdownSignal) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            // An operator or a probe connected.
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(error = %err, "admin accept failed");
                    continue;
                }
            },
            // keel is exiting.
            () = stop.triggered() => return,
        };
        let health = health.clone();
        let service = service_fn(move |req| {
            let response = respond(&health, &req);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            tokio::pin!(connection);
            tokio::select! {
                // The probe finished.
                _ = connection.as_mut() => {}
                // keel is exiting: close after the current response.
                () = stop.triggered() => connection.as_mut().graceful_shutdown(),
            }
        });
    }
}
