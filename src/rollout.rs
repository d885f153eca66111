//! Rolling a revision out beyond the ConfigMap: restart waves for restart-only keys, consumer
//! status from the agents' `hotconf.dev/applied` reports, and the automatic-rollback decision.
//! Pure functions over what the controller observed.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::crd::{
    AutoRollback, ConsumerStatus, RestartPolicy, RestartStatus, Snapshot, TargetStatus,
    WorkloadKind,
};

/// Target states.
pub mod state {
    /// Not patched yet.
    pub const PENDING: &str = "Pending";
    /// Patched; its controller has not observed the new template yet.
    pub const RESTARTING: &str = "Restarting";
    /// Its controller observed the new template.
    pub const DONE: &str = "Done";
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
}

/// Advances restarts: starts a new round when the newly projected revision (`projected`)
/// differs from the one before in restart keys, marks targets done once their controller
/// observed the stamped template, and patches the next wave (at most `max_concurrent` targets
/// restarting at once). A round in progress goes on when a projection needs no restart, and a
/// new round takes over its keys (its targets restart for the new revision instead).
pub fn restart_step(
    previous: Option<&RestartStatus>,
    projected: Option<(i64, Vec<String>)>,
    workloads: &[Workload],
    policy: Option<&RestartPolicy>,
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
    // Targets follow the workloads that exist now (a selector may match more later).
    let mut targets: Vec<TargetStatus> = workloads
        .iter()
        .map(|w| {
            let old = status
                .targets
                .iter()
                .find(|t| t.kind == kind_name(w.kind) && t.name == w.name);
            let stamped = w.restart_revision == Some(status.revision);
            let state = if stamped && w.observed_generation >= w.generation {
                state::DONE
            } else if stamped {
                state::RESTARTING
            } else {
                old.map(|t| t.state.as_str())
                    .filter(|s| *s == state::DONE)
                    .unwrap_or(state::PENDING)
            };
            TargetStatus {
                kind: kind_name(w.kind).to_string(),
                name: w.name.clone(),
                state: state.to_string(),
            }
        })
        .collect();
    targets.sort_by(|a, b| (&a.kind, &a.name).cmp(&(&b.kind, &b.name)));
    let limit = policy
        .and_then(|p| p.max_concurrent)
        .map(|m| m.max(1) as usize)
        .unwrap_or(usize::MAX);
    let in_flight = targets
        .iter()
        .filter(|t| t.state == state::RESTARTING)
        .count();
    let mut patch = Vec::new();
    for t in targets.iter_mut().filter(|t| t.state == state::PENDING) {
        if in_flight + patch.len() >= limit {
            break;
        }
        if let Some(w) = workloads
            .iter()
            .find(|w| kind_name(w.kind) == t.kind && w.name == t.name)
        {
            patch.push((w.kind, w.name.clone()));
            t.state = state::RESTARTING.to_string();
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
    }
}

/// One consumer pod and its agent's report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumer {
    /// The pod's name.
    pub pod: String,
    /// The revision it applied (the last good one).
    pub revision: Option<i64>,
    /// The error it reported, if any.
    pub error: Option<String>,
    /// The revision its error is about, when it says so.
    pub failed_revision: Option<i64>,
}

impl Consumer {
    /// Reads a pod's `hotconf.dev/applied` annotation.
    pub fn from_annotation(pod: &str, annotation: Option<&str>) -> Consumer {
        let v: Value = annotation
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or(Value::Null);
        Consumer {
            pod: pod.to_string(),
            revision: v.get("revision").and_then(Value::as_i64),
            error: v
                .get("error")
                .and_then(Value::as_str)
                .filter(|e| !e.is_empty())
                .map(String::from),
            failed_revision: v.get("failedRevision").and_then(Value::as_i64),
        }
    }

    // An error counts against `revision` when the agent says it is about that revision, or,
    // from an agent that does not say, when it has not applied that revision cleanly.
    fn failed(&self, revision: i64) -> bool {
        self.error.is_some()
            && match self.failed_revision {
                Some(f) => f == revision,
                None => true,
            }
    }
}

/// Counts the consumers of `revision`.
pub fn consumer_status(revision: i64, consumers: &[Consumer]) -> ConsumerStatus {
    let mut slowest: Vec<String> = consumers
        .iter()
        .filter(|c| c.revision != Some(revision))
        .map(|c| c.pod.clone())
        .collect();
    slowest.sort();
    slowest.truncate(5);
    ConsumerStatus {
        revision,
        selected: consumers.len() as i64,
        updated: consumers
            .iter()
            .filter(|c| c.revision == Some(revision) && c.error.is_none())
            .count() as i64,
        failed: consumers.iter().filter(|c| c.failed(revision)).count() as i64,
        slowest,
    }
}

