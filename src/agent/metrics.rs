//! The agent's metrics (a `hotconf_agent`-prefixed prometheus-client registry) and its admin
//! server: `/metrics`, `/healthz` (the process serves) and `/readyz` (a good document was
//! handed on; see [`Readiness`]).
//!
//! The sources' health is read at each scrape from their [`health::Shared`] state, so a
//! source that went quiet shows as not up as soon as its bound passes, whether or not the
//! source itself noticed yet.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::health::{self, Restart, SourceHealth};
use super::source::Origin;

/// Labels of the OFREP evaluations.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlagLabels {
    /// The flag.
    pub flag: String,
    /// The variant it resolved to.
    pub variant: String,
    /// The OpenFeature reason.
    pub reason: String,
}

/// Labels of the OFREP evaluations that failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlagErrorLabels {
    /// The OFREP error code (`FLAG_NOT_FOUND`, `TARGETING_KEY_MISSING`, ...): not the flag,
    /// which a caller may name freely.
    pub code: String,
}

/// Labels of the per-source metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    /// `api` or `volume`.
    pub source: String,
}

/// Labels of `hotconf_agent_api_watch_restarts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestartLabels {
    /// A [`Restart`] label.
    pub reason: String,
}

/// Whether the agent has a good document for the application, as `/readyz` says. Once a
/// document was handed on it stays ready: a later refused document leaves the last good one
/// in place, and the application keeps running on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Readiness {
    /// No document came from any source yet.
    #[default]
    Waiting,
    /// Documents came, none could be handed on; why the latest could not.
    NoGoodDocument(String),
    /// A good document was handed on.
    Ready,
}

impl Readiness {
    /// A document was handed on.
    pub fn handed_on(&mut self) {
        *self = Readiness::Ready;
    }

    /// A document could not be handed on (why); it matters only while nothing good was.
    pub fn not_handed_on(&mut self, why: impl Into<String>) {
        if *self != Readiness::Ready {
            *self = Readiness::NoGoodDocument(why.into());
        }
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        *self == Readiness::Ready
    }
}

// The sources' health, encoded at each scrape. Instants become Unix times through one anchor
// taken at start, so that a sync reads as the same timestamp on every scrape.
#[derive(Debug, Clone)]
struct Sources {
    sources: Vec<(Origin, health::Shared)>,
    anchor: (Instant, SystemTime),
}

