//! The effective document: values with defaults filled in, flags and maintenance (or the complete
//! PoolBudget), its canonical serialization and SHA-256 hash, and the four output formats.
//!
//! Canonical form: object keys sorted, numbers normalized (an integral float such as `30.0` is
//! written `30`; other floats in Rust's shortest round-trip form), compact JSON. The hash is the
//! SHA-256 of those bytes, so the same spec always hashes the same, whatever the output format.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde_json::{Map, Number, Value, json};
use sha2::{Digest, Sha256};

use crate::crd::bounds::defaults;
use crate::crd::{Format, ParamType, PoolBudgetSpec, RuntimeConfigSpec};

/// A value read from a Secret for `valuesFrom`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedSecret {
    /// The value.
    pub value: String,
    /// Mixed into the value's fingerprint (the source Secret's uid), so that the fingerprint
    /// shown in ConfigMaps and status cannot be looked up in a table of common passwords.
    pub salt: String,
}

/// The outcome of evaluating a spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Effective {
    /// The document consumers see (never a sensitive value).
    pub document: Value,
    /// Sensitive values by key: they go to the Secret, never to the ConfigMap.
    pub sensitive: BTreeMap<String, String>,
    /// Document paths whose change needs a restart of the consumers.
    pub restart_keys: BTreeSet<String>,
    /// When the document changes by itself (maintenance `until`), if ever.
    pub next_change: Option<DateTime<Utc>>,
}

/// The effective document of a (valid) RuntimeConfig at time `now`.
///
/// Values from `valuesFrom` are sensitive: they go to `Effective::sensitive`, and the document
/// carries only their source and a salted fingerprint, so a rotated Secret still makes a new
/// revision.
pub fn runtime_config(
    spec: &RuntimeConfigSpec,
    secrets: &BTreeMap<String, ResolvedSecret>,
    now: DateTime<Utc>,
) -> Effective {
    let mut values = Map::new();
    for (key, param) in &spec.schema {
        if param.sensitive {
            continue;
        }
        if let Some(default) = &param.default {
            values.insert(key.clone(), coerce(param.type_, default));
        }
    }
    for (key, value) in &spec.values {
        let coerced = match spec.schema.get(key) {
            Some(param) => coerce(param.type_, value),
            None => value.clone(),
        };
        values.insert(key.clone(), coerced);
    }

    let mut sensitive = BTreeMap::new();
    let mut refs = Map::new();
    for from in &spec.values_from {
        values.remove(&from.key);
        let fingerprint = secrets.get(&from.key).map(|s| {
            sensitive.insert(from.key.clone(), s.value.clone());
            fingerprint(&s.salt, &s.value)
        });
        refs.insert(
            from.key.clone(),
            json!({
                "secretKeyRef": {"name": from.secret_key_ref.name, "key": from.secret_key_ref.key},
                "fingerprint": fingerprint,
            }),
        );
    }

    let flags: Map<String, Value> = spec
        .feature_flags
        .iter()
        .map(|(name, flag)| (name.clone(), flag_entry(flag)))
        .collect();

    let maintenance = spec.maintenance.clone().unwrap_or_default();
    let until = maintenance
        .until
        .as_deref()
        .and_then(|u| DateTime::parse_from_rfc3339(u).ok())
        .map(|u| u.with_timezone(&Utc));
    let active = maintenance.enabled && until.is_none_or(|u| now < u);
    let next_change = until.filter(|u| maintenance.enabled && now < *u);

    let mut document = Map::new();
    document.insert("values".into(), Value::Object(values));
    if !refs.is_empty() {
        document.insert("secrets".into(), Value::Object(refs));
    }
    document.insert("featureFlags".into(), Value::Object(flags));
    document.insert(
        "maintenance".into(),
        json!({"enabled": active, "reason": maintenance.reason, "until": maintenance.until}),
    );

    Effective {
        document: canonicalize(&Value::Object(document)),
        sensitive,
        restart_keys: runtime_config_restart_keys(spec),
        next_change,
    }
}

/// A flag as the effective document carries it. An on/off flag: `enabled`,
/// `rolloutPercentage` (100 when unset), `allow`, `deny`, and `bucketing` only when the spec sets
/// it (so documents of flags written before variants existed keep their hash). A variant flag
/// (SPEC.md §3.1): `variants`, `defaultVariant`, `fractional`, `targets`, `enabled` and
/// `bucketing` (`flagd` unless set).
pub fn flag_entry(flag: &crate::crd::FeatureFlag) -> Value {
    if flag.variants.is_empty() {
        let mut entry = json!({
            "enabled": flag.enabled,
            "rolloutPercentage": flag.rollout_percentage.unwrap_or(100),
            "allow": flag.allow,
            "deny": flag.deny,
        });
        if let Some(b) = flag.bucketing {
            entry["bucketing"] = json!(b.as_str());
        }
        return entry;
    }
    json!({
        "variants": flag.variants,
        "defaultVariant": flag.default_variant,
        "fractional": flag.fractional,
        "targets": flag.targets,
        "enabled": flag.enabled,
        "bucketing": flag.bucketing.unwrap_or(crate::crd::Bucketing::Flagd).as_str(),
    })
}

