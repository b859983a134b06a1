//! Hostile and malformed clients, and broken upstreams (issue 6).
//!
//! Clients: exact bytes over raw TCP, one fresh keel and counting upstream per case; each
//! ambiguous or malformed request gets the exact status line, nothing reaches the upstream, and
//! the connection closes. HTTP/2 (h2c prior knowledge) is spoken in raw frames, because hyper's
//! and h2's clients refuse to send the connection-specific headers under test.
//!
//! Upstreams: raw TCP servers that answer with scripted bytes; each failure is a 502 with the
//! right `keel-error`, a dirty upstream connection is never reused, and keel serves the next
//! request normally, on a fresh client connection and on the one that saw the failure.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Bound for any single network step.
const STEP: Duration = Duration::from_secs(5);

/// A pipelined follow-up request; when keel answers it, it must be this real request.
const AFTER: &[u8] = b"GET /after HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n";

// ---------------------------------------------------------------------------------------------
// Client-side helpers
// ---------------------------------------------------------------------------------------------

/// One listener `main` (with `listener_extra`) routing everything to `upstream`.
fn one_route(upstream: SocketAddr, listener_extra: &str, upstream_extra: &str) -> String {
    format!(
        "[[listeners]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\n{listener_extra}\n\
         [[listeners.routes]]\nupstream = \"up\"\n\
         [upstreams.up]\nendpoints = [\"{upstream}\"]\n{upstream_extra}\n"
    )
}

/// What keel sent back on one raw connection.
struct Exchange {
    bytes: Vec<u8>,
    /// The connection ended (EOF or reset) within `STEP`.
    closed: bool,
}

impl Exchange {
    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        match text.char_indices().nth(600) {
            Some((cut, _)) => format!("{}…", &text[..cut]),
            None => text.into_owned(),
        }
    }

    /// The status lines of the responses, in order. Each response is framed the way a client
    /// would frame it (`Content-Length`, `chunked`, or up to the close), so a body that
    /// happens to contain `HTTP/1.1` or does not end in a newline cannot confuse the count.
    fn status_lines(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let mut rest = &self.bytes[..];
        // Bounded: every round consumes at least a head.
        for _ in 0..64 {
            let Some(head_end) = find(rest, b"\r\n\r\n") else {
                break;
            };
            let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
            rest = &rest[head_end + 4..];
            let mut head_lines = head.split("\r\n");
            let status = head_lines.next().unwrap_or_default().to_owned();
            let mut length = None;
            let mut chunked = false;
            for line in head_lines {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.eq_ignore_ascii_case("chunked");
                }
            }
            let informational = status.starts_with("HTTP/1.1 1");
            lines.push(status);
            if informational {
                continue;
            }
            if chunked {
                rest = skip_chunked(rest);
            } else {
                rest = &rest[length.unwrap_or(rest.len()).min(rest.len())..];
            }
        }
        lines
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Skips a chunked body (with any trailers), returning what follows it.
fn skip_chunked(mut rest: &[u8]) -> &[u8] {
    loop {
        let Some(line_end) = find(rest, b"\r\n") else {
            return &[];
        };
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16);
        rest = &rest[line_end + 2..];
        match size {
            Ok(0) => {
                // Trailers end with an empty line.
                return match find(rest, b"\r\n\r\n") {
                    Some(_) if rest.starts_with(b"\r\n") => &rest[2..],
                    Some(end) => &rest[end + 4..],
                    None => &[],
                };
            }
            Ok(n) if rest.len() >= n + 2 => rest = &rest[n + 2..],
            _ => return &[],
        }
    }
}

/// Reads until the peer closes (EOF or reset) or `STEP` passes.
async fn read_to_close(stream: &mut TcpStream, into: &mut Vec<u8>) -> bool {
    let read = tokio::time::timeout(STEP, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => into.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.is_ok()
}

/// Writes `request` (a failed write is fine: keel may close first) and reads until close.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Exchange {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut bytes = Vec::new();
    let closed = read_to_close(&mut stream, &mut bytes).await;
    Exchange { bytes, closed }
}

fn status_line(status: u16) -> String {
    let code = StatusCode::from_u16(status).unwrap();
    format!("HTTP/1.1 {status} {}", code.canonical_reason().unwrap())
}

/// keel still serves a normal request, and the upstream has seen exactly `forwarded` requests
/// before it (the request under test reached it before keel answered, so it is counted by now).
async fn assert_served_after(addr: SocketAddr, up: &TestUpstream, forwarded: usize, what: &str) {
    assert_eq!(
        up.requests(),
        forwarded,
        "{what}: the upstream saw {} request(s), expected {forwarded}",
        up.requests()
    );
    let reply = tokio::time::timeout(STEP, get(addr, "svc", "/next"))
        .await
        .expect("the next request was answered in time");
    assert_eq!(reply.status, 200, "{what}: next request: {reply:?}");
    assert!(
        reply.body.starts_with("GET /next HTTP/1.1"),
        "{}",
        reply.body
    );
    assert_eq!(
        up.requests(),
        forwarded + 1,
        "{what}: after the next request"
    );
}

/// The request is answered with exactly `status`, nothing is forwarded, the connection closes.
async fn assert_rejected(request: &[u8], status: u16) {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&one_route(up.addr, "", "")).await;
    let addr = keel.addr("main");
    let reply = exchange(addr, request).await;
    let shown = format!(
        "request {:?}\nreply {:?}",
        String::from_utf8_lossy(request),
        reply.text()
    );
    assert_eq!(
        reply.status_lines(),
        vec![status_line(status)],
        "exactly one response with the expected status\n{shown}"
    );
    assert!(
        reply.closed,
        "keel kept the connection open after rejecting\n{shown}"
    );
    assert_served_after(addr, &up, 0, &shown).await;
}

