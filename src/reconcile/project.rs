//! Step 3: what to project. The pinned revision, else the latest one of a valid spec, into the
//! ConfigMap (and the sensitive values into the Secret), unless the spec is paused or the target
//! belongs to someone else; objects of an earlier target are deleted.

use kube::Resource;
use serde_json::Value;

use super::revision::Revision;
use super::{Context, Draft, normal};
use crate::crd::Projected;
use crate::kinds::ConfigResource;
use crate::projection::{self, Stamp};

/// What the projection step decided.
#[derive(Debug, Default)]
pub(crate) struct Projection {
    /// The revision to project: its number, hash and document.
    pub source: Option<(i64, String, Value)>,
    /// Whether it is projected by this reconcile's plan (it may already be).
    pub projected_now: bool,
    /// Why the target cannot be written: an object of that name not controlled by this one.
    pub conflict: Option<String>,
}

/// Decides the ConfigMap and Secret writes (only what differs from what was observed), and
/// records what is projected in the status.
pub(crate) fn decide_projection<K: ConfigResource>(
    cx: &Context<'_, K>,
    draft: &mut Draft,
    revision: &Revision,
    pinned: Option<i64>,
) -> Projection {
    let (obj, observed, target) = (cx.obj, cx.observed, &cx.target);
    let status = &mut draft.status;
    // A document the object does not carry (the cache keeps none) is the spec's when the
    // hashes agree; otherwise the plan is incomplete, and made again from the whole object.
    let mut incomplete = false;
    let mut entry = |r: i64| {
        let s = status.history.iter().find(|s| s.revision == r)?;
        let document = match &revision.evaluated {
            _ if !s.document.is_elided() => s.document.value(),
            Some((hash, document)) if *hash == s.hash => document.clone(),
            _ => {
                incomplete = true;
                serde_json::Value::Null
            }
        };
        Some((s.revision, s.hash.clone(), document))
    };
    let source = match pinned {
        Some(t) => entry(t),
        None if revision.valid() => status.latest_revision.and_then(entry),
        None => None,
    };
    draft.plan.incomplete |= incomplete;
    // Sensitive values: the Secret follows the valid spec's values (history keeps none), and
    // an invalid spec's Secret keeps what it holds. Only a Secret this object controls counts:
    // one of the same name that is someone else's is never read, taken over or deleted.
    let owned_secret = observed
        .secret
        .as_ref()
        .filter(|s| owned_by(&s.metadata, obj));
    let sensitive = revision.sensitive.clone().unwrap_or_else(|| {
        owned_secret
            .map(projection::secret_values)
            .unwrap_or_default()
    });
    let foreign = |kind: &str| {
        format!(
            "{kind} {} exists and is not controlled by this {}",
            target.name,
            K::KIND
        )
    };
    let conflict = if observed
        .config_map
        .as_ref()
        .is_some_and(|cm| !owned_by(&cm.metadata, obj))
    {
        Some(foreign("ConfigMap"))
    } else if !sensitive.is_empty() && observed.secret.is_some() && owned_secret.is_none() {
        Some(foreign("Secret"))
    } else {
        None
    };
    let mut projected_now = false;
    if let (Some((revision_number, hash, doc)), false, None) = (&source, obj.paused(), &conflict)
        && let Some(owner) = obj.controller_owner_ref(&())
    {
        let stamp = Stamp {
            kind: K::KIND,
            owner_name: cx.name.clone(),
            namespace: cx.namespace.clone(),
            owner,
            revision: *revision_number,
            hash: hash.clone(),
            restart_keys: obj.restart_keys().into_iter().collect(),
        };
        let desired = projection::config_map(doc, target, &stamp);
        if !observed.config_map.as_ref().is_some_and(|cm| {
            if observed.config_map_cached {
                projection::config_map_metadata_matches(&cm.metadata, &desired)
            } else {
                projection::config_map_matches(cm, &desired)
            }
        }) {
            draft.events.push(normal(
                "Projected",
                "Project",
                format!(
                    "revision {revision_number} projected to ConfigMap {}{}",
                    target.name,
                    authored(&draft.status, *revision_number)
                ),
            ));
            draft.plan.config_map = Some(desired);
            draft.plan.outcome.projected = true;
        }
        if !sensitive.is_empty() {
            let desired = projection::secret(&sensitive, target, &stamp);
            if !observed
                .secret
                .as_ref()
                .is_some_and(|s| projection::secret_matches(s, &desired))
            {
                draft.plan.secret = Some(desired);
            }
        } else if owned_secret.is_some() {
            draft.plan.delete_secrets.push(target.name.clone());
        }
        let status = &mut draft.status;
        status.current_revision = Some(*revision_number);
        status.current_hash = Some(hash.clone());
        if let Some(old) = cx.prev.projected.as_ref() {
            if old.config_map != target.name {
                draft.plan.delete_config_maps.push(old.config_map.clone());
            }
            if let Some(s) = &old.secret
                && *s != target.name
            {
                draft.plan.delete_secrets.push(s.clone());
            }
        }
        status.projected = Some(Projected {
            config_map: target.name.clone(),
            secret: (!sensitive.is_empty()).then(|| target.name.clone()),
        });
        projected_now = true;
    }
    Projection {
        source,
        projected_now,
        conflict,
    }
}

