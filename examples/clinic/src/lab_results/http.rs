//! The lab results module's HTTP routes.

use axum::Router;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::post;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::{LabResult, LabResultError, LabResultInput};
use crate::error::{ErrorBody, Json, Query};
use crate::{AppError, Clinic};

/// The header that names the ward a request reads lab results for.
pub const WARD_HEADER: &str = "x-ward-id";

/// The module's routes.
pub fn router() -> Router<Clinic> {
    Router::new().route("/lab-results", post(record_lab_result).get(list_lab_results))
}

/// The query of `GET /lab-results`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LabResultsQuery {
    /// Only this patient's results (without it: every result the ward may see).
    pub patient_id: Option<Uuid>,
}

/// The ward named by the `X-Ward-Id` header. Missing, repeated or not a UUID: 400, because without a ward
/// there is nothing the request may see.
#[derive(Debug, Clone, Copy)]
pub struct WardId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for WardId {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, AppError> {
        let mut values = parts.headers.get_all(WARD_HEADER).iter();
        let Some(value) = values.next() else {
            return Err(AppError::bad_request(
                "missing_ward",
                "the header `X-Ward-Id` is required: lab results are visible per ward",
            ));
        };
        if values.next().is_some() {
            // Two wards: which one the policy would see is not for the service to guess.
            return Err(AppError::bad_request("invalid_ward", "the header `X-Ward-Id` must be given once"));
        }
        value
            .to_str()
            .ok()
            .and_then(|v| Uuid::parse_str(v.trim()).ok())
            .map(WardId)
            .ok_or_else(|| AppError::bad_request("invalid_ward", "the header `X-Ward-Id` must be a UUID"))
    }
}

/// Records a lab result for a patient and publishes `LabResultRecorded`.
#[utoipa::path(
    post,
    path = "/lab-results",
    tag = "lab_results",
    request_body = LabResultInput,
    responses(
        (status = 201, description = "The result was recorded", body = LabResult),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 413, description = "The body is larger than 2 MiB", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid, or the patient does not exist", body = ErrorBody),
    )
)]
pub async fn record_lab_result(
    State(clinic): State<Clinic>,
    Json(input): Json<LabResultInput>,
) -> Result<(StatusCode, axum::Json<LabResult>), AppError> {
    let result = super::record(clinic.moat(), &input).await?;
    Ok((StatusCode::CREATED, axum::Json(result)))
}

/// The lab results of the patients in the ward named by `X-Ward-Id` (of one patient with
/// `patient_id`), oldest first. PostgreSQL's row-level security policy does the filtering: a
/// result of a patient in another ward, or of a patient whose ward the module has not heard of
/// yet, is not returned.
#[utoipa::path(
    get,
    path = "/lab-results",
    tag = "lab_results",
    params(
        LabResultsQuery,
        ("X-Ward-Id" = Uuid, Header, description = "The ward whose patients' results to read"),
    ),
    responses(
        (status = 200, description = "The results the ward may see", body = Vec<LabResult>),
        (status = 400, description = "`X-Ward-Id` is missing, repeated or not a UUID, or `patient_id` is not a UUID", body = ErrorBody),
        (status = 404, description = "`patient_id` names no patient (`unknown_patient`)", body = ErrorBody),
    )
)]
pub async fn list_lab_results(
    State(clinic): State<Clinic>,
    WardId(ward_id): WardId,
    Query(query): Query<LabResultsQuery>,
) -> Result<axum::Json<Vec<LabResult>>, AppError> {
    let results = super::visible_in_ward(clinic.moat(), ward_id, query.patient_id).await?;
    if let (true, Some(patient_id)) = (results.is_empty(), query.patient_id) {
        crate::patients::http::known_patient(&clinic, patient_id).await?;
    }
    Ok(axum::Json(results))
}

impl From<LabResultError> for AppError {
    fn from(error: LabResultError) -> Self {
        match error {
            LabResultError::UnknownPatient(_) => AppError::unprocessable("unknown_patient", error.to_string()),
            LabResultError::Database(e) => e.into(),
        }
    }
}
