//! The HTTP API end to end through `router(node).oneshot(..)`: every route, every error
//! of the error model, and the batching rules of the block producer.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{header, Method, Request, StatusCode};
use axum::Router;
use ledger::api::types::{
    Accepted, BlockView, CommittedView, ConsistencyView, EntryView, MembersView, StatusView,
    SubmitRequest,
};
use ledger::api::{router, ErrorBody};
use ledger::chain::merkle::verify_consistency;
use ledger::chain::{Entry, Hash, Receipt};
use ledger::node::{Node, NodeSettings};
use ledger::storage::{Store, StoreOptions};
use ledger::testing::{certify, entries, key, next_block, spec};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tower::ServiceExt;

const DIFFICULTY: u32 = 4;

struct TestNode {
    _dir: tempfile::TempDir,
    node: Arc<Node>,
    stop: Option<oneshot::Sender<()>>,
    producer: Option<tokio::task::JoinHandle<()>>,
}

impl TestNode {
    /// A one-member node over `store`; its producer runs unless `start` is false.
    fn serving(dir: tempfile::TempDir, store: Store, settings: NodeSettings, start: bool) -> Self {
        let node = Arc::new(Node::alone(
            Arc::new(store),
            key(1),
            settings,
            Arc::default(),
            Arc::default(),
        ));
        let (stop, stopped) = oneshot::channel::<()>();
        let producer = start.then(|| {
            tokio::spawn(Arc::clone(&node).run(async {
                let _ = stopped.await;
            }))
        });
        TestNode {
            _dir: dir,
            node,
            stop: Some(stop),
            producer,
        }
    }

    fn router(&self) -> Router {
        router(Arc::clone(&self.node))
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(producer) = self.producer.take() {
            tokio::time::timeout(Duration::from_secs(10), producer)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

fn settings(max_block_entries: usize, delay: Duration, pool_capacity: usize) -> NodeSettings {
    NodeSettings {
        max_block_entries,
        max_block_delay: delay,
        pool_capacity,
        mining_threads: NonZeroUsize::MIN,
    }
}

/// A one-member node; its producer runs unless `start` is false.
fn node_with(settings: NodeSettings, start: bool) -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(&[key(1)], DIFFICULTY);
    let store = Store::open(
        &dir.path().join("ledger.redb"),
        &spec,
        StoreOptions::default(),
    )
    .unwrap();
    TestNode::serving(dir, store, settings, start)
}

fn quick_node() -> TestNode {
    node_with(settings(100, Duration::from_millis(5), 1000), true)
}

async fn send(
    router: &Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Vec<u8>, axum::http::HeaderMap) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.map_or(Body::empty(), |body| Body::from(body.to_string())))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    (status, bytes, headers)
}

async fn send_raw(router: &Router, uri: &str, body: Vec<u8>) -> (StatusCode, ErrorBody) {
    let request = Request::post(uri).body(Body::from(body)).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).expect("errors are JSON"),
    )
}

async fn post(
    router: &Router,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Vec<u8>, axum::http::HeaderMap) {
    send(router, Method::POST, uri, body).await
}

async fn get(router: &Router, uri: &str) -> (StatusCode, Vec<u8>, axum::http::HeaderMap) {
    send(router, Method::GET, uri, None).await
}

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> T {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(bytes)))
}

fn error_code(bytes: &[u8]) -> String {
    json::<ErrorBody>(bytes).error
}

