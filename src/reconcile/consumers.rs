//! Step 5: the consumers of what is projected after this reconcile: how many applied it, the
//! `Progressing` condition, and how soon to look again (consumer reports arrive on Pods, which
//! are polled: often while a revision rolls out, and now and then afterwards for new pods and
//! late reports).

use super::conditions::{cond_false, cond_true};
use super::{CONSUMER_RESYNC, Context, Draft, PROGRESS_POLL, sooner};
use crate::crd::Condition;
use crate::kinds::ConfigResource;
use crate::rollout;

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
    let counted = rollout::consumer_status(current, consumers);
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
    let poll = if done && counted.selected > 0 {
        CONSUMER_RESYNC
    } else {
        PROGRESS_POLL
    };
    draft.plan.requeue_after = sooner(draft.plan.requeue_after, poll);
    status.consumers = Some(counted);
    Some(if done {
        cond_false("Progressing", "RolloutComplete", &message)
    } else {
        cond_true("Progressing", "RolloutInProgress", &message)
    })
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
        assert_eq!(draft.plan.requeue_after, Some(PROGRESS_POLL));

        let done = Observed::test().with_consumer("web-0", Some(2), None);
        let (condition, draft) = decide(&done, Some(2));
        assert_eq!(condition.unwrap().reason, "RolloutComplete");
        assert_eq!(draft.plan.requeue_after, Some(CONSUMER_RESYNC));

        // Nothing projected yet: no condition, no count.
        let (condition, draft) = decide(&observed, None);
        assert!(condition.is_none() && draft.status.consumers.is_none());
    }
}
