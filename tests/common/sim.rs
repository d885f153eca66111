//! Workloads whose pods really roll: the pod simulator for a test's namespace, Deployments with
//! a real hotconf agent sidecar, and the RBAC their ServiceAccount needs.

use std::time::Duration;

use hotconf::dev::sim::{SimOptions, Simulator};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{ListParams, PostParams},
};
use serde_json::{Value, json};

use super::{TestEnv, hotconf_bin};

/// The simulator for `env`'s namespace (its own node), with agents run as real processes,
/// short delays, and `tweak` applied.
pub async fn simulator(env: &TestEnv, tweak: impl FnOnce(&mut SimOptions)) -> Simulator {
    let mut options = SimOptions {
        node_name: format!("sim-{}", env.ns),
        namespaces: vec![env.ns.clone()],
        start_delay: Duration::from_millis(200),
        volume_sync_delay: Duration::from_secs(1),
        crash_period: Duration::from_secs(1),
        agent_binary: Some(hotconf_bin()),
        kubeconfig: Some(env.plane.kubeconfig_path().to_path_buf()),
        // Kept beside the control-plane logs: agents' logs, volumes.
        root: Some(env.plane.log_dir().join(format!("sim-{}", env.ns))),
    };
    tweak(&mut options);
    Simulator::start(env.client.clone(), options)
        .await
        .expect("the simulator starts")
}

/// ServiceAccount `consumer` with exactly what an agent needs: read ConfigMap `config_map`,
/// annotate pods.
pub fn agent_rbac(env: &TestEnv, config_map: &str) {
    env.apply_yaml(&format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: consumer}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: consumer-agent}}
rules:
- {{apiGroups: [""], resources: [configmaps], resourceNames: [{config_map}], verbs: [get, list, watch]}}
- {{apiGroups: [""], resources: [pods], verbs: [patch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: consumer-agent}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: consumer-agent}}
subjects: [{{kind: ServiceAccount, name: consumer}}]
"#
    ));
}

/// How the agent sidecar follows the ConfigMap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The API watch, with the mounted volume as the fallback.
    ApiAndVolume,
    /// The mounted volume only.
    VolumeOnly,
}

/// A Deployment `name` of `replicas` pods labelled `app: name` and `labels`, each an app
/// container and a hotconf agent sidecar following ConfigMap `config_map` (data key
/// `config.yaml`); `annotations` go on the pod template (simulator faults).
pub fn agent_deployment(
    name: &str,
    replicas: i32,
    config_map: &str,
    source: Source,
    labels: Value,
    annotations: Value,
) -> Deployment {
    let mut template_labels = json!({"app": name});
    if let Some(extra) = labels.as_object() {
        for (k, v) in extra {
            template_labels[k] = v.clone();
        }
    }
    let mut args = vec![json!("agent")];
    if source == Source::ApiAndVolume {
        args.push(json!(format!("--configmap=$(POD_NAMESPACE)/{config_map}")));
    }
    args.extend([
        json!("--watch-dir=/etc/hotconf/source"),
        json!("--file=config.yaml"),
        json!("--output=/etc/app/config.yaml"),
        json!("--reload-url=http://localhost:8080/-/reload"),
        json!("--admin-addr=0.0.0.0:9901"),
    ]);
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": template_labels, "annotations": annotations},
                "spec": {
                    "serviceAccountName": "consumer",
                    "containers": [
                        {"name": "app", "image": "registry.example/app:1",
                         "volumeMounts": [{"name": "app-config", "mountPath": "/etc/app", "readOnly": true}]},
                        {"name": "hotconf-agent", "image": "ghcr.io/hotconf/hotconf:latest",
                         "args": args,
                         "env": [
                            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                            {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
                         "volumeMounts": [
                            {"name": "source", "mountPath": "/etc/hotconf/source", "readOnly": true},
                            {"name": "app-config", "mountPath": "/etc/app"}]}
                    ],
                    "volumes": [
                        {"name": "source", "configMap": {"name": config_map, "optional": true}},
                        {"name": "app-config", "emptyDir": {}}
                    ]
                }
            }
        }
    }))
    .expect("a Deployment")
}

/// A Deployment `name` of `replicas` plain pods (no agent), it and its pods labelled `labels`
/// (the pods also `app: name`).
pub fn plain_deployment(
    name: &str,
    replicas: i32,
    labels: Value,
    annotations: Value,
) -> Deployment {
    let mut template_labels = labels.clone();
    template_labels["app"] = json!(name);
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": template_labels, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
            }
        }
    }))
    .expect("a Deployment")
}

/// Creates `deployment` in `env`'s namespace.
pub async fn create(env: &TestEnv, deployment: &Deployment) {
    Api::<Deployment>::namespaced(env.client.clone(), &env.ns)
        .create(&PostParams::default(), deployment)
        .await
        .expect("creating a Deployment");
}

/// The pods `selector` selects, terminating ones left out.
pub async fn pods(env: &TestEnv, selector: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(env.client.clone(), &env.ns)
        .list(&ListParams::default().labels(selector))
        .await
        .expect("listing pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

/// The pod's `Ready` condition is True.
pub fn ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

/// A container of the pod waits in `CrashLoopBackOff`.
pub fn crash_looping(pod: &Pod) -> bool {
    pod.status
        .iter()
        .flat_map(|s| s.container_statuses.iter().flatten())
        .any(|c| {
            c.state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                == Some("CrashLoopBackOff")
        })
}

/// The agent's `hotconf.dev/applied` report on the pod.
pub fn applied(pod: &Pod) -> Option<Value> {
    serde_json::from_str(pod.annotations().get("hotconf.dev/applied")?).ok()
}

/// The pod's agent reports `revision`, cleanly.
pub fn applied_cleanly(pod: &Pod, revision: i64) -> bool {
    applied(pod).is_some_and(|a| a["revision"] == revision && a["error"].is_null())
}

/// The pod template's `hotconf.dev/restart-revision` stamp of Deployment `name`.
pub async fn stamp(env: &TestEnv, name: &str) -> Option<String> {
    let d = Api::<Deployment>::namespaced(env.client.clone(), &env.ns)
        .get(name)
        .await
        .expect("reading a Deployment");
    d.spec?
        .template
        .metadata?
        .annotations?
        .get("hotconf.dev/restart-revision")
        .cloned()
}
