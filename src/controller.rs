//! The controller: one generic reconciler for both kinds. It reads what a plan needs (the
//! projected ConfigMap and Secret, the Secrets of `valuesFrom`), asks [`reconcile::plan`] what
//! to do, and performs exactly those writes, by server-side apply as field manager `hotconf`.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt as _, future::BoxFuture};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{
        ApiResource, DeleteParams, DynamicObject, ListParams, PartialObjectMeta, Patch,
        PatchParams, Preconditions,
    },
    runtime::{
        Controller, WatchStreamExt as _,
        controller::{self, Action},
        events::{Event, EventType, Recorder, Reporter},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use serde::de::DeserializeOwned;
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

/// How many reconciles of one kind and scope run at once. Unbounded, a burst (a restart over
/// thousands of objects) puts every object in flight at once, each on its own API connection.
const MAX_CONCURRENT_RECONCILES: u16 = 16;

// The controller of one kind in one scope, and a future that resolves once its watch has synced.
//
// The cache is fed by our own reflector rather than `Controller::new`'s, for three reasons: the
// cached objects are slimmed (managedFields, the bulk of a small object, kept only as far as
// `reconcile::changed_by` reads them); readiness is taken from the stream itself (the store's
// readiness wakes only its latest waiter, so a second waiter could stall the controller's own
// start until the next watch event); and the echoes of our own writes (status, projections) are
// told apart from changes by anyone else, so one change costs one reconcile.
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
    // Projected objects and Secrets are watched by metadata only: a reconcile reads them whole.
    type Meta<T> = PartialObjectMeta<T>;
    let (cms, secrets): (Api<Meta<ConfigMap>>, Api<Meta<Secret>>) = match &namespace {
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
    let (store, writer) = reflector::store::<K>();
    let (synced_tx, mut synced_rx) = watch::channel(false);
    let synced: BoxFuture<'static, ()> = Box::pin(async move {
        if synced_rx.wait_for(|synced| *synced).await.is_err() {
            // The watch ended before it ever synced: never ready.
            futures::future::pending::<()>().await;
        }
    });
    let mut feed = CacheFeed {
        writer,
        synced: synced_tx,
        ctx: ctx.clone(),
        seen: HashMap::new(),
    };
    let objects = watcher(api, watcher::Config::default().any_semantic())
        .filter_map(move |event| std::future::ready(feed.feed(event)))
        .applied_objects();
    // A replica that becomes leader reconciles everything: it skipped writes until now.
    let became_leader = futures::stream::unfold(ctx.is_leader.clone(), |mut rx| async move {
        loop {
            rx.changed().await.ok()?;
            if *rx.borrow_and_update() {
                return Some(((), rx));
            }
        }
    });
    let mut controller = Controller::for_stream(objects, store.clone())
        .with_config(controller::Config::default().concurrency(MAX_CONCURRENT_RECONCILES))
        .owns_stream(projected_changes(cms, owned.clone()))
        .owns_stream(projected_changes(secrets.clone(), owned));
    if K::USES_SECRETS {
        // A change to a Secret that a spec reads through valuesFrom reconciles that spec.
        let changes = watcher(secrets, watcher::Config::default()).touched_objects();
        controller = controller.watches_stream(changes, move |s: Meta<Secret>| {
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

/// Annotation kubectl's client-side apply keeps the whole applied object in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

// Feeds the cache from the watch (what `reflect` does, plus readiness and slimming) and tells the
// watch events of our own status writes from changes by anyone else: an update that changes
// nothing but the status, written by `hotconf` alone, needs no reconcile. Listings (start-up, a
// watch that re-lists) and deletions always pass.
struct CacheFeed<K: ConfigResource> {
    writer: reflector::store::Writer<K>,
    synced: watch::Sender<bool>,
    ctx: Arc<Context>,
    // uid → (fingerprint, the status fields `hotconf` owned) as last seen
    seen: HashMap<String, (u64, Option<u64>)>,
}

impl<K: ConfigResource> CacheFeed<K> {
    fn feed(
        &mut self,
        event: watcher::Result<watcher::Event<K>>,
    ) -> Option<watcher::Result<watcher::Event<K>>> {
        let Ok(event) = event else { return Some(event) };
        let echo = self.is_echo(&event);
        self.forget_written(&event);
        let event = event.modify(slim);
        self.writer.apply_watcher_event(&event);
        if let watcher::Event::InitDone = event {
            self.synced.send_replace(true);
        }
        (!echo).then_some(Ok(event))
    }

    // A status we wrote is kept only until the cache has moved past the version it was based
    // on (or the object is gone): after that, reconciles read it from the cache. Without this,
    // every object the operator ever wrote would keep a second copy of its status, since the
    // echo of our own write triggers no reconcile that could drop it.
    fn forget_written(&self, event: &watcher::Event<K>) {
        let (obj, deleted) = match event {
            watcher::Event::Apply(obj) | watcher::Event::InitApply(obj) => (obj, false),
            watcher::Event::Delete(obj) => (obj, true),
            _ => return,
        };
        let Some(uid) = obj.uid() else { return };
        let mut written = self.ctx.written.lock().expect("lock");
        if written.get(&uid).is_some_and(|(based_on, _)| {
            deleted || obj.resource_version().as_ref() != Some(based_on)
        }) {
            written.remove(&uid);
        }
    }

    fn is_echo(&mut self, event: &watcher::Event<K>) -> bool {
        let (watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) = event else {
            if let watcher::Event::Delete(obj) = event
                && let Some(uid) = obj.uid()
            {
                self.seen.remove(&uid);
            }
            return false;
        };
        let Some(uid) = obj.uid() else { return false };
        let fingerprint = fingerprint(obj);
        let status = Ownership::of(obj.meta(), Some("status"));
        let Some((was, ours)) = self.seen.insert(uid.clone(), (fingerprint, status.ours)) else {
            return false;
        };
        if matches!(event, watcher::Event::InitApply(_)) || was != fingerprint {
            return false;
        }
        status.written_by_us_since(ours)
            || self
                .ctx
                .written
                .lock()
                .expect("lock")
                .get(&uid)
                .is_some_and(|(_, status)| obj.config_status() == Some(status))
    }
}

// What the cache keeps of an object: everything a reconcile reads. Of managedFields that is, per
// `reconcile::changed_by`, which manager touched `spec` last, outside subresources.
fn slim<K: ConfigResource>(obj: &mut K) {
    let meta = obj.meta_mut();
    if let Some(entries) = meta.managed_fields.as_mut() {
        entries.retain(crate::reconcile::sets_spec);
        // What `sets_spec` needs to say yes again, and no more.
        for m in entries.iter_mut() {
            m.fields_v1 = Some(FieldsV1(json!({"f:spec": {"f:set": {}}})));
        }
    }
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

// Everything but the status that a reconcile depends on: the spec (through `generation`, which
// the API server moves on every spec change), annotations and the rest of the identity.
fn fingerprint<K: ConfigResource>(obj: &K) -> u64 {
    let meta = obj.meta();
    let mut h = DefaultHasher::new();
    meta.generation.hash(&mut h);
    meta.annotations.hash(&mut h);
    meta.labels.hash(&mut h);
    meta.deletion_timestamp.is_some().hash(&mut h);
    meta.finalizers.hash(&mut h);
    for o in meta.owner_references.iter().flatten() {
        (&o.uid, o.controller).hash(&mut h);
    }
    h.finish()
}

// Who writes a part of an object (its status, or all of it), from its managedFields.
struct Ownership {
    // A digest of the fields `hotconf` owns there by Apply, if any.
    ours: Option<u64>,
    // Whether `hotconf` is the only manager there.
    alone: bool,
}

impl Ownership {
    // Status entries are those of the status subresource, or (servers before 1.22 do not record
    // subresources) those that hold `f:status`.
    fn of(meta: &kube::api::ObjectMeta, part: Option<&str>) -> Self {
        let entries: Vec<_> = meta
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| match part {
                None => true,
                Some(part) => {
                    m.subresource.as_deref() == Some(part)
                        || m.fields_v1
                            .as_ref()
                            .is_some_and(|f| f.0.get(format!("f:{part}")).is_some())
                }
            })
            .collect();
        let is_ours = |m: &ManagedFieldsEntry| {
            m.manager.as_deref() == Some(MANAGER) && m.operation.as_deref() == Some("Apply")
        };
        let ours = entries.iter().find(|m| is_ours(m)).map(|m| {
            let fields = m.fields_v1.as_ref().map(|f| &f.0);
            let fields = match part {
                Some(part) => fields.map(|f| f.get(format!("f:{part}")).unwrap_or(f)),
                None => fields,
            };
            let mut h = DefaultHasher::new();
            fields.map(ToString::to_string).hash(&mut h);
            h.finish()
        });
        Ownership {
            ours,
            alone: entries.len() == 1 && ours.is_some(),
        }
    }

    // Whether the last change came from `hotconf`, given what it owned before (`None`: nothing).
    // Anyone else's write adds their own entry, or takes fields from ours.
    fn written_by_us_since(&self, before: Option<u64>) -> bool {
        self.alone && (before.is_none() || before == self.ours)
    }
}

// Changes of projected objects, less the echoes of our own writes. Listings and deletions always
// pass.
fn projected_changes<C>(
    api: Api<PartialObjectMeta<C>>,
    config: watcher::Config,
) -> impl Stream<Item = watcher::Result<PartialObjectMeta<C>>> + Send + 'static
where
    C: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    C::DynamicType: Default,
{
    // uid → the fields `hotconf` owned, as last seen
    let mut seen: HashMap<String, Option<u64>> = HashMap::new();
    watcher(api, config)
        .filter(move |event| {
            let echo = match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    let now = Ownership::of(&o.metadata, None);
                    let before = o.uid().and_then(|uid| seen.insert(uid, now.ours));
                    matches!(event, Ok(watcher::Event::Apply(_)))
                        && now.written_by_us_since(before.flatten())
                }
                Ok(watcher::Event::Delete(o)) => {
                    if let Some(uid) = o.uid() {
                        seen.remove(&uid);
                    }
                    false
                }
                _ => false,
            };
            std::future::ready(!echo)
        })
        .touched_objects()
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
pub(crate) async fn resolve_secrets<K: ConfigResource>(
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
        let mut written = ctx.written.lock().expect("lock");
        match written.get(&uid) {
            Some((based_on, status)) if *based_on == rv => set_status(&mut obj, status.clone()),
            // The cache has moved past our write: forget it, so the map holds only writes in
            // flight.
            Some(_) => {
                written.remove(&uid);
            }
            None => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RuntimeConfig;

    fn object(rv: &str, revision: i64) -> RuntimeConfig {
        let mut obj: RuntimeConfig = serde_yaml::from_str(
            "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: a, namespace: n, uid: u1}\nspec: {}\n",
        )
        .unwrap();
        obj.metadata.resource_version = Some(rv.into());
        obj.status = Some(ConfigStatus {
            current_revision: Some(revision),
            ..Default::default()
        });
        obj
    }

    #[tokio::test]
    async fn a_written_status_is_forgotten_once_the_cache_moves_past_it() {
        // Nothing here talks to the server: the client only has to exist.
        let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let metrics = Arc::new(OperatorMetrics::register(&mut Default::default()));
        let ctx = Context::new(client, metrics, watch::channel(true).1);
        let (_, writer) = reflector::store::<RuntimeConfig>();
        let mut feed = CacheFeed {
            writer,
            synced: watch::channel(false).0,
            ctx: ctx.clone(),
            seen: HashMap::new(),
        };
        let wrote = |ctx: &Context, rv: &str| {
            let status = object(rv, 2).status.unwrap();
            ctx.written
                .lock()
                .unwrap()
                .insert("u1".into(), (rv.into(), status));
        };
        let held = |ctx: &Context| ctx.written.lock().unwrap().contains_key("u1");

        // Written on top of version 5: an event still at 5 keeps it, the echo (6) drops it.
        feed.feed(Ok(watcher::Event::InitApply(object("5", 1))));
        wrote(&ctx, "5");
        feed.feed(Ok(watcher::Event::Apply(object("5", 1))));
        assert!(held(&ctx));
        let echo = feed.feed(Ok(watcher::Event::Apply(object("6", 2))));
        assert!(!held(&ctx), "the echo of the write releases it");
        assert!(echo.is_none(), "and triggers no reconcile");

        // A deletion drops it too.
        wrote(&ctx, "6");
        feed.feed(Ok(watcher::Event::Delete(object("6", 2))));
        assert!(!held(&ctx));
    }
}
