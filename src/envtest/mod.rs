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
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, Instant},
};

mod crd_server;

use crate::Error;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, Config, ResourceExt,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

/// The Kubernetes version that `hack/control-plane-assets.sh` builds and caches.
pub const ASSETS_VERSION: &str = "1.20.2";

/// The user every admin client authenticates as (group `system:masters`).
pub const ADMIN_USER: &str = "hotconf-admin";

/// A second `system:masters` user for an operator under test, so that the audit log tells its
/// requests apart from the test's own.
pub const OPERATOR_USER: &str = "hotconf-operator";

/// The `system:masters` user the CRD server (and its APIService bridge) talks to kube-apiserver
/// as, so that the audit log tells its requests apart too.
pub const CRD_SERVER_USER: &str = "hotconf-crd-server";

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

type Result<T, E = Error> = std::result::Result<T, E>;

fn io<T>(what: impl Into<String>, r: std::io::Result<T>) -> Result<T> {
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
    /// Also run kube-controller-manager (garbage collector and namespace controllers).
    pub controller_manager: bool,
    /// Extra users with a token each (user name → token is `token_for(name)`); each is in
    /// `system:authenticated` only, so RBAC decides what they may do.
    pub users: Vec<String>,
    /// CRD files or directories of them to install and wait for.
    pub crds: Vec<PathBuf>,
    /// Which server serves custom resources.
    pub crd_serving: CrdServing,
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
        }
    }
}

/// Resolves the directory holding `etcd`, `kube-apiserver` and `kube-controller-manager`.
pub fn asset_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    cache_root()
        .join("control-plane")
        .join(format!("k8s-{ASSETS_VERSION}"))
}

/// The cache the asset scripts fill: `$HOTCONF_CACHE_DIR`, else `$XDG_CACHE_HOME/hotconf`, else
/// `~/.cache/hotconf`.
pub fn cache_root() -> PathBuf {
    std::env::var_os("HOTCONF_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("hotconf")))
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".cache/hotconf")
        })
}

/// The version a Kubernetes binary reports with `--version` (`Kubernetes v1.20.2` → `1.20.2`).
fn binary_version(binary: &Path) -> Option<String> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().find_map(|w| w.strip_prefix('v'))?;
    Some(version.trim().to_string())
}

