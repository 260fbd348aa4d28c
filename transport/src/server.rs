//! Server side: a TLS acceptor whose certificate, key and client CA are read from files and
//! reloaded without a restart (on SIGHUP and when the files change), and the accept loops
//! that feed tonic and axum.
//!
//! Each accepted socket gets TCP_NODELAY (tonic's own `tcp_nodelay` does not apply to
//! `serve_with_incoming`, and without it small replies to some clients waited ~40 ms on
//! Nagle). Each TLS handshake runs in its own task with a time limit, so a slow or silent
//! client holds up no one else; a failed handshake is logged and dropped, never handed to
//! the server (tonic stops serving on most incoming errors).

use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// A TLS handshake that takes longer than this is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait to be accepted.
pub const MAX_PENDING_HANDSHAKES: usize = 1024;

/// The server's TLS files.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// If set, clients are asked for a certificate chaining to one of these CAs.
    pub client_ca_file: Option<PathBuf>,
    /// With a client CA: refuse clients that present no certificate (else they may connect
    /// without one, and only a certificate presented is verified).
    pub client_cert_required: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: no PEM certificate in it")]
    NoCertificate(PathBuf),
    #[error("{0}: no PEM private key in it")]
    NoKey(PathBuf),
    #[error("{0}: {1}")]
    Invalid(PathBuf, String),
    #[error("TLS settings refused: {0}")]
    Config(String),
}

fn read(path: &Path) -> Result<Vec<u8>, ServerTlsError> {
    std::fs::read(path).map_err(|e| ServerTlsError::Read(path.to_path_buf(), e))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerTlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ServerTlsError::Invalid(path.to_path_buf(), e.to_string()))?;
    if certs.is_empty() {
        return Err(ServerTlsError::NoCertificate(path.to_path_buf()));
    }
    Ok(certs)
}

impl ServerTls {
    /// Reads the files and builds a rustls config (h2 only: the gRPC and HTTP listeners
    /// both speak it; HTTP clients without h2 get http/1.1).
    pub fn load(&self, alpn: &[&[u8]]) -> Result<ServerConfig, ServerTlsError> {
        crate::install_crypto_provider();
        let chain = certs(&self.cert_file)?;
        let key_pem = read(&self.key_file)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|_| ServerTlsError::NoKey(self.key_file.clone()))?;
        let builder = ServerConfig::builder();
        let builder = match &self.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in certs(ca)? {
                    roots
                        .add(c)
                        .map_err(|e| ServerTlsError::Invalid(ca.clone(), e.to_string()))?;
                }
                let v = WebPkiClientVerifier::builder(Arc::new(roots));
                let v = if self.client_cert_required {
                    v
                } else {
                    v.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(
                    v.build()
                        .map_err(|e| ServerTlsError::Invalid(ca.clone(), e.to_string()))?,
                )
            }
        };
        // Also checks that the key belongs to the certificate.
        let mut cfg = builder
            .with_single_cert(chain, key)
            .map_err(|e| ServerTlsError::Config(format!("{}: {e}", self.key_file.display())))?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(cfg)
    }

    fn stamps(&self) -> Vec<Option<(SystemTime, u64)>> {
        let mut files = vec![&self.cert_file, &self.key_file];
        if let Some(ca) = &self.client_ca_file {
            files.push(ca);
        }
        files
            .into_iter()
            .map(|f| {
                std::fs::metadata(f)
                    .ok()
                    .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
            })
            .collect()
    }
}

/// The current TLS configs of the listeners, swapped in place on reload. Each accepted
/// connection takes the config current at that moment; open connections keep theirs.
pub struct TlsReloader {
    files: ServerTls,
    grpc: RwLock<Arc<ServerConfig>>,
    http: RwLock<Arc<ServerConfig>>,
    stamps: std::sync::Mutex<Vec<Option<(SystemTime, u64)>>>,
}

const GRPC_ALPN: &[&[u8]] = &[b"h2"];
const HTTP_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

impl TlsReloader {
    /// Loads the files once; an error here is a configuration error.
    pub fn new(files: ServerTls) -> Result<Arc<TlsReloader>, ServerTlsError> {
        let stamps = files.stamps();
        let grpc = files.load(GRPC_ALPN)?;
        let http = files.load(HTTP_ALPN)?;
        Ok(Arc::new(TlsReloader {
            files,
            grpc: RwLock::new(Arc::new(grpc)),
            http: RwLock::new(Arc::new(http)),
            stamps: std::sync::Mutex::new(stamps),
        }))
    }

