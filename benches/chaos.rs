//! The chaos run (`make chaos`): operator replicas with leader election behind a fault proxy,
//! writers mutating objects of both kinds, faults on a schedule, then every invariant of
//! `hotconf::dev::chaos` counted and the figures taken. It prints one table and writes
//! `target/chaos/report.json`; it exits non-zero when an invariant was violated.
//!
//! `HOTCONF_CHAOS_SCALE` (a factor, default 1: 10,000 mutations over 200 objects, every fault
//! kind 3 times) scales the run; `HOTCONF_CHAOS_FAULTS` (comma-separated names, e.g.
//! `leader-kill,stall`) chooses the fault kinds. Under `cargo test` (no `--bench` argument) it
//! does nothing: the short profile is `tests/chaos.rs`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use hotconf::dev::chaos::{self, ChaosOptions};
use hotconf::dev::control_plane::{ControlPlane, Options};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn out_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("chaos")
}

fn main() -> ExitCode {
    if !std::env::args().any(|a| a == "--bench") {
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("chaos run failed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<bool> {
    let factor: f64 = std::env::var("HOTCONF_CHAOS_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let out = out_dir();
    let logs = out.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;
    // The operator as built for this run: the release binary under `cargo bench`.
    let operator = std::env::var_os("HOTCONF_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hotconf")));
    let options = ChaosOptions::full(operator, logs.clone(), factor).with_faults_from_env()?;
    eprintln!("[chaos] {options:?}");
    let started = Instant::now();
    let mut plane = ControlPlane::start(Options {
        controller_manager: false,
        users: chaos::users(),
        crds: vec![repo().join("crds")],
        log_dir: Some(logs.join("control-plane")),
        ..Options::default()
    })
    .await
    .context("starting the control plane")?;
    let result = chaos::run(&mut plane, &options).await;
    if result.is_err() {
        plane.print_logs();
    }
    let report = result?;
    println!("{}", report.table());
    let json = serde_json::json!({
        "date": chrono::Utc::now().to_rfc3339(),
        "machine": machine(),
        "report": report,
    });
    let path = out.join("report.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")?;
    eprintln!(
        "[chaos] report written to {} ({:.0}s in all)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(report.violations() == 0)
}

fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    serde_json::json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": cpu,
    })
}
