//! The billing module's HTTP routes.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::Charge;
use crate::error::{ErrorBody, Query};
use crate::{AppError, Clinic};

/// The module's routes.
pub fn router() -> Router<Clinic> {
    Router::new().route("/billing/charges", get(list_charges))
}

/// The query of `GET /billing/charges`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChargesQuery {
    /// The patient whose charges to list.
    pub patient_id: Uuid,
}

/// A patient's charges, oldest first: one per prescription issued and per lab result recorded,
/// created from their events (so they appear shortly after the prescription or result).
#[utoipa::path(
    get,
    path = "/billing/charges",
    tag = "billing",
    params(ChargesQuery),
    responses(
        (status = 200, description = "The charges", body = Vec<Charge>),
        (status = 400, description = "`patient_id` is missing or not a UUID", body = ErrorBody),
        (status = 404, description = "No patient has this id (`unknown_patient`)", body = ErrorBody),
    )
)]
pub async fn list_charges(
    State(clinic): State<Clinic>,
    Query(query): Query<ChargesQuery>,
) -> Result<axum::Json<Vec<Charge>>, AppError> {
    let charges = super::for_patient(clinic.moat(), query.patient_id).await?;
    if charges.is_empty() {
        crate::patients::http::known_patient(&clinic, query.patient_id).await?;
    }
    Ok(axum::Json(charges))
}
