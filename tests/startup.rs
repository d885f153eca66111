//! The operator's start-up check: without the CRDs it exits at once with a hint.

mod common;

use hotconf::dev::control_plane::{ControlPlane, Options};

#[tokio::test]
async fn the_operator_refuses_to_start_without_its_crds() {
    let plane = ControlPlane::start(Options {
        controller_manager: false,
        ..Options::default()
    })
    .await
    .expect("control plane");
    let out = tokio::process::Command::new(common::hotconf_bin())
        .arg("operator")
        .env("KUBECONFIG", plane.kubeconfig_path())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("runtimeconfigs.hotconf.dev is not installed")
            && stderr.contains("hotconf crds"),
        "{stderr}"
    );
}
