//! The operator against the real control plane: projection of the examples, validation that
//! keeps bad specs from pods, snapshot history, rollback by annotation, write discipline across
//! restarts, garbage collection, and secrecy of sensitive values.

mod common;

use std::collections::BTreeMap;

use common::{TestEnv, eventually, repo};
use hotconf::crd::{ConfigStatus, Format, PoolBudget, RuntimeConfig, names};
use hotconf::document::{self, ResolvedSecret};
use hotconf::kinds::ConfigResource;
use hotconf::projection;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use serde_json::{Value, json};

fn condition<'a>(status: &'a ConfigStatus, type_: &str) -> Option<&'a hotconf::crd::Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

fn is(status: Option<&ConfigStatus>, type_: &str, value: &str) -> bool {
    status
        .and_then(|s| condition(s, type_))
        .is_some_and(|c| c.status == value)
}

/// Waits until the object satisfies `pred`, and returns it.
async fn wait_for<K: ConfigResource>(
    env: &TestEnv,
    name: &str,
    what: &str,
    pred: impl Fn(&K) -> bool,
) -> K {
    let api: Api<K> = Api::namespaced(env.client.clone(), &env.ns);
    let pred = &pred;
    eventually(60, &format!("{name}: {what}"), || {
        let api = api.clone();
        async move { api.get_opt(name).await.unwrap().filter(|o| pred(o)) }
    })
    .await
}

async fn ready_at<K: ConfigResource>(env: &TestEnv, name: &str, revision: i64) -> K {
    wait_for(
        env,
        name,
        &format!("Ready at revision {revision}"),
        |o: &K| {
            let s = o.config_status();
            is(s, "Ready", "True")
                && s.and_then(|s| s.current_revision) == Some(revision)
                && s.and_then(|s| s.observed_generation) == o.meta().generation
        },
    )
    .await
}

async fn config_map(env: &TestEnv, name: &str) -> ConfigMap {
    Api::<ConfigMap>::namespaced(env.client.clone(), &env.ns)
        .get(name)
        .await
        .unwrap()
}

