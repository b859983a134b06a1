//! TLS: HTTPS in (HTTP/1.1 and h2 by ALPN), mTLS with the client identity passed to the app,
//! the handshake timeout, TLS and mTLS to upstreams with SNI, `upstream-tls` errors counted by
//! the breaker, h2c and h2-over-TLS upstreams, certificate rotation by file replacement, and
//! the `keel check` errors for certificate files. Certificates are made here with rcgen.

mod support;

use std::time::Duration;

use support::tls::*;
use support::*;

fn listener_toml(
    upstream: std::net::SocketAddr,
    tls: &str,
    upstream_extra: &str,
    listener_extra: &str,
) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
tls = {{ {tls} }}
{listener_extra}
  [[listeners.routes]]
  upstream = "app"
[upstreams.app]
endpoints = ["{upstream}"]
{upstream_extra}
"#
    )
}

/// A server certificate for `localhost` written to `dir`, and the tls table naming it.
fn server_files(dir: &TempDir, ca: &Ca) -> String {
    let leaf = ca.leaf("keel server", &["localhost", "127.0.0.1"], &[]);
    let (cert, key) = write_leaf(dir, "server", &leaf);
    format!("cert = {}, key = {}", toml_path(&cert), toml_path(&key))
}

#[tokio::test]
async fn https_in_serves_http1_and_h2_as_alpn_chose() {
    let dir = TempDir::new("https-in");
    let ca = Ca::new("test ca");
    let app = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&listener_toml(app.addr, &server_files(&dir, &ca), "", "")).await;
    let addr = keel.addr("main");

    let h1 = https_get(addr, client_config(&ca, None, &[b"http/1.1"]), "/one", &[])
        .await
        .unwrap();
    assert_eq!(h1.status, 200, "{}", h1.body);
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h1.version, http::Version::HTTP_11);
    assert!(h1.body.contains("x-forwarded-proto: https"), "{}", h1.body);

    let h2 = https_get(
        addr,
        client_config(&ca, None, &[b"h2", b"http/1.1"]),
        "/two",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(h2.status, 200, "{}", h2.body);
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(h2.version, http::Version::HTTP_2);
    assert!(h2.body.starts_with("GET /two"), "{}", h2.body);

    // No ALPN at all: served as what the client speaks (HTTP/1.1 here).
    let none = https_get(addr, client_config(&ca, None, &[]), "/three", &[])
        .await
        .unwrap();
    assert_eq!(none.status, 200);
    assert_eq!(none.alpn, None);

    // A plaintext request on the TLS port gets no HTTP answer.
    let plain = raw(
        addr,
        b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(!plain.contains("200 OK"), "{plain}");
    assert_eq!(app.requests(), 3);
}

#[tokio::test]
async fn mtls_required_refuses_clients_without_a_valid_certificate() {
    let dir = TempDir::new("mtls");
    let ca = Ca::new("server ca");
    let clients = Ca::new("client ca");
    let strangers = Ca::new("someone else");
    let client_ca = dir.write("clients.pem", &clients.pem);
    let app = upstream(Behaviour::Respond).await;
    let tls = format!(
        "{}, client_ca = {}, require_client_cert = true",
        server_files(&dir, &ca),
        toml_path(&client_ca)
    );
    let keel = spawn_keel(&listener_toml(app.addr, &tls, "", "")).await;
    let addr = keel.addr("main");

    // No certificate: with TLS 1.3 the client's side of the handshake may finish before the
    // server's refusal arrives, so the failure shows on the handshake or on the request.
    let no_cert = https_get(addr, client_config(&ca, None, &[b"http/1.1"]), "/", &[]).await;
    assert!(no_cert.is_err(), "{no_cert:?}");

    // A certificate from a CA keel does not trust: refused the same way.
    let stranger = strangers.leaf("mallory", &["mallory"], &["spiffe://evil/x"]);
    let bad = https_get(
        addr,
        client_config(&ca, Some(&stranger), &[b"http/1.1"]),
        "/",
        &[],
    )
    .await;
    assert!(bad.is_err(), "{bad:?}");
    assert_eq!(app.requests(), 0, "no request reached the app");

    // A valid certificate: its URI SAN reaches the app; a forged header is replaced.
    let client = clients.leaf(
        "orders",
        &["orders.svc"],
        &["spiffe://cluster/ns/shop/sa/orders"],
    );
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let ok = https_get(
            addr,
            client_config(&ca, Some(&client), &[alpn]),
            "/",
            &[(
                "x-forwarded-client-cert",
                "spiffe://cluster/ns/admin/sa/root",
            )],
        )
        .await
        .unwrap();
        assert_eq!(ok.status, 200, "{}", ok.body);
        assert!(
            ok.body
                .contains("x-forwarded-client-cert: spiffe://cluster/ns/shop/sa/orders\n"),
            "{}",
            ok.body
        );
        assert!(
            !ok.body.contains("sa/root"),
            "forged header stripped: {}",
            ok.body
        );
        assert_eq!(ok.body.matches("x-forwarded-client-cert").count(), 1);
    }
}

