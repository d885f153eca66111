//! Fault modes a test asks of a simulated pod, through annotations on the pod (or its template),
//! and the gates that say when the fault applies. Pure: parsing and the gate decision.

use std::{collections::BTreeMap, time::Duration};

/// Annotation choosing a pod's fault: `never-ready`, `crash-loop`, `not-ready-after=DURATION`
/// (e.g. `5s`) or `reload-fails`. Set it on a workload's pod template.
pub const FAULT: &str = "sim.hotconf.dev/fault";

/// Annotation gating the fault: it applies only to pods whose own `hotconf.dev/restart-revision`
/// annotation equals this value, i.e. the new pods of a restart rollout to that revision.
pub const FAULT_ON_RESTART_REVISION: &str = "sim.hotconf.dev/fault-on-restart-revision";

/// Annotation gating the fault: it applies only while the pod's agent reports this revision in
/// the pod's `hotconf.dev/applied` annotation (for `reload-fails`: while the agent hands this
/// revision to the app). When the agent applies another revision, the pod recovers.
pub const FAULT_ON_APPLIED_REVISION: &str = "sim.hotconf.dev/fault-on-applied-revision";

/// The pod annotation the operator's restart rollouts stamp on pod templates.
pub const RESTART_REVISION: &str = crate::controller::RESTART_REVISION;

/// What goes wrong in a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Running, but its application containers never become Ready.
    NeverReady,
    /// Its application (non-agent) containers crash every few seconds: `restartCount` grows,
    /// `state.waiting.reason` is `CrashLoopBackOff`, `lastState.terminated` has the exit.
    CrashLoop,
    /// Ready at first, NotReady once the fault has applied for this long.
    NotReadyAfter(Duration),
    /// The stand-in app answers the agent's reload POST with 500.
    ReloadFails,
    /// The stand-in app answers the agent's reload POST, 204, only after this long.
    ReloadSlow(Duration),
}

impl Fault {
    /// Whether the stand-in app plays it (the pod itself runs normally).
    pub fn in_the_app(self) -> bool {
        matches!(self, Fault::ReloadFails | Fault::ReloadSlow(_))
    }
}

/// A fault and its gates, as the annotations declare them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultSpec {
    /// The fault.
    pub fault: Fault,
    /// [`FAULT_ON_RESTART_REVISION`], when set.
    pub on_restart_revision: Option<String>,
    /// [`FAULT_ON_APPLIED_REVISION`], when set.
    pub on_applied_revision: Option<i64>,
}

/// An annotation that does not say a fault the simulator knows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {message}")]
pub struct FaultError {
    /// Which annotation.
    pub annotation: &'static str,
    /// What is wrong with its value.
    pub message: String,
}

impl std::str::FromStr for Fault {
    type Err = FaultError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |message: String| FaultError {
            annotation: FAULT,
            message,
        };
        match s.trim() {
            "never-ready" => Ok(Fault::NeverReady),
            "crash-loop" => Ok(Fault::CrashLoop),
            "reload-fails" => Ok(Fault::ReloadFails),
            other => {
                let timed = |prefix: &str, make: fn(Duration) -> Fault| {
                    other.strip_prefix(prefix).map(|d| {
                        crate::duration::parse(d)
                            .map(make)
                            .map_err(|e| bad(format!("{d:?}: {e}")))
                    })
                };
                timed("not-ready-after=", Fault::NotReadyAfter)
                    .or_else(|| timed("reload-slow=", Fault::ReloadSlow))
                    .unwrap_or_else(|| {
                        Err(bad(format!(
                            "unknown fault {other:?} (never-ready, crash-loop, not-ready-after=DURATION, reload-fails, reload-slow=DURATION)"
                        )))
                    })
            }
        }
    }
}

