//! Structure-aware config fuzzing: a document built from keel's real keys (see
//! `keel_fuzz::doc`), with edge values, wrong types and unknown keys, rendered to TOML and
//! checked by `keel::config::from_str`. It must never panic; when it accepts the document every
//! invariant of `keel_fuzz::invariants` holds (route targets index real upstreams, limits in
//! range, names unique, durations usable in `Instant` arithmetic).
#![no_main]

use keel_fuzz::{doc::Doc, invariants};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|doc: Doc| {
    let text = doc.to_toml();
    let result = keel::config::from_str(&text, "fuzz.toml");
    invariants::error_count_feedback(&result);
    invariants::check_result(&text, &result);
});
