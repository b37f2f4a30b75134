//! The GTM template end to end in a real browser: headless Chromium opens a page of the
//! client's allowed origin that loads the pixel URL the template builds (computed by the
//! Node harness from gtm/template.tpl), and the event reaches the sandbox CRM.

use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};
use tests::Process;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn chromium() -> Option<String> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(str::to_owned)
}

/// Serves `html` at `/` until the test ends.
async fn page_server(listener: tokio::net::TcpListener, html: String) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            return;
        };
        let html = html.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{html}",
                html.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
        });
    }
}

#[tokio::test]
async fn a_page_firing_the_template_pixel_delivers_the_event() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var("CI").is_err(),
            "CI installs Chromium (scripts/test): the browser test must run there"
        );
        eprintln!("skipped: no Chromium (apt-get install chromium)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let sandbox = Process::spawn(
        &dir.path().join("sb"),
        &["sandbox", "--listen", "127.0.0.1:0"],
        "/_sandbox/records",
    );
    let page = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let page_origin = format!("http://{}", page.local_addr().expect("addr"));
    let secrets = dir.path().join("secrets.json");
    std::fs::write(
        &secrets,
        json!({"/connect/responsys/shop-browser/credentials": {"username": "shop-browser", "password": "pw", "loginUrl": format!("{}/responsys", sandbox.base)}}).to_string(),
    )
    .expect("secrets");
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "[secrets]\nfile = \"{}\"\n\n[[clients]]\nclient_id = \"shop-browser\"\ncrm = \"responsys\"\nallowed_origins = [\"{page_origin}\"]\nsecret_name = \"/connect/responsys/shop-browser/credentials\"\n",
            secrets.display()
        ),
    )
    .expect("config");
    let server = Process::serve(
        &dir.path().join("data"),
        &["--config", config.to_str().expect("path")],
    );
    // The URL the template builds, from the template's own code (Node harness).
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gtm/test/build-url.js");
    let out = std::process::Command::new("node")
        .arg(&harness)
        .args([
            &server.base,
            "responsys",
            "shop-browser",
            "browser.shopper@example.com",
            "lead",
        ])
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pixel = String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned();
    assert!(pixel.contains("/responsys/p?d="), "{pixel}");
    tokio::spawn(page_server(
        page,
        format!(
            "<!doctype html><html><body><h1>Shop</h1><img src=\"{pixel}\" alt=\"\"></body></html>"
        ),
    ));
    let profile = dir.path().join("chromium-profile");
    let mut cmd = std::process::Command::new(&browser);
    cmd
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            // A shopper's browser: the headless user agent is filtered as a bot.
            "--user-agent=Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("{page_origin}/"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || cmd.status()),
    )
    .await
    .expect("chromium finished")
    .expect("join")
    .expect("chromium ran");
    assert!(status.success(), "chromium: {status}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let records = tests::sandbox_records(&http, &sandbox.base).await;
        if let Some(r) = records
            .iter()
            .find(|r| r["email"] == "browser.shopper@example.com")
        {
            assert_eq!(r["clientId"], "shop-browser");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the browser's event never reached the CRM; server logs:\n{}",
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