/// The document paths of a RuntimeConfig whose change needs a restart: its `requiresRestart`
/// keys (under `secrets.` when their value comes from a Secret). Read from the schema alone, so
/// it is known for an invalid spec too.
pub fn runtime_config_restart_keys(spec: &RuntimeConfigSpec) -> BTreeSet<String> {
    spec.schema
        .iter()
        .filter(|(_, p)| p.requires_restart)
        .map(|(k, p)| {
            if p.sensitive || spec.values_from.iter().any(|f| &f.key == k) {
                format!("secrets.{k}")
            } else {
                format!("values.{k}")
            }
        })
        .collect()
}

/// The document paths of a PoolBudget whose change needs a restart (the pool sizes).
pub fn pool_budget_restart_keys() -> BTreeSet<String> {
    POOL_RESTART_KEYS.iter().map(|k| k.to_string()).collect()
}

/// The PoolBudget fields whose change needs a restart: pool sizes, which most client libraries
/// fix when the pool is created.
pub const POOL_RESTART_KEYS: &[&str] = &[
    "pools.database.minConnections",
    "pools.database.maxConnections",
    "pools.redis.minConnections",
    "pools.redis.maxConnections",
    "pools.http.maxConnections",
    "pools.http.maxKeepaliveConnections",
    "pools.cache.maxEntries",
    "pools.cache.maxSizeMB",
];

/// The complete effective document of a (valid) PoolBudget: every field, defaults filled in.
pub fn pool_budget(spec: &PoolBudgetSpec) -> Effective {
    use defaults as d;
    let m = spec.metrics.clone().unwrap_or_default();
    let bp = m.backpressure.clone().unwrap_or_default();
    let pools = spec.pools.clone().unwrap_or_default();
    let db = pools.database.unwrap_or_default();
    let redis = pools.redis.unwrap_or_default();
    let http = pools.http.unwrap_or_default();
    let cache = pools.cache.unwrap_or_default();
    let dur = |v: &Option<String>, default: &str| v.clone().unwrap_or_else(|| default.into());
    let eviction = cache
        .eviction_policy
        .map(|p| serde_json::to_value(p).expect("an enum serializes"))
        .unwrap_or_else(|| json!(d::CACHE_EVICTION_POLICY));
    let document = json!({
        "metrics": {
            "maxConcurrentOperations": m.max_concurrent_operations.unwrap_or(d::MAX_CONCURRENT_OPERATIONS),
            "maxMemoryMB": m.max_memory_mb.unwrap_or(d::MAX_MEMORY_MB),
            "maxCpuPercent": m.max_cpu_percent.unwrap_or(d::MAX_CPU_PERCENT),
            "maxRequestRatePerMinute": m.max_request_rate_per_minute.unwrap_or(d::MAX_REQUEST_RATE_PER_MINUTE),
            "maxProcessingTimeMs": m.max_processing_time_ms.unwrap_or(d::MAX_PROCESSING_TIME_MS),
            "backpressure": {
                "light": bp.light.unwrap_or(d::BACKPRESSURE_LIGHT),
                "moderate": bp.moderate.unwrap_or(d::BACKPRESSURE_MODERATE),
                "heavy": bp.heavy.unwrap_or(d::BACKPRESSURE_HEAVY),
            },
        },
        "pools": {
            "database": {
                "minConnections": db.min_connections.unwrap_or(d::DATABASE_MIN_CONNECTIONS),
                "maxConnections": db.max_connections.unwrap_or(d::DATABASE_MAX_CONNECTIONS),
                "connectionTimeout": dur(&db.connection_timeout, d::DATABASE_CONNECTION_TIMEOUT),
                "idleTimeout": dur(&db.idle_timeout, d::DATABASE_IDLE_TIMEOUT),
                "maxLifetime": dur(&db.max_lifetime, d::DATABASE_MAX_LIFETIME),
                "retryAttempts": db.retry_attempts.unwrap_or(d::DATABASE_RETRY_ATTEMPTS),
            },
            "redis": {
                "minConnections": redis.min_connections.unwrap_or(d::REDIS_MIN_CONNECTIONS),
                "maxConnections": redis.max_connections.unwrap_or(d::REDIS_MAX_CONNECTIONS),
                "connectionTimeout": dur(&redis.connection_timeout, d::REDIS_CONNECTION_TIMEOUT),
                "socketTimeout": dur(&redis.socket_timeout, d::REDIS_SOCKET_TIMEOUT),
                "retryDelay": dur(&redis.retry_delay, d::REDIS_RETRY_DELAY),
                "retryAttempts": redis.retry_attempts.unwrap_or(d::REDIS_RETRY_ATTEMPTS),
            },
            "http": {
                "maxConnections": http.max_connections.unwrap_or(d::HTTP_MAX_CONNECTIONS),
                "maxKeepaliveConnections": http.max_keepalive_connections.unwrap_or(d::HTTP_MAX_KEEPALIVE_CONNECTIONS),
                "keepaliveExpiry": dur(&http.keepalive_expiry, d::HTTP_KEEPALIVE_EXPIRY),
                "timeout": dur(&http.timeout, d::HTTP_TIMEOUT),
            },
            "cache": {
                "maxEntries": cache.max_entries.unwrap_or(d::CACHE_MAX_ENTRIES),
                "maxSizeMB": cache.max_size_mb.unwrap_or(d::CACHE_MAX_SIZE_MB),
                "ttl": dur(&cache.ttl, d::CACHE_TTL),
                "evictionPolicy": eviction,
            },
        },
    });
    Effective {
        document: canonicalize(&document),
        sensitive: BTreeMap::new(),
        restart_keys: pool_budget_restart_keys(),
        next_change: None,
    }
}

