//! Real `ledgerd` processes off the happy path: a member cut off from the others,
//! a member that restarts behind an idle cluster, a damaged database, a full disk.
//! Every wait is bounded; every process and proxy is stopped.

mod support;

use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use support::*;

/// A TCP proxy on a free loopback port in front of `target`, which can be cut:
/// open connections are shut down and new ones closed at once, as a partition
/// would leave them.
struct Link {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Link {
    fn new(target: u16) -> Link {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (cut, open, stop) = (cut.clone(), open.clone(), stop.clone());
            std::thread::spawn(move || {
                for inbound in listener.incoming() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(inbound) = inbound else { continue };
                    if cut.load(Ordering::Relaxed) {
                        continue; // dropped: closed at once
                    }
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)) else {
                        continue;
                    };
                    let mut open = open.lock().unwrap();
                    open.retain(|stream| stream.peer_addr().is_ok());
                    for stream in [&inbound, &outbound] {
                        open.push(stream.try_clone().unwrap());
                    }
                    for (mut from, mut to) in [
                        (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                        (outbound, inbound),
                    ] {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(Shutdown::Both);
                            let _ = from.shutdown(Shutdown::Both);
                        });
                    }
                }
            })
        };
        Link {
            port,
            cut,
            open,
            stop,
            accept: Some(accept),
        }
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.cut();
        // Wakes the accept loop, which then sees the stop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Gives node `i` of a layout its own genesis file in which member `j`'s peer
/// address is `address(i, j)`. Addresses are not part of the chain's identity, so
/// every node still runs the same chain; each link can now go through a proxy.
fn route_through(configs: &[PathBuf], base: u16, address: impl Fn(usize, usize) -> u16) {
    let genesis = configs[0].parent().unwrap().join("../genesis.toml");
    let text = std::fs::read_to_string(genesis).unwrap();
    for (i, config) in configs.iter().enumerate() {
        let mut own = text.clone();
        for j in 0..configs.len() {
            let real = format!("127.0.0.1:{}\"", base + 2 * j as u16 + 1);
            own = own.replace(&real, &format!("127.0.0.1:{}\"", address(i, j)));
        }
        let dir = config.parent().unwrap();
        std::fs::write(dir.join("genesis.toml"), own).unwrap();
        let settings = std::fs::read_to_string(config).unwrap();
        std::fs::write(
            config,
            settings.replace("\"../genesis.toml\"", "\"genesis.toml\""),
        )
        .unwrap();
    }
}

/// `ledgerd check --config CONFIG`.
fn check_offline(config: &Path) -> std::process::Output {
    run(LEDGERD, &["check", "--config", config.to_str().unwrap()])
}

fn height(daemon: &Daemon) -> u64 {
    status(daemon)["height"].as_u64().unwrap()
}

/// `POST /v1/entries?wait=commit` of `data` through `daemon`, waiting at most
/// `timeout`: the HTTP status and the answer.
fn submit_waiting(daemon: &Daemon, data: &str, timeout: Duration) -> (u16, serde_json::Value) {
    let url = format!(
        "{}/v1/entries?wait=commit&timeout_ms={}",
        daemon.url,
        timeout.as_millis()
    );
    let body = serde_json::json!({ "data": data }).to_string();
    http("POST", &url, Some(&body))
}

