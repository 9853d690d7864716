//! The client HTTP API (axum). [`router`] builds it over a [`Node`]; tests drive it
//! with `oneshot` and no socket. Errors are rendered in one place ([`ApiError`]).

pub mod auth;
mod error;
mod receipts;
pub mod serve;
pub mod starting;
pub mod tls;
#[doc(inline)]
pub use ledger_client::types;

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

pub use error::{ApiError, ErrorBody};
use types::{
    Accepted, AdminsView, BlockView, ChangeAccepted, ChangeProofView, ChangeRequest, CommittedView,
    ConsistencyView, EntryView, HeaderView, LearnerView, MemberView, MembersView, MinedView,
    PendingChangeView, SettingsView, SnapshotView, StatusView, SubmitRequest,
};

use crate::chain::{Block, Hash};
use crate::node::{left_pool_message, Node, SubmitError};
use crate::storage::{Store, StoreError};

/// Most entries in one batch submit.
pub const MAX_BATCH: usize = 10_000;
/// Most blocks in one page of `GET /v1/blocks`.
pub const MAX_PAGE: u64 = 100;
/// Default and longest wait of `?wait=commit`.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
const MAX_WAIT: Duration = Duration::from_secs(300);

/// The API over `node`, open to anyone (no tokens, no rate limit): every route of the
/// OpenAPI document, `/v1/openapi.json`, and JSON 404/405 answers for everything else.
pub fn router(node: Arc<Node>) -> Router {
    let metrics = Arc::clone(node.metrics());
    let access = auth::Access::new(&openapi(), auth::Tokens::default(), None, metrics);
    guarded_router(node, Arc::new(access))
}

/// The API over `node` behind `access`: tokens, roles and rate limits.
pub fn guarded_router(node: Arc<Node>, access: Arc<auth::Access>) -> Router {
    let max_entry = node.store().spec().params.max_entry_bytes as usize;
    let (router, _) = documented_routes(max_entry).split_for_parts();
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            let body = Json(ErrorBody {
                error: "method_not_allowed".into(),
                message: "this route does not take that method".into(),
            });
            (StatusCode::METHOD_NOT_ALLOWED, body)
        })
        .with_state(node)
        .layer(axum::Extension(Arc::new(receipts::BlockParts::default())))
        .layer(axum::middleware::from_fn_with_state(access, auth::guard))
        .layer(axum::middleware::from_fn(request_id))
}

/// The CORS layer for `origins` (`"*"`: any), none for none: browser pages of those
/// origins may read answers, send JSON, and see `x-request-id` and `Retry-After`.
pub fn cors(origins: &[String]) -> Result<Option<tower_http::cors::CorsLayer>, String> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = match origins.iter().any(|origin| origin == "*") {
        true => AllowOrigin::any(),
        false => AllowOrigin::list(
            origins
                .iter()
                .map(|origin| {
                    header::HeaderValue::from_str(origin)
                        .map_err(|_| format!("cors_origins: {origin:?} is not an origin"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::HeaderName::from_static(REQUEST_ID),
            ])
            .expose_headers([
                header::HeaderName::from_static(REQUEST_ID),
                header::RETRY_AFTER,
            ]),
    ))
}

/// The header a request's id travels in, both ways.
const REQUEST_ID: &str = "x-request-id";

/// Gives every request an id (the client's `x-request-id` when it sent a usable one,
/// else a new one), sends it back on the response, names it in every log line the
/// request causes, and logs the request at debug: method, route, status, time, and
/// the caller's token name.
async fn request_id(request: Request, next: axum::middleware::Next) -> Response {
    let id = request
        .headers()
        .get(REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(
            || request.uri().path().to_owned(),
            |path| path.as_str().to_owned(),
        );
    let span = tracing::info_span!("request", id = %id);
    let started = std::time::Instant::now();
    let mut response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    span.in_scope(|| {
        let caller = response.extensions().get::<auth::Caller>();
        tracing::debug!(
            %method,
            route,
            token = caller.map(|caller| &*caller.name),
            status = response.status().as_u16(),
            micros = started.elapsed().as_micros() as u64,
            "answered"
        );
    });
    if let Ok(value) = header::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// 16 hex characters, distinct for every request this process answers: a counter from a
/// random start, mixed so that ids do not look sequential. One `getrandom` call per
/// process, not one per request (it was 1.4% of a busy member's CPU).
fn new_request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        let mut bytes = [0u8; 8];
        // Without randomness from the OS the counter alone still keeps ids distinct.
        getrandom::fill(&mut bytes).map_or(0, |()| u64::from_be_bytes(bytes))
    });
    let count = start.wrapping_add(COUNTER.fetch_add(1, Ordering::Relaxed));
    hex::encode(mix(count).to_be_bytes())
}

/// SplitMix64's finaliser: a bijection on `u64`, so distinct counts give distinct ids.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The OpenAPI 3 document, generated from the same handler annotations that build the
/// router, so the two cannot drift.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (_, mut api) = documented_routes(64 * 1024).split_for_parts();
    document_security(&mut api);
    api
}

