//! The OpenAPI document and the router come from the same annotations; these tests
//! keep that true: every documented operation is routed, and the documented set is
//! exactly the API this build serves.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use ledger::api::{openapi, router};
use ledger::node::{Node, NodeSettings};
use ledger::storage::{Store, StoreOptions};
use ledger::testing::{key, spec};
use tower::ServiceExt;

/// Every operation the single-node API serves.
const OPERATIONS: &[(&str, &str)] = &[
    ("post", "/v1/entries"),
    ("post", "/v1/entries/batch"),
    ("get", "/v1/entries/{id}"),
    ("get", "/v1/blocks"),
    ("get", "/v1/blocks/latest"),
    ("get", "/v1/blocks/{id}"),
    ("get", "/v1/blocks/{height}/committed"),
    ("get", "/v1/proofs/consistency"),
    ("get", "/v1/status"),
    ("get", "/v1/members"),
    ("get", "/v1/snapshots/latest"),
    ("get", "/v1/snapshots/{height}"),
    ("get", "/v1/snapshots/{height}/chunks/{index}"),
    ("get", "/v1/openapi.json"),
    ("get", "/chain"),
    ("post", "/mine"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
];

fn documented() -> Vec<(String, String)> {
    let document = serde_json::to_value(openapi()).unwrap();
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "delete", "patch"].contains(&method.as_str()) {
                operations.push((method.clone(), path.clone()));
            }
        }
    }
    operations.sort();
    operations
}

#[test]
fn the_document_lists_exactly_the_served_operations() {
    let mut expected: Vec<(String, String)> = OPERATIONS
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    assert_eq!(documented(), expected);
    let document = serde_json::to_value(openapi()).unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    for name in [
        "SubmitRequest",
        "EntryView",
        "ReceiptView",
        "BlockView",
        "StatusView",
        "ErrorBody",
    ] {
        assert!(
            document["components"]["schemas"][name].is_object(),
            "schema {name} missing"
        );
    }
}

#[tokio::test]
async fn every_documented_operation_is_routed() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(&[key(1)], 2);
    let store = Store::open(&dir.path().join("l.redb"), &spec, StoreOptions::default()).unwrap();
    let settings = NodeSettings {
        max_block_entries: 10,
        max_block_delay: Duration::from_millis(5),
        pool_capacity: 10,
        mining_threads: NonZeroUsize::MIN,
    };
    let node = Arc::new(Node::alone(
        Arc::new(store),
        key(1),
        settings,
        Arc::default(),
        Arc::default(),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let producer = tokio::spawn(Arc::clone(&node).run(async {
        let _ = stopped.await;
    }));
    let router = router(node);

    for (method, path) in documented() {
        let uri = path
            .replace("{id}", "0")
            .replace("/consistency", "/consistency?from=0&to=0");
        let body = match path.as_str() {
            "/v1/entries" => r#"{"data":"routed"}"#,
            "/v1/entries/batch" => "[]",
            _ => "",
        };
        let request = Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(&uri)
            .body(Body::from(body))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let text = String::from_utf8(
            to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            !text.contains("no such route"),
            "{method} {path} is documented but not routed"
        );
    }
    // And the document is served.
    let response = router
        .clone()
        .oneshot(
            Request::get("/v1/openapi.json")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let served: serde_json::Value =
        serde_json::from_slice(&to_bytes(response.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!(served, serde_json::to_value(openapi()).unwrap());

    let _ = stop.send(());
    producer.await.unwrap();
}
