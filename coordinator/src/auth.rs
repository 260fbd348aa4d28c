//! Access control: who is calling, and may they.
//!
//! One table ([`GRPC_RULES`], [`HTTP_RULES`]) says which right every gRPC method and HTTP
//! route needs; a path with no rule is refused. A layer in front of both listeners
//! resolves the bearer token once per request (one indexed lookup of its SHA-256, briefly
//! cached), checks the rule, and puts the [`Principal`] in the request's extensions for
//! the handlers (queue scopes, worker binding, audit).

use crate::error::Error;
use crate::store::{Store, TokenRow};
use chrono::Utc;
use drover_core::auth::{bearer, queue_allowed, worker_pattern_matches, Right, Role};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;
use tonic::Status;
use uuid::Uuid;

/// What a route needs, and whether calling it changes something (and so is audited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub right: Right,
    pub mutating: bool,
}

const fn read() -> Rule {
    Rule {
        right: Right::Read,
        mutating: false,
    }
}

const fn needs(right: Right, mutating: bool) -> Rule {
    Rule { right, mutating }
}

/// Every gRPC method the coordinator serves and the right it needs. Worker reports are
/// not audited (they are recorded as attempts, and would double the hot path's writes).
pub const GRPC_RULES: &[(&str, Rule)] = &[
    (
        "/drover.v1.JobService/SubmitJob",
        needs(Right::Submit, true),
    ),
    ("/drover.v1.JobService/GetJob", read()),
    ("/drover.v1.JobService/ListJobs", read()),
    ("/drover.v1.JobService/StreamLogs", read()),
    (
        "/drover.v1.JobService/RetryJob",
        needs(Right::Operate, true),
    ),
    (
        "/drover.v1.JobService/RetryJobs",
        needs(Right::Operate, true),
    ),
    (
        "/drover.v1.JobService/CancelJob",
        needs(Right::Operate, true),
    ),
    ("/drover.v1.JobService/ListArtifacts", read()),
    ("/drover.v1.JobService/GetArtifact", read()),
    (
        "/drover.v1.JobService/SubmitJobs",
        needs(Right::Submit, true),
    ),
    ("/drover.v1.JobService/WatchJobs", read()),
    ("/drover.v1.JobService/WaitJob", read()),
    (
        "/drover.v1.WorkerService/Session",
        needs(Right::Work, false),
    ),
    (
        "/drover.v1.WorkerService/AppendLogs",
        needs(Right::Work, false),
    ),
    (
        "/drover.v1.WorkerService/FinishAttempt",
        needs(Right::Work, false),
    ),
    (
        "/drover.v1.WorkerService/UploadArtifact",
        needs(Right::Work, false),
    ),
    ("/drover.v1.AdminService/GetHealth", read()),
    ("/drover.v1.AdminService/ListWorkers", read()),
    (
        "/drover.v1.AdminService/CreateToken",
        needs(Right::Admin, true),
    ),
    (
        "/drover.v1.AdminService/ListTokens",
        needs(Right::Admin, false),
    ),
    (
        "/drover.v1.AdminService/RevokeToken",
        needs(Right::Admin, true),
    ),
    (
        "/drover.v1.AdminService/ListAudit",
        needs(Right::Admin, false),
    ),
    ("/drover.v1.AlertService/ListFailureGroups", read()),
    ("/drover.v1.AlertService/ListFailureGroupJobs", read()),
    ("/drover.v1.AlertService/ListAlertRules", read()),
    ("/drover.v1.AlertService/ListNotifications", read()),
    (
        "/drover.v1.AlertService/RedeliverNotification",
        needs(Right::Operate, true),
    ),
    (
        "/drover.v1.AlertService/TestAlertChannel",
        needs(Right::Admin, true),
    ),
    ("/drover.v1.ScheduleService/ListSchedules", read()),
    ("/drover.v1.ScheduleService/GetSchedule", read()),
    (
        "/drover.v1.ScheduleService/CreateSchedule",
        needs(Right::Submit, true),
    ),
    (
        "/drover.v1.ScheduleService/PauseSchedule",
        needs(Right::Operate, true),
    ),
    (
        "/drover.v1.ScheduleService/ResumeSchedule",
        needs(Right::Operate, true),
    ),
    (
        "/drover.v1.ScheduleService/DeleteSchedule",
        needs(Right::Operate, true),
    ),
    (
        "/drover.v1.ScheduleService/TriggerSchedule",
        needs(Right::Submit, true),
    ),
    ("/drover.v1.QueueService/ListQueues", read()),
    (
        "/drover.v1.QueueService/PauseQueue",
        needs(Right::Operate, true),
    ),
    (
        "/drover.v1.QueueService/ResumeQueue",
        needs(Right::Operate, true),
    ),
    ("/grpc.health.v1.Health/Check", read()),
    ("/grpc.health.v1.Health/Watch", read()),
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        read(),
    ),
];

