//! The fleet, on simulated pods that run the real agent (the release binary when built):
//! 1. propagation: a CR change → every pod of a 50-pod fleet reports it applied (its
//!    `hotconf.dev/applied` annotation, seen by a watch), per round the last pod and every pod;
//!    the floor, in the same run, is a plain ConfigMap patch → its watch event;
//! 2. rollback: a revision whose pods refuse the reload or crash-loop after applying it → the
//!    rollback projected, from the pod signal visible in the API.
//!
//! `make bench` runs it; the figures go to stdout and `target/bench/fleet.json`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use hotconf::crd::RuntimeConfig;
use hotconf::dev::control_plane::{ControlPlane, OPERATOR_USER, Options};
use hotconf::dev::sim::workloads::{self, AgentSource};
use hotconf::dev::sim::{FAULT, FAULT_ON_APPLIED_REVISION, SimOptions, Simulator};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::{Value, json};

const FLEET: i32 = 50;
const ROUNDS: usize = 10;
const ROLLBACK_ROUNDS: usize = 6;

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn binary() -> std::path::PathBuf {
    let release = repo().join("target/release/hotconf");
    if release.exists() {
        release
    } else {
        repo().join("target/debug/hotconf")
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn percentiles(mut samples: Vec<f64>) -> Value {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |p: f64| {
        samples
            .get(((p / 100.0) * (samples.len().max(1) - 1) as f64).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    json!({"n": samples.len(), "p50": at(50.0), "p99": at(99.0), "max": samples.last().copied().unwrap_or(f64::NAN)})
}

async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A pod's report: revision, whether with an error, and when it was first seen.
type Report = (Option<i64>, bool, Instant);

/// A pod getting hurt by a revision: which revision, how, and when a watch first saw it.
type Signal = (i64, &'static str, Instant);

/// What the pods' agents report, and the pods' signals of harm, as a watch sees them.
#[derive(Clone, Default)]
struct Reports(Arc<Mutex<HashMap<String, Report>>>, Arc<Mutex<Vec<Signal>>>);

impl Reports {
    fn watch(client: &Client, ns: &str) -> Reports {
        let reports = Reports::default();
        let (map, signals) = (reports.0.clone(), reports.1.clone());
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        tokio::spawn(async move {
            let mut events =
                std::pin::pin!(watcher(pods, watcher::Config::default()).applied_objects());
            while let Some(Ok(pod)) = events.next().await {
                // The pod as the operator reads it: the agent's report and the pod's health.
                let consumer = hotconf::rollout::Consumer::from_pod(&pod);
                let report = (consumer.revision, consumer.error.is_some());
                let signal = match (consumer.failed_revision, report.0) {
                    (Some(failed), _) => Some((failed, "refused")),
                    (None, Some(revision)) if consumer.health.crash_looping => {
                        Some((revision, "crash-loop"))
                    }
                    _ => None,
                };
                if let Some((revision, how)) = signal {
                    let mut signals = signals.lock().unwrap();
                    if !signals.iter().any(|(r, h, _)| *r == revision && *h == how) {
                        signals.push((revision, how, Instant::now()));
                    }
                }
                let mut map = map.lock().unwrap();
                let name = pod.name_any();
                if pod.metadata.deletion_timestamp.is_some() {
                    map.remove(&name);
                } else if map.get(&name).map(|(r, e, _)| (*r, *e)) != Some(report) {
                    map.insert(name, (report.0, report.1, Instant::now()));
                }
            }
        });
        reports
    }

    /// When a pod was first seen hurt by `revision`.
    fn hurt_by(&self, revision: i64) -> Option<Instant> {
        self.1
            .lock()
            .unwrap()
            .iter()
            .filter(|(r, _, _)| *r == revision)
            .map(|(_, _, t)| *t)
            .min()
    }

    /// When each pod whose name starts with `prefix` first reported `revision`, once all `n` did.
    fn all_at(&self, prefix: &str, revision: i64, n: usize) -> Option<Vec<Instant>> {
        let map = self.0.lock().unwrap();
        let at: Vec<Instant> = map
            .iter()
            .filter(|(name, _)| name.starts_with(prefix))
            .filter(|(_, (r, e, _))| *r == Some(revision) && !e)
            .map(|(_, (_, _, t))| *t)
            .collect();
        (at.len() == n).then_some(at)
    }
}

async fn latest(rtcs: &Api<RuntimeConfig>, name: &str) -> i64 {
    rtcs.get(name)
        .await
        .unwrap()
        .status
        .and_then(|s| s.latest_revision)
        .unwrap_or(0)
}

async fn set_level(rtcs: &Api<RuntimeConfig>, name: &str, level: &str) {
    rtcs.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"values": {"level": level}}})),
    )
    .await
    .unwrap();
}

