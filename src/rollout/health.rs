//! The consumers of a revision: what each pod's agent reports (`hotconf.dev/applied`) and how
//! the pod fares after applying it. A pod fails revision N when its agent reports an error
//! about N, or when, within the health window after applying N, it goes NotReady, restarts a
//! container or crash-loops.

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt as _;
use serde_json::Value;

use crate::crd::{ConsumerFailure, ConsumerStatus, Snapshot, names};

/// The health window when `spec.rollout.healthWindowSeconds` is not set.
pub const DEFAULT_HEALTH_WINDOW_SECONDS: i64 = 60;
/// At most this many failed pods are named in `.status.consumers.failures`.
pub const MAX_LISTED_FAILURES: usize = 10;

/// One consumer pod: its agent's report and its health.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Consumer {
    /// The pod's name.
    pub pod: String,
    /// The revision it applied (the last good one).
    pub revision: Option<i64>,
    /// The error it reported, if any.
    pub error: Option<String>,
    /// The revision its error is about, when it says so.
    pub failed_revision: Option<i64>,
    /// When it applied `revision`.
    pub applied_at: Option<DateTime<Utc>>,
    /// How the pod is doing.
    pub health: PodHealth,
}

/// What a pod's status says about its health.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodHealth {
    /// The `Ready` condition (unknown: `None`).
    pub ready: Option<bool>,
    /// When the `Ready` condition last changed.
    pub ready_since: Option<DateTime<Utc>>,
    /// A container is waiting in `CrashLoopBackOff`.
    pub crash_looping: bool,
    /// When a container last terminated and was restarted (`lastState.terminated.finishedAt`).
    pub last_restart: Option<DateTime<Utc>>,
    /// The pod's own `hotconf.dev/restart-revision` (the restart round its template is from).
    pub restart_revision: Option<i64>,
    /// Its containers' restarts, all together.
    pub restarts: i32,
    /// What the pod was like when it was first seen with its current report (kept by the
    /// operator's pod watch, which sees the report arrive): its restarts then, and whether it
    /// was Ready. The API's times are whole seconds, too coarse to order a crash against an
    /// application in the same second; the order of the watch's events is not.
    pub at_apply: Option<Baseline>,
}

/// A pod's state when its agent's report was first seen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Baseline {
    /// Its containers' restarts then.
    pub restarts: i32,
    /// Whether it was Ready then.
    pub ready: Option<bool>,
}

impl Consumer {
    /// Keeps the baseline of `earlier` (this pod as last seen) when the report is the same one,
    /// else takes the pod as it is now: the report is new.
    pub fn carry_baseline(&mut self, earlier: Option<&Consumer>) {
        let same_report = earlier.is_some_and(|e| {
            e.revision == self.revision && e.applied_at == self.applied_at && e.error == self.error
        });
        self.health.at_apply = match earlier {
            Some(e) if same_report => e.health.at_apply,
            _ => Some(Baseline {
                restarts: self.health.restarts,
                ready: self.health.ready,
            }),
        };
    }
}

/// Why a consumer failed a revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FailureReason {
    /// Its agent reports an error (the document was refused or the app's reload failed).
    ReloadRefused,
    /// It went NotReady after applying (or, started for the revision, never became Ready).
    NotReady,
    /// A container is crash-looping.
    CrashLooping,
    /// A container restarted.
    Restarted,
}

impl FailureReason {
    /// The reason as `.status.consumers.failures[].reason` says it.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::ReloadRefused => "ReloadRefused",
            FailureReason::NotReady => "NotReady",
            FailureReason::CrashLooping => "CrashLooping",
            FailureReason::Restarted => "Restarted",
        }
    }

    /// The reason in a sentence ("2 crash-looping").
    pub fn describe(self) -> &'static str {
        match self {
            FailureReason::ReloadRefused => "reload refused",
            FailureReason::NotReady => "not ready",
            FailureReason::CrashLooping => "crash-looping",
            FailureReason::Restarted => "container restarted",
        }
    }
}

