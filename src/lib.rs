//! hotconf: validated, versioned, hot-reloadable configuration for Kubernetes.
//!
//! The library holds all logic; `src/main.rs` only parses arguments and calls [`cli::run`].
#![forbid(unsafe_code)]

pub mod cli;
pub mod crd;
pub mod dev;
pub mod envtest;
mod error;
pub mod manifests;
pub mod telemetry;
pub mod validation;

pub use error::Error;
