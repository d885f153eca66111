//! The pod side of a chaos run: pods whose hotconf agent sidecar is a real process (the
//! [`Simulator`] runs them, with kubelet-layout volumes synced a second after each change and a
//! stand-in app that records every reload), their API traffic through a fault proxy of their
//! own; faults on the agents, their volumes and the app's reload endpoint; and what each app
//! was handed, for the invariants: never a torn, invalid or older document, and the current one
//! at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use rand::{Rng as _, rngs::StdRng};
use serde_json::{Value, json};

use super::invariants::Invariant;
use super::record::{ProjectedSeen, StatusSeen, carries_invalid_marker};
use super::workload::Object;
use super::{ChaosOptions, FaultKind, fault};
use crate::crd::Format;
use crate::dev::control_plane::ControlPlane;
use crate::dev::error::Error;
use crate::dev::fault_proxy::{FaultHandle, FaultProxy};
use crate::dev::sim::app::Reload;
use crate::dev::sim::faults::FAULT;
use crate::dev::sim::{SimOptions, Simulator, volumes, workloads};

/// The user the simulator's agents reach the API server as (through the agents' proxy): it
/// impersonates the pods' ServiceAccount. The control plane must know it.
pub const SIM_USER: &str = "chaos-sim";

/// The data key the agents follow (the chaos objects project JSON).
const FILE: &str = "config.json";

/// The running pod side.
pub struct PodSide {
    sim: Simulator,
    proxy: FaultProxy,
    // (pod, the ConfigMap its agent follows)
    pods: Vec<(String, String)>,
    ns: String,
    client: Client,
    /// Agent restarts seen after a SIGKILL, seconds.
    pub agent_restart_s: Vec<f64>,
}

/// What one pod's app was handed, for the invariants.
#[derive(Clone, Debug)]
pub struct Handed {
    /// The pod.
    pub pod: String,
    /// The ConfigMap (and object) its agent follows.
    pub config_map: String,
    /// Every reload the app saw, in order.
    pub reloads: Vec<Reload>,
    /// The ConfigMap's hash at the end.
    pub final_hash: Option<String>,
}

impl PodSide {
    /// Starts the simulator and one agent pod for each of the first `o.agents` objects, and
    /// waits until every app has its object's document.
    pub async fn start(
        plane: &ControlPlane,
        client: &Client,
        ns: &str,
        o: &ChaosOptions,
        objects: &[Object],
    ) -> Result<Option<PodSide>, Error> {
        if o.agents == 0 {
            return Ok(None);
        }
        let followed: Vec<&str> = objects
            .iter()
            .take(o.agents)
            .map(|o| o.name.as_str())
            .collect();
        create_rbac(client, ns, &workloads::agent_rbac_yaml(&followed)).await?;
        let proxy = plane.fault_proxy().await?;
        let kubeconfig = plane.kubeconfig_via(SIM_USER, proxy.url())?;
        let sim = Simulator::start(
            client.clone(),
            SimOptions {
                start_delay: Duration::from_millis(200),
                volume_sync_delay: Duration::from_secs(1),
                root: Some(o.log_dir.join("pods")),
                agent_binary: Some(o.operator.clone()),
                kubeconfig: Some(kubeconfig),
                namespaces: vec![ns.to_string()],
                ..SimOptions::default()
            },
        )
        .await?;
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let extra = [
            format!("--watch-timeout={}s", o.watch_timeout),
            format!("--watch-idle-timeout={}s", o.watch_idle_timeout),
        ];
        let mut pods = Vec::new();
        for cm in followed {
            let name = format!("agent-{cm}");
            let pod = workloads::agent_pod(&name, cm, FILE, &extra, json!({}));
            api.create(&PostParams::default(), &pod).await?;
            pods.push((name, cm.to_string()));
        }
        let side = PodSide {
            sim,
            proxy,
            pods,
            ns: ns.to_string(),
            client: client.clone(),
            agent_restart_s: Vec::new(),
        };
        side.wait_current(Duration::from_secs(60))
            .await
            .map_err(|late| fault(format!("the agents did not start: {late:?}")))?;
        Ok(Some(side))
    }

    /// The proxy between the agents and the API server.
    pub fn proxy(&self) -> FaultHandle {
        self.proxy.handle()
    }

