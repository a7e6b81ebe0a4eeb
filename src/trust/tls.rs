//! rustls configurations for the daemon and its clients: TLS 1.3 only, both
//! sides presenting their ed25519 key as an RFC 7250 raw public key, no CA.
//!
//! # Security
//! The verifiers here check only that the peer's key is ed25519 and that the
//! peer signed the handshake with it (proof that it holds the private key).
//! *Which* keys are welcome is decided right after the handshake, before any
//! request is read or sent: the daemon looks the client key up in
//! `authorized_keys` (with the client's address, for `from=`), the client looks
//! the daemon key up in `known_hosts`.

use super::key::{Identity, PublicKey};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    verify_tls13_signature_with_raw_key, CryptoProvider, WebPkiSupportedAlgorithms,
};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use std::sync::Arc;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certified(identity: &Identity, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, Error> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(identity.pkcs8()));
    let key = provider.key_provider.load_private_key(der)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(identity.public.spki())],
        key,
    )))
}

/// Accepts a peer that proves it holds an ed25519 key; who it is gets checked
/// after the handshake.
#[derive(Debug)]
struct Ed25519Peer {
    algs: WebPkiSupportedAlgorithms,
}

impl Ed25519Peer {
    fn new(provider: &CryptoProvider) -> Self {
        Ed25519Peer {
            algs: provider.signature_verification_algorithms,
        }
    }

    fn check_key(cert: &CertificateDer<'_>) -> Result<(), Error> {
        PublicKey::from_spki(cert.as_ref())
            .map(|_| ())
            .ok_or(Error::InvalidCertificate(CertificateError::BadEncoding))
    }

    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Self::check_key(cert)?;
        let spki = SubjectPublicKeyInfoDer::from(cert.as_ref());
        verify_tls13_signature_with_raw_key(message, &spki, dss, &self.algs)
    }
}

impl ServerCertVerifier for Ed25519Peer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Self::check_key(end_entity).map(|_| ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::General("TLS 1.2 is not supported".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verify13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

impl ClientCertVerifier for Ed25519Peer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Self::check_key(end_entity).map(|_| ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::General("TLS 1.2 is not supported".into()))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verify13(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

pub fn server_config(identity: &Identity) -> Result<Arc<rustls::ServerConfig>, Error> {
    let provider = provider();
    let key = certified(identity, &provider)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(Ed25519Peer::new(&provider)))
        .with_cert_resolver(Arc::new(
            rustls::server::AlwaysResolvesServerRawPublicKeys::new(key),
        ));
    // after the handshake, records are sealed and opened by transport::record
    // with keys rustls hands over; no session is ever resumed, so no tickets
    config.enable_secret_extraction = true;
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

pub fn client_config(identity: &Identity) -> Result<Arc<rustls::ClientConfig>, Error> {
    let provider = provider();
    let key = certified(identity, &provider)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Ed25519Peer::new(&provider)))
        .with_client_cert_resolver(Arc::new(
            rustls::client::AlwaysResolvesClientRawPublicKeys::new(key),
        ));
    config.enable_secret_extraction = true;
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The key the peer authenticated with, once the handshake is done.
pub fn peer_key(conn: &rustls::CommonState) -> Option<PublicKey> {
    conn.peer_certificates()?
        .first()
        .and_then(|c| PublicKey::from_spki(c.as_ref()))
}
