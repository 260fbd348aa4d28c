//! Who the peer is, from the client certificate the TLS layer verified.
//!
//! The interceptor [`attach_peer_identity`] puts a [`PeerIdentity`] into each request's
//! extensions when the connection carried a verified client certificate, so handlers (and
//! an authorisation layer) read it with `request.extensions().get::<PeerIdentity>()`.
//! Nothing is inserted for plaintext connections or TLS clients without a certificate.

use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;

/// The names in a verified client certificate: its subject common names and its DNS and
/// URI subject alternative names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub names: Vec<String>,
    /// SHA-256 of the leaf certificate (hex).
    pub fingerprint: String,
}

impl PeerIdentity {
    /// Reads the names from a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<PeerIdentity, String> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| format!("certificate: {e}"))?;
        let mut names = Vec::new();
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_string());
            }
        }
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::DNSName(s) | GeneralName::URI(s) => names.push(s.to_string()),
                    _ => {}
                }
            }
        }
        names.dedup();
        Ok(PeerIdentity {
            names,
            fingerprint: crate::fingerprint(der),
        })
    }

    /// True if `id` is one of the certificate's names (exact, case-sensitive).
    pub fn matches(&self, id: &str) -> bool {
        self.names.iter().any(|n| n == id)
    }
}

/// A worker that connected with a client certificate must say hello with an id the
/// certificate names. Without a certificate (plaintext, or mTLS optional) there is nothing
/// to check here.
pub fn check_worker_identity(peer: Option<&PeerIdentity>, worker_id: &str) -> Result<(), Status> {
    match peer {
        Some(p) if !p.matches(worker_id) => Err(Status::permission_denied(format!(
            "hello.worker_id {worker_id:?} is not named by the client certificate (it names {:?})",
            p.names
        ))),
        _ => Ok(()),
    }
}

/// Interceptor for every service: attaches the verified client certificate's identity.
/// A certificate that reached us was verified by the TLS layer, so failing to read it is
/// unexpected; the request is refused rather than served without the identity.
pub fn attach_peer_identity(mut req: Request<()>) -> Result<Request<()>, Status> {
    let Some(certs) = req.peer_certs() else {
        return Ok(req);
    };
    let Some(leaf) = certs.first() else {
        return Ok(req);
    };
    let id = PeerIdentity::from_der(leaf.as_ref())
        .map_err(|e| Status::unauthenticated(format!("client {e}")))?;
    req.extensions_mut().insert(id);
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_a_client_certificate() {
        let ca = crate::ca::CertAuthority::generate().unwrap();
        let leaf = ca.issue_client("worker-7").unwrap();
        let der = crate::ca::pem_to_der(&leaf.cert_pem).unwrap();
        let id = PeerIdentity::from_der(&der).unwrap();
        assert!(id.matches("worker-7"));
        assert!(!id.matches("worker-8"));
        assert!(!id.matches("worker"));
        assert_eq!(id.fingerprint.len(), 64);
        assert!(PeerIdentity::from_der(b"not a certificate").is_err());
        assert!(check_worker_identity(Some(&id), "worker-7").is_ok());
        let refused = check_worker_identity(Some(&id), "worker-8").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(check_worker_identity(None, "worker-8").is_ok());
    }
}
