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

fn body(route: &str, n: u64) -> String {
    let client = match route {
        "rdstation" => serde_json::json!({"tid": "GA4.100000000.200000000"}),
        other => serde_json::json!({"clientId": format!("demo-{other}")}),
    };
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

/// Runs the load and prints a one-line JSON report.
pub async fn load(opts: LoadOptions) -> anyhow::Result<()> {
    anyhow::ensure!(opts.rate > 0, "--rate must be at least 1");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("HTTP client")?;
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
