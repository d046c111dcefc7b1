//! Module `billing`: charges per patient, in schema `billing`, as role `<project>_billing`.
//!
//! Billing reads no other module: it charges a fixed price for every `PrescriptionIssued` and
//! every `LabResultRecorded` it is delivered. A charge is unique per `(source, source_id)`, so a
//! redelivered event charges nothing twice.

pub mod http;

use chrono::{DateTime, Utc};
use moat::Moat;
use moat::events::{Envelope, EventBus, Handler, HandlerContext, HandlerError};
use serde::Serialize;
use sqlx::PgConnection;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::lab_results::LabResultRecorded;
use crate::prescriptions::PrescriptionIssued;

/// The module's name in the manifest.
pub const MODULE: &str = "billing";

/// What a prescription costs, in cents (12.50).
pub const PRESCRIPTION_PRICE_CENTS: i64 = 1250;

/// What a lab test costs, in cents (35.00).
pub const LAB_TEST_PRICE_CENTS: i64 = 3500;

/// A charge.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema, sqlx::FromRow)]
pub struct Charge {
    /// The charge's id.
    pub id: Uuid,
    /// The patient charged.
    pub patient_id: Uuid,
    /// What it is for: `prescription` or `lab_result`.
    #[schema(example = "prescription")]
    pub source: String,
    /// The prescription's or lab result's id.
    pub source_id: Uuid,
    /// A line for the invoice.
    #[schema(example = "Prescription: amoxicillin")]
    pub description: String,
    /// The amount (two decimals).
    #[schema(example = 12.5)]
    pub amount: f64,
    /// When the charge was created.
    pub created_at: DateTime<Utc>,
}

/// A patient's charges, oldest first.
pub async fn for_patient(app: &Moat, patient_id: Uuid) -> Result<Vec<Charge>, moat::Error> {
    Ok(sqlx::query_as(
        "SELECT id, patient_id, source, source_id, description, amount::float8 AS amount, created_at \
         FROM charges WHERE patient_id = $1 ORDER BY created_at, id",
    )
    .bind(patient_id)
    .fetch_all(&app.pool(MODULE)?)
    .await?)
}

/// Charges once per source: a second delivery of the same event inserts nothing.
async fn charge(
    conn: &mut PgConnection,
    patient_id: Uuid,
    source: &str,
    source_id: Uuid,
    description: &str,
    cents: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO charges (patient_id, source, source_id, description, amount) \
         VALUES ($1, $2, $3, $4, $5::bigint / 100.0) ON CONFLICT (source, source_id) DO NOTHING",
    )
    .bind(patient_id)
    .bind(source)
    .bind(source_id)
    .bind(description)
    .bind(cents)
    .execute(conn)
    .await?;
    Ok(())
}

/// Charges for prescriptions and lab tests from their events.
#[derive(Debug, Clone, Copy)]
pub struct Charges;

impl Handler<PrescriptionIssued> for Charges {
    async fn handle(
        &self,
        ctx: &mut HandlerContext<'_>,
        event: &Envelope<PrescriptionIssued>,
    ) -> Result<(), HandlerError> {
        let rx = &event.payload;
        let description = format!("Prescription: {}", rx.medication);
        charge(ctx, rx.patient_id, "prescription", rx.prescription_id, &description, PRESCRIPTION_PRICE_CENTS).await?;
        Ok(())
    }
}

impl Handler<LabResultRecorded> for Charges {
    async fn handle(
        &self,
        ctx: &mut HandlerContext<'_>,
        event: &Envelope<LabResultRecorded>,
    ) -> Result<(), HandlerError> {
        let result = &event.payload;
        let description = format!("Lab test: {}", result.test);
        charge(ctx, result.patient_id, "lab_result", result.lab_result_id, &description, LAB_TEST_PRICE_CENTS).await?;
        Ok(())
    }
}

/// Registers the module's handlers.
pub fn subscribe(bus: EventBus) -> Result<EventBus, moat::Error> {
    bus.subscribe::<PrescriptionIssued, _>(MODULE, Charges)?.subscribe::<LabResultRecorded, _>(MODULE, Charges)
}
