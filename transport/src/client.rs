//! Client side: a tonic endpoint for a coordinator address. `https://` always means TLS,
//! verified against the CA file given; `http://` is plaintext. No other scheme is taken,
//! so an address can never quietly downgrade to plaintext.

use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// What a client uses to verify the coordinator and, for mTLS, to identify itself.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// PEM file with the CA certificate(s) the coordinator's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) to present, for coordinators that ask for one.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    #[error("{0:?} is not a valid address: {1}")]
    Address(String, String),
    #[error("{0:?}: the address must start with http:// (plaintext) or https:// (TLS)")]
    Scheme(String),
    #[error("{0:?} is https:// but no CA file is set to verify the coordinator (--ca-file / DROVER_CA_FILE)")]
    NoCa(String),
    #[error("a client certificate needs both a certificate file and a key file")]
    HalfIdentity,
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(PathBuf),
    #[error("TLS settings refused: {0}")]
    Tls(String),
}

fn read(path: &Path) -> Result<Vec<u8>, ClientTlsError> {
    std::fs::read(path).map_err(|e| ClientTlsError::Read(path.to_path_buf(), e))
}

fn has_pem_cert(pem: &[u8]) -> bool {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem).any(|c| c.is_ok())
}

impl ClientTls {
    /// True if the address asks for TLS.
    pub fn is_tls(addr: &str) -> bool {
        addr.starts_with("https://")
    }

    /// An endpoint for `addr`, with TLS exactly when the address is `https://`.
    pub fn endpoint(&self, addr: &str) -> Result<Endpoint, ClientTlsError> {
        let tls = if Self::is_tls(addr) {
            true
        } else if addr.starts_with("http://") {
            false
        } else {
            return Err(ClientTlsError::Scheme(addr.to_string()));
        };
        let ep = Endpoint::from_shared(addr.to_string())
            .map_err(|e| ClientTlsError::Address(addr.to_string(), e.to_string()))?;
        if !tls {
            return Ok(ep);
        }
        let ca_file = self
            .ca_file
            .as_ref()
            .ok_or_else(|| ClientTlsError::NoCa(addr.to_string()))?;
        let ca = read(ca_file)?;
        if !has_pem_cert(&ca) {
            return Err(ClientTlsError::NoCertificate(ca_file.clone()));
        }
        let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => {
                let cert = read(c)?;
                if !has_pem_cert(&cert) {
                    return Err(ClientTlsError::NoCertificate(c.clone()));
                }
                cfg = cfg.identity(Identity::from_pem(cert, read(k)?));
            }
            (None, None) => {}
            _ => return Err(ClientTlsError::HalfIdentity),
        }
        crate::install_crypto_provider();
        ep.tls_config(cfg)
            .map_err(|e| ClientTlsError::Tls(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        let c = ClientTls::default();
        assert!(c.endpoint("http://127.0.0.1:1").is_ok());
        assert!(matches!(
            c.endpoint("https://127.0.0.1:1"),
            Err(ClientTlsError::NoCa(_))
        ));
        assert!(matches!(
            c.endpoint("127.0.0.1:1"),
            Err(ClientTlsError::Scheme(_))
        ));
        assert!(matches!(
            c.endpoint("grpc://127.0.0.1:1"),
            Err(ClientTlsError::Scheme(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let c = ClientTls {
            ca_file: Some(not_pem),
            ..Default::default()
        };
        assert!(matches!(
            c.endpoint("https://127.0.0.1:1"),
            Err(ClientTlsError::NoCertificate(_))
        ));
        let c = ClientTls {
            ca_file: Some(dir.path().join("missing.pem")),
            ..Default::default()
        };
        assert!(matches!(
            c.endpoint("https://127.0.0.1:1"),
            Err(ClientTlsError::Read(..))
        ));
    }
}