/// The minor of a `1.N.P` version; 0 when unknown.
fn minor(version: &str) -> u32 {
    version
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

/// The CRD server of a running control plane.
struct CrdServer {
    url: String,
    version: String,
    // Stopped before the processes, so it does not log their going.
    bridge: Option<crd_server::Bridge>,
}

struct Supervised {
    name: &'static str,
    child: Child,
    // Closing this pipe tells the supervisor to stop its process.
    stdin: Option<ChildStdin>,
}

/// A running control plane. Dropping it (or calling [`ControlPlane::stop`]) stops every process;
/// a temporary working directory is removed.
pub struct ControlPlane {
    dir: PathBuf,
    log_dir: PathBuf,
    kubeconfig_path: PathBuf,
    server: String,
    tokens: Vec<(String, String)>,
    processes: Vec<Process>,
    reaper: Option<Supervised>,
    kube_version: String,
    crd_server: Option<CrdServer>,
}

// Starts BIN ARGS under bash; stops it with SIGTERM (then SIGKILL) once stdin reaches EOF.
const SUPERVISOR: &str = r#"
"$@" </dev/null &
child=$!
while IFS= read -r _; do :; done
kill -TERM "$child" 2>/dev/null
for _ in $(seq 100); do kill -0 "$child" 2>/dev/null || exit 0; sleep 0.1; done
kill -KILL "$child" 2>/dev/null
"#;

// Waits for stdin EOF, then for the supervisors listed in $dir/.supervisors to exit, then
// removes the directory.
const REAPER: &str = r#"
dir=$1
while IFS= read -r _; do :; done
for _ in $(seq 150); do
  alive=
  for p in $(cat "$dir/.supervisors" 2>/dev/null); do kill -0 "$p" 2>/dev/null && alive=1; done
  [ -z "$alive" ] && break
  sleep 0.1
done
rm -rf "$dir"
"#;

// Every write (and nothing else) at Metadata level: enough to count who wrote what. The reviews
// the CRD server asks for on each request it authenticates are no writes of anyone's.
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
- level: None
"#;

fn free_port() -> Result<u16> {
    let listener = io(
        "reserving a loopback port",
        TcpListener::bind("127.0.0.1:0"),
    )?;
    Ok(io("reading the port", listener.local_addr())?.port())
}

fn random_token() -> String {
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
        if let Err(e) = plane
            .launch(&assets, crd_binary.as_deref(), &options.users)
            .await
        {
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
            "--controllers=garbagecollector,namespace".into(),
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
        users: &[String],
    ) -> Result<()> {
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
                "--quota-backend-bytes=4294967296".into(),
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
            // No controller creates default ServiceAccounts, and no pod ever runs.
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
            self.start_crd_server(binary, &etcd_url, &pki, &ca_pem)
                .await?;
        }
        self.wait_ready("/readyz", Duration::from_secs(90)).await?;

        Ok(())
    }

    // Starts the 1.36 CRD server beside kube-apiserver and hands it `apiextensions.k8s.io/v1`
    // and (through the bridge) every CRD group.
    async fn start_crd_server(
        &mut self,
        binary: &Path,
        etcd_url: &str,
        pki: &Path,
        ca_pem: &str,
    ) -> Result<()> {
        let port = free_port()?;
        let kubeconfig = self.kubeconfig_for(CRD_SERVER_USER)?;
        let flags = crd_server::Flags {
            etcd_url,
            port,
            pki,
            kubeconfig: &kubeconfig,
            audit_log: &self.log_dir.join("crd-server-audit.log"),
        };
        self.start_component("crd-server", binary, &flags.args())?;
        let url = format!("https://127.0.0.1:{port}");
        let direct = self.config_for(&url, CRD_SERVER_USER).await?;
        let deadline = Instant::now() + Duration::from_secs(90);
        let version = loop {
            if let Ok(client) = Client::try_from(direct.clone()) {
                let ready = http::Request::get("/readyz")
                    .body(Vec::new())
                    .expect("static request");
                if let Ok(body) = client.request_text(ready).await
                    && body.trim() == "ok"
                    && let Ok(info) = client.apiserver_version().await
                {
                    break info.git_version.trim_start_matches('v').to_string();
                }
            }
            if Instant::now() > deadline {
                return Err(self.not_ready("crd-server", 90));
            }
            // (After the pause: a supervisor starts its program a moment after it starts.)
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Some(dead) = self.exited() {
                return Err(self.not_ready(dead, 0));
            }
        };
        let front = Client::try_from(self.config_for(&self.server, CRD_SERVER_USER).await?)?;
        crd_server::ensure_service(&front, port).await?;
        crd_server::ensure_api_service(&front, "apiextensions.k8s.io", "v1", port, ca_pem).await?;
        crd_server::wait_available(&front, "v1.apiextensions.k8s.io", Duration::from_secs(60))
            .await?;
        let bridge = crd_server::Bridge::start(
            self.config_for(&self.server, CRD_SERVER_USER).await?,
            direct,
            port,
            ca_pem.to_string(),
            self.log_dir.join("crd-bridge.log"),
        );
        self.crd_server = Some(CrdServer {
            url,
            version,
            bridge: Some(bridge),
        });
        Ok(())
    }

    fn not_ready(&self, component: &'static str, seconds: u64) -> Error {
        Error::NotReady {
            component,
            seconds,
            log: self.log_dir.join(format!("{component}.log")),
        }
    }

    fn start_component(
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

    fn exited(&self) -> Option<&'static str> {
        // The supervisor outlives its child, so look for the child under it.
        self.processes
            .iter()
            .find(|p| !p.running())
            .map(|p| p.inner.name)
    }

    /// The API server's audit log: one JSON object per write request.
    pub fn audit_log_path(&self) -> PathBuf {
        self.log_dir.join("audit.log")
    }

    /// The write requests of `user` logged since the start, as
    /// (verb, resource, namespace, name, response code).
    pub fn audit_writes(&self, user: &str) -> Vec<AuditEntry> {
        let text = fs::read_to_string(self.audit_log_path()).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|e| e["stage"] == "ResponseComplete" && e["user"]["username"] == user)
            .map(|e| {
                let s = |p: &str| {
                    e.pointer(p)
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_string()
                };
                AuditEntry {
                    verb: s("/verb"),
                    resource: s("/objectRef/resource"),
                    subresource: s("/objectRef/subresource"),
                    namespace: s("/objectRef/namespace"),
                    name: s("/objectRef/name"),
                    code: e
                        .pointer("/responseStatus/code")
                        .and_then(|v| v.as_i64())
                        .unwrap_or(0),
                }
            })
            .collect()
    }

    /// Starts `program` under a supervisor (like the control plane's own processes), with
    /// `KUBECONFIG` pointing at a kubeconfig for `user` (a token user, or a ServiceAccount
    /// `system:serviceaccount:NS:NAME` impersonated by the admin), its output appended to `log`.
    pub fn spawn(
        &self,
        name: &'static str,
        program: &Path,
        args: &[String],
        user: &str,
        log: &Path,
    ) -> Result<Process> {
        let kubeconfig = if user == ADMIN_USER {
            self.kubeconfig_path.clone()
        } else if let Some(sa) = user.strip_prefix("system:serviceaccount:") {
            let ns = sa.split(':').next().unwrap_or_default();
            let ns_group = format!("system:serviceaccounts:{ns}");
            self.kubeconfig_impersonating(
                user,
                &["system:serviceaccounts", &ns_group, "system:authenticated"],
            )?
        } else {
            self.kubeconfig_for(user)?
        };
        Process::spawn(
            name,
            program,
            args,
            &[("KUBECONFIG", kubeconfig.as_os_str())],
            log,
        )
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

    /// A client of the CRD server itself (not through kube-apiserver), as the admin.
    pub async fn crd_server_client(&self) -> Result<Option<Client>> {
        match &self.crd_server {
            Some(crd) => Ok(Some(Client::try_from(
                self.config_for(&crd.url, ADMIN_USER).await?,
            )?)),
            None => Ok(None),
        }
    }

    // A client configuration for `user` against `url` (kube-apiserver or the CRD server, whose
    // certificates the same CA signs).
    async fn config_for(&self, url: &str, user: &str) -> Result<Config> {
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

    /// A client authenticated as `user` (one of [`Options::users`]).
    pub async fn client_as(&self, user: &str) -> Result<Client> {
        let mut config = self.config().await?;
        let token = self.token_for(user).ok_or_else(|| Error::Crd {
            path: self.kubeconfig_path.clone(),
            message: format!("no token for user {user}"),
        })?;
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.to_string().into()),
            ..Default::default()
        };
        Ok(Client::try_from(config)?)
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
        io(
            "writing a user kubeconfig",
            fs::write(&path, admin.replace(admin_token, token)),
        )?;
        Ok(path)
    }

    /// Writes a kubeconfig in which the admin impersonates `user` (e.g. a ServiceAccount,
    /// `system:serviceaccount:NS:NAME`), so RBAC judges every request as that user's.
    pub fn kubeconfig_impersonating(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let text = io(
            "reading the kubeconfig",
            fs::read_to_string(&self.kubeconfig_path),
        )?;
        let mut config: serde_yaml::Value =
            serde_yaml::from_str(&text).expect("our own kubeconfig parses");
        let auth = &mut config["users"][0]["user"];
        auth["as"] = user.into();
        auth["as-groups"] = groups
            .iter()
            .map(|g| serde_yaml::Value::from(*g))
            .collect::<Vec<_>>()
            .into();
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = self.dir.join(format!("kubeconfig-as-{safe}"));
        io(
            "writing an impersonating kubeconfig",
            fs::write(&path, serde_yaml::to_string(&config).expect("YAML")),
        )?;
        Ok(path)
    }

    /// Creates a namespace named `<prefix>-<random>` and returns its name.
    pub async fn namespace(&self, prefix: &str) -> Result<String> {
        let client = self.client().await?;
        let name = format!(
            "{}-{}",
            prefix.to_lowercase().replace('_', "-"),
            random_token().get(..6).unwrap_or("x")
        );
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client)
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(name)
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

    /// The process ids of the running components (etcd, kube-apiserver, ...), for tests that
    /// check clean-up.
    pub fn component_pids(&self) -> Vec<u32> {
        self.processes.iter().filter_map(Process::pid).collect()
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

/// An application stand-in for agent tests and benchmarks: an HTTP reload endpoint on
/// 127.0.0.1 that reads the file named in the agent's `{"revision","hash","file"}` POST and
/// answers 500 when the file contains `refuse_marker` (counting it in `refusals`), 200 otherwise.
/// Returns its port; it serves until the runtime ends.
pub async fn reload_stand_in(
    refuse_marker: &'static str,
    refusals: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Result<u16> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = io(
        "binding the reload stand-in",
        tokio::net::TcpListener::bind("127.0.0.1:0").await,
    )?;
    let port = io("reading its port", listener.local_addr())?.port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let refusals = refusals.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let body = loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    let text = String::from_utf8_lossy(&buf).into_owned();
                    let Some((head, body)) = text.split_once("\r\n\r\n") else {
                        continue;
                    };
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break body[..len].to_string();
                    }
                };
                let handed: serde_json::Value =
                    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
                let file = handed["file"].as_str().unwrap_or_default();
                let refuse = fs::read_to_string(file)
                    .unwrap_or_default()
                    .contains(refuse_marker);
                if refuse {
                    refusals.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                let status = if refuse {
                    "500 Internal Server Error"
                } else {
                    "200 OK"
                };
                let _ = stream
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    Ok(port)
}