/// DESIGN.md, "Consensus": with three members a quorum is two. A member cut off
/// from the other two (every link through a proxy that is cut) commits nothing and
/// answers no waiting client with a receipt, however long it waits and whatever
/// views it moves to, while the other two commit. Once the links heal, all three
/// hold one chain with every entry. With the old 2f + 1 = 1 the lone member
/// committed blocks of its own.
#[test]
fn a_member_cut_off_from_a_quorum_commits_nothing_and_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, base) = layout(&dir.path().join("cluster"), 3);
    // links[i][j]: node i's connection to member j.
    let links: Vec<Vec<Option<Link>>> = (0..3)
        .map(|i| {
            (0..3)
                .map(|j| (i != j).then(|| Link::new(base + 2 * j as u16 + 1)))
                .collect()
        })
        .collect();
    route_through(&configs, base, |i, j| {
        links[i][j]
            .as_ref()
            .map_or(base + 2 * j as u16 + 1, |link| link.port)
    });
    let mut daemons = start_all(&configs, base);
    let (status_code, first) = submit_waiting(node(&daemons, 2), "before", Duration::from_secs(20));
    assert_eq!(status_code, 200, "{first}");

    for (i, row) in links.iter().enumerate() {
        for (j, link) in row.iter().enumerate() {
            if let Some(link) = link.as_ref().filter(|_| i == 2 || j == 2) {
                link.cut();
            }
        }
    }
    let lone_height = height(node(&daemons, 2));
    // The lone member holds a client's entry for 10 s (five view-change timeouts):
    // no receipt, and no block of its own.
    let lone = std::thread::scope(|scope| {
        let waiting =
            scope.spawn(|| submit_waiting(node(&daemons, 2), "alone", Duration::from_secs(10)));
        // Meanwhile the majority commits.
        for round in 0..5 {
            let (code, answer) = submit_waiting(
                node(&daemons, round % 2),
                &format!("majority {round}"),
                Duration::from_secs(20),
            );
            assert_eq!(code, 200, "{answer}");
        }
        waiting.join().unwrap()
    });
    assert_eq!(lone.0, 202, "the lone member answered {lone:?}");
    // The client that gave up is forgotten at the next tick, though its entry is
    // still pending: clients asking again and again leave no waiter behind.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(node(&daemons, 2), "ledger_commit_waiters") != 0 {
        assert!(
            Instant::now() < deadline,
            "the waiter of a gone client stays"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        height(node(&daemons, 2)),
        lone_height,
        "the lone member committed"
    );
    let majority = height(node(&daemons, 0));
    assert!(majority >= lone_height + 5, "{majority} vs {lone_height}");

    for row in &links {
        for link in row.iter().flatten() {
            link.heal();
        }
    }
    // Healed: one chain, holding every entry, the lone member's included.
    let (code, last) = submit_waiting(node(&daemons, 2), "healed", Duration::from_secs(30));
    assert_eq!(code, 200, "{last}");
    let tip = converge(&daemons, last["height"].as_u64().unwrap());
    for daemon in daemons.iter().flatten() {
        assert_eq!(status(daemon)["tip_hash"], tip);
        for data in ["before", "alone", "majority 0", "majority 4", "healed"] {
            let id = ledger::chain::Entry::new(data.as_bytes().to_vec()).id();
            let (code, entry) = http("GET", &format!("{}/v1/entries/{id}", daemon.url), None);
            assert_eq!(
                (code, entry["status"].as_str()),
                (200, Some("committed")),
                "{data}"
            );
        }
    }
    stop_all(&mut daemons);
}

/// A member that restarts behind an idle cluster, in an older view, catches up and
/// joins the current view without any new traffic, within a few heartbeats; an
/// entry submitted to it then commits without a view change. Before, it waited
/// for the next entry someone else submitted.
#[test]
fn a_member_behind_an_idle_cluster_catches_up_without_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, base) = layout(&dir.path().join("cluster"), 4);
    let mut daemons = start_all(&configs, base);
    let (code, answer) = submit_waiting(node(&daemons, 1), "first", Duration::from_secs(20));
    assert_eq!(code, 200, "{answer}");
    // The primary dies: the others move to view 1 and commit without it.
    drop(daemons[0].take());
    for round in 0..20 {
        let (code, answer) = submit_waiting(
            node(&daemons, 1 + round % 3),
            &format!("while away {round}"),
            Duration::from_secs(30),
        );
        assert_eq!(code, 200, "{answer}");
    }
    let others = status(node(&daemons, 1));
    let view = others["view"].as_u64().unwrap();
    assert!(view >= 1, "{others}");
    let tip = others["height"].as_u64().unwrap();
    // The others restart one by one, so none holds frames queued for the member
    // that was away: what it learns now, it learns by asking.
    for i in 1..4 {
        daemons[i].take().unwrap().stop();
        daemons[i] = Some(Daemon::start(&configs[i], base + 2 * i as u16));
    }

    // Back, on a cluster that sends it nothing. Timed from when it answers: its
    // start has a bound of its own.
    daemons[0] = Some(Daemon::start(&configs[0], base));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    loop {
        let back = status(node(&daemons, 0));
        eprintln!(
            "poll {:?}: {} {}",
            started.elapsed(),
            back["height"],
            back["view"]
        );
        if back["height"].as_u64() == Some(tip) && back["view"].as_u64() == Some(view) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after {:?} the member is at {back}, the cluster at height {tip} view {view}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let caught_up = started.elapsed();
    let (code, answer) = submit_waiting(node(&daemons, 0), "back", Duration::from_secs(10));
    assert_eq!(code, 200, "{answer}");
    for daemon in daemons.iter().flatten() {
        assert_eq!(
            status(daemon)["view"].as_u64(),
            Some(view),
            "a view changed"
        );
    }
    eprintln!("caught up {tip} blocks and view {view} in {caught_up:?}");
    stop_all(&mut daemons);
}

