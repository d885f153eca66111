//! The objects of a chaos run and the writers that mutate them: RuntimeConfigs (some reading a
//! Secret through `valuesFrom`) and PoolBudgets; valid changes, invalid ones (each carrying a
//! marker that must never reach a ConfigMap), rollback pins and their release, Secret
//! rotations.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use serde::Serialize;
use serde_json::{Value, json};

use crate::crd::{PoolBudget, RuntimeConfig, names};
use crate::dev::error::Error;
use crate::kinds::ConfigResource;

/// The field manager of the writers.
pub const WRITER: &str = "chaos-writer";

/// One object of the run.
#[derive(Clone, Debug)]
pub struct Object {
    /// RuntimeConfig (true) or PoolBudget.
    pub runtime_config: bool,
    /// Its name (also its ConfigMap's).
    pub name: String,
    /// The Secret its `valuesFrom` reads, if any.
    pub secret: Option<String>,
}

/// The objects of a run of `count` objects: half of each kind, every other RuntimeConfig with
/// a `valuesFrom` Secret.
pub fn objects(count: usize) -> Vec<Object> {
    (0..count)
        .map(|i| {
            let runtime_config = i % 2 == 0;
            let name = if runtime_config {
                format!("rtc-{i:04}")
            } else {
                format!("pb-{i:04}")
            };
            Object {
                runtime_config,
                secret: (i % 4 == 0).then(|| format!("{name}-db")),
                name,
            }
        })
        .collect()
}

fn runtime_config_body(o: &Object, v: i64) -> Value {
    let mut schema = json!({
        "v": {"type": "integer", "minimum": 0, "maximum": 1_000_000_000},
        "mode": {"type": "string", "enum": ["A", "B"], "default": "A"},
    });
    let mut spec = json!({
        "values": {"v": v},
        "target": {"configMapName": o.name, "format": "json"},
        "revisionHistoryLimit": 10,
    });
    if let Some(secret) = &o.secret {
        schema["db_password"] = json!({"type": "string", "sensitive": true});
        spec["valuesFrom"] =
            json!([{"key": "db_password", "secretKeyRef": {"name": secret, "key": "password"}}]);
    }
    spec["schema"] = schema;
    json!({"apiVersion": "hotconf.dev/v1alpha1", "kind": "RuntimeConfig",
           "metadata": {"name": o.name}, "spec": spec})
}

fn pool_budget_body(o: &Object, entries: i64) -> Value {
    json!({"apiVersion": "hotconf.dev/v1alpha1", "kind": "PoolBudget",
    "metadata": {"name": o.name},
    "spec": {
        "pools": {"cache": {"maxEntries": entries}},
        "target": {"configMapName": o.name, "format": "json"},
        "revisionHistoryLimit": 10,
    }})
}

/// Creates a PoolBudget outside the run's objects (the stall fault's probe: its ConfigMap
/// appears once the operator sees it).
pub async fn create_probe(client: &Client, ns: &str, name: &str) -> Result<(), Error> {
    let probe = Object {
        runtime_config: false,
        secret: None,
        name: name.to_string(),
    };
    let body: PoolBudget =
        serde_json::from_value(pool_budget_body(&probe, 1)).expect("a PoolBudget");
    let post = PostParams {
        field_manager: Some(WRITER.into()),
        ..Default::default()
    };
    Api::<PoolBudget>::namespaced(client.clone(), ns)
        .create(&post, &body)
        .await?;
    Ok(())
}

/// Creates every object (and its Secret) in `ns`.
pub async fn create(client: &Client, ns: &str, objects: &[Object]) -> Result<(), Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let rtcs: Api<RuntimeConfig> = Api::namespaced(client.clone(), ns);
    let pbs: Api<PoolBudget> = Api::namespaced(client.clone(), ns);
    let post = PostParams {
        field_manager: Some(WRITER.into()),
        ..Default::default()
    };
    for o in objects {
        if let Some(secret) = &o.secret {
            let s: Secret = serde_json::from_value(json!({
                "metadata": {"name": secret}, "stringData": {"password": "p-0"}}))
            .expect("a Secret");
            secrets.create(&post, &s).await?;
        }
        if o.runtime_config {
            let body = serde_json::from_value(runtime_config_body(o, 0)).expect("a RuntimeConfig");
            rtcs.create(&post, &body).await?;
        } else {
            let body = serde_json::from_value(pool_budget_body(o, 1)).expect("a PoolBudget");
            pbs.create(&post, &body).await?;
        }
    }
    Ok(())
}

/// What the writers did.
#[derive(Debug, Default, Serialize)]
pub struct Mutations {
    /// Valid spec changes.
    pub valid: AtomicUsize,
    /// Invalid spec changes the API server stored (the operator must refuse them).
    pub invalid_stored: AtomicUsize,
    /// Invalid spec changes the API server refused (schema or CEL rules).
    pub invalid_refused: AtomicUsize,
    /// `hotconf.dev/rollback-to` set.
    pub rollbacks: AtomicUsize,
    /// `hotconf.dev/rollback-to` removed.
    pub releases: AtomicUsize,
    /// `valuesFrom` Secrets rotated.
    pub rotations: AtomicUsize,
    /// Requests that failed and were tried again (the API server restarting, ...).
    pub retried: AtomicUsize,
    /// Mutations given up after every retry failed.
    pub failed: AtomicUsize,
}

impl Mutations {
    /// Every mutation that was made (or refused).
    pub fn total(&self) -> usize {
        [
            &self.valid,
            &self.invalid_stored,
            &self.invalid_refused,
            &self.rollbacks,
            &self.releases,
            &self.rotations,
        ]
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .sum()
    }
}

