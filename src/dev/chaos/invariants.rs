//! The invariants of a chaos run, as pure functions of what was recorded (SPEC §5.6, §5.12,
//! §8): each returns a count of violations (0 = good) with a few examples.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::record::{LeaseSeen, ProjectedSeen, StatusSeen};
use crate::dev::control_plane::AuditEntry;

/// One invariant's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Invariant {
    /// What is checked.
    pub name: &'static str,
    /// Violations (0 = good).
    pub count: usize,
    /// The first few violations, described.
    pub examples: Vec<String>,
}

impl Invariant {
    pub(crate) fn new(name: &'static str, violations: Vec<String>) -> Invariant {
        Invariant {
            name,
            count: violations.len(),
            examples: violations.into_iter().take(10).collect(),
        }
    }
}

/// A CR's state at the end of the run.
#[derive(Clone, Debug)]
pub struct FinalState {
    /// Its name.
    pub name: String,
    /// (revision, hash) of its history.
    pub history: Vec<(i64, String)>,
    /// `status.latestRevision`.
    pub latest: Option<i64>,
    /// The pinned revision, if a rollback pin holds.
    pub pinned: Option<i64>,
    /// `status.currentRevision`.
    pub current: Option<i64>,
    /// Whether the history is at its bounds (`revisionHistoryLimit` entries, or near the byte
    /// budget): only then may the trim have dropped a revision.
    pub at_bounds: bool,
}

/// Trimming drops the oldest entries that are not kept; the kept ones (latest, current and a
/// pinned revision at the time) stay below the dropped range, and may stay there after they are
/// no longer kept, until the next trim. At most two such leftovers sit below a gap; when the
/// history is not at its bounds nothing was trimmed, so there are none but a pin or the current
/// revision. Returns the history's revisions, sorted, split into (leftovers, the rest).
fn split_leftovers(f: &FinalState) -> (Vec<i64>, Vec<i64>) {
    let mut revisions: Vec<i64> = f.history.iter().map(|(r, _)| *r).collect();
    revisions.sort_unstable();
    // The run of consecutive numbers that ends at the newest entry.
    let mut start = revisions.len().saturating_sub(1);
    while start > 0 && revisions[start - 1] + 1 == revisions[start] {
        start -= 1;
    }
    let below = &revisions[..start];
    let kept_now = |r: &i64| Some(*r) == f.pinned || Some(*r) == f.current;
    let allowed = if f.at_bounds {
        below.len() <= 2
    } else {
        below.iter().all(kept_now)
    };
    if allowed {
        (below.to_vec(), revisions[start..].to_vec())
    } else {
        (Vec::new(), revisions)
    }
}

/// No ConfigMap ever carried the marker of an invalid spec.
pub fn no_invalid_projected(projected: &[ProjectedSeen]) -> Invariant {
    let violations = projected
        .iter()
        .filter(|p| p.invalid)
        .map(|p| {
            format!(
                "{} revision {:?} ({:?}) carried an invalid spec",
                p.name, p.revision, p.hash
            )
        })
        .collect();
    Invariant::new("no invalid spec reached a ConfigMap", violations)
}

/// No revision number of an object ever carried two hashes, in its ConfigMap or its history.
pub fn one_hash_per_revision(projected: &[ProjectedSeen], status: &[StatusSeen]) -> Invariant {
    let mut hashes: BTreeMap<(&str, i64), BTreeSet<&str>> = BTreeMap::new();
    for p in projected {
        if let (Some(revision), Some(hash)) = (p.revision, p.hash.as_deref()) {
            hashes
                .entry((p.name.as_str(), revision))
                .or_default()
                .insert(hash);
        }
    }
    for s in status {
        for (revision, hash) in &s.history {
            hashes
                .entry((s.name.as_str(), *revision))
                .or_default()
                .insert(hash);
        }
    }
    let violations = hashes
        .into_iter()
        .filter(|(_, h)| h.len() > 1)
        .map(|((name, revision), h)| format!("{name} revision {revision} carried hashes {h:?}"))
        .collect();
    Invariant::new("no revision carried two hashes", violations)
}

/// The newest revision of an object (`status.latestRevision`, else the newest in its history)
/// never went down from one observed state to the next.
pub fn revisions_never_go_backwards(status: &[StatusSeen]) -> Invariant {
    let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
    let mut violations = Vec::new();
    for s in status {
        let seen = s.latest.or_else(|| s.history.iter().map(|(r, _)| *r).max());
        let Some(seen) = seen else { continue };
        match newest.get(s.name.as_str()) {
            Some(&before) if seen < before => {
                violations.push(format!(
                    "{}: newest revision went from {before} back to {seen}",
                    s.name
                ));
            }
            _ => {
                newest.insert(s.name.as_str(), seen);
            }
        }
    }
    Invariant::new("no revision number went backwards", violations)
}

