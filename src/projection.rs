//! The objects a CR is projected into: a ConfigMap with the document (and, with `flatten`, one
//! key per value) and the metadata key [`META_KEY`], and a Secret of the same name for sensitive
//! values. Pure builders and the comparison that decides whether a write is needed.
//!
//! The metadata key exists for agents that read only the mounted volume: the kubelet mounts a
//! ConfigMap's data keys, not its annotations, so the revision and hash the annotations carry
//! are written into the data as well. The kubelet swaps all keys of one ConfigMap version at
//! once (one `..data` symlink), so a reader that resolves `..data` once reads a document and
//! the metadata that describes it, never a mix of two versions.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crd::{Format, Target, names};
use crate::document;

/// The data key of the projected ConfigMap that holds [`Meta`] as JSON. The leading dot keeps
/// it apart from every flattened key (those start with a top-level document key such as
/// `values`) and hides it from an application that reads every visible file of the mounted
/// directory; `spec.target.fileName` may not take this name (validation refuses it).
pub const META_KEY: &str = ".hotconf.json";

/// What the metadata key says about the document the same ConfigMap carries: the
/// `hotconf.dev/revision` and `hotconf.dev/hash` annotations, and the owning CR, in a form a
/// mounted volume holds.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    /// The owning CR's kind.
    pub kind: String,
    /// The owning CR's name (exact, unlike the label, which is cut at 63 characters).
    pub name: String,
    /// The revision projected (a rollback projects the pinned revision's number).
    pub revision: i64,
    /// The SHA-256 of the effective document, as in `hotconf.dev/hash`.
    pub hash: String,
    /// The data key holding the whole document this metadata describes.
    pub file_name: String,
    /// The document paths whose change needs a restart of the consumers (`requiresRestart`):
    /// the client library's `pending_restart()` compares them with the document it started
    /// with. Left out when there are none, so older readers and projections agree.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restart_keys: Vec<String>,
    /// The document's `featureFlags`, when its format cannot be read back into them
    /// (properties, env, flagd): the agent serves OFREP from these. Left out otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_flags: Option<serde_json::Map<String, Value>>,
}

impl Meta {
    /// The metadata of a projection.
    pub fn of(target: &ResolvedTarget, stamp: &Stamp) -> Self {
        Meta {
            kind: stamp.kind.to_string(),
            name: stamp.owner_name.clone(),
            revision: stamp.revision,
            hash: stamp.hash.clone(),
            file_name: target.file_name.clone(),
            restart_keys: stamp.restart_keys.clone(),
            feature_flags: None,
        }
    }

    /// The metadata of a projection of `document`: with its flags when `target`'s format does
    /// not carry them in a form the agent reads back.
    pub fn of_document(document: &Value, target: &ResolvedTarget, stamp: &Stamp) -> Self {
        let mut meta = Meta::of(target, stamp);
        if !matches!(target.format, Format::Yaml | Format::Json) {
            meta.feature_flags = document
                .get("featureFlags")
                .and_then(Value::as_object)
                .filter(|flags| !flags.is_empty())
                .cloned();
        }
        meta
    }

    /// The text of the metadata key: one line of JSON, fields in a fixed order, so the same
    /// projection always gives the same bytes (and a reconcile that changes nothing writes
    /// nothing).
    pub fn to_text(&self) -> String {
        let mut text = serde_json::to_string(self).expect("the metadata serializes");
        text.push('\n');
        text
    }

    /// Reads the text of the metadata key (unknown fields are ignored, so a newer operator may
    /// add some).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// The resolved `spec.target` of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedTarget {
    /// The ConfigMap (and Secret) name.
    pub name: String,
    /// The serialization.
    pub format: Format,
    /// The data key of the whole document.
    pub file_name: String,
    /// One data key per value too.
    pub flatten: bool,
    /// The data key of the flags as a flagd definition beside the document, if any.
    pub flagd_file_name: Option<String>,
}

impl ResolvedTarget {
    /// Fills in the defaults: the CR's name, yaml, `config.<format>`.
    pub fn resolve(target: Option<&Target>, cr_name: &str) -> Self {
        let t = target.cloned().unwrap_or_default();
        let format = t.format.unwrap_or_default();
        ResolvedTarget {
            name: t.config_map_name.unwrap_or_else(|| cr_name.to_string()),
            format,
            file_name: t
                .file_name
                .unwrap_or_else(|| format.default_file_name().to_string()),
            flatten: t.flatten,
            flagd_file_name: t.flagd_file_name,
        }
    }
}

