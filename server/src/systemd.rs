//! The systemd service notification protocol (`sd_notify(3)`), spoken directly: one
//! datagram per state change to the socket `$NOTIFY_SOCKET` names. A node that systemd
//! did not start with `Type=notify` has no such socket and sends nothing.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;
use std::time::Duration;

/// Where this process tells systemd its state.
pub struct Notifier {
    socket: UnixDatagram,
    target: SocketAddr,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier systemd set up, or `None` outside `Type=notify`. A socket that
    /// cannot be used is logged and ignored: serving matters more than telling.
    pub fn from_env() -> Option<Notifier> {
        let name = std::env::var_os("NOTIFY_SOCKET")?;
        match Notifier::open(&name) {
            Ok(notifier) => Some(notifier),
            Err(error) => {
                tracing::warn!(%error, socket = ?name, "cannot use NOTIFY_SOCKET; systemd will not hear from this node");
                None
            }
        }
    }

    fn open(name: &OsStr) -> io::Result<Notifier> {
        // A leading '@' names a socket in the abstract namespace.
        let target = match name.as_bytes().strip_prefix(b"@") {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name)?,
            None => SocketAddr::from_pathname(Path::new(name))?,
        };
        let socket = UnixDatagram::unbound()?;
        // Never hold an async worker if systemd is slow to read.
        socket.set_nonblocking(true)?;
        Ok(Notifier {
            socket,
            target,
            watchdog: watchdog_period(),
        })
    }

    /// Sends `state`: `KEY=value` lines such as `READY=1` or `STATUS=...`.
    pub fn notify(&self, state: &str) {
        if let Err(error) = self.socket.send_to_addr(state.as_bytes(), &self.target) {
            tracing::warn!(%error, state, "systemd notification failed");
        }
    }

    /// How often to send `WATCHDOG=1`: half the interval systemd asked for, if it
    /// asked this process.
    pub fn watchdog_period(&self) -> Option<Duration> {
        self.watchdog
    }
}

fn watchdog_period() -> Option<Duration> {
    let micros: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (micros > 0).then(|| Duration::from_micros(micros / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_arrive_as_datagrams_at_a_path_and_an_abstract_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        Notifier::open(path.as_os_str()).unwrap().notify("READY=1");
        let mut buffer = [0u8; 64];
        let read = receiver.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..read], b"READY=1");

        let name = format!("ledger-test-{}", std::process::id());
        let receiver =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        Notifier::open(OsStr::new(&format!("@{name}")))
            .unwrap()
            .notify("STOPPING=1");
        let read = receiver.recv(&mut buffer).unwrap();
        assert_eq!(&buffer[..read], b"STOPPING=1");
    }
}
