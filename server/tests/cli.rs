//! `ledgerd` and `ledgerctl` as an operator runs them: real processes on free loopback
//! ports, every wait bounded, every process stopped.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// A change made to a saved answer.
type Tamper = fn(&mut serde_json::Value);

fn dev_init(dir: &Path, port: u16) -> PathBuf {
    let output = run(
        LEDGERD,
        &[
            "dev",
            "init",
            "--nodes",
            "1",
            "--dir",
            dir.to_str().unwrap(),
            "--base-port",
            &port.to_string(),
            "--difficulty",
            "8",
        ],
    );
    assert!(output.status.success(), "{}", text(&output));
    dir.join("node0/ledgerd.toml")
}

#[test]
fn submit_wait_verify_and_refuse_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dev_init(&dir.path().join("dev"), port);
    let genesis = dir.path().join("dev/genesis.toml");
    let daemon = Daemon::start(&config, port);
    // The node as HOST:PORT, as operators type it, is its plain HTTP API.
    let bare = run(
        LEDGERCTL,
        &["--node", &format!("127.0.0.1:{port}"), "status"],
    );
    assert!(bare.status.success(), "{}", text(&bare));
    for probe in [&["health"][..], &["health", "--ready"]] {
        let answer = daemon.ctl(probe);
        assert!(answer.status.success(), "{probe:?}: {}", text(&answer));
    }
    for variable in ["LEDGERCTL_NODE", "LEDGER_NODE"] {
        let from_env = Command::new(LEDGERCTL)
            .arg("status")
            .env(variable, format!("127.0.0.1:{port}"))
            .output()
            .unwrap();
        assert!(from_env.status.success(), "{variable}: {}", text(&from_env));
    }

    let committed = daemon.ctl(&["submit", "hello from the cli", "--wait"]);
    assert!(committed.status.success(), "{}", text(&committed));
    let receipt_file = dir.path().join("receipt.json");
    std::fs::write(&receipt_file, &committed.stdout).unwrap();
    let verified = verify(&receipt_file, &genesis);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(
        text(&verified).starts_with("ok: entry"),
        "{}",
        text(&verified)
    );

    // The answer of `get` verifies too, including its data against the id.
    let id = serde_json::from_slice::<serde_json::Value>(&committed.stdout).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let entry = daemon.ctl(&["get", &id]);
    let entry_file = dir.path().join("entry.json");
    std::fs::write(&entry_file, &entry.stdout).unwrap();
    let verified = verify(&entry_file, &genesis);
    assert!(verified.status.success(), "{}", text(&verified));

    // Tampering with any part is caught, with a reason.
    let original = String::from_utf8(entry.stdout.clone()).unwrap();
    for (from, to) in [
        ("hello from the cli", "hello from a liar"),
        ("\"log_index\": 0", "\"log_index\": 1"),
    ] {
        assert!(original.contains(from), "{from} not in {original}");
        std::fs::write(&entry_file, original.replacen(from, to, 1)).unwrap();
        let refused = verify(&entry_file, &genesis);
        assert!(!refused.status.success(), "tampered {from:?} verified");
        assert!(text(&refused).contains("ledgerctl:"), "{}", text(&refused));
    }
    let parsed: serde_json::Value = serde_json::from_str(&original).unwrap();
    let tamperings: [(&str, Tamper); 3] = [
        ("receipt leaf index", |v| {
            let index = v["receipt"]["log_index"].as_u64().unwrap();
            v["receipt"]["log_index"] = (index + 5).into()
        }),
        ("certificate signature", |v| {
            let signature = v["receipt"]["certificate"]["signatures"][0]["signature"]
                .as_str()
                .unwrap();
            let flipped = if signature.starts_with('0') { "1" } else { "0" };
            v["receipt"]["certificate"]["signatures"][0]["signature"] =
                format!("{flipped}{}", &signature[1..]).into();
        }),
        ("readable header", |v| {
            // Always a different nonce: a fixed one could equal the mined nonce.
            let nonce = v["receipt"]["header"]["nonce"].as_u64().unwrap();
            v["receipt"]["header"]["nonce"] = nonce.wrapping_add(1).into()
        }),
    ];
    for (what, tamper) in tamperings {
        let mut value = parsed.clone();
        tamper(&mut value);
        std::fs::write(&entry_file, value.to_string()).unwrap();
        let refused = verify(&entry_file, &genesis);
        assert!(!refused.status.success(), "tampered {what} verified");
    }
    // Another chain's genesis does not accept the receipt.
    let other = dev_init(&dir.path().join("other"), free_port());
    let other_genesis = other
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("genesis.toml");
    let refused = verify(&receipt_file, &other_genesis);
    assert!(!refused.status.success());
    // `submit` and `get` check what they print when given the genesis.
    let genesis_arg = genesis.to_str().unwrap();
    let checked = daemon.ctl(&["submit", "checked as it lands", "--genesis", genesis_arg]);
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(text(&checked).contains("\"receipt\""), "{}", text(&checked));
    assert!(daemon
        .ctl(&["get", &id, "--genesis", genesis_arg])
        .status
        .success());
    let foreign = daemon.ctl(&["get", &id, "--genesis", other_genesis.to_str().unwrap()]);
    assert!(!foreign.status.success());
    assert!(
        text(&foreign).contains("does not verify"),
        "{}",
        text(&foreign)
    );

    // A signed entry.
    let key = dir.path().join("author.key");
    assert!(run(LEDGERCTL, &["keygen", "--out", key.to_str().unwrap()])
        .status
        .success());
    let signed = daemon.ctl(&[
        "submit",
        "signed by me",
        "--wait",
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(signed.status.success(), "{}", text(&signed));
    assert!(text(&signed).contains("\"author\"") || text(&signed).contains("receipt"));

    // Errors come back as the server's message and a failing exit.
    let duplicate = daemon.ctl(&["submit", "hello from the cli"]);
    assert!(!duplicate.status.success());
    assert!(
        text(&duplicate).contains("duplicate"),
        "{}",
        text(&duplicate)
    );
    assert!(daemon.ctl(&["blocks", "--from", "1"]).status.success());

    // The running node holds its database: migrate says so, not redb's words.
    let held = run(
        LEDGERD,
        &["migrate", "--config", config.to_str().unwrap(), "--check"],
    );
    assert!(!held.status.success());
    assert!(
        text(&held).contains("a running node holds it"),
        "{}",
        text(&held)
    );

    let log = daemon.stop();
    assert!(log.contains("stopped"), "{log}");
    assert!(
        !log.contains("still referenced"),
        "the database was not released: {log}"
    );

    // The database is at the current schema; migrate --check says so.
    let check = run(
        LEDGERD,
        &["migrate", "--config", config.to_str().unwrap(), "--check"],
    );
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        text(&check).contains(&format!(
            "schema version {}",
            ledger_migrations::CURRENT_VERSION
        )),
        "{}",
        text(&check)
    );
}