/// What the projected objects carry besides the document.
#[derive(Clone, Debug)]
pub struct Stamp {
    /// The owning CR's kind.
    pub kind: &'static str,
    /// The owning CR's name.
    pub owner_name: String,
    /// The namespace.
    pub namespace: String,
    /// The controller ownerReference to the CR.
    pub owner: OwnerReference,
    /// The revision projected.
    pub revision: i64,
    /// The document's hash.
    pub hash: String,
    /// The document paths whose change needs a restart (see [`Meta::restart_keys`]).
    pub restart_keys: Vec<String>,
}

/// The labels of every object hotconf writes.
pub fn labels(kind: &str, owner_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (names::MANAGED_BY.to_string(), "hotconf".to_string()),
        (names::OWNER_KIND.to_string(), kind.to_string()),
        (names::OWNER_NAME.to_string(), label_value(owner_name)),
    ])
}

// A label value is at most 63 characters; longer names are cut (the ownerReference is exact).
fn label_value(name: &str) -> String {
    let cut: String = name.chars().take(63).collect();
    cut.trim_end_matches(['-', '.', '_']).to_string()
}

fn meta(target: &ResolvedTarget, stamp: &Stamp) -> ObjectMeta {
    ObjectMeta {
        name: Some(target.name.clone()),
        namespace: Some(stamp.namespace.clone()),
        labels: Some(labels(stamp.kind, &stamp.owner_name)),
        annotations: Some(BTreeMap::from([
            (names::REVISION.to_string(), stamp.revision.to_string()),
            (names::HASH.to_string(), stamp.hash.clone()),
        ])),
        owner_references: Some(vec![stamp.owner.clone()]),
        ..Default::default()
    }
}

/// The ConfigMap data of a document: the whole document under `file_name`, with
/// `flagd_file_name` the flags as a flagd definition, and with `flatten` one key per leaf
/// (dotted path; a path that is not a valid key, or one of those names, is left out). The
/// metadata key, which needs the revision, is added by [`config_map`].
pub fn config_map_data(document: &Value, target: &ResolvedTarget) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    let flagd = target.flagd_file_name.as_deref();
    if target.flatten {
        for (k, v) in document::flatten(document) {
            if is_valid_data_key(&k)
                && k != target.file_name
                && k != META_KEY
                && Some(k.as_str()) != flagd
            {
                data.insert(k, v);
            }
        }
    }
    if let Some(key) = flagd {
        data.insert(key.to_string(), document::render(document, Format::Flagd));
    }
    data.insert(
        target.file_name.clone(),
        document::render(document, target.format),
    );
    data
}

/// A ConfigMap data key: `[-._a-zA-Z0-9]+`, at most 253 characters, not `.` and not starting
/// with `..` (the kubelet's own names in a mounted volume).
pub fn is_valid_data_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && !key.starts_with("..")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The desired ConfigMap: the document's keys and the metadata key.
pub fn config_map(document: &Value, target: &ResolvedTarget, stamp: &Stamp) -> ConfigMap {
    let mut data = config_map_data(document, target);
    data.insert(
        META_KEY.to_string(),
        Meta::of_document(document, target, stamp).to_text(),
    );
    let mut metadata = meta(target, stamp);
    metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(names::DATA_HASH.to_string(), data_hash(&data));
    ConfigMap {
        metadata,
        data: Some(data),
        ..Default::default()
    }
}

/// What `hotconf.dev/data-hash` carries: the SHA-256 of the data, as a JSON object.
pub fn data_hash(data: &BTreeMap<String, String>) -> String {
    document::hash(&serde_json::json!(data))
}

/// The desired Secret for sensitive values: one key per value, and the metadata key
/// [`META_KEY`] with the revision and hash of the document these values belong to, so that an
/// agent reading the mounted Secret pairs it with the matching ConfigMap version (a volume has
/// no annotations). A `valuesFrom` key may not take that name (validation refuses it).
pub fn secret(
    sensitive: &BTreeMap<String, String>,
    target: &ResolvedTarget,
    stamp: &Stamp,
) -> Secret {
    let mut data: BTreeMap<String, ByteString> = sensitive
        .iter()
        .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
        .collect();
    data.insert(
        META_KEY.to_string(),
        ByteString(Meta::of(target, stamp).to_text().into_bytes()),
    );
    Secret {
        metadata: meta(target, stamp),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Default::default()
    }
}

/// The sensitive values a projected Secret holds (its data keys but the metadata key).
pub fn secret_values(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .chain(secret.string_data.clone().unwrap_or_default())
        .filter(|(k, _)| k != META_KEY)
        .collect()
}

