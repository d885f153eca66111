//! Sensitive values for the application: the projected Secret (same name as the ConfigMap),
//! followed through the API (`--secret`) and/or its mounted volume (`--secret-dir`).
//!
//! The ConfigMap's document never holds a sensitive value: under `secrets.<key>` it names the
//! value's source and a salted fingerprint, so a rotation still makes a new revision. The
//! projected Secret holds the values, one data key each, and the metadata key
//! ([`crate::projection::META_KEY`]) and annotations with the revision and hash of the document
//! they belong to. The agent pairs a document with the Secret version of the same hash (either
//! source), so the application never gets a new document with the old password or the other
//! way round; until that version arrives the document waits.
//!
//! The values reach the application one of two ways, as the user chooses:
//! - merged (the default): each value under `values.<key>` of the output document, the file
//!   written with mode 0600;
//! - `--secrets-output FILE`: a separate file (mode 0600) of the same shape,
//!   `{"values": {key: value}}` in the document's format, and the output document as projected.
//!
//! A value is never logged, counted or reported; `${VAR}` expansion does not touch it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt as _;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::api::{ApiSource, ApiState, WatchBounds};
use super::source::{Origin, Snapshot, Unreadable};
use super::volume::{self, VolumeSource};
use super::{changed, health};
use crate::crd::Format;
use crate::document;
use crate::projection::{self, META_KEY};

/// Sensitive values by key.
pub type Values = BTreeMap<String, String>;

/// The projected Secret's sources: its API watch and its mounted volume, either or both.
#[derive(Default)]
pub struct Feeds {
    api: Option<watch::Receiver<ApiState>>,
    volume: Option<watch::Receiver<Option<Snapshot>>>,
}

impl Feeds {
    /// Follows Secret `namespace/name` through the API server.
    pub fn follow_api(
        &mut self,
        client: kube::Client,
        namespace: String,
        name: String,
        bounds: WatchBounds,
    ) {
        let (tx, rx) = watch::channel(ApiState::default());
        let source = ApiSource {
            client,
            namespace,
            name,
            key: None,
            bounds,
            health: health::shared(bounds.idle, Instant::now()),
        };
        tokio::spawn(source.follow::<Secret>(tx));
        self.api = Some(rx);
    }

    /// Follows the Secret mounted at `dir`.
    pub fn follow_dir(&mut self, dir: PathBuf, debounce: Duration) {
        let (tx, rx) = watch::channel(None);
        let source = VolumeSource {
            dir,
            key: None,
            every_key: true,
            debounce,
            health: health::shared(volume::STALE, Instant::now()),
        };
        tokio::spawn(source.run(tx));
        self.volume = Some(rx);
    }

    /// Whether a source is followed.
    pub fn enabled(&self) -> bool {
        self.api.is_some() || self.volume.is_some()
    }

    /// The latest snapshot of each source, API first.
    pub fn latest(&self) -> Vec<Snapshot> {
        let api = self.api.as_ref().and_then(|r| r.borrow().latest.clone());
        let volume = self.volume.as_ref().and_then(|r| r.borrow().clone());
        api.into_iter().chain(volume).collect()
    }

    /// Resolves when either source changed; pends forever without one.
    pub async fn changed(&mut self) {
        tokio::select! {
            _ = changed(&mut self.api) => {}
            _ = changed(&mut self.volume) => {}
        }
    }

    /// The values for a document of hash `hash` that names sensitive values: `Ok(None)`
    /// without a Secret source, `Err` while the Secret version of that hash has not arrived
    /// (why the document waits) or its values cannot be read.
    pub fn values_for(&self, hash: Option<&str>) -> Result<Option<Values>, String> {
        if !self.enabled() {
            return Ok(None);
        }
        let latest = self.latest();
        let Some(paired) = pair(hash, &latest) else {
            return Err(format!(
                "waiting for the projected Secret of hash {}",
                hash.unwrap_or("(unknown)")
            ));
        };
        values(paired).map(Some)
    }
}

/// The snapshot of a projected Secret: its values as one JSON object (the text), the revision
/// and hash of the document they belong to (annotations), and the owner (labels).
pub fn snapshot_of(secret: &Secret) -> Snapshot {
    let utf8 = secret
        .data
        .iter()
        .flatten()
        .filter(|(k, _)| *k != META_KEY)
        .find(|(_, v)| std::str::from_utf8(&v.0).is_err());
    let text =
        match utf8 {
            Some((k, _)) => Err(Unreadable(format!(
                "Secret {} key {k} is not UTF-8 text",
                secret.name_any()
            ))),
            None => Ok(serde_json::to_string(&projection::secret_values(secret))
                .expect("strings serialize")),
        };
    let mut snapshot = Snapshot::new(Origin::Api, String::new(), text);
    super::api::stamp(&mut snapshot, secret);
    snapshot
}

/// The values a Secret snapshot holds.
pub fn values(snapshot: &Snapshot) -> Result<Values, String> {
    let text = snapshot.text.as_ref().map_err(|u| u.0.clone())?;
    serde_json::from_str(text).map_err(|e| format!("the Secret's values do not parse: {e}"))
}

/// Whether a document names sensitive values (a `secrets` section): parsed for YAML and JSON,
/// by its keys' prefix for properties (`secrets.`) and env (`SECRETS_`).
pub fn named(text: &str, parsed: Option<&Value>, format: Format) -> bool {
    match parsed {
        Some(doc) => doc
            .get("secrets")
            .and_then(Value::as_object)
            .is_some_and(|s| !s.is_empty()),
        None => {
            let prefix = match format {
                Format::Env => "SECRETS_",
                _ => "secrets.",
            };
            text.lines().any(|l| l.trim_start().starts_with(prefix))
        }
    }
}

