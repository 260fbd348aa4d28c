//! Wires the coordinator together: migrations, pool, background tasks and the gRPC server.

use crate::artifacts::{BlobStore, DirStore};
use crate::config::Config;
use crate::dispatch::Dispatcher;
use crate::health::AdminApi;
use crate::jobs_api::JobsApi;
use crate::queues_api::QueuesApi;
use crate::schedules_api::SchedulesApi;
use crate::store::Store;
use crate::workers_api::{WorkersApi, MAX_APPEND_BYTES};
use crate::{db, leader, listen};
use anyhow::Context;
use drover_proto::v1::admin_service_server::AdminServiceServer;
use drover_proto::v1::alert_service_server::AlertServiceServer;
use drover_proto::v1::job_service_server::JobServiceServer;
use drover_proto::v1::queue_service_server::QueueServiceServer;
use drover_proto::v1::schedule_service_server::ScheduleServiceServer;
use drover_proto::v1::worker_service_server::WorkerServiceServer;
use drover_transport::server as tls_server;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A started coordinator.
pub struct Coordinator {
    pub addr: SocketAddr,
    /// Both listeners speak TLS.
    pub tls: bool,
    pub http_addr: SocketAddr,
    pub id: String,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Coordinator {
    /// Stops accepting work, closes worker sessions and waits for the tasks to end.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Migrates the database, binds the listeners and starts serving.
pub async fn start(cfg: Config) -> anyhow::Result<Coordinator> {
    check_config(&cfg)?;
    crate::metrics::install();
    let (store, retention) = prepare_database(&cfg).await?;
    if cfg.alerts.wants_events() {
        // Before anything is served, so no event of a job this coordinator handles is lost.
        store
            .arm_gate(
                crate::store::OUTBOX_GATE,
                crate::alerts::OUTBOX_GATE_TTL.as_secs() as i64,
            )
            .await
            .with_context(|| "opening the outbox gate for the event rules")?;
    }
    let id = coordinator_id();
    let tls = load_tls(&cfg)?;
    let listeners = Listeners::bind(&cfg).await?;
    let (addr, http_addr) = (listeners.grpc_addr, listeners.http_addr);
    let shutdown = CancellationToken::new();
    let services = Services::new(&cfg, store, id.clone());
    let (health_reporter, health) = grpc_health().await;

    let mut tasks = services.spawn_background(&cfg, retention, &shutdown);
    tasks.push(tokio::spawn(crate::health::follow_database(
        services.store.clone(),
        health_reporter.clone(),
        shutdown.child_token(),
    )));
    if let Some(t) = &tls {
        tasks.push(tokio::spawn(
            t.clone()
                .watch(cfg.tls_reload_interval, shutdown.child_token()),
        ));
    }
    let http_app = services.http_router(&cfg, tls.is_some());
    tasks.push(tokio::spawn(serve_http(
        listeners.http,
        http_addr,
        http_app,
        tls.clone(),
        shutdown.clone(),
    )));
    tasks.push(services.spawn_grpc(listeners.grpc, health, tls.clone(), shutdown.clone())?);
    tracing::info!(%addr, %http_addr, tls = tls.is_some(), coordinator_id = %id, "coordinator listening");
    Ok(Coordinator {
        addr,
        tls: tls.is_some(),
        http_addr,
        id,
        shutdown,
        tasks,
    })
}

/// Refuses settings that are invalid or unsafe; warns when access control is off.
fn check_config(cfg: &Config) -> anyhow::Result<()> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    cfg.check_exposure().map_err(anyhow::Error::msg)?;
    if !cfg.access_control {
        tracing::warn!(listen = %cfg.listen, http_listen = %cfg.http_listen,
            "access control is OFF: anyone who can connect may submit commands to every worker, \
             read every log and act as a worker");
    }
    Ok(())
}

/// Applies the migrations, opens the pool and makes sure log partitions exist.
async fn prepare_database(cfg: &Config) -> anyhow::Result<(Store, crate::config::Retention)> {
    let applied = db::migrate(&cfg.database_url)
        .await
        .with_context(|| "applying database migrations")?;
    if applied > 0 {
        tracing::info!(applied, "database migrations applied");
    }
    let pool = db::pool(&cfg.database_url, cfg.db_pool_size)?;
    let store = Store::with_hot_pool(pool, db::hot_pool(&cfg.database_url)?);
    let retention = cfg.retention();
    store.set_log_partition(retention.log_partition);
    // Writes must find their log partition from the first job on; the leader keeps
    // creating them ahead (and a write that finds none makes it).
    let created = store
        .ensure_log_partitions(
            retention.log_partition,
            crate::retention::partitions_ahead(&retention, cfg.retention_interval),
            None,
        )
        .await
        .with_context(|| "creating log partitions")?;
    if !created.is_empty() {
        tracing::info!(partitions = ?created, "log partitions created");
    }
    Ok((store, retention))
}

/// `<hostname>-<pid>-<random>`: tells coordinators apart in leases and logs.
fn coordinator_id() -> String {
    format!(
        "{}-{}-{}",
        hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "coordinator".into()),
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    )
}

