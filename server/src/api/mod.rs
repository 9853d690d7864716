//! The client HTTP API (axum). [`router`] builds it over a [`Node`]; tests drive it
//! with `oneshot` and no socket. Errors are rendered in one place ([`ApiError`]).

mod error;
pub mod types;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use error::{ApiError, ErrorBody};
use types::{
    Accepted, BlockView, CommittedView, ConsistencyView, EntryView, HeaderView, MemberView,
    MinedView, ReceiptView, StatusView, SubmitRequest,
};

use crate::chain::{Block, Hash};
use crate::node::{Committed, Node};
use crate::storage::{Store, StoreError};

/// Most entries in one batch submit.
pub const MAX_BATCH: usize = 10_000;
/// Most blocks in one page of `GET /v1/blocks`.
pub const MAX_PAGE: u64 = 100;
/// Default and longest wait of `?wait=commit`.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(300);

/// The API over `node`.
pub fn router(node: Arc<Node>) -> Router {
    let max_entry = node.store().spec().params.max_entry_bytes as usize;
    // Base64 grows data by 4/3 and JSON escapes can double text; add room for the
    // author fields. The limit applies before any parsing.
    let entry_body_limit = max_entry * 2 + 4096;
    let batch_body_limit = (entry_body_limit * 16).max(32 << 20);
    Router::new()
        .route(
            "/v1/entries",
            post(submit).layer(DefaultBodyLimit::max(entry_body_limit)),
        )
        .route(
            "/v1/entries/batch",
            post(submit_batch).layer(DefaultBodyLimit::max(batch_body_limit)),
        )
        .route("/v1/entries/{id}", get(get_entry))
        .route("/v1/blocks", get(list_blocks))
        .route("/v1/blocks/latest", get(latest_block))
        .route("/v1/blocks/{id}", get(get_block))
        .route("/v1/proofs/consistency", get(consistency))
        .route("/v1/status", get(status))
        .route("/chain", get(whole_chain))
        .route("/mine", post(mine))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            let body = Json(ErrorBody {
                error: "method_not_allowed".into(),
                message: "this route does not take that method".into(),
            });
            (StatusCode::METHOD_NOT_ALLOWED, body)
        })
        .with_state(node)
}

/// A JSON body whose size limit and syntax errors become [`ApiError`]s, not plain text.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large("request body exceeds the limit")
                } else {
                    ApiError::malformed(rejection.body_text())
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|error| ApiError::malformed(format!("invalid JSON: {error}")))
    }
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(value)| value)
        .map_err(|rejection| ApiError::malformed(rejection.body_text()))
}

/// Runs blocking store reads off the async workers.
async fn read<T: Send + 'static>(
    node: &Arc<Node>,
    work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = Arc::clone(node.store());
    tokio::task::spawn_blocking(move || work(&store))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitQuery {
    /// `commit` to answer once committed.
    wait: Option<String>,
    /// How long to wait, ms (default 30 s, at most 300 s).
    timeout_ms: Option<u64>,
}

async fn submit(
    State(node): State<Arc<Node>>,
    options: Result<Query<SubmitQuery>, QueryRejection>,
    JsonBody(request): JsonBody<SubmitRequest>,
) -> Result<Response, ApiError> {
    let options = query(options)?;
    let wait = match options.wait.as_deref() {
        None => false,
        Some("commit") => true,
        Some(other) => {
            return Err(ApiError::malformed(format!(
                "wait={other:?}: the only wait is \"commit\""
            )))
        }
    };
    let timeout = options
        .timeout_ms
        .map_or(DEFAULT_WAIT, Duration::from_millis)
        .min(MAX_WAIT);
    let entry = request.into_entry().map_err(ApiError::malformed)?;
    let (id, receiver) = node.submit(entry, wait).await.inspect_err(|_| {
        node.metrics()
            .entries_rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    })?;
    let Some(receiver) = receiver else {
        return Ok((StatusCode::ACCEPTED, Json(Accepted { id: id.to_hex() })).into_response());
    };
    let committed = match tokio::time::timeout(timeout, receiver).await {
        Ok(Ok(committed)) => committed,
        Ok(Err(_)) => {
            return Err(ApiError::unavailable(
                "commit_failed",
                format!("the block holding entry {id} failed; resubmit it"),
            ))
        }
        Err(_) => {
            return Err(ApiError::commit_timeout(format!(
                "entry {id} is accepted but not committed after {} ms; poll GET /v1/entries/{id}",
                timeout.as_millis()
            )))
        }
    };
    Ok(Json(committed_view(&node, id, committed).await?).into_response())
}

