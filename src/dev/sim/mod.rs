//! A pod lifecycle simulator for the local control plane, which has no kubelet and no
//! scheduler: a client of the real API server, in the manner of kubernetes-sigs/kwok, that
//! registers a Ready [`node`], binds pending pods to it through `pods/binding`, moves them to
//! Running and Ready after a start delay with container statuses filled in, lays out their
//! ConfigMap and Secret [`volumes`] as the kubelet does, runs their hotconf [`agents`] as real
//! processes against a stand-in [`app`], and stops and deletes pods that are being deleted, so
//! Deployments, StatefulSets and DaemonSets really roll. Tests choose [`faults`] per pod by
//! annotation.
//!
//! Used by the integration tests, benchmarks and `hotconf dev`; not part of the operator.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) -> Result<(), hotconf::dev::Error> {
//! use hotconf::dev::sim::{SimOptions, Simulator};
//! let sim = Simulator::start(client, SimOptions {
//!     namespaces: vec!["shop".into()],
//!     agent_binary: Some("target/debug/hotconf".into()),
//!     kubeconfig: Some(".dev/kubeconfig".into()),
//!     ..SimOptions::default()
//! })
//! .await?;
//! // ... create workloads, watch their pods ...
//! sim.stop().await;
//! # Ok(()) }
//! ```

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{StreamExt as _, stream::BoxStream};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::{
    Api, Client,
    core::PartialObjectMeta,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::{broadcast, watch};

pub mod agents;
pub mod app;
pub mod faults;
pub(crate) mod kubelet;
pub mod node;
mod pods;
pub mod volumes;
pub mod workloads;

pub use app::Reload;
pub use faults::{FAULT, FAULT_ON_APPLIED_REVISION, FAULT_ON_RESTART_REVISION, Fault, FaultSpec};

use super::Error;
use volumes::Source;

/// The field manager of the simulator's writes (the node; pod statuses are merge patches).
pub const FIELD_MANAGER: &str = "hotconf-sim";

/// How to run the simulator.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The node's name.
    pub node_name: String,
    /// From binding to Running (the kubelet pulling images and starting containers).
    pub start_delay: Duration,
    /// From a ConfigMap or Secret change to its volumes' update (the kubelet's sync period and
    /// cache TTL: 60 s and more on a real node; tests shorten it).
    pub volume_sync_delay: Duration,
    /// How often a crash-looping container crashes again (its restartCount grows).
    pub crash_period: Duration,
    /// Where pods' volumes, agents' logs and kubeconfigs go; `None`: a fresh temporary
    /// directory.
    pub root: Option<PathBuf>,
    /// The `hotconf` binary to run agent containers with; `None`: agent containers are
    /// simulated like any other container, without a process.
    pub agent_binary: Option<PathBuf>,
    /// A kubeconfig whose user may impersonate ServiceAccounts (the harness admin's); agents
    /// get one derived from it that authenticates as their pod's ServiceAccount. Needed with
    /// `agent_binary`.
    pub kubeconfig: Option<PathBuf>,
    /// The namespaces whose pods it runs; empty: all.
    pub namespaces: Vec<String>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            node_name: "hotconf-sim".into(),
            start_delay: Duration::from_millis(500),
            volume_sync_delay: Duration::from_secs(60),
            crash_period: pods::DEFAULT_CRASH_PERIOD,
            root: None,
            agent_binary: None,
            kubeconfig: None,
            namespaces: Vec::new(),
        }
    }
}

/// An agent process running for a simulated pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub pod: String,
    /// The pod's uid.
    pub uid: String,
    /// The agent container's name.
    pub container: String,
    /// The process id, once started.
    pub pid: Option<u32>,
    /// Its admin server (`/metrics`, `/healthz`, `/readyz`), e.g. `127.0.0.1:40123`.
    pub admin_addr: String,
    /// Its log file.
    pub log: PathBuf,
}

/// What happened to a simulated pod, in order, for tests of wave ordering.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodEventKind {
    /// The simulator first saw it.
    Seen,
    /// Bound to the node.
    Bound,
    /// Its containers started (Running).
    Started,
    /// It became Ready.
    Ready,
    /// It stopped being Ready.
    Unready,
    /// Stopped and deleted (its deletion was asked for).
    Deleted,
}

/// One entry of [`Simulator::history`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEvent {
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's uid.
    pub uid: String,
    /// What happened.
    pub kind: PodEventKind,
}

#[derive(Clone, Debug, Default)]
struct PodRecord {
    namespace: String,
    name: String,
    volumes: BTreeMap<String, PathBuf>,
    agents: Vec<AgentInfo>,
}

