//! Validation of both kinds: every rule of SPEC.md §3–§5.1, as pure functions.
//!
//! The CRD schema and its CEL rules catch much of this at admission, but the operator runs the
//! complete rule set itself on every reconcile (and `hotconf validate` runs it offline), so the
//! verdict never depends on what the API server enforces. Every function returns all errors at
//! once. An error never carries a sensitive value, a value read from a Secret, or a literal that
//! looks like a credential: those errors have `value: None` and rule texts that do not quote them.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use regex::Regex;
use serde_json::{Number, Value};

use crate::crd::{
    Backpressure, CachePool, DatabasePool, FeatureFlag, HttpPool, MAX_HISTORY_LIMIT, Maintenance,
    Metrics, ParamType, Parameter, PoolBudgetSpec, Pools, RedisPool, RestartTarget,
    RuntimeConfigSpec, Target, limits,
};

/// The PoolBudget defaults of SPEC.md §4: what the effective document holds for an unset field.
pub mod defaults {
    use crate::crd::EvictionPolicy;

    /// `metrics.maxConcurrentOperations` (1..500).
    pub const MAX_CONCURRENT_OPERATIONS: i64 = 50;
    /// `metrics.maxMemoryMB` (64..2048).
    pub const MAX_MEMORY_MB: i64 = 512;
    /// `metrics.maxCpuPercent` (1..100).
    pub const MAX_CPU_PERCENT: i64 = 85;
    /// `metrics.maxRequestRatePerMinute` (1..1,000,000).
    pub const MAX_REQUEST_RATE_PER_MINUTE: i64 = 300;
    /// `metrics.maxProcessingTimeMs` (1..600,000).
    pub const MAX_PROCESSING_TIME_MS: i64 = 5000;
    /// `metrics.backpressure.light`.
    pub const BACKPRESSURE_LIGHT: f64 = 0.70;
    /// `metrics.backpressure.moderate`.
    pub const BACKPRESSURE_MODERATE: f64 = 0.85;
    /// `metrics.backpressure.heavy`.
    pub const BACKPRESSURE_HEAVY: f64 = 0.95;
    /// `pools.database.minConnections` (0..100).
    pub const DATABASE_MIN_CONNECTIONS: i64 = 5;
    /// `pools.database.maxConnections` (5..100).
    pub const DATABASE_MAX_CONNECTIONS: i64 = 20;
    /// `pools.database.connectionTimeout`.
    pub const DATABASE_CONNECTION_TIMEOUT: &str = "30s";
    /// `pools.database.idleTimeout` (shorter than maxLifetime).
    pub const DATABASE_IDLE_TIMEOUT: &str = "10m";
    /// `pools.database.maxLifetime`.
    pub const DATABASE_MAX_LIFETIME: &str = "30m";
    /// `pools.database.retryAttempts` (0..10).
    pub const DATABASE_RETRY_ATTEMPTS: i64 = 3;
    /// `pools.redis.minConnections` (0..200).
    pub const REDIS_MIN_CONNECTIONS: i64 = 5;
    /// `pools.redis.maxConnections` (5..200).
    pub const REDIS_MAX_CONNECTIONS: i64 = 50;
    /// `pools.redis.connectionTimeout`.
    pub const REDIS_CONNECTION_TIMEOUT: &str = "5s";
    /// `pools.redis.socketTimeout`.
    pub const REDIS_SOCKET_TIMEOUT: &str = "5s";
    /// `pools.redis.retryDelay`.
    pub const REDIS_RETRY_DELAY: &str = "100ms";
    /// `pools.redis.retryAttempts` (0..10).
    pub const REDIS_RETRY_ATTEMPTS: i64 = 3;
    /// `pools.http.maxConnections` (10..1000).
    pub const HTTP_MAX_CONNECTIONS: i64 = 100;
    /// `pools.http.maxKeepaliveConnections` (0..1000, at most maxConnections).
    pub const HTTP_MAX_KEEPALIVE_CONNECTIONS: i64 = 20;
    /// `pools.http.keepaliveExpiry`.
    pub const HTTP_KEEPALIVE_EXPIRY: &str = "5s";
    /// `pools.http.timeout`.
    pub const HTTP_TIMEOUT: &str = "30s";
    /// `pools.cache.maxEntries` (1..10,000,000).
    pub const CACHE_MAX_ENTRIES: i64 = 1000;
    /// `pools.cache.maxSizeMB` (1..65,536).
    pub const CACHE_MAX_SIZE_MB: i64 = 64;
    /// `pools.cache.ttl`.
    pub const CACHE_TTL: &str = "5m";
    /// `pools.cache.evictionPolicy`.
    pub const CACHE_EVICTION_POLICY: EvictionPolicy = EvictionPolicy::Lru;
}

/// One validation failure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field, with the spec's JSON names, e.g. `spec.pools.database.maxConnections`.
    pub path: String,
    /// The offending value as compact JSON text; `None` when the value is sensitive, comes from
    /// a Secret, or looks like a credential.
    pub value: Option<String>,
    /// The rule that is broken, e.g. `must be at most 3600`.
    pub rule: String,
}

impl FieldError {
    fn new(path: impl Into<String>, rule: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            value: None,
            rule: rule.into(),
        }
    }

    fn with_value(mut self, value: impl Into<Value>) -> Self {
        self.value = Some(compact(&value.into()));
        self
    }

    fn with_shown(mut self, shown: Option<String>) -> Self {
        self.value = shown;
        self
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.rule)?;
        if let Some(value) = &self.value {
            write!(f, " (got {value})")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldError {}

/// What the operator learned when resolving `valuesFrom`: `spec.valuesFrom[].key` -> the
/// Secret's value, or why it could not be read.
pub type SecretValues = BTreeMap<String, Result<String, String>>;

/// Values longer than this are cut in errors: a condition message has a size limit.
const MAX_SHOWN_CHARS: usize = 200;

const DURATION_EXAMPLE: &str = "must be a duration such as 30s, 5m or 1h30m";

fn compact(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() <= MAX_SHOWN_CHARS {
        return text;
    }
    let mut cut: String = text.chars().take(MAX_SHOWN_CHARS).collect();
    cut.push('…');
    cut
}

/// A value as a reader writes it: strings bare, everything else as JSON.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => compact(other),
    }
}

// ---------------------------------------------------------------------------------------------
// RuntimeConfig
// ---------------------------------------------------------------------------------------------

/// All errors of a RuntimeConfig spec.
///
/// `secrets` is `None` offline (the CLI without a cluster): `valuesFrom` references are then
/// neither resolved nor reported as missing. With `Some`, a reference whose entry is absent or
/// `Err` is an error naming the Secret and key, and a resolved value is checked against the
/// schema without ever appearing in the error.
pub fn validate_runtime_config(
    spec: &RuntimeConfigSpec,
    secrets: Option<&SecretValues>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check_sizes(spec, &mut errors);
    for (key, param) in &spec.schema {
        check_parameter(key, param, &mut errors);
    }
    for (key, value) in &spec.values {
        check_literal(spec, key, value, &mut errors);
    }
    check_values_from(spec, secrets, &mut errors);
    for (name, flag) in &spec.feature_flags {
        check_flag(name, flag, &mut errors);
    }
    if let Some(maintenance) = &spec.maintenance {
        check_maintenance(maintenance, &mut errors);
    }
    check_restart_targets(&spec.restart_targets, &mut errors);
    errors.extend(validate_common(
        spec.target.as_ref(),
        spec.revision_history_limit,
    ));
    errors
}

/// The size bounds of [`crate::crd::limits`], which the CRD schema declares too.
fn check_sizes(spec: &RuntimeConfigSpec, errors: &mut Vec<FieldError>) {
    at_most_entries(
        errors,
        "spec.schema",
        spec.schema.len(),
        limits::SCHEMA_KEYS,
    );
    at_most_entries(
        errors,
        "spec.values",
        spec.values.len(),
        limits::VALUES_KEYS,
    );
    at_most_entries(
        errors,
        "spec.valuesFrom",
        spec.values_from.len(),
        limits::VALUES_FROM,
    );
    for (i, from) in spec.values_from.iter().enumerate() {
        at_most_chars(
            errors,
            &format!("spec.valuesFrom[{i}].key"),
            &from.key,
            limits::NAME_LENGTH,
        );
    }
    at_most_entries(
        errors,
        "spec.featureFlags",
        spec.feature_flags.len(),
        limits::FEATURE_FLAGS,
    );
    for (name, flag) in &spec.feature_flags {
        for (list, subjects) in [("allow", &flag.allow), ("deny", &flag.deny)] {
            let path = format!("spec.featureFlags.{name}.{list}");
            at_most_entries(errors, &path, subjects.len(), limits::FLAG_SUBJECTS);
            for (j, subject) in subjects.iter().enumerate() {
                at_most_chars(
                    errors,
                    &format!("{path}[{j}]"),
                    subject,
                    limits::SUBJECT_LENGTH,
                );
            }
        }
    }
    for (key, param) in &spec.schema {
        let base = format!("spec.schema.{key}");
        if let Some(pattern) = &param.pattern {
            at_most_chars(
                errors,
                &format!("{base}.pattern"),
                pattern,
                limits::PATTERN_LENGTH,
            );
        }
        if let Some(description) = &param.description {
            at_most_chars(
                errors,
                &format!("{base}.description"),
                description,
                limits::DESCRIPTION_LENGTH,
            );
        }
        if let Some(entries) = &param.enum_ {
            at_most_entries(
                errors,
                &format!("{base}.enum"),
                entries.len(),
                limits::ENUM_VALUES,
            );
        }
    }
    if let Some(maintenance) = &spec.maintenance {
        at_most_chars(
            errors,
            "spec.maintenance.reason",
            &maintenance.reason,
            limits::REASON_LENGTH,
        );
    }
}

fn at_most_entries(errors: &mut Vec<FieldError>, path: &str, len: usize, max: usize) {
    if len > max {
        errors.push(
            FieldError::new(path, format!("must have at most {max} entries")).with_value(len),
        );
    }
}

// Counted in characters, as the API server counts a string's maxLength.
fn at_most_chars(errors: &mut Vec<FieldError>, path: &str, text: &str, max: usize) {
    let len = text.chars().count();
    if len > max {
        errors.push(
            FieldError::new(path, format!("must be at most {max} characters long")).with_value(len),
        );
    }
}

/// `spec.restartTargets`: at most [`limits::RESTART_TARGETS`].
fn check_restart_targets(targets: &[RestartTarget], errors: &mut Vec<FieldError>) {
    at_most_entries(
        errors,
        "spec.restartTargets",
        targets.len(),
        limits::RESTART_TARGETS,
    );
}

/// A lower or upper bound of a parameter, in the parameter's own terms.
#[derive(Clone, Copy, PartialEq, PartialOrd)]
enum Bound {
    Number(f64),
    Duration(Duration),
}

/// `minimum`/`maximum` for the type: a number, or for durations a duration string or a
/// non-negative number of seconds. `None` when it is neither.
fn bound(type_: ParamType, value: &Value) -> Option<Bound> {
    match (type_, value) {
        (ParamType::Integer | ParamType::Number, Value::Number(n)) => n.as_f64().map(Bound::Number),
        (ParamType::Duration, Value::String(s)) => parse_duration(s).ok().map(Bound::Duration),
        (ParamType::Duration, Value::Number(n)) => n
            .as_f64()
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .map(Bound::Duration),
        _ => None,
    }
}

fn bound_text(type_: ParamType, value: &Value) -> String {
    match (type_, value) {
        (ParamType::Duration, Value::Number(n)) => format!("{n}s"),
        _ => plain(value),
    }
}

fn type_rule(type_: ParamType) -> String {
    match type_ {
        ParamType::String => "must be a string".into(),
        ParamType::Integer => "must be an integer".into(),
        ParamType::Number => "must be a number".into(),
        ParamType::Boolean => "must be a boolean (true or false)".into(),
        ParamType::Duration => DURATION_EXAMPLE.into(),
        ParamType::Json => "must be JSON".into(),
    }
}

fn is_integral(n: &Number) -> bool {
    n.is_i64()
        || n.is_u64()
        || n.as_f64()
            .is_some_and(|f| f.is_finite() && f.fract() == 0.0)
}

fn has_type(type_: ParamType, value: &Value) -> bool {
    match type_ {
        ParamType::String => value.is_string(),
        ParamType::Integer => value.as_number().is_some_and(is_integral),
        ParamType::Number => value.is_number(),
        ParamType::Boolean => value.is_boolean(),
        ParamType::Duration => value.as_str().is_some_and(|s| parse_duration(s).is_ok()),
        ParamType::Json => true,
    }
}

/// Numbers compared by value (1 == 1.0), exactly when both are whole.
fn cmp_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    let whole = |n: &Number| {
        n.as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
    };
    match (whole(a), whole(b)) {
        (Some(a), Some(b)) => Some(a.cmp(&b)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// JSON equality with numbers compared by value.
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) => cmp_numbers(a, b) == Some(Ordering::Equal),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| json_eq(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, v)| b.get(k).is_some_and(|other| json_eq(v, other)))
        }
        _ => a == b,
    }
}

fn enum_eq(type_: ParamType, entry: &Value, value: &Value) -> bool {
    if type_ == ParamType::Duration
        && let (Some(a), Some(b)) = (entry.as_str(), value.as_str())
        && let (Ok(a), Ok(b)) = (parse_duration(a), parse_duration(b))
    {
        return a == b;
    }
    json_eq(entry, value)
}