/// Adds the bearer scheme the routes' `security` names, and to every operation the
/// answers [`auth::guard`] may give before its handler runs: 429 to all, 401 and 403
/// to those that need a role.
fn document_security(api: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement};
    use utoipa::openapi::{Content, Ref, ResponseBuilder};
    api.components
        .get_or_insert_with(Default::default)
        .add_security_scheme(
            "bearer",
            utoipa::openapi::security::SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token of `[[api.tokens]]` (`ledgerd token new`). Roles: read < \
                     submit < admin; each route's scope is the least role it needs. \
                     With no tokens configured the API is open.",
                    ))
                    .build(),
            ),
        );
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                Content::new(Some(Ref::from_schema_name("ErrorBody"))),
            )
            .build()
    };
    for item in api.paths.paths.values_mut() {
        for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
            let open = operation
                .security
                .as_ref()
                .is_some_and(|all| all.iter().any(|r| *r == SecurityRequirement::default()));
            let responses = &mut operation.responses.responses;
            if !open {
                responses.insert(
                    "401".into(),
                    error("No token, or one this node does not know").into(),
                );
                responses.insert(
                    "403".into(),
                    error("The token's role is below the route's").into(),
                );
            }
            responses.insert(
                "429".into(),
                error("Over the caller's rate limit; see Retry-After").into(),
            );
        }
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    components(schemas(Wait)),
    info(
        title = "Ledger",
        description = "A permissioned, Byzantine-fault-tolerant, persistent ledger. Hashes, keys and signatures are lowercase hex.",
        license(name = "Apache-2.0")
    )
)]
struct ApiDoc;

fn documented_routes(max_entry: usize) -> OpenApiRouter<Arc<Node>> {
    // JSON writes a byte of text in at most six (`\u0001`; `\u00e9`, six for the two
    // bytes of UTF-8), base64 in 4/3: an entry at the limit fits however it is
    // written, with room for the author fields. The limit applies before parsing.
    let entry_body_limit = max_entry * 6 + 4096;
    let batch_body_limit = (entry_body_limit * 16).max(32 << 20);
    let limited = |(schemas, paths, method): UtoipaMethodRouter<Arc<Node>>, limit: usize| {
        (schemas, paths, method.layer(DefaultBodyLimit::max(limit)))
    };
    OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(limited(routes!(submit), entry_body_limit))
        .routes(limited(routes!(submit_batch), batch_body_limit))
        .routes(routes!(get_entry))
        .routes(routes!(list_blocks))
        .routes(routes!(latest_block))
        .routes(routes!(get_block))
        .routes(routes!(committed_block))
        .routes(routes!(highest_prepared))
        .routes(routes!(consistency))
        .routes(routes!(status))
        .routes(routes!(members))
        .routes(routes!(latest_snapshot))
        .routes(routes!(snapshot))
        .routes(routes!(snapshot_chunk))
        .routes(routes!(whole_chain))
        .routes(routes!(mine))
        .routes(routes!(propose_change))
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// How long a request body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A JSON body whose size limit and syntax errors become [`ApiError`]s, not plain text.
struct JsonBody<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        // A body that trickles in holds a connection and a handler: not for long.
        let body = tokio::time::timeout(BODY_TIMEOUT, Bytes::from_request(request, state));
        let bytes = body
            .await
            .map_err(|_| {
                ApiError::too_slow(format!(
                    "the request body did not arrive within {BODY_TIMEOUT:?}"
                ))
            })?
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::too_large(
                        "the request body exceeds this route's limit (for an entry, six \
                         bytes for each of max_entry_bytes, the longest JSON of any entry)",
                    )
                } else {
                    ApiError::malformed(rejection.body_text())
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|error| ApiError::malformed(format!("invalid JSON: {error}")))
    }
}

/// An entry request from a JSON object. serde would also read a struct from an array,
/// which the documented schema does not allow.
fn entry_request(UniqueObject(object): UniqueObject) -> Result<SubmitRequest, String> {
    serde_json::from_value(serde_json::Value::Object(object))
        .map_err(|error| format!("invalid entry: {error}"))
}

/// A batch's items, one that is no entry object refused with its position: in a
/// batch of thousands, a line and column alone leave the client to search.
struct Items(Vec<UniqueObject>);

impl<'de> serde::Deserialize<'de> for Items {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Seq;
        impl<'de> serde::de::Visitor<'de> for Seq {
            type Value = Items;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an array of entry objects")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Items, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<UniqueObject>().map_err(|error| {
                    serde::de::Error::custom(format!("item {}: {error}", items.len()))
                })? {
                    items.push(item);
                }
                Ok(Items(items))
            }
        }
        deserializer.deserialize_seq(Seq)
    }
}

