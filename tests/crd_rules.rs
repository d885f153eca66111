//! The CRDs' validation on a current API server (custom resources on Kubernetes 1.36 semantics,
//! through the aggregated CRD server) against the operator's own validation:
//!
//! - every `x-kubernetes-validations` rule of both CRDs compiled (the CRDs installed) and fires
//!   on its invalid case, naming the rule's field;
//! - the two layers agree (a differential test): for every invalid fixture, the invalid example
//!   and a few hundred generated specs, anything the server refuses the operator refuses too,
//!   naming the same field; anything only the operator refuses is on the list in
//!   docs/validation.md ("Checked by the operator only").

mod common;

use std::collections::BTreeSet;

use common::{TestEnv, repo};
use proptest::{
    prelude::*,
    strategy::ValueTree,
    test_runner::{Config, RngAlgorithm, TestRng, TestRunner},
};
use regex::Regex;
use serde_json::{Value, json};

/// What the server said of one object: its field errors (field, message); `blocked` when it
/// stopped before the CEL rules (a wrong type, an unknown enum value, a list too long).
#[derive(Debug, Default)]
struct Refusal {
    causes: Vec<(String, String)>,
    blocked: bool,
}

async fn server_verdict(env: &TestEnv, object: &Value) -> Option<Refusal> {
    let kind = object["kind"].as_str().expect("a kind");
    let name = object["metadata"]["name"].as_str().expect("a name");
    // What `kubectl apply` does for a new object: a create with strict field validation, here
    // as a dry run. (Server-side apply refuses a wrongly typed field earlier, with a 500 and no
    // causes, before any validation.)
    let uri = format!(
        "/apis/hotconf.dev/v1alpha1/namespaces/{}/{}s?dryRun=All&fieldValidation=Strict",
        env.ns,
        kind.to_lowercase()
    );
    let request = http::Request::post(uri)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(object).unwrap())
        .unwrap();
    match env.client.request::<Value>(request).await {
        Ok(_) => None,
        // Strict decoding stops at the first unknown fields, before any validation.
        Err(kube::Error::Api(status)) if status.code == 400 => {
            let causes: Vec<_> = unknown_fields(&status.message)
                .into_iter()
                .map(|f| (f, status.message.clone()))
                .collect();
            assert!(
                !causes.is_empty(),
                "{name}: a 400 without a field: {status:?}"
            );
            Some(Refusal {
                causes,
                blocked: true,
            })
        }
        Err(kube::Error::Api(status)) => {
            assert_eq!(
                status.code, 422,
                "{name}: not a validation refusal: {status:?}"
            );
            let mut refusal = Refusal::default();
            for cause in status.details.iter().flat_map(|d| d.causes.iter()) {
                if cause
                    .message
                    .contains("some validation rules were not checked")
                {
                    refusal.blocked = true;
                } else if cause.field.is_empty() {
                    for field in unknown_fields(&cause.message) {
                        refusal.causes.push((field, cause.message.clone()));
                    }
                } else {
                    refusal
                        .causes
                        .push((cause.field.clone(), cause.message.clone()));
                }
            }
            if refusal.causes.is_empty() && !refusal.blocked {
                // `strict decoding error: unknown field "spec.x"` can arrive without causes.
                for field in unknown_fields(&status.message) {
                    refusal.causes.push((field, status.message.clone()));
                }
            }
            assert!(
                !refusal.causes.is_empty() || refusal.blocked,
                "{name}: a refusal that names no field: {status:?}"
            );
            Some(refusal)
        }
        Err(e) => panic!("dry run of {name}: {e}"),
    }
}

