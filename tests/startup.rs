//! The operator's start-up: without the CRDs it exits at once with a hint; a server of custom
//! resources with a watch cache answers its list in one response from the cache, one without
//! pages it from etcd, and a restart over converged objects writes nothing either way.

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
    let lists = runtimeconfigs(cold_start_over_copies("paged", false).await);
    assert_eq!(lists.len(), 3, "1,200 objects in pages of 500: {lists:#?}");
    assert_any_version(&lists[0]);
    for page in &lists[1..] {
        assert!(
            page.uri.contains("continue=") && !page.uri.contains("resourceVersion="),
            "a later page follows the token alone: {page:#?}"
        );
    }
}

/// With a watch cache the first page, at any resourceVersion, is the whole list from the cache,
/// whatever the limit: one request. (Without `resourceVersion=0`, as kube's `ListParams` sends a
/// limited list, the server would read each page from etcd instead.)
#[tokio::test]
async fn a_cold_start_lists_from_the_watch_cache_in_one_request() {
    let all = cold_start_over_copies("cached", true).await;
    // Every watch lists from the cache, not only the CRs': the projected ConfigMaps and Secrets,
    // the valuesFrom Secrets and the consumer pods too (kube-runtime's watcher, which lists
    // Secrets and pods from etcd, is not used).
    for resource in [
        "runtimeconfigs",
        "poolbudgets",
        "configmaps",
        "secrets",
        "pods",
    ] {
        assert!(
            all.iter().any(|l| l.resource == resource),
            "{resource} listed: {all:#?}"
        );
    }
    for list in &all {
        assert_any_version(list);
    }
    let lists = runtimeconfigs(all);
    assert_eq!(lists.len(), 1, "the whole list from the cache: {lists:#?}");
}

fn runtimeconfigs(
    lists: Vec<hotconf::dev::control_plane::AuditEntry>,
) -> Vec<hotconf::dev::control_plane::AuditEntry> {
    lists
        .into_iter()
        .filter(|e| e.resource == "runtimeconfigs")
        .collect()
}

fn assert_any_version(list: &hotconf::dev::control_plane::AuditEntry) {
    assert!(
        list.uri.contains("limit=500")
            && list.uri.contains("resourceVersion=0")
            && list.uri.contains("resourceVersionMatch=NotOlderThan"),
        "the first page asks for any resourceVersion: {list:#?}"
    );
}

/// Seeds 1,200 converged RuntimeConfigs (one through the operator, 1,199 copies of it straight
/// into etcd) on a control plane of its own, restarts the operator over them with pages of 500,
/// checks that it reconciles each and writes nothing, and returns its lists in the namespace.
async fn cold_start_over_copies(
    name: &str,
    watch_cache: bool,
) -> Vec<hotconf::dev::control_plane::AuditEntry> {
    const COPIES: usize = 1_199;
    let plane = ControlPlane::start(Options {
        controller_manager: false,
        crds: vec![common::repo().join("crds")],
        log_dir: Some(common::repo().join(format!("target/control-plane-logs/startup-{name}"))),
        custom_resource_watch_cache: watch_cache,
        ..Options::default()
    })
    .await
    .expect("control plane");
    let plane: &'static ControlPlane = Box::leak(Box::new(plane));
    let env = common::TestEnv::on(plane, name).await;
    let template = format!("{name}-00000");
    env.apply_yaml(&format!(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata:\n  name: {template}\n\
         spec:\n  values:\n    workers: 4\n    mode: fast\n"
    ));
    let mut operator = env.start_operator();
    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    common::eventually(60, "the template to be projected", || async {
        let rtc = rtcs.get(&template).await.ok()?;
        let status = rtc.config_status()?;
        let cm = Api::<ConfigMap>::namespaced(env.client.clone(), &env.ns)
            .get_opt(&template)
            .await
            .ok()??;
        (status.current_revision == Some(1) && cm.data.is_some()).then_some(())
    })
    .await;
    operator.stop();

    let copies: Vec<(String, BTreeMap<String, String>)> = (1..=COPIES)
        .map(|i| (format!("{name}-{i:05}"), BTreeMap::new()))
        .collect();
    plane
        .copy_converged(&env.ns, &template, &copies)
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
    // A copy is the object it claims to be: its own ConfigMap, owned by it.
    let last = format!("{name}-{COPIES:05}");
    let copy = rtcs.get(&last).await.unwrap();
    let cm = Api::<ConfigMap>::namespaced(env.client.clone(), &env.ns)
        .get(&last)
        .await
        .unwrap();
    let owner = &cm.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.name.as_str(), Some(&owner.uid)),
        (last.as_str(), copy.metadata.uid.as_ref())
    );
    in_ns(plane.audit_reads(OPERATOR_USER))[reads_before..]
        .iter()
        .filter(|e| e.verb == "list")
        .cloned()
        .collect()
}
