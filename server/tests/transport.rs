//! The member transport over real sockets on 127.0.0.1: mutual TLS keyed by member
//! keys, the hello, frames, reconnection and per-peer queues. Every wait is bounded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use ledger::chain::{ChainSpec, Hash};
use ledger::consensus::MemberIndex;
use ledger::net::{
    configs, read_frame, write_frame, Backoff, Hello, Inbound, Roster, SendError, Transport,
    TransportConfig, MAX_HELLO_BYTES, PROTOCOL_VERSION, SERVER_NAME,
};
use ledger::testing;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const LIMIT: Duration = Duration::from_secs(15);
const FRAME_LIMIT: usize = 1 << 20;

struct Cluster {
    keys: Vec<SigningKey>,
    spec: ChainSpec,
    addrs: Vec<String>,
    listeners: Vec<Option<TcpListener>>,
}

impl Cluster {
    async fn new(n: u8) -> Cluster {
        let keys: Vec<SigningKey> = (1..=n).map(testing::key).collect();
        let spec = testing::spec(&keys, 2);
        let mut addrs = Vec::new();
        let mut listeners = Vec::new();
        for _ in 0..n {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addrs.push(listener.local_addr().expect("addr").to_string());
            listeners.push(Some(listener));
        }
        Cluster {
            keys,
            spec,
            addrs,
            listeners,
        }
    }

    fn hello(&self, member: usize) -> Hello {
        Hello {
            protocol: PROTOCOL_VERSION,
            chain_id: self.spec.chain_id.clone(),
            genesis_hash: self.spec.genesis_block().hash(),
            member: member as MemberIndex,
            plugins: String::new(),
        }
    }

    fn config(&self, member: usize) -> TransportConfig {
        TransportConfig {
            key: self.keys[member].clone(),
            roster: Roster::new(&self.spec.members, &[]),
            members: self.spec.members.len(),
            hello: self.hello(member),
            peers: (0..self.keys.len())
                .filter(|m| *m != member)
                .map(|m| (m as MemberIndex, self.addrs[m].clone()))
                .collect(),
            frame_limit: FRAME_LIMIT,
            queue_capacity: 64,
            inbound_capacity: 1024,
            backoff: Backoff::DEFAULT,
        }
    }

    fn start(&mut self, member: usize) -> (Transport, mpsc::Receiver<Inbound>) {
        self.start_with(member, self.config(member))
    }

    fn start_with(
        &mut self,
        member: usize,
        config: TransportConfig,
    ) -> (Transport, mpsc::Receiver<Inbound>) {
        let listener = self.listeners[member].take().expect("listener");
        Transport::start(listener, config).expect("transport")
    }
}

/// The next frame whose sender is `from`, skipping others, within the limit.
async fn receive_from(inbound: &mut mpsc::Receiver<Inbound>, from: MemberIndex) -> Vec<u8> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, inbound.recv())
            .await
            .unwrap_or_else(|_| panic!("no frame from member {from} in time"))
            .expect("transport running");
        if frame.from == from {
            return frame.frame;
        }
    }
}

/// Nothing from `from` arrives within `wait`.
async fn nothing_from(inbound: &mut mpsc::Receiver<Inbound>, from: MemberIndex, wait: Duration) {
    let deadline = Instant::now() + wait;
    while let Ok(Some(frame)) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        inbound.recv(),
    )
    .await
    {
        assert_ne!(frame.from, from, "a frame from member {from} got through");
    }
}

