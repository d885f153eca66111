//! The custom resources: `RuntimeConfig` and `PoolBudget` (`hotconf.dev/v1alpha1`), their shared
//! target and status types, and the CRD documents generated from them (`hotconf crds`).

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod bounds;
mod cel;
mod pool_budget;
mod status;
pub use bounds::IntRange;
pub use pool_budget::*;
pub use status::*;

/// The API group.
pub const GROUP: &str = "hotconf.dev";
/// The API version.
pub const VERSION: &str = "v1alpha1";
/// The field manager of everything the operator writes.
pub const MANAGER: &str = "hotconf";

/// Label and annotation names (SPEC.md §2).
pub mod names {
    /// Label on every written object.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// Label: the owning CR's kind.
    pub const OWNER_KIND: &str = "hotconf.dev/owner-kind";
    /// Label: the owning CR's name.
    pub const OWNER_NAME: &str = "hotconf.dev/owner-name";
    /// Annotation on projected objects: the revision they carry.
    pub const REVISION: &str = "hotconf.dev/revision";
    /// Annotation on projected objects: the SHA-256 of the effective document.
    pub const HASH: &str = "hotconf.dev/hash";
    /// Annotation on projected ConfigMaps: the SHA-256 of their data, so that a ConfigMap known
    /// by its metadata alone can be recognized as converged.
    pub const DATA_HASH: &str = "hotconf.dev/data-hash";
    /// User annotation on a CR: pin a revision from history (`N` or `previous`).
    pub const ROLLBACK_TO: &str = "hotconf.dev/rollback-to";
    /// User annotation on a CR: why the spec changed, recorded in history.
    pub const CHANGE_REASON: &str = "hotconf.dev/change-reason";
    /// Annotation naming who changed the spec (set by an admission webhook when present).
    pub const CHANGED_BY: &str = "hotconf.dev/changed-by";
    /// The mutating webhook's proof that it wrote [`CHANGED_BY`] for this spec (an HMAC the
    /// operator verifies; see `webhook::attribution`).
    pub const CHANGED_BY_PROOF: &str = "hotconf.dev/changed-by-proof";
    /// Annotation the agent writes on its Pod.
    pub const APPLIED: &str = "hotconf.dev/applied";
    /// Pod-template annotation the operator stamps on restart targets: the revision whose
    /// restart-only keys the new pods start with.
    pub const RESTART_REVISION: &str = "hotconf.dev/restart-revision";
}

/// The size bounds of a spec: the CRD schema declares them (the API server needs them to cost
/// the CEL rules, and to refuse an absurd object early) and the operator checks them too.
pub mod limits {
    /// Keys of `spec.schema`.
    pub const SCHEMA_KEYS: usize = 1024;
    /// Keys of `spec.values`.
    pub const VALUES_KEYS: usize = 1024;
    /// Entries of `spec.valuesFrom`.
    pub const VALUES_FROM: usize = 256;
    /// Flags in `spec.featureFlags`.
    pub const FEATURE_FLAGS: usize = 512;
    /// Subjects in a flag's `allow` or `deny` (or one variant's `targets`).
    pub const FLAG_SUBJECTS: usize = 256;
    /// Variants of a flag (and entries of its `fractional` and `targets`).
    pub const VARIANTS: usize = 64;
    /// Characters of one subject.
    pub const SUBJECT_LENGTH: usize = 256;
    /// Values of a parameter's `enum`.
    pub const ENUM_VALUES: usize = 256;
    /// Characters of a parameter's `pattern`.
    pub const PATTERN_LENGTH: usize = 1024;
    /// Characters of a parameter's `description`.
    pub const DESCRIPTION_LENGTH: usize = 4096;
    /// Characters of `spec.maintenance.reason`.
    pub const REASON_LENGTH: usize = 1024;
    /// Entries of `spec.restartTargets`.
    pub const RESTART_TARGETS: usize = 64;
    /// Characters of a Kubernetes object name or data key.
    pub const NAME_LENGTH: usize = 253;
}

