//! The typed client (`ledger-client`) against a real node: verified submits and
//! reads, the node's views and proofs, and a rate limit waited out as the node asks.

mod support;

use std::time::Duration;

use ed25519_dalek::SigningKey;
use ledger::chain::{ChainError, Entry, Hash};
use ledger_client::{Client, Credentials, Error, Retry, Submitted, Verifier, VerifyError};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_typed_client_gets_receipts_it_checks_against_the_genesis() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, port) = layout(&dir.path().join("dev"), 1);
    let daemon = Daemon::start(&configs[0], port);
    let client = Client::new(&daemon.url, &Credentials::default()).unwrap();
    let verifier = Verifier::from_genesis_file(dir.path().join("dev/genesis.toml")).unwrap();

    let status = client.status().unwrap();
    assert_eq!(status.role, "alone");
    assert_eq!(status.chain_hash, verifier.spec().chain_hash().to_hex());

    let entry = Entry::new(b"typed and proven".to_vec());
    let proven = client.submit_verified(&entry, WAIT, &verifier).unwrap();
    assert_eq!(proven.receipt.entry_id, entry.id());
    assert_eq!(proven.entry.as_ref(), Some(&entry));
    // Submitting it again (an answer lost on the way) reads the commit back, checked.
    let again = client.submit_verified(&entry, WAIT, &verifier).unwrap();
    assert_eq!(again.receipt, proven.receipt);

    // An author-signed entry, and a read of it.
    let author = SigningKey::from_bytes(&[42; 32]);
    let signed = Entry::signed(b"signed".to_vec(), &author, &verifier.spec().chain_hash());
    match client.submit_wait(&signed, WAIT).unwrap() {
        Submitted::Committed(view) => {
            verifier.committed(&view, &signed).unwrap();
        }
        Submitted::Pending(accepted) => panic!("{} not committed within {WAIT:?}", accepted.id),
    }
    let read = client.get_verified(&signed.id(), &verifier).unwrap();
    assert_eq!(read.entry, Some(signed.clone()));

    // Without waiting: accepted, then committed.
    let later = Entry::new(b"fire and forget".to_vec());
    assert_eq!(client.submit(&later).unwrap(), later.id());
    committed(&daemon, &later.id().to_hex());
    client.get_verified(&later.id(), &verifier).unwrap();

    let unknown = client.get(&Hash([7; 32])).unwrap_err();
    assert_eq!(unknown.status(), Some(404), "{unknown}");
    assert!(matches!(
        client.get_verified(&Hash([7; 32]), &verifier),
        Err(Error::Refused { status: 404, .. })
    ));

    // The views: blocks hold the ids, the log grows consistently.
    let blocks = client.blocks(1, 100).unwrap();
    let ids: Vec<String> = blocks.iter().flat_map(|b| b.entries.clone()).collect();
    for entry in [&entry, &signed, &later] {
        assert!(ids.contains(&entry.id().to_hex()), "{ids:?}");
    }
    let log_size = client.status().unwrap().log_size;
    let proof = client.consistency(1, log_size).unwrap();
    assert_eq!((proof.from, proof.to), (1, log_size));
    assert_eq!(client.members().unwrap().members.len(), 1);

    // Another chain's genesis proves nothing here.
    let (other, _) = layout(&dir.path().join("other"), 1);
    let other_genesis = other[0]
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("genesis.toml");
    let foreign = Verifier::from_genesis_file(other_genesis).unwrap();
    assert!(matches!(
        client.get_verified(&entry.id(), &foreign),
        Err(Error::Verify(VerifyError::Receipt(
            ChainError::WrongChain { .. }
        )))
    ));
    daemon.stop();
}

#[test]
fn the_client_waits_out_a_rate_limit_as_the_node_asks() {
    let dir = tempfile::tempdir().unwrap();
    let (configs, port) = layout(&dir.path().join("dev"), 1);
    let home = configs[0].parent().unwrap();
    // The limit counts callers with tokens; open probes and scrapes go uncounted.
    let mut lines = String::from("\n[api]\nrate_limit = 1\nrate_burst = 1\n\n");
    lines.push_str(&new_token(home, "read", "poller"));
    append(&configs[0], &lines);
    let token_file = home.join("poller.token");
    let daemon = Daemon::start_as(
        &configs[0],
        port,
        "http",
        &["--token-file", token_file.to_str().unwrap()],
    );
    let credentials = Credentials {
        token: Some(ledger::config::read_secret(&token_file).unwrap()),
        ..Credentials::default()
    };
    let impatient = Client::new(&daemon.url, &credentials)
        .unwrap()
        .with_retry(Retry::never());
    let refused = (0..20)
        .find_map(|_| impatient.status().err())
        .expect("20 requests at once, and none over a rate of 1/s");
    match &refused {
        Error::Refused {
            status: 429,
            retry_after: Some(wait),
            ..
        } => assert!(*wait >= Duration::from_secs(1), "{wait:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(refused.code(), Some("rate_limited"));

    let before = metric(&daemon, "ledger_api_refused_total{reason=\"rate_limited\"}");
    let patient = Client::new(&daemon.url, &credentials).unwrap();
    for _ in 0..4 {
        patient.status().unwrap();
    }
    let after = metric(&daemon, "ledger_api_refused_total{reason=\"rate_limited\"}");
    assert!(after > before, "the patient client was never turned away");
    daemon.stop();
}
