//! Beyond the ConfigMap: restarts for restart-only keys (in waves), consumer status from real
//! agent processes, and automatic rollback when the consumers reject a revision or miss the
//! deadline.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestEnv, eventually, free_port, hotconf_bin};
use hotconf::crd::{ConfigStatus, RuntimeConfig};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"tier": "web"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "busybox", "args": ["sleep", "1d"]}]}
            }
        }
    }))
    .unwrap()
}

fn stamp(d: &Deployment) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get("hotconf.dev/restart-revision")
        .cloned()
}

/// What the deployment controller would do: observe the current generation.
async fn observe(api: &Api<Deployment>, name: &str) {
    let d = api.get(name).await.unwrap();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"observedGeneration": d.metadata.generation}})),
    )
    .await
    .unwrap();
}

async fn status(env: &TestEnv, name: &str) -> ConfigStatus {
    Api::<RuntimeConfig>::namespaced(env.client.clone(), &env.ns)
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap_or_default()
}

fn condition<'a>(s: &'a ConfigStatus, type_: &str) -> Option<&'a hotconf::crd::Condition> {
    s.conditions.iter().find(|c| c.type_ == type_)
}

async fn until<T>(
    env: &TestEnv,
    name: &str,
    what: &str,
    f: impl Fn(&ConfigStatus) -> Option<T>,
) -> T {
    let f = &f;
    eventually(90, what, || async move { f(&status(env, name).await) }).await
}

#[tokio::test]
async fn restart_only_keys_restart_their_targets_in_waves() {
    let env = TestEnv::new("restarts").await;
    let _operator = env.start_operator();
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    for name in ["web-a", "web-b"] {
        deployments
            .create(&PostParams::default(), &deployment(name))
            .await
            .unwrap();
        observe(&deployments, name).await;
    }
    let before: Vec<Deployment> = futures::future::join_all(["web-a", "web-b"].map(|n| {
        let d = deployments.clone();
        async move { d.get(n).await.unwrap() }
    }))
    .await;
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: app}\nspec:\n  schema:\n    workers: {type: integer, default: 4, requiresRestart: true}\n    timeout: {type: integer, default: 30}\n  restartTargets:\n  - {kind: Deployment, selector: {tier: web}}\n  restartPolicy: {maxConcurrent: 1}\n",
    );
    until(&env, "app", "revision 1", |s| {
        (s.current_revision == Some(1)).then_some(())
    })
    .await;
    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);

    // A hot-reloadable key restarts nothing.
    rtcs.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"values": {"timeout": 60}}})),
    )
    .await
    .unwrap();
    until(&env, "app", "revision 2", |s| {
        (s.current_revision == Some(2)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (d, old) in ["web-a", "web-b"].iter().zip(&before) {
        let now = deployments.get(d).await.unwrap();
        assert_eq!(
            now.metadata.generation, old.metadata.generation,
            "{d} untouched"
        );
    }

    // A restart-only key: one target at a time.
    rtcs.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"values": {"workers": 8}}})),
    )
    .await
    .unwrap();
    let pending = until(&env, "app", "restart of web-a", |s| {
        (s.current_revision == Some(3) && !s.pending_restart.is_empty()).then(|| s.clone())
    })
    .await;
    assert_eq!(pending.pending_restart, vec!["values.workers"]);
    assert_eq!(
        condition(&pending, "RestartPending").unwrap().status,
        "True"
    );
    let a = eventually(30, "web-a stamped", || async {
        let d = deployments.get("web-a").await.unwrap();
        (stamp(&d).as_deref() == Some("3")).then_some(d)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        stamp(&deployments.get("web-b").await.unwrap()),
        None,
        "web-b waits for web-a"
    );
    let s = status(&env, "app").await;
    let states: Vec<(String, String)> = s
        .restart
        .unwrap()
        .targets
        .into_iter()
        .map(|t| (t.name, t.state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("web-a".into(), "Restarting".into()),
            ("web-b".into(), "Pending".into())
        ]
    );
    // Only the template annotation changed, and it is the operator's alone.
    let mut a_spec = serde_json::to_value(a.spec.clone().unwrap()).unwrap();
    a_spec["template"]["metadata"]["annotations"] = Value::Null;
    let mut old_spec = serde_json::to_value(before[0].spec.clone().unwrap()).unwrap();
    old_spec["template"]["metadata"]["annotations"] = Value::Null;
    assert_eq!(a_spec, old_spec);
    let managed: Vec<String> = a
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some("hotconf"))
        .map(|m| serde_json::to_string(&m.fields_v1).unwrap())
        .collect();
    assert_eq!(managed.len(), 1);
    assert!(
        managed[0].contains("hotconf.dev/restart-revision"),
        "{managed:?}"
    );
    assert!(!managed[0].contains("containers"), "{managed:?}");

    observe(&deployments, "web-a").await;
    eventually(30, "web-b stamped after web-a was observed", || async {
        (stamp(&deployments.get("web-b").await.unwrap()).as_deref() == Some("3")).then_some(())
    })
    .await;
    observe(&deployments, "web-b").await;
    let done = until(&env, "app", "restarts done", |s| {
        (s.pending_restart.is_empty() && s.restart.is_none()).then(|| s.clone())
    })
    .await;
    assert_eq!(condition(&done, "RestartPending").unwrap().status, "False");

    // A rollback to revision 2 brings workers back to 4: the targets restart for it, in waves.
    env.kubectl(&["annotate", "rtc/app", "hotconf.dev/rollback-to=2"]);
    let back = until(&env, "app", "the rollback's restart", |s| {
        (s.current_revision == Some(2) && s.restart.is_some()).then(|| s.clone())
    })
    .await;
    assert_eq!(back.pending_restart, vec!["values.workers"]);
    assert_eq!(back.restart.unwrap().revision, 2);
    eventually(30, "web-a stamped for the rollback", || async {
        (stamp(&deployments.get("web-a").await.unwrap()).as_deref() == Some("2")).then_some(())
    })
    .await;
    assert_eq!(
        stamp(&deployments.get("web-b").await.unwrap()).as_deref(),
        Some("3"),
        "web-b waits for web-a"
    );
    observe(&deployments, "web-a").await;
    eventually(30, "web-b stamped for the rollback", || async {
        (stamp(&deployments.get("web-b").await.unwrap()).as_deref() == Some("2")).then_some(())
    })
    .await;
    observe(&deployments, "web-b").await;
    until(&env, "app", "the rollback's restarts done", |s| {
        (s.pending_restart.is_empty() && s.restart.is_none()).then_some(())
    })
    .await;

    // Releasing it projects revision 3 again, and its workers need one more restart.
    env.kubectl(&["annotate", "rtc/app", "hotconf.dev/rollback-to-"]);
    until(&env, "app", "the release's restart", |s| {
        (s.current_revision == Some(3) && s.restart.as_ref().is_some_and(|r| r.revision == 3))
            .then_some(())
    })
    .await;
    eventually(30, "web-a stamped for the release", || async {
        (stamp(&deployments.get("web-a").await.unwrap()).as_deref() == Some("3")).then_some(())
    })
    .await;
}

