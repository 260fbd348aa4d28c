//! PostgreSQL connections: the shared pool, migrations, and dedicated connections for
//! LISTEN and the leader lock.

use crate::error::{Error, Result};
use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts,
};
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

/// A pooled connection that has sat idle at least this long is checked with an empty
/// query before it is handed out again; one used more recently goes out as it is. The
/// check costs a round trip, and made at every checkout it was one of three round trips
/// of each result group and one of two of each claim and each API read. A connection
/// PostgreSQL closed (a restart, a terminated backend) is dropped either way, once its
/// connection task has seen the socket close. What only the check finds is a connection
/// whose server went away without closing it (a dead host, a partition); for one used in
/// the last second, the TCP bounds below end a statement sent on it instead.
pub const VERIFY_IDLE_AFTER: Duration = Duration::from_secs(1);

/// How long sent data may go unacknowledged before the kernel gives up on a connection
/// (`TCP_USER_TIMEOUT`), unless `database_url` sets `tcp_user_timeout`. Without it a
/// statement sent to a server that vanished without closing the socket waits for TCP's
/// own retransmissions to give up, about 15 minutes.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// Silence after which the kernel probes a connection (`keepalives_idle`), and the gap
/// between probes, unless `database_url` sets `keepalives_idle`: a connection waiting for
/// an answer that will never come is then given up after about a minute (the probes go
/// unanswered past [`TCP_USER_TIMEOUT`]) instead of two hours.
pub const KEEPALIVES_IDLE: Duration = Duration::from_secs(30);
pub const KEEPALIVES_INTERVAL: Duration = Duration::from_secs(10);

/// `database_url` parsed, with the TCP bounds above where it sets none of its own.
pub fn config(url: &str) -> Result<tokio_postgres::Config> {
    let mut pg: tokio_postgres::Config = url
        .parse()
        .map_err(|e| Error::Invalid(format!("database_url: {e}")))?;
    if pg.get_tcp_user_timeout().is_none() {
        pg.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    // tokio-postgres's default (two hours) stands for "not set".
    if pg.get_keepalives() && pg.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
        pg.keepalives_idle(KEEPALIVES_IDLE);
        if pg.get_keepalives_interval().is_none() {
            pg.keepalives_interval(KEEPALIVES_INTERVAL);
        }
    }
    Ok(pg)
}

pub fn pool(url: &str, size: usize) -> Result<Pool> {
    build_pool(config(url)?, size, VERIFY_IDLE_AFTER)
}

/// [`pool`] with another idle time before the check ([`VERIFY_IDLE_AFTER`]): tests use
/// `Duration::ZERO` (always check) and `Duration::MAX` (never).
pub fn pool_verifying_after(url: &str, size: usize, idle: Duration) -> Result<Pool> {
    build_pool(config(url)?, size, idle)
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
    let mut pg = config(url)?;
    let options = match pg.get_options() {
        Some(o) if !o.trim().is_empty() => format!("{o} {HOT_SESSION_SETTINGS}"),
        _ => HOT_SESSION_SETTINGS.to_string(),
    };
    pg.options(options);
    build_pool(pg, HOT_POOL_SIZE, VERIFY_IDLE_AFTER)
}

/// How long a checkout may take to connect, and to check a connection.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);

fn build_pool(
    pg: tokio_postgres::Config,
    size: usize,
    verify_idle_after: Duration,
) -> Result<Pool> {
    // Fast recycling only drops connections whose socket has closed; the hook adds the
    // empty-query check for connections idle at least `verify_idle_after`.
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let t = Some(POOL_TIMEOUT);
    Pool::builder(mgr)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .pre_recycle(Hook::async_fn(move |client, metrics| {
            let idle = metrics.last_used() >= verify_idle_after;
            Box::pin(async move {
                if !idle {
                    return Ok(());
                }
                // A failed or unanswered check drops the connection; the pool then tries
                // the next one or opens a new one.
                match tokio::time::timeout(POOL_TIMEOUT, client.simple_query("")).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(HookError::Backend(e)),
                    Err(_) => Err(HookError::message("no answer to the connection check")),
                }
            })
        }))
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
    let (client, conn) = config(url)?.connect(NoTls).await?;
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
