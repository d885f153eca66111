//! `hotconf operator`: connects to the cluster and runs the controllers until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use anyhow::Context as _;

use crate::controller::{self, Scope};

/// Arguments of `hotconf operator`.
#[derive(clap::Args, Debug, Clone)]
pub struct OperatorArgs {
    /// Namespaces to watch (comma-separated or repeated); all namespaces when empty.
    #[arg(long, env = "HOTCONF_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,
}

/// Runs the operator with the usual kubeconfig resolution (in-cluster, `$KUBECONFIG`,
/// `~/.kube/config`).
pub async fn run(args: OperatorArgs) -> anyhow::Result<ExitCode> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster (kubeconfig or in-cluster config)")?;
    let scope = Scope {
        namespaces: args
            .namespaces
            .into_iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect(),
    };
    controller::run(client, scope, crate::dev::shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