/// The request is answered with `status` first and is not forwarded; the connection then
/// closes, or the pipelined [`AFTER`] request is served as itself and nothing else is.
async fn assert_rejected_then_close_or_next(
    listener_extra: &str,
    request: &[u8],
    status: u16,
) -> Exchange {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&one_route(up.addr, listener_extra, "")).await;
    let addr = keel.addr("main");
    let mut bytes = request.to_vec();
    bytes.extend_from_slice(AFTER);
    let reply = exchange(addr, &bytes).await;
    let shown = format!("reply {:?}", reply.text());
    let lines = reply.status_lines();
    assert_eq!(
        lines.first(),
        Some(&status_line(status)),
        "first response\n{shown}"
    );
    assert!(reply.closed, "the connection ends in time\n{shown}");
    let served_after = match &lines[1..] {
        [] => 0,
        [next] => {
            assert_eq!(next, &status_line(200), "second response\n{shown}");
            assert!(
                String::from_utf8_lossy(&reply.bytes).contains("\nGET /after HTTP/1.1\n"),
                "the second response is the upstream's answer to GET /after\n{shown}"
            );
            1
        }
        more => panic!("more responses than requests ({more:?})\n{shown}"),
    };
    assert_served_after(addr, &up, served_after, &shown).await;
    reply
}

