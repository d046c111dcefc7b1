//! The OpenAPI document of the service (`GET /openapi.json`), generated from the handlers'
//! annotations so that it cannot drift from the routes.

use std::sync::LazyLock;

use utoipa::OpenApi;

use crate::{billing, lab_results, patients, prescriptions, reports};

/// The document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "clinic",
        description = "The hospital of the seed documents on moat: patients, prescriptions, lab results and billing, \
                       each a module with its own PostgreSQL schema and role. Every error answers with a JSON body \
                       `{\"error\": code, \"message\": text}`."
    ),
    paths(
        crate::health,
        patients::http::create_patient,
        patients::http::get_patient,
        patients::http::update_patient,
        patients::http::list_admissions,
        prescriptions::http::issue_prescription,
        prescriptions::http::list_prescriptions,
        lab_results::http::record_lab_result,
        lab_results::http::list_lab_results,
        billing::http::list_charges,
        reports::get_ward_census,
    ),
    tags(
        (name = "patients", description = "Module `patients`: patients and admissions; publishes PatientUpdated"),
        (name = "prescriptions", description = "Module `prescriptions`: prescriptions with a patient snapshot"),
        (name = "lab_results", description = "Module `lab_results`: results, visible per ward (row-level security)"),
        (name = "billing", description = "Module `billing`: charges created from prescriptions and lab results"),
        (name = "reports", description = "Contract views read by the `reporting` consumer"),
        (name = "service", description = "The service itself"),
    )
)]
pub struct ApiDoc;

/// The JSON Schema pattern of a UUID as the service accepts it in ids, paths, queries and headers.
pub const UUID_PATTERN: &str = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

/// The document as served: [`ApiDoc`] with a `pattern` on every `format: uuid` string, because
/// JSON Schema treats `format` as a mere annotation and clients (and property-based testers) would
/// otherwise take any string for a valid id.
pub fn document_json() -> serde_json::Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    add_uuid_patterns(&mut document);
    add_patient_links(&mut document);
    document
}

/// OpenAPI links from a created patient (`POST /patients`, 201) to every operation that takes a
/// patient id, so that clients, and property-based testers chaining calls, know where the id
/// goes: a random UUID names no patient, a created one does.
fn add_patient_links(document: &mut serde_json::Value) {
    let id = "$response.body#/id";
    let links = serde_json::json!({
        "GetPatient": {"operationId": "get_patient", "parameters": {"path.id": id}},
        "UpdatePatient": {"operationId": "update_patient", "parameters": {"path.id": id}},
        "ListAdmissions": {"operationId": "list_admissions", "parameters": {"path.id": id}},
        "ListPrescriptions": {"operationId": "list_prescriptions", "parameters": {"query.patient_id": id}},
        "ListLabResults": {"operationId": "list_lab_results", "parameters": {"query.patient_id": id}},
        "ListCharges": {"operationId": "list_charges", "parameters": {"query.patient_id": id}},
        "IssuePrescription": {"operationId": "issue_prescription", "requestBody": {"patient_id": id, "medication": "aspirin", "dose_amount": 75}},
        "RecordLabResult": {"operationId": "record_lab_result", "requestBody": {"patient_id": id, "test": "glucose", "value": 5.4, "unit": "mmol/L"}},
    });
    if let Some(created) = document.pointer_mut("/paths/~1patients/post/responses/201") {
        created["links"] = links;
    }
}

fn add_uuid_patterns(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(object) => {
            if object.get("format").and_then(|f| f.as_str()) == Some("uuid") && !object.contains_key("pattern") {
                object.insert("pattern".to_owned(), UUID_PATTERN.into());
            }
            object.values_mut().for_each(add_uuid_patterns);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(add_uuid_patterns),
        _ => {}
    }
}

static DOCUMENT: LazyLock<serde_json::Value> = LazyLock::new(document_json);

/// `GET /openapi.json`.
pub async fn document() -> axum::Json<&'static serde_json::Value> {
    axum::Json(&DOCUMENT)
}