/// Damage written into a stopped member's database file, past redb's first pages,
/// never reaches a client as data: with the member running again every block and
/// entry it answers for equals a healthy member's answer or is refused. Moving its
/// data directory aside and starting it again recovers it from its peers, with
/// every committed entry.
#[test]
fn a_damaged_database_is_refused_then_recovered_from_the_peers() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, base) = layout(&dir.path().join("cluster"), 4);
    let mut daemons = start_all(&configs, base);
    let mut ids = Vec::new();
    for round in 0..24 {
        let data = format!("entry {round} {}", "x".repeat(200));
        let (code, answer) =
            submit_waiting(node(&daemons, round % 4), &data, Duration::from_secs(20));
        assert_eq!(code, 200, "{answer}");
        ids.push(answer["id"].as_str().unwrap().to_owned());
    }
    let tip = height(node(&daemons, 0));
    converge(&daemons, tip);
    daemons[3].take().unwrap().stop();

    // One entry's bytes in its block change on disk: the node starts (nothing it
    // reads at start is touched), serves every other block and entry, refuses
    // that block and entry with 500, and reports not ready.
    let database = configs[3].parent().unwrap().join("data/ledger.redb");
    let mut bytes = std::fs::read(&database).unwrap();
    let target = b"entry 7 xxxx";
    // The block's bytes may also sit in the consensus log or in a page redb has
    // freed, in any order in the file: change every copy, so the stored block is
    // one of them.
    let copies: Vec<usize> = bytes
        .windows(target.len())
        .enumerate()
        .filter(|(_, window)| window == target)
        .map(|(at, _)| at)
        .collect();
    assert!(!copies.is_empty(), "the entry's bytes are in the file");
    for at in copies {
        assert!(at > 4096);
        bytes[at + 6] ^= 0x01; // "entry 7" becomes "entry 6"
    }
    std::fs::write(&database, &bytes).unwrap();
    let port = base + 6;
    let damaged = Daemon::start(&configs[3], port);
    let healthy = node(&daemons, 0).url.clone();
    let (served, refused) = compare_with(&damaged.url, &healthy, tip, &ids);
    assert_eq!(refused, 2, "the damaged block and its entry");
    assert_eq!(served, (tip + 1) as usize + ids.len() - 2);
    let (code, ready) = http("GET", &format!("{}/readyz", damaged.url), None);
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready["message"].as_str().unwrap().contains("damaged"),
        "{ready}"
    );
    let log = damaged.stop();
    assert_eq!(lines_with(&log, "the database is damaged"), 2, "{log}");
    // The check reports the damage and leaves the file as it found it (the copy an
    // operator keeps for a post-mortem).
    let before = std::fs::read(&database).unwrap();
    let check = check_offline(&configs[3]);
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(text(&check).contains("DAMAGED"), "{}", text(&check));
    assert!(
        std::fs::read(&database).unwrap() == before,
        "the check changed the file"
    );

    // Then 200 bits flip at seeded places anywhere past the first pages: started on
    // that, if it starts at all, it serves nothing wrong.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..200 {
        let at = 4096 + (next() % (bytes.len() as u64 - 4096)) as usize;
        bytes[at] ^= 1 << (next() % 8);
    }
    std::fs::write(&database, &bytes).unwrap();
    let damaged = Daemon::spawn(&configs[3], port, &[]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline
        && http("GET", &format!("{}/healthz", damaged.url), None).0 != 200
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (served, refused) = compare_with(&damaged.url, &healthy, tip, &ids);
    eprintln!("randomly damaged member: {served} answers served (all true), {refused} refused");
    drop(damaged);

    // Recovery: the damaged data directory moves aside, the member starts empty and
    // catches up from its peers.
    let data = database.parent().unwrap();
    std::fs::rename(data, data.with_file_name("data.damaged")).unwrap();
    daemons[3] = Some(Daemon::start(&configs[3], port));
    converge(&daemons, tip);
    for id in &ids {
        let (code, entry) = http(
            "GET",
            &format!("{}/v1/entries/{id}", node(&daemons, 3).url),
            None,
        );
        assert_eq!(
            (code, entry["status"].as_str()),
            (200, Some("committed")),
            "{entry}"
        );
    }
    stop_all(&mut daemons);
    let check = check_offline(&configs[3]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
}

/// Asks `suspect` for every block up to `tip` and every entry of `ids`, and checks
/// each answer it gives against `healthy`'s: the numbers of answers served (all
/// equal) and refused (500, 503, or no answer at all).
fn compare_with(suspect: &str, healthy: &str, tip: u64, ids: &[String]) -> (usize, usize) {
    let (mut served, mut refused) = (0, 0);
    let mut compare = |path: String, key: fn(&serde_json::Value) -> serde_json::Value| {
        let (code, answer) = http("GET", &format!("{suspect}{path}"), None);
        match code {
            200 => {
                let (_, truth) = http("GET", &format!("{healthy}{path}"), None);
                assert_eq!(key(&answer), key(&truth), "{path}: wrong data served");
                served += 1;
            }
            0 | 500 | 503 => refused += 1,
            other => panic!("{path}: {other} {answer}"),
        }
    };
    for height in 0..=tip {
        compare(format!("/v1/blocks/{height}"), |block| block.clone());
    }
    for id in ids {
        compare(format!("/v1/entries/{id}"), |entry| {
            serde_json::json!([entry["data"], entry["receipt"]["header"]["hash"]])
        });
    }
    (served, refused)
}

/// Whether this process may mount file systems (tmpfs for the disk-full tests).
fn can_mount() -> bool {
    let probe = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(probe.path())
        .output()
        .is_ok_and(|output| output.status.success());
    if mounted {
        let _ = std::process::Command::new("umount")
            .arg(probe.path())
            .status();
    }
    mounted
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output));
        Tmpfs(path.to_owned())
    }

    fn resize(&self, size: &str) {
        let output = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", text(&output));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Submits entries of 4 KiB through `daemon` until one is refused with 503 (the
/// disk filled) and returns the ids answered "committed", with the refusal.
fn fill(daemon: &Daemon, tag: &str) -> (Vec<String>, serde_json::Value) {
    let mut committed = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for round in 0.. {
        assert!(Instant::now() < deadline, "the disk never filled");
        let data = format!("{tag} {round} {}", "y".repeat(4096));
        let (code, answer) = submit_waiting(daemon, &data, Duration::from_secs(5));
        match code {
            200 => committed.push(answer["id"].as_str().unwrap().to_owned()),
            // Accepted while the database failed underneath: it waits in the pool.
            202 => {}
            503 => return (committed, answer),
            other => panic!("{other}: {answer}"),
        }
    }
    unreachable!()
}

/// Log lines of `log` that contain `needle`.
fn lines_with(log: &str, needle: &str) -> usize {
    log.lines().filter(|line| line.contains(needle)).count()
}

/// A node whose data directory fills refuses submits with 503 and the reason (no
/// 202 for an entry that cannot commit), reports not ready, logs the failure once
/// and then at a bounded rate, and once the disk has room again reopens its
/// database and resumes by itself, with every entry answered "committed" intact.
#[test]
fn a_full_disk_is_refused_then_recovered_without_a_restart() {
    if !can_mount() {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (configs, base) = layout(&dir.path().join("single"), 1);
    let disk = Tmpfs::mount(&configs[0].parent().unwrap().join("data"), "3m");
    let daemon = Daemon::start(&configs[0], base);
    let (committed, refusal) = fill(&daemon, "single");
    assert_eq!(refusal["error"], "store_unavailable", "{refusal}");
    assert!(!committed.is_empty());
    let (code, ready) = http("GET", &format!("{}/readyz", daemon.url), None);
    assert_eq!(code, 503, "{ready}");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("database failed"),
        "{ready}"
    );
    // Still refused a while later: the node probes, the disk is still full.
    std::thread::sleep(Duration::from_secs(3));
    let (code, answer) = submit_waiting(&daemon, "still full", Duration::from_secs(2));
    assert_eq!(code, 503, "{answer}");

    disk.resize("64m");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http("GET", &format!("{}/readyz", daemon.url), None).0 != 200 {
        assert!(Instant::now() < deadline, "the node did not recover");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, answer) = submit_waiting(&daemon, "room again", Duration::from_secs(20));
    assert_eq!(code, 200, "{answer}");
    for id in &committed {
        let (code, entry) = http("GET", &format!("{}/v1/entries/{id}", daemon.url), None);
        assert_eq!((code, entry["status"].as_str()), (200, Some("committed")));
    }
    let log = daemon.stop();
    assert_eq!(lines_with(&log, "the database failed;"), 1, "{log}");
    assert!(
        lines_with(&log, "the database is still failing") <= 2,
        "{log}"
    );
    assert!(lines_with(&log, "takes writes again") >= 1, "{log}");
    let check = check_offline(&configs[0]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check));
    drop(disk);
}

