//! GitOps fit: kstatus-style status that `kubectl wait --for=condition=Ready` understands, and
//! the Argo CD health check (docs/argocd-health.lua) run by a real Lua interpreter against
//! objects the operator reconciled.

mod common;

use std::process::Command;

use common::{TestEnv, eventually, repo};
use hotconf::crd::{PoolBudget, RuntimeConfig};
use hotconf::kinds::ConfigResource;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use serde_json::{Value, json};

/// A JSON value as a Lua table constructor.
fn to_lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        // Rust escapes (\n, \", \u{..}) are Lua 5.4 escapes too.
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(to_lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("[{k:?}] = {}", to_lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Runs the health check on an object; returns (status, message).
fn health(object: &Value) -> (String, String) {
    let check = std::fs::read_to_string(repo().join("docs/argocd-health.lua")).unwrap();
    let script = format!(
        "local obj = {}\nlocal function check()\n{check}\nend\nlocal hs = check()\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        to_lua(object)
    );
    let out = Command::new("lua5.4")
        .arg("-e")
        .arg(&script)
        .output()
        .expect("lua5.4 (hack/test-deps.sh installs it)");
    assert!(
        out.status.success(),
        "lua failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    (status.to_string(), message.to_string())
}

async fn settled<K: ConfigResource>(env: &TestEnv, name: &str, pred: impl Fn(&K) -> bool) -> Value {
    let api: Api<K> = Api::namespaced(env.client.clone(), &env.ns);
    let pred = &pred;
    let obj = eventually(60, name, || {
        let api = api.clone();
        async move {
            api.get_opt(name).await.unwrap().filter(|o| {
                o.config_status().and_then(|s| s.observed_generation) == o.meta().generation
                    && pred(o)
            })
        }
    })
    .await;
    serde_json::to_value(obj).unwrap()
}

fn condition<K: ConfigResource>(o: &K, type_: &str, status: &str) -> bool {
    o.config_status().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == type_ && c.status == status)
    })
}

#[tokio::test]
async fn argo_health_and_kubectl_wait_read_the_status() {
    let env = TestEnv::new("gitops").await;
    let _operator = env.start_operator();
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: healthy}\nspec:\n  values: {v: 1}\n",
    );
    env.kubectl(&[
        "apply",
        "-f",
        &repo().join("examples/invalid.yaml").display().to_string(),
    ]);
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: pinned}\nspec:\n  values: {v: 1}\n",
    );
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: PoolBudget\nmetadata: {name: held}\nspec:\n  paused: true\n",
    );

    // kubectl wait understands the Ready condition.
    let waited = env.kubectl_raw(&[
        "wait",
        "--for=condition=Ready",
        "rtc/healthy",
        "--timeout=60s",
    ]);
    assert!(
        waited.status.success(),
        "{}",
        String::from_utf8_lossy(&waited.stderr)
    );
    let refused = env.kubectl_raw(&[
        "wait",
        "--for=condition=Ready",
        "rtc/broken-config",
        "--timeout=3s",
    ]);
    assert!(
        !refused.status.success(),
        "an invalid object never becomes Ready"
    );

    let healthy =
        settled::<RuntimeConfig>(&env, "healthy", |o| condition(o, "Ready", "True")).await;
    assert_eq!(health(&healthy).0, "Healthy");

    let invalid =
        settled::<RuntimeConfig>(&env, "broken-config", |o| condition(o, "Valid", "False")).await;
    let (status, message) = health(&invalid);
    assert_eq!(status, "Degraded");
    assert!(message.contains("spec.values.check_interval"), "{message}");

    let paused = settled::<PoolBudget>(&env, "held", |o| condition(o, "Paused", "True")).await;
    assert_eq!(health(&paused).0, "Suspended");

    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    settled::<RuntimeConfig>(&env, "pinned", |o| condition(o, "Ready", "True")).await;
    rtcs.patch(
        "pinned",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"values": {"v": 2}}})),
    )
    .await
    .unwrap();
    settled::<RuntimeConfig>(&env, "pinned", |o| {
        o.status.as_ref().and_then(|s| s.current_revision) == Some(2)
    })
    .await;
    env.kubectl(&["annotate", "rtc/pinned", "hotconf.dev/rollback-to=1"]);
    let rolled =
        settled::<RuntimeConfig>(&env, "pinned", |o| condition(o, "RolledBack", "True")).await;
    let (status, message) = health(&rolled);
    assert_eq!(status, "Suspended");
    assert!(message.contains("revision 1"), "{message}");

    // A spec change the operator has not seen yet is Progressing.
    let mut stale = healthy.clone();
    stale["metadata"]["generation"] =
        json!(healthy["metadata"]["generation"].as_i64().unwrap() + 1);
    assert_eq!(health(&stale).0, "Progressing");
    let mut fresh = healthy;
    fresh.as_object_mut().unwrap().remove("status");
    assert_eq!(health(&fresh).0, "Progressing");
}