/// The rules `value` breaks against `param` (type first; range, length, pattern and enum only
/// for a value of the right type). `hidden`: the value is secret, so no rule quotes any part of
/// it (a duration's parse error would).
fn check_value(param: &Parameter, value: &Value, hidden: bool) -> Vec<String> {
    let type_ = param.type_;
    if !has_type(type_, value) {
        let rule = match (type_, value.as_str()) {
            (ParamType::Duration, Some(s)) if !hidden => match parse_duration(s) {
                Err(reason) => format!("{DURATION_EXAMPLE}: {reason}"),
                Ok(_) => type_rule(type_),
            },
            _ => type_rule(type_),
        };
        return vec![rule];
    }
    let mut rules = Vec::new();
    let actual = match (type_, value) {
        (ParamType::Integer | ParamType::Number, Value::Number(n)) => n.as_f64().map(Bound::Number),
        (ParamType::Duration, Value::String(s)) => parse_duration(s).ok().map(Bound::Duration),
        _ => None,
    };
    if let Some(actual) = actual {
        let exact = |limit: &Value| match (value, limit) {
            (Value::Number(a), Value::Number(b)) => cmp_numbers(a, b),
            _ => bound(type_, limit).and_then(|b| actual.partial_cmp(&b)),
        };
        if let Some(min) = &param.minimum
            && exact(min) == Some(Ordering::Less)
        {
            rules.push(format!("must be at least {}", bound_text(type_, min)));
        }
        if let Some(max) = &param.maximum
            && exact(max) == Some(Ordering::Greater)
        {
            rules.push(format!("must be at most {}", bound_text(type_, max)));
        }
    }
    if let (ParamType::String, Value::String(s)) = (type_, value) {
        let chars = i64::try_from(s.chars().count()).unwrap_or(i64::MAX);
        if let Some(min) = param.min_length
            && chars < min
        {
            rules.push(format!("must be at least {min} characters long"));
        }
        if let Some(max) = param.max_length
            && chars > max
        {
            rules.push(format!("must be at most {max} characters long"));
        }
        // JSON Schema's `pattern` is an unanchored search, so `is_match` rather than a
        // whole-value match: users who want the whole value write `^...$` themselves.
        if let Some(pattern) = &param.pattern
            && let Ok(re) = compile_pattern(pattern)
            && !re.is_match(s)
        {
            rules.push(format!("must match the pattern {pattern}"));
        }
    }
    if let Some(entries) = &param.enum_
        && !entries.iter().any(|entry| enum_eq(type_, entry, value))
    {
        let list: Vec<String> = entries.iter().map(plain).collect();
        rules.push(format!("must be one of [{}]", list.join(", ")));
    }
    rules
}

/// `spec.schema.<key>` is self-consistent, and its default obeys it.
fn check_parameter(key: &str, param: &Parameter, errors: &mut Vec<FieldError>) {
    let base = format!("spec.schema.{key}");
    let type_ = param.type_;
    let type_name = type_.as_str();

    let ranged = matches!(
        type_,
        ParamType::Integer | ParamType::Number | ParamType::Duration
    );
    let mut bounds = [None, None];
    for (slot, (name, limit)) in [("minimum", &param.minimum), ("maximum", &param.maximum)]
        .into_iter()
        .enumerate()
    {
        let Some(limit) = limit else { continue };
        let path = format!("{base}.{name}");
        if !ranged {
            errors.push(
                FieldError::new(
                    path,
                    format!(
                        "only applies to integer, number and duration parameters, not {type_name}"
                    ),
                )
                .with_value(limit.clone()),
            );
            continue;
        }
        match bound(type_, limit) {
            Some(b) => bounds[slot] = Some(b),
            None => {
                let rule = if type_ == ParamType::Duration {
                    format!("{DURATION_EXAMPLE}, or a non-negative number of seconds")
                } else {
                    "must be a number".to_owned()
                };
                errors.push(FieldError::new(path, rule).with_value(limit.clone()));
            }
        }
    }
    if let ([Some(lo), Some(hi)], Some(min), Some(max)) = (bounds, &param.minimum, &param.maximum)
        && lo > hi
    {
        errors.push(
            FieldError::new(
                format!("{base}.minimum"),
                format!(
                    "must not exceed maximum ({} > {})",
                    bound_text(type_, min),
                    bound_text(type_, max)
                ),
            )
            .with_value(min.clone()),
        );
    }

    let only_strings = format!("only applies to string parameters, not {type_name}");
    for (name, length) in [
        ("minLength", param.min_length),
        ("maxLength", param.max_length),
    ] {
        let Some(length) = length else { continue };
        let path = format!("{base}.{name}");
        if type_ != ParamType::String {
            errors.push(FieldError::new(path, only_strings.clone()).with_value(length));
        } else if length < 0 {
            errors.push(FieldError::new(path, "must be at least 0").with_value(length));
        }
    }
    if type_ == ParamType::String
        && let (Some(min), Some(max)) = (param.min_length, param.max_length)
        && min > max
    {
        errors.push(
            FieldError::new(
                format!("{base}.minLength"),
                format!("must not exceed maxLength ({min} > {max})"),
            )
            .with_value(min),
        );
    }
    if let Some(pattern) = &param.pattern {
        let path = format!("{base}.pattern");
        if type_ != ParamType::String {
            errors.push(FieldError::new(path, only_strings.clone()).with_value(pattern.as_str()));
        } else if let Err(reason) = compile_pattern(pattern) {
            errors.push(
                FieldError::new(
                    path,
                    format!("must be a valid regular expression: {reason}"),
                )
                .with_value(pattern.as_str()),
            );
        }
    }

    if let Some(entries) = &param.enum_ {
        if entries.is_empty() {
            errors.push(FieldError::new(
                format!("{base}.enum"),
                "must list at least one value",
            ));
        }
        for (i, entry) in entries.iter().enumerate() {
            if !has_type(type_, entry) {
                errors.push(
                    FieldError::new(format!("{base}.enum[{i}]"), type_rule(type_))
                        .with_value(entry.clone()),
                );
            }
        }
    }

    if let Some(default) = &param.default {
        let path = format!("{base}.default");
        if param.sensitive {
            errors.push(FieldError::new(
                path,
                "must not be set on a sensitive parameter: a default would be projected into \
                 the ConfigMap; set the value through valuesFrom[].secretKeyRef",
            ));
            return;
        }
        // A default is a literal projected into the ConfigMap like any value in `values`.
        let mut hidden = false;
        if let Some((location, kind)) = find_credential_string(key, default) {
            hidden = true;
            errors.push(FieldError::new(
                path.clone(),
                credential_value_rule(key, &location, kind),
            ));
        }
        let shown = (!hidden).then(|| compact(default));
        for rule in check_value(param, default, false) {
            errors.push(FieldError::new(path.clone(), rule).with_shown(shown.clone()));
        }
    }
}

/// At most this many distinct schema `pattern`s stay compiled in [`PATTERNS`].
const PATTERN_CACHE_CAPACITY: usize = 256;

/// Every schema `pattern` compiled so far in this process, shared by all validations, so that
/// validating the same RuntimeConfig on every reconcile compiles each pattern once.
static PATTERNS: LazyLock<PatternCache> =
    LazyLock::new(|| PatternCache::new(PATTERN_CACHE_CAPACITY));

/// A bounded map from a `pattern` to its compiled regex, or to the reason it does not compile
/// (as [`regex_reason`] words it). When full, the next new pattern clears the whole map before
/// it is stored: no recency is tracked, so a stream of distinct patterns (hostile or not) never
/// holds more than `capacity` entries, at worst costing the recompilation of the ones in use.
struct PatternCache {
    capacity: usize,
    entries: Mutex<HashMap<String, Result<Arc<Regex>, String>>>,
}

impl PatternCache {
    fn new(capacity: usize) -> Self {
        PatternCache {
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `pattern` compiled, or why it does not compile.
    fn get(&self, pattern: &str) -> Result<Arc<Regex>, String> {
        // The map is always consistent (every update is a single insert or clear), so a lock
        // poisoned by a panic elsewhere is still safe to use.
        let lock = || self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(cached) = lock().get(pattern) {
            return cached.clone();
        }
        // Compile without holding the lock: two threads may both compile a new pattern, and the
        // first to store it wins, so every caller then shares one compiled regex.
        let compiled = Regex::new(pattern)
            .map(Arc::new)
            .map_err(|error| regex_reason(&error));
        let mut entries = lock();
        if let Some(cached) = entries.get(pattern) {
            return cached.clone();
        }
        if entries.len() >= self.capacity {
            entries.clear();
        }
        entries.insert(pattern.to_owned(), compiled.clone());
        compiled
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A schema `pattern` compiled (once per process, see [`PATTERNS`]), or the reason it does not
/// compile: the last line of the regex syntax error.
fn compile_pattern(pattern: &str) -> Result<Arc<Regex>, String> {
    PATTERNS.get(pattern)
}

/// The last line of a regex syntax error (`error: unclosed group`) without the ASCII art.
fn regex_reason(error: &regex::Error) -> String {
    let text = error.to_string();
    text.lines()
        .rev()
        .find_map(|line| line.trim().strip_prefix("error: "))
        .map_or_else(
            || text.lines().last().unwrap_or_default().trim().to_owned(),
            str::to_owned,
        )
}

/// The value as it may appear in an error: `None` when it is sensitive or looks like a
/// credential in any way.
fn shown(key: &str, value: &Value, param: Option<&Parameter>) -> Option<String> {
    let hidden = param.is_some_and(|p| p.sensitive)
        || is_credential_key(key)
        || credential_leak(key, value, false).is_some();
    (!hidden).then(|| compact(value))
}

/// One literal in `spec.values`.
fn check_literal(spec: &RuntimeConfigSpec, key: &str, value: &Value, errors: &mut Vec<FieldError>) {
    let path = format!("spec.values.{key}");
    let param = spec.schema.get(key);
    if let Some(param) = param
        && param.sensitive
    {
        errors.push(FieldError::new(
            path,
            "is a sensitive parameter: it may only be set through valuesFrom[].secretKeyRef, \
             never as a literal in values",
        ));
        return;
    }
    // `token_ttl: {type: duration}` set to "5m" is not a credential; a json parameter can hold
    // anything, so only scalar non-string types are exempt from the key rule.
    let scalar_non_string = param.is_some_and(|p| {
        matches!(
            p.type_,
            ParamType::Integer | ParamType::Number | ParamType::Boolean | ParamType::Duration
        )
    });
    if let Some(rule) = credential_leak(key, value, scalar_non_string) {
        errors.push(FieldError::new(path.clone(), rule));
    }
    let Some(param) = param else {
        if !spec.schema.is_empty() {
            errors.push(
                FieldError::new(path, "is not declared in spec.schema")
                    .with_shown(shown(key, value, None)),
            );
        }
        return;
    };
    for rule in check_value(param, value, false) {
        errors.push(FieldError::new(path.clone(), rule).with_shown(shown(key, value, Some(param))));
    }
}

/// `spec.valuesFrom`: well-formed references, no clashes, and (with `secrets`) resolvable
/// values of the declared type.
fn check_values_from(
    spec: &RuntimeConfigSpec,
    secrets: Option<&SecretValues>,
    errors: &mut Vec<FieldError>,
) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, from) in spec.values_from.iter().enumerate() {
        let base = format!("spec.valuesFrom[{i}]");
        let key = from.key.as_str();
        let reference = &from.secret_key_ref;
        if key.is_empty() {
            errors.push(FieldError::new(format!("{base}.key"), "must not be empty"));
        } else {
            if let Some(first) = seen.get(key) {
                errors.push(
                    FieldError::new(
                        format!("{base}.key"),
                        format!(
                            "duplicates spec.valuesFrom[{first}].key: a key is read from one \
                             Secret only"
                        ),
                    )
                    .with_value(key),
                );
            } else {
                seen.insert(key, i);
            }
            if spec.values.contains_key(key) {
                errors.push(
                    FieldError::new(
                        format!("{base}.key"),
                        "is also in spec.values: set either in values or in valuesFrom, not both",
                    )
                    .with_value(key),
                );
            }
            if !spec.schema.is_empty() && !spec.schema.contains_key(key) {
                errors.push(
                    FieldError::new(format!("{base}.key"), "is not declared in spec.schema")
                        .with_value(key),
                );
            }
        }
        let name_path = format!("{base}.secretKeyRef.name");
        if reference.name.is_empty() {
            errors.push(FieldError::new(name_path, "must not be empty"));
        } else if !is_dns_subdomain(&reference.name) {
            errors.push(
                FieldError::new(name_path, DNS_SUBDOMAIN_RULE).with_value(reference.name.as_str()),
            );
        }
        let key_path = format!("{base}.secretKeyRef.key");
        if reference.key.is_empty() {
            errors.push(FieldError::new(key_path, "must not be empty"));
        } else if !is_data_key(&reference.key) {
            errors
                .push(FieldError::new(key_path, DATA_KEY_RULE).with_value(reference.key.as_str()));
        }

        let Some(secrets) = secrets else { continue };
        if key.is_empty() {
            continue;
        }
        let path = format!("{base}.secretKeyRef");
        let (secret, secret_key) = (&reference.name, &reference.key);
        match secrets.get(key) {
            None => errors.push(FieldError::new(
                path,
                format!("key {secret_key:?} of Secret {secret:?} was not resolved"),
            )),
            Some(Err(reason)) => errors.push(FieldError::new(
                path,
                format!("cannot read key {secret_key:?} of Secret {secret:?}: {reason}"),
            )),
            Some(Ok(text)) => {
                if let Some(param) = spec.schema.get(key) {
                    for rule in check_secret_value(param, text) {
                        errors.push(FieldError::new(
                            path.clone(),
                            format!("the value of key {secret_key:?} in Secret {secret:?} {rule}"),
                        ));
                    }
                }
            }
        }
    }
}

/// A Secret holds text: read it as the declared type ("42" is a valid integer) and check it.
fn check_secret_value(param: &Parameter, text: &str) -> Vec<String> {
    let value = match param.type_ {
        ParamType::String | ParamType::Duration => Value::String(text.to_owned()),
        ParamType::Integer | ParamType::Number => match text.trim().parse::<Number>() {
            Ok(n) => Value::Number(n),
            Err(_) => return vec![type_rule(param.type_)],
        },
        ParamType::Boolean => match text.trim() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => return vec![type_rule(param.type_)],
        },
        ParamType::Json => return Vec::new(),
    };
    check_value(param, &value, true)
}

static FLAG_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
        .expect("the flag name pattern compiles")
});

