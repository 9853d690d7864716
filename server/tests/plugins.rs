//! The plugin host with real libraries: the example plugins built from the workspace,
//! a C plugin compiled here against `plugins/api/include/ledger_plugin.h`, and a
//! broken set (panics in every hook, another ABI version, no entry symbol, a text
//! file named `.so`, a missing file). Start-up refusals name the file; a broken hook
//! is a rejection with a reason and the node goes on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};

use ledger::chain::Entry;
use ledger::metrics::Metrics;
use ledger::plugin_host::{inspect, PluginConfig, PluginError, Plugins};
use ledger::testing;
use sha2::{Digest, Sha256};

mod support;

use support::{text, LEDGERCTL, LEDGERD};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// Builds the example plugins once per test run, into their own target directory
/// so this never waits on the lock of the `cargo test` that runs it.
fn built() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let target = workspace().join("target").join("plugin-tests");
        let status = Command::new(env!("CARGO"))
            .current_dir(workspace())
            .args(["build", "--quiet", "-p", "tx-policy", "-p", "jsonl-export"])
            .args(["-p", "difficulty-retarget"])
            .args(["-p", "ledger-plugin-api", "--lib", "--examples"])
            .arg("--target-dir")
            .arg(&target)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the example plugins failed");
        target.join("debug")
    })
}