fn unknown_fields(message: &str) -> Vec<String> {
    Regex::new(r#"unknown field "([^"]+)""#)
        .unwrap()
        .captures_iter(message)
        .map(|c| c[1].to_string())
        .collect()
}

/// The operator's verdict, exactly as `hotconf validate` reaches it: (path, rule).
// As JSON (valid YAML): serde_yaml writes a key such as `n` plain, which a YAML 1.1 reader (kubectl, and hotconf's manifest reader) takes for `false`.
fn operator_verdict(object: &Value, ns: &str) -> Vec<(String, String)> {
    hotconf::commands::problems_in(&serde_json::to_string(object).unwrap(), ns)
}

/// A field path in one spelling: `spec.schema[n].enum[0]` (the server's) and
/// `spec.schema.n.enum[0]` (the operator's) both become `spec.schema.n.enum.0`.
fn normalize(path: &str) -> String {
    let path = path.trim_start_matches('.');
    let mut out = String::new();
    for c in path.chars() {
        match c {
            '[' => out.push('.'),
            ']' => {}
            c => out.push(c),
        }
    }
    out
}

/// Whether the operator's `path` is the server's `field` or lies under it (the server names a
/// list or an object where the operator names the entry in it, e.g. a duplicate list-map key,
/// or a rule that failed to evaluate on its object).
fn names(field: &str, path: &str) -> bool {
    let (field, path) = (normalize(field), normalize(path));
    path == field || path.starts_with(&format!("{field}."))
}

/// The rows of docs/validation.md's "Checked by the operator only" table: (field pattern, rule).
fn operator_only_list() -> Vec<(Regex, String)> {
    let text = std::fs::read_to_string(repo().join("docs/validation.md")).unwrap();
    let section = text
        .split("## Checked by the operator only")
        .nth(1)
        .expect("docs/validation.md has a section 'Checked by the operator only'");
    let section = section.split("\n## ").next().unwrap();
    let cell = Regex::new(r"`([^`]+)`").unwrap();
    let mut rows = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let field = cell.captures(cells[0]).unwrap()[1].to_string();
        let rule = cell
            .captures(cells.get(1).copied().unwrap_or_default())
            .unwrap_or_else(|| panic!("no rule in row {line}"))[1]
            .to_string();
        // `spec.values.<key>` and `spec.valuesFrom[<i>].key`: a placeholder is one path step.
        let pattern = regex::escape(&normalize(&field))
            .replace(r"<key>", r"[^.]+")
            .replace(r"<i>", r"[0-9]+")
            .replace(r"<flag>", r"[^.]+")
            .replace(r"<j>", r"[0-9]+");
        rows.push((Regex::new(&format!("^{pattern}$")).unwrap(), rule));
    }
    assert!(!rows.is_empty(), "the operator-only list is empty");
    rows
}

/// Compares both verdicts on one case; returns what disagrees.
fn disagreements(
    label: &str,
    server: Option<&Refusal>,
    operator: &[(String, String)],
    only: &[(Regex, String)],
) -> Vec<String> {
    let mut out = Vec::new();
    let causes: &[(String, String)] = server.map_or(&[], |r| &r.causes);
    for (field, message) in causes {
        if !operator.iter().any(|(path, _)| names(field, path)) {
            out.push(format!(
                "{label}: the server refuses {field} ({message}); the operator does not: {operator:?}"
            ));
        }
    }
    // While the server stopped before its CEL rules, it has not said everything it would.
    if server.is_some_and(|r| r.blocked) {
        return out;
    }
    for (path, rule) in operator {
        let by_server = causes.iter().any(|(field, _)| names(field, path));
        let listed = only.iter().any(|(pattern, words)| {
            pattern.is_match(&normalize(path)) && (words == "*" || rule.contains(words.as_str()))
        });
        if !by_server && !listed {
            out.push(format!(
                "{label}: only the operator refuses {path} ({rule}), and docs/validation.md \
                 does not list it; the server said {server:?}"
            ));
        }
    }
    out
}