#[tokio::test]
async fn submit_wait_get_and_verify_a_receipt() {
    let test = quick_node();
    let router = test.router();
    let spec = test.node.store().spec().clone();

    let (status, body, _) = post(
        &router,
        "/v1/entries?wait=commit",
        Some(json!({"data": "hello ledger"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let committed: CommittedView = json(&body);
    assert_eq!(
        committed.id,
        Entry::new(b"hello ledger".to_vec()).id().to_hex()
    );
    let receipt = Receipt::try_from(&committed.receipt).unwrap();
    receipt.verify(&spec).unwrap();

    let (status, body, _) = get(&router, &format!("/v1/entries/{}", committed.id)).await;
    assert_eq!(status, StatusCode::OK);
    let entry: EntryView = json(&body);
    assert_eq!(
        (entry.status.as_str(), entry.data.as_deref()),
        ("committed", Some("hello ledger"))
    );
    assert_eq!(entry.height, Some(committed.height));
    Receipt::try_from(entry.receipt.as_ref().unwrap())
        .unwrap()
        .verify(&spec)
        .unwrap();

    // Binary data and a signed entry.
    let signed = Entry::signed(vec![0, 159, 146, 150], &key(9), &spec.chain_hash());
    let request = serde_json::to_value(SubmitRequest::from_entry(&signed)).unwrap();
    let (status, body, _) = post(&router, "/v1/entries?wait=commit", Some(request)).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (_, body, _) = get(&router, &format!("/v1/entries/{}", signed.id())).await;
    let entry: EntryView = json(&body);
    assert_eq!(entry.data_b64.as_deref(), Some("AJ+Slg=="));
    assert_eq!(
        entry.author,
        Some(hex::encode(key(9).verifying_key().as_bytes()))
    );
    test.stop().await;
}

/// Genesis has no commit certificate: asking for it committed is a 404, and never
/// makes the node take its own database for damaged (it once did).
/// A path value that is not what the route takes gets the JSON error every other
/// refusal gets, and quotes at most 80 characters of what was sent.
#[tokio::test]
async fn malformed_path_values_get_json_errors_that_quote_little() {
    let test = quick_node();
    let router = test.router();
    let (status, body, _) = get(&router, "/v1/blocks/%ff%fe").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&body), "malformed");
    let long = "a".repeat(5_000);
    let (status, body, _) = get(&router, &format!("/v1/entries/{long}")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let message = json::<ErrorBody>(&body).message;
    assert!(
        message.len() < 200 && message.contains("5000 characters"),
        "{message}"
    );
}

/// An entry whose JSON gives a key twice is refused, alone or in a batch: which one
/// counts would depend on who reads it.
#[tokio::test]
async fn a_key_given_twice_is_refused() {
    let test = quick_node();
    let router = test.router();
    let twice = br#"{"data":"q2","data":"q3"}"#.to_vec();
    let (status, error) = send_raw(&router, "/v1/entries", twice).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error.message.contains("given twice"), "{}", error.message);
    let batch = br#"[{"data":"a"},{"data":"b","data":"c"}]"#.to_vec();
    let (status, error) = send_raw(&router, "/v1/entries/batch", batch).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error.message.contains("given twice"), "{}", error.message);
}

#[tokio::test]
async fn genesis_is_no_committed_block() {
    let test = quick_node();
    let router = test.router();
    let (status, body, _) = get(&router, "/v1/blocks/0/committed").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(test.node.is_ready(), "{:?}", test.node.unready_reason());
    let (status, _, _) = get(&router, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_pending_entry_says_so() {
    let test = node_with(settings(100, Duration::from_secs(3600), 1000), true);
    let router = test.router();
    let (status, body, _) = post(&router, "/v1/entries", Some(json!({"data": "later"}))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let accepted: Accepted = json(&body);
    let (status, body, _) = get(&router, &format!("/v1/entries/{}", accepted.id)).await;
    assert_eq!(status, StatusCode::OK);
    let entry: EntryView = json(&body);
    assert_eq!(entry.status, "pending");
    assert!(entry.receipt.is_none());
    // A wait that runs out answers 202 with the id: accepted, still pending.
    let (status, body, _) = post(
        &router,
        "/v1/entries?wait=commit&timeout_ms=50",
        Some(json!({"data": "patient"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        json::<Accepted>(&body).id,
        Entry::new(b"patient".to_vec()).id().to_hex()
    );
    // A duplicate of a pending entry is refused too, saying it is pending.
    let (status, body, _) = post(&router, "/v1/entries", Some(json!({"data": "later"}))).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::CONFLICT, "duplicate")
    );
    let message = json::<ErrorBody>(&body).message;
    assert!(message.contains("is pending"), "{message}");
    test.stop().await;
}

/// A one-member chain of three blocks of three entries, damaged by `damage` (a
/// write straight into redb's tables, as a flipped disk byte would leave them),
/// served by a node that was never told.
fn damaged_node(
    damage: impl FnOnce(&redb::WriteTransaction, &[ledger::chain::Block]),
) -> (TestNode, Vec<ledger::chain::Block>) {
    let (dir, path, spec, blocks) = damaged_database(damage);
    let store = Store::open(&path, &spec, StoreOptions::default()).unwrap();
    let settings = settings(10, Duration::from_millis(5), 100);
    (TestNode::serving(dir, store, settings, true), blocks)
}

/// The database `damaged_node` serves: its directory, file, chain and blocks.
fn damaged_database(
    damage: impl FnOnce(&redb::WriteTransaction, &[ledger::chain::Block]),
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    ledger::chain::ChainSpec,
    Vec<ledger::chain::Block>,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.redb");
    let spec = spec(&[key(1)], DIFFICULTY);
    let mut blocks = Vec::new();
    {
        let store = Store::open(&path, &spec, StoreOptions::default()).unwrap();
        for round in 0..3 {
            let (tip, log) = store.tip_with_log().unwrap();
            // 24 entries a block: the log stores nodes over 16, 32 and 64 leaves.
            let block = next_block(&tip, &log, entries(round, 24, 100), DIFFICULTY);
            store
                .apply_block(&block, &certify(&[key(1)], &block))
                .unwrap();
            blocks.push(block);
        }
    }
    {
        let database = redb::Database::open(&path).unwrap();
        let write = database.begin_write().unwrap();
        damage(&write, &blocks);
        write.commit().unwrap();
    }
    (dir, path, spec, blocks)
}

/// Asserts `uri` answers 500 naming the damage, and that the node then reports
/// itself not ready, with the damage in `/readyz` and `/metrics`.
async fn assert_damage_refused(router: &Router, uri: &str, what: &str) {
    let (status, body, _) = get(router, uri).await;
    let error: ErrorBody = json(&body);
    assert_eq!(
        (status, error.error.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "damaged_database"),
        "{uri}: {}",
        error.message
    );
    assert!(error.message.contains(what), "{uri}: {}", error.message);
    let (status, body, _) = get(router, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
    assert!(json::<ErrorBody>(&body).message.contains("damaged"));
    let (_, body, _) = get(router, "/metrics").await;
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("ledger_store_damaged 1\n"), "{text}");
    let (status, body, _) = post(router, "/v1/entries", Some(json!({"data": "now?"}))).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
    );
}

/// Bytes changed on disk after a commit never reach a client as data: each kind of
/// damage answers 500 naming it, turns `/readyz` to 503, shows in `/metrics` and
/// refuses submits, while undamaged data is still served.
#[tokio::test]
async fn damaged_data_is_refused_never_served() {
    use ledger_migrations::schema::{BLOCKS, CERTIFICATES, MERKLE_NODES};

    // The index names, at a block's last leaf, an entry no block holds: refused at
    // open, since the node could no longer find that leaf's entry (it would answer
    // 404 for an entry it committed).
    let stranger = Entry::new(b"never submitted".to_vec()).id();
    let (_dir, path, spec, _) = damaged_database(|write, blocks| {
        ledger::testing::overwrite_entry_id(write, blocks[0].header.log_size - 1, &stranger.0);
    });
    let refused = Store::open(&path, &spec, StoreOptions::default())
        .err()
        .unwrap();
    assert!(refused.to_string().contains("entry index"), "{refused}");

    // An entry's id sits at the right leaf, but its block holds other bytes there.
    let (test, blocks) = damaged_node(|write, blocks| {
        let mut block = blocks[0].clone();
        block.entries[2].data[30] ^= 1;
        write
            .open_table(BLOCKS)
            .unwrap()
            .insert(1, block.encode().as_slice())
            .unwrap();
    });
    let router = test.router();
    let good = blocks[1].entries[0].id();
    let (status, body, _) = get(&router, &format!("/v1/entries/{}", good.to_hex())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json::<EntryView>(&body).id, good.to_hex());
    let uri = format!("/v1/entries/{}", blocks[0].entries[2].id().to_hex());
    assert_damage_refused(&router, &uri, "does not hold it").await;
    test.stop().await;

    // An entry's bytes in its block changed: the block no longer gives its root.
    let (test, blocks) = damaged_node(|write, blocks| {
        let mut block = blocks[1].clone();
        block.entries[1].data[0] ^= 1;
        write
            .open_table(BLOCKS)
            .unwrap()
            .insert(2, block.encode().as_slice())
            .unwrap();
    });
    let router = test.router();
    assert_damage_refused(&router, "/v1/blocks/2", "block 2").await;
    assert_damage_refused(&router, "/v1/blocks?from=0&limit=10", "block 2").await;
    let hash = blocks[1].hash().to_hex();
    assert_damage_refused(&router, &format!("/v1/blocks/{hash}"), "block 2").await;
    // The whole chain is cut short, not ended as if it were complete.
    let response = router
        .clone()
        .oneshot(Request::get("/chain").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(to_bytes(response.into_body(), usize::MAX).await.is_err());
    test.stop().await;

    // A header changed: its hash leaves the index and the next block's link.
    let (test, _) = damaged_node(|write, blocks| {
        let mut block = blocks[1].clone();
        block.header.timestamp_ms += 1;
        write
            .open_table(BLOCKS)
            .unwrap()
            .insert(2, block.encode().as_slice())
            .unwrap();
    });
    assert_damage_refused(&test.router(), "/v1/blocks/2", "block 2: its hash").await;
    test.stop().await;

    // A certificate's signature changed: receipts of that block are refused.
    let (test, blocks) = damaged_node(|write, blocks| {
        let mut certificate = certify(&[key(1)], &blocks[0]);
        certificate.signatures[0].signature[5] ^= 1;
        write
            .open_table(CERTIFICATES)
            .unwrap()
            .insert(1, certificate.encode().as_slice())
            .unwrap();
    });
    let uri = format!("/v1/entries/{}", blocks[0].entries[2].id().to_hex());
    assert_damage_refused(&test.router(), &uri, "certificate").await;
    test.stop().await;

    // A stored inner node of the Merkle log (over leaves 0 to 31) changed: the
    // proofs and roots that use it are refused, the others are still true. (The
    // nodes over 16 leaves are checked against the ids at open.)
    let (test, blocks) = damaged_node(|write, _| {
        write
            .open_table(MERKLE_NODES)
            .unwrap()
            .insert((5u8, 0u64), &[7u8; 32])
            .unwrap();
    });
    let router = test.router();
    // Leaf 24's proof in the log of 48 stays below that node; leaf 32's holds it,
    // and so does the log's root at size 32.
    let uri = format!("/v1/entries/{}", blocks[1].entries[0].id().to_hex());
    assert_eq!(get(&router, &uri).await.0, StatusCode::OK);
    let uri = format!("/v1/entries/{}", blocks[1].entries[8].id().to_hex());
    assert_damage_refused(&router, &uri, "does not prove it").await;
    let uri = "/v1/proofs/consistency?from=32&to=48";
    assert_damage_refused(&router, uri, "not consistent").await;
    test.stop().await;
}

#[tokio::test]
async fn the_error_model() {
    let test = quick_node();
    let router = test.router();
    let limit = test.node.store().spec().params.max_entry_bytes as usize;

    // 400: broken JSON, unknown fields, both or neither payload, bad base64, bad query.
    for body in [
        b"{".to_vec(),
        b"[]".to_vec(),
        br#"{"data": 1}"#.to_vec(),
        br#"{"data": "a", "x": 1}"#.to_vec(),
        br#"{"data": "a", "data_b64": "AA=="}"#.to_vec(),
        b"{}".to_vec(),
        br#"{"data_b64": "!!"}"#.to_vec(),
        br#"{"data": "a", "author": "00"}"#.to_vec(),
    ] {
        let (status, error) = send_raw(&router, "/v1/entries", body.clone()).await;
        assert_eq!(
            (status, error.error.as_str()),
            (StatusCode::BAD_REQUEST, "malformed"),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    let (status, body, _) = post(
        &router,
        "/v1/entries?wait=forever",
        Some(json!({"data": "q"})),
    )
    .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::BAD_REQUEST, "malformed")
    );
    let (status, _, _) = get(&router, "/v1/entries/xyz").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = get(&router, "/v1/blocks?from=-1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // 404: unknown routes, entries and blocks.
    for uri in [
        "/nowhere",
        &format!("/v1/entries/{}", Hash([7; 32])),
        "/v1/blocks/99",
        &format!("/v1/blocks/{}", Hash([7; 32])),
    ] {
        let (status, body, _) = get(&router, uri).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (StatusCode::NOT_FOUND, "not_found"),
            "{uri}"
        );
    }
    let (status, body, _) = send(&router, Method::DELETE, "/v1/status", None).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );

    // 409: the same entry twice.
    let (status, _, _) = post(
        &router,
        "/v1/entries?wait=commit",
        Some(json!({"data": "once"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body, _) = post(&router, "/v1/entries", Some(json!({"data": "once"}))).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::CONFLICT, "duplicate")
    );
    let message = json::<ErrorBody>(&body).message;
    assert!(
        message.contains("is already committed, in block 1"),
        "{message}"
    );

    // 413: a body over the limit is refused before parsing (it is not even JSON), and
    // an entry over the chain's limit inside an acceptable body.
    let (status, error) = send_raw(&router, "/v1/entries", vec![b'x'; limit * 7]).await;
    assert_eq!(
        (status, error.error.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );
    // An entry at the limit fits whatever its JSON encoding: here each byte is a
    // control character, which JSON writes in six.
    let escaped = json!({"data": "\u{1}".repeat(limit)});
    assert!(escaped.to_string().len() > limit * 6);
    let (status, body, _) = post(&router, "/v1/entries", Some(escaped)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");
    let (status, body, _) = post(
        &router,
        "/v1/entries",
        Some(json!({"data": "y".repeat(limit + 1)})),
    )
    .await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );

    // 422: a forged signature, with the reason.
    let spec = test.node.store().spec().clone();
    let mut forged = Entry::signed(b"genuine".to_vec(), &key(9), &spec.chain_hash());
    forged.data = b"forged".to_vec();
    let (status, body, _) = post(
        &router,
        "/v1/entries",
        Some(serde_json::to_value(SubmitRequest::from_entry(&forged)).unwrap()),
    )
    .await;
    let error: ErrorBody = json(&body);
    assert_eq!(
        (status, error.error.as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, "rejected")
    );
    assert!(error.message.contains("signature"), "{}", error.message);
    test.stop().await;
}

#[tokio::test]
async fn full_pool_and_not_ready_answer_503_with_retry_after() {
    let test = node_with(settings(100, Duration::from_secs(3600), 2), true);
    let router = test.router();
    for i in 0..2 {
        let (status, _, _) = post(
            &router,
            "/v1/entries",
            Some(json!({"data": format!("e{i}")})),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let (status, body, headers) = post(&router, "/v1/entries", Some(json!({"data": "e2"}))).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "pool_full")
    );
    assert_eq!(headers.get(header::RETRY_AFTER).unwrap(), "1");
    test.stop().await;

    let idle = node_with(settings(100, Duration::from_millis(5), 10), false);
    let router = idle.router();
    let (status, body, headers) = post(&router, "/v1/entries", Some(json!({"data": "x"}))).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    );
    assert!(headers.contains_key(header::RETRY_AFTER));
    let (status, _, _) = get(&router, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, _) = get(&router, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
}

async fn height(router: &Router) -> u64 {
    let (_, body, _) = get(router, "/v1/status").await;
    json::<StatusView>(&body).height
}

#[tokio::test]
async fn blocks_are_cut_when_full_after_the_delay_or_on_mine_and_never_empty_by_themselves() {
    // Full: five entries with a block size of five and an hour's delay make one block.
    let test = node_with(settings(5, Duration::from_secs(3600), 100), true);
    let router = test.router();
    for i in 0..4 {
        post(
            &router,
            "/v1/entries",
            Some(json!({"data": format!("full {i}")})),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        height(&router).await,
        0,
        "four of five entries do not cut a block"
    );
    let (status, _, _) = post(
        &router,
        "/v1/entries?wait=commit",
        Some(json!({"data": "full 4"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, body, _) = get(&router, "/v1/blocks/latest").await;
    let block: BlockView = json(&body);
    assert_eq!((block.header.height, block.entries.len()), (1, 5));
    // Each entry of the block is served with its own data and place.
    for (i, id) in block.entries.iter().enumerate() {
        let (_, body, _) = get(&router, &format!("/v1/entries/{id}")).await;
        let entry: EntryView = json(&body);
        assert_eq!(entry.data, Some(format!("full {i}")));
        assert_eq!(entry.log_index, Some(i as u64));
    }

    // On request: POST /mine cuts a block now, empty if need be.
    let (status, body, _) = post(&router, "/mine", None).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (_, body, _) = get(&router, "/v1/blocks/2").await;
    assert!(json::<BlockView>(&body).entries.is_empty());
    test.stop().await;

    // Delay: one entry waits at most the delay; an idle node makes no blocks.
    let test = node_with(settings(1000, Duration::from_millis(50), 100), true);
    let router = test.router();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(height(&router).await, 0, "no empty blocks unless asked");
    let (status, _, _) = post(
        &router,
        "/v1/entries?wait=commit",
        Some(json!({"data": "alone"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(height(&router).await, 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(height(&router).await, 1);
    test.stop().await;
}

#[tokio::test]
async fn batch_submit_reports_each_entry() {
    let test = quick_node();
    let router = test.router();
    let (status, body, _) = post(
        &router,
        "/v1/entries/batch",
        Some(json!([
            {"data": "b1"}, {"data": "b2"}, {"data": "b1"}
        ])),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let results: Vec<Value> = json(&body);
    assert_eq!(results.len(), 3);
    assert!(results[0]["id"].is_string() && results[1]["id"].is_string());
    assert_eq!(results[0]["status"].as_u64(), Some(202));
    assert_eq!(
        (results[2]["status"].as_u64(), results[2]["error"].as_str()),
        (Some(409), Some("duplicate"))
    );

    // A malformed item makes the whole batch malformed, and nothing of it is submitted;
    // the message says which item.
    for items in [
        json!([{"data": "b4"}, {"nonsense": true}]),
        json!([{"data": "b4"}, {"data": "b5", "data_b64": "AA=="}]),
        json!([{"data": "b4"}, 5]),
    ] {
        let (status, body, _) = post(&router, "/v1/entries/batch", Some(items)).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (StatusCode::BAD_REQUEST, "malformed")
        );
        let message = json::<ErrorBody>(&body).message;
        assert!(message.contains("item 1: "), "{message}");
    }
    // A key given twice, which only the raw text shows.
    let twice = br#"[{"data": "b4"}, {"data": "b5", "data": "b6"}]"#.to_vec();
    let (status, error) = send_raw(&router, "/v1/entries/batch", twice).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error.message.contains("item 1: "), "{}", error.message);
    let (status, _, _) = post(&router, "/v1/entries", Some(json!({"data": "b4"}))).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "b4 was not submitted by the refused batches"
    );
    test.stop().await;
}

#[tokio::test]
async fn blocks_proofs_status_chain_and_metrics() {
    let test = quick_node();
    let router = test.router();
    for i in 0..3 {
        let (status, _, _) = post(
            &router,
            "/v1/entries?wait=commit",
            Some(json!({"data": format!("entry {i}")})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, body, _) = get(&router, "/v1/status").await;
    let status: StatusView = json(&body);
    assert_eq!(
        (status.height, status.log_size, status.f, status.view),
        (3, 3, 0, 0)
    );
    assert_eq!(status.node_id, status.primary);
    assert!(status.members[0].connected);

    let (_, body, _) = get(&router, "/v1/blocks?from=1&limit=2").await;
    let page: Vec<BlockView> = json(&body);
    assert_eq!(
        page.iter().map(|b| b.header.height).collect::<Vec<_>>(),
        [1, 2]
    );
    let (_, body, _) = get(&router, &format!("/v1/blocks/{}", page[1].header.hash)).await;
    assert_eq!(json::<BlockView>(&body), page[1]);

    let (_, body, _) = get(&router, "/v1/proofs/consistency?from=1&to=3").await;
    let proof: ConsistencyView = json(&body);
    let hashes: Vec<Hash> = proof.proof.iter().map(|p| p.parse().unwrap()).collect();
    verify_consistency(
        1,
        3,
        &proof.from_root.parse().unwrap(),
        &proof.to_root.parse().unwrap(),
        &hashes,
    )
    .unwrap();
    assert_eq!(proof.to_root, latest_log_root(&router).await);
    let (status_code, _, _) = get(&router, "/v1/proofs/consistency?from=3&to=9").await;
    assert_eq!(status_code, StatusCode::NOT_FOUND, "no log of size 9 yet");
    for bad in [
        "/v1/proofs/consistency?from=3&to=1",
        "/v1/blocks?limit=101",
        "/v1/blocks?from=9223372036854775808",
    ] {
        let (status_code, _, _) = get(&router, bad).await;
        assert_eq!(status_code, StatusCode::BAD_REQUEST, "{bad}");
    }

    let (status_code, body, headers) = get(&router, "/chain").await;
    assert_eq!(status_code, StatusCode::OK);
    assert_eq!(
        headers.get(header::CONTENT_TYPE).unwrap(),
        "application/json"
    );
    let chain: Vec<BlockView> = json(&body);
    assert_eq!(chain.len(), 4);
    for pair in chain.windows(2) {
        assert_eq!(pair[1].header.prev_hash, pair[0].header.hash);
    }

    let (_, body, _) = get(&router, "/metrics").await;
    let text = String::from_utf8(body).unwrap();
    for line in [
        "ledger_height 3",
        "ledger_entries_committed_total 3",
        "ledger_commit_latency_seconds_count 3",
        "ledger_pow_hash_rate",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
    test.stop().await;
}

async fn latest_log_root(router: &Router) -> String {
    let (_, body, _) = get(router, "/v1/blocks/latest").await;
    json::<BlockView>(&body).header.log_root
}

#[tokio::test]
async fn concurrent_resubmits_are_accepted_exactly_once() {
    // Blocks every 2 ms, so commits race the resubmits constantly.
    let test = node_with(settings(4, Duration::from_millis(2), 10_000), true);
    let router = test.router();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let router = router.clone();
        tasks.push(tokio::spawn(async move {
            let mut accepted = Vec::new();
            for round in 0..40 {
                let data = format!("contested {}", round % 10);
                let (status, _, _) =
                    post(&router, "/v1/entries", Some(json!({ "data": data }))).await;
                match status {
                    StatusCode::ACCEPTED => accepted.push(data),
                    StatusCode::CONFLICT => {}
                    other => panic!("unexpected {other}"),
                }
                tokio::task::yield_now().await;
            }
            accepted
        }));
    }
    let mut accepted = Vec::new();
    for task in tasks {
        accepted.extend(task.await.unwrap());
    }
    accepted.sort();
    let distinct = accepted.len();
    accepted.dedup();
    assert_eq!(distinct, accepted.len(), "an entry was accepted twice");
    assert_eq!(accepted.len(), 10);
    test.stop().await;
}

#[tokio::test]
async fn blocks_mined_while_their_parent_applies_chain_onto_it() {
    // Three entries a block, cut at once: each block is built on the one still being
    // applied and mined meanwhile (difficulty 4 mines in microseconds, the durable
    // apply takes milliseconds), so a template built on the stored tip would be
    // refused at apply and its entries dropped.
    let test = node_with(settings(3, Duration::from_millis(1), 10_000), true);
    let router = test.router();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let router = router.clone();
        tasks.push(tokio::spawn(async move {
            let (status, body, _) = post(
                &router,
                "/v1/entries?wait=commit",
                Some(json!({ "data": format!("pipelined {i}") })),
            )
            .await;
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            json::<CommittedView>(&body).receipt
        }));
    }
    let spec = test.node.store().spec().clone();
    let mut heights = Vec::new();
    for task in tasks {
        let receipt = task.await.unwrap();
        let receipt = Receipt::try_from(&receipt).unwrap();
        receipt.verify(&spec).unwrap();
        heights.push(receipt.header.height);
    }
    heights.sort_unstable();
    heights.dedup();
    let tip = height(&router).await;
    assert!(heights.len() >= 20, "60 entries in blocks of at most 3");
    assert_eq!(test.node.store().verify_chain().unwrap(), tip);
    test.stop().await;
}

/// An empty block (`POST /mine`) that fails to apply hands nothing back to wake the
/// producer, and submits are refused while the database fails: an idle producer
/// still notices the failure, reopens the database once the disk takes writes, and
/// serves again with nobody submitting.
#[tokio::test]
async fn an_idle_node_recovers_a_failed_database_by_itself() {
    use ledger::testing::FailingDisk;
    use std::sync::atomic::Ordering;

    let disk = FailingDisk::default();
    let reopened = disk.clone();
    let spec = spec(&[key(1)], DIFFICULTY);
    let store = Store::from_database(
        disk.database().unwrap(),
        "memory".into(),
        &spec,
        StoreOptions::default(),
    )
    .unwrap()
    .reopen_with(move || {
        reopened
            .database()
            .map_err(|error| ledger::storage::StoreError::Unavailable(error.to_string()))
    });
    let settings = settings(10, Duration::from_millis(5), 100);
    let test = TestNode::serving(tempfile::tempdir().unwrap(), store, settings, true);
    let router = test.router();
    assert_eq!(post(&router, "/mine", None).await.0, StatusCode::OK);

    disk.failing_writes.store(true, Ordering::Relaxed);
    let (status, body, _) = post(&router, "/mine", None).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "mine_failed")
    );
    let (status, body, _) = get(&router, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(json::<ErrorBody>(&body).message.contains("database failed"));
    let (status, body, _) = post(&router, "/v1/entries", Some(json!({"data": "now"}))).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
    );

    disk.failing_writes.store(false, Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while get(&router, "/readyz").await.0 != StatusCode::OK {
        assert!(
            std::time::Instant::now() < deadline,
            "the node never recovered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body, _) = post(&router, "/mine", None).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(test.node.store().verify_chain().unwrap(), 2);
    test.stop().await;
}

#[tokio::test]
async fn members_shows_the_membership_its_admins_and_a_change_on_its_way() {
    let fixed = quick_node();
    let (status, body, _) = get(&fixed.router(), "/v1/members").await;
    assert_eq!(status, StatusCode::OK);
    let members: MembersView = json(&body);
    assert_eq!(
        (members.epoch, members.since, members.f, members.quorum),
        (0, 1, 0, 1)
    );
    assert!(members.members[0].connected);
    assert_eq!((members.admins, members.pending), (None, None));
    fixed.stop().await;

    // A chain with one admin, whose first block holds a change.
    let dir = tempfile::tempdir().unwrap();
    let admin = key(30);
    let spec = ledger::testing::spec_with_admins(
        &[key(1)],
        DIFFICULTY,
        4,
        std::slice::from_ref(&admin),
        1,
    );
    let store = Store::open(
        &dir.path().join("ledger.redb"),
        &spec,
        StoreOptions::default(),
    )
    .unwrap();
    let mut change = ledger::chain::Reconfiguration::new(
        0,
        ledger::chain::Change::AddLearner {
            public_key: key(9).verifying_key(),
            p2p_addr: "127.0.0.1:7109".into(),
            api_addr: None,
        },
    )
    .unwrap();
    change.sign(&admin, &spec.chain_hash());
    let (tip, log) = store.tip_with_log().unwrap();
    let block = next_block(&tip, &log, vec![change.to_entry()], DIFFICULTY);
    store
        .apply_block(&block, &certify(&[key(1)], &block))
        .unwrap();
    let test = TestNode::serving(
        dir,
        store,
        settings(100, Duration::from_millis(5), 10),
        false,
    );
    let (_, body, _) = get(&test.router(), "/v1/members").await;
    let members: MembersView = json(&body);
    let admins = members.admins.expect("the chain has admins");
    assert_eq!(admins.keys, [hex::encode(admin.verifying_key().as_bytes())]);
    assert_eq!(admins.threshold, 1);
    let pending = members.pending.expect("the change is on its way");
    assert_eq!(
        (pending.kind.as_str(), pending.height, pending.in_force_from),
        ("add_learner", 1, 5)
    );
    assert_eq!(
        pending.public_key,
        hex::encode(key(9).verifying_key().as_bytes())
    );
    assert!(members.learners.is_empty());
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let test = quick_node();
    let router = test.router();
    let id_of = |headers: &axum::http::HeaderMap| {
        headers
            .get("x-request-id")
            .expect("x-request-id on every answer")
            .to_str()
            .unwrap()
            .to_owned()
    };
    // Made up when the client sent none: 16 hex characters, another each time.
    let (_, _, first) = get(&router, "/v1/status").await;
    let (_, _, second) = get(&router, "/no/such/route").await;
    let (first, second) = (id_of(&first), id_of(&second));
    assert_eq!(first.len(), 16);
    assert!(first.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
    assert_ne!(first, second);
    // The client's own comes back; one that is not a usable header value does not.
    let ask = |id: &str| {
        Request::get("/healthz")
            .header("x-request-id", id)
            .body(Body::empty())
            .unwrap()
    };
    let echoed = router.clone().oneshot(ask("trace-42")).await.unwrap();
    assert_eq!(id_of(echoed.headers()), "trace-42");
    let long = "x".repeat(200);
    let replaced = router.clone().oneshot(ask(&long)).await.unwrap();
    assert_eq!(id_of(replaced.headers()).len(), 16);
    test.stop().await;
}

#[tokio::test]
async fn cors_answers_only_the_configured_origins() {
    let test = quick_node();
    async fn preflight(router: Router, origin: &str) -> Option<String> {
        let request = Request::builder()
            .method(Method::OPTIONS)
            .uri("/v1/entries")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(header::ACCESS_CONTROL_REQUEST_HEADERS, "content-type")
            .body(Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        response
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .map(|value| value.to_str().unwrap().to_owned())
    }
    // Off by default: no CORS headers for anyone.
    assert_eq!(preflight(test.router(), "https://app.example").await, None);
    let layer = ledger::api::cors(&["https://app.example".into()])
        .unwrap()
        .expect("a layer");
    let open = test.router().layer(layer);
    assert_eq!(
        preflight(open.clone(), "https://app.example")
            .await
            .as_deref(),
        Some("https://app.example")
    );
    assert_eq!(preflight(open.clone(), "https://evil.example").await, None);
    // A plain GET from the origin may read the answer and its request id.
    let request = Request::get("/v1/status")
        .header(header::ORIGIN, "https://app.example")
        .body(Body::empty())
        .unwrap();
    let response = open.oneshot(request).await.unwrap();
    let headers = response.headers();
    assert_eq!(
        headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example"
    );
    assert!(headers[header::ACCESS_CONTROL_EXPOSE_HEADERS]
        .to_str()
        .unwrap()
        .contains("x-request-id"));
    assert!(ledger::api::cors(&["bad\norigin".into()]).is_err());
    test.stop().await;
}