// Brings a (valid) value to its parameter's canonical shape.
fn coerce(type_: ParamType, value: &Value) -> Value {
    match (type_, value) {
        (ParamType::Integer, Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            .map(Value::from)
            .unwrap_or_else(|| value.clone()),
        (ParamType::Duration, Value::String(s)) => match crate::duration::parse(s) {
            // Keep the user's spelling: `90s` stays `90s`.
            Ok(_) => Value::String(s.clone()),
            Err(_) => value.clone(),
        },
        _ => value.clone(),
    }
}

fn fingerprint(salt: &str, value: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"hotconf-fingerprint\0");
    h.update(salt.as_bytes());
    h.update(b"\0");
    h.update(value.as_bytes());
    let digest = h.finalize();
    format!("sha256:{}", &hex(&digest)[..16])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Normalizes numbers (integral floats become integers) and sorts object keys.
pub fn canonicalize(value: &Value) -> Value {
    match value {
        Value::Number(n) => Value::Number(canonical_number(n)),
        Value::Array(items) => Value::Array(items.iter().map(canonicalize).collect()),
        Value::Object(map) => {
            let sorted: BTreeMap<&String, Value> =
                map.iter().map(|(k, v)| (k, canonicalize(v))).collect();
            Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        other => other.clone(),
    }
}

fn canonical_number(n: &Number) -> Number {
    if n.is_i64() || n.is_u64() {
        return n.clone();
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 => Number::from(f as i64),
        _ => n.clone(),
    }
}

/// The canonical JSON text of a document: sorted keys, normalized numbers, no whitespace.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(&canonicalize(value), &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            out.push('{');
            let sorted: BTreeMap<&String, &Value> = map.iter().collect();
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The SHA-256 (hex) of the canonical JSON of `document`.
pub fn hash(document: &Value) -> String {
    hex(&Sha256::digest(canonical_json(document).as_bytes()))
}

/// Serializes the document in `format`. Deterministic: sorted keys, normalized numbers.
pub fn render(document: &Value, format: Format) -> String {
    let doc = canonicalize(document);
    match format {
        Format::Json => {
            let mut text = serde_json::to_string_pretty(&SortedValue(&doc)).expect("JSON");
            text.push('\n');
            text
        }
        Format::Yaml => yaml::to_string(&doc),
        Format::Properties => flatten(&doc)
            .into_iter()
            .map(|(k, v)| {
                format!(
                    "{}={}\n",
                    escape_properties(&k, true),
                    escape_properties(&v, false)
                )
            })
            .collect(),
        Format::Env => flatten(&doc)
            .into_iter()
            .map(|(k, v)| format!("{}={}\n", env_name(&k), escape_env(&v)))
            .collect(),
        Format::Flagd => {
            let definition = crate::feature_flags::flagd_definition(&doc);
            let mut text = serde_json::to_string_pretty(&SortedValue(&definition)).expect("JSON");
            text.push('\n');
            text
        }
    }
}

/// Why a projected document does not parse back.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON.
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    /// Not YAML.
    #[error("{0}")]
    Yaml(#[from] serde_yaml::Error),
    /// Properties, env and flagd documents are not the document itself.
    #[error("{0} documents cannot be parsed back into typed values")]
    NotReversible(&'static str),
}

/// Parses a document rendered as YAML or JSON back into its value (the other formats are not
/// reversible: they lose types).
pub fn parse(text: &str, format: Format) -> Result<Value, ParseError> {
    match format {
        Format::Json => Ok(serde_json::from_str(text)?),
        Format::Yaml => Ok(serde_yaml::from_str(text)?),
        Format::Properties => Err(ParseError::NotReversible("properties")),
        Format::Env => Err(ParseError::NotReversible("env")),
        Format::Flagd => Err(ParseError::NotReversible("flagd")),
    }
}

// Serializes a Value with object keys in sorted order even when serde_json keeps insertion order.
struct SortedValue<'a>(&'a Value);

impl serde::Serialize for SortedValue<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Object(map) => {
                let sorted: BTreeMap<&String, &Value> = map.iter().collect();
                let mut m = s.serialize_map(Some(sorted.len()))?;
                for (k, v) in sorted {
                    m.serialize_entry(k, &SortedValue(v))?;
                }
                m.end()
            }
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for v in items {
                    seq.serialize_element(&SortedValue(v))?;
                }
                seq.end()
            }
            other => other.serialize(s),
        }
    }
}

