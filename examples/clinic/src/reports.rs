//! Reports across modules, read as the `reporting` consumer from contract views: the one allowed
//! cross-module read. The consumer's role may read the views that list it in `readers` and
//! nothing else (no module table), and its `search_path` is schema `contracts`.

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use moat::Moat;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{AppError, Clinic};

/// The consumer's name in the manifest.
pub const CONSUMER: &str = "reporting";

/// One ward's line of the census.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema, sqlx::FromRow)]
pub struct WardCensus {
    /// The ward (`null`: patients in no ward).
    pub ward_id: Option<Uuid>,
    /// Patients in the ward.
    pub patients: i64,
    /// Prescriptions of those patients.
    pub prescriptions: i64,
}

/// The census per ward, from the `ward_census` contract view.
pub async fn ward_census(app: &Moat) -> Result<Vec<WardCensus>, moat::Error> {
    Ok(sqlx::query_as("SELECT ward_id, patients, prescriptions FROM ward_census ORDER BY ward_id NULLS LAST")
        .fetch_all(app.consumer_pool(CONSUMER)?)
        .await?)
}

/// The routes of the reports.
pub fn router() -> Router<Clinic> {
    Router::new().route("/reports/ward-census", get(get_ward_census))
}

/// Patients and prescriptions per ward, read by the `reporting` role from the `ward_census`
/// contract view.
#[utoipa::path(
    get,
    path = "/reports/ward-census",
    tag = "reports",
    responses((status = 200, description = "One line per ward", body = Vec<WardCensus>))
)]
pub async fn get_ward_census(State(clinic): State<Clinic>) -> Result<axum::Json<Vec<WardCensus>>, AppError> {
    Ok(axum::Json(ward_census(clinic.moat()).await?))
}
