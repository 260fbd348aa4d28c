//! The audit log: every mutating call (submit, retry, cancel, token changes) is recorded
//! with who made it, from where, on what, and how it ended. Rows are written off the
//! request's path, in groups (a failed write is logged, never fails the call), and deleted
//! by the leader after `audit_retention`.

use crate::auth::Principal;
use crate::store::Store;
use tonic::Status;

/// Who is calling and from where, taken from a request before it is consumed.
#[derive(Clone)]
pub struct Caller {
    pub principal: Principal,
    pub peer: String,
}

impl Caller {
    pub fn of<T>(req: &tonic::Request<T>) -> Caller {
        Caller {
            principal: Principal::of(req),
            peer: req.remote_addr().map(|a| a.to_string()).unwrap_or_default(),
        }
    }

    /// Records the outcome of `method` on `target`.
    pub fn audit<T>(&self, store: &Store, method: &str, target: &str, result: &Result<T, Status>) {
        let outcome = match result {
            Ok(_) => "ok".to_string(),
            Err(s) => outcome_of_status(s),
        };
        record(store, &self.principal, &self.peer, method, target, outcome);
    }
}

pub fn outcome_of_status(s: &Status) -> String {
    let mut m = format!("{:?}: {}", s.code(), s.message());
    if m.len() > 500 {
        let mut end = 500;
        while !m.is_char_boundary(end) {
            end -= 1;
        }
        m.truncate(end);
    }
    m
}

pub fn record(
    store: &Store,
    who: &Principal,
    peer: &str,
    method: &str,
    target: &str,
    outcome: String,
) {
    store.queue_audit(crate::store::AuditEntry {
        actor: who.name().to_string(),
        role: who.role().to_string(),
        method: method.to_string(),
        target: target.to_string(),
        peer: peer.to_string(),
        outcome,
    });
}

/// One mutating call's audit entry, written when dropped: "ok" if [`Audit::ok`] was
/// called, else the refusal given to [`Audit::refused`], else "failed" (the request was
/// invalid or could not be carried out; the status went to the caller and the log).
pub struct Audit {
    store: Store,
    caller: Caller,
    method: &'static str,
    target: String,
    outcome: Option<String>,
}

impl Audit {
    pub fn start<T>(store: &Store, req: &tonic::Request<T>, method: &'static str) -> Audit {
        Audit {
            store: store.clone(),
            caller: Caller::of(req),
            method,
            target: String::new(),
            outcome: None,
        }
    }

    pub fn principal(&self) -> &Principal {
        &self.caller.principal
    }

    pub fn target(&mut self, t: impl std::fmt::Display) {
        self.target = t.to_string();
    }

    pub fn ok(&mut self) {
        self.outcome = Some("ok".into());
    }

    /// Notes a refusal and hands it back, for `?`.
    pub fn refused(&mut self, e: crate::error::Error) -> crate::error::Error {
        self.outcome = Some(outcome_of_status(&Status::from(
            crate::error::Error::PermissionDenied(e.to_string()),
        )));
        e
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let outcome = self.outcome.take().unwrap_or_else(|| "failed".into());
        record(
            &self.store,
            &self.caller.principal,
            &self.caller.peer,
            self.method,
            &self.target,
            outcome,
        );
    }
}
