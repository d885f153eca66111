//! Step 4: restarts for restart-only keys. They follow what is projected: a new revision, a
//! rollback and the release of a rollback each restart the targets when the restart-only keys
//! differ between the document projected before and the one projected now. Without restart
//! targets, `pendingRestart` just lists what the latest revision changed.

use super::project::Projection;
use super::{Context, Draft, PROGRESS_POLL, sooner, warning};
use crate::document;
use crate::kinds::ConfigResource;
use crate::rollout;

/// Starts a restart round when the projected document changed restart-only keys, moves a round
/// in progress on by waves (the previous targets' rollouts having finished), halts it when a
/// target stalls (a Warning `RestartStalled`), and plans the stamps of the pod templates to
/// patch.
pub(crate) fn decide_restarts<K: ConfigResource>(
    cx: &Context<'_, K>,
    draft: &mut Draft,
    projection: &Projection,
) {
    let obj = cx.obj;
    if obj.restart_targets().is_empty() {
        return;
    }
    let status = &mut draft.status;
    let started = match (cx.prev.current_revision, &projection.source) {
        (Some(before), Some((now, _, projected))) if projection.projected_now && before != *now => {
            // A document no longer in history counts as different in every key.
            let before = status
                .history
                .iter()
                .find(|s| s.revision == before)
                .map(|s| s.document.value());
            let changed = document::changed_keys(before.as_ref(), projected);
            Some((
                *now,
                document::restart_needed(&obj.restart_keys(), &changed),
            ))
        }
        _ => None,
    };
    let step = rollout::restart_step(
        cx.prev.restart.as_ref(),
        started,
        &cx.observed.workloads,
        obj.restart_policy(),
        cx.now,
    );
    if let Some(r) = &step.status {
        draft.plan.restart = step
            .patch
            .iter()
            .map(|(k, n)| (*k, n.clone(), r.revision))
            .collect();
        draft.plan.requeue_after = sooner(draft.plan.requeue_after, PROGRESS_POLL);
        for why in &step.newly_stalled {
            draft.events.push(warning(
                "RestartStalled",
                "Restart",
                format!(
                    "the restart round for revision {} is halted: {why}",
                    r.revision
                ),
            ));
        }
    }
    status.restart = step.status;
    status.pending_restart = step.pending;
}

#[cfg(test)]
mod tests {
    use crate::crd::{ParamType, Parameter, RuntimeConfig};
    use crate::reconcile::{Observed, plan};

    #[test]
    fn a_changed_restart_only_key_stamps_the_targets_in_waves() {
        let workers = Parameter::test(ParamType::Integer)
            .with_default(4)
            .restart_only();
        let mut obj = RuntimeConfig::test()
            .with_param("workers", workers)
            .with_restart_target("web-a")
            .with_restart_target("web-b");
        obj.spec.restart_policy = Some(crate::crd::RestartPolicy {
            max_concurrent: Some(1),
            progress_deadline_seconds: None,
        });
        let mut observed = Observed::test()
            .with_workload("web-a", None)
            .with_workload("web-b", None);
        let first = plan(&obj, &observed);
        assert!(
            first.restart.is_empty(),
            "the first revision restarts nothing"
        );
        obj.status = Some(first.status);
        observed.config_map = first.config_map;

        let mut obj = obj.with_value("workers", 8).next_generation();
        let second = plan(&obj, &observed);
        let stamped: Vec<_> = second
            .restart
            .iter()
            .map(|(_, n, r)| (n.as_str(), *r))
            .collect();
        assert_eq!(stamped, vec![("web-a", 2)], "one at a time");
        assert_eq!(second.status.pending_restart, vec!["values.workers"]);
        obj.status = Some(second.status);
        observed.config_map = second.config_map;

        // web-a's controller observed its new template: the next wave is web-b.
        let observed = observed.with_workload("web-a", Some(2));
        let third = plan(&obj, &observed);
        let stamped: Vec<_> = third
            .restart
            .iter()
            .map(|(_, n, r)| (n.as_str(), *r))
            .collect();
        assert_eq!(stamped, vec![("web-b", 2)]);
    }
}
