//! Workloads whose pods really roll: the pod simulator for a test's namespace, Deployments with
//! a real hotconf agent sidecar, and the RBAC their ServiceAccount needs.

use std::time::Duration;

use hotconf::dev::sim::{SimOptions, Simulator, workloads};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, ResourceExt,
    api::{ListParams, PostParams},
};
use serde_json::Value;

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
    env.apply_yaml(&workloads::agent_rbac_yaml(&[config_map]));
}

#[allow(unused_imports)] // not every test binary uses them
pub use workloads::{AgentSource as Source, agent_deployment, plain_deployment};

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

/// A container of the pod waits in `CrashLoopBackOff` (as the operator reads a pod).
pub fn crash_looping(pod: &Pod) -> bool {
    hotconf::rollout::Consumer::from_pod(pod)
        .health
        .crash_looping
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
