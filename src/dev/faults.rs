//! Faults of the control plane itself, for the chaos suite (the `testing` feature): restarting
//! a component (etcd, kube-apiserver, the CRD server) in place, compacting etcd so that resumed
//! watches meet `410 Gone`, and a [`FaultProxy`] in front of kube-apiserver with kubeconfigs
//! that point at it.

use std::{fs, path::PathBuf, time::Duration};

use super::control_plane::{ControlPlane, Result, io};
use super::error::Error;
use super::fault_proxy::{FaultProxy, ProxyTls};

/// How a component is stopped before it is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// SIGKILL: a crash.
    Kill,
    /// SIGTERM, then SIGKILL after 10 s: a clean restart.
    Term,
}

fn fault(component: &str, message: impl Into<String>) -> Error {
    Error::Fault {
        component: component.into(),
        message: message.into(),
    }
}

impl ControlPlane {
    /// Stops `component` (`etcd`, `kube-apiserver`, `crd-server`, `kube-controller-manager`)
    /// and starts it again with the same arguments (same ports, same data), then waits until
    /// it answers again: etcd its port, kube-apiserver and the CRD server `/readyz`.
    pub async fn restart_component(&mut self, component: &str, how: Stop) -> Result<()> {
        let index = self
            .processes
            .iter()
            .position(|p| p.name() == component)
            .ok_or_else(|| fault(component, "no such component"))?;
        let next = self.processes[index].respawn_after(how)?;
        self.record_supervisor(&next)?;
        self.processes[index] = next;
        match component {
            "etcd" => {
                let port = self
                    .etcd_url()?
                    .rsplit(':')
                    .next()
                    .unwrap_or("")
                    .to_string();
                let port: u16 = port.parse().map_err(|_| fault(component, "no etcd port"))?;
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_err()
                {
                    if std::time::Instant::now() > deadline {
                        return Err(self.not_ready("etcd", 30));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                self.wait_readyz(Duration::from_secs(60)).await
            }
            "kube-apiserver" | "crd-server" => self.wait_readyz(Duration::from_secs(90)).await,
            _ => Ok(()),
        }
    }

    // kube-apiserver's /readyz (which covers etcd), then a list of a custom resource (which
    // covers the CRD server behind the aggregator).
    async fn wait_readyz(&self, timeout: Duration) -> Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        let client = self.client().await?;
        loop {
            let ready = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("static request");
            let listed = http::Request::get("/apis/hotconf.dev/v1alpha1/runtimeconfigs?limit=1")
                .body(Vec::new())
                .expect("static request");
            if matches!(client.request_text(ready).await, Ok(b) if b.trim() == "ok")
                && client.request_text(listed).await.is_ok()
            {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(self.not_ready("kube-apiserver", timeout.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn record_supervisor(&self, process: &super::process::Process) -> Result<()> {
        use std::io::Write as _;
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
        )
    }

    /// etcd's client URL.
    pub fn etcd_url(&self) -> Result<String> {
        self.processes
            .iter()
            .find(|p| p.name() == "etcd")
            .and_then(|p| {
                p.args()
                    .iter()
                    .find_map(|a| a.strip_prefix("--listen-client-urls="))
            })
            .map(str::to_string)
            .ok_or_else(|| fault("etcd", "no client URL"))
    }

    /// Compacts etcd's history up to its current revision (physically), so that a watch that
    /// resumes from an older resourceVersion, once it reaches etcd, gets `410 Gone` and has to
    /// list again. Returns the revision compacted to.
    pub async fn compact_etcd(&self) -> Result<i64> {
        let url = self.etcd_url()?;
        let addr = url.trim_start_matches("http://").to_string();
        // The key "/" in base64; any read returns the store's current revision in its header.
        let range = etcd_post(&addr, "/v3/kv/range", r#"{"key":"Lw==","limit":1}"#).await?;
        let revision: i64 = range["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .or_else(|| range["header"]["revision"].as_i64())
            .ok_or_else(|| fault("etcd", format!("no revision in {range}")))?;
        let body = serde_json::json!({"revision": revision.to_string(), "physical": true});
        etcd_post(&addr, "/v3/kv/compaction", &body.to_string()).await?;
        Ok(revision)
    }

    /// Starts a [`FaultProxy`] in front of kube-apiserver, serving the API server's own
    /// certificate (issued for 127.0.0.1 by the CA every kubeconfig here trusts).
    pub async fn fault_proxy(&self) -> Result<FaultProxy> {
        let pki = self.dir.join("pki");
        let read = |f: &str| {
            let path = pki.join(f);
            fs::read_to_string(&path).map_err(|source| Error::Io { path, source })
        };
        let tls = ProxyTls {
            ca_pem: read("ca.crt")?,
            cert_pem: read("apiserver.crt")?,
            key_pem: read("apiserver.key")?,
        };
        FaultProxy::start(&self.server, &tls).await
    }

    /// Writes a kubeconfig for `user` whose server is `server` (e.g. a [`FaultProxy`]'s URL)
    /// and returns its path.
    pub fn kubeconfig_via(&self, user: &str, server: &str) -> Result<PathBuf> {
        let direct = self.kubeconfig_for(user)?;
        let text = io("reading a user kubeconfig", fs::read_to_string(&direct))?;
        let safe: String = server
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let path = self.dir.join(format!("kubeconfig-{user}-via-{safe}"));
        io(
            "writing a kubeconfig",
            fs::write(&path, text.replace(&self.server, server)),
        )?;
        Ok(path)
    }
}

// A JSON POST to etcd's gRPC gateway (plain HTTP on the client port).
async fn etcd_post(addr: &str, path: &str, body: &str) -> Result<serde_json::Value> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let failed = |e: std::io::Error| fault("etcd", format!("POST {path}: {e}"));
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(failed)?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.map_err(failed)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.map_err(failed)?;
    let (head, rest) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| fault("etcd", format!("POST {path}: no response")))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(fault("etcd", format!("POST {path}: {head} {rest}")));
    }
    // Chunked or not, the JSON object is between the first '{' and the last '}'.
    let json = rest
        .find('{')
        .zip(rest.rfind('}'))
        .map(|(a, b)| &rest[a..=b])
        .unwrap_or("{}");
    serde_json::from_str(json).map_err(|e| fault("etcd", format!("POST {path}: {e}: {json}")))
}

impl super::process::Process {
    fn respawn_after(&mut self, how: Stop) -> Result<super::process::Process> {
        match how {
            Stop::Kill => self.kill(),
            Stop::Term => self.stop(),
        }
        self.respawn()
    }
}
