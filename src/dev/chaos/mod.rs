//! The chaos run (the `testing` feature): operator replicas with leader election behind a
//! [`FaultProxy`](super::fault_proxy::FaultProxy), writers mutating objects of both kinds, and
//! faults on a schedule (leader SIGKILL and SIGTERM handovers, kube-apiserver and etcd
//! restarts, etcd compaction, the proxy's latency, error bursts, conflicts, resets and silent
//! watch stalls); then the invariants of [`invariants`] over what [`record`] saw, and the
//! figures. `make chaos` (`benches/chaos.rs`) runs it at full scale, `tests/chaos.rs` a short
//! profile.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::PostParams;
use kube::{Api, Client};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};
use serde::Serialize;
use serde_json::json;

use super::control_plane::ControlPlane;
use super::error::Error;
use super::fault_proxy::{FaultHandle, FaultStats};
use super::faults::Stop;
use super::process::Process;

pub mod converge;
pub mod invariants;
pub mod pods;
pub mod record;
pub mod workload;

use invariants::Invariant;
use record::Records;
use workload::Mutations;

/// The users the replicas authenticate as (the control plane must know them:
/// [`Options::users`](super::control_plane::Options::users)); each is also its replica's
/// lease identity, so the audit log and the Lease name the same replica.
pub const REPLICA_USERS: [&str; 3] = ["chaos-0", "chaos-1", "chaos-2"];

/// Every user a chaos run authenticates as: the replicas' and the simulator's (its agents
/// reach the API server as [`pods::SIM_USER`], impersonating their ServiceAccount).
pub fn users() -> Vec<String> {
    REPLICA_USERS
        .iter()
        .chain([&pods::SIM_USER])
        .map(|u| u.to_string())
        .collect()
}

/// The Lease the replicas compete for.
pub const LEASE: &str = "hotconf-chaos";

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL the leader (restarted after the failover).
    LeaderKill,
    /// SIGTERM the leader: it releases the Lease (restarted after the handover).
    Handover,
    /// SIGKILL kube-apiserver and start it again.
    ApiserverRestart,
    /// SIGKILL etcd and start it again.
    EtcdRestart,
    /// Compact etcd to its current revision and reset every proxied connection, so that
    /// watches resume from compacted resourceVersions.
    Compaction,
    /// Added latency on every proxied request.
    Latency,
    /// A burst of 429 Too Many Requests (with Retry-After).
    Burst429,
    /// A burst of 500 Internal Server Error.
    Burst500,
    /// A burst of 503 Service Unavailable.
    Burst503,
    /// 409 Conflicts on writes.
    Conflicts,
    /// Every proxied connection reset, and the next requests' too.
    Resets,
    /// Watch responses stall silently.
    Stall,
    /// SIGKILL one pod's agent (the simulated kubelet starts it again).
    AgentKill,
    /// Cut every agent's API connections (503 and resets) for the hold.
    AgentCut,
    /// Stall every agent's API watch silently.
    AgentStall,
    /// Leave half a document in one pod's volume while its agent's API is cut.
    VolumeTorn,
    /// Remove one pod's volume files while its agent's API is cut.
    VolumeRemoved,
    /// One pod's app refuses every reload for longer than the agent retries.
    ReloadDown,
    /// Every pod's app answers reloads only after 2 s (within the agent's timeout).
    ReloadSlow,
}

impl FaultKind {
    /// Every kind, in schedule order.
    pub const ALL: [FaultKind; 19] = [
        FaultKind::LeaderKill,
        FaultKind::Latency,
        FaultKind::Burst429,
        FaultKind::ApiserverRestart,
        FaultKind::Conflicts,
        FaultKind::Handover,
        FaultKind::Burst503,
        FaultKind::EtcdRestart,
        FaultKind::Resets,
        FaultKind::Burst500,
        FaultKind::Compaction,
        FaultKind::Stall,
        FaultKind::AgentKill,
        FaultKind::AgentCut,
        FaultKind::VolumeTorn,
        FaultKind::ReloadDown,
        FaultKind::AgentStall,
        FaultKind::VolumeRemoved,
        FaultKind::ReloadSlow,
    ];

    /// Whether it is injected on the pod side (agents, volumes, apps).
    pub fn on_pods(self) -> bool {
        matches!(
            self,
            FaultKind::AgentKill
                | FaultKind::AgentCut
                | FaultKind::AgentStall
                | FaultKind::VolumeTorn
                | FaultKind::VolumeRemoved
                | FaultKind::ReloadDown
                | FaultKind::ReloadSlow
        )
    }