/// A JSON object that refuses a key given twice: serde_json keeps the last, and a
/// filter in front of the node that keeps the first would read another entry.
struct UniqueObject(serde_json::Map<String, serde_json::Value>);

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = UniqueObject;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UniqueObject, A::Error> {
                let mut object = serde_json::Map::new();
                while let Some((key, value)) = map.next_entry::<String, serde_json::Value>()? {
                    if object.contains_key(&key) {
                        return Err(serde::de::Error::custom(format!(
                            "the key {key:?} is given twice"
                        )));
                    }
                    object.insert(key, value);
                }
                Ok(UniqueObject(object))
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

/// Refuses integers beyond the int64 range the document declares.
fn int64(name: &str, value: u64) -> Result<u64, ApiError> {
    if value > i64::MAX as u64 {
        return Err(ApiError::malformed(format!("{name} is out of range")));
    }
    Ok(value)
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
    crate::engine::blocking(move || work(&store))
        .await
        .map_err(ApiError::from)
}

/// What a submit waits for before answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum Wait {
    /// The entry's block is committed.
    Commit,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitQuery {
    /// `commit` to answer once committed.
    wait: Option<Wait>,
    /// How long to wait, ms (default 30 s, at most 300 s).
    timeout_ms: Option<u64>,
}

/// Submit an entry; with `wait=commit`, answer once it is committed.
#[utoipa::path(post, path = "/v1/entries", tag = "entries",
    security(("bearer" = ["submit"])),
    params(
        ("wait" = Option<Wait>, Query, description = "`commit`: answer with the receipt once committed"),
        ("timeout_ms" = Option<u64>, Query, maximum = 300000, description = "How long to wait for the commit (default 30000, at most 300000)"),
    ),
    request_body = SubmitRequest,
    responses(
        (status = 200, description = "Committed (with wait=commit)", body = CommittedView),
        (status = 202, description = "Accepted into the pool (with wait=commit: still pending when the wait ran out)", body = Accepted),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 409, description = "Already submitted", body = ErrorBody),
        (status = 413, description = "Body or entry too large", body = ErrorBody),
        (status = 422, description = "Refused by validation, with the reason; with wait=commit, also an entry the plugins' block rules refuse in any block, which then leaves the pool", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
        (status = 503, description = "Pool full, node not ready or busy, or database failing; see Retry-After", body = ErrorBody),
    ))]
