//! Bodies stream through keel, never buffered whole: 1 GiB up and 1 GiB down through a keel
//! process, checksums match, and keel's peak RSS stays small.

mod support;

use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use support::*;
use tokio::net::TcpStream;
use tokio::time::Instant;

const GIB: u64 = 1 << 30;
/// Peak RSS allowed for keel while 2 GiB pass through it.
const RSS_LIMIT_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gib_each_way_streams_with_bounded_memory() {
    let up = upstream(Behaviour::Respond).await;
    let keel = KeelProcess::start(&single_route(up.addr, "", "timeout = \"600s\""));
    let addr = keel.addr("main");

    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);

    // Up: the upstream checksums what it receives.
    let started = Instant::now();
    let req = Request::post("/sink")
        .header("host", "svc")
        .body(RepeatBody::new(GIB))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let up_time = started.elapsed();
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{GIB} {}", RepeatBody::checksum(GIB))
    );

    // Down: the client checksums what it receives.
    let started = Instant::now();
    let req = Request::get(format!("/source/{GIB}"))
        .header("host", "svc")
        .body(RepeatBody::new(0))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut hasher = crc32fast::Hasher::new();
    let mut received = 0u64;
    while let Some(frame) = tokio::time::timeout(Duration::from_secs(30), body.frame())
        .await
        .unwrap()
    {
        if let Some(data) = frame.unwrap().data_ref() {
            hasher.update(data);
            received += data.len() as u64;
        }
    }
    let down_time = started.elapsed();
    assert_eq!(received, GIB);
    assert_eq!(
        format!("{:08x}", hasher.finalize()),
        RepeatBody::checksum(GIB)
    );

    let rss = keel.peak_rss_kib();
    let mib = |d: Duration| GIB as f64 / (1 << 20) as f64 / d.as_secs_f64();
    println!(
        "streaming: 1 GiB up in {up_time:?} ({:.0} MiB/s), 1 GiB down in {down_time:?} ({:.0} MiB/s); keel peak RSS {} KiB",
        mib(up_time),
        mib(down_time),
        rss
    );
    assert!(
        rss < RSS_LIMIT_KIB,
        "keel peak RSS {rss} KiB over {RSS_LIMIT_KIB} KiB: something buffers bodies"
    );
}