/// Every HTTP route (as axum matches it) and the right it needs. A route whose methods
/// need different rights has an entry `"METHOD /path"` for the others.
pub const HTTP_RULES: &[(&str, Rule)] = &[
    ("/healthz", read()),
    ("/readyz", read()),
    ("/health", read()),
    ("/metrics", read()),
    ("/jobs/{id}/logs", read()),
    // The JSON API: each route needs what its gRPC method needs (see api.rs).
    ("/api/v1/openapi.json", read()),
    ("/api/v1/health", read()),
    ("/api/v1/workers", read()),
    ("/api/v1/jobs", read()),
    ("POST /api/v1/jobs", needs(Right::Submit, true)),
    ("/api/v1/jobs/retry", needs(Right::Operate, true)),
    ("/api/v1/jobs/{id}", read()),
    ("/api/v1/jobs/{id}/retry", needs(Right::Operate, true)),
    ("/api/v1/jobs/{id}/cancel", needs(Right::Operate, true)),
    ("/api/v1/jobs/{id}/artifacts", read()),
    ("/api/v1/jobs/{id}/artifacts/{*name}", read()),
    ("/api/v1/jobs/{id}/log", read()),
    ("/api/v1/jobs/{id}/log/follow", read()),
    ("/api/v1/queues", read()),
    ("/api/v1/queues/{queue}/pause", needs(Right::Operate, true)),
    ("/api/v1/queues/{queue}/resume", needs(Right::Operate, true)),
    ("/api/v1/failure-groups", read()),
    ("/api/v1/schedules", read()),
    // The dashboard's pages and its live event stream.
    ("/ui", read()),
    ("/ui/jobs", read()),
    ("/ui/jobs/{id}", read()),
    ("/ui/jobs/{id}/log", read()),
    ("/ui/workers", read()),
    ("/ui/queues", read()),
    ("/ui/failures", read()),
    ("/ui/events", read()),
    ("/ui/logout", needs(Right::Read, true)),
];

/// Served to anyone, whatever the configuration: the dashboard's login form and its
/// static files (nothing in them depends on who asks).
pub const PUBLIC_ROUTES: &[&str] = &[
    "/",
    "/ui/login",
    "/ui/static/dashboard.js",
    "/ui/static/dashboard.css",
];

/// Name of the dashboard's session cookie.
pub const SESSION_COOKIE: &str = "drover_session";
/// Header carrying the session's CSRF token on mutating requests.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Served without a token unless configured otherwise (`open_routes`).
pub const DEFAULT_OPEN_ROUTES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

pub fn rule_for(path: &str) -> Option<Rule> {
    if PUBLIC_ROUTES.contains(&path) {
        return Some(read());
    }
    GRPC_RULES
        .iter()
        .chain(HTTP_RULES)
        .find(|(p, _)| *p == path)
        .map(|(_, r)| *r)
}

/// An `open_routes` entry must be a known route that needs no more than `read`.
pub fn check_open_route(path: &str) -> Result<(), String> {
    match rule_for(path) {
        None => Err(format!("{path:?} is not a route of the coordinator")),
        Some(r) if r.right != Right::Read => Err(format!(
            "{path:?} needs the right {:?}; only routes that need \"read\" may be opened",
            r.right.as_str()
        )),
        Some(_) => Ok(()),
    }
}

