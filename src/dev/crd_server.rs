//! Custom resources on current semantics beside a kube-apiserver 1.20: the standalone Kubernetes
//! 1.36 CRD server (`k8s.io/apiextensions-apiserver`, built by `hack/crd-server-assets.sh`) put
//! behind kube-apiserver as an aggregated API server.
//!
//! kube-apiserver keeps authentication, authorization, the core objects and the audit log; the
//! CRD server delegates authentication and authorization to it and reads namespaces from it. The
//! aggregator sends `apiextensions.k8s.io/v1` (the CRD objects themselves) and every group a CRD
//! defines to the CRD server, so a client of the one kubeconfig installs CRDs, writes custom
//! resources and watches them on 1.36 semantics (CEL compiled and enforced, ratcheting,
//! `subresource: status` in managedFields) and everything else on 1.20.
//!
//! kube-apiserver only creates APIServices for the CRDs it stores itself, so a [`Bridge`] thread
//! does that job for the CRD server: it watches the CRD server's CRDs and keeps one APIService per
//! served group version pointing at it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::{
    APIService, APIServiceSpec, ServiceReference,
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{WatchStreamExt as _, watcher},
};

use super::control_plane::{CRD_SERVER_USER, ControlPlane, CrdServer, free_port};
use super::error::Error;

/// The Service (in `kube-system`) the APIServices point at: `ExternalName` localhost, so the
/// aggregator dials the CRD server on loopback without a kube-proxy.
pub const SERVICE: &str = "hotconf-crd-server";

/// The field manager of the bridge's writes.
const MANAGER: &str = "hotconf-crd-bridge";

/// The aggregator's label on the APIServices it manages itself; removing it hands one over.
const AUTOMANAGED: &str = "kube-aggregator.kubernetes.io/automanaged";

/// Where the 1.36 CRD server binary is, by the envtest-like convention of this project:
/// `$HOTCONF_CRD_SERVER` (a path, or `none`), else the newest cached
/// `crd-server/apiextensions-1.36.*/apiextensions-apiserver` under the cache root.
/// `Ok(None)`: kube-apiserver serves custom resources itself.
pub fn resolve(cache_root: &Path) -> std::result::Result<Option<PathBuf>, String> {
    match std::env::var("HOTCONF_CRD_SERVER") {
        Ok(v) if v == "none" => return Ok(None),
        Ok(v) if !v.is_empty() => {
            let path = PathBuf::from(&v);
            return if path.is_file() {
                Ok(Some(path))
            } else {
                Err(format!("HOTCONF_CRD_SERVER={v} is not a file"))
            };
        }
        _ => {}
    }
    let dir = cache_root.join("crd-server");
    let mut found: Vec<(Vec<u64>, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version = name.strip_prefix("apiextensions-1.36.")?;
            let binary = entry.path().join("apiextensions-apiserver");
            binary.is_file().then(|| {
                let key = version.split('.').filter_map(|p| p.parse().ok()).collect();
                (key, binary)
            })
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, binary)) => Ok(Some(binary)),
        None => Err(format!(
            "no Kubernetes 1.36 CRD server in {}: run `make assets` (hack/crd-server-assets.sh), \
             set HOTCONF_CRD_SERVER to an apiextensions-apiserver binary, or set \
             HOTCONF_CRD_SERVER=none to serve custom resources from kube-apiserver {} itself",
            dir.display(),
            super::assets::ASSETS_VERSION
        )),
    }
}

/// Where the CRD server keeps its objects in the etcd it shares with kube-apiserver.
pub(super) const ETCD_PREFIX: &str = "/hotconf-crd-server";

/// The arguments of the CRD server process.
pub(super) struct Flags<'a> {
    pub etcd_url: &'a str,
    pub port: u16,
    pub pki: &'a Path,
    pub kubeconfig: &'a Path,
    /// Its own audit log (kube-apiserver's audits what clients sent through it; this one, what
    /// reached the CRD server and how it answered).
    pub audit_log: &'a Path,
    /// Whether it keeps a watch cache (see `Options::custom_resource_watch_cache`).
    pub watch_cache: bool,
}