/// A writer's plan: how many mutations, at what pace.
#[derive(Clone, Debug)]
pub struct WriterPlan {
    /// Mutations this writer makes.
    pub count: usize,
    /// Time between two of its mutations.
    pub interval: Duration,
    /// Seed of its choices.
    pub seed: u64,
}

enum Op {
    Valid,
    Invalid,
    Rollback,
    Release,
    Rotate,
}

fn choose(rng: &mut StdRng, o: &Object) -> Op {
    match rng.random_range(0..100) {
        0..70 => Op::Valid,
        70..80 => Op::Invalid,
        80..88 => Op::Rollback,
        88..95 => Op::Release,
        _ if o.secret.is_some() => Op::Rotate,
        _ => Op::Valid,
    }
}

/// Runs one writer: `plan.count` mutations over `objects`, paced, each retried (up to ~20 s)
/// while the API server is unreachable.
pub async fn write(
    client: Client,
    ns: String,
    objects: Arc<Vec<Object>>,
    plan: WriterPlan,
    seq: Arc<AtomicU64>,
    done: Arc<Mutations>,
) {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let mut next = Instant::now();
    for _ in 0..plan.count {
        next += plan.interval;
        let o = &objects[rng.random_range(0..objects.len())];
        let op = choose(&mut rng, o);
        let n = seq.fetch_add(1, Ordering::Relaxed) as i64 + 1;
        let pick = rng.random_range(0..100u32);
        let mut attempts = 0;
        loop {
            match mutate(&client, &ns, o, &op, n, pick).await {
                Ok(counted) => {
                    done.counter(counted).fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(_) if attempts < 100 => {
                    attempts += 1;
                    done.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => {
                    done.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        tokio::time::sleep_until(next.into()).await;
    }
}

// Which counter a mutation counts in.
#[derive(Clone, Copy)]
enum Counted {
    Valid,
    InvalidStored,
    InvalidRefused,
    Rollback,
    Release,
    Rotation,
}

impl Mutations {
    fn counter(&self, c: Counted) -> &AtomicUsize {
        match c {
            Counted::Valid => &self.valid,
            Counted::InvalidStored => &self.invalid_stored,
            Counted::InvalidRefused => &self.invalid_refused,
            Counted::Rollback => &self.rollbacks,
            Counted::Release => &self.releases,
            Counted::Rotation => &self.rotations,
        }
    }
}

async fn patch(client: &Client, ns: &str, o: &Object, body: Value) -> Result<(), kube::Error> {
    let params = PatchParams {
        field_manager: Some(WRITER.into()),
        ..Default::default()
    };
    if o.runtime_config {
        Api::<RuntimeConfig>::namespaced(client.clone(), ns)
            .patch(&o.name, &params, &Patch::Merge(body))
            .await
            .map(|_| ())
    } else {
        Api::<PoolBudget>::namespaced(client.clone(), ns)
            .patch(&o.name, &params, &Patch::Merge(body))
            .await
            .map(|_| ())
    }
}

async fn mutate(
    client: &Client,
    ns: &str,
    o: &Object,
    op: &Op,
    n: i64,
    pick: u32,
) -> Result<Counted, kube::Error> {
    let spec_change = |value: i64| {
        if o.runtime_config {
            json!({"spec": {"values": {"v": value}}})
        } else {
            json!({"spec": {"pools": {"cache": {"maxEntries": value}}}})
        }
    };
    match op {
        Op::Valid => {
            let value = if o.runtime_config {
                n
            } else {
                n % 10_000_000 + 1
            };
            patch(client, ns, o, spec_change(value)).await?;
            Ok(Counted::Valid)
        }
        Op::Invalid => {
            let value = if o.runtime_config { -n } else { 0 };
            match patch(client, ns, o, spec_change(value)).await {
                Ok(()) => Ok(Counted::InvalidStored),
                Err(kube::Error::Api(s)) if s.code == 422 => Ok(Counted::InvalidRefused),
                Err(e) => Err(e),
            }
        }
        Op::Rollback => {
            let history: Vec<i64> = if o.runtime_config {
                history(
                    Api::<RuntimeConfig>::namespaced(client.clone(), ns)
                        .get(&o.name)
                        .await?,
                )
            } else {
                history(
                    Api::<PoolBudget>::namespaced(client.clone(), ns)
                        .get(&o.name)
                        .await?,
                )
            };
            let to = match (pick, history.as_slice()) {
                (0..10, _) | (_, []) => "999999".to_string(),
                (10..40, _) => "previous".to_string(),
                (_, h) => h[pick as usize % h.len()].to_string(),
            };
            let body = json!({"metadata": {"annotations": {names::ROLLBACK_TO: to}}});
            patch(client, ns, o, body).await?;
            Ok(Counted::Rollback)
        }
        Op::Release => {
            let body = json!({"metadata": {"annotations": {names::ROLLBACK_TO: null}}});
            patch(client, ns, o, body).await?;
            Ok(Counted::Release)
        }
        Op::Rotate => {
            let params = PatchParams {
                field_manager: Some(WRITER.into()),
                ..Default::default()
            };
            let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
            let name = o.secret.as_deref().unwrap_or_default();
            secrets
                .patch(
                    name,
                    &params,
                    &Patch::Merge(json!({"stringData": {"password": format!("p-{n}")}})),
                )
                .await?;
            Ok(Counted::Rotation)
        }
    }
}

fn history<K: ConfigResource>(obj: K) -> Vec<i64> {
    obj.config_status()
        .map(|s| s.history.iter().map(|h| h.revision).collect())
        .unwrap_or_default()
}