async fn events(env: &TestEnv, object: &str) -> Vec<(String, String, String)> {
    Api::<Event>::namespaced(env.client.clone(), &env.ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

async fn wait_event(env: &TestEnv, object: &str, reason: &str) -> String {
    eventually(30, &format!("a {reason} event on {object}"), || async {
        events(env, object)
            .await
            .into_iter()
            .find(|(_, r, _)| r == reason)
            .map(|(_, _, note)| note)
    })
    .await
}

async fn wait_note(env: &TestEnv, object: &str, reason: &str, text: &str) -> String {
    eventually(
        30,
        &format!("a {reason} event on {object} saying {text}"),
        || async {
            events(env, object)
                .await
                .into_iter()
                .find(|(_, r, note)| r == reason && note.contains(text))
                .map(|(_, _, note)| note)
        },
    )
    .await
}

fn example(name: &str) -> String {
    repo()
        .join("examples")
        .join(format!("{name}.yaml"))
        .display()
        .to_string()
}

/// Checks the stamp every projected object carries.
fn assert_stamped<K: ConfigResource>(cm: &ConfigMap, owner: &K, revision: i64, hash: &str) {
    let owners = cm.metadata.owner_references.clone().unwrap_or_default();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(owners[0].uid, owner.uid().unwrap());
    assert_eq!(owners[0].kind, K::KIND);
    assert_eq!(owners[0].controller, Some(true));
    let labels = cm.labels();
    assert_eq!(labels[names::MANAGED_BY], "hotconf");
    assert_eq!(labels[names::OWNER_KIND], K::KIND);
    assert_eq!(labels[names::OWNER_NAME], owner.name_any());
    assert_eq!(cm.annotations()[names::REVISION], revision.to_string());
    assert_eq!(cm.annotations()[names::HASH], hash);
    // The same identity in the data, for agents that only see the mounted volume.
    let meta = cm.data.as_ref().unwrap()[projection::META_KEY].as_str();
    let meta = projection::Meta::parse(meta).unwrap();
    assert_eq!((meta.revision, meta.hash.as_str()), (revision, hash));
    assert_eq!((meta.kind.as_str(), meta.name), (K::KIND, owner.name_any()));
    assert!(cm.data.as_ref().unwrap().contains_key(&meta.file_name));
    assert!(
        cm.metadata
            .managed_fields
            .iter()
            .flatten()
            .any(|m| m.manager.as_deref() == Some("hotconf")
                && m.operation.as_deref() == Some("Apply")),
        "written by server-side apply as hotconf"
    );
}

#[tokio::test]
async fn examples_are_projected_with_defaults_filled_in() {
    let env = TestEnv::new("examples").await;
    let _operator = env.start_operator();
    for name in [
        "lazy-loading",
        "trading-bot",
        "feature-flags",
        "pool-budget",
    ] {
        env.kubectl(&["apply", "-f", &example(name)]);
    }

    // lazy-loading: YAML, schema defaults, a sensitive value through valuesFrom.
    let rtc: RuntimeConfig = ready_at(&env, "lazy-loading", 1).await;
    let cm = config_map(&env, "lazy-loading-config").await;
    let doc: Value = serde_yaml::from_str(&cm.data.as_ref().unwrap()["config.yaml"]).unwrap();
    assert_eq!(doc["values"]["check_interval"], json!(30));
    assert_eq!(doc["values"]["strategy"], "AGGRESSIVE");
    assert_eq!(doc["values"]["memory_pressure_threshold"], json!(0.8));
    assert_eq!(doc["values"]["worker_threads"], json!(4));
    assert_eq!(doc["values"]["idle_timeout"], "5m");
    assert_eq!(doc["values"]["preload_modules"], json!(["core", "auth"]));
    assert!(doc["values"].get("db_password").is_none());
    assert_eq!(
        doc["secrets"]["db_password"]["secretKeyRef"],
        json!({"name": "lazy-loading-db", "key": "password"})
    );
    let source: Secret = Api::namespaced(env.client.clone(), &env.ns)
        .get("lazy-loading-db")
        .await
        .unwrap();
    let secrets = BTreeMap::from([(
        "db_password".to_string(),
        ResolvedSecret {
            value: "change-me-in-real-life".into(),
            salt: source.uid().unwrap(),
        },
    )]);
    let expected = document::runtime_config(&rtc.spec, &secrets, chrono::Utc::now());
    assert_eq!(
        doc, expected.document,
        "the projected document is the effective one"
    );
    let hash = document::hash(&expected.document);
    assert_stamped(&cm, &rtc, 1, &hash);
    let status = rtc.status.as_ref().unwrap();
    assert!(is(Some(status), "Valid", "True"));
    assert_eq!(status.current_hash.as_deref(), Some(hash.as_str()));
    assert_eq!(status.history.len(), 1);
    assert_eq!(
        status.history[0].reason.as_deref(),
        Some("initial settings")
    );
    assert_eq!(
        status.history[0].changed_by.as_deref(),
        Some("kubectl-client-side-apply")
    );
    let projected: Secret = Api::namespaced(env.client.clone(), &env.ns)
        .get("lazy-loading-config")
        .await
        .unwrap();
    assert_eq!(
        projected.data.unwrap()["db_password"].0,
        b"change-me-in-real-life"
    );
    // The metadata key names the requiresRestart paths for the client's pending_restart().
    let meta = projection::Meta::parse(&cm.data.as_ref().unwrap()[projection::META_KEY]).unwrap();
    assert_eq!(meta.restart_keys, ["values.worker_threads"]);
    let note = wait_event(&env, "lazy-loading", "Projected").await;
    assert!(note.contains("revision 1"), "{note}");

    // trading-bot: JSON with the default file name.
    let rtc: RuntimeConfig = ready_at(&env, "trading-bot", 1).await;
    let cm = config_map(&env, "trading-bot").await;
    let expected = document::runtime_config(&rtc.spec, &BTreeMap::new(), chrono::Utc::now());
    let text = &cm.data.as_ref().unwrap()["config.json"];
    assert_eq!(text, &document::render(&expected.document, Format::Json));
    let doc: Value = serde_json::from_str(text).unwrap();
    assert_eq!(doc["values"]["base_currency"], "USD");
    assert_eq!(doc["values"]["order_timeout"], "30s");
    assert_eq!(
        doc["values"]["symbols"],
        json!(["BTC-USD", "ETH-USD", "SOL-USD"])
    );
    assert_stamped(&cm, &rtc, 1, &document::hash(&expected.document));
    wait_event(&env, "trading-bot", "Projected").await;

    // feature-flags: properties, flattened keys, a maintenance window that is open until its
    // `until` (which the wall clock decides, not the year this test was written in).
    let rtc: RuntimeConfig = ready_at(&env, "storefront-flags", 1).await;
    let cm = config_map(&env, "storefront-flags").await;
    let data = cm.data.as_ref().unwrap();
    assert_eq!(data["featureFlags.new_ui.rolloutPercentage"], "25");
    assert_eq!(data["featureFlags.new_ui.allow.0"], "user-1");
    let maintenance = rtc.spec.maintenance.as_ref().unwrap();
    let until =
        chrono::DateTime::parse_from_rfc3339(maintenance.until.as_deref().unwrap()).unwrap();
    let open = maintenance.enabled && until > chrono::Utc::now();
    assert_eq!(data["maintenance.enabled"], open.to_string());
    let props = &data["config.properties"];
    assert!(
        props.contains("featureFlags.legacy_checkout.enabled=false\n"),
        "{props}"
    );
    assert!(
        props.contains("maintenance.reason=database migration\n"),
        "{props}"
    );
    let expected = document::runtime_config(&rtc.spec, &BTreeMap::new(), chrono::Utc::now());
    assert_stamped(&cm, &rtc, 1, &document::hash(&expected.document));
    wait_event(&env, "storefront-flags", "Projected").await;

    // pool-budget: env format, complete with defaults.
    let pb: PoolBudget = ready_at(&env, "order-service", 1).await;
    let cm = config_map(&env, "order-service-pools").await;
    let env_text = &cm.data.as_ref().unwrap()["config.env"];
    let expected = document::pool_budget(&pb.spec);
    assert_eq!(env_text, &document::render(&expected.document, Format::Env));
    for line in [
        "POOLS_DATABASE_MAX_CONNECTIONS=40",
        "POOLS_CACHE_EVICTION_POLICY=LFU",
        "METRICS_MAX_REQUEST_RATE_PER_MINUTE=300",
        "POOLS_REDIS_MIN_CONNECTIONS=5",
        "POOLS_HTTP_KEEPALIVE_EXPIRY=5s",
        "METRICS_BACKPRESSURE_LIGHT=0.6",
    ] {
        assert!(
            env_text.lines().any(|l| l == line),
            "{line} missing in:\n{env_text}"
        );
    }
    assert_stamped(&cm, &pb, 1, &document::hash(&expected.document));
    wait_event(&env, "order-service", "Projected").await;
}

#[tokio::test]
async fn invalid_updates_never_reach_the_configmap() {
    let env = TestEnv::new("invalid").await;
    let _operator = env.start_operator();
    let pbs: Api<PoolBudget> = Api::namespaced(env.client.clone(), &env.ns);
    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: PoolBudget\nmetadata: {name: pools}\nspec:\n  pools: {database: {minConnections: 2, maxConnections: 10}}\n",
    );
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: app}\nspec:\n  schema:\n    mode: {type: string, enum: [FAST, SAFE], default: SAFE}\n  values: {mode: FAST}\n",
    );
    let _: PoolBudget = ready_at(&env, "pools", 1).await;
    let _: RuntimeConfig = ready_at(&env, "app", 1).await;
    let pool_cm = config_map(&env, "pools").await;
    let app_cm = config_map(&env, "app").await;

    // Mistakes the CRD's rules catch: the API server refuses the update, naming each field,
    // and nothing changes. (On a server without CEL the operator's layer catches them: see
    // tests/legacy_server.rs.)
    let refused = pbs
        .patch(
            "pools",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "metrics": {"backpressure": {"light": 0.9, "moderate": 0.8}},
                "pools": {"database": {"minConnections": 30, "maxConnections": 10}}
            }})),
        )
        .await
        .expect_err("the API server refuses what the CRD's rules forbid");
    let kube::Error::Api(status) = refused else {
        panic!("not an API refusal: {refused}")
    };
    let fields: Vec<&str> = status
        .details
        .iter()
        .flat_map(|d| d.causes.iter().map(|c| c.field.as_str()))
        .collect();
    assert!(
        fields.contains(&"spec.metrics.backpressure.light")
            && fields.contains(&"spec.pools.database.minConnections"),
        "{status:?}"
    );

    // Mistakes only the operator can see (values are free-form JSON): stored, then judged.
    rtcs.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"values": {"mode": "TURBO", "api_key": "sk-literal-123"},
                                       "schema": {"api_key": {"type": "string"}}}}),
        ),
    )
    .await
    .unwrap();
    let rtc: RuntimeConfig = wait_for(&env, "app", "Valid=False", |o: &RuntimeConfig| {
        is(o.status.as_ref(), "Valid", "False")
            && o.status.as_ref().unwrap().observed_generation == o.metadata.generation
    })
    .await;
    let message = &condition(rtc.status.as_ref().unwrap(), "Valid")
        .unwrap()
        .message;
    assert!(message.contains("spec.values.mode"), "{message}");
    assert!(message.contains("TURBO"), "{message}");
    assert!(message.contains("spec.values.api_key"), "{message}");
    assert!(message.contains("secretKeyRef"), "{message}");
    assert!(
        !message.contains("sk-literal-123"),
        "a credential is never echoed: {message}"
    );
    let note = wait_event(&env, "app", "ValidationFailed").await;
    assert!(note.contains("spec.values.mode"), "{note}");

    // Nothing reached the ConfigMaps, and no revision was added.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!(config_map(&env, "pools").await.data, pool_cm.data);
    assert_eq!(config_map(&env, "app").await.data, app_cm.data);
    assert_eq!(
        config_map(&env, "app").await.resource_version(),
        app_cm.resource_version()
    );
    let status = rtc.status.unwrap();
    assert_eq!(status.history.len(), 1);
    assert_eq!(status.current_revision, Some(1));
    assert!(is(Some(&status), "Ready", "False"));
    let pb: PoolBudget = pbs.get("pools").await.unwrap();
    assert_eq!(
        pb.metadata.generation,
        Some(1),
        "the refused update stored nothing"
    );

    // Fixed: the next revision is projected and Valid=True again.
    rtcs.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"values": {"mode": "SAFE", "api_key": null},
                                      "schema": {"api_key": null}}})),
    )
    .await
    .unwrap();
    let rtc: RuntimeConfig = ready_at(&env, "app", 2).await;
    assert!(is(rtc.status.as_ref(), "Valid", "True"));
    // Each message is an Event of its own (`kubectl describe` shows what happened last), not a
    // series counted under the first one's note.
    wait_note(&env, "app", "Projected", "revision 2").await;
    wait_note(&env, "app", "Projected", "revision 1").await;
    rtcs.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"values": {"mode": "WARP"}}})),
    )
    .await
    .unwrap();
    let note = wait_note(&env, "app", "ValidationFailed", "WARP").await;
    assert!(!note.contains("TURBO"), "{note}");
    rtcs.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"values": {"mode": "SAFE"}}})),
    )
    .await
    .unwrap();
    let _: RuntimeConfig = wait_for(&env, "app", "Valid=True", |o: &RuntimeConfig| {
        is(o.status.as_ref(), "Valid", "True")
            && o.status.as_ref().unwrap().observed_generation == o.metadata.generation
    })
    .await;
    pbs.patch(
        "pools",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "metrics": {"backpressure": {"light": 0.5, "moderate": 0.8}},
            "pools": {"database": {"minConnections": 3, "maxConnections": 30}}
        }})),
    )
    .await
    .unwrap();
    let pb: PoolBudget = ready_at(&env, "pools", 2).await;
    assert!(is(pb.status.as_ref(), "Valid", "True"));
    let env_cm = config_map(&env, "pools").await;
    let doc: Value = serde_yaml::from_str(&env_cm.data.unwrap()["config.yaml"]).unwrap();
    assert_eq!(doc["pools"]["database"]["maxConnections"], json!(30));
    assert_eq!(doc["metrics"]["backpressure"]["light"], json!(0.5));
}

