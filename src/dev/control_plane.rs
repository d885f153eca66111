//! A local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, and the
//! Kubernetes 1.36 CRD server) started from binaries on this machine, for the integration tests
//! and for `hotconf dev`.
//!
//! It follows the envtest convention: the binaries come from `$KUBEBUILDER_ASSETS`, else from the
//! cache that `hack/control-plane-assets.sh` fills. When that kube-apiserver is older than 1.25
//! (the cached one is 1.20), custom resources are served by the 1.36 CRD server of
//! `hack/crd-server-assets.sh`, aggregated behind it ([`crd_server`]): one kubeconfig, custom
//! resources on current semantics, core objects on kube-apiserver's. [`CrdServing`] chooses. Every process is started under a small shell
//! supervisor that holds a pipe from this process on its stdin: when this process exits for any
//! reason (a normal exit, a panic, even SIGKILL) the pipe closes and the supervisor stops its
//! child, so no control-plane process outlives its owner. A last supervisor removes the
//! temporary directory once the others are gone.

use std::{
    fs,
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

pub use super::assets::{ASSETS_VERSION, asset_dir, cache_root};
use super::assets::{binary_version, minor};
use super::crd_server;
use super::crds::install_crds;
use super::error::Error;
use super::pki::write_certificates;
pub use super::process::Process;
use super::process::{REAPER, Supervised};
#[cfg(any(test, feature = "testing"))]
pub use super::testing::{AuditEntry, reload_stand_in};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

/// The user every admin client authenticates as (group `system:masters`).
pub const ADMIN_USER: &str = "hotconf-admin";

/// A second `system:masters` user for an operator under test, so that the audit log tells its
/// requests apart from the test's own.
pub const OPERATOR_USER: &str = "hotconf-operator";

/// The `system:masters` user the CRD server (and its APIService bridge) talks to kube-apiserver
/// as, so that the audit log tells its requests apart too.
pub const CRD_SERVER_USER: &str = "hotconf-crd-server";

/// The kube-controller-manager controllers the harness runs: the garbage collector and the
/// namespace controller, and the workload controllers, whose pods the pod simulator
/// ([`super::sim`]) binds and runs (there is no scheduler and no kubelet). The ServiceAccount
/// and token controllers are not run (nor is the `ServiceAccount` admission plugin): pods need
/// no `default` ServiceAccount, and a simulated agent authenticates as its pod's ServiceAccount
/// by impersonation.
pub const CONTROLLERS: &str =
    "garbagecollector,namespace,deployment,replicaset,statefulset,daemonset";

/// Which server serves custom resources (and the CRD objects themselves).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum CrdServing {
    /// kube-apiserver 1.25 or newer serves them itself; an older one gets the 1.36 CRD server
    /// (`$HOTCONF_CRD_SERVER`, else the cache) aggregated behind it. `HOTCONF_CRD_SERVER=none`
    /// turns the CRD server off.
    #[default]
    Auto,
    /// kube-apiserver serves them itself, whatever its version: the pure-1.20 compatibility mode.
    KubeApiserver,
    /// This `apiextensions-apiserver` binary, aggregated behind kube-apiserver.
    Aggregated(PathBuf),
}

pub(super) type Result<T, E = Error> = std::result::Result<T, E>;

pub(super) fn io<T>(what: impl Into<String>, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|source| Error::Process {
        what: what.into(),
        source,
    })
}

