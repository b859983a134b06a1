//! `/metrics` against known traffic, checked by value, by `promtool check metrics`, and by a
//! real Prometheus server scraping keel.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// The value of the sample `name{labels}` (all given labels must match), if present.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}

async fn keel_with_traffic() -> (Keel, TestUpstream) {
    let ok = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&format!(
        r#"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  name = "api"
  match = {{ path_prefix = "/api/" }}
  upstream = "backend"
[upstreams.backend]
endpoints = ["{}"]
"#,
        ok.addr
    ))
    .await;
    let addr = keel.addr("main");
    for _ in 0..3 {
        assert_eq!(get(addr, "svc", "/api/x").await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(get(addr, "svc", "/nope").await.status, 404);
    }
    (keel, ok)
}

async fn scrape(keel: &Keel) -> String {
    let reply = get(keel.metrics(), "metrics", "/metrics").await;
    assert_eq!(reply.status, 200);
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    reply.body
}

#[tokio::test]
async fn known_traffic_gives_exact_values() {
    let (keel, _up) = keel_with_traffic().await;
    let text = scrape(&keel).await;
    let route = [
        ("listener", "main"),
        ("route", "api"),
        ("upstream", "backend"),
    ];
    let with_class = |class| {
        let mut l = route.to_vec();
        l.push(("code_class", class));
        l
    };
    assert_eq!(
        sample(&text, "keel_requests_total", &with_class("2xx")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "keel_requests_total", &with_class("5xx")),
        Some(0.0)
    );
    let no_route = [
        ("listener", "main"),
        ("route", ""),
        ("upstream", ""),
        ("code_class", "4xx"),
    ];
    assert_eq!(sample(&text, "keel_requests_total", &no_route), Some(2.0));
    assert_eq!(
        sample(&text, "keel_request_duration_seconds_count", &route),
        Some(3.0)
    );
    let inf = [
        ("listener", "main"),
        ("route", "api"),
        ("upstream", "backend"),
        ("le", "+Inf"),
    ];
    assert_eq!(
        sample(&text, "keel_request_duration_seconds_bucket", &inf),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "keel_upstream_requests_active",
            &[("upstream", "backend")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "keel_upstream_requests_pending",
            &[("upstream", "backend")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "keel_upstream_connections",
            &[("upstream", "backend"), ("state", "idle")]
        ),
        Some(1.0),
        "one pooled connection, idle"
    );
    assert_eq!(
        sample(&text, "keel_breaker_state", &[("upstream", "backend")]),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "keel_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert!(sample(&text, "process_resident_memory_bytes", &[]).unwrap_or(0.0) > 0.0);
    assert!(sample(&text, "process_open_fds", &[]).unwrap_or(0.0) > 0.0);
    // No label value ever comes from the request: the paths and hosts sent are absent.
    assert!(!text.contains("/nope") && !text.contains("svc\""));
}

#[tokio::test]
async fn breaker_and_rejections_are_counted() {
    let failing = upstream(Behaviour::Status(503)).await;
    let keel = spawn_keel(&single_route(
        failing.addr,
        "[upstreams.up.breaker]\nconsecutive_failures = 2\nopen_for = \"60s\"\nmax_open_for = \"60s\"",
        "",
    ))
    .await;
    for _ in 0..4 {
        get(keel.addr("main"), "svc", "/").await;
    }
    let text = scrape(&keel).await;
    assert_eq!(
        sample(&text, "keel_breaker_state", &[("upstream", "up")]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "keel_breaker_transitions_total",
            &[
                ("upstream", "up"),
                ("from", "Closed"),
                ("to", "Open"),
                ("reason", "consecutive_failures")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "keel_upstream_rejected_total",
            &[("upstream", "up"), ("reason", "circuit_open")]
        ),
        Some(2.0)
    );
    let route = [("route", "up"), ("code_class", "5xx")];
    assert_eq!(
        sample(&text, "keel_requests_total", &route),
        Some(4.0),
        "keel's own 503s count too"
    );
}

#[tokio::test]
async fn promtool_accepts_the_exposition() {
    let Ok(status) = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
    else {
        eprintln!(
            "SKIPPED: promtool not found (scripts/test.sh installs Debian's `prometheus` package)"
        );
        return;
    };
    assert!(status.success());
    let (keel, _up) = keel_with_traffic().await;
    let text = scrape(&keel).await;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Kills the Prometheus server when the test ends, however it ends.
struct ChildGuard(std::process::Child, std::path::PathBuf);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_keel() {
    if Command::new("prometheus")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        eprintln!("SKIPPED: prometheus not found (scripts/test.sh installs Debian's `prometheus` package)");
        return;
    }
    let (keel, _up) = keel_with_traffic().await;
    let dir = temp_path("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: keel\n    static_configs:\n      - targets: ['{}']\n",
            keel.metrics()
        ),
    )
    .unwrap();
    // Prometheus needs a port of its own: take a free one from the kernel.
    let web = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = ChildGuard(child, dir);

    eventually(
        Duration::from_secs(60),
        "Prometheus reports keel's target up",
        || async {
            let Ok(stream) = tokio::net::TcpStream::connect(web).await else {
                return false;
            };
            drop(stream);
            let reply = get(web, "prometheus", "/api/v1/targets").await;
            reply.body.contains("\"health\":\"up\"")
        },
    )
    .await;
    let query =
        "/api/v1/query?query=keel_requests_total%7Broute%3D%22api%22%2Ccode_class%3D%222xx%22%7D";
    eventually(
        Duration::from_secs(30),
        "Prometheus returns keel_requests_total",
        || async {
            let reply = get(web, "prometheus", query).await;
            reply.body.contains("\"listener\":\"main\"")
                && reply.body.contains("\"upstream\":\"backend\"")
                && reply.body.contains("\"3\"]")
        },
    )
    .await;
}
