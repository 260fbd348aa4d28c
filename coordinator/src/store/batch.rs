//! SQL for SubmitJobs: many jobs in one transaction with a handful of statements, whatever
//! the batch size — one multi-row INSERT (jobs and their outbox rows together), one read
//! of the dependencies named, one of the jobs that already hold the batch's idempotency
//! keys, one upsert of the concurrency keys and one NOTIFY per queue. Only jobs with
//! dependencies take statements of their own (they lock the jobs they wait for).

use super::flow::{set_job_deps, Flow};
use super::watch::GET_JOBS;
use super::{job_from_row, measured, Cached, JobRow, Store, JOBS_CHANNEL};
use crate::error::{Error, Result};
use drover_core::idempotency::{first_difference, reused_key_message, Submission};
use drover_core::{JobSpec, RetryPolicy};
use std::collections::{BTreeMap, HashMap};
use tokio_postgres::types::Json;
use uuid::Uuid;

/// A concurrency key's limit and rate (tokens per second, burst).
type KeyRow = (u32, Option<(f64, f64)>);

/// One validated spec of a batch.
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub spec: JobSpec,
    pub policy: RetryPolicy,
    pub flow: Flow,
    /// The submit's trace (W3C traceparent), when it differs from the batch's.
    pub trace_parent: Option<String>,
}

/// What happened to one item: the job and whether it was created, or why not.
pub type ItemResult = std::result::Result<(JobRow, bool), Error>;

fn given(item: &BatchItem, roots: &HashMap<Uuid, DepInfo>) -> Submission {
    Submission {
        spec: item.spec.clone(),
        policy: item.policy.clone(),
        priority: item.flow.priority,
        concurrency_keys: item.flow.keys.iter().map(|(k, _)| k.clone()).collect(),
        after_roots: item
            .flow
            .after
            .iter()
            .map(|d| roots.get(d).and_then(|i| i.root).unwrap_or(*d).to_string())
            .collect(),
    }
}

/// A dependency as found: the first job of its chain, and the chain's newest job.
struct DepInfo {
    root: Option<Uuid>,
    newest: Option<(Uuid, String)>,
}

/// The first refusal among an item's dependencies, as the single submit gives it.
fn dep_error(after: &[Uuid], deps: &HashMap<Uuid, DepInfo>) -> Option<Error> {
    for (i, d) in after.iter().enumerate() {
        match deps.get(d).and_then(|x| x.newest.as_ref()) {
            None => return Some(Error::Invalid(format!("after[{i}]: job {d} not found"))),
            Some((id, state)) if state == "permanent_failed" || state == "cancelled" => {
                return Some(Error::FailedPrecondition(format!(
                    "after[{i}]: job {id} ended {state}; retry it first"
                )))
            }
            Some(_) => {}
        }
    }
    None
}

fn json_list(v: &[String]) -> Json<&[String]> {
    Json(v)
}

impl Store {
    /// Stores the items that can be stored, in one transaction; one result per item, in
    /// order. An item is refused (and the rest go on) when a dependency is missing or has
    /// failed, or when its idempotency key is held by a job with a different spec (another
    /// item of the batch included).
    pub async fn submit_batch(
        &self,
        items: &[BatchItem],
        trace_parent: Option<&str>,
    ) -> Result<Vec<ItemResult>> {
        measured("submit_batch", self.store_batch(items, trace_parent)).await
    }