#[tokio::test]
async fn history_keeps_the_newest_revisions_within_count_and_bytes() {
    let env = TestEnv::new("history").await;
    let _operator = env.start_operator();
    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: counted}\nspec:\n  revisionHistoryLimit: 3\n  values: {n: 1}\n",
    );
    let _: RuntimeConfig = ready_at(&env, "counted", 1).await;
    for n in 2..=10 {
        rtcs.patch(
            "counted",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"values": {"n": n}}})),
        )
        .await
        .unwrap();
        let _: RuntimeConfig = ready_at(&env, "counted", n).await;
    }
    let rtc = rtcs.get("counted").await.unwrap();
    let history = rtc.status.unwrap().history;
    assert_eq!(
        history.iter().map(|s| s.revision).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    assert_eq!(history[2].document.value()["values"]["n"], json!(10));
    assert_eq!(history[2].changed_keys, vec!["values.n"]);

    // Big documents: the history stays within its byte budget, the current revision kept.
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: big}\nspec:\n  values: {blob: start}\n",
    );
    let _: RuntimeConfig = ready_at(&env, "big", 1).await;
    for n in 2..=8 {
        let blob = format!("{n}-{}", "x".repeat(60_000));
        rtcs.patch(
            "big",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"values": {"blob": blob}}})),
        )
        .await
        .unwrap();
        let _: RuntimeConfig = ready_at(&env, "big", n).await;
    }
    let history = rtcs.get("big").await.unwrap().status.unwrap().history;
    let bytes = serde_json::to_vec(&history).unwrap().len();
    assert!(
        bytes <= hotconf::history::HISTORY_BYTE_BUDGET,
        "{bytes} bytes"
    );
    assert!(
        history.len() < 8 && history.len() >= 3,
        "{} entries",
        history.len()
    );
    assert_eq!(history.last().unwrap().revision, 8);
}

