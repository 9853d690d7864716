//! `ledgerctl`: the ledger's command-line client.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ledger::api::types::Accepted;
use ledger::chain::{ChainSpec, Change, Entry, Hash, MembershipError, Reconfiguration};
use ledger::config;
use ledger_client::{Client, Verifier};
use serde_json::Value;

#[derive(Parser)]
#[command(name = "ledgerctl", version = ledger::cli::VERSION, about = "Client of a ledger node")]
struct Cli {
    /// The node's API: a URL, or HOST:PORT (https with --cacert, else plain HTTP)
    /// [default: LEDGER_NODE, else http://127.0.0.1:7100].
    #[arg(long, env = "LEDGERCTL_NODE", global = true)]
    node: Option<String>,
    /// PEM CA certificates that issued the node's API certificate [default: the
    /// web's public roots, for https URLs].
    #[arg(long, env = "LEDGERCTL_CACERT", global = true)]
    cacert: Option<PathBuf>,
    /// PEM client certificate, for a node that verifies clients (with --client-key).
    #[arg(
        long,
        env = "LEDGERCTL_CLIENT_CERT",
        global = true,
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        env = "LEDGERCTL_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
    /// The API token's secret (`ledgerd token new` prints one).
    #[arg(long, env = "LEDGERCTL_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// A file holding the API token's secret (mode 0600).
    #[arg(
        long,
        env = "LEDGERCTL_TOKEN_FILE",
        global = true,
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
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
        /// Longest wait for the commit, seconds (at most 300).
        #[arg(long, default_value_t = 30, requires = "wait")]
        timeout: u64,
        /// Check the receipt against this genesis file before printing it (implies
        /// --wait); exit non-zero with the reason if it does not prove the entry.
        #[arg(long)]
        genesis: Option<PathBuf>,
        /// Sign as the author with this key file (see `keygen`).
        #[arg(long)]
        key: Option<PathBuf>,
    },
    /// Show an entry and, once committed, its receipt.
    Get {
        /// Entry id (hex).
        id: String,
        /// Check the receipt and the data against this genesis file before printing
        /// them; exit non-zero with the reason if they do not verify.
        #[arg(long)]
        genesis: Option<PathBuf>,
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
    /// Show the membership in force: members (connected or not), learners, the change
    /// on its way, the admins.
    Members,
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
    /// Membership changes, prepared and signed offline by the chain's admins: one file
    /// per change, passed from admin to admin until enough signed.
    #[command(subcommand)]
    Change(ChangeCommand),
}

#[derive(Subcommand)]
enum ChangeCommand {
    /// Write an unsigned change to FILE.
    New {
        #[command(subcommand)]
        change: NewChange,
        /// The membership epoch it applies to [default: the node's, from /v1/members].
        #[arg(long, global = true)]
        epoch: Option<u64>,
        /// The file to write; it must not exist.
        #[arg(long, global = true)]
        out: Option<PathBuf>,
    },
    /// Add this admin's signature to the change in FILE (replacing an earlier one).
    Sign {
        /// The change.
        file: PathBuf,
        /// The admin's key file.
        #[arg(long)]
        key: PathBuf,
        /// The chain's genesis file (its admins and its hash).
        #[arg(long)]
        genesis: PathBuf,
    },
    /// Hand the signed change in FILE to the node (`POST /v1/admin/reconfigurations`,
    /// admin role), which checks it against the membership in force and has the
    /// members order it.
    Submit {
        /// The change.
        file: PathBuf,
    },
    /// Say what the change in FILE does and who signed it; exit 1 unless enough admins
    /// signed it validly.
    Show {
        /// The change.
        file: PathBuf,
        /// The chain's genesis file.
        #[arg(long)]
        genesis: PathBuf,
    },
}

#[derive(Subcommand)]
enum NewChange {
    /// A node that receives blocks and does not vote.
    AddLearner {
        /// Its public key (hex).
        #[arg(long)]
        key: String,
        /// Where members dial it once it votes (HOST:PORT).
        #[arg(long)]
        p2p: String,
        /// Where clients reach it (HOST:PORT).
        #[arg(long)]
        api: Option<String>,
    },
    /// A learner becomes a voting member.
    Promote {
        /// The learner's public key (hex).
        #[arg(long)]
        key: String,
    },
    /// A member or learner leaves.
    Remove {
        /// Its public key (hex).
        #[arg(long)]
        key: String,
    },
}