#[derive(Debug, Clone)]
enum Identity {
    /// Access control is off: every right.
    Unrestricted,
    /// An open route's caller: no rights.
    Anonymous,
    Token {
        id: Uuid,
        name: String,
        role: Role,
        queues: Vec<String>,
        worker_pattern: String,
    },
}

/// Who made a request; in the request's extensions once the auth layer let it through.
#[derive(Debug, Clone)]
pub struct Principal(Identity);

impl Principal {
    pub fn unrestricted() -> Principal {
        Principal(Identity::Unrestricted)
    }

    /// A caller without a token: no rights.
    pub fn anonymous() -> Principal {
        Principal(Identity::Anonymous)
    }

    /// The principal of a request; one the layer did not see (a bug) may do nothing.
    pub fn of<T>(req: &tonic::Request<T>) -> Principal {
        req.extensions()
            .get::<Principal>()
            .cloned()
            .unwrap_or(Principal(Identity::Anonymous))
    }

    fn from_row(row: &TokenRow) -> Option<Principal> {
        Some(Principal(Identity::Token {
            id: row.id,
            name: row.name.clone(),
            role: Role::parse(&row.role)?,
            queues: row.queues.clone(),
            worker_pattern: row.worker_pattern.clone(),
        }))
    }

    pub fn name(&self) -> &str {
        match &self.0 {
            Identity::Unrestricted => "",
            Identity::Anonymous => "anonymous",
            Identity::Token { name, .. } => name,
        }
    }

    pub fn role(&self) -> &str {
        match &self.0 {
            Identity::Unrestricted => "unrestricted",
            Identity::Anonymous => "anonymous",
            Identity::Token { role, .. } => role.as_str(),
        }
    }

    pub fn token_id(&self) -> Option<Uuid> {
        match &self.0 {
            Identity::Token { id, .. } => Some(*id),
            _ => None,
        }
    }

    pub fn has(&self, right: Right) -> bool {
        match &self.0 {
            Identity::Unrestricted => true,
            Identity::Anonymous => false,
            Identity::Token { role, .. } => role.has(right),
        }
    }

    /// The worker ids this principal may act for: `None` means any (access control off).
    /// Tokens of other roles get a pattern that matches nothing.
    pub fn worker_binding(&self) -> Option<&str> {
        match &self.0 {
            Identity::Unrestricted => None,
            Identity::Token {
                role: Role::Worker,
                worker_pattern,
                ..
            } => Some(worker_pattern),
            _ => Some(""),
        }
    }

    /// Refuses acting as `worker_id` unless the token is bound to it.
    pub fn check_worker(&self, worker_id: &str) -> Result<(), Error> {
        match self.worker_binding() {
            None => Ok(()),
            Some(p) if worker_pattern_matches(p, worker_id) => Ok(()),
            Some(p) => Err(Error::PermissionDenied(format!(
                "token {:?} is bound to worker id {p:?} and may not act as worker {worker_id:?}",
                self.name()
            ))),
        }
    }

    /// Refuses acting on a job of `queue` if the token is limited to other queues.
    pub fn check_queue(&self, queue: &str) -> Result<(), Error> {
        match &self.0 {
            Identity::Token { name, queues, .. } if !queue_allowed(queues, queue) => {
                Err(Error::PermissionDenied(format!(
                    "token {name:?} may act only on queues {}, not on {queue:?}",
                    queues.join(", ")
                )))
            }
            _ => Ok(()),
        }
    }

    /// The queues this principal is limited to (empty: all).
    pub fn queue_scope(&self) -> &[String] {
        match &self.0 {
            Identity::Token { queues, .. } => queues,
            _ => &[],
        }
    }
}

/// SHA-256 of a token: what the database stores and is searched by.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new token: 256 random bits, hex after the `drover_` prefix.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    let mut s = String::with_capacity(drover_core::auth::TOKEN_PREFIX.len() + 64);
    s.push_str(drover_core::auth::TOKEN_PREFIX);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

struct Cached {
    row: TokenRow,
    at: Instant,
}

/// Most tokens held in the cache; past this it is emptied (tokens are few in practice).
const CACHE_MAX: usize = 10_000;
/// `last_used_at` is written at most this often per token.
const TOUCH_EVERY: chrono::Duration = chrono::Duration::seconds(60);
/// NOTIFY channel on which token revocations are announced.
pub const TOKENS_CHANNEL: &str = "drover_tokens";

