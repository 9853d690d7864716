//! Crash safety of a real `ledgerd`: under load, killed with SIGKILL at random moments
//! many times. After every kill the database must verify from genesis and hold every
//! entry whose submit was answered "committed". The seed is printed; set
//! `LEDGER_CRASH_SEED` to replay a run.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ledger::chain::{ChainSpec, Entry, Hash};
use ledger::storage::{Store, StoreOptions};

const LEDGERD: &str = env!("CARGO_BIN_EXE_ledgerd");
const KILLS: u64 = 12;
const WRITERS: usize = 4;

mod support;

use support::Rng;

fn start(config: &Path) -> Child {
    Command::new(LEDGERD)
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_ready(agent: &ureq::Agent, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(response) = agent.get(format!("{url}/readyz")).call() {
            if response.status() == 200 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("ledgerd did not become ready");
}

/// Submits entries with `wait=commit` until stopped or the node dies; records the ids
/// answered 200.
fn writer(url: String, tag: String, stop: Arc<AtomicBool>, committed: Arc<Mutex<Vec<Hash>>>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut sequence = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let data = format!("{tag}-{sequence}");
        sequence += 1;
        let body = serde_json::json!({ "data": data });
        match agent
            .post(format!("{url}/v1/entries?wait=commit"))
            .send_json(&body)
        {
            Ok(response) if response.status() == 200 => {
                committed
                    .lock()
                    .unwrap()
                    .push(Entry::new(data.into_bytes()).id());
            }
            Ok(_) => {}
            Err(_) => return, // the node is gone
        }
    }
}

#[test]
fn sigkill_under_load_loses_no_committed_entry() {
    let seed = std::env::var("LEDGER_CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("crash test seed: {seed} (replay with LEDGER_CRASH_SEED={seed})");
    let mut rng = Rng(seed);

    let dir = tempfile::tempdir().unwrap();
    // Below the ephemeral range: the node is killed and restarted on this port
    // again and again, and an outgoing connection must not take it meanwhile.
    let port = support::free_port();
    let layout = dir.path().join("dev");
    let init = Command::new(LEDGERD)
        .args([
            "dev",
            "init",
            "--nodes",
            "1",
            "--base-port",
            &port.to_string(),
            "--difficulty",
            "8",
            "--dir",
        ])
        .arg(&layout)
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let config = layout.join("node0/ledgerd.toml");
    // Small blocks and a short delay: many applies per second to kill in the middle of.
    let text = std::fs::read_to_string(&config).unwrap();
    let default = "max_block_entries = 1000";
    assert!(
        text.contains(default),
        "dev init no longer writes {default}"
    );
    let text = text.replace(default, "max_block_entries = 16\nmax_block_delay_ms = 2");
    std::fs::write(&config, text).unwrap();
    let spec = ChainSpec::from_toml(&std::fs::read_to_string(layout.join("genesis.toml")).unwrap())
        .unwrap();
    let database = layout.join("node0/data/ledger.redb");
    let url = format!("http://127.0.0.1:{port}");
    let probe: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();

    let committed = Arc::new(Mutex::new(Vec::new()));
    let mut last_height = 0;
    for kill in 0..KILLS {
        let mut child = start(&config);
        wait_ready(&probe, &url);
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (url, stop, committed) =
                    (url.clone(), Arc::clone(&stop), Arc::clone(&committed));
                std::thread::spawn(move || {
                    writer(url, format!("{seed}-{kill}-{w}"), stop, committed)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(100 + rng.next() % 400));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for writer in writers {
            writer.join().unwrap();
        }

        let store = Store::open(&database, &spec, StoreOptions::default())
            .unwrap_or_else(|error| panic!("seed {seed}, kill {kill}: reopening failed: {error}"));
        let height = store.verify_chain().unwrap_or_else(|error| {
            panic!("seed {seed}, kill {kill}: chain does not verify: {error}")
        });
        let committed = committed.lock().unwrap();
        for id in committed.iter() {
            assert!(
                store.entry_location(id).unwrap().is_some(),
                "seed {seed}, kill {kill}: entry {id} was answered committed but is lost"
            );
        }
        eprintln!(
            "kill {kill}: height {height}, {} committed entries all present",
            committed.len()
        );
        assert!(height >= last_height, "seed {seed}: the chain shrank");
        last_height = height;
    }
    assert!(
        last_height > KILLS,
        "too few blocks were applied for the test to mean anything"
    );
    assert!(committed.lock().unwrap().len() as u64 > KILLS * 10);
}
