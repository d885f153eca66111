//! hotconf: validated, versioned, hot-reloadable configuration for Kubernetes.
//!
//! The library holds all logic; `src/main.rs` only parses arguments and calls [`cli::run`].
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod agent;
pub mod cli;
pub mod client;
pub mod commands;
pub mod controller;
pub mod crd;
pub mod dev;
pub mod document;
pub mod duration;
mod error;
pub mod feature_flags;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod health;
pub mod history;
pub mod kinds;
pub mod leader;
pub mod manifest;
pub mod metrics;
pub mod operator;
pub mod projection;
pub mod reconcile;
pub mod rollout;
pub mod sharding;
pub mod shutdown;
pub mod telemetry;
pub mod validation;
pub mod webhook;

pub use error::Error;
