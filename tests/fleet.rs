//! A fleet end to end: 32 simulated pods with real agents (20 following the API with the
//! volume as fallback, 12 following only the mounted volume) all report a CR change, and the
//! operator's consumer status counts every one of them.

mod common;

use common::{TestEnv, eventually, sim};
use hotconf::crd::RuntimeConfig;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

const API_PODS: i32 = 20;
const VOLUME_PODS: i32 = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pod_of_a_fleet_reports_the_new_revision() {
    let env = TestEnv::new("fleet").await;
    let _operator = env.start_operator();
    let sim = sim::simulator(&env, |_| {}).await;
    sim::agent_rbac(&env, "fleet");
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: fleet}\nspec:\n  values: {level: one}\n  target: {fileName: config.yaml}\n  rollout:\n    consumerSelector: {tier: fleet}\n",
    );
    for (name, replicas, source) in [
        ("fleet-api", API_PODS, sim::Source::ApiAndVolume),
        ("fleet-vol", VOLUME_PODS, sim::Source::VolumeOnly),
    ] {
        sim::create(
            &env,
            &sim::agent_deployment(
                name,
                replicas,
                "fleet",
                source,
                json!({"tier": "fleet"}),
                json!({}),
            ),
        )
        .await;
    }
    let total = i64::from(API_PODS + VOLUME_PODS);
    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    let counted = |revision: i64| {
        let rtcs = rtcs.clone();
        async move {
            eventually(
                180,
                &format!("{total}/{total} consumers on revision {revision}"),
                || async {
                    let s = rtcs.get("fleet").await.ok()?.status?;
                    let c = s.consumers?;
                    (c.revision == revision && c.selected == total && c.updated == total)
                        .then_some(c)
                },
            )
            .await
        }
    };
    counted(1).await;
    assert_eq!(sim.agents().len(), total as usize);

    rtcs.patch(
        "fleet",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"values": {"level": "two"}}})),
    )
    .await
    .unwrap();
    let c = counted(2).await;
    assert_eq!(c.failed, 0);
    let pods = sim::pods(&env, "tier=fleet").await;
    assert_eq!(pods.len(), total as usize);
    let mut volume_only = 0;
    for p in &pods {
        let applied = sim::applied(p).unwrap_or_default();
        assert_eq!(applied["revision"], 2, "{}: {applied}", p.name_any());
        assert!(
            applied["hash"].as_str().is_some_and(|h| !h.is_empty()),
            "{applied}"
        );
        let text = std::fs::read_to_string(
            sim.volume_dir(&env.ns, &p.name_any(), "app-config")
                .unwrap()
                .join("config.yaml"),
        )
        .unwrap();
        assert!(text.contains("level: two"), "{}: {text}", p.name_any());
        volume_only += usize::from(p.name_any().starts_with("fleet-vol-"));
    }
    assert_eq!(volume_only, VOLUME_PODS as usize);
    sim.stop().await;
}