/// In a cluster, the member whose disk fills stops taking part (the others go on
/// committing), and once it has room again reopens its database, rebuilds its
/// replica from what is durable and catches up, without a restart.
#[test]
fn a_cluster_member_with_a_full_disk_recovers_without_a_restart() {
    if !can_mount() {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (configs, base) = layout(&dir.path().join("cluster"), 4);
    let disk = Tmpfs::mount(&configs[3].parent().unwrap().join("data"), "3m");
    let mut daemons = start_all(&configs, base);
    let (committed, refusal) = fill(node(&daemons, 3), "member");
    assert_eq!(refusal["error"], "store_unavailable", "{refusal}");
    // The others go on without it.
    let (code, answer) = submit_waiting(node(&daemons, 0), "without it", Duration::from_secs(20));
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        http("GET", &format!("{}/readyz", node(&daemons, 3).url), None).0,
        503
    );
    disk.resize("64m");
    let tip = height(node(&daemons, 0));
    converge(&daemons, tip);
    let (code, answer) = submit_waiting(node(&daemons, 3), "back", Duration::from_secs(20));
    assert_eq!(code, 200, "{answer}");
    for id in &committed {
        let (code, entry) = http(
            "GET",
            &format!("{}/v1/entries/{id}", node(&daemons, 3).url),
            None,
        );
        assert_eq!((code, entry["status"].as_str()), (200, Some("committed")));
    }
    let logs = stop_all(&mut daemons);
    assert!(
        lines_with(&logs[3], "consensus resumes") >= 1,
        "{}",
        logs[3]
    );
    drop(disk);
}