/// Who made revision `revision` and why, as its history entry says, for the Event that records
/// the change: ` (changed by alice: raise v for the sale)`, or nothing when neither is known.
fn authored(status: &crate::crd::ConfigStatus, revision: i64) -> String {
    let entry = status.history.iter().find(|s| s.revision == revision);
    let by = entry.and_then(|s| s.changed_by.as_deref());
    let reason = entry
        .and_then(|s| s.reason.as_deref())
        .filter(|r| !r.is_empty());
    match (by, reason) {
        (Some(by), Some(reason)) => format!(" (changed by {by}: {reason})"),
        (Some(by), None) => format!(" (changed by {by})"),
        (None, Some(reason)) => format!(" ({reason})"),
        (None, None) => String::new(),
    }
}

/// The sensitive values the Secret holds now: what an invalid spec keeps projected.
/// Whether `meta` names `obj` among its owners.
fn owned_by<K: Resource>(meta: &kube::api::ObjectMeta, obj: &K) -> bool {
    let uid = obj.meta().uid.as_deref();
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| Some(o.uid.as_str()) == uid)
}

#[cfg(test)]
mod tests {
    use super::super::Observed;
    use super::*;
    use crate::crd::RuntimeConfig;
    use crate::reconcile::plan;
    use crate::reconcile::revision::decide_revision;

    fn decide(
        obj: &RuntimeConfig,
        observed: &Observed,
        pinned: Option<i64>,
    ) -> (Projection, Draft) {
        let cx = Context::new(obj, observed);
        let mut draft = Draft::new(&cx.prev, cx.generation);
        let revision = decide_revision(&cx, &mut draft);
        (decide_projection(&cx, &mut draft, &revision, pinned), draft)
    }

    // An object planned and written through revisions 1 and 2 (`v: 1`, then `v: 2`), and the
    // ConfigMap as projected.
    fn two_revisions() -> (RuntimeConfig, Observed) {
        let mut obj = RuntimeConfig::test().with_value("v", 1);
        let mut observed = Observed::test();
        for v in [1, 2] {
            obj = obj.with_value("v", v).next_generation();
            let p = plan(&obj, &observed);
            obj.status = Some(p.status);
            observed.config_map = p.config_map.or(observed.config_map);
        }
        (obj, observed)
    }