/// The longest history `revisionHistoryLimit` allows.
pub const MAX_HISTORY_LIMIT: i32 = 100;
/// The default `revisionHistoryLimit`.
pub const DEFAULT_HISTORY_LIMIT: i32 = 10;

// ---------------------------------------------------------------------------------------------
// RuntimeConfig
// ---------------------------------------------------------------------------------------------

/// Typed application settings with a schema, feature flags and a maintenance switch.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "hotconf.dev",
    version = "v1alpha1",
    kind = "RuntimeConfig",
    plural = "runtimeconfigs",
    shortname = "rtc",
    category = "hotconf",
    namespaced,
    status = "ConfigStatus",
    printcolumn = r#"{"name":"Valid","type":"string","jsonPath":".status.conditions[?(@.type==\"Valid\")].status"}"#,
    printcolumn = r#"{"name":"Revision","type":"integer","jsonPath":".status.currentRevision"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = cel::values_from_declared())]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfigSpec {
    /// Declared parameters. When present, values are checked against it and keys not in it
    /// are rejected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = limits::SCHEMA_KEYS))]
    pub schema: BTreeMap<String, Parameter>,
    /// Literal values by key. (A key set here may not also be in `valuesFrom`: CEL cannot see
    /// into free-form values, so the operator and the webhook check that.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "any_map")]
    pub values: BTreeMap<String, Value>,
    /// Values read from Secrets (the only way to set a sensitive key), one entry per key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = limits::VALUES_FROM),
        extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["key"])
    )]
    pub values_from: Vec<ValueFrom>,
    /// Feature flags by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = limits::FEATURE_FLAGS))]
    pub feature_flags: BTreeMap<String, FeatureFlag>,
    /// The maintenance switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// Where and how the effective document is projected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// How many snapshots `.status.history` keeps (1..100, default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub revision_history_limit: Option<i32>,
    /// Validate and record, but do not project.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
    /// Workloads to restart when a revision changes a restart-only key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::RESTART_TARGETS))]
    pub restart_targets: Vec<RestartTarget>,
    /// How restarts roll out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Which pods consume this config, and automatic rollback when they reject it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// The type of a declared parameter.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    /// A UTF-8 string.
    String,
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// true or false.
    Boolean,
    /// A duration such as `30s`, `5m`, `1h30m`.
    Duration,
    /// Any JSON value.
    Json,
}

impl ParamType {
    /// The name used in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
            ParamType::Duration => "duration",
            ParamType::Json => "json",
        }
    }
}

/// One declared parameter (`schema.<key>`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = cel::parameter()[0].clone())]
#[x_kube(validation = cel::parameter()[1].clone())]
#[x_kube(validation = cel::parameter()[2].clone())]
#[x_kube(validation = cel::parameter()[3].clone())]
pub struct Parameter {
    /// The value's type.
    #[serde(rename = "type")]
    pub type_: ParamType,
    /// The value used when none is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub default: Option<Value>,
    /// Lower bound (numbers, integers; a duration string or seconds for durations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub minimum: Option<Value>,
    /// Upper bound (numbers, integers; a duration string or seconds for durations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_value")]
    pub maximum: Option<Value>,
    /// Shortest string length, in characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_length: Option<i64>,
    /// Longest string length, in characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_length: Option<i64>,
    /// A regular expression strings must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::PATTERN_LENGTH))]
    pub pattern: Option<String>,
    /// The allowed values.
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "enum_list")]
    pub enum_: Option<Vec<Value>>,
    /// A change to this key needs a restart of the consumers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requires_restart: bool,
    /// The value is secret: only settable through `valuesFrom[].secretKeyRef`, never shown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sensitive: bool,
    /// What the parameter means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = limits::DESCRIPTION_LENGTH))]
    pub description: Option<String>,
}

/// A value read from a Secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValueFrom {
    /// The key in `values` this sets.
    #[schemars(length(min = 1, max = limits::NAME_LENGTH))]
    pub key: String,
    /// The Secret and the key in it.
    pub secret_key_ref: SecretKeyRef,
}