async fn submit(
    State(node): State<Arc<Node>>,
    axum::Extension(parts): axum::Extension<Arc<receipts::BlockParts>>,
    options: Result<Query<SubmitQuery>, QueryRejection>,
    JsonBody(request): JsonBody<UniqueObject>,
) -> Result<Response, ApiError> {
    let options = query(options)?;
    let request = entry_request(request).map_err(ApiError::malformed)?;
    let wait = options.wait == Some(Wait::Commit);
    let timeout = match options.timeout_ms {
        None => DEFAULT_WAIT,
        Some(ms) if Duration::from_millis(ms) <= MAX_WAIT => Duration::from_millis(ms),
        Some(_) => {
            return Err(ApiError::malformed(format!(
                "timeout_ms is at most {}",
                MAX_WAIT.as_millis()
            )))
        }
    };
    let entry = request.into_entry().map_err(ApiError::malformed)?;
    let submitted = node.submit(entry, wait).await.inspect_err(|_| {
        node.metrics()
            .entries_rejected
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let (id, receiver) = match submitted {
        Ok(submitted) => submitted,
        Err(SubmitError::Duplicate(id)) => return Err(duplicate(&node, id).await),
        Err(error) => return Err(error.into()),
    };
    let Some(receiver) = receiver else {
        return Ok((StatusCode::ACCEPTED, Json(Accepted { id: id.to_hex() })).into_response());
    };
    let receipt = match tokio::time::timeout(timeout, receiver).await {
        Ok(Ok(Ok(receipt))) => receipt,
        Ok(Ok(Err(reason))) => return Err(ApiError::rejected(left_pool_message(&id, &reason))),
        Ok(Err(_)) => {
            return Err(ApiError::unavailable(
                "commit_failed",
                format!(
                    "no receipt for entry {id}: its block failed or the receipt could not be \
                     built; GET /v1/entries/{id} says which, resubmit if it is unknown"
                ),
            ))
        }
        // The wait ran out: the entry is accepted and pending, which is no error.
        Err(_) => {
            return Ok((StatusCode::ACCEPTED, Json(Accepted { id: id.to_hex() })).into_response())
        }
    };
    let membership_proof = membership_proof(&node, receipt.header.height).await?;
    let body = parts
        .committed_json(&receipt, &membership_proof)
        .map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The 409 of an entry submitted before, saying whether it is committed (and where)
/// or pending: a client that resubmits after its wait ran out learns which without
/// a second request.
async fn duplicate(node: &Arc<Node>, id: Hash) -> ApiError {
    // The pool before the store, as `get_entry` asks them.
    let pending = node.is_pending(&id);
    let location = read(node, move |store| store.entry_location(&id)).await;
    let message = match location {
        Ok(Some(location)) => format!(
            "entry {id} is already committed, in block {}: GET /v1/entries/{id} answers \
             its receipt",
            location.height
        ),
        _ if pending => format!(
            "entry {id} was already submitted and is pending: GET /v1/entries/{id} says \
             when it commits"
        ),
        _ => SubmitError::Duplicate(id).to_string(),
    };
    ApiError::duplicate(message)
}

/// The membership changes a client needs beside a receipt of the block at `height`:
/// those ordered below it. None, and no read, while the genesis members order.
async fn membership_proof(node: &Arc<Node>, height: u64) -> Result<Vec<ChangeProofView>, ApiError> {
    let membership = node.store().membership();
    let changed = membership.epoch > 0
        || membership
            .pending
            .as_ref()
            .is_some_and(|pending| pending.height < height);
    if !changed {
        return Ok(Vec::new());
    }
    let changes = read(node, |store| store.membership_changes()).await?;
    Ok(changes
        .iter()
        .filter(|change| change.receipt.header.height < height)
        .map(ChangeProofView::from)
        .collect())
}

/// One item of a batch answer: `id` when accepted (status 202), or the error a single
/// submit would have had.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchItem {
    /// The HTTP status a single submit would have had.
    pub status: u16,
    /// The entry id, when accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The error code, when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The reason, when refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Submit many entries at once; each gets its own result.
#[utoipa::path(post, path = "/v1/entries/batch", tag = "entries",
    security(("bearer" = ["submit"])),
    request_body = Vec<SubmitRequest>,
    responses(
        (status = 202, description = "One result per entry, in order", body = Vec<BatchItem>),
        (status = 400, description = "Not an array of entry objects", body = ErrorBody),
        (status = 413, description = "Body or batch too large", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ))]
async fn submit_batch(
    State(node): State<Arc<Node>>,
    JsonBody(Items(requests)): JsonBody<Items>,
) -> Result<Response, ApiError> {
    if requests.len() > MAX_BATCH {
        return Err(ApiError::too_large(format!(
            "a batch holds at most {MAX_BATCH} entries, this one {}",
            requests.len()
        )));
    }
    // A malformed item makes the whole batch malformed, before anything is submitted;
    // what is refused per item is what a well-formed single submit can be refused for.
    let mut entries = Vec::with_capacity(requests.len());
    for (index, request) in requests.into_iter().enumerate() {
        let entry = entry_request(request)
            .and_then(|request| request.into_entry())
            .map_err(|reason| ApiError::malformed(format!("item {index}: {reason}")))?;
        entries.push(entry);
    }
    let mut results = Vec::with_capacity(entries.len());
    for entry in entries {
        results.push(
            match node.submit(entry, false).await.map_err(ApiError::from) {
                Ok((id, _)) => BatchItem {
                    status: StatusCode::ACCEPTED.as_u16(),
                    id: Some(id.to_hex()),
                    error: None,
                    message: None,
                },
                Err(error) => {
                    let body = error.body();
                    BatchItem {
                        status: error.status().as_u16(),
                        id: None,
                        error: Some(body.error),
                        message: Some(body.message),
                    }
                }
            },
        );
    }
    Ok((StatusCode::ACCEPTED, Json(results)).into_response())
}

fn parse_hash(text: &str) -> Result<Hash, ApiError> {
    text.parse().map_err(|_| {
        ApiError::malformed(format!("{} is not a 64-character hex hash", quoted(text)))
    })
}

fn parse_number(text: &str) -> Result<u64, ApiError> {
    text.parse()
        .map_err(|_| ApiError::malformed(format!("{} is not a whole number", quoted(text))))
}

/// A caller's value as an error quotes it: at most 80 characters of it.
fn quoted(text: &str) -> String {
    let length = text.chars().count();
    match length > 80 {
        true => format!(
            "{:?}… ({length} characters)",
            text.chars().take(80).collect::<String>()
        ),
        false => format!("{text:?}"),
    }
}

/// A path's values, or the JSON error a malformed one gets (not the framework's text).
fn path<T>(path: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    path.map(|Path(value)| value)
        .map_err(|rejection| ApiError::malformed(rejection.body_text()))
}

/// An entry, with its receipt once committed.
#[utoipa::path(get, path = "/v1/entries/{id}", tag = "entries",
    security(("bearer" = ["read"])),
    params(("id" = String, Path, pattern = r"^[0-9a-fA-F]{64}$", description = "Entry id, 64 hex characters")),
    responses(
        (status = 200, description = "The entry; `status` is pending or committed", body = EntryView),
        (status = 400, description = "Not a hex id", body = ErrorBody),
        (status = 404, description = "Unknown entry; `left_pool` for one accepted lately that left the pool uncommitted (the plugins' block rules refuse it in any block, or a membership change the membership no longer takes), the message saying why", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ))]
async fn get_entry(
    State(node): State<Arc<Node>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<EntryView>, ApiError> {
    let id = parse_hash(&path(id)?)?;
    // Asked before the store is read: every engine writes a block before its entries
    // leave the pool, and notes why before it lets one go, so an entry committed or
    // let go meanwhile is found in the store or with its why, never as unknown (which
    // a follower that forwarded it would take for a lost pool, and forward it again).
    let pending = node.is_pending(&id);
    let found = read(&node, move |store| store.entry_with_receipt(&id)).await?;
    match found {
        Some((entry, receipt)) => Ok(Json(EntryView {
            membership_proof: membership_proof(&node, receipt.header.height).await?,
            ..EntryView::committed(&entry, &receipt)
        })),
        None if pending => Ok(Json(EntryView::pending(&id))),
        None => match node.left_pool(&id) {
            Some(why) => Err(ApiError::left_pool(left_pool_message(&id, &why))),
            None => Err(ApiError::not_found(format!("no entry {id}"))),
        },
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

/// Blocks from a height, in order.
#[utoipa::path(get, path = "/v1/blocks", tag = "blocks",
    security(("bearer" = ["read"])),
    params(
        ("from" = Option<u64>, Query, description = "First height (default 0)"),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 100, description = "Most blocks (default 20)"),
    ),
    responses(
        (status = 200, description = "The page", body = Vec<BlockView>),
        (status = 400, description = "Malformed query", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ))]
async fn list_blocks(
    State(node): State<Arc<Node>>,
    page: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Vec<BlockView>>, ApiError> {
    let page = query(page)?;
    let from = int64("from", page.from.unwrap_or(0))?;
    let limit = page.limit.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::malformed(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
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

/// The highest block.
#[utoipa::path(get, path = "/v1/blocks/latest", tag = "blocks",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The tip", body = BlockView),
        (status = 500, description = "Internal error", body = ErrorBody),
    ))]
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

/// A block by height or hash.
#[utoipa::path(get, path = "/v1/blocks/{id}", tag = "blocks",
    security(("bearer" = ["read"])),
    params(("id" = String, Path, pattern = r"^([0-9]{1,20}|[0-9a-fA-F]{64})$", description = "A height, or a block hash in hex")),
    responses(
        (status = 200, description = "The block", body = BlockView),
        (status = 400, description = "Neither a height nor a hash", body = ErrorBody),
        (status = 404, description = "No such block", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ))]
async fn get_block(
    State(node): State<Arc<Node>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<BlockView>, ApiError> {
    let id = path(id)?;
    let by_height = id.parse::<u64>().ok();
    let by_hash = if by_height.is_none() {
        Some(parse_hash(&id)?)
    } else {
        None
    };
    let block = read(&node, move |store| match (by_height, by_hash) {
        (Some(height), _) => store.block(height),
        (None, Some(hash)) => store.block_by_hash(&hash),
        (None, None) => Ok(None),
    })
    .await?;
    block
        .map(|block| Json(block_view(&block)))
        .ok_or_else(|| ApiError::not_found(format!("no block {id}")))
}

/// The manifest of the newest snapshot this node serves.
#[utoipa::path(get, path = "/v1/snapshots/latest", tag = "snapshots",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The manifest", body = SnapshotView),
        (status = 404, description = "No snapshot yet (the chain is younger than one checkpoint interval)", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ))]
