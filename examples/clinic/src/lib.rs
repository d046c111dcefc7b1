//! The hospital of the seed documents, running on moat: four modules of one axum service, each in
//! its own PostgreSQL schema, logged in as its own role, with its own migrations.
//!
//! * [`patients`] owns patients and their admissions and publishes [`patients::PatientUpdated`];
//!   its Rust API ([`patients::exists`]) is how the other modules validate a patient id.
//! * [`prescriptions`] keeps prescriptions and a patient snapshot fed by `PatientUpdated`, so that
//!   it can show a patient's name without reading the patients schema (its role cannot).
//! * [`lab_results`] keeps results and a snapshot of each patient's ward; a row-level security
//!   policy shows a session only the results of the ward it names.
//! * [`billing`] charges for every prescription issued and every lab result recorded, from their
//!   events.
//! * [`reports`] reads the `ward_census` contract view as the `reporting` consumer.
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let service = clinic::Service::start(moat::Config::from_manifest("examples/clinic/moat.toml")?).await?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! service.serve(listener, clinic::shutdown_signal()).await?;
//! # Ok(()) }
//! ```
//!
//! No module's code names another module's schema: each module's SQL uses unqualified names that
//! its role's `search_path` resolves to its own schema, and crosses a boundary only through
//! another module's Rust API or its events.

pub mod billing;
pub mod error;
pub mod input;
pub mod lab_results;
pub mod openapi;
pub mod patients;
pub mod prescriptions;
pub mod reports;

use std::future::Future;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use moat::Moat;
use moat::events::{Dispatcher, EventBus};
use serde::Serialize;
use utoipa::ToSchema;

pub use error::AppError;

/// What every handler gets: the running moat application (one pool per module).
#[derive(Debug, Clone)]
pub struct Clinic {
    moat: Moat,
}

impl Clinic {
    /// Wraps a started moat application.
    pub fn new(moat: Moat) -> Self {
        Self { moat }
    }

    /// The moat application: module pools, transactions, events.
    pub fn moat(&self) -> &Moat {
        &self.moat
    }
}

/// The HTTP service: every module's router, `/health` and `/openapi.json`.
pub fn app(clinic: Clinic) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi::document))
        .merge(patients::http::router())
        .merge(prescriptions::http::router())
        .merge(lab_results::http::router())
        .merge(billing::http::router())
        .merge(reports::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(clinic)
}

/// Registers every module's event handlers.
pub fn subscribe(bus: EventBus) -> Result<EventBus, moat::Error> {
    let bus = prescriptions::subscribe(bus)?;
    let bus = lab_results::subscribe(bus)?;
    billing::subscribe(bus)
}

/// The started service: moat (provisioned, migrated, audited) and the event dispatcher.
#[derive(Debug)]
pub struct Service {
    clinic: Clinic,
    dispatcher: Dispatcher,
}

impl Service {
    /// Provisions the database, applies every module's migrations, audits (refusing to start on an
    /// error finding), then starts delivering events.
    pub async fn start(config: moat::Config) -> Result<Self, moat::Error> {
        let moat = Moat::start(config).await?;
        let dispatcher = match subscribe(moat.events())?.start().await {
            Ok(dispatcher) => dispatcher,
            Err(e) => {
                moat.close().await;
                return Err(e);
            }
        };
        Ok(Self { clinic: Clinic::new(moat), dispatcher })
    }

    /// The handlers' state.
    pub fn clinic(&self) -> &Clinic {
        &self.clinic
    }

    /// Serves HTTP on `listener` until `shutdown` completes, lets requests in flight finish, then
    /// stops the dispatcher and closes the pools.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let served = axum::serve(listener, app(self.clinic.clone())).with_graceful_shutdown(shutdown).await;
        self.stop().await;
        served
    }

    /// Stops the dispatcher (after the batches in flight) and closes the pools.
    pub async fn stop(self) {
        self.dispatcher.shutdown().await;
        self.clinic.moat.close().await;
    }
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
        () = terminate => tracing::info!("SIGTERM: shutting down"),
    }
}

/// The body of `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`: the service serves only after start-up provisioned, migrated and audited.
    pub status: &'static str,
}

/// The service is up (it serves only once start-up succeeded).
#[utoipa::path(get, path = "/health", tag = "service", responses((status = 200, description = "The service is up", body = Health)))]
pub async fn health() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

async fn not_found(uri: axum::http::Uri) -> AppError {
    AppError::client(StatusCode::NOT_FOUND, "not_found", format!("no route for `{}`", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> impl IntoResponse {
    AppError::client(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("`{method}` is not allowed on `{}`", uri.path()),
    )
}
