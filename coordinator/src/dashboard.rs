//! The web dashboard: server-rendered pages on the HTTP listener, a small script of our
//! own (`dashboard.js`, embedded) and live updates over server-sent events.
//!
//! Reads go through the same service methods as gRPC (see [`crate::api`]); actions are
//! the page's script calling the JSON API with the session's CSRF token. Live updates
//! come from the coordinator's one LISTEN connection ([`crate::listen`]): its
//! notifications fan out over broadcast channels to every open page, and the header is
//! computed once for all of them by [`run_header`], never per tab.

use crate::api::{ApiError, Caller};
use crate::auth::{Principal, SESSION_COOKIE};
use crate::http::HttpState;
use crate::store::SessionRow;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use drover_core::auth::Right;
use drover_proto::v1 as pb;
use drover_proto::v1::admin_service_server::AdminService;
use drover_proto::v1::alert_service_server::AlertService;
use drover_proto::v1::job_service_server::JobService;
use drover_proto::v1::queue_service_server::QueueService;
use futures::Stream;
use prost::Message;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");
/// How long a dashboard session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Chunks (of at most 64 KiB) sent per log page: the viewer opens at the tail and reads
/// back a page at a time, so a 100 MB log costs at most ~2 MiB to open.
const LOG_PAGE_CHUNKS: i64 = 32;
/// The first page (the tail) is smaller still: the first lines show sooner.
const LOG_TAIL_CHUNKS: i64 = 8;
/// The header is recomputed at most this often, however many pages are open.
const HEADER_EVERY: Duration = Duration::from_secs(1);
/// ... and at least this often while any page is open (workers come and go silently).
const HEADER_REFRESH: Duration = Duration::from_secs(10);

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/jobs") }))
        .route("/ui", get(|| async { Redirect::to("/ui/jobs") }))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/static/dashboard.js", get(script))
        .route("/ui/static/dashboard.css", get(style))
        .route("/ui/jobs", get(jobs_page))
        .route("/ui/jobs/{id}", get(job_page))
        .route("/ui/jobs/{id}/log", get(log_page))
        .route("/ui/workers", get(workers_page))
        .route("/ui/queues", get(queues_page))
        .route("/ui/failures", get(failures_page))
        .route("/ui/events", get(events))
        .route("/api/v1/jobs/{id}/log", get(log_json))
        .route("/api/v1/jobs/{id}/log/follow", get(log_follow))
}

// ------------------------------------------------------------------ live header

/// The header every page shows, rendered once per change for all open pages.
pub struct LiveHeader {
    tx: watch::Sender<Arc<String>>,
    /// When the header was last rendered.
    at: std::sync::Mutex<std::time::Instant>,
}

impl LiveHeader {
    pub fn new() -> Arc<LiveHeader> {
        Arc::new(LiveHeader {
            tx: watch::channel(Arc::new(String::new())).0,
            at: std::sync::Mutex::new(std::time::Instant::now()),
        })
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<String>> {
        self.tx.subscribe()
    }

    fn publish(&self, html: String) {
        if let Ok(mut at) = self.at.lock() {
            *at = std::time::Instant::now();
        }
        self.tx.send_if_modified(|old| {
            let changed = **old != html;
            if changed {
                *old = Arc::new(html);
            }
            changed
        });
    }

    /// The header for a page being rendered: the shared one, unless no page was open to
    /// keep it current (then it is rendered now, once, for everyone).
    pub async fn current(&self, admin: &crate::health::AdminApi) -> Arc<String> {
        let stale = self
            .at
            .lock()
            .map(|at| at.elapsed() > HEADER_REFRESH)
            .unwrap_or(true);
        if stale {
            self.publish(header_html(&admin.health().await));
        }
        self.tx.borrow().clone()
    }
}

/// Keeps the header current while pages are open: on job notifications (at most once a
/// [`HEADER_EVERY`]) and every [`HEADER_REFRESH`].
pub async fn run_header(
    live: Arc<LiveHeader>,
    admin: Arc<crate::health::AdminApi>,
    watch: Arc<crate::log_watch::LogWatch>,
    shutdown: CancellationToken,
) {
    let mut jobs = watch.subscribe_jobs();
    let mut logs = watch.subscribe();
    live.tx
        .send_replace(Arc::new(header_html(&admin.health().await)));
    loop {
        let refresh = tokio::time::sleep(HEADER_REFRESH);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = jobs.recv() => {}
            _ = logs.recv() => {}
            _ = refresh => {}
        }
        // Coalesce a burst: what arrives meanwhile is covered by the render below; what
        // arrives during the render wakes the next round.
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(HEADER_EVERY) => {}
        }
        while !matches!(
            jobs.try_recv(),
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
        ) {}
        while !matches!(
            logs.try_recv(),
            Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)
        ) {}
        if live.tx.receiver_count() > 0 {
            live.publish(header_html(&admin.health().await));
        }
    }
}

fn header_html(h: &pb::GetHealthResponse) -> String {
    let n = |s: &str| h.jobs_by_state.get(s).copied().unwrap_or(0);
    let reasons = if h.reasons.is_empty() {
        String::new()
    } else {
        format!(" <span class=reasons>{}</span>", esc(&h.reasons.join("; ")))
    };
    format!(
        "<span class=\"health {st}\" id=health>{st}</span>{reasons} \
         <span>workers <b id=workers-alive>{alive}</b></span> \
         <span>pending <b id=pending>{pending}</b></span> \
         <span>running <b id=running>{running}</b></span> \
         <span>database <b id=db class={dbc}>{db}</b></span>",
        st = esc(drover_proto::v1::HealthStatus::name_of(h.status)),
        alive = h.workers_alive,
        pending = n("pending"),
        running = n("running"),
        dbc = if h.database_ok { "ok" } else { "failing" },
        db = if h.database_ok { "ok" } else { "unreachable" },
    )
}

// ------------------------------------------------------------------ helpers