async fn committed_view(
    node: &Arc<Node>,
    id: Hash,
    committed: Committed,
) -> Result<CommittedView, ApiError> {
    let receipt = read(node, move |store| store.receipt(&id))
        .await?
        .ok_or_else(|| ApiError::internal(format!("committed entry {id} has no receipt")))?;
    Ok(CommittedView {
        id: id.to_hex(),
        height: committed.height,
        block_hash: committed.block_hash.to_hex(),
        receipt: ReceiptView::from(&receipt),
    })
}

/// One item of a batch answer: the id, or why that entry was refused.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BatchItem {
    /// Accepted.
    Accepted(Accepted),
    /// Refused, with the status a single submit would have had.
    Refused {
        /// HTTP status of the refusal.
        status: u16,
        /// Error code and message.
        #[serde(flatten)]
        error: ErrorBody,
    },
}

async fn submit_batch(
    State(node): State<Arc<Node>>,
    JsonBody(requests): JsonBody<Vec<serde_json::Value>>,
) -> Result<Response, ApiError> {
    if requests.len() > MAX_BATCH {
        return Err(ApiError::too_large(format!(
            "a batch holds at most {MAX_BATCH} entries, this one {}",
            requests.len()
        )));
    }
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        // Items are parsed one by one, so one malformed item refuses only itself.
        let entry = serde_json::from_value::<SubmitRequest>(request)
            .map_err(|error| error.to_string())
            .and_then(SubmitRequest::into_entry);
        let outcome = match entry {
            Ok(entry) => node.submit(entry, false).await.map_err(ApiError::from),
            Err(reason) => Err(ApiError::malformed(reason)),
        };
        results.push(match outcome {
            Ok((id, _)) => BatchItem::Accepted(Accepted { id: id.to_hex() }),
            Err(error) => {
                let status = error.status().as_u16();
                let response = error.into_response();
                let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
                    .await
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<ErrorBody>(&bytes).ok())
                    .unwrap_or(ErrorBody {
                        error: "internal".into(),
                        message: String::new(),
                    });
                BatchItem::Refused {
                    status,
                    error: body,
                }
            }
        });
    }
    Ok((StatusCode::ACCEPTED, Json(results)).into_response())
}

fn parse_hash(text: &str) -> Result<Hash, ApiError> {
    text.parse()
        .map_err(|_| ApiError::malformed(format!("{text:?} is not a 64-character hex hash")))
}

