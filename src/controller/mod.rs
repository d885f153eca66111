//! The controller: one generic reconciler for both kinds. It reads what a plan needs (the
//! projected ConfigMap and Secret, the Secrets of `valuesFrom`), asks [`reconcile::plan`] what
//! to do, and performs exactly those writes, by server-side apply as field manager `hotconf`.
//!
//! By concern: [`feed`] turns the watches into the cache (slimmed objects, the echoes of our own
//! writes told apart), [`read`] fetches what a reconcile reads besides the object (the webhook
//! reuses it), [`write`] performs a plan; here, the set-up of the controllers and the reconcile
//! that joins them.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt as _, future::BoxFuture};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
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
        events::{Event, EventType, Reporter},
        reflector::{self, ObjectRef},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::Error;
use crate::crd::{
    ConfigStatus, MANAGER, PoolBudget, RestartTarget, RuntimeConfig, WorkloadKind, names,
};
use crate::document::ResolvedSecret;
use crate::health::{Health, Loop, WatchKind};
use crate::kinds::ConfigResource;
use crate::metrics::{OperatorMetrics, ResultLabels};
use crate::projection::ResolvedTarget;
use crate::reconcile::{self, Observed, Plan};
use crate::rollout;
use events::Recorder;

mod cached;
mod events;
mod feed;
mod pods;
pub(crate) mod read;
mod write;

use cached::Cached;
use feed::{CacheFeed, namespace_of, projected_changes};
use pods::PodCache;
pub use pods::PodsNotSynced;
pub(crate) use read::resolve_secrets;
use read::{workload_resource, workloads};
pub use write::RESTART_REVISION;
use write::{execute, set_status};

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
    // Leadership changes so far: a term is one stretch of holding (or not holding) the Lease.
    term: AtomicU64,
    // uid → (term, resourceVersion of our last status write in it). Within one term only this
    // replica writes status (every other holder stopped writing before its Lease ran out), so a
    // cached copy at or past that version has the server's status: see `project_ahead`.
    trusted: Mutex<HashMap<String, (u64, u64)>>,
    // Failures in a row per object, for the retry delay.
    backoff: Backoff,
    // The consumer pods (none when consumer tracking is off).
    pods: Option<Arc<PodCache>>,
    // Watch and loop health (`/readyz`, `/healthz`).
    health: Arc<Health>,
    // Verifies the webhook's changed-by proofs.
    attribution: Arc<crate::webhook::attribution::Keys>,
    // The projected ConfigMaps' metadata, one cache per controller (kind and scope).
    projected: Mutex<Vec<ProjectedCache>>,
    // The shard this replica is, when sharded.
    shard: Option<crate::sharding::Shard>,
}

// The metadata of the projected ConfigMaps of one controller, as its watch has them, and whether
// that watch has listed them all once.
struct ProjectedCache {
    kind: &'static str,
    namespace: Option<String>,
    store: reflector::Store<Cached<PartialObjectMeta<ConfigMap>>>,
    synced: watch::Receiver<bool>,
}

/// How long a reconcile waits for the first listing of the projected ConfigMaps before it reads
/// its ConfigMap from the server instead.
const PROJECTED_CACHE_WAIT: Duration = Duration::from_secs(10);

impl Context {
    /// A context for `client`, reporting Events as `hotconf` (instance: `$POD_NAME` if set).
    pub fn new(
        client: Client,
        metrics: Arc<OperatorMetrics>,
        is_leader: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let runtime = Runtime {
            metrics,
            is_leader,
            health: Arc::default(),
            attribution: Arc::default(),
        };
        Self::with_pods(client, &runtime, None, None)
    }

