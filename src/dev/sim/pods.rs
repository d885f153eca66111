//! A simulated pod's state as the kubelet would report it, pure of the API: its containers
//! (running, crashed and waiting in `CrashLoopBackOff`, restart counts), readiness under a
//! fault, the pod conditions with their transition times, and the `status` it writes.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use sha2::Digest as _;

use super::agents::is_agent;
use super::faults::Fault;

type Time = DateTime<Utc>;

fn rfc3339(t: Time) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn sha(text: &str) -> String {
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Clone, Debug)]
struct Terminated {
    started_at: Time,
    finished_at: Time,
}

/// One container of a simulated pod.
#[derive(Clone, Debug)]
pub(super) struct ContainerSim {
    pub(super) name: String,
    image: String,
    pub(super) agent: bool,
    started_at: Option<Time>,
    pub(super) restarts: i32,
    last_terminated: Option<Terminated>,
    // Since when it waits in CrashLoopBackOff.
    crashed_at: Option<Time>,
    ready: bool,
}

/// A simulated pod: what has happened to it so far.
#[derive(Clone, Debug)]
pub(super) struct PodSim {
    uid: String,
    pub(super) pod_ip: String,
    pub(super) host_ip: String,
    scheduled: bool,
    started_at: Option<Time>,
    // Why its containers have not started (ContainerCreating's message).
    pub(super) creating: Option<String>,
    init_containers: Vec<(String, String)>,
    pub(super) containers: Vec<ContainerSim>,
    conditions: BTreeMap<&'static str, (bool, Time)>,
    fault_since: Option<Time>,
}

/// How often a crash-looping container crashes again.
pub(super) const DEFAULT_CRASH_PERIOD: std::time::Duration = std::time::Duration::from_secs(2);

impl PodSim {
    pub(super) fn new(pod: &Pod, pod_ip: String, host_ip: String) -> PodSim {
        let spec = pod.spec.clone().unwrap_or_default();
        PodSim {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            pod_ip,
            host_ip,
            scheduled: false,
            started_at: None,
            creating: None,
            init_containers: spec
                .init_containers
                .iter()
                .flatten()
                .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
                .collect(),
            containers: spec
                .containers
                .iter()
                .map(|c| ContainerSim {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    agent: is_agent(c),
                    started_at: None,
                    restarts: 0,
                    last_terminated: None,
                    crashed_at: None,
                    ready: false,
                })
                .collect(),
            conditions: BTreeMap::new(),
            fault_since: None,
        }
    }

    pub(super) fn running(&self) -> bool {
        self.started_at.is_some()
    }

    /// Whether its `Ready` condition is True.
    pub(super) fn ready(&self) -> bool {
        self.conditions
            .get("Ready")
            .is_some_and(|(ready, _)| *ready)
    }

    pub(super) fn set_scheduled(&mut self, now: Time) {
        self.scheduled = true;
        self.condition("PodScheduled", true, now);
    }

    /// Its containers start.
    pub(super) fn start(&mut self, now: Time) {
        self.creating = None;
        self.started_at = Some(now);
        for c in &mut self.containers {
            c.started_at = Some(now);
        }
        self.condition("Initialized", true, now);
    }

    /// An agent container's process exited and was started again.
    pub(super) fn agent_restarted(&mut self, name: &str, now: Time) {
        if let Some(c) = self.containers.iter_mut().find(|c| c.name == name) {
            c.last_terminated = c.started_at.map(|started_at| Terminated {
                started_at,
                finished_at: now,
            });
            c.restarts += 1;
            c.started_at = Some(now);
        }
    }

    /// Moves the pod on to `now` under `fault` (when it applies) and sets each container's
    /// readiness; `agent_ready` says whether an agent container's process is ready.
    pub(super) fn advance(
        &mut self,
        now: Time,
        fault: Option<Fault>,
        agent_ready: &dyn Fn(&str) -> bool,
        crash_period: std::time::Duration,
    ) {
        if !self.running() {
            return;
        }
        match fault {
            Some(_) if self.fault_since.is_none() => self.fault_since = Some(now),
            None => self.fault_since = None,
            _ => {}
        }
        let faulted_for = self
            .fault_since
            .and_then(|since| (now - since).to_std().ok())
            .unwrap_or_default();
        let period = chrono::Duration::from_std(crash_period).unwrap_or(chrono::Duration::MAX);
        for c in &mut self.containers {
            if !c.agent {
                match (fault, c.crashed_at) {
                    (Some(Fault::CrashLoop), None) => {
                        c.last_terminated = Some(Terminated {
                            started_at: c.started_at.unwrap_or(now),
                            finished_at: now,
                        });
                        c.crashed_at = Some(now);
                    }
                    (Some(Fault::CrashLoop), Some(crashed)) if now - crashed >= period => {
                        // Restarted after its back-off and exited again at once.
                        c.restarts += 1;
                        c.last_terminated = Some(Terminated {
                            started_at: now,
                            finished_at: now,
                        });
                        c.crashed_at = Some(now);
                    }
                    (Some(Fault::CrashLoop), Some(_)) => {}
                    (_, Some(_)) => {
                        // Recovered: it runs again; its restart count stays.
                        c.crashed_at = None;
                        c.started_at = Some(now);
                    }
                    (_, None) => {}
                }
            }
            c.ready = c.crashed_at.is_none()
                && if c.agent {
                    agent_ready(&c.name)
                } else {
                    match fault {
                        Some(Fault::NeverReady) => false,
                        Some(Fault::NotReadyAfter(after)) => faulted_for < after,
                        _ => true,
                    }
                };
        }
        let ready = self.containers.iter().all(|c| c.ready);
        self.condition("ContainersReady", ready, now);
        self.condition("Ready", ready, now);
    }

