//! The operator's Prometheus metrics, registered under the `hotconf` prefix.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels: the kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `RuntimeConfig` or `PoolBudget` (for the watch metrics also `ConfigMap`, `Secret`,
    /// `Pod`).
    pub kind: String,
}

/// Labels: the kind and an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `RuntimeConfig` or `PoolBudget`.
    pub kind: String,
    /// `success`, or the error's metric label.
    pub result: String,
}

/// Labels of a rollback: the kind, and whether it was automatic.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RollbackLabels {
    /// `RuntimeConfig` or `PoolBudget`.
    pub kind: String,
    /// `true` (consumers refused the latest revision) or `false` (the annotation).
    pub automatic: String,
}

/// Labels of an admission request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// `validate` or `mutate`.
    pub hook: String,
    /// The reviewed kind.
    pub kind: String,
    /// `true` or `false`.
    pub allowed: String,
}

/// The operator's metrics.
pub struct OperatorMetrics {
    /// Reconciles by kind and result.
    pub reconciles: Family<ResultLabels, Counter>,
    /// Reconcile duration by kind.
    pub reconcile_duration: Family<KindLabels, Histogram>,
    /// ConfigMap projections by kind.
    pub revisions_projected: Family<KindLabels, Counter>,
    /// Reconciles that found the spec invalid, by kind.
    pub validation_failures: Family<KindLabels, Counter>,
    /// Rollback pins taking effect, by kind and whether automatic.
    pub rollbacks: Family<RollbackLabels, Counter>,
    /// Watch restarts (after an error, or a stall), by watched kind: `RuntimeConfig`,
    /// `PoolBudget`, `ConfigMap`, `Secret`, `Pod`.
    pub watch_restarts: Family<KindLabels, Counter>,
    /// 1 while every watch of the kind is up (listed, delivering within the idle bound), 0
    /// while one is starting, down or stalled; by the same kinds.
    pub watch_up: Family<KindLabels, Gauge>,
    /// 1 while this replica holds the leader Lease (or leader election is off).
    pub leader: Gauge,
    /// Time to answer an admission request.
    pub webhook_duration: Family<WebhookLabels, Histogram>,
}

impl OperatorMetrics {
    /// Creates the metrics and registers them in `registry` (give it the `hotconf` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = OperatorMetrics {
            reconciles: Family::default(),
            reconcile_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            revisions_projected: Family::default(),
            validation_failures: Family::default(),
            rollbacks: Family::default(),
            watch_restarts: Family::default(),
            watch_up: Family::default(),
            leader: Gauge::default(),
            webhook_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0005, 2.0, 14))
            }),
        };
        // Every series exists from the start: a counter that has not moved reads 0, not absent.
        for kind in ["RuntimeConfig", "PoolBudget"] {
            let k = Self::kind(kind);
            let _ = metrics.revisions_projected.get_or_create(&k);
            let _ = metrics.validation_failures.get_or_create(&k);
            for automatic in [false, true] {
                let _ = metrics
                    .rollbacks
                    .get_or_create(&Self::rollback(kind, automatic));
            }
            let _ = metrics.reconcile_duration.get_or_create(&k);
            let _ = metrics.reconciles.get_or_create(&ResultLabels {
                kind: kind.into(),
                result: "success".into(),
            });
        }
        registry.register(
            "reconciles",
            "Reconciles by kind and result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "revisions_projected",
            "Revisions written to a ConfigMap",
            metrics.revisions_projected.clone(),
        );
        registry.register(
            "validation_failures",
            "Reconciles that found the spec invalid (each one counts)",
            metrics.validation_failures.clone(),
        );
        registry.register(
            "rollbacks",
            "Rollback pins that took effect, by annotation (automatic=\"false\") or automatically",
            metrics.rollbacks.clone(),
        );
        for kind in crate::health::WatchKind::ALL {
            let _ = metrics
                .watch_restarts
                .get_or_create(&Self::kind(kind.label()));
        }
        registry.register(
            "watch_restarts",
            "Watch restarts after an error or a stall (no event or bookmark within the bound)",
            metrics.watch_restarts.clone(),
        );
        registry.register(
            "watch_up",
            "1 while every watch of the kind is listed and delivering within the idle bound",
            metrics.watch_up.clone(),
        );
        registry.register(
            "webhook_request_duration_seconds",
            "Time to answer an admission request",
            metrics.webhook_duration.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica is the leader",
            metrics.leader.clone(),
        );
        metrics
    }

    /// Labels for a kind.
    pub fn kind(kind: &str) -> KindLabels {
        KindLabels { kind: kind.into() }
    }

    /// The rollback labels.
    pub fn rollback(kind: &str, automatic: bool) -> RollbackLabels {
        RollbackLabels {
            kind: kind.into(),
            automatic: automatic.to_string(),
        }
    }
}

/// The registry in the Prometheus text format.
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}