    fn with_pods(
        client: Client,
        runtime: &Runtime,
        pods: Option<Arc<PodCache>>,
        shard: Option<crate::sharding::Shard>,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: "hotconf".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let ctx = Arc::new(Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics: runtime.metrics.clone(),
            is_leader: runtime.is_leader.clone(),
            written: Mutex::new(HashMap::new()),
            term: AtomicU64::new(0),
            trusted: Mutex::new(HashMap::new()),
            backoff: Backoff::default(),
            pods,
            health: runtime.health.clone(),
            attribution: runtime.attribution.clone(),
            projected: Mutex::new(Vec::new()),
            shard,
        });
        // Every change of leadership starts a term, which trusts no cached status yet.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (weak, mut leadership) = (Arc::downgrade(&ctx), ctx.is_leader.clone());
            runtime.spawn(async move {
                while leadership.changed().await.is_ok() {
                    let Some(ctx) = weak.upgrade() else { return };
                    ctx.new_term();
                }
            });
        }
        ctx
    }

    fn new_term(&self) {
        let mut trusted = self.trusted.lock().expect("lock");
        self.term.fetch_add(1, Ordering::SeqCst);
        trusted.clear();
    }

    // The term now, taken before a status write whose version is then `trust`ed.
    fn current_term(&self) -> u64 {
        self.term.load(Ordering::SeqCst)
    }

    // Our status write in `term` made `uid` `resource_version`.
    fn trust(&self, uid: &str, term: u64, resource_version: Option<&str>) {
        let Some(rv) = resource_version.and_then(|rv| rv.parse().ok()) else {
            return;
        };
        let mut trusted = self.trusted.lock().expect("lock");
        if term == self.current_term() {
            trusted.insert(uid.to_string(), (term, rv));
        }
    }

    // The object left this replica's watch (deleted, or moved to another shard).
    fn distrust(&self, uid: &str) {
        self.trusted.lock().expect("lock").remove(uid);
    }

    // Whether `obj`'s cached status is the server's: our last status write in this term is in
    // it. Versions are compared as the integers etcd makes them; any other kind is not trusted.
    fn trusts<K: ConfigResource>(&self, obj: &K) -> bool {
        let (Some(uid), Some(rv)) = (obj.uid(), obj.resource_version()) else {
            return false;
        };
        let Ok(rv) = rv.parse::<u64>() else {
            return false;
        };
        let trusted = self.trusted.lock().expect("lock");
        trusted
            .get(&uid)
            .is_some_and(|&(term, written)| term == self.current_term() && rv >= written)
    }

    // The metadata of the ConfigMap `ns/name` of a `K`, from the cache, when `hotconf` alone has
    // written it (so its annotations stand for its data); `None` sends the reconcile to the
    // server: not cached (not labelled as ours, or not there), or written by someone else too.
    async fn cached_config_map<K: ConfigResource>(
        &self,
        ns: &str,
        name: &str,
    ) -> Option<kube::api::ObjectMeta> {
        let (store, mut synced) = {
            let caches = self.projected.lock().expect("lock");
            let c = caches
                .iter()
                .find(|c| c.kind == K::KIND && c.namespace.as_deref().is_none_or(|n| n == ns))?;
            (c.store.clone(), c.synced.clone())
        };
        // At start-up the reconciles can run ahead of the ConfigMaps' listing.
        if !*synced.borrow() {
            let _ = tokio::time::timeout(PROJECTED_CACHE_WAIT, synced.wait_for(|s| *s)).await;
        }
        let cm = store.get(&ObjectRef::new(name).within(ns))?.unpack();
        feed::written_by_us_alone(&cm.metadata).then_some(cm.metadata)
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
    /// Where every watch and controller loop reports (`/readyz`, `/healthz`).
    pub health: Arc<Health>,
    /// The keys that verify the webhook's `hotconf.dev/changed-by` (none without the webhook:
    /// the annotation is then not trusted).
    pub attribution: Arc<crate::webhook::attribution::Keys>,
}

/// What the operator watches: all namespaces or a list, and whether the consumer pods.
#[derive(Clone, Debug)]
pub struct Scope {
    /// Empty: all namespaces.
    pub namespaces: Vec<String>,
    /// Watch pods for `spec.rollout.consumerSelector` (consumer status, health-gated
    /// rollback). Off, consumer selectors are ignored (the chart's `rbac.consumers=false`).
    pub consumers: bool,
    /// Run as this shard of a ControllerRing: only its objects are watched and reconciled,
    /// and a drained object is handed back (see [`crate::sharding`]).
    pub shard: Option<crate::sharding::Shard>,
}

