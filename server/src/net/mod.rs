//! Node-to-node transport. So far: length-prefixed framing with a size limit, the layer
//! every peer connection reads through (mutual TLS and the handshake come with the
//! cluster).

mod frame;

pub use frame::{read_frame, write_frame, FrameError};
