//! Upstream TLS: the rustls client config of an upstream, and the handshake the pool's
//! connector runs after the TCP connect.
//!
//! Trust is the upstream's `ca` bundle, or the bundled web PKI roots (`webpki-roots`) without
//! one. ALPN follows the upstream's `protocol`: `h2` only for `http2`, `http/1.1` only for
//! `http1`, both (h2 first) for `auto`. `insecure_skip_verify` swaps in a verifier that accepts
//! any certificate but still checks the handshake signatures; the config loader warns loudly
//! and `/config` flags it.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::model::UpstreamProtocol;
use crate::server::tls::{provider, TlsBuildError, ALPN_H2, ALPN_HTTP1};

/// The client config of one upstream.
pub fn client_config(
    roots: Option<RootCertStore>,
    client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    insecure_skip_verify: bool,
    protocol: UpstreamProtocol,
) -> Result<Arc<ClientConfig>, TlsBuildError> {
    let roots = roots.unwrap_or_else(|| RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    });
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let mut config = match client_auth {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match protocol {
        UpstreamProtocol::Http1 => vec![ALPN_HTTP1.to_vec()],
        UpstreamProtocol::Http2 => vec![ALPN_H2.to_vec()],
        UpstreamProtocol::Auto => vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()],
    };
    if insecure_skip_verify {
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(NoVerification(provider())));
    }
    Ok(Arc::new(config))
}

/// Accepts any server certificate (`insecure_skip_verify = true`); handshake signatures are
/// still verified, so the peer at least holds the key of the certificate it sent.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The name a connection to an endpoint verifies: the configured `server_name`, else the
/// endpoint's configured host (a DNS name, or an IP literal verified against IP SANs).
pub fn server_name(configured: Option<&str>, host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(configured.unwrap_or(host).to_owned()).ok()
}
