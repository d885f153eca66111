//! Performing a plan: the Secret and ConfigMap applies, restart stamps, deletions of stale
//! projections, the status apply (conditional on the version the plan was made from) and the
//! Events, in that order.

use super::*;

/// The pod-template annotation that restarts a workload.
pub use crate::crd::names::RESTART_REVISION;

// Stamps the pod template, and only it, by server-side apply: the workload's controller rolls it.
pub(super) async fn restart(
    client: &Client,
    ns: &str,
    kind: WorkloadKind,
    name: &str,
    revision: i64,
) -> Result<(), Error> {
    let resource = workload_resource(kind);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let body = json!({
        "apiVersion": "apps/v1",
        "kind": resource.kind,
        "metadata": {"name": name},
        "spec": {"template": {"metadata": {"annotations": {RESTART_REVISION: revision.to_string()}}}}
    });
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    info!(kind = %resource.kind, %name, revision, "restarting for restart-only keys");
    Ok(())
}

pub(super) fn set_status<K: ConfigResource>(obj: &mut K, status: ConfigStatus) {
    *obj.status_mut() = Some(status);
}

pub(super) async fn execute<K: ConfigResource>(
    obj: &K,
    plan: &Plan,
    ctx: &Context,
    cms: &Api<ConfigMap>,
    secrets: &Api<Secret>,
) -> Result<(), Error> {
    let apply = PatchParams::apply(MANAGER).force();
    let name = obj.name_any();
    // Leadership is checked before every write, not only when the reconcile began: a holder
    // whose renewals stopped (its requests hang, say) must not write past its deadline, even
    // halfway through a plan.
    let fence = || {
        if ctx.leading() {
            Ok(())
        } else {
            Err(Error::NotLeader)
        }
    };
    if let Some(secret) = &plan.secret {
        fence()?;
        secrets
            .patch(&secret.name_any(), &apply, &Patch::Apply(secret))
            .await?;
    }
    if let Some(cm) = &plan.config_map {
        fence()?;
        cms.patch(&cm.name_any(), &apply, &Patch::Apply(cm)).await?;
        info!(kind = K::KIND, %name, configmap = %cm.name_any(), revision = plan.status.current_revision, "projected");
    }
    let ns = obj.namespace().unwrap_or_default();
    for (kind, target, revision) in &plan.restart {
        fence()?;
        restart(&ctx.client, &ns, *kind, target, *revision).await?;
    }
    let uid = obj.uid().unwrap_or_default();
    let owned =
        |meta: &kube::api::ObjectMeta| meta.owner_references.iter().flatten().any(|o| o.uid == uid);
    for stale in &plan.delete_config_maps {
        if let Some(cm) = cms.get_opt(stale).await?
            && owned(&cm.metadata)
        {
            fence()?;
            cms.delete(stale, &delete_exact(cm.uid())).await?;
        }
    }
    for stale in &plan.delete_secrets {
        if let Some(s) = secrets.get_opt(stale).await?
            && owned(&s.metadata)
        {
            fence()?;
            secrets.delete(stale, &delete_exact(s.uid())).await?;
        }
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &obj.namespace().unwrap_or_default());
    if plan.status_changed {
        fence()?;
        // Conditional on the version the plan was made from: a plan from an older version
        // must not overwrite newer history (it is made again; see `reconcile_inner`).
        let body = json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "metadata": {"resourceVersion": obj.resource_version()},
            "status": plan.status,
        });
        let term = ctx.current_term();
        let updated = api
            .patch_status(&name, &apply, &Patch::Apply(&body))
            .await?;
        if let Some(uid) = obj.uid() {
            ctx.trust(&uid, term, updated.resource_version().as_deref());
        }
        if let (Some(rv), Some(uid)) = (obj.resource_version(), obj.uid()) {
            let mut written = ctx.written.lock().expect("lock");
            written.insert(uid, (rv, plan.status.clone()));
            drop(updated);
        }
    }
    if plan.remove_rollback_annotation {
        fence()?;
        let patch = json!({"metadata": {"annotations": {names::ROLLBACK_TO: null}}});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    let kind = OperatorMetrics::kind(K::KIND);
    let outcome = &plan.outcome;
    for (happened, counter) in [
        (outcome.projected, &ctx.metrics.revisions_projected),
        (outcome.validation_failed, &ctx.metrics.validation_failures),
    ] {
        if happened {
            counter.get_or_create(&kind).inc();
        }
    }
    if outcome.rolled_back {
        let labels = OperatorMetrics::rollback(K::KIND, outcome.rolled_back_automatically);
        ctx.metrics.rollbacks.get_or_create(&labels).inc();
    }
    let reference = obj.object_ref(&());
    for e in &plan.events {
        fence()?;
        let event = Event {
            type_: if e.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: e.reason.into(),
            note: Some(truncate(&e.note, 1000)),
            action: e.action.into(),
            secondary: None,
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            warn!(kind = K::KIND, %name, reason = e.reason, error = %err, "publishing an event failed");
        }
    }
    Ok(())
}

pub(super) fn delete_exact(uid: Option<String>) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..Default::default()
    }
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}
