//! TLS for the API when it listens beyond loopback: a self-signed certificate
//! made from the daemon's own ed25519 key (`--api-tls`; clients pin its public
//! key, printed as `sha256//...` for `curl --pinnedpubkey`), or a certificate
//! and key from PEM files (`--api-cert`, `--api-key-file`). Also the listener
//! that does the handshake for axum. Not for the transfer port's TLS
//! (`trust::tls`, raw public keys).

use base64::Engine;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// Where the API's certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// Made from the daemon's key at this path.
    DaemonKey(PathBuf),
    /// PEM files: the certificate chain and its private key.
    Files { cert: PathBuf, key: PathBuf },
}

/// A server configuration, and the pin of its key when ferry made the
/// certificate.
pub struct Tls {
    pub config: Arc<rustls::ServerConfig>,
    pub pin: Option<String>,
}

pub fn load(src: &TlsSource, names: Vec<String>) -> Result<Tls, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let (chain, key, pin) = match src {
        TlsSource::DaemonKey(path) => {
            let id = crate::trust::key::Identity::load(path).map_err(|e| e.to_string())?;
            let pkcs8 = id.pkcs8();
            let kp = rcgen::KeyPair::try_from(pkcs8.as_slice())
                .map_err(|e| format!("the daemon's key as a certificate key: {e}"))?;
            let cert = rcgen::CertificateParams::new(names)
                .and_then(|p| p.self_signed(&kp))
                .map_err(|e| format!("making the API's certificate: {e}"))?;
            let digest = aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                &rcgen::PublicKeyData::subject_public_key_info(&kp),
            );
            let pin = format!(
                "sha256//{}",
                base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
            );
            (
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8)),
                Some(pin),
            )
        }
        TlsSource::Files { cert, key } => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| format!("--api-cert {}: {e}", cert.display()))?;
            if chain.is_empty() {
                return Err(format!(
                    "--api-cert {}: no certificate in it",
                    cert.display()
                ));
            }
            let k = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("--api-key-file {}: {e}", key.display()))?;
            (chain, k, None)
        }
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the API's certificate and key: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Tls {
        config: Arc::new(config),
        pin,
    })
}

/// Accepts TCP connections and completes the TLS handshake (within 10 s)
/// before axum sees them.
pub struct Listener {
    pub tcp: tokio::net::TcpListener,
    pub acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for Listener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (sock, addr) = match self.tcp.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("API accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            match tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(sock)).await {
                Ok(Ok(s)) => return (s, addr),
                Ok(Err(e)) => tracing::info!(%addr, "API TLS handshake failed: {e}"),
                Err(_) => tracing::info!(%addr, "API TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
