//! Helpers for the integration tests and benchmarks (the `testing` feature; not in the shipped
//! binary): users and namespaces, processes run as a user, the audit log, and an application
//! stand-in for agent tests.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};

use super::control_plane::{ADMIN_USER, ControlPlane, Result, io, random_token};
use super::error::Error;
use super::process::Process;

impl ControlPlane {
    /// The etcd key of an object: kube-apiserver's `/registry/<resource>/…` for the core group
    /// (`group` ""), `/registry/<group>/<resource>/…` for custom resources it serves itself, the
    /// CRD server's own prefix for those that one serves.
    pub fn storage_key(&self, group: &str, resource: &str, namespace: &str, name: &str) -> String {
        let prefix = match (group, &self.crd_server) {
            ("", _) => "/registry".to_string(),
            (_, Some(_)) => format!("{}/{group}", super::crd_server::ETCD_PREFIX),
            (_, None) => format!("/registry/{group}"),
        };
        format!("{prefix}/{resource}/{namespace}/{name}")
    }

    /// Copies the converged RuntimeConfig `template` of `namespace` and the ConfigMap it projects
    /// (of the same name) once for each of `copies` (a name, and labels to add to the CR),
    /// straight into etcd ([`Self::etcd_put`]): seeding as many converged objects as a benchmark
    /// wants in seconds. A copy is the template with the template's name replaced wherever it
    /// occurs (so the name must not occur otherwise: `seed-00000`, not `a`), new uids (the
    /// ConfigMap's owner reference follows), and the ConfigMap's data hash taken again, as its
    /// metadata key names the object. Copies are written in batches of 2,000, so memory stays
    /// bounded whatever their number.
    pub async fn copy_converged(
        &self,
        namespace: &str,
        template: &str,
        copies: &[(String, BTreeMap<String, String>)],
    ) -> Result<()> {
        use k8s_openapi::api::core::v1::ConfigMap;
        let client = self.client().await?;
        let path =
            format!("/apis/hotconf.dev/v1alpha1/namespaces/{namespace}/runtimeconfigs/{template}");
        let request = |path: &str| {
            http::Request::get(path)
                .body(Vec::new())
                .map_err(|e| Error::Kube(kube::Error::HttpError(e)))
        };
        let mut cr: serde_json::Value = client.request(request(&path)?).await?;
        let mut cm: ConfigMap = Api::namespaced(client.clone(), namespace)
            .get(template)
            .await?;
        let cr_uid = cr["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let cm_uid = cm.metadata.uid.clone().unwrap_or_default();
        if cr_uid.is_empty() || cm_uid.is_empty() {
            return Err(Error::Fault {
                component: "etcd".into(),
                message: format!("{namespace}/{template}: no uid to copy"),
            });
        }
        // As stored: no resourceVersion (the servers set it from etcd's revision on reads).
        cr["metadata"]
            .as_object_mut()
            .map(|m| m.remove("resourceVersion"));
        cm.metadata.resource_version = None;
        let cr_text = serde_json::to_string(&cr).map_err(json_error)?;
        let cm_text = serde_json::to_string(&cm).map_err(json_error)?;
        let uid = || {
            let hex = format!("{:032x}", rand::random::<u128>());
            format!(
                "{}-{}-{}-{}-{}",
                &hex[..8],
                &hex[8..12],
                &hex[12..16],
                &hex[16..20],
                &hex[20..]
            )
        };
        for batch in copies.chunks(2_000) {
            let mut entries = Vec::with_capacity(batch.len() * 2);
            for (name, labels) in batch {
                let new_uid = uid();
                let rename = |text: &str| text.replace(template, name).replace(&cr_uid, &new_uid);
                let mut cr: serde_json::Value =
                    serde_json::from_str(&rename(&cr_text)).map_err(json_error)?;
                if !labels.is_empty() {
                    let meta = &mut cr["metadata"];
                    if !meta["labels"].is_object() {
                        meta["labels"] = serde_json::json!({});
                    }
                    for (k, v) in labels {
                        meta["labels"][k] = v.clone().into();
                    }
                }
                let mut cm: ConfigMap =
                    serde_json::from_str(&rename(&cm_text).replace(&cm_uid, &uid()))
                        .map_err(json_error)?;
                let hash =
                    crate::projection::data_hash(cm.data.as_ref().unwrap_or(&BTreeMap::new()));
                cm.metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(crate::crd::names::DATA_HASH.to_string(), hash);
                entries.push((
                    self.storage_key("hotconf.dev", "runtimeconfigs", namespace, name),
                    serde_json::to_vec(&cr).map_err(json_error)?,
                ));
                entries.push((
                    self.storage_key("", "configmaps", namespace, name),
                    serde_json::to_vec(&cm).map_err(json_error)?,
                ));
            }
            self.etcd_put(&entries).await?;
        }
        Ok(())
    }

    /// Writes `entries` (key, value) straight into etcd, past the API servers: seeding at a scale
    /// the API would take many minutes to write. A value is an object as an API server stores it:
    /// JSON with `apiVersion` and `kind` and no `resourceVersion` (kube-apiserver reads JSON as
    /// well as its own protobuf). The servers see the objects through their etcd watches, or at
    /// their next read when they keep no cache.
    ///
    /// One put each, as an API server writes: a watch cache takes each etcd revision for one
    /// object, and a transaction of many keys under one revision breaks that (a list answered
    /// from the cache midway through such a revision has some of its objects, and the watch from
    /// the list's resourceVersion has none of the rest). Sixteen at a time, over kept-alive
    /// connections.
    pub async fn etcd_put(&self, entries: &[(String, Vec<u8>)]) -> Result<()> {
        use base64::{Engine as _, engine::general_purpose::STANDARD};
        use bytes::Bytes;
        use futures::{StreamExt as _, TryStreamExt as _};
        use http_body_util::{BodyExt as _, Full};
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;
        let url = format!("{}/v3/kv/put", self.etcd_url()?);
        let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let failed = |key: &str, e: String| Error::Fault {
            component: "etcd".into(),
            message: format!("put {key}: {e}"),
        };
        futures::stream::iter(entries)
            .map(|(key, value)| {
                let body = serde_json::json!({
                    "key": STANDARD.encode(key), "value": STANDARD.encode(value)})
                .to_string();
                let request = http::Request::post(&url)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)));
                let http = http.clone();
                async move {
                    let request = request.map_err(|e| failed(key, e.to_string()))?;
                    let response = http
                        .request(request)
                        .await
                        .map_err(|e| failed(key, e.to_string()))?;
                    let status = response.status();
                    let body = response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| failed(key, e.to_string()))?
                        .to_bytes();
                    match status.is_success() {
                        true => Ok(()),
                        false => Err(failed(
                            key,
                            format!("{status}: {}", String::from_utf8_lossy(&body)),
                        )),
                    }
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// The write requests of `user` logged since the start, as
    /// (verb, resource, namespace, name, response code).
    pub fn audit_writes(&self, user: &str) -> Vec<AuditEntry> {
        self.audited(
            user,
            &["create", "update", "patch", "delete", "deletecollection"],
        )
    }

    /// The reads (get, list) of ConfigMaps, Secrets and hotconf's kinds by `user` logged since
    /// the start, as [`Self::audit_writes`] has the writes.
    pub fn audit_reads(&self, user: &str) -> Vec<AuditEntry> {
        self.audited(user, &["get", "list"])
    }

    fn audited(&self, user: &str, verbs: &[&str]) -> Vec<AuditEntry> {
        let text = fs::read_to_string(self.audit_log_path()).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            // A user the admin impersonates (a ServiceAccount) is the impersonated one.
            .filter(|e| {
                e["stage"] == "ResponseComplete"
                    && (e["user"]["username"] == user || e["impersonatedUser"]["username"] == user)
            })
            .filter(|e| e["verb"].as_str().is_some_and(|v| verbs.contains(&v)))
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
                    received: s("/requestReceivedTimestamp"),
                    uri: s("/requestURI"),
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

    /// A client of the CRD server itself (not through kube-apiserver), as the admin.
    pub async fn crd_server_client(&self) -> Result<Option<Client>> {
        match &self.crd_server {
            Some(crd) => Ok(Some(Client::try_from(
                self.config_for(&crd.url, ADMIN_USER).await?,
            )?)),
            None => Ok(None),
        }
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

    /// Writes a kubeconfig in which the admin impersonates `user` (e.g. a ServiceAccount,
    /// `system:serviceaccount:NS:NAME`), so RBAC judges every request as that user's.
    pub fn kubeconfig_impersonating(&self, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let safe: String = user
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = self.dir.join(format!("kubeconfig-as-{safe}"));
        io(
            "writing an impersonating kubeconfig",
            super::sim::agents::impersonating_kubeconfig(
                &self.kubeconfig_path,
                user,
                groups,
                &path,
            ),
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

    /// The process ids of the running components (etcd, kube-apiserver, ...), for tests that
    /// check clean-up.
    pub fn component_pids(&self) -> Vec<u32> {
        self.processes.iter().filter_map(Process::pid).collect()
    }

    /// The process id of the running component started as `name` (`crd-server`,
    /// `kube-apiserver`, `etcd`), for tests that stop and continue it.
    pub fn component_pid(&self, name: &str) -> Option<u32> {
        self.processes
            .iter()
            .find(|p| p.name() == name)
            .and_then(Process::pid)
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
    /// When the API server received the request (RFC 3339, microseconds).
    pub received: String,
    /// The request's path and query.
    pub uri: String,
}

fn json_error(e: serde_json::Error) -> Error {
    Error::Kube(kube::Error::SerdeError(e))
}
