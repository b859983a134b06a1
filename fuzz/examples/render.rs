//! Prints the TOML document a `config_structured` input renders to, and what
//! `keel::config::from_str` makes of it: `cargo run --example render -- FILE...` (from `fuzz/`).
//! `cargo fuzz fmt` shows only the `Doc` structure; this shows the text keel parsed.

use arbitrary::{Arbitrary, Unstructured};
use keel_fuzz::doc::Doc;

fn main() {
    for path in std::env::args().skip(1) {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{path}: {e}");
                continue;
            }
        };
        println!("=== {path}");
        match Doc::arbitrary_take_rest(Unstructured::new(&bytes)) {
            Ok(doc) => {
                let text = doc.to_toml();
                println!("{text}");
                match keel::config::from_str(&text, "fuzz.toml") {
                    Ok(_) => println!("--- accepted"),
                    Err(e) => println!("--- refused:\n{e}"),
                }
            }
            Err(e) => println!("--- not a Doc: {e}"),
        }
    }
}