/// A change as a file: the canonical encoding in hex is what counts; the rest is
/// for the people passing it on.
#[derive(serde::Serialize, serde::Deserialize)]
struct ChangeFile {
    description: String,
    epoch: u64,
    reconfiguration: String,
}

fn read_change(path: &PathBuf) -> anyhow::Result<Reconfiguration> {
    let file: ChangeFile = serde_json::from_slice(&read_input(path)?)
        .with_context(|| format!("{}: not a change file", path.display()))?;
    let bytes = hex::decode(file.reconfiguration.trim())
        .with_context(|| format!("{}: the reconfiguration is not hex", path.display()))?;
    Reconfiguration::decode(&bytes).with_context(|| path.display().to_string())
}

fn write_change(path: &PathBuf, change: &Reconfiguration, create: bool) -> anyhow::Result<()> {
    let file = ChangeFile {
        description: change.change.to_string(),
        epoch: change.epoch,
        reconfiguration: hex::encode(change.encode()),
    };
    let text = serde_json::to_string_pretty(&file)? + "\n";
    let written = match create {
        true => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .and_then(|mut out| std::io::Write::write_all(&mut out, text.as_bytes())),
        false => std::fs::write(path, text),
    };
    written.with_context(|| format!("writing {}", path.display()))
}

fn read_genesis(path: &PathBuf) -> anyhow::Result<ChainSpec> {
    Ok(Verifier::from_genesis_file(path)?.spec().clone())
}

fn public_key(text: &str) -> anyhow::Result<ed25519_dalek::VerifyingKey> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes)
        .with_context(|| format!("{text:?} is not a 64-hex-character public key"))?;
    ed25519_dalek::VerifyingKey::from_bytes(&bytes)
        .with_context(|| format!("{text} is not an ed25519 public key"))
}