    /// [`Store::submit_batch`], unmeasured: grouped single submits measure it as theirs.
    pub(super) async fn store_batch(
        &self,
        items: &[BatchItem],
        trace_parent: Option<&str>,
    ) -> Result<Vec<ItemResult>> {
        const RESOLVE_DEPS: &str = include_str!("sql/batch/resolve_deps.sql");
        const INSERT_JOBS: &str = include_str!("sql/batch/insert_jobs.sql");
        const JOBS_BY_KEYS: &str = include_str!("sql/batch/jobs_by_keys.sql");
        const DEP_ROOTS: &str = include_str!("sql/batch/dep_roots.sql");
        const NOTIFY_QUEUES: &str = include_str!("sql/batch/notify_queues.sql");
        (async {
            let mut results: Vec<Option<ItemResult>> = (0..items.len()).map(|_| None).collect();
            let mut c = self.pool.get().await?;
            let tx = c.transaction().await?;

            // Dependencies named anywhere in the batch, in one read.
            let mut dep_ids: Vec<Uuid> = items.iter().flat_map(|i| i.flow.after.clone()).collect();
            dep_ids.sort();
            dep_ids.dedup();
            let mut deps: HashMap<Uuid, DepInfo> = HashMap::new();
            if !dep_ids.is_empty() {
                for r in tx.query_cached(RESOLVE_DEPS, &[&dep_ids]).await? {
                    let newest: Option<Uuid> = r.try_get("newest")?;
                    let state: Option<String> = r.try_get("state")?;
                    deps.insert(
                        r.try_get("id")?,
                        DepInfo {
                            root: r.try_get("root")?,
                            newest: newest.zip(state),
                        },
                    );
                }
            }

            // Which items to insert: each key's first item with valid dependencies; the
            // others are compared with whichever job ends up holding the key.
            let mut first_of_key: HashMap<&str, usize> = HashMap::new();
            let mut to_insert: Vec<usize> = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if let Some(e) = dep_error(&item.flow.after, &deps) {
                    results[i] = Some(Err(e));
                    continue;
                }
                match item.spec.idempotency_key.as_deref() {
                    Some(k) if first_of_key.contains_key(k) => {}
                    Some(k) => {
                        first_of_key.insert(k, i);
                        to_insert.push(i);
                    }
                    None => to_insert.push(i),
                }
            }

            let ids: Vec<Uuid> = to_insert.iter().map(|_| Uuid::now_v7()).collect();
            let queues: Vec<String> = to_insert
                .iter()
                .map(|&i| items[i].spec.queue.clone())
                .collect();
            let argv: Vec<Json<&[String]>> = to_insert
                .iter()
                .map(|&i| json_list(&items[i].spec.argv))
                .collect();
            let env: Vec<Json<&BTreeMap<String, String>>> = to_insert
                .iter()
                .map(|&i| Json(&items[i].spec.env))
                .collect();
            let labels: Vec<Json<&[String]>> = to_insert
                .iter()
                .map(|&i| json_list(&items[i].spec.labels))
                .collect();
            let params: Vec<Json<&BTreeMap<String, String>>> = to_insert
                .iter()
                .map(|&i| Json(&items[i].spec.params))
                .collect();
            let timeouts: Vec<i64> = to_insert
                .iter()
                .map(|&i| items[i].spec.timeout_ms)
                .collect();
            let policies: Vec<Json<&RetryPolicy>> =
                to_insert.iter().map(|&i| Json(&items[i].policy)).collect();
            let keys: Vec<Option<&str>> = to_insert
                .iter()
                .map(|&i| items[i].spec.idempotency_key.as_deref())
                .collect();
            let outputs: Vec<Json<&[String]>> = to_insert
                .iter()
                .map(|&i| json_list(&items[i].spec.outputs))
                .collect();
            let limits: Vec<Json<&drover_core::ResourceLimits>> = to_insert
                .iter()
                .map(|&i| Json(&items[i].spec.limits))
                .collect();
            let secrets: Vec<Json<&BTreeMap<String, String>>> = to_insert
                .iter()
                .map(|&i| Json(&items[i].spec.secret_env))
                .collect();
            let ckeys: Vec<Json<Vec<&str>>> = to_insert
                .iter()
                .map(|&i| Json(items[i].flow.keys.iter().map(|(k, _)| k.as_str()).collect()))
                .collect();
            let priorities: Vec<i32> = to_insert.iter().map(|&i| items[i].flow.priority).collect();
            let shifts: Vec<f64> = to_insert
                .iter()
                .map(|&i| items[i].flow.priority_shift_ms as f64)
                .collect();
            let ord: Vec<i32> = (0..to_insert.len() as i32).collect();
            let traces: Vec<Option<&str>> = to_insert
                .iter()
                .map(|&i| items[i].trace_parent.as_deref().or(trace_parent))
                .collect();

            // Jobs and their outbox rows in one statement; a key already taken inserts nothing.
            let rows = if to_insert.is_empty() {
                Vec::new()
            } else {
                tx.query_cached(
                    INSERT_JOBS,
                    &[
                        &ids,
                        &queues,
                        &argv,
                        &env,
                        &labels,
                        &params,
                        &timeouts,
                        &policies,
                        &keys,
                        &outputs,
                        &limits,
                        &secrets,
                        &ckeys,
                        &priorities,
                        &shifts,
                        &ord,
                        &traces,
                    ],
                )
                .await?
            };
            let mut created: HashMap<Uuid, JobRow> = HashMap::with_capacity(rows.len());
            for r in &rows {
                let j = job_from_row(r)?;
                created.insert(j.id, j);
            }

            // Keys held before this batch: their jobs, with the chain roots of their
            // dependencies, to compare with.
            let mut holders: HashMap<String, (JobRow, Submission)> = HashMap::new();
            let taken: Vec<&str> = to_insert
                .iter()
                .zip(&ids)
                .filter(|(_, id)| !created.contains_key(id))
                .filter_map(|(&i, _)| items[i].spec.idempotency_key.as_deref())
                .collect();
            if !taken.is_empty() {
                let existing: Vec<JobRow> = tx
                    .query_cached(JOBS_BY_KEYS, &[&taken])
                    .await?
                    .iter()
                    .map(job_from_row)
                    .collect::<Result<_>>()?;
                let ex_ids: Vec<Uuid> = existing.iter().map(|j| j.id).collect();
                let mut roots: HashMap<Uuid, Vec<String>> = HashMap::new();
                for r in tx.query_cached(DEP_ROOTS, &[&ex_ids]).await? {
                    roots.entry(r.try_get(0)?).or_default().push(r.try_get(1)?);
                }
                for j in existing {
                    let s = Submission {
                        spec: j.spec.clone(),
                        policy: j.policy.clone(),
                        priority: j.priority,
                        concurrency_keys: j.concurrency_keys.clone(),
                        after_roots: roots.remove(&j.id).unwrap_or_default(),
                    };
                    if let Some(k) = j.spec.idempotency_key.clone() {
                        holders.insert(k, (j, s));
                    }
                }
            }
            let mut with_deps: Vec<(usize, Uuid)> = Vec::new();
            for (&i, id) in to_insert.iter().zip(&ids) {
                if let Some(j) = created.remove(id) {
                    if let Some(k) = &items[i].spec.idempotency_key {
                        holders.insert(k.clone(), (j.clone(), given(&items[i], &deps)));
                    }
                    if !items[i].flow.after.is_empty() {
                        with_deps.push((i, j.id));
                    }
                    results[i] = Some(Ok((j, true)));
                }
            }
            // Every other item with a key: the same submission as the key's holder, or refused.
            for (i, item) in items.iter().enumerate() {
                if results[i].is_some() {
                    continue;
                }
                let Some(k) = item.spec.idempotency_key.as_deref() else {
                    return Err(Error::Internal(format!("batch item {i} was not inserted")));
                };
                let Some((job, held)) = holders.get(k) else {
                    return Err(Error::Internal(format!(
                        "idempotency key of item {i} not found"
                    )));
                };
                results[i] = Some(match first_difference(held, &given(item, &deps)) {
                    None => Ok((job.clone(), false)),
                    Some(field) => Err(Error::AlreadyExists(reused_key_message(
                        k,
                        &job.id.to_string(),
                        field,
                    ))),
                });
            }

            // Concurrency keys of the new jobs: one upsert, each key once (the last limit
            // given wins, as it would with one submit after another).
            let mut key_rows: BTreeMap<&str, KeyRow> = BTreeMap::new();
            for &i in &to_insert {
                if !matches!(results[i], Some(Ok((_, true)))) {
                    continue;
                }
                let f = &items[i].flow;
                for (n, (k, l)) in f.keys.iter().enumerate() {
                    key_rows.insert(k, (*l, f.rates.get(n).copied().flatten()));
                }
            }
            if !key_rows.is_empty() {
                let names: Vec<&str> = key_rows.keys().copied().collect();
                let lims: Vec<i32> = key_rows
                    .values()
                    .map(|(l, _)| i32::try_from(*l).unwrap_or(i32::MAX))
                    .collect();
                let per_sec: Vec<Option<f64>> =
                    key_rows.values().map(|(_, r)| r.map(|r| r.0)).collect();
                let burst: Vec<Option<f64>> =
                    key_rows.values().map(|(_, r)| r.map(|r| r.1)).collect();
                super::flow::upsert_keys(&tx, &names, &lims, &per_sec, &burst).await?;
            }
            for &(i, job_id) in &with_deps {
                set_job_deps(&tx, job_id, &items[i].flow.after).await?;
            }
            // Jobs that wait for others were changed after the insert (not_before): read back.
            if !with_deps.is_empty() {
                let dep_jobs: Vec<Uuid> = with_deps.iter().map(|(_, id)| *id).collect();
                let mut fresh: HashMap<Uuid, JobRow> = HashMap::new();
                for r in tx.query_cached(GET_JOBS, &[&dep_jobs]).await? {
                    let j = job_from_row(&r)?;
                    fresh.insert(j.id, j);
                }
                for (i, id) in with_deps {
                    if let Some(j) = fresh.remove(&id) {
                        results[i] = Some(Ok((j, true)));
                    }
                }
            }
            let mut notify: Vec<&str> = to_insert
                .iter()
                .filter(|&&i| matches!(results[i], Some(Ok((_, true)))))
                .map(|&i| items[i].spec.queue.as_str())
                .collect();
            notify.sort();
            notify.dedup();
            if !notify.is_empty() {
                tx.execute_cached(NOTIFY_QUEUES, &[&JOBS_CHANNEL, &notify])
                    .await?;
            }
            tx.commit().await?;
            let mut out = Vec::with_capacity(items.len());
            for r in results {
                out.push(
                    r.unwrap_or_else(|| Err(Error::Internal("batch item without result".into()))),
                );
            }
            Ok(out)
        })
        .await
    }
}
