//! The agent's API source against the real control plane: the real `hotconf agent` binary,
//! running as a user that holds only the sidecar's Role (get/list/watch on the one ConfigMap,
//! patch on pods), follows a ConfigMap written the way the operator writes it, refuses corrupt
//! documents while the last good file stays byte-identical, and reports both outcomes on its
//! Pod. The client library follows the same ConfigMap through the API.

mod agent_common;
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_common::{ReloadServer, free_addr, metric, until_revision, wait_for, wait_reloads};
use common::TestEnv;
use hotconf::agent::report::Applied;
use hotconf::crd::{Format, names};
use hotconf::document;
use hotconf::projection::{self, ResolvedTarget};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams};
use serde_json::{Value, json};

const CM: &str = "lazy-loading-config";

fn target() -> ResolvedTarget {
    ResolvedTarget {
        name: CM.into(),
        format: Format::Yaml,
        file_name: "config.yaml".into(),
        flatten: false,
        flagd_file_name: None,
    }
}

fn lazy(check_interval: u64, strategy: &str) -> Value {
    json!({
        "values": {"check_interval": check_interval, "strategy": strategy, "worker_threads": 4},
        "featureFlags": {"new_ui": {"enabled": true, "rolloutPercentage": 25, "allow": ["user-1"], "deny": []}},
        "maintenance": {"enabled": false, "reason": "", "until": null},
    })
}

/// The ConfigMap as the operator projects it: the rendered document under its data key, the
/// owner labels, the revision and the hash of the canonical JSON.
fn projected(data: BTreeMap<String, String>, revision: i64, hash: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(CM.into()),
            labels: Some(projection::labels("RuntimeConfig", "lazy-loading")),
            annotations: Some(BTreeMap::from([
                (names::REVISION.to_string(), revision.to_string()),
                (names::HASH.to_string(), hash.to_string()),
            ])),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

async fn write(api: &Api<ConfigMap>, cm: &ConfigMap) {
    api.patch(
        CM,
        &PatchParams::apply("hotconf").force(),
        &Patch::Apply(cm),
    )
    .await
    .unwrap();
}

async fn project(api: &Api<ConfigMap>, doc: &Value, revision: i64) -> String {
    let data = projection::config_map_data(doc, &target());
    let text = data["config.yaml"].clone();
    write(api, &projected(data, revision, &document::hash(doc))).await;
    text
}

async fn applied(env: &TestEnv, pod: &str) -> Option<Applied> {
    let p = Api::<Pod>::namespaced(env.client.clone(), &env.ns)
        .get(pod)
        .await
        .ok()?;
    let text = p.metadata.annotations?.get(names::APPLIED)?.clone();
    serde_json::from_str(&text).ok()
}

/// The sidecar's RBAC (as in examples/agent-sidecar.yaml) bound to user alice, and a Pod
/// object for the agent to annotate (no kubelet runs it).
fn set_up(env: &TestEnv, pod: &str) {
    set_up_reading(env, pod, "configmaps", CM);
}

/// [`set_up`] with the Role reading `resources` (`configmaps`, or `configmaps, secrets`) of one
/// name.
fn set_up_reading(env: &TestEnv, pod: &str, resources: &str, name: &str) {
    env.apply_yaml(&format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: hotconf-agent}}
rules:
- apiGroups: [""]
  resources: [{resources}]
  resourceNames: [{name}]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods]
  verbs: [patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: hotconf-agent}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: hotconf-agent}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: alice}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {pod}}}
spec:
  containers:
  - {{name: app, image: busybox}}
