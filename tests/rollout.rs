//! Beyond the ConfigMap, with pods that really roll (the pod simulator, real agents):
//! restarts for restart-only keys in waves gated on finished rollouts, a stalled round, consumer
//! status, and automatic rollback when consumers reject a revision, crash-loop after applying
//! it, or miss the deadline.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use chrono::{DateTime, Utc};
use common::{TestEnv, eventually, free_port, hotconf_bin, sim};
use hotconf::crd::{ConfigStatus, RuntimeConfig};
use hotconf::dev::sim::{
    FAULT, FAULT_ON_APPLIED_REVISION, FAULT_ON_RESTART_REVISION, PodEvent, PodEventKind, Simulator,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::{
    Api, ResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

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

const WEB: [&str; 3] = ["web-a", "web-b", "web-c"];

/// The CR of the restart tests: restart-only `workers`, hot `timeout`, the `tier: web`
/// Deployments restarted one at a time.
const APP: &str = "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: app}\nspec:\n  schema:\n    workers: {type: integer, default: 4, requiresRestart: true}\n    timeout: {type: integer, default: 30}\n  restartTargets:\n  - {kind: Deployment, selector: {tier: web}}\n  restartPolicy: {maxConcurrent: 1}\n";

async fn set_values(env: &TestEnv, values: Value) {
    Api::<RuntimeConfig>::namespaced(env.client.clone(), &env.ns)
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"values": values}})),
        )
        .await
        .unwrap();
}

