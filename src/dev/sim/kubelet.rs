//! One simulated pod's life, as a kubelet (and the scheduler) would drive it: bind it to the
//! node, start it after the start delay with its volumes laid out and its agents running,
//! report its status whenever it changes, keep its volumes in step with their ConfigMaps and
//! Secrets, and when it is being deleted stop its agents and delete it for good.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Binding, ConfigMap, Container, Pod, Secret};
use kube::{
    Api,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions},
};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use super::agents;
use super::faults::{self, Fault, FaultSpec};
use super::pods::{PodSim, pod_ip};
use super::volumes::{self, SimVolume, Source};
use super::{AgentInfo, Context, PodEventKind, PodRecord};
use crate::dev::process::Process;

static NEXT_IP: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Whether the simulator runs this pod: not finished, and unbound or bound to its node.
pub(super) fn takes(context: &Context, pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return false;
    }
    match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        Some(node) => node == context.options.node_name,
        None => true,
    }
}

struct RunningAgent {
    process: Option<Process>,
    command: agents::AgentCommand,
    kubeconfig: PathBuf,
    log: PathBuf,
    admin_port: u16,
    readiness_path: Option<String>,
    started: Instant,
    seen_running: bool,
    down_since: Option<Instant>,
    probe_ok: bool,
    probed: Option<Instant>,
}

struct Life {
    context: Arc<Context>,
    uid: String,
    namespace: String,
    name: String,
    dir: PathBuf,
    sim: PodSim,
    volumes: Vec<SimVolume>,
    agents: BTreeMap<String, RunningAgent>,
    bound_at: Option<Instant>,
    sync_at: Option<Instant>,
    written: Option<Value>,
    fault_warned: bool,
    ready: bool,
}

