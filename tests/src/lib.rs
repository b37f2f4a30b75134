//! Helpers for the end-to-end tests: run the real `connect` binary as a child process on
//! a free port with its own data directory, and read what landed in its SQLite file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long a server may take to print its address and answer `/health`.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The `connect` binary: `$CONNECT_BIN`, else next to the test executable's `deps/`.
pub fn connect_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CONNECT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(format!("connect{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p connect), or set CONNECT_BIN",
        bin.display()
    );
    bin
}

/// A running `connect` process.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The in-process sandbox's URL, when it printed one.
    pub sandbox: Option<String>,
    /// Its stderr (JSON logs).
    pub log: PathBuf,
}

impl Process {
    /// Starts `connect --data DATA ARGS… --listen 127.0.0.1:0` and waits until it serves
    /// `/health` (for `serve`).
    pub fn serve(data: &Path, args: &[&str]) -> Process {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0"];
        if !args.contains(&"--sandbox-url") {
            all.extend_from_slice(&["--sandbox-listen", "127.0.0.1:0"]);
        }
        all.extend_from_slice(args);
        Process::spawn(data, &all, "/health")
    }

    /// Starts `connect --data DATA ARGS…`, reads the listen address from its first stdout
    /// line (`… listening on http://ADDR`), and waits for `ready_path` to answer 200.
    pub fn spawn(data: &Path, args: &[&str], ready_path: &str) -> Process {
        std::fs::create_dir_all(data).expect("data dir");
        let log = data.join(format!(
            "connect-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let mut child = Command::new(connect_bin())
            .arg("--data")
            .arg(data)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn connect");
        let stdout = child.stdout.take().expect("stdout");
        // The line that says the process serves: its own, or the standalone sandbox's.
        let ready = if args.first() == Some(&"sandbox") {
            "connect sandbox listening on"
        } else {
            "connect listening on"
        };
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).map(|n| n == 0).unwrap_or(true) {
                    break;
                }
                let done = line.starts_with(ready);
                lines.push(line);
                if done {
                    break;
                }
            }
            let _ = tx.send(lines.join(""));
            // Keep draining so the child never blocks on a full pipe.
            let mut sink = String::new();
            while reader.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
                sink.clear();
            }
        });
        let output = rx.recv_timeout(STARTUP_TIMEOUT).unwrap_or_default();
        let url_of = |prefix: &str| {
            output
                .lines()
                .find(|l| l.starts_with(prefix))
                .and_then(|l| l.trim().rsplit(' ').next())
                .filter(|s| s.starts_with("http://"))
                .map(str::to_owned)
        };
        let sandbox = url_of("connect sandbox listening on");
        let Some(base) = url_of(ready) else {
            let _ = child.kill();
            let logs = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("connect did not start (stdout: {output:?}); logs:\n{logs}");
        };
        let process = Process {
            child,
            base,
            sandbox,
            log,
        };
        process.wait_ready(ready_path);
        process
    }

    fn wait_ready(&self, path: &str) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = self.base.trim_start_matches("http://").to_owned();
        while Instant::now() < deadline {
            if http_get_status(&addr, path) == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{}{path} never answered 200", self.base);
    }

    /// `base + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("connect did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The logs written so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// A minimal blocking HTTP GET (readiness checks without a runtime).
fn http_get_status(addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let head = std::str::from_utf8(&buf[..n]).ok()?;
    head.split(' ').nth(1)?.parse().ok()
}

/// Opens the server's SQLite file read-only (WAL allows it while the server runs).
pub fn open_db(data: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(
        data.join("connect.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open connect.db")
}

/// The stored record with this id, as JSON.
pub fn stored_record(db: &rusqlite::Connection, record_id: &str) -> Option<serde_json::Value> {
    let item: Option<String> = db
        .query_row(
            "SELECT item FROM navigation WHERE record_id = ?1",
            [record_id],
            |r| r.get(0),
        )
        .ok();
    item.map(|s| serde_json::from_str(&s).expect("record json"))
}

/// Runs `connect` with `args` and extra environment variables, to completion.
pub fn connect(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(connect_bin());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run connect")
}

/// What a finished command printed: stdout, then stderr.
pub fn output_text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Every record the sandbox CRMs received so far.
pub async fn sandbox_records(http: &reqwest::Client, sandbox: &str) -> Vec<serde_json::Value> {
    http.get(format!("{sandbox}/_sandbox/records"))
        .send()
        .await
        .expect("records")
        .json()
        .await
        .expect("json")
}

/// The Prometheus text of a server's `/metrics` (`url` is that endpoint's URL).
pub async fn metrics_text(http: &reqwest::Client, url: &str) -> String {
    http.get(url)
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// Runs `connect` (which must succeed) and parses what it printed as JSON.
pub fn connect_json(args: &[&str], env: &[(&str, &str)]) -> serde_json::Value {
    let out = connect(args, env);
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).expect("json on stdout")
}
