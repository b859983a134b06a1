//! TLS settings: raw tables → model, loading every PEM file named and building the rustls
//! configs while the config is checked.
//!
//! Loading here (not at start) means `keel check`, start and reload see the same problems, each
//! located at the setting that names the file: a missing or unreadable file, a file that holds
//! no certificate or key, a key that does not match its certificate, an empty CA bundle, an
//! expired certificate (a warning unless `reject_expired = true`). What was checked is what
//! serves: the built config travels in the model.

use std::path::PathBuf;

use http::HeaderName;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::RootCertStore;
use toml::Spanned;

use super::model::{defaults, ListenerTls, Loaded, UpstreamProtocol, UpstreamTls};
use super::raw::{self, Str};
use super::validate::{duration, non_zero, Errors};
use super::ConfigError;
use crate::x509::{self, CertInfo};

/// `protocol = "..."` of an upstream.
pub(super) fn protocol(raw: Option<&Str>, errors: &mut Errors) -> UpstreamProtocol {
    match raw.map(|p| (p.get_ref().as_str(), p.span())) {
        None | Some(("http1", _)) => UpstreamProtocol::Http1,
        Some(("http2", _)) => UpstreamProtocol::Http2,
        Some(("auto", _)) => UpstreamProtocol::Auto,
        Some((other, span)) => {
            errors.push(
                ConfigError::new(span, format!("unknown protocol `{other}`")).with_hint(
                    "use \"http1\", \"http2\" (h2 over TLS, h2c prior knowledge without) or \"auto\" (ALPN)",
                ),
            );
            UpstreamProtocol::Http1
        }
    }
}

/// `tls = { ... }` of a listener.
pub(super) fn listener(
    raw: Spanned<raw::RawListenerTls>,
    listener: &str,
    errors: &mut Errors,
) -> Option<ListenerTls> {
    let span = raw.span();
    let t = raw.into_inner();
    let reject_expired = t.reject_expired.unwrap_or(false);
    let (Some(cert_path), Some(key_path)) = (&t.cert, &t.key) else {
        errors.push(
            ConfigError::missing(
                span,
                format!("listener `{listener}` tls needs `cert` and `key`"),
            )
            .with_hint("write tls = { cert = \"/etc/keel/tls.crt\", key = \"/etc/keel/tls.key\" }"),
        );
        return None;
    };
    let identity_header = match &t.client_identity_header {
        None => HeaderName::from_static(defaults::CLIENT_IDENTITY_HEADER),
        Some(h) => match HeaderName::from_bytes(h.get_ref().as_bytes()) {
            Ok(name) => name,
            Err(_) => {
                errors.push(
                    ConfigError::new(h.span(), format!("invalid header name `{}`", h.get_ref()))
                        .with_hint("header names are tokens such as \"x-forwarded-client-cert\""),
                );
                HeaderName::from_static(defaults::CLIENT_IDENTITY_HEADER)
            }
        },
    };
    let handshake_timeout = duration(
        t.handshake_timeout.as_ref(),
        defaults::TLS_HANDSHAKE_TIMEOUT,
        errors,
    );
    let max_handshakes = non_zero(
        t.max_handshakes.as_ref(),
        defaults::TLS_MAX_HANDSHAKES,
        errors,
    );
    let require_client_cert = match (&t.require_client_cert, &t.client_ca) {
        (Some(r), None) if *r.get_ref() => {
            errors.push(
                ConfigError::new(r.span(), "require_client_cert needs client_ca")
                    .with_hint("add client_ca = \"/etc/keel/client-ca.crt\": the CAs client certificates must chain to"),
            );
            false
        }
        (Some(r), _) => *r.get_ref(),
        // Asking for client certificates (client_ca) means requiring them unless said otherwise.
        (None, ca) => ca.is_some(),
    };

    let mut source = Vec::new();
    let chain = certificates(cert_path, "certificate", &mut source, errors);
    let key = private_key(key_path, &mut source, errors);
    let roots = t
        .client_ca
        .as_ref()
        .and_then(|ca| ca_bundle(ca, &mut source, errors));
    let (chain, key) = (chain?, key?);
    let info = leaf_info(&chain);
    check_expiry(cert_path, info.as_ref(), reject_expired, errors);
    if !key_matches(&chain, &key, cert_path, key_path, errors) {
        return None;
    }
    if t.client_ca.is_some() && roots.is_none() {
        return None;
    }
    let config = match crate::server::tls::server_config(chain, key, roots, require_client_cert) {
        Ok(config) => config,
        Err(e) => {
            errors.push(
                ConfigError::new(
                    cert_path.span(),
                    format!("cannot use `{}`: {e}", cert_path.get_ref()),
                )
                .with_hint("check that the certificate and key are the server's own, in PEM"),
            );
            return None;
        }
    };
    Some(ListenerTls {
        cert: PathBuf::from(cert_path.get_ref()),
        key: PathBuf::from(key_path.get_ref()),
        client_ca: t.client_ca.as_ref().map(|c| PathBuf::from(c.get_ref())),
        require_client_cert,
        identity_header,
        handshake_timeout,
        max_handshakes,
        reject_expired,
        loaded: Loaded {
            config,
            source: std::sync::Arc::new(source),
            cert: info,
        },
    })
}

