//! A TCP proxy that delays and drops, for links this kernel cannot shape (it has no
//! netem): each [`Link`] forwards connections to one target, holding every chunk
//! for the link's delay (plus up to its jitter, never reordering), and cutting a
//! connection when a chunk draws a drop. Settings change while connections run.
//!
//! A chunk is what one read returned. Dropping bytes inside a TLS stream would only
//! make the receiver close it, so a drop cuts the whole connection, as a lossy path
//! that times out does; the dialer reconnects.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// One direction's shaping, changed at any time.
#[derive(Debug, Default)]
pub struct Shape {
    delay_us: AtomicU64,
    jitter_us: AtomicU64,
    drop_per_million: AtomicU32,
}

impl Shape {
    /// Every chunk waits `delay` plus up to `jitter`, uniformly drawn.
    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        self.delay_us.store(micros(delay), Ordering::Relaxed);
        self.jitter_us.store(micros(jitter), Ordering::Relaxed);
    }

    /// Each chunk cuts its connection with probability `p` (0 to 1).
    pub fn set_drop(&self, p: f64) {
        let per_million = (p.clamp(0.0, 1.0) * 1e6) as u32;
        self.drop_per_million.store(per_million, Ordering::Relaxed);
    }

    /// No delay, no drops.
    pub fn clear(&self) {
        self.set_delay(Duration::ZERO, Duration::ZERO);
        self.set_drop(0.0);
    }

    /// When a chunk read now is delivered, given the previous one's time (chunks
    /// never overtake each other), or `None` when it cuts the connection.
    fn schedule(&self, previous: Instant, random: &mut SplitMix64) -> Option<Instant> {
        let drop = self.drop_per_million.load(Ordering::Relaxed);
        if drop > 0 && (random.next_u64() % 1_000_000) < u64::from(drop) {
            return None;
        }
        let jitter = self.jitter_us.load(Ordering::Relaxed);
        let wait = self.delay_us.load(Ordering::Relaxed)
            + match jitter {
                0 => 0,
                j => random.next_u64() % (j + 1),
            };
        Some(previous.max(Instant::now() + Duration::from_micros(wait)))
    }
}

/// Chunks held per direction of a connection (up to 16 KiB each).
const QUEUED_CHUNKS: usize = 64;

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A proxy listening on one address and forwarding to one target; `forward` shapes
/// what the dialer sends, `backward` what the target answers.
pub struct Link {
    /// Where the proxy listens.
    pub local: SocketAddr,
    /// Shaping of the dialer's bytes.
    pub forward: Arc<Shape>,
    /// Shaping of the target's bytes.
    pub backward: Arc<Shape>,
}

impl Link {
    /// Listens on `listen` and forwards every connection to `target`, shaped by
    /// `forward` and `backward`, until the runtime stops. `seed` seeds the drawing of
    /// jitter and drops.
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        forward: Arc<Shape>,
        backward: Arc<Shape>,
        seed: u64,
    ) -> io::Result<Link> {
        let listener = TcpListener::bind(listen).await?;
        let local = listener.local_addr()?;
        let (f, b) = (forward.clone(), backward.clone());
        tokio::spawn(async move {
            let mut connections = 0u64;
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    // Out of descriptors, say: wait rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                connections += 1;
                let random = SplitMix64(seed ^ connections.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                tokio::spawn(relay(inbound, target, f.clone(), b.clone(), random));
            }
        });
        Ok(Link {
            local,
            forward,
            backward,
        })
    }
}

async fn relay(
    inbound: TcpStream,
    target: SocketAddr,
    forward: Arc<Shape>,
    backward: Arc<Shape>,
    mut random: SplitMix64,
) {
    let Ok(Ok(outbound)) =
        tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target)).await
    else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    let back_random = SplitMix64(random.next_u64());
    // Either direction ending on a drop ends both (the streams drop with the task);
    // an orderly end of one direction lets the other finish.
    let there = pump(in_read, out_write, forward, random);
    let back = pump(out_read, in_write, backward, back_random);
    tokio::pin!(there, back);
    tokio::select! {
        cut = &mut there => if !cut { back.await; },
        cut = &mut back => if !cut { there.await; },
    }
}

/// Copies `from` to `to` through `shape`'s delay; true when a drop cut it.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shape: Arc<Shape>,
    mut random: SplitMix64,
) -> bool {
    // Bounded: a receiver that stops reading (paused, cut off) stops the sender in
    // turn, as TCP would, instead of the proxy taking in everything.
    let (send, mut receive) = mpsc::channel::<(Instant, Vec<u8>)>(QUEUED_CHUNKS);
    let writer = async move {
        while let Some((at, chunk)) = receive.recv().await {
            sleep_until(at).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    let reader = async move {
        let mut last = Instant::now();
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buffer).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            let Some(at) = shape.schedule(last, &mut random) else {
                return true;
            };
            last = at;
            if send.send((at, buffer[..n].to_vec())).await.is_err() {
                return false;
            }
        }
    };
    // On a cut nothing queued is delivered; on an orderly end the queue drains first
    // (the writer ends once the reader's sender is gone).
    tokio::pin!(reader, writer);
    tokio::select! {
        cut = &mut reader => {
            if !cut {
                (&mut writer).await;
            }
            cut
        }
        () = &mut writer => false,
    }
}

