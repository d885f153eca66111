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
    /// A manifest could not be parsed or applied.
    #[error("{path}: {message}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The admission webhook failed.
    #[error("admission webhook: {0}")]
    Webhook(String),
    /// Leader election failed.
    #[error("leader election: {0}")]
    Leader(String),
    /// The CRDs are not installed in the cluster.
    #[error(
        "CRD {0} is not installed: run `hotconf crds | kubectl apply --server-side -f -` (or install the Helm chart) first"
    )]
    CrdsMissing(String),
    /// A process or file operation of the local control plane failed.
    #[error("{what}: {source}")]
    Process {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A control-plane binary is missing.
    #[error(
        "control-plane binary {binary} not found in {dir}: run `make assets` (hack/control-plane-assets.sh) or set KUBEBUILDER_ASSETS"
    )]
    MissingBinary {
        /// The binary's name.
        binary: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// No Kubernetes 1.36 CRD server was found for an older kube-apiserver.
    #[error("{0}")]
    NoCrdServer(String),
    /// A control-plane process did not become ready in time.
    #[error("{component} did not become ready within {seconds}s; its log is {log}")]
    NotReady {
        /// Which process.
        component: &'static str,
        /// How long we waited.
        seconds: u64,
        /// Its log file.
        log: PathBuf,
    },
    /// A certificate could not be generated.
    #[error("generating certificates: {0}")]
    Cert(#[from] rcgen::Error),
    /// The kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// A CRD could not be installed.
    #[error("CRD {path}: {message}")]
    Crd {
        /// The file or CRD name.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Io { .. } => "io",
            Error::Manifest { .. } => "manifest",
            Error::CrdsMissing(_) => "crds_missing",
            Error::Leader(_) => "leader_election",
            Error::Webhook(_) => "webhook",
            Error::Process { .. } => "process",
            Error::MissingBinary { .. } => "missing_binary",
            Error::NoCrdServer(_) => "no_crd_server",
            Error::NotReady { .. } => "not_ready",
            Error::Cert(_) => "certificate",
            Error::Kubeconfig(_) => "kubeconfig",
            Error::Crd { .. } => "crd",
        }
    }
}
