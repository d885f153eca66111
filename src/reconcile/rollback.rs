//! Step 2: the rollback pin. The `hotconf.dev/rollback-to` annotation, or the consumers calling
//! for an automatic rollback of the latest revision, decide which revision (if any) is pinned;
//! the step records the pin in the status, says so in Events, and names the `RolledBack`
//! condition.

use chrono::{DateTime, Utc};
use kube::ResourceExt;

use super::conditions::{cond_false, cond_true, find_condition};
use super::{Context, Draft, normal, warning};
use crate::crd::{Condition, RollbackStatus, names};
use crate::history::{self, RollbackDecision};
use crate::kinds::ConfigResource;
use crate::rollout;

/// What the rollback step decided.
#[derive(Debug)]
pub(crate) struct Rollback {
    /// The revision to project instead of the latest one, while a pin holds (an unknown
    /// target keeps an earlier pin).
    pub pinned: Option<i64>,
    /// The `RolledBack` condition.
    pub condition: Condition,
}

/// Decides the pin: what the annotation asks for, released when it is removed or the spec moves
/// on, or (without an annotation, on the latest revision) an automatic pin when the consumers
/// reject what is projected. Also counts which revisions the consumers applied.
pub(crate) fn decide_rollback<K: ConfigResource>(
    cx: &Context<'_, K>,
    draft: &mut Draft,
) -> Rollback {
    let (obj, prev, generation) = (cx.obj, &cx.prev, cx.generation);
    let annotation = obj.annotations().get(names::ROLLBACK_TO).cloned();
    let mut decision = history::decide_rollback(
        annotation.as_deref(),
        prev.rollback.as_ref(),
        generation,
        &draft.status.history,
        draft.status.latest_revision,
    );
    let auto_reason = auto_rollback(cx, draft, &mut decision);
    let status = &mut draft.status;
    match decision {
        RollbackDecision::Pin {
            target,
            pinned_generation,
        } => {
            // An automatic pin, new or held (an annotation takes over from it).
            let auto = match (&auto_reason, &annotation, &prev.rollback) {
                (Some(reason), _, _) => Some(reason.clone()),
                (None, None, Some(p)) if p.automatic => p.reason.clone().or(Some(String::new())),
                _ => None,
            };
            let requested = match &auto {
                Some(_) => "auto".to_string(),
                None => annotation.unwrap_or_default(),
            };
            if prev.rollback.as_ref().map(|p| p.target_revision) != Some(target) {
                draft.plan.outcome.rolled_back = true;
                draft.plan.outcome.rolled_back_automatically = auto.is_some();
                draft.events.push(match &auto {
                    Some(reason) => warning(
                        "AutoRolledBack",
                        "Rollback",
                        format!("revision {target} pinned automatically: {reason}"),
                    ),
                    None => normal(
                        "RolledBack",
                        "Rollback",
                        format!(
                            "revision {target} pinned by {}={requested}{}",
                            names::ROLLBACK_TO,
                            super::rollback_requester(obj)
                                .map(|by| format!(" (set by {by})"))
                                .unwrap_or_default()
                        ),
                    ),
                });
            }
            status.rollback = Some(RollbackStatus {
                target_revision: target,
                pinned_generation,
                requested: requested.clone(),
                automatic: auto.is_some(),
                reason: auto.clone().filter(|r| !r.is_empty()),
            });
            let condition = match &auto {
                Some(reason) => cond_true(
                    "RolledBack",
                    "AutoRolledBack",
                    &format!(
                        "revision {target} is pinned automatically ({reason}); a new spec generation releases it"
                    ),
                ),
                None => cond_true(
                    "RolledBack",
                    "RolledBack",
                    &format!(
                        "revision {target} is pinned by {}={requested}; remove the annotation or change the spec to release it",
                        names::ROLLBACK_TO
                    ),
                ),
            };
            Rollback {
                pinned: Some(target),
                condition,
            }
        }
        RollbackDecision::ReleasedByRemoval { was } => {
            status.rollback = None;
            draft.events.push(normal(
                "RollbackReleased",
                "Release",
                format!("the rollback to revision {was} was released: the annotation was removed"),
            ));
            not_rolled_back()
        }
        RollbackDecision::ReleasedBySpecChange { was } => {
            status.rollback = None;
            draft.plan.remove_rollback_annotation =
                obj.annotations().contains_key(names::ROLLBACK_TO);
            draft.events.push(normal(
                "RollbackReleased",
                "Release",
                format!(
                    "the spec changed (generation {generation}) while revision {was} was pinned: the new spec wins and {} was removed",
                    names::ROLLBACK_TO
                ),
            ));
            not_rolled_back()
        }
        RollbackDecision::TargetMissing { requested } => {
            let available: Vec<String> = status
                .history
                .iter()
                .map(|s| s.revision.to_string())
                .collect();
            // The condition says what is wrong and nothing that moves on its own: the history
            // is trimmed after this step, so a list of revisions here would differ from the
            // next reconcile's and the status would never settle (the chaos suite found it).
            // The Warning names what is available.
            let mut message = format!(
                "{}={requested} names no revision in history (see status.history)",
                names::ROLLBACK_TO,
            );
            // Everything stays as it is, an earlier pin included: the condition still says the
            // object is rolled back, and to what.
            let pinned = prev.rollback.as_ref().map(|p| p.target_revision);
            let condition = match pinned {
                Some(revision) => {
                    message.push_str(&format!("; revision {revision} stays pinned"));
                    cond_true("RolledBack", "RollbackTargetMissing", &message)
                }
                None => cond_false("RolledBack", "RollbackTargetMissing", &message),
            };
            if find_condition(prev, "RolledBack").map(|c| (&c.reason, &c.message))
                != Some((&"RollbackTargetMissing".to_string(), &message))
            {
                draft.events.push(warning(
                    "RollbackTargetMissing",
                    "Rollback",
                    format!(
                        "{}={requested} names no revision in history (available: {})",
                        names::ROLLBACK_TO,
                        if available.is_empty() {
                            "none".to_string()
                        } else {
                            available.join(", ")
                        }
                    ),
                ));
            }
            Rollback { pinned, condition }
        }
        RollbackDecision::None => {
            status.rollback = None;
            not_rolled_back()
        }
    }
}