/// A consumer's failure of a revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Why.
    pub reason: FailureReason,
    /// What was seen.
    pub message: String,
}

/// What consumers are judged against.
#[derive(Clone, Copy, Debug)]
pub struct Judging {
    /// The revision projected.
    pub revision: i64,
    /// `spec.rollout.healthWindowSeconds`.
    pub window: chrono::Duration,
    /// The time of this reconcile.
    pub now: DateTime<Utc>,
    /// The revision of the restart round in progress, if any: while `revision` is rolled out
    /// by restarts, only the pods of the new template are judged by their health (the old
    /// ones have the new file but not its restart-only keys).
    pub restart_round: Option<i64>,
}

impl Judging {
    /// Judging against `revision` with `window_seconds` (default 60).
    pub fn new(revision: i64, window_seconds: Option<i64>, now: DateTime<Utc>) -> Judging {
        Judging {
            revision,
            window: chrono::Duration::seconds(
                window_seconds
                    .unwrap_or(DEFAULT_HEALTH_WINDOW_SECONDS)
                    .max(1),
            ),
            now,
            restart_round: None,
        }
    }
}

fn time(v: Option<&Value>) -> Option<DateTime<Utc>> {
    v.and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

// The API types' timestamps (jiff) as the rest of the operator keeps time (chrono).
fn chrono_time(t: k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
}

impl Consumer {
    /// Reads a pod's `hotconf.dev/applied` annotation (health unknown).
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
            applied_at: time(v.get("at")),
            health: PodHealth::default(),
        }
    }

    /// Reads a pod: its agent's report and its health.
    pub fn from_pod(pod: &Pod) -> Consumer {
        let annotations = pod.annotations();
        let mut consumer = Consumer::from_annotation(
            &pod.name_any(),
            annotations.get(names::APPLIED).map(String::as_str),
        );
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
        let containers = status
            .into_iter()
            .flat_map(|s| s.container_statuses.iter().flatten());
        let mut health = PodHealth {
            ready: ready.map(|c| c.status == "True"),
            ready_since: ready
                .and_then(|c| c.last_transition_time.as_ref())
                .and_then(|t| chrono_time(t.0)),
            restart_revision: annotations
                .get(names::RESTART_REVISION)
                .and_then(|r| r.trim().parse().ok()),
            ..PodHealth::default()
        };
        for c in containers {
            if c.state
                .as_ref()
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.as_deref())
                == Some("CrashLoopBackOff")
            {
                health.crash_looping = true;
            }
            let finished = c
                .last_state
                .as_ref()
                .and_then(|s| s.terminated.as_ref())
                .and_then(|t| t.finished_at.as_ref())
                .and_then(|t| chrono_time(t.0));
            health.last_restart = health.last_restart.max(finished);
            health.restarts = health.restarts.saturating_add(c.restart_count);
        }
        consumer.health = health;
        consumer
    }

    // An error counts against `revision` when the agent says it is about that revision, or,
    // from an agent that does not say, when it has not applied that revision cleanly.
    fn refused(&self, revision: i64) -> bool {
        self.error.is_some()
            && match self.failed_revision {
                Some(f) => f == revision,
                None => true,
            }
    }

    /// Whether, and why, this consumer failed the revision judged. Health signals count only
    /// after the pod applied the revision (strictly later: the API's times are whole seconds)
    /// and within the window; a pod started for the revision (by its restart round) that is
    /// not Ready a whole window after applying it failed too.
    pub fn failure(&self, judging: &Judging) -> Option<Failure> {
        let revision = judging.revision;
        if self.refused(revision) {
            let error = self.error.as_deref().unwrap_or_default();
            return Some(Failure {
                reason: FailureReason::ReloadRefused,
                message: error.chars().take(200).collect(),
            });
        }
        let h = &self.health;
        let started_for_it = h.restart_revision == Some(revision);
        if self.revision != Some(revision)
            || (judging.restart_round == Some(revision) && !started_for_it)
        {
            return None;
        }
        let at = self.applied_at?;
        let in_window =
            |t: Option<DateTime<Utc>>| t.is_some_and(|t| t > at && t <= at + judging.window);
        let seconds = |t: Option<DateTime<Utc>>| t.map_or(0, |t| (t - at).num_seconds());
        // A restart after the application: by the count, when the watch saw the report arrive
        // (and the restart is within the window), else by the restart's time.
        let restarted = match h.at_apply {
            Some(base) => {
                h.restarts > base.restarts
                    && h.last_restart.is_none_or(|t| t <= at + judging.window)
            }
            None => in_window(h.last_restart),
        };
        let went_unready = in_window(h.ready_since)
            || (h.at_apply.is_some_and(|b| b.ready == Some(true))
                && h.ready_since.is_none_or(|t| t <= at + judging.window));
        if h.crash_looping && (restarted || went_unready || started_for_it) {
            return Some(Failure {
                reason: FailureReason::CrashLooping,
                message: format!(
                    "a container is in CrashLoopBackOff ({} restarts) since applying revision {revision}",
                    h.restarts
                ),
            });
        }
        if restarted {
            return Some(Failure {
                reason: FailureReason::Restarted,
                message: format!(
                    "a container restarted {}s after applying revision {revision}",
                    seconds(h.last_restart).max(0)
                ),
            });
        }
        if h.ready == Some(false) {
            if went_unready {
                return Some(Failure {
                    reason: FailureReason::NotReady,
                    message: format!(
                        "NotReady since {}s after applying revision {revision}",
                        seconds(h.ready_since).max(0)
                    ),
                });
            }
            if started_for_it && judging.now - at >= judging.window {
                return Some(Failure {
                    reason: FailureReason::NotReady,
                    message: format!(
                        "not Ready within {}s of starting with revision {revision}",
                        judging.window.num_seconds()
                    ),
                });
            }
        }
        None
    }

    /// When a later look could judge this consumer differently without any change to the pod
    /// (a pod started for the revision reaching the end of its window not Ready).
    pub fn judged_again_at(&self, judging: &Judging) -> Option<DateTime<Utc>> {
        let at = self.applied_at?;
        (self.revision == Some(judging.revision)
            && self.health.restart_revision == Some(judging.revision)
            && self.health.ready == Some(false)
            && judging.now < at + judging.window)
            .then_some(at + judging.window)
    }
}

