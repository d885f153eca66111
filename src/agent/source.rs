//! What a source (the mounted volume or the API watch) hands to the agent and to the client
//! library: one whole version of the chosen data key, with what is known about it.

use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::crd::Format;
use crate::projection::META_KEY;

/// Where a snapshot came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The mounted ConfigMap directory.
    Volume,
    /// The API watch of the ConfigMap.
    Api,
}

impl Origin {
    /// A short name for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Volume => "volume",
            Origin::Api => "api",
        }
    }
}

/// The CR that owns the projected ConfigMap, from its `hotconf.dev/owner-*` labels.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Owner {
    /// `RuntimeConfig` or `PoolBudget`.
    pub kind: Option<String>,
    /// The CR's name.
    pub name: Option<String>,
}

/// Why a source could not produce a document's text (e.g. the ConfigMap has no such key).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Unreadable(pub String);

/// One version of the data key, as a source saw it.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// Which source saw it.
    pub origin: Origin,
    /// The data key (file name) it was read from.
    pub key: String,
    /// The whole text of the key, or why the source could not produce it (e.g. the ConfigMap
    /// has no such key); a problem is refused like a document that does not parse.
    pub text: Result<String, Unreadable>,
    /// SHA-256 (hex) of the text: the identity of this content, the same through every source.
    pub identity: String,
    /// The revision: the `hotconf.dev/revision` annotation (API source), or the metadata key
    /// beside the document (volume source; unknown without one).
    pub revision: Option<i64>,
    /// The document's hash as the operator computed it: the `hotconf.dev/hash` annotation, or
    /// the metadata key's `hash`. The check stage compares the content with it.
    pub hash: Option<String>,
    /// The owning CR: the ConfigMap's labels, or the metadata key's `kind` and `name`.
    pub owner: Owner,
    /// The document paths whose change needs a restart, from the metadata key (empty without
    /// one).
    pub restart_keys: Vec<String>,
    /// The document's flags from the metadata key, for a format that does not carry them in a
    /// form read back (properties, env, flagd).
    pub flags: Option<serde_json::Map<String, serde_json::Value>>,
    /// When the source first noticed the change (start of an inotify burst, arrival of a watch
    /// event): the start of the source→applied latency.
    pub seen_at: Instant,
}

impl Snapshot {
    /// A snapshot of `text` read from `key`.
    pub fn new(origin: Origin, key: impl Into<String>, text: Result<String, Unreadable>) -> Self {
        let identity = match &text {
            Ok(t) => sha256_hex(t.as_bytes()),
            Err(e) => sha256_hex(format!("error\0{e}").as_bytes()),
        };
        Snapshot {
            origin,
            key: key.into(),
            text,
            identity,
            revision: None,
            hash: None,
            owner: Owner::default(),
            restart_keys: Vec::new(),
            flags: None,
            seen_at: Instant::now(),
        }
    }

    /// The state of the source this snapshot is: its content and the revision it is said to
    /// be. The same content under another revision (a rollback to an equal document, a
    /// metadata key that appeared) is a new state: it is reported, but the application is not
    /// handed the same content again.
    pub fn state(&self) -> State {
        (self.identity.clone(), self.revision)
    }

    /// The document's format, from the data key's extension.
    pub fn format(&self) -> Format {
        format_for_key(&self.key)
    }
}

/// A snapshot's [`Snapshot::state`]: its identity and its revision.
pub type State = (String, Option<i64>);

/// The format a data key holds, from its extension (`.flagd.json`, `.yaml`/`.yml`, `.json`,
/// `.properties`, `.env`); anything else is read as YAML, the operator's default.
pub fn format_for_key(key: &str) -> Format {
    if key.to_ascii_lowercase().ends_with(".flagd.json") {
        return Format::Flagd;
    }
    match key
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
    {
        Some(ext) if ext == "json" => Format::Json,
        Some(ext) if ext == "properties" => Format::Properties,
        Some(ext) if ext == "env" => Format::Env,
        _ => Format::Yaml,
    }
}

/// Which data key holds the document when `--file` is not given: the one the metadata key
/// names (`described`, its `fileName`), when present; else the only key; else `config.yaml`;
/// else the first of `config.json`, `config.properties`, `config.env` present. The metadata
/// key ([`META_KEY`]) is not a candidate: it describes the document.
pub fn default_key<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    described: Option<&str>,
) -> Option<String> {
    let keys: Vec<&str> = keys.into_iter().filter(|k| *k != META_KEY).collect();
    if let Some(described) = described.filter(|d| keys.contains(d)) {
        return Some(described.to_string());
    }
    if let [only] = keys.as_slice() {
        return Some((*only).to_string());
    }
    [
        "config.yaml",
        "config.json",
        "config.properties",
        "config.env",
    ]
    .into_iter()
    .find(|k| keys.contains(k))
    .map(str::to_string)
}

/// SHA-256 in lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_the_extension() {
        assert_eq!(format_for_key("config.yaml"), Format::Yaml);
        assert_eq!(format_for_key("app.YML"), Format::Yaml);
        assert_eq!(format_for_key("config.json"), Format::Json);
        assert_eq!(format_for_key("x.properties"), Format::Properties);
        assert_eq!(format_for_key("config.env"), Format::Env);
        assert_eq!(format_for_key("settings"), Format::Yaml);
        assert_eq!(format_for_key("flags.flagd.json"), Format::Flagd);
    }

    #[test]
    fn default_key_is_the_only_key_else_config_yaml() {
        assert_eq!(default_key(["app.json"], None).as_deref(), Some("app.json"));
        assert_eq!(
            default_key(["values.a", "config.yaml", "values.b"], None).as_deref(),
            Some("config.yaml")
        );
        assert_eq!(
            default_key(["values.a", "config.env"], None).as_deref(),
            Some("config.env")
        );
        assert_eq!(default_key(["a", "b"], None), None);
        assert_eq!(
            default_key([META_KEY, "app.json"], None).as_deref(),
            Some("app.json"),
            "the metadata key is not the only key's rival"
        );
        assert_eq!(default_key([META_KEY], None), None);
        assert_eq!(default_key([], None), None);
        // The metadata's fileName wins over every rule, but only for a key that is there.
        let beside = ["app.json", "flags.flagd.json", META_KEY];
        assert_eq!(default_key(beside, None), None);
        assert_eq!(
            default_key(beside, Some("app.json")).as_deref(),
            Some("app.json")
        );
        assert_eq!(
            default_key(["config.yaml", "x"], Some("gone.yaml")).as_deref(),
            Some("config.yaml")
        );
    }

    #[test]
    fn identity_is_the_content_hash() {
        let a = Snapshot::new(Origin::Volume, "config.yaml", Ok("a: 1\n".into()));
        let b = Snapshot::new(Origin::Api, "config.yaml", Ok("a: 1\n".into()));
        assert_eq!(a.identity, b.identity);
        let c = Snapshot::new(Origin::Api, "config.yaml", Err(Unreadable("no key".into())));
        assert_ne!(a.identity, c.identity);
    }
}