fn not_rolled_back() -> Rollback {
    Rollback {
        pinned: None,
        condition: cond_false("RolledBack", "NotRolledBack", "no rollback is pinned"),
    }
}

/// Records which revisions the consumers of what is projected applied, and, when nothing else
/// is pinned and the latest revision is projected, turns `decision` into an automatic pin if
/// the consumers reject it (the reason is returned).
fn auto_rollback<K: ConfigResource>(
    cx: &Context<'_, K>,
    draft: &mut Draft,
    decision: &mut RollbackDecision,
) -> Option<String> {
    let (Some(consumers), Some(current)) = (&cx.observed.consumers, cx.prev.current_revision)
    else {
        return None;
    };
    let judging = super::consumers::judging(cx, current, cx.prev.restart.as_ref());
    let status = &mut draft.status;
    rollout::record_applied(&mut status.history, consumers, &judging);
    let counted = rollout::consumer_status(&judging, consumers);
    if *decision != RollbackDecision::None || status.latest_revision != Some(current) {
        return None;
    }
    let since = status
        .history
        .iter()
        .find(|s| s.revision == current)
        .and_then(|s| DateTime::parse_from_rfc3339(&s.created_at).ok())
        .map(|t| t.with_timezone(&Utc));
    let policy = cx.obj.rollout().and_then(|r| r.auto_rollback.as_ref());
    let (target, reason) =
        rollout::auto_rollback(policy, current, since, &counted, &status.history, cx.now)?;
    *decision = RollbackDecision::Pin {
        target,
        pinned_generation: cx.generation,
    };
    Some(reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RuntimeConfig;
    use crate::reconcile::{Observed, Plan, plan};

    /// Reconciles `obj` until it is projected at revision `n` (one change per revision).
    fn at_revision(n: i64) -> RuntimeConfig {
        let mut obj = RuntimeConfig::test();
        let mut observed = Observed::test();
        for i in 1..=n {
            obj = obj.with_value("v", i).next_generation();
            let p: Plan = plan(&obj, &observed);
            obj.status = Some(p.status);
            observed.config_map = p.config_map.or(observed.config_map);
        }
        obj
    }

    fn decide(obj: &RuntimeConfig, observed: &Observed) -> (Rollback, Draft) {
        let cx = Context::new(obj, observed);
        let mut draft = Draft::new(&cx.prev, cx.generation);
        (decide_rollback(&cx, &mut draft), draft)
    }

    #[test]
    fn an_annotation_pins_a_revision_from_history_and_says_so_once() {
        let obj = at_revision(3).with_annotation(names::ROLLBACK_TO, Some("1"));
        let (rollback, draft) = decide(&obj, &Observed::test());
        assert_eq!(rollback.pinned, Some(1));
        assert_eq!(rollback.condition.reason, "RolledBack");
        let pin = draft.status.rollback.as_ref().unwrap();
        assert_eq!((pin.target_revision, pin.requested.as_str()), (1, "1"));
        assert!(!pin.automatic);
        assert_eq!(draft.events[0].reason, "RolledBack");
        // Held on the next reconcile, without a second Event.
        let mut held = obj.clone();
        held.status = Some(draft.status);
        let (rollback, draft) = decide(&held, &Observed::test());
        assert_eq!(rollback.pinned, Some(1));
        assert!(draft.events.is_empty());
    }

    #[test]
    fn removing_the_annotation_or_changing_the_spec_releases_the_pin() {
        let pinned = at_revision(2).with_annotation(names::ROLLBACK_TO, Some("previous"));
        let (_, draft) = decide(&pinned, &Observed::test());
        let mut pinned = pinned;
        pinned.status = Some(draft.status);

        let removed = pinned.clone().with_annotation(names::ROLLBACK_TO, None);
        let (rollback, draft) = decide(&removed, &Observed::test());
        assert_eq!(rollback.pinned, None);
        assert!(draft.status.rollback.is_none());
        assert_eq!(draft.events[0].reason, "RollbackReleased");
        assert!(!draft.plan.remove_rollback_annotation);

        let moved_on = pinned.with_value("v", 99).next_generation();
        let (rollback, draft) = decide(&moved_on, &Observed::test());
        assert_eq!(rollback.pinned, None);
        assert!(
            draft.plan.remove_rollback_annotation,
            "the stale annotation goes"
        );
        assert!(draft.events[0].note.contains("the new spec wins"));
    }

    #[test]
    fn an_unknown_target_keeps_everything_and_warns_once() {
        let obj = at_revision(2).with_annotation(names::ROLLBACK_TO, Some("9"));
        let (rollback, draft) = decide(&obj, &Observed::test());
        assert_eq!(rollback.pinned, None);
        assert_eq!(rollback.condition.reason, "RollbackTargetMissing");
        assert!(rollback.condition.message.contains("rollback-to=9"));
        assert_eq!(draft.events[0].reason, "RollbackTargetMissing");
        assert!(draft.events[0].note.contains("available: 1, 2"));
        // With the condition already saying so, no second Warning.
        let mut again = obj.clone();
        let mut status = draft.status;
        status.conditions.retain(|c| c.type_ != "RolledBack");
        status.conditions.push(rollback.condition.clone());
        again.status = Some(status);
        let (_, draft) = decide(&again, &Observed::test());
        assert!(draft.events.is_empty());
    }

    #[test]
    fn an_unknown_target_while_pinned_keeps_the_pin_and_says_so() {
        let mut obj = at_revision(3).with_annotation(names::ROLLBACK_TO, Some("2"));
        let observed = Observed::test();
        let pinned = plan(&obj, &observed);
        assert_eq!(pinned.status.rollback.as_ref().unwrap().target_revision, 2);
        obj.status = Some(pinned.status.clone());
        let obj = obj.with_annotation(names::ROLLBACK_TO, Some("99"));
        let (rollback, draft) = decide(&obj, &observed);
        assert_eq!(rollback.pinned, Some(2));
        let c = &rollback.condition;
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "RollbackTargetMissing")
        );
        assert!(
            c.message.contains("rollback-to=99") && c.message.ends_with("revision 2 stays pinned")
        );
        assert_eq!(draft.events[0].reason, "RollbackTargetMissing");
    }

    /// An unknown target while the history is trimmed: the status a reconcile writes is the
    /// one the next reconcile would write (nothing moves on its own).
    #[test]
    fn an_unknown_target_under_a_trimmed_history_settles() {
        let mut obj = at_revision(3);
        obj.spec.revision_history_limit = Some(2);
        let mut obj = obj
            .with_value("v", 99)
            .next_generation()
            .with_annotation(names::ROLLBACK_TO, Some("1000"));
        let observed = Observed::test();
        let first = plan(&obj, &observed);
        assert!(first.status.history.len() <= 2, "trimmed");
        obj.status = Some(first.status.clone());
        let second = plan(
            &obj,
            &Observed {
                config_map: first.config_map.clone(),
                ..Observed::test()
            },
        );
        assert!(
            !second.status_changed,
            "{:?} then {:?}",
            first.status.conditions, second.status.conditions
        );
    }

    #[test]
    fn consumers_rejecting_the_latest_revision_pin_the_newest_one_all_applied() {
        let mut obj = at_revision(3).with_auto_rollback("web", 1);
        // Revision 2 was applied by every consumer at some point; 1 too; 3 fails.
        let status = obj.status.as_mut().unwrap();
        for s in status.history.iter_mut().filter(|s| s.revision < 3) {
            s.applied_by_all = true;
        }
        let observed = Observed::test()
            .with_consumer("web-0", Some(2), Some(3))
            .with_consumer("web-1", Some(3), None);
        let (rollback, draft) = decide(&obj, &observed);
        assert_eq!(
            rollback.pinned,
            Some(2),
            "the newest revision every consumer applied"
        );
        assert_eq!(rollback.condition.reason, "AutoRolledBack");
        let pin = draft.status.rollback.as_ref().unwrap();
        assert!(pin.automatic && pin.requested == "auto");
        assert!(
            pin.reason
                .as_ref()
                .unwrap()
                .contains("1 of 2 consumers failed")
        );
        assert_eq!(draft.events[0].reason, "AutoRolledBack");
        assert!(draft.events[0].warning);

        // Without a policy, the same reports pin nothing.
        obj.spec.rollout.as_mut().unwrap().auto_rollback = None;
        let (rollback, _) = decide(&obj, &observed);
        assert_eq!(rollback.pinned, None);
    }
}
