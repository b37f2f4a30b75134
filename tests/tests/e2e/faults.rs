//! The fault suite: `connect serve` and `connect sandbox` as separate processes, faults
//! injected from outside (signals, the sandbox's fault modes, a full disk), and every
//! acknowledged event accounted for: acknowledged, delivered, duplicated, lost,
//! dead-lettered. Each test prints its counts (RELIABILITY.md collects them).

use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tests::{Process, open_db};

/// Time compressed from hours to a test: retries 50 ms doubling to 300 ms, breaker ≤
/// 300 ms, and the messages a killed worker held visible again after 5 s (360 s by
/// default, as on SQS).
const FAST_RETRIES: &str = "[delivery]\nretry_base_ms = 50\nretry_max_ms = 300\nbreaker_open_max_ms = 300\nvisibility_timeout_seconds = 5\n";

struct Rig {
    dir: tempfile::TempDir,
    data: PathBuf,
    sandbox: Process,
    config: String,
    http: reqwest::Client,
}

impl Rig {
    fn new(config: &str) -> Rig {
        let dir = tempfile::tempdir().expect("tempdir");
        let sandbox = Process::spawn(
            &dir.path().join("sb"),
            &["sandbox", "--listen", "127.0.0.1:0"],
            "/_sandbox/records",
        );
        let path = dir.path().join("faults.toml");
        std::fs::write(&path, config).expect("config");
        Rig {
            data: dir.path().join("data"),
            config: path.to_string_lossy().into_owned(),
            dir,
            sandbox,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
        }
    }

    fn serve(&self) -> Process {
        self.serve_on(&self.data)
    }

    fn serve_on(&self, data: &Path) -> Process {
        Process::serve(
            data,
            &[
                "--demo",
                "--sandbox-url",
                &self.sandbox.base,
                "--config",
                &self.config,
            ],
        )
    }

    async fn fault(&self, body: Value) {
        let r = self
            .http
            .post(format!("{}/_sandbox/faults", self.sandbox.base))
            .json(&body)
            .send()
            .await
            .expect("fault");
        assert!(r.status().is_success());
    }

    async fn clear_faults(&self) {
        self.http
            .delete(format!("{}/_sandbox/faults", self.sandbox.base))
            .send()
            .await
            .expect("clear");
    }

    /// Emails the sandbox accepted, with how many times each.
    async fn delivered(&self) -> HashMap<String, usize> {
        let records = tests::sandbox_records(&self.http, &self.sandbox.base).await;
        let mut out = HashMap::new();
        for r in records {
            *out.entry(r["email"].as_str().unwrap_or("").to_owned())
                .or_default() += 1;
        }
        out
    }

    async fn calls(&self, crm: &str) -> u64 {
        let stats: Value = self
            .http
            .get(format!("{}/_sandbox/stats", self.sandbox.base))
            .send()
            .await
            .expect("stats")
            .json()
            .await
            .expect("json");
        stats["calls"][crm].as_u64().unwrap_or(0)
    }

    fn dlq(&self, queue: &str) -> Vec<String> {
        let db = open_db(&self.data);
        let mut stmt = db
            .prepare("SELECT body FROM queue_messages WHERE queue = ?1")
            .expect("prepare");
        stmt.query_map([queue], |r| r.get::<_, String>(0))
            .expect("query")
            .map(|b| {
                let v: Value = serde_json::from_str(&b.expect("row")).expect("json");
                v["event"]["email"].as_str().unwrap_or("").to_owned()
            })
            .collect()
    }

