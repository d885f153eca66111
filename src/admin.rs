//! The admin HTTP server: `/metrics` (Prometheus text), `/healthz` (503 while a controller loop
//! is wedged) and `/readyz` (503 while a watch is starting, down or stalled), both read from
//! [`Health`] with a body that names what is wrong.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use prometheus_client::registry::Registry;

use crate::Error;
use crate::health::Health;

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

/// Binds the admin address (so that a taken port fails start-up rather than later).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Serve {
            what: format!("binding the admin server to {addr}"),
            source,
        })?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "admin server listening");
    Ok(listener)
}

/// Serves until `shutdown` resolves. `health` decides `/healthz` and `/readyz`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AdminState { registry, health });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| Error::Serve {
            what: "serving the admin endpoints".into(),
            source,
        })
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    state.health.update_metrics(tokio::time::Instant::now());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        crate::metrics::encode(&state.registry),
    )
}

fn answer(verdict: Result<String, String>) -> (StatusCode, String) {
    match verdict {
        Ok(body) => (StatusCode::OK, body),
        Err(body) => (StatusCode::SERVICE_UNAVAILABLE, body),
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    answer(state.health.readiness(tokio::time::Instant::now()))
}

async fn healthz(State(state): State<AdminState>) -> impl IntoResponse {
    answer(state.health.liveness(tokio::time::Instant::now()))
}