/// Waits until `at`, to within the OS timer's slack (tens of microseconds).
///
/// Tokio's timer counts whole milliseconds and rounds up, so through it every chunk
/// waited up to a millisecond more than asked, even with no delay set: a "1 ms" link
/// held chunks 2.1 ms at the median. One thread here keeps the instants to come and
/// sleeps on a condition variable until the first of them.
async fn sleep_until(at: Instant) {
    if at <= Instant::now() {
        return;
    }
    let (wake, woken) = oneshot::channel();
    alarms().set(at, wake);
    // The alarm thread outlives every caller, so the sender is never dropped unsent.
    let _ = woken.await;
}

/// The instants some task waits for, each with the channel that wakes it.
#[derive(Default)]
struct Alarms {
    due: Mutex<Due>,
    changed: Condvar,
}

#[derive(Default)]
struct Due {
    /// Keyed by instant and a sequence number (two tasks may wait for one instant).
    wakes: BTreeMap<(Instant, u64), oneshot::Sender<()>>,
    sequence: u64,
}

fn alarms() -> &'static Alarms {
    static ALARMS: OnceLock<&'static Alarms> = OnceLock::new();
    ALARMS.get_or_init(|| {
        let alarms: &'static Alarms = Box::leak(Box::default());
        std::thread::Builder::new()
            .name("proxy-alarms".into())
            .spawn(|| alarms.run())
            .expect("the proxy cannot run without its alarm thread");
        alarms
    })
}

impl Alarms {
    fn set(&self, at: Instant, wake: oneshot::Sender<()>) {
        let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
        due.sequence += 1;
        let first = due.wakes.keys().next().is_none_or(|&(next, _)| at < next);
        let key = (at, due.sequence);
        due.wakes.insert(key, wake);
        if first {
            self.changed.notify_one();
        }
    }

    fn run(&self) {
        let mut due = self.due.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let now = Instant::now();
            while let Some(entry) = due.wakes.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let _ = entry.remove().send(());
            }
            due = match due.wakes.keys().next() {
                Some(&(next, _)) => {
                    let wait = next.saturating_duration_since(now);
                    self.changed
                        .wait_timeout(due, wait)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .changed
                    .wait(due)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }
}

/// A small seeded generator (SplitMix64): reproducible schedules without a
/// dependency.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    pub fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback, and a link in front of it.
    async fn echo_link() -> Link {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = server.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = server.accept().await {
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        let shape = || Arc::new(Shape::default());
        Link::start("127.0.0.1:0".parse().unwrap(), target, shape(), shape(), 7)
            .await
            .unwrap()
    }

    async fn round_trip(link: &Link, message: &[u8]) -> io::Result<(Vec<u8>, Duration)> {
        let mut stream = TcpStream::connect(link.local).await?;
        let sent = Instant::now();
        stream.write_all(message).await?;
        let mut back = vec![0u8; message.len()];
        stream.read_exact(&mut back).await?;
        Ok((back, sent.elapsed()))
    }

    #[tokio::test]
    async fn a_link_delays_each_way_and_cuts_on_a_drop() {
        let link = echo_link().await;
        let (back, _) = round_trip(&link, b"plain").await.unwrap();
        assert_eq!(back, b"plain");

        // Each direction holds the chunk at least its delay: a lower bound, which
        // a busy machine can only lengthen.
        link.forward
            .set_delay(Duration::from_millis(30), Duration::ZERO);
        link.backward
            .set_delay(Duration::from_millis(20), Duration::from_millis(5));
        let (back, took) = round_trip(&link, b"delayed").await.unwrap();
        assert_eq!(back, b"delayed");
        assert!(took >= Duration::from_millis(50), "{took:?}");

        link.forward.clear();
        link.backward.clear();
        link.forward.set_drop(1.0);
        let cut = round_trip(&link, b"lost").await;
        assert!(cut.is_err(), "a certain drop cuts the connection");
        link.forward.clear();
        let (back, _) = round_trip(&link, b"again").await.unwrap();
        assert_eq!(back, b"again");
    }

    #[tokio::test]
    async fn alarms_wake_every_task_at_its_instant_and_not_before() {
        let start = Instant::now();
        // Out of order, and two for one instant.
        let waits = [30, 10, 20, 10, 0].map(Duration::from_millis);
        let tasks: Vec<_> = waits
            .iter()
            .map(|&wait| {
                tokio::spawn(async move {
                    sleep_until(start + wait).await;
                    Instant::now()
                })
            })
            .collect();
        for (task, wait) in tasks.into_iter().zip(waits) {
            let woke = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("an alarm never fired")
                .unwrap();
            assert!(woke >= start + wait, "woke {:?} early", start + wait - woke);
        }
    }

    #[test]
    fn the_generator_replays_and_stays_in_range() {
        let (mut a, mut b) = (SplitMix64(5), SplitMix64(5));
        for _ in 0..1000 {
            let x = a.range(3, 9);
            assert_eq!(x, b.range(3, 9));
            assert!((3..=9).contains(&x));
        }
    }
}