struct Consumers {
    agents: Vec<hotconf::dev::control_plane::Process>,
    outputs: Vec<PathBuf>,
}

/// Three Pod objects labelled `app: shop`, each with a real agent process reporting for it.
async fn consumers(env: &TestEnv, config_map: &str, reload_port: u16) -> Consumers {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    let mut agents = Vec::new();
    let mut outputs = Vec::new();
    for i in 0..3 {
        let name = format!("shop-{i}");
        let pod: Pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "shop"}},
            "spec": {"containers": [{"name": "app", "image": "busybox"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        let dir = env.plane.dir().join(format!("agent-{}-{i}", env.ns));
        std::fs::create_dir_all(&dir).unwrap();
        let output = dir.join("config.yaml");
        let log = env
            .plane
            .log_dir()
            .join(format!("agent-{}-{i}.log", env.ns));
        agents.push(
            env.plane
                .spawn(
                    "hotconf-agent",
                    &hotconf_bin(),
                    &[
                        "agent".into(),
                        format!("--configmap={}/{config_map}", env.ns),
                        format!("--output={}", output.display()),
                        format!("--reload-url=http://127.0.0.1:{reload_port}/reload"),
                        "--reload-retries=1".into(),
                        format!("--admin-addr=127.0.0.1:{}", free_port()),
                        format!("--pod-name={name}"),
                        format!("--pod-namespace={}", env.ns),
                    ],
                    hotconf::dev::control_plane::ADMIN_USER,
                    &log,
                )
                .unwrap(),
        );
        outputs.push(output);
    }
    Consumers { agents, outputs }
}

fn level(path: &Path) -> String {
    let doc: Value = serde_yaml::from_str(&std::fs::read_to_string(path).unwrap_or_default())
        .unwrap_or(Value::Null);
    doc["values"]["level"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn set_level(env: &TestEnv, level: &str) {
    Api::<RuntimeConfig>::namespaced(env.client.clone(), &env.ns)
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"values": {"level": level}}})),
        )
        .await
        .unwrap();
}

fn all_on(revision: i64) -> impl Fn(&ConfigStatus) -> Option<ConfigStatus> {
    move |s| {
        s.consumers
            .as_ref()
            .filter(|c| c.revision == revision && c.selected == 3 && c.updated == 3)
            .map(|_| s.clone())
    }
}

async fn warning_events(env: &TestEnv, reason: &str) -> Vec<String> {
    Api::<Event>::namespaced(env.client.clone(), &env.ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason) && e.type_.as_deref() == Some("Warning"))
        .map(|e| e.note.unwrap_or_default())
        .collect()
}

const SHOP: &str = "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: shop}\nspec:\n  values: {level: one}\n  rollout:\n    consumerSelector: {app: shop}\n    autoRollback: {enabled: true, maxFailures: 1, progressDeadlineSeconds: DEADLINE}\n";

