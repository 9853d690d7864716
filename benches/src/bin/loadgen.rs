//! `ledger-loadgen`: N keep-alive clients submitting entries to a node for a bounded
//! time, reporting committed entries/s and commit latency.
//!
//! Two modes:
//! - saturation (default): clients submit as fast as answers come (202s); the
//!   committed rate is read from the node's `ledger_entries_committed_total` before
//!   and after, so it is the node's commit throughput, not its intake;
//! - `--wait`: every submit asks `?wait=commit`, optionally paced to `--rate` entries/s
//!   in total; each answer's round trip is a commit latency (p50/p99/max).
//!
//! `--batch N` sends N entries per request (`POST /v1/entries/batch`, saturation only):
//! what the same cluster commits when the client API's cost per request is shared.
//!
//! `--etcd` drives an etcd 3 cluster's JSON gateway (`POST /v3/kv/put`) with values of
//! the same size instead, for a side-by-side figure: a put answered 200 is committed
//! by etcd's Raft quorum, so every answer is a commit latency.
//!
//! `--cacert` speaks TLS to a node that serves its API over TLS, and `--token` sends a
//! bearer token, so the cost of both can be measured.
//!
//! The HTTP/1.1 client is deliberately minimal (one request shape, Content-Length
//! bodies) so the generator costs the shared CPU as little as possible.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Barrier;

#[derive(Parser, Clone)]
#[command(about = "Load generator for a ledger node")]
struct Args {
    /// The node's API: HOST:PORT, or a URL (`https://` needs --cacert) [default:
    /// LEDGERCTL_NODE, as ledgerctl reads it, else LEDGER_NODE, else 127.0.0.1:7100].
    #[arg(long)]
    addr: Option<String>,
    /// Concurrent keep-alive clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Entry data size in bytes.
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// How long to submit, seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Ask `?wait=commit` and measure each commit's latency.
    #[arg(long)]
    wait: bool,
    /// Total submits per second across clients (default: as fast as answered).
    #[arg(long)]
    rate: Option<f64>,
    /// Distinguishes this run's entries from earlier runs' (default: the clock).
    #[arg(long)]
    run_id: Option<u64>,
    /// Entries per request, through the batch submit (without waiting).
    #[arg(long, default_value_t = 1, conflicts_with_all = ["wait", "etcd"],
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    batch: u64,
    /// The target is an etcd 3 member, not a ledger node.
    #[arg(long)]
    etcd: bool,
    /// Speak TLS, trusting the CA certificates in this PEM file (whatever the scheme
    /// of --addr).
    #[arg(long)]
    cacert: Option<std::path::PathBuf>,
    /// The name the node's certificate must carry [default: the address's IP].
    #[arg(long, requires = "cacert")]
    server_name: Option<String>,
    /// Send this API token (`Authorization: Bearer`).
    #[arg(long, env = "LEDGER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Write each commit's send time since the start and latency, in ms, a line each
    /// (where in the run a tail of latencies came from).
    #[arg(long)]
    latency_log: Option<std::path::PathBuf>,
}

/// Where the clients connect, and how.
struct Target {
    addr: SocketAddr,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// Extra header lines of every request.
    headers: String,
}

impl Target {
    fn new(args: &Args) -> anyhow::Result<Target> {
        use rustls::pki_types::pem::PemObject;
        let given = args.addr.as_deref().unwrap_or("127.0.0.1:7100");
        let (https, address) = match given.split_once("://") {
            Some(("https", address)) => (true, address),
            Some(("http", address)) => (false, address),
            Some((scheme, _)) => bail!("--addr: {scheme}:// is neither http nor https"),
            None => (false, given),
        };
        let addr: SocketAddr = address
            .trim_end_matches('/')
            .parse()
            .with_context(|| format!("--addr {given}: not IP:PORT"))?;
        if https && args.cacert.is_none() {
            bail!("--addr {given}: https needs --cacert");
        }
        let tls = match &args.cacert {
            None => None,
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in rustls::pki_types::CertificateDer::pem_file_iter(path)
                    .with_context(|| format!("reading {}", path.display()))?
                {
                    roots.add(certificate.with_context(|| path.display().to_string())?)?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_protocol_versions(&[&rustls::version::TLS13])?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                let name = match &args.server_name {
                    Some(name) => rustls::pki_types::ServerName::try_from(name.clone())?,
                    None => rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
                };
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
            }
        };
        let headers = match &args.token {
            Some(token) => format!("authorization: Bearer {token}\r\n"),
            None => String::new(),
        };
        Ok(Target { addr, tls, headers })
    }
}

