//! `hotconf export KIND/NAME --revision N`: a manifest (apiVersion, kind, metadata name and
//! namespace, spec; nothing the server owns) whose spec reproduces revision N, to commit to Git.
//!
//! A PoolBudget snapshot is complete, so its `metrics` and `pools` are the spec. A RuntimeConfig
//! snapshot holds the effective values, flags, maintenance and `valuesFrom` references, but not
//! the schema or target: those come from the current spec, `values` keeps only what differs
//! from the current schema's defaults, and the rest is rebuilt from the snapshot. The result is
//! evaluated again; when it would not give revision N's document (the schema changed since, or a
//! maintenance window has ended), a warning on stderr names the keys that differ.

use std::collections::BTreeMap;
use std::process::ExitCode;

use serde_json::{Map, Value, json};

use super::cluster::{ClusterArgs, Object, ObjectRef, RevisionArg, Target, connect, find_snapshot};
use crate::crd::{
    FeatureFlag, GROUP, Maintenance, PoolBudgetSpec, RuntimeConfigSpec, SecretKeyRef, Snapshot,
    VERSION, ValueFrom,
};
use crate::document;
use crate::validation;

/// Arguments of `hotconf export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The object, `rtc/NAME` or `pb/NAME`.
    #[arg(value_name = "KIND/NAME")]
    pub object: String,
    /// The revision: a number, `current`, `latest` or `previous`.
    #[arg(long, env = "HOTCONF_REVISION", value_name = "N")]
    pub revision: RevisionArg,
    /// How to reach the cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Runs `hotconf export`.
pub async fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    // A wrong kind is refused before any connection is made.
    let object: ObjectRef = args.object.parse().map_err(anyhow::Error::msg)?;
    let cluster = connect(&args.cluster).await?;
    let target = Target {
        cluster: &cluster,
        object,
    };
    let object = target.get().await?;
    let status = object.status();
    let snapshot = find_snapshot(&status, args.revision, &target)?;
    let (kind, spec, warnings) = match &object {
        Object::RuntimeConfig(obj) => {
            let spec = runtime_config_spec(&obj.spec, snapshot);
            let warnings = runtime_config_warnings(&spec, snapshot);
            ("RuntimeConfig", serde_json::to_value(spec)?, warnings)
        }
        Object::PoolBudget(obj) => {
            let spec = pool_budget_spec(&obj.spec, snapshot)?;
            let warnings = differences(
                &document::pool_budget(&spec).document,
                &snapshot.document.value(),
            );
            ("PoolBudget", serde_json::to_value(spec)?, warnings)
        }
    };
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
    let manifest = json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": kind,
        "metadata": {"name": object.meta().name, "namespace": object.meta().namespace},
        "spec": spec,
    });
    println!(
        "# {target} at revision {} (hash {}), exported by hotconf",
        snapshot.revision, snapshot.hash
    );
    print!("{}", crate::document::yaml::to_string(&manifest));
    Ok(ExitCode::SUCCESS)
}