    /// Its name (as in `HOTCONF_CHAOS_FAULTS`).
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::LeaderKill => "leader-kill",
            FaultKind::Handover => "handover",
            FaultKind::ApiserverRestart => "apiserver-restart",
            FaultKind::EtcdRestart => "etcd-restart",
            FaultKind::Compaction => "compaction",
            FaultKind::Latency => "latency",
            FaultKind::Burst429 => "burst-429",
            FaultKind::Burst500 => "burst-500",
            FaultKind::Burst503 => "burst-503",
            FaultKind::Conflicts => "conflicts",
            FaultKind::Resets => "resets",
            FaultKind::Stall => "stall",
            FaultKind::AgentKill => "agent-kill",
            FaultKind::AgentCut => "agent-cut",
            FaultKind::AgentStall => "agent-stall",
            FaultKind::VolumeTorn => "volume-torn",
            FaultKind::VolumeRemoved => "volume-removed",
            FaultKind::ReloadDown => "reload-down",
            FaultKind::ReloadSlow => "reload-slow",
        }
    }

    /// The kind of a name.
    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name.trim())
    }
}

/// How big a run is and what it injects.
#[derive(Clone, Debug, Serialize)]
pub struct ChaosOptions {
    /// Objects (half RuntimeConfigs, half PoolBudgets).
    pub objects: usize,
    /// Mutations in all.
    pub mutations: usize,
    /// Writers in parallel.
    pub writers: usize,
    /// Operator replicas (2 or 3).
    pub replicas: usize,
    /// Pods with a real agent sidecar, each following one object (the first ones).
    pub agents: usize,
    /// How many times each fault kind is injected.
    pub rounds: usize,
    /// The fault kinds, in schedule order.
    pub faults: Vec<FaultKind>,
    /// How long a lasting fault (latency, bursts, stall) is held.
    pub hold: Duration,
    /// The pause after each fault.
    pub settle: Duration,
    /// The replicas' `--lease-duration`, seconds.
    pub lease_duration: u64,
    /// The replicas' `--lease-grace`, seconds.
    pub lease_grace: u64,
    /// The replicas' `--watch-idle-timeout`, seconds: the bound on noticing a silent stall
    /// (or a list that hangs) and watching again.
    pub watch_idle_timeout: u64,
    /// The replicas' `--watch-timeout`, seconds (below the idle bound).
    pub watch_timeout: u64,
    /// The bound on convergence after the last fault.
    pub converge_within: Duration,
    /// The operator binary.
    pub operator: PathBuf,
    /// Where the replicas log.
    pub log_dir: PathBuf,
    /// Seed of the writers' choices.
    pub seed: u64,
}

impl ChaosOptions {
    /// The full run: 10,000 mutations over 200 objects, every fault kind 3 times, scaled by
    /// `factor` (`HOTCONF_CHAOS_SCALE`).
    pub fn full(operator: PathBuf, log_dir: PathBuf, factor: f64) -> ChaosOptions {
        let n = |x: usize, min: usize| ((x as f64 * factor).round() as usize).max(min);
        ChaosOptions {
            objects: n(200, 4),
            mutations: n(10_000, 50),
            writers: 8,
            replicas: 3,
            agents: n(10, 2),
            rounds: n(3, 1),
            faults: FaultKind::ALL.to_vec(),
            hold: Duration::from_secs(3),
            settle: Duration::from_secs(2),
            lease_duration: 4,
            lease_grace: 2,
            watch_idle_timeout: 5,
            watch_timeout: 3,
            converge_within: Duration::from_secs(5),
            operator,
            log_dir,
            seed: 16,
        }
    }

    /// The short profile of `make test`: every fault kind once, a few hundred mutations.
    pub fn short(operator: PathBuf, log_dir: PathBuf) -> ChaosOptions {
        ChaosOptions {
            objects: 12,
            mutations: 300,
            writers: 3,
            replicas: 2,
            agents: 3,
            rounds: 1,
            hold: Duration::from_millis(1500),
            settle: Duration::from_millis(1500),
            ..ChaosOptions::full(operator, log_dir, 1.0)
        }
    }

    /// These options with the fault kinds of `HOTCONF_CHAOS_FAULTS` (comma-separated names),
    /// when set.
    pub fn with_faults_from_env(mut self) -> Result<ChaosOptions, Error> {
        if let Ok(names) = std::env::var("HOTCONF_CHAOS_FAULTS")
            && !names.trim().is_empty()
        {
            self.faults = names
                .split(',')
                .map(|n| {
                    FaultKind::parse(n).ok_or_else(|| fault(format!("unknown fault kind {n:?}")))
                })
                .collect::<Result<_, _>>()?;
        }
        Ok(self)
    }