/// Counts the consumers of the revision judged.
pub fn consumer_status(judging: &Judging, consumers: &[Consumer]) -> ConsumerStatus {
    let revision = judging.revision;
    let mut behind: Vec<&Consumer> = consumers
        .iter()
        .filter(|c| c.revision != Some(revision))
        .collect();
    // The furthest behind first: no report, then the oldest revision.
    behind.sort_by(|a, b| (a.revision, &a.pod).cmp(&(b.revision, &b.pod)));
    let mut failures: Vec<ConsumerFailure> = consumers
        .iter()
        .filter_map(|c| {
            c.failure(judging).map(|f| ConsumerFailure {
                pod: c.pod.clone(),
                reason: f.reason.as_str().to_string(),
                message: f.message,
            })
        })
        .collect();
    failures.sort_by(|a, b| a.pod.cmp(&b.pod));
    let failed = failures.len() as i64;
    let updated = consumers
        .iter()
        .filter(|c| c.revision == Some(revision) && c.error.is_none())
        .filter(|c| c.failure(judging).is_none())
        .count() as i64;
    failures.truncate(MAX_LISTED_FAILURES);
    ConsumerStatus {
        revision,
        selected: consumers.len() as i64,
        updated,
        failed,
        slowest: behind.iter().take(5).map(|c| c.pod.clone()).collect(),
        failures,
    }
}