/// A connection's byte stream, plain or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

#[derive(Default)]
struct Tally {
    accepted: AtomicU64,
    committed: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    /// Why submits failed (status and message, or the connection error), with counts.
    failures: Mutex<BTreeMap<String, u64>>,
    /// Each commit's send time, from the start of the run, and latency.
    latencies: Mutex<Vec<(Duration, Duration)>>,
}

impl Tally {
    fn fail(&self, reason: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self
            .failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    reader: BufReader<Box<dyn Stream>>,
    headers: String,
}

impl Connection {
    async fn open(target: &Target) -> anyhow::Result<Connection> {
        let addr = target.addr;
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let stream: Box<dyn Stream> = match &target.tls {
            None => Box::new(stream),
            Some((connector, name)) => Box::new(
                connector
                    .connect(name.clone(), stream)
                    .await
                    .with_context(|| format!("TLS with {addr}"))?,
            ),
        };
        Ok(Connection {
            reader: BufReader::new(stream),
            headers: target.headers.clone(),
        })
    }

    /// Sends one request and returns the status code, reading (and dropping) the body.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        // One write per request: one TCP segment, and over TLS one record.
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: ledger\r\n{}content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            self.headers,
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let stream = self.reader.get_mut();
        stream.write_all(&request).await?;
        stream.flush().await?;
        let mut line = String::new();
        self.reader.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await? == 0 {
                bail!("connection closed mid-response");
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    bail!("chunked answers are not expected here");
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

fn entry_body(run: u64, client: usize, sequence: u64, size: usize, etcd: bool) -> Vec<u8> {
    // Unique per run, client and sequence; padded to `size` bytes of data.
    let mut data = format!("{run:x}-{client}-{sequence}-");
    while data.len() < size {
        data.push('x');
    }
    data.truncate(size.max(16));
    if etcd {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = b64.encode(format!("loadgen/{run:x}/{client}/{sequence}"));
        let value = b64.encode(&data);
        return format!("{{\"key\":\"{key}\",\"value\":\"{value}\"}}").into_bytes();
    }
    format!("{{\"data\":\"{data}\"}}").into_bytes()
}

async fn committed_total(target: &Target) -> anyhow::Result<u64> {
    let mut connection = Connection::open(target).await?;
    let (status, body) = connection.request("GET", "/metrics", b"").await?;
    if status != 200 {
        bail!("GET /metrics answered {status}");
    }
    let text = String::from_utf8_lossy(&body);
    text.lines()
        .find_map(|line| line.strip_prefix("ledger_entries_committed_total "))
        .and_then(|value| value.trim().parse().ok())
        .context("no ledger_entries_committed_total in /metrics")
}

async fn client(
    args: Args,
    target: Arc<Target>,
    run: u64,
    index: usize,
    connected: Arc<Barrier>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> anyhow::Result<Connection> {
    let opened = Connection::open(&target).await;
    // Everyone meets here even on failure, so the run starts (and then ends) either way.
    connected.wait().await;
    let mut connection = opened?;
    let path = if args.etcd {
        "/v3/kv/put"
    } else if args.batch > 1 {
        "/v1/entries/batch"
    } else if args.wait {
        "/v1/entries?wait=commit"
    } else {
        "/v1/entries"
    };
    let interval = args
        .rate
        .map(|rate| Duration::from_secs_f64(args.clients as f64 / rate));
    let started = Instant::now();
    // Each client starts its schedule at its own fraction of its period (`batch`
    // intervals), so the total arrives evenly at `--rate` instead of all clients
    // firing together once a period (a burst the size of the client count).
    let phase = index as f64 / args.clients as f64 * args.batch as f64;
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Some(interval) = interval {
            let due = started + interval.mul_f64(sequence as f64 + phase);
            tokio::time::sleep_until(due.into()).await;
        }
        let body = if args.batch > 1 {
            let items: Vec<Vec<u8>> = (sequence..sequence + args.batch)
                .map(|sequence| entry_body(run, index, sequence, args.size, false))
                .collect();
            [b"[".as_slice(), &items.join(b",".as_slice()), b"]"].concat()
        } else {
            entry_body(run, index, sequence, args.size, args.etcd)
        };
        sequence += args.batch;
        let sent = Instant::now();
        match connection.request("POST", path, &body).await {
            // A batch answers 202 with one status per item.
            Ok((202, body)) if args.batch > 1 => {
                let text = String::from_utf8_lossy(&body);
                let taken = text.matches("\"status\":202").count() as u64;
                tally.accepted.fetch_add(taken, Ordering::Relaxed);
                tally
                    .refused
                    .fetch_add(args.batch - taken, Ordering::Relaxed);
                if taken < args.batch {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Ok((200, _)) => {
                tally.committed.fetch_add(1, Ordering::Relaxed);
                tally
                    .latencies
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((sent.saturating_duration_since(started), sent.elapsed()));
            }
            Ok((202, _)) => {
                tally.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Ok((503, _)) => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok((status, body)) => {
                let body = String::from_utf8_lossy(&body);
                tally.fail(format!(
                    "HTTP {status}: {}",
                    body.chars().take(200).collect::<String>()
                ));
                connection = Connection::open(&target).await?;
            }
            Err(error) => {
                tally.fail(format!("{error:#}"));
                connection = Connection::open(&target).await?;
            }
        }
    }
    // Handed back open: the clients' connections close together once all are done,
    // not one by one while others still wait for answers (a paced run's last
    // submits then queued behind the member's teardown of its closed connections).
    Ok(connection)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    args.addr = args.addr.take().or_else(|| {
        ["LEDGERCTL_NODE", "LEDGER_NODE"]
            .into_iter()
            .find_map(|name| std::env::var(name).ok())
    });
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            bail!("--rate must be a positive number of submits per second, not {rate}");
        }
    }
    let run = args.run_id.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    });
    let target = Arc::new(Target::new(&args)?);
    let before = if args.etcd {
        0
    } else {
        committed_total(&target).await?
    };
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    // Connections are opened before the clock starts: a thousand handshakes at once
    // measure the listener, not the ledger.
    let connected = Arc::new(Barrier::new(args.clients + 1));
    let clients: Vec<_> = (0..args.clients)
        .map(|index| {
            tokio::spawn(client(
                args.clone(),
                Arc::clone(&target),
                run,
                index,
                Arc::clone(&connected),
                Arc::clone(&stop),
                Arc::clone(&tally),
            ))
        })
        .collect();
    connected.wait().await;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    stop.store(true, Ordering::Relaxed);
    let mut done = Vec::with_capacity(clients.len());
    for client in clients {
        done.push(client.await??);
    }
    let elapsed = started.elapsed();
    drop(done);
    let after = if args.etcd {
        tally.committed.load(Ordering::Relaxed)
    } else {
        committed_total(&target).await?
    };

    let seconds = elapsed.as_secs_f64();
    let committed = after - before;
    let samples = std::mem::take(&mut *tally.latencies.lock().unwrap_or_else(|p| p.into_inner()));
    if let Some(path) = &args.latency_log {
        let mut log = String::new();
        for (sent, latency) in &samples {
            log += &format!(
                "{:.3} {:.3}\n",
                sent.as_secs_f64() * 1e3,
                latency.as_secs_f64() * 1e3
            );
        }
        std::fs::write(path, log).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut latencies: Vec<Duration> = samples.into_iter().map(|(_, latency)| latency).collect();
    latencies.sort();
    println!(
        "{} clients, {} B entries, {:.1} s{}{}",
        args.clients,
        args.size,
        seconds,
        if args.etcd {
            ", etcd puts".to_string()
        } else if args.batch > 1 {
            format!(", {} entries per request", args.batch)
        } else if args.wait {
            ", wait=commit".to_string()
        } else {
            String::new()
        },
        args.rate
            .map(|rate| format!(", paced at {rate} /s"))
            .unwrap_or_default()
    );
    println!(
        "  submits: {} accepted (202), {} committed (200), {} refused (503), {} failed",
        tally.accepted.load(Ordering::Relaxed),
        tally.committed.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed)
    );
    for (reason, count) in tally
        .failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        println!("    {count} failed: {reason}");
    }
    println!(
        "  node committed {committed} entries: {:.0} entries/s",
        committed as f64 / seconds
    );
    if !latencies.is_empty() {
        println!(
            "  commit latency: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
            percentile(&latencies, 0.50).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3,
            latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
            latencies.len()
        );
    }
    Ok(())
}