#[tokio::test]
async fn rollback_by_annotation_pins_and_releases() {
    let env = TestEnv::new("rollback").await;
    let _operator = env.start_operator();
    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: svc}\nspec:\n  values: {level: one}\n",
    );
    let _: RuntimeConfig = ready_at(&env, "svc", 1).await;
    for (n, level) in [(2, "two"), (3, "three")] {
        rtcs.patch(
            "svc",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"values": {"level": level}}})),
        )
        .await
        .unwrap();
        let _: RuntimeConfig = ready_at(&env, "svc", n).await;
    }
    let before = rtcs.get("svc").await.unwrap();
    let level = |cm: &ConfigMap| -> Value {
        let doc: Value = serde_yaml::from_str(&cm.data.as_ref().unwrap()["config.yaml"]).unwrap();
        doc["values"]["level"].clone()
    };

    // Pin revision 2: its content is projected, spec untouched.
    env.kubectl(&["annotate", "rtc/svc", "hotconf.dev/rollback-to=2"]);
    let pinned: RuntimeConfig = wait_for(&env, "svc", "pinned to 2", |o: &RuntimeConfig| {
        o.status
            .as_ref()
            .and_then(|s| s.rollback.as_ref())
            .map(|r| r.target_revision)
            == Some(2)
            && o.status.as_ref().unwrap().current_revision == Some(2)
    })
    .await;
    assert_eq!(pinned.spec, before.spec);
    assert_eq!(pinned.metadata.generation, before.metadata.generation);
    assert!(is(pinned.status.as_ref(), "RolledBack", "True"));
    let cm = config_map(&env, "svc").await;
    assert_eq!(level(&cm), json!("two"));
    assert_eq!(cm.annotations()[names::REVISION], "2");
    let note = wait_event(&env, "svc", "RolledBack").await;
    assert_eq!(
        note, "revision 2 pinned by hotconf.dev/rollback-to=2 (set by kubectl-annotate)",
        "the Event names who asked"
    );

    // Remove the annotation: the current spec is projected again, no new revision.
    env.kubectl(&["annotate", "rtc/svc", "hotconf.dev/rollback-to-"]);
    let released: RuntimeConfig = ready_at(&env, "svc", 3).await;
    assert!(released.status.as_ref().unwrap().rollback.is_none());
    assert_eq!(level(&config_map(&env, "svc").await), json!("three"));
    assert_eq!(released.status.unwrap().latest_revision, Some(3));

    // `previous` pins revision 2; a spec change while pinned releases it and drops the annotation.
    env.kubectl(&["annotate", "rtc/svc", "hotconf.dev/rollback-to=previous"]);
    let _: RuntimeConfig = wait_for(&env, "svc", "pinned to previous", |o: &RuntimeConfig| {
        o.status.as_ref().unwrap().current_revision == Some(2)
    })
    .await;
    assert_eq!(level(&config_map(&env, "svc").await), json!("two"));
    rtcs.patch(
        "svc",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"values": {"level": "four"}}})),
    )
    .await
    .unwrap();
    let moved: RuntimeConfig = ready_at(&env, "svc", 4).await;
    assert!(moved.status.as_ref().unwrap().rollback.is_none());
    let moved: RuntimeConfig = wait_for(&env, "svc", "annotation removed", |o: &RuntimeConfig| {
        !o.annotations().contains_key(names::ROLLBACK_TO)
    })
    .await;
    assert_eq!(level(&config_map(&env, "svc").await), json!("four"));
    let note = wait_event(&env, "svc", "RollbackReleased").await;
    assert!(!note.is_empty());
    assert!(is(moved.status.as_ref(), "RolledBack", "False"));

    // An unknown revision changes nothing and says so.
    let cm_before = config_map(&env, "svc").await;
    env.kubectl(&["annotate", "rtc/svc", "hotconf.dev/rollback-to=99"]);
    let missing: RuntimeConfig =
        wait_for(&env, "svc", "RollbackTargetMissing", |o: &RuntimeConfig| {
            o.status
                .as_ref()
                .and_then(|s| condition(s, "RolledBack"))
                .is_some_and(|c| c.reason == "RollbackTargetMissing")
        })
        .await;
    let note = wait_event(&env, "svc", "RollbackTargetMissing").await;
    assert!(note.contains("99"), "{note}");
    let cm_after = config_map(&env, "svc").await;
    assert_eq!(cm_after.data, cm_before.data);
    assert_eq!(cm_after.resource_version(), cm_before.resource_version());
    assert_eq!(missing.status.unwrap().current_revision, Some(4));
    let warnings: Vec<_> = events(&env, "svc")
        .await
        .into_iter()
        .filter(|(t, r, _)| t == "Warning" && r == "RollbackTargetMissing")
        .collect();
    assert_eq!(warnings.len(), 1, "one warning, not one per reconcile");
}

/// A restart over converged objects writes nothing and reads no projected object: each is
/// recognized as converged from the ConfigMaps' cached metadata (their data hash), not a GET
/// (Secrets are still read: the projected one, compared by its values, and those of valuesFrom).
#[tokio::test]
async fn an_operator_restart_writes_nothing_and_revisions_continue() {
    let env = TestEnv::new("restart").await;
    let mut operator = env.start_operator();
    for name in ["lazy-loading", "pool-budget", "feature-flags"] {
        env.kubectl(&["apply", "-f", &example(name)]);
    }
    let _: RuntimeConfig = ready_at(&env, "lazy-loading", 1).await;
    let _: PoolBudget = ready_at(&env, "order-service", 1).await;
    let _: RuntimeConfig = ready_at(&env, "storefront-flags", 1).await;
    // Let any trailing reconcile finish, then restart.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let writes = |env: &TestEnv| {
        env.plane
            .audit_writes(hotconf::dev::control_plane::OPERATOR_USER)
            .into_iter()
            .filter(|e| e.namespace == env.ns)
            .collect::<Vec<_>>()
    };
    let first_run = writes(&env);
    let kinds = |w: &[hotconf::dev::control_plane::AuditEntry], r: &str, sub: &str| {
        w.iter()
            .filter(|e| e.resource == r && e.subresource == sub)
            .count()
    };
    // One ConfigMap write and one status write per object (the Secret for lazy-loading).
    assert_eq!(kinds(&first_run, "configmaps", ""), 3, "{first_run:#?}");
    assert_eq!(kinds(&first_run, "secrets", ""), 1, "{first_run:#?}");
    assert_eq!(
        kinds(&first_run, "runtimeconfigs", "status"),
        2,
        "{first_run:#?}"
    );
    assert_eq!(
        kinds(&first_run, "poolbudgets", "status"),
        1,
        "{first_run:#?}"
    );
    operator.stop();

    let reads = |env: &TestEnv| {
        env.plane
            .audit_reads(hotconf::dev::control_plane::OPERATOR_USER)
            .into_iter()
            .filter(|e| e.namespace == env.ns && !e.name.is_empty())
            .collect::<Vec<_>>()
    };
    let reads_before = reads(&env).len();
    let port = common::free_port();
    let operator = env.start_operator_with(
        hotconf::dev::control_plane::OPERATOR_USER,
        &[format!("--admin-addr=127.0.0.1:{port}")],
    );
    // The restarted operator lists and reconciles every object (3), and must find nothing to
    // do.
    eventually(
        30,
        "the restarted operator to reconcile every object",
        || async {
            let metrics = common::http_get(&format!("127.0.0.1:{port}"), "/metrics").await?;
            let done: f64 = ["RuntimeConfig", "PoolBudget"]
                .iter()
                .filter_map(|kind| {
                    common::sample(
                        &metrics,
                        &format!("hotconf_reconciles_total{{kind=\"{kind}\",result=\"success\"}}"),
                    )
                })
                .sum();
            (done >= 3.0).then_some(())
        },
    )
    .await;
    let after = writes(&env);
    assert_eq!(
        after.len(),
        first_run.len(),
        "the restart wrote: {:#?}",
        &after[first_run.len()..]
    );
    let read = reads(&env)[reads_before..].to_vec();
    assert!(
        read.iter().all(|e| e.resource == "secrets"),
        "the restart read objects one by one: {read:#?}"
    );
    // lazy-loading's projected Secret and the Secret its valuesFrom reads, on each of its
    // reconciles (its listing and its projected objects' listings each trigger one).
    let secrets: std::collections::BTreeSet<&str> = read.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        secrets,
        ["lazy-loading-config", "lazy-loading-db"].into(),
        "{read:#?}"
    );

    // Revisions continue from where they were.
    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    rtcs.patch(
        "lazy-loading",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"values": {"check_interval": 45}}})),
    )
    .await
    .unwrap();
    let rtc: RuntimeConfig = ready_at(&env, "lazy-loading", 2).await;
    let revisions: Vec<i64> = rtc
        .status
        .unwrap()
        .history
        .iter()
        .map(|s| s.revision)
        .collect();
    assert_eq!(revisions, vec![1, 2]);
    drop(operator);
}