async fn latest_snapshot(State(node): State<Arc<Node>>) -> Result<Json<SnapshotView>, ApiError> {
    let manifest = node.snapshot_manifest(None).await?;
    Ok(Json(snapshot_view(&manifest)))
}

/// The manifest of the snapshot at a height this node serves (the latest and the
/// one a checkpoint interval below it).
#[utoipa::path(get, path = "/v1/snapshots/{height}", tag = "snapshots",
    security(("bearer" = ["read"])),
    params(("height" = u64, Path, description = "A checkpoint height")),
    responses(
        (status = 200, description = "The manifest", body = SnapshotView),
        (status = 400, description = "Not a number", body = ErrorBody),
        (status = 404, description = "Not served here; the message names the heights that are", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ))]
async fn snapshot(
    State(node): State<Arc<Node>>,
    height: Result<Path<String>, PathRejection>,
) -> Result<Json<SnapshotView>, ApiError> {
    let manifest = node
        .snapshot_manifest(Some(parse_number(&path(height)?)?))
        .await?;
    Ok(Json(snapshot_view(&manifest)))
}

fn snapshot_view(manifest: &crate::chain::snapshot::Manifest) -> SnapshotView {
    SnapshotView {
        height: manifest.height(),
        block_hash: manifest.header.hash().to_hex(),
        log_size: manifest.header.log_size,
        tile_ids: manifest.tile_ids(),
        chunks: manifest.chunks(),
        manifest: hex::encode(manifest.encode()),
    }
}

/// One chunk of a snapshot: the entry ids of one tile of the log, 32 bytes each, in
/// log order. Check it against the manifest's tile root before using it.
#[utoipa::path(get, path = "/v1/snapshots/{height}/chunks/{index}", tag = "snapshots",
    security(("bearer" = ["read"])),
    params(
        ("height" = u64, Path, description = "The snapshot's height"),
        ("index" = u64, Path, description = "The chunk, from 0"),
    ),
    responses(
        (status = 200, description = "The ids", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Not a number", body = ErrorBody),
        (status = 404, description = "No such snapshot or chunk here", body = ErrorBody),
        (status = 503, description = "Every transfer slot is taken; see Retry-After", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ))]
async fn snapshot_chunk(
    State(node): State<Arc<Node>>,
    at: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (height, index) = path(at)?;
    let chunk = node
        .snapshot_chunk(parse_number(&height)?, parse_number(&index)?)
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], chunk).into_response())
}

/// A committed block with its commit certificate, in the canonical binary encoding
/// (docs/FORMAT.md: the peer protocol's `committed` frame), for a node that catches up
/// or joins through the client API.
#[utoipa::path(get, path = "/v1/blocks/{height}/committed", tag = "blocks",
    security(("bearer" = ["read"])),
    params(("height" = u64, Path, description = "The block's height")),
    responses(
        (status = 200, description = "Tag 4, u64 block length, block, certificate", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 400, description = "Not a number", body = ErrorBody),
        (status = 404, description = "No such block, or not held here", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ))]
async fn committed_block(
    State(node): State<Arc<Node>>,
    height: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let height = parse_number(&path(height)?)?;
    let (block, certificate) = read(&node, move |store| store.committed_block(height))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no block {height}")))?;
    let frame = crate::net::Wire::Committed { block, certificate }.encode();
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], frame).into_response())
}

/// The prepared certificate of the highest height this member holds one for, in
/// the canonical binary encoding (docs/FORMAT.md: the peer protocol's `prepared`
/// frame): a member that lost its disk asks for it beside the height, as the
/// blocks this member applied since its disk last synced may be gone after a crash
/// while their prepared certificates are not.
#[utoipa::path(get, path = "/v1/consensus/prepared", tag = "node",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Tag 14, prepared certificate", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "This node holds no prepared certificate", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ))]
async fn highest_prepared(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let certificate = read(&node, Store::highest_prepared)
        .await?
        .ok_or_else(|| ApiError::not_found("this node holds no prepared certificate"))?;
    let frame = crate::net::Wire::Prepared(certificate).encode();
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], frame).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

