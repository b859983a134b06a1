//! Telemetry: metrics (and, later, traces and access logs), kept off the request path's
//! critical section.

pub mod access_log;
pub mod metrics;
pub mod trace;
