//! Restart waves: which targets to stamp with the revision now, and when a target's rollout has
//! finished, by the rule `kubectl rollout status` applies to each kind.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::crd::{RestartPolicy, RestartStatus, TargetStatus, WorkloadKind};

/// Target states.
pub mod state {
    /// Not stamped yet.
    pub const PENDING: &str = "Pending";
    /// Stamped; its rollout has not finished yet.
    pub const RESTARTING: &str = "Restarting";
    /// Its rollout finished.
    pub const DONE: &str = "Done";
    /// Its rollout did not finish (a progress deadline passed): the round is halted.
    pub const STALLED: &str = "Stalled";
}

/// A restart target as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// Its kind.
    pub kind: WorkloadKind,
    /// Its name.
    pub name: String,
    /// `metadata.generation`.
    pub generation: i64,
    /// `status.observedGeneration`.
    pub observed_generation: i64,
    /// The pod template's `hotconf.dev/restart-revision` annotation.
    pub restart_revision: Option<i64>,
    /// Its rollout's counts.
    pub counts: RolloutCounts,
}

/// What `kubectl rollout status` reads of a workload, in one shape for the three kinds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutCounts {
    /// Pods wanted: `spec.replicas` (default 1), or a DaemonSet's `desiredNumberScheduled`.
    pub desired: i64,
    /// Pods there are (Deployment `status.replicas`; the others: `desired`).
    pub current: i64,
    /// Pods of the new template (`updatedReplicas`, `updatedNumberScheduled`).
    pub updated: i64,
    /// Pods available (`availableReplicas`, `numberAvailable`; a StatefulSet's
    /// `readyReplicas`).
    pub available: i64,
    /// A StatefulSet's pods that need not be updated (`partition`), else 0.
    pub partition: i64,
    /// A StatefulSet's `updateRevision` equals its `currentRevision` (the others: true).
    pub revisions_match: bool,
    /// A StatefulSet or DaemonSet that rolls only when pods are deleted (`OnDelete`).
    pub on_delete: bool,
    /// A Deployment's `Progressing` condition says `ProgressDeadlineExceeded`.
    pub deadline_exceeded: bool,
}

/// How far a workload's rollout is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Finished: every pod runs the current template and is available.
    Finished,
    /// Still rolling; what it waits for.
    Waiting(String),
    /// It will not finish by itself; why.
    Failed(String),
}

