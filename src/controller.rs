//! The controller: one generic reconciler for both kinds. It reads what a plan needs (the
//! projected ConfigMap and Secret, the Secrets of `valuesFrom`), asks [`reconcile::plan`] what
//! to do, and performs exactly those writes, by server-side apply as field manager `hotconf`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt as _, future::BoxFuture};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions,
    },
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::ObjectRef,
        watcher,
    },
};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::Error;
use crate::crd::{
    ConfigStatus, MANAGER, PoolBudget, RestartTarget, RuntimeConfig, WorkloadKind, names,
};
use crate::document::ResolvedSecret;
use crate::kinds::ConfigResource;
use crate::metrics::{OperatorMetrics, ResultLabels};
use crate::projection::ResolvedTarget;
use crate::reconcile::{self, Observed, Plan};
use crate::rollout;

/// Shared state of the reconcilers.
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Arc<OperatorMetrics>,
    /// Whether this replica may write (it holds the Lease, or election is off).
    pub is_leader: watch::Receiver<bool>,
    // uid → (resourceVersion the write was based on, status written): a reconcile that still
    // sees the object as it was before our own status write uses what we wrote.
    written: Mutex<HashMap<String, (String, ConfigStatus)>>,
}

impl Context {
    /// A context for `client`, reporting Events as `hotconf` (instance: `$POD_NAME` if set).
    pub fn new(
        client: Client,
        metrics: Arc<OperatorMetrics>,
        is_leader: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: "hotconf".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            is_leader,
            written: Mutex::new(HashMap::new()),
        })
    }

    fn leading(&self) -> bool {
        *self.is_leader.borrow()
    }
}

/// What the controllers share with the rest of the process.
#[derive(Clone)]
pub struct Runtime {
    /// Metrics to record into.
    pub metrics: Arc<OperatorMetrics>,
    /// Leadership (always true without leader election).
    pub is_leader: watch::Receiver<bool>,
    /// Set once every watch has listed its objects (`/readyz`).
    pub ready: Arc<AtomicBool>,
}

/// Which namespaces the operator watches: all, or a list.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    /// Empty: all namespaces.
    pub namespaces: Vec<String>,
}

impl Scope {
    fn apis<K: ConfigResource>(&self, client: &Client) -> Vec<Api<K>> {
        if self.namespaces.is_empty() {
            vec![Api::all(client.clone())]
        } else {
            self.namespaces
                .iter()
                .map(|ns| Api::namespaced(client.clone(), ns))
                .collect()
        }
    }
}

/// Fails with a hint when the CRDs are not installed.
pub async fn check_crds(client: &Client) -> Result<(), Error> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in ["runtimeconfigs.hotconf.dev", "poolbudgets.hotconf.dev"] {
        match crds.get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(Error::CrdsMissing(name.to_string())),
            // Without permission to read CRDs, trying the kind itself is the next best check.
            Err(kube::Error::Api(s)) if s.code == 403 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Runs the controllers for both kinds until `shutdown` resolves.
pub async fn run(
    client: Client,
    scope: Scope,
    runtime: Runtime,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    check_crds(&client).await?;
    let ctx = Context::new(
        client.clone(),
        runtime.metrics.clone(),
        runtime.is_leader.clone(),
    );
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut runs: Vec<BoxFuture<'static, ()>> = Vec::new();
    let mut synced = Vec::new();
    for api in scope.apis::<RuntimeConfig>(&client) {
        let (run, ready) = controller_for(api, client.clone(), ctx.clone(), stop(&tx));
        runs.push(Box::pin(run));
        synced.push(ready);
    }
    for api in scope.apis::<PoolBudget>(&client) {
        let (run, ready) = controller_for(api, client.clone(), ctx.clone(), stop(&tx));
        runs.push(Box::pin(run));
        synced.push(ready);
    }
    // The controllers hold what they need; the Lease can be released once they stop.
    drop(ctx);
    let ready = runtime.ready.clone();
    let readiness = tokio::spawn(async move {
        futures::future::join_all(synced).await;
        ready.store(true, Ordering::Release);
        info!("every watch has synced");
    });
    let trigger = tx.clone();
    tokio::spawn(async move {
        shutdown.await;
        let _ = trigger.send(());
    });
    info!(namespaces = ?scope.namespaces, "hotconf operator started");
    futures::future::join_all(runs).await;
    readiness.abort();
    info!("hotconf operator stopped");
    Ok(())
}

fn stop(
    tx: &tokio::sync::broadcast::Sender<()>,
) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
    let mut rx = tx.subscribe();
    async move {
        let _ = rx.recv().await;
    }
}