fn check_flag(name: &str, flag: &FeatureFlag, errors: &mut Vec<FieldError>) {
    let base = format!("spec.featureFlags.{name}");
    if !FLAG_NAME.is_match(name) {
        errors.push(
            FieldError::new(
                base.clone(),
                "flag name must consist of alphanumerics, '-', '_' or '.', and start and end \
                 with an alphanumeric",
            )
            .with_value(name),
        );
    }
    if let Some(percentage) = flag.rollout_percentage
        && !(0..=100).contains(&percentage)
    {
        errors.push(
            FieldError::new(
                format!("{base}.rolloutPercentage"),
                "must be between 0 and 100",
            )
            .with_value(percentage),
        );
    }
    let allowed: BTreeSet<&str> = flag.allow.iter().map(String::as_str).collect();
    for (j, subject) in flag.deny.iter().enumerate() {
        if allowed.contains(subject.as_str()) {
            errors.push(
                FieldError::new(
                    format!("{base}.deny[{j}]"),
                    "is also in allow: a subject is either allowed or denied, not both",
                )
                .with_value(subject.as_str()),
            );
        }
    }
}

fn check_maintenance(maintenance: &Maintenance, errors: &mut Vec<FieldError>) {
    if let Some(until) = &maintenance.until
        && chrono::DateTime::parse_from_rfc3339(until).is_err()
    {
        errors.push(
            FieldError::new(
                "spec.maintenance.until",
                "must be an RFC 3339 timestamp such as 2025-06-01T18:00:00Z",
            )
            .with_value(until.as_str()),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials
// ---------------------------------------------------------------------------------------------

const MOVE_TO_SECRET: &str =
    "put it in a Secret and reference it with valuesFrom.secretKeyRef instead of a literal";

/// Key looks like a credential: contains (case-insensitive; `-` and `.` count as `_`, and a
/// camelCase boundary does too, so `apiKey` and `dbPassword` match) password, passwd, secret,
/// token, api_key, apikey, private_key or credential.
pub fn is_credential_key(key: &str) -> bool {
    const MARKERS: [&str; 8] = [
        "password",
        "passwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "private_key",
        "credential",
    ];
    let mut flat = String::with_capacity(key.len());
    let mut snake = String::with_capacity(key.len() + 4);
    let mut after_lower = false;
    for c in key.chars() {
        let c = if c == '-' || c == '.' { '_' } else { c };
        if c.is_uppercase() && after_lower {
            snake.push('_');
        }
        after_lower = c.is_lowercase() || c.is_ascii_digit();
        flat.extend(c.to_lowercase());
        snake.extend(c.to_lowercase());
    }
    MARKERS
        .iter()
        .any(|marker| flat.contains(marker) || snake.contains(marker))
}

static PEM_PRIVATE_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
        .expect("the PEM pattern compiles")
});
static AWS_ACCESS_KEY_ID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:^|[^A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?:$|[^A-Za-z0-9])")
        .expect("the AWS key pattern compiles")
});
static JWT: LazyLock<Regex> = LazyLock::new(|| {
    // Base64url segments, delimited so that a longer word containing one does not count.
    let seg = "[A-Za-z0-9_-]";
    Regex::new(&format!(
        r"(?:^|[^A-Za-z0-9_-])eyJ{seg}*\.{seg}+\.{seg}+(?:$|[^A-Za-z0-9_-])"
    ))
    .expect("the JWT pattern compiles")
});

/// Value looks like a credential: a PEM private key block, an AWS access key id (`AKIA`/`ASIA`
/// and 16 of `[A-Z0-9]`) or a JWT (three base64url segments, the first starting with `eyJ`),
/// anywhere in the text. Returns what it looks like.
pub fn credential_kind(value: &str) -> Option<&'static str> {
    if PEM_PRIVATE_KEY.is_match(value) {
        Some("a PEM private key")
    } else if AWS_ACCESS_KEY_ID.is_match(value) {
        Some("an AWS access key id")
    } else if JWT.is_match(value) {
        Some("a JSON Web Token")
    } else {
        None
    }
}

/// The first string inside `value` that looks like a credential: its location below `top`
/// (`top`, `top.a[2]`) and what it looks like.
fn find_credential_string(top: &str, value: &Value) -> Option<(String, &'static str)> {
    match value {
        Value::String(s) => credential_kind(s).map(|kind| (top.to_owned(), kind)),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_credential_string(&format!("{top}[{i}]"), item)),
        Value::Object(map) => map
            .iter()
            .find_map(|(k, v)| find_credential_string(&format!("{top}.{k}"), v)),
        _ => None,
    }
}

/// The first nested object key (below the top) that looks like a credential and holds a
/// non-empty string.
fn find_credential_key(top: &str, value: &Value) -> Option<String> {
    match value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| find_credential_key(&format!("{top}[{i}]"), item)),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let here = format!("{top}.{k}");
            if is_credential_key(k) && is_filled_string(v) {
                Some(here)
            } else {
                find_credential_key(&here, v)
            }
        }),
        _ => None,
    }
}

fn is_filled_string(value: &Value) -> bool {
    value.as_str().is_some_and(|s| !s.trim().is_empty())
}

fn credential_value_rule(top: &str, location: &str, kind: &'static str) -> String {
    if location == top {
        format!("value looks like {kind}: {MOVE_TO_SECRET}")
    } else {
        format!("value at {location} looks like {kind}: {MOVE_TO_SECRET}")
    }
}

/// The credential rule a literal breaks, if any: its key (or a nested key) looks like a
/// credential and holds a non-empty string, or a string in it looks like one.
/// `exempt_top_key`: the schema declares the key with a scalar type other than string.
fn credential_leak(key: &str, value: &Value, exempt_top_key: bool) -> Option<String> {
    if !exempt_top_key && is_credential_key(key) && is_filled_string(value) {
        return Some(format!("key looks like a credential: {MOVE_TO_SECRET}"));
    }
    if let Some(location) = find_credential_key(key, value) {
        return Some(format!(
            "key {location} looks like a credential: {MOVE_TO_SECRET}"
        ));
    }
    find_credential_string(key, value)
        .map(|(location, kind)| credential_value_rule(key, &location, kind))
}

// ---------------------------------------------------------------------------------------------
// Shared by both kinds
// ---------------------------------------------------------------------------------------------

const DNS_SUBDOMAIN_RULE: &str = "must be a DNS-1123 subdomain: lowercase alphanumerics, '-' or \
     '.', each dot-separated part starting and ending with an alphanumeric, at most 253 characters";
const DATA_KEY_RULE: &str = "must consist of alphanumerics, '-', '_' or '.', be at most 253 \
     characters, and not be \".\" or \"..\"";

static DNS_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .expect("the DNS-1123 pattern compiles")
});
static DATA_KEY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[-._a-zA-Z0-9]+$").expect("the data key pattern compiles"));

/// A name Kubernetes accepts for a ConfigMap or Secret.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && DNS_SUBDOMAIN.is_match(name)
}

/// A key Kubernetes accepts in a ConfigMap's or Secret's data.
fn is_data_key(key: &str) -> bool {
    key.len() <= 253 && key != "." && key != ".." && DATA_KEY.is_match(key)
}

/// Rules of `spec.target` and `spec.revisionHistoryLimit` shared by both kinds.
pub fn validate_common(
    target: Option<&Target>,
    revision_history_limit: Option<i32>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(limit) = revision_history_limit
        && !(1..=MAX_HISTORY_LIMIT).contains(&limit)
    {
        errors.push(
            FieldError::new(
                "spec.revisionHistoryLimit",
                format!("must be between 1 and {MAX_HISTORY_LIMIT}"),
            )
            .with_value(limit),
        );
    }
    let Some(target) = target else { return errors };
    if let Some(name) = &target.config_map_name
        && !is_dns_subdomain(name)
    {
        errors.push(
            FieldError::new("spec.target.configMapName", DNS_SUBDOMAIN_RULE)
                .with_value(name.as_str()),
        );
    }
    if let Some(file) = &target.file_name
        && !is_data_key(file)
    {
        errors
            .push(FieldError::new("spec.target.fileName", DATA_KEY_RULE).with_value(file.as_str()));
    }
    errors
}

// ---------------------------------------------------------------------------------------------
// PoolBudget
// ---------------------------------------------------------------------------------------------

/// All errors of a PoolBudget spec: the ranges of SPEC.md §4, and the cross-field rules on the
/// values with defaults filled in (only `minConnections: 30` set breaks the default max of 20).
/// A cross-field rule is skipped while one of its operands is itself invalid: the range error
/// says enough.
pub fn validate_pool_budget(spec: &PoolBudgetSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if let Some(metrics) = &spec.metrics {
        check_metrics(metrics, &mut errors);
    }
    if let Some(Pools {
        database,
        redis,
        http,
        cache,
    }) = &spec.pools
    {
        if let Some(database) = database {
            check_database(database, &mut errors);
        }
        if let Some(redis) = redis {
            check_redis(redis, &mut errors);
        }
        if let Some(http) = http {
            check_http(http, &mut errors);
        }
        if let Some(cache) = cache {
            check_cache(cache, &mut errors);
        }
    }
    check_restart_targets(&spec.restart_targets, &mut errors);
    errors.extend(validate_common(
        spec.target.as_ref(),
        spec.revision_history_limit,
    ));
    errors
}

/// Checks `value` against `lo..=hi`; true when it is unset or in range.
fn int_in_range(
    errors: &mut Vec<FieldError>,
    path: String,
    value: Option<i64>,
    lo: i64,
    hi: i64,
) -> bool {
    match value {
        Some(v) if !(lo..=hi).contains(&v) => {
            errors.push(
                FieldError::new(path, format!("must be between {lo} and {hi}")).with_value(v),
            );
            false
        }
        _ => true,
    }
}

/// The effective duration of a field (its default when unset), or `None` when the set value is
/// invalid (reported). Only `allow_zero` fields may be `0s`.
fn duration_field(
    errors: &mut Vec<FieldError>,
    path: String,
    value: Option<&String>,
    default: &str,
    allow_zero: bool,
) -> Option<Duration> {
    let Some(text) = value else {
        return parse_duration(default).ok();
    };
    match parse_duration(text) {
        Err(reason) => {
            errors.push(
                FieldError::new(path, format!("{DURATION_EXAMPLE}: {reason}"))
                    .with_value(text.as_str()),
            );
            None
        }
        Ok(d) if d.is_zero() && !allow_zero => {
            errors.push(FieldError::new(path, "must be greater than 0").with_value(text.as_str()));
            None
        }
        Ok(d) => Some(d),
    }
}

/// One operand of a cross-field rule: its JSON name, its value as text, and whether the user set
/// it (otherwise it is the default).
struct Side {
    name: &'static str,
    text: String,
    set: bool,
    json: Value,
}

impl Side {
    fn new(
        name: &'static str,
        value: Option<impl Into<Value> + fmt::Display>,
        default: impl Into<Value> + fmt::Display,
    ) -> Self {
        match value {
            Some(v) => Side {
                name,
                text: v.to_string(),
                set: true,
                json: v.into(),
            },
            None => Side {
                name,
                text: default.to_string(),
                set: false,
                json: default.into(),
            },
        }
    }
}

/// How the two operands of a cross-field rule must be ordered.
#[derive(Clone, Copy)]
enum Order {
    /// lower <= upper
    AtMost,
    /// lower < upper
    Below,
    /// lower < upper, for durations
    Shorter,
}

/// Reports that `lower` and `upper` are out of order. The error names the field the user set
/// (the lower one when both are), and quotes both values.
fn out_of_order(errors: &mut Vec<FieldError>, base: &str, order: Order, lower: Side, upper: Side) {
    let (lower_words, lower_op, upper_words, upper_op) = match order {
        Order::AtMost => ("must not exceed", ">", "must not be below", "<"),
        Order::Below => ("must be below", ">=", "must be above", "<="),
        Order::Shorter => ("must be shorter than", ">=", "must be longer than", "<="),
    };
    let (named, other, words, op) = if lower.set || !upper.set {
        (lower, upper, lower_words, lower_op)
    } else {
        (upper, lower, upper_words, upper_op)
    };
    let note = if other.set { "" } else { ", its default" };
    errors.push(
        FieldError::new(
            format!("{base}.{}", named.name),
            format!(
                "{words} {} ({} {op} {}{note})",
                other.name, named.text, other.text
            ),
        )
        .with_value(named.json),
    );
}

fn check_metrics(metrics: &Metrics, errors: &mut Vec<FieldError>) {
    let base = "spec.metrics";
    int_in_range(
        errors,
        format!("{base}.maxConcurrentOperations"),
        metrics.max_concurrent_operations,
        1,
        500,
    );
    int_in_range(
        errors,
        format!("{base}.maxMemoryMB"),
        metrics.max_memory_mb,
        64,
        2048,
    );
    int_in_range(
        errors,
        format!("{base}.maxCpuPercent"),
        metrics.max_cpu_percent,
        1,
        100,
    );
    int_in_range(
        errors,
        format!("{base}.maxRequestRatePerMinute"),
        metrics.max_request_rate_per_minute,
        1,
        1_000_000,
    );
    int_in_range(
        errors,
        format!("{base}.maxProcessingTimeMs"),
        metrics.max_processing_time_ms,
        1,
        600_000,
    );
    if let Some(backpressure) = &metrics.backpressure {
        check_backpressure(backpressure, errors);
    }
}

