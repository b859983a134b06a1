//! TLS test helpers: a CA and leaf certificates made with rcgen, written to a per-test
//! directory; a rustls client; a TLS upstream that reports SNI, ALPN and the client identity.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A directory of its own for one test, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let dir = super::temp_path(name);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// Writes a file and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Replaces a file the way cert-manager and Kubernetes do: write aside, then rename.
    pub fn replace(&self, name: &str, contents: &str) -> PathBuf {
        let aside = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&aside, contents).unwrap();
        let path = self.0.join(name);
        std::fs::rename(&aside, &path).unwrap();
        path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority.
pub struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pub pem: String,
}

/// A leaf certificate and its key, in PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap()
    }
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            params,
            key,
        }
    }

    /// A leaf for `names` (DNS names or IP addresses) plus URI SANs, named `cn`.
    pub fn leaf(&self, cn: &str, names: &[&str], uris: &[&str]) -> Leaf {
        self.leaf_with(cn, names, uris, |_| {})
    }

    /// Like [`Ca::leaf`], with a hook to change the parameters (validity, for example).
    pub fn leaf_with(
        &self,
        cn: &str,
        names: &[&str],
        uris: &[&str],
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        for uri in uris {
            params.subject_alt_names.push(rcgen::SanType::URI(
                rcgen::string::Ia5String::try_from(*uri).unwrap(),
            ));
        }
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        tweak(&mut params);
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    pub fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        roots
    }
}

/// Writes a leaf as `NAME.crt` and `NAME.key`; returns both paths.
pub fn write_leaf(dir: &TempDir, name: &str, leaf: &Leaf) -> (PathBuf, PathBuf) {
    (
        dir.write(&format!("{name}.crt"), &leaf.cert_pem),
        dir.write(&format!("{name}.key"), &leaf.key_pem),
    )
}

/// A TOML string literal of a path.
pub fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// A client config trusting `ca`, presenting `client` if given, offering `alpn`.
pub fn client_config(ca: &Ca, client: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(ca.roots());
    let mut config = match client {
        Some(leaf) => builder
            .with_client_auth_cert(leaf.chain(), leaf.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// What a request over TLS got back.
#[derive(Debug)]
pub struct TlsReply {
    pub status: u16,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: String,
    /// The ALPN protocol the handshake chose.
    pub alpn: Option<Vec<u8>>,
    /// The common name of the certificate the server presented.
    pub server_cn: String,
}

/// An open TLS connection with an HTTP sender on it (HTTP/1.1 or h2 by ALPN).
pub struct TlsConn {
    sender: Sender,
    pub alpn: Option<Vec<u8>>,
    pub server_cn: String,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// Connects and handshakes; the error is the handshake's.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &str,
) -> std::io::Result<TlsConn> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let tls = connector.connect(name, tcp).await?;
    let (_, conn) = tls.get_ref();
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    let server_cn = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| keel::x509::parse(c))
        .map(|info| info.subject)
        .unwrap_or_default();
    let io = TokioIo::new(tls);
    let sender = if alpn.as_deref() == Some(b"h2") {
        let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Sender::H2(sender)
    } else {
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Sender::H1(sender)
    };
    Ok(TlsConn {
        sender,
        alpn,
        server_cn,
    })
}

impl TlsConn {
    /// Sends `GET path` with extra headers; the error is hyper's (connection closed, ...).
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Result<TlsReply, String> {
        let h2 = matches!(self.sender, Sender::H2(_));
        let uri = if h2 {
            format!("https://localhost{path}")
        } else {
            path.to_owned()
        };
        let mut builder = Request::get(uri);
        if !h2 {
            builder = builder.header("host", "localhost");
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let req = builder.body(Full::new(Bytes::new())).unwrap();
        let response = match &mut self.sender {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
        .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let version = response.version();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(TlsReply {
            status,
            version,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            alpn: self.alpn.clone(),
            server_cn: self.server_cn.clone(),
        })
    }
}

/// One request on a fresh TLS connection.
pub async fn https_get(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<TlsReply, String> {
    let mut conn = connect(addr, config, "localhost")
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    conn.get(path, headers).await
}

/// A server config for a TLS test upstream; `client_ca` makes client certificates required.
pub fn server_config(leaf: &Leaf, client_ca: Option<&Ca>, alpn: &[&[u8]]) -> Arc<ServerConfig> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(ca.roots()),
                provider(),
            )
            .build()
            .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(leaf.chain(), leaf.key()).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS upstream: answers 200 with `version=.. sni=.. client=..` and the request headers,
/// and counts handshakes that completed.
#[derive(Clone)]
pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub handshakes: Arc<AtomicUsize>,
    pub failed_handshakes: Arc<AtomicUsize>,
    pub snis: Arc<Mutex<Vec<Option<String>>>>,
}

pub async fn tls_upstream(config: Arc<ServerConfig>) -> TlsUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let up = TlsUpstream {
        addr,
        handshakes: Arc::new(AtomicUsize::new(0)),
        failed_handshakes: Arc::new(AtomicUsize::new(0)),
        snis: Arc::new(Mutex::new(Vec::new())),
    };
    let state = up.clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let state = state.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(stream).await {
                    Ok(tls) => tls,
                    Err(_) => {
                        state.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                };
                state.handshakes.fetch_add(1, Ordering::SeqCst);
                let (_, conn) = tls.get_ref();
                let sni = conn.server_name().map(str::to_owned);
                state.snis.lock().unwrap().push(sni.clone());
                let client = conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| keel::x509::parse(c))
                    .and_then(|i| i.identity().map(str::to_owned))
                    .unwrap_or_else(|| "-".into());
                let sni = sni.unwrap_or_else(|| "-".into());
                let service = service_fn(move |req: Request<Incoming>| {
                    let mut text =
                        format!("version={:?} sni={sni} client={client}\n", req.version());
                    for (name, value) in req.headers() {
                        text.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
                    }
                    async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text)))) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    up
}