/// Sends `frame` to `to` until it is queued (the queue may be full while the link
/// comes up).
async fn send(transport: &Transport, to: MemberIndex, frame: &[u8]) {
    let deadline = Instant::now() + LIMIT;
    while transport.send(to, Arc::from(frame)).is_err() {
        assert!(Instant::now() < deadline, "queue to {to} stayed full");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_connect_and_exchange_frames() {
    let mut cluster = Cluster::new(4).await;
    let mut nodes: Vec<_> = (0..4).map(|m| cluster.start(m)).collect();
    for (member, (transport, _)) in nodes.iter().enumerate() {
        let frame: Arc<[u8]> = Arc::from(format!("hello from {member}").into_bytes());
        assert!(transport.broadcast(frame).is_empty());
    }
    for (member, (transport, inbound)) in nodes.iter_mut().enumerate() {
        let mut heard = std::collections::BTreeMap::new();
        while heard.len() < 3 {
            let frame = tokio::time::timeout(LIMIT, inbound.recv())
                .await
                .expect("frames in time")
                .expect("transport running");
            heard.insert(frame.from, frame.frame);
        }
        for (from, frame) in heard {
            assert_eq!(frame, format!("hello from {from}").into_bytes());
        }
        until("every peer connected both ways", || {
            let peers = transport.peers();
            (0..4)
                .filter(|m| *m != member)
                .all(|m| peers[m].connected() && peers[m].plugins.as_deref() == Some(""))
        })
        .await;
        assert_eq!(
            transport.send(member as MemberIndex, Arc::from(&b"x"[..])),
            Err(SendError::UnknownPeer)
        );
    }
}

/// Frames given to an outbox from a thread outside the runtime reach every peer in
/// the order given, a flush returns once they are queued, and what the queue of a
/// peer that never came up turns away is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbox_keeps_the_order_given_and_reports_full_queues() {
    let mut cluster = Cluster::new(4).await;
    let zero = Arc::new(cluster.start(0).0);
    let mut peers: Vec<_> = (1..3).map(|member| cluster.start(member)).collect();
    until("member 0 connected to members 1 and 2", || {
        zero.peers()[1..3].iter().all(|peer| peer.outbound)
    })
    .await;
    let (refused, mut reports) = mpsc::unbounded_channel();
    let outbox = Arc::new(zero.outbox(1024, move |n| {
        let _ = refused.send(n);
    }));
    // Rounds the live peers take in before the next, so only member 3's queue
    // fills; in each, broadcasts and sends to member 1 alternate.
    let (capacity, round) = (cluster.config(0).queue_capacity, 8);
    // Half the frames are broadcasts: twice the capacity overfills member 3's queue.
    let rounds = 2 * capacity / round + 4;
    for first in (0..rounds * round).step_by(round) {
        let giver = Arc::clone(&outbox);
        std::thread::spawn(move || {
            for n in first..first + round {
                let frame = Arc::from(n.to_be_bytes().to_vec());
                assert!(if n % 2 == 0 {
                    giver.broadcast(frame)
                } else {
                    giver.send(1, frame)
                });
            }
            giver.flush();
        })
        .join()
        .expect("the giving thread");
        for (member, (_, inbound)) in peers.iter_mut().enumerate() {
            let expected: Vec<_> = (first..first + round)
                .filter(|n| member == 0 || n % 2 == 0)
                .map(|n| n.to_be_bytes().to_vec())
                .collect();
            let mut heard = Vec::new();
            while heard.len() < expected.len() {
                heard.push(receive_from(inbound, 0).await);
            }
            assert_eq!(heard, expected, "member {}", member + 1);
        }
    }
    // Member 3 took the first `capacity` broadcasts into its queue, which no
    // connection drains, and turned away the rest, a report each.
    let broadcasts = rounds * round / 2;
    for _ in capacity..broadcasts {
        let turned_away = tokio::time::timeout(LIMIT, reports.recv())
            .await
            .expect("a report for every frame member 3 had no room for")
            .expect("a report");
        assert_eq!(turned_away, 1);
    }
    assert!(reports.try_recv().is_err(), "nothing else turned away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_a_member_cannot_connect() {
    let mut cluster = Cluster::new(4).await;
    let (_zero, mut inbound) = cluster.start(0);
    // An outsider claims to be member 3, holding a key outside the membership; it
    // trusts the members, so only their side refuses.
    let outsider = testing::key(99);
    let mut members = cluster.keys.clone();
    members[3] = outsider.clone();
    let mut config = cluster.config(3);
    config.key = outsider;
    config.roster = Roster::new(&testing::spec(&members, 2).members, &[]);
    let (impostor, _) = cluster.start_with(3, config);
    send(&impostor, 0, b"let me in").await;
    nothing_from(&mut inbound, 3, Duration::from_secs(1)).await;
    let peers = impostor.peers();
    assert!(!peers[0].outbound);
    assert!(peers[0].last_error.is_some(), "{peers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_of_another_genesis_is_refused_by_the_hello() {
    let mut cluster = Cluster::new(4).await;
    let (zero, mut inbound) = cluster.start(0);
    let mut config = cluster.config(1);
    config.hello.genesis_hash = Hash([1; 32]);
    let (stranger, _) = cluster.start_with(1, config);
    send(&stranger, 0, b"same keys, other chain").await;
    nothing_from(&mut inbound, 1, Duration::from_secs(1)).await;
    until("the refusal is recorded", || {
        zero.peers()[1]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("genesis"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_that_connection() {
    let mut cluster = Cluster::new(4).await;
    let (_zero, mut inbound) = cluster.start(0);
    let (one, _in_one) = cluster.start(1);
    let zero_addr = cluster.addrs[0].clone();

    // Plain bytes where TLS belongs.
    let mut plain = TcpStream::connect(&zero_addr).await.expect("connect");
    plain
        .write_all(b"GET / HTTP/1.1\r\n\r\n")
        .await
        .expect("write");

    // Member 2's real key, a correct hello, then a frame announcing 4 GiB.
    let key = cluster.keys[2].clone();
    let (_, client) = configs(&key, &Roster::new(&cluster.spec.members, &[])).expect("tls");
    let stream = TcpStream::connect(&zero_addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(SERVER_NAME).expect("name");
    let mut tls = TlsConnector::from(client)
        .connect(name, stream)
        .await
        .expect("tls handshake");
    write_frame(&mut tls, &cluster.hello(2).encode())
        .await
        .expect("hello");
    tls.flush().await.expect("flush");
    let theirs = read_frame(&mut tls, MAX_HELLO_BYTES)
        .await
        .expect("hello back");
    assert!(theirs.is_some());
    write_frame(&mut tls, b"a fine frame").await.expect("frame");
    tls.write_all(&u32::MAX.to_be_bytes())
        .await
        .expect("prefix");
    tls.flush().await.expect("flush");
    assert_eq!(receive_from(&mut inbound, 2).await, b"a fine frame");
    // Member 0 hangs up on it.
    let closed = tokio::time::timeout(LIMIT, read_frame(&mut tls, 16)).await;
    assert!(matches!(closed, Ok(Ok(None)) | Ok(Err(_))), "{closed:?}");

    // Member 1 is not disturbed.
    send(&one, 0, b"still here").await;
    assert_eq!(receive_from(&mut inbound, 1).await, b"still here");
}

/// A member whose frames do not decode is cut off by the node above the transport:
/// its connection closes, the state says why, and it may connect again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_peer_loses_its_connection_and_may_return() {
    let mut cluster = Cluster::new(4).await;
    let (zero, mut inbound) = cluster.start(0);
    let (one, _in_one) = cluster.start(1);
    send(&one, 0, b"before").await;
    assert_eq!(receive_from(&mut inbound, 1).await, b"before");

    zero.cut_off(1, "test");
    let state = &zero.peers()[1];
    assert!(!state.inbound, "{state:?}");
    assert_eq!(state.last_error.as_deref(), Some("cut off: test"));

    // Frames queued into the closed connection are lost until member 1 notices
    // and redials; it keeps trying.
    let deadline = Instant::now() + LIMIT;
    loop {
        send(&one, 0, b"after").await;
        let got = tokio::time::timeout(Duration::from_millis(200), inbound.recv()).await;
        if matches!(got, Ok(Some(Inbound { from: 1, ref frame })) if frame == b"after") {
            break;
        }
        assert!(Instant::now() < deadline, "member 1 never came back");
    }
    until("member 1's inbound link is up again", || {
        zero.peers()[1].inbound
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_reconnected() {
    let mut cluster = Cluster::new(4).await;
    let (zero, _in_zero) = cluster.start(0);
    let (one, mut in_one) = cluster.start(1);
    send(&zero, 1, b"first").await;
    assert_eq!(receive_from(&mut in_one, 0).await, b"first");

    drop((one, in_one));
    until("member 0 sees member 1 gone", || !zero.peers()[1].outbound).await;
    let listener = TcpListener::bind(&cluster.addrs[1]).await.expect("rebind");
    cluster.listeners[1] = Some(listener);
    let (_one, mut in_one) = cluster.start(1);
    // Frames sent before the link is back may be lost; keep sending until one lands.
    let deadline = Instant::now() + LIMIT;
    loop {
        let _ = zero.send(1, Arc::from(&b"again"[..]));
        match tokio::time::timeout(Duration::from_millis(200), in_one.recv()).await {
            Ok(Some(frame)) if frame.from == 0 => {
                assert_eq!(frame.frame, b"again");
                break;
            }
            _ => assert!(
                Instant::now() < deadline,
                "member 1 never heard member 0 again"
            ),
        }
    }
}

/// A member back from an outage dials in, and is dialed back at once rather than
/// after the others' reconnection delay, which grew while it was away: here that
/// delay is a minute from the first failure, far beyond the test's limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_dials_in_is_dialed_back_at_once() {
    let mut cluster = Cluster::new(2).await;
    let minute = Duration::from_secs(60);
    let patient = TransportConfig {
        backoff: Backoff {
            first: minute,
            longest: minute,
        },
        ..cluster.config(0)
    };
    let (zero, _in_zero) = cluster.start_with(0, patient);
    until("member 0 fails to reach member 1", || {
        zero.peers()[1].last_error.is_some()
    })
    .await;
    let (_one, mut in_one) = cluster.start(1);
    until("member 1 dials in", || zero.peers()[1].inbound).await;
    until("member 0 dials member 1 back", || zero.peers()[1].outbound).await;
    send(&zero, 1, b"back").await;
    assert_eq!(receive_from(&mut in_one, 0).await, b"back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_stalls_only_itself() {
    let mut cluster = Cluster::new(4).await;
    // Member 2 is a fake that completes TLS and the hello, then never reads. It takes
    // every connection: members 0 and 1 both dial it, in either order.
    let listener = cluster.listeners[2].take().expect("listener");
    let (server, _) =
        configs(&cluster.keys[2], &Roster::new(&cluster.spec.members, &[])).expect("tls");
    let hello = cluster.hello(2);
    let stuck = tokio::spawn(async move {
        let mut held = tokio::task::JoinSet::new();
        loop {
            let (stream, _) = listener.accept().await.expect("accept");
            let (server, hello) = (server.clone(), hello.clone());
            held.spawn(async move {
                let mut tls = TlsAcceptor::from(server).accept(stream).await.expect("tls");
                write_frame(&mut tls, &hello.encode()).await.expect("hello");
                tls.flush().await.expect("flush");
                read_frame(&mut tls, MAX_HELLO_BYTES)
                    .await
                    .expect("hello back");
                tokio::time::sleep(LIMIT * 2).await;
            });
        }
    });
    let (zero, _in_zero) = cluster.start(0);
    let (_one, mut in_one) = cluster.start(1);
    until("member 0 connected to the fake", || {
        zero.peers()[2].outbound
    })
    .await;

    let big: Arc<[u8]> = Arc::from(vec![7u8; 256 * 1024]);
    let mut full = false;
    for _ in 0..10_000 {
        if zero.send(2, big.clone()) == Err(SendError::QueueFull) {
            full = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(full, "the stuck peer's queue never filled");
    for i in 0..100u32 {
        send(&zero, 1, &i.to_be_bytes()).await;
        assert_eq!(receive_from(&mut in_one, 0).await, i.to_be_bytes());
    }
    stuck.abort();
}

/// A member of an older build knows no request connections: its TLS names no
/// application protocol, and a member asking it is told so at once instead of
/// waiting out its timeout on a link that takes the request for consensus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_member_without_request_connections_fails_at_once() {
    let mut cluster = Cluster::new(4).await;
    let listener = cluster.listeners[0].take().expect("listener");
    let (server, _) =
        configs(&cluster.keys[0], &Roster::new(&cluster.spec.members, &[])).expect("tls");
    let mut older = Arc::unwrap_or_clone(server);
    older.alpn_protocols.clear();
    let hello = cluster.hello(0);
    let old_member = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut tls = TlsAcceptor::from(Arc::new(older))
            .accept(stream)
            .await
            .expect("tls");
        // The asker leaves before the hellos: what follows may fail.
        let _ = write_frame(&mut tls, &hello.encode()).await;
        let _ = tls.flush().await;
        let _ = read_frame(&mut tls, MAX_HELLO_BYTES).await;
        tokio::time::sleep(LIMIT).await;
    });
    let requester = ledger::net::Requester::new(
        &cluster.keys[3],
        Roster::new(&cluster.spec.members, &[]),
        cluster.hello(3),
        LIMIT,
    )
    .expect("requester");
    let addr = cluster.addrs[0].clone();
    let started = Instant::now();
    let asked = tokio::task::spawn_blocking(move || {
        let request = ledger::net::Wire::FetchSnapshot { height: 0 };
        requester.request(0, &addr, &request, 1 << 20)
    })
    .await
    .expect("join");
    let error = asked
        .expect_err("no answer from an older build")
        .to_string();
    assert!(error.contains("predates request connections"), "{error}");
    assert!(started.elapsed() < LIMIT, "it did not wait out its timeout");
    old_member.abort();
}

/// A membership change: members 1 to 3 move to a roster without member 0, which
/// they keep as an observer, numbered after them. Each is known by its key under
/// its new index; broadcasts reach the new members only; the observer's frames
/// still arrive, under its observer index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconfigured_transport_renumbers_members_and_hears_an_observer() {
    let mut cluster = Cluster::new(4).await;
    let mut nodes: Vec<_> = (0..4).map(|m| cluster.start(m)).collect();
    until("every link up", || {
        nodes
            .iter()
            .all(|(t, _)| t.peers().iter().filter(|p| p.connected()).count() == 3)
    })
    .await;
    let all = cluster.spec.members.as_slice();
    let members = ledger::chain::Members::new(all[1..].to_vec()).expect("members");
    let observer = all[0].clone();
    // Old member m is new member m - 1; the observer (old 0) is number 3.
    let renumbered = |old: usize| if old == 0 { 3 } else { old - 1 };
    for (old, (transport, _)) in nodes.iter().enumerate().skip(1) {
        let peers = (0..4)
            .filter(|other| *other != old)
            .map(|other| {
                (
                    renumbered(other) as MemberIndex,
                    cluster.addrs[other].clone(),
                )
            })
            .collect();
        transport.reconfigure(
            &members,
            std::slice::from_ref(&observer),
            renumbered(old) as MemberIndex,
            peers,
        );
    }
    until("the new members linked", || {
        nodes[1..]
            .iter()
            .all(|(t, _)| t.peers().iter().take(3).filter(|p| p.connected()).count() == 2)
    })
    .await;

    // A broadcast of new member 0 (old 1) reaches new members 1 and 2, not the
    // observer.
    let deadline = Instant::now() + LIMIT;
    while !nodes[1]
        .0
        .broadcast(Arc::from(b"epoch one".to_vec()))
        .is_empty()
    {
        assert!(Instant::now() < deadline, "queues stayed full");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for old in [2, 3] {
        assert_eq!(receive_from(&mut nodes[old].1, 0).await, b"epoch one");
    }
    nothing_from(&mut nodes[0].1, 1, Duration::from_millis(500)).await;

    // The observer, still on the old roster, sends to old member 1, which hears it
    // under the observer's number (sent again until it does: its link was closed by
    // the change and comes back).
    let deadline = Instant::now() + LIMIT;
    loop {
        let _ = nodes[0].0.send(1, Arc::from(b"from the observer".to_vec()));
        let wait = tokio::time::timeout(Duration::from_millis(300), nodes[1].1.recv()).await;
        if let Ok(Some(frame)) = wait {
            if frame.from == 3 {
                assert_eq!(frame.frame, b"from the observer");
                break;
            }
        }
        assert!(Instant::now() < deadline, "the observer was never heard");
    }
}