/// One test per case: `name: status, bytes;` (a table; each case can be ignored on its own).
macro_rules! rejects {
    ($( $(#[$meta:meta])* $name:ident: $status:literal, $request:expr; )*) => {$(
        $(#[$meta])*
        #[tokio::test]
        async fn $name() {
            assert_rejected($request, $status).await;
        }
    )*};
}

rejects! {
    // Framing: Content-Length and Transfer-Encoding.
    content_length_and_transfer_encoding: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    transfer_encoding_and_content_length: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n";
    two_different_content_lengths: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!";
    content_length_list_with_different_values: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nContent-Length: 5, 6\r\n\r\nhello!";
    content_length_not_a_number: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nContent-Length: abc\r\n\r\nhello";
    content_length_negative: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nContent-Length: -1\r\n\r\nhello";
    content_length_two_numbers: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nContent-Length: 1 2\r\n\r\nhello";
    content_length_with_plus_sign: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nContent-Length: +5\r\n\r\nhello";
    transfer_encoding_gzip_then_chunked: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n";
    transfer_encoding_gzip_line_then_chunked_line: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    transfer_encoding_chunked_then_gzip: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n";
    transfer_encoding_chunked_twice: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n";
    transfer_encoding_xchunked: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n";
    transfer_encoding_chunked_trailing_comma: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked,\r\n\r\n0\r\n\r\n";
    transfer_encoding_chunked_vertical_tab: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\x0b\r\n\r\n0\r\n\r\n";
    transfer_encoding_identity: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: identity\r\nContent-Length: 5\r\n\r\nhello";
    transfer_encoding_on_http_1_0: 400,
        b"POST /sink HTTP/1.0\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    // Line syntax.
    obs_fold: 400,
        b"GET / HTTP/1.1\r\nHost: svc\r\nX-Folded: a\r\n b\r\n\r\n";
    obs_fold_with_tab: 400,
        b"GET / HTTP/1.1\r\nHost: svc\r\nX-Folded: a\r\n\tb\r\n\r\n";
    bare_cr_in_value: 400,
        b"GET / HTTP/1.1\r\nHost: svc\r\nX-A: a\rb\r\n\r\n";
    bare_lf_line_endings: 400,
        b"GET / HTTP/1.1\nHost: svc\n\n";
    bare_lf_after_one_header: 400,
        b"GET / HTTP/1.1\r\nHost: svc\nX-A: b\r\n\r\n";
    nul_in_value: 400,
        b"GET / HTTP/1.1\r\nHost: svc\r\nX-A: a\x00b\r\n\r\n";
    control_character_in_value: 400,
        b"GET / HTTP/1.1\r\nHost: svc\r\nX-A: a\x01b\r\n\r\n";
    del_in_value: 400,
        b"GET / HTTP/1.1\r\nHost: svc\r\nX-A: a\x7fb\r\n\r\n";
    escape_in_value: 400,
        b"GET / HTTP/1.1\r\nHost: svc\r\nX-A: a\x1b[31mb\r\n\r\n";
    // Field names.
    space_before_colon: 400,
        b"GET / HTTP/1.1\r\nHost : svc\r\n\r\n";
    space_inside_name: 400,
        b"GET / HTTP/1.1\r\nHost: svc\r\nX A: b\r\n\r\n";
    parenthesis_in_name: 400,
        b"GET / HTTP/1.1\r\nHost: svc\r\nX(A): b\r\n\r\n";
    at_sign_in_name: 400,
        b"GET / HTTP/1.1\r\nHost: svc\r\nX@A: b\r\n\r\n";
    empty_name: 400,
        b"GET / HTTP/1.1\r\nHost: svc\r\n: b\r\n\r\n";
    nul_in_name: 400,
        b"GET / HTTP/1.1\r\nHost: svc\r\nX\x00A: b\r\n\r\n";
    // Chunked body syntax.
    chunk_size_not_hex: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n";
    chunk_size_overflow: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\nhello\r\n0\r\n\r\n";
    chunk_data_without_terminator: 400,
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n";
    // The request line.
    space_in_target: 400,
        b"GET /a b HTTP/1.1\r\nHost: svc\r\n\r\n";
    unknown_version: 400,
        b"GET / HTTP/1.2\r\nHost: svc\r\n\r\n";
}

/// Valid spellings of the same framings are accepted and forwarded: the rejections above are
/// not a side effect of a broken harness.
#[tokio::test]
async fn valid_framing_variants_are_forwarded() {
    let cases: [&[u8]; 4] = [
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked \r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /sink HTTP/1.1\r\nHost: svc\r\nX-A:\tb c \r\nContent-Length: 5\r\n\r\nhello",
    ];
    for case in cases {
        let up = upstream(Behaviour::Respond).await;
        let keel = spawn_keel(&one_route(up.addr, "", "")).await;
        let mut request = case.to_vec();
        request.extend_from_slice(AFTER);
        let reply = exchange(keel.addr("main"), &request).await;
        let shown = format!("{:?}\n{}", String::from_utf8_lossy(case), reply.text());
        assert_eq!(
            reply.status_lines(),
            vec![status_line(200), status_line(200)],
            "{shown}"
        );
        // The upstream's `/sink` answers with the body length and CRC32 of "hello".
        assert!(
            String::from_utf8_lossy(&reply.bytes).contains("5 3610a686"),
            "{shown}"
        );
        assert!(reply.closed, "{shown}");
        assert_eq!(up.requests(), 2, "{shown}");
    }
}

/// A request target over `max_uri_bytes` (8 KiB by default) is a 414 and is not forwarded.
#[tokio::test]
async fn uri_over_the_limit_is_414() {
    let request = format!(
        "GET /{} HTTP/1.1\r\nHost: svc\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    assert_rejected_then_close_or_next("", request.as_bytes(), 414).await;
}

/// A target over hyper's own buffer (64 KiB head limit) cannot even be parsed: 414 is asked
/// for, 431 (the head is over `max_header_bytes` too) is accepted. Never forwarded.
#[tokio::test]
async fn uri_over_the_head_buffer_is_414_or_431() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&one_route(up.addr, "", "")).await;
    let addr = keel.addr("main");
    let request = format!(
        "GET /{} HTTP/1.1\r\nHost: svc\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let reply = exchange(addr, request.as_bytes()).await;
    let lines = reply.status_lines();
    assert!(
        lines == vec![status_line(414)] || lines == vec![status_line(431)],
        "{:?}",
        reply.text()
    );
    assert!(reply.closed);
    assert_served_after(addr, &up, 0, "70 KiB target").await;
}

/// A declared body over `max_request_body` is a 413 before anything is forwarded; the body
/// (which hides a request) is never parsed as a request.
#[tokio::test]
async fn declared_body_over_max_request_body_is_413() {
    let hidden = b"GET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n";
    let mut request = b"POST /sink HTTP/1.1\r\nHost: svc\r\nContent-Length: 2048\r\n\r\n".to_vec();
    request.extend_from_slice(hidden);
    request.resize(request.len() - hidden.len() + 2048, b'a');
    let reply =
        assert_rejected_then_close_or_next("max_request_body = \"1KiB\"", &request, 413).await;
    assert!(!String::from_utf8_lossy(&reply.bytes).contains("/smuggled"));
}

/// A chunked body that grows past `max_request_body` is a 413 once the count passes the limit.
/// The head may already be on its way upstream, but the upstream never receives a complete
/// request, and the rest of the body is never parsed as a request.
#[tokio::test]
async fn chunked_body_over_max_request_body_is_413() {
    let rec = Recorder::start().await;
    let keel = spawn_keel(&one_route(rec.addr, "max_request_body = \"1KiB\"", "")).await;
    let mut request =
        b"POST /upload HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        request.extend_from_slice(b"200\r\n");
        let mut chunk = b"GET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n".to_vec();
        chunk.resize(0x200, b'a');
        request.extend_from_slice(&chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    request.extend_from_slice(AFTER);
    let reply = exchange(keel.addr("main"), &request).await;
    let lines = reply.status_lines();
    assert_eq!(lines.first(), Some(&status_line(413)), "{}", reply.text());
    assert!(lines.len() <= 2, "{}", reply.text());
    assert!(reply.closed, "{}", reply.text());
    let seen = rec.seen();
    assert!(
        seen.iter().all(|s| !s.starts_with("POST /upload complete")),
        "the upstream got the whole oversized body: {seen:?}"
    );
    assert!(seen.iter().all(|s| !s.contains("/smuggled")), "{seen:?}");
}

/// Conflicting framing with a second request hidden in the body: whatever keel makes of the
/// first request, the hidden one never reaches the upstream as a request of its own, and the
/// client gets at most one response.
#[tokio::test]
async fn request_hidden_in_a_body_with_conflicting_framing_is_not_forwarded() {
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n";
    let chunked_body = format!("0\r\n\r\n{hidden}");
    let probes = [
        format!(
            "POST /a HTTP/1.1\r\nHost: svc\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_body}",
            chunked_body.len()
        ),
        format!(
            "POST /a HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n{chunked_body}",
            chunked_body.len()
        ),
        format!(
            "POST /a HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: {}\r\n\r\n{chunked_body}",
            chunked_body.len()
        ),
        format!(
            "POST /a HTTP/1.1\r\nHost: svc\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{hidden}",
            hidden.len()
        ),
        format!(
            "POST /a HTTP/1.0\r\nHost: svc\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n{chunked_body}",
            chunked_body.len()
        ),
        format!(
            "POST /a HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n0\r\n\r\n{hidden}\r\n0\r\n\r\n",
            chunked_body.len()
        ),
        // Bare LF after the chunk size: a parser that needs CRLF sees different chunk data.
        format!("POST /a HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n0\n\r\n{hidden}"),
    ];
    for probe in probes {
        let rec = Recorder::start().await;
        let keel = spawn_keel(&one_route(rec.addr, "", "")).await;
        let mut request = probe.clone().into_bytes();
        request.extend_from_slice(AFTER);
        let reply = exchange(keel.addr("main"), &request).await;
        let seen = rec.seen();
        let shown = format!(
            "probe {probe:?}\nreply {:?}\nupstream saw {seen:?}",
            reply.text()
        );
        assert!(
            seen.iter().all(|s| !s.contains("/smuggled")),
            "hidden request forwarded\n{shown}"
        );
        // The probe and `AFTER` at most; keel answers nothing it did not receive.
        assert!(reply.status_lines().len() <= 2, "{shown}");
        assert!(reply.closed, "{shown}");
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 in raw frames
// ---------------------------------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const PROTOCOL_ERROR: u32 = 0x1;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK integer with an `prefix`-bit prefix; `first` holds the pattern bits above it.
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn hpack_str(out: &mut Vec<u8>, s: &str) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A request header block of literals without indexing and without Huffman coding.
fn request_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    // Static table: 2 = :method GET, 3 = :method POST; 6 = :scheme http; 4 = :path, 1 = :authority.
    out.push(if method == "POST" { 0x83 } else { 0x82 });
    out.push(0x86);
    hpack_int(&mut out, 0x00, 4, 4);
    hpack_str(&mut out, path);
    hpack_int(&mut out, 0x00, 4, 1);
    hpack_str(&mut out, "svc");
    for (name, value) in extra {
        out.push(0x00);
        hpack_str(&mut out, name);
        hpack_str(&mut out, value);
    }
    out
}

fn read_hpack_int(block: &[u8], at: &mut usize, prefix: u32) -> Option<usize> {
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(*block.get(*at)?) & max;
    *at += 1;
    if value < max {
        return Some(value);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*at)?;
        *at += 1;
        value += usize::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
}

/// Huffman-decodes a string of decimal digits (RFC 7541 Appendix B: `0`-`2` are 5-bit codes
/// `00000`-`00010`, `3`-`9` are 6-bit codes `011001`-`011111`), enough for a `:status`.
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let value = |from: usize, n: usize| bits[from..from + n].iter().fold(0u8, |v, b| v << 1 | b);
    let mut out = String::new();
    let mut at = 0;
    while at < bits.len() {
        let left = bits.len() - at;
        if left < 8 && bits[at..].iter().all(|b| *b == 1) {
            break; // EOS padding
        }
        if left >= 5 && value(at, 5) <= 2 {
            out.push(char::from(b'0' + value(at, 5)));
            at += 5;
        } else if left >= 6 && (0b011001..=0b011111).contains(&value(at, 6)) {
            out.push(char::from(b'3' + value(at, 6) - 0b011001));
            at += 6;
        } else {
            return None;
        }
    }
    Some(out)
}

/// The `:status` of the first header block on a connection (no dynamic-table references yet).
fn decode_status(block: &[u8]) -> Option<u16> {
    let mut at = 0;
    while *block.get(at)? & 0xe0 == 0x20 {
        read_hpack_int(block, &mut at, 5)?; // dynamic table size update
    }
    let first = *block.get(at)?;
    let index = if first & 0x80 != 0 {
        let index = read_hpack_int(block, &mut at, 7)?;
        return [200, 204, 206, 304, 400, 404, 500]
            .get(index.checked_sub(8)?)
            .copied();
    } else if first & 0xc0 == 0x40 {
        read_hpack_int(block, &mut at, 6)?
    } else {
        read_hpack_int(block, &mut at, 4)?
    };
    if !(8..=14).contains(&index) {
        return None;
    }
    let huffman = *block.get(at)? & 0x80 != 0;
    let len = read_hpack_int(block, &mut at, 7)?;
    let raw = block.get(at..at + len)?;
    let text = if huffman {
        huffman_digits(raw)?
    } else {
        String::from_utf8(raw.to_vec()).ok()?
    };
    text.parse().ok()
}

#[test]
fn hpack_status_decoder() {
    // '5' 011011, '0' 00000, '2' 00010: 0110_1100 0000_0010.
    assert_eq!(huffman_digits(&[0x6c, 0x02]).as_deref(), Some("502"));
    assert_eq!(decode_status(&[0x88]), Some(200));
    assert_eq!(decode_status(&[0x3f, 0xe1, 0x1f, 0x8c]), Some(400));
    assert_eq!(decode_status(&[0x48, 0x82, 0x6c, 0x02]), Some(502));
    assert_eq!(decode_status(&[0x08, 0x03, b'4', b'3', b'1']), Some(431));
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// What happened to one stream.
#[derive(Debug, PartialEq)]
enum Outcome {
    Status(Option<u16>),
    Reset(u32),
    GoAway(u32),
    Closed,
}

/// A raw h2c client connection.
struct H2 {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server's first SETTINGS.
    settings: Vec<(u16, u32)>,
}

impl H2 {
    async fn connect(addr: SocketAddr) -> H2 {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut h2 = H2 {
            stream,
            buf: Vec::new(),
            settings: Vec::new(),
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &[]));
        h2.send(&hello).await;
        loop {
            let f = h2.next_frame().await.expect("server SETTINGS");
            if f.kind == SETTINGS && f.flags & ACK == 0 {
                h2.settings = f
                    .payload
                    .chunks_exact(6)
                    .map(|c| {
                        (
                            u16::from_be_bytes([c[0], c[1]]),
                            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                        )
                    })
                    .collect();
                // The server applies its limits once they are acknowledged.
                h2.send(&frame(SETTINGS, ACK, 0, &[])).await;
                return h2;
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        // A write error shows up as `Closed` on the next read.
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next frame, or `None` on close, error or after `STEP`.
    async fn next_frame(&mut self) -> Option<Frame> {
        let deadline = Instant::now() + STEP;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9 + len).collect();
                    return Some(Frame {
                        kind: head[3],
                        flags: head[4],
                        stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]])
                            & 0x7fff_ffff,
                        payload: head[9..].to_vec(),
                    });
                }
            }
            let mut chunk = [0u8; 16384];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Reads until something decides `stream`'s fate.
    async fn outcome(&mut self, stream: u32) -> Outcome {
        loop {
            let Some(f) = self.next_frame().await else {
                return Outcome::Closed;
            };
            match f.kind {
                HEADERS if f.stream == stream => return Outcome::Status(decode_status(&f.payload)),
                RST_STREAM if f.stream == stream => {
                    return Outcome::Reset(u32::from_be_bytes(f.payload[..4].try_into().unwrap()))
                }
                GOAWAY => {
                    return Outcome::GoAway(u32::from_be_bytes(f.payload[4..8].try_into().unwrap()))
                }
                SETTINGS if f.flags & ACK == 0 => self.send(&frame(SETTINGS, ACK, 0, &[])).await,
                PING if f.flags & ACK == 0 => self.send(&frame(PING, ACK, 0, &f.payload)).await,
                _ => {}
            }
        }
    }
}

/// Connection-specific fields are malformed in HTTP/2 (RFC 9113 8.2.2): the stream is reset
/// (or answered 400), and nothing reaches the upstream.
#[tokio::test]
async fn h2_connection_specific_headers_are_rejected_not_forwarded() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&one_route(up.addr, "", "")).await;
    let addr = keel.addr("main");
    let cases = [
        ("connection", "keep-alive"),
        ("connection", "close"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("te", "gzip"),
        ("te", "trailers, gzip"),
    ];
    let mut wrong = Vec::new();
    for (name, value) in cases {
        let mut h2 = H2::connect(addr).await;
        let block = request_block("GET", "/", &[(name, value)]);
        h2.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
            .await;
        let outcome = h2.outcome(1).await;
        if !matches!(
            outcome,
            Outcome::Reset(PROTOCOL_ERROR) | Outcome::Status(Some(400))
        ) {
            wrong.push(format!("{name}: {value} -> {outcome:?}"));
        }
    }
    assert!(wrong.is_empty(), "not rejected: {wrong:?}");
    // `te: trailers` is the one allowed value.
    let mut h2 = H2::connect(addr).await;
    let block = request_block("GET", "/", &[("te", "trailers")]);
    h2.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await;
    assert_eq!(h2.outcome(1).await, Outcome::Status(Some(200)));
    assert_served_after(addr, &up, 1, "h2 connection-specific headers").await;
}

