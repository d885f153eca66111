//! The simulated Node: registered Ready through the status subresource, schedulable and
//! untainted; and the scheduler's one question, whether a pod may land on it (its
//! `nodeSelector` and required node affinity, which is how 1.20's DaemonSet controller pins its
//! pods to a node).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, Pod};
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::FIELD_MANAGER;
use crate::dev::Error;

/// The labels the simulated node carries.
pub fn node_labels(name: &str) -> BTreeMap<String, String> {
    [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", "amd64"),
        ("type", "hotconf-sim"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Creates (or takes over) the node `name` and reports it Ready; returns the time it became
/// Ready, for [`heartbeat`]'s `lastTransitionTime`s.
pub(super) async fn register(client: &Client, name: &str, host_ip: &str) -> Result<String, Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let node = json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": node_labels(name),
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"unschedulable": false},
    });
    nodes
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&node),
        )
        .await?;
    // kube-apiserver's TaintNodesByCondition admission taints a new node not-ready until the
    // node lifecycle controller (not run here) sees it Ready: the node has no taints.
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"taints": null}})),
        )
        .await?;
    let since = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    heartbeat(client, name, host_ip, &since).await?;
    Ok(since)
}

/// Writes the node's status: Ready (`since` then), no pressure, its capacity, addresses and
/// versions.
pub(super) async fn heartbeat(
    client: &Client,
    name: &str,
    host_ip: &str,
    since: &str,
) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({"type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": since})
    };
    let resources =
        json!({"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let status = json!({"status": {
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "simulated"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "simulated"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "simulated"),
            condition("Ready", "True", "KubeletReady", "hotconf's simulated kubelet is posting ready status"),
        ],
        "capacity": resources,
        "allocatable": resources,
        "addresses": [{"type": "InternalIP", "address": host_ip}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": "hotconf-sim", "systemUUID": "hotconf-sim", "bootID": "hotconf-sim",
            "kernelVersion": "simulated", "osImage": "hotconf simulator",
            "containerRuntimeVersion": "simulated://1", "kubeletVersion": "v1.20.2",
            "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux", "architecture": "amd64",
        },
    }});
    nodes
        .patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    Ok(())
}

/// Whether `pod` may be scheduled to the node `name` with `labels`: its `nodeSelector` matches
/// and some term of its required node affinity does (taints do not matter: the node has none).
pub fn fits(pod: &Pod, name: &str, labels: &BTreeMap<String, String>) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let selector_ok = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.as_slice());
    let affinity_ok = match terms {
        None | Some([]) => true,
        Some(terms) => terms.iter().any(|term| {
            term.match_fields.iter().flatten().all(|r| {
                let name_value = BTreeMap::from([("metadata.name".to_string(), name.to_string())]);
                requirement(r, &name_value)
            }) && term
                .match_expressions
                .iter()
                .flatten()
                .all(|r| requirement(r, labels))
        }),
    };
    selector_ok && affinity_ok
}

fn requirement(r: &NodeSelectorRequirement, values: &BTreeMap<String, String>) -> bool {
    let value = values.get(&r.key);
    let listed = |v: &String| r.values.iter().flatten().any(|x| x == v);
    match r.operator.as_str() {
        "In" => value.is_some_and(listed),
        "NotIn" => !value.is_some_and(listed),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn schedules_by_selector_and_affinity() {
        let labels = node_labels("sim");
        assert!(fits(&pod(json!({"containers": []})), "sim", &labels));
        assert!(fits(
            &pod(json!({"containers": [], "nodeSelector": {"kubernetes.io/os": "linux"}})),
            "sim",
            &labels
        ));
        assert!(!fits(
            &pod(json!({"containers": [], "nodeSelector": {"disk": "ssd"}})),
            "sim",
            &labels
        ));
        // As 1.20's DaemonSet controller pins a pod.
        let daemon = |node: &str| {
            pod(json!({"containers": [], "affinity": {"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
            ]}}}}))
        };
        assert!(fits(&daemon("sim"), "sim", &labels));
        assert!(!fits(&daemon("other"), "sim", &labels));
    }
}