/// `[upstreams.NAME.tls]`.
pub(super) fn upstream(
    raw: Spanned<raw::RawUpstreamTls>,
    upstream: &str,
    protocol: UpstreamProtocol,
    errors: &mut Errors,
) -> Option<UpstreamTls> {
    let span = raw.span();
    let t = raw.into_inner();
    if !t.enabled.unwrap_or(true) {
        return None;
    }
    let insecure = t
        .insecure_skip_verify
        .as_ref()
        .is_some_and(|i| *i.get_ref());
    if let Some(flag) = t.insecure_skip_verify.as_ref().filter(|i| *i.get_ref()) {
        errors.push(
            ConfigError::warning(
                flag.span(),
                format!("INSECURE: upstream `{upstream}` certificates are NOT verified (insecure_skip_verify = true); anyone on the path can impersonate it"),
            )
            .with_hint("use ca = \"...\" with the upstream's CA instead; keep this for debugging only"),
        );
    }
    let server_name =
        t.server_name
            .as_ref()
            .and_then(|n| match ServerName::try_from(n.get_ref().as_str()) {
                Ok(_) => Some(n.get_ref().clone()),
                Err(_) => {
                    errors.push(
                        ConfigError::new(
                            n.span(),
                            format!("invalid server name `{}`", n.get_ref()),
                        )
                        .with_hint(
                            "a DNS name such as \"payments.svc.cluster.local\" or an IP address",
                        ),
                    );
                    None
                }
            });
    let mut source = Vec::new();
    let roots = match &t.ca {
        Some(ca) => Some(ca_bundle(ca, &mut source, errors)?),
        None => None,
    };
    let client = match (&t.client_cert, &t.client_key) {
        (None, None) => None,
        (Some(cert_path), Some(key_path)) => {
            let chain = certificates(cert_path, "client certificate", &mut source, errors);
            let key = private_key(key_path, &mut source, errors);
            let (chain, key) = (chain?, key?);
            let info = leaf_info(&chain);
            check_expiry(
                cert_path,
                info.as_ref(),
                t.reject_expired.unwrap_or(false),
                errors,
            );
            if !key_matches(&chain, &key, cert_path, key_path, errors) {
                return None;
            }
            Some((chain, key, info))
        }
        (Some(c), None) | (None, Some(c)) => {
            errors.push(
                ConfigError::new(c.span(), "client_cert and client_key go together")
                    .with_hint("set both for mTLS to the upstream, or neither"),
            );
            return None;
        }
    };
    let info = client.as_ref().and_then(|(_, _, info)| info.clone());
    let config = crate::upstream::tls::client_config(
        roots,
        client.map(|(chain, key, _)| (chain, key)),
        insecure,
        protocol,
    );
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            errors.push(
                ConfigError::new(
                    span,
                    format!("cannot build the TLS settings of upstream `{upstream}`: {e}"),
                )
                .with_hint("check the certificate files named here"),
            );
            return None;
        }
    };
    Some(UpstreamTls {
        server_name,
        ca: t.ca.as_ref().map(|c| PathBuf::from(c.get_ref())),
        client_cert: t.client_cert.as_ref().map(|c| PathBuf::from(c.get_ref())),
        client_key: t.client_key.as_ref().map(|c| PathBuf::from(c.get_ref())),
        insecure_skip_verify: insecure,
        loaded: Loaded {
            config,
            source: std::sync::Arc::new(source),
            cert: info,
        },
    })
}

/// Every file path a model's TLS settings name (for the file watcher).
pub fn files(config: &super::Config) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for l in &config.listeners {
        if let Some(t) = &l.tls {
            out.push(t.cert.clone());
            out.push(t.key.clone());
            out.extend(t.client_ca.clone());
        }
    }
    for u in &config.upstreams {
        if let Some(t) = &u.tls {
            out.extend(t.ca.clone());
            out.extend(t.client_cert.clone());
            out.extend(t.client_key.clone());
        }
    }
    out
}

fn read(path: &Str, what: &str, source: &mut Vec<u8>, errors: &mut Errors) -> Option<Vec<u8>> {
    match std::fs::read(path.get_ref()) {
        Ok(bytes) => {
            source.extend_from_slice(&bytes);
            // Separate the files, so moving bytes between them still reads as a change.
            source.push(0);
            Some(bytes)
        }
        Err(e) => {
            errors.push(
                ConfigError::new(path.span(), format!("cannot read {what} `{}`: {e}", path.get_ref()))
                    .with_hint("check the path (relative paths start at keel's working directory) and the file's permissions"),
            );
            None
        }
    }
}