"#
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_changes_reach_the_app_and_corrupt_documents_are_refused() {
    let env = TestEnv::new("agent-api").await;
    let pod = "app-0";
    set_up(&env, pod);
    let api: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    let v1 = lazy(30, "AGGRESSIVE");
    let text1 = project(&api, &v1, 1).await;

    let tmp = tempfile::tempdir().unwrap();
    let output = tmp.path().join("app/config.yaml");
    let admin = free_addr();
    let mut server = ReloadServer::start(Some(&output)).await;
    let kubeconfig = env.plane.kubeconfig_for("alice").unwrap();
    let _agent = agent_common::spawn_agent(
        "api-agent",
        &[
            format!("--configmap={}/{CM}", env.ns),
            format!("--output={}", output.display()),
            format!("--reload-url={}", server.url),
            format!("--admin-addr={admin}"),
        ],
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("POD_NAME", pod),
            ("POD_NAMESPACE", env.ns.as_str()),
        ],
    );

    // Revision 1 on start.
    let got = server.until(&text1, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body["revision"], 1);
    assert_eq!(got[0].body["hash"], document::hash(&v1));
    let report = wait_for(30, "the Pod annotation for revision 1", || async {
        applied(&env, pod).await.filter(|a| a.revision == Some(1))
    })
    .await;
    assert_eq!(report.kind.as_deref(), Some("RuntimeConfig"));
    assert_eq!(report.name.as_deref(), Some("lazy-loading"));
    assert_eq!(report.hash, Some(document::hash(&v1)));
    assert_eq!(report.error, None);

    // Revision 2 through the API.
    let v2 = lazy(45, "BALANCED");
    let t = Instant::now();
    let text2 = project(&api, &v2, 2).await;
    let got = server.until(&text2, Duration::from_secs(10)).await;
    let latency = got[0].at.duration_since(t);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body["revision"], 2);
    assert!(
        // Far below the kubelet's 60-120 s volume delay even on a loaded machine (the
        // benchmark measures the real figure).
        latency < Duration::from_secs(5),
        "API change → reload took {latency:?}"
    );
    wait_for(30, "the Pod annotation for revision 2", || async {
        applied(&env, pod)
            .await
            .filter(|a| a.revision == Some(2) && a.error.is_none())
    })
    .await;
    let good = std::fs::read(&output).unwrap();
    assert_eq!(good, text2.as_bytes());

    // Revision 3: YAML that does not parse.
    let bad = BTreeMap::from([(
        "config.yaml".to_string(),
        "values: [check_interval: 30\n".to_string(),
    )]);
    write(&api, &projected(bad, 3, &document::hash(&lazy(1, "X")))).await;
    wait_reloads(&admin, "refused", 30, "the refusal of revision 3", |n| {
        n == 1.0
    })
    .await;
    let report = wait_for(30, "the Pod annotation naming the refusal", || async {
        applied(&env, pod).await.filter(|a| a.error.is_some())
    })
    .await;
    let error = report.error.unwrap();
    assert!(
        error.contains("revision 3 refused") && error.contains("does not parse"),
        "{error}"
    );
    assert_eq!(
        report.revision,
        Some(2),
        "the last good revision stays reported"
    );
    assert_eq!(report.hash, Some(document::hash(&v2)));
    assert_eq!(
        std::fs::read(&output).unwrap(),
        good,
        "the file stays byte-identical"
    );

    // Revision 4: valid YAML whose hash does not match the annotation.
    let v4 = lazy(60, "CONSERVATIVE");
    let data = projection::config_map_data(&v4, &target());
    write(&api, &projected(data, 4, &document::hash(&v2))).await;
    wait_reloads(&admin, "refused", 30, "the refusal of revision 4", |n| {
        n == 2.0
    })
    .await;
    let report = wait_for(
        30,
        "the Pod annotation naming the hash mismatch",
        || async {
            applied(&env, pod)
                .await
                .filter(|a| a.error.as_deref().is_some_and(|e| e.contains("revision 4")))
        },
    )
    .await;
    assert!(report.error.unwrap().contains("hash mismatch"));
    assert_eq!(report.revision, Some(2));
    assert_eq!(
        std::fs::read(&output).unwrap(),
        good,
        "the file stays byte-identical"
    );
    assert!(
        server.drain().is_empty(),
        "no reload for a refused document"
    );

    // Revision 2 put back, as the operator puts back a ConfigMap edited by hand: the agent has
    // it already, so the app hears nothing, and the refusal's error leaves the Pod.
    project(&api, &v2, 2).await;
    wait_for(30, "the Pod annotation without the refusal", || async {
        applied(&env, pod)
            .await
            .filter(|a| a.revision == Some(2) && a.error.is_none())
    })
    .await;
    assert_eq!(std::fs::read(&output).unwrap(), good);
    assert!(server.drain().is_empty(), "no reload for content it has");

    // Revision 5 repairs it.
    let v5 = lazy(90, "CONSERVATIVE");
    let text5 = project(&api, &v5, 5).await;
    let got = server.until(&text5, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].body["revision"], 5);
    wait_for(30, "the Pod annotation for revision 5", || async {
        applied(&env, pod)
            .await
            .filter(|a| a.revision == Some(5) && a.error.is_none())
    })
    .await;
    assert_eq!(
        metric(&admin, "hotconf_agent_applied_revision").await,
        Some(5.0)
    );
    assert_eq!(
        metric(&admin, "hotconf_agent_reloads_total{result=\"success\"}").await,
        Some(3.0)
    );

    // Least privilege: the agent's only writes were patches of its Pod.
    let writes = env.plane.audit_writes("alice");
    assert!(!writes.is_empty());
    for w in &writes {
        assert_eq!(
            (w.verb.as_str(), w.resource.as_str(), w.name.as_str()),
            ("patch", "pods", pod),
            "{w:?}"
        );
        assert_eq!(w.code, 200, "{w:?}");
    }
    eprintln!("API change → reload: {latency:?}");
}