    /// The fault slots of the schedule, in order.
    pub fn schedule(&self) -> Vec<FaultKind> {
        (0..self.rounds)
            .flat_map(|_| self.faults.iter().copied())
            .collect()
    }

    // A rough length of the schedule, for pacing the writers over it.
    fn schedule_length(&self) -> Duration {
        let per = |k: &FaultKind| {
            let fault = match k {
                FaultKind::LeaderKill | FaultKind::Handover => {
                    Duration::from_secs(self.lease_duration)
                }
                FaultKind::ApiserverRestart | FaultKind::EtcdRestart => Duration::from_secs(6),
                FaultKind::Stall => Duration::from_secs(self.watch_idle_timeout),
                FaultKind::AgentKill => Duration::from_secs(1),
                FaultKind::ReloadDown => self.hold.max(Duration::from_secs(4)),
                _ => self.hold,
            };
            fault + self.settle
        };
        self.schedule().iter().map(per).sum()
    }
}

/// One injected fault.
#[derive(Clone, Debug, Serialize)]
pub struct FaultRecord {
    /// Its kind.
    pub kind: FaultKind,
    /// Seconds since the schedule started.
    pub at_s: f64,
    /// How long it took (the restart, the failover, the hold), seconds.
    pub took_s: f64,
    /// What happened.
    pub note: String,
}

/// Figures of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures {
    /// From the end of the last fault (and of the writers) to every object converged, seconds
    /// (`None`: not within the minute waited).
    pub convergence_s: Option<f64>,
    /// Failover after a leader SIGKILL: the kill to another replica holding the Lease, seconds.
    pub failover_s: Vec<f64>,
    /// Graceful handover: the SIGTERM to another replica holding the Lease, seconds.
    pub handover_s: Vec<f64>,
    /// kube-apiserver restarts: the kill to `/readyz` again, seconds.
    pub apiserver_restart_s: Vec<f64>,
    /// etcd restarts: the kill to kube-apiserver's `/readyz` again, seconds.
    pub etcd_restart_s: Vec<f64>,
    /// Silent stalls: from the stall's start to the leader's `/readyz` failing (a stalled
    /// watch noticed), seconds.
    pub stall_detected_s: Vec<f64>,
    /// Silent stalls: from an object created while every watch stalls to its ConfigMap, the
    /// stalled watches having been noticed and replaced, seconds.
    pub stall_recovery_s: Vec<f64>,
    /// Agents SIGKILLed: to the agent running again, seconds.
    pub agent_restart_s: Vec<f64>,
    /// From every object converged to every app holding its current document, seconds
    /// (`None`: not within the 30 s waited, or no agents).
    pub agents_current_s: Option<f64>,
    /// Reloads the apps accepted / refused (a `reload-down` fault).
    pub reloads: (usize, usize),
    /// Lines of the replicas' logs about expired resourceVersions (410 Gone) and relists.
    pub gone_in_logs: usize,
    /// Length of the run (schedule and writers), seconds.
    pub run_s: f64,
    /// Writes by the replicas (audit log, not the Lease), by user.
    pub writes_by_replica: Vec<(String, usize)>,
}

/// The outcome of a run.
#[derive(Debug, Serialize)]
pub struct Report {
    /// What ran.
    pub options: ChaosOptions,
    /// The invariants: each count must be 0.
    pub invariants: Vec<Invariant>,
    /// The figures.
    pub figures: Figures,
    /// What the writers did.
    pub mutations: Mutations,
    /// The faults, in order.
    pub faults: Vec<FaultRecord>,
    /// What the proxy injected.
    pub proxy: FaultStats,
}

fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let idx = ((p / 100.0) * (v.len().max(1) - 1) as f64).round() as usize;
    v.get(idx).copied()
}

impl Report {
    /// Violations over every invariant.
    pub fn violations(&self) -> usize {
        self.invariants.iter().map(|i| i.count).sum()
    }