// The controller of one kind in one scope, and a future that resolves once its watch has synced.
fn controller_for<K: ConfigResource>(
    api: Api<K>,
    client: Client,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> (
    impl std::future::Future<Output = ()> + Send,
    BoxFuture<'static, ()>,
) {
    let ns = api.resource_url().to_string();
    let namespace = namespace_of(&ns);
    let (cms, secrets): (Api<ConfigMap>, Api<Secret>) = match &namespace {
        Some(n) => (
            Api::namespaced(client.clone(), n),
            Api::namespaced(client.clone(), n),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let owned = watcher::Config::default().labels(&format!(
        "{}=hotconf,{}={}",
        names::MANAGED_BY,
        names::OWNER_KIND,
        K::KIND
    ));
    let controller = Controller::new(api, watcher::Config::default().any_semantic());
    let store = controller.store();
    let synced = controller.store();
    let synced: BoxFuture<'static, ()> = Box::pin(async move {
        // The store's readiness is a one-shot channel that wakes only its latest waiter, and the
        // controller waits on it too: ask again and again rather than wait once.
        while tokio::time::timeout(Duration::from_millis(200), synced.wait_until_ready())
            .await
            .is_err()
        {}
    });
    // A replica that becomes leader reconciles everything: it skipped writes until now.
    let became_leader = futures::stream::unfold(ctx.is_leader.clone(), |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                return Some(((), rx));
            }
        }
    });
    let mut controller = controller
        .owns(cms, owned.clone())
        .owns(secrets.clone(), owned);
    if K::USES_SECRETS {
        // A change to a Secret that a spec reads through valuesFrom reconciles that spec.
        controller = controller.watches(secrets, watcher::Config::default(), move |s: Secret| {
            let (ns, name) = (s.namespace(), s.name_any());
            store
                .state()
                .into_iter()
                .filter(|o| {
                    o.namespace() == ns && o.secret_refs().iter().any(|(_, r)| r.name == name)
                })
                .map(|o| ObjectRef::from_obj(&*o))
                .collect::<Vec<_>>()
        });
    }
    let metrics = ctx.metrics.clone();
    let run = controller
        .reconcile_all_on(became_leader)
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(move |result| {
            let metrics = metrics.clone();
            async move {
                match result {
                    Err(kube::runtime::controller::Error::QueueError(e)) => {
                        metrics
                            .watch_restarts
                            .get_or_create(&OperatorMetrics::kind(K::KIND))
                            .inc();
                        warn!(kind = K::KIND, error = %e, "watch failed; restarting it");
                    }
                    Err(e) => warn!(kind = K::KIND, error = %e, "reconcile failed"),
                    Ok(_) => {}
                }
            }
        });
    (run, synced)
}

fn namespace_of(url: &str) -> Option<String> {
    let mut parts = url.split('/');
    parts.by_ref().find(|p| *p == "namespaces")?;
    parts.next().map(String::from)
}

fn error_policy<K: ConfigResource>(obj: Arc<K>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(kind = K::KIND, name = %obj.name_any(), namespace = ?obj.namespace(), error = %error, label = error.metric_label(), "reconcile error; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// Reads the Secrets of `valuesFrom`; a missing Secret or key is a reason, not an error.
async fn resolve_secrets<K: ConfigResource>(
    obj: &K,
    secrets: &Api<Secret>,
) -> Result<BTreeMap<String, Result<ResolvedSecret, String>>, Error> {
    let mut out = BTreeMap::new();
    let mut cache: HashMap<String, Option<Secret>> = HashMap::new();
    for (key, r) in obj.secret_refs() {
        if !cache.contains_key(&r.name) {
            cache.insert(r.name.clone(), secrets.get_opt(&r.name).await?);
        }
        let resolved = match &cache[&r.name] {
            None => Err(format!("Secret {:?} not found", r.name)),
            Some(s) => {
                let from_data = s.data.as_ref().and_then(|d| d.get(&r.key)).map(|b| {
                    String::from_utf8(b.0.clone())
                        .map_err(|_| format!("key {:?} of Secret {:?} is not UTF-8", r.key, r.name))
                });
                let from_string = s
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&r.key))
                    .map(|v| Ok(v.clone()));
                match from_data.or(from_string) {
                    Some(Ok(value)) => Ok(ResolvedSecret {
                        value,
                        salt: s.uid().unwrap_or_default(),
                    }),
                    Some(Err(e)) => Err(e),
                    None => Err(format!("key {:?} not found in Secret {:?}", r.key, r.name)),
                }
            }
        };
        out.insert(key, resolved);
    }
    Ok(out)
}

