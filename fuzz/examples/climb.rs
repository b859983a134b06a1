//! Searches for `config_structured` inputs that keel accepts with at least one listener, route
//! and upstream, to seed the corpus: `cargo run --release --example climb -- SEED OUT_FILE`
//! (from `fuzz/`). The seeds only mean something for the current `Doc` layout, so run this
//! again after changing `src/doc.rs` or `src/grammar.rs`.
//!
//! A hill climb from random bytes: mutate (replace, insert, remove a few bytes), keep the
//! mutant when it has no more errors than the best so far, stop at an accepted document with a
//! listener and at least `RICH` listeners, routes, upstreams and faults in all.

use arbitrary::{Arbitrary, Unstructured};
use keel_fuzz::doc::Doc;

const RICH: usize = 4;
const STEPS: u64 = 3_000_000;

/// Lower is better: errors of a document with a route (documents without one rank below any
/// with one), then, among accepted ones, the number of listeners, routes, upstreams and faults.
fn score(bytes: &[u8]) -> (usize, usize) {
    let Ok(doc) = Doc::arbitrary_take_rest(Unstructured::new(bytes)) else {
        return (usize::MAX, 0);
    };
    let text = doc.to_toml();
    match keel::config::from_str(&text, "climb.toml") {
        Ok(c) if c.listeners.is_empty() => (1000, 0),
        Ok(c) => {
            let routes: usize = c.listeners.iter().map(|l| l.routes.len()).sum();
            (
                0,
                c.listeners.len() + routes + c.upstreams.len() + c.faults.len(),
            )
        }
        Err(e) if text.contains("[[listeners.routes]]") => (e.errors.len(), 0),
        Err(e) => (1000 + e.errors.len(), 0),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let out = args.next().unwrap_or_else(|| format!("climb-{seed}"));
    let mut x = 0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
    let mut random = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut best: Vec<u8> = (0..300).map(|_| random() as u8).collect();
    let mut best_score = score(&best);
    for step in 0..STEPS {
        let mut next = best.clone();
        for _ in 0..1 + random() % 4 {
            let at = random() as usize % next.len();
            match random() % 3 {
                0 if next.len() < 600 => next.insert(at, random() as u8),
                1 if next.len() > 50 => {
                    next.remove(at);
                }
                _ => next[at] = random() as u8,
            }
        }
        let s = score(&next);
        if s.0 < best_score.0 || (s.0 == best_score.0 && s.1 >= best_score.1) {
            best = next;
            best_score = s;
        }
        if best_score.0 == 0 && best_score.1 >= RICH {
            println!("accepted after {step} steps");
            break;
        }
    }
    if let Ok(doc) = Doc::arbitrary_take_rest(Unstructured::new(&best)) {
        println!("{}", doc.to_toml());
    }
    println!("errors {}, richness {}", best_score.0, best_score.1);
    if let Err(e) = std::fs::write(&out, &best) {
        eprintln!("{out}: {e}");
    }
}