/// The client library follows the ConfigMap through the API: each revision is swapped in
/// whole, subscribers hear of changed keys, and a corrupt revision is refused while the last
/// good document stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_the_configmap_through_the_api() {
    let env = TestEnv::new("client-api").await;
    let api: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    project(&api, &lazy(30, "AGGRESSIVE"), 1).await;
    let config = hotconf::client::Config::options()
        .env_lookup(|_| None)
        .watch_configmap(env.client.clone(), &env.ns, CM)
        .await
        .unwrap();
    assert_eq!(config.revision(), Some(1));
    assert_eq!(config.get::<u64>("check_interval").unwrap(), 30);
    assert!(config.is_enabled("new_ui", "user-42"));
    assert!(!config.is_enabled("new_ui", "user-43"));

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let _sub = config.subscribe("strategy", move |v| {
        let _ = tx.send(v.cloned());
    });
    project(&api, &lazy(30, "BALANCED"), 2).await;
    let seen = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap();
    assert_eq!(seen, Some(Some(json!("BALANCED"))));
    assert_eq!(config.revision(), Some(2));

    let bad = BTreeMap::from([(
        "config.yaml".to_string(),
        "values: {strategy: X}\n".to_string(),
    )]);
    write(&api, &projected(bad, 3, "0000")).await;
    wait_for(10, "the refusal", || async { config.last_error() }).await;
    assert_eq!(config.revision(), Some(2));
    assert_eq!(config.get::<String>("strategy").unwrap(), "BALANCED");
}

