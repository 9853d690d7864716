//! Membership changes through real `ledgerd` processes on loopback: the admin of a
//! `ledgerd dev init` cluster removes a member, then the primary, while clients
//! submit; no entry a node accepted is lost, the remaining members go on committing
//! under each new membership (restarts included), and a removed member stops voting
//! and says why. Every wait is bounded; every process is stopped.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;

/// `ledgerctl member list` of `daemon`.
fn members(daemon: &Daemon) -> serde_json::Value {
    let output = daemon.ctl(&["member", "list"]);
    assert!(output.status.success(), "{}", text(&output));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Has the admin of the layout under `dir` remove the member holding `public_key`
/// in one step: signed with the admin's key and submitted; what `ledgerctl` said.
fn remove(daemon: &Daemon, dir: &Path, public_key: &str) -> String {
    let admin = dir.join("admin.key");
    let said = until_taken(|| {
        let removed = daemon.ctl(&[
            "member",
            "remove",
            "--key",
            public_key,
            "--admin-key",
            admin.to_str().unwrap(),
        ]);
        match removed.status.success() {
            true => Ok(text(&removed)),
            false => Err(text(&removed)),
        }
    });
    assert!(said.contains("submitted remove"), "{said}");
    said
}

/// Has the admin of the layout under `dir` make the change `what` (`ledgerctl member`'s
/// words) through `daemon`, as an operator does: prepared for the epoch in force and
/// signed (`--sign-only`), checked, submitted.
fn change(daemon: &Daemon, dir: &Path, what: &[&str], name: &str) {
    until_taken(|| try_change(daemon, dir, what, name));
}

/// What `attempt` gives once it succeeds. Two refusals pass, and the change is tried
/// again then, within a bound: just after a change comes into force the members dial
/// each other anew, and a member that counts too few connected refuses the next one;
/// a learner just restarted under load is more than a checkpoint interval behind
/// until it catches up. Any other failure fails.
fn until_taken<T>(mut attempt: impl FnMut() -> Result<T, String>) -> T {
    // Seconds on a quiet machine; more than 10 on a loaded one (seen once).
    let deadline = Instant::now() + Duration::from_secs(30);
    let passing = |failed: &str| {
        failed.contains("connected to this member") || failed.contains("wait for it to catch up")
    };
    loop {
        match attempt() {
            Ok(done) => return done,
            Err(failed) if passing(&failed) => {
                assert!(Instant::now() < deadline, "{failed}");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(failed) => panic!("{failed}"),
        }
    }
}

/// [`change`], answering which step failed and why.
fn try_change(daemon: &Daemon, dir: &Path, what: &[&str], name: &str) -> Result<(), String> {
    let file = dir.join(format!("{name}.json"));
    // A try again after a refused submit writes the change anew.
    let _ = std::fs::remove_file(&file);
    let file = file.to_str().unwrap();
    let admin = dir.join("admin.key");
    let admin = admin.to_str().unwrap();
    let new: Vec<&str> = ["member"]
        .into_iter()
        .chain(what.iter().copied())
        .chain(["--admin-key", admin, "--sign-only", "--out", file])
        .collect();
    let steps: [Vec<&str>; 3] = [
        new,
        vec!["member", "show", file],
        vec!["member", "submit", file],
    ];
    for step in steps {
        let output = daemon.ctl(&step);
        if !output.status.success() {
            return Err(format!("{step:?}: {}", text(&output)));
        }
    }
    Ok(())
}

/// Waits (bounded) until `daemon` has membership epoch `epoch` in force.
fn epoch_in_force(daemon: &Daemon, epoch: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = members(daemon);
        if view["epoch"].as_u64() == Some(epoch) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "epoch {epoch} never came: {view}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Submits entries one by one through `urls` in turn until `stop`, at most `limit`;
/// the ids the nodes accepted.
fn load(urls: Vec<String>, stop: Arc<AtomicBool>, limit: usize) -> Vec<String> {
    let mut accepted = Vec::new();
    for i in 0..limit {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let url = &urls[i % urls.len()];
        let body = serde_json::json!({ "data": format!("load {i}") }).to_string();
        let (code, answer) = http("POST", &format!("{url}/v1/entries"), Some(&body));
        if code == 202 {
            accepted.push(answer["id"].as_str().unwrap().to_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    accepted
}

#[test]
fn members_are_removed_the_primary_too_while_clients_submit() {
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    let (configs, base) = layout(&chain, 4);
    checkpoint_every(&chain.join("genesis.toml"), 5);
    let mut daemons = start_all(&configs, base);
    let before = commit_batch(node(&daemons, 0), "before", 12);
    let genesis = members(node(&daemons, 0));
    assert_eq!(
        (genesis["epoch"].as_u64(), genesis["quorum"].as_u64()),
        (Some(0), Some(3))
    );
    let key = |view: &serde_json::Value, i: usize| -> String {
        view["members"][i]["public_key"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    // Clients keep submitting through members 0 to 2 while member 3 goes, then one
    // of them; what a node accepted must commit, whichever node took it.
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let urls = (0..3).map(|i| node(&daemons, i).url.clone()).collect();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || load(urls, stop, 1_500))
    };
    let third = key(&genesis, 3);
    change(
        node(&daemons, 0),
        &chain,
        &["remove", "--key", &third],
        "remove-3",
    );
    let first = epoch_in_force(node(&daemons, 0), 1);
    assert_eq!(first["members"].as_array().unwrap().len(), 3);
    assert_eq!(first["quorum"].as_u64(), Some(2), "{first}");
    // The same change again is a replay of epoch 0's: refused before it is ordered.
    let replay = chain.join("remove-3.json");
    let replay = node(&daemons, 0).ctl(&["member", "submit", replay.to_str().unwrap()]);
    assert!(!replay.status.success());
    assert!(
        text(&replay).contains("epoch 1 is in force"),
        "{}",
        text(&replay)
    );
    // The removed member orders nothing more and says why; its process lives on.
    let removed = node(&daemons, 3);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, answer) = http("GET", &format!("{}/readyz", removed.url), None);
        if code == 503 && answer.to_string().contains("removed this node") {
            break;
        }
        assert!(Instant::now() < deadline, "{code} {answer}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        http("GET", &format!("{}/healthz", removed.url), None).0,
        200
    );
    let during = commit_batch(node(&daemons, 2), "epoch one", 8);

    // The primary of the new membership goes next, clients still submitting.
    let status = status(node(&daemons, 0));
    let primary = first["members"]
        .as_array()
        .unwrap()
        .iter()
        .position(|m| m["node_id"] == status["primary"])
        .expect("the primary is a member");
    let said = remove(node(&daemons, 0), &chain, &key(&first, primary));
    // Two members left tolerate no fault, and the operator is told before stopping one.
    assert!(
        said.contains(
            "once in force: 2 voting members, f = 0 (members that may lie), 2 votes a \
             certificate: no member may stop without stopping the chain"
        ),
        "{said}"
    );
    // Any member that stays can tell: the primary's own node stops ordering.
    let stays = (0..3).find(|i| *i != primary).unwrap();
    let stays = first["members"][stays]["node_id"].clone();
    let by_id = |id: &serde_json::Value| -> usize {
        (0..3)
            .find(|i| status_of(&daemons, *i)["node_id"] == *id)
            .expect("a running node")
    };
    let watcher = by_id(&stays);
    let second = epoch_in_force(node(&daemons, watcher), 2);
    assert_eq!(second["members"].as_array().unwrap().len(), 2);
    stop.store(true, Ordering::Relaxed);
    let loaded = loader.join().unwrap();
    assert!(
        loaded.len() >= 5,
        "{} entries accepted under load",
        loaded.len()
    );

    // The two left commit together, and go on after one of them restarts in the
    // epoch its database is in.
    let remaining: Vec<usize> = second["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| by_id(&m["node_id"]))
        .collect();
    let after = commit_batch(node(&daemons, remaining[0]), "epoch two", 8);
    // Everything a node accepted through both changes commits on both (before the
    // restart, which drops what a stopped node held uncommitted, change or not).
    let accepted: Vec<&String> = before
        .iter()
        .chain(&during)
        .chain(&loaded)
        .chain(&after)
        .collect();
    for id in &accepted {
        for &i in &remaining {
            committed(node(&daemons, i), id);
        }
    }
    receipts_carry_the_changes(node(&daemons, remaining[0]), &chain, dir.path());

    let restarted = remaining[1];
    daemons[restarted].take().unwrap().stop();
    daemons[restarted] = Some(Daemon::start(
        &configs[restarted],
        base + 2 * restarted as u16,
    ));
    let again = commit_batch(node(&daemons, restarted), "after restart", 8);
    for id in accepted.into_iter().chain(&again) {
        for &i in &remaining {
            committed(node(&daemons, i), id);
        }
    }

    // A removed member refuses to start as one, saying what to do.
    let gone: Vec<usize> = (0..4).filter(|i| !remaining.contains(i)).collect();
    for i in gone {
        let removed = support::status(node(&daemons, i));
        assert_eq!(removed["role"], "removed", "{removed}");
        daemons[i].take().unwrap().stop();
        let output = run(LEDGERD, &["run", "--config", configs[i].to_str().unwrap()]);
        // The code the systemd unit does not restart on.
        assert_eq!(output.status.code(), Some(78), "{}", text(&output));
        assert!(text(&output).contains("removed it"), "{}", text(&output));
    }
    // As its answer says, it runs on as a follower, with its key, and follows the chain.
    let follower = (0..4).find(|i| !remaining.contains(i)).unwrap();
    set(&configs[follower..=follower], "follower", "true");
    let follows = Daemon::start(&configs[follower], base + 2 * follower as u16);
    let seen = support::status(&follows);
    assert_eq!(seen["role"], "follower", "{seen}");
    committed(&follows, &again[0]);
    let log = follows.stop();
    assert!(
        log.contains("a membership change removed it: it runs as a follower"),
        "{log}"
    );
    stop_all(&mut daemons);
}

/// `/v1/status` of node `i`.
fn status_of(daemons: &[Option<Daemon>], i: usize) -> serde_json::Value {
    status(node(daemons, i))
}

/// Six members shrunk to five by a change (f = 1, q = 4 in force): with one member
/// down they commit, with two down nothing commits (an entry waits, accepted), and
/// once one is back the entry commits.
#[test]
fn five_members_left_by_a_change_need_four() {
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    let (configs, base) = layout(&chain, 6);
    checkpoint_every(&chain.join("genesis.toml"), 5);
    let mut daemons = start_all(&configs, base);
    commit_batch(node(&daemons, 0), "six", 4);
    let genesis = members(node(&daemons, 0));
    let key = genesis["members"][5]["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let said = remove(node(&daemons, 0), &chain, &key);
    assert!(
        said.contains("once in force: 5 voting members, f = 1 (members that may lie), 4 votes"),
        "{said}"
    );
    let five = epoch_in_force(node(&daemons, 0), 1);
    assert_eq!(five["members"].as_array().unwrap().len(), 5, "{five}");
    assert_eq!(
        (five["f"].as_u64(), five["quorum"].as_u64()),
        (Some(1), Some(4))
    );
    daemons[5].take().unwrap().stop();

    daemons[4].take().unwrap().stop();
    commit_batch(node(&daemons, 0), "one down", 4);

    daemons[3].take().unwrap().stop();
    let url = format!(
        "{}/v1/entries?wait=commit&timeout_ms=3000",
        node(&daemons, 0).url
    );
    let (code, answer) = http("POST", &url, Some(r#"{"data":"two down"}"#));
    assert_eq!(code, 202, "three of five members cannot commit: {answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    let (code, ready) = http("GET", &format!("{}/readyz", node(&daemons, 0).url), None);
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready.to_string().contains("of the 4 a quorum needs"),
        "{ready}"
    );

    daemons[3] = Some(Daemon::start(&configs[3], base + 6));
    committed(node(&daemons, 0), &id);
    committed(node(&daemons, 3), &id);
    stop_all(&mut daemons);
}

/// A receipt from two changes past genesis carries both: it verifies from the genesis
/// file alone (with `ledgerctl verify` and the typed client), and not with a change
/// left out, nor without them.
fn receipts_carry_the_changes(daemon: &Daemon, chain: &Path, scratch: &Path) {
    let genesis = chain.join("genesis.toml");
    let proven = daemon.ctl(&["submit", "proven across two changes", "--wait"]);
    assert!(proven.status.success(), "{}", text(&proven));
    let answer: serde_json::Value = serde_json::from_slice(&proven.stdout).unwrap();
    assert_eq!(
        answer["membership_proof"].as_array().map(Vec::len),
        Some(2),
        "{answer}"
    );
    let saved = scratch.join("epoch-two.json");
    let check = |value: &serde_json::Value| {
        std::fs::write(&saved, value.to_string()).unwrap();
        verify(&saved, &genesis)
    };
    let verified = check(&answer);
    assert!(verified.status.success(), "{}", text(&verified));
    // Counted against the members in force at its height, not the genesis four.
    let in_force = members(daemon)["members"].as_array().unwrap().len();
    assert!(
        text(&verified).contains(&format!("of {in_force} members")),
        "{}",
        text(&verified)
    );
    let mut partial = answer.clone();
    partial["membership_proof"].as_array_mut().unwrap().pop();
    let mut stripped = answer.clone();
    stripped.as_object_mut().unwrap().remove("membership_proof");
    for refused in [check(&partial), check(&stripped)] {
        assert!(!refused.status.success());
        assert!(
            text(&refused).contains("does not verify"),
            "{}",
            text(&refused)
        );
    }

    let client = ledger_client::Client::new(&daemon.url, &Default::default()).unwrap();
    let verifier = ledger_client::Verifier::from_genesis_file(&genesis).unwrap();
    let id = answer["id"].as_str().unwrap().parse().unwrap();
    client.get_verified(&id, &verifier).unwrap();
    let members = client.members().unwrap();
    let history = verifier.history(&members.changes).unwrap();
    assert_eq!(history.last().epoch, 2);
    assert_eq!(history.last().members.len(), members.members.len());
}

#[test]
fn a_learner_follows_is_promoted_and_votes() {
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    let (configs, base) = layout(&chain, 4);
    let genesis_path = chain.join("genesis.toml");
    let spec = checkpoint_every(&genesis_path, 5);
    let mut daemons = start_all(&configs, base);
    let before = commit_batch(node(&daemons, 0), "before", 6);

    // The new node follows the chain first, as any follower, with a key of its own.
    let home = dir.path().join("newcomer");
    let (config, port) = init_outsider(&home, &chain.join("genesis.toml"));
    set(std::slice::from_ref(&config), "follower", "true");
    let key = ledger::config::read_key(&home.join("node.key")).unwrap();
    let public = hex::encode(key.verifying_key().as_bytes());
    let newcomer = Daemon::start(&config, port);
    for id in &before {
        committed(&newcomer, id);
    }

    // Promoting a node that is no learner is refused before it is ordered.
    let early = try_change(
        node(&daemons, 0),
        &chain,
        &["promote", "--key", &public],
        "early",
    );
    assert!(
        early
            .unwrap_err()
            .contains("not a learner; add it as a learner first"),
        "a promotion of a follower was ordered"
    );

    // Clients submit through the four members from here until the newcomer votes.
    let load_from = status(node(&daemons, 0))["height"].as_u64().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let loader = {
        let urls = (0..4).map(|i| node(&daemons, i).url.clone()).collect();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || load(urls, stop, 5_000))
    };

    let (api, p2p) = (
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{}", port + 1),
    );
    let add = ["add", "--key", &public, "--p2p", &p2p, "--api", &api];
    change(node(&daemons, 0), &chain, &add, "add-learner");
    let learning = epoch_in_force(node(&daemons, 0), 1);
    assert_eq!(learning["learners"][0]["public_key"], public.as_str());
    assert_eq!(learning["members"].as_array().unwrap().len(), 4);
    // The newcomer knows itself a learner and says how far behind it is, on its
    // status and its metrics; the members ask it too, before promoting it and in
    // `member list`. The load goes on meanwhile: all at once within a few blocks,
    // which a stall of a moment can undo, so asked again until then.
    let close = |behind: &serde_json::Value| behind.as_u64().is_some_and(|b| b <= 5);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = status(&newcomer);
        let listed = members(node(&daemons, 0));
        if seen["role"] == "learner"
            && close(&seen["behind"])
            && metric(&newcomer, "ledger_behind_blocks") <= 5
            && close(&listed["learners"][0]["behind"])
        {
            break;
        }
        assert!(Instant::now() < deadline, "{seen} {listed}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A learner the members cannot ask how far it is is not promoted.
    newcomer.stop();
    let unknown = try_change(
        node(&daemons, 0),
        &chain,
        &["promote", "--key", &public],
        "promote-while-down",
    );
    assert!(
        unknown
            .unwrap_err()
            .contains("cannot tell how far the learner is"),
        "a learner that was down was promoted"
    );
    let newcomer = Daemon::start(&config, port);
    change(
        node(&daemons, 0),
        &chain,
        &["promote", "--key", &public],
        "promote",
    );
    let grown = epoch_in_force(node(&daemons, 0), 2);
    assert_eq!(grown["members"].as_array().unwrap().len(), 5, "{grown}");
    assert_eq!(grown["quorum"].as_u64(), Some(4), "{grown}");
    // The newcomer starts again as a member by itself.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, seen) = http("GET", &format!("{}/v1/status", newcomer.url), None);
        if code == 200 && seen["role"] == "member" && seen["ready"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "{code} {seen}");
        std::thread::sleep(Duration::from_millis(200));
    }

    stop.store(true, Ordering::Relaxed);
    let loaded = loader.join().unwrap();
    assert!(
        loaded.len() >= 20,
        "{} entries accepted under load",
        loaded.len()
    );
    for id in &loaded {
        committed(node(&daemons, 0), id);
        committed(&newcomer, id);
    }
    let load_to = status(node(&daemons, 0))["height"].as_u64().unwrap();
    let gap = longest_gap(node(&daemons, 0), load_from, load_to);
    // Two view-change timeouts (2 s each by default).
    assert!(gap <= 4_000, "{gap} ms between two blocks while growing");
    eprintln!(
        "grew 4 -> 5 under load: {} entries, blocks {load_from}..{load_to}, longest gap {gap} ms",
        loaded.len()
    );

    // With one old member stopped, four of five are a quorum only with the
    // newcomer's votes: commits go on, so it votes.
    daemons[3].take().unwrap().stop();
    let grown_ids = commit_batch(&newcomer, "five members", 6);
    for id in &grown_ids {
        committed(node(&daemons, 0), id);
    }
    let (_, entry) = http(
        "GET",
        &format!("{}/v1/entries/{}", node(&daemons, 0).url, grown_ids[0]),
        None,
    );
    let signers: Vec<&str> = entry["receipt"]["certificate"]["signatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["node_id"].as_str().unwrap())
        .collect();
    let newcomer_id = status(&newcomer)["node_id"].as_str().unwrap().to_owned();
    assert!(signers.contains(&newcomer_id.as_str()), "{signers:?}");

    // A learner far behind is not promoted. Its API (here a stand-in answering as
    // it, at height 0) says how far it is, signed with its key.
    let lagging_signer = ledger::testing::key(77);
    let lagging = lagging_signer.verifying_key();
    let lagging_key = hex::encode(lagging.as_bytes());
    let mut answer = status(node(&daemons, 0));
    answer["node_id"] = ledger::chain::Hash::digest(lagging.as_bytes())
        .to_hex()
        .into();
    answer["height"] = 0.into();
    let progress = ledger::chain::LearnerProgress::sign(&lagging_signer, &spec.chain_hash(), 0);
    answer["height_signature"] = hex::encode(progress.signature).into();
    let stand_in = serve_status(answer);
    let add_lagging = [
        "add",
        "--key",
        &lagging_key,
        "--p2p",
        "127.0.0.1:9",
        "--api",
        &stand_in,
    ];
    change(node(&daemons, 0), &chain, &add_lagging, "add-lagging");
    epoch_in_force(node(&daemons, 0), 3);
    let refused = try_change(
        node(&daemons, 0),
        &chain,
        &["promote", "--key", &lagging_key],
        "promote-lagging",
    );
    assert!(
        refused
            .unwrap_err()
            .contains("is at height 0 and the chain at"),
        "a learner far behind was promoted"
    );

    // A snapshot taken after the changes carries them: it verifies from the genesis
    // file alone (its serving member stays ready), and a node with nothing joins the
    // five from it.
    let (code, view) = http(
        "GET",
        &format!("{}/v1/snapshots/latest", node(&daemons, 0).url),
        None,
    );
    assert_eq!(code, 200, "{view}");
    let bytes = hex::decode(view["manifest"].as_str().unwrap()).unwrap();
    let manifest = ledger::chain::snapshot::Manifest::decode(&bytes).unwrap();
    let history = manifest.verify(&spec).unwrap();
    assert!(manifest.changes.len() >= 2, "{}", manifest.changes.len());
    // Certified by a membership after genesis.
    assert!(history.at(manifest.height()).epoch >= 1);
    let serving = status(node(&daemons, 0));
    assert!(
        serving["ready"] == true || !serving.to_string().contains("damaged"),
        "{serving}"
    );
    let (late_config, late_port) = init_outsider(&dir.path().join("late"), &genesis_path);
    set(std::slice::from_ref(&late_config), "follower", "true");
    let late = Daemon::start(&late_config, late_port);
    for id in &grown_ids {
        committed(&late, id);
    }
    // Then it fetches the blocks below the snapshot, certified by the memberships
    // the snapshot proved.
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&late)["history_from"] != 1 {
        assert!(Instant::now() < deadline, "{}", status(&late));
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = late.stop();
    assert!(log.contains("restored from a snapshot"), "{log}");
    // It asked the members in force, the newcomer too, which its genesis file does
    // not name.
    let joined = log
        .lines()
        .find(|line| line.contains("joining from a snapshot"))
        .unwrap_or_default();
    assert!(joined.contains(&format!("127.0.0.1:{port}")), "{log}");

    // The promoted newcomer loses its disk. Its genesis file does not name it, its
    // configuration still says follower: the snapshot's proof shows it a member,
    // so it abstains as a member that forgot its votes does.
    newcomer.stop();
    std::fs::remove_dir_all(home.join("data")).unwrap();
    let newcomer = Daemon::start(&config, port);
    let rejoined = status(&newcomer);
    assert!(
        rejoined["abstaining_until"]
            .as_u64()
            .is_some_and(|until| until > 0),
        "{rejoined}"
    );

    let mut everyone = daemons;
    everyone.push(Some(newcomer));
    stop_all(&mut everyone);
}

/// The longest time between two consecutive blocks from `from` to `to` on `daemon`,
/// by their proposers' clocks (all on this machine), ms.
fn longest_gap(daemon: &Daemon, from: u64, to: u64) -> u64 {
    let mut stamps = Vec::new();
    let mut next = from;
    while next <= to {
        let url = format!("{}/v1/blocks?from={next}&limit=100", daemon.url);
        let (code, page) = http("GET", &url, None);
        assert_eq!(code, 200, "{page}");
        let page = page.as_array().unwrap();
        assert!(!page.is_empty(), "no block {next}");
        for block in page {
            stamps.push(block["timestamp_ms"].as_u64().unwrap());
        }
        next += page.len() as u64;
    }
    stamps.truncate((to - from + 1) as usize);
    stamps
        .windows(2)
        .map(|w| w[1].saturating_sub(w[0]))
        .max()
        .unwrap_or(0)
}

/// Answers `GET` requests on a free loopback port with `status` (as `/v1/status`
/// would), for a bounded number of connections; its `host:port`.
fn serve_status(status: serde_json::Value) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let body = status.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(1_000) {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes());
        }
    });
    addr
}

/// A member that was down while two changes came into force (another member removed,
/// a learner added) catches up through both epochs when it returns; one that loses
/// its disk after them rejoins, abstains as long as it must, and votes again.
#[test]
fn members_down_or_wiped_across_two_changes_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    let (configs, base) = layout(&chain, 4);
    checkpoint_every(&chain.join("genesis.toml"), 5);
    let mut daemons = start_all(&configs, base);
    commit_batch(node(&daemons, 0), "before", 4);
    let genesis = members(node(&daemons, 0));
    daemons[3].take().unwrap().stop();

    let second = genesis["members"][2]["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    remove(node(&daemons, 0), &chain, &second);
    epoch_in_force(node(&daemons, 0), 1);
    daemons[2].take().unwrap().stop();
    let learner = hex::encode(ledger::testing::key(90).verifying_key().as_bytes());
    let add = ["add", "--key", &learner, "--p2p", "127.0.0.1:9"];
    change(node(&daemons, 0), &chain, &add, "add");
    epoch_in_force(node(&daemons, 0), 2);
    let after = commit_batch(node(&daemons, 0), "after", 4);

    // It replays: were the checkpoint at 10 already stable, it would be far enough
    // below that snapshot to join from it instead, and then abstain (as after a lost
    // disk) while the commits below need its votes.
    set(&configs[3..4], "join_from_snapshot", "false");
    daemons[3] = Some(Daemon::start(&configs[3], base + 6));
    for id in &after {
        committed(node(&daemons, 3), id);
    }
    let seen = members(node(&daemons, 3));
    assert_eq!(seen["epoch"], 2, "{seen}");
    // It votes again: with member 1 stopped, members 0 and 3 are the quorum of the
    // three (q = 2), so commits go on only with its votes.
    daemons[1].take().unwrap().stop();
    let late = commit_batch(node(&daemons, 3), "back", 2);
    committed(node(&daemons, 0), &late[1]);

    // Member 1 then loses its disk, and replays the chain rather than join from a
    // snapshot (whose proof would tell it the changes). It learns the changes from
    // the members' proofs, checked from the genesis file, asks the members in
    // force how far the chain has come, and abstains up to a window above.
    std::fs::remove_dir_all(chain.join("node1/data")).unwrap();
    set(&configs[1..2], "join_from_snapshot", "false");
    daemons[1] = Some(Daemon::start(&configs[1], base + 2));
    let seen = status(node(&daemons, 0))["height"].as_u64().unwrap();
    let rejoined = status(node(&daemons, 1));
    assert_eq!(
        rejoined["abstaining_until"].as_u64(),
        Some(seen + 10),
        "{rejoined}"
    );
    // Past that, it votes: with member 3 stopped, commits need it.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    while !status(node(&daemons, 1))["abstaining_until"].is_null() {
        assert!(Instant::now() < deadline, "{}", status(node(&daemons, 1)));
        commit_batch(node(&daemons, 0), &format!("past {round}"), 1);
        round += 1;
    }
    assert_eq!(members(node(&daemons, 1))["epoch"], 2);
    daemons[3].take().unwrap().stop();
    let last = commit_batch(node(&daemons, 0), "with the rejoined member", 2);
    committed(node(&daemons, 1), &last[1]);

    // Member 3 loses its disk too, now that the chain has gone two checkpoints past
    // the start of epoch 2: it restores from a snapshot above that start, which it
    // does not hold, and its replica starts above the block the join kept for it.
    let epoch_start = members(node(&daemons, 0))["since"].as_u64().unwrap();
    let snapshot = status(node(&daemons, 0))["stable_checkpoint"]
        .as_u64()
        .unwrap();
    assert!(snapshot >= epoch_start + 5, "{snapshot} {epoch_start}");
    std::fs::remove_dir_all(chain.join("node3/data")).unwrap();
    set(&configs[3..4], "join_from_snapshot", "true");
    daemons[3] = Some(Daemon::start(&configs[3], base + 6));
    let restored = status(node(&daemons, 3));
    assert!(
        restored["abstaining_until"].as_u64().is_some(),
        "{restored}"
    );
    let back = commit_batch(node(&daemons, 0), "after the restore", 1);
    committed(node(&daemons, 3), &back[0]);
    let log = daemons[3].take().unwrap().stop();
    stop_all(&mut daemons);
    let line = log
        .lines()
        .find(|line| line.contains("restored from a snapshot"))
        .unwrap_or_else(|| panic!("{log}"));
    let height: u64 = line
        .split("height=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|height| height.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    assert!(height > epoch_start, "{line}");
}

/// A change is checked for addresses a node can be dialed at before it is ordered:
/// it stays in the chain.
#[test]
fn a_learner_at_an_address_no_node_has_is_not_added() {
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    let (configs, base) = layout(&chain, 4);
    let daemons = start_all(&configs, base);
    let primary = node(&daemons, 0);
    let home = dir.path().join("newcomer");
    let (config, port) = init_outsider(&home, &chain.join("genesis.toml"));
    set(std::slice::from_ref(&config), "follower", "true");
    let key = ledger::config::read_key(&home.join("node.key")).unwrap();
    let public = hex::encode(key.verifying_key().as_bytes());
    let api = format!("127.0.0.1:{port}");

    // ledgerctl refuses it before signing; the node, should one come signed anyway.
    let typo = ["add", "--key", &public, "--p2p", "nonsense", "--api", &api];
    let refused = try_change(primary, &chain, &typo, "typo").unwrap_err();
    assert!(
        refused.contains("--p2p \"nonsense\": not HOST:PORT"),
        "{refused}"
    );
    let admin = ledger::config::read_key(&chain.join("admin.key")).unwrap();
    let spec = ledger::config::NodeConfig::load(&configs[0])
        .unwrap()
        .chain_spec()
        .unwrap();
    let mut signed = ledger::chain::Reconfiguration::new(
        0,
        ledger::chain::Change::AddLearner {
            public_key: key.verifying_key(),
            p2p_addr: "127.0.0.1:0".into(),
            api_addr: None,
        },
    )
    .unwrap();
    signed.sign(&admin, &spec.chain_hash());
    let body = serde_json::json!({ "reconfiguration": hex::encode(signed.encode()) });
    let url = format!("{}/v1/admin/reconfigurations", primary.url);
    let (code, answer) = http("POST", &url, Some(&body.to_string()));
    assert_eq!(code, 422, "{answer}");
    assert!(
        answer.to_string().contains("port is not a number from 1"),
        "{answer}"
    );
}

/// A change the members in force cannot order now (one of two is down) is refused
/// with the reason, not answered as submitted to wait in the pool.
#[test]
fn a_change_the_members_cannot_order_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    let (configs, base) = layout(&chain, 2);
    let mut daemons = start_all(&configs, base);
    let second = members(node(&daemons, 0))["members"][1]["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    daemons[1].take().unwrap().stop();
    let admin = chain.join("admin.key");
    let refused = node(&daemons, 0).ctl(&[
        "member",
        "remove",
        "--key",
        &second,
        "--admin-key",
        admin.to_str().unwrap(),
    ]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("only 1 of the 2 members in force are connected"),
        "{}",
        text(&refused)
    );
    // Back, the same change goes through.
    daemons[1] = Some(Daemon::start(&configs[1], base + 2));
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(why) = try_change(
        node(&daemons, 0),
        &chain,
        &["remove", "--key", &second],
        "again",
    ) {
        assert!(Instant::now() < deadline, "never taken: {why}");
        std::thread::sleep(Duration::from_millis(200));
    }
    epoch_in_force(node(&daemons, 0), 1);
    stop_all(&mut daemons);
}

/// A member removed from a chain of two, started again, refuses (exit 78): alone,
/// it would otherwise cut and certify blocks of its own, a fork.
#[test]
fn a_member_removed_from_two_does_not_run_alone() {
    let dir = tempfile::tempdir().unwrap();
    let chain = dir.path().join("cluster");
    let (configs, base) = layout(&chain, 2);
    checkpoint_every(&chain.join("genesis.toml"), 5);
    let mut daemons = start_all(&configs, base);
    let second = members(node(&daemons, 0))["members"][1]["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    remove(node(&daemons, 0), &chain, &second);
    epoch_in_force(node(&daemons, 0), 1);
    daemons[1].take().unwrap().stop();
    // Bounded: before, it ran on alone.
    let output = refused_run(&configs[1]);
    assert_eq!(output.status.code(), Some(78), "{}", text(&output));
    assert!(text(&output).contains("removed it"), "{}", text(&output));
    stop_all(&mut daemons);
}
