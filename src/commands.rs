//! The user-facing CLI commands (validate, render, history, diff, rollback, export). Being
//! written for issue 7.

use std::process::ExitCode;

/// The tool subcommands, flattened into `hotconf`'s own.
#[derive(clap::Subcommand, Debug)]
pub enum Tools {
    /// Validate CR manifests offline, as the operator would.
    Validate(ValidateArgs),
}

/// Arguments of `hotconf validate`.
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {}

/// Runs a tool subcommand.
pub async fn run(_tools: Tools) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not built yet")
}