/// examples/agent-sidecar.yaml applies as it is, and its Role gives the agent exactly what it
/// needs: the one ConfigMap and its Secret (get, list, watch) and pod patches, nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_example_applies_with_least_privilege() {
    let env = TestEnv::new("agent-example").await;
    let file = common::repo().join("examples/agent-sidecar.yaml");
    env.kubectl(&["apply", "-f", file.to_str().unwrap()]);
    let deployment = env.kubectl(&["get", "deployment", "lazy-loading", "-o", "json"]);
    let deployment: Value = serde_json::from_str(&deployment).unwrap();
    let containers = &deployment["spec"]["template"]["spec"]["containers"];
    let agent = containers
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "hotconf-agent")
        .unwrap();
    let args: Vec<&str> = agent["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--reload-url=http://localhost:8080/-/reload"));
    assert!(args.contains(&"--secret=$(POD_NAMESPACE)/lazy-loading-config"));
    assert_eq!(args[0], "agent");
    let sa = format!("system:serviceaccount:{}:lazy-loading", env.ns);
    let can = |verb: &str, what: &str| {
        let out = env.kubectl_raw(&["auth", "can-i", verb, what, "--as", &sa]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    for verb in ["get", "list", "watch"] {
        assert!(can(verb, "configmaps/lazy-loading-config"), "{verb}");
    }
    assert!(can("patch", "pods"));
    assert!(!can("get", "configmaps/other"));
    assert!(!can("update", "configmaps/lazy-loading-config"));
    // The projected Secret (sensitive values), read-only, and no other.
    for verb in ["get", "list", "watch"] {
        assert!(can(verb, "secrets/lazy-loading-config"), "{verb}");
    }
    assert!(!can("get", "secrets/lazy-loading-db"));
    assert!(!can("update", "secrets/lazy-loading-config"));
    assert!(!can("get", "secrets"));
    assert!(!can("delete", "pods"));
}

// The projected ConfigMap `name` (and its Secret, with `secret_dir`), copied into kubelet-style
// volumes as the kubelet would.
async fn mirror(env: &TestEnv, name: &str, cm_dir: &Path, secret_dir: Option<&Path>, stamp: &str) {
    let cm = Api::<ConfigMap>::namespaced(env.client.clone(), &env.ns)
        .get(name)
        .await
        .unwrap();
    let data = cm.data.unwrap_or_default();
    hotconf::agent::volume::kubelet_write_data(cm_dir, stamp, &data).unwrap();
    if let Some(dir) = secret_dir {
        let secret = Api::<Secret>::namespaced(env.client.clone(), &env.ns)
            .get(name)
            .await
            .unwrap();
        let data: BTreeMap<String, String> = secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
            .collect();
        hotconf::agent::volume::kubelet_write_data(dir, stamp, &data).unwrap();
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

async fn projected_revision(env: &TestEnv, name: &str, revision: i64) {
    wait_for(60, &format!("revision {revision} projected"), || async {
        let cm = Api::<ConfigMap>::namespaced(env.client.clone(), &env.ns)
            .get_opt(name)
            .await
            .ok()??;
        let secret = Api::<Secret>::namespaced(env.client.clone(), &env.ns)
            .get_opt(name)
            .await
            .ok()??;
        let stamped = |m: &ObjectMeta| projection::stamped(m);
        (stamped(&cm.metadata).0 == Some(revision)
            && stamped(&cm.metadata) == stamped(&secret.metadata))
        .then_some(())
    })
    .await;
}

/// Sensitive values reach the application end to end: the operator projects a `valuesFrom`
/// value into its Secret; one agent follows ConfigMap and Secret through the API (with only
/// get/list/watch on those two) and merges the value into its 0600 output, another follows
/// both mounted volumes and writes the value to a separate 0600 file. A rotated Secret value
/// is a new revision that reaches both as a reload; a ConfigMap whose Secret has not arrived
/// waits for it rather than pairing the new document with the old password; and the value
/// never appears in the ConfigMap, the CR, Events, logs or metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sensitive_values_reach_the_app_with_their_own_revision() {
    let env = TestEnv::new("agent-secret").await;
    let operator = env.start_operator();
    let pod = "app-0";
    let planted = format!("planted-{}", env.ns);
    env.apply_yaml(&format!(
        r#"apiVersion: v1
kind: Secret
metadata: {{name: creds}}
stringData: {{password: {planted}}}
---
apiVersion: hotconf.dev/v1alpha1
kind: RuntimeConfig
metadata: {{name: app}}
spec:
  schema:
    db_password: {{type: string, sensitive: true}}
    port: {{type: integer, default: 5432}}
  valuesFrom:
  - {{key: db_password, secretKeyRef: {{name: creds, key: password}}}}
"#
    ));
    set_up_reading(&env, pod, "configmaps, secrets", "app");
    projected_revision(&env, "app", 1).await;

    let tmp = tempfile::tempdir().unwrap();
    let (cm_dir, secret_dir) = (tmp.path().join("cm"), tmp.path().join("secret"));
    mirror(&env, "app", &cm_dir, Some(&secret_dir), "1").await;
    let merged = tmp.path().join("a/config.yaml");
    let (plain, separate) = (
        tmp.path().join("b/config.yaml"),
        tmp.path().join("b/secrets.yaml"),
    );
    let (admin_a, admin_b) = (free_addr(), free_addr());
    let mut server_a = ReloadServer::start(Some(&merged)).await;
    let mut server_b = ReloadServer::start(Some(&separate)).await;
    let kubeconfig = env.plane.kubeconfig_for("alice").unwrap();
    let api_agent = agent_common::spawn_agent(
        "secret-api-agent",
        &[
            format!("--configmap={}/app", env.ns),
            format!("--secret={}/app", env.ns),
            format!("--output={}", merged.display()),
            format!("--reload-url={}", server_a.url),
            format!("--admin-addr={admin_a}"),
        ],
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("POD_NAME", pod),
            ("POD_NAMESPACE", env.ns.as_str()),
        ],
    );
    let volume_agent = agent_common::spawn_agent(
        "secret-volume-agent",
        &[
            format!("--watch-dir={}", cm_dir.display()),
            format!("--secret-dir={}", secret_dir.display()),
            format!("--output={}", plain.display()),
            format!("--secrets-output={}", separate.display()),
            format!("--reload-url={}", server_b.url),
            format!("--admin-addr={admin_b}"),
        ],
        &[],
    );

    // Revision 1: the value is in the merged output (0600), or in the separate file (0600)
    // beside an output that stays as projected.
    let first = server_a
        .next(Duration::from_secs(60))
        .await
        .expect("a reload");
    assert_eq!(first.body["revision"], 1);
    let doc = yaml(&merged);
    assert_eq!(doc["values"]["db_password"], planted.as_str());
    assert_eq!(doc["values"]["port"], 5432);
    assert_eq!(mode(&merged), 0o600);
    let first = server_b
        .next(Duration::from_secs(60))
        .await
        .expect("a reload");
    assert_eq!(first.body["revision"], 1);
    assert_eq!(yaml(&separate)["values"]["db_password"], planted.as_str());
    assert_eq!(mode(&separate), 0o600);
    assert!(yaml(&plain)["values"].get("db_password").is_none());
    assert!(yaml(&plain)["secrets"]["db_password"]["fingerprint"].is_string());

    // Rotation: a new revision, reloaded by the API agent with the new value.
    let rotated = format!("{planted}-rotated");
    env.apply_yaml(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: creds}}\nstringData: {{password: {rotated}}}\n"
    ));
    projected_revision(&env, "app", 2).await;
    let got = server_a
        .next(Duration::from_secs(30))
        .await
        .expect("a reload");
    assert_eq!(got.body["revision"], 2);
    assert_eq!(yaml(&merged)["values"]["db_password"], rotated.as_str());
    wait_for(30, "the Pod annotation for revision 2", || async {
        applied(&env, pod)
            .await
            .filter(|a| a.revision == Some(2) && a.error.is_none())
    })
    .await;

    // The volume agent: the kubelet brings the ConfigMap first; the new document waits for its
    // Secret (no reload with the old password), then goes with it.
    mirror(&env, "app", &cm_dir, None, "2").await;
    wait_for(30, "the volume agent to wait for the Secret", || async {
        std::fs::read_to_string(&volume_agent.log)
            .ok()
            .filter(|l| l.contains("waits for its Secret"))
    })
    .await;
    assert!(server_b.drain().is_empty(), "no reload without its Secret");
    assert_eq!(yaml(&separate)["values"]["db_password"], planted.as_str());
    mirror(&env, "app", &cm_dir, Some(&secret_dir), "3").await;
    let got = server_b
        .next(Duration::from_secs(30))
        .await
        .expect("a reload");
    assert_eq!(got.body["revision"], 2);
    assert_eq!(
        serde_yaml::from_str::<Value>(got.file.as_deref().unwrap()).unwrap()["values"]["db_password"],
        rotated.as_str(),
        "the separate file is in place when the application is told"
    );

    // The client library through the API: ConfigMap and Secret together.
    let config = hotconf::client::Config::options()
        .env_lookup(|_| None)
        .with_secret()
        .watch_configmap(env.client.clone(), &env.ns, "app")
        .await
        .unwrap();
    assert_eq!(config.revision(), Some(2));
    assert_eq!(config.get::<String>("db_password").unwrap(), rotated);

    // The value is nowhere else: not in the ConfigMap, the CR, Events, any log or metrics.
    let cm = Api::<ConfigMap>::namespaced(env.client.clone(), &env.ns)
        .get("app")
        .await
        .unwrap();
    let rtc: Value =
        serde_json::from_str(&env.kubectl(&["get", "runtimeconfig", "app", "-o", "json"])).unwrap();
    let events = env.kubectl(&["get", "events", "-o", "json"]);
    let mut places = vec![
        ("ConfigMap", serde_json::to_string(&cm).unwrap()),
        ("RuntimeConfig", rtc.to_string()),
        ("Events", events),
        (
            "operator log",
            std::fs::read_to_string(operator.log()).unwrap(),
        ),
    ];
    for (agent, admin) in [(&api_agent, &admin_a), (&volume_agent, &admin_b)] {
        places.push(("agent log", std::fs::read_to_string(&agent.log).unwrap()));
        let (code, metrics) = agent_common::http_status(admin, "/metrics").await.unwrap();
        assert_eq!(code, 200);
        places.push(("agent metrics", metrics));
    }
    for (place, text) in &places {
        assert!(
            !text.contains(&planted),
            "the sensitive value leaked into the {place}"
        );
    }

    // Least privilege: the API agent's only writes were patches of its Pod.
    for w in &env.plane.audit_writes("alice") {
        assert_eq!(
            (w.verb.as_str(), w.resource.as_str()),
            ("patch", "pods"),
            "{w:?}"
        );
    }
}

