//! Snapshot history and rollback decisions (SPEC.md §5.3, §5.4, §5.7), as pure functions.

use crate::crd::{
    ConfigStatus, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT, Snapshot, StoredDocument,
};

/// The byte budget of `.status.history` per object (its JSON size).
pub const HISTORY_BYTE_BUDGET: usize = 256 * 1024;

/// The history limit a spec asks for, clamped to 1..=100.
pub fn history_limit(requested: Option<i32>) -> usize {
    requested
        .unwrap_or(DEFAULT_HISTORY_LIMIT)
        .clamp(1, MAX_HISTORY_LIMIT) as usize
}

/// The JSON size of a history.
pub fn history_bytes(history: &[Snapshot]) -> usize {
    serde_json::to_vec(history).map(|v| v.len()).unwrap_or(0)
}

/// The JSON size of one snapshot, its document counted by its stored text (which is exactly how
/// it serializes) rather than by writing it out again.
pub fn snapshot_bytes(snapshot: &Snapshot) -> usize {
    let mut rest = snapshot.clone();
    rest.document = StoredDocument::default();
    let rest = serde_json::to_vec(&rest).map(|v| v.len()).unwrap_or(0);
    rest - StoredDocument::default().json().len() + snapshot.document.json().len()
}

/// Drops the oldest snapshots until at most `limit` remain and their JSON fits `budget` bytes,
/// never dropping a revision in `keep` (the current one, and a pinned one).
pub fn trim(history: &mut Vec<Snapshot>, limit: usize, budget: usize, keep: &[i64]) {
    history.sort_by_key(|s| s.revision);
    history.dedup_by_key(|s| s.revision);
    let mut bytes: Vec<usize> = history.iter().map(|s| snapshot_bytes(s) + 1).collect();
    let total = |b: &[usize]| b.iter().sum::<usize>() + 1;
    let mut i = 0;
    while i < history.len() && (history.len() > limit || total(&bytes) > budget) {
        if keep.contains(&history[i].revision) {
            i += 1;
            continue;
        }
        history.remove(i);
        bytes.remove(i);
    }
}

/// The revision a new snapshot gets: above every revision ever recorded in status or seen on
/// the projected object, so numbers only grow, across operator restarts too.
pub fn next_revision(status: Option<&ConfigStatus>, projected: Option<i64>) -> i64 {
    let from_status = status
        .map(|s| {
            s.history
                .iter()
                .map(|h| h.revision)
                .chain(s.latest_revision)
                .chain(s.current_revision)
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    from_status.max(projected.unwrap_or(0)) + 1
}

/// What `hotconf.dev/rollback-to` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RollbackRequest {
    /// A revision number.
    Revision(i64),
    /// The revision before the spec's latest one.
    Previous,
    /// Something that is neither.
    Invalid(String),
}

/// Parses the annotation's value.
pub fn parse_rollback(value: &str) -> RollbackRequest {
    let v = value.trim();
    if v.eq_ignore_ascii_case("previous") {
        return RollbackRequest::Previous;
    }
    match v.parse::<i64>() {
        Ok(n) if n > 0 => RollbackRequest::Revision(n),
        _ => RollbackRequest::Invalid(value.to_string()),
    }
}

/// What to do about rollback on this reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RollbackDecision {
    /// No pin: project the spec.
    None,
    /// Project this revision's snapshot from history.
    Pin {
        /// The revision.
        target: i64,
        /// The generation the pin holds for.
        pinned_generation: i64,
    },
    /// The annotation was removed: the spec is projected again.
    ReleasedByRemoval {
        /// The revision that was pinned.
        was: i64,
    },
    /// The spec changed while pinned: the new spec wins and the annotation is removed.
    ReleasedBySpecChange {
        /// The revision that was pinned.
        was: i64,
    },
    /// The annotation names no revision in history: nothing changes.
    TargetMissing {
        /// The annotation's value.
        requested: String,
    },
}