    /// Injects a pod-side fault on one pod chosen by `rng` (or on every agent's API traffic),
    /// held for `hold`; returns what was done.
    pub async fn inject(
        &mut self,
        kind: FaultKind,
        rng: &mut StdRng,
        hold: Duration,
    ) -> Result<String, Error> {
        let (pod, cm) = self.pods[rng.random_range(0..self.pods.len())].clone();
        let proxy = self.proxy.handle();
        let note = match kind {
            FaultKind::AgentKill => {
                let pid = self.agent_pid(&pod).ok_or_else(|| fault("no agent pid"))?;
                let t0 = Instant::now();
                kill(pid)?;
                let deadline = t0 + Duration::from_secs(60);
                while self.agent_pid(&pod).is_none_or(|p| p == pid) {
                    if Instant::now() > deadline {
                        return Err(fault(format!("{pod}'s agent was not restarted")));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let took = t0.elapsed().as_secs_f64();
                self.agent_restart_s.push(took);
                format!("{pod}'s agent SIGKILLed, running again after {took:.2}s")
            }
            FaultKind::AgentCut => {
                proxy.cut(true);
                tokio::time::sleep(hold).await;
                proxy.cut(false);
                format!("every agent's API connection cut for {hold:?}")
            }
            FaultKind::AgentStall => {
                proxy.stall_watches(true);
                tokio::time::sleep(hold).await;
                proxy.stall_watches(false);
                format!("every agent's API watch stalled for {hold:?} (they stay stalled)")
            }
            FaultKind::VolumeTorn | FaultKind::VolumeRemoved => {
                // Only a volume the agent reads matters: its API is cut meanwhile, so the
                // volume is its source.
                let dir = self
                    .sim
                    .volume_dir(&self.ns, &pod, "source")
                    .ok_or_else(|| fault(format!("{pod} has no source volume")))?;
                proxy.cut(true);
                let what = if kind == FaultKind::VolumeTorn {
                    let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.ns);
                    let current = cms.get(&cm).await?;
                    let text = current
                        .data
                        .as_ref()
                        .and_then(|d| d.get(FILE))
                        .cloned()
                        .unwrap_or_default();
                    let torn: BTreeMap<String, Vec<u8>> =
                        [(FILE.to_string(), text.as_bytes()[..text.len() / 2].to_vec())].into();
                    volumes::write_atomic(&dir, &torn, chrono::Utc::now())
                        .map_err(|e| fault(format!("tearing {}: {e}", dir.display())))?;
                    "half its document"
                } else {
                    remove_contents(&dir)?;
                    "its files removed"
                };
                tokio::time::sleep(hold).await;
                proxy.cut(false);
                format!(
                    "{pod}'s volume left with {what} while its API was cut for {hold:?} (the kubelet rewrites it on the next change)"
                )
            }
            FaultKind::ReloadDown => {
                // Longer than the agent's reload retries: it must announce the document again.
                let down = hold.max(Duration::from_secs(4));
                self.annotate(&pod, Some("reload-fails")).await?;
                tokio::time::sleep(down).await;
                self.annotate(&pod, None).await?;
                format!("{pod}'s app refused every reload for {down:?}")
            }
            FaultKind::ReloadSlow => {
                let pods: Vec<String> = self.pods.iter().map(|(p, _)| p.clone()).collect();
                for p in &pods {
                    self.annotate(p, Some("reload-slow=2s")).await?;
                }
                tokio::time::sleep(hold).await;
                for p in &pods {
                    self.annotate(p, None).await?;
                }
                format!("every app answered reloads 2 s late for {hold:?}")
            }
            other => return Err(fault(format!("{} is not a pod-side fault", other.name()))),
        };
        Ok(note)
    }

    fn agent_pid(&self, pod: &str) -> Option<u32> {
        self.sim
            .agents()
            .into_iter()
            .find(|a| a.pod == pod)
            .and_then(|a| a.pid)
    }

    async fn annotate(&self, pod: &str, fault: Option<&str>) -> Result<(), Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.ns);
        api.patch(
            pod,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {FAULT: fault}}})),
        )
        .await?;
        Ok(())
    }

    /// Waits until every app's last accepted reload is its ConfigMap's current document;
    /// returns how long that took, or the pods that were not there within `timeout`.
    pub async fn wait_current(&self, timeout: Duration) -> Result<Duration, Vec<String>> {
        let t0 = Instant::now();
        loop {
            let mut late = Vec::new();
            for h in self.handed().await {
                let last = last_accepted(&h.reloads).and_then(|r| r.hash.clone());
                if h.final_hash.is_none() || last != h.final_hash {
                    late.push(format!(
                        "{}: the app has {last:?}, {} is at {:?}",
                        h.pod, h.config_map, h.final_hash
                    ));
                }
            }
            if late.is_empty() {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                return Err(late);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What every app was handed, with its ConfigMap's hash now.
    pub async fn handed(&self) -> Vec<Handed> {
        let cms: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.ns);
        let mut out = Vec::new();
        for (pod, cm) in &self.pods {
            let final_hash = cms
                .get_opt(cm)
                .await
                .ok()
                .flatten()
                .and_then(|c| crate::projection::stamped(&c.metadata).1);
            out.push(Handed {
                pod: pod.clone(),
                config_map: cm.clone(),
                reloads: self.sim.reloads(&self.ns, pod),
                final_hash,
            });
        }
        out
    }

    /// Stops the simulator (and with it the agents).
    pub async fn stop(self) {
        self.sim.stop().await;
    }
}

fn kill(pid: u32) -> Result<(), Error> {
    let pid = i32::try_from(pid).map_err(|_| fault("a pid out of range"))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .map_err(|e| fault(format!("killing the agent: {e}")))
}

fn remove_contents(dir: &std::path::Path) -> Result<(), Error> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| fault(format!("reading {}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let removed = if is_dir {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| fault(format!("removing {}: {e}", path.display())))?;
    }
    Ok(())
}

async fn create_rbac(client: &Client, ns: &str, yaml: &str) -> Result<(), Error> {
    let post = PostParams::default();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(doc)
            .map_err(|e| fault(format!("the agent RBAC YAML: {e}")))?;
        let bad = |e: serde_json::Error| fault(format!("the agent RBAC YAML: {e}"));
        match value["kind"].as_str() {
            Some("ServiceAccount") => {
                let sa: ServiceAccount = serde_json::from_value(value).map_err(bad)?;
                Api::<ServiceAccount>::namespaced(client.clone(), ns)
                    .create(&post, &sa)
                    .await?;
            }
            Some("Role") => {
                let role: Role = serde_json::from_value(value).map_err(bad)?;
                Api::<Role>::namespaced(client.clone(), ns)
                    .create(&post, &role)
                    .await?;
            }
            Some("RoleBinding") => {
                let binding: RoleBinding = serde_json::from_value(value).map_err(bad)?;
                Api::<RoleBinding>::namespaced(client.clone(), ns)
                    .create(&post, &binding)
                    .await?;
            }
            other => {
                return Err(fault(format!(
                    "unexpected kind {other:?} in the agent RBAC"
                )));
            }
        }
    }
    Ok(())
}