#[tokio::test]
async fn consumers_that_reject_a_revision_roll_it_back() {
    let env = TestEnv::new("autorollback").await;
    let _operator = env.start_operator();
    let refusals = Arc::new(AtomicUsize::new(0));
    let port = hotconf::dev::control_plane::reload_stand_in("bad", refusals.clone())
        .await
        .unwrap();
    env.apply_yaml(&SHOP.replace("DEADLINE", "120"));
    until(&env, "shop", "revision 1", |s| {
        (s.current_revision == Some(1)).then_some(())
    })
    .await;
    let c = consumers(&env, "shop", port).await;
    until(&env, "shop", "3/3 consumers on revision 1", all_on(1)).await;

    set_level(&env, "two").await;
    let s = until(&env, "shop", "3/3 consumers on revision 2", all_on(2)).await;
    assert_eq!(condition(&s, "Progressing").unwrap().status, "False");
    assert!(c.outputs.iter().all(|o| level(o) == "two"));

    // Revision 3 is refused by the applications (the reload URL answers 500).
    set_level(&env, "bad").await;
    eventually(60, "the first refusal", || async {
        (refusals.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    let refused_at = Instant::now();
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    eventually(60, "the rollback to be projected", || async {
        let cm = cms.get("shop").await.ok()?;
        (cm.annotations().get("hotconf.dev/revision")? == "2").then_some(())
    })
    .await;
    let rollback_time = refused_at.elapsed();
    let s = until(&env, "shop", "3/3 consumers back on revision 2", all_on(2)).await;
    let pin = s.rollback.clone().unwrap();
    assert!(pin.automatic);
    assert_eq!(pin.target_revision, 2);
    assert_eq!(s.latest_revision, Some(3));
    let rolled = condition(&s, "RolledBack").unwrap();
    assert_eq!(
        (rolled.status.as_str(), rolled.reason.as_str()),
        ("True", "AutoRolledBack")
    );
    assert!(
        rolled.message.contains("consumers failed revision 3 (")
            && rolled.message.contains(" reload refused; maxFailures 1)"),
        "{}",
        rolled.message
    );
    let notes = eventually(20, "the AutoRolledBack event", || async {
        let notes = warning_events(&env, "AutoRolledBack").await;
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("revision 2"), "{notes:?}");
    assert!(
        c.outputs.iter().all(|o| level(o) == "two"),
        "the agents re-applied revision 2"
    );
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.ns);
    for i in 0..3 {
        let applied: Value = serde_json::from_str(
            &pods.get(&format!("shop-{i}")).await.unwrap().annotations()["hotconf.dev/applied"],
        )
        .unwrap();
        assert_eq!(applied["revision"], 2);
        assert_eq!(applied["error"], Value::Null);
    }
    // `hotconf history` shows how many pods applied each revision.
    let out = std::process::Command::new(hotconf_bin())
        .args(["history", "rtc/shop", "-n", &env.ns, "--kubeconfig"])
        .arg(env.plane.kubeconfig_path())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        table.lines().next().unwrap_or_default().contains("APPLIED"),
        "{table}"
    );
    let row = |r: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{r} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(row("2").contains("3 (all)"), "{table}");
    assert!(!row("3").contains("(all)"), "{table}");
    println!(
        "auto-rollback: {:.2}s from the first failing reload to revision 2 projected",
        rollback_time.as_secs_f64()
    );

    // A new spec generation releases the automatic pin.
    set_level(&env, "four").await;
    let s = until(&env, "shop", "3/3 consumers on revision 4", all_on(4)).await;
    assert!(s.rollback.is_none());
    assert_eq!(condition(&s, "RolledBack").unwrap().status, "False");
    drop(c);
}

#[tokio::test]
async fn consumers_that_miss_the_deadline_roll_it_back() {
    let env = TestEnv::new("deadline").await;
    let _operator = env.start_operator();
    let port = hotconf::dev::control_plane::reload_stand_in("bad", Arc::new(AtomicUsize::new(0)))
        .await
        .unwrap();
    env.apply_yaml(&SHOP.replace("DEADLINE", "8"));
    until(&env, "shop", "revision 1", |s| {
        (s.current_revision == Some(1)).then_some(())
    })
    .await;
    let mut c = consumers(&env, "shop", port).await;
    until(&env, "shop", "3/3 consumers on revision 1", all_on(1)).await;
    set_level(&env, "two").await;
    until(&env, "shop", "3/3 consumers on revision 2", all_on(2)).await;

    // One agent stops reporting; revision 3 never reaches all consumers.
    c.agents[2].kill();
    set_level(&env, "three").await;
    let s = until(&env, "shop", "the deadline rollback", |s| {
        s.rollback
            .as_ref()
            .filter(|r| r.automatic)
            .map(|_| s.clone())
    })
    .await;
    assert_eq!(s.rollback.as_ref().unwrap().target_revision, 2);
    let reason = s
        .rollback
        .as_ref()
        .unwrap()
        .reason
        .clone()
        .unwrap_or_default();
    assert!(reason.contains("within 8s"), "{reason}");
    // Events are published after the status is written.
    let notes = eventually(20, "the AutoRolledBack event", || async {
        let notes = warning_events(&env, "AutoRolledBack").await;
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    eventually(20, "a live agent to get revision 2 back", || async {
        (level(&c.outputs[0]) == "two").then_some(())
    })
    .await;
}
