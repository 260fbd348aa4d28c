//! Token management and the audit log over gRPC (AdminService, role admin), and the
//! token creation shared with the offline `drover-coordinator token create`.

use crate::audit::Caller;
use crate::auth::{hash_token, new_token};
use crate::convert;
use crate::error::Error;
use crate::health::AdminApi;
use crate::store::{AuditRow, NewToken, Store, TokenRow};
use drover_core::auth::{check_worker_pattern, Role, MAX_SCOPE_QUEUES};
use drover_core::validate::check_name;
use drover_proto::v1 as pb;
use tonic::{Request, Response, Status};

/// Longest lifetime a token may be given: ten years.
pub const MAX_LIFETIME_SECS: u64 = 10 * 366 * 86_400;
const DEFAULT_AUDIT_PAGE: u32 = 100;
const MAX_AUDIT_PAGE: u32 = 1000;

/// What to create; checked by [`create_token`].
pub struct TokenSpec {
    pub name: String,
    pub role: String,
    pub queues: Vec<String>,
    pub worker_pattern: String,
    /// 0: never expires.
    pub expires_in_secs: u64,
}

/// Checks a token request; errors name the field.
pub fn check_spec(s: &TokenSpec) -> Result<Role, Error> {
    check_name("name", &s.name)?;
    let role = Role::parse(&s.role).ok_or_else(|| {
        Error::Invalid(format!(
            "role: {:?} is not a role; use viewer, operator, admin or worker",
            s.role
        ))
    })?;
    if !s.queues.is_empty() && role != Role::Operator {
        return Err(Error::Invalid(
            "queues: only operator tokens can be limited to queues".into(),
        ));
    }
    if s.queues.len() > MAX_SCOPE_QUEUES {
        return Err(Error::Invalid(format!(
            "queues: at most {MAX_SCOPE_QUEUES}, got {}",
            s.queues.len()
        )));
    }
    for (i, q) in s.queues.iter().enumerate() {
        check_name(&format!("queues[{i}]"), q)?;
    }
    match (role, s.worker_pattern.is_empty()) {
        (Role::Worker, true) => {
            return Err(Error::Invalid(
                "worker_pattern: a worker token needs the worker id (or a pattern with '*') \
                 it may connect as"
                    .into(),
            ))
        }
        (Role::Worker, false) => check_worker_pattern(&s.worker_pattern)
            .map_err(|e| Error::Invalid(format!("worker_pattern: {e}")))?,
        (_, false) => {
            return Err(Error::Invalid(
                "worker_pattern: only worker tokens are bound to worker ids".into(),
            ))
        }
        (_, true) => {}
    }
    if s.expires_in_secs > MAX_LIFETIME_SECS {
        return Err(Error::Invalid(format!(
            "expires_in: at most {MAX_LIFETIME_SECS}s (ten years)"
        )));
    }
    Ok(role)
}

/// Makes and stores a token; returns its record and the secret (shown once).
pub async fn create_token(store: &Store, s: &TokenSpec) -> Result<(TokenRow, String), Error> {
    check_spec(s)?;
    let secret = new_token();
    let row = store
        .insert_token(&NewToken {
            name: s.name.clone(),
            role: s.role.clone(),
            queues: s.queues.clone(),
            worker_pattern: s.worker_pattern.clone(),
            token_hash: hash_token(&secret),
            expires_at: (s.expires_in_secs > 0)
                .then(|| chrono::Utc::now() + chrono::Duration::seconds(s.expires_in_secs as i64)),
        })
        .await?;
    Ok((row, secret))
}

pub fn token_to_pb(t: &TokenRow) -> pb::ApiToken {
    pb::ApiToken {
        id: t.id.to_string(),
        name: t.name.clone(),
        role: t.role.clone(),
        queues: t.queues.clone(),
        worker_pattern: t.worker_pattern.clone(),
        created_at: Some(convert::ts(t.created_at)),
        expires_at: t.expires_at.map(convert::ts),
        last_used_at: t.last_used_at.map(convert::ts),
        revoked_at: t.revoked_at.map(convert::ts),
    }
}

fn audit_to_pb(a: &AuditRow) -> pb::AuditEntry {
    pb::AuditEntry {
        id: a.id.max(0) as u64,
        at: Some(convert::ts(a.at)),
        actor: a.actor.clone(),
        role: a.role.clone(),
        method: a.method.clone(),
        target: a.target.clone(),
        peer: a.peer.clone(),
        outcome: a.outcome.clone(),
    }
}

pub async fn create(
    api: &AdminApi,
    req: Request<pb::CreateTokenRequest>,
) -> Result<Response<pb::CreateTokenResponse>, Status> {
    let caller = Caller::of(&req);
    let r = req.into_inner();
    let spec = TokenSpec {
        name: r.name,
        role: r.role,
        queues: r.queues,
        worker_pattern: r.worker_pattern,
        expires_in_secs: convert::millis("expires_in", &r.expires_in)? / 1000,
    };
    let result = create_token(&api.store, &spec)
        .await
        .map_err(Status::from)
        .map(|(row, secret)| {
            tracing::info!(token = %row.name, role = %row.role, by = %caller.principal.name(), "token created");
            (row, secret)
        });
    let target = match &result {
        Ok((row, _)) => format!("token {} ({})", row.id, row.name),
        Err(_) => format!("token {}", spec.name),
    };
    caller.audit(
        &api.store,
        "/drover.v1.AdminService/CreateToken",
        &target,
        &result,
    );
    let (row, secret) = result?;
    Ok(Response::new(pb::CreateTokenResponse {
        token: Some(token_to_pb(&row)),
        secret,
    }))
}

