//! Request-head sanitation and routing: arbitrary bytes parsed into a head (see
//! `keel_fuzz::head::parse`), then `keel::proxy::strip_hop_by_hop` and `keel::router::route`
//! against a fixed config. Neither may panic; after stripping no hop-by-hop field and no field
//! named in a `Connection` value is left and every other field is untouched; the route chosen is
//! the first whose conditions hold.
#![no_main]

use http::header;
use http::uri::Authority;
use keel_fuzz::head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(parsed) = head::parse(data) else {
        return;
    };
    let routes = head::routes();

    // The host as keel's request path derives it: the absolute-form authority, else the single
    // Host field parsed as an authority (several Host fields or an invalid one are a 400).
    let mut hosts = parsed.headers.get_all(header::HOST).iter();
    let host_field = hosts.next();
    let several = hosts.next().is_some();
    let authority = match (&parsed.target_authority, host_field) {
        (Some(a), _) => Some(a.clone()),
        (None, Some(v)) => Authority::try_from(v.as_bytes()).ok(),
        (None, None) => None,
    };
    if let (false, Some(authority)) = (several, authority) {
        let host = keel::router::strip_port(authority.as_str());
        assert!(
            authority.as_str().contains(host),
            "strip_port invented a host"
        );
        let got = keel::router::route(routes, host, &parsed.path, &parsed.headers).map(|(i, _)| i);
        let want = head::expected_route(routes, host, &parsed.path, &parsed.headers);
        assert_eq!(got, want, "route for host {host:?} path {:?}", parsed.path);
    }
    // The router is pure: any host text at all must be safe.
    if let Some(v) = host_field {
        let lossy = String::from_utf8_lossy(v.as_bytes());
        let host = keel::router::strip_port(&lossy);
        let _ = keel::router::route(routes, host, &parsed.path, &parsed.headers);
    }

    let mut stripped = parsed.headers.clone();
    keel::proxy::strip_hop_by_hop(&mut stripped);
    head::check_stripped(&parsed.headers, &stripped);
});
