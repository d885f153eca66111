//! The admission webhooks against the real API server, registered with a loopback `url:` and
//! the caBundle the operator publishes: refusals at `kubectl apply` and on dry runs,
//! attribution of spec changes, and certificates that survive restarts and renew themselves
//! without a refused request.

mod common;

use std::time::{Duration, Instant};

use common::{TestEnv, eventually, free_port, repo};
use hotconf::crd::RuntimeConfig;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;

/// Registers both webhooks for this test's namespace only (a namespace selector on a label),
/// pointing at 127.0.0.1:`port`, with no caBundle: the operator publishes it.
async fn register(env: &TestEnv, port: u16) -> String {
    let name = format!("hotconf-{}", env.ns);
    Api::<Namespace>::all(env.client.clone())
        .patch(
            &env.ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"hotconf-webhook-test": env.ns}}})),
        )
        .await
        .unwrap();
    let hook = |path: &str, hook_name: &str| {
        json!({
            "name": hook_name,
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/{path}")},
            "rules": [{
                "apiGroups": ["hotconf.dev"], "apiVersions": ["v1alpha1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["runtimeconfigs", "poolbudgets"], "scope": "Namespaced"
            }],
            "namespaceSelector": {"matchLabels": {"hotconf-webhook-test": env.ns}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5
        })
    };
    let validating: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [hook("validate", "validate.hotconf.dev")]
    }))
    .unwrap();
    let mutating: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [hook("mutate", "attribute.hotconf.dev")]
    }))
    .unwrap();
    Api::<ValidatingWebhookConfiguration>::all(env.client.clone())
        .create(&PostParams::default(), &validating)
        .await
        .unwrap();
    Api::<MutatingWebhookConfiguration>::all(env.client.clone())
        .create(&PostParams::default(), &mutating)
        .await
        .unwrap();
    name
}