    fn condition(&mut self, type_: &'static str, status: bool, now: Time) {
        match self.conditions.get(type_) {
            Some((old, _)) if *old == status => {}
            _ => {
                self.conditions.insert(type_, (status, now));
            }
        }
    }

    /// The pod's `status` as the kubelet would write it.
    pub(super) fn status(&self) -> Value {
        let order = ["PodScheduled", "Initialized", "ContainersReady", "Ready"];
        let conditions: Vec<Value> = order
            .iter()
            .filter_map(|t| {
                let (status, at) = self.conditions.get(t)?;
                Some(json!({
                    "type": t,
                    "status": if *status { "True" } else { "False" },
                    "lastProbeTime": null,
                    "lastTransitionTime": rfc3339(*at),
                    "reason": (!*status && (*t == "Ready" || *t == "ContainersReady")).then_some("ContainersNotReady"),
                }))
            })
            .collect();
        let mut status = json!({
            "phase": if self.running() { "Running" } else { "Pending" },
            "hostIP": self.host_ip,
            "conditions": conditions,
            "containerStatuses": self.containers.iter().map(|c| self.container_status(c)).collect::<Vec<_>>(),
        });
        if let Some(started) = self.started_at {
            status["startTime"] = json!(rfc3339(started));
            status["podIP"] = json!(self.pod_ip);
            status["podIPs"] = json!([{"ip": self.pod_ip}]);
            if !self.init_containers.is_empty() {
                status["initContainerStatuses"] = self
                    .init_containers
                    .iter()
                    .map(|(name, image)| {
                        json!({
                            "name": name, "image": image, "imageID": image_id(image),
                            "containerID": format!("containerd://{}", sha(&format!("{}/{name}/init", self.uid))),
                            "ready": true, "restartCount": 0,
                            "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                "startedAt": rfc3339(started), "finishedAt": rfc3339(started)}},
                        })
                    })
                    .collect();
            }
        }
        status
    }

    fn container_status(&self, c: &ContainerSim) -> Value {
        let state = match (c.started_at, c.crashed_at) {
            (None, _) => {
                json!({"waiting": {"reason": "ContainerCreating", "message": self.creating}})
            }
            (Some(_), Some(_)) => json!({"waiting": {
                "reason": "CrashLoopBackOff",
                "message": format!("back-off restarting failed container {} in pod {}", c.name, self.uid),
            }}),
            (Some(started), None) => json!({"running": {"startedAt": rfc3339(started)}}),
        };
        let mut status = json!({
            "name": c.name,
            "image": c.image,
            "imageID": if c.started_at.is_some() { image_id(&c.image) } else { String::new() },
            "ready": c.ready,
            "started": c.started_at.is_some() && c.crashed_at.is_none(),
            "restartCount": c.restarts,
            "state": state,
            "lastState": {},
        });
        if c.started_at.is_some() {
            status["containerID"] = json!(format!(
                "containerd://{}",
                sha(&format!("{}/{}/{}", self.uid, c.name, c.restarts))
            ));
        }
        if let Some(t) = &c.last_terminated {
            status["lastState"] = json!({"terminated": {
                "exitCode": 1, "reason": "Error",
                "startedAt": rfc3339(t.started_at), "finishedAt": rfc3339(t.finished_at),
            }});
        }
        status
    }
}

fn image_id(image: &str) -> String {
    let repo = image.split('@').next().unwrap_or(image);
    let repo = match repo.rsplit_once(':') {
        Some((r, tag)) if !tag.contains('/') => r,
        _ => repo,
    };
    format!("{repo}@sha256:{}", sha(image))
}