#[test]
fn refuses_other_chains_and_damaged_files_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dev_init(&dir.path().join("dev"), port);
    Daemon::start(&config, port).stop();
    let database = dir.path().join("dev/node0/data/ledger.redb");

    // The same data directory with another chain's genesis and key.
    let other = dev_init(&dir.path().join("other"), free_port());
    let other_dir = other.parent().unwrap();
    std::fs::copy(&database, other_dir.join("data/ledger.redb")).ok();
    std::fs::create_dir_all(other_dir.join("data")).unwrap();
    std::fs::copy(&database, other_dir.join("data/ledger.redb")).unwrap();
    let refused = run(LEDGERD, &["run", "--config", other.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("belongs to chain"),
        "{}",
        text(&refused)
    );

    // Zeroed and truncated files.
    let original = std::fs::read(&database).unwrap();
    for damaged in [
        vec![0u8; original.len()],
        original[..original.len() / 3].to_vec(),
    ] {
        std::fs::write(&database, damaged).unwrap();
        let refused = run(LEDGERD, &["run", "--config", config.to_str().unwrap()]);
        assert!(!refused.status.success());
        let message = text(&refused);
        assert!(
            message.contains("ledger.redb") && message.contains("ledgerd:"),
            "{message}"
        );
    }

    // An empty file is no new database: the consensus log beside it stays as it was.
    let wal = dir.path().join("dev/node0/data/ledger.redb.wal");
    let log = std::fs::read(&wal).unwrap();
    std::fs::write(&database, b"").unwrap();
    let refused = refused_run(&config);
    assert!(
        text(&refused).contains("is empty (0 bytes)"),
        "{}",
        text(&refused)
    );
    assert_eq!(std::fs::read(&wal).unwrap(), log);
    assert!(std::fs::read(&database).unwrap().is_empty());
}

/// `ledgerd check` says DAMAGED (exit 1), with the advice to rejoin, of a missing
/// consensus log, of a file redb finds corrupt, of one that is no redb database and
/// of an empty one.
#[test]
fn ledgerd_check_calls_a_missing_log_and_corrupt_foreign_and_empty_files_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dev_init(&dir.path().join("dev"), port);
    let check = || run(LEDGERD, &["check", "--config", config.to_str().unwrap()]);
    Daemon::start(&config, port).stop();
    let clean = check();
    assert_eq!(clean.status.code(), Some(0), "{}", text(&clean));
    assert!(
        text(&clean).contains("the consensus log holds"),
        "{}",
        text(&clean)
    );

    // The consensus log beside it is read too: without it the member would vote
    // having forgotten its votes.
    let wal = dir.path().join("dev/node0/data/ledger.redb.wal");
    let log = std::fs::read(&wal).unwrap();
    std::fs::remove_file(&wal).unwrap();
    let checked = check();
    assert_eq!(checked.status.code(), Some(1), "{}", text(&checked));
    assert!(
        text(&checked).contains("DAMAGED") && text(&checked).contains("consensus log"),
        "{}",
        text(&checked)
    );
    std::fs::write(&wal, log).unwrap();

    let database = dir.path().join("dev/node0/data/ledger.redb");
    let original = std::fs::read(&database).unwrap();
    let mut header = original.clone();
    header[32..1024].fill(0xff);
    let mut foreign = original.clone();
    foreign[..16].fill(0x5a);
    for (n, damaged) in [header, foreign, Vec::new()].into_iter().enumerate() {
        std::fs::write(&database, damaged).unwrap();
        let checked = check();
        assert_eq!(checked.status.code(), Some(1), "{}", text(&checked));
        let message = text(&checked);
        assert!(
            message.contains("DAMAGED") && message.contains("recover:"),
            "{message}"
        );
        // A start refuses what redb finds damaged with the same advice.
        if n < 2 {
            let refused = refused_run(&config);
            assert!(!refused.status.success(), "{}", text(&refused));
            let message = text(&refused);
            assert!(
                message.contains("damaged database")
                    && message.contains("move the data directory aside"),
                "{message}"
            );
        }
    }
}

