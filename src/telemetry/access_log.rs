//! The access log: one JSON line per request, on listeners with `access_log = true`.
//!
//! A record is built only when the listener logs, filled in as the request moves along, and
//! sent when the response body ends (so duration and bytes are final). Sending is a `try_send`
//! into a bounded queue; a writer task serialises and writes the lines. When the writer falls
//! behind, lines are dropped and counted in `keel_access_log_dropped_total`, never waited for.

use std::io::Write;
use std::time::SystemTime;

use prometheus::IntCounter;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::model::{AccessLogConfig, AccessLogOutput};

/// Lines held for the writer at most.
const QUEUE: usize = 4096;

/// What went on, besides the status.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Flags {
    /// More than one attempt was made.
    pub retried: bool,
    /// Rejected by an open circuit breaker.
    pub breaker_open: bool,
    /// Rejected by a full bulkhead.
    pub bulkhead_full: bool,
    /// The upstream did not answer in time.
    pub timed_out: bool,
    /// The kind of fault injected into this request, if any.
    pub fault: Option<&'static str>,
}

/// One access log line.
#[derive(Debug, Default, Clone, Serialize)]
pub struct AccessRecord {
    /// RFC 3339, milliseconds, UTC; when the request head was read.
    pub timestamp: String,
    /// Listener name.
    pub listener: String,
    /// Route name (empty without a route).
    pub route: String,
    /// Upstream name (empty without a route).
    pub upstream: String,
    /// Endpoint address that answered.
    pub endpoint: Option<String>,
    /// Request method.
    pub method: String,
    /// Request authority.
    pub authority: String,
    /// Request path (no query string: it may carry secrets).
    pub path: String,
    /// Response status.
    pub status: u16,
    /// `keel-error` reason when keel answered itself.
    pub keel_error: Option<&'static str>,
    /// Flags.
    pub flags: Flags,
    /// Attempts made upstream.
    pub attempts: u32,
    /// Time from request head to response end, milliseconds.
    pub duration_ms: f64,
    /// Time spent waiting for the upstream's response head, milliseconds.
    pub upstream_duration_ms: Option<f64>,
    /// Request body bytes forwarded.
    pub bytes_in: u64,
    /// Response body bytes sent.
    pub bytes_out: u64,
    /// Trace id (hex).
    pub trace_id: String,
    /// This hop's span id (hex).
    pub span_id: String,
    /// `x-request-id`.
    pub request_id: String,
    /// The gRPC status of a gRPC response (from its trailers, or its head when trailers-only).
    pub grpc_status: Option<u16>,
    /// The verified client certificate identity, on TLS listeners with client certificates.
    pub client_identity: Option<String>,
}

/// The sending side, cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: mpsc::Sender<Box<AccessRecord>>,
    dropped: IntCounter,
}

impl AccessLog {
    /// Starts the writer task for `config`'s output.
    pub fn start(config: &AccessLogConfig, dropped: IntCounter) -> std::io::Result<Self> {
        let sink: Box<dyn Write + Send> = match &config.output {
            AccessLogOutput::Stdout => Box::new(std::io::stdout()),
            AccessLogOutput::File(path) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        std::thread::Builder::new()
            .name("keel-access-log".into())
            .spawn(move || write_loop(rx, sink))?;
        Ok(AccessLog { tx, dropped })
    }

    /// Queues a finished record; drops and counts it when the writer is behind.
    pub fn send(&self, record: Box<AccessRecord>) {
        if self.tx.try_send(record).is_err() {
            self.dropped.inc();
        }
    }
}

/// Runs on its own thread: file writes may block, the runtime's workers must not.
fn write_loop(mut rx: mpsc::Receiver<Box<AccessRecord>>, sink: Box<dyn Write + Send>) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, sink);
    while let Some(record) = rx.blocking_recv() {
        let mut next = Some(record);
        while let Some(record) = next {
            if serde_json::to_writer(&mut out, &record).is_ok() {
                let _ = out.write_all(b"\n");
            }
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
}

/// A record being filled in, sent when dropped (the response body ended or was abandoned).
#[derive(Debug)]
pub struct PendingRecord {
    record: Option<Box<AccessRecord>>,
    started: Instant,
    bytes_in: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Response body bytes sent so far.
    pub bytes_out: u64,
    log: AccessLog,
}

impl PendingRecord {
    /// Wraps a record whose request started at `started`.
    pub fn new(
        record: Box<AccessRecord>,
        started: Instant,
        bytes_in: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
        log: AccessLog,
    ) -> Self {
        PendingRecord {
            record: Some(record),
            started,
            bytes_in,
            bytes_out: 0,
            log,
        }
    }
}

impl PendingRecord {
    /// Records the `grpc-status` found in the response trailers.
    pub fn set_grpc_status(&mut self, code: Option<u16>) {
        if let (Some(record), Some(code)) = (self.record.as_mut(), code) {
            record.grpc_status = Some(code);
        }
    }
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.duration_ms = self.started.elapsed().as_secs_f64() * 1000.0;
            record.bytes_out = self.bytes_out;
            if let Some(counter) = &self.bytes_in {
                record.bytes_in = counter.load(std::sync::atomic::Ordering::Relaxed);
            }
            self.log.send(record);
        }
    }
}

/// Now as RFC 3339 with milliseconds.
pub fn timestamp() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}