fn change(client: &Client, command: ChangeCommand) -> anyhow::Result<()> {
    match command {
        ChangeCommand::New {
            change,
            epoch,
            out: path,
        } => {
            let Some(path) = path else {
                bail!("--out FILE: where to write the change");
            };
            let epoch = match epoch {
                Some(epoch) => epoch,
                None => client.members()?.epoch,
            };
            let change = match change {
                NewChange::AddLearner { key, p2p, api } => Change::AddLearner {
                    public_key: public_key(&key)?,
                    p2p_addr: p2p,
                    api_addr: api,
                },
                NewChange::Promote { key } => Change::Promote {
                    public_key: public_key(&key)?,
                },
                NewChange::Remove { key } => Change::Remove {
                    public_key: public_key(&key)?,
                },
            };
            let change = Reconfiguration::new(epoch, change)?;
            write_change(&path, &change, true)?;
            out(&format!(
                "wrote {}: {} in epoch {epoch}, signed by nobody yet",
                path.display(),
                change.change
            ))
        }
        ChangeCommand::Sign { file, key, genesis } => {
            let spec = read_genesis(&genesis)?;
            let Some(admins) = &spec.admins else {
                bail!(
                    "{}: this chain has no admins; its membership is fixed",
                    genesis.display()
                );
            };
            let key = config::read_key(&key)?;
            if !admins.keys().contains(&key.verifying_key()) {
                bail!(
                    "{} is not an admin of chain {}",
                    hex::encode(key.verifying_key().as_bytes()),
                    spec.chain_id
                );
            }
            let mut change = read_change(&file)?;
            change.sign(&key, &spec.chain_hash());
            write_change(&file, &change, false)?;
            out(&format!(
                "signed {}: {} of the {} signatures the chain needs",
                file.display(),
                change.signatures.len(),
                admins.threshold()
            ))
        }
        ChangeCommand::Submit { file } => {
            let change = read_change(&file)?;
            let answer = client.propose_change(&change)?;
            out(&format!(
                "submitted {} (entry {}): in force from the block after the first \
                 checkpoint at or above its block; `ledgerctl members` shows it",
                change.change, answer.id
            ))
        }
        ChangeCommand::Show { file, genesis } => {
            let spec = read_genesis(&genesis)?;
            let change = read_change(&file)?;
            out(&format!("{} in epoch {}", change.change, change.epoch))?;
            let Some(admins) = &spec.admins else {
                bail!("this chain has no admins; its membership is fixed");
            };
            let digest = change.digest(&spec.chain_hash());
            for signature in &change.signatures {
                let signer = hex::encode(signature.public_key);
                let verdict = match Reconfiguration::check_signature(&digest, admins, signature) {
                    Ok(()) => "valid",
                    Err(MembershipError::NotAdmin(_)) => "not an admin of this chain",
                    Err(_) => "INVALID for this change, chain and epoch",
                };
                out(&format!("  signed by {signer}: {verdict}"))?;
            }
            change
                .check_signatures(&spec.chain_hash(), admins)
                .context("not ready to submit")?;
            out(&format!(
                "ready: {} valid admin signatures, {} needed",
                change.signatures.len(),
                admins.threshold()
            ))
        }
    }
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

fn print(value: &impl serde::Serialize) -> anyhow::Result<()> {
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
    let token = match (cli.token, cli.token_file) {
        (Some(token), _) => Some(token),
        (None, Some(path)) => Some(config::read_secret(&path)?),
        (None, None) => None,
    };
    let credentials = ledger::http::Credentials {
        cacert: cli.cacert,
        client_cert: cli.client_cert.zip(cli.client_key),
        token,
    };
    let client = Client::new(&node, &credentials)?;
    let verifier = |genesis: Option<PathBuf>| genesis.map(Verifier::from_genesis_file).transpose();
    match cli.command {
        Command::Submit {
            data,
            file,
            wait,
            timeout,
            genesis,
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
                    let chain_hash: Hash = client.status()?.chain_hash.parse()?;
                    Entry::signed(data, &key, &chain_hash)
                }
                None => Entry::new(data),
            };
            let timeout = Duration::from_secs(timeout);
            match verifier(genesis)? {
                Some(verifier) => {
                    let answer = match client.submit_wait(&entry, timeout)? {
                        ledger_client::Submitted::Committed(view) => view,
                        ledger_client::Submitted::Pending(_) => {
                            bail!(ledger_client::Error::NotCommitted { id: entry.id() })
                        }
                    };
                    verifier.committed(&answer, &entry)?;
                    print(&answer)
                }
                None if wait => print(&client.submit_wait(&entry, timeout)?),
                None => print(&Accepted {
                    id: client.submit(&entry)?.to_hex(),
                }),
            }
        }
        Command::Get { id, genesis } => {
            let id: Hash = id
                .parse()
                .with_context(|| format!("{id:?} is not an entry id (64 hex characters)"))?;
            let answer = client.get(&id)?;
            if let Some(verifier) = verifier(genesis)? {
                verifier.entry(&answer)?;
            }
            print(&answer)
        }
        Command::Blocks { from, limit } => print(&client.blocks(from, limit)?),
        Command::Status => print(&client.status()?),
        Command::Members => print(&client.members()?),
        Command::Health { ready } => out(&client.probe(ready)?),
        Command::Verify { receipt, genesis } => {
            let verifier = Verifier::from_genesis_file(&genesis)?;
            let saved: Value = serde_json::from_slice(&read_input(&receipt)?)
                .with_context(|| format!("{}: not JSON", receipt.display()))?;
            let receipt = verifier.answer(&saved)?.receipt;
            out(&format!(
                "ok: entry {} is leaf {} of {} under block {} at height {}, committed by {} \
                 of {} members",
                receipt.entry_id,
                receipt.log_index,
                receipt.header.log_size,
                receipt.header.hash(),
                receipt.header.height,
                receipt.certificate.signatures.len(),
                verifier.spec().members.len()
            ))
        }
        Command::Change(command) => change(&client, command),
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
