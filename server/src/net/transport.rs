//! Member connections: each node dials every other member and sends on that
//! connection only; it receives on the connections the others dial to it. One
//! direction per connection keeps reconnection simple (the dialer alone retries)
//! and lets each side close a misbehaving link without asking the other.
//!
//! Every peer has its own bounded send queue drained by its own task, so a slow or
//! dead peer fills only its own queue: sends to it fail fast with
//! [`SendError::QueueFull`] (the replica retransmits what matters) while the others
//! flow. A frame that is malformed or too large closes that one connection.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::frame::{read_frame, write_frame, FrameError};
use super::hello::{Hello, HelloError, MAX_HELLO_BYTES};
use super::requests::{self, Answer};
use super::tls::{certificate_key, configs, Roster, TlsError, SERVER_NAME};
use super::wire::Wire;
use crate::chain::{Member, Members};
use crate::consensus::MemberIndex;

/// How long a node waits between attempts to reach a peer that is down: the first
/// delay doubles per failure up to the longest. A peer that connects to this node
/// is dialed back at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The delay after the first failure.
    pub first: Duration,
    /// The longest delay.
    pub longest: Duration,
}

impl Backoff {
    /// What a node uses.
    pub const DEFAULT: Backoff = Backoff {
        first: Duration::from_millis(50),
        longest: Duration::from_secs(2),
    };

    /// Both delays at least 1 ms and the longest at least the first: a zero delay
    /// would redial a dead peer in a loop.
    fn at_least_a_millisecond(self) -> Backoff {
        let first = self.first.max(Duration::from_millis(1));
        Backoff {
            first,
            longest: self.longest.max(first),
        }
    }
}

/// The wait before accepting again after `accept` failed.
const ACCEPT_RETRY: Duration = Duration::from_millis(50);
/// A peer unreachable this long is reported.
const WARN_AFTER: Duration = Duration::from_secs(5);
/// TLS and hello must be done within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle sender sends an empty frame this often, so the receiver can tell a quiet
/// peer from a dead one.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// A receiver that hears nothing for this long drops the connection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames written per flush at most.
const MAX_BATCH: usize = 64;
/// Bytes of frames gathered before they are sealed and sent; a larger frame goes
/// straight through.
const WRITE_BUFFER: usize = 64 * 1024;
/// A write that cannot finish in this long means the peer stopped reading.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the transport runs.
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// This node's member key (its TLS identity).
    pub key: SigningKey,
    /// The current members, then the observers.
    pub roster: Roster,
    /// How many of the roster are members (the rest observe: they fetch committed
    /// blocks and hear no broadcast).
    pub members: usize,
    /// What this node says of itself to every peer.
    pub hello: Hello,
    /// Every other member and its peer address.
    pub peers: Vec<(MemberIndex, String)>,
    /// The largest frame accepted.
    pub frame_limit: usize,
    /// Frames waiting per peer before sends to it fail.
    pub queue_capacity: usize,
    /// Frames received and not yet taken before readers wait.
    pub inbound_capacity: usize,
    /// The waits between attempts to reach a peer that is down.
    pub backoff: Backoff,
}

/// A frame from a member.
#[derive(Debug)]
pub struct Inbound {
    /// The member, as authenticated by TLS.
    pub from: MemberIndex,
    /// The frame.
    pub frame: Vec<u8>,
}

/// Why a frame was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The peer's queue is full: it is slow, unreachable or down.
    #[error("send queue full")]
    QueueFull,
    /// Not a peer of this node.
    #[error("no such peer")]
    UnknownPeer,
}

/// What this node knows of one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerState {
    /// This node's connection to it is up.
    pub outbound: bool,
    /// Its connection to this node is up.
    pub inbound: bool,
    /// The plugin fingerprint its hello carried.
    pub plugins: Option<String>,
    /// Why the last attempt to connect or the last connection failed; cleared once
    /// both directions are up.
    pub last_error: Option<String>,
}

impl PeerState {
    /// Both directions are up.
    pub fn connected(&self) -> bool {
        self.outbound && self.inbound
    }

    fn inbound_up(&mut self) {
        self.inbound = true;
        self.forget_error_if_connected();
    }

    fn outbound_up(&mut self) {
        self.outbound = true;
        self.forget_error_if_connected();
    }