/// Resolves tokens and applies the rule table.
pub struct Auth {
    pub enabled: bool,
    store: Store,
    open: HashSet<String>,
    cache_ttl: Duration,
    cache: Mutex<HashMap<[u8; 32], Cached>>,
    /// Bumped whenever the cache is emptied, so a lookup racing a revocation does not
    /// put a stale row back.
    generation: AtomicU64,
    /// The revocation listener is connected; only then are cached rows trusted.
    listening: AtomicBool,
}

impl Auth {
    pub fn new(store: Store, enabled: bool, open: &[String], cache_ttl: Duration) -> Auth {
        Auth {
            enabled,
            store,
            open: open.iter().cloned().collect(),
            cache_ttl,
            cache: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            listening: AtomicBool::new(false),
        }
    }

    /// Changes whenever a revocation was heard (or the listener reconnected): open worker
    /// sessions then re-check their token.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Forgets every cached token (a token was revoked somewhere).
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut c) = self.cache.lock() {
            c.clear();
        }
    }

    /// The revocation listener connected (`true`: anything revoked while it was away is
    /// unknown, so the cache starts empty) or lost its connection (`false`: cached rows
    /// are no longer trusted, but kept for [`Auth::lookup`]'s outage fallback).
    pub fn set_listening(&self, on: bool) {
        self.listening.store(on, Ordering::SeqCst);
        if on {
            self.invalidate();
        }
    }

    /// The principal for a request to `path` carrying `authorization` header `header`.
    pub async fn authorize(&self, path: &str, header: Option<&str>) -> Result<Principal, Status> {
        let Some(rule) = rule_for(path) else {
            return Err(Status::permission_denied(format!(
                "{path}: no access rule for this method, so it is refused"
            )));
        };
        if !self.enabled {
            return Ok(Principal::unrestricted());
        }
        if self.open.contains(path) {
            return Ok(Principal(Identity::Anonymous));
        }
        let Some(header) = header else {
            return Err(Status::unauthenticated(
                "no token: send the header `authorization: Bearer <token>` \
                 (droverctl: --token, DROVER_TOKEN or DROVER_TOKEN_FILE)",
            ));
        };
        let Some(token) = bearer(header) else {
            return Err(Status::unauthenticated(
                "authorization: expected `Bearer drover_` followed by 64 hex digits",
            ));
        };
        let principal = self
            .lookup(token, rule.right == Right::Read)
            .await
            .map_err(Status::from)?
            .ok_or_else(|| Status::unauthenticated("token is unknown, revoked or expired"))?;
        if !principal.has(rule.right) {
            return Err(Status::permission_denied(format!(
                "token {:?} (role {}) lacks the right {:?} that {path} needs",
                principal.name(),
                principal.role(),
                rule.right.as_str()
            )));
        }
        Ok(principal)
    }

    /// [`Auth::authorize`] for the HTTP listener, which also accepts the dashboard's
    /// session cookie. A mutating request authenticated by cookie (ambient credentials a
    /// browser sends on its own) must carry the session's CSRF token in [`CSRF_HEADER`];
    /// with access control off, any such header (a cross-site form cannot set one).
    /// Returns the principal and the session it came from, if any.
    pub async fn authorize_http(
        &self,
        path: &str,
        header: Option<&str>,
        session: Option<&str>,
        csrf: Option<&str>,
    ) -> Result<(Principal, Option<crate::store::SessionRow>), Status> {
        let Some(rule) = rule_for(path) else {
            return Err(Status::permission_denied(format!(
                "{path}: no access rule for this route, so it is refused"
            )));
        };
        if PUBLIC_ROUTES.contains(&path) {
            return Ok((Principal(Identity::Anonymous), None));
        }
        if header.is_some() {
            return self.authorize(path, header).await.map(|p| (p, None));
        }
        let csrf = csrf.unwrap_or("");
        if !self.enabled {
            if rule.mutating && csrf.is_empty() {
                return Err(Status::permission_denied(format!(
                    "{path} changes something: send the {CSRF_HEADER} header the dashboard \
                     sends (or authenticate with a bearer token)"
                )));
            }
            return Ok((Principal::unrestricted(), None));
        }
        let Some(secret) = session else {
            return self.authorize(path, None).await.map(|p| (p, None));
        };
        let row = self
            .store
            .session_by_hash(&hash_token(secret))
            .await
            .map_err(Status::from)?
            .filter(|s| s.expires_at > Utc::now())
            .ok_or_else(|| Status::unauthenticated("session expired or unknown: log in again"))?;
        if rule.mutating
            && (csrf.is_empty() || !bool::from(row.csrf.as_bytes().ct_eq(csrf.as_bytes())))
        {
            return Err(Status::permission_denied(
                "the CSRF token does not match this session: reload the page",
            ));
        }
        let principal = live(&row.token)
            .ok_or_else(|| Status::unauthenticated("token is unknown, revoked or expired"))?;
        if !principal.has(rule.right) {
            return Err(Status::permission_denied(format!(
                "token {:?} (role {}) lacks the right {:?} that {path} needs",
                principal.name(),
                principal.role(),
                rule.right.as_str()
            )));
        }
        Ok((principal, Some(row)))
    }

    /// A token's principal for logging in to the dashboard.
    pub async fn login(&self, token: &str) -> Result<(Principal, Uuid), Status> {
        let principal = self
            .lookup(token, false)
            .await
            .map_err(Status::from)?
            .ok_or_else(|| Status::unauthenticated("token is unknown, revoked or expired"))?;
        if !principal.has(Right::Read) {
            return Err(Status::permission_denied(format!(
                "token {:?} (role {}) may not read, so it cannot use the dashboard",
                principal.name(),
                principal.role()
            )));
        }
        let id = principal
            .token_id()
            .ok_or_else(|| Status::internal("token without an id"))?;
        Ok((principal, id))
    }

    /// The token's principal, if it is live. With `outage_fallback`, a database outage
    /// answers from the last row seen, however old (expiry still checked): only a
    /// revocation (which needs the database) or a reconnect of the revocation listener
    /// forgets rows, so health can still be read while PostgreSQL is down.
    async fn lookup(&self, token: &str, outage_fallback: bool) -> Result<Option<Principal>, Error> {
        let hash = hash_token(token);
        let caching = !self.cache_ttl.is_zero() && self.listening.load(Ordering::SeqCst);
        if caching {
            if let Ok(c) = self.cache.lock() {
                if let Some(hit) = c.get(&hash) {
                    if hit.at.elapsed() < self.cache_ttl {
                        return Ok(live(&hit.row));
                    }
                }
            }
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let row = match self.store.token_by_hash(&hash).await {
            Ok(row) => row,
            Err(e) if outage_fallback && e.kind() == crate::error::ErrorKind::Unavailable => {
                let seen = self
                    .cache
                    .lock()
                    .ok()
                    .and_then(|c| c.get(&hash).map(|hit| live(&hit.row)));
                return match seen {
                    Some(p) => Ok(p),
                    None => Err(e),
                };
            }
            Err(e) => return Err(e),
        };
        let Some(row) = row else {
            return Ok(None);
        };
        // The lookup was by hash already; this keeps the final comparison constant-time.
        if !bool::from(row.token_hash.as_slice().ct_eq(&hash)) {
            return Ok(None);
        }
        let now = Utc::now();
        if row.revoked_at.is_none() && row.last_used_at.is_none_or(|t| now - t > TOUCH_EVERY) {
            let store = self.store.clone();
            let id = row.id;
            tokio::spawn(async move {
                if let Err(e) = store.touch_token(id).await {
                    tracing::debug!(error = %e, "could not record token use");
                }
            });
        }
        let principal = live(&row);
        if !self.cache_ttl.is_zero() {
            if let Ok(mut c) = self.cache.lock() {
                if self.generation.load(Ordering::SeqCst) == generation {
                    if c.len() >= CACHE_MAX {
                        c.clear();
                    }
                    c.insert(
                        hash,
                        Cached {
                            row,
                            at: Instant::now(),
                        },
                    );
                }
            }
        }
        Ok(principal)
    }
}