/// The projected ConfigMap edited by someone else is put back, whether the operator is running
/// (the edit's watch event) or not (a restart: the edit shows in its managedFields, so the
/// cached metadata does not stand for the data and the ConfigMap is read).
#[tokio::test]
async fn a_projected_configmap_edited_by_someone_else_is_put_back() {
    let env = TestEnv::new("edited").await;
    let operator = env.start_operator();
    env.kubectl(&["apply", "-f", &example("lazy-loading")]);
    let rtc: RuntimeConfig = ready_at(&env, "lazy-loading", 1).await;
    let name = rtc.status.unwrap().projected.unwrap().config_map;
    let projected = config_map(&env, &name).await;
    let key = projected
        .data
        .as_ref()
        .unwrap()
        .keys()
        .find(|k| !k.starts_with('.'))
        .unwrap()
        .clone();
    let want = projected.data.as_ref().unwrap()[&key].clone();
    let tamper = |env: &TestEnv, text: &str| {
        env.kubectl(&[
            "patch",
            "configmap",
            &name,
            "--type=merge",
            "-p",
            &json!({"data": {&key: text}}).to_string(),
        ]);
    };
    let put_back = || {
        eventually(30, "the projected data put back", || async {
            let cm = config_map(&env, &name).await;
            (cm.data.as_ref().unwrap()[&key] == want).then_some(())
        })
    };
    tamper(&env, "edited: while running");
    put_back().await;

    drop(operator);
    tamper(&env, "edited: while stopped");
    let _operator = env.start_operator();
    put_back().await;
}

#[tokio::test]
async fn deleting_a_config_removes_its_projection() {
    let env = TestEnv::new("gc").await;
    let _operator = env.start_operator();
    env.kubectl(&["apply", "-f", &example("pool-budget")]);
    let _: PoolBudget = ready_at(&env, "order-service", 1).await;
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    assert!(cms.get_opt("order-service-pools").await.unwrap().is_some());
    Api::<PoolBudget>::namespaced(env.client.clone(), &env.ns)
        .delete("order-service", &DeleteParams::default())
        .await
        .unwrap();
    eventually(60, "the ConfigMap to be garbage-collected", || async {
        cms.get_opt("order-service-pools")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn sensitive_values_appear_only_in_the_secret() {
    let env = TestEnv::new("secret").await;
    let operator = env.start_operator();
    let planted = format!("planted-{}", env.ns);
    env.apply_yaml(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: creds}}\nstringData: {{password: {planted}}}\n"
    ));
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: app}\nspec:\n  schema:\n    db_password: {type: string, sensitive: true, minLength: 4}\n    port: {type: integer, default: 5432}\n  valuesFrom:\n  - {key: db_password, secretKeyRef: {name: creds, key: password}}\n  target: {flatten: true}\n",
    );
    let rtc: RuntimeConfig = ready_at(&env, "app", 1).await;

    // A missing key is a validation error that names it, without any value.
    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    rtcs.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"valuesFrom": [{"key": "db_password", "secretKeyRef": {"name": "creds", "key": "nope"}}]}})),
    )
    .await
    .unwrap();
    let broken: RuntimeConfig = wait_for(&env, "app", "Valid=False", |o: &RuntimeConfig| {
        is(o.status.as_ref(), "Valid", "False")
    })
    .await;
    let message = &condition(broken.status.as_ref().unwrap(), "Valid")
        .unwrap()
        .message;
    assert!(
        message.contains("nope") && message.contains("creds"),
        "{message}"
    );
    // Rotating the Secret's value after fixing the reference makes a new revision.
    rtcs.patch(
        "app",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"valuesFrom": [{"key": "db_password", "secretKeyRef": {"name": "creds", "key": "password"}}]}})),
    )
    .await
    .unwrap();
    let _: RuntimeConfig = wait_for(&env, "app", "valid again", |o: &RuntimeConfig| {
        is(o.status.as_ref(), "Valid", "True")
            && o.status.as_ref().unwrap().observed_generation == o.metadata.generation
    })
    .await;
    env.apply_yaml(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: creds}}\nstringData: {{password: {planted}-rotated}}\n"
    ));
    let rotated: RuntimeConfig = ready_at(&env, "app", 2).await;
    assert_eq!(rotated.status.as_ref().unwrap().history.len(), 2);

    let secret: Secret = Api::namespaced(env.client.clone(), &env.ns)
        .get("app")
        .await
        .unwrap();
    assert_eq!(
        secret.data.unwrap()["db_password"].0,
        format!("{planted}-rotated").as_bytes()
    );
    let cm = config_map(&env, "app").await;
    let everywhere = [
        serde_json::to_string(&cm).unwrap(),
        serde_json::to_string(&rotated).unwrap(),
        serde_json::to_string(&events(&env, "app").await).unwrap(),
        std::fs::read_to_string(operator.log()).unwrap(),
    ];
    for (i, text) in everywhere.iter().enumerate() {
        assert!(
            !text.contains(&planted),
            "the planted secret leaked into place {i}"
        );
    }
    assert_eq!(
        rtc.status.unwrap().history[0].document.value()["values"]["port"],
        json!(5432)
    );
}

