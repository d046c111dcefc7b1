//! Module `patients`: patients and their admissions to wards, in schema `patients`, as role
//! `<project>_patients`.
//!
//! Every change of a patient publishes [`PatientUpdated`] in the same transaction, carrying the
//! row's version so that the other modules' snapshots apply only newer ones. [`exists`] is the
//! public API the other modules validate a patient id with; they never read this schema.

pub mod http;

use chrono::{DateTime, Utc};
use moat::Moat;
use moat::events::{Envelope, Event, ModuleTx};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::input::Text;

/// The module's name in the manifest.
pub const MODULE: &str = "patients";

/// Published on every create and update of a patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PatientUpdated {
    /// The patient.
    pub patient_id: Uuid,
    /// Medical record number.
    pub mrn: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// The ward the patient is in, if any.
    pub ward_id: Option<Uuid>,
    /// The patient row's version after the change (1 when created, +1 per update).
    pub version: i64,
}

impl Event for PatientUpdated {
    const MODULE: &'static str = MODULE;
    const TYPE: &'static str = "PatientUpdated";
    fn key(&self) -> String {
        self.patient_id.to_string()
    }
}

impl PatientUpdated {
    /// The last event of each patient in a batch, for a snapshot that needs only the newest state:
    /// events of one patient (one key) arrive in publish order, so the last one wins.
    pub fn latest_per_patient(events: &[Envelope<Self>]) -> Vec<&Envelope<Self>> {
        let mut seen = std::collections::HashSet::new();
        let mut latest: Vec<&Envelope<Self>> =
            events.iter().rev().filter(|event| seen.insert(event.payload.patient_id)).collect();
        latest.reverse();
        latest
    }
}

/// A patient.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema, sqlx::FromRow)]
pub struct Patient {
    /// The patient's id.
    pub id: Uuid,
    /// Medical record number (unique).
    pub mrn: String,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// The ward the patient is in, if any.
    pub ward_id: Option<Uuid>,
    /// Incremented on every change.
    pub version: i64,
    /// When the patient was created.
    pub created_at: DateTime<Utc>,
    /// When the patient was last changed.
    pub updated_at: DateTime<Utc>,
}

/// The body of `POST /patients` and `PUT /patients/{id}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct PatientInput {
    /// Medical record number, unique among patients.
    pub mrn: Text,
    /// First name.
    pub first_name: Text,
    /// Last name.
    pub last_name: Text,
    /// The ward the patient is in, or `null` (required all the same: a `PUT` that left it out
    /// would otherwise discharge the patient without saying so).
    #[serde(deserialize_with = "Option::deserialize")]
    #[schema(required = true)]
    pub ward_id: Option<Uuid>,
}

/// A stay in a ward: opened when a patient enters a ward, closed when the patient leaves it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema, sqlx::FromRow)]
pub struct Admission {
    /// The admission's id.
    pub id: Uuid,
    /// The patient.
    pub patient_id: Uuid,
    /// The ward.
    pub ward_id: Uuid,
    /// When the patient entered the ward.
    pub admitted_at: DateTime<Utc>,
    /// When the patient left it (`null` while there).
    pub discharged_at: Option<DateTime<Utc>>,
}

/// Why a change of a patient was refused.
#[derive(Debug, thiserror::Error)]
pub enum PatientError {
    /// No patient has this id.
    #[error("patient `{0}` does not exist")]
    NotFound(Uuid),
    /// Another patient has this medical record number.
    #[error("the medical record number `{0}` belongs to another patient")]
    MrnTaken(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] moat::Error),
}

/// Whether a patient exists: the API the other modules validate a patient id with.
pub async fn exists(app: &Moat, id: Uuid) -> Result<bool, moat::Error> {
    Ok(sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM patients WHERE id = $1)")
        .bind(id)
        .fetch_one(&app.pool(MODULE)?)
        .await?)
}