/// Records in history how many consumers applied each revision they report.
pub fn record_applied(history: &mut [Snapshot], consumers: &[Consumer]) {
    let selected = consumers.len() as i64;
    for snap in history.iter_mut() {
        // Only a clean application counts: a pod that got the file but whose app refused it is
        // not running that revision.
        let count = consumers
            .iter()
            .filter(|c| c.revision == Some(snap.revision) && c.error.is_none())
            .count() as i64;
        if count > snap.applied_by.unwrap_or(0) {
            snap.applied_by = Some(count);
        }
        if selected > 0 && count == selected {
            snap.applied_by_all = true;
        }
    }
}

/// How many failures `maxFailures` allows before rolling back: a count, or a share of the
/// selected consumers (`"50%"`, rounded up, at least 1). Default 1.
pub fn failure_threshold(max_failures: Option<&Value>, selected: i64) -> i64 {
    let threshold = match max_failures {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(1),
        Some(Value::String(s)) => match s.trim().strip_suffix('%') {
            Some(pct) => pct
                .trim()
                .parse::<f64>()
                .map(|p| (p / 100.0 * selected as f64).ceil() as i64)
                .unwrap_or(1),
            None => s.trim().parse().unwrap_or(1),
        },
        _ => 1,
    };
    threshold.max(1)
}

