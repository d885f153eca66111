//! Step 1: validate the spec and, when it is valid and its effective document is new, record
//! the next revision in history.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Context, Draft, changed_by, now_string, secret_values};
use crate::crd::Snapshot;
use crate::document::{self, ResolvedSecret};
use crate::history;
use crate::kinds::ConfigResource;
use crate::projection;
use crate::validation::FieldError;

/// What the revision step found.
#[derive(Debug, Default)]
pub(crate) struct Revision {
    /// Every validation error (none: the spec is valid).
    pub errors: Vec<FieldError>,
    /// The valid spec's sensitive values, for the Secret (`None` while the spec is invalid).
    pub sensitive: Option<BTreeMap<String, String>>,
    /// An unrecorded projection found on the ConfigMap and recorded in the draft: this
    /// reconcile writes status only, since anything it projected next would overwrite the one
    /// place that revision is known if that status write failed too.
    pub recovered: Option<i64>,
    /// The valid spec's effective document and its hash: the document of the revision with
    /// that hash, when the object does not carry it.
    pub evaluated: Option<(String, serde_json::Value)>,
}

impl Revision {
    pub fn valid(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Validates with the Secrets as they were read, evaluates a valid spec, and appends a snapshot
/// when its hash differs from the latest revision's. The number is the next one, or that of a
/// projection written before a status write that never happened (it is adopted).
pub(crate) fn decide_revision<K: ConfigResource>(
    cx: &Context<'_, K>,
    draft: &mut Draft,
) -> Revision {
    let (obj, observed, prev, now) = (cx.obj, cx.observed, &cx.prev, cx.now);
    let (cm_revision, cm_hash) = observed
        .config_map
        .as_ref()
        .map(|cm| projection::stamped(&cm.metadata))
        .unwrap_or_default();
    let mut errors = obj.validate(Some(&secret_values(&observed.secrets)));
    let resolved: BTreeMap<String, ResolvedSecret> = observed
        .secrets
        .iter()
        .filter_map(|(k, v)| v.as_ref().ok().map(|s| (k.clone(), s.clone())))
        .collect();
    let latest_entry = prev
        .latest_revision
        .and_then(|r| prev.history.iter().find(|s| s.revision == r));
    let evaluated = errors.is_empty().then(|| {
        let eff = obj.evaluate(&resolved, now);
        let hash = document::hash(&eff.document);
        (eff, hash)
    });
    // Whether a document can be kept and projected is asked of a new one only: the latest
    // revision's document passed when it was recorded, and a converged reconcile renders
    // nothing more.
    if let Some((eff, hash)) = &evaluated
        && latest_entry.map(|s| &s.hash) != Some(hash)
    {
        errors.extend(unprojectable(eff, &cx.target));
    }
    let Some((eff, hash)) = evaluated.filter(|_| errors.is_empty()) else {
        // An unrecorded projection is recorded even now: a pin may project an older revision
        // over it next, and its number must never be given to another document.
        if let Some(snapshot) = unrecorded_projection(cx, cm_revision, cm_hash.as_deref(), "") {
            return recover(draft, snapshot);
        }
        return Revision {
            errors,
            sensitive: None,
            recovered: None,
            evaluated: None,
        };
    };
    draft.plan.requeue_after = eff
        .next_change
        .map(|t| (t - now).to_std().unwrap_or_default() + Duration::from_secs(1));
    let sensitive = Some(eff.sensitive.clone());
    if latest_entry.map(|s| &s.hash) != Some(&hash) {
        // A projection whose status write never happened (the replica crashed, or the write
        // met a conflict) has a number above every recorded one. When its document is not the
        // new one, it is recorded first, from the ConfigMap: pods may have applied it, and no
        // projected revision may be missing from history (SPEC §5.12).
        if let Some(snapshot) = unrecorded_projection(cx, cm_revision, cm_hash.as_deref(), &hash) {
            return recover(draft, snapshot);
        }
        // The ConfigMap already carries this very document under an unrecorded number: that
        // number is taken over (adopted), and recorded before anything else is projected.
        let recorded = history::next_revision(Some(prev), None) - 1;
        let adopted = match (cm_revision, &cm_hash) {
            (Some(r), Some(h)) if *h == hash && r > recorded => Some(r),
            _ => None,
        };
        let revision = adopted.unwrap_or_else(|| history::next_revision(Some(prev), cm_revision));
        let changed = document::changed_keys(
            latest_entry.map(|s| s.document.value()).as_ref(),
            &eff.document,
        );
        let attested = observed.attested_author.as_deref();
        let (reason, changed_by) = authorship(cx, attested, latest_entry, &changed);
        let status = &mut draft.status;
        // The first revision restarts nothing: the consumers started without it.
        status.pending_restart = if latest_entry.is_some() {
            document::restart_needed(&eff.restart_keys, &changed)
        } else {
            Vec::new()
        };
        status.history.push(Snapshot {
            revision,
            hash: hash.clone(),
            created_at: now_string(now),
            generation: cx.generation,
            reason,
            changed_by,
            changed_keys: changed,
            document: crate::crd::StoredDocument::new(&eff.document),
            ..Default::default()
        });
        status.latest_revision = Some(revision);
        if adopted.is_some() {
            // Like any unrecorded projection: this round writes status only (a pin projected
            // now would overwrite the one place this number is known; the chaos suite found
            // it given to another document that way).
            return Revision {
                errors: Vec::new(),
                sensitive,
                recovered: adopted,
                evaluated: Some((hash, eff.document)),
            };
        }
    }
    Revision {
        errors: Vec::new(),
        sensitive,
        recovered: None,
        evaluated: Some((hash, eff.document)),
    }
}

// Records an unrecorded projection as the latest revision, and nothing else this round.
// `currentRevision` stays: the next projection's restart-only keys are compared with what was
// projected before this one, whose restarts never happened either.
fn recover(draft: &mut Draft, snapshot: Snapshot) -> Revision {
    let revision = snapshot.revision;
    draft.status.latest_revision = Some(revision);
    draft.status.history.push(snapshot);
    Revision {
        recovered: Some(revision),
        ..Revision::default()
    }
}

/// The snapshot of a projection that was never recorded: the ConfigMap carries a revision above
/// every recorded one and a hash other than `new_hash`, and its document (YAML or JSON: the
/// other formats are not reversible) hashes to what it says.
fn unrecorded_projection<K: ConfigResource>(
    cx: &Context<'_, K>,
    cm_revision: Option<i64>,
    cm_hash: Option<&str>,
    new_hash: &str,
) -> Option<Snapshot> {
    let (revision, hash) = (cm_revision?, cm_hash?);
    let recorded = history::next_revision(Some(&cx.prev), None) - 1;
    if hash == new_hash || revision <= recorded {
        return None;
    }
    let text = cx
        .observed
        .config_map
        .as_ref()?
        .data
        .as_ref()?
        .get(&cx.target.file_name)?;
    let document = document::parse(text, cx.target.format).ok()?;
    (document::hash(&document) == hash).then(|| Snapshot {
        revision,
        hash: hash.to_string(),
        created_at: now_string(cx.now),
        generation: cx.prev.observed_generation.unwrap_or(cx.generation),
        reason: Some(
            "recorded from its projection: the status write after it did not happen".into(),
        ),
        document: document.into(),
        ..Default::default()
    })
}

/// The most data a ConfigMap or Secret holds (the API server's limit on the sum of its keys and
/// values).
pub const MAX_PROJECTED_BYTES: usize = 1024 * 1024;

/// A document that cannot be kept or projected: one revision would not fit the history's byte
/// budget; the ConfigMap (with `flatten`, its flattened keys too) or the Secret would exceed
/// [`MAX_PROJECTED_BYTES`]; or `flatten` would make a key that is not a valid data key. Errors
/// like validation ones, so nothing is recorded or projected and the condition says why.
pub(crate) fn unprojectable(
    eff: &document::Effective,
    target: &projection::ResolvedTarget,
) -> Vec<FieldError> {
    let size =
        |data: &mut dyn Iterator<Item = (usize, usize)>| data.map(|(k, v)| k + v).sum::<usize>();
    let data = projection::config_map_data(&eff.document, target);
    // The metadata key is a few hundred bytes at most.
    let cm = size(&mut data.iter().map(|(k, v)| (k.len(), v.len()))) + 512;
    let secret = size(&mut eff.sensitive.iter().map(|(k, v)| (k.len(), v.len()))) + 512;
    let mut errors = Vec::new();
    // One revision must fit the history's byte budget (the status holds at least the current
    // one), so the object stays within what the API server stores.
    let document = serde_json::to_vec(&eff.document).map_or(0, |v| v.len());
    let room = history::HISTORY_BYTE_BUDGET - 1024;
    if document > room {
        errors.push(FieldError::new(
            "spec",
            format!(
                "the effective document is {document} bytes, more than the {room} one revision \
                 may take in .status.history: make the configuration smaller or split it"
            ),
        ));
    }
    // With flatten, every leaf becomes a data key: one the API server would refuse is named
    // here (it would otherwise be left out of the ConfigMap without a word).
    if target.flatten {
        let bad: Vec<String> = document::flatten(&eff.document)
            .into_keys()
            .filter(|k| !projection::is_valid_data_key(k))
            .collect();
        for key in bad.iter().take(20) {
            errors.push(
                FieldError::new(
                    "spec.target.flatten",
                    format!(
                        "makes {key:?} a data key, which a ConfigMap cannot hold (alphanumerics, \
                         '-', '_' or '.', at most 253 characters): rename the key or turn off flatten"
                    ),
                ),
            );
        }
        if bad.len() > 20 {
            errors.push(FieldError::new(
                "spec.target.flatten",
                format!(
                    "and {} more keys that are not valid data keys",
                    bad.len() - 20
                ),
            ));
        }
    }
    for (what, bytes) in [("ConfigMap", cm), ("Secret", secret)] {
        if bytes > MAX_PROJECTED_BYTES {
            errors.push(FieldError::new(
                "spec",
                format!(
                    "projects {bytes} bytes into the {what} {}, more than the {MAX_PROJECTED_BYTES} \
                     bytes a {what} can hold{}: make the configuration smaller or split it",
                    target.name,
                    if target.flatten && what == "ConfigMap" {
                        " (target.flatten writes every value twice)"
                    } else {
                        ""
                    }
                ),
            ));
        }
    }
    errors
}

/// Who made a new revision, and why (SPEC §5.4). A revision of a new spec generation carries the
/// `hotconf.dev/change-reason` written with that change and its author. Within one generation
/// only the operator can make one, from the inputs beside the spec: the clock ending a
/// maintenance window, or a `valuesFrom` Secret's new value; a stale human reason would lie
/// there, so it gets the operator's own reason and field manager.
fn authorship<K: ConfigResource>(
    cx: &Context<'_, K>,
    attested: Option<&str>,
    latest: Option<&Snapshot>,
    changed: &[String],
) -> (Option<String>, Option<String>) {
    if latest.is_none_or(|s| s.generation != cx.generation) {
        return (
            super::change_reason(cx.obj, &cx.prev.history),
            changed_by(cx.obj, attested),
        );
    }
    let maintenance = !changed.is_empty() && changed.iter().all(|k| k.starts_with("maintenance"));
    let reason = if maintenance {
        "MaintenanceEnded"
    } else {
        "SecretRotated"
    };
    (
        Some(reason.to_string()),
        Some(crate::crd::MANAGER.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::names;

    fn find_valid(status: &crate::crd::ConfigStatus) -> Option<&str> {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == "Valid")
            .map(|c| c.status.as_str())
    }
    use crate::crd::{ParamType, Parameter, RuntimeConfig};
    use crate::reconcile::Observed;

    fn decide(obj: &RuntimeConfig, observed: &Observed) -> (Revision, Draft) {
        let cx = Context::new(obj, observed);
        let mut draft = Draft::new(&cx.prev, cx.generation);
        (decide_revision(&cx, &mut draft), draft)
    }

    #[test]
    fn a_valid_new_document_is_the_next_revision_and_an_unchanged_one_is_not() {
        let obj = RuntimeConfig::test()
            .with_value("level", "info")
            .with_annotation(names::CHANGE_REASON, Some("first rollout"));
        let (revision, draft) = decide(&obj, &Observed::test());
        assert!(revision.valid());
        let entry = &draft.status.history[0];
        assert_eq!((entry.revision, entry.generation), (1, 1));
        assert_eq!(entry.reason.as_deref(), Some("first rollout"));
        assert_eq!(draft.status.latest_revision, Some(1));
        assert!(
            draft.status.pending_restart.is_empty(),
            "the first restarts nothing"
        );

        // The same spec again: no new revision.
        let mut again = obj.clone();
        again.status = Some(draft.status.clone());
        let (_, draft) = decide(&again, &Observed::test());
        assert_eq!(draft.status.history.len(), 1);
    }

    #[test]
    fn a_revision_the_operator_makes_carries_its_own_reason_not_the_stale_one() {
        let mut obj = RuntimeConfig::test()
            .with_value("level", "info")
            .with_annotation(names::CHANGE_REASON, Some("planned upgrade"));
        obj.spec = obj.spec.clone().with_until("2026-06-01T00:00:00Z");
        let mut observed = Observed::test();
        observed.now = "2026-05-31T23:00:00Z".parse().unwrap();
        let (_, draft) = decide(&obj, &observed);
        assert_eq!(
            draft.status.history[0].reason.as_deref(),
            Some("planned upgrade")
        );

        // The window ends in the same generation: the timer made this revision.
        obj.status = Some(draft.status.clone());
        observed.now = "2026-06-01T00:00:01Z".parse().unwrap();
        let (_, draft) = decide(&obj, &observed);
        let ended = &draft.status.history[1];
        assert_eq!(ended.changed_keys, vec!["maintenance.enabled"]);
        assert_eq!(ended.reason.as_deref(), Some("MaintenanceEnded"));
        assert_eq!(ended.changed_by.as_deref(), Some(crate::crd::MANAGER));

        // A new generation is a person's change again, with the reason written with it.
        obj.status = Some(draft.status.clone());
        obj.metadata.generation = Some(2);
        obj.spec = obj.spec.clone().with_value("level", "debug");
        let stale = obj.clone();
        obj = obj.with_annotation(names::CHANGE_REASON, Some("more logs"));
        let (_, draft) = decide(&obj, &observed);
        assert_eq!(draft.status.history[2].reason.as_deref(), Some("more logs"));
        // The annotation left as it was explains the earlier change, not this one.
        let (_, draft) = decide(&stale, &observed);
        assert_eq!(draft.status.history[2].reason, None);
        assert_eq!(draft.status.history[2].generation, 2);
    }

    #[test]
    fn an_invalid_spec_records_nothing_and_says_why() {
        let obj = RuntimeConfig::test()
            .with_param("n", Parameter::test(ParamType::Integer))
            .with_value("n", "many");
        let (revision, draft) = decide(&obj, &Observed::test());
        assert!(!revision.valid() && revision.sensitive.is_none());
        assert_eq!(revision.errors[0].path, "spec.values.n");
        assert!(draft.status.history.is_empty() && draft.status.latest_revision.is_none());
    }

    #[test]
    fn a_document_that_cannot_be_kept_or_projected_is_refused_with_why() {
        // With flatten, a key that cannot be a data key is named, not silently left out.
        let odd = RuntimeConfig::test()
            .with_value("has space", 1)
            .with_spec(|mut s| {
                s.target = Some(crate::crd::Target {
                    flatten: true,
                    ..Default::default()
                });
                s
            });
        let flat = projection::ResolvedTarget::resolve(odd.spec.target.as_ref(), "app");
        let eff = odd.evaluate(&BTreeMap::new(), chrono::Utc::now());
        let errors = unprojectable(&eff, &flat);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].rule.contains("\"values.has space\""),
            "{}",
            errors[0].rule
        );
        assert!(unprojectable(&eff, &projection::ResolvedTarget::resolve(None, "app")).is_empty());

        // Valid by every rule, but one revision of it would not fit the history's budget.
        let big = "x".repeat(history::HISTORY_BYTE_BUDGET);
        let obj = RuntimeConfig::test().with_value("blob", big.as_str());
        let (revision, draft) = decide(&obj, &Observed::test());
        assert_eq!(revision.errors.len(), 1, "{:?}", revision.errors);
        let rule = &revision.errors[0].rule;
        assert!(
            rule.contains("one revision may take in .status.history"),
            "{rule}"
        );
        assert!(draft.status.history.is_empty());
        // Just under: recorded.
        let fits = "x".repeat(history::HISTORY_BYTE_BUDGET / 2);
        let (revision, _) = decide(
            &RuntimeConfig::test().with_value("blob", fits.as_str()),
            &Observed::test(),
        );
        assert!(revision.valid(), "{:?}", revision.errors);

        // A Secret's values are not in history: only the Secret's own limit applies.
        let eff = document::Effective {
            document: serde_json::json!({}),
            sensitive: BTreeMap::from([("k".to_string(), "x".repeat(MAX_PROJECTED_BYTES))]),
            restart_keys: Default::default(),
            next_change: None,
        };
        let target = projection::ResolvedTarget::resolve(None, "app");
        let errors = unprojectable(&eff, &target);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].rule.contains("into the Secret app"),
            "{}",
            errors[0].rule
        );
    }

    #[test]
    fn a_restart_only_change_is_pending_and_a_projection_ahead_of_status_is_adopted() {
        let param = Parameter::test(ParamType::Integer)
            .with_default(4)
            .restart_only();
        let first = RuntimeConfig::test().with_param("workers", param);
        let (_, draft) = decide(&first, &Observed::test());
        let mut second = first.with_value("workers", 8).next_generation();
        second.status = Some(draft.status.clone());
        let (_, next) = decide(&second, &Observed::test());
        assert_eq!(next.status.latest_revision, Some(2));
        assert_eq!(next.status.pending_restart, vec!["values.workers"]);

        // The ConfigMap already carries revision 7 with this very hash (written before a
        // status write that was lost): that number is taken over, not 2.
        let hash = next.status.history[1].hash.clone();
        let stamped = crate::projection::config_map(
            &next.status.history[1].document.value(),
            &crate::projection::ResolvedTarget::resolve(None, "app"),
            &crate::projection::Stamp {
                kind: "RuntimeConfig",
                owner_name: "app".into(),
                namespace: "ns".into(),
                owner: kube::Resource::controller_owner_ref(&second, &()).unwrap(),
                revision: 7,
                hash,
                restart_keys: Vec::new(),
            },
        );
        let observed = Observed {
            config_map: Some(stamped),
            ..Observed::test()
        };
        let (_, adopted) = decide(&second, &observed);
        assert_eq!(adopted.status.latest_revision, Some(7));
    }

    #[test]
    fn a_projection_whose_status_write_failed_is_recorded_before_the_next_revision() {
        let v1 = RuntimeConfig::test().with_value("level", "one");
        let first = crate::reconcile::plan(&v1, &Observed::test());
        let mut v2 = v1.clone().with_value("level", "two").next_generation();
        v2.status = Some(first.status.clone());
        let observed = Observed {
            config_map: first.config_map.clone(),
            ..Observed::test()
        };
        // Revision 2 is projected, and its status write never happens.
        let second = crate::reconcile::plan(&v2, &observed);
        let projected = Observed {
            config_map: second.config_map.clone(),
            ..Observed::test()
        };
        assert_eq!(second.status.latest_revision, Some(2));
        let mut v3 = v2.clone().with_value("level", "three").next_generation();
        v3.status = Some(first.status.clone());
        let numbers = |plan: &crate::reconcile::Plan| -> Vec<(i64, String)> {
            plan.status
                .history
                .iter()
                .map(|h| (h.revision, h.hash.clone()))
                .collect()
        };
        let two = second.status.history[1].hash.clone();
        // First only recorded: nothing is projected over it until the status holds it.
        let recorded = crate::reconcile::plan(&v3, &projected);
        assert_eq!(
            numbers(&recorded),
            vec![(1, first.status.history[0].hash.clone()), (2, two.clone())],
            "revision 2 is recorded as projected"
        );
        assert!(recorded.config_map.is_none(), "no projection this round");
        assert!(recorded.status_changed);
        assert_eq!(recorded.status.latest_revision, Some(2));
        assert_eq!(
            recorded.status.current_revision, first.status.current_revision,
            "restarts are reckoned from what was projected before"
        );
        assert_eq!(
            recorded.status.observed_generation, first.status.observed_generation,
            "the new generation is not looked at yet"
        );
        assert_eq!(recorded.requeue_after, Some(Duration::ZERO));
        // Then the new spec, as revision 3.
        v3.status = Some(recorded.status.clone());
        let third = crate::reconcile::plan(&v3, &projected);
        let history = numbers(&third);
        assert_eq!(history.len(), 3, "{history:?}");
        assert_eq!(history[1], (2, two.clone()));
        assert_eq!(history[2].0, 3);
        assert_eq!(third.status.latest_revision, Some(3));
        assert!(third.config_map.is_some());

        // An invalid spec next: the unrecorded projection is recorded all the same.
        let mut broken = v2.clone().next_generation();
        broken
            .spec
            .values
            .insert("level".into(), serde_json::json!({"not": "a level"}));
        broken
            .spec
            .schema
            .insert("level".into(), Parameter::test(ParamType::String));
        broken.status = Some(first.status.clone());
        let recorded = crate::reconcile::plan(&broken, &projected);
        let revisions: Vec<i64> = numbers(&recorded).iter().map(|(r, _)| *r).collect();
        assert_eq!(
            revisions,
            vec![1, 2],
            "revision 2 is recorded though the spec is invalid"
        );
        assert_eq!(recorded.status.latest_revision, Some(2));
        broken.status = Some(recorded.status.clone());
        let invalid = crate::reconcile::plan(&broken, &projected);
        assert_eq!(find_valid(&invalid.status), Some("False"));
        assert_eq!(invalid.status.latest_revision, Some(2));

        // The same spec as the unrecorded projection: that revision is adopted, not repeated,
        // and recorded first (nothing projected this round), even under a pin.
        let mut again = v2.clone().with_annotation(names::ROLLBACK_TO, Some("1"));
        again.status = Some(first.status.clone());
        let adopted = crate::reconcile::plan(&again, &projected);
        let numbers: Vec<i64> = adopted.status.history.iter().map(|h| h.revision).collect();
        assert_eq!(numbers, vec![1, 2]);
        assert!(adopted.config_map.is_none(), "the pin waits for the record");
        again.status = Some(adopted.status.clone());
        let pinned = crate::reconcile::plan(&again, &projected);
        let numbers: Vec<i64> = pinned.status.history.iter().map(|h| h.revision).collect();
        assert_eq!(numbers, vec![1, 2], "not repeated");
        assert_eq!(pinned.status.current_revision, Some(1), "then the pin");
    }
}
