//! Step 7: the conditions (`Ready`, `Valid`, `RolledBack`, `Paused`, `Progressing`,
//! `RestartPending`) from what the other steps decided, with `observedGeneration` and a
//! `lastTransitionTime` kept while a condition's status holds; and the `ValidationFailed` Event.

use super::project::Projection;
use super::revision::Revision;
use super::rollback::Rollback;
use super::{Context, Draft, now_string, warning};
use crate::crd::{Condition, ConfigStatus};
use crate::kinds::ConfigResource;
use crate::rollout;
use crate::validation::{CONDITION_MESSAGE_BUDGET, EVENT_NOTE_BUDGET, summarize};

/// What the earlier steps decided, as the conditions read it.
pub(crate) struct Outcome<'a> {
    pub revision: &'a Revision,
    pub rollback: &'a Rollback,
    pub projection: &'a Projection,
    /// From the consumers step.
    pub progressing: Option<Condition>,
}

/// Sets `status.conditions`; an invalid spec whose errors changed also gets a Warning Event.
pub(crate) fn decide_conditions<K: ConfigResource>(
    cx: &Context<'_, K>,
    draft: &mut Draft,
    outcome: Outcome<'_>,
) {
    let (prev, status) = (&cx.prev, &draft.status);
    let valid = outcome.revision.valid();
    let paused = cx.obj.paused();
    let valid_cond = if valid {
        cond_true("Valid", "Valid", "the spec is valid")
    } else {
        let errors = &outcome.revision.errors;
        let message = summarize(errors, CONDITION_MESSAGE_BUDGET);
        if find_condition(prev, "Valid").map(|c| (&c.status, &c.message))
            != Some((&"False".to_string(), &message))
        {
            let note = summarize(errors, EVENT_NOTE_BUDGET);
            draft
                .events
                .push(warning("ValidationFailed", "Validate", note));
        }
        draft.plan.outcome.validation_failed = true;
        cond_false("Valid", "ValidationFailed", &message)
    };
    let ready = if let Some(c) = &outcome.projection.conflict {
        cond_false("Ready", "TargetConflict", c)
    } else if paused {
        cond_false(
            "Ready",
            "Paused",
            "spec.paused is true: revisions are recorded but not projected",
        )
    } else if !valid {
        cond_false(
            "Ready",
            "ValidationFailed",
            &match status.current_revision {
                Some(r) => format!("the spec is invalid; revision {r} stays projected"),
                None => "the spec is invalid; nothing is projected".to_string(),
            },
        )
    } else if outcome.projection.projected_now {
        cond_true(
            "Ready",
            if outcome.rollback.pinned.is_some() {
                "RolledBack"
            } else {
                "Projected"
            },
            &format!(
                "revision {} is projected to ConfigMap {}",
                status.current_revision.unwrap_or(0),
                cx.target.name
            ),
        )
    } else {
        cond_false("Ready", "NotProjected", "nothing could be projected")
    };
    let paused_cond = if paused {
        cond_true("Paused", "Paused", "spec.paused is true")
    } else {
        cond_false("Paused", "NotPaused", "spec.paused is false")
    };
    let mut conditions = vec![
        ready,
        valid_cond,
        outcome.rollback.condition.clone(),
        paused_cond,
    ];
    conditions.extend(outcome.progressing);
    if !status.pending_restart.is_empty() || find_condition(prev, "RestartPending").is_some() {
        conditions.push(if status.pending_restart.is_empty() {
            cond_false(
                "RestartPending",
                "NoRestartNeeded",
                "no restart-only key is waiting for a restart",
            )
        } else if let Some(why) = status.restart.as_ref().and_then(rollout::waves::stalled) {
            cond_true(
                "RestartPending",
                "RestartStalled",
                &format!(
                    "the restart round is halted at {why}; changed keys still need a restart: {}",
                    status.pending_restart.join(", ")
                ),
            )
        } else {
            cond_true(
                "RestartPending",
                "RestartKeysChanged",
                &format!(
                    "changed keys need a restart: {}",
                    status.pending_restart.join(", ")
                ),
            )
        });
    }
    draft.status.conditions = conditions
        .into_iter()
        .map(|mut c| {
            c.observed_generation = Some(cx.generation);
            c.last_transition_time = match find_condition(prev, &c.type_) {
                Some(old) if old.status == c.status => old.last_transition_time.clone(),
                _ => now_string(cx.now),
            };
            c
        })
        .collect();
}

