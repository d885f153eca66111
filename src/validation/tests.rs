//! Tests of every validation rule, with the fixtures they share.

use super::*;
use std::sync::Arc;

use regex::Regex;
use serde_json::Value;

use crate::crd::{
    Backpressure, CachePool, DatabasePool, FeatureFlag, HttpPool, Metrics, ParamType, Parameter,
    PoolBudgetSpec, Pools, RedisPool, RuntimeConfigSpec, Target,
};

use proptest::prelude::*;
use serde_json::json;

// -----------------------------------------------------------------------------------------
// Fixtures
// -----------------------------------------------------------------------------------------

fn rtc() -> RuntimeConfigSpec {
    RuntimeConfigSpec::default()
}

fn param(type_: ParamType) -> Parameter {
    Parameter::test(type_)
}

fn flag() -> FeatureFlag {
    FeatureFlag::test()
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
// Credentials, display
// -----------------------------------------------------------------------------------------

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
    // A value under that pattern is not taken as checked: it is an error where it is used too.
    let errors = check(&spec.with_value("s", "anything"));
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        ["spec.schema.s.pattern", "spec.values.s"],
        "{errors:#?}"
    );
    assert!(errors[1].rule.contains("does not compile"), "{}", errors[1]);
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
fn a_values_from_key_must_be_a_data_key_of_the_projected_secret() {
    // The key becomes a data key of the projected Secret: a write the server would refuse,
    // or the metadata key's own name, is an error here instead.
    let spec = rtc()
        .with_secret("db password", "shop-db", "a")
        .with_secret(crate::projection::META_KEY, "shop-db", "b");
    let errors = check(&spec);
    let found: Vec<(&str, bool)> = errors
        .iter()
        .map(|e| (e.path.as_str(), e.rule.contains("alphanumerics")))
        .collect();
    assert_eq!(
        found,
        [
            ("spec.valuesFrom[0].key", true),
            ("spec.valuesFrom[1].key", false)
        ],
        "{errors:#?}"
    );
    assert!(errors[1].rule.contains("reserved"), "{}", errors[1]);
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
    for name in [".", "..", "..data", "a/b", "", "ä", &"a".repeat(254)] {
        assert_only(
            validate_common(Some(&target_file(name)), None),
            "spec.target.fileName",
            "alphanumerics, '-', '_' or '.'",
        );
    }
}

