//! Sharding across replicas with the protocol of kubernetes-controller-sharding: three operator
//! processes, each a shard of one ControllerRing, over 300 RuntimeConfigs. The test plays the
//! sharder (which hotconf does not package): it assigns objects by the shard label, drains some
//! to another shard and waits for the acknowledgement, and reassigns a killed shard's objects.
//! The audit log says who wrote what.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{TestEnv, eventually};
use futures::{StreamExt as _, TryStreamExt as _};
use hotconf::crd::RuntimeConfig;
use hotconf::dev::control_plane::AuditEntry;
use hotconf::sharding::{RING_LABEL, Shard};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt as _};
use serde_json::json;

const RING: &str = "hotconf";
const SHARDS: [&str; 3] = ["shard-a", "shard-b", "shard-c"];
const OBJECTS: usize = 300;

fn user(env: &TestEnv, shard: &str) -> String {
    format!("system:serviceaccount:{}:{shard}", env.ns)
}

fn start_shard(env: &TestEnv, shard: &str) -> hotconf::dev::control_plane::Process {
    env.start_operator_with(
        &user(env, shard),
        &[
            format!("--controller-ring={RING}"),
            format!("--lease-namespace={}", env.ns),
            format!("--lease-identity={shard}"),
            "--lease-duration=3".into(),
            "--lease-grace=1".into(),
            "--consumers=false".into(),
        ],
    )
}

fn name(i: usize) -> String {
    format!("cfg-{i:03}")
}

// Who wrote each object's ConfigMap or status (the ack of a drain is a write to the CR
// itself, counted apart), in the test namespace, from entry `since` of each shard's log on.
fn writers(env: &TestEnv, since: &BTreeMap<&str, usize>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for shard in SHARDS {
        let entries: Vec<AuditEntry> = env.plane.audit_writes(&user(env, shard));
        for e in entries.iter().skip(since.get(shard).copied().unwrap_or(0)) {
            let projection = e.resource == "configmaps"
                || (e.resource == "runtimeconfigs" && e.subresource == "status");
            if e.namespace == env.ns && projection && e.code < 300 {
                out.entry(e.name.clone())
                    .or_default()
                    .insert(shard.to_string());
            }
        }
    }
    out
}

fn audit_lengths(env: &TestEnv) -> BTreeMap<&'static str, usize> {
    SHARDS
        .iter()
        .map(|s| (*s, env.plane.audit_writes(&user(env, s)).len()))
        .collect()
}

// The ConfigMap writes to each of `names` from entry `since` on, per shard.
fn config_map_writes(
    env: &TestEnv,
    since: &BTreeMap<&str, usize>,
    names: &BTreeSet<String>,
) -> BTreeMap<(String, String), usize> {
    let mut out = BTreeMap::new();
    for shard in SHARDS {
        let entries = env.plane.audit_writes(&user(env, shard));
        for e in entries.iter().skip(since[shard]) {
            if e.namespace == env.ns && e.resource == "configmaps" && names.contains(&e.name) {
                *out.entry((e.name.clone(), shard.to_string())).or_insert(0) += 1;
            }
        }
    }
    out
}

// Every object of `names` Ready at `revision`.
async fn all_ready(env: &TestEnv, names: &BTreeSet<String>, revision: i64) {
    let api: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    eventually(
        180,
        &format!("{} objects at revision {revision}", names.len()),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            let ready = list
                .items
                .iter()
                .filter(|o| names.contains(&o.name_any()))
                .filter(|o| {
                    o.status.as_ref().is_some_and(|s| {
                        s.current_revision == Some(revision)
                            && s.observed_generation == o.metadata.generation
                            && s.conditions
                                .iter()
                                .any(|c| c.type_ == "Ready" && c.status == "True")
                    })
                })
                .count();
            (ready == names.len()).then_some(())
        },
    )
    .await;
}

async fn label(env: &TestEnv, object: &str, labels: serde_json::Value) {
    Api::<RuntimeConfig>::namespaced(env.client.clone(), &env.ns)
        .patch(
            object,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": labels}})),
        )
        .await
        .unwrap();
}

async fn change(env: &TestEnv, names: &BTreeSet<String>, value: i64) {
    let api: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    futures::stream::iter(names.iter().cloned())
        .map(|n| {
            let api = api.clone();
            async move {
                api.patch(
                    &n,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"values": {"n": value}}})),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
}

