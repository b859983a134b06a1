//! `keel check` and config loading: every error at once with FILE:LINE:COL and a hint; every
//! example in config/ is valid; `keel run` refuses a bad file.

mod support;

use std::process::Command;

use support::temp_path;

fn keel(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

const BAD: &str = r#"[[listeners]]
name = "outbound"
listen = "127.0.0.1:15001"
  [[listeners.routes]]
  match = { host = "payments" }
  upstream = "payment"

[upstreams.payments]
endpoints = ["127.0.0.1:8080"]
conect_timeout = "1s"
  [upstreams.payments.pool]
  max_requests = "many"
"#;

#[test]
fn check_reports_typo_wrong_type_and_dangling_upstream_together() {
    let path = temp_path("bad.toml");
    std::fs::write(&path, BAD).unwrap();
    let file = path.display().to_string();
    let (code, out) = keel(&["check", "--config", &file]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code, 1, "{out}");
    let dangling = format!("{file}:6:14: route names upstream `payment`, which is not defined");
    let typo = format!("{file}:10:1: unknown key `conect_timeout`");
    let wrong_type = format!("{file}:12:18: wrong type for `max_requests`");
    for expected in [&dangling, &typo, &wrong_type] {
        assert!(
            out.contains(expected.as_str()),
            "missing `{expected}` in:\n{out}"
        );
    }
    assert!(out.contains("did you mean `payments`?"), "{out}");
    assert!(out.contains("did you mean `connect_timeout`?"), "{out}");
    assert!(
        out.contains("allowed keys here: endpoints, connect_timeout, dns_refresh, pool"),
        "{out}"
    );
    assert!(out.contains("3 problem(s) found"), "{out}");
}

#[test]
fn check_reports_semantic_errors_with_fixes() {
    let text = r#"[[listeners]]
name = "a"
listen = "127.0.0.1:15001"
  [[listeners.routes]]
  upstream = "u"
  timeout = "1s"
  retry = { attempts = 2, per_try_timeout = "2s" }
[[listeners]]
name = "a"
listen = "127.0.0.1:15001"
  [[listeners.routes]]
  upstream = "u"
  timeout = "5"
[upstreams.u]
endpoints = ["no-port"]
"#;
    let err = keel::config::from_str(text, "x.toml").unwrap_err();
    let shown = err.to_string();
    for needle in [
        "x.toml:7:45: per_try_timeout must be shorter than the route's timeout",
        "x.toml:9:8: duplicate listener name `a`",
        "x.toml:10:10: duplicate listen address `127.0.0.1:15001`",
        "x.toml:13:13: invalid duration `5`",
        "x.toml:15:14: invalid endpoint `no-port`",
    ] {
        assert!(shown.contains(needle), "missing `{needle}` in:\n{shown}");
    }
    assert_eq!(err.errors.len(), 5, "{shown}");
}

#[test]
fn every_example_in_config_dir_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        if let Err(e) = keel::config::load(&path) {
            panic!("{e}");
        }
        let (code, out) = keel(&["check", "--config", &path.display().to_string()]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains(": ok: "), "{out}");
        checked += 1;
    }
    assert!(checked >= 1, "config/ has no example files");
}

#[test]
fn run_refuses_a_bad_config_and_says_why() {
    let path = temp_path("bad-run.toml");
    std::fs::write(&path, BAD).unwrap();
    let (code, out) = keel(&["run", "--config", &path.display().to_string()]);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not starting"), "{out}");
    let (code, out) = keel(&["check", "--config", "/nonexistent/keel.toml"]);
    assert_eq!(code, 1);
    assert!(
        out.contains("/nonexistent/keel.toml:1:1: cannot read config"),
        "{out}"
    );
}

#[test]
fn every_subcommand_has_help_and_version_works() {
    let (code, out) = keel(&["--version"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with(&format!("keel {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    for sub in ["run", "check", "demo"] {
        let (code, out) = keel(&[sub, "--help"]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("Usage: keel"), "{out}");
    }
    let (_, out) = keel(&["run", "--help"]);
    assert!(
        out.contains("--config <FILE>") && out.contains("--log-format"),
        "{out}"
    );
}
