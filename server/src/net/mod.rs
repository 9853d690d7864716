//! Node-to-node transport: mutual TLS between members (the key is the identity), a
//! hello that checks both ends are on the same chain, length-prefixed frames with a
//! size limit, and one bounded send queue per peer.
//!
//! Errors: one type per step a connection goes through, not one for the module
//! ([`TlsError`] setting up identities, [`HelloError`] refusing a peer's hello,
//! [`FrameError`] reading a frame, [`SendError`] queueing one): each is met and
//! answered at a different place (start-up, the handshake, a reader, the driver), and
//! an enum of all four would make each place match on cases it can never see.

mod frame;
mod hello;
mod requests;
mod tls;
mod transport;
mod wire;

pub use frame::{read_frame, write_frame, FrameError};
pub use hello::{Hello, HelloError, MAX_HELLO_BYTES, PROTOCOL_VERSION};
pub use requests::{Answer, RequestError, Requester, ALPN, MAX_CONNECTIONS};
pub use tls::{certificate_key, configs, self_signed, Roster, TlsError, SERVER_NAME};
pub use transport::{
    Backoff, Inbound, LinkError, Outbox, PeerState, SendError, Transport, TransportConfig,
};
pub use wire::Wire;