/// A key of a Secret in the CR's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = limits::NAME_LENGTH), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub name: String,
    /// The key in its data.
    #[schemars(length(min = 1, max = limits::NAME_LENGTH), regex(pattern = DATA_KEY_PATTERN))]
    #[x_kube(validation = cel::data_key())]
    pub key: String,
}

/// A DNS-1123 subdomain: what Kubernetes accepts as the name of a ConfigMap or Secret.
pub const DNS_SUBDOMAIN_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// What Kubernetes accepts as a key of a ConfigMap's or Secret's data (besides `.` and `..`).
pub const DATA_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";

/// A feature flag. (That no subject is in both `allow` and `deny` is the operator's and the
/// webhook's to check: as a CEL rule over lists of this size its cost is over the budget.)
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureFlag {
    /// false turns the flag off for everyone.
    #[serde(default)]
    pub enabled: bool,
    /// The share of subjects in the rollout, 0..100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub rollout_percentage: Option<i64>,
    /// Subjects for whom the flag is always on (when enabled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::FLAG_SUBJECTS), inner(length(max = limits::SUBJECT_LENGTH)))]
    pub allow: Vec<String>,
    /// Subjects for whom the flag is always off.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = limits::FLAG_SUBJECTS), inner(length(max = limits::SUBJECT_LENGTH)))]
    pub deny: Vec<String>,
    /// Variants by name, all values of one type (boolean, string, number or object): a flag
    /// with variants resolves to one of them (SPEC.md §3.1) instead of on/off.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "any_map", extend("maxProperties" = limits::VARIANTS))]
    pub variants: BTreeMap<String, Value>,
    /// The variant of everyone not targeted or split (and of everyone while `enabled` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_variant: Option<String>,
    /// An A/B split: variant → positive weight. Subjects are bucketed over the weights in
    /// variant-name order (a Kubernetes object keeps no key order).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = limits::VARIANTS))]
    pub fractional: BTreeMap<String, i64>,
    /// Fixed variants for listed subjects: variant → subjects.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(
        extend("maxProperties" = limits::VARIANTS),
        inner(length(max = limits::FLAG_SUBJECTS), inner(length(max = limits::SUBJECT_LENGTH)))
    )]
    pub targets: BTreeMap<String, Vec<String>>,
    /// How subjects are bucketed: `flagd` (flagd's `fractional`, v3; the default for variant
    /// flags) or `fnv1a` (SPEC.md §3, the default for on/off rollouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucketing: Option<Bucketing>,
}

/// How a flag buckets its subjects.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Bucketing {
    /// flagd's `fractional` in its v3 form (`feature_flags::fractional`).
    Flagd,
    /// FNV-1a of `flag/subject` (`feature_flags::bucket`).
    Fnv1a,
}

impl Bucketing {
    /// The name in the effective document.
    pub fn as_str(self) -> &'static str {
        match self {
            Bucketing::Flagd => "flagd",
            Bucketing::Fnv1a => "fnv1a",
        }
    }
}

/// The maintenance switch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// Maintenance is on.
    #[serde(default)]
    pub enabled: bool,
    /// Why, for the consumers to show.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = limits::REASON_LENGTH))]
    pub reason: String,
    /// When maintenance ends by itself (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Shared
// ---------------------------------------------------------------------------------------------

/// A workload kind that can be restarted.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
}

/// A workload (or every workload of a kind matching a selector) in the CR's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartTarget {
    /// The workload's kind.
    pub kind: WorkloadKind,
    /// Its name; or use `selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A label selector (`matchLabels`) choosing workloads of this kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<BTreeMap<String, String>>,
}

/// How restarts roll out.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartPolicy {
    /// How many targets restart at once (default: all); the next wave starts once the previous
    /// one's rollouts have finished (by the rule of `kubectl rollout status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_concurrent: Option<i32>,
    /// A target whose rollout has not finished this long after it was stamped halts the round
    /// (`RestartStalled`); a Deployment's own `ProgressDeadlineExceeded` halts it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: Option<i64>,
}