impl FaultSpec {
    /// The fault the annotations declare; `Ok(None)` without [`FAULT`].
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
    ) -> Result<Option<FaultSpec>, FaultError> {
        let Some(fault) = annotations.get(FAULT) else {
            return Ok(None);
        };
        let on_applied_revision = annotations
            .get(FAULT_ON_APPLIED_REVISION)
            .map(|v| {
                v.trim().parse::<i64>().map_err(|e| FaultError {
                    annotation: FAULT_ON_APPLIED_REVISION,
                    message: format!("{v:?}: {e}"),
                })
            })
            .transpose()?;
        Ok(Some(FaultSpec {
            fault: fault.parse()?,
            on_restart_revision: annotations
                .get(FAULT_ON_RESTART_REVISION)
                .map(|v| v.trim().to_string()),
            on_applied_revision,
        }))
    }

    /// Whether the fault applies to a pod with this `hotconf.dev/restart-revision` whose agent
    /// reports (or hands off) `applied` revision.
    pub fn applies(&self, restart_revision: Option<&str>, applied: Option<i64>) -> bool {
        let restart_ok = self
            .on_restart_revision
            .as_deref()
            .is_none_or(|want| restart_revision.map(str::trim) == Some(want));
        let applied_ok = self
            .on_applied_revision
            .is_none_or(|want| applied == Some(want));
        restart_ok && applied_ok
    }
}

/// The revision in a pod's `hotconf.dev/applied` annotation, if it has one.
pub fn applied_revision(annotations: &BTreeMap<String, String>) -> Option<i64> {
    let text = annotations.get(crate::crd::names::APPLIED)?;
    serde_json::from_str::<serde_json::Value>(text)
        .ok()?
        .get("revision")?
        .as_i64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_fault() {
        assert_eq!("never-ready".parse(), Ok(Fault::NeverReady));
        assert_eq!("crash-loop".parse(), Ok(Fault::CrashLoop));
        assert_eq!("reload-fails".parse(), Ok(Fault::ReloadFails));
        assert_eq!(
            "reload-slow=2s".parse(),
            Ok(Fault::ReloadSlow(Duration::from_secs(2)))
        );
        assert!("reload-slow=soon".parse::<Fault>().is_err());
        assert_eq!(
            "not-ready-after=5s".parse(),
            Ok(Fault::NotReadyAfter(Duration::from_secs(5)))
        );
        assert!("not-ready-after=soon".parse::<Fault>().is_err());
        let e = "explode".parse::<Fault>().unwrap_err();
        assert_eq!(e.annotation, FAULT);
        assert!(e.message.contains("explode"), "{e}");
    }

    #[test]
    fn no_fault_without_the_annotation() {
        assert_eq!(FaultSpec::from_annotations(&annotations(&[])), Ok(None));
        let bad = annotations(&[(FAULT, "crash-loop"), (FAULT_ON_APPLIED_REVISION, "two")]);
        assert_eq!(
            FaultSpec::from_annotations(&bad).unwrap_err().annotation,
            FAULT_ON_APPLIED_REVISION
        );
    }

    #[test]
    fn gates_on_restart_and_applied_revisions() {
        let ungated = FaultSpec::from_annotations(&annotations(&[(FAULT, "never-ready")]))
            .unwrap()
            .unwrap();
        assert!(ungated.applies(None, None));

        let restart = FaultSpec::from_annotations(&annotations(&[
            (FAULT, "crash-loop"),
            (FAULT_ON_RESTART_REVISION, "3"),
        ]))
        .unwrap()
        .unwrap();
        assert!(!restart.applies(None, Some(3)));
        assert!(!restart.applies(Some("2"), None));
        assert!(restart.applies(Some("3"), None));

        let applied = FaultSpec::from_annotations(&annotations(&[
            (FAULT, "crash-loop"),
            (FAULT_ON_APPLIED_REVISION, "4"),
        ]))
        .unwrap()
        .unwrap();
        assert!(!applied.applies(None, None));
        assert!(applied.applies(None, Some(4)));
        assert!(
            !applied.applies(None, Some(5)),
            "recovers on another revision"
        );
    }

    #[test]
    fn reads_the_applied_revision() {
        let a = annotations(&[(
            "hotconf.dev/applied",
            r#"{"kind":"RuntimeConfig","name":"x","revision":7,"hash":"h","at":"t","error":null}"#,
        )]);
        assert_eq!(applied_revision(&a), Some(7));
        assert_eq!(applied_revision(&annotations(&[])), None);
    }
}