    /// An error from before the link came up in both directions says nothing now.
    fn forget_error_if_connected(&mut self) {
        if self.connected() {
            self.last_error = None;
        }
    }
}

#[derive(Debug)]
struct Shared {
    peers: Mutex<Vec<PeerState>>,
    /// Per member: the generation of its current inbound connection; an older one
    /// sees the change and closes (a reconnecting peer leaves no half-dead reader).
    inbound: Mutex<Vec<Arc<watch::Sender<u64>>>>,
    hello: RwLock<Hello>,
    roster: Roster,
    frame_limit: usize,
    /// Answers request connections once the node serves.
    answer: OnceLock<Arc<dyn Answer>>,
    /// Request connections served at once.
    request_slots: Semaphore,
    backoff: Backoff,
}

impl Shared {
    fn peers(&self) -> MutexGuard<'_, Vec<PeerState>> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn update(&self, member: MemberIndex, change: impl FnOnce(&mut PeerState)) {
        if let Some(state) = self.peers().get_mut(usize::from(member)) {
            change(state);
        }
    }

    fn generation(&self, member: MemberIndex) -> Option<Arc<watch::Sender<u64>>> {
        let inbound = self.inbound.lock().unwrap_or_else(PoisonError::into_inner);
        inbound.get(usize::from(member)).cloned()
    }

    /// The index of `key` on the roster now and its connection generation, read
    /// together (a reconfiguration between the handshake and here renumbers peers).
    fn admit(&self, key: &[u8; 32]) -> Option<(MemberIndex, Arc<watch::Sender<u64>>)> {
        let inbound = self.inbound.lock().unwrap_or_else(PoisonError::into_inner);
        let member = self.roster.index_of(key)?;
        let generation = inbound.get(usize::from(member)).cloned()?;
        Some((member, generation))
    }

    fn hello(&self) -> Hello {
        self.hello
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A peer's send queue.
type Queue = mpsc::Sender<Arc<[u8]>>;

/// The running transport; dropping it stops every connection.
#[derive(Debug)]
pub struct Transport {
    shared: Arc<Shared>,
    /// Per member of the membership in force, then per observer: its send queue (none
    /// for this node), and how many of them are members.
    queues: RwLock<(Vec<Option<Queue>>, usize)>,
    client: Arc<rustls::ClientConfig>,
    queue_capacity: usize,
    /// Where dial loops run: [`Transport::reconfigure`] may be called off the runtime.
    runtime: tokio::runtime::Handle,
    /// The dial loops of the membership in force; replacing them aborts the old.
    dials: Mutex<JoinSet<()>>,
    /// Held so that dropping the transport aborts the accept loop.
    _accept: JoinSet<()>,
}

/// Frames from a thread outside the runtime, queued for their peers in the order
/// given by one task on it ([`Transport::outbox`]). Such a thread, queueing a frame
/// for each peer itself, wakes each peer's writer in turn, and on a busy machine the
/// first writer it wakes can take its CPU before the frame is queued for the others
/// (a lone block's pre-prepare went out to its three peers over 0.28 ms); the task
/// costs one wake-up, and keeps each peer's frames in order.
#[derive(Debug)]
pub struct Outbox {
    queue: mpsc::Sender<Outgoing>,
}

#[derive(Debug)]
enum Outgoing {
    All(Arc<[u8]>),
    To(MemberIndex, Arc<[u8]>),
    Flush(tokio::sync::oneshot::Sender<()>),
}

impl Outbox {
    /// [`Transport::broadcast`], in order behind the frames given before; false
    /// if the outbox is full (the frame is dropped).
    pub fn broadcast(&self, frame: Arc<[u8]>) -> bool {
        self.queue.try_send(Outgoing::All(frame)).is_ok()
    }

    /// [`Transport::send`], in order behind the frames given before; false if the
    /// outbox is full (the frame is dropped).
    pub fn send(&self, to: MemberIndex, frame: Arc<[u8]>) -> bool {
        self.queue.try_send(Outgoing::To(to, frame)).is_ok()
    }

    /// Waits until every frame given before is in its peer's queue (or turned
    /// away): before the transport's membership changes under them.
    pub fn flush(&self) {
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.queue.blocking_send(Outgoing::Flush(done)).is_ok() {
            let _ = flushed.blocking_recv();
        }
    }
}

/// Why a connection was not established or ended.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A frame could not be read or written.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// The peer's hello was refused.
    #[error("{0}")]
    Hello(#[from] HelloError),
    /// The handshake or a read took too long.
    #[error("timed out")]
    Timeout,
    /// The peer's key is not a member's, or not the expected member's.
    #[error("the peer's key is not a member")]
    NotMember,
    /// The peer closed the connection.
    #[error("the peer closed the connection")]
    Closed,
    /// The peer sent a frame that has no place on this connection.
    #[error("{0}")]
    Malformed(String),
}

impl Transport {
    /// Starts accepting on `listener` and dialing every peer. Frames from members
    /// arrive on the returned receiver.
    pub fn start(
        listener: TcpListener,
        config: TransportConfig,
    ) -> Result<(Transport, mpsc::Receiver<Inbound>), TlsError> {
        let (server, client) = configs(&config.key, &config.roster)?;
        let members = config.roster.len();
        let shared = Arc::new(Shared {
            peers: Mutex::new(vec![PeerState::default(); members]),
            inbound: Mutex::new(generations(members)),
            hello: RwLock::new(config.hello.clone()),
            roster: config.roster.clone(),
            frame_limit: config.frame_limit,
            answer: OnceLock::new(),
            request_slots: Semaphore::new(requests::MAX_CONNECTIONS),
            backoff: config.backoff.at_least_a_millisecond(),
        });
        let (inbound_tx, inbound_rx) = mpsc::channel(config.inbound_capacity.max(1));
        let mut accept = JoinSet::new();
        accept.spawn(accept_loop(
            listener,
            TlsAcceptor::from(server),
            shared.clone(),
            inbound_tx,
        ));
        let transport = Transport {
            shared,
            queues: RwLock::new((Vec::new(), 0)),
            client,
            queue_capacity: config.queue_capacity.max(1),
            runtime: tokio::runtime::Handle::current(),
            dials: Mutex::new(JoinSet::new()),
            _accept: accept,
        };
        transport.dial(members, config.members, config.peers);
        Ok((transport, inbound_rx))
    }

    /// Dials `peers` of a roster of `known` keys of which `members` vote, replacing
    /// the dial loops (and send queues) of the one before.
    fn dial(&self, known: usize, members: usize, peers: Vec<(MemberIndex, String)>) {
        let mut queues = vec![None; known];
        let mut dials = JoinSet::new();
        for (member, addr) in peers {
            let (tx, rx) = mpsc::channel(self.queue_capacity);
            if let Some(queue) = queues.get_mut(usize::from(member)) {
                *queue = Some(tx);
            }
            dials.spawn_on(
                dial_loop(
                    member,
                    addr,
                    TlsConnector::from(self.client.clone()),
                    self.shared.clone(),
                    rx,
                ),
                &self.runtime,
            );
        }
        *self.queues.write().unwrap_or_else(PoisonError::into_inner) = (queues, members);
        // Dropping the old set aborts its loops, and their connections with them.
        let old = std::mem::replace(
            &mut *self.dials.lock().unwrap_or_else(PoisonError::into_inner),
            dials,
        );
        drop(old);
    }

    /// Moves to a new membership (a membership change came into force): this node
    /// is member `me` of `members`, `observers` are numbered after them, and it dials
    /// `peers`. Every connection of the membership before closes (their indices no
    /// longer hold); the peers connect again under the new roster within a
    /// reconnection delay.
    pub fn reconfigure(
        &self,
        members: &Members,
        observers: &[Member],
        me: MemberIndex,
        peers: Vec<(MemberIndex, String)>,
    ) {
        self.shared
            .hello
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .member = me;
        let n = members.len() + observers.len();
        *self.shared.peers() = vec![PeerState::default(); n];
        // Roster and connection generations change together: a connection looks
        // its index up under the same lock (`Shared::admit`).
        let old = {
            let mut inbound = self
                .shared
                .inbound
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.roster.set(members, observers);
            std::mem::replace(&mut *inbound, generations(n))
        };
        for generation in old {
            generation.send_modify(|g| *g += 1);
        }
        self.dial(n, members.len(), peers);
    }

    /// Queues `frame` for `to` without waiting.
    pub fn send(&self, to: MemberIndex, frame: Arc<[u8]>) -> Result<(), SendError> {
        let queues = self.queues.read().unwrap_or_else(PoisonError::into_inner);
        let queue = queues
            .0
            .get(usize::from(to))
            .and_then(Option::as_ref)
            .ok_or(SendError::UnknownPeer)?;
        queue.try_send(frame).map_err(|_| SendError::QueueFull)
    }

    /// Queues `frame` for every other member (observers hear no broadcast); returns
    /// those whose queue was full.
    pub fn broadcast(&self, frame: Arc<[u8]>) -> Vec<MemberIndex> {
        let mut full = Vec::new();
        let queues = self.queues.read().unwrap_or_else(PoisonError::into_inner);
        let (queues, members) = &*queues;
        for (member, queue) in queues.iter().take(*members).enumerate() {
            if let Some(queue) = queue {
                if queue.try_send(frame.clone()).is_err() {
                    full.push(member as MemberIndex);
                }
            }
        }
        full
    }

    /// An [`Outbox`] for a thread outside the runtime, holding at most `capacity`
    /// frames not yet queued for their peers (a full outbox tells its caller);
    /// `refused` hears how many a peer's full queue or an unknown peer turned away.
    pub fn outbox(
        self: &Arc<Self>,
        capacity: usize,
        refused: impl Fn(u64) + Send + 'static,
    ) -> Outbox {
        let (queue, mut outgoing) = mpsc::channel(capacity.max(1));
        let transport = Arc::clone(self);
        self.runtime.spawn(async move {
            // Ends when the outbox is dropped.
            while let Some(next) = outgoing.recv().await {
                let turned_away = match next {
                    Outgoing::All(frame) => transport.broadcast(frame).len(),
                    Outgoing::To(to, frame) => usize::from(transport.send(to, frame).is_err()),
                    Outgoing::Flush(done) => {
                        let _ = done.send(());
                        0
                    }
                };
                if turned_away > 0 {
                    refused(turned_away as u64);
                }
            }
        });
        Outbox { queue }
    }

    /// Closes `member`'s inbound connection because of what it sent (frames that do
    /// not decode): the connection only, as a member may reconnect.
    pub fn cut_off(&self, member: MemberIndex, reason: &str) {
        let Some(generation) = self.shared.generation(member) else {
            return;
        };
        tracing::warn!(peer = member, reason, "cut off a peer's connection");
        generation.send_modify(|g| *g += 1);
        self.shared.update(member, |s| {
            s.inbound = false;
            s.last_error = Some(format!("cut off: {reason}"));
        });
    }

    /// Answers members' request connections with `answer` from now on; until then
    /// they are told to come back. Only the first call counts.
    pub fn answer_with(&self, answer: Arc<dyn Answer>) {
        let _ = self.shared.answer.set(answer);
    }

    /// Each member's connection state, by member index, then each observer's (this
    /// node's own is empty).
    pub fn peers(&self) -> Vec<PeerState> {
        self.shared.peers().clone()
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Inbound>,
) {
    let mut readers = JoinSet::new();
    loop {
        let (stream, addr) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, most likely: wait rather than spin.
                tracing::warn!(%error, "accepting a peer connection failed");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        // Reap finished readers so the set stays small.
        while readers.try_join_next().is_some() {}
        let (acceptor, shared, inbound) = (acceptor.clone(), shared.clone(), inbound.clone());
        readers.spawn(async move {
            match serve(stream, acceptor, shared, inbound).await {
                // A member on another chain or genesis: an operator's mistake to fix.
                Err(LinkError::Hello(error)) => {
                    tracing::warn!(peer = %addr, %error, "refused a member's connection")
                }
                Err(error) => {
                    tracing::debug!(peer = %addr, %error, "inbound peer connection closed")
                }
                Ok(()) => {}
            }
        });
    }
}

/// One inbound connection: TLS, hellos, then frames until it fails or the peer
/// connects again.
async fn serve(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    inbound: mpsc::Sender<Inbound>,
) -> Result<(), LinkError> {
    stream.set_nodelay(true)?;
    let handshake = async {
        let mut tls = acceptor.accept(stream).await?;
        let key = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(certificate_key);
        let key = key.ok_or(LinkError::NotMember)?;
        let member = shared.roster.index_of(&key).ok_or(LinkError::NotMember)?;
        let theirs = exchange_hellos(&mut tls, &shared.hello()).await;
        let theirs = match theirs {
            Ok(theirs) => theirs,
            Err(error) => {
                shared.update(member, |s| s.last_error = Some(error.to_string()));
                return Err(error);
            }
        };
        Ok::<_, LinkError>((tls, key, member, theirs))
    };
    let (mut tls, key, from, theirs) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| LinkError::Timeout)??;
    if tls.get_ref().1.alpn_protocol() == Some(requests::ALPN) {
        let Ok(_slot) = shared.request_slots.try_acquire() else {
            let busy = Wire::unavailable(true, "too many members are fetching from this node");
            write_frame(&mut tls, &busy.encode()).await?;
            tls.flush().await?;
            return Ok(());
        };
        return requests::serve(&mut tls, from, &shared.answer).await;
    }
    let Some((from, generation)) = shared.admit(&key) else {
        return Err(LinkError::NotMember);
    };
    let mut mine = 0;
    generation.send_modify(|g| {
        *g += 1;
        mine = *g;
    });
    let mut newer = generation.subscribe();
    report_plugins(&shared, from, &theirs);
    shared.update(from, PeerState::inbound_up);
    let result = async {
        loop {
            let read = tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut tls, shared.frame_limit));
            let frame = tokio::select! {
                read = read => read.map_err(|_| LinkError::Timeout)??,
                _ = newer.wait_for(|g| *g != mine) => return Ok(()),
            };
            match frame {
                None => return Err(LinkError::Closed),
                Some(frame) if frame.is_empty() => {} // heartbeat
                Some(frame) => {
                    if inbound.send(Inbound { from, frame }).await.is_err() {
                        return Ok(()); // the node is shutting down
                    }
                }
            }
        }
    }
    .await;
    if *generation.borrow() == mine {
        shared.update(from, |s| {
            s.inbound = false;
            if let Err(error) = &result {
                s.last_error = Some(error.to_string());
            }
        });
    }
    match &result {
        // A peer that stops or crashes ends its stream without TLS close_notify;
        // that is an outage (reported once it lasts), not a misbehaving peer.
        Err(LinkError::Frame(error)) if error.is_disconnect() => {
            tracing::info!(peer = from, %error, "peer connection lost");
        }
        Err(LinkError::Frame(error)) => {
            tracing::warn!(peer = from, %error, "peer sent a bad frame; connection closed");
        }
        _ => {}
    }
    result
}