/// Every Deployment of `names` has finished rolling out `stamp` (kubectl's rule) with its pods
/// Ready.
async fn rolled_out(env: &TestEnv, names: &[&str], stamp: Option<&str>) {
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    eventually(
        120,
        &format!("{names:?} rolled out at {stamp:?}"),
        || async {
            for name in names {
                let d = deployments.get(name).await.ok()?;
                let s = d.status.clone()?;
                let want = d.spec.as_ref()?.replicas;
                let done = s.observed_generation >= d.metadata.generation
                    && s.updated_replicas == want
                    && s.available_replicas == want
                    && s.replicas == want;
                if !done || sim::stamp(env, name).await.as_deref() != stamp {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// When each target's pods were being replaced since `since`: from the creation of its first
/// pod not in `before` to the deletion of its last pod in `before`.
fn replacement_spans(
    history: &[PodEvent],
    since: DateTime<Utc>,
    before: &HashSet<String>,
    targets: &[&str],
) -> Vec<(String, DateTime<Utc>, DateTime<Utc>)> {
    let mut spans: Vec<_> = targets
        .iter()
        .map(|t| {
            let of = |e: &&PodEvent| e.at >= since && e.name.starts_with(&format!("{t}-"));
            let first_new = history
                .iter()
                .filter(of)
                .filter(|e| e.kind == PodEventKind::Seen && !before.contains(&e.uid))
                .map(|e| e.at)
                .min()
                .unwrap_or_else(|| panic!("{t} got no new pods: {history:?}"));
            let last_old = history
                .iter()
                .filter(of)
                .filter(|e| e.kind == PodEventKind::Deleted && before.contains(&e.uid))
                .map(|e| e.at)
                .max()
                .unwrap_or_else(|| panic!("no old pod of {t} was deleted: {history:?}"));
            (t.to_string(), first_new, last_old)
        })
        .collect();
    spans.sort_by_key(|s| s.1);
    spans
}

/// Restarts `WEB` for `revision` (a new spec or a rollback) and proves the waves: at no moment
/// were the pods of two targets being replaced, and the round ended only once every new pod was
/// Ready.
async fn restart_round(
    env: &TestEnv,
    sim: &Simulator,
    change: impl std::future::Future<Output = ()>,
    revision: i64,
) {
    let before: HashSet<String> = sim::pods(env, "tier=web")
        .await
        .iter()
        .filter_map(|p| p.uid())
        .collect();
    assert_eq!(before.len(), 9, "three Deployments of three");
    let since = Utc::now();
    change.await;
    let started = until(env, "app", "the restart round", |s| {
        s.restart
            .as_ref()
            .filter(|r| r.revision == revision)
            .map(|_| s.clone())
    })
    .await;
    assert_eq!(started.pending_restart, vec!["values.workers"]);
    assert_eq!(
        condition(&started, "RestartPending").unwrap().reason,
        "RestartKeysChanged"
    );
    // The first moment the round is over, every new pod is Ready and no old pod is left.
    let done = until(env, "app", "the round done", |s| {
        (s.restart.is_none() && s.current_revision == Some(revision)).then(|| s.clone())
    })
    .await;
    let done_at = Utc::now();
    assert_eq!(condition(&done, "RestartPending").unwrap().status, "False");
    let now_pods = sim::pods(env, "tier=web").await;
    assert_eq!(now_pods.len(), 9, "{now_pods:?}");
    for p in &now_pods {
        assert!(
            !before.contains(&p.uid().unwrap()),
            "{} is an old pod",
            p.name_any()
        );
        assert!(sim::ready(p), "{} is not Ready", p.name_any());
        assert_eq!(
            p.annotations().get("hotconf.dev/restart-revision"),
            Some(&revision.to_string())
        );
    }
    let history = sim.history();
    for p in &now_pods {
        let ready_at = history
            .iter()
            .filter(|e| e.uid == p.uid().unwrap() && e.kind == PodEventKind::Ready)
            .map(|e| e.at)
            .min()
            .expect("a Ready event");
        assert!(
            ready_at <= done_at,
            "{} was Ready only after the round ended",
            p.name_any()
        );
    }
    let spans = replacement_spans(&history, since, &before, &WEB);
    for pair in spans.windows(2) {
        assert!(
            pair[1].1 >= pair[0].2,
            "{} was being replaced before {} was done: {spans:?}",
            pair[1].0,
            pair[0].0
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_roll_one_target_at_a_time_and_wait_for_finished_rollouts() {
    let env = TestEnv::new("restarts").await;
    let _operator = env.start_operator();
    let sim = sim::simulator(&env, |_| {}).await;
    for name in WEB {
        sim::create(
            &env,
            &sim::plain_deployment(name, 3, json!({"tier": "web"}), json!({})),
        )
        .await;
    }
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    rolled_out(&env, &WEB, None).await;
    env.apply_yaml(APP);
    until(&env, "app", "revision 1", |s| {
        (s.current_revision == Some(1)).then_some(())
    })
    .await;
    let generations: Vec<Option<i64>> = futures::future::join_all(WEB.map(|n| {
        let d = deployments.clone();
        async move { d.get(n).await.unwrap().metadata.generation }
    }))
    .await;

    // A hot-reloadable key restarts nothing.
    set_values(&env, json!({"timeout": 60})).await;
    let s = until(&env, "app", "revision 2", |s| {
        (s.current_revision == Some(2)).then(|| s.clone())
    })
    .await;
    assert!(s.restart.is_none() && s.pending_restart.is_empty());
    for (name, generation) in WEB.iter().zip(&generations) {
        assert_eq!(
            deployments.get(name).await.unwrap().metadata.generation,
            *generation,
            "{name} untouched"
        );
    }

    // A restart-only key: one target at a time, each through a finished rollout.
    restart_round(&env, &sim, set_values(&env, json!({"workers": 8})), 3).await;
    // Only the template annotation changed, and it is the operator's alone.
    let a = deployments.get("web-a").await.unwrap();
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

    // A rollback to revision 2 brings workers back to 4: the targets restart for it, in waves.
    let rollback = async {
        env.kubectl(&["annotate", "rtc/app", "hotconf.dev/rollback-to=2"]);
    };
    restart_round(&env, &sim, rollback, 2).await;
    rolled_out(&env, &WEB, Some("2")).await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_whose_new_pods_never_become_ready_halts_the_round() {
    let env = TestEnv::new("stalled").await;
    let _operator = env.start_operator();
    let sim = sim::simulator(&env, |_| {}).await;
    // web-a's pods started for revision 2 never become Ready; it gives up after 5 s.
    let mut a = sim::plain_deployment(
        "web-a",
        2,
        json!({"tier": "web"}),
        json!({FAULT: "never-ready", FAULT_ON_RESTART_REVISION: "2"}),
    );
    a.spec.as_mut().unwrap().progress_deadline_seconds = Some(5);
    sim::create(&env, &a).await;
    for name in ["web-b", "web-c"] {
        sim::create(
            &env,
            &sim::plain_deployment(name, 2, json!({"tier": "web"}), json!({})),
        )
        .await;
    }
    rolled_out(&env, &WEB, None).await;
    env.apply_yaml(APP);
    until(&env, "app", "revision 1", |s| {
        (s.current_revision == Some(1)).then_some(())
    })
    .await;

    set_values(&env, json!({"workers": 8})).await;
    let stalled = until(&env, "app", "the round stalled", |s| {
        let r = s.restart.as_ref()?;
        r.targets
            .iter()
            .any(|t| t.state == "Stalled")
            .then(|| s.clone())
    })
    .await;
    let round = stalled.restart.clone().unwrap();
    let states: Vec<(&str, &str)> = round
        .targets
        .iter()
        .map(|t| (t.name.as_str(), t.state.as_str()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("web-a", "Stalled"),
            ("web-b", "Pending"),
            ("web-c", "Pending")
        ]
    );
    let why = round.targets[0].message.clone().unwrap_or_default();
    assert!(why.contains("ProgressDeadlineExceeded"), "{why}");
    let pending = condition(&stalled, "RestartPending").unwrap();
    assert_eq!(
        (pending.status.as_str(), pending.reason.as_str()),
        ("True", "RestartStalled")
    );
    assert!(
        pending.message.contains("Deployment/web-a"),
        "{}",
        pending.message
    );
    let notes = eventually(20, "the RestartStalled event", || async {
        let notes = warning_events(&env, "RestartStalled").await;
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("Deployment/web-a"), "{notes:?}");
    for name in ["web-b", "web-c"] {
        assert_eq!(sim::stamp(&env, name).await, None, "{name} is not stamped");
    }

    // A new revision starts a new round; its pods are fine, and it goes through all three.
    // web-b and web-c never had a template for revision 2: no ReplicaSet of theirs has it.
    set_values(&env, json!({"workers": 16})).await;
    until(&env, "app", "the new round done", |s| {
        (s.current_revision == Some(3) && s.restart.is_none()).then_some(())
    })
    .await;
    let replica_sets: Api<ReplicaSet> = Api::namespaced(env.client.clone(), &env.ns);
    for rs in replica_sets
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
    {
        let stamp = rs
            .spec
            .and_then(|s| s.template)
            .and_then(|t| t.metadata)
            .and_then(|m| m.annotations)
            .and_then(|a| a.get("hotconf.dev/restart-revision").cloned());
        let name = rs.metadata.name.unwrap_or_default();
        if !name.starts_with("web-a-") {
            assert_ne!(
                stamp.as_deref(),
                Some("2"),
                "{name} was stamped for revision 2"
            );
        }
    }
    rolled_out(&env, &WEB, Some("3")).await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_that_crash_loop_after_applying_a_revision_roll_it_back() {
    let env = TestEnv::new("crashloop").await;
    let admin = format!("127.0.0.1:{}", free_port());
    let _operator = env.start_operator_with(
        hotconf::dev::control_plane::OPERATOR_USER,
        &[format!("--admin-addr={admin}")],
    );
    let sim = sim::simulator(&env, |_| {}).await;
    sim::agent_rbac(&env, "shop");
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: shop}\nspec:\n  values: {level: one}\n  target: {fileName: config.yaml}\n  rollout:\n    consumerSelector: {app: shop}\n    healthWindowSeconds: 60\n    autoRollback: {enabled: true, maxFailures: 1}\n",
    );
    // The app crashes (and keeps crashing) while its agent has revision 3 applied.
    sim::create(
        &env,
        &sim::agent_deployment(
            "shop",
            3,
            "shop",
            sim::Source::ApiAndVolume,
            json!({}),
            json!({FAULT: "crash-loop", FAULT_ON_APPLIED_REVISION: "3"}),
        ),
    )
    .await;
    until(&env, "shop", "3/3 consumers on revision 1", all_on(1)).await;
    set_level(&env, "two").await;
    until(&env, "shop", "3/3 consumers on revision 2", all_on(2)).await;

    set_level(&env, "three").await;
    // The crash loop is rolled back so fast (the operator watches the pods) that a poll may
    // never see it: the rollback is waited for, and the crash is proven by its traces.
    until(&env, "shop", "the automatic rollback to revision 2", |s| {
        s.rollback
            .as_ref()
            .filter(|r| r.automatic && r.target_revision == 2)
            .map(|_| ())
    })
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    eventually(30, "the rollback to be projected", || async {
        let cm = cms.get("shop").await.ok()?;
        (cm.annotations().get("hotconf.dev/revision")? == "2").then_some(())
    })
    .await;
    // The agents re-apply revision 2, the pods recover and count as updated again.
    let s = until(&env, "shop", "3/3 consumers back on revision 2", all_on(2)).await;
    let consumers = s.consumers.clone().unwrap();
    assert_eq!((consumers.failed, consumers.failures.len()), (0, 0));
    let pin = s.rollback.clone().unwrap();
    assert!(pin.automatic);
    assert_eq!((pin.target_revision, s.latest_revision), (2, Some(3)));
    let rolled = condition(&s, "RolledBack").unwrap();
    assert_eq!(rolled.reason, "AutoRolledBack");
    assert!(
        rolled.message.contains("crash-looping"),
        "{}",
        rolled.message
    );
    let notes = eventually(20, "the AutoRolledBack event", || async {
        let notes = warning_events(&env, "AutoRolledBack").await;
        (!notes.is_empty()).then_some(notes)
    })
    .await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("crash-looping"), "{notes:?}");
    // The metric counts it as automatic, and only once.
    let rollbacks = |automatic: &str| {
        let admin = admin.clone();
        let series = format!(r#"kind="RuntimeConfig",automatic="{automatic}""#);
        async move {
            let text = common::http_get(&admin, "/metrics").await?;
            common::sample(&text, &format!("hotconf_rollbacks_total{{{series}}}"))
        }
    };
    assert_eq!(rollbacks("true").await, Some(1.0));
    assert_eq!(rollbacks("false").await, Some(0.0));
    let pods = eventually(60, "every pod Ready on revision 2", || async {
        let pods = sim::pods(&env, "app=shop").await;
        (pods.len() == 3
            && pods
                .iter()
                .all(|p| sim::ready(p) && sim::applied_cleanly(p, 2)))
        .then_some(pods)
    })
    .await;
    for p in &pods {
        let text = std::fs::read_to_string(
            sim.volume_dir(&env.ns, &p.name_any(), "app-config")
                .unwrap()
                .join("config.yaml"),
        )
        .unwrap();
        assert!(text.contains("level: two"), "{text}");
    }
    // Revision 3 is in history, not applied by all.
    let three = s.history.iter().find(|h| h.revision == 3).unwrap();
    assert!(!three.applied_by_all);
    // The apps did crash under revision 3 (their restart counts and last terminations say so).
    let crashed = pods.iter().any(|p| {
        p.status
            .iter()
            .flat_map(|s| s.container_statuses.iter().flatten())
            .any(|c| {
                c.name == "app"
                    && c.last_state
                        .as_ref()
                        .and_then(|l| l.terminated.as_ref())
                        .is_some()
            })
    });
    assert!(crashed, "no app container ever terminated: {pods:?}");
    sim.stop().await;
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
