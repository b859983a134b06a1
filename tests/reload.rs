//! Live reload: valid changes swap in without dropping traffic and keep unchanged upstreams'
//! state; invalid ones are refused whole while the old config keeps serving.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::*;

fn two_upstreams(
    route_to: &str,
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    extra: &str,
) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  upstream = "{route_to}"
[upstreams.a]
endpoints = ["{a}"]
[upstreams.a.breaker]
consecutive_failures = 2
open_for = "60s"
max_open_for = "60s"
[upstreams.b]
endpoints = ["{b}"]
{extra}
"#
    )
}

async fn post(addr: std::net::SocketAddr, path: &str) -> Reply {
    let req = Request::post(path)
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(addr, req).await
}

#[tokio::test]
async fn post_reload_switches_routes_and_keeps_unchanged_upstreams() {
    let a = upstream(Behaviour::Status(503)).await;
    let b = upstream(Behaviour::Status(200)).await;
    let path = temp_path("reload.toml");
    let keel = spawn_keel_from_file(&path, &two_upstreams("a", a.addr, b.addr, "")).await;
    let addr = keel.addr("main");
    for _ in 0..2 {
        assert_eq!(get(addr, "svc", "/").await.status, 503);
    }
    assert_eq!(
        get(addr, "svc", "/").await.keel_error(),
        Some("circuit-open")
    );

    // Same listener and upstream settings, route now to b; b gets a new pool setting.
    let text = with_loopback_admin(&two_upstreams(
        "b",
        a.addr,
        b.addr,
        "[upstreams.b.pool]\nmax_requests = 9",
    ));
    std::fs::write(&path, text).unwrap();
    let reply = post(keel.admin(), "/reload").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let doc: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(doc["result"], "applied");
    assert_eq!(
        doc["kept"],
        serde_json::json!(["a"]),
        "a's settings did not change"
    );
    assert_eq!(doc["rebuilt"], serde_json::json!(["b"]));
    assert_eq!(get(addr, "svc", "/").await.status, 200);
    assert_eq!(
        keel.upstream("a").breaker_state().0.as_str(),
        "Open",
        "a kept its breaker state"
    );
    assert_eq!(
        post(keel.admin(), "/reload").await.body.trim(),
        "{\n  \"result\": \"unchanged\"\n}"
    );
    let metrics = get(keel.metrics(), "m", "/metrics").await.body;
    assert!(
        metrics.contains("keel_config_reloads_total{result=\"success\"} 1"),
        "{metrics}"
    );
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn invalid_reload_is_refused_and_the_old_config_keeps_serving() {
    let a = upstream(Behaviour::Status(200)).await;
    let b = upstream(Behaviour::Status(201)).await;
    let path = temp_path("bad-reload.toml");
    let keel = spawn_keel_from_file(&path, &two_upstreams("a", a.addr, b.addr, "")).await;
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        good.replace("upstream = \"a\"", "upstream = \"missing\"")
            .replace("[upstreams.b]", "[upstreams.b]\nbogus = 1"),
    )
    .unwrap();
    let reply = post(keel.admin(), "/reload").await;
    assert_eq!(reply.status, 400);
    let file = path.display().to_string();
    assert!(
        reply.body.contains(&format!("{file}:")),
        "errors name the file: {}",
        reply.body
    );
    assert!(
        reply.body.contains("route names upstream `missing`"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains("unknown key `bogus`"), "{}", reply.body);
    assert_eq!(
        get(keel.addr("main"), "svc", "/").await.status,
        200,
        "the old config serves"
    );
    let config: serde_json::Value =
        serde_json::from_str(&get(keel.admin(), "admin", "/config").await.body).unwrap();
    assert!(config["last_reload_error"]
        .as_str()
        .unwrap()
        .contains("unknown key `bogus`"));
    let metrics = get(keel.metrics(), "m", "/metrics").await.body;
    assert!(
        metrics.contains("keel_config_reloads_total{result=\"failure\"} 1"),
        "{metrics}"
    );

    // A change that needs a restart is refused with a clear reason.
    std::fs::write(&path, good.replace("name = \"main\"", "name = \"renamed\"")).unwrap();
    let reply = post(keel.admin(), "/reload").await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("restart keel"), "{}", reply.body);
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_no_request() {
    let a = upstream(Behaviour::Delay(Duration::from_millis(5))).await;
    let b = upstream(Behaviour::Delay(Duration::from_millis(5))).await;
    let path = temp_path("load-reload.toml");
    let keel = spawn_keel_from_file(&path, &two_upstreams("a", a.addr, b.addr, "")).await;
    let addr = keel.addr("main");
    let base = std::fs::read_to_string(&path).unwrap();
    let load = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for _ in 0..300 {
            statuses.push(get(addr, "svc", "/").await.status);
        }
        statuses
    });
    for i in 0..10 {
        let target = if i % 2 == 0 { "b" } else { "a" };
        std::fs::write(
            &path,
            base.replace("upstream = \"a\"", &format!("upstream = \"{target}\"")),
        )
        .unwrap();
        assert_eq!(post(keel.admin(), "/reload").await.status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let statuses = load.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every request succeeded across 10 reloads: {statuses:?}"
    );
    assert!(
        a.requests() > 0 && b.requests() > 0,
        "traffic followed the reloads"
    );
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_run_reloads_when_the_file_changes() {
    let a = upstream(Behaviour::Status(200)).await;
    let b = upstream(Behaviour::Status(201)).await;
    let keel = KeelProcess::start(&two_upstreams("a", a.addr, b.addr, ""));
    let addr = keel.addr("main");
    assert_eq!(get(addr, "svc", "/").await.status, 200);
    let text = std::fs::read_to_string(keel.config_path()).unwrap();
    // Write a new file and move it into place, as editors and ConfigMap updates do.
    let staged = keel.config_path().with_extension("new");
    std::fs::write(
        &staged,
        text.replace("upstream = \"a\"", "upstream = \"b\""),
    )
    .unwrap();
    std::fs::rename(&staged, keel.config_path()).unwrap();
    eventually(
        Duration::from_secs(10),
        "traffic moves to b after the file changed",
        || async { get(addr, "svc", "/").await.status == 201 },
    )
    .await;
}