#[tokio::test]
async fn optional_client_certs_strip_forged_identity_and_use_a_configured_header() {
    let dir = TempDir::new("mtls-optional");
    let ca = Ca::new("server ca");
    let clients = Ca::new("client ca");
    let client_ca = dir.write("clients.pem", &clients.pem);
    let app = upstream(Behaviour::Respond).await;
    let tls = format!(
        "{}, client_ca = {}, require_client_cert = false, client_identity_header = \"x-client-id\"",
        server_files(&dir, &ca),
        toml_path(&client_ca)
    );
    let keel = spawn_keel(&listener_toml(app.addr, &tls, "", "")).await;
    let addr = keel.addr("main");
    let anonymous = https_get(
        addr,
        client_config(&ca, None, &[b"http/1.1"]),
        "/",
        &[("x-client-id", "spiffe://forged")],
    )
    .await
    .unwrap();
    assert_eq!(anonymous.status, 200);
    assert!(
        !anonymous.body.contains("x-client-id"),
        "{}",
        anonymous.body
    );
    // Only a DNS SAN: that is the identity.
    let client = clients.leaf("billing", &["billing.svc"], &[]);
    let named = https_get(addr, client_config(&ca, Some(&client), &[b"h2"]), "/", &[])
        .await
        .unwrap();
    assert!(
        named.body.contains("x-client-id: billing.svc\n"),
        "{}",
        named.body
    );
}

#[tokio::test]
async fn half_open_handshakes_time_out_and_do_not_block_the_listener() {
    let dir = TempDir::new("handshake-timeout");
    let ca = Ca::new("ca");
    let app = upstream(Behaviour::Respond).await;
    let tls = format!(
        "{}, handshake_timeout = \"300ms\", max_handshakes = 1",
        server_files(&dir, &ca)
    );
    let keel = spawn_keel(&listener_toml(app.addr, &tls, "", "")).await;
    let addr = keel.addr("main");
    // A client that connects and never says hello holds the only handshake slot...
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = tokio::time::Instant::now();
    // ...until the timeout closes it.
    let closed = read_until_close(&mut idle, Duration::from_secs(5)).await;
    assert!(closed.is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(4),
        "closed after {waited:?}"
    );
    // Real clients get through afterwards.
    let ok = https_get(addr, client_config(&ca, None, &[b"h2"]), "/", &[])
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn tls_connections_keep_the_408_watchdog() {
    let dir = TempDir::new("tls-408");
    let ca = Ca::new("ca");
    let app = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&listener_toml(
        app.addr,
        &server_files(&dir, &ca),
        "",
        "header_read_timeout = \"300ms\"",
    ))
    .await;
    let tcp = tokio::net::TcpStream::connect(keel.addr("main"))
        .await
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(&ca, None, &[b"http/1.1"]));
    let mut tls = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
}