/// HTML-escapes text for element content and quoted attributes.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes a query value.
fn qv(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

fn secs(t: &Option<prost_types::Timestamp>) -> Option<f64> {
    t.as_ref()
        .map(|t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
}

fn job_state(s: i32) -> &'static str {
    match pb::JobState::try_from(s).unwrap_or(pb::JobState::Unspecified) {
        pb::JobState::Unspecified => "unknown",
        pb::JobState::Pending => "pending",
        pb::JobState::Running => "running",
        pb::JobState::Succeeded => "succeeded",
        pb::JobState::PermanentFailed => "permanent_failed",
        pb::JobState::Cancelled => "cancelled",
    }
}

fn attempt_state(s: i32) -> String {
    pb::AttemptState::try_from(s)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("ATTEMPT_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

fn badge(state: &str) -> String {
    format!("<span class=\"badge {state}\">{state}</span>")
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn terminal(state: i32) -> bool {
    matches!(
        pb::JobState::try_from(state),
        Ok(pb::JobState::Succeeded | pb::JobState::PermanentFailed | pb::JobState::Cancelled)
    )
}

/// What a page needs to know about its viewer.
struct Viewer {
    principal: Principal,
    csrf: String,
}

impl Viewer {
    fn from(principal: &Principal, session: Option<&SessionRow>) -> Viewer {
        Viewer {
            principal: principal.clone(),
            csrf: session
                .map(|s| s.csrf.clone())
                .unwrap_or_else(|| "-".into()),
        }
    }

    fn can_operate(&self) -> bool {
        self.principal.has(Right::Operate)
    }
}

/// An error page with the status the API would give.
fn error_page(e: ApiError) -> Response {
    let code = crate::api::http_status(e.0.code());
    (
        code,
        Html(format!(
            "<!doctype html><meta charset=utf-8><title>Error</title>\
             <link rel=stylesheet href=\"/ui/static/dashboard.css\">\
             <main><h1>{}</h1><p class=error>{}</p><p><a href=\"/ui/jobs\">Jobs</a></p></main>",
            code,
            esc(e.0.message())
        )),
    )
        .into_response()
}

async fn page(s: &HttpState, v: &Viewer, title: &str, name: &str, body: &str) -> Response {
    let header = s.live.current(&s.admin).await;
    let who = if v.principal.name().is_empty() {
        "access control off".to_string()
    } else {
        format!("{} ({})", v.principal.name(), v.principal.role())
    };
    let logout = if v.principal.token_id().is_some() {
        "<button id=logout type=button>Log out</button>"
    } else {
        ""
    };
    let nav = [
        ("jobs", "/ui/jobs", "Jobs"),
        ("workers", "/ui/workers", "Workers"),
        ("queues", "/ui/queues", "Queues"),
        ("failures", "/ui/failures", "Failures"),
    ]
    .iter()
    .map(|(n, href, label)| {
        let cur = if *n == name { " class=current" } else { "" };
        format!("<a href=\"{href}\"{cur}>{label}</a>")
    })
    .collect::<Vec<_>>()
    .join(" ");
    let html = format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width\">\
         <title>{title} · Drover</title>\
         <meta name=csrf content=\"{csrf}\">\
         <link rel=stylesheet href=\"/ui/static/dashboard.css\">\
         <script src=\"/ui/static/dashboard.js\" defer></script></head>\
         <body data-page=\"{name}\" data-can-operate=\"{op}\">\
         <div class=top><b class=brand>Drover</b><div id=hdr>{header}</div>\
         <span id=live class=off title=\"live updates\">live</span></div>\
         <nav>{nav}<span class=who>{who}</span>{logout}</nav>\
         <main>{body}</main></body></html>",
        title = esc(title),
        csrf = esc(&v.csrf),
        op = v.can_operate(),
        who = esc(&who),
    );
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

// ------------------------------------------------------------------ login

async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
        .into_response()
}

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
        .into_response()
}

fn login_html(message: &str) -> String {
    let msg = if message.is_empty() {
        String::new()
    } else {
        format!("<p class=error id=login-error>{}</p>", esc(message))
    };
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>Log in · Drover</title>\
         <link rel=stylesheet href=\"/ui/static/dashboard.css\"></head><body>\
         <main class=login><h1>Drover</h1>{msg}\
         <form method=post action=\"/ui/login\">\
         <label>Token <input type=password name=token id=token autocomplete=off \
          placeholder=\"drover_…\" required maxlength=200></label> \
         <button type=submit id=login>Log in</button></form>\
         <p class=hint>Create one with <code>droverctl token create --name NAME --role viewer</code>.</p>\
         </main></body></html>"
    )
}

async fn login_form(State(s): State<HttpState>) -> Response {
    if !s.auth.enabled {
        return Redirect::to("/ui/jobs").into_response();
    }
    Html(login_html("")).into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// Logs in with a token: a new session whose secret goes to an HttpOnly, SameSite=Strict
/// cookie (and whose hash to the database).
async fn login(State(s): State<HttpState>, c: Caller, Form(f): Form<LoginForm>) -> Response {
    if !s.auth.enabled {
        return Redirect::to("/ui/jobs").into_response();
    }
    let token = f.token.trim();
    if token.len() > 200 {
        return (StatusCode::BAD_REQUEST, Html(login_html("token: too long"))).into_response();
    }
    let (principal, token_id) = match s.auth.login(token).await {
        Ok(p) => p,
        Err(e) => {
            return (
                crate::api::http_status(e.code()),
                Html(login_html(e.message())),
            )
                .into_response()
        }
    };
    let secret = crate::auth::new_token();
    let csrf = crate::auth::new_token();
    let ttl =
        chrono::Duration::from_std(SESSION_TTL).unwrap_or_else(|_| chrono::Duration::hours(12));
    let peer = c.peer.map(|p| p.to_string()).unwrap_or_default();
    if let Err(e) = s
        .store
        .create_session(
            &crate::auth::hash_token(&secret),
            token_id,
            &csrf,
            chrono::Utc::now() + ttl,
        )
        .await
    {
        return error_page(ApiError(e.into()));
    }
    crate::audit::record(&s.store, &principal, &peer, "/ui/login", "", "ok".into());
    let secure = if s.secure_cookies { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/ui/jobs".to_string()),
        ],
    )
        .into_response()
}

async fn logout(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(secret) = crate::auth::cookie(&headers, SESSION_COOKIE) {
        if let Err(e) = s
            .store
            .delete_session(&crate::auth::hash_token(secret))
            .await
        {
            return ApiError(e.into()).into_response();
        }
    }
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
    )
        .into_response()
}

// ------------------------------------------------------------------ jobs

#[derive(Deserialize, Default)]
#[serde(default)]
struct JobsQuery {
    state: String,
    queue: String,
    label: String,
    /// `name=value`
    param: String,
    /// Created at or after / before, `YYYY-MM-DDTHH:MM` in UTC (a datetime-local input)
    /// or RFC 3339.
    from: String,
    to: String,
    page_token: String,
    page_size: u32,
}

