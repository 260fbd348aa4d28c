//! SQL for SubmitJobs: many jobs in one transaction with a handful of statements, whatever
//! the batch size — one multi-row INSERT (jobs and their outbox rows together), one read
//! of the dependencies named, one of the jobs that already hold the batch's idempotency
//! keys, one upsert of the concurrency keys and one NOTIFY per queue. Only jobs with
//! dependencies take statements of their own (they lock the jobs they wait for).

use super::flow::{set_job_deps, Flow};
use super::{job_from_row, measured, Cached, JobRow, Store, JOBS_CHANNEL, JOB_COLUMNS};
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
        measured("submit_batch", async {
        let mut results: Vec<Option<ItemResult>> = (0..items.len()).map(|_| None).collect();
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;

        // Dependencies named anywhere in the batch, in one read.
        let mut dep_ids: Vec<Uuid> = items.iter().flat_map(|i| i.flow.after.clone()).collect();
        dep_ids.sort();
        dep_ids.dedup();
        let mut deps: HashMap<Uuid, DepInfo> = HashMap::new();
        if !dep_ids.is_empty() {
            for r in tx
                .query_cached(
                    "SELECT u.id, coalesce(x.original_job_id, x.id) AS root, n.id AS newest, \
                            n.state \
                       FROM unnest($1::uuid[]) u(id) \
                       LEFT JOIN jobs x ON x.id = u.id \
                       LEFT JOIN LATERAL ( \
                            SELECT n.id, n.state FROM jobs n \
                             WHERE n.id = x.id OR (n.original_job_id = coalesce(x.original_job_id, x.id) \
                                                   AND n.created_at > x.created_at) \
                             ORDER BY n.created_at DESC, n.id DESC LIMIT 1) n ON true",
                    &[&dep_ids],
                )
                .await?
            {
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
                &format!(
                    "WITH u AS ( \
                       SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[], \
                              $5::jsonb[], $6::jsonb[], $7::int8[], $8::jsonb[], $9::text[], \
                              $10::jsonb[], $11::jsonb[], $12::jsonb[], $13::jsonb[], \
                              $14::int4[], $15::float8[], $16::int4[], $17::text[]) \
                         AS u(id, queue, argv, env, labels, params, timeout_ms, policy, ikey, \
                              outputs, limits, secret_env, ckeys, priority, shift_ms, ord, \
                              trace_parent)), \
                     ins AS ( \
                       INSERT INTO jobs AS j (id, queue, state, argv, env, labels, params, \
                              timeout_ms, retry_policy, idempotency_key, outputs, trace_parent, \
                              limits, secret_env, concurrency_keys, priority, not_before) \
                       SELECT id, queue, 'pending', \
                              ARRAY(SELECT e FROM jsonb_array_elements_text(argv) \
                                    WITH ORDINALITY t(e, n) ORDER BY n), \
                              env, \
                              ARRAY(SELECT jsonb_array_elements_text(labels)), \
                              params, timeout_ms, policy, ikey, \
                              ARRAY(SELECT jsonb_array_elements_text(outputs)), \
                              trace_parent, limits, secret_env, \
                              ARRAY(SELECT jsonb_array_elements_text(ckeys)), \
                              priority, now() - shift_ms * interval '1 millisecond' \
                         FROM u ORDER BY ord \
                       ON CONFLICT (idempotency_key) DO NOTHING \
                       RETURNING {JOB_COLUMNS}), \
                     ob AS ( \
                       INSERT INTO outbox (job_id, event, payload) \
                       SELECT id, 'job.submitted', \
                              jsonb_build_object('queue', queue, 'retry_of', NULL) FROM ins) \
                     SELECT * FROM ins"
                ),
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
                .query_cached(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs j WHERE j.idempotency_key = ANY($1)"),
                    &[&taken],
                )
                .await?
                .iter()
                .map(job_from_row)
                .collect::<Result<_>>()?;
            let ex_ids: Vec<Uuid> = existing.iter().map(|j| j.id).collect();
            let mut roots: HashMap<Uuid, Vec<String>> = HashMap::new();
            for r in tx
                .query_cached(
                    "SELECT d.job_id, coalesce(o.original_job_id, o.id)::text FROM job_deps d \
                       JOIN jobs o ON o.id = d.depends_on WHERE d.job_id = ANY($1)",
                    &[&ex_ids],
                )
                .await?
            {
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
            let burst: Vec<Option<f64>> = key_rows.values().map(|(_, r)| r.map(|r| r.1)).collect();
            super::flow::upsert_keys(&tx, &names, &lims, &per_sec, &burst).await?;
        }
        for &(i, job_id) in &with_deps {
            set_job_deps(&tx, job_id, &items[i].flow.after).await?;
        }
        // Jobs that wait for others were changed after the insert (not_before): read back.
        if !with_deps.is_empty() {
            let dep_jobs: Vec<Uuid> = with_deps.iter().map(|(_, id)| *id).collect();
            let mut fresh: HashMap<Uuid, JobRow> = HashMap::new();
            for r in tx
                .query_cached(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs j WHERE j.id = ANY($1)"),
                    &[&dep_jobs],
                )
                .await?
            {
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
            tx.execute_cached(
                "SELECT pg_notify($1, q) FROM unnest($2::text[]) q",
                &[&JOBS_CHANNEL, &notify],
            )
            .await?;
        }
        tx.commit().await?;
        let mut out = Vec::with_capacity(items.len());
        for r in results {
            out.push(r.unwrap_or_else(|| Err(Error::Internal("batch item without result".into()))));
        }
        Ok(out)
        })
        .await
    }
}
