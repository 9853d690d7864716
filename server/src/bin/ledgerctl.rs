//! `ledgerctl`: the ledger's command-line client.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use ledger::api::types::{Accepted, ChangeRequest};
use ledger::chain::{Admins, ChainSpec, Change, Entry, Hash, MembershipError, Reconfiguration};
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
    #[command(group = clap::ArgGroup::new("waiting").args(["wait", "genesis"]).multiple(true))]
    Submit {
        /// The entry's data as text.
        data: Option<String>,
        /// Read the data from this file ("-" for standard input).
        #[arg(long, conflicts_with = "data")]
        file: Option<PathBuf>,
        /// Wait for the commit and print the receipt; if it does not commit within
        /// --timeout, print the entry id and exit non-zero (the entry stays accepted).
        #[arg(long)]
        wait: bool,
        /// Longest wait for the commit, seconds (1 to 300).
        #[arg(
            long,
            default_value_t = 30,
            requires = "waiting",
            value_parser = clap::value_parser!(u64).range(1..=300)
        )]
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
    /// The membership and its changes: list it; add a learner, promote it, remove a
    /// member or learner, each signed by the chain's admins (at once with one admin's
    /// key, or as a file passed from admin to admin until enough signed).
    #[command(subcommand)]
    Member(MemberCommand),
}

#[derive(Subcommand)]
enum MemberCommand {
    /// The membership in force: members (connected or not), learners with their
    /// addresses, the change on its way, the admins, and every change since genesis.
    List,
    /// Add a learner: a node that receives blocks and does not vote, until promoted.
    Add {
        /// Its public key (hex; `ledgerd init` prints it).
        #[arg(long)]
        key: String,
        /// Where members dial it once it votes (HOST:PORT, its p2p_listen).
        #[arg(long)]
        p2p: String,
        /// Where clients and the members reach its API (HOST:PORT); the members ask
        /// it how far it is before promoting it.
        #[arg(long)]
        api: Option<String>,
        #[command(flatten)]
        signing: Signing,
    },
    /// Make a learner a voting member (refused while it is more than a checkpoint
    /// interval behind, or cannot be asked).
    Promote {
        /// The learner's public key (hex).
        #[arg(long)]
        key: String,
        #[command(flatten)]
        signing: Signing,
    },
    /// Remove a member or a learner.
    Remove {
        /// Its public key (hex).
        #[arg(long)]
        key: String,
        #[command(flatten)]
        signing: Signing,
    },
    /// Add this admin's signature to the change in FILE (replacing an earlier one).
    Sign {
        /// The change.
        file: PathBuf,
        /// The admin's key file.
        #[arg(long)]
        admin_key: PathBuf,
        /// The chain's genesis file (its admins and its hash) [default: as the node
        /// reports them].
        #[arg(long)]
        genesis: Option<PathBuf>,
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
        /// The chain's genesis file [default: as the node reports it].
        #[arg(long)]
        genesis: Option<PathBuf>,
    },
}

/// How `member add|promote|remove` signs the change and what it does with it.
#[derive(clap::Args)]
struct Signing {
    /// An admin's key file: the change is signed with it and submitted (unless
    /// --sign-only).
    #[arg(long)]
    admin_key: Option<PathBuf>,
    /// Write the change (signed with --admin-key, if given) to --out for the other
    /// admins to sign (`member sign`) instead of submitting it.
    #[arg(long, requires = "out")]
    sign_only: bool,
    /// Where --sign-only writes the change; it must not exist.
    #[arg(long, requires = "sign_only")]
    out: Option<PathBuf>,
    /// The chain's genesis file (its hash and admins) [default: as the node reports
    /// them].
    #[arg(long)]
    genesis: Option<PathBuf>,
    /// The membership epoch the change applies to [default: the node's].
    #[arg(long)]
    epoch: Option<u64>,
}

/// A change as a file: `POST /v1/admin/reconfigurations`' body, whose canonical
/// encoding in hex is what counts; the rest is for the people passing it on.
fn read_change(path: &PathBuf) -> anyhow::Result<Reconfiguration> {
    let file: ChangeRequest = serde_json::from_slice(&read_input(path)?)
        .with_context(|| format!("{}: not a change file", path.display()))?;
    let bytes = hex::decode(file.reconfiguration.trim())
        .with_context(|| format!("{}: the reconfiguration is not hex", path.display()))?;
    Reconfiguration::decode(&bytes).with_context(|| path.display().to_string())
}

