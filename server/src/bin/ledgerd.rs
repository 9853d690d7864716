//! `ledgerd`: the ledger node.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ledger::config::{self, NodeConfig};
use ledger::{daemon, plugin_host};

/// jemalloc, not glibc's malloc: redb keeps its page cache as live 4 KiB buffers and
/// replaces some with every commit, and glibc's bins took longer to search as that
/// cache grew (benches/README.md: `store`, and `cluster.sh`, "2026-12-06, night").
/// Plugins keep their own allocator: each buffer goes back to the plugin that made it.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "ledgerd", version = ledger::cli::VERSION, about = "A permissioned BFT ledger node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a key and a config for one node; prints the public key for the genesis.
    Init {
        /// Directory to write node.key and ledgerd.toml into.
        #[arg(long)]
        dir: PathBuf,
        /// Client API address.
        #[arg(long, default_value = "127.0.0.1:7100")]
        api_listen: std::net::SocketAddr,
        /// Peer address.
        #[arg(long, default_value = "127.0.0.1:7101")]
        p2p_listen: std::net::SocketAddr,
        /// Database directory; a relative path is taken from the config's directory
        /// (`/var/lib/ledger` under the systemd unit in ops/).
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// The chain's genesis file, for a node that joins a running chain [default:
        /// genesis.toml beside the config].
        #[arg(long)]
        genesis: Option<PathBuf>,
        /// Follow the chain without voting (`follower = true`): a node joining a
        /// running chain, until the admins add it as a learner and promote it.
        #[arg(long)]
        follower: bool,
    },
    /// Write a genesis file from the members' public keys (as `init` prints them) and
    /// the admins' (as `ledgerctl keygen` prints them), checked as every node will
    /// read it.
    Genesis(GenesisArgs),
    /// Run a node.
    Run {
        /// The node's ledgerd.toml.
        #[arg(long, env = "LEDGERD_CONFIG")]
        config: PathBuf,
        /// Check the whole database first (as `ledgerd check` does) and refuse to
        /// start on damage.
        #[arg(long)]
        check: bool,
    },
    /// Run a cluster member that has no database yet from a snapshot the other
    /// members serve: its manifest checked against the genesis file, its chunks
    /// fetched from every member at once and checked on arrival; resumes after an
    /// interruption. Then it runs as `run` does.
    Join {
        /// The node's ledgerd.toml.
        #[arg(long, env = "LEDGERD_CONFIG")]
        config: PathBuf,
    },
    /// Check a stopped node's database, without changing it: every block, link,
    /// proof of work, certificate, entry, index row and Merkle node. Exit 0 when it
    /// checks out, 1 with what is damaged, 2 if it cannot run.
    Check {
        /// The node's ledgerd.toml.
        #[arg(long, env = "LEDGERD_CONFIG")]
        config: PathBuf,
    },
    /// Bring the database to this build's schema, or with --check only report: exit 0
    /// when it is up to date, 1 when an upgrade is pending, 2 when it cannot tell (no
    /// database, a running node holding it, a damaged file).
    Migrate {
        /// The node's ledgerd.toml.
        #[arg(long, env = "LEDGERD_CONFIG")]
        config: PathBuf,
        /// Report the schema version and pending steps; exit 1 if any are pending.
        #[arg(long)]
        check: bool,
    },
    /// A local cluster on loopback under one directory, for trying the ledger out.
    Dev(Dev),
    /// Tokens of the client API.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Backups: snapshot files that rebuild a node's database, checked whole.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Validation plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Print the version and the commit this build comes from.
    Version,
    /// Print a shell completion script (e.g. `ledgerd completions bash >
    /// /etc/bash_completion.d/ledgerd`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct GenesisArgs {
    /// The chain's name, 1 to 64 bytes.
    #[arg(long)]
    chain_id: String,
    /// A member, in primary rotation order: its public key in hex, then
    /// `,p2p=HOST:PORT` (where the others dial it; required with more than one
    /// member) and optionally `,api=HOST:PORT`.
    #[arg(long = "member", required = true, value_parser = config::member_arg)]
    members: Vec<ledger::chain::GenesisMember>,
    /// A public key (hex) that may sign membership changes. Without admins the
    /// membership stays as listed for good.
    #[arg(long = "admin")]
    admins: Vec<String>,
    /// Admin signatures a membership change needs [default: a majority of the admins].
    #[arg(long)]
    admin_threshold: Option<u32>,
    /// Initial proof of work, leading zero bits of the block hash.
    #[arg(long, default_value_t = 16)]
    difficulty: u32,
    /// Heights between checkpoints (and snapshots).
    #[arg(long)]
    checkpoint_interval: Option<u64>,
    /// Largest entry data, bytes.
    #[arg(long)]
    max_entry_bytes: Option<u32>,
    /// Most entries in a block.
    #[arg(long)]
    max_block_entries: Option<u32>,
    /// Genesis time, ms since the Unix epoch [default: now].
    #[arg(long)]
    timestamp_ms: Option<u64>,
    /// The file to write; it must not exist. Without it the file goes to standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token: prints its secret once (only its hash is kept anywhere) and the
    /// lines to add to ledgerd.toml; a running node takes them on SIGHUP
    /// (`systemctl reload ledgerd`).
    New {
        /// What the token may do: read (every GET), submit (also POST entries) or
        /// admin (also POST /mine and membership changes).
        #[arg(long)]
        role: ledger::api::auth::Role,
        /// Who holds it, as the access log and the rate limit name it.
        #[arg(long)]
        name: String,
        /// Write the secret to this new file (mode 0600) instead of printing it.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Write a snapshot file of the node: from its database when it is stopped (at
    /// its tip), else through its client API (its latest snapshot and every block up
    /// to its tip).
    Save {
        /// The node's ledgerd.toml.
        #[arg(long, env = "LEDGERD_CONFIG")]
        config: PathBuf,
        /// The file to write.
        out: PathBuf,
    },
    /// Build the node's database from a snapshot file, checking everything in it
    /// against the genesis file; the database must not exist.
    Restore {
        /// The snapshot file.
        input: PathBuf,
        /// The node's ledgerd.toml.
        #[arg(long, env = "LEDGERD_CONFIG")]
        config: PathBuf,
    },
    /// Say what a snapshot file holds; with --genesis, check all of it as a restore
    /// would. Exit 1 when it fails a check.
    Inspect {
        /// The snapshot file.
        input: PathBuf,
        /// The chain's genesis file.
        #[arg(long)]
        genesis: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PluginsCommand {
    /// Run the checks start-up runs on a plugin library, without starting a node;
    /// exit 1 with the reason if it would stop start-up.
    Check {
        /// The shared library.
        file: PathBuf,
        /// A TOML file with the plugin's config (what `[plugins.config]` in
        /// ledgerd.toml holds): also run the plugin's init on it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Args)]
struct Dev {
    #[command(subcommand)]
    init: Option<DevInit>,
    #[command(flatten)]
    layout: DevLayout,
}

#[derive(Subcommand)]
enum DevInit {
    /// Only write the keys, genesis and configs.
    Init {
        #[command(flatten)]
        layout: DevLayout,
        /// Lay the cluster out for containers instead (the image of ops/Dockerfile):
        /// DIR/compose.yaml runs one member per container, node i's API published on
        /// 127.0.0.1:BASE_PORT+2i.
        #[arg(long)]
        compose: bool,
    },
}

#[derive(Args, Clone)]
struct DevLayout {
    /// Nodes in the cluster (1 runs a node alone).
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Directory for keys, genesis, configs and data.
    #[arg(long, default_value = "ledger-dev")]
    dir: PathBuf,
    /// Node i's API listens on base-port + 2i, its peer port on base-port + 2i + 1
    /// [default: 7100; for `dev` on a directory made before, the ports it was made
    /// with].
    #[arg(long)]
    base_port: Option<u16>,
    /// Genesis difficulty, leading zero bits.
    #[arg(long, default_value_t = 16)]
    difficulty: u32,
}

impl DevLayout {
    /// The base port asked for, or the default.
    fn base_port(&self) -> u16 {
        self.base_port.unwrap_or(7100)
    }
}

pub(crate) fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("ledgerd: {}", ledger::cli::describe(error.as_ref()));
            match error.downcast_ref::<daemon::Removed>() {
                Some(_) => ExitCode::from(daemon::Removed::EXIT_CODE),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Runs `work` on a new runtime, then waits at most 10 s for what still runs on its
/// blocking threads (a plugin hook that hangs, say) before the process ends
/// without it: a stopped node must not linger on such work for minutes.
fn run_to_end(work: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    let runtime = runtime()?;
    let outcome = runtime.block_on(work);
    runtime.shutdown_timeout(std::time::Duration::from_secs(10));
    outcome
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Init {
            dir,
            api_listen,
            p2p_listen,
            data_dir,
            genesis,
            follower,
        } => {
            let path = dir.join("ledgerd.toml");
            if path.exists() {
                anyhow::bail!("{} already exists", path.display());
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let key = config::generate_key()?;
            config::write_node_key(&dir.join("node.key"), &key)?;
            let example = NodeConfig::example(api_listen, p2p_listen);
            let genesis = match genesis {
                // Relative paths in the config are taken from its directory.
                Some(genesis) => std::path::absolute(&genesis)
                    .with_context(|| format!("{}: not a usable path", genesis.display()))?,
                None => example.genesis.clone(),
            };
            let mut node = NodeConfig {
                data_dir,
                genesis,
                follower,
                ..example
            };
            // An API other machines can reach is never left open: it gets an admin
            // token, whose secret only the operator can read.
            let token_path = dir.join("api.token");
            if !api_listen.ip().is_loopback() {
                let (secret, token) = new_token("operator", ledger::api::auth::Role::Admin)?;
                config::write_secret(&token_path, &secret)?;
                node.api.tokens.push(token);
            }
            std::fs::write(&path, toml::to_string(&node)?)
                .with_context(|| format!("writing {}", path.display()))?;
            println!(
                "wrote {} and {}",
                path.display(),
                dir.join("node.key").display()
            );
            let public = hex::encode(key.verifying_key().as_bytes());
            match node.follower {
                true => println!("public key (pass it to `ledgerctl member add --key`): {public}"),
                false => println!("public key (pass it to `ledgerd genesis --member`): {public}"),
            }
            if !node.api.tokens.is_empty() {
                println!(
                    "the API on {api_listen} needs a token: an admin one is in {} \
                     (`ledgerctl --token-file {}`); make more with `ledgerd token new`",
                    token_path.display(),
                    token_path.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Genesis(args) => genesis(args),
        Command::Token(TokenCommand::New { role, name, out }) => {
            let (secret, token) = new_token(&name, role)?;
            match out {
                Some(out) => {
                    config::write_secret(&out, &secret)?;
                    eprintln!("wrote the secret to {}", out.display());
                }
                None => eprintln!(
                    "the secret, shown once (clients send it as `Authorization: Bearer`; \
                     ledgerctl reads it from LEDGERCTL_TOKEN):\n{secret}\n"
                ),
            }
            eprintln!("add to ledgerd.toml, then reload the node (SIGHUP):");
            ledger::cli::print(token.to_toml().trim_end())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            config: path,
            check,
        } => {
            let config = NodeConfig::load(&path)?;
            daemon::init_logging(config.log_format);
            let start = match check {
                true => daemon::Start::Check,
                false => daemon::Start::Run,
            };
            run_to_end(daemon::run(&path, config, start, daemon::stop_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Join { config: path } => {
            let config = NodeConfig::load(&path)?;
            daemon::init_logging(config.log_format);
            let start = daemon::Start::Join;
            run_to_end(daemon::run(&path, config, start, daemon::stop_signal()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => check_database(&config),
        Command::Snapshot(command) => snapshot(command),
        Command::Migrate { config, check } => match migrate(&config, check) {
            Err(error) if check => {
                eprintln!("ledgerd: {}", ledger::cli::describe(error.as_ref()));
                Ok(ExitCode::from(2))
            }
            result => result,
        },
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "ledgerd", &mut script);
            ledger::cli::print(String::from_utf8_lossy(&script).trim_end())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            println!("ledgerd {}", ledger::cli::VERSION);
            Ok(ExitCode::SUCCESS)
        }
        Command::Plugins(PluginsCommand::Check { file, config }) => check_plugin(&file, config),
        Command::Dev(Dev {
            init: Some(DevInit::Init { layout, compose }),
            ..
        }) => {
            let placement = match compose {
                true => config::Placement::Containers {
                    base_port: layout.base_port(),
                },
                false => config::Placement::Loopback {
                    base_port: layout.base_port(),
                },
            };
            let written = config::lay_out(&layout.dir, layout.nodes, layout.difficulty, placement)?;
            for path in &written.configs {
                println!("{}", path.display());
            }
            if compose {
                println!("{}", layout.dir.join("compose.yaml").display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev(Dev { init: None, layout }) => dev(&layout),
    }
}

/// `ledgerd genesis`: the file is checked as a node reads it before it is written.
fn genesis(args: GenesisArgs) -> anyhow::Result<ExitCode> {
    if args.members.len() > 1 {
        if let Some(member) = args.members.iter().find(|member| member.p2p_addr.is_none()) {
            anyhow::bail!(
                "member {} has no p2p=HOST:PORT: with more than one member each needs the \
                 address the others dial it at",
                member.public_key
            );
        }
    }
    let timestamp_ms = match args.timestamp_ms {
        Some(timestamp_ms) => timestamp_ms,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("the clock is before 1970")?
            .as_millis()
            .try_into()
            .context("the clock is beyond the year 500 million")?,
    };
    let base = ledger::chain::GenesisFile::new(
        &args.chain_id,
        timestamp_ms,
        args.difficulty,
        args.members,
    );
    let majority = u32::try_from(args.admins.len() / 2 + 1).unwrap_or(u32::MAX);
    let file = ledger::chain::GenesisFile {
        admin_threshold: match args.admins.is_empty() {
            true => args.admin_threshold,
            false => Some(args.admin_threshold.unwrap_or(majority)),
        },
        admins: args.admins,
        checkpoint_interval: args.checkpoint_interval.unwrap_or(base.checkpoint_interval),
        max_entry_bytes: args.max_entry_bytes.unwrap_or(base.max_entry_bytes),
        max_block_entries: args.max_block_entries.unwrap_or(base.max_block_entries),
        ..base
    };
    let spec = ledger::chain::ChainSpec::from_file(file).context("the genesis would be invalid")?;
    let text = spec.to_toml();
    let Some(out) = args.out else {
        print!("{text}");
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&out)
        .and_then(|mut file| std::io::Write::write_all(&mut file, text.as_bytes()))
        .with_context(|| format!("writing {}", out.display()))?;
    let admins = match &spec.admins {
        Some(admins) => format!(
            "{} admin{}, {} to sign a membership change",
            admins.keys().len(),
            if admins.keys().len() == 1 { "" } else { "s" },
            admins.threshold()
        ),
        None => "no admins: the membership is fixed".to_owned(),
    };
    eprintln!(
        "wrote {}: chain {} ({}), {} member{}, {admins}; give every node this file",
        out.display(),
        spec.chain_hash(),
        spec.chain_id,
        spec.members.len(),
        if spec.members.len() == 1 { "" } else { "s" },
    );
    Ok(ExitCode::SUCCESS)
}

/// `ledgerd dev`: lays the cluster out if needed, then runs every node in this
/// process until SIGINT or SIGTERM.
fn dev(layout: &DevLayout) -> anyhow::Result<ExitCode> {
    if layout.nodes == 0 {
        anyhow::bail!("--nodes 0: a cluster needs at least one node (--nodes 1 runs one alone)");
    }
    let paths: Vec<PathBuf> = (0..layout.nodes)
        .map(|i| layout.dir.join(format!("node{i}")).join("ledgerd.toml"))
        .collect();
    if !layout.dir.join("genesis.toml").exists() {
        config::dev_init(
            &layout.dir,
            layout.nodes,
            layout.base_port(),
            layout.difficulty,
        )?;
    }
    let configs = paths
        .iter()
        .map(|path| NodeConfig::load(path))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| {
            format!(
                "{} holds another layout than --nodes {}; remove it or pass its --nodes",
                layout.dir.display(),
                layout.nodes
            )
        })?;
    let made_with = configs[0].api_listen.port();
    if let Some(asked) = layout.base_port.filter(|asked| *asked != made_with) {
        anyhow::bail!(
            "{} was made with base port {made_with} (node0's API on {}), not --base-port \
             {asked}: remove it to start over on {asked}, or leave --base-port out",
            layout.dir.display(),
            configs[0].api_listen
        );
    }
    let spec = configs[0].chain_spec()?;
    if spec.members.len() != layout.nodes {
        anyhow::bail!(
            "{} holds a chain of {} members, not --nodes {}; remove it or pass its --nodes",
            layout.dir.display(),
            spec.members.len(),
            layout.nodes
        );
    }
    daemon::init_logging(configs[0].log_format);
    println!(
        "ledger dev: {} node{}, data under {}",
        layout.nodes,
        if layout.nodes == 1 { "" } else { "s" },
        layout.dir.display()
    );
    for (i, (path, config)) in paths.iter().zip(&configs).enumerate() {
        println!(
            "  node{i} api http://{}   (config {})",
            config.api_listen,
            path.display()
        );
    }
    let api = configs[0].api_listen;
    println!(
        "try: curl -s -XPOST 'http://{api}/v1/entries?wait=commit' -d '{{\"data\":\"hello\"}}'"
    );
    run_to_end(async move {
        // One signal stops every node.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            daemon::stop_signal().await;
            let _ = stop_tx.send(true);
        });
        let mut nodes = tokio::task::JoinSet::new();
        for (path, config) in paths.into_iter().zip(configs) {
            let mut stop = stop_rx.clone();
            nodes.spawn(async move {
                let stopped = async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                };
                daemon::run(&path, config, daemon::Start::Run, stopped)
                    .await
                    .with_context(|| format!("node {}", path.display()))
            });
        }
        while let Some(finished) = nodes.join_next().await {
            finished.context("a node task failed")??;
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `ledgerd check`: progress on stderr, the verdict on stdout.
fn snapshot(command: SnapshotCommand) -> anyhow::Result<ExitCode> {
    use ledger::backup;
    let describe = |contents: &backup::Contents| {
        let manifest = &contents.manifest;
        format!(
            "snapshot at height {} (block {}), {} entries in {} chunks, blocks 1 to {}, \
             {} signatures on its certificate, {} bytes",
            manifest.height(),
            manifest.header.hash(),
            manifest.header.log_size,
            manifest.chunks(),
            contents.tip,
            manifest.certificate.signatures.len(),
            contents.bytes
        )
    };
    match command {
        SnapshotCommand::Save { config: path, out } => {
            let config = NodeConfig::load(&path)?;
            let spec = config.chain_spec()?;
            let temporary = out.with_extension("partial");
            let mut file = std::io::BufWriter::new(
                std::fs::File::create(&temporary)
                    .with_context(|| format!("creating {}", temporary.display()))?,
            );
            let database = config.database_path();
            let saved = match ledger::storage::Store::open_read_only(&database, &spec) {
                Ok(store) => {
                    let metrics = std::sync::Arc::default();
                    let plugins = ledger::plugin_host::Plugins::load(&config.plugins, metrics)?;
                    let window = ledger::chain::Policy::difficulty_window(&plugins) as u64;
                    backup::save_from_store(&store, window, &mut file).map_err(anyhow::Error::from)
                }
                // Held by a running node: through its API.
                Err(stopped) => {
                    let credentials = ledger::http::upstream(&config.upstream)?;
                    let url = credentials.base_url(&local_address(config.api_listen))?;
                    let agent = credentials.agent(std::time::Duration::from_secs(60))?;
                    backup::save_from_api(&spec, &url, agent, &mut file).with_context(|| {
                        format!(
                            "{} cannot be read ({stopped}); the running node at {url} was \
                             asked instead",
                            database.display()
                        )
                    })
                }
            };
            let contents = match saved {
                Ok(contents) => contents,
                Err(error) => {
                    let _ = std::fs::remove_file(&temporary);
                    return Err(error);
                }
            };
            file.into_inner()
                .map_err(|error| error.into_error())
                .and_then(|file| file.sync_all())
                .and_then(|()| std::fs::rename(&temporary, &out))
                .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {}: {}", out.display(), describe(&contents));
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Restore {
            input,
            config: path,
        } => {
            let config = NodeConfig::load(&path)?;
            let spec = config.chain_spec()?;
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("creating {}", config.data_dir.display()))?;
            let file = std::io::BufReader::new(
                std::fs::File::open(&input)
                    .with_context(|| format!("opening {}", input.display()))?,
            );
            let options = config.store_options();
            let contents = backup::restore(
                &spec,
                file,
                &config.database_path(),
                &config.data_dir.join("ledger.redb.restoring"),
                options,
            )
            .with_context(|| format!("restoring {}", input.display()))?;
            println!(
                "restored {} from {}: {}",
                config.database_path().display(),
                input.display(),
                describe(&contents)
            );
            Ok(ExitCode::SUCCESS)
        }
        SnapshotCommand::Inspect { input, genesis } => {
            let spec = genesis
                .map(|genesis| {
                    std::fs::read_to_string(&genesis)
                        .with_context(|| format!("reading {}", genesis.display()))
                        .and_then(|text| Ok(ledger::chain::ChainSpec::from_toml(&text)?))
                })
                .transpose()?;
            let file = std::io::BufReader::new(
                std::fs::File::open(&input)
                    .with_context(|| format!("opening {}", input.display()))?,
            );
            match backup::inspect(file, spec.as_ref()) {
                Ok(contents) => {
                    let checked = match spec {
                        Some(_) => "checked against the genesis file",
                        None => "decoded, not checked (pass --genesis)",
                    };
                    println!("{}: {}; {checked}", input.display(), describe(&contents));
                    Ok(ExitCode::SUCCESS)
                }
                Err(error) => {
                    println!("{}: {error}", input.display());
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

fn check_database(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = NodeConfig::load(path)?;
    let database = config.database_path();
    let started = std::time::Instant::now();
    let mut report_progress = |progress: &ledger::storage::CheckProgress| {
        let percent = (progress.height as f64 + 1.0) * 100.0 / (progress.tip as f64 + 1.0);
        eprintln!(
            "checking {}: block {} of {} ({percent:.0}%), {} entries, {:.1} s",
            database.display(),
            progress.height,
            progress.tip,
            progress.entries,
            started.elapsed().as_secs_f64()
        );
    };
    match daemon::check_database(&config, &mut report_progress) {
        Ok(daemon::Verdict::Clean(report)) => {
            let log = match report.log {
                None => "the database names no consensus log yet".to_owned(),
                Some(log) if log.torn => format!(
                    "the consensus log holds {} records, then an append a crash cut \
                     short, never acknowledged, which the next start drops",
                    log.records
                ),
                Some(log) => format!("the consensus log holds {} records", log.records),
            };
            println!(
                "OK {}: {} blocks, {} entries and {} Merkle nodes check out; {log} ({:.1} s)",
                database.display(),
                report.tip + 1,
                report.entries,
                report.merkle_nodes,
                started.elapsed().as_secs_f64()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ok(daemon::Verdict::Damaged(damage)) => {
            println!("DAMAGED {}: {damage}", database.display());
            println!(
                "  recover: move the data directory aside and start the node again to \
                 rejoin from its peers (README, \"Recovering a damaged database\")"
            );
            Ok(ExitCode::from(1))
        }
        Err(error) => {
            eprintln!(
                "ledgerd: the check could not run: {}",
                ledger::cli::describe(error.as_ref())
            );
            Ok(ExitCode::from(2))
        }
    }
}

fn migrate(path: &std::path::Path, check: bool) -> anyhow::Result<ExitCode> {
    let config = NodeConfig::load(path)?;
    let database_path = config.database_path();
    if !database_path.exists() {
        anyhow::bail!(
            "{}: no database yet; `ledgerd run` creates it",
            database_path.display()
        );
    }
    // Held by a running node, say: the store's words for why, not redb's.
    let database = redb::Database::open(&database_path)
        .map_err(|error| ledger::storage::open_refused(&database_path, error))?;
    let version = ledger_migrations::schema_version(&database)
        .with_context(|| database_path.display().to_string())?;
    let pending = ledger_migrations::pending(&database)
        .with_context(|| database_path.display().to_string())?;
    println!(
        "{}: schema version {version}, this build writes {}",
        database_path.display(),
        ledger_migrations::CURRENT_VERSION
    );
    for step in &pending {
        println!("  pending {}: {}", step.version, step.description);
    }
    if check {
        return Ok(if pending.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    let upgrade = ledger_migrations::migrate(&database)
        .with_context(|| database_path.display().to_string())?;
    println!("migrated from {} to {}", upgrade.from, upgrade.to);
    Ok(ExitCode::SUCCESS)
}

/// `ledgerd plugins check`.
fn check_plugin(file: &std::path::Path, config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    // Loading runs the library's own code, which may end the process (an abort in
    // its initialisers): the check runs in a child, which may die in its place.
    const CHILD: &str = "LEDGERD_PLUGIN_CHECK_CHILD";
    if std::env::var_os(CHILD).is_none() {
        use std::io::Write;
        let output = std::process::Command::new(std::env::current_exe()?)
            .args(std::env::args_os().skip(1))
            .env(CHILD, "1")
            .output()
            .context("running the check in a child process")?;
        let _ = std::io::stdout().write_all(&output.stdout);
        let _ = std::io::stderr().write_all(&output.stderr);
        return Ok(match output.status.code() {
            Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
            None => {
                use std::os::unix::process::ExitStatusExt;
                println!(
                    "{}: loading it ended the process ({}): its initialisers or its \
                     descriptor function crash; a node would crash at start the same way",
                    file.display(),
                    output
                        .status
                        .signal()
                        .map_or_else(|| "no exit code".to_owned(), |n| format!("signal {n}"))
                );
                ExitCode::from(1)
            }
        });
    }
    let inspection = plugin_host::inspect(file)?;
    let fingerprint = &inspection.fingerprint;
    println!(
        "{}: {} {}",
        file.display(),
        fingerprint.name,
        fingerprint.version
    );
    println!("  sha256: {}", fingerprint.sha256);
    println!("  hooks: {}", inspection.hooks.join(", "));
    if inspection.difficulty_window > 0 {
        println!(
            "  difficulty window: {} headers",
            inspection.difficulty_window
        );
    }
    if let Some(path) = config {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{}: not TOML", path.display()))?;
        let plugin = plugin_host::Plugin::load(&plugin_host::PluginConfig {
            path: file.to_owned(),
            config: table,
            budget_ms: 0,
        })?;
        drop(plugin);
        println!("  init accepted {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// A new API token for `name` with `role`: its secret and its config entry.
fn new_token(
    name: &str,
    role: ledger::api::auth::Role,
) -> anyhow::Result<(String, ledger::api::auth::TokenConfig)> {
    ledger::api::auth::TokenConfig::generate(name, role)
        .map_err(|error| anyhow::anyhow!("the OS has no randomness to give: {error}"))
}

/// The address a tool on the node's own machine calls its API at: loopback when the
/// node listens on every address.
fn local_address(listen: std::net::SocketAddr) -> String {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    std::net::SocketAddr::new(ip, listen.port()).to_string()
}
