//! The API's one error type and its mapping to HTTP responses.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::node::{ProposeError, SubmitError};
use crate::snapshots::SnapshotServeError;
use crate::storage::StoreError;

pub use ledger_client::types::ErrorBody;

/// An error a handler returns; rendered as [`ErrorBody`] with a fitting status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds for `Retry-After`.
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        let retry_after = (status == StatusCode::SERVICE_UNAVAILABLE).then_some(1);
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after,
        }
    }

    /// 400: the request cannot be understood.
    pub fn malformed(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "malformed", message)
    }

    /// 409 `duplicate`: the entry was submitted before.
    pub fn duplicate(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "duplicate", message)
    }

    /// 422: the entry breaks a rule of the chain's.
    pub fn rejected(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "rejected", message)
    }

    /// 404 `left_pool`: the entry was accepted, then left the pool uncommitted; the
    /// message says why.
    pub fn left_pool(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, crate::node::LEFT_POOL, message)
    }

    /// 404: nothing there.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 413: the body or the entry is too large.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
    }

    /// 408: the request's body did not arrive in time.
    pub fn too_slow(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "too_slow", message)
    }

    /// 401 with `WWW-Authenticate`: no token, or one this node does not know.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 403: the token's role is below the route's.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 429 with `Retry-After`: over the caller's rate limit.
    pub fn too_many(retry_after_seconds: u64) -> ApiError {
        ApiError {
            retry_after: Some(retry_after_seconds),
            ..ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("over this caller's rate limit; retry in {retry_after_seconds} s"),
            )
        }
    }

    /// 503 with `Retry-After`: try again shortly.
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
    }

    /// 500: our fault. The details go to the log, not to the client.
    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the node's log",
        )
    }

    /// The JSON body this error is sent with.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.code.to_string(),
            message: self.message.clone(),
        }
    }

    /// The status this error is sent with.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match error {
            // A restored node fetches its history meanwhile: later, or elsewhere.
            StoreError::NotHeld { .. } => ApiError::unavailable("not_held", error.to_string()),
            StoreError::Chain(error) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "rejected",
                error.to_string(),
            ),
            // The store logged it once with the height; the client learns what is
            // damaged, and that this node will not serve it.
            error if error.damage().is_some() => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "damaged_database",
                format!("{error}; this node serves no data it cannot check"),
            ),
            error if error.is_io_failure() => {
                ApiError::unavailable("store_unavailable", error.to_string())
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> ApiError {
        let message = error.to_string();
        match error {
            SubmitError::TooLarge { .. } => ApiError::too_large(message),
            SubmitError::Invalid(_) | SubmitError::Rejected(_) => ApiError::rejected(message),
            SubmitError::Duplicate(_) => ApiError::duplicate(message),
            SubmitError::PoolFull(_) => ApiError::unavailable("pool_full", message),
            SubmitError::NotReady => ApiError::unavailable("not_ready", message),
            SubmitError::Busy => ApiError::unavailable("busy", message),
            SubmitError::Unavailable(_) => ApiError::unavailable("store_unavailable", message),
            SubmitError::NoMember(_) => ApiError::unavailable("no_member", message),
            SubmitError::RefusedByMember(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "refused_by_member",
                message,
            ),
            SubmitError::Store(error) => error.into(),
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(error: ProposeError) -> ApiError {
        match error {
            ProposeError::Submit(error) => error.into(),
            refused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "change_refused",
                refused.to_string(),
            ),
        }
    }
}

impl From<SnapshotServeError> for ApiError {
    fn from(error: SnapshotServeError) -> ApiError {
        let message = error.to_string();
        match error {
            SnapshotServeError::NoneYet { .. }
            | SnapshotServeError::NotServed { .. }
            | SnapshotServeError::NoChunk { .. } => ApiError::not_found(message),
            SnapshotServeError::Busy(_) => ApiError::unavailable("busy", message),
            SnapshotServeError::Store(error) => error.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"ledger\""),
            );
        }
        response
    }
}