fn load_tls(cfg: &Config) -> anyhow::Result<Option<Arc<drover_transport::TlsReloader>>> {
    match cfg.server_tls() {
        Some(files) => Ok(Some(
            drover_transport::TlsReloader::new(files).context("loading the TLS certificate")?,
        )),
        None => Ok(None),
    }
}

/// The gRPC and HTTP listeners, bound before anything is served.
struct Listeners {
    grpc: tokio::net::TcpListener,
    grpc_addr: SocketAddr,
    http: tokio::net::TcpListener,
    http_addr: SocketAddr,
}

impl Listeners {
    async fn bind(cfg: &Config) -> anyhow::Result<Listeners> {
        let grpc = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding gRPC listener on {}", cfg.listen))?;
        let http = tokio::net::TcpListener::bind(cfg.http_listen)
            .await
            .with_context(|| format!("binding HTTP listener on {}", cfg.http_listen))?;
        Ok(Listeners {
            grpc_addr: grpc.local_addr()?,
            http_addr: http.local_addr()?,
            grpc,
            http,
        })
    }
}

/// The standard gRPC health service, with every service serving.
async fn grpc_health() -> (
    tonic_health::server::HealthReporter,
    tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<JobServiceServer<JobsApi>>().await;
    reporter
        .set_serving::<WorkerServiceServer<WorkersApi>>()
        .await;
    reporter
        .set_serving::<ScheduleServiceServer<SchedulesApi>>()
        .await;
    reporter
        .set_serving::<QueueServiceServer<QueuesApi>>()
        .await;
    (reporter, health)
}

/// What the coordinator serves, shared by its gRPC and HTTP listeners and its background
/// tasks: the store, the dispatcher and the API implementations.
struct Services {
    id: String,
    store: Store,
    dispatcher: Arc<Dispatcher>,
    blobs: Arc<dyn BlobStore>,
    auth: Arc<crate::auth::Auth>,
    jobs: Arc<JobsApi>,
    schedules: Arc<SchedulesApi>,
    queues: Arc<QueuesApi>,
    workers: WorkersApi,
    alerts_cfg: Arc<crate::alerts::AlertsConfig>,
    alerts: Arc<crate::alerts_api::AlertsApi>,
    admin: Arc<AdminApi>,
    live: Arc<crate::dashboard::LiveHeader>,
}

impl Services {
    fn new(cfg: &Config, store: Store, id: String) -> Services {
        let blobs: Arc<dyn BlobStore> = Arc::new(DirStore::new(&cfg.artifact_dir));
        let dispatcher = Dispatcher::new(store.clone(), cfg.lease_ttl, cfg.dispatch_sweep);
        let config = Arc::new(cfg.clone());
        let auth = Arc::new(crate::auth::Auth::new(
            store.clone(),
            cfg.access_control,
            &cfg.open_routes,
            cfg.token_cache,
        ));
        let alerts_cfg = Arc::new(cfg.alerts.clone());
        Services {
            jobs: Arc::new(JobsApi {
                store: store.clone(),
                dispatcher: dispatcher.clone(),
                config: config.clone(),
                blobs: blobs.clone(),
            }),
            schedules: Arc::new(SchedulesApi {
                store: store.clone(),
                dispatcher: dispatcher.clone(),
                config: config.clone(),
            }),
            queues: Arc::new(QueuesApi {
                store: store.clone(),
                dispatcher: dispatcher.clone(),
            }),
            workers: WorkersApi {
                store: store.clone(),
                dispatcher: dispatcher.clone(),
                coordinator_id: id.clone(),
                lease_ttl: cfg.lease_ttl,
                heartbeat_interval: cfg.heartbeat_interval,
                log_cap_bytes: cfg.log_cap_bytes,
                blobs: blobs.clone(),
                max_artifact_bytes: cfg.max_artifact_bytes,
                auth: auth.clone(),
            },
            alerts: Arc::new(crate::alerts_api::AlertsApi {
                store: store.clone(),
                alerts: alerts_cfg.clone(),
            }),
            admin: Arc::new(AdminApi {
                store: store.clone(),
                config,
                coordinator_id: id.clone(),
                auth: auth.clone(),
            }),
            live: crate::dashboard::LiveHeader::new(),
            alerts_cfg,
            auth,
            blobs,
            dispatcher,
            store,
            id,
        }
    }

