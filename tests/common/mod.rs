//! Shared set-up for the integration tests: one control plane per test binary, a namespace and
//! a fresh client per test, and the control-plane logs printed when a test fails.
#![allow(dead_code)]

#[path = "http.rs"]
mod http;
pub use http::{http_get, sample};
#[path = "sim.rs"]
pub mod sim;

use std::path::PathBuf;

use hotconf::dev::control_plane::{ControlPlane, Options};
use kube::Client;
use tokio::sync::OnceCell;

static PLANE: OnceCell<Result<ControlPlane, String>> = OnceCell::const_new();

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The control plane shared by this test binary, started on first use with the CRDs of `crds/`.
/// It is never dropped: the supervisors stop it when the test binary exits.
pub async fn plane() -> &'static ControlPlane {
    let started = PLANE
        .get_or_init(|| async {
            let name = std::env::current_exe()
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "tests".into());
            let options = Options {
                log_dir: Some(repo().join("target/control-plane-logs").join(name)),
                crds: vec![repo().join("crds")],
                ..Options::default()
            };
            ControlPlane::start(options)
                .await
                .map_err(|e| e.to_string())
        })
        .await;
    match started {
        Ok(plane) => plane,
        Err(e) => panic!("the control plane did not start: {e}"),
    }
}

/// One test's view: the shared control plane, its own namespace and a client of its runtime.
/// When the test panics, the control-plane logs are printed.
pub struct TestEnv {
    pub plane: &'static ControlPlane,
    pub client: Client,
    pub ns: String,
}

impl TestEnv {
    pub async fn new(prefix: &str) -> TestEnv {
        TestEnv::on(plane().await, prefix).await
    }

    /// The same view on another control plane (one a test binary starts in another mode).
    pub async fn on(plane: &'static ControlPlane, prefix: &str) -> TestEnv {
        let client = plane.client().await.expect("admin client");
        let ns = plane.namespace(prefix).await.expect("test namespace");
        TestEnv { plane, client, ns }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test in namespace {} failed; control-plane logs:", self.ns);
            self.plane.print_logs();
        }
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `secs` seconds.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {secs}s waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The `hotconf` binary built for this test run.
pub fn hotconf_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hotconf"))
}

impl TestEnv {
    /// Starts `hotconf operator` for this test's namespace, as its own user, logging to
    /// `target/control-plane-logs/<binary>/operator-<ns>.log`.
    pub fn start_operator(&self) -> hotconf::dev::control_plane::Process {
        self.start_operator_with(hotconf::dev::control_plane::OPERATOR_USER, &[])
    }

    /// Starts `hotconf operator` for this namespace as `user` (a token user, or a
    /// ServiceAccount impersonated by the admin), with extra arguments; the admin server goes
    /// to a free loopback port unless an address is given.
    pub fn start_operator_with(
        &self,
        user: &str,
        extra: &[String],
    ) -> hotconf::dev::control_plane::Process {
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let log = self
            .plane
            .log_dir()
            .join(format!("operator-{}-{safe}.log", self.ns));
        let mut args = vec!["operator".to_string(), format!("--namespaces={}", self.ns)];
        if !extra.iter().any(|a| a.starts_with("--admin-addr")) {
            args.push(format!("--admin-addr=127.0.0.1:{}", free_port()));
        }
        args.extend(extra.iter().cloned());
        self.spawn_operator(user, &args, &log)
    }

    /// Starts the hotconf binary as `user` with exactly `args` (no namespace added: an operator
    /// started this way may see every namespace of the plane), logging to `log`.
    pub fn spawn_operator(
        &self,
        user: &str,
        args: &[String],
        log: &std::path::Path,
    ) -> hotconf::dev::control_plane::Process {
        self.plane
            .spawn("hotconf-operator", &hotconf_bin(), args, user, log)
            .expect("starting the operator")
    }

