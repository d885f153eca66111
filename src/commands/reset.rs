//! `hotconf reset rtc/NAME [--keys k1,k2] [--apply]`: the spec with those values returned to
//! their schema defaults, printed as a manifest to commit, or, with `--apply`, written as one
//! change with a `hotconf.dev/change-reason`, which the operator records as one revision.
//!
//! Each key gets its schema default written into `spec.values` rather than being removed: a
//! removal leaves no managed-fields entry behind, so history would name whoever set the spec
//! before as the author of the reset; an explicit value names `hotconf-reset`. The effective
//! document is the same either way.
//!
//! Refused, with the reason and nothing written: a key the schema does not declare, a key that is
//! not set or already holds its default, a key without a schema default (there is nothing to
//! return it to), a key read from a Secret (`valuesFrom`), and a result the operator's
//! validation would refuse.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use serde_json::{Map, Value, json};

use super::cluster::{ClusterArgs, Kind, Object, ObjectRef, RESET_MANAGER, Target, connect};
use super::rollback::{parse_timeout, revision_text, wait};
use crate::crd::{GROUP, RuntimeConfigSpec, VERSION, names};
use crate::kinds::ConfigResource;

/// Arguments of `hotconf reset`.
#[derive(clap::Args, Debug)]
pub struct ResetArgs {
    /// The object, `rtc/NAME`.
    #[arg(value_name = "KIND/NAME")]
    pub object: String,
    /// The keys to return to their schema defaults (default: every key set in `spec.values`
    /// that has one).
    #[arg(long, value_delimiter = ',', value_name = "K1,K2")]
    pub keys: Vec<String>,
    /// Write the change (a merge patch of `spec.values` and `hotconf.dev/change-reason`, field
    /// manager `hotconf-reset`) and wait for the operator's revision, instead of printing the
    /// manifest.
    #[arg(long)]
    pub apply: bool,
    /// The change reason recorded in history (default: which keys were reset).
    #[arg(long)]
    pub reason: Option<String>,
    /// With `--apply`, how long to wait for the operator (`0s`: do not wait).
    #[arg(
        long,
        env = "HOTCONF_RESET_TIMEOUT",
        default_value = "60s",
        value_parser = parse_timeout
    )]
    pub timeout: Duration,
    /// How to reach the cluster.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The keys to reset in `spec`, checked: every requested key is set, declared, has a default and
/// does not come from a Secret. Without requested keys: every set key that has a default.
pub fn keys_to_reset(
    spec: &RuntimeConfigSpec,
    requested: &[String],
) -> anyhow::Result<Vec<String>> {
    if requested.is_empty() {
        let keys: Vec<String> = spec
            .values
            .keys()
            .filter(|k| default_of(spec, k).is_some_and(|d| spec.values.get(*k) != Some(&d)))
            .cloned()
            .collect();
        if keys.is_empty() {
            bail!("nothing to reset: every key in spec.values with a schema default holds it");
        }
        return Ok(keys);
    }
    let mut problems = Vec::new();
    for key in requested {
        let param = spec.schema.get(key);
        if spec.values_from.iter().any(|f| &f.key == key) {
            problems.push(format!(
                "{key} comes from a Secret (valuesFrom), not from spec.values"
            ));
        } else if param.is_none() {
            problems.push(format!("{key} is not declared in spec.schema"));
        } else if !spec.values.contains_key(key) {
            problems.push(format!(
                "{key} is not set in spec.values: it has its default already"
            ));
        } else if param.is_some_and(|p| p.default.is_none()) {
            problems.push(format!(
                "{key} has no default in spec.schema: there is nothing to return it to"
            ));
        } else if default_of(spec, key).as_ref() == spec.values.get(key) {
            problems.push(format!("{key} already holds its schema default"));
        }
    }
    if !problems.is_empty() {
        bail!("cannot reset: {}", problems.join("; "));
    }
    let mut keys = requested.to_vec();
    keys.sort();
    keys.dedup();
    Ok(keys)
}

// The schema default of `key`, as the value `spec.values` would hold.
fn default_of(spec: &RuntimeConfigSpec, key: &str) -> Option<Value> {
    spec.schema.get(key)?.default.clone()
}