fn library(name: &str) -> String {
    format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

fn tx_policy() -> PathBuf {
    built().join(library("tx_policy"))
}

fn jsonl_export() -> PathBuf {
    built().join(library("jsonl_export"))
}

fn difficulty_retarget() -> PathBuf {
    built().join(library("difficulty_retarget"))
}

fn panicky() -> PathBuf {
    built().join("examples").join(library("panicky"))
}

fn two_a_block() -> PathBuf {
    built().join("examples").join(library("two_a_block"))
}

/// Compiles `fixtures/plugins/NAME.c` into a shared library under `dir`.
fn c_plugin(dir: &Path, name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/plugins")
        .join(format!("{name}.c"));
    let output = dir.join(library(name));
    let compiled = Command::new("cc")
        .args(["-shared", "-fPIC", "-std=c11", "-Wall", "-Werror", "-I"])
        .arg(workspace().join("plugins/api/include"))
        .arg(&source)
        .arg("-o")
        .arg(&output)
        .output()
        .expect("a C compiler (cc)");
    assert!(
        compiled.status.success(),
        "{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    output
}

fn config(path: &Path, toml_config: &str) -> PluginConfig {
    PluginConfig {
        path: path.to_owned(),
        config: toml::from_str(toml_config).expect("toml"),
        budget_ms: 100,
    }
}

fn load(configs: &[PluginConfig]) -> Result<(Plugins, Arc<Metrics>), PluginError> {
    let metrics = Arc::new(Metrics::default());
    Plugins::load(configs, metrics.clone()).map(|plugins| (plugins, metrics))
}

#[test]
fn tx_policy_refuses_what_its_config_forbids() {
    let (plugins, metrics) =
        load(&[config(&tx_policy(), "max_bytes = 8\ncontent = \"json\"")]).expect("loads");
    let fingerprint = &plugins.fingerprints()[0];
    assert_eq!(
        (fingerprint.name.as_str(), fingerprint.version.as_str()),
        ("tx-policy", "0.1.0")
    );
    let file = std::fs::read(tx_policy()).expect("library");
    assert_eq!(fingerprint.sha256, hex::encode(Sha256::digest(&file)));
    // The config is part of it: members that run one library with different
    // configs see each other's differ.
    let config_sha256 = fingerprint
        .config_sha256
        .clone()
        .expect("a config was read");
    assert_eq!(
        plugins.fingerprint_line(),
        format!(
            "tx-policy@0.1.0:{}+config:{config_sha256}",
            fingerprint.sha256
        )
    );
    let (other, _) = load(&[config(&tx_policy(), "max_bytes = 16\ncontent = \"json\"")]).unwrap();
    let (same, _) = load(&[config(&tx_policy(), "content = \"json\"\nmax_bytes = 8")]).unwrap();
    assert_ne!(other.fingerprint_line(), plugins.fingerprint_line());
    assert_eq!(
        same.fingerprint_line(),
        plugins.fingerprint_line(),
        "key order is no difference"
    );

    assert!(plugins.validate_entry(&Entry::new(&b"[1,2]"[..])).is_ok());
    let rejection = plugins
        .validate_entry(&Entry::new(&b"[1,2,3,4,5]"[..]))
        .unwrap_err();
    assert_eq!(rejection.plugin, "tx-policy");
    assert!(rejection.reason.contains("at most 8"), "{rejection}");
    let rejection = plugins.validate_entry(&Entry::new(&b"{x"[..])).unwrap_err();
    assert!(rejection.reason.contains("must be JSON"), "{rejection}");
    assert_eq!(metrics.plugin_calls.get("validate_entry"), 3);
    assert_eq!(metrics.plugin_rejections.get("validate_entry"), 2);
}

/// A node alone whose plugin's block rule refuses the block its pool would make
/// (entries that pass one at a time, but not together, and one that passed at submit
/// and no block may hold) mines the blocks the rule takes: every other entry
/// commits. It used to drop the whole batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_alone_mines_the_blocks_its_block_rule_takes() {
    use ledger::node::{Node, NodeSettings};
    use ledger::storage::{Store, StoreOptions};
    use std::time::{Duration, Instant};

    let (plugins, _) = load(&[config(&two_a_block(), "")]).expect("loads");
    let dir = tempfile::tempdir().unwrap();
    let spec = testing::spec(&[testing::key(1)], 8);
    let path = dir.path().join("ledger.redb");
    let store = Arc::new(Store::open(&path, &spec, StoreOptions::default()).unwrap());
    let settings = NodeSettings {
        max_block_entries: 100,
        // Long enough for every submit below to join the first cut.
        max_block_delay: Duration::from_millis(300),
        pool_capacity: 100,
        mining_threads: std::num::NonZeroUsize::MIN,
    };
    let node = Node::alone(
        Arc::clone(&store),
        testing::key(1),
        settings,
        Arc::new(plugins),
        Arc::default(),
    );
    let node = Arc::new(node);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(Arc::clone(&node).run(async {
        let _ = stopped.await;
    }));
    let good = testing::entries(7, 5, 32);
    let blockless = Entry::new(&b"blockless, yet taken at submit"[..]);
    let mut told = None;
    for entry in [&good[..2], std::slice::from_ref(&blockless), &good[2..]].concat() {
        let wait = entry == blockless;
        let (_, waiter) = node.submit(entry, wait).await.expect("taken at submit");
        told = told.or(waiter);
    }
    let told = tokio::time::timeout(Duration::from_secs(20), told.expect("waits"))
        .await
        .expect("told in time");
    assert_eq!(
        told.expect("an answer").unwrap_err(),
        "refused by policy: plugin two-a-block: no block holds a blockless entry"
    );
    // Gone from the pool once told, not once its block is mined and applied.
    assert!(!node.is_pending(&blockless.id()));
    let committed = |entry: &Entry| store.entry_with_receipt(&entry.id()).unwrap().is_some();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !good.iter().all(committed) {
        assert!(
            Instant::now() < deadline,
            "the entries the rule takes did not commit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!committed(&blockless) && !node.is_pending(&blockless.id()));
    let why = node.left_pool(&blockless.id()).expect("remembered");
    assert!(why.ends_with("no block holds a blockless entry"), "{why}");
    // Out of the pool, it may be submitted again (and is let go again).
    let (_, waiter) = node
        .submit(blockless.clone(), true)
        .await
        .expect("taken again");
    let told = tokio::time::timeout(Duration::from_secs(20), waiter.expect("waits"))
        .await
        .expect("told in time");
    assert!(told.expect("an answer").is_err());
    let tip = store.tip().unwrap().height;
    assert_eq!(tip, 3, "two, two and one");
    for height in 1..=tip {
        let block = store.block(height).unwrap().expect("stored");
        assert!(block.entries.len() <= 2, "block {height}");
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stops")
        .unwrap();
}

#[test]
fn a_bad_config_stops_start_up_naming_the_file() {
    let error = load(&[config(&tx_policy(), "content = \"xml\"")]).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, PluginError::Init { .. }), "{message}");
    assert!(
        message.contains(&tx_policy().display().to_string()),
        "{message}"
    );
    assert!(message.contains("tx-policy config"), "{message}");
}

#[test]
fn a_c_plugin_built_against_the_header_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = c_plugin(dir.path(), "deny_prefix");
    let inspection = inspect(&path).expect("checks pass");
    assert_eq!(inspection.hooks, ["validate_entry"]);
    let (plugins, _) = load(&[config(&path, "")]).expect("loads");
    assert!(plugins.validate_entry(&Entry::new(&b"yes"[..])).is_ok());
    let rejection = plugins
        .validate_entry(&Entry::new(&b"nope"[..]))
        .unwrap_err();
    assert_eq!(
        rejection.to_string(),
        "plugin deny-prefix: data starting with \"no\" is refused here"
    );
}

#[test]
fn a_panicking_plugin_rejects_with_the_panic_and_the_host_goes_on() {
    let (plugins, metrics) = load(&[config(&panicky(), "")]).expect("init does not panic");
    for round in 0..3 {
        let rejection = plugins
            .validate_entry(&testing::entries(round, 1, 16)[0])
            .unwrap_err();
        assert_eq!(
            rejection.reason,
            "failed: plugin panicked: validate_entry always panics"
        );
    }
    assert_eq!(metrics.plugin_rejections.get("validate_entry"), 3);
}

#[test]
fn broken_libraries_stop_start_up_with_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join(library("notes"));
    std::fs::write(&text, "this is not a library\n").unwrap();
    let cases: [(PathBuf, &str); 4] = [
        (dir.path().join("missing.so"), "cannot read it"),
        (text, "not a shared library"),
        (
            c_plugin(dir.path(), "no_symbol"),
            "no `ledger_plugin_descriptor` symbol",
        ),
        (
            c_plugin(dir.path(), "wrong_abi"),
            "built for plugin ABI version 99; this node speaks version 1",
        ),
    ];
    for (path, problem) in cases {
        let message = load(&[config(&path, "")]).unwrap_err().to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains(problem), "{message}");
        let checked = inspect(&path).unwrap_err().to_string();
        assert_eq!(checked, message);
    }
}