/// Decides the rollback state from the annotation, the last recorded pin, the object's current
/// generation and the history (which already holds the spec's latest revision `latest`).
pub fn decide_rollback(
    annotation: Option<&str>,
    pin: Option<&crate::crd::RollbackStatus>,
    generation: i64,
    history: &[Snapshot],
    latest: Option<i64>,
) -> RollbackDecision {
    let Some(value) = annotation else {
        return match pin {
            // An automatic pin has no annotation: it holds until the spec changes.
            Some(p) if p.automatic && p.pinned_generation == generation => RollbackDecision::Pin {
                target: p.target_revision,
                pinned_generation: p.pinned_generation,
            },
            Some(p) if p.automatic => RollbackDecision::ReleasedBySpecChange {
                was: p.target_revision,
            },
            Some(p) => RollbackDecision::ReleasedByRemoval {
                was: p.target_revision,
            },
            None => RollbackDecision::None,
        };
    };
    if let Some(p) = pin
        && p.pinned_generation != generation
    {
        return RollbackDecision::ReleasedBySpecChange {
            was: p.target_revision,
        };
    }
    let target = match parse_rollback(value) {
        RollbackRequest::Revision(n) => history.iter().any(|s| s.revision == n).then_some(n),
        RollbackRequest::Previous => history
            .iter()
            .map(|s| s.revision)
            .filter(|r| latest.is_some_and(|l| *r < l))
            .max(),
        RollbackRequest::Invalid(_) => None,
    };
    match target {
        Some(target) => RollbackDecision::Pin {
            target,
            pinned_generation: pin.map_or(generation, |p| p.pinned_generation),
        },
        None => RollbackDecision::TargetMissing {
            requested: value.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RollbackStatus;
    use proptest::prelude::*;
    use serde_json::json;

    fn snap(revision: i64, payload: usize) -> Snapshot {
        Snapshot {
            revision,
            hash: format!("h{revision}"),
            created_at: "2026-01-01T00:00:00Z".into(),
            generation: revision,
            document: json!({"values": {"blob": "x".repeat(payload)}}).into(),
            ..Default::default()
        }
    }

    #[test]
    fn snapshot_bytes_are_the_json_size() {
        let mut s = snap(3, 5);
        s.document =
            json!({"values": {"f": 0.1, "e": 1e300, "u": "ü \"q\" \n", "l": [1, -2]}}).into();
        s.reason = Some("a \"reason\"".into());
        s.changed_by = Some("alice".into());
        s.changed_keys = vec!["values.f".into(), "values.u".into()];
        s.applied_by = Some(3);
        s.applied_by_all = true;
        for s in [s, snap(1, 0), Snapshot::default()] {
            assert_eq!(
                snapshot_bytes(&s),
                serde_json::to_vec(&s).unwrap().len(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn trim_keeps_the_newest_within_the_limit() {
        let mut h: Vec<_> = (1..=10).map(|r| snap(r, 10)).collect();
        trim(&mut h, 3, HISTORY_BYTE_BUDGET, &[10]);
        assert_eq!(
            h.iter().map(|s| s.revision).collect::<Vec<_>>(),
            vec![8, 9, 10]
        );
    }

    #[test]
    fn trim_keeps_pinned_and_current_revisions() {
        let mut h: Vec<_> = (1..=10).map(|r| snap(r, 10)).collect();
        trim(&mut h, 3, HISTORY_BYTE_BUDGET, &[10, 2]);
        assert_eq!(
            h.iter().map(|s| s.revision).collect::<Vec<_>>(),
            vec![2, 9, 10]
        );
    }

    #[test]
    fn trim_respects_the_byte_budget() {
        let mut h: Vec<_> = (1..=10).map(|r| snap(r, 60_000)).collect();
        trim(&mut h, 10, HISTORY_BYTE_BUDGET, &[10]);
        assert!(history_bytes(&h) <= HISTORY_BYTE_BUDGET);
        assert_eq!(h.len(), 4);
        assert_eq!(h.last().unwrap().revision, 10);
    }

    #[test]
    fn an_oversized_current_revision_is_kept() {
        let mut h = vec![snap(1, 10), snap(2, 300_000)];
        trim(&mut h, 10, HISTORY_BYTE_BUDGET, &[2]);
        assert_eq!(h.iter().map(|s| s.revision).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn next_revision_never_reuses() {
        assert_eq!(next_revision(None, None), 1);
        let status = ConfigStatus {
            latest_revision: Some(7),
            history: vec![snap(5, 1), snap(7, 1)],
            ..Default::default()
        };
        assert_eq!(next_revision(Some(&status), None), 8);
        assert_eq!(next_revision(Some(&status), Some(9)), 10);
        // History trimmed to nothing still remembers the latest revision.
        let trimmed = ConfigStatus {
            latest_revision: Some(12),
            ..Default::default()
        };
        assert_eq!(next_revision(Some(&trimmed), None), 13);
    }

    #[test]
    fn parse_rollback_values() {
        assert_eq!(parse_rollback("3"), RollbackRequest::Revision(3));
        assert_eq!(parse_rollback("previous"), RollbackRequest::Previous);
        assert_eq!(parse_rollback("0"), RollbackRequest::Invalid("0".into()));
        assert_eq!(parse_rollback("x"), RollbackRequest::Invalid("x".into()));
    }

    #[test]
    fn rollback_decisions() {
        let h: Vec<_> = (1..=4).map(|r| snap(r, 1)).collect();
        assert_eq!(
            decide_rollback(None, None, 4, &h, Some(4)),
            RollbackDecision::None
        );
        assert_eq!(
            decide_rollback(Some("2"), None, 4, &h, Some(4)),
            RollbackDecision::Pin {
                target: 2,
                pinned_generation: 4
            }
        );
        assert_eq!(
            decide_rollback(Some("previous"), None, 4, &h, Some(4)),
            RollbackDecision::Pin {
                target: 3,
                pinned_generation: 4
            }
        );
        assert_eq!(
            decide_rollback(Some("99"), None, 4, &h, Some(4)),
            RollbackDecision::TargetMissing {
                requested: "99".into()
            }
        );
        let pin = RollbackStatus {
            target_revision: 2,
            pinned_generation: 4,
            requested: "2".into(),
            ..Default::default()
        };
        assert_eq!(
            decide_rollback(Some("2"), Some(&pin), 4, &h, Some(4)),
            RollbackDecision::Pin {
                target: 2,
                pinned_generation: 4
            }
        );
        assert_eq!(
            decide_rollback(None, Some(&pin), 4, &h, Some(4)),
            RollbackDecision::ReleasedByRemoval { was: 2 }
        );
        assert_eq!(
            decide_rollback(Some("2"), Some(&pin), 5, &h, Some(4)),
            RollbackDecision::ReleasedBySpecChange { was: 2 }
        );
        // An automatic pin holds without an annotation, until the spec changes.
        let auto = RollbackStatus {
            automatic: true,
            requested: "auto".into(),
            ..pin.clone()
        };
        assert_eq!(
            decide_rollback(None, Some(&auto), 4, &h, Some(4)),
            RollbackDecision::Pin {
                target: 2,
                pinned_generation: 4
            }
        );
        assert_eq!(
            decide_rollback(None, Some(&auto), 5, &h, Some(4)),
            RollbackDecision::ReleasedBySpecChange { was: 2 }
        );
        // Only revision 1 exists: nothing is before it.
        assert_eq!(
            decide_rollback(Some("previous"), None, 1, &h[..1], Some(1)),
            RollbackDecision::TargetMissing {
                requested: "previous".into()
            }
        );
    }

    proptest! {
        #[test]
        fn history_bounds_always_hold(
            sizes in proptest::collection::vec(0usize..120_000, 1..30),
            limit in 1usize..=100,
            pinned in proptest::option::of(0usize..30),
        ) {
            let mut h: Vec<_> = sizes.iter().enumerate().map(|(i, s)| snap(i as i64 + 1, *s)).collect();
            let current = h.len() as i64;
            let mut keep = vec![current];
            if let Some(p) = pinned.filter(|p| *p < h.len()) {
                keep.push(p as i64 + 1);
            }
            trim(&mut h, limit, HISTORY_BYTE_BUDGET, &keep);
            for k in &keep {
                prop_assert!(h.iter().any(|s| s.revision == *k), "kept revision {} dropped", k);
            }
            let others = h.iter().filter(|s| !keep.contains(&s.revision)).count();
            prop_assert!(h.len() <= limit.max(keep.len()));
            if others > 0 {
                prop_assert!(history_bytes(&h) <= HISTORY_BYTE_BUDGET);
            }
            prop_assert!(h.windows(2).all(|w| w[0].revision < w[1].revision));
            // What is dropped is always older than what remains (kept revisions aside).
            let oldest_other = h.iter().filter(|s| !keep.contains(&s.revision)).map(|s| s.revision).min();
            if let Some(o) = oldest_other {
                let dropped = (1..=current).filter(|r| !h.iter().any(|s| s.revision == *r));
                for d in dropped {
                    prop_assert!(d < o);
                }
            }
        }
    }
}
