//! `ledgerctl`: the ledger's command-line client.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ledger::api::types::{EntryView, ReceiptView, StatusView, SubmitRequest};
use ledger::api::ErrorBody;
use ledger::chain::{ChainSpec, Entry, Hash, Receipt};
use ledger::config;
use serde_json::Value;

#[derive(Parser)]
#[command(name = "ledgerctl", version = ledger::cli::VERSION, about = "Client of a ledger node")]
struct Cli {
    /// The node's API: a URL, or HOST:PORT for plain HTTP [default: LEDGER_NODE, else
    /// http://127.0.0.1:7100].
    #[arg(long, env = "LEDGERCTL_NODE", global = true)]
    node: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submit an entry: DATA, or --file, or standard input.
    Submit {
        /// The entry's data as text.
        data: Option<String>,
        /// Read the data from this file ("-" for standard input).
        #[arg(long, conflicts_with = "data")]
        file: Option<PathBuf>,
        /// Wait for the commit and print the receipt.
        #[arg(long)]
        wait: bool,
        /// Sign as the author with this key file (see `keygen`).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Show an entry and, once committed, its receipt.
    Get {
        /// Entry id (hex).
        id: String,
    },
    /// List blocks.
    Blocks {
        /// First height.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most blocks (at most 100).
        #[arg(long, default_value_t = 20)]
        limit: u64,
    },
    /// Show the node's status.
    Status,
    /// Probe the node as a health check does: exit 0 when it is alive (with --ready:
    /// ready to serve), 1 with the reason when not. Gives up after 5 seconds.
    Health {
        /// Ask whether it is ready (`/readyz`), not only alive (`/healthz`).
        #[arg(long)]
        ready: bool,
    },
    /// Check a receipt offline against a genesis file: inclusion proof, header, proof
    /// of work, commit certificate. Exits non-zero with the reason if anything is off.
    Verify {
        /// A saved answer of `submit --wait` or `get` ("-" for standard input).
        receipt: PathBuf,
        /// The chain's genesis file.
        #[arg(long)]
        genesis: PathBuf,
    },
    /// Create an author key file and print its public key.
    Keygen {
        /// Where to write the key (created, never overwritten, mode 0600).
        #[arg(long)]
        out: PathBuf,
    },
    /// Print a shell completion script (e.g. `ledgerctl completions bash >
    /// /etc/bash_completion.d/ledgerctl`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ledgerctl: {}", ledger::cli::describe(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// A small HTTP client that turns non-2xx answers into the server's error message.
struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    fn new(base: &str) -> Client {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(330)))
            .build()
            .into();
        let base = base.trim_end_matches('/');
        // `--node 127.0.0.1:7100` means the node's plain HTTP API there.
        let base = match base.contains("://") {
            true => base.to_owned(),
            false => format!("http://{base}"),
        };
        Client { base, agent }
    }

    fn answer(
        &self,
        what: &str,
        response: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut response =
            response.with_context(|| format!("{what}: cannot reach {}", self.base))?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("{what}: reading the answer"))?;
        if !status.is_success() {
            match serde_json::from_str::<ErrorBody>(&text) {
                Ok(error) => bail!("{what}: {status} {}: {}", error.error, error.message),
                Err(_) => bail!("{what}: {status}: {text}"),
            }
        }
        serde_json::from_str(&text).with_context(|| format!("{what}: the answer is not JSON"))
    }

    fn get(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.answer(&format!("GET {path}"), self.agent.get(&url).call())
    }

    /// A probe's answer: its text when 2xx.
    fn probe(&self, path: &str) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let mut response = self
            .agent
            .get(&url)
            .config()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .call()
            .with_context(|| format!("GET {path}: cannot reach {}", self.base))?;
        let status = response.status();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        if !status.is_success() {
            match serde_json::from_str::<ErrorBody>(&text) {
                Ok(error) => bail!("GET {path}: {status} {}: {}", error.error, error.message),
                Err(_) => bail!("GET {path}: {status}: {}", text.trim()),
            }
        }
        Ok(text.trim().to_owned())
    }

    fn post(&self, path: &str, body: &impl serde::Serialize) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        self.answer(
            &format!("POST {path}"),
            self.agent.post(&url).send_json(body),
        )
    }
}

fn print(value: &Value) -> anyhow::Result<()> {
    out(&serde_json::to_string_pretty(value)?)
}

/// A line on standard output; a reader that went away ends the output quietly.
fn out(text: &str) -> anyhow::Result<()> {
    ledger::cli::print(text).context("writing to standard output")
}