/// RFC 9162 consistency proof between two log sizes.
#[utoipa::path(get, path = "/v1/proofs/consistency", tag = "proofs",
    security(("bearer" = ["read"])),
    params(
        ("from" = u64, Query, description = "Old log size"),
        ("to" = u64, Query, description = "New log size, at most the current one"),
    ),
    responses(
        (status = 200, description = "The proof and both roots", body = ConsistencyView),
        (status = 400, description = "`from` exceeds `to`", body = ErrorBody),
        (status = 404, description = "`to` is beyond the current log", body = ErrorBody),
        (status = 500, description = "Internal error", body = ErrorBody),
    ))]
async fn consistency(
    State(node): State<Arc<Node>>,
    sizes: Result<Query<ConsistencyQuery>, QueryRejection>,
) -> Result<Json<ConsistencyView>, ApiError> {
    let ConsistencyQuery { from, to } = query(sizes)?;
    let (from, to) = (int64("from", from)?, int64("to", to)?);
    let view = read(&node, move |store| {
        let log_size = store.tip()?.log_size;
        if to > log_size {
            return Ok(Err(ApiError::not_found(format!(
                "the log has {log_size} entries; there is no log of size {to} yet"
            ))));
        }
        if from > to {
            return Ok(Err(ApiError::malformed(format!(
                "from ({from}) must not exceed to ({to})"
            ))));
        }
        let proof = store.consistency(from, to)?;
        Ok(Ok(ConsistencyView {
            from,
            to,
            from_root: proof.from_root.to_hex(),
            to_root: proof.to_root.to_hex(),
            proof: proof.proof.iter().map(Hash::to_hex).collect(),
        }))
    })
    .await??;
    Ok(Json(view))
}

/// The node, its chain and its members.
#[utoipa::path(get, path = "/v1/status", tag = "node",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Status", body = StatusView),
        (status = 500, description = "Internal error", body = ErrorBody),
    ))]
async fn status(State(node): State<Arc<Node>>) -> Result<Json<StatusView>, ApiError> {
    // While the database is being reopened the status still answers, from the last
    // tip read or applied.
    let tip = match read(&node, |store| store.tip()).await {
        Ok(tip) => tip,
        Err(error) => node.store().last_tip().ok_or(error)?,
    };
    let store = node.store();
    let spec = store.spec();
    let mut membership = crate::chain::Membership::clone(&store.membership());
    membership.advance_to(tip.height + 1);
    let members = membership.members.as_slice();
    let not_ready = node.readiness_reason();
    let engine = node.status();
    Ok(Json(StatusView {
        node_id: node.node_id().to_hex(),
        chain_id: spec.chain_id.clone(),
        chain_hash: store.chain_hash().to_hex(),
        genesis_hash: store.genesis_hash().to_hex(),
        role: node.role().into(),
        behind: engine.behind,
        reads_from: engine.reads_from.clone(),
        view: engine.view,
        primary: members
            .get(usize::from(engine.primary))
            .map(|m| m.node_id.to_hex())
            .unwrap_or_default(),
        height: tip.height,
        tip_hash: tip.hash().to_hex(),
        log_size: tip.log_size,
        history_from: store.history_from(),
        stable_checkpoint: engine.stable_checkpoint,
        height_signature: node
            .sign_height(tip.height)
            .map(|progress| hex::encode(progress.signature)),
        abstaining_until: engine.abstaining_until,
        f: membership.members.max_faulty(),
        quorum: membership.members.quorum(),
        members: member_views(&node, &engine, members),
        difficulty: engine.next_difficulty,
        pool_size: engine.pending,
        settings: SettingsView {
            max_block_entries: engine.settings.max_block_entries,
            max_block_delay_ms: u64::try_from(engine.settings.max_block_delay.as_millis())
                .unwrap_or(u64::MAX),
            pool_capacity: engine.settings.pool_capacity,
            mining_threads: engine.settings.mining_threads.get(),
            max_blocks_in_flight: engine.max_blocks_in_flight,
            min_block_interval_ms: engine.min_block_interval_ms,
        },
        plugins: node.plugins().fingerprints(),
        ready: not_ready.is_none(),
        not_ready,
    }))
}

/// The members as this node sees them: connected or not, and why.
fn member_views(
    node: &Node,
    engine: &crate::engine::EngineStatus,
    members: &[crate::chain::Member],
) -> Vec<MemberView> {
    let self_id = node.node_id();
    let peers = &engine.peers;
    members
        .iter()
        .enumerate()
        .map(|(index, member)| MemberView {
            node_id: member.node_id.to_hex(),
            public_key: hex::encode(member.public_key.as_bytes()),
            p2p_addr: member.p2p_addr.clone(),
            api_addr: member.api_addr.clone(),
            connected: member.node_id == self_id
                || peers.get(index).is_some_and(|peer| peer.connected()),
            last_error: peers.get(index).and_then(|peer| peer.last_error.clone()),
            plugins: if member.node_id == self_id {
                Some(node.plugins().fingerprint_line())
            } else {
                peers.get(index).and_then(|peer| peer.plugins.clone())
            },
        })
        .collect()
}

/// The membership in force after the tip, its learners, a change on its way, and
/// who may change it.
#[utoipa::path(get, path = "/v1/members", tag = "node",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The membership", body = MembersView),
        (status = 500, description = "The database is damaged", body = ErrorBody),
        (status = 503, description = "The database is unavailable, or the blocks of a change lie below a restored node's history", body = ErrorBody),
    ))]
