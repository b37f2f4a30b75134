//! Graceful shutdown, restart on the same data, and crash safety.

use serde_json::json;
use tests::{Process, open_db};

async fn post_event(http: &reqwest::Client, server: &Process) -> reqwest::Response {
    let event = json!({"clientId": "demo-responsys", "email": "ana@example.com",
        "eventType": "product_view", "eventId": "e-1"});
    http.post(server.url("/responsys"))
        .header("content-type", "application/json")
        .body(event.to_string())
        .send()
        .await
        .expect("post")
}

#[tokio::test]
async fn sigterm_stops_cleanly_and_data_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut server = Process::serve(&data, &["--demo"]);
    let http = reqwest::Client::new();
    let res = post_event(&http, &server).await;
    assert_eq!(res.status(), 202);
    let status = server.terminate();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        server.logs()
    );
    assert!(server.logs().contains("stopped cleanly"));
    let wal = data.join("connect.db-wal");
    assert!(
        !wal.exists() || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) == 0,
        "the WAL is checkpointed on shutdown"
    );

    let server = Process::serve(&data, &["--demo"]);
    let res = post_event(&http, &server).await;
    assert_eq!(
        res.status(),
        200,
        "the event stored before the restart is a duplicate now"
    );
    let count: i64 = open_db(&data)
        .query_row("SELECT COUNT(*) FROM navigation", [], |r| r.get(0))
        .expect("count");
    assert_eq!(count, 1);
}

#[test]
fn bad_config_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[server]\nlisen = \"127.0.0.1:1\"\n").expect("write");
    let out = std::process::Command::new(tests::connect_bin())
        .args(["--data"])
        .arg(dir.path().join("data"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lisen"), "{stderr}");
}

#[test]
fn a_target_with_a_conflicting_key_stops_the_start_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        "[[clients]]\nclient_id = \"shop\"\ncrm = \"responsys\"\nallowed_origins = [\"https://shop.example\"]\ntarget = { profile_list = \"A\", list_name = \"B\" }\n",
    )
    .expect("config");
    let out = std::process::Command::new(tests::connect_bin())
        .args(["--data"])
        .arg(dir.path().join("data"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("clients[0] (shop)") && err.contains("list_name"),
        "{err}"
    );
}

#[tokio::test]
async fn a_client_removed_from_the_file_is_deactivated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = dir.path().join("c.toml");
    let client = |id: &str| {
        format!("[[clients]]\nclient_id = \"{id}\"\ncrm = \"responsys\"\nrequire_origin = false\n")
    };
    std::fs::write(&config, client("keep") + &client("gone")).expect("config");
    let mut first = tests::Process::serve(&data, &["--config", config.to_str().expect("path")]);
    assert!(first.terminate().success());
    std::fs::write(&config, client("keep")).expect("config");
    let second = tests::Process::serve(&data, &["--config", config.to_str().expect("path")]);
    let http = reqwest::Client::new();
    let post = |id: &str| {
        http.post(second.url("/responsys"))
            .header("content-type", "application/json")
            .body(
                serde_json::json!({"clientId": id, "email": "a@b.co", "eventType": "lead"})
                    .to_string(),
            )
            .send()
    };
    assert_eq!(post("keep").await.expect("post").status(), 202);
    let gone = post("gone").await.expect("post");
    assert_eq!(gone.status(), 404);
    let body: serde_json::Value = gone.json().await.expect("json");
    assert_eq!(body["error"], "inactive_client");
}

#[test]
fn logs_are_json_for_machines_and_lines_for_people() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut pretty =
        tests::Process::serve(&dir.path().join("a"), &["--demo", "--log-format", "pretty"]);
    assert!(pretty.terminate().success());
    let logs = pretty.logs();
    assert!(
        logs.contains(" INFO ") && logs.contains("connect serve started"),
        "{logs}"
    );
    assert!(!logs.contains("{\"timestamp\""), "{logs}");
    // Not a terminal (a file, here): JSON by default.
    let mut json = tests::Process::serve(&dir.path().join("b"), &["--demo"]);
    assert!(json.terminate().success());
    assert!(
        json.logs().lines().all(|l| l.starts_with('{')),
        "{}",
        json.logs()
    );
}
