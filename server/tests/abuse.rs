//! Clients that hold connections without using them, or send a byte at a time, cannot
//! starve a node: its open connections stay under the cap, idle and slow ones are
//! closed after the header deadline, and a well-behaved client still commits.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn idle_and_slow_clients_are_capped_and_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, port) = layout(&dir.path().join("dev"), 1);
    let config = &configs[0];
    let settings = std::fs::read_to_string(config).unwrap().replace(
        "api_header_timeout_ms = 10000",
        "api_max_connections = 32\napi_header_timeout_ms = 1000",
    );
    assert!(
        settings.contains("api_max_connections = 32\n"),
        "{settings}"
    );
    std::fs::write(config, settings).unwrap();
    let daemon = Daemon::start(config, port);
    let baseline = metric(&daemon, "process_open_fds");

    // 200 connections that send nothing: at most 32 are taken in at once.
    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // 20 that send a header line, then a byte now and then, never finishing.
    let mut slow: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream
                .write_all(b"POST /v1/entries HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            stream
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The metrics request itself waits for a place, behind the idle ones the deadline
    // closes; it takes one connection, itself.
    let started = Instant::now();
    let holding = metric(&daemon, "process_open_fds");
    assert!(
        holding <= baseline + 32 + 2,
        "{holding} descriptors open against {baseline} before: the cap did not hold"
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // The header deadline closes what sent nothing, and what trickles: each ends
    // (end of stream, or a reset) well before the reads' own 20 s run out.
    let closed = |stream: &mut TcpStream| {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut answer = Vec::new();
        match stream.read_to_end(&mut answer) {
            Ok(_) => true,
            Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
        }
    };
    let started = Instant::now();
    for stream in &mut slow {
        let _ = stream.write_all(b"X");
    }
    for (i, stream) in slow.iter_mut().enumerate() {
        assert!(closed(stream), "trickling connection {i} stayed open");
    }
    for (i, mut stream) in idle.into_iter().enumerate() {
        assert!(closed(&mut stream), "idle connection {i} stayed open");
    }
    // 220 connections, 32 at a time, each closed a second after it was taken in.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );

    // A well-behaved client commits meanwhile.
    let committed = daemon.ctl(&["submit", "still served", "--wait"]);
    assert!(committed.status.success(), "{}", text(&committed));
    daemon.stop();
}

/// Raises this process's descriptor limit to its hard limit: the abusers below hold
/// thousands of sockets, more than a shell's default soft limit allows.
#[allow(unsafe_code)]
fn raise_descriptor_limit() -> libc::rlim_t {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read or write the struct passed by reference.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    limit.rlim_cur
}

/// A receive buffer so small that a reader which never reads stops a sender at once.
#[allow(unsafe_code)]
fn shrink_receive_buffer(stream: &TcpStream) {
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt reads `size` for its length on a socket this process owns.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// What an abuser does with each of its connections.
#[derive(Clone, Copy)]
enum Abuse {
    /// Connects and sends nothing.
    Idle,
    /// Sends a request's headers a byte a second, never finishing.
    Trickle,
    /// Asks for the whole chain and never reads the answer.
    StallChain,
}

/// Holds `count` connections of kind `abuse` to `port` until `stop`, opening a new
/// one whenever the node closes one; how many the node closed.
fn abuse(
    port: u16,
    count: usize,
    abuse: Abuse,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let open = || -> Option<TcpStream> {
            let stream = TcpStream::connect_timeout(&address, Duration::from_millis(200)).ok()?;
            match abuse {
                Abuse::Idle => {}
                Abuse::Trickle => stream
                    .try_clone()
                    .ok()?
                    .write_all(b"POST /v1/entries HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                    .ok()?,
                Abuse::StallChain => {
                    shrink_receive_buffer(&stream);
                    stream
                        .try_clone()
                        .ok()?
                        .write_all(b"GET /chain HTTP/1.1\r\nHost: x\r\n\r\n")
                        .ok()?
                }
            }
            stream.set_nonblocking(true).ok()?;
            Some(stream)
        };
        let mut streams: Vec<Option<TcpStream>> = (0..count).map(|_| open()).collect();
        let mut closed = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for slot in &mut streams {
                let alive = match slot {
                    None => false,
                    Some(stream) => {
                        let mut byte = [0u8; 1];
                        let peeked = match abuse {
                            // Never read: only a write to a closed connection fails.
                            Abuse::StallChain => Err(std::io::ErrorKind::WouldBlock.into()),
                            _ => stream.peek(&mut byte),
                        };
                        let ended = matches!(peeked, Ok(0))
                            || matches!(&peeked, Err(e) if e.kind() != std::io::ErrorKind::WouldBlock);
                        let wrote = match abuse {
                            Abuse::Trickle | Abuse::StallChain => {
                                !matches!(stream.write(b"a"), Err(e) if e.kind() != std::io::ErrorKind::WouldBlock)
                            }
                            Abuse::Idle => true,
                        };
                        !ended && wrote
                    }
                };
                if !alive {
                    closed += u64::from(slot.is_some());
                    *slot = open();
                }
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        closed
    })
}

/// Commits one entry through `url`, waiting for it; how long that took.
fn timed_commit(url: &str, tag: &str) -> Duration {
    let started = Instant::now();
    let (code, answer) = http(
        "POST",
        &format!("{url}/v1/entries?wait=commit"),
        Some(&serde_json::json!({ "data": tag }).to_string()),
    );
    assert_eq!(code, 200, "{tag}: {answer}");
    started.elapsed()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

/// Thousands of idle connections, hundreds of byte-a-second header senders and
/// hundreds of `GET /chain` readers that never read, against two members of four
/// (the primary among them): the members keep reaching each other (no view change,
/// every peer connected), clients of the other members commit in their usual time,
/// and clients of the abused ones still get through.
#[test]
fn a_cluster_keeps_committing_while_two_members_are_abused() {
    let limit = raise_descriptor_limit();
    let (idle, slow, stalled) = (1000, 200, 200);
    assert!(
        limit > 2 * (idle + slow + stalled) as libc::rlim_t + 256,
        "a descriptor limit of {limit} is too low for this test"
    );
    let dir = tempfile::tempdir().unwrap();
    let (configs, base) = layout(&dir.path().join("dev"), 4);
    set(&configs, "api_max_connections", "256");
    set(&configs, "api_header_timeout_ms", "2000");
    set(&configs, "api_write_timeout_ms", "3000");
    let mut daemons = start_all(&configs, base);
    // A chain longer than the stalled readers' buffers.
    commit_batch(node(&daemons, 3), "filler", 2000);
    converge(&daemons, 1);
    let view = status(node(&daemons, 2))["view"].as_u64().unwrap();

    let calm = node(&daemons, 2).url.clone();
    let baseline = median(
        (0..15)
            .map(|i| timed_commit(&calm, &format!("calm {i}")))
            .collect(),
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let abused = [0usize, 1];
    let abusers: Vec<_> = abused
        .iter()
        .flat_map(|&i| {
            let port = base + 2 * i as u16;
            [
                abuse(port, idle, Abuse::Idle, stop.clone()),
                abuse(port, slow, Abuse::Trickle, stop.clone()),
                abuse(port, stalled, Abuse::StallChain, stop.clone()),
            ]
        })
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    let during: Vec<Duration> = (0..30)
        .map(|i| timed_commit(&calm, &format!("during {i}")))
        .collect();
    // Through an abused member too: it waits for a place, and is served.
    let through_abused = timed_commit(&node(&daemons, 0).url, "through the primary");
    let held = metric(node(&daemons, 0), "process_open_fds");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let closed: u64 = abusers.into_iter().map(|a| a.join().unwrap()).sum();

    let after = status(node(&daemons, 2));
    assert_eq!(after["view"].as_u64(), Some(view), "a view change: {after}");
    for member in after["members"].as_array().unwrap() {
        assert_eq!(member["connected"], true, "{after}");
    }
    let during = median(during);
    println!(
        "commit through a calm member: median {baseline:?} before, {during:?} during the \
         abuse; through the abused primary {through_abused:?}; the primary held {held} \
         descriptors; the nodes closed {closed} abusing connections"
    );
    assert!(
        during <= baseline * 4 + Duration::from_millis(300),
        "median commit {during:?} during the abuse against {baseline:?} before"
    );
    assert!(held < 256 + 200, "{held} descriptors: the cap did not hold");
    assert!(closed > 0, "the nodes closed no abusing connection");
    // It waited behind the abusers in the backlog, not for good.
    assert!(
        through_abused < Duration::from_secs(20),
        "{through_abused:?} through the abused primary"
    );
    stop_all(&mut daemons);
}