/// Consumer tracking and automatic rollback (`spec.rollout`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// The pods (by label, in the CR's namespace) whose agents report what they applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_selector: Option<BTreeMap<String, String>>,
    /// Roll back automatically when consumers reject a revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<AutoRollback>,
    /// How long after applying a revision a consumer pod that goes NotReady, restarts a
    /// container or crash-loops counts as a failure of that revision (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub health_window_seconds: Option<i64>,
}

/// When to roll back by itself.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoRollback {
    /// Switch.
    #[serde(default)]
    pub enabled: bool,
    /// Failed consumers that trigger a rollback: a count (`2`) or a share (`"50%"`); default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_string")]
    pub max_failures: Option<Value>,
    /// Roll back when not every consumer has applied the revision this long after it was
    /// projected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: Option<i64>,
}

fn int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-int-or-string": true })
}

/// The projected document's serialization.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// YAML (the default).
    #[default]
    Yaml,
    /// JSON.
    Json,
    /// Java properties, `a.b.c=value`.
    Properties,
    /// dotenv, `A_B_C=value`.
    Env,
    /// A flagd flag-definition document of the feature flags (SPEC.md §3.1), for a flagd
    /// sidecar or an in-process flagd provider; values and maintenance are not in it.
    Flagd,
}

impl Format {
    /// The default data key for this format.
    pub fn default_file_name(self) -> &'static str {
        match self {
            Format::Yaml => "config.yaml",
            Format::Json => "config.json",
            Format::Properties => "config.properties",
            Format::Env => "config.env",
            Format::Flagd => "flags.flagd.json",
        }
    }
}

/// Where and how the effective document is projected (`spec.target`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    /// The ConfigMap (and Secret) name; default: the CR's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::NAME_LENGTH), regex(pattern = DNS_SUBDOMAIN_PATTERN))]
    pub config_map_name: Option<String>,
    /// The serialization (default yaml).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Format>,
    /// The data key holding the whole document (default `config.<format>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::NAME_LENGTH), regex(pattern = DATA_KEY_PATTERN))]
    #[x_kube(validation = cel::data_key())]
    pub file_name: Option<String>,
    /// Also write one data key per value.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub flatten: bool,
    /// Also write the feature flags as a flagd flag-definition document under this data key
    /// (e.g. `flags.flagd.json`), beside the document: the hotconf agent and a flagd provider
    /// in the same pod read one ConfigMap (RuntimeConfig only; SPEC.md §3.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = limits::NAME_LENGTH), regex(pattern = DATA_KEY_PATTERN))]
    #[x_kube(validation = cel::data_key())]
    pub flagd_file_name: Option<String>,
}

fn any_value(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

fn any_map(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": { "x-kubernetes-preserve-unknown-fields": true }
    })
}

fn enum_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": limits::ENUM_VALUES,
        "items": { "x-kubernetes-preserve-unknown-fields": true }
    })
}

/// The CRDs, as `hotconf crds` prints them and `crds/` holds them.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![runtime_config_crd(), PoolBudget::crd()]
}

fn runtime_config_crd() -> CustomResourceDefinition {
    let mut crd = serde_json::to_value(RuntimeConfig::crd()).expect("a CRD serializes");
    // schemars types an optional free-form field named `default` as a nullable string; a
    // parameter's default is any JSON value.
    let pointer = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/schema/additionalProperties/properties/default";
    if let Some(node) = crd.pointer_mut(pointer) {
        *node = serde_json::json!({
            "description": "The value used when none is set.",
            "x-kubernetes-preserve-unknown-fields": true
        });
    }
    serde_json::from_value(crd).expect("the patched CRD deserializes")
}

/// The CRDs as one multi-document YAML text.
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(|crd| serde_yaml::to_string(crd).expect("a CRD serializes"))
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Arguments of `hotconf crds`.
#[derive(clap::Args, Debug)]
pub struct CrdsArgs {
    /// Write one file per CRD into this directory instead of printing them.
    #[arg(long, env = "HOTCONF_CRDS_DIR")]
    pub output_dir: Option<std::path::PathBuf>,
}