/// How to start a control plane.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the binaries are; `None` resolves `$KUBEBUILDER_ASSETS`, then the cache.
    pub assets: Option<PathBuf>,
    /// The working directory (data, certificates, kubeconfig, logs). `None`: a fresh temporary
    /// directory, removed when the control plane stops or its owner exits.
    pub dir: Option<PathBuf>,
    /// Where process logs go; `None`: `<dir>/logs`.
    pub log_dir: Option<PathBuf>,
    /// Also run kube-controller-manager ([`CONTROLLERS`]: garbage collector, namespace, and the
    /// Deployment, ReplicaSet, StatefulSet and DaemonSet controllers).
    pub controller_manager: bool,
    /// Extra users with a token each (user name → token is `token_for(name)`); each is in
    /// `system:authenticated` only, so RBAC decides what they may do.
    pub users: Vec<String>,
    /// CRD files or directories of them to install and wait for.
    pub crds: Vec<PathBuf>,
    /// Which server serves custom resources.
    pub crd_serving: CrdServing,
    /// Whether the server of custom resources keeps a watch cache (the default, as on every
    /// cluster). Without one the CRD server answers each list page by page from etcd, so its
    /// memory does not grow with the number of custom resources: the 100,000-object benchmark
    /// needs that on this machine, as the 1.36 CRD server's cache holds about 100 KiB per
    /// 16-KiB object. A kube-apiserver that serves custom resources itself then runs without
    /// any watch cache (`--watch-cache=false`).
    pub custom_resource_watch_cache: bool,
    /// etcd's backend quota (`--quota-backend-bytes`).
    pub etcd_quota_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            assets: None,
            dir: None,
            log_dir: None,
            controller_manager: true,
            users: vec!["alice".into(), "bob".into()],
            crds: Vec::new(),
            crd_serving: CrdServing::Auto,
            custom_resource_watch_cache: true,
            etcd_quota_bytes: 4 << 30,
        }
    }
}

/// The CRD server of a running control plane.
pub(super) struct CrdServer {
    pub(super) url: String,
    pub(super) version: String,
    // Stopped before the processes, so it does not log their going.
    pub(super) bridge: Option<crd_server::Bridge>,
}

/// A running control plane. Dropping it (or calling [`ControlPlane::stop`]) stops every process;
/// a temporary working directory is removed.
pub struct ControlPlane {
    pub(super) dir: PathBuf,
    pub(super) log_dir: PathBuf,
    pub(super) kubeconfig_path: PathBuf,
    pub(super) server: String,
    pub(super) tokens: Vec<(String, String)>,
    pub(super) processes: Vec<Process>,
    pub(super) reaper: Option<Supervised>,
    pub(super) kube_version: String,
    pub(super) crd_server: Option<CrdServer>,
}

// Every write at Metadata level: enough to count who wrote what. Reads (get, list) of what the
// operator reads are logged too, to count its reads: ConfigMaps, Secrets, Pods and hotconf's
// own kinds. The reviews the CRD server asks for on each request it authenticates are no one's.
const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: None
  resources:
  - group: authentication.k8s.io
    resources: ["tokenreviews"]
  - group: authorization.k8s.io
    resources: ["subjectaccessreviews"]
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: Metadata
  verbs: ["get", "list"]
  resources:
  - group: ""
    resources: ["configmaps", "secrets", "pods"]
  - group: hotconf.dev
- level: None
"#;

pub(super) fn free_port() -> Result<u16> {
    let listener = io(
        "reserving a loopback port",
        TcpListener::bind("127.0.0.1:0"),
    )?;
    Ok(io("reading the port", listener.local_addr())?.port())
}