pub async fn list(
    api: &AdminApi,
    req: Request<pb::ListTokensRequest>,
) -> Result<Response<pb::ListTokensResponse>, Status> {
    let r = req.into_inner();
    let pager = crate::paging::Pager::new("ListTokens", &r, &r.page_token);
    let size = crate::paging::page_size("page_size", r.page_size, 1000, 1000)?;
    // Oldest first, as stored: (created_at, id) is the keyset.
    let after = pager.cursor::<(i64, String)>()?;
    let rows = api.store.list_tokens(r.include_revoked).await?;
    let (rows, next) = crate::paging::page_sorted(
        rows,
        |t| (t.created_at.timestamp_micros(), t.id.to_string()),
        after.as_ref(),
        size,
    );
    Ok(Response::new(pb::ListTokensResponse {
        tokens: rows.iter().map(token_to_pb).collect(),
        next_page_token: pager.next(next.as_ref()),
    }))
}

pub async fn revoke(
    api: &AdminApi,
    req: Request<pb::RevokeTokenRequest>,
) -> Result<Response<pb::RevokeTokenResponse>, Status> {
    let caller = Caller::of(&req);
    let token = req.into_inner().token;
    let result = async {
        if token.is_empty() || token.len() > 64 {
            return Err(Error::Invalid(
                "token: give a token id or name (1 to 64 characters)".into(),
            ));
        }
        let id = uuid::Uuid::parse_str(&token).ok();
        if id.is_none() {
            check_name("token", &token)?;
        }
        api.store.revoke_token(id, &token).await
    }
    .await
    .map_err(Status::from);
    if result.is_ok() {
        // This coordinator forgets it now; the others on the NOTIFY.
        api.auth.invalidate();
    }
    let target = match &result {
        Ok(row) => format!("token {} ({})", row.id, row.name),
        Err(_) => format!("token {token}"),
    };
    caller.audit(
        &api.store,
        "/drover.v1.AdminService/RevokeToken",
        &target,
        &result,
    );
    let row = result?;
    tracing::info!(token = %row.name, by = %caller.principal.name(), "token revoked");
    Ok(Response::new(pb::RevokeTokenResponse {
        token: Some(token_to_pb(&row)),
    }))
}

pub async fn list_audit(
    api: &AdminApi,
    req: Request<pb::ListAuditRequest>,
) -> Result<Response<pb::ListAuditResponse>, Status> {
    let r = req.into_inner();
    let pager = crate::paging::Pager::new("ListAudit", &r, &r.page_token);
    let size = match r.page_size {
        0 => DEFAULT_AUDIT_PAGE,
        n if n > MAX_AUDIT_PAGE => {
            return Err(Error::Invalid(format!("page_size: at most {MAX_AUDIT_PAGE}")).into())
        }
        n => n,
    };
    let since_secs = convert::millis("since", &r.since)? / 1000;
    if since_secs > MAX_LIFETIME_SECS {
        return Err(Error::Invalid(format!("since: at most {MAX_LIFETIME_SECS}s")).into());
    }
    let before = match pager.cursor::<i64>()? {
        Some(n) if n <= 0 => {
            return Err(
                Error::Invalid("page_token: not a token from a previous page".into()).into(),
            )
        }
        c => c,
    };
    let since =
        (since_secs > 0).then(|| chrono::Utc::now() - chrono::Duration::seconds(since_secs as i64));
    let mut rows = api
        .store
        .list_audit(since, before, i64::from(size) + 1)
        .await?;
    let next = if rows.len() > size as usize {
        rows.truncate(size as usize);
        pager.next(rows.last().map(|a| a.id).as_ref())
    } else {
        String::new()
    };
    Ok(Response::new(pb::ListAuditResponse {
        entries: rows.iter().map(audit_to_pb).collect(),
        next_page_token: next,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, role: &str, queues: &[&str], pattern: &str, secs: u64) -> TokenSpec {
        TokenSpec {
            name: name.into(),
            role: role.into(),
            queues: queues.iter().map(|q| q.to_string()).collect(),
            worker_pattern: pattern.into(),
            expires_in_secs: secs,
        }
    }

    #[test]
    fn token_specs_are_checked_field_by_field() {
        let ok = [
            spec("ops", "admin", &[], "", 0),
            spec("ci", "operator", &["a", "b"], "", 86_400),
            spec("dash", "viewer", &[], "", MAX_LIFETIME_SECS),
            spec("w1", "worker", &[], "host-*", 0),
        ];
        for s in ok {
            assert!(check_spec(&s).is_ok(), "{}", s.name);
        }
        let bad = [
            (spec("", "admin", &[], "", 0), "name"),
            (spec("a b", "admin", &[], "", 0), "name"),
            (spec("x", "root", &[], "", 0), "role"),
            (spec("x", "viewer", &["a"], "", 0), "queues"),
            (spec("x", "operator", &["a b"], "", 0), "queues[0]"),
            (spec("x", "worker", &[], "", 0), "worker_pattern"),
            (spec("x", "admin", &[], "w1", 0), "worker_pattern"),
            (
                spec("x", "viewer", &[], "", MAX_LIFETIME_SECS + 1),
                "expires_in",
            ),
        ];
        for (s, field) in bad {
            let e = check_spec(&s).expect_err(field).to_string();
            assert!(e.starts_with(field), "{field}: {e}");
        }
        let many: Vec<String> = (0..=MAX_SCOPE_QUEUES).map(|i| format!("q{i}")).collect();
        let s = TokenSpec {
            queues: many,
            ..spec("x", "operator", &[], "", 0)
        };
        assert!(check_spec(&s)
            .unwrap_err()
            .to_string()
            .starts_with("queues"));
    }
}