/// A DATA length that contradicts `content-length` (with a request hidden in the excess) is a
/// stream error; the upstream never gets a complete request, and never the hidden one.
#[tokio::test]
async fn h2_body_longer_than_content_length_is_rejected() {
    let rec = Recorder::start().await;
    let keel = spawn_keel(&one_route(rec.addr, "", "")).await;
    let mut h2 = H2::connect(keel.addr("main")).await;
    let block = request_block("POST", "/upload", &[("content-length", "5")]);
    let mut bytes = frame(HEADERS, END_HEADERS, 1, &block);
    bytes.extend(frame(
        DATA,
        END_STREAM,
        1,
        b"helloGET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n",
    ));
    h2.send(&bytes).await;
    let outcome = h2.outcome(1).await;
    assert!(
        matches!(
            outcome,
            Outcome::Reset(PROTOCOL_ERROR) | Outcome::Status(Some(400))
        ),
        "{outcome:?}"
    );
    let reply = tokio::time::timeout(STEP, get(keel.addr("main"), "svc", "/next"))
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
    let seen = rec.seen();
    assert!(
        seen.iter()
            .all(|s| !s.contains("/smuggled") && !s.starts_with("POST /upload complete")),
        "{seen:?}"
    );
}

/// keel advertises its stream limit; one stream over it is refused and never forwarded.
// keel dials 256 upstream connections at once; two workers keep the test upstream accepting
// while keel and the client are busy (on one thread its accept loop fell behind the dials).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_over_the_advertised_limit_are_refused() {
    let up = upstream(Behaviour::Hang).await;
    let keel = spawn_keel(&one_route(
        up.addr,
        "",
        "[upstreams.up.pool]\nmax_connections = 512\nmax_requests = 512\nmax_pending = 512\n",
    ))
    .await;
    let mut h2 = H2::connect(keel.addr("main")).await;
    let limit = h2
        .settings
        .iter()
        .find(|(id, _)| *id == SETTINGS_MAX_CONCURRENT_STREAMS)
        .map(|(_, v)| *v)
        .expect("keel advertises SETTINGS_MAX_CONCURRENT_STREAMS");
    assert_eq!(limit, 256);
    // Open `limit` streams whose request bodies never end, then one more.
    let mut bytes = Vec::new();
    for i in 0..=limit {
        let block = request_block("POST", &format!("/s{i}"), &[]);
        bytes.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
    }
    h2.send(&bytes).await;
    let over = 2 * limit + 1;
    assert_eq!(h2.outcome(over).await, Outcome::Reset(REFUSED_STREAM));
    let open = limit as usize;
    eventually(STEP, "every stream within the limit forwarded", || {
        let n = up.requests();
        async move { n == open }
    })
    .await;
    assert_eq!(up.requests(), open, "the refused stream was forwarded");
}