    /// Token revocations, dispatching, notifications from the database, leader duties,
    /// alerting and the dashboard's live header.
    fn spawn_background(
        &self,
        cfg: &Config,
        retention: crate::config::Retention,
        shutdown: &CancellationToken,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        if cfg.access_control {
            tasks.push(tokio::spawn(crate::auth::follow_revocations(
                cfg.database_url.clone(),
                self.auth.clone(),
                shutdown.child_token(),
            )));
        }
        tasks.push(tokio::spawn(
            self.dispatcher.clone().run(shutdown.child_token()),
        ));
        tasks.push(tokio::spawn(listen::run(
            cfg.database_url.clone(),
            self.dispatcher.clone(),
            shutdown.child_token(),
        )));
        if cfg.alerts.wants_events() {
            tasks.push(tokio::spawn(crate::alerts::keep_outbox_gate(
                self.store.clone(),
                shutdown.child_token(),
            )));
        }
        tasks.push(tokio::spawn(crate::gate::keep(
            self.store.clone(),
            crate::store::WATCH_GATE,
            self.dispatcher.jobs.clone(),
            shutdown.child_token(),
        )));
        tasks.push(tokio::spawn(crate::gate::keep(
            self.store.clone(),
            crate::store::LOGS_GATE,
            self.dispatcher.logs.clone(),
            shutdown.child_token(),
        )));
        tasks.push(tokio::spawn(leader::run(
            self.leader_config(cfg, retention),
            self.store.clone(),
            self.dispatcher.clone(),
            shutdown.child_token(),
        )));
        tasks.push(tokio::spawn(crate::alerts::run(
            cfg.database_url.clone(),
            self.store.clone(),
            self.alerts_cfg.clone(),
            cfg.lease_ttl.as_millis() as i64,
            shutdown.child_token(),
        )));
        tasks.push(tokio::spawn(crate::notify::run(
            self.store.clone(),
            self.alerts_cfg.clone(),
            self.id.clone(),
            shutdown.child_token(),
        )));
        tasks.push(tokio::spawn(crate::dashboard::run_header(
            self.live.clone(),
            self.admin.clone(),
            self.dispatcher.logs.clone(),
            shutdown.child_token(),
        )));
        tasks
    }

    fn leader_config(
        &self,
        cfg: &Config,
        retention: crate::config::Retention,
    ) -> leader::LeaderConfig {
        leader::LeaderConfig {
            database_url: cfg.database_url.clone(),
            lease_ttl: cfg.lease_ttl,
            reaper_interval: cfg.reaper_interval,
            retention,
            retention_interval: cfg.retention_interval,
            blobs: self.blobs.clone(),
            audit_retention: cfg.audit_retention,
            schedule_interval: cfg.schedule_interval,
            schedule_grace: cfg.schedule_misfire_grace,
        }
    }

    /// The HTTP listener's routes (health, logs, dashboard, JSON API) behind access control.
    fn http_router(&self, cfg: &Config, secure_cookies: bool) -> axum::Router {
        crate::http::router(crate::http::HttpState {
            store: self.store.clone(),
            log_cap_bytes: cfg.log_cap_bytes,
            admin: self.admin.clone(),
            dispatcher: self.dispatcher.clone(),
            services: crate::api::Services {
                jobs: self.jobs.clone(),
                admin: self.admin.clone(),
                queues: self.queues.clone(),
                alerts: self.alerts.clone(),
                schedules: self.schedules.clone(),
            },
            auth: self.auth.clone(),
            secure_cookies,
            live: self.live.clone(),
            max_log_streams: cfg.max_log_streams_per_client,
        })
        .route_layer(axum::middleware::from_fn_with_state(
            self.auth.clone(),
            crate::auth::http_middleware,
        ))
    }

