//! `connect`: run the pipeline locally and operate it.

mod alerts;
mod bench;
mod clients;
mod config;
mod dlq;
mod http_server;
mod metrics;
mod privacy;
mod replay;
mod runtime;
mod serve;
mod status;
mod tokens;
mod trace;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;

/// Connect: GTM events → Responsys, Salesforce Marketing Cloud, RD Station.
#[derive(Debug, Parser)]
#[command(name = "connect", version, about)]
struct Cli {
    /// Local store directory [default: ./data].
    #[arg(long, global = true, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Log format: `pretty` (one short line per event, colours on a terminal), `json`
    /// (structured, for machines) [default: pretty on a terminal, json elsewhere].
    #[arg(long, global = true, value_name = "FORMAT")]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// JSON lines.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline in one process on the embedded SQLite store.
    Serve {
        /// TOML configuration file (see connect.example.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Configure the demo clients (demo-responsys, demo-salesforce, demo-rdstation).
        #[arg(long)]
        demo: bool,
        /// Address to listen on [default: 127.0.0.1:3000].
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Benchmarks only: validate events but store nothing (measures the HTTP ceiling).
        #[arg(long, hide = true)]
        discard: bool,
        /// Benchmarks only: run no delivery workers.
        #[arg(long, hide = true)]
        no_deliver: bool,
        /// Benchmarks only: store events but hand nothing on (no fanout, no delivery):
        /// what accepting alone costs. The records wait in the feed; a later `serve`
        /// hands them on.
        #[arg(long, hide = true, conflicts_with = "discard")]
        no_fanout: bool,
        /// Where the in-process sandbox CRMs listen with --demo [default: 127.0.0.1:3900].
        #[arg(long, value_name = "ADDR", conflicts_with = "sandbox_url")]
        sandbox_listen: Option<SocketAddr>,
        /// Point the demo clients at an already running `connect sandbox`.
        #[arg(long, value_name = "URL")]
        sandbox_url: Option<String>,
    },
    /// Run the sandbox CRMs (fake Responsys, SFMC, RD Station) on their own.
    Sandbox {
        /// Address to listen on.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3900")]
        listen: SocketAddr,
    },
    /// Inspect and redrive the dead-letter queues.
    Dlq {
        /// Use AWS (default credential chain; queue URLs from QUEUE_URL_{CRM} and
        /// DLQ_URL_{CRM}, or --queue-url / --dlq-url) instead of the local store.
        #[arg(long, global = true)]
        aws: bool,
        /// The delivery queue's URL (--aws).
        #[arg(long, global = true, value_name = "URL")]
        queue_url: Option<String>,
        /// The DLQ's URL (--aws).
        #[arg(long, global = true, value_name = "URL")]
        dlq_url: Option<String>,
        /// JSON output.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Re-route stored records to the delivery queues (after a stream failure, or to
    /// deliver again). At least once: records already delivered are delivered again.
    Replay {
        /// Records received at or after: 2026-12-01T10:00:00Z, 2026-12-01, or 6h / 90m / 2d ago.
        #[arg(long, value_name = "T")]
        since: String,
        /// Records received before [default: now].
        #[arg(long, value_name = "T")]
        until: Option<String>,
        /// Only this client.
        #[arg(long, value_name = "ID")]
        client: Option<String>,
        /// Only this CRM.
        #[arg(long, value_name = "CRM")]
        crm: Option<domain::Crm>,
        /// Count what would be replayed; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Use AWS: the table named by NAVIGATION_TABLE, the queues of QUEUE_URL_{CRM} /
        /// DLQ_URL_{CRM}.
        #[arg(long)]
        aws: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// How each client's traffic is doing: accepted, refused, delivered, retried,
    /// dead-lettered, last event, queue depth, token — flagged when it needs attention.
    Status {
        /// Only this client.
        #[arg(long, value_name = "ID")]
        client: Option<String>,
        /// The window [default: 1h].
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// AWS: CloudWatch metrics, the queues' attributes and the tokens table
        /// (CLIENTS_TABLE, RDSTATION_CONFIG_TABLE, TOKENS_TABLE, QUEUE_URL_{CRM}, DLQ_URL_{CRM}).
        #[arg(long)]
        aws: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Where one event is: stored, routed, each delivery attempt, its queue or DLQ, and
    /// whether its email is suppressed.
    Trace {
        /// A record id (as answered by the 202).
        record_id: Option<String>,
        /// With --email: the client's records of that email.
        #[arg(long, value_name = "ID")]
        client: Option<String>,
        /// With --client.
        #[arg(long, value_name = "E")]
        email: Option<String>,
        /// Records received at or after [default: 48h].
        #[arg(long, value_name = "T")]
        since: Option<String>,
        /// Show emails in clear (audited).
        #[arg(long)]
        show_pii: bool,
        /// AWS: the navigation table and a Logs Insights query (RECORD_ID only).
        #[arg(long)]
        aws: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Clients: list, show, put (validated), enable, disable, remove, validate, their
    /// credentials secret, RD Station tid mappings.
    Clients {
        /// Use AWS (CLIENTS_TABLE, RDSTATION_CONFIG_TABLE, Secrets Manager).
        #[arg(long, global = true)]
        aws: bool,
        /// JSON output.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: ClientsCommand,
    },
    /// LGPD: erase a person (by email) and keep them out, or lift that.
    Privacy {
        /// Use AWS: NAVIGATION_TABLE, SUPPRESSION_TABLE, QUEUE_URL_{CRM} / DLQ_URL_{CRM},
        /// and the installation key in Secrets Manager.
        #[arg(long, global = true)]
        aws: bool,
        /// Secrets file holding the installation key [default: DATA/secrets.json].
        #[arg(long, global = true, value_name = "FILE")]
        secrets: Option<PathBuf>,
        /// JSON output.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: PrivacyCommand,
    },
    /// CRM tokens: expiry and last refresh per client.
    Tokens {
        /// JSON output.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: Option<TokensCommand>,
    },
    /// Benchmarks and load generation.
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Per CRM: depth, oldest message age, counts by failureReason.
    List {
        /// Only this CRM (required with --dlq-url).
        crm: Option<domain::Crm>,
    },
    /// Show dead-lettered messages (emails masked unless --show-pii).
    Peek {
        /// responsys, salesforce or rdstation.
        crm: domain::Crm,
        /// How many.
        #[arg(short = 'n', default_value_t = 10)]
        n: usize,
        /// Only this client.
        #[arg(long, value_name = "ID")]
        client: Option<String>,
        /// Show emails in clear.
        #[arg(long)]
        show_pii: bool,
    },
    /// Move messages back to the CRM's delivery queue.
    Redrive {
        /// responsys, salesforce or rdstation.
        crm: domain::Crm,
        /// Only this client.
        #[arg(long, value_name = "ID")]
        client: Option<String>,
        /// Only this failureReason.
        #[arg(long, value_name = "R")]
        reason: Option<String>,
        /// At most this many.
        #[arg(long, value_name = "N")]
        max: Option<u64>,
        /// At most this many per second.
        #[arg(long, value_name = "PER_SEC")]
        rate: Option<f64>,
        /// Count what would move; move nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Delete dead-lettered messages for good.
    Purge {
        /// responsys, salesforce or rdstation.
        crm: domain::Crm,
        /// Confirm.
        #[arg(long)]
        yes: bool,
        /// Only this client.
        #[arg(long, value_name = "ID")]
        client: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Refresh now (all active clients, or one).
    Refresh {
        /// Only this client.
        #[arg(long, value_name = "ID")]
        client: Option<String>,
        /// Credentials file [default: DATA/secrets.json].
        #[arg(long, value_name = "FILE")]
        secrets: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ClientsCommand {
    /// Every client.
    List,
    /// One client, as stored.
    Show {
        /// Client id.
        id: String,
    },
    /// Create or replace the clients (and RD Station mappings) of a TOML file in the
    /// format of connect.toml; refused, naming the key, when invalid.
    Put {
        /// The file.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
    },
    /// Accept a client's events again.
    Enable {
        /// Client id.
        id: String,
    },
    /// Refuse a client's events (404) without deleting it.
    Disable {
        /// Client id.
        id: String,
    },
    /// Delete a client.
    Remove {
        /// Client id.
        id: String,
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
    /// Authenticate with the client's CRM (real or sandbox) without writing anything,
    /// and check its settings; prints OK or what to fix.
    Test {
        /// Client id.
        id: String,
    },
    /// Check a file, or every stored client.
    Validate {
        /// A TOML file in the format of connect.toml.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// The client's credentials secret.
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// RD Station: which client a GA4 tid belongs to.
    Rdstation {
        #[command(subcommand)]
        command: RdstationCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SecretCommand {
    /// Store the credentials JSON of a file (never from the command line), checked
    /// against the client's CRM.
    Set {
        /// Client id.
        id: String,
        /// The JSON file.
        #[arg(long, value_name = "FILE")]
        from_file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum RdstationCommand {
    /// Map a GA4 client id (tid) to a client.
    Map {
        /// The tid.
        tid: String,
        /// Client id.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum PrivacyCommand {
    /// Delete the person's records and queued and dead-lettered messages, and suppress
    /// their email (for one client, or for all).
    Erase {
        /// The person's email.
        #[arg(long)]
        email: String,
        /// Only for this client [default: every client].
        #[arg(long, value_name = "ID")]
        client: Option<String>,
        /// Who asks, for the audit trail [default: $USER].
        #[arg(long, value_name = "NAME")]
        actor: Option<String>,
    },
    /// Lift a suppression (e.g. after a new consent).
    Unsuppress {
        /// The person's email.
        #[arg(long)]
        email: String,
        /// The client's suppression [default: the global one].
        #[arg(long, value_name = "ID")]
        client: Option<String>,
        /// Who asks, for the audit trail [default: $USER].
        #[arg(long, value_name = "NAME")]
        actor: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Open-loop load on an ingest route at a fixed rate (demo clients); prints a JSON
    /// report with answers by status and latency percentiles.
    Load {
        /// Base URL of a running `connect serve`.
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        /// Route: responsys, salesforce or rdstation.
        #[arg(long, default_value = "salesforce")]
        route: String,
        /// Requests per second.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Seconds of load.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// End-to-end latency per route: 202 → arrival at the sandbox CRM (p50, p99, max),
    /// and how many accepted events never arrived. Against `serve --demo`.
    Latency {
        /// Base URL of a running `connect serve --demo`.
        #[arg(long, default_value = "http://127.0.0.1:3000")]
        url: String,
        /// Base URL of its sandbox.
        #[arg(long, default_value = "http://127.0.0.1:3900")]
        sandbox: String,
        /// Routes, comma-separated [default: every destination].
        #[arg(long, value_delimiter = ',')]
        routes: Vec<String>,
        /// Events per second on each route.
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Seconds of load per route.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Seconds to wait for the last arrivals.
        #[arg(long, default_value_t = 30)]
        wait_seconds: u64,
    },
    /// A bare axum server answering 202 (the HTTP ceiling, for benchmarks).
    Bare {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

/// Log lines queued for the writer thread before a logging thread waits for it (never
/// dropped: `lossy(false)`). tracing-appender's default, 128,000, is a channel whose
/// 128,000 slots are all written when it is made: 4 MB resident from the start. 16,384
/// lines still absorb a third of a second of request lines at 45,000 requests/s.
const LOG_BUFFER_LINES: usize = 16_384;

fn init_tracing(
    default_level: &str,
    format: Option<LogFormat>,
) -> tracing_appender::non_blocking::WorkerGuard {
    use std::io::IsTerminal;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(false)
        .finish(std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let terminal = std::io::stderr().is_terminal();
    let format = format.unwrap_or(if terminal {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    match format {
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_env_filter(filter)
            .with_writer(writer)
            .init(),
        LogFormat::Pretty => tracing_subscriber::fmt()
            .compact()
            .with_target(false)
            .with_ansi(terminal)
            .with_env_filter(filter)
            .with_writer(writer)
            .init(),
    }
    guard
}

/// The local store in `data`, opened as a tool (next to a running server), or a one-line
/// error when there is none.
/// The error of `--aws` in a build without the `aws` feature.
#[cfg(not(feature = "aws"))]
pub(crate) fn no_aws() -> anyhow::Error {
    anyhow::anyhow!(
        "this connect was built without AWS support (the default, to keep local builds small): rebuild with `cargo install --path connect --features aws`, or run `cargo run -p connect --features aws -- …`"
    )
}

/// The destinations that keep tokens (the others sign with their secret).
pub(crate) fn token_destinations() -> impl Iterator<Item = domain::Crm> {
    domain::Crm::all().filter(|c| crm::destination(*c).auth_policy().token().is_some())
}

pub(crate) fn open_tool_store(data: &std::path::Path) -> anyhow::Result<local::SqliteStore> {
    anyhow::ensure!(
        data.join(local::store::DB_FILE).exists(),
        "no store in {} (start `connect serve --data {}` first, pass --data DIR, or --aws)",
        data.display(),
        data.display()
    );
    Ok(local::SqliteStore::open(
        data,
        local::StoreOptions {
            tool: true,
            ..local::StoreOptions::default()
        },
    )?)
}

fn main() -> std::process::ExitCode {
    // No transparent huge pages for this process, also where the system enables them for
    // every mapping (`always`): a 2 MiB page per touched allocator region would double
    // the resident set for no measurable CPU gain (BENCHMARKS.md). Best effort.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let cli = Cli::parse();
    // The server logs every request; operator commands only say what went wrong.
    let level = if matches!(cli.command, Command::Serve { .. }) {
        "info"
    } else {
        "warn"
    };
    let _guard = init_tracing(level, cli.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if matches!(cli.command, Command::Serve { .. }) {
        serve::tune_runtime(&mut builder);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The command runs as a spawned task so that all its work is spread over the worker
    // threads (a future driven by `block_on` itself runs on the main thread only).
    let task = runtime.spawn(async move {
        match cli.command {
            Command::Serve {
                config,
                demo,
                listen,
                discard,
                no_deliver,
                no_fanout,
                sandbox_listen,
                sandbox_url,
            } => {
                serve::run(serve::ServeOptions {
                    config,
                    data_dir: cli.data,
                    listen,
                    demo,
                    discard,
                    no_deliver,
                    no_fanout,
                    sandbox_listen,
                    sandbox_url,
                })
                .await
            }
            Command::Dlq { aws, queue_url, dlq_url, json, command } => {
                let data = cli.data.clone().unwrap_or_else(|| PathBuf::from(config::DEFAULT_DATA_DIR));
                let crm_of = |c: &DlqCommand| match c {
                    DlqCommand::List { .. } => None,
                    DlqCommand::Peek { crm, .. } | DlqCommand::Redrive { crm, .. } | DlqCommand::Purge { crm, .. } => Some(*crm),
                };
                let backend_for = |crm: domain::Crm| {
                    let (queue_url, dlq_url, data) = (queue_url.clone(), dlq_url.clone(), data.clone());
                    async move {
                        if aws { dlq::open_aws(crm, queue_url, dlq_url).await } else { dlq::open_local(&data) }
                    }
                };
                match (crm_of(&command), command) {
                    (_, DlqCommand::List { crm }) => {
                        let crms: Vec<domain::Crm> = match (crm, aws, &dlq_url) {
                            (Some(c), _, _) => vec![c],
                            (None, true, Some(_)) => anyhow::bail!("pass the CRM: connect dlq list CRM --aws --dlq-url URL"),
                            (None, true, None) => domain::Crm::all()
                                .filter(|c| std::env::var(format!("DLQ_URL_{}", c.as_str().to_uppercase())).is_ok())
                                .collect(),
                            (None, false, _) => domain::Crm::all().collect::<Vec<_>>(),
                        };
                        anyhow::ensure!(!crms.is_empty(), "no DLQ configured: set DLQ_URL_{{CRM}} ({}), or pass CRM --dlq-url URL", domain::Crm::all().map(|c| c.as_str().to_uppercase()).collect::<Vec<_>>().join(", "));
                        let mut targets = Vec::new();
                        for c in crms {
                            targets.push((c, backend_for(c).await?));
                        }
                        dlq::list(targets, json).await
                    }
                    (Some(crm), DlqCommand::Peek { n, client, show_pii, .. }) => {
                        dlq::peek(backend_for(crm).await?, crm, n, client.as_deref(), show_pii, json).await
                    }
                    (Some(crm), DlqCommand::Redrive { client, reason, max, rate, dry_run, .. }) => {
                        dlq::redrive(backend_for(crm).await?, crm, dlq::Filter { client, reason }, max, rate, dry_run).await
                    }
                    (Some(crm), DlqCommand::Purge { yes, client, .. }) => {
                        dlq::purge(backend_for(crm).await?, crm, client, yes).await
                    }
                    (None, _) => Ok(()),
                }
            }
            Command::Replay { since, until, client, crm, dry_run, aws, json } => {
                use domain::Clock;
                let data = cli.data.clone().unwrap_or_else(|| PathBuf::from(config::DEFAULT_DATA_DIR));
                let now = domain::SystemClock.now_ms();
                let selection = replay::Selection {
                    since_ms: replay::parse_time(&since, now).context("--since")?,
                    until_ms: match until {
                        Some(u) => replay::parse_time(&u, now).context("--until")?,
                        None => now + 1,
                    },
                    client: client
                        .map(|c| domain::ClientId::parse(&c).map_err(|e| anyhow::anyhow!("--client: {e}")))
                        .transpose()?,
                    crm,
                };
                replay::run(&data, aws, selection, dry_run, json).await
            }
            Command::Status { client, since, aws, json } => {
                use domain::Clock;
                let data = cli.data.clone().unwrap_or_else(|| PathBuf::from(config::DEFAULT_DATA_DIR));
                let since_ms = replay::parse_time(since.as_deref().unwrap_or("1h"), domain::SystemClock.now_ms()).context("--since")?;
                if aws {
                    status::run_aws(client.as_deref(), since_ms, json).await
                } else {
                    status::run(&data, client.as_deref(), since_ms, json).await
                }
            }
            Command::Trace { record_id, client, email, since, show_pii, aws, json } => {
                use domain::Clock;
                let data = cli.data.clone().unwrap_or_else(|| PathBuf::from(config::DEFAULT_DATA_DIR));
                if aws {
                    let Some(id) = record_id else {
                        anyhow::bail!("--aws traces a RECORD_ID");
                    };
                    return trace::run_aws(&id, json).await;
                }
                let now = domain::SystemClock.now_ms();
                let since_ms = replay::parse_time(since.as_deref().unwrap_or("48h"), now).context("--since")?;
                trace::run_local(
                    &data,
                    trace::Query {
                        record_id: record_id.as_deref(),
                        client: client.as_deref(),
                        email: email.as_deref(),
                        since_ms,
                        show_pii,
                        json,
                    },
                )
                .await
            }
            Command::Clients { aws, json, command } => {
                let data = cli.data.clone().unwrap_or_else(|| PathBuf::from(config::DEFAULT_DATA_DIR));
                let action = match &command {
                    ClientsCommand::List => clients::Action::List,
                    ClientsCommand::Show { id } => clients::Action::Show(id),
                    ClientsCommand::Put { file } => clients::Action::Put(file),
                    ClientsCommand::Enable { id } => clients::Action::SetActive(id, true),
                    ClientsCommand::Disable { id } => clients::Action::SetActive(id, false),
                    ClientsCommand::Remove { id, yes } => clients::Action::Remove(id, *yes),
                    ClientsCommand::Validate { file } => clients::Action::Validate(file.as_deref()),
                    ClientsCommand::Test { id } => clients::Action::Test(id),
                    ClientsCommand::Secret { command: SecretCommand::Set { id, from_file } } => {
                        clients::Action::SetSecret(id, from_file)
                    }
                    ClientsCommand::Rdstation { command: RdstationCommand::Map { tid, id } } => {
                        clients::Action::MapTid(tid, id)
                    }
                };
                clients::run(&data, aws, json, action).await
            }
            Command::Privacy { aws, secrets, json, command } => {
                let data = cli.data.clone().unwrap_or_else(|| PathBuf::from(config::DEFAULT_DATA_DIR));
                let (erase, email, client, actor) = match command {
                    PrivacyCommand::Erase { email, client, actor } => (true, email, client, actor),
                    PrivacyCommand::Unsuppress { email, client, actor } => (false, email, client, actor),
                };
                privacy::run(privacy::Command {
                    data: &data,
                    secrets: secrets.as_deref(),
                    aws,
                    erase,
                    email: &email,
                    client: client.as_deref(),
                    actor,
                    json,
                })
                .await
            }
            Command::Tokens { json, command } => {
                let data = cli.data.clone().unwrap_or_else(|| PathBuf::from(config::DEFAULT_DATA_DIR));
                match command {
                    None => tokens::list(&data, json).await,
                    Some(TokensCommand::Refresh { client, secrets }) => {
                        tokens::refresh(&data, secrets.as_deref(), client.as_deref()).await
                    }
                }
            }
            Command::Sandbox { listen } => {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                println!("connect sandbox listening on http://{}", listener.local_addr()?);
                tokio::select! {
                    r = sandbox::serve(listener, sandbox::Sandbox::default()) => r.map_err(Into::into),
                    _ = tokio::signal::ctrl_c() => Ok(()),
                }
            }
            Command::Bench {
                command:
                    BenchCommand::Load {
                        url,
                        route,
                        rate,
                        seconds,
                    },
            } => {
                bench::load(bench::LoadOptions {
                    url,
                    route,
                    rate,
                    seconds,
                })
                .await
            }
            Command::Bench {
                command:
                    BenchCommand::Latency {
                        url,
                        sandbox,
                        routes,
                        rate,
                        seconds,
                        wait_seconds,
                    },
            } => {
                bench::latency(bench::LatencyOptions {
                    url,
                    sandbox,
                    routes: if routes.is_empty() {
                        domain::Crm::all().map(|c| c.as_str().to_owned()).collect()
                    } else {
                        routes
                    },
                    rate,
                    seconds,
                    wait: std::time::Duration::from_secs(wait_seconds),
                })
                .await
            }
            Command::Bench {
                command: BenchCommand::Bare { listen },
            } => bench::bare(listen).await,
        }
    });
    let result = runtime
        .block_on(task)
        .unwrap_or_else(|e| Err(anyhow::anyhow!("the command panicked: {e}")));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
