//! Health that cannot lie, against real faults: `/readyz`, `/healthz` and
//! `hotconf_watch_up{kind}` go bad under the fault and recover after it.
//!
//! One test SIGSTOPs the control plane's CRD server, which every test of a binary shares: this
//! binary holds only health tests, they run one at a time (`SERIAL`), and the stop is short and
//! undone on drop, even when the test panics.

mod common;

use std::time::Duration;

use common::{TestEnv, eventually, free_port};
use hotconf::crd::RuntimeConfig;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api,
    api::{Patch, PatchParams},
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// RuntimeConfigs reading one Secret: more than a controller's 16 reconcile slots.
const CONSUMERS: usize = 20;

/// Bounds in seconds, so the faults show within a test's patience.
fn fast_bounds(port: u16) -> Vec<String> {
    vec![
        format!("--admin-addr=127.0.0.1:{port}"),
        "--watch-idle-timeout=3".into(),
        "--watch-timeout=2".into(),
        "--loop-stall-timeout=3".into(),
    ]
}

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n")?.1.to_string();
    Some((status, body))
}

/// Waits until `path` answers `status`; returns the body.
async fn until(port: u16, path: &str, status: u16, secs: u64) -> String {
    eventually(secs, &format!("{path} to answer {status}"), || async move {
        get(port, path)
            .await
            .filter(|(s, _)| *s == status)
            .map(|(_, b)| b)
    })
    .await
}

async fn metric(port: u16, series: &str) -> Option<f64> {
    let (_, body) = get(port, "/metrics").await?;
    common::sample(&body, series)
}

fn up(kind: &str) -> String {
    format!("hotconf_watch_up{{kind=\"{kind}\"}}")
}

fn restarts(kind: &str) -> String {
    format!("hotconf_watch_restarts_total{{kind=\"{kind}\"}}")
}

/// A stopped process, continued when dropped.
struct Stopped(Pid);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        let pid = Pid::from_raw(i32::try_from(pid).unwrap());
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

#[tokio::test]
async fn a_silent_crd_server_stalls_the_custom_resource_watches_until_it_resumes() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new("stall").await;
    let Some(pid) = env.plane.component_pid("crd-server") else {
        eprintln!("kube-apiserver serves the custom resources itself here: nothing to stall");
        return;
    };
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    let creds = |password: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
               "stringData": {"password": password}})
    };
    let apply = PatchParams::apply("health-test").force();
    secrets
        .patch("creds", &apply, &Patch::Apply(creds("first-secret")))
        .await
        .unwrap();
    // More readers of the Secret than a controller has reconcile slots (16): when they all
    // hang, the loop itself cannot turn.
    let names: Vec<String> = (0..CONSUMERS).map(|i| format!("app-{i}")).collect();
    let yaml: String = names
        .iter()
        .map(|name| format!("---\napiVersion: hotconf.dev/v1alpha1\nkind: RuntimeConfig\nmetadata: {{name: {name}}}\nspec:\n  schema:\n    db_password: {{type: string, sensitive: true}}\n  valuesFrom:\n  - {{key: db_password, secretKeyRef: {{name: creds, key: password}}}}\n"))
        .collect();
    env.apply_yaml(&yaml);
    let at_revision = |revision: i64| {
        let (rtcs, names) = (rtcs.clone(), names.clone());
        async move {
            eventually(
                90,
                &format!("every RuntimeConfig at revision {revision}"),
                || {
                    let (rtcs, names) = (rtcs.clone(), names.clone());
                    async move {
                        for name in &names {
                            let obj = rtcs.get(name).await.ok()?;
                            (obj.status?.current_revision == Some(revision)).then_some(())?;
                        }
                        Some(())
                    }
                },
            )
            .await
        }
    };
    let port = free_port();
    let _operator = env.start_operator_with(
        hotconf::dev::control_plane::OPERATOR_USER,
        &fast_bounds(port),
    );
    let ready = until(port, "/readyz", 200, 60).await;
    assert!(ready.starts_with("ok"), "{ready}");
    until(port, "/healthz", 200, 10).await;
    at_revision(1).await;
    for kind in ["RuntimeConfig", "PoolBudget", "ConfigMap", "Secret", "Pod"] {
        assert_eq!(metric(port, &up(kind)).await, Some(1.0), "{kind} watch up");
    }
    // A few idle bounds pass with nothing changing: quiet watches stay up (the server ends each
    // watch request after `--watch-timeout` and the re-watch shows progress; bookmarks may not
    // come at all).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let (status, quiet) = get(port, "/readyz").await.unwrap();
    assert_eq!(status, 200, "quiet is not stalled: {quiet}");
    let restarts_before = metric(port, &restarts("RuntimeConfig")).await.unwrap();
    // A watch the server ended is watched again from where it was, not listed again.
    assert_eq!(restarts_before, 0.0, "no restart while quiet");

    // The CRD server stops answering: its connections stay open and deliver nothing. A Secret
    // rotation (kube-apiserver still serves Secrets) starts a reconcile of every reader, whose
    // status writes wait on the stopped server and hold every slot.
    let stopped = Stopped::new(pid);
    let fault = std::time::Instant::now();
    secrets
        .patch("creds", &apply, &Patch::Apply(creds("second-secret")))
        .await
        .unwrap();
    // Both kinds' watches stall, each on its own clock: wait for the one this test names.
    let body = eventually(20, "/readyz to name the RuntimeConfig watch", || async {
        get(port, "/readyz")
            .await
            .filter(|(status, body)| *status == 503 && body.contains("RuntimeConfigs in"))
            .map(|(_, body)| body)
    })
    .await;
    let detected = fault.elapsed();
    assert!(
        body.contains("stalled") || body.contains("down"),
        "and why: {body}"
    );
    assert!(
        !body.contains("ConfigMaps of"),
        "the ConfigMap watches, on kube-apiserver, stay up: {body}"
    );
    assert_eq!(metric(port, &up("RuntimeConfig")).await, Some(0.0));
    assert_eq!(metric(port, &up("ConfigMap")).await, Some(1.0));
    // The heartbeat stops at once; the reconciles pass the bound a moment later.
    let reconcile = format!("the reconcile of RuntimeConfig {}/app-", env.ns);
    let wedged = eventually(20, "/healthz to name the wedged loop", || async {
        get(port, "/healthz")
            .await
            .filter(|(status, body)| {
                *status == 503 && body.contains("no heartbeat") && body.contains(&reconcile)
            })
            .map(|(_, body)| body)
    })
    .await;
    assert!(
        wedged.contains(&format!("controller RuntimeConfigs in {}", env.ns)),
        "names the loop: {wedged}"
    );
    eventually(20, "a stall restart", || async {
        (metric(port, &restarts("RuntimeConfig")).await? > restarts_before).then_some(())
    })
    .await;
    eprintln!("stall detected after {detected:?}");

    // It resumes: the restarted watches list, the reconcile finishes, everything recovers.
    drop(stopped);
    let ready = until(port, "/readyz", 200, 60).await;
    assert!(ready.starts_with("ok"), "{ready}");
    until(port, "/healthz", 200, 60).await;
    assert_eq!(metric(port, &up("RuntimeConfig")).await, Some(1.0));
    at_revision(2).await;
}

