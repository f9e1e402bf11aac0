//! The HTTP API: `POST /` with `x-sora-target: Sora_<date>.<Operation>`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An API error as the client sees it: a status and
/// `{"error_type": "<snake_case>", "error_reason": "<human text>"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub error_type: &'static str,
    pub error_reason: String,
}

impl ApiError {
    pub fn new(status: StatusCode, error_type: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status,
            error_type,
            error_reason: reason.into(),
        }
    }
    /// 400: the request body is wrong; `reason` names the field.
    pub fn bad_request(error_type: &'static str, reason: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, error_type, reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error_type": self.error_type, "error_reason": self.error_reason});
        (self.status, axum::Json(body)).into_response()
    }
}
