//! The reconcile decision for one object, as a pure function: from the object and what was
//! observed (projected objects, Secrets, the time) to a [`Plan`] of writes, status and Events.
//! The controller executes plans; tests call [`plan`] directly.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Resource, ResourceExt};
use serde_json::Value;

use crate::crd::{
    Condition, ConfigStatus, Projected, RollbackStatus, Snapshot, WorkloadKind, names,
};
use crate::document::{self, ResolvedSecret};
use crate::history::{self, RollbackDecision};
use crate::kinds::ConfigResource;
use crate::projection::{self, ResolvedTarget, Stamp};
use crate::rollout::{self, Consumer, Workload};
use crate::validation::SecretValues;

/// What the controller read before deciding.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The ConfigMap at the target name, if it exists.
    pub config_map: Option<ConfigMap>,
    /// The Secret at the target name, if it exists.
    pub secret: Option<Secret>,
    /// `valuesFrom` resolution: document key → value (with its Secret's uid) or why not.
    pub secrets: BTreeMap<String, Result<ResolvedSecret, String>>,
    /// The time of this reconcile.
    pub now: DateTime<Utc>,
    /// The restart targets as they are now (`spec.restartTargets` resolved).
    pub workloads: Vec<Workload>,
    /// The consumer pods and their reports, when `spec.rollout.consumerSelector` is set.
    pub consumers: Option<Vec<Consumer>>,
}

/// An Event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    /// Warning (true) or Normal.
    pub warning: bool,
    /// UpperCamelCase reason.
    pub reason: &'static str,
    /// The action, a verb.
    pub action: &'static str,
    /// The message.
    pub note: String,
}

/// Everything one reconcile should do.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// The ConfigMap to apply (`None`: it is as it should be, or must be left alone).
    pub config_map: Option<ConfigMap>,
    /// The Secret to apply.
    pub secret: Option<Secret>,
    /// Projected objects of an earlier target to delete: (ConfigMap names, Secret names).
    pub delete_config_maps: Vec<String>,
    /// Secrets to delete.
    pub delete_secrets: Vec<String>,
    /// The new status.
    pub status: ConfigStatus,
    /// Whether the status differs from the object's.
    pub status_changed: bool,
    /// Events to publish.
    pub events: Vec<PlannedEvent>,
    /// Remove the `hotconf.dev/rollback-to` annotation (the spec moved on while pinned).
    pub remove_rollback_annotation: bool,
    /// Reconcile again after this long (a maintenance window ends, restarts or consumers are
    /// in progress).
    pub requeue_after: Option<Duration>,
    /// Workloads whose pod template to stamp with `hotconf.dev/restart-revision` = the revision.
    pub restart: Vec<(WorkloadKind, String, i64)>,
}

// How often restarts and consumers are checked while they are in progress.
const PROGRESS_POLL: Duration = Duration::from_secs(2);
// How often settled consumers are looked at again.
const CONSUMER_RESYNC: Duration = Duration::from_secs(10);

fn sooner(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn now_string(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The best known identity of whoever changed the spec last: the `hotconf.dev/changed-by`
/// annotation (set by the admission webhook), else the field manager of the newest managed-fields
/// entry that touches `spec`.
pub fn changed_by<K: Resource>(obj: &K) -> Option<String> {
    if let Some(by) = obj.annotations().get(names::CHANGED_BY) {
        return Some(by.clone());
    }
    obj.meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| sets_spec(m))
        .max_by_key(|m| m.time.as_ref().map(|t| t.0))
        .and_then(|m| m.manager.clone())
}

/// Whether a managedFields entry sets a value of `spec` (outside subresources). An entry that
/// owns only the spec's structure (`.` markers: servers before 1.22 leave those with a manager
/// whose values another manager took over, under the same timestamp) set nothing.
pub fn sets_spec(
    entry: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry,
) -> bool {
    fn has_leaf(node: &serde_json::Value) -> bool {
        node.as_object().is_some_and(|map| {
            map.iter().any(|(key, child)| {
                key != "." && (child.as_object().is_some_and(|c| c.is_empty()) || has_leaf(child))
            })
        })
    }
    entry.subresource.as_deref().unwrap_or("").is_empty()
        && entry
            .fields_v1
            .as_ref()
            .and_then(|f| f.0.get("f:spec"))
            .is_some_and(has_leaf)
}

/// What validation needs of resolved `valuesFrom`: the values, or why each could not be read.
pub fn secret_values(resolved: &BTreeMap<String, Result<ResolvedSecret, String>>) -> SecretValues {
    resolved
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_ref().map(|s| s.value.clone()).map_err(Clone::clone),
            )
        })
        .collect()
}

