//! Workloads to run on the simulator, as tests and benchmarks need them: a Deployment whose pods
//! have a real hotconf agent sidecar (as `examples/agent-sidecar.yaml` has), a Deployment of
//! plain pods, and the least-privilege RBAC an agent's ServiceAccount needs.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

/// The ServiceAccount the agent pods of [`agent_deployment`] run as.
pub const AGENT_SERVICE_ACCOUNT: &str = "consumer";

/// How an agent sidecar follows the projected ConfigMap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentSource {
    /// The API watch, with the mounted volume as the fallback.
    ApiAndVolume,
    /// The mounted volume only.
    VolumeOnly,
}

/// ServiceAccount [`AGENT_SERVICE_ACCOUNT`] with exactly what an agent needs (read the
/// ConfigMaps `config_maps`, annotate pods), as YAML to apply in the pods' namespace.
pub fn agent_rbac_yaml(config_maps: &[&str]) -> String {
    let config_map = config_maps.join(", ");
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: {AGENT_SERVICE_ACCOUNT}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {AGENT_SERVICE_ACCOUNT}-agent}}
rules:
- {{apiGroups: [""], resources: [configmaps], resourceNames: [{config_map}], verbs: [get, list, watch]}}
- {{apiGroups: [""], resources: [pods], verbs: [patch]}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {AGENT_SERVICE_ACCOUNT}-agent}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {AGENT_SERVICE_ACCOUNT}-agent}}
subjects: [{{kind: ServiceAccount, name: {AGENT_SERVICE_ACCOUNT}}}]
"#
    )
}

// `labels` (an object) with `app: name` added.
fn pod_labels(name: &str, labels: &Value) -> Value {
    let mut all = json!({"app": name});
    for (k, v) in labels.as_object().into_iter().flatten() {
        all[k] = v.clone();
    }
    all
}

/// A Deployment `name` of `replicas` pods, it and its pods labelled `labels` (the pods also
/// `app: name`), each an app container and a hotconf agent sidecar following ConfigMap
/// `config_map` (data key `config.yaml`, written for the app to `/etc/app/config.yaml`, then a
/// POST to the app's reload URL); `annotations` go on the pod template (simulator faults).
pub fn agent_deployment(
    name: &str,
    replicas: i32,
    config_map: &str,
    source: AgentSource,
    labels: Value,
    annotations: Value,
) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": pod_labels(name, &labels), "annotations": annotations},
                "spec": agent_pod_spec(config_map, "config.yaml", source, &[]),
            }
        }
    }))
    .expect("a Deployment")
}

/// A bare Pod `name` like those of [`agent_deployment`]: its agent follows data key `file` of
/// ConfigMap `config_map` through the API and the volume, with `extra_args` on its command
/// line; `annotations` go on the Pod (simulator faults).
pub fn agent_pod(
    name: &str,
    config_map: &str,
    file: &str,
    extra_args: &[String],
    annotations: Value,
) -> Pod {
    let mut spec = agent_pod_spec(config_map, file, AgentSource::ApiAndVolume, extra_args);
    // The simulated agent authenticates by impersonation: no token to mount (and a control
    // plane without the token controller has none to give).
    spec["automountServiceAccountToken"] = json!(false);
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}, "annotations": annotations},
        "spec": spec,
    }))
    .expect("a Pod")
}

// An app container and a hotconf agent sidecar following data key `file` of `config_map`
// (written for the app to `/etc/app/FILE`, then a POST to the app's reload URL).
fn agent_pod_spec(config_map: &str, file: &str, source: AgentSource, extra: &[String]) -> Value {
    let mut args = vec![json!("agent")];
    if source == AgentSource::ApiAndVolume {
        args.push(json!(format!("--configmap=$(POD_NAMESPACE)/{config_map}")));
    }
    args.extend([
        json!("--watch-dir=/etc/hotconf/source"),
        json!(format!("--file={file}")),
        json!(format!("--output=/etc/app/{file}")),
        json!("--reload-url=http://localhost:8080/-/reload"),
        json!("--admin-addr=0.0.0.0:9901"),
    ]);
    args.extend(extra.iter().map(|a| json!(a)));
    json!({
        "serviceAccountName": AGENT_SERVICE_ACCOUNT,
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
    })
}

/// A Deployment `name` of `replicas` plain pods (no agent), it and its pods labelled `labels`
/// (the pods also `app: name`); `annotations` go on the pod template.
pub fn plain_deployment(
    name: &str,
    replicas: i32,
    labels: Value,
    annotations: Value,
) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": pod_labels(name, &labels), "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
            }
        }
    }))
    .expect("a Deployment")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_sidecar_follows_the_config_map_as_asked() {
        let d = agent_deployment(
            "web",
            2,
            "web-config",
            AgentSource::VolumeOnly,
            json!({"tier": "fleet"}),
            json!({}),
        );
        let template = d.spec.unwrap().template;
        assert_eq!(template.metadata.unwrap().labels.unwrap()["tier"], "fleet");
        let agent = &template.spec.unwrap().containers[1];
        let args = agent.args.clone().unwrap();
        assert!(super::super::agents::is_agent(agent));
        assert!(
            !args.iter().any(|a| a.starts_with("--configmap")),
            "{args:?}"
        );
        assert!(agent_rbac_yaml(&["a", "b"]).contains("resourceNames: [a, b]"));
    }
}
