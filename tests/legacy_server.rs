//! hotconf on an older server: kube-apiserver 1.20 serving custom resources itself (the pure-1.20
//! mode, `CrdServing::KubeApiserver`), the way clusters before 1.25 do. There the CRDs install
//! only without server-side apply, their CEL rules are dropped, and status managedFields carry
//! no `subresource`: the operator's own layer and its echo detection must hold anyway.
//!
//! The rest of the suite runs custom resources on Kubernetes 1.36 semantics; this binary starts
//! its own control plane in the old mode.

mod common;

use common::{TestEnv, eventually, repo};
use hotconf::crd::{ConfigStatus, PoolBudget};
use hotconf::dev::control_plane::{ControlPlane, CrdServing, Options};
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::json;
use tokio::sync::OnceCell;

static LEGACY: OnceCell<ControlPlane> = OnceCell::const_new();

async fn legacy_env(prefix: &str) -> TestEnv {
    let plane = LEGACY
        .get_or_init(|| async {
            ControlPlane::start(Options {
                log_dir: Some(repo().join("target/control-plane-logs/legacy_server")),
                crds: vec![repo().join("crds")],
                crd_serving: CrdServing::KubeApiserver,
                ..Options::default()
            })
            .await
            .expect("a control plane serving custom resources from kube-apiserver")
        })
        .await;
    TestEnv::on(plane, prefix).await
}

fn valid(status: Option<&ConfigStatus>) -> Option<&str> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == "Valid")
        .map(|c| c.status.as_str())
}

#[tokio::test]
async fn the_crds_install_without_server_side_apply_and_lose_their_rules() {
    let env = legacy_env("legacy-crds").await;
    assert!(env.plane.crd_server_url().is_none());
    assert!(env.plane.crd_version().starts_with("1.20."));
    // The harness fell back to create/replace; server-side apply itself is refused...
    let out = env.kubectl_raw(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        &repo().join("crds").display().to_string(),
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("x-kubernetes-validations"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...and a client-side apply without validation, what docs/install.md advises, works.
    let out = env.kubectl_raw(&[
        "apply",
        "--validate=false",
        "-f",
        &repo().join("crds").display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let database = common::stored_database_schema(&env);
    assert!(
        database["properties"]["minConnections"].is_object(),
        "{database}"
    );
    assert!(
        database.get("x-kubernetes-validations").is_none(),
        "1.20 drops the CEL rules: {database}"
    );
}

#[tokio::test]
async fn what_the_server_lets_through_the_operator_refuses() {
    let env = legacy_env("legacy-invalid").await;
    let _operator = env.start_operator();
    let pbs: Api<PoolBudget> = Api::namespaced(env.client.clone(), &env.ns);
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: PoolBudget\nmetadata: {name: pools}\nspec:\n  pools: {database: {minConnections: 2, maxConnections: 10}}\n",
    );
    eventually(60, "pools projected", || {
        let pbs = pbs.clone();
        async move {
            pbs.get("pools")
                .await
                .ok()
                .filter(|p| p.status.as_ref().and_then(|s| s.current_revision) == Some(1))
        }
    })
    .await;
    // What a current server refuses by the CRD's CEL rules, this one stores.
    pbs.patch(
        "pools",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "metrics": {"backpressure": {"light": 0.9, "moderate": 0.8}},
            "pools": {"database": {"minConnections": 30, "maxConnections": 10}}
        }})),
    )
    .await
    .expect("a 1.20 server does not enforce CEL rules");
    let pb = eventually(60, "Valid=False", || {
        let pbs = pbs.clone();
        async move {
            pbs.get("pools").await.ok().filter(|p| {
                valid(p.status.as_ref()) == Some("False")
                    && p.status.as_ref().unwrap().observed_generation == p.metadata.generation
            })
        }
    })
    .await;
    let status = pb.status.unwrap();
    let message = &status
        .conditions
        .iter()
        .find(|c| c.type_ == "Valid")
        .unwrap()
        .message;
    for part in [
        "spec.metrics.backpressure.light",
        "spec.pools.database.minConnections",
    ] {
        assert!(message.contains(part), "{part} not in {message}");
    }
    assert_eq!(status.current_revision, Some(1), "nothing new projected");
}

#[tokio::test]
async fn echo_detection_and_changed_by_without_status_subresource_entries() {
    let env = legacy_env("legacy-echo").await;
    common::echo_detection_and_changed_by(&env, false).await;
}