fn operator_args(env: &TestEnv, port: u16, config: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--webhook".to_string(),
        format!("--webhook-addr=127.0.0.1:{port}"),
        "--webhook-extra-names=127.0.0.1,localhost".into(),
        format!("--webhook-namespace={}", env.ns),
        format!("--webhook-validating-config={config}"),
        format!("--webhook-mutating-config={config}"),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn rtc(name: &str, value: i64) -> RuntimeConfig {
    serde_json::from_value(json!({
        "apiVersion": "hotconf.dev/v1alpha1", "kind": "RuntimeConfig",
        "metadata": {"name": name},
        "spec": {"values": {"v": value}}
    }))
    .unwrap()
}

/// Waits until a dry-run create goes through the webhooks.
async fn serving(env: &TestEnv) {
    let api: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    eventually(60, "the webhook to answer", || {
        let api = api.clone();
        async move {
            api.create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &rtc("probe", 1),
            )
            .await
            .ok()
            .map(|_| ())
        }
    })
    .await;
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn invalid_objects_are_refused_at_apply_and_on_dry_run() {
    let env = TestEnv::new("webhook-refuse").await;
    let port = free_port();
    let config = register(&env, port).await;
    let _operator = env.start_operator_with(
        hotconf::dev::control_plane::OPERATOR_USER,
        &operator_args(&env, port, &config, &[]),
    );
    serving(&env).await;

    let invalid = repo().join("examples/invalid.yaml").display().to_string();
    for dry_run in [true, false] {
        let mut args = vec!["apply", "-f", invalid.as_str()];
        if dry_run {
            args.push("--dry-run=server");
        }
        let out = env.kubectl_raw(&args);
        assert!(!out.status.success(), "the invalid example was accepted");
        let err = stderr_of(&out);
        // Refused by the webhook (its rules are the operator's), not by the CRD's schema.
        for part in [
            "denied the request",
            "4 errors",
            "spec.values.check_interval",
            "spec.values.strategy",
            "spec.values.unknown_key",
            "spec.featureFlags.new_ui.deny[0]",
        ] {
            assert!(err.contains(part), "{part} missing from: {err}");
        }
    }
    let missing = env.kubectl_raw(&["get", "rtc", "broken-config"]);
    assert!(!missing.status.success(), "nothing was stored");

    // A literal credential and a Secret that does not exist.
    let bad = "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: creds}\nspec:\n  values: {api_key: sk-live-123}\n  valuesFrom:\n  - {key: db_password, secretKeyRef: {name: nowhere, key: password}}\n";
    let path = env.plane.dir().join(format!("bad-{}.yaml", env.ns));
    std::fs::write(&path, bad).unwrap();
    let out = env.kubectl_raw(&["apply", "--dry-run=server", "-f", path.to_str().unwrap()]);
    let err = stderr_of(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("spec.values.api_key") && err.contains("secretKeyRef"),
        "{err}"
    );
    assert!(
        err.contains("\\\"nowhere\\\" not found") || err.contains("\"nowhere\" not found"),
        "{err}"
    );
    assert!(!err.contains("sk-live-123"), "a credential is never echoed");

    // Valid objects pass, on a dry run and for real.
    let valid = repo()
        .join("examples/trading-bot.yaml")
        .display()
        .to_string();
    env.kubectl(&["apply", "--dry-run=server", "-f", &valid]);
    env.kubectl(&["apply", "-f", &valid]);
    env.kubectl(&["get", "rtc", "trading-bot"]);
    // valuesFrom is resolved as the operator resolves it: the Secret, applied first in the same
    // file, exists by the time the RuntimeConfig is reviewed.
    let with_secret = repo()
        .join("examples/lazy-loading.yaml")
        .display()
        .to_string();
    env.kubectl(&["apply", "-f", &with_secret]);
    env.kubectl(&["get", "rtc", "lazy-loading"]);
    // An annotation on an object is not re-judged (rollback must always be possible).
    env.kubectl(&["annotate", "rtc/lazy-loading", "hotconf.dev/rollback-to=1"]);
}

#[tokio::test]
async fn spec_changes_are_attributed_to_the_requesting_user() {
    let env = TestEnv::new("webhook-who").await;
    let port = free_port();
    let config = register(&env, port).await;
    let _operator = env.start_operator_with(
        hotconf::dev::control_plane::OPERATOR_USER,
        &operator_args(&env, port, &config, &[]),
    );
    serving(&env).await;
    env.kubectl(&[
        "create",
        "role",
        "config-editor",
        "--verb=get,list,create,update,patch",
        "--resource=runtimeconfigs.hotconf.dev",
    ]);
    env.kubectl(&[
        "create",
        "rolebinding",
        "config-editors",
        "--role=config-editor",
        "--user=alice",
        "--user=bob",
    ]);

    let as_user = |user: &str| {
        let plane = env.plane;
        let user = user.to_string();
        async move { plane.client_as(&user).await.unwrap() }
    };
    let alice: Api<RuntimeConfig> = Api::namespaced(as_user("alice").await, &env.ns);
    let created = eventually(20, "alice's create (RBAC caches)", || {
        let alice = alice.clone();
        async move {
            alice
                .create(&PostParams::default(), &rtc("shared", 1))
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(created.annotations()["hotconf.dev/changed-by"], "alice");
    let first = eventually(60, "revision 1", || {
        let alice = alice.clone();
        async move {
            let o = alice.get("shared").await.ok()?;
            let h = o.status?.history;
            (h.len() == 1).then_some(h)
        }
    })
    .await;
    assert_eq!(first[0].changed_by.as_deref(), Some("alice"));

    let bob: Api<RuntimeConfig> = Api::namespaced(as_user("bob").await, &env.ns);
    bob.patch(
        "shared",
        &PatchParams::default(),
        &Patch::Merge(json!({
            "metadata": {"annotations": {"hotconf.dev/change-reason": "raise v for the sale"}},
            "spec": {"values": {"v": 2}}
        })),
    )
    .await
    .unwrap();
    let history = eventually(60, "revision 2", || {
        let bob = bob.clone();
        async move {
            let h = bob.get("shared").await.ok()?.status?.history;
            (h.len() == 2).then_some(h)
        }
    })
    .await;
    assert_eq!(history[1].changed_by.as_deref(), Some("bob"));
    assert_eq!(history[1].reason.as_deref(), Some("raise v for the sale"));
    // The proof the webhook wrote is what the operator trusted: it is there, for bob.
    let obj = bob.get("shared").await.unwrap();
    assert!(
        obj.annotations()["hotconf.dev/changed-by-proof"].starts_with("v1."),
        "{:?}",
        obj.annotations()
    );
    // A user cannot claim someone else's change: the webhook overwrites the annotation.
    bob.patch(
        "shared",
        &PatchParams::default(),
        &Patch::Merge(json!({
            "metadata": {"annotations": {"hotconf.dev/changed-by": "alice"}},
            "spec": {"values": {"v": 3}}
        })),
    )
    .await
    .unwrap();
    let obj = bob.get("shared").await.unwrap();
    assert_eq!(obj.annotations()["hotconf.dev/changed-by"], "bob");
}

async fn bundle(env: &TestEnv, config: &str) -> Option<Vec<u8>> {
    let cfg = Api::<ValidatingWebhookConfiguration>::all(env.client.clone())
        .get(config)
        .await
        .ok()?;
    Some(cfg.webhooks?.first()?.client_config.ca_bundle.clone()?.0)
}

#[tokio::test]
async fn certificates_are_reused_across_restarts_and_renewed_without_refusals() {
    let env = TestEnv::new("webhook-certs").await;
    let port = free_port();
    let config = register(&env, port).await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);

    let mut operator = env.start_operator_with(
        hotconf::dev::control_plane::OPERATOR_USER,
        &operator_args(&env, port, &config, &[]),
    );
    serving(&env).await;
    let stored = secrets.get("hotconf-webhook-tls").await.unwrap();
    let first_bundle = bundle(&env, &config).await.unwrap();
    assert!(String::from_utf8_lossy(&first_bundle).contains("BEGIN CERTIFICATE"));
    operator.stop();

    // A restart finds the Secret and reuses it: nothing is rewritten.
    let mut operator = env.start_operator_with(
        hotconf::dev::control_plane::OPERATOR_USER,
        &operator_args(&env, port, &config, &[]),
    );
    serving(&env).await;
    let again = secrets.get("hotconf-webhook-tls").await.unwrap();
    assert_eq!(again.resource_version(), stored.resource_version());
    assert_eq!(bundle(&env, &config).await.unwrap(), first_bundle);
    operator.stop();

    // Short lifetimes: the serving certificate is renewed every few seconds and the CA once,
    // while requests keep coming; none may be refused. (Lifetimes apply to what is issued, so
    // the long-lived material goes first.)
    secrets
        .delete("hotconf-webhook-tls", &Default::default())
        .await
        .unwrap();
    let _operator = env.start_operator_with(
        hotconf::dev::control_plane::OPERATOR_USER,
        &operator_args(
            &env,
            port,
            &config,
            &[
                "--webhook-ca-validity=24s",
                "--webhook-cert-validity=12s",
                "--webhook-renew-before=8s",
                "--webhook-check-interval=1s",
                "--webhook-bundle-propagation=2s",
            ],
        ),
    );
    serving(&env).await;
    let api: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    let started = Instant::now();
    let mut served = 0;
    let mut refused = Vec::new();
    let mut certs = std::collections::BTreeSet::new();
    let mut bundles = std::collections::BTreeSet::new();
    while started.elapsed() < Duration::from_secs(30) {
        match api
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &rtc("probe", 1),
            )
            .await
        {
            Ok(_) => served += 1,
            Err(e) => refused.push(format!("{:.1}s: {e}", started.elapsed().as_secs_f64())),
        }
        if let Ok(s) = secrets.get("hotconf-webhook-tls").await {
            certs.insert(
                s.data
                    .unwrap_or_default()
                    .get("tls.crt")
                    .map(|b| b.0.clone()),
            );
        }
        if let Some(b) = bundle(&env, &config).await {
            bundles.insert(b);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    println!(
        "webhook rotation: {served} requests served, {} refused, {} serving certificates, {} CA bundles",
        refused.len(),
        certs.len(),
        bundles.len()
    );
    assert!(refused.is_empty(), "refused during rotation: {refused:#?}");
    assert!(
        certs.len() >= 3,
        "the serving certificate was renewed ({} seen)",
        certs.len()
    );
    assert!(
        bundles.len() >= 2,
        "the CA was renewed and the caBundle updated"
    );
    assert!(served > 50);
}