async fn get_entry(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<EntryView>, ApiError> {
    let id = parse_hash(&id)?;
    let found = read(&node, move |store| {
        let Some(receipt) = store.receipt(&id)? else {
            return Ok(None);
        };
        let block = store.block(receipt.header.height)?;
        let entry = block.and_then(|block| {
            let location = store.entry_location(&id).ok().flatten()?;
            block.entries.get(location.position as usize).cloned()
        });
        Ok(entry.map(|entry| (entry, receipt)))
    })
    .await?;
    match found {
        Some((entry, receipt)) => Ok(Json(EntryView::committed(&entry, &receipt))),
        None if node.is_pending(&id) => Ok(Json(EntryView::pending(&id))),
        None => Err(ApiError::not_found(format!("no entry {id}"))),
    }
}

fn block_view(block: &Block) -> BlockView {
    BlockView {
        header: HeaderView::from(&block.header),
        entries: block.entry_ids().iter().map(Hash::to_hex).collect(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    from: Option<u64>,
    limit: Option<u64>,
}

async fn list_blocks(
    State(node): State<Arc<Node>>,
    page: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Vec<BlockView>>, ApiError> {
    let page = query(page)?;
    let from = page.from.unwrap_or(0);
    let limit = page.limit.unwrap_or(20).clamp(1, MAX_PAGE);
    let blocks = read(&node, move |store| {
        let tip = store.tip()?.height;
        let mut blocks = Vec::new();
        for height in (from..=tip).take(limit as usize) {
            if let Some(block) = store.block(height)? {
                blocks.push(block_view(&block));
            }
        }
        Ok(blocks)
    })
    .await?;
    Ok(Json(blocks))
}

async fn latest_block(State(node): State<Arc<Node>>) -> Result<Json<BlockView>, ApiError> {
    let block = read(&node, |store| {
        let height = store.tip()?.height;
        store.block(height)
    })
    .await?;
    block
        .map(|block| Json(block_view(&block)))
        .ok_or_else(|| ApiError::internal("the tip block is missing"))
}

async fn get_block(
    State(node): State<Arc<Node>>,
    Path(id): Path<String>,
) -> Result<Json<BlockView>, ApiError> {
    let by_height = id.parse::<u64>().ok();
    let by_hash = if by_height.is_none() {
        Some(parse_hash(&id)?)
    } else {
        None
    };
    let block = read(&node, move |store| {
        let height = match (by_height, by_hash) {
            (Some(height), _) => Some(height),
            (None, Some(hash)) => store.height_of(&hash)?,
            (None, None) => None,
        };
        match height {
            Some(height) => store.block(height),
            None => Ok(None),
        }
    })
    .await?;
    block
        .map(|block| Json(block_view(&block)))
        .ok_or_else(|| ApiError::not_found(format!("no block {id}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

async fn consistency(
    State(node): State<Arc<Node>>,
    sizes: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> Result<Json<ConsistencyView>, ApiError> {
    let ConsistencyQuery { from, to } = query(sizes)?;
    let view = read(&node, move |store| {
        let log_size = store.tip()?.log_size;
        if from > to || to > log_size {
            return Ok(Err(ApiError::malformed(format!(
                "need from <= to <= {log_size} (the log size), got from={from} to={to}"
            ))));
        }
        Ok(Ok(ConsistencyView {
            from,
            to,
            from_root: store.log_root(from)?.to_hex(),
            to_root: store.log_root(to)?.to_hex(),
            proof: store
                .consistency_proof(from, to)?
                .iter()
                .map(Hash::to_hex)
                .collect(),
        }))
    })
    .await??;
    Ok(Json(view))
}

async fn status(State(node): State<Arc<Node>>) -> Result<Json<StatusView>, ApiError> {
    let tip = read(&node, |store| store.tip()).await?;
    let store = node.store();
    let spec = store.spec();
    let members = spec.members.as_slice();
    let self_id = node.node_id();
    Ok(Json(StatusView {
        node_id: self_id.to_hex(),
        chain_id: spec.chain_id.clone(),
        chain_hash: store.chain_hash().to_hex(),
        genesis_hash: store.genesis_hash().to_hex(),
        view: 0,
        primary: members[0].node_id.to_hex(),
        height: tip.height,
        tip_hash: tip.hash().to_hex(),
        log_size: tip.log_size,
        stable_checkpoint: None,
        f: spec.members.max_faulty(),
        members: members
            .iter()
            .map(|member| MemberView {
                node_id: member.node_id.to_hex(),
                public_key: hex::encode(member.public_key.as_bytes()),
                p2p_addr: member.p2p_addr.clone(),
                api_addr: member.api_addr.clone(),
                connected: member.node_id == self_id,
            })
            .collect(),
        difficulty: spec.difficulty,
        pool_size: node.pool_size(),
        plugins: Vec::new(),
    }))
}

/// `GET /chain`: every block as one JSON array, streamed a block at a time from a
/// blocking reader, so memory stays flat however long the chain.
async fn whole_chain(State(node): State<Arc<Node>>) -> Response {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Bytes>(16);
    let store = Arc::clone(node.store());
    tokio::task::spawn_blocking(move || {
        let tip = match store.tip() {
            Ok(tip) => tip.height,
            Err(error) => return tracing::error!(%error, "GET /chain"),
        };
        if sender.blocking_send(Bytes::from_static(b"[")).is_err() {
            return;
        }
        for height in 0..=tip {
            let block = match store.block(height) {
                Ok(Some(block)) => block,
                other => return tracing::error!(?other, height, "GET /chain stopped"),
            };
            let mut bytes = if height == 0 {
                Vec::new()
            } else {
                b",".to_vec()
            };
            if serde_json::to_writer(&mut bytes, &block_view(&block)).is_err()
                || sender.blocking_send(bytes.into()).is_err()
            {
                return; // the client went away
            }
        }
        let _ = sender.blocking_send(Bytes::from_static(b"]"));
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver
            .recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), receiver))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

async fn mine(State(node): State<Arc<Node>>) -> Result<Json<MinedView>, ApiError> {
    if !node.is_ready() {
        return Err(ApiError::unavailable(
            "not_ready",
            "the node is not producing blocks now",
        ));
    }
    match node.request_block().await {
        Ok(Ok(header)) => Ok(Json(MinedView {
            header: HeaderView::from(&header),
        })),
        Ok(Err(reason)) => Err(ApiError::unavailable("mine_failed", reason)),
        Err(_) => Err(ApiError::unavailable(
            "not_ready",
            "the node stopped before mining",
        )),
    }
}

async fn readyz(State(node): State<Arc<Node>>) -> Result<&'static str, ApiError> {
    if node.is_ready() {
        Ok("ready\n")
    } else {
        Err(ApiError::unavailable(
            "not_ready",
            "starting up or shutting down",
        ))
    }
}

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        node.metrics().render(),
    )
}