#[tokio::test]
async fn the_invalid_example_reports_every_error() {
    let env = TestEnv::new("invalid-example").await;
    let _operator = env.start_operator();
    env.kubectl(&["apply", "-f", &example("invalid")]);
    let rtc: RuntimeConfig = wait_for(&env, "broken-config", "Valid=False", |o: &RuntimeConfig| {
        is(o.status.as_ref(), "Valid", "False")
    })
    .await;
    let status = rtc.status.unwrap();
    let message = &condition(&status, "Valid").unwrap().message;
    for part in [
        "spec.values.check_interval",
        "spec.values.strategy",
        "spec.values.unknown_key",
        "spec.featureFlags.new_ui.deny[0]",
    ] {
        assert!(message.contains(part), "{part} not in {message}");
    }
    assert!(is(Some(&status), "Ready", "False"));
    assert!(status.history.is_empty());
    assert!(status.current_revision.is_none());
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    assert!(cms.get_opt("broken-config").await.unwrap().is_none());
    wait_event(&env, "broken-config", "ValidationFailed").await;
}

#[tokio::test]
async fn maintenance_ends_by_itself_at_until() {
    let env = TestEnv::new("maintenance").await;
    let _operator = env.start_operator();
    let until = (chrono::Utc::now() + chrono::Duration::seconds(4))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    env.apply_yaml(&format!(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {{name: shop}}\nspec:\n  maintenance: {{enabled: true, reason: upgrade, until: \"{until}\"}}\n"
    ));
    let _: RuntimeConfig = ready_at(&env, "shop", 1).await;
    let on: Value =
        serde_yaml::from_str(&config_map(&env, "shop").await.data.unwrap()["config.yaml"]).unwrap();
    assert_eq!(on["maintenance"]["enabled"], json!(true));
    // Nobody touches the object: the operator's own timer projects revision 2.
    let rtc: RuntimeConfig = ready_at(&env, "shop", 2).await;
    let off: Value =
        serde_yaml::from_str(&config_map(&env, "shop").await.data.unwrap()["config.yaml"]).unwrap();
    assert_eq!(off["maintenance"]["enabled"], json!(false));
    assert_eq!(off["maintenance"]["reason"], "upgrade");
    let history = rtc.status.unwrap().history;
    assert_eq!(history[1].changed_keys, vec!["maintenance.enabled"]);
    assert_eq!(history[1].reason.as_deref(), Some("MaintenanceEnded"));
    assert_eq!(history[1].changed_by.as_deref(), Some("hotconf"));
    assert_eq!(history[1].generation, history[0].generation);
}

#[tokio::test]
async fn paused_specs_are_recorded_but_not_projected() {
    let env = TestEnv::new("paused").await;
    let _operator = env.start_operator();
    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: held}\nspec:\n  values: {v: 1}\n",
    );
    let _: RuntimeConfig = ready_at(&env, "held", 1).await;
    let cm_before = config_map(&env, "held").await;
    rtcs.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": true, "values": {"v": 2}}})),
    )
    .await
    .unwrap();
    let paused: RuntimeConfig = wait_for(&env, "held", "Paused=True", |o: &RuntimeConfig| {
        is(o.status.as_ref(), "Paused", "True")
    })
    .await;
    let status = paused.status.unwrap();
    assert_eq!(status.latest_revision, Some(2), "the revision is recorded");
    assert_eq!(status.current_revision, Some(1), "but not projected");
    assert_eq!(condition(&status, "Ready").unwrap().reason, "Paused");
    assert_eq!(
        config_map(&env, "held").await.resource_version(),
        cm_before.resource_version()
    );
    rtcs.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"paused": false}})),
    )
    .await
    .unwrap();
    let resumed: RuntimeConfig = ready_at(&env, "held", 2).await;
    assert_eq!(resumed.status.unwrap().history.len(), 2);
}