pub(super) fn random_token() -> String {
    use rand::Rng as _;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[rng.random_range(0..36)]))
        .collect()
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver (and kube-controller-manager when asked), waits until the
    /// API server is ready, and installs the CRDs of `options.crds`.
    pub async fn start(options: Options) -> Result<Self> {
        let assets = options.assets.clone().unwrap_or_else(asset_dir);
        for binary in ["etcd", "kube-apiserver"] {
            if !assets.join(binary).is_file() {
                return Err(Error::MissingBinary {
                    binary: binary.into(),
                    dir: assets,
                });
            }
        }
        // setup-envtest ships no kube-controller-manager: the cached one (hack/
        // control-plane-assets.sh) runs the garbage collector against a newer kube-apiserver too.
        let controller_manager = [
            assets.join("kube-controller-manager"),
            cache_root()
                .join("control-plane")
                .join(format!("k8s-{ASSETS_VERSION}"))
                .join("kube-controller-manager"),
        ]
        .into_iter()
        .find(|p| p.is_file());
        let controller_manager = match (options.controller_manager, controller_manager) {
            (false, _) => None,
            (true, Some(binary)) => Some(binary),
            (true, None) => {
                return Err(Error::MissingBinary {
                    binary: "kube-controller-manager".into(),
                    dir: assets,
                });
            }
        };
        let kube_version = binary_version(&assets.join("kube-apiserver"))
            .unwrap_or_else(|| ASSETS_VERSION.to_string());
        let crd_binary = match &options.crd_serving {
            CrdServing::KubeApiserver => None,
            CrdServing::Aggregated(binary) => Some(binary.clone()),
            // Since 1.25 kube-apiserver has the semantics the suite proves (CEL rules, status
            // managedFields with `subresource`).
            CrdServing::Auto if minor(&kube_version) >= 25 => None,
            CrdServing::Auto => crd_server::resolve(&cache_root()).map_err(Error::NoCrdServer)?,
        };
        let temporary = options.dir.is_none();
        let dir = match &options.dir {
            Some(dir) => {
                // A persistent dir (`make dev`) starts from a clean etcd each time.
                let _ = fs::remove_dir_all(dir.join("etcd"));
                io("creating the work directory", fs::create_dir_all(dir))?;
                io("resolving the work directory", fs::canonicalize(dir))?
            }
            None => {
                let dir = std::env::temp_dir().join(format!(
                    "hotconf-cp-{}-{}",
                    std::process::id(),
                    random_token().get(..8).unwrap_or("x")
                ));
                io("creating the temporary directory", fs::create_dir_all(&dir))?;
                dir
            }
        };
        let log_dir = options.log_dir.clone().unwrap_or_else(|| dir.join("logs"));
        io("creating the log directory", fs::create_dir_all(&log_dir))?;

        let mut plane = ControlPlane {
            kubeconfig_path: dir.join("kubeconfig"),
            dir: dir.clone(),
            log_dir,
            server: String::new(),
            tokens: Vec::new(),
            processes: Vec::new(),
            reaper: None,
            kube_version,
            crd_server: None,
        };
        if temporary {
            // Started first, so the directory never outlives us, whatever happens next.
            plane.start_reaper()?;
        }
        if let Err(e) = plane.launch(&assets, crd_binary.as_deref(), &options).await {
            plane.print_logs();
            return Err(e);
        }
        if !options.crds.is_empty() {
            plane.install_crds(&options.crds).await?;
        }
        // Last: its garbage collector discovers the CRD groups, and should watch them where
        // they are served (see `wait_crd_routed`).
        if let Some(binary) = controller_manager.as_deref() {
            plane.start_controller_manager(binary)?;
        }
        Ok(plane)
    }

    fn start_controller_manager(&mut self, binary: &Path) -> Result<()> {
        let mut args = vec![
            format!("--kubeconfig={}", self.kubeconfig_path.display()),
            format!("--controllers={}", CONTROLLERS),
            "--leader-elect=false".into(),
        ];
        // Removed in 1.24.
        if minor(&self.kube_version) < 24 {
            args.push("--port=0".into());
        }
        args.extend([
            "--secure-port=0".into(),
            "--concurrent-gc-syncs=5".into(),
            "--v=1".into(),
        ]);
        self.start_component("kube-controller-manager", binary, &args)
    }

    async fn launch(
        &mut self,
        assets: &Path,
        crd_binary: Option<&Path>,
        options: &Options,
    ) -> Result<()> {
        let users = &options.users;
        let dir = self.dir.clone();
        let pki = dir.join("pki");
        io("creating the pki directory", fs::create_dir_all(&pki))?;
        let ca_pem = write_certificates(&pki)?;
        // Removed in 1.24 (kube-apiserver's and kube-controller-manager's insecure ports).
        let insecure_port = minor(&self.kube_version) < 24;

        let admin_token = random_token();
        self.tokens
            .push((ADMIN_USER.to_string(), admin_token.clone()));
        let operator_token = random_token();
        self.tokens
            .push((OPERATOR_USER.to_string(), operator_token.clone()));
        let crd_token = random_token();
        self.tokens
            .push((CRD_SERVER_USER.to_string(), crd_token.clone()));
        let mut token_csv = format!(
            "{admin_token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n{operator_token},{OPERATOR_USER},{OPERATOR_USER},\"system:masters\"\n{crd_token},{CRD_SERVER_USER},{CRD_SERVER_USER},\"system:masters\"\n"
        );
        for user in users {
            let token = random_token();
            token_csv.push_str(&format!("{token},{user},{user}\n"));
            self.tokens.push((user.clone(), token));
        }
        io(
            "writing the token file",
            fs::write(pki.join("tokens.csv"), token_csv),
        )?;
        io(
            "writing the audit policy",
            fs::write(pki.join("audit-policy.yaml"), AUDIT_POLICY),
        )?;

        // etcd
        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        self.start_component(
            "etcd",
            &assets.join("etcd"),
            &[
                "--name=hotconf".into(),
                format!("--data-dir={}", dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=hotconf={peer_url}"),
                format!("--quota-backend-bytes={}", options.etcd_quota_bytes),
                "--snapshot-count=100000".into(),
            ],
        )?;
        wait_tcp(etcd_port, Duration::from_secs(30))
            .await
            .map_err(|_| self.not_ready("etcd", 30))?;

        // kube-apiserver
        let api_port = free_port()?;
        let p = |f: &str| pki.join(f).display().to_string();
        let mut args: Vec<String> = vec![
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={api_port}"),
        ];
        if insecure_port {
            args.push("--insecure-port=0".into());
        }
        if crd_binary.is_some() {
            args.extend(crd_server::kube_apiserver_args(&pki));
        } else if !options.custom_resource_watch_cache {
            args.push("--watch-cache=false".into());
        }
        args.extend([
            format!("--tls-cert-file={}", p("apiserver.crt")),
            format!("--tls-private-key-file={}", p("apiserver.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--token-auth-file={}", p("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--api-audiences=https://kubernetes.default.svc".into(),
            "--allow-privileged=true".into(),
            // No controller creates default ServiceAccounts or tokens: pods name any (or no)
            // ServiceAccount, and the simulator's agents impersonate theirs.
            "--disable-admission-plugins=ServiceAccount".into(),
            "--endpoint-reconciler-type=none".into(),
            "--enable-priority-and-fairness=false".into(),
            format!("--audit-policy-file={}", p("audit-policy.yaml")),
            format!("--audit-log-path={}", self.audit_log_path().display()),
            "--audit-log-format=json".into(),
            format!("--cert-dir={}", dir.join("apiserver-certs").display()),
            "--v=1".into(),
        ]);
        self.start_component("kube-apiserver", &assets.join("kube-apiserver"), &args)?;
        self.server = format!("https://127.0.0.1:{api_port}");
        self.write_kubeconfig(&ca_pem, &admin_token)?;
        if let Some(binary) = crd_binary {
            // kube-apiserver's own CRD machinery waits for CRDs, which the CRD server is to
            // serve: ready but for that, then the CRD server, then ready.
            self.wait_ready(
                "/readyz?exclude=poststarthook/crd-informer-synced&exclude=poststarthook/start-apiextensions-controllers",
                Duration::from_secs(90),
            )
            .await?;
            self.start_crd_server(
                binary,
                &etcd_url,
                &pki,
                &ca_pem,
                options.custom_resource_watch_cache,
            )
            .await?;
        }
        self.wait_ready("/readyz", Duration::from_secs(90)).await?;

        Ok(())
    }

    pub(super) fn not_ready(&self, component: &'static str, seconds: u64) -> Error {
        Error::NotReady {
            component,
            seconds,
            log: self.log_dir.join(format!("{component}.log")),
        }
    }

    pub(super) fn start_component(
        &mut self,
        name: &'static str,
        binary: &Path,
        args: &[String],
    ) -> Result<()> {
        let log = self.log_dir.join(format!("{name}.log"));
        // A fresh log per start.
        let _ = fs::remove_file(&log);
        let process = Process::spawn(name, binary, args, &[], &log)?;
        let mut list = io(
            "recording the supervisor",
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(".supervisors")),
        )?;
        io(
            "recording the supervisor",
            writeln!(list, "{}", process.inner.child.id()),
        )?;
        self.processes.push(process);
        Ok(())
    }

    fn start_reaper(&mut self) -> Result<()> {
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(REAPER)
            .arg("reaper")
            .arg(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = io("starting the reaper", command.spawn())?;
        let stdin = child.stdin.take();
        self.reaper = Some(Supervised {
            name: "reaper",
            child,
            stdin,
        });
        Ok(())
    }

    fn write_kubeconfig(&self, ca_pem: &str, token: &str) -> Result<()> {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let config = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "hotconf-local", "cluster": {
                "server": self.server,
                "certificate-authority-data": b64(ca_pem.as_bytes()),
            }}],
            "users": [{"name": ADMIN_USER, "user": {"token": token}}],
            "contexts": [{"name": "hotconf-local", "context": {
                "cluster": "hotconf-local", "user": ADMIN_USER, "namespace": "default"}}],
            "current-context": "hotconf-local",
        });
        let yaml = serde_yaml::to_string(&config).expect("a JSON value serializes as YAML");
        io(
            "writing the kubeconfig",
            fs::write(&self.kubeconfig_path, yaml),
        )
    }

    async fn wait_ready(&self, check: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let client = self.client().await?;
        loop {
            let req = http::Request::get(check)
                .body(Vec::new())
                .expect("static request");
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                _ if Instant::now() > deadline => {
                    // Which checks failed, for the log reader.
                    let verbose = http::Request::get("/readyz?verbose")
                        .body(Vec::new())
                        .expect("static request");
                    let failing: Vec<String> = match client.request_text(verbose).await {
                        Ok(text) => text,
                        Err(kube::Error::Api(s)) => s.message,
                        Err(e) => e.to_string(),
                    }
                    .lines()
                    .filter(|l| l.contains("[-]"))
                    .map(str::to_string)
                    .collect();
                    tracing::error!(?failing, "kube-apiserver is not ready");
                    eprintln!("kube-apiserver is not ready: {failing:?}");
                    return Err(self.not_ready("kube-apiserver", timeout.as_secs()));
                }
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
            if let Some(dead) = self.exited() {
                tracing::error!(component = dead, "control-plane process exited");
                return Err(self.not_ready(dead, 0));
            }
        }
    }

    pub(super) fn exited(&self) -> Option<&'static str> {
        // The supervisor outlives its child, so look for the child under it.
        self.processes
            .iter()
            .find(|p| !p.running())
            .map(|p| p.inner.name)
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// kube-apiserver's version (core objects), e.g. `1.20.2`.
    pub fn kube_version(&self) -> &str {
        &self.kube_version
    }

    /// The version whose semantics custom resources and CRDs get: the CRD server's when one
    /// runs, else kube-apiserver's.
    pub fn crd_version(&self) -> &str {
        self.crd_server
            .as_ref()
            .map_or(&self.kube_version, |c| &c.version)
    }

    /// The CRD server's own URL, when one runs behind kube-apiserver. Clients normally go through
    /// kube-apiserver ([`ControlPlane::kubeconfig_path`]); this is for checking the CRD server
    /// directly.
    pub fn crd_server_url(&self) -> Option<&str> {
        self.crd_server.as_ref().map(|c| c.url.as_str())
    }

    // A client configuration for `user` against `url` (kube-apiserver or the CRD server, whose
    // certificates the same CA signs).
    pub(super) async fn config_for(&self, url: &str, user: &str) -> Result<Config> {
        let mut config = self.config().await?;
        config.cluster_url = url.parse().map_err(|e| Error::Crd {
            path: self.kubeconfig_path.clone(),
            message: format!("{url}: {e}"),
        })?;
        let token = self.token_for(user).unwrap_or_default();
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.to_string().into()),
            ..Default::default()
        };
        Ok(config)
    }

    /// The admin kubeconfig (user [`ADMIN_USER`], group `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// The working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the process logs are.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// The bearer token of a user named in [`Options::users`] (or [`ADMIN_USER`]).
    pub fn token_for(&self, user: &str) -> Option<&str> {
        self.tokens
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, t)| t.as_str())
    }

    /// A kube client configuration for the admin user.
    pub async fn config(&self) -> Result<Config> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig_path)?;
        Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
    }

    /// A new admin client. Each async runtime needs its own client, so tests call this rather
    /// than share one.
    pub async fn client(&self) -> Result<Client> {
        Ok(Client::try_from(self.config().await?)?)
    }

    /// Writes a kubeconfig for `user` next to the admin one and returns its path.
    pub fn kubeconfig_for(&self, user: &str) -> Result<PathBuf> {
        let token = self.token_for(user).ok_or_else(|| Error::Crd {
            path: self.kubeconfig_path.clone(),
            message: format!("no token for user {user}"),
        })?;
        let admin = io(
            "reading the kubeconfig",
            fs::read_to_string(&self.kubeconfig_path),
        )?;
        let admin_token = self.token_for(ADMIN_USER).unwrap_or_default();
        let path = self.dir.join(format!("kubeconfig-{user}"));
        // Written aside and renamed over: tests that share the plane start operators as the
        // same user at once, and one must never read the file another is rewriting (an
        // operator started on a truncated kubeconfig fails "no current context").
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let aside = self
            .dir
            .join(format!(".kubeconfig-{user}.{}.{n}", std::process::id()));
        io(
            "writing a user kubeconfig",
            fs::write(&aside, admin.replace(admin_token, token))
                .and_then(|()| fs::rename(&aside, &path)),
        )?;
        Ok(path)
    }

    /// Installs every CRD in the given files or directories by server-side apply and waits
    /// until each is established.
    pub async fn install_crds(&self, paths: &[PathBuf]) -> Result<Vec<String>> {
        let client = self.client().await?;
        let names = install_crds(&client, paths).await?;
        for name in &names {
            self.wait_crd_routed(name).await?;
        }
        Ok(names)
    }

    /// The API server's audit log: one JSON object per write request.
    pub fn audit_log_path(&self) -> PathBuf {
        self.log_dir.join("audit.log")
    }

    /// Waits until requests for CRD `name`'s group reach the CRD server (when one runs): after
    /// installing a CRD by other means (kubectl), before relying on its objects. See
    /// [`crd_server`]'s `wait_routed` for why discovery alone is not enough.
    pub async fn wait_crd_routed(&self, name: &str) -> Result<()> {
        if self.crd_server.is_none() {
            return Ok(());
        }
        let client = self.client().await?;
        let crd = Api::<CustomResourceDefinition>::all(client.clone())
            .get(name)
            .await?;
        crd_server::wait_routed(&client, &crd, Duration::from_secs(60)).await
    }

    /// Prints the tail of every process log to stderr (for a failing test).
    pub fn print_logs(&self) {
        for entry in fs::read_dir(&self.log_dir).into_iter().flatten().flatten() {
            let Ok(text) = fs::read_to_string(entry.path()) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "----- {} (last {} lines) -----\n{}",
                entry.path().display(),
                tail.len(),
                tail.join("\n")
            );
        }
    }

    /// Stops every process (the controller manager first, etcd last) and removes a temporary
    /// working directory.
    pub fn stop(&mut self) {
        if let Some(crd) = self.crd_server.as_mut() {
            drop(crd.bridge.take());
        }
        while let Some(mut p) = self.processes.pop() {
            p.stop();
        }
        if let Some(mut reaper) = self.reaper.take() {
            drop(reaper.stdin.take());
            let _ = reaper.child.wait();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn wait_tcp(port: u16, timeout: Duration) -> std::result::Result<(), ()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(())
}