/// `ledgerctl submit --wait` whose wait runs out (a member alone, no quorum) prints
/// the entry id and exits non-zero; `--genesis` takes `--timeout` as `--wait` does,
/// and a timeout over 300 s is refused before anything is sent.
#[test]
fn a_submit_that_does_not_commit_in_time_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("cluster");
    let (configs, base) = support::layout(&layout, 4);
    let daemon = Daemon::start(&configs[0], base);
    let waited = daemon.ctl(&["submit", "alone", "--wait", "--timeout", "1"]);
    assert_eq!(waited.status.code(), Some(1), "{}", text(&waited));
    let accepted: serde_json::Value = serde_json::from_slice(&waited.stdout).unwrap();
    let id = accepted["id"].as_str().unwrap();
    assert!(
        String::from_utf8_lossy(&waited.stderr).contains(&format!("entry {id} is accepted")),
        "{}",
        text(&waited)
    );
    let genesis = layout.join("genesis.toml");
    let checked = daemon.ctl(&[
        "submit",
        "checked",
        "--genesis",
        genesis.to_str().unwrap(),
        "--timeout",
        "1",
    ]);
    assert_eq!(checked.status.code(), Some(1), "{}", text(&checked));
    assert!(
        text(&checked).contains("not committed yet"),
        "{}",
        text(&checked)
    );
    let accepted: serde_json::Value = serde_json::from_slice(&checked.stdout).unwrap();
    assert!(accepted["id"].is_string(), "{}", text(&checked));
    let long = daemon.ctl(&["submit", "long", "--wait", "--timeout", "301"]);
    assert_eq!(long.status.code(), Some(2), "{}", text(&long));
    daemon.stop();
}

/// A member started on another member's data directory (copied whole, its
/// consensus log too) refuses: it would vote having forgotten its own votes.
#[test]
fn a_member_refuses_another_members_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("cluster");
    let (configs, base) = support::layout(&layout, 4);
    Daemon::start(&configs[0], base).stop();
    let (from, to) = (layout.join("node0/data"), layout.join("node1/data"));
    std::fs::create_dir_all(&to).unwrap();
    for file in std::fs::read_dir(&from).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), to.join(file.file_name())).unwrap();
    }
    let message = text(&refused_run(&configs[1]));
    assert!(
        message.contains("holds what node") && message.contains("not this node's key"),
        "{message}"
    );
    // Its owner still starts on it.
    Daemon::start(&configs[0], base).stop();
}