/// Found by an acceptance run: a RuntimeConfig named after its own `valuesFrom` Secret took that
/// Secret over as its projection (controller ownerReference, merged keys), and deleting the CR
/// garbage-collected the user's credential. A Secret of the target's name that the CR does not
/// control is a conflict, as a ConfigMap is: never read, written or deleted.
#[tokio::test]
async fn a_secret_the_object_does_not_control_is_never_taken_over() {
    let env = TestEnv::new("secret-taken").await;
    let _operator = env.start_operator();
    env.apply_yaml(
        "apiVersion: v1\nkind: Secret\nmetadata: {name: rot}\nstringData: {pw: s3cr3t-value}\n",
    );
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: rot}\nspec:\n  schema: {db_password: {type: string, sensitive: true}}\n  valuesFrom: [{key: db_password, secretKeyRef: {name: rot, key: pw}}]\n",
    );
    let refused: RuntimeConfig = wait_for(&env, "rot", "TargetConflict", |o: &RuntimeConfig| {
        o.status
            .as_ref()
            .and_then(|s| condition(s, "Ready"))
            .is_some_and(|c| c.reason == "TargetConflict" && c.message.contains("Secret rot"))
    })
    .await;
    assert!(is(refused.status.as_ref(), "Ready", "False"));
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let untouched = secrets.get("rot").await.unwrap();
    assert!(
        untouched.metadata.owner_references.is_none(),
        "{:?}",
        untouched.metadata
    );
    let keys: Vec<_> = untouched.data.unwrap().into_keys().collect();
    assert_eq!(keys, ["pw"]);
    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    rtcs.delete("rot", &Default::default()).await.unwrap();
    eventually(20, "the RuntimeConfig to go", || async {
        rtcs.get_opt("rot").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(
        secrets.get_opt("rot").await.unwrap().is_some(),
        "the user's Secret stays"
    );
}

#[tokio::test]
async fn renaming_the_target_moves_the_projection() {
    let env = TestEnv::new("rename").await;
    let _operator = env.start_operator();
    let pbs: Api<PoolBudget> = Api::namespaced(env.client.clone(), &env.ns);
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: PoolBudget\nmetadata: {name: pools}\nspec:\n  target: {configMapName: old-name}\n",
    );
    let _: PoolBudget = ready_at(&env, "pools", 1).await;
    // A ConfigMap the operator does not own is never taken over.
    env.apply_yaml(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: users-own}\ndata: {keep: me}\n",
    );
    pbs.patch(
        "pools",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"target": {"configMapName": "users-own"}}})),
    )
    .await
    .unwrap();
    let refused: PoolBudget = wait_for(&env, "pools", "TargetConflict", |o: &PoolBudget| {
        o.status
            .as_ref()
            .and_then(|s| condition(s, "Ready"))
            .is_some_and(|c| c.reason == "TargetConflict")
    })
    .await;
    assert!(is(refused.status.as_ref(), "Ready", "False"));
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    assert_eq!(
        cms.get("users-own").await.unwrap().data.unwrap()["keep"],
        "me"
    );
    pbs.patch(
        "pools",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"target": {"configMapName": "new-name", "format": "json"}}})),
    )
    .await
    .unwrap();
    let moved: PoolBudget = wait_for(&env, "pools", "projected to new-name", |o: &PoolBudget| {
        o.status
            .as_ref()
            .and_then(|s| s.projected.as_ref())
            .is_some_and(|p| p.config_map == "new-name")
            && is(o.status.as_ref(), "Ready", "True")
    })
    .await;
    let cm = cms.get("new-name").await.unwrap();
    assert!(cm.data.unwrap().contains_key("config.json"));
    eventually(20, "the old ConfigMap to be deleted", || async {
        cms.get_opt("old-name")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    // The format changed, the document did not: the same revision, projected anew.
    assert_eq!(moved.status.unwrap().current_revision, Some(1));
}

#[tokio::test]
async fn echo_detection_and_changed_by_with_status_subresource_entries() {
    // Custom resources here are served with current semantics, which record
    // `subresource: status` in managedFields (tests/legacy_server.rs covers 1.20's entries).
    let env = TestEnv::new("echo").await;
    common::echo_detection_and_changed_by(&env, true).await;
}

/// Without the webhook, `hotconf.dev/changed-by` is only a claim: anyone who may edit the
/// object may write it (here with a made-up proof). History and the Projected Event name the
/// field manager that set the spec, and the reason written with the change.
#[tokio::test]
async fn a_changed_by_annotation_without_the_webhooks_proof_is_not_trusted() {
    let env = TestEnv::new("forged-author").await;
    let _operator = env.start_operator();
    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    let object = json!({
        "apiVersion": "hotconf.dev/v1alpha1", "kind": "RuntimeConfig",
        "metadata": {"name": "claimed", "annotations": {
            "hotconf.dev/changed-by": "the-cto",
            "hotconf.dev/changed-by-proof": "v1.bm90IGEgcHJvb2Y",
            "hotconf.dev/change-reason": "raise the limit"}},
        "spec": {"values": {"limit": 10}}});
    rtcs.patch(
        "claimed",
        &PatchParams::apply("release-bot"),
        &Patch::Apply(&object),
    )
    .await
    .unwrap();
    let rtc: RuntimeConfig = ready_at(&env, "claimed", 1).await;
    let entry = &rtc.status.unwrap().history[0];
    assert_eq!(entry.changed_by.as_deref(), Some("release-bot"));
    assert_eq!(entry.reason.as_deref(), Some("raise the limit"));
    let note = wait_event(&env, "claimed", "Projected").await;
    assert_eq!(
        note,
        "revision 1 projected to ConfigMap claimed (changed by release-bot: raise the limit)"
    );

    // The same manifest applied again with a new spec carries its reason again; a merge patch
    // of the spec alone by someone else does not inherit it (SPEC §5.4: the reason written
    // with that change).
    let mut next = object.clone();
    next["spec"]["values"]["limit"] = json!(20);
    rtcs.patch(
        "claimed",
        &PatchParams::apply("release-bot"),
        &Patch::Apply(&next),
    )
    .await
    .unwrap();
    let rtc: RuntimeConfig = ready_at(&env, "claimed", 2).await;
    let history = rtc.status.unwrap().history;
    assert_eq!(history[1].reason.as_deref(), Some("raise the limit"));
    rtcs.patch(
        "claimed",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"values": {"limit": 30}}})),
    )
    .await
    .unwrap();
    let rtc: RuntimeConfig = ready_at(&env, "claimed", 3).await;
    let history = rtc.status.unwrap().history;
    assert_eq!(history[2].reason, None, "{:?}", history[2]);
    assert_ne!(history[2].changed_by.as_deref(), Some("release-bot"));
}

/// Limits are met before the server would refuse a write: a spec with a thousand errors still
/// gets `Valid=False` (its message cut to fit the condition, the rest counted) and a Warning
/// Event within the Event's limit; a valid spec whose document is too large to keep in history
/// says so instead of failing its status write.
#[tokio::test]
async fn oversized_errors_and_documents_still_get_a_condition() {
    let env = TestEnv::new("limits").await;
    let _operator = env.start_operator();
    let mut schema = serde_json::Map::new();
    let mut values = serde_json::Map::new();
    for i in 0..1000 {
        let key = format!("a_parameter_with_a_rather_long_name_{i:04}");
        schema.insert(key.clone(), json!({"type": "integer"}));
        values.insert(key, json!("not a number"));
    }
    let spec = json!({"schema": schema, "values": values});
    let object = json!({"apiVersion": "hotconf.dev/v1alpha1", "kind": "RuntimeConfig",
                        "metadata": {"name": "many"}, "spec": spec});
    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    rtcs.patch("many", &PatchParams::apply("test"), &Patch::Apply(&object))
        .await
        .unwrap();
    let many: RuntimeConfig = wait_for(&env, "many", "Valid=False", |o: &RuntimeConfig| {
        is(o.status.as_ref(), "Valid", "False")
    })
    .await;
    let message = &condition(many.status.as_ref().unwrap(), "Valid")
        .unwrap()
        .message;
    assert!(message.chars().count() <= 32768, "{}", message.len());
    let (shown, note) = message.rsplit_once("; ").unwrap();
    let shown = shown.split("; ").count();
    assert_eq!(note, format!("… and {} more errors", 1000 - shown));
    let event = wait_event(&env, "many", "ValidationFailed").await;
    assert!(
        event.len() <= 1024 && event.ends_with("more errors"),
        "{event}"
    );

    let blob = "x".repeat(300 * 1024);
    let object = json!({"apiVersion": "hotconf.dev/v1alpha1", "kind": "RuntimeConfig",
                        "metadata": {"name": "huge"}, "spec": {"values": {"blob": blob}}});
    rtcs.patch("huge", &PatchParams::apply("test"), &Patch::Apply(&object))
        .await
        .unwrap();
    let huge: RuntimeConfig = wait_for(&env, "huge", "Valid=False", |o: &RuntimeConfig| {
        is(o.status.as_ref(), "Valid", "False")
    })
    .await;
    let status = huge.status.unwrap();
    let message = &condition(&status, "Valid").unwrap().message;
    assert!(
        message.contains("one revision may take in .status.history"),
        "{message}"
    );
    assert!(status.history.is_empty());
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    assert!(cms.get_opt("huge").await.unwrap().is_none());
}

