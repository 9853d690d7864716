//! Frames: a u32 big-endian length, then that many bytes.
//!
//! The length is checked against the limit first, and the buffer grows only as bytes
//! arrive, so a peer cannot make a node reserve memory by announcing a huge frame;
//! every error ends that connection only.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The buffer a frame starts with; it grows as the frame's bytes arrive.
const INITIAL_CAPACITY: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The announced length is above the limit.
    #[error("frame of {len} bytes announced, the limit is {limit}")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The connection ended inside a frame.
    #[error("connection closed inside a frame")]
    Truncated,
    /// The connection failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Whether the connection just went away (the peer stopped or crashed), as
    /// opposed to the peer sending something malformed.
    pub fn is_disconnect(&self) -> bool {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
        matches!(self, FrameError::Io(error)
            if matches!(error.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe))
    }
}

/// Reads one frame of at most `limit` bytes; `None` when the peer closed the
/// connection cleanly between frames. The caller derives `limit` from the largest
/// message the chain allows (a PRE-PREPARE carries a whole block).
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<Vec<u8>>, FrameError> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        match reader.read(&mut prefix[filled..]).await? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(FrameError::Truncated),
            read => filled += read,
        }
    }
    let len = usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX);
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    // Memory grows with the bytes that actually arrive, not with the announcement:
    // a peer must send a large frame to make this node hold one.
    let mut frame = Vec::with_capacity(len.min(INITIAL_CAPACITY));
    let read = (&mut *reader)
        .take(len as u64)
        .read_to_end(&mut frame)
        .await?;
    if read < len {
        return Err(FrameError::Truncated);
    }
    Ok(Some(frame))
}

/// Writes `frame` with its length prefix.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &[u8],
) -> Result<(), FrameError> {
    let len = u32::try_from(frame.len()).map_err(|_| FrameError::TooLarge {
        len: frame.len(),
        limit: u32::MAX as usize,
    })?;
    writer.write_all(&len.to_be_bytes()).await?;
    writer.write_all(frame).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_in_order() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let sent: Vec<Vec<u8>> = vec![vec![], vec![1, 2, 3], vec![7; 1000]];
        let writer = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for frame in &sent {
                    write_frame(&mut a, frame).await.expect("write");
                }
            })
        };
        for expected in &sent {
            let got = read_frame(&mut b, 4096).await.expect("read");
            assert_eq!(got.as_ref(), Some(expected));
        }
        writer.await.expect("writer");
        assert!(read_frame(&mut b, 4096).await.expect("clean end").is_none());
    }

    #[tokio::test]
    async fn an_oversized_announcement_is_refused_before_allocating() {
        let bytes = u32::MAX.to_be_bytes();
        let mut reader: &[u8] = &bytes;
        let error = read_frame(&mut reader, 1024).await.expect_err("too large");
        assert!(
            matches!(error, FrameError::TooLarge { len, limit: 1024 } if len == u32::MAX as usize)
        );
    }

    #[tokio::test]
    async fn a_connection_closed_inside_a_frame_is_an_error() {
        for bytes in [&[0u8, 0][..], &[0, 0, 0, 5, 1, 2][..]] {
            let mut reader = bytes;
            let error = read_frame(&mut reader, 1024).await.expect_err("truncated");
            assert!(matches!(error, FrameError::Truncated), "{error}");
        }
    }

    #[test]
    fn a_lost_connection_is_told_apart_from_a_bad_frame() {
        use std::io::{Error, ErrorKind};
        let lost = FrameError::Io(Error::new(ErrorKind::UnexpectedEof, "no close_notify"));
        assert!(lost.is_disconnect());
        assert!(!FrameError::Truncated.is_disconnect());
        assert!(!FrameError::Io(Error::new(ErrorKind::InvalidData, "bad record")).is_disconnect());
    }
}