impl Default for Scope {
    fn default() -> Self {
        Scope {
            namespaces: Vec::new(),
            consumers: true,
            shard: None,
        }
    }
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

/// Runs the controllers for both kinds until `shutdown` resolves. (The caller checks the CRDs
/// first: see [`check_crds`].)
pub async fn run(
    client: Client,
    scope: Scope,
    runtime: Runtime,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let (tx, _) = tokio::sync::broadcast::channel::<()>(1);
    let mut runs: Vec<BoxFuture<'static, ()>> = Vec::new();
    let pods = scope.consumers.then(|| {
        let (cache, watch) = PodCache::start(pods::pod_watches(
            &client,
            &scope.namespaces,
            &runtime.health,
        ));
        let stopped = stop(&tx);
        runs.push(Box::pin(async move {
            tokio::select! {
                () = watch => {}
                () = stopped => {}
            }
        }));
        cache
    });
    let ctx = Context::with_pods(client.clone(), &runtime, pods, scope.shard.clone());
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
    // Readiness is the health registry's business; this only says when start-up is over.
    let readiness = tokio::spawn(async move {
        futures::future::join_all(synced).await;
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
    let within = match &namespace {
        Some(n) => format!("in {n}"),
        None => "in all namespaces".to_string(),
    };
    let health = ctx.health.clone();
    // Every watch runs on a client of its own, so that its progress can be observed (see
    // `health::watch`); all of them are supervised.
    fn scoped<T>(client: Client, namespace: &Option<String>) -> Api<T>
    where
        T: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        T::DynamicType: Default,
    {
        match namespace {
            Some(n) => Api::namespaced(client, n),
            None => Api::all(client),
        }
    }
    // Projected objects and Secrets are watched by metadata only: a reconcile reads them whole.
    type Meta<T> = PartialObjectMeta<T>;
    let owned = watcher::Config::default().labels(&format!(
        "{}=hotconf,{}={}",
        names::MANAGED_BY,
        names::OWNER_KIND,
        K::KIND
    ));
    let (store, writer) = reflector::store::<Cached<K>>();
    let (synced_tx, mut synced_rx) = watch::channel(false);
    let synced: BoxFuture<'static, ()> = Box::pin(async move {
        if synced_rx.wait_for(|synced| *synced).await.is_err() {
            // The watch ended before it ever synced: never ready.
            futures::future::pending::<()>().await;
        }
    });
    let mut feed = CacheFeed::new(writer, synced_tx, ctx.clone());
    let objects = health
        .watch(
            watch_kind::<K>(),
            format!("{}s {within}", K::KIND),
            &client,
            |c| scoped::<K>(c, &namespace),
            match &ctx.shard {
                // Only this shard's objects: one moved away leaves the watch (a deletion).
                Some(shard) => watcher::Config::default()
                    .any_semantic()
                    .labels(&shard.selector()),
                None => watcher::Config::default().any_semantic(),
            },
            // The listing goes to the cache, which keeps no documents (`cached`), and to echo
            // detection, which reads none of a listed object.
            |json| crate::crd::without_documents(|| serde_json::from_slice(json)),
        )
        .filter_map(move |event| std::future::ready(feed.feed(event)))
        .applied_objects();
    // The projected ConfigMaps' metadata is also kept: a converged object is recognized from
    // it, with no read of its ConfigMap (a restart over N converged objects reads none).
    let (cm_store, mut cm_writer) = reflector::store::<Cached<Meta<ConfigMap>>>();
    let (cm_synced_tx, cm_synced) = watch::channel(false);
    ctx.projected.lock().expect("lock").push(ProjectedCache {
        kind: K::KIND,
        namespace: namespace.clone(),
        store: cm_store,
        synced: cm_synced,
    });
    let cms = health
        .watch(
            WatchKind::ConfigMap,
            format!("ConfigMaps of {}s {within}", K::KIND),
            &client,
            |c| scoped::<Meta<ConfigMap>>(c, &namespace),
            owned.clone(),
            crate::health::parse,
        )
        .map(move |event| {
            if let Ok(e) = &event {
                cm_writer.apply_watcher_event(&cached::event(e.clone()));
                if matches!(e, watcher::Event::InitDone) {
                    cm_synced_tx.send_replace(true);
                }
            }
            event
        });
    let projected_secrets = health.watch(
        WatchKind::Secret,
        format!("Secrets of {}s {within}", K::KIND),
        &client,
        |c| scoped::<Meta<Secret>>(c, &namespace),
        owned,
        crate::health::parse,
    );
    // The heartbeat: a request for an object that cannot exist goes through the controller's
    // own queue and runner like any reconcile (and waits for a free slot like one), and comes
    // out as `ObjectNotFound`: only a loop that turns lets it through.
    let beat = health.register_loop(format!("{}s {within}", K::KIND));
    let every = (health.bounds().loop_stall / 4).max(Duration::from_millis(100));
    let heartbeats =
        futures::stream::unfold(tokio::time::interval(every), |mut interval| async move {
            interval.tick().await;
            Some((ObjectRef::<Cached<K>>::new(HEARTBEAT), interval))
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
    let pod_store = store.clone();
    let mut controller = Controller::for_stream(objects, store.clone())
        .with_config(controller::Config::default().concurrency(MAX_CONCURRENT_RECONCILES))
        // Every watch backs off by itself (see `health::watch`); kube-runtime's backoff on the
        // merged triggers would, after a run of errors on any one of them, hold every watch of
        // this controller for up to 30 s (the chaos suite found relists 8-30 s late).
        .trigger_backoff(crate::health::FixedBackoff(Duration::ZERO))
        .owns_stream(projected_changes(cms))
        .owns_stream(projected_changes(projected_secrets))
        .reconcile_on(heartbeats);
    if K::USES_SECRETS {
        // A change to a Secret that a spec reads through valuesFrom reconciles that spec.
        let changes = health
            .watch(
                WatchKind::Secret,
                format!("valuesFrom Secrets {within}"),
                &client,
                |c| scoped::<Meta<Secret>>(c, &namespace),
                watcher::Config::default(),
                crate::health::parse,
            )
            .touched_objects();
        controller = controller.watches_stream(changes, move |s: Meta<Secret>| {
            let (ns, name) = (s.namespace(), s.name_any());
            store
                .state()
                .into_iter()
                .filter(|o| o.namespace() == ns && o.index.secrets.contains(&name))
                .map(|o| ObjectRef::from_obj(&*o))
                .collect::<Vec<_>>()
        });
    }
    if let Some(pods) = &ctx.pods {
        // A consumer pod's change reconciles the CRs that select it.
        let store = pod_store;
        let changes = pods.changes().flat_map(move |change| {
            let refs: Vec<ObjectRef<Cached<K>>> = store
                .state()
                .into_iter()
                .filter(|o| {
                    let Some(selector) = o.index.consumer_selector.as_deref() else {
                        return false;
                    };
                    // A receiver that fell behind reconciles every CR with a selector.
                    change.as_ref().is_none_or(|c| {
                        o.namespace().as_deref() == Some(c.namespace.as_str())
                            && c.labels.iter().any(|l| pods::selects(selector, l))
                    })
                })
                .map(|o| ObjectRef::from_obj(&*o))
                .collect();
            futures::stream::iter(refs)
        });
        controller = controller.reconcile_on(changes);
    }
    let run = controller
        .reconcile_all_on(became_leader)
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<K>, error_policy::<K>, ctx)
        .for_each(move |result| {
            outcome::<K>(result, &beat);
            std::future::ready(())
        });
    (run, synced)
}

/// The name of the heartbeat's object: no object can have it (`:` is not allowed in names).
const HEARTBEAT: &str = ":heartbeat";

fn watch_kind<K: ConfigResource>() -> WatchKind {
    if K::KIND == RuntimeConfig::KIND {
        WatchKind::RuntimeConfig
    } else {
        WatchKind::PoolBudget
    }
}

type ControllerError = controller::Error<Error, watcher::Error>;

// What came out of the controller: a reconcile's result, a watch error (the supervised watch has
// logged, counted and restarted it), or the heartbeat.
fn outcome<K: ConfigResource>(
    result: Result<(ObjectRef<Cached<K>>, Action), ControllerError>,
    beat: &Loop,
) {
    match result {
        Err(controller::Error::ObjectNotFound(r)) if r.name == HEARTBEAT => beat.beat(),
        Err(controller::Error::QueueError(_)) => {}
        // A projected object's event for a CR this cache does not hold: deleted, or (sharded)
        // another shard's.
        Err(controller::Error::ObjectNotFound(r)) => {
            tracing::debug!(kind = K::KIND, object = %r, "no such object in the cache")
        }
        Err(e) => warn!(kind = K::KIND, error = %e, "reconcile failed"),
        Ok(_) => {}
    }
}

// Retries back off per object: 1 s, doubling to 5 minutes; a success starts over.
fn error_policy<K: ConfigResource>(
    obj: Arc<Cached<K>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let failures = ctx.backoff.failed(obj.uid().unwrap_or_default());
    let after = backoff_delay(failures);
    warn!(kind = K::KIND, name = %obj.name_any(), namespace = ?obj.namespace(), error = %error, label = error.metric_label(), failures, retry_in = ?after, "reconcile error; retrying");
    Action::requeue(after)
}

/// The delay before the retry after `failures` failures in a row: 1 s, doubling up to 5 min.
fn backoff_delay(failures: u32) -> Duration {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(300);
    FIRST
        .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1)))
        .min(MAX)
}