/// The final history is gap-free: consecutive numbers from its oldest entry to its newest, but
/// for the entries a trim kept below the dropped range (see `split_leftovers`).
pub fn history_gap_free(finals: &[FinalState]) -> Invariant {
    let mut violations = Vec::new();
    for f in finals {
        let (_, revisions) = split_leftovers(f);
        for pair in revisions.windows(2) {
            if pair[1] != pair[0] + 1 {
                violations.push(format!(
                    "{}: history jumps from {} to {} ({revisions:?})",
                    f.name, pair[0], pair[1]
                ));
            }
        }
        if let (Some(latest), Some(&newest)) = (f.latest, revisions.last())
            && latest != newest
        {
            violations.push(format!(
                "{}: latestRevision {latest} but the newest in history is {newest}",
                f.name
            ));
        }
    }
    Invariant::new("history gap-free within its bounds", violations)
}

/// Every revision ever projected or recorded is in the final history, unless the history is at
/// its bounds and the revision is older than its oldest entry (the leftovers of a trim aside).
pub fn no_revision_lost(
    projected: &[ProjectedSeen],
    status: &[StatusSeen],
    finals: &[FinalState],
) -> Invariant {
    let mut seen: BTreeMap<&str, BTreeSet<i64>> = BTreeMap::new();
    for p in projected {
        if let Some(r) = p.revision {
            seen.entry(p.name.as_str()).or_default().insert(r);
        }
    }
    for s in status {
        for (r, _) in &s.history {
            seen.entry(s.name.as_str()).or_default().insert(*r);
        }
    }
    let mut violations = Vec::new();
    for f in finals {
        let kept: BTreeSet<i64> = f.history.iter().map(|(r, _)| *r).collect();
        // The trimmed range: below the oldest entry that is not a leftover of a trim.
        let (_, rest) = split_leftovers(f);
        let oldest = rest.first().copied().unwrap_or(i64::MAX);
        for r in seen.get(f.name.as_str()).into_iter().flatten() {
            if !kept.contains(r) && (*r >= oldest || !f.at_bounds) {
                violations.push(format!(
                    "{}: revision {r} was seen but is missing from history {kept:?}",
                    f.name
                ));
            }
        }
    }
    Invariant::new("no revision missing from history", violations)
}

/// A lease term: who held the Lease from when.
#[derive(Clone, Debug, PartialEq)]
pub struct Term {
    /// The holder (`None`: released, nobody).
    pub holder: Option<String>,
    /// From when (the holder's `acquireTime`; the observation time of a release).
    pub from: DateTime<Utc>,
}

/// The terms of the Lease from its recorded states, in the order the watch delivered them. A
/// holder's term starts at its `acquireTime`; a release (no holder) at the time it was
/// observed, but never after the next holder's acquisition (the watch reports a release late).
pub fn terms(lease: &[LeaseSeen]) -> Vec<Term> {
    let mut out: Vec<Term> = Vec::new();
    for l in lease {
        let term = Term {
            holder: l.holder.clone(),
            from: match &l.holder {
                Some(_) => l.acquired.unwrap_or(l.observed),
                None => l.observed,
            },
        };
        if out.last() != Some(&term) {
            out.push(term);
        }
    }
    for i in (0..out.len().saturating_sub(1)).rev() {
        if out[i].holder.is_none() && out[i + 1].from < out[i].from {
            out[i].from = out[i + 1].from;
        }
    }
    out
}