impl Workload {
    /// Reads a workload of `kind` from its JSON (`metadata`, `spec`, `status`).
    pub fn parse(kind: WorkloadKind, object: &Value, restart_annotation: &str) -> Workload {
        let int = |path: &str| object.pointer(path).and_then(Value::as_i64);
        let text = |path: &str| object.pointer(path).and_then(Value::as_str);
        let spec_replicas = int("/spec/replicas").unwrap_or(1);
        let counts = match kind {
            WorkloadKind::Deployment => RolloutCounts {
                desired: spec_replicas,
                current: int("/status/replicas").unwrap_or(0),
                updated: int("/status/updatedReplicas").unwrap_or(0),
                available: int("/status/availableReplicas").unwrap_or(0),
                partition: 0,
                revisions_match: true,
                on_delete: false,
                deadline_exceeded: object
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|c| {
                        c.get("type").and_then(Value::as_str) == Some("Progressing")
                            && c.get("reason").and_then(Value::as_str)
                                == Some("ProgressDeadlineExceeded")
                    }),
            },
            WorkloadKind::StatefulSet => RolloutCounts {
                desired: spec_replicas,
                // Replaced in place, one at a time: no old pods beside the new ones.
                current: int("/status/updatedReplicas").unwrap_or(0),
                updated: int("/status/updatedReplicas").unwrap_or(0),
                available: int("/status/readyReplicas").unwrap_or(0),
                partition: int("/spec/updateStrategy/rollingUpdate/partition").unwrap_or(0),
                revisions_match: text("/status/updateRevision").is_some()
                    && text("/status/updateRevision") == text("/status/currentRevision"),
                on_delete: text("/spec/updateStrategy/type") == Some("OnDelete"),
                deadline_exceeded: false,
            },
            WorkloadKind::DaemonSet => {
                let desired = int("/status/desiredNumberScheduled").unwrap_or(0);
                RolloutCounts {
                    desired,
                    current: desired,
                    updated: int("/status/updatedNumberScheduled").unwrap_or(0),
                    available: int("/status/numberAvailable").unwrap_or(0),
                    partition: 0,
                    revisions_match: true,
                    on_delete: text("/spec/updateStrategy/type") == Some("OnDelete"),
                    deadline_exceeded: false,
                }
            }
        };
        Workload {
            kind,
            name: text("/metadata/name").unwrap_or_default().to_string(),
            generation: int("/metadata/generation").unwrap_or(0),
            observed_generation: int("/status/observedGeneration").unwrap_or(0),
            restart_revision: object
                .pointer("/spec/template/metadata/annotations")
                .and_then(|a| a.get(restart_annotation))
                .and_then(Value::as_str)
                .and_then(|r| r.trim().parse().ok()),
            counts,
        }
    }

    /// Its rollout as `kubectl rollout status` judges it. An `OnDelete` workload rolls only
    /// when someone deletes its pods, so it counts as finished once its controller has
    /// observed the new template.
    pub fn progress(&self) -> Progress {
        let c = &self.counts;
        if self.observed_generation < self.generation {
            return Progress::Waiting(
                "waiting for its controller to observe the new template".into(),
            );
        }
        if c.deadline_exceeded {
            return Progress::Failed(format!(
                "{} {:?} exceeded its progress deadline (ProgressDeadlineExceeded)",
                kind_name(self.kind),
                self.name
            ));
        }
        if c.on_delete {
            return Progress::Finished;
        }
        let wanted = (c.desired - c.partition).max(0);
        if c.updated < wanted {
            return Progress::Waiting(format!(
                "{} of {} pods have the new template",
                c.updated, wanted
            ));
        }
        if c.current > c.updated {
            return Progress::Waiting(format!(
                "{} old pods are pending termination",
                c.current - c.updated
            ));
        }
        if c.available < c.desired {
            return Progress::Waiting(format!(
                "{} of {} pods are available",
                c.available, c.desired
            ));
        }
        if !c.revisions_match && c.partition == 0 {
            return Progress::Waiting("waiting for its update revision to become current".into());
        }
        Progress::Finished
    }
}

/// The kind's name as in `TargetStatus.kind`.
pub fn kind_name(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Deployment => "Deployment",
        WorkloadKind::StatefulSet => "StatefulSet",
        WorkloadKind::DaemonSet => "DaemonSet",
    }
}

/// What to do about restarts on this reconcile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RestartStep {
    /// The new restart status (`None` when nothing is in progress).
    pub status: Option<RestartStatus>,
    /// Workloads whose template to stamp with the revision now.
    pub patch: Vec<(WorkloadKind, String)>,
    /// Keys still waiting for a restart.
    pub pending: Vec<String>,
    /// Targets that stalled on this reconcile: `Kind/name: why`.
    pub newly_stalled: Vec<String>,
}