async fn members(State(node): State<Arc<Node>>) -> Result<Json<MembersView>, ApiError> {
    use crate::chain::Change;
    let changes = read(&node, |store| store.membership_changes()).await?;
    let store = node.store();
    let membership = store.membership_in_force();
    let engine = node.status();
    let key = |key: &ed25519_dalek::VerifyingKey| hex::encode(key.as_bytes());
    // Each learner is asked how far it is, all at once, each for at most 2 s.
    let tip = store.last_tip().map_or(0, |tip| tip.height);
    let progress = futures_util::future::join_all(
        membership
            .learners
            .iter()
            .map(|learner| node.learner_progress(learner, crate::node::LEARNER_PROGRESS)),
    )
    .await;
    Ok(Json(MembersView {
        epoch: membership.epoch,
        since: membership.since,
        f: membership.members.max_faulty(),
        quorum: membership.members.quorum(),
        members: member_views(&node, &engine, membership.members.as_slice()),
        learners: membership
            .learners
            .iter()
            .zip(progress)
            .map(|(learner, progress)| LearnerView {
                node_id: learner.node_id.to_hex(),
                public_key: key(&learner.public_key),
                p2p_addr: learner.p2p_addr.clone(),
                api_addr: learner.api_addr.clone(),
                height: progress.as_ref().ok().map(|progress| progress.height),
                behind: progress
                    .as_ref()
                    .ok()
                    .map(|progress| tip.saturating_sub(progress.height)),
                last_error: progress.err().map(|error| error.to_string()),
            })
            .collect(),
        pending: membership
            .pending
            .as_ref()
            .map(|pending| PendingChangeView {
                kind: match pending.change {
                    Change::AddLearner { .. } => "add_learner",
                    Change::Promote { .. } => "promote",
                    Change::Remove { .. } => "remove",
                }
                .into(),
                public_key: key(pending.change.public_key()),
                description: pending.change.to_string(),
                height: pending.height,
                in_force_from: pending.in_force_from,
            }),
        admins: store.spec().admins.as_ref().map(|admins| AdminsView {
            keys: admins.keys().iter().map(key).collect(),
            threshold: admins.threshold(),
        }),
        changes: changes.iter().map(ChangeProofView::from).collect(),
    }))
}

/// Every block, as one JSON array streamed a block at a time from a blocking reader
/// (memory stays flat however long the chain). The tip is read before the status
/// line, so a node that cannot read its chain answers an error, not 200. A block
/// that fails its checks midway aborts the response without its final chunk: the
/// client sees a truncated transfer (curl exits 18), never a short array that looks
/// complete.
#[utoipa::path(get, path = "/chain", tag = "blocks",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "All blocks from genesis, streamed; a read that fails midway cuts the transfer short (no closing chunk)", body = Vec<BlockView>),
        (status = 500, description = "The database is damaged", body = ErrorBody),
        (status = 503, description = "The database is unavailable, or the node serves as many /chain streams as it takes (`busy`)", body = ErrorBody),
    ))]
async fn whole_chain(State(node): State<Arc<Node>>) -> Result<Response, ApiError> {
    let Some(place) = node.chain_stream() else {
        return Err(ApiError::unavailable(
            "busy",
            format!(
                "{} /chain streams are running, the most this node serves at once; retry \
                 later, or page through /v1/blocks",
                crate::node::CHAIN_STREAMS
            ),
        ));
    };
    let tip = read(&node, |store| store.tip()).await?.height;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let store = Arc::clone(node.store());
    // A task, not a thread, waits for a slow reader: blocks are read a batch at a time
    // on the blocking pool, each batch only once the client took the one before.
    tokio::spawn(async move {
        let _place = place;
        if sender.send(Ok(Bytes::from_static(b"["))).await.is_err() {
            return;
        }
        let mut height = 0;
        while height <= tip {
            let end = tip.min(height.saturating_add(CHAIN_BATCH - 1));
            let store = Arc::clone(&store);
            let read = tokio::task::spawn_blocking(move || {
                let mut out = Vec::new();
                for at in height..=end {
                    let block = match store.block(at) {
                        Ok(Some(block)) => block,
                        // The store logged the damage or the failure.
                        Ok(None) => return Err(format!("block {at} is missing")),
                        Err(error) => return Err(error.to_string()),
                    };
                    if at > 0 {
                        out.push(b',');
                    }
                    if let Err(error) = serde_json::to_writer(&mut out, &block_view(&block)) {
                        return Err(error.to_string());
                    }
                }
                Ok(out)
            })
            .await;
            let chunk = match read {
                Ok(Ok(bytes)) => Ok(Bytes::from(bytes)),
                Ok(Err(reason)) => Err(std::io::Error::other(reason)),
                Err(error) => Err(std::io::Error::other(error.to_string())),
            };
            let failed = chunk.is_err();
            if sender.send(chunk).await.is_err() || failed {
                return; // the client went away, or the transfer is cut short
            }
            height = end + 1;
        }
        let _ = sender.send(Ok(Bytes::from_static(b"]"))).await;
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// Blocks `GET /chain` reads from the store at once.
const CHAIN_BATCH: u64 = 64;

/// Propose a membership change signed by the chain's admins: checked against the
/// membership in force and what this member sees, then ordered like an entry. It is
/// in force from the block after the first checkpoint at or above its block.
#[utoipa::path(post, path = "/v1/admin/reconfigurations", tag = "node",
    security(("bearer" = ["admin"])),
    request_body = ChangeRequest,
    responses(
        (status = 202, description = "Checked and handed to the members to order", body = ChangeAccepted),
        (status = 400, description = "Malformed request or change", body = ErrorBody),
        (status = 409, description = "Already submitted", body = ErrorBody),
        (status = 422, description = "Refused before ordering, with the reason: another epoch, too few admin signatures, a change in flight, not a member or learner, too few of the new members connected, or a node that orders no changes", body = ErrorBody),
        (status = 503, description = "Node not ready or busy, or database failing; see Retry-After", body = ErrorBody),
    ))]
async fn propose_change(
    State(node): State<Arc<Node>>,
    JsonBody(request): JsonBody<ChangeRequest>,
) -> Result<(StatusCode, Json<ChangeAccepted>), ApiError> {
    let bytes = hex::decode(request.reconfiguration.trim())
        .map_err(|_| ApiError::malformed("reconfiguration is not hex"))?;
    let change = crate::chain::Reconfiguration::decode(&bytes)
        .map_err(|error| ApiError::malformed(format!("reconfiguration: {error}")))?;
    let (id, _) = node.propose_change(&change).await?;
    tracing::info!(change = %change.change, epoch = change.epoch, %id, "membership change proposed");
    Ok((
        StatusCode::ACCEPTED,
        Json(ChangeAccepted {
            id: id.to_hex(),
            change: change.change.to_string(),
            epoch: change.epoch,
        }),
    ))
}

/// Cut a block now, even an empty one; answers once it is applied.
#[utoipa::path(post, path = "/mine", tag = "node",
    security(("bearer" = ["admin"])),
    responses(
        (status = 200, description = "The new block's header", body = MinedView),
        (status = 503, description = "Not producing blocks now, or the block failed", body = ErrorBody),
    ))]
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
        Ok(Err(error)) => Err(ApiError::unavailable("mine_failed", error.to_string())),
        Err(_) => Err(ApiError::unavailable(
            "not_ready",
            "the node stopped before mining",
        )),
    }
}

