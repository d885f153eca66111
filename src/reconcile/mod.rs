//! The reconcile decision for one object, as a pure function: from the object and what was
//! observed (projected objects, Secrets, the time) to a [`Plan`] of writes, status and Events.
//! The controller executes plans; tests call [`plan`] directly.
//!
//! [`plan`] is a sequence of steps, one file each, in the order they run: [`revision`]
//! (validate, record a new revision), [`rollback`] (the pin, manual or automatic), [`project`]
//! (the ConfigMap and Secret writes), [`restarts`] (restart waves), [`consumers`] (what the pods
//! applied), then the history bounds and [`conditions`].

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::{Resource, ResourceExt};

use crate::crd::{ConfigStatus, WorkloadKind};
use crate::document::ResolvedSecret;
use crate::history;
use crate::kinds::ConfigResource;
use crate::projection::ResolvedTarget;
use crate::rollout::{Consumer, Workload};
use crate::validation::SecretValues;

mod conditions;
mod consumers;
mod project;
mod restarts;
mod revision;
mod rollback;

/// What the controller read before deciding.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// The ConfigMap at the target name, if it exists.
    pub config_map: Option<ConfigMap>,
    /// `config_map` is its metadata only, from the operator's cache: no data, and `hotconf` is
    /// its only writer, so its annotations (`hotconf.dev/data-hash` among them) stand for its
    /// data. A plan made from it is made again from the ConfigMap itself before it writes.
    pub config_map_cached: bool,
    /// The Secret at the target name, if it exists.
    pub secret: Option<Secret>,
    /// `valuesFrom` resolution: document key → value (with its Secret's uid) or why not.
    pub secrets: BTreeMap<String, Result<ResolvedSecret, String>>,
    /// Who changed the spec, as the admission webhook vouched (`hotconf.dev/changed-by` with a
    /// proof that verifies for this spec); `None`: the field manager is the author.
    pub attested_author: Option<String>,
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
    /// The plan needed a snapshot document the object did not carry (the operator's cache
    /// keeps none): it must be made again from the object as the server has it.
    pub incomplete: bool,
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
    /// What this plan amounts to, for the metrics.
    pub outcome: Outcome,
}

/// What a plan amounts to, as the operator's metrics count it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// A revision is written to the ConfigMap.
    pub projected: bool,
    /// The spec was found invalid (every such reconcile counts).
    pub validation_failed: bool,
    /// A rollback pin takes effect (by annotation or automatically).
    pub rolled_back: bool,
    /// The pin that takes effect is an automatic one (consumers refused the latest revision).
    pub rolled_back_automatically: bool,
}

/// The errors a valid spec still has because it cannot be kept or projected (one revision over
/// the history's budget, a ConfigMap over 1 MiB, flatten keys that are not data keys; see
/// `revision::unprojectable`), for the offline commands and the webhook, which judge as the
/// operator does. `valuesFrom` values are not resolved here (their Secret's own limit is the
/// operator's to check).
pub fn projection_errors<K: ConfigResource>(obj: &K) -> Vec<crate::validation::FieldError> {
    let target = ResolvedTarget::resolve(obj.target(), &obj.name_any());
    let eff = obj.evaluate(&BTreeMap::new(), Utc::now());
    revision::unprojectable(&eff, &target)
}

/// `errors` (a spec's validation errors), or, when there are none, its [`projection_errors`].
pub fn or_projection_errors<K: ConfigResource>(
    obj: &K,
    errors: Vec<crate::validation::FieldError>,
) -> Vec<crate::validation::FieldError> {
    if errors.is_empty() {
        projection_errors(obj)
    } else {
        errors
    }
}

/// Whether a reconcile of `obj` reads the projected Secret: the spec reads Secrets, or a Secret
/// was projected before (it may have to be deleted).
pub fn needs_secret<K: ConfigResource>(obj: &K) -> bool {
    K::USES_SECRETS
        && (!obj.secret_refs().is_empty()
            || obj
                .config_status()
                .and_then(|s| s.projected.as_ref())
                .is_some_and(|p| p.secret.is_some()))
}