#[test]
fn file_name_is_not_the_metadata_key() {
    let error = assert_only(
        validate_common(Some(&target_file(crate::projection::META_KEY)), None),
        "spec.target.fileName",
        "must not be .hotconf.json: the projected ConfigMap holds the revision and hash",
    );
    assert_eq!(error.value.as_deref(), Some("\".hotconf.json\""));
    assert_valid(validate_common(Some(&target_file("hotconf.json")), None));
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

#[test]
fn a_summary_of_many_errors_fits_its_budget_and_counts_the_rest() {
    let error = |i: usize| FieldError::new(format!("spec.values.k{i}"), "must be an integer");
    let few: Vec<FieldError> = (0..3).map(error).collect();
    let joined: Vec<String> = few.iter().map(ToString::to_string).collect();
    assert_eq!(
        summarize(&few, 1000),
        joined.join("; "),
        "what fits is all there"
    );

    let many: Vec<FieldError> = (0..2000).map(error).collect();
    for budget in [EVENT_NOTE_BUDGET, CONDITION_MESSAGE_BUDGET] {
        let text = summarize(&many, budget);
        assert!(text.len() <= budget, "{} > {budget}", text.len());
        let (shown, note) = text.rsplit_once("; ").unwrap();
        let shown = shown.split("; ").count();
        assert_eq!(note, format!("… and {} more errors", 2000 - shown));
        assert!(shown > 10, "{shown} shown of {budget} bytes");
        assert!(text.starts_with("spec.values.k0: must be an integer; spec.values.k1:"));
    }

    // One error longer than the whole budget is cut, and the others are counted.
    let long = vec![
        FieldError::new("spec.values.x", "é".repeat(600)),
        error(1),
        error(2),
    ];
    let text = summarize(&long, 100);
    assert!(text.len() <= 100, "{text}");
    assert!(text.ends_with("; … and 2 more errors"), "{text}");
    assert_eq!(summarize(&long[..1], 50).chars().last(), Some('…'));
}

#[test]
fn variant_flags_are_checked_whole() {
    use serde_json::json;
    let good = FeatureFlag {
        variants: BTreeMap::from([
            ("classic".into(), json!("v1")),
            ("streamlined".into(), json!("v2")),
        ]),
        default_variant: Some("classic".into()),
        fractional: BTreeMap::from([("classic".into(), 50), ("streamlined".into(), 50)]),
        targets: BTreeMap::from([("streamlined".into(), vec!["user-1".into()])]),
        ..flag()
    };
    assert_valid(check(&rtc().with_flag("checkout_flow", good.clone())));

    let bad = FeatureFlag {
        variants: BTreeMap::from([
            ("a".into(), json!("x")),
            ("b".into(), json!(2)),
            ("c".into(), json!(null)),
        ]),
        default_variant: Some("zz".into()),
        fractional: BTreeMap::from([("a".into(), 0), ("nope".into(), 5)]),
        targets: BTreeMap::from([
            ("a".into(), vec!["u".into()]),
            ("b".into(), vec!["u".into()]),
            ("ghost".into(), vec![]),
        ]),
        rollout_percentage: Some(50),
        ..flag()
    };
    let errors = check(&rtc().with_flag("f", bad));
    let found: Vec<(&str, &str)> = errors
        .iter()
        .map(|e| (e.path.as_str(), e.rule.as_str()))
        .collect();
    for (path, rule) in [
        (
            "spec.featureFlags.f.variants.b",
            "all variants of a flag have one type",
        ),
        (
            "spec.featureFlags.f.variants.c",
            "must be a boolean, a string",
        ),
        ("spec.featureFlags.f.defaultVariant", "names no variant"),
        (
            "spec.featureFlags.f.fractional.a",
            "must be a positive weight",
        ),
        ("spec.featureFlags.f.fractional.nope", "names no variant"),
        ("spec.featureFlags.f.targets.ghost", "names no variant"),
        (
            "spec.featureFlags.f.targets.b[0]",
            "is also targeted to variant a",
        ),
        (
            "spec.featureFlags.f.rolloutPercentage",
            "is for on/off flags",
        ),
    ] {
        assert!(
            found.iter().any(|(p, r)| *p == path && r.contains(rule)),
            "{path}: {rule} not in {found:#?}"
        );
    }
    // The variant fields need variants.
    let stray = FeatureFlag {
        default_variant: Some("a".into()),
        ..flag()
    };
    let error = assert_only(
        check(&rtc().with_flag("f", stray)),
        "spec.featureFlags.f.defaultVariant",
        "needs variants",
    );
    assert!(error.value.is_none());
}

#[test]
fn the_flagd_format_needs_flagd_bucketing_and_flags() {
    use crate::crd::{Bucketing, Format, Target};
    let target = Some(Target {
        format: Some(Format::Flagd),
        ..Default::default()
    });
    let rollout = FeatureFlag {
        rollout_percentage: Some(25),
        ..flag()
    };
    let mut spec = rtc().with_flag("new_ui", rollout.clone());
    spec.target = target.clone();
    assert_only(
        check(&spec),
        "spec.featureFlags.new_ui.bucketing",
        "must be flagd",
    );
    let flagd = FeatureFlag {
        bucketing: Some(Bucketing::Flagd),
        ..rollout
    };
    let mut spec = rtc().with_flag("new_ui", flagd);
    spec.target = target.clone();
    assert_valid(check(&spec));
    let pb = crate::crd::PoolBudgetSpec {
        target,
        ..Default::default()
    };
    let errors = validate_pool_budget(&pb);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "spec.target.format");
}

#[test]
fn the_flagd_key_beside_the_document_needs_flagd_bucketing_and_its_own_name() {
    use crate::crd::{Bucketing, Format, Target};
    let beside = |key: &str| {
        Some(Target {
            flagd_file_name: Some(key.to_owned()),
            ..Default::default()
        })
    };
    let rollout = FeatureFlag {
        rollout_percentage: Some(25),
        ..flag()
    };
    let mut spec = rtc().with_flag("new_ui", rollout.clone());
    spec.target = beside("flags.flagd.json");
    assert_only(
        check(&spec),
        "spec.featureFlags.new_ui.bucketing",
        "must be flagd with target.flagdFileName",
    );
    let mut spec = rtc().with_flag(
        "new_ui",
        FeatureFlag {
            bucketing: Some(Bucketing::Flagd),
            ..rollout
        },
    );
    spec.target = beside("flags.flagd.json");
    assert_valid(check(&spec));
    // The document's own key, the metadata key, a key the API server refuses: each named.
    for (key, says) in [
        ("config.yaml", "must differ from"),
        (crate::projection::META_KEY, "must differ from"),
        ("flags/flagd.json", "must consist of"),
    ] {
        spec.target = beside(key);
        assert_only(check(&spec), "spec.target.flagdFileName", says);
    }
    spec.target = Some(Target {
        format: Some(Format::Flagd),
        ..beside("more.flagd.json").unwrap()
    });
    assert_only(
        check(&spec),
        "spec.target.flagdFileName",
        "must not be set with format flagd",
    );
    let pb = crate::crd::PoolBudgetSpec {
        target: beside("flags.flagd.json"),
        ..Default::default()
    };
    let errors = validate_pool_budget(&pb);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "spec.target.flagdFileName");
}