    #[test]
    fn the_latest_revision_is_written_once_and_then_left_alone() {
        let obj = RuntimeConfig::test().with_value("v", 1);
        let (projection, draft) = decide(&obj, &Observed::test(), None);
        assert!(projection.projected_now && projection.conflict.is_none());
        let cm = draft.plan.config_map.clone().expect("a ConfigMap to write");
        assert_eq!(cm.metadata.name.as_deref(), Some("app"));
        assert_eq!(draft.status.current_revision, Some(1));
        assert_eq!(draft.events[0].reason, "Projected");
        // Observed as written: nothing more to write.
        let mut written = obj.clone();
        written.status = Some(draft.status);
        let observed = Observed {
            config_map: Some(cm),
            ..Observed::test()
        };
        let (projection, draft) = decide(&written, &observed, None);
        assert!(projection.projected_now && draft.plan.config_map.is_none());
        assert!(draft.events.is_empty());
    }

    #[test]
    fn a_pinned_revision_is_projected_instead_of_the_latest() {
        let (obj, observed) = two_revisions();
        let (projection, draft) = decide(&obj, &observed, Some(1));
        assert_eq!(projection.source.as_ref().map(|s| s.0), Some(1));
        assert_eq!(draft.status.current_revision, Some(1));
        let data = draft.plan.config_map.unwrap().data.unwrap();
        assert!(data["config.yaml"].contains("v: 1"), "{data:?}");
        // The metadata key names the pinned revision with its own hash, not the latest.
        let meta = projection::Meta::parse(&data[projection::META_KEY]).unwrap();
        let history = &obj.status.as_ref().unwrap().history;
        let first = history.iter().find(|s| s.revision == 1).unwrap();
        assert_eq!(
            (meta.revision, meta.hash.as_str()),
            (1, first.hash.as_str())
        );
        assert_ne!(
            Some(&meta.hash),
            obj.status.as_ref().unwrap().current_hash.as_ref()
        );
    }

    #[test]
    fn without_its_documents_a_converged_object_plans_nothing_and_a_pin_is_incomplete() {
        let (obj, observed) = two_revisions();
        // As the operator's cache holds it: no snapshot documents.
        let mut slim = obj.clone();
        for s in &mut slim.status.as_mut().unwrap().history {
            s.document = crate::crd::StoredDocument::elided();
        }
        let p = plan(&slim, &observed);
        assert!(!p.incomplete && !p.status_changed && p.config_map.is_none());
        // The latest revision's document comes from the spec; a pin needs the old one.
        let (projection, draft) = decide(&slim, &observed, Some(1));
        assert!(draft.plan.incomplete);
        assert_eq!(
            projection.source.map(|s| s.2),
            Some(serde_json::Value::Null)
        );
        let (_, whole) = decide(&obj, &observed, Some(1));
        assert!(!whole.plan.incomplete && whole.plan.config_map.is_some());
        // What was left out can never be written back.
        let status = serde_json::to_string(&slim.status);
        assert!(status.is_err_and(|e| e.to_string().contains("left out of the cache")));
    }

    #[test]
    fn a_foreign_configmap_paused_spec_or_renamed_target_change_what_is_written() {
        let obj = RuntimeConfig::test().with_value("v", 1);
        let foreign = k8s_openapi::api::core::v1::ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some("app".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let observed = Observed {
            config_map: Some(foreign),
            ..Observed::test()
        };
        let (projection, draft) = decide(&obj, &observed, None);
        assert!(
            projection
                .conflict
                .unwrap()
                .contains("not controlled by this RuntimeConfig")
        );
        assert!(!projection.projected_now && draft.plan.config_map.is_none());

        let (projection, draft) = decide(&obj.clone().paused(), &Observed::test(), None);
        assert!(!projection.projected_now && draft.plan.config_map.is_none());
        assert_eq!(
            draft.status.latest_revision,
            Some(1),
            "recorded while paused"
        );

        // Projected as `app`, then the target is renamed: the old ConfigMap goes.
        let (_, draft) = decide(&obj, &Observed::test(), None);
        let mut renamed = obj.with_config_map("app-config").next_generation();
        renamed.status = Some(draft.status);
        let (_, draft) = decide(&renamed, &Observed::test(), None);
        assert_eq!(draft.plan.delete_config_maps, vec!["app".to_string()]);
        assert_eq!(
            draft.status.projected.unwrap().config_map,
            "app-config".to_string()
        );
    }
}