/// The `n`-th pod IP the simulator hands out (10.244.0.0/16, never `.0` or `.255`).
pub(super) fn pod_ip(n: u32) -> String {
    let n = n % (256 * 254);
    format!("10.244.{}.{}", n / 254, n % 254 + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pod() -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "n", "uid": "u1"},
            "spec": {"containers": [
                {"name": "app", "image": "busybox:1.36"},
                {"name": "agent", "image": "ghcr.io/hotconf/hotconf", "args": ["agent"]}
            ]}
        }))
        .unwrap()
    }

    fn t(secs: i64) -> Time {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn cond(status: &Value, type_: &str) -> (String, String) {
        let c = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap();
        (
            c["status"].as_str().unwrap().into(),
            c["lastTransitionTime"].as_str().unwrap().into(),
        )
    }

    const PERIOD: Duration = Duration::from_secs(2);

    #[test]
    fn runs_and_becomes_ready() {
        let mut p = PodSim::new(&pod(), pod_ip(0), "127.0.0.1".into());
        p.set_scheduled(t(0));
        let s = p.status();
        assert_eq!(s["phase"], "Pending");
        assert_eq!(
            s["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ContainerCreating"
        );
        p.start(t(1));
        p.advance(t(1), None, &|_| true, PERIOD);
        let s = p.status();
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.244.0.1");
        assert_eq!(cond(&s, "Ready").0, "True");
        assert_eq!(cond(&s, "PodScheduled").1, rfc3339(t(0)));
        let app = &s["containerStatuses"][0];
        assert_eq!(app["ready"], true);
        assert_eq!(app["started"], true);
        assert_eq!(app["state"]["running"]["startedAt"], rfc3339(t(1)));
        assert!(
            app["containerID"]
                .as_str()
                .unwrap()
                .starts_with("containerd://")
        );
        assert!(
            app["imageID"]
                .as_str()
                .unwrap()
                .starts_with("busybox@sha256:")
        );
        // Nothing changed: the same status, the same transition times.
        p.advance(t(5), None, &|_| true, PERIOD);
        assert_eq!(p.status(), s);
    }

    #[test]
    fn an_unready_agent_holds_the_pod_back() {
        let mut p = PodSim::new(&pod(), pod_ip(1), "h".into());
        p.start(t(0));
        p.advance(t(0), None, &|name| name != "agent", PERIOD);
        let s = p.status();
        assert_eq!(cond(&s, "Ready").0, "False");
        assert_eq!(s["containerStatuses"][1]["ready"], false);
    }

    #[test]
    fn crash_loops_and_recovers() {
        let mut p = PodSim::new(&pod(), pod_ip(2), "h".into());
        p.start(t(0));
        p.advance(t(0), None, &|_| true, PERIOD);
        p.advance(t(10), Some(Fault::CrashLoop), &|_| true, PERIOD);
        let s = p.status();
        let app = &s["containerStatuses"][0];
        assert_eq!(app["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(app["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(app["restartCount"], 0);
        assert_eq!(
            cond(&s, "ContainersReady"),
            ("False".into(), rfc3339(t(10)))
        );
        p.advance(t(11), Some(Fault::CrashLoop), &|_| true, PERIOD);
        assert_eq!(p.status()["containerStatuses"][0]["restartCount"], 0);
        p.advance(t(12), Some(Fault::CrashLoop), &|_| true, PERIOD);
        p.advance(t(14), Some(Fault::CrashLoop), &|_| true, PERIOD);
        let s = p.status();
        assert_eq!(s["containerStatuses"][0]["restartCount"], 2);
        assert_eq!(
            s["containerStatuses"][0]["lastState"]["terminated"]["finishedAt"],
            rfc3339(t(14))
        );
        assert_eq!(
            s["containerStatuses"][1]["restartCount"], 0,
            "the agent runs on"
        );
        p.advance(t(15), None, &|_| true, PERIOD);
        let s = p.status();
        assert_eq!(cond(&s, "Ready").0, "True");
        assert_eq!(s["containerStatuses"][0]["restartCount"], 2);
        assert_eq!(
            s["containerStatuses"][0]["state"]["running"]["startedAt"],
            rfc3339(t(15))
        );
    }

    #[test]
    fn never_ready_and_not_ready_after() {
        let mut p = PodSim::new(&pod(), pod_ip(3), "h".into());
        p.start(t(0));
        p.advance(t(0), Some(Fault::NeverReady), &|_| true, PERIOD);
        assert_eq!(cond(&p.status(), "Ready").0, "False");
        assert_eq!(p.status()["phase"], "Running");

        let after = Some(Fault::NotReadyAfter(Duration::from_secs(5)));
        let mut p = PodSim::new(&pod(), pod_ip(4), "h".into());
        p.start(t(0));
        p.advance(t(0), after, &|_| true, PERIOD);
        assert_eq!(cond(&p.status(), "Ready").0, "True");
        p.advance(t(4), after, &|_| true, PERIOD);
        assert_eq!(cond(&p.status(), "Ready").0, "True");
        p.advance(t(5), after, &|_| true, PERIOD);
        assert_eq!(cond(&p.status(), "Ready"), ("False".into(), rfc3339(t(5))));
    }

    #[test]
    fn hands_out_distinct_ips() {
        let ips: std::collections::HashSet<String> = (0..1000).map(pod_ip).collect();
        assert_eq!(ips.len(), 1000);
        assert_eq!(pod_ip(253), "10.244.0.254");
        assert_eq!(pod_ip(254), "10.244.1.1");
    }
}
