//! Arbitrary bytes (as lossy UTF-8) into `keel::config::from_str`: it must never panic, an
//! accepted config must keep `keel check`'s promises, and a refused one must locate its errors.
#![no_main]

use keel_fuzz::invariants;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let result = keel::config::from_str(&text, "fuzz.toml");
    invariants::error_count_feedback(&result);
    invariants::check_result(&text, &result);
});
