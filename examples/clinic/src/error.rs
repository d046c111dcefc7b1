//! One error type for every handler, and extractors whose rejections use it.
//!
//! A client error answers with its status and a JSON body that says what is wrong:
//! `{"error": "unknown_patient", "message": "patient `…` does not exist"}`. An internal error is
//! logged (with its whole chain) and answers `500 {"error": "internal", "message": "internal
//! server error"}`: no SQL, no driver message, no connection detail ever reaches a client.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

/// The error of a handler.
#[derive(Debug)]
pub enum AppError {
    /// The request cannot be served as it is (4xx): the client can fix it.
    Client {
        /// The status.
        status: StatusCode,
        /// A stable, machine-readable code (`invalid_body`, `unknown_patient`, ...).
        code: &'static str,
        /// What is wrong, for a human.
        message: String,
    },
    /// The database is reachable but every connection of the pool is busy (503).
    Busy(moat::Error),
    /// Anything else (500): logged, never shown.
    Internal(moat::Error),
}

/// The JSON body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A stable, machine-readable code: `invalid_body` (400, 413, 415, 422), `invalid_path` and
    /// `invalid_query` (400), `missing_ward` and `invalid_ward` (400), `not_found` (404),
    /// `unknown_patient` (404 in a query, 422 in a body), `method_not_allowed` (405), `mrn_taken`
    /// (409), `busy` (503: every database connection is in use; try again) or `internal` (500).
    #[schema(example = "unknown_patient")]
    pub error: &'static str,
    /// What is wrong, for a human.
    #[schema(example = "patient `0190d0c4-5f1e-7c3a-9a41-1c2b3d4e5f60` does not exist")]
    pub message: String,
}

impl AppError {
    /// A client error.
    pub fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self::Client { status, code, message: message.into() }
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404: the thing named in the path does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::client(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::CONFLICT, code, message)
    }

    /// 422: well-formed, but it names something that does not exist or breaks a rule.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::client(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Client { status, .. } => *status,
            Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<moat::Error> for AppError {
    fn from(error: moat::Error) -> Self {
        match error {
            moat::Error::Database(sqlx::Error::PoolTimedOut) => Self::Busy(error),
            error => Self::Internal(error),
        }
    }
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        moat::Error::Database(error).into()
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match self {
            Self::Client { code, message, .. } => ErrorBody { error: code, message },
            Self::Busy(error) => {
                tracing::warn!(error = %Chain(&error), "every database connection is busy");
                ErrorBody { error: "busy", message: "the service is busy; try again".to_owned() }
            }
            Self::Internal(error) => {
                tracing::error!(error = %Chain(&error), "internal error");
                ErrorBody { error: "internal", message: "internal server error".to_owned() }
            }
        };
        (status, axum::Json(body)).into_response()
    }
}

/// Displays an error with its sources, `a: b: c`.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> Self {
        // Syntax errors are 400, well-formed JSON of the wrong shape (missing field, wrong type,
        // invalid value) is 422, a missing `Content-Type: application/json` is 415.
        Self::client(rejection.status(), "invalid_body", rejection.body_text())
    }
}

impl From<PathRejection> for AppError {
    fn from(rejection: PathRejection) -> Self {
        Self::client(rejection.status(), "invalid_path", rejection.body_text())
    }
}

/// A JSON request body; its rejections answer with [`AppError`].
#[derive(Debug, FromRequest)]
#[from_request(via(axum::Json), rejection(AppError))]
pub struct Json<T>(pub T);

/// Path parameters; their rejections answer with [`AppError`].
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub struct Path<T>(pub T);

/// Query parameters. Unlike axum's `Query`, a rejection names the parameter that is wrong
/// (`patient_id: UUID parsing failed: ...`) and answers with [`AppError`].
#[derive(Debug, Clone, Copy)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        let query = parts.uri.query().unwrap_or_default();
        let parameters = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(parameters).map(Query).map_err(|e| {
            let message = match e.path().to_string() {
                path if path == "." => format!("invalid query string: {}", e.inner()),
                path => format!("invalid query string: `{path}`: {}", e.inner()),
            };
            AppError::bad_request("invalid_query", message)
        })
    }
}