/// Drives one pod until it is gone (deleted by us or by someone else) or the simulator stops.
pub(super) async fn run_pod(context: Arc<Context>, mut pod_rx: watch::Receiver<Pod>) {
    let pod = pod_rx.borrow().clone();
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ip = pod_ip(NEXT_IP.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let dir = context
        .root
        .join("pods")
        .join(format!("{namespace}_{name}_{uid}"));
    let volumes: Vec<SimVolume> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .map(|v| SimVolume::new(v, &dir.join("volumes")))
        .collect();
    context.shared.record(&pod, PodEventKind::Seen);
    context.shared.pods.lock().expect("pods lock").insert(
        uid.clone(),
        PodRecord {
            namespace: namespace.clone(),
            name: name.clone(),
            volumes: volumes
                .iter()
                .map(|v| (v.name.clone(), v.dir.clone()))
                .collect(),
            agents: Vec::new(),
        },
    );
    let mut life = Life {
        sim: PodSim::new(&pod, ip, context.host_ip.clone()),
        context: context.clone(),
        uid,
        namespace,
        name,
        dir,
        volumes,
        agents: BTreeMap::new(),
        bound_at: None,
        sync_at: None,
        written: None,
        fault_warned: false,
        ready: false,
    };
    let mut sources = context.sources.subscribe();
    let mut shutdown = context.shutdown.clone();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deleted = loop {
        tokio::select! {
            _ = shutdown.changed() => break false,
            changed = pod_rx.changed() => if changed.is_err() { break false },
            change = sources.recv() => match change {
                Ok((ns, source)) if ns == life.namespace && life.mounts(&source) => life.schedule_sync(),
                Ok(_) | Err(broadcast::error::RecvError::Closed) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => life.schedule_sync(),
            },
            _ = tick.tick() => {}
        }
        let pod = pod_rx.borrow_and_update().clone();
        if pod.metadata.deletion_timestamp.is_some() {
            break true;
        }
        if let Err(error) = life.step(&pod).await {
            tracing::debug!(pod = %life.name, namespace = %life.namespace, %error, "simulated kubelet");
        }
    };
    life.stop_agents().await;
    if deleted {
        life.delete().await;
    }
    context
        .shared
        .pods
        .lock()
        .expect("pods lock")
        .remove(&life.uid);
    let _ = tokio::fs::remove_dir_all(&life.dir).await;
}

impl Life {
    fn mounts(&self, source: &Source) -> bool {
        self.volumes
            .iter()
            .any(|v| v.source.as_ref() == Some(source))
    }

    fn schedule_sync(&mut self) {
        if self.sim.running() && self.sync_at.is_none() {
            self.sync_at = Some(Instant::now() + self.context.options.volume_sync_delay);
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.context.client.clone(), &self.namespace)
    }

    // One look at the pod: schedule it, start it when due, keep its volumes in step, and
    // report its status when it changed.
    async fn step(&mut self, pod: &Pod) -> Result<(), kube::Error> {
        let now = chrono::Utc::now();
        if !self.schedule(pod, now).await? {
            return Ok(());
        }
        self.start_when_due(pod, now).await;
        self.sync_when_due().await;
        let fault = self.fault(pod);
        self.supervise_agents(now).await;
        let agents = &self.agents;
        let agent_ready = |name: &str| agents.get(name).is_none_or(RunningAgent::ready);
        self.sim
            .advance(now, fault, &agent_ready, self.context.options.crash_period);
        self.report(pod).await
    }

    // Whether the pod is bound to this node, binding it when it fits.
    async fn schedule(
        &mut self,
        pod: &Pod,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<bool, kube::Error> {
        if self.bound_at.is_some() {
            return Ok(true);
        }
        let ours = &self.context.options.node_name;
        match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(node) if node == ours => {}
            // Another scheduler's (or simulator's) pod.
            Some(_) => return Ok(false),
            None if super::node::fits(pod, ours, &self.context.node_labels) => {
                self.bind().await?;
                self.context.shared.record(pod, PodEventKind::Bound);
            }
            None => {
                self.unschedulable(pod).await?;
                return Ok(false);
            }
        }
        self.bound_at = Some(Instant::now());
        self.sim.set_scheduled(now);
        Ok(true)
    }

    async fn start_when_due(&mut self, pod: &Pod, now: chrono::DateTime<chrono::Utc>) {
        let due = self
            .bound_at
            .is_some_and(|t| t.elapsed() >= self.context.options.start_delay);
        if self.sim.running() || !due {
            return;
        }
        match self.sync_volumes(true).await {
            Ok(()) => {
                self.start_agents(pod);
                self.sim.start(now);
                self.context.shared.record(pod, PodEventKind::Started);
            }
            Err(why) => self.sim.creating = Some(why),
        }
    }

    async fn sync_when_due(&mut self) {
        if self.sim.running() && self.sync_at.is_some_and(|t| Instant::now() >= t) {
            self.sync_at = None;
            if let Err(why) = self.sync_volumes(false).await {
                tracing::warn!(pod = %self.name, %why, "volume sync");
            }
        }
    }

    // Writes the pod's status when it differs from what was last written.
    async fn report(&mut self, pod: &Pod) -> Result<(), kube::Error> {
        let status = self.sim.status();
        if self.written.as_ref() == Some(&status) {
            return Ok(());
        }
        self.pods()
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await?;
        self.written = Some(status);
        let ready = self.sim.ready();
        if ready != self.ready {
            self.ready = ready;
            let kind = if ready {
                PodEventKind::Ready
            } else {
                PodEventKind::Unready
            };
            self.context.shared.record(pod, kind);
        }
        Ok(())
    }

    // As the scheduler reports a pod that fits no node, once.
    async fn unschedulable(&mut self, pod: &Pod) -> Result<(), kube::Error> {
        let already = pod
            .status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| c.type_ == "PodScheduled" && c.reason.as_deref() == Some("Unschedulable"));
        if already {
            return Ok(());
        }
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let message = format!(
            "0/1 nodes are available: node {} does not match the pod's node selector or affinity",
            self.context.options.node_name
        );
        let status = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": message, "lastProbeTime": null,
            "lastTransitionTime": now}]}});
        self.pods()
            .patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(())
    }

    // The fault that applies now, for the pod's own status (reload failures are the app's).
    fn fault(&mut self, pod: &Pod) -> Option<Fault> {
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let spec = match FaultSpec::from_annotations(&annotations) {
            Ok(spec) => spec,
            Err(error) => {
                if !self.fault_warned {
                    self.fault_warned = true;
                    tracing::warn!(pod = %self.name, %error, "ignoring the fault annotation");
                }
                None
            }
        };
        let restart = annotations.get(faults::RESTART_REVISION).cloned();
        self.context.app.register(
            &format!("{}/{}", self.namespace, self.name),
            &self.uid,
            spec.clone(),
            restart.clone(),
        );
        let spec = spec?;
        let applies = spec.applies(restart.as_deref(), faults::applied_revision(&annotations));
        (applies && !spec.fault.in_the_app()).then_some(spec.fault)
    }

    async fn bind(&self) -> Result<(), kube::Error> {
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                uid: Some(self.uid.clone()),
                ..Default::default()
            },
            target: k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(self.context.options.node_name.clone()),
                ..Default::default()
            },
        };
        let _: Value = self
            .pods()
            .create_subresource("binding", &self.name, &PostParams::default(), &binding)
            .await?;
        Ok(())
    }

    // Lays out every ConfigMap and Secret volume (and creates the plain ones); `Err` says why
    // the pod cannot start.
    async fn sync_volumes(&self, first: bool) -> Result<(), String> {
        for volume in &self.volumes {
            let data = match &volume.source {
                None => {
                    if first {
                        std::fs::create_dir_all(&volume.dir).map_err(|e| e.to_string())?;
                    }
                    continue;
                }
                Some(Source::ConfigMap(name)) => {
                    let api: Api<ConfigMap> =
                        Api::namespaced(self.context.client.clone(), &self.namespace);
                    api.get_opt(name)
                        .await
                        .map_err(|e| e.to_string())?
                        .map(|cm| volumes::config_map_data(&cm))
                }
                Some(Source::Secret(name)) => {
                    let api: Api<Secret> =
                        Api::namespaced(self.context.client.clone(), &self.namespace);
                    api.get_opt(name)
                        .await
                        .map_err(|e| e.to_string())?
                        .map(|s| volumes::secret_data(&s))
                }
            };
            let files = volumes::project(volume, data.as_ref()).map_err(|e| {
                format!("MountVolume.SetUp failed for volume {:?}: {e}", volume.name)
            })?;
            volumes::write_atomic(&volume.dir, &files, chrono::Utc::now())
                .map_err(|e| format!("writing volume {}: {e}", volume.name))?;
        }
        Ok(())
    }

    fn start_agents(&mut self, pod: &Pod) {
        let options = &self.context.options;
        let (Some(binary), Some(admin_kubeconfig)) = (&options.agent_binary, &options.kubeconfig)
        else {
            return;
        };
        let containers: Vec<Container> = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .filter(|c| agents::is_agent(c))
            .cloned()
            .collect();
        if containers.is_empty() {
            return;
        }
        let sa = agents::service_account(pod);
        let user = format!("system:serviceaccount:{}:{sa}", self.namespace);
        let groups = agents::service_account_groups(&self.namespace);
        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
        let kubeconfig = self
            .context
            .root
            .join("kubeconfigs")
            .join(format!("{}_{sa}", self.namespace));
        if let Err(error) =
            agents::impersonating_kubeconfig(admin_kubeconfig, &user, &groups, &kubeconfig)
        {
            tracing::warn!(%error, "writing an agent's kubeconfig");
            return;
        }
        let volume_dirs: BTreeMap<String, PathBuf> = self
            .volumes
            .iter()
            .map(|v| (v.name.clone(), v.dir.clone()))
            .collect();
        let app = format!(
            "{}/pods/{}/{}",
            self.context.app_url, self.namespace, self.name
        );
        for container in containers {
            let Ok(admin_port) = crate::dev::control_plane::free_port() else {
                continue;
            };
            let env = agents::environment(pod, &container, &self.sim.pod_ip, &self.sim.host_ip);
            let command = agents::agent_command(
                &container,
                env,
                &agents::mounts(&container, &volume_dirs),
                admin_port,
                &app,
            );
            let log = self.context.root.join("logs").join(format!(
                "{}_{}_{}.log",
                self.namespace, self.name, container.name
            ));
            let readiness_path = container
                .readiness_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .map(|h| h.path.clone().unwrap_or_else(|| "/".into()));
            let mut agent = RunningAgent {
                process: None,
                command,
                kubeconfig: kubeconfig.clone(),
                log,
                admin_port,
                probe_ok: readiness_path.is_none(),
                readiness_path,
                started: Instant::now(),
                seen_running: false,
                down_since: None,
                probed: None,
            };
            agent.spawn(binary);
            self.agents.insert(container.name.clone(), agent);
        }
        self.publish_agents();
    }

    fn publish_agents(&self) {
        let infos: Vec<AgentInfo> = self
            .agents
            .iter()
            .map(|(container, a)| AgentInfo {
                namespace: self.namespace.clone(),
                pod: self.name.clone(),
                uid: self.uid.clone(),
                container: container.clone(),
                pid: a.process.as_ref().and_then(Process::pid),
                admin_addr: format!("127.0.0.1:{}", a.admin_port),
                log: a.log.clone(),
            })
            .collect();
        if let Some(record) = self
            .context
            .shared
            .pods
            .lock()
            .expect("pods lock")
            .get_mut(&self.uid)
        {
            record.agents = infos;
        }
    }

    // Restarts agents that exited (after a short back-off) and probes their readiness.
    async fn supervise_agents(&mut self, now: chrono::DateTime<chrono::Utc>) {
        let Some(binary) = self.context.options.agent_binary.clone() else {
            return;
        };
        let mut restarted = Vec::new();
        let mut changed = false;
        for (name, agent) in &mut self.agents {
            let running = agent.process.as_ref().is_some_and(Process::running);
            if running && !agent.seen_running {
                agent.seen_running = true;
                changed = true;
            }
            let exited = !running
                && (agent.seen_running || agent.started.elapsed() > Duration::from_secs(5));
            if exited && agent.down_since.is_none() {
                tracing::warn!(pod = %self.name, container = %name, log = %agent.log.display(), "agent exited");
                agent.down_since = Some(Instant::now());
            }
            if agent
                .down_since
                .is_some_and(|t| t.elapsed() >= Duration::from_secs(2))
            {
                if let Some(old) = agent.process.take() {
                    let _ = tokio::task::spawn_blocking(move || drop(old)).await;
                }
                agent.spawn(&binary);
                restarted.push(name.clone());
                changed = true;
            }
            if let Some(path) = &agent.readiness_path
                && agent.seen_running
                && agent
                    .probed
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(500))
            {
                agent.probed = Some(Instant::now());
                agent.probe_ok = probe(agent.admin_port, path).await;
            }
        }
        for name in restarted {
            self.sim.agent_restarted(&name, now);
        }
        if changed {
            self.publish_agents();
        }
    }

    async fn stop_agents(&mut self) {
        let processes: Vec<Process> = self
            .agents
            .values_mut()
            .filter_map(|a| a.process.take())
            .collect();
        if !processes.is_empty() {
            // Process::stop waits for the exit (SIGTERM, then SIGKILL after 10 s).
            let _ = tokio::task::spawn_blocking(move || drop(processes)).await;
        }
        self.agents.clear();
        self.publish_agents();
    }

    // As the kubelet ends a graceful deletion: for good, and only this incarnation.
    async fn delete(&self) {
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.pods().delete(&self.name, &params).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
            Err(error) => tracing::warn!(pod = %self.name, %error, "deleting a stopped pod"),
        }
        let mut record = Pod::default();
        record.metadata.namespace = Some(self.namespace.clone());
        record.metadata.name = Some(self.name.clone());
        record.metadata.uid = Some(self.uid.clone());
        self.context.shared.record(&record, PodEventKind::Deleted);
    }
}