/// A patient by id.
pub async fn get(app: &Moat, id: Uuid) -> Result<Option<Patient>, moat::Error> {
    Ok(sqlx::query_as(
        "SELECT id, mrn, first_name, last_name, ward_id, version, created_at, updated_at FROM patients WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&app.pool(MODULE)?)
    .await?)
}

/// Creates a patient in the module's transaction `tx` (admitting it to its ward, if any) and
/// publishes [`PatientUpdated`] with it.
pub async fn create(tx: &mut ModuleTx, input: &PatientInput) -> Result<Patient, PatientError> {
    let patient: Patient = sqlx::query_as(
        "INSERT INTO patients (mrn, first_name, last_name, ward_id) VALUES ($1, $2, $3, $4) \
         RETURNING id, mrn, first_name, last_name, ward_id, version, created_at, updated_at",
    )
    .bind(input.mrn.as_str())
    .bind(input.first_name.as_str())
    .bind(input.last_name.as_str())
    .bind(input.ward_id)
    .fetch_one(&mut **tx)
    .await
    .map_err(|e| PatientError::from_write(e, &input.mrn))?;
    if let Some(ward_id) = patient.ward_id {
        admit(tx, patient.id, ward_id).await?;
    }
    tx.publish(&updated(&patient))?;
    Ok(patient)
}

/// Replaces a patient's fields in `tx` (moving it between wards records the admissions) and
/// publishes [`PatientUpdated`] with the new version.
pub async fn update(tx: &mut ModuleTx, id: Uuid, input: &PatientInput) -> Result<Patient, PatientError> {
    // Lock the row first: the ward it leaves decides the admissions to close.
    let previous_ward: Option<Option<Uuid>> =
        sqlx::query_scalar("SELECT ward_id FROM patients WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(moat::Error::from)?;
    let Some(previous_ward) = previous_ward else {
        return Err(PatientError::NotFound(id));
    };
    let patient: Patient = sqlx::query_as(
        "UPDATE patients SET mrn = $2, first_name = $3, last_name = $4, ward_id = $5, version = version + 1, \
         updated_at = now() WHERE id = $1 \
         RETURNING id, mrn, first_name, last_name, ward_id, version, created_at, updated_at",
    )
    .bind(id)
    .bind(input.mrn.as_str())
    .bind(input.first_name.as_str())
    .bind(input.last_name.as_str())
    .bind(input.ward_id)
    .fetch_one(&mut **tx)
    .await
    .map_err(|e| PatientError::from_write(e, &input.mrn))?;
    if previous_ward != patient.ward_id {
        sqlx::query("UPDATE admissions SET discharged_at = now() WHERE patient_id = $1 AND discharged_at IS NULL")
            .bind(id)
            .execute(&mut **tx)
            .await
            .map_err(moat::Error::from)?;
        if let Some(ward_id) = patient.ward_id {
            admit(tx, id, ward_id).await?;
        }
    }
    tx.publish(&updated(&patient))?;
    Ok(patient)
}

/// A patient's admissions, oldest first.
pub async fn admissions(app: &Moat, patient_id: Uuid) -> Result<Vec<Admission>, moat::Error> {
    Ok(sqlx::query_as(
        "SELECT id, patient_id, ward_id, admitted_at, discharged_at FROM admissions \
         WHERE patient_id = $1 ORDER BY admitted_at, id",
    )
    .bind(patient_id)
    .fetch_all(&app.pool(MODULE)?)
    .await?)
}

async fn admit(tx: &mut ModuleTx, patient_id: Uuid, ward_id: Uuid) -> Result<(), moat::Error> {
    sqlx::query("INSERT INTO admissions (patient_id, ward_id) VALUES ($1, $2)")
        .bind(patient_id)
        .bind(ward_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn updated(patient: &Patient) -> PatientUpdated {
    PatientUpdated {
        patient_id: patient.id,
        mrn: patient.mrn.clone(),
        first_name: patient.first_name.clone(),
        last_name: patient.last_name.clone(),
        ward_id: patient.ward_id,
        version: patient.version,
    }
}

impl PatientError {
    /// A deadlock (`40P01`) or a serialization failure (`40001`): the transaction was aborted
    /// and may succeed when run again.
    pub fn is_transient(&self) -> bool {
        let Self::Database(moat::Error::Database(sqlx::Error::Database(error))) = self else { return false };
        matches!(error.code().as_deref(), Some("40P01" | "40001"))
    }

    fn from_write(error: sqlx::Error, mrn: &Text) -> Self {
        let unique_mrn = error
            .as_database_error()
            .is_some_and(|e| e.code().as_deref() == Some("23505") && e.constraint() == Some("patients_mrn_key"));
        if unique_mrn { Self::MrnTaken(mrn.to_string()) } else { Self::Database(error.into()) }
    }
}
