//! `connect tokens`: per client and CRM, when the token expires and how the last refresh
//! went; `connect tokens refresh [--client ID]` forces a refresh now.

use anyhow::Context;
use domain::{ClientDirectory, ClientId, Clock, Crm, SystemClock, TokenStore};
use local::FileSecrets;
use std::path::Path;
use std::sync::Arc;

fn age(ms: i64) -> String {
    let s = ms.abs() / 1000;
    let text = if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    };
    if ms < 0 { format!("-{text}") } else { text }
}

/// Lists tokens.
pub async fn list(data: &Path, json: bool) -> anyhow::Result<()> {
    let store = crate::open_tool_store(data)?;
    let now = SystemClock.now_ms();
    let mut rows = Vec::new();
    for crm in crate::token_destinations() {
        for client in store.clients_of(crm).await? {
            let token = store.get_token(&client.client_id, crm).await?;
            let status = store.refresh_status(&client.client_id, crm).await?;
            rows.push(serde_json::json!({
                "clientId": client.client_id,
                "crm": crm,
                "active": client.active,
                "expiresAt": token.as_ref().map(|t| domain::delivery::rfc3339(t.expires_at)),
                "expiresInSeconds": token.as_ref().map(|t| (t.expires_at - now) / 1000),
                "lastRefreshAt": status.as_ref().map(|s| domain::delivery::rfc3339(s.at)),
                "lastResult": status.as_ref().map(|s| if s.ok { "ok".to_owned() } else { format!("failed: {}", s.message) }),
            }));
        }
    }
    store.shutdown().await;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<24} {:<11} {:<11} {:<21} RESULT",
        "CLIENT", "CRM", "EXPIRES IN", "LAST REFRESH"
    );
    for r in rows {
        let expires = r["expiresInSeconds"]
            .as_i64()
            .map_or("no token".to_owned(), |s| {
                if s <= 0 {
                    "expired".into()
                } else {
                    age(s * 1000)
                }
            });
        println!(
            "{:<24} {:<11} {:<11} {:<21} {}",
            r["clientId"].as_str().unwrap_or(""),
            r["crm"].as_str().unwrap_or(""),
            expires,
            r["lastRefreshAt"].as_str().unwrap_or("never"),
            r["lastResult"].as_str().unwrap_or("-"),
        );
    }
    Ok(())
}

/// Forces a refresh of every active client's token (or one client's). Fails when any
/// refresh failed.
pub async fn refresh(
    data: &Path,
    secrets: Option<&Path>,
    client: Option<&str>,
) -> anyhow::Result<()> {
    let only = client
        .map(ClientId::parse)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--client: {e}"))?;
    let store = crate::open_tool_store(data)?;
    let secrets =
        FileSecrets::open(&secrets.map_or_else(|| data.join("secrets.json"), Path::to_path_buf));
    let http = crm::CrmHttp::new(&crm::HttpSettings::default()).context("HTTP client")?;
    // The CRM of the one client asked for, or every CRM.
    let crms: Vec<Crm> = match &only {
        Some(o) => match store.client(o).await? {
            Some(c) => vec![c.crm],
            None => {
                store.shutdown().await;
                anyhow::bail!("unknown client {o}");
            }
        },
        None => crate::token_destinations().collect::<Vec<_>>(),
    };
    let mut failed = 0;
    for crm in crms {
        let handler = token::TokenHandler::new(
            crm,
            store.clone(),
            Arc::new(crm::TokenManager::new(
                store.clone(),
                secrets.clone(),
                SystemClock,
                http.clone(),
            )),
            local::LogAlerts,
            SystemClock,
            token::TokenSettings::default(),
        );
        let summary = handler.handle(only.as_ref(), true, None).await;
        for c in &summary.refreshed {
            println!("{crm:<11} {c:<24} refreshed");
        }
        for c in &summary.still_valid {
            println!("{crm:<11} {c:<24} kept (another refresher stored a newer token)");
        }
        for (c, why) in &summary.failed {
            println!("{crm:<11} {c:<24} FAILED: {why}");
        }
        failed += summary.failed.len();
    }
    store.shutdown().await;
    anyhow::ensure!(failed == 0, "{failed} token refresh(es) failed");
    Ok(())
}