fn accepted(r: &Reload) -> bool {
    (200..300).contains(&r.status)
}

fn last_accepted(reloads: &[Reload]) -> Option<&Reload> {
    reloads.iter().rev().find(|r| accepted(r))
}

/// The invariants of the pod side, from what the apps were handed and what the ConfigMaps and
/// statuses showed (any document the operator ever projected for an object is in one or the
/// other).
pub fn invariants(
    handed: &[Handed],
    projected: &[ProjectedSeen],
    status: &[StatusSeen],
) -> Vec<Invariant> {
    let mut known: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    // Each ConfigMap's documents in the order seen, consecutive repeats merged.
    let mut sequence: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in projected {
        if let Some(h) = &p.hash {
            known.entry(&p.name).or_default().insert(h);
            let seq = sequence.entry(&p.name).or_default();
            if seq.last() != Some(&h.as_str()) {
                seq.push(h);
            }
        }
    }
    for s in status {
        for (_, h) in &s.history {
            known.entry(&s.name).or_default().insert(h);
        }
    }
    let (mut bad, mut older, mut stale) = (Vec::new(), Vec::new(), Vec::new());
    for h in handed {
        let cm = h.config_map.as_str();
        for r in &h.reloads {
            if let Some(why) = unsound(r, known.get(cm)) {
                bad.push(format!("{}: revision {:?}: {why}", h.pod, r.revision));
            }
        }
        let empty = Vec::new();
        let seq = sequence.get(cm).unwrap_or(&empty);
        let mut at = 0;
        let mut previous: Option<&str> = None;
        for r in h.reloads.iter().filter(|r| accepted(r)) {
            let Some(hash) = r.hash.as_deref() else {
                continue;
            };
            if previous == Some(hash) || !seq.contains(&hash) {
                // Announced again, or a state the recorder did not see (judged above).
                previous = Some(hash);
                continue;
            }
            match seq[at..].iter().position(|s| *s == hash) {
                Some(i) => at += i,
                None => older.push(format!(
                    "{}: handed {hash} (revision {:?}) after {previous:?}, which {cm} showed later",
                    h.pod, r.revision
                )),
            }
            previous = Some(hash);
        }
        let last = last_accepted(&h.reloads).and_then(|r| r.hash.as_deref());
        if h.final_hash.is_none() || last != h.final_hash.as_deref() {
            stale.push(format!(
                "{}: the app ended on {last:?}, {cm} on {:?}",
                h.pod, h.final_hash
            ));
        }
    }
    vec![
        Invariant::new(
            "the agents never handed the app a torn or invalid document",
            bad,
        ),
        Invariant::new("the agents never handed the app an older document", older),
        Invariant::new("every app ended on the current document", stale),
    ]
}