async fn reconcile<K: ConfigResource>(obj: Arc<K>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.leading() {
        // A follower keeps its caches warm and writes nothing; it reconciles all on promotion.
        return Ok(Action::await_change());
    }
    let started = std::time::Instant::now();
    let result = reconcile_inner(obj, &ctx).await;
    let kind = OperatorMetrics::kind(K::KIND);
    ctx.metrics
        .reconcile_duration
        .get_or_create(&kind)
        .observe(started.elapsed().as_secs_f64());
    ctx.metrics
        .reconciles
        .get_or_create(&ResultLabels {
            kind: K::KIND.into(),
            result: match &result {
                Ok(_) => "success".into(),
                Err(e) => e.metric_label().into(),
            },
        })
        .inc();
    result
}

async fn reconcile_inner<K: ConfigResource>(obj: Arc<K>, ctx: &Context) -> Result<Action, Error> {
    let ns = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let client = &ctx.client;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);

    let mut obj = (*obj).clone();
    if let (Some(uid), Some(rv)) = (obj.uid(), obj.resource_version()) {
        let written = ctx.written.lock().expect("lock");
        if let Some((based_on, status)) = written.get(&uid)
            && *based_on == rv
        {
            set_status(&mut obj, status.clone());
        }
    }
    let target = ResolvedTarget::resolve(obj.target(), &name);
    let needs_secret = K::USES_SECRETS
        && (!obj.secret_refs().is_empty()
            || obj
                .config_status()
                .and_then(|s| s.projected.as_ref())
                .is_some_and(|p| p.secret.is_some()));
    let observed = Observed {
        config_map: cms.get_opt(&target.name).await?,
        secret: if needs_secret {
            secrets.get_opt(&target.name).await?
        } else {
            None
        },
        secrets: resolve_secrets(&obj, &secrets).await?,
        now: chrono::Utc::now(),
        workloads: workloads(client, &ns, obj.restart_targets()).await?,
        consumers: match obj.rollout().and_then(|r| r.consumer_selector.as_ref()) {
            Some(selector) => Some(consumers(client, &ns, selector).await?),
            None => None,
        },
    };
    let plan = reconcile::plan(&obj, &observed);
    execute(&obj, &plan, ctx, &cms, &secrets).await?;
    Ok(match plan.requeue_after {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    })
}

fn workload_resource(kind: WorkloadKind) -> ApiResource {
    ApiResource {
        group: "apps".into(),
        version: "v1".into(),
        api_version: "apps/v1".into(),
        kind: rollout::kind_name(kind).into(),
        plural: match kind {
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::StatefulSet => "statefulsets",
            WorkloadKind::DaemonSet => "daemonsets",
        }
        .into(),
    }
}

fn label_selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The restart targets as they are now: named ones that exist, and every match of a selector.
async fn workloads(
    client: &Client,
    ns: &str,
    targets: &[RestartTarget],
) -> Result<Vec<rollout::Workload>, Error> {
    let mut out: Vec<rollout::Workload> = Vec::new();
    for target in targets {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &workload_resource(target.kind));
        let found = match (&target.name, &target.selector) {
            (Some(name), _) => api.get_opt(name).await?.into_iter().collect(),
            (None, Some(selector)) => {
                api.list(&ListParams::default().labels(&label_selector(selector)))
                    .await?
                    .items
            }
            (None, None) => Vec::new(),
        };
        for o in found {
            let name = o.name_any();
            if out.iter().any(|w| w.kind == target.kind && w.name == name) {
                continue;
            }
            let restart_revision = o
                .data
                .pointer("/spec/template/metadata/annotations")
                .and_then(|a| a.get(RESTART_REVISION))
                .and_then(Value::as_str)
                .and_then(|r| r.parse().ok());
            out.push(rollout::Workload {
                kind: target.kind,
                name,
                generation: o.metadata.generation.unwrap_or(0),
                observed_generation: o
                    .data
                    .pointer("/status/observedGeneration")
                    .and_then(Value::as_i64)
                    .unwrap_or(0),
                restart_revision,
            });
        }
    }
    Ok(out)
}

