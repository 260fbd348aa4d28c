//! A private certificate authority for small installations (`droverctl certs init`):
//! one CA, a server certificate for the coordinator's host names and addresses, and a
//! client certificate per worker whose common name (and DNS SAN) is the worker id.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};
use time::{Duration, OffsetDateTime};

/// CA certificates are valid for ten years, leaf certificates for two: renew leaves with a
/// new `certs init` run or any other tool; the coordinator picks up a new certificate
/// without a restart.
const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 730;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("certificate generation: {0}")]
    Gen(#[from] rcgen::Error),
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0} already exists; use an empty directory (existing keys are never overwritten)")]
    Exists(PathBuf),
    #[error("{0}")]
    Invalid(String),
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

pub struct CertAuthority {
    pub cert_pem: String,
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    // A little back-dating absorbs clock skew between hosts.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Drover");
    dn.push(DnType::CommonName, cn);
    dn
}

impl CertAuthority {
    pub fn generate() -> Result<CertAuthority, CaError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.distinguished_name = name("Drover private CA");
        validity(&mut params, CA_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(CertAuthority {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    fn issue(
        &self,
        cn: &str,
        sans: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<Issued, CaError> {
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = name(cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_DAYS);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate for these host names and IP addresses (IPs become IP SANs).
    pub fn issue_server(&self, hosts: &[String]) -> Result<Issued, CaError> {
        let Some(first) = hosts.first() else {
            return Err(CaError::Invalid(
                "a server certificate needs at least one host".into(),
            ));
        };
        self.issue(first, hosts.to_vec(), ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate naming `id` (common name and DNS SAN): a worker's identity.
    pub fn issue_client(&self, id: &str) -> Result<Issued, CaError> {
        if id.is_empty()
            || id.len() > 64
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(CaError::Invalid(format!(
                "worker id {id:?}: use 1-64 of [A-Za-z0-9._-]"
            )));
        }
        self.issue(
            id,
            vec![id.to_string()],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// The first certificate of a PEM text, as DER.
pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()
        .map(|c| c.as_ref().to_vec())
}

/// Writes a file that must not exist yet; keys get mode 0600 from the moment they exist.
fn write_new(path: &Path, data: &str, secret: bool) -> Result<(), CaError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                CaError::Exists(path.to_path_buf())
            } else {
                CaError::Io(path.to_path_buf(), e)
            }
        })?;
    f.write_all(data.as_bytes())
        .map_err(|e| CaError::Io(path.to_path_buf(), e))
}

/// `droverctl certs init`: a CA, a server certificate for `hosts` and a client certificate
/// per worker id, written into `dir` (created if needed). Refuses to overwrite any file.
/// Returns the files written.
pub fn init_dir(dir: &Path, hosts: &[String], workers: &[String]) -> Result<Vec<PathBuf>, CaError> {
    let ca = CertAuthority::generate()?;
    let server = ca.issue_server(hosts)?;
    let clients = workers
        .iter()
        .map(|w| Ok((w.clone(), ca.issue_client(w)?)))
        .collect::<Result<Vec<_>, CaError>>()?;
    std::fs::create_dir_all(dir).map_err(|e| CaError::Io(dir.to_path_buf(), e))?;
    let mut files = vec![
        (dir.join("ca.pem"), ca.cert_pem.clone(), false),
        (dir.join("ca-key.pem"), ca.key_pem.clone(), true),
        (dir.join("server.pem"), server.cert_pem, false),
        (dir.join("server-key.pem"), server.key_pem, true),
    ];
    for (w, c) in clients {
        files.push((dir.join(format!("worker-{w}.pem")), c.cert_pem, false));
        files.push((dir.join(format!("worker-{w}-key.pem")), c.key_pem, true));
    }
    // Check all first, so a refusal leaves nothing half-written.
    for (p, _, _) in &files {
        if p.exists() {
            return Err(CaError::Exists(p.clone()));
        }
    }
    let mut written = Vec::new();
    for (p, data, secret) in files {
        write_new(&p, &data, secret)?;
        written.push(p);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn init_writes_keys_private_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("pki");
        let files = init_dir(
            &d,
            &["localhost".into(), "127.0.0.1".into()],
            &["w1".into(), "w2".into()],
        )
        .unwrap();
        assert_eq!(files.len(), 8);
        for f in &files {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            if name.ends_with("-key.pem") {
                assert_eq!(mode, 0o600, "{name}");
            } else {
                assert_eq!(mode, 0o644, "{name}");
            }
        }
        let before = std::fs::read(d.join("ca-key.pem")).unwrap();
        assert!(matches!(
            init_dir(&d, &["localhost".into()], &[]),
            Err(CaError::Exists(_))
        ));
        assert_eq!(std::fs::read(d.join("ca-key.pem")).unwrap(), before);
        assert!(init_dir(&dir.path().join("x"), &[], &[]).is_err());
        assert!(init_dir(&dir.path().join("y"), &["h".into()], &["bad id".into()]).is_err());
        assert!(!dir.path().join("y").join("ca-key.pem").exists());
    }
}