    /// The table `make chaos` prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let o = &self.options;
        out.push_str(&format!(
            "chaos: {} mutations over {} objects, {} replicas, {} faults ({} kinds x {})\n\n",
            self.mutations.total(),
            o.objects,
            o.replicas,
            self.faults.len(),
            o.faults.len(),
            o.rounds
        ));
        out.push_str("| Invariant | Violations |\n|---|---|\n");
        for i in &self.invariants {
            out.push_str(&format!("| {} | {} |\n", i.name, i.count));
        }
        let f = &self.figures;
        let secs = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2} s"));
        let dist = |v: &[f64]| {
            format!(
                "p50 {} / p99 {} / max {} (n={})",
                secs(percentile(v, 50.0)),
                secs(percentile(v, 99.0)),
                secs(percentile(v, 100.0)),
                v.len()
            )
        };
        out.push_str("\n| Figure | Measured | Target |\n|---|---|---|\n");
        out.push_str(&format!(
            "| Convergence after the last fault (p100) | {} | <= {} s |\n",
            secs(f.convergence_s),
            o.converge_within.as_secs()
        ));
        out.push_str(&format!(
            "| Failover after leader SIGKILL | {} | p99 <= {} s |\n",
            dist(&f.failover_s),
            o.lease_duration + 1
        ));
        out.push_str(&format!(
            "| Graceful handover (SIGTERM) | {} | <= 1 s |\n",
            dist(&f.handover_s)
        ));
        out.push_str(&format!(
            "| Silent stall detected (the leader's /readyz fails) | {} | <= {:.1} s (idle bound + the /version probe's limit) |\n",
            dist(&f.stall_detected_s),
            o.watch_idle_timeout as f64 * 1.5
        ));
        out.push_str(&format!(
            "| Silent stall: a change made during it projected | {} | |\n",
            dist(&f.stall_recovery_s)
        ));
        if o.agents > 0 {
            out.push_str(&format!(
                "| Agent SIGKILL to running again | {} | |\n",
                dist(&f.agent_restart_s)
            ));
            out.push_str(&format!(
                "| Every app on its current document, after the objects converged | {} | |\n",
                secs(f.agents_current_s)
            ));
            out.push_str(&format!(
                "| Reloads accepted / refused by the apps ({} pods) | {} / {} | |\n",
                o.agents, f.reloads.0, f.reloads.1
            ));
        }
        out.push_str(&format!(
            "| kube-apiserver restart to ready | {} | |\n",
            dist(&f.apiserver_restart_s)
        ));
        out.push_str(&format!(
            "| etcd restart to ready | {} | |\n",
            dist(&f.etcd_restart_s)
        ));
        out.push_str(&format!(
            "| 410 Gone / relists in the replicas' logs | {} | |\n",
            f.gone_in_logs
        ));
        let m = &self.mutations;
        let n = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed);
        out.push_str(&format!(
            "| Mutations: valid / invalid stored / invalid refused / pins / releases / rotations | {} / {} / {} / {} / {} / {} | |\n",
            n(&m.valid),
            n(&m.invalid_stored),
            n(&m.invalid_refused),
            n(&m.rollbacks),
            n(&m.releases),
            n(&m.rotations)
        ));
        out.push_str(&format!(
            "| Writer requests retried / mutations given up | {} / {} | |\n",
            n(&m.retried),
            n(&m.failed)
        ));
        let p = &self.proxy;
        out.push_str(&format!(
            "| Proxy: requests / delayed / errors / conflicts / resets / stalled watches | {} / {} / {} / {} / {} / {} | |\n",
            p.requests, p.delayed, p.errors, p.conflicts, p.resets, p.stalled
        ));
        out.push_str(&format!(
            "| Writes by replica (audit log) | {} | |\n",
            f.writes_by_replica
                .iter()
                .map(|(u, n)| format!("{u} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        out.push_str(&format!("| Run length | {:.0} s | |\n", f.run_s));
        for i in self.invariants.iter().filter(|i| i.count > 0) {
            out.push_str(&format!("\n{} ({}):\n", i.name, i.count));
            for e in &i.examples {
                out.push_str(&format!("  - {e}\n"));
            }
        }
        out
    }
}

struct Replica {
    identity: &'static str,
    process: Process,
    // Its admin server's port (`/readyz`).
    admin_port: u16,
}

fn fault(message: impl Into<String>) -> Error {
    Error::Fault {
        component: "chaos".into(),
        message: message.into(),
    }
}

async fn grant_cluster_admin(client: &Client, ns: &str) -> Result<(), Error> {
    let api: Api<ClusterRoleBinding> = Api::all(client.clone());
    for user in REPLICA_USERS.iter().chain([&pods::SIM_USER]) {
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": format!("{ns}-{user}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
        }))
        .expect("a ClusterRoleBinding");
        api.create(&PostParams::default(), &binding).await?;
    }
    Ok(())
}