/// A time filter's value: empty means none.
fn parse_time(field: &str, s: &str) -> Result<Option<prost_types::Timestamp>, ApiError> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let t = chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M")
        .map(|n| n.and_utc())
        .or_else(|_| chrono::DateTime::parse_from_rfc3339(s).map(|d| d.to_utc()))
        .map_err(|_| {
            ApiError(tonic::Status::invalid_argument(format!(
                "{field}: expected YYYY-MM-DDTHH:MM (UTC) or an RFC 3339 time, got {s:?}"
            )))
        })?;
    Ok(Some(prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }))
}

async fn jobs_page(
    State(s): State<HttpState>,
    c: Caller,
    session: Option<Extension<SessionRow>>,
    Query(q): Query<JobsQuery>,
) -> Response {
    let v = Viewer::from(&c.principal, session.as_ref().map(|e| &e.0));
    let state = if q.state.is_empty() {
        0
    } else {
        match serde_json::from_value::<pb::ListJobsRequest>(serde_json::json!({"state": q.state})) {
            Ok(r) => r.state,
            Err(e) => {
                return error_page(ApiError(tonic::Status::invalid_argument(format!(
                    "state: {e}"
                ))))
            }
        }
    };
    let (created_after, created_before) =
        match (parse_time("from", &q.from), parse_time("to", &q.to)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => return error_page(e),
        };
    let req = pb::ListJobsRequest {
        state,
        queue: q.queue.clone(),
        page_size: if q.page_size == 0 { 50 } else { q.page_size },
        page_token: q.page_token.clone(),
        label: q.label.trim().to_string(),
        param: q.param.trim().to_string(),
        created_after,
        created_before,
    };
    let svc = &*s.services.jobs;
    let list = match c.call(req, |r| svc.list_jobs(r)).await {
        Ok(l) => l,
        Err(e) => return error_page(e),
    };
    let states = [
        "",
        "pending",
        "running",
        "succeeded",
        "permanent_failed",
        "cancelled",
    ];
    let options = states
        .iter()
        .map(|st| {
            let sel = if *st == q.state { " selected" } else { "" };
            let label = if st.is_empty() { "any state" } else { st };
            format!("<option value=\"{st}\"{sel}>{label}</option>")
        })
        .collect::<String>();
    let mut body = format!(
        "<h1>Jobs</h1><form class=filters method=get action=\"/ui/jobs\">\
         <label>State <select name=state id=f-state>{options}</select></label> \
         <label>Queue <input name=queue id=f-queue value=\"{queue}\" maxlength=64></label> \
         <label>Label <input name=label id=f-label value=\"{label}\" maxlength=64></label> \
         <label>Param <input name=param id=f-param value=\"{param}\" maxlength=1100 \
          placeholder=\"name=value\"></label> \
         <label>Created from <input type=datetime-local name=from id=f-from value=\"{from}\"></label> \
         <label>to <input type=datetime-local name=to id=f-to value=\"{to}\"></label> (UTC) \
         <button type=submit id=filter>Filter</button></form>",
        label = esc(&q.label),
        param = esc(&q.param),
        from = esc(&q.from),
        to = esc(&q.to),
        queue = esc(&q.queue),
    );
    if v.can_operate() {
        let bulk_states = ["permanent_failed", "cancelled", "succeeded"]
            .iter()
            .map(|st| {
                let sel = if *st == q.state { " selected" } else { "" };
                format!("<option value=\"{st}\"{sel}>{st}</option>")
            })
            .collect::<String>();
        let _ = write!(
            body,
            "<details class=bulk><summary>Bulk retry</summary>\
             <label>State <select id=bulk-state>{bulk_states}</select></label> \
             <label>Queue <input id=bulk-queue value=\"{queue}\" maxlength=64 placeholder=\"any\"></label> \
             <label>Finished within (minutes) <input id=bulk-within type=number min=0 value=0></label> \
             <button type=button id=bulk-preview>Preview</button>\
             <div id=bulk-result></div></details>",
            queue = esc(&q.queue),
        );
    }
    body.push_str(&jobs_table(&list.jobs, &v));
    if !list.next_page_token.is_empty() {
        let _ = write!(
            body,
            "<p><a id=next-page href=\"/ui/jobs?state={}&queue={}&label={}&param={}&from={}&to={}&page_token={}\">Older jobs →</a></p>",
            qv(&q.state),
            qv(&q.queue),
            qv(&q.label),
            qv(&q.param),
            qv(&q.from),
            qv(&q.to),
            qv(&list.next_page_token)
        );
    }
    page(&s, &v, "Jobs", "jobs", &body).await
}

fn jobs_table(jobs: &[pb::Job], v: &Viewer) -> String {
    let mut t = String::from(
        "<table id=jobs class=list><thead><tr><th>Job</th><th>Queue</th><th>Command</th>\
         <th>State</th><th>Attempts</th><th>Created</th><th>Finished</th><th>Reason</th>\
         <th></th></tr></thead><tbody>",
    );
    for j in jobs {
        let spec = j.spec.clone().unwrap_or_default();
        let argv = spec.argv.join(" ");
        let short: String = argv.chars().take(80).collect();
        let st = job_state(j.state);
        let mut actions = String::new();
        if v.can_operate() {
            if terminal(j.state) {
                let _ = write!(
                    actions,
                    "<button type=button class=retry data-job=\"{}\">Retry</button>",
                    esc(&j.id)
                );
            } else {
                let _ = write!(
                    actions,
                    "<button type=button class=cancel data-job=\"{}\">Cancel</button>",
                    esc(&j.id)
                );
            }
        }
        let reason = if j.waiting.is_empty() {
            &j.reason
        } else {
            &j.waiting
        };
        let chain = if j.retry_of.is_empty() {
            String::new()
        } else {
            format!(
                " <span class=chain title=\"retry of {0}\">↻ <a href=\"/ui/jobs/{0}\">{1}</a></span>",
                esc(&j.retry_of),
                esc(j.retry_of.get(..8).unwrap_or(&j.retry_of))
            )
        };
        let _ = write!(
            t,
            "<tr data-job=\"{id}\" data-state=\"{st}\"><td><a href=\"/ui/jobs/{id}\">{sid}</a>{chain}</td>\
             <td>{queue}</td><td><code title=\"{argv}\">{short}</code></td><td>{badge}</td>\
             <td>{attempts}</td><td>{created}</td><td>{finished}</td><td class=reason>{reason}</td>\
             <td>{actions}</td></tr>",
            id = esc(&j.id),
            sid = esc(j.id.get(..8).unwrap_or(&j.id)),
            queue = esc(&spec.queue),
            argv = esc(&argv),
            short = esc(&short),
            badge = badge(st),
            attempts = j.attempt_count,
            created = ts(&j.created_at),
            finished = ts(&j.finished_at),
            reason = esc(reason),
        );
    }
    if jobs.is_empty() {
        t.push_str("<tr><td colspan=9 class=empty>No jobs match.</td></tr>");
    }
    t.push_str("</tbody></table>");
    t
}