// How often restart targets are looked at while a round is in progress (workloads are read,
// not watched).
const PROGRESS_POLL: Duration = Duration::from_secs(2);

fn sooner(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

fn now_string(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The best known identity of whoever changed the spec last: the author the admission webhook
/// vouched for (`attested`, see [`Observed::attested_author`]), else the field manager of the
/// newest managed-fields entry that touches `spec`. The `hotconf.dev/changed-by` annotation on
/// its own is not trusted: anyone who may edit the object may set it.
pub fn changed_by<K: Resource>(obj: &K, attested: Option<&str>) -> Option<String> {
    if let Some(by) = attested {
        return Some(by.to_string());
    }
    newest_spec_entry(obj).and_then(|m| m.manager.clone())
}

// The newest managed-fields entry that sets a value of `spec` (see [`sets_spec`]).
fn newest_spec_entry<K: Resource>(obj: &K) -> Option<&ManagedFieldsEntry> {
    obj.meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| sets_spec(m))
        .max_by_key(|m| m.time.as_ref().map(|t| t.0))
}

/// Whether a managedFields entry owns annotation `name`.
pub fn owns_annotation(entry: &ManagedFieldsEntry, name: &str) -> bool {
    entry
        .fields_v1
        .as_ref()
        .and_then(|f| {
            f.0.get("f:metadata")?
                .get("f:annotations")?
                .get(format!("f:{name}"))
        })
        .is_some()
}

/// The `hotconf.dev/change-reason` written with the spec change of a new generation (SPEC
/// §5.4). The annotation stays on the object after the change it explained, so it counts only
/// when it was written with this one: the manager that set the spec last also owns it (one
/// manifest carries both, as with `kubectl apply` or a GitOps sync), or it no longer says what
/// the newest revision of an earlier change recorded (it was rewritten since, e.g. by `kubectl
/// annotate` before a `kubectl patch`). `history` is the recorded history, oldest first; a
/// revision that recorded no reason is passed over.
pub fn change_reason<K: Resource>(obj: &K, history: &[crate::crd::Snapshot]) -> Option<String> {
    let reason = obj
        .meta()
        .annotations
        .as_ref()?
        .get(crate::crd::names::CHANGE_REASON)?;
    let spec_manager = newest_spec_entry(obj).and_then(|m| m.manager.as_deref());
    let written_with_the_spec = spec_manager.is_some()
        && obj
            .meta()
            .managed_fields
            .iter()
            .flatten()
            .filter(|m| m.manager.as_deref() == spec_manager)
            .any(|m| owns_annotation(m, crate::crd::names::CHANGE_REASON));
    // The newest reason a person's change recorded (a change without one says nothing).
    let previous = history
        .iter()
        .rev()
        .filter(|s| s.changed_by.as_deref() != Some(crate::crd::MANAGER))
        .find_map(|s| s.reason.as_deref());
    (written_with_the_spec || previous != Some(reason.as_str())).then(|| reason.clone())
}

/// Who set the `hotconf.dev/rollback-to` annotation: the field manager of the newest
/// managed-fields entry that owns it (`kubectl-annotate`, `hotconf-cli`, ...).
pub fn rollback_requester<K: Resource>(obj: &K) -> Option<String> {
    obj.meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| owns_annotation(m, crate::crd::names::ROLLBACK_TO))
        .max_by_key(|m| m.time.as_ref().map(|t| t.0))
        .and_then(|m| m.manager.clone())
}

