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
