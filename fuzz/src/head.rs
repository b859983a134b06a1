//! The `head` target's pieces: arbitrary bytes → a request head, the fixed routing config it is
//! routed against, and the oracles for `strip_hop_by_hop` and `route`.

use std::collections::HashSet;
use std::sync::OnceLock;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, Uri};
use keel::config::model::{HostMatch, RouteConfig};

/// A request head as keel's request path sees it after hyper parsed it.
#[derive(Debug, Default)]
pub struct Head {
    /// The request target's path (`uri.path()`).
    pub path: String,
    /// The authority of an absolute-form target, when the target had one.
    pub target_authority: Option<Authority>,
    /// The header fields, in order, duplicates kept.
    pub headers: HeaderMap,
}

/// Builds a head from bytes. The first byte picks the parser: even → `httparse` over the rest
/// (what hyper's HTTP/1 server uses), odd → one `name: value` per line after a path line, each
/// field parsed with `HeaderName::from_bytes`/`HeaderValue::from_bytes` and skipped if invalid.
pub fn parse(data: &[u8]) -> Option<Head> {
    let (&mode, rest) = data.split_first()?;
    if mode % 2 == 0 {
        parse_http1(rest)
    } else {
        Some(parse_lines(rest))
    }
}

fn parse_http1(data: &[u8]) -> Option<Head> {
    let mut fields = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(data) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return None,
    }
    let uri: Uri = req.path?.parse().ok()?;
    let mut head = Head {
        path: uri.path().to_owned(),
        target_authority: uri.authority().cloned(),
        headers: HeaderMap::new(),
    };
    for field in req.headers.iter() {
        // hyper refuses the whole request on an invalid field; skipping it is the lenient side.
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) else {
            continue;
        };
        head.headers.append(name, value);
    }
    Some(head)
}

fn parse_lines(data: &[u8]) -> Head {
    let mut lines = data.split(|b| *b == b'\n');
    let path = lines.next().unwrap_or_default();
    let mut head = Head {
        path: String::from_utf8_lossy(path).into_owned(),
        ..Head::default()
    };
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], trim_ows(&line[colon + 1..]));
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        else {
            continue;
        };
        head.headers.append(name, value);
    }
    head
}

/// Strips HTTP optional whitespace (SP, HTAB) from both ends.
pub fn trim_ows(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

/// The hop-by-hop fields RFC 9110 §7.6.1 names, plus the de-facto ones keel also removes.
pub const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Every field name listed in the `Connection` fields, read from the raw bytes (a value with
/// obs-text bytes still names the tokens in it).
pub fn connection_named(headers: &HeaderMap) -> HashSet<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|token| HeaderName::from_bytes(trim_ows(token)).ok())
        .collect()
}

/// Asserts what `strip_hop_by_hop(after)` must have done to `before`: no hop-by-hop field and
/// no field named in `Connection` left, every other field kept with all its values in order.
pub fn check_stripped(before: &HeaderMap, after: &HeaderMap) {
    let named = connection_named(before);
    for name in HOP_BY_HOP {
        assert!(!after.contains_key(name), "hop-by-hop `{name}` forwarded");
    }
    for name in &named {
        assert!(
            !after.contains_key(name),
            "`{name}` is named in Connection ({:?}) but was forwarded",
            before
                .get_all(header::CONNECTION)
                .iter()
                .collect::<Vec<_>>()
        );
    }
    for name in before.keys() {
        if HOP_BY_HOP.contains(&name.as_str()) || named.contains(name) {
            continue;
        }
        let was: Vec<&HeaderValue> = before.get_all(name).iter().collect();
        let is: Vec<&HeaderValue> = after.get_all(name).iter().collect();
        assert_eq!(was, is, "end-to-end field `{name}` changed");
    }
    for name in after.keys() {
        assert!(before.contains_key(name), "field `{name}` appeared");
    }
}

/// The routes every head is matched against.
pub fn routes() -> &'static [RouteConfig] {
    static ROUTES: OnceLock<Vec<RouteConfig>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        let text = r#"
[[listeners]]
name = "out"
listen = "127.0.0.1:0"
  [[listeners.routes]]
  name = "canary"
  match = { host = "payments", header = { name = "x-canary", value = "1" } }
  upstream = "b"
  [[listeners.routes]]
  name = "payments"
  match = { host = "payments" }
  upstream = "a"
  [[listeners.routes]]
  name = "wild-api"
  match = { host = "*.svc.local", path_prefix = "/api/" }
  upstream = "a"
  [[listeners.routes]]
  name = "ipv6"
  match = { host = "::1" }
  upstream = "b"
  [[listeners.routes]]
  name = "by-header"
  match = { header = { name = "x-route", value = "b" } }
  upstream = "b"
  [[listeners.routes]]
  name = "static"
  match = { path_prefix = "/static/" }
  upstream = "a"
[upstreams.a]
endpoints = ["127.0.0.1:1"]
[upstreams.b]
endpoints = ["127.0.0.1:2"]
"#;
        match keel::config::from_str(text, "head-fuzz.toml") {
            Ok(mut config) => config.listeners.remove(0).routes,
            Err(e) => panic!("the head target's fixed config is invalid: {e}"),
        }
    })
}

/// The first route whose every condition holds, worked out independently of `keel::router`.
pub fn expected_route(
    routes: &[RouteConfig],
    host: &str,
    path: &str,
    headers: &HeaderMap,
) -> Option<usize> {
    routes.iter().position(|r| {
        let m = &r.matcher;
        let host_ok = match &m.host {
            None => true,
            Some(HostMatch::Exact(h)) => host.to_ascii_lowercase() == *h,
            Some(HostMatch::Suffix(s)) => {
                host.len() > s.len() && host.to_ascii_lowercase().ends_with(s.as_str())
            }
        };
        let path_ok = m
            .path_prefix
            .as_ref()
            .is_none_or(|p| path.starts_with(p.as_str()));
        let header_ok = m.header.as_ref().is_none_or(|(name, value)| {
            headers
                .get_all(name)
                .iter()
                .any(|v| v.as_bytes() == value.as_bytes())
        });
        host_ok && path_ok && header_ok
    })
}