/// Whether a managedFields entry sets a value of `spec` (outside subresources). An entry that
/// owns only the spec's structure (`.` markers: servers before 1.22 leave those with a manager
/// whose values another manager took over, under the same timestamp) set nothing.
pub fn sets_spec(entry: &ManagedFieldsEntry) -> bool {
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
            // `spec: {}` is itself a value (kubectl records `f:spec: {}`).
            .is_some_and(|spec| spec.as_object().is_some_and(|m| m.is_empty()) || has_leaf(spec))
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

/// Decides what one reconcile does: a sequence of pure steps, each reading the object and what
/// was observed and filling its part of the plan.
pub fn plan<K: ConfigResource>(obj: &K, observed: &Observed) -> Plan {
    let cx = Context::new(obj, observed);
    let mut draft = Draft::new(&cx.prev, cx.generation);
    let revision = revision::decide_revision(&cx, &mut draft);
    if revision.recovered.is_some() {
        // Record first, and only that: the spec is looked at again once the status holds it.
        draft.status.observed_generation = cx.prev.observed_generation;
        let pinned = cx.prev.rollback.as_ref().map(|r| r.target_revision);
        trim_history(&cx, &mut draft, pinned);
        draft.plan.requeue_after = Some(Duration::ZERO);
        return draft.finish(&cx.prev);
    }
    let rollback = rollback::decide_rollback(&cx, &mut draft);
    let projection = project::decide_projection(&cx, &mut draft, &revision, rollback.pinned);
    restarts::decide_restarts(&cx, &mut draft, &projection);
    let progressing = consumers::decide_consumers(&cx, &mut draft);
    trim_history(&cx, &mut draft, rollback.pinned);
    let outcome = conditions::Outcome {
        revision: &revision,
        rollback: &rollback,
        projection: &projection,
        progressing,
    };
    conditions::decide_conditions(&cx, &mut draft, outcome);
    draft.finish(&cx.prev)
}

/// What every step reads: the object, what was observed, and what follows from them.
pub(crate) struct Context<'a, K> {
    pub obj: &'a K,
    pub observed: &'a Observed,
    pub name: String,
    pub namespace: String,
    pub generation: i64,
    /// The status as the object carries it.
    pub prev: ConfigStatus,
    pub target: ResolvedTarget,
    pub now: DateTime<Utc>,
}

impl<'a, K: ConfigResource> Context<'a, K> {
    pub fn new(obj: &'a K, observed: &'a Observed) -> Self {
        let name = obj.name_any();
        Context {
            obj,
            observed,
            namespace: obj.namespace().unwrap_or_default(),
            generation: obj.meta().generation.unwrap_or(0),
            prev: obj.config_status().cloned().unwrap_or_default(),
            target: ResolvedTarget::resolve(obj.target(), &name),
            now: observed.now,
            name,
        }
    }
}

/// What the steps fill in: the new status, the Events, and the rest of the plan.
#[derive(Debug)]
pub(crate) struct Draft {
    pub status: ConfigStatus,
    pub events: Vec<PlannedEvent>,
    pub plan: Plan,
}

impl Draft {
    /// Starts from the previous status, now describing `generation`.
    pub fn new(prev: &ConfigStatus, generation: i64) -> Self {
        let mut status = prev.clone();
        status.observed_generation = Some(generation);
        Draft {
            status,
            events: Vec::new(),
            plan: Plan::default(),
        }
    }

    fn finish(mut self, prev: &ConfigStatus) -> Plan {
        self.plan.status_changed = self.status != *prev;
        self.plan.status = self.status;
        self.plan.events = self.events;
        self.plan
    }
}