async fn differential(env: &TestEnv, cases: Vec<(String, Value)>) -> (usize, usize) {
    let only = operator_only_list();
    let mut problems = Vec::new();
    let mut refused = 0;
    for (label, object) in &cases {
        let server = server_verdict(env, object).await;
        refused += usize::from(server.is_some());
        let operator = operator_verdict(object, &env.ns);
        problems.extend(disagreements(label, server.as_ref(), &operator, &only));
    }
    assert!(
        problems.is_empty(),
        "{} disagreement(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    (cases.len(), refused)
}

fn object(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "hotconf.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

// ---------------------------------------------------------------------------------------------
// Every CEL rule fires, naming its field
// ---------------------------------------------------------------------------------------------

/// One invalid case per rule: (kind, spec, the field the refusal must name).
fn cel_cases() -> Vec<(&'static str, Value, &'static str)> {
    let pb = "PoolBudget";
    let rtc = "RuntimeConfig";
    let mut cases = vec![
        (
            pb,
            json!({"metrics": {"backpressure": {"light": 0.9, "moderate": 0.8}}}),
            "spec.metrics.backpressure.light",
        ),
        (
            pb,
            json!({"metrics": {"backpressure": {"moderate": 0.6}}}),
            "spec.metrics.backpressure.moderate",
        ),
        (
            pb,
            json!({"metrics": {"backpressure": {"moderate": 0.96, "heavy": 0.95}}}),
            "spec.metrics.backpressure.moderate",
        ),
        (
            pb,
            json!({"metrics": {"backpressure": {"heavy": 0.8}}}),
            "spec.metrics.backpressure.heavy",
        ),
        (
            pb,
            json!({"pools": {"database": {"minConnections": 30, "maxConnections": 10}}}),
            "spec.pools.database.minConnections",
        ),
        (
            pb,
            json!({"pools": {"database": {"idleTimeout": "1h", "maxLifetime": "30m"}}}),
            "spec.pools.database.idleTimeout",
        ),
        (
            pb,
            json!({"pools": {"database": {"maxLifetime": "5m"}}}),
            "spec.pools.database.maxLifetime",
        ),
        (
            pb,
            json!({"pools": {"redis": {"minConnections": 100, "maxConnections": 50}}}),
            "spec.pools.redis.minConnections",
        ),
        (
            pb,
            json!({"pools": {"http": {"maxConnections": 100, "maxKeepaliveConnections": 200}}}),
            "spec.pools.http.maxKeepaliveConnections",
        ),
        (
            pb,
            json!({"pools": {"http": {"maxConnections": 15}}}),
            "spec.pools.http.maxConnections",
        ),
        (
            pb,
            json!({"target": {"fileName": "."}}),
            "spec.target.fileName",
        ),
        (
            rtc,
            json!({"target": {"fileName": ".."}}),
            "spec.target.fileName",
        ),
        (
            rtc,
            json!({"target": {"flagdFileName": ".."}}),
            "spec.target.flagdFileName",
        ),
        (
            pb,
            json!({"target": {"flagdFileName": "."}}),
            "spec.target.flagdFileName",
        ),
        (
            rtc,
            json!({"schema": {"n": {"type": "integer", "minLength": 1}}}),
            "spec.schema[n].minLength",
        ),
        (
            rtc,
            json!({"schema": {"n": {"type": "number", "maxLength": 1}}}),
            "spec.schema[n].maxLength",
        ),
        (
            rtc,
            json!({"schema": {"b": {"type": "boolean", "pattern": "^x$"}}}),
            "spec.schema[b].pattern",
        ),
        (
            rtc,
            json!({"schema": {"s": {"type": "string", "minLength": 5, "maxLength": 2}}}),
            "spec.schema[s].minLength",
        ),
        (
            rtc,
            json!({"valuesFrom": [{"key": "p", "secretKeyRef": {"name": "db", "key": "."}}]}),
            "spec.valuesFrom[0].secretKeyRef.key",
        ),
    ];
    for (pool, field) in [
        ("database", "connectionTimeout"),
        ("database", "idleTimeout"),
        ("database", "maxLifetime"),
        ("redis", "connectionTimeout"),
        ("redis", "socketTimeout"),
        ("http", "keepaliveExpiry"),
        ("http", "timeout"),
        ("cache", "ttl"),
    ] {
        let path: &'static str = format!("spec.pools.{pool}.{field}").leak();
        cases.push((pb, json!({"pools": {pool: {field: "0s"}}}), path));
    }
    cases.push((
        pb,
        json!({"pools": {"redis": {"retryDelay": "3000000h"}}}),
        "spec.pools.redis.retryDelay",
    ));
    cases.push((
        rtc,
        json!({"schema": {"a": {"type": "string"}},
               "valuesFrom": [{"key": "b", "secretKeyRef": {"name": "db", "key": "k"}}]}),
        "spec.valuesFrom",
    ));
    cases
}

/// Every rule of the CRDs: (kind, the field pattern it names, its message).
fn crd_rules() -> Vec<(String, String, String)> {
    fn walk(node: &Value, path: &str, kind: &str, out: &mut Vec<(String, String, String)>) {
        for rule in node["x-kubernetes-validations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let field = format!("{path}{}", rule["fieldPath"].as_str().unwrap_or(""));
            let message = rule["message"].as_str().unwrap_or("").to_string();
            out.push((kind.to_string(), field, message));
        }
        for (name, child) in node["properties"].as_object().into_iter().flatten() {
            walk(child, &format!("{path}.{name}"), kind, out);
        }
        if node["additionalProperties"].is_object() {
            walk(
                &node["additionalProperties"],
                &format!("{path}[*]"),
                kind,
                out,
            );
        }
        if node["items"].is_object() {
            walk(&node["items"], &format!("{path}[*]"), kind, out);
        }
    }
    let mut out = Vec::new();
    for crd in hotconf::crd::crds() {
        let kind = crd.spec.names.kind.clone();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        walk(&schema["openAPIV3Schema"], "", &kind, &mut out);
    }
    for rule in &mut out {
        rule.1 = rule.1.trim_start_matches('.').to_string();
    }
    out
}

fn matches_pattern(pattern: &str, field: &str) -> bool {
    let regex = regex::escape(pattern).replace(r"\[\*\]", r"\[[^\]]+\]");
    Regex::new(&format!("^{regex}$")).unwrap().is_match(field)
}

#[tokio::test]
async fn every_cel_rule_compiles_and_fires_on_its_field() {
    let env = TestEnv::new("cel").await;
    common::assert_current_semantics(env.plane);
    let mut fired: Vec<(String, String, String)> = Vec::new();
    for (i, (kind, spec, field)) in cel_cases().into_iter().enumerate() {
        let case = object(kind, &format!("case-{i}"), spec.clone());
        let refusal = server_verdict(&env, &case)
            .await
            .unwrap_or_else(|| panic!("the server accepted {kind} {spec}"));
        let named = refusal.causes.iter().find(|(f, _)| f == field);
        let (_, message) = named.unwrap_or_else(|| {
            panic!("{kind} {spec}: the refusal does not name {field}: {refusal:?}")
        });
        fired.push((kind.to_string(), field.to_string(), message.clone()));
        // The operator refuses it too, on the same field.
        let operator = operator_verdict(&case, &env.ns);
        assert!(
            operator.iter().any(|(path, _)| names(field, path)),
            "{kind} {spec}: the operator does not refuse {field}: {operator:?}"
        );
    }
    // No rule without a case: each rule's field and message were seen in a refusal.
    let missing: Vec<_> = crd_rules()
        .into_iter()
        .filter(|(kind, pattern, message)| {
            // A rule whose evaluation fails (a duration past Go's limit) reports that instead
            // of its message.
            !fired.iter().any(|(k, field, said)| {
                k == kind
                    && matches_pattern(pattern, field)
                    && (said.contains(message.as_str()) || said.contains("evaluating rule"))
            })
        })
        .collect();
    assert!(missing.is_empty(), "rules no case made fire: {missing:#?}");
}

// ---------------------------------------------------------------------------------------------
// Both layers agree
// ---------------------------------------------------------------------------------------------

fn fixture_cases() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(repo().join("tests/fixtures/invalid"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.push(repo().join("examples/invalid.yaml"));
    let mut cases = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let Ok(value) = <Value as serde::Deserialize>::deserialize(doc) else {
                break; // the syntax-error fixture: nothing for the server to judge
            };
            if value["apiVersion"] != "hotconf.dev/v1alpha1" {
                continue;
            }
            let mut value = value;
            value["metadata"]
                .as_object_mut()
                .unwrap()
                .remove("namespace");
            let name = file.file_name().unwrap().to_string_lossy();
            cases.push((format!("{name}#{i}"), value));
        }
    }
    assert!(cases.len() >= 4, "fixtures found: {}", cases.len());
    cases
}

#[tokio::test]
async fn fixtures_and_the_invalid_example_agree_with_the_server() {
    let env = TestEnv::new("diff-fixtures").await;
    common::assert_current_semantics(env.plane);
    let (cases, refused) = differential(&env, fixture_cases()).await;
    assert!(
        refused >= 3,
        "only {refused} of {cases} fixtures were refused"
    );
}

fn pick<T: Clone + std::fmt::Debug + 'static>(items: &[T]) -> impl Strategy<Value = T> + use<T> {
    prop::sample::select(items.to_vec())
}