fn check_backpressure(bp: &Backpressure, errors: &mut Vec<FieldError>) {
    let base = "spec.metrics.backpressure";
    let mut valid = |name: &str, value: Option<f64>| match value {
        Some(v) if !(v > 0.0 && v <= 1.0) => {
            errors.push(
                FieldError::new(
                    format!("{base}.{name}"),
                    "must be greater than 0 and at most 1",
                )
                .with_value(v),
            );
            false
        }
        _ => true,
    };
    let ok = [
        valid("light", bp.light),
        valid("moderate", bp.moderate),
        valid("heavy", bp.heavy),
    ];
    let light = bp.light.unwrap_or(defaults::BACKPRESSURE_LIGHT);
    let moderate = bp.moderate.unwrap_or(defaults::BACKPRESSURE_MODERATE);
    let heavy = bp.heavy.unwrap_or(defaults::BACKPRESSURE_HEAVY);
    if ok[0] && ok[1] && light >= moderate {
        out_of_order(
            errors,
            base,
            Order::Below,
            Side::new("light", bp.light, defaults::BACKPRESSURE_LIGHT),
            Side::new("moderate", bp.moderate, defaults::BACKPRESSURE_MODERATE),
        );
    }
    if ok[1] && ok[2] && moderate >= heavy {
        out_of_order(
            errors,
            base,
            Order::Below,
            Side::new("moderate", bp.moderate, defaults::BACKPRESSURE_MODERATE),
            Side::new("heavy", bp.heavy, defaults::BACKPRESSURE_HEAVY),
        );
    }
}

/// `minConnections <= maxConnections` on the effective values.
fn min_at_most_max(
    errors: &mut Vec<FieldError>,
    base: &str,
    min: Option<i64>,
    min_default: i64,
    max: Option<i64>,
    max_default: i64,
) {
    if min.unwrap_or(min_default) > max.unwrap_or(max_default) {
        out_of_order(
            errors,
            base,
            Order::AtMost,
            Side::new("minConnections", min, min_default),
            Side::new("maxConnections", max, max_default),
        );
    }
}

fn check_database(pool: &DatabasePool, errors: &mut Vec<FieldError>) {
    use defaults::*;
    let base = "spec.pools.database";
    let min_ok = int_in_range(
        errors,
        format!("{base}.minConnections"),
        pool.min_connections,
        0,
        100,
    );
    let max_ok = int_in_range(
        errors,
        format!("{base}.maxConnections"),
        pool.max_connections,
        5,
        100,
    );
    if min_ok && max_ok {
        min_at_most_max(
            errors,
            base,
            pool.min_connections,
            DATABASE_MIN_CONNECTIONS,
            pool.max_connections,
            DATABASE_MAX_CONNECTIONS,
        );
    }
    duration_field(
        errors,
        format!("{base}.connectionTimeout"),
        pool.connection_timeout.as_ref(),
        DATABASE_CONNECTION_TIMEOUT,
        false,
    );
    let idle = duration_field(
        errors,
        format!("{base}.idleTimeout"),
        pool.idle_timeout.as_ref(),
        DATABASE_IDLE_TIMEOUT,
        false,
    );
    let lifetime = duration_field(
        errors,
        format!("{base}.maxLifetime"),
        pool.max_lifetime.as_ref(),
        DATABASE_MAX_LIFETIME,
        false,
    );
    if let (Some(idle), Some(lifetime)) = (idle, lifetime)
        && idle >= lifetime
    {
        out_of_order(
            errors,
            base,
            Order::Shorter,
            Side::new(
                "idleTimeout",
                pool.idle_timeout.clone(),
                DATABASE_IDLE_TIMEOUT,
            ),
            Side::new(
                "maxLifetime",
                pool.max_lifetime.clone(),
                DATABASE_MAX_LIFETIME,
            ),
        );
    }
    int_in_range(
        errors,
        format!("{base}.retryAttempts"),
        pool.retry_attempts,
        0,
        10,
    );
}

fn check_redis(pool: &RedisPool, errors: &mut Vec<FieldError>) {
    use defaults::*;
    let base = "spec.pools.redis";
    let min_ok = int_in_range(
        errors,
        format!("{base}.minConnections"),
        pool.min_connections,
        0,
        200,
    );
    let max_ok = int_in_range(
        errors,
        format!("{base}.maxConnections"),
        pool.max_connections,
        5,
        200,
    );
    if min_ok && max_ok {
        min_at_most_max(
            errors,
            base,
            pool.min_connections,
            REDIS_MIN_CONNECTIONS,
            pool.max_connections,
            REDIS_MAX_CONNECTIONS,
        );
    }
    duration_field(
        errors,
        format!("{base}.connectionTimeout"),
        pool.connection_timeout.as_ref(),
        REDIS_CONNECTION_TIMEOUT,
        false,
    );
    duration_field(
        errors,
        format!("{base}.socketTimeout"),
        pool.socket_timeout.as_ref(),
        REDIS_SOCKET_TIMEOUT,
        false,
    );
    // Retrying at once is a legitimate choice; a zero timeout is not.
    duration_field(
        errors,
        format!("{base}.retryDelay"),
        pool.retry_delay.as_ref(),
        REDIS_RETRY_DELAY,
        true,
    );
    int_in_range(
        errors,
        format!("{base}.retryAttempts"),
        pool.retry_attempts,
        0,
        10,
    );
}

fn check_http(pool: &HttpPool, errors: &mut Vec<FieldError>) {
    use defaults::*;
    let base = "spec.pools.http";
    let max_ok = int_in_range(
        errors,
        format!("{base}.maxConnections"),
        pool.max_connections,
        10,
        1000,
    );
    let keepalive_ok = int_in_range(
        errors,
        format!("{base}.maxKeepaliveConnections"),
        pool.max_keepalive_connections,
        0,
        1000,
    );
    let keepalive = pool
        .max_keepalive_connections
        .unwrap_or(HTTP_MAX_KEEPALIVE_CONNECTIONS);
    if max_ok && keepalive_ok && keepalive > pool.max_connections.unwrap_or(HTTP_MAX_CONNECTIONS) {
        out_of_order(
            errors,
            base,
            Order::AtMost,
            Side::new(
                "maxKeepaliveConnections",
                pool.max_keepalive_connections,
                HTTP_MAX_KEEPALIVE_CONNECTIONS,
            ),
            Side::new("maxConnections", pool.max_connections, HTTP_MAX_CONNECTIONS),
        );
    }
    duration_field(
        errors,
        format!("{base}.keepaliveExpiry"),
        pool.keepalive_expiry.as_ref(),
        HTTP_KEEPALIVE_EXPIRY,
        false,
    );
    duration_field(
        errors,
        format!("{base}.timeout"),
        pool.timeout.as_ref(),
        HTTP_TIMEOUT,
        false,
    );
}

fn check_cache(pool: &CachePool, errors: &mut Vec<FieldError>) {
    // evictionPolicy is an enum type: serde already refuses anything but LRU, LFU and TTL.
    let base = "spec.pools.cache";
    int_in_range(
        errors,
        format!("{base}.maxEntries"),
        pool.max_entries,
        1,
        10_000_000,
    );
    int_in_range(
        errors,
        format!("{base}.maxSizeMB"),
        pool.max_size_mb,
        1,
        65_536,
    );
    duration_field(
        errors,
        format!("{base}.ttl"),
        pool.ttl.as_ref(),
        defaults::CACHE_TTL,
        false,
    );
}

// ---------------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------------

const UNITS_HINT: &str = "use ns, us, µs, ms, s, m or h";

/// Nanoseconds per unit. `µs` is U+00B5 MICRO SIGN, as in the CRD's duration pattern.
const UNITS: [(&str, u128); 7] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Go's and CEL's limit: an i64 of nanoseconds, about 292 years.
const MAX_NANOS: u128 = i64::MAX as u128;

/// Fraction digits beyond this cannot change the result by a nanosecond (an hour is 3.6e12 ns).
const MAX_FRACTION_DIGITS: usize = 20;