/// History within its bounds: `revisionHistoryLimit` and the byte budget; the latest, the
/// projected and a pinned revision stay.
pub(crate) fn trim_history<K: ConfigResource>(
    cx: &Context<'_, K>,
    draft: &mut Draft,
    pinned: Option<i64>,
) {
    let status = &mut draft.status;
    let keep: Vec<i64> = status
        .latest_revision
        .into_iter()
        .chain(status.current_revision)
        .chain(pinned)
        .collect();
    history::trim(
        &mut status.history,
        history::history_limit(cx.obj.history_limit()),
        history::HISTORY_BYTE_BUDGET,
        &keep,
    );
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
    use super::conditions::find_condition;
    use super::*;
    use crate::crd::{RuntimeConfig, names};

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
        observed.workloads = vec![Workload::test("web", Some(revision))];
    }

    /// A RuntimeConfig with a restart-only `workers` (default 4), and `timeout` when asked,
    /// restarting Deployment `web`, which has not been stamped yet.
    fn start(with_timeout: bool) -> (RuntimeConfig, Observed) {
        use crate::crd::{ParamType, Parameter};
        let workers = Parameter::test(ParamType::Integer)
            .with_default(4)
            .restart_only();
        let mut obj = RuntimeConfig::test()
            .with_param("workers", workers)
            .with_restart_target("web");
        if with_timeout {
            obj = obj.with_param(
                "timeout",
                Parameter::test(ParamType::Integer).with_default(30),
            );
        }
        let mut observed = Observed::test();
        rolled(&mut observed, 0);
        (obj, observed)
    }

    fn restarts(plan: &Plan) -> Vec<i64> {
        plan.restart.iter().map(|(_, _, r)| *r).collect()
    }

    #[test]
    fn restarts_follow_the_projected_revision_through_rollback_and_release() {
        let (mut obj, mut observed) = start(true);
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
        let (mut obj, mut observed) = start(false);
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
    use crate::crd::names;
    use crate::crd::{RuntimeConfig, RuntimeConfigSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, Time};

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
    fn a_change_reason_counts_only_when_written_with_the_change() {
        let reason = |v: &str| {
            serde_json::json!({"f:metadata": {"f:annotations": {
            format!("f:{}", names::CHANGE_REASON): {}}}, "f:spec": {"f:values": {v: {}}}})
        };
        let mut obj = RuntimeConfig::new("app", RuntimeConfigSpec::default());
        obj.metadata.annotations = Some(BTreeMap::from([(
            names::CHANGE_REASON.to_string(),
            "raise v".to_string(),
        )]));
        // One manifest carries both (kubectl apply, a GitOps sync): it counts, even unchanged.
        obj.metadata.managed_fields = Some(vec![entry("argocd-controller", reason("v"), None)]);
        let earlier = |r: &str, by: &str| crate::crd::Snapshot {
            reason: Some(r.into()),
            changed_by: Some(by.into()),
            ..Default::default()
        };
        assert_eq!(change_reason(&obj, &[]).as_deref(), Some("raise v"));
        let history = [earlier("raise v", "argocd-controller")];
        assert_eq!(change_reason(&obj, &history).as_deref(), Some("raise v"));
        // A later `kubectl patch` of the spec alone: the reason was the earlier change's.
        let mut later = entry(
            "kubectl-patch",
            serde_json::json!({"f:spec": {"f:values": {"f:w": {}}}}),
            None,
        );
        later.time = Some(Time("2026-12-01T10:05:00Z".parse().unwrap()));
        obj.metadata.managed_fields.as_mut().unwrap().push(later);
        assert_eq!(change_reason(&obj, &history), None);
        // Nor does a second such patch, after a revision that recorded no reason.
        let quiet = crate::crd::Snapshot {
            changed_by: Some("kubectl-patch".into()),
            ..Default::default()
        };
        let history = [history[0].clone(), quiet];
        assert_eq!(change_reason(&obj, &history), None);
        // ... unless the annotation was rewritten since (`kubectl annotate`, then the patch);
        // the operator's own revisions in between do not count as the earlier change.
        let history = [
            earlier("first", "argocd-controller"),
            earlier("MaintenanceEnded", crate::crd::MANAGER),
        ];
        assert_eq!(change_reason(&obj, &history).as_deref(), Some("raise v"));
        obj.metadata.annotations = None;
        assert_eq!(change_reason(&obj, &history), None);
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
        assert_eq!(changed_by(&obj, None).as_deref(), Some("alice-tool"));
        // The annotation alone is not trusted; only what the webhook vouched for is.
        obj.metadata.annotations = Some(BTreeMap::from([(
            names::CHANGED_BY.to_string(),
            "mallory".to_string(),
        )]));
        assert_eq!(changed_by(&obj, None).as_deref(), Some("alice-tool"));
        assert_eq!(changed_by(&obj, Some("bob")).as_deref(), Some("bob"));
        assert_eq!(rollback_requester(&obj), None);
        obj.metadata.managed_fields.as_mut().unwrap().push(entry(
            "kubectl-annotate",
            serde_json::json!({"f:metadata": {"f:annotations": {"f:hotconf.dev/rollback-to": {}}}}),
            None,
        ));
        assert_eq!(
            rollback_requester(&obj).as_deref(),
            Some("kubectl-annotate")
        );
        // On a current server the status entry names its subresource; spec entries are kept.
        let statusy = entry(
            "hotconf",
            serde_json::json!({"f:spec": {"f:x": {}}}),
            Some("status"),
        );
        assert!(!sets_spec(&statusy));
        // An empty spec was set by someone; a bare structure marker sets nothing.
        let empty = entry(
            "kubectl-client-side-apply",
            serde_json::json!({"f:spec": {}}),
            None,
        );
        assert!(sets_spec(&empty));
        let marker = entry("old", serde_json::json!({"f:spec": {".": {}}}), None);
        assert!(!sets_spec(&marker));
    }
}

