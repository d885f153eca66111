//! Rolling a revision out beyond the ConfigMap: restart waves for restart-only keys
//! ([`waves`]), the consumers' reports and health ([`health`]), and the automatic-rollback
//! decision. Pure functions over what the controller observed.

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::crd::{AutoRollback, ConsumerStatus, Snapshot};

pub mod health;
pub mod waves;

pub use health::{Consumer, Judging, PodHealth, consumer_status, record_applied};
pub use waves::{Progress, RestartStep, RolloutCounts, Workload, kind_name, restart_step, state};

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
            "{} of {} consumers failed revision {current} ({}; maxFailures {threshold})",
            consumers.failed,
            consumers.selected,
            health::describe_failures(consumers)
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
    use super::health::{Consumer, Judging, consumer_status};
    use super::*;
    use serde_json::json;

    fn consumer(pod: &str, revision: i64, error: Option<&str>) -> Consumer {
        Consumer {
            pod: pod.into(),
            revision: Some(revision),
            error: error.map(String::from),
            ..Default::default()
        }
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
        let judging = Judging::new(3, None, now);
        let policy = AutoRollback {
            enabled: true,
            max_failures: Some(json!(1)),
            progress_deadline_seconds: Some(30),
        };
        let history = vec![snap(1, true), snap(2, true), snap(3, false)];
        let failing = consumer_status(&judging, &[consumer("p1", 2, Some("500"))]);
        let (target, reason) =
            auto_rollback(Some(&policy), 3, Some(now), &failing, &history, now).unwrap();
        assert_eq!(target, 2);
        assert_eq!(
            reason,
            "1 of 1 consumers failed revision 3 (1 reload refused; maxFailures 1)"
        );
        // Nobody failed, but the deadline passed.
        let silent = consumer_status(&judging, &[consumer("p1", 2, None)]);
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
}
