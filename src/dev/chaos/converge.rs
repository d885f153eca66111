//! Whether an object has converged: its ConfigMap carries the revision and hash its status
//! names, the status speaks for the current generation, and the library's own
//! [`reconcile::plan`] over what the API server holds now would write nothing (so the content
//! is what the final spec, or the pin, asks for).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, Client, ResourceExt as _};

use super::invariants::FinalState;
use super::workload::Object;
use crate::crd::{PoolBudget, RuntimeConfig, names};
use crate::dev::error::Error;
use crate::document::ResolvedSecret;
use crate::history;
use crate::kinds::ConfigResource;
use crate::reconcile::{self, Observed};

/// An object's verdict: `None` when converged, else why not; and its final state.
pub async fn check(
    client: &Client,
    ns: &str,
    o: &Object,
) -> Result<(Option<String>, FinalState), Error> {
    if o.runtime_config {
        check_kind(
            &Api::<RuntimeConfig>::namespaced(client.clone(), ns)
                .get(&o.name)
                .await?,
            client,
            ns,
        )
        .await
    } else {
        check_kind(
            &Api::<PoolBudget>::namespaced(client.clone(), ns)
                .get(&o.name)
                .await?,
            client,
            ns,
        )
        .await
    }
}

async fn resolve<K: ConfigResource>(
    obj: &K,
    secrets: &Api<Secret>,
) -> Result<BTreeMap<String, Result<ResolvedSecret, String>>, Error> {
    let mut out = BTreeMap::new();
    for (key, r) in obj.secret_refs() {
        let value = match secrets.get_opt(&r.name).await? {
            None => Err(format!("Secret {:?} not found", r.name)),
            Some(s) => s
                .data
                .as_ref()
                .and_then(|d| d.get(&r.key))
                .and_then(|b| String::from_utf8(b.0.clone()).ok())
                .map(|value| ResolvedSecret {
                    value,
                    salt: s.uid().unwrap_or_default(),
                })
                .ok_or_else(|| format!("key {:?} not found in Secret {:?}", r.key, r.name)),
        };
        out.insert(key, value);
    }
    Ok(out)
}

async fn check_kind<K: ConfigResource>(
    obj: &K,
    client: &Client,
    ns: &str,
) -> Result<(Option<String>, FinalState), Error> {
    let name = obj.name_any();
    let status = obj.config_status();
    let target = obj
        .target()
        .and_then(|t| t.config_map_name.clone())
        .unwrap_or_else(|| name.clone());
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let config_map = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(&target)
        .await?;
    let observed = Observed {
        secret: if reconcile::needs_secret(obj) {
            secrets.get_opt(&target).await?
        } else {
            None
        },
        secrets: resolve(obj, &secrets).await?,
        config_map: config_map.clone(),
        now: chrono::Utc::now(),
        ..Default::default()
    };
    let final_state = FinalState {
        name: name.clone(),
        history: status
            .map(|s| {
                s.history
                    .iter()
                    .map(|h| (h.revision, h.hash.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        latest: status.and_then(|s| s.latest_revision),
        pinned: status.and_then(|s| s.rollback.as_ref().map(|r| r.target_revision)),
        current: status.and_then(|s| s.current_revision),
        at_bounds: status.is_some_and(|s| {
            s.history.len() >= history::history_limit(obj.history_limit())
                || history::history_bytes(&s.history) > history::HISTORY_BYTE_BUDGET * 3 / 4
        }),
    };
    let annotation = |key: &str| {
        config_map
            .as_ref()
            .and_then(|cm| cm.annotations().get(key).cloned())
    };
    let current = status.and_then(|s| s.current_revision);
    let verdict = if status.and_then(|s| s.observed_generation) != obj.meta().generation {
        Some(format!(
            "status is for generation {:?}, the object is at {:?}",
            status.and_then(|s| s.observed_generation),
            obj.meta().generation
        ))
    } else if annotation(names::REVISION) != current.map(|r| r.to_string()) {
        Some(format!(
            "ConfigMap at revision {:?}, status at {current:?}",
            annotation(names::REVISION)
        ))
    } else if annotation(names::HASH) != status.and_then(|s| s.current_hash.clone()) {
        Some(format!(
            "ConfigMap hash {:?}, status hash {:?}",
            annotation(names::HASH),
            status.and_then(|s| s.current_hash.clone())
        ))
    } else {
        let plan = reconcile::plan(obj, &observed);
        if plan.config_map.is_some()
            || plan.secret.is_some()
            || plan.status_changed
            || plan.remove_rollback_annotation
        {
            // Which status fields would change, for finding out why.
            let fields: Vec<String> = match (
                serde_json::to_value(status.cloned().unwrap_or_default()),
                serde_json::to_value(&plan.status),
            ) {
                (Ok(serde_json::Value::Object(before)), Ok(serde_json::Value::Object(after))) => {
                    let keys: std::collections::BTreeSet<&String> =
                        before.keys().chain(after.keys()).collect();
                    keys.into_iter()
                        .filter(|k| before.get(*k) != after.get(*k))
                        .map(|k| format!("{k}: {:?} -> {:?}", before.get(k), after.get(k)))
                        .collect()
                }
                _ => Vec::new(),
            };
            Some(format!(
                "a reconcile would still write (ConfigMap {}, Secret {}, status {}, annotation {}; would project {:?}; status fields {})",
                plan.config_map.is_some(),
                plan.secret.is_some(),
                plan.status_changed,
                plan.remove_rollback_annotation,
                plan.status.current_revision,
                fields.join("; ").chars().take(600).collect::<String>(),
            ))
        } else {
            None
        }
    };
    Ok((verdict.map(|v| format!("{name}: {v}")), final_state))
}
