//! Joining a running cluster from a snapshot, through real `ledgerd` processes on
//! loopback: a member whose disk was lost starts with an empty data directory, takes
//! the chain over from the snapshot the others serve, catches up the blocks after
//! it, and commits with them again. Every wait is bounded; every process is stopped.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// Waits (bounded) until `daemon` offers a snapshot at `height` or above; its height.
fn snapshot_at_least(daemon: &Daemon, height: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, view) = http("GET", &format!("{}/v1/snapshots/latest", daemon.url), None);
        if code == 200 && view["height"].as_u64().unwrap() >= height {
            return view["height"].as_u64().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot at {height}: {code} {view}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_member_with_an_empty_disk_rejoins_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    let (configs, base) = layout(&chain, 4);
    checkpoint_every(&chain.join("genesis.toml"), 5);
    set(&configs, "max_block_entries", "4");
    let mut daemons = start_all(&configs, base);
    let before = commit_batch(node(&daemons, 1), "before", 60);
    let height = snapshot_at_least(node(&daemons, 0), 15);

    // Member 3 loses its disk: same key and config, an empty data directory.
    let log = daemons[3].take().unwrap().stop();
    assert!(!log.contains("restored from a snapshot"), "{log}");
    std::fs::remove_dir_all(chain.join("node3/data")).unwrap();
    daemons[3] = Some(Daemon::start(&configs[3], base + 6));
    let rejoined = status(node(&daemons, 3));
    let from = rejoined["history_from"].as_u64().unwrap();
    assert!(from >= height, "{rejoined}");

    // It orders and commits with the others again, and catches up what it missed.
    let after = commit_batch(node(&daemons, 3), "after", 8);
    let tip = status(node(&daemons, 0))["height"].as_u64().unwrap();
    converge(&daemons, tip);

    // What lies below its history it says it does not hold; every entry is known.
    let url = &node(&daemons, 3).url;
    let (code, body) = http("GET", &format!("{url}/v1/blocks/2"), None);
    assert_eq!(
        (code, body["error"].as_str()),
        (404, Some("not_held")),
        "{body}"
    );
    let (code, body) = http("GET", &format!("{url}/v1/entries/{}", before[0]), None);
    assert_eq!(
        (code, body["error"].as_str()),
        (404, Some("not_held")),
        "{body}"
    );
    let (code, body) = http("GET", &format!("{url}/v1/entries/{}", after[0]), None);
    assert_eq!(
        (code, body["status"].as_str()),
        (200, Some("committed")),
        "{body}"
    );
    // A resubmitted old entry is a duplicate there too: its id came with the snapshot.
    let (code, _) = http(
        "POST",
        &format!("{url}/v1/entries"),
        Some(r#"{"data":"before 0"}"#),
    );
    assert_eq!(code, 409);

    let logs = stop_all(&mut daemons);
    assert!(
        logs[3].contains("joining from a snapshot") && logs[3].contains("restored from a snapshot"),
        "{}",
        logs[3]
    );
    let checked = run(
        LEDGERD,
        &["check", "--config", configs[3].to_str().unwrap()],
    );
    assert!(checked.status.success(), "{}", text(&checked));
}
