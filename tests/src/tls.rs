//! TLS helpers for tests: certificates made fresh per test with the private CA code
//! (never committed keys), TLS channels, and a raw TLS client that reports the
//! certificate a listener serves.

use anyhow::{anyhow, Context, Result};
use drover_transport::ca::{CertAuthority, Issued};
use drover_transport::ClientTls;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// A CA and the files of the certificates issued from it, in one directory.
pub struct Pki {
    pub ca: CertAuthority,
    pub dir: PathBuf,
}

impl Pki {
    /// A new CA whose certificate is written to `dir/ca.pem`.
    pub fn new(dir: &Path) -> Result<Pki> {
        drover_transport::install_crypto_provider();
        std::fs::create_dir_all(dir)?;
        let ca = CertAuthority::generate()?;
        std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
        Ok(Pki {
            ca,
            dir: dir.to_path_buf(),
        })
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn write(&self, name: &str, c: &Issued) -> Result<(PathBuf, PathBuf)> {
        let cert = self.dir.join(format!("{name}.pem"));
        let key = self.dir.join(format!("{name}-key.pem"));
        // Key first: a reloader that sees the new certificate then also finds its key.
        write_atomic(&key, &c.key_pem)?;
        write_atomic(&cert, &c.cert_pem)?;
        Ok((cert, key))
    }

    /// A server certificate for localhost and 127.0.0.1 as `name.pem` / `name-key.pem`.
    pub fn server(&self, name: &str) -> Result<(PathBuf, PathBuf)> {
        let c = self
            .ca
            .issue_server(&["localhost".into(), "127.0.0.1".into()])?;
        self.write(name, &c)
    }

    /// A client certificate naming `id`.
    pub fn client(&self, name: &str, id: &str) -> Result<(PathBuf, PathBuf)> {
        let c = self.ca.issue_client(id)?;
        self.write(name, &c)
    }

    /// Client settings verifying the server with this CA, without a client certificate.
    pub fn client_tls(&self) -> ClientTls {
        ClientTls {
            ca_file: Some(self.ca_file()),
            ..Default::default()
        }
    }
}

/// Replaces a file in one step (write + rename), as certificate renewal tools do.
pub fn write_atomic(path: &Path, data: &str) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// Coordinator config lines for TLS with these files.
pub fn coordinator_toml(cert: &Path, key: &Path, client_ca: Option<&Path>) -> String {
    let mut t = format!(
        "tls_cert_file = {:?}\ntls_key_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    if let Some(ca) = client_ca {
        t.push_str(&format!(
            "tls_client_ca_file = {:?}\n",
            ca.display().to_string()
        ));
    }
    t
}

/// One connection attempt over TLS (no retries): for tests that expect a refusal.
pub async fn try_channel_tls(addr: &str, tls: &ClientTls) -> Result<Channel> {
    let ep = tls.endpoint(addr)?.connect_timeout(Duration::from_secs(5));
    ep.connect().await.map_err(|e| {
        let mut why = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            why = format!("{why}: {s}");
            src = s.source();
        }
        anyhow!("connecting to {addr}: {why}")
    })
}

/// A TLS channel to `addr`, retried until the coordinator answers (up to 30 s).
pub async fn channel_tls(addr: &str, tls: &ClientTls) -> Result<Channel> {
    let start = Instant::now();
    loop {
        match try_channel_tls(addr, tls).await {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() > Duration::from_secs(30) => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

pub async fn jobs_tls(addr: &str, tls: &ClientTls) -> Result<crate::JobsClient> {
    Ok(crate::JobsClient::new(authed(
        channel_tls(addr, tls).await?,
        crate::ADMIN_TOKEN,
    )?))
}

pub async fn workers_tls(addr: &str, tls: &ClientTls) -> Result<crate::WorkersClient> {
    Ok(crate::WorkersClient::new(authed(
        channel_tls(addr, tls).await?,
        crate::WORKER_TOKEN,
    )?))
}

/// Handshakes with `addr` (host:port or a URL) verifying against `ca_file`, offering
/// `alpn`; returns the SHA-256 fingerprint of the certificate the server presented and
/// the open stream.
pub async fn served_cert(
    addr: &str,
    ca_file: &Path,
    alpn: &[&[u8]],
) -> Result<(
    String,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
)> {
    use rustls_pki_types::pem::PemObject;
    drover_transport::install_crypto_provider();
    let hostport = addr
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca_file)? {
        roots.add(c?)?;
    }
    let mut cfg = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(hostport).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost")?.to_owned();
    let tls = connector
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {hostport}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .context("no server certificate")?;
    Ok((drover_transport::fingerprint(leaf.as_ref()), tls))
}

/// The fingerprint of a PEM certificate file's first certificate.
pub fn file_fingerprint(cert_file: &Path) -> Result<String> {
    let pem = std::fs::read_to_string(cert_file)?;
    let der = drover_transport::ca::pem_to_der(&pem).context("no certificate")?;
    Ok(drover_transport::fingerprint(&der))
}

/// `ch` with the harness's `token` on every call.
pub fn authed(ch: Channel, token: &str) -> Result<crate::AuthChannel> {
    let bearer =
        drover_proto::auth::BearerToken::new(Some(token)).map_err(|e| anyhow::anyhow!(e))?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        ch, bearer,
    ))
}