impl Flags<'_> {
    pub fn args(&self) -> Vec<String> {
        let p = |f: &str| self.pki.join(f).display().to_string();
        let kubeconfig = self.kubeconfig.display();
        let mut args = vec![
            format!("--etcd-servers={}", self.etcd_url),
            // Its own key space in the shared etcd: kube-apiserver has CRD objects of its own.
            format!("--etcd-prefix={ETCD_PREFIX}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", self.port),
            format!("--tls-cert-file={}", p("crd-server.crt")),
            format!("--tls-private-key-file={}", p("crd-server.key")),
            // Token review, access review, namespaces and the front-proxy CA come from here.
            format!("--kubeconfig={kubeconfig}"),
            format!("--authentication-kubeconfig={kubeconfig}"),
            format!("--authorization-kubeconfig={kubeconfig}"),
            // RBAC changes made by a test take effect at once, as they do on one server.
            "--authorization-webhook-cache-authorized-ttl=1s".into(),
            "--authorization-webhook-cache-unauthorized-ttl=1ms".into(),
            // Both watch APIs that 1.20 lacks (flowcontrol/v1, admission policies); with them on,
            // every write is refused with "not yet ready to handle request". The admission
            // webhooks stay on: they read admissionregistration/v1, which 1.20 serves.
            "--enable-priority-and-fairness=false".into(),
            "--disable-admission-plugins=MutatingAdmissionPolicy,ValidatingAdmissionPolicy".into(),
            format!("--audit-policy-file={}", p("audit-policy.yaml")),
            format!("--audit-log-path={}", self.audit_log.display()),
            "--audit-log-format=json".into(),
            "--v=1".into(),
        ];
        if !self.watch_cache {
            args.push("--watch-cache=false".into());
        }
        args
    }
}

/// The PEM files the aggregation needs, beside kube-apiserver's own: a front-proxy CA and the
/// client certificate kube-apiserver proxies with, and the CRD server's serving certificate
/// (signed by the cluster CA, valid for the Service name the aggregator verifies).
pub(super) fn certificates(
    issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
) -> Result<Vec<(&'static str, String)>, Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        SanType,
    };
    let fp_key = KeyPair::generate()?;
    let mut fp_params = CertificateParams::new(Vec::<String>::new())?;
    fp_params
        .distinguished_name
        .push(DnType::CommonName, "hotconf-front-proxy-ca");
    fp_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let fp_ca = fp_params.self_signed(&fp_key)?;
    let fp_issuer = rcgen::Issuer::new(fp_params, fp_key);

    let client_key = KeyPair::generate()?;
    let mut client = CertificateParams::new(Vec::<String>::new())?;
    client
        .distinguished_name
        .push(DnType::CommonName, "front-proxy-client");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &fp_issuer)?;

    let serving_key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(vec![
        "localhost".to_string(),
        format!("{SERVICE}.kube-system.svc"),
    ])?;
    serving
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    serving
        .distinguished_name
        .push(DnType::CommonName, "hotconf-crd-server");
    let serving_cert = serving.signed_by(&serving_key, issuer)?;
    Ok(vec![
        ("front-proxy-ca.crt", fp_ca.pem()),
        ("front-proxy-client.crt", client_cert.pem()),
        ("front-proxy-client.key", client_key.serialize_pem()),
        ("crd-server.crt", serving_cert.pem()),
        ("crd-server.key", serving_key.serialize_pem()),
    ])
}