/// Keeps one outbound connection to `member` up and drains its queue into it.
async fn dial_loop(
    member: MemberIndex,
    addr: String,
    connector: TlsConnector,
    shared: Arc<Shared>,
    mut queue: mpsc::Receiver<Arc<[u8]>>,
) {
    let mut backoff = shared.backoff.first;
    let mut failing_since: Option<Instant> = None;
    let mut warned = false;
    loop {
        let dialed_in = dialed_in(shared.generation(member).map(|g| g.subscribe()));
        let hello = shared.hello();
        let dialing = dial(member, &addr, &connector, &shared.roster, &hello, None);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, dialing)
            .await
            .unwrap_or(Err(LinkError::Timeout))
        {
            Ok((mut tls, theirs)) => {
                backoff = shared.backoff.first;
                failing_since = None;
                warned = false;
                report_plugins(&shared, member, &theirs);
                shared.update(member, PeerState::outbound_up);
                tracing::info!(peer = member, %addr, "connected to peer");
                let result = pump(&mut tls, &mut queue).await;
                shared.update(member, |s| {
                    s.outbound = false;
                    if let Err(error) = &result {
                        s.last_error = Some(error.to_string());
                    }
                });
                match result {
                    Ok(()) => return, // the transport was dropped
                    Err(error) => tracing::info!(peer = member, %error, "peer connection lost"),
                }
            }
            Err(error) => {
                // Peers starting together refuse each other for a moment; an outage
                // that lasts is worth one warning, not one per retry.
                let since = *failing_since.get_or_insert_with(Instant::now);
                if !warned && since.elapsed() >= WARN_AFTER {
                    tracing::warn!(peer = member, %addr, %error, "cannot connect to peer");
                    warned = true;
                } else {
                    tracing::debug!(peer = member, %addr, %error, "cannot connect to peer yet");
                }
                shared.update(member, |s| s.last_error = Some(error.to_string()));
            }
        }
        // A peer back from an outage dials in first: what this node sends it (the
        // answers to its catch-up requests among them) must not wait out a backoff
        // that grew while it was away.
        tokio::select! {
            () = tokio::time::sleep(backoff) => {
                backoff = (backoff * 2).min(shared.backoff.longest);
            }
            () = dialed_in => backoff = shared.backoff.first,
        }
    }
}

