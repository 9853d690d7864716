//! Node-to-node transport: mutual TLS between members (the key is the identity), a
//! hello that checks both ends are on the same chain, length-prefixed frames with a
//! size limit, and one bounded send queue per peer.

mod frame;
mod hello;
mod tls;
mod transport;
mod wire;

pub use frame::{read_frame, write_frame, FrameError};
pub use hello::{Hello, HelloError, MAX_HELLO_BYTES, PROTOCOL_VERSION};
pub use tls::{certificate_key, configs, self_signed, Roster, TlsError, SERVER_NAME};
pub use transport::{Inbound, PeerState, SendError, Transport, TransportConfig};
pub use wire::Wire;
