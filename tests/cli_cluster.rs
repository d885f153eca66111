//! The built `hotconf` binary's cluster commands against the real control plane with the
//! operator running: `render` equals what the operator projects, `history`, `diff`, `rollback`
//! and `export` on real status, the clear errors, and `kubectl hotconf` through kubectl's plugin
//! mechanism.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{TestEnv, eventually, hotconf_bin, repo};
use hotconf::crd::{ConfigStatus, PoolBudget, RuntimeConfig, names};
use hotconf::kinds::ConfigResource;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::{Api, ResourceExt};
use serde_json::Value;

/// Runs `hotconf ARGS -n NS`, with `--kubeconfig K` for the cluster commands.
fn hotconf(env: &TestEnv, args: &[&str]) -> Output {
    let mut command = Command::new(hotconf_bin());
    command.args(args).args(["-n", &env.ns]);
    if !matches!(args.first(), Some(&"validate" | &"render")) {
        command.arg("--kubeconfig").arg(env.plane.kubeconfig_path());
    }
    command
        .env_remove("KUBECONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("running hotconf")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs hotconf and returns its stdout; panics with its output when it fails.
fn hotconf_ok(env: &TestEnv, args: &[&str]) -> String {
    let out = hotconf(env, args);
    assert!(
        out.status.success(),
        "hotconf {args:?} failed:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Runs hotconf, expects exit code 1 and one line on stderr, and returns that line.
fn hotconf_err(env: &TestEnv, args: &[&str]) -> String {
    let out = hotconf(env, args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "hotconf {args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "hotconf {args:?}: one line: {err}");
    err.trim_end().to_string()
}

async fn ready_at<K: ConfigResource>(env: &TestEnv, name: &str, revision: i64) -> K {
    let api: Api<K> = Api::namespaced(env.client.clone(), &env.ns);
    eventually(60, &format!("{name} Ready at revision {revision}"), || {
        let api = api.clone();
        async move {
            api.get_opt(name).await.unwrap().filter(|o| {
                let s = o.config_status();
                s.is_some_and(|s| {
                    s.current_revision == Some(revision)
                        && s.observed_generation == o.meta().generation
                        && s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            })
        }
    })
    .await
}

fn status<K: ConfigResource>(obj: &K) -> ConfigStatus {
    obj.config_status().cloned().unwrap_or_default()
}

fn example(name: &str) -> String {
    repo()
        .join("examples")
        .join(format!("{name}.yaml"))
        .display()
        .to_string()
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| <Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

#[tokio::test]
async fn render_equals_what_the_operator_projects() {
    let env = TestEnv::new("cli-render").await;
    let _operator = env.start_operator();
    let examples = [
        ("feature-flags", "storefront-flags"),
        ("lazy-loading", "lazy-loading"),
        ("pool-budget", "order-service"),
        ("trading-bot", "trading-bot"),
    ];
    for (file, _) in examples {
        env.kubectl(&["apply", "-f", &example(file)]);
    }
    let mut args = vec!["render".to_string()];
    for (file, _) in examples {
        args.extend(["-f".to_string(), example(file)]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let rendered = documents(&hotconf_ok(&env, &args));
    assert_eq!(rendered.len(), 5, "four ConfigMaps and one Secret");

    let _: PoolBudget = ready_at(&env, "order-service", 1).await;
    for (_, name) in [examples[0], examples[1], examples[3]] {
        let _: RuntimeConfig = ready_at(&env, name, 1).await;
    }
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    for doc in &rendered {
        let name = doc["metadata"]["name"].as_str().unwrap();
        assert_eq!(doc["metadata"]["namespace"], env.ns.as_str());
        if doc["kind"] == "Secret" {
            let secret = secrets.get(name).await.unwrap();
            // The metadata key names the revision, which render leaves out (as for ConfigMaps).
            let keys: Vec<&String> = secret
                .data
                .as_ref()
                .unwrap()
                .keys()
                .filter(|k| *k != hotconf::projection::META_KEY)
                .collect();
            let shown: Vec<&String> = doc["data"].as_object().unwrap().keys().collect();
            assert_eq!(shown, keys, "the Secret's shape");
            assert!(
                doc["data"]
                    .as_object()
                    .unwrap()
                    .values()
                    .all(|v| v == "<redacted>")
            );
            continue;
        }
        let cm = cms.get(name).await.unwrap();
        let mut projected = cm.data.clone().unwrap();
        // The metadata key names the revision, which only the operator assigns: render leaves
        // it out, as it leaves out the revision annotation.
        assert!(
            projected
                .remove(hotconf::projection::META_KEY)
                .is_some_and(|m| m.contains(&format!(
                    "\"revision\":{}",
                    cm.annotations()[names::REVISION]
                ))),
            "{name}: the metadata key"
        );
        let mut offline: std::collections::BTreeMap<String, String> =
            serde_json::from_value(doc["data"].clone()).unwrap();
        let labels: std::collections::BTreeMap<String, String> =
            serde_json::from_value(doc["metadata"]["labels"].clone()).unwrap();
        assert_eq!(&labels, cm.labels(), "{name}: labels");
        match doc["metadata"]["annotations"][names::HASH].as_str() {
            Some(hash) => assert_eq!(hash, cm.annotations()[names::HASH], "{name}: hash"),
            None => {
                // valuesFrom: only the fingerprints (salted with the Secret's uid) are unknown
                // offline; with the cluster's filled in, the bytes are the same.
                assert_eq!(name, "lazy-loading-config");
                let cluster_doc: Value = serde_yaml::from_str(&projected["config.yaml"]).unwrap();
                let fingerprint = cluster_doc["secrets"]["db_password"]["fingerprint"]
                    .as_str()
                    .unwrap()
                    .to_string();
                assert!(fingerprint.starts_with("sha256:"));
                let key = offline.get_mut("config.yaml").unwrap();
                assert_eq!(key.matches("fingerprint: null").count(), 1);
                *key = key.replace("fingerprint: null", &format!("fingerprint: {fingerprint}"));
            }
        }
        assert_eq!(
            offline, projected,
            "{name}: the same bytes for every data key"
        );
    }
}

/// A RuntimeConfig with a schema, a Secret reference, flags and maintenance, in three versions.
fn svc(level: &str, rollout: i64, reason: &str) -> String {
    format!(
        r#"apiVersion: hotconf.dev/v1alpha1
kind: RuntimeConfig
metadata:
  name: svc
  annotations: {{hotconf.dev/change-reason: "{reason}"}}
spec:
  schema:
    level: {{type: string, default: low}}
    workers: {{type: integer, default: 4, minimum: 1}}
    timeout: {{type: duration, default: 30s}}
    db_password: {{type: string, sensitive: true}}
  values: {{level: {level}}}
  valuesFrom:
    - key: db_password
      secretKeyRef: {{name: svc-db, key: password}}
  featureFlags:
    new_ui: {{enabled: true, rolloutPercentage: {rollout}, allow: [user-1]}}
  maintenance: {{enabled: false, reason: "none planned"}}
  target: {{format: json, flatten: true}}
"#
    )
}

const SVC_SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: svc-db}\nstringData: {password: s3cr3t-value}\n";

/// Creates `svc` and changes it twice, each with a change reason: revisions 1, 2, 3.
async fn svc_with_three_revisions(env: &TestEnv) -> RuntimeConfig {
    env.apply_yaml(SVC_SECRET);
    env.apply_yaml(&svc("one", 10, "first rollout"));
    let _: RuntimeConfig = ready_at(env, "svc", 1).await;
    env.apply_yaml(&svc("two", 10, "raise the level"));
    let _: RuntimeConfig = ready_at(env, "svc", 2).await;
    env.apply_yaml(&svc("two", 50, "widen the rollout"));
    ready_at(env, "svc", 3).await
}

#[tokio::test]
async fn history_diff_and_export_after_three_changes() {
    let env = TestEnv::new("cli-history").await;
    let _operator = env.start_operator();
    let rtc = svc_with_three_revisions(&env).await;
    let history = status(&rtc).history;
    assert_eq!(history.len(), 3);

    // history: three rows with their reasons, the newest marked current.
    let table = hotconf_ok(&env, &["history", "rtc/svc"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    for column in [
        "REVISION",
        "AGE",
        "CHANGED-BY",
        "REASON",
        "CHANGED-KEYS",
        "MARK",
    ] {
        assert!(lines[0].contains(column), "{table}");
    }
    for (line, (revision, reason)) in lines[1..].iter().zip([
        (1, "first rollout"),
        (2, "raise the level"),
        (3, "widen the rollout"),
    ]) {
        assert!(line.starts_with(&format!("{revision} ")), "{table}");
        assert!(line.contains(reason), "{table}");
        assert!(line.contains("kubectl-client-side-apply"), "{table}");
    }
    assert!(lines[2].contains("values.level"), "{table}");
    assert!(
        lines[3].contains("featureFlags.new_ui.rolloutPercentage"),
        "{table}"
    );
    assert!(lines[3].ends_with("current"), "{table}");
    assert!(!lines[1].ends_with("current") && !lines[2].ends_with("current"));
    // Other spellings of the kind, and JSON.
    for kind in [
        "runtimeconfig",
        "RuntimeConfigs",
        "runtimeconfig.hotconf.dev",
    ] {
        assert_eq!(
            without_age(&hotconf_ok(&env, &["history", &format!("{kind}/svc")])),
            without_age(&table)
        );
    }
    let json: Vec<Value> =
        serde_json::from_str(&hotconf_ok(&env, &["history", "rtc/svc", "-o", "json"])).unwrap();
    assert_eq!(json.len(), 3);
    assert_eq!(json[1]["reason"], "raise the level");
    assert!(!serde_json::to_string(&json).unwrap().contains("s3cr3t"));

    // diff: a unified diff of the documents, showing the changed keys.
    let diff = hotconf_ok(&env, &["diff", "rtc/svc", "1", "3"]);
    assert!(
        diff.starts_with("--- revision 1\n+++ revision 3\n@@"),
        "{diff}"
    );
    let changed: Vec<&str> = diff
        .lines()
        .filter(|l| l.starts_with(['-', '+']) && !l.starts_with("---") && !l.starts_with("+++"))
        .collect();
    assert_eq!(
        changed,
        vec![
            "-    rolloutPercentage: 10",
            "+    rolloutPercentage: 50",
            "-  level: one",
            "+  level: two",
        ],
        "{diff}"
    );
    let diff = hotconf_ok(&env, &["diff", "rtc/svc", "2", "3"]);
    assert!(diff.contains("+    rolloutPercentage: 50") && !diff.contains("level: one"));
    assert_eq!(hotconf_ok(&env, &["diff", "rtc/svc", "3", "current"]), "");

    // export of revision 1, applied as a new object, gives revision 1's hash.
    let exported = hotconf_ok(&env, &["export", "rtc/svc", "--revision", "1"]);
    let mut manifest: Value = serde_yaml::from_str(&exported).unwrap();
    assert_eq!(manifest["apiVersion"], "hotconf.dev/v1alpha1");
    assert_eq!(manifest["kind"], "RuntimeConfig");
    assert_eq!(manifest["metadata"]["name"], "svc");
    assert_eq!(manifest["metadata"]["namespace"], env.ns.as_str());
    let metadata_keys: Vec<&String> = manifest["metadata"].as_object().unwrap().keys().collect();
    assert_eq!(
        metadata_keys,
        ["name", "namespace"],
        "nothing the server owns"
    );
    assert!(manifest.get("status").is_none());
    assert_eq!(manifest["spec"]["values"]["level"], "one");
    assert_eq!(
        manifest["spec"]["featureFlags"]["new_ui"]["rolloutPercentage"],
        10
    );
    assert_eq!(
        manifest["spec"]["valuesFrom"][0]["secretKeyRef"]["name"],
        "svc-db"
    );
    assert!(!exported.contains("s3cr3t"));
    manifest["metadata"]["name"] = "svc-restored".into();
    env.apply_yaml(&serde_yaml::to_string(&manifest).unwrap());
    let restored: RuntimeConfig = ready_at(&env, "svc-restored", 1).await;
    assert_eq!(
        status(&restored).current_hash.as_deref(),
        Some(history[0].hash.as_str()),
        "the export reproduces revision 1"
    );
    // The exported file passes offline validation too.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("svc.yaml");
    std::fs::write(&file, &exported).unwrap();
    hotconf_ok(&env, &["validate", "-f", file.to_str().unwrap()]);

    // A PoolBudget: its snapshot is complete.
    env.kubectl(&["apply", "-f", &example("pool-budget")]);
    let first: PoolBudget = ready_at(&env, "order-service", 1).await;
    env.kubectl(&[
        "patch",
        "pb/order-service",
        "--type=merge",
        "-p",
        r#"{"spec":{"metrics":{"maxCpuPercent":60},"pools":{"cache":{"ttl":"1m"}}}}"#,
    ]);
    let _: PoolBudget = ready_at(&env, "order-service", 2).await;
    let diff = hotconf_ok(&env, &["diff", "pb/order-service", "1", "2"]);
    assert!(
        diff.contains("-  maxCpuPercent: 80\n+  maxCpuPercent: 60"),
        "{diff}"
    );
    let exported = hotconf_ok(&env, &["export", "pb/order-service", "--revision", "1"]);
    let mut manifest: Value = serde_yaml::from_str(&exported).unwrap();
    assert_eq!(manifest["spec"]["metrics"]["maxCpuPercent"], 80);
    assert_eq!(manifest["spec"]["target"]["format"], "env");
    manifest["metadata"]["name"] = "order-service-restored".into();
    manifest["spec"]["target"]["configMapName"] = "order-service-restored".into();
    env.apply_yaml(&serde_yaml::to_string(&manifest).unwrap());
    let restored: PoolBudget = ready_at(&env, "order-service-restored", 1).await;
    assert_eq!(status(&restored).current_hash, status(&first).current_hash);
}

#[tokio::test]
async fn rollback_through_the_cli_pins_and_clear_releases() {
    let env = TestEnv::new("cli-rollback").await;
    let operator = env.start_operator();
    let before = svc_with_three_revisions(&env).await;
    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);

    let out = hotconf_ok(&env, &["rollback", "rtc/svc", "--to", "2"]);
    assert!(out.contains("revision 2 is pinned and projected"), "{out}");
    // The command returned only once the status showed the pin.
    let pinned = rtcs.get("svc").await.unwrap();
    let s = status(&pinned);
    assert_eq!(s.rollback.as_ref().map(|r| r.target_revision), Some(2));
    assert_eq!(s.current_revision, Some(2));
    assert_eq!(pinned.annotations()[names::ROLLBACK_TO], "2");
    assert_eq!(pinned.spec, before.spec, "the spec is never touched");
    assert_eq!(pinned.metadata.generation, before.metadata.generation);
    assert_eq!(
        cms.get("svc").await.unwrap().annotations()[names::REVISION],
        "2"
    );
    let table = hotconf_ok(&env, &["history", "rtc/svc"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[2].ends_with("current,pinned"), "{table}");
    assert!(lines[3].ends_with("latest"), "{table}");

    let out = hotconf_ok(&env, &["rollback", "rtc/svc", "--clear"]);
    assert!(
        out.contains("rollback released; revision 3 is projected"),
        "{out}"
    );
    let released = rtcs.get("svc").await.unwrap();
    assert!(status(&released).rollback.is_none());
    assert_eq!(status(&released).current_revision, Some(3));
    assert!(!released.annotations().contains_key(names::ROLLBACK_TO));
    assert_eq!(
        cms.get("svc").await.unwrap().annotations()[names::REVISION],
        "3"
    );
    let out = hotconf_ok(&env, &["rollback", "rtc/svc", "--clear"]);
    assert!(out.contains("no rollback is pinned"), "{out}");

    // `previous` is the revision before the latest.
    let out = hotconf_ok(&env, &["rollback", "rtc/svc", "--to", "previous"]);
    assert!(out.contains("revision 2 is pinned"), "{out}");
    hotconf_ok(&env, &["rollback", "rtc/svc", "--clear"]);

    // A revision that is not in history: refused before anything is written.
    assert_eq!(
        hotconf_err(&env, &["rollback", "rtc/svc", "--to", "9"]),
        format!(
            "error: revision 9 is not in the history of runtimeconfig {}/svc; available: 1, 2, 3",
            env.ns
        )
    );
    assert!(
        !rtcs
            .get("svc")
            .await
            .unwrap()
            .annotations()
            .contains_key(names::ROLLBACK_TO)
    );

    // Without an operator, the wait ends in a clear timeout.
    drop(operator);
    let err = hotconf_err(
        &env,
        &["rollback", "rtc/svc", "--to", "1", "--timeout", "2s"],
    );
    assert!(
        err.starts_with("error: timed out after 2s waiting for the operator to pin the revision of runtimeconfig"),
        "{err}"
    );
    assert!(err.contains("is the operator running?"), "{err}");
}

#[tokio::test]
async fn clear_errors_for_missing_objects_and_revisions() {
    let env = TestEnv::new("cli-errors").await;
    let _operator = env.start_operator();
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: one}\nspec: {values: {a: 1}}\n",
    );
    let _: RuntimeConfig = ready_at(&env, "one", 1).await;
    let ns = &env.ns;
    assert_eq!(
        hotconf_err(&env, &["history", "rtc/foo"]),
        format!("error: runtimeconfig {ns}/foo not found")
    );
    assert_eq!(
        hotconf_err(&env, &["export", "pb/foo", "--revision", "1"]),
        format!("error: poolbudget {ns}/foo not found")
    );
    assert_eq!(
        hotconf_err(&env, &["diff", "rtc/one", "1", "9"]),
        format!("error: revision 9 is not in the history of runtimeconfig {ns}/one; available: 1")
    );
    assert_eq!(
        hotconf_err(&env, &["export", "rtc/one", "--revision", "4"]),
        format!("error: revision 4 is not in the history of runtimeconfig {ns}/one; available: 1")
    );
    assert_eq!(
        hotconf_err(&env, &["history", "deployment/one"]),
        "error: deployment is not a hotconf kind; use rtc/NAME or pb/NAME"
    );

    // The namespace defaults to the context's; --context picks a context.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kubeconfig_with_namespace(&env, dir.path());
    let run = |extra: &[&str]| {
        Command::new(hotconf_bin())
            .args(["history", "rtc/one", "--kubeconfig"])
            .arg(&kubeconfig)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 2);
    let out = run(&["--context", "hotconf-local"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["--context", "elsewhere"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("elsewhere"),
        "{}",
        text(&out.stderr)
    );
}

/// A copy of the admin kubeconfig whose context's namespace is the test's.
fn kubeconfig_with_namespace(env: &TestEnv, dir: &Path) -> PathBuf {
    let admin = std::fs::read_to_string(env.plane.kubeconfig_path()).unwrap();
    let mut config: Value = serde_yaml::from_str(&admin).unwrap();
    config["contexts"][0]["context"]["namespace"] = env.ns.clone().into();
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config).unwrap()).unwrap();
    path
}

#[tokio::test]
async fn kubectl_runs_it_as_the_hotconf_plugin() {
    let env = TestEnv::new("cli-plugin").await;
    let _operator = env.start_operator();
    env.apply_yaml(
        "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata:\n  name: lazy-loading\n  annotations: {hotconf.dev/change-reason: via the plugin}\nspec: {values: {a: 1}}\n",
    );
    let _: RuntimeConfig = ready_at(&env, "lazy-loading", 1).await;

    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(hotconf_bin(), bin.path().join("kubectl-hotconf")).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let plugins = Command::new("kubectl")
        .args(["plugin", "list"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        text(&plugins.stdout).contains("kubectl-hotconf"),
        "{}{}",
        text(&plugins.stdout),
        text(&plugins.stderr)
    );

    // kubectl passes everything after the plugin's name to it (flags before it are refused).
    let out = Command::new("kubectl")
        .args([
            "hotconf",
            "history",
            "rtc/lazy-loading",
            "-n",
            &env.ns,
            "--kubeconfig",
        ])
        .arg(env.plane.kubeconfig_path())
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(
        table.lines().nth(1).unwrap().contains("via the plugin"),
        "{table}"
    );

    // KUBECONFIG from the environment, as kubectl users have it set.
    let out = Command::new("kubectl")
        .args([
            "hotconf",
            "history",
            "rtc/lazy-loading",
            "--namespace",
            &env.ns,
        ])
        .env("PATH", &path)
        .env("KUBECONFIG", env.plane.kubeconfig_path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(without_age(&text(&out.stdout)), without_age(&table));

    // Errors name the plugin as the user typed it.
    let out = Command::new("kubectl")
        .args(["hotconf", "history"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Usage: kubectl hotconf history"),
        "{}",
        text(&out.stderr)
    );
}

/// A history table's cells but for the AGE column (a second may pass between two runs).
fn without_age(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|l| {
            l.split_whitespace()
                .enumerate()
                .filter(|(i, _)| *i != 1)
                .map(|(_, w)| w.to_string())
                .collect()
        })
        .collect()
}

const KNOBS: &str = "apiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {name: knobs}\nspec:\n  schema:\n    a: {type: integer, default: 1}\n    b: {type: integer, default: 2}\n    c: {type: integer}\n  values: {a: 10, b: 20, c: 30}\n";

fn projected_values(cm: &ConfigMap) -> Value {
    let doc: Value = serde_yaml::from_str(&cm.data.as_ref().unwrap()["config.yaml"]).unwrap();
    doc["values"].clone()
}

/// `reset` prints the spec with keys back at their schema defaults, refuses what it cannot
/// reset, and with `--apply` makes one revision with its reason; `import` of an export brings an
/// earlier revision back (a server dry run first changes nothing) and refuses an invalid
/// manifest without writing anything.
#[tokio::test]
async fn reset_and_import_round_trip() {
    let env = TestEnv::new("cli-reset").await;
    let _operator = env.start_operator();
    env.apply_yaml(KNOBS);
    let first: RuntimeConfig = ready_at(&env, "knobs", 1).await;
    let generation = first.metadata.generation;

    let printed = documents(&hotconf_ok(&env, &["reset", "rtc/knobs", "--keys", "a"]));
    assert_eq!(printed.len(), 1);
    assert_eq!(
        printed[0]["spec"]["values"],
        serde_json::json!({"a": 1, "b": 20, "c": 30})
    );
    assert_eq!(
        printed[0]["metadata"]["annotations"][names::CHANGE_REASON],
        "reset a to the schema default"
    );
    let err = hotconf_err(&env, &["reset", "rtc/knobs", "--keys", "c,zz", "--apply"]);
    assert!(
        err.contains("c has no default") && err.contains("zz is not declared"),
        "{err}"
    );
    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    assert_eq!(
        rtcs.get("knobs").await.unwrap().metadata.generation,
        generation
    );

    // managedFields times have one-second resolution, and the newest entry that sets the spec
    // is its author: a person resets later than the second the object was applied in.
    let applied_at = first
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.time.as_ref().map(|t| t.0.as_second()))
        .max()
        .unwrap();
    eventually(5, "the next second", || async {
        (chrono::Utc::now().timestamp() > applied_at).then_some(())
    })
    .await;
    let out = hotconf_ok(&env, &["reset", "rtc/knobs", "--keys", "a", "--apply"]);
    assert!(out.contains("revision 2 is projected"), "{out}");
    let second: RuntimeConfig = ready_at(&env, "knobs", 2).await;
    let entry = status(&second).history.last().cloned().unwrap();
    assert_eq!(
        entry.reason.as_deref(),
        Some("reset a to the schema default")
    );
    assert_eq!(entry.changed_by.as_deref(), Some("hotconf-reset"));
    let cms: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    assert_eq!(
        projected_values(&cms.get("knobs").await.unwrap()),
        serde_json::json!({"a": 1, "b": 20, "c": 30})
    );

    // Import revision 1's export: a dry run first, then for real.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("export.yaml");
    std::fs::write(
        &file,
        hotconf_ok(&env, &["export", "rtc/knobs", "--revision", "1"]),
    )
    .unwrap();
    let file = file.display().to_string();
    // The reset set values.a as hotconf-reset: importing another value for it is a conflict,
    // named (in a dry run too), until --force-conflicts takes the field over.
    let err = hotconf_err(&env, &["import", "-f", &file, "--dry-run"]);
    assert!(
        err.contains("hotconf-reset")
            && err.contains(".spec.values.a")
            && err.contains("--force-conflicts"),
        "{err}"
    );
    let out = hotconf_ok(
        &env,
        &["import", "-f", &file, "--dry-run", "--force-conflicts"],
    );
    assert!(out.contains("server dry run"), "{out}");
    let after_dry = rtcs.get("knobs").await.unwrap();
    assert_eq!(after_dry.metadata.generation, second.metadata.generation);
    let out = hotconf_ok(&env, &["import", "-f", &file, "--force-conflicts"]);
    assert!(
        out.contains("RuntimeConfig") && out.contains("applied"),
        "{out}"
    );
    let third: RuntimeConfig = ready_at(&env, "knobs", 3).await;
    let s = status(&third);
    assert_eq!(
        s.current_hash.as_deref(),
        Some(s.history[0].hash.as_str()),
        "revision 1's document"
    );
    assert_eq!(
        s.history.last().unwrap().reason.as_deref(),
        Some(format!("imported from {file}").as_str())
    );

    // An invalid manifest: every problem named, nothing applied.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, KNOBS.replace("a: 10", "a: ten")).unwrap();
    let out = hotconf(&env, &["import", "-f", &bad.display().to_string()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("bad.yaml:1 RuntimeConfig/") && stderr.contains("spec.values.a"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was imported"), "{stderr}");
    assert_eq!(
        rtcs.get("knobs").await.unwrap().metadata.generation,
        third.metadata.generation
    );
}
