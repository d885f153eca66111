//! The `hotconf` binary: parses arguments and hands over to the library.
#![forbid(unsafe_code)]

use clap::Parser as _;

// mimalloc rather than glibc's malloc: a cold start parses, packs and reconciles every listed
// object, and glibc's malloc and free took a fifth of the operator's CPU there. Over 10,000
// objects mimalloc cut the operator's CPU by a quarter at the same RSS (README, 2026-12-07).
// Built without transparent huge pages (`no_thp`): with them an idle process held 11 MiB more.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = hotconf::cli::Cli::parse_from(hotconf::cli::plugin_args(std::env::args_os()));
    hotconf::cli::run(cli)
}
