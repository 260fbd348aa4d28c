//! The stack's PostgreSQL: a private server started from the machine's binaries, or the
//! one `DATABASE_URL` names; databases on it.

use crate::error::{pg, Error, Result};
use drover_pgserver::{PgServer, PgServerConfig};
use std::path::Path;

/// A connection to `url`, its driver running on a task of its own.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(pg(format!("connecting to PostgreSQL at {url}")))?;
    tokio::spawn(conn);
    Ok(client)
}

/// Applies the coordinator's migrations to the database at `url`.
pub async fn migrate(url: &str) -> Result<usize> {
    drover_coordinator::db::migrate(url)
        .await
        .map_err(|source| Error::Coordinator {
            what: format!("migrating {url}"),
            source,
        })
}

/// A private PostgreSQL with its cluster in `data_dir` (made on first use, kept after)
/// and these extra `-c` settings.
pub async fn private_server(data_dir: &Path, settings: &[(&str, &str)]) -> Result<PgServer> {
    Ok(PgServer::start(PgServerConfig {
        data_dir: data_dir.to_path_buf(),
        settings: settings
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    })
    .await?)
}

/// Where the stack's databases live: a private server, or the one DATABASE_URL names.
pub enum Server {
    Private(PgServer),
    External { admin_url: String },
}

impl Server {
    /// The server DATABASE_URL names if set (checked to answer), else a private one in
    /// `data_dir`.
    pub async fn start(data_dir: &Path) -> Result<Server> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.is_empty() => {
                // Fail early with a clear message if it does not answer.
                connect(&url).await?;
                Ok(Server::External { admin_url: url })
            }
            _ => Ok(Server::Private(private_server(data_dir, &[]).await?)),
        }
    }

    pub fn is_private(&self) -> bool {
        matches!(self, Server::Private(_))
    }

    /// A URL for server-wide queries (version, settings).
    pub fn admin_url(&self) -> String {
        match self {
            Server::Private(pg) => pg.url("postgres"),
            Server::External { admin_url } => admin_url.clone(),
        }
    }

    pub fn url(&self, db: &str) -> String {
        match self {
            Server::Private(pg) => pg.url(db),
            Server::External { admin_url } => drover_pgserver::with_database(admin_url, db),
        }
    }

    /// Creates a fresh database and returns a guard that drops it (on an external server;
    /// a private server's databases go with its data directory).
    pub async fn create_db(&self, name: &str) -> Result<Db> {
        match self {
            Server::Private(pg) => pg.create_database(name).await?,
            Server::External { admin_url } => connect(admin_url)
                .await?
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .map_err(pg(format!("creating database {name} on DATABASE_URL")))?,
        }
        Ok(Db {
            name: name.to_string(),
            url: self.url(name),
            admin_url: match self {
                Server::Private(_) => None,
                Server::External { admin_url } => Some(admin_url.clone()),
            },
        })
    }

    /// The private server's postmaster, for CPU accounting.
    pub fn postmaster_pid(&self) -> Option<i32> {
        match self {
            Server::Private(pg) => pg.recorded_pid(),
            Server::External { .. } => None,
        }
    }

    pub async fn stop(self) -> Result<()> {
        if let Server::Private(mut pg) = self {
            pg.stop().await?;
        }
        Ok(())
    }
}

/// A database of the stack; dropped when the guard goes if `admin_url` is set.
pub struct Db {
    pub name: String,
    pub url: String,
    admin_url: Option<String>,
}

impl Db {
    /// A database on the server `admin_url` connects to, dropped with the guard.
    pub fn dropped_with_guard(name: &str, admin_url: &str) -> Db {
        Db {
            name: name.to_string(),
            url: drover_pgserver::with_database(admin_url, name),
            admin_url: Some(admin_url.to_string()),
        }
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let Some(admin) = self.admin_url.take() else {
            return;
        };
        let name = self.name.clone();
        // Drop cannot await: use a runtime of our own on a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(c) = connect(&admin).await {
                    if let Err(e) = c
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                    {
                        eprintln!("could not drop database {name}: {e}");
                    }
                }
            });
        })
        .join();
    }
}