/// The failures of a count in a phrase: "2 crash-looping, 1 reload refused".
pub fn describe_failures(status: &ConsumerStatus) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    let describe = |reason: &str| -> String {
        [
            FailureReason::ReloadRefused,
            FailureReason::NotReady,
            FailureReason::CrashLooping,
            FailureReason::Restarted,
        ]
        .into_iter()
        .find(|r| r.as_str() == reason)
        .map_or_else(|| reason.to_string(), |r| r.describe().to_string())
    };
    for f in &status.failures {
        match counts.iter_mut().find(|(r, _)| *r == f.reason.as_str()) {
            Some((_, n)) => *n += 1,
            None => counts.push((f.reason.as_str(), 1)),
        }
    }
    counts
        .iter()
        .map(|(reason, n)| format!("{n} {}", describe(reason)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Records in history how many consumers applied each revision they report. Only a clean
/// application counts: a pod that got the file but whose app refused it, or that failed the
/// revision judged by its health, is not running that revision. A revision that every pod
/// applied and that then hurts a pod within the health window loses `appliedByAll`: it is no
/// known-good target for a later automatic rollback.
pub fn record_applied(history: &mut [Snapshot], consumers: &[Consumer], judging: &Judging) {
    let selected = consumers.len() as i64;
    let hurt = consumers.iter().any(|c| c.failure(judging).is_some());
    for snap in history.iter_mut() {
        let count = consumers
            .iter()
            .filter(|c| c.revision == Some(snap.revision) && c.error.is_none())
            .filter(|c| snap.revision != judging.revision || c.failure(judging).is_none())
            .count() as i64;
        if count > snap.applied_by.unwrap_or(0) {
            snap.applied_by = Some(count);
        }
        if snap.revision == judging.revision && hurt {
            snap.applied_by_all = false;
        } else if selected > 0 && count == selected {
            snap.applied_by_all = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-02T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + chrono::Duration::seconds(seconds)
    }

    pub(crate) fn consumer(pod: &str, revision: i64, error: Option<&str>) -> Consumer {
        Consumer {
            pod: pod.into(),
            revision: Some(revision),
            error: error.map(String::from),
            applied_at: Some(t(0)),
            health: PodHealth {
                ready: Some(true),
                ready_since: Some(t(-30)),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn judging(revision: i64, now: i64) -> Judging {
        Judging::new(revision, Some(60), t(now))
    }

    #[test]
    fn consumers_are_counted() {
        let cs = vec![
            consumer("p1", 3, None),
            consumer("p2", 2, Some("reload answered 500")),
            consumer("p3", 2, None),
        ];
        let s = consumer_status(&judging(3, 5), &cs);
        assert_eq!((s.selected, s.updated, s.failed), (3, 1, 1));
        assert_eq!(s.slowest, vec!["p2", "p3"]);
        assert_eq!(s.failures[0].reason, "ReloadRefused");
        assert_eq!(describe_failures(&s), "1 reload refused");
        let parsed = Consumer::from_annotation(
            "p",
            Some(
                r#"{"kind":"RuntimeConfig","name":"x","revision":2,"hash":"h","at":"2026-12-02T10:00:00Z","error":"boom"}"#,
            ),
        );
        assert_eq!(parsed.revision, Some(2));
        assert_eq!(parsed.applied_at, Some(t(0)));
        assert_eq!(parsed.error.as_deref(), Some("boom"));
        assert_eq!(Consumer::from_annotation("p", None).revision, None);
        // An error about an older revision does not count against the current one.
        let stale = Consumer::from_annotation(
            "p",
            Some(r#"{"revision":1,"at":"t","error":"boom","failedRevision":2}"#),
        );
        assert_eq!(
            consumer_status(&judging(3, 5), std::slice::from_ref(&stale)).failed,
            0
        );
        assert_eq!(consumer_status(&judging(2, 5), &[stale]).failed, 1);
    }

    #[test]
    fn a_pod_that_gets_hurt_after_applying_fails_the_revision() {
        let j = judging(3, 20);
        let fine = consumer("ok", 3, None);
        assert_eq!(fine.failure(&j), None);

        let mut looping = consumer("loop", 3, None);
        looping.health.crash_looping = true;
        looping.health.ready = Some(false);
        looping.health.ready_since = Some(t(4));
        looping.health.last_restart = Some(t(15));
        assert_eq!(
            looping.failure(&j).unwrap().reason,
            FailureReason::CrashLooping
        );

        let mut restarted = consumer("restarted", 3, None);
        restarted.health.last_restart = Some(t(10));
        assert_eq!(
            restarted.failure(&j).unwrap().reason,
            FailureReason::Restarted
        );
        // ... but not when the restart came before the application, or after the window.
        restarted.health.last_restart = Some(t(0));
        assert_eq!(restarted.failure(&j), None);
        restarted.health.last_restart = Some(t(61));
        assert_eq!(restarted.failure(&judging(3, 70)), None);

        let mut unready = consumer("unready", 3, None);
        unready.health.ready = Some(false);
        unready.health.ready_since = Some(t(8));
        assert_eq!(unready.failure(&j).unwrap().reason, FailureReason::NotReady);
        // Not ready since before it applied the revision: not this revision's doing...
        unready.health.ready_since = Some(t(-5));
        assert_eq!(unready.failure(&j), None);
        // ... unless it was started for the revision and stays not Ready a whole window.
        unready.health.restart_revision = Some(3);
        assert_eq!(unready.failure(&j), None);
        assert_eq!(unready.judged_again_at(&j), Some(t(60)));
        assert_eq!(
            unready.failure(&judging(3, 60)).unwrap().reason,
            FailureReason::NotReady
        );

        let s = consumer_status(&j, &[fine, looping.clone(), restarted]);
        assert_eq!((s.selected, s.updated, s.failed), (3, 2, 1));
        assert_eq!(s.failures[0].pod, "loop");
        assert_eq!(describe_failures(&s), "1 crash-looping");

        // The same pod, back on revision 2 (a rollback) and fine since: counted updated again.
        let mut recovered = looping;
        recovered.revision = Some(2);
        recovered.applied_at = Some(t(30));
        recovered.health.crash_looping = false;
        recovered.health.ready = Some(true);
        recovered.health.ready_since = Some(t(31));
        let back = consumer_status(&judging(2, 40), &[recovered]);
        assert_eq!((back.updated, back.failed), (1, 0));
    }

    #[test]
    fn the_watch_orders_a_crash_in_the_same_second_as_the_application() {
        let j = judging(3, 5);
        // Applied at 10:00:00.600; the crash at 10:00:00.900 shows as 10:00:00.
        let mut pod = consumer("p", 3, None);
        pod.applied_at = Some(t(0) + chrono::Duration::milliseconds(600));
        pod.health.restarts = 4;
        pod.health.at_apply = Some(Baseline {
            restarts: 4,
            ready: Some(true),
        });
        assert_eq!(pod.failure(&j), None, "nothing since the report");
        pod.health.restarts = 5;
        pod.health.crash_looping = true;
        pod.health.ready = Some(false);
        pod.health.ready_since = Some(t(0));
        pod.health.last_restart = Some(t(0));
        assert_eq!(pod.failure(&j).unwrap().reason, FailureReason::CrashLooping);
        // Crash-looping already when the report of a rollback arrived, and no restart since:
        // not the rolled-back revision's doing.
        pod.health.at_apply = Some(Baseline {
            restarts: 5,
            ready: Some(false),
        });
        assert_eq!(pod.failure(&j), None);

        // The baseline is kept while the report stays, and taken anew with a new report.
        let mut seen = consumer("p", 3, None);
        seen.health.restarts = 1;
        seen.carry_baseline(None);
        let mut later = seen.clone();
        later.health.restarts = 2;
        later.carry_baseline(Some(&seen));
        assert_eq!(later.health.at_apply.unwrap().restarts, 1);
        let mut next = later.clone();
        next.revision = Some(4);
        next.carry_baseline(Some(&later));
        assert_eq!(next.health.at_apply.unwrap().restarts, 2);
    }

    #[test]
    fn while_restarts_roll_only_the_new_template_is_judged_by_health() {
        let mut j = judging(4, 20);
        j.restart_round = Some(4);
        let mut old = consumer("old", 4, None);
        old.health.last_restart = Some(t(5));
        assert_eq!(
            old.failure(&j),
            None,
            "an old pod's restart is not the revision's doing"
        );
        old.health.restart_revision = Some(4);
        assert_eq!(old.failure(&j).unwrap().reason, FailureReason::Restarted);
        // A refused reload counts for every pod.
        let refused = consumer("refused", 4, Some("500"));
        assert_eq!(
            refused.failure(&j).unwrap().reason,
            FailureReason::ReloadRefused
        );
    }

    #[test]
    fn a_pod_is_read_from_its_status() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "annotations": {
                "hotconf.dev/applied": r#"{"revision":3,"at":"2026-12-02T10:00:00Z"}"#,
                "hotconf.dev/restart-revision": "2"}},
            "status": {
                "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-12-02T10:00:04Z"}],
                "containerStatuses": [{"name": "app", "image": "app", "imageID": "", "ready": false, "restartCount": 2,
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "finishedAt": "2026-12-02T10:00:09Z"}}}]}
        }))
        .unwrap();
        let c = Consumer::from_pod(&pod);
        assert_eq!((c.pod.as_str(), c.revision), ("web-1", Some(3)));
        assert_eq!(
            c.health,
            PodHealth {
                ready: Some(false),
                ready_since: Some(t(4)),
                crash_looping: true,
                last_restart: Some(t(9)),
                restart_revision: Some(2),
                restarts: 2,
                at_apply: None,
            }
        );
    }

    fn snap(revision: i64) -> Snapshot {
        Snapshot {
            revision,
            ..Default::default()
        }
    }

    #[test]
    fn applied_counts_are_recorded() {
        let mut history = vec![snap(1), snap(2)];
        let j = judging(2, 5);
        record_applied(
            &mut history,
            &[consumer("a", 2, None), consumer("b", 2, None)],
            &j,
        );
        assert_eq!(history[1].applied_by, Some(2));
        assert!(history[1].applied_by_all);
        assert!(!history[0].applied_by_all);
        // A pod whose application refused the revision, or that got hurt by it, does not count.
        let mut history = vec![snap(3)];
        let mut hurt = consumer("c", 3, None);
        hurt.health.last_restart = Some(t(2));
        record_applied(
            &mut history,
            &[consumer("a", 3, None), consumer("b", 3, Some("500")), hurt],
            &judging(3, 5),
        );
        assert_eq!(history[0].applied_by, Some(1));
        assert!(!history[0].applied_by_all);
        // Applied by every pod, then one got hurt within the window: no longer known-good.
        let mut history = vec![snap(3)];
        let fine = [consumer("a", 3, None), consumer("b", 3, None)];
        record_applied(&mut history, &fine, &judging(3, 5));
        assert!(history[0].applied_by_all);
        let mut hurt = consumer("b", 3, None);
        hurt.health.crash_looping = true;
        hurt.health.last_restart = Some(t(8));
        record_applied(
            &mut history,
            &[consumer("a", 3, None), hurt],
            &judging(3, 10),
        );
        assert!(!history[0].applied_by_all);
        assert_eq!(
            history[0].applied_by,
            Some(2),
            "the most that ever applied it"
        );
    }
}