/// The Secret snapshot that belongs to a document of hash `hash`: the first candidate stamped
/// with that hash. A document without a known hash (projected by an older operator) takes the
/// first candidate there is.
pub fn pair<'a>(
    hash: Option<&str>,
    candidates: impl IntoIterator<Item = &'a Snapshot>,
) -> Option<&'a Snapshot> {
    let mut candidates = candidates.into_iter();
    match hash {
        Some(h) => candidates.find(|s| s.hash.as_deref() == Some(h)),
        None => candidates.next(),
    }
}

/// The output with the values merged under `values.<key>`: YAML and JSON are parsed and
/// rendered again (keys sorted, as the operator renders); properties and env get the values'
/// lines appended.
pub fn merge(bytes: &str, format: Format, values: &Values) -> Result<String, String> {
    match format {
        Format::Yaml | Format::Json => {
            let mut doc = document::parse(bytes, format)
                .map_err(|e| format!("the output does not parse to merge the Secret into: {e}"))?;
            merge_value(&mut doc, values)?;
            Ok(document::render(&doc, format))
        }
        // A flagd definition holds flags only: there is nothing to merge a value into.
        Format::Flagd => Ok(bytes.to_string()),
        Format::Properties | Format::Env => {
            let mut out = bytes.to_string();
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&file(values, format));
            Ok(out)
        }
    }
}

/// Puts the values under `values.<key>` of a parsed document.
pub fn merge_value(doc: &mut Value, values: &Values) -> Result<(), String> {
    let Some(target) = doc
        .as_object_mut()
        .map(|d| {
            d.entry("values")
                .or_insert_with(|| Value::Object(Map::new()))
        })
        .and_then(Value::as_object_mut)
    else {
        return Err("the document has no values mapping to merge the Secret into".into());
    };
    for (k, v) in values {
        target.insert(k.clone(), Value::String(v.clone()));
    }
    Ok(())
}

/// The separate file of `--secrets-output`: `{"values": {key: value}}` in `format`.
pub fn file(values: &Values, format: Format) -> String {
    let format = match format {
        Format::Flagd => Format::Json,
        other => other,
    };
    document::render(&json!({ "values": values }), format)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::names;
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;

    fn secret(data: &[(&str, &[u8])], hash: &str) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("app".into()),
                annotations: Some(BTreeMap::from([
                    (names::REVISION.to_string(), "3".to_string()),
                    (names::HASH.to_string(), hash.to_string()),
                ])),
                ..Default::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_secret_snapshot_holds_its_values_and_the_hash_it_belongs_to() {
        let s = snapshot_of(&secret(
            &[("db_password", b"pw"), (META_KEY, b"{}")],
            "sha256:a",
        ));
        assert_eq!(
            values(&s).unwrap(),
            Values::from([("db_password".into(), "pw".into())])
        );
        assert_eq!((s.revision, s.hash.as_deref()), (Some(3), Some("sha256:a")));
        let bad = snapshot_of(&secret(&[("k", &[0xff, 0xfe])], "sha256:a"));
        let reason = values(&bad).unwrap_err();
        assert!(reason.contains("key k is not UTF-8"), "{reason}");
    }

    #[test]
    fn a_document_pairs_only_with_the_secret_of_its_hash() {
        let old = snapshot_of(&secret(&[("k", b"old")], "sha256:old"));
        let new = snapshot_of(&secret(&[("k", b"new")], "sha256:new"));
        let picked = pair(Some("sha256:new"), [&old, &new]).map(|s| values(s).unwrap());
        assert_eq!(picked.unwrap()["k"], "new");
        assert!(pair(Some("sha256:other"), [&old, &new]).is_none());
        assert_eq!(values(pair(None, [&old]).unwrap()).unwrap()["k"], "old");
    }

    #[test]
    fn values_are_merged_in_every_format() {
        let values = Values::from([("db_password".into(), "p: w#1".into())]);
        let doc =
            json!({"values": {"port": 5432}, "secrets": {"db_password": {"fingerprint": "f"}}});
        for format in [Format::Yaml, Format::Json] {
            let merged = merge(&document::render(&doc, format), format, &values).unwrap();
            let back = document::parse(&merged, format).unwrap();
            assert_eq!(
                back["values"],
                json!({"port": 5432, "db_password": "p: w#1"})
            );
            assert_eq!(back["secrets"], doc["secrets"]);
        }
        let props = merge("values.port=5432\n", Format::Properties, &values).unwrap();
        assert!(
            props.starts_with("values.port=5432\nvalues.db_password="),
            "{props}"
        );
        let env = merge("VALUES_PORT=5432", Format::Env, &values).unwrap();
        assert!(env.contains("\nVALUES_DB_PASSWORD="), "{env}");
        assert!(merge("[]", Format::Json, &values).is_err());
    }

    #[test]
    fn a_document_names_secrets_in_every_format() {
        let doc = json!({"values": {}, "secrets": {"k": {}}});
        assert!(named("", Some(&doc), Format::Yaml));
        assert!(!named(
            "",
            Some(&json!({"values": {}, "secrets": {}})),
            Format::Yaml
        ));
        assert!(named(
            "values.a=1\nsecrets.k.fingerprint=f\n",
            None,
            Format::Properties
        ));
        assert!(named("SECRETS_K_FINGERPRINT=f\n", None, Format::Env));
        assert!(!named("VALUES_A=1\n", None, Format::Env));
    }
}
