//! The local control plane itself: watches, CRDs with server-side apply, the status
//! subresource, garbage collection, namespace isolation, and clean-up when the owner exits.

mod common;

use std::{collections::BTreeMap, path::Path, time::Duration};

use common::{TestEnv, eventually};
use futures::StreamExt as _;
use hotconf::dev::control_plane::{ControlPlane, Options};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, CustomResource, CustomResourceExt, Resource, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "harness.hotconf.dev",
    version = "v1",
    kind = "Widget",
    namespaced,
    status = "WidgetStatus"
)]
struct WidgetSpec {
    size: i64,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, JsonSchema)]
struct WidgetStatus {
    observed: i64,
}

fn configmap(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        data: Some(
            data.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        ..Default::default()
    }
}

#[tokio::test]
async fn watch_crd_ssa_status_and_garbage_collection() {
    let env = TestEnv::new("harness").await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);

    // A ConfigMap and a watcher that sees it change.
    cms.create(&PostParams::default(), &configmap("watched", &[("v", "1")]))
        .await
        .unwrap();
    let mut stream = watcher(
        cms.clone(),
        watcher::Config::default().fields("metadata.name=watched"),
    )
    .applied_objects()
    .boxed();
    let first = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("initial watch event")
        .unwrap()
        .unwrap();
    assert_eq!(first.data.unwrap()["v"], "1");
    cms.patch(
        "watched",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    let changed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let cm = stream.next().await.unwrap().unwrap();
            if cm.data.as_ref().unwrap()["v"] == "2" {
                return cm;
            }
        }
    })
    .await
    .expect("the watcher sees the change");
    assert_eq!(changed.name_any(), "watched");

    // A CRD by server-side apply, established, then a custom resource by server-side apply.
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    crds.patch(
        "widgets.harness.hotconf.dev",
        &PatchParams::apply("hotconf-test").force(),
        &Patch::Apply(Widget::crd()),
    )
    .await
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(30),
        kube::runtime::wait::await_condition(
            crds.clone(),
            "widgets.harness.hotconf.dev",
            kube::runtime::conditions::is_crd_established(),
        ),
    )
    .await
    .expect("CRD established in time")
    .unwrap();
    env.plane
        .wait_crd_routed("widgets.harness.hotconf.dev")
        .await
        .unwrap();
    let widgets: Api<Widget> = Api::namespaced(env.client.clone(), &env.ns);
    let applied = eventually(20, "the Widget to be served", || {
        let widgets = widgets.clone();
        async move {
            let w = Widget::new("w1", WidgetSpec { size: 3 });
            widgets
                .patch(
                    "w1",
                    &PatchParams::apply("hotconf-test").force(),
                    &Patch::Apply(&w),
                )
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(applied.spec.size, 3);
    let managers: Vec<String> = applied
        .managed_fields()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&"hotconf-test".to_string()),
        "{managers:?}"
    );

    // The status subresource: a status patch sets status, and spec stays as it was.
    let patched = widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {"observed": 7}, "spec": {"size": 99}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().observed, 7);
    assert_eq!(patched.spec.size, 3, "a status patch must not change spec");

    // An owned ConfigMap is garbage-collected once its owner is gone.
    let owner_ref = applied.controller_owner_ref(&()).unwrap();
    let mut owned = configmap("owned", &[("k", "v")]);
    owned.metadata.owner_references = Some(vec![owner_ref]);
    cms.create(&PostParams::default(), &owned).await.unwrap();
    widgets
        .delete("w1", &DeleteParams::default())
        .await
        .unwrap();
    eventually(60, "the owned ConfigMap to be garbage-collected", || {
        let cms = cms.clone();
        async move {
            match cms.get_opt("owned").await.unwrap() {
                None => Some(()),
                Some(_) => None,
            }
        }
    })
    .await;
    // The unowned one stays.
    assert!(cms.get_opt("watched").await.unwrap().is_some());
}

async fn write_and_list(prefix: &str, value: &str) -> (String, BTreeMap<String, String>) {
    let env = TestEnv::new(prefix).await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    cms.create(
        &PostParams::default(),
        &configmap("same-name", &[("who", value)]),
    )
    .await
    .unwrap();
    let list = cms.list(&Default::default()).await.unwrap();
    let mine: BTreeMap<String, String> = list
        .items
        .into_iter()
        .filter(|cm| cm.name_any() == "same-name")
        .flat_map(|cm| cm.data.unwrap_or_default())
        .collect();
    (env.ns.clone(), mine)
}

#[tokio::test]
async fn namespaces_isolate_tests_a() {
    let (ns, data) = write_and_list("iso-a", "a").await;
    assert!(ns.starts_with("iso-a-"));
    assert_eq!(data.get("who").map(String::as_str), Some("a"));
}

#[tokio::test]
async fn namespaces_isolate_tests_b() {
    let (ns, data) = write_and_list("iso-b", "b").await;
    assert!(ns.starts_with("iso-b-"));
    assert_eq!(data.get("who").map(String::as_str), Some("b"));
}

fn alive(pid: u32) -> bool {
    // A zombie is as good as gone: it runs nothing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

// Run in a child process by `no_process_outlives_the_test_binary`: starts its own control plane,
// reports its process ids and directory, then ends the way the parent asks.
#[tokio::test]
#[ignore = "run by no_process_outlives_the_test_binary in a child process"]
async fn cleanup_probe() {
    let Ok(mode) = std::env::var("HOTCONF_CLEANUP_PROBE") else {
        return;
    };
    let plane = ControlPlane::start(Options {
        controller_manager: true,
        ..Options::default()
    })
    .await
    .unwrap();
    // etcd, kube-apiserver, the CRD server (when custom resources get one) and the controller
    // manager, the last to start: give its supervisor a moment to fork.
    let components = if plane.crd_server_url().is_some() {
        4
    } else {
        3
    };
    let pids = eventually(10, "every component process", || async {
        let pids = plane.component_pids();
        (pids.len() == components).then_some(pids)
    })
    .await;
    let list: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
    println!(
        "PROBE pids={} dir={}",
        list.join(","),
        plane.dir().display()
    );
    std::mem::forget(plane);
    match mode.as_str() {
        "panic" => panic!("the probe panics on purpose"),
        _ => {
            // Wait to be killed by the parent.
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
    }
}

async fn run_probe(mode: &str) {
    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new(&exe)
        .args(["--ignored", "--exact", "cleanup_probe", "--nocapture"])
        .env("HOTCONF_CLEANUP_PROBE", mode)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let line = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("PROBE ") {
                return rest.to_string();
            }
        }
        panic!("the probe ended without reporting its processes");
    })
    .await
    .expect("probe report");
    let (pids, dir) = line.split_once(" dir=").unwrap();
    let pids: Vec<u32> = pids
        .trim_start_matches("pids=")
        .split(',')
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(
        pids.iter().all(|p| alive(*p)),
        "components run while the probe lives"
    );
    assert!(Path::new(dir).is_dir());

    let status = if mode == "panic" {
        child.wait().await.unwrap()
    } else {
        child.start_kill().unwrap();
        child.wait().await.unwrap()
    };
    assert!(
        !status.success(),
        "the probe should end in failure ({mode})"
    );
    eventually(30, "every control-plane process to exit", || async {
        pids.iter().all(|p| !alive(*p)).then_some(())
    })
    .await;
    eventually(30, "the temporary directory to be removed", || async {
        (!Path::new(dir).exists()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn no_process_outlives_the_test_binary() {
    // A panicking test binary and a SIGKILLed one both leave nothing behind.
    tokio::join!(run_probe("panic"), run_probe("kill"));
}