/// An upstream table with TLS, for one endpoint.
fn tls_upstream_toml(endpoint: &str, tls: &str, extra: &str) -> String {
    format!(
        r#"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  upstream = "secure"
[upstreams.secure]
endpoints = ["{endpoint}"]
{extra}
[upstreams.secure.tls]
{tls}
"#
    )
}

#[tokio::test]
async fn upstream_tls_with_a_private_ca_and_sni() {
    let dir = TempDir::new("upstream-tls");
    let ca = Ca::new("private ca");
    let ca_path = dir.write("ca.pem", &ca.pem);
    // The upstream's certificate names a service name, not the address keel dials.
    let server = ca.leaf(
        "payments",
        &["payments.svc.cluster.local", "localhost"],
        &[],
    );
    let up = tls_upstream(server_config(&server, None, &[b"http/1.1"])).await;

    // server_name given: sent as SNI and verified.
    let keel = spawn_keel(&tls_upstream_toml(
        &up.addr.to_string(),
        &format!(
            "ca = {}\nserver_name = \"payments.svc.cluster.local\"",
            toml_path(&ca_path)
        ),
        "",
    ))
    .await;
    let reply = get(keel.addr("main"), "payments", "/x").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.contains("sni=payments.svc.cluster.local"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains("version=HTTP/1.1"), "{}", reply.body);

    // No server_name: the endpoint's host name is the name.
    let keel = spawn_keel(&tls_upstream_toml(
        &format!("localhost:{}", up.addr.port()),
        &format!("ca = {}", toml_path(&ca_path)),
        "",
    ))
    .await;
    let reply = get(keel.addr("main"), "payments", "/y").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("sni=localhost"), "{}", reply.body);
}

