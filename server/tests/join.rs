//! Joining a running cluster from a snapshot, through real `ledgerd` processes on
//! loopback: a member whose disk was lost starts with an empty data directory, takes
//! the chain over from the snapshot the others serve, catches up the blocks after
//! it, commits with them again, and fetches the history below it. Every wait is bounded; every process is stopped.

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

/// Four members under `chain` taking a snapshot every 5 blocks of at most 4 entries.
fn snapshotting_cluster(
    chain: &std::path::Path,
) -> (Vec<std::path::PathBuf>, u16, Vec<Option<Daemon>>) {
    let (configs, base) = layout(chain, 4);
    checkpoint_every(&chain.join("genesis.toml"), 5);
    set(&configs, "max_block_entries", "4");
    let daemons = start_all(&configs, base);
    (configs, base, daemons)
}

#[test]
fn a_member_with_an_empty_disk_rejoins_from_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    let (configs, base, mut daemons) = snapshotting_cluster(&chain);
    let before = commit_batch(node(&daemons, 1), "before", 60);
    let height = snapshot_at_least(node(&daemons, 0), 15);

    // Member 3 loses its disk: same key and config, an empty data directory. The
    // mark that its key never voted went when it created its first database, so
    // this time it asks the others how far it may have voted.
    let mark = chain.join("node3/node.key.new");
    assert!(!mark.exists(), "{}", mark.display());
    let log = daemons[3].take().unwrap().stop();
    assert!(!log.contains("restored from a snapshot"), "{log}");
    std::fs::remove_dir_all(chain.join("node3/data")).unwrap();
    daemons[3] = Some(Daemon::start(&configs[3], base + 6));
    // It forgot what it signed: it abstains until past where it may have voted, a
    // window (two checkpoint intervals) above the chain's height when it came back.
    let seen = status(node(&daemons, 0))["height"].as_u64().unwrap();
    let abstaining = status(node(&daemons, 3))["abstaining_until"].as_u64();
    assert_eq!(abstaining, Some(seen + 10), "{}", status(node(&daemons, 3)));
    // It says so where a rolling restart looks before it stops the next member.
    // (Once it reaches the others: before, that is what it says.)
    let readyz = format!("{}/readyz", node(&daemons, 3).url);
    let deadline = Instant::now() + Duration::from_secs(30);
    let reason = loop {
        let (code, answer) = http("GET", &readyz, None);
        assert_eq!(code, 503, "{answer}");
        let reason = answer["message"].as_str().unwrap_or_default().to_owned();
        if !reason.contains("this member reaches") {
            break reason;
        }
        assert!(Instant::now() < deadline, "{reason}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(reason.contains("does not vote yet"), "{reason}");
    assert!(
        reason.contains(&format!("until height {}", seen + 10)),
        "{reason}"
    );
    assert_eq!(metric(node(&daemons, 3), "ledger_voting"), 0);
    assert_eq!(metric(node(&daemons, 0), "ledger_voting"), 1);

    // It takes entries and the others commit them; it catches up what it missed.
    let after = commit_batch(node(&daemons, 3), "after", 8);
    let tip = status(node(&daemons, 0))["height"].as_u64().unwrap();
    converge(&daemons, tip);
    // Once the chain has passed its bound, it votes again, and once a checkpoint
    // that high is stable it is ready. No client needs to submit for that: on an
    // idle chain `POST /mine` on the primary (an empty block each) gets it there.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !status(node(&daemons, 3))["abstaining_until"].is_null()
        || http("GET", &readyz, None).0 != 200
    {
        assert!(Instant::now() < deadline, "{}", status(node(&daemons, 3)));
        for i in 0..3 {
            let _ = http("POST", &format!("{}/mine", node(&daemons, i).url), None);
        }
    }
    let tip = status(node(&daemons, 0))["height"].as_u64().unwrap();
    converge(&daemons, tip);
    assert_eq!(metric(node(&daemons, 3), "ledger_voting"), 1);

    // Meanwhile it fetched the blocks below the snapshot: it holds the whole chain,
    // and an entry committed before it joined has its receipt there.
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(node(&daemons, 3))["history_from"] != 1 {
        assert!(Instant::now() < deadline, "{}", status(node(&daemons, 3)));
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = &node(&daemons, 3).url;
    let (code, block) = http("GET", &format!("{url}/v1/blocks/2"), None);
    assert_eq!(code, 200, "{block}");
    for id in [&before[0], &after[0]] {
        let (code, entry) = http("GET", &format!("{url}/v1/entries/{id}"), None);
        assert_eq!((code, entry["status"].as_str()), (200, Some("committed")));
        assert!(entry["receipt"].is_object(), "{entry}");
    }
    // A resubmitted old entry is a duplicate there too: its id came with the snapshot.
    let (code, _) = http(
        "POST",
        &format!("{url}/v1/entries"),
        Some(r#"{"data":"before 0"}"#),
    );
    assert_eq!(code, 409);

    // What the join fetched and served is counted.
    let metric = |i: usize, name: &str| metric(node(&daemons, i), name);
    assert_eq!(metric(3, "ledger_snapshot_chunks_fetched_total"), 1);
    assert_eq!(metric(3, "ledger_history_from"), 1);
    assert_eq!(metric(3, "ledger_history_blocks_fetched_total"), height - 1);
    let served: u64 = (0..3)
        .map(|i| metric(i, "ledger_snapshot_chunks_served_total"))
        .sum();
    assert_eq!(served, 1);

    let logs = stop_all(&mut daemons);
    let restored = logs[3]
        .lines()
        .find(|line| line.contains("restored from a snapshot"))
        .unwrap_or_else(|| panic!("{}", logs[3]));
    assert!(restored.contains(&format!("height={height}")), "{restored}");
    // A member fetches over the peer protocol, not through the client APIs.
    let joining = logs[3]
        .lines()
        .find(|line| line.contains("joining from a snapshot"))
        .unwrap_or_else(|| panic!("{}", logs[3]));
    assert!(joining.contains("member 0 at 127.0.0.1:"), "{joining}");
    assert!(!joining.contains("http://"), "{joining}");
    assert!(logs[3].contains("the whole history is held"), "{}", logs[3]);
    let checked = run(
        LEDGERD,
        &["check", "--config", configs[3].to_str().unwrap()],
    );
    assert!(checked.status.success(), "{}", text(&checked));
}

/// A member that comes back a little behind replays the blocks it lacks, as does one
/// that lacks a third of the entries but fewer than `join_behind_entries` (it keeps
/// its record and votes at once); one that comes back far below the others'
/// snapshot (both) sets its database aside and joins from the snapshot, then
/// fetches the history again; one whose switch was cut short, with joining turned
/// off since, puts the database it set aside back and replays.
#[test]
fn a_member_far_behind_joins_from_a_snapshot_a_little_behind_replays() {
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    let (configs, base, mut daemons) = snapshotting_cluster(&chain);
    let first = commit_batch(node(&daemons, 1), "first", 40);
    snapshot_at_least(node(&daemons, 0), 5);
    // Stops member 3, commits meanwhile, starts it again and waits until it caught
    // up; the log of the run it stopped.
    let restart = |daemons: &mut Vec<Option<Daemon>>, commit: &dyn Fn(&[Option<Daemon>])| {
        // Stopped only once it has everything: on a busy machine it may still trail,
        // and one that trails far would rightly join from a snapshot.
        let tip = status(node(daemons, 0))["height"].as_u64().unwrap();
        converge(daemons, tip);
        let log = daemons[3].take().unwrap().stop();
        commit(daemons);
        daemons[3] = Some(Daemon::start(&configs[3], base + 6));
        let tip = status(node(daemons, 0))["height"].as_u64().unwrap();
        converge(daemons, tip);
        log
    };

    // A block behind: replayed, nothing set aside, nothing fetched from a snapshot.
    restart(&mut daemons, &|daemons| {
        commit_batch(node(daemons, 1), "second", 4);
    });
    assert_eq!(status(node(&daemons, 3))["history_from"], 1);
    assert!(status(node(&daemons, 3))["abstaining_until"].is_null());

    // Forty entries behind of eighty-four, past a snapshot six blocks up or more (24
    // entries at least, a third of its 68): far by the third, but short of a million
    // (the default `join_behind_entries`), so replayed, and it votes at once.
    restart(&mut daemons, &|daemons| {
        let stopped_at = status(node(daemons, 0))["height"].as_u64().unwrap();
        commit_batch(node(daemons, 1), "near", 40);
        snapshot_at_least(node(daemons, 0), stopped_at + 6);
    });
    assert!(status(node(&daemons, 3))["abstaining_until"].is_null());

    // Sixty entries behind of a hundred and forty-four, with no floor: past a newer
    // snapshot, and far.
    set(&configs[3..], "join_behind_entries", "0");
    let log = restart(&mut daemons, &|daemons| {
        let stopped_at = status(node(daemons, 0))["height"].as_u64().unwrap();
        commit_batch(node(daemons, 1), "third", 60);
        snapshot_at_least(node(daemons, 0), stopped_at + 5);
    });
    assert!(
        !log.contains("far below"),
        "the run forty entries behind: {log}"
    );
    // Like a member that lost its disk, it no longer has the record of its votes.
    assert!(status(node(&daemons, 3))["abstaining_until"].is_u64());
    // The history below the snapshot: what it missed from the members, the rest
    // from the database it set aside, which goes once the history is whole.
    let aside = chain.join("node3/data/ledger.redb.behind");
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(node(&daemons, 3))["history_from"] != 1 || aside.exists() {
        assert!(Instant::now() < deadline, "{}", status(node(&daemons, 3)));
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = node(&daemons, 3).url.clone();
    let fetched = metric(node(&daemons, 3), "ledger_history_blocks_fetched_total");
    let (code, entry) = http("GET", &format!("{url}/v1/entries/{}", first[0]), None);
    assert_eq!((code, entry["status"].as_str()), (200, Some("committed")));

    // A switch cut short (the database set aside, no new one yet), then joining
    // turned off: the database goes back, and the node replays what it lacks.
    let log = restart(&mut daemons, &|daemons| {
        let path = chain.join("node3/data/ledger.redb");
        std::fs::rename(&path, &aside).unwrap();
        set(&configs[3..], "join_from_snapshot", "false");
        commit_batch(node(daemons, 1), "fourth", 8);
    });
    assert!(log.contains("far below"), "the run far behind: {log}");
    assert!(log.contains("restored from a snapshot"), "{log}");
    let held = log
        .lines()
        .find(|line| line.contains("the whole history is held"))
        .unwrap_or_else(|| panic!("{log}"));
    let field = |name: &str| -> u64 {
        let value = held.split(&format!(" {name}=")).nth(1).unwrap();
        value.split_whitespace().next().unwrap().parse().unwrap()
    };
    let (blocks, copied) = (field("blocks"), field("from_set_aside"));
    assert!(
        copied >= 10 && copied + fetched == blocks,
        "{copied} + {fetched} of {blocks}"
    );
    assert!(!aside.exists(), "{}", aside.display());
    assert_eq!(status(node(&daemons, 3))["history_from"], 1);
    let log = daemons[3].take().unwrap().stop();
    assert!(log.contains("back in place"), "{log}");
    assert!(!log.contains("joining from a snapshot"), "{log}");
    stop_all(&mut daemons);
}

/// `ledgerd snapshot save` on a running member (through its API), `inspect` against
/// the genesis file, then `restore` into a member whose disk was lost: it starts
/// with the whole chain and commits with the others.
#[test]
fn a_backup_of_a_running_member_restores_another() {
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    let (configs, base, mut daemons) = snapshotting_cluster(&chain);
    let before = commit_batch(node(&daemons, 1), "before", 30);
    snapshot_at_least(node(&daemons, 0), 5);

    let file = dir.path().join("backup.snap");
    let config = |i: usize| configs[i].to_str().unwrap().to_owned();
    let saved = run(
        LEDGERD,
        &[
            "snapshot",
            "save",
            "--config",
            &config(0),
            file.to_str().unwrap(),
        ],
    );
    assert!(saved.status.success(), "{}", text(&saved));
    assert!(
        text(&saved).contains("snapshot at height"),
        "{}",
        text(&saved)
    );
    let genesis = chain.join("genesis.toml");
    let inspected = run(
        LEDGERD,
        &[
            "snapshot",
            "inspect",
            file.to_str().unwrap(),
            "--genesis",
            genesis.to_str().unwrap(),
        ],
    );
    assert!(inspected.status.success(), "{}", text(&inspected));
    assert!(text(&inspected).contains("checked against the genesis file"));

    daemons[3].take().unwrap().stop();
    std::fs::remove_dir_all(chain.join("node3/data")).unwrap();
    let restore = || {
        let file = file.to_str().unwrap();
        run(
            LEDGERD,
            &["snapshot", "restore", file, "--config", &config(3)],
        )
    };
    let restored = restore();
    assert!(restored.status.success(), "{}", text(&restored));
    let again = restore();
    assert!(
        !again.status.success(),
        "a second restore must refuse: {}",
        text(&again)
    );
    daemons[3] = Some(Daemon::start(&configs[3], base + 6));
    assert_eq!(status(node(&daemons, 3))["history_from"], 1);
    // Its first start asked the others how far the chain has come, and it abstains.
    let seen = status(node(&daemons, 0))["height"].as_u64().unwrap();
    let abstaining = status(node(&daemons, 3))["abstaining_until"].as_u64();
    assert_eq!(abstaining, Some(seen + 10), "{}", status(node(&daemons, 3)));
    let url = &node(&daemons, 3).url;
    let (code, entry) = http("GET", &format!("{url}/v1/entries/{}", before[0]), None);
    assert_eq!(
        (code, entry["status"].as_str()),
        (200, Some("committed")),
        "{entry}"
    );
    commit_batch(node(&daemons, 3), "after", 4);
    let tip = status(node(&daemons, 0))["height"].as_u64().unwrap();
    converge(&daemons, tip);
    stop_all(&mut daemons);
}

/// With `join_from_snapshot = false` a member whose disk was lost replays every
/// block from its peers, as before snapshots existed.
#[test]
fn a_member_told_not_to_join_from_a_snapshot_replays_the_chain() {
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    let (configs, base, mut daemons) = snapshotting_cluster(&chain);
    commit_batch(node(&daemons, 1), "before", 30);
    snapshot_at_least(node(&daemons, 0), 5);
    daemons[3].take().unwrap().stop();
    std::fs::remove_dir_all(chain.join("node3/data")).unwrap();
    set(&configs[3..], "join_from_snapshot", "false");
    daemons[3] = Some(Daemon::start(&configs[3], base + 6));
    let tip = status(node(&daemons, 0))["height"].as_u64().unwrap();
    // Replaying or restored, a member that lost its disk abstains all the same.
    let abstaining = status(node(&daemons, 3))["abstaining_until"].as_u64();
    assert_eq!(abstaining, Some(tip + 10), "{}", status(node(&daemons, 3)));
    converge(&daemons, tip);
    assert_eq!(status(node(&daemons, 3))["history_from"], 1);
    let logs = stop_all(&mut daemons);
    assert!(!logs[3].contains("joining from a snapshot"), "{}", logs[3]);
}

/// `ledgerd join` must join: with no member answering it fails at once, saying so,
/// and leaves no database behind.
#[test]
fn ledgerd_join_fails_when_no_member_offers_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    let (configs, _) = layout(&chain, 4);
    let joined = run(LEDGERD, &["join", "--config", configs[3].to_str().unwrap()]);
    assert!(!joined.status.success());
    assert!(
        text(&joined).contains("no member offers a snapshot"),
        "{}",
        text(&joined)
    );
    assert!(!chain.join("node3/data/ledger.redb").exists());
}

/// A follower: a node with a key of its own, not in the genesis file, and no change
/// to the members. It joins from their snapshot, then checks and applies every
/// block they commit, serves reads, proofs and snapshots, and forwards submits,
/// answering `wait=commit` once it has applied the entry's block itself.
#[test]
fn a_follower_joins_follows_and_forwards_submits() {
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    let (_, _, mut daemons) = snapshotting_cluster(&chain);
    let before = commit_batch(node(&daemons, 1), "before", 40);
    snapshot_at_least(node(&daemons, 0), 10);

    let genesis = chain.join("genesis.toml");
    let (config, port) = init_outsider(&dir.path().join("follower"), &genesis);
    // Without saying it follows, a key that is not a member's is refused, with the fix.
    let refused = run(LEDGERD, &["run", "--config", config.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("follower = true"),
        "{}",
        text(&refused)
    );
    set(std::slice::from_ref(&config), "follower", "true");
    let follower = Daemon::start(&config, port);

    let tip = status(node(&daemons, 0))["height"].as_u64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = status(&follower);
        if seen["height"].as_u64().unwrap() >= tip && seen["history_from"] == 1 {
            assert_eq!(seen["role"], "follower");
            // It names the member it reads from, one of the members' APIs.
            let reads_from = seen["reads_from"].as_str().unwrap_or_default();
            let members: Vec<String> = (0..4).map(|i| node(&daemons, i).url.clone()).collect();
            assert!(members.iter().any(|url| url == reads_from), "{seen}");
            assert!(status(node(&daemons, 0))["reads_from"].is_null());
            break;
        }
        assert!(Instant::now() < deadline, "{seen}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A submit through it is ordered by the members; its receipt comes from the
    // follower's own copy of the block, and the members hold the entry too.
    let (code, receipt) = http(
        "POST",
        &format!("{}/v1/entries?wait=commit", follower.url),
        Some(r#"{"data":"through the follower"}"#),
    );
    assert_eq!(code, 200, "{receipt}");
    let id = receipt["id"].as_str().unwrap();
    committed(node(&daemons, 2), id);
    let (code, _) = http(
        "POST",
        &format!("{}/v1/entries", follower.url),
        Some(r#"{"data":"before 0"}"#),
    );
    assert_eq!(code, 409);
    for id in [&before[0], id] {
        let (code, entry) = http("GET", &format!("{}/v1/entries/{id}", follower.url), None);
        assert_eq!((code, entry["status"].as_str()), (200, Some("committed")));
    }
    // It proves what it holds to an auditor who trusts only the genesis file.
    let file = dir.path().join("receipt.json");
    let (_, entry) = http("GET", &format!("{}/v1/entries/{id}", follower.url), None);
    std::fs::write(&file, entry.to_string()).unwrap();
    let verified = verify(&file, &genesis);
    assert!(verified.status.success(), "{}", text(&verified));
    // It serves snapshots, never cuts a block, and the members did not change.
    let (code, view) = http(
        "GET",
        &format!("{}/v1/snapshots/latest", follower.url),
        None,
    );
    assert_eq!(code, 200, "{view}");
    let (code, answer) = http("POST", &format!("{}/mine", follower.url), None);
    assert_eq!((code, answer["error"].as_str()), (503, Some("mine_failed")));
    assert_eq!(
        status(node(&daemons, 0))["members"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    let log = follower.stop();
    assert!(log.contains("restored from a snapshot"), "{log}");
    stop_all(&mut daemons);
}

/// `kill -9` of `ledgerd join` at seeded random moments: each run resumes with the
/// chunks the one before checked and wrote, the database appears whole or not at
/// all, and the member ends with a chain identical to the others'. The seed is
/// printed; `LEDGER_JOIN_SEED` replays a run.
#[test]
fn a_joiner_killed_at_seeded_moments_resumes_and_ends_identical() {
    let seed = std::env::var("LEDGER_JOIN_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64 | 1);
    eprintln!("LEDGER_JOIN_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    let (configs, base) = layout(&chain, 4);
    checkpoint_every(&chain.join("genesis.toml"), 5);
    // Chunks of 16 ids: a few thousand entries make hundreds of chunks, each
    // written in its own transaction, so a kill lands mid-transfer.
    set(&configs, "snapshot_chunk_ids", "16");
    let mut daemons = start_all(&configs, base);
    let entries = 4000;
    for batch in 0..4 {
        let items: Vec<serde_json::Value> = (0..entries / 4)
            .map(|i| serde_json::json!({ "data": format!("entry {batch} {i}") }))
            .collect();
        let (code, answers) = http(
            "POST",
            &format!("{}/v1/entries/batch", node(&daemons, 1).url),
            Some(&serde_json::Value::Array(items).to_string()),
        );
        assert_eq!(code, 202, "{answers}");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while status(node(&daemons, 0))["log_size"].as_u64().unwrap() < entries {
        assert!(Instant::now() < deadline, "{}", status(node(&daemons, 0)));
        std::thread::sleep(Duration::from_millis(200));
    }
    let height = status(node(&daemons, 0))["height"].as_u64().unwrap();
    snapshot_at_least(node(&daemons, 0), height / 5 * 5);
    daemons[3].take().unwrap().stop();
    let data = chain.join("node3/data");
    std::fs::remove_dir_all(&data).unwrap();

    let (database, staging) = (data.join("ledger.redb"), data.join("ledger.redb.restoring"));
    let (mut kills, mut resumed, mut progress_seen) = (0, 0, 0);
    let url = format!("http://127.0.0.1:{}", base + 6);
    for _ in 0..8 {
        let mut joiner = std::process::Command::new(LEDGERD)
            .args(["join", "--config", configs[3].to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The transfer takes a fraction of a second here, too short to aim at with
        // a clock: the moment is a seeded point of the transfer's own progress
        // (within its first half), or, one try in four, a seeded instant from the
        // start (before the transfer, or after it).
        let fraction = rng.next() % 50;
        let by_clock = rng.next().is_multiple_of(4);
        let moment = Instant::now() + Duration::from_millis(rng.next() % 400);
        let deadline = Instant::now() + Duration::from_secs(20);
        // Meanwhile its address answers why it is not ready, with the progress.
        loop {
            let (code, view) = http("GET", &format!("{url}/v1/status"), None);
            if code == 503 && view["joining"].is_object() {
                let joining = &view["joining"];
                assert_eq!(view["error"], "not_ready", "{view}");
                let (held, chunks) = (joining["chunks_held"].as_u64(), joining["chunks"].as_u64());
                assert!(held <= chunks, "{view}");
                assert!(
                    view["message"].as_str().unwrap().contains("chunks"),
                    "{view}"
                );
                progress_seen += 1;
                let (held, chunks) = (held.unwrap_or(0), chunks.unwrap_or(0));
                if !by_clock && chunks > 0 && held * 100 > chunks * fraction {
                    break;
                }
            }
            let restored = code == 200;
            if restored || (by_clock && Instant::now() >= moment) || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(joiner.try_wait().unwrap().is_none(), "ledgerd join exited");
        joiner.kill().unwrap();
        joiner.wait().unwrap();
        let mut log = String::new();
        use std::io::Read;
        joiner
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        kills += 1;
        resumed += usize::from(log.contains("resuming a snapshot transfer"));
        // Whole or not at all: a database next to an unfinished staging file never.
        assert!(!(database.exists() && staging.exists()), "{log}");
        if database.exists() && resumed > 0 {
            break;
        }
        if database.exists() {
            // Finished before the kill: start over until a kill lands mid-transfer.
            std::fs::remove_dir_all(&data).unwrap();
        }
    }
    eprintln!("{kills} kills, {resumed} resumed transfers, progress seen {progress_seen} times");
    assert!(resumed > 0, "no kill landed mid-transfer in {kills} tries");
    assert!(
        progress_seen > 0,
        "/v1/status never showed the join's progress"
    );
    // Whatever state the last kill left, a plain start finishes the job.
    daemons[3] = Some(Daemon::start(&configs[3], base + 6));
    let tip = status(node(&daemons, 0))["height"].as_u64().unwrap();
    converge(&daemons, tip);
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(node(&daemons, 3))["history_from"] != 1 {
        assert!(Instant::now() < deadline, "{}", status(node(&daemons, 3)));
        std::thread::sleep(Duration::from_millis(100));
    }
    // Certificates may differ (any quorum of signatures); the blocks may not.
    for height in [1, tip / 2, tip] {
        let block = |i: usize| {
            http(
                "GET",
                &format!("{}/v1/blocks/{height}", node(&daemons, i).url),
                None,
            )
        };
        let (code, joined) = block(3);
        assert_eq!(code, 200, "{joined}");
        assert!(joined == block(0).1, "block {height} differs");
    }
    stop_all(&mut daemons);
    let checked = run(
        LEDGERD,
        &["check", "--config", configs[3].to_str().unwrap()],
    );
    assert!(checked.status.success(), "{}", text(&checked));
}

/// A follower far behind says so: `/readyz` answers 503 "catching up" while it
/// applies the members' blocks back to back, and 200 once it has their tip; one
/// that no member answers any more says that.
#[test]
fn a_follower_is_not_ready_while_it_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, port) = layout(&dir.path().join("dev"), 1);
    set(&configs, "max_block_entries", "5");
    let member = Daemon::start(&configs[0], port);
    commit_batch(&member, "far ahead", 1500);
    let tip = status(&member)["height"].as_u64().unwrap();
    assert!(tip >= 300, "{tip}");

    let (config, port) = init_outsider(
        &dir.path().join("follower"),
        &dir.path().join("dev/genesis.toml"),
    );
    let config_list = std::slice::from_ref(&config);
    set(config_list, "follower", "true");
    // Replaying every block keeps it behind long enough to be seen.
    set(config_list, "join_from_snapshot", "false");
    let follower = Daemon::spawn(&config, port, &[]);
    let mut reasons = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (code, answer) = http("GET", &format!("{}/readyz", follower.url), None);
        if code == 200 {
            break;
        }
        if code == 503 {
            reasons.insert(answer["message"].as_str().unwrap_or_default().to_owned());
        }
        assert!(Instant::now() < deadline, "never ready: {reasons:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        reasons.iter().any(|reason| reason.contains("catching up")),
        "{reasons:?}"
    );
    assert!(status(&follower)["height"].as_u64().unwrap() >= tip);

    // Cut off from every member, it says so rather than look ready with what it has.
    member.stop();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, answer) = http("GET", &format!("{}/readyz", follower.url), None);
        if code == 503
            && answer
                .to_string()
                .contains("no member has answered this follower for")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{code} {answer}");
        std::thread::sleep(Duration::from_millis(200));
    }
    follower.stop();
}