fn owned_meta_matches(existing: &ObjectMeta, desired: &ObjectMeta) -> bool {
    let subset = |want: &Option<BTreeMap<String, String>>,
                  have: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    let owned = desired.owner_references.iter().flatten().all(|want| {
        existing
            .owner_references
            .iter()
            .flatten()
            .any(|have| have.uid == want.uid && have.controller == want.controller)
    });
    subset(&desired.labels, &existing.labels)
        && subset(&desired.annotations, &existing.annotations)
        && owned
}

/// Whether an existing ConfigMap already is what `desired` says (so no write is needed).
pub fn config_map_matches(existing: &ConfigMap, desired: &ConfigMap) -> bool {
    existing.data.clone().unwrap_or_default() == desired.data.clone().unwrap_or_default()
        && existing.binary_data.as_ref().is_none_or(BTreeMap::is_empty)
        && owned_meta_matches(&existing.metadata, &desired.metadata)
}

/// Whether a ConfigMap known by its metadata alone already is what `desired` says. Only for one
/// that `hotconf` alone has written (see `controller`): its data is then what `hotconf` applied
/// with its annotations, so the data hash among them stands for the data.
pub fn config_map_metadata_matches(existing: &ObjectMeta, desired: &ConfigMap) -> bool {
    owned_meta_matches(existing, &desired.metadata)
}

/// Whether an existing Secret already is what `desired` says.
pub fn secret_matches(existing: &Secret, desired: &Secret) -> bool {
    let mut have = existing.data.clone().unwrap_or_default();
    for (k, v) in existing.string_data.clone().unwrap_or_default() {
        have.insert(k, ByteString(v.into_bytes()));
    }
    have == desired.data.clone().unwrap_or_default()
        && owned_meta_matches(&existing.metadata, &desired.metadata)
}

