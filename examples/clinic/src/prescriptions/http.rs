//! The prescriptions module's HTTP routes.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::{Prescription, PrescriptionError, PrescriptionInput, PrescriptionListItem};
use crate::error::{ErrorBody, Json, Query};
use crate::{AppError, Clinic};

/// The module's routes.
pub fn router() -> Router<Clinic> {
    Router::new().route("/prescriptions", post(issue_prescription).get(list_prescriptions))
}

/// The query of `GET /prescriptions`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PrescriptionsQuery {
    /// The patient whose prescriptions to list.
    pub patient_id: Uuid,
}

/// Issues a prescription for a patient and publishes `PrescriptionIssued`.
#[utoipa::path(
    post,
    path = "/prescriptions",
    tag = "prescriptions",
    request_body = PrescriptionInput,
    responses(
        (status = 201, description = "The prescription was issued", body = Prescription),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 413, description = "The body is larger than 2 MiB", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid, or the patient does not exist", body = ErrorBody),
    )
)]
pub async fn issue_prescription(
    State(clinic): State<Clinic>,
    Json(input): Json<PrescriptionInput>,
) -> Result<(StatusCode, axum::Json<Prescription>), AppError> {
    let prescription = super::issue(clinic.moat(), &input).await?;
    Ok((StatusCode::CREATED, axum::Json(prescription)))
}

/// A patient's prescriptions, oldest first, each with the patient's name and medical record number
/// from the prescriptions module's own snapshot.
#[utoipa::path(
    get,
    path = "/prescriptions",
    tag = "prescriptions",
    params(PrescriptionsQuery),
    responses(
        (status = 200, description = "The prescriptions", body = Vec<PrescriptionListItem>),
        (status = 400, description = "`patient_id` is missing or not a UUID", body = ErrorBody),
        (status = 404, description = "No patient has this id (`unknown_patient`)", body = ErrorBody),
    )
)]
pub async fn list_prescriptions(
    State(clinic): State<Clinic>,
    Query(query): Query<PrescriptionsQuery>,
) -> Result<axum::Json<Vec<PrescriptionListItem>>, AppError> {
    let prescriptions = super::for_patient(clinic.moat(), query.patient_id).await?;
    if prescriptions.is_empty() {
        crate::patients::http::known_patient(&clinic, query.patient_id).await?;
    }
    Ok(axum::Json(prescriptions))
}

impl From<PrescriptionError> for AppError {
    fn from(error: PrescriptionError) -> Self {
        match error {
            PrescriptionError::UnknownPatient(_) => AppError::unprocessable("unknown_patient", error.to_string()),
            PrescriptionError::Database(e) => e.into(),
        }
    }
}
