//! PostgreSQL connections: the shared pool, migrations, and dedicated connections for
//! LISTEN and the leader lock.

use crate::error::{Error, Result};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use std::time::Duration;
use tokio_postgres::NoTls;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Advisory lock keys (arbitrary constants, unique to Drover).
pub const MIGRATION_LOCK: i64 = 0x4452_4f56_0001;
pub const LEADER_LOCK: i64 = 0x4452_4f56_0002;

/// Connections of the per-job paths (the claim and the group of results): see
/// [`hot_pool`].
pub const HOT_POOL_SIZE: usize = 4;

/// The session settings of [`hot_pool`]'s connections.
pub const HOT_SESSION_SETTINGS: &str = "-c plan_cache_mode=force_generic_plan \
     -c enable_seqscan=off -c enable_hashjoin=off -c enable_mergejoin=off";

pub fn pool(url: &str, size: usize) -> Result<Pool> {
    let pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| Error::Invalid(format!("database_url: {e}")))?;
    build_pool(pg, size)
}

/// A pool whose sessions plan each prepared statement once (`plan_cache_mode =
/// force_generic_plan`), for the statements run once or more per job. Left to choose,
/// PostgreSQL keeps re-planning them for every execution (their generic plan's estimated
/// cost, with LIMIT and arrays as parameters, never beats a custom plan's), and planning
/// was a third of its CPU in the throughput benchmark, more than the claim's execution.
/// Their plans do not depend on the values (index probes by id, one index scan per queue);
/// the list and search statements, whose plans do, stay on the main pool.
///
/// A generic plan is made once, from the statistics of that moment, and kept until an
/// ANALYZE: made while the tables are new and nearly empty, it scans them whole and
/// hash-joins, and a fresh database then pays a full scan of `attempts` and `jobs` per
/// result group until autoanalyze comes round (1.3 ms instead of 0.16 ms in the
/// benchmark). These statements only ever touch rows by key, so the sessions also forbid
/// sequential scans, hash joins and merge joins: the plan is index probes in nested loops
/// whatever the statistics say.
pub fn hot_pool(url: &str) -> Result<Pool> {
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| Error::Invalid(format!("database_url: {e}")))?;
    let options = match pg.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} {HOT_SESSION_SETTINGS}"),
        _ => HOT_SESSION_SETTINGS.to_string(),
    };
    pg.options(options);
    build_pool(pg, HOT_POOL_SIZE)
}

fn build_pool(pg: tokio_postgres::Config, size: usize) -> Result<Pool> {
    // Verified recycling drops connections that died with a PostgreSQL restart.
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Verified,
        },
    );
    let t = Some(Duration::from_secs(5));
    Pool::builder(mgr)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: t,
            create: t,
            recycle: t,
        })
        .build()
        .map_err(|e| Error::Internal(format!("building pool: {e}")))
}

/// Opens a connection outside the pool, driving it on a background task.
pub async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "dedicated connection closed");
        }
    });
    Ok(client)
}

/// Applies pending migrations. Several coordinators may start at once, so the run is
/// serialised with an advisory lock (refinery takes none of its own).
pub async fn migrate(url: &str) -> Result<usize> {
    migrate_to(url, None).await
}

/// [`migrate`] up to and including `version` (all when `None`): tests use it to build a
/// database as an older release left it.
pub async fn migrate_to(url: &str, version: Option<u32>) -> Result<usize> {
    let mut client = connect(url).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let target = match version {
        Some(v) => refinery::Target::Version(
            v.try_into()
                .map_err(|_| Error::Invalid(format!("migration version {v}")))?,
        ),
        None => refinery::Target::Latest,
    };
    let report = embedded::migrations::runner()
        .set_target(target)
        .set_migration_table_name("drover_schema_history")
        .run_async(&mut client)
        .await
        .map_err(|e| Error::Internal(format!("migration failed: {e}")));
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    Ok(report?.applied_migrations().len())
}
