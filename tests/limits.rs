//! Listener protections: head size and count limits (431), the head deadline (408, not reset by
//! trickled bytes), idle keep-alive expiry, and the per-listener connection limit.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

async fn keel_with(listener_extra: &str) -> (Keel, TestUpstream) {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&format!(
        "[[listeners]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\n{listener_extra}\n\
         [[listeners.routes]]\nupstream = \"up\"\n[upstreams.up]\nendpoints = [\"{}\"]\n",
        up.addr
    ))
    .await;
    (keel, up)
}

#[tokio::test]
async fn too_many_headers_is_431() {
    let (keel, up) = keel_with("").await;
    let mut request = String::from("GET / HTTP/1.1\r\nhost: svc\r\n");
    // Host and 100 more: 101 fields, one over the default limit.
    for i in 0..100 {
        request.push_str(&format!("x-h{i}: v\r\n"));
    }
    request.push_str("\r\n");
    let reply = raw(
        keel.addr("main"),
        request.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");
    // Exactly 100 fields (Host, Connection and 98 more) are within the default limit.
    let mut ok = String::from("GET / HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n");
    for i in 0..98 {
        ok.push_str(&format!("x-h{i}: v\r\n"));
    }
    ok.push_str("\r\n");
    let reply = raw(keel.addr("main"), ok.as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn header_block_over_limit_is_431() {
    let (keel, up) = keel_with("").await;
    let big = "a".repeat(70 * 1024);
    let request = format!("GET / HTTP/1.1\r\nhost: svc\r\nx-big: {big}\r\n\r\n");
    let reply = raw(
        keel.addr("main"),
        request.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(
        reply.starts_with("HTTP/1.1 431"),
        "{}",
        &reply[..reply.len().min(200)]
    );
    let fits = format!(
        "GET / HTTP/1.1\r\nhost: svc\r\nconnection: close\r\nx-big: {}\r\n\r\n",
        "a".repeat(60 * 1024)
    );
    let reply = raw(keel.addr("main"), fits.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "a 60 KiB head fits the 64 KiB default"
    );
    assert_eq!(up.requests(), 1);
}

/// A client that trickles its head one byte at a time still gets 408 once `header_read_timeout`
/// has passed since the first byte: the deadline is total, not reset by progress.
#[tokio::test]
async fn trickled_head_gets_408_at_the_total_deadline() {
    let (keel, up) = keel_with("header_read_timeout = \"300ms\"").await;
    let stream = TcpStream::connect(keel.addr("main")).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        let head = b"GET / HTTP/1.1\r\nhost: svc\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
        for byte in head.iter().take(60) {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut out)).await;
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(
        elapsed >= Duration::from_millis(280),
        "408 after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(1400),
        "408 after {elapsed:?}: the deadline was reset by trickled bytes"
    );
    trickle.abort();
    assert_eq!(up.requests(), 0);
}

#[tokio::test]
async fn idle_keep_alive_connections_close_quietly() {
    let (keel, _up) = keel_with("idle_timeout = \"200ms\"").await;
    let mut stream = TcpStream::connect(keel.addr("main")).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let rest = read_until_close(&mut stream, Duration::from_secs(5)).await;
    let elapsed = started.elapsed();
    // The response body may arrive in a second read; nothing else may follow it.
    assert!(
        !rest.contains("HTTP/1.1"),
        "an idle connection closes without a response: {rest}"
    );
    assert!(
        elapsed >= Duration::from_millis(150),
        "closed after {elapsed:?}"
    );
    assert!(elapsed < Duration::from_secs(3), "closed after {elapsed:?}");
}

#[tokio::test]
async fn connection_limit_holds_extra_clients_in_the_backlog() {
    let (keel, up) = keel_with("max_connections = 2").await;
    let addr = keel.addr("main");
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut second = TcpStream::connect(addr).await.unwrap();
    for s in [&mut first, &mut second] {
        s.write_all(b"GET / HTTP/1.1\r\nhost: svc\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    }
    let mut third = TcpStream::connect(addr).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(
        early.is_err(),
        "a third connection must wait while two are open"
    );
    drop(first);
    let reply = read_until_close(&mut third, Duration::from_secs(5)).await;
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "served once a slot freed: {reply}"
    );
    assert_eq!(up.requests(), 3);
}

#[tokio::test]
async fn long_request_target_is_414() {
    let (keel, up) = keel_with("max_uri_bytes = 100").await;
    let long = format!(
        "GET /{} HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n",
        "a".repeat(200)
    );
    let reply = raw(keel.addr("main"), long.as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 414"), "{reply}");
    let short = format!(
        "GET /{} HTTP/1.1\r\nhost: svc\r\nconnection: close\r\n\r\n",
        "a".repeat(50)
    );
    let reply = raw(keel.addr("main"), short.as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert_eq!(up.requests(), 1);
}

#[tokio::test]
async fn body_over_max_request_body_is_413_for_declared_and_chunked_bodies() {
    let (keel, up) = keel_with("max_request_body = \"1KiB\"").await;
    let declared = format!(
        "POST /sink HTTP/1.1\r\nhost: svc\r\ncontent-length: 2000\r\n\r\n{}",
        "x".repeat(2000)
    );
    let reply = raw(
        keel.addr("main"),
        declared.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert_eq!(
        up.requests(),
        0,
        "a declared oversize body is refused before forwarding"
    );

    let mut chunked =
        String::from("POST /sink HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n");
    for _ in 0..4 {
        chunked.push_str(&format!("400\r\n{}\r\n", "y".repeat(1024)));
    }
    chunked.push_str("0\r\n\r\n");
    let reply = raw(
        keel.addr("main"),
        chunked.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");

    let fits = format!(
        "POST /sink HTTP/1.1\r\nhost: svc\r\ncontent-length: 1000\r\nconnection: close\r\n\r\n{}",
        "z".repeat(1000)
    );
    let reply = raw(keel.addr("main"), fits.as_bytes(), Duration::from_secs(5)).await;
    assert!(
        reply.starts_with("HTTP/1.1 200") && reply.contains("\r\n\r\n1000 "),
        "{reply}"
    );
}