/// Resolves once `member` has connected to this node since `connections` was taken
/// (its inbound generation moved); never when there is no such member any more.
async fn dialed_in(connections: Option<watch::Receiver<u64>>) {
    if let Some(mut connections) = connections {
        if connections.changed().await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// Connects to `member` at `addr`, checks it is that member (and, with `alpn`, that
/// it speaks that application protocol), and exchanges hellos.
pub(super) async fn dial(
    member: MemberIndex,
    addr: &str,
    connector: &TlsConnector,
    roster: &Roster,
    hello: &Hello,
    alpn: Option<&[u8]>,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Hello), LinkError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let name =
        rustls::pki_types::ServerName::try_from(SERVER_NAME).map_err(|_| LinkError::NotMember)?;
    let mut tls = connector.connect(name, stream).await?;
    let key = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(certificate_key);
    // The verifier admitted a member; it must be the one this address should be.
    if key.and_then(|key| roster.index_of(&key)) != Some(member) {
        return Err(LinkError::NotMember);
    }
    // Checked before the hello: an older build would take this connection for a
    // consensus link and drop this member's real one.
    if alpn.is_some() && tls.get_ref().1.alpn_protocol() != alpn {
        return Err(LinkError::Malformed(
            "the member's ledgerd predates request connections".into(),
        ));
    }
    let theirs = exchange_hellos(&mut tls, hello).await?;
    Ok((tls, theirs))
}

/// Both sides send their hello at once, then read the other's.
async fn exchange_hellos<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    ours: &Hello,
) -> Result<Hello, LinkError> {
    write_frame(stream, &ours.encode()).await?;
    stream.flush().await?;
    let frame = read_frame(stream, MAX_HELLO_BYTES)
        .await?
        .ok_or(LinkError::Closed)?;
    let theirs = Hello::decode(&frame)?;
    ours.admit(&theirs)?;
    Ok(theirs)
}

