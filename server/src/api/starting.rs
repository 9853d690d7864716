//! The API of a node that is still starting: joining from a snapshot, opening or
//! checking its database, loading its plugins. It answers on the node's address
//! from the first moment, so an operator or a load balancer sees why the node is
//! not ready instead of a refused connection: `/healthz` 200, `/metrics`, and 503
//! `not_ready` with what the start is doing everywhere else; `/v1/status` adds a
//! join's progress to that answer. A client polling the status for readiness sees
//! 503 until the node serves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::engine::lock;
use crate::metrics::Metrics;

/// What a starting node is doing.
pub struct Starting {
    metrics: Arc<Metrics>,
    /// The current step, in words, and when it began.
    phase: Mutex<(&'static str, Instant)>,
    /// No database yet, so no chain: what a member that lost its disk asks of the
    /// others (join::highest_certified).
    holds_nothing: AtomicBool,
    /// Set when the node is asked to stop while it starts: the steps that wait on
    /// the members (a join, asking how far the chain has come) give up.
    stopping: Arc<AtomicBool>,
}

/// `GET /v1/status` while a node starts: the error body of every 503, and a join's
/// progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartingView {
    /// `not_ready`.
    pub error: String,
    /// What the start is doing, with the join's progress when it joins.
    pub message: String,
    /// A join's progress, once a snapshot is chosen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joining: Option<JoiningView>,
    /// The node has no database yet: it holds no block and signed nothing it
    /// remembers.
    #[serde(default)]
    pub holds_nothing: bool,
}

/// A join's progress.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JoiningView {
    /// The snapshot's height.
    pub height: u64,
    /// Its chunks.
    pub chunks: u64,
    /// Chunks checked and written, those of an interrupted earlier run included.
    pub chunks_held: u64,
    /// Bytes of chunks fetched by this run.
    pub bytes_fetched: u64,
    /// Seconds left at this run's rate, once it has fetched a chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<u64>,
}

impl Starting {
    /// A start whose progress `metrics` counts, at its first step.
    pub fn new(metrics: Arc<Metrics>) -> Arc<Starting> {
        Arc::new(Starting {
            metrics,
            phase: Mutex::new(("starting up", Instant::now())),
            holds_nothing: Default::default(),
            stopping: Default::default(),
        })
    }

    /// The flag a stop sets, for the steps that wait on the members.
    pub fn stopping(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.stopping)
    }

    /// Whether the node has no database (yet).
    pub fn set_holds_nothing(&self, nothing: bool) {
        self.holds_nothing.store(nothing, Ordering::Relaxed);
    }

    /// The step the start is at now.
    pub fn set_phase(&self, phase: &'static str) {
        *lock(&self.phase) = (phase, Instant::now());
    }

    /// What changes only when the start makes progress: its step, and a join's
    /// chunks held.
    pub fn progress(&self) -> (&'static str, u64) {
        let phase = lock(&self.phase).0;
        (phase, self.metrics.join_chunks_held.load(Ordering::Relaxed))
    }

    /// What the start is doing, for `/v1/status`, `/readyz` and systemd.
    pub fn view(&self) -> StartingView {
        let (phase, since) = *lock(&self.phase);
        let metrics = &self.metrics;
        let chunks = metrics.join_chunks.load(Ordering::Relaxed);
        let joining = (chunks > 0).then(|| {
            let held = metrics.join_chunks_held.load(Ordering::Relaxed);
            let fetched = metrics.snapshot_chunks_fetched.load(Ordering::Relaxed);
            let seconds = since.elapsed().as_secs_f64();
            JoiningView {
                height: metrics.join_height.load(Ordering::Relaxed),
                chunks,
                chunks_held: held,
                bytes_fetched: metrics.snapshot_bytes_fetched.load(Ordering::Relaxed),
                eta_s: (fetched > 0).then(|| {
                    (seconds / fetched as f64 * chunks.saturating_sub(held) as f64) as u64
                }),
            }
        });
        let message = match &joining {
            Some(join) => format!(
                "{phase}: {} of {} chunks of the snapshot at height {}{}",
                join.chunks_held,
                join.chunks,
                join.height,
                join.eta_s
                    .map(|eta| format!(", about {eta} s left"))
                    .unwrap_or_default()
            ),
            None => phase.to_owned(),
        };
        StartingView {
            error: "not_ready".into(),
            message,
            joining,
            holds_nothing: self.holds_nothing.load(Ordering::Relaxed),
        }
    }
}

/// The API of a starting node (see the module docs).
pub fn router(starting: Arc<Starting>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/consensus/prepared", get(prepared))
        .fallback(not_ready)
        .with_state(starting)
}

async fn status(State(starting): State<Arc<Starting>>) -> impl IntoResponse {
    let unavailable = axum::http::StatusCode::SERVICE_UNAVAILABLE;
    (
        unavailable,
        [(header::RETRY_AFTER, "1")],
        Json(starting.view()),
    )
}

async fn metrics(State(starting): State<Arc<Starting>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        starting.metrics.render(),
    )
}

/// A node without a database holds no prepared certificate: a member that lost
/// its disk may count the answer. One opening its database cannot say yet.
async fn prepared(State(starting): State<Arc<Starting>>) -> ApiError {
    match starting.holds_nothing.load(Ordering::Relaxed) {
        true => ApiError::not_found("this node holds no prepared certificate"),
        false => not_ready(State(starting)).await,
    }
}

async fn not_ready(State(starting): State<Arc<Starting>>) -> ApiError {
    ApiError::unavailable("not_ready", starting.view().message)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;

    async fn get(router: &Router, path: &str) -> (StatusCode, String) {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// While a node joins, its address says so everywhere: alive, not ready, and how
    /// far the transfer got.
    #[tokio::test]
    async fn a_joining_node_answers_with_its_progress() {
        let metrics = Arc::new(Metrics::default());
        let starting = Starting::new(Arc::clone(&metrics));
        let router = router(Arc::clone(&starting));
        assert_eq!(get(&router, "/healthz").await.0, StatusCode::OK);
        let (code, body) = get(&router, "/v1/status").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        let view: StartingView = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (view.error.as_str(), view.message.as_str()),
            ("not_ready", "starting up")
        );

        starting.set_phase("joining from a snapshot");
        metrics.join_height.store(500, Ordering::Relaxed);
        metrics.join_chunks.store(10, Ordering::Relaxed);
        metrics.join_chunks_held.store(4, Ordering::Relaxed);
        metrics.snapshot_chunks_fetched.store(2, Ordering::Relaxed);
        let view: StartingView = serde_json::from_str(&get(&router, "/v1/status").await.1).unwrap();
        let joining = view.joining.unwrap();
        assert_eq!(
            (joining.height, joining.chunks, joining.chunks_held),
            (500, 10, 4)
        );
        assert!(joining.eta_s.is_some());
        assert!(
            view.message.starts_with(
                "joining from a snapshot: 4 of 10 chunks of the snapshot at height 500"
            ),
            "{}",
            view.message
        );
        for path in ["/readyz", "/v1/status", "/v1/blocks/1", "/v1/entries"] {
            let (code, body) = get(&router, path).await;
            assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert!(body.contains("4 of 10 chunks"), "{path}: {body}");
        }
        let (code, body) = get(&router, "/metrics").await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("ledger_join_chunks_held 4"), "{body}");

        // Whether it holds a prepared certificate it can say only without a database.
        let prepared = "/v1/consensus/prepared";
        assert_eq!(
            get(&router, prepared).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        starting.set_holds_nothing(true);
        assert_eq!(get(&router, prepared).await.0, StatusCode::NOT_FOUND);
    }
}
