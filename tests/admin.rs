//! The admin listener: probes and `/upstreams` introspection.

mod support;

use support::*;

#[tokio::test]
async fn upstreams_shows_breaker_bulkhead_and_endpoints() {
    let failing = upstream(Behaviour::Status(503)).await;
    let keel = spawn_keel(&single_route(
        failing.addr,
        "[upstreams.up.breaker]\nconsecutive_failures = 2\nopen_for = \"60s\"\nmax_open_for = \"60s\"",
        "",
    ))
    .await;
    for _ in 0..2 {
        assert_eq!(get(keel.addr("main"), "svc", "/").await.status, 503);
    }
    let open = get(keel.addr("main"), "svc", "/").await;
    assert_eq!(open.keel_error(), Some("circuit-open"));

    let reply = get(keel.admin(), "admin", "/upstreams").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "application/json");
    let doc: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let up = &doc[0];
    assert_eq!(up["name"], "up");
    assert_eq!(up["breaker"]["state"], "Open");
    assert_eq!(up["breaker"]["reason"], "consecutive_failures");
    assert_eq!(up["counters"]["rejected_circuit_open"], 1);
    assert_eq!(up["bulkhead"]["active"], 0);
    assert_eq!(up["endpoints"][0]["address"], failing.addr.to_string());
    assert_eq!(up["endpoints"][0]["healthy"], true);
    assert_eq!(get(keel.admin(), "admin", "/nope").await.status, 404);
}

#[tokio::test]
async fn config_shows_effective_values_with_defaults_and_redacts_credentials() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&format!(
        "[tracing]\notlp_endpoint = \"http://user:s3cret@127.0.0.1:1\"\n{}",
        single_route(
            up.addr,
            "[upstreams.up.pool]\nmax_requests = 7",
            "timeout = \"2s\""
        )
    ))
    .await;
    let reply = get(keel.admin(), "admin", "/config").await;
    assert_eq!(reply.status, 200);
    assert!(
        !reply.body.contains("s3cret"),
        "credentials leaked: {}",
        reply.body
    );
    let doc: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(
        doc["tracing"]["otlp_endpoint"],
        "http://REDACTED@127.0.0.1:1/"
    );
    let route = &doc["listeners"][0]["routes"][0];
    assert_eq!(route["timeout"], "2s");
    assert_eq!(route["upstream"], "up");
    let upstream = &doc["upstreams"][0];
    assert_eq!(upstream["pool"]["max_requests"], 7);
    assert_eq!(upstream["pool"]["max_pending"], 128, "defaults are shown");
    assert_eq!(upstream["breaker"]["consecutive_failures"], 5);
    assert_eq!(upstream["balancer"], "p2c");
    assert_eq!(doc["listeners"][0]["header_read_timeout"], "10s");
}