fn generations(members: usize) -> Vec<Arc<watch::Sender<u64>>> {
    (0..members)
        .map(|_| Arc::new(watch::channel(0).0))
        .collect()
}

fn report_plugins(shared: &Shared, member: MemberIndex, theirs: &Hello) {
    let ours = shared.hello().plugins;
    if theirs.plugins != ours {
        tracing::error!(
            peer = member,
            theirs = %theirs.plugins,
            %ours,
            "peer runs other plugins: blocks they judge differently will not commit"
        );
    }
    shared.update(member, |s| s.plugins = Some(theirs.plugins.clone()));
}

/// Writes queued frames, a batch per flush, and a heartbeat when idle. `Ok` when
/// the queue is closed (the transport was dropped).
async fn pump<S: AsyncWrite + Unpin>(
    stream: &mut S,
    queue: &mut mpsc::Receiver<Arc<[u8]>>,
) -> Result<(), LinkError> {
    // A TLS stream seals and sends every write it is given: unbuffered, a frame
    // costs two records and two system calls (its length, then its bytes), and a
    // batch twice its frames. Buffered, a batch is sealed and sent at its flush.
    let stream = &mut BufWriter::with_capacity(WRITE_BUFFER, stream);
    loop {
        let first = match tokio::time::timeout(HEARTBEAT, queue.recv()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(_) => Arc::from(Vec::new()),
        };
        let write = async {
            write_frame(stream, &first).await?;
            for _ in 1..MAX_BATCH {
                let Ok(frame) = queue.try_recv() else { break };
                write_frame(stream, &frame).await?;
            }
            stream.flush().await?;
            Ok::<_, LinkError>(())
        };
        tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| LinkError::Timeout)??;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_backoff_becomes_a_millisecond_and_the_longest_never_undercuts_the_first() {
        let ms = Duration::from_millis;
        let zero = Backoff {
            first: ms(0),
            longest: ms(0),
        };
        let raised = Backoff {
            first: ms(1),
            longest: ms(1),
        };
        assert_eq!(zero.at_least_a_millisecond(), raised);
        let inverted = Backoff {
            first: ms(500),
            longest: ms(100),
        };
        assert_eq!(inverted.at_least_a_millisecond().longest, ms(500));
        assert_eq!(Backoff::DEFAULT.at_least_a_millisecond(), Backoff::DEFAULT);
    }
}
