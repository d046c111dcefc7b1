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
        (status = 413, description = "The body is larger than 2 MiB", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid", body = ErrorBody),
    )
)]
pub async fn create_patient(
    State(clinic): State<Clinic>,
    Json(input): Json<PatientInput>,
) -> Result<(StatusCode, axum::Json<Patient>), AppError> {
    let (clinic, input) = (&clinic, &input);
    let patient = retrying(|| async move {
        let mut tx = clinic.moat().begin(MODULE).await?;
        let patient = super::create(&mut tx, input).await?;
        tx.commit().await?;
        Ok(patient)
    })
    .await?;
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
        (status = 413, description = "The body is larger than 2 MiB", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "A field is missing or invalid", body = ErrorBody),
    )
)]
pub async fn update_patient(
    State(clinic): State<Clinic>,
    Path(id): Path<Uuid>,
    Json(input): Json<PatientInput>,
) -> Result<axum::Json<Patient>, AppError> {
    let (clinic, input) = (&clinic, &input);
    let patient = retrying(|| async move {
        let mut tx = clinic.moat().begin(MODULE).await?;
        let patient = super::update(&mut tx, id, input).await?;
        tx.commit().await?;
        Ok(patient)
    })
    .await?;
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

/// The answer to a list whose `patient_id` names no patient: 404 `unknown_patient`. A list that
/// is empty asks [`super::exists`] before answering `[]`, so that an id nobody knows is not mistaken
/// for a patient with nothing to list (a list that is not empty needs no check: its rows were
/// written for a patient this module confirmed).
pub async fn known_patient(clinic: &Clinic, id: Uuid) -> Result<(), AppError> {
    if super::exists(clinic.moat(), id).await? {
        Ok(())
    } else {
        Err(AppError::client(StatusCode::NOT_FOUND, "unknown_patient", PatientError::NotFound(id).to_string()))
    }
}

/// Runs a write transaction, and runs it again (three times at most) when PostgreSQL aborted it
/// to break a deadlock or a serialization conflict: two requests swapping the medical record
/// numbers of two patients wait on each other's unique-index entries, and one of them is
/// aborted. The next attempt sees the other's commit and answers as it should (`mrn_taken`).
async fn retrying<T, F, Fut>(mut write: F) -> Result<T, PatientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PatientError>>,
{
    let mut attempt = 1;
    loop {
        match write().await {
            Err(error) if attempt < 3 && error.is_transient() => {
                tracing::debug!(attempt, error = %error, "write aborted by PostgreSQL; trying again");
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
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
