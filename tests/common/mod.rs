//! Shared set-up for the integration tests: one control plane per test binary, a namespace and
//! a fresh client per test, and the control-plane logs printed when a test fails.
#![allow(dead_code)]

use std::path::PathBuf;

use hotconf::envtest::{ControlPlane, Options};
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
        let plane = plane().await;
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
    pub fn start_operator(&self) -> hotconf::envtest::Process {
        self.start_operator_with(hotconf::envtest::OPERATOR_USER, &[])
    }

    /// Starts `hotconf operator` for this namespace as `user` (a token user, or a
    /// ServiceAccount impersonated by the admin), with extra arguments; the admin server goes
    /// to a free loopback port unless an address is given.
    pub fn start_operator_with(&self, user: &str, extra: &[String]) -> hotconf::envtest::Process {
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
        self.plane
            .spawn("hotconf-operator", &hotconf_bin(), &args, user, &log)
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