fn config(name: &str, selector: &str) -> RuntimeConfig {
    serde_json::from_value(json!({
        "apiVersion": "hotconf.dev/v1alpha1", "kind": "RuntimeConfig", "metadata": {"name": name},
        "spec": {"values": {"level": "start"}, "target": {"fileName": "config.yaml"},
                 "rollout": {"consumerSelector": {"app": selector},
                             "autoRollback": {"enabled": true, "maxFailures": 1}}}
    }))
    .unwrap()
}

async fn propagation(client: &Client, ns: &str, reports: &Reports) -> Value {
    let rtcs: Api<RuntimeConfig> = Api::namespaced(client.clone(), ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    // The floor: a plain ConfigMap patch, to its watch event.
    let floor_cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "floor"}, "data": {"v": "0"}})).unwrap();
    cms.create(&PostParams::default(), &floor_cm).await.unwrap();
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    {
        let seen = seen.clone();
        let cms = cms.clone();
        tokio::spawn(async move {
            let config = watcher::Config::default().fields("metadata.name=floor");
            let mut events = std::pin::pin!(watcher(cms, config).applied_objects());
            while let Some(Ok(cm)) = events.next().await {
                let v = cm
                    .data
                    .and_then(|d| d.get("v").cloned())
                    .unwrap_or_default();
                seen.lock().unwrap().entry(v).or_insert_with(Instant::now);
            }
        });
    }
    let prefix = "fleet-";
    let mut last = Vec::new();
    let mut every = Vec::new();
    let mut floor = Vec::new();
    for round in 0..ROUNDS {
        let started = Instant::now();
        set_level(&rtcs, "fleet", &format!("round-{round}")).await;
        let revision = latest(&rtcs, "fleet").await.max(1);
        let revision = eventually(30, "the new revision", || async {
            let r = latest(&rtcs, "fleet").await;
            (r >= revision && r == round as i64 + 2).then_some(r)
        })
        .await;
        let at = eventually(60, "every pod on the new revision", || async {
            reports.all_at(prefix, revision, FLEET as usize)
        })
        .await;
        let ms: Vec<f64> = at
            .iter()
            .map(|t| t.duration_since(started).as_secs_f64() * 1000.0)
            .collect();
        last.push(ms.iter().cloned().fold(0.0, f64::max));
        every.extend(ms);
        // The floor, right after.
        let v = (round + 1).to_string();
        let sent = Instant::now();
        cms.patch(
            "floor",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"v": v}})),
        )
        .await
        .unwrap();
        let got = eventually(30, "the floor's watch event", || async {
            seen.lock().unwrap().get(&v).copied()
        })
        .await;
        floor.push(got.saturating_duration_since(sent).as_secs_f64() * 1000.0);
    }
    json!({
        "pods": FLEET, "rounds": ROUNDS,
        "cr_change_to_last_pod_applied_ms": percentiles(last),
        "cr_change_to_each_pod_applied_ms": percentiles(every),
        "floor_configmap_patch_to_watch_event_ms": percentiles(floor),
        "kubelet_volume_delay_s": "60-120 (what a volume-only consumer or a restart waits for)",
    })
}

