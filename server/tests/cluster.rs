//! Four replicas in one process, each with its own redb store and its own mutual-TLS
//! transport on 127.0.0.1: entries commit with quorum certificates on every member,
//! a stopped primary is replaced, and a restarted member catches up from its peers.
//! Every wait is bounded.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use ledger::chain::{ChainSpec, Entry, Hash};
use ledger::consensus::{MemberIndex, Timing};
use ledger::engine::{Cluster, ClusterSettings, NodeSettings};
use ledger::metrics::Metrics;
use ledger::net::{Backoff, Hello, Roster, Transport, TransportConfig, Wire, PROTOCOL_VERSION};
use ledger::storage::{Store, StoreOptions};
use ledger::testing;
use tokio::net::TcpListener;

mod support;

const LIMIT: Duration = Duration::from_secs(30);

/// What the members of every test in this binary log at info and above.
static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Captured;

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Held by each test for its whole run, so that what the log gains meanwhile is
/// its own members'.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts capturing the log into [`LOG`] (once per binary) and says how many lines
/// captured so far contain `text`.
fn logged(text: &str) -> usize {
    static START: Once = Once::new();
    START.call_once(|| {
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(|| Captured)
            .init();
    });
    let log = LOG.lock().unwrap();
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|line| line.contains(text))
        .count()
}

struct Member {
    cluster: Cluster,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    _transport: Arc<Transport>,
}

struct Net {
    keys: Vec<SigningKey>,
    spec: ChainSpec,
    addrs: Vec<String>,
    dir: tempfile::TempDir,
    members: Vec<Option<Member>>,
    /// Each member's send queue per peer, in frames.
    queue_capacity: usize,
}

impl Net {
    async fn new(queue_capacity: usize) -> Net {
        let keys: Vec<SigningKey> = (1..=4).map(testing::key).collect();
        let mut file = testing::spec(&keys, 4).to_file();
        file.checkpoint_interval = 4;
        let spec = ChainSpec::from_file(file).expect("spec");
        // Four ports known free, below the ephemeral range: a port learned by binding
        // port 0 and released could come back for the next member (one run failed
        // with the address in use) or be taken by an outgoing connection.
        let base = support::free_ports(4);
        let addrs = (base..base + 4)
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        let mut net = Net {
            keys,
            spec,
            addrs,
            dir: tempfile::tempdir().expect("tempdir"),
            members: (0..4).map(|_| None).collect(),
            queue_capacity,
        };
        for member in 0..4 {
            net.start(member).await;
        }
        net
    }

    fn path(&self, member: usize) -> PathBuf {
        self.dir.path().join(format!("node{member}.redb"))
    }

    async fn start(&mut self, member: usize) {
        let store = Arc::new(
            Store::open(&self.path(member), &self.spec, StoreOptions::default()).expect("store"),
        );
        let listener = TcpListener::bind(&self.addrs[member]).await.expect("bind");
        let config = TransportConfig {
            key: self.keys[member].clone(),
            roster: Roster::new(&self.spec.members, &[]),
            members: self.spec.members.len(),
            hello: Hello {
                protocol: PROTOCOL_VERSION,
                chain_id: self.spec.chain_id.clone(),
                genesis_hash: self.spec.genesis_block().hash(),
                member: member as MemberIndex,
                plugins: String::new(),
            },
            peers: (0..4)
                .filter(|m| *m != member)
                .map(|m| (m as MemberIndex, self.addrs[m].clone()))
                .collect(),
            frame_limit: Wire::max_frame(&self.spec.params),
            queue_capacity: self.queue_capacity,
            inbound_capacity: 4096,
            backoff: Backoff::DEFAULT,
        };
        let (transport, inbound) = Transport::start(listener, config).expect("transport");
        let transport = Arc::new(transport);
        let node_settings = NodeSettings {
            max_block_entries: 1_000,
            max_block_delay: Duration::from_millis(20),
            pool_capacity: 10_000,
            mining_threads: std::num::NonZeroUsize::MIN,
        };
        let settings = ClusterSettings {
            timing: Timing {
                max_block_delay_ms: 20,
                view_change_timeout_ms: 1_500,
                retransmit_ms: 100,
            },
            tick: Duration::from_millis(10),
            catch_up_batch: 16,
            ..ClusterSettings::default()
        };
        let metrics = Arc::new(Metrics::default());
        let cluster = Cluster::start(
            store.clone(),
            self.keys[member].clone(),
            transport.clone(),
            inbound,
            node_settings,
            settings,
            metrics.clone(),
            Arc::default(),
        )
        .expect("cluster");
        self.members[member] = Some(Member {
            cluster,
            store,
            metrics,
            _transport: transport,
        });
    }