fn start_replica(
    plane: &ControlPlane,
    o: &ChaosOptions,
    ns: &str,
    proxy_url: &str,
    identity: &'static str,
) -> Result<Replica, Error> {
    let kubeconfig = plane.kubeconfig_via(identity, proxy_url)?;
    let port = super::control_plane::free_port()?;
    let args = vec![
        "operator".to_string(),
        format!("--namespaces={ns}"),
        format!("--admin-addr=127.0.0.1:{port}"),
        "--consumers=false".into(),
        "--leader-elect".into(),
        format!("--lease-namespace={ns}"),
        format!("--lease-name={LEASE}"),
        format!("--lease-identity={identity}"),
        format!("--lease-duration={}", o.lease_duration),
        format!("--lease-grace={}", o.lease_grace),
        format!("--watch-idle-timeout={}", o.watch_idle_timeout),
        format!("--watch-timeout={}", o.watch_timeout),
    ];
    let log = o.log_dir.join(format!("operator-{identity}.log"));
    let process = Process::spawn(
        "hotconf-operator",
        &o.operator,
        &args,
        &[
            ("KUBECONFIG", kubeconfig.as_os_str()),
            (
                "RUST_LOG",
                std::ffi::OsStr::new(
                    "info,kube_client::client::builder=off,hotconf::health=debug,hotconf::leader=debug",
                ),
            ),
        ],
        &log,
    )?;
    Ok(Replica {
        identity,
        process,
        admin_port: port,
    })
}

async fn holder(client: &Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns)
        .get_opt(LEASE)
        .await
        .ok()??
        .spec?
        .holder_identity
}