/// Start-up refuses, at once and with a message naming the problem: a key file
/// others can read (as ssh does), a busy API port (before consensus starts and
/// peers connect), a cluster of no nodes, and a dev layout on other ports.
#[test]
fn start_up_refuses_a_readable_key_a_busy_port_and_no_nodes() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("cluster");
    let (configs, base) = support::layout(&layout, 4);
    let config = &configs[0];
    let key = layout.join("node0/node.key");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = run(LEDGERD, &["run", "--config", config.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("mode 0644") && text(&refused).contains("chmod 600"),
        "{}",
        text(&refused)
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let busy = std::net::TcpListener::bind(("127.0.0.1", base)).unwrap();
    let started = Instant::now();
    let refused = run(LEDGERD, &["run", "--config", config.to_str().unwrap()]);
    assert!(!refused.status.success());
    let message = text(&refused);
    assert!(message.contains("cannot listen on api_listen"), "{message}");
    assert!(!message.contains("consensus started"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(busy);

    let refused = run(
        LEDGERD,
        &["dev", "--nodes", "0", "--dir", layout.to_str().unwrap()],
    );
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("at least one node"),
        "{}",
        text(&refused)
    );

    // A layout made on other ports is not silently run on its own.
    let other = (base + 100).to_string();
    let dir_arg = layout.to_str().unwrap();
    let refused = run(LEDGERD, &["dev", "--dir", dir_arg, "--base-port", &other]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains(&format!("was made with base port {base}")),
        "{}",
        text(&refused)
    );
}

#[test]
fn init_writes_a_key_and_a_config_once() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let data = dir.path().join("var");
    let etc_arg = etc.to_str().unwrap();
    let init = [
        "init",
        "--dir",
        etc_arg,
        "--data-dir",
        data.to_str().unwrap(),
        "--api-listen",
        "127.0.0.1:7100",
    ];
    let output = run(LEDGERD, &init);
    assert!(output.status.success(), "{}", text(&output));
    let config: toml::Value =
        toml::from_str(&std::fs::read_to_string(etc.join("ledgerd.toml")).unwrap()).unwrap();
    assert_eq!(config["data_dir"].as_str(), data.to_str());
    let key = std::fs::read(etc.join("node.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(etc.join("node.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A new key says it never voted, until the node creates its database.
    assert!(etc.join("node.key.new").exists());
    // A second init refuses and leaves the node's key alone.
    let again = run(LEDGERD, &init);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    assert_eq!(std::fs::read(etc.join("node.key")).unwrap(), key);
}

#[test]
fn genesis_writes_a_checked_file_from_the_keys_that_a_node_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let etc = dir.path().join("etc");
    let port = free_port();
    let (api, p2p) = (
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{}", port + 1),
    );
    let init = run(
        LEDGERD,
        &[
            "init",
            "--dir",
            etc.to_str().unwrap(),
            "--data-dir",
            dir.path().join("var").to_str().unwrap(),
            "--api-listen",
            &api,
            "--p2p-listen",
            &p2p,
        ],
    );
    assert!(init.status.success(), "{}", text(&init));
    let member_key = text(&init)
        .lines()
        .find_map(|line| line.strip_prefix("public key (pass it to `ledgerd genesis --member`): "))
        .expect("init prints the public key")
        .to_owned();
    let keygen = run(
        LEDGERCTL,
        &[
            "keygen",
            "--out",
            dir.path().join("admin.key").to_str().unwrap(),
        ],
    );
    assert!(keygen.status.success(), "{}", text(&keygen));
    let admin_key = String::from_utf8(keygen.stdout).unwrap().trim().to_owned();

    let genesis = etc.join("genesis.toml");
    let member = format!("{member_key},p2p={p2p},api={api}");
    let args = [
        "genesis",
        "--chain-id",
        "audit",
        "--member",
        &member,
        "--admin",
        &admin_key,
        "--difficulty",
        "8",
        "--out",
        genesis.to_str().unwrap(),
    ];
    let written = run(LEDGERD, &args);
    assert!(written.status.success(), "{}", text(&written));
    assert!(
        text(&written).contains("1 member, 1 admin, 1 to sign a membership change"),
        "{}",
        text(&written)
    );
    let spec =
        ledger::chain::ChainSpec::from_toml(&std::fs::read_to_string(&genesis).unwrap()).unwrap();
    assert_eq!(
        hex::encode(spec.members.as_slice()[0].public_key.as_bytes()),
        member_key
    );
    assert_eq!(
        spec.members.as_slice()[0].p2p_addr.as_deref(),
        Some(p2p.as_str())
    );
    let admins = spec.admins.as_ref().unwrap();
    assert_eq!(hex::encode(admins.keys()[0].as_bytes()), admin_key);
    assert!(text(&written).contains(&spec.chain_hash().to_string()));

    // The node `init` configured runs on it (the config names genesis.toml beside it).
    let daemon = Daemon::start(&etc.join("ledgerd.toml"), port);
    let committed = daemon.ctl(&["submit", "on a written genesis", "--wait"]);
    assert!(committed.status.success(), "{}", text(&committed));
    daemon.stop();

    // Never over an existing file; refusals say what is wrong.
    let again = run(LEDGERD, &args);
    assert!(!again.status.success());
    assert!(text(&again).contains("exists"), "{}", text(&again));
    let second = format!("{},api=127.0.0.1:1", "ab".repeat(32));
    let misspelt = format!("{member_key},peer={p2p}");
    let refusals = [
        (
            vec!["--member", member.as_str(), "--member", second.as_str()],
            "p2p=HOST:PORT",
        ),
        (
            vec!["--member", member.as_str(), "--admin", "beef"],
            "admin public key",
        ),
        (
            vec![
                "--member",
                member.as_str(),
                "--admin",
                &admin_key,
                "--admin-threshold",
                "2",
            ],
            "admin_threshold",
        ),
        (
            vec!["--member", misspelt.as_str()],
            "p2p=HOST:PORT or api=HOST:PORT",
        ),
    ];
    for (extra, needle) in refusals {
        let mut args = vec!["genesis", "--chain-id", "audit"];
        args.extend(extra);
        let refused = run(LEDGERD, &args);
        assert!(!refused.status.success(), "{args:?}");
        assert!(
            text(&refused).contains(needle),
            "{needle}: {}",
            text(&refused)
        );
    }
    // Without --out the file goes to standard output, and without admins it has none.
    let printed = run(
        LEDGERD,
        &["genesis", "--chain-id", "audit", "--member", &member],
    );
    assert!(printed.status.success(), "{}", text(&printed));
    let fixed =
        ledger::chain::ChainSpec::from_toml(std::str::from_utf8(&printed.stdout).unwrap()).unwrap();
    assert_eq!(fixed.admins, None);
}

/// What the tools print: each cause once, a hint where a file is missing, distinct
/// exit codes, the commit in the version, nothing broken by a reader that left.
#[test]
fn messages_exit_codes_and_versions_say_what_an_operator_needs() {
    let dir = tempfile::tempdir().unwrap();
    let missing = run(LEDGERD, &["run", "--config", "/nonexistent/ledgerd.toml"]);
    let message = text(&missing);
    assert_eq!(
        message.matches("No such file").count(),
        1,
        "each cause once: {message}"
    );

    let etc = dir.path().join("etc");
    let init = run(
        LEDGERD,
        &[
            "init",
            "--dir",
            etc.to_str().unwrap(),
            "--api-listen",
            "127.0.0.1:1",
        ],
    );
    assert!(init.status.success(), "{}", text(&init));
    let config = etc.join("ledgerd.toml");
    let config = config.to_str().unwrap();
    let no_genesis = run(LEDGERD, &["run", "--config", config]);
    assert!(
        text(&no_genesis).contains("ledgerd genesis"),
        "{}",
        text(&no_genesis)
    );
    // Pending is 1, cannot tell is 2.
    let no_database = run(LEDGERD, &["migrate", "--check", "--config", config]);
    assert_eq!(no_database.status.code(), Some(2), "{}", text(&no_database));

    for (tool, name) in [(LEDGERD, "ledgerd"), (LEDGERCTL, "ledgerctl")] {
        let version = run(tool, &["--version"]);
        let version = String::from_utf8(version.stdout).unwrap();
        assert!(
            version.starts_with(&format!("{name} 0.")) && version.contains("(commit "),
            "{version}"
        );
    }

    // Completion scripts name the subcommands; the config may come from the environment.
    for (tool, subcommand) in [(LEDGERD, "genesis"), (LEDGERCTL, "verify")] {
        let script = run(tool, &["completions", "bash"]);
        assert!(script.status.success(), "{}", text(&script));
        assert!(String::from_utf8_lossy(&script.stdout).contains(subcommand));
    }
    let from_env = Command::new(LEDGERD)
        .args(["migrate", "--check"])
        .env("LEDGERD_CONFIG", config)
        .output()
        .unwrap();
    assert_eq!(from_env.status.code(), Some(2), "{}", text(&from_env));
    assert!(
        text(&from_env).contains("no database yet"),
        "{}",
        text(&from_env)
    );

    // A reader that closed its end (`ledgerctl keygen ... | true`) is no crash.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let closed = Command::new(LEDGERCTL)
        .args(["keygen", "--out"])
        .arg(dir.path().join("author.key"))
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(closed.status.code(), Some(0), "{}", text(&closed));
    assert!(closed.stderr.is_empty(), "{}", text(&closed));
}

/// The admins' offline ceremony for a membership change: prepared against the node's
/// epoch, signed from an admin's key file, shown with each signer's verdict; a key that
/// is no admin's cannot sign, and a change altered after signing shows its signature
/// invalid.
#[test]
fn admins_prepare_sign_and_check_a_membership_change() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dev_init(&dir.path().join("dev"), port);
    let genesis = dir.path().join("dev/genesis.toml");
    let genesis = genesis.to_str().unwrap();
    let admin = dir.path().join("dev/admin.key");
    let daemon = Daemon::start(&config, port);
    let learner = run(
        LEDGERCTL,
        &[
            "keygen",
            "--out",
            dir.path().join("learner.key").to_str().unwrap(),
        ],
    );
    let learner = String::from_utf8(learner.stdout).unwrap().trim().to_owned();
    let file = dir.path().join("change.json");
    let file = file.to_str().unwrap();

    // Neither signed nor written: nothing to do, and the command says what to add.
    let aimless = daemon.ctl(&["member", "add", "--key", &learner, "--p2p", "10.0.0.9:7101"]);
    assert!(!aimless.status.success());
    assert!(text(&aimless).contains("--admin-key"), "{}", text(&aimless));
    let made = daemon.ctl(&[
        "member",
        "add",
        "--key",
        &learner,
        "--p2p",
        "10.0.0.9:7101",
        "--sign-only",
        "--out",
        file,
    ]);
    assert!(made.status.success(), "{}", text(&made));
    assert!(
        text(&made).contains("in epoch 0, with 0 signature(s)"),
        "{}",
        text(&made)
    );
    daemon.stop();
    let unsigned = run(LEDGERCTL, &["member", "show", file, "--genesis", genesis]);
    assert!(!unsigned.status.success());
    assert!(
        text(&unsigned).contains("0 admin signatures, the chain needs 1"),
        "{}",
        text(&unsigned)
    );

    let outsider = dir.path().join("dev/node0/node.key");
    let refused = run(
        LEDGERCTL,
        &[
            "member",
            "sign",
            file,
            "--admin-key",
            outsider.to_str().unwrap(),
            "--genesis",
            genesis,
        ],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("is not an admin"),
        "{}",
        text(&refused)
    );

    let signed = run(
        LEDGERCTL,
        &[
            "member",
            "sign",
            file,
            "--admin-key",
            admin.to_str().unwrap(),
            "--genesis",
            genesis,
        ],
    );
    assert!(signed.status.success(), "{}", text(&signed));
    let shown = run(LEDGERCTL, &["member", "show", file, "--genesis", genesis]);
    assert!(shown.status.success(), "{}", text(&shown));
    assert!(text(&shown).contains(&format!(
        "add learner {learner} at 10.0.0.9:7101 in epoch 0"
    )));
    assert!(text(&shown).contains(": valid"), "{}", text(&shown));

    // The same signature over another address: invalid.
    let mut saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let bytes = saved["reconfiguration"]
        .as_str()
        .unwrap()
        .replace(&hex::encode("10.0.0.9:7101"), &hex::encode("10.0.0.8:7101"));
    saved["reconfiguration"] = bytes.into();
    std::fs::write(file, saved.to_string()).unwrap();
    let altered = run(LEDGERCTL, &["member", "show", file, "--genesis", genesis]);
    assert!(!altered.status.success());
    assert!(text(&altered).contains("INVALID"), "{}", text(&altered));
}

/// The README's walkthrough, as a new user pastes it, against a node of its own: every
/// command succeeds, the receipt verifies, and a second run does too (fresh entries).
#[test]
fn the_readme_walkthrough_runs_and_runs_again() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let marker = "## Walkthrough\n\n```sh\n";
    let start = readme.find(marker).expect("the walkthrough") + marker.len();
    let script = &readme[start..start + readme[start..].find("```").unwrap()];
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dev_init(&dir.path().join("ledger-dev"), port);
    let daemon = Daemon::start(&config, port);
    let script = script
        .replace("http://127.0.0.1:7100", &daemon.url)
        .replace(
            "cargo run --release -p ledger --bin ledgerctl --",
            LEDGERCTL,
        );
    assert!(
        !script.contains("cargo "),
        "every command runs here: {script}"
    );
    for round in 0..2 {
        let output = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let printed = text(&output);
        assert!(output.status.success(), "round {round}: {printed}");
        assert!(printed.contains("ok: entry"), "round {round}: {printed}");
        // An error answer is `{"error": CODE, ...}` (a 409 for a repeated entry).
        assert!(
            !printed.contains("{\"error\":\""),
            "round {round}: {printed}"
        );
    }
    daemon.stop();
}