    /// Waits until every email of `acked` was delivered at least once.
    async fn wait_delivered(
        &self,
        acked: &HashSet<String>,
        within: Duration,
    ) -> HashMap<String, usize> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.delivered().await;
            let missing = acked.iter().filter(|e| !got.contains_key(*e)).count();
            if missing == 0 {
                return got;
            }
            if Instant::now() >= deadline {
                let db = open_db(&self.data);
                let missing: Vec<&String> =
                    acked.iter().filter(|e| !got.contains_key(*e)).collect();
                // How many of the missing events a query (one `?1` email parameter) finds.
                let found = |sql: &str| {
                    missing
                        .iter()
                        .filter(|e| {
                            db.query_row(sql, [e.as_str()], |r| r.get::<_, i64>(0))
                                .unwrap_or(0)
                                > 0
                        })
                        .count()
                };
                let stored = found(
                    "SELECT COUNT(*) FROM navigation WHERE json_extract(item, '$.email') = ?1",
                );
                let queued = found(
                    "SELECT COUNT(*) FROM queue_messages WHERE json_extract(body, '$.event.email') = ?1",
                );
                let where_: Vec<String> = missing
                    .iter()
                    .take(3)
                    .map(|e| {
                        db.query_row(
                            "SELECT queue || ' receives=' || receive_count || ' visibleIn=' || (visible_at - CAST(strftime('%s','now') AS INTEGER) * 1000) || ' attrs=' || attributes FROM queue_messages WHERE json_extract(body, '$.event.email') = ?1",
                            [e.as_str()],
                            |r| r.get::<_, String>(0),
                        )
                        .unwrap_or_default()
                    })
                    .collect();
                panic!(
                    "{} of {} acknowledged events never reached the CRM ({stored} of them stored, {queued} on a queue), e.g. {:?}: {where_:?}",
                    missing.len(),
                    acked.len(),
                    missing.first()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What an open-loop load sent: emails answered 202, other answers, latencies (ms).
#[derive(Default)]
struct Load {
    acked: HashSet<String>,
    refused: u64,
    failed: u64,
    latencies_ms: Vec<f64>,
}

impl Load {
    fn p(&self, q: f64) -> f64 {
        let mut v = self.latencies_ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    }
}

/// Sends `rate` events per second for `seconds` to whatever URL `base` holds at each
/// send (it changes when the server restarts). Emails are `{tag}{i}@faults.example`.
async fn load(
    http: reqwest::Client,
    base: Arc<Mutex<String>>,
    tag: &str,
    rate: u64,
    seconds: f64,
) -> Load {
    let total = (rate as f64 * seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..total {
        let due = started + interval * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(due.into()).await;
        let url = format!("{}/responsys", base.lock().expect("lock"));
        let http = http.clone();
        let email = format!("{tag}{i}@faults.example");
        tasks.push(tokio::spawn(async move {
            let body = json!({"clientId": "demo-responsys", "email": email, "eventType": "lead", "eventId": email});
            let sent = Instant::now();
            let res = http
                .post(&url)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .await;
            let ms = sent.elapsed().as_secs_f64() * 1000.0;
            match res {
                Ok(r) if r.status() == 202 || r.status() == 200 => (email, Some(true), ms),
                Ok(_) => (email, Some(false), ms),
                Err(_) => (email, None, ms),
            }
        }));
    }
    let mut out = Load::default();
    for t in tasks {
        let (email, answer, ms) = t.await.expect("join");
        match answer {
            Some(true) => {
                out.acked.insert(email);
                out.latencies_ms.push(ms);
            }
            Some(false) => out.refused += 1,
            None => out.failed += 1,
        }
    }
    out
}

fn report(name: &str, load: &Load, delivered: &HashMap<String, usize>, dead: &[String]) {
    let dead_set: HashSet<&String> = dead.iter().collect();
    let lost = load
        .acked
        .iter()
        .filter(|e| !delivered.contains_key(*e) && !dead_set.contains(e))
        .count();
    let dead = dead.len();
    let duplicated: usize = load
        .acked
        .iter()
        .map(|e| delivered.get(e).copied().unwrap_or(0).saturating_sub(1))
        .sum();
    eprintln!(
        "FAULT {name}: acknowledged {} delivered {} duplicated {duplicated} lost {lost} dead-lettered {dead} (refused {}, connection failures {}, ingest p50 {:.1} ms p99 {:.1} ms)",
        load.acked.len(),
        load.acked.len() - lost - dead,
        load.refused,
        load.failed,
        load.p(0.5),
        load.p(0.99)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_five_times_under_load_loses_no_acknowledged_event() {
    let rig = Rig::new(FAST_RETRIES);
    let server = Arc::new(Mutex::new(rig.serve()));
    let base = Arc::new(Mutex::new(server.lock().expect("lock").base.clone()));
    let killer = {
        let (server, base) = (Arc::clone(&server), Arc::clone(&base));
        let rig_data = rig.data.clone();
        let (sandbox, config) = (rig.sandbox.base.clone(), rig.config.clone());
        tokio::spawn(async move {
            // Kill at irregular moments (deterministic, so a failure reproduces).
            for pause_ms in [900_u64, 1300, 700, 1600, 1100] {
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                let next = tokio::task::spawn_blocking({
                    let (server, data, sandbox, config) = (
                        Arc::clone(&server),
                        rig_data.clone(),
                        sandbox.clone(),
                        config.clone(),
                    );
                    move || {
                        server.lock().expect("lock").kill();
                        Process::serve(
                            &data,
                            &["--demo", "--sandbox-url", &sandbox, "--config", &config],
                        )
                    }
                })
                .await
                .expect("restart");
                *base.lock().expect("lock") = next.base.clone();
                *server.lock().expect("lock") = next;
            }
        })
    };
    let sent = load(rig.http.clone(), Arc::clone(&base), "kill", 500, 7.0).await;
    killer.await.expect("killer");
    assert!(
        sent.acked.len() > 2000,
        "only {} acknowledged",
        sent.acked.len()
    );
    assert!(
        sent.failed > 0,
        "no request met a dead server: the kills proved nothing"
    );
    let delivered = rig
        .wait_delivered(&sent.acked, Duration::from_secs(90))
        .await;
    report("sigkill x5 @500/s", &sent, &delivered, &[]);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_crm_outage_is_waited_out_and_nothing_is_dead_lettered() {
    let rig = Rig::new(FAST_RETRIES);
    let server = rig.serve();
    rig.fault(json!({"crm": "responsys", "mode": "unavailable", "rate": 1.0}))
        .await;
    let before = rig.calls("responsys").await;
    let base = Arc::new(Mutex::new(server.base.clone()));
    // Many retry cycles (50–300 ms each) while events keep arriving.
    let sent = load(rig.http.clone(), base, "outage", 100, 6.0).await;
    let during = rig.calls("responsys").await - before;
    assert_eq!(
        sent.refused + sent.failed,
        0,
        "ingest refused events during the outage"
    );
    assert!(rig.delivered().await.is_empty());
    rig.clear_faults().await;
    let delivered = rig
        .wait_delivered(&sent.acked, Duration::from_secs(60))
        .await;
    let dead = rig.dlq("responsys-dlq");
    assert!(
        dead.is_empty(),
        "dead-lettered during an outage: {}",
        dead.len()
    );
    report("6 s outage @100/s", &sent, &delivered, &dead);
    eprintln!(
        "FAULT outage: {during} CRM calls for {} events during the outage",
        sent.acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_percent_permanent_rejects_are_exactly_the_dead_letters() {
    let rig = Rig::new(FAST_RETRIES);
    let server = rig.serve();
    rig.fault(json!({"crm": "responsys", "mode": "reject", "rate": 0.1}))
        .await;
    let base = Arc::new(Mutex::new(server.base.clone()));
    let sent = load(rig.http.clone(), base, "reject", 200, 2.0).await;
    assert_eq!(sent.acked.len(), 400);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered = rig.delivered().await;
        let dead = rig.dlq("responsys-dlq");
        if delivered.len() + dead.len() >= sent.acked.len() {
            let dead_set: HashSet<String> = dead.iter().cloned().collect();
            assert_eq!(dead.len(), 40, "10 % of 400");
            assert_eq!(dead_set.len(), 40, "each rejected event once");
            for e in &dead_set {
                assert!(
                    !delivered.contains_key(e),
                    "{e} both delivered and dead-lettered"
                );
                assert!(sent.acked.contains(e));
            }
            let union: HashSet<&String> = delivered.keys().chain(dead_set.iter()).collect();
            assert_eq!(
                union.len(),
                sent.acked.len(),
                "every event is delivered or dead-lettered"
            );
            report("10 % rejects", &sent, &delivered, &dead);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} delivered + {} dead of {}",
            delivered.len(),
            dead.len(),
            sent.acked.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_crm_does_not_hold_up_ingest() {
    let rig = Rig::new(FAST_RETRIES);
    let server = rig.serve();
    rig.fault(json!({"crm": "responsys", "mode": "slow", "latencyMs": 2000}))
        .await;
    let base = Arc::new(Mutex::new(server.base.clone()));
    let sent = load(rig.http.clone(), base, "slow", 50, 2.0).await;
    assert_eq!(sent.refused + sent.failed, 0);
    let delivered = rig
        .wait_delivered(&sent.acked, Duration::from_secs(60))
        .await;
    report(
        "CRM 2 s per call",
        &sent,
        &delivered,
        &rig.dlq("responsys-dlq"),
    );
    // Ingest answers do not wait for the CRM (a liveness bound, not a benchmark).
    assert!(
        sent.p(0.99) < 1000.0,
        "ingest p99 {} ms behind a 2 s CRM",
        sent.p(0.99)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_accepted() {
    let rig = Rig::new(FAST_RETRIES);
    let server = Arc::new(Mutex::new(rig.serve()));
    let base = Arc::new(Mutex::new(server.lock().expect("lock").base.clone()));
    let stopper = {
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            tokio::task::spawn_blocking(move || server.lock().expect("lock").terminate())
                .await
                .expect("terminate")
        })
    };
    let sent = load(rig.http.clone(), Arc::clone(&base), "term", 300, 3.0).await;
    let status = stopper.await.expect("stopper");
    assert!(status.success(), "connect serve exited with {status}");
    assert!(
        sent.failed > 0 || sent.refused > 0,
        "the stop landed after the load"
    );
    // Restart: whatever was accepted and not yet delivered is delivered now.
    let restarted = rig.serve();
    let delivered = rig
        .wait_delivered(&sent.acked, Duration::from_secs(60))
        .await;
    report("SIGTERM @300/s", &sent, &delivered, &[]);
    drop(restarted);
}

/// A data directory on a 4 MiB tmpfs (root only: `mount`). `None` when not permitted.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).expect("dir");
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(at.to_owned()))
    }

    fn fill(&self) {
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=64k"])
            .arg(format!("of={}", self.0.join("filler").display()))
            .stderr(std::process::Stdio::null())
            .status();
    }

    fn free(&self) {
        let _ = std::fs::remove_file(self.0.join("filler"));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_503_never_a_false_202_and_recovers_without_restart() {
    let rig = Rig::new(FAST_RETRIES);
    let data = rig.dir.path().join("small");
    let Some(disk) = SmallDisk::mount(&data) else {
        assert!(
            std::env::var("CI").is_err(),
            "CI runs as root: mounting a tmpfs must work there"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let server = rig.serve_on(&data);
    let http = &rig.http;
    let post = |i: usize| {
        let url = server.url("/responsys");
        async move {
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .body(json!({"clientId": "demo-responsys", "email": format!("disk{i}@faults.example"), "eventType": "lead", "eventId": format!("disk{i}"), "pad": "x".repeat(900)}).to_string())
                .send()
                .await
                .expect("post");
            let status = r.status().as_u16();
            let retry_after = r.headers().contains_key("retry-after");
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, retry_after, body)
        }
    };
    let health = || async {
        http.get(server.url("/health"))
            .send()
            .await
            .expect("health")
            .status()
            .as_u16()
    };
    assert_eq!(post(0).await.0, 202);
    disk.fill();
    // Writes fail: 503 with Retry-After; a 202 means the record is stored.
    let mut acked = Vec::new();
    let mut unavailable = 0;
    for i in 1..400 {
        let (status, retry_after, body) = post(i).await;
        match status {
            202 => acked.push(body["recordId"].as_str().expect("id").to_owned()),
            503 => {
                assert!(retry_after, "503 without Retry-After");
                unavailable += 1;
            }
            other => panic!("{other} {body}"),
        }
    }
    assert!(unavailable > 0, "the disk never filled up");
    assert_eq!(health().await, 503, "/health says ok while writes fail");
    disk.free();
    // Recovers without a restart.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 1000;
    loop {
        let (status, _, body) = post(i).await;
        i += 1;
        if status == 202 {
            acked.push(body["recordId"].as_str().expect("id").to_owned());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {status} after the space came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(health().await, 200);
    let db = open_db(&data);
    for id in &acked {
        assert!(
            tests::stored_record(&db, id).is_some(),
            "202 for {id}, which is not stored"
        );
    }
    eprintln!(
        "FAULT full disk: {unavailable} answered 503, {} answered 202 and stored, recovered without restart",
        acked.len()
    );
    drop(server);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expiring_every_few_seconds_leave_no_dlq_entry() {
    let rig = Rig::new(FAST_RETRIES);
    let server = rig.serve();
    rig.fault(json!({"crm": "responsys", "mode": "expire_tokens", "tokenTtlMs": 1500}))
        .await;
    let base = Arc::new(Mutex::new(server.base.clone()));
    let sent = load(rig.http.clone(), base, "expiry", 60, 6.0).await;
    let delivered = rig
        .wait_delivered(&sent.acked, Duration::from_secs(60))
        .await;
    let dead = rig.dlq("responsys-dlq");
    assert!(
        dead.is_empty(),
        "{} dead-lettered while tokens expired",
        dead.len()
    );
    report("tokens living 1.5 s", &sent, &delivered, &dead);
}
