//! What the clinic's tests share: the clinic's own manifest, migrations and contract copied into a
//! test project (with the test's project name), a service on a real TCP port, an HTTP client.
#![allow(clippy::unwrap_used, clippy::panic, dead_code)]

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use moat_testkit::{TestDb, TestProject};
use reqwest::StatusCode;
use serde_json::Value;

/// How long an event may take to reach a snapshot or a charge before a test fails. Generous: the
/// tests run in parallel on debug builds.
pub const CONVERGE: Duration = Duration::from_secs(30);

/// The clinic's manifest, migrations and contract in a temporary folder, renamed to the test's
/// project so that its roles do not collide with any other test's.
pub fn project(db: &TestDb) -> TestProject {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("moat.toml")).unwrap();
    assert!(manifest.contains("name = \"clinic\""), "the clinic's manifest names its project `clinic`");
    let manifest = manifest.replace("name = \"clinic\"", "name = \"{project}\"");
    let mut files = Vec::new();
    for module in ["patients", "prescriptions", "lab_results", "billing"] {
        let folder = format!("src/{module}/migrations");
        for entry in std::fs::read_dir(root.join(&folder)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            files.push((format!("{folder}/{name}"), std::fs::read_to_string(&path).unwrap()));
        }
    }
    let contract = "contracts/ward_census.sql";
    files.push((contract.to_owned(), std::fs::read_to_string(root.join(contract)).unwrap()));
    let files: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
    TestProject::new(&db.project, &manifest, &files)
}

/// An HTTP client of a running clinic.
#[derive(Debug, Clone)]
pub struct Api {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    client: reqwest::Client,
}

/// A response: its status and its body as JSON (`Value::Null` when it is not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: Option<String>,
    pub body: Value,
}

impl Api {
    pub fn new(base: String) -> Self {
        Self { base, client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap() }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await.unwrap()
    }

    pub async fn get_with_ward(&self, path: &str, ward: &str) -> Reply {
        self.send(self.client.get(self.url(path)).header("X-Ward-Id", ward)).await.unwrap()
    }

    pub async fn get_with_headers(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.client.get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request).await.unwrap()
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(self.client.post(self.url(path)).json(body)).await.unwrap()
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.try_put(path, body).await.unwrap()
    }

    /// A PUT that may fail to get an answer (the server may be killed meanwhile).
    pub async fn try_put(&self, path: &str, body: &Value) -> Result<Reply, reqwest::Error> {
        self.send(self.client.put(self.url(path)).json(body)).await
    }

    /// Any request, with a raw body and content type.
    pub async fn raw(&self, method: &str, path: &str, content_type: Option<&str>, body: &str) -> Reply {
        let mut request = self.client.request(method.parse().unwrap(), self.url(path)).body(body.to_owned());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        self.send(request).await.unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Reply, reqwest::Error> {
        let response = request.send().await?;
        let status = response.status();
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).map(ToOwned::to_owned);
        let text = response.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply { status, content_type, body })
    }

    /// Creates a patient; returns its id.
    pub async fn create_patient(&self, first: &str, last: &str, ward: Option<&str>) -> String {
        let reply = self
            .post(
                "/patients",
                &serde_json::json!({"mrn": unique_mrn(), "first_name": first, "last_name": last, "ward_id": ward}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        reply.body["id"].as_str().unwrap().to_owned()
    }
}

/// A medical record number no other patient has.
pub fn unique_mrn() -> String {
    format!("MRN-{}", uuid::Uuid::new_v4().simple())
}

/// A new ward id.
pub fn ward() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Polls `probe` until it returns `Some`, for at most [`CONVERGE`]; panics with `what` otherwise.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(started.elapsed() < CONVERGE, "{what}: not within {CONVERGE:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