/// kube-apiserver's flags for aggregation: trust the front-proxy CA's client, proxy with it, and
/// serve no `apiextensions.k8s.io` itself. The CRD server serves that group once both run, so
/// that CRDs written through kube-apiserver land there, and so that kube-apiserver's OpenAPI
/// document (which kubectl validates against) has the CRD server's CRD schema (with
/// `x-kubernetes-validations`, and the `fieldValidation` parameter that makes kubectl leave
/// validation to the server) instead of its own 1.20 one.
pub(super) fn kube_apiserver_args(pki: &Path) -> Vec<String> {
    let p = |f: &str| pki.join(f).display().to_string();
    vec![
        format!("--requestheader-client-ca-file={}", p("front-proxy-ca.crt")),
        "--requestheader-allowed-names=front-proxy-client".into(),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        format!("--proxy-client-cert-file={}", p("front-proxy-client.crt")),
        format!("--proxy-client-key-file={}", p("front-proxy-client.key")),
        "--runtime-config=apiextensions.k8s.io/v1=false,apiextensions.k8s.io/v1beta1=false".into(),
    ]
}

fn api_service(group: &str, version: &str, port: u16, ca_pem: &str, priority: i32) -> APIService {
    APIService {
        metadata: ObjectMeta {
            name: Some(format!("{version}.{group}")),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                MANAGER.to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(APIServiceSpec {
            group: Some(group.to_string()),
            version: Some(version.to_string()),
            group_priority_minimum: priority,
            version_priority: 15,
            ca_bundle: Some(k8s_openapi::ByteString(ca_pem.as_bytes().to_vec())),
            insecure_skip_tls_verify: None,
            service: Some(ServiceReference {
                namespace: Some("kube-system".into()),
                name: Some(SERVICE.into()),
                port: Some(port.into()),
            }),
        }),
        status: None,
    }
}

/// Points `version.group` at the CRD server: creates the APIService, or takes over the one
/// kube-apiserver made (removing its automanaged label, so it leaves it alone from then on).
pub(super) async fn ensure_api_service(
    client: &Client,
    group: &str,
    version: &str,
    port: u16,
    ca_pem: &str,
) -> Result<(), Error> {
    let api: Api<APIService> = Api::all(client.clone());
    // kube-apiserver's own groups sort above CRD groups (it uses 1000 for those).
    let priority = if group == "apiextensions.k8s.io" {
        16700
    } else {
        1000
    };
    let mut desired = api_service(group, version, port, ca_pem, priority);
    let name = desired.name_any();
    match api.get_opt(&name).await? {
        // A 409 (kube-apiserver's CRD registration got there first) is taken over on the retry.
        None => {
            api.create(&PostParams::default(), &desired).await?;
            Ok(())
        }
        Some(current) => {
            let ours = current.spec == desired.spec && !current.labels().contains_key(AUTOMANAGED);
            if ours {
                return Ok(());
            }
            desired.metadata.resource_version = current.resource_version();
            api.replace(&name, &PostParams::default(), &desired).await?;
            Ok(())
        }
    }
}

/// The `ExternalName` Service the APIServices name.
pub(super) async fn ensure_service(client: &Client, port: u16) -> Result<(), Error> {
    let service: Service = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": "kube-system",
                     "labels": {"app.kubernetes.io/managed-by": MANAGER}},
        "spec": {"type": "ExternalName", "externalName": "localhost",
                 "ports": [{"name": "https", "port": port, "protocol": "TCP"}]},
    }))
    .expect("a static Service");
    Api::<Service>::namespaced(client.clone(), "kube-system")
        .patch(
            SERVICE,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&service),
        )
        .await?;
    Ok(())
}

