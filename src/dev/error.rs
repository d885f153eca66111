//! What can go wrong starting or using the local control plane (`hotconf dev`, the tests and
//! benchmarks): the library's [`crate::Error`] covers what reconciles and commands meet; this
//! covers processes, binaries, certificates, kubeconfigs and CRD installs.

use std::path::PathBuf;

/// A failure of the local control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A process or file operation failed.
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
    /// A process did not become ready in time.
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
    /// A CRD could not be installed or served.
    #[error("CRD {path}: {message}")]
    Crd {
        /// The file or CRD name.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A manifest could not be parsed or applied.
    #[error("{path}: {message}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The fault proxy could not be set up (its certificates).
    #[error("fault proxy: {0}")]
    FaultProxy(String),
    /// A control-plane component could not be restarted or etcd not compacted.
    #[error("{component}: {message}")]
    Fault {
        /// Which component.
        component: String,
        /// What went wrong.
        message: String,
    },
}
