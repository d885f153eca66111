//! A local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager) started from
//! binaries on this machine, for the integration tests and for `hotconf dev`.
//!
//! It follows the envtest convention: the binaries come from `$KUBEBUILDER_ASSETS`, else from the
//! cache that `hack/control-plane-assets.sh` fills. Every process is started under a small shell
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
        }
    }
}

/// Resolves the directory holding `etcd`, `kube-apiserver` and `kube-controller-manager`.
pub fn asset_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let root = std::env::var_os("HOTCONF_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("hotconf")))
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".cache/hotconf")
        });
    root.join("control-plane")
        .join(format!("k8s-{ASSETS_VERSION}"))
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
    processes: Vec<Supervised>,
    reaper: Option<Supervised>,
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
        for binary in ["etcd", "kube-apiserver", "kube-controller-manager"] {
            if !assets.join(binary).is_file() {
                return Err(Error::MissingBinary {
                    binary: binary.into(),
                    dir: assets,
                });
            }
        }
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
        };
        if temporary {
            // Started first, so the directory never outlives us, whatever happens next.
            plane.start_reaper()?;
        }
        if let Err(e) = plane.launch(&assets, &options).await {
            plane.print_logs();
            return Err(e);
        }
        if !options.crds.is_empty() {
            plane.install_crds(&options.crds).await?;
        }
        Ok(plane)
    }

    async fn launch(&mut self, assets: &Path, options: &Options) -> Result<()> {
        let dir = self.dir.clone();
        let pki = dir.join("pki");
        io("creating the pki directory", fs::create_dir_all(&pki))?;
        let ca_pem = write_certificates(&pki)?;

        let admin_token = random_token();
        self.tokens
            .push((ADMIN_USER.to_string(), admin_token.clone()));
        let mut token_csv = format!("{admin_token},{ADMIN_USER},{ADMIN_USER},\"system:masters\"\n");
        for user in &options.users {
            let token = random_token();
            token_csv.push_str(&format!("{token},{user},{user}\n"));
            self.tokens.push((user.clone(), token));
        }
        io(
            "writing the token file",
            fs::write(pki.join("tokens.csv"), token_csv),
        )?;

        // etcd
        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        self.spawn(
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
        self.spawn(
            "kube-apiserver",
            &assets.join("kube-apiserver"),
            &[
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                "--insecure-port=0".into(),
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
                format!("--cert-dir={}", dir.join("apiserver-certs").display()),
                "--v=1".into(),
            ],
        )?;
        self.server = format!("https://127.0.0.1:{api_port}");
        self.write_kubeconfig(&ca_pem, &admin_token)?;
        self.wait_ready(Duration::from_secs(90)).await?;

        if options.controller_manager {
            self.spawn(
                "kube-controller-manager",
                &assets.join("kube-controller-manager"),
                &[
                    format!("--kubeconfig={}", self.kubeconfig_path.display()),
                    "--controllers=garbagecollector,namespace".into(),
                    "--leader-elect=false".into(),
                    "--port=0".into(),
                    "--secure-port=0".into(),
                    "--concurrent-gc-syncs=5".into(),
                    "--v=1".into(),
                ],
            )?;
        }
        Ok(())
    }

    fn not_ready(&self, component: &'static str, seconds: u64) -> Error {
        Error::NotReady {
            component,
            seconds,
            log: self.log_dir.join(format!("{component}.log")),
        }
    }

    fn spawn(&mut self, name: &'static str, binary: &Path, args: &[String]) -> Result<()> {
        let log_path = self.log_dir.join(format!("{name}.log"));
        let log = io(
            format!("creating {}", log_path.display()),
            fs::File::create(&log_path),
        )?;
        let err = io("duplicating the log handle", log.try_clone())?;
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(SUPERVISOR)
            .arg(name)
            .arg(binary)
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(err);
        // Its own process group: a terminal's Ctrl-C reaches us, and we stop it in order.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut child = io(format!("starting {name}"), command.spawn())?;
        let stdin = child.stdin.take();
        let mut list = io(
            "recording the supervisor",
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(".supervisors")),
        )?;
        io("recording the supervisor", writeln!(list, "{}", child.id()))?;
        self.processes.push(Supervised { name, child, stdin });
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

    async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let client = self.client().await?;
        loop {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("static request");
            match client.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                _ if Instant::now() > deadline => {
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
            .find(|p| child_pids(p.child.id()).is_empty())
            .map(|p| p.name)
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
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
        install_crds(&client, paths).await
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
        self.processes
            .iter()
            .flat_map(|p| child_pids(p.child.id()))
            .collect()
    }

    /// Stops every process (the controller manager first, etcd last) and removes a temporary
    /// working directory.
    pub fn stop(&mut self) {
        while let Some(mut p) = self.processes.pop() {
            drop(p.stdin.take());
            let _ = p.child.wait();
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
            api.patch(
                &name,
                &PatchParams::apply("hotconf").force(),
                &Patch::Apply(&crd),
            )
            .await?;
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
    }
    Ok(names)
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

// A CA and a serving certificate for 127.0.0.1/localhost, plus the service-account key pair.
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
    let files = [
        ("ca.crt", ca.pem()),
        ("apiserver.crt", cert.pem()),
        ("apiserver.key", key.serialize_pem()),
        ("sa.key", sa.serialize_pem()),
        ("sa.pub", sa.public_key_pem()),
    ];
    for (name, pem) in files {
        let mut f = io(format!("writing {name}"), fs::File::create(pki.join(name)))?;
        io(format!("writing {name}"), f.write_all(pem.as_bytes()))?;
    }
    Ok(ca.pem())
}
