//! Request ids: a mutating call that is not naturally idempotent (RetryJob, RetryJobs,
//! CancelJob, CreateSchedule, TriggerSchedule, TestAlertChannel) may carry a client-chosen
//! `request_id`. The first call with an id claims it and, when it succeeds, keeps its
//! response; a repeat (same caller, method and id: a client retrying after a lost answer)
//! gets that response back instead of acting again. The same id with a different request
//! is ALREADY_EXISTS naming `request_id`. A failed call gives its id up, so a retry acts.
//!
//! A repeat that arrives while the first call still runs is ABORTED (retry later). If the
//! coordinator stops between acting and keeping the response, the id stays claimed
//! without one: repeats are ABORTED until retention removes it (`retention.request_ids`),
//! which is the price of never acting twice.

use crate::auth::Principal;
use crate::error::Error;
use crate::store::requests::Claim;
use crate::store::Store;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::future::Future;
use tonic::Status;

/// Longest request id accepted.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Refuses an id that is too long or has characters outside `[A-Za-z0-9._:-]`.
pub fn check_request_id(id: &str) -> Result<(), Error> {
    if id.len() > MAX_REQUEST_ID_LEN {
        return Err(Error::Invalid(format!(
            "request_id: {} bytes; the limit is {MAX_REQUEST_ID_LEN}",
            id.len()
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(Error::Invalid(format!(
            "request_id: {c:?} is not allowed (use A-Z a-z 0-9 . _ : -)"
        )));
    }
    Ok(())
}

/// SHA-256 (hex) of the request as JSON (keys sorted, so maps hash the same whatever
/// their order) without its request_id.
pub fn fingerprint<R: Serialize>(req: &R) -> String {
    let mut v = serde_json::to_value(req).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.remove("request_id");
    }
    hex::encode(Sha256::digest(v.to_string().as_bytes()))
}

/// Who a request id belongs to: ids of different callers never meet.
pub fn caller_of(p: &Principal) -> String {
    format!("{}:{}", p.role(), p.name())
}

/// Runs `act` at most once per (caller, method, request id): the first call acts and its
/// response is kept; a repeat of the same request returns that response. Without a
/// request id, `act` simply runs.
pub async fn once<Req, Resp, Fut>(
    store: &Store,
    caller: &Principal,
    method: &str,
    request_id: &str,
    req: &Req,
    act: Fut,
) -> Result<Resp, Status>
where
    Req: Serialize,
    Resp: prost::Message + Default,
    Fut: Future<Output = Result<Resp, Status>>,
{
    if request_id.is_empty() {
        return act.await;
    }
    check_request_id(request_id)?;
    let caller = caller_of(caller);
    let print = fingerprint(req);
    match store
        .claim_request(&caller, method, request_id, &print)
        .await?
    {
        Claim::New => {}
        Claim::Seen { fingerprint, .. } if fingerprint != print => {
            return Err(Error::RequestIdReused(format!(
                "request_id: {request_id:?} was used for a different {} request; \
                 use a new id for a new request",
                method.rsplit('/').next().unwrap_or(method)
            ))
            .into());
        }
        Claim::Seen {
            response: Some(bytes),
            ..
        } => {
            tracing::info!(%method, %request_id, "repeated request answered from its first result");
            return Resp::decode(bytes.as_slice()).map_err(|e| {
                Status::from(Error::Internal(format!(
                    "stored response of {method} {request_id:?}: {e}"
                )))
            });
        }
        Claim::Seen { response: None, .. } => {
            return Err(Error::Aborted(format!(
                "request_id: a call with id {request_id:?} has not finished; retry later"
            ))
            .into());
        }
    }
    let result = act.await;
    match &result {
        Ok(resp) => {
            let bytes = resp.encode_to_vec();
            if let Err(e) = store
                .finish_request(&caller, method, request_id, &bytes)
                .await
            {
                // The call acted: keeping the claim (without a response) refuses repeats
                // rather than acting twice.
                tracing::warn!(%method, %request_id, error = %e, "response of a request id not kept");
            }
        }
        Err(_) => {
            if let Err(e) = store.release_request(&caller, method, request_id).await {
                tracing::warn!(%method, %request_id, error = %e, "request id not released");
            }
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn ids_are_bounded_and_plain() {
        assert!(check_request_id("cli-1.2:3_x").is_ok());
        assert!(check_request_id(&"a".repeat(128)).is_ok());
        for bad in [&"a".repeat(129), "a b", "x'--", "é"] {
            let e = check_request_id(bad).unwrap_err();
            assert!(e.to_string().starts_with("request_id:"), "{e}");
        }
    }

    #[derive(Serialize)]
    struct Req {
        id: String,
        set: HashMap<String, String>,
        request_id: String,
    }

    #[test]
    fn fingerprints_ignore_the_id_and_map_order() {
        let mut a = HashMap::new();
        let mut b = HashMap::new();
        for i in 0..20 {
            a.insert(format!("k{i}"), i.to_string());
        }
        for i in (0..20).rev() {
            b.insert(format!("k{i}"), i.to_string());
        }
        let r1 = Req {
            id: "j".into(),
            set: a,
            request_id: "1".into(),
        };
        let r2 = Req {
            id: "j".into(),
            set: b,
            request_id: "2".into(),
        };
        assert_eq!(fingerprint(&r1), fingerprint(&r2));
        let r3 = Req {
            id: "k".into(),
            ..r2
        };
        assert_ne!(fingerprint(&r1), fingerprint(&r3));
    }
}
