//! Module `prescriptions`: prescriptions and a snapshot of each patient, in schema
//! `prescriptions`, as role `<project>_prescriptions`.
//!
//! A prescription stores the patient's id as a plain value, validated through
//! [`crate::patients::exists`]: no foreign key, no join across modules. The list shows the
//! patient's name and medical record number from `patient_snapshots`, which [`PatientSnapshots`]
//! keeps current from `PatientUpdated`. Issuing a prescription publishes [`PrescriptionIssued`].

pub mod http;

use chrono::{DateTime, Utc};
use moat::Moat;
use moat::events::{Envelope, Event, EventBus, Handler, HandlerContext, HandlerError, SnapshotUpsert};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::input::{Positive, Text};
use crate::patients::{self, PatientUpdated};

/// The module's name in the manifest.
pub const MODULE: &str = "prescriptions";

/// Published when a prescription is issued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrescriptionIssued {
    /// The prescription.
    pub prescription_id: Uuid,
    /// The patient.
    pub patient_id: Uuid,
    /// What was prescribed.
    pub medication: String,
    /// How much.
    pub dose_amount: f64,
    /// When.
    pub issued_at: DateTime<Utc>,
}

impl Event for PrescriptionIssued {
    const MODULE: &'static str = MODULE;
    const TYPE: &'static str = "PrescriptionIssued";
    fn key(&self) -> String {
        self.patient_id.to_string()
    }
}

/// The body of `POST /prescriptions`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct PrescriptionInput {
    /// The patient (must exist).
    pub patient_id: Uuid,
    /// What is prescribed.
    pub medication: Text,
    /// How much, greater than zero.
    pub dose_amount: Positive,
}

/// A prescription as issued.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema, sqlx::FromRow)]
pub struct Prescription {
    /// The prescription's id.
    pub id: Uuid,
    /// The patient.
    pub patient_id: Uuid,
    /// What was prescribed.
    pub medication: String,
    /// How much.
    pub dose_amount: f64,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
}

/// A prescription in a list, with the patient as the prescriptions module last heard of them.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema, sqlx::FromRow)]
pub struct PrescriptionListItem {
    /// The prescription's id.
    pub id: Uuid,
    /// The patient.
    pub patient_id: Uuid,
    /// What was prescribed.
    pub medication: String,
    /// How much.
    pub dose_amount: f64,
    /// When it was issued.
    pub issued_at: DateTime<Utc>,
    /// `first_name last_name` from the module's patient snapshot (`null` until the patient's first
    /// `PatientUpdated` has been delivered).
    pub patient_name: Option<String>,
    /// The medical record number from the snapshot (`null` likewise).
    pub mrn: Option<String>,
}

/// Why a prescription was refused.
#[derive(Debug, thiserror::Error)]
pub enum PrescriptionError {
    /// The patients module knows no such patient.
    #[error("patient `{0}` does not exist")]
    UnknownPatient(Uuid),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] moat::Error),
}

/// Issues a prescription for a patient the patients module knows, and publishes
/// [`PrescriptionIssued`] with it.
pub async fn issue(app: &Moat, input: &PrescriptionInput) -> Result<Prescription, PrescriptionError> {
    if !patients::exists(app, input.patient_id).await? {
        return Err(PrescriptionError::UnknownPatient(input.patient_id));
    }
    let mut tx = app.begin(MODULE).await?;
    // The dose travels as its shortest round-trip decimal, so `numeric` holds exactly the number
    // that was sent (a float8 parameter would be rounded to 15 digits).
    let prescription: Prescription = sqlx::query_as(
        "INSERT INTO prescriptions (patient_id, medication, dose_amount) VALUES ($1, $2, $3::numeric) \
         RETURNING id, patient_id, medication, dose_amount::float8 AS dose_amount, issued_at",
    )
    .bind(input.patient_id)
    .bind(input.medication.as_str())
    .bind(input.dose_amount.get().to_string())
    .fetch_one(&mut *tx)
    .await
    .map_err(moat::Error::from)?;
    tx.publish(&PrescriptionIssued {
        prescription_id: prescription.id,
        patient_id: prescription.patient_id,
        medication: prescription.medication.clone(),
        dose_amount: prescription.dose_amount,
        issued_at: prescription.issued_at,
    })?;
    tx.commit().await?;
    Ok(prescription)
}

/// A patient's prescriptions, oldest first, with the patient's name from the snapshot.
pub async fn for_patient(app: &Moat, patient_id: Uuid) -> Result<Vec<PrescriptionListItem>, moat::Error> {
    Ok(sqlx::query_as(
        "SELECT rx.id, rx.patient_id, rx.medication, rx.dose_amount::float8 AS dose_amount, rx.issued_at, \
                s.first_name || ' ' || s.last_name AS patient_name, s.mrn \
         FROM prescriptions rx LEFT JOIN patient_snapshots s ON s.patient_id = rx.patient_id \
         WHERE rx.patient_id = $1 ORDER BY rx.issued_at, rx.id",
    )
    .bind(patient_id)
    .fetch_all(&app.pool(MODULE)?)
    .await?)
}

/// Keeps `patient_snapshots` current from `PatientUpdated`: an event applies only if it is newer
/// than the row, so replays and redeliveries change nothing.
#[derive(Debug, Clone, Copy)]
pub struct PatientSnapshots;

impl Handler<PatientUpdated> for PatientSnapshots {
    async fn handle(&self, ctx: &mut HandlerContext<'_>, event: &Envelope<PatientUpdated>) -> Result<(), HandlerError> {
        let patient = &event.payload;
        SnapshotUpsert::new("patient_snapshots", "patient_id", patient.patient_id)
            .version("version", patient.version)
            .set("mrn", patient.mrn.clone())
            .set("first_name", patient.first_name.clone())
            .set("last_name", patient.last_name.clone())
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
    bus.subscribe::<PatientUpdated, _>(MODULE, PatientSnapshots)
}
