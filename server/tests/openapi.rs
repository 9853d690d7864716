//! The OpenAPI document and the router come from the same annotations; these tests
//! keep that true: every documented operation is routed, and the documented set is
//! exactly the API this build serves.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use ledger::api::auth::{secret_hash, Access, TokenConfig, Tokens};
use ledger::api::{guarded_router, openapi, router};
use ledger::node::{Node, NodeSettings};
use ledger::storage::{Store, StoreOptions};
use ledger::testing::{key, spec};
use tower::ServiceExt;

/// Every operation the single-node API serves, and the least role it needs (none:
/// open to anyone, as probes and scrapers are).
const OPERATIONS: &[(&str, &str, Option<&str>)] = &[
    ("post", "/v1/entries", Some("submit")),
    ("post", "/v1/entries/batch", Some("submit")),
    ("get", "/v1/entries/{id}", Some("read")),
    ("get", "/v1/blocks", Some("read")),
    ("get", "/v1/blocks/latest", Some("read")),
    ("get", "/v1/blocks/{id}", Some("read")),
    ("get", "/v1/blocks/{height}/committed", Some("read")),
    ("get", "/v1/consensus/prepared", Some("read")),
    ("get", "/v1/proofs/consistency", Some("read")),
    ("get", "/v1/status", Some("read")),
    ("get", "/v1/members", Some("read")),
    ("get", "/v1/snapshots/latest", Some("read")),
    ("get", "/v1/snapshots/{height}", Some("read")),
    ("get", "/v1/snapshots/{height}/chunks/{index}", Some("read")),
    ("get", "/v1/openapi.json", None),
    ("get", "/chain", Some("read")),
    ("post", "/mine", Some("admin")),
    ("post", "/v1/admin/reconfigurations", Some("admin")),
    ("get", "/healthz", None),
    ("get", "/readyz", None),
    ("get", "/metrics", None),
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
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    expected.sort();
    assert_eq!(documented(), expected);
    let document = serde_json::to_value(openapi()).unwrap();
    // Each operation names the role it needs, and the answers a guard may give.
    assert_eq!(
        document["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    for (method, path, role) in OPERATIONS {
        let operation = &document["paths"][path][method];
        let security = serde_json::json!(match role {
            Some(role) => serde_json::json!([{ "bearer": [role] }]),
            None => serde_json::json!([{}]),
        });
        assert_eq!(operation["security"], security, "{method} {path}");
        let responses = &operation["responses"];
        assert!(responses["429"].is_object(), "{method} {path}");
        assert_eq!(
            responses["401"].is_object() && responses["403"].is_object(),
            role.is_some(),
            "{method} {path}"
        );
    }
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
    let router = router(node.clone());
    // The same routes behind tokens: the guard asks exactly the documented role.
    let secret = |name: &str| format!("ledger_{name}");
    let tokens: Vec<TokenConfig> = ["read", "submit", "admin"]
        .into_iter()
        .map(|role| TokenConfig {
            name: role.into(),
            role: serde_json::from_value(serde_json::json!(role)).unwrap(),
            sha256: secret_hash(&secret(role)),
        })
        .collect();
    let access = Access::new(
        &openapi(),
        Tokens::new(&tokens).unwrap(),
        None,
        Arc::default(),
    );
    let guarded = guarded_router(node, Arc::new(access));
    let roles = ["read", "submit", "admin"];
    // HEAD is a GET without its body, and needs what the GET needs.
    let heads = OPERATIONS
        .iter()
        .filter(|(method, _, _)| *method == "get")
        .map(|&(_, path, role)| ("head", path, role));
    for (method, path, role) in OPERATIONS.iter().copied().chain(heads) {
        let uri = path
            .replace("{id}", "0")
            .replace("{height}", "0")
            .replace("{index}", "0");
        for presented in [None, Some("read"), Some("submit"), Some("admin")] {
            let mut request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri);
            if let Some(name) = presented {
                request = request.header("authorization", format!("Bearer {}", secret(name)));
            }
            // An empty body: the guard answers before any handler reads it.
            let response = guarded
                .clone()
                .oneshot(request.body(Body::from("{")).unwrap())
                .await
                .unwrap();
            let rank = |name: &str| roles.iter().position(|r| *r == name);
            let expected = match (role, presented) {
                (None, _) => None,
                (Some(_), None) => Some(StatusCode::UNAUTHORIZED),
                (Some(needed), Some(held)) if rank(held) < rank(needed) => {
                    Some(StatusCode::FORBIDDEN)
                }
                (Some(_), Some(_)) => None,
            };
            let status = response.status();
            match expected {
                Some(expected) => assert_eq!(status, expected, "{method} {path} as {presented:?}"),
                None => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{method} {path} as {presented:?}: {status}"
                ),
            }
        }
    }
    // A method a route does not take is 405 whoever asks: nothing runs to guard.
    for method in ["OPTIONS", "DELETE", "PUT"] {
        let request = Request::builder().method(method).uri("/v1/status");
        let response = guarded
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
    }

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