/// Readiness: 200 once recovered, reaching a quorum, voting and caught up with the
/// others.
#[utoipa::path(get, path = "/readyz", tag = "node",
    security(()),
    responses(
        (status = 200, description = "Ready", body = String, content_type = "text/plain"),
        (status = 503, description = "Starting or stopping, the database failed or is damaged, consensus stopped, fewer members reachable than a quorum, a member that abstains (it does not vote yet), or catching up: the message says which", body = ErrorBody),
    ))]
async fn readyz(State(node): State<Arc<Node>>) -> Result<&'static str, ApiError> {
    match node.readiness_reason() {
        None => Ok("ready\n"),
        Some(reason) => Err(ApiError::unavailable("not_ready", reason)),
    }
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "node",
    security(()),
    responses((status = 200, description = "Text exposition format", body = String, content_type = "text/plain")))]
async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let store = node.store();
    node.metrics()
        .history_from
        .store(store.history_from(), std::sync::atomic::Ordering::Relaxed);
    node.metrics().record_store(
        store.health(),
        store.failure().is_some(),
        store.damage().is_some(),
    );
    // A change due at the next height is in force for the replica and transport.
    let membership = store.membership_in_force();
    let metrics = node.metrics();
    let count = |value: usize| value as u64;
    metrics.members.store(
        count(membership.members.len()),
        std::sync::atomic::Ordering::Relaxed,
    );
    metrics.quorum.store(
        count(membership.members.quorum()),
        std::sync::atomic::Ordering::Relaxed,
    );
    let engine = node.status();
    let has_quorum = node
        .quorum_reach(&engine)
        .is_none_or(|(reached, quorum)| reached >= quorum);
    metrics
        .has_quorum
        .store(u64::from(has_quorum), std::sync::atomic::Ordering::Relaxed);
    metrics.voting.store(
        u64::from(node.votes(&engine)),
        std::sync::atomic::Ordering::Relaxed,
    );
    metrics.catching_up.store(
        u64::from(engine.catching_up),
        std::sync::atomic::Ordering::Relaxed,
    );
    metrics.behind.store(
        engine.behind.unwrap_or(0),
        std::sync::atomic::Ordering::Relaxed,
    );
    let members = engine.peers.iter().take(membership.members.len());
    let connected = members.filter(|p| p.connected()).count();
    node.metrics()
        .peers_connected
        .store(connected as u64, std::sync::atomic::Ordering::Relaxed);
    let mut text = node.metrics().render();
    text.push_str(&format!(
        "# HELP ledger_role What the node is: member, alone (the chain's only member), \
         follower or learner.\n# TYPE ledger_role gauge\nledger_role{{role=\"{}\"}} 1\n",
        node.role()
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Liveness: 200 while the process serves requests.
#[utoipa::path(get, path = "/healthz", tag = "node",
    security(()),
    responses((status = 200, description = "Alive", body = String, content_type = "text/plain")))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// This document.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "node",
    security(()),
    responses((status = 200, description = "The OpenAPI 3 document", content_type = "application/json")))]
async fn openapi_json() -> Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = DOCUMENT.get_or_init(|| {
        openapi().to_json().unwrap_or_else(|error| {
            tracing::error!(%error, "rendering the OpenAPI document");
            "{}".into()
        })
    });
    ([(header::CONTENT_TYPE, "application/json")], text.clone()).into_response()
}
