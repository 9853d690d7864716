//! What `ops/` ships checks out: the alert rules load and fire as their unit tests say
//! (promtool), every metric the rules and the dashboard read is one a node exports, the
//! Kubernetes manifests pass the API's schemas, and their node configs load.

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::Request;
use ledger::api::router;
use ledger::node::{Node, NodeSettings};
use ledger::storage::{Store, StoreOptions};
use ledger::testing::{key, spec};
use tower::ServiceExt;

const OPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../ops");

fn promtool(args: &[&str]) -> String {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(OPS)
        .output()
        .expect("promtool not found: apt-get install prometheus");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}: {text}");
    text
}

#[test]
fn the_alert_rules_load_and_pass_their_unit_tests() {
    let checked = promtool(&["check", "rules", "prometheus/ledger-rules.yml"]);
    assert!(checked.contains("SUCCESS: 13 rules found"), "{checked}");
    let tested = promtool(&["test", "rules", "prometheus/ledger-rules.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Names that look like the node's metrics (`ledger_*`, `process_*`) in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["ledger_", "process_"] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let preceded = text.len() - rest.len() + at;
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            // Part of a longer word (node_filesystem_..., a file name) is no metric.
            let previous = text[..preceded].chars().last();
            if previous.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                continue;
            }
            names.insert(name);
        }
    }
    names
}

async fn exported() -> BTreeSet<String> {
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
    let response = router(node)
        .oneshot(
            Request::get("/metrics")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .unwrap();
    let body = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let mut names = BTreeSet::new();
    for line in text.lines().filter(|line| line.starts_with("# TYPE ")) {
        let mut words = line.split_whitespace().skip(2);
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

#[tokio::test]
async fn the_rules_and_the_dashboard_read_only_metrics_a_node_exports() {
    let exported = exported().await;
    for expected in [
        "ledger_build_info",
        "ledger_role",
        "ledger_members",
        "ledger_quorum",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(exported.contains(expected), "{expected} not exported");
    }
    for file in [
        "prometheus/ledger-rules.yml",
        "grafana/ledger-dashboard.json",
    ] {
        let text = std::fs::read_to_string(format!("{OPS}/{file}")).unwrap();
        if file.ends_with(".json") {
            let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(dashboard["panels"].as_array().unwrap().len() >= 10);
        }
        let read = metric_names(&text);
        assert!(read.len() >= 10, "{file}: {read:?}");
        let unknown: Vec<&String> = read.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{file} reads {unknown:?}, which no node exports"
        );
    }
}

#[test]
fn the_kubernetes_manifests_pass_the_api_schemas_and_their_configs_load() {
    let output = Command::new("kubernetes-validate")
        .args(["-k", "1.31.0", "--strict", "kubernetes/ledger.yaml"])
        .current_dir(OPS)
        .output()
        .expect("kubernetes-validate not found: pip install kubernetes-validate");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    for resource in [
        "service/ledger-peers",
        "service/ledger-api",
        "poddisruptionbudget/ledger-members",
        "statefulset/ledger",
        "statefulset/ledger-follower",
    ] {
        assert!(
            text.contains(&format!("passed for resource {resource}")),
            "{text}"
        );
    }
    for (file, follower) in [("ledgerd.toml", false), ("follower.toml", true)] {
        let config = ledger::config::NodeConfig::load(std::path::Path::new(&format!(
            "{OPS}/kubernetes/{file}"
        )))
        .unwrap();
        assert_eq!(config.follower, follower, "{file}");
        assert_eq!(config.data_dir, std::path::PathBuf::from("/var/lib/ledger"));
        assert_eq!(config.api_listen.port(), 7100);
    }
}
