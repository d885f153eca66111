//! Tests of the effective document, its formats, hashes and key diffs.

use super::*;
use crate::crd::{FeatureFlag, Maintenance, Parameter};

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn lazy_loading() -> RuntimeConfigSpec {
    use ParamType::*;
    RuntimeConfigSpec::default()
        .with_param(
            "check_interval",
            Parameter::test(Number).with_default(json!(60)),
        )
        .with_param(
            "worker_threads",
            Parameter::test(Integer)
                .with_default(json!(4))
                .restart_only(),
        )
        .with_param("db_password", Parameter::test(String).sensitive())
        .with_value("check_interval", json!(30.0))
        .with_secret("db_password", "shop-db", "password")
        .with_flag(
            "new_ui",
            FeatureFlag {
                rollout_percentage: Some(25),
                allow: vec!["user-1".into()],
                ..FeatureFlag::test()
            },
        )
}

fn secrets() -> BTreeMap<String, ResolvedSecret> {
    BTreeMap::from([(
        "db_password".to_string(),
        ResolvedSecret {
            value: "hunter2-unique".into(),
            salt: "uid-1".into(),
        },
    )])
}

#[test]
fn runtime_config_fills_defaults_and_keeps_secrets_out() {
    let eff = runtime_config(&lazy_loading(), &secrets(), now());
    assert_eq!(eff.document["values"]["check_interval"], json!(30));
    assert_eq!(eff.document["values"]["worker_threads"], json!(4));
    assert!(eff.document["values"].get("db_password").is_none());
    assert_eq!(
        eff.document["secrets"]["db_password"]["secretKeyRef"]["name"],
        "shop-db"
    );
    assert_eq!(eff.sensitive["db_password"], "hunter2-unique");
    assert!(!canonical_json(&eff.document).contains("hunter2"));
    assert_eq!(
        eff.document["featureFlags"]["new_ui"]["rolloutPercentage"],
        25
    );
    assert_eq!(eff.document["maintenance"]["enabled"], false);
    assert!(eff.restart_keys.contains("values.worker_threads"));
}

#[test]
fn rotated_secret_changes_the_hash() {
    let a = runtime_config(&lazy_loading(), &secrets(), now());
    let mut rotated = secrets();
    rotated.get_mut("db_password").unwrap().value = "other".into();
    let b = runtime_config(&lazy_loading(), &rotated, now());
    assert_ne!(hash(&a.document), hash(&b.document));
}

#[test]
fn maintenance_ends_at_until() {
    let spec = RuntimeConfigSpec {
        maintenance: Some(Maintenance {
            enabled: true,
            reason: "upgrade".into(),
            until: Some("2026-01-01T01:00:00Z".into()),
        }),
        ..Default::default()
    };
    let before = runtime_config(&spec, &BTreeMap::new(), now());
    assert_eq!(before.document["maintenance"]["enabled"], true);
    assert_eq!(
        before.next_change.unwrap().to_rfc3339(),
        "2026-01-01T01:00:00+00:00"
    );
    let after = runtime_config(&spec, &BTreeMap::new(), now() + chrono::Duration::hours(2));
    assert_eq!(after.document["maintenance"]["enabled"], false);
    assert_eq!(after.next_change, None);
    assert_ne!(hash(&before.document), hash(&after.document));
}

#[test]
fn pool_budget_is_complete_with_defaults() {
    let eff = pool_budget(&PoolBudgetSpec::default());
    let d = &eff.document;
    assert_eq!(d["metrics"]["maxConcurrentOperations"], 50);
    assert_eq!(d["metrics"]["maxMemoryMB"], 512);
    assert_eq!(d["metrics"]["backpressure"]["light"], json!(0.7));
    assert_eq!(d["pools"]["database"]["idleTimeout"], "10m");
    assert_eq!(d["pools"]["redis"]["retryDelay"], "100ms");
    assert_eq!(d["pools"]["http"]["maxKeepaliveConnections"], 20);
    assert_eq!(d["pools"]["cache"]["evictionPolicy"], "LRU");
    assert_eq!(flatten(d).len(), 28);
}

