//! Every ledgerd.toml setting means the same on one node and in a cluster: checked
//! through real `ledgerd` processes on loopback, each wait bounded, each process
//! stopped.

mod support;

use std::time::{Duration, Instant};

use support::*;

/// `/v1/status` shows the settings each member runs with, as it applies them (the
/// block limit within the genesis', the delay, the capacity, the miner's threads,
/// a cluster primary's blocks in flight and least time between blocks):
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
        set(&configs, "max_blocks_in_flight", "2");
        set(&configs, "min_block_interval_ms", "9");
        let mut daemons = start_all(&configs, base);
        for daemon in daemons.iter().flatten() {
            let settings = status(daemon)["settings"].clone();
            let mut expected = serde_json::json!({
                "max_block_entries": 55,
                "max_block_delay_ms": 7,
                "pool_capacity": 77,
                "mining_threads": 1,
            });
            if nodes > 1 {
                // A primary's settings: a node alone runs no replica to give them to.
                expected["max_blocks_in_flight"] = 2.into();
                expected["min_block_interval_ms"] = 9.into();
            }
            assert_eq!(settings, expected, "{nodes} nodes");
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
    commit_batch(node(&daemons, 1), "batched", 30);
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

/// Every member of a cluster offers the snapshot of the stable checkpoint it reached:
/// the same block and tiles on each (each with the commit certificate it collected,
/// so the signer sets may differ), each verifying against the genesis file alone; its
/// one chunk rebuilds the log at that height. A member with `snapshot_transfers = 0` serves the
/// manifest but no chunk, and says to retry.
#[test]
fn members_serve_one_snapshot_of_their_stable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    let (configs, base) = layout(&chain, 4);
    let spec = checkpoint_every(&chain.join("genesis.toml"), 5);
    set(&configs, "max_block_entries", "4");
    set(&configs[3..], "snapshot_transfers", "0");
    let mut daemons = start_all(&configs, base);

    let ids = commit_batch(node(&daemons, 1), "snapshotted", 40);

    // Checkpoint votes travel after the blocks: wait until all four offer a snapshot
    // of the same block at 10 or above (forty entries in blocks of four make ten).
    let deadline = Instant::now() + Duration::from_secs(60);
    let views = loop {
        let views: Vec<(u16, serde_json::Value)> = (0..4)
            .map(|i| {
                let url = format!("{}/v1/snapshots/latest", node(&daemons, i).url);
                http("GET", &url, None)
            })
            .collect();
        let same = views
            .iter()
            .all(|(code, view)| *code == 200 && view["block_hash"] == views[0].1["block_hash"]);
        if same && views[0].1["height"].as_u64().unwrap() >= 10 {
            break views;
        }
        assert!(Instant::now() < deadline, "no common snapshot: {views:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let manifests: Vec<_> = views
        .iter()
        .map(|(_, view)| {
            let bytes = hex::decode(view["manifest"].as_str().unwrap()).unwrap();
            let manifest = ledger::chain::snapshot::Manifest::decode(&bytes).unwrap();
            manifest
                .verify(&spec)
                .expect("verifies against the genesis file");
            manifest
        })
        .collect();
    let manifest = &manifests[0];
    let height = manifest.height();
    assert_eq!(height % 5, 0);
    assert_eq!(manifest.chunks(), 1);
    for other in &manifests {
        assert_eq!(
            (other.header, &other.tile_roots),
            (manifest.header, &manifest.tile_roots)
        );
    }

    let url = |i: usize| format!("{}/v1/snapshots/{height}/chunks/0", node(&daemons, i).url);
    let (code, chunk) = get_bytes(&url(0));
    assert_eq!(code, 200);
    let rebuilt = manifest.check_chunk(0, &chunk).expect("the chunk checks");
    assert_eq!(rebuilt.len() as u64, manifest.header.log_size);
    for id in &rebuilt {
        assert!(ids.contains(&id.to_hex()), "{id} was never submitted");
    }
    let (code, body) = get_bytes(&url(3));
    assert_eq!(code, 503, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("busy"));
    stop_all(&mut daemons);
}