    /// Runs kubectl against the control plane in this test's namespace; panics with its output
    /// when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_raw(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl and returns its output, whatever the exit code.
    pub fn kubectl_raw(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.plane.kubeconfig_path())
            .arg("-n")
            .arg(&self.ns)
            .args(args)
            .output()
            .expect("running kubectl")
    }

    /// Applies YAML text with kubectl in this namespace.
    pub fn apply_yaml(&self, yaml: &str) -> String {
        let out = self.kubectl_input(&["-n", &self.ns, "apply", "-f", "-"], yaml);
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl (no namespace flag) with `input` on its standard input.
    pub fn kubectl_input(&self, args: &[&str], input: &str) -> std::process::Output {
        use std::io::Write as _;
        let mut child = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.plane.kubeconfig_path())
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running kubectl");
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Now, in the type managedFields times have, truncated to the second as theirs are.
fn jiff_now() -> k8s_openapi::jiff::Timestamp {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    k8s_openapi::jiff::Timestamp::from_second(secs as i64).unwrap()
}

/// How the operator tells its own status writes from everyone else's, and who changed a spec,
/// on whatever server the test runs against: a RuntimeConfig changed by two field managers in
/// turn records each as `changedBy` (never `hotconf`, whose status entry is in managedFields too),
/// hotconf's status entry carries `subresource: status` exactly when `expect_subresource` (1.22+
/// servers record it; 1.20 does not), and an operator restart over the converged object writes
/// nothing: the status it finds is recognized as its own.
pub async fn echo_detection_and_changed_by(env: &TestEnv, expect_subresource: bool) {
    use hotconf::crd::{MANAGER, RuntimeConfig};
    use kube::api::{Api, Patch, PatchParams};

    let rtcs: Api<RuntimeConfig> = Api::namespaced(env.client.clone(), &env.ns);
    let apply = |manager: &'static str, v: i64| {
        let rtcs = rtcs.clone();
        async move {
            let object = serde_json::json!({
                "apiVersion": "hotconf.dev/v1alpha1", "kind": "RuntimeConfig",
                "metadata": {"name": "echo"}, "spec": {"values": {"v": v}}});
            // Forced: the second manager takes the field over, as a new owner of a spec does.
            rtcs.patch(
                "echo",
                &PatchParams::apply(manager).force(),
                &Patch::Apply(&object),
            )
            .await
            .unwrap();
        }
    };
    let at_revision = |revision: i64| {
        let rtcs = rtcs.clone();
        async move {
            eventually(60, &format!("echo at revision {revision}"), || {
                let rtcs = rtcs.clone();
                async move {
                    rtcs.get("echo").await.ok().filter(|o| {
                        o.status.as_ref().is_some_and(|s| {
                            s.current_revision == Some(revision)
                                && s.observed_generation == o.metadata.generation
                        })
                    })
                }
            })
            .await
        }
    };

    let admin_port = free_port();
    let mut operator = env.start_operator_with(
        hotconf::dev::control_plane::OPERATOR_USER,
        &[format!("--admin-addr=127.0.0.1:{admin_port}")],
    );
    apply("release-bot", 1).await;
    let first = at_revision(1).await;
    let status_entry = first
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|m| {
            m.manager.as_deref() == Some(MANAGER)
                && m.fields_v1
                    .as_ref()
                    .is_some_and(|f| f.0.get("f:status").is_some())
        })
        .expect("hotconf's status entry in managedFields");
    assert_eq!(
        status_entry.subresource.as_deref() == Some("status"),
        expect_subresource,
        "hotconf's status entry: {status_entry:?}"
    );
    let history = &first.status.as_ref().unwrap().history;
    assert_eq!(history[0].changed_by.as_deref(), Some("release-bot"));

    // managedFields time has one-second resolution: two managers within one second cannot be
    // told apart by it (a 1.20 server also leaves the first one an entry). A person's next
    // change comes later than that; wait for the clock to pass the first entry's second.
    let first_second = first
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.time.as_ref().map(|t| t.0))
        .max()
        .unwrap();
    eventually(5, "the next second", || async {
        (jiff_now() > first_second).then_some(())
    })
    .await;
    apply("alice-tool", 2).await;
    let second = at_revision(2).await;
    let history = &second.status.as_ref().unwrap().history;
    assert_eq!(
        history.last().unwrap().changed_by.as_deref(),
        Some("alice-tool"),
        "{:#?}",
        second.metadata.managed_fields
    );

    // Restart over the converged object: it is reconciled (the counter says so) and nothing
    // is written.
    let writes = || {
        env.plane
            .audit_writes(hotconf::dev::control_plane::OPERATOR_USER)
            .into_iter()
            .filter(|e| e.namespace == env.ns && e.resource != "events")
            .count()
    };
    let reconciled = |port: u16| async move {
        http_get(&format!("127.0.0.1:{port}"), "/metrics")
            .await
            .and_then(|m| {
                sample(
                    &m,
                    "hotconf_reconciles_total{kind=\"RuntimeConfig\",result=\"success\"}",
                )
            })
            .unwrap_or(0.0)
    };
    eventually(
        30,
        "the first operator to finish its reconciles",
        || async { (reconciled(admin_port).await >= 2.0).then_some(()) },
    )
    .await;
    operator.stop();
    let before = writes();
    let admin_port = free_port();
    let _operator = env.start_operator_with(
        hotconf::dev::control_plane::OPERATOR_USER,
        &[format!("--admin-addr=127.0.0.1:{admin_port}")],
    );
    eventually(60, "the restarted operator to reconcile echo", || async {
        (reconciled(admin_port).await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(
        writes(),
        before,
        "the restarted operator wrote to a converged object"
    );
    let after = rtcs.get("echo").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        second.metadata.resource_version
    );
}

/// The schema of `spec.pools.database` in the PoolBudget CRD as the server stores it.
pub fn stored_database_schema(env: &TestEnv) -> serde_json::Value {
    let stored: serde_json::Value = serde_json::from_str(&env.kubectl(&[
        "get",
        "crd",
        "poolbudgets.hotconf.dev",
        "-o",
        "json",
    ]))
    .unwrap();
    stored["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["pools"]["properties"]["database"]
        .clone()
}

/// Panics unless custom resources get the semantics of Kubernetes 1.25 or newer (CEL rules
/// enforced): the 1.36 CRD server, or a modern kube-apiserver from `KUBEBUILDER_ASSETS`.
pub fn assert_current_semantics(plane: &ControlPlane) {
    let version = plane.crd_version();
    let minor: u32 = version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        minor >= 25,
        "custom resources are served with Kubernetes {version} semantics, which do not enforce \
         CEL rules; these tests need the 1.36 CRD server (unset HOTCONF_CRD_SERVER=none) or \
         KUBEBUILDER_ASSETS with a kube-apiserver of 1.25 or newer"
    );
}
