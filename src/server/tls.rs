//! Inbound TLS: the rustls server config built from the model, the handshake of one client
//! connection, and the verified client identity.
//!
//! Everything uses the ring provider explicitly (`builder_with_provider`): if another crate in
//! the tree ever enabled aws-lc-rs too, rustls' process-default lookup would panic at run time.
//! The config is built once per load (config check, start, reload) and shared by every
//! handshake through an `Arc`, so a reload changes the certificate for new handshakes only;
//! established connections keep the session they have.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::io::{self, Write};
use std::sync::{Arc, OnceLock};

use http::HeaderValue;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::conn::ClientStream;
use crate::config::model::ListenerTls;

/// ALPN protocol ids keel offers, h2 first.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why a rustls config could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsBuildError {
    /// rustls refused the certificate, key or protocol settings.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the CA bundle.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The ring crypto provider, built once.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// A server config: TLS 1.3 and 1.2, ALPN `h2` and `http/1.1`, and client certificates
/// verified against `client_roots` when given (required or optional).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_roots: Option<RootCertStore>,
    require_client_cert: bool,
) -> Result<Arc<ServerConfig>, TlsBuildError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_roots {
        Some(roots) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
            let verifier = if require_client_cert {
                verifier.build()?
            } else {
                verifier.allow_unauthenticated().build()?
            };
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(Arc::new(config))
}

/// Which HTTP version the client and keel agreed on by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negotiated {
    /// ALPN chose `h2`.
    H2,
    /// ALPN chose `http/1.1`.
    Http1,
    /// The client offered no ALPN: keel detects the version from the first bytes.
    None,
}

/// What a finished handshake tells the request path.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    /// The verified client identity (URI SAN, else DNS SAN, else subject), when the client
    /// presented a certificate.
    pub identity: Option<Arc<str>>,
    /// The same, as a header value for the app (`None` if it is not a valid header value).
    pub identity_value: Option<HeaderValue>,
    /// The header that carries it; always stripped from client requests on TLS listeners.
    pub identity_header: http::HeaderName,
}

/// Runs the server side of the handshake, bounded by the listener's `handshake_timeout`.
pub async fn accept(
    stream: TcpStream,
    tls: &ListenerTls,
) -> Result<(TlsStream<TcpStream>, Negotiated, TlsInfo), HandshakeError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.loaded.config.clone());
    let stream = tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream))
        .await
        .map_err(|_| HandshakeError::Timeout)?
        .map_err(HandshakeError::Io)?;
    let conn = stream.get_ref().1;
    let negotiated = match conn.alpn_protocol() {
        Some(ALPN_H2) => Negotiated::H2,
        Some(_) => Negotiated::Http1,
        None => Negotiated::None,
    };
    let identity: Option<Arc<str>> = conn
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(|leaf| crate::x509::parse(leaf))
        .and_then(|info| info.identity().map(Arc::from));
    let identity_value = identity
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok());
    let info = TlsInfo {
        identity,
        identity_value,
        identity_header: tls.identity_header.clone(),
    };
    Ok((stream, negotiated, info))
}

/// Why a client's handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client took longer than `handshake_timeout`.
    #[error("TLS handshake not complete within the handshake timeout")]
    Timeout,
    /// The handshake failed (bad certificate, no shared version, client went away).
    #[error("TLS handshake failed: {0}")]
    Io(#[source] io::Error),
}

/// Writes to the socket without blocking: the last bytes of a connection being dropped.
struct TryWriter<'a>(&'a TcpStream);

impl Write for TryWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ClientStream for TlsStream<TcpStream> {
    fn write_final(&mut self, bytes: &[u8]) {
        let (tcp, conn) = self.get_mut();
        if conn.writer().write_all(bytes).is_err() {
            return;
        }
        conn.send_close_notify();
        let mut out = TryWriter(tcp);
        // A few records at most; a full socket buffer or a gone peer ends it harmlessly.
        for _ in 0..8 {
            if !conn.wants_write() {
                break;
            }
            match conn.write_tls(&mut out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}
