//! The pod simulator against the real control plane: workloads whose pods are bound, run, become
//! Ready, roll and go away as on a cluster with a kubelet; the fault modes tests ask for by
//! annotation; kubelet-style ConfigMap volumes; and a real agent sidecar that applies what the
//! operator projects.

mod common;

use std::collections::{BTreeMap, HashSet};

use common::sim::simulator;
use common::{TestEnv, eventually};
use hotconf::dev::sim::{
    FAULT, FAULT_ON_APPLIED_REVISION, FAULT_ON_RESTART_REVISION, PodEventKind,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

fn template(app: &str, annotations: Value) -> Value {
    json!({
        "metadata": {"labels": {"app": app}, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "busybox:1.36", "args": ["sleep", "1d"]}]}
    })
}

fn deployment(name: &str, replicas: i32, annotations: Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": template(name, annotations),
        }
    }))
    .unwrap()
}

async fn pods(env: &TestEnv, app: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(env.client.clone(), &env.ns)
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap()
        .items
}

fn condition(pod: &Pod, type_: &str) -> Option<String> {
    pod.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.clone())
}

fn ready(pod: &Pod) -> bool {
    condition(pod, "Ready").as_deref() == Some("True")
}

fn status_json(pod: &Pod) -> Value {
    serde_json::to_value(pod.status.clone().unwrap_or_default()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_get_ready_pods_and_roll() {
    let env = TestEnv::new("sim-deploy").await;
    let sim = simulator(&env, |_| {}).await;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    deployments
        .create(&PostParams::default(), &deployment("web", 3, json!({})))
        .await
        .unwrap();
    let available = |generation: i64| {
        let deployments = deployments.clone();
        async move {
            eventually(60, "web available at its generation", || async {
                let d = deployments.get("web").await.unwrap();
                let s = d.status.clone()?;
                (d.metadata.generation == Some(generation)
                    && s.observed_generation == Some(generation)
                    && s.updated_replicas == Some(3)
                    && s.available_replicas == Some(3)
                    && s.replicas == Some(3))
                .then_some(d)
            })
            .await
        }
    };
    let d = available(1).await;
    let progressing = d
        .status
        .unwrap()
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Progressing")
        .unwrap();
    assert_eq!(progressing.status, "True");
    assert_eq!(
        progressing.reason.as_deref(),
        Some("NewReplicaSetAvailable")
    );

    let first = pods(&env, "web").await;
    assert_eq!(first.len(), 3);
    let ips: HashSet<String> = first
        .iter()
        .map(|p| p.status.as_ref().unwrap().pod_ip.clone().unwrap())
        .collect();
    assert_eq!(ips.len(), 3, "unique pod IPs");
    for pod in &first {
        assert_eq!(
            pod.spec.as_ref().unwrap().node_name.as_deref(),
            Some(sim.node_name())
        );
        let s = status_json(pod);
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["hostIP"], "127.0.0.1");
        assert!(s["startTime"].is_string());
        for type_ in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert_eq!(
                condition(pod, type_).as_deref(),
                Some("True"),
                "{type_}: {s}"
            );
        }
        let c = &s["containerStatuses"][0];
        assert_eq!(c["name"], "app");
        assert_eq!(c["image"], "busybox:1.36");
        assert!(c["imageID"].as_str().unwrap().contains("@sha256:"), "{c}");
        assert!(
            c["containerID"]
                .as_str()
                .unwrap()
                .starts_with("containerd://")
        );
        assert_eq!(c["ready"], true);
        assert_eq!(c["started"], true);
        assert_eq!(c["restartCount"], 0);
        assert!(c["state"]["running"]["startedAt"].is_string());
    }

    // A template change rolls: new pods Ready, every old one stopped and deleted.
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"v": "2"}}}}})),
        )
        .await
        .unwrap();
    available(2).await;
    let old: HashSet<String> = first.iter().map(|p| p.uid().unwrap()).collect();
    let now = eventually(60, "only new pods left", || async {
        let now = pods(&env, "web").await;
        (now.len() == 3
            && now
                .iter()
                .all(|p| !old.contains(&p.uid().unwrap()) && ready(p)))
        .then_some(now)
    })
    .await;
    assert!(
        now.iter()
            .all(|p| p.annotations().get("v").map(String::as_str) == Some("2"))
    );
    let history = sim.history();
    let deleted: HashSet<&str> = history
        .iter()
        .filter(|e| e.kind == PodEventKind::Deleted)
        .map(|e| e.uid.as_str())
        .collect();
    for uid in &old {
        assert!(
            deleted.contains(uid.as_str()),
            "old pod {uid} deleted by the simulator"
        );
    }
    // A rolling update with maxUnavailable 0 (25% of 3, rounded down): a new pod is Ready
    // before the first old one goes.
    let first_new_ready = history
        .iter()
        .find(|e| e.kind == PodEventKind::Ready && !old.contains(&e.uid))
        .map(|e| e.at)
        .unwrap();
    let first_old_deleted = history
        .iter()
        .find(|e| e.kind == PodEventKind::Deleted && old.contains(&e.uid))
        .map(|e| e.at)
        .unwrap();
    assert!(first_new_ready <= first_old_deleted, "{history:#?}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulsets_and_daemonsets_roll_out() {
    let env = TestEnv::new("sim-sts").await;
    let sim = simulator(&env, |_| {}).await;
    let node = sim.node_name().to_string();
    let statefulsets: Api<StatefulSet> = Api::namespaced(env.client.clone(), &env.ns);
    let daemonsets: Api<DaemonSet> = Api::namespaced(env.client.clone(), &env.ns);
    let sts: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
            "template": template("db", json!({}))}
    }))
    .unwrap();
    statefulsets
        .create(&PostParams::default(), &sts)
        .await
        .unwrap();
    // Other tests' simulated nodes are in the cluster too: this DaemonSet runs on ours.
    let mut ds_template = template("agentd", json!({}));
    ds_template["spec"]["nodeSelector"] = json!({"kubernetes.io/hostname": node});
    let ds: DaemonSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": "agentd"},
        "spec": {"selector": {"matchLabels": {"app": "agentd"}}, "template": ds_template}
    }))
    .unwrap();
    daemonsets
        .create(&PostParams::default(), &ds)
        .await
        .unwrap();

    let sts_rolled = |generation: i64| {
        let statefulsets = statefulsets.clone();
        async move {
            eventually(90, "db rolled out", || async {
                let s = statefulsets.get("db").await.unwrap();
                let st = s.status.clone()?;
                (st.observed_generation == Some(generation)
                    && st.ready_replicas == Some(2)
                    && st.updated_replicas == Some(2)
                    && st.current_revision.is_some()
                    && st.current_revision == st.update_revision)
                    .then_some(())
            })
            .await
        }
    };
    let ds_rolled = |generation: i64| {
        let daemonsets = daemonsets.clone();
        async move {
            eventually(90, "agentd rolled out", || async {
                let d = daemonsets.get("agentd").await.unwrap();
                let st = d.status.clone()?;
                (st.observed_generation == Some(generation)
                    && st.desired_number_scheduled == 1
                    && st.updated_number_scheduled == Some(1)
                    && st.number_available == Some(1))
                .then_some(())
            })
            .await
        }
    };
    sts_rolled(1).await;
    ds_rolled(1).await;
    let before: HashSet<String> = pods(&env, "db")
        .await
        .iter()
        .chain(pods(&env, "agentd").await.iter())
        .map(|p| p.uid().unwrap())
        .collect();
    assert_eq!(before.len(), 3);
    let bump = json!({"spec": {"template": {"metadata": {"annotations": {"v": "2"}}}}});
    statefulsets
        .patch("db", &PatchParams::default(), &Patch::Merge(&bump))
        .await
        .unwrap();
    daemonsets
        .patch("agentd", &PatchParams::default(), &Patch::Merge(&bump))
        .await
        .unwrap();
    sts_rolled(2).await;
    ds_rolled(2).await;
    let after: Vec<Pod> = eventually(60, "the new pods alone", || async {
        let mut all = pods(&env, "db").await;
        all.extend(pods(&env, "agentd").await);
        (all.len() == 3
            && all
                .iter()
                .all(|p| !before.contains(&p.uid().unwrap()) && ready(p)))
        .then_some(all)
    })
    .await;
    let names: BTreeMap<String, String> = after
        .iter()
        .map(|p| (p.name_any(), p.spec.clone().unwrap().node_name.unwrap()))
        .collect();
    assert!(
        names.contains_key("db-0") && names.contains_key("db-1"),
        "{names:?}"
    );
    assert!(names.values().all(|n| n == &node));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_modes_show_as_specified() {
    let env = TestEnv::new("sim-faults").await;
    let sim = simulator(&env, |_| {}).await;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    let mut never = deployment("never", 1, json!({FAULT: "never-ready"}));
    never.spec.as_mut().unwrap().progress_deadline_seconds = Some(3);
    for d in [
        never,
        deployment("crash", 1, json!({FAULT: "crash-loop"})),
        deployment("flaky", 1, json!({FAULT: "not-ready-after=3s"})),
    ] {
        deployments
            .create(&PostParams::default(), &d)
            .await
            .unwrap();
    }

    // not-ready-after: Ready first, then not.
    eventually(60, "flaky Ready", || async {
        pods(&env, "flaky").await.into_iter().find(ready)
    })
    .await;
    let flaky = eventually(60, "flaky NotReady after 3s", || async {
        pods(&env, "flaky").await.into_iter().find(|p| {
            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && condition(p, "Ready").as_deref() == Some("False")
        })
    })
    .await;
    assert_eq!(
        condition(&flaky, "ContainersReady").as_deref(),
        Some("False")
    );

    // crash-loop: restartCount grows, CrashLoopBackOff, the last termination recorded.
    let crash = eventually(60, "crash restarted twice", || async {
        pods(&env, "crash").await.into_iter().find(|p| {
            status_json(p)["containerStatuses"][0]["restartCount"]
                .as_i64()
                .is_some_and(|n| n >= 2)
        })
    })
    .await;
    let s = status_json(&crash);
    let c = &s["containerStatuses"][0];
    assert_eq!(c["state"]["waiting"]["reason"], "CrashLoopBackOff", "{c}");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1, "{c}");
    assert!(
        c["lastState"]["terminated"]["finishedAt"].is_string(),
        "{c}"
    );
    assert_eq!(c["ready"], false);
    assert_eq!(condition(&crash, "Ready").as_deref(), Some("False"));
    assert_eq!(
        condition(&crash, "ContainersReady").as_deref(),
        Some("False")
    );

    // never-ready: Running, started, never Ready; the Deployment gives up on its deadline.
    let d = eventually(60, "never: ProgressDeadlineExceeded", || async {
        let d = deployments.get("never").await.unwrap();
        d.status
            .as_ref()?
            .conditions
            .iter()
            .flatten()
            .any(|c| {
                c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })
            .then_some(d)
    })
    .await;
    assert_eq!(d.status.unwrap().available_replicas.unwrap_or(0), 0);
    let never = pods(&env, "never").await.remove(0);
    let s = status_json(&never);
    assert_eq!(s["phase"], "Running");
    assert_eq!(s["containerStatuses"][0]["started"], true);
    assert_eq!(condition(&never, "Ready").as_deref(), Some("False"));
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_gated_on_the_restart_revision_hits_only_the_new_pods() {
    let env = TestEnv::new("sim-gate").await;
    let sim = simulator(&env, |_| {}).await;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    deployments
        .create(
            &PostParams::default(),
            &deployment(
                "web",
                1,
                json!({FAULT: "crash-loop", FAULT_ON_RESTART_REVISION: "2"}),
            ),
        )
        .await
        .unwrap();
    let old = eventually(60, "the first pod Ready", || async {
        pods(&env, "web").await.into_iter().find(ready)
    })
    .await;
    // As the operator's restart rollout stamps the template.
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {
                "hotconf.dev/restart-revision": "2"}}}}})),
        )
        .await
        .unwrap();
    let new = eventually(60, "the new pod crash-looping", || async {
        pods(&env, "web").await.into_iter().find(|p| {
            p.uid() != old.uid()
                && status_json(p)["containerStatuses"][0]["state"]["waiting"]["reason"]
                    == "CrashLoopBackOff"
        })
    })
    .await;
    assert_eq!(
        new.annotations()
            .get("hotconf.dev/restart-revision")
            .map(String::as_str),
        Some("2")
    );
    let still = Api::<Pod>::namespaced(env.client.clone(), &env.ns)
        .get(&old.name_any())
        .await
        .unwrap();
    assert!(ready(&still), "the old pod runs on, Ready");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_volumes_have_the_kubelet_layout_and_follow_updates() {
    let env = TestEnv::new("sim-volume").await;
    let sim = simulator(&env, |_| {}).await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(env.client.clone(), &env.ns)
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "creds"},
                "stringData": {"password": "hunter2"}}))
            .unwrap(),
        )
        .await
        .unwrap();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "settings"},
            "data": {"config.yaml": "a: 1\n", "other": "x"}}))
        .unwrap(),
    )
    .await
    .unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "reader", "labels": {"app": "reader"}},
        "spec": {
            "containers": [{"name": "app", "image": "busybox", "volumeMounts": [
                {"name": "all", "mountPath": "/all"}, {"name": "some", "mountPath": "/some"}]}],
            "volumes": [
                {"name": "all", "configMap": {"name": "settings"}},
                {"name": "some", "configMap": {"name": "settings",
                    "items": [{"key": "other", "path": "nested/other.txt"}]}},
                {"name": "missing", "configMap": {"name": "nope", "optional": true}},
                {"name": "creds", "secret": {"secretName": "creds"}},
                {"name": "scratch", "emptyDir": {}}
            ]
        }
    }))
    .unwrap();
    Api::<Pod>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    eventually(60, "reader Ready", || async {
        pods(&env, "reader").await.into_iter().find(ready)
    })
    .await;
    let all = sim.volume_dir(&env.ns, "reader", "all").unwrap();
    let data = std::fs::read_link(all.join("..data")).unwrap();
    let stamp = data.to_string_lossy().into_owned();
    assert!(
        regex::Regex::new(r"^\.\.\d{4}_\d\d_\d\d_\d\d_\d\d_\d\d\.\d{9}$")
            .unwrap()
            .is_match(&stamp),
        "{stamp}"
    );
    assert_eq!(
        std::fs::read_link(all.join("config.yaml")).unwrap(),
        std::path::Path::new("..data/config.yaml")
    );
    assert_eq!(
        std::fs::read_to_string(all.join("config.yaml")).unwrap(),
        "a: 1\n"
    );
    let some = sim.volume_dir(&env.ns, "reader", "some").unwrap();
    assert_eq!(
        std::fs::read_to_string(some.join("nested/other.txt")).unwrap(),
        "x"
    );
    assert!(
        std::fs::symlink_metadata(some.join("config.yaml")).is_err(),
        "items only"
    );
    let missing = sim.volume_dir(&env.ns, "reader", "missing").unwrap();
    assert!(
        missing.join("..data").is_dir(),
        "optional and absent: empty"
    );
    assert!(
        sim.volume_dir(&env.ns, "reader", "scratch")
            .unwrap()
            .is_dir()
    );

    cms.patch(
        "settings",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"config.yaml": "a: 2\n"}})),
    )
    .await
    .unwrap();
    eventually(30, "the volume to follow the ConfigMap", || async {
        (std::fs::read_to_string(all.join("config.yaml")).ok()? == "a: 2\n").then_some(())
    })
    .await;
    assert_ne!(std::fs::read_link(all.join("..data")).unwrap(), data);
    assert!(
        !all.join(&data).exists(),
        "the old timestamped directory is gone"
    );
    sim.stop().await;
}