/// Streams opened and reset at once (CVE-2023-44487) end in GOAWAY `ENHANCE_YOUR_CALM`, and keel
/// keeps serving other clients.
#[tokio::test]
async fn h2_rapid_reset_ends_in_goaway() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&one_route(up.addr, "", "")).await;
    let addr = keel.addr("main");
    let mut h2 = H2::connect(addr).await;
    let mut bytes = Vec::new();
    for i in 0..500u32 {
        let id = 2 * i + 1;
        bytes.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &request_block("GET", "/", &[]),
        ));
        bytes.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    h2.send(&bytes).await;
    // No stream of ours gets a verdict of its own; the connection does.
    assert_eq!(
        h2.outcome(u32::MAX).await,
        Outcome::GoAway(ENHANCE_YOUR_CALM)
    );
    let mut rest = Vec::new();
    assert!(
        read_to_close(&mut h2.stream, &mut rest).await,
        "closed after GOAWAY"
    );
    let reply = tokio::time::timeout(STEP, get(addr, "svc", "/next"))
        .await
        .unwrap();
    assert_eq!(reply.status, 200);
}

// ---------------------------------------------------------------------------------------------
// Upstream-side helpers
// ---------------------------------------------------------------------------------------------

/// A hyper upstream that reads every request body and records `METHOD /path complete LEN` or
/// `METHOD /path broken`; it answers `200` with `METHOD /path HTTP/1.1\n`.
#[derive(Clone)]
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move {
                            let head = format!("{} {}", req.method(), req.uri().path());
                            let entry = match req.into_body().collect().await {
                                Ok(body) => format!("{head} complete {}", body.to_bytes().len()),
                                Err(_) => format!("{head} broken"),
                            };
                            log.lock().unwrap().push(entry);
                            let body = Full::new(Bytes::from(format!("{head} HTTP/1.1\n")));
                            Ok::<_, std::convert::Infallible>(Response::new(body))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Recorder { addr, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A raw upstream: `handler(connection index, stream)` runs for every accepted connection.
async fn scripted<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(usize, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut index = 0;
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(handler(index, stream));
            index += 1;
        }
    });
    addr
}

