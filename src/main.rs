//! The `hotconf` binary: parses arguments and hands over to the library.
#![forbid(unsafe_code)]

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = hotconf::cli::Cli::parse_from(hotconf::cli::plugin_args(std::env::args_os()));
    hotconf::cli::run(cli)
}