/// Every object is reconciled by exactly the shard it is assigned to; a drained object is
/// acknowledged (both labels removed) and, handed to another shard, written by that one alone,
/// once per change; a killed shard's objects are picked up once the sharder reassigns them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_divide_the_objects_and_hand_them_over_cleanly() {
    let env = TestEnv::new("shards").await;
    let shard = |name: &str| Shard::new(RING, name).unwrap();
    let mut binding = vec![
        "create",
        "rolebinding",
        "shards",
        "--clusterrole=cluster-admin",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    binding.extend(
        SHARDS
            .iter()
            .map(|s| format!("--serviceaccount={}:{s}", env.ns)),
    );
    env.kubectl(&binding.iter().map(String::as_str).collect::<Vec<_>>());
    let mut processes: BTreeMap<&str, _> =
        SHARDS.iter().map(|s| (*s, start_shard(&env, s))).collect();

    // Each announces itself with its own Lease, labelled for the ring.
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    eventually(30, "three shard Leases", || async {
        let list = leases
            .list(&ListParams::default().labels(&format!("{RING_LABEL}={RING}")))
            .await
            .ok()?;
        let held: BTreeSet<String> = list
            .items
            .iter()
            .filter(|l| {
                l.spec.as_ref().and_then(|s| s.holder_identity.as_deref())
                    == l.metadata.name.as_deref()
            })
            .map(|l| l.name_any())
            .collect();
        (held == SHARDS.iter().map(|s| s.to_string()).collect()).then_some(())
    })
    .await;

    // The sharder's webhook assigns each object as it is created.
    let api: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    let assigned = |i: usize| SHARDS[i % SHARDS.len()];
    futures::stream::iter(0..OBJECTS)
        .map(|i| {
            let api = api.clone();
            async move {
                let obj: RuntimeConfig = serde_json::from_value(json!({
                    "apiVersion": "hotconf.dev/v1alpha1",
                    "kind": "RuntimeConfig",
                    "metadata": {"name": name(i), "labels": {shard(assigned(i)).shard_label(): assigned(i)}},
                    "spec": {"values": {"n": 0}},
                }))
                .unwrap();
                api.create(&PostParams::default(), &obj).await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    let every: BTreeSet<String> = (0..OBJECTS).map(name).collect();
    all_ready(&env, &every, 1).await;
    let start = BTreeMap::new();
    let by = writers(&env, &start);
    for i in 0..OBJECTS {
        assert_eq!(
            by.get(&name(i)).cloned().unwrap_or_default(),
            BTreeSet::from([assigned(i).to_string()]),
            "{}",
            name(i)
        );
    }

    // Rebalancing: 30 of shard-a's objects are drained, acknowledged, and given to shard-b.
    let moved: BTreeSet<String> = (0..OBJECTS)
        .filter(|i| assigned(*i) == "shard-a")
        .take(30)
        .map(name)
        .collect();
    let a = shard("shard-a");
    for n in &moved {
        label(&env, n, json!({a.drain_label(): "true"})).await;
    }
    eventually(30, "shard-a to acknowledge every drain", || async {
        let list = api.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .filter(|o| moved.contains(&o.name_any()))
            .all(|o| {
                let labels = o.labels();
                !labels.contains_key(&a.shard_label()) && !labels.contains_key(&a.drain_label())
            })
            .then_some(())
    })
    .await;
    let acked = audit_lengths(&env);
    let b = shard("shard-b");
    for n in &moved {
        label(&env, n, json!({b.shard_label(): "shard-b"})).await;
    }
    change(&env, &moved, 1).await;
    all_ready(&env, &moved, 2).await;
    let after = writers(&env, &acked);
    for n in &moved {
        assert_eq!(
            after.get(n).cloned().unwrap_or_default(),
            BTreeSet::from(["shard-b".to_string()]),
            "{n} after its move"
        );
    }
    // One change, one ConfigMap write: nobody wrote it twice in the handover.
    let cm_writes = config_map_writes(&env, &acked, &moved);
    assert!(
        moved
            .iter()
            .all(|n| cm_writes.get(&(n.clone(), "shard-b".into())) == Some(&1)),
        "{cm_writes:?}"
    );

    // shard-c is killed; the sharder gives its objects to the others.
    processes.get_mut("shard-c").unwrap().kill();
    let killed = audit_lengths(&env);
    let orphans: Vec<usize> = (0..OBJECTS).filter(|i| assigned(*i) == "shard-c").collect();
    let c = shard("shard-c");
    for (k, i) in orphans.iter().enumerate() {
        let to = if k % 2 == 0 { "shard-a" } else { "shard-b" };
        label(&env, &name(*i), json!({c.shard_label(): to})).await;
    }
    let orphan_names: BTreeSet<String> = orphans.iter().copied().map(name).collect();
    change(&env, &orphan_names, 1).await;
    all_ready(&env, &orphan_names, 2).await;
    let after = writers(&env, &killed);
    for (k, i) in orphans.iter().enumerate() {
        let to = if k % 2 == 0 { "shard-a" } else { "shard-b" };
        assert_eq!(
            after.get(&name(*i)).cloned().unwrap_or_default(),
            BTreeSet::from([to.to_string()]),
            "{} after shard-c died",
            name(*i)
        );
    }
    drop(processes);
}