/// Runs `hotconf reset`.
pub async fn run(args: ResetArgs) -> anyhow::Result<ExitCode> {
    let object: ObjectRef = args.object.parse().map_err(anyhow::Error::msg)?;
    if object.kind != Kind::RuntimeConfig {
        bail!(
            "reset returns RuntimeConfig values to their schema defaults; a PoolBudget has no \
             schema (edit its spec, or `hotconf export` an earlier revision)"
        );
    }
    let cluster = connect(&args.cluster).await?;
    let target = Target {
        cluster: &cluster,
        object,
    };
    let Object::RuntimeConfig(obj) = target.get().await? else {
        unreachable!("a RuntimeConfig was asked for");
    };
    let keys = keys_to_reset(&obj.spec, &args.keys)?;
    let mut reset = (*obj).clone();
    let defaults: Map<String, Value> = keys
        .iter()
        .filter_map(|k| Some((k.clone(), default_of(&obj.spec, k)?)))
        .collect();
    reset.spec.values.extend(defaults.clone());
    let errors = reset.validate(None);
    if !errors.is_empty() {
        let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
        bail!(
            "the reset spec would be invalid, nothing written: {}",
            list.join("; ")
        );
    }
    let reason = args.reason.clone().unwrap_or_else(|| {
        format!(
            "reset {} to the schema default{}",
            keys.join(", "),
            if keys.len() == 1 { "" } else { "s" }
        )
    });
    if !args.apply {
        let manifest = json!({
            "apiVersion": format!("{GROUP}/{VERSION}"),
            "kind": "RuntimeConfig",
            "metadata": {
                "name": obj.metadata.name,
                "namespace": obj.metadata.namespace,
                "annotations": {names::CHANGE_REASON: reason},
            },
            "spec": reset.spec,
        });
        println!(
            "# {target} with {} reset to the schema defaults, by hotconf",
            keys.join(", ")
        );
        print!("{}", crate::document::yaml::to_string(&manifest));
        return Ok(ExitCode::SUCCESS);
    }
    let before = obj.status.clone().unwrap_or_default().latest_revision;
    target
        .patch_as(
            RESET_MANAGER,
            &json!({
                "metadata": {"annotations": {names::CHANGE_REASON: reason}},
                "spec": {"values": defaults},
            }),
        )
        .await?;
    if args.timeout.is_zero() {
        println!("{target}: {} reset", keys.join(", "));
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = tokio::time::Instant::now() + args.timeout;
    let status = wait(&target, deadline, args.timeout, "record the reset", |s| {
        Ok(s.latest_revision != before && s.current_revision == s.latest_revision)
    })
    .await?;
    println!(
        "{target}: {} reset to the schema defaults; revision {} is projected",
        keys.join(", "),
        revision_text(status.current_revision)
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ParamType, Parameter, RuntimeConfig};

    fn spec() -> RuntimeConfigSpec {
        RuntimeConfig::test()
            .with_param("a", Parameter::test(ParamType::Integer).with_default(1))
            .with_param("b", Parameter::test(ParamType::Integer).with_default(2))
            .with_param("c", Parameter::test(ParamType::Integer))
            .with_value("a", 10)
            .with_value("c", 30)
            .with_spec(|s| s.with_secret("pw", "db", "password"))
            .spec
    }

    #[test]
    fn only_set_keys_with_a_default_are_reset() {
        assert_eq!(keys_to_reset(&spec(), &[]).unwrap(), ["a"]);
        let mut at_default = spec();
        at_default.values.insert("a".into(), json!(1));
        let refused = keys_to_reset(&at_default, &["a".into()]).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("a already holds its schema default")
        );
        assert!(
            keys_to_reset(&at_default, &[]).is_err(),
            "nothing left to reset"
        );
        assert_eq!(
            keys_to_reset(&spec(), &["a".into(), "a".into()]).unwrap(),
            ["a"]
        );
        let refused = keys_to_reset(&spec(), &["b".into(), "c".into(), "pw".into(), "zz".into()])
            .unwrap_err()
            .to_string();
        for part in [
            "b is not set in spec.values",
            "c has no default",
            "pw comes from a Secret",
            "zz is not declared",
        ] {
            assert!(refused.contains(part), "{part} not in {refused}");
        }
    }
}
