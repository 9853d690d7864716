//! The client against a scripted node on loopback: it waits out 429 and 503 as the
//! node asks, sends a POST again only when the node cannot have taken it, and gives
//! up when its policy runs out.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ledger_client::chain::Entry;
use ledger_client::{Client, Credentials, Error, Retry};

/// A node that answers each request with the next of `answers` (status, extra
/// headers, body), then closes; the count of requests it read.
fn scripted(answers: Vec<(u16, &'static str, String)>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let served = Arc::new(AtomicUsize::new(0));
    let count = served.clone();
    std::thread::spawn(move || {
        for (status, headers, body) in answers {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap();
                }
            }
            let mut request_body = vec![0; length];
            reader.read_exact(&mut request_body).unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{headers}\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = reader.get_mut().write_all(answer.as_bytes());
        }
    });
    (url, served)
}

fn busy(status: u16, code: &str) -> (u16, &'static str, String) {
    (
        status,
        "retry-after: 0\r\n",
        format!(r#"{{"error":"{code}","message":"try again"}}"#),
    )
}

fn quick() -> Retry {
    Retry {
        attempts: 4,
        first_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    }
}

#[test]
fn a_busy_node_is_asked_again_until_it_takes_the_entry() {
    let entry = Entry::new(b"once".to_vec());
    let accepted = format!(r#"{{"id":"{}"}}"#, entry.id());
    let (url, served) = scripted(vec![
        busy(429, "rate_limited"),
        busy(503, "pool_full"),
        (202, "", accepted),
    ]);
    let client = Client::new(&url, &Credentials::default())
        .unwrap()
        .with_retry(quick());
    assert_eq!(client.submit(&entry).unwrap(), entry.id());
    assert_eq!(served.load(Ordering::SeqCst), 3);
}

#[test]
fn a_refusal_is_not_sent_again_and_says_why() {
    let (url, served) = scripted(vec![busy(422, "invalid_entry"), busy(202, "unused")]);
    let client = Client::new(&url, &Credentials::default())
        .unwrap()
        .with_retry(quick());
    let error = client.submit(&Entry::new(b"bad".to_vec())).unwrap_err();
    assert_eq!(
        (error.status(), error.code()),
        (Some(422), Some("invalid_entry"))
    );
    assert!(error.to_string().contains("try again"), "{error}");
    assert_eq!(served.load(Ordering::SeqCst), 1);
}

#[test]
fn the_policy_runs_out_with_the_last_refusal() {
    let (url, served) = scripted((0..5).map(|_| busy(503, "pool_full")).collect());
    let client = Client::new(&url, &Credentials::default())
        .unwrap()
        .with_retry(quick());
    let error = client.status().unwrap_err();
    assert!(
        matches!(&error, Error::Refused { status: 503, retry_after: Some(wait), .. } if wait.is_zero()),
        "{error:?}"
    );
    assert_eq!(served.load(Ordering::SeqCst), 4);
    let none = Client::new("127.0.0.1:1", &Credentials::default())
        .unwrap()
        .with_retry(quick());
    assert!(matches!(none.status(), Err(Error::Unreachable { .. })));
}

#[test]
fn an_answer_unlike_the_documented_one_is_an_error() {
    let (url, _) = scripted(vec![(200, "", "<html>proxy</html>".into())]);
    let client = Client::new(&url, &Credentials::default()).unwrap();
    assert!(matches!(
        client.status(),
        Err(Error::Unexpected { status: 200, .. })
    ));
}