/// Reads one request head (keel sends these GETs without a body); `false` on close first.
async fn read_request_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(30), stream.read(&mut byte)).await {
            Ok(Ok(1)) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// Answers every request on a connection with `reply`, until keel closes it.
async fn serve_each(mut stream: TcpStream, reply: &'static [u8]) {
    while read_request_head(&mut stream).await {
        if stream.write_all(reply).await.is_err() {
            return;
        }
    }
}

/// Answers the first request with `reply` and closes.
async fn reply_and_close(mut stream: TcpStream, reply: &'static [u8]) {
    if read_request_head(&mut stream).await {
        let _ = stream.write_all(reply).await;
        let _ = stream.shutdown().await;
    }
}

/// keel with `/bad…` routed to the upstream under test and everything else to a recorder.
struct Fixture {
    keel: Keel,
    good: Recorder,
}

impl Fixture {
    async fn new(bad: SocketAddr) -> Fixture {
        let good = Recorder::start().await;
        let keel = spawn_keel(&format!(
            r#"
[[listeners]]
name = "main"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  match = {{ path_prefix = "/bad" }}
  upstream = "bad"
  timeout = "5s"
  [[listeners.routes]]
  upstream = "good"
[upstreams.bad]
endpoints = ["{bad}"]
[upstreams.good]
endpoints = ["{}"]
"#,
            good.addr
        ))
        .await;
        Fixture { keel, good }
    }

    fn addr(&self) -> SocketAddr {
        self.keel.addr("main")
    }

    /// A request to the healthy upstream succeeds on a fresh connection and on `conn`.
    async fn assert_healthy(&self, conn: &mut KeepAliveConn) {
        let before = self.good.seen().len();
        let reply = tokio::time::timeout(STEP, get(self.addr(), "svc", "/ok"))
            .await
            .expect("answered in time");
        assert_eq!(reply.status, 200, "fresh connection: {reply:?}");
        assert_eq!(reply.body, "GET /ok HTTP/1.1\n");
        let reply = conn.get("/ok").await;
        assert_eq!(reply.status, 200, "same connection: {reply:?}");
        assert_eq!(reply.body, "GET /ok HTTP/1.1\n");
        assert_eq!(self.good.seen().len(), before + 2);
    }
}

/// Two requests to a broken upstream are each a 502 `upstream-reset`; then keel is healthy.
async fn assert_broken_upstream_is_502(bad: SocketAddr) {
    let fx = Fixture::new(bad).await;
    let mut conn = KeepAliveConn::open(fx.addr(), "svc").await;
    for _ in 0..2 {
        let reply = conn.get("/bad").await;
        assert_eq!(reply.status, 502, "{reply:?}");
        assert_eq!(reply.keel_error(), Some("upstream-reset"), "{reply:?}");
    }
    fx.assert_healthy(&mut conn).await;
}

// ---------------------------------------------------------------------------------------------
// Broken upstreams
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn upstream_garbage_instead_of_a_status_line_is_502() {
    let bad = scripted(|_, s| serve_each(s, b"HELLO WORLD\r\n\r\n")).await;
    assert_broken_upstream_is_502(bad).await;
}

#[tokio::test]
async fn upstream_partial_head_then_close_is_502() {
    let bad = scripted(|_, s| reply_and_close(s, b"HTTP/1.1 200 OK\r\nContent-Le")).await;
    assert_broken_upstream_is_502(bad).await;
}

#[tokio::test]
async fn upstream_conflicting_content_lengths_are_502() {
    let bad = scripted(|_, s| {
        serve_each(
            s,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        )
    })
    .await;
    assert_broken_upstream_is_502(bad).await;
}

#[tokio::test]
async fn upstream_content_length_list_with_different_values_is_502() {
    let bad =
        scripted(|_, s| serve_each(s, b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello!"))
            .await;
    assert_broken_upstream_is_502(bad).await;
}

#[tokio::test]
async fn upstream_invalid_content_length_is_502() {
    let bad =
        scripted(|_, s| serve_each(s, b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\nhello"))
            .await;
    assert_broken_upstream_is_502(bad).await;
}

/// `Transfer-Encoding: chunked` with a `Content-Length` that disagrees: 502, or the chunked body
/// exactly, without the stale length. Never the length's idea of the body.
#[tokio::test]
async fn upstream_chunked_with_content_length_is_handled_safely() {
    let bad = scripted(|_, s| {
        serve_each(
            s,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        )
    })
    .await;
    let fx = Fixture::new(bad).await;
    let mut conn = KeepAliveConn::open(fx.addr(), "svc").await;
    for _ in 0..2 {
        let reply = conn.get("/bad").await;
        match reply.status {
            502 => assert_eq!(reply.keel_error(), Some("upstream-reset"), "{reply:?}"),
            200 => {
                assert_eq!(reply.body, "hello", "{reply:?}");
                let length = reply.headers.get("content-length");
                assert!(
                    length.is_none() || length.unwrap() == "5",
                    "stale length passed on: {reply:?}"
                );
            }
            _ => panic!("{reply:?}"),
        }
    }
    fx.assert_healthy(&mut conn).await;
}

/// What a dirty upstream connection saw after its first response.
#[derive(Default)]
struct Dirty {
    /// keel sent another request on it.
    reused: AtomicUsize,
    /// keel closed it.
    closed: AtomicBool,
    /// Set by the test when the extra bytes may go out.
    go: Notify,
}

/// Connection 0 answers its first request with `ok`, then sends an unsolicited response
/// (at once, or when `go` is notified); another request on it gets `dirty`. Every other
/// connection answers `fresh` to every request.
async fn dirty_upstream(wait_for_go: bool) -> (SocketAddr, Arc<Dirty>) {
    let dirty = Arc::new(Dirty::default());
    let state = dirty.clone();
    let addr = scripted(move |index, mut s| {
        let state = state.clone();
        async move {
            if index > 0 {
                return serve_each(s, b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh").await;
            }
            if !read_request_head(&mut s).await {
                return;
            }
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            let extra = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled";
            if wait_for_go {
                let _ = s.write_all(ok).await;
                state.go.notified().await;
                let _ = s.write_all(extra).await;
            } else {
                let _ = s.write_all(&[&ok[..], &extra[..]].concat()).await;
            }
            while read_request_head(&mut s).await {
                state.reused.fetch_add(1, Ordering::SeqCst);
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\ndirty")
                    .await;
            }
            state.closed.store(true, Ordering::SeqCst);
        }
    })
    .await;
    (addr, dirty)
}

/// Extra bytes right behind a complete response: keel discards the connection, and the next
/// request goes over a fresh one (never answered with the extra bytes).
#[tokio::test]
async fn unsolicited_bytes_after_a_response_discard_the_connection() {
    let (bad, dirty) = dirty_upstream(false).await;
    let fx = Fixture::new(bad).await;
    let mut conn = KeepAliveConn::open(fx.addr(), "svc").await;
    let first = conn.get("/bad/1").await;
    assert_eq!((first.status, first.body.as_str()), (200, "ok"));
    let second = conn.get("/bad/2").await;
    assert_eq!(
        (second.status, second.body.as_str()),
        (200, "fresh"),
        "{second:?}"
    );
    assert_eq!(dirty.reused.load(Ordering::SeqCst), 0);
    eventually(STEP, "keel closes the dirty connection", || {
        let closed = dirty.closed.load(Ordering::SeqCst);
        async move { closed }
    })
    .await;
    fx.assert_healthy(&mut conn).await;
}

/// Bytes arriving on an idle pooled connection: keel closes it and never reuses it.
#[tokio::test]
async fn unsolicited_bytes_on_an_idle_pooled_connection_discard_it() {
    let (bad, dirty) = dirty_upstream(true).await;
    let fx = Fixture::new(bad).await;
    let mut conn = KeepAliveConn::open(fx.addr(), "svc").await;
    let first = conn.get("/bad/1").await;
    assert_eq!((first.status, first.body.as_str()), (200, "ok"));
    dirty.go.notify_one();
    eventually(STEP, "keel closes the dirty idle connection", || {
        let closed = dirty.closed.load(Ordering::SeqCst);
        async move { closed }
    })
    .await;
    let second = conn.get("/bad/2").await;
    assert_eq!(
        (second.status, second.body.as_str()),
        (200, "fresh"),
        "{second:?}"
    );
    assert_eq!(dirty.reused.load(Ordering::SeqCst), 0);
    fx.assert_healthy(&mut conn).await;
}

// ---------------------------------------------------------------------------------------------
// The upstream answers before the request body was read
// ---------------------------------------------------------------------------------------------

const EARLY_413: &[u8] =
    b"HTTP/1.1 413 Payload Too Large\r\nconnection: close\r\ncontent-length: 9\r\n\r\ntoo large";

/// An upstream that answers 413 as soon as it has the head, closes its side, and drains.
async fn early_413_upstream() -> SocketAddr {
    scripted(|_, mut s| async move {
        if !read_request_head(&mut s).await {
            return;
        }
        let _ = s.write_all(EARLY_413).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let _ = read_to_close(&mut s, &mut sink).await;
    })
    .await
}

/// Chunks whose data looks like a request, then the last chunk.
fn chunks_hiding_a_request() -> Vec<u8> {
    let hidden = b"GET /smuggled HTTP/1.1\r\nHost: svc\r\n\r\n";
    let mut out = Vec::new();
    for _ in 0..8 {
        out.extend_from_slice(format!("{:x}\r\n", hidden.len()).as_bytes());
        out.extend_from_slice(hidden);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// After the early answer the client's connection closes, or its next request is served as
/// itself; the upload's rest never becomes a request.
fn assert_early_answer_then_close_or_next(fx: &Fixture, reply: &Exchange) {
    let seen = fx.good.seen();
    let shown = format!("reply {:?}\nhealthy upstream saw {seen:?}", reply.text());
    let lines = reply.status_lines();
    assert_eq!(lines.first(), Some(&status_line(413)), "{shown}");
    match &lines[1..] {
        [] => assert!(seen.is_empty(), "{shown}"),
        [next] => {
            assert_eq!(next, &status_line(200), "{shown}");
            assert_eq!(seen, vec!["GET /after complete 0".to_owned()], "{shown}");
        }
        more => panic!("more responses than requests: {more:?}\n{shown}"),
    }
    assert!(reply.closed, "{shown}");
}

/// The client waits for the early 413, then sends the rest of its upload and a real request.
#[tokio::test]
async fn early_upstream_answer_rest_of_body_is_not_a_request() {
    let fx = Fixture::new(early_413_upstream().await).await;
    let mut stream = TcpStream::connect(fx.addr()).await.unwrap();
    let mut head =
        b"POST /bad/upload HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n"
            .to_vec();
    head.resize(head.len() + 0x400, b'a');
    head.extend_from_slice(b"\r\n");
    stream.write_all(&head).await.unwrap();
    // Wait for the whole 413 (its 9-byte body ends the response).
    let mut got = Vec::new();
    let answered = tokio::time::timeout(STEP, async {
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"too large") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        answered.is_ok() && got.ends_with(b"too large"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let mut rest = chunks_hiding_a_request();
    rest.extend_from_slice(AFTER);
    let _ = stream.write_all(&rest).await;
    let closed = read_to_close(&mut stream, &mut got).await;
    assert_early_answer_then_close_or_next(&fx, &Exchange { bytes: got, closed });
    let mut conn = KeepAliveConn::open(fx.addr(), "svc").await;
    fx.assert_healthy(&mut conn).await;
}

/// The same with the whole upload and the next request pipelined in one write.
#[tokio::test]
async fn early_upstream_answer_pipelined_upload_is_not_a_request() {
    let fx = Fixture::new(early_413_upstream().await).await;
    let mut request =
        b"POST /bad/upload HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    request.extend(chunks_hiding_a_request());
    request.extend_from_slice(AFTER);
    let reply = exchange(fx.addr(), &request).await;
    assert_early_answer_then_close_or_next(&fx, &reply);
    let mut conn = KeepAliveConn::open(fx.addr(), "svc").await;
    fx.assert_healthy(&mut conn).await;
}

/// A chunk-size error after the head was forwarded: the upstream sees the body break off (never
/// a complete request), the client gets 400 and the connection closes, and the breaker does not
/// count it against the upstream.
#[tokio::test]
async fn bad_chunk_after_the_head_was_forwarded_breaks_the_upload() {
    let other = Recorder::start().await;
    let fx = Fixture::new(other.addr).await;
    let mut stream = TcpStream::connect(fx.addr()).await.unwrap();
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await
        .unwrap();
    // The head is on its way upstream once the upstream's bulkhead holds the request.
    let admin = fx.keel.admin();
    eventually(STEP, "the request is in flight upstream", || async move {
        let upstreams = get(admin, "admin", "/upstreams").await.body;
        upstreams.contains("\"active\": 1")
    })
    .await;
    stream.write_all(b"zz\r\nhello\r\n0\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let closed = read_to_close(&mut stream, &mut got).await;
    let reply = Exchange { bytes: got, closed };
    let shown = format!("reply {:?}", reply.text());
    assert_eq!(reply.status_lines(), vec![status_line(400)], "{shown}");
    assert!(reply.text().contains("keel-error: bad-request"), "{shown}");
    assert!(reply.closed, "{shown}");
    let good = fx.good.seen.clone();
    eventually(STEP, "the upstream saw the body break off", || {
        let seen = good.lock().unwrap().clone();
        async move { seen == vec!["POST /upload broken".to_owned()] }
    })
    .await;
    let upstreams = get(admin, "admin", "/upstreams").await.body;
    assert!(upstreams.contains("\"state\": \"Closed\""), "{upstreams}");
    let mut conn = KeepAliveConn::open(fx.addr(), "svc").await;
    fx.assert_healthy(&mut conn).await;
}

const CONTINUATION: u8 = 0x9;

/// A header list over `max_header_bytes` in one HEADERS frame is refused and never forwarded.
#[tokio::test]
async fn h2_header_list_over_the_limit_is_refused() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&one_route(up.addr, "max_header_bytes = 8192", "")).await;
    let addr = keel.addr("main");
    let mut h2 = H2::connect(addr).await;
    let big = "a".repeat(12 * 1024);
    let block = request_block("GET", "/", &[("x-big", &big)]);
    h2.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await;
    let outcome = h2.outcome(1).await;
    assert!(
        matches!(
            outcome,
            Outcome::Status(Some(431)) | Outcome::Reset(_) | Outcome::GoAway(_)
        ),
        "{outcome:?}"
    );
    assert_served_after(addr, &up, 0, "h2 header list over the limit").await;
}

/// A CONTINUATION flood (one HEADERS without END_HEADERS, then endless CONTINUATION frames)
/// ends the connection once the header list passes the limit; keel does not buffer it
/// without bound, and serves other clients.
#[tokio::test]
async fn h2_continuation_flood_ends_the_connection() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&one_route(up.addr, "max_header_bytes = 8192", "")).await;
    let addr = keel.addr("main");
    let mut h2 = H2::connect(addr).await;
    let block = request_block("GET", "/", &[]);
    h2.send(&frame(HEADERS, 0, 1, &block)).await;
    // 4 KiB fragments of one literal header field, 64 of them: 256 KiB, far over the limit.
    let mut flood = Vec::new();
    for i in 0..64u32 {
        let mut fragment = Vec::new();
        fragment.push(0x00);
        hpack_str(&mut fragment, &format!("x-flood-{i}"));
        hpack_str(&mut fragment, &"b".repeat(4000));
        flood.extend(frame(CONTINUATION, 0, 1, &fragment));
    }
    // keel may close while the flood is still being written: that is the point.
    let _ = tokio::time::timeout(STEP, h2.stream.write_all(&flood)).await;
    let mut rest = Vec::new();
    assert!(
        read_to_close(&mut h2.stream, &mut rest).await,
        "keel kept reading the flood instead of closing"
    );
    assert_served_after(addr, &up, 0, "h2 CONTINUATION flood").await;
}

/// Many slowloris clients, each trickling a request head, take connection slots but do not
/// stop a normal client from being served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_starve_normal_ones() {
    let up = upstream(Behaviour::Respond).await;
    let keel = spawn_keel(&one_route(up.addr, "header_read_timeout = \"5s\"", "")).await;
    let addr = keel.addr("main");
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: s")
            .await
            .unwrap();
        slow.push(stream);
    }
    // Keep trickling one byte per connection while normal requests go through.
    for round in 0..3 {
        for stream in &mut slow {
            let _ = stream.write_all(b"v").await;
        }
        let started = Instant::now();
        let reply = tokio::time::timeout(STEP, get(addr, "svc", "/normal"))
            .await
            .expect("a normal client was answered in time");
        assert_eq!(reply.status, 200, "round {round}: {reply:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "round {round}: a normal request waited {:?} behind slow clients",
            started.elapsed()
        );
    }
    assert_eq!(up.requests(), 3, "no trickled head was forwarded");
}