/// Go/CEL-style duration: one or more number+unit groups such as `30s`, `5m`, `1h30m`, `100ms`,
/// `1.5h`; units ns, us, µs, ms, s, m, h; no sign, not empty. The grammar is the CRD's
/// [`crate::crd::DURATION_PATTERN`], so a bare `0` (which Go accepts) needs a unit here, and
/// the result is at most Go's limit of about 292 years.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err("empty".into());
    }
    if s.starts_with(['+', '-']) {
        return Err("a duration has no sign".into());
    }
    let too_large = || "too large (at most about 292 years)".to_owned();
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        if int_len == 0 {
            return Err("expected a number before each unit".into());
        }
        let (int_part, mut after) = rest.split_at(int_len);
        let mut fraction = "";
        if let Some(tail) = after.strip_prefix('.') {
            let len = tail.bytes().take_while(u8::is_ascii_digit).count();
            if len == 0 {
                return Err("expected digits after the decimal point".into());
            }
            (fraction, after) = tail.split_at(len);
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(format!("missing unit ({UNITS_HINT})"));
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(format!("unknown unit {unit:?} ({UNITS_HINT})"));
        };
        let mut whole: u128 = 0;
        for digit in int_part.bytes() {
            whole = whole
                .checked_mul(10)
                .and_then(|w| w.checked_add(u128::from(digit - b'0')))
                .filter(|w| *w <= MAX_NANOS)
                .ok_or_else(too_large)?;
        }
        let fraction = &fraction[..fraction.len().min(MAX_FRACTION_DIGITS)];
        let mut numerator: u128 = 0;
        let mut denominator: u128 = 1;
        for digit in fraction.bytes() {
            numerator = numerator * 10 + u128::from(digit - b'0');
            denominator *= 10;
        }
        let group = whole
            .checked_mul(scale)
            .and_then(|w| w.checked_add(numerator * scale / denominator))
            .ok_or_else(too_large)?;
        total = total
            .checked_add(group)
            .filter(|t| *t <= MAX_NANOS)
            .ok_or_else(too_large)?;
        rest = next;
    }
    let nanos = u64::try_from(total).map_err(|_| too_large())?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{SecretKeyRef, ValueFrom};
    use proptest::prelude::*;
    use serde_json::json;

    // -----------------------------------------------------------------------------------------
    // Fixtures
    // -----------------------------------------------------------------------------------------

    fn rtc() -> RuntimeConfigSpec {
        RuntimeConfigSpec::default()
    }

    fn param(type_: ParamType) -> Parameter {
        Parameter {
            type_,
            default: None,
            minimum: None,
            maximum: None,
            min_length: None,
            max_length: None,
            pattern: None,
            enum_: None,
            requires_restart: false,
            sensitive: false,
            description: None,
        }
    }

    fn flag() -> FeatureFlag {
        FeatureFlag {
            enabled: true,
            rollout_percentage: None,
            allow: Vec::new(),
            deny: Vec::new(),
        }
    }

    trait ParamExt {
        fn min(self, bound: Value) -> Self;
        fn max(self, bound: Value) -> Self;
        fn min_len(self, length: i64) -> Self;
        fn max_len(self, length: i64) -> Self;
        fn pattern(self, pattern: &str) -> Self;
        fn one_of(self, entries: Value) -> Self;
        fn with_default(self, value: Value) -> Self;
        fn sensitive(self) -> Self;
    }

    impl ParamExt for Parameter {
        fn min(mut self, bound: Value) -> Self {
            self.minimum = Some(bound);
            self
        }
        fn max(mut self, bound: Value) -> Self {
            self.maximum = Some(bound);
            self
        }
        fn min_len(mut self, length: i64) -> Self {
            self.min_length = Some(length);
            self
        }
        fn max_len(mut self, length: i64) -> Self {
            self.max_length = Some(length);
            self
        }
        fn pattern(mut self, pattern: &str) -> Self {
            self.pattern = Some(pattern.to_owned());
            self
        }
        fn one_of(mut self, entries: Value) -> Self {
            self.enum_ = Some(entries.as_array().expect("enum entries are a list").clone());
            self
        }
        fn with_default(mut self, value: Value) -> Self {
            self.default = Some(value);
            self
        }
        fn sensitive(mut self) -> Self {
            self.sensitive = true;
            self
        }
    }

    trait RtcExt {
        fn with_param(self, key: &str, param: Parameter) -> Self;
        fn with_value(self, key: &str, value: Value) -> Self;
        fn with_secret(self, key: &str, secret: &str, secret_key: &str) -> Self;
        fn with_flag(self, name: &str, flag: FeatureFlag) -> Self;
        fn with_until(self, until: &str) -> Self;
        fn with_target(self, target: Target) -> Self;
        fn with_history_limit(self, limit: i32) -> Self;
    }

    impl RtcExt for RuntimeConfigSpec {
        fn with_param(mut self, key: &str, param: Parameter) -> Self {
            self.schema.insert(key.to_owned(), param);
            self
        }
        fn with_value(mut self, key: &str, value: Value) -> Self {
            self.values.insert(key.to_owned(), value);
            self
        }
        fn with_secret(mut self, key: &str, secret: &str, secret_key: &str) -> Self {
            self.values_from.push(ValueFrom {
                key: key.to_owned(),
                secret_key_ref: SecretKeyRef {
                    name: secret.to_owned(),
                    key: secret_key.to_owned(),
                },
            });
            self
        }
        fn with_flag(mut self, name: &str, flag: FeatureFlag) -> Self {
            self.feature_flags.insert(name.to_owned(), flag);
            self
        }
        fn with_until(mut self, until: &str) -> Self {
            self.maintenance = Some(Maintenance {
                enabled: true,
                reason: "upgrade".into(),
                until: Some(until.to_owned()),
            });
            self
        }
        fn with_target(mut self, target: Target) -> Self {
            self.target = Some(target);
            self
        }
        fn with_history_limit(mut self, limit: i32) -> Self {
            self.revision_history_limit = Some(limit);
            self
        }
    }

    /// The RuntimeConfig of SPEC.md §3.
    fn example() -> RuntimeConfigSpec {
        use ParamType::*;
        let strategies = json!(["AGGRESSIVE", "BALANCED", "CONSERVATIVE"]);
        rtc()
            .with_param(
                "check_interval",
                param(Number)
                    .min(json!(1))
                    .max(json!(3600))
                    .with_default(json!(60)),
            )
            .with_param(
                "strategy",
                param(String)
                    .one_of(strategies)
                    .with_default(json!("BALANCED")),
            )
            .with_param(
                "memory_pressure_threshold",
                param(Number)
                    .min(json!(0))
                    .max(json!(1))
                    .with_default(json!(0.8)),
            )
            .with_param(
                "worker_threads",
                param(Integer)
                    .min(json!(1))
                    .max(json!(64))
                    .with_default(json!(4)),
            )
            .with_param("db_password", param(String).sensitive())
            .with_value("check_interval", json!(30))
            .with_value("strategy", json!("AGGRESSIVE"))
            .with_secret("db_password", "shop-db", "password")
            .with_flag(
                "new_ui",
                FeatureFlag {
                    rollout_percentage: Some(25),
                    allow: vec!["user-1".into()],
                    ..flag()
                },
            )
    }

    /// One parameter `key` of the type and the value under test.
    fn one(key: &str, param: Parameter, value: Value) -> Vec<FieldError> {
        check(&rtc().with_param(key, param).with_value(key, value))
    }

    fn check(spec: &RuntimeConfigSpec) -> Vec<FieldError> {
        validate_runtime_config(spec, None)
    }

    fn resolved(entries: &[(&str, Result<&str, &str>)]) -> SecretValues {
        entries
            .iter()
            .map(|(key, value)| {
                let value = value.map(str::to_owned).map_err(str::to_owned);
                ((*key).to_owned(), value)
            })
            .collect()
    }

    fn pb() -> PoolBudgetSpec {
        PoolBudgetSpec::default()
    }

    trait PbExt: Sized {
        fn with(self, change: impl FnOnce(&mut Self)) -> Self;
        fn metrics_mut(&mut self) -> &mut Metrics;
        fn backpressure_mut(&mut self) -> &mut Backpressure;
        fn pools_mut(&mut self) -> &mut Pools;
        fn database_mut(&mut self) -> &mut DatabasePool;
        fn redis_mut(&mut self) -> &mut RedisPool;
        fn http_mut(&mut self) -> &mut HttpPool;
        fn cache_mut(&mut self) -> &mut CachePool;
    }

    impl PbExt for PoolBudgetSpec {
        fn with(mut self, change: impl FnOnce(&mut Self)) -> Self {
            change(&mut self);
            self
        }
        fn metrics_mut(&mut self) -> &mut Metrics {
            self.metrics.get_or_insert_with(Default::default)
        }
        fn backpressure_mut(&mut self) -> &mut Backpressure {
            self.metrics_mut()
                .backpressure
                .get_or_insert_with(Default::default)
        }
        fn pools_mut(&mut self) -> &mut Pools {
            self.pools.get_or_insert_with(Default::default)
        }
        fn database_mut(&mut self) -> &mut DatabasePool {
            self.pools_mut()
                .database
                .get_or_insert_with(Default::default)
        }
        fn redis_mut(&mut self) -> &mut RedisPool {
            self.pools_mut().redis.get_or_insert_with(Default::default)
        }
        fn http_mut(&mut self) -> &mut HttpPool {
            self.pools_mut().http.get_or_insert_with(Default::default)
        }
        fn cache_mut(&mut self) -> &mut CachePool {
            self.pools_mut().cache.get_or_insert_with(Default::default)
        }
    }

    type SetInt = fn(&mut PoolBudgetSpec, i64);

    /// Every integer field of a PoolBudget with its range from SPEC.md §4.
    const INT_FIELDS: [(&str, i64, i64, SetInt); 15] = [
        ("spec.metrics.maxConcurrentOperations", 1, 500, |s, v| {
            s.metrics_mut().max_concurrent_operations = Some(v)
        }),
        ("spec.metrics.maxMemoryMB", 64, 2048, |s, v| {
            s.metrics_mut().max_memory_mb = Some(v)
        }),
        ("spec.metrics.maxCpuPercent", 1, 100, |s, v| {
            s.metrics_mut().max_cpu_percent = Some(v)
        }),
        (
            "spec.metrics.maxRequestRatePerMinute",
            1,
            1_000_000,
            |s, v| s.metrics_mut().max_request_rate_per_minute = Some(v),
        ),
        ("spec.metrics.maxProcessingTimeMs", 1, 600_000, |s, v| {
            s.metrics_mut().max_processing_time_ms = Some(v)
        }),
        ("spec.pools.database.minConnections", 0, 100, |s, v| {
            s.database_mut().min_connections = Some(v)
        }),
        ("spec.pools.database.maxConnections", 5, 100, |s, v| {
            s.database_mut().max_connections = Some(v)
        }),
        ("spec.pools.database.retryAttempts", 0, 10, |s, v| {
            s.database_mut().retry_attempts = Some(v)
        }),
        ("spec.pools.redis.minConnections", 0, 200, |s, v| {
            s.redis_mut().min_connections = Some(v)
        }),
        ("spec.pools.redis.maxConnections", 5, 200, |s, v| {
            s.redis_mut().max_connections = Some(v)
        }),
        ("spec.pools.redis.retryAttempts", 0, 10, |s, v| {
            s.redis_mut().retry_attempts = Some(v)
        }),
        ("spec.pools.http.maxConnections", 10, 1000, |s, v| {
            s.http_mut().max_connections = Some(v)
        }),
        (
            "spec.pools.http.maxKeepaliveConnections",
            0,
            1000,
            |s, v| s.http_mut().max_keepalive_connections = Some(v),
        ),
        ("spec.pools.cache.maxEntries", 1, 10_000_000, |s, v| {
            s.cache_mut().max_entries = Some(v)
        }),
        ("spec.pools.cache.maxSizeMB", 1, 65_536, |s, v| {
            s.cache_mut().max_size_mb = Some(v)
        }),
    ];

    type SetText = fn(&mut PoolBudgetSpec, &str);

    /// Every duration field of a PoolBudget.
    const DURATION_FIELDS: [(&str, SetText); 9] = [
        ("spec.pools.database.connectionTimeout", |s, v| {
            s.database_mut().connection_timeout = Some(v.into())
        }),
        ("spec.pools.database.idleTimeout", |s, v| {
            s.database_mut().idle_timeout = Some(v.into())
        }),
        ("spec.pools.database.maxLifetime", |s, v| {
            s.database_mut().max_lifetime = Some(v.into())
        }),
        ("spec.pools.redis.connectionTimeout", |s, v| {
            s.redis_mut().connection_timeout = Some(v.into())
        }),
        ("spec.pools.redis.socketTimeout", |s, v| {
            s.redis_mut().socket_timeout = Some(v.into())
        }),
        ("spec.pools.redis.retryDelay", |s, v| {
            s.redis_mut().retry_delay = Some(v.into())
        }),
        ("spec.pools.http.keepaliveExpiry", |s, v| {
            s.http_mut().keepalive_expiry = Some(v.into())
        }),
        ("spec.pools.http.timeout", |s, v| {
            s.http_mut().timeout = Some(v.into())
        }),
        ("spec.pools.cache.ttl", |s, v| {
            s.cache_mut().ttl = Some(v.into())
        }),
    ];

    #[track_caller]
    fn assert_valid(errors: Vec<FieldError>) {
        assert!(errors.is_empty(), "expected no errors, got {errors:#?}");
    }

    /// The one error there is: at `path`, with a rule that says `words`.
    #[track_caller]
    fn assert_only(errors: Vec<FieldError>, path: &str, words: &str) -> FieldError {
        assert_eq!(
            errors.len(),
            1,
            "expected exactly one error, got {errors:#?}"
        );
        let error = errors.into_iter().next().expect("one error");
        assert_eq!(error.path, path, "{error}");
        assert!(
            error.rule.contains(words),
            "rule {:?} should say {words:?}",
            error.rule
        );
        error
    }

    // -----------------------------------------------------------------------------------------
    // Durations, credentials, display
    // -----------------------------------------------------------------------------------------

    #[test]
    fn parse_duration_accepts_go_forms() {
        let cases = [
            ("30s", Duration::from_secs(30)),
            ("5m", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("100ms", Duration::from_millis(100)),
            ("1.5h", Duration::from_secs(5400)),
            ("10ns", Duration::from_nanos(10)),
            ("7us", Duration::from_micros(7)),
            ("7µs", Duration::from_micros(7)),
            ("1m0.25s", Duration::from_millis(60_250)),
            ("0s", Duration::ZERO),
            ("1.00000000000000000000000001s", Duration::from_secs(1)),
            ("2562047h", Duration::from_secs(2_562_047 * 3600)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn parse_duration_rejects_malformed_text() {
        let cases = [
            ("", "empty"),
            ("-5s", "sign"),
            ("+5s", "sign"),
            ("5", "missing unit"),
            ("s", "expected a number"),
            ("5x", "unknown unit \"x\""),
            ("1h 30m", "unknown unit \"h \""),
            ("5μs", "unknown unit"), // U+03BC GREEK SMALL LETTER MU: not in the CRD's pattern
            ("1.s", "digits after the decimal point"),
            (".5s", "expected a number"),
            ("1e3s", "unknown unit \"e\""),
            ("2562048h", "too large"),
            ("99999999999999999999999999999999999999999h", "too large"),
        ];
        for (text, reason) in cases {
            let error = parse_duration(text).expect_err(text);
            assert!(
                error.contains(reason),
                "{text:?}: {error:?} should say {reason:?}"
            );
        }
    }

    #[test]
    fn credential_keys_are_recognized_in_any_spelling() {
        let keys = [
            "password",
            "DB_PASSWORD",
            "db-passwd",
            "client.secret",
            "api_token",
            "apiKey",
            "API_KEY",
            "x-api-key",
            "apikey",
            "private_key",
            "tlsPrivateKey",
            "aws_credentials",
            "myPassword",
        ];
        for key in keys {
            assert!(is_credential_key(key), "{key}");
        }
        for key in [
            "check_interval",
            "strategy",
            "username",
            "api",
            "private",
            "key",
            "pass",
        ] {
            assert!(!is_credential_key(key), "{key}");
        }
    }

    #[test]
    fn credential_values_are_recognized() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----";
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.abc_DEF-123";
        let cases = [
            (pem, "a PEM private key"),
            ("-----BEGIN PRIVATE KEY-----", "a PEM private key"),
            ("-----BEGIN OPENSSH PRIVATE KEY-----", "a PEM private key"),
            ("AKIAIOSFODNN7EXAMPLE", "an AWS access key id"),
            ("id=ASIAIOSFODNN7EXAMPLE;", "an AWS access key id"),
            (jwt, "a JSON Web Token"),
            (&format!("Bearer {jwt}"), "a JSON Web Token"),
        ];
        for (text, kind) in cases {
            assert_eq!(credential_kind(text), Some(kind), "{text}");
        }
    }

    #[test]
    fn ordinary_values_are_not_credentials() {
        let texts = [
            "hello",
            "-----BEGIN CERTIFICATE-----",
            "AKIA1234",
            "XAKIAIOSFODNN7EXAMPLE",
            "AKIAIOSFODNN7EXAMPLEX",
            "eyJ.only",
            "example.com.au",
            "1.2.3",
            "not.a.jwt",
        ];
        for text in texts {
            assert_eq!(credential_kind(text), None, "{text}");
        }
    }

    #[test]
    fn field_error_display_shows_the_value_only_when_there_is_one() {
        let mut error = FieldError::new("spec.values.x", "must be at most 30").with_value(31);
        assert_eq!(
            error.to_string(),
            "spec.values.x: must be at most 30 (got 31)"
        );
        error.value = None;
        assert_eq!(error.to_string(), "spec.values.x: must be at most 30");
    }

    #[test]
    fn long_values_are_cut_in_errors() {
        let long = "x".repeat(1000);
        let error = assert_only(
            one("k", param(ParamType::Integer), json!(long)),
            "spec.values.k",
            "integer",
        );
        let shown = error.value.expect("a plain string is shown");
        assert_eq!(shown.chars().count(), MAX_SHOWN_CHARS + 1);
        assert!(shown.ends_with('…'));
    }

    // -----------------------------------------------------------------------------------------
    // Rule 1: the schema is self-consistent
    // -----------------------------------------------------------------------------------------

    #[test]
    fn the_spec_example_is_valid() {
        assert_valid(check(&example()));
        let secrets = resolved(&[("db_password", Ok("s3cret"))]);
        assert_valid(validate_runtime_config(&example(), Some(&secrets)));
    }

    #[test]
    fn range_applies_to_numeric_types_only() {
        use ParamType::*;
        for type_ in [Integer, Number] {
            assert_valid(check(
                &rtc().with_param("k", param(type_).min(json!(1)).max(json!(9))),
            ));
        }
        assert_valid(check(
            &rtc().with_param("k", param(Duration).min(json!("1s")).max(json!(60))),
        ));

        let spec = rtc().with_param("name", param(String).min(json!(1)));
        let error = assert_only(
            check(&spec),
            "spec.schema.name.minimum",
            "integer, number and duration",
        );
        assert!(error.rule.contains("not string"), "{error}");
        let spec = rtc().with_param("on", param(Boolean).max(json!(1)));
        assert_only(check(&spec), "spec.schema.on.maximum", "only applies to");
    }

    #[test]
    fn bounds_have_the_parameter_type() {
        use ParamType::*;
        let spec = rtc().with_param("n", param(Number).min(json!("ten")));
        assert_only(check(&spec), "spec.schema.n.minimum", "must be a number");
        let spec = rtc().with_param("d", param(Duration).max(json!("soon")));
        assert_only(check(&spec), "spec.schema.d.maximum", "must be a duration");
        let spec = rtc().with_param("d", param(Duration).min(json!(-1)));
        assert_only(
            check(&spec),
            "spec.schema.d.minimum",
            "non-negative number of seconds",
        );
    }

    #[test]
    fn minimum_must_not_exceed_maximum() {
        use ParamType::*;
        assert_valid(check(
            &rtc().with_param("k", param(Integer).min(json!(5)).max(json!(5.0))),
        ));

        let spec = rtc().with_param("k", param(Integer).min(json!(10)).max(json!(5)));
        let error = assert_only(
            check(&spec),
            "spec.schema.k.minimum",
            "must not exceed maximum (10 > 5)",
        );
        assert_eq!(error.value.as_deref(), Some("10"));
        let spec = rtc().with_param("d", param(Duration).min(json!("2m")).max(json!(60)));
        assert_only(check(&spec), "spec.schema.d.minimum", "(2m > 60s)");
    }

    #[test]
    fn lengths_apply_to_strings_only() {
        use ParamType::*;
        assert_valid(check(
            &rtc().with_param("s", param(String).min_len(1).max_len(8)),
        ));

        let spec = rtc().with_param("i", param(Integer).max_len(3));
        assert_only(
            check(&spec),
            "spec.schema.i.maxLength",
            "only applies to string parameters",
        );
        let spec = rtc().with_param("s", param(String).min_len(-1));
        assert_only(check(&spec), "spec.schema.s.minLength", "at least 0");
    }

    #[test]
    fn min_length_must_not_exceed_max_length() {
        let spec = rtc().with_param("s", param(ParamType::String).min_len(3).max_len(3));
        assert_valid(check(&spec));
        let spec = rtc().with_param("s", param(ParamType::String).min_len(5).max_len(3));
        assert_only(
            check(&spec),
            "spec.schema.s.minLength",
            "must not exceed maxLength (5 > 3)",
        );
    }

    #[test]
    fn pattern_applies_to_strings_and_must_compile() {
        use ParamType::*;
        assert_valid(check(
            &rtc().with_param("s", param(String).pattern("^[a-z]+$")),
        ));

        let spec = rtc().with_param("n", param(Number).pattern("^[0-9]+$"));
        assert_only(
            check(&spec),
            "spec.schema.n.pattern",
            "only applies to string parameters",
        );
        let spec = rtc().with_param("s", param(String).pattern("(unclosed"));
        let error = assert_only(
            check(&spec),
            "spec.schema.s.pattern",
            "valid regular expression",
        );
        assert!(error.rule.contains("unclosed group"), "{error}");
        assert!(!error.rule.contains('\n'), "{error}");
    }

    #[test]
    fn patterns_are_compiled_once_and_errors_are_unchanged() {
        let first = compile_pattern("^cache-[a-z]+$").expect("the pattern compiles");
        let second = compile_pattern("^cache-[a-z]+$").expect("the pattern compiles");
        assert!(Arc::ptr_eq(&first, &second));
        assert!(first.is_match("cache-hit") && !first.is_match("cache-42"));

        // The cached reason is what an uncached compile reports, every time.
        #[allow(clippy::invalid_regex)] // deliberately invalid
        let direct = Regex::new("(unclosed").expect_err("the pattern does not compile");
        for _ in 0..2 {
            let reason = compile_pattern("(unclosed").expect_err("the pattern does not compile");
            assert_eq!(reason, regex_reason(&direct));
            assert_eq!(reason, "unclosed group");
        }
        let spec = rtc().with_param("s", param(ParamType::String).pattern("(unclosed"));
        for _ in 0..2 {
            assert_eq!(
                check(&spec),
                vec![FieldError {
                    path: "spec.schema.s.pattern".into(),
                    value: Some("\"(unclosed\"".into()),
                    rule: "must be a valid regular expression: unclosed group".into(),
                }]
            );
        }
    }

    #[test]
    fn the_pattern_cache_is_bounded() {
        let cache = PatternCache::new(3);
        let kept = cache.get("^a$").expect("the pattern compiles");
        assert!(Arc::ptr_eq(&kept, &cache.get("^a$").expect("cached")));
        for i in 0..100 {
            let pattern = format!("^x{i}$");
            let re = cache.get(&pattern).expect("the pattern compiles");
            assert!(re.is_match(&format!("x{i}")));
            assert!(cache.len() <= 3);
        }
        // `^a$` was dropped when the cache filled up: it compiles afresh, with the same meaning.
        let again = cache.get("^a$").expect("the pattern compiles");
        assert!(!Arc::ptr_eq(&kept, &again));
        assert!(again.is_match("a"));
        assert!(cache.get("[z-a]").is_err() && cache.len() <= 3);
    }

    #[test]
    fn enum_entries_have_the_parameter_type() {
        use ParamType::*;
        assert_valid(check(
            &rtc().with_param("i", param(Integer).one_of(json!([1, 2.0]))),
        ));
        assert_valid(check(
            &rtc().with_param("d", param(Duration).one_of(json!(["1m", "1h"]))),
        ));

        let spec = rtc().with_param("i", param(Integer).one_of(json!([1, "two"])));
        let error = assert_only(check(&spec), "spec.schema.i.enum[1]", "must be an integer");
        assert_eq!(error.value.as_deref(), Some("\"two\""));
        let spec = rtc().with_param("i", param(Integer).one_of(json!([])));
        assert_only(check(&spec), "spec.schema.i.enum", "at least one value");
    }

    #[test]
    fn default_obeys_its_parameter() {
        use ParamType::*;
        let range = || param(Number).min(json!(1)).max(json!(3600));
        assert_valid(check(
            &rtc().with_param("k", range().with_default(json!(60))),
        ));

        let spec = rtc().with_param("k", range().with_default(json!(0)));
        let error = assert_only(check(&spec), "spec.schema.k.default", "must be at least 1");
        assert_eq!(error.value.as_deref(), Some("0"));
        let spec = rtc().with_param("k", range().with_default(json!("60")));
        assert_only(check(&spec), "spec.schema.k.default", "must be a number");
        let spec = rtc().with_param(
            "k",
            param(String)
                .one_of(json!(["A", "B"]))
                .with_default(json!("C")),
        );
        assert_only(
            check(&spec),
            "spec.schema.k.default",
            "must be one of [A, B]",
        );
        let spec = rtc().with_param(
            "k",
            param(String).pattern("^v[0-9]+$").with_default(json!("x")),
        );
        assert_only(
            check(&spec),
            "spec.schema.k.default",
            "must match the pattern ^v[0-9]+$",
        );
    }

    #[test]
    fn sensitive_parameter_has_no_default() {
        assert_valid(check(
            &rtc().with_param("db_password", param(ParamType::String).sensitive()),
        ));

        let spec = rtc().with_param(
            "pin",
            param(ParamType::String)
                .sensitive()
                .with_default(json!("0000")),
        );
        let error = assert_only(check(&spec), "spec.schema.pin.default", "sensitive");
        assert!(error.rule.contains("ConfigMap"), "{error}");
        assert_eq!(error.value, None);
    }

    #[test]
    fn default_that_looks_like_a_credential_is_rejected() {
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----";
        let spec = rtc().with_param("tls", param(ParamType::String).with_default(json!(pem)));
        let error = assert_only(check(&spec), "spec.schema.tls.default", "a PEM private key");
        assert!(error.rule.contains("valuesFrom.secretKeyRef"), "{error}");
        assert_eq!(error.value, None);
    }

    // -----------------------------------------------------------------------------------------
    // Rule 2: only declared keys
    // -----------------------------------------------------------------------------------------

    #[test]
    fn undeclared_keys_are_rejected_when_there_is_a_schema() {
        let spec = example().with_value("unknown", json!(1));
        let error = assert_only(
            check(&spec),
            "spec.values.unknown",
            "is not declared in spec.schema",
        );
        assert_eq!(error.value.as_deref(), Some("1"));

        let spec = example().with_secret("dsn", "shop-db", "dsn");
        assert_only(
            check(&spec),
            "spec.valuesFrom[1].key",
            "is not declared in spec.schema",
        );
    }

    #[test]
    fn without_a_schema_any_key_is_accepted() {
        let spec = rtc()
            .with_value("anything", json!({"nested": [1, 2]}))
            .with_secret("dsn", "shop-db", "dsn");
        assert_valid(check(&spec));
    }

    // -----------------------------------------------------------------------------------------
    // Rule 3: types, ranges, enums, lengths, patterns
    // -----------------------------------------------------------------------------------------

    #[test]
    fn string_values_are_strings() {
        assert_valid(one("s", param(ParamType::String), json!("x")));
        let error = assert_only(
            one("s", param(ParamType::String), json!(5)),
            "spec.values.s",
            "must be a string",
        );
        assert_eq!(error.value.as_deref(), Some("5"));
    }

    #[test]
    fn integer_values_are_whole_numbers() {
        for value in [json!(30), json!(30.0), json!(-2), json!(u64::MAX)] {
            assert_valid(one("i", param(ParamType::Integer), value));
        }
        for value in [json!(30.5), json!("30"), json!(true)] {
            assert_only(
                one("i", param(ParamType::Integer), value),
                "spec.values.i",
                "must be an integer",
            );
        }
    }

    #[test]
    fn number_values_are_numbers() {
        for value in [json!(0.8), json!(-3), json!(1e300)] {
            assert_valid(one("n", param(ParamType::Number), value));
        }
        assert_only(
            one("n", param(ParamType::Number), json!("0.8")),
            "spec.values.n",
            "must be a number",
        );
    }

    #[test]
    fn boolean_values_are_booleans() {
        assert_valid(one("b", param(ParamType::Boolean), json!(false)));
        assert_only(
            one("b", param(ParamType::Boolean), json!("true")),
            "spec.values.b",
            "must be a boolean",
        );
    }

    #[test]
    fn duration_values_are_duration_strings() {
        assert_valid(one("d", param(ParamType::Duration), json!("1h30m")));
        let error = assert_only(
            one("d", param(ParamType::Duration), json!("90")),
            "spec.values.d",
            "must be a duration",
        );
        assert!(error.rule.contains("missing unit"), "{error}");
        assert_only(
            one("d", param(ParamType::Duration), json!(90)),
            "spec.values.d",
            "must be a duration",
        );
    }

    #[test]
    fn json_values_are_anything() {
        for value in [
            json!({"a": [1, {"b": null}]}),
            json!([1, "x"]),
            json!(null),
            json!("x"),
        ] {
            assert_valid(one("j", param(ParamType::Json), value));
        }
        let only_objects = param(ParamType::Json).one_of(json!([{"a": 1}]));
        assert_valid(one("j", only_objects.clone(), json!({"a": 1.0})));
        assert_only(
            one("j", only_objects, json!({"a": 2})),
            "spec.values.j",
            "must be one of",
        );
    }

    #[test]
    fn ranges_are_inclusive() {
        let range = || param(ParamType::Number).min(json!(1)).max(json!(3600));
        assert_valid(one("k", range(), json!(1)));
        assert_valid(one("k", range(), json!(3600.0)));

        let error = assert_only(
            one("k", range(), json!(0)),
            "spec.values.k",
            "must be at least 1",
        );
        assert_eq!(error.value.as_deref(), Some("0"));
        assert_only(
            one("k", range(), json!(3600.5)),
            "spec.values.k",
            "must be at most 3600",
        );
    }

    #[test]
    fn duration_ranges_compare_durations() {
        let range = || param(ParamType::Duration).min(json!("1s")).max(json!("1h"));
        assert_valid(one("d", range(), json!("60m")));
        assert_valid(one("d", range(), json!("1000ms")));

        assert_only(
            one("d", range(), json!("3601s")),
            "spec.values.d",
            "must be at most 1h",
        );
        assert_only(
            one("d", range(), json!("500ms")),
            "spec.values.d",
            "must be at least 1s",
        );
        let seconds = param(ParamType::Duration).max(json!(90));
        assert_only(
            one("d", seconds, json!("2m")),
            "spec.values.d",
            "must be at most 90s",
        );
    }

    #[test]
    fn enum_membership_compares_numbers_by_value() {
        use ParamType::*;
        assert_valid(one("i", param(Integer).one_of(json!([1, 2])), json!(1.0)));
        assert_valid(one(
            "d",
            param(Duration).one_of(json!(["1m"])),
            json!("60s"),
        ));

        assert_only(
            one("i", param(Integer).one_of(json!([1, 2])), json!(3)),
            "spec.values.i",
            "must be one of [1, 2]",
        );
        let strategies = param(String).one_of(json!(["AGGRESSIVE", "BALANCED", "CONSERVATIVE"]));
        let error = assert_only(
            one("strategy", strategies, json!("FAST")),
            "spec.values.strategy",
            "must be one of [AGGRESSIVE, BALANCED, CONSERVATIVE]",
        );
        assert_eq!(error.value.as_deref(), Some("\"FAST\""));
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        let short = || param(ParamType::String).min_len(2).max_len(3);
        assert_valid(one("s", short(), json!("été")));

        assert_only(
            one("s", short(), json!("étés")),
            "spec.values.s",
            "must be at most 3 characters long",
        );
        assert_only(
            one("s", short(), json!("é")),
            "spec.values.s",
            "must be at least 2 characters long",
        );
    }

    #[test]
    fn pattern_is_an_unanchored_search() {
        let digits = || param(ParamType::String).pattern("[0-9]+");
        assert_valid(one("s", digits(), json!("abc123")));

        assert_only(
            one("s", digits(), json!("abc")),
            "spec.values.s",
            "must match the pattern [0-9]+",
        );
        let anchored = param(ParamType::String).pattern("^[a-z]+$");
        assert_only(
            one("s", anchored, json!("abc1")),
            "spec.values.s",
            "must match the pattern ^[a-z]+$",
        );
    }

    // -----------------------------------------------------------------------------------------
    // Rules 4 and 5: sensitive keys and credentials
    // -----------------------------------------------------------------------------------------

    #[test]
    fn sensitive_key_is_only_set_from_a_secret() {
        assert_valid(check(&example()));

        let mut spec = example().with_value("db_password", json!("hunter2"));
        spec.values_from.clear();
        let error = assert_only(
            check(&spec),
            "spec.values.db_password",
            "valuesFrom[].secretKeyRef",
        );
        assert_eq!(error.value, None);
    }

    #[test]
    fn credential_key_with_a_string_literal_is_rejected() {
        assert_valid(check(
            &rtc().with_value("api_host", json!("api.example.com")),
        ));

        let spec = rtc().with_value("api_token", json!("abc123"));
        let error = assert_only(
            check(&spec),
            "spec.values.api_token",
            "valuesFrom.secretKeyRef",
        );
        assert!(error.rule.contains("credential"), "{error}");
        assert_eq!(error.value, None);
    }

    #[test]
    fn credential_key_rule_ignores_numbers_booleans_and_empty_strings() {
        let spec = rtc()
            .with_value("token_ttl", json!(30))
            .with_value("secret_rotation", json!(true))
            .with_value("password", json!(""));
        assert_valid(check(&spec));
    }

    #[test]
    fn credential_key_rule_ignores_keys_declared_with_a_non_string_type() {
        let spec = rtc()
            .with_param("token_ttl", param(ParamType::Duration))
            .with_value("token_ttl", json!("5m"));
        assert_valid(check(&spec));

        let spec = rtc()
            .with_param("session_token", param(ParamType::String))
            .with_value("session_token", json!("abc"));
        assert_only(
            check(&spec),
            "spec.values.session_token",
            "valuesFrom.secretKeyRef",
        );
    }

    #[test]
    fn credential_looking_value_is_rejected_wherever_it_is() {
        let spec = rtc().with_value("aws", json!("AKIAIOSFODNN7EXAMPLE"));
        let error = assert_only(
            check(&spec),
            "spec.values.aws",
            "looks like an AWS access key id",
        );
        assert!(error.rule.contains("valuesFrom.secretKeyRef"), "{error}");
        assert_eq!(error.value, None);

        let pem = "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----";
        let spec = rtc().with_value("tls", json!({"cert": "public", "chain": [pem]}));
        let error = assert_only(check(&spec), "spec.values.tls", "a PEM private key");
        assert!(error.rule.contains("tls.chain[0]"), "{error}");
        assert_eq!(error.value, None);
    }

    #[test]
    fn credential_key_nested_in_a_json_value_is_rejected() {
        assert_valid(check(
            &rtc().with_value("db", json!({"host": "db", "port": 5432})),
        ));

        let spec = rtc().with_value("db", json!({"host": "db", "password": "hunter2"}));
        let error = assert_only(check(&spec), "spec.values.db", "db.password");
        assert!(error.rule.contains("valuesFrom.secretKeyRef"), "{error}");
        assert_eq!(error.value, None);
    }

    // -----------------------------------------------------------------------------------------
    // Rule 6: valuesFrom
    // -----------------------------------------------------------------------------------------

    #[test]
    fn key_set_in_values_and_values_from_is_rejected() {
        assert_valid(check(&rtc().with_secret("dsn", "shop-db", "dsn")));

        let spec = rtc()
            .with_value("dsn", json!("x"))
            .with_secret("dsn", "shop-db", "dsn");
        let error = assert_only(check(&spec), "spec.valuesFrom[0].key", "not both");
        assert_eq!(error.value.as_deref(), Some("\"dsn\""));
    }

    #[test]
    fn duplicate_values_from_keys_are_rejected() {
        let spec = rtc()
            .with_secret("dsn", "shop-db", "dsn")
            .with_secret("dsn", "other", "dsn");
        assert_only(
            check(&spec),
            "spec.valuesFrom[1].key",
            "duplicates spec.valuesFrom[0].key",
        );
    }

    #[test]
    fn values_from_references_are_complete_and_well_formed() {
        let spec = rtc()
            .with_secret("", "shop-db", "a")
            .with_secret("b", "", "b")
            .with_secret("c", "shop-db", "");
        let errors = check(&spec);
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.valuesFrom[0].key",
                "spec.valuesFrom[1].secretKeyRef.name",
                "spec.valuesFrom[2].secretKeyRef.key"
            ]
        );
        assert!(
            errors.iter().all(|e| e.rule == "must not be empty"),
            "{errors:#?}"
        );

        let spec = rtc().with_secret("a", "Shop_DB", "a/b");
        let errors = check(&spec);
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(errors[0].path, "spec.valuesFrom[0].secretKeyRef.name");
        assert!(
            errors[0].rule.contains("DNS-1123 subdomain"),
            "{}",
            errors[0]
        );
        assert_eq!(errors[1].path, "spec.valuesFrom[0].secretKeyRef.key");
        assert!(errors[1].rule.contains("alphanumerics"), "{}", errors[1]);
    }

    #[test]
    fn offline_references_are_not_resolved() {
        let spec = rtc().with_secret("dsn", "missing", "dsn");
        assert_valid(validate_runtime_config(&spec, None));
        let error = assert_only(
            validate_runtime_config(&spec, Some(&SecretValues::new())),
            "spec.valuesFrom[0].secretKeyRef",
            "Secret \"missing\"",
        );
        assert!(error.rule.contains("key \"dsn\""), "{error}");
        assert_eq!(error.value, None);
    }

    #[test]
    fn unreadable_secret_is_reported_with_the_reason() {
        let secrets = resolved(&[("db_password", Err("Secret \"shop-db\" not found"))]);
        let error = assert_only(
            validate_runtime_config(&example(), Some(&secrets)),
            "spec.valuesFrom[0].secretKeyRef",
            "Secret \"shop-db\" not found",
        );
        assert!(error.rule.contains("key \"password\""), "{error}");
        assert_eq!(error.value, None);
    }

    #[test]
    fn secret_values_are_checked_against_the_schema() {
        use ParamType::*;
        let spec = |p: Parameter| rtc().with_param("k", p).with_secret("k", "app", "k");
        let validate = |p: Parameter, text: &str| {
            validate_runtime_config(&spec(p), Some(&resolved(&[("k", Ok(text))])))
        };
        assert_valid(validate(param(Integer).max(json!(65535)), " 5432\n"));
        assert_valid(validate(param(Number), "0.5"));
        assert_valid(validate(param(Boolean), "true"));
        assert_valid(validate(param(Duration), "5m"));
        assert_valid(validate(param(Json), "{not json"));
        assert_valid(validate(param(String).min_len(12), "long enough pass"));

        let path = "spec.valuesFrom[0].secretKeyRef";
        let error = assert_only(validate(param(Integer), "54x2"), path, "must be an integer");
        assert!(error.rule.contains("Secret \"app\""), "{error}");
        assert!(!error.rule.contains("54x2"), "{error}");
        assert_eq!(error.value, None);
        assert_only(
            validate(param(Integer).max(json!(10)), "11"),
            path,
            "must be at most 10",
        );
        assert_only(validate(param(Boolean), "yes"), path, "must be a boolean");
        assert_only(
            validate(param(String).min_len(12), "short"),
            path,
            "at least 12 characters",
        );
    }

    // -----------------------------------------------------------------------------------------
    // Rules 7 and 8: feature flags and maintenance
    // -----------------------------------------------------------------------------------------

    #[test]
    fn flag_names_are_alphanumeric_with_inner_separators() {
        for name in ["new_ui", "beta.v2", "a", "A-1"] {
            assert_valid(check(&rtc().with_flag(name, flag())));
        }
        for name in ["-bad", "bad_", "has space", "ünicode", ""] {
            let error = assert_only(
                check(&rtc().with_flag(name, flag())),
                &format!("spec.featureFlags.{name}"),
                "start and end with an alphanumeric",
            );
            assert_eq!(error.value, Some(json!(name).to_string()));
        }
    }

    #[test]
    fn rollout_percentage_is_between_0_and_100() {
        let with = |pct| {
            rtc().with_flag(
                "new_ui",
                FeatureFlag {
                    rollout_percentage: Some(pct),
                    ..flag()
                },
            )
        };
        assert_valid(check(&with(0)));
        assert_valid(check(&with(100)));
        for pct in [-1, 101] {
            let error = assert_only(
                check(&with(pct)),
                "spec.featureFlags.new_ui.rolloutPercentage",
                "must be between 0 and 100",
            );
            assert_eq!(error.value, Some(pct.to_string()));
        }
    }

    #[test]
    fn subject_is_either_allowed_or_denied() {
        let lists = |allow: &[&str], deny: &[&str]| FeatureFlag {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
            ..flag()
        };
        assert_valid(check(&rtc().with_flag("f", lists(&["a"], &["b"]))));

        let spec = rtc().with_flag("f", lists(&["a", "b"], &["c", "b"]));
        let error = assert_only(
            check(&spec),
            "spec.featureFlags.f.deny[1]",
            "is also in allow",
        );
        assert_eq!(error.value.as_deref(), Some("\"b\""));
    }

    #[test]
    fn maintenance_until_is_rfc3339() {
        for until in ["2025-06-01T18:00:00Z", "2025-06-01T18:00:00.5+02:00"] {
            assert_valid(check(&rtc().with_until(until)));
        }
        for until in ["tomorrow", "2025-06-01", "2025-06-01 18:00"] {
            assert_only(
                check(&rtc().with_until(until)),
                "spec.maintenance.until",
                "RFC 3339",
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // Common rules
    // -----------------------------------------------------------------------------------------

    fn target_named(config_map: &str) -> Target {
        Target {
            config_map_name: Some(config_map.to_owned()),
            ..Target::default()
        }
    }

    fn target_file(file: &str) -> Target {
        Target {
            file_name: Some(file.to_owned()),
            ..Target::default()
        }
    }

    #[test]
    fn revision_history_limit_is_between_1_and_100() {
        for limit in [1, 10, 100] {
            assert_valid(validate_common(None, Some(limit)));
        }
        for limit in [0, -1, 101] {
            let error = assert_only(
                validate_common(None, Some(limit)),
                "spec.revisionHistoryLimit",
                "must be between 1 and 100",
            );
            assert_eq!(error.value, Some(limit.to_string()));
        }
    }

    #[test]
    fn config_map_name_is_a_dns_subdomain() {
        for name in ["lazy-loading-config", "a.b-c", "0", &"a".repeat(253)] {
            assert_valid(validate_common(Some(&target_named(name)), None));
        }
        for name in [
            "Upper",
            "-x",
            "x-",
            "a..b",
            "a.-b",
            "a_b",
            "",
            &"a".repeat(254),
        ] {
            assert_only(
                validate_common(Some(&target_named(name)), None),
                "spec.target.configMapName",
                "DNS-1123 subdomain",
            );
        }
    }

    #[test]
    fn file_name_is_a_data_key() {
        for name in ["config.yaml", ".env", "a-b_C.d", &"a".repeat(253)] {
            assert_valid(validate_common(Some(&target_file(name)), None));
        }
        for name in [".", "..", "a/b", "", "ä", &"a".repeat(254)] {
            assert_only(
                validate_common(Some(&target_file(name)), None),
                "spec.target.fileName",
                "alphanumerics, '-', '_' or '.'",
            );
        }
    }

    #[test]
    fn common_rules_apply_to_both_kinds() {
        let spec = rtc().with_history_limit(0).with_target(target_file(".."));
        let paths: Vec<String> = check(&spec).into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["spec.revisionHistoryLimit", "spec.target.fileName"]);

        let mut spec = pb();
        spec.revision_history_limit = Some(101);
        spec.target = Some(target_named("Bad"));
        let paths: Vec<String> = validate_pool_budget(&spec)
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            ["spec.revisionHistoryLimit", "spec.target.configMapName"]
        );
    }

    // -----------------------------------------------------------------------------------------
    // All at once, and nothing secret in any error
    // -----------------------------------------------------------------------------------------

    #[test]
    fn every_error_is_reported_at_once() {
        let spec = example()
            .with_value("check_interval", json!(0))
            .with_value("strategy", json!("FAST"))
            .with_flag(
                "new_ui",
                FeatureFlag {
                    rollout_percentage: Some(150),
                    ..flag()
                },
            )
            .with_until("soon");
        let paths: Vec<String> = check(&spec).into_iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            [
                "spec.values.check_interval",
                "spec.values.strategy",
                "spec.featureFlags.new_ui.rolloutPercentage",
                "spec.maintenance.until",
            ]
        );
    }

    #[test]
    fn no_error_reveals_a_sensitive_or_secret_value() {
        use ParamType::*;
        const PLANTED: &str = "PLANTED";
        let spec = rtc()
            .with_param("db_password", param(String).sensitive())
            .with_param(
                "pin",
                param(String).sensitive().with_default(json!("PLANTED-pin")),
            )
            .with_param("port", param(Integer))
            .with_param("timeout", param(Duration))
            .with_param(
                "code",
                param(String)
                    .pattern("^[0-9]+$")
                    .max_len(3)
                    .one_of(json!(["1"])),
            )
            .with_param("api_key", param(Integer))
            .with_value("db_password", json!("hunter2-PLANTED"))
            .with_value("api_key", json!("PLANTED-key"))
            .with_value("aws", json!("AKIAPLANTED000000000"))
            .with_value(
                "note",
                json!({"jwt": "eyJPLANTED.eyJ0.sig", "pw": {"token": "PLANTED"}}),
            )
            .with_value("client_secret", json!("PLANTED-secret"))
            .with_secret("port", "app", "port")
            .with_secret("timeout", "app", "timeout")
            .with_secret("code", "app", "code");
        let secrets = resolved(&[
            ("port", Ok("PLANTED-port")),
            ("timeout", Ok("5PLANTED")),
            ("code", Ok("PLANTED-code")),
        ]);
        let errors = validate_runtime_config(&spec, Some(&secrets));
        assert!(
            errors.len() >= 12,
            "every planted value is an error: {errors:#?}"
        );
        for error in &errors {
            assert!(
                !error.to_string().contains(PLANTED),
                "leaks a value: {error}"
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // PoolBudget
    // -----------------------------------------------------------------------------------------

    /// A PoolBudget with every field written out at its default.
    fn pb_with_defaults() -> PoolBudgetSpec {
        use defaults::*;
        pb().with(|s| {
            s.metrics = Some(Metrics {
                max_concurrent_operations: Some(MAX_CONCURRENT_OPERATIONS),
                max_memory_mb: Some(MAX_MEMORY_MB),
                max_cpu_percent: Some(MAX_CPU_PERCENT),
                max_request_rate_per_minute: Some(MAX_REQUEST_RATE_PER_MINUTE),
                max_processing_time_ms: Some(MAX_PROCESSING_TIME_MS),
                backpressure: Some(Backpressure {
                    light: Some(BACKPRESSURE_LIGHT),
                    moderate: Some(BACKPRESSURE_MODERATE),
                    heavy: Some(BACKPRESSURE_HEAVY),
                }),
            });
            *s.database_mut() = DatabasePool {
                min_connections: Some(DATABASE_MIN_CONNECTIONS),
                max_connections: Some(DATABASE_MAX_CONNECTIONS),
                connection_timeout: Some(DATABASE_CONNECTION_TIMEOUT.into()),
                idle_timeout: Some(DATABASE_IDLE_TIMEOUT.into()),
                max_lifetime: Some(DATABASE_MAX_LIFETIME.into()),
                retry_attempts: Some(DATABASE_RETRY_ATTEMPTS),
            };
            *s.redis_mut() = RedisPool {
                min_connections: Some(REDIS_MIN_CONNECTIONS),
                max_connections: Some(REDIS_MAX_CONNECTIONS),
                connection_timeout: Some(REDIS_CONNECTION_TIMEOUT.into()),
                socket_timeout: Some(REDIS_SOCKET_TIMEOUT.into()),
                retry_delay: Some(REDIS_RETRY_DELAY.into()),
                retry_attempts: Some(REDIS_RETRY_ATTEMPTS),
            };
            *s.http_mut() = HttpPool {
                max_connections: Some(HTTP_MAX_CONNECTIONS),
                max_keepalive_connections: Some(HTTP_MAX_KEEPALIVE_CONNECTIONS),
                keepalive_expiry: Some(HTTP_KEEPALIVE_EXPIRY.into()),
                timeout: Some(HTTP_TIMEOUT.into()),
            };
            *s.cache_mut() = CachePool {
                max_entries: Some(CACHE_MAX_ENTRIES),
                max_size_mb: Some(CACHE_MAX_SIZE_MB),
                ttl: Some(CACHE_TTL.into()),
                eviction_policy: Some(CACHE_EVICTION_POLICY),
            };
        })
    }

    fn is_range_error(error: &FieldError, path: &str) -> bool {
        error.path == path && error.rule.starts_with("must be between")
    }

    #[test]
    fn empty_pool_budget_is_valid() {
        assert_valid(validate_pool_budget(&pb()));
        assert_valid(validate_pool_budget(&pb().with(|s| {
            s.database_mut();
            s.backpressure_mut();
        })));
    }

    #[test]
    fn defaults_obey_every_rule() {
        assert_valid(validate_pool_budget(&pb_with_defaults()));
    }

    #[test]
    fn integer_fields_accept_their_bounds_and_reject_beyond() {
        for (path, lo, hi, set) in INT_FIELDS {
            for inside in [lo, hi] {
                let errors = validate_pool_budget(&pb().with(|s| set(s, inside)));
                assert!(
                    !errors.iter().any(|e| is_range_error(e, path)),
                    "{path} = {inside}: {errors:#?}"
                );
            }
            for outside in [lo - 1, hi + 1] {
                let error = assert_only(
                    validate_pool_budget(&pb().with(|s| set(s, outside))),
                    path,
                    &format!("must be between {lo} and {hi}"),
                );
                assert_eq!(error.value, Some(outside.to_string()));
            }
        }
    }

    #[test]
    fn backpressure_thresholds_are_shares() {
        let spec = pb().with(|s| {
            *s.backpressure_mut() = Backpressure {
                light: Some(0.5),
                moderate: Some(0.6),
                heavy: Some(1.0),
            }
        });
        assert_valid(validate_pool_budget(&spec));

        let spec = pb().with(|s| s.backpressure_mut().light = Some(0.0));
        let error = assert_only(
            validate_pool_budget(&spec),
            "spec.metrics.backpressure.light",
            "must be greater than 0 and at most 1",
        );
        assert_eq!(error.value.as_deref(), Some("0.0"));
        let spec = pb().with(|s| s.backpressure_mut().heavy = Some(1.01));
        assert_only(
            validate_pool_budget(&spec),
            "spec.metrics.backpressure.heavy",
            "at most 1",
        );
    }

    #[test]
    fn backpressure_thresholds_increase_with_defaults_filled_in() {
        let path = "spec.metrics.backpressure";
        let spec = pb().with(|s| s.backpressure_mut().light = Some(0.9));
        assert_only(
            validate_pool_budget(&spec),
            &format!("{path}.light"),
            "must be below moderate (0.9 >= 0.85, its default)",
        );
        let spec = pb().with(|s| s.backpressure_mut().moderate = Some(0.6));
        assert_only(
            validate_pool_budget(&spec),
            &format!("{path}.moderate"),
            "must be above light (0.6 <= 0.7, its default)",
        );
        let spec = pb().with(|s| {
            s.backpressure_mut().moderate = Some(0.8);
            s.backpressure_mut().heavy = Some(0.8);
        });
        assert_only(
            validate_pool_budget(&spec),
            &format!("{path}.moderate"),
            "must be below heavy (0.8 >= 0.8)",
        );
    }

    #[test]
    fn database_min_connections_must_not_exceed_the_default_max() {
        let spec = pb().with(|s| s.database_mut().min_connections = Some(30));
        let error = assert_only(
            validate_pool_budget(&spec),
            "spec.pools.database.minConnections",
            "must not exceed maxConnections (30 > 20, its default)",
        );
        assert_eq!(error.value.as_deref(), Some("30"));
        assert_valid(validate_pool_budget(
            &spec.with(|s| s.database_mut().max_connections = Some(40)),
        ));
    }

    #[test]
    fn redis_min_connections_must_not_exceed_max() {
        let spec = pb().with(|s| {
            s.redis_mut().min_connections = Some(60);
            s.redis_mut().max_connections = Some(50);
        });
        assert_only(
            validate_pool_budget(&spec),
            "spec.pools.redis.minConnections",
            "must not exceed maxConnections (60 > 50)",
        );
        assert_valid(validate_pool_budget(
            &spec.with(|s| s.redis_mut().max_connections = Some(60)),
        ));
    }

    #[test]
    fn http_keepalive_connections_must_not_exceed_max_connections() {
        let spec = pb().with(|s| s.http_mut().max_connections = Some(15));
        assert_only(
            validate_pool_budget(&spec),
            "spec.pools.http.maxConnections",
            "must not be below maxKeepaliveConnections (15 < 20, its default)",
        );
        let spec = pb().with(|s| s.http_mut().max_keepalive_connections = Some(200));
        assert_only(
            validate_pool_budget(&spec),
            "spec.pools.http.maxKeepaliveConnections",
            "must not exceed maxConnections (200 > 100, its default)",
        );
        let spec = pb().with(|s| {
            s.http_mut().max_connections = Some(15);
            s.http_mut().max_keepalive_connections = Some(15);
        });
        assert_valid(validate_pool_budget(&spec));
    }

    #[test]
    fn cross_field_rules_skip_operands_out_of_range() {
        let spec = pb().with(|s| s.database_mut().min_connections = Some(150));
        assert_only(
            validate_pool_budget(&spec),
            "spec.pools.database.minConnections",
            "must be between 0 and 100",
        );
        let spec = pb().with(|s| s.database_mut().max_lifetime = Some("never".into()));
        assert_only(
            validate_pool_budget(&spec),
            "spec.pools.database.maxLifetime",
            "must be a duration",
        );
    }

    #[test]
    fn durations_must_parse_and_be_positive() {
        for (path, set) in DURATION_FIELDS {
            assert_valid(validate_pool_budget(&pb().with(|s| set(s, "15m"))));
            assert_valid(validate_pool_budget(&pb().with(|s| set(s, "15m0.5s"))));

            let error = assert_only(
                validate_pool_budget(&pb().with(|s| set(s, "soon"))),
                path,
                "must be a duration",
            );
            assert_eq!(error.value.as_deref(), Some("\"soon\""));
            assert_only(
                validate_pool_budget(&pb().with(|s| set(s, "-5s"))),
                path,
                "no sign",
            );
            let zero = validate_pool_budget(&pb().with(|s| set(s, "0s")));
            if path == "spec.pools.redis.retryDelay" {
                assert_valid(zero);
            } else {
                assert_only(zero, path, "must be greater than 0");
            }
        }
    }

    #[test]
    fn database_idle_timeout_is_shorter_than_max_lifetime() {
        let base = "spec.pools.database";
        let spec = pb().with(|s| s.database_mut().idle_timeout = Some("40m".into()));
        assert_only(
            validate_pool_budget(&spec),
            &format!("{base}.idleTimeout"),
            "must be shorter than maxLifetime (40m >= 30m, its default)",
        );
        let spec = pb().with(|s| s.database_mut().max_lifetime = Some("5m".into()));
        assert_only(
            validate_pool_budget(&spec),
            &format!("{base}.maxLifetime"),
            "must be longer than idleTimeout (5m <= 10m, its default)",
        );
        let spec = pb().with(|s| {
            s.database_mut().idle_timeout = Some("1h".into());
            s.database_mut().max_lifetime = Some("60m".into());
        });
        assert_only(
            validate_pool_budget(&spec),
            &format!("{base}.idleTimeout"),
            "(1h >= 60m)",
        );
        let spec = pb().with(|s| {
            s.database_mut().idle_timeout = Some("1h".into());
            s.database_mut().max_lifetime = Some("2h".into());
        });
        assert_valid(validate_pool_budget(&spec));
    }

    #[test]
    fn every_pool_budget_error_is_reported_at_once() {
        let spec = pb().with(|s| {
            s.metrics_mut().max_memory_mb = Some(4096);
            s.backpressure_mut().light = Some(0.9);
            s.database_mut().min_connections = Some(30);
            s.cache_mut().ttl = Some("0s".into());
        });
        let paths: Vec<String> = validate_pool_budget(&spec)
            .into_iter()
            .map(|e| e.path)
            .collect();
        assert_eq!(
            paths,
            [
                "spec.metrics.maxMemoryMB",
                "spec.metrics.backpressure.light",
                "spec.pools.database.minConnections",
                "spec.pools.cache.ttl",
            ]
        );
    }

    // -----------------------------------------------------------------------------------------
    // Properties
    // -----------------------------------------------------------------------------------------

    /// Arbitrary JSON, with some strings that look like credentials or durations.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
            Just(json!("AKIAIOSFODNN7EXAMPLE")),
            Just(json!("1h30m")),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// A schema with one parameter of each type, keyed by a letter.
    fn typed_schema() -> RuntimeConfigSpec {
        use ParamType::*;
        rtc()
            .with_param(
                "s",
                param(String)
                    .min_len(1)
                    .max_len(5)
                    .pattern("^[a-z]")
                    .one_of(json!(["ab", "c"])),
            )
            .with_param(
                "i",
                param(Integer)
                    .min(json!(-3))
                    .max(json!(7))
                    .one_of(json!([1, 2])),
            )
            .with_param("n", param(Number).min(json!(0.5)).max(json!(1e10)))
            .with_param("b", param(Boolean))
            .with_param("d", param(Duration).min(json!("1s")).max(json!(3600)))
            .with_param("j", param(Json))
            .with_param("p", param(String).sensitive())
            .with_param("api_token", param(String))
    }

    fn key() -> impl Strategy<Value = std::string::String> {
        prop_oneof![
            prop::sample::select(vec!["s", "i", "n", "b", "d", "j", "p", "api_token", "x"])
                .prop_map(str::to_owned),
            "[a-z_.-]{1,10}",
        ]
    }

    proptest! {
        #[test]
        fn parse_duration_never_panics(text in "\\PC*") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn parse_duration_never_panics_on_duration_like_text(text in "[0-9.nsuµμmh+ -]{0,24}") {
            let _ = parse_duration(&text);
        }

        #[test]
        fn parse_duration_round_trips_hours_minutes_seconds(
            h in 0u64..100_000,
            m in 0u64..10_000,
            s in 0u64..10_000,
        ) {
            let text = format!("{h}h{m}m{s}s");
            prop_assert_eq!(parse_duration(&text), Ok(Duration::from_secs(h * 3600 + m * 60 + s)));
        }

        #[test]
        fn pool_budget_range_errors_match_the_ranges(
            picks in proptest::collection::vec((0u8..4, any::<i64>()), INT_FIELDS.len()),
        ) {
            let mut spec = pb();
            let mut chosen = Vec::new();
            for ((path, lo, hi, set), (mode, raw)) in INT_FIELDS.iter().zip(&picks) {
                let value = match mode {
                    0 => lo + raw.rem_euclid(hi - lo + 1),
                    1 => lo - 1 - raw.rem_euclid(100),
                    2 => hi + 1 + raw.rem_euclid(100),
                    _ => *raw,
                };
                set(&mut spec, value);
                chosen.push((*path, *lo, *hi, value));
            }
            let errors = validate_pool_budget(&spec);
            for (path, lo, hi, value) in chosen {
                let outside = !(lo..=hi).contains(&value);
                let reported = errors.iter().any(|e| is_range_error(e, path));
                prop_assert_eq!(reported, outside, "{} = {}: {:?}", path, value, errors);
            }
        }

        #[test]
        fn runtime_config_never_panics_on_arbitrary_values(
            values in proptest::collection::btree_map(key(), json_value(), 0..6),
        ) {
            for schema in [rtc(), typed_schema()] {
                let mut spec = schema;
                spec.values = values.clone();
                for error in validate_runtime_config(&spec, None) {
                    prop_assert!(error.path.starts_with("spec."), "{}", error);
                }
            }
        }

        #[test]
        fn secret_values_never_appear_in_errors(
            key in prop::sample::select(vec!["s", "i", "n", "b", "d", "j", "p", "api_token"]),
            text in "Zq[A-Za-z0-9.:-]{6,16}",
        ) {
            let spec = typed_schema().with_secret(key, "app", "value");
            let secrets = resolved(&[(key, Ok(text.as_str()))]);
            for error in validate_runtime_config(&spec, Some(&secrets)) {
                prop_assert_eq!(error.value.as_ref(), None);
                prop_assert!(!error.to_string().contains(&text), "{}", error);
            }
        }
    }
}