#[cfg(test)]
mod history_tests {
    use super::*;
    use crate::crd::RuntimeConfig;
    use crate::crd::names;

    #[test]
    fn history_is_trimmed_through_the_plan_keeping_the_pin() {
        let mut obj = RuntimeConfig::test().with_history_limit(2);
        let mut observed = Observed::test();
        for v in 1..=4 {
            obj = obj.with_value("v", v).next_generation();
            let p = plan(&obj, &observed);
            obj.status = Some(p.status);
            observed.config_map = p.config_map.or(observed.config_map);
        }
        let revisions = |obj: &RuntimeConfig| -> Vec<i64> {
            obj.status
                .as_ref()
                .unwrap()
                .history
                .iter()
                .map(|s| s.revision)
                .collect()
        };
        assert_eq!(revisions(&obj), vec![3, 4], "the newest two");

        // Pin 3, then two more changes keep it... until the spec moves on and releases it.
        obj = obj.with_annotation(names::ROLLBACK_TO, Some("3"));
        let p = plan(&obj, &observed);
        obj.status = Some(p.status);
        let mut one_more = obj.clone().with_value("v", 5);
        one_more.status = obj.status.clone();
        let cx = Context::new(&one_more, &observed);
        let mut draft = Draft::new(&cx.prev, cx.generation);
        draft.status.history.push(crate::crd::Snapshot {
            revision: 5,
            ..draft.status.history[1].clone()
        });
        draft.status.latest_revision = Some(5);
        trim_history(&cx, &mut draft, Some(3));
        let kept: Vec<i64> = draft.status.history.iter().map(|s| s.revision).collect();
        assert_eq!(
            kept,
            vec![3, 5],
            "the pinned and the latest, within the limit of 2"
        );
    }
}

#[cfg(test)]
mod outcome_tests {
    use super::*;
    use crate::crd::names;
    use crate::crd::{ParamType, Parameter, PoolBudget, RuntimeConfig};

    #[test]
    fn a_plan_says_what_it_amounts_to_and_a_reconcile_what_to_read() {
        let obj = RuntimeConfig::test().with_value("v", 1);
        let p = plan(&obj, &Observed::test());
        assert_eq!(
            p.outcome,
            Outcome {
                projected: true,
                ..Default::default()
            }
        );
        let invalid = obj
            .clone()
            .with_param("v", Parameter::test(ParamType::String));
        assert!(plan(&invalid, &Observed::test()).outcome.validation_failed);
        let pinned = {
            let mut o = obj.clone();
            o.status = Some(p.status.clone());
            o.with_annotation(names::ROLLBACK_TO, Some("1"))
        };
        // Revision 1 is what is projected already: pinning it takes effect all the same.
        let pinned = plan(&pinned, &Observed::test()).outcome;
        assert!(pinned.rolled_back && !pinned.rolled_back_automatically);
        // An invalid spec counts on every reconcile, not only when its message is new.
        let mut again = invalid.clone();
        again.status = Some(plan(&invalid, &Observed::test()).status);
        assert!(plan(&again, &Observed::test()).outcome.validation_failed);

        assert!(
            !needs_secret(&obj),
            "no valuesFrom, nothing projected to a Secret"
        );
        assert!(needs_secret(
            &obj.with_spec(|s| s.with_secret("pw", "db", "password"))
        ));
        assert!(
            !needs_secret(&PoolBudget::test()),
            "PoolBudgets have no Secrets"
        );
    }
}