    /// Serves every gRPC service, behind peer identity and token resolution, until
    /// `shutdown`; then closes the worker sessions.
    fn spawn_grpc(
        self,
        listener: tokio::net::TcpListener,
        health: tonic_health::pb::health_server::HealthServer<
            impl tonic_health::pb::health_server::Health,
        >,
        tls: Option<Arc<drover_transport::TlsReloader>>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<JoinHandle<()>> {
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(drover_proto::v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let jobs = JobServiceServer::from_arc(self.jobs.clone())
            .max_decoding_message_size(4 * 1024 * 1024);
        let workers = WorkerServiceServer::new(self.workers)
            .max_decoding_message_size(MAX_APPEND_BYTES + 1024 * 1024);
        let router = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
            // Room for a whole log batch in flight: with hyper's 1 MiB default a 2 MiB
            // AppendLogs waited on window updates.
            .initial_stream_window_size(Some(8 * 1024 * 1024))
            .initial_connection_window_size(Some(32 * 1024 * 1024))
            // The verified client certificate's names, for handlers and authorisation.
            .layer(tonic::service::InterceptorLayer::new(
                drover_transport::identity::attach_peer_identity,
            ))
            // Resolves the caller's token once per request, before any service runs.
            .layer(tower_http::auth::AsyncRequireAuthorizationLayer::new(
                crate::auth::GrpcAuth(self.auth),
            ))
            .add_service(health)
            .add_service(reflection)
            .add_service(jobs)
            .add_service(workers)
            .add_service(ScheduleServiceServer::from_arc(self.schedules))
            .add_service(QueueServiceServer::from_arc(self.queues))
            .add_service(AdminServiceServer::from_arc(self.admin))
            .add_service(AlertServiceServer::from_arc(self.alerts));
        let dispatcher = self.dispatcher;
        let accept = CancellationToken::new();
        Ok(tokio::spawn(async move {
            let stop = async move {
                shutdown.cancelled().await;
                // Open worker streams would otherwise hold the graceful shutdown forever.
                dispatcher.close_all();
            };
            let result = match tls {
                Some(t) => {
                    let rx = tls_server::tls(listener, move || t.grpc_config(), accept.clone());
                    router
                        .serve_with_incoming_shutdown(tls_server::incoming(rx), stop)
                        .await
                }
                None => {
                    let rx = tls_server::plain(listener, accept.clone());
                    router
                        .serve_with_incoming_shutdown(tls_server::incoming(rx), stop)
                        .await
                }
            };
            accept.cancel();
            if let Err(e) = result {
                tracing::error!(error = %e, "gRPC server stopped");
            }
        }))
    }
}

/// Serves the HTTP listener until `shutdown`.
async fn serve_http(
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    app: axum::Router,
    tls: Option<Arc<drover_transport::TlsReloader>>,
    shutdown: CancellationToken,
) {
    let stop = async move { shutdown.cancelled().await };
    // Not the shutdown token: if the connection stream ended first, the servers would skip
    // their shutdown hooks (tonic's closes the worker sessions) and wait on open
    // connections forever. The accept loops end when the server drops its side.
    let accept = CancellationToken::new();
    let r = match tls {
        Some(t) => {
            let rx = tls_server::tls(listener, move || t.http_config(), accept.clone());
            axum::serve(
                tls_server::ChannelListener::new(rx, addr),
                app.into_make_service_with_connect_info::<crate::http::PeerAddr>(),
            )
            .with_graceful_shutdown(stop)
            .await
        }
        None => {
            let rx = tls_server::plain(listener, accept.clone());
            axum::serve(
                tls_server::ChannelListener::new(rx, addr),
                app.into_make_service_with_connect_info::<crate::http::PeerAddr>(),
            )
            .with_graceful_shutdown(stop)
            .await
        }
    };
    accept.cancel();
    if let Err(e) = r {
        tracing::error!(error = %e, "HTTP server stopped");
    }
}
