//! rustls's key schedule once the handshake is over: where each direction's
//! next traffic secret comes from on a KeyUpdate, and how many records one key
//! may seal. Not the sealing and opening themselves (`record`), nor when a key
//! is replaced (`reader` and `writer`).

use rustls::client::ClientConnectionData;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::ConnectionTrafficSecrets;

/// The handshake message type of a KeyUpdate (RFC 8446 §4).
pub(super) const KEY_UPDATE: u8 = 24;

/// rustls's key schedule after the handshake: the next traffic keys of each
/// direction on a key update.
pub enum Keys {
    Client(KernelConnection<ClientConnectionData>),
    Server(KernelConnection<ServerConnectionData>),
}

impl Keys {
    pub(super) fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Keys::Client(k) => k.update_tx_secret(),
            Keys::Server(k) => k.update_tx_secret(),
        }
    }
    pub(super) fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Keys::Client(k) => k.update_rx_secret(),
            Keys::Server(k) => k.update_rx_secret(),
        }
    }
    /// Records one key may seal before it must be replaced (AES-GCM: 2^24).
    pub(super) fn limit(&self) -> u64 {
        let suite = match self {
            Keys::Client(k) => k.negotiated_cipher_suite(),
            Keys::Server(k) => k.negotiated_cipher_suite(),
        };
        suite
            .tls13()
            .map_or(u64::MAX, |s| s.common.confidentiality_limit)
    }
}