/// The client with both sources follows the agent's rules against the real API server: the API
/// is primary, so an older volume never wins over it, and API changes arrive without the
/// kubelet's delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_with_both_sources_prefers_the_api() {
    let env = TestEnv::new("client-both").await;
    let api: Api<ConfigMap> = Api::namespaced(env.client.clone(), &env.ns);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cm");
    let old = lazy(10, "CONSERVATIVE");
    let data = projection::config_map_data(&old, &target());
    hotconf::agent::volume::kubelet_write_data(&dir, "1", &data).unwrap();
    project(&api, &lazy(20, "BALANCED"), 2).await;
    let config = hotconf::client::Config::options()
        .env_lookup(|_| None)
        .watch(env.client.clone(), &env.ns, CM, &dir)
        .await
        .unwrap();
    // The API's revision 2, not the volume's 1. On a loaded machine the API may not have listed
    // within the grace period (`arbiter::API_GRACE`, unit-tested there), and the handle opens on
    // the volume; the API's content must still take over.
    until_revision(&config, 2, Duration::from_secs(10), "through the API").await;
    assert_eq!(config.get::<u64>("check_interval").unwrap(), 20);
    project(&api, &lazy(30, "BALANCED"), 3).await;
    until_revision(&config, 3, Duration::from_secs(10), "through the API").await;
    assert_eq!(config.get::<u64>("check_interval").unwrap(), 30);
}