/// The revision and hash an existing projected object carries.
pub fn stamped(meta: &ObjectMeta) -> (Option<i64>, Option<String>) {
    let a = meta.annotations.as_ref();
    (
        a.and_then(|a| a.get(names::REVISION))
            .and_then(|r| r.parse().ok()),
        a.and_then(|a| a.get(names::HASH)).cloned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stamp() -> Stamp {
        Stamp {
            kind: "RuntimeConfig",
            owner_name: "lazy".into(),
            namespace: "shop".into(),
            owner: OwnerReference {
                api_version: "hotconf.dev/v1alpha1".into(),
                kind: "RuntimeConfig".into(),
                name: "lazy".into(),
                uid: "u1".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            },
            revision: 3,
            hash: "abc".into(),
            restart_keys: vec!["values.workers".into()],
        }
    }

    #[test]
    fn the_metadata_carries_the_flags_of_a_format_that_cannot_be_read_back() {
        let doc = serde_json::json!({"featureFlags": {"f": {"enabled": true}}, "values": {}});
        let flags = |format: Format| {
            let target = ResolvedTarget::resolve(
                Some(&Target {
                    format: Some(format),
                    ..Default::default()
                }),
                "x",
            );
            let cm = config_map(&doc, &target, &stamp());
            Meta::parse(&cm.data.unwrap()[META_KEY])
                .unwrap()
                .feature_flags
        };
        for format in [Format::Properties, Format::Env, Format::Flagd] {
            assert_eq!(flags(format).unwrap()["f"]["enabled"], true, "{format:?}");
        }
        for format in [Format::Yaml, Format::Json] {
            assert_eq!(flags(format), None, "{format:?}: the document has them");
        }
    }

    #[test]
    fn resolve_defaults() {
        let t = ResolvedTarget::resolve(None, "lazy");
        assert_eq!(t.name, "lazy");
        assert_eq!(t.file_name, "config.yaml");
        let t = ResolvedTarget::resolve(
            Some(&Target {
                format: Some(Format::Json),
                ..Default::default()
            }),
            "lazy",
        );
        assert_eq!(t.file_name, "config.json");
    }

    #[test]
    fn config_map_carries_labels_annotations_owner_and_flattened_keys() {
        let target = ResolvedTarget {
            flatten: true,
            ..ResolvedTarget::resolve(None, "lazy")
        };
        let doc = json!({"values": {"a": 1, "b c": 2}});
        let cm = config_map(&doc, &target, &stamp());
        let data = cm.data.as_ref().unwrap();
        assert_eq!(data["config.yaml"], "values:\n  a: 1\n  b c: 2\n");
        assert_eq!(data["values.a"], "1");
        assert!(!data.contains_key("values.b c"), "not a valid data key");
        let labels = cm.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[names::MANAGED_BY], "hotconf");
        assert_eq!(labels[names::OWNER_KIND], "RuntimeConfig");
        assert_eq!(labels[names::OWNER_NAME], "lazy");
        let ann = cm.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann[names::REVISION], "3");
        assert_eq!(ann[names::HASH], "abc");
        assert!(config_map_matches(&cm, &cm));
        let mut changed = cm.clone();
        changed
            .data
            .as_mut()
            .unwrap()
            .insert("x".into(), "y".into());
        assert!(!config_map_matches(&changed, &cm));
        let mut restamped = cm.clone();
        restamped
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(names::REVISION.into(), "4".into());
        assert!(!config_map_matches(&cm, &restamped));
    }

    #[test]
    fn the_metadata_key_says_which_revision_and_hash_the_document_is() {
        let target = ResolvedTarget::resolve(None, "lazy");
        let doc = json!({"values": {"a": 1}});
        let cm = config_map(&doc, &target, &stamp());
        let data = cm.data.as_ref().unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            [META_KEY, "config.yaml"],
            "the document and its metadata"
        );
        assert_eq!(
            data[META_KEY],
            "{\"kind\":\"RuntimeConfig\",\"name\":\"lazy\",\"revision\":3,\"hash\":\"abc\",\
             \"fileName\":\"config.yaml\",\"restartKeys\":[\"values.workers\"]}\n"
        );
        assert_eq!(
            Meta::parse(&data[META_KEY]).unwrap(),
            Meta::of(&target, &stamp())
        );
        assert!(!config_map_data(&doc, &target).contains_key(META_KEY));

        // Same stamp, same bytes: nothing to write. Another revision: the data differs too.
        assert!(config_map_matches(
            &config_map(&doc, &target, &stamp()),
            &cm
        ));
        let next = Stamp {
            revision: 4,
            hash: "def".into(),
            ..stamp()
        };
        let moved = config_map(&doc, &target, &next);
        assert!(!config_map_matches(&cm, &moved));
        assert_eq!(
            moved.data.unwrap()[META_KEY],
            Meta::of(&target, &next).to_text()
        );
    }

    #[test]
    fn the_flagd_key_holds_the_flags_beside_the_document() {
        let target = ResolvedTarget {
            flatten: true,
            flagd_file_name: Some("flags.flagd.json".into()),
            ..ResolvedTarget::resolve(None, "shop")
        };
        let doc = json!({
            "values": {"a": 1},
            "featureFlags": {"new_ui": {"enabled": true, "rolloutPercentage": 100}},
            "flags.flagd.json": "a value that flatten would put under the flagd key",
        });
        let data = config_map(&doc, &target, &stamp()).data.unwrap();
        let flagd: Value = serde_json::from_str(&data["flags.flagd.json"]).unwrap();
        assert_eq!(
            flagd,
            serde_json::from_str::<Value>(&document::render(&doc, Format::Flagd)).unwrap()
        );
        assert!(flagd["flags"]["new_ui"].is_object(), "{flagd}");
        assert!(data["config.yaml"].contains("rolloutPercentage: 100"));
        assert_eq!(data["values.a"], "1");
        assert_eq!(
            Meta::parse(&data[META_KEY]).unwrap().file_name,
            "config.yaml"
        );
    }

    #[test]
    fn flattened_keys_never_take_the_metadata_key() {
        let target = ResolvedTarget {
            flatten: true,
            ..ResolvedTarget::resolve(None, "lazy")
        };
        let doc = json!({".hotconf": {"json": "mine"}, "values": {"a": 1}});
        let data = config_map(&doc, &target, &stamp()).data.unwrap();
        assert_eq!(Meta::parse(&data[META_KEY]).unwrap().revision, 3);
        assert_eq!(data["values.a"], "1");
        assert!(!is_valid_data_key("..data") && !is_valid_data_key(".."));
        assert!(is_valid_data_key(META_KEY));
    }

    #[test]
    fn secret_holds_sensitive_values() {
        let target = ResolvedTarget::resolve(None, "lazy");
        let s = secret(
            &BTreeMap::from([("db_password".to_string(), "pw".to_string())]),
            &target,
            &stamp(),
        );
        assert_eq!(s.data.as_ref().unwrap()["db_password"].0, b"pw");
        assert!(secret_matches(&s, &s));
        let meta = Meta::parse(&String::from_utf8_lossy(
            &s.data.as_ref().unwrap()[META_KEY].0,
        ));
        assert_eq!(
            meta.map(|m| (m.revision, m.hash)).ok(),
            Some((3, stamp().hash)),
            "the Secret names the document it belongs to"
        );
        assert_eq!(
            secret_values(&s),
            BTreeMap::from([("db_password".to_string(), "pw".to_string())]),
            "the metadata key is not a value"
        );
    }
}