/// Failures in a row, per object (uid).
#[derive(Default)]
struct Backoff(Mutex<HashMap<String, u32>>);

impl Backoff {
    /// Counts a failure; returns how many in a row.
    fn failed(&self, uid: String) -> u32 {
        let mut map = self.0.lock().expect("lock");
        let n = map.entry(uid).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// A success: the next failure starts over.
    fn succeeded(&self, uid: &str) {
        self.0.lock().expect("lock").remove(uid);
    }
}

// kube-runtime polls every reconcile inside the controller's own future, with the watches that
// feed it: on one thread at a time. Each runs as a task of its own instead, so reconciles, and
// the parsing of a listing, use every core; dropping the reconcile (shutdown) still cancels it.
async fn reconcile<K: ConfigResource>(
    obj: Arc<Cached<K>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
    impl<T> Drop for AbortOnDrop<T> {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let mut task = AbortOnDrop(tokio::spawn(reconcile_task(obj, ctx)));
    match (&mut task.0).await {
        Ok(result) => result,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Cancelled with the runtime (the process is ending): nothing more to do.
        Err(_) => Ok(Action::await_change()),
    }
}

async fn reconcile_task<K: ConfigResource>(
    obj: Arc<Cached<K>>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    if !ctx.leading() {
        // A follower keeps its caches warm and writes nothing; it reconciles all on promotion.
        return Ok(Action::await_change());
    }
    // Counted as running until it returns: `/healthz` fails when one runs beyond the bound.
    let _running = ctx.health.reconcile_started(format!(
        "{} {}/{}",
        K::KIND,
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    ));
    let started = std::time::Instant::now();
    let uid = obj.uid().unwrap_or_default();
    let obj = Arc::new(obj.unpack());
    if let Some(shard) = &ctx.shard
        && shard.draining(obj.labels())
    {
        // The sharder moves it to another shard: acknowledged by removing both labels, and
        // never reconciled here again (it leaves this shard's watch).
        let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        api.patch(
            &obj.name_any(),
            &params,
            &Patch::Merge(shard.acknowledge_drain()),
        )
        .await?;
        ctx.distrust(&uid);
        info!(kind = K::KIND, name = %obj.name_any(), namespace = ?obj.namespace(), "drained: handed back to the sharder");
        return Ok(Action::await_change());
    }
    let result = reconcile_inner(obj, &ctx).await;
    if result.is_ok() {
        ctx.backoff.succeeded(&uid);
    }
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
    let mut observed = observe(&obj, ctx, &cms, &secrets, true).await?;
    let mut plan = reconcile::plan(&obj, &observed);
    if writes(&plan)
        && let Some((fresh, rest)) = project_ahead(&obj, &observed, &plan, ctx, &cms).await?
    {
        execute(&fresh, &rest, ctx, &cms, &secrets).await?;
        return Ok(requeue(&rest));
    }
    if writes(&plan) || plan.incomplete {
        // The cache can lag behind the server (a watch that fell behind or resumed late, a
        // replica just promoted): a plan made from a stale object would overwrite newer status
        // and lose the revisions recorded since. And it holds no snapshot documents, which a
        // status write carries whole. So a plan that writes (or that needed a document) is made
        // again from the object as the server has it now, and the status apply is conditional
        // on that version. A plan made from the ConfigMap's cached metadata is made again from
        // the ConfigMap itself: only one that writes nothing is taken from the caches.
        // The ConfigMap is read beside the object, in the same round trip: a change's
        // projection waits for one read, not two.
        let api: Api<K> = Api::namespaced(client.clone(), &ns);
        let cached_config_map = observed
            .config_map_cached
            .then(|| ResolvedTarget::resolve(obj.target(), &name).name);
        let (fresh, config_map) = tokio::try_join!(api.get(&name), async {
            match &cached_config_map {
                Some(target) => cms.get_opt(target).await.map(Some),
                None => Ok(None),
            }
        })?;
        let moved = fresh.resource_version() != obj.resource_version();
        obj = fresh;
        if moved {
            // Another spec or status: everything it reads is read again.
            observed = observe(&obj, ctx, &cms, &secrets, false).await?;
        } else if let Some(config_map) = config_map {
            observed.config_map = config_map;
            observed.config_map_cached = false;
        }
        plan = reconcile::plan(&obj, &observed);
    }
    execute(&obj, &plan, ctx, &cms, &secrets).await?;
    Ok(requeue(&plan))
}

fn requeue(plan: &Plan) -> Action {
    match plan.requeue_after {
        Some(after) => Action::requeue(after),
        None => Action::await_change(),
    }
}

// A change whose plan writes the ConfigMap and the status, and nothing else, to an object whose
// cached status is the server's (`Context::trusts`), is projected before the object is read
// again: the projection waits for no read. That apply is conditional on the ConfigMap's cached
// version (one written meanwhile, by anyone, sends the reconcile the usual way), and only when
// the ConfigMap carries no unrecorded projection. The object is then read for its snapshot
// documents, the plan made again from the cached object with them, and the rest of that plan
// (the status and the Event) returned when it projects the very same ConfigMap. It does, unless
// the server's status is not the cached one after all: then `None`, and the usual way records
// the projection (adopted, or read back from the ConfigMap) before anything else.
async fn project_ahead<K: ConfigResource>(
    obj: &K,
    observed: &Observed,
    plan: &Plan,
    ctx: &Context,
    cms: &Api<ConfigMap>,
) -> Result<Option<(K, Plan)>, Error> {
    let only_config_map = plan.secret.is_none()
        && plan.restart.is_empty()
        && plan.delete_config_maps.is_empty()
        && plan.delete_secrets.is_empty()
        && !plan.remove_rollback_annotation
        && !plan.incomplete;
    let (Some(desired), Some(cached), true) = (
        &plan.config_map,
        observed
            .config_map
            .as_ref()
            .filter(|_| observed.config_map_cached),
        only_config_map,
    ) else {
        return Ok(None);
    };
    let recorded = obj.config_status().and_then(|s| s.latest_revision);
    let unrecorded = crate::projection::stamped(&cached.metadata)
        .0
        .is_some_and(|r| recorded.is_none_or(|latest| r > latest));
    let version = cached.metadata.resource_version.clone();
    if unrecorded || version.is_none() || !ctx.trusts(obj) {
        return Ok(None);
    }
    if !ctx.leading() {
        return Err(Error::NotLeader);
    }
    let mut conditional = desired.clone();
    conditional.metadata.resource_version = version;
    let name = desired.name_any();
    let apply = PatchParams::apply(MANAGER).force();
    match cms.patch(&name, &apply, &Patch::Apply(&conditional)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let revision = plan.status.current_revision;
    info!(kind = K::KIND, name = %obj.name_any(), configmap = %name, revision, "projected");
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    let fresh = api.get(&obj.name_any()).await?;
    let mut documents_left_out = fresh.clone();
    cached::set_documents(&mut documents_left_out, crate::crd::StoredDocument::elided);
    if documents_left_out.config_status() != obj.config_status() {
        return Ok(None);
    }
    // The object as cached (the spec just projected, even if it has moved on since: the next
    // reconcile projects the newer one), with the documents of its history, on the version
    // the status write is conditional on.
    let mut whole = obj.clone();
    *whole.status_mut() = fresh.config_status().cloned();
    whole.meta_mut().resource_version = fresh.resource_version();
    let mut rest = reconcile::plan(&whole, observed);
    if rest.incomplete || rest.config_map.as_ref() != Some(desired) {
        return Ok(None);
    }
    rest.config_map = None;
    Ok(Some((whole, rest)))
}

// Whether executing `plan` writes anything.
fn writes(plan: &Plan) -> bool {
    plan.config_map.is_some()
        || plan.secret.is_some()
        || plan.status_changed
        || plan.remove_rollback_annotation
        || !plan.restart.is_empty()
        || !plan.delete_config_maps.is_empty()
        || !plan.delete_secrets.is_empty()
}

/// The author the admission webhook vouches for: `hotconf.dev/changed-by` when its
/// `hotconf.dev/changed-by-proof` verifies for this object and its spec as they are now.
pub fn attested_author<K: ConfigResource>(
    obj: &K,
    keys: &crate::webhook::attribution::Keys,
) -> Option<String> {
    use crate::webhook::attribution::{Claim, spec_digest};
    let annotations = obj.annotations();
    let user = annotations.get(crate::crd::names::CHANGED_BY)?;
    let proof = annotations.get(crate::crd::names::CHANGED_BY_PROOF)?;
    let spec = spec_digest(obj.spec());
    let claim = Claim {
        kind: K::KIND,
        namespace: obj.meta().namespace.as_deref().unwrap_or("default"),
        name: obj.meta().name.as_deref().unwrap_or_default(),
        user,
        spec: &spec,
    };
    keys.verify(&claim, proof).then(|| user.clone())
}

// What a reconcile of `obj` reads besides the object; with `cached`, the ConfigMap's metadata
// from the cache where that stands for it.
async fn observe<K: ConfigResource>(
    obj: &K,
    ctx: &Context,
    cms: &Api<ConfigMap>,
    secrets: &Api<Secret>,
    cached: bool,
) -> Result<Observed, Error> {
    let name = obj.name_any();
    let ns = obj.namespace().unwrap_or_default();
    let target = ResolvedTarget::resolve(obj.target(), &name);
    let from_cache = match cached {
        true => ctx.cached_config_map::<K>(&ns, &target.name).await,
        false => None,
    };
    let config_map_cached = from_cache.is_some();
    let config_map = match from_cache {
        Some(metadata) => Some(ConfigMap {
            metadata,
            ..Default::default()
        }),
        None => cms.get_opt(&target.name).await?,
    };
    Ok(Observed {
        config_map,
        config_map_cached,
        secret: if reconcile::needs_secret(obj) {
            secrets.get_opt(&target.name).await?
        } else {
            None
        },
        secrets: resolve_secrets(obj, secrets).await?,
        attested_author: attested_author(obj, &ctx.attribution),
        now: chrono::Utc::now(),
        workloads: workloads(&ctx.client, &ns, obj.restart_targets()).await?,
        consumers: match (
            obj.rollout().and_then(|r| r.consumer_selector.as_ref()),
            &ctx.pods,
        ) {
            (Some(selector), Some(pods)) => Some(pods.select(&ns, selector)?),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_a_second_to_five_minutes_and_start_over() {
        let delays: Vec<u64> = (1..=11).map(|n| backoff_delay(n).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff_delay(u32::MAX), Duration::from_secs(300));
        let backoff = Backoff::default();
        assert_eq!(
            (backoff.failed("a".into()), backoff.failed("a".into())),
            (1, 2)
        );
        assert_eq!(backoff.failed("b".into()), 1, "per object");
        backoff.succeeded("a");
        assert_eq!(backoff.failed("a".into()), 1);
    }
}
