//! The pod-side agent (`hotconf agent`). Being written for issue 5.

use std::process::ExitCode;

/// Arguments of `hotconf agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {}

/// Runs the agent.
pub async fn run(_args: AgentArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("the agent is not built yet")
}
