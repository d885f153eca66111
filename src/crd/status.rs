//! The status both kinds share: conditions, the projected revision, the snapshot history (its
//! documents kept as compact JSON text), the rollback pin, restarts and consumers.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The observed state of either kind.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Valid, RolledBack, Paused (metav1.Condition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The revision projected now (a rollback target while pinned).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_revision: Option<i64>,
    /// The hash of the projected document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_hash: Option<String>,
    /// The newest revision recorded for the spec; revision numbers never go below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<i64>,
    /// The ConfigMap (and Secret) the document is projected into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projected: Option<Projected>,
    /// Snapshots, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Snapshot>,
    /// The rollback pin, while one holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackStatus>,
    /// Keys marked requiresRestart that changed with what is projected (a new revision, a
    /// rollback or its release), until every restart target has observed the change.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_restart: Vec<String>,
    /// Restarts in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<RestartStatus>,
    /// What the consumers (spec.rollout.consumerSelector) report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumers: Option<ConsumerStatus>,
}

/// The objects a CR is projected into.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Projected {
    /// The ConfigMap's name.
    pub config_map: String,
    /// The Secret's name, when there are sensitive values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// One entry of `.status.history`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// The revision number.
    pub revision: i64,
    /// SHA-256 of the canonical document.
    pub hash: String,
    /// When it was recorded (RFC 3339).
    pub created_at: String,
    /// The spec generation it came from.
    pub generation: i64,
    /// From the `hotconf.dev/change-reason` annotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The best known identity of who changed the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_by: Option<String>,
    /// Document paths that differ from the previous revision.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_keys: Vec<String>,
    /// The full effective document (sensitive values left out).
    #[schemars(schema_with = "any_object")]
    pub document: StoredDocument,
    /// The most consumers seen on this revision at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_by: Option<i64>,
    /// Every selected consumer applied it at some point (a safe rollback target).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub applied_by_all: bool,
}

/// A snapshot's document, held as its compact JSON text. On the wire it is an ordinary JSON
/// object; in memory it costs about its text's length, where a parsed [`Value`] costs ten times
/// that (every small object is a map node of its own). The operator caches every object with
/// its whole history, so this is most of its memory.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredDocument(Box<str>);

impl StoredDocument {
    /// Keeps `value`.
    pub fn new(value: &Value) -> Self {
        StoredDocument(value.to_string().into_boxed_str())
    }

    /// A document left out: the operator's cache keeps none (a reconcile that needs one reads
    /// the object). It reads as `null`, and serializing it fails, so it can never be written
    /// over the real one.
    pub fn elided() -> Self {
        StoredDocument(Box::from(""))
    }

    /// Whether this is [`StoredDocument::elided`].
    pub fn is_elided(&self) -> bool {
        self.0.is_empty()
    }

    /// The document, parsed (a copy: change it freely).
    pub fn value(&self) -> Value {
        // The text was written from a `Value` in `new`, so it always parses.
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }

    /// The document as compact JSON.
    pub fn json(&self) -> &str {
        &self.0
    }
}

impl Default for StoredDocument {
    fn default() -> Self {
        StoredDocument::new(&Value::Null)
    }
}

impl From<Value> for StoredDocument {
    fn from(value: Value) -> Self {
        StoredDocument::new(&value)
    }
}

impl std::fmt::Debug for StoredDocument {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for StoredDocument {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.is_elided() {
            return Err(serde::ser::Error::custom(
                "a snapshot document left out of the cache cannot be written",
            ));
        }
        // Through a `Value`, so that every serializer (YAML too) sees an ordinary object.
        self.value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for StoredDocument {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if LEAVING_OUT.get() {
            serde::de::IgnoredAny::deserialize(deserializer)?;
            return Ok(StoredDocument::elided());
        }
        Value::deserialize(deserializer).map(|v| StoredDocument::new(&v))
    }
}

thread_local! {
    // Whether documents parsed on this thread now are left out (see `without_documents`).
    static LEAVING_OUT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `parse` with every [`StoredDocument`] it deserializes left out
/// ([`StoredDocument::elided`]) and only skipped over: for a cache that keeps no documents, whose
/// listing would otherwise build and drop each one.
pub fn without_documents<T>(parse: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            LEAVING_OUT.set(self.0);
        }
    }
    let _reset = Reset(LEAVING_OUT.replace(true));
    parse()
}