// Waits until the Lease is held by someone other than `not` (any holder when `None`).
async fn wait_holder(
    client: &Client,
    ns: &str,
    not: Option<&str>,
    timeout: Duration,
) -> Result<String, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(h) = holder(client, ns).await
            && Some(h.as_str()) != not
        {
            return Ok(h);
        }
        if Instant::now() > deadline {
            return Err(fault(format!(
                "no replica other than {not:?} took the Lease within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Faulting<'a> {
    plane: &'a mut ControlPlane,
    replicas: &'a mut [Replica],
    proxy: FaultHandle,
    client: Client,
    ns: String,
    o: &'a ChaosOptions,
    rng: StdRng,
    figures: Figures,
    // Stall faults so far (each creates its probe object).
    stalls: usize,
    // The pod side, when the run has agents.
    pods: Option<pods::PodSide>,
}

impl Faulting<'_> {
    async fn leader(&mut self) -> Result<usize, Error> {
        let holder = wait_holder(&self.client, &self.ns, None, Duration::from_secs(60)).await?;
        self.replicas
            .iter()
            .position(|r| r.identity == holder)
            .ok_or_else(|| fault(format!("the Lease is held by {holder}, no replica of ours")))
    }

    // Until a replica's user is authorized again (kube-apiserver 1.20 is ready before its RBAC
    // cache has synced) and the custom resources are served by the CRD server again (until its
    // aggregator routes them, kube-apiserver 1.20 answers from its own, empty, CRD handler).
    async fn wait_serving(&self) -> Result<(), Error> {
        let client = self.plane.client_as(REPLICA_USERS[0]).await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let rtcs = self.o.objects.div_ceil(2);
        loop {
            let listed = async {
                let n = Api::<crate::crd::RuntimeConfig>::namespaced(client.clone(), &self.ns)
                    .list(&Default::default())
                    .await?
                    .items
                    .len();
                Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &self.ns)
                    .list(&Default::default())
                    .await?;
                Ok::<_, kube::Error>(n)
            };
            if matches!(listed.await, Ok(n) if n == rtcs) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(fault(
                    "the API server did not serve the replicas within 60s",
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn inject(&mut self, kind: FaultKind) -> Result<(f64, String), Error> {
        let started = Instant::now();
        let hold = self.o.hold;
        let proxy = self.proxy.clone();
        let note = match kind {
            kind if kind.on_pods() => match self.pods.as_mut() {
                Some(pods) => pods.inject(kind, &mut self.rng, hold).await?,
                None => "skipped: the run has no agents".into(),
            },
            FaultKind::LeaderKill | FaultKind::Handover => {
                let i = self.leader().await?;
                let old = self.replicas[i].identity;
                let t0 = Instant::now();
                if kind == FaultKind::LeaderKill {
                    self.replicas[i].process.kill();
                } else {
                    self.replicas[i].process.terminate();
                }
                let next =
                    wait_holder(&self.client, &self.ns, Some(old), Duration::from_secs(60)).await?;
                let took = t0.elapsed().as_secs_f64();
                if kind == FaultKind::LeaderKill {
                    self.figures.failover_s.push(took);
                } else {
                    self.figures.handover_s.push(took);
                }
                self.replicas[i].process.stop();
                let respawned = self.replicas[i].process.respawn()?;
                self.replicas[i].process = respawned;
                format!("{old} -> {next} in {took:.2}s; {old} restarted")
            }
            FaultKind::ApiserverRestart | FaultKind::EtcdRestart => {
                let component = if kind == FaultKind::ApiserverRestart {
                    "kube-apiserver"
                } else {
                    "etcd"
                };
                // The replicas meet the API server again only once it serves them, as behind a
                // load balancer that checks readiness: until then the proxy answers 503.
                proxy.cut(true);
                self.plane.restart_component(component, Stop::Kill).await?;
                let took = started.elapsed().as_secs_f64();
                self.wait_serving().await?;
                proxy.cut(false);
                if kind == FaultKind::ApiserverRestart {
                    self.figures.apiserver_restart_s.push(took);
                } else {
                    self.figures.etcd_restart_s.push(took);
                }
                format!(
                    "{component} killed and ready again in {took:.2}s, serving the replicas after {:.2}s",
                    started.elapsed().as_secs_f64()
                )
            }
            FaultKind::Compaction => {
                let revision = self.plane.compact_etcd().await?;
                proxy.reset_all();
                format!("etcd compacted to revision {revision}; proxied connections reset")
            }
            FaultKind::Latency => {
                let ms = self.rng.random_range(200..1000);
                proxy.set_latency(Duration::from_millis(ms));
                tokio::time::sleep(hold).await;
                proxy.set_latency(Duration::ZERO);
                format!("{ms} ms on every request for {hold:?}")
            }
            FaultKind::Burst429 | FaultKind::Burst500 | FaultKind::Burst503 => {
                let status = match kind {
                    FaultKind::Burst429 => 429,
                    FaultKind::Burst500 => 500,
                    _ => 503,
                };
                let count = self.rng.random_range(10..40);
                proxy.fail_next(status, count);
                tokio::time::sleep(hold).await;
                proxy.fail_next(status, 0);
                format!("the next {count} requests answered {status}")
            }
            FaultKind::Conflicts => {
                let count = self.rng.random_range(10..40);
                proxy.conflict_next_writes(count);
                tokio::time::sleep(hold).await;
                proxy.conflict_next_writes(0);
                format!("the next {count} writes answered 409")
            }
            FaultKind::Resets => {
                let count = self.rng.random_range(3..15);
                proxy.reset_all();
                proxy.reset_next(count);
                tokio::time::sleep(hold).await;
                proxy.reset_next(0);
                format!("every connection reset, and the next {count} requests'")
            }
            FaultKind::Stall => {
                let leader = self.leader().await?;
                let admin = self.replicas[leader].admin_port;
                // Ready first (an earlier fault may have left a watch down), so that the
                // failure seen next is this stall's.
                let ready_by = Instant::now() + Duration::from_secs(30);
                while !crate::dev::sim::kubelet::probe(admin, "/readyz").await
                    && Instant::now() < ready_by
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let stalled = Instant::now();
                proxy.stall_watches(true);
                // The leader notices: its /readyz fails once a watch is found stalled.
                let detect = tokio::spawn(async move {
                    let deadline = stalled + Duration::from_secs(60);
                    while crate::dev::sim::kubelet::probe(admin, "/readyz").await {
                        if Instant::now() > deadline {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Some(stalled.elapsed().as_secs_f64())
                });
                // A change the stalled watches cannot deliver: only watching again shows it.
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.stalls += 1;
                let probe = format!("stall-probe-{}", self.stalls);
                let created = Instant::now();
                workload::create_probe(&self.client, &self.ns, &probe).await?;
                tokio::time::sleep(hold).await;
                proxy.stall_watches(false);
                let cms: Api<k8s_openapi::api::core::v1::ConfigMap> =
                    Api::namespaced(self.client.clone(), &self.ns);
                let deadline = created + Duration::from_secs(60);
                while cms.get_opt(&probe).await?.is_none() {
                    if Instant::now() > deadline {
                        return Err(fault(format!("{probe} was not projected within 60s")));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let took = created.elapsed().as_secs_f64();
                self.figures.stall_recovery_s.push(took);
                let detected = detect.await.ok().flatten();
                if let Some(d) = detected {
                    self.figures.stall_detected_s.push(d);
                }
                format!(
                    "watch responses stalled for {hold:?} (they stay stalled); the leader's /readyz failed after {}; {probe}, created meanwhile, projected after {took:.2}s",
                    detected.map_or("(not seen)".to_string(), |d| format!("{d:.2}s"))
                )
            }
            // The pod-side kinds are taken by the first arm.
            _ => unreachable!("{} is a pod-side fault", kind.name()),
        };
        Ok((started.elapsed().as_secs_f64(), note))
    }
}

fn gone_lines(log_dir: &std::path::Path) -> usize {
    std::fs::read_dir(log_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("operator-"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|text| {
            text.lines()
                .filter(|l| {
                    l.contains("410")
                        || l.contains("too old resource version")
                        || l.contains("Expired")
                })
                .count()
        })
        .sum()
}

/// Converges every object, or says which did not within `timeout`.
async fn wait_converged(
    client: &Client,
    ns: &str,
    objects: &[workload::Object],
    timeout: Duration,
) -> Result<(Vec<String>, Vec<invariants::FinalState>), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut pending = Vec::new();
        let mut finals = Vec::new();
        for o in objects {
            match converge::check(client, ns, o).await {
                Ok((verdict, state)) => {
                    pending.extend(verdict);
                    finals.push(state);
                }
                Err(e) => pending.push(format!("{}: {e}", o.name)),
            }
        }
        if pending.is_empty() || Instant::now() > deadline {
            return Ok((pending, finals));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs the chaos suite on `plane` (started with [`REPLICA_USERS`] among its users and the
/// CRDs installed) and checks its invariants.
pub async fn run(plane: &mut ControlPlane, o: &ChaosOptions) -> Result<Report, Error> {
    let say = |s: String| eprintln!("[chaos] {s}");
    std::fs::create_dir_all(&o.log_dir).map_err(|source| Error::Io {
        path: o.log_dir.clone(),
        source,
    })?;
    let client = plane.client().await?;
    let ns = plane.namespace("chaos").await?;
    grant_cluster_admin(&client, &ns).await?;
    let proxy = plane.fault_proxy().await?;
    let records = Records::default();
    let watches = records.watch(&client, &ns, LEASE);
    let objects = Arc::new(workload::objects(o.objects));
    workload::create(&client, &ns, &objects).await?;
    let mut replicas = Vec::new();
    for identity in REPLICA_USERS.into_iter().take(o.replicas.clamp(1, 3)) {
        replicas.push(start_replica(plane, o, &ns, proxy.url(), identity)?);
    }
    say(format!(
        "namespace {ns}: {} objects, {} replicas through the proxy at {}",
        objects.len(),
        replicas.len(),
        proxy.url()
    ));
    let (pending, _) = wait_converged(&client, &ns, &objects, Duration::from_secs(120)).await?;
    if !pending.is_empty() {
        return Err(fault(format!(
            "the objects did not converge before the faults: {:?}",
            &pending[..pending.len().min(5)]
        )));
    }
    let pod_side = pods::PodSide::start(plane, &client, &ns, o, &objects).await?;
    if pod_side.is_some() {
        say(format!(
            "{} pods with an agent sidecar, through their own proxy",
            o.agents.min(objects.len())
        ));
    }

    // Writers, paced over the schedule.
    let started = Instant::now();
    let length = o.schedule_length();
    let mutations = Arc::new(Mutations::default());
    let seq = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..o.writers.max(1))
        .map(|w| {
            let count =
                o.mutations / o.writers.max(1) + usize::from(w < o.mutations % o.writers.max(1));
            let plan = workload::WriterPlan {
                count,
                interval: length / (count.max(1) as u32),
                seed: o.seed * 1000 + w as u64,
            };
            tokio::spawn(workload::write(
                client.clone(),
                ns.clone(),
                objects.clone(),
                plan,
                seq.clone(),
                mutations.clone(),
            ))
        })
        .collect();

    let mut faulting = Faulting {
        plane: &mut *plane,
        replicas: &mut replicas,
        proxy: proxy.handle(),
        client: client.clone(),
        ns: ns.clone(),
        o,
        rng: StdRng::seed_from_u64(o.seed),
        figures: Figures::default(),
        stalls: 0,
        pods: pod_side,
    };
    let mut faults = Vec::new();
    for kind in o.schedule() {
        let at_s = started.elapsed().as_secs_f64();
        let (took_s, note) = faulting.inject(kind).await?;
        say(format!("{at_s:6.1}s {}: {note}", kind.name()));
        faults.push(FaultRecord {
            kind,
            at_s,
            took_s,
            note,
        });
        tokio::time::sleep(o.settle).await;
    }
    faulting.proxy.clear();
    let mut figures = std::mem::take(&mut faulting.figures);
    let pod_side = faulting.pods.take();
    if let Some(pods) = &pod_side {
        pods.proxy().clear();
    }
    for w in writers {
        let _ = w.await;
    }
    let quiet = Instant::now();
    figures.run_s = started.elapsed().as_secs_f64();
    say(format!(
        "faults and writers done after {:.0}s ({} mutations); waiting for convergence",
        figures.run_s,
        mutations.total()
    ));

    // How long until everything converged (up to a minute), and what had not within the bound.
    let mut late = None;
    let finals = loop {
        let (pending, finals) = wait_converged(&client, &ns, &objects, Duration::ZERO).await?;
        let elapsed = quiet.elapsed();
        if pending.is_empty() {
            figures.convergence_s = Some(elapsed.as_secs_f64());
            break finals;
        }
        if elapsed > o.converge_within && late.is_none() {
            late = Some(pending.clone());
        }
        if elapsed > Duration::from_secs(60) {
            break finals;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let late = late.unwrap_or_default();
    // Then every app on its current document.
    let mut handed = Vec::new();
    if let Some(pods) = pod_side {
        let current = pods.wait_current(Duration::from_secs(30)).await;
        figures.agents_current_s = current.ok().map(|d| d.as_secs_f64());
        figures.agent_restart_s = pods.agent_restart_s.clone();
        handed = pods.handed().await;
        pods.stop().await;
    }
    figures.reloads = (
        handed
            .iter()
            .flat_map(|h| &h.reloads)
            .filter(|r| (200..300).contains(&r.status))
            .count(),
        handed
            .iter()
            .flat_map(|h| &h.reloads)
            .filter(|r| !(200..300).contains(&r.status))
            .count(),
    );
    // Let the recorders catch up with the last writes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for w in &watches {
        w.abort();
    }
    for r in &mut replicas {
        r.process.stop();
    }

    let projected = records.projected.lock().expect("lock").clone();
    let status = records.status.lock().expect("lock").clone();
    let lease = records.lease.lock().expect("lock").clone();
    let writes: Vec<(String, super::control_plane::AuditEntry)> = REPLICA_USERS
        .iter()
        .flat_map(|u| {
            plane
                .audit_writes(u)
                .into_iter()
                .filter(|e| e.namespace == ns)
                .map(|e| (u.to_string(), e))
        })
        .collect();
    figures.writes_by_replica = REPLICA_USERS
        .iter()
        .map(|u| {
            let n = writes
                .iter()
                .filter(|(w, e)| w == u && e.resource != "leases" && (200..300).contains(&e.code))
                .count();
            (u.to_string(), n)
        })
        .collect();
    figures.gone_in_logs = gone_lines(&o.log_dir);
    let dump = json!({"projected": projected, "status": status, "lease": lease,
                      "writes": writes.iter().map(|(u, e)| json!([u, e.verb, e.resource, e.subresource, e.name, e.code, e.received])).collect::<Vec<_>>()});
    let _ = std::fs::write(
        o.log_dir.join("records.json"),
        serde_json::to_string(&dump).unwrap_or_default(),
    );
    let terms = invariants::terms(&lease);
    let mut invariants = vec![
        Invariant {
            name: "every object converged within the bound",
            count: late.len(),
            examples: late.iter().take(10).cloned().collect(),
        },
        invariants::no_invalid_projected(&projected),
        invariants::one_hash_per_revision(&projected, &status),
        invariants::revisions_never_go_backwards(&status),
        invariants::history_gap_free(&finals),
        invariants::no_revision_lost(&projected, &status, &finals),
        invariants::one_writer_per_term(&terms, &writes),
    ];
    if o.agents > 0 {
        invariants.extend(pods::invariants(&handed, &projected, &status));
    }
    let stats = proxy.handle().stats();
    let mutations = Arc::try_unwrap(mutations).unwrap_or_default();
    Ok(Report {
        options: o.clone(),
        invariants,
        figures,
        mutations,
        faults,
        proxy: stats,
    })
}
