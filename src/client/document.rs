//! One version of the projected document as an application reads it: typed `get` with the
//! environment override, the projected value and the application's default, in that order;
//! flags; the maintenance state.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::stats::{Source, Stats};
use super::{Budget, ClientError, Kind, Pools, PressureLevel};

/// The maintenance switch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// On now (switched on and `until`, if any, not passed yet).
    pub enabled: bool,
    /// Why.
    pub reason: String,
    /// When it ends by itself.
    pub until: Option<DateTime<Utc>>,
}

pub(super) type EnvLookup = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

pub(super) struct Settings {
    pub(super) defaults: BTreeMap<String, Value>,
    pub(super) env: EnvLookup,
    pub(super) stats: Arc<Stats>,
}

/// The name of a key's environment override: `HOTCONF_` and the key upper-cased, every
/// character other than a letter or digit replaced by `_` (`check_interval` →
/// `HOTCONF_CHECK_INTERVAL`, `pools.database.maxConnections` →
/// `HOTCONF_POOLS_DATABASE_MAXCONNECTIONS`).
pub fn env_var(key: &str) -> String {
    let mut name = String::from("HOTCONF_");
    name.extend(key.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    name
}

// The environment text as a value: a YAML/JSON scalar (or list, map) when it parses, else the
// text itself.
pub(super) fn env_value(text: &str) -> Value {
    serde_yaml::from_str::<Value>(text)
        .ok()
        .filter(|v| !v.is_null() || text.trim() == "null")
        .unwrap_or_else(|| Value::String(text.to_string()))
}

/// One whole version of the document.
pub struct Document {
    pub(super) value: Value,
    pub(super) kind: Kind,
    pub(super) revision: Option<i64>,
    pub(super) hash: String,
    pub(super) identity: String,
    pub(super) settings: Arc<Settings>,
    pub(super) restart_keys: Vec<String>,
    pub(super) cached: bool,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document")
            .field("kind", &self.kind)
            .field("revision", &self.revision)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

fn path<'a>(mut node: &'a Value, dotted: &str) -> Option<&'a Value> {
    for part in dotted.split('.') {
        node = match node {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(node)
}

impl Document {
    /// The whole document.
    pub fn value(&self) -> &Value {
        &self.value
    }

    /// Which kind of CR it comes from.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Its revision (`hotconf.dev/revision`; known through the API source).
    pub fn revision(&self) -> Option<i64> {
        self.revision
    }

    /// Whether this document came from the cache file (no source gave one at start), not from a
    /// source.
    pub fn is_cached(&self) -> bool {
        self.cached
    }

    /// The document paths whose change needs a restart (the schema's `requiresRestart`), as
    /// the projection's metadata says; empty when it says nothing.
    pub fn restart_keys(&self) -> &[String] {
        &self.restart_keys
    }

    /// Which of this document's restart keys hold another value in `started` (the document the
    /// process started with): the changes that take effect only after a restart.
    pub fn restart_pending_since(&self, started: &Document) -> Vec<String> {
        self.restart_keys
            .iter()
            .filter(|key| path(&self.value, key) != path(&started.value, key))
            .cloned()
            .collect()
    }

    /// Its hash (SHA-256 of the canonical JSON, as the operator computes it).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The projected value of a key: `values.<key>` (then a dotted path into `values`, then
    /// into the document) for a RuntimeConfig document; a dotted path otherwise.
    pub fn projected(&self, key: &str) -> Option<&Value> {
        if self.kind == Kind::RuntimeConfig {
            let values = &self.value["values"];
            if let Some(v) = values.get(key).or_else(|| path(values, key)) {
                return Some(v);
            }
        }
        path(&self.value, key)
    }

    // The value `get` would use, with where it came from.
    pub(super) fn resolve(&self, key: &str) -> Option<(Value, &'static str, Option<String>)> {
        if let Some(text) = (self.settings.env)(&env_var(key)) {
            return Some((env_value(&text), "environment", Some(text)));
        }
        if let Some(v) = self.projected(key) {
            return Some((v.clone(), "document", None));
        }
        self.settings
            .defaults
            .get(key)
            .map(|v| (v.clone(), "default", None))
    }

    /// The value of `key` (environment override, then projected value, then default) as `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<T, ClientError> {
        let resolved = self.resolve(key);
        let source = match resolved.as_ref().map(|(_, from, _)| *from) {
            Some("environment") => Source::Environment,
            Some("document") => Source::Document,
            Some(_) => Source::Default,
            None => Source::Missing,
        };
        self.settings.stats.read(key, source);
        let Some((value, from, env_text)) = resolved else {
            return Err(ClientError::Missing {
                key: key.to_string(),
                env: env_var(key),
            });
        };
        match serde_json::from_value(value) {
            Ok(v) => Ok(v),
            // `HOTCONF_NAME=007` is the string "007" when a string is asked for.
            Err(e) => match env_text {
                Some(text) => serde_json::from_value(Value::String(text)).map_err(|_| e),
                None => Err(e),
            },
        }
        .map_err(|source| ClientError::Type {
            key: key.to_string(),
            from,
            source,
        })
    }

    /// Whether a feature flag is on for a subject (SPEC.md §3: deny, enabled, allow, then the
    /// FNV-1a rollout bucket). An unknown flag is off.
    pub fn is_enabled(&self, flag: &str, subject: &str) -> bool {
        // Counted as every evaluation is, in `resolve_flag`.
        self.resolve_flag(flag, Some(subject))
            .is_some_and(|r| r.value == Value::Bool(true))
    }

    /// What a flag resolves to for a subject (`None`: none known), with its variant and the
    /// OpenFeature reason (SPEC.md §3.1): a variant flag's value, or `true`/`false` for an
    /// on/off flag. `None` for an unknown flag.
    pub fn resolve_flag(
        &self,
        flag: &str,
        subject: Option<&str>,
    ) -> Option<crate::feature_flags::Resolution> {
        use crate::feature_flags::{Reason, Resolved};
        let entry = self.value.get("featureFlags").and_then(|f| f.get(flag));
        let resolution = entry.and_then(|f| crate::feature_flags::resolve(flag, f, subject));
        let (on, reason) = match &resolution {
            None => (false, Reason::Unknown),
            Some(r) => (
                r.value == Value::Bool(true),
                match r.reason {
                    Resolved::Disabled => Reason::Disabled,
                    Resolved::TargetingMatch if r.value == Value::Bool(false) => Reason::Denied,
                    Resolved::TargetingMatch => Reason::Allowed,
                    _ => Reason::Rollout,
                },
            ),
        };
        self.settings.stats.flag(flag, on, reason);
        resolution
    }

    /// The value a flag resolves to for a subject as `T` (a variant's string, number, object or
    /// boolean); `None` for an unknown flag or a value of another type.
    pub fn flag_value<T: DeserializeOwned>(&self, flag: &str, subject: Option<&str>) -> Option<T> {
        serde_json::from_value(self.resolve_flag(flag, subject)?.value).ok()
    }

    /// The maintenance switch, with `until` applied at the current time.
    pub fn maintenance(&self) -> Maintenance {
        self.maintenance_at(Utc::now())
    }

    /// The maintenance switch at time `now`.
    pub fn maintenance_at(&self, now: DateTime<Utc>) -> Maintenance {
        let m = &self.value["maintenance"];
        let until = m["until"]
            .as_str()
            .and_then(|u| DateTime::parse_from_rfc3339(u).ok())
            .map(|u| u.with_timezone(&Utc));
        Maintenance {
            enabled: m["enabled"].as_bool().unwrap_or(false) && until.is_none_or(|u| now < u),
            reason: m["reason"].as_str().unwrap_or_default().to_string(),
            until,
        }
    }

    /// The resource budget of a PoolBudget document.
    pub fn budget(&self) -> Result<Budget, ClientError> {
        self.pool_part("metrics")
    }

    /// The pool settings of a PoolBudget document.
    pub fn pools(&self) -> Result<Pools, ClientError> {
        self.pool_part("pools")
    }

    fn pool_part<T: DeserializeOwned>(&self, part: &str) -> Result<T, ClientError> {
        if self.kind != Kind::PoolBudget {
            return Err(ClientError::NotPoolBudget);
        }
        serde_json::from_value(self.value[part].clone()).map_err(|source| ClientError::Type {
            key: part.to_string(),
            from: "document",
            source,
        })
    }

    /// The pressure level for a utilization (0..1), from the budget's backpressure
    /// thresholds (the defaults 0.70 / 0.85 / 0.95 for another document).
    pub fn pressure_level(&self, utilization: f64) -> PressureLevel {
        self.budget()
            .map(|b| b.backpressure)
            .unwrap_or_default()
            .level(utilization)
    }
}