/// The next datagram on `socket` (its read timeout bounds the wait).
fn next_notification(socket: &std::os::unix::net::UnixDatagram) -> String {
    let mut buffer = [0u8; 4096];
    let read = socket
        .recv(&mut buffer)
        .expect("no notification from ledgerd in time");
    String::from_utf8_lossy(&buffer[..read]).into_owned()
}

#[test]
fn tells_systemd_it_is_ready_alive_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dev_init(dir.path(), port);
    let socket_path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let daemon = Daemon::spawn(
        &config,
        port,
        &[
            ("NOTIFY_SOCKET", socket_path.as_os_str()),
            ("WATCHDOG_USEC", "200000".as_ref()),
        ],
    );

    // READY=1 comes first, and only once the API answers.
    let ready = next_notification(&socket);
    assert!(ready.starts_with("READY=1\n"), "{ready:?}");
    assert!(ready.contains("STATUS=serving at height 0"), "{ready:?}");
    let status = daemon.ctl(&["status"]);
    assert!(status.status.success(), "{}", text(&status));

    // Then a watchdog ping every 100 ms (half of WATCHDOG_USEC).
    let started = Instant::now();
    for _ in 0..3 {
        let ping = next_notification(&socket);
        assert!(ping.starts_with("WATCHDOG=1\n"), "{ping:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));

    // SIGTERM: STOPPING=1 before the process exits, cleanly.
    let log = daemon.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = next_notification(&socket);
        if state.starts_with("STOPPING=1\n") {
            break;
        }
        assert!(state.starts_with("WATCHDOG=1\n"), "{state:?}");
        assert!(Instant::now() < deadline, "no STOPPING=1; log: {log}");
    }
}

