//! The operator's start-up: without the CRDs it exits at once with a hint; against a server of
//! custom resources without a watch cache its list comes page by page, and a restart over
//! converged objects still writes nothing.

mod common;

use std::collections::BTreeMap;

use hotconf::crd::RuntimeConfig;
use hotconf::dev::control_plane::{ControlPlane, OPERATOR_USER, Options};
use hotconf::kinds::ConfigResource;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;

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

/// Without a watch cache (`--watch-cache=false`, or a cache not yet ready) the server answers a
/// list from etcd, and unpaged that is every object at once. The operator asks for pages
/// (`--list-page-size`, here 500): 1,200 converged RuntimeConfigs (copies of one, written
/// straight into etcd) come in three, and the restart over them reconciles each and writes
/// nothing.
#[tokio::test]
async fn a_cold_start_pages_through_a_server_without_a_watch_cache() {
    const COPIES: usize = 1_199;
    let plane = ControlPlane::start(Options {
        controller_manager: false,
        crds: vec![common::repo().join("crds")],
        log_dir: Some(common::repo().join("target/control-plane-logs/startup-paged")),
        custom_resource_watch_cache: false,
        ..Options::default()
    })
    .await
    .expect("control plane");
    let plane: &'static ControlPlane = Box::leak(Box::new(plane));
    let env = common::TestEnv::on(plane, "paged").await;
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata:\n  name: paged-00000\n\
         spec:\n  values:\n    workers: 4\n    mode: fast\n",
    );
    let mut operator = env.start_operator();
    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    common::eventually(60, "the template to be projected", || async {
        let rtc = rtcs.get("paged-00000").await.ok()?;
        let status = rtc.config_status()?;
        let cm = Api::<ConfigMap>::namespaced(env.client.clone(), &env.ns)
            .get_opt("paged-00000")
            .await
            .ok()??;
        (status.current_revision == Some(1) && cm.data.is_some()).then_some(())
    })
    .await;
    operator.stop();

    let copies: Vec<(String, BTreeMap<String, String>)> = (1..=COPIES)
        .map(|i| (format!("paged-{i:05}"), BTreeMap::new()))
        .collect();
    plane
        .copy_converged(&env.ns, "paged-00000", &copies)
        .await
        .expect("copies written to etcd");

    let in_ns = |entries: Vec<hotconf::dev::control_plane::AuditEntry>| {
        entries
            .into_iter()
            .filter(|e| e.namespace == env.ns)
            .collect::<Vec<_>>()
    };
    let writes_before = in_ns(plane.audit_writes(OPERATOR_USER)).len();
    let reads_before = in_ns(plane.audit_reads(OPERATOR_USER)).len();
    let port = common::free_port();
    let _operator = env.start_operator_with(
        OPERATOR_USER,
        &[
            format!("--admin-addr=127.0.0.1:{port}"),
            "--list-page-size=500".into(),
        ],
    );
    common::eventually(120, "every copy reconciled", || async {
        let metrics = common::http_get(&format!("127.0.0.1:{port}"), "/metrics").await?;
        let done = common::sample(
            &metrics,
            "hotconf_reconciles_total{kind=\"RuntimeConfig\",result=\"success\"}",
        )?;
        (done >= (COPIES + 1) as f64).then_some(())
    })
    .await;
    let writes = in_ns(plane.audit_writes(OPERATOR_USER))[writes_before..].to_vec();
    assert!(writes.is_empty(), "the restart wrote: {writes:#?}");
    let lists: Vec<_> = in_ns(plane.audit_reads(OPERATOR_USER))[reads_before..]
        .iter()
        .filter(|e| e.resource == "runtimeconfigs" && e.verb == "list")
        .cloned()
        .collect();
    assert_eq!(lists.len(), 3, "1,200 objects in pages of 500: {lists:#?}");
    // A copy is the object it claims to be: its own ConfigMap, owned by it.
    let copy = rtcs.get("paged-01199").await.unwrap();
    let cm = Api::<ConfigMap>::namespaced(env.client.clone(), &env.ns)
        .get("paged-01199")
        .await
        .unwrap();
    let owner = &cm.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.name.as_str(), Some(&owner.uid)),
        ("paged-01199", copy.metadata.uid.as_ref())
    );
}