/// No replica wrote outside its own lease terms: every successful write (other than to the
/// Lease) by a replica was received while that replica held the Lease.
pub fn one_writer_per_term(terms: &[Term], writes: &[(String, AuditEntry)]) -> Invariant {
    let mut violations = Vec::new();
    for (user, w) in writes {
        if w.resource == "leases" || !(200..300).contains(&w.code) {
            continue;
        }
        let Ok(at) = DateTime::parse_from_rfc3339(&w.received) else {
            continue;
        };
        let at = at.with_timezone(&Utc);
        // The last term begun by then (in delivery order: a later term never starts earlier).
        let term = terms.iter().rev().find(|t| t.from <= at);
        let holder = term.and_then(|t| t.holder.as_deref());
        if holder != Some(user.as_str()) {
            violations.push(format!(
                "{user} wrote {} {}/{} ({}) at {} in the term of {:?} (from {:?})",
                w.verb,
                w.resource,
                w.name,
                w.subresource,
                w.received,
                holder,
                term.map(|t| t.from)
            ));
        }
    }
    Invariant::new("no two replicas wrote in one lease term", violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(name: &str, revision: i64, hash: &str) -> ProjectedSeen {
        ProjectedSeen {
            name: name.into(),
            revision: Some(revision),
            hash: Some(hash.into()),
            observed: Utc::now(),
            invalid: false,
        }
    }

    fn status(name: &str, latest: i64, history: &[(i64, &str)]) -> StatusSeen {
        StatusSeen {
            name: name.into(),
            latest: Some(latest),
            current: Some(latest),
            history: history.iter().map(|(r, h)| (*r, h.to_string())).collect(),
            generations: (None, None),
            observed: Utc::now(),
        }
    }

    #[test]
    fn a_revision_with_two_hashes_is_counted_once() {
        let projected = [seen("a", 1, "x"), seen("a", 2, "y"), seen("a", 2, "z")];
        let s = [status("a", 2, &[(1, "x"), (2, "y")])];
        assert_eq!(one_hash_per_revision(&projected, &s).count, 1);
        assert_eq!(one_hash_per_revision(&projected[..2], &s).count, 0);
    }

    #[test]
    fn the_newest_revision_going_down_is_a_violation() {
        let s = [
            status("a", 3, &[]),
            status("a", 4, &[]),
            status("a", 2, &[]),
        ];
        assert_eq!(revisions_never_go_backwards(&s).count, 1);
    }

    #[test]
    fn gaps_and_lost_revisions_are_found_but_a_kept_pin_is_not_a_gap() {
        let f = |history: &[i64], pinned: Option<i64>| FinalState {
            name: "a".into(),
            history: history.iter().map(|r| (*r, format!("h{r}"))).collect(),
            latest: history.iter().max().copied(),
            pinned,
            current: history.iter().max().copied(),
            at_bounds: history.len() >= 3,
        };
        assert_eq!(history_gap_free(&[f(&[3, 4, 5], None)]).count, 0);
        assert_eq!(history_gap_free(&[f(&[4, 6], None)]).count, 1);
        assert_eq!(history_gap_free(&[f(&[1, 7, 8], Some(1))]).count, 0);
        let projected = [seen("a", 4, "h4"), seen("a", 2, "h2")];
        assert_eq!(
            no_revision_lost(&projected, &[], &[f(&[3, 5], None)]).count,
            2,
            "nothing was trimmed from a history below its bounds"
        );
        assert_eq!(
            no_revision_lost(&projected, &[], &[f(&[3, 4, 5], None)]).count,
            0
        );
    }

    /// What the short chaos profile found: revisions 2 (pinned) and 3 (then current) were
    /// kept while 4 and 5 were trimmed; 3 is no longer current at the end. That is the trim
    /// working, not a loss; the same history below its bounds is a loss.
    #[test]
    fn entries_kept_below_a_trim_are_not_a_gap_or_a_loss() {
        let mut f = FinalState {
            name: "pb".into(),
            history: [2, 3, 6, 7, 8]
                .iter()
                .map(|r| (*r, format!("h{r}")))
                .collect(),
            latest: Some(8),
            pinned: Some(2),
            current: Some(8),
            at_bounds: true,
        };
        let projected: Vec<ProjectedSeen> =
            (2..=8).map(|r| seen("pb", r, &format!("h{r}"))).collect();
        assert_eq!(history_gap_free(std::slice::from_ref(&f)).count, 0);
        assert_eq!(
            no_revision_lost(&projected, &[], std::slice::from_ref(&f)).count,
            0
        );
        // Three entries below the gap: more than a trim keeps.
        f.history.insert(0, (1, "h1".into()));
        assert_eq!(history_gap_free(std::slice::from_ref(&f)).count, 1);
        f.history.remove(0);
        f.at_bounds = false;
        assert_eq!(history_gap_free(std::slice::from_ref(&f)).count, 1);
        assert_eq!(
            no_revision_lost(&projected, &[], std::slice::from_ref(&f)).count,
            2
        );
    }

    #[test]
    fn a_write_outside_the_writers_term_is_a_violation() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let lease = [
            LeaseSeen {
                holder: Some("r0".into()),
                acquired: Some(t("2026-01-01T00:00:00Z")),
                observed: t("2026-01-01T00:00:00.1Z"),
            },
            LeaseSeen {
                holder: Some("r1".into()),
                acquired: Some(t("2026-01-01T00:00:10Z")),
                observed: t("2026-01-01T00:00:10.1Z"),
            },
        ];
        let write = |user: &str, at: &str| {
            (
                user.to_string(),
                AuditEntry {
                    verb: "patch".into(),
                    resource: "configmaps".into(),
                    subresource: String::new(),
                    namespace: "ns".into(),
                    name: "a".into(),
                    code: 200,
                    received: at.into(),
                    uri: "/api/v1/namespaces/ns/configmaps/a".into(),
                },
            )
        };
        let terms = terms(&lease);
        let good = [
            write("r0", "2026-01-01T00:00:05Z"),
            write("r1", "2026-01-01T00:00:11Z"),
        ];
        assert_eq!(one_writer_per_term(&terms, &good).count, 0);
        let bad = [write("r0", "2026-01-01T00:00:10.5Z")];
        assert_eq!(one_writer_per_term(&terms, &bad).count, 1);

        // A release observed after the next holder acquired takes no time of its term.
        let handover = [
            lease[0].clone(),
            LeaseSeen {
                holder: None,
                acquired: None,
                observed: t("2026-01-01T00:00:10.3Z"),
            },
            lease[1].clone(),
        ];
        let terms = super::terms(&handover);
        assert_eq!(one_writer_per_term(&terms, &good[1..]).count, 0);
        assert_eq!(one_writer_per_term(&terms, &bad).count, 1);
    }
}