async fn job_page(
    State(s): State<HttpState>,
    c: Caller,
    session: Option<Extension<SessionRow>>,
    Path(id): Path<String>,
) -> Response {
    let v = Viewer::from(&c.principal, session.as_ref().map(|e| &e.0));
    let svc = &*s.services.jobs;
    let got = match c
        .call(pb::GetJobRequest { id: id.clone() }, |r| svc.get_job(r))
        .await
    {
        Ok(g) => g,
        Err(e) => return error_page(e),
    };
    let artifacts = match c
        .call(
            pb::ListArtifactsRequest {
                job_id: id.clone(),
                ..Default::default()
            },
            |r| svc.list_artifacts(r),
        )
        .await
    {
        Ok(a) => a.artifacts,
        Err(e) => return error_page(e),
    };
    let job = got.job.unwrap_or_default();
    let spec = job.spec.clone().unwrap_or_default();
    let st = job_state(job.state);
    let jid = esc(&job.id);
    let mut b = format!(
        "<h1>Job <code>{jid}</code> {badge}</h1><div id=job data-job=\"{jid}\" data-state=\"{st}\">",
        badge = badge(st)
    );
    if v.can_operate() {
        b.push_str("<p class=actions>");
        if terminal(job.state) {
            let _ = write!(
                b,
                "<button type=button class=retry data-job=\"{jid}\">Retry</button> "
            );
        } else {
            let _ = write!(
                b,
                "<button type=button class=cancel data-job=\"{jid}\">Cancel</button> "
            );
        }
        b.push_str("</p>");
    }
    b.push_str("<div id=action-result></div>");
    let _ = write!(
        b,
        "<a class=button href=\"/ui/jobs/{jid}/log\" id=open-log>Log</a> \
         <a class=button href=\"/jobs/{jid}/logs\" id=download-log>Download log</a>"
    );
    // Spec.
    let kv = |m: &std::collections::HashMap<String, String>| {
        let sorted: BTreeMap<_, _> = m.iter().collect();
        sorted
            .iter()
            .map(|(k, v)| format!("<code>{}={}</code>", esc(k), esc(v)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let policy = spec
        .retry
        .as_ref()
        .map(|r| serde_json::to_string(r).unwrap_or_default())
        .unwrap_or_else(|| "queue defaults".into());
    let _ = write!(
        b,
        "<h2>Spec</h2><table class=kv>\
         <tr><th>Command</th><td><code id=argv>{argv}</code></td></tr>\
         <tr><th>Queue</th><td>{queue}</td></tr>\
         <tr><th>Labels</th><td>{labels}</td></tr>\
         <tr><th>Params</th><td>{params}</td></tr>\
         <tr><th>Environment</th><td>{env}</td></tr>\
         <tr><th>Timeout</th><td>{timeout}</td></tr>\
         <tr><th>Retry policy</th><td><code>{policy}</code></td></tr>\
         <tr><th>Priority</th><td>{prio}</td></tr>\
         <tr><th>Created</th><td>{created}</td></tr>\
         <tr><th>Finished</th><td>{finished}</td></tr>\
         <tr><th>Reason</th><td>{reason}</td></tr>\
         <tr><th>Waiting</th><td>{waiting}</td></tr></table>",
        argv = esc(&spec.argv.join(" ")),
        queue = esc(&spec.queue),
        labels = esc(&spec.labels.join(", ")),
        params = kv(&spec.params),
        env = kv(&spec.env),
        timeout = match drover_proto::durations::to_millis(&spec.timeout).unwrap_or(0) {
            0 => "none".to_string(),
            ms => format!("{ms} ms"),
        },
        policy = esc(&policy),
        prio = spec.priority,
        created = ts(&job.created_at),
        finished = ts(&job.finished_at),
        reason = esc(&job.reason),
        waiting = esc(&job.waiting),
    );
    // Retry chain.
    b.push_str("<h2>Retry chain</h2><ul id=chain>");
    if !job.original_job_id.is_empty() && job.original_job_id != job.retry_of {
        let _ = write!(
            b,
            "<li>original: <a href=\"/ui/jobs/{0}\">{0}</a></li>",
            esc(&job.original_job_id)
        );
    }
    if !job.retry_of.is_empty() {
        let _ = write!(
            b,
            "<li>retry of <a class=retry-of href=\"/ui/jobs/{0}\">{0}</a></li>",
            esc(&job.retry_of)
        );
    }
    for r in &got.retried_by {
        let _ = write!(
            b,
            "<li>retried by <a class=retried-by href=\"/ui/jobs/{0}\">{0}</a></li>",
            esc(r)
        );
    }
    if job.retry_of.is_empty() && got.retried_by.is_empty() {
        b.push_str("<li>none</li>");
    }
    b.push_str("</ul>");
    // Attempts as a timeline.
    b.push_str(&attempts_timeline(&job, &got.attempts));
    // Artifacts.
    b.push_str("<h2>Artifacts</h2>");
    if artifacts.is_empty() {
        b.push_str("<p class=empty>None.</p>");
    } else {
        b.push_str(
            "<table class=list id=artifacts><thead><tr><th>Name</th><th>Size</th>\
             <th>SHA-256</th><th></th></tr></thead><tbody>",
        );
        for a in &artifacts {
            let path = a.name.split('/').map(qv).collect::<Vec<_>>().join("/");
            let _ = write!(
                b,
                "<tr><td>{name}</td><td>{size}</td><td><code class=sha>{sha}</code></td>\
                 <td><a class=download href=\"/api/v1/jobs/{jid}/artifacts/{path}\" download>Download</a></td></tr>",
                name = esc(&a.name),
                size = bytes(a.size),
                sha = esc(&a.sha256),
            );
        }
        b.push_str("</tbody></table>");
    }
    // Rerun with changed params.
    if v.can_operate() && terminal(job.state) && !spec.params.is_empty() {
        b.push_str("<h2>Rerun with params</h2><form id=rerun>");
        let sorted: BTreeMap<_, _> = spec.params.iter().collect();
        for (k, val) in sorted {
            let _ = write!(
                b,
                "<label>{k} <input name=\"{k}\" value=\"{val}\"></label> ",
                k = esc(k),
                val = esc(val)
            );
        }
        let _ = write!(
            b,
            "<button type=submit data-job=\"{jid}\">Rerun</button></form>"
        );
    }
    b.push_str("</div>");
    page(&s, &v, &format!("Job {}", job.id), "jobs", &b).await
}

fn attempts_timeline(job: &pb::Job, attempts: &[pb::Attempt]) -> String {
    let mut b = String::from("<h2>Attempts</h2>");
    if attempts.is_empty() {
        b.push_str("<p class=empty>None yet.</p>");
        return b;
    }
    let now = chrono::Utc::now().timestamp() as f64;
    let start = attempts
        .iter()
        .filter_map(|a| secs(&a.started_at))
        .fold(f64::MAX, f64::min);
    let end = attempts
        .iter()
        .map(|a| secs(&a.finished_at).unwrap_or(now))
        .fold(start, f64::max)
        .max(start + 0.001);
    b.push_str(
        "<table class=list id=attempts><thead><tr><th>#</th><th>Worker</th><th>Started</th>\
         <th>Duration</th><th class=bar-col>Timeline</th><th>Outcome</th><th>Exit</th>\
         <th>Reason</th><th>Peak memory</th><th>CPU</th><th></th></tr></thead><tbody>",
    );
    for a in attempts {
        let s0 = secs(&a.started_at).unwrap_or(start);
        let s1 = secs(&a.finished_at).unwrap_or(now);
        let left = (s0 - start) / (end - start) * 100.0;
        let width = ((s1 - s0) / (end - start) * 100.0).max(0.5);
        let state = attempt_state(a.state);
        let exit = match (a.exit_code, a.signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("signal {s}"),
            _ => String::new(),
        };
        let _ = write!(
            b,
            "<tr><td>{n}</td><td>{worker}</td><td>{started}</td><td>{dur:.1} s</td>\
             <td class=bar-col><div class=bar><span class=\"seg {state}\" style=\"left:{left:.2}%;width:{width:.2}%\"></span></div></td>\
             <td>{badge}</td><td>{exit}</td><td class=reason>{reason}</td><td>{rss}</td><td>{cpu}</td>\
             <td><a href=\"/ui/jobs/{jid}/log?attempt={n}\">log</a></td></tr>",
            n = a.number,
            worker = esc(&a.worker_id),
            started = ts(&a.started_at),
            dur = s1 - s0,
            badge = badge(&state),
            reason = esc(&a.reason),
            rss = if a.peak_rss_bytes > 0 {
                bytes(a.peak_rss_bytes)
            } else {
                String::new()
            },
            cpu = match &a.cpu_time {
                Some(_) => format!(
                    "{:.1} s",
                    drover_proto::durations::or_zero(&a.cpu_time).as_secs_f64()
                ),
                None => String::new(),
            },
            jid = esc(&job.id),
        );
    }
    b.push_str("</tbody></table>");
    b
}

// ------------------------------------------------------------------ logs

#[derive(Deserialize, Default)]
#[serde(default)]
struct LogQuery {
    attempt: u32,
    /// Chunks before this seq (0: from the end).
    before: i64,
    /// Chunks after this seq (follow).
    after: i64,
}

async fn log_page(
    State(s): State<HttpState>,
    c: Caller,
    session: Option<Extension<SessionRow>>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Response {
    let v = Viewer::from(&c.principal, session.as_ref().map(|e| &e.0));
    let svc = &*s.services.jobs;
    let got = match c
        .call(pb::GetJobRequest { id: id.clone() }, |r| svc.get_job(r))
        .await
    {
        Ok(g) => g,
        Err(e) => return error_page(e),
    };
    let job = got.job.unwrap_or_default();
    let jid = esc(&job.id);
    let current = if q.attempt == 0 {
        got.attempts.last().map(|a| a.number).unwrap_or(0)
    } else {
        q.attempt
    };
    let mut b = format!(
        "<h1>Log of <a href=\"/ui/jobs/{jid}\"><code>{jid}</code></a> {badge}</h1>\
         <div class=toolbar><span>Attempt:",
        badge = badge(job_state(job.state))
    );
    for a in &got.attempts {
        let cur = if a.number == current {
            " class=current"
        } else {
            ""
        };
        let _ = write!(
            b,
            " <a{cur} href=\"/ui/jobs/{jid}/log?attempt={n}\">{n}</a>",
            n = a.number
        );
    }
    let actions = if v.can_operate() && !terminal(job.state) {
        format!(" <button type=button class=cancel data-job=\"{jid}\">Cancel</button>")
    } else {
        String::new()
    };
    let _ = write!(
        b,
        "</span> <label><input type=checkbox id=follow checked> Follow</label> \
         <input id=search type=search placeholder=\"Search\"> \
         <input id=jump type=number min=1 placeholder=\"Line\"> \
         <a class=button id=download href=\"/jobs/{jid}/logs?attempt={current}\" download>Download</a>{actions}\
         <span id=log-status></span></div>\
         <button type=button id=earlier hidden>Load earlier output</button>\
         <pre id=log data-job=\"{jid}\" data-attempt=\"{current}\"></pre>"
    );
    page(&s, &v, &format!("Log {}", job.id), "log", &b).await
}

/// The attempt a log request names (default: the latest), checking the caller may read
/// the job (through GetJob, so queue scopes and errors are the API's); the attempt comes
/// from the same answer, with its id parsed.
async fn log_attempt(
    s: &HttpState,
    c: &Caller,
    id: &str,
    attempt: u32,
) -> Result<(pb::Job, pb::Attempt, Uuid), ApiError> {
    let svc = &*s.services.jobs;
    let got = c
        .call(pb::GetJobRequest { id: id.to_string() }, |r| svc.get_job(r))
        .await?;
    let job = got.job.unwrap_or_default();
    let a = if attempt == 0 {
        got.attempts.into_iter().max_by_key(|a| a.number)
    } else {
        got.attempts.into_iter().find(|a| a.number == attempt)
    };
    let a = a.ok_or_else(|| {
        ApiError(tonic::Status::not_found(if attempt == 0 {
            format!("job {} has not started yet: no log", job.id)
        } else {
            format!("attempt: job {} has no attempt {attempt}", job.id)
        }))
    })?;
    let attempt_id = Uuid::parse_str(&a.id)
        .map_err(|_| ApiError(tonic::Status::internal("attempt id is not a UUID")))?;
    Ok((job, a, attempt_id))
}

fn stream_name(s: i16) -> &'static str {
    if i32::from(s) == pb::LogStream::Stderr as i32 {
        "stderr"
    } else {
        "stdout"
    }
}

/// One page of an attempt's log, read from the end: `{chunks: [{seq, stream, data (base64)}],
/// more_before, ...}`. Gaps the size cap made carry a `marker` chunk.
async fn log_json(
    State(s): State<HttpState>,
    c: Caller,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (job, a, attempt_id) = log_attempt(&s, &c, &id, q.attempt).await?;
    let before = if q.before <= 0 { i64::MAX } else { q.before };
    let chunks = s
        .store
        .read_logs_before(
            attempt_id,
            before,
            if q.before <= 0 {
                LOG_TAIL_CHUNKS
            } else {
                LOG_PAGE_CHUNKS
            },
        )
        .await
        .map_err(|e| ApiError(e.into()))?;
    let marker = drover_core::logcap::marker(a.log_dropped_bytes, s.log_cap_bytes);
    let mut out = Vec::with_capacity(chunks.len() + 1);
    let mut prev: Option<i64> = None;
    for ch in &chunks {
        if prev.is_some_and(|p| ch.seq > p + 1) {
            out.push(serde_json::json!({"seq": ch.seq - 1, "stream": "marker", "text": marker}));
        }
        prev = Some(ch.seq);
        out.push(serde_json::json!({
            "seq": ch.seq,
            "stream": stream_name(ch.stream),
            "data": drover_proto::jsonfmt::bytes::encode(&ch.data),
        }));
    }
    // A gap between this page and the one after it (read before).
    if let Some(last) = chunks.last() {
        if q.before > 0 && last.seq < q.before - 1 {
            out.push(serde_json::json!({"seq": last.seq + 1, "stream": "marker", "text": marker}));
        }
    }
    let first = chunks.first().map(|c| c.seq).unwrap_or(0);
    let more_before = match chunks.first() {
        Some(c) => !s
            .store
            .read_logs_before(attempt_id, c.seq, 1)
            .await
            .map_err(|e| ApiError(e.into()))?
            .is_empty(),
        None => false,
    };
    Ok(Json(serde_json::json!({
        "job_id": job.id,
        "attempt": a.number,
        "state": job_state(job.state),
        "log_bytes": a.log_bytes,
        "dropped_bytes": a.log_dropped_bytes,
        "logs_purged": a.logs_purged,
        "first_seq": first,
        "last_seq": chunks.last().map(|c| c.seq).unwrap_or(-1),
        "more_before": more_before,
        "chunks": out,
    })))
}

/// Follows an attempt's log as server-sent events: `chunk` events (JSON `{seq, stream,
/// data}` with the bytes in base64, `marker` where the cap dropped output), then `end` once the attempt is over
/// and everything stored was sent. Counted against the client's log stream limit.
async fn log_follow(
    State(s): State<HttpState>,
    c: Caller,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let (job, _, attempt_id) = log_attempt(&s, &c, &id, q.attempt).await?;
    let job_id = Uuid::parse_str(&job.id)
        .map_err(|_| ApiError(tonic::Status::internal("job id is not a UUID")))?;
    let slot = s
        .dispatcher
        .logs
        .open_stream(c.peer.map(|p| p.ip()), s.max_log_streams)
        .map_err(|open| {
            ApiError(tonic::Status::resource_exhausted(format!(
                "this client already has {open} log streams open; the limit is {} \
                 (max_log_streams_per_client): close some first",
                s.max_log_streams
            )))
        })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(4);
    let store = s.store.clone();
    let watch = s.dispatcher.logs.clone();
    let cap = s.log_cap_bytes;
    let after = q.after.max(-1);
    tokio::spawn(async move {
        let _slot = slot;
        let (mut news, _following) = watch.follow();
        let mut cursor = if after < 0 { -1 } else { after };
        loop {
            // The attempt's row before reading: once it has ended, all its log is stored.
            let row = match store.list_attempts(job_id).await {
                Ok(rows) => rows.into_iter().find(|r| r.id == attempt_id),
                Err(_) => None,
            };
            let Some(row) = row else { return };
            let ended = row.finished_at.is_some();
            let marker = drover_core::logcap::marker(row.log_dropped_bytes.max(0) as u64, cap);
            loop {
                let stored = match store.read_logs(attempt_id, cursor, 16).await {
                    Ok(c) => c,
                    Err(_) => return,
                };
                if stored.is_empty() {
                    break;
                }
                for ch in stored {
                    let mut events = Vec::with_capacity(2);
                    // The size cap dropped what lies between.
                    if ch.seq > cursor + 1 {
                        events.push(serde_json::json!({
                            "seq": ch.seq - 1, "stream": "marker", "text": marker,
                        }));
                    }
                    cursor = ch.seq;
                    events.push(serde_json::json!({
                        "seq": ch.seq,
                        "stream": stream_name(ch.stream),
                        "data": drover_proto::jsonfmt::bytes::encode(&ch.data),
                    }));
                    for e in events {
                        if tx
                            .send(Event::default().event("chunk").data(e.to_string()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
            if ended {
                let _ = tx
                    .send(Event::default().event("end").data(row.state.to_string()))
                    .await;
                return;
            }
            let wait = tokio::time::sleep(Duration::from_secs(2));
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    n = news.recv() => match n {
                        Ok(j) if j == job_id || j == crate::log_watch::RESYNC => break,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    _ = &mut wait => break,
                    _ = tx.closed() => return,
                }
            }
        }
    });
    let stream =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

// ------------------------------------------------------------------ live events

/// One page's live feed: `header` (the header's HTML, computed once for everyone) and
/// `jobs` (job ids that changed, or `*`), coalesced to a few per second.
async fn events(State(s): State<HttpState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut header = s.live.subscribe();
    let mut jobs = s.dispatcher.logs.subscribe_jobs();
    // An open page counts as a log follower: finished jobs reach it through the logs
    // channel, which is only notified while someone follows.
    let (mut logs, following) = s.dispatcher.logs.follow();
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(8);
    tokio::spawn(async move {
        let _following = following;
        let first = header.borrow_and_update().clone();
        if tx
            .send(
                Event::default()
                    .event("header")
                    .data(first.as_str().replace('\n', " ")),
            )
            .await
            .is_err()
        {
            return;
        }
        loop {
            let mut changed: Vec<String> = Vec::new();
            let mut any = false;
            tokio::select! {
                _ = tx.closed() => return,
                r = header.changed() => {
                    if r.is_err() { return; }
                    let h = header.borrow_and_update().clone();
                    if tx.send(Event::default().event("header").data(h.as_str().replace('\n', " "))).await.is_err() {
                        return;
                    }
                    continue;
                }
                r = jobs.recv() => match r {
                    Ok(()) | Err(broadcast::error::RecvError::Lagged(_)) => any = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                r = logs.recv() => match r {
                    Ok(crate::log_watch::RESYNC) => any = true,
                    Ok(id) => changed.push(id.to_string()),
                    Err(broadcast::error::RecvError::Lagged(_)) => any = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
            // Coalesce a burst into one event.
            tokio::time::sleep(Duration::from_millis(250)).await;
            while let Ok(id) = logs.try_recv() {
                if id == crate::log_watch::RESYNC {
                    any = true;
                } else {
                    changed.push(id.to_string());
                }
            }
            while jobs.try_recv().is_ok() {
                any = true;
            }
            changed.sort();
            changed.dedup();
            let data = if any || changed.len() > 100 {
                "*".to_string()
            } else {
                changed.join(",")
            };
            if tx
                .send(Event::default().event("jobs").data(data))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let stream =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

// ------------------------------------------------------------------ workers

/// An inline SVG line chart of `(unix seconds, value)` points.
fn spark(id: &str, title: &str, points: &[(f64, f64)], max: Option<f64>, unit: &str) -> String {
    let (w, h) = (240.0, 48.0);
    if points.is_empty() {
        return format!("<div class=chart><span>{title}</span><em>no samples</em></div>");
    }
    let t0 = points.first().map(|p| p.0).unwrap_or(0.0);
    let t1 = points.last().map(|p| p.0).unwrap_or(0.0).max(t0 + 1.0);
    let top = max
        .unwrap_or_else(|| points.iter().map(|p| p.1).fold(0.0, f64::max))
        .max(1e-9);
    let coords = points
        .iter()
        .map(|(t, v)| {
            format!(
                "{:.1},{:.1}",
                (t - t0) / (t1 - t0) * w,
                h - (v / top).clamp(0.0, 1.0) * h
            )
        })
        .collect::<Vec<_>>()
        .join(" ");
    let last = points.last().map(|p| p.1).unwrap_or(0.0);
    let (lx, ly) = points
        .last()
        .map(|(t, v)| ((t - t0) / (t1 - t0) * w, h - (v / top).clamp(0.0, 1.0) * h))
        .unwrap_or((0.0, h));
    format!(
        "<div class=chart id=\"{id}\"><span>{title}: {last:.1}{unit}</span>\
         <svg viewBox=\"0 0 {w} {h}\" width={w} height={h} role=img aria-label=\"{title}\">\
         <polyline fill=none stroke=currentColor stroke-width=1.5 points=\"{coords}\"/>\
         <circle cx=\"{lx:.1}\" cy=\"{ly:.1}\" r=2.5 fill=currentColor/></svg></div>"
    )
}

async fn workers_page(
    State(s): State<HttpState>,
    c: Caller,
    session: Option<Extension<SessionRow>>,
) -> Response {
    let v = Viewer::from(&c.principal, session.as_ref().map(|e| &e.0));
    let svc = &*s.services.admin;
    let workers = match c
        .call(pb::ListWorkersRequest::default(), |r| svc.list_workers(r))
        .await
    {
        Ok(w) => w.workers,
        Err(e) => return error_page(e),
    };
    let since = chrono::Utc::now() - chrono::Duration::hours(24);
    let mut b = String::from(
        "<h1>Workers</h1><table class=list id=workers><thead><tr><th>Worker</th><th>Host</th>\
         <th>State</th><th>Labels</th><th>Queues</th><th>Slots</th><th>Last seen</th>\
         <th>Last 24 h</th></tr></thead><tbody>",
    );
    for w in &workers {
        let samples = s
            .store
            .worker_samples(&w.id, since)
            .await
            .unwrap_or_default();
        let mut cpu = Vec::new();
        let mut mem = Vec::new();
        let mut load = Vec::new();
        let mut disk = Vec::new();
        for (at, raw) in samples {
            let Ok(r) = pb::HostResources::decode(raw.as_slice()) else {
                continue;
            };
            let t = at.timestamp() as f64;
            cpu.push((t, r.cpu_percent));
            if r.memory_total_bytes > 0 {
                mem.push((
                    t,
                    r.memory_used_bytes as f64 / r.memory_total_bytes as f64 * 100.0,
                ));
            }
            load.push((t, r.load1));
            disk.push((t, r.disk_free_bytes as f64 / (1u64 << 30) as f64));
        }
        let paused = if w.paused_reason.is_empty() {
            String::new()
        } else {
            format!("<div class=reason>{}</div>", esc(&w.paused_reason))
        };
        let _ = write!(
            b,
            "<tr data-worker=\"{id}\"><td>{id}</td><td>{host}</td><td>{state}{paused}</td>\
             <td>{labels}</td><td>{queues}</td><td>{running}/{slots}</td><td>{seen}</td>\
             <td class=charts>{c1}{c2}{c3}{c4}</td></tr>",
            id = esc(&w.id),
            host = esc(&w.hostname),
            state = badge(&esc(drover_proto::v1::WorkerState::name_of(w.state))),
            labels = esc(&w.labels.join(", ")),
            queues = esc(&w.queues.join(", ")),
            running = w.running,
            slots = w.slots,
            seen = ts(&w.last_seen_at),
            c1 = spark("cpu", "CPU", &cpu, Some(100.0), " %"),
            c2 = spark("mem", "Memory", &mem, Some(100.0), " %"),
            c3 = spark("load", "Load", &load, None, ""),
            c4 = spark("disk", "Free disk", &disk, None, " GiB"),
        );
    }
    if workers.is_empty() {
        b.push_str("<tr><td colspan=8 class=empty>No workers.</td></tr>");
    }
    b.push_str("</tbody></table>");
    page(&s, &v, "Workers", "workers", &b).await
}

// ------------------------------------------------------------------ queues

async fn queues_page(
    State(s): State<HttpState>,
    c: Caller,
    session: Option<Extension<SessionRow>>,
) -> Response {
    let v = Viewer::from(&c.principal, session.as_ref().map(|e| &e.0));
    let qsvc = &*s.services.queues;
    let queues = match c
        .call(pb::ListQueuesRequest::default(), |r| qsvc.list_queues(r))
        .await
    {
        Ok(q) => q.queues,
        Err(e) => return error_page(e),
    };
    let asvc = &*s.services.admin;
    let health = match c
        .call(pb::GetHealthRequest {}, |r| asvc.get_health(r))
        .await
    {
        Ok(h) => h,
        Err(e) => return error_page(e),
    };
    let finished = s.store.finished_per_minute(60).await.unwrap_or_default();
    let mut names: Vec<String> = queues.iter().map(|q| q.queue.clone()).collect();
    names.extend(health.queues.iter().map(|q| q.queue.clone()));
    names.extend(finished.iter().map(|f| f.0.clone()));
    names.sort();
    names.dedup();
    let now = chrono::Utc::now();
    let mut b = String::from(
        "<h1>Queues</h1><table class=list id=queues><thead><tr><th>Queue</th><th>State</th>\
         <th>Pending</th><th>Running</th><th>Oldest due</th><th>Finished per minute (1 h)</th>\
         <th></th></tr></thead><tbody>",
    );
    for name in &names {
        let qs = queues.iter().find(|q| &q.queue == name);
        let qh = health.queues.iter().find(|q| &q.queue == name);
        let paused = qs.is_some_and(|q| q.paused);
        let pending = qh.map(|q| q.pending).or(qs.map(|q| q.pending)).unwrap_or(0);
        let running = qh.map(|q| q.running).or(qs.map(|q| q.running)).unwrap_or(0);
        let oldest = qh
            .map(|q| drover_proto::durations::to_millis(&q.oldest_pending).unwrap_or(0))
            .unwrap_or(0);
        // One bar per minute of the last hour.
        let mut per_min = [0i64; 60];
        for (_, m, n) in finished.iter().filter(|f| &f.0 == name) {
            let ago = (now - *m).num_minutes();
            if (0..60).contains(&ago) {
                per_min[59 - ago as usize] = *n;
            }
        }
        let top = per_min.iter().copied().max().unwrap_or(0).max(1) as f64;
        let bars = per_min
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let h = *n as f64 / top * 40.0;
                format!(
                    "<rect x=\"{}\" y=\"{:.1}\" width=3 height=\"{:.1}\"><title>{n}</title></rect>",
                    i * 4,
                    40.0 - h,
                    h
                )
            })
            .collect::<String>();
        let action = if v.can_operate() {
            if paused {
                format!(
                    "<button type=button class=resume-queue data-queue=\"{0}\">Resume</button>",
                    esc(name)
                )
            } else {
                format!(
                    "<button type=button class=pause-queue data-queue=\"{0}\">Pause</button>",
                    esc(name)
                )
            }
        } else {
            String::new()
        };
        let _ = write!(
            b,
            "<tr data-queue=\"{q}\"><td><a href=\"/ui/jobs?queue={qq}\">{q}</a></td><td>{state}</td>\
             <td>{pending}</td><td>{running}</td><td>{oldest}</td>\
             <td><svg class=bars viewBox=\"0 0 240 40\" width=240 height=40 role=img \
              aria-label=\"jobs finished per minute\">{bars}</svg></td><td>{action}</td></tr>",
            q = esc(name),
            qq = qv(name),
            state = if paused { badge("paused") } else { badge("active") },
            oldest = if oldest == 0 {
                String::new()
            } else {
                format!("{:.1} s", oldest as f64 / 1000.0)
            },
        );
    }
    if names.is_empty() {
        b.push_str("<tr><td colspan=7 class=empty>No queues with jobs.</td></tr>");
    }
    b.push_str("</tbody></table>");
    page(&s, &v, "Queues", "queues", &b).await
}

// ------------------------------------------------------------------ failures

async fn failures_page(
    State(s): State<HttpState>,
    c: Caller,
    session: Option<Extension<SessionRow>>,
) -> Response {
    let v = Viewer::from(&c.principal, session.as_ref().map(|e| &e.0));
    let svc = &*s.services.alerts;
    let groups = match c
        .call(
            pb::ListFailureGroupsRequest {
                page_size: 50,
                ..Default::default()
            },
            |r| svc.list_failure_groups(r),
        )
        .await
    {
        Ok(g) => g.groups,
        Err(e) => return error_page(e),
    };
    let mut b = String::from(
        "<h1>Failures</h1><table class=list id=failures><thead><tr><th>Count</th><th>Queue</th>\
         <th>Fingerprint</th><th>Cause</th><th>Exit codes</th><th>Last seen</th><th>Last job</th>\
         <th></th></tr></thead><tbody>",
    );
    for g in &groups {
        let action = if v.can_operate() {
            format!(
                "<button type=button class=retry-group data-fingerprint=\"{}\" data-queue=\"{}\">Retry group</button>",
                esc(&g.fingerprint),
                esc(&g.queue)
            )
        } else {
            String::new()
        };
        let _ = write!(
            b,
            "<tr><td>{count}</td><td>{queue}</td><td><code>{fp}</code></td><td class=reason>{sample}</td>\
             <td>{codes}</td><td>{seen}</td><td><a href=\"/ui/jobs/{job}\">{sjob}</a></td><td>{action}</td></tr>",
            count = g.count,
            queue = esc(&g.queue),
            fp = esc(&g.fingerprint),
            sample = esc(&g.sample),
            codes = g
                .exit_codes
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            seen = ts(&g.last_seen_at),
            job = esc(&g.last_job_id),
            sjob = esc(g.last_job_id.get(..8).unwrap_or(&g.last_job_id)),
        );
    }
    if groups.is_empty() {
        b.push_str("<tr><td colspan=8 class=empty>No failures recorded.</td></tr>");
    }
    b.push_str("</tbody></table><div id=action-result></div>");
    page(&s, &v, "Failures", "failures", &b).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_html() {
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(qv("a b/c&d"), "a%20b%2Fc%26d");
    }

    #[test]
    fn charts_scale_into_their_box() {
        let svg = spark(
            "c",
            "CPU",
            &[(0.0, 0.0), (10.0, 50.0), (20.0, 100.0)],
            Some(100.0),
            "%",
        );
        assert!(
            svg.contains("points=\"0.0,48.0 120.0,24.0 240.0,0.0\""),
            "{svg}"
        );
        assert!(spark("c", "CPU", &[], None, "").contains("no samples"));
    }
}