#[test]
fn the_systemd_unit_passes_systemd_analyze() {
    // systemd checks that ExecStart's program exists: point it at the one just built.
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../ops/ledgerd.service"
    ))
    .unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/ledgerd run --config "));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledgerd.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/ledgerd", LEDGERD)).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze not found: apt-get install systemd");
    // It exits 0 on unknown keys and bad values too, and says so on stderr.
    assert!(
        output.status.success() && output.stderr.is_empty() && output.stdout.is_empty(),
        "{}",
        text(&output)
    );
}

/// `ledgerd dev init --nodes 4` and four `ledgerd run` processes form one cluster:
/// an entry submitted to any node commits with a certificate `ledgerctl verify`
/// accepts; after SIGKILL of the primary the others change views and commit again;
/// the killed node restarts from its store and catches up to the same chain.
#[test]
fn four_processes_form_a_cluster_that_outlives_its_primary() {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("cluster");
    let genesis = layout.join("genesis.toml");
    let (configs, base, mut daemons) = start_cluster(&layout);

    let committed = node(&daemons, 1).ctl(&["submit", "first", "--wait"]);
    assert!(committed.status.success(), "{}", text(&committed));
    let receipt = dir.path().join("first.json");
    std::fs::write(&receipt, &committed.stdout).unwrap();
    let verified = verify(&receipt, &genesis);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(
        text(&verified).contains("of 4 members"),
        "{}",
        text(&verified)
    );
    let primary = status(node(&daemons, 1))["primary"].clone();
    assert_eq!(primary, status(node(&daemons, 0))["node_id"]);

    // SIGKILL the primary; the next entry commits in a new view.
    drop(daemons[0].take());
    let second = node(&daemons, 2).ctl(&["submit", "second", "--wait"]);
    assert!(second.status.success(), "{}", text(&second));
    let answer: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    let height = answer["height"].as_u64().expect("committed");
    let now = status(node(&daemons, 3));
    assert!(now["view"].as_u64().unwrap() >= 1, "{now}");
    assert_ne!(now["primary"], primary);

    // The killed node restarts from its store and catches up to the same chain.
    daemons[0] = Some(Daemon::start(&configs[0], base));
    converge(&daemons, height);
    for daemon in daemons.into_iter().flatten() {
        daemon.stop();
    }
}