const SIDECAR: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: lazy-loading}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: lazy-loading-hotconf-agent}
rules:
  - {apiGroups: [""], resources: [configmaps], resourceNames: [lazy-loading-config], verbs: [get, list, watch]}
  - {apiGroups: [""], resources: [pods], verbs: [patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: lazy-loading-hotconf-agent}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: lazy-loading-hotconf-agent}
subjects: [{kind: ServiceAccount, name: lazy-loading}]
"#;

fn sidecar_deployment(annotations: Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "lazy-loading"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "lazy-loading"}},
            "template": {
                "metadata": {"labels": {"app": "lazy-loading"}, "annotations": annotations},
                "spec": {
                    "serviceAccountName": "lazy-loading",
                    "containers": [
                        {"name": "app", "image": "python:3.13-alpine",
                         "volumeMounts": [{"name": "app-config", "mountPath": "/etc/app", "readOnly": true}]},
                        {"name": "hotconf-agent", "image": "ghcr.io/hotconf/hotconf:latest",
                         "args": ["agent", "--configmap=$(POD_NAMESPACE)/lazy-loading-config",
                            "--watch-dir=/etc/hotconf/source", "--file=config.yaml",
                            "--output=/etc/app/config.yaml",
                            "--reload-url=http://localhost:8080/-/reload",
                            "--admin-addr=0.0.0.0:9901"],
                         "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
                         "readinessProbe": {"httpGet": {"path": "/readyz", "port": 9901}},
                         "volumeMounts": [
                            {"name": "source", "mountPath": "/etc/hotconf/source", "readOnly": true},
                            {"name": "app-config", "mountPath": "/etc/app"}]}
                    ],
                    "volumes": [
                        {"name": "source", "configMap": {"name": "lazy-loading-config", "optional": true}},
                        {"name": "app-config", "emptyDir": {}}
                    ]
                }
            }
        }
    }))
    .unwrap()
}

