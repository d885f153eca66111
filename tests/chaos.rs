//! The short profile of the chaos suite (`hotconf::dev::chaos`): two operator replicas behind
//! the fault proxy, a few hundred mutations, every fault kind once, every invariant at 0. The
//! full run is `make chaos`.

use std::path::PathBuf;

use hotconf::dev::chaos::{self, ChaosOptions};
use hotconf::dev::control_plane::{ControlPlane, Options};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_short_chaos_profile_keeps_every_invariant() {
    let logs = repo().join("target/control-plane-logs/chaos");
    let _ = std::fs::remove_dir_all(&logs);
    // Its own control plane: the run restarts etcd and kube-apiserver under it.
    let mut plane = ControlPlane::start(Options {
        controller_manager: false,
        users: chaos::users(),
        crds: vec![repo().join("crds")],
        log_dir: Some(logs.join("control-plane")),
        ..Options::default()
    })
    .await
    .expect("the control plane");
    let options = ChaosOptions::short(PathBuf::from(env!("CARGO_BIN_EXE_hotconf")), logs.clone())
        .with_faults_from_env()
        .expect("HOTCONF_CHAOS_FAULTS");
    let report = match chaos::run(&mut plane, &options).await {
        Ok(report) => report,
        Err(e) => {
            plane.print_logs();
            panic!("the chaos run failed: {e}");
        }
    };
    let table = report.table();
    println!("{table}");
    let _ = std::fs::write(
        logs.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    );
    assert_eq!(report.violations(), 0, "{table}");
}