/// Variant flags (SPEC.md §3.1) pass the real API server's schema, are projected as the
/// document the client resolves them from (targets, flagd's split, a switched-off object flag),
/// and a malformed one is reported whole.
#[tokio::test]
async fn variant_flags_are_projected_and_resolved() {
    use hotconf::feature_flags::{Resolved, fractional};
    let env = TestEnv::new("variants").await;
    let _operator = env.start_operator();
    env.kubectl(&["apply", "-f", &example("ab-test")]);
    let _: RuntimeConfig = ready_at(&env, "storefront-experiments", 1).await;
    let cm = config_map(&env, "storefront-experiments").await;
    let doc: Value = serde_json::from_str(&cm.data.unwrap()["config.json"]).unwrap();
    let config = hotconf::client::Config::options()
        .env_lookup(|_| None)
        .from_value(doc);
    let r = config
        .resolve_flag("checkout_flow", Some("beta-tester-1"))
        .unwrap();
    assert_eq!(
        (r.variant.as_str(), r.reason),
        ("streamlined", Resolved::TargetingMatch)
    );
    let weights = [("classic", 50), ("streamlined", 50)];
    for i in 0..100 {
        let subject = format!("shopper-{i}");
        let r = config
            .resolve_flag("checkout_flow", Some(&subject))
            .unwrap();
        assert_eq!(r.reason, Resolved::Split);
        assert_eq!(
            Some(r.variant.as_str()),
            fractional("checkout_flow", &subject, &weights)
        );
    }
    let pricing = config.resolve_flag("pricing", Some("shopper-1")).unwrap();
    assert_eq!(pricing.reason, Resolved::Disabled);
    assert_eq!(
        config.flag_value::<Value>("pricing", Some("shopper-1")),
        Some(json!({"currency": "EUR", "discount": 0}))
    );
    assert!(config.resolve_flag("nope", Some("x")).is_none());

    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: mixed}\nspec:\n  featureFlags:\n    f:\n      enabled: true\n      variants: {a: 1, b: \"two\"}\n      defaultVariant: c\n      fractional: {a: 0}\n",
    );
    let mixed: RuntimeConfig = wait_for(&env, "mixed", "Valid=False", |o: &RuntimeConfig| {
        is(o.status.as_ref(), "Valid", "False")
    })
    .await;
    let message = &condition(mixed.status.as_ref().unwrap(), "Valid")
        .unwrap()
        .message;
    for part in [
        "spec.featureFlags.f.variants.b",
        "spec.featureFlags.f.defaultVariant",
        "spec.featureFlags.f.fractional.a",
    ] {
        assert!(message.contains(part), "{part} not in {message}");
    }
}

/// A change to an object whose status this operator wrote last is projected before the object
/// is read again (the projection waits for no read); one whose cached status it cannot vouch
/// for (a restarted operator has written nothing yet) reads the object first. Both ways write
/// one ConfigMap and one status per change, and the revisions follow on.
#[tokio::test]
async fn a_change_after_our_own_write_is_projected_before_any_read() {
    use hotconf::dev::control_plane::{AuditEntry, OPERATOR_USER};
    let env = TestEnv::new("ahead").await;
    let operator = env.start_operator();
    env.kubectl(&["apply", "-f", &example("pool-budget")]);
    let _: PoolBudget = ready_at(&env, "order-service", 1).await;
    let requests = |env: &TestEnv| {
        let mut all: Vec<AuditEntry> = env.plane.audit_writes(OPERATOR_USER);
        all.extend(env.plane.audit_reads(OPERATOR_USER));
        // The object's and its ConfigMap's, not the Events'.
        all.retain(|e| {
            e.namespace == env.ns
                && !e.name.is_empty()
                && ["configmaps", "poolbudgets"].contains(&e.resource.as_str())
        });
        all.sort_by(|a, b| a.received.cmp(&b.received));
        all
    };
    let budgets: Api<PoolBudget> = Api::namespaced(env.client.clone(), &env.ns);
    let change = |connections: i64| {
        let budgets = budgets.clone();
        async move {
            let patch = json!({"spec": {"pools": {"database": {"maxConnections": connections}}}});
            budgets
                .patch(
                    "order-service",
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await
                .unwrap();
        }
    };
    // The requests of one change, in the order the API server received them.
    let requests_of = |before: &[AuditEntry], env: &TestEnv| -> Vec<String> {
        requests(env)
            .into_iter()
            .filter(|e| !before.contains(e))
            .map(|e| format!("{} {} {}", e.verb, e.resource, e.subresource))
            .map(|s| s.trim().to_string())
            .collect()
    };

    let before = requests(&env);
    change(41).await;
    let _: PoolBudget = ready_at(&env, "order-service", 2).await;
    assert_eq!(
        requests_of(&before, &env),
        [
            "patch configmaps",
            "get poolbudgets",
            "patch poolbudgets status"
        ],
        "projected first, then the object read for its status write"
    );

    drop(operator);
    let _operator = env.start_operator();
    let before = requests(&env);
    change(42).await;
    let budget: PoolBudget = ready_at(&env, "order-service", 3).await;
    let after = requests_of(&before, &env);
    let read = after.iter().position(|r| r == "get poolbudgets");
    let projected = after.iter().position(|r| r == "patch configmaps");
    assert!(
        read.is_some() && read < projected,
        "a restarted operator reads first: {after:?}"
    );
    assert_eq!(
        after.iter().filter(|r| r.starts_with("patch")).count(),
        2,
        "{after:?}"
    );
    let status = budget.status.unwrap();
    let revisions: Vec<i64> = status.history.iter().map(|s| s.revision).collect();
    assert_eq!(revisions, vec![1, 2, 3]);
    let cm = config_map(&env, &status.projected.unwrap().config_map).await;
    assert_eq!(
        projection::stamped(&cm.metadata).0,
        Some(3),
        "the ConfigMap carries the last revision"
    );
}