#[tokio::test]
async fn upstream_mtls_presents_the_client_certificate() {
    let dir = TempDir::new("upstream-mtls");
    let ca = Ca::new("mesh ca");
    let ca_path = dir.write("ca.pem", &ca.pem);
    let server = ca.leaf("inventory", &["inventory"], &[]);
    let up = tls_upstream(server_config(&server, Some(&ca), &[b"http/1.1"])).await;
    let me = ca.leaf("orders", &["orders"], &["spiffe://mesh/orders"]);
    let (cert, key) = write_leaf(&dir, "me", &me);
    let endpoint = up.addr.to_string();

    // Without a client certificate the upstream refuses the handshake.
    let keel = spawn_keel(&tls_upstream_toml(
        &endpoint,
        &format!("ca = {}\nserver_name = \"inventory\"", toml_path(&ca_path)),
        "",
    ))
    .await;
    let refused = get(keel.addr("main"), "inventory", "/").await;
    assert_eq!(refused.status, 502, "{}", refused.body);
    assert!(
        matches!(
            refused.keel_error(),
            Some("upstream-tls") | Some("upstream-reset")
        ),
        "{:?}",
        refused.keel_error()
    );

    let keel = spawn_keel(&tls_upstream_toml(
        &endpoint,
        &format!(
            "ca = {}\nserver_name = \"inventory\"\nclient_cert = {}\nclient_key = {}",
            toml_path(&ca_path),
            toml_path(&cert),
            toml_path(&key)
        ),
        "",
    ))
    .await;
    let reply = get(keel.addr("main"), "inventory", "/").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.contains("client=spiffe://mesh/orders"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn wrong_ca_is_502_upstream_tls_and_counts_for_the_breaker() {
    let dir = TempDir::new("wrong-ca");
    let real = Ca::new("real ca");
    let other = Ca::new("other ca");
    let other_path = dir.write("other.pem", &other.pem);
    let server = real.leaf("svc", &["svc"], &[]);
    let up = tls_upstream(server_config(&server, None, &[b"http/1.1"])).await;
    let keel = spawn_keel(&tls_upstream_toml(
        &up.addr.to_string(),
        &format!("ca = {}\nserver_name = \"svc\"", toml_path(&other_path)),
        "[upstreams.secure.breaker]\nconsecutive_failures = 2\nopen_for = \"60s\"\nmax_open_for = \"60s\"",
    ))
    .await;
    let addr = keel.addr("main");
    for _ in 0..2 {
        let reply = get(addr, "svc", "/").await;
        assert_eq!(reply.status, 502, "{}", reply.body);
        assert_eq!(reply.keel_error(), Some("upstream-tls"));
        assert!(reply.body.contains("TLS"), "{}", reply.body);
    }
    let open = get(addr, "svc", "/").await;
    assert_eq!(open.status, 503);
    assert_eq!(open.keel_error(), Some("circuit-open"));
    assert_eq!(up.handshakes.load(std::sync::atomic::Ordering::SeqCst), 0);

    // A server name the certificate does not carry fails the same way.
    let real_path = dir.write("real.pem", &real.pem);
    let keel = spawn_keel(&tls_upstream_toml(
        &up.addr.to_string(),
        &format!("ca = {}\nserver_name = \"not-svc\"", toml_path(&real_path)),
        "",
    ))
    .await;
    let reply = get(keel.addr("main"), "svc", "/").await;
    assert_eq!(reply.keel_error(), Some("upstream-tls"), "{}", reply.body);
}

#[tokio::test]
async fn insecure_skip_verify_works_and_is_flagged_in_config() {
    let dir = TempDir::new("insecure");
    let ca = Ca::new("unknown ca");
    let server = ca.leaf("svc", &["svc"], &[]);
    let up = tls_upstream(server_config(&server, None, &[b"http/1.1"])).await;
    let text = tls_upstream_toml(&up.addr.to_string(), "insecure_skip_verify = true", "");
    let config = keel::config::from_str(&with_loopback_admin(&text), "t.toml").unwrap();
    assert!(
        config.warnings.iter().any(|w| w.contains("INSECURE")),
        "{:?}",
        config.warnings
    );
    let keel = spawn_keel(&text).await;
    assert_eq!(get(keel.addr("main"), "svc", "/").await.status, 200);
    let doc = get(keel.admin(), "admin", "/config").await.body;
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let tls = &doc["upstreams"][0]["tls"];
    assert_eq!(tls["insecure_skip_verify"], true);
    assert!(
        tls["WARNING"].as_str().unwrap().contains("NOT verified"),
        "{tls}"
    );
    assert!(doc["warnings"][0].as_str().unwrap().contains("INSECURE"));
    drop(dir);
}

#[tokio::test]
async fn config_redacts_keys() {
    let dir = TempDir::new("redact");
    let ca = Ca::new("ca");
    let app = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&listener_toml(app.addr, &server_files(&dir, &ca), "", "")).await;
    let body = get(keel.admin(), "admin", "/config").await.body;
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let tls = &doc["listeners"][0]["tls"];
    assert_eq!(tls["key"], "REDACTED");
    assert!(!body.contains("server.key"), "{body}");
    assert!(!body.contains("PRIVATE KEY"), "{body}");
    assert_eq!(tls["certificate"]["subject"], "CN=keel server");
    assert_eq!(tls["handshake_timeout"], "10s");
}

#[tokio::test]
async fn h2c_upstream_multiplexes_and_the_bulkhead_still_counts_requests() {
    let app = upstream(Behaviour::Delay(Duration::from_millis(400))).await;
    let keel = spawn_keel(&single_route(
        app.addr,
        "protocol = \"http2\"\n[upstreams.up.pool]\nmax_requests = 2\nmax_pending = 0",
        "",
    ))
    .await;
    let addr = keel.addr("main");
    let calls: Vec<_> = (0..4)
        .map(|i| tokio::spawn(async move { get(addr, "h2c", &format!("/{i}")).await }))
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        let reply = call.await.unwrap();
        if reply.status == 200 {
            assert!(reply.body.contains("HTTP/2.0"), "{}", reply.body);
        } else {
            assert_eq!(reply.keel_error(), Some("bulkhead-full"));
        }
        statuses.push(reply.status);
    }
    statuses.sort();
    assert_eq!(statuses, vec![200, 200, 503, 503]);
    assert!(app.peak_in_flight() <= 2, "{}", app.peak_in_flight());
    // Both admitted requests shared one connection; more requests still use it.
    for _ in 0..3 {
        assert_eq!(get(addr, "h2c", "/again").await.status, 200);
    }
    assert_eq!(app.connections(), 1, "one multiplexed connection");
}