/// The rollback pin.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollbackStatus {
    /// The revision projected.
    pub target_revision: i64,
    /// The spec generation the pin holds for.
    pub pinned_generation: i64,
    /// The annotation's value (`N` or `previous`), or `auto`.
    pub requested: String,
    /// Pinned by the operator because consumers rejected the newer revision.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub automatic: bool,
    /// Why (automatic pins).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Restarts in progress for a revision that changed restart-only keys.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestartStatus {
    /// The revision being rolled out by restarts.
    pub revision: i64,
    /// The keys that need it.
    pub keys: Vec<String>,
    /// Every target and how far it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetStatus>,
}

/// One restart target.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    /// Deployment, StatefulSet or DaemonSet.
    pub kind: String,
    /// The workload's name.
    pub name: String,
    /// Pending, Restarting, Done (its rollout finished) or Stalled (it did not finish: the
    /// round is halted).
    pub state: String,
    /// When its template was stamped for this round (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// How far its rollout is, or why it stalled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What the consumers report.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerStatus {
    /// The revision counted.
    pub revision: i64,
    /// Pods the selector selects.
    pub selected: i64,
    /// Pods that applied `revision`.
    pub updated: i64,
    /// Pods that reported an error instead.
    pub failed: i64,
    /// Some of the pods not updated yet, the furthest behind first (at most five).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slowest: Vec<String>,
    /// The pods that failed `revision` and why (at most ten, by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ConsumerFailure>,
}

/// A consumer pod that failed a revision.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerFailure {
    /// The pod's name.
    pub pod: String,
    /// `ReloadRefused`, `NotReady`, `CrashLooping` or `Restarted`.
    pub reason: String,
    /// What was seen.
    pub message: String,
}

/// A condition in the standard `metav1.Condition` shape.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Ready, Valid, RolledBack, Paused, ...
    #[serde(rename = "type")]
    pub type_: String,
    /// True, False or Unknown.
    pub status: String,
    /// The generation it was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the status last changed (RFC 3339).
    pub last_transition_time: String,
    /// UpperCamelCase reason.
    pub reason: String,
    /// Human-readable detail.
    #[serde(default)]
    pub message: String,
}

fn any_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object", "x-kubernetes-preserve-unknown-fields": true })
}

fn conditions_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": {
            "type": "object",
            "required": ["type", "status", "lastTransitionTime", "reason", "message"],
            "properties": {
                "type": {"type": "string", "maxLength": 316},
                "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                "observedGeneration": {"type": "integer", "format": "int64", "minimum": 0},
                "lastTransitionTime": {"type": "string", "format": "date-time"},
                "reason": {"type": "string", "maxLength": 1024},
                "message": {"type": "string", "maxLength": 32768}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_left_out_only_while_asked_to() {
        let text = r#"{"revision": 1, "hash": "h", "createdAt": "t", "generation": 1, "document": {"a": [1, {"b": "}"}]}}"#;
        let parse = || serde_json::from_str::<Snapshot>(text).unwrap();
        let left_out = without_documents(parse);
        assert!(left_out.document.is_elided());
        assert_eq!((left_out.revision, left_out.hash.as_str()), (1, "h"));
        // Nested, and after: back as it was.
        let (inner, outer) = without_documents(|| (without_documents(parse), parse()));
        assert!(inner.document.is_elided() && outer.document.is_elided());
        let whole = parse();
        assert_eq!(whole.document.json(), r#"{"a":[1,{"b":"}"}]}"#);
        // A parse that fails inside does not leave the thread leaving documents out.
        assert!(without_documents(
            || serde_json::from_str::<Snapshot>("{").is_err()
        ));
        assert!(!parse().document.is_elided());
    }
}