/// With f + 1 = 2 of 4 nodes down nothing commits and nothing diverges; once they
/// return, the entry that waited commits on every node.
#[test]
fn without_a_quorum_nothing_commits_until_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, base, mut daemons) = start_cluster(&dir.path().join("cluster"));
    let url = node(&daemons, 1).url.clone();
    let tip = converge(&daemons, 0);
    let before = status(node(&daemons, 1))["height"].as_u64().unwrap();
    assert_eq!(tip, status(node(&daemons, 2))["tip_hash"]);

    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let readyz = |url: &str| match agent.get(format!("{url}/readyz")).call() {
        Ok(mut response) => (
            response.status().as_u16(),
            response.body_mut().read_to_string().unwrap_or_default(),
        ),
        Err(error) => (0, error.to_string()),
    };
    assert_eq!(readyz(&url).0, 200);
    drop(daemons[2].take());
    drop(daemons[3].take());
    // Two of four reach no quorum of three: not ready, and the metrics say why.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (code, reason) = loop {
        let (code, reason) = readyz(&url);
        if code == 503 || Instant::now() >= deadline {
            break (code, reason);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, 503, "{reason}");
    assert!(reason.contains("a quorum needs"), "{reason}");
    assert_eq!(metric(node(&daemons, 1), "ledger_has_quorum"), 0);
    let mut response = ureq::post(format!("{url}/v1/entries?wait=commit&timeout_ms=3000"))
        .send(r#"{"data":"waits for a quorum"}"#)
        .unwrap();
    assert_eq!(response.status(), 202, "committed without a quorum");
    let accepted: serde_json::Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    for i in 0..2 {
        assert_eq!(
            status(node(&daemons, i))["height"].as_u64().unwrap(),
            before
        );
    }

    for i in [2u16, 3] {
        daemons[usize::from(i)] = Some(Daemon::start(&configs[usize::from(i)], base + 2 * i));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut response = ureq::get(format!("{url}/v1/entries/{id}")).call().unwrap();
        let entry: serde_json::Value =
            serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
        if entry["receipt"].is_object() {
            break;
        }
        assert!(Instant::now() < deadline, "never committed: {entry}");
        std::thread::sleep(Duration::from_millis(100));
    }
    converge(&daemons, before + 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while readyz(&url).0 != 200 {
        assert!(
            Instant::now() < deadline,
            "never ready again: {:?}",
            readyz(&url)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for daemon in daemons.into_iter().flatten() {
        daemon.stop();
    }
}

/// A rolling restart of all four nodes, one at a time with SIGTERM, while four
/// clients keep submitting: every entry answered "committed" is on every node afterwards,
/// and all four end on the same tip.
#[test]
fn a_rolling_restart_under_load_loses_nothing() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let dir = tempfile::tempdir().unwrap();
    let (configs, base, mut daemons) = start_cluster(&dir.path().join("cluster"));
    let urls: Vec<String> = (0..4u16)
        .map(|i| format!("http://127.0.0.1:{}", base + 2 * i))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(Mutex::new(Vec::<String>::new()));
    // Four clients, each starting on another node.
    let load: Vec<_> = (0..4u64)
        .map(|client| {
            let (urls, stop, committed) = (urls.clone(), stop.clone(), committed.clone());
            std::thread::spawn(move || {
                let agent = ureq::Agent::config_builder()
                    .timeout_global(Some(Duration::from_secs(15)))
                    .http_status_as_error(false)
                    .build()
                    .new_agent();
                let mut sequence = 0u64;
                // Bounded: the main thread stops it, and never more than 10,000 submits.
                while !stop.load(Ordering::Relaxed) && sequence < 10_000 {
                    let url = &urls[((client + sequence) % 4) as usize];
                    let body = format!(r#"{{"data":"rolling {client}/{sequence}"}}"#);
                    sequence += 1;
                    let Ok(mut response) = agent
                        .post(format!("{url}/v1/entries?wait=commit&timeout_ms=10000"))
                        .send(body)
                    else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    if response.status() == 200 {
                        let text = response.body_mut().read_to_string().unwrap();
                        let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
                        let id = answer["id"].as_str().unwrap().to_owned();
                        committed.lock().unwrap().push(id);
                    }
                }
            })
        })
        .collect();

    for i in 0..4u16 {
        std::thread::sleep(Duration::from_millis(700));
        let log = daemons[usize::from(i)].take().unwrap().stop();
        assert!(log.contains("stopped"), "{log}");
        daemons[usize::from(i)] = Some(Daemon::start(&configs[usize::from(i)], base + 2 * i));
    }
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    for client in load {
        client.join().unwrap();
    }

    let committed = committed.lock().unwrap().clone();
    assert!(
        committed.len() >= 10,
        "only {} commits under load",
        committed.len()
    );
    eprintln!(
        "rolling restart: {} entries committed under load",
        committed.len()
    );
    let height = status(node(&daemons, 0))["height"].as_u64().unwrap();
    converge(&daemons, height);
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .new_agent();
    for url in &urls {
        for id in &committed {
            let mut response = agent.get(format!("{url}/v1/entries/{id}")).call().unwrap();
            assert_eq!(response.status(), 200, "{id} missing on {url}");
            let text = response.body_mut().read_to_string().unwrap();
            let entry: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(entry["receipt"].is_object(), "{id} not committed on {url}");
        }
    }
    for daemon in daemons.into_iter().flatten() {
        daemon.stop();
    }
}

/// On a real process's peer port: a key outside the membership gets no hello;
/// plain bytes where TLS belongs and a member's key sending a frame that does not
/// decode are cut off; the rest of the cluster keeps committing throughout.
#[test]
fn outsiders_and_garbage_on_the_peer_port_disturb_nobody() {
    use ledger::config::NodeConfig;
    use ledger::net::{
        configs, read_frame, write_frame, Hello, Roster, MAX_HELLO_BYTES, PROTOCOL_VERSION,
        SERVER_NAME,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;

    let dir = tempfile::tempdir().unwrap();
    let (configs_paths, base, mut daemons) = start_cluster(&dir.path().join("cluster"));
    // Member 3 goes down; its key then speaks for a faulty peer. The other three
    // are a quorum only if none of them is disturbed.
    drop(daemons[3].take());
    let spec = NodeConfig::load(&configs_paths[0])
        .unwrap()
        .chain_spec()
        .unwrap();
    let member_3 = NodeConfig::load(&configs_paths[3])
        .unwrap()
        .signing_key()
        .unwrap();
    let peer_port = format!("127.0.0.1:{}", base + 1);
    let limit = Duration::from_secs(15);
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        chain_id: spec.chain_id.clone(),
        genesis_hash: spec.genesis_block().hash(),
        member: 3,
        plugins: String::new(),
    };

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let connect = |key: ed25519_dalek::SigningKey| {
            let peer_port = peer_port.clone();
            let roster = Roster::new(&spec.members, &[]);
            async move {
                let (_, client) = configs(&key, &roster).unwrap();
                let stream = TcpStream::connect(&peer_port).await.unwrap();
                let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).unwrap();
                TlsConnector::from(client).connect(name, stream).await
            }
        };

        // A key that is not a member: the TLS handshake or the first read fails.
        let outsider = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        if let Ok(mut tls) = connect(outsider).await {
            let _ = write_frame(&mut tls, &hello.encode()).await;
            let _ = tls.flush().await;
            let answer = tokio::time::timeout(limit, read_frame(&mut tls, MAX_HELLO_BYTES))
                .await
                .expect("closed in time");
            assert!(matches!(answer, Ok(None) | Err(_)), "{answer:?}");
        }

        // Plain bytes where TLS belongs: the node hangs up.
        let mut plain = TcpStream::connect(&peer_port).await.unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(limit, plain.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the plain connection stayed open");

        // Member 3's key, a correct hello, then a frame that is no message.
        let mut tls = connect(member_3.clone())
            .await
            .expect("a member's handshake");
        write_frame(&mut tls, &hello.encode()).await.unwrap();
        tls.flush().await.unwrap();
        let theirs = read_frame(&mut tls, MAX_HELLO_BYTES).await.unwrap();
        assert!(theirs.is_some(), "no hello back");
        write_frame(&mut tls, b"\xffnot a message").await.unwrap();
        tls.flush().await.unwrap();
        let deadline = Instant::now() + limit;
        loop {
            // Heartbeats may come first; the connection then closes.
            match tokio::time::timeout(limit, read_frame(&mut tls, 1 << 20)).await {
                Ok(Ok(Some(_))) => assert!(Instant::now() < deadline, "never cut off"),
                Ok(Ok(None)) | Ok(Err(_)) => break,
                Err(_) => panic!("never cut off"),
            }
        }
    });

    let committed = node(&daemons, 1).ctl(&["submit", "after the garbage", "--wait"]);
    assert!(committed.status.success(), "{}", text(&committed));
    let members = status(node(&daemons, 0))["members"].clone();
    for i in 0..3 {
        assert_eq!(members[i]["connected"], true, "{members}");
        assert!(members[i]["last_error"].is_null(), "{members}");
    }
    assert_eq!(members[3]["connected"], false, "{members}");
    let log = daemons[0].take().unwrap().stop();
    assert!(
        log.contains("cut off a peer's connection") && log.contains("undecodable frame"),
        "{log}"
    );
    for daemon in daemons.into_iter().flatten() {
        daemon.stop();
    }
}

/// A member that lost its disk waits for the others to say how far the chain has
/// come; asked to stop meanwhile, it stops at once and cleanly, though the others
/// hang (they take connections and never answer): it used to wait out the request
/// timeout, 30 s, first.
#[test]
fn a_member_waiting_for_the_others_stops_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, base) = support::layout(&dir.path().join("cluster"), 4);
    // A key that may have voted: the node cannot tell a new chain from a lost disk.
    let key = dir.path().join("cluster/node0/node.key");
    std::fs::remove_file(ledger::config::new_key_mark(&key)).unwrap();
    // The others' API and peer ports, taken and never served.
    let _hung: Vec<std::net::TcpListener> = (2..8)
        .map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).unwrap())
        .collect();
    let daemon = Daemon::spawn(&configs[0], base, &[]);
    let status = format!("{}/v1/status", daemon.url);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = http("GET", &status, None);
        if code == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "never started: {code} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Asking the hung members by now: bounded, where before it asked on until
    // killed, then waited for the requests in hand. `stop` allows 15 s.
    std::thread::sleep(Duration::from_secs(1));
    let log = daemon.stop();
    assert!(log.contains("asked to stop while starting"), "{log}");
    assert!(
        !dir.path().join("cluster/node0/data/ledger.redb").exists(),
        "nothing was made of a start that was stopped"
    );
}

/// A follower that reaches no member says so on /readyz, not that it catches up.
#[test]
fn a_follower_that_reaches_no_member_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    // The members are never started.
    let (_, _) = support::layout(&chain, 4);
    let (config, port) = init_outsider(&dir.path().join("follower"), &chain.join("genesis.toml"));
    set(std::slice::from_ref(&config), "follower", "true");
    let daemon = Daemon::spawn(&config, port, &[]);
    let readyz = format!("{}/readyz", daemon.url);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, answer) = http("GET", &readyz, None);
        if code == 503 && answer.to_string().contains("no member has answered") {
            break;
        }
        assert!(Instant::now() < deadline, "{code} {answer}");
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon.stop();
}