/// The row's principal if it is neither revoked nor expired (checked on every call, cached
/// or not).
fn live(row: &TokenRow) -> Option<Principal> {
    if row.revoked_at.is_some() || row.expires_at.is_some_and(|e| e <= Utc::now()) {
        return None;
    }
    Principal::from_row(row)
}

/// Keeps the token cache honest: LISTENs for revocations from any coordinator (or the
/// offline CLI) and empties the cache on each, and whenever the connection is lost.
pub async fn follow_revocations(
    database_url: String,
    auth: Arc<Auth>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use futures::StreamExt;
    use tokio_postgres::AsyncMessage;
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        if let Ok((client, mut conn)) =
            tokio_postgres::connect(&database_url, tokio_postgres::NoTls).await
        {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
            let driver = tokio::spawn(async move {
                let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                while let Some(m) = messages.next().await {
                    match m {
                        Ok(AsyncMessage::Notification(_)) => {
                            if tx.send(()).is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            });
            if client
                .batch_execute(&format!("LISTEN {TOKENS_CHANNEL}"))
                .await
                .is_ok()
            {
                backoff = Duration::from_millis(200);
                auth.set_listening(true);
                loop {
                    tokio::select! {
                        m = rx.recv() => match m {
                            Some(()) => auth.invalidate(),
                            None => break,
                        },
                        _ = shutdown.cancelled() => break,
                    }
                }
                auth.set_listening(false);
            }
            driver.abort();
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The gRPC side: a tower-http async authorizer in front of every service.
#[derive(Clone)]
pub struct GrpcAuth(pub Arc<Auth>);

impl<B: Send + 'static> tower_http::auth::AsyncAuthorizeRequest<B> for GrpcAuth {
    type RequestBody = B;
    type ResponseBody = tonic::body::Body;
    type Future = BoxFuture<'static, Result<http::Request<B>, http::Response<tonic::body::Body>>>;

    fn authorize(&mut self, mut req: http::Request<B>) -> Self::Future {
        let auth = self.0.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let header = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match auth.authorize(&path, header.as_deref()).await {
                Ok(p) => {
                    req.extensions_mut().insert(p);
                    Ok(req)
                }
                Err(status) => {
                    let peer = req
                        .extensions()
                        .get::<tonic::transport::server::TcpConnectInfo>()
                        .and_then(|i| i.remote_addr())
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    audit_refusal(&auth, &path, header.as_deref(), &peer, &status).await;
                    Err(status.into_http())
                }
            }
        })
    }
}

/// A refused call to a mutating method by a known token is audited (unknown callers are
/// not: they would let anyone fill the table).
async fn audit_refusal(auth: &Auth, path: &str, header: Option<&str>, peer: &str, status: &Status) {
    if status.code() != tonic::Code::PermissionDenied || !rule_for(path).is_some_and(|r| r.mutating)
    {
        return;
    }
    let Some(token) = header.and_then(bearer) else {
        return;
    };
    let Ok(Some(p)) = auth.lookup(token, false).await else {
        return;
    };
    crate::audit::record(
        &auth.store,
        &p,
        peer,
        path,
        "",
        crate::audit::outcome_of_status(status),
    );
}

/// A cookie's value from a request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The HTTP side: axum middleware on the matched routes. Puts the [`Principal`] (and the
/// dashboard session, if the request came with one) in the request's extensions.
pub async fn http_middleware(
    axum::extract::State(auth): axum::extract::State<Arc<Auth>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    // A method-specific rule wins over the route's.
    let with_method = format!("{} {route}", req.method());
    let path = if HTTP_RULES.iter().any(|(p, _)| *p == with_method) {
        with_method
    } else {
        route.clone()
    };
    let h = req.headers();
    let header = h
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let session = cookie(h, SESSION_COOKIE).map(str::to_owned);
    let csrf = h
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let result = auth
        .authorize_http(
            &path,
            header.as_deref(),
            session.as_deref(),
            csrf.as_deref(),
        )
        .await;
    match result {
        Ok((p, s)) => {
            req.extensions_mut().insert(p);
            if let Some(s) = s {
                req.extensions_mut().insert(s);
            }
            next.run(req).await
        }
        Err(s) => {
            // A person opening a dashboard page without a session goes to the login form.
            if s.code() == tonic::Code::Unauthenticated
                && route.starts_with("/ui")
                && req.method() == http::Method::GET
                && path != "/ui/events"
            {
                return axum::response::Redirect::to("/ui/login").into_response();
            }
            if s.code() == tonic::Code::PermissionDenied
                && rule_for(&path).is_some_and(|r| r.mutating)
            {
                if let Some(p) = match (&header, &session) {
                    (Some(h), _) => match bearer(h) {
                        Some(t) => auth.lookup(t, false).await.ok().flatten(),
                        None => None,
                    },
                    (None, Some(sess)) => auth
                        .store
                        .session_by_hash(&hash_token(sess))
                        .await
                        .ok()
                        .flatten()
                        .and_then(|r| live(&r.token)),
                    _ => None,
                } {
                    let peer = req
                        .extensions()
                        .get::<axum::extract::ConnectInfo<crate::http::PeerAddr>>()
                        .map(|c| c.0 .0.to_string())
                        .unwrap_or_default();
                    crate::audit::record(
                        &auth.store,
                        &p,
                        &peer,
                        &path,
                        "",
                        crate::audit::outcome_of_status(&s),
                    );
                }
            }
            let code = crate::api::http_status(s.code());
            let mut resp = if route.starts_with("/api/") {
                crate::api::ApiError(s).into_response()
            } else {
                (code, format!("{}\n", s.message())).into_response()
            };
            if code == http::StatusCode::UNAUTHORIZED {
                resp.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer"),
                );
            }
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// Every method in the served descriptors has a rule, and every rule a method.
    #[test]
    fn every_grpc_method_has_exactly_one_rule() {
        let mut served = Vec::new();
        for fds in [
            drover_proto::v1::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let set = prost_types::FileDescriptorSet::decode(fds).unwrap();
            for f in set.file {
                for s in &f.service {
                    for m in &s.method {
                        served.push(format!("/{}.{}/{}", f.package(), s.name(), m.name()));
                    }
                }
            }
        }
        served.push("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".into());
        for m in &served {
            assert_eq!(
                GRPC_RULES.iter().filter(|(p, _)| p == m).count(),
                1,
                "{m} needs exactly one rule in GRPC_RULES"
            );
        }
        for (p, _) in GRPC_RULES {
            assert!(served.iter().any(|m| m == p), "rule for unknown method {p}");
        }
    }

    fn token(role: Role, queues: &[&str], pattern: &str) -> Principal {
        Principal(Identity::Token {
            id: Uuid::nil(),
            name: "t".into(),
            role,
            queues: queues.iter().map(|q| q.to_string()).collect(),
            worker_pattern: pattern.into(),
        })
    }

    #[test]
    fn worker_binding_and_queue_scope() {
        let w = token(Role::Worker, &[], "w-*");
        assert!(w.check_worker("w-1").is_ok());
        assert!(w.check_worker("x-1").is_err());
        // Other roles may not act as any worker; access control off may act as all.
        assert!(token(Role::Admin, &[], "").check_worker("w-1").is_err());
        assert!(Principal(Identity::Anonymous).check_worker("w-1").is_err());
        assert!(Principal::unrestricted().check_worker("anything").is_ok());

        let op = token(Role::Operator, &["a"], "");
        assert!(op.check_queue("a").is_ok());
        assert!(op.check_queue("b").is_err());
        assert!(token(Role::Operator, &[], "").check_queue("b").is_ok());
        assert!(Principal::unrestricted().has(Right::Admin));
        assert!(!Principal(Identity::Anonymous).has(Right::Read));
    }

    #[test]
    fn open_routes_are_read_only() {
        for r in DEFAULT_OPEN_ROUTES {
            assert_eq!(check_open_route(r), Ok(()));
        }
        assert!(check_open_route("/drover.v1.AdminService/CreateToken").is_err());
        assert!(check_open_route("/nope").is_err());
    }

    #[test]
    fn tokens_are_random_and_well_formed() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        assert!(drover_core::auth::is_token_form(&a));
        assert_eq!(hash_token(&a), hash_token(&a));
        assert_ne!(hash_token(&a), hash_token(&b));
    }
}