/// Decides what one reconcile does.
pub fn plan<K: ConfigResource>(obj: &K, observed: &Observed) -> Plan {
    let now = observed.now;
    let name = obj.name_any();
    let namespace = obj.namespace().unwrap_or_default();
    let generation = obj.meta().generation.unwrap_or(0);
    let prev = obj.config_status().cloned().unwrap_or_default();
    let target = ResolvedTarget::resolve(obj.target(), &name);
    let mut status = prev.clone();
    status.observed_generation = Some(generation);
    let mut events = Vec::new();
    let mut plan = Plan::default();

    // 1. Validate, with the Secrets as they were read.
    let secret_values = secret_values(&observed.secrets);
    let errors = obj.validate(Some(&secret_values));
    let valid = errors.is_empty();

    // 2. Evaluate and decide the revision.
    let latest_entry = prev
        .latest_revision
        .and_then(|r| prev.history.iter().find(|s| s.revision == r))
        .cloned();
    let (cm_revision, cm_hash) = observed
        .config_map
        .as_ref()
        .map(|cm| projection::stamped(&cm.metadata))
        .unwrap_or_default();
    let mut sensitive = None;
    if valid {
        let resolved: BTreeMap<String, ResolvedSecret> = observed
            .secrets
            .iter()
            .filter_map(|(k, v)| v.as_ref().ok().map(|s| (k.clone(), s.clone())))
            .collect();
        let eff = obj.evaluate(&resolved, now);
        let hash = document::hash(&eff.document);
        plan.requeue_after = eff
            .next_change
            .map(|t| (t - now).to_std().unwrap_or_default() + Duration::from_secs(1));
        sensitive = Some(eff.sensitive.clone());
        if latest_entry.as_ref().map(|s| &s.hash) != Some(&hash) {
            // A projection written before a status write that never happened is adopted.
            let revision = match (cm_revision, &cm_hash) {
                (Some(r), Some(h)) if *h == hash && r > prev.latest_revision.unwrap_or(0) => r,
                _ => history::next_revision(Some(&prev), cm_revision),
            };
            let changed = document::changed_keys(
                latest_entry.as_ref().map(|s| s.document.value()).as_ref(),
                &eff.document,
            );
            // The first revision restarts nothing: the consumers started without it.
            status.pending_restart = if latest_entry.is_some() {
                document::restart_needed(&eff.restart_keys, &changed)
            } else {
                Vec::new()
            };
            status.history.push(Snapshot {
                revision,
                hash,
                created_at: now_string(now),
                generation,
                reason: obj.annotations().get(names::CHANGE_REASON).cloned(),
                changed_by: changed_by(obj),
                changed_keys: changed,
                document: eff.document.into(),
                ..Default::default()
            });
            status.latest_revision = Some(revision);
        }
    }

    // 3. Rollback.
    let mut decision = history::decide_rollback(
        obj.annotations()
            .get(names::ROLLBACK_TO)
            .map(String::as_str),
        prev.rollback.as_ref(),
        generation,
        &status.history,
        status.latest_revision,
    );
    // Consumers of what is projected now; they may call for an automatic rollback.
    let mut auto_reason = None;
    if let (Some(consumers), Some(current)) = (&observed.consumers, prev.current_revision) {
        rollout::record_applied(&mut status.history, consumers);
        let counted = rollout::consumer_status(current, consumers);
        let on_latest = status.latest_revision == Some(current);
        if decision == RollbackDecision::None && on_latest {
            let since = status
                .history
                .iter()
                .find(|s| s.revision == current)
                .and_then(|s| DateTime::parse_from_rfc3339(&s.created_at).ok())
                .map(|t| t.with_timezone(&Utc));
            let policy = obj.rollout().and_then(|r| r.auto_rollback.as_ref());
            if let Some((target, reason)) =
                rollout::auto_rollback(policy, current, since, &counted, &status.history, now)
            {
                decision = RollbackDecision::Pin {
                    target,
                    pinned_generation: generation,
                };
                auto_reason = Some(reason);
            }
        }
    }
    let mut rolled_back = cond_false("RolledBack", "NotRolledBack", "no rollback is pinned");
    let pinned: Option<i64> = match &decision {
        RollbackDecision::Pin {
            target: t,
            pinned_generation,
        } => {
            let annotation = obj.annotations().get(names::ROLLBACK_TO).cloned();
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
            if prev.rollback.as_ref().map(|p| p.target_revision) != Some(*t) {
                events.push(match &auto {
                    Some(reason) => warning(
                        "AutoRolledBack",
                        "Rollback",
                        format!("revision {t} pinned automatically: {reason}"),
                    ),
                    None => normal(
                        "RolledBack",
                        "Rollback",
                        format!("revision {t} pinned by {}={requested}", names::ROLLBACK_TO),
                    ),
                });
            }
            status.rollback = Some(RollbackStatus {
                target_revision: *t,
                pinned_generation: *pinned_generation,
                requested: requested.clone(),
                automatic: auto.is_some(),
                reason: auto.clone().filter(|r| !r.is_empty()),
            });
            rolled_back = match &auto {
                Some(reason) => cond_true(
                    "RolledBack",
                    "AutoRolledBack",
                    &format!(
                        "revision {t} is pinned automatically ({reason}); a new spec generation releases it"
                    ),
                ),
                None => cond_true(
                    "RolledBack",
                    "RolledBack",
                    &format!(
                        "revision {t} is pinned by {}={requested}; remove the annotation or change the spec to release it",
                        names::ROLLBACK_TO
                    ),
                ),
            };
            Some(*t)
        }
        RollbackDecision::ReleasedByRemoval { was } => {
            status.rollback = None;
            events.push(normal(
                "RollbackReleased",
                "Release",
                format!("the rollback to revision {was} was released: the annotation was removed"),
            ));
            None
        }
        RollbackDecision::ReleasedBySpecChange { was } => {
            status.rollback = None;
            plan.remove_rollback_annotation = obj.annotations().contains_key(names::ROLLBACK_TO);
            events.push(normal(
                "RollbackReleased",
                "Release",
                format!(
                    "the spec changed (generation {generation}) while revision {was} was pinned: the new spec wins and {} was removed",
                    names::ROLLBACK_TO
                ),
            ));
            None
        }
        RollbackDecision::TargetMissing { requested } => {
            let available: Vec<String> = status
                .history
                .iter()
                .map(|s| s.revision.to_string())
                .collect();
            let message = format!(
                "{}={requested} names no revision in history (available: {})",
                names::ROLLBACK_TO,
                if available.is_empty() {
                    "none".to_string()
                } else {
                    available.join(", ")
                }
            );
            if find_condition(&prev, "RolledBack").map(|c| (&c.reason, &c.message))
                != Some((&"RollbackTargetMissing".to_string(), &message))
            {
                events.push(warning(
                    "RollbackTargetMissing",
                    "Rollback",
                    message.clone(),
                ));
            }
            rolled_back = cond_false("RolledBack", "RollbackTargetMissing", &message);
            // Everything stays as it is, an earlier pin included.
            prev.rollback.as_ref().map(|p| p.target_revision)
        }
        RollbackDecision::None => {
            status.rollback = None;
            None
        }
    };

    // 4. What to project.
    let source: Option<(i64, String, Value)> = match pinned {
        Some(t) => status
            .history
            .iter()
            .find(|s| s.revision == t)
            .map(|s| (s.revision, s.hash.clone(), s.document.value())),
        None if valid => status
            .latest_revision
            .and_then(|r| status.history.iter().find(|s| s.revision == r))
            .map(|s| (s.revision, s.hash.clone(), s.document.value())),
        None => None,
    };
    let conflict = observed
        .config_map
        .as_ref()
        .filter(|cm| !owned_by(&cm.metadata, obj))
        .map(|_| {
            format!(
                "ConfigMap {} exists and is not controlled by this {}",
                target.name,
                K::KIND
            )
        });
    let paused = obj.paused();
    let mut projected_now = false;
    if let (Some((revision, hash, doc)), false, None) = (&source, paused, &conflict)
        && let Some(owner) = obj.controller_owner_ref(&())
    {
        let stamp = Stamp {
            kind: K::KIND,
            owner_name: name.clone(),
            namespace: namespace.clone(),
            owner,
            revision: *revision,
            hash: hash.clone(),
        };
        let desired = projection::config_map(doc, &target, &stamp);
        if !observed
            .config_map
            .as_ref()
            .is_some_and(|cm| projection::config_map_matches(cm, &desired))
        {
            events.push(normal(
                "Projected",
                "Project",
                format!("revision {revision} projected to ConfigMap {}", target.name),
            ));
            plan.config_map = Some(desired);
        }
        // Sensitive values: the Secret follows the valid spec's values (history keeps none).
        let sensitive = sensitive.unwrap_or_else(|| existing_secret_values(observed));
        if !sensitive.is_empty() {
            let desired = projection::secret(&sensitive, &target, &stamp);
            if !observed
                .secret
                .as_ref()
                .is_some_and(|s| projection::secret_matches(s, &desired))
            {
                plan.secret = Some(desired);
            }
        } else if observed
            .secret
            .as_ref()
            .is_some_and(|s| owned_by(&s.metadata, obj))
        {
            plan.delete_secrets.push(target.name.clone());
        }
        status.current_revision = Some(*revision);
        status.current_hash = Some(hash.clone());
        if let Some(old) = prev.projected.as_ref() {
            if old.config_map != target.name {
                plan.delete_config_maps.push(old.config_map.clone());
            }
            if let Some(s) = &old.secret
                && *s != target.name
            {
                plan.delete_secrets.push(s.clone());
            }
        }
        status.projected = Some(Projected {
            config_map: target.name.clone(),
            secret: (!sensitive.is_empty()).then(|| target.name.clone()),
        });
        projected_now = true;
    }

    // Restarts for restart-only keys follow what is projected: a new revision, a rollback and
    // the release of a rollback each restart the targets when the restart-only keys differ
    // between the document projected before and the one projected now (only with restart
    // targets; otherwise pendingRestart just lists what the latest revision changed).
    if !obj.restart_targets().is_empty() {
        let started = match (prev.current_revision, &source) {
            (Some(before), Some((now, _, projected))) if projected_now && before != *now => {
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
            prev.restart.as_ref(),
            started,
            &observed.workloads,
            obj.restart_policy(),
        );
        if let Some(r) = &step.status {
            plan.restart = step
                .patch
                .iter()
                .map(|(k, n)| (*k, n.clone(), r.revision))
                .collect();
            plan.requeue_after = sooner(plan.requeue_after, PROGRESS_POLL);
        }
        status.restart = step.status;
        status.pending_restart = step.pending;
    }

    // Consumers of what is projected after this reconcile.
    let progressing = match (&observed.consumers, status.current_revision) {
        (Some(consumers), Some(current)) => {
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
            // Consumer reports arrive on Pods, which are polled: often while a revision rolls
            // out, and now and then afterwards for new pods and late reports.
            let poll = if done && counted.selected > 0 {
                CONSUMER_RESYNC
            } else {
                PROGRESS_POLL
            };
            plan.requeue_after = sooner(plan.requeue_after, poll);
            status.consumers = Some(counted);
            Some(if done {
                cond_false("Progressing", "RolloutComplete", &message)
            } else {
                cond_true("Progressing", "RolloutInProgress", &message)
            })
        }
        _ => {
            status.consumers = None;
            None
        }
    };

    // 5. History bounds.
    let keep: Vec<i64> = status
        .latest_revision
        .into_iter()
        .chain(status.current_revision)
        .chain(pinned)
        .collect();
    history::trim(
        &mut status.history,
        history::history_limit(obj.history_limit()),
        history::HISTORY_BYTE_BUDGET,
        &keep,
    );

    // 6. Conditions and Events.
    let valid_cond = if valid {
        cond_true("Valid", "Valid", "the spec is valid")
    } else {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        if find_condition(&prev, "Valid").map(|c| (&c.status, &c.message))
            != Some((&"False".to_string(), &message))
        {
            events.push(warning("ValidationFailed", "Validate", message.clone()));
        }
        cond_false("Valid", "ValidationFailed", &message)
    };
    let ready = if let Some(c) = &conflict {
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
    } else if projected_now {
        cond_true(
            "Ready",
            if pinned.is_some() {
                "RolledBack"
            } else {
                "Projected"
            },
            &format!(
                "revision {} is projected to ConfigMap {}",
                status.current_revision.unwrap_or(0),
                target.name
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
    let mut conditions = vec![ready, valid_cond, rolled_back, paused_cond];
    conditions.extend(progressing);
    if !status.pending_restart.is_empty() || find_condition(&prev, "RestartPending").is_some() {
        conditions.push(if status.pending_restart.is_empty() {
            cond_false(
                "RestartPending",
                "NoRestartNeeded",
                "no restart-only key is waiting for a restart",
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
    status.conditions = conditions
        .into_iter()
        .map(|mut c| {
            c.observed_generation = Some(generation);
            c.last_transition_time = match find_condition(&prev, &c.type_) {
                Some(old) if old.status == c.status => old.last_transition_time.clone(),
                _ => now_string(now),
            };
            c
        })
        .collect();

    plan.status_changed = status != prev;
    plan.status = status;
    plan.events = events;
    plan
}

fn existing_secret_values(observed: &Observed) -> BTreeMap<String, String> {
    observed
        .secret
        .as_ref()
        .and_then(|s| s.data.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

fn owned_by<K: Resource>(meta: &kube::api::ObjectMeta, obj: &K) -> bool {
    let uid = obj.meta().uid.as_deref();
    meta.owner_references
        .iter()
        .flatten()
        .any(|o| Some(o.uid.as_str()) == uid)
}

fn find_condition<'a>(status: &'a ConfigStatus, type_: &str) -> Option<&'a Condition> {
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

fn cond_true(type_: &str, reason: &str, message: &str) -> Condition {
    cond(type_, "True", reason, message)
}

fn cond_false(type_: &str, reason: &str, message: &str) -> Condition {
    cond(type_, "False", reason, message)
}

fn normal(reason: &'static str, action: &'static str, note: String) -> PlannedEvent {
    PlannedEvent {
        warning: false,
        reason,
        action,
        note,
    }
}

fn warning(reason: &'static str, action: &'static str, note: String) -> PlannedEvent {
    PlannedEvent {
        warning: true,
        reason,
        action,
        note,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::RuntimeConfig;

    /// One reconcile, with its outcome written back the way the controller writes it.
    fn step(obj: &mut RuntimeConfig, observed: &mut Observed) -> Plan {
        let plan = plan(obj, observed);
        obj.status = Some(plan.status.clone());
        if let Some(cm) = &plan.config_map {
            observed.config_map = Some(cm.clone());
        }
        plan
    }

    fn change(obj: &mut RuntimeConfig, key: &str, value: i64) {
        obj.spec.values.insert(key.into(), value.into());
        obj.metadata.generation = Some(obj.metadata.generation.unwrap_or(0) + 1);
    }

    fn pin(obj: &mut RuntimeConfig, to: Option<&str>) {
        let annotations = obj.metadata.annotations.get_or_insert_default();
        match to {
            Some(to) => annotations.insert(names::ROLLBACK_TO.into(), to.into()),
            None => annotations.remove(names::ROLLBACK_TO),
        };
    }

    /// The deployment controller's part: `web` observed its template stamped for `revision`.
    fn rolled(observed: &mut Observed, revision: i64) {
        observed.workloads = vec![Workload {
            kind: WorkloadKind::Deployment,
            name: "web".into(),
            generation: revision + 10,
            observed_generation: revision + 10,
            restart_revision: Some(revision),
        }];
    }

    /// A RuntimeConfig with `schema` (YAML lines under `schema:`) restarting Deployment `web`,
    /// which has not been stamped yet.
    fn start(schema: &str) -> (RuntimeConfig, Observed) {
        let obj = serde_yaml::from_str(&format!(
            "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {{name: app, namespace: ns, uid: u1, generation: 1}}\nspec:\n  schema:\n{schema}  restartTargets: [{{kind: Deployment, name: web}}]\n"
        ))
        .unwrap();
        let mut observed = Observed {
            now: Utc::now(),
            ..Default::default()
        };
        rolled(&mut observed, 0);
        (obj, observed)
    }

    fn restarts(plan: &Plan) -> Vec<i64> {
        plan.restart.iter().map(|(_, _, r)| *r).collect()
    }

    #[test]
    fn restarts_follow_the_projected_revision_through_rollback_and_release() {
        let (mut obj, mut observed) = start(
            "    workers: {type: integer, default: 4, requiresRestart: true}\n    timeout: {type: integer, default: 30}\n",
        );
        // Revision 1: the first projection restarts nothing.
        assert!(restarts(&step(&mut obj, &mut observed)).is_empty());
        // Revision 2 changes a restart-only key.
        change(&mut obj, "workers", 8);
        let p = step(&mut obj, &mut observed);
        assert_eq!(
            (p.status.current_revision, restarts(&p)),
            (Some(2), vec![2])
        );
        assert_eq!(p.status.pending_restart, vec!["values.workers"]);
        rolled(&mut observed, 2);
        let p = step(&mut obj, &mut observed);
        assert!(p.status.pending_restart.is_empty() && p.status.restart.is_none());

        // A rollback to 1 brings workers back to 4: the targets restart for revision 1.
        pin(&mut obj, Some("1"));
        let p = step(&mut obj, &mut observed);
        assert_eq!(
            (p.status.current_revision, restarts(&p)),
            (Some(1), vec![1])
        );
        assert_eq!(p.status.pending_restart, vec!["values.workers"]);
        assert_eq!(
            find_condition(&p.status, "RestartPending").unwrap().status,
            "True"
        );
        rolled(&mut observed, 1);
        assert!(step(&mut obj, &mut observed).status.restart.is_none());

        // Releasing the pin projects revision 2 again (workers 8): another restart.
        pin(&mut obj, None);
        let p = step(&mut obj, &mut observed);
        assert_eq!(
            (p.status.current_revision, restarts(&p)),
            (Some(2), vec![2])
        );
        rolled(&mut observed, 2);
        assert!(step(&mut obj, &mut observed).status.restart.is_none());

        // A hot-reloadable change restarts nothing, and neither does a rollback across it.
        change(&mut obj, "timeout", 60);
        let p = step(&mut obj, &mut observed);
        assert_eq!((p.status.current_revision, restarts(&p)), (Some(3), vec![]));
        pin(&mut obj, Some("previous"));
        let p = step(&mut obj, &mut observed);
        assert_eq!((p.status.current_revision, restarts(&p)), (Some(2), vec![]));
        assert!(p.status.pending_restart.is_empty());

        // Pinned to 1 (workers 4) while the latest (3) has workers 8, a new spec sets workers
        // to 4: compared with what is projected, no restart-only key changes.
        pin(&mut obj, Some("1"));
        let p = step(&mut obj, &mut observed);
        assert_eq!(
            (p.status.current_revision, restarts(&p)),
            (Some(1), vec![1])
        );
        rolled(&mut observed, 1);
        step(&mut obj, &mut observed);
        change(&mut obj, "workers", 4);
        let p = step(&mut obj, &mut observed);
        assert_eq!((p.status.current_revision, restarts(&p)), (Some(4), vec![]));
        assert!(p.status.rollback.is_none() && p.status.restart.is_none());
    }

    #[test]
    fn a_paused_config_restarts_nothing_until_it_projects() {
        let (mut obj, mut observed) =
            start("    workers: {type: integer, default: 4, requiresRestart: true}\n");
        step(&mut obj, &mut observed);
        obj.spec.paused = true;
        change(&mut obj, "workers", 8);
        let p = step(&mut obj, &mut observed);
        assert_eq!((p.status.current_revision, restarts(&p)), (Some(1), vec![]));
        obj.spec.paused = false;
        obj.metadata.generation = Some(3);
        let p = step(&mut obj, &mut observed);
        assert_eq!(
            (p.status.current_revision, restarts(&p)),
            (Some(2), vec![2])
        );
    }
}

#[cfg(test)]
mod changed_by_tests {
    use super::*;
    use crate::crd::{RuntimeConfig, RuntimeConfigSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};

    fn entry(
        manager: &str,
        fields: serde_json::Value,
        subresource: Option<&str>,
    ) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Apply".into()),
            fields_v1: Some(FieldsV1(fields)),
            subresource: subresource.map(Into::into),
            // One second for all, as a quick succession of writes gets.
            time: Some(Time("2026-12-01T10:00:00Z".parse().unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn a_manager_left_with_only_the_spec_structure_did_not_change_it() {
        let mut obj = RuntimeConfig::new("app", RuntimeConfigSpec::default());
        obj.metadata.managed_fields = Some(vec![
            entry(
                "alice-tool",
                serde_json::json!({"f:spec": {".": {}, "f:values": {".": {}, "f:v": {}}}}),
                None,
            ),
            // Status by server-side apply on a 1.20 server: no subresource, f:status only.
            entry(
                "hotconf",
                serde_json::json!({"f:status": {"f:history": {}}}),
                None,
            ),
            // What a 1.20 server leaves of the manager whose value alice-tool took over.
            entry(
                "release-bot",
                serde_json::json!({"f:spec": {".": {}, "f:values": {".": {}}}}),
                None,
            ),
        ]);
        assert_eq!(changed_by(&obj).as_deref(), Some("alice-tool"));
        // On a current server the status entry names its subresource; spec entries are kept.
        let statusy = entry(
            "hotconf",
            serde_json::json!({"f:spec": {"f:x": {}}}),
            Some("status"),
        );
        assert!(!sets_spec(&statusy));
    }
}
