//! `connect bench load`: an open-loop load generator for the ingest routes (a fixed rate
//! of requests, whatever the answers take), reporting answers and latency percentiles.

use anyhow::Context;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Options of `connect bench load`.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Base URL of the server (`http://127.0.0.1:3000`).
    pub url: String,
    /// Route (`responsys`, `salesforce`, `rdstation`).
    pub route: String,
    /// Requests per second.
    pub rate: u32,
    /// Seconds of load.
    pub seconds: u64,
}

/// How an event on `route` names its demo client (RD Station: by the demo `tid`).
fn demo_client(route: &str) -> serde_json::Value {
    match route {
        "rdstation" => serde_json::json!({"tid": "GA4.100000000.200000000"}),
        other => serde_json::json!({"clientId": format!("demo-{other}")}),
    }
}

fn body(route: &str, n: u64) -> String {
    let client = demo_client(route);
    let mut v = serde_json::json!({
        "email": format!("shopper{}@example.com", n % 1000),
        "eventType": "product_view",
        "productId": format!("SKU-{}", n % 500),
        "productPrice": 199.9,
        "eventId": format!("load-{}-{n}", std::process::id()),
    });
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), client.as_object()) {
        obj.extend(extra.clone());
    }
    v.to_string()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The load generators' HTTP client (10 s per request).
fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("HTTP client")
}

/// Runs the load and prints a one-line JSON report.
pub async fn load(opts: LoadOptions) -> anyhow::Result<()> {
    anyhow::ensure!(opts.rate > 0, "--rate must be at least 1");
    let http = client()?;
    let url = format!("{}/{}", opts.url.trim_end_matches('/'), opts.route);
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::<String, u64>::new()));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(opts.rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = u64::from(opts.rate) * opts.seconds;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for n in 0..total {
        ticker.tick().await;
        let (http, url, latencies, statuses) = (
            http.clone(),
            url.clone(),
            latencies.clone(),
            statuses.clone(),
        );
        let body = body(&opts.route, n);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let res = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            let key = match res {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "error".to_owned(),
            };
            latencies.lock().await.push(t.elapsed());
            *statuses.lock().await.entry(key).or_default() += 1;
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    let mut lat = latencies.lock().await.clone();
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "url": url,
            "requests": total,
            "seconds": elapsed.as_secs_f64(),
            "achievedRate": total as f64 / elapsed.as_secs_f64(),
            "statuses": *statuses.lock().await,
            "latencyMs": {"p50": ms(percentile(&lat, 50.0)), "p99": ms(percentile(&lat, 99.0)), "max": ms(percentile(&lat, 100.0))},
        })
    );
    Ok(())
}

/// Options of `connect bench latency`.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// Base URL of a running `connect serve --demo` (or one with the demo clients).
    pub url: String,
    /// Base URL of the sandbox it delivers to.
    pub sandbox: String,
    /// Routes to measure, one after the other.
    pub routes: Vec<String>,
    /// Events per second on each route.
    pub rate: u32,
    /// Seconds of load per route.
    pub seconds: u64,
    /// How long to wait for the last events to arrive.
    pub wait: Duration,
}

/// One route's event `n`, with an address that names it.
fn latency_body(route: &str, run: &str, n: u64) -> (String, String) {
    let email = format!("lat-{run}-{route}-{n}@bench.example");
    let client = demo_client(route);
    let mut v = serde_json::json!({
        "email": email,
        "eventType": "product_view",
        "productId": format!("SKU-{}", n % 500),
        "productPrice": 199.9,
    });
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), client.as_object()) {
        obj.extend(extra.clone());
    }
    (email, v.to_string())
}

/// `connect bench latency`: per route, `rate` events per second (open loop) for
/// `seconds`; for each event, the time from its 202 to its arrival at the sandbox CRM
/// (the sandbox's `receivedAt`, same clock). Prints p50, p99 and max per route, and
/// how many accepted events never arrived.
pub async fn latency(opts: LatencyOptions) -> anyhow::Result<()> {
    anyhow::ensure!(opts.rate > 0, "--rate must be at least 1");
    let http = client()?;
    let sandbox = opts.sandbox.trim_end_matches('/').to_owned();
    let run = format!("{:x}", domain::Clock::now_ms(&domain::SystemClock));
    let mut rows = Vec::new();
    for route in &opts.routes {
        http.delete(format!("{sandbox}/_sandbox/records"))
            .send()
            .await
            .context("clearing the sandbox records")?;
        let url = format!("{}/{route}", opts.url.trim_end_matches('/'));
        let accepted = Arc::new(Mutex::new(std::collections::HashMap::<String, i64>::new()));
        let refused = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(opts.rate)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let total = u64::from(opts.rate) * opts.seconds;
        let mut tasks = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for n in 0..total {
            ticker.tick().await;
            let (email, body) = latency_body(route, &run, n);
            let (http, url, accepted, refused) =
                (http.clone(), url.clone(), accepted.clone(), refused.clone());
            tasks.push(tokio::spawn(async move {
                let res = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().as_u16() == 202 => {
                        accepted
                            .lock()
                            .await
                            .insert(email, domain::Clock::now_ms(&domain::SystemClock));
                    }
                    _ => {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
        let accepted = accepted.lock().await.clone();
        let deadline = Instant::now() + opts.wait;
        let mut arrived: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
        loop {
            let records: Vec<serde_json::Value> = http
                .get(format!("{sandbox}/_sandbox/records"))
                .send()
                .await
                .context("reading the sandbox records")?
                .json()
                .await
                .context("sandbox records JSON")?;
            for r in &records {
                if let (Some(email), Some(at)) = (r["email"].as_str(), r["receivedAt"].as_i64()) {
                    // The first arrival counts (a redelivery is a duplicate, not later).
                    arrived.entry(email.to_owned()).or_insert(at);
                }
            }
            if accepted.keys().all(|e| arrived.contains_key(e)) || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let mut lat: Vec<Duration> = accepted
            .iter()
            .filter_map(|(e, t)| arrived.get(e).map(|a| (a - t).max(0)))
            .map(|ms| Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
            .collect();
        lat.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let lost = accepted.len() - lat.len();
        rows.push(serde_json::json!({
            "route": route,
            "rate": opts.rate,
            "sent": total,
            "accepted": accepted.len(),
            "refused": refused.load(std::sync::atomic::Ordering::Relaxed),
            "arrived": lat.len(),
            "lost": lost,
            "latencyMs": {"p50": ms(percentile(&lat, 50.0)), "p99": ms(percentile(&lat, 99.0)), "max": ms(percentile(&lat, 100.0))},
        }));
    }
    println!("{}", serde_json::to_string_pretty(&rows)?);
    anyhow::ensure!(
        rows.iter().all(|r| r["lost"] == 0),
        "some accepted events did not arrive within {:?}",
        opts.wait
    );
    Ok(())
}

/// `connect bench bare`: a bare axum server answering every POST with 202 and a small
/// JSON body — the HTTP ceiling of this machine, measured in the same run as the
/// pipeline.
pub async fn bare(listen: std::net::SocketAddr) -> anyhow::Result<()> {
    let router = axum::Router::new().fallback(axum::routing::any(|| async {
        (
            axum::http::StatusCode::ACCEPTED,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            r#"{"recordId":"bare"}"#,
        )
    }));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("connect listening on http://{}", listener.local_addr()?);
    tokio::select! {
        r = axum::serve(listener, router) => r.map_err(Into::into),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
