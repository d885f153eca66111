//! What a reconcile reads besides the object itself: the Secrets of `valuesFrom` (the admission
//! webhook reads them the same way), the restart targets and the consumer pods.

use super::*;

/// Reads the Secrets of `valuesFrom`; a missing Secret or key is a reason, not an error.
pub async fn resolve_secrets<K: ConfigResource>(
    obj: &K,
    secrets: &Api<Secret>,
) -> Result<BTreeMap<String, Result<ResolvedSecret, String>>, Error> {
    let mut out = BTreeMap::new();
    let mut cache: HashMap<String, Option<Secret>> = HashMap::new();
    for (key, r) in obj.secret_refs() {
        if !cache.contains_key(&r.name) {
            cache.insert(r.name.clone(), secrets.get_opt(&r.name).await?);
        }
        let resolved = match &cache[&r.name] {
            None => Err(format!("Secret {:?} not found", r.name)),
            Some(s) => {
                let from_data = s.data.as_ref().and_then(|d| d.get(&r.key)).map(|b| {
                    String::from_utf8(b.0.clone())
                        .map_err(|_| format!("key {:?} of Secret {:?} is not UTF-8", r.key, r.name))
                });
                let from_string = s
                    .string_data
                    .as_ref()
                    .and_then(|d| d.get(&r.key))
                    .map(|v| Ok(v.clone()));
                match from_data.or(from_string) {
                    Some(Ok(value)) => Ok(ResolvedSecret {
                        value,
                        salt: s.uid().unwrap_or_default(),
                    }),
                    Some(Err(e)) => Err(e),
                    None => Err(format!("key {:?} not found in Secret {:?}", r.key, r.name)),
                }
            }
        };
        out.insert(key, resolved);
    }
    Ok(out)
}

pub(super) fn workload_resource(kind: WorkloadKind) -> ApiResource {
    ApiResource {
        group: "apps".into(),
        version: "v1".into(),
        api_version: "apps/v1".into(),
        kind: rollout::kind_name(kind).into(),
        plural: match kind {
            WorkloadKind::Deployment => "deployments",
            WorkloadKind::StatefulSet => "statefulsets",
            WorkloadKind::DaemonSet => "daemonsets",
        }
        .into(),
    }
}

pub(super) fn label_selector(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The restart targets as they are now: named ones that exist, and every match of a selector.
pub(super) async fn workloads(
    client: &Client,
    ns: &str,
    targets: &[RestartTarget],
) -> Result<Vec<rollout::Workload>, Error> {
    let mut out: Vec<rollout::Workload> = Vec::new();
    for target in targets {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &workload_resource(target.kind));
        let found = match (&target.name, &target.selector) {
            (Some(name), _) => api.get_opt(name).await?.into_iter().collect(),
            (None, Some(selector)) => {
                api.list(&ListParams::default().labels(&label_selector(selector)))
                    .await?
                    .items
            }
            (None, None) => Vec::new(),
        };
        for o in found {
            let name = o.name_any();
            if out.iter().any(|w| w.kind == target.kind && w.name == name) {
                continue;
            }
            let object = serde_json::json!({
                "metadata": {"name": name, "generation": o.metadata.generation},
                "spec": o.data.get("spec"),
                "status": o.data.get("status"),
            });
            out.push(rollout::Workload::parse(
                target.kind,
                &object,
                RESTART_REVISION,
            ));
        }
    }
    Ok(out)
}