#[test]
fn canonical_json_sorts_and_normalizes() {
    let v = json!({"b": 1.0, "a": {"d": [2.50, 3], "c": "x"}});
    assert_eq!(canonical_json(&v), r#"{"a":{"c":"x","d":[2.5,3]},"b":1}"#);
    assert_eq!(
        hash(&v),
        hash(&json!({"a": {"d": [2.5, 3.0], "c": "x"}, "b": 1}))
    );
}

#[test]
fn formats() {
    let doc = json!({"values": {"check_interval": 30, "name": "a b=c", "ratio": 0.8},
                      "featureFlags": {"newUi": {"allow": ["u1"]}}});
    assert_eq!(
        render(&doc, Format::Json),
        "{\n  \"featureFlags\": {\n    \"newUi\": {\n      \"allow\": [\n        \"u1\"\n      ]\n    }\n  },\n  \"values\": {\n    \"check_interval\": 30,\n    \"name\": \"a b=c\",\n    \"ratio\": 0.8\n  }\n}\n"
    );
    assert_eq!(
        render(&doc, Format::Yaml),
        "featureFlags:\n  newUi:\n    allow:\n    - u1\nvalues:\n  check_interval: 30\n  name: a b=c\n  ratio: 0.8\n"
    );
    assert_eq!(
        render(&doc, Format::Properties),
        "featureFlags.newUi.allow.0=u1\nvalues.check_interval=30\nvalues.name=a b=c\nvalues.ratio=0.8\n"
    );
    assert_eq!(
        render(&doc, Format::Env),
        "FEATURE_FLAGS_NEW_UI_ALLOW_0=u1\nVALUES_CHECK_INTERVAL=30\nVALUES_NAME=\"a b=c\"\nVALUES_RATIO=0.8\n"
    );
    for f in [Format::Json, Format::Yaml] {
        assert_eq!(parse(&render(&doc, f), f).unwrap(), doc);
    }
}

#[test]
fn env_names() {
    assert_eq!(
        env_name("pools.database.maxConnections"),
        "POOLS_DATABASE_MAX_CONNECTIONS"
    );
    assert_eq!(env_name("metrics.maxMemoryMB"), "METRICS_MAX_MEMORY_MB");
    assert_eq!(env_name("values.check-interval"), "VALUES_CHECK_INTERVAL");
}

#[test]
fn properties_escape_keys_and_values() {
    assert_eq!(escape_properties("a b:c", true), "a\\ b\\:c");
    assert_eq!(escape_properties(" x\ny", false), "\\ x\\ny");
    assert_eq!(escape_properties("é", false), "\\u00e9");
}

#[test]
fn changed_keys_lists_leaves_and_whole_lists() {
    let a = json!({"values": {"x": 1, "y": 2}, "f": {"allow": ["a"]}});
    let b = json!({"values": {"x": 1, "y": 3, "z": 0}, "f": {"allow": ["a", "b"]}});
    assert_eq!(
        changed_keys(Some(&a), &b),
        vec!["f.allow", "values.y", "values.z"]
    );
    assert_eq!(
        changed_keys(None, &a),
        vec!["f.allow.0", "values.x", "values.y"]
    );
}

#[test]
fn restart_needed_matches_keys_and_children() {
    let keys: BTreeSet<String> = ["values.workers".to_string()].into();
    let changed = vec!["values.workers".to_string(), "values.other".to_string()];
    assert_eq!(restart_needed(&keys, &changed), vec!["values.workers"]);
}

proptest::proptest! {
    #[test]
    fn same_spec_same_bytes(
        values in proptest::collection::btree_map("[a-z_]{1,8}", proptest::prelude::any::<i32>(), 0..12),
        pct in 0i64..=100,
    ) {
        let mut spec = RuntimeConfigSpec::default();
        for (k, v) in &values {
            spec.values.insert(k.clone(), json!(v));
        }
        spec.feature_flags.insert("f".into(), FeatureFlag { enabled: true, rollout_percentage: Some(pct), ..Default::default() });
        let a = runtime_config(&spec, &BTreeMap::new(), now());
        // Built again from a clone with keys inserted in reverse order.
        let mut again = RuntimeConfigSpec { feature_flags: spec.feature_flags.clone(), ..Default::default() };
        for (k, v) in values.iter().rev() {
            again.values.insert(k.clone(), json!(*v as f64));
        }
        let b = runtime_config(&again, &BTreeMap::new(), now());
        proptest::prop_assert_eq!(canonical_json(&a.document), canonical_json(&b.document));
        for f in [Format::Yaml, Format::Json, Format::Properties, Format::Env] {
            proptest::prop_assert_eq!(render(&a.document, f), render(&b.document, f));
        }
        proptest::prop_assert_eq!(hash(&a.document), hash(&b.document));
    }
}