impl RunningAgent {
    // Running (seen so) and, with a readiness probe, answering it.
    fn ready(&self) -> bool {
        self.process.is_some() && self.seen_running && self.down_since.is_none() && self.probe_ok
    }

    fn spawn(&mut self, binary: &std::path::Path) {
        let mut env: Vec<(&str, &std::ffi::OsStr)> = self
            .command
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), std::ffi::OsStr::new(v.as_str())))
            .collect();
        env.push(("KUBECONFIG", self.kubeconfig.as_os_str()));
        // Its log is a file.
        env.push(("NO_COLOR", std::ffi::OsStr::new("1")));
        self.started = Instant::now();
        self.seen_running = false;
        self.down_since = None;
        self.probe_ok = self.readiness_path.is_none();
        match Process::spawn("hotconf-agent", binary, &self.command.args, &env, &self.log) {
            Ok(process) => self.process = Some(process),
            Err(error) => tracing::warn!(%error, "starting an agent"),
        }
    }
}

/// An HTTP GET of `path` on 127.0.0.1:`port` (an admin server): whether it answered 2xx within
/// half a second.
pub(crate) async fn probe(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut head = [0u8; 16];
        let n = stream.read(&mut head).await.ok()?;
        let line = String::from_utf8_lossy(&head[..n]).into_owned();
        Some(line.split_whitespace().nth(1)?.starts_with('2'))
    };
    tokio::time::timeout(Duration::from_millis(500), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
