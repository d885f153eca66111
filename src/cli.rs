//! Command-line interface: the subcommands of the `hotconf` binary (also `kubectl-hotconf`).

use std::{ffi::OsString, process::ExitCode};

use clap::{Parser, Subcommand};

use crate::{dev, telemetry};

/// hotconf: validated, versioned, hot-reloadable configuration for Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "hotconf", version, about)]
pub struct Cli {
    /// Log output format.
    #[arg(long, env = "HOTCONF_LOG_FORMAT", value_enum, default_value_t = telemetry::LogFormat::Text, global = true)]
    pub log_format: telemetry::LogFormat,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the pod-side agent (a sidecar next to the application).
    Agent(crate::agent::AgentArgs),
    /// Validate, render, and inspect or roll back hotconf objects.
    #[command(flatten)]
    Tools(crate::commands::Tools),
    /// Run the controller for RuntimeConfig and PoolBudget.
    Operator(crate::operator::OperatorArgs),
    /// Print the CustomResourceDefinitions (as `crds/` holds them).
    Crds(crate::crd::CrdsArgs),
    /// Start a local control plane (etcd, kube-apiserver, the Kubernetes 1.36 CRD server,
    /// kube-controller-manager) under a directory, install the CRDs, apply the examples and run
    /// the operator in the foreground.
    Dev(dev::DevArgs),
}

/// The command-line arguments to parse. Invoked as `kubectl-hotconf` (a symlink or copy on
/// PATH, which kubectl runs for `kubectl hotconf ...`), the binary is the same program; only
/// the name in help and usage becomes `kubectl hotconf`, as the user typed it.
pub fn plugin_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let mut args: Vec<OsString> = args.into_iter().collect();
    let is_plugin = args.first().is_some_and(|argv0| {
        std::path::Path::new(argv0)
            .file_name()
            .is_some_and(|name| name == "kubectl-hotconf")
    });
    if is_plugin {
        args[0] = OsString::from("kubectl hotconf");
    }
    args
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let filter = match cli.command {
        Command::Tools(_) => telemetry::TOOLS_FILTER,
        _ => telemetry::DEFAULT_FILTER,
    };
    telemetry::init_logging(cli.log_format, filter);
    if let Command::Crds(args) = &cli.command {
        return crate::crd::print(args);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Operator(args) => crate::operator::run(args).await,
            Command::Agent(args) => crate::agent::run(args).await,
            Command::Tools(tools) => crate::commands::run(tools).await,
            Command::Crds(_) => unreachable!("handled above"),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
