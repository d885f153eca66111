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
/// the name in help and usage becomes `kubectl hotconf`, as the user typed it. kubectl's
/// connection flags may come before the subcommand, as with kubectl (`kubectl hotconf -n shop
/// history rtc/app`): they are moved after it, where the subcommand reads them.
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
    leading_connection_flags_after_the_subcommand(args)
}

// The flags every cluster command takes, with a value.
const CONNECTION_FLAGS: [&str; 4] = ["-n", "--namespace", "--context", "--kubeconfig"];

fn leading_connection_flags_after_the_subcommand(args: Vec<OsString>) -> Vec<OsString> {
    let mut rest = args.into_iter();
    let mut kept: Vec<OsString> = rest.next().into_iter().collect();
    let mut moved = Vec::new();
    while let Some(arg) = rest.next() {
        let text = arg.to_str().unwrap_or_default();
        let joined = CONNECTION_FLAGS[1..]
            .iter()
            .any(|f| text.strip_prefix(f).is_some_and(|v| v.starts_with('=')))
            || (text.starts_with("-n") && text.len() > 2 && !text.starts_with("--"));
        if CONNECTION_FLAGS.contains(&text) {
            moved.push(arg);
            moved.extend(rest.next());
        } else if joined {
            moved.push(arg);
        } else if text.starts_with('-') {
            // Another top-level flag (`--log-format`): it stays, with its value if separate.
            let separate = text == "--log-format";
            kept.push(arg);
            if separate {
                kept.extend(rest.next());
            }
        } else {
            kept.push(arg);
            kept.append(&mut moved);
            kept.extend(rest);
            return kept;
        }
    }
    // No subcommand: clap says so, with the flags where the user put them.
    kept.append(&mut moved);
    kept
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
    fn connection_flags_before_the_subcommand_move_after_it() {
        let args = |line: &str| {
            super::plugin_args(line.split(' ').map(std::ffi::OsString::from))
                .into_iter()
                .map(|a| a.into_string().unwrap())
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(
            args("kubectl-hotconf -n shop history rtc/app"),
            "kubectl hotconf history -n shop rtc/app"
        );
        assert_eq!(
            args("hotconf --namespace=shop --log-format json --context c rollback rtc/app --to 2"),
            "hotconf --log-format json rollback --namespace=shop --context c rtc/app --to 2"
        );
        assert_eq!(
            args("hotconf -nshop diff rtc/a 1 2"),
            "hotconf diff -nshop rtc/a 1 2"
        );
        assert_eq!(
            args("hotconf history -n shop rtc/app"),
            "hotconf history -n shop rtc/app"
        );
        assert_eq!(args("hotconf -n shop"), "hotconf -n shop");
        use clap::Parser as _;
        let cli = super::Cli::try_parse_from(super::plugin_args(
            "kubectl-hotconf -n shop history rtc/app"
                .split(' ')
                .map(std::ffi::OsString::from),
        ))
        .unwrap();
        assert!(
            format!("{cli:?}").contains("namespace: Some(\"shop\")"),
            "{cli:?}"
        );
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        super::Cli::command().debug_assert();
    }
}