#[derive(Default)]
struct Shared {
    pods: Mutex<HashMap<String, PodRecord>>,
    history: Mutex<Vec<PodEvent>>,
}

impl Shared {
    fn record(&self, pod: &Pod, kind: PodEventKind) {
        self.history.lock().expect("history lock").push(PodEvent {
            at: chrono::Utc::now(),
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            kind,
        });
    }
}

/// A running simulator. [`Simulator::stop`] (or dropping it) stops its agents; the pods stay.
pub struct Simulator {
    node_name: String,
    root: PathBuf,
    _temporary: Option<tempdir::TempRoot>,
    shared: Arc<Shared>,
    app: app::App,
    app_url: String,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

mod tempdir {
    /// A temporary root, removed on drop.
    pub(super) struct TempRoot(pub(super) std::path::PathBuf);

    impl Drop for TempRoot {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Everything a pod's task shares with the rest of the simulator.
struct Context {
    client: Client,
    options: SimOptions,
    root: PathBuf,
    host_ip: String,
    ready_since: String,
    node_labels: BTreeMap<String, String>,
    shared: Arc<Shared>,
    app: app::App,
    app_url: String,
    sources: broadcast::Sender<(String, Source)>,
    shutdown: watch::Receiver<bool>,
}

const HOST_IP: &str = "127.0.0.1";

impl Simulator {
    /// Registers the node, starts the stand-in app and the watches, and runs pods from then on.
    pub async fn start(client: Client, options: SimOptions) -> Result<Simulator, Error> {
        let (root, temporary) = match &options.root {
            Some(root) => (root.clone(), None),
            None => {
                let root = std::env::temp_dir().join(format!(
                    "hotconf-sim-{}-{}",
                    std::process::id(),
                    super::control_plane::random_token().get(..8).unwrap_or("x")
                ));
                (root.clone(), Some(tempdir::TempRoot(root)))
            }
        };
        // What a previous run left is of pods that are gone.
        let _ = std::fs::remove_dir_all(root.join("pods"));
        for sub in ["pods", "logs", "kubeconfigs"] {
            super::control_plane::io(
                "creating the simulator's directories",
                std::fs::create_dir_all(root.join(sub)),
            )?;
        }
        let ready_since = node::register(&client, &options.node_name, HOST_IP).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let app = app::App::default();
        let app_url = super::control_plane::io(
            "starting the stand-in app",
            app.serve(shutdown_rx.clone()).await,
        )?;
        let shared = Arc::new(Shared::default());
        let (sources, _) = broadcast::channel(1024);
        let context = Arc::new(Context {
            client: client.clone(),
            node_labels: node::node_labels(&options.node_name),
            options: options.clone(),
            root: root.clone(),
            host_ip: HOST_IP.into(),
            ready_since,
            shared: shared.clone(),
            app: app.clone(),
            app_url: app_url.clone(),
            sources,
            shutdown: shutdown_rx,
        });
        let task = tokio::spawn(run(context));
        tracing::info!(node = %options.node_name, root = %root.display(), "pod simulator started");
        Ok(Simulator {
            node_name: options.node_name,
            root,
            _temporary: temporary,
            shared,
            app,
            app_url,
            shutdown,
            task: Some(task),
        })
    }

    /// The simulated node's name.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Where pods' volumes, agents' logs and kubeconfigs are kept.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// The stand-in app's base URL (`{url}/pods/NS/NAME/...` answers a pod's reloads).
    pub fn app_url(&self) -> &str {
        &self.app_url
    }

    /// The agent processes running now.
    pub fn agents(&self) -> Vec<AgentInfo> {
        let pods = self.shared.pods.lock().expect("pods lock");
        let mut agents: Vec<AgentInfo> = pods.values().flat_map(|p| p.agents.clone()).collect();
        agents.sort_by(|a, b| (&a.namespace, &a.pod).cmp(&(&b.namespace, &b.pod)));
        agents
    }

    /// The directory of the volume `volume` of the pod `namespace/pod`, while the simulator
    /// runs the pod.
    pub fn volume_dir(&self, namespace: &str, pod: &str, volume: &str) -> Option<PathBuf> {
        let pods = self.shared.pods.lock().expect("pods lock");
        pods.values()
            .find(|p| p.namespace == namespace && p.name == pod)
            .and_then(|p| p.volumes.get(volume).cloned())
    }