/// Advances restarts: starts a new round when the newly projected revision (`projected`)
/// differs from the one before in restart keys, marks a target done once its rollout has
/// finished, and stamps the next wave (at most `max_concurrent` targets restarting at once). A
/// target that does not finish (its controller gives up, or `progressDeadlineSeconds` passes)
/// stalls, and a stalled target halts the round: nothing more is stamped until it finishes or a
/// new round replaces this one. A round in progress goes on when a projection needs no restart,
/// and a new round takes over its keys (its targets restart for the new revision instead).
pub fn restart_step(
    previous: Option<&RestartStatus>,
    projected: Option<(i64, Vec<String>)>,
    workloads: &[Workload],
    policy: Option<&RestartPolicy>,
    now: DateTime<Utc>,
) -> RestartStep {
    let mut status = match (projected, previous) {
        (Some((revision, mut keys)), previous) if !keys.is_empty() => {
            for k in previous.iter().flat_map(|p| &p.keys) {
                if !keys.contains(k) {
                    keys.push(k.clone());
                }
            }
            RestartStatus {
                revision,
                keys,
                targets: Vec::new(),
            }
        }
        (_, Some(p)) => p.clone(),
        (_, None) => return RestartStep::default(),
    };
    let deadline = policy
        .and_then(|p| p.progress_deadline_seconds)
        .map(chrono::Duration::seconds);
    let stamp_time = now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut newly_stalled = Vec::new();
    // Targets follow the workloads that exist now (a selector may match more later).
    let mut targets: Vec<TargetStatus> = workloads
        .iter()
        .map(|w| {
            let old = status
                .targets
                .iter()
                .find(|t| t.kind == kind_name(w.kind) && t.name == w.name);
            if w.restart_revision != Some(status.revision) {
                let done = old.is_some_and(|t| t.state == state::DONE);
                return TargetStatus {
                    kind: kind_name(w.kind).to_string(),
                    name: w.name.clone(),
                    state: if done { state::DONE } else { state::PENDING }.to_string(),
                    since: old.and_then(|t| t.since.clone()).filter(|_| done),
                    message: None,
                };
            }
            let since = old.and_then(|t| t.since.clone());
            let stamped_at = since
                .as_deref()
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc));
            let (state, message) = match w.progress() {
                Progress::Finished => (state::DONE, None),
                Progress::Failed(why) => (state::STALLED, Some(why)),
                Progress::Waiting(what) => match (deadline, stamped_at) {
                    (Some(d), Some(at)) if now - at > d => (
                        state::STALLED,
                        Some(format!(
                            "its rollout did not finish within progressDeadlineSeconds ({}s): {what}",
                            d.num_seconds()
                        )),
                    ),
                    _ => (state::RESTARTING, Some(what)),
                },
            };
            if state == state::STALLED && old.is_none_or(|t| t.state != state::STALLED) {
                newly_stalled.push(format!(
                    "{}/{}: {}",
                    kind_name(w.kind),
                    w.name,
                    message.as_deref().unwrap_or_default()
                ));
            }
            TargetStatus {
                kind: kind_name(w.kind).to_string(),
                name: w.name.clone(),
                state: state.to_string(),
                // Stamped by an earlier round for the same revision: from now on.
                since: since.or_else(|| Some(stamp_time.clone())),
                message,
            }
        })
        .collect();
    targets.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    let limit = policy
        .and_then(|p| p.max_concurrent)
        .map(|m| m.max(1) as usize)
        .unwrap_or(usize::MAX);
    let halted = targets.iter().any(|t| t.state == state::STALLED);
    let in_flight = targets
        .iter()
        .filter(|t| t.state == state::RESTARTING)
        .count();
    let mut patch = Vec::new();
    for t in targets.iter_mut().filter(|t| t.state == state::PENDING) {
        if halted || in_flight + patch.len() >= limit {
            break;
        }
        if let Some(w) = workloads
            .iter()
            .find(|w| kind_name(w.kind) == t.kind && w.name == t.name)
        {
            patch.push((w.kind, w.name.clone()));
            t.state = state::RESTARTING.to_string();
            t.since = Some(stamp_time.clone());
            t.message = Some("stamped; waiting for its controller".into());
        }
    }
    status.targets = targets;
    let done = status.targets.iter().all(|t| t.state == state::DONE);
    RestartStep {
        pending: if done {
            Vec::new()
        } else {
            status.keys.clone()
        },
        status: (!done).then_some(status),
        patch,
        newly_stalled,
    }
}

/// The first stalled target of a round: `Kind/name: why`.
pub fn stalled(status: &RestartStatus) -> Option<String> {
    status
        .targets
        .iter()
        .find(|t| t.state == state::STALLED)
        .map(|t| {
            format!(
                "{}/{}: {}",
                t.kind,
                t.name,
                t.message.as_deref().unwrap_or("stalled")
            )
        })
}

