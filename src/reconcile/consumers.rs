//! Step 5: the consumers of what is projected after this reconcile: how many applied it and
//! how many failed it (by their agents' reports and their health), the `Progressing`
//! condition, and when to look again. Pod changes trigger reconciles through the controller's
//! pod watch; a look is scheduled only for what can change without one (a health window
//! ending).

use chrono::{DateTime, Utc};

use super::conditions::{cond_false, cond_true};
use super::{Context, Draft, sooner};
use crate::crd::{Condition, RestartStatus};
use crate::kinds::ConfigResource;
use crate::rollout::{self, Judging};

/// How the consumers of `revision` are judged: the CR's health window, and the restart round
/// in progress (while it rolls `revision` out, only the new template's pods are judged by
/// their health).
pub(crate) fn judging<K: ConfigResource>(
    cx: &Context<'_, K>,
    revision: i64,
    restart: Option<&RestartStatus>,
) -> Judging {
    let window = cx.obj.rollout().and_then(|r| r.health_window_seconds);
    Judging {
        restart_round: restart.map(|r| r.revision),
        ..Judging::new(revision, window, cx.now)
    }
}

/// Counts the consumers into `status.consumers` and returns the `Progressing` condition (none
/// without a consumer selector or a projected revision).
pub(crate) fn decide_consumers<K: ConfigResource>(
    cx: &Context<'_, K>,
    draft: &mut Draft,
) -> Option<Condition> {
    let status = &mut draft.status;
    let (Some(consumers), Some(current)) = (&cx.observed.consumers, status.current_revision) else {
        status.consumers = None;
        return None;
    };
    let judging = judging(cx, current, status.restart.as_ref());
    let counted = rollout::consumer_status(&judging, consumers);
    let done = counted.updated == counted.selected;
    let message = format!(
        "{}/{} consumers applied revision {current}{}",
        counted.updated,
        counted.selected,
        if counted.failed > 0 {
            format!(", {} failed", counted.failed)
        } else {
            String::new()
        }
    );
    if let Some(at) = consumers
        .iter()
        .filter_map(|c| c.judged_again_at(&judging))
        .min()
    {
        draft.plan.requeue_after = sooner(draft.plan.requeue_after, until(cx.now, at));
    }
    // `autoRollback.progressDeadlineSeconds` passes by the clock alone.
    if let Some(deadline) = cx
        .obj
        .rollout()
        .and_then(|r| r.auto_rollback.as_ref())
        .filter(|a| a.enabled)
        .and_then(|a| a.progress_deadline_seconds)
        && !done
        && let Some(created) = status
            .history
            .iter()
            .find(|s| s.revision == current)
            .and_then(|s| DateTime::parse_from_rfc3339(&s.created_at).ok())
    {
        let at = created.with_timezone(&Utc) + chrono::Duration::seconds(deadline + 1);
        if at > cx.now {
            draft.plan.requeue_after = sooner(draft.plan.requeue_after, until(cx.now, at));
        }
    }
    status.consumers = Some(counted);
    Some(if done {
        cond_false("Progressing", "RolloutComplete", &message)
    } else {
        cond_true("Progressing", "RolloutInProgress", &message)
    })
}

// From `now` until `at` (at least a second).
fn until(now: DateTime<Utc>, at: DateTime<Utc>) -> std::time::Duration {
    (at - now)
        .to_std()
        .unwrap_or_default()
        .max(std::time::Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ConfigStatus, RuntimeConfig};
    use crate::reconcile::Observed;

    fn decide(observed: &Observed, current: Option<i64>) -> (Option<Condition>, Draft) {
        let mut obj = RuntimeConfig::test().with_auto_rollback("web", 1);
        obj.status = Some(ConfigStatus {
            current_revision: current,
            ..Default::default()
        });
        let cx = Context::new(&obj, observed);
        let mut draft = Draft::new(&cx.prev, cx.generation);
        (decide_consumers(&cx, &mut draft), draft)
    }

    #[test]
    fn consumers_are_counted_against_what_is_projected() {
        let observed = Observed::test()
            .with_consumer("web-0", Some(2), None)
            .with_consumer("web-1", Some(1), Some(2))
            .with_consumer("web-2", None, None);
        let (condition, draft) = decide(&observed, Some(2));
        let condition = condition.unwrap();
        assert_eq!(
            (condition.status.as_str(), condition.reason.as_str()),
            ("True", "RolloutInProgress")
        );
        assert_eq!(
            condition.message,
            "1/3 consumers applied revision 2, 1 failed"
        );
        let counted = draft.status.consumers.unwrap();
        assert_eq!(
            (counted.selected, counted.updated, counted.failed),
            (3, 1, 1)
        );
        // Pod changes trigger reconciles; nothing to look at by the clock.
        assert_eq!(draft.plan.requeue_after, None);

        let done = Observed::test().with_consumer("web-0", Some(2), None);
        let (condition, _) = decide(&done, Some(2));
        assert_eq!(condition.unwrap().reason, "RolloutComplete");

        // Nothing projected yet: no condition, no count.
        let (condition, draft) = decide(&observed, None);
        assert!(condition.is_none() && draft.status.consumers.is_none());
    }
}