#[tokio::test]
async fn h2_over_tls_upstream_by_alpn() {
    let dir = TempDir::new("h2-tls");
    let ca = Ca::new("ca");
    let ca_path = dir.write("ca.pem", &ca.pem);
    let server = ca.leaf("svc", &["svc"], &[]);
    let both = tls_upstream(server_config(&server, None, &[b"h2", b"http/1.1"])).await;
    for protocol in ["http2", "auto"] {
        let keel = spawn_keel(&tls_upstream_toml(
            &both.addr.to_string(),
            &format!("ca = {}\nserver_name = \"svc\"", toml_path(&ca_path)),
            &format!("protocol = \"{protocol}\""),
        ))
        .await;
        let addr = keel.addr("main");
        for _ in 0..3 {
            let reply = get(addr, "svc", "/").await;
            assert_eq!(reply.status, 200, "{protocol}: {}", reply.body);
            assert!(
                reply.body.contains("version=HTTP/2.0"),
                "{protocol}: {}",
                reply.body
            );
        }
    }
    // One connection per keel instance: h2 is shared, not one per request.
    assert_eq!(both.handshakes.load(std::sync::atomic::Ordering::SeqCst), 2);
    // An HTTP/1.1-only server with protocol = "auto" gets HTTP/1.1.
    let h1_only = tls_upstream(server_config(&server, None, &[b"http/1.1"])).await;
    let keel = spawn_keel(&tls_upstream_toml(
        &h1_only.addr.to_string(),
        &format!("ca = {}\nserver_name = \"svc\"", toml_path(&ca_path)),
        "protocol = \"auto\"",
    ))
    .await;
    let reply = get(keel.addr("main"), "svc", "/").await;
    assert!(reply.body.contains("version=HTTP/1.1"), "{}", reply.body);
}

