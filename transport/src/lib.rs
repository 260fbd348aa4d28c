//! Transport security for Drover: TLS on the coordinator's listeners (certificate and key
//! reloaded without a restart), TLS channels for `droverctl` and the worker, the identity
//! of a peer's verified client certificate, and a small private CA (`droverctl certs init`).
//!
//! rustls runs on the ring provider only: with two providers compiled in, rustls cannot
//! pick a default and panics (see [`install_crypto_provider`]).

pub mod ca;
pub mod client;
pub mod identity;
pub mod server;

pub use client::{ClientTls, ClientTlsError};
pub use identity::PeerIdentity;
pub use server::{ServerTls, ServerTlsError, TlsReloader};

/// Makes ring the process-wide rustls provider. Call early in `main` (and before building
/// any TLS config in tests); calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// SHA-256 of a DER certificate, lower-case hex: how logs and tests name a certificate.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