    /// Stops `member`; the height it had applied when it stopped.
    fn stop(&mut self, member: usize) -> Option<u64> {
        let stopped = self.members[member].take()?;
        stopped.cluster.stop();
        Some(stopped.store.tip().expect("tip").height)
    }

    fn member(&self, member: usize) -> &Member {
        self.members[member].as_ref().expect("running")
    }

    /// Submits `count` entries tagged `tag` through `via`, waits for every receipt
    /// and checks each offline against the genesis.
    async fn commit(&self, via: usize, tag: u64, count: u64) {
        let mut receivers = Vec::new();
        for i in 0..count {
            let entry = Entry::new(format!("entry {tag}/{i}").into_bytes());
            let (_, receiver) = self
                .member(via)
                .cluster
                .submit(entry, true)
                .await
                .expect("submit");
            let receiver = receiver.expect("waiter");
            receivers.push(receiver);
        }
        for receiver in receivers {
            let receipt = tokio::time::timeout(LIMIT, receiver)
                .await
                .expect("committed in time")
                .expect("answered")
                .expect("committed");
            receipt.verify(&self.spec).expect("receipt verifies");
            assert!(receipt.certificate.signatures.len() >= 3);
        }
    }

    /// Waits until every running member has applied the same chain up to at least
    /// `height`; returns the common height.
    async fn converge(&self, height: u64) -> u64 {
        let deadline = Instant::now() + LIMIT;
        loop {
            let tips: Vec<(u64, Hash)> = self
                .members
                .iter()
                .flatten()
                .map(|m| {
                    let tip = m.store.tip().expect("tip");
                    (tip.height, tip.hash())
                })
                .collect();
            if tips.iter().all(|t| *t == tips[0]) && tips[0].0 >= height {
                return tips[0].0;
            }
            assert!(
                Instant::now() < deadline,
                "members did not converge: {tips:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_members_commit_identical_chains_and_survive_losing_the_primary() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let (asked, entered, waited) = (
        logged("asking for view"),
        logged(" in force"),
        logged("an entry waited"),
    );
    // Queues short enough that the others' queues to an absent member fill while
    // it is away (below).
    let mut net = Net::new(64).await;
    // Rounds that each wait for their receipts: one block or more each.
    for round in 0..3 {
        net.commit(1 + round % 3, round as u64, 10).await;
    }
    let height = net.converge(1).await;
    for member in net.members.iter().flatten() {
        assert_eq!(member.store.verify_chain().expect("valid chain"), height);
    }

    // The primary of view 0 goes away: the others change views and go on.
    assert_eq!(net.member(1).cluster.status().primary, 0);
    // Its own tip: it may have applied a block or two past what all had in common.
    let stopped_at = net.stop(0).expect("running");
    // The others keep what they send it meanwhile in their queues to it, and the
    // queues deliver it when it returns: a backlog that can bring it up to date
    // alone, in the same votes it missed (some runs did). So the others go on
    // until every queue to it has overflowed, and then until their stable checkpoint
    // passes every block made since: those blocks' votes were lost in full queues
    // and are no longer sent again, so it must fetch them. (How many rounds that
    // takes depends on how the entries fall into blocks: a loaded machine batches
    // more. Bounded all the same.)
    let overflowed = |net: &Net| {
        (1..4).all(|m| {
            let dropped = &net.member(m).metrics.messages_dropped;
            dropped.get("send_queue_full") > 0
        })
    };
    let highest = |net: &Net| {
        (1..4)
            .map(|m| net.member(m).store.tip().expect("tip").height)
            .max()
            .unwrap_or(0)
    };
    let mut round = 3;
    let mut lost_above = None;
    loop {
        let stable = net.member(1).cluster.status().stable_checkpoint;
        if lost_above.is_some_and(|lost: u64| stable.is_some_and(|s| s > lost.max(stopped_at))) {
            break;
        }
        assert!(
            round < 200,
            "the queues to member 0 overflowed above {lost_above:?}, the checkpoint is at \
             {stable:?}"
        );
        net.commit(1 + round % 3, round as u64, 10).await;
        round += 1;
        if lost_above.is_none() && overflowed(&net) {
            lost_above = Some(highest(&net));
        }
    }
    let after = net.converge(height + 1).await;
    let status = net.member(1).cluster.status();
    assert!(status.view >= 1 && status.primary != 0, "{status:?}");
    // The log says why the members left view 0, and when the next view held.
    assert!(
        logged("asking for view") >= asked + 2,
        "two members at least asked"
    );
    assert!(logged("an entry waited") > waited, "a timer ran out");
    assert!(
        logged(" in force") >= entered + 3,
        "three members entered it"
    );
    let left = || logged("asking for view") + logged("moved to view");
    let (left_before, entered_before) = (left(), logged(" in force"));

    // It comes back from its store, catches up from its peers and rejoins them in
    // their view; the checkpoints every member signs become stable everywhere.
    net.start(0).await;
    // Entries go through the others only: member 0 has no timer of its own to move
    // it; the primary's NEW-VIEW, resent while blocks are undecided, brings it in.
    for round in round..round + 3 {
        net.commit(1 + round % 3, round as u64, 10).await;
    }
    let last = net.converge(after + 1).await;
    assert_eq!(
        net.member(0).store.verify_chain().expect("valid chain"),
        last
    );
    // Checkpoint votes travel after the blocks, and the returned member joins the
    // others' view: wait for both, bounded.
    let deadline = Instant::now() + LIMIT;
    loop {
        let statuses: Vec<_> = (0..4).map(|m| net.member(m).cluster.status()).collect();
        let one_view = statuses
            .iter()
            .all(|s| s.active && s.view == statuses[1].view);
        if one_view
            && statuses
                .iter()
                .all(|s| s.stable_checkpoint.is_some_and(|h| h >= 8))
        {
            break;
        }
        assert!(Instant::now() < deadline, "height {last}: {statuses:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What an operator sees on /metrics.
    for member in 1..4 {
        let metrics = &net.member(member).metrics;
        assert_eq!(metrics.height.load(Ordering::Relaxed), last);
        assert!(metrics.view.load(Ordering::Relaxed) >= 1);
        assert!(metrics.view_changes.load(Ordering::Relaxed) >= 1);
        assert!(metrics.messages_in.get("commit") > 0);
        assert!(metrics.messages_out.get("checkpoint") > 0);
    }
    // Member 0 told of its move to the others' view too, by their view changes or
    // their NEW-VIEW, and of entering it.
    assert!(left() > left_before);
    assert!(logged(" in force") > entered_before);
    let via = &net.member(1).metrics;
    assert!(via.commit_latency.count() > 0);
    assert!(
        net.member(0).metrics.messages_in.get("committed") > 0,
        "caught up by fetching: stopped at {stopped_at}, the others' checkpoint then \
         above it, member 0 got {} blocks and {} prepares",
        net.member(0).metrics.messages_in.get("block"),
        net.member(0).metrics.messages_in.get("prepare")
    );
}

async fn submit(
    net: &Net,
    i: u64,
) -> Result<ledger::engine::Submitted, ledger::engine::SubmitError> {
    let entry = Entry::new(format!("waits {i}").into_bytes());
    net.member(1).cluster.submit(entry, false).await
}

/// A pool deeper than the cluster commits within the view-change timeout would make
/// an honest primary look faulty to the members whose entries wait. A member takes
/// no new entry while its pool would take a quarter of the timeout to commit (here
/// 0.375 s at ten blocks of 1,000 a second: 3,750 entries, below the pool's
/// 10,000), and takes them again once they commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_refuses_entries_while_its_pool_could_not_commit_in_time() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut net = Net::new(4096).await;
    net.commit(1, 0, 1).await;
    // Two of four gone: no quorum, so nothing commits and no view changes.
    net.stop(0);
    net.stop(2);
    let started = Instant::now();
    let mut taken = 0u64;
    loop {
        match submit(&net, taken).await {
            Ok(_) => taken += 1,
            Err(ledger::engine::SubmitError::Busy) => break,
            Err(error) => panic!("after {taken}: {error}"),
        }
        assert!(started.elapsed() < LIMIT, "never refused");
        if taken.is_multiple_of(500) {
            // The driver publishes what admission reads after each turn: wait for a
            // turn that saw every entry taken so far, so the refusal comes within
            // 500 however long the driver's thread waits for a core.
            while net.member(1).cluster.status().pending < taken as usize {
                assert!(started.elapsed() < LIMIT, "the driver never caught up");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    assert!((3_750..=4_000).contains(&taken), "refused after {taken}");

    net.start(0).await;
    net.start(2).await;
    let deadline = Instant::now() + LIMIT;
    loop {
        match submit(&net, 1_000_000).await {
            Ok(_) => break,
            Err(ledger::engine::SubmitError::Busy) => {}
            Err(error) => panic!("{error}"),
        }
        assert!(Instant::now() < deadline, "still refused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