#[tokio::test]
async fn certificate_rotation_by_file_replacement_keeps_in_flight_requests() {
    let dir = TempDir::new("rotation");
    let ca = Ca::new("ca");
    let first = ca.leaf("first", &["localhost"], &[]);
    let second = ca.leaf("second", &["localhost"], &[]);
    let (cert, key) = write_leaf(&dir, "tls", &first);
    let app = upstream(Behaviour::Delay(Duration::from_millis(2500))).await;
    let text = listener_toml(
        app.addr,
        &format!("cert = {}, key = {}", toml_path(&cert), toml_path(&key)),
        "",
        "",
    );
    let config_path = dir.path("keel.toml");
    let keel = spawn_keel_from_file(&config_path, &text).await;
    keel::reload::watch(keel.running.as_ref().unwrap().reloader()).unwrap();
    let addr = keel.addr("main");
    let client = client_config(&ca, None, &[b"http/1.1"]);

    let mut conn = connect(addr, client.clone(), "localhost").await.unwrap();
    assert_eq!(conn.server_cn, "CN=first");
    let in_flight = tokio::spawn(async move { conn.get("/slow", &[]).await });
    eventually(
        Duration::from_secs(5),
        "the slow request reached the app",
        || async { app.requests() == 1 },
    )
    .await;

    // Rotate: key first, then the certificate (each by rename, as Kubernetes does).
    dir.replace("tls.key", &second.key_pem);
    dir.replace("tls.crt", &second.cert_pem);
    eventually(Duration::from_secs(10), "new handshakes present the new certificate", || {
        let client = client.clone();
        async move {
            matches!(connect(addr, client, "localhost").await, Ok(c) if c.server_cn == "CN=second")
        }
    })
    .await;
    assert!(
        !in_flight.is_finished(),
        "the rotation was seen while the request was in flight"
    );
    let reply = in_flight.await.unwrap().unwrap();
    assert_eq!(
        reply.status, 200,
        "the in-flight request finished on its old session"
    );

    // A broken certificate is refused like an invalid config; the last good one keeps serving.
    dir.replace(
        "tls.crt",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    let admin = keel.admin();
    eventually(
        Duration::from_secs(10),
        "the broken file is reported",
        || async move {
            let doc = get(admin, "admin", "/config").await.body;
            doc.contains("tls.crt") && doc.contains("not valid PEM")
        },
    )
    .await;
    let doc = get(admin, "admin", "/config").await.body;
    let doc: serde_json::Value = serde_json::from_str(&doc).unwrap();
    let error = doc["last_reload_error"].as_str().unwrap();
    let file = config_path.display().to_string();
    assert!(error.contains(&format!("{file}:")), "{error}");
    let still = connect(addr, client.clone(), "localhost").await.unwrap();
    assert_eq!(still.server_cn, "CN=second");
    let metrics = get(keel.metrics(), "m", "/metrics").await.body;
    assert!(
        metrics.contains("keel_config_reloads_total{result=\"error\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn reload_rereads_certificates_even_when_the_config_text_is_unchanged() {
    let dir = TempDir::new("reload-certs");
    let ca = Ca::new("ca");
    let (cert, key) = write_leaf(&dir, "tls", &ca.leaf("one", &["localhost"], &[]));
    let app = upstream(Behaviour::Respond).await;
    let text = listener_toml(
        app.addr,
        &format!("cert = {}, key = {}", toml_path(&cert), toml_path(&key)),
        "",
        "",
    );
    let keel = spawn_keel_from_file(&dir.path("keel.toml"), &text).await;
    let reloader = keel.running.as_ref().unwrap().reloader().clone();
    assert_eq!(
        reloader.reload().await,
        Ok(keel::reload::ReloadOutcome::Unchanged)
    );
    write_leaf(&dir, "tls", &ca.leaf("two", &["localhost"], &[]));
    assert!(matches!(
        reloader.reload().await,
        Ok(keel::reload::ReloadOutcome::Applied { .. })
    ));
    let conn = connect(
        keel.addr("main"),
        client_config(&ca, None, &[]),
        "localhost",
    )
    .await
    .unwrap();
    assert_eq!(conn.server_cn, "CN=two");
}

fn check_errors(text: &str) -> String {
    match keel::config::from_str(&with_loopback_admin(text), "test.toml") {
        Ok(_) => panic!("config accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn check_reports_certificate_problems_at_their_settings() {
    let dir = TempDir::new("check-tls");
    let ca = Ca::new("ca");
    let a = ca.leaf("a", &["localhost"], &[]);
    let b = ca.leaf("b", &["localhost"], &[]);
    let (a_cert, _) = write_leaf(&dir, "a", &a);
    let (_, b_key) = write_leaf(&dir, "b", &b);
    let missing = dir.path("missing.crt");
    let empty = dir.write("empty.pem", "");
    let garbage = dir.write("garbage.pem", "hello, I am not a certificate\n");
    let text = |tls: &str| listener_toml("127.0.0.1:1".parse().unwrap(), tls, "", "");

    let out = check_errors(&text(&format!(
        "cert = {}, key = {}",
        toml_path(&missing),
        toml_path(&b_key)
    )));
    assert!(out.contains("test.toml:"), "{out}");
    assert!(
        out.contains(&format!("cannot read certificate `{}`", missing.display())),
        "{out}"
    );

    let out = check_errors(&text(&format!(
        "cert = {}, key = {}",
        toml_path(&a_cert),
        toml_path(&b_key)
    )));
    assert!(out.contains("does not match the certificate"), "{out}");
    assert!(out.contains("b.key"), "{out}");

    let out = check_errors(&text(&format!(
        "cert = {}, key = {}",
        toml_path(&garbage),
        toml_path(&b_key)
    )));
    assert!(out.contains("holds no certificate"), "{out}");

    let out = check_errors(&tls_upstream_toml(
        "127.0.0.1:1",
        &format!("ca = {}", toml_path(&empty)),
        "",
    ));
    assert!(out.contains("is empty"), "{out}");
    assert!(out.contains("hint:"), "{out}");
    // The error points at the `ca` value: line and column of the setting.
    let line = tls_upstream_toml("127.0.0.1:1", &format!("ca = {}", toml_path(&empty)), "")
        .lines()
        .position(|l| l.starts_with("ca = "))
        .unwrap()
        + 1
        + 4; // the [admin] and [metrics] lines with_loopback_admin adds
    assert!(out.contains(&format!("test.toml:{line}:6:")), "{out}");

    let out = check_errors(&text(&format!(
        "cert = {}, key = {}, require_client_cert = true",
        toml_path(&a_cert),
        toml_path(&b_key)
    )));
    assert!(out.contains("require_client_cert needs client_ca"), "{out}");

    let out = check_errors(&tls_upstream_toml("127.0.0.1:1", "protocol = 3", ""));
    assert!(out.contains("unknown key `protocol`"), "{out}");
    let out = check_errors(&single_route(
        "127.0.0.1:1".parse().unwrap(),
        "protocol = \"h3\"",
        "",
    ));
    assert!(out.contains("unknown protocol `h3`"), "{out}");
}

#[test]
fn expired_certificates_warn_unless_rejected() {
    let dir = TempDir::new("expired");
    let ca = Ca::new("ca");
    let old = ca.leaf_with("old", &["localhost"], &[], |p| {
        p.not_before = rcgen::date_time_ymd(2001, 1, 1);
        p.not_after = rcgen::date_time_ymd(2002, 1, 1);
    });
    let (cert, key) = write_leaf(&dir, "old", &old);
    let tls = format!("cert = {}, key = {}", toml_path(&cert), toml_path(&key));
    let text = listener_toml("127.0.0.1:1".parse().unwrap(), &tls, "", "");
    let config = keel::config::from_str(&with_loopback_admin(&text), "test.toml").unwrap();
    assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
    assert!(
        config.warnings[0].contains("expired on 2002-01-01"),
        "{:?}",
        config.warnings
    );
    assert!(
        config.warnings[0].starts_with("test.toml:"),
        "{:?}",
        config.warnings
    );

    let text = listener_toml(
        "127.0.0.1:1".parse().unwrap(),
        &format!("{tls}, reject_expired = true"),
        "",
        "",
    );
    let out = check_errors(&text);
    assert!(out.contains("expired on 2002-01-01"), "{out}");
}

/// One DER element of `input`: (contents, rest).
fn der_element(input: &[u8]) -> (&[u8], &[u8]) {
    let (len, header) = match input[1] {
        n if n < 0x80 => (n as usize, 2),
        0x81 => (input[2] as usize, 3),
        0x82 => (((input[2] as usize) << 8) | input[3] as usize, 4),
        other => panic!("unexpected DER length byte {other:#x}"),
    };
    (&input[header..header + len], &input[header + len..])
}

#[test]
fn sec1_keys_load_as_well_as_pkcs8() {
    use rustls::pki_types::pem::PemObject;
    let dir = TempDir::new("key-formats");
    let ca = Ca::new("ca");
    let leaf = ca.leaf("x", &["localhost"], &[]);
    let (cert, key) = write_leaf(&dir, "x", &leaf);
    let listener = |key: &std::path::Path| {
        let tls = format!("cert = {}, key = {}", toml_path(&cert), toml_path(key));
        with_loopback_admin(&listener_toml("127.0.0.1:1".parse().unwrap(), &tls, "", ""))
    };
    keel::config::from_str(&listener(&key), "test.toml").unwrap();
    // PKCS#8 = SEQUENCE { version, algorithm, OCTET STRING { SEC1 ECPrivateKey } }.
    let pkcs8 =
        rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let (inner, _) = der_element(pkcs8.secret_pkcs8_der());
    let (_, rest) = der_element(inner); // version
    let (_, rest) = der_element(rest); // algorithm
    let (sec1, _) = der_element(rest);
    let encoded = base64_encode(sec1);
    let sec1_path = dir.write(
        "x.sec1.key",
        &format!("-----BEGIN EC PRIVATE KEY-----\n{encoded}\n-----END EC PRIVATE KEY-----\n"),
    );
    keel::config::from_str(&listener(&sec1_path), "test.toml").unwrap_or_else(|e| panic!("{e}"));
}

/// An RSA key in PKCS#1 form (`BEGIN RSA PRIVATE KEY`) loads too. rcgen on ring cannot make RSA
/// keys, so the `openssl` command makes this one; the test says so and skips without it.
#[test]
fn pkcs1_rsa_keys_load() {
    let dir = TempDir::new("key-pkcs1");
    let cert = dir.path("rsa.crt");
    let pkcs8 = dir.path("rsa.p8.key");
    let pkcs1 = dir.path("rsa.p1.key");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&pkcs8)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: the openssl command is not available to make an RSA key");
        return;
    }
    let converted = std::process::Command::new("openssl")
        .args(["rsa", "-traditional", "-in"])
        .arg(&pkcs8)
        .arg("-out")
        .arg(&pkcs1)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(converted.success());
    let text = std::fs::read_to_string(&pkcs1).unwrap();
    assert!(
        text.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
        "{text}"
    );
    let tls = format!("cert = {}, key = {}", toml_path(&cert), toml_path(&pkcs1));
    let config = with_loopback_admin(&listener_toml("127.0.0.1:1".parse().unwrap(), &tls, "", ""));
    keel::config::from_str(&config, "test.toml").unwrap_or_else(|e| panic!("{e}"));
}

fn base64_encode(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn readme_mtls_example_is_a_valid_config() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme
        .split("### Example: mTLS between sidecars")
        .nth(1)
        .expect("README has the mTLS example");
    let example = section
        .split("```toml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .unwrap();
    let dir = TempDir::new("readme-mtls");
    let ca = Ca::new("mesh");
    dir.write("ca.crt", &ca.pem);
    write_leaf(
        &dir,
        "tls",
        &ca.leaf(
            "orders",
            &["orders"],
            &["spiffe://cluster.local/ns/shop/sa/orders"],
        ),
    );
    let text = example
        .replace("/etc/keel/tls/", &format!("{}/", dir.0.display()))
        .replace("0.0.0.0:15006\"", "127.0.0.1:0\"")
        .replace("127.0.0.1:15001", "127.0.0.1:0");
    let config = keel::config::from_str(&with_loopback_admin(&text), "README.md")
        .unwrap_or_else(|e| panic!("{e}\n{text}"));
    let inbound = config.listeners[0].tls.as_ref().unwrap();
    assert!(inbound.require_client_cert);
    assert!(config.upstreams.iter().any(|u| u.tls.is_some()));
}

#[tokio::test]
async fn the_client_identity_is_in_the_access_log() {
    let dir = TempDir::new("identity-log");
    let ca = Ca::new("server ca");
    let clients = Ca::new("client ca");
    let client_ca = dir.write("clients.pem", &clients.pem);
    let log = dir.path("access.log");
    let app = upstream(Behaviour::Respond).await;
    let tls = format!(
        "{}, client_ca = {}",
        server_files(&dir, &ca),
        toml_path(&client_ca)
    );
    let text = format!(
        "[access_log]\noutput = {}\n{}",
        toml_path(&log),
        listener_toml(app.addr, &tls, "", "access_log = true")
    );
    let keel = spawn_keel(&text).await;
    let client = clients.leaf("orders", &[], &["spiffe://cluster/ns/shop/sa/orders"]);
    let reply = https_get(
        keel.addr("main"),
        client_config(&ca, Some(&client), &[b"h2"]),
        "/logged",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(reply.status, 200);
    let mut line = String::new();
    eventually(Duration::from_secs(10), "the access log line", || {
        line = std::fs::read_to_string(&log).unwrap_or_default();
        std::future::ready(!line.is_empty())
    })
    .await;
    let record: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(
        record["client_identity"],
        "spiffe://cluster/ns/shop/sa/orders"
    );
    assert_eq!(record["path"], "/logged");
}