/// The current spec with values, `valuesFrom`, flags and maintenance of the snapshot.
pub fn runtime_config_spec(current: &RuntimeConfigSpec, snapshot: &Snapshot) -> RuntimeConfigSpec {
    let doc = &snapshot.document.value();
    let object = |key: &str| {
        doc.get(key)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let mut spec = current.clone();

    // What the current schema fills in by itself need not be written.
    let schema_only = RuntimeConfigSpec {
        schema: current.schema.clone(),
        ..Default::default()
    };
    let defaults = object_at(
        &document::runtime_config(&schema_only, &BTreeMap::new(), chrono::Utc::now()).document,
        "values",
    );
    spec.values = object("values")
        .into_iter()
        .filter(|(k, v)| defaults.get(k) != Some(v))
        .collect();

    spec.values_from = object("secrets")
        .into_iter()
        .filter_map(|(key, source)| {
            let reference = source.get("secretKeyRef")?;
            Some(ValueFrom {
                key,
                secret_key_ref: SecretKeyRef {
                    name: reference.get("name")?.as_str()?.to_string(),
                    key: reference.get("key")?.as_str()?.to_string(),
                },
            })
        })
        .collect();

    // A flag's entry in the document has the spec's own field names: it reads back as one (a
    // rollout of 100, the document's explicit default, is left out again).
    spec.feature_flags = object("featureFlags")
        .into_iter()
        .filter_map(|(name, flag)| {
            let mut flag: FeatureFlag = serde_json::from_value(flag).ok()?;
            flag.rollout_percentage = flag.rollout_percentage.filter(|p| *p != 100);
            Some((name, flag))
        })
        .collect();

    let maintenance = doc.get("maintenance");
    let field = |key: &str| maintenance.and_then(|m| m.get(key));
    let m = Maintenance {
        enabled: field("enabled").and_then(Value::as_bool).unwrap_or(false),
        reason: field("reason")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        until: field("until").and_then(Value::as_str).map(String::from),
    };
    spec.maintenance = (m != Maintenance::default()).then_some(m);
    spec
}

fn object_at(value: &Value, key: &str) -> Map<String, Value> {
    value
        .get(key)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// What stands between the exported RuntimeConfig and the snapshot: validation errors under the
/// current schema, and document keys that would differ (fingerprints aside, which depend on the
/// Secret in the cluster).
fn runtime_config_warnings(spec: &RuntimeConfigSpec, snapshot: &Snapshot) -> Vec<String> {
    let mut warnings: Vec<String> = validation::validate_runtime_config(spec, None)
        .into_iter()
        .map(|e| format!("the exported spec is invalid under the current schema: {e}"))
        .collect();
    let exported = document::runtime_config(spec, &BTreeMap::new(), chrono::Utc::now()).document;
    warnings.extend(differences(
        &without_fingerprints(&exported),
        &without_fingerprints(&snapshot.document.value()),
    ));
    warnings
}

fn without_fingerprints(doc: &Value) -> Value {
    let mut doc = doc.clone();
    if let Some(secrets) = doc.get_mut("secrets").and_then(Value::as_object_mut) {
        for source in secrets.values_mut() {
            if let Some(source) = source.as_object_mut() {
                source.remove("fingerprint");
            }
        }
    }
    doc
}

fn differences(exported: &Value, snapshot: &Value) -> Vec<String> {
    let keys = document::changed_keys(Some(snapshot), exported);
    if keys.is_empty() {
        return Vec::new();
    }
    vec![format!(
        "the exported spec does not reproduce the snapshot exactly (the schema or the time \
         differs from then); these document keys differ: {}",
        keys.join(", ")
    )]
}

/// The current spec's target and settings with the snapshot's (complete) metrics and pools.
pub fn pool_budget_spec(
    current: &PoolBudgetSpec,
    snapshot: &Snapshot,
) -> anyhow::Result<PoolBudgetSpec> {
    let doc = snapshot.document.value();
    let part = |key: &str| doc.get(key).cloned().unwrap_or(Value::Null);
    Ok(PoolBudgetSpec {
        metrics: serde_json::from_value(part("metrics"))?,
        pools: serde_json::from_value(part("pools"))?,
        ..current.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{PoolBudget, RuntimeConfig};
    use kube::ResourceExt as _;

    fn snapshot_of(doc: Value) -> Snapshot {
        Snapshot {
            revision: 1,
            hash: document::hash(&doc),
            document: doc.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_runtime_config_export_reproduces_the_document() {
        let old: RuntimeConfig = serde_yaml::from_str(
            "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: a}\nspec:\n  schema:\n    n: {type: integer, default: 4}\n    s: {type: string, default: x}\n    pw: {type: string, sensitive: true}\n  values: {n: 8}\n  valuesFrom: [{key: pw, secretKeyRef: {name: db, key: password}}]\n  featureFlags:\n    f: {enabled: true, rolloutPercentage: 20, allow: [u1]}\n    g: {enabled: false}\n  maintenance: {enabled: true, reason: up, until: '2999-01-01T00:00:00Z'}\n",
        )
        .unwrap();
        let now = chrono::Utc::now();
        let before = document::runtime_config(&old.spec, &BTreeMap::new(), now).document;
        // The spec moved on since: other values, no flags, no maintenance, no valuesFrom.
        let mut current = old.spec.clone();
        current.values = [("n".to_string(), json!(2)), ("s".to_string(), json!("y"))].into();
        current.feature_flags.clear();
        current.maintenance = None;
        current.values_from.clear();
        let spec = runtime_config_spec(&current, &snapshot_of(before.clone()));
        assert_eq!(
            spec.values,
            [("n".to_string(), json!(8))].into(),
            "defaults left out"
        );
        assert_eq!(spec.values_from, old.spec.values_from);
        assert_eq!(spec.feature_flags, old.spec.feature_flags);
        assert_eq!(spec.maintenance, old.spec.maintenance);
        let after = document::runtime_config(&spec, &BTreeMap::new(), now).document;
        assert_eq!(document::hash(&after), document::hash(&before));
        assert!(runtime_config_warnings(&spec, &snapshot_of(before)).is_empty());
    }

    #[test]
    fn a_changed_schema_is_warned_about() {
        let mut spec = RuntimeConfigSpec::default();
        spec.values.insert("old_key".into(), json!(1));
        let snapshot = snapshot_of(
            document::runtime_config(&spec, &BTreeMap::new(), chrono::Utc::now()).document,
        );
        let mut current: RuntimeConfigSpec =
            serde_yaml::from_str("schema: {new_key: {type: integer, default: 3}}").unwrap();
        current.values.clear();
        let exported = runtime_config_spec(&current, &snapshot);
        let warnings = runtime_config_warnings(&exported, &snapshot);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("old_key"), "{warnings:?}");
        assert!(warnings[1].contains("values.new_key"), "{warnings:?}");
    }

    #[test]
    fn a_pool_budget_export_is_complete() {
        let pb: PoolBudget = serde_yaml::from_str(
            "apiVersion: hotconf.dev/v1alpha1\nkind: PoolBudget\nmetadata: {name: a}\nspec: {metrics: {maxMemoryMB: 1024}, pools: {cache: {evictionPolicy: LFU}}, target: {format: env}}\n",
        )
        .unwrap();
        let before = document::pool_budget(&pb.spec).document;
        let spec =
            pool_budget_spec(&PoolBudgetSpec::default(), &snapshot_of(before.clone())).unwrap();
        assert_eq!(document::pool_budget(&spec).document, before);
        assert_eq!(pb.name_any(), "a");
    }
}