// Why a reload's document is unsound: not what its hash says (torn), not a document the operator
// projected, or an invalid spec's.
fn unsound(r: &Reload, known: Option<&BTreeSet<&str>>) -> Option<String> {
    let Some(text) = &r.content else {
        return Some("the app found no file".into());
    };
    let document = match crate::document::parse(text, Format::Json) {
        Ok(d) => d,
        Err(e) => return Some(format!("the file does not parse: {e}")),
    };
    let hash = crate::document::hash(&document);
    if r.hash.as_deref() != Some(hash.as_str()) {
        return Some(format!(
            "the file hashes to {hash}, the agent announced {:?}",
            r.hash
        ));
    }
    if !known.is_some_and(|k| k.contains(hash.as_str())) {
        return Some(format!("{hash} was never projected"));
    }
    if carries_invalid_marker(&document) {
        return Some("an invalid spec's document".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(v: i64) -> (String, String) {
        let text = serde_json::to_string(&json!({"values": {"v": v}})).unwrap();
        let hash = crate::document::hash(&crate::document::parse(&text, Format::Json).unwrap());
        (text, hash)
    }

    fn reload(v: i64, status: u16) -> Reload {
        let (text, hash) = doc(v);
        Reload {
            revision: Some(v),
            hash: Some(hash),
            file: None,
            content: Some(text),
            status,
            at: chrono::Utc::now(),
        }
    }

    fn seen(v: i64) -> ProjectedSeen {
        ProjectedSeen {
            name: "a".into(),
            revision: Some(v),
            hash: Some(doc(v).1),
            observed: chrono::Utc::now(),
            invalid: false,
        }
    }

    fn counts(reloads: Vec<Reload>, projected: &[ProjectedSeen], end: i64) -> Vec<usize> {
        let handed = [Handed {
            pod: "p".into(),
            config_map: "a".into(),
            reloads,
            final_hash: Some(doc(end).1),
        }];
        invariants(&handed, projected, &[])
            .iter()
            .map(|i| i.count)
            .collect()
    }

    #[test]
    fn sound_hand_offs_in_order_count_nothing() {
        // 1, 2, a pin back to 1, then 3; the app refused 2 once and took it again.
        let projected = [seen(1), seen(2), seen(1), seen(3)];
        let reloads = vec![
            reload(1, 204),
            reload(2, 500),
            reload(2, 204),
            reload(1, 204),
            reload(3, 204),
        ];
        assert_eq!(counts(reloads, &projected, 3), vec![0, 0, 0]);
    }

    #[test]
    fn torn_older_and_stale_hand_offs_are_counted() {
        let projected = [seen(1), seen(2), seen(3)];
        let mut torn = reload(2, 204);
        torn.content = Some(torn.content.unwrap()[..5].to_string());
        assert_eq!(counts(vec![torn], &projected, 2)[0], 1);
        assert_eq!(
            counts(vec![reload(3, 204), reload(1, 204)], &projected, 3),
            vec![0, 1, 1],
            "1 after 3 is older, and the app ended on 1"
        );
        assert_eq!(
            counts(vec![reload(9, 204)], &projected, 3)[0],
            1,
            "never projected"
        );
    }
}