async fn rollback(client: &Client, ns: &str, reports: &Reports) -> Value {
    let rtcs: Api<RuntimeConfig> = Api::namespaced(client.clone(), ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut refused = Vec::new();
    let mut crashed = Vec::new();
    for round in 0..ROLLBACK_ROUNDS {
        // A good revision (which also releases the last round's pin), applied by all three.
        let good = latest(&rtcs, "shop").await + 1;
        set_level(&rtcs, "shop", &format!("good-{round}")).await;
        eventually(60, "three pods on the good revision", || async {
            let s = rtcs.get("shop").await.ok()?.status?;
            let c = s.consumers?;
            (s.rollback.is_none()
                && s.current_revision == Some(good)
                && c.revision == good
                && c.updated == 3
                && c.selected == 3)
                .then_some(())
        })
        .await;
        // The next revision hurts them: the app refuses it, or crash-loops once it has it.
        let bad = good + 1;
        let fault = if round % 2 == 0 {
            "reload-fails"
        } else {
            "crash-loop"
        };
        for pod in pods.list(&Default::default()).await.unwrap().items {
            if pod.name_any().starts_with("shop-") && pod.metadata.deletion_timestamp.is_none() {
                pods.patch(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {
                        FAULT: fault, FAULT_ON_APPLIED_REVISION: bad.to_string()}}})),
                )
                .await
                .unwrap();
            }
        }
        set_level(&rtcs, "shop", &format!("bad-{round}")).await;
        let signal = eventually(60, "a pod hurt by the bad revision", || async {
            reports.hurt_by(bad)
        })
        .await;
        let projected = eventually(60, "the rollback projected", || async {
            let cm = cms.get("shop").await.ok()?;
            (cm.annotations().get("hotconf.dev/revision")? == &good.to_string()).then(Instant::now)
        })
        .await;
        let ms = projected.saturating_duration_since(signal).as_secs_f64() * 1000.0;
        if fault == "crash-loop" {
            crashed.push(ms)
        } else {
            refused.push(ms)
        }
        eventually(60, "the pods back on the good revision", || async {
            reports.all_at("shop-", good, 3)
        })
        .await;
    }
    let mut all = refused.clone();
    all.extend(crashed.iter().copied());
    json!({
        "rounds": ROLLBACK_ROUNDS,
        "signal_to_rollback_projected_ms": percentiles(all),
        "refused_reload_ms": percentiles(refused),
        "crash_loop_ms": percentiles(crashed),
        "note": "from the pod signal (a refusal or CrashLoopBackOff) seen by the benchmark's pod watch to the rolled-back ConfigMap seen by a GET polled every 10 ms",
    })
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let plane = ControlPlane::start(Options {
            crds: vec![repo().join("crds")],
            log_dir: Some(repo().join("target/bench/logs-fleet")),
            ..Options::default()
        })
        .await
        .expect("control plane");
        let client = plane.client().await.unwrap();
        let ns = "bench-fleet";
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
        let _operator = plane
            .spawn(
                "hotconf-operator",
                &binary(),
                &["operator".into(), format!("--namespaces={ns}"), format!("--admin-addr=127.0.0.1:{}", free_port())],
                OPERATOR_USER,
                &plane.log_dir().join("bench-operator-fleet.log"),
            )
            .unwrap();
        let sim = Simulator::start(
            client.clone(),
            SimOptions {
                node_name: "bench-fleet".into(),
                namespaces: vec![ns.into()],
                start_delay: Duration::from_millis(200),
                crash_period: Duration::from_secs(1),
                agent_binary: Some(binary()),
                kubeconfig: Some(plane.kubeconfig_path().to_path_buf()),
                root: Some(repo().join("target/bench/logs-fleet/sim")),
                // A kubelet-like volume delay: the API is what the agents follow.
                ..SimOptions::default()
            },
        )
        .await
        .expect("the simulator");
        let reports = Reports::watch(&client, ns);
        let rtcs: Api<RuntimeConfig> = Api::namespaced(client.clone(), ns);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
        for doc in workloads::agent_rbac_yaml(&["fleet", "shop"]).split("\n---\n") {
            let obj: kube::api::DynamicObject = serde_yaml::from_str(doc).unwrap();
            let gvk = kube::core::GroupVersionKind::try_from(obj.types.as_ref().unwrap()).unwrap();
            let (ar, _) = kube::discovery::pinned_kind(&client, &gvk).await.unwrap();
            Api::<kube::api::DynamicObject>::namespaced_with(client.clone(), ns, &ar)
                .patch(&obj.name_any(), &PatchParams::apply("bench").force(), &Patch::Apply(&obj))
                .await
                .unwrap();
        }
        for (name, replicas) in [("fleet", FLEET), ("shop", 3)] {
            rtcs.create(&PostParams::default(), &config(name, name)).await.unwrap();
            let d = workloads::agent_deployment(name, replicas, name, AgentSource::ApiAndVolume, json!({}), json!({}));
            deployments.create(&PostParams::default(), &d).await.unwrap();
        }
        eventually(300, "the fleet on revision 1", || async {
            reports.all_at("fleet-", 1, FLEET as usize)
        })
        .await;
        let fleet = propagation(&client, ns, &reports).await;
        let rollback = rollback(&client, ns, &reports).await;
        sim.stop().await;

        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let last = &fleet["cr_change_to_last_pod_applied_ms"];
        let each = &fleet["cr_change_to_each_pod_applied_ms"];
        let floor = &fleet["floor_configmap_patch_to_watch_event_ms"];
        let rb = &rollback["signal_to_rollback_projected_ms"];
        println!("\nfleet on simulated pods with real agents ({} binary)", if binary().ends_with("release/hotconf") { "release" } else { "debug" });
        println!("| figure | p50 | p99 | max | floor / goal |");
        println!("|---|---|---|---|---|");
        println!(
            "| CR change -> all {FLEET} pods applied ({ROUNDS} rounds) | {:.0} ms | {:.0} ms | {:.0} ms | goal p99 <= 2000 ms; kubelet volume delay 60-120 s |",
            f(&last["p50"]), f(&last["p99"]), f(&last["max"])
        );
        println!(
            "| CR change -> each pod applied ({} samples) | {:.0} ms | {:.0} ms | {:.0} ms | floor (ConfigMap patch -> watch event) p99 {:.1} ms |",
            each["n"], f(&each["p50"]), f(&each["p99"]), f(&each["max"]), f(&floor["p99"])
        );
        println!(
            "| pod signal -> rollback projected ({} rounds: refused reload, crash loop) | {:.0} ms | {:.0} ms | {:.0} ms | goal p99 <= 1000 ms |",
            rollback["rounds"], f(&rb["p50"]), f(&rb["p99"]), f(&rb["max"])
        );
        let report = json!({"fleet": fleet, "rollback": rollback, "date": chrono::Utc::now().to_rfc3339()});
        let dir = repo().join("target/bench");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("fleet.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
        println!("written to target/bench/fleet.json");
    });
}