/// Decides whether to roll back automatically: the current revision `current` was projected
/// at `since`; returns the revision to pin and why.
pub fn auto_rollback(
    policy: Option<&AutoRollback>,
    current: i64,
    since: Option<DateTime<Utc>>,
    consumers: &ConsumerStatus,
    history: &[Snapshot],
    now: DateTime<Utc>,
) -> Option<(i64, String)> {
    let policy = policy.filter(|p| p.enabled)?;
    if consumers.selected == 0 || consumers.revision != current {
        return None;
    }
    let threshold = failure_threshold(policy.max_failures.as_ref(), consumers.selected);
    let reason = if consumers.failed >= threshold {
        format!(
            "{} of {} consumers failed to apply revision {current} (maxFailures {threshold})",
            consumers.failed, consumers.selected
        )
    } else if let (Some(deadline), Some(since)) = (policy.progress_deadline_seconds, since) {
        if consumers.updated < consumers.selected
            && now - since > chrono::Duration::seconds(deadline)
        {
            format!(
                "only {} of {} consumers applied revision {current} within {deadline}s",
                consumers.updated, consumers.selected
            )
        } else {
            return None;
        }
    } else {
        return None;
    };
    let target = history
        .iter()
        .filter(|s| s.revision < current && s.applied_by_all)
        .map(|s| s.revision)
        .max()?;
    Some((target, reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy(name: &str, generation: i64, observed: i64, stamp: Option<i64>) -> Workload {
        Workload {
            kind: WorkloadKind::Deployment,
            name: name.into(),
            generation,
            observed_generation: observed,
            restart_revision: stamp,
        }
    }

    #[test]
    fn restarts_roll_in_waves() {
        let policy = RestartPolicy {
            max_concurrent: Some(1),
        };
        let ws = vec![deploy("a", 1, 1, None), deploy("b", 1, 1, None)];
        let step = restart_step(
            None,
            Some((3, vec!["values.workers".into()])),
            &ws,
            Some(&policy),
        );
        assert_eq!(
            step.patch,
            vec![(WorkloadKind::Deployment, "a".to_string())]
        );
        assert_eq!(step.pending, vec!["values.workers"]);
        // a stamped but not observed: b waits.
        let ws = vec![deploy("a", 2, 1, Some(3)), deploy("b", 1, 1, None)];
        let step2 = restart_step(step.status.as_ref(), None, &ws, Some(&policy));
        assert!(step2.patch.is_empty());
        // a observed: b goes.
        let ws = vec![deploy("a", 2, 2, Some(3)), deploy("b", 1, 1, None)];
        let step3 = restart_step(step2.status.as_ref(), None, &ws, Some(&policy));
        assert_eq!(
            step3.patch,
            vec![(WorkloadKind::Deployment, "b".to_string())]
        );
        // both observed: done, nothing pending.
        let ws = vec![deploy("a", 2, 2, Some(3)), deploy("b", 2, 2, Some(3))];
        let step4 = restart_step(step3.status.as_ref(), None, &ws, Some(&policy));
        assert_eq!(step4, RestartStep::default());
    }

    #[test]
    fn without_a_limit_all_restart_at_once_and_hot_keys_restart_nothing() {
        let ws = vec![deploy("a", 1, 1, None), deploy("b", 1, 1, None)];
        let step = restart_step(None, Some((2, vec!["k".into()])), &ws, None);
        assert_eq!(step.patch.len(), 2);
        let none = restart_step(None, Some((2, vec![])), &ws, None);
        assert!(none.patch.is_empty() && none.status.is_none());
    }

    #[test]
    fn a_round_in_progress_survives_a_hot_change_and_hands_its_keys_on() {
        let policy = RestartPolicy {
            max_concurrent: Some(1),
        };
        let ws = vec![deploy("a", 1, 1, None), deploy("b", 1, 1, None)];
        let first = restart_step(None, Some((3, vec!["values.w".into()])), &ws, Some(&policy));
        // Revision 4 changes only hot keys while a restarts: the round for 3 goes on.
        let ws = vec![deploy("a", 2, 2, Some(3)), deploy("b", 1, 1, None)];
        let hot = restart_step(first.status.as_ref(), Some((4, vec![])), &ws, Some(&policy));
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
        );
        let round = back.status.unwrap();
        assert_eq!(round.revision, 2);
        assert_eq!(round.keys, vec!["values.v", "values.w"]);
        assert_eq!(
            back.patch,
            vec![(WorkloadKind::Deployment, "a".to_string())]
        );
        // Targets already stamped for 2 by an earlier round count as done at once.
        let ws = vec![deploy("a", 1, 1, Some(2))];
        let done = restart_step(None, Some((2, vec!["values.w".into()])), &ws, None);
        assert_eq!(done, RestartStep::default());
    }

    fn consumer(pod: &str, revision: i64, error: Option<&str>) -> Consumer {
        Consumer {
            pod: pod.into(),
            revision: Some(revision),
            error: error.map(String::from),
            failed_revision: None,
        }
    }

    #[test]
    fn consumers_are_counted() {
        let cs = vec![
            consumer("p1", 3, None),
            consumer("p2", 2, Some("reload answered 500")),
            consumer("p3", 2, None),
        ];
        let s = consumer_status(3, &cs);
        assert_eq!((s.selected, s.updated, s.failed), (3, 1, 1));
        assert_eq!(s.slowest, vec!["p2", "p3"]);
        let parsed = Consumer::from_annotation(
            "p",
            Some(
                r#"{"kind":"RuntimeConfig","name":"x","revision":2,"hash":"h","at":"t","error":"boom"}"#,
            ),
        );
        assert_eq!(parsed.revision, Some(2));
        assert_eq!(parsed.error.as_deref(), Some("boom"));
        assert_eq!(Consumer::from_annotation("p", None).revision, None);
        // An error about an older revision does not count against the current one.
        let stale = Consumer::from_annotation(
            "p",
            Some(r#"{"revision":1,"at":"t","error":"boom","failedRevision":2}"#),
        );
        assert_eq!(consumer_status(3, std::slice::from_ref(&stale)).failed, 0);
        assert_eq!(consumer_status(2, &[stale]).failed, 1);
    }

    #[test]
    fn thresholds() {
        assert_eq!(failure_threshold(None, 10), 1);
        assert_eq!(failure_threshold(Some(&json!(3)), 10), 3);
        assert_eq!(failure_threshold(Some(&json!("50%")), 3), 2);
        assert_eq!(failure_threshold(Some(&json!("10%")), 3), 1);
    }

    fn snap(revision: i64, all: bool) -> Snapshot {
        Snapshot {
            revision,
            applied_by_all: all,
            ..Default::default()
        }
    }

    #[test]
    fn rolls_back_to_the_newest_revision_every_consumer_applied() {
        let now = Utc::now();
        let policy = AutoRollback {
            enabled: true,
            max_failures: Some(json!(1)),
            progress_deadline_seconds: Some(30),
        };
        let history = vec![snap(1, true), snap(2, true), snap(3, false)];
        let failing = consumer_status(3, &[consumer("p1", 2, Some("500"))]);
        let (target, reason) =
            auto_rollback(Some(&policy), 3, Some(now), &failing, &history, now).unwrap();
        assert_eq!(target, 2);
        assert!(reason.contains("1 of 1"), "{reason}");
        // Nobody failed, but the deadline passed.
        let silent = consumer_status(3, &[consumer("p1", 2, None)]);
        assert_eq!(
            auto_rollback(Some(&policy), 3, Some(now), &silent, &history, now),
            None
        );
        let late = now + chrono::Duration::seconds(31);
        assert_eq!(
            auto_rollback(Some(&policy), 3, Some(now), &silent, &history, late).map(|r| r.0),
            Some(2)
        );
        // Disabled, or no safe target: nothing.
        let off = AutoRollback {
            enabled: false,
            ..policy.clone()
        };
        assert_eq!(
            auto_rollback(Some(&off), 3, Some(now), &failing, &history, now),
            None
        );
        let unsafe_history = vec![snap(1, false), snap(3, false)];
        assert_eq!(
            auto_rollback(Some(&policy), 3, Some(now), &failing, &unsafe_history, now),
            None
        );
    }

    #[test]
    fn applied_counts_are_recorded() {
        let mut history = vec![snap(1, false), snap(2, false)];
        record_applied(
            &mut history,
            &[consumer("a", 2, None), consumer("b", 2, None)],
        );
        assert_eq!(history[1].applied_by, Some(2));
        assert!(history[1].applied_by_all);
        assert!(!history[0].applied_by_all);
        // A pod whose application refused the revision does not count.
        let mut history = vec![snap(3, false)];
        record_applied(
            &mut history,
            &[consumer("a", 3, None), consumer("b", 3, Some("500"))],
        );
        assert_eq!(history[0].applied_by, Some(1));
        assert!(!history[0].applied_by_all);
    }
}