    pub fn grpc_config(&self) -> Arc<ServerConfig> {
        self.grpc.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn http_config(&self) -> Arc<ServerConfig> {
        self.http.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the files. On any error the configs in use stay as they were.
    pub fn reload(&self) -> Result<(), ServerTlsError> {
        let stamps = self.files.stamps();
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) = stamps;
        let grpc = self.files.load(GRPC_ALPN)?;
        let http = self.files.load(HTTP_ALPN)?;
        *self.grpc.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(grpc);
        *self.http.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(http);
        Ok(())
    }

    /// True if a file's modification time or size differs from the last (re)load.
    fn changed(&self) -> bool {
        *self.stamps.lock().unwrap_or_else(|p| p.into_inner()) != self.files.stamps()
    }

    fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(()) => tracing::info!(why, "TLS certificate and key reloaded"),
            Err(e) => {
                tracing::error!(why, error = %e, "TLS reload failed; still serving the previous certificate")
            }
        }
    }

    /// Reloads on SIGHUP and whenever the files change (checked every `poll`), until
    /// `shutdown`. A half-written pair (new certificate, old key) fails the key check and
    /// is retried when the next file changes.
    pub async fn watch(self: Arc<Self>, poll: Duration, shutdown: CancellationToken) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "no SIGHUP handler; TLS files are reloaded on change only");
                None
            }
        };
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hup_recv = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = hup_recv => self.reload_logged("SIGHUP"),
                _ = tick.tick() => {
                    if self.changed() {
                        self.reload_logged("file changed");
                    }
                }
            }
        }
    }
}

/// Accepts connections until `shutdown`, sets TCP_NODELAY, and (with `tls`) runs each
/// handshake in its own task. Only ready connections come out of the channel.
fn accept_loop<Io: Send + 'static>(
    listener: TcpListener,
    shutdown: CancellationToken,
    wrap: impl Fn(TcpStream, SocketAddr, mpsc::Sender<(Io, SocketAddr)>) + Send + 'static,
) -> mpsc::Receiver<(Io, SocketAddr)> {
    let (tx, rx) = mpsc::channel(128);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tx.closed() => return,
                r = listener.accept() => r,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    wrap(tcp, peer, tx.clone());
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    rx
}

/// Plaintext connections with TCP_NODELAY set.
pub fn plain(
    listener: TcpListener,
    shutdown: CancellationToken,
) -> mpsc::Receiver<(TcpStream, SocketAddr)> {
    accept_loop(listener, shutdown, |tcp, peer, tx| {
        // Never block the accept loop on a full channel.
        tokio::spawn(async move {
            let _ = tx.send((tcp, peer)).await;
        });
    })
}

/// TLS connections, handshaken with the config `config()` returns at accept time.
pub fn tls(
    listener: TcpListener,
    config: impl Fn() -> Arc<ServerConfig> + Send + 'static,
    shutdown: CancellationToken,
) -> mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)> {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    accept_loop(listener, shutdown, move |tcp, peer, tx| {
        let acceptor = TlsAcceptor::from(config());
        let pending = pending.clone();
        tokio::spawn(async move {
            let Ok(_permit) = pending.acquire_owned().await else {
                return;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send((stream, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    })
}

/// Connections for tonic's `serve_with_incoming*`.
pub fn incoming<Io: Send + 'static>(
    rx: mpsc::Receiver<(Io, SocketAddr)>,
) -> impl futures::Stream<Item = Result<Io, std::io::Error>> {
    use futures::StreamExt;
    tokio_stream::wrappers::ReceiverStream::new(rx).map(|(io, _)| Ok(io))
}

/// Connections for `axum::serve`.
pub struct ChannelListener<Io> {
    rx: mpsc::Receiver<(Io, SocketAddr)>,
    local: SocketAddr,
}

impl<Io> ChannelListener<Io> {
    pub fn new(rx: mpsc::Receiver<(Io, SocketAddr)>, local: SocketAddr) -> Self {
        ChannelListener { rx, local }
    }
}

impl<Io> axum::serve::Listener for ChannelListener<Io>
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Io = Io;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Io, SocketAddr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop ended (shutdown): serve nothing more.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}
