//! Module `lab_results`: lab results and a snapshot of each patient's ward, in schema
//! `lab_results`, as role `<project>_lab_results`.
//!
//! Rows, not tables, are the boundary here: the row-level security policy of `lab_results`
//! (migrations `0002_ward_policy.sql` and `0003_ward_policy_by_patient.sql`) shows a transaction
//! only the results of the patients in the ward it names with `SET LOCAL clinic.ward_id` (here
//! `set_config('clinic.ward_id', $1, true)`, the same thing with a bind parameter). The runtime
//! role does not own the table, so the policy applies to it; [`PatientWards`] keeps the wards
//! current from `PatientUpdated`. Recording a result publishes [`LabResultRecorded`].

pub mod http;

use chrono::{DateTime, SubsecRound, Utc};
use moat::Moat;
use moat::events::{Envelope, Event, EventBus, Handler, HandlerContext, HandlerError, SnapshotUpsert};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::input::{Measure, Text};
use crate::patients::{self, PatientUpdated};

/// The module's name in the manifest.
pub const MODULE: &str = "lab_results";

/// Published when a lab result is recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabResultRecorded {
    /// The result.
    pub lab_result_id: Uuid,
    /// The patient.
    pub patient_id: Uuid,
    /// The test.
    pub test: String,
    /// The measured value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

impl Event for LabResultRecorded {
    const MODULE: &'static str = MODULE;
    const TYPE: &'static str = "LabResultRecorded";
    fn key(&self) -> String {
        self.patient_id.to_string()
    }
}

/// The body of `POST /lab-results`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct LabResultInput {
    /// The patient (must exist).
    pub patient_id: Uuid,
    /// The test.
    pub test: Text,
    /// The measured value.
    #[schema(example = 13.5)]
    pub value: Measure,
    /// Its unit.
    pub unit: Text,
}

/// A lab result.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema, sqlx::FromRow)]
pub struct LabResult {
    /// The result's id.
    pub id: Uuid,
    /// The patient.
    pub patient_id: Uuid,
    /// The test.
    pub test: String,
    /// The measured value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// When it was recorded.
    pub recorded_at: DateTime<Utc>,
}

/// Why a lab result was refused.
#[derive(Debug, thiserror::Error)]
pub enum LabResultError {
    /// The patients module knows no such patient.
    #[error("patient `{0}` does not exist")]
    UnknownPatient(Uuid),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] moat::Error),
}

/// Records a result for a patient the patients module knows, and publishes [`LabResultRecorded`]
/// with it.
pub async fn record(app: &Moat, input: &LabResultInput) -> Result<LabResult, LabResultError> {
    if !patients::exists(app, input.patient_id).await? {
        return Err(LabResultError::UnknownPatient(input.patient_id));
    }
    // No `RETURNING`: it would have to pass the SELECT policy, and the row may belong to a ward
    // this transaction does not name. The id and the time are chosen here instead.
    let result = LabResult {
        id: Uuid::now_v7(),
        patient_id: input.patient_id,
        test: input.test.to_string(),
        value: input.value.get(),
        unit: input.unit.to_string(),
        recorded_at: Utc::now().trunc_subsecs(6),
    };
    let mut tx = app.begin(MODULE).await?;
    // The value travels as its shortest round-trip decimal, so `numeric` holds exactly the number
    // that was sent (a float8 parameter would be rounded to 15 digits).
    sqlx::query(
        "INSERT INTO lab_results (id, patient_id, test, value, unit, recorded_at) \
         VALUES ($1, $2, $3, $4::numeric, $5, $6)",
    )
    .bind(result.id)
    .bind(result.patient_id)
    .bind(&result.test)
    .bind(result.value.to_string())
    .bind(&result.unit)
    .bind(result.recorded_at)
    .execute(&mut *tx)
    .await
    .map_err(moat::Error::from)?;
    tx.publish(&LabResultRecorded {
        lab_result_id: result.id,
        patient_id: result.patient_id,
        test: result.test.clone(),
        value: result.value,
        unit: result.unit.clone(),
        recorded_at: result.recorded_at,
    })?;
    tx.commit().await?;
    Ok(result)
}

/// The results that the ward `ward_id` may see (of one patient, or of all), oldest first. The
/// filtering is PostgreSQL's row-level security policy, not this query.
pub async fn visible_in_ward(
    app: &Moat,
    ward_id: Uuid,
    patient_id: Option<Uuid>,
) -> Result<Vec<LabResult>, moat::Error> {
    let mut tx = app.pool(MODULE)?.begin().await?;
    sqlx::query("SELECT set_config('clinic.ward_id', $1, true)").bind(ward_id.to_string()).execute(&mut *tx).await?;
    let results = match patient_id {
        Some(patient_id) => {
            sqlx::query_as(
                "SELECT id, patient_id, test, value::float8 AS value, unit, recorded_at FROM lab_results \
                 WHERE patient_id = $1 ORDER BY recorded_at, id",
            )
            .bind(patient_id)
            .fetch_all(&mut *tx)
            .await?
        }
        None => {
            sqlx::query_as(
                "SELECT id, patient_id, test, value::float8 AS value, unit, recorded_at FROM lab_results \
                 ORDER BY recorded_at, id",
            )
            .fetch_all(&mut *tx)
            .await?
        }
    };
    tx.commit().await?;
    Ok(results)
}

/// Keeps each patient's ward in `patient_snapshots` current from `PatientUpdated` (newer versions
/// only); the row-level policy reads it.
#[derive(Debug, Clone, Copy)]
pub struct PatientWards;

impl Handler<PatientUpdated> for PatientWards {
    async fn handle(&self, ctx: &mut HandlerContext<'_>, event: &Envelope<PatientUpdated>) -> Result<(), HandlerError> {
        let patient = &event.payload;
        SnapshotUpsert::new("patient_snapshots", "patient_id", patient.patient_id)
            .version("version", patient.version)
            .set("ward_id", patient.ward_id)
            .execute(ctx)
            .await?;
        Ok(())
    }

    async fn handle_batch(
        &self,
        ctx: &mut HandlerContext<'_>,
        events: &[Envelope<PatientUpdated>],
    ) -> Result<(), HandlerError> {
        for event in PatientUpdated::latest_per_patient(events) {
            self.handle(ctx, event).await?;
        }
        Ok(())
    }
}

/// Registers the module's handlers.
pub fn subscribe(bus: EventBus) -> Result<EventBus, moat::Error> {
    bus.subscribe::<PatientUpdated, _>(MODULE, PatientWards)
}