/// `ledgerd plugins check` runs the start-up checks: a good library is described,
/// a broken one exits 1 with the file and the problem.
#[test]
fn plugins_check_describes_or_refuses_a_library() {
    let dir = tempfile::tempdir().unwrap();
    let good = Command::new(LEDGERD)
        .args(["plugins", "check"])
        .arg(tx_policy())
        .output()
        .unwrap();
    assert!(good.status.success(), "{}", text(&good));
    let said = text(&good);
    assert!(
        said.contains("tx-policy 0.1.0") && said.contains("validate_entry"),
        "{said}"
    );

    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, "content = \"xml\"\n").unwrap();
    let refused = Command::new(LEDGERD)
        .args(["plugins", "check"])
        .arg(tx_policy())
        .arg("--config")
        .arg(&policy)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("init refused its config"),
        "{}",
        text(&refused)
    );

    let wrong = c_plugin(dir.path(), "wrong_abi");
    let refused = Command::new(LEDGERD)
        .args(["plugins", "check"])
        .arg(&wrong)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let said = text(&refused);
    assert!(
        said.contains(&wrong.display().to_string()) && said.contains("ABI version 99"),
        "{said}"
    );

    // A library that ends the process as it loads: the check says so (it runs in
    // a child), not a bare exit by signal.
    let aborts = c_plugin(dir.path(), "aborts");
    let refused = Command::new(LEDGERD)
        .args(["plugins", "check"])
        .arg(&aborts)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("loading it ended the process (signal 6)"),
        "{}",
        text(&refused)
    );
}

/// A `[[plugins]]` table for ledgerd.toml.
fn plugin_toml(path: &Path, config: &str) -> String {
    format!(
        "\n[[plugins]]\npath = {:?}\n[plugins.config]\n{config}\n",
        path.display().to_string()
    )
}

/// A one-node layout under `dir` (difficulty 8) with `plugins` appended to its
/// config; the config path and the API URL.
fn single_node(dir: &Path, plugins: &str) -> (PathBuf, String) {
    let port = support::free_port();
    let init = Command::new(LEDGERD)
        .args(["dev", "init", "--nodes", "1", "--difficulty", "8", "--dir"])
        .arg(dir)
        .args(["--base-port", &port.to_string()])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init));
    let config = dir.join("node0/ledgerd.toml");
    let base = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, base + plugins).unwrap();
    (config, format!("http://127.0.0.1:{port}"))
}