fn applied(pod: &Pod) -> Option<Value> {
    serde_json::from_str(pod.annotations().get("hotconf.dev/applied")?).ok()
}

async fn set_value(env: &TestEnv, v: i64) {
    env.apply_yaml(&format!(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {{name: lazy-loading}}\nspec:\n  values: {{check_interval: {v}}}\n  target: {{configMapName: lazy-loading-config, fileName: config.yaml}}\n"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_sidecar_runs_applies_and_goes_with_its_pod() {
    let env = TestEnv::new("sim-agent").await;
    let _operator = env.start_operator();
    let sim = simulator(&env, |_| {}).await;
    env.apply_yaml(SIDECAR);
    set_value(&env, 30).await;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    deployments
        .create(
            &PostParams::default(),
            &sidecar_deployment(json!({FAULT: "crash-loop", FAULT_ON_APPLIED_REVISION: "2"})),
        )
        .await
        .unwrap();
    let at_revision = |revision: i64, want_ready: bool| {
        let env = &env;
        async move {
            eventually(
                90,
                &format!("applied revision {revision}, Ready={want_ready}"),
                || async {
                    pods(env, "lazy-loading").await.into_iter().find(|p| {
                        applied(p)
                            .is_some_and(|a| a["revision"] == revision && a["error"].is_null())
                            && ready(p) == want_ready
                    })
                },
            )
            .await
        }
    };
    let pod = at_revision(1, true).await;
    let name = pod.name_any();
    let agents = sim.agents();
    assert_eq!(agents.len(), 1, "{agents:?}");
    let agent = &agents[0];
    assert_eq!(
        (agent.pod.as_str(), agent.container.as_str()),
        (name.as_str(), "hotconf-agent")
    );
    let pid = agent.pid.expect("the agent's pid");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let a = applied(&pod).unwrap();
    assert_eq!(a["kind"], "RuntimeConfig");
    assert_eq!(a["name"], "lazy-loading");

    // The agent wrote the app's file on the shared emptyDir and the app was asked to reload.
    let app_config = sim.volume_dir(&env.ns, &name, "app-config").unwrap();
    let text = std::fs::read_to_string(app_config.join("config.yaml")).unwrap();
    assert!(text.contains("check_interval: 30"), "{text}");
    let reloads = eventually(30, "a reload", || async {
        let r = sim.reloads(&env.ns, &name);
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(reloads[0].revision, Some(1));
    assert_eq!(reloads[0].status, 204);
    assert!(
        reloads[0]
            .content
            .as_deref()
            .unwrap_or("")
            .contains("check_interval: 30")
    );
    // The fallback volume has the kubelet's layout.
    let source = sim.volume_dir(&env.ns, &name, "source").unwrap();
    assert!(std::fs::read_link(source.join("..data")).is_ok());

    // Gated on the applied revision: the app crash-loops while the agent reports 2 (the agent
    // runs on), and runs again, Ready, once it applies 3; its restart count stays.
    let app_status = |pod: &Pod| status_json(pod)["containerStatuses"][0].clone();
    set_value(&env, 45).await;
    let at_2 = at_revision(2, false).await;
    assert_eq!(at_2.name_any(), name);
    let crashed = eventually(30, "the app restarted in CrashLoopBackOff", || async {
        pods(&env, "lazy-loading").await.into_iter().find(|p| {
            let c = app_status(p);
            c["restartCount"].as_i64() >= Some(1)
                && c["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        })
    })
    .await;
    let restarts = app_status(&crashed)["restartCount"].as_i64().unwrap();
    assert_eq!(
        status_json(&crashed)["containerStatuses"][1]["ready"],
        true,
        "the agent"
    );
    set_value(&env, 60).await;
    let recovered = at_revision(3, true).await;
    let c = app_status(&recovered);
    assert!(c["state"]["running"]["startedAt"].is_string(), "{c}");
    assert!(c["restartCount"].as_i64().unwrap() >= restarts, "{c}");
    assert_eq!(c["lastState"]["terminated"]["exitCode"], 1, "{c}");
    assert!(sim.reload_count(&env.ns, &name) >= 3);

    // An agent that dies is started again, and its container's restart count says so.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let pid = eventually(60, "the agent restarted", || async {
        // No pid while the agent is down between two starts.
        let new_pid = sim.agents().into_iter().next()?.pid.filter(|p| *p != pid)?;
        let pod = pods(&env, "lazy-loading").await.into_iter().next()?;
        let restarts = status_json(&pod)["containerStatuses"][1]["restartCount"].as_i64();
        (restarts == Some(1) && ready(&pod)).then_some(new_pid)
    })
    .await;

    // The pod goes: its agent is stopped before it is deleted.
    deployments
        .patch(
            "lazy-loading",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
    eventually(60, "the pod deleted", || async {
        pods(&env, "lazy-loading").await.is_empty().then_some(())
    })
    .await;
    assert!(sim.agents().is_empty());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the agent process is gone"
    );
    sim.stop().await;
    let _ = deployments
        .delete("lazy-loading", &DeleteParams::default())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_fails_makes_the_stand_in_app_refuse_that_revision() {
    let env = TestEnv::new("sim-reload").await;
    let _operator = env.start_operator();
    let sim = simulator(&env, |_| {}).await;
    env.apply_yaml(SIDECAR);
    set_value(&env, 30).await;
    Api::<Deployment>::namespaced(env.client.clone(), &env.ns)
        .create(
            &PostParams::default(),
            &sidecar_deployment(json!({FAULT: "reload-fails", FAULT_ON_APPLIED_REVISION: "2"})),
        )
        .await
        .unwrap();
    let applied_where = |what: &'static str, f: fn(&Value) -> bool| {
        let env = &env;
        async move {
            eventually(90, what, || async {
                pods(env, "lazy-loading")
                    .await
                    .into_iter()
                    .find(|p| applied(p).is_some_and(|a| f(&a)))
            })
            .await
        }
    };
    let pod = applied_where("revision 1 applied", |a| {
        a["revision"] == 1 && a["error"].is_null()
    })
    .await;
    set_value(&env, 45).await;
    // The file is written; the agent reports the failed reload against revision 2.
    applied_where("revision 2 refused by the app", |a| {
        a["failedRevision"] == 2 && a["error"].as_str().is_some_and(|e| e.contains("500"))
    })
    .await;
    let reloads = sim.reloads(&env.ns, &pod.name_any());
    assert!(
        reloads
            .iter()
            .any(|r| r.revision == Some(2) && r.status == 500),
        "{reloads:?}"
    );
    assert!(
        reloads
            .iter()
            .all(|r| r.revision != Some(1) || r.status == 204)
    );
    // Another revision reloads again.
    set_value(&env, 60).await;
    applied_where("revision 3 applied", |a| {
        a["revision"] == 3 && a["error"].is_null()
    })
    .await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_fits_no_node_stays_pending_as_unschedulable() {
    let env = TestEnv::new("sim-unsched").await;
    let sim = simulator(&env, |_| {}).await;
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "picky", "labels": {"app": "picky"}},
        "spec": {"nodeSelector": {"disk": "ssd"},
            "containers": [{"name": "app", "image": "busybox"}]}
    }))
    .unwrap();
    Api::<Pod>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let pod = eventually(30, "picky Unschedulable", || async {
        pods(&env, "picky").await.into_iter().find(|p| {
            p.status
                .iter()
                .flat_map(|s| s.conditions.iter().flatten())
                .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable"))
        })
    })
    .await;
    assert_eq!(pod.spec.unwrap().node_name, None);
    assert!(sim.history().iter().all(|e| e.kind == PodEventKind::Seen));
    sim.stop().await;
}
