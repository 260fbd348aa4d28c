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

/// Migrates the database, binds the listener and starts serving.
pub async fn start(cfg: Config) -> anyhow::Result<Coordinator> {
    cfg.validate().map_err(anyhow::Error::msg)?;
    cfg.check_exposure().map_err(anyhow::Error::msg)?;
    if !cfg.access_control {
        tracing::warn!(listen = %cfg.listen, http_listen = %cfg.http_listen,
            "access control is OFF: anyone who can connect may submit commands to every worker, \
             read every log and act as a worker");
    }
    crate::metrics::install();
    let applied = db::migrate(&cfg.database_url)
        .await
        .with_context(|| "applying database migrations")?;
    if applied > 0 {
        tracing::info!(applied, "database migrations applied");
    }
    let pool = db::pool(&cfg.database_url, cfg.db_pool_size)?;
    let store = Store::new(pool);
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
    let id = format!(
        "{}-{}-{}",
        hostname::get()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "coordinator".into()),
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let tls = match cfg.server_tls() {
        Some(files) => {
            Some(drover_transport::TlsReloader::new(files).context("loading the TLS certificate")?)
        }
        None => None,
    };
    let shutdown = CancellationToken::new();
    let blobs: Arc<dyn BlobStore> = Arc::new(DirStore::new(&cfg.artifact_dir));
    let dispatcher = Dispatcher::new(store.clone(), cfg.lease_ttl, cfg.dispatch_sweep);

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding gRPC listener on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let http_listener = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding HTTP listener on {}", cfg.http_listen))?;
    let http_addr = http_listener.local_addr()?;

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<JobServiceServer<JobsApi>>()
        .await;
    health_reporter
        .set_serving::<WorkerServiceServer<WorkersApi>>()
        .await;
    health_reporter
        .set_serving::<ScheduleServiceServer<SchedulesApi>>()
        .await;
    health_reporter
        .set_serving::<QueueServiceServer<QueuesApi>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(drover_proto::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let jobs_api = Arc::new(JobsApi {
        store: store.clone(),
        dispatcher: dispatcher.clone(),
        config: Arc::new(cfg.clone()),
        blobs: blobs.clone(),
    });
    let jobs =
        JobServiceServer::from_arc(jobs_api.clone()).max_decoding_message_size(4 * 1024 * 1024);
    let auth = Arc::new(crate::auth::Auth::new(
        store.clone(),
        cfg.access_control,
        &cfg.open_routes,
        cfg.token_cache,
    ));
    let schedules_api = Arc::new(SchedulesApi {
        store: store.clone(),
        dispatcher: dispatcher.clone(),
        config: Arc::new(cfg.clone()),
    });
    let schedules = ScheduleServiceServer::from_arc(schedules_api.clone());
    let queues_api = Arc::new(QueuesApi {
        store: store.clone(),
        dispatcher: dispatcher.clone(),
    });
    let queues = QueueServiceServer::from_arc(queues_api.clone());
    let workers = WorkerServiceServer::new(WorkersApi {
        store: store.clone(),
        dispatcher: dispatcher.clone(),
        coordinator_id: id.clone(),
        lease_ttl: cfg.lease_ttl,
        heartbeat_interval: cfg.heartbeat_interval,
        log_cap_bytes: cfg.log_cap_bytes,
        blobs: blobs.clone(),
        max_artifact_bytes: cfg.max_artifact_bytes,
        auth: auth.clone(),
    })
    .max_decoding_message_size(MAX_APPEND_BYTES + 1024 * 1024);

    let mut tasks = Vec::new();
    if cfg.access_control {
        tasks.push(tokio::spawn(crate::auth::follow_revocations(
            cfg.database_url.clone(),
            auth.clone(),
            shutdown.child_token(),
        )));
    }
    tasks.push(tokio::spawn(dispatcher.clone().run(shutdown.child_token())));
    tasks.push(tokio::spawn(listen::run(
        cfg.database_url.clone(),
        dispatcher.clone(),
        shutdown.child_token(),
    )));
    tasks.push(tokio::spawn(leader::run(
        leader::LeaderConfig {
            database_url: cfg.database_url.clone(),
            lease_ttl: cfg.lease_ttl,
            reaper_interval: cfg.reaper_interval,
            retention,
            retention_interval: cfg.retention_interval,
            blobs: blobs.clone(),
            audit_retention: cfg.audit_retention,
            schedule_interval: cfg.schedule_interval,
            schedule_grace: cfg.schedule_misfire_grace,
        },
        store.clone(),
        dispatcher.clone(),
        shutdown.child_token(),
    )));
    let alerts_cfg = Arc::new(cfg.alerts.clone());
    tasks.push(tokio::spawn(crate::alerts::run(
        cfg.database_url.clone(),
        store.clone(),
        alerts_cfg.clone(),
        cfg.lease_ttl.as_millis() as i64,
        shutdown.child_token(),
    )));
    tasks.push(tokio::spawn(crate::notify::run(
        store.clone(),
        alerts_cfg.clone(),
        id.clone(),
        shutdown.child_token(),
    )));
    let alerts_impl = Arc::new(crate::alerts_api::AlertsApi {
        store: store.clone(),
        alerts: alerts_cfg,
    });
    let alerts_api = AlertServiceServer::from_arc(alerts_impl.clone());
    let admin = Arc::new(AdminApi {
        store: store.clone(),
        config: Arc::new(cfg.clone()),
        coordinator_id: id.clone(),
        auth: auth.clone(),
    });
    let live = crate::dashboard::LiveHeader::new();
    tasks.push(tokio::spawn(crate::dashboard::run_header(
        live.clone(),
        admin.clone(),
        dispatcher.logs.clone(),
        shutdown.child_token(),
    )));
    let http_app = crate::http::router(crate::http::HttpState {
        store: store.clone(),
        log_cap_bytes: cfg.log_cap_bytes,
        admin: admin.clone(),
        dispatcher: dispatcher.clone(),
        services: crate::api::Services {
            jobs: jobs_api,
            admin: admin.clone(),
            queues: queues_api,
            alerts: alerts_impl,
            schedules: schedules_api,
        },
        auth: auth.clone(),
        secure_cookies: tls.is_some(),
        live,
        max_log_streams: cfg.max_log_streams_per_client,
    })
    .route_layer(axum::middleware::from_fn_with_state(
        auth.clone(),
        crate::auth::http_middleware,
    ));
    tasks.push(tokio::spawn(crate::health::follow_database(
        store.clone(),
        health_reporter.clone(),
        shutdown.child_token(),
    )));
    if let Some(t) = &tls {
        tasks.push(tokio::spawn(
            t.clone()
                .watch(cfg.tls_reload_interval, shutdown.child_token()),
        ));
    }
    let http_shutdown = shutdown.clone();
    // Not the shutdown token: if the connection stream ended first, the servers would skip
    // their shutdown hooks (tonic's closes the worker sessions) and wait on open
    // connections forever. The accept loops end when the server drops its side.
    let http_accept = CancellationToken::new();
    let http_tls = tls.clone();
    tasks.push(tokio::spawn(async move {
        let stop = async move { http_shutdown.cancelled().await };
        let r = match http_tls {
            Some(t) => {
                let rx =
                    tls_server::tls(http_listener, move || t.http_config(), http_accept.clone());
                axum::serve(
                    tls_server::ChannelListener::new(rx, http_addr),
                    http_app.into_make_service_with_connect_info::<crate::http::PeerAddr>(),
                )
                .with_graceful_shutdown(stop)
                .await
            }
            None => {
                let rx = tls_server::plain(http_listener, http_accept.clone());
                axum::serve(
                    tls_server::ChannelListener::new(rx, http_addr),
                    http_app.into_make_service_with_connect_info::<crate::http::PeerAddr>(),
                )
                .with_graceful_shutdown(stop)
                .await
            }
        };
        http_accept.cancel();
        if let Err(e) = r {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    }));
    let serve_shutdown = shutdown.clone();
    let d = dispatcher.clone();
    let admin_grpc = admin.clone();
    let grpc_accept = CancellationToken::new();
    let grpc_tls = tls.clone();
    tasks.push(tokio::spawn(async move {
        let stop = async move {
            serve_shutdown.cancelled().await;
            // Open worker streams would otherwise hold the graceful shutdown forever.
            d.close_all();
        };
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
                crate::auth::GrpcAuth(auth),
            ))
            .add_service(health)
            .add_service(reflection)
            .add_service(jobs)
            .add_service(workers)
            .add_service(schedules)
            .add_service(queues)
            .add_service(AdminServiceServer::from_arc(admin_grpc))
            .add_service(alerts_api);
        let result = match grpc_tls {
            Some(t) => {
                let rx = tls_server::tls(listener, move || t.grpc_config(), grpc_accept.clone());
                router
                    .serve_with_incoming_shutdown(tls_server::incoming(rx), stop)
                    .await
            }
            None => {
                let rx = tls_server::plain(listener, grpc_accept.clone());
                router
                    .serve_with_incoming_shutdown(tls_server::incoming(rx), stop)
                    .await
            }
        };
        grpc_accept.cancel();
        if let Err(e) = result {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    }));
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