/// A running ledgerd, killed when dropped.
struct Daemon(std::process::Child, String);

impl Daemon {
    fn start(config: &Path, url: &str) -> Daemon {
        Daemon::start_logging(config, url, std::process::Stdio::null())
    }

    /// Starts it with its log going to `log`.
    fn start_logging(config: &Path, url: &str, log: impl Into<std::process::Stdio>) -> Daemon {
        let child = Command::new(LEDGERD)
            .args(["run", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let daemon = Daemon(child, url.to_string());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !daemon.ctl(&["status"]).status.success() {
            assert!(
                std::time::Instant::now() < deadline,
                "ledgerd did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        daemon
    }

    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(LEDGERCTL)
            .args(["--node", &self.1])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node with tx-policy and the exporter answers a forbidden entry with 422 and
/// the plugin's reason, takes and exports an allowed one, and reports its plugins;
/// a node whose config lists a broken library does not start and says which file.
#[test]
fn a_node_runs_its_plugins_and_refuses_to_start_with_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = c_plugin(dir.path(), "wrong_abi");
    let (config, url) = single_node(dir.path(), &plugin_toml(&wrong, ""));
    let refused = Command::new(LEDGERD)
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(
        said.contains(&wrong.display().to_string()) && said.contains("ABI version 99"),
        "{said}"
    );

    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export.jsonl");
    let plugins = plugin_toml(&tx_policy(), "content = \"json\"")
        + &plugin_toml(
            &jsonl_export(),
            &format!("path = {:?}", export.display().to_string()),
        );
    let (config, url_2) = single_node(dir.path(), &plugins);
    assert_ne!(url, url_2);
    let node = Daemon::start(&config, &url_2);
    let refused = node.ctl(&["submit", "not json"]);
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("422") && said.contains("plugin tx-policy: entry data must be JSON"),
        "{said}"
    );
    let accepted = node.ctl(&["submit", r#"{"ok": true}"#, "--wait"]);
    assert!(accepted.status.success(), "{}", text(&accepted));
    let status: serde_json::Value = serde_json::from_slice(&node.ctl(&["status"]).stdout).unwrap();
    assert_eq!(status["plugins"][0]["name"], "tx-policy", "{status}");
    assert_eq!(status["plugins"][1]["name"], "jsonl-export", "{status}");
    // The exporter saw the committed entry, off the commit path: wait for it.
    let wanted = hex::encode(br#"{"ok": true}"#);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string(&export).is_ok_and(|text| text.contains(&wanted)) {
        assert!(std::time::Instant::now() < deadline, "nothing exported");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A node runs the code it hashed: rewriting its plugin's file in place (`cp` over
/// it) while it runs changes nothing it does, and does not crash it. A bare file
/// name is the file in the working directory, not a search of the loader's path.
#[test]
fn a_plugin_rewritten_in_place_leaves_the_running_node_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let installed = dir.path().join("libpolicy.so");
    std::fs::copy(tx_policy(), &installed).unwrap();
    let checked = Command::new(LEDGERD)
        .args(["plugins", "check", "libpolicy.so"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(checked.status.success(), "{}", text(&checked));
    assert!(text(&checked).contains("tx-policy"), "{}", text(&checked));

    let (config, url) = single_node(dir.path(), &plugin_toml(&installed, "content = \"json\""));
    let node = Daemon::start(&config, &url);
    // Rewritten, not replaced: the same inode, as `cp` leaves it.
    std::fs::write(&installed, std::fs::read(panicky()).unwrap()).unwrap();
    let refused = node.ctl(&["submit", "not json"]);
    assert!(
        text(&refused).contains("plugin tx-policy: entry data must be JSON"),
        "{}",
        text(&refused)
    );
    let accepted = node.ctl(&["submit", r#"{"ok": 1}"#, "--wait"]);
    assert!(accepted.status.success(), "{}", text(&accepted));
}

/// A node whose plugin panics in every hook keeps serving and answers with the
/// panic as the reason; a hook over its budget is logged with its plugin.
#[test]
fn a_panicking_or_slow_plugin_leaves_the_node_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (config, url) = single_node(dir.path(), &plugin_toml(&panicky(), ""));
    let node = Daemon::start(&config, &url);
    for _ in 0..3 {
        let refused = node.ctl(&["submit", "anything"]);
        let said = text(&refused);
        assert!(
            said.contains("422")
                && said.contains(
                    "plugin panicky: failed: plugin panicked: validate_entry always panics"
                ),
            "{said}"
        );
    }
    assert!(node.ctl(&["status"]).status.success());
    drop(node);

    let dir = tempfile::tempdir().unwrap();
    let slow = c_plugin(dir.path(), "slow");
    let (config, url) = single_node(
        dir.path(),
        &plugin_toml(&slow, "").replace("[plugins.config]", "budget_ms = 5\n[plugins.config]"),
    );
    let log_path = dir.path().join("ledgerd.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let node = Daemon::start_logging(&config, &url, log);
    let committed = node.ctl(&["submit", "slowly", "--wait"]);
    assert!(committed.status.success(), "{}", text(&committed));
    drop(node);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        log.contains("plugin hook over its budget") && log.contains("plugin=slow"),
        "{log}"
    );
}

/// difficulty-retarget through the ABI: fast blocks raise the difficulty at each
/// retarget, up to the ceiling, on a real node that mines at what it asks.
#[test]
fn difficulty_retarget_raises_the_difficulty_of_fast_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let rule = "interval = 2\ntarget_ms = 60000\nmin = 8\nmax = 12";
    let (config, url) = single_node(dir.path(), &plugin_toml(&difficulty_retarget(), rule));
    let node = Daemon::start(&config, &url);
    for i in 0..6 {
        let committed = node.ctl(&["submit", &format!("entry {i}"), "--wait"]);
        assert!(committed.status.success(), "{}", text(&committed));
    }
    let blocks: serde_json::Value =
        serde_json::from_slice(&node.ctl(&["blocks", "--from", "1", "--limit", "6"]).stdout)
            .unwrap();
    let difficulties: Vec<u64> = blocks
        .as_array()
        .expect("blocks")
        .iter()
        .map(|block| block["difficulty"].as_u64().expect("difficulty"))
        .collect();
    // Heights 4 and 6 retarget (2 would lack a whole span); each span of two
    // blocks took far less than the two minutes wanted.
    assert_eq!(difficulties, [8, 8, 8, 10, 10, 12], "{blocks}");
    // The status tells what the next block needs: the plugin's 12, not genesis' 8.
    let status: serde_json::Value = serde_json::from_slice(&node.ctl(&["status"]).stdout).unwrap();
    assert_eq!(status["difficulty"], 12, "{status}");
}

/// A panicking `on_commit` is logged and counted; the caller never waits for it.
#[test]
fn a_panicking_on_commit_is_logged_not_fatal() {
    let (plugins, metrics) = load(&[config(&panicky(), "")]).expect("loads");
    let keys = [testing::key(1)];
    let spec = testing::spec(&keys, 2);
    let genesis = spec.genesis_block();
    let block = Arc::new(testing::next_block(
        &genesis.header,
        &ledger::chain::CompactRange::new(),
        testing::entries(1, 2, 16),
        2,
    ));
    plugins.committed(&block);
    plugins.committed(&block);
    // Dropping the plugins waits for the on_commit thread to drain.
    drop(plugins);
    assert_eq!(metrics.plugin_calls.get("on_commit"), 2);
    assert_eq!(metrics.plugin_rejections.get("on_commit"), 2);
}

/// A 4-member `ledgerd dev init` layout under `dir` (difficulty 8), member i with
/// `plugins(i)` appended to its config, every member started.
fn cluster(dir: &Path, plugins: impl Fn(u16) -> String) -> Vec<Daemon> {
    let base = support::free_ports(8);
    let init = Command::new(LEDGERD)
        .args(["dev", "init", "--nodes", "4", "--difficulty", "8", "--dir"])
        .arg(dir)
        .args(["--base-port", &base.to_string()])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init));
    (0..4u16)
        .map(|i| {
            let config = dir.join(format!("node{i}/ledgerd.toml"));
            let text = std::fs::read_to_string(&config).unwrap() + &plugins(i);
            std::fs::write(&config, text).unwrap();
            Daemon::start(&config, &format!("http://127.0.0.1:{}", base + 2 * i))
        })
        .collect()
}

/// Four processes with the same plugins: a backup refuses what tx-policy forbids,
/// and every member validates the primary's blocks at the difficulty
/// difficulty-retarget asks for, so they commit at rising difficulty on one chain.
#[test]
fn a_cluster_runs_the_same_policy_on_every_member() {
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_toml(&tx_policy(), "max_bytes = 64")
        + &plugin_toml(
            &difficulty_retarget(),
            "interval = 2\ntarget_ms = 60000\nmin = 8\nmax = 12",
        );
    let nodes = cluster(dir.path(), |_| plugins.clone());
    let refused = nodes[2].ctl(&["submit", &"x".repeat(65)]);
    assert!(text(&refused).contains("at most 64"), "{}", text(&refused));
    for i in 0..6 {
        let committed = nodes[1 + i % 3].ctl(&["submit", &format!("entry {i}"), "--wait"]);
        assert!(committed.status.success(), "{}", text(&committed));
    }
    let chain = |node: &Daemon| -> Vec<(String, u64)> {
        let blocks: serde_json::Value =
            serde_json::from_slice(&node.ctl(&["blocks", "--from", "1", "--limit", "6"]).stdout)
                .unwrap();
        blocks
            .as_array()
            .expect("blocks")
            .iter()
            .map(|b| (b["hash"].to_string(), b["difficulty"].as_u64().unwrap()))
            .collect()
    };
    // The commits were waited for on the other members: node 0 may apply the last
    // block a moment later (bounded wait).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut first = chain(&nodes[0]);
    while first.len() < 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        first = chain(&nodes[0]);
    }
    let difficulties: Vec<u64> = first.iter().map(|(_, d)| *d).collect();
    assert_eq!(difficulties, [8, 8, 8, 10, 10, 12]);
    // Every member holds the same blocks (bounded wait for the slowest).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for node in &nodes[1..] {
        while chain(node) != first {
            assert!(std::time::Instant::now() < deadline, "members disagree");
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    // Each member's status tells what the next block needs, as the plugin says.
    for node in &nodes {
        let status: serde_json::Value =
            serde_json::from_slice(&node.ctl(&["status"]).stdout).unwrap();
        assert_eq!(status["difficulty"], 12, "{status}");
    }
}

/// Four members whose plugin has a block rule: entries that pass one at a time but
/// not together commit in the blocks the rule takes, and an entry no block can hold
/// leaves every pool without a view change. The primary proposed the refused block
/// again and again, and the members changed views for the entry without end.
#[test]
fn a_cluster_commits_what_its_block_rule_takes_and_lets_the_rest_go() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), |_| plugin_toml(&two_a_block(), ""));
    // Five at once to the primary of view 0: more than a block may hold.
    let batch: Vec<serde_json::Value> = (0..5)
        .map(|i| serde_json::json!({ "data": format!("entry {i}") }))
        .collect();
    let batch = serde_json::Value::from(batch).to_string();
    let url = format!("{}/v1/entries/batch", nodes[0].1);
    let (code, answer) = support::http("POST", &url, Some(&batch));
    assert_eq!(code, 202, "{answer}");
    let ids: Vec<String> = (0..5)
        .map(|i| answer[i]["id"].as_str().expect("taken").to_owned())
        .collect();
    // One at the primary, refused at its cut, one at a backup, refused when its
    // timer runs out: a client that waits is told why.
    let blockless: Vec<String> = (0..2)
        .map(|i| {
            let data = format!("blockless, taken at submit by member {i}");
            let refused = nodes[i].ctl(&["submit", &data, "--wait"]);
            let said = text(&refused);
            assert!(!refused.status.success(), "{said}");
            assert!(
                said.contains("422") && said.contains("no block holds a blockless entry"),
                "{said}"
            );
            Entry::new(data.into_bytes()).id().to_hex()
        })
        .collect();
    let entry = |node: &Daemon, id: &str| {
        support::http("GET", &format!("{}/v1/entries/{id}", node.1), None)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for id in &ids {
        while entry(&nodes[2], id).1["height"].as_u64().is_none() {
            assert!(std::time::Instant::now() < deadline, "{id} did not commit");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    for (node, blockless) in nodes
        .iter()
        .flat_map(|n| blockless.iter().map(move |b| (n, b)))
    {
        while entry(node, blockless).0 != 404 {
            assert!(
                std::time::Instant::now() < deadline,
                "still pending at {}: {:?}",
                node.1,
                entry(node, blockless)
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let status: serde_json::Value =
            serde_json::from_slice(&node.ctl(&["status"]).stdout).unwrap();
        assert_eq!(status["view"], 0, "{status}");
    }
    // The member that took each says why it left the pool, to a client that polls.
    for (node, blockless) in nodes.iter().zip(&blockless) {
        let (code, answer) = entry(node, blockless);
        assert_eq!((code, answer["error"].as_str()), (404, Some("left_pool")));
        let said = answer["message"].as_str().unwrap_or_default();
        assert!(said.contains("no block holds a blockless entry"), "{said}");
    }

    // A client waiting at a follower is told why too, and so is one that polls it.
    let (config, port) = support::init_outsider(
        &dir.path().join("follower"),
        &dir.path().join("genesis.toml"),
    );
    support::set(std::slice::from_ref(&config), "follower", "true");
    support::append(&config, &plugin_toml(&two_a_block(), ""));
    let follower = support::Daemon::start(&config, port);
    let data = "blockless, forwarded by a follower";
    let refused = follower.ctl(&["submit", data, "--wait"]);
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("422") && said.contains("no block holds a blockless entry"),
        "{said}"
    );
    let id = Entry::new(data.as_bytes().to_vec()).id().to_hex();
    let url = format!("{}/v1/entries/{id}", follower.url);
    let (code, answer) = support::http("GET", &url, None);
    assert_eq!(
        (code, answer["error"].as_str()),
        (404, Some("left_pool")),
        "{answer}"
    );
    follower.stop();
}

/// Members that run one library with two configs: the odd one's fingerprint shows
/// it, and once a quorum commits a block the odd member refuses, it says it is not
/// ready and why, instead of standing still as ready.
#[test]
fn a_member_with_another_plugin_config_is_told_apart_and_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = cluster(dir.path(), |i| {
        let max = if i == 3 { 16 } else { 64 };
        plugin_toml(&tx_policy(), &format!("max_bytes = {max}"))
    });
    let config_of = |node: &Daemon| {
        let status: serde_json::Value =
            serde_json::from_slice(&node.ctl(&["status"]).stdout).unwrap();
        status["plugins"][0]["config_sha256"].clone()
    };
    assert_eq!(config_of(&nodes[0]), config_of(&nodes[1]));
    assert_ne!(config_of(&nodes[0]), config_of(&nodes[3]));

    // 25 bytes: within the others' 64, over node 3's 16.
    let long = "y".repeat(25);
    let committed = nodes[1].ctl(&["submit", &long, "--wait"]);
    assert!(committed.status.success(), "{}", text(&committed));
    let readyz = format!("{}/readyz", nodes[3].1);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, answer) = support::http("GET", &readyz, None);
        if code == 503 && answer.to_string().contains("refuses the next block") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{code} {answer}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The others go on committing.
    let more = nodes[2].ctl(&["submit", "short", "--wait"]);
    assert!(more.status.success(), "{}", text(&more));
}

/// A node whose plugin hook hangs says so on /readyz, and still stops when asked: it
/// does not wait out the hook (ten minutes here) on its way out.
#[test]
fn a_hanging_hook_makes_a_node_unready_and_does_not_hold_it_when_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let hang = c_plugin(dir.path(), "hang");
    let (config, url) = single_node(dir.path(), &plugin_toml(&hang, ""));
    let mut node = Daemon::start(&config, &url);
    // A submit that waits on the hook, in the background.
    let mut waiting = Command::new(LEDGERCTL)
        .args(["--node", &url, "submit", "hang here"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // It holds only itself: the others are judged beside it, and commit. They
    // waited behind it on one admission thread.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let fine = node.ctl(&["submit", "fine", "--wait"]);
    assert!(fine.status.success(), "{}", text(&fine));
    // Past ten seconds the node says a hook holds it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    loop {
        let (code, answer) = support::http("GET", &format!("{url}/readyz"), None);
        if code == 503
            && answer
                .to_string()
                .contains("validate_entry hook has been running")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{code} {answer}");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let term = Command::new("kill")
        .args(["-TERM", &node.0.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while node.0.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the node waited on its hanging hook"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = waiting.kill();
    let _ = waiting.wait();
}