fn read_input(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading standard input")?;
    } else {
        bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(bytes)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // LEDGER_NODE is the older name of LEDGERCTL_NODE, still honoured.
    let node = cli
        .node
        .or_else(|| std::env::var("LEDGER_NODE").ok())
        .unwrap_or_else(|| "http://127.0.0.1:7100".into());
    let client = Client::new(&node);
    match cli.command {
        Command::Submit {
            data,
            file,
            wait,
            key,
        } => {
            let data = match (data, file) {
                (Some(text), _) => text.into_bytes(),
                (None, Some(path)) => read_input(&path)?,
                (None, None) => read_input(&PathBuf::from("-"))?,
            };
            let entry = match key {
                Some(path) => {
                    let key = config::read_key(&path)?;
                    // Authors sign for one chain: ask the node which.
                    let status: StatusView = serde_json::from_value(client.get("/v1/status")?)?;
                    let chain_hash: Hash = status.chain_hash.parse()?;
                    Entry::signed(data, &key, &chain_hash)
                }
                None => Entry::new(data),
            };
            let path = if wait {
                "/v1/entries?wait=commit"
            } else {
                "/v1/entries"
            };
            print(&client.post(path, &SubmitRequest::from_entry(&entry))?)
        }
        Command::Get { id } => print(&client.get(&format!("/v1/entries/{id}"))?),
        Command::Blocks { from, limit } => {
            print(&client.get(&format!("/v1/blocks?from={from}&limit={limit}"))?)
        }
        Command::Status => print(&client.get("/v1/status")?),
        Command::Health { ready } => out(&client.probe(match ready {
            true => "/readyz",
            false => "/healthz",
        })?),
        Command::Verify { receipt, genesis } => {
            let text = std::fs::read_to_string(&genesis)
                .with_context(|| format!("reading {}", genesis.display()))?;
            let spec =
                ChainSpec::from_toml(&text).with_context(|| genesis.display().to_string())?;
            let saved: Value = serde_json::from_slice(&read_input(&receipt)?)
                .with_context(|| format!("{}: not JSON", receipt.display()))?;
            out(&verify(&saved, &spec)?)
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ledgerctl", &mut script);
            out(String::from_utf8_lossy(&script).trim_end())
        }
        Command::Keygen { out: path } => {
            let key = config::generate_key()?;
            config::write_key(&path, &key)?;
            out(&hex::encode(key.verifying_key().as_bytes()))
        }
    }
}

/// Checks a saved answer: the receipt proves its entry under a certified header of
/// the chain `spec` and, when the answer carries the entry's data, that the data is
/// the entry the receipt names.
fn verify(saved: &Value, spec: &ChainSpec) -> anyhow::Result<String> {
    let receipt_json = saved
        .get("receipt")
        .cloned()
        .unwrap_or_else(|| saved.clone());
    let view: ReceiptView =
        serde_json::from_value(receipt_json).context("no receipt in the file")?;
    let receipt = Receipt::try_from(&view).context("receipt is malformed")?;
    // What the answer says beside the receipt must be what the receipt proves.
    let claims = [
        ("id", Value::from(receipt.entry_id.to_hex())),
        ("height", Value::from(receipt.header.height)),
        ("log_index", Value::from(receipt.log_index)),
        ("block_hash", Value::from(receipt.header.hash().to_hex())),
    ];
    for (field, proven) in claims {
        if let Some(claimed) = saved.get(field).filter(|_| saved.get("receipt").is_some()) {
            if *claimed != proven {
                bail!("the answer's {field} is {claimed} but its receipt proves {proven}");
            }
        }
    }
    if saved.get("data").is_some() || saved.get("data_b64").is_some() {
        let entry: EntryView =
            serde_json::from_value(saved.clone()).context("entry is malformed")?;
        let request = SubmitRequest {
            data: entry.data,
            data_b64: entry.data_b64,
            author: entry.author,
            sig: entry.sig,
        };
        let entry = request
            .into_entry()
            .map_err(anyhow::Error::msg)
            .context("entry is malformed")?;
        if entry.id() != receipt.entry_id {
            bail!(
                "the entry's data hashes to {}, not to the receipt's entry {}",
                entry.id(),
                receipt.entry_id
            );
        }
        entry
            .verify(&spec.chain_hash(), spec.params.max_entry_bytes)
            .context("entry")?;
    }
    receipt.verify(spec).context("receipt does not verify")?;
    Ok(format!(
        "ok: entry {} is leaf {} of {} under block {} at height {}, committed by {} of {} members",
        receipt.entry_id,
        receipt.log_index,
        receipt.header.log_size,
        receipt.header.hash(),
        receipt.header.height,
        receipt.certificate.signatures.len(),
        spec.members.len()
    ))
}