/// Waits until the APIService `name` reports `Available=True`.
pub(super) async fn wait_available(
    client: &Client,
    name: &str,
    timeout: Duration,
) -> Result<(), Error> {
    let api: Api<APIService> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let available = api.get_opt(name).await.ok().flatten().is_some_and(|s| {
            s.status
                .and_then(|st| st.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True")
        });
        if available {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Crd {
                path: PathBuf::from(name),
                message: format!("APIService not available within {}s", timeout.as_secs()),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// Whether the store has seen its first list (an empty cluster has no CRD to wait for).
fn ready(reader: &kube::runtime::reflector::Store<CustomResourceDefinition>) -> bool {
    futures::FutureExt::now_or_never(reader.wait_until_ready()).is_some_and(|r| r.is_ok())
}

/// Waits until kube-apiserver proxies every served version of `crd` to the CRD server.
///
/// An APIService takes effect when kube-apiserver's aggregator has processed it, which can lag
/// by a second or more under load; until then (and while kube-apiserver's own registration still
/// holds a local APIService), requests for the group fall through to kube-apiserver's embedded
/// CRD handler, which learned the CRD through the aggregated `apiextensions.k8s.io` and stores
/// objects in its own keys. A client that started a watch in that window would watch an empty
/// store. The probe tells the two servers apart by behaviour: a strict dry-run create with an
/// unknown field is refused as "strict decoding error" only by a 1.25+ server (1.20 ignores
/// `fieldValidation`). A CRD that keeps unknown fields at its root cannot be probed this way:
/// then discovery alone is waited for.
pub(super) async fn wait_routed(
    front: &Client,
    crd: &CustomResourceDefinition,
    timeout: Duration,
) -> Result<(), Error> {
    let root_open = crd.spec.versions.iter().any(|v| {
        v.schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .is_some_and(|s| s.x_kubernetes_preserve_unknown_fields == Some(true))
    });
    if root_open {
        return Ok(());
    }
    let names = &crd.spec.names;
    let deadline = tokio::time::Instant::now() + timeout;
    for version in crd.spec.versions.iter().filter(|v| v.served) {
        let group_version = format!("{}/{}", crd.spec.group, version.name);
        let collection = if crd.spec.scope == "Namespaced" {
            format!("/apis/{group_version}/namespaces/default/{}", names.plural)
        } else {
            format!("/apis/{group_version}/{}", names.plural)
        };
        let body = serde_json::json!({
            "apiVersion": group_version,
            "kind": names.kind,
            "metadata": {"generateName": "hotconf-route-probe-"},
            "hotconfRouteProbe": true,
        });
        loop {
            let request =
                http::Request::post(format!("{collection}?dryRun=All&fieldValidation=Strict"))
                    .header("content-type", "application/json")
                    .body(serde_json::to_vec(&body).expect("a JSON body"))
                    .expect("a static request");
            let routed = match front.request::<serde_json::Value>(request).await {
                Err(kube::Error::Api(status)) => {
                    status.code == 400 && status.message.contains("strict decoding error")
                }
                _ => false,
            };
            if routed {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Crd {
                    path: PathBuf::from(crd.name_any()),
                    message: format!(
                        "kube-apiserver does not route {group_version} to the CRD server within {}s",
                        timeout.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// The group versions the CRDs serve.
fn served(crds: &[CustomResourceDefinition]) -> BTreeSet<(String, String)> {
    crds.iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .flat_map(|c| {
            c.spec
                .versions
                .iter()
                .filter(|v| v.served)
                .map(|v| (c.spec.group.clone(), v.name.clone()))
        })
        .collect()
}

/// The thread that keeps an APIService for every group version the CRD server's CRDs serve.
/// It runs until the [`Bridge`] is dropped.
pub(super) struct Bridge {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bridge {
    /// Starts the thread. `front` is a client of kube-apiserver (where APIServices live),
    /// `direct` one of the CRD server.
    pub fn start(
        front: kube::Config,
        direct: kube::Config,
        port: u16,
        ca_pem: String,
        log: PathBuf,
    ) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("hotconf-crd-bridge".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for the CRD bridge");
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stopped => {}
                        _ = bridge(front, direct, port, ca_pem, Log(log)) => {}
                    }
                });
            })
            .expect("starting the CRD bridge thread");
        Bridge {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The bridge's log file (beside the control plane's process logs).
struct Log(PathBuf);

impl Log {
    fn line(&self, text: impl std::fmt::Display) {
        use std::io::Write as _;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
        {
            let _ = writeln!(file, "{} {text}", chrono::Utc::now().to_rfc3339());
        }
    }
}

async fn bridge(front: kube::Config, direct: kube::Config, port: u16, ca_pem: String, log: Log) {
    let (Ok(front), Ok(direct)) = (Client::try_from(front), Client::try_from(direct)) else {
        log.line("could not build its clients");
        return;
    };
    let crds: Api<CustomResourceDefinition> = Api::all(direct);
    let (reader, writer) = kube::runtime::reflector::store();
    let mut stream = kube::runtime::reflector(writer, watcher(crds, watcher::Config::default()))
        .default_backoff()
        .boxed();
    let mut made: BTreeSet<(String, String)> = BTreeSet::new();
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            event = stream.next() => match event {
                None => return,
                Some(Err(e)) => log.line(format_args!("watching CRDs: {e}")),
                Some(Ok(_)) => {}
            },
            // Also on a timer: a write that failed (the CRD server restarting, a race with
            // kube-apiserver's own registration) is retried without waiting for the next event.
            _ = ticker.tick() => {}
        }
        if reader.state().is_empty() && !ready(&reader) {
            continue;
        }
        let snapshot: Vec<CustomResourceDefinition> =
            reader.state().iter().map(|c| (**c).clone()).collect();
        let want = served(&snapshot);
        for (group, version) in &want {
            match ensure_api_service(&front, group, version, port, &ca_pem).await {
                Ok(()) => {
                    if made.insert((group.clone(), version.clone())) {
                        log.line(format_args!("APIService {version}.{group} points here"));
                    }
                }
                Err(e) => log.line(format_args!("APIService {version}.{group}: {e}")),
            }
        }
        let gone: Vec<_> = made.difference(&want).cloned().collect();
        for (group, version) in gone {
            let name = format!("{version}.{group}");
            let api: Api<APIService> = Api::all(front.clone());
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    log.line(format_args!("APIService {name} deleted"));
                    made.remove(&(group, version));
                }
                Err(kube::Error::Api(s)) if s.code == 404 => {
                    made.remove(&(group, version));
                }
                Err(e) => log.line(format_args!("deleting APIService {name}: {e}")),
            }
        }
    }
}

impl ControlPlane {
    // Starts the 1.36 CRD server beside kube-apiserver and hands it `apiextensions.k8s.io/v1`
    // and (through the bridge) every CRD group.
    pub(super) async fn start_crd_server(
        &mut self,
        binary: &Path,
        etcd_url: &str,
        pki: &Path,
        ca_pem: &str,
        watch_cache: bool,
    ) -> Result<(), Error> {
        let port = free_port()?;
        let kubeconfig = self.kubeconfig_for(CRD_SERVER_USER)?;
        let flags = Flags {
            etcd_url,
            port,
            pki,
            kubeconfig: &kubeconfig,
            audit_log: &self.log_dir.join("crd-server-audit.log"),
            watch_cache,
        };
        self.start_component("crd-server", binary, &flags.args())?;
        let url = format!("https://127.0.0.1:{port}");
        let direct = self.config_for(&url, CRD_SERVER_USER).await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
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
            if std::time::Instant::now() > deadline {
                return Err(self.not_ready("crd-server", 90));
            }
            // (After the pause: a supervisor starts its program a moment after it starts.)
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Some(dead) = self.exited() {
                return Err(self.not_ready(dead, 0));
            }
        };
        let front = Client::try_from(self.config_for(&self.server, CRD_SERVER_USER).await?)?;
        ensure_service(&front, port).await?;
        ensure_api_service(&front, "apiextensions.k8s.io", "v1", port, ca_pem).await?;
        wait_available(&front, "v1.apiextensions.k8s.io", Duration::from_secs(60)).await?;
        let bridge = Bridge::start(
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
}
