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
    /// For fuzzing and tests only: no handshake behind it. The traffic secret
    /// of generation `n` in each direction is `scripted(direction, n)`,
    /// which a test's peer computes too, so that it can seal what the reader
    /// expects after a KeyUpdate and open what the writer sends after one.
    #[cfg(any(test, feature = "fuzzing"))]
    #[doc(hidden)]
    Scripted {
        tx: u64,
        rx: u64,
    },
}

impl Keys {
    pub(super) fn next_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Keys::Client(k) => k.update_tx_secret(),
            Keys::Server(k) => k.update_tx_secret(),
            #[cfg(any(test, feature = "fuzzing"))]
            Keys::Scripted { tx, .. } => {
                *tx += 1;
                Ok((0, scripted(SCRIPTED_TX, *tx)))
            }
        }
    }
    pub(super) fn next_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Keys::Client(k) => k.update_rx_secret(),
            Keys::Server(k) => k.update_rx_secret(),
            #[cfg(any(test, feature = "fuzzing"))]
            Keys::Scripted { rx, .. } => {
                *rx += 1;
                Ok((0, scripted(SCRIPTED_RX, *rx)))
            }
        }
    }
    /// Records one key may seal before it must be replaced (AES-GCM: 2^24).
    pub(super) fn limit(&self) -> u64 {
        let suite = match self {
            Keys::Client(k) => k.negotiated_cipher_suite(),
            Keys::Server(k) => k.negotiated_cipher_suite(),
            #[cfg(any(test, feature = "fuzzing"))]
            Keys::Scripted { .. } => return SCRIPTED_LIMIT,
        };
        suite
            .tls13()
            .map_or(u64::MAX, |s| s.common.confidentiality_limit)
    }
}

/// The scripted directions: what the halves under test send, and receive.
#[cfg(any(test, feature = "fuzzing"))]
pub(super) const SCRIPTED_TX: u8 = b'w';
#[cfg(any(test, feature = "fuzzing"))]
pub(super) const SCRIPTED_RX: u8 = b'r';
/// Records one scripted key may seal: AES-GCM's limit, as with rustls.
#[cfg(any(test, feature = "fuzzing"))]
const SCRIPTED_LIMIT: u64 = 1 << 24;

/// The scripted traffic secret of `direction`, generation `n` (0 before any
/// KeyUpdate): AES-256-GCM with a key that names both. For fuzzing and tests
/// only; nothing secret comes from here.
#[cfg(any(test, feature = "fuzzing"))]
pub(super) fn scripted(direction: u8, n: u64) -> ConnectionTrafficSecrets {
    let mut key = [direction; 32];
    key[..8].copy_from_slice(&n.to_be_bytes());
    ConnectionTrafficSecrets::Aes256Gcm {
        key: key.into(),
        iv: [direction; 12].into(),
    }
}