fn maybe<S: Strategy + 'static>(s: S) -> impl Strategy<Value = Option<S::Value>>
where
    S::Value: std::fmt::Debug,
{
    prop::option::weighted(0.5, s)
}

fn int_field(lo: i64, hi: i64) -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => (lo..=hi).prop_map(Value::from),
        1 => Just(Value::from(lo - 1)),
        1 => Just(Value::from(hi + 1)),
        1 => pick(&[lo, hi]).prop_map(Value::from),
    ]
}

fn duration_field() -> impl Strategy<Value = Value> {
    pick(&[
        "0s", "1s", "100ms", "5s", "30s", "5m", "10m", "30m", "45m", "1h", "1h30m", "1.5h", "soon",
        "5", "-1s", "3000000h",
    ])
    .prop_map(Value::from)
}

fn share_field() -> impl Strategy<Value = Value> {
    pick(&[
        0.0, 0.1, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.96, 1.0, 1.5, -0.1,
    ])
    .prop_map(Value::from)
}

fn object_of(fields: Vec<(&'static str, Option<Value>)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
            .collect(),
    )
}

fn pool_budget_spec() -> impl Strategy<Value = Value> {
    let backpressure = (
        maybe(share_field()),
        maybe(share_field()),
        maybe(share_field()),
    )
        .prop_map(|(l, m, h)| object_of(vec![("light", l), ("moderate", m), ("heavy", h)]));
    let metrics = (
        maybe(int_field(1, 500)),
        maybe(int_field(64, 2048)),
        maybe(int_field(1, 100)),
        maybe(backpressure),
    )
        .prop_map(|(c, m, cpu, b)| {
            object_of(vec![
                ("maxConcurrentOperations", c),
                ("maxMemoryMB", m),
                ("maxCpuPercent", cpu),
                ("backpressure", b),
            ])
        });
    let database = (
        maybe(int_field(0, 100)),
        maybe(int_field(5, 100)),
        maybe(duration_field()),
        maybe(duration_field()),
        maybe(duration_field()),
        maybe(int_field(0, 10)),
    )
        .prop_map(|(min, max, ct, idle, life, retry)| {
            object_of(vec![
                ("minConnections", min),
                ("maxConnections", max),
                ("connectionTimeout", ct),
                ("idleTimeout", idle),
                ("maxLifetime", life),
                ("retryAttempts", retry),
            ])
        });
    let redis = (
        maybe(int_field(0, 200)),
        maybe(int_field(5, 200)),
        maybe(duration_field()),
        maybe(duration_field()),
    )
        .prop_map(|(min, max, delay, socket)| {
            object_of(vec![
                ("minConnections", min),
                ("maxConnections", max),
                ("retryDelay", delay),
                ("socketTimeout", socket),
            ])
        });
    let http = (
        maybe(int_field(10, 1000)),
        maybe(int_field(0, 1000)),
        maybe(duration_field()),
    )
        .prop_map(|(max, keep, timeout)| {
            object_of(vec![
                ("maxConnections", max),
                ("maxKeepaliveConnections", keep),
                ("timeout", timeout),
            ])
        });
    let cache = (
        maybe(int_field(1, 10_000_000)),
        maybe(duration_field()),
        maybe(pick(&["LRU", "LFU", "TTL"]).prop_map(Value::from)),
    )
        .prop_map(|(n, ttl, policy)| {
            object_of(vec![
                ("maxEntries", n),
                ("ttl", ttl),
                ("evictionPolicy", policy),
            ])
        });
    let pools =
        (maybe(database), maybe(redis), maybe(http), maybe(cache)).prop_map(|(d, r, h, c)| {
            object_of(vec![
                ("database", d),
                ("redis", r),
                ("http", h),
                ("cache", c),
            ])
        });
    (
        maybe(metrics),
        maybe(pools),
        maybe(target()),
        maybe(int_field(1, 100)),
    )
        .prop_map(|(m, p, t, limit)| {
            object_of(vec![
                ("metrics", m),
                ("pools", p),
                ("target", t),
                ("revisionHistoryLimit", limit),
            ])
        })
}

