//! TLS for the API when it listens beyond loopback: a self-signed certificate
//! made from the daemon's own ed25519 key (`--api-tls`; clients pin its public
//! key, printed as `sha256//...` for `curl --pinnedpubkey`), or a certificate
//! and key from PEM files (`--api-cert`, `--api-key-file`; their key's pin
//! is printed too). Also the listener that does the handshake for axum, and
//! the client side `ferry job` uses for an https API: the server's key
//! checked against a pin (`--api-pin sha256//...`) or its certificate
//! against a CA file (`--api-cacert`). Not for the transfer port's TLS
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

/// A server configuration, and the pin of its certificate's key.
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
            let pin = pin_of_spki(&rcgen::PublicKeyData::subject_public_key_info(&kp));
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
            let pin =
                pin_of(&chain[0]).map_err(|e| format!("--api-cert {}: {e}", cert.display()))?;
            (chain, k, Some(pin))
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

/// A pin as `curl --pinnedpubkey` takes it: `sha256//` and the base64 of the
/// SHA-256 of the key's DER SubjectPublicKeyInfo.
fn pin_of_spki(spki: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki);
    format!(
        "sha256//{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// The pin of a certificate's public key.
pub fn pin_of(cert: &rustls::pki_types::CertificateDer<'_>) -> Result<String, String> {
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|e| format!("not a certificate ferry can read: {e}"))?;
    Ok(pin_of_spki(ee.subject_public_key_info().as_ref()))
}

/// Checks a pin's form: `sha256//` and 44 characters of base64 (32 bytes).
pub fn check_pin(pin: &str) -> Result<(), String> {
    let ok = pin
        .strip_prefix("sha256//")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .is_some_and(|d| d.len() == 32);
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{pin:?} is not a key pin: it looks like sha256//BASE64 (44 characters), as ferry serve --api prints it"
        ))
    }
}

/// How a client trusts an https API.
#[derive(Debug, Clone)]
pub enum ClientTrust {
    /// The server's key must have this pin (`sha256//...`).
    Pin(String),
    /// The server's certificate must chain to a CA in this PEM file and name
    /// the host.
    CaFile(PathBuf),
}

/// A pin check failed: the pin the server's key has.
pub type Mismatch = Arc<std::sync::Mutex<Option<String>>>;

/// A client configuration for `trust`, and where a pin mismatch is told.
pub fn client_config(trust: &ClientTrust) -> Result<(Arc<rustls::ClientConfig>, Mismatch), String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let seen: Mismatch = Default::default();
    let mut config = match trust {
        ClientTrust::Pin(pin) => {
            check_pin(pin)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinVerifier {
                    pin: pin.clone(),
                    seen: seen.clone(),
                    algs: provider.signature_verification_algorithms,
                }))
                .with_no_client_auth()
        }
        ClientTrust::CaFile(path) => {
            use rustls::pki_types::pem::PemObject;
            use rustls::pki_types::CertificateDer;
            let mut roots = rustls::RootCertStore::empty();
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| format!("--api-cacert {}: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "--api-cacert {}: no certificate in it",
                    path.display()
                ));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("--api-cacert {}: {e}", path.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((Arc::new(config), seen))
}

/// Accepts the server whose certificate's key has the pin, whatever names
/// the certificate holds (as `curl -k --pinnedpubkey` does); the handshake
/// signature is still checked against that key.
#[derive(Debug)]
struct PinVerifier {
    pin: String,
    seen: Mismatch,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let got = pin_of(end_entity).map_err(rustls::Error::General)?;
        if got == self.pin {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(got);
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pins_are_checked_for_their_form() {
        assert!(super::check_pin("sha256//AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").is_ok());
        assert!(super::check_pin("sha256//short").is_err());
        assert!(super::check_pin("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").is_err());
    }
}