/// When a target in flight reaches `progressDeadlineSeconds`, if one can.
pub fn next_deadline(
    status: &RestartStatus,
    policy: Option<&RestartPolicy>,
) -> Option<DateTime<Utc>> {
    let deadline = chrono::Duration::seconds(policy?.progress_deadline_seconds?);
    status
        .targets
        .iter()
        .filter(|t| t.state == state::RESTARTING)
        .filter_map(|t| DateTime::parse_from_rfc3339(t.since.as_deref()?).ok())
        .map(|t| t.with_timezone(&Utc) + deadline)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A Deployment of one replica: `observed` of `generation` observed, stamped `stamp`, its
    /// rollout finished when `finished`.
    pub(crate) fn deploy(
        name: &str,
        generation: i64,
        observed: i64,
        stamp: Option<i64>,
    ) -> Workload {
        Workload {
            kind: WorkloadKind::Deployment,
            name: name.into(),
            generation,
            observed_generation: observed,
            restart_revision: stamp,
            counts: RolloutCounts {
                desired: 1,
                current: 1,
                updated: 1,
                available: 1,
                revisions_match: true,
                ..Default::default()
            },
        }
    }

    fn rolling(mut w: Workload) -> Workload {
        w.counts.updated = 0;
        w.counts.current = 2;
        w
    }

    fn policy(max: i32, deadline: Option<i64>) -> RestartPolicy {
        RestartPolicy {
            max_concurrent: Some(max),
            progress_deadline_seconds: deadline,
        }
    }

    #[test]
    fn the_rule_of_kubectl_rollout_status_per_kind() {
        let d = |status: Value| {
            let mut obj = json!({"metadata": {"name": "web", "generation": 2},
                "spec": {"replicas": 3, "template": {"metadata": {"annotations": {"r": "4"}}}}});
            obj["status"] = status;
            Workload::parse(WorkloadKind::Deployment, &obj, "r")
        };
        let done = d(
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
        );
        assert_eq!(done.progress(), Progress::Finished);
        assert_eq!(done.restart_revision, Some(4));
        let unseen = d(
            json!({"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}),
        );
        assert!(matches!(unseen.progress(), Progress::Waiting(_)));
        let surging = d(
            json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 3, "availableReplicas": 3}),
        );
        assert_eq!(
            surging.progress(),
            Progress::Waiting("1 old pods are pending termination".into())
        );
        let unready = d(
            json!({"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 2}),
        );
        assert_eq!(
            unready.progress(),
            Progress::Waiting("2 of 3 pods are available".into())
        );
        let stuck = d(
            json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 1,
            "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]}),
        );
        assert!(
            matches!(stuck.progress(), Progress::Failed(m) if m.contains("ProgressDeadlineExceeded"))
        );

        let s = |status: Value, strategy: Value| {
            let obj = json!({"metadata": {"name": "db", "generation": 3},
                "spec": {"replicas": 2, "updateStrategy": strategy}, "status": status});
            Workload::parse(WorkloadKind::StatefulSet, &obj, "r")
        };
        let rolling_update = json!({"type": "RollingUpdate"});
        let sts_done = s(
            json!({"observedGeneration": 3, "readyReplicas": 2, "updatedReplicas": 2,
            "currentRevision": "db-2", "updateRevision": "db-2"}),
            rolling_update.clone(),
        );
        assert_eq!(sts_done.progress(), Progress::Finished);
        let sts_rolling = s(
            json!({"observedGeneration": 3, "readyReplicas": 2, "updatedReplicas": 2,
            "currentRevision": "db-1", "updateRevision": "db-2"}),
            rolling_update,
        );
        assert!(matches!(sts_rolling.progress(), Progress::Waiting(_)));
        let partitioned = s(
            json!({"observedGeneration": 3, "readyReplicas": 2, "updatedReplicas": 1,
            "currentRevision": "db-1", "updateRevision": "db-2"}),
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 1}}),
        );
        assert_eq!(partitioned.progress(), Progress::Finished);
        let on_delete = s(
            json!({"observedGeneration": 3, "readyReplicas": 2, "updatedReplicas": 0,
            "currentRevision": "db-1", "updateRevision": "db-2"}),
            json!({"type": "OnDelete"}),
        );
        assert_eq!(on_delete.progress(), Progress::Finished);

        let ds = |status: Value| {
            let obj = json!({"metadata": {"name": "agent", "generation": 5}, "spec": {}, "status": status});
            Workload::parse(WorkloadKind::DaemonSet, &obj, "r")
        };
        assert_eq!(
            ds(json!({"observedGeneration": 5, "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 2})).progress(),
            Progress::Finished
        );
        assert_eq!(
            ds(json!({"observedGeneration": 5, "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberAvailable": 1})).progress(),
            Progress::Waiting("1 of 2 pods are available".into())
        );
    }

    #[test]
    fn restarts_roll_in_waves_of_finished_rollouts() {
        let now = Utc::now();
        let policy = policy(1, None);
        let ws = vec![deploy("a", 1, 1, None), deploy("b", 1, 1, None)];
        let step = restart_step(
            None,
            Some((3, vec!["values.workers".into()])),
            &ws,
            Some(&policy),
            now,
        );
        assert_eq!(
            step.patch,
            vec![(WorkloadKind::Deployment, "a".to_string())]
        );
        assert_eq!(step.pending, vec!["values.workers"]);
        // a stamped but not observed: b waits.
        let ws = vec![deploy("a", 2, 1, Some(3)), deploy("b", 1, 1, None)];
        let step2 = restart_step(step.status.as_ref(), None, &ws, Some(&policy), now);
        assert!(step2.patch.is_empty());
        // a observed, but its new pods are not all there: b still waits.
        let ws = vec![rolling(deploy("a", 2, 2, Some(3))), deploy("b", 1, 1, None)];
        let step3 = restart_step(step2.status.as_ref(), None, &ws, Some(&policy), now);
        assert!(step3.patch.is_empty());
        let a = &step3.status.as_ref().unwrap().targets[0];
        assert_eq!(
            (a.state.as_str(), a.message.as_deref()),
            (state::RESTARTING, Some("0 of 1 pods have the new template"))
        );
        // a finished: b goes.
        let ws = vec![deploy("a", 2, 2, Some(3)), deploy("b", 1, 1, None)];
        let step4 = restart_step(step3.status.as_ref(), None, &ws, Some(&policy), now);
        assert_eq!(
            step4.patch,
            vec![(WorkloadKind::Deployment, "b".to_string())]
        );
        // both finished: done, nothing pending.
        let ws = vec![deploy("a", 2, 2, Some(3)), deploy("b", 2, 2, Some(3))];
        let step5 = restart_step(step4.status.as_ref(), None, &ws, Some(&policy), now);
        assert_eq!(step5, RestartStep::default());
    }

    #[test]
    fn a_target_that_does_not_finish_halts_the_round() {
        let now = Utc::now();
        let policy = policy(1, Some(30));
        let ws = vec![deploy("a", 1, 1, None), deploy("b", 1, 1, None)];
        let first = restart_step(None, Some((2, vec!["k".into()])), &ws, Some(&policy), now);
        let ws = vec![rolling(deploy("a", 2, 2, Some(2))), deploy("b", 1, 1, None)];
        let status = first.status.unwrap();
        assert_eq!(
            next_deadline(&status, Some(&policy)),
            Some(
                DateTime::parse_from_rfc3339(status.targets[0].since.as_deref().unwrap())
                    .unwrap()
                    .with_timezone(&Utc)
                    + chrono::Duration::seconds(30)
            )
        );
        let later = now + chrono::Duration::seconds(31);
        let stalled_step = restart_step(Some(&status), None, &ws, Some(&policy), later);
        assert!(stalled_step.patch.is_empty(), "b is never stamped");
        assert_eq!(stalled_step.newly_stalled.len(), 1);
        let round = stalled_step.status.unwrap();
        let why = stalled(&round).unwrap();
        assert!(
            why.starts_with(
                "Deployment/a: its rollout did not finish within progressDeadlineSeconds (30s)"
            ),
            "{why}"
        );
        assert_eq!(stalled_step.pending, vec!["k"]);
        // Still stalled later: no second Event.
        let again = restart_step(Some(&round), None, &ws, Some(&policy), later);
        assert!(again.newly_stalled.is_empty() && again.patch.is_empty());
        // The Deployment's own deadline stalls it too, without a policy deadline.
        let mut gave_up = rolling(deploy("a", 2, 2, Some(2)));
        gave_up.counts.deadline_exceeded = true;
        let ws = vec![gave_up, deploy("b", 1, 1, None)];
        let own = restart_step(Some(&status), None, &ws, Some(&self::policy(1, None)), now);
        assert!(own.patch.is_empty());
        assert!(
            stalled(own.status.as_ref().unwrap())
                .unwrap()
                .contains("ProgressDeadlineExceeded")
        );
        // Once it finishes after all, the round goes on.
        let ws = vec![deploy("a", 2, 2, Some(2)), deploy("b", 1, 1, None)];
        let resumed = restart_step(Some(&round), None, &ws, Some(&policy), later);
        assert_eq!(
            resumed.patch,
            vec![(WorkloadKind::Deployment, "b".to_string())]
        );
    }

    #[test]
    fn without_a_limit_all_restart_at_once_and_hot_keys_restart_nothing() {
        let now = Utc::now();
        let ws = vec![deploy("a", 1, 1, None), deploy("b", 1, 1, None)];
        let step = restart_step(None, Some((2, vec!["k".into()])), &ws, None, now);
        assert_eq!(step.patch.len(), 2);
        let none = restart_step(None, Some((2, vec![])), &ws, None, now);
        assert!(none.patch.is_empty() && none.status.is_none());
    }

    #[test]
    fn a_round_in_progress_survives_a_hot_change_and_hands_its_keys_on() {
        let now = Utc::now();
        let policy = policy(1, None);
        let ws = vec![deploy("a", 1, 1, None), deploy("b", 1, 1, None)];
        let first = restart_step(
            None,
            Some((3, vec!["values.w".into()])),
            &ws,
            Some(&policy),
            now,
        );
        // Revision 4 changes only hot keys while a restarts: the round for 3 goes on.
        let ws = vec![deploy("a", 2, 2, Some(3)), deploy("b", 1, 1, None)];
        let hot = restart_step(
            first.status.as_ref(),
            Some((4, vec![])),
            &ws,
            Some(&policy),
            now,
        );
        assert_eq!(hot.status.as_ref().unwrap().revision, 3);
        assert_eq!(hot.patch, vec![(WorkloadKind::Deployment, "b".to_string())]);
        assert_eq!(hot.pending, vec!["values.w"]);
        // A rollback to 2 changes the restart key back while b restarts: a new round for 2
        // restarts both again and still lists the key.
        let ws = vec![deploy("a", 2, 2, Some(3)), deploy("b", 2, 1, Some(3))];
        let back = restart_step(
            hot.status.as_ref(),
            Some((2, vec!["values.v".into()])),
            &ws,
            Some(&policy),
            now,
        );
        let round = back.status.unwrap();
        assert_eq!(round.revision, 2);
        assert_eq!(round.keys, vec!["values.v", "values.w"]);
        assert_eq!(
            back.patch,
            vec![(WorkloadKind::Deployment, "a".to_string())]
        );
        // Targets already stamped for 2 by an earlier round, their rollout finished, count as
        // done at once.
        let ws = vec![deploy("a", 1, 1, Some(2))];
        let done = restart_step(None, Some((2, vec!["values.w".into()])), &ws, None, now);
        assert_eq!(done, RestartStep::default());
    }
}