/// One write request from the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// create, update, patch, delete, ...
    pub verb: String,
    /// e.g. `configmaps`, `runtimeconfigs`, `events`.
    pub resource: String,
    /// e.g. `status`.
    pub subresource: String,
    /// The namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
    /// The HTTP status code of the answer.
    pub code: i64,
}

/// A process under a supervisor: it stops (SIGTERM, then SIGKILL) when [`Process::stop`] is
/// called, when it is dropped, or when this process exits in any way.
pub struct Process {
    inner: Supervised,
    log: PathBuf,
}

impl Process {
    /// Starts `program args` with extra environment variables, output appended to `log`.
    pub fn spawn(
        name: &'static str,
        program: &Path,
        args: &[String],
        env: &[(&str, &std::ffi::OsStr)],
        log: &Path,
    ) -> Result<Process> {
        let out = io(
            format!("opening {}", log.display()),
            fs::OpenOptions::new().create(true).append(true).open(log),
        )?;
        let err = io("duplicating the log handle", out.try_clone())?;
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(SUPERVISOR)
            .arg(name)
            .arg(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            command.env(k, v);
        }
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = io(format!("starting {name}"), command.spawn())?;
        let stdin = child.stdin.take();
        Ok(Process {
            inner: Supervised { name, child, stdin },
            log: log.to_path_buf(),
        })
    }