/// One entry per leaf: dotted path (`pools.database.maxConnections`, `featureFlags.a.allow.0`)
/// to its text (strings as they are, other scalars as JSON, null as empty). An empty object or
/// list is a leaf written `{}` / `[]`.
pub fn flatten(document: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    flatten_into(document, String::new(), &mut out);
    out
}

fn flatten_into(value: &Value, prefix: String, out: &mut BTreeMap<String, String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                flatten_into(v, join(k), out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for (i, v) in items.iter().enumerate() {
                flatten_into(v, join(&i.to_string()), out);
            }
        }
        Value::String(s) => {
            out.insert(prefix, s.clone());
        }
        Value::Null => {
            out.insert(prefix, String::new());
        }
        other => {
            out.insert(prefix, canonicalize(other).to_string());
        }
    }
}

/// `featureFlags.new_ui.rolloutPercentage` → `FEATURE_FLAGS_NEW_UI_ROLLOUT_PERCENTAGE`.
pub fn env_name(path: &str) -> String {
    let mut out = String::new();
    let mut prev: Option<char> = None;
    for c in path.chars() {
        if c.is_ascii_alphanumeric() {
            let boundary = c.is_ascii_uppercase()
                && prev.is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit());
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.push(c.to_ascii_uppercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
        prev = Some(c);
    }
    let out = out.trim_end_matches('_').to_string();
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        format!("_{out}")
    } else {
        out
    }
}

fn escape_properties(text: &str, key: bool) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '=' | ':' | '#' | '!' if key => {
                out.push('\\');
                out.push(c);
            }
            ' ' if key || i == 0 => out.push_str("\\ "),
            c if !c.is_ascii() || c.is_control() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

fn escape_env(text: &str) -> String {
    if !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:,-+@%".contains(c))
    {
        return text.to_string();
    }
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("\\$"),
            '`' => out.push_str("\\`"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The dotted leaf paths whose value differs between `old` and `new` (all of `new`'s leaves when
/// there is no `old`), sorted.
pub fn changed_keys(old: Option<&Value>, new: &Value) -> Vec<String> {
    let new_flat = flatten(new);
    let Some(old) = old else {
        return new_flat.into_keys().collect();
    };
    let old_flat = flatten(old);
    let mut keys: BTreeSet<String> = BTreeSet::new();
    for (k, v) in &new_flat {
        if old_flat.get(k) != Some(v) {
            keys.insert(k.clone());
        }
    }
    for k in old_flat.keys() {
        if !new_flat.contains_key(k) {
            keys.insert(k.clone());
        }
    }
    // Lists are reported as a whole, not by index.
    keys.into_iter()
        .map(|k| list_parent(new, &k).unwrap_or(k))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

fn list_parent(doc: &Value, path: &str) -> Option<String> {
    let mut node = doc;
    let mut walked: Vec<&str> = Vec::new();
    for part in path.split('.') {
        if node.is_array() {
            return Some(walked.join("."));
        }
        node = node.get(part)?;
        walked.push(part);
    }
    None
}

/// Whether a change of `changed` paths touches a restart key (a key or anything below it).
pub fn restart_needed(restart_keys: &BTreeSet<String>, changed: &[String]) -> Vec<String> {
    changed
        .iter()
        .filter(|c| {
            restart_keys
                .iter()
                .any(|r| *c == r || c.starts_with(&format!("{r}.")))
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
pub mod yaml;