fn target() -> impl Strategy<Value = Value> {
    (
        maybe(pick(&["app-config", "a.b", "Bad_Name", "-x", "a..b"]).prop_map(Value::from)),
        maybe(pick(&["config.yaml", ".", "..", "a/b", "ok-key"]).prop_map(Value::from)),
    )
        .prop_map(|(name, file)| object_of(vec![("configMapName", name), ("fileName", file)]))
}

fn parameter() -> impl Strategy<Value = Value> {
    let types = pick(&["string", "integer", "number", "boolean", "duration", "json"]);
    (
        types,
        maybe(pick(&[0i64, 2, 5]).prop_map(Value::from)),
        maybe(pick(&[1i64, 3, 10]).prop_map(Value::from)),
        maybe(pick(&["^[a-z]+$", "(unclosed"]).prop_map(Value::from)),
        maybe(pick(&[json!([]), json!(["a", "b"]), json!([1, 2])])),
        maybe(pick(&[json!(1), json!("x"), json!(true)])),
        maybe(pick(&[json!(0), json!("1s"), json!("x")])),
        maybe(Just(Value::Bool(true))),
    )
        .prop_map(
            |(t, min_len, max_len, pattern, enum_, default, minimum, sensitive)| {
                object_of(vec![
                    ("type", Some(Value::from(t))),
                    ("minLength", min_len),
                    ("maxLength", max_len),
                    ("pattern", pattern),
                    ("enum", enum_),
                    ("default", default),
                    ("minimum", minimum),
                    ("sensitive", sensitive),
                ])
            },
        )
}