    /// The process id of the program (not of its supervisor), once it has started.
    pub fn pid(&self) -> Option<u32> {
        child_pids(self.inner.child.id()).first().copied()
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Sends SIGTERM and waits until it has exited (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        drop(self.inner.stdin.take());
        let _ = self.inner.child.wait();
    }

    /// Sends SIGKILL to the program and waits for its supervisor.
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
        self.stop();
    }

    /// Whether the program still runs.
    pub fn running(&self) -> bool {
        !child_pids(self.inner.child.id()).is_empty()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the CRDs found in `paths` (files or directories of `.yaml` files) with server-side
/// apply, waits until they are established, and returns their names.
pub async fn install_crds(client: &Client, paths: &[PathBuf]) -> Result<Vec<String>> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for file in crate::manifests::files(paths)? {
        let text = io(
            format!("reading {}", file.display()),
            fs::read_to_string(&file),
        )?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value =
                <serde_yaml::Value as serde::Deserialize>::deserialize(doc).map_err(|e| {
                    Error::Crd {
                        path: file.clone(),
                        message: e.to_string(),
                    }
                })?;
            if value.is_null() {
                continue;
            }
            let crd: CustomResourceDefinition =
                serde_yaml::from_value(value).map_err(|e| Error::Crd {
                    path: file.clone(),
                    message: e.to_string(),
                })?;
            let name = crd.name_any();
            apply_crd(&api, &name, crd).await?;
            names.push(name);
        }
    }
    for name in &names {
        let cond = kube::runtime::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(api.clone(), name, cond),
        )
        .await
        .map_err(|_| Error::Crd {
            path: PathBuf::from(name),
            message: "not established within 30s".into(),
        })?
        .map_err(|e| Error::Crd {
            path: PathBuf::from(name),
            message: e.to_string(),
        })?;
        wait_served(client, &api, name).await?;
    }
    Ok(names)
}