#[tokio::test]
async fn a_forbidden_pod_watch_is_down_until_access_is_granted() {
    let _serial = SERIAL.lock().await;
    let env = TestEnv::new("down").await;
    // alice may do everything the operator does in the namespace, except read pods.
    let role = |name: &str, rules: serde_json::Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
               "metadata": {"name": name}, "rules": rules})
        .to_string()
    };
    let binding = |name: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": name},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]})
        .to_string()
    };
    env.apply_yaml(&role(
        "operator",
        json!([
            {"apiGroups": [""], "resources": ["configmaps", "secrets", "events"], "verbs": ["*"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["*"]},
            {"apiGroups": ["hotconf.dev"], "resources": ["*"], "verbs": ["*"]},
            {"apiGroups": ["apps"], "resources": ["*"], "verbs": ["*"]},
        ]),
    ));
    env.apply_yaml(&binding("operator"));
    let port = free_port();
    let _operator = env.start_operator_with("alice", &fast_bounds(port));
    let body = until(port, "/readyz", 503, 60).await;
    eventually(30, "the pod watch named down", || async {
        let (status, body) = get(port, "/readyz").await?;
        (status == 503 && body.contains("Pods in") && body.contains("down")).then_some(())
    })
    .await;
    eventually(30, "the RuntimeConfig watch up meanwhile", || async {
        (metric(port, &up("RuntimeConfig")).await? == 1.0).then_some(())
    })
    .await;
    assert_eq!(metric(port, &up("Pod")).await, Some(0.0), "{body}");
    assert!(metric(port, &restarts("Pod")).await.unwrap() >= 1.0);
    // Liveness is not readiness: the loops turn.
    until(port, "/healthz", 200, 10).await;

    env.apply_yaml(&role(
        "pods",
        json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]),
    ));
    env.apply_yaml(&binding("pods"));
    let ready = until(port, "/readyz", 200, 60).await;
    assert!(ready.starts_with("ok"), "{ready}");
    assert_eq!(metric(port, &up("Pod")).await, Some(1.0));
}
