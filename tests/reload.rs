//! Live reload: valid changes swap in without dropping traffic and keep unchanged upstreams'
//! state; invalid ones are refused whole while the old config keeps serving.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
        metrics.contains("keel_config_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );

    // A change that needs a restart is refused with a clear reason.
    std::fs::write(
        &path,
        good.replace(
            "[admin]\nlisten = \"127.0.0.1:0\"",
            "[admin]\nlisten = \"127.0.0.1:1\"",
        ),
    )
    .unwrap();
    let reply = post(keel.admin(), "/reload").await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("restart keel"), "{}", reply.body);
    std::fs::remove_file(&path).unwrap();
}

/// The reload soak: 200 reloads, alternating a valid change of route and an invalid file, under
/// continuous load on four keep-alive clients; not one request fails because of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_drop_no_request() {
    let a = upstream(Behaviour::Delay(Duration::from_millis(2))).await;
    let b = upstream(Behaviour::Delay(Duration::from_millis(2))).await;
    let path = temp_path("load-reload.toml");
    let keel = spawn_keel_from_file(&path, &two_upstreams("a", a.addr, b.addr, "")).await;
    let addr = keel.addr("main");
    let base = std::fs::read_to_string(&path).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let done = done.clone();
        clients.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            // Bounded: stops when the reloads are done, or after 20,000 requests.
            for _ in 0..20_000 {
                if done.load(Ordering::Acquire) {
                    break;
                }
                statuses.push(get(addr, "svc", "/").await.status);
            }
            statuses
        }));
    }
    let (mut applied, mut refused) = (0, 0);
    for i in 0..200 {
        let text = match i % 4 {
            0 => base.replace("upstream = \"a\"", "upstream = \"b\""),
            2 => base.clone(),
            // Odd rounds: an invalid file (unknown key), refused whole.
            _ => base.replace("[upstreams.b]", &format!("[upstreams.b]\nbogus{i} = 1")),
        };
        std::fs::write(&path, text).unwrap();
        match post(keel.admin(), "/reload").await.status {
            200 => applied += 1,
            400 => refused += 1,
            other => panic!("reload {i} answered {other}"),
        }
    }
    done.store(true, Ordering::Release);
    let mut statuses = Vec::new();
    for client in clients {
        statuses.extend(client.await.unwrap());
    }
    assert_eq!((applied, refused), (100, 100));
    let failed = statuses.iter().filter(|s| **s != 200).count();
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed across 200 reloads",
        statuses.len()
    );
    assert!(
        statuses.len() >= 200,
        "the load ran throughout: {}",
        statuses.len()
    );
    assert!(
        a.requests() > 0 && b.requests() > 0,
        "traffic followed the reloads"
    );
    std::fs::remove_file(&path).unwrap();
}

/// A reload adds a listener (bound and serving at once), changes another's settings without
/// refusing a connection, and removes one: it stops accepting while a request in flight on it
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_changes_and_removes_listeners() {
    let slow = upstream(Behaviour::Delay(Duration::from_millis(500))).await;
    let b = upstream(Behaviour::Status(201)).await;
    let path = temp_path("listeners-reload.toml");
    let base = two_upstreams("a", slow.addr, b.addr, "");
    let keel = spawn_keel_from_file(&path, &base).await;
    let main = keel.addr("main");
    let with_extra = format!(
        "{}\n[[listeners]]\nname = \"extra\"\nlisten = \"127.0.0.1:0\"\n  [[listeners.routes]]\n  upstream = \"a\"\n",
        std::fs::read_to_string(&path).unwrap()
    );
    std::fs::write(&path, &with_extra).unwrap();
    let reply = post(keel.admin(), "/reload").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let extra = keel.addr("extra");
    assert_ne!(extra, main);
    assert_eq!(
        get(extra, "svc", "/").await.status,
        200,
        "the new listener serves"
    );

    // A slow request in flight on `extra` while a reload removes it.
    let in_flight = tokio::spawn(async move { get(extra, "svc", "/").await.status });
    eventually(
        Duration::from_secs(5),
        "the slow request reached the upstream",
        || {
            let n = slow.requests();
            async move { n >= 2 }
        },
    )
    .await;
    // The same reload changes `main`'s connection limit: its socket is handed over.
    let without_extra = std::fs::read_to_string(&path).unwrap().replace(
        "name = \"main\"\nlisten = \"127.0.0.1:0\"",
        "name = \"main\"\nlisten = \"127.0.0.1:0\"\nmax_connections = 50",
    );
    let without_extra = without_extra[..without_extra
        .find("\n[[listeners]]\nname = \"extra\"")
        .unwrap()]
        .to_owned();
    std::fs::write(&path, &without_extra).unwrap();
    let reply = post(keel.admin(), "/reload").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the request in flight completed"
    );
    eventually(
        Duration::from_secs(5),
        "the removed listener refuses connections",
        || async move { tokio::net::TcpStream::connect(extra).await.is_err() },
    )
    .await;
    assert_eq!(
        keel.addr("main"),
        main,
        "a changed listener keeps its socket"
    );
    assert_eq!(get(main, "svc", "/").await.status, 200);
    let config: serde_json::Value =
        serde_json::from_str(&get(keel.admin(), "admin", "/config").await.body).unwrap();
    assert!(
        config.to_string().contains("\"max_connections\":50"),
        "{config}"
    );
    std::fs::remove_file(&path).unwrap();
}

/// A new listener whose address is taken refuses the reload whole: routes stay as they were.
#[tokio::test]
async fn reload_with_a_taken_address_changes_nothing() {
    let a = upstream(Behaviour::Status(200)).await;
    let b = upstream(Behaviour::Status(201)).await;
    let path = temp_path("taken-reload.toml");
    let keel = spawn_keel_from_file(&path, &two_upstreams("a", a.addr, b.addr, "")).await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("upstream = \"a\"", "upstream = \"b\"");
    std::fs::write(
        &path,
        format!(
            "{text}\n[[listeners]]\nname = \"extra\"\nlisten = \"{}\"\n  [[listeners.routes]]\n  upstream = \"a\"\n",
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    let reply = post(keel.admin(), "/reload").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body.contains("cannot bind listener `extra`"),
        "{}",
        reply.body
    );
    assert_eq!(
        get(keel.addr("main"), "svc", "/").await.status,
        200,
        "old routes serve"
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