fn runtime_config_spec() -> impl Strategy<Value = Value> {
    let keys = || pick(&["a", "b", "c", "log_level", "api_token"]);
    let schema = prop::collection::btree_map(keys(), parameter(), 0..3)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()));
    let values = prop::collection::btree_map(
        keys(),
        pick(&[
            json!(1),
            json!("x"),
            json!(true),
            json!("30s"),
            json!({"n": 1}),
        ]),
        0..3,
    )
    .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()));
    let values_from = prop::collection::vec(
        (
            keys(),
            pick(&["db", "Bad_Secret"]),
            pick(&["password", ".", "ok"]),
        ),
        0..3,
    )
    .prop_map(|refs| {
        Value::Array(
            refs.into_iter()
                .map(|(k, n, key)| json!({"key": k, "secretKeyRef": {"name": n, "key": key}}))
                .collect(),
        )
    });
    let flag = (
        any::<bool>(),
        maybe(pick(&[-1i64, 0, 25, 100, 150]).prop_map(Value::from)),
        prop::collection::vec(pick(&["u1", "u2"]), 0..2),
        prop::collection::vec(pick(&["u2", "u3"]), 0..2),
    )
        .prop_map(|(enabled, pct, allow, deny)| {
            object_of(vec![
                ("enabled", Some(Value::Bool(enabled))),
                ("rolloutPercentage", pct),
                ("allow", (!allow.is_empty()).then(|| json!(allow))),
                ("deny", (!deny.is_empty()).then(|| json!(deny))),
            ])
        });
    let flags = prop::collection::btree_map(pick(&["new_ui", "beta", "-bad-"]), flag, 0..2)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect()));
    let maintenance = (
        any::<bool>(),
        maybe(pick(&["2030-01-01T00:00:00Z", "next tuesday"]).prop_map(Value::from)),
    )
        .prop_map(|(enabled, until)| {
            object_of(vec![("enabled", Some(enabled.into())), ("until", until)])
        });
    (
        maybe(schema),
        maybe(values),
        maybe(values_from),
        maybe(flags),
        maybe(maintenance),
        maybe(target()),
        maybe(int_field(1, 100)),
    )
        .prop_map(|(schema, values, from, flags, m, t, limit)| {
            object_of(vec![
                ("schema", schema),
                ("values", values),
                ("valuesFrom", from),
                ("featureFlags", flags),
                ("maintenance", m),
                ("target", t),
                ("revisionHistoryLimit", limit),
            ])
        })
}

fn generated(count: usize) -> Vec<(String, Value)> {
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let mut cases = Vec::new();
    for i in 0..count {
        let (kind, spec) = if i % 2 == 0 {
            (
                "PoolBudget",
                pool_budget_spec().new_tree(&mut runner).unwrap().current(),
            )
        } else {
            (
                "RuntimeConfig",
                runtime_config_spec()
                    .new_tree(&mut runner)
                    .unwrap()
                    .current(),
            )
        };
        cases.push((
            format!("generated #{i} {kind} {spec}"),
            object(kind, &format!("gen-{i}"), spec),
        ));
    }
    cases
}

#[tokio::test]
async fn generated_specs_agree_with_the_server() {
    let env = TestEnv::new("diff-generated").await;
    common::assert_current_semantics(env.plane);
    let (cases, refused) = differential(&env, generated(300)).await;
    // A generator that only made valid (or only invalid) specs would prove little.
    assert!(
        refused > cases / 5 && refused < cases,
        "{refused} of {cases} generated specs were refused"
    );
}

#[test]
fn the_operator_only_list_is_what_the_docs_say() {
    let only = operator_only_list();
    let fields: BTreeSet<String> = only.iter().map(|(p, _)| p.as_str().to_string()).collect();
    assert!(
        fields.iter().any(|f| f.contains("values")),
        "values rules are operator-only: {fields:?}"
    );
}