fn write_change(path: &PathBuf, change: &Reconfiguration, create: bool) -> anyhow::Result<()> {
    let file = ChangeRequest {
        reconfiguration: hex::encode(change.encode()),
        description: Some(change.change.to_string()),
        epoch: Some(change.epoch),
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

/// The chain's hash and admins, from its genesis file or, without one, as the node
/// reports them (a signature made for another chain is worth nothing on this one).
fn chain_admins(client: &Client, genesis: Option<&PathBuf>) -> anyhow::Result<(Hash, Admins)> {
    let (chain_hash, admins) = match genesis {
        Some(path) => {
            let spec = read_genesis(path)?;
            (spec.chain_hash(), spec.admins.clone())
        }
        None => {
            let chain_hash: Hash = client.status()?.chain_hash.parse()?;
            let admins = match client.members()?.admins {
                None => None,
                Some(view) => Some(Admins::new(
                    view.keys
                        .iter()
                        .map(|key| public_key(key))
                        .collect::<Result<_, _>>()?,
                    view.threshold,
                )?),
            };
            (chain_hash, admins)
        }
    };
    let admins = admins.context("this chain has no admins; its membership is fixed")?;
    Ok((chain_hash, admins))
}

/// Signs `change` with the admin key at `path`, refusing a key that is no admin.
fn sign(
    change: &mut Reconfiguration,
    path: &std::path::Path,
    chain_hash: &Hash,
    admins: &Admins,
) -> anyhow::Result<()> {
    let key = config::read_key(path)?;
    if !admins.keys().contains(&key.verifying_key()) {
        bail!(
            "{} ({}) is not an admin of this chain",
            path.display(),
            hex::encode(key.verifying_key().as_bytes())
        );
    }
    change.sign(&key, chain_hash);
    Ok(())
}

fn submit_change(client: &Client, change: &Reconfiguration) -> anyhow::Result<()> {
    let answer = client.propose_change(change)?;
    out(&format!(
        "submitted {} (entry {}): in force from the block after the first checkpoint at \
         or above its block; `ledgerctl member list` shows it",
        change.change, answer.id
    ))
}

fn member(client: &Client, command: MemberCommand) -> anyhow::Result<()> {
    let (change, signing) = match command {
        MemberCommand::List => return print(&client.members()?),
        MemberCommand::Add {
            key,
            p2p,
            api,
            signing,
        } => {
            let change = Change::AddLearner {
                public_key: public_key(&key)?,
                p2p_addr: p2p,
                api_addr: api,
            };
            if let Some((kind, addr, problem)) = change.undialable() {
                anyhow::bail!("--{kind} {addr:?}: {problem} (HOST:PORT, as the node listens)");
            }
            (change, signing)
        }
        MemberCommand::Promote { key, signing } => {
            let public_key = public_key(&key)?;
            (Change::Promote { public_key }, signing)
        }
        MemberCommand::Remove { key, signing } => {
            let public_key = public_key(&key)?;
            (Change::Remove { public_key }, signing)
        }
        MemberCommand::Sign {
            file,
            admin_key,
            genesis,
        } => {
            let (chain_hash, admins) = chain_admins(client, genesis.as_ref())?;
            let mut change = read_change(&file)?;
            sign(&mut change, &admin_key, &chain_hash, &admins)?;
            write_change(&file, &change, false)?;
            return out(&format!(
                "signed {}: {} of the {} signatures the chain needs",
                file.display(),
                change.signatures.len(),
                admins.threshold()
            ));
        }
        MemberCommand::Submit { file } => {
            let change = read_change(&file)?;
            submit_change(client, &change)?;
            after_change(client, &change.change);
            return Ok(());
        }
        MemberCommand::Show { file, genesis } => {
            let (chain_hash, admins) = chain_admins(client, genesis.as_ref())?;
            let change = read_change(&file)?;
            out(&format!("{} in epoch {}", change.change, change.epoch))?;
            let digest = change.digest(&chain_hash);
            for signature in &change.signatures {
                let signer = hex::encode(signature.public_key);
                let verdict = match Reconfiguration::check_signature(&digest, &admins, signature) {
                    Ok(()) => "valid",
                    Err(MembershipError::NotAdmin(_)) => "not an admin of this chain",
                    Err(_) => "INVALID for this change, chain and epoch",
                };
                out(&format!("  signed by {signer}: {verdict}"))?;
            }
            change
                .check_signatures(&chain_hash, &admins)
                .context("not ready to submit")?;
            return out(&format!(
                "ready: {} valid admin signatures, {} needed",
                change.signatures.len(),
                admins.threshold()
            ));
        }
    };
    if !signing.sign_only && signing.admin_key.is_none() {
        bail!(
            "--admin-key FILE to sign the change and submit it, or --sign-only --out FILE \
             to write it for the admins to sign"
        );
    }
    let epoch = match signing.epoch {
        Some(epoch) => epoch,
        None => client.members()?.epoch,
    };
    let mut change = Reconfiguration::new(epoch, change)?;
    if let Some(path) = &signing.admin_key {
        let (chain_hash, admins) = chain_admins(client, signing.genesis.as_ref())?;
        sign(&mut change, path, &chain_hash, &admins)?;
    }
    match (signing.sign_only, &signing.out) {
        (true, Some(path)) => {
            write_change(path, &change, true)?;
            out(&format!(
                "wrote {}: {} in epoch {epoch}, with {} signature(s); each admin adds theirs \
                 with `ledgerctl member sign`, then `ledgerctl member submit`",
                path.display(),
                change.change,
                change.signatures.len()
            ))
        }
        _ => {
            submit_change(client, &change)?;
            after_change(client, &change.change);
            Ok(())
        }
    }
}

/// What the membership tolerates once a submitted change that adds or removes a
/// voter is in force: a remove that leaves no member free to stop says so before
/// the operator stops one counting on the old figures. Told on standard error, and
/// only if the node answers: the change is submitted either way.
fn after_change(client: &Client, change: &Change) {
    let Ok(view) = client.members() else {
        return;
    };
    let voter = |key: &ed25519_dalek::VerifyingKey| {
        let key = hex::encode(key.as_bytes());
        view.members.iter().any(|member| member.public_key == key)
    };
    let voters = view.members.len();
    let voters = match change {
        Change::Promote { .. } => voters + 1,
        // A learner's removal leaves the voters as they are.
        Change::Remove { public_key } if voter(public_key) => voters.saturating_sub(1),
        _ => return,
    };
    let f = ledger::chain::max_faulty(voters);
    let quorum = ledger::chain::quorum(voters);
    let free = match voters.saturating_sub(quorum) {
        0 => "no member may stop without stopping the chain".to_owned(),
        free => format!("{free} may stop and the rest commit"),
    };
    eprintln!(
        "once in force: {voters} voting members, f = {f} (members that may lie), \
         {quorum} votes a certificate: {free}"
    );
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
            let verifier = verifier(genesis)?;
            if !wait && verifier.is_none() {
                return print(&Accepted {
                    id: client.submit(&entry)?.to_hex(),
                });
            }
            let answer = match client.submit_wait(&entry, Duration::from_secs(timeout))? {
                ledger_client::Submitted::Committed(view) => view,
                ledger_client::Submitted::Pending(accepted) => {
                    print(&accepted)?;
                    bail!(ledger_client::Error::NotCommitted { id: entry.id() })
                }
            };
            if let Some(verifier) = verifier {
                verifier.committed(&answer, &entry)?;
            }
            print(&answer)
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
        Command::Health { ready } => out(&client.probe(ready)?),
        Command::Verify { receipt, genesis } => {
            let verifier = Verifier::from_genesis_file(&genesis)?;
            let saved: Value = serde_json::from_slice(&read_input(&receipt)?)
                .with_context(|| format!("{}: not JSON", receipt.display()))?;
            let verified = verifier.answer(&saved)?;
            let receipt = &verified.receipt;
            out(&format!(
                "ok: entry {} is leaf {} of {} under block {} at height {}, committed by {} \
                 of {} members",
                receipt.entry_id,
                receipt.log_index,
                receipt.header.log_size,
                receipt.header.hash(),
                receipt.header.height,
                receipt.certificate.signatures.len(),
                verified.members
            ))
        }
        Command::Member(command) => member(&client, command),
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
