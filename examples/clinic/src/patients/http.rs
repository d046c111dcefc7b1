//! The patients module's HTTP routes.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use uuid::Uuid;

use super::{Admission, MODULE, Patient, PatientError, PatientInput};
use crate::error::{ErrorBody, Json, Path};
use crate::{AppError, Clinic};

/// The module's routes.
pub fn router() -> Router<Clinic> {
    Router::new()
        .route("/patients", post(create_patient))
        .route("/patients/{id}", get(get_patient).put(update_patient))
        .route("/patients/{id}/admissions", get(list_admissions))
}

/// Creates a patient and publishes `PatientUpdated`.
#[utoipa::path(
    post,
    path = "/patients",
    tag = "patients",
    request_body = PatientInput,
    responses(
        (status = 201, description = "The patient was created", body = Patient),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 409, description = "Another patient has this medical record number", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid", body = ErrorBody),
    )
)]
pub async fn create_patient(
    State(clinic): State<Clinic>,
    Json(input): Json<PatientInput>,
) -> Result<(StatusCode, axum::Json<Patient>), AppError> {
    let mut tx = clinic.moat().begin(MODULE).await?;
    let patient = super::create(&mut tx, &input).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, axum::Json(patient)))
}

/// Replaces a patient's fields and publishes `PatientUpdated` with the new version.
#[utoipa::path(
    put,
    path = "/patients/{id}",
    tag = "patients",
    params(("id" = Uuid, Path, description = "The patient's id")),
    request_body = PatientInput,
    responses(
        (status = 200, description = "The patient as changed", body = Patient),
        (status = 400, description = "The id is not a UUID, or the body is not JSON", body = ErrorBody),
        (status = 404, description = "No patient has this id", body = ErrorBody),
        (status = 409, description = "Another patient has this medical record number", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid", body = ErrorBody),
    )
)]
pub async fn update_patient(
    State(clinic): State<Clinic>,
    Path(id): Path<Uuid>,
    Json(input): Json<PatientInput>,
) -> Result<axum::Json<Patient>, AppError> {
    let mut tx = clinic.moat().begin(MODULE).await?;
    let patient = super::update(&mut tx, id, &input).await?;
    tx.commit().await?;
    Ok(axum::Json(patient))
}

/// A patient.
#[utoipa::path(
    get,
    path = "/patients/{id}",
    tag = "patients",
    params(("id" = Uuid, Path, description = "The patient's id")),
    responses(
        (status = 200, description = "The patient", body = Patient),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No patient has this id", body = ErrorBody),
    )
)]
pub async fn get_patient(State(clinic): State<Clinic>, Path(id): Path<Uuid>) -> Result<axum::Json<Patient>, AppError> {
    match super::get(clinic.moat(), id).await? {
        Some(patient) => Ok(axum::Json(patient)),
        None => Err(PatientError::NotFound(id).into()),
    }
}

/// A patient's admissions to wards, oldest first.
#[utoipa::path(
    get,
    path = "/patients/{id}/admissions",
    tag = "patients",
    params(("id" = Uuid, Path, description = "The patient's id")),
    responses(
        (status = 200, description = "The admissions", body = Vec<Admission>),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 404, description = "No patient has this id", body = ErrorBody),
    )
)]
pub async fn list_admissions(
    State(clinic): State<Clinic>,
    Path(id): Path<Uuid>,
) -> Result<axum::Json<Vec<Admission>>, AppError> {
    if !super::exists(clinic.moat(), id).await? {
        return Err(PatientError::NotFound(id).into());
    }
    Ok(axum::Json(super::admissions(clinic.moat(), id).await?))
}

impl From<PatientError> for AppError {
    fn from(error: PatientError) -> Self {
        match error {
            PatientError::NotFound(_) => AppError::not_found(error.to_string()),
            PatientError::MrnTaken(_) => AppError::conflict("mrn_taken", error.to_string()),
            PatientError::Database(e) => e.into(),
        }
    }
}