/// A primary whose clock runs ahead proposes blocks the backups refuse; each backup
/// says so at warn, naming the rule and the sender, once per sender and rule per
/// ten seconds (before, only a debug line and a counter moved).
#[test]
fn a_refused_block_is_logged_with_its_rule_and_its_sender() {
    use ledger::chain::{CompactRange, Header};
    use ledger::config::NodeConfig;
    use ledger::consensus::{Message, Payload};
    use ledger::net::{configs, read_frame, write_frame, Hello, Roster, Wire, PROTOCOL_VERSION};
    use ledger::net::{MAX_HELLO_BYTES, SERVER_NAME};
    use tokio::io::AsyncWriteExt;

    let dir = tempfile::tempdir().unwrap();
    let (configs_paths, base) = layout(&dir.path().join("cluster"), 4);
    let mut daemons = start_all(&configs_paths, base);
    // Member 0, view 0's primary, goes down; its key then proposes from a clock a
    // minute ahead.
    drop(daemons[0].take());
    let spec = NodeConfig::load(&configs_paths[1])
        .unwrap()
        .chain_spec()
        .unwrap();
    let primary = NodeConfig::load(&configs_paths[0])
        .unwrap()
        .signing_key()
        .unwrap();
    let genesis = spec.genesis_block();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let ahead = now.as_millis() as u64 + 60_000;
    let mut header = Header::child(
        &genesis.header,
        &CompactRange::new(),
        ahead,
        spec.difficulty,
    );
    header.nonce = ledger::pow::Template::new(&header)
        .search(0, 1, u64::MAX)
        .expect("a nonce");
    let block = Arc::new(ledger::chain::Block {
        header,
        entries: Vec::new(),
    });
    let proposal = Message::sign(
        &spec.chain_hash(),
        0,
        &primary,
        Payload::PrePrepare { view: 0, block },
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (_, client) = configs(&primary, &Roster::new(&spec.members, &[])).unwrap();
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", base + 3))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(client)
            .connect(name, stream)
            .await
            .unwrap();
        let hello = Hello {
            protocol: PROTOCOL_VERSION,
            chain_id: spec.chain_id.clone(),
            genesis_hash: genesis.hash(),
            member: 0,
            plugins: String::new(),
        };
        write_frame(&mut tls, &hello.encode()).await.unwrap();
        tls.flush().await.unwrap();
        assert!(read_frame(&mut tls, MAX_HELLO_BYTES)
            .await
            .unwrap()
            .is_some());
        for _ in 0..3 {
            write_frame(&mut tls, &Wire::Consensus(proposal.clone()).encode())
                .await
                .unwrap();
            tls.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let log = daemons[1].take().unwrap().stop();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("refused a pre-prepare from member 0"))
        .collect();
    assert_eq!(refusals.len(), 1, "{log}");
    assert!(
        refusals[0].contains("WARN") && refusals[0].contains("ahead of local time"),
        "{}",
        refusals[0]
    );
    stop_all(&mut daemons);
}