/// The condition of `type_` in `status`.
pub(crate) fn find_condition<'a>(status: &'a ConfigStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

fn cond(type_: &str, status: &str, reason: &str, message: &str) -> Condition {
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.into(),
        ..Default::default()
    }
}

/// A condition with status `True`.
pub(crate) fn cond_true(type_: &str, reason: &str, message: &str) -> Condition {
    cond(type_, "True", reason, message)
}

/// A condition with status `False`.
pub(crate) fn cond_false(type_: &str, reason: &str, message: &str) -> Condition {
    cond(type_, "False", reason, message)
}

#[cfg(test)]
mod tests {
    use crate::crd::{ParamType, Parameter, RuntimeConfig, names};
    use crate::reconcile::conditions::find_condition;
    use crate::reconcile::{Observed, plan};

    fn reason(status: &crate::crd::ConfigStatus, type_: &str) -> (String, String) {
        let c = find_condition(status, type_).unwrap();
        (c.status.clone(), c.reason.clone())
    }

    #[test]
    fn ready_says_why_and_transition_times_hold_while_the_status_does() {
        let obj = RuntimeConfig::test().with_value("v", 1);
        let mut observed = Observed::test();
        let p = plan(&obj, &observed);
        assert_eq!(
            reason(&p.status, "Ready"),
            ("True".into(), "Projected".into())
        );
        assert_eq!(reason(&p.status, "Valid"), ("True".into(), "Valid".into()));
        assert_eq!(
            reason(&p.status, "Paused"),
            ("False".into(), "NotPaused".into())
        );
        assert!(
            p.status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(1))
        );
        let first_time = find_condition(&p.status, "Ready")
            .unwrap()
            .last_transition_time
            .clone();

        // Later, still Ready: the transition time is kept.
        let mut obj = obj;
        obj.status = Some(p.status);
        observed.config_map = p.config_map;
        observed.now += chrono::Duration::minutes(5);
        let p = plan(&obj, &observed);
        assert_eq!(
            find_condition(&p.status, "Ready")
                .unwrap()
                .last_transition_time,
            first_time
        );
        assert!(
            !p.status_changed,
            "a converged object plans no status write"
        );

        // Invalid: Ready=False keeps the projected revision, one Warning Event.
        let invalid = obj
            .clone()
            .with_param("v", Parameter::test(ParamType::String))
            .next_generation();
        let p = plan(&invalid, &observed);
        assert_eq!(
            reason(&p.status, "Ready"),
            ("False".into(), "ValidationFailed".into())
        );
        assert!(
            find_condition(&p.status, "Ready")
                .unwrap()
                .message
                .contains("revision 1 stays")
        );
        assert_eq!(
            p.events
                .iter()
                .filter(|e| e.reason == "ValidationFailed")
                .count(),
            1
        );

        // Paused, and pinned by annotation.
        let p = plan(&obj.clone().paused(), &observed);
        assert_eq!(
            reason(&p.status, "Ready"),
            ("False".into(), "Paused".into())
        );
        let pinned = obj.with_annotation(names::ROLLBACK_TO, Some("1"));
        let p = plan(&pinned, &observed);
        assert_eq!(
            reason(&p.status, "Ready"),
            ("True".into(), "RolledBack".into())
        );
        assert_eq!(
            reason(&p.status, "RolledBack"),
            ("True".into(), "RolledBack".into())
        );
    }
}