/// `hotconf crds`: prints the CRDs, or writes one file per CRD into `--output-dir`.
pub fn print(args: &CrdsArgs) -> std::process::ExitCode {
    let Some(dir) = &args.output_dir else {
        print!("{}", crds_yaml());
        return std::process::ExitCode::SUCCESS;
    };
    for (file, yaml) in crd_files() {
        let path = dir.join(file);
        if let Err(e) = std::fs::write(&path, yaml) {
            eprintln!("error: writing {}: {e}", path.display());
            return std::process::ExitCode::FAILURE;
        }
        println!("wrote {}", path.display());
    }
    std::process::ExitCode::SUCCESS
}

/// The file name under `crds/` of each CRD.
pub fn crd_files() -> Vec<(String, String)> {
    crds()
        .iter()
        .map(|crd| {
            (
                format!("{}.yaml", kube::ResourceExt::name_any(crd)),
                serde_yaml::to_string(crd).expect("a CRD serializes"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_stored_document_is_an_ordinary_object_on_the_wire() {
        let doc =
            json!({"values": {"n": 1, "f": 0.5, "s": "x", "l": [1, "a"]}, "featureFlags": {}});
        let snap = Snapshot {
            revision: 1,
            document: doc.clone().into(),
            ..Default::default()
        };
        assert_eq!(snap.document.value(), doc);
        assert_eq!(snap.document.json(), doc.to_string());
        let wire = serde_json::to_value(&snap).unwrap();
        assert_eq!(wire["document"], doc);
        let back: Snapshot = serde_json::from_value(wire).unwrap();
        assert_eq!(back, snap);
        let text = serde_json::to_string(&snap).unwrap();
        assert_eq!(serde_json::from_str::<Snapshot>(&text).unwrap(), snap);
        let yaml = serde_yaml::to_string(&snap).unwrap();
        assert!(yaml.contains("  values:\n"), "{yaml}");
        assert_eq!(serde_yaml::from_str::<Snapshot>(&yaml).unwrap(), snap);
        assert_eq!(Snapshot::default().document.value(), Value::Null);
    }

    #[test]
    fn checked_in_crds_match_the_rust_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        let files = crd_files();
        assert_eq!(files.len(), 2);
        for (file, generated) in files {
            let checked_in = std::fs::read_to_string(dir.join(&file))
                .unwrap_or_else(|e| panic!("crds/{file}: {e}"));
            assert!(
                checked_in == generated,
                "crds/{file} differs from the Rust types: run `cargo run -- crds --output-dir crds`"
            );
        }
    }

    #[test]
    fn every_rule_of_the_cel_module_is_in_the_crds() {
        // The attributes pick rules by index: one missing would drop a rule silently.
        let json = serde_json::to_string(&crds()).unwrap();
        let rules = [
            cel::backpressure(),
            cel::database(),
            cel::redis(),
            cel::http(),
            cel::parameter(),
            vec![
                cel::positive_duration(),
                cel::duration_in_range(),
                cel::values_from_declared(),
                cel::data_key(),
            ],
        ];
        for rule in rules.iter().flatten() {
            let text = serde_json::to_string(&rule.rule).unwrap();
            assert!(json.contains(&text), "{text} is not in the CRDs");
        }
    }

    #[test]
    fn crds_carry_names_columns_and_cel_rules() {
        let yaml = crds_yaml();
        for needle in [
            "shortNames:\n    - rtc",
            "shortNames:\n    - pb",
            "categories:\n    - hotconf",
            "name: Valid",
            "name: Revision",
            "(has(self.minConnections) ? self.minConnections : 5) <= (has(self.maxConnections) ? self.maxConnections : 20)",
            "(has(self.light) ? self.light : 0.7) < (has(self.moderate) ? self.moderate : 0.85)",
            "fieldPath: .maxKeepaliveConnections",
            "duration((has(self.idleTimeout) ? self.idleTimeout :",
            "x-kubernetes-list-map-keys:\n                - key",
            "subresources:\n      status: {}",
        ] {
            assert!(yaml.contains(needle), "{needle:?} missing from the CRDs");
        }
    }
}
