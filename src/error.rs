//! The library's error type: one enum, each variant with a metric label.

use std::path::PathBuf;

/// Everything that can go wrong in hotconf's library code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The admission webhook failed: what it was doing, and why.
    #[error("admission webhook: {what}{}", source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Webhook {
        /// What was being done.
        what: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The CRDs are not installed in the cluster.
    #[error(
        "CRD {0} is not installed: run `hotconf crds | kubectl apply --server-side -f -` (or install the Helm chart) first"
    )]
    CrdsMissing(String),
    /// A server could not bind its address or serve.
    #[error("{what}: {source}")]
    Serve {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate could not be generated.
    #[error("generating certificates: {0}")]
    Cert(#[from] rcgen::Error),
    /// Consumers cannot be counted before the pod watch has synced.
    #[error(transparent)]
    PodsNotSynced(#[from] crate::controller::PodsNotSynced),
    /// This replica's leadership lapsed halfway through a plan: the rest is not written (the
    /// next leader makes its own plan).
    #[error("no longer the leader: the rest of the plan is not written")]
    NotLeader,
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Io { .. } => "io",
            Error::Webhook { .. } => "webhook",
            Error::Serve { .. } => "serve",
            Error::Cert(_) => "certificate",
            Error::CrdsMissing(_) => "crds_missing",
            Error::PodsNotSynced(_) => "pods_not_synced",
            Error::NotLeader => "not_leader",
        }
    }

    /// The webhook failed at `what` because of `source`.
    pub fn webhook(
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Webhook {
            what: what.into(),
            source: Some(Box::new(source)),
        }
    }
}
