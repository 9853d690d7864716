//! Requests one member answers another on a connection of their own: the snapshot
//! manifest, its chunks and committed blocks that a member fetches when it joins
//! (its disk lost) or fills in the history below its snapshot. A joining member has
//! no consensus links yet, so it dials, asks and reads each answer on the same
//! connection, told apart from a consensus link by its TLS application protocol
//! ([`ALPN`]); TLS and the hello are the same, so only members of the same chain are
//! answered.
//!
//! These connections share no queue with consensus frames (a chunk on its way cannot
//! hold up a PREPARE), at most [`MAX_CONNECTIONS`] are served at once, and the reads
//! behind the answers take the node's snapshot transfer slots.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::frame::{read_frame, write_frame};
use super::hello::Hello;
use super::tls::{configs, Roster};
use super::transport::{dial, LinkError};
use super::wire::Wire;
use crate::chain::ChainError;
use crate::consensus::MemberIndex;

/// The TLS application protocol of a request connection; a consensus link names
/// none.
pub const ALPN: &[u8] = b"ledger-requests/1";

/// Request connections a node serves at once; more are answered busy and closed.
pub const MAX_CONNECTIONS: usize = 16;

/// The largest request frame: a tag and two numbers.
const MAX_REQUEST_BYTES: usize = 64;

/// A request connection idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What answers requests: the node, once it serves.
pub trait Answer: Send + Sync + std::fmt::Debug {
    /// The answer to `request` from member `from`.
    fn answer(
        &self,
        from: MemberIndex,
        request: Wire,
    ) -> Pin<Box<dyn Future<Output = Wire> + Send + '_>>;
}

/// Answers `from`'s requests on `stream` one after another until it closes, idles or
/// sends something that is not a request.
pub(super) async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    from: MemberIndex,
    answer: &OnceLock<Arc<dyn Answer>>,
) -> Result<(), LinkError> {
    loop {
        let frame = tokio::time::timeout(IDLE_TIMEOUT, read_frame(stream, MAX_REQUEST_BYTES))
            .await
            .map_err(|_| LinkError::Timeout)??;
        let Some(frame) = frame else {
            return Ok(());
        };
        let request =
            Wire::decode(&frame).map_err(|error| LinkError::Malformed(error.to_string()))?;
        if !matches!(
            request,
            Wire::FetchSnapshot { .. }
                | Wire::FetchChunk { .. }
                | Wire::FetchCommittedAt { .. }
                | Wire::FetchPrepared
        ) {
            return Err(LinkError::Malformed(format!(
                "a {} frame is not a request",
                request.kind()
            )));
        }
        let reply = match answer.get() {
            Some(answer) => answer.answer(from, request).await,
            None => Wire::unavailable(true, "this node is still starting"),
        };
        // An asker that stops reading holds a slot no longer than an idle one.
        let write = async {
            write_frame(stream, &reply.encode()).await?;
            stream.flush().await?;
            Ok::<_, LinkError>(())
        };
        tokio::time::timeout(IDLE_TIMEOUT, write)
            .await
            .map_err(|_| LinkError::Timeout)??;
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The connection failed or was refused.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The answer is not a frame of the protocol.
    #[error("the answer does not decode: {0}")]
    Malformed(#[from] ChainError),
    /// The member took longer than the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// Asks other members, from a blocking thread: one connection per member, kept
/// between requests, dialed again after a failure.
pub struct Requester {
    connector: TlsConnector,
    roster: Roster,
    hello: Hello,
    timeout: Duration,
    /// Connections not in use, by member and address.
    idle: Mutex<HashMap<(MemberIndex, String), TlsStream<TcpStream>>>,
    /// Drives the connections; its own, since callers are blocking threads that may
    /// run outside any runtime. Taken only on drop.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Requester {
    fn drop(&mut self) {
        self.idle().clear();
        // Unlike a plain drop, this is allowed wherever the last holder is, an async
        // task included.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl std::fmt::Debug for Requester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requester")
            .field("member", &self.hello.member)
            .finish_non_exhaustive()
    }
}

impl Requester {
    /// A requester for the member holding `key`, saying `hello`, waiting at most
    /// `timeout` for each answer.
    pub fn new(
        key: &SigningKey,
        roster: Roster,
        hello: Hello,
        timeout: Duration,
    ) -> std::io::Result<Requester> {
        let (_, client) = configs(key, &roster).map_err(std::io::Error::other)?;
        let mut client = Arc::unwrap_or_clone(client);
        client.alpn_protocols = vec![ALPN.to_vec()];
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ledger-requests")
            .enable_all()
            .build()?;
        Ok(Requester {
            connector: TlsConnector::from(Arc::new(client)),
            roster,
            hello,
            timeout,
            idle: Mutex::new(HashMap::new()),
            runtime: Some(runtime),
        })
    }

    /// Sends `request` to `member` at `addr` and reads its answer, of at most `limit`
    /// bytes. Blocks; must not be called from an async task.
    pub fn request(
        &self,
        member: MemberIndex,
        addr: &str,
        request: &Wire,
        limit: usize,
    ) -> Result<Wire, RequestError> {
        let key = (member, addr.to_owned());
        let runtime = self.runtime.as_ref().ok_or(LinkError::Closed)?;
        let exchange = |kept: Option<TlsStream<TcpStream>>| async {
            let mut stream = match kept {
                Some(stream) => stream,
                None => {
                    let (roster, hello) = (&self.roster, &self.hello);
                    dial(member, addr, &self.connector, roster, hello, Some(ALPN))
                        .await?
                        .0
                }
            };
            write_frame(&mut stream, &request.encode()).await?;
            stream.flush().await?;
            let frame = read_frame(&mut stream, limit)
                .await?
                .ok_or(LinkError::Closed)?;
            Ok::<_, LinkError>((stream, frame))
        };
        let within = |kept| async {
            tokio::time::timeout(self.timeout, exchange(kept))
                .await
                .map_err(|_| RequestError::Timeout(self.timeout))?
                .map_err(RequestError::from)
        };
        let kept = self.idle().remove(&key);
        let reused = kept.is_some();
        let (stream, frame) = match runtime.block_on(within(kept)) {
            // The member may have closed a connection idle for long: one new try.
            Err(RequestError::Link(_)) if reused => runtime.block_on(within(None))?,
            result => result?,
        };
        self.idle().insert(key, stream);
        Ok(Wire::decode(&frame)?)
    }

    fn idle(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<(MemberIndex, String), TlsStream<TcpStream>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