/// Reads `path` and decodes every PEM certificate block in it (possibly none).
fn pem_certificates(
    path: &Str,
    what: &str,
    source: &mut Vec<u8>,
    errors: &mut Errors,
) -> Option<Vec<CertificateDer<'static>>> {
    let bytes = read(path, what, source, errors)?;
    match CertificateDer::pem_slice_iter(&bytes).collect() {
        Ok(certs) => Some(certs),
        Err(e) => {
            errors.push(
                ConfigError::new(
                    path.span(),
                    format!("{what} `{}` is not valid PEM: {e}", path.get_ref()),
                )
                .with_hint("expected one or more -----BEGIN CERTIFICATE----- blocks"),
            );
            None
        }
    }
}

fn certificates(
    path: &Str,
    what: &str,
    source: &mut Vec<u8>,
    errors: &mut Errors,
) -> Option<Vec<CertificateDer<'static>>> {
    let certs = pem_certificates(path, what, source, errors)?;
    if certs.is_empty() {
        errors.push(
            ConfigError::new(
                path.span(),
                format!("{what} file `{}` holds no certificate", path.get_ref()),
            )
            .with_hint("expected one or more -----BEGIN CERTIFICATE----- blocks (PEM), leaf first"),
        );
        return None;
    }
    if let Some(i) = certs.iter().position(|c| x509::parse(c).is_none()) {
        errors.push(
            ConfigError::new(
                path.span(),
                format!(
                    "certificate {} in `{}` is not a valid X.509 certificate",
                    i + 1,
                    path.get_ref()
                ),
            )
            .with_hint("the PEM block decodes, but its contents are not a DER certificate"),
        );
        return None;
    }
    Some(certs)
}

fn private_key(
    path: &Str,
    source: &mut Vec<u8>,
    errors: &mut Errors,
) -> Option<PrivateKeyDer<'static>> {
    let bytes = read(path, "private key", source, errors)?;
    let problem = match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => return Some(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => "holds no private key".to_owned(),
        Err(e) => format!("is not valid PEM: {e}"),
    };
    errors.push(
        ConfigError::new(path.span(), format!("key file `{}` {problem}", path.get_ref()))
            .with_hint("expected a PEM block: PRIVATE KEY (PKCS#8), RSA PRIVATE KEY (PKCS#1) or EC PRIVATE KEY (SEC1)"),
    );
    None
}

fn ca_bundle(path: &Str, source: &mut Vec<u8>, errors: &mut Errors) -> Option<RootCertStore> {
    let certs = pem_certificates(path, "CA bundle", source, errors)?;
    if certs.is_empty() {
        errors.push(
            ConfigError::new(
                path.span(),
                format!(
                    "CA bundle `{}` is empty: it holds no certificate",
                    path.get_ref()
                ),
            )
            .with_hint("an empty bundle would trust nobody; put the CA certificates (PEM) in it"),
        );
        return None;
    }
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        if let Err(e) = roots.add(cert) {
            errors.push(
                ConfigError::new(
                    path.span(),
                    format!(
                        "certificate {} in CA bundle `{}` cannot be a trust anchor: {e}",
                        i + 1,
                        path.get_ref()
                    ),
                )
                .with_hint("the bundle must hold CA certificates in PEM"),
            );
            return None;
        }
    }
    Some(roots)
}

fn leaf_info(chain: &[CertificateDer<'static>]) -> Option<CertInfo> {
    chain.first().and_then(|c| x509::parse(c))
}

fn check_expiry(path: &Str, info: Option<&CertInfo>, reject: bool, errors: &mut Errors) {
    let Some(info) = info else { return };
    let now = x509::now_unix();
    if info.not_after < now {
        let message = format!(
            "certificate `{}` expired on {}",
            path.get_ref(),
            x509::rfc3339(info.not_after)
        );
        let error = if reject {
            ConfigError::new(path.span(), message)
                .with_hint("renew it; with reject_expired = false keel only warns")
        } else {
            ConfigError::warning(path.span(), message)
                .with_hint("renew it; peers that check dates will refuse it")
        };
        errors.push(error);
    } else if info.not_before > now {
        errors.push(
            ConfigError::warning(
                path.span(),
                format!(
                    "certificate `{}` is not valid before {}",
                    path.get_ref(),
                    x509::rfc3339(info.not_before)
                ),
            )
            .with_hint("check the clock, or the certificate's start date"),
        );
    }
}

fn key_matches(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_path: &Str,
    key_path: &Str,
    errors: &mut Errors,
) -> bool {
    let provider = crate::server::tls::provider();
    match rustls::sign::CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &provider) {
        Ok(_) => true,
        Err(rustls::Error::InconsistentKeys(_)) => {
            errors.push(
                ConfigError::new(
                    key_path.span(),
                    format!(
                        "the key in `{}` does not match the certificate in `{}`",
                        key_path.get_ref(),
                        cert_path.get_ref()
                    ),
                )
                .with_hint("use the key the certificate was issued for (a rotation may have replaced only one of the two files)"),
            );
            false
        }
        Err(e) => {
            errors.push(
                ConfigError::new(
                    key_path.span(),
                    format!("cannot use the key in `{}`: {e}", key_path.get_ref()),
                )
                .with_hint("keel supports RSA, ECDSA (P-256, P-384) and Ed25519 keys"),
            );
            false
        }
    }
}
