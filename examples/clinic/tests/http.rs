//! End to end over HTTP: the clinic served on a real TCP port, against a real PostgreSQL, one
//! database and project per test.
#![allow(clippy::unwrap_used)]

mod common;

use clinic::{Clinic, Service};
use common::{Api, eventually, project, unique_mrn, ward};
use moat::Config;
use moat_testkit::{TestDb, TestProject};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// A clinic serving on 127.0.0.1 (any free port) until [`Running::stop`].
struct Running {
    api: Api,
    clinic: Clinic,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
    db: TestDb,
    _project: TestProject,
}

impl Running {
    async fn start() -> Self {
        let db = TestDb::new().await;
        let project = project(&db);
        let service = Service::start(Config::new(project.manifest()).database_url(db.url.expose())).await.unwrap();
        let clinic = service.clinic().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = Api::new(format!("http://{}", listener.local_addr().unwrap()));
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(service.serve(listener, async {
            let _ = stopped.await;
        }));
        Self { api, clinic, stop, served, db, _project: project }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.served.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_renamed_patient_appears_renamed_in_the_prescription_list() {
    let clinic = Running::start().await;
    let api = &clinic.api;
    let patient = api.create_patient("Ada", "Lovelace", None).await;
    let reply = api
        .post("/prescriptions", &json!({"patient_id": patient, "medication": "digitalis", "dose_amount": 0.25}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.body["patient_id"], patient);
    assert_eq!(reply.body["medication"], "digitalis");
    assert_eq!(reply.body["dose_amount"], 0.25);

    let list = format!("/prescriptions?patient_id={patient}");
    eventually("the prescription list shows the patient's name", || async {
        let reply = api.get(&list).await;
        (reply.body[0]["patient_name"] == "Ada Lovelace").then_some(())
    })
    .await;

    let mrn = unique_mrn();
    let reply = api
        .put(
            &format!("/patients/{patient}"),
            &json!({"mrn": mrn, "first_name": "Augusta Ada", "last_name": "King", "ward_id": null}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["version"], 2);
    let reply = api.get(&format!("/patients/{patient}")).await;
    assert_eq!((reply.status, &reply.body["first_name"]), (StatusCode::OK, &json!("Augusta Ada")));

    let item = eventually("the prescription list shows the new name", || async {
        let reply = api.get(&list).await;
        assert_eq!(reply.status, StatusCode::OK);
        (reply.body[0]["patient_name"] == "Augusta Ada King").then(|| reply.body[0].clone())
    })
    .await;
    assert_eq!(item["mrn"], mrn.as_str());
    assert_eq!(item["dose_amount"], 0.25);

    // The name came from the module's own snapshot: its role cannot read the patients schema.
    let denied = sqlx::query("SELECT first_name FROM patients.patients")
        .execute(&clinic.clinic.moat().pool("prescriptions").unwrap())
        .await
        .unwrap_err();
    assert_eq!(moat::admin::error::sqlstate(&denied).as_deref(), Some("42501"));
    clinic.stop().await;
}

#[tokio::test]
async fn a_prescription_or_lab_result_for_an_unknown_patient_is_422_and_stores_nothing() {
    let clinic = Running::start().await;
    let api = &clinic.api;
    let stranger = uuid::Uuid::new_v4().to_string();
    let reply =
        api.post("/prescriptions", &json!({"patient_id": stranger, "medication": "aspirin", "dose_amount": 100})).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.body["error"], "unknown_patient");
    assert!(reply.body["message"].as_str().unwrap().contains(&stranger), "{:?}", reply.body);

    let reply = api
        .post("/lab-results", &json!({"patient_id": stranger, "test": "glucose", "value": 5.4, "unit": "mmol/L"}))
        .await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.body["error"], "unknown_patient");

    // Listing what an unknown patient has is a 404 that says so, not an empty list.
    let reply = api.get(&format!("/prescriptions?patient_id={stranger}")).await;
    assert_eq!((reply.status, &reply.body["error"]), (StatusCode::NOT_FOUND, &json!("unknown_patient")));
    let mut admin = clinic.db.connect().await;
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM prescriptions.prescriptions) + (SELECT count(*) FROM lab_results.lab_results)",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert_eq!(rows, 0);
    clinic.stop().await;
}

#[tokio::test]
async fn the_ward_policy_hides_other_wards_lab_results() {
    let clinic = Running::start().await;
    let api = &clinic.api;
    let (north, south) = (ward(), ward());
    let ada = api.create_patient("Ada", "Lovelace", Some(&north)).await;
    let grace = api.create_patient("Grace", "Hopper", Some(&south)).await;
    let alan = api.create_patient("Alan", "Turing", None).await;
    let mut results = std::collections::BTreeMap::new();
    for (patient, value) in [(&ada, 13.5), (&grace, 12.1), (&alan, 14.2)] {
        let reply = api
            .post("/lab-results", &json!({"patient_id": patient, "test": "hemoglobin", "value": value, "unit": "g/dL"}))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        assert_eq!(reply.body["value"], value);
        results.insert(patient.clone(), reply.body["id"].as_str().unwrap().to_owned());
    }
    let ids = |reply: &common::Reply| -> Vec<String> {
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        reply.body.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
    };

    // Once the wards have reached the module's snapshot, each ward sees its own patients' results.
    eventually("ward north sees Ada's result", || async {
        (ids(&api.get_with_ward("/lab-results", &north).await) == vec![results[&ada].clone()]).then_some(())
    })
    .await;
    eventually("ward south sees Grace's result", || async {
        (ids(&api.get_with_ward("/lab-results", &south).await) == vec![results[&grace].clone()]).then_some(())
    })
    .await;
    // Asking for another ward's patient by id shows nothing; so does a ward with no patients.
    assert!(ids(&api.get_with_ward(&format!("/lab-results?patient_id={grace}"), &north).await).is_empty());
    assert_eq!(
        ids(&api.get_with_ward(&format!("/lab-results?patient_id={ada}"), &north).await),
        [results[&ada].clone()]
    );
    assert!(ids(&api.get_with_ward("/lab-results", &ward()).await).is_empty());
    assert!(ids(&api.get_with_ward(&format!("/lab-results?patient_id={alan}"), &north).await).is_empty());

    // The filtering is PostgreSQL's: the module's role, with no ward set, sees no row at all,
    // although three are stored.
    let pool = clinic.clinic.moat().pool("lab_results").unwrap();
    let visible: i64 = sqlx::query_scalar("SELECT count(*) FROM lab_results").fetch_one(&pool).await.unwrap();
    assert_eq!(visible, 0);
    let mut admin = clinic.db.connect().await;
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM lab_results.lab_results").fetch_one(&mut admin).await.unwrap();
    assert_eq!(stored, 3);

    // Ada moves to ward south: her result follows her.
    let reply = api
        .put(
            &format!("/patients/{ada}"),
            &json!({"mrn": unique_mrn(), "first_name": "Ada", "last_name": "Lovelace", "ward_id": south}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    eventually("Ada's result moves to ward south", || async {
        let south_ids = ids(&api.get_with_ward("/lab-results", &south).await);
        (south_ids.len() == 2 && ids(&api.get_with_ward("/lab-results", &north).await).is_empty()).then_some(())
    })
    .await;
    let admissions = api.get(&format!("/patients/{ada}/admissions")).await;
    assert_eq!(admissions.status, StatusCode::OK);
    let wards: Vec<(&Value, bool)> =
        admissions.body.as_array().unwrap().iter().map(|a| (&a["ward_id"], a["discharged_at"].is_null())).collect();
    assert_eq!(wards, [(&json!(north), false), (&json!(south), true)]);

    // Without a ward, or with something that is not one, the request is refused.
    let reply = api.get("/lab-results").await;
    assert_eq!((reply.status, &reply.body["error"]), (StatusCode::BAD_REQUEST, &json!("missing_ward")));
    let reply = api.get_with_ward("/lab-results", "north").await;
    assert_eq!((reply.status, &reply.body["error"]), (StatusCode::BAD_REQUEST, &json!("invalid_ward")));
    clinic.stop().await;
}

#[tokio::test]
async fn charges_appear_for_prescriptions_and_lab_results() {
    let clinic = Running::start().await;
    let api = &clinic.api;
    let patient = api.create_patient("Ada", "Lovelace", Some(&ward())).await;
    let mut expected = Vec::new();
    for medication in ["amoxicillin", "ibuprofen"] {
        let reply = api
            .post("/prescriptions", &json!({"patient_id": patient, "medication": medication, "dose_amount": 500}))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
        expected.push((
            json!("prescription"),
            reply.body["id"].clone(),
            json!(format!("Prescription: {medication}")),
            json!(12.5),
        ));
    }
    let reply = api
        .post("/lab-results", &json!({"patient_id": patient, "test": "ferritin", "value": 30, "unit": "ng/mL"}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    expected.push((json!("lab_result"), reply.body["id"].clone(), json!("Lab test: ferritin"), json!(35.0)));
    let other = api.create_patient("Grace", "Hopper", None).await;

    let charges = eventually("three charges", || async {
        let reply = api.get(&format!("/billing/charges?patient_id={patient}")).await;
        assert_eq!(reply.status, StatusCode::OK);
        (reply.body.as_array().unwrap().len() >= 3).then_some(reply.body)
    })
    .await;
    let mut got: Vec<(Value, Value, Value, Value)> = charges
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["patient_id"], patient.as_str());
            (c["source"].clone(), c["source_id"].clone(), c["description"].clone(), c["amount"].clone())
        })
        .collect();
    got.sort_by_key(|c| c.1.to_string());
    expected.sort_by_key(|c| c.1.to_string());
    assert_eq!(got, expected);
    assert_eq!(api.get(&format!("/billing/charges?patient_id={other}")).await.body, json!([]));
    clinic.stop().await;
}

#[tokio::test]
async fn the_census_is_read_as_the_reporting_role_which_cannot_read_any_module_table() {
    let clinic = Running::start().await;
    let api = &clinic.api;
    let (north, south) = (ward(), ward());
    let ada = api.create_patient("Ada", "Lovelace", Some(&north)).await;
    let grace = api.create_patient("Grace", "Hopper", Some(&north)).await;
    api.create_patient("Alan", "Turing", Some(&south)).await;
    api.create_patient("Edsger", "Dijkstra", None).await;
    for (patient, n) in [(&ada, 2), (&grace, 1)] {
        for _ in 0..n {
            let reply = api
                .post("/prescriptions", &json!({"patient_id": patient, "medication": "aspirin", "dose_amount": 75}))
                .await;
            assert_eq!(reply.status, StatusCode::CREATED);
        }
    }
    let reply = api.get("/reports/ward-census").await;
    assert_eq!(reply.status, StatusCode::OK);
    let mut census: Vec<Value> = reply.body.as_array().unwrap().clone();
    census.sort_by_key(|line| line["ward_id"].to_string());
    let mut expected = vec![
        json!({"ward_id": north, "patients": 2, "prescriptions": 3}),
        json!({"ward_id": south, "patients": 1, "prescriptions": 0}),
        json!({"ward_id": null, "patients": 1, "prescriptions": 0}),
    ];
    expected.sort_by_key(|line| line["ward_id"].to_string());
    assert_eq!(census, expected);

    // The reporting role reads the view and not one table of any module (moat's own included).
    let reporting = clinic.clinic.moat().consumer_pool("reporting").unwrap();
    let lines: i64 = sqlx::query_scalar("SELECT count(*) FROM ward_census").fetch_one(reporting).await.unwrap();
    assert_eq!(lines, 3);
    let mut admin = clinic.db.connect().await;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables \
         WHERE schemaname IN ('patients', 'prescriptions', 'lab_results', 'billing') ORDER BY 1",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    for table in ["patients.patients", "patients.admissions", "prescriptions.prescriptions", "billing.charges"] {
        assert!(tables.iter().any(|t| t == table), "{table} in {tables:?}");
    }
    for table in &tables {
        let denied = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT * FROM {table} LIMIT 1")))
            .execute(reporting)
            .await
            .expect_err(table);
        assert_eq!(moat::admin::error::sqlstate(&denied).as_deref(), Some("42501"), "{table}: {denied}");
    }
    clinic.stop().await;
}

#[tokio::test]
async fn bad_input_is_a_4xx_with_a_json_body_that_says_what_is_wrong() {
    let clinic = Running::start().await;
    let api = &clinic.api;
    let patient = api.create_patient("Ada", "Lovelace", None).await;
    let taken = api.get(&format!("/patients/{patient}")).await.body["mrn"].as_str().unwrap().to_owned();
    let json = Some("application/json");
    let valid = |mrn: &str| json!({"mrn": mrn, "first_name": "A", "last_name": "B", "ward_id": null}).to_string();
    // (method, path, content type, body, status, error code, a word the message must contain)
    type Case<'a> = (&'a str, String, Option<&'a str>, String, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        ("POST", "/patients".into(), json, "{\"mrn\": ".into(), 400, "invalid_body", "EOF"),
        ("POST", "/patients".into(), json, "42".into(), 422, "invalid_body", "invalid type"),
        (
            "POST",
            "/patients".into(),
            json,
            r#"{"first_name": "A", "last_name": "B"}"#.into(),
            422,
            "invalid_body",
            "mrn",
        ),
        (
            "POST",
            "/patients".into(),
            json,
            r#"{"mrn": 7, "first_name": "A", "last_name": "B"}"#.into(),
            422,
            "invalid_body",
            "mrn",
        ),
        (
            "POST",
            "/patients".into(),
            json,
            r#"{"mrn": "M", "first_name": " ", "last_name": "B"}"#.into(),
            422,
            "invalid_body",
            "first_name",
        ),
        (
            "POST",
            "/patients".into(),
            json,
            r#"{"mrn": "M\u0000", "first_name": "A", "last_name": "B"}"#.into(),
            422,
            "invalid_body",
            "NUL",
        ),
        (
            "POST",
            "/patients".into(),
            json,
            r#"{"mrn": "M", "first_name": "A", "last_name": "B", "ward_id": "x"}"#.into(),
            422,
            "invalid_body",
            "ward_id",
        ),
        ("POST", "/patients".into(), None, valid("M-1"), 415, "invalid_body", "Content-Type"),
        ("POST", "/patients".into(), json, valid(&taken), 409, "mrn_taken", &taken),
        ("PUT", format!("/patients/{patient}"), json, r#"{"mrn": "M"}"#.into(), 422, "invalid_body", "first_name"),
        ("PUT", "/patients/not-a-uuid".into(), json, valid("M-2"), 400, "invalid_path", "id"),
        ("PUT", format!("/patients/{}", uuid::Uuid::nil()), json, valid("M-3"), 404, "not_found", "does not exist"),
        ("GET", "/patients/42".into(), None, String::new(), 400, "invalid_path", "UUID"),
        ("GET", format!("/patients/{}", uuid::Uuid::nil()), None, String::new(), 404, "not_found", "does not exist"),
        (
            "POST",
            "/prescriptions".into(),
            json,
            format!(r#"{{"patient_id": "{patient}", "medication": "x", "dose_amount": 0}}"#),
            422,
            "invalid_body",
            "dose_amount",
        ),
        (
            "POST",
            "/prescriptions".into(),
            json,
            format!(r#"{{"patient_id": "{patient}", "medication": "x", "dose_amount": "1"}}"#),
            422,
            "invalid_body",
            "dose_amount",
        ),
        (
            "POST",
            "/prescriptions".into(),
            json,
            format!(r#"{{"patient_id": "{patient}", "dose_amount": 1}}"#),
            422,
            "invalid_body",
            "medication",
        ),
        (
            "POST",
            "/prescriptions".into(),
            json,
            format!(r#"{{"patient_id": "{patient}", "medication": "x", "dose_amount": 1e999}}"#),
            400,
            "invalid_body",
            "number",
        ),
        (
            "POST",
            "/lab-results".into(),
            json,
            r#"{"patient_id": 1, "test": "t", "value": 1, "unit": "u"}"#.into(),
            422,
            "invalid_body",
            "patient_id",
        ),
        (
            "POST",
            "/patients".into(),
            json,
            r#"{"mrn": "M", "first_name": "A", "last_name": "B"}"#.into(),
            422,
            "invalid_body",
            "ward_id",
        ),
        (
            "POST",
            "/prescriptions".into(),
            json,
            format!(r#"{{"patient_id": "{patient}", "medication": "x", "dose_amount": 1e16}}"#),
            422,
            "invalid_body",
            "dose_amount",
        ),
        (
            "POST",
            "/lab-results".into(),
            json,
            format!(r#"{{"patient_id": "{patient}", "test": "t", "value": -1.7976931348623157e308, "unit": "u"}}"#),
            422,
            "invalid_body",
            "value",
        ),
        (
            "GET",
            format!("/prescriptions?patient_id={}", uuid::Uuid::nil()),
            None,
            String::new(),
            404,
            "unknown_patient",
            "does not exist",
        ),
        (
            "GET",
            format!("/billing/charges?patient_id={}", uuid::Uuid::nil()),
            None,
            String::new(),
            404,
            "unknown_patient",
            "does not exist",
        ),
        ("GET", "/prescriptions".into(), None, String::new(), 400, "invalid_query", "patient_id"),
        ("GET", "/prescriptions?patient_id=x".into(), None, String::new(), 400, "invalid_query", "patient_id"),
        ("GET", "/billing/charges?patient_id=".into(), None, String::new(), 400, "invalid_query", "patient_id"),
        ("GET", "/nowhere".into(), None, String::new(), 404, "not_found", "/nowhere"),
        ("DELETE", "/patients".into(), None, String::new(), 405, "method_not_allowed", "DELETE"),
    ];
    for (method, path, content_type, body, status, code, word) in cases {
        let reply = api.raw(method, &path, content_type, &body).await;
        let case = format!("{method} {path} {body}: {reply:?}");
        assert_eq!(reply.status.as_u16(), status, "{case}");
        assert_eq!(reply.content_type.as_deref(), Some("application/json"), "{case}");
        assert_eq!(reply.body["error"], code, "{case}");
        assert!(reply.body["message"].as_str().unwrap().contains(word), "{case}");
    }
    // The ward header: an unknown patient is a 404, two wards are refused.
    let nil = uuid::Uuid::nil();
    let reply = api.get_with_headers(&format!("/lab-results?patient_id={nil}"), &[("X-Ward-Id", &ward())]).await;
    assert_eq!((reply.status.as_u16(), &reply.body["error"]), (404, &json!("unknown_patient")), "{reply:?}");
    let reply = api.get_with_headers("/lab-results", &[("X-Ward-Id", &ward()), ("X-Ward-Id", &ward())]).await;
    assert_eq!((reply.status.as_u16(), &reply.body["error"]), (400, &json!("invalid_ward")), "{reply:?}");
    // Nothing of the refused requests was stored.
    let mut admin = clinic.db.connect().await;
    let patients: i64 =
        sqlx::query_scalar("SELECT count(*) FROM patients.patients").fetch_one(&mut admin).await.unwrap();
    assert_eq!(patients, 1);
    clinic.stop().await;
}

/// Values at the edges of what the contract allows are stored, published and delivered as sent: a
/// text that spells an escape (`\u0000`, a backslash and five characters) is not a NUL character,
/// and `-0` is `0`.
#[tokio::test]
async fn edge_values_are_stored_and_delivered_as_sent() {
    let clinic = Running::start().await;
    let api = &clinic.api;
    let ward = ward();
    let reply = api
        .post("/patients", &json!({"mrn": unique_mrn(), "first_name": "\\u0000", "last_name": "Ada", "ward_id": ward}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    let patient = reply.body["id"].as_str().unwrap().to_owned();
    let reply =
        api.post("/prescriptions", &json!({"patient_id": patient, "medication": "\\u0000", "dose_amount": 1e15})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    let reply =
        api.post("/lab-results", &json!({"patient_id": patient, "test": "t", "value": -0.0, "unit": "u"})).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
    assert_eq!(reply.body["value"].to_string(), "0.0", "{reply:?}");
    let list = format!("/prescriptions?patient_id={patient}");
    eventually("the snapshot holds the name as sent", || async {
        (api.get(&list).await.body[0]["patient_name"] == "\\u0000 Ada").then_some(())
    })
    .await;
    let charges = format!("/billing/charges?patient_id={patient}");
    eventually("both charges appear", || async {
        (api.get(&charges).await.body.as_array().map(Vec::len) == Some(2)).then_some(())
    })
    .await;
    let results = format!("/lab-results?patient_id={patient}");
    let value = eventually("the lab result is visible in the ward", || async {
        let results = api.get_with_ward(&results, &ward).await.body;
        (results.as_array().map(Vec::len) == Some(1)).then(|| results[0]["value"].clone())
    })
    .await;
    assert_eq!(value.to_string(), "0.0");
    clinic.stop().await;
}

#[tokio::test]
async fn an_internal_error_is_a_generic_500_that_leaks_nothing() {
    let clinic = Running::start().await;
    let api = &clinic.api;
    let patient = api.create_patient("Ada", "Lovelace", None).await;
    // Closing the pools under the running service makes every query fail inside the handlers.
    clinic.clinic.moat().close().await;
    let reply = api.get(&format!("/patients/{patient}")).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reply.body, json!({"error": "internal", "message": "internal server error"}));
    let reply = api.post("/prescriptions", &json!({"patient_id": patient, "medication": "x", "dose_amount": 1})).await;
    assert_eq!(reply.body, json!({"error": "internal", "message": "internal server error"}));
    clinic.stop().await;
}

#[tokio::test]
async fn health_and_the_openapi_document_describe_every_route() {
    let clinic = Running::start().await;
    let api = &clinic.api;
    let reply = api.get("/health").await;
    assert_eq!((reply.status, reply.body), (StatusCode::OK, json!({"status": "ok"})));
    let reply = api.get("/openapi.json").await;
    assert_eq!(reply.status, StatusCode::OK);
    let paths = reply.body["paths"].as_object().unwrap();
    let mut operations: Vec<String> = paths
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().keys().map(move |m| format!("{m} {path}")))
        .collect();
    operations.sort();
    assert_eq!(
        operations,
        [
            "get /billing/charges",
            "get /health",
            "get /lab-results",
            "get /patients/{id}",
            "get /patients/{id}/admissions",
            "get /prescriptions",
            "get /reports/ward-census",
            "post /lab-results",
            "post /patients",
            "post /prescriptions",
            "put /patients/{id}",
        ]
    );
    let ward_header = &reply.body["paths"]["/lab-results"]["get"]["parameters"];
    assert!(
        ward_header
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "X-Ward-Id" && p["in"] == "header" && p["required"] == true)
    );
    // The rules the handlers enforce are in the document, so that generated clients and tests
    // know them: UUIDs have a pattern, texts a length and a pattern.
    let id = &reply.body["paths"]["/patients/{id}"]["get"]["parameters"][0]["schema"];
    assert_eq!(id["pattern"], clinic::openapi::UUID_PATTERN);
    let text = &reply.body["components"]["schemas"]["Text"];
    assert_eq!((&text["minLength"], &text["maxLength"]), (&json!(1), &json!(200)));
    assert_eq!(text["pattern"], clinic::input::TEXT_PATTERN);
    // Every link from a created patient names an operation of the document.
    let operation_ids: Vec<&Value> =
        paths.values().flat_map(|item| item.as_object().unwrap().values().map(|op| &op["operationId"])).collect();
    let links = reply.body["paths"]["/patients"]["post"]["responses"]["201"]["links"].as_object().unwrap();
    assert_eq!(links.len(), 8);
    for (name, link) in links {
        assert!(operation_ids.contains(&&link["operationId"]), "link {name}: {link}");
    }
    clinic.stop().await;
}
