//! Administration commands: tokens, the audit log, health and workers.

use crate::{channel, duration, output, print_json, status_error, Format, TokenCommand};
use anyhow::{anyhow, Result};
use drover_proto::v1 as pb;
use drover_proto::v1::admin_service_client::AdminServiceClient;
use std::process::ExitCode;

pub async fn token_command(addr: &str, fmt: Format, t: TokenCommand) -> Result<ExitCode> {
    let mut c = AdminServiceClient::new(channel(addr).await?);
    match t {
        TokenCommand::Create {
            name,
            role,
            queues,
            worker,
            expires,
        } => {
            let expires_in = match &expires {
                Some(e) => Some(drover_proto::durations::from_std(
                    drover_core::auth::parse_lifetime(e).map_err(|m| anyhow!("--expires: {m}"))?,
                )),
                None => None,
            };
            let r = c
                .create_token(pb::CreateTokenRequest {
                    name,
                    role,
                    queues,
                    worker_pattern: worker.unwrap_or_default(),
                    expires_in,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let t = r.token.unwrap_or_default();
            if fmt == Format::Json {
                let mut v = output::token_json(&t);
                v["secret"] = r.secret.into();
                print_json(&v)?;
            } else {
                eprintln!(
                    "created token {} ({}, role {}); it is shown only now:",
                    t.name, t.id, t.role
                );
                println!("{}", r.secret);
            }
        }
        TokenCommand::List { all } => {
            let mut r = pb::ListTokensResponse::default();
            loop {
                let page = c
                    .list_tokens(pb::ListTokensRequest {
                        include_revoked: all,
                        page_token: r.next_page_token,
                        ..Default::default()
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                r.tokens.extend(page.tokens);
                r.next_page_token = page.next_page_token;
                if r.next_page_token.is_empty() {
                    break;
                }
            }
            if fmt == Format::Json {
                let v: Vec<_> = r.tokens.iter().map(output::token_json).collect();
                print_json(&serde_json::Value::Array(v))?;
            } else {
                print!("{}", output::token_table(&r.tokens));
            }
        }
        TokenCommand::Revoke { which } => {
            let r = c
                .revoke_token(pb::RevokeTokenRequest { token: which })
                .await
                .map_err(status_error)?
                .into_inner();
            let t = r.token.unwrap_or_default();
            println!("revoked token {} ({})", t.name, t.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn audit(
    addr: &str,
    fmt: Format,
    since: Option<String>,
    limit: u32,
    page_token: Option<String>,
) -> Result<ExitCode> {
    let since = match &since {
        Some(s) => Some(duration("since", s)?),
        None => None,
    };
    let mut c = AdminServiceClient::new(channel(addr).await?);
    let r = c
        .list_audit(pb::ListAuditRequest {
            since,
            page_size: limit,
            page_token: page_token.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    if fmt == Format::Json {
        print_json(&serde_json::json!({
            "entries": r.entries.iter().map(output::audit_json).collect::<Vec<_>>(),
            "next_page_token": r.next_page_token,
        }))?;
    } else {
        print!("{}", output::audit_table(&r.entries));
        if !r.next_page_token.is_empty() {
            eprintln!("more: --page-token {}", r.next_page_token);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Exits 1 when the system is failing.
pub async fn health(addr: &str, fmt: Format) -> Result<ExitCode> {
    let mut c = AdminServiceClient::new(channel(addr).await?);
    let h = c
        .get_health(pb::GetHealthRequest {})
        .await
        .map_err(status_error)?
        .into_inner();
    if fmt == Format::Json {
        print_json(&drover_proto::json::health(&h))?;
    } else {
        print!("{}", output::health_text(&h));
    }
    Ok(if h.status == pb::HealthStatus::Failing as i32 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub async fn workers(addr: &str, fmt: Format) -> Result<ExitCode> {
    let mut c = AdminServiceClient::new(channel(addr).await?);
    let mut w = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = c
            .list_workers(pb::ListWorkersRequest {
                page_token,
                ..Default::default()
            })
            .await
            .map_err(status_error)?
            .into_inner();
        w.extend(r.workers);
        if r.next_page_token.is_empty() {
            break;
        }
        page_token = r.next_page_token;
    }
    if fmt == Format::Json {
        let v: Vec<_> = w.iter().map(drover_proto::json::worker).collect();
        print_json(&serde_json::Value::Array(v))?;
    } else {
        print!("{}", output::worker_table(&w));
    }
    Ok(ExitCode::SUCCESS)
}
