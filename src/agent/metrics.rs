//! The agent's metrics (a `hotconf_agent`-prefixed prometheus-client registry) and its admin
//! server: `/metrics`, `/healthz` (the process serves) and `/readyz` (a document was handed
//! on).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of `hotconf_agent_reloads_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// An [`Outcome`] label.
    pub result: String,
}

impl From<Outcome> for ReloadLabels {
    fn from(outcome: Outcome) -> Self {
        ReloadLabels {
            result: outcome.label().to_string(),
        }
    }
}

/// How a new document ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Written and the application notified.
    Success,
    /// Refused by the checks; the last good document stays.
    Refused,
    /// Written, but a notification failed after its retries.
    NotifyFailed,
    /// The output file could not be written.
    WriteFailed,
}

impl Outcome {
    /// The `result` label.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Refused => "refused",
            Outcome::NotifyFailed => "notify_failed",
            Outcome::WriteFailed => "write_failed",
        }
    }
}

/// The agent's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reloads: Family<ReloadLabels, Counter>,
    latency: Histogram,
    revision: Gauge,
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers the metrics.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hotconf_agent");
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "reloads",
            "New documents handled, by result (success, refused, notify_failed, write_failed)",
            reloads.clone(),
        );
        // 1 ms .. ~33 s.
        let latency = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.001, 2.0, 16,
        ));
        registry.register(
            "reload_latency_seconds",
            "From the source noticing a change to the application being notified",
            latency.clone(),
        );
        let revision = Gauge::default();
        registry.register(
            "applied_revision",
            "The revision handed to the application (0: unknown)",
            revision.clone(),
        );
        for outcome in [
            Outcome::Success,
            Outcome::Refused,
            Outcome::NotifyFailed,
            Outcome::WriteFailed,
        ] {
            // Present from the start, so a rate() works before the first event.
            let _ = reloads.get_or_create(&outcome.into());
        }
        Metrics {
            registry,
            reloads,
            latency,
            revision,
            ready: AtomicBool::new(false),
        }
    }

    /// Counts a handled document.
    pub fn count(&self, outcome: Outcome) {
        self.reloads.get_or_create(&outcome.into()).inc();
    }

    /// Records the source→applied latency of a hand-off.
    pub fn observe_latency(&self, latency: Duration) {
        self.latency.observe(latency.as_secs_f64());
    }

    /// Records the revision handed on.
    pub fn set_revision(&self, revision: Option<i64>) {
        self.revision.set(revision.unwrap_or(0));
    }

    /// Marks the agent ready (a document was handed on).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Serves the admin endpoints on `addr` until `shutdown` resolves. Returns the bound address
/// (useful with port 0).
pub async fn serve(
    addr: &str,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, "the admin server stopped");
        }
    });
    Ok(bound)
}

async fn metrics_text(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.encode(),
    )
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    if metrics.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no document handed on yet")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_exposition_has_the_three_metrics() {
        let m = Metrics::new();
        m.count(Outcome::Success);
        m.count(Outcome::Refused);
        m.count(Outcome::Refused);
        m.observe_latency(Duration::from_millis(12));
        m.set_revision(Some(7));
        let text = m.encode();
        assert!(
            text.contains("hotconf_agent_reloads_total{result=\"refused\"} 2"),
            "{text}"
        );
        assert!(text.contains("hotconf_agent_reloads_total{result=\"success\"} 1"));
        assert!(text.contains("hotconf_agent_reload_latency_seconds_count 1"));
        assert!(text.contains("hotconf_agent_applied_revision 7"));
    }
}