// Established is the CRD server's word; clients of kube-apiserver also need the aggregator to
// route the group (the bridge's APIService, available): wait until discovery lists the kind.
async fn wait_served(
    client: &Client,
    api: &Api<CustomResourceDefinition>,
    name: &str,
) -> Result<()> {
    let crd = api.get(name).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    for version in crd.spec.versions.iter().filter(|v| v.served) {
        let group_version = format!("{}/{}", crd.spec.group, version.name);
        loop {
            let listed = client
                .list_api_group_resources(&group_version)
                .await
                .is_ok_and(|list| {
                    list.resources
                        .iter()
                        .any(|r| r.name == crd.spec.names.plural)
                });
            if listed {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Crd {
                    path: PathBuf::from(name),
                    message: format!(
                        "{group_version} not served through the API server within 60s"
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

// Server-side apply first. A server older than 1.25 does not know `x-kubernetes-validations` and
// refuses to build the typed object for apply; a plain create or update then stores the CRD
// without the CEL rules (hotconf's operator checks the same rules itself).
async fn apply_crd(
    api: &Api<CustomResourceDefinition>,
    name: &str,
    mut crd: CustomResourceDefinition,
) -> Result<()> {
    match api
        .patch(
            name,
            &PatchParams::apply("hotconf").force(),
            &Patch::Apply(&crd),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.message.contains("x-kubernetes-validations") => {
            match api.get_opt(name).await? {
                Some(existing) => {
                    crd.metadata.resource_version = existing.resource_version();
                    api.replace(name, &PostParams::default(), &crd).await?;
                }
                None => {
                    api.create(&PostParams::default(), &crd).await?;
                }
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

fn child_pids(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
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

// A CA and a serving certificate for 127.0.0.1/localhost, the service-account key pair, and what
// the aggregation of the CRD server needs.
fn write_certificates(pki: &Path) -> Result<String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hotconf-local-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    params
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let cert = params.signed_by(&key, &issuer)?;

    let sa = KeyPair::generate()?;
    let mut files = vec![
        ("ca.crt", ca.pem()),
        ("apiserver.crt", cert.pem()),
        ("apiserver.key", key.serialize_pem()),
        ("sa.key", sa.serialize_pem()),
        ("sa.pub", sa.public_key_pem()),
    ];
    files.extend(crd_server::certificates(&issuer)?);
    for (name, pem) in files {
        let mut f = io(format!("writing {name}"), fs::File::create(pki.join(name)))?;
        io(format!("writing {name}"), f.write_all(pem.as_bytes()))?;
    }
    Ok(ca.pem())
}