/// The consumer pods' reports (metadata only).
async fn consumers(
    client: &Client,
    ns: &str,
    selector: &BTreeMap<String, String>,
) -> Result<Vec<rollout::Consumer>, Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pods = api
        .list_metadata(&ListParams::default().labels(&label_selector(selector)))
        .await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            rollout::Consumer::from_annotation(
                &p.name_any(),
                p.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(names::APPLIED))
                    .map(String::as_str),
            )
        })
        .collect())
}

/// The pod-template annotation that restarts a workload.
pub const RESTART_REVISION: &str = "hotconf.dev/restart-revision";

// Stamps the pod template, and only it, by server-side apply: the workload's controller rolls it.
async fn restart(
    client: &Client,
    ns: &str,
    kind: WorkloadKind,
    name: &str,
    revision: i64,
) -> Result<(), Error> {
    let resource = workload_resource(kind);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let body = json!({
        "apiVersion": "apps/v1",
        "kind": resource.kind,
        "metadata": {"name": name},
        "spec": {"template": {"metadata": {"annotations": {RESTART_REVISION: revision.to_string()}}}}
    });
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    info!(kind = %resource.kind, %name, revision, "restarting for restart-only keys");
    Ok(())
}

fn set_status<K: ConfigResource>(obj: &mut K, status: ConfigStatus) {
    let mut value = serde_json::to_value(&*obj).expect("a CR serializes");
    value["status"] = serde_json::to_value(status).expect("status serializes");
    if let Ok(o) = serde_json::from_value(value) {
        *obj = o;
    }
}

async fn execute<K: ConfigResource>(
    obj: &K,
    plan: &Plan,
    ctx: &Context,
    cms: &Api<ConfigMap>,
    secrets: &Api<Secret>,
) -> Result<(), Error> {
    let apply = PatchParams::apply(MANAGER).force();
    let name = obj.name_any();
    if let Some(secret) = &plan.secret {
        secrets
            .patch(&secret.name_any(), &apply, &Patch::Apply(secret))
            .await?;
    }
    if let Some(cm) = &plan.config_map {
        cms.patch(&cm.name_any(), &apply, &Patch::Apply(cm)).await?;
        info!(kind = K::KIND, %name, configmap = %cm.name_any(), revision = ?plan.status.current_revision, "projected");
    }
    let ns = obj.namespace().unwrap_or_default();
    for (kind, target, revision) in &plan.restart {
        restart(&ctx.client, &ns, *kind, target, *revision).await?;
    }
    let uid = obj.uid().unwrap_or_default();
    let owned =
        |meta: &kube::api::ObjectMeta| meta.owner_references.iter().flatten().any(|o| o.uid == uid);
    for stale in &plan.delete_config_maps {
        if let Some(cm) = cms.get_opt(stale).await?
            && owned(&cm.metadata)
        {
            cms.delete(stale, &delete_exact(cm.uid())).await?;
        }
    }
    for stale in &plan.delete_secrets {
        if let Some(s) = secrets.get_opt(stale).await?
            && owned(&s.metadata)
        {
            secrets.delete(stale, &delete_exact(s.uid())).await?;
        }
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    if plan.status_changed {
        let body = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": plan.status,
        });
        let updated = api
            .patch_status(&name, &apply, &Patch::Apply(&body))
            .await?;
        if let (Some(rv), Some(uid)) = (obj.resource_version(), obj.uid()) {
            let mut written = ctx.written.lock().expect("lock");
            written.insert(uid, (rv, plan.status.clone()));
            drop(updated);
        }
    }
    if plan.remove_rollback_annotation {
        let patch = json!({"metadata": {"annotations": {names::ROLLBACK_TO: null}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let reference = obj.object_ref(&());
    let kind = OperatorMetrics::kind(K::KIND);
    for e in &plan.events {
        let counter = match e.reason {
            "Projected" => Some(&ctx.metrics.revisions_projected),
            "ValidationFailed" => Some(&ctx.metrics.validation_failures),
            "RolledBack" => Some(&ctx.metrics.rollbacks),
            _ => None,
        };
        if let Some(counter) = counter {
            counter.get_or_create(&kind).inc();
        }
        let event = Event {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.into(),
            note: Some(truncate(&e.note, 1000)),
            action: e.action.into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            warn!(kind = K::KIND, %name, reason = e.reason, error = %err, "publishing an event failed");
        }
    }
    Ok(())
}

fn delete_exact(uid: Option<String>) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}