    /// The reloads the stand-in app saw from the pod `namespace/pod` (its current incarnation).
    pub fn reloads(&self, namespace: &str, pod: &str) -> Vec<Reload> {
        self.app.reloads(&format!("{namespace}/{pod}"))
    }

    /// How many reloads the stand-in app saw from the pod `namespace/pod`.
    pub fn reload_count(&self, namespace: &str, pod: &str) -> usize {
        self.reloads(namespace, pod).len()
    }

    /// Everything that happened to simulated pods so far, in order.
    pub fn history(&self) -> Vec<PodEvent> {
        self.shared.history.lock().expect("history lock").clone()
    }

    /// Stops every agent and the watches, and waits for them. Pods stay as they are.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn pod_key(pod: &Pod) -> Option<String> {
    pod.metadata.uid.clone()
}

// Pod watch events for the namespaces the simulator runs (all of them when none are named).
fn pod_events(
    context: &Context,
) -> BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>> {
    let config = watcher::Config::default();
    if context.options.namespaces.is_empty() {
        watcher(Api::<Pod>::all(context.client.clone()), config).boxed()
    } else {
        futures::stream::select_all(context.options.namespaces.iter().map(|ns| {
            watcher(
                Api::<Pod>::namespaced(context.client.clone(), ns),
                config.clone(),
            )
            .boxed()
        }))
        .boxed()
    }
}

// ConfigMap and Secret changes (by name), which pods' volumes follow.
fn source_changes(context: &Context) -> BoxStream<'static, (String, Source)> {
    let client = context.client.clone();
    let namespaces = context.options.namespaces.clone();
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    let mut streams: Vec<BoxStream<'static, (String, Source)>> = Vec::new();
    for scope in scopes {
        let cms: Api<PartialObjectMeta<ConfigMap>> = match &scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let secrets: Api<PartialObjectMeta<Secret>> = match &scope {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        streams.push(
            watcher(cms, watcher::Config::default())
                .default_backoff()
                .touched_objects()
                .filter_map(|m| async move {
                    let m = m.ok()?;
                    Some((m.metadata.namespace?, Source::ConfigMap(m.metadata.name?)))
                })
                .boxed(),
        );
        streams.push(
            watcher(secrets, watcher::Config::default())
                .default_backoff()
                .touched_objects()
                .filter_map(|m| async move {
                    let m = m.ok()?;
                    Some((m.metadata.namespace?, Source::Secret(m.metadata.name?)))
                })
                .boxed(),
        );
    }
    futures::stream::select_all(streams).boxed()
}

// The simulator's main loop: one task per pod, fed the pod's latest state.
async fn run(context: Arc<Context>) {
    let mut shutdown = context.shutdown.clone();
    let mut heartbeat = tokio::time::interval(Duration::from_secs(30));
    let mut pod_events = pod_events(&context).default_backoff().boxed();
    let mut sources = source_changes(&context);
    let mut pods: HashMap<String, watch::Sender<Pod>> = HashMap::new();
    let mut tasks = tokio::task::JoinSet::new();
    let mut listed: Option<HashSet<String>> = None;
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = heartbeat.tick() => {
                if let Err(error) = node::heartbeat(&context.client, &context.options.node_name, &context.host_ip, &context.ready_since).await {
                    tracing::warn!(%error, "node heartbeat failed");
                }
            }
            Some(change) = sources.next() => {
                let _ = context.sources.send(change);
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            event = pod_events.next() => {
                let Some(event) = event else { break };
                match event {
                    Ok(watcher::Event::Init) => listed = Some(HashSet::new()),
                    Ok(watcher::Event::InitDone) => {
                        if let Some(seen) = listed.take() {
                            pods.retain(|uid, _| seen.contains(uid));
                        }
                    }
                    Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                        let Some(uid) = pod_key(&pod) else { continue };
                        if let Some(seen) = listed.as_mut() {
                            seen.insert(uid.clone());
                        }
                        if let Some(tx) = pods.get(&uid) {
                            tx.send_replace(pod);
                        } else if kubelet::takes(&context, &pod) {
                            let (tx, rx) = watch::channel(pod);
                            pods.insert(uid, tx);
                            tasks.spawn(kubelet::run_pod(context.clone(), rx));
                        }
                    }
                    Ok(watcher::Event::Delete(pod)) => {
                        if let Some(uid) = pod_key(&pod) {
                            pods.remove(&uid);
                        }
                    }
                    Err(error) => tracing::warn!(%error, "pod watch"),
                }
            }
        }
    }
    drop(pods);
    while tasks.join_next().await.is_some() {}
}
