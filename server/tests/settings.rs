//! Every ledgerd.toml setting means the same on one node and in a cluster: checked
//! through real `ledgerd` processes on loopback, each wait bounded, each process
//! stopped.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::*;

/// Sets `key = value` in each config (the generated files list every key).
fn set(configs: &[PathBuf], key: &str, value: &str) {
    for config in configs {
        let text = std::fs::read_to_string(config).unwrap();
        let mut lines: Vec<String> = text
            .lines()
            .filter(|line| !line.starts_with(&format!("{key} =")))
            .map(str::to_owned)
            .collect();
        lines.push(format!("{key} = {value}"));
        std::fs::write(config, lines.join("\n") + "\n").unwrap();
    }
}

/// Waits (bounded) until `id` is committed on `daemon`.
fn committed(daemon: &Daemon, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, entry) = http("GET", &format!("{}/v1/entries/{id}", daemon.url), None);
        if code == 200 && entry["status"] == "committed" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{id} not committed: {code} {entry}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `/v1/status` shows the settings each member runs with, as it applies them (the
/// block limit within the genesis', the delay, the capacity, the miner's threads):
/// the cluster's engine takes every one of them, as a node alone does.
#[test]
fn every_member_runs_with_the_settings_it_was_given() {
    for nodes in [1, 4] {
        let dir = tempfile::tempdir().unwrap();
        let (configs, base) = layout(&dir.path().join("chain"), nodes);
        set(&configs, "max_block_entries", "55");
        set(&configs, "max_block_delay_ms", "7");
        set(&configs, "pool_capacity", "77");
        set(&configs, "mining_threads", "1");
        let mut daemons = start_all(&configs, base);
        for daemon in daemons.iter().flatten() {
            let settings = status(daemon)["settings"].clone();
            assert_eq!(
                settings,
                serde_json::json!({
                    "max_block_entries": 55,
                    "max_block_delay_ms": 7,
                    "pool_capacity": 77,
                    "mining_threads": 1,
                }),
                "{nodes} nodes"
            );
        }
        stop_all(&mut daemons);
    }
}

/// `max_block_entries` caps the blocks a cluster's primary cuts, as it caps a node
/// alone's: thirty entries submitted at once commit in blocks of at most three.
#[test]
fn blocks_hold_at_most_max_block_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, base) = layout(&dir.path().join("cluster"), 4);
    set(&configs, "max_block_entries", "3");
    let mut daemons = start_all(&configs, base);
    let batch: Vec<serde_json::Value> = (0..30)
        .map(|i| serde_json::json!({ "data": format!("batched {i}") }))
        .collect();
    let (code, answers) = http(
        "POST",
        &format!("{}/v1/entries/batch", node(&daemons, 1).url),
        Some(&serde_json::Value::Array(batch).to_string()),
    );
    assert_eq!(code, 202, "{answers}");
    let ids: Vec<String> = answers
        .as_array()
        .unwrap()
        .iter()
        .map(|answer| answer["id"].as_str().expect("accepted").to_owned())
        .collect();
    for id in &ids {
        committed(node(&daemons, 1), id);
    }
    let tip = status(node(&daemons, 1))["height"].as_u64().unwrap();
    let mut seen = 0;
    let mut fullest = 0;
    for height in 1..=tip {
        let (_, block) = http(
            "GET",
            &format!("{}/v1/blocks/{height}", node(&daemons, 1).url),
            None,
        );
        let entries = block["entries"].as_array().unwrap().len();
        assert!(entries <= 3, "block {height} holds {entries}");
        fullest = fullest.max(entries);
        seen += entries;
    }
    assert_eq!(seen, 30);
    assert_eq!(fullest, 3, "the entries were never batched");
    stop_all(&mut daemons);
}

/// `pool_capacity` bounds what a cluster member holds as it bounds a node alone's
/// pool: with too few members up to commit anything, each member answers 503 with
/// Retry-After once it is full, and every entry it answered 202 for commits once the
/// others are back (nothing is answered 202 and then dropped).
#[test]
fn a_full_pool_answers_503_on_every_member_and_drops_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, base) = layout(&dir.path().join("cluster"), 4);
    set(&configs, "pool_capacity", "4");
    let mut daemons = start_all(&configs, base);
    // Two of four down: nothing can commit.
    daemons[2].take().unwrap().stop();
    daemons[3].take().unwrap().stop();
    let mut accepted = Vec::new();
    for member in [0, 1] {
        let mut refused = None;
        for i in 0..50 {
            let body = serde_json::json!({ "data": format!("member {member} entry {i}") });
            let (code, answer) = http(
                "POST",
                &format!("{}/v1/entries", node(&daemons, member).url),
                Some(&body.to_string()),
            );
            match code {
                202 => accepted.push(answer["id"].as_str().unwrap().to_owned()),
                503 => {
                    refused = Some(answer);
                    break;
                }
                other => panic!("{other}: {answer}"),
            }
        }
        let refused = refused.unwrap_or_else(|| panic!("member {member} never filled"));
        assert_eq!(refused["error"], "pool_full", "{refused}");
        let again = serde_json::json!({ "data": format!("member {member} once more") });
        assert_eq!(
            post_retry_after(
                &format!("{}/v1/entries", node(&daemons, member).url),
                &again.to_string()
            ),
            (503, Some("1".to_owned()))
        );
    }
    assert!(accepted.len() >= 4, "{accepted:?}");
    daemons[2] = Some(Daemon::start(&configs[2], base + 4));
    daemons[3] = Some(Daemon::start(&configs[3], base + 6));
    for daemon in daemons.iter().flatten() {
        for id in &accepted {
            committed(daemon, id);
        }
    }
    stop_all(&mut daemons);
}