impl Sources {
    fn read(&self) -> Vec<(Origin, SourceHealth)> {
        self.sources
            .iter()
            .map(|(origin, h)| (*origin, h.lock().unwrap_or_else(|e| e.into_inner()).clone()))
            .collect()
    }
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sources = self.read();
        if sources.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let labels = |origin: Origin| SourceLabels {
            source: origin.as_str().to_string(),
        };
        let mut up = encoder.encode_descriptor(
            "source_up",
            "Whether the source is up: synced, not failed since, and heard from within its bound",
            None,
            MetricType::Gauge,
        )?;
        for (origin, h) in &sources {
            ConstGauge::new(i64::from(h.up(now))).encode(up.encode_family(&labels(*origin))?)?;
        }
        let mut sync = encoder.encode_descriptor(
            "source_last_sync_timestamp_seconds",
            "Unix time of the source's last confirmed sync: a list, watch event or bookmark \
             (api), a read of ..data (volume); absent before the first",
            None,
            MetricType::Gauge,
        )?;
        for (origin, h) in &sources {
            if let Some(at) = h.last_sync() {
                ConstGauge::new(self.unix_seconds(at))
                    .encode(sync.encode_family(&labels(*origin))?)?;
            }
        }
        if let Some((_, api)) = sources.iter().find(|(o, _)| *o == Origin::Api) {
            let mut restarts = encoder.encode_descriptor(
                "api_watch_restarts",
                "Watches the API source opened again, by reason (timeout, expired, error, stalled)",
                None,
                MetricType::Counter,
            )?;
            for why in Restart::ALL {
                let labels = RestartLabels {
                    reason: why.label().to_string(),
                };
                ConstCounter::new(api.restarts(why)).encode(restarts.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl Sources {
    // The Unix time of the instant `at`.
    fn unix_seconds(&self, at: Instant) -> f64 {
        let (instant, wall) = self.anchor;
        let wall = if at >= instant {
            wall + (at - instant)
        } else {
            wall.checked_sub(instant - at).unwrap_or(UNIX_EPOCH)
        };
        wall.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64()
    }
}

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
    flags: Family<FlagLabels, Counter>,
    flag_errors: Family<FlagErrorLabels, Counter>,
    latency: Histogram,
    revision: Gauge,
    readiness: Mutex<Readiness>,
    sources: Sources,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers the metrics, without sources.
    pub fn new() -> Self {
        Self::with_sources(Vec::new())
    }

    /// Registers the metrics, with the health of each source.
    pub fn with_sources(sources: Vec<(Origin, health::Shared)>) -> Self {
        let sources = Sources {
            sources,
            anchor: (Instant::now(), SystemTime::now()),
        };
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
        registry.register_collector(Box::new(sources.clone()));
        let flags = Family::<FlagLabels, Counter>::default();
        registry.register(
            "flag_evaluations",
            "OFREP flag evaluations by flag, variant and reason",
            flags.clone(),
        );
        let flag_errors = Family::<FlagErrorLabels, Counter>::default();
        registry.register(
            "flag_evaluation_errors",
            "OFREP flag evaluations answered with an error, by error code",
            flag_errors.clone(),
        );
        Metrics {
            registry,
            reloads,
            flags,
            flag_errors,
            latency,
            revision,
            readiness: Mutex::new(Readiness::Waiting),
            sources,
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

    /// Marks the agent ready: a document was handed on.
    pub fn set_ready(&self) {
        self.readiness().handed_on();
    }

    /// Records that a document could not be handed on (why): the agent stays unready if
    /// nothing good was handed on before.
    pub fn set_not_handed_on(&self, why: impl Into<String>) {
        self.readiness().not_handed_on(why);
    }

    /// What `/readyz` answers: the status and the body.
    pub fn readyz(&self) -> (StatusCode, String) {
        let readiness = self.readiness().clone();
        if readiness.is_ready() {
            return (StatusCode::OK, "ok\n".to_string());
        }
        let why = match readiness {
            Readiness::NoGoodDocument(why) => {
                format!("no good document handed on yet; the latest was not: {why}")
            }
            _ => "no document handed on yet".to_string(),
        };
        let now = Instant::now();
        let mut body = format!("not ready: {why}\n");
        for (origin, h) in self.sources.read() {
            body.push_str(&format!("{}: {}\n", origin.as_str(), h.describe(now)));
        }
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }

    fn readiness(&self) -> std::sync::MutexGuard<'_, Readiness> {
        self.readiness.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one OFREP evaluation.
    pub fn count_flag(&self, flag: &str, variant: &str, reason: &str) {
        self.flags
            .get_or_create(&FlagLabels {
                flag: flag.to_string(),
                variant: variant.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts one OFREP evaluation answered with the error `code`.
    pub fn count_flag_error(&self, code: &str) {
        self.flag_errors
            .get_or_create(&FlagErrorLabels {
                code: code.to_string(),
            })
            .inc();
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
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(metrics);
    serve_app(addr, app, "admin", shutdown).await
}

/// Binds `addr` and serves `app` on it in the background until `shutdown` resolves (`what`
/// names the server in the log if it stops); returns the bound address.
pub(crate) async fn serve_app(
    addr: &str,
    app: Router,
    what: &'static str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(error = %e, server = what, "a server of the agent stopped");
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
    metrics.readyz()
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
        assert!(!text.contains("source_up"), "no sources, no source metrics");
    }

    #[test]
    fn readiness_waits_for_a_good_document_and_then_stays() {
        let m = Metrics::new();
        let (status, body) = m.readyz();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("no document handed on yet"), "{body}");
        m.set_not_handed_on("revision 3 refused: hash mismatch");
        let (status, body) = m.readyz();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("revision 3 refused: hash mismatch"), "{body}");
        m.set_ready();
        assert_eq!(m.readyz().0, StatusCode::OK);
        // A later refusal leaves the last good document in place: still ready.
        m.set_not_handed_on("revision 4 refused");
        assert_eq!(m.readyz(), (StatusCode::OK, "ok\n".to_string()));
    }

    #[test]
    fn source_metrics_follow_the_sources_health() {
        let t0 = Instant::now();
        let api = health::shared(Duration::from_secs(3600), t0);
        let volume = health::shared(Duration::from_secs(3600), t0);
        let m = Metrics::with_sources(vec![
            (Origin::Api, api.clone()),
            (Origin::Volume, volume.clone()),
        ]);
        let text = m.encode();
        assert!(
            text.contains("hotconf_agent_source_up{source=\"api\"} 0"),
            "{text}"
        );
        assert!(text.contains("hotconf_agent_source_up{source=\"volume\"} 0"));
        assert!(
            !text.contains("source_last_sync_timestamp_seconds{"),
            "no sync yet"
        );
        assert!(text.contains("hotconf_agent_api_watch_restarts_total{reason=\"stalled\"} 0"));

        volume.lock().unwrap().listed(Instant::now());
        api.lock().unwrap().listed(Instant::now());
        api.lock().unwrap().restarted(Restart::Timeout);
        let text = m.encode();
        assert!(
            text.contains("hotconf_agent_source_up{source=\"api\"} 1"),
            "{text}"
        );
        assert!(text.contains("hotconf_agent_source_up{source=\"volume\"} 1"));
        assert!(text.contains("hotconf_agent_api_watch_restarts_total{reason=\"timeout\"} 1"));
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let synced = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("hotconf_agent_source_last_sync_timestamp_seconds{source=\"api\"} ")
            })
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!((unix - synced).abs() < 5.0, "{synced} vs {unix}");

        // The API watch dies; the volume alone serves, and the metrics say so.
        api.lock().unwrap().failed("connection refused");
        let text = m.encode();
        assert!(
            text.contains("hotconf_agent_source_up{source=\"api\"} 0"),
            "{text}"
        );
        assert!(text.contains("hotconf_agent_source_up{source=\"volume\"} 1"));
        let (_, body) = m.readyz();
        assert!(body.contains("api: down: connection refused"), "{body}");
    }
}
